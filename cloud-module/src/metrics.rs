//! Controller metrics in the Prometheus text format: reconciles, failures by stable error code,
//! intents published and rejections by reason, as plain atomics; the controller's readiness ([`Readiness`]); and
//! the HTTP server of `/metrics`, `/healthz` and `/readyz` (axum).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use mqtt_schema::ErrorCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::decide::Reason;

/// Inbound MQTT messages over the controller's limit, acknowledged and dropped unread (process-wide: the MQTT
/// connection counts them without a handle on the controller's metrics).
pub static MQTT_DROPPED_OVERSIZED: AtomicU64 = AtomicU64::new(0);

/// The controller's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    intents_published: AtomicU64,
    leading: AtomicBool,
    nudges: AtomicU64,
    stale: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    rejections: Mutex<BTreeMap<&'static str, u64>>,
    readiness: Readiness,
}

/// What `/readyz` answers. Leadership is not readiness: a follower standing by is ready (it takes over when the
/// leader goes), a leader is ready once the initial lists of its watches are in.
/// - not ready until the lease election is set up (the API server answered, with this replica's credentials, for
///   the Lease);
/// - a follower: ready (standing by);
/// - a leader: not ready from the start of its term until the Device and FirmwareRollout watches delivered their
///   initial lists, ready after.
#[derive(Debug, Default)]
pub struct Readiness {
    election: AtomicBool,
    /// [`TERM_NONE`], [`TERM_SYNCING`] or [`TERM_SYNCED`].
    term: AtomicU8,
}

const TERM_NONE: u8 = 0;
const TERM_SYNCING: u8 = 1;
const TERM_SYNCED: u8 = 2;

impl Readiness {
    /// The lease election is set up.
    pub fn election_started(&self) {
        self.election.store(true, Ordering::SeqCst);
    }

    /// A leadership term started: not ready until [`Readiness::term_synced`].
    pub fn term_started(&self) {
        self.term.store(TERM_SYNCING, Ordering::SeqCst);
    }

    /// The term's watches hold their initial lists (no effect outside a term).
    pub fn term_synced(&self) {
        let _ = self.term.compare_exchange(
            TERM_SYNCING,
            TERM_SYNCED,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// The term ended (every leader task stopped): standing by again.
    pub fn term_ended(&self) {
        self.term.store(TERM_NONE, Ordering::SeqCst);
    }

    /// `Ok(what this replica does)` when ready, `Err(why not)` otherwise.
    pub fn check(&self) -> Result<&'static str, &'static str> {
        if !self.election.load(Ordering::SeqCst) {
            return Err("lease election not set up yet");
        }
        match self.term.load(Ordering::SeqCst) {
            TERM_SYNCING => Err("leading: the initial lists of the watches are not in yet"),
            TERM_SYNCED => Ok("leading"),
            _ => Ok("standing by"),
        }
    }
}

impl Metrics {
    /// The readiness `/readyz` reports.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// One reconcile started.
    pub fn reconcile(&self) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
    }

    /// One reconcile failed with `code`.
    pub fn failure(&self, code: ErrorCode) {
        if let Ok(mut m) = self.failures.lock() {
            *m.entry(code.as_str()).or_default() += 1;
        }
    }

    /// One intent went out.
    pub fn published(&self) {
        self.intents_published.fetch_add(1, Ordering::Relaxed);
    }

    /// One intent was rejected for `reason`.
    pub fn rejected(&self, reason: Reason) {
        if let Ok(mut m) = self.rejections.lock() {
            *m.entry(reason.as_str()).or_default() += 1;
        }
    }

    /// Whether this replica leads (holds a valid lease) now.
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Relaxed);
    }

    /// Whether this replica leads now.
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// One anti-entropy nudge (a `twin/get`) was sent.
    pub fn nudged(&self) {
        self.nudges.fetch_add(1, Ordering::Relaxed);
    }

    /// Anti-entropy nudges sent so far.
    pub fn nudges(&self) -> u64 {
        self.nudges.load(Ordering::Relaxed)
    }

    /// How many Devices the last anti-entropy scan found stale.
    pub fn set_stale(&self, n: usize) {
        self.stale
            .store(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Reconciles so far.
    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(Ordering::Relaxed)
    }

    /// Intents published so far.
    pub fn intents_published(&self) -> u64 {
        self.intents_published.load(Ordering::Relaxed)
    }

    /// Failures with `code` so far.
    pub fn failures(&self, code: ErrorCode) -> u64 {
        self.failures
            .lock()
            .map(|m| m.get(code.as_str()).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP twinflash_cloud_reconciles_total Reconciles started."
        );
        let _ = writeln!(out, "# TYPE twinflash_cloud_reconciles_total counter");
        let _ = writeln!(
            out,
            "twinflash_cloud_reconciles_total {}",
            self.reconciles()
        );
        let _ = writeln!(
            out,
            "# HELP twinflash_cloud_reconcile_failures_total Reconciles failed, by stable error code."
        );
        let _ = writeln!(
            out,
            "# TYPE twinflash_cloud_reconcile_failures_total counter"
        );
        if let Ok(m) = self.failures.lock() {
            for (code, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "twinflash_cloud_reconcile_failures_total{{code=\"{code}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP twinflash_cloud_intents_published_total Intents published to the edge (in mode dmi: accepted and, for a tag, pinned on the Device)."
        );
        let _ = writeln!(
            out,
            "# TYPE twinflash_cloud_intents_published_total counter"
        );
        let _ = writeln!(
            out,
            "twinflash_cloud_intents_published_total {}",
            self.intents_published()
        );
        let _ = writeln!(
            out,
            "# HELP twinflash_cloud_mqtt_dropped_messages_total Inbound MQTT messages dropped unread, by reason."
        );
        let _ = writeln!(
            out,
            "# TYPE twinflash_cloud_mqtt_dropped_messages_total counter"
        );
        let _ = writeln!(
            out,
            "twinflash_cloud_mqtt_dropped_messages_total{{reason=\"oversized\"}} {}",
            MQTT_DROPPED_OVERSIZED.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP twinflash_cloud_leader 1 while this replica holds a valid lease and runs the controller."
        );
        let _ = writeln!(out, "# TYPE twinflash_cloud_leader gauge");
        let _ = writeln!(out, "twinflash_cloud_leader {}", u8::from(self.leading()));
        let _ = writeln!(
            out,
            "# HELP twinflash_cloud_anti_entropy_nudges_total Nudges sent to agents of Devices whose status is stale (twin/get; in mode dmi a desired.metadata bump)."
        );
        let _ = writeln!(
            out,
            "# TYPE twinflash_cloud_anti_entropy_nudges_total counter"
        );
        let _ = writeln!(
            out,
            "twinflash_cloud_anti_entropy_nudges_total {}",
            self.nudges()
        );
        let _ = writeln!(
            out,
            "# HELP twinflash_cloud_anti_entropy_stale_devices Devices whose status the last anti-entropy scan found stale."
        );
        let _ = writeln!(
            out,
            "# TYPE twinflash_cloud_anti_entropy_stale_devices gauge"
        );
        let _ = writeln!(
            out,
            "twinflash_cloud_anti_entropy_stale_devices {}",
            self.stale.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP twinflash_cloud_intents_rejected_total Intents rejected, by reason."
        );
        let _ = writeln!(out, "# TYPE twinflash_cloud_intents_rejected_total counter");
        if let Ok(m) = self.rejections.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "twinflash_cloud_intents_rejected_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        out
    }
}

/// Serves `GET /metrics`, `/healthz` (the process answers) and `/readyz` ([`Readiness`]: 200 or 503 with the
/// reason) on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.readiness().check() {
        Ok(what) => (StatusCode::OK, format!("ok: {what}\n")),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn counts_render_with_labels() {
        let m = Metrics::default();
        m.reconcile();
        m.reconcile();
        m.failure(ErrorCode::BrokerUnreachable);
        m.failure(ErrorCode::BrokerUnreachable);
        m.failure(ErrorCode::Internal);
        m.published();
        m.rejected(Reason::ChipMismatch);
        let text = m.render();
        assert!(
            text.contains("twinflash_cloud_reconciles_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "twinflash_cloud_reconcile_failures_total{code=\"broker-unreachable\"} 2\n"
            )
        );
        assert!(text.contains("twinflash_cloud_reconcile_failures_total{code=\"internal\"} 1\n"));
        assert!(text.contains("twinflash_cloud_intents_published_total 1\n"));
        assert!(
            text.contains("twinflash_cloud_intents_rejected_total{reason=\"ChipMismatch\"} 1\n")
        );
        assert_eq!(m.failures(ErrorCode::BrokerUnreachable), 2);
        assert_eq!(m.failures(ErrorCode::Timeout), 0);
        assert!(text.contains("twinflash_cloud_leader 0\n"), "{text}");
        m.set_leading(true);
        assert!(m.render().contains("twinflash_cloud_leader 1\n"));
    }

    #[test]
    fn readiness_follows_the_election_and_the_term() {
        let r = Readiness::default();
        assert!(r.check().is_err(), "nothing known before the election");
        r.term_synced();
        r.election_started();
        assert_eq!(r.check(), Ok("standing by"), "a follower is ready");
        r.term_started();
        assert!(r.check().is_err_and(|e| e.contains("initial lists")));
        r.term_synced();
        assert_eq!(r.check(), Ok("leading"));
        r.term_ended();
        r.term_synced();
        assert_eq!(
            r.check(),
            Ok("standing by"),
            "a late sync outside a term changes nothing"
        );
    }

    #[tokio::test]
    async fn serves_metrics_over_http_on_loopback() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        metrics.published();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, metrics.clone(), cancel.clone()));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).await.unwrap();
            resp
        };
        for (path, want_status, want_body) in [
            (
                "/metrics",
                "200",
                "twinflash_cloud_intents_published_total 1",
            ),
            ("/healthz", "200", "ok"),
            ("/readyz", "503", "not ready: lease election not set up yet"),
            ("/nope", "404", ""),
        ] {
            let resp = get(path).await;
            assert!(
                resp.starts_with(&format!("HTTP/1.1 {want_status}")),
                "{path}: {resp}"
            );
            assert!(resp.contains(want_body), "{path}: {resp}");
        }
        assert!(
            get("/metrics")
                .await
                .contains("content-type: text/plain; version=0.0.4")
        );
        metrics.readiness().election_started();
        let resp = get("/readyz").await;
        assert!(
            resp.starts_with("HTTP/1.1 200") && resp.contains("ok: standing by"),
            "{resp}"
        );
        cancel.cancel();
        server.await.unwrap().unwrap();
    }
}
