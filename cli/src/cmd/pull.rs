//! `twinflash pull <ref> -o <file>`: the edge agent's fetcher (mirrors, resume, verify, cache),
//! then a copy of the verified firmware to the output file.

use std::path::PathBuf;

use anyhow::Context;
use mqtt_schema::{FirmwareRef, FirmwareRefError, RefKind};
use tokio_util::sync::CancellationToken;
use twinflash_artifact::{FetchConfig, FetchEvent, Fetcher, Mirror, RetryPolicy};

use crate::cmd::registry::{RegistryArgs, progress_bar, registry_of, with_code};

/// Fetch and verify an artifact and write its firmware file.
#[derive(Debug, clap::Args)]
pub struct Cmd {
    /// The artifact: HOST:PORT/REPOSITORY:TAG@sha256:HEX (a tag alone is resolved first).
    pub reference: String,
    /// Where to write the firmware file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// The fetcher's cache [default: $XDG_CACHE_HOME/twinflash or ~/.cache/twinflash].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// A mirror tried before the origin: a registry HOST:PORT, or oci:DIR for an OCI
    /// image layout (repeatable, in order).
    #[arg(long = "mirror", value_name = "MIRROR")]
    pub mirrors: Vec<String>,
    /// Largest artifact accepted, bytes.
    #[arg(long, default_value_t = 1 << 30)]
    pub max_size: u64,
    /// Download rate limit, bytes per second.
    #[arg(long)]
    pub rate_limit: Option<u64>,
    /// Give up after this many attempts without progress (0: retry forever).
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// Bytes between durable checkpoints of the partial download.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub checkpoint_every: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("twinflash")
}

fn parse_mirror(s: &str) -> Mirror {
    match s.strip_prefix("oci:") {
        Some(dir) => Mirror::Layout(PathBuf::from(dir)),
        None => Mirror::Registry(s.to_owned()),
    }
}

/// Runs `pull`.
pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let tls = cmd.registry.tls(&cmd.reference);
    let creds = cmd.registry.credentials()?;
    let invalid = |e: FirmwareRefError| with_code(&e, e.code());
    let reference = match FirmwareRef::classify(&cmd.reference).map_err(invalid)? {
        RefKind::Pinned(r) => r,
        RefKind::Tag => twinflash_artifact::inspect(&tls, &creds, &cmd.reference)
            .await
            .map_err(|e| with_code(&e, e.code()))?
            .pinned_reference
            .parse()
            .map_err(invalid)?,
    };
    let mirrors: Vec<Mirror> = cmd.mirrors.iter().map(|m| parse_mirror(m)).collect();
    let mut plain_http = tls.plain_http.clone();
    if cmd.registry.plain_http {
        for m in &mirrors {
            if let Mirror::Registry(host) = m {
                plain_http.push(host.clone());
            }
        }
        plain_http.push(registry_of(reference.as_str()));
    }
    let mut cfg = FetchConfig::new(cmd.cache_dir.clone().unwrap_or_else(default_cache_dir));
    cfg.max_size = cmd.max_size;
    cfg.rate_limit_bps = cmd.rate_limit;
    cfg.plain_http = plain_http;
    cfg.mirrors = mirrors;
    cfg.credentials = creds;
    cfg.ca_file = cmd.registry.ca_file.clone();
    cfg.client_cert = cmd.registry.cert.clone();
    cfg.client_key = cmd.registry.key.clone();
    cfg.checkpoint_every = cmd.checkpoint_every;
    cfg.retry = RetryPolicy {
        max_attempts: (cmd.retries > 0).then_some(cmd.retries),
        ..RetryPolicy::default()
    };
    let fetcher = Fetcher::new(cfg).map_err(|e| with_code(&e, e.code()))?;
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let bar = progress_bar(0);
    let started = std::time::Instant::now();
    let fetched = fetcher
        .fetch(
            &reference,
            |event| match event {
                FetchEvent::Progress { done, total } => {
                    bar.set_length(total);
                    bar.set_position(done);
                }
                FetchEvent::Waiting {
                    code,
                    attempt,
                    retry_in,
                } => bar.suspend(|| {
                    eprintln!(
                        "waiting:{code} (attempt {attempt}, retry in {:.1}s)",
                        retry_in.as_secs_f64()
                    );
                }),
            },
            &cancel,
        )
        .await;
    bar.finish_and_clear();
    let fetch_seconds = started.elapsed().as_secs_f64();
    let fetched = fetched.map_err(|e| with_code(&e, e.code()))?;
    copy_out(&fetched.path, &cmd.output)?;
    if cmd.json {
        let a = &fetched.artifact;
        outln!(
            "{}",
            serde_json::json!({
                "reference": fetched.reference,
                "digest": fetched.manifest_digest,
                "version": a.version, "chip": a.chip, "format": a.format.as_str(),
                "size": a.size, "layer_digest": a.layer_digest, "title": a.title,
                "source": fetched.source, "bytes_received": fetched.bytes_received,
                "output": cmd.output, "fetch_seconds": fetch_seconds,
            })
        );
    } else {
        eprintln!(
            "verified {} {} ({} bytes) from {}",
            fetched.artifact.format,
            fetched.artifact.version,
            fetched.artifact.size,
            fetched.source
        );
        outln!("{}", cmd.output.display());
    }
    Ok(())
}

/// Copies the verified blob to `output` through a temp file and a rename.
fn copy_out(blob: &std::path::Path, output: &std::path::Path) -> anyhow::Result<()> {
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = output
        .file_name()
        .with_context(|| format!("{} is not a file path", output.display()))?;
    let tmp = dir.join(format!(".{}.twinflash-tmp", name.to_string_lossy()));
    std::fs::copy(blob, &tmp).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, output).with_context(|| format!("write {}", output.display()))?;
    Ok(())
}
