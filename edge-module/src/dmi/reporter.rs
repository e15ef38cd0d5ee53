//! The mapper's side of edgecore's DeviceManagerService: registration, and every report within the node's budget.
//!
//! - **Registration.** `MapperRegister` with data at start, and again whenever edgecore answers Unavailable (it
//!   restarted, or its socket is gone): its answer is the only catch-up there is, and there is no heartbeat
//!   (golden a02, e14). Retried with backoff (1 s doubling to 30 s, jitter) while edgecore is away.
//! - **Reports.** One `ReportDeviceStatus` per device carries all three twins (`firmware` with its observedDesired,
//!   the reference acted on). A report leaves the outbox when edgecore answers OK; otherwise it is retried.
//! - **The budget.** edgecore's DMI server lets the node make one call per second with a burst of 100, for every
//!   mapper together; over it a call fails and is dropped (golden e16). The reporter keeps its own token bucket
//!   below that (`kubeedge.dmi_calls_per_sec`, `kubeedge.dmi_burst`), drains it when edgecore still refuses, and
//!   spends it on settled states first, then other states, then progress, then periodic re-reports, then device
//!   reachability. When tokens are short, a device's queue collapses to its newest state.
//! - **No races.** edgecore applies each twin of a report on its own goroutine, in no fixed order (golden d02), so
//!   two quick reports of one device could be applied in the wrong order. Two reports of one device are therefore at
//!   least `kubeedge.report_spacing_ms` (1 s) apart: the first is applied long before the second arrives. The cloud's
//!   loss of a new twin's first value (cloud01) is covered as in the MQTT mode: the first settled report after a
//!   start is sent twice (the outbox's confirmation), and any other report is followed by more.
//! - **First the catch-up.** Nothing is reported before the first registration's device list was applied, so a
//!   device reports what it does with its intent, not an `idle` from before it knew it.
//! - **Anti-entropy.** DMI has no way to read edgecore's twin. Each device's last report is sent again every
//!   period: its `firmware-state` property's `reportCycle` (else `twin.anti_entropy_secs`), stretched so that these
//!   re-reports use at most a quarter of the budget (100 devices at 1 call/s: every 400 s). A changed Device
//!   (twinflash-cloud's nudge) makes a device report at once (see the fleet).

use std::collections::HashMap;
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
}

/// See the module doc.
pub struct Reporter {
    fleet: Arc<Fleet>,
    reports: Arc<ReportQueue>,
    metrics: Arc<Metrics>,
    client: EdgecoreClient,
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
    Outbox { seq: u64, twins: TwinValues },
    /// The periodic re-report.
    Periodic(TwinValues),
    /// The device's reachability.
    Reach(DeviceState),
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
    last_sent: HashMap<String, Instant>,
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
    /// A reporter for `fleet`, calling edgecore through `client` as the mapper `info`.
    pub fn new(
        fleet: Arc<Fleet>,
        reports: Arc<ReportQueue>,
        metrics: Arc<Metrics>,
        client: EdgecoreClient,
        info: MapperInfo,
        budget: Budget,
    ) -> Reporter {
        Reporter {
            fleet,
            reports,
            metrics,
            client,
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
            last_sent: HashMap::new(),
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

    async fn register(&mut self, st: &mut State) {
        st.tokens -= 1.0;
        match self.client.register(&self.info).await {
            Ok(answer) => {
                st.registered = true;
                st.register_backoff = Duration::from_secs(1);
                self.metrics.set_broker_connected(true);
                let after = st.down_since.take().map(|t| t.elapsed().as_secs());
                tracing::info!(protocol = self.info.protocol(), devices = answer.device_list.len(), after_secs = ?after, "registered with edgecore as a DMI mapper");
                // The catch-up is applied before anything is reported (see the module doc).
                let applied = self.fleet.sync(answer.device_list);
                let _ = applied.await;
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
        let mut cands = Vec::new();
        let spacing = |dev: &str| {
            st.last_sent
                .get(dev)
                .map_or(now, |t| *t + self.budget.spacing)
        };
        for (dev, p) in self.reports.fronts() {
            // A device being added (its job may report before it is listed) or removed (its reports are forgotten).
            if !self.fleet.knows(&dev) {
                continue;
            }
            let mut ready = spacing(&dev);
            if let Some((at, _)) = st.retry.get(&dev) {
                ready = ready.max(*at);
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
            if self.reports.owes(&dev) {
                continue;
            }
            if let Some(values) = self.fleet.last_values(&dev) {
                cands.push(Candidate {
                    ready: due.max(spacing(&dev)),
                    device: dev,
                    priority: 3,
                    job: Job::Periodic(values),
                });
            }
        }
        st.reach_owed.retain(|d, _| self.fleet.knows(d));
        for (dev, state) in &st.reach_owed {
            cands.push(Candidate {
                device: dev.clone(),
                priority: 4,
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
            };
        }
        Ok(best)
    }

    async fn send(&mut self, st: &mut State, c: Candidate) {
        st.tokens -= 1.0;
        let now = Instant::now();
        let dev = c.device.clone();
        let result = match &c.job {
            Job::Outbox { twins, .. } | Job::Periodic(twins) => match self.status(&dev, twins) {
                Some(report) => self.client.report_status(&report).await,
                None => Ok(()),
            },
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
                    Job::Outbox { seq, twins } => {
                        if let Err(e) = self.reports.acked(&dev, seq) {
                            tracing::error!(code = %e.code(), error = %e, "cannot clear an acknowledged report");
                        }
                        self.metrics.set_outbox_depth(self.reports.depth());
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
        st.last_sent.insert(dev.to_owned(), now);
        let ids = self.fleet.ids();
        let cycle = ids.iter().find(|(d, _)| d == dev).and_then(|(_, c)| *c);
        st.periodic
            .insert(dev.to_owned(), now + self.period(cycle, ids.len()));
        if let Some(names) = self.fleet.names(dev)
            && let Some(state) = twins.get(&names.state)
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
}
