//! `twinflash-cloud`: the controller binary. Loads the configuration, serves metrics and runs the
//! Device controller; `--check-config` only validates the configuration.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use twinflash_cloud::config::Config;
use twinflash_cloud::controller::{self, Context};
use twinflash_cloud::metrics;
use twinflash_cloud::seams::{ArtifactResolver, IntentSink};

/// The twinflash cloud controller (kube-rs).
///
/// Watches KubeEdge Devices whose `firmware` twin has a desired value, pins tags to digests and
/// delivers the intent to the edge over MQTT (modes `edgecore` and `direct`).
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
    if args.check_config {
        println!(
            "configuration ok: mode={:?} status_location={:?} namespace={} mqtt={} resync={}s metrics={}",
            cfg.mode,
            cfg.status_location,
            cfg.namespace().unwrap_or("*"),
            cfg.mqtt.url,
            cfg.resync_period_secs,
            cfg.metrics.listen
        );
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the tokio runtime")
        .and_then(|rt| rt.block_on(run(cfg)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twinflash-cloud: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The MQTT sink and the registry resolver.
///
/// INTEGRATION: the lead wires mqtt-schema's DeviceTwinUpdate over rumqttc (an `IntentSink`) and
/// twinflash-artifact's registry client (an `ArtifactResolver`) here.
fn build_seams(_cfg: &Config) -> anyhow::Result<(Arc<dyn IntentSink>, Arc<dyn ArtifactResolver>)> {
    anyhow::bail!(
        "the MQTT intent sink and the registry resolver are not wired yet (issue 6, next part); \
         only --check-config is usable"
    )
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let (sink, resolver) = build_seams(&cfg)?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes credentials (in-cluster or KUBECONFIG)")?;
    let ctx = Arc::new(Context::new(
        client,
        sink,
        resolver,
        cfg.status_location,
        cfg.resync_period(),
        std::env::var("POD_NAME").ok(),
    ));
    let listener = metrics::bind(cfg.metrics.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.metrics.listen))?;
    let cancel = CancellationToken::new();
    let server = tokio::spawn(metrics::serve(
        listener,
        ctx.metrics.clone(),
        cancel.clone(),
    ));
    controller::run(ctx, cfg.namespace(), cfg.watch.label_selector.as_deref()).await;
    cancel.cancel();
    server.await.context("metrics server task")??;
    Ok(())
}
