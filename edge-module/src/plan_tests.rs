use super::*;

const A: &str = "127.0.0.1:5000/fw/blinky:1.0.0@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const A_OTHER_TAG: &str = "127.0.0.1:5000/fw/blinky@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "127.0.0.1:5000/fw/blinky:1.1.0@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn state(wanted: Option<&str>, installed: Option<&str>) -> JobState {
    JobState {
        wanted: wanted.map(str::to_owned),
        installed: installed.map(str::to_owned),
        ..JobState::default()
    }
}

#[test]
fn table_of_next_steps() {
    let failed = Outcome::Failed {
        code: "flash-failed".into(),
    };
    let rejected = Outcome::Rejected {
        code: "chip-mismatch".into(),
    };
    let cases: Vec<(&str, JobState, Step)> = vec![
        ("nothing wanted", state(None, Some(A)), Step::Idle),
        (
            "wanted installed",
            state(Some(A), Some(A)),
            Step::Converged {
                reference: A.into(),
            },
        ),
        (
            "same digest other tag is installed: no flash, report the wanted text",
            state(Some(A_OTHER_TAG), Some(A)),
            Step::Converged {
                reference: A_OTHER_TAG.into(),
            },
        ),
        (
            "new intent",
            state(Some(B), Some(A)),
            Step::Install {
                reference: B.into(),
                attempt: 1,
            },
        ),
        (
            "a flash of the installed image started and was not verified: redo it",
            JobState {
                flash_started: Some(A.into()),
                ..state(Some(A), Some(A))
            },
            Step::Install {
                reference: A.into(),
                attempt: 1,
            },
        ),
        (
            "rejected intent stays rejected",
            JobState {
                outcome: Some((B.into(), rejected.clone())),
                ..state(Some(B), Some(A))
            },
            Step::Settled {
                reference: B.into(),
                outcome: rejected,
            },
        ),
        (
            "an outcome of an older intent does not hold a newer one",
            JobState {
                outcome: Some((A.into(), failed.clone())),
                ..state(Some(B), None)
            },
            Step::Install {
                reference: B.into(),
                attempt: 1,
            },
        ),
        (
            "attempts exhausted",
            JobState {
                attempts: 3,
                ..state(Some(B), Some(A))
            },
            Step::Settled {
                reference: B.into(),
                outcome: failed,
            },
        ),
    ];
    for (name, st, want) in cases {
        assert_eq!(next_step(&st, 3), want, "{name}");
    }
}

#[test]
fn repeated_intent_is_unchanged_and_new_one_cancels_only_downloads() {
    let mut st = state(None, None);
    assert_eq!(
        on_intent(&mut st, A, false),
        OnIntent::Replace {
            cancel_download: true
        }
    );
    for _ in 0..10 {
        assert_eq!(on_intent(&mut st, A, false), OnIntent::Unchanged);
    }
    st.attempts = 2;
    assert_eq!(
        on_intent(&mut st, B, true),
        OnIntent::Replace {
            cancel_download: false
        }
    );
    assert_eq!(st.wanted.as_deref(), Some(B));
    assert_eq!(st.attempts, 0, "a new intent starts its attempts afresh");
}

#[test]
fn content_id_is_the_digest() {
    assert_eq!(content_id(A), content_id(A_OTHER_TAG));
    assert_ne!(content_id(A), content_id(B));
    assert_eq!(content_id("no-digest"), "no-digest");
}

fn rb(reference: &str, version: &str) -> Option<ReadBack> {
    Some(ReadBack {
        reference: reference.into(),
        version: version.into(),
    })
}

#[test]
fn reconcile_trusts_the_device_read_back() {
    let started_b = JobState {
        flash_started: Some(B.into()),
        ..state(Some(B), Some(A))
    };
    // The flash of B finished and was verified before the crash: B is installed, nothing to redo.
    let st = reconcile(started_b.clone(), true, rb(B, "1.1.0"));
    assert_eq!(st.installed.as_deref(), Some(B));
    assert_eq!(st.flash_started, None);
    assert_eq!(st.installed_version.as_deref(), Some("1.1.0"));
    assert_eq!(
        next_step(&st, 3),
        Step::Converged {
            reference: B.into()
        }
    );

    // Power cut mid-flash in single-bank mode: nothing valid on the device, B is flashed again.
    let st = reconcile(started_b.clone(), true, None);
    assert_eq!(st.installed, None);
    assert_eq!(
        next_step(&st, 3),
        Step::Install {
            reference: B.into(),
            attempt: 1
        }
    );

    // A/B mode: the old image still runs; the interrupted flash of B is redone.
    let st = reconcile(started_b.clone(), true, rb(A, "1.0.0"));
    assert_eq!(st.installed.as_deref(), Some(A));
    assert_eq!(st.flash_started.as_deref(), Some(B));
    assert!(matches!(next_step(&st, 3), Step::Install { .. }));

    // A backend that cannot read back: the journal is all there is, and the started flash is redone.
    let st = reconcile(started_b.clone(), false, None);
    assert_eq!(st, started_b);

    // The installed text is kept when the device holds the same digest under another tag.
    let st = reconcile(
        state(Some(A_OTHER_TAG), Some(A_OTHER_TAG)),
        true,
        rb(A, "1.0.0"),
    );
    assert_eq!(st.installed.as_deref(), Some(A_OTHER_TAG));
}
