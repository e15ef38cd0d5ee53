//! The error type of every flashing backend and its stable code.
//!
//! Each variant carries enough context for a log line; [`FlashError::code`] gives the wire code.

use mqtt_schema::ErrorCode;

/// What went wrong while checking, flashing or reading back a device.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The artifact's chip annotation does not fit the device.
    #[error("artifact is for chip {artifact:?}, device {device:?} is a {device_chip:?}")]
    ChipMismatch {
        /// The device id or backend name.
        device: String,
        /// The chip configured for the device.
        device_chip: String,
        /// The chip named by the artifact.
        artifact: String,
    },
    /// The configured probe is not connected.
    #[error("probe {selector} not found: {detail}")]
    ProbeNotFound {
        /// The probe selector from the configuration.
        selector: String,
        /// What the probe layer said.
        detail: String,
    },
    /// The probe or device is used by another operation.
    #[error("probe or device {what} is busy: {detail}")]
    ProbeBusy {
        /// The probe selector or device directory.
        what: String,
        /// What was reported.
        detail: String,
    },
    /// Erasing or programming failed.
    #[error("flashing failed: {detail}")]
    FlashFailed {
        /// What failed, including any tool output summary.
        detail: String,
    },
    /// The content on the device does not match the image after writing.
    #[error("verify failed: {detail}")]
    VerifyFailed {
        /// Where the first difference is, or what the verify tool said.
        detail: String,
    },
    /// An operation took longer than allowed.
    #[error("{what} timed out after {seconds} s")]
    Timeout {
        /// The operation.
        what: String,
        /// The limit that was exceeded.
        seconds: u64,
    },
    /// The image does not fit in the device's flash.
    #[error("image does not fit: {detail}")]
    TooLarge {
        /// The offending segment and the flash range.
        detail: String,
    },
    /// The image file is malformed or its format is not supported by the backend.
    #[error("unsupported or malformed {format} image: {detail}")]
    UnsupportedImage {
        /// The declared format.
        format: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The image file is refused by the parser `twinflash push` runs too (`twinflash-image`).
    #[error(transparent)]
    Image(#[from] twinflash_image::ImageError),
    /// The configuration of the backend is invalid (bad selector, unknown chip, bad template).
    #[error("invalid flasher configuration: {detail}")]
    Config {
        /// What is wrong.
        detail: String,
    },
    /// The backend cannot do what was asked of it (reset the device, read its memory): a setting that needs it
    /// does not fit this backend.
    #[error("the {backend} flasher cannot {operation}")]
    Unsupported {
        /// The backend kind.
        backend: &'static str,
        /// What it was asked to do.
        operation: &'static str,
    },
    /// The flash was cancelled before anything was written.
    #[error("flash cancelled before the first write")]
    Cancelled,
    /// A local I/O failure (state files, image file).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A bug or an unexpected failure.
    #[error("internal error: {detail}")]
    Internal {
        /// What happened.
        detail: String,
    },
}

impl FlashError {
    /// The stable error code reported on the twin and used as metric label.
    pub fn code(&self) -> ErrorCode {
        match self {
            FlashError::ChipMismatch { .. } => ErrorCode::ChipMismatch,
            FlashError::ProbeNotFound { .. } => ErrorCode::ProbeNotFound,
            FlashError::ProbeBusy { .. } => ErrorCode::ProbeBusy,
            FlashError::FlashFailed { .. } => ErrorCode::FlashFailed,
            FlashError::VerifyFailed { .. } => ErrorCode::VerifyFailed,
            FlashError::Timeout { .. } => ErrorCode::Timeout,
            FlashError::TooLarge { .. } => ErrorCode::TooLarge,
            FlashError::UnsupportedImage { .. } => ErrorCode::UnsupportedArtifact,
            FlashError::Image(e) => e.code(),
            FlashError::Unsupported { .. } => ErrorCode::InvalidConfig,
            FlashError::Config { .. }
            | FlashError::Cancelled
            | FlashError::Io { .. }
            | FlashError::Internal { .. } => ErrorCode::Internal,
        }
    }

    /// True when retrying later may succeed without a new intent (the agent shows `waiting:<code>`).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FlashError::ProbeBusy { .. } | FlashError::ProbeNotFound { .. }
        )
    }

    /// True when the agent itself cancelled the flash (nothing was written).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, FlashError::Cancelled)
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        FlashError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn unsupported(format: impl std::fmt::Display, detail: impl Into<String>) -> Self {
        FlashError::UnsupportedImage {
            format: format.to_string(),
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_transience() {
        let busy = FlashError::ProbeBusy {
            what: "p".into(),
            detail: "d".into(),
        };
        assert_eq!(busy.code().as_str(), "probe-busy");
        assert!(busy.is_transient());
        let nf = FlashError::ProbeNotFound {
            selector: "1:2".into(),
            detail: "gone".into(),
        };
        assert_eq!(nf.code().as_str(), "probe-not-found");
        assert!(nf.is_transient());
        let bad = FlashError::unsupported("uf2", "bad magic");
        assert_eq!(bad.code().as_str(), "unsupported-artifact");
        assert!(!bad.is_transient());
        let v = FlashError::VerifyFailed { detail: "x".into() };
        assert_eq!(v.code().as_str(), "verify-failed");
        assert!(!v.is_transient());
        assert_eq!(FlashError::Cancelled.code().as_str(), "internal");
        let cannot = FlashError::Unsupported {
            backend: "command",
            operation: "reset the device",
        };
        assert_eq!(cannot.code().as_str(), "invalid-config");
        assert!(!cannot.is_transient());
        assert!(FlashError::Cancelled.is_cancelled());
    }
}
