//! Emulated microcontroller boards: `qemu-system-arm` with its GDB server and its UART captured, on free loopback
//! ports, and the test firmware built for them with `arm-none-eabi-gcc` from `harness/testdata/firmware` (C sources
//! only; nothing binary is committed).
//!
//! ```no_run
//! use std::time::Duration;
//! use twinflash_harness::board::{Board, BoardKind, Firmware, Variant};
//!
//! # fn main() -> Result<(), twinflash_harness::HarnessError> {
//! let fw = Firmware::build(BoardKind::Netduinoplus2, Variant::Good, "1.0.0")?;
//! let board = Board::start(BoardKind::Netduinoplus2, Some(&fw))?; // boots fw at once
//! board.wait_line("boot version=1.0.0", Duration::from_secs(10))?;
//! let _gdb = board.gdb_addr(); // flash through it; board.reset() power-cycles; drop kills qemu
//! # Ok(())
//! # }
//! ```

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::error::HarnessError;
use crate::process::{self, ServiceProcess};

pub(crate) const QEMU: &str = "qemu-system-arm";
const QEMU_FALLBACK: &str = "/usr/bin/qemu-system-arm";
const GCC: &str = "arm-none-eabi-gcc";
const GCC_FALLBACK: &str = "/usr/bin/arm-none-eabi-gcc";
const OBJCOPY: &str = "arm-none-eabi-objcopy";
const OBJCOPY_FALLBACK: &str = "/usr/bin/arm-none-eabi-objcopy";
/// A deadline, not a delay (QEMU is ready in ~50 ms); generous for a loaded 2-core CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const START_ATTEMPTS: usize = 5;
const UART_FILE: &str = "uart.log";
const OUTPUT_FILE: &str = "qemu.out";
/// The id of the UART's chardev, which QEMU names when it says which pty it is on.
const UART_LABEL: &str = "uart0";

/// Whether the emulated boards can run here: `qemu-system-arm` and `arm-none-eabi-gcc` are installed.
pub fn available() -> bool {
    process::tool_available(QEMU) && process::tool_available(GCC)
}

/// Whether a test that needs the emulated boards may run: true when they can. When they cannot, the test fails if
/// `TWINFLASH_REQUIRE_QEMU` is set (scripts/test.sh sets it, so CI never skips silently), and otherwise prints a
/// loud SKIPPED and should return.
pub fn required() -> bool {
    if available() {
        return true;
    }
    assert!(
        std::env::var_os("TWINFLASH_REQUIRE_QEMU").is_none(),
        "qemu-system-arm or arm-none-eabi-gcc is missing and TWINFLASH_REQUIRE_QEMU is set: scripts/test.sh installs them"
    );
    eprintln!(
        "SKIPPED: qemu-system-arm or arm-none-eabi-gcc is not installed (scripts/test.sh installs them; \
         set TWINFLASH_REQUIRE_QEMU=1 to make this a failure)"
    );
    false
}

/// The emulated boards, two families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BoardKind {
    /// Netduino Plus 2: STM32F405 (Cortex-M4), 1 MiB flash at 0x0800_0000, firmware on USART1.
    Netduinoplus2,
    /// TI Stellaris LM3S6965 evaluation board (Cortex-M3), 256 KiB flash at 0, firmware on UART0.
    Lm3s6965evb,
}

impl BoardKind {
    /// Both boards.
    pub const ALL: [BoardKind; 2] = [BoardKind::Netduinoplus2, BoardKind::Lm3s6965evb];

    /// QEMU's machine name (`-M`), also the name of the linker script.
    pub fn machine(self) -> &'static str {
        match self {
            BoardKind::Netduinoplus2 => "netduinoplus2",
            BoardKind::Lm3s6965evb => "lm3s6965evb",
        }
    }

    /// The chip, as a device's `chip` names it.
    pub fn chip(self) -> &'static str {
        match self {
            BoardKind::Netduinoplus2 => "STM32F405RG",
            BoardKind::Lm3s6965evb => "LM3S6965",
        }
    }

    /// The first flash address.
    pub fn flash_origin(self) -> u64 {
        match self {
            BoardKind::Netduinoplus2 => 0x0800_0000,
            BoardKind::Lm3s6965evb => 0,
        }
    }

    /// Flash size in bytes.
    pub fn flash_size(self) -> u64 {
        match self {
            BoardKind::Netduinoplus2 => 1 << 20,
            BoardKind::Lm3s6965evb => 256 << 10,
        }
    }

    /// The word a test writes (as [`MARKER`]) to tell a [`Variant::HangIfMarked`] image that it runs on a hardware
    /// variant it does not support: in the last 4 KiB of flash, which no test image reaches.
    pub fn marker_address(self) -> u64 {
        self.flash_origin() + self.flash_size() - 0x1000
    }

    fn cpu(self) -> &'static str {
        match self {
            BoardKind::Netduinoplus2 => "cortex-m4",
            BoardKind::Lm3s6965evb => "cortex-m3",
        }
    }

    fn define(self) -> &'static str {
        match self {
            BoardKind::Netduinoplus2 => "-DBOARD_NETDUINOPLUS2",
            BoardKind::Lm3s6965evb => "-DBOARD_LM3S6965EVB",
        }
    }
}

/// The value at [`BoardKind::marker_address`] that makes a [`Variant::HangIfMarked`] image hang.
pub const MARKER: u32 = 0x4D41_524B;

/// What the test firmware does at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Variant {
    /// Prints `boot version=<version>` and idles.
    Good,
    /// Hangs before its banner.
    Hang,
    /// Prints its banner, then `crash`, then resets itself, again and again.
    CrashLoop,
    /// As [`Variant::Good`], but hangs before its banner on a board whose word at [`BoardKind::marker_address`]
    /// holds [`MARKER`] (written with [`Board::write_memory`]): a release that does not boot on one hardware
    /// variant of a fleet.
    HangIfMarked,
    /// Prints `boot version=<prints>` while its artifact claims `version`.
    Mislabelled {
        /// The version the banner prints.
        prints: String,
    },
}

/// A test firmware image built for one board, as ELF, raw binary (placed at [`BoardKind::flash_origin`]) and
/// Intel HEX. The files live as long as the value.
#[derive(Debug)]
pub struct Firmware {
    board: BoardKind,
    version: String,
    elf: PathBuf,
    bin: PathBuf,
    hex: PathBuf,
    _dir: TempDir,
}

/// The firmware sources in the repository.
fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/firmware")
}

impl Firmware {
    /// Compiles `harness/testdata/firmware/boot.c` for `board` with `-DVERSION="<version>"` (the banner's version;
    /// for [`Variant::Mislabelled`] the banner prints `prints` and `version` is only what the artifact claims).
    pub fn build(
        board: BoardKind,
        variant: Variant,
        version: &str,
    ) -> Result<Firmware, HarnessError> {
        let printed = match &variant {
            Variant::Mislabelled { prints } => prints.as_str(),
            _ => version,
        };
        if !printed
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-+_".contains(c))
        {
            return Err(HarnessError::io(
                "build test firmware",
                std::io::Error::other(format!(
                    "version {printed:?} has characters a C string would need escaped"
                )),
            ));
        }
        let variant_define = match variant {
            Variant::Good | Variant::Mislabelled { .. } => "-DVARIANT_GOOD",
            Variant::Hang => "-DVARIANT_HANG",
            Variant::CrashLoop => "-DVARIANT_CRASHLOOP",
            Variant::HangIfMarked => "-DVARIANT_HANG_IF_MARKED",
        };
        let dir = tempfile::Builder::new()
            .prefix("twinflash-firmware-")
            .tempdir()
            .map_err(|e| HarnessError::io("create firmware temp dir", e))?;
        let src = sources();
        let elf = dir.path().join("boot.elf");
        let mut gcc = Command::new(process::find_binary(GCC, GCC_FALLBACK)?);
        gcc.arg(format!("-mcpu={}", board.cpu()))
            .args([
                "-mthumb",
                "-Os",
                "-nostdlib",
                "-ffreestanding",
                "-Wall",
                "-Wextra",
                "-Werror",
            ])
            .arg(board.define())
            .arg(variant_define)
            .arg(format!("-DVERSION=\"{printed}\""))
            .arg(format!("-DMARKER_ADDR=0x{:x}u", board.marker_address()))
            .arg(format!("-DMARKER_WORD=0x{MARKER:x}u"))
            .arg("-L")
            .arg(&src)
            .arg("-T")
            .arg(src.join(format!("{}.ld", board.machine())))
            .arg("-o")
            .arg(&elf)
            .arg(src.join("boot.c"));
        run_tool(gcc, "arm-none-eabi-gcc")?;
        let bin = dir.path().join("boot.bin");
        let hex = dir.path().join("boot.hex");
        for (format, out) in [("binary", &bin), ("ihex", &hex)] {
            let mut objcopy = Command::new(process::find_binary(OBJCOPY, OBJCOPY_FALLBACK)?);
            objcopy.args(["-O", format]).arg(&elf).arg(out);
            run_tool(objcopy, "arm-none-eabi-objcopy")?;
        }
        Ok(Firmware {
            board,
            version: version.to_owned(),
            elf,
            bin,
            hex,
            _dir: dir,
        })
    }

    /// The board it was built for.
    pub fn board(&self) -> BoardKind {
        self.board
    }

    /// The version its artifact claims.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The ELF file.
    pub fn elf(&self) -> &Path {
        &self.elf
    }

    /// The raw binary, to be placed at the board's flash origin.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The Intel HEX file.
    pub fn hex(&self) -> &Path {
        &self.hex
    }
}

fn run_tool(mut cmd: Command, name: &str) -> Result<(), HarnessError> {
    let out = cmd
        .output()
        .map_err(|e| HarnessError::io(format!("run {name}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(HarnessError::io(
        format!("{name} failed ({})", out.status),
        std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
    ))
}

/// One `qemu-system-arm` running a board: its GDB server on `127.0.0.1:<free port>`, its first UART on a pty and
/// logged to a file, a QMP connection for resets. Dropping it SIGKILLs QEMU and removes the temp dir.
#[derive(Debug)]
pub struct Board {
    // Declared first so QEMU dies before its directory is removed.
    proc: ServiceProcess,
    kind: BoardKind,
    gdb_port: u16,
    qmp: Mutex<BufReader<TcpStream>>,
    uart_pty: PathBuf,
    dir: TempDir,
}

impl Board {
    /// Starts `kind`. With `firmware`, QEMU loads it into flash and the board boots it at once; without, the flash
    /// is empty and the CPU waits, halted, for a GDB client to load something and resume it.
    pub fn start(kind: BoardKind, firmware: Option<&Firmware>) -> Result<Board, HarnessError> {
        let binary = process::find_binary(QEMU, QEMU_FALLBACK)?;
        let dir = tempfile::Builder::new()
            .prefix("twinflash-qemu-")
            .tempdir()
            .map_err(|e| HarnessError::io("create qemu temp dir", e))?;
        let mut attempt = 1;
        loop {
            match Board::launch(&binary, kind, firmware, &dir) {
                Ok((proc, gdb_port, qmp, uart_pty)) => {
                    return Ok(Board {
                        proc,
                        kind,
                        gdb_port,
                        qmp: Mutex::new(qmp),
                        uart_pty,
                        dir,
                    });
                }
                Err(e) if e.is_port_taken() && attempt < START_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "qemu did not start; trying other ports");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn launch(
        binary: &Path,
        kind: BoardKind,
        firmware: Option<&Firmware>,
        dir: &TempDir,
    ) -> Result<(ServiceProcess, u16, BufReader<TcpStream>, PathBuf), HarnessError> {
        let gdb_port = crate::free_port();
        let qmp_port = crate::free_port();
        let uart = dir.path().join(UART_FILE);
        let output = dir.path().join(OUTPUT_FILE);
        let _ = fs::remove_file(&uart);
        let mut cmd = Command::new(binary);
        cmd.args([
            "-M",
            kind.machine(),
            "-nodefaults",
            "-display",
            "none",
            "-nic",
            "none",
        ])
        // The UART on a pty (what a serial confirmation check opens), every byte also logged to the file, whether
        // the pty is open or not.
        .arg("-chardev")
        .arg(format!(
            "pty,id={UART_LABEL},logfile={},signal=off",
            uart.display()
        ))
        .arg("-serial")
        .arg(format!("chardev:{UART_LABEL}"))
        .arg("-gdb")
        .arg(format!("tcp:127.0.0.1:{gdb_port}"))
        .arg("-qmp")
        .arg(format!("tcp:127.0.0.1:{qmp_port},server=on,wait=off"))
        .current_dir(dir.path());
        match firmware {
            Some(fw) => {
                cmd.arg("-kernel").arg(fw.elf());
            }
            None => {
                cmd.arg("-S");
            }
        }
        let proc = ServiceProcess::spawn(QEMU, cmd, &output)?;
        // Ready = QMP greets us: QEMU serves its sockets only from its main loop, which runs after the GDB server
        // listens. (A probe of the GDB port would stop the VM: QEMU halts it for every GDB client.)
        let mut qmp = None;
        process::wait_ready(&proc, gdb_port, READY_TIMEOUT, &[&output], || {
            qmp = qmp_connect(qmp_port).ok();
            qmp.is_some()
        })?;
        let qmp = qmp
            .ok_or_else(|| HarnessError::io("qemu QMP", std::io::Error::other("no connection")))?;
        // QEMU said which pty before it served QMP.
        let said = fs::read_to_string(&output).unwrap_or_default();
        let pty = uart_pty_in(&said).ok_or_else(|| {
            HarnessError::io(
                "qemu UART pty",
                std::io::Error::other(format!("QEMU did not name the pty of {UART_LABEL}: {said}")),
            )
        })?;
        Ok((proc, gdb_port, qmp, pty))
    }

    /// Which board this is.
    pub fn kind(&self) -> BoardKind {
        self.kind
    }

    /// The GDB server's address.
    pub fn gdb_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.gdb_port))
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Whether QEMU still runs.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// The file QEMU writes the UART to (what a device-side check may read, as it would read a serial port).
    pub fn uart_path(&self) -> PathBuf {
        self.dir.path().join(UART_FILE)
    }

    /// The pty of the UART (`/dev/pts/N`): what a device-side program opens as the board's serial port. The UART file
    /// ([`Board::uart_path`]) gets the same bytes, whether the pty is open or not.
    pub fn uart_pty(&self) -> PathBuf {
        self.uart_pty.clone()
    }

    /// Every complete line the firmware printed on its UART so far (without line ends).
    pub fn uart_lines(&self) -> Vec<String> {
        let bytes = fs::read(self.dir.path().join(UART_FILE)).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Waits until a UART line contains `pattern` and returns it (the first such line, old lines included).
    pub fn wait_line(&self, pattern: &str, timeout: Duration) -> Result<String, HarnessError> {
        self.wait_line_after(0, pattern, timeout)
    }

    /// Like [`Board::wait_line`], looking only at lines after the first `skip` ones (`uart_lines().len()` taken
    /// before an action waits for what the action caused).
    pub fn wait_line_after(
        &self,
        skip: usize,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String, HarnessError> {
        let started = Instant::now();
        loop {
            if let Some(line) = self
                .uart_lines()
                .into_iter()
                .skip(skip)
                .find(|l| l.contains(pattern))
            {
                return Ok(line);
            }
            if started.elapsed() > timeout || !self.is_running() {
                let lines = self.uart_lines();
                let tail = lines[lines.len().saturating_sub(10)..].join("\n");
                return Err(HarnessError::Uart {
                    board: self.kind.machine(),
                    pattern: pattern.to_owned(),
                    waited: started.elapsed(),
                    tail: format!(
                        "{tail}\n{}",
                        process::log_tail(&[&self.dir.path().join(OUTPUT_FILE)], 10)
                    ),
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A system reset (the reset pin), through QEMU's QMP `system_reset`: the board boots what its flash holds.
    pub fn reset(&self) -> Result<(), HarnessError> {
        let mut qmp = self.qmp.lock().unwrap_or_else(PoisonError::into_inner);
        qmp_execute(&mut qmp, "system_reset")
    }

    /// `len` bytes of the board's memory from `address`, read by QEMU itself (QMP `pmemsave`), not through the GDB
    /// server: what a test compares a flasher's work with.
    pub fn read_memory(&self, address: u64, len: u64) -> Result<Vec<u8>, HarnessError> {
        let file = self.dir.path().join(format!("mem-{address:x}-{len:x}.bin"));
        let args = format!(
            "{{\"val\":{address},\"size\":{len},\"filename\":{:?}}}",
            file.display().to_string()
        );
        {
            let mut qmp = self.qmp.lock().unwrap_or_else(PoisonError::into_inner);
            qmp_execute_with(&mut qmp, "pmemsave", &args)?;
        }
        let bytes =
            fs::read(&file).map_err(|e| HarnessError::io(format!("read {}", file.display()), e))?;
        let _ = fs::remove_file(&file);
        Ok(bytes)
    }

    /// Writes `bytes` to the board's memory at `address` through its GDB server (`M`, then `D`: the board runs on),
    /// as a debugger would; flash included, since QEMU lets a debugger write it.
    pub fn write_memory(&self, address: u64, bytes: &[u8]) -> Result<(), HarnessError> {
        let io = |e| HarnessError::io("write memory through the GDB server", e);
        let mut stream =
            TcpStream::connect_timeout(&self.gdb_addr(), Duration::from_secs(5)).map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io)?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        for packet in [format!("M{address:x},{:x}:{hex}", bytes.len()), "D".into()] {
            let sum = packet.bytes().fold(0u8, u8::wrapping_add);
            stream
                .write_all(format!("${packet}#{sum:02x}").as_bytes())
                .map_err(io)?;
            let reply = rsp_reply(&mut stream).map_err(io)?;
            stream.write_all(b"+").map_err(io)?;
            if reply != "OK" {
                return Err(io(std::io::Error::other(format!(
                    "the GDB server answered {reply:?} to {}",
                    &packet[..1]
                ))));
            }
        }
        Ok(())
    }

    /// Power off: SIGKILL QEMU (the flash content is lost with it).
    pub fn kill(&self) {
        self.proc.kill();
    }
}

/// The pty QEMU's output names for the UART: "char device redirected to /dev/pts/N (label uart0)".
fn uart_pty_in(output: &str) -> Option<PathBuf> {
    output.lines().find_map(|l| {
        let rest = l.strip_prefix("char device redirected to ")?;
        let (path, label) = rest.split_once(' ')?;
        (label == format!("(label {UART_LABEL})")).then(|| PathBuf::from(path))
    })
}

/// Reads one RSP reply packet (acks before it skipped) and returns its payload.
fn rsp_reply(stream: &mut TcpStream) -> std::io::Result<String> {
    use std::io::Read;
    let mut payload = Vec::new();
    let mut byte = [0u8; 1];
    let mut inside = false;
    loop {
        stream.read_exact(&mut byte)?;
        match (inside, byte[0]) {
            (false, b'$') => inside = true,
            (false, _) => {}
            (true, b'#') => {
                let mut sum = [0u8; 2];
                stream.read_exact(&mut sum)?;
                return Ok(String::from_utf8_lossy(&payload).into_owned());
            }
            (true, b) => payload.push(b),
        }
    }
}

/// Connects to QMP, reads the greeting and leaves capabilities negotiation.
fn qmp_connect(port: u16) -> Result<BufReader<TcpStream>, HarnessError> {
    let io = |e| HarnessError::io("qemu QMP", e);
    let stream = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut greeting = String::new();
    reader.read_line(&mut greeting).map_err(io)?;
    if !greeting.contains("\"QMP\"") {
        return Err(io(std::io::Error::other(format!(
            "not a QMP greeting: {greeting}"
        ))));
    }
    qmp_execute(&mut reader, "qmp_capabilities")?;
    Ok(reader)
}

/// Runs one QMP command without arguments and waits for its `return` (events before it are skipped).
fn qmp_execute(qmp: &mut BufReader<TcpStream>, command: &str) -> Result<(), HarnessError> {
    qmp_execute_with(qmp, command, "{}")
}

/// Runs one QMP command with `arguments` (a JSON object) and waits for its `return`.
fn qmp_execute_with(
    qmp: &mut BufReader<TcpStream>,
    command: &str,
    arguments: &str,
) -> Result<(), HarnessError> {
    let io = |e| HarnessError::io(format!("qemu QMP {command}"), e);
    qmp.get_mut()
        .write_all(format!("{{\"execute\":\"{command}\",\"arguments\":{arguments}}}\n").as_bytes())
        .map_err(io)?;
    loop {
        let mut line = String::new();
        if qmp.read_line(&mut line).map_err(io)? == 0 {
            return Err(io(std::io::Error::other("QMP connection closed")));
        }
        if line.contains("\"return\"") {
            return Ok(());
        }
        if line.contains("\"error\"") {
            return Err(io(std::io::Error::other(line)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pty_is_read_from_what_qemu_says() {
        let said = "qemu: warning\nchar device redirected to /dev/pts/7 (label uart0)\n";
        assert_eq!(uart_pty_in(said), Some(PathBuf::from("/dev/pts/7")));
        assert_eq!(
            uart_pty_in("char device redirected to /dev/pts/8 (label other)"),
            None
        );
        assert_eq!(uart_pty_in(""), None);
    }
}
