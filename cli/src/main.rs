//! `twinflash`: the operator CLI. Pushes firmware as OCI artifacts, inspects and pulls them
//! (verified, resumable, through the same fetcher as the edge agent); sets and watches intents over MQTT.

#[macro_use]
mod out;
mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// twinflash: firmware updates for KubeEdge devices, from an OCI registry through the device twin.
#[derive(Debug, Parser)]
#[command(name = "twinflash", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Push a firmware file as a twinflash artifact; prints the digest-pinned reference last.
    Push(cmd::push::Cmd),
    /// Show version, chip, format, size, digest and creation time of an artifact.
    Inspect(cmd::inspect::Cmd),
    /// Fetch and verify an artifact (resumable) and write its firmware file.
    Pull(cmd::pull::Cmd),
    /// Sign an artifact (cosign-compatible: a `.sig` tag, or a Sigstore bundle referrer).
    Sign(cmd::sign::Cmd),
    /// Verify an artifact's signatures with public keys; exit 0 verified, 3 unsigned, 4 invalid.
    Verify(cmd::verify::Cmd),
    /// Set the wanted firmware of a device through its twin, over MQTT (no cluster needed).
    Set(cmd::set::Cmd),
    /// Show what devices report through their twins: wanted and installed firmware, version, state.
    Status(cmd::status::Cmd),
    /// Staged FirmwareRollouts: create, status, pause, resume, abort (needs a cluster, except create --dry-run).
    Rollout(cmd::rollout::Cmd),
    /// Print the CustomResourceDefinitions twinflash owns (`twinflash crd | kubectl apply -f -`).
    Crd(cmd::crd::Cmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TWINFLASH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twinflash: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Push(c) => cmd::push::run(c).await,
            Command::Inspect(c) => cmd::inspect::run(c).await,
            Command::Pull(c) => cmd::pull::run(c).await,
            Command::Sign(c) => cmd::sign::run(c).await,
            Command::Verify(c) => cmd::verify::run(c).await,
            Command::Set(c) => cmd::set::run(c).await,
            Command::Status(c) => cmd::status::run(c).await,
            Command::Rollout(c) => cmd::rollout::run(c).await,
            Command::Crd(c) => cmd::crd::run(c).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twinflash: {}", one_line(&e));
            // verify's verdicts have their own statuses (docs/contract.md §6); all else is 1.
            e.downcast_ref::<cmd::verify::Rejected>()
                .map_or(ExitCode::FAILURE, |r| ExitCode::from(r.exit))
        }
    }
}

/// The error chain on one line.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}
