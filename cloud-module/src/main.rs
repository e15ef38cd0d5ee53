//! `twinflash-cloud`: the controller.
use std::path::PathBuf;

use clap::Parser;

/// The twinflash cloud controller (kube-rs).
///
/// Watches KubeEdge Devices whose `firmware` twin has a desired value, pins tags to digests and
/// delivers the intent to the edge over MQTT (modes `edgecore` and `direct`).
#[derive(Debug, Parser)]
#[command(name = "twinflash-cloud", version, about, long_about)]
struct Args {
    /// Controller configuration (TOML). Keys can be overridden with `TWINFLASH_CLOUD__<KEY>`.
    #[arg(long, short = 'c', env = "TWINFLASH_CLOUD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("twinflash-cloud: the controller is not built yet (issue 6)")
}
