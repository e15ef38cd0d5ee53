//! `twinflash inspect <ref> [--json] [--verify-key pub.pem]...`: version, chip, format, size,
//! digest, created, and the signatures found for the artifact (checked when keys are given).
//!
//! The trusted keys are `--verify-key` here, not `--key` as in `verify`: inspect's `--key` is the
//! key of the `--cert` client certificate, as in pull and set.

use mqtt_schema::{FirmwareRef, FirmwareRefError, RefKind};
use serde_json::json;
use twinflash_artifact::signature::Verifier;
use twinflash_artifact::{Credentials, TlsOptions};

use crate::cmd::registry::{ClientCertArgs, DeadlineArgs, RegistryArgs, with_code};
use crate::cmd::sigs::{Seen, fetch_config, trusted_keys};

/// Show an artifact's metadata and signatures.
#[derive(Debug, clap::Args)]
pub struct Cmd {
    /// The artifact: HOST:PORT/REPOSITORY:TAG or HOST:PORT/REPOSITORY@sha256:HEX.
    pub reference: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Check the signatures found against this public key (PEM; repeatable).
    #[arg(long = "verify-key", value_name = "FILE")]
    pub verify_keys: Vec<std::path::PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub client_cert: ClientCertArgs,
    #[command(flatten)]
    pub deadlines: DeadlineArgs,
}

/// The digest-pinned reference: as given when it names a digest, else the tag resolved
/// through the registry.
pub async fn pin(
    tls: &TlsOptions,
    creds: &Credentials,
    reference: &str,
) -> anyhow::Result<FirmwareRef> {
    let invalid = |e: FirmwareRefError| with_code(&e, e.code());
    Ok(match FirmwareRef::classify(reference).map_err(invalid)? {
        RefKind::Pinned(r) => r,
        RefKind::Tag => twinflash_artifact::inspect(tls, creds, reference)
            .await
            .map_err(|e| with_code(&e, e.code()))?
            .pinned_reference
            .parse()
            .map_err(invalid)?,
    })
}

/// Runs `inspect`.
pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let keys = trusted_keys(&cmd.verify_keys)?;
    let client = (&cmd.client_cert).into();
    let mut tls = cmd.registry.tls(&cmd.reference, &client);
    tls.timeouts = cmd.deadlines.timeouts();
    let creds = cmd.registry.credentials()?;
    let inspected = twinflash_artifact::inspect(&tls, &creds, &cmd.reference)
        .await
        .map_err(|e| with_code(&e, e.code()))?;
    let pinned: FirmwareRef = inspected
        .pinned_reference
        .parse()
        .map_err(|e: FirmwareRefError| with_code(&e, e.code()))?;
    let cfg = fetch_config(
        std::env::temp_dir(),
        &cmd.registry,
        &client,
        pinned.as_str(),
        Vec::new(),
        tls.timeouts,
    )?;
    let verifier = Verifier::new(&cfg).map_err(|e| with_code(&e, e.code()))?;
    // The metadata is shown even when the signature lookup fails: the failure is a line of its own.
    let discovery = verifier.discover(&pinned).await;
    let seen: Vec<Seen<'_>> = match &discovery {
        Ok(d) => d
            .found
            .iter()
            .map(|f| Seen::new(pinned.digest(), d, f, &keys))
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut problems: Vec<String> = match &discovery {
        Ok(d) => d
            .problems
            .iter()
            .cloned()
            .chain(d.transient.iter().map(|e| format!("{e} [{}]", e.code())))
            .collect(),
        Err(e) => vec![format!("{e} [{}]", e.code())],
    };
    problems.dedup();
    let a = &inspected.artifact;
    let base_address = a
        .base_address
        .map(twinflash_artifact::format::format_base_address);
    if cmd.json {
        let mut out = json!({
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
            "signatures": seen.iter().map(Seen::to_json).collect::<Vec<_>>(),
            "signature_problems": problems,
        });
        if let (Ok(d), false) = (&discovery, keys.is_empty()) {
            let verdict = d.judge(pinned.digest(), &keys);
            out["signature_verdict"] = json!(verdict.code().map_or("verified", |c| c.as_str()));
        }
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
    if seen.is_empty() && problems.is_empty() {
        outln!("signatures    none");
    }
    for s in &seen {
        outln!("signature     {}", s.line());
    }
    for p in &problems {
        outln!("signature     lookup problem: {p}");
    }
    Ok(())
}
