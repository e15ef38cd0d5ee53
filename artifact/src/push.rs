//! `push`: parse a firmware file with the flasher's parser, upload it as the single layer of a twinflash artifact with
//! a manifest whose bytes (and so digest) we build ourselves, and return the digest-pinned reference.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use oci_client::Reference;
use oci_client::errors::OciDistributionError;
use sha2::{Digest, Sha256};

use crate::auth::Credentials;
use crate::error::FetchError;
use crate::format::{
    self, EMPTY_CONFIG, EMPTY_CONFIG_DIGEST, FirmwareFormat, ImageError, MAX_PARSED_FILE,
};
use crate::manifest::{ArtifactMeta, FirmwareArtifact, ManifestError, build_manifest};
use crate::registry::{TlsOptions, push_client};

/// What to push.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// Where to push: `host[:port]/repo[:tag]`.
    pub reference: String,
    /// The firmware file.
    pub file: PathBuf,
    /// Semver version.
    pub version: String,
    /// Target chip.
    pub chip: String,
    /// The format; detected from content when `None`.
    pub format: Option<FirmwareFormat>,
    /// Base address (required for raw binaries).
    pub base_address: Option<u64>,
    /// Extra manifest annotations.
    pub annotations: BTreeMap<String, String>,
}

/// The result of a push.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `host/repo[:tag]@sha256:<hex>`.
    pub pinned_reference: String,
    /// Digest of the manifest bytes.
    pub manifest_digest: String,
    /// The validated view of what was pushed.
    pub artifact: FirmwareArtifact,
}

/// A push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The file is not valid firmware of its format: the flasher would refuse it too.
    #[error("{}: {source}", file.display())]
    Format {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        source: ImageError,
    },
    /// An ELF, HEX or UF2 file too large to parse in memory.
    #[error("{}: a {format} file of {size} bytes is larger than the {max} bytes twinflash parses", file.display())]
    TooLargeToParse {
        /// The file.
        file: PathBuf,
        /// The format.
        format: FirmwareFormat,
        /// File size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The manifest would not be a valid artifact (bad version, empty chip, ...).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The reference cannot be parsed.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference {
        /// As given.
        reference: String,
        /// Why.
        reason: String,
    },
    /// Reading the file failed.
    #[error("cannot read {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The registry refused or could not be reached.
    #[error(transparent)]
    Registry(#[from] FetchError),
}

impl PushError {
    /// The stable code of this error.
    pub fn code(&self) -> mqtt_schema::ErrorCode {
        match self {
            Self::Format { source, .. } => source.code(),
            Self::TooLargeToParse { .. } => mqtt_schema::ErrorCode::UnsupportedArtifact,
            Self::Manifest(e) => e.code(),
            Self::InvalidReference { .. } => mqtt_schema::ErrorCode::InvalidReference,
            Self::Read { .. } => mqtt_schema::ErrorCode::Internal,
            Self::Registry(e) => e.code(),
        }
    }
}

/// A file checked and ready to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedFile {
    /// The detected or given format.
    pub format: FirmwareFormat,
    /// Size in bytes.
    pub size: u64,
}

/// Detects the format of `file` (unless given) and parses it with [`twinflash_image::parse`], the
/// parser the flasher runs: what it refuses, push refuses, with the same error and code. A BIN larger
/// than [`MAX_PARSED_FILE`] is not read; [`twinflash_image::check_bin`] (the part of `parse` that
/// judges a BIN) decides from its length and base address.
pub fn check_file(
    file: &Path,
    format: Option<FirmwareFormat>,
    base_address: Option<u64>,
) -> Result<CheckedFile, PushError> {
    let read_err = |source| PushError::Read {
        file: file.to_owned(),
        source,
    };
    let fmt_err = |source| PushError::Format {
        file: file.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(file).map_err(read_err)?;
    let size = f.metadata().map_err(read_err)?.len();
    let format = match format {
        Some(format) => format,
        None => {
            let mut head = Vec::with_capacity(format::SNIFF_LEN);
            (&mut f)
                .take(format::SNIFF_LEN as u64)
                .read_to_end(&mut head)
                .map_err(read_err)?;
            format::sniff(&head).unwrap_or(FirmwareFormat::Bin)
        }
    };
    if size > MAX_PARSED_FILE {
        if format != FirmwareFormat::Bin {
            return Err(PushError::TooLargeToParse {
                file: file.to_owned(),
                format,
                size,
                max: MAX_PARSED_FILE,
            });
        }
        format::check_bin(size, base_address).map_err(fmt_err)?;
    } else {
        let data = std::fs::read(file).map_err(read_err)?;
        format::parse(&data, format, base_address).map_err(fmt_err)?;
    }
    Ok(CheckedFile { format, size })
}

/// Pushes a firmware artifact. `progress(done, total)` is called as the layer uploads.
pub async fn push(
    tls: &TlsOptions,
    credentials: &Credentials,
    req: &PushRequest,
    mut progress: impl FnMut(u64, u64),
) -> Result<Pushed, PushError> {
    let reference: Reference =
        req.reference
            .parse()
            .map_err(|e: oci_client::ParseError| PushError::InvalidReference {
                reference: req.reference.clone(),
                reason: e.to_string(),
            })?;
    let checked = check_file(&req.file, req.format, req.base_address)?;
    let title = req
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "firmware".to_owned());
    let meta = ArtifactMeta {
        version: req.version.clone(),
        chip: req.chip.clone(),
        format: checked.format,
        base_address: req.base_address,
        title,
        annotations: req.annotations.clone(),
    };
    // Validate the metadata before any upload: a placeholder digest stands in for the layer.
    build_manifest(&meta, EMPTY_CONFIG_DIGEST, checked.size)?;

    let registry = reference.resolve_registry().to_owned();
    let auth = credentials.resolve().map_err(FetchError::from)?;
    let client = push_client(tls, &auth, &registry).await?;
    let oci = |e| PushError::Registry(FetchError::from_oci(&registry, e));

    let exists = client
        .blob_exists(&reference, EMPTY_CONFIG_DIGEST)
        .await
        .map_err(oci)?;
    if !exists {
        client
            .push_blob(&reference, EMPTY_CONFIG.to_vec(), EMPTY_CONFIG_DIGEST)
            .await
            .map_err(oci)?;
    }

    let (layer_digest, layer_size) =
        upload_layer(&client, &reference, &req.file, checked.size, &mut progress)
            .await
            .map_err(oci)?;
    if layer_size != checked.size {
        return Err(PushError::Read {
            file: req.file.clone(),
            source: std::io::Error::other("the file changed while it was uploaded"),
        });
    }
    let manifest = build_manifest(&meta, &layer_digest, layer_size)?;
    let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
    let content_type = http::HeaderValue::from_static(format::MANIFEST_MEDIA_TYPE);
    client
        .push_manifest_raw(&reference, manifest.clone(), content_type)
        .await
        .map_err(oci)?;
    let artifact = FirmwareArtifact::from_manifest_bytes(&manifest)?;
    let pinned_reference = format!(
        "{}/{}{}@{}",
        reference.registry(),
        reference.repository(),
        reference.tag().map(|t| format!(":{t}")).unwrap_or_default(),
        manifest_digest
    );
    Ok(Pushed {
        pinned_reference,
        manifest_digest,
        artifact,
    })
}

async fn upload_layer(
    client: &oci_client::Client,
    reference: &Reference,
    file: &Path,
    total: u64,
    progress: &mut impl FnMut(u64, u64),
) -> Result<(String, u64), OciDistributionError> {
    let f = tokio::fs::File::open(file).await?;
    let done = Arc::new(AtomicU64::new(0));
    let counter = done.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 1024 * 1024).map(move |chunk| {
        let chunk = chunk?;
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok::<_, OciDistributionError>(chunk)
    });
    let upload = client.push_blob_stream_chunked(reference, stream);
    tokio::pin!(upload);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let response = loop {
        tokio::select! {
            r = &mut upload => break r?,
            _ = tick.tick() => progress(done.load(Ordering::Relaxed), total),
        }
    };
    progress(response.size, total);
    Ok((response.blob_digest, response.size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_binary_without_base_address_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fw.bin");
        std::fs::write(&path, [1u8, 2, 3, 4]).unwrap();
        let err = check_file(&path, None, None).unwrap_err();
        assert!(err.to_string().contains("--base-address"), "{err}");
        let ok = check_file(&path, None, Some(0x0800_0000)).unwrap();
        assert_eq!(ok.format, FirmwareFormat::Bin);
        assert_eq!(ok.size, 4);
    }

    #[test]
    fn declared_format_is_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fw.hex");
        std::fs::write(&path, ":0100000000FF\n").unwrap();
        let err = check_file(&path, Some(FirmwareFormat::Ihex), None).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        assert!(check_file(&empty, None, Some(0)).is_err());
    }
}
