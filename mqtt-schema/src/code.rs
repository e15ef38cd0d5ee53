//! The stable error codes of twinflash (docs/contract.md section 3).
//!
//! The same strings appear in logs, metric labels and the `firmware-state` twin. Add codes when
//! needed; never change one.

use std::fmt;
use std::str::FromStr;

/// A stable error code. Its wire string is [`ErrorCode::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorCode {
    /// The firmware reference is not a digest-pinned OCI reference that fits the twin charset.
    InvalidReference,
    /// The artifact is not a twinflash firmware artifact (artifactType, layer media type, layer count).
    UnsupportedArtifact,
    /// The artifact's chip annotation does not fit the device.
    ChipMismatch,
    /// The intent would install a lower version and the device does not allow downgrades.
    DowngradeRefused,
    /// The artifact is larger than the configured maximum or than the device's flash.
    TooLarge,
    /// The registry (and every mirror) could not be reached, or answered 5xx/429.
    RegistryUnreachable,
    /// The registry refused the credentials (401/403).
    RegistryAuth,
    /// The manifest or blob does not exist (404).
    NotFound,
    /// Bytes received do not hash to the digest asked for.
    DigestMismatch,
    /// No space left for the download or the state.
    DiskFull,
    /// The configured probe is not connected.
    ProbeNotFound,
    /// The probe or device is in use by another operation.
    ProbeBusy,
    /// Writing the firmware failed.
    FlashFailed,
    /// The content on the device does not match the firmware after writing.
    VerifyFailed,
    /// The MQTT broker cannot be reached.
    BrokerUnreachable,
    /// An operation took longer than allowed.
    Timeout,
    /// A bug or an unexpected local failure.
    Internal,
    /// A twin message for the device could not be decoded (malformed JSON, wrong field types). Added to the
    /// contract's list: the payload names no usable intent, so `invalid-reference` would mislead.
    InvalidMessage,
    /// The device's own settings are not acceptable (in DMI mode: its Device's protocol config data, checked with
    /// the rules of a TOML `[[devices]]` entry). The device is never flashed until its Device changes.
    InvalidConfig,
    /// The signature policy requires a signature and no source holds one for the artifact's manifest digest
    /// (neither an OCI 1.1 referrer nor a cosign `sha256-<hex>.sig` tag).
    Unsigned,
    /// Signatures were found for the artifact, but none verifies with a trusted key: a wrong key, a tampered
    /// payload, or a signature of another digest.
    SignatureInvalid,
    /// The registry sent the client somewhere it may not go: a redirect or a token realm over plain HTTP to a host
    /// not listed in `plain_http`, or to a link-local address (the cloud metadata service). Nothing was sent there.
    RedirectRefused,
    /// The new firmware was written and verified but did not prove that it runs: its `[devices.confirm]` check did
    /// not pass within its timeout. The previous firmware was flashed back and confirmed.
    BootFailed,
    /// Putting the previous firmware back after a failed confirmation failed too (its flash or its own
    /// confirmation). The device runs an unknown image; it takes no new intent until its desired value changes.
    RevertFailed,
    /// The device booted and reported another version than the artifact claims. The previous firmware was flashed
    /// back and confirmed.
    VersionMismatch,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 25] = [
        ErrorCode::InvalidReference,
        ErrorCode::UnsupportedArtifact,
        ErrorCode::ChipMismatch,
        ErrorCode::DowngradeRefused,
        ErrorCode::TooLarge,
        ErrorCode::RegistryUnreachable,
        ErrorCode::RegistryAuth,
        ErrorCode::NotFound,
        ErrorCode::DigestMismatch,
        ErrorCode::DiskFull,
        ErrorCode::ProbeNotFound,
        ErrorCode::ProbeBusy,
        ErrorCode::FlashFailed,
        ErrorCode::VerifyFailed,
        ErrorCode::BrokerUnreachable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
        ErrorCode::InvalidMessage,
        ErrorCode::InvalidConfig,
        ErrorCode::Unsigned,
        ErrorCode::SignatureInvalid,
        ErrorCode::RedirectRefused,
        ErrorCode::BootFailed,
        ErrorCode::RevertFailed,
        ErrorCode::VersionMismatch,
    ];

    /// The stable wire string, e.g. `digest-mismatch`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidReference => "invalid-reference",
            ErrorCode::UnsupportedArtifact => "unsupported-artifact",
            ErrorCode::ChipMismatch => "chip-mismatch",
            ErrorCode::DowngradeRefused => "downgrade-refused",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::RegistryUnreachable => "registry-unreachable",
            ErrorCode::RegistryAuth => "registry-auth",
            ErrorCode::NotFound => "not-found",
            ErrorCode::DigestMismatch => "digest-mismatch",
            ErrorCode::DiskFull => "disk-full",
            ErrorCode::ProbeNotFound => "probe-not-found",
            ErrorCode::ProbeBusy => "probe-busy",
            ErrorCode::FlashFailed => "flash-failed",
            ErrorCode::VerifyFailed => "verify-failed",
            ErrorCode::BrokerUnreachable => "broker-unreachable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::InvalidMessage => "invalid-message",
            ErrorCode::InvalidConfig => "invalid-config",
            ErrorCode::Unsigned => "unsigned",
            ErrorCode::SignatureInvalid => "signature-invalid",
            ErrorCode::RedirectRefused => "redirect-refused",
            ErrorCode::BootFailed => "boot-failed",
            ErrorCode::RevertFailed => "revert-failed",
            ErrorCode::VersionMismatch => "version-mismatch",
        }
    }

    /// Whether the code says the intent itself is unacceptable, so that it is reported as
    /// `rejected:<code>` and never retried until the intent changes (docs/contract.md section 3).
    pub const fn is_rejection(self) -> bool {
        matches!(
            self,
            ErrorCode::InvalidReference
                | ErrorCode::UnsupportedArtifact
                | ErrorCode::ChipMismatch
                | ErrorCode::DowngradeRefused
                | ErrorCode::TooLarge
                | ErrorCode::InvalidConfig
                | ErrorCode::Unsigned
                | ErrorCode::SignatureInvalid
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string is not one of the stable codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code {0:?}")]
pub struct UnknownErrorCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownErrorCode(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_is_a_valid_twin_value_fragment() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-')
            );
        }
        assert!("nope".parse::<ErrorCode>().is_err());
    }

    #[test]
    fn rejections_are_the_codes_about_the_intent() {
        let rejections: Vec<_> = ErrorCode::ALL
            .into_iter()
            .filter(|c| c.is_rejection())
            .collect();
        assert_eq!(
            rejections,
            [
                ErrorCode::InvalidReference,
                ErrorCode::UnsupportedArtifact,
                ErrorCode::ChipMismatch,
                ErrorCode::DowngradeRefused,
                ErrorCode::TooLarge,
                ErrorCode::InvalidConfig,
                ErrorCode::Unsigned,
                ErrorCode::SignatureInvalid,
            ]
        );
    }
}
