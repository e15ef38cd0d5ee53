//! The fetcher the edge agent and `twinflash pull` share: resolve a digest-pinned reference from
//! mirrors then the origin, check the manifest digest and type, download the layer resumably into
//! the content-addressed cache, verify, retry transient failures with backoff, report events.

mod cache;
mod download;
mod resume;
mod retry;
mod sink;
pub(crate) mod source;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_client::Reference;
use oci_client::manifest::OciDescriptor;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use cache::Cache;
pub use resume::{Partial, Resume, partial_paths, read_state};
pub use retry::RetryPolicy;
pub use source::Mirror;

use crate::auth::Credentials;
use crate::error::FetchError;
use crate::http::RegistryClient;
use crate::manifest::{FirmwareArtifact, is_sha256_digest};
use crate::registry::{Timeouts, TlsOptions};
use crate::signature::{Mode, Verdict, Verified, discover_all, judge};
use download::{AttemptStats, DownloadOpts, Run, download};
pub(crate) use source::Source;

/// Everything the fetcher needs to know.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Root of the cache (`blobs/sha256/<hex>` below it).
    pub cache_dir: PathBuf,
    /// Largest layer accepted, checked before downloading (`too-large`).
    pub max_size: u64,
    /// Cache size cap; least-recently-used unpinned blobs are evicted to stay under it.
    pub cache_max_bytes: Option<u64>,
    /// Download rate limit in bytes per second (metered links).
    pub rate_limit_bps: Option<u64>,
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub plain_http: Vec<String>,
    /// Mirrors tried in order before the origin.
    pub mirrors: Vec<Mirror>,
    /// Registry credentials.
    pub credentials: Credentials,
    /// Extra CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS (PEM), presented to every registry (origin and mirrors).
    pub client_cert: Option<PathBuf>,
    /// Key of the client certificate (PEM); required with `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// Bytes between durable checkpoints of a partial download.
    pub checkpoint_every: u64,
    /// Idle timeout and total deadlines of registry requests (manifest, token, blob); each one
    /// that is hit is a transient `registry-unreachable`, retried per `retry`.
    pub timeouts: Timeouts,
    /// The signature policy checked after the manifest and before the layer is downloaded
    /// (docs/security.md). Off by default.
    pub signatures: crate::signature::Policy,
    /// Total deadline and referrer count of one signature lookup.
    pub signature_lookup: crate::signature::LookupLimits,
    /// Follow redirects and token realms to link-local addresses (off: refused as `redirect-refused`).
    pub allow_link_local_redirects: bool,
}

impl FetchConfig {
    /// A config with defaults: 1 GiB maximum, no cap, no limit, HTTPS everywhere, retry forever.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            max_size: 1 << 30,
            cache_max_bytes: None,
            rate_limit_bps: None,
            plain_http: Vec::new(),
            mirrors: Vec::new(),
            credentials: Credentials::default(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            retry: RetryPolicy::default(),
            checkpoint_every: 4 * 1024 * 1024,
            timeouts: Timeouts::default(),
            signatures: crate::signature::Policy::default(),
            signature_lookup: crate::signature::LookupLimits::default(),
            allow_link_local_redirects: false,
        }
    }

    /// The TLS and credential options of the registry client.
    pub(crate) fn tls(&self) -> TlsOptions {
        TlsOptions {
            plain_http: self.plain_http.clone(),
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            timeouts: self.timeouts,
            allow_link_local_redirects: self.allow_link_local_redirects,
        }
    }
}

/// What the fetcher tells its caller while it works.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchEvent {
    /// Bytes of the layer in the partial so far.
    Progress {
        /// Bytes done.
        done: u64,
        /// Layer size.
        total: u64,
    },
    /// A transient failure; the fetcher retries after `retry_in` (`waiting:<code>`).
    Waiting {
        /// The code to report.
        code: mqtt_schema::ErrorCode,
        /// Consecutive failed attempts.
        attempt: u32,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
}

/// A verified artifact in the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The layer file in the cache.
    pub path: PathBuf,
    /// The digest-pinned reference fetched.
    pub reference: String,
    /// The manifest digest.
    pub manifest_digest: String,
    /// Version, chip, format, base address, size, layer digest, title.
    pub artifact: FirmwareArtifact,
    /// Which source served the manifest (`host:port` or `oci-layout:<dir>`, or `cache`).
    pub source: String,
    /// Layer bytes received over the network in this call.
    pub bytes_received: u64,
    /// The signature that verified (policy `warn` or `require`).
    pub signature: Option<crate::signature::Verified>,
    /// Under `warn`: why the artifact is used without a good signature.
    pub signature_warning: Option<String>,
}

/// The fetcher. Cheap to share behind an `Arc`; fetches of different digests run concurrently.
pub struct Fetcher {
    cfg: FetchConfig,
    client: Arc<RegistryClient>,
    cache: Cache,
    pins: Mutex<HashSet<String>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("cfg", &self.cfg).finish()
    }
}

/// A parsed digest-pinned reference.
#[derive(Debug, Clone)]
pub struct PinnedRef {
    /// The parsed reference.
    pub reference: Reference,
    /// Its manifest digest.
    pub digest: String,
}

/// Parses a digest-pinned reference (`host/repo[:tag]@sha256:<hex>`) with
/// [`mqtt_schema::FirmwareRef::parse`], then [`pinned`].
pub fn parse_pinned(reference: &str) -> Result<PinnedRef, FetchError> {
    let firmware =
        mqtt_schema::FirmwareRef::parse(reference).map_err(|e| FetchError::InvalidReference {
            reference: reference.to_owned(),
            reason: e.to_string(),
        })?;
    pinned(&firmware)
}

/// The OCI client's form of an already checked twin reference (its digest is sha256 by
/// construction).
///
/// Built from the parts [`mqtt_schema::FirmwareRef`] already parsed, with the distribution
/// reference rules oci-spec applies (no registry: Docker Hub, and `library/` before a one-part
/// repository), instead of parsing the string again: oci-spec's parser is a regular expression,
/// and the `regex` crate it needs is about 0.4 MiB of the edge binary, which uses no other.
/// Infallible today; the `Result` stays for callers.
pub fn pinned(firmware: &mqtt_schema::FirmwareRef) -> Result<PinnedRef, FetchError> {
    let (registry, repository) = match firmware.registry() {
        Some(registry) => (registry.to_owned(), firmware.repository().to_owned()),
        None if !firmware.repository().contains('/') => (
            DOCKER_HUB.to_owned(),
            format!("library/{}", firmware.repository()),
        ),
        None => (DOCKER_HUB.to_owned(), firmware.repository().to_owned()),
    };
    let digest = firmware.digest().to_owned();
    let reference = match firmware.tag() {
        Some(tag) => Reference::with_tag_and_digest(registry, repository, tag.to_owned(), digest),
        None => Reference::with_digest(registry, repository, digest),
    };
    Ok(PinnedRef {
        reference,
        digest: firmware.digest().to_owned(),
    })
}

/// The registry of a reference that names none (distribution's default).
const DOCKER_HUB: &str = "docker.io";

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Of the errors of one round over all sources: a transient one if any (retrying may help),
/// else the origin's (the last).
fn pick_error(errors: Vec<FetchError>) -> FetchError {
    let mut last = None;
    for e in errors {
        if e.is_transient() {
            return e;
        }
        last = Some(e);
    }
    last.unwrap_or_else(|| FetchError::Config("no source configured".to_owned()))
}

/// The manifest bytes of `digest` from the first source whose bytes hash to it, and that source's
/// name. Of the failures, a transient one wins, else the origin's ([`pick_error`]).
pub(crate) async fn manifest_from(
    sources: &[Source],
    digest: &str,
) -> Result<(Vec<u8>, String), FetchError> {
    let mut errors = Vec::new();
    for source in sources {
        match source.manifest(digest).await {
            Ok(bytes) => {
                let actual = sha256_of(&bytes);
                if actual == digest {
                    return Ok((bytes, source.name()));
                }
                errors.push(FetchError::DigestMismatch {
                    expected: digest.to_owned(),
                    actual: format!("manifest from {} hashes to {actual}", source.name()),
                });
            }
            Err(e) => {
                tracing::debug!(source = %source.name(), error = %e, "manifest not available");
                errors.push(e);
            }
        }
    }
    Err(pick_error(errors))
}

/// The mirrors in order, then the origin.
pub(crate) fn sources(
    client: &Arc<RegistryClient>,
    mirrors: &[Mirror],
    pinned: &PinnedRef,
) -> Vec<Source> {
    let mut out = Vec::new();
    for mirror in mirrors {
        out.push(match mirror {
            Mirror::Registry(host) => {
                let reference = Reference::with_digest(
                    host.clone(),
                    pinned.reference.repository().to_owned(),
                    pinned.digest.clone(),
                );
                Source::Registry {
                    client: client.clone(),
                    reference,
                }
            }
            Mirror::Layout(dir) => Source::Layout(dir.clone()),
        });
    }
    out.push(Source::Registry {
        client: client.clone(),
        reference: pinned.reference.clone(),
    });
    out
}

impl Fetcher {
    /// Builds the fetcher: reads credentials, CA and client certificate, creates the cache
    /// directory.
    pub fn new(cfg: FetchConfig) -> Result<Self, FetchError> {
        cfg.signatures
            .check()
            .map_err(|e| FetchError::Config(e.0))?;
        let tls = cfg.tls();
        let creds = Arc::new(cfg.credentials.resolve()?);
        let client = Arc::new(RegistryClient::new(&tls, creds)?);
        let cache = Cache::open(&cfg.cache_dir)?;
        Ok(Self {
            cfg,
            client,
            cache,
            pins: Mutex::new(HashSet::new()),
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Protects a firmware from eviction: a digest-pinned reference or a `sha256:` digest
    /// (its layer is protected through the cached manifest).
    pub fn pin(&self, reference_or_digest: &str) -> Result<(), FetchError> {
        let digest = self.digest_of(reference_or_digest)?;
        if let Ok(mut pins) = self.pins.lock() {
            pins.insert(digest);
        }
        Ok(())
    }

    /// Removes a pin.
    pub fn unpin(&self, reference_or_digest: &str) -> Result<(), FetchError> {
        let digest = self.digest_of(reference_or_digest)?;
        if let Ok(mut pins) = self.pins.lock() {
            pins.remove(&digest);
        }
        Ok(())
    }

    fn digest_of(&self, reference_or_digest: &str) -> Result<String, FetchError> {
        if is_sha256_digest(reference_or_digest) {
            Ok(reference_or_digest.to_owned())
        } else {
            Ok(parse_pinned(reference_or_digest)?.digest)
        }
    }

    fn pins_with(&self, extra: &str) -> HashSet<String> {
        let mut pins = self.pins.lock().map(|p| p.clone()).unwrap_or_default();
        pins.insert(extra.to_owned());
        pins
    }

    fn sources(&self, pinned: &PinnedRef) -> Vec<Source> {
        sources(&self.client, &self.cfg.mirrors, pinned)
    }

    /// Fetches and verifies a digest-pinned firmware reference into the cache. Transient
    /// failures are retried per the policy and reported as [`FetchEvent::Waiting`].
    pub async fn fetch(
        &self,
        reference: &mqtt_schema::FirmwareRef,
        mut events: impl FnMut(FetchEvent) + Send,
        cancel: &CancellationToken,
    ) -> Result<Fetched, FetchError> {
        let pinned = pinned(reference)?;
        let lock = self
            .locks
            .lock()
            .map(|mut l| l.entry(pinned.digest.clone()).or_default().clone())
            .map_err(|_| FetchError::Config("lock poisoned".to_owned()))?;
        let _guard = lock.lock().await;
        let sources = self.sources(&pinned);
        let mut attempt = 0u32;
        let mut received = 0u64;
        // Highest durable offset reached: an attempt that passes it made progress.
        let mut high_water = 0u64;
        loop {
            let mut stats = AttemptStats::default();
            let result = self
                .try_once(&pinned, &sources, &mut events, cancel, &mut stats)
                .await;
            received += stats.received;
            match result {
                Ok(mut fetched) => {
                    fetched.bytes_received = received;
                    return Ok(fetched);
                }
                Err(e) if e.is_transient() => {
                    if stats.received > 0 && stats.kept > high_water {
                        high_water = stats.kept;
                        // The link works but drops: continue at once from the durable offset.
                        attempt = 0;
                        tracing::info!(error = %e, "transfer interrupted, resuming");
                        continue;
                    }
                    attempt += 1;
                    if !self.cfg.retry.allows(attempt) {
                        return Err(e);
                    }
                    let retry_in = self.cfg.retry.delay(attempt);
                    tracing::warn!(error = %e, attempt, ?retry_in, "fetch waiting");
                    events(FetchEvent::Waiting {
                        code: e.code(),
                        attempt,
                        retry_in,
                    });
                    tokio::select! {
                        () = cancel.cancelled() => return Err(FetchError::Cancelled),
                        () = tokio::time::sleep(retry_in) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The verified manifest: from the cache, else from the first source that has it.
    async fn manifest(
        &self,
        pinned: &PinnedRef,
        sources: &[Source],
    ) -> Result<(Vec<u8>, String), FetchError> {
        if let Some(bytes) = self.cache.manifest(&pinned.digest) {
            return Ok((bytes, "cache".to_owned()));
        }
        manifest_from(sources, &pinned.digest).await
    }

    /// The signature policy on `pinned`: `(verified, warning)`, or the rejection. A verified
    /// signature is kept in the cache and re-verified with the current keys at the next use, so a
    /// cached firmware stays usable offline and a removed key stops being trusted at once.
    async fn check_signatures(
        &self,
        pinned: &PinnedRef,
        sources: &[Source],
        manifest: &[u8],
    ) -> Result<(Option<Verified>, Option<String>), FetchError> {
        let policy = &self.cfg.signatures;
        if policy.mode == Mode::Off {
            return Ok((None, None));
        }
        let digest = &pinned.digest;
        if let Some(found) = self.cache.signatures(digest)
            && let Verdict::Verified(v) = judge(digest, manifest, &found, &policy.keys, Vec::new())
        {
            return Ok((Some(v), None));
        }
        let discovery = discover_all(sources, digest, manifest, self.cfg.signature_lookup).await;
        let verdict = discovery.judge(digest, &policy.keys);
        if let Verdict::Verified(v) = &verdict {
            if let Some(f) = discovery.found.iter().find(|f| f.location == v.location) {
                self.cache.put_signatures(digest, std::slice::from_ref(f))?;
            }
            tracing::info!(reference = %pinned.reference, signature = %v, "signature verified");
            return Ok((Some(v.clone()), None));
        }
        match policy.mode {
            Mode::Require => {
                // A source that could not be asked may hold the signature: wait for it.
                if let Some(e) = discovery.transient.into_iter().next() {
                    return Err(e);
                }
                Err(FetchError::from_verdict(&verdict))
            }
            _ => {
                let warning = verdict.describe();
                tracing::warn!(reference = %pinned.reference, %warning, "signature policy warn: using the artifact anyway");
                Ok((None, Some(warning)))
            }
        }
    }

    async fn try_once(
        &self,
        pinned: &PinnedRef,
        sources: &[Source],
        events: &mut (dyn FnMut(FetchEvent) + Send),
        cancel: &CancellationToken,
        stats: &mut AttemptStats,
    ) -> Result<Fetched, FetchError> {
        let (manifest, source_name) = tokio::select! {
            () = cancel.cancelled() => return Err(FetchError::Cancelled),
            m = self.manifest(pinned, sources) => m?,
        };
        let artifact = FirmwareArtifact::from_manifest_bytes(&manifest)?;
        if artifact.size > self.cfg.max_size {
            return Err(FetchError::TooLarge {
                size: artifact.size,
                max: self.cfg.max_size,
            });
        }
        // Before a byte of the layer is read, and before a cached layer is handed out.
        let (signature, signature_warning) = tokio::select! {
            () = cancel.cancelled() => return Err(FetchError::Cancelled),
            s = self.check_signatures(pinned, sources, &manifest) => s?,
        };
        let dest = self.cache.blob_path(&artifact.layer_digest);
        let fetched = |source: String| Fetched {
            path: dest.clone(),
            reference: format!(
                "{}/{}@{}",
                pinned.reference.registry(),
                pinned.reference.repository(),
                pinned.digest
            ),
            manifest_digest: pinned.digest.clone(),
            artifact: artifact.clone(),
            source,
            bytes_received: 0,
            signature: signature.clone(),
            signature_warning: signature_warning.clone(),
        };
        // Re-hashed at every use: the cache does not trust its own bytes (a changed blob is removed and fetched again).
        let cached = {
            let (cache, digest, size) = (
                self.cache.clone(),
                artifact.layer_digest.clone(),
                artifact.size,
            );
            tokio::task::spawn_blocking(move || cache.verified_blob(&digest, size))
                .await
                .unwrap_or(false)
        };
        if cached {
            // The manifest enters the cache only beside a verified layer.
            if source_name != "cache" {
                self.cache.put_manifest(&pinned.digest, &manifest)?;
            }
            self.cache.touch(&pinned.digest);
            self.cache.touch(&artifact.layer_digest);
            return Ok(fetched(source_name));
        }
        let pins = self.pins_with(&pinned.digest);
        if let Some(cap) = self.cfg.cache_max_bytes {
            self.cache.evict(cap, artifact.size, &pins);
        }
        let layer = OciDescriptor {
            media_type: artifact.format.media_type().to_owned(),
            digest: artifact.layer_digest.clone(),
            size: i64::try_from(artifact.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let opts = DownloadOpts {
            checkpoint_every: self.cfg.checkpoint_every.max(64 * 1024),
            rate_limit_bps: self.cfg.rate_limit_bps,
        };
        let hex = cache::hex_of(&artifact.layer_digest).to_owned();
        let mut errors = Vec::new();
        for source in sources {
            let mut partial = Some(Partial::open(self.cache.blob_dir(), &hex)?);
            let mut run = Run {
                opts,
                events: &mut *events,
                cancel,
                stats: &mut *stats,
            };
            let result = download(source, &layer, &mut partial, &dest, &mut run).await;
            match result {
                Ok(()) => {
                    self.cache.put_manifest(&pinned.digest, &manifest)?;
                    if let Some(cap) = self.cfg.cache_max_bytes {
                        self.cache.evict(cap, 0, &pins);
                    }
                    return Ok(fetched(source.name()));
                }
                Err(e @ (FetchError::Cancelled | FetchError::Io { .. })) => return Err(e),
                Err(e) => {
                    tracing::debug!(source = %source.name(), error = %e, "layer not fetched");
                    errors.push(e);
                }
            }
        }
        Err(pick_error(errors))
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
