//! The pure rollout planner: from the spec, the last status, the selected Devices and the clock,
//! which desired values to set (or restore), the new status and the Events to emit. No I/O; the
//! reconciler gathers the input and applies the [`Plan`].

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::observe::{
    META_PREVIOUS, META_ROLLOUT, META_STARTED, META_WAVE, ObservedDevice, ROLLOUT_KEYS, Report,
};
use super::status::{Counts, finish_status};
use super::types::{
    FailedDevice, FailureThreshold, FirmwareRolloutSpec, FirmwareRolloutStatus, InFlight, Phase,
    WaveSize,
};
use crate::crd::TwinProperty;

/// Error code of a Device that stayed in progress past `deviceTimeoutSeconds`.
pub const TIMEOUT_CODE: &str = "timeout";

/// The digest the rollout installs, as far as the reconciler got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin<'a> {
    /// Pinned (from the status, or resolved now).
    Ready(&'a str),
    /// The firmware cannot be pinned (not found, not a firmware artifact, invalid reference).
    Failed(&'a str),
    /// Not resolved (the reconciler skips the registry while the rollout is refused).
    NotYet,
}

/// Everything [`plan`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// The rollout's name (the marker written on Devices).
    pub name: &'a str,
    /// `metadata.generation` of the rollout.
    pub generation: i64,
    /// The spec.
    pub spec: &'a FirmwareRolloutSpec,
    /// The status last written.
    pub status: Option<&'a FirmwareRolloutStatus>,
    /// The Devices the selector picks now (any order).
    pub devices: &'a [ObservedDevice],
    /// The pinned firmware.
    pub pin: Pin<'a>,
    /// An older active rollout selecting one of the same Devices.
    pub conflict: Option<&'a str>,
    /// Now, Unix seconds.
    pub now: i64,
}

/// What to change on one Device: `spec.properties[index].desired`, if its value is still
/// `expected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPatch {
    /// Device name.
    pub device: String,
    /// Index of the `firmware` property.
    pub index: usize,
    /// The value the Device must still have (a hand edit in between makes the patch fail).
    pub expected: String,
    /// The new desired twin (value and metadata).
    pub desired: TwinProperty,
    /// Start or rollback.
    pub kind: PatchKind,
}

/// Why a Device is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// Set the pinned firmware (with the rollout's marker).
    Start,
    /// Give the previous value back.
    Rollback,
}

impl DesiredPatch {
    /// The RFC 6902 JSON patch: `test` the property name and old value, `replace` the desired twin.
    pub fn json_patch(&self) -> Value {
        let base = format!("/spec/properties/{}", self.index);
        let mut ops = vec![
            json!({"op": "test", "path": format!("{base}/name"), "value": mqtt_schema::firmware::TWIN_FIRMWARE}),
        ];
        if !self.expected.is_empty() {
            ops.push(json!({"op": "test", "path": format!("{base}/desired/value"), "value": self.expected}));
        }
        ops.push(
            json!({"op": "replace", "path": format!("{base}/desired"), "value": self.desired}),
        );
        Value::Array(ops)
    }
}

/// An Event to record on the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEvent {
    /// Warning (abort, rollback, refusal) or Normal.
    pub warning: bool,
    /// PascalCase reason: the new phase, `WaveStarted`, `WaveFinished`, `Refused`.
    pub reason: String,
    /// Human readable note.
    pub note: String,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Device patches, in Device name order.
    pub patches: Vec<DesiredPatch>,
    /// The status to write.
    pub status: FirmwareRolloutStatus,
    /// Events to emit, in order.
    pub events: Vec<PlanEvent>,
}

impl Plan {
    /// Records the outcome of applying the patch of `device`: the Device's generation after a
    /// successful start (so an older cached copy is recognised as stale), or `None` when the
    /// start was refused (a concurrent edit failed the `test` op: the Device is pending again).
    pub fn applied(&mut self, device: &str, generation: Option<i64>) {
        let st = &mut self.status;
        match generation {
            Some(g) => {
                if let Some(e) = st.in_flight.iter_mut().find(|e| e.device == device) {
                    e.generation = g;
                }
            }
            None => {
                let before = st.in_flight.len();
                st.in_flight.retain(|e| e.device != device);
                if st.in_flight.len() < before {
                    st.in_progress = st.in_progress.saturating_sub(1);
                    st.pending = st.pending.saturating_add(1);
                }
            }
        }
    }
}

/// Whether `failed` failures out of `failed + installed` finished Devices cross `t` (strictly).
pub fn threshold_crossed(t: &FailureThreshold, failed: u32, installed: u32) -> bool {
    if t.max_failures.is_some_and(|m| failed > m) {
        return true;
    }
    let sample = u64::from(failed) + u64::from(installed);
    t.max_failure_percent.is_some_and(|p| {
        sample > 0
            && sample >= u64::from(t.min_sample)
            && u64::from(failed) * 100 > u64::from(p) * sample
    })
}

/// Devices that may be started by the end of wave `k` (1-based) out of `total`; the last wave
/// takes everything.
pub fn wave_cap(sizes: &[WaveSize], k: u32, total: u32) -> u32 {
    let k = usize::try_from(k).unwrap_or(usize::MAX);
    if k >= sizes.len() {
        return total;
    }
    sizes
        .iter()
        .take(k)
        .fold(0u32, |acc, s| acc.saturating_add(s.of(total)))
        .min(total)
}

/// The pure planner.
pub fn plan(input: PlanInput<'_>) -> Plan {
    let mut st = input.status.cloned().unwrap_or_default();
    let before = st.phase;
    let mut out = Plan {
        patches: Vec::new(),
        status: FirmwareRolloutStatus::default(),
        events: Vec::new(),
    };
    let rollback_wanted = input.spec.rollback_on_abort;
    if matches!(st.phase, Phase::Completed | Phase::RolledBack)
        || (st.phase == Phase::Aborted && !rollback_wanted)
    {
        out.status = st;
        return out;
    }
    st.observed_generation = input.generation;
    let refuse = |mut st: FirmwareRolloutStatus, reason: &str, message: String| {
        st.phase = Phase::Pending;
        st.message = message.clone();
        finish_status(
            &mut st,
            None,
            input.now,
            input.generation,
            Some((reason, &message)),
        );
        let events = if input.status.map(|s| &s.message) == Some(&message) {
            Vec::new()
        } else {
            vec![PlanEvent {
                warning: true,
                reason: "Refused".into(),
                note: message,
            }]
        };
        Plan {
            patches: Vec::new(),
            status: st,
            events,
        }
    };
    let sizes = match input.spec.validate() {
        Ok(s) => s,
        Err(m) if st.current_wave == 0 => return refuse(st, "InvalidSpec", m),
        // A started rollout keeps its last valid plan shape: one more wave of everything.
        Err(_) => vec![WaveSize::Percent(100)],
    };
    if st.current_wave == 0
        && let Some(other) = input.conflict
    {
        return refuse(
            st,
            "ConflictingRollout",
            format!(
                "FirmwareRollout {other} (older, still active) selects some of the same Devices"
            ),
        );
    }
    let pinned = match (st.pinned.is_empty(), input.pin) {
        (false, _) => st.pinned.clone(),
        (true, Pin::Ready(p)) => p.to_owned(),
        (true, Pin::Failed(m)) => {
            return refuse(st, "ArtifactUnavailable", m.to_owned());
        }
        (true, Pin::NotYet) => {
            out.status = st;
            return out;
        }
    };
    st.pinned = pinned.clone();

    let mut devices: Vec<&ObservedDevice> = input.devices.iter().collect();
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    let mut sorted = classify(&input, &st, &devices, &pinned);
    let timeout = i64::try_from(input.spec.strategy.device_timeout_seconds).unwrap_or(i64::MAX);
    sorted.apply_timeouts(input.now, timeout);

    let counts = |s: &Sorted<'_>| Counts {
        pending: count(s.pending.len()),
        in_progress: count(s.in_flight.len()),
        installed: s.installed,
        failed: count(s.failed.len()),
        skipped: count(s.skipped.len()).saturating_add(s.no_property),
    };

    let crossed = threshold_crossed(
        &input.spec.strategy.failure_threshold,
        count(sorted.failed.len()),
        sorted.installed,
    );
    if st.phase == Phase::Aborted || input.spec.abort || crossed {
        if st.phase != Phase::Aborted {
            st.message = if input.spec.abort {
                "aborted by hand (spec.abort)".to_owned()
            } else {
                format!(
                    "aborted: {} failed of {} finished crosses the failure threshold",
                    sorted.failed.len(),
                    sorted.installed.saturating_add(count(sorted.failed.len()))
                )
            };
            st.phase = Phase::Aborted;
        }
        if rollback_wanted {
            out.patches = rollback_patches(&input, &devices, &pinned);
            st.phase = Phase::RolledBack;
            st.message = format!(
                "{}; rolled back {} Device(s) to their previous desired value",
                st.message.split("; rolled back").next().unwrap_or_default(),
                out.patches.len()
            );
        }
    } else if input.spec.paused {
        st.phase = Phase::Paused;
        st.message = "paused by hand (spec.paused)".into();
    } else {
        st.phase = Phase::Progressing;
        let total = counts(&sorted).total();
        if total == 0 && st.current_wave == 0 {
            st.phase = Phase::Pending;
            st.message = "no Device matches the selector".into();
        } else {
            progress(&input, &mut st, &sizes, &mut sorted, &pinned, &mut out);
        }
    }

    let c = counts(&sorted);
    st.in_flight = sorted.in_flight;
    st.failed_devices = sorted.failed;
    st.skipped_devices = sorted.skipped;
    st.waves = count(sizes.len());
    finish_status(&mut st, Some(c), input.now, input.generation, None);
    if st.phase != before {
        out.events.insert(
            0,
            PlanEvent {
                warning: matches!(st.phase, Phase::Aborted | Phase::RolledBack),
                reason: st.phase.as_str().to_owned(),
                note: phase_note(&st),
            },
        );
    }
    out.status = st;
    out
}

fn phase_note(st: &FirmwareRolloutStatus) -> String {
    match st.phase {
        Phase::Progressing | Phase::Completed => format!(
            "{} of {} installed, {} failed, {} skipped ({})",
            st.installed, st.total, st.failed, st.skipped, st.pinned
        ),
        _ => st.message.clone(),
    }
}

/// Starts Devices in the current wave, advances waves, completes.
fn progress(
    input: &PlanInput<'_>,
    st: &mut FirmwareRolloutStatus,
    sizes: &[WaveSize],
    sorted: &mut Sorted<'_>,
    pinned: &str,
    out: &mut Plan,
) {
    let waves = count(sizes.len());
    let max_in_flight = input.spec.strategy.max_in_flight.max(1);
    let pause = i64::try_from(input.spec.strategy.pause_between_waves_seconds).unwrap_or(i64::MAX);
    if st.current_wave == 0 {
        start_wave(st, 1, waves, input.now, sorted, sizes, out);
    }
    loop {
        let total = sorted.total();
        let k = st.current_wave;
        let cap = wave_cap(sizes, k, total);
        let started = total.saturating_sub(count(sorted.pending.len()));
        let room = cap
            .saturating_sub(started)
            .min(max_in_flight.saturating_sub(count(sorted.in_flight.len())));
        let n = usize::try_from(room)
            .unwrap_or(usize::MAX)
            .min(sorted.pending.len());
        for d in sorted.pending.drain(..n) {
            let Some(index) = d.index else { continue };
            let mut metadata = d.desired.metadata.clone();
            metadata.insert(META_ROLLOUT.into(), input.name.to_owned());
            metadata.insert(META_PREVIOUS.into(), d.desired.value.clone());
            metadata.insert(META_WAVE.into(), k.to_string());
            metadata.insert(META_STARTED.into(), input.now.to_string());
            out.patches.push(DesiredPatch {
                device: d.name.clone(),
                index,
                expected: d.desired.value.clone(),
                desired: TwinProperty {
                    value: pinned.to_owned(),
                    metadata,
                },
                kind: PatchKind::Start,
            });
            sorted.in_flight.push(InFlight {
                device: d.name.clone(),
                wave: k,
                started_at: input.now,
                previous: d.desired.value.clone(),
                generation: d.generation,
            });
        }
        if !sorted.in_flight.is_empty() {
            st.wave_finished_at = None;
            break;
        }
        // Wave k is over: every Device it may start was started and none is in flight. Said once, when first seen
        // (`waveFinishedAt` is kept in the status until the next wave starts).
        if st.wave_finished_at.is_none() {
            out.events.push(PlanEvent {
                warning: false,
                reason: "WaveFinished".into(),
                note: format!(
                    "wave {k}/{waves} finished: {} installed, {} failed of {total} Device(s) so far",
                    sorted.installed,
                    sorted.failed.len()
                ),
            });
        }
        if sorted.pending.is_empty() {
            st.phase = Phase::Completed;
            st.message = format!("completed: every selected Device finished with {pinned}");
            break;
        }
        if k >= waves {
            break; // unreachable in practice: the last wave takes every pending Device
        }
        let done_at = *st.wave_finished_at.get_or_insert(input.now);
        if input.now < done_at.saturating_add(pause) {
            st.message = format!("wave {k}/{waves} finished; next wave after the pause");
            break;
        }
        start_wave(
            st,
            k.saturating_add(1),
            waves,
            input.now,
            sorted,
            sizes,
            out,
        );
    }
}

fn start_wave(
    st: &mut FirmwareRolloutStatus,
    k: u32,
    waves: u32,
    now: i64,
    sorted: &Sorted<'_>,
    sizes: &[WaveSize],
    out: &mut Plan,
) {
    st.current_wave = k;
    st.wave_started_at = Some(now);
    st.wave_finished_at = None;
    let total = sorted.total();
    let size =
        wave_cap(sizes, k, total).saturating_sub(wave_cap(sizes, k.saturating_sub(1), total));
    st.message = format!("wave {k}/{waves} started");
    out.events.push(PlanEvent {
        warning: false,
        reason: "WaveStarted".into(),
        note: format!("wave {k}/{waves} started: up to {size} of {total} Device(s)"),
    });
}

/// Rollback patches: every selected Device that still carries this rollout's value gets its
/// previous value back (metadata without the rollout's keys).
fn rollback_patches(
    input: &PlanInput<'_>,
    devices: &[&ObservedDevice],
    pinned: &str,
) -> Vec<DesiredPatch> {
    let in_flight: BTreeMap<&str, &InFlight> = input
        .status
        .map(|s| s.in_flight.iter().map(|e| (e.device.as_str(), e)).collect())
        .unwrap_or_default();
    let mut patches = Vec::new();
    for d in devices {
        let Some(index) = d.index else { continue };
        let entry = in_flight.get(d.name.as_str());
        let stale = entry.is_some_and(|e| d.generation < e.generation);
        let ours = d.marker() == Some(input.name) && d.desired.value == pinned;
        if !(ours || stale) {
            continue;
        }
        let previous = match (entry, d.marked_previous()) {
            (Some(e), _) => e.previous.clone(),
            (None, Some(p)) => p.to_owned(),
            (None, None) => continue,
        };
        if previous == pinned {
            continue;
        }
        let mut metadata = d.desired.metadata.clone();
        for k in ROLLOUT_KEYS {
            metadata.remove(k);
        }
        patches.push(DesiredPatch {
            device: d.name.clone(),
            index,
            expected: pinned.to_owned(),
            desired: TwinProperty {
                value: previous,
                metadata,
            },
            kind: PatchKind::Rollback,
        });
    }
    patches
}

/// The selected Devices sorted by state.
struct Sorted<'d> {
    pending: Vec<&'d ObservedDevice>,
    in_flight: Vec<InFlight>,
    installed: u32,
    failed: Vec<FailedDevice>,
    skipped: Vec<String>,
    no_property: u32,
}

impl Sorted<'_> {
    fn total(&self) -> u32 {
        count(self.pending.len())
            .saturating_add(count(self.in_flight.len()))
            .saturating_add(self.installed)
            .saturating_add(count(self.failed.len()))
            .saturating_add(count(self.skipped.len()))
            .saturating_add(self.no_property)
    }

    fn apply_timeouts(&mut self, now: i64, timeout: i64) {
        let (late, ok): (Vec<InFlight>, Vec<InFlight>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|e| now.saturating_sub(e.started_at) > timeout);
        self.in_flight = ok;
        self.failed.extend(late.into_iter().map(|e| FailedDevice {
            device: e.device,
            code: TIMEOUT_CODE.into(),
            wave: e.wave,
        }));
    }
}

fn classify<'d>(
    input: &PlanInput<'_>,
    st: &FirmwareRolloutStatus,
    devices: &[&'d ObservedDevice],
    pinned: &str,
) -> Sorted<'d> {
    let failed_before: BTreeSet<&str> = st
        .failed_devices
        .iter()
        .map(|f| f.device.as_str())
        .collect();
    let skipped_before: BTreeSet<&str> = st.skipped_devices.iter().map(String::as_str).collect();
    let in_flight: BTreeMap<&str, &InFlight> = st
        .in_flight
        .iter()
        .map(|e| (e.device.as_str(), e))
        .collect();
    let mut s = Sorted {
        pending: Vec::new(),
        in_flight: Vec::new(),
        installed: 0,
        failed: st.failed_devices.clone(),
        skipped: st.skipped_devices.clone(),
        no_property: 0,
    };
    let mut seen = BTreeSet::new();
    for d in devices {
        let name = d.name.as_str();
        if !seen.insert(name) || failed_before.contains(name) || skipped_before.contains(name) {
            continue;
        }
        if d.index.is_none() {
            s.no_property = s.no_property.saturating_add(1);
            continue;
        }
        let (entry, wave) = match in_flight.get(name) {
            Some(e) if d.generation < e.generation => {
                // A cached copy older than our own patch: still in progress.
                s.in_flight.push((*e).clone());
                continue;
            }
            Some(e) => ((*e).clone(), e.wave),
            None if d.marker() == Some(input.name) => {
                let wave = d.marked_wave().unwrap_or(st.current_wave);
                let e = InFlight {
                    device: d.name.clone(),
                    wave,
                    started_at: d.marked_started().unwrap_or(input.now),
                    previous: d.marked_previous().unwrap_or_default().to_owned(),
                    generation: d.generation,
                };
                (e, wave)
            }
            None => {
                s.pending.push(*d);
                continue;
            }
        };
        if d.desired.value != pinned {
            s.skipped.push(d.name.clone());
            continue;
        }
        match d.report(pinned, entry.started_at) {
            Report::Installed => s.installed = s.installed.saturating_add(1),
            Report::Failed(code) => s.failed.push(FailedDevice {
                device: d.name.clone(),
                code: code.to_string(),
                wave,
            }),
            Report::Working => s.in_flight.push(entry),
        }
    }
    s
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "plan_props.rs"]
mod props;
