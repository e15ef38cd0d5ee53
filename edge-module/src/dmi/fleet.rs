//! The devices of an agent in DMI mode: they come and go at runtime as edgecore calls the mapper.
//!
//! A call is journaled ([`super::store`]) and answered at once; what it changes is done by one manager task, in
//! order ([`Fleet::run`]): it builds a device's flasher and reads back what is installed (which can take seconds
//! with a probe), starts and retires jobs, and hands intents to the devices. edgecore calls the mapper from one
//! worker for every protocol of the node with a 10 s deadline and never retries (golden e15, e17), so nothing slow
//! happens inside a call.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mqtt_schema::{ErrorCode, FirmwareState, TwinNames};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use twinflash_artifact::Fetcher;
use twinflash_dmi::pb;

use super::spec::{self, DmiDevice};
use super::store::{Kind, Store, StoreError};
use crate::config::{DeviceConfig, EdgeConfig};
use crate::device::Device;
use crate::job::{self, JobContext};
use crate::journal::Journal;
use crate::report::{Report, ReportQueue};
use crate::wire::Intent;

/// Where a device's settings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// A `[[devices]]` entry of the configuration (wins over the Device's config data).
    Toml,
    /// The Device's config data, delivered by edgecore.
    Dmi,
}

/// One managed device.
struct Member {
    source: Source,
    /// The running device; None when its settings are refused (it reports `rejected:invalid-config`).
    device: Option<Arc<Device>>,
    job: Option<JoinHandle<()>>,
    names: TwinNames,
    /// The last Device edgecore delivered for it.
    spec: Option<pb::Device>,
    /// The settings the device runs with.
    settings: Option<DeviceConfig>,
    /// The report of a device whose settings are refused.
    refused: Option<Report>,
    report_cycle: Option<Duration>,
    /// The Device to apply again once a resource is back (the device reports `waiting:`).
    waiting: Option<pb::Device>,
}

/// What the manager task does next.
#[derive(Debug)]
enum Command {
    /// A Device delivered (RegisterDevice, UpdateDevice, or the journal at start).
    Upsert(pb::Device),
    /// A Device removed.
    Remove { namespace: String, name: String },
    /// The devices edgecore holds for this mapper (the answer to MapperRegister): everything else is removed. The
    /// sender is told when it is applied.
    Sync(Vec<pb::Device>, tokio::sync::oneshot::Sender<()>),
    /// A device that waits for a resource (file descriptors, disk space) is tried again.
    Retry(String),
}

/// Why a Device cannot be applied now.
#[derive(Debug, Clone, Copy)]
enum Trouble {
    /// Out of a resource the whole agent shares (file descriptors, disk space): `waiting:<code>`, retried with
    /// backoff; the other devices go on.
    Wait(ErrorCode),
    /// A failure of this device alone (its journal cannot be written): `failed:<code>` until its Device changes.
    Refuse(ErrorCode),
}

/// First and longest wait before a device that waits for a resource is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// File descriptors kept free for what the whole agent needs (edgecore and registry connections, journals,
/// the mapper socket): a device is not loaded into them ([`fd_shortage`]). A quarter of the soft RLIMIT_NOFILE,
/// at most this many.
const FD_RESERVE: usize = 64;

/// Why no device may be loaded now: fewer than the reserve ([`FD_RESERVE`]) file descriptors are left under the
/// soft RLIMIT_NOFILE (read from /proc/self; None when it cannot be read).
fn fd_shortage() -> Option<String> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count();
    let reserve = (soft / 4).min(FD_RESERVE);
    (open + reserve > soft).then(|| {
        format!("{open} of {soft} file descriptors are open; {reserve} are kept for the agent (os error 24)")
    })
}

/// The `waiting:` code when `e` (or an error under it) means a resource of the whole agent is exhausted: out of file
/// descriptors (EMFILE, ENFILE: `internal`) or of disk space (`disk-full`).
fn exhausted(e: &(dyn std::error::Error + 'static)) -> Option<ErrorCode> {
    use nix::libc::{EMFILE, ENFILE, ENOSPC};
    let by_errno = |n: i32| match n {
        EMFILE | ENFILE => Some(ErrorCode::Internal),
        ENOSPC => Some(ErrorCode::DiskFull),
        _ => None,
    };
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if crate::journal::is_disk_full(io) {
                return Some(ErrorCode::DiskFull);
            }
            if let Some(code) = io.raw_os_error().and_then(by_errno) {
                return Some(code);
            }
        }
        cur = err.source();
    }
    // Errors that keep only the words of an I/O error (a flasher's): the errno as std prints it.
    let text = e.to_string();
    [EMFILE, ENFILE, ENOSPC]
        .into_iter()
        .find(|n| text.contains(&format!("(os error {n})")))
        .and_then(by_errno)
}

/// The fleet: the managed devices and the manager's queue.
pub struct Fleet {
    cfg: Arc<EdgeConfig>,
    ctx: Arc<JobContext>,
    fetcher: Arc<Fetcher>,
    reports: Arc<ReportQueue>,
    store: Store,
    members: Mutex<HashMap<String, Member>>,
    commands: mpsc::UnboundedSender<Command>,
    queue: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    /// Settings refused or ignored, logged once per content.
    logged: Mutex<HashSet<String>>,
    /// Devices waiting for a resource: how many times each was tried.
    retries: Mutex<HashMap<String, u32>>,
    /// Woken when the device set changes (the reporter recomputes its periods).
    pub changed: Notify,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").finish_non_exhaustive()
    }
}

/// A call edgecore made cannot be accepted.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The Device has no usable namespace/name.
    #[error("{namespace:?}/{name:?} is not a valid Kubernetes namespace and name")]
    Name { namespace: String, name: String },
    /// It is not a Device of this mapper's protocol.
    #[error("Device {id} uses protocol {protocol:?}, not {ours:?}")]
    Protocol {
        id: String,
        protocol: String,
        ours: String,
    },
    /// The journal cannot be written: the call fails, so edgecore logs it (and MapperRegister hands the Device
    /// over again after the agent restarts).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The journal holds its most Devices ([`super::store::MAX_DEVICES`]).
    #[error(
        "dmi-store-full: the mapper keeps at most {} Devices",
        super::store::MAX_DEVICES
    )]
    Full,
}

/// The id of `namespace/name`, or the error naming both (clipped: they come from outside).
pub fn checked_id(namespace: &str, name: &str) -> Result<String, DeliverError> {
    spec::device_id(namespace, name).ok_or_else(|| DeliverError::Name {
        namespace: mqtt_schema::clip::clip(namespace).to_string(),
        name: mqtt_schema::clip::clip(name).to_string(),
    })
}

impl Fleet {
    /// A fleet with the `[[devices]]` of the configuration already loaded (their jobs run).
    pub async fn new(
        cfg: Arc<EdgeConfig>,
        ctx: Arc<JobContext>,
        fetcher: Arc<Fetcher>,
        reports: Arc<ReportQueue>,
        store: Store,
    ) -> Result<Arc<Fleet>, crate::agent::StartError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let fleet = Arc::new(Fleet {
            cfg: cfg.clone(),
            ctx,
            fetcher,
            reports,
            store,
            members: Mutex::new(HashMap::new()),
            commands: tx,
            queue: Mutex::new(Some(rx)),
            logged: Mutex::new(HashSet::new()),
            retries: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        });
        for dc in &cfg.devices {
            let device = crate::agent::load_device(&cfg, dc, &fleet.fetcher).await?;
            let job = tokio::spawn(job::run(device.clone(), fleet.ctx.clone()));
            fleet.lock().insert(
                dc.id.clone(),
                Member {
                    source: Source::Toml,
                    names: device.names.clone(),
                    device: Some(device),
                    job: Some(job),
                    spec: None,
                    settings: Some(dc.clone()),
                    refused: None,
                    report_cycle: None,
                    waiting: None,
                },
            );
        }
        // The journal: every Device edgecore delivered before, so jobs resume before edgecore answers.
        for dev in fleet.store.devices() {
            let _ = fleet.commands.send(Command::Upsert(dev));
        }
        Ok(fleet)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Member>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn log_once(&self, key: String) -> bool {
        let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
        logged.len() < 10_000 && logged.insert(key)
    }

    /// RegisterDevice / UpdateDevice: journals the Device, then queues it for the manager. Returns at once.
    pub fn deliver(&self, dev: pb::Device) -> Result<String, DeliverError> {
        let id = checked_id(&dev.namespace, &dev.name)?;
        let protocol = dev
            .spec
            .as_ref()
            .and_then(|s| s.protocol.as_ref())
            .map(|p| p.protocol_name.clone())
            .unwrap_or_default();
        if protocol != self.cfg.kubeedge.protocol {
            return Err(DeliverError::Protocol {
                id,
                protocol: mqtt_schema::clip::clip(&protocol).to_string(),
                ours: self.cfg.kubeedge.protocol.clone(),
            });
        }
        if !self.store.admits(Kind::Device, &dev.namespace, &dev.name) {
            return Err(DeliverError::Full);
        }
        self.store
            .put(Kind::Device, &dev.namespace, &dev.name, &dev)?;
        let _ = self.commands.send(Command::Upsert(dev));
        Ok(id)
    }

    /// RemoveDevice: journals the removal, then queues it.
    pub fn remove(&self, namespace: &str, name: &str) -> Result<(), DeliverError> {
        checked_id(namespace, name)?;
        self.store.remove(Kind::Device, namespace, name)?;
        let _ = self.commands.send(Command::Remove {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
        Ok(())
    }

    /// The answer to MapperRegister: journals every Device in it and queues the catch-up; the receiver says when
    /// the manager applied it.
    pub fn sync(&self, devices: Vec<pb::Device>) -> tokio::sync::oneshot::Receiver<()> {
        let (done, applied) = tokio::sync::oneshot::channel();
        let mut kept = Vec::new();
        for dev in devices {
            if spec::device_id(&dev.namespace, &dev.name).is_none() {
                continue;
            }
            if let Err(e) = self
                .store
                .put(Kind::Device, &dev.namespace, &dev.name, &dev)
            {
                tracing::error!(code = %e.code(), error = %e, "cannot journal a Device; it is applied anyway");
            }
            kept.push(dev);
        }
        let _ = self.commands.send(Command::Sync(kept, done));
        applied
    }

    /// The model calls: journaled for `GetDevice`-style inspection; edgecore already merged a model's defaults into
    /// each Device it sends.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs the manager until `shutdown`; then waits for every job (downloads checkpoint, flashes finish).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(mut rx) = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        loop {
            let cmd = tokio::select! {
                c = rx.recv() => c,
                () = shutdown.cancelled() => None,
            };
            let Some(cmd) = cmd else { break };
            match cmd {
                Command::Upsert(dev) => self.upsert(dev).await,
                Command::Remove { namespace, name } => {
                    if let Some(id) = spec::device_id(&namespace, &name) {
                        self.retire(&id, true).await;
                    }
                }
                Command::Sync(devices, done) => {
                    let listed: HashSet<String> = devices
                        .iter()
                        .filter_map(|d| spec::device_id(&d.namespace, &d.name))
                        .collect();
                    for dev in devices {
                        self.upsert(dev).await;
                    }
                    let gone: Vec<String> = self
                        .lock()
                        .iter()
                        .filter(|(id, m)| m.spec.is_some() && !listed.contains(*id))
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in gone {
                        tracing::info!(device = %id, "edgecore no longer lists this Device for the mapper; removing it");
                        if let Some((ns, name)) = id.split_once('/') {
                            let _ = self.store.remove(Kind::Device, ns, name);
                        }
                        self.retire(&id, true).await;
                    }
                    let _ = done.send(());
                }
                Command::Retry(id) => {
                    let dev = self.lock().get_mut(&id).and_then(|m| m.waiting.take());
                    if let Some(dev) = dev {
                        self.upsert(dev).await;
                    }
                }
            }
            self.changed.notify_waiters();
        }
        let jobs: Vec<JoinHandle<()>> = self
            .lock()
            .values_mut()
            .filter_map(|m| m.job.take())
            .collect();
        for j in jobs {
            let _ = j.await;
        }
    }

    async fn upsert(&self, dev: pb::Device) {
        let Some(read) = spec::read(&dev) else {
            return;
        };
        let id = read.id.clone();
        let (same_spec, source, running_settings) = {
            let mut members = self.lock();
            if let Some(m) = members.get_mut(&id) {
                m.waiting = None; // this Device supersedes one waiting to be applied again
            }
            match members.get(&id) {
                Some(m) => (
                    m.spec.as_ref() == Some(&dev),
                    Some(m.source),
                    m.settings.clone(),
                ),
                None => (false, None, None),
            }
        };
        if same_spec {
            return; // a replay (cloudcore restart, registration catch-up): nothing changed
        }
        let settings = match source {
            Some(Source::Toml) => {
                if self.log_once(format!("toml {id}")) {
                    tracing::info!(device = %id, "the [[devices]] entry of the configuration wins over the Device's config data; taking only its intent");
                }
                running_settings.clone().ok_or_else(|| spec::SettingsError {
                    key: "id".into(),
                    reason: "internal: TOML device without settings".into(),
                })
            }
            _ => read.settings.clone(),
        };
        match settings {
            Ok(settings) if running_settings.as_ref() == Some(&settings) => {
                if let Err((trouble, why)) = self.apply(&id, dev.clone(), &read).await {
                    self.trouble(&id, dev, &read, trouble, &why, source).await;
                }
            }
            Ok(settings) => {
                if running_settings.is_some() {
                    tracing::info!(device = %id, "the Device's settings changed; restarting its job with them");
                    self.retire(&id, false).await;
                }
                if let Some(why) = fd_shortage() {
                    self.wait(&id, dev, &read, ErrorCode::Internal, &why).await;
                    return;
                }
                match crate::agent::load_device(&self.cfg, &settings, &self.fetcher).await {
                    Ok(device) => {
                        tracing::info!(device = %id, source = "dmi", "device added");
                        self.lock().insert(
                            id.clone(),
                            Member {
                                source: Source::Dmi,
                                names: device.names.clone(),
                                device: Some(device.clone()),
                                job: None,
                                spec: None,
                                settings: Some(settings),
                                refused: None,
                                report_cycle: read.report_cycle,
                                waiting: None,
                            },
                        );
                        // The intent first, so the job's first report is about it (not an idle from before).
                        if let Err((trouble, why)) = self.apply(&id, dev.clone(), &read).await {
                            self.trouble(&id, dev, &read, trouble, &why, Some(Source::Dmi))
                                .await;
                            return;
                        }
                        let job = tokio::spawn(job::run(device, self.ctx.clone()));
                        if let Some(m) = self.lock().get_mut(&id) {
                            m.job = Some(job);
                        }
                    }
                    Err(e) => match exhausted(&e) {
                        Some(code) => self.wait(&id, dev, &read, code, &e.to_string()).await,
                        None => {
                            let state = FirmwareState::Rejected(ErrorCode::InvalidConfig.into());
                            self.refuse(&id, dev, &read, state, &e.to_string()).await;
                        }
                    },
                }
            }
            Err(e) => {
                if running_settings.is_some() {
                    self.retire(&id, false).await;
                }
                let state = FirmwareState::Rejected(ErrorCode::InvalidConfig.into());
                self.refuse(&id, dev, &read, state, &e.to_string()).await;
            }
        }
    }

    /// A Device that cannot be applied now (see [`Trouble`]). The device's job stops (a `[[devices]]` device keeps
    /// running: only its Device's intent waits); the other devices go on.
    async fn trouble(
        &self,
        id: &str,
        dev: pb::Device,
        read: &DmiDevice,
        trouble: Trouble,
        why: &str,
        source: Option<Source>,
    ) {
        if source == Some(Source::Toml) {
            tracing::error!(device = id, error = %why, "cannot journal the intent of the Device; the [[devices]] entry keeps running");
            if let (Trouble::Wait(_), Some(m)) = (trouble, self.lock().get_mut(id)) {
                m.spec = None;
                m.waiting = Some(dev);
            }
            if let Trouble::Wait(_) = trouble {
                self.schedule_retry(id);
            }
            return;
        }
        self.retire(id, false).await;
        match trouble {
            Trouble::Wait(code) => self.wait(id, dev, read, code, why).await,
            Trouble::Refuse(code) => {
                let state = FirmwareState::Failed(code.into());
                self.refuse(id, dev, read, state, why).await;
            }
        }
    }

    /// A device that waits for a resource: it reports `waiting:<code>` and its Device is applied again after a
    /// backoff, logged once per device and code.
    async fn wait(&self, id: &str, dev: pb::Device, read: &DmiDevice, code: ErrorCode, why: &str) {
        if self.log_once(format!("waiting {id} {code}")) {
            tracing::warn!(device = id, %code, error = %why, "out of a resource the agent shares; the device waits and is tried again");
        }
        let state = FirmwareState::Waiting(code.into());
        self.member_without_device(id, read, state, None);
        if let Some(m) = self.lock().get_mut(id) {
            m.waiting = Some(dev);
        }
        self.schedule_retry(id);
    }

    fn schedule_retry(&self, id: &str) {
        let tries = {
            let mut retries = self.retries.lock().unwrap_or_else(PoisonError::into_inner);
            let n = retries.entry(id.to_owned()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay = RETRY_FIRST
            .saturating_mul(1 << tries.min(8).saturating_sub(1))
            .min(RETRY_MAX);
        let commands = self.commands.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = commands.send(Command::Retry(id));
        });
    }

    /// Hands the Device's intent to the running device. A changed Device whose intent is unchanged (a nudge, a
    /// changed label of a property) makes it report again: that is how twinflash-cloud repairs a stale twin.
    ///
    /// When the intent cannot be journaled, it says why ([`Trouble`]): the caller decides, the manager never waits
    /// here for one device.
    async fn apply(
        &self,
        id: &str,
        dev: pb::Device,
        read: &DmiDevice,
    ) -> Result<(), (Trouble, String)> {
        let device = {
            let mut members = self.lock();
            let Some(m) = members.get_mut(id) else {
                return Ok(());
            };
            m.spec = Some(dev);
            m.report_cycle = read.report_cycle;
            m.device.clone()
        };
        let Some(device) = device else { return Ok(()) };
        let intent = read.intent.clone();
        let Some(intent) = intent else {
            device.rereport(&self.reports);
            self.retries_done(id);
            return Ok(());
        };
        match device.on_intent(&intent) {
            Ok(true) => {
                tracing::info!(device = id, intent = %mqtt_schema::clip::clip(intent.recorded()), "intent journaled");
            }
            Ok(false) => device.rereport(&self.reports),
            Err(e) => {
                let trouble = match exhausted(&e) {
                    Some(code) => Trouble::Wait(code),
                    None => {
                        tracing::error!(device = id, code = %e.code(), error = %e, "cannot journal the intent; the Device is refused until it changes");
                        Trouble::Refuse(e.code())
                    }
                };
                return Err((trouble, e.to_string()));
            }
        }
        self.retries_done(id);
        Ok(())
    }

    fn retries_done(&self, id: &str) {
        self.retries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// A device whose settings are refused (`rejected:invalid-config`) or whose journal cannot be written
    /// (`failed:<code>`): never flashed until its Device changes; it still says what its journal last knew to be
    /// installed.
    async fn refuse(
        &self,
        id: &str,
        dev: pb::Device,
        read: &DmiDevice,
        state: FirmwareState,
        why: &str,
    ) {
        if self.log_once(format!("refused {id} {why}")) {
            tracing::error!(device = id, state = %state, error = %why, "the Device is refused; it is not flashed until it changes");
        }
        self.retries_done(id);
        self.member_without_device(id, read, state, Some(dev));
    }

    /// Records `id` as a member without a running device, reporting `state`.
    fn member_without_device(
        &self,
        id: &str,
        read: &DmiDevice,
        state: FirmwareState,
        spec: Option<pb::Device>,
    ) {
        let installed = Journal::new(&self.cfg.state_dir, id)
            .load()
            .ok()
            .and_then(|s| {
                s.installed
                    .map(|r| (r, s.installed_version.unwrap_or_default()))
            });
        let prefix = read
            .settings
            .as_ref()
            .map(|c| c.twin_prefix.clone())
            .unwrap_or_default();
        let names = TwinNames::with_prefix(&prefix).unwrap_or_default();
        let report = Report { state, installed };
        if let Err(e) = self.reports.put(id, &names, &report) {
            tracing::error!(device = id, code = %e.code(), error = %e, "cannot queue report");
        }
        self.lock().insert(
            id.to_owned(),
            Member {
                source: Source::Dmi,
                device: None,
                job: None,
                names,
                spec,
                settings: None,
                refused: Some(report),
                report_cycle: read.report_cycle,
                waiting: None,
            },
        );
    }

    /// Stops a device's job (after a running flash) and, when `forget`, drops it and its unsent reports. A device
    /// of the `[[devices]]` list is never dropped: only its Device is.
    async fn retire(&self, id: &str, forget: bool) {
        let (device, job) = {
            let mut members = self.lock();
            match members.get_mut(id) {
                Some(m) if m.source == Source::Toml => {
                    m.spec = None;
                    return;
                }
                Some(m) => (m.device.take(), m.job.take()),
                None => return,
            }
        };
        if let Some(device) = &device {
            device.retire();
        }
        if let Some(job) = job {
            let _ = job.await;
        }
        if forget {
            self.lock().remove(id);
            if let Err(e) = self.reports.forget(id) {
                tracing::warn!(device = id, error = %e, "cannot clear the reports of a removed device");
            }
            tracing::info!(device = id, "device removed");
        }
    }

    /// The ids of the managed devices, with their report cycles.
    pub fn ids(&self) -> Vec<(String, Option<Duration>)> {
        self.lock()
            .iter()
            .map(|(id, m)| (id.clone(), m.report_cycle))
            .collect()
    }

    /// True when `id` is managed.
    pub fn knows(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// The twin names of a managed device.
    pub fn names(&self, id: &str) -> Option<TwinNames> {
        self.lock().get(id).map(|m| m.names.clone())
    }

    /// The `firmware` value the device acts on (the observedDesired of its report): the journaled wanted reference
    /// when it is a valid one, else empty.
    pub fn observed(&self, id: &str) -> String {
        let device = self.lock().get(id).and_then(|m| m.device.clone());
        device
            .and_then(|d| d.state().wanted)
            .filter(|w| matches!(Intent::from_twin(w), Intent::Valid(_)))
            .unwrap_or_default()
    }

    /// The values of the device's last report (what a periodic re-report sends).
    pub fn last_values(&self, id: &str) -> Option<crate::report::outbox::TwinValues> {
        let members = self.lock();
        let m = members.get(id)?;
        match (&m.device, &m.refused) {
            (Some(d), _) => d.last_values(),
            (None, Some(r)) => Some(r.values(&m.names)),
            (None, None) => None,
        }
    }

    /// Queues every device's last report again (e.g. nothing is known about what edgecore holds).
    pub fn rereport_all(&self) {
        let members = self.lock();
        for m in members.values() {
            if let Some(d) = &m.device {
                d.rereport(&self.reports);
            }
        }
    }

    /// The devices by source, for `--check-config` and the start log.
    pub fn summary(&self) -> Vec<(String, Source, bool)> {
        let mut out: Vec<_> = self
            .lock()
            .iter()
            .map(|(id, m)| (id.clone(), m.source, m.device.is_some()))
            .collect();
        out.sort();
        out
    }
}
