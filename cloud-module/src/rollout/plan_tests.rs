//! Table tests and properties of the rollout planner, over the simulated fleet of `sim.rs`.

use std::collections::BTreeSet;

use super::*;
use crate::rollout::observe::{META_PREVIOUS, META_WAVE};
use crate::rollout::sim::{Behaviour, Fleet, HAND_VALUE};
use crate::rollout::types::{FailureThreshold, Strategy as RolloutStrategy, WaveSize};

const HEX1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const HEX2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
pub(super) const NAME: &str = "fw-2-0";

pub(super) fn old() -> String {
    format!("registry.local:5000/fw/blinky:1.0.0@sha256:{HEX1}")
}

pub(super) fn pin() -> String {
    format!("registry.local:5000/fw/blinky:2.0.0@sha256:{HEX2}")
}

pub(super) fn spec(waves: &[&str], max_in_flight: u32) -> FirmwareRolloutSpec {
    FirmwareRolloutSpec {
        selector: Default::default(),
        firmware: "registry.local:5000/fw/blinky:2.0.0".into(),
        strategy: RolloutStrategy {
            waves: waves.iter().map(|w| (*w).to_owned()).collect(),
            max_in_flight,
            failure_threshold: FailureThreshold::default(),
            device_timeout_seconds: 600,
            pause_between_waves_seconds: 0,
        },
        paused: false,
        abort: false,
        rollback_on_abort: false,
    }
}

fn fleet(n: usize, behaviour: impl FnMut(usize) -> Behaviour) -> Fleet {
    Fleet::new(n, &old(), behaviour, |_| 0)
}

/// Runs reconcile steps (tick `secs` between them) until a terminal phase or `steps`.
fn run(f: &mut Fleet, spec: &FirmwareRolloutSpec, steps: usize, secs: i64) -> Vec<Plan> {
    let mut trace: Vec<Plan> = Vec::new();
    for _ in 0..steps {
        let p = f.step(NAME, spec, trace.last().map(|p| &p.status), &pin());
        let done = p.status.phase.is_terminal();
        trace.push(p);
        if done {
            break;
        }
        f.tick(secs, &pin());
    }
    trace
}

fn reasons(p: &Plan) -> Vec<&str> {
    p.events.iter().map(|e| e.reason.as_str()).collect()
}

fn started(p: &Plan) -> Vec<&str> {
    p.patches
        .iter()
        .filter(|x| x.kind == PatchKind::Start)
        .map(|x| x.device.as_str())
        .collect()
}

#[test]
fn first_plan_starts_the_canary_with_a_guarded_json_patch() {
    let mut f = fleet(30, |_| Behaviour::Install(5));
    let p = f.step(NAME, &spec(&["1", "10%", "100%"], 5), None, &pin());
    assert_eq!(p.status.phase, Phase::Progressing);
    assert_eq!(reasons(&p), ["Progressing", "WaveStarted"]);
    assert_eq!(started(&p), ["dev-00000"]);
    assert_eq!(p.status.pinned, pin());
    assert_eq!((p.status.current_wave, p.status.waves), (1, 3));
    assert_eq!(
        (p.status.pending, p.status.in_progress, p.status.total),
        (29, 1, 30)
    );
    assert_eq!(p.status.wave_progress, "1/3");
    assert_eq!(p.status.progress, "0/30");
    assert_eq!(p.status.in_flight[0].previous, old());
    assert_eq!(
        p.status.in_flight[0].generation, 2,
        "generation after the patch"
    );
    let ops = p.patches[0].json_patch();
    assert_eq!(
        ops,
        serde_json::json!([
            {"op": "test", "path": "/spec/properties/0/name", "value": "firmware"},
            {"op": "test", "path": "/spec/properties/0/desired/value", "value": old()},
            {"op": "replace", "path": "/spec/properties/0/desired", "value": {
                "value": pin(),
                "metadata": {"type": "string", "twinflash.io/rollout": NAME,
                             "twinflash.io/previous": old(), "twinflash.io/wave": "1",
                             "twinflash.io/started": "1000000"}}}
        ])
    );
}

#[test]
fn waves_follow_in_order_and_respect_max_in_flight() {
    let mut f = fleet(30, |_| Behaviour::Install(10));
    let trace = run(&mut f, &spec(&["1", "10%", "100%"], 4), 200, 5);
    let last = trace.last().unwrap();
    assert_eq!(last.status.phase, Phase::Completed);
    assert_eq!((last.status.installed, last.status.total), (30, 30));
    assert_eq!(reasons(last), ["Completed", "WaveFinished"]);
    // Wave 1: one device; wave 2: ceil(10% of 30) = 3; wave 3: the 26 others, 4 at a time.
    let mut by_wave = [0usize; 4];
    for p in &trace {
        for x in &p.patches {
            let w: usize = x.desired.metadata[META_WAVE].parse().unwrap();
            by_wave[w] += 1;
        }
        assert!(p.status.in_flight.len() <= 4);
    }
    assert_eq!(by_wave, [0, 1, 3, 26]);
    // Each wave's start and end is its own Event, with its own note, once (issue 22, F2).
    let notes = |reason: &str| -> Vec<String> {
        trace
            .iter()
            .flat_map(|p| &p.events)
            .filter(|e| e.reason == reason)
            .map(|e| e.note.clone())
            .collect()
    };
    for (reason, verb) in [("WaveStarted", "started"), ("WaveFinished", "finished")] {
        let got = notes(reason);
        assert_eq!(got.len(), 3, "{reason}: {got:?}");
        for (i, note) in got.iter().enumerate() {
            let want = format!("wave {}/3 {verb}", i + 1);
            assert!(note.starts_with(&want), "{reason} #{i}: {note:?}");
        }
    }
}

#[test]
fn abort_at_the_absolute_threshold_then_rollback_restores_previous_values() {
    // Devices 1, 2 and 3 fail; maxFailures 1: the second failure aborts.
    let mut f = fleet(10, |i| {
        if (1..=3).contains(&i) {
            Behaviour::Fail("flash-failed".into(), 5)
        } else {
            Behaviour::Install(5)
        }
    });
    let mut s = spec(&["1", "100%"], 1);
    s.strategy.failure_threshold.max_failures = Some(1);
    s.rollback_on_abort = true;
    let trace = run(&mut f, &s, 100, 5);
    let last = trace.last().unwrap();
    assert_eq!(last.status.phase, Phase::RolledBack);
    assert_eq!(reasons(last), ["RolledBack"]);
    assert!(last.events[0].warning);
    let failed: Vec<(&str, &str)> = last
        .status
        .failed_devices
        .iter()
        .map(|d| (d.device.as_str(), d.code.as_str()))
        .collect();
    assert_eq!(
        failed,
        [("dev-00001", "flash-failed"), ("dev-00002", "flash-failed")]
    );
    // Every Device is back at its previous value, metadata without the rollout's keys.
    for d in f.devices.values() {
        assert_eq!(d.observed.desired.value, old(), "{}", d.observed.name);
        assert!(!d.observed.desired.metadata.contains_key(META_PREVIOUS));
        assert_eq!(d.observed.desired.metadata["type"], "string");
    }
    let rolled: BTreeSet<&str> = last.patches.iter().map(|p| p.device.as_str()).collect();
    assert_eq!(
        rolled,
        BTreeSet::from(["dev-00000", "dev-00001", "dev-00002"]),
        "one at a time: dev-00003 was never started"
    );
    assert_eq!(
        f.devices["dev-00003"].observed.generation, 1,
        "never patched"
    );
    // Terminal: nothing more.
    let again = f.step(NAME, &s, Some(&last.status), &pin());
    assert!(again.patches.is_empty() && again.events.is_empty());
}

#[test]
fn ratio_threshold_waits_for_the_minimum_sample() {
    let t = FailureThreshold {
        max_failure_percent: Some(20),
        min_sample: 5,
        max_failures: None,
    };
    let table = [
        // (failed, installed, crossed)
        (1, 0, false), // 100 % but only 1 finished
        (2, 2, false), // 50 % of 4 < minSample
        (2, 3, true),  // 40 % of 5
        (1, 4, false), // exactly 20 %: not crossed
        (1, 3, false), // 25 % of 4: sample too small
        (2, 8, false), // 20 %
        (3, 8, true),  // 27 %
    ];
    for (f, i, want) in table {
        assert_eq!(
            threshold_crossed(&t, f, i),
            want,
            "{f} failed, {i} installed"
        );
    }
    let abs = FailureThreshold {
        max_failures: Some(0),
        ..FailureThreshold::default()
    };
    assert!(!threshold_crossed(&abs, 0, 100));
    assert!(threshold_crossed(&abs, 1, 100));
    assert!(!threshold_crossed(&FailureThreshold::default(), 1000, 0));
}

#[test]
fn a_device_stuck_in_progress_times_out_as_failed() {
    let mut f = fleet(3, |i| {
        if i == 1 {
            Behaviour::Hang
        } else {
            Behaviour::Install(5)
        }
    });
    let mut s = spec(&["100%"], 3);
    s.strategy.device_timeout_seconds = 60;
    let trace = run(&mut f, &s, 100, 10);
    let last = trace.last().unwrap();
    assert_eq!(last.status.phase, Phase::Completed);
    assert_eq!(last.status.failed_devices.len(), 1);
    assert_eq!(last.status.failed_devices[0].device, "dev-00001");
    assert_eq!(last.status.failed_devices[0].code, TIMEOUT_CODE);
    assert_eq!((last.status.installed, last.status.failed), (2, 1));
    // Not before the timeout: at 60 s it is still in progress.
    let at_60 = &trace[6].status;
    assert_eq!(f.now - 10 * (trace.len() as i64 - 1), 1_000_000);
    assert_eq!(at_60.in_progress, 1, "{at_60:?}");
    assert_eq!(at_60.failed, 0);
}

#[test]
fn a_hand_edit_is_skipped_left_alone_and_not_rolled_back() {
    let mut f = fleet(4, |i| match i {
        0 => Behaviour::HandEdit(3),
        _ => Behaviour::Fail("verify-failed".into(), 5),
    });
    let mut s = spec(&["100%"], 4);
    s.strategy.failure_threshold.max_failures = Some(2);
    s.rollback_on_abort = true;
    let trace = run(&mut f, &s, 50, 5);
    let last = trace.last().unwrap();
    assert_eq!(last.status.phase, Phase::RolledBack);
    assert_eq!(last.status.skipped_devices, ["dev-00000"]);
    assert_eq!(last.status.skipped, 1);
    assert_eq!(last.status.failed, 3);
    assert!(
        !last
            .status
            .failed_devices
            .iter()
            .any(|d| d.device == "dev-00000")
    );
    assert_eq!(f.devices["dev-00000"].observed.desired.value, HAND_VALUE);
    assert!(!last.patches.iter().any(|p| p.device == "dev-00000"));
}

#[test]
fn a_stale_cached_device_stays_in_progress_and_is_not_patched_twice() {
    let mut f = fleet(2, |_| Behaviour::Install(100));
    let s = spec(&["100%"], 1);
    let first = f.step(NAME, &s, None, &pin());
    assert_eq!(started(&first), ["dev-00000"]);
    // The informer has not seen our patch yet: dev-00000 still shows the old value, generation 1.
    let mut stale = f.visible();
    stale[0].desired.value = old();
    stale[0].desired.metadata.clear();
    stale[0].generation = 1;
    let p = plan(PlanInput {
        name: NAME,
        generation: 1,
        spec: &s,
        status: Some(&first.status),
        devices: &stale,
        pin: Pin::Ready(&pin()),
        conflict: None,
        now: f.now + 5,
    });
    assert!(p.patches.is_empty(), "{:?}", p.patches);
    assert_eq!(
        (p.status.in_progress, p.status.skipped, p.status.pending),
        (1, 0, 1)
    );
}

#[test]
fn a_device_joining_mid_rollout_is_included_in_a_later_wave() {
    let mut f = Fleet::new(
        6,
        &old(),
        |_| Behaviour::Install(10),
        |i| if i == 5 { 1_000_010 } else { 0 },
    );
    let trace = run(&mut f, &spec(&["1", "100%"], 2), 100, 5);
    let last = trace.last().unwrap();
    assert_eq!(last.status.phase, Phase::Completed);
    assert_eq!((last.status.installed, last.status.total), (6, 6));
    let joined = trace
        .iter()
        .flat_map(|p| p.patches.iter())
        .find(|p| p.device == "dev-00005")
        .unwrap();
    assert_eq!(joined.desired.metadata[META_WAVE], "2");
    assert_eq!(trace[0].status.total, 5);
}

#[test]
fn conflict_invalid_spec_and_missing_artifact_refuse_without_patches() {
    let f = fleet(3, |_| Behaviour::Install(5));
    let devices = f.visible();
    let s = spec(&["100%"], 1);
    let input = PlanInput {
        name: NAME,
        generation: 2,
        spec: &s,
        status: None,
        devices: &devices,
        pin: Pin::NotYet,
        conflict: Some("fw-1-9"),
        now: 10,
    };
    let p = plan(input);
    assert!(p.patches.is_empty());
    assert_eq!(p.status.phase, Phase::Pending);
    let refused = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Refused")
        .unwrap();
    assert_eq!(
        (refused.status.as_str(), refused.reason.as_str()),
        ("True", "ConflictingRollout")
    );
    assert!(refused.message.contains("fw-1-9"), "{}", refused.message);
    assert_eq!(reasons(&p), ["Refused"]);
    assert!(p.events[0].note.contains("fw-1-9"));
    // The same refusal again: no second Event.
    let again = plan(PlanInput {
        status: Some(&p.status),
        ..input
    });
    assert!(again.events.is_empty());

    let mut bad = s.clone();
    bad.strategy.waves = vec!["1".into(), "0%".into()];
    let p = plan(PlanInput {
        spec: &bad,
        conflict: None,
        ..input
    });
    assert_eq!(p.status.conditions[1].reason, "InvalidSpec");
    assert!(p.status.message.contains("0%"));

    let p = plan(PlanInput {
        conflict: None,
        pin: Pin::Failed("artifact x not found"),
        ..input
    });
    assert_eq!(p.status.conditions[1].reason, "ArtifactUnavailable");
    assert!(p.patches.is_empty());

    // Once the other rollout is gone, the same rollout starts.
    let p = plan(PlanInput {
        conflict: None,
        pin: Pin::Ready(&pin()),
        status: Some(&p.status),
        ..input
    });
    assert_eq!(p.status.phase, Phase::Progressing);
    let refused = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Refused")
        .unwrap();
    assert_eq!(refused.status, "False");
}

#[test]
fn pause_holds_and_resume_continues() {
    let mut f = fleet(6, |_| Behaviour::Install(5));
    let mut s = spec(&["100%"], 2);
    let p1 = f.step(NAME, &s, None, &pin());
    assert_eq!(started(&p1).len(), 2);
    s.paused = true;
    let mut status = p1.status;
    for _ in 0..5 {
        f.tick(10, &pin());
        let p = f.step(NAME, &s, Some(&status), &pin());
        assert!(p.patches.is_empty());
        assert_eq!(p.status.phase, Phase::Paused);
        status = p.status;
    }
    assert_eq!(
        (status.installed, status.pending),
        (2, 4),
        "in-flight devices finished"
    );
    s.paused = false;
    let p = f.step(NAME, &s, Some(&status), &pin());
    assert_eq!(reasons(&p), ["Progressing"]);
    assert_eq!(started(&p).len(), 2);
}

#[test]
fn pause_between_waves_waits() {
    let mut f = fleet(4, |_| Behaviour::Install(1));
    let mut s = spec(&["1", "100%"], 4);
    s.strategy.pause_between_waves_seconds = 30;
    let trace = run(&mut f, &s, 20, 10);
    let wave2 = trace
        .iter()
        .position(|p| reasons(p).contains(&"WaveStarted") && p.status.current_wave == 2)
        .unwrap();
    let finished = trace[1].status.wave_finished_at.unwrap();
    assert_eq!(trace[wave2].status.wave_started_at.unwrap() - finished, 30);
    assert_eq!(trace.last().unwrap().status.phase, Phase::Completed);
}

#[test]
fn manual_abort_without_rollback_keeps_values_and_a_later_rollback_restores_them() {
    let mut f = fleet(4, |_| Behaviour::Install(50));
    let mut s = spec(&["100%"], 2);
    let p1 = f.step(NAME, &s, None, &pin());
    s.abort = true;
    f.tick(5, &pin());
    let p2 = f.step(NAME, &s, Some(&p1.status), &pin());
    assert_eq!(p2.status.phase, Phase::Aborted);
    assert!(p2.patches.is_empty());
    assert_eq!(reasons(&p2), ["Aborted"]);
    assert_eq!(f.devices["dev-00000"].observed.desired.value, pin());
    s.rollback_on_abort = true;
    let p3 = f.step(NAME, &s, Some(&p2.status), &pin());
    assert_eq!(p3.status.phase, Phase::RolledBack);
    assert_eq!(p3.patches.len(), 2);
    assert!(
        f.devices
            .values()
            .all(|d| d.observed.desired.value == old())
    );
}

#[test]
fn refused_start_makes_the_device_pending_again() {
    let mut f = fleet(2, |_| Behaviour::Install(5));
    let s = spec(&["100%"], 2);
    let devices = f.visible();
    let mut p = plan(PlanInput {
        name: NAME,
        generation: 1,
        spec: &s,
        status: None,
        devices: &devices,
        pin: Pin::Ready(&pin()),
        conflict: None,
        now: f.now,
    });
    p.applied("dev-00001", None);
    assert_eq!((p.status.in_progress, p.status.pending), (1, 1));
    f.apply(&p.patches[0]);
    f.tick(1, &pin());
    let next = f.step(NAME, &s, Some(&p.status), &pin());
    assert_eq!(started(&next), ["dev-00001"]);
}

#[test]
fn old_failure_reports_and_devices_without_the_property() {
    let mut f = fleet(2, |_| Behaviour::Install(5));
    f.devices
        .get_mut("dev-00000")
        .unwrap()
        .observed
        .reported_state = Some("failed:flash-failed".into());
    f.devices
        .get_mut("dev-00000")
        .unwrap()
        .observed
        .reported_state_ms = Some(5_000);
    f.devices.get_mut("dev-00001").unwrap().observed.index = None;
    let p = f.step(NAME, &spec(&["100%"], 2), None, &pin());
    f.tick(1, &pin());
    let p = f.step(NAME, &spec(&["100%"], 2), Some(&p.status), &pin());
    assert_eq!(
        p.status.failed, 0,
        "a failure reported before the start is not this rollout's"
    );
    assert_eq!((p.status.in_progress, p.status.skipped), (1, 1));
}

#[test]
fn wave_sizes_parse_and_caps() {
    assert_eq!(WaveSize::parse("1"), Ok(WaveSize::Count(1)));
    assert_eq!(WaveSize::parse(" 10% "), Ok(WaveSize::Percent(10)));
    for bad in ["0", "0%", "101%", "x", "-1", "", "%"] {
        assert!(WaveSize::parse(bad).is_err(), "{bad}");
    }
    let sizes = [
        WaveSize::Count(1),
        WaveSize::Percent(10),
        WaveSize::Percent(100),
    ];
    assert_eq!(wave_cap(&sizes, 1, 30), 1);
    assert_eq!(wave_cap(&sizes, 2, 30), 4);
    assert_eq!(wave_cap(&sizes, 3, 30), 30);
    assert_eq!(wave_cap(&sizes, 1, 0), 0);
    assert_eq!(wave_cap(&[WaveSize::Count(5), WaveSize::Count(5)], 1, 3), 3);
    assert_eq!(
        wave_cap(&[WaveSize::Count(1), WaveSize::Count(1)], 2, 30),
        30,
        "last wave takes the rest"
    );
}
