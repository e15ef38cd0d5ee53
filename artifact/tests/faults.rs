//! Lies and failures: cuts every 4 MiB, a flipped byte, a truncated blob, oversized and foreign
//! artifacts, unknown digests, bad credentials, a registry that is down. Each gives its code, no
//! panic, and nothing half-written is left in the cache.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are the failure report

mod common;

use common::*;
use mqtt_schema::ErrorCode;
use twinflash_artifact::{Credentials, FetchEvent};
use twinflash_harness::{Fault, FaultProxy, Registry, RegistryOptions};

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_fetch_through_cuts_every_4_mib_transfers_at_most_1_02_times_its_size() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "big.bin", (64 * MIB) as usize);
    let pushed = push_file(&host, "fw/big", &file).await;
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    proxy.set(Fault::CutAfter { bytes: 4 * MIB });
    let proxy_host = proxy.addr().to_string();
    let cache = tempfile::tempdir().unwrap();
    let (result, _) = fetch(
        config(cache.path(), &proxy_host),
        &via(&pushed.pinned_reference, &proxy_host),
    )
    .await;
    let fetched = result.unwrap();
    assert_eq!(sha256_file(&fetched.path), sha256_file(&file));
    let ratio = proxy.bytes_down() as f64 / (64 * MIB) as f64;
    assert!(
        proxy.connections() >= 16,
        "the proxy did not cut: {} connections",
        proxy.connections()
    );
    eprintln!(
        "cut every 4 MiB: {} connections, {} bytes down, ratio {ratio:.4}",
        proxy.connections(),
        proxy.bytes_down()
    );
    assert!(ratio <= 1.02, "transferred {ratio:.4} x the artifact size");
    assert!(half_written(cache.path()).is_empty());
}

#[tokio::test]
async fn a_flipped_byte_is_a_digest_mismatch_and_nothing_enters_the_cache() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "fw.bin", MIB as usize);
    let pushed = push_file(&host, "fw/flip", &file).await;
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    proxy.set(Fault::Corrupt { at_byte: 300_000 });
    let proxy_host = proxy.addr().to_string();
    let cache = tempfile::tempdir().unwrap();
    let (result, _) = fetch(
        config(cache.path(), &proxy_host),
        &via(&pushed.pinned_reference, &proxy_host),
    )
    .await;
    let err = result.unwrap_err();
    eprintln!("error: {err}");
    assert_eq!(err.code(), ErrorCode::DigestMismatch, "{err}");
    assert!(!err.is_transient());
    assert_eq!(
        files_under(&cache.path().join("blobs/sha256")),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_truncated_blob_is_a_digest_mismatch() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "fw.bin", 200_000);
    let pushed = push_file(&host, "fw/trunc", &file).await;
    let hex = pushed
        .artifact
        .layer_digest
        .trim_start_matches("sha256:")
        .to_owned();
    let data = registry
        .root_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data");
    let f = std::fs::File::options().write(true).open(&data).unwrap();
    f.set_len(150_000).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (result, _) = fetch(config(cache.path(), &host), &pushed.pinned_reference).await;
    let err = result.unwrap_err();
    eprintln!("error: {err}");
    assert_eq!(err.code(), ErrorCode::DigestMismatch, "{err}");
    assert_eq!(
        files_under(&cache.path().join("blobs/sha256")),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn oversized_foreign_unknown_and_down_each_have_their_code() {
    let mut registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "fw.bin", 100_000);
    let pushed = push_file(&host, "fw/codes", &file).await;
    let cache = tempfile::tempdir().unwrap();

    // Too large: refused before any byte of the layer is downloaded.
    let mut cfg = config(cache.path(), &host);
    cfg.max_size = 99_999;
    let err = fetch(cfg, &pushed.pinned_reference).await.0.unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooLarge, "{err}");

    // A foreign artifact type with the same layer.
    let foreign = push_foreign_manifest(&host, "fw/codes", &pushed).await;
    let err = fetch(config(cache.path(), &host), &foreign)
        .await
        .0
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnsupportedArtifact, "{err}");

    // An unknown digest.
    let unknown = format!("{host}/fw/codes@sha256:{}", "ab".repeat(32));
    let err = fetch(config(cache.path(), &host), &unknown)
        .await
        .0
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound, "{err}");

    // Not digest-pinned: no `FirmwareRef`, so nothing the fetcher takes.
    let err = twinflash_artifact::parse_pinned(&format!("{host}/fw/codes:1.4.2")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidReference, "{err}");

    assert_eq!(
        files_under(&cache.path().join("blobs/sha256")),
        Vec::<String>::new()
    );

    // The registry is down: waiting:registry-unreachable, then the error once retries run out.
    registry.stop();
    let (result, events) = fetch(config(cache.path(), &host), &pushed.pinned_reference).await;
    let err = result.unwrap_err();
    assert_eq!(err.code(), ErrorCode::RegistryUnreachable, "{err}");
    assert!(err.is_transient());
    let waits: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            FetchEvent::Waiting { code, attempt, .. } => Some((*code, *attempt)),
            FetchEvent::Progress { .. } => None,
        })
        .collect();
    assert_eq!(
        waits,
        vec![
            (ErrorCode::RegistryUnreachable, 1),
            (ErrorCode::RegistryUnreachable, 2)
        ]
    );
    assert_eq!(
        files_under(&cache.path().join("blobs/sha256")),
        Vec::<String>::new()
    );
}

/// Pushes a manifest with another artifactType for the same layer; returns its pinned reference.
async fn push_foreign_manifest(
    host: &str,
    repo: &str,
    pushed: &twinflash_artifact::Pushed,
) -> String {
    let client = twinflash_artifact::registry::build_client(&tls(host)).unwrap();
    let reference: twinflash_artifact::Reference = pushed.pinned_reference.parse().unwrap();
    let (bytes, _) = client
        .pull_manifest_raw(
            &reference,
            &oci_client::secrets::RegistryAuth::Anonymous,
            &[twinflash_artifact::format::MANIFEST_MEDIA_TYPE],
        )
        .await
        .unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    json["artifactType"] = "application/vnd.example.other.v1".into();
    let body = serde_json::to_vec(&json).unwrap();
    let target: twinflash_artifact::Reference = format!("{host}/{repo}:foreign").parse().unwrap();
    client
        .push_manifest_raw(
            &target,
            body.clone(),
            http::HeaderValue::from_static(twinflash_artifact::format::MANIFEST_MEDIA_TYPE),
        )
        .await
        .unwrap();
    use sha2::Digest;
    format!(
        "{host}/{repo}@sha256:{}",
        hex::encode(sha2::Sha256::digest(&body))
    )
}

#[tokio::test]
async fn credentials_are_checked() {
    let registry = Registry::start_with(RegistryOptions {
        basic_auth: Some(("flasher".into(), "s3cret".into())),
        ..RegistryOptions::default()
    })
    .unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    std::fs::write(&good, "s3cret\n").unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "wrong\n").unwrap();
    let creds = |file: &std::path::Path| Credentials {
        username: Some("flasher".into()),
        password_file: Some(file.to_owned()),
        ..Credentials::default()
    };
    let req = request(&format!("{host}/fw/auth:1"), &fixture("blinky.elf"), None);
    let pushed = push_with(&host, &req, &creds(&good)).await;

    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &host);
    cfg.credentials = creds(&bad);
    let err = fetch(cfg, &pushed.pinned_reference).await.0.unwrap_err();
    assert_eq!(err.code(), ErrorCode::RegistryAuth, "{err}");

    let err = fetch(config(cache.path(), &host), &pushed.pinned_reference)
        .await
        .0
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::RegistryAuth, "anonymous: {err}");
    assert_eq!(
        files_under(&cache.path().join("blobs/sha256")),
        Vec::<String>::new()
    );

    // A docker config.json with the right credentials works.
    let config_json = dir.path().join("config.json");
    std::fs::write(
        &config_json,
        format!(r#"{{"auths":{{"{host}":{{"auth":"Zmxhc2hlcjpzM2NyZXQ="}}}}}}"#),
    )
    .unwrap();
    let mut cfg = config(cache.path(), &host);
    cfg.credentials = Credentials {
        docker_config: Some(config_json),
        ..Credentials::default()
    };
    let fetched = fetch(cfg, &pushed.pinned_reference).await.0.unwrap();
    assert_eq!(
        sha256_file(&fetched.path),
        sha256_file(&fixture("blinky.elf"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_waits_then_completes_when_it_recovers() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "fw.bin", (2 * MIB) as usize);
    let pushed = push_file(&host, "fw/stall", &file).await;
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    proxy.set(Fault::Stall);
    let proxy_host = proxy.addr().to_string();
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &proxy_host);
    cfg.timeouts.idle = std::time::Duration::from_millis(300);
    cfg.retry.max_attempts = None;
    let fetcher = twinflash_artifact::Fetcher::new(cfg).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reference: mqtt_schema::FirmwareRef =
        via(&pushed.pinned_reference, &proxy_host).parse().unwrap();
    let task = tokio::spawn(async move {
        fetcher
            .fetch(
                &reference,
                |e| {
                    let _ = tx.send(e);
                },
                &cancel,
            )
            .await
    });
    // Wait for the first waiting:registry-unreachable, then heal the link.
    loop {
        match rx.recv().await.unwrap() {
            FetchEvent::Waiting { code, .. } => {
                assert_eq!(code, ErrorCode::RegistryUnreachable);
                break;
            }
            FetchEvent::Progress { .. } => {}
        }
    }
    proxy.set(Fault::Pass);
    let fetched = task.await.unwrap().unwrap();
    assert_eq!(sha256_file(&fetched.path), sha256_file(&file));
}
