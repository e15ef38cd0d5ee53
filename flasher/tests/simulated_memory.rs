//! Memory of the simulated backend with a huge sector (issue 23: a 512 MiB sector allocated the whole sector on
//! every erase). One test in this file, so the process's peak resident set is this test's own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::os::unix::fs::FileExt;

use common::{peak_rss, progress, request, write};
use twinflash_flasher::simulated::SimulatedFlasher;
use twinflash_flasher::{CancellationToken, FirmwareFormat, Flasher, SimulatedConfig};
use twinflash_image::fixtures;

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn a_huge_sector_is_erased_without_holding_it_in_memory() {
    const SECTOR: u64 = 256 * MIB;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = SimulatedConfig::new(tmp.path().join("dev"), SECTOR);
    cfg.sector_size = SECTOR;
    cfg.page_size = 4096;
    let dev = SimulatedFlasher::new(cfg, "nRF52840_xxAA").unwrap();
    let data = fixtures::pattern(5000, 3);
    let req = request(
        write(tmp.path(), "fw.bin", &data),
        FirmwareFormat::Bin,
        Some(0),
        "nRF52840",
        "1.0.0",
    );
    // Peak so far (flash.bin created, runtime up): the erase must not add a sector to it.
    let before = peak_rss();
    let (tx, _rx) = progress();
    let out = dev.flash(&req, tx, CancellationToken::new()).await.unwrap();
    assert_eq!(out.bytes, 5000);
    let grew = peak_rss().saturating_sub(before);
    assert!(
        grew < 16 * MIB,
        "erasing a {} MiB sector raised the peak resident set by {} MiB",
        SECTOR / MIB,
        grew / MIB
    );
    // Erased around the image, the image in place (read in small pieces: the file is a whole sector).
    let flash = std::fs::File::open(dev.dir().unwrap().join("flash.bin")).unwrap();
    let mut head = vec![0u8; 5000 + 16];
    flash.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head[..5000], &data[..]);
    assert!(head[5000..].iter().all(|b| *b == 0xFF));
    let mut tail = [0u8; 16];
    flash.read_exact_at(&mut tail, SECTOR - 16).unwrap();
    assert_eq!(tail, [0xFF; 16]);
}
