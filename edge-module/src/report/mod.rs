//! What the agent reports through the twin: `firmware`, `firmware-version` and `firmware-state` as `actual` values,
//! queued in the durable outbox and handed to the MQTT publisher.

pub mod outbox;
pub mod progress;

use std::sync::Mutex;

use tokio::sync::Notify;

use mqtt_schema::{FirmwareState, TwinNames};

use outbox::{Outbox, OutboxError, Pending, TwinValues};

/// One report: the state always, the firmware and its version when they are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `firmware-state` (`installed`, `downloading:40`, `failed:flash-failed`, ...).
    pub state: FirmwareState,
    /// `firmware` and `firmware-version`: what is installed and verified.
    pub installed: Option<(String, String)>,
}

impl Report {
    /// True when this report is a settled state: it ends an intent (installed, failed, rejected), or there is none
    /// (idle). Such reports are kept on disk until acknowledged, and confirmed once after a start (see the outbox):
    /// nothing follows them until something happens, so they must not be lost.
    pub fn terminal(&self) -> bool {
        matches!(
            self.state,
            FirmwareState::Idle
                | FirmwareState::Installed
                | FirmwareState::Failed(_)
                | FirmwareState::Rejected(_)
        )
    }

    /// The progress stage this report belongs to (`downloading`, `flashing`); None for a state. Progress of the
    /// same stage merges in the outbox, states never do.
    pub fn stage(&self) -> Option<&'static str> {
        match self.state {
            FirmwareState::Downloading(_) => Some("downloading"),
            FirmwareState::Flashing(_) => Some("flashing"),
            _ => None,
        }
    }

    /// The twin values of this report. With nothing installed and verified (a fresh device, or a failed flash that
    /// erased the old image) `firmware` and `firmware-version` are reported empty, which KubeEdge accepts: the twin
    /// must not keep naming an image that is gone, or a rollback to it would look done and never be delivered.
    pub fn values(&self, names: &TwinNames) -> TwinValues {
        let mut v = TwinValues::new();
        v.insert(names.state.clone(), self.state.to_string());
        let (reference, version) = match &self.installed {
            Some((reference, version)) => {
                (reference.clone(), mqtt_schema::version_to_twin(version))
            }
            None => (String::new(), String::new()),
        };
        v.insert(names.firmware.clone(), reference);
        v.insert(names.version.clone(), version);
        v
    }
}

/// The outbox shared by the jobs (writers) and the publisher (reader), with a wake-up for the publisher.
#[derive(Debug)]
pub struct ReportQueue {
    outbox: Mutex<Outbox>,
    changed: Notify,
    /// Devices whose twin edgecore is asked for (MQTT mode: a `twin` confirmation check waits for it).
    wanted_gets: Mutex<std::collections::BTreeSet<String>>,
}

impl ReportQueue {
    /// Wraps an opened outbox.
    pub fn new(outbox: Outbox) -> ReportQueue {
        ReportQueue {
            outbox: Mutex::new(outbox),
            changed: Notify::new(),
            wanted_gets: Mutex::new(std::collections::BTreeSet::new()),
        }
    }

    /// Asks the link for a `twin/get` of `device` (MQTT mode; the answer reaches [`crate::device::Device`]).
    pub fn want_get(&self, device: &str) {
        self.wanted_gets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(device.to_owned());
        self.changed.notify_one();
    }

    /// The devices [`ReportQueue::want_get`] named since the last call.
    pub fn take_wanted_gets(&self) -> std::collections::BTreeSet<String> {
        std::mem::take(
            &mut *self
                .wanted_gets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a report durably and wakes the publisher.
    pub fn put(
        &self,
        device: &str,
        names: &TwinNames,
        report: &Report,
    ) -> Result<u64, OutboxError> {
        let seq = self.lock().put(
            device,
            report.values(names),
            report.terminal(),
            report.stage(),
        )?;
        self.changed.notify_one();
        Ok(seq)
    }

    /// Report `seq` of `device` was acknowledged (see [`Outbox::acked`]); wakes the publisher when a confirmation
    /// was queued. True when a report was forgotten.
    pub fn acked(&self, device: &str, seq: u64) -> Result<bool, OutboxError> {
        let mut outbox = self.lock();
        let forgotten = outbox.acked(device, seq)?;
        let owed = !outbox.pending_for(device).is_empty();
        drop(outbox);
        if forgotten && owed {
            self.changed.notify_one();
        }
        Ok(forgotten)
    }

    /// The front report of `device` went unanswered: keep only the newest (see [`Outbox::collapse`]).
    pub fn collapse(&self, device: &str) -> Result<bool, OutboxError> {
        self.lock().collapse(device)
    }

    /// See [`Outbox::collapse_before_settled`].
    pub fn collapse_before_settled(&self) -> Result<usize, OutboxError> {
        self.lock().collapse_before_settled()
    }

    /// See [`Outbox::collapse_all`].
    pub fn collapse_all(&self) -> Result<usize, OutboxError> {
        self.lock().collapse_all()
    }

    /// See [`Outbox::set_first_confirmation`].
    pub fn set_first_confirmation(&self, on: bool) {
        self.lock().set_first_confirmation(on);
    }

    /// Forgets every report of a device no longer managed.
    pub fn forget(&self, device: &str) -> Result<(), OutboxError> {
        self.lock().forget(device)
    }

    /// The reports `device` still owes, in order.
    pub fn pending_for(&self, device: &str) -> Vec<Pending> {
        self.lock().pending_for(device).to_vec()
    }

    /// True when `device` has a report queued or in flight.
    pub fn owes(&self, device: &str) -> bool {
        !self.lock().pending_for(device).is_empty()
    }

    /// The next report owed by each device, as (device, pending) pairs.
    pub fn fronts(&self) -> Vec<(String, Pending)> {
        self.lock()
            .fronts()
            .map(|(d, p)| (d.to_owned(), p.clone()))
            .collect()
    }

    /// Reports still owed.
    pub fn depth(&self) -> usize {
        self.lock().depth()
    }

    /// Waits until something is queued.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_installed_is_reported_as_empty_values_not_left_out() {
        let names = TwinNames::default();
        let failed = Report {
            state: FirmwareState::Failed(mqtt_schema::ErrorCode::FlashFailed.into()),
            installed: None,
        };
        assert!(failed.terminal());
        let v = failed.values(&names);
        assert_eq!(v.get(&names.firmware).map(String::as_str), Some(""));
        assert_eq!(v.get(&names.version).map(String::as_str), Some(""));
        assert_eq!(
            v.get(&names.state).map(String::as_str),
            Some("failed:flash-failed")
        );

        let installed = Report {
            state: FirmwareState::Installed,
            installed: Some(("r@sha256:0".into(), "1.4.2+b7".into())),
        };
        assert!(installed.terminal());
        assert!(
            !Report {
                state: FirmwareState::Downloading(40),
                installed: None
            }
            .terminal()
        );
        let v = installed.values(&names);
        assert_eq!(
            v.get(&names.firmware).map(String::as_str),
            Some("r@sha256:0")
        );
        assert_eq!(v.get(&names.version).map(String::as_str), Some("1.4.2_b7"));
    }
}
