//! `twinflash pull <ref> -o <file>`: the edge agent's fetcher (mirrors, resume, verify, cache),
//! then an atomic copy of the verified firmware to the output file, which must be a regular file
//! (or a new one): device nodes, FIFOs, sockets, directories and symbolic links are refused, and
//! `--force` follows a symbolic link to the regular file it points to.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;
use twinflash_artifact::{FetchEvent, Fetcher, Mirror, RetryPolicy};

use crate::cmd::registry::{ClientCertArgs, DeadlineArgs, RegistryArgs, progress_bar, with_code};
use crate::cmd::sigs::{fetch_config, parse_mirror};

/// Fetch and verify an artifact and write its firmware file.
#[derive(Debug, clap::Args)]
pub struct Cmd {
    /// The artifact: HOST:PORT/REPOSITORY:TAG@sha256:HEX (a tag alone is resolved first).
    pub reference: String,
    /// Where to write the firmware file: a regular file, replaced atomically, or a new one.
    #[arg(short, long)]
    pub output: PathBuf,
    /// If --output is a symbolic link, write the regular file it points to (refused otherwise).
    #[arg(long)]
    pub force: bool,
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
    /// Total deadline of one blob request, in seconds; the download then resumes with Range
    /// (a slow download that makes progress still completes).
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub blob_timeout: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub client_cert: ClientCertArgs,
    #[command(flatten)]
    pub deadlines: DeadlineArgs,
}

fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("twinflash")
}

/// Runs `pull`.
pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    // Refused before anything is downloaded, and checked again before writing.
    output_target(&cmd.output, cmd.force)?;
    let mut tls = cmd.registry.tls(&cmd.reference, &(&cmd.client_cert).into());
    tls.timeouts = cmd.deadlines.timeouts();
    tls.timeouts.blob_request = Duration::from_secs(cmd.blob_timeout);
    let creds = cmd.registry.credentials()?;
    let reference = crate::cmd::inspect::pin(&tls, &creds, &cmd.reference).await?;
    let mirrors: Vec<Mirror> = cmd.mirrors.iter().map(|m| parse_mirror(m)).collect();
    let mut cfg = fetch_config(
        cmd.cache_dir.clone().unwrap_or_else(default_cache_dir),
        &cmd.registry,
        &(&cmd.client_cert).into(),
        reference.as_str(),
        mirrors,
        tls.timeouts,
    )?;
    cfg.max_size = cmd.max_size;
    cfg.rate_limit_bps = cmd.rate_limit;
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
    copy_out(&fetched.path, &output_target(&cmd.output, cmd.force)?)?;
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

/// The regular file to write for `-o output`: `output` itself if it is a regular file or does
/// not exist; with `force`, the regular file a symbolic link points to. Anything else is refused.
fn output_target(output: &Path, force: bool) -> anyhow::Result<PathBuf> {
    let shown = output.display();
    let meta = match std::fs::symlink_metadata(output) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(output.to_owned()),
        Err(e) => return Err(e).with_context(|| format!("-o {shown}")),
    };
    if meta.is_file() {
        return Ok(output.to_owned());
    }
    if !meta.file_type().is_symlink() {
        bail!(
            "refusing to write {shown}: it is {}; -o takes a regular file",
            mqtt_schema::small_file::file_kind(&meta.file_type())
        );
    }
    if !force {
        bail!(
            "refusing to write {shown}: it is a symbolic link; --force writes the file it points to"
        );
    }
    let target = std::fs::canonicalize(output)
        .with_context(|| format!("-o {shown}: follow the symbolic link"))?;
    let meta = std::fs::metadata(&target).with_context(|| format!("-o {}", target.display()))?;
    if !meta.is_file() {
        bail!(
            "refusing to write {shown}: it points to {}, which is {}; -o takes a regular file",
            target.display(),
            mqtt_schema::small_file::file_kind(&meta.file_type())
        );
    }
    Ok(target)
}

/// Copies the verified blob to the regular file `target` atomically: a temporary file in the
/// same directory (tempfile crate), fsync, rename over `target`, fsync the directory. `target`
/// keeps its permissions; a new file gets the blob's.
fn copy_out(blob: &Path, target: &Path) -> anyhow::Result<()> {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let shown = target.display();
    let mut source =
        std::fs::File::open(blob).with_context(|| format!("read {}", blob.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".twinflash-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("write {shown}: temporary file in {}", dir.display()))?;
    std::io::copy(&mut source, tmp.as_file_mut()).with_context(|| format!("write {shown}"))?;
    let permissions = match std::fs::metadata(target) {
        Ok(meta) => meta.permissions(),
        Err(_) => source
            .metadata()
            .with_context(|| format!("read {}", blob.display()))?
            .permissions(),
    };
    tmp.as_file()
        .set_permissions(permissions)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("write {shown}"))?;
    tmp.persist(target)
        .map_err(|e| e.error)
        .with_context(|| format!("write {shown}"))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync {}", dir.display()))?;
    Ok(())
}
