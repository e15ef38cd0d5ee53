//! Where artifacts come from: a registry (the origin or a mirror) or an OCI image-layout
//! directory (a USB stick at an air-gapped site). Every source is untrusted: callers check digests.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use oci_client::Reference;
use oci_client::manifest::OciDescriptor;
use tokio::io::AsyncSeekExt;

use crate::error::FetchError;
use crate::fetch::cache::hex_of;
use crate::format::FIRMWARE_MANIFEST_ACCEPT;
pub(crate) use crate::http::BlobBody;
use crate::http::{MAX_MANIFEST, RegistryClient, Repo};
use mqtt_schema::small_file::read_bounded;

/// A mirror, tried in order before the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirror {
    /// Another registry (`host[:port]`) holding the same repository path.
    Registry(String),
    /// An OCI image-layout directory (`oci-layout`, `index.json`, `blobs/sha256/...`).
    Layout(PathBuf),
}

/// One place to try.
#[derive(Clone)]
pub(crate) enum Source {
    Registry {
        client: Arc<RegistryClient>,
        reference: Reference,
    },
    Layout(PathBuf),
}

pub(crate) fn repo(reference: &Reference) -> Repo<'_> {
    Repo {
        registry: reference.resolve_registry(),
        repository: reference.repository(),
    }
}

impl Source {
    pub fn name(&self) -> String {
        match self {
            Self::Registry { reference, .. } => reference.resolve_registry().to_owned(),
            Self::Layout(dir) => format!("oci-layout:{}", dir.display()),
        }
    }

    /// The raw manifest bytes for `digest` (not yet verified).
    pub async fn manifest(&self, digest: &str) -> Result<Vec<u8>, FetchError> {
        match self {
            Self::Registry { client, reference } => {
                client
                    .manifest(repo(reference), digest, FIRMWARE_MANIFEST_ACCEPT)
                    .await
            }
            Self::Layout(dir) => {
                let path = dir.join("blobs").join("sha256").join(hex_of(digest));
                self.read_layout(&path, MAX_MANIFEST, "manifest").await
            }
        }
    }

    /// A layout read failure: a missing file is `NotFound` (this source lacks it), a file that is not a regular
    /// one or too large is refused like a registry answer that breaks the protocol, anything else is a local I/O
    /// error.
    pub(crate) fn layout_err(
        &self,
        e: std::io::Error,
        what: &str,
        path: &std::path::Path,
    ) -> FetchError {
        match e.kind() {
            std::io::ErrorKind::NotFound => FetchError::NotFound {
                source_name: self.name(),
                what: format!("{what} {}", path.display()),
            },
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                FetchError::Rejected {
                    source_name: self.name(),
                    detail: format!("{what} {}: {e}", path.display()),
                }
            }
            _ => FetchError::io("read layout", path, e),
        }
    }

    /// A whole file of a layout: a regular file of at most `max` bytes (a FIFO would block, a device never end).
    pub(crate) async fn read_layout(
        &self,
        path: &std::path::Path,
        max: usize,
        what: &str,
    ) -> Result<Vec<u8>, FetchError> {
        let owned = path.to_owned();
        tokio::task::spawn_blocking(move || read_bounded(&owned, max as u64))
            .await
            .map_err(|e| FetchError::io("read layout", path, std::io::Error::other(e)))?
            .map_err(|e| self.layout_err(e, what, path))
    }

    /// The layer body from `offset`.
    pub async fn blob(&self, layer: &OciDescriptor, offset: u64) -> Result<BlobBody, FetchError> {
        match self {
            Self::Registry { client, reference } => {
                client.blob(repo(reference), &layer.digest, offset).await
            }
            Self::Layout(dir) => {
                let path = dir.join("blobs").join("sha256").join(hex_of(&layer.digest));
                // Not opened unless it is a regular file: opening a FIFO blocks until someone writes to it.
                let meta = tokio::fs::metadata(&path)
                    .await
                    .map_err(|e| self.layout_err(e, "blob", &path))?;
                if !meta.is_file() {
                    return Err(self.layout_err(
                        std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
                        "blob",
                        &path,
                    ));
                }
                let mut f = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| self.layout_err(e, "blob", &path))?;
                let len = f
                    .metadata()
                    .await
                    .map_err(|e| FetchError::io("stat layout blob", &path, e))?
                    .len();
                f.seek(SeekFrom::Start(offset))
                    .await
                    .map_err(|e| FetchError::io("seek layout blob", &path, e))?;
                let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
                Ok(BlobBody {
                    from_start: false,
                    content_length: Some(len.saturating_sub(offset)),
                    deadline: None,
                    stream: stream.boxed(),
                })
            }
        }
    }
}
