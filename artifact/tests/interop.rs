//! Interop with other OCI tools: skopeo reads what twinflash pushed; a skopeo copy into an OCI
//! image layout serves as a mirror with the origin stopped; artifacts written by skopeo (from a
//! hand-made layout) and by the Python `oras` package are fetched and verified.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are the failure report

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use sha2::{Digest, Sha256};
use twinflash_artifact::Mirror;
use twinflash_artifact::format::{EMPTY_CONFIG, EMPTY_CONFIG_DIGEST};
use twinflash_harness::Registry;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[tokio::test]
async fn skopeo_reads_our_push_and_its_layout_copy_is_a_mirror_when_the_origin_is_down() {
    let mut registry = Registry::start().unwrap();
    let host = registry.host();
    let pushed = push_file(&host, "fw/interop", &fixture("blinky.elf")).await;
    let digest = &pushed.manifest_digest;

    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{host}/fw/interop@{digest}"),
    ]));
    assert_eq!(&digest_of(&raw), digest, "skopeo sees other manifest bytes");
    let json: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        json["artifactType"],
        twinflash_artifact::format::ARTIFACT_TYPE
    );

    let usb = tempfile::tempdir().unwrap();
    let layout = usb.path().join("layout");
    run(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        "--preserve-digests",
        &format!("docker://{host}/fw/interop@{digest}"),
        &format!("oci:{}:blinky", layout.display()),
    ]));

    registry.stop();
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &host);
    cfg.mirrors = vec![Mirror::Layout(layout.clone())];
    let fetched = fetch(cfg, &pushed.pinned_reference).await.0.unwrap();
    assert_eq!(fetched.source, format!("oci-layout:{}", layout.display()));
    assert_eq!(
        sha256_file(&fetched.path),
        sha256_file(&fixture("blinky.elf"))
    );

    // A layout whose blob was tampered with is not trusted: with the origin down, the fetch fails.
    let hex = pushed.artifact.layer_digest.trim_start_matches("sha256:");
    let blob = layout.join("blobs/sha256").join(hex);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(cache.path(), &host);
    cfg.mirrors = vec![Mirror::Layout(layout)];
    let err = fetch(cfg, &pushed.pinned_reference).await.0.unwrap_err();
    assert!(
        matches!(
            err.code(),
            mqtt_schema::ErrorCode::RegistryUnreachable | mqtt_schema::ErrorCode::DigestMismatch
        ),
        "{err}"
    );
    assert!(half_written(cache.path()).is_empty());
    assert!(!Path::new(&cache.path().join("blobs/sha256").join(hex)).exists());
}

/// Writes an OCI image layout the way another tool might: pretty-printed manifest, other key order.
fn write_foreign_layout(dir: &Path, payload: &[u8]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = digest_of(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
        d
    };
    put(EMPTY_CONFIG);
    let layer = put(payload);
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.twinflash.firmware.v1",
        "annotations": {
            "org.opencontainers.image.version": "2.0.0-rc.1",
            "io.twinflash.firmware.chip": "STM32F411RETx",
            "io.twinflash.firmware.base-address": "0x08000000",
            "org.opencontainers.image.created": "2026-01-01T00:00:00Z"
        },
        "layers": [{
            "annotations": {"org.opencontainers.image.title": "app.bin"},
            "size": payload.len(),
            "digest": layer,
            "mediaType": "application/vnd.twinflash.firmware.bin"
        }],
        "config": {"size": 2, "digest": EMPTY_CONFIG_DIGEST, "mediaType": "application/vnd.oci.empty.v1+json"}
    }))
    .unwrap();
    let mdigest = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": mdigest,
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": "v2"}
            }]
        }))
        .unwrap(),
    )
    .unwrap();
    mdigest
}

#[tokio::test]
async fn an_artifact_copied_by_skopeo_from_a_foreign_layout_is_fetched_and_verified() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let layout = dir.path().join("foreign");
    let mdigest = write_foreign_layout(&layout, &payload);
    run(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        "--preserve-digests",
        &format!("oci:{}:v2", layout.display()),
        &format!("docker://{host}/fw/foreign:v2"),
    ]));
    let cache = tempfile::tempdir().unwrap();
    let reference = format!("{host}/fw/foreign@{mdigest}");
    let fetched = fetch(config(cache.path(), &host), &reference)
        .await
        .0
        .unwrap();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), payload);
    assert_eq!(fetched.artifact.version, "2.0.0-rc.1");
    assert_eq!(fetched.artifact.base_address, Some(0x0800_0000));
    assert_eq!(fetched.artifact.title.as_deref(), Some("app.bin"));
}

const ORAS_SCRIPT: &str = r#"
import sys, oras.client, oras.oci
host, repo, path, empty = sys.argv[1:5]
c = oras.client.OrasClient(hostname=host, insecure=True)
container = c.get_container(f"{host}/{repo}:3.1.0")
layer = oras.oci.NewLayer(path, media_type="application/vnd.twinflash.firmware.uf2")
layer["annotations"] = {"org.opencontainers.image.title": "blinky.uf2"}
c.upload_blob(path, container, layer)
conf = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
        "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
c.upload_blob(empty, container, conf)
m = oras.oci.NewManifest()
m["artifactType"] = "application/vnd.twinflash.firmware.v1"
m["config"] = conf
m["layers"] = [layer]
m["annotations"] = {"org.opencontainers.image.version": "3.1.0",
                    "io.twinflash.firmware.chip": "RP2040"}
r = c.upload_manifest(m, container)
assert r.status_code in (200, 201), r.text
"#;

#[tokio::test]
async fn an_artifact_pushed_by_python_oras_is_fetched_and_verified() {
    let has_oras = Command::new("python3")
        .args(["-c", "import oras.client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !twinflash_harness::needs(has_oras, "the Python oras package") {
        return;
    }
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, EMPTY_CONFIG).unwrap();
    let fw = fixture("blinky.uf2");
    run(Command::new("python3").args([
        "-c",
        ORAS_SCRIPT,
        &host,
        "fw/oras",
        fw.to_str().unwrap(),
        empty.to_str().unwrap(),
    ]));
    let inspected = twinflash_artifact::inspect(
        &tls(&host),
        &Default::default(),
        &format!("{host}/fw/oras:3.1.0"),
    )
    .await
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let fetched = fetch(config(cache.path(), &host), &inspected.pinned_reference)
        .await
        .0
        .unwrap();
    assert_eq!(sha256_file(&fetched.path), sha256_file(&fw));
    assert_eq!(fetched.artifact.chip, "RP2040");
    assert_eq!(
        fetched.artifact.format,
        twinflash_artifact::FirmwareFormat::Uf2
    );
}
