//! The `[[devices]]` tables of an agent device that is an emulated board (twinflash-harness's QEMU boards): flashed
//! through the board's GDB server by the gdb backend, confirmed by a `command` check that reads the board's UART
//! file, as a device-side script reads a serial port.

use twinflash_harness::board::Board;

/// A check script for [`confirm_toml`]: `$0` = the UART file, `$1` = the version; it passes when the newest boot
/// banner names the version (the UART ends its lines with CR LF).
pub const UART_BANNER_CHECK: &str = r#"last=$(tr -d '\r' < "$0" | grep "^boot version=" | tail -n 1); [ "$last" = "boot version=$1" ]"#;

/// `[devices.flasher]`: the gdb backend on `board`'s GDB server, reset by QEMU's `system_reset`.
pub fn gdb_flasher_toml(board: &Board) -> String {
    format!(
        "[devices.flasher]\nkind = \"gdb\"\ntarget = \"{}\"\nreset = \"system_reset\"\n",
        board.gdb_addr()
    )
}

/// `[devices.confirm]`: the `command` check `argv` (placeholders such as `{version}` included).
pub fn confirm_toml(argv: &[&str], timeout_secs: u64, interval_ms: u64) -> String {
    format!(
        "[devices.confirm]\nkind = \"command\"\nargv = {}\ntimeout_secs = {timeout_secs}\ninterval_ms = {interval_ms}\n",
        serde_json::to_string(argv).unwrap_or_default()
    )
}

/// `[devices.confirm]` with [`UART_BANNER_CHECK`] on `board`'s UART.
pub fn uart_confirm_toml(board: &Board, timeout_secs: u64, interval_ms: u64) -> String {
    let uart = board.uart_path().display().to_string();
    let argv = ["/bin/sh", "-c", UART_BANNER_CHECK, &uart, "{version}"];
    confirm_toml(&argv, timeout_secs, interval_ms)
}
