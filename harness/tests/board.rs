//! The emulated boards: real qemu-system-arm running test firmware built from C by arm-none-eabi-gcc.
// Test code: unwrap/expect on setup steps is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use twinflash_harness::board::{self, Board, BoardKind, Firmware, Variant};

const BOOT: Duration = Duration::from_secs(20);

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn good_firmware_boots_and_prints_its_version_on_both_boards() {
    if !board::required() {
        return;
    }
    for kind in BoardKind::ALL {
        let fw = Firmware::build(kind, Variant::Good, "1.0.0").unwrap();
        let b = Board::start(kind, Some(&fw)).unwrap();
        let line = b.wait_line("boot version=", BOOT).unwrap();
        assert_eq!(line, "boot version=1.0.0", "{kind:?}");
        // QEMU loaded the ELF into flash: the raw binary is what the flash holds.
        let bin = std::fs::read(fw.bin()).unwrap();
        assert_eq!(
            b.read_memory(kind.flash_origin(), bin.len() as u64)
                .unwrap(),
            bin,
            "{kind:?}"
        );
        // A reset boots it again: a second banner.
        b.reset().unwrap();
        b.wait_line_after(1, "boot version=1.0.0", BOOT).unwrap();
        assert_eq!(b.uart_lines(), vec!["boot version=1.0.0"; 2], "{kind:?}");
        let pid = b.pid();
        assert!(alive(pid));
        drop(b);
        assert!(!alive(pid), "{kind:?}: qemu {pid} survived its Board");
    }
}

#[test]
fn variants_hang_crash_loop_and_lie_about_their_version() {
    if !board::required() {
        return;
    }
    for kind in BoardKind::ALL {
        let crash = Firmware::build(kind, Variant::CrashLoop, "3.0.0").unwrap();
        let b = Board::start(kind, Some(&crash)).unwrap();
        b.wait_line_after(2, "boot version=3.0.0", BOOT).unwrap();
        let lines = b.uart_lines();
        assert_eq!(
            &lines[..4],
            ["boot version=3.0.0", "crash", "boot version=3.0.0", "crash"],
            "{kind:?}"
        );
        drop(b);

        let liar = Firmware::build(
            kind,
            Variant::Mislabelled {
                prints: "9.9.9".into(),
            },
            "2.0.0",
        )
        .unwrap();
        assert_eq!(liar.version(), "2.0.0");
        let b = Board::start(kind, Some(&liar)).unwrap();
        assert_eq!(
            b.wait_line("boot version=", BOOT).unwrap(),
            "boot version=9.9.9"
        );
        drop(b);

        let hang = Firmware::build(kind, Variant::Hang, "4.0.0").unwrap();
        let b = Board::start(kind, Some(&hang)).unwrap();
        let err = b
            .wait_line("boot version=", Duration::from_secs(2))
            .unwrap_err();
        assert_eq!(err.code().as_str(), "timeout", "{err}");
        assert!(b.is_running(), "a hang is not an exit");
        assert!(b.uart_lines().is_empty());
    }
}

#[test]
fn firmware_comes_as_elf_bin_and_hex_and_bad_versions_are_refused() {
    if !board::required() {
        return;
    }
    let fw = Firmware::build(BoardKind::Netduinoplus2, Variant::Good, "1.2.3").unwrap();
    let elf = std::fs::read(fw.elf()).unwrap();
    let bin = std::fs::read(fw.bin()).unwrap();
    let hex = std::fs::read_to_string(fw.hex()).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    // The vector table: initial SP at the top of the 128 KiB SRAM, then a Thumb reset handler in flash.
    assert_eq!(&bin[..4], &0x2002_0000u32.to_le_bytes());
    let reset = u32::from_le_bytes(bin[4..8].try_into().unwrap());
    assert!((0x0800_0000..0x0810_0000).contains(&reset) && reset & 1 == 1);
    assert!(hex.starts_with(':') && hex.contains(":020000040800"));
    assert!(bin.windows(18).any(|w| w == b"boot version=1.2.3"));
    let err = Firmware::build(BoardKind::Netduinoplus2, Variant::Good, "1\"; x").unwrap_err();
    assert!(err.to_string().contains("escaped"), "{err}");
}

#[test]
fn a_board_without_firmware_waits_halted_for_a_gdb_client() {
    if !board::required() {
        return;
    }
    let b = Board::start(BoardKind::Lm3s6965evb, None).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Empty flash would lock the CPU up at once and QEMU would abort; halted, it waits.
    assert!(b.is_running());
    assert!(b.uart_lines().is_empty());
    assert!(std::net::TcpStream::connect(b.gdb_addr()).is_ok());
}

#[test]
fn the_uart_is_a_pty_too_and_the_log_keeps_everything_whether_it_is_open_or_not() {
    if !board::required() {
        return;
    }
    use std::io::{BufRead as _, BufReader};
    let kind = BoardKind::Netduinoplus2;
    let crash = Firmware::build(kind, Variant::CrashLoop, "3.0.0").unwrap();
    let b = Board::start(kind, Some(&crash)).unwrap();
    let pty = b.uart_pty();
    assert!(pty.starts_with("/dev/pts"), "{pty:?}");
    // Nobody has the pty open: the log gets the lines.
    b.wait_line_after(3, "boot version=3.0.0", BOOT).unwrap();
    // A reader of the pty sees the same lines as they come.
    let mut reader = BufReader::new(std::fs::File::open(&pty).unwrap());
    let mut line = String::new();
    while !line.contains("boot version=") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    assert_eq!(line.trim_end(), "boot version=3.0.0");
    drop(reader);
    // Closed again: the log goes on.
    let seen = b.uart_lines().len();
    b.wait_line_after(seen + 2, "boot version=3.0.0", BOOT)
        .unwrap();
}

#[test]
fn a_release_hangs_on_a_board_marked_as_a_hardware_variant_it_does_not_support() {
    if !board::required() {
        return;
    }
    for kind in BoardKind::ALL {
        let fw = Firmware::build(kind, Variant::HangIfMarked, "5.0.0").unwrap();
        let b = Board::start(kind, Some(&fw)).unwrap();
        b.wait_line("boot version=5.0.0", BOOT).unwrap();
        // The marker, written through the GDB server, is in flash; the board runs on after the write.
        let at = kind.marker_address();
        b.write_memory(at, &board::MARKER.to_le_bytes()).unwrap();
        assert_eq!(
            b.read_memory(at, 4).unwrap(),
            board::MARKER.to_le_bytes(),
            "{kind:?}"
        );
        b.reset().unwrap();
        let err = b
            .wait_line_after(1, "boot version=", Duration::from_secs(2))
            .unwrap_err();
        assert_eq!(err.code().as_str(), "timeout", "{kind:?}: {err}");
        // Without it the same image boots again.
        b.write_memory(at, &[0xff; 4]).unwrap();
        b.reset().unwrap();
        b.wait_line_after(1, "boot version=5.0.0", BOOT).unwrap();
        assert_eq!(b.uart_lines().len(), 2, "{kind:?}");
    }
}
