//! Prometheus metrics of the agent and its `/metrics`, `/healthz` and `/readyz` listener.
//!
//! Metric labels use the stable error codes and state names of the twin, so a dashboard and the twin agree.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabel {
    what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// How the signature check of one fetch ended: the `result` label of `twinflash_edge_signature_checks_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    /// A signature by a trusted key verified.
    Verified,
    /// Rejected under `require`: no signature found (`rejected:unsigned`).
    Unsigned,
    /// Rejected under `require`: signatures found, none verifies (`rejected:signature-invalid`).
    Invalid,
    /// Under `warn`: no good signature, used anyway.
    Warned,
}

impl SignatureCheck {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Unsigned => "unsigned",
            Self::Invalid => "invalid",
            Self::Warned => "warned",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: i64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlashLabel {
    backend: String,
    result: String,
}

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs: Family<StateLabel, Gauge>,
    job_states: Mutex<HashMap<String, String>>,
    bytes_fetched: Counter,
    flash_seconds: Family<FlashLabel, Histogram>,
    broker_connected: Gauge,
    outbox_depth: Gauge,
    dropped: Family<ReasonLabel, Counter>,
    retries: Family<WhatLabel, Counter>,
    edgecore_errors: Family<CodeLabel, Counter>,
    repairs: Counter,
    signature_checks: Family<ResultLabel, Counter>,
    confirm_seconds: Family<ResultLabel, Histogram>,
    revert_seconds: Family<ResultLabel, Histogram>,
    ready: AtomicBool,
    /// Since when the broker link is down (None: up, or never connected yet: see `down_at_start`).
    broker_down_since: Mutex<Option<Instant>>,
    /// `/readyz` fails once the broker link has been down this long.
    unready_after: Mutex<Option<Duration>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `twinflash_edge` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("twinflash_edge");
        let jobs = Family::<StateLabel, Gauge>::default();
        registry.register(
            "jobs",
            "Devices by firmware state (the part of firmware-state before ':')",
            jobs.clone(),
        );
        let bytes_fetched = Counter::default();
        registry.register(
            "fetched_bytes",
            "Artifact bytes received from registries and mirrors",
            bytes_fetched.clone(),
        );
        let flash_seconds = Family::<FlashLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0])
        });
        registry.register(
            "flash_duration_seconds",
            "Duration of flashes, verify included",
            flash_seconds.clone(),
        );
        let broker_connected = Gauge::default();
        registry.register(
            "broker_connected",
            "1 while the intent subscription is connected",
            broker_connected.clone(),
        );
        let outbox_depth = Gauge::default();
        registry.register(
            "outbox_depth",
            "Twin reports not acknowledged yet (by edgecore's result, or the PUBACK with twin.acknowledgement = broker)",
            outbox_depth.clone(),
        );
        let dropped = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "mqtt_dropped_messages",
            "Inbound MQTT messages not handled as sent, by reason: oversized, undecodable and over-transport-cap ones are dropped, an invalid-reference intent is journaled only as a bounded prefix and rejected",
            dropped.clone(),
        );
        let retries = Family::<WhatLabel, Counter>::default();
        registry.register(
            "twin_retries",
            "Reports (what=report) and twin/get requests (what=twin-get) sent again because edgecore did not answer them in time",
            retries.clone(),
        );
        let edgecore_errors = Family::<CodeLabel, Counter>::default();
        registry.register(
            "edgecore_errors",
            "Error results edgecore answered to this agent's reports and twin/get requests, by code (404: the Device is unknown to edgecore)",
            edgecore_errors.clone(),
        );
        let repairs = Counter::default();
        registry.register(
            "anti_entropy_repairs",
            "Times edgecore's stored twin differed from a device's state and the agent reported again",
            repairs.clone(),
        );
        let signature_checks = Family::<ResultLabel, Counter>::default();
        registry.register(
            "signature_checks",
            "Signature checks of fetched artifacts (signatures = warn or require), by result: verified, unsigned and invalid (rejected under require), warned (no good signature, used under warn)",
            signature_checks.clone(),
        );
        let seconds = || Histogram::new([0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]);
        let confirm_seconds = Family::<ResultLabel, Histogram>::new_with_constructor(seconds);
        registry.register(
            "confirm_duration_seconds",
            "Confirmations of flashed firmware ([devices.confirm]): from the end of the flash (device reset) to the check's verdict, by result: confirmed, boot-failed, version-mismatch (a _count per result counts them)",
            confirm_seconds.clone(),
        );
        let revert_seconds = Family::<ResultLabel, Histogram>::new_with_constructor(seconds);
        registry.register(
            "revert_duration_seconds",
            "Reverts after a failed confirmation: from the failed check to the previous firmware confirmed again, by result: reverted, revert-failed",
            revert_seconds.clone(),
        );
        Metrics {
            registry,
            confirm_seconds,
            revert_seconds,
            signature_checks,
            dropped,
            retries,
            edgecore_errors,
            repairs,
            broker_down_since: Mutex::new(Some(Instant::now())),
            unready_after: Mutex::new(None),
            jobs,
            job_states: Mutex::new(HashMap::new()),
            bytes_fetched,
            flash_seconds,
            broker_connected,
            outbox_depth,
            ready: AtomicBool::new(false),
        }
    }

    /// A report or twin/get (`what`) is sent again.
    pub fn retried(&self, what: &'static str) {
        self.retries.get_or_create(&WhatLabel { what }).inc();
    }

    /// edgecore answered an error `code`.
    pub fn edgecore_error(&self, code: i64) {
        self.edgecore_errors
            .get_or_create(&CodeLabel { code })
            .inc();
    }

    /// Counts one signature check of a fetch.
    pub fn signature_check(&self, result: SignatureCheck) {
        self.signature_checks
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
    }

    /// A confirmation ended with `result` after `took`.
    pub fn observe_confirm(&self, result: &'static str, took: Duration) {
        self.confirm_seconds
            .get_or_create(&ResultLabel { result })
            .observe(took.as_secs_f64());
    }

    /// A revert ended with `result` after `took`.
    pub fn observe_revert(&self, result: &'static str, took: Duration) {
        self.revert_seconds
            .get_or_create(&ResultLabel { result })
            .observe(took.as_secs_f64());
    }

    /// Anti-entropy found edgecore's twin stale and the device reported again.
    pub fn anti_entropy_repair(&self) {
        self.repairs.inc();
    }

    /// Records the reported state of a device (`installed`, `downloading:40`, ...).
    pub fn set_job_state(&self, device: &str, state: &str) {
        let kind = state.split(':').next().unwrap_or(state).to_owned();
        let mut states = self
            .job_states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = states.insert(device.to_owned(), kind.clone()) {
            if old == kind {
                return;
            }
            self.jobs.get_or_create(&StateLabel { state: old }).dec();
        }
        self.jobs.get_or_create(&StateLabel { state: kind }).inc();
    }

    /// Adds bytes received by the fetcher.
    pub fn add_bytes_fetched(&self, bytes: u64) {
        self.bytes_fetched.inc_by(bytes);
    }

    /// Records one flash.
    pub fn observe_flash(&self, backend: &str, took: Duration, ok: bool) {
        let label = FlashLabel {
            backend: backend.to_owned(),
            result: if ok { "ok" } else { "error" }.to_owned(),
        };
        self.flash_seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    /// Records whether the broker link is up.
    pub fn set_broker_connected(&self, up: bool) {
        self.broker_connected.set(i64::from(up));
        let mut since = self
            .broker_down_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (up, *since) {
            (true, _) => *since = None,
            (false, None) => *since = Some(Instant::now()),
            (false, Some(_)) => {}
        }
    }

    /// `/readyz` answers 503 once the broker link has been down longer than `after` (None: never for that reason).
    pub fn set_unready_after_broker_down(&self, after: Option<Duration>) {
        *self
            .unready_after
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = after;
    }

    /// Counts an inbound message dropped unhandled; `reason` is one of the label values of the metric's help.
    pub fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Why the agent is not ready at `now`, if it is not.
    pub fn not_ready(&self, now: Instant) -> Option<String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Some("starting".into());
        }
        let after = *self
            .unready_after
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let since = *self
            .broker_down_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (after, since) {
            (Some(after), Some(since)) if now.duration_since(since) > after => Some(format!(
                "broker link down for {} s",
                now.duration_since(since).as_secs()
            )),
            _ => None,
        }
    }

    /// Records the outbox depth.
    pub fn set_outbox_depth(&self, depth: usize) {
        self.outbox_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Marks the agent ready (every job rebuilt from its journal and the link started).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Binds `listen` (`metrics.listen`, an `ip:port` checked at load). The agent binds it before anything else starts
/// and does not start when it cannot: the `/healthz` a liveness probe was configured against would be missing.
pub async fn bind(listen: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.encode() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                match m.not_ready(Instant::now()) {
                    None => (StatusCode::OK, "ready".to_owned()),
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                }
            }),
        )
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_fails_once_the_broker_link_is_down_too_long() {
        let m = Metrics::new();
        let t0 = Instant::now();
        assert_eq!(m.not_ready(t0).as_deref(), Some("starting"));
        m.set_ready();
        m.set_unready_after_broker_down(Some(Duration::from_secs(60)));
        m.set_broker_connected(true);
        assert_eq!(m.not_ready(t0), None);
        m.set_broker_connected(false);
        let down = Instant::now();
        m.set_broker_connected(false); // a failed retry does not restart the clock
        assert_eq!(m.not_ready(down + Duration::from_secs(59)), None);
        assert!(
            m.not_ready(down + Duration::from_secs(61))
                .is_some_and(|w| w.contains("broker link down"))
        );
        m.set_broker_connected(true);
        assert_eq!(m.not_ready(down + Duration::from_secs(61)), None);
        m.set_unready_after_broker_down(None);
        m.set_broker_connected(false);
        assert_eq!(m.not_ready(down + Duration::from_secs(3600)), None);
        m.dropped("oversized");
        assert!(
            m.encode()
                .contains("twinflash_edge_mqtt_dropped_messages_total{reason=\"oversized\"} 1")
        );
    }

    #[test]
    fn signature_checks_are_counted_by_result() {
        let m = Metrics::new();
        m.signature_check(SignatureCheck::Verified);
        m.signature_check(SignatureCheck::Verified);
        m.signature_check(SignatureCheck::Unsigned);
        let text = m.encode();
        for line in [
            "twinflash_edge_signature_checks_total{result=\"verified\"} 2",
            "twinflash_edge_signature_checks_total{result=\"unsigned\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        assert!(!text.contains("result=\"invalid\""), "{text}");
    }

    #[test]
    fn job_states_move_between_labels() {
        let m = Metrics::new();
        m.set_job_state("a", "downloading:10");
        m.set_job_state("a", "downloading:20");
        m.set_job_state("b", "installed");
        m.set_job_state("a", "installed");
        let text = m.encode();
        assert!(
            text.contains("twinflash_edge_jobs{state=\"installed\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("twinflash_edge_jobs{state=\"downloading\"} 0"),
            "{text}"
        );
    }
}
