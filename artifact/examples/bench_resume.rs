//! Benchmark B2 (run by scripts/bench/fetch.sh): fetch an artifact through the fault proxy cutting
//! every connection after 4 MiB and print bytes transferred over artifact size as a markdown row.
//! Usage: `cargo run --release -p twinflash-artifact --example bench_resume -- <file>`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use twinflash_artifact::{
    Credentials, FetchConfig, Fetcher, FirmwareFormat, PushRequest, TlsOptions, push,
};
use twinflash_harness::{Fault, FaultProxy, Registry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let file: PathBuf = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: bench_resume <file>"))?
        .into();
    let registry = Registry::start()?;
    let host = registry.host();
    let req = PushRequest {
        reference: format!("{host}/bench/resume:1.0.0"),
        file: file.clone(),
        version: "1.0.0".into(),
        chip: "bench".into(),
        format: Some(FirmwareFormat::Bin),
        base_address: Some(0),
        annotations: BTreeMap::new(),
    };
    let tls = TlsOptions {
        plain_http: vec![host.clone()],
        ..TlsOptions::default()
    };
    let pushed = push(&tls, &Credentials::default(), &req, |_, _| {}).await?;
    let proxy = FaultProxy::start(registry.addr())?;
    proxy.set(Fault::CutAfter {
        bytes: 4 * 1024 * 1024,
    });
    let proxy_host = proxy.addr().to_string();
    let cache = tempfile::tempdir()?;
    let mut cfg = FetchConfig::new(cache.path());
    cfg.plain_http = vec![proxy_host.clone()];
    let fetcher = Fetcher::new(cfg)?;
    let reference = pushed.pinned_reference.replacen(&host, &proxy_host, 1);
    let started = Instant::now();
    let fetched = fetcher
        .fetch(&reference.parse()?, |_| {}, &CancellationToken::new())
        .await?;
    let secs = started.elapsed().as_secs_f64();
    let size = fetched.artifact.size;
    println!(
        "| B2 cut every 4 MiB | {} MiB | {} connections | {:.4} x size transferred | {:.0} MB/s |",
        size / (1024 * 1024),
        proxy.connections(),
        proxy.bytes_down() as f64 / size as f64,
        size as f64 / secs / 1e6
    );
    Ok(())
}
