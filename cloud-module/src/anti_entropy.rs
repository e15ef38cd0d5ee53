//! Anti-entropy from the cloud (issue 13, point 3): find Devices whose status stopped short of the final state of
//! their intent, and nudge their agent with a `twin/get` on the device's topic (modes `edgecore`, `direct`) or, in
//! mode `dmi`, with a bump of `desired.metadata["twinflash.io/nudge"]` on the `firmware` property: a spec change
//! makes edgecore call the mapper's `UpdateDevice`, and the agent answers any UpdateDevice by reporting that device
//! again (`crate::dmi`).
//!
//! Why: edgecore drops edge -> cloud syncs while its cloud link is down and never re-sends them
//! (docs/kubeedge.md section 8, golden p08): an install that finishes during a cloudcore outage leaves DeviceStatus
//! at "downloading" for as long as the agent stays quiet, and a converged agent is quiet. A `twin/get` from anyone
//! else makes the agent report its state again; edgecore then syncs it, with the link back. The same nudge covers
//! cloudcore's first-write loss (an empty `reported`, section 8 `findOrCreateTwinByName`).
//!
//! Cost: the scan reads the controller's watch caches only (the Device store, and a reflector on `devicestatuses`
//! where the status lives there), so a converged fleet costs no API request, no API write and no MQTT message per
//! period. Only stale Devices are nudged, each at most once per period.
//!
//! [`staleness`] is the pure decision, [`AntiEntropy::scan`] the pure per-period pass over the caches, [`run`] the
//! loop around it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use mqtt_schema::{DeviceId, FirmwareState, TwinNames};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::controller::now_ms;
use crate::crd::{Device, DeviceStatus, DeviceTwinStatus};
use crate::decide::{Reason, Record};
use crate::metrics::Metrics;
use crate::seams::SinkError;

/// The key of `reported.metadata` where cloudcore writes the report's time (ms since the epoch, as a string).
pub const TIMESTAMP_KEY: &str = "timestamp";

/// What the status of one Device says about its current intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staleness {
    /// Anti-entropy is off (period 0).
    Disabled,
    /// No published intent (no record, a rejection, nothing pinned): nothing to converge to.
    NoIntent,
    /// The final state of the current intent is reported: `installed` with `firmware` equal to the pinned
    /// reference, or `failed:`/`rejected:`.
    Converged,
    /// Not final, but reported within the period: the agent is at work, its reports flow.
    Fresh,
    /// Not final and older than the period, or the twin is missing or its reported value empty: nudge.
    Stale,
}

/// The pure decision for one Device.
///
/// `declares_state`: whether the Device declares the state twin in `spec.properties` (cloudcore drops twins it
/// does not declare; such a Device is judged by its `firmware` twin alone, or it would look stale forever).
/// `intent_seen_ms`: when the caller first saw this intent; a report older than that still counts as new until a
/// period has passed since, so a just-published intent (whose status still shows the previous install) is not
/// nudged before the agent had a period to answer.
pub fn staleness(
    record: Option<&Record>,
    status: Option<&DeviceTwinStatus>,
    names: &TwinNames,
    declares_state: bool,
    intent_seen_ms: i64,
    now_ms: i64,
    period: Duration,
) -> Staleness {
    if period.is_zero() {
        return Staleness::Disabled;
    }
    let Some(pinned) = record
        .filter(|r| r.reason == Reason::IntentPublished)
        .map(|r| r.pinned.as_str())
        .filter(|p| !p.is_empty())
    else {
        return Staleness::NoIntent;
    };
    let reported = |name: &str| {
        status
            .and_then(|s| s.twin(name))
            .map(|t| &t.reported)
            .filter(|r| !r.value.is_empty())
    };
    let firmware = reported(&names.firmware);
    let watched = if declares_state {
        let Some(state) = reported(&names.state) else {
            return Staleness::Stale;
        };
        let fw_ok = firmware.is_some_and(|f| f.value == pinned);
        match state.value.parse::<FirmwareState>() {
            Ok(FirmwareState::Installed) if fw_ok => return Staleness::Converged,
            Ok(s) if s.failure().is_some() => return Staleness::Converged,
            _ => state,
        }
    } else {
        match firmware {
            Some(f) if f.value == pinned => return Staleness::Converged,
            Some(f) => f,
            None => return Staleness::Stale,
        }
    };
    let Some(at) = watched
        .metadata
        .get(TIMESTAMP_KEY)
        .and_then(|t| t.parse::<i64>().ok())
    else {
        return Staleness::Stale;
    };
    let period_ms = i64::try_from(period.as_millis()).unwrap_or(i64::MAX);
    if now_ms.saturating_sub(at.max(intent_seen_ms)) >= period_ms {
        Staleness::Stale
    } else {
        Staleness::Fresh
    }
}

/// What one scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Devices to nudge now (stale, and not nudged within the period).
    pub nudge: Vec<DeviceId>,
    /// Devices whose status is stale (nudged now or within the period).
    pub stale: usize,
    /// Devices looked at.
    pub scanned: usize,
}

/// One Device as the caches hold it: its key, its record, its status, whether it declares the state twin.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// The Device.
    pub key: DeviceId,
    /// Its record (the `twinflash.io/*` annotations).
    pub record: Option<Record>,
    /// Its status (`Device.status` or the DeviceStatus object).
    pub status: Option<&'a DeviceTwinStatus>,
    /// Whether `spec.properties` declares the state twin.
    pub declares_state: bool,
}

/// The anti-entropy book: when each intent was first seen and when each Device was last nudged.
#[derive(Debug, Clone)]
pub struct AntiEntropy {
    period: Duration,
    names: TwinNames,
    seen: HashMap<DeviceId, (String, i64)>,
    nudged: HashMap<DeviceId, i64>,
}

impl AntiEntropy {
    /// A book for `period` (0: disabled).
    pub fn new(period: Duration, names: TwinNames) -> AntiEntropy {
        AntiEntropy {
            period,
            names,
            seen: HashMap::new(),
            nudged: HashMap::new(),
        }
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// One pass over every Device of the caches at `now_ms`: which to nudge. Devices no longer in the caches are
    /// forgotten. Pure (no I/O), so its cost is the CPU time of the pass (`bench_anti_entropy`).
    pub fn scan<'a>(
        &mut self,
        devices: impl IntoIterator<Item = Observed<'a>>,
        now_ms: i64,
    ) -> Scan {
        let period_ms = i64::try_from(self.period.as_millis()).unwrap_or(i64::MAX);
        let mut out = Scan::default();
        let mut seen = HashMap::with_capacity(self.seen.len());
        for d in devices {
            out.scanned += 1;
            let pinned = d
                .record
                .as_ref()
                .map(|r| r.pinned.clone())
                .unwrap_or_default();
            let since = match self.seen.remove(&d.key) {
                Some((p, t)) if p == pinned => t,
                _ => now_ms,
            };
            let verdict = staleness(
                d.record.as_ref(),
                d.status,
                &self.names,
                d.declares_state,
                since,
                now_ms,
                self.period,
            );
            if verdict == Staleness::Stale {
                out.stale += 1;
                let last = self.nudged.get(&d.key).copied();
                if last.is_none_or(|t| now_ms.saturating_sub(t) >= period_ms) {
                    self.nudged.insert(d.key.clone(), now_ms);
                    out.nudge.push(d.key.clone());
                }
            }
            seen.insert(d.key, (pinned, since));
        }
        self.nudged.retain(|k, _| seen.contains_key(k));
        self.seen = seen;
        out
    }
}

/// Sends a nudge: in modes `edgecore` and `direct` a `twin/get` with `event_id` on the device's topic
/// (`MqttSink`); in mode `dmi` a bump of the `firmware` property's `desired.metadata["twinflash.io/nudge"]`
/// (`crate::dmi::KubeNudger`), which makes edgecore call the mapper's `UpdateDevice`.
pub trait Nudger: Send + Sync {
    /// Nudges the agent of `device` (`key` is its id; `device` the cached object, for a nudge that patches it).
    fn nudge<'a>(
        &'a self,
        key: &'a DeviceId,
        device: &'a Device,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<(), SinkError>>;
}

/// The caches the scan reads.
#[derive(Clone)]
pub struct Caches {
    /// The controller's Device store.
    pub devices: Store<Device>,
    /// A reflector's store of DeviceStatus objects (`None`: the status is `Device.status`, KubeEdge <= 1.22).
    pub statuses: Option<Store<DeviceStatus>>,
}

impl Caches {
    /// Scans the caches with `book` at `now_ms`.
    pub fn scan(&self, book: &mut AntiEntropy, now_ms: i64) -> Scan {
        let devices = self.devices.state();
        let statuses: Vec<Option<Arc<DeviceStatus>>> = devices
            .iter()
            .map(|d| {
                let store = self.statuses.as_ref()?;
                store.get(&ObjectRef::new(&d.name_any()).within(&d.namespace()?))
            })
            .collect();
        let state = book.names.state.clone();
        let observed = devices.iter().zip(&statuses).filter_map(|(d, ds)| {
            let key = DeviceId::namespaced(d.namespace()?, d.name_any()).ok()?;
            let status = match &self.statuses {
                Some(_) => ds.as_ref().and_then(|s| s.status.as_ref()),
                None => d.status.as_ref(),
            };
            Some(Observed {
                key,
                record: crate::status::record_from_annotations(d.annotations()),
                status,
                declares_state: d.declares(&state),
            })
        });
        book.scan(observed, now_ms)
    }
}

/// Nudges sent at once (each is an API patch in mode `dmi`, a non-blocking publish otherwise).
pub const NUDGE_CONCURRENCY: usize = 8;

/// The interval between scans: a quarter of the period (at least 1 s) with up to 10 % jitter, so a stale Device is
/// nudged within about 1.25 periods of going stale while "at most one nudge per period" still holds (the book
/// checks it per Device); the jitter keeps replicas' and restarts' scans apart.
pub fn scan_interval(period: Duration, salt: u64) -> Duration {
    let base = (period / 4).max(Duration::from_secs(1)).min(period);
    let jitter_ms = u64::try_from(base.as_millis() / 10).unwrap_or(0);
    let extra = if jitter_ms == 0 {
        0
    } else {
        mix(salt) % jitter_ms
    };
    base + Duration::from_millis(extra)
}

/// A cheap integer hash (splitmix64), enough for jitter.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One nudge, with what the loop logs about it (owned: the futures run a few at once).
async fn send_nudge(
    nudger: Arc<dyn Nudger>,
    key: DeviceId,
    device: Arc<Device>,
    event_id: String,
) -> (DeviceId, String, Result<(), SinkError>) {
    let result = nudger.nudge(&key, &device, &event_id).await;
    (key, event_id, result)
}

/// Runs the anti-entropy loop until `cancel` (returns at once for period 0): scans the caches, nudges stale
/// Devices (event id `twinflash-cloud-<n>`; a Device gone from the cache since the scan is skipped), counts nudges
/// and stale Devices in `metrics`.
pub async fn run(
    caches: Caches,
    nudger: Arc<dyn Nudger>,
    period: Duration,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    if period.is_zero() {
        info!("anti-entropy disabled (anti_entropy.period_secs = 0)");
        return;
    }
    let mut book = AntiEntropy::new(period, TwinNames::default());
    let mut n: u64 = 0;
    let salt = u64::from(std::process::id()) ^ u64::try_from(now_ms()).unwrap_or(0);
    let mut round: u64 = 0;
    loop {
        round += 1;
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(scan_interval(period, salt ^ round)) => {}
        }
        let scan = caches.scan(&mut book, now_ms());
        metrics.set_stale(scan.stale);
        let mut nudges = Vec::with_capacity(scan.nudge.len());
        for key in &scan.nudge {
            let at = ObjectRef::new(key.name()).within(key.namespace().unwrap_or_default());
            if let Some(device) = caches.devices.get(&at) {
                n += 1;
                let event_id = format!("{}{n}", crate::direct::OWN_EVENT_PREFIX);
                nudges.push(send_nudge(nudger.clone(), key.clone(), device, event_id));
            }
        }
        // A few at once: a dmi-mode nudge is an API request, and a fleet-wide outage makes every Device stale.
        let mut results = futures::stream::iter(nudges).buffer_unordered(NUDGE_CONCURRENCY);
        while let Some((key, event_id, result)) = results.next().await {
            match result {
                Ok(()) => {
                    metrics.nudged();
                    debug!(device = %key, %event_id, "stale status: agent nudged");
                }
                Err(e) => warn!(device = %key, error = %e, "nudge not sent"),
            }
        }
        if !scan.nudge.is_empty() {
            info!(
                nudged = scan.nudge.len(),
                stale = scan.stale,
                scanned = scan.scanned,
                "anti-entropy: stale statuses nudged"
            );
        }
    }
}

#[cfg(test)]
#[path = "anti_entropy_tests.rs"]
mod tests;
