//! One device as the agent holds it: its configuration, journal, flasher and the handle the MQTT link uses to hand
//! it intents. The job that acts on it lives in `job`.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use twinflash_flasher::Flasher;

use crate::config::DeviceConfig;
use crate::journal::{Journal, JournalError};
use crate::plan::{self, JobState, OnIntent};
use crate::wire::Intent;
use mqtt_schema::TwinNames;

use crate::report::{Report, ReportQueue};

/// What the link and the job share about one device.
pub struct Device {
    /// The configuration.
    pub cfg: DeviceConfig,
    /// The flashing backend.
    pub flasher: Box<dyn Flasher>,
    /// Its twin names.
    pub names: TwinNames,
    journal: Journal,
    inner: Mutex<Inner>,
    wake: Notify,
    /// The value edgecore's twin last held for the property of a `twin` confirmation check (None: absent).
    app_reported: tokio::sync::watch::Sender<Option<String>>,
    /// Set when the device was removed (DMI): its job ends at the next step, after a running flash.
    retired: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("id", &self.cfg.id).finish()
    }
}

/// Mutable state behind the lock. Never held across an await.
#[derive(Debug, Default)]
pub(crate) struct Inner {
    /// The journaled state.
    pub state: JobState,
    /// True while a flash runs (it is never interrupted).
    pub flashing: bool,
    /// Cancels the running download when a newer intent arrives.
    pub download_cancel: Option<CancellationToken>,
    /// The last report made, re-queued after every reconnect.
    pub last_report: Option<Report>,
    /// When a twin/get last made this device report again.
    pub last_asked: Option<std::time::Instant>,
    /// A coalesced report for twin/get requests is scheduled.
    pub ask_pending: bool,
    /// When an intent last replaced one that had not ended (intents arriving faster than they complete).
    pub churn_at: Option<std::time::Instant>,
}

/// A device whose intents were superseded within this window reports within its budget.
pub const CHURN_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// Requests for the twin within this window are answered by one report.
pub const ASK_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// What to do about a twin/get request (see [`Device::ask`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Report again now.
    Now,
    /// Report again after this long.
    Later(std::time::Duration),
    /// A report is already scheduled.
    AlreadyScheduled,
}

impl Device {
    /// A device whose journal lives under `journal`.
    pub fn new(
        cfg: DeviceConfig,
        flasher: Box<dyn Flasher>,
        journal: Journal,
        state: JobState,
    ) -> Arc<Device> {
        // The prefix was checked with the configuration; the defaults are a safe fallback.
        let names = TwinNames::with_prefix(&cfg.twin_prefix).unwrap_or_default();
        Arc::new(Device {
            names,
            cfg,
            flasher,
            journal,
            inner: Mutex::new(Inner {
                state,
                ..Inner::default()
            }),
            wake: Notify::new(),
            app_reported: tokio::sync::watch::Sender::new(None),
            retired: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The device id (`namespace/name` or `name`).
    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic while holding it; the state inside is still the last one written.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A snapshot of the journaled state.
    pub fn state(&self) -> JobState {
        self.lock().state.clone()
    }

    /// The installed reference and its version, if any.
    pub fn installed_pair(&self) -> Option<(String, String)> {
        let inner = self.lock();
        inner
            .state
            .installed
            .clone()
            .map(|r| (r, inner.state.installed_version.clone().unwrap_or_default()))
    }

    /// Records an intent received from the twin. Returns only when it is journaled on disk, so the caller may
    /// acknowledge the MQTT message afterwards. A repeated intent changes nothing and writes nothing.
    pub fn on_intent(&self, intent: &Intent) -> Result<bool, JournalError> {
        let mut inner = self.lock();
        let mut next = inner.state.clone();
        match plan::on_intent(&mut next, intent, inner.flashing) {
            OnIntent::Unchanged => Ok(false),
            OnIntent::Replace {
                cancel_download,
                superseded,
            } => {
                self.journal.store(&next)?;
                inner.state = next;
                if superseded {
                    inner.churn_at = Some(std::time::Instant::now());
                }
                if cancel_download && let Some(token) = inner.download_cancel.take() {
                    token.cancel();
                }
                drop(inner);
                self.wake.notify_one();
                Ok(true)
            }
        }
    }

    /// Changes the state and journals it before returning. Nothing changes when the journal cannot be written.
    pub fn update_with<R>(
        &self,
        change: impl FnOnce(&mut JobState) -> R,
    ) -> Result<R, JournalError> {
        let mut inner = self.lock();
        let mut next = inner.state.clone();
        let out = change(&mut next);
        if next != inner.state {
            self.journal.store(&next)?;
            inner.state = next;
        }
        Ok(out)
    }

    /// Queues `report` in the outbox and remembers it for re-reports. An outbox that cannot be written is logged:
    /// the journal still holds the truth, and the state is reported again after the next reconnect.
    ///
    /// Queueing and remembering happen under the device lock, as does [`Device::rereport`]: otherwise a re-report
    /// after a reconnect could queue the previous report behind this one, and the cloud would end on a stale state.
    pub fn report(&self, reports: &ReportQueue, report: Report) {
        let mut inner = self.lock();
        if let Err(e) = reports.put(self.id(), &self.names, &report) {
            tracing::error!(device = self.id(), code = %e.code(), error = %e, "cannot queue report");
        }
        inner.last_report = Some(report);
    }

    /// The twin values of the last report made, if any (what anti-entropy compares edgecore's store with).
    pub fn last_values(&self) -> Option<crate::report::outbox::TwinValues> {
        self.lock()
            .last_report
            .as_ref()
            .map(|r| r.values(&self.names))
    }

    /// Queues the last report again (after a reconnect: edgecore does not queue edge-to-cloud syncs).
    pub fn rereport(&self, reports: &ReportQueue) {
        let inner = self.lock();
        if let Some(report) = &inner.last_report
            && let Err(e) = reports.put(self.id(), &self.names, report)
        {
            tracing::error!(device = self.id(), code = %e.code(), error = %e, "cannot queue report");
        }
    }

    /// Someone asked for the twin: says whether to report again now, or after how long (requests within a second
    /// are coalesced into one report at the end of that second, so every watcher is answered and a flood of requests
    /// costs at most two reports a second), or that a report is already scheduled.
    pub fn ask(&self, now: std::time::Instant) -> Ask {
        let mut inner = self.lock();
        match inner.last_asked {
            Some(t) if now.duration_since(t) < ASK_WINDOW => {
                if inner.ask_pending {
                    Ask::AlreadyScheduled
                } else {
                    inner.ask_pending = true;
                    Ask::Later(ASK_WINDOW - now.duration_since(t))
                }
            }
            _ => {
                inner.last_asked = Some(now);
                Ask::Now
            }
        }
    }

    /// The scheduled report of [`Device::ask`] is due: report again.
    pub fn answer_scheduled(&self, reports: &ReportQueue, now: std::time::Instant) {
        {
            let mut inner = self.lock();
            inner.ask_pending = false;
            inner.last_asked = Some(now);
        }
        self.rereport(reports);
    }

    /// True while intents arrive faster than they complete (one superseded another within [`CHURN_WINDOW`]): the
    /// publisher then holds the device's reports to its budget.
    pub fn churning(&self, now: std::time::Instant) -> bool {
        self.lock()
            .churn_at
            .is_some_and(|t| now.saturating_duration_since(t) < CHURN_WINDOW)
    }

    /// The device is no longer managed (its Device was removed, or its settings changed): a running download stops
    /// at once (its partial data stays in the cache), a running flash runs to its end, then the job ends.
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(token) = self.lock().download_cancel.take() {
            token.cancel();
        }
        self.wake.notify_one();
    }

    /// True once [`Device::retire`] was called.
    pub fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Acquire)
    }

    /// edgecore's stored twin answered a `twin/get` with these other twins' actual values: keeps the one a `twin`
    /// confirmation check names (every answer wakes the check, whether the value changed or not).
    pub fn twin_reported(&self, others: &std::collections::BTreeMap<String, String>) {
        if let Some(c) = &self.cfg.confirm
            && let Some(property) = &c.property
        {
            self.app_reported
                .send_replace(others.get(property).cloned());
        }
    }

    /// Follows what [`Device::twin_reported`] keeps.
    pub fn app_reports(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.app_reported.subscribe()
    }

    /// Asks the job to look at its state again (a re-report after a reconnect, a new intent).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}
