//! `twinflash crd`: print the CustomResourceDefinitions twinflash owns (today: FirmwareRollout), generated from the
//! Rust types, ready for `kubectl apply -f -`.

/// Print the CRDs twinflash owns as YAML (`twinflash crd | kubectl apply -f -`).
#[derive(Debug, clap::Args)]
pub struct Cmd {}

/// Runs the verb.
pub async fn run(_cmd: Cmd) -> anyhow::Result<()> {
    let yaml = twinflash_rollout_api::crd_yaml()
        .map_err(|e| anyhow::anyhow!("cannot render the CRDs: {e} [internal]"))?;
    out!("{yaml}");
    Ok(())
}
