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
use crate::format::MANIFEST_MEDIA_TYPE;
pub(crate) use crate::http::BlobBody;
use crate::http::{RegistryClient, Repo};

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
                    .manifest(repo(reference), digest, MANIFEST_MEDIA_TYPE)
                    .await
            }
            Self::Layout(dir) => {
                let path = dir.join("blobs").join("sha256").join(hex_of(digest));
                tokio::fs::read(&path)
                    .await
                    .map_err(|e| self.layout_err(e, "manifest", &path))
            }
        }
    }

    /// A layout read failure: a missing file is `NotFound` (this source lacks it), anything else
    /// a local I/O error.
    pub(crate) fn layout_err(
        &self,
        e: std::io::Error,
        what: &str,
        path: &std::path::Path,
    ) -> FetchError {
        if e.kind() == std::io::ErrorKind::NotFound {
            FetchError::NotFound {
                source_name: self.name(),
                what: format!("{what} {}", path.display()),
            }
        } else {
            FetchError::io("read layout", path, e)
        }
    }

    /// The layer body from `offset`.
    pub async fn blob(&self, layer: &OciDescriptor, offset: u64) -> Result<BlobBody, FetchError> {
        match self {
            Self::Registry { client, reference } => {
                client.blob(repo(reference), &layer.digest, offset).await
            }
            Self::Layout(dir) => {
                let path = dir.join("blobs").join("sha256").join(hex_of(&layer.digest));
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
