//! The `firmware-state` twin values: `state` or `state:detail` (docs/contract.md section 3).

use std::fmt;
use std::str::FromStr;

use crate::ErrorCode;
use crate::validate::validate_twin_value;

/// The code after `waiting:`, `failed:` or `rejected:`: a known [`ErrorCode`], or the raw string
/// of a code this version does not know (so a newer agent's states still parse).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StateCode {
    /// A code of this version.
    Known(ErrorCode),
    /// A code this version does not know, kept as written.
    Other(String),
}

impl StateCode {
    /// The known code, if it is one.
    pub fn known(&self) -> Option<ErrorCode> {
        match self {
            StateCode::Known(c) => Some(*c),
            StateCode::Other(_) => None,
        }
    }

    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            StateCode::Known(c) => c.as_str(),
            StateCode::Other(s) => s,
        }
    }
}

impl From<ErrorCode> for StateCode {
    fn from(c: ErrorCode) -> Self {
        StateCode::Known(c)
    }
}

impl fmt::Display for StateCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The firmware state of a device as reported in the `firmware-state` twin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FirmwareState {
    /// `idle`: nothing to do.
    Idle,
    /// `pending`: an intent was accepted and waits for its turn.
    Pending,
    /// `downloading:<0-100>`: percent downloaded.
    Downloading(u8),
    /// `verifying`: checking the artifact.
    Verifying,
    /// `flashing:<0-100>`: percent written.
    Flashing(u8),
    /// `confirming`: the new firmware is written, verified and the device reset; the agent waits for the device to
    /// prove it runs it (its `[devices.confirm]` check), or puts the previous firmware back. The twin's `firmware`
    /// and `firmware-version` still name the previous firmware.
    Confirming,
    /// `installed`: the intended firmware is installed and verified (and confirmed, where the device has a check).
    Installed,
    /// `waiting:<code>`: a transient error; retried with backoff.
    Waiting(StateCode),
    /// `failed:<code>`: the attempt failed for good.
    Failed(StateCode),
    /// `rejected:<code>`: the intent itself is unacceptable.
    Rejected(StateCode),
    /// A state name this version does not know (from a newer agent), kept as written.
    Unknown(String),
}

/// Why a string is not a `firmware-state` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirmwareStateError {
    /// Empty, or outside the twin value charset / length.
    #[error("firmware state {value:?} is not a valid twin value")]
    NotTwinValue {
        /// The value.
        value: String,
    },
    /// A known state with a missing, extra or malformed detail (e.g. `downloading:101`, `failed`).
    #[error("firmware state {value:?} has a malformed detail for its state")]
    BadDetail {
        /// The value.
        value: String,
    },
}

impl FirmwareStateError {
    /// The stable code: an unreadable report is an unexpected input, reported as `internal`.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Internal
    }
}

impl FirmwareState {
    /// `downloading:<pct>`, with `pct` capped at 100.
    pub fn downloading(pct: u8) -> Self {
        FirmwareState::Downloading(pct.min(100))
    }

    /// `flashing:<pct>`, with `pct` capped at 100.
    pub fn flashing(pct: u8) -> Self {
        FirmwareState::Flashing(pct.min(100))
    }

    /// `waiting:<code>`.
    pub fn waiting(code: ErrorCode) -> Self {
        FirmwareState::Waiting(code.into())
    }

    /// `failed:<code>`.
    pub fn failed(code: ErrorCode) -> Self {
        FirmwareState::Failed(code.into())
    }

    /// `rejected:<code>`.
    pub fn rejected(code: ErrorCode) -> Self {
        FirmwareState::Rejected(code.into())
    }

    /// `rejected:<code>` when [`ErrorCode::is_rejection`], else `failed:<code>`: how an attempt
    /// that ended with `code` is reported.
    pub fn settled(code: ErrorCode) -> Self {
        if code.is_rejection() {
            FirmwareState::rejected(code)
        } else {
            FirmwareState::failed(code)
        }
    }

    /// The code of a `failed` or `rejected` state: the attempt ended without the firmware.
    pub fn failure(&self) -> Option<&StateCode> {
        match self {
            FirmwareState::Failed(c) | FirmwareState::Rejected(c) => Some(c),
            _ => None,
        }
    }

    /// The error code of a `waiting`, `failed` or `rejected` state.
    pub fn code(&self) -> Option<&StateCode> {
        match self {
            FirmwareState::Waiting(c) | FirmwareState::Failed(c) | FirmwareState::Rejected(c) => {
                Some(c)
            }
            _ => None,
        }
    }

    /// The state name before any `:`, e.g. `downloading`.
    pub fn name(&self) -> &str {
        match self {
            FirmwareState::Idle => "idle",
            FirmwareState::Pending => "pending",
            FirmwareState::Downloading(_) => "downloading",
            FirmwareState::Verifying => "verifying",
            FirmwareState::Flashing(_) => "flashing",
            FirmwareState::Confirming => "confirming",
            FirmwareState::Installed => "installed",
            FirmwareState::Waiting(_) => "waiting",
            FirmwareState::Failed(_) => "failed",
            FirmwareState::Rejected(_) => "rejected",
            FirmwareState::Unknown(s) => s.split_once(':').map_or(s.as_str(), |(n, _)| n),
        }
    }
}

impl fmt::Display for FirmwareState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FirmwareState::Downloading(p) | FirmwareState::Flashing(p) => {
                write!(f, "{}:{p}", self.name())
            }
            FirmwareState::Waiting(c) | FirmwareState::Failed(c) | FirmwareState::Rejected(c) => {
                write!(f, "{}:{c}", self.name())
            }
            FirmwareState::Unknown(s) => f.write_str(s),
            _ => f.write_str(self.name()),
        }
    }
}

fn percent(detail: &str) -> Option<u8> {
    // Canonical decimal only, so that printing gives back the same string.
    let p: u8 = detail.parse().ok()?;
    (p <= 100 && p.to_string() == detail).then_some(p)
}

impl FromStr for FirmwareState {
    type Err = FirmwareStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !validate_twin_value(s) {
            return Err(FirmwareStateError::NotTwinValue {
                value: s.to_owned(),
            });
        }
        let bad = || FirmwareStateError::BadDetail {
            value: s.to_owned(),
        };
        let (name, detail) = match s.split_once(':') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        let code = |d: Option<&str>| match d {
            Some(d) if !d.is_empty() => Ok(d
                .parse::<ErrorCode>()
                .map_or_else(|_| StateCode::Other(d.to_owned()), StateCode::Known)),
            _ => Err(bad()),
        };
        let plain = |state: FirmwareState| {
            if detail.is_none() {
                Ok(state)
            } else {
                Err(bad())
            }
        };
        match name {
            "idle" => plain(FirmwareState::Idle),
            "pending" => plain(FirmwareState::Pending),
            "verifying" => plain(FirmwareState::Verifying),
            "confirming" => plain(FirmwareState::Confirming),
            "installed" => plain(FirmwareState::Installed),
            "downloading" => detail
                .and_then(percent)
                .map(FirmwareState::Downloading)
                .ok_or_else(bad),
            "flashing" => detail
                .and_then(percent)
                .map(FirmwareState::Flashing)
                .ok_or_else(bad),
            "waiting" => code(detail).map(FirmwareState::Waiting),
            "failed" => code(detail).map(FirmwareState::Failed),
            "rejected" => code(detail).map(FirmwareState::Rejected),
            _ => Ok(FirmwareState::Unknown(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for s in [
            "idle",
            "pending",
            "downloading:0",
            "downloading:100",
            "verifying",
            "flashing:42",
            "confirming",
            "installed",
            "waiting:registry-unreachable",
            "failed:flash-failed",
            "rejected:invalid-reference",
            "failed:brand-new-code",
            "rebooting",
            "rebooting:3",
        ] {
            assert_eq!(s.parse::<FirmwareState>().unwrap().to_string(), s);
        }
        assert_eq!(
            "rejected:chip-mismatch".parse::<FirmwareState>().unwrap(),
            FirmwareState::Rejected(StateCode::Known(ErrorCode::ChipMismatch))
        );
        assert_eq!(
            "failed:new-thing".parse::<FirmwareState>().unwrap().code(),
            Some(&StateCode::Other("new-thing".into()))
        );
        for bad in [
            "",
            "downloading",
            "downloading:101",
            "downloading:07",
            "flashing:x",
            "idle:1",
            "failed",
            "failed:",
            "waiting: x",
        ] {
            assert!(bad.parse::<FirmwareState>().is_err(), "{bad}");
        }
    }

    #[test]
    fn constructors_print_the_wire_strings() {
        assert_eq!(FirmwareState::downloading(42).to_string(), "downloading:42");
        assert_eq!(
            FirmwareState::downloading(250).to_string(),
            "downloading:100"
        );
        assert_eq!(FirmwareState::flashing(7).to_string(), "flashing:7");
        assert_eq!(
            FirmwareState::waiting(ErrorCode::RegistryUnreachable).to_string(),
            "waiting:registry-unreachable"
        );
        assert_eq!(
            FirmwareState::failed(ErrorCode::FlashFailed).to_string(),
            "failed:flash-failed"
        );
        assert_eq!(
            FirmwareState::rejected(ErrorCode::ChipMismatch).to_string(),
            "rejected:chip-mismatch"
        );
        assert_eq!(
            FirmwareState::settled(ErrorCode::TooLarge).to_string(),
            "rejected:too-large"
        );
        assert_eq!(
            FirmwareState::settled(ErrorCode::DigestMismatch).to_string(),
            "failed:digest-mismatch"
        );
        let failed = "failed:new-thing".parse::<FirmwareState>().unwrap();
        assert_eq!(failed.failure().map(StateCode::as_str), Some("new-thing"));
        assert_eq!(
            FirmwareState::waiting(ErrorCode::Timeout).failure(),
            None,
            "waiting is not settled"
        );
    }
}
