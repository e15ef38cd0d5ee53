//! The side effects the controller needs outside Kubernetes, each behind a small trait: the MQTT
//! intent sink, the registry resolver, the signature checker and (direct mode) the status writer. The real ones
//! live in `mqtt.rs`, `resolver.rs`, `signatures.rs` and `direct.rs`; tests and benches use the in-memory fakes of `memory.rs`
//! (feature `test-support`).

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use mqtt_schema::{DeviceId, ErrorCode, FirmwareRef};
use twinflash_artifact::signature::{Policy, Verdict};

#[cfg(any(test, feature = "test-support"))]
mod memory;
#[cfg(any(test, feature = "test-support"))]
pub use memory::{MemoryResolver, MemorySignatures, MemorySink, MemoryStatusWriter};

/// The Kubernetes namespace of a Device's id. The controller builds namespaced ids only (from
/// the Device's metadata); a legacy id, which has none, gives `""`.
pub fn namespace_of(id: &DeviceId) -> &str {
    id.namespace().unwrap_or_default()
}

/// Delivers an intent (a digest-pinned reference for the `firmware` twin) to the edge.
///
/// In `edgecore` mode: a DeviceTwinUpdate with `expected` on `.../twin/update` (QoS 1).
/// Must be idempotent: the same intent may be published again after a controller restart.
pub trait IntentSink: Send + Sync {
    /// Publishes `reference` as the `expected` value of the `firmware` twin of `device`.
    fn publish_intent<'a>(
        &'a self,
        device: &'a DeviceId,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Tells the sink about an intent published by an earlier run (found in the status record),
    /// so it can be delivered again after a reconnect. Never publishes by itself in `edgecore`
    /// mode; in `direct` mode the relay re-establishes the retained delta. Default: nothing.
    fn restore_intent(&self, _device: &DeviceId, _reference: &str) {}

    /// The edge holds `reference` for `device` (in `edgecore` mode: cloudcore's `observedDesired`,
    /// written from edgecore's `expected`, is that value): the sink stops republishing it at every
    /// reconnect and resync. Default: nothing.
    fn delivered(&self, _device: &DeviceId, _reference: &str) {}
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
    /// Mode `dmi` has no MQTT client: KubeEdge delivers the Device's spec itself (a bug if ever returned).
    #[error("mode dmi publishes nothing over MQTT (asked to for {device})")]
    NoMqtt {
        /// Device the intent was for.
        device: String,
    },
    /// The API server refused or failed a Device patch (mode `dmi`'s nudge).
    #[error("cannot patch Device {device}: {detail}")]
    Api {
        /// The Device.
        device: String,
        /// What the API server said.
        detail: String,
    },
}

impl SinkError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            SinkError::BrokerUnreachable { .. } => ErrorCode::BrokerUnreachable,
            SinkError::Encode { .. } | SinkError::NoMqtt { .. } | SinkError::Api { .. } => {
                ErrorCode::Internal
            }
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

/// Looks up and verifies the signatures of a digest-pinned reference (the real one:
/// `crate::signatures::RegistrySignatures`, over twinflash-artifact's `Verifier`).
///
/// A verdict is an answer (verified, unsigned, invalid) that the caller turns into a publication or a
/// rejection; an error is a lookup that could not be made (registry down) and is retried like a resolver's.
pub trait SignatureChecker: Send + Sync {
    /// The verdict of `policy` (never `off`) on `reference` (`host/repo[:tag]@sha256:<hex>`).
    fn verify<'a>(
        &'a self,
        reference: &'a FirmwareRef,
        policy: &'a Policy,
    ) -> BoxFuture<'a, Result<Verdict, ResolveError>>;
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

/// Writes the edge's `actual` reports into the Device status, as cloudcore does (direct mode).
pub trait StatusWriter: Send + Sync {
    /// Records `actual` (twin name -> value) reported by the edge for `device` at `timestamp_ms`.
    fn write_actual<'a>(
        &'a self,
        device: &'a DeviceId,
        actual: &'a BTreeMap<String, String>,
        timestamp_ms: i64,
    ) -> BoxFuture<'a, Result<(), StatusError>>;
}

/// A report could not be written into the status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// The Device (or its DeviceStatus) does not exist.
    #[error("no Device or DeviceStatus {device} to write the report into")]
    NotFound {
        /// The device.
        device: String,
    },
    /// The API server refused or failed the read or the patch.
    #[error("cannot write the status of {device}: {detail}")]
    Api {
        /// The device.
        device: String,
        /// What the API server said.
        detail: String,
    },
}

impl StatusError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            StatusError::NotFound { .. } => ErrorCode::NotFound,
            StatusError::Api { .. } => ErrorCode::Internal,
        }
    }
}
