//! Status aggregation: counts by state, the `kubectl get` strings and the conditions, written into
//! a [`FirmwareRolloutStatus`]. Pure.

use super::types::{Condition, FirmwareRolloutStatus, Phase};

/// Devices by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Not started.
    pub pending: u32,
    /// In progress.
    pub in_progress: u32,
    /// Installed.
    pub installed: u32,
    /// Failed (including timeouts).
    pub failed: u32,
    /// Skipped (hand edits, Devices without a `firmware` property).
    pub skipped: u32,
}

impl Counts {
    /// Every Device counted.
    pub fn total(&self) -> u32 {
        self.pending
            .saturating_add(self.in_progress)
            .saturating_add(self.installed)
            .saturating_add(self.failed)
            .saturating_add(self.skipped)
    }
}

/// Condition type: the rollout is making progress (True only in phase `Progressing`).
pub const PROGRESSING: &str = "Progressing";
/// Condition type: the rollout is refused (invalid spec, conflicting rollout, firmware unavailable).
pub const REFUSED: &str = "Refused";

/// Writes `counts` (when given), the display strings and the conditions into `st`.
pub fn finish_status(
    st: &mut FirmwareRolloutStatus,
    counts: Option<Counts>,
    now: i64,
    generation: i64,
    refused: Option<(&str, &str)>,
) {
    if let Some(c) = counts {
        st.pending = c.pending;
        st.in_progress = c.in_progress;
        st.installed = c.installed;
        st.failed = c.failed;
        st.skipped = c.skipped;
        st.total = c.total();
    }
    st.progress = format!("{}/{}", st.installed, st.total);
    st.wave_progress = format!("{}/{}", st.current_wave, st.waves);
    let progressing = st.phase == Phase::Progressing;
    let message = st.message.clone();
    set_condition(
        st,
        Condition {
            type_: PROGRESSING.into(),
            status: if progressing { "True" } else { "False" }.into(),
            reason: st.phase.as_str().into(),
            message,
            last_transition_time: String::new(),
            observed_generation: generation,
        },
        now,
    );
    let (status, reason, message) = match refused {
        Some((reason, message)) => ("True", reason, message),
        None => ("False", "Accepted", ""),
    };
    set_condition(
        st,
        Condition {
            type_: REFUSED.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: String::new(),
            observed_generation: generation,
        },
        now,
    );
}

/// Replaces the condition of the same type; the transition time changes only with the status.
pub fn set_condition(st: &mut FirmwareRolloutStatus, mut c: Condition, now: i64) {
    let stamp = rfc3339(now);
    match st.conditions.iter_mut().find(|o| o.type_ == c.type_) {
        Some(old) => {
            c.last_transition_time = if old.status == c.status {
                old.last_transition_time.clone()
            } else {
                stamp
            };
            *old = c;
        }
        None => {
            c.last_transition_time = stamp;
            st.conditions.push(c);
        }
    }
}

/// Unix seconds as RFC 3339 (UTC); the epoch for out-of-range values.
pub fn rfc3339(secs: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}
