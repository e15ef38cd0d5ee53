//! The harness's emulated boards from the command line, for `scripts/demo.sh --mcu` and for trying the gdb backend
//! by hand: builds the test firmware (C, `harness/testdata/firmware`) and runs a QEMU board with its GDB server and
//! UART on loopback, as the tests do ([`twinflash_harness::board`]).
//!
//! ```text
//! emulated_board firmware <out-dir> <board> <variant> <version>
//!     writes <out-dir>/<variant>-<version>.{elf,bin,hex}; variant: good | hang | crash-loop
//! emulated_board run <board>
//!     starts the board with an empty flash, halted until a GDB client loads firmware and resumes it; prints
//!     `gdb=<host:port>` and `uart=<file>` on stdout, then serves until killed (QEMU goes with it)
//! ```
//! Boards: `netduinoplus2` (STM32F405) and `lm3s6965evb` (Stellaris LM3S6965).
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line helper

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use twinflash_harness::board::{Board, BoardKind, Firmware, Variant};

const USAGE: &str = "usage: emulated_board firmware <out-dir> <board> <good|hang|crash-loop> <version>\n       emulated_board run <board>\nboards: netduinoplus2, lm3s6965evb";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["firmware", out, board, variant, version] => {
            firmware(Path::new(out), board, variant, version)
        }
        ["run", board] => run(board),
        ["-h" | "--help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emulated_board: {e}");
            ExitCode::FAILURE
        }
    }
}

fn board_kind(name: &str) -> Result<BoardKind, String> {
    BoardKind::ALL
        .into_iter()
        .find(|k| k.machine() == name)
        .ok_or_else(|| format!("unknown board {name:?}\n{USAGE}"))
}

fn firmware(out: &Path, board: &str, variant: &str, version: &str) -> Result<(), String> {
    let kind = board_kind(board)?;
    let v = match variant {
        "good" => Variant::Good,
        "hang" => Variant::Hang,
        "crash-loop" => Variant::CrashLoop,
        other => return Err(format!("unknown variant {other:?}\n{USAGE}")),
    };
    let fw = Firmware::build(kind, v, version).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    for (from, ext) in [(fw.elf(), "elf"), (fw.bin(), "bin"), (fw.hex(), "hex")] {
        let to: PathBuf = out.join(format!("{variant}-{version}.{ext}"));
        std::fs::copy(from, &to).map_err(|e| format!("writing {}: {e}", to.display()))?;
        println!("{}", to.display());
    }
    Ok(())
}

fn run(board: &str) -> Result<(), String> {
    let kind = board_kind(board)?;
    let b = Board::start(kind, None).map_err(|e| e.to_string())?;
    eprintln!(
        "{} ({}) runs in QEMU, pid {}: empty flash, halted until a GDB client loads firmware",
        kind.machine(),
        kind.chip(),
        b.pid()
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "gdb={}", b.gdb_addr()).map_err(|e| e.to_string())?;
    writeln!(out, "uart={}", b.uart_path().display()).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        if !b.is_running() {
            return Err("qemu exited".into());
        }
    }
}
