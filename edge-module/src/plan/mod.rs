//! Pure decisions of a device's firmware job (docs/contract.md section 3).
//!
//! The job is level-triggered like a Kubernetes controller: the journal holds what is wanted and what is installed,
//! and [`next_step`] says what to do about the difference. Repeated deltas therefore change nothing, and a restart
//! resumes from the journal alone.

use mqtt_schema::{ErrorCode, FirmwareState};
use serde::{Deserialize, Serialize};

use crate::wire::Intent;

/// How an intent ended, for the intent it names. Terminal until the intent changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// The attempt failed for good (`failed:<code>`).
    Failed { code: ErrorCode },
    /// The intent itself is unacceptable (`rejected:<code>`).
    Rejected { code: ErrorCode },
}

impl Outcome {
    /// The outcome of an error with `code` that ends the intent: a rejection for codes that say the intent is
    /// unacceptable, a failure otherwise.
    pub fn of(code: ErrorCode) -> Outcome {
        if code.is_rejection() {
            Outcome::Rejected { code }
        } else {
            Outcome::Failed { code }
        }
    }

    /// The `firmware-state` value that reports it.
    pub fn state(self) -> FirmwareState {
        match self {
            Outcome::Failed { code } => FirmwareState::Failed(code.into()),
            Outcome::Rejected { code } => FirmwareState::Rejected(code.into()),
        }
    }
}

/// What the device's journal knows. Only the fields the decisions need; persisted by `journal`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// The newest intent received (a digest-pinned reference, exactly as the twin carried it).
    pub wanted: Option<String>,
    /// The reference whose firmware is installed and verified on the device.
    pub installed: Option<String>,
    /// A flash that was started and has not been verified yet (redone after a crash).
    pub flash_started: Option<String>,
    /// The terminal outcome of `wanted`, if it has one.
    pub outcome: Option<(String, Outcome)>,
    /// Failed flash attempts of `wanted` so far.
    pub attempts: u32,
    /// The version of `installed` (the artifact's `org.opencontainers.image.version`).
    #[serde(default)]
    pub installed_version: Option<String>,
    /// A flashed and verified firmware that has not proven it runs yet (`[devices.confirm]`). `installed` still names
    /// the previous one until it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirming: Option<Confirming>,
    /// The previous firmware being put back after a failed confirmation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverting: Option<Reverting>,
}

/// A firmware and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firmware {
    /// The digest-pinned reference.
    pub reference: String,
    /// Its version.
    pub version: String,
}

/// A firmware waiting for its confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirming {
    /// What was flashed.
    pub firmware: Firmware,
    /// What was installed before, to put back when the confirmation fails (None: nothing known was).
    pub fallback: Option<Firmware>,
}

/// A revert under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reverting {
    /// The reference that did not confirm.
    pub failed: String,
    /// Why: `boot-failed` or `version-mismatch`.
    pub code: ErrorCode,
    /// The firmware being put back.
    pub to: Firmware,
}

/// What a backend read back from the device at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBack {
    /// The reference recorded on the device when it was flashed and verified.
    pub reference: String,
    /// Its version.
    pub version: String,
}

/// What the job should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing wanted yet.
    Idle,
    /// Wanted is installed: report it (`reference` is the twin value to report, which may differ from the installed
    /// reference only in its tag when the digest is the same).
    Converged { reference: String },
    /// Wanted has a terminal outcome: report it, do nothing until the intent changes.
    Settled { reference: String, outcome: Outcome },
    /// Fetch (resuming any partial download) and then flash `reference`.
    Install { reference: String, attempt: u32 },
    /// Wait for `firmware`, flashed and verified, to prove it runs (`[devices.confirm]`).
    Confirm { firmware: Firmware },
    /// Put `to` back (fetch from the cache, flash, confirm) because `failed` did not confirm with `code`.
    Revert {
        to: Firmware,
        failed: String,
        code: ErrorCode,
    },
}

/// What a newly received intent does to a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnIntent {
    /// The same intent as before (edgecore repeats deltas after every update): nothing changes.
    Unchanged,
    /// A new intent: record it; a download of an older intent is cancelled, a flash is never interrupted.
    Replace {
        cancel_download: bool,
        /// The replaced intent had not ended yet (it was still being installed): intents arrive faster than they
        /// complete, and the device's reports go through its budget for a while (see `link::ledger`).
        superseded: bool,
    },
}

/// The content identity of a digest-pinned reference: its digest (`sha256:<hex>`), or the whole string when it has
/// none. Two references with the same digest name the same bytes, whatever their tag or registry.
pub fn content_id(reference: &str) -> &str {
    reference
        .rsplit_once('@')
        .map_or(reference, |(_, digest)| digest)
}

/// Decides what the job does next from its state alone.
pub fn next_step(state: &JobState, max_attempts: u32) -> Step {
    // A revert, then a confirmation, go before any intent: the device runs firmware that has not proven itself.
    if let Some(r) = &state.reverting {
        return Step::Revert {
            to: r.to.clone(),
            failed: r.failed.clone(),
            code: r.code,
        };
    }
    if let Some(c) = &state.confirming {
        return Step::Confirm {
            firmware: c.firmware.clone(),
        };
    }
    let Some(wanted) = state.wanted.clone() else {
        return Step::Idle;
    };
    if let Some(installed) = &state.installed
        && content_id(installed) == content_id(&wanted)
        && state.flash_started.is_none()
    {
        return Step::Converged { reference: wanted };
    }
    if let Some((reference, outcome)) = &state.outcome
        && *reference == wanted
    {
        return Step::Settled {
            reference: wanted,
            outcome: *outcome,
        };
    }
    if state.attempts >= max_attempts {
        return Step::Settled {
            reference: wanted,
            outcome: Outcome::Failed {
                code: ErrorCode::FlashFailed,
            },
        };
    }
    Step::Install {
        reference: wanted,
        attempt: state.attempts + 1,
    }
}

/// Rebuilds the state at start-up from the journal and, where the backend can read it back, from the device.
///
/// The device is the authority: its metadata is written only after a verified flash. A flash the journal says was
/// started is finished when the device now holds that digest; otherwise it stays started and is redone. When the
/// backend reads back nothing valid (a power cut left a partial image), nothing is installed.
pub fn reconcile(mut state: JobState, reads_back: bool, device: Option<ReadBack>) -> JobState {
    // A confirmation or a revert under way settles `installed` itself: the device may hold firmware that has not
    // proven it runs, which the twin must never claim.
    if !reads_back || state.confirming.is_some() || state.reverting.is_some() {
        return state;
    }
    match device {
        Some(dev) => {
            if state
                .flash_started
                .as_deref()
                .is_some_and(|started| content_id(started) == content_id(&dev.reference))
            {
                state.installed = state.flash_started.take();
            } else if state
                .installed
                .as_deref()
                .is_none_or(|inst| content_id(inst) != content_id(&dev.reference))
            {
                state.installed = Some(dev.reference);
            }
            state.installed_version = Some(dev.version);
        }
        None => {
            state.installed = None;
            state.installed_version = None;
        }
    }
    state
}

/// Records a received intent in the state and says what it does to the running job.
/// `flashing` is true while a flash is under way (it is never interrupted). An invalid intent replaces the wanted
/// reference too (the newest intent wins), recorded as its bounded prefix, and is rejected in the same record.
pub fn on_intent(state: &mut JobState, intent: &Intent, flashing: bool) -> OnIntent {
    let reference = intent.recorded();
    if state.wanted.as_deref() == Some(reference) {
        return OnIntent::Unchanged;
    }
    let superseded = matches!(next_step(state, u32::MAX), Step::Install { .. });
    state.wanted = Some(reference.to_owned());
    state.attempts = 0;
    if let Intent::Invalid { .. } = intent {
        state.outcome = Some((
            reference.to_owned(),
            Outcome::Rejected {
                code: ErrorCode::InvalidReference,
            },
        ));
    }
    OnIntent::Replace {
        cancel_download: !flashing,
        superseded,
    }
}

/// What an error that stops an attempt does to the intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The intent is unacceptable: `rejected:<code>`, never retried until it changes.
    Reject,
    /// Not possible now (probe busy, disk full): `waiting:<code>`, retried with backoff; no attempt is counted.
    Retry,
    /// The attempt failed: counted, and `failed:<code>` once the attempts are used up.
    Fail,
}

/// The classification of errors: `transient` is the backend's or fetcher's own word that trying later may help.
pub fn verdict(code: ErrorCode, transient: bool) -> Verdict {
    if code.is_rejection() {
        Verdict::Reject
    } else if transient || code == ErrorCode::DiskFull {
        Verdict::Retry
    } else {
        Verdict::Fail
    }
}

/// What the agent knows about an artifact and the device before it flashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight<'a> {
    /// The device's verdict on the artifact's chip annotation.
    pub chip_fits: bool,
    /// The device accepts lower versions.
    pub allow_downgrade: bool,
    /// The version installed now, if known.
    pub installed_version: Option<&'a str>,
    /// The artifact's version.
    pub offered_version: &'a str,
    /// Size of the firmware image in bytes.
    pub image_bytes: u64,
    /// The largest artifact the agent accepts (`registry.max_artifact_bytes`).
    pub max_bytes: u64,
}

/// The checks before a flash, in order: chip, downgrade, size. `Err` carries the rejection code.
pub fn preflight(p: &Preflight<'_>) -> Result<(), ErrorCode> {
    if !p.chip_fits {
        return Err(ErrorCode::ChipMismatch);
    }
    if !p.allow_downgrade
        && let Some(installed) = p.installed_version
        && is_downgrade(installed, p.offered_version)
    {
        return Err(ErrorCode::DowngradeRefused);
    }
    if p.image_bytes == 0 || p.image_bytes > p.max_bytes {
        return Err(ErrorCode::TooLarge);
    }
    Ok(())
}

/// True when `offered` is a lower semver than `installed`. Unparsable versions never count as a downgrade.
pub fn is_downgrade(installed: &str, offered: &str) -> bool {
    match (
        semver::Version::parse(installed),
        semver::Version::parse(offered),
    ) {
        (Ok(i), Ok(o)) => o < i,
        _ => false,
    }
}

/// How a flash ended, as the job saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlashResult {
    /// Written and verified on the device.
    Verified { version: String },
    /// Not written; `verdict` says what that means.
    Error {
        code: ErrorCode,
        verdict: Verdict,
        /// What the device holds now, for backends that read back (`None`: the backend cannot tell).
        read_back: Option<Option<ReadBack>>,
    },
}

/// What the job does after a flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFlash {
    /// Installed; the loop reports it.
    Done,
    /// Report `waiting:<code>` and try again after a backoff.
    RetryLater { code: ErrorCode },
}

/// What a flash result does to the job state of `reference` (attempt `attempt` of `max`): the installed firmware,
/// the attempts, what the device read back, the outcome.
pub fn after_flash(
    state: &mut JobState,
    reference: &str,
    attempt: u32,
    max: u32,
    result: FlashResult,
    confirm: bool,
) -> AfterFlash {
    let current = state.wanted.as_deref() == Some(reference);
    // A failed flash on a backend that cannot read back leaves the device in doubt: the flash stays "started", so
    // the old firmware is not reported converged and a restart redoes it.
    if !matches!(
        result,
        FlashResult::Error {
            verdict: Verdict::Fail,
            read_back: None,
            ..
        }
    ) {
        state.flash_started = None;
    }
    match result {
        FlashResult::Verified { version } => {
            let firmware = Firmware {
                reference: reference.to_owned(),
                version,
            };
            if confirm {
                // `installed` keeps the previous firmware until this one proves it runs.
                let fallback = state
                    .installed
                    .clone()
                    .filter(|i| content_id(i) != content_id(reference))
                    .map(|reference| Firmware {
                        reference,
                        version: state.installed_version.clone().unwrap_or_default(),
                    });
                state.confirming = Some(Confirming { firmware, fallback });
            } else {
                state.installed = Some(firmware.reference);
                state.installed_version = Some(firmware.version);
            }
            state.attempts = 0;
            state.outcome = None;
            AfterFlash::Done
        }
        FlashResult::Error {
            code,
            verdict: Verdict::Reject,
            ..
        } => {
            if current {
                state.outcome = Some((reference.to_owned(), Outcome::Rejected { code }));
            }
            AfterFlash::Done
        }
        FlashResult::Error {
            code,
            verdict: Verdict::Retry,
            ..
        } => AfterFlash::RetryLater { code },
        FlashResult::Error {
            code,
            verdict: Verdict::Fail,
            read_back,
        } => {
            if let Some(read_back) = read_back {
                state.installed = read_back.as_ref().map(|r| r.reference.clone());
                state.installed_version = read_back.map(|r| r.version);
            }
            if current {
                state.attempts = attempt;
                if attempt >= max {
                    state.outcome = Some((reference.to_owned(), Outcome::Failed { code }));
                    return AfterFlash::Done;
                }
            }
            AfterFlash::RetryLater { code }
        }
    }
}

/// What a confirmation's verdict does: `Ok` makes the firmware installed; an error code (`boot-failed`,
/// `version-mismatch`) starts the revert to the fallback, or, with none, ends the intent with that code and nothing
/// known installed (the twin never claims the firmware that failed).
pub fn after_confirm(state: &mut JobState, verdict: Result<(), ErrorCode>) {
    let Some(c) = state.confirming.take() else {
        return;
    };
    match verdict {
        Ok(()) => {
            state.installed = Some(c.firmware.reference);
            state.installed_version = Some(c.firmware.version);
        }
        Err(code) => match c.fallback {
            Some(to) => {
                state.reverting = Some(Reverting {
                    failed: c.firmware.reference,
                    code,
                    to,
                });
            }
            None => {
                state.installed = None;
                state.installed_version = None;
                end_failed(state, &c.firmware.reference, code);
            }
        },
    }
}

/// What the end of a revert does: `Ok` makes the fallback installed again and ends the failed intent with the
/// confirmation's code; an error (its flash or its own confirmation failed) leaves nothing known installed and ends
/// it with `revert-failed`. Either way the failed intent is settled: no new install until the desired value changes.
pub fn after_revert(state: &mut JobState, result: Result<(), ErrorCode>) {
    let Some(r) = state.reverting.take() else {
        return;
    };
    match result {
        Ok(()) => {
            state.installed = Some(r.to.reference);
            state.installed_version = Some(r.to.version);
            end_failed(state, &r.failed, r.code);
        }
        Err(_) => {
            state.installed = None;
            state.installed_version = None;
            end_failed(state, &r.failed, ErrorCode::RevertFailed);
        }
    }
}

/// Ends the intent `reference` with `failed:<code>` if it is still the wanted one.
fn end_failed(state: &mut JobState, reference: &str, code: ErrorCode) {
    if state.wanted.as_deref() == Some(reference) {
        state.outcome = Some((reference.to_owned(), Outcome::Failed { code }));
        state.attempts = 0;
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
