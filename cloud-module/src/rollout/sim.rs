//! A simulated fleet for the planner's property tests and the benchmark: Devices that install,
//! fail, hang or get edited by hand some time after their desired value changed, with JSON-patch
//! semantics for the planner's patches (a `test` on the old value, a generation bump).

use std::collections::BTreeMap;

use super::observe::{META_ROLLOUT, ObservedDevice};
use super::plan::{DesiredPatch, Pin, Plan, PlanInput, plan};
use super::types::{FailureThreshold, FirmwareRolloutSpec, FirmwareRolloutStatus, Strategy};
use crate::crd::TwinProperty;

/// The strategy of the rollout benchmarks (`bench_rollout`, `bench_rollout_api`): waves of 1 %,
/// 10 %, 40 % and the rest, 500 in flight, abort above 5 % failures once 100 finished, 900 s per
/// Device.
pub fn bench_strategy() -> Strategy {
    Strategy {
        waves: vec!["1%".into(), "10%".into(), "40%".into(), "100%".into()],
        max_in_flight: 500,
        failure_threshold: FailureThreshold {
            max_failure_percent: Some(5),
            min_sample: 100,
            max_failures: None,
        },
        device_timeout_seconds: 900,
        pause_between_waves_seconds: 0,
    }
}

/// What a simulated Device does once its desired value is the rollout's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Reports `installed` after this many seconds.
    Install(i64),
    /// Reports `failed:<code>` after this many seconds.
    Fail(String, i64),
    /// Reports `downloading:50` forever.
    Hang,
    /// Someone sets another desired value by hand this many seconds after the rollout did.
    HandEdit(i64),
}

/// One simulated Device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    /// What the planner sees.
    pub observed: ObservedDevice,
    /// The desired value before the rollout.
    pub original: String,
    /// What it does.
    pub behaviour: Behaviour,
    /// When it becomes selected (joins the selector), Unix seconds.
    pub joins_at: i64,
    /// When the rollout's value reached it.
    pub changed_at: Option<i64>,
}

/// The value a hand edit writes.
pub const HAND_VALUE: &str = "registry.local:5000/fw/hand:edited";

/// A simulated fleet and clock.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The Devices, by name.
    pub devices: BTreeMap<String, SimDevice>,
    /// Now, Unix seconds.
    pub now: i64,
}

impl Fleet {
    /// `n` Devices `dev-00000`.. with the `firmware` property at index 0 and value `original`;
    /// `behaviour(i)` and `joins(i)` (join time) per Device.
    pub fn new(
        n: usize,
        original: &str,
        mut behaviour: impl FnMut(usize) -> Behaviour,
        mut joins: impl FnMut(usize) -> i64,
    ) -> Fleet {
        let devices = (0..n)
            .map(|i| {
                let name = format!("dev-{i:05}");
                let observed = ObservedDevice {
                    name: name.clone(),
                    generation: 1,
                    index: Some(0),
                    desired: TwinProperty {
                        value: original.to_owned(),
                        metadata: BTreeMap::from([("type".to_owned(), "string".to_owned())]),
                    },
                    ..ObservedDevice::default()
                };
                let sim = SimDevice {
                    observed,
                    original: original.to_owned(),
                    behaviour: behaviour(i),
                    joins_at: joins(i),
                    changed_at: None,
                };
                (name, sim)
            })
            .collect();
        Fleet {
            devices,
            now: 1_000_000,
        }
    }

    /// The Devices selected now.
    pub fn visible(&self) -> Vec<ObservedDevice> {
        self.devices
            .values()
            .filter(|d| d.joins_at <= self.now)
            .map(|d| d.observed.clone())
            .collect()
    }

    /// Applies a patch as the API server would; the new generation, or `None` when a `test` op
    /// fails.
    pub fn apply(&mut self, p: &DesiredPatch) -> Option<i64> {
        let d = self.devices.get_mut(&p.device)?;
        if d.observed.index != Some(p.index)
            || (!p.expected.is_empty() && d.observed.desired.value != p.expected)
        {
            return None;
        }
        let was = d.observed.desired.value.clone();
        d.observed.desired = p.desired.clone();
        d.observed.generation += 1;
        if p.desired.metadata.contains_key(META_ROLLOUT) && was != p.desired.value {
            d.changed_at = Some(self.now);
        } else if p.desired.metadata.contains_key(META_ROLLOUT) {
            d.changed_at.get_or_insert(self.now);
        } else {
            d.changed_at = None;
        }
        Some(d.observed.generation)
    }

    /// Applies every patch of `plan` and records the outcome in its status (as the reconciler).
    pub fn apply_plan(&mut self, plan: &mut Plan) {
        for p in plan.patches.clone() {
            let g = self.apply(&p);
            if p.kind == super::plan::PatchKind::Start {
                plan.applied(&p.device, g);
            }
        }
    }

    /// Advances the clock and lets every changed Device act.
    pub fn tick(&mut self, secs: i64, pinned: &str) {
        self.now += secs;
        let now = self.now;
        for d in self.devices.values_mut() {
            let Some(at) = d.changed_at else { continue };
            if d.observed.desired.value != pinned {
                continue;
            }
            let o = &mut d.observed;
            match &d.behaviour {
                Behaviour::Install(after) if now >= at + after => {
                    o.reported_firmware = Some(pinned.to_owned());
                    o.reported_state = Some("installed".into());
                    o.reported_state_ms = Some(now * 1000);
                }
                Behaviour::Fail(code, after) if now >= at + after => {
                    o.reported_state = Some(format!("failed:{code}"));
                    o.reported_state_ms = Some(now * 1000);
                }
                Behaviour::HandEdit(after) if now >= at + after => {
                    o.desired.value = HAND_VALUE.to_owned();
                    o.generation += 1;
                    d.changed_at = None;
                }
                Behaviour::Hang => {
                    o.reported_state = Some("downloading:50".into());
                    o.reported_state_ms = Some(now * 1000);
                }
                _ => {
                    o.reported_state = Some("pending".into());
                    o.reported_state_ms = Some(now * 1000);
                }
            }
        }
    }

    /// One reconcile: plan over the visible Devices, apply the patches.
    pub fn step(
        &mut self,
        name: &str,
        spec: &FirmwareRolloutSpec,
        status: Option<&FirmwareRolloutStatus>,
        pin: &str,
    ) -> Plan {
        let devices = self.visible();
        let mut p = plan(PlanInput {
            name,
            generation: 1,
            spec,
            status,
            devices: &devices,
            pin: Pin::Ready(pin),
            conflict: None,
            now: self.now,
        });
        self.apply_plan(&mut p);
        p
    }
}
