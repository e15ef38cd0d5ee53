//! The registry surface under hostile input (issue 23): a cache that was changed on disk, token realms and redirects
//! that leave `plain_http` or point at link-local addresses, signature lookups that hang, indexes where a firmware
//! manifest belongs. Real registry where the case allows, scripted loopback servers for the rest.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are the failure report

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mqtt_schema::ErrorCode;
use twinflash_artifact::signature::{LookupLimits, Mode, Policy, SigningKey, TrustedKey, Verifier};
use twinflash_artifact::{Credentials, FetchConfig, FetchError, Fetcher};
use twinflash_harness::Registry;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Issue 23: one flipped byte in a cached layer, and the CLI printed "verified … from cache" and the agent flashed
/// it. A changed blob is now fetched again; offline, the fetch fails: it is never handed out.
#[tokio::test]
async fn a_flipped_byte_in_a_cached_layer_is_fetched_again_never_used() {
    let mut registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "fw.bin", 300_000);
    let original = std::fs::read(&file).unwrap();
    let pushed = push_file(&host, "fw/flip", &file).await;
    let cache = tempfile::tempdir().unwrap();

    let first = fetch(config(cache.path(), &host), &pushed.pinned_reference)
        .await
        .0
        .unwrap();
    flip_a_byte(&first.path);
    let again = fetch(config(cache.path(), &host), &pushed.pinned_reference)
        .await
        .0
        .unwrap();
    assert_eq!(
        again.bytes_received, pushed.artifact.size,
        "the changed blob was handed out from the cache"
    );
    assert_eq!(again.source, host);
    assert_eq!(std::fs::read(&again.path).unwrap(), original);

    // Offline: the changed blob cannot be replaced, so the fetch fails (and the blob is gone).
    flip_a_byte(&again.path);
    registry.stop();
    let err = fetch(config(cache.path(), &host), &pushed.pinned_reference)
        .await
        .0
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::RegistryUnreachable, "{err}");
    assert!(!again.path.exists(), "the changed blob stayed in the cache");
}

fn flip_a_byte(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[1234] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// A registry that serves one firmware (manifest and blob) only with `Bearer T`, and whose 401 names `realm`.
fn registry_with_realm(realm: String, blob: Vec<u8>) -> (Scripted, String) {
    let (manifest, digest) = manifest_for(&blob);
    let server = scripted(move |_, target, auth| {
        if auth != "Bearer T" {
            Answer {
                extra: format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"s\"\r\n"),
                ..answer(
                    401,
                    br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_vec(),
                    false,
                )
            }
        } else if target.contains("/manifests/") {
            answer(200, manifest.clone(), false)
        } else {
            answer(200, blob.clone(), false)
        }
    });
    (server, digest)
}

/// A token service that records what it was sent, and a registry whose 401 names it over plain HTTP.
fn registry_with_plain_realm() -> (Scripted, Seen, Scripted, String) {
    let (tokens, seen) = token_service();
    let (registry, digest) =
        registry_with_realm(format!("http://{}/token", tokens.host), b"fw".to_vec());
    (tokens, seen, registry, digest)
}

/// A token service that records what it was sent.
fn token_service() -> (Scripted, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let server = scripted(move |_, target, auth| {
        log.lock().unwrap().push(format!("{target} {auth}"));
        answer(200, br#"{"token":"T","expires_in":300}"#.to_vec(), false)
    });
    (server, seen)
}

/// Issue 23: a registry whose 401 named a token realm on another host over plain HTTP received `user:password` in
/// clear. `plain_http` now applies to the realm too: refused before a byte is sent there.
#[tokio::test]
async fn a_token_realm_over_plain_http_outside_plain_http_gets_no_credentials() {
    let (tokens, seen, registry, digest) = registry_with_plain_realm();
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    // Only the registry is plain HTTP; the token service is not listed.
    let mut cfg = config(cache.path(), &registry.host);
    cfg.credentials = basic(dir.path(), "s3cret");
    let err = fetch(cfg.clone(), &format!("{}/fw/a@{digest}", registry.host))
        .await
        .0
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::RedirectRefused, "{err}");
    assert!(!err.is_transient(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("token realm") && msg.contains("plain_http"),
        "{msg}"
    );
    assert_eq!(
        tokens.connections(),
        0,
        "the token service was contacted: {:?}",
        seen.lock().unwrap()
    );

    // Listed, the same realm works: the rule is plain_http, not "another host".
    cfg.plain_http.push(tokens.host.clone());
    let fetched = fetch(cfg, &format!("{}/fw/a@{digest}", registry.host))
        .await
        .0
        .unwrap();
    assert_eq!(std::fs::read(fetched.path).unwrap(), b"fw");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// `push` and `sign` go through oci-client, which follows the realm itself: the realm is checked first.
#[tokio::test]
async fn push_checks_the_token_realm_before_oci_client_follows_it() {
    let (tokens, _, registry, _) = registry_with_plain_realm();
    let dir = tempfile::tempdir().unwrap();
    let err = twinflash_artifact::push(
        &tls(&registry.host),
        &basic(dir.path(), "s3cret"),
        &request(
            &format!("{}/fw/p:1.4.2", registry.host),
            &fixture("blinky.bin"),
            None,
        ),
        |_, _| {},
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::RedirectRefused, "{err}");
    assert_eq!(
        tokens.connections(),
        0,
        "oci-client reached the token service"
    );
}

/// A registry (plain HTTP, listed) whose blob answer is a redirect to `location`.
fn redirecting_registry(location: String) -> (Scripted, String) {
    let blob = b"firmware bytes".to_vec();
    let (manifest, digest) = manifest_for(&blob);
    let server = scripted(move |_, target, _| {
        if target.contains("/manifests/") {
            answer(200, manifest.clone(), false)
        } else {
            redirect(&location)
        }
    });
    (server, digest)
}

/// Issue 23: blob redirects from TLS to plain HTTP were followed. `plain_http` applies to every hop.
#[tokio::test]
async fn a_blob_redirect_to_plain_http_outside_plain_http_is_refused() {
    let storage = scripted(|_, _, _| answer(200, b"firmware bytes".to_vec(), false));
    let (registry, digest) = redirecting_registry(format!("http://{}/blob", storage.host));
    let cache = tempfile::tempdir().unwrap();
    let err = fetch(
        config(cache.path(), &registry.host),
        &format!("{}/fw/r@{digest}", registry.host),
    )
    .await
    .0
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::RedirectRefused, "{err}");
    assert!(err.to_string().contains("redirect to http://"), "{err}");
    assert_eq!(storage.connections(), 0, "the redirect was followed");
}

/// Issue 23: redirects to link-local addresses were followed and the answer became `failed:registry-auth`. Refused
/// before any connection is made, under its own code. (169.254.169.254 is never connected to: the policy refuses
/// the hop before reqwest opens a socket; it is listed in plain_http so that only the link-local rule can refuse.)
#[tokio::test]
async fn redirects_to_link_local_addresses_are_refused_before_connecting() {
    for location in [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "https://169.254.169.254/",
        "http://[fe80::1]/",
    ] {
        let (registry, digest) = redirecting_registry(location.to_owned());
        let cache = tempfile::tempdir().unwrap();
        let mut cfg = config(cache.path(), &registry.host);
        cfg.plain_http
            .extend(["169.254.169.254".to_owned(), "[fe80::1]".to_owned()]);
        let err = fetch(cfg, &format!("{}/fw/l@{digest}", registry.host))
            .await
            .0
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::RedirectRefused, "{location}: {err}");
        assert!(err.to_string().contains("link-local"), "{location}: {err}");
    }
}

/// Issue 23: 10,000 referrers that each hang were fetched one by one at the manifest deadline (a device showed
/// `pending` for about an hour, `twinflash verify` too). One lookup now has a total deadline, and examines a bounded
/// number of referrers; cosign's tag is asked at the same time.
#[tokio::test]
async fn a_signature_lookup_of_hanging_referrers_ends_at_its_deadline() {
    let (manifest, digest) = manifest_for(b"fw");
    let (registry, asked) = hanging_referrers(manifest, &digest, None, 10_000).unwrap();
    let key = SigningKey::from_pkcs8_der(&SigningKey::generate_p256_pkcs8().unwrap()).unwrap();
    let policy = Policy {
        mode: Mode::Require,
        keys: vec![TrustedKey {
            name: "release".into(),
            key: key.public().clone(),
        }],
    };
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &registry.host);
    cfg.signatures = policy.clone();
    cfg.retry.max_attempts = Some(1);
    cfg.signature_lookup = LookupLimits {
        deadline: Duration::from_secs(3),
        max_referrers: 8,
    };
    let reference = format!("{}/fw/s@{digest}", registry.host);

    let ended = tokio::time::timeout(Duration::from_secs(60), fetch(cfg.clone(), &reference))
        .await
        .expect("the signature lookup did not end within a minute");
    let err = ended.0.unwrap_err();
    assert_eq!(err.code(), ErrorCode::RegistryUnreachable, "{err}");
    assert!(err.is_transient(), "under require the device waits: {err}");
    assert!(
        err.to_string().contains("signature lookup not complete"),
        "{err}"
    );
    let n = asked.lock().unwrap().len();
    assert!(
        (1..=8).contains(&n),
        "{n} referrers asked, at most 8 examined"
    );

    // `twinflash verify` (the Verifier) ends the same way.
    let verify = Verifier::new(&cfg).unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        verify.verify(&reference.parse().unwrap(), &policy),
    )
    .await
    .expect("verify did not end within a minute");
    let err: FetchError = result.unwrap_err();
    assert_eq!(err.code(), ErrorCode::RegistryUnreachable, "{err}");
}

/// Issue 23: a nested index was reported as `not-found`. An index (nested or not) where a firmware manifest belongs
/// is an unsupported artifact, and says so.
#[tokio::test]
async fn an_index_where_a_firmware_manifest_belongs_is_an_unsupported_artifact() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let pushed = push_file(&host, "fw/idx", &fixture("blinky.bin")).await;
    let manifest_size = curl(&[
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!(
            "http://{host}/v2/fw/idx/manifests/{}",
            pushed.manifest_digest
        ),
    ])
    .len();
    let index = |media_type: &str, digest: &str, size: usize| {
        serde_json::to_vec(
            &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": media_type, "digest": digest, "size": size}]}),
        )
        .unwrap()
    };
    let inner = index(
        "application/vnd.oci.image.manifest.v1+json",
        &pushed.manifest_digest,
        manifest_size,
    );
    let inner_digest = sha256_of(&inner);
    registry_put(&host, "fw/idx", "inner", OCI_INDEX, &inner);
    let outer = index(OCI_INDEX, &inner_digest, inner.len());
    let outer_digest = sha256_of(&outer);
    registry_put(&host, "fw/idx", "outer", OCI_INDEX, &outer);

    for digest in [&outer_digest, &inner_digest] {
        let cache = tempfile::tempdir().unwrap();
        let err = fetch(
            config(cache.path(), &host),
            &format!("{host}/fw/idx@{digest}"),
        )
        .await
        .0
        .unwrap_err();
        assert_eq!(
            err.code(),
            ErrorCode::UnsupportedArtifact,
            "{digest}: {err}"
        );
        assert!(err.to_string().contains("image index"), "{err}");
    }
    // inspect by tag says the same.
    let err = twinflash_artifact::inspect(
        &tls(&host),
        &Credentials::default(),
        &format!("{host}/fw/idx:outer"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnsupportedArtifact, "{err}");
}

fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Something that reads a configured path and fails: its message.
type ReadsPath = fn(PathBuf) -> String;

/// Issue 23: key, password and CA paths that are `/dev/zero` or a FIFO were read without bound, or hung. Each is
/// refused at once, naming what the path is. (Run on a thread with a deadline: a hang fails the test.)
#[test]
fn key_password_and_ca_paths_that_are_fifos_or_devices_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    for (path, kind) in [
        (fifo.clone(), "FIFO"),
        (PathBuf::from("/dev/zero"), "character device"),
    ] {
        let cases: [(&str, ReadsPath); 5] = [
            ("password file", |p| {
                Credentials {
                    username: Some("u".into()),
                    password_file: Some(p),
                    ..Credentials::default()
                }
                .resolve()
                .unwrap_err()
                .to_string()
            }),
            ("docker config", |p| {
                Credentials {
                    docker_config: Some(p),
                    ..Credentials::default()
                }
                .resolve()
                .unwrap_err()
                .to_string()
            }),
            ("CA file", |p| {
                let mut cfg = FetchConfig::new(tempfile::tempdir().unwrap().path());
                cfg.ca_file = Some(p);
                Fetcher::new(cfg).unwrap_err().to_string()
            }),
            ("client key", |p| {
                let mut cfg = FetchConfig::new(tempfile::tempdir().unwrap().path());
                cfg.client_cert = Some(fixture("blinky.bin"));
                cfg.client_key = Some(p);
                Fetcher::new(cfg).unwrap_err().to_string()
            }),
            ("signature key", |p| {
                TrustedKey::from_file(&p).unwrap_err().to_string()
            }),
        ];
        for (what, case) in cases {
            let (tx, rx) = std::sync::mpsc::channel();
            let p = path.clone();
            std::thread::spawn(move || {
                let _ = tx.send(case(p));
            });
            let msg = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{what} at {}: hung", path.display()));
            assert!(msg.contains(kind), "{what} at {}: {msg}", path.display());
        }
    }
}
