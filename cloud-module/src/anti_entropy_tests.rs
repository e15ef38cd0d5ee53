use std::collections::BTreeMap;

use super::*;
use crate::crd::{Twin, TwinProperty};

const PINNED: &str =
    "r.local:5000/fw/b@sha256:98c66134049792d306ac83cef42f94bbebd970b95f54a26adc1120b4db8f5ad2";
const OLD: &str =
    "r.local:5000/fw/b@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const PERIOD: Duration = Duration::from_secs(60);
const NOW: i64 = 1_700_000_600_000;

fn record(reason: Reason, pinned: &str) -> Record {
    Record {
        generation: 1,
        desired: "r.local:5000/fw/b:1.0".into(),
        pinned: pinned.into(),
        reason,
        message: String::new(),
    }
}

fn published() -> Record {
    record(Reason::IntentPublished, PINNED)
}

/// A status as cloudcore writes it: `reported` with metadata `{timestamp: "<ms>", type: "string"}`.
fn status(twins: &[(&str, &str, i64)]) -> DeviceTwinStatus {
    DeviceTwinStatus {
        twins: twins
            .iter()
            .map(|(name, value, at)| Twin {
                property_name: (*name).into(),
                reported: TwinProperty {
                    value: (*value).into(),
                    metadata: BTreeMap::from([
                        ("timestamp".into(), at.to_string()),
                        ("type".into(), "string".into()),
                    ]),
                },
                observed_desired: TwinProperty::default(),
            })
            .collect(),
        ..DeviceTwinStatus::default()
    }
}

fn judge(record: Option<&Record>, status: Option<&DeviceTwinStatus>) -> Staleness {
    staleness(record, status, &TwinNames::default(), true, 0, NOW, PERIOD)
}

#[test]
fn installed_with_the_pinned_firmware_is_converged_however_old() {
    let s = status(&[("firmware", PINNED, 1), ("firmware-state", "installed", 1)]);
    assert_eq!(judge(Some(&published()), Some(&s)), Staleness::Converged);
}

#[test]
fn failed_and_rejected_are_final() {
    for state in ["failed:flash-failed", "rejected:chip-mismatch"] {
        let s = status(&[("firmware", OLD, 1), ("firmware-state", state, 1)]);
        assert_eq!(
            judge(Some(&published()), Some(&s)),
            Staleness::Converged,
            "{state}"
        );
    }
}

#[test]
fn a_recent_report_short_of_final_is_fresh_and_an_old_one_stale() {
    let recent = status(&[
        ("firmware", OLD, NOW),
        ("firmware-state", "downloading:40", NOW - 59_999),
    ]);
    assert_eq!(judge(Some(&published()), Some(&recent)), Staleness::Fresh);
    let old = status(&[
        ("firmware", OLD, 1),
        ("firmware-state", "downloading:40", NOW - 60_000),
    ]);
    assert_eq!(judge(Some(&published()), Some(&old)), Staleness::Stale);
    // `installed` of the previous firmware is not the final state of this intent.
    let previous = status(&[("firmware", OLD, 1), ("firmware-state", "installed", 1)]);
    assert_eq!(judge(Some(&published()), Some(&previous)), Staleness::Stale);
}

#[test]
fn a_missing_twin_an_empty_value_or_no_timestamp_is_stale() {
    assert_eq!(judge(Some(&published()), None), Staleness::Stale);
    let no_state = status(&[("firmware", PINNED, NOW)]);
    assert_eq!(judge(Some(&published()), Some(&no_state)), Staleness::Stale);
    // cloudcore's first-write loss: the twin exists with an empty reported value.
    let empty = status(&[("firmware", PINNED, NOW), ("firmware-state", "", NOW)]);
    assert_eq!(judge(Some(&published()), Some(&empty)), Staleness::Stale);
    let mut no_ts = status(&[("firmware-state", "verifying", NOW)]);
    no_ts.twins[0].reported.metadata.clear();
    assert_eq!(judge(Some(&published()), Some(&no_ts)), Staleness::Stale);
}

#[test]
fn no_record_a_rejection_or_period_zero_never_nudges() {
    let s = status(&[("firmware-state", "downloading:5", 1)]);
    assert_eq!(judge(None, Some(&s)), Staleness::NoIntent);
    let rejected = record(Reason::ChipMismatch, "");
    assert_eq!(judge(Some(&rejected), Some(&s)), Staleness::NoIntent);
    let names = TwinNames::default();
    let off = staleness(
        Some(&published()),
        Some(&s),
        &names,
        true,
        0,
        NOW,
        Duration::ZERO,
    );
    assert_eq!(off, Staleness::Disabled);
}

#[test]
fn a_just_seen_intent_gets_a_period_before_it_counts_as_stale() {
    // The status still shows the previous install, reported long ago; the intent went out a second ago.
    let s = status(&[("firmware", OLD, 1), ("firmware-state", "installed", 1)]);
    let names = TwinNames::default();
    let just = staleness(
        Some(&published()),
        Some(&s),
        &names,
        true,
        NOW - 1_000,
        NOW,
        PERIOD,
    );
    assert_eq!(just, Staleness::Fresh);
    let later = staleness(
        Some(&published()),
        Some(&s),
        &names,
        true,
        NOW - 60_000,
        NOW,
        PERIOD,
    );
    assert_eq!(later, Staleness::Stale);
}

#[test]
fn a_device_without_the_state_twin_is_judged_by_its_firmware() {
    let names = TwinNames::default();
    let judge_fw = |s: &DeviceTwinStatus| {
        staleness(Some(&published()), Some(s), &names, false, 0, NOW, PERIOD)
    };
    assert_eq!(
        judge_fw(&status(&[("firmware", PINNED, 1)])),
        Staleness::Converged
    );
    assert_eq!(judge_fw(&status(&[("firmware", OLD, 1)])), Staleness::Stale);
    assert_eq!(
        judge_fw(&status(&[("firmware", OLD, NOW)])),
        Staleness::Fresh
    );
}

fn observed<'a>(name: &str, record: Option<Record>, status: &'a DeviceTwinStatus) -> Observed<'a> {
    Observed {
        key: DeviceId::namespaced("default", name).unwrap(),
        record,
        status: Some(status),
        declares_state: true,
    }
}

#[test]
fn a_scan_nudges_each_stale_device_at_most_once_per_period() {
    let mut book = AntiEntropy::new(PERIOD, TwinNames::default());
    let stale = status(&[
        ("firmware", OLD, 1),
        ("firmware-state", "downloading:40", 1),
    ]);
    let converged = status(&[("firmware", PINNED, 1), ("firmware-state", "installed", 1)]);
    let pass = |book: &mut AntiEntropy, now| {
        book.scan(
            [
                observed("stale", Some(published()), &stale),
                observed("done", Some(published()), &converged),
                observed("none", None, &stale),
            ],
            now,
        )
    };
    // First sight of an intent: a period of grace.
    let first = pass(&mut book, NOW);
    assert_eq!((first.nudge.len(), first.stale, first.scanned), (0, 0, 3));
    let s = pass(&mut book, NOW + 60_000);
    assert_eq!(
        s.nudge,
        vec![DeviceId::namespaced("default", "stale").unwrap()]
    );
    assert_eq!(s.stale, 1);
    // Scans within the period: still stale, not nudged again.
    let s = pass(&mut book, NOW + 100_000);
    assert_eq!((s.nudge.len(), s.stale), (0, 1));
    let s = pass(&mut book, NOW + 120_000);
    assert_eq!(s.nudge.len(), 1, "one period after the last nudge");
    // A Device gone from the cache is forgotten.
    book.scan([], NOW + 130_000);
    assert!(book.nudged.is_empty() && book.seen.is_empty());
}

#[test]
fn the_scan_interval_is_a_quarter_period_with_bounded_jitter() {
    for salt in 0..50 {
        let i = scan_interval(PERIOD, salt);
        assert!(
            i >= Duration::from_secs(15) && i < Duration::from_millis(16_500),
            "{i:?}"
        );
        let short = scan_interval(Duration::from_secs(2), salt);
        assert!(short >= Duration::from_secs(1) && short < Duration::from_millis(1_100));
    }
}
