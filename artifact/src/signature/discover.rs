//! Finding the signatures of a manifest digest in one source (a registry or an OCI layout).
//!
//! Looked up, in this order:
//! 1. OCI 1.1 referrers: the registry's referrers API, or, where the registry answers 404 to it,
//!    the referrers tag schema `sha256-<hex>` (an image index). In a layout: index.json entries
//!    (a referrer listed, or tagged `sha256-<hex>`), then small manifests among the blobs whose
//!    `subject` is the digest (tools that copy referrers do not always list them in index.json).
//! 2. cosign's tag `sha256-<hex>.sig`.
//!
//! Everything read is untrusted: sizes are bounded, blobs are checked against their digests, and
//! only what verifies with a trusted key counts ([`super::judge`]).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::bundle::{BUNDLE_MEDIA_TYPE, is_bundle_media_type};
use super::cosign::{
    CERTIFICATE_ANNOTATION, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, referrers_tag,
    signature_tag,
};
use super::{Body, Found};
use crate::error::FetchError;
use crate::fetch::{Source, sha256_of};

/// Largest signature manifest, index, payload or bundle read.
const MAX_SIGNATURE_OBJECT: usize = 256 * 1024;
/// Most layers of one signature manifest (`.sig` or referrer) looked at.
const MAX_ENTRIES: usize = 64;
/// Most blobs of a layout scanned for referrers.
const MAX_LAYOUT_SCAN: usize = 4096;
/// The OCI image manifest media type.
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Accept header for `.sig` and referrer manifests (cosign writes OCI manifests; older registries
/// may convert to Docker's).
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// The annotation an OCI layout's index.json gives a tag.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Desc {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Man {
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    layers: Vec<Desc>,
    #[serde(default)]
    manifests: Vec<Desc>,
    #[serde(default)]
    subject: Option<Desc>,
}

/// What one source holds.
#[derive(Debug, Default)]
pub(crate) struct Lookup {
    /// Signatures found (unverified).
    pub found: Vec<Found>,
    /// Failures that may pass (a registry down): the caller retries rather than call it unsigned.
    pub transient: Vec<FetchError>,
    /// Other failures, for the message.
    pub problems: Vec<String>,
}

fn is_signature_type(t: &str) -> bool {
    is_bundle_media_type(t) || t == SIMPLE_SIGNING_MEDIA_TYPE
}

/// Looks up every signature of `digest` in `source`, at most `max_referrers` referrers of it. What is found goes into
/// `out` as it is found, so it stays there when the caller stops waiting (the lookup's deadline): in a registry, the
/// referrers into `out[0]` and cosign's tag into `out[1]`, both asked at once, so referrers that hang do not keep the
/// tag from being read.
pub(crate) async fn in_source(
    source: &Source,
    digest: &str,
    max_referrers: usize,
    out: &mut [Lookup; 2],
) {
    let [referrers_out, tag_out] = out;
    match source {
        Source::Registry { .. } => {
            futures_util::future::join(
                registry_referrers(source, digest, max_referrers, referrers_out),
                registry_tag(source, digest, tag_out),
            )
            .await;
        }
        Source::Layout(dir) => layout(source, dir, digest, max_referrers, referrers_out).await,
    }
}

impl Lookup {
    fn failed(&mut self, what: &str, e: FetchError) {
        if e.is_transient() {
            self.transient.push(e);
        } else if !matches!(e, FetchError::NotFound { .. }) {
            self.problems.push(format!("{what}: {e}"));
        }
    }
}

/// Reads a manifest or blob by digest from `source` and checks the digest.
async fn object(source: &Source, digest: &str, manifest: bool) -> Result<Vec<u8>, FetchError> {
    let bytes = match source {
        Source::Registry { client, reference } => {
            let repo = crate::fetch::source::repo(reference);
            if manifest {
                client.manifest(repo, digest, MANIFEST_ACCEPT).await?
            } else {
                client
                    .small_blob(repo, digest, MAX_SIGNATURE_OBJECT)
                    .await?
            }
        }
        Source::Layout(dir) => {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(FetchError::Rejected {
                    source_name: source.name(),
                    detail: format!("{digest} is not a sha256 digest"),
                });
            }
            read_layout_file(source, &dir.join("blobs").join("sha256").join(hex)).await?
        }
    };
    if bytes.len() > MAX_SIGNATURE_OBJECT {
        return Err(FetchError::Rejected {
            source_name: source.name(),
            detail: format!(
                "{digest}: {} bytes, more than a signature object",
                bytes.len()
            ),
        });
    }
    let actual = sha256_of(&bytes);
    if actual != digest {
        return Err(FetchError::DigestMismatch {
            expected: digest.to_owned(),
            actual: format!("{actual} from {}", source.name()),
        });
    }
    Ok(bytes)
}

/// A layout file read for signatures (index.json, a signature object): bounded, regular files only.
async fn read_layout_file(source: &Source, path: &std::path::Path) -> Result<Vec<u8>, FetchError> {
    source
        .read_layout(path, MAX_SIGNATURE_OBJECT * 16, "signature object")
        .await
}

fn parse(bytes: &[u8]) -> Option<Man> {
    serde_json::from_slice(bytes).ok()
}

/// OCI 1.1 referrers in a registry: the API, else the tag schema.
async fn registry_referrers(source: &Source, digest: &str, max: usize, out: &mut Lookup) {
    let Source::Registry { client, reference } = source else {
        return;
    };
    let repo = crate::fetch::source::repo(reference);
    let name = source.name();
    let index = match client.referrers(repo, digest).await {
        Ok(Some(bytes)) => Some((bytes, "referrers API")),
        Ok(None) => match client
            .manifest(repo, &referrers_tag(digest), crate::http::INDEX_MEDIA_TYPE)
            .await
        {
            Ok(bytes) => Some((bytes, "referrers tag")),
            Err(e) => {
                out.failed("referrers tag", e);
                None
            }
        },
        Err(e) => {
            out.failed("referrers", e);
            None
        }
    };
    if let Some((bytes, how)) = index {
        referrers(source, &bytes, digest, &format!("{name} {how}"), max, out).await;
    }
}

/// cosign's tag `sha256-<hex>.sig` in a registry.
async fn registry_tag(source: &Source, digest: &str, out: &mut Lookup) {
    let Source::Registry { client, reference } = source else {
        return;
    };
    let repo = crate::fetch::source::repo(reference);
    let name = source.name();
    let tag = signature_tag(digest);
    match client.manifest(repo, &tag, MANIFEST_ACCEPT).await {
        Ok(bytes) => sig_manifest(source, &bytes, &format!("{name} tag {tag}"), out).await,
        Err(e) => out.failed(&tag, e),
    }
}

/// The referrers listed in an image index: each manifest whose subject is `digest`, at most `max` of them, those
/// the index lists with a signature type first.
async fn referrers(
    source: &Source,
    index: &[u8],
    digest: &str,
    at: &str,
    max: usize,
    out: &mut Lookup,
) {
    let Some(index) = parse(index) else {
        out.problems.push(format!("{at}: not an image index"));
        return;
    };
    if index.manifests.len() > max {
        out.problems.push(format!(
            "{at}: {} referrers, only the first {max} examined",
            index.manifests.len()
        ));
    }
    let mut entries: Vec<&Desc> = index.manifests.iter().collect();
    entries.sort_by_key(|d| !d.artifact_type.as_deref().is_some_and(is_signature_type));
    for d in entries.into_iter().take(max) {
        // The index's artifactType is not trusted to filter: cosign 3.0.4 wrote
        // `application/vnd.oci.empty.v1+json` into the fallback index. Only what the manifest says.
        match object(source, &d.digest, true).await {
            Ok(bytes) => referrer(source, &bytes, &d.digest, digest, at, out).await,
            Err(e) => out.failed(&format!("{at} {}", d.digest), e),
        }
    }
}

/// One referrer manifest: its signature layers, if its subject is `digest`.
async fn referrer(
    source: &Source,
    bytes: &[u8],
    own: &str,
    digest: &str,
    at: &str,
    out: &mut Lookup,
) {
    let Some(m) = parse(bytes) else {
        return;
    };
    if m.subject.as_ref().map(|s| s.digest.as_str()) != Some(digest) {
        return;
    }
    let location = format!("{at} referrer {own}");
    for layer in m.layers.iter().take(MAX_ENTRIES) {
        if is_bundle_media_type(&layer.media_type)
            || (m.artifact_type.as_deref() == Some(BUNDLE_MEDIA_TYPE)
                && layer.media_type.ends_with("+json"))
        {
            match object(source, &layer.digest, false).await {
                Ok(blob) => match String::from_utf8(blob) {
                    Ok(json) => out.found.push(Found {
                        location: location.clone(),
                        body: Body::Bundle { json },
                    }),
                    Err(_) => out
                        .problems
                        .push(format!("{location}: bundle is not UTF-8")),
                },
                Err(e) => out.failed(&location, e),
            }
        } else if layer.media_type == SIMPLE_SIGNING_MEDIA_TYPE {
            simple_layer(source, layer, &location, out).await;
        }
    }
}

/// A cosign `.sig` manifest: one simple-signing payload per layer.
async fn sig_manifest(source: &Source, bytes: &[u8], location: &str, out: &mut Lookup) {
    let Some(m) = parse(bytes) else {
        out.problems
            .push(format!("{location}: not an image manifest"));
        return;
    };
    for layer in m.layers.iter().take(MAX_ENTRIES) {
        if layer.media_type == SIMPLE_SIGNING_MEDIA_TYPE {
            simple_layer(source, layer, location, out).await;
        }
    }
}

async fn simple_layer(source: &Source, layer: &Desc, location: &str, out: &mut Lookup) {
    let Some(signature) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
        out.problems.push(format!(
            "{location}: layer {} has no signature",
            layer.digest
        ));
        return;
    };
    match object(source, &layer.digest, false).await {
        Ok(blob) => match String::from_utf8(blob) {
            Ok(payload) => out.found.push(Found {
                location: location.to_owned(),
                body: Body::Simple {
                    payload,
                    signature: signature.clone(),
                    keyless: layer.annotations.contains_key(CERTIFICATE_ANNOTATION),
                },
            }),
            Err(_) => out
                .problems
                .push(format!("{location}: payload is not UTF-8")),
        },
        Err(e) => out.failed(location, e),
    }
}

async fn layout(
    source: &Source,
    dir: &std::path::Path,
    digest: &str,
    max_referrers: usize,
    out: &mut Lookup,
) {
    let name = source.name();
    let index_path = dir.join("index.json");
    let index = match read_layout_file(source, &index_path).await {
        Ok(bytes) => parse(&bytes).unwrap_or_default(),
        Err(e) => {
            out.failed("index.json", e);
            return;
        }
    };
    let sig_tag = signature_tag(digest);
    let ref_tag = referrers_tag(digest);
    let before = out.found.len();
    let mut listed = Vec::new();
    for d in index.manifests.iter().take(MAX_LAYOUT_SCAN) {
        let tag = d.annotations.get(REF_NAME).map(String::as_str);
        if tag == Some(sig_tag.as_str()) {
            match object(source, &d.digest, false).await {
                Ok(bytes) => {
                    sig_manifest(source, &bytes, &format!("{name} tag {sig_tag}"), out).await
                }
                Err(e) => out.failed(&sig_tag, e),
            }
        } else if tag == Some(ref_tag.as_str()) {
            match object(source, &d.digest, false).await {
                Ok(bytes) => {
                    referrers(
                        source,
                        &bytes,
                        digest,
                        &format!("{name} referrers tag"),
                        max_referrers,
                        out,
                    )
                    .await;
                }
                Err(e) => out.failed(&ref_tag, e),
            }
        } else if d.media_type == OCI_MANIFEST
            && d.artifact_type.as_deref().is_none_or(is_signature_type)
        {
            listed.push(d.digest.clone());
        }
    }
    for own in &listed {
        if let Ok(bytes) = object(source, own, false).await {
            referrer(source, &bytes, own, digest, &name, out).await;
        }
    }
    if out.found.len() > before {
        return;
    }
    // Referrers a copying tool did not list in index.json: small manifests among the blobs.
    let blobs = dir.join("blobs").join("sha256");
    let Ok(mut entries) = tokio::fs::read_dir(&blobs).await else {
        return;
    };
    let mut scanned = 0;
    while let Ok(Some(entry)) = entries.next_entry().await {
        scanned += 1;
        if scanned > MAX_LAYOUT_SCAN {
            break;
        }
        let small = entry
            .metadata()
            .await
            .is_ok_and(|m| m.is_file() && m.len() <= 64 * 1024);
        let own = format!("sha256:{}", entry.file_name().to_string_lossy());
        if !small || listed.contains(&own) {
            continue;
        }
        if let Ok(bytes) = tokio::fs::read(entry.path()).await
            && sha256_of(&bytes) == own
            && bytes.windows(9).any(|w| w == b"\"subject\"")
        {
            referrer(source, &bytes, &own, digest, &name, out).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_and_indexes_parse_leniently() {
        let m = parse(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44","size":2},"layers":[{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","digest":"sha256:aa","size":10}],"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":5}}"#).unwrap();
        assert_eq!(m.subject.unwrap().digest, "sha256:bb");
        assert_eq!(m.layers.len(), 1);
        assert!(parse(b"7").is_none());
        assert!(is_signature_type(SIMPLE_SIGNING_MEDIA_TYPE));
        assert!(is_signature_type(
            "application/vnd.dev.sigstore.bundle+json;version=0.2"
        ));
        assert!(!is_signature_type("application/spdx+json"));
    }
}
