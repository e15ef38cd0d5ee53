//! `twinflash push <ref> <file> --version <v> --chip <chip> [--sign-key <file>]`: validate,
//! upload, sign if asked, print the digest-pinned reference as the last line of stdout.

use std::collections::BTreeMap;
use std::path::PathBuf;

use twinflash_artifact::format::parse_base_address;
use twinflash_artifact::{FirmwareFormat, PushRequest};

use crate::cmd::registry::{
    ClientCertArgs, RegistryArgs, parse_annotation, progress_bar, with_code,
};
use crate::cmd::sign::{FormatArg, load_signing_key, sign, summary};

/// Push a firmware file as a twinflash artifact.
#[derive(Debug, clap::Args)]
pub struct Cmd {
    /// Where to push: HOST:PORT/REPOSITORY:TAG (port and tag optional).
    pub reference: String,
    /// The firmware file (ELF, Intel HEX, UF2 or raw binary).
    pub file: PathBuf,
    /// Firmware version (semver).
    #[arg(long)]
    pub version: String,
    /// Target chip (a probe-rs chip or family name).
    #[arg(long)]
    pub chip: String,
    /// Format: elf, ihex, bin or uf2 [default: detected from content].
    #[arg(long)]
    pub format: Option<String>,
    /// Load address of a raw binary, hex (required for bin).
    #[arg(long)]
    pub base_address: Option<String>,
    /// Extra manifest annotation key=value (repeatable).
    #[arg(long = "annotation", value_name = "K=V")]
    pub annotations: Vec<String>,
    /// Sign the pushed artifact with this private key (as `twinflash sign --key`).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Where the signature goes (with --sign-key).
    #[arg(long, value_enum, default_value_t = FormatArg::Cosign, requires = "sign_key")]
    pub sign_format: FormatArg,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub client_cert: ClientCertArgs,
}

/// Runs `push`.
pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let format = cmd
        .format
        .as_deref()
        .map(str::parse::<FirmwareFormat>)
        .transpose()
        .map_err(|e| with_code(&e, e.code()))?;
    let base_address = cmd
        .base_address
        .as_deref()
        .map(parse_base_address)
        .transpose()
        .map_err(|e| with_code(&e, e.code()))?;
    let mut annotations = BTreeMap::new();
    for a in &cmd.annotations {
        let (k, v) = parse_annotation(a)?;
        if twinflash_artifact::manifest::RESERVED_ANNOTATIONS.contains(&k.as_str()) {
            anyhow::bail!("annotation {k} is set by --version, --chip or --base-address");
        }
        annotations.insert(k, v);
    }
    annotations
        .entry(twinflash_artifact::format::ANNOTATION_CREATED.to_owned())
        .or_insert_with(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let req = PushRequest {
        reference: cmd.reference.clone(),
        file: cmd.file.clone(),
        version: cmd.version.clone(),
        chip: cmd.chip.clone(),
        format,
        base_address,
        annotations,
    };
    let sign_key = cmd.sign_key.as_deref().map(load_signing_key).transpose()?;
    let tls = cmd.registry.tls(&cmd.reference, &(&cmd.client_cert).into());
    let creds = cmd.registry.credentials()?;
    let bar = progress_bar(0);
    let pushed = twinflash_artifact::push(&tls, &creds, &req, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await;
    bar.finish_and_clear();
    let pushed = pushed.map_err(|e| with_code(&e, e.code()))?;
    eprintln!(
        "pushed {} {} for {} ({} bytes)",
        pushed.artifact.format, pushed.artifact.version, pushed.artifact.chip, pushed.artifact.size
    );
    if let Some(key) = &sign_key {
        let signed = sign(
            &tls,
            &cmd.registry,
            &pushed.pinned_reference,
            key,
            cmd.sign_format.into(),
        )
        .await?;
        eprintln!("{}", summary(&signed));
    }
    outln!("{}", pushed.pinned_reference);
    Ok(())
}
