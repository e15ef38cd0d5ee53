//! Costs and memory bounds of the hostile-input defences of issue 23, as markdown rows:
//! - `cache-rehash <MiB>...`: the time to re-hash a cached blob before it is used (`Cache::verified_blob`: sha256
//!   at opt-level 3 over a file in the page cache, the agent's case right after a download or a flash);
//! - `elf-bomb`: the peak resident set of parsing the program-header bomb (a 4 MiB ELF32 whose 65,534 PT_LOAD
//!   headers name the whole file: 256 GiB of segments);
//! - `ihex-flood`: the peak resident set of parsing 1,000,000 one-byte Intel HEX records (a 14 MB file), contiguous
//!   and every other byte.
//!
//! Each memory case runs in its own process (this example re-runs itself), so each peak is that case's alone.
//!
//! Run: `cargo run --release -p twinflash-bench --example bench_hostile [cache-rehash 16 512 | elf-bomb | ihex-flood]`
//! (no argument: all of them, as bench.sh does).

use std::time::Instant;

use sha2::Digest;
use twinflash_artifact::fetch::Cache;
use twinflash_artifact::format::{FirmwareFormat, parse};
use twinflash_image::fixtures;

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Re-hashes a blob of `size_mib` MiB in the cache, best of three.
fn cache_rehash(size_mib: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cache = Cache::open(dir.path())?;
    let data = fixtures::pattern((size_mib << 20) as usize, 5);
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data)));
    std::fs::write(cache.blob_path(&digest), &data)?;
    drop(data);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        anyhow::ensure!(
            cache.verified_blob(&digest, size_mib << 20),
            "the blob did not verify"
        );
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "| re-hash of a cached {size_mib} MiB blob before use (`Cache::verified_blob`, best of 3) | {:.3} s ({:.0} MiB/s) |",
        best,
        size_mib as f64 / best
    );
    Ok(())
}

fn elf_bomb() {
    let bomb = fixtures::elf32_header_bomb();
    let before = twinflash_harness::status_kib(None, "VmHWM").unwrap_or(0);
    let start = Instant::now();
    let result = parse(&bomb, FirmwareFormat::Elf, None);
    let took = start.elapsed();
    let verdict = match result {
        Ok(img) => format!("parsed ({} bytes)", img.len()),
        Err(e) => format!("refused: {e}"),
    };
    println!(
        "| ELF program-header bomb (4 MiB file, 65,534 PT_LOAD headers of 4 MiB each) | peak RSS {} ({} with the file in memory before the parse); {verdict}; {:.1} ms |",
        mib(twinflash_harness::status_kib(None, "VmHWM").unwrap_or(0)),
        mib(before),
        took.as_secs_f64() * 1000.0
    );
}

fn ihex_flood(stride: u32) {
    let one = [0x5A_u8];
    let hex =
        fixtures::ihex_pieces((0..1_000_000u32).map(|i| (0x0800_0000 + stride * i, &one[..])));
    let len = hex.len();
    let before = twinflash_harness::status_kib(None, "VmHWM").unwrap_or(0);
    let result = parse(hex.as_bytes(), FirmwareFormat::Ihex, None);
    let verdict = match result {
        Ok(img) => format!("{} segment(s), {} bytes", img.segments.len(), img.len()),
        Err(e) => format!("refused: {e}"),
    };
    let layout = if stride == 1 {
        "contiguous"
    } else {
        "every other byte"
    };
    println!(
        "| Intel HEX, 1,000,000 one-byte records, {layout} ({:.1} MB file) | peak RSS {} ({} with the file in memory before the parse); {verdict} |",
        len as f64 / 1e6,
        mib(twinflash_harness::status_kib(None, "VmHWM").unwrap_or(0)),
        mib(before)
    );
}

/// Runs this example again with `args`, so that the case's peak resident set is its own.
fn isolated(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .status()?;
    anyhow::ensure!(status.success(), "{args:?} failed");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("cache-rehash") => {
            for size in &args[1..] {
                cache_rehash(size.parse()?)?;
            }
        }
        Some("elf-bomb") => elf_bomb(),
        Some("ihex-flood") => match args.get(1).map(String::as_str) {
            Some("1") => ihex_flood(1),
            Some("2") => ihex_flood(2),
            _ => {
                isolated(&["ihex-flood", "1"])?;
                isolated(&["ihex-flood", "2"])?;
            }
        },
        Some(other) => anyhow::bail!("unknown case {other:?}"),
        None => {
            println!("| case | figure |");
            println!("|---|---|");
            isolated(&["cache-rehash", "16", "512"])?;
            isolated(&["elf-bomb"])?;
            isolated(&["ihex-flood", "1"])?;
            isolated(&["ihex-flood", "2"])?;
        }
    }
    Ok(())
}
