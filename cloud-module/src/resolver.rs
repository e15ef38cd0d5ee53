//! The real [`ArtifactResolver`]: twinflash-artifact's `inspect` reads and validates the manifest
//! of a reference in its registry, pins it to the manifest digest and exposes the annotations.
//! [`PinnedCache`] keeps the answers for digest-pinned references, which cannot change.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use twinflash_artifact::error::FetchError;
use twinflash_artifact::{Credentials, TlsOptions};

use crate::seams::{ArtifactResolver, ResolveError, ResolvedArtifact};
use mqtt_schema::FirmwareRef;

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

/// Digest-pinned references whose answers a [`PinnedCache`] keeps (all are dropped when full).
pub const PINNED_CACHE_ENTRIES: usize = 4096;

/// Keeps the successful answers of `inner` for digest-pinned references: the manifest bytes behind
/// a digest never change, so neither does what is read from them (chip, version). Without it,
/// 10,000 Devices given the same reference meant 10,000 manifest reads, each with a new HTTP client.
/// Tags are asked every time (a tag moves), and so are failures (a missing artifact may be pushed
/// later; an unreachable registry may come back).
pub struct PinnedCache<R> {
    inner: R,
    answers: Mutex<HashMap<String, ResolvedArtifact>>,
}

impl<R> PinnedCache<R> {
    /// An empty cache in front of `inner`.
    pub fn new(inner: R) -> PinnedCache<R> {
        PinnedCache {
            inner,
            answers: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, reference: &str) -> Option<ResolvedArtifact> {
        self.answers.lock().ok()?.get(reference).cloned()
    }

    fn keep(&self, reference: &str, answer: &ResolvedArtifact) {
        if let Ok(mut m) = self.answers.lock() {
            if m.len() >= PINNED_CACHE_ENTRIES {
                m.clear();
            }
            m.insert(reference.to_owned(), answer.clone());
        }
    }
}

impl<R: ArtifactResolver> ArtifactResolver for PinnedCache<R> {
    fn resolve<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<ResolvedArtifact, ResolveError>> {
        Box::pin(async move {
            let pinned = FirmwareRef::parse(reference).is_ok();
            if pinned && let Some(answer) = self.cached(reference) {
                return Ok(answer);
            }
            let answer = self.inner.resolve(reference).await;
            if pinned && let Ok(a) = &answer {
                self.keep(reference, a);
            }
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::MemoryResolver;

    const PINNED: &str =
        "r.local/fw/b:2@sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn artifact(digest_ref: &str) -> ResolvedArtifact {
        ResolvedArtifact {
            digest_ref: digest_ref.to_owned(),
            chip: Some("STM32F411RETx".into()),
            version: Some("2.0.0".into()),
        }
    }

    #[tokio::test]
    async fn a_pinned_answer_is_asked_once_and_a_tag_every_time() {
        let inner = MemoryResolver::default();
        inner.insert(PINNED, Ok(artifact(PINNED)));
        inner.insert("r.local/fw/b:2", Ok(artifact(PINNED)));
        let cache = PinnedCache::new(inner.clone());
        for _ in 0..3 {
            assert_eq!(cache.resolve(PINNED).await, Ok(artifact(PINNED)));
            assert_eq!(cache.resolve("r.local/fw/b:2").await, Ok(artifact(PINNED)));
        }
        let calls = inner.calls();
        assert_eq!(
            calls.iter().filter(|c| *c == PINNED).count(),
            1,
            "{calls:?}"
        );
        assert_eq!(calls.iter().filter(|c| *c == "r.local/fw/b:2").count(), 3);
    }

    #[tokio::test]
    async fn failures_are_not_kept() {
        let inner = MemoryResolver::default();
        let cache = PinnedCache::new(inner.clone());
        assert!(matches!(
            cache.resolve(PINNED).await,
            Err(ResolveError::NotFound { .. })
        ));
        // Pushed afterwards: the next reconcile sees it.
        inner.insert(PINNED, Ok(artifact(PINNED)));
        assert_eq!(cache.resolve(PINNED).await, Ok(artifact(PINNED)));
        assert_eq!(inner.calls().len(), 2);
    }

    #[tokio::test]
    async fn a_full_cache_starts_over() {
        let inner = MemoryResolver::default();
        let cache = PinnedCache::new(inner.clone());
        let refs: Vec<String> = (0..=PINNED_CACHE_ENTRIES)
            .map(|i| format!("r.local/fw/b@sha256:{i:064x}"))
            .collect();
        for r in &refs {
            inner.insert(r, Ok(artifact(r)));
            assert_eq!(cache.resolve(r).await, Ok(artifact(r)));
        }
        assert_eq!(
            cache.answers.lock().unwrap().len(),
            1,
            "cleared when full, then the last kept"
        );
        assert_eq!(cache.resolve(&refs[0]).await, Ok(artifact(&refs[0])));
        assert_eq!(
            inner.calls().len(),
            refs.len() + 1,
            "the first one was asked again"
        );
    }
}
