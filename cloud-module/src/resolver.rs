//! The real [`ArtifactResolver`]: twinflash-artifact's `inspect` reads and validates the manifest
//! of a reference in its registry, pins it to the manifest digest and exposes the annotations.

use futures::future::BoxFuture;
use twinflash_artifact::error::FetchError;
use twinflash_artifact::{Credentials, TlsOptions};

use crate::seams::{ArtifactResolver, ResolveError, ResolvedArtifact};

/// The manifest annotation holding the firmware version.
const VERSION_ANNOTATION: &str = "org.opencontainers.image.version";

/// Resolves references against their registries (plain HTTP only for the listed hosts).
#[derive(Debug, Clone, Default)]
pub struct RegistryResolver {
    tls: TlsOptions,
    credentials: Credentials,
}

impl RegistryResolver {
    /// A resolver with these TLS options and credentials.
    pub fn new(tls: TlsOptions, credentials: Credentials) -> RegistryResolver {
        RegistryResolver { tls, credentials }
    }

    /// A resolver speaking plain HTTP to `plain_http` hosts and HTTPS elsewhere, anonymous or
    /// with the credentials twinflash-artifact finds (docker config).
    pub fn with_plain_http(plain_http: Vec<String>) -> RegistryResolver {
        RegistryResolver::new(
            TlsOptions {
                plain_http,
                ..TlsOptions::default()
            },
            Credentials::default(),
        )
    }
}

/// Maps an artifact error to the controller's resolution error.
pub fn map_error(reference: &str, e: FetchError) -> ResolveError {
    let reference = reference.to_owned();
    match e {
        FetchError::NotFound { .. } => ResolveError::NotFound { reference },
        FetchError::Auth { .. } | FetchError::Credentials(_) => ResolveError::Auth { reference },
        FetchError::Unsupported(e) => ResolveError::Unsupported {
            reference,
            detail: e.to_string(),
        },
        FetchError::InvalidReference { reason, .. } => ResolveError::Unsupported {
            reference,
            detail: format!("invalid reference: {reason}"),
        },
        FetchError::DigestMismatch { expected, actual } => ResolveError::Unsupported {
            reference,
            detail: format!("manifest digest {actual} differs from the pinned {expected}"),
        },
        other => ResolveError::Unreachable {
            reference,
            detail: other.to_string(),
        },
    }
}

impl ArtifactResolver for RegistryResolver {
    fn resolve<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<ResolvedArtifact, ResolveError>> {
        Box::pin(async move {
            let inspected = twinflash_artifact::inspect(&self.tls, &self.credentials, reference)
                .await
                .map_err(|e| map_error(reference, e))?;
            let artifact = inspected.artifact;
            Ok(ResolvedArtifact {
                digest_ref: inspected.pinned_reference,
                chip: Some(artifact.chip).filter(|c| !c.is_empty()),
                version: artifact
                    .annotations
                    .get(VERSION_ANNOTATION)
                    .cloned()
                    .or(Some(artifact.version))
                    .filter(|v| !v.is_empty()),
            })
        })
    }
}
