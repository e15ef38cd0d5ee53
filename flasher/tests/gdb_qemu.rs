//! The gdb backend against real GDB servers: qemu-system-arm's, on the emulated boards of twinflash-harness, with
//! test firmware built from C. Success is judged by what the board does (its UART banner after the reset the
//! backend asked for) and by the flash content QEMU itself reports (QMP `pmemsave`), never by the backend's word.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::path::Path;
use std::time::Duration;

use twinflash_flasher::gdb::GdbFlasher;
use twinflash_flasher::{
    CancellationToken, FirmwareFormat, FlashRequest, Flasher, GdbConfig, Phase,
};
use twinflash_harness::board::{self, Board, BoardKind, Firmware, Variant};

const BOOT: Duration = Duration::from_secs(20);

fn flasher(board: &Board) -> GdbFlasher {
    let cfg = GdbConfig {
        reset: Some("system_reset".into()),
        ..GdbConfig::new(board.gdb_addr().to_string())
    };
    GdbFlasher::new(cfg, board.kind().chip()).unwrap()
}

fn request(fw: &Firmware, format: FirmwareFormat) -> FlashRequest {
    let (path, base) = match format {
        FirmwareFormat::Elf => (fw.elf(), None),
        FirmwareFormat::Ihex => (fw.hex(), None),
        FirmwareFormat::Bin => (fw.bin(), Some(fw.board().flash_origin())),
        other => panic!("no {other:?} test firmware"),
    };
    common::request(
        path.to_path_buf(),
        format,
        base,
        fw.board().chip(),
        fw.version(),
    )
}

/// Flashes `fw` as `format`, checks the flash content through QEMU and the banner the board prints after the reset.
async fn flash_and_boot(board: &Board, fw: &Firmware, format: FirmwareFormat) {
    let f = flasher(board);
    let req = request(fw, format);
    let before = board.uart_lines().len();
    let (tx, mut rx) = common::progress();
    let out = f
        .flash(&req, tx, CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{:?} {format:?}: {e} ({})", board.kind(), e.code().as_str()));
    let bin = std::fs::read(fw.bin()).unwrap();
    assert_eq!(out.bytes, bin.len() as u64, "{format:?}");
    assert!(!out.unchanged);
    let flash = board
        .read_memory(board.kind().flash_origin(), bin.len() as u64)
        .unwrap();
    assert!(
        flash == bin,
        "{:?} {format:?}: flash differs from the image",
        board.kind()
    );
    let banner = format!("boot version={}", fw.version());
    board.wait_line_after(before, &banner, BOOT).unwrap();
    let events = common::drain(&mut rx);
    let percents: Vec<u8> = events.iter().map(|p| p.percent).collect();
    assert!(percents.windows(2).all(|w| w[0] < w[1]), "{percents:?}");
    assert_eq!(percents.last(), Some(&100), "{events:?}");
    assert!(
        events.iter().any(|p| p.phase == Phase::Programming)
            && events.iter().any(|p| p.phase == Phase::Verifying),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netduinoplus2_takes_elf_then_hex_then_bin_and_boots_each() {
    if !board::required() {
        return;
    }
    let kind = BoardKind::Netduinoplus2;
    let v1 = Firmware::build(kind, Variant::Good, "1.0.0").unwrap();
    let v2 = Firmware::build(kind, Variant::Good, "2.0.0").unwrap();
    let v3 = Firmware::build(kind, Variant::Good, "3.0.0").unwrap();
    // An empty board, halted until the first flash resets it.
    let board = Board::start(kind, None).unwrap();
    flash_and_boot(&board, &v1, FirmwareFormat::Elf).await;
    flash_and_boot(&board, &v2, FirmwareFormat::Ihex).await;
    flash_and_boot(&board, &v3, FirmwareFormat::Bin).await;
    let banners: Vec<String> = board
        .uart_lines()
        .into_iter()
        .filter(|l| l.starts_with("boot version="))
        .collect();
    assert_eq!(
        banners,
        [
            "boot version=1.0.0",
            "boot version=2.0.0",
            "boot version=3.0.0"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lm3s6965evb_is_updated_from_running_v1_to_v2() {
    if !board::required() {
        return;
    }
    let kind = BoardKind::Lm3s6965evb;
    let v1 = Firmware::build(kind, Variant::Good, "1.0.0").unwrap();
    let v2 = Firmware::build(kind, Variant::Good, "2.0.0").unwrap();
    // This board runs v1 from the start (QEMU loaded it): the backend stops a running target.
    let board = Board::start(kind, Some(&v1)).unwrap();
    board.wait_line("boot version=1.0.0", BOOT).unwrap();
    flash_and_boot(&board, &v2, FirmwareFormat::Elf).await;
    // A reset of the board (not through the GDB server) boots what was flashed, not what QEMU loaded at start.
    let before = board.uart_lines().len();
    board.reset().unwrap();
    board
        .wait_line_after(before, "boot version=2.0.0", BOOT)
        .unwrap();
    flash_and_boot(&board, &v1, FirmwareFormat::Bin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_qemu_refuses_is_flash_failed() {
    if !board::required() {
        return;
    }
    let kind = BoardKind::Netduinoplus2;
    let v1 = Firmware::build(kind, Variant::Good, "1.0.0").unwrap();
    let board = Board::start(kind, Some(&v1)).unwrap();
    board.wait_line("boot version=1.0.0", BOOT).unwrap();
    // The same bytes placed where the STM32F405 has no memory: QEMU's GDB server answers the write with E14.
    let mut req = request(&v1, FirmwareFormat::Bin);
    req.base_address = Some(0xA000_0000);
    let err = flasher(&board)
        .flash(&req, common::progress().0, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "flash-failed", "{err}");
    // QEMU has no `X` packet (an empty reply), so the backend wrote with `M`: the refused range is named.
    let msg = err.to_string();
    assert!(
        msg.contains("refused Ma0000000,") && msg.contains("\"E14\""),
        "{err}"
    );
    assert!(!err.is_transient());
    // Nothing reached the flash, and the board still answers a later flash.
    let bin = std::fs::read(v1.bin()).unwrap();
    assert_eq!(
        board
            .read_memory(kind.flash_origin(), bin.len() as u64)
            .unwrap(),
        bin
    );
    let v2 = Firmware::build(kind, Variant::Good, "2.0.0").unwrap();
    flash_and_boot(&board, &v2, FirmwareFormat::Elf).await;
}

#[tokio::test]
async fn a_server_that_is_not_there_is_probe_not_found() {
    // A port nobody listens on (bound, read, released).
    let port = twinflash_harness::free_port();
    let f = GdbFlasher::new(GdbConfig::new(format!("127.0.0.1:{port}")), "STM32F405RG").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let image = common::write(tmp.path(), "fw.bin", &[1, 2, 3, 4]);
    let req = common::request(
        image,
        FirmwareFormat::Bin,
        Some(0x0800_0000),
        "STM32F405RG",
        "1.0.0",
    );
    let err = f
        .flash(&req, common::progress().0, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "probe-not-found", "{err}");
    assert!(
        err.is_transient(),
        "the server may come back: waiting, not failed"
    );
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    // A device path that does not exist (an unplugged Black Magic Probe) is the same.
    let bmp = GdbFlasher::new(
        GdbConfig::new(tmp.path().join("ttyACM9").display().to_string()),
        "STM32F405RG",
    )
    .unwrap();
    let err = bmp
        .flash(&req, common::progress().0, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "probe-not-found", "{err}");
}

#[tokio::test]
async fn chip_is_checked_before_anything_is_sent() {
    let f = GdbFlasher::new(GdbConfig::new("127.0.0.1:1"), "STM32F405RG").unwrap();
    let req = common::request(
        Path::new("/nonexistent").to_path_buf(),
        FirmwareFormat::Elf,
        None,
        "LM3S6965",
        "1.0.0",
    );
    let err = f
        .flash(&req, common::progress().0, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "chip-mismatch", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_board_is_read_and_reset_through_its_gdb_server_and_runs_on() {
    if !board::required() {
        return;
    }
    let kind = BoardKind::Netduinoplus2;
    // A crash loop prints without end: new lines after a read prove the board runs on (QEMU halts it for a client).
    let crash = Firmware::build(kind, Variant::CrashLoop, "3.0.0").unwrap();
    let board = Board::start(kind, Some(&crash)).unwrap();
    board.wait_line("boot version=3.0.0", BOOT).unwrap();
    let f = flasher(&board);
    let bin = std::fs::read(crash.bin()).unwrap();
    let read = f
        .read_memory(kind.flash_origin(), bin.len() as u64)
        .await
        .unwrap();
    assert!(read == bin, "the read differs from the flash content");
    let seen = board.uart_lines().len();
    board
        .wait_line_after(seen + 1, "boot version=3.0.0", BOOT)
        .unwrap();
    drop(board);

    // A reset: the board boots again and prints its banner a second time.
    let good = Firmware::build(kind, Variant::Good, "1.0.0").unwrap();
    let board = Board::start(kind, Some(&good)).unwrap();
    board.wait_line("boot version=1.0.0", BOOT).unwrap();
    flasher(&board).reset().await.unwrap();
    board
        .wait_line_after(1, "boot version=1.0.0", BOOT)
        .unwrap();
    // Without a configured reset command the backend cannot reset; a read beyond the limit is refused.
    let no_reset =
        GdbFlasher::new(GdbConfig::new(board.gdb_addr().to_string()), kind.chip()).unwrap();
    let err = no_reset.reset().await.unwrap_err();
    assert_eq!(err.code().as_str(), "invalid-config", "{err}");
    assert!(
        no_reset
            .read_memory(0, twinflash_flasher::MAX_MEMORY_READ + 1)
            .await
            .is_err()
    );
}
