//! Signatures against a real registry (Debian's docker-registry, distribution 2.8.2, which has no
//! referrers API): written by `signature::write`, found by the fetcher and the verifier in the
//! origin, a mirror registry and OCI layouts, and refused when unsigned, signed by another key or
//! signed for another digest. Under `require`, a refused artifact's layer is never downloaded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are the failure report

mod common;

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use common::*;
use twinflash_artifact::signature::write::{SignFormat, sign};
use twinflash_artifact::signature::{
    Format, Mode, Policy, PublicKey, SigningKey, TrustedKey, Verdict, Verifier,
};
use twinflash_artifact::{Credentials, FetchError, Mirror};
use twinflash_harness::Registry;

fn key() -> SigningKey {
    SigningKey::from_pkcs8_der(&SigningKey::generate_p256_pkcs8().unwrap()).unwrap()
}

fn trust(k: &SigningKey, name: &str) -> Policy {
    Policy {
        mode: Mode::Require,
        keys: vec![TrustedKey {
            name: name.to_owned(),
            key: k.public().clone(),
        }],
    }
}

async fn signed(host: &str, reference: &str, k: &SigningKey, format: SignFormat) {
    sign(&tls(host), &Credentials::default(), reference, k, format)
        .await
        .unwrap();
}

async fn verdict(cfg: &twinflash_artifact::FetchConfig, reference: &str, p: &Policy) -> Verdict {
    Verifier::new(cfg)
        .unwrap()
        .verify(&reference.parse().unwrap(), p)
        .await
        .unwrap()
}

/// Nothing but manifests in the cache: no layer was downloaded.
fn no_layer(cache: &Path, layer: &str) -> bool {
    !cache
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"))
        .exists()
}

#[tokio::test]
async fn both_formats_verify_through_the_fetcher_and_the_verifier() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let k = key();
    let a = push_file(&host, "fw/a", &fixture("blinky.elf")).await;
    let b = push_file(&host, "fw/b", &fixture("blinky.hex")).await;
    signed(&host, &format!("{host}/fw/a:1.4.2"), &k, SignFormat::Cosign).await;
    signed(&host, &b.pinned_reference, &k, SignFormat::Bundle).await;

    for (pushed, format, location) in [
        (&a, Format::CosignSimpleSigning, "tag sha256-"),
        // distribution 2.8 has no referrers API: found through the referrers tag schema.
        (&b, Format::SigstoreBundle, "referrers tag referrer sha256:"),
    ] {
        let cache = tempfile::tempdir().unwrap();
        let mut cfg = config(cache.path(), &host);
        cfg.signatures = trust(&k, "release");
        let Verdict::Verified(v) = verdict(&cfg, &pushed.pinned_reference, &cfg.signatures).await
        else {
            panic!("{} not verified", pushed.pinned_reference);
        };
        assert_eq!((v.signer.as_str(), v.format), ("release", format));
        assert!(v.location.contains(location), "{}", v.location);
        let fetched = fetch(cfg.clone(), &pushed.pinned_reference)
            .await
            .0
            .unwrap();
        assert_eq!(fetched.signature.unwrap().key_id, k.public().key_id());

        // Cached firmware and signature: verified again offline, with today's keys.
        let fetched = fetch(cfg.clone(), &pushed.pinned_reference)
            .await
            .0
            .unwrap();
        assert_eq!(fetched.source, "cache");
        assert!(fetched.signature.is_some());
        cfg.signatures = trust(&key(), "rotated");
        let err = fetch(cfg, &pushed.pinned_reference).await.0.unwrap_err();
        assert_eq!(
            err.code(),
            mqtt_schema::ErrorCode::SignatureInvalid,
            "{err}"
        );
    }
}

#[tokio::test]
async fn unsigned_wrong_key_and_another_digest_are_refused_before_the_layer() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let k = key();
    let a = push_file(&host, "fw/x", &fixture("blinky.elf")).await;
    let b = push_file(&host, "fw/x", &fixture("blinky.hex")).await;

    // Unsigned.
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &host);
    cfg.signatures = trust(&k, "release");
    let err = fetch(cfg.clone(), &a.pinned_reference).await.0.unwrap_err();
    assert!(matches!(err, FetchError::Unsigned { .. }), "{err}");
    assert_eq!(err.code().as_str(), "unsigned");
    assert!(no_layer(cache.path(), &a.artifact.layer_digest));

    // Signed by another key.
    signed(&host, &a.pinned_reference, &key(), SignFormat::Cosign).await;
    let err = fetch(cfg.clone(), &a.pinned_reference).await.0.unwrap_err();
    assert!(matches!(err, FetchError::SignatureInvalid { .. }), "{err}");
    assert!(err.to_string().contains("does not verify"), "{err}");
    assert!(no_layer(cache.path(), &a.artifact.layer_digest));

    // A good signature of A, moved to B's tag: it signs another digest.
    signed(&host, &a.pinned_reference, &k, SignFormat::Cosign).await;
    let sig_a = registry_get(
        &host,
        "fw/x",
        &format!("sha256-{}.sig", hex(&a.manifest_digest)),
    );
    registry_put(
        &host,
        "fw/x",
        &format!("sha256-{}.sig", hex(&b.manifest_digest)),
        "application/vnd.oci.image.manifest.v1+json",
        &sig_a,
    );
    let err = fetch(cfg.clone(), &b.pinned_reference).await.0.unwrap_err();
    assert_eq!(err.code().as_str(), "signature-invalid", "{err}");
    assert!(err.to_string().contains("another digest"), "{err}");
    assert!(no_layer(cache.path(), &b.artifact.layer_digest));

    // Under warn the same artifact is used, with the reason.
    cfg.signatures.mode = Mode::Warn;
    let fetched = fetch(cfg, &b.pinned_reference).await.0.unwrap();
    assert!(fetched.signature.is_none());
    assert!(
        fetched
            .signature_warning
            .unwrap()
            .contains("another digest")
    );
}

#[tokio::test]
async fn a_signature_only_in_a_mirror_registry_verifies() {
    let origin = Registry::start().unwrap();
    let mirror = Registry::start().unwrap();
    let (o, m) = (origin.host(), mirror.host());
    let k = key();
    let a = push_file(&o, "fw/m", &fixture("blinky.elf")).await;
    let am = push_file(&m, "fw/m", &fixture("blinky.elf")).await;
    assert_eq!(a.manifest_digest, am.manifest_digest);
    signed(&m, &am.pinned_reference, &k, SignFormat::Cosign).await;

    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &o);
    cfg.plain_http.push(m.clone());
    cfg.signatures = trust(&k, "release");
    let unsigned = fetch(cfg.clone(), &a.pinned_reference).await.0.unwrap_err();
    assert_eq!(unsigned.code().as_str(), "unsigned");
    cfg.mirrors = vec![Mirror::Registry(m.clone())];
    let fetched = fetch(cfg, &a.pinned_reference).await.0.unwrap();
    let v = fetched.signature.unwrap();
    assert!(v.location.starts_with(&m), "{}", v.location);
}

#[tokio::test]
async fn layouts_carry_signatures_offline_with_the_origin_stopped() {
    let mut registry = Registry::start().unwrap();
    let host = registry.host();
    let k = key();
    let a = push_file(&host, "fw/usb", &fixture("blinky.elf")).await;
    let b = push_file(&host, "fw/usb", &fixture("blinky.hex")).await;
    signed(&host, &a.pinned_reference, &k, SignFormat::Cosign).await;
    signed(&host, &b.pinned_reference, &k, SignFormat::Bundle).await;

    // skopeo 1.9 copies the artifact and, as its own image, cosign's `.sig` tag.
    let usb = tempfile::tempdir().unwrap();
    let layout = usb.path().join("layout");
    let tag_a = format!("sha256-{}.sig", hex(&a.manifest_digest));
    for (from, to) in [
        (a.pinned_reference.clone(), "blinky".to_owned()),
        (format!("{host}/fw/usb:{tag_a}"), tag_a.clone()),
        (b.pinned_reference.clone(), "blinky-hex".to_owned()),
    ] {
        skopeo_copy(&from, &layout, &to);
    }
    // The bundle referrer of B, as `oras copy -r` stores one: its manifest and blobs, listed in
    // index.json without a tag.
    let index: serde_json::Value = serde_json::from_slice(&registry_get(
        &host,
        "fw/usb",
        &format!("sha256-{}", hex(&b.manifest_digest)),
    ))
    .unwrap();
    let referrer = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let manifest = registry_get(&host, "fw/usb", &referrer);
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    write_blob(&layout, &manifest);
    for d in [&m["config"]["digest"], &m["layers"][0]["digest"]] {
        write_blob(
            &layout,
            &registry_blob(&host, "fw/usb", d.as_str().unwrap()),
        );
    }
    let index_path = layout.join("index.json");
    let mut layout_index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    layout_index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": referrer,
            "size": manifest.len(),
            "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        }));
    std::fs::write(&index_path, serde_json::to_vec(&layout_index).unwrap()).unwrap();

    registry.stop();
    for (pushed, location) in [
        (&a, format!("tag {tag_a}")),
        (&b, format!("referrer {referrer}")),
    ] {
        let cache = tempfile::tempdir().unwrap();
        let mut cfg = config(cache.path(), &host);
        cfg.mirrors = vec![Mirror::Layout(layout.clone())];
        cfg.signatures = trust(&k, "release");
        let fetched = fetch(cfg, &pushed.pinned_reference).await.0.unwrap();
        assert!(
            fetched.source.starts_with("oci-layout:"),
            "{}",
            fetched.source
        );
        let v = fetched.signature.unwrap();
        assert!(
            v.location.ends_with(&location),
            "{} vs {location}",
            v.location
        );
    }

    // Without the `.sig` image the layout holds no signature of A, and the origin is down: under
    // require that is a wait for the origin, not a verdict.
    let bare = usb.path().join("bare");
    registry.start_again().unwrap();
    skopeo_copy(&a.pinned_reference, &bare, "blinky");
    registry.stop();
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &host);
    cfg.mirrors = vec![Mirror::Layout(bare)];
    cfg.signatures = trust(&k, "release");
    let err = fetch(cfg, &a.pinned_reference).await.0.unwrap_err();
    assert_eq!(err.code().as_str(), "registry-unreachable", "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn the_referrers_api_is_used_where_the_registry_has_it() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let k = key();
    let a = push_file(&host, "fw/api", &fixture("blinky.elf")).await;
    signed(&host, &a.pinned_reference, &k, SignFormat::Bundle).await;
    // A registry with the referrers API, and without the tag schema fallback: the stand-in
    // answers the API from the index the writer stored, and hides that tag.
    let api = ReferrersApi::start(&host);
    let pinned = via(&a.pinned_reference, &api.host);
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &api.host);
    cfg.signatures = trust(&k, "release");
    let Verdict::Verified(v) = verdict(&cfg, &pinned, &cfg.signatures).await else {
        panic!("not verified through the referrers API");
    };
    assert!(v.location.contains("referrers API"), "{}", v.location);
}

#[test]
fn cosign_public_keys_read_as_pem() {
    let k = key();
    let pem = k.public().to_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert_eq!(&PublicKey::from_pem(pem.as_bytes()).unwrap(), k.public());
}

// --- helpers -------------------------------------------------------------------------------

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

fn registry_get(host: &str, repo: &str, reference: &str) -> Vec<u8> {
    curl(&[
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
        &format!("http://{host}/v2/{repo}/manifests/{reference}"),
    ])
}

fn registry_blob(host: &str, repo: &str, digest: &str) -> Vec<u8> {
    curl(&["-L", &format!("http://{host}/v2/{repo}/blobs/{digest}")])
}

fn write_blob(layout: &Path, bytes: &[u8]) {
    use sha2::Digest;
    let path = layout
        .join("blobs/sha256")
        .join(::hex::encode(sha2::Sha256::digest(bytes)));
    std::fs::write(path, bytes).unwrap();
}

fn skopeo_copy(from: &str, layout: &Path, tag: &str) {
    // skopeo takes a tag or a digest, not both.
    let from = match from.split_once('@') {
        Some((name, digest)) => format!(
            "{}@{digest}",
            name.rsplit_once(':')
                .filter(|(_, t)| !t.contains('/'))
                .map_or(name, |(n, _)| n)
        ),
        None => from.to_owned(),
    };
    let from = from.as_str();
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            "--preserve-digests",
            &format!("docker://{from}"),
            &format!("oci:{}:{tag}", layout.display()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy {from}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A registry with the OCI 1.1 referrers API, in front of the real one: `GET
/// /v2/<repo>/referrers/<digest>` answers the image index of referrers (taken from the real
/// registry's referrers tag schema index, which is what a registry with the API computes from the
/// manifests' `subject`); that tag itself answers 404; every other GET is relayed.
struct ReferrersApi {
    host: String,
}

impl ReferrersApi {
    fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let upstream = upstream.to_owned();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let upstream = upstream.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let Some((target, headers)) = read_head(&mut reader) else {
                        return;
                    };
                    let mut stream = stream;
                    let (status, kind, body) = answer(&upstream, &target, &headers);
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(&body);
                });
            }
        });
        Self { host }
    }
}

fn answer(
    upstream: &str,
    target: &str,
    headers: &std::collections::HashMap<String, String>,
) -> (&'static str, String, Vec<u8>) {
    let index = "application/vnd.oci.image.index.v1+json".to_owned();
    if let Some((repo, digest)) = target
        .strip_prefix("/v2/")
        .and_then(|t| t.split_once("/referrers/"))
    {
        let tag = digest.split('?').next().unwrap_or("").replacen(':', "-", 1);
        let out = Command::new("curl")
            .args(["-sSf", "-H", &format!("Accept: {index}")])
            .arg(format!("http://{upstream}/v2/{repo}/manifests/{tag}"))
            .output()
            .unwrap();
        let body = if out.status.success() {
            out.stdout
        } else {
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_vec()
        };
        return ("200 OK", index, body);
    }
    if target.contains("/manifests/sha256-") && !target.ends_with(".sig") {
        return (
            "404 Not Found",
            "application/json".to_owned(),
            b"{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\"}]}".to_vec(),
        );
    }
    let accept = headers.get("accept").cloned().unwrap_or_default();
    let out = Command::new("curl")
        .args(["-sS", "-L", "-w", "\n%{http_code} %{content_type}", "-H"])
        .arg(format!("Accept: {accept}"))
        .arg(format!("http://{upstream}{target}"))
        .output()
        .unwrap();
    let mut body = out.stdout;
    let tail_at = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let tail = String::from_utf8_lossy(&body[tail_at + 1..]).into_owned();
    body.truncate(tail_at);
    let (code, kind) = tail.split_once(' ').unwrap_or(("502", ""));
    let status = match code {
        "200" => "200 OK",
        "404" => "404 Not Found",
        _ => "502 Bad Gateway",
    };
    (status, kind.to_owned(), body)
}
