//! `twinflash sign <ref> --key <file> [--format cosign|bundle]`: sign the artifact's manifest
//! digest where cosign-compatible verifiers look (`twinflash_artifact::signature::write`); prints
//! the key id, the format, where the signature is stored and, last, the digest-pinned reference
//! (the line scripts take, as after push).

use std::path::PathBuf;

use twinflash_artifact::signature::SigningKey;
use twinflash_artifact::signature::write::{SignFormat, Signed};

use crate::cmd::registry::{RegistryArgs, SignerRegistryArgs, with_code};
pub use crate::cmd::sigs::load_signing_key;

/// Where a signature is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// cosign's tag `sha256-<hex>.sig` (read by cosign, sigstore-rs, containers/image, twinflash).
    #[default]
    Cosign,
    /// A Sigstore bundle v0.3 as an OCI 1.1 referrer (cosign v3's default format).
    Bundle,
}

impl From<FormatArg> for SignFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Cosign => Self::Cosign,
            FormatArg::Bundle => Self::Bundle,
        }
    }
}

/// Sign an artifact.
#[derive(Debug, clap::Args)]
pub struct Cmd {
    /// The artifact: HOST:PORT/REPOSITORY:TAG or HOST:PORT/REPOSITORY@sha256:HEX.
    pub reference: String,
    /// The private key: PEM PKCS#8 or SEC1 (P-256, Ed25519), or cosign's encrypted cosign.key
    /// (password from COSIGN_PASSWORD, else asked on the terminal).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Where the signature goes.
    #[arg(long, value_enum, default_value_t = FormatArg::Cosign)]
    pub format: FormatArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: SignerRegistryArgs,
}

/// Runs `sign`.
pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let tls = cmd.registry.tls(&cmd.reference);
    let key = load_signing_key(&cmd.key)?;
    let signed = sign(
        &tls,
        &cmd.registry.registry,
        &cmd.reference,
        &key,
        cmd.format.into(),
    )
    .await?;
    if cmd.json {
        let out = serde_json::json!({
            "reference": signed.pinned_reference,
            "digest": signed.digest,
            "key_id": signed.key_id,
            "format": format_name(signed.format),
            "location": signed.location,
        });
        outln!("{out}");
    } else {
        outln!("key       {}", signed.key_id);
        outln!("format    {}", format_name(signed.format));
        outln!("stored    {}", signed.location);
        outln!("{}", signed.pinned_reference);
    }
    Ok(())
}

/// The `--format` spelling.
pub fn format_name(f: SignFormat) -> &'static str {
    match f {
        SignFormat::Cosign => "cosign",
        SignFormat::Bundle => "bundle",
    }
}

/// One line for stderr about a signature written (`push --sign-key`).
pub fn summary(signed: &Signed) -> String {
    format!(
        "signed {} with key {}: {} {}",
        signed.digest,
        signed.key_id,
        format_name(signed.format),
        signed.location
    )
}

/// Signs `reference` with `key` (`sign`, and `push --sign-key` right after the push; both read
/// the key first, so a wrong password fails before anything is written).
pub async fn sign(
    tls: &twinflash_artifact::TlsOptions,
    registry: &RegistryArgs,
    reference: &str,
    key: &SigningKey,
    format: SignFormat,
) -> anyhow::Result<Signed> {
    let creds = registry.credentials()?;
    twinflash_artifact::signature::write::sign(tls, &creds, reference, key, format)
        .await
        .map_err(|e| with_code(&e, e.code()))
}
