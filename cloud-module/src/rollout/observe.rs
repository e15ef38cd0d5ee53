//! What the planner sees of one Device: its `firmware` desired twin (value and the rollout's
//! marker metadata) and its reported `firmware` / `firmware-state` twins. Pure conversions.

use mqtt_schema::firmware::{TWIN_FIRMWARE as FIRMWARE, TWIN_FIRMWARE_STATE as FIRMWARE_STATE};
use mqtt_schema::{FirmwareState, StateCode};

use crate::crd::{Device, DeviceTwinStatus, TwinProperty};

/// Desired-twin metadata key: the rollout that set this value.
pub const META_ROLLOUT: &str = "twinflash.io/rollout";
/// Desired-twin metadata key: the value before the rollout set it (restored by a rollback).
pub const META_PREVIOUS: &str = "twinflash.io/previous";
/// Desired-twin metadata key: the wave that set it.
pub const META_WAVE: &str = "twinflash.io/wave";
/// Desired-twin metadata key: when it was set (Unix seconds).
pub const META_STARTED: &str = "twinflash.io/started";
/// Every key the rollout adds (and a rollback removes).
pub const ROLLOUT_KEYS: [&str; 4] = [META_ROLLOUT, META_PREVIOUS, META_WAVE, META_STARTED];

/// One selected Device as the planner sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedDevice {
    /// Device name (the namespace is the rollout's).
    pub name: String,
    /// `metadata.generation` (0 when absent).
    pub generation: i64,
    /// Index of the `firmware` property in `spec.properties`; `None` when not declared.
    pub index: Option<usize>,
    /// The `firmware` desired twin (value and metadata).
    pub desired: TwinProperty,
    /// Reported `firmware` value.
    pub reported_firmware: Option<String>,
    /// Reported `firmware-state` value.
    pub reported_state: Option<String>,
    /// Timestamp (Unix ms) of the `firmware-state` report, when KubeEdge recorded one.
    pub reported_state_ms: Option<i64>,
}

/// What a Device's reports say about the pinned reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// `firmware` == pinned and `firmware-state` == `installed`.
    Installed,
    /// `failed:<code>` or `rejected:<code>` reported after `since`: the code (one of
    /// [`mqtt_schema::ErrorCode`], or a newer agent's code kept as written).
    Failed(StateCode),
    /// Anything else.
    Working,
}

impl ObservedDevice {
    /// From a Device and its twins (`device.status` before KubeEdge 1.23, the DeviceStatus
    /// object's status from 1.23: pass it as `status`).
    pub fn from_device(device: &Device, status: Option<&DeviceTwinStatus>) -> ObservedDevice {
        let index = device
            .spec
            .properties
            .iter()
            .position(|p| p.name == FIRMWARE);
        let status = status.or(device.status.as_ref());
        let state = status.and_then(|s| s.twin(FIRMWARE_STATE));
        ObservedDevice {
            name: device.metadata.name.clone().unwrap_or_default(),
            generation: device.metadata.generation.unwrap_or(0),
            index,
            desired: index
                .and_then(|i| device.spec.properties.get(i))
                .map(|p| p.desired.clone())
                .unwrap_or_default(),
            reported_firmware: status
                .and_then(|s| s.twin(FIRMWARE))
                .map(|t| t.reported.value.clone())
                .filter(|v| !v.is_empty()),
            reported_state: state
                .map(|t| t.reported.value.clone())
                .filter(|v| !v.is_empty()),
            reported_state_ms: state
                .and_then(|t| t.reported.metadata.get("timestamp"))
                .and_then(|t| t.parse().ok()),
        }
    }

    /// The rollout whose marker the desired twin carries.
    pub fn marker(&self) -> Option<&str> {
        self.desired.metadata.get(META_ROLLOUT).map(String::as_str)
    }

    /// The previous value recorded in the marker metadata.
    pub fn marked_previous(&self) -> Option<&str> {
        self.desired.metadata.get(META_PREVIOUS).map(String::as_str)
    }

    /// When the marker says the value was set (Unix seconds).
    pub fn marked_started(&self) -> Option<i64> {
        self.desired
            .metadata
            .get(META_STARTED)
            .and_then(|s| s.parse().ok())
    }

    /// The wave the marker names.
    pub fn marked_wave(&self) -> Option<u32> {
        self.desired
            .metadata
            .get(META_WAVE)
            .and_then(|s| s.parse().ok())
    }

    /// What the reports say about `pinned`, counting failures reported at or after `since`
    /// (Unix seconds; a report without timestamp counts).
    pub fn report(&self, pinned: &str, since: i64) -> Report {
        // An unreadable state (e.g. from a broken agent) says nothing: the device is working
        // until it reports something readable or the progress deadline passes.
        let state = self
            .reported_state
            .as_deref()
            .and_then(|s| s.parse::<FirmwareState>().ok());
        if state == Some(FirmwareState::Installed)
            && self.reported_firmware.as_deref() == Some(pinned)
        {
            return Report::Installed;
        }
        let fresh = self
            .reported_state_ms
            .is_none_or(|ms| ms >= since.saturating_mul(1000));
        match state.as_ref().and_then(FirmwareState::failure) {
            Some(code) if fresh => Report::Failed(code.clone()),
            _ => Report::Working,
        }
    }
}

#[cfg(test)]
mod tests {
    use mqtt_schema::ErrorCode;

    use super::*;

    const PINNED: &str =
        "r.local/fw/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn reporting(firmware: &str, state: &str, at_ms: Option<i64>) -> ObservedDevice {
        ObservedDevice {
            name: "d".into(),
            reported_firmware: Some(firmware.into()),
            reported_state: Some(state.into()),
            reported_state_ms: at_ms,
            ..ObservedDevice::default()
        }
    }

    #[test]
    fn reports_are_read_as_firmware_states() {
        let known = |c| Report::Failed(StateCode::Known(c));
        let cases = [
            ("installed", Report::Installed),
            ("failed:flash-failed", known(ErrorCode::FlashFailed)),
            ("rejected:chip-mismatch", known(ErrorCode::ChipMismatch)),
            // A release that did not confirm (reverted, or the revert failed) fails the rollout like a flash.
            ("failed:boot-failed", known(ErrorCode::BootFailed)),
            ("failed:version-mismatch", known(ErrorCode::VersionMismatch)),
            ("failed:revert-failed", known(ErrorCode::RevertFailed)),
            // Confirming: the device has not proven it runs the release yet.
            ("confirming", Report::Working),
            // A newer agent's code is kept as written.
            (
                "failed:brand-new",
                Report::Failed(StateCode::Other("brand-new".into())),
            ),
            ("downloading:50", Report::Working),
            ("waiting:registry-unreachable", Report::Working),
            // Not a firmware state: says nothing yet.
            ("failed:", Report::Working),
            ("installed:3", Report::Working),
        ];
        for (state, want) in cases {
            assert_eq!(
                reporting(PINNED, state, None).report(PINNED, 0),
                want,
                "{state}"
            );
        }
        // Installed, but another firmware: still working on this one.
        assert_eq!(
            reporting("r.local/fw/other", "installed", None).report(PINNED, 0),
            Report::Working
        );
        // A failure reported before the device's wave started is stale.
        assert_eq!(
            reporting(PINNED, "failed:timeout", Some(9_999)).report(PINNED, 10),
            Report::Working
        );
    }
}
