//! An independent implementation of cosign's format, through a real registry (Debian's docker-registry):
//! sigstore-rs (the `sigstore` crate, Sigstore's Rust client, its `cosign` module) verifies what
//! `twinflash_artifact::signature::write` writes (the same code `twinflash sign` runs), and twinflash verifies what
//! sigstore-rs signs. skopeo could have been the other verifier, but Debian builds it with sigstore disabled.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are the failure report

use sigstore::cosign::constraint::{Constraint, PrivateKeySigner};
use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
use sigstore::cosign::{ClientBuilder, CosignCapabilities, SignatureLayer};
use sigstore::crypto::SigningScheme;
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};
use twinflash_artifact::signature::write::{SignFormat, sign};
use twinflash_artifact::signature::{
    Mode, Policy, PublicKey, SigningKey, TrustedKey, Verdict, Verifier,
};
use twinflash_artifact::{Credentials, FetchConfig, TlsOptions};
use twinflash_harness::Registry;

fn tls(host: &str) -> TlsOptions {
    TlsOptions {
        plain_http: vec![host.to_owned()],
        ..TlsOptions::default()
    }
}

async fn pushed(registry: &Registry, repo: &str, fill: u8) -> String {
    let dir = tempfile::tempdir().unwrap();
    twinflash_testkit::push(
        registry,
        dir.path(),
        &format!("{repo}:1.0.0"),
        &twinflash_testkit::image(fill, 4096),
        "1.0.0",
        twinflash_testkit::CHIP,
    )
    .await
}

fn sigstore_client() -> sigstore::cosign::Client {
    let cfg = ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    };
    ClientBuilder::default()
        .with_oci_client_config(cfg)
        .build()
        .unwrap()
}

/// sigstore-rs's verdict: does a signature layer of `reference` satisfy a public-key constraint with `pem`?
async fn sigstore_verifies(reference: &str, pem: &str) -> (usize, bool) {
    let image: OciReference = without_tag(reference).parse().unwrap();
    let mut client = sigstore_client();
    let layers = client
        .trusted_signature_layers(&Auth::Anonymous, &image)
        .await
        .unwrap();
    let verifier =
        PublicKeyVerifier::new(pem.as_bytes(), &SigningScheme::ECDSA_P256_SHA256_ASN1).unwrap();
    let constraints: VerificationConstraintVec = vec![Box::new(verifier)];
    let ok = sigstore::cosign::verify_constraints(&layers, constraints.iter()).is_ok();
    (layers.len(), ok)
}

/// `host/repo:tag@digest` -> `host/repo@digest`.
fn without_tag(reference: &str) -> String {
    let (name, digest) = reference.split_once('@').unwrap();
    let name = match name.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => n,
        _ => name,
    };
    format!("{name}@{digest}")
}

fn key() -> SigningKey {
    SigningKey::from_pkcs8_der(&SigningKey::generate_p256_pkcs8().unwrap()).unwrap()
}

#[tokio::test]
async fn sigstore_rs_verifies_what_twinflash_signs_and_refuses_another_key() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let reference = pushed(&registry, "fw/interop", 0x5a).await;
    let k = key();
    let signed = sign(
        &tls(&host),
        &Credentials::default(),
        &reference,
        &k,
        SignFormat::Cosign,
    )
    .await
    .unwrap();
    assert!(
        signed.location.starts_with("tag sha256-"),
        "{}",
        signed.location
    );

    let (layers, ok) = sigstore_verifies(&reference, &k.public().to_pem()).await;
    assert_eq!(layers, 1, "sigstore-rs found no cosign signature layer");
    assert!(ok, "sigstore-rs does not verify twinflash's signature");
    let (_, ok) = sigstore_verifies(&reference, &key().public().to_pem()).await;
    assert!(!ok, "sigstore-rs accepted another key");

    // A second signature (a rotated key) is a second layer; sigstore-rs accepts either key.
    let k2 = key();
    sign(
        &tls(&host),
        &Credentials::default(),
        &reference,
        &k2,
        SignFormat::Cosign,
    )
    .await
    .unwrap();
    let (layers, ok) = sigstore_verifies(&reference, &k2.public().to_pem()).await;
    assert_eq!(layers, 2);
    assert!(ok);
}

#[tokio::test]
async fn twinflash_verifies_what_sigstore_rs_signs() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let reference = pushed(&registry, "fw/other", 0xa5).await;
    let digest = reference.split_once('@').unwrap().1.to_owned();
    let image: OciReference = without_tag(&reference).parse().unwrap();

    let signer = SigningScheme::ECDSA_P256_SHA256_ASN1
        .create_signer()
        .unwrap();
    let pem = signer
        .to_sigstore_keypair()
        .unwrap()
        .public_key_to_pem()
        .unwrap();
    let mut layer = SignatureLayer::new_unsigned(&image, &digest).unwrap();
    assert!(
        PrivateKeySigner::new_with_signer(signer)
            .add_constraint(&mut layer)
            .unwrap()
    );
    let mut client = sigstore_client();
    let (cosign_image, _) = client.triangulate(&image, &Auth::Anonymous).await.unwrap();
    client
        .push_signature(None, &Auth::Anonymous, &cosign_image, vec![layer])
        .await
        .unwrap();

    let mut cfg = FetchConfig::new(tempfile::tempdir().unwrap().path());
    cfg.plain_http = vec![host.clone()];
    let policy = Policy {
        mode: Mode::Require,
        keys: vec![TrustedKey {
            name: "sigstore-rs".to_owned(),
            key: PublicKey::from_pem(pem.as_bytes()).unwrap(),
        }],
    };
    let verdict = Verifier::new(&cfg)
        .unwrap()
        .verify(
            &reference.parse::<mqtt_schema::FirmwareRef>().unwrap(),
            &policy,
        )
        .await
        .unwrap();
    let Verdict::Verified(v) = verdict else {
        panic!("twinflash does not verify sigstore-rs's signature: {verdict:?}");
    };
    assert_eq!(v.signer, "sigstore-rs");
    let other = Policy {
        mode: Mode::Require,
        keys: vec![TrustedKey {
            name: "other".to_owned(),
            key: key().public().clone(),
        }],
    };
    let verdict = Verifier::new(&cfg)
        .unwrap()
        .verify(
            &reference.parse::<mqtt_schema::FirmwareRef>().unwrap(),
            &other,
        )
        .await
        .unwrap();
    assert_eq!(
        verdict.code().map(|c| c.as_str()),
        Some("signature-invalid")
    );
}
