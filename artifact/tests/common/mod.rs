//! Shared helpers of the artifact integration tests: a registry, pushes, fetcher configs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::Duration;

use twinflash_artifact::{
    Credentials, FetchConfig, FetchError, FetchEvent, Fetched, Fetcher, FirmwareFormat,
    PushRequest, Pushed, RetryPolicy, TlsOptions,
};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn tls(host: &str) -> TlsOptions {
    TlsOptions {
        plain_http: vec![host.to_owned()],
        ..TlsOptions::default()
    }
}

pub fn request(reference: &str, file: &Path, format: Option<FirmwareFormat>) -> PushRequest {
    PushRequest {
        reference: reference.to_owned(),
        file: file.to_owned(),
        version: "1.4.2".into(),
        chip: "nRF52840_xxAA".into(),
        format,
        base_address: matches!(format, Some(FirmwareFormat::Bin) | None)
            .then_some(0x0800_0000)
            .filter(|_| file.extension().is_some_and(|e| e == "bin")),
        annotations: BTreeMap::new(),
    }
}

pub async fn push_file(host: &str, repo: &str, file: &Path) -> Pushed {
    push_with(
        host,
        &request(&format!("{host}/{repo}:1.4.2"), file, None),
        &Credentials::default(),
    )
    .await
}

pub async fn push_with(host: &str, req: &PushRequest, creds: &Credentials) -> Pushed {
    twinflash_artifact::push(&tls(host), creds, req, |_, _| {})
        .await
        .unwrap()
}

/// A random file of `size` bytes named `name` in `dir`.
pub fn random_file(dir: &Path, name: &str, size: usize) -> PathBuf {
    use rand::RngExt;
    let mut data = vec![0u8; size];
    rand::rng().fill(&mut data[..]);
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// A fetcher config for tests: plain HTTP to these hosts, few fast retries.
pub fn config(cache: &Path, host: &str) -> FetchConfig {
    let mut cfg = FetchConfig::new(cache);
    cfg.plain_http = vec![host.to_owned()];
    cfg.retry = RetryPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        max_attempts: Some(3),
        ..RetryPolicy::default()
    };
    cfg.timeouts.idle = Duration::from_secs(5);
    cfg.checkpoint_every = 1024 * 1024;
    cfg
}

/// Fetches with a fresh fetcher, collecting events.
pub async fn fetch(
    cfg: FetchConfig,
    reference: &str,
) -> (Result<Fetched, FetchError>, Vec<FetchEvent>) {
    let fetcher = Fetcher::new(cfg).unwrap();
    let mut events = Vec::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    let result = tokio::time::timeout(
        Duration::from_secs(120),
        fetcher.fetch(&reference.parse().unwrap(), |e| events.push(e), &cancel),
    )
    .await
    .expect("fetch hung for 2 minutes");
    (result, events)
}

/// Every file under `dir`, relative.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Files in the cache's blob dir that are not complete blobs (partials, state, temp).
pub fn half_written(cache: &Path) -> Vec<String> {
    files_under(&cache.join("blobs/sha256"))
        .into_iter()
        .filter(|f| f.len() != 64)
        .collect()
}

pub fn sha256_file(path: &Path) -> String {
    use sha2::Sha256;
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
    )
}

/// A twinflash firmware manifest for the layer `blob`, and the manifest's digest.
pub fn manifest_for(blob: &[u8]) -> (Vec<u8>, String) {
    let layer = format!("sha256:{}", hex::encode(sha2::Sha256::digest(blob)));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.twinflash.firmware.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                   "digest": twinflash_artifact::format::EMPTY_CONFIG_DIGEST},
        "layers": [{"mediaType": "application/vnd.twinflash.firmware.bin", "size": blob.len(), "digest": layer}],
        "annotations": {"org.opencontainers.image.version": "1.0.0", "io.twinflash.firmware.chip": "x",
                        "io.twinflash.firmware.base-address": "0x8000000"}
    }))
    .unwrap();
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&manifest)));
    (manifest, digest)
}

/// Re-targets a pinned reference at another host (e.g. the fault proxy).
pub fn via(reference: &str, host: &str) -> String {
    let (_, rest) = reference.split_once('/').unwrap();
    format!("{host}/{rest}")
}

#[allow(unused_imports)] // each test binary uses its part
pub use twinflash_harness::scripted::{
    Answer, Scripted, Seen, answer, flood, hang, hanging_referrers, read_head, redirect,
};

/// A loopback HTTP server answering each request with `route(host, target, authorization)`
/// ([`Scripted::start`]).
pub fn scripted(route: impl Fn(&str, &str, &str) -> Answer + Send + Sync + 'static) -> Scripted {
    Scripted::start(route).unwrap()
}

/// Runs `curl -sSf` with `args`; its output.
pub fn curl(args: &[&str]) -> Vec<u8> {
    twinflash_harness::http::curl(args).unwrap()
}

/// `PUT /v2/<repo>/manifests/<tag>` of `body` as `content_type` to a plain-HTTP registry.
pub fn registry_put(host: &str, repo: &str, tag: &str, content_type: &str, body: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.json");
    std::fs::write(&f, body).unwrap();
    curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {content_type}"),
        "--data-binary",
        &format!("@{}", f.display()),
        &format!("http://{host}/v2/{repo}/manifests/{tag}"),
    ]);
}

/// Basic credentials `flasher` with `password`, from a password file in `dir`.
pub fn basic(dir: &Path, password: &str) -> Credentials {
    let file = dir.join(password);
    std::fs::write(&file, format!("{password}\n")).unwrap();
    Credentials {
        username: Some("flasher".into()),
        password_file: Some(file),
        ..Credentials::default()
    }
}
