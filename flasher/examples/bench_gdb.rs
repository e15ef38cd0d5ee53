//! Flash throughput of the gdb backend into QEMU's GDB server (netduinoplus2, STM32F405), against
//! `gdb-multiarch -batch -ex load` of the same bytes into the same board in the same run. Prints markdown rows.
//!
//! The image: the harness's good test firmware (so the board boots after each reset) padded with a byte pattern to
//! `<KiB>` (default 768; the flash is 1 MiB). Each side: connect, write, reset (`monitor system_reset`), detach;
//! the backend also reads every byte back (its verify), gdb once without and once with `compare-sections`.
//! Best of three runs each.
//!
//! `rss <MiB>`: the peak resident set of this process while the backend flashes a `<MiB>` BIN (streamed from its
//! file) into the RAM of QEMU's `virt` machine (the only emulated ARM memory that large), through QEMU's GDB server.
//!
//! Run: `cargo run --release -p twinflash-flasher --no-default-features --example bench_gdb [KiB | rss MiB]`

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use twinflash_flasher::gdb::GdbFlasher;
use twinflash_flasher::{
    CancellationToken, FirmwareFormat, FlashRequest, Flasher, GdbConfig, Phase,
};
use twinflash_harness::board::{Board, BoardKind, Firmware, Variant};

const RUNS: usize = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("rss") {
        let mib: u64 = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(512);
        return rss(mib);
    }
    let kib: u64 = args.first().map(|a| a.parse()).transpose()?.unwrap_or(768);
    let kind = BoardKind::Netduinoplus2;
    let fw = Firmware::build(kind, Variant::Good, "1.0.0")?;
    let dir = tempfile::tempdir()?;
    let mut data = std::fs::read(fw.bin())?;
    let size = usize::try_from(kib * 1024)?;
    data.extend((data.len()..size).map(|i| (i * 31 % 251) as u8));
    let bin = dir.path().join("image.bin");
    std::fs::write(&bin, &data)?;
    let elf = dir.path().join("image.elf");
    objcopy_to_elf(&bin, &elf, kind.flash_origin())?;
    let board = Board::start(kind, None)?;
    let target = board.gdb_addr().to_string();
    let mib = data.len() as f64 / (1024.0 * 1024.0);

    let cfg = GdbConfig {
        reset: Some("system_reset".into()),
        ..GdbConfig::new(target.clone())
    };
    let flasher = GdbFlasher::new(cfg, kind.chip())?;
    let req = FlashRequest {
        image: bin.clone(),
        format: FirmwareFormat::Bin,
        base_address: Some(kind.flash_origin()),
        chip: kind.chip().into(),
        reference: "bench".into(),
        version: "1.0.0".into(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut ours = Vec::new();
    for _ in 0..RUNS {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let started = Instant::now();
        let (result, verify_at) = rt.block_on(async {
            let flash = flasher.flash(&req, tx, CancellationToken::new());
            tokio::pin!(flash);
            let mut verify_at = None;
            loop {
                tokio::select! {
                    r = &mut flash => break (r, verify_at),
                    Some(p) = rx.recv() => {
                        if p.phase == Phase::Verifying && verify_at.is_none() {
                            verify_at = Some(started.elapsed());
                        }
                    }
                }
            }
        });
        result?;
        let total = started.elapsed();
        ours.push((total, verify_at.unwrap_or(total)));
    }
    let (total, write) = ours.iter().min().copied().unwrap_or_default();

    let load = best_of(|| gdb(&target, &elf, false))?;
    let load_compare = best_of(|| gdb(&target, &elf, true))?;
    // The last reset booted the image: the board is alive and printed its banner.
    board.wait_line("boot version=1.0.0", Duration::from_secs(10))?;

    println!(
        "| tool (netduinoplus2 in QEMU, {:.2} MiB image, best of {RUNS}) | whole flash | rate | notes |",
        mib
    );
    println!("|---|---|---|---|");
    println!(
        "| twinflash gdb backend (write + read-back verify + reset) | {:.2} s | {:.1} MiB/s | writes done after {:.2} s ({:.1} MiB/s), verify {:.2} s |",
        total.as_secs_f64(),
        mib / total.as_secs_f64(),
        write.as_secs_f64(),
        mib / write.as_secs_f64(),
        (total - write).as_secs_f64()
    );
    println!(
        "| `gdb-multiarch -batch -ex load` (+ reset) | {:.2} s | {:.1} MiB/s | no verify, no progress |",
        load.as_secs_f64(),
        mib / load.as_secs_f64()
    );
    println!(
        "| `gdb-multiarch -batch -ex load -ex compare-sections` (+ reset) | {:.2} s | {:.1} MiB/s | verify like ours |",
        load_compare.as_secs_f64(),
        mib / load_compare.as_secs_f64()
    );
    Ok(())
}

fn best_of(
    mut f: impl FnMut() -> Result<Duration, Box<dyn std::error::Error>>,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let mut best = Duration::MAX;
    for _ in 0..RUNS {
        best = best.min(f()?);
    }
    Ok(best)
}

/// One `gdb-multiarch -batch` run: connect, load (and compare), reset, detach.
fn gdb(target: &str, elf: &Path, compare: bool) -> Result<Duration, Box<dyn std::error::Error>> {
    let mut cmd = Command::new("gdb-multiarch");
    cmd.args(["-q", "-batch", "-nx"])
        .args(["-ex", &format!("target remote {target}")])
        .args(["-ex", "load"]);
    if compare {
        cmd.args(["-ex", "compare-sections"]);
    }
    cmd.args(["-ex", "monitor system_reset", "-ex", "detach"])
        .arg(elf);
    let started = Instant::now();
    let out = cmd.output()?;
    let took = started.elapsed();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || text.contains("MIS-MATCHED") || text.contains("rror") {
        return Err(format!("gdb-multiarch failed: {text}").into());
    }
    Ok(took)
}

/// The raw image as an ELF with one loadable section at `origin`, for gdb's `load`.
fn objcopy_to_elf(bin: &Path, elf: &Path, origin: u64) -> Result<(), Box<dyn std::error::Error>> {
    let out = Command::new("arm-none-eabi-objcopy")
        .args(["-I", "binary", "-O", "elf32-littlearm", "-B", "arm"])
        .args(["--rename-section", ".data=.text,alloc,load,contents,code"])
        .args(["--change-section-address", &format!(".data={origin:#x}")])
        .arg(bin)
        .arg(elf)
        .output()?;
    if !out.status.success() {
        return Err(format!("objcopy: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// Flashes a `mib` MiB BIN into QEMU `virt` RAM (at 0x4000_0000) and reports the peak RSS.
fn rss(mib: u64) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let dir = tempfile::tempdir()?;
    let bin = dir.path().join("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&bin)?);
        let block: Vec<u8> = (0..1024 * 1024)
            .map(|i: usize| (i * 31 % 251) as u8)
            .collect();
        for _ in 0..mib {
            f.write_all(&block)?;
        }
        f.flush()?;
    }
    let port = twinflash_harness::free_port();
    let mut qemu = Command::new("qemu-system-arm")
        .args(["-M", "virt", "-m", &format!("{}", mib + 64)])
        .args(["-nodefaults", "-display", "none", "-S"])
        .args(["-gdb", &format!("tcp:127.0.0.1:{port}")])
        .stdin(std::process::Stdio::null())
        .spawn()?;
    let target = format!("127.0.0.1:{port}");
    let started = Instant::now();
    while std::net::TcpStream::connect(&target).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = qemu.kill();
            return Err("qemu did not listen".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // That probe connection made QEMU stop and resume nothing (it was started halted); wait for it to close.
    std::thread::sleep(Duration::from_millis(200));
    let before = twinflash_harness::status_kib(None, "VmHWM").unwrap_or(0);
    let flasher = GdbFlasher::new(GdbConfig::new(target), "virt")?;
    let req = FlashRequest {
        image: bin,
        format: FirmwareFormat::Bin,
        base_address: Some(0x4000_0000),
        chip: "virt".into(),
        reference: "bench".into(),
        version: "1.0.0".into(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let result = rt.block_on(flasher.flash(
        &req,
        tokio::sync::mpsc::unbounded_channel().0,
        CancellationToken::new(),
    ));
    let took = started.elapsed();
    let _ = qemu.kill();
    let _ = qemu.wait();
    let out = result?;
    println!(
        "| image | bytes written and verified | time | peak RSS of the flashing process | before the flash |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {mib} MiB BIN into QEMU virt RAM | {} | {:.1} s | {:.1} MiB | {:.1} MiB |",
        out.bytes,
        took.as_secs_f64(),
        twinflash_harness::status_kib(None, "VmHWM").unwrap_or(0) as f64 / 1024.0,
        before as f64 / 1024.0
    );
    Ok(())
}
