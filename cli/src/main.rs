//! `twinflash`: the operator CLI.
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
    /// Print the versions of the twinflash wire format and of this build.
    Version,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Version => {
            println!("twinflash {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}
