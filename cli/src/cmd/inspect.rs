//! `twinflash inspect <ref> [--json]`: version, chip, format, size, digest, created.

use serde_json::json;

use crate::cmd::registry::{DeadlineArgs, RegistryArgs, with_code};

/// Show an artifact's metadata.
#[derive(Debug, clap::Args)]
pub struct Cmd {
    /// The artifact: HOST:PORT/REPOSITORY:TAG or HOST:PORT/REPOSITORY@sha256:HEX.
    pub reference: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub deadlines: DeadlineArgs,
}

/// Runs `inspect`.
pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let mut tls = cmd.registry.tls(&cmd.reference);
    tls.timeouts = cmd.deadlines.timeouts();
    let creds = cmd.registry.credentials()?;
    let inspected = twinflash_artifact::inspect(&tls, &creds, &cmd.reference)
        .await
        .map_err(|e| with_code(&e, e.code()))?;
    let a = &inspected.artifact;
    let base_address = a
        .base_address
        .map(twinflash_artifact::format::format_base_address);
    if cmd.json {
        let out = json!({
            "reference": inspected.pinned_reference,
            "digest": inspected.manifest_digest,
            "version": a.version,
            "chip": a.chip,
            "format": a.format.as_str(),
            "base_address": base_address,
            "size": a.size,
            "layer_digest": a.layer_digest,
            "title": a.title,
            "created": a.created,
            "annotations": a.annotations,
        });
        outln!("{out}");
        return Ok(());
    }
    outln!("reference     {}", inspected.pinned_reference);
    outln!("version       {}", a.version);
    outln!("chip          {}", a.chip);
    outln!("format        {}", a.format);
    if let Some(base) = base_address {
        outln!("base-address  {base}");
    }
    outln!("size          {}", a.size);
    outln!("digest        {}", inspected.manifest_digest);
    outln!("layer         {}", a.layer_digest);
    if let Some(title) = &a.title {
        outln!("title         {title}");
    }
    outln!("created       {}", a.created.as_deref().unwrap_or("-"));
    Ok(())
}
