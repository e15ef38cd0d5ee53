//! Signatures that cosign and other Sigstore tools produced (tests/data/cosign/README.md gives each
//! file's source), verified offline with `twinflash_artifact::signature`; tampered and negative
//! cases fail with the reason an operator needs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are the failure report

use std::path::PathBuf;

use base64::Engine;
use sha2::{Digest, Sha256};
use twinflash_artifact::signature::bundle::Bundle;
use twinflash_artifact::signature::{Body, Found, PublicKey, TrustedKey, Verified, check};

fn data(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/cosign")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(data(path)).unwrap()
}

fn key(path: &str) -> TrustedKey {
    TrustedKey::from_file(&data(path)).unwrap()
}

fn simple(payload: String, signature: String) -> Found {
    Found {
        location: "fixture".to_owned(),
        body: Body::Simple {
            payload,
            signature,
            keyless: false,
        },
    }
}

fn bundle(path: &str) -> Found {
    Found {
        location: "fixture".to_owned(),
        body: Body::Bundle { json: read(path) },
    }
}

fn digest(path: &str) -> String {
    read(path).trim().to_owned()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The payload and signature annotation of containers/image's fixture signature `n` in `dir`.
fn cimage(dir: &str, n: u32) -> Found {
    let annotations: serde_json::Value = serde_json::from_str(&read(&format!(
        "containers-image-cosign-fixtures/{dir}/sig{n}.annotations.json.derived"
    )))
    .unwrap();
    simple(
        read(&format!(
            "containers-image-cosign-fixtures/{dir}/sig{n}.payload.derived"
        )),
        annotations["dev.cosignproject.cosign/signature"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

fn ok(found: &Found, digest: &str, manifest: &[u8], keys: &[TrustedKey]) -> Verified {
    check(digest, manifest, found, keys).unwrap_or_else(|e| panic!("{}: {e}", found.location))
}

#[test]
fn cosign_3_legacy_signature_verifies_and_tampering_fails() {
    let dir = "cosign-v3.0.4-legacy-tag-p256";
    let keys = [key(&format!("{dir}/cosign.pub"))];
    let subject = digest(&format!("{dir}/subject-digest.txt"));
    let payload = read(&format!("{dir}/payload.json"));
    let signature = read(&format!("{dir}/signature.b64")).trim().to_owned();
    // The signature annotation in cosign's own `.sig` manifest is the one we read.
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&format!("{dir}/signature-manifest.json"))).unwrap();
    let layer = &manifest["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    assert_eq!(
        layer["annotations"]["dev.cosignproject.cosign/signature"],
        signature.as_str()
    );
    assert_eq!(layer["digest"], sha256(payload.as_bytes()).as_str());

    let v = ok(
        &simple(payload.clone(), signature.clone()),
        &subject,
        b"",
        &keys,
    );
    assert_eq!(v.signer, "cosign");
    assert!(v.claimed_reference.is_some());

    let tampered = payload.replacen("sha256:f", "sha256:e", 1);
    let err = check(&subject, b"", &simple(tampered, signature.clone()), &keys).unwrap_err();
    assert!(err.contains("does not verify"), "{err}");
    let other = format!("sha256:{}", "0".repeat(64));
    let err = check(&other, b"", &simple(payload, signature), &keys).unwrap_err();
    assert!(err.contains("another digest"), "{err}");
}

#[test]
fn cosign_3_bundle_referrer_verifies_with_its_key_and_hint() {
    let dir = "cosign-v3.0.4-bundle-referrer-p256";
    let keys = [key(&format!("{dir}/cosign.pub"))];
    let subject = digest(&format!("{dir}/subject-digest.txt"));
    let found = bundle(&format!("{dir}/bundle.sigstore.json"));
    ok(&found, &subject, b"", &keys);

    // The key hint cosign wrote is what our writer writes: base64(SHA-256(SPKI DER)).
    let b = Bundle::parse(read(&format!("{dir}/bundle.sigstore.json")).as_bytes()).unwrap();
    let hint = b.verification_material.public_key.unwrap().hint;
    let ours = base64::engine::general_purpose::STANDARD.encode(keys[0].key.spki_sha256());
    assert_eq!(hint, ours);

    // The referrer manifest cosign stored names the artifact as subject and holds the bundle.
    let referrer: serde_json::Value =
        serde_json::from_str(&read(&format!("{dir}/referring-manifest.json"))).unwrap();
    assert_eq!(referrer["subject"]["digest"], subject.as_str());
    assert_eq!(
        referrer["layers"][0]["digest"],
        sha256(read(&format!("{dir}/bundle.sigstore.json")).as_bytes()).as_str()
    );

    // Another key, another digest, a changed statement: refused.
    let other = [key("containers-image-cosign-fixtures/cosign.pub")];
    assert!(check(&subject, b"", &found, &other).is_err());
    let err = check(&format!("sha256:{}", "1".repeat(64)), b"", &found, &keys).unwrap_err();
    assert!(err.contains("other digests"), "{err}");
    let mut json: serde_json::Value =
        serde_json::from_str(&read(&format!("{dir}/bundle.sigstore.json"))).unwrap();
    let payload = json["dsseEnvelope"]["payload"].as_str().unwrap().to_owned();
    let enc = base64::engine::general_purpose::STANDARD;
    let statement = String::from_utf8(enc.decode(payload).unwrap()).unwrap();
    json["dsseEnvelope"]["payload"] = enc.encode(statement.replace("sign/v1", "sign/v2")).into();
    let tampered = Found {
        location: "tampered".to_owned(),
        body: Body::Bundle {
            json: json.to_string(),
        },
    };
    assert!(check(&subject, b"", &tampered, &keys).is_err());
}

#[test]
fn containers_image_fixtures_verify_and_their_negative_cases_fail() {
    let keys = [key("containers-image-cosign-fixtures/cosign.pub")];
    let keys2 = [key("containers-image-cosign-fixtures/cosign2.pub")];
    let manifest_digest = |dir: &str| {
        sha256(
            read(&format!(
                "containers-image-cosign-fixtures/{dir}/manifest.json"
            ))
            .as_bytes(),
        )
    };
    for (dir, n, keys) in [
        ("dir-img-cosign-valid", 1, &keys),
        ("dir-img-cosign-valid-2", 1, &keys),
        ("dir-img-cosign-valid-2", 2, &keys),
        ("dir-img-cosign-valid-with-tag", 1, &keys),
        // Carries a Rekor bundle annotation; verified by the key alone (offline).
        ("dir-img-cosign-key-rekor-valid", 1, &keys2),
    ] {
        ok(&cimage(dir, n), &manifest_digest(dir), b"", keys);
    }
    // The signature is good, but the manifest beside it is not the one signed.
    for dir in [
        "dir-img-cosign-manifest-digest-error",
        "dir-img-cosign-modified-manifest",
    ] {
        let err = check(&manifest_digest(dir), b"", &cimage(dir, 1), &keys).unwrap_err();
        assert!(err.contains("another digest"), "{dir}: {err}");
    }
    // Signed with another key.
    assert!(
        check(
            &manifest_digest("dir-img-cosign-valid"),
            b"",
            &cimage("dir-img-cosign-valid", 1),
            &keys2
        )
        .is_err()
    );
}

#[test]
fn sigstore_rs_legacy_signature_verifies() {
    let dir = "sigstore-rs-legacy-p256";
    ok(
        &simple(
            read(&format!("{dir}/payload.json")),
            read(&format!("{dir}/signature.b64")).trim().to_owned(),
        ),
        &digest(&format!("{dir}/subject-digest.txt")),
        b"",
        &[key(&format!("{dir}/cosign.pub"))],
    );
}

#[test]
fn ed25519_pure_verifies_and_ed25519ph_and_rsa_are_refused_clearly() {
    // Self-made (README): cosign's `verify --key` builds a pure Ed25519 verifier.
    let dir = "selfmade-ed25519-legacy";
    let keys = [key(&format!("{dir}/ed25519.pub"))];
    let subject = digest(&format!("{dir}/subject-digest.txt"));
    let payload = read(&format!("{dir}/payload.json"));
    let pure = read(&format!("{dir}/signature.pure-ed25519.b64"))
        .trim()
        .to_owned();
    let ph = read(&format!("{dir}/signature.ed25519ph.b64"))
        .trim()
        .to_owned();
    ok(&simple(payload.clone(), pure), &subject, b"", &keys);
    assert!(check(&subject, b"", &simple(payload, ph), &keys).is_err());

    let err =
        PublicKey::from_pem(read("sigstore-rs-legacy-rsa-obs/rsa.pub").as_bytes()).unwrap_err();
    assert!(
        err.0.contains("P-256") && err.0.contains("Ed25519"),
        "{err}"
    );
}

#[test]
fn a_message_signature_bundle_signs_the_bytes_whose_digest_it_names() {
    let dir = "sigstore-conformance-key-messagesig";
    let message = std::fs::read(data(&format!("{dir}/a.txt"))).unwrap();
    let d = sha256(&message);
    let found = bundle(&format!(
        "{dir}/managed-key-happy-path/bundle.sigstore.json"
    ));
    ok(
        &found,
        &d,
        &message,
        &[key(&format!("{dir}/managed-key-happy-path/key.pub"))],
    );
    // Other bytes under the same digest claim: refused.
    assert!(
        check(
            &d,
            b"other bytes",
            &found,
            &[key(&format!("{dir}/managed-key-happy-path/key.pub"))]
        )
        .is_err()
    );
    // The conformance suite's wrong-key case: its key file does not verify (or does not even read).
    let wrong = format!("{dir}/managed-key-wrong-key_fail");
    if let Ok(k) = TrustedKey::from_file(&data(&format!("{wrong}/key.pub"))) {
        assert!(
            check(
                &d,
                &message,
                &bundle(&format!("{wrong}/bundle.sigstore.json")),
                &[k]
            )
            .is_err()
        );
    }
}

#[test]
fn attestations_and_keyless_bundles_are_not_release_signatures() {
    let npm = bundle("sigstore-go-key-dsse-npm-v0.1/bundle-publish.json");
    let keys = [key("sigstore-go-key-dsse-npm-v0.1/publish_key.pub")];
    let json: serde_json::Value =
        serde_json::from_str(&read("sigstore-go-key-dsse-npm-v0.1/bundle-publish.json")).unwrap();
    let enc = base64::engine::general_purpose::STANDARD;
    let statement: serde_json::Value = serde_json::from_slice(
        &enc.decode(json["dsseEnvelope"]["payload"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let subject = format!(
        "sha512:{}",
        statement["subject"][0]["digest"]["sha512"]
            .as_str()
            .unwrap_or("")
    );
    // Whatever digest is asked, an npm publish attestation is not a firmware signature.
    let err = check(&format!("sha256:{}", "2".repeat(64)), b"", &npm, &keys).unwrap_err();
    assert!(err.contains("attestation"), "{err} ({subject})");

    let keyless = bundle("sigstore-rs-keyless-cosign-image-bundle-v0.3/bundle_v03.json");
    let err = check(
        "sha256:c811d58d00000000000000000000000000000000000000000000000000000000",
        b"",
        &keyless,
        &keys,
    )
    .unwrap_err();
    assert!(err.contains("keyless"), "{err}");
}
