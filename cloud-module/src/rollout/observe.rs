//! What the planner sees of one Device: its `firmware` desired twin (value and the rollout's
//! marker metadata) and its reported `firmware` / `firmware-state` twins. Pure conversions.

use crate::crd::{Device, DeviceTwinStatus, TwinProperty};
use crate::decide::{FIRMWARE, FIRMWARE_STATE};

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
    /// `failed:<code>` or `rejected:<code>` reported after `since`.
    Failed(String),
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
        let state = self.reported_state.as_deref().unwrap_or("");
        if state == "installed" && self.reported_firmware.as_deref() == Some(pinned) {
            return Report::Installed;
        }
        let fresh = self
            .reported_state_ms
            .is_none_or(|ms| ms >= since.saturating_mul(1000));
        for prefix in ["failed:", "rejected:"] {
            if let Some(code) = state.strip_prefix(prefix)
                && fresh
            {
                let code = code.split(':').next().unwrap_or(code);
                return Report::Failed(if code.is_empty() {
                    "internal".to_owned()
                } else {
                    code.to_owned()
                });
            }
        }
        Report::Working
    }
}
