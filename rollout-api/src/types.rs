//! The `FirmwareRollout` custom resource (`twinflash.io/v1alpha1`, short name `fwr`): which
//! Devices, which firmware, how fast, when to stop; and the status the controller writes back.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A staged firmware update over the Devices a label selector picks in the rollout's namespace.
// kube's `printcolumn(...)` repeats `type_`/`priority` keys by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "twinflash.io",
    version = "v1alpha1",
    kind = "FirmwareRollout",
    plural = "firmwarerollouts",
    singular = "firmwarerollout",
    shortname = "fwr",
    category = "twinflash",
    namespaced,
    status = "FirmwareRolloutStatus",
    derive = "PartialEq",
    doc = "A staged firmware update over KubeEdge Devices: waves, maxInFlight, failure threshold, per-device timeout, pause, abort and rollback.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Firmware", type_ = "string", json_path = ".spec.firmware"),
    printcolumn(name = "Wave", type_ = "string", json_path = ".status.waveProgress"),
    printcolumn(
        name = "Progress",
        type_ = "string",
        description = "installed/total",
        json_path = ".status.progress"
    ),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(
        name = "Skipped",
        type_ = "integer",
        json_path = ".status.skipped",
        priority = "1"
    ),
    printcolumn(
        name = "Pinned",
        type_ = "string",
        json_path = ".status.pinned",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FirmwareRolloutSpec {
    /// Which Devices (in this namespace) the rollout updates.
    #[serde(default)]
    pub selector: DeviceSelector,
    /// The firmware: an OCI reference, tag or digest. A tag is pinned to its digest once, when the
    /// rollout starts (`status.pinned`); later edits of this field are ignored.
    pub firmware: String,
    /// How fast and when to stop.
    #[serde(default)]
    pub strategy: Strategy,
    /// Hold by hand: no new device is started while true (devices in flight finish).
    #[serde(default)]
    pub paused: bool,
    /// Abort by hand.
    #[serde(default)]
    pub abort: bool,
    /// On abort (automatic or by hand), give every changed Device its previous desired value back.
    #[serde(default)]
    pub rollback_on_abort: bool,
}

/// A `metav1.LabelSelector` (re-declared: the k8s-openapi types carry no JSON schema here).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSelector {
    /// Labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// A `metav1.LabelSelectorRequirement`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelectorRequirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values for `In` / `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Waves, concurrency, failure threshold and timeouts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// Wave sizes in order: an absolute count (`"1"`) or a percentage of the selected Devices
    /// (`"10%"`, rounded up). The last wave always takes every Device not yet started.
    #[serde(default = "default_waves")]
    pub waves: Vec<String>,
    /// At most this many Devices in progress at any time (at least 1).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// When the rollout aborts itself.
    #[serde(default)]
    pub failure_threshold: FailureThreshold,
    /// A Device still in progress this long after its desired value was set counts as failed
    /// with code `timeout`.
    #[serde(default = "default_device_timeout")]
    pub device_timeout_seconds: u64,
    /// Wait this long after a wave finished before starting the next.
    #[serde(default)]
    pub pause_between_waves_seconds: u64,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            waves: default_waves(),
            max_in_flight: default_max_in_flight(),
            failure_threshold: FailureThreshold::default(),
            device_timeout_seconds: default_device_timeout(),
            pause_between_waves_seconds: 0,
        }
    }
}

fn default_waves() -> Vec<String> {
    vec!["100%".to_owned()]
}

fn default_max_in_flight() -> u32 {
    10
}

fn default_device_timeout() -> u64 {
    3600
}

/// Abort criteria; a criterion left out never triggers. Failures are compared strictly: the
/// rollout aborts when a limit is *exceeded*.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureThreshold {
    /// Abort when more than this percentage of the finished Devices (installed + failed) failed,
    /// once at least `minSample` Devices finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_percent: Option<u32>,
    /// Finished Devices needed before `maxFailurePercent` is looked at.
    #[serde(default)]
    pub min_sample: u32,
    /// Abort when more than this many Devices failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u32>,
}

/// Where the rollout is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Not started: tag not pinned yet, refused (conflict, invalid spec) or nothing selected.
    #[default]
    Pending,
    /// Starting and watching Devices wave by wave.
    Progressing,
    /// Held by `spec.paused`.
    Paused,
    /// Every selected Device finished; terminal.
    Completed,
    /// Stopped by the threshold or by hand; terminal unless a rollback is asked for later.
    Aborted,
    /// Aborted and every changed Device got its previous desired value back; terminal.
    RolledBack,
}

impl Phase {
    /// The wire string (also the Event reason of the change to this phase).
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::Completed => "Completed",
            Phase::Aborted => "Aborted",
            Phase::RolledBack => "RolledBack",
        }
    }

    /// Whether nothing more happens (except a rollback asked for on an `Aborted` rollout).
    pub const fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Aborted | Phase::RolledBack)
    }
}

/// What the controller observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct FirmwareRolloutStatus {
    /// The phase.
    pub phase: Phase,
    /// `metadata.generation` of the spec last acted on.
    pub observed_generation: i64,
    /// The digest-pinned reference every Device gets (pinned once, at start).
    pub pinned: String,
    /// The current wave, 1-based (0 before the first).
    pub current_wave: u32,
    /// Number of waves.
    pub waves: u32,
    /// `current/waves`, for `kubectl get`.
    pub wave_progress: String,
    /// When the current wave started (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave_started_at: Option<i64>,
    /// When the current wave finished (Unix seconds), for `pauseBetweenWavesSeconds`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave_finished_at: Option<i64>,
    /// Devices selected (and failed ones no longer selected).
    pub total: u32,
    /// Selected, not started yet.
    pub pending: u32,
    /// Desired value set, no final report yet.
    pub in_progress: u32,
    /// Reported `installed` with the pinned reference.
    pub installed: u32,
    /// Reported `failed:`/`rejected:`, or timed out.
    pub failed: u32,
    /// Changed by hand during the rollout (left alone), or without a `firmware` property.
    pub skipped: u32,
    /// `installed/total`, for `kubectl get`.
    pub progress: String,
    /// The Devices in progress, with what is needed for the timeout and a rollback.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<InFlight>,
    /// Every Device that failed, with its error code (sticky: a failure stays counted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_devices: Vec<FailedDevice>,
    /// Devices changed by hand during the rollout (sticky: never touched again).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_devices: Vec<String>,
    /// `Progressing` and `Refused` conditions (metav1.Condition shape).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// A one-line summary of the last change.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A Device whose desired value the rollout set and that has not finished.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct InFlight {
    /// Device name.
    pub device: String,
    /// The wave that started it (1-based).
    pub wave: u32,
    /// When its desired value was set (Unix seconds).
    pub started_at: i64,
    /// Its desired value before (restored by a rollback).
    pub previous: String,
    /// Its `metadata.generation` after our patch: an older cached copy is stale, not a hand edit.
    pub generation: i64,
}

/// A Device that failed, and why.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct FailedDevice {
    /// Device name.
    pub device: String,
    /// The stable error code (`flash-failed`, `timeout`, ...).
    pub code: String,
    /// The wave it was in.
    pub wave: u32,
}

/// `metav1.Condition`, re-declared with a schema.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    /// `Progressing` or `Refused`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// PascalCase reason.
    pub reason: String,
    /// Human readable details (names the other rollout on a conflict).
    pub message: String,
    /// RFC 3339 time of the last status change.
    pub last_transition_time: String,
    /// The generation the condition was set for.
    pub observed_generation: i64,
}

/// A parsed wave size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveSize {
    /// This many Devices.
    Count(u32),
    /// This percentage of the selected Devices, rounded up (1-100).
    Percent(u32),
}

impl WaveSize {
    /// Parses `"3"` or `"10%"`; zero and percentages above 100 are refused.
    pub fn parse(s: &str) -> Result<WaveSize, String> {
        let t = s.trim();
        let (num, pct) = match t.strip_suffix('%') {
            Some(n) => (n.trim(), true),
            None => (t, false),
        };
        let n: u32 = num
            .parse()
            .map_err(|_| format!("wave size {s:?} is neither a count nor a percentage"))?;
        match (pct, n) {
            (_, 0) => Err(format!("wave size {s:?} is zero")),
            (true, 101..) => Err(format!("wave size {s:?} is above 100%")),
            (true, _) => Ok(WaveSize::Percent(n)),
            (false, _) => Ok(WaveSize::Count(n)),
        }
    }

    /// The number of Devices out of `total`.
    pub fn of(self, total: u32) -> u32 {
        match self {
            WaveSize::Count(n) => n,
            WaveSize::Percent(p) => {
                let v = (u64::from(total) * u64::from(p)).div_ceil(100);
                u32::try_from(v).unwrap_or(u32::MAX)
            }
        }
    }
}

impl Strategy {
    /// The parsed waves (an empty list is one wave of everything) or the first invalid entry.
    pub fn wave_sizes(&self) -> Result<Vec<WaveSize>, String> {
        if self.waves.is_empty() {
            return Ok(vec![WaveSize::Percent(100)]);
        }
        self.waves.iter().map(|w| WaveSize::parse(w)).collect()
    }
}

impl FirmwareRolloutSpec {
    /// Why this spec cannot run, if it cannot.
    pub fn validate(&self) -> Result<Vec<WaveSize>, String> {
        if self.firmware.trim().is_empty() {
            return Err("spec.firmware is empty".into());
        }
        if self.strategy.max_in_flight == 0 {
            return Err("spec.strategy.maxInFlight must be at least 1".into());
        }
        if self
            .strategy
            .failure_threshold
            .max_failure_percent
            .is_some_and(|p| p > 100)
        {
            return Err("spec.strategy.failureThreshold.maxFailurePercent is above 100".into());
        }
        self.selector.to_selector()?;
        self.strategy.wave_sizes()
    }
}

impl DeviceSelector {
    /// As kube's matcher (also renders the `labelSelector` query string).
    pub fn to_selector(&self) -> Result<kube::core::Selector, String> {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
            LabelSelector, LabelSelectorRequirement,
        };
        let ls = LabelSelector {
            match_labels: (!self.match_labels.is_empty()).then(|| self.match_labels.clone()),
            match_expressions: (!self.match_expressions.is_empty()).then(|| {
                self.match_expressions
                    .iter()
                    .map(|r| LabelSelectorRequirement {
                        key: r.key.clone(),
                        operator: r.operator.clone(),
                        values: (!r.values.is_empty()).then(|| r.values.clone()),
                    })
                    .collect()
            }),
        };
        kube::core::Selector::try_from(ls).map_err(|e| format!("invalid selector: {e}"))
    }

    /// Whether a Device with `labels` is selected (an invalid selector selects nothing).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        use kube::core::SelectorExt;
        self.to_selector().is_ok_and(|s| s.matches(labels))
    }
}
