//! `twinflash-edge`: the per-node agent.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use twinflash_edge::config::{EdgeConfig, LogFormat};

/// The twinflash edge agent: one per KubeEdge edge node.
///
/// Consumes firmware intents from the device twin over MQTT (`$hw/events/device/.../twin/update/delta`), fetches
/// the OCI artifact (resumable, sha256-verified, mirrors tried first), flashes the device (probe-rs, an external
/// command, or a simulated device) and reports `firmware`, `firmware-version` and `firmware-state` back through
/// the twin. Survives broker, registry and power outages; see docs/edge-config.example.toml for every setting.
#[derive(Debug, Parser)]
#[command(name = "twinflash-edge", version, about, long_about)]
struct Args {
    /// Agent configuration (TOML). Keys can be overridden with `TWINFLASH_EDGE__<SECTION>__<KEY>` variables.
    #[arg(long, short = 'c', env = "TWINFLASH_EDGE_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Check the configuration (and every device's flasher settings), print a summary and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match EdgeConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("twinflash-edge: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        for d in &cfg.devices {
            if let Err(e) = twinflash_flasher::build(&d.flasher, &d.chip) {
                eprintln!("twinflash-edge: device {}: {e}", d.id);
                return ExitCode::from(2);
            }
        }
        println!(
            "config ok: node {}, {} device(s), broker {}, state in {}",
            cfg.node,
            cfg.devices.len(),
            cfg.mqtt.url,
            cfg.state_dir.display()
        );
        return ExitCode::SUCCESS;
    }
    init_logs(&cfg);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("twinflash-edge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            stop.cancel();
        });
        match twinflash_edge::agent::run(cfg, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // Another agent holds the state directory: one line says so, nothing else is logged.
                if !matches!(e, twinflash_edge::agent::StartError::StateDir(_)) {
                    tracing::error!(error = %e, "twinflash-edge cannot start");
                }
                eprintln!("twinflash-edge: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn init_logs(cfg: &EdgeConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(cfg.log.level.as_deref().unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
