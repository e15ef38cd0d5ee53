//! `twinflash-edge`: the per-node agent.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::Targets;
use twinflash_edge::config::{DeliveryMode, EdgeConfig, LogFormat};

/// The twinflash edge agent: one per KubeEdge edge node.
///
/// Consumes firmware intents from the device twin: over MQTT (`$hw/events/device/.../twin/update/delta`, the
/// default), or as KubeEdge's DMI mapper of protocol `twinflash` (`[kubeedge] mode = "dmi"`: devices, settings and
/// intents from the Device objects, no MQTT at all). It fetches
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
        return check_config(&cfg);
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
                ExitCode::from(e.exit_status())
            }
        }
    })
}

/// `--check-config`: every device's flasher settings are built, the state directory is checked as the start would
/// check it (without creating anything), and the summary says where each device comes from and which signature
/// policy and keys the agent applies. The load already checked every other setting, and read every file one names.
/// Which behaviour a device has after its flash, for `--check-config`.
fn confirmation(confirm: Option<&twinflash_edge::config::ConfirmConfig>) -> String {
    match confirm {
        Some(c) => format!("installed once {}", c.describe()),
        None => "installed once written and read back (no [devices.confirm] check)".into(),
    }
}

fn check_config(cfg: &EdgeConfig) -> ExitCode {
    if let Err(e) = twinflash_edge::state_dir::check_existing(&cfg.state_dir) {
        eprintln!("twinflash-edge: {e}");
        return ExitCode::from(2);
    }
    for d in &cfg.devices {
        if let Err(e) = twinflash_flasher::build(&d.flasher, &d.chip) {
            eprintln!("twinflash-edge: device {}: {e}", d.id);
            return ExitCode::from(2);
        }
    }
    match cfg.kubeedge.mode {
        DeliveryMode::Mqtt => println!(
            "config ok: node {}, {} device(s), broker {}, state in {}",
            cfg.node,
            cfg.devices.len(),
            cfg.mqtt.url,
            cfg.state_dir.display()
        ),
        DeliveryMode::Dmi => println!(
            "config ok: node {}, DMI mapper of protocol {:?} (edgecore {}, mapper socket {}), {} configured device(s), state in {}",
            cfg.node,
            cfg.kubeedge.protocol,
            cfg.kubeedge.dmi_socket.display(),
            cfg.kubeedge.mapper_socket(&cfg.state_dir).display(),
            cfg.devices.len(),
            cfg.state_dir.display()
        ),
    }
    // Read again (the load checked them): the summary shows what the agent would trust.
    let policy = match cfg.signatures.policy() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("twinflash-edge: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "  signatures: {}, {} trusted key(s)",
        policy.mode.as_str(),
        policy.keys.len()
    );
    for k in &policy.keys {
        println!(
            "    {}: {} {}",
            k.name,
            k.key.kind().as_str(),
            k.key.key_id()
        );
    }
    for d in &cfg.devices {
        let wins = if cfg.kubeedge.mode == DeliveryMode::Dmi {
            "; wins over a Device of the same name"
        } else {
            ""
        };
        println!(
            "  {}: [[devices]] entry ({}){wins}",
            d.id,
            d.flasher.describe()
        );
        println!("    {}", confirmation(d.confirm.as_ref()));
    }
    if cfg.kubeedge.mode == DeliveryMode::Dmi {
        let journaled = twinflash_edge::dmi::store::Store::read_only(&cfg.state_dir).devices();
        for dev in &journaled {
            let Some(read) = twinflash_edge::dmi::spec::read(dev) else {
                continue;
            };
            let from = "Device delivered by edgecore (journaled)";
            match &read.settings {
                _ if cfg.devices.iter().any(|d| d.id == read.id) => {
                    println!(
                        "  {}: {from}; its settings are overridden by the [[devices]] entry",
                        read.id
                    )
                }
                Ok(s) => {
                    println!("  {}: {from} ({})", read.id, s.flasher.describe());
                    println!("    {}", confirmation(s.confirm.as_ref()));
                }
                Err(e) => println!(
                    "  {}: {from}; refused, reported rejected:invalid-config: {e}",
                    read.id
                ),
            }
        }
        println!(
            "  further devices arrive from edgecore when the agent registers ({} journaled so far)",
            journaled.len()
        );
    }
    ExitCode::SUCCESS
}

/// Logs to stderr, filtered by `RUST_LOG`, else `log.level`, else `info`: a level or `target=level` directives
/// (`info,twinflash_edge=debug`). tracing-subscriber's `Targets` filter, not `EnvFilter`: `EnvFilter` brings the
/// `regex` crate (about 0.4 MiB) for span and field filters, and the edge binary has a size budget
/// (docs/benchmarks.md). A filter that does not parse falls back to `info`.
fn init_logs(cfg: &EdgeConfig) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| s.parse::<Targets>().is_ok())
        .or_else(|| cfg.log.level.clone())
        .unwrap_or_else(|| "info".to_owned());
    let filter = spec
        .parse::<Targets>()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    // Colours only on a terminal: a log file or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    match cfg.log.format {
        LogFormat::Json => registry.with(layer.json()).init(),
        LogFormat::Text => registry.with(layer).init(),
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
