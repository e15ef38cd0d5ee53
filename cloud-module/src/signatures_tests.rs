//! Tests of the policy lookup, the verdict cache and the pure publication judgement.

use super::*;
use crate::config::SignatureOverride;
use crate::seams::MemorySignatures;
use mqtt_schema::ErrorCode;
use twinflash_artifact::signature::{Format, SigningKey, TrustedKey, Verified};

const PINNED: &str =
    "r.local/fw/b:2@sha256:2222222222222222222222222222222222222222222222222222222222222222";
const OLD: &str =
    "r.local/fw/b:1@sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn verified() -> Verdict {
    Verdict::Verified(Verified {
        signer: "release".into(),
        key_id: "sha256:ab12".into(),
        format: Format::CosignSimpleSigning,
        location: "r.local tag sha256-2222.sig".into(),
        claimed_reference: Some("r.local/fw/b".into()),
    })
}

fn unsigned() -> Verdict {
    Verdict::Unsigned {
        looked_in: vec!["r.local".into()],
    }
}

fn invalid() -> Verdict {
    Verdict::Invalid {
        reasons: vec!["r.local tag: signature does not verify with any trusted key".into()],
    }
}

fn publish() -> Record {
    Record {
        generation: 3,
        desired: "r.local/fw/b:2".into(),
        pinned: PINNED.into(),
        reason: Reason::IntentPublished,
        message: format!("published {PINNED} (version 2) to the edge"),
    }
}

fn checked(mode: Mode, verdict: Result<Verdict, ResolveError>) -> Checked {
    Checked {
        scope: "plant-a".into(),
        mode,
        verdict,
    }
}

fn public_key() -> twinflash_artifact::signature::PublicKey {
    let der = SigningKey::generate_p256_pkcs8().unwrap();
    SigningKey::from_pkcs8_der(&der).unwrap().public().clone()
}

fn key() -> TrustedKey {
    TrustedKey {
        name: "release".into(),
        key: public_key(),
    }
}

fn policy(mode: Mode) -> Policy {
    Policy {
        mode,
        keys: vec![key()],
    }
}

#[test]
fn a_verified_intent_is_published_naming_its_signer() {
    let d = judge_publication(publish(), OLD, &checked(Mode::Require, Ok(verified())));
    let Decision::Publish(r) = d else {
        panic!("{d:?}")
    };
    assert_eq!(r.pinned, PINNED);
    assert_eq!(r.reason, Reason::IntentPublished);
    assert!(
        r.message.ends_with(", signed by release (sha256:ab12)"),
        "{}",
        r.message
    );
}

#[test]
fn require_rejects_unsigned_and_invalid_keeping_the_previous_pin() {
    for (verdict, reason, code) in [
        (unsigned(), Reason::Unsigned, ErrorCode::Unsigned),
        (
            invalid(),
            Reason::SignatureInvalid,
            ErrorCode::SignatureInvalid,
        ),
    ] {
        let d = judge_publication(publish(), OLD, &checked(Mode::Require, Ok(verdict.clone())));
        let Decision::Reject(r) = d else {
            panic!("{d:?}")
        };
        assert_eq!(r.reason, reason);
        assert_eq!(r.reason.code(), Some(code));
        assert!(!r.reason.is_final(), "re-checked at resync");
        assert_eq!(r.pinned, OLD, "the edge keeps what it was sent");
        assert_eq!((r.generation, r.desired.as_str()), (3, "r.local/fw/b:2"));
        assert!(r.message.contains(&verdict.describe()), "{}", r.message);
        assert!(r.message.contains("plant-a (require)"), "{}", r.message);
        assert!(r.message.ends_with(&format!("[{code}]")), "{}", r.message);
    }
}

#[test]
fn warn_publishes_with_the_warning() {
    let d = judge_publication(publish(), OLD, &checked(Mode::Warn, Ok(unsigned())));
    let Decision::Publish(r) = d else {
        panic!("{d:?}")
    };
    assert_eq!(r.pinned, PINNED);
    assert!(r.message.starts_with(&publish().message), "{}", r.message);
    assert!(r.message.contains("warning"), "{}", r.message);
    assert!(r.message.contains(&unsigned().describe()), "{}", r.message);
    assert!(r.message.ends_with("[unsigned]"), "{}", r.message);
}

#[test]
fn a_lookup_failure_retries_and_a_missing_manifest_is_rejected() {
    let down = ResolveError::Unreachable {
        reference: PINNED.into(),
        detail: "connection refused".into(),
    };
    let d = judge_publication(publish(), OLD, &checked(Mode::Require, Err(down)));
    assert!(
        matches!(&d, Decision::Retry { code: ErrorCode::RegistryUnreachable, message } if message.contains("connection refused")),
        "{d:?}"
    );
    let gone = ResolveError::NotFound {
        reference: PINNED.into(),
    };
    let d = judge_publication(publish(), OLD, &checked(Mode::Warn, Err(gone)));
    assert!(
        matches!(&d, Decision::Reject(r) if r.reason == Reason::ArtifactNotFound && r.pinned == OLD),
        "{d:?}"
    );
}

#[test]
fn the_most_specific_policy_wins() {
    let p = Policies::new(
        policy(Mode::Warn),
        vec![
            ("plant-a".into(), None, policy(Mode::Require)),
            ("plant-a".into(), Some("sensor-7".into()), Policy::default()),
            ("plant-b".into(), None, Policy::default()),
        ],
    );
    let id = |ns: &str, n: &str| DeviceId::namespaced(ns, n).unwrap();
    let of = |ns: &str, n: &str| {
        let s = p.for_device(&id(ns, n));
        (s.scope.clone(), s.policy.mode)
    };
    assert_eq!(of("plant-a", "sensor-1"), ("plant-a".into(), Mode::Require));
    assert_eq!(
        of("plant-a", "sensor-7"),
        ("plant-a/sensor-7".into(), Mode::Off)
    );
    assert_eq!(of("plant-b", "sensor-7"), ("plant-b".into(), Mode::Off));
    assert_eq!(of("plant-c", "x"), (DEFAULT_SCOPE.into(), Mode::Warn));
    assert!(p.any_enabled());
    assert!(!Policies::default().any_enabled());
}

#[tokio::test]
async fn verdicts_are_kept_per_reference_and_policy_and_off_is_never_asked() {
    let memory = MemorySignatures::default();
    memory.insert(PINNED, Ok(verified()));
    let policies = Policies::new(
        Policy::default(),
        vec![
            ("a".into(), None, policy(Mode::Require)),
            ("b".into(), None, policy(Mode::Warn)),
        ],
    );
    let gate = SignatureGate::new(policies, Arc::new(memory.clone()));
    let id = |ns: &str, n: &str| DeviceId::namespaced(ns, n).unwrap();
    for i in 0..50 {
        let c = gate.check_device(&id("a", &format!("d{i}")), PINNED).await;
        assert_eq!(c.map(|c| c.verdict), Some(Ok(verified())));
    }
    assert!(gate.check_device(&id("c", "d"), PINNED).await.is_none());
    let c = gate.check_namespace("b", PINNED).await.unwrap();
    assert_eq!((c.scope.as_str(), c.mode), ("b", Mode::Warn));
    assert_eq!(
        memory.calls(),
        vec![
            (PINNED.to_owned(), Mode::Require),
            (PINNED.to_owned(), Mode::Warn)
        ],
        "one verification per (reference, policy)"
    );
}

#[tokio::test]
async fn an_expired_verdict_and_a_failure_are_asked_again() {
    let memory = MemorySignatures::default();
    let down = ResolveError::Unreachable {
        reference: PINNED.into(),
        detail: "down".into(),
    };
    memory.insert(PINNED, Err(down.clone()));
    let gate = SignatureGate::new(
        Policies::new(policy(Mode::Require), Vec::new()),
        Arc::new(memory.clone()),
    );
    let id = DeviceId::namespaced("a", "d").unwrap();
    assert_eq!(
        gate.check_device(&id, PINNED).await.map(|c| c.verdict),
        Some(Err(down))
    );
    // The registry is back and the artifact was signed meanwhile: the failure was not kept.
    memory.insert(PINNED, Ok(verified()));
    assert_eq!(
        gate.check_device(&id, PINNED).await.map(|c| c.verdict),
        Some(Ok(verified()))
    );
    assert_eq!(memory.calls().len(), 2);
    // With a zero TTL (as after the TTL) the signatures are looked up again: a deleted one is seen.
    let gate = gate.with_ttl(Duration::ZERO);
    memory.insert(PINNED, Ok(unsigned()));
    assert_eq!(
        gate.check_device(&id, PINNED).await.map(|c| c.verdict),
        Some(Ok(unsigned()))
    );
    assert_eq!(memory.calls().len(), 3);
}

use std::path::PathBuf;

fn write_key(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    let p = dir.path().join(name);
    let pem = public_key().to_pem();
    std::fs::write(&p, pem).unwrap();
    p
}

#[test]
fn load_reads_the_keys_and_names_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let release = write_key(&dir, "release.pub");
    let plant = write_key(&dir, "plant-a.pub");
    let cfg = SignaturesConfig {
        mode: Mode::Warn,
        keys: vec![release.clone()],
        overrides: vec![
            SignatureOverride {
                namespace: "plant-a".into(),
                device: None,
                mode: Mode::Require,
                keys: vec![plant],
            },
            SignatureOverride {
                namespace: "plant-b".into(),
                device: Some("s1".into()),
                mode: Mode::Require,
                keys: Vec::new(),
            },
        ],
    };
    let p = Policies::load(&cfg).unwrap();
    let names = |ns: &str, n: &str| -> Vec<String> {
        let id = DeviceId::namespaced(ns, n).unwrap();
        p.for_device(&id)
            .policy
            .keys
            .iter()
            .map(|k| k.name.clone())
            .collect()
    };
    assert_eq!(names("plant-a", "x"), vec!["plant-a"]);
    assert_eq!(
        names("plant-b", "s1"),
        vec!["release"],
        "the default's keys"
    );
    assert_eq!(names("other", "x"), vec!["release"]);

    let missing = dir.path().join("gone.pub");
    let mut bad = cfg.clone();
    bad.overrides[0].keys = vec![missing.clone()];
    let e = Policies::load(&bad).unwrap_err().to_string();
    assert!(e.contains("gone.pub") && e.contains("plant-a"), "{e}");

    let garbage = dir.path().join("garbage.pub");
    std::fs::write(&garbage, "not a key").unwrap();
    let mut bad = cfg;
    bad.keys = vec![garbage];
    let e = Policies::load(&bad).unwrap_err().to_string();
    assert!(e.contains("garbage.pub"), "{e}");
}
