//! Where artifacts come from: a registry (the origin or a mirror) or an OCI image-layout
//! directory (a USB stick at an air-gapped site). Every source is untrusted: callers check digests.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use oci_client::Reference;
use oci_client::client::BlobResponse;
use oci_client::manifest::OciDescriptor;
use tokio::io::AsyncSeekExt;

use crate::auth::ResolvedCredentials;
use crate::error::FetchError;
use crate::fetch::cache::hex_of;
use crate::format::MANIFEST_MEDIA_TYPE;

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
        client: Arc<oci_client::Client>,
        reference: Reference,
        creds: Arc<ResolvedCredentials>,
    },
    Layout(PathBuf),
}

/// A blob body from some offset.
pub(crate) struct BlobBody {
    /// The source ignored the offset and sends from byte 0.
    pub from_start: bool,
    /// Bytes the source says it will send, if it says.
    pub content_length: Option<u64>,
    pub stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

impl Source {
    pub fn name(&self) -> String {
        match self {
            Self::Registry { reference, .. } => reference.resolve_registry().to_owned(),
            Self::Layout(dir) => format!("oci-layout:{}", dir.display()),
        }
    }

    async fn authorize(&self) {
        if let Self::Registry {
            client,
            reference,
            creds,
        } = self
        {
            let registry = reference.resolve_registry();
            client
                .store_auth_if_needed(registry, &creds.for_registry(registry))
                .await;
        }
    }

    /// The raw manifest bytes for `digest` (not yet verified).
    pub async fn manifest(&self, digest: &str) -> Result<Vec<u8>, FetchError> {
        match self {
            Self::Registry {
                client, reference, ..
            } => {
                self.authorize().await;
                let pinned = reference.clone_with_digest(digest.to_owned());
                let (bytes, _) = client
                    .pull_manifest_raw(
                        &pinned,
                        &oci_client::secrets::RegistryAuth::Anonymous,
                        &[MANIFEST_MEDIA_TYPE],
                    )
                    .await
                    .map_err(|e| FetchError::from_oci(&self.name(), e))?;
                Ok(bytes.to_vec())
            }
            Self::Layout(dir) => {
                let path = dir.join("blobs").join("sha256").join(hex_of(digest));
                tokio::fs::read(&path)
                    .await
                    .map_err(|e| self.layout_err(e, "manifest", &path))
            }
        }
    }

    fn layout_err(&self, e: std::io::Error, what: &str, path: &std::path::Path) -> FetchError {
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
            Self::Registry {
                client, reference, ..
            } => {
                self.authorize().await;
                let response = client
                    .pull_blob_stream_partial(reference, layer, offset, None)
                    .await
                    .map_err(|e| FetchError::from_oci(&self.name(), e))?;
                let (from_start, sized) = match response {
                    BlobResponse::Full(s) => (true, s),
                    BlobResponse::Partial(s) => (false, s),
                };
                Ok(BlobBody {
                    from_start,
                    content_length: sized.content_length,
                    stream: sized.stream,
                })
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
                    stream: stream.boxed(),
                })
            }
        }
    }
}
