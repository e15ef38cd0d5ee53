//! `FetchError`: every way a fetch can fail, each with its stable code and whether retrying helps.

use std::path::PathBuf;

use mqtt_schema::ErrorCode;
use oci_client::errors::{OciDistributionError, OciErrorCode};

/// A fetch (or registry operation) failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not a digest-pinned reference.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it is refused.
        reason: String,
    },
    /// The manifest is not a twinflash firmware artifact.
    #[error(transparent)]
    Unsupported(#[from] crate::manifest::ManifestError),
    /// The layer is larger than the configured maximum.
    #[error("artifact layer is {size} bytes, more than the maximum of {max}")]
    TooLarge {
        /// Layer size.
        size: u64,
        /// Configured maximum.
        max: u64,
    },
    /// Connect error, reset, timeout, 5xx or 429: worth retrying.
    #[error("registry {source_name} unreachable: {detail}")]
    Unreachable {
        /// Which source.
        source_name: String,
        /// What happened.
        detail: String,
    },
    /// 401/403 or a failed token exchange.
    #[error("registry {source_name} refused the credentials: {detail}")]
    Auth {
        /// Which source.
        source_name: String,
        /// What happened.
        detail: String,
    },
    /// The registry sent the client where it may not go: a redirect or a token realm over plain HTTP to a host
    /// not in `plain_http`, or to a link-local address (docs/security.md, "Registry"). Nothing was sent there.
    #[error("registry {source_name} sent the client where it may not go: {detail}")]
    RedirectRefused {
        /// Which source.
        source_name: String,
        /// The URL and the rule.
        detail: String,
    },
    /// 404, or a layout without the blob.
    #[error("not found in {source_name}: {what}")]
    NotFound {
        /// Which source.
        source_name: String,
        /// What was missing.
        what: String,
    },
    /// Another 4xx, or an answer that breaks the protocol.
    #[error("registry {source_name} rejected the request: {detail}")]
    Rejected {
        /// Which source.
        source_name: String,
        /// What happened.
        detail: String,
    },
    /// Bytes do not hash to the digest asked for (or have the wrong size).
    #[error("digest mismatch for {expected}: got {actual}")]
    DigestMismatch {
        /// The digest asked for.
        expected: String,
        /// What the bytes hash to, or a size note.
        actual: String,
    },
    /// Credentials could not be read.
    #[error(transparent)]
    Credentials(#[from] crate::auth::AuthError),
    /// A local file operation failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The configuration cannot work (bad CA file, unsupported option).
    #[error("invalid fetch configuration: {0}")]
    Config(String),
    /// The policy requires a signature and none was found.
    #[error("unsigned: {detail}")]
    Unsigned {
        /// Where it was looked for.
        detail: String,
    },
    /// Signatures were found and none verifies with a trusted key.
    #[error("signature invalid: {detail}")]
    SignatureInvalid {
        /// Why each one failed.
        detail: String,
    },
    /// The caller cancelled the fetch; the partial download was checkpointed.
    #[error("fetch cancelled")]
    Cancelled,
}

impl FetchError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidReference { .. } => ErrorCode::InvalidReference,
            Self::Unsupported(_) => ErrorCode::UnsupportedArtifact,
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::Unreachable { .. } | Self::Rejected { .. } => ErrorCode::RegistryUnreachable,
            Self::Auth { .. } | Self::Credentials(_) => ErrorCode::RegistryAuth,
            Self::NotFound { .. } => ErrorCode::NotFound,
            Self::RedirectRefused { .. } => ErrorCode::RedirectRefused,
            Self::DigestMismatch { .. } => ErrorCode::DigestMismatch,
            Self::Unsigned { .. } => ErrorCode::Unsigned,
            Self::SignatureInvalid { .. } => ErrorCode::SignatureInvalid,
            Self::Io { source, .. } if is_disk_full(source) => ErrorCode::DiskFull,
            Self::Io { .. } | Self::Config(_) | Self::Cancelled => ErrorCode::Internal,
        }
    }

    /// Whether the same request may succeed later (reported as `waiting:<code>`).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }

    /// The rejection a verdict that is not verified stands for.
    pub fn from_verdict(verdict: &crate::signature::Verdict) -> Self {
        match verdict {
            crate::signature::Verdict::Unsigned { .. } => Self::Unsigned {
                detail: verdict.describe(),
            },
            _ => Self::SignatureInvalid {
                detail: verdict.describe(),
            },
        }
    }

    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// Maps an oci-client error from `source_name` to a fetch error.
    pub(crate) fn from_oci(source_name: &str, err: OciDistributionError) -> Self {
        let source_name = source_name.to_owned();
        let detail = err.to_string();
        match &err {
            OciDistributionError::RequestError(_)
            | OciDistributionError::IoError(_)
            | OciDistributionError::HeaderValueError(_) => Self::Unreachable {
                source_name,
                detail,
            },
            OciDistributionError::ServerError { code, .. } => {
                Self::from_status(source_name, *code, detail)
            }
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::RegistryTokenDecodeError(_) => Self::Auth {
                source_name,
                detail,
            },
            OciDistributionError::ImageManifestNotFoundError(_) => Self::NotFound {
                source_name,
                what: detail,
            },
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    Self::Auth {
                        source_name,
                        detail,
                    }
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::BlobUnknown
                            | OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    Self::NotFound {
                        source_name,
                        what: detail,
                    }
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
                {
                    Self::Unreachable {
                        source_name,
                        detail,
                    }
                } else {
                    Self::Rejected {
                        source_name,
                        detail,
                    }
                }
            }
            OciDistributionError::DigestError(_) => Self::DigestMismatch {
                expected: format!("content from {source_name}"),
                actual: detail,
            },
            _ => Self::Rejected {
                source_name,
                detail,
            },
        }
    }

    /// Maps an HTTP status to a fetch error.
    pub(crate) fn from_status(source_name: String, status: u16, detail: String) -> Self {
        match status {
            401 | 403 => Self::Auth {
                source_name,
                detail,
            },
            404 => Self::NotFound {
                source_name,
                what: detail,
            },
            429 | 500..=599 => Self::Unreachable {
                source_name,
                detail,
            },
            _ => Self::Rejected {
                source_name,
                detail,
            },
        }
    }
}

fn is_disk_full(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_codes_and_transience() {
        let e = |s| FetchError::from_status("r".into(), s, String::new());
        for (status, code, transient) in [
            (401, ErrorCode::RegistryAuth, false),
            (403, ErrorCode::RegistryAuth, false),
            (404, ErrorCode::NotFound, false),
            (429, ErrorCode::RegistryUnreachable, true),
            (500, ErrorCode::RegistryUnreachable, true),
            (503, ErrorCode::RegistryUnreachable, true),
            (400, ErrorCode::RegistryUnreachable, false),
            (416, ErrorCode::RegistryUnreachable, false),
        ] {
            assert_eq!(e(status).code(), code, "{status}");
            assert_eq!(e(status).is_transient(), transient, "{status}");
        }
    }

    #[test]
    fn disk_full_has_its_code() {
        let err = FetchError::io(
            "write",
            "/x",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        assert_eq!(err.code(), ErrorCode::DiskFull);
        assert!(!err.is_transient());
    }
}
