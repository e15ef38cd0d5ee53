//! The controller's error type: one variant per failing step, each with the context needed to act
//! on it, and the stable [`ErrorCode`] that labels the failure metric.

use mqtt_schema::ErrorCode;

use crate::seams::SinkError;

/// A reconcile failed; the controller backs off and retries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed (including 409 conflicts on the status patch).
    #[error("kubernetes {op} of {object} failed: {source}")]
    Kube {
        /// What was attempted (`get devicestatus`, `patch status`, ...).
        op: &'static str,
        /// `namespace/name` of the object.
        object: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The intent could not be delivered.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A transient failure reported by [`crate::decide::decide`] (registry down, auth).
    #[error("{device}: {message}")]
    Retry {
        /// `namespace/name`.
        device: String,
        /// The stable code.
        code: ErrorCode,
        /// What failed.
        message: String,
    },
    /// The object lacks something the API server always sets (namespace, name).
    #[error("object without {what}")]
    MalformedObject {
        /// The missing field.
        what: &'static str,
    },
}

impl Error {
    /// The stable code of this error (metric label).
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.code == 408 || s.code == 504 => ErrorCode::Timeout,
                _ => ErrorCode::Internal,
            },
            Error::Sink(e) => e.code(),
            Error::Retry { code, .. } => *code,
            Error::MalformedObject { .. } => ErrorCode::Internal,
        }
    }
}
