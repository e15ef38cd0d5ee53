//! Pure decisions of a device's firmware job (docs/contract.md section 3).
//!
//! The job is level-triggered like a Kubernetes controller: the journal holds what is wanted and what is installed,
//! and [`next_step`] says what to do about the difference. Repeated deltas therefore change nothing, and a restart
//! resumes from the journal alone.

use mqtt_schema::ErrorCode;
use serde::{Deserialize, Serialize};

/// How an intent ended, for the intent it names. Terminal until the intent changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// The attempt failed for good (`failed:<code>`).
    Failed { code: String },
    /// The intent itself is unacceptable (`rejected:<code>`).
    Rejected { code: String },
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
}

/// What a newly received intent does to a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnIntent {
    /// The same intent as before (edgecore repeats deltas after every update): nothing changes.
    Unchanged,
    /// A new intent: record it; a download of an older intent is cancelled, a flash is never interrupted.
    Replace { cancel_download: bool },
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
            outcome: outcome.clone(),
        };
    }
    if state.attempts >= max_attempts {
        return Step::Settled {
            reference: wanted,
            outcome: Outcome::Failed {
                code: ErrorCode::FlashFailed.as_str().to_owned(),
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
    if !reads_back {
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
/// `flashing` is true while a flash is under way (it is never interrupted).
pub fn on_intent(state: &mut JobState, reference: &str, flashing: bool) -> OnIntent {
    if state.wanted.as_deref() == Some(reference) {
        return OnIntent::Unchanged;
    }
    state.wanted = Some(reference.to_owned());
    state.attempts = 0;
    OnIntent::Replace {
        cancel_download: !flashing,
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
