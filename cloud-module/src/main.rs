//! `twinflash-cloud`: the controller binary. Loads the configuration, serves metrics, health and
//! readiness, competes for the Lease and, while leading, runs the leader tasks ([`lead`]: the MQTT
//! delivery (none in mode `dmi`), the Device and rollout controllers, the anti-entropy loop).
//! `--check-config` only validates the configuration. SIGTERM/SIGINT shut down gracefully.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use twinflash_cloud::anti_entropy::Nudger;
use twinflash_cloud::config::{Config, Mode};
use twinflash_cloud::controller::{self, Context};
use twinflash_cloud::direct::KubeStatusWriter;
use twinflash_cloud::dmi::{KubeNudger, NoMqtt};
use twinflash_cloud::leader::tasks::{LeaderTasks, STOP_GRACE};
use twinflash_cloud::mqtt::{self, MqttSink};
use twinflash_cloud::resolver::{PinnedCache, RegistryResolver};
use twinflash_cloud::seams::{ArtifactResolver, IntentSink, StatusWriter};
use twinflash_cloud::signatures::{Policies, RegistrySignatures, SignatureGate};
use twinflash_cloud::status_route::StatusRoute;
use twinflash_cloud::{identity, leader, metrics, rollout};

/// The twinflash cloud controller (kube-rs).
///
/// Watches KubeEdge Devices whose `firmware` twin has a desired value, pins tags to digests and
/// delivers the intent to the edge over MQTT (modes `edgecore` and `direct`). In mode `dmi`
/// KubeEdge delivers the Devices to twinflash-edge itself: nothing is published over MQTT, no
/// `[mqtt]` section is needed, and a tag's pin is written into the `firmware` property's
/// `desired.metadata["twinflash.io/pinned"]`.
#[derive(Debug, Parser)]
#[command(name = "twinflash-cloud", version, about, long_about)]
struct Args {
    /// Controller configuration (TOML). Keys can be overridden with `TWINFLASH_CLOUD__<KEY>`
    /// (sections joined with `__`, e.g. `TWINFLASH_CLOUD__MQTT__URL`).
    #[arg(long, short = 'c', env = "TWINFLASH_CLOUD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Validate the configuration, print a summary and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("twinflash-cloud: {e}");
            return ExitCode::from(2);
        }
    };
    // The trusted keys are read at start: a missing or unreadable key stops the controller here, named.
    let policies = match Policies::load(&cfg.signatures) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("twinflash-cloud: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!(
            "configuration ok: mode={:?} status_location={:?} namespace={} mqtt={} resync={}s anti_entropy={}s metrics={} signatures={}",
            cfg.mode,
            cfg.status_location,
            cfg.namespace().unwrap_or("*"),
            mqtt_summary(&cfg),
            cfg.resync_period_secs,
            cfg.anti_entropy.period_secs,
            cfg.metrics.listen,
            signatures_summary(&cfg)
        );
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the tokio runtime")
        .and_then(|rt| rt.block_on(run(cfg, policies)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twinflash-cloud: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `mqtt=` part of `--check-config`: the broker URL, or why there is none.
fn mqtt_summary(cfg: &Config) -> String {
    match (&cfg.mqtt, cfg.mode.uses_mqtt()) {
        (Some(m), true) => m.url.clone(),
        (Some(_), false) => {
            "unused (mode dmi: KubeEdge delivers the Devices; [mqtt] is ignored)".to_owned()
        }
        (None, _) => "none (mode dmi: KubeEdge delivers the Devices; no [mqtt] needed)".to_owned(),
    }
}

/// The `signatures=` part of `--check-config`: the default mode, its key count and the overrides.
fn signatures_summary(cfg: &Config) -> String {
    let s = &cfg.signatures;
    let overrides: Vec<String> = s
        .overrides
        .iter()
        .map(|o| format!("{}={}", o.scope(), o.mode.as_str()))
        .collect();
    format!(
        "{} (keys={}{}{})",
        s.mode.as_str(),
        s.keys.len(),
        if overrides.is_empty() { "" } else { "; " },
        overrides.join(", ")
    )
}

/// The signature gate of both controllers, `None` when every policy is `off` (no verifier is built).
fn signature_gate(cfg: &Config, policies: Policies) -> anyhow::Result<Option<Arc<SignatureGate>>> {
    if !policies.any_enabled() {
        return Ok(None);
    }
    let checker = RegistrySignatures::with_plain_http(cfg.registry.plain_http.clone())
        .context("signature verifier (registry options)")?;
    Ok(Some(Arc::new(SignatureGate::new(
        policies,
        Arc::new(checker),
    ))))
}

/// Everything a leadership term shares with the next one.
struct Shared {
    cfg: Config,
    client: kube::Client,
    resolver: Arc<dyn ArtifactResolver>,
    /// The signature gate (one verdict cache for the Device and rollout controllers).
    signatures: Option<Arc<SignatureGate>>,
    metrics: Arc<metrics::Metrics>,
    instance: Option<String>,
    /// Fired when a term cannot start (bad TLS files): the process exits.
    root: CancellationToken,
}

/// One leadership term: every leader-only task is started here, through one [`LeaderTasks`], and all of them are
/// stopped and joined before this returns (issue 22, F1): the delivery (MQTT, or none in mode `dmi`), the Device
/// controller, its anti-entropy loop (with its DeviceStatus watch), the rollout controller, and the readiness of the
/// term. Runs until `term` fires, or until one of them ends by itself (then the process shuts down).
async fn lead(shared: Arc<Shared>, term: CancellationToken) {
    let cfg = &shared.cfg;
    let readiness = shared.metrics.clone();
    readiness.readiness().term_started();
    let mut tasks = LeaderTasks::new(term);
    // One learnt status route for the controller's records and the relay's reports.
    let route = Arc::new(StatusRoute::default());
    let (sink, nudger): (Arc<dyn IntentSink>, Arc<dyn Nudger>) = match &cfg.mqtt {
        // KubeEdge delivers the Device's spec to the mapper: no MQTT client exists in this mode.
        _ if cfg.mode == Mode::Dmi => {
            info!("mode dmi: KubeEdge delivers the Devices; nothing is published over MQTT");
            (
                Arc::new(NoMqtt),
                Arc::new(KubeNudger::new(shared.client.clone())),
            )
        }
        Some(mqtt_cfg) => {
            let status: Option<Arc<dyn StatusWriter>> = match cfg.mode {
                Mode::Direct => Some(Arc::new(
                    KubeStatusWriter::new(shared.client.clone(), cfg.status_location)
                        .with_route(route.clone()),
                )),
                Mode::Edgecore | Mode::Dmi => None,
            };
            match MqttSink::start(
                mqtt_cfg,
                cfg.mode,
                cfg.resync_period(),
                status,
                tasks.token(),
            ) {
                Ok((sink, task)) => {
                    tasks.adopt("mqtt delivery", task);
                    (Arc::new(sink.clone()), Arc::new(sink))
                }
                Err(e) => {
                    error!(code = %e.code(), error = %e, "cannot start the MQTT delivery");
                    shared.root.cancel();
                    readiness.readiness().term_ended();
                    return;
                }
            }
        }
        None => {
            // `Config::validate` refuses this; stop rather than run without a delivery.
            error!(mode = ?cfg.mode, "no [mqtt] section for a mode that delivers over MQTT");
            shared.root.cancel();
            readiness.readiness().term_ended();
            return;
        }
    };
    let mut ctx = Context::new(
        shared.client.clone(),
        sink,
        shared.resolver.clone(),
        cfg.status_location,
        cfg.resync_period(),
        shared.instance.clone(),
    );
    ctx.metrics = shared.metrics.clone();
    ctx.status_route = route;
    ctx.mode = cfg.mode;
    ctx.anti_entropy = cfg.anti_entropy.period();
    ctx.nudger = Some(nudger);
    ctx.signatures = shared.signatures.clone();
    let ctx = Arc::new(ctx);
    let devices =
        controller::device_controller(&ctx, cfg.namespace(), cfg.watch.label_selector.as_deref());
    let device_store = devices.store();
    let anti_entropy =
        controller::anti_entropy(&ctx, devices.store(), cfg.namespace(), tasks.token());
    tasks.spawn(
        "device controller",
        controller::run_controller(ctx, devices, tasks.token()),
    );
    if let Some(loop_) = anti_entropy {
        tasks.spawn("anti-entropy", loop_);
    }
    // FirmwareRollouts change Devices' desired values; the Device controller above delivers them
    // (or, in mode dmi, KubeEdge does and the Device controller pins them).
    let mut rollouts = rollout::RolloutContext::new(
        shared.client.clone(),
        shared.resolver.clone(),
        cfg.status_location,
        cfg.resync_period(),
        shared.instance.clone(),
    );
    rollouts.signatures = shared.signatures.clone();
    let rollout_controller = rollout::controller(&rollouts, cfg.namespace());
    let rollout_store = rollout_controller.store();
    tasks.spawn(
        "rollout controller",
        rollout::run_controller(Arc::new(rollouts), rollout_controller, tasks.token()),
    );
    let token = tasks.token();
    let synced = readiness.clone();
    tasks.spawn("readiness", async move {
        let lists = async {
            controller::until_ready(&device_store).await;
            controller::until_ready(&rollout_store).await;
        };
        tokio::select! {
            () = lists => {
                synced.readiness().term_synced();
                info!("initial lists of the watches are in: ready");
            }
            () = token.cancelled() => return,
        }
        token.cancelled().await;
    });
    info!(tasks = ?tasks.names(), "leader tasks started");
    if let Some(task) = tasks.until_term_ends().await {
        error!(task, "a leader task ended while leading: shutting down");
        shared.root.cancel();
    }
    tasks.stop(STOP_GRACE).await;
    readiness.readiness().term_ended();
}

/// The namespace of the Lease: `POD_NAMESPACE`, the service account's, else the client's default.
fn own_namespace(client: &kube::Client) -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_owned())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn run(cfg: Config, policies: Policies) -> anyhow::Result<()> {
    // Fail fast on an unusable broker configuration (bad URL, unreadable TLS files).
    if let Some(mqtt_cfg) = cfg.mqtt.as_ref().filter(|_| cfg.mode.uses_mqtt()) {
        mqtt::mqtt_options(mqtt_cfg).context("MQTT configuration")?;
    }
    let signatures = signature_gate(&cfg, policies)?;
    if signatures.is_some() {
        info!(signatures = %signatures_summary(&cfg), "signature policies loaded");
    }
    let instance = std::env::var("POD_NAME").ok().filter(|s| !s.is_empty());
    let identity = instance
        .clone()
        .unwrap_or_else(|| format!("twinflash-cloud-{}", std::process::id()));
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes credentials (in-cluster or KUBECONFIG)")?;
    // `twinflash-cloud/<version> (<identity>)` on every request (issue 22, F3).
    let client = kube::Client::try_from(identity::with_user_agent(config, &identity))
        .context("cannot build the Kubernetes client")?;
    let root = CancellationToken::new();
    let signals = root.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("termination signal: shutting down");
        signals.cancel();
    });
    let metrics = Arc::new(metrics::Metrics::default());
    let listener = metrics::bind(cfg.metrics.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.metrics.listen))?;
    let server = tokio::spawn(metrics::serve(listener, metrics.clone(), root.clone()));

    let namespace = own_namespace(&client);
    let (manager, lease_task) =
        leader::watch_lease(client.clone(), &namespace, leader::LEASE_NAME, &identity)
            .await
            .context("leader election")?;
    // The API server answered for the Lease: standing by is ready (`/readyz`).
    metrics.readiness().election_started();
    // The manager alone keeps saying "leader" when renewals fail; the watchdog does not.
    let (leader, watchdog) = leader::watchdog::guard(
        manager,
        kube::Api::namespaced(client.clone(), &namespace),
        leader::LEASE_NAME.to_owned(),
        identity.clone(),
        leader::TIMING,
        root.clone(),
    );
    let gauge = metrics.clone();
    let mut follow = leader.clone();
    tokio::spawn(async move {
        loop {
            gauge.set_leading(*follow.borrow_and_update());
            if follow.changed().await.is_err() {
                gauge.set_leading(false);
                break;
            }
        }
    });
    info!(%identity, lease = %format!("{namespace}/{}", leader::LEASE_NAME), mode = ?cfg.mode, "waiting for the lease");
    let shared = Arc::new(Shared {
        resolver: Arc::new(PinnedCache::new(RegistryResolver::with_plain_http(
            cfg.registry.plain_http.clone(),
        ))),
        signatures,
        cfg,
        client,
        metrics,
        instance,
        root: root.clone(),
    });
    leader::run_as_leader(leader, root.clone(), |term| lead(shared.clone(), term)).await;
    root.cancel();
    // The watchdog ends with `root` and drops the manager's channel, which makes the manager
    // release the lease.
    if let Err(e) = watchdog.await {
        warn!(error = %e, "lease watchdog failed");
    }
    // The lease task releases the lease once its channel is closed (dropped above).
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "lease not released cleanly"),
        Ok(Err(e)) => warn!(error = %e, "lease task failed"),
        Err(_) => warn!("lease release timed out"),
        Ok(Ok(Ok(_))) => info!("lease released"),
    }
    server.await.context("metrics server task")??;
    Ok(())
}
