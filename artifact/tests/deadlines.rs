//! Hostile registries that trickle bytes: a manifest or a token answer at about 1 byte/s ends with
//! `registry-unreachable` once its total deadline passes (the idle timeout never trips on a
//! trickle), while a slow blob that makes progress completes across its per-request deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are the failure report

mod common;

use std::time::Duration;

use common::*;
use mqtt_schema::ErrorCode;
use twinflash_artifact::{FetchError, FetchEvent};
use twinflash_harness::{Fault, FaultProxy, Registry};

/// Fetches; fails the test if the fetch does not end (the bug: it never did).
async fn fetch_ends(cfg: twinflash_artifact::FetchConfig, reference: &str) -> (FetchError, usize) {
    let fetcher = twinflash_artifact::Fetcher::new(cfg).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut waiting = Vec::new();
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        fetcher.fetch(
            &reference.parse().unwrap(),
            |e| {
                if let FetchEvent::Waiting { code, .. } = e {
                    waiting.push(code);
                }
            },
            &cancel,
        ),
    )
    .await
    .expect("the fetch did not end: no deadline stopped the trickle");
    let err = result.unwrap_err();
    assert!(
        waiting.iter().all(|c| *c == ErrorCode::RegistryUnreachable),
        "{waiting:?}"
    );
    (err, waiting.len())
}

#[tokio::test]
async fn a_manifest_trickled_at_one_byte_per_second_ends_registry_unreachable() {
    let (manifest, digest) = manifest_for(b"fw");
    let host = scripted(move |_, target, _| {
        if target.contains("/manifests/") {
            answer(200, manifest.clone(), true)
        } else {
            answer(404, b"{}".to_vec(), false)
        }
    })
    .host;
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &host);
    cfg.timeouts.manifest = Duration::from_secs(1);
    let (err, waits) = fetch_ends(cfg, &format!("{host}/fw/slow@{digest}")).await;
    assert_eq!(err.code(), ErrorCode::RegistryUnreachable, "{err}");
    assert!(err.is_transient(), "the agent waits and retries: {err}");
    assert!(err.to_string().contains("manifest"), "{err}");
    assert_eq!(waits, 2, "three attempts, two waits in between");
    assert!(half_written(cache.path()).is_empty());
}

#[tokio::test]
async fn a_token_answer_trickled_at_one_byte_per_second_ends_registry_unreachable() {
    let (manifest, digest) = manifest_for(b"fw");
    let host = scripted(move |host, target, auth| {
        if target.starts_with("/token") {
            // Padded: at 1 byte/s the answer would take ten minutes.
            let json = format!(r#"{}{{"token":"T","expires_in":300}}"#, " ".repeat(600));
            answer(200, json.into_bytes(), true)
        } else if auth != "Bearer T" {
            Answer {
                extra: format!(
                    "WWW-Authenticate: Bearer realm=\"http://{host}/token\",service=\"s\"\r\n"
                ),
                ..answer(
                    401,
                    br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_vec(),
                    false,
                )
            }
        } else {
            answer(200, manifest.clone(), false)
        }
    })
    .host;
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &host);
    cfg.timeouts.token = Duration::from_secs(1);
    let (err, _) = fetch_ends(cfg, &format!("{host}/fw/slow@{digest}")).await;
    assert_eq!(err.code(), ErrorCode::RegistryUnreachable, "{err}");
    assert!(err.to_string().contains("token service"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_blob_that_makes_progress_completes_across_its_request_deadline() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "fw.bin", 600 * 1024);
    let pushed = push_file(&host, "fw/slowblob", &file).await;
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    proxy.set(Fault::Bandwidth {
        bytes_per_sec: 256 * 1024,
    });
    let proxy_host = proxy.addr().to_string();
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &proxy_host);
    cfg.timeouts.blob_request = Duration::from_secs(1);
    cfg.retry.max_attempts = Some(1); // a request that made progress must not count as a failure
    let (result, _) = fetch(cfg, &via(&pushed.pinned_reference, &proxy_host)).await;
    let fetched = result.unwrap();
    assert_eq!(sha256_file(&fetched.path), sha256_file(&file));
    assert!(
        proxy.connections() > 2,
        "the deadline ended requests: {} connections",
        proxy.connections()
    );
}
