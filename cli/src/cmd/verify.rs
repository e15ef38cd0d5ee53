//! `twinflash verify <ref> --key <pub.pem>...`: every signature found for the artifact, each with
//! its result, and the signer of the one that verified. The exit status tells the verdict to
//! scripts (docs/contract.md §6): 0 verified, 3 unsigned, 4 signature-invalid, 1 for anything else
//! (bad input, a registry that could not be asked).

use serde_json::json;
use twinflash_artifact::signature::{Verdict, Verifier};

use crate::cmd::registry::{DeadlineArgs, SignerRegistryArgs, with_code};
use crate::cmd::sigs::{Seen, fetch_config, parse_mirror, trusted_keys};

/// Exit status of `verify` when no signature was found.
pub const EXIT_UNSIGNED: u8 = 3;
/// Exit status of `verify` when signatures were found and none verified.
pub const EXIT_SIGNATURE_INVALID: u8 = 4;

/// Verify the signatures of an artifact with public keys.
#[derive(Debug, clap::Args)]
pub struct Cmd {
    /// The artifact: HOST:PORT/REPOSITORY:TAG or HOST:PORT/REPOSITORY@sha256:HEX.
    pub reference: String,
    /// A trusted public key (PEM `PUBLIC KEY`, e.g. cosign.pub); repeatable, any one suffices.
    /// A signer is reported by its key file's name.
    #[arg(long = "key", value_name = "FILE", required = true)]
    pub keys: Vec<std::path::PathBuf>,
    /// Also look in a mirror: a registry HOST:PORT, or oci:DIR (repeatable, asked before the
    /// origin, as pull does).
    #[arg(long = "mirror", value_name = "MIRROR")]
    pub mirrors: Vec<String>,
    /// Also look in an OCI image layout directory (the same as --mirror oci:DIR).
    #[arg(long = "layout", value_name = "DIR")]
    pub layouts: Vec<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: SignerRegistryArgs,
    #[command(flatten)]
    pub deadlines: DeadlineArgs,
}

/// The verdict was not "verified": the one line for stderr and the exit status.
#[derive(Debug)]
pub struct Rejected {
    /// `unsigned` or `signature-invalid` with its description.
    pub line: String,
    /// [`EXIT_UNSIGNED`] or [`EXIT_SIGNATURE_INVALID`].
    pub exit: u8,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.line)
    }
}

impl std::error::Error for Rejected {}

/// Runs `verify`.
pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let keys = trusted_keys(&cmd.keys)?;
    let client = cmd.registry.client();
    let mut tls = cmd.registry.tls(&cmd.reference);
    tls.timeouts = cmd.deadlines.timeouts();
    let creds = cmd.registry.registry.credentials()?;
    let pinned = crate::cmd::inspect::pin(&tls, &creds, &cmd.reference).await?;
    let mut mirrors: Vec<_> = cmd.mirrors.iter().map(|m| parse_mirror(m)).collect();
    mirrors.extend(
        cmd.layouts
            .iter()
            .cloned()
            .map(twinflash_artifact::Mirror::Layout),
    );
    let cfg = fetch_config(
        std::env::temp_dir(),
        &cmd.registry.registry,
        &client,
        pinned.as_str(),
        mirrors,
        tls.timeouts,
    )?;
    let verifier = Verifier::new(&cfg).map_err(|e| with_code(&e, e.code()))?;
    let discovery = verifier
        .discover(&pinned)
        .await
        .map_err(|e| with_code(&e, e.code()))?;
    let digest = pinned.digest();
    let seen: Vec<Seen<'_>> = discovery
        .found
        .iter()
        .map(|f| Seen::new(digest, &discovery, f, &keys))
        .collect();
    let verdict = discovery.judge(digest, &keys);
    if !matches!(verdict, Verdict::Verified(_)) {
        // A source that could not be asked may hold the good signature: not a verdict.
        if let Some(e) = discovery.transient.first() {
            return Err(with_code(e, e.code()));
        }
    }
    if cmd.json {
        let signer = match &verdict {
            Verdict::Verified(v) => json!({"name": v.signer, "key_id": v.key_id}),
            _ => serde_json::Value::Null,
        };
        let out = json!({
            "reference": pinned.as_str(),
            "digest": digest,
            "verdict": verdict.code().map_or("verified", |c| c.as_str()),
            "signer": signer,
            "signatures": seen.iter().map(Seen::to_json).collect::<Vec<_>>(),
            "looked_in": discovery.looked_in,
            "problems": discovery.problems,
        });
        outln!("{out}");
    } else {
        outln!("reference  {}", pinned.as_str());
        for s in &seen {
            outln!("signature  {}", s.line());
        }
        for p in &discovery.problems {
            outln!("problem    {p}");
        }
        if let Verdict::Verified(v) = &verdict {
            outln!("verified   {v}");
        }
    }
    match verdict.code() {
        None => Ok(()),
        Some(code) => Err(Rejected {
            line: format!("{} [{code}]", verdict.describe()),
            exit: if matches!(verdict, Verdict::Unsigned { .. }) {
                EXIT_UNSIGNED
            } else {
                EXIT_SIGNATURE_INVALID
            },
        }
        .into()),
    }
}
