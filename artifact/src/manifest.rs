//! The firmware manifest: building the exact JSON bytes `twinflash push` writes, and
//! [`FirmwareArtifact`], the validated view of any manifest that claims to be a firmware artifact.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::format::{
    ANNOTATION_BASE_ADDRESS, ANNOTATION_CHIP, ANNOTATION_CREATED, ANNOTATION_DESCRIPTION,
    ANNOTATION_REVISION, ANNOTATION_SOURCE, ANNOTATION_TITLE, ANNOTATION_VERSION, ARTIFACT_TYPE,
    EMPTY_CONFIG_DIGEST, EMPTY_CONFIG_MEDIA_TYPE, FirmwareFormat, MANIFEST_MEDIA_TYPE,
    parse_base_address,
};

/// An OCI content descriptor (the subset twinflash reads and writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// `sha256:<hex>` digest.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Inline content (base64), used for the empty config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image manifest (the subset twinflash reads and writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// `application/vnd.oci.image.manifest.v1+json` (optional in the spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The artifact type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config descriptor.
    pub config: Descriptor,
    /// The layers.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Manifest annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A manifest that is not a valid twinflash firmware artifact. Code `unsupported-artifact`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or not a manifest.
    #[error("not an OCI image manifest: {0}")]
    Parse(String),
    /// A field has the wrong value.
    #[error("not a twinflash firmware artifact: {0}")]
    Unsupported(String),
}

impl ManifestError {
    /// The stable code of this error.
    pub fn code(&self) -> mqtt_schema::ErrorCode {
        mqtt_schema::ErrorCode::UnsupportedArtifact
    }
}

/// The validated view of a firmware artifact manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirmwareArtifact {
    /// `org.opencontainers.image.version`, a semver version.
    pub version: String,
    /// `io.twinflash.firmware.chip`.
    pub chip: String,
    /// From the layer media type.
    pub format: FirmwareFormat,
    /// `io.twinflash.firmware.base-address` (required for `bin`).
    pub base_address: Option<u64>,
    /// Layer size in bytes.
    pub size: u64,
    /// Layer digest, `sha256:<hex>`.
    pub layer_digest: String,
    /// Layer title (the original file name), if annotated.
    pub title: Option<String>,
    /// `org.opencontainers.image.created`, if annotated.
    pub created: Option<String>,
    /// Every manifest annotation.
    pub annotations: BTreeMap<String, String>,
}

/// The number of entries, if `bytes` are an image index (OCI, or Docker's manifest list): a `manifests` array.
fn index_size(bytes: &[u8]) -> Option<usize> {
    #[derive(Deserialize)]
    struct Index {
        manifests: Vec<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Index>(bytes)
        .ok()
        .map(|i| i.manifests.len())
}

/// Checks that `digest` is `sha256:` followed by 64 lower-case hex digits.
pub fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

impl FirmwareArtifact {
    /// Parses and validates manifest bytes.
    pub fn from_manifest_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| match index_size(bytes) {
            Some(n) => ManifestError::Unsupported(format!(
                "the reference names an image index ({n} entries), not a firmware manifest: name the digest of the \
                 firmware manifest itself (indexes, nested or not, are not followed)"
            )),
            None => ManifestError::Parse(e.to_string()),
        })?;
        Self::from_manifest(&manifest)
    }

    /// Validates a parsed manifest.
    pub fn from_manifest(m: &Manifest) -> Result<Self, ManifestError> {
        let bad = |s: String| Err(ManifestError::Unsupported(s));
        if m.schema_version != 2 {
            return bad(format!("schemaVersion {}", m.schema_version));
        }
        if let Some(mt) = &m.media_type
            && mt != MANIFEST_MEDIA_TYPE
        {
            return bad(format!("manifest media type {mt}"));
        }
        if m.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
            return bad(format!(
                "artifactType {:?}, expected {ARTIFACT_TYPE}",
                m.artifact_type.as_deref().unwrap_or("")
            ));
        }
        if m.config.media_type != EMPTY_CONFIG_MEDIA_TYPE || m.config.digest != EMPTY_CONFIG_DIGEST
        {
            return bad(format!(
                "config {} {}",
                m.config.media_type, m.config.digest
            ));
        }
        let [layer] = m.layers.as_slice() else {
            return bad(format!("{} layers, expected exactly one", m.layers.len()));
        };
        let Some(format) = FirmwareFormat::from_media_type(&layer.media_type) else {
            return bad(format!("layer media type {}", layer.media_type));
        };
        if !is_sha256_digest(&layer.digest) {
            return bad(format!("layer digest {:?}", layer.digest));
        }
        let Some(version) = m.annotations.get(ANNOTATION_VERSION) else {
            return bad(format!("missing annotation {ANNOTATION_VERSION}"));
        };
        if semver::Version::parse(version).is_err() {
            return bad(format!("{ANNOTATION_VERSION} {version:?} is not semver"));
        }
        let chip = match m.annotations.get(ANNOTATION_CHIP) {
            Some(chip) if !chip.trim().is_empty() => chip.clone(),
            _ => return bad(format!("missing annotation {ANNOTATION_CHIP}")),
        };
        let base_address = match m.annotations.get(ANNOTATION_BASE_ADDRESS) {
            Some(a) => {
                Some(parse_base_address(a).map_err(|e| ManifestError::Unsupported(e.to_string()))?)
            }
            None if format == FirmwareFormat::Bin => {
                return bad(format!("a bin layer needs {ANNOTATION_BASE_ADDRESS}"));
            }
            None => None,
        };
        Ok(Self {
            version: version.clone(),
            chip,
            format,
            base_address,
            size: layer.size,
            layer_digest: layer.digest.clone(),
            title: layer.annotations.get(ANNOTATION_TITLE).cloned(),
            created: m.annotations.get(ANNOTATION_CREATED).cloned(),
            annotations: m.annotations.clone(),
        })
    }
}

/// What goes into a firmware manifest besides the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactMeta {
    /// Semver version.
    pub version: String,
    /// Target chip.
    pub chip: String,
    /// Format of the layer.
    pub format: FirmwareFormat,
    /// Base address (required for `bin`).
    pub base_address: Option<u64>,
    /// File name for the layer title.
    pub title: String,
    /// Extra manifest annotations (`created`, `source`, ... or any `k=v`).
    pub annotations: BTreeMap<String, String>,
}

/// Keys that `--annotation` may not override because they carry the format itself.
pub const RESERVED_ANNOTATIONS: [&str; 3] =
    [ANNOTATION_VERSION, ANNOTATION_CHIP, ANNOTATION_BASE_ADDRESS];

/// Optional well-known annotations, listed for documentation and `inspect`.
pub const OPTIONAL_ANNOTATIONS: [&str; 4] = [
    ANNOTATION_CREATED,
    ANNOTATION_SOURCE,
    ANNOTATION_REVISION,
    ANNOTATION_DESCRIPTION,
];

/// Builds the manifest for one layer and validates it (so push never writes what fetch refuses).
pub fn build_manifest(
    meta: &ArtifactMeta,
    layer_digest: &str,
    layer_size: u64,
) -> Result<Vec<u8>, ManifestError> {
    let mut annotations = meta.annotations.clone();
    annotations.insert(ANNOTATION_VERSION.to_owned(), meta.version.clone());
    annotations.insert(ANNOTATION_CHIP.to_owned(), meta.chip.clone());
    match meta.base_address {
        Some(a) => {
            annotations.insert(
                ANNOTATION_BASE_ADDRESS.to_owned(),
                crate::format::format_base_address(a),
            );
        }
        None => {
            annotations.remove(ANNOTATION_BASE_ADDRESS);
        }
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.to_owned()),
        artifact_type: Some(ARTIFACT_TYPE.to_owned()),
        config: Descriptor {
            media_type: EMPTY_CONFIG_MEDIA_TYPE.to_owned(),
            digest: EMPTY_CONFIG_DIGEST.to_owned(),
            size: 2,
            data: Some("e30=".to_owned()),
            annotations: BTreeMap::new(),
        },
        layers: vec![Descriptor {
            media_type: meta.format.media_type().to_owned(),
            digest: layer_digest.to_owned(),
            size: layer_size,
            data: None,
            annotations: BTreeMap::from([(ANNOTATION_TITLE.to_owned(), meta.title.clone())]),
        }],
        annotations,
    };
    FirmwareArtifact::from_manifest(&manifest)?;
    serde_json::to_vec(&manifest).map_err(|e| ManifestError::Parse(e.to_string()))
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
