//! `twinflash-edge`: the per-node agent.
use std::path::PathBuf;

use clap::Parser;

/// The twinflash edge agent: one per KubeEdge edge node.
///
/// Consumes firmware intents from the device twin over MQTT, fetches the OCI artifact (resumable,
/// verified), flashes the device and reports firmware, version and state back through the twin.
#[derive(Debug, Parser)]
#[command(name = "twinflash-edge", version, about, long_about)]
struct Args {
    /// Agent configuration (TOML). Keys can be overridden with `TWINFLASH_EDGE__<KEY>` variables.
    #[arg(long, short = 'c', env = "TWINFLASH_EDGE_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Check the configuration, print a summary and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!(
        "twinflash-edge: the agent is not built yet (issue 5); config {} was not read",
        args.config.display()
    )
}
