//! Assembles the agent from its configuration: devices rebuilt from their journals and read-backs, one job per
//! device, the MQTT link, metrics; and shuts it down gracefully (downloads checkpoint, flashes finish).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use twinflash_artifact::{Credentials, FetchConfig, Fetcher, Mirror};

use crate::config::{ConfigError, DeliveryMode, EdgeConfig, MirrorConfig};
use crate::device::Device;
use crate::job::{self, JobContext};
use crate::journal::Journal;
use crate::link::ledger::{Budget, Retry};
use crate::link::{Link, LinkLimits};
use crate::metrics::{self, Metrics};
use crate::plan::{self, ReadBack};
use crate::report::ReportQueue;
use crate::report::outbox::Outbox;
use crate::state_dir;

/// The agent could not start. The message names the device or the setting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A device's flasher could not be built.
    #[error("device {device}: {source}")]
    Flasher {
        device: String,
        source: twinflash_flasher::FlashError,
    },
    /// The journal of a device cannot be read or written.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The outbox cannot be opened.
    #[error(transparent)]
    Outbox(#[from] crate::report::outbox::OutboxError),
    /// The fetcher could not be built (CA file, credentials, cache directory).
    #[error("registry: {0}")]
    Fetcher(#[from] twinflash_artifact::FetchError),
    /// The MQTT settings are wrong.
    #[error(transparent)]
    Mqtt(#[from] twinflash_mqtt::MqttError),
    /// Another agent runs on the same state directory, or it cannot be locked.
    #[error(transparent)]
    StateDir(#[from] crate::state_dir::StateDirError),
    /// The DMI journal cannot be opened.
    #[error(transparent)]
    DmiStore(#[from] crate::dmi::store::StoreError),
    /// The DMI mapper cannot start (its socket, its registration settings).
    #[error(transparent)]
    Dmi(#[from] crate::dmi::DmiError),
    /// A setting checked at load time no longer holds (a key file removed since).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `metrics.listen` cannot be bound (in use, or not an address of this node).
    #[error("metrics.listen {listen}: cannot listen: {source}")]
    Metrics {
        listen: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    /// The exit status of an agent that could not start: 2 for a configuration that is refused (as at load, and as
    /// `--check-config` says), 1 for anything else.
    pub fn exit_status(&self) -> u8 {
        match self {
            StartError::StateDir(e) if e.code() == mqtt_schema::ErrorCode::InvalidConfig => 2,
            StartError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// The fetcher settings from the `[registry]` and `[signatures]` sections. Fails when a signature key cannot be
/// read (the check at load time read it too; this is the copy the agent runs with).
pub fn fetch_config(cfg: &EdgeConfig) -> Result<FetchConfig, ConfigError> {
    let r = &cfg.registry;
    let mut fc = FetchConfig::new(cfg.state_dir.join("cache"));
    fc.max_size = r.max_artifact_bytes;
    fc.cache_max_bytes = r.cache_max_bytes;
    fc.rate_limit_bps = r.rate_limit_bytes_per_sec;
    fc.checkpoint_every = r.checkpoint_bytes;
    fc.plain_http = r.plain_http.clone();
    fc.allow_link_local_redirects = r.allow_link_local_redirects;
    fc.mirrors = r
        .mirrors
        .iter()
        .map(|m| match m {
            MirrorConfig::Registry { host } => Mirror::Registry(host.clone()),
            MirrorConfig::Layout { path } => Mirror::Layout(path.clone()),
        })
        .collect();
    fc.credentials = Credentials {
        username: r.username.clone(),
        password_file: r.password_file.clone(),
        bearer_token: None,
        docker_config: r.docker_config.clone(),
    };
    fc.ca_file = r.ca_file.clone();
    fc.client_cert = r.cert_file.clone();
    fc.client_key = r.key_file.clone();
    fc.timeouts = r.timeouts();
    fc.signatures = cfg.signatures.policy()?;
    fc.signature_lookup.deadline = Duration::from_secs(cfg.signatures.lookup_deadline_secs);
    Ok(fc)
}

/// Rebuilds one device from its journal and from what the device reads back; pins what it needs in the cache.
pub(crate) async fn load_device(
    cfg: &EdgeConfig,
    dc: &crate::config::DeviceConfig,
    fetcher: &Fetcher,
) -> Result<Arc<Device>, StartError> {
    let flasher =
        twinflash_flasher::build(&dc.flasher, &dc.chip).map_err(|source| StartError::Flasher {
            device: dc.id.clone(),
            source,
        })?;
    let journal = Journal::new(&cfg.state_dir, &dc.id);
    let journaled = match journal.load_counted() {
        Ok((s, 0)) => s,
        Ok((s, garbage)) => {
            tracing::warn!(device = %dc.id, path = %journal.path().display(), unreadable_lines = garbage, "journal holds unreadable lines (not written by this agent); using its newest readable record");
            s
        }
        Err(e @ crate::journal::JournalError::Corrupt { .. }) => {
            tracing::error!(device = %dc.id, error = %e, "starting this device from what it reports");
            plan::JobState::default()
        }
        Err(e) => return Err(e.into()),
    };
    let read_back = match flasher.installed().await {
        Ok(i) => i.map(|i| ReadBack {
            reference: i.reference,
            version: i.version,
        }),
        Err(e) => {
            tracing::warn!(device = %dc.id, code = %e.code(), error = %e, "cannot read back what is installed");
            None
        }
    };
    let reads_back = flasher.reads_back();
    let state = plan::reconcile(journaled.clone(), reads_back, read_back);
    if state != journaled {
        journal.store(&state)?;
    }
    // What is installed or wanted, and a fallback while a confirmation or a revert needs it, stay in the cache.
    let fallback = state
        .confirming
        .as_ref()
        .and_then(|c| c.fallback.as_ref())
        .or(state.reverting.as_ref().map(|r| &r.to))
        .map(|f| &f.reference);
    for pinned in [state.installed.as_ref(), state.wanted.as_ref(), fallback]
        .into_iter()
        .flatten()
    {
        let _ = fetcher.pin(pinned);
    }
    let clipped = |s: &Option<String>| s.as_deref().map(|s| mqtt_schema::clip::clip(s).to_string());
    tracing::info!(device = %dc.id, installed = ?clipped(&state.installed), wanted = ?clipped(&state.wanted), "device ready");
    Ok(Device::new(dc.clone(), flasher, journal, state))
}

/// Runs the agent until `shutdown` is cancelled, then stops gracefully.
pub async fn run(cfg: EdgeConfig, shutdown: CancellationToken) -> Result<(), StartError> {
    let _lock = state_dir::lock(&cfg.state_dir)?;
    state_dir::prepare(&cfg.state_dir, cfg.kubeedge.mode == DeliveryMode::Dmi)?;
    for sub in ["journal", "outbox", "dmi/devices", "dmi/models"] {
        let removed = state_dir::remove_stale_temps(&cfg.state_dir.join(sub));
        if removed > 0 {
            tracing::info!(
                dir = sub,
                removed,
                "removed temporary files of interrupted writes"
            );
        }
    }
    let metrics_listener = bind_metrics(&cfg).await?;
    let metrics = Arc::new(Metrics::new());
    let unready = cfg.metrics.unready_after_broker_down_secs;
    metrics.set_unready_after_broker_down((unready > 0).then(|| Duration::from_secs(unready)));
    let reports = Arc::new(ReportQueue::new(Outbox::open(&cfg.state_dir)?));
    let fetcher = Arc::new(Fetcher::new(fetch_config(&cfg)?)?);

    let ctx = Arc::new(JobContext {
        fetcher: fetcher.clone(),
        downloads: Arc::new(Semaphore::new(cfg.limits.downloads)),
        flashes: Arc::new(Semaphore::new(cfg.limits.flashes)),
        reports: reports.clone(),
        max_attempts: cfg.limits.flash_attempts,
        max_artifact_bytes: cfg.registry.max_artifact_bytes,
        shutdown: shutdown.clone(),
        metrics: metrics.clone(),
        retry_base: Duration::from_millis(500),
        progress_interval: Duration::from_millis(cfg.twin.progress_interval_ms),
    });
    if cfg.kubeedge.mode == DeliveryMode::Dmi {
        return run_dmi(
            cfg,
            ctx,
            fetcher,
            reports,
            metrics,
            metrics_listener,
            shutdown,
        )
        .await;
    }
    let mut devices = HashMap::new();
    for dc in &cfg.devices {
        devices.insert(dc.id.clone(), load_device(&cfg, dc, &fetcher).await?);
    }
    let mut jobs = JoinSet::new();
    for dev in devices.values() {
        jobs.spawn(job::run(dev.clone(), ctx.clone()));
    }

    let link = Arc::new(Link::new(
        &cfg.node,
        devices,
        cfg.mqtt.topic_layout,
        reports,
        metrics.clone(),
        LinkLimits {
            reconnect_max: cfg.mqtt.reconnect_max(),
            max_message: cfg.limits.max_message_bytes,
            report_budget: Budget {
                burst: cfg.limits.report_burst,
                interval: Duration::from_millis(cfg.limits.report_interval_ms),
            },
            ack: cfg.twin.acknowledgement,
            retry: Retry {
                first: Duration::from_millis(cfg.twin.ack_timeout_ms),
                max: Duration::from_secs(cfg.twin.retry_max_secs),
            },
            anti_entropy: (cfg.twin.anti_entropy_secs > 0)
                .then(|| Duration::from_secs(cfg.twin.anti_entropy_secs)),
        },
    ));
    let link_stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let sub_opts = twinflash_mqtt::options(&cfg.mqtt, &cfg.mqtt.client_id, true)?;
    let (sub_client, sub_events) = twinflash_mqtt::client(sub_opts);
    tasks.spawn(
        link.clone()
            .run_subscriber(sub_client, sub_events, link_stop.clone()),
    );
    let pub_opts =
        twinflash_mqtt::options(&cfg.mqtt, &format!("{}-pub", cfg.mqtt.client_id), false)?;
    let (pub_client, pub_events) = twinflash_mqtt::client(pub_opts);
    tasks.spawn(
        link.clone()
            .run_publisher(pub_client, pub_events, link_stop.clone()),
    );
    serve_metrics(metrics_listener, &metrics, &mut tasks, &link_stop);
    metrics.set_ready();
    tracing::info!(node = %cfg.node, devices = cfg.devices.len(), "twinflash-edge running");

    shutdown.cancelled().await;
    tracing::info!("shutting down: downloads checkpoint and stop, running flashes finish");
    while jobs.join_next().await.is_some() {}
    // The link stays up while flashes finish, so their reports can still leave.
    link_stop.cancel();
    while tasks.join_next().await.is_some() {}
    tracing::info!("stopped");
    Ok(())
}

/// Binds `metrics.listen`, when it is set: a listener that cannot be bound stops the start.
async fn bind_metrics(cfg: &EdgeConfig) -> Result<Option<tokio::net::TcpListener>, StartError> {
    let Some(listen) = cfg.metrics.listen.as_deref() else {
        return Ok(None);
    };
    let addr = crate::config::parse_listen(listen)?;
    match metrics::bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(source) => Err(StartError::Metrics {
            listen: addr,
            source,
        }),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on the listener [`bind_metrics`] bound.
fn serve_metrics(
    listener: Option<tokio::net::TcpListener>,
    metrics: &Arc<Metrics>,
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
) {
    if let Some(listener) = listener {
        let (m, stop) = (metrics.clone(), stop.clone());
        tasks.spawn(async move {
            if let Err(e) = metrics::serve(listener, m, stop).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
}

/// DMI mode: the devices come from edgecore (and `[[devices]]`), the intents with them; reports go back through
/// edgecore's DMI server. The same jobs, journals and outbox as the MQTT mode.
async fn run_dmi(
    cfg: EdgeConfig,
    ctx: Arc<JobContext>,
    fetcher: Arc<Fetcher>,
    reports: Arc<ReportQueue>,
    metrics: Arc<Metrics>,
    metrics_listener: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let cfg = Arc::new(cfg);
    let store = crate::dmi::store::Store::open(&cfg.state_dir)?;
    let fleet =
        crate::dmi::fleet::Fleet::new(cfg.clone(), ctx, fetcher, reports.clone(), store).await?;
    let link_stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    crate::dmi::start(
        &cfg,
        fleet.clone(),
        reports,
        metrics.clone(),
        &mut tasks,
        link_stop.clone(),
    )?;
    let manager = tokio::spawn(fleet.clone().run(shutdown.clone()));
    serve_metrics(metrics_listener, &metrics, &mut tasks, &link_stop);
    metrics.set_ready();
    tracing::info!(node = %cfg.node, configured_devices = cfg.devices.len(), "twinflash-edge running in DMI mode");
    shutdown.cancelled().await;
    tracing::info!("shutting down: downloads checkpoint and stop, running flashes finish");
    let _ = manager.await;
    // The reporter stays up while flashes finish, so their reports can still leave.
    link_stop.cancel();
    while tasks.join_next().await.is_some() {}
    tracing::info!("stopped");
    Ok(())
}
