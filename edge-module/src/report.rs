//! What the agent reports through the twin: `firmware`, `firmware-version` and `firmware-state` as `actual` values,
//! queued in the durable outbox and handed to the MQTT publisher.

use std::sync::Mutex;

use tokio::sync::Notify;

use mqtt_schema::TwinNames;

use crate::outbox::{Outbox, OutboxError, Pending, TwinValues};

/// One report: the state always, the firmware and its version when they are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `firmware-state` value (`installed`, `downloading:40`, `failed:flash-failed`, ...).
    pub state: String,
    /// `firmware` and `firmware-version`: what is installed and verified.
    pub installed: Option<(String, String)>,
    /// True when this report ends an intent; such reports are never replaced before they are acknowledged.
    pub terminal: bool,
}

impl Report {
    /// The twin values of this report.
    pub fn values(&self, names: &TwinNames) -> TwinValues {
        let mut v = TwinValues::new();
        v.insert(names.state.clone(), self.state.clone());
        if let Some((reference, version)) = &self.installed {
            v.insert(names.firmware.clone(), reference.clone());
            v.insert(names.version.clone(), mqtt_schema::version_to_twin(version));
        }
        v
    }
}

/// The outbox shared by the jobs (writers) and the publisher (reader), with a wake-up for the publisher.
#[derive(Debug)]
pub struct ReportQueue {
    outbox: Mutex<Outbox>,
    changed: Notify,
}

impl ReportQueue {
    /// Wraps an opened outbox.
    pub fn new(outbox: Outbox) -> ReportQueue {
        ReportQueue {
            outbox: Mutex::new(outbox),
            changed: Notify::new(),
        }
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
        let seq = self
            .lock()
            .put(device, report.values(names), report.terminal)?;
        self.changed.notify_one();
        Ok(seq)
    }

    /// The broker acknowledged report `seq` of `device`.
    pub fn acked(&self, device: &str, seq: u64) -> Result<(), OutboxError> {
        self.lock().acked(device, seq)
    }

    /// Every report still owed, as (device, pending) pairs.
    pub fn pending(&self) -> Vec<(String, Pending)> {
        self.lock()
            .pending()
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
