//! The mapper's side of edgecore's DeviceManagerService: registration, and every report within the node's budget.
//!
//! - **Registration.** `MapperRegister` with data at start, whenever edgecore answers Unavailable, and whenever
//!   edgecore's socket is created anew: its answer is the only catch-up there is, and there is no heartbeat (golden
//!   a02, e14). Retried with backoff (1 s doubling to 30 s, jitter) while edgecore is away.
//! - **edgecore restarts.** edgecore pushes nothing after its own start (e14) and unlinks and recreates its socket
//!   at every start (cri-client `CreateListener`). Every second (`WATCH_EVERY`) the reporter stats that socket:
//!   when its identity (device, inode, ctime) is not the one it registered with, or it appears, it registers again
//!   at once, however long the backoff had grown. A stat costs no DMI call.
//! - **Reports.** One `ReportDeviceStatus` per device carries all three twins (`firmware` with its observedDesired,
//!   the reference acted on). A report leaves the outbox when edgecore answers OK; otherwise it is retried.
//! - **The budget.** edgecore's DMI server lets the node make one call per second with a burst of 100, for every
//!   mapper together; over it a call fails and is dropped (golden e16). The reporter keeps its own token bucket
//!   below that (`kubeedge.dmi_calls_per_sec`, `kubeedge.dmi_burst`), drains it when edgecore still refuses, and
//!   spends it on settled states first, then other states, then progress, then confirmations, then periodic
//!   re-reports, then device reachability. When tokens are short, a device's queue collapses to its newest state.
//! - **Newest first.** A settled report never waits behind older reports of its device (they are dropped), and
//!   after edgecore was away (registration lost and regained) each device's queue collapses to its newest state:
//!   old progress is never replayed.
//! - **No races.** edgecore applies each twin of a report on its own goroutine, in no fixed order (golden d02), so
//!   two quick reports of one device could be applied in the wrong order. Two reports of one device are therefore at
//!   least `kubeedge.report_spacing_ms` (1 s) apart, except a settled report after an unsettled one (the end of an
//!   install), which waits only `SETTLED_SPACING` (200 ms, far more than edgecore takes to apply a report): the
//!   final state is not delayed, and should edgecore still apply the older report last, the confirmation repairs it.
//! - **Confirmation.** cloudcore loses twin values: the first value of a twin its DeviceStatus lacks (cloud01), and
//!   any value written between two syncs of one Device when its DeviceStatus cache lags (it patches the whole twin
//!   list from that cache; docs/kubeedge.md section 8). So `kubeedge.confirm_after_ms` (5 s) after edgecore accepted a
//!   settled report, the device reports the same values again, in two calls `report_spacing_ms` apart:
//!   `firmware` and `firmware-version`, then `firmware-state`. A call of at most two twins cannot revert one of its
//!   own twins in cloudcore (only a third sync can be computed from the object the first one wrote), and the spacing
//!   lets cloudcore's cache catch up in between. A newer report of the device cancels it. A device's first settled
//!   state since the agent started is confirmed in two such rounds: while its twins are new to DeviceStatus,
//!   cloudcore can write back an object from before a twin's entry existed, and then loses the next value of that
//!   twin too (it only re-creates the entry, cloud01); the second round lands it.
//! - **First the catch-up.** Nothing is reported before the first registration's device list was applied, so a
//!   device reports what it does with its intent, not an `idle` from before it knew it.
//! - **Anti-entropy.** DMI has no way to read edgecore's twin. Each device's last report is sent again every
//!   period: its `firmware-state` property's `reportCycle` (else `twin.anti_entropy_secs`), stretched so that these
//!   re-reports use at most a quarter of the budget (100 devices at 1 call/s: every 400 s). A changed Device
//!   (twinflash-cloud's nudge) makes a device report at once (see the fleet).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use twinflash_dmi::mapper::{
    CallError, DeviceState, EdgecoreClient, MapperInfo, StateReport, StatusReport, TwinReport,
};

use super::fleet::Fleet;
use crate::metrics::Metrics;
use crate::quiet::Quiet;
use crate::report::ReportQueue;
use crate::report::outbox::TwinValues;

/// The share of the budget periodic re-reports may use.
const PERIODIC_SHARE: f64 = 0.25;
/// How often edgecore's socket is looked at (a stat, no DMI call).
pub const WATCH_EVERY: Duration = Duration::from_secs(1);
/// The least time between an unsettled report of a device and its settled one (the end of an install).
pub const SETTLED_SPACING: Duration = Duration::from_millis(200);

/// How the reporter spends edgecore's budget.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Calls per second, sustained.
    pub rate: f64,
    /// Calls at once.
    pub burst: u32,
    /// Least time between two reports of one device.
    pub spacing: Duration,
    /// The re-report period of a device without a report cycle.
    pub period: Duration,
    /// A settled state is reported again this long after edgecore accepted it; None: never.
    pub confirm_after: Option<Duration>,
}

/// See the module doc.
pub struct Reporter {
    fleet: Arc<Fleet>,
    reports: Arc<ReportQueue>,
    metrics: Arc<Metrics>,
    client: EdgecoreClient,
    /// edgecore's DMI socket, watched for restarts.
    socket: PathBuf,
    info: MapperInfo,
    budget: Budget,
    quiet: Quiet,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").finish_non_exhaustive()
    }
}

/// What a call carries.
#[derive(Debug, Clone, PartialEq)]
enum Job {
    /// The outbox's front report `seq`.
    Outbox {
        seq: u64,
        twins: TwinValues,
        settled: bool,
    },
    /// Part `part` of a settled state's confirmation: these twins of it.
    Confirm { part: usize, twins: TwinValues },
    /// The periodic re-report.
    Periodic(TwinValues),
    /// The device's reachability.
    Reach(DeviceState),
}

/// A settled state to report again (see the module doc).
#[derive(Debug, Clone)]
struct Confirm {
    due: Instant,
    twins: TwinValues,
    /// The next part to send: even parts carry `firmware` and `firmware-version`, odd ones `firmware-state`.
    part: usize,
    /// The parts to send: [`ROUND`], or two rounds for a device's first settled state since the agent started.
    parts: usize,
}

/// The parts of one round of a confirmation: no call carries three twins (see the module doc).
const ROUND: usize = 2;

/// Who a socket file is: a new one after every edgecore start, even at the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketId {
    dev: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

/// The identity of the file at `path`, None when there is none.
pub fn socket_id(path: &Path) -> Option<SocketId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(SocketId {
        dev: m.dev(),
        ino: m.ino(),
        ctime: m.ctime(),
        ctime_nsec: m.ctime_nsec(),
    })
}

/// True for a `firmware-state` that ends an intent or says there is none.
fn settled_state(state: &str) -> bool {
    state == "installed"
        || state == "idle"
        || state.starts_with("failed:")
        || state.starts_with("rejected:")
}

#[derive(Debug)]
struct Candidate {
    device: String,
    priority: u8,
    ready: Instant,
    job: Job,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    counted: Instant,
    registered: bool,
    next_register: Instant,
    register_backoff: Duration,
    down_since: Option<Instant>,
    /// edgecore's socket as last seen, and as it was when the agent registered.
    seen: Option<SocketId>,
    registered_with: Option<SocketId>,
    next_watch: Instant,
    /// When each device last reported, and whether that report was settled.
    last_sent: HashMap<String, (Instant, bool)>,
    confirm: HashMap<String, Confirm>,
    /// Devices with a confirmation done since the agent started.
    confirmed: HashSet<String>,
    periodic: HashMap<String, Instant>,
    retry: HashMap<String, (Instant, Duration)>,
    reach_sent: HashMap<String, DeviceState>,
    reach_owed: HashMap<String, DeviceState>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The reachability a reported state tells, where the backend knows it: a probe that is not connected is offline;
/// a device that was flashed, read back or is being flashed is online.
pub fn reachability(state: &str) -> Option<DeviceState> {
    if state.ends_with(":probe-not-found") {
        Some(DeviceState::Offline)
    } else if state == "installed" || state == "idle" || state.starts_with("flashing") {
        Some(DeviceState::Online)
    } else {
        None
    }
}

impl Reporter {
    /// A reporter for `fleet`, calling edgecore on `socket` through `client` as the mapper `info`.
    pub fn new(
        fleet: Arc<Fleet>,
        reports: Arc<ReportQueue>,
        metrics: Arc<Metrics>,
        (client, socket): (EdgecoreClient, PathBuf),
        info: MapperInfo,
        budget: Budget,
    ) -> Reporter {
        Reporter {
            fleet,
            reports,
            metrics,
            client,
            socket,
            info,
            budget,
            quiet: Quiet::new(Duration::from_secs(60)),
        }
    }

    fn period(&self, cycle: Option<Duration>, devices: usize) -> Duration {
        let base = cycle.unwrap_or(self.budget.period);
        let floor =
            Duration::from_secs_f64(devices as f64 / (self.budget.rate * PERIODIC_SHARE).max(1e-3));
        base.max(floor)
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let now = Instant::now();
        let mut st = State {
            tokens: f64::from(self.budget.burst),
            counted: now,
            registered: false,
            next_register: now,
            register_backoff: Duration::from_secs(1),
            down_since: None,
            seen: socket_id(&self.socket),
            registered_with: None,
            next_watch: now + WATCH_EVERY,
            last_sent: HashMap::new(),
            confirm: HashMap::new(),
            confirmed: HashSet::new(),
            periodic: HashMap::new(),
            retry: HashMap::new(),
            reach_sent: HashMap::new(),
            reach_owed: HashMap::new(),
        };
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let now = Instant::now();
            if now >= st.next_watch {
                self.watch(&mut st, now);
                st.next_watch = now + WATCH_EVERY;
            }
            self.refill(&mut st, now);
            let wait_until = if !st.registered {
                if now >= st.next_register && st.tokens >= 1.0 {
                    self.register(&mut st).await;
                    continue;
                }
                st.next_register.max(self.token_at(&st, now))
            } else {
                match self.next(&mut st, now) {
                    Ok(c) if st.tokens >= 1.0 => {
                        self.send(&mut st, c).await;
                        continue;
                    }
                    Ok(_) => self.token_at(&st, now),
                    Err(next) => next,
                }
            };
            let wait_until = wait_until.min(st.next_watch);
            tokio::select! {
                () = tokio::time::sleep_until(wait_until.into()) => {}
                () = self.reports.changed() => {}
                () = self.fleet.changed.notified() => {}
                () = shutdown.cancelled() => break,
            }
        }
    }

    fn refill(&self, st: &mut State, now: Instant) {
        let earned = now.saturating_duration_since(st.counted).as_secs_f64() * self.budget.rate;
        st.tokens = (st.tokens + earned).min(f64::from(self.budget.burst));
        st.counted = now;
    }

    fn token_at(&self, st: &State, now: Instant) -> Instant {
        if st.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - st.tokens) / self.budget.rate)
        }
    }

    /// Looks at edgecore's socket: a new one (edgecore started) means registering again, at once.
    fn watch(&self, st: &mut State, now: Instant) {
        let id = socket_id(&self.socket);
        if id == st.seen {
            return;
        }
        st.seen = id;
        if id.is_none() {
            tracing::warn!(socket = %self.socket.display(), "edgecore's DMI socket is gone (edgecore stopped); registering again when it is back");
        } else {
            tracing::info!(socket = %self.socket.display(), "edgecore's DMI socket was created anew (edgecore started); registering again");
        }
        if st.registered && st.registered_with != id {
            st.registered = false;
            self.metrics.set_broker_connected(false);
            st.down_since.get_or_insert(now);
        }
        if id.is_some() && !st.registered {
            st.next_register = now;
            st.register_backoff = Duration::from_secs(1);
        }
    }

    async fn register(&mut self, st: &mut State) {
        st.tokens -= 1.0;
        let socket = socket_id(&self.socket);
        match self.client.register(&self.info).await {
            Ok(answer) => {
                st.registered = true;
                st.registered_with = socket;
                st.register_backoff = Duration::from_secs(1);
                self.metrics.set_broker_connected(true);
                let after = st.down_since.take().map(|t| t.elapsed().as_secs_f32());
                tracing::info!(protocol = self.info.protocol(), devices = answer.device_list.len(), after_secs = ?after, "registered with edgecore as a DMI mapper");
                // The catch-up is applied before anything is reported (see the module doc).
                let applied = self.fleet.sync(answer.device_list);
                let _ = applied.await;
                // Whatever queued up meanwhile: each device reports its newest state first.
                match self.reports.collapse_all() {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(
                            devices = n,
                            "reports queued while edgecore was away collapsed to each device's newest state"
                        );
                    }
                    Err(e) => {
                        tracing::error!(code = %e.code(), error = %e, "cannot collapse the queued reports");
                    }
                }
            }
            Err(e) => {
                self.metrics.set_broker_connected(false);
                if st.down_since.is_none() {
                    st.down_since = Some(Instant::now());
                    tracing::warn!(code = ?e.code, error = %e, "cannot register with edgecore's DMI server; retrying with backoff");
                }
                if e.rate_limited() {
                    st.tokens = 0.0;
                }
                let wait = st.register_backoff.mul_f64(rand::random_range(0.5..=1.0));
                st.next_register = Instant::now() + wait;
                st.register_backoff = (st.register_backoff * 2).min(Duration::from_secs(30));
            }
        }
    }

    /// The next call to make, or when to look again.
    fn next(&self, st: &mut State, now: Instant) -> Result<Candidate, Instant> {
        // A settled state waits for nothing older (see the module doc).
        if let Err(e) = self.reports.collapse_before_settled() {
            tracing::error!(code = %e.code(), error = %e, "cannot collapse the queued reports");
        }
        let mut cands = Vec::new();
        let settled_spacing = SETTLED_SPACING.min(self.budget.spacing);
        let spacing = |dev: &str, settled: bool| match st.last_sent.get(dev) {
            None => now,
            Some((t, last_settled)) if settled && !last_settled => *t + settled_spacing,
            Some((t, _)) => *t + self.budget.spacing,
        };
        let retry = |dev: &str| st.retry.get(dev).map(|(at, _)| *at);
        for (dev, p) in self.reports.fronts() {
            // A device being added (its job may report before it is listed) or removed (its reports are forgotten).
            if !self.fleet.knows(&dev) {
                continue;
            }
            let mut ready = spacing(&dev, p.terminal);
            if let Some(at) = retry(&dev) {
                ready = ready.max(at);
            }
            let priority = if p.terminal {
                0
            } else if p.merge.is_none() {
                1
            } else {
                2
            };
            cands.push(Candidate {
                device: dev,
                priority,
                ready,
                job: Job::Outbox {
                    seq: p.seq,
                    twins: p.twins,
                    settled: p.terminal,
                },
            });
        }
        // A confirmation is moot once the device has something newer to say.
        st.confirm
            .retain(|d, _| self.fleet.knows(d) && !self.reports.owes(d));
        for (dev, c) in &st.confirm {
            let Some(names) = self.fleet.names(dev) else {
                continue;
            };
            let part: &[&String] = if c.part % 2 == 0 {
                &[&names.firmware, &names.version]
            } else {
                &[&names.state]
            };
            let twins: TwinValues = c
                .twins
                .iter()
                .filter(|(k, _)| part.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut ready = c.due.max(spacing(dev, true));
            if let Some(at) = retry(dev) {
                ready = ready.max(at);
            }
            cands.push(Candidate {
                device: dev.clone(),
                priority: 3,
                ready,
                job: Job::Confirm {
                    part: c.part,
                    twins,
                },
            });
        }
        let ids = self.fleet.ids();
        let count = ids.len();
        st.periodic.retain(|d, _| ids.iter().any(|(id, _)| id == d));
        for (dev, cycle) in ids {
            let period = self.period(cycle, count);
            let due = *st
                .periodic
                .entry(dev.clone())
                .or_insert_with(|| now + period.mul_f64(rand::random_range(0.9..=1.0)));
            if self.reports.owes(&dev) || st.confirm.contains_key(&dev) {
                continue;
            }
            if let Some(values) = self.fleet.last_values(&dev) {
                cands.push(Candidate {
                    ready: due.max(spacing(&dev, false)),
                    device: dev,
                    priority: 4,
                    job: Job::Periodic(values),
                });
            }
        }
        st.reach_owed.retain(|d, _| self.fleet.knows(d));
        for (dev, state) in &st.reach_owed {
            cands.push(Candidate {
                device: dev.clone(),
                priority: 5,
                ready: now,
                job: Job::Reach(*state),
            });
        }
        let ready = cands.iter().filter(|c| c.ready <= now).count();
        let earliest = cands.iter().map(|c| c.ready).min();
        let Some(mut best) = cands
            .into_iter()
            .filter(|c| c.ready <= now)
            .min_by_key(|c| (c.priority, c.ready))
        else {
            // Nothing due: look again when the earliest is, and at least once a minute.
            return Err(earliest.unwrap_or(now + Duration::from_secs(60)));
        };
        // Tokens are short: send the newest state only.
        if matches!(best.job, Job::Outbox { .. })
            && st.tokens < ready as f64
            && self.reports.collapse(&best.device).unwrap_or(false)
            && let Some(p) = self.reports.pending_for(&best.device).first()
        {
            best.job = Job::Outbox {
                seq: p.seq,
                twins: p.twins.clone(),
                settled: p.terminal,
            };
        }
        Ok(best)
    }

    async fn send(&mut self, st: &mut State, c: Candidate) {
        st.tokens -= 1.0;
        let now = Instant::now();
        let dev = c.device.clone();
        let result = match &c.job {
            Job::Outbox { twins, .. } | Job::Confirm { twins, .. } | Job::Periodic(twins) => {
                match self.status(&dev, twins) {
                    Some(report) => self.client.report_status(&report).await,
                    None => Ok(()),
                }
            }
            Job::Reach(state) => {
                let (ns, name) = dev.split_once('/').unwrap_or(("", dev.as_str()));
                match StateReport::new(ns, name, *state) {
                    Some(r) => self.client.report_states(&r).await,
                    None => Ok(()),
                }
            }
        };
        match result {
            Ok(()) => {
                st.retry.remove(&dev);
                match c.job {
                    Job::Outbox {
                        seq,
                        twins,
                        settled,
                    } => {
                        if let Err(e) = self.reports.acked(&dev, seq) {
                            tracing::error!(code = %e.code(), error = %e, "cannot clear an acknowledged report");
                        }
                        self.metrics.set_outbox_depth(self.reports.depth());
                        if settled && let Some(after) = self.budget.confirm_after {
                            st.confirm.insert(
                                dev.clone(),
                                Confirm {
                                    due: now + after,
                                    twins: twins.clone(),
                                    part: 0,
                                    // A device's first settled state since the start: twice (module doc).
                                    parts: if st.confirmed.contains(&dev) {
                                        ROUND
                                    } else {
                                        2 * ROUND
                                    },
                                },
                            );
                        }
                        self.after_report(st, &dev, &twins, now);
                    }
                    Job::Confirm { part, twins } => {
                        match st.confirm.get_mut(&dev) {
                            Some(c) if part + 1 < c.parts => c.part = part + 1,
                            _ => {
                                st.confirm.remove(&dev);
                                st.confirmed.insert(dev.clone());
                            }
                        }
                        self.after_report(st, &dev, &twins, now);
                    }
                    Job::Periodic(twins) => self.after_report(st, &dev, &twins, now),
                    Job::Reach(state) => {
                        st.reach_owed.remove(&dev);
                        st.reach_sent.insert(dev, state);
                    }
                }
            }
            Err(e) => self.failed(st, &dev, &e),
        }
    }

    fn after_report(&self, st: &mut State, dev: &str, twins: &TwinValues, now: Instant) {
        let ids = self.fleet.ids();
        let cycle = ids.iter().find(|(d, _)| d == dev).and_then(|(_, c)| *c);
        st.periodic
            .insert(dev.to_owned(), now + self.period(cycle, ids.len()));
        let names = self.fleet.names(dev);
        let state = names.as_ref().and_then(|n| twins.get(&n.state));
        // A report without the state (a confirmation's first part) counts as settled: it repeats one.
        st.last_sent.insert(
            dev.to_owned(),
            (now, state.is_none_or(|s| settled_state(s))),
        );
        if let Some(state) = state
            && let Some(r) = reachability(state)
            && st.reach_sent.get(dev) != Some(&r)
        {
            st.reach_owed.insert(dev.to_owned(), r);
        }
    }

    fn failed(&self, st: &mut State, dev: &str, e: &CallError) {
        self.metrics.retried("dmi-report");
        if e.unavailable() {
            // edgecore is away (restarting, socket gone): register again once it answers.
            st.registered = false;
            st.next_register = Instant::now();
            self.metrics.set_broker_connected(false);
            if st.down_since.is_none() {
                st.down_since = Some(Instant::now());
                tracing::warn!(code = ?e.code, error = %e, "edgecore's DMI server is unreachable; reports wait in the outbox, registering again when it answers");
            }
        } else if e.rate_limited() {
            st.tokens = 0.0;
            self.quiet.warn("dmi rate limit".to_owned(), || {
                tracing::warn!(device = dev, error = %e, "edgecore's node-wide DMI rate limit refused a report (other mappers share it); slowing down");
            });
        } else {
            let wait = st
                .retry
                .get(dev)
                .map_or(Duration::from_secs(1), |(_, next)| *next);
            let next = (wait * 2).min(Duration::from_secs(30));
            st.retry
                .insert(dev.to_owned(), (Instant::now() + wait, next));
            self.quiet.warn(format!("dmi refused {dev}"), || {
                tracing::warn!(device = dev, code = ?e.code, error = %e, "edgecore refused a report; retrying with backoff");
            });
        }
    }

    /// The status report of `dev` with these twin values.
    fn status(&self, dev: &str, twins: &TwinValues) -> Option<StatusReport> {
        let (ns, name) = dev.split_once('/')?;
        let names = self.fleet.names(dev)?;
        let observed = self.fleet.observed(dev);
        let mut list = [&names.firmware, &names.version, &names.state]
            .into_iter()
            .filter_map(|n| {
                twins.get(n).map(|v| TwinReport {
                    property: n.clone(),
                    observed_desired: if *n == names.firmware {
                        observed.clone()
                    } else {
                        String::new()
                    },
                    reported: v.clone(),
                })
            });
        let first = list.next()?;
        Some(StatusReport::new(ns, name, first, list, now_ms()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachability_follows_what_the_backend_knows() {
        assert_eq!(
            reachability("waiting:probe-not-found"),
            Some(DeviceState::Offline)
        );
        assert_eq!(
            reachability("failed:probe-not-found"),
            Some(DeviceState::Offline)
        );
        assert_eq!(reachability("installed"), Some(DeviceState::Online));
        assert_eq!(reachability("flashing:40"), Some(DeviceState::Online));
        assert_eq!(reachability("downloading:40"), None);
        assert_eq!(reachability("failed:registry-unreachable"), None);
    }

    #[test]
    fn a_socket_made_anew_at_the_same_path_is_another_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dmi.sock");
        assert_eq!(socket_id(&path), None);
        let first = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let a = socket_id(&path).unwrap();
        assert_eq!(socket_id(&path), Some(a), "stable while it stays");
        // edgecore's start: unlink, then listen again at the same path (the old inode may be reused).
        drop(first);
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let _second = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_ne!(socket_id(&path), Some(a));
    }

    #[test]
    fn settled_states_are_those_that_end_an_intent() {
        for s in [
            "installed",
            "idle",
            "failed:flash-failed",
            "rejected:invalid-config",
        ] {
            assert!(settled_state(s), "{s}");
        }
        for s in [
            "pending",
            "verifying",
            "downloading:4",
            "flashing:90",
            "waiting:disk-full",
        ] {
            assert!(!settled_state(s), "{s}");
        }
    }
}
