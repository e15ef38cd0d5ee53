use super::*;

fn signing_key() -> SigningKey {
    SigningKey::from_pkcs8_der(&SigningKey::generate_p256_pkcs8().unwrap()).unwrap()
}

fn trusted(k: &SigningKey, name: &str) -> TrustedKey {
    TrustedKey {
        name: name.to_owned(),
        key: k.public().clone(),
    }
}

fn simple(k: &SigningKey, digest: &str) -> Found {
    let payload = cosign::Payload::new("127.0.0.1:5000/fw/x", digest).to_bytes();
    Found {
        location: "here".to_owned(),
        body: Body::Simple {
            signature: base64::engine::general_purpose::STANDARD.encode(k.sign(&payload).unwrap()),
            payload: String::from_utf8(payload).unwrap(),
            keyless: false,
        },
    }
}

const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const OTHER: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

#[test]
fn a_simple_signature_by_a_trusted_key_verifies_and_names_its_signer() {
    let k = signing_key();
    let v = check(
        D,
        b"",
        &simple(&k, D),
        &[trusted(&signing_key(), "old"), trusted(&k, "release")],
    )
    .unwrap();
    assert_eq!(v.signer, "release");
    assert_eq!(v.key_id, k.public().key_id());
    assert_eq!(v.claimed_reference.as_deref(), Some("127.0.0.1:5000/fw/x"));
}

#[test]
fn wrong_key_other_digest_and_tampered_payload_are_refused() {
    let k = signing_key();
    let err = check(D, b"", &simple(&k, D), &[trusted(&signing_key(), "other")]).unwrap_err();
    assert!(err.contains("does not verify"), "{err}");
    let err = check(D, b"", &simple(&k, OTHER), &[trusted(&k, "k")]).unwrap_err();
    assert!(err.contains("another digest"), "{err}");
    let mut tampered = simple(&k, D);
    if let Body::Simple { payload, .. } = &mut tampered.body {
        *payload = payload.replace("127.0.0.1", "127.0.0.2");
    }
    assert!(check(D, b"", &tampered, &[trusted(&k, "k")]).is_err());
}

#[test]
fn the_verdict_is_unsigned_invalid_or_verified() {
    let k = signing_key();
    let keys = [trusted(&k, "k")];
    let v = judge(D, b"", &[], &keys, vec!["origin".to_owned()]);
    assert_eq!(v.code(), Some(mqtt_schema::ErrorCode::Unsigned));
    let v = judge(D, b"", &[simple(&signing_key(), D)], &keys, vec![]);
    assert_eq!(v.code(), Some(mqtt_schema::ErrorCode::SignatureInvalid));
    let v = judge(
        D,
        b"",
        &[simple(&signing_key(), D), simple(&k, D)],
        &keys,
        vec![],
    );
    assert!(matches!(v, Verdict::Verified(_)), "{v:?}");
}

#[test]
fn warn_and_require_need_a_key() {
    assert!(
        Policy {
            mode: Mode::Require,
            keys: vec![]
        }
        .check()
        .is_err()
    );
    assert!(
        Policy {
            mode: Mode::Off,
            keys: vec![]
        }
        .check()
        .is_ok()
    );
}
