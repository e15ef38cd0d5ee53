//! Memory of the simulated backend with a large BIN (issue 24: `flasher::image::load` read the whole image, and the
//! parse copied it once more; verify and the read back of `installed()` read whole segments of the flash). One test
//! in this file, so the process's peak resident set is this test's own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::io::Write;

use common::{peak_rss, progress, request};
use twinflash_flasher::simulated::SimulatedFlasher;
use twinflash_flasher::{CancellationToken, FirmwareFormat, Flasher, SimulatedConfig};

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn a_large_bin_is_flashed_verified_and_read_back_without_holding_it_in_memory() {
    const SIZE: u64 = 64 * MIB;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = SimulatedConfig::new(tmp.path().join("dev"), SIZE);
    cfg.origin = 0x0800_0000;
    cfg.sector_size = MIB;
    cfg.page_size = 64 * 1024;
    let dev = SimulatedFlasher::new(cfg, "STM32F405RG").unwrap();
    // The image, written a MiB at a time so that making it costs no memory either.
    let path = tmp.path().join("big.bin");
    let block: Vec<u8> = (0..MIB as usize).map(|i| (i * 31 % 251) as u8).collect();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for _ in 0..SIZE / MIB {
            f.write_all(&block).unwrap();
        }
        f.flush().unwrap();
    }
    let req = request(
        path,
        FirmwareFormat::Bin,
        Some(0x0800_0000),
        "STM32F405RG",
        "1.0.0",
    );
    let before = peak_rss();
    let (tx, _rx) = progress();
    let out = dev.flash(&req, tx, CancellationToken::new()).await.unwrap();
    assert_eq!(out.bytes, SIZE);
    let installed = dev
        .installed()
        .await
        .unwrap()
        .expect("verified image reads back");
    assert_eq!(installed.version, "1.0.0");
    let grew = peak_rss().saturating_sub(before);
    assert!(
        grew < 16 * MIB,
        "flashing and reading back a {} MiB BIN raised the peak resident set by {} MiB",
        SIZE / MIB,
        grew / MIB
    );
    // What the flash holds is the image: spot checks at both ends.
    use std::os::unix::fs::FileExt;
    let flash = std::fs::File::open(dev.dir().unwrap().join("flash.bin")).unwrap();
    let mut head = vec![0u8; 4096];
    flash.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, block[..4096]);
    flash.read_exact_at(&mut head, SIZE - 4096).unwrap();
    assert_eq!(head, block[block.len() - 4096..]);
}
