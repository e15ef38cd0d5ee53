//! `inspect`: read and validate the manifest of a reference (tag or digest) from its registry,
//! and resolve a tag to the digest-pinned reference the fetcher wants.

use std::sync::Arc;

use oci_client::Reference;
use sha2::{Digest, Sha256};

use crate::auth::Credentials;
use crate::error::FetchError;
use crate::format::FIRMWARE_MANIFEST_ACCEPT;
use crate::http::{RegistryClient, Repo};
use crate::manifest::FirmwareArtifact;
use crate::registry::TlsOptions;

/// A validated artifact as the registry describes it.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// `host/repo[:tag]@sha256:<hex>`.
    pub pinned_reference: String,
    /// Digest of the manifest bytes.
    pub manifest_digest: String,
    /// The validated view.
    pub artifact: FirmwareArtifact,
    /// The raw manifest.
    pub manifest: Vec<u8>,
}

/// Reads the manifest of `reference` from its registry and validates it. A digest in the
/// reference is checked against the bytes. A client certificate in `tls` is presented.
pub async fn inspect(
    tls: &TlsOptions,
    credentials: &Credentials,
    reference: &str,
) -> Result<Inspected, FetchError> {
    let parsed: Reference =
        reference
            .parse()
            .map_err(|e: oci_client::ParseError| FetchError::InvalidReference {
                reference: reference.to_owned(),
                reason: e.to_string(),
            })?;
    let client = RegistryClient::new(tls, Arc::new(credentials.resolve()?))?;
    let repo = Repo {
        registry: parsed.resolve_registry(),
        repository: parsed.repository(),
    };
    let target = parsed
        .digest()
        .or(parsed.tag())
        .unwrap_or("latest")
        .to_owned();
    let bytes = client
        .manifest(repo, &target, FIRMWARE_MANIFEST_ACCEPT)
        .await?;
    let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if let Some(expected) = parsed.digest()
        && expected != manifest_digest
    {
        return Err(FetchError::DigestMismatch {
            expected: expected.to_owned(),
            actual: manifest_digest,
        });
    }
    let artifact = FirmwareArtifact::from_manifest_bytes(&bytes)?;
    let pinned_reference = format!(
        "{}/{}{}@{}",
        parsed.registry(),
        parsed.repository(),
        parsed.tag().map(|t| format!(":{t}")).unwrap_or_default(),
        manifest_digest
    );
    Ok(Inspected {
        pinned_reference,
        manifest_digest,
        artifact,
        manifest: bytes,
    })
}
