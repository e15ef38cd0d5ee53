//! The side effects the controller needs outside Kubernetes, each behind a small trait: the MQTT
//! intent sink and the registry resolver. The lead wires the real implementations (mqtt-schema's
//! DeviceTwinUpdate over rumqttc, twinflash-artifact's registry client); tests use the fakes here.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use mqtt_schema::ErrorCode;

/// A Device's identity on the twin topics: `$hw/events/device/{namespace}/{name}/...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey {
    /// Kubernetes namespace of the Device.
    pub namespace: String,
    /// Name of the Device.
    pub name: String,
}

impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Delivers an intent (a digest-pinned reference for the `firmware` twin) to the edge.
///
/// In `edgecore` mode: a DeviceTwinUpdate with `expected` on `.../twin/update` (QoS 1).
/// Must be idempotent: the same intent may be published again after a controller restart.
pub trait IntentSink: Send + Sync {
    /// Publishes `reference` as the `expected` value of the `firmware` twin of `device`.
    fn publish_intent<'a>(
        &'a self,
        device: &'a DeviceKey,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<(), SinkError>>;
}

/// The sink could not deliver an intent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The broker could not be reached or did not acknowledge in time.
    #[error("broker unreachable while publishing the intent for {device}: {detail}")]
    BrokerUnreachable {
        /// Device the intent was for.
        device: String,
        /// What the MQTT client said.
        detail: String,
    },
    /// The intent could not be encoded (a bug: references are validated first).
    #[error("cannot encode the intent for {device}: {detail}")]
    Encode {
        /// Device the intent was for.
        device: String,
        /// Why.
        detail: String,
    },
}

impl SinkError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            SinkError::BrokerUnreachable { .. } => ErrorCode::BrokerUnreachable,
            SinkError::Encode { .. } => ErrorCode::Internal,
        }
    }
}

/// What the registry says about a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedArtifact {
    /// The reference pinned to the manifest digest (`host/repo[:tag]@sha256:<hex>`).
    pub digest_ref: String,
    /// The `io.twinflash.firmware.chip` annotation.
    pub chip: Option<String>,
    /// The `org.opencontainers.image.version` annotation.
    pub version: Option<String>,
}

/// Pins a reference to its digest and reads the artifact's annotations.
pub trait ArtifactResolver: Send + Sync {
    /// Resolves `reference` (a tag or a digest reference) in its registry.
    fn resolve<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<ResolvedArtifact, ResolveError>>;
}

/// The registry could not resolve a reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The manifest does not exist (404): permanent until the intent changes.
    #[error("artifact {reference} not found")]
    NotFound {
        /// The reference asked for.
        reference: String,
    },
    /// The artifact exists but is not a twinflash firmware artifact.
    #[error("{reference} is not a twinflash firmware artifact: {detail}")]
    Unsupported {
        /// The reference asked for.
        reference: String,
        /// What is wrong (artifactType, layers).
        detail: String,
    },
    /// The registry refused the credentials.
    #[error("registry refused access to {reference}")]
    Auth {
        /// The reference asked for.
        reference: String,
    },
    /// The registry is unreachable or answered 5xx/429: transient.
    #[error("registry unreachable for {reference}: {detail}")]
    Unreachable {
        /// The reference asked for.
        reference: String,
        /// What the client said.
        detail: String,
    },
}

impl ResolveError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ResolveError::NotFound { .. } => ErrorCode::NotFound,
            ResolveError::Unsupported { .. } => ErrorCode::UnsupportedArtifact,
            ResolveError::Auth { .. } => ErrorCode::RegistryAuth,
            ResolveError::Unreachable { .. } => ErrorCode::RegistryUnreachable,
        }
    }
}

/// A sink that remembers what was published, in order (for tests and dry runs).
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    published: Arc<Mutex<Vec<(DeviceKey, String)>>>,
    fail_with: Arc<Mutex<Option<SinkError>>>,
}

impl MemorySink {
    /// Everything published so far.
    pub fn published(&self) -> Vec<(DeviceKey, String)> {
        self.published.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Makes every following publish fail with `err` (`None` heals it).
    pub fn fail_with(&self, err: Option<SinkError>) {
        if let Ok(mut f) = self.fail_with.lock() {
            *f = err;
        }
    }
}

impl IntentSink for MemorySink {
    fn publish_intent<'a>(
        &'a self,
        device: &'a DeviceKey,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if let Some(err) = self.fail_with.lock().ok().and_then(|f| f.clone()) {
                return Err(err);
            }
            if let Ok(mut p) = self.published.lock() {
                p.push((device.clone(), reference.to_owned()));
            }
            Ok(())
        })
    }
}

/// A resolver answering from a table (reference -> answer); unknown references are `NotFound`.
#[derive(Debug, Clone, Default)]
pub struct MemoryResolver {
    table: Arc<Mutex<BTreeMap<String, Result<ResolvedArtifact, ResolveError>>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl MemoryResolver {
    /// Sets the answer for `reference`.
    pub fn insert(&self, reference: &str, answer: Result<ResolvedArtifact, ResolveError>) {
        if let Ok(mut t) = self.table.lock() {
            t.insert(reference.to_owned(), answer);
        }
    }

    /// Every reference asked for, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl ArtifactResolver for MemoryResolver {
    fn resolve<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<ResolvedArtifact, ResolveError>> {
        Box::pin(async move {
            if let Ok(mut c) = self.calls.lock() {
                c.push(reference.to_owned());
            }
            self.table
                .lock()
                .ok()
                .and_then(|t| t.get(reference).cloned())
                .unwrap_or_else(|| {
                    Err(ResolveError::NotFound {
                        reference: reference.to_owned(),
                    })
                })
        })
    }
}
