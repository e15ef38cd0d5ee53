//! The rollout reconciler's error type: one variant per failing step, with the stable code that
//! labels the failure.

use mqtt_schema::ErrorCode;

use crate::seams::ResolveError;

/// A rollout reconcile failed; the controller backs off and retries.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// A Kubernetes API call failed (409 on the status patch included).
    #[error("kubernetes {op} of {object} failed: {source}")]
    Kube {
        /// What was attempted (`list devices`, `patch device`, `patch status`, ...).
        op: &'static str,
        /// `namespace/name` of the object.
        object: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The registry could not pin the firmware for now (unreachable, auth).
    #[error("cannot pin the firmware of rollout {rollout}: {source}")]
    Pin {
        /// `namespace/name` of the rollout.
        rollout: String,
        /// The resolver's error.
        #[source]
        source: ResolveError,
    },
    /// The object lacks something the API server always sets (namespace, name).
    #[error("object without {what}")]
    MalformedObject {
        /// The missing field.
        what: &'static str,
    },
    /// A patch body could not be built (a bug).
    #[error("cannot encode the {what} patch: {source}")]
    Encode {
        /// Which patch.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

impl RolloutError {
    /// The stable code of this error (metric label).
    pub fn code(&self) -> ErrorCode {
        match self {
            RolloutError::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.code == 408 || s.code == 504 => ErrorCode::Timeout,
                _ => ErrorCode::Internal,
            },
            RolloutError::Pin { source, .. } => source.code(),
            RolloutError::MalformedObject { .. } | RolloutError::Encode { .. } => {
                ErrorCode::Internal
            }
        }
    }
}
