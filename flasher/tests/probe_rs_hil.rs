//! Hardware in the loop: runs against a real probe and board when `TWINFLASH_HIL_PROBE`
//! (`VID:PID[:serial]`) and `TWINFLASH_HIL_CHIP` are set, and says it was skipped otherwise.
//! With `TWINFLASH_HIL_IMAGE` (+ `TWINFLASH_HIL_FORMAT`, `TWINFLASH_HIL_BASE` for BIN) it also
//! flashes that image twice: the first time programs and verifies, the second is skipped by preverify.
#![cfg(feature = "probe-rs")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::path::PathBuf;

use twinflash_flasher::probe_rs::ProbeRsFlasher;
use twinflash_flasher::{CancellationToken, FirmwareFormat, FlashRequest, Flasher, ProbeRsConfig};
use twinflash_image::fixtures;

#[tokio::test]
async fn hil_flash_real_board() {
    let (Ok(probe), Ok(chip)) = (
        std::env::var("TWINFLASH_HIL_PROBE"),
        std::env::var("TWINFLASH_HIL_CHIP"),
    ) else {
        eprintln!(
            "SKIPPED hil_flash_real_board: set TWINFLASH_HIL_PROBE=VID:PID[:serial] and TWINFLASH_HIL_CHIP=<chip>"
        );
        return;
    };
    let cfg = ProbeRsConfig {
        probe: Some(probe),
        speed_khz: std::env::var("TWINFLASH_HIL_SPEED_KHZ")
            .ok()
            .and_then(|s| s.parse().ok()),
        connect_under_reset: std::env::var("TWINFLASH_HIL_UNDER_RESET").is_ok_and(|v| v == "1"),
        protocol: None,
        preverify: true,
        reset_after: true,
    };
    let flasher = ProbeRsFlasher::new(cfg, &chip).unwrap();

    // Attach and dry-run a small BIN at the start of the chip's first flash region: nothing is written.
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("dry.bin");
    std::fs::write(&bin, fixtures::pattern(1024, 7)).unwrap();
    let f2 = flasher.clone();
    let chip2 = chip.clone();
    tokio::task::spawn_blocking(move || {
        let mut session = f2.attach(f2.open_probe().unwrap()).unwrap();
        let start = session
            .target()
            .memory_map
            .iter()
            .find_map(|r| r.as_nvm_region().map(|n| n.range.start))
            .expect("chip has a flash region");
        let req = FlashRequest {
            image: bin,
            format: FirmwareFormat::Bin,
            base_address: Some(start),
            chip: chip2,
            reference: "hil@sha256:0".into(),
            version: "0.0.0".into(),
        };
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        f2.download(&mut session, &req, true, tx, &CancellationToken::new())
            .unwrap();
    })
    .await
    .unwrap();

    let Ok(image) = std::env::var("TWINFLASH_HIL_IMAGE") else {
        eprintln!(
            "hil: attach and dry run passed; set TWINFLASH_HIL_IMAGE to also flash a real image"
        );
        return;
    };
    let format: FirmwareFormat = std::env::var("TWINFLASH_HIL_FORMAT")
        .unwrap_or_else(|_| "elf".into())
        .parse()
        .unwrap();
    let base_address = std::env::var("TWINFLASH_HIL_BASE")
        .ok()
        .map(|b| u64::from_str_radix(b.trim_start_matches("0x"), 16).unwrap());
    let req = FlashRequest {
        image: PathBuf::from(image),
        format,
        base_address,
        chip: chip.clone(),
        reference: "hil@sha256:1".into(),
        version: "1.0.0".into(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let first = flasher
        .flash(&req, tx, CancellationToken::new())
        .await
        .unwrap();
    let mut last = 0;
    while let Ok(p) = rx.try_recv() {
        assert!(p.percent >= last);
        last = p.percent;
    }
    assert_eq!(last, 100);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let second = flasher
        .flash(&req, tx, CancellationToken::new())
        .await
        .unwrap();
    eprintln!("hil: first flash {first:?}, second {second:?}");
    assert!(second.unchanged, "preverify skips identical content");
}
