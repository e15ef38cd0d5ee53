//! Artifacts `twinflash push` would refuse (it parses the file first): the hostile images of issue 23 put into a
//! real registry as an attacker with push rights would, through the registry's own HTTP API (curl).
use std::path::Path;

use sha2::Digest;
use twinflash_artifact::FirmwareFormat;
use twinflash_artifact::manifest::{ArtifactMeta, build_manifest};
use twinflash_harness::Registry;

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The firmware manifest `twinflash push` would write for a layer of `format` (`digest`, `size`) for [`CHIP`]
/// (version 1.0.0, BIN at [`ORIGIN`]), and its digest.
///
/// [`CHIP`]: crate::CHIP
/// [`ORIGIN`]: crate::ORIGIN
pub fn firmware_manifest(format: FirmwareFormat, digest: &str, size: u64) -> (Vec<u8>, String) {
    let meta = ArtifactMeta {
        version: "1.0.0".into(),
        chip: crate::CHIP.into(),
        format,
        base_address: (format == FirmwareFormat::Bin).then_some(crate::ORIGIN),
        title: "firmware".into(),
        annotations: Default::default(),
    };
    let manifest = build_manifest(&meta, digest, size).unwrap();
    let manifest_digest = sha256_digest(&manifest);
    (manifest, manifest_digest)
}

/// Uploads `bytes` as a `format` layer and its manifest as `<repo>:<tag>` on the plain-HTTP `registry`, without
/// parsing them; the digest-pinned reference.
pub fn push_unparsed(
    registry: &Registry,
    dir: &Path,
    repo: &str,
    tag: &str,
    bytes: &[u8],
    format: FirmwareFormat,
) -> String {
    let host = registry.host();
    let layer = sha256_digest(bytes);
    for (blob, digest) in [
        (bytes, layer.as_str()),
        (
            twinflash_artifact::format::EMPTY_CONFIG,
            twinflash_artifact::format::EMPTY_CONFIG_DIGEST,
        ),
    ] {
        let file = dir.join(digest.replace(':', "-"));
        std::fs::write(&file, blob).unwrap();
        // A monolithic upload: POST opens the session, PUT with the digest sends the bytes.
        let head = curl(&[
            "-X",
            "POST",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("http://{host}/v2/{repo}/blobs/uploads/"),
        ]);
        let location = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("location")
                    .then(|| v.trim().to_owned())
            })
            .unwrap();
        let location = if location.starts_with('/') {
            format!("http://{host}{location}")
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{location}{sep}digest={digest}"),
        ]);
    }
    let (manifest, manifest_digest) = firmware_manifest(format, &layer, bytes.len() as u64);
    let file = dir.join(format!("{repo}-{tag}.json").replace('/', "_"));
    std::fs::write(&file, &manifest).unwrap();
    curl(&[
        "-X",
        "PUT",
        "-H",
        &format!(
            "Content-Type: {}",
            twinflash_artifact::format::MANIFEST_MEDIA_TYPE
        ),
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("http://{host}/v2/{repo}/manifests/{tag}"),
    ]);
    format!("{host}/{repo}:{tag}@{manifest_digest}")
}

/// `curl -sSf` with `args`: its output.
fn curl(args: &[&str]) -> String {
    String::from_utf8_lossy(&twinflash_harness::http::curl(args).unwrap()).into_owned()
}
