//! Resume paths: a cancelled fetch continues from its checkpoint, a source that answers a Range
//! request with 200 restarts cleanly, registry mirrors are tried before the origin, HTTP statuses
//! of a scripted registry map to their codes (503/429/500 wait and retry, 403/400/404 are final).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are the failure report

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use mqtt_schema::ErrorCode;
use sha2::{Digest, Sha256};
use twinflash_artifact::{FetchError, FetchEvent, Fetcher, Mirror};
use twinflash_harness::{Fault, FaultProxy, Registry};

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_fetch_resumes_from_its_checkpoint() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "fw.bin", (8 * MIB) as usize);
    let pushed = push_file(&host, "fw/cancel", &file).await;
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    proxy.set(Fault::Bandwidth {
        bytes_per_sec: 4 * MIB,
    });
    let proxy_host = proxy.addr().to_string();
    let reference = via(&pushed.pinned_reference, &proxy_host);
    let cache = tempfile::tempdir().unwrap();

    let fetcher = Arc::new(Fetcher::new(config(cache.path(), &proxy_host)).unwrap());
    let cancel = tokio_util::sync::CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = {
        let (fetcher, cancel, reference) = (fetcher.clone(), cancel.clone(), reference.clone());
        tokio::spawn(async move {
            fetcher
                .fetch(
                    &reference.parse().unwrap(),
                    move |e| {
                        let _ = tx.send(e);
                    },
                    &cancel,
                )
                .await
        })
    };
    while let Some(event) = rx.recv().await {
        if let FetchEvent::Progress { done, .. } = event
            && done >= 3 * MIB
        {
            cancel.cancel();
            break;
        }
    }
    let err = task.await.unwrap().unwrap_err();
    assert!(matches!(err, FetchError::Cancelled), "{err}");
    let hex = pushed.artifact.layer_digest.trim_start_matches("sha256:");
    let state = cache
        .path()
        .join("blobs/sha256")
        .join(format!("{hex}.state"));
    let (durable, hasher) = twinflash_artifact::fetch::read_state(&state).unwrap();
    assert!((3 * MIB..8 * MIB).contains(&durable), "durable {durable}");
    // The checkpoint names bytes that were both written and hashed: the partial holds them and
    // the saved hash state is the hash of exactly them.
    let source = std::fs::read(&file).unwrap();
    let partial = std::fs::read(state.with_extension("partial")).unwrap();
    assert!(partial.len() as u64 >= durable);
    assert!(partial[..durable as usize] == source[..durable as usize]);
    assert_eq!(
        hex::encode(hasher.finalize()),
        hex::encode(Sha256::digest(&source[..durable as usize]))
    );

    proxy.set(Fault::Pass);
    let (result, _) = fetch(config(cache.path(), &proxy_host), &reference).await;
    let fetched = result.unwrap();
    assert_eq!(fetched.bytes_received, 8 * MIB - durable);
    assert_eq!(sha256_file(&fetched.path), sha256_file(&file));
    assert!(half_written(cache.path()).is_empty());
}

/// What the scripted registry answers: status, content type, body, and how many body bytes to
/// send before closing the connection.
struct Answer {
    status: u16,
    ctype: &'static str,
    body: Vec<u8>,
    send: usize,
}

impl Answer {
    fn ok(ctype: &'static str, body: &[u8]) -> Self {
        Self {
            status: 200,
            ctype,
            body: body.to_vec(),
            send: usize::MAX,
        }
    }

    fn status(status: u16, body: &str) -> Self {
        Self {
            status,
            ctype: "application/json",
            body: body.as_bytes().to_vec(),
            send: usize::MAX,
        }
    }
}

/// A one-request-per-connection HTTP server on loopback: `answer(path, n)` decides the reply to
/// the `n`-th request (0-based) for `path`. It ignores Range headers: every answer is whole.
fn scripted_registry(answer: impl Fn(&str, usize) -> Answer + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut seen = std::collections::HashMap::<String, usize>::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_owned();
            let n = seen.entry(path.clone()).or_default();
            let a = answer(&path, *n);
            *n += 1;
            let head = format!(
                "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                a.status,
                a.ctype,
                a.body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&a.body[..a.body.len().min(a.send)]);
        }
    });
    host
}

/// A firmware manifest for `blob`, and its digest.
fn manifest_for(blob: &[u8]) -> (Vec<u8>, String) {
    let layer = format!("sha256:{}", hex::encode(Sha256::digest(blob)));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": "application/vnd.twinflash.firmware.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                   "digest": twinflash_artifact::format::EMPTY_CONFIG_DIGEST},
        "layers": [{"mediaType": "application/vnd.twinflash.firmware.elf", "size": blob.len(), "digest": layer}],
        "annotations": {"org.opencontainers.image.version": "1.0.0", "io.twinflash.firmware.chip": "x"}
    }))
    .unwrap();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
    (manifest, digest)
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[tokio::test]
async fn a_200_answer_to_a_range_request_restarts_cleanly() {
    let blob: Vec<u8> = (0..3 * MIB).map(|i| (i * 31 % 253) as u8).collect();
    let (manifest, mdigest) = manifest_for(&blob);
    let cut = 1_500_000;
    let blob_requests = Arc::new(AtomicUsize::new(0));
    let (counter, body) = (blob_requests.clone(), blob.clone());
    // The first blob answer is cut after `cut` bytes; the second ignores the Range request.
    let host = scripted_registry(move |path, n| {
        if path.contains("/manifests/") {
            Answer::ok(MANIFEST, &manifest)
        } else if path.contains("/blobs/") {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut a = Answer::ok("application/octet-stream", &body);
            if n == 0 {
                a.send = cut;
            }
            a
        } else {
            Answer::ok("application/json", b"{}")
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let (result, _) = fetch(
        config(cache.path(), &host),
        &format!("{host}/fw/norange@{mdigest}"),
    )
    .await;
    let fetched = result.unwrap();
    assert_eq!(blob_requests.load(Ordering::SeqCst), 2);
    assert_eq!(
        fetched.bytes_received,
        cut as u64 + blob.len() as u64,
        "restart from zero"
    );
    assert_eq!(std::fs::read(&fetched.path).unwrap(), blob);
}

#[tokio::test]
async fn busy_registries_are_waited_for_and_refusals_are_final() {
    let blob = b"firmware bytes".to_vec();
    let (manifest, mdigest) = manifest_for(&blob);
    let envelope = |code: &str| format!(r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#);
    for (first, body, code, transient) in [
        (
            503,
            "upstream down".to_owned(),
            ErrorCode::RegistryUnreachable,
            true,
        ),
        (
            500,
            envelope("UNKNOWN"),
            ErrorCode::RegistryUnreachable,
            true,
        ),
        (
            429,
            envelope("TOOMANYREQUESTS"),
            ErrorCode::RegistryUnreachable,
            true,
        ),
        (
            429,
            "Too Many Requests".to_owned(),
            ErrorCode::RegistryUnreachable,
            true,
        ),
        (403, envelope("DENIED"), ErrorCode::RegistryAuth, false),
        (
            404,
            envelope("MANIFEST_UNKNOWN"),
            ErrorCode::NotFound,
            false,
        ),
        (404, "not here".to_owned(), ErrorCode::NotFound, false),
        (
            400,
            envelope("MANIFEST_INVALID"),
            ErrorCode::RegistryUnreachable,
            false,
        ),
    ] {
        let (m, b) = (manifest.clone(), blob.clone());
        // The first two manifest requests get `first`, then the registry behaves.
        let host = scripted_registry(move |path, n| {
            if path.contains("/manifests/") {
                if n < 2 {
                    Answer::status(first, &body)
                } else {
                    Answer::ok(MANIFEST, &m)
                }
            } else if path.contains("/blobs/") {
                Answer::ok("application/octet-stream", &b)
            } else {
                Answer::ok("application/json", b"{}")
            }
        });
        let cache = tempfile::tempdir().unwrap();
        let (result, events) = fetch(
            config(cache.path(), &host),
            &format!("{host}/fw/s@{mdigest}"),
        )
        .await;
        let waits: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                FetchEvent::Waiting { code, .. } => Some(*code),
                FetchEvent::Progress { .. } => None,
            })
            .collect();
        if transient {
            let fetched = result.unwrap_or_else(|e| panic!("{first}: {e}"));
            assert_eq!(std::fs::read(&fetched.path).unwrap(), blob);
            assert_eq!(waits, vec![code, code], "{first}");
        } else {
            let err = result.unwrap_err();
            assert_eq!(err.code(), code, "{first}: {err}");
            assert!(waits.is_empty(), "{first}: {waits:?}");
        }
    }
}

#[tokio::test]
async fn registry_mirrors_come_before_the_origin_and_fall_through_when_empty() {
    let mirror = Registry::start().unwrap();
    let mut origin = Registry::start().unwrap();
    let (mhost, ohost) = (mirror.host(), origin.host());
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "fw.bin", 300_000);
    let pushed = push_file(&ohost, "fw/mirrored", &file).await;
    let cfg = |cache: &std::path::Path| {
        let mut cfg = config(cache, &ohost);
        cfg.plain_http.push(mhost.clone());
        cfg.mirrors = vec![Mirror::Registry(mhost.clone())];
        cfg
    };
    // The mirror does not have it (404): the origin serves.
    let cache = tempfile::tempdir().unwrap();
    let fetched = fetch(cfg(cache.path()), &pushed.pinned_reference)
        .await
        .0
        .unwrap();
    assert_eq!(fetched.source, ohost);

    // The same artifact pushed to the mirror: with the origin down, the mirror serves.
    let again = push_file(&mhost, "fw/mirrored", &file).await;
    assert_eq!(again.manifest_digest, pushed.manifest_digest);
    origin.stop();
    let cache = tempfile::tempdir().unwrap();
    let fetched = fetch(cfg(cache.path()), &pushed.pinned_reference)
        .await
        .0
        .unwrap();
    assert_eq!(fetched.source, mhost);
    assert_eq!(sha256_file(&fetched.path), sha256_file(&file));
}
