//! Properties of the rollout planner over random simulated fleets: maxInFlight, wave order,
//! abort exactly at the threshold, timeouts, pause, rollback, skipped never failed, aggregation.

use proptest::prelude::*;

use super::tests::{NAME, old, pin, spec};
use super::*;
use crate::rollout::observe::META_WAVE;
use crate::rollout::sim::{Behaviour, Fleet, HAND_VALUE};
use crate::rollout::types::FailureThreshold;

fn behaviour(max_delay: i64) -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        6 => (1..max_delay).prop_map(Behaviour::Install),
        2 => (1..max_delay, prop::sample::select(vec!["flash-failed", "verify-failed", "chip-mismatch"]))
            .prop_map(|(d, c)| Behaviour::Fail(c.to_owned(), d)),
        1 => Just(Behaviour::Hang),
        1 => (1..30i64).prop_map(Behaviour::HandEdit),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    behaviours: Vec<Behaviour>,
    late: Vec<bool>,
    waves: Vec<String>,
    max_in_flight: u32,
    threshold: FailureThreshold,
    timeout: u64,
    pause: u64,
    paused: Option<(usize, usize)>,
    abort_at: Option<usize>,
    rollback: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((behaviour(120), prop::bool::weighted(0.1)), 1..40),
        prop::collection::vec(
            prop_oneof![
                (1u32..5).prop_map(|n| n.to_string()),
                (1u32..=100).prop_map(|p| format!("{p}%"))
            ],
            1..5,
        ),
        1u32..8,
        (
            prop::option::of(0u32..60),
            0u32..8,
            prop::option::of(0u32..6),
        ),
        (40u64..200, 0u64..40),
        prop::option::of((0usize..30, 1usize..20)),
        prop::option::weighted(0.15, 0usize..60),
        any::<bool>(),
    )
        .prop_map(
            |(
                devs,
                waves,
                max_in_flight,
                (pct, min_sample, max_failures),
                (timeout, pause),
                paused,
                abort_at,
                rollback,
            )| Case {
                behaviours: devs.iter().map(|d| d.0.clone()).collect(),
                late: devs.iter().map(|d| d.1).collect(),
                waves,
                max_in_flight,
                threshold: FailureThreshold {
                    max_failure_percent: pct,
                    min_sample,
                    max_failures,
                },
                timeout,
                pause,
                paused: paused.map(|(a, len)| (a, a + len)),
                abort_at,
                rollback,
            },
        )
}

/// An independent statement of the threshold rule.
fn oracle(t: &FailureThreshold, failed: u32, installed: u32) -> bool {
    let sample = failed + installed;
    t.max_failures.is_some_and(|m| failed > m)
        || t.max_failure_percent.is_some_and(|p| {
            sample >= t.min_sample.max(1)
                && f64::from(failed) / f64::from(sample) > f64::from(p) / 100.0
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn planner_properties(c in case()) {
        let n = c.behaviours.len();
        let mut f = Fleet::new(n, &old(), |i| c.behaviours[i].clone(), |i| if c.late[i] { 1_000_000 + 90 } else { 0 });
        let mut s = spec(&[], c.max_in_flight);
        s.strategy.waves = c.waves.clone();
        s.strategy.failure_threshold = c.threshold.clone();
        s.strategy.device_timeout_seconds = c.timeout;
        s.strategy.pause_between_waves_seconds = c.pause;
        s.rollback_on_abort = c.rollback;
        let sizes = s.strategy.wave_sizes().unwrap();
        let mut status: Option<FirmwareRolloutStatus> = None;
        let mut aborted_by_hand = false;
        for step in 0..2000 {
            s.paused = c.paused.is_some_and(|(a, b)| (a..b).contains(&step));
            s.abort = c.abort_at.is_some_and(|a| step >= a);
            let before = status.as_ref().map(|s| s.phase).unwrap_or_default();
            let p = f.step(NAME, &s, status.as_ref(), &pin());
            let st = &p.status;
            // Aggregation: the counts add up, match the lists, and the display strings agree.
            prop_assert_eq!(st.pending + st.in_progress + st.installed + st.failed + st.skipped, st.total);
            prop_assert_eq!(st.in_progress as usize, st.in_flight.len());
            prop_assert_eq!(st.failed as usize, st.failed_devices.len());
            prop_assert_eq!(st.total as usize, f.visible().len());
            prop_assert_eq!(&st.progress, &format!("{}/{}", st.installed, st.total));
            // Timeouts: nothing stays in progress past the per-device timeout.
            if !st.phase.is_terminal() {
                let late = st.in_flight.iter().find(|e| f.now - e.started_at > c.timeout as i64);
                prop_assert!(late.is_none(), "{:?} in progress past {} s", late, c.timeout);
            }
            // Never more than maxInFlight in progress.
            prop_assert!(st.in_flight.len() <= c.max_in_flight as usize);
            // Wave order: everything in flight and everything started now is in the current wave,
            // and no more Devices started than the waves so far allow.
            if !st.phase.is_terminal() {
                prop_assert!(st.in_flight.iter().all(|e| e.wave == st.current_wave), "{:?}", st.in_flight);
                prop_assert!(st.total - st.pending <= wave_cap(&sizes, st.current_wave, st.total));
            }
            for x in p.patches.iter().filter(|x| x.kind == PatchKind::Start) {
                prop_assert_eq!(&x.desired.metadata[META_WAVE], &st.current_wave.to_string());
            }
            // Pause holds.
            if s.paused && !before.is_terminal() {
                prop_assert!(p.patches.iter().all(|x| x.kind == PatchKind::Rollback));
            }
            // Abort exactly when the threshold is crossed (with the minimum sample), not before.
            let crossed = oracle(&c.threshold, st.failed, st.installed);
            if !before.is_terminal() && !s.abort {
                prop_assert_eq!(st.phase.is_terminal() && st.phase != Phase::Completed, crossed,
                    "phase {:?} failed {} installed {}", st.phase, st.failed, st.installed);
            }
            aborted_by_hand |= s.abort && !before.is_terminal();
            // Skipped never count as failures; failures carry the code the device reported,
            // or `timeout`.
            for d in &st.failed_devices {
                match &f.devices[&d.device].behaviour {
                    Behaviour::Fail(code, after) => prop_assert!(d.code == *code || (d.code == "timeout" && *after as u64 > c.timeout)),
                    Behaviour::Install(after) => prop_assert!(d.code == "timeout" && *after as u64 > c.timeout),
                    Behaviour::Hang => prop_assert_eq!(&d.code, "timeout"),
                    Behaviour::HandEdit(_) => prop_assert!(false, "a skipped device counted as failed: {:?}", d),
                }
            }
            for name in &st.skipped_devices {
                prop_assert!(matches!(f.devices[name].behaviour, Behaviour::HandEdit(_)));
            }
            let phase = st.phase;
            status = Some(p.status);
            if phase.is_terminal() && (phase != Phase::Aborted || !c.rollback) {
                break;
            }
            f.tick(7, &pin());
        }
        let st = status.unwrap();
        match st.phase {
            Phase::RolledBack => {
                // Rollback restores exactly the previous desired values; hand edits stay.
                for d in f.devices.values() {
                    let want = if d.observed.desired.value == HAND_VALUE { HAND_VALUE.to_owned() } else { old() };
                    prop_assert_eq!(&d.observed.desired.value, &want, "{}", d.observed.name);
                }
            }
            Phase::Completed => {
                prop_assert_eq!((st.pending, st.in_progress), (0, 0));
                prop_assert!(!aborted_by_hand);
                // Every stuck device the rollout started timed out as a failure (a device that
                // joins after the end is not part of it).
                for d in f
                    .devices
                    .values()
                    .filter(|d| d.behaviour == Behaviour::Hang && d.observed.desired.value == pin())
                {
                    prop_assert!(st.failed_devices.iter().any(|x| x.device == d.observed.name && x.code == "timeout"));
                }
            }
            Phase::Aborted => prop_assert!(!c.rollback),
            other => prop_assert!(false, "never finished: {:?} {:?}", other, st.message),
        }
    }
}
