//! Controller metrics in the Prometheus text format: reconciles, failures by stable error code,
//! intents published and rejections by reason. Plain atomics and a tiny `GET /metrics` server, so
//! the crate needs no metrics framework (prometheus-client is not in the workspace lock).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mqtt_schema::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
}

impl Metrics {
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

/// Serves `GET /metrics` (and `/healthz`) on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: std::sync::Arc<Metrics>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    loop {
        let (mut sock, _) = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if head.starts_with("GET /metrics") {
                ("200 OK", metrics.render())
            } else if head.starts_with("GET /healthz") {
                ("200 OK", "ok\n".to_owned())
            } else {
                ("404 Not Found", "not found\n".to_owned())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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

    #[tokio::test]
    async fn serves_metrics_over_http_on_loopback() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        metrics.published();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, metrics, cancel.clone()));
        for (path, want_status, want_body) in [
            (
                "/metrics",
                "200",
                "twinflash_cloud_intents_published_total 1",
            ),
            ("/healthz", "200", "ok"),
            ("/nope", "404", "not found"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).await.unwrap();
            assert!(
                resp.starts_with(&format!("HTTP/1.1 {want_status}")),
                "{resp}"
            );
            assert!(resp.contains(want_body), "{resp}");
        }
        cancel.cancel();
        server.await.unwrap().unwrap();
    }
}
