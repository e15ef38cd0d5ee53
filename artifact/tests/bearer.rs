//! The registry bearer-token flow against a scripted registry and token service on loopback:
//! 401 + Bearer challenge, token fetched with basic credentials, cached per repository.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are the failure report

mod common;

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::*;
use mqtt_schema::ErrorCode;
use twinflash_artifact::Credentials;

const TOKEN: &str = "tok-3f9a";
/// base64("flasher:s3cret")
const BASIC: &str = "Basic Zmxhc2hlcjpzM2NyZXQ=";

/// What the scripted server saw: request targets in order.
type Seen = Arc<Mutex<Vec<String>>>;

/// Serves `/v2/fw/b/manifests/<digest>` and `/v2/fw/b/blobs/<digest>` (honouring `Range`) only
/// with `Authorization: Bearer TOKEN`, and `/token` only with the basic credentials.
fn token_registry(manifest: Vec<u8>, blob: Vec<u8>) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let seen: Seen = Arc::default();
    let (h, log) = (host.clone(), seen.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let Some((target, headers)) = read_head(&mut reader) else {
                continue;
            };
            log.lock().unwrap().push(target.clone());
            let auth = headers.get("authorization").cloned().unwrap_or_default();
            let (status, extra, body): (u16, String, Vec<u8>) = if target.starts_with("/token") {
                if auth == BASIC {
                    let json = format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#);
                    (200, String::new(), json.into_bytes())
                } else {
                    (401, String::new(), b"{}".to_vec())
                }
            } else if auth != format!("Bearer {TOKEN}") {
                let challenge = format!(
                    "WWW-Authenticate: Bearer realm=\"http://{h}/token\",service=\"scripted\",scope=\"repository:fw/b:pull\"\r\n"
                );
                (
                    401,
                    challenge,
                    br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_vec(),
                )
            } else if target.contains("/manifests/") {
                (200, String::new(), manifest.clone())
            } else if target.contains("/blobs/") {
                let start: usize = headers
                    .get("range")
                    .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
                    .unwrap_or(0);
                if start > 0 {
                    let range = format!(
                        "Content-Range: bytes {start}-{}/{}\r\n",
                        blob.len() - 1,
                        blob.len()
                    );
                    (206, range, blob[start..].to_vec())
                } else {
                    (200, String::new(), blob.clone())
                }
            } else {
                (404, String::new(), Vec::new())
            };
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/octet-stream\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (host, seen)
}

#[tokio::test]
async fn a_bearer_challenge_gets_one_token_per_repository_with_the_basic_credentials() {
    let blob: Vec<u8> = (0..700_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let (manifest, mdigest) = manifest_for(&blob);
    let (host, seen) = token_registry(manifest, blob.clone());
    let reference = format!("{host}/fw/b@{mdigest}");
    let dir = tempfile::tempdir().unwrap();

    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &host);
    cfg.credentials = basic(dir.path(), "s3cret");
    let fetched = fetch(cfg, &reference).await.0.unwrap();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), blob);
    let seen_now = seen.lock().unwrap().clone();
    let tokens: Vec<_> = seen_now
        .iter()
        .filter(|t| t.starts_with("/token"))
        .collect();
    assert_eq!(
        tokens.len(),
        1,
        "one token for manifest and blob: {seen_now:?}"
    );
    assert!(
        tokens[0].contains("scope=repository%3Afw%2Fb%3Apull")
            && tokens[0].contains("service=scripted"),
        "{}",
        tokens[0]
    );
    // Manifest: challenge, then with the token; blob: with the cached token at once.
    assert_eq!(seen_now.len(), 4, "{seen_now:?}");

    // A wrong password: the token service refuses, registry-auth, nothing in the cache.
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &host);
    cfg.credentials = basic(dir.path(), "wrong");
    let err = fetch(cfg, &reference).await.0.unwrap_err();
    assert_eq!(err.code(), ErrorCode::RegistryAuth, "{err}");
    assert!(files_under(cache.path()).is_empty());

    // A configured bearer token is sent as is.
    seen.lock().unwrap().clear();
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &host);
    cfg.credentials = Credentials {
        bearer_token: Some(TOKEN.into()),
        ..Credentials::default()
    };
    fetch(cfg, &reference).await.0.unwrap();
    let seen_now = seen.lock().unwrap().clone();
    assert!(
        seen_now.iter().all(|t| !t.starts_with("/token")) && seen_now.len() == 2,
        "{seen_now:?}"
    );
}
