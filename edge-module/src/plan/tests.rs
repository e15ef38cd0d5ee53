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
        code: ErrorCode::FlashFailed,
    };
    let rejected = Outcome::Rejected {
        code: ErrorCode::ChipMismatch,
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
                outcome: Some((B.into(), rejected)),
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
                outcome: Some((A.into(), failed)),
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
        on_intent(&mut st, &Intent::Valid(A.into()), false),
        OnIntent::Replace {
            cancel_download: true,
            superseded: false,
        }
    );
    for _ in 0..10 {
        assert_eq!(
            on_intent(&mut st, &Intent::Valid(A.into()), false),
            OnIntent::Unchanged
        );
    }
    st.attempts = 2;
    assert_eq!(
        on_intent(&mut st, &Intent::Valid(B.into()), true),
        OnIntent::Replace {
            cancel_download: false,
            superseded: true,
        }
    );
    assert_eq!(st.wanted.as_deref(), Some(B));
    assert_eq!(st.attempts, 0, "a new intent starts its attempts afresh");
    // Replacing an intent that ended (installed, or settled) is no churn.
    st.installed = Some(B.into());
    assert!(matches!(
        on_intent(&mut st, &Intent::Valid(A.into()), false),
        OnIntent::Replace {
            superseded: false,
            ..
        }
    ));
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

#[test]
fn an_invalid_intent_replaces_the_wanted_one_and_is_rejected_in_the_same_record() {
    let mut st = state(Some(A), Some(A));
    let bad = Intent::from_twin(&"x".repeat(200 * 1024));
    assert!(matches!(
        on_intent(&mut st, &bad, false),
        OnIntent::Replace { .. }
    ));
    assert_eq!(st.wanted.as_deref(), Some(bad.recorded()));
    assert!(bad.recorded().len() < 100);
    assert_eq!(
        next_step(&st, 3),
        Step::Settled {
            reference: bad.recorded().into(),
            outcome: Outcome::Rejected {
                code: ErrorCode::InvalidReference
            }
        }
    );
    // The same invalid intent again writes nothing.
    assert_eq!(on_intent(&mut st, &bad, false), OnIntent::Unchanged);
    // A valid intent after it is installed as usual.
    on_intent(&mut st, &Intent::Valid(B.into()), false);
    assert!(matches!(next_step(&st, 3), Step::Install { .. }));
}

#[test]
fn table_of_error_verdicts() {
    let cases = [
        (ErrorCode::InvalidReference, false, Verdict::Reject),
        (ErrorCode::ChipMismatch, true, Verdict::Reject),
        (ErrorCode::TooLarge, false, Verdict::Reject),
        (ErrorCode::UnsupportedArtifact, false, Verdict::Reject),
        (ErrorCode::DowngradeRefused, false, Verdict::Reject),
        (ErrorCode::ProbeBusy, true, Verdict::Retry),
        (ErrorCode::DiskFull, false, Verdict::Retry),
        (ErrorCode::FlashFailed, false, Verdict::Fail),
        (ErrorCode::VerifyFailed, false, Verdict::Fail),
        (ErrorCode::NotFound, false, Verdict::Fail),
        (ErrorCode::DigestMismatch, false, Verdict::Fail),
    ];
    for (code, transient, want) in cases {
        assert_eq!(verdict(code, transient), want, "{code}");
    }
    assert_eq!(
        Outcome::of(ErrorCode::ChipMismatch).state().to_string(),
        "rejected:chip-mismatch"
    );
    assert_eq!(
        Outcome::of(ErrorCode::NotFound).state().to_string(),
        "failed:not-found"
    );
}

#[test]
fn table_of_preflight_checks() {
    let ok = Preflight {
        chip_fits: true,
        allow_downgrade: false,
        installed_version: Some("1.1.0"),
        offered_version: "1.2.0",
        image_bytes: 10,
        max_bytes: 100,
    };
    let cases: Vec<(&str, Preflight<'_>, Result<(), ErrorCode>)> = vec![
        ("upgrade", ok.clone(), Ok(())),
        (
            "first install",
            Preflight {
                installed_version: None,
                ..ok.clone()
            },
            Ok(()),
        ),
        (
            "wrong chip first",
            Preflight {
                chip_fits: false,
                offered_version: "0.1.0",
                ..ok.clone()
            },
            Err(ErrorCode::ChipMismatch),
        ),
        (
            "downgrade",
            Preflight {
                offered_version: "1.0.9",
                ..ok.clone()
            },
            Err(ErrorCode::DowngradeRefused),
        ),
        (
            "downgrade allowed",
            Preflight {
                offered_version: "1.0.9",
                allow_downgrade: true,
                ..ok.clone()
            },
            Ok(()),
        ),
        (
            "unparsable version is no downgrade",
            Preflight {
                offered_version: "nightly",
                ..ok.clone()
            },
            Ok(()),
        ),
        (
            "too large",
            Preflight {
                image_bytes: 101,
                ..ok.clone()
            },
            Err(ErrorCode::TooLarge),
        ),
        (
            "empty",
            Preflight {
                image_bytes: 0,
                ..ok.clone()
            },
            Err(ErrorCode::TooLarge),
        ),
    ];
    for (name, p, want) in cases {
        assert_eq!(preflight(&p), want, "{name}");
    }
    assert!(is_downgrade("1.0.0", "1.0.0-rc.1"));
    assert!(!is_downgrade("1.0.0", "1.0.0"));
}

#[test]
fn table_of_flash_results() {
    let started = JobState {
        flash_started: Some(B.into()),
        attempts: 1,
        installed_version: Some("1.0.0".into()),
        ..state(Some(B), Some(A))
    };
    let err = |code, verdict, read_back| FlashResult::Error {
        code,
        verdict,
        read_back,
    };
    // (name, attempt, result, after, installed, flash_started, attempts, outcome)
    type Row<'a> = (
        &'a str,
        u32,
        FlashResult,
        AfterFlash,
        Option<&'a str>,
        Option<&'a str>,
        u32,
        Option<Outcome>,
    );
    let rows: Vec<Row<'_>> = vec![
        (
            "verified",
            2,
            FlashResult::Verified {
                version: "1.1.0".into(),
            },
            AfterFlash::Done,
            Some(B),
            None,
            0,
            None,
        ),
        (
            "refused by the device",
            2,
            err(ErrorCode::TooLarge, Verdict::Reject, None),
            AfterFlash::Done,
            Some(A),
            None,
            1,
            Some(Outcome::Rejected {
                code: ErrorCode::TooLarge,
            }),
        ),
        (
            "probe busy: no attempt counted",
            2,
            err(ErrorCode::ProbeBusy, Verdict::Retry, None),
            AfterFlash::RetryLater {
                code: ErrorCode::ProbeBusy,
            },
            Some(A),
            None,
            1,
            None,
        ),
        (
            "failed, attempts left, no read-back: the flash stays started",
            2,
            err(ErrorCode::FlashFailed, Verdict::Fail, None),
            AfterFlash::RetryLater {
                code: ErrorCode::FlashFailed,
            },
            Some(A),
            Some(B),
            2,
            None,
        ),
        (
            "failed, read back erased",
            2,
            err(ErrorCode::VerifyFailed, Verdict::Fail, Some(None)),
            AfterFlash::RetryLater {
                code: ErrorCode::VerifyFailed,
            },
            None,
            None,
            2,
            None,
        ),
        (
            "failed, read back the old image",
            2,
            err(ErrorCode::FlashFailed, Verdict::Fail, Some(rb(A, "1.0.0"))),
            AfterFlash::RetryLater {
                code: ErrorCode::FlashFailed,
            },
            Some(A),
            None,
            2,
            None,
        ),
        (
            "last attempt failed",
            3,
            err(ErrorCode::FlashFailed, Verdict::Fail, Some(None)),
            AfterFlash::Done,
            None,
            None,
            3,
            Some(Outcome::Failed {
                code: ErrorCode::FlashFailed,
            }),
        ),
    ];
    for (name, attempt, result, after, installed, flash_started, attempts, outcome) in rows {
        let mut st = started.clone();
        assert_eq!(
            after_flash(&mut st, B, attempt, 3, result, false),
            after,
            "{name}"
        );
        assert_eq!(st.installed.as_deref(), installed, "{name}: installed");
        assert_eq!(
            st.flash_started.as_deref(),
            flash_started,
            "{name}: flash_started"
        );
        assert_eq!(st.attempts, attempts, "{name}: attempts");
        assert_eq!(
            st.outcome,
            outcome.map(|o| (B.to_owned(), o)),
            "{name}: outcome"
        );
    }
    // A result for an intent that was replaced meanwhile records what the device holds, never an outcome.
    let mut st = JobState {
        wanted: Some(A.into()),
        ..started.clone()
    };
    after_flash(
        &mut st,
        B,
        3,
        3,
        err(ErrorCode::FlashFailed, Verdict::Fail, Some(None)),
        false,
    );
    assert_eq!((st.outcome, st.attempts), (None, 1));
}

fn fw(reference: &str, version: &str) -> Firmware {
    Firmware {
        reference: reference.to_owned(),
        version: version.to_owned(),
    }
}

/// B flashed and verified on a device with a confirm check, A (1.0.0) installed before.
fn flashed_b_confirming() -> JobState {
    let mut st = JobState {
        wanted: Some(B.into()),
        installed: Some(A.into()),
        installed_version: Some("1.0.0".into()),
        flash_started: Some(B.into()),
        ..JobState::default()
    };
    let verified = FlashResult::Verified {
        version: "1.1.0".into(),
    };
    assert_eq!(
        after_flash(&mut st, B, 1, 3, verified, true),
        AfterFlash::Done
    );
    st
}

#[test]
fn a_confirmed_flash_is_installed_only_once_the_device_proved_it_runs() {
    let mut st = flashed_b_confirming();
    assert_eq!(
        (st.installed.as_deref(), st.installed_version.as_deref()),
        (Some(A), Some("1.0.0")),
        "the twin keeps the previous firmware while confirming"
    );
    assert_eq!(
        next_step(&st, 3),
        Step::Confirm {
            firmware: fw(B, "1.1.0")
        }
    );
    // A restart while confirming: the device read back B, but B has not proven itself.
    let st2 = reconcile(
        st.clone(),
        true,
        Some(ReadBack {
            reference: B.into(),
            version: "1.1.0".into(),
        }),
    );
    assert_eq!(st2, st, "reconcile leaves a confirmation alone");
    after_confirm(&mut st, Ok(()));
    assert_eq!(st.confirming, None);
    assert_eq!(
        next_step(&st, 3),
        Step::Converged {
            reference: B.into()
        }
    );
    assert_eq!(st.installed_version.as_deref(), Some("1.1.0"));
}

#[test]
fn a_failed_confirmation_reverts_and_ends_the_intent_with_the_old_firmware_installed() {
    for code in [ErrorCode::BootFailed, ErrorCode::VersionMismatch] {
        let mut st = flashed_b_confirming();
        after_confirm(&mut st, Err(code));
        let revert = Step::Revert {
            to: fw(A, "1.0.0"),
            failed: B.into(),
            code,
        };
        assert_eq!(next_step(&st, 3), revert);
        // A new intent during the revert does not jump the queue.
        let mut newer = st.clone();
        on_intent(&mut newer, &Intent::Valid(A_OTHER_TAG.into()), false);
        assert_eq!(next_step(&newer, 3), revert);
        // Reverted: the old firmware is installed again and B ended with the code, for good.
        after_revert(&mut st, Ok(()));
        assert_eq!(
            (st.installed.as_deref(), st.installed_version.as_deref()),
            (Some(A), Some("1.0.0"))
        );
        assert_eq!(
            next_step(&st, 3),
            Step::Settled {
                reference: B.into(),
                outcome: Outcome::Failed { code }
            }
        );
    }
}

#[test]
fn a_failed_revert_is_revert_failed_with_nothing_claimed_until_the_intent_changes() {
    let mut st = flashed_b_confirming();
    after_confirm(&mut st, Err(ErrorCode::BootFailed));
    after_revert(&mut st, Err(ErrorCode::FlashFailed));
    assert_eq!(
        (st.installed.clone(), st.installed_version.clone()),
        (None, None)
    );
    let settled = Step::Settled {
        reference: B.into(),
        outcome: Outcome::Failed {
            code: ErrorCode::RevertFailed,
        },
    };
    assert_eq!(next_step(&st, 3), settled);
    // The same intent again changes nothing; a changed one is installed.
    assert_eq!(
        on_intent(&mut st, &Intent::Valid(B.into()), false),
        OnIntent::Unchanged
    );
    assert_eq!(next_step(&st, 3), settled);
    on_intent(&mut st, &Intent::Valid(A.into()), false);
    assert_eq!(
        next_step(&st, 3),
        Step::Install {
            reference: A.into(),
            attempt: 1
        }
    );
}

#[test]
fn without_a_fallback_a_failed_confirmation_ends_the_intent_and_claims_nothing() {
    let mut st = JobState {
        wanted: Some(B.into()),
        flash_started: Some(B.into()),
        ..JobState::default()
    };
    let verified = FlashResult::Verified {
        version: "1.1.0".into(),
    };
    after_flash(&mut st, B, 1, 3, verified, true);
    assert_eq!(
        st.confirming.as_ref().and_then(|c| c.fallback.clone()),
        None
    );
    after_confirm(&mut st, Err(ErrorCode::BootFailed));
    assert_eq!(st.installed, None);
    assert_eq!(
        next_step(&st, 3),
        Step::Settled {
            reference: B.into(),
            outcome: Outcome::Failed {
                code: ErrorCode::BootFailed
            }
        }
    );
}

#[test]
fn a_journal_without_the_confirmation_fields_still_loads() {
    let old = r#"{"wanted":"w","installed":"i","flash_started":null,"outcome":null,"attempts":0,"installed_version":"1.0.0"}"#;
    let st: JobState = serde_json::from_str(old).unwrap();
    assert_eq!((st.confirming, st.reverting), (None, None));
}
