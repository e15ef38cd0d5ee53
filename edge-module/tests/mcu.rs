//! The agent updates an emulated microcontroller (issue 24): QEMU's netduinoplus2 (STM32F405) started by the harness,
//! flashed through its GDB server by the gdb backend, test firmware built from C. The device's confirmation check
//! reads the board's UART as a device-side script reads a serial port: the newest boot banner must name the version
//! just flashed. Judged by what the UART printed and what the twin holds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::time::Duration;

use support::{AgentSpec, Env};
use twinflash_harness::board::{self, Board, BoardKind, Firmware, Variant};

/// How long the board may take to print its banner after the reset.
const BOOT: Duration = Duration::from_secs(20);

/// Leaked: AgentSpec borrows its strings for any lifetime.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulated_stm32_is_updated_and_a_release_that_hangs_is_reverted() {
    if !board::required() {
        return;
    }
    let kind = BoardKind::Netduinoplus2;
    let board = Board::start(kind, None).unwrap();
    let good = Firmware::build(kind, Variant::Good, "1.0.0").unwrap();
    let hangs = Firmware::build(kind, Variant::Hang, "2.0.0").unwrap();
    let flasher = gdb_flasher(&board);
    let confirm = leak(twinflash_testkit::uart_confirm_toml(&board, 5, 200));
    let chip = kind.chip();
    let env = Env::start(1, |s| AgentSpec {
        extra_device_toml: confirm,
        flasher_toml: Some((chip, flasher)),
        ..s
    })
    .await;
    let id = env.device(0).id;
    let bin = |fw: &Firmware| std::fs::read(fw.bin()).unwrap();
    let v1 = env
        .push_for("stm32:1.0.0", &bin(&good), "1.0.0", chip)
        .await;
    let v2 = env
        .push_for("stm32:2.0.0", &bin(&hangs), "2.0.0", chip)
        .await;

    // A good release: installed once the board printed its banner.
    env.intent(0, &v1).await;
    env.wait(0, "firmware-state", "installed").await;
    assert_eq!(env.actual(0, "firmware-version").as_deref(), Some("1.0.0"));
    board.wait_line("boot version=1.0.0", BOOT).unwrap();
    assert!(env.cloud.states(&id).iter().any(|s| s == "confirming"));
    println!("UART after 1.0.0: {:?}", board.uart_lines());

    // A release that hangs before its banner: reverted, the old banner again, the twin never claims it.
    let before = board.uart_lines().len();
    env.intent(0, &v2).await;
    env.wait(0, "firmware-state", "failed:boot-failed").await;
    assert_eq!(env.actual(0, "firmware").as_deref(), Some(v1.as_str()));
    assert_eq!(env.actual(0, "firmware-version").as_deref(), Some("1.0.0"));
    board
        .wait_line_after(before, "boot version=1.0.0", BOOT)
        .unwrap();
    let after: Vec<String> = board.uart_lines().split_off(before);
    assert!(
        !after.iter().any(|l| l.contains("2.0.0")),
        "the hanging release printed: {after:?}"
    );
    println!("UART after the bad release and the revert: {after:?}");
    let firmware = env.cloud.history(&id, "firmware");
    assert!(!firmware.contains(&v2), "{firmware:?}");
    let log = env.agent.log();
    assert!(
        log.contains("previous firmware back and confirmed"),
        "{log}"
    );
}

/// Pushes `fw`'s ELF file as `fw/<repo_tag>` for its board's chip; returns the digest-pinned reference.
async fn push_elf(env: &Env, repo_tag: &str, fw: &Firmware) -> String {
    let file = fw.elf().to_path_buf();
    let chip = fw.board().chip();
    twinflash_testkit::push_file(
        &env.registry,
        &format!("fw/{repo_tag}"),
        file,
        fw.version(),
        chip,
        None,
    )
    .await
}

/// Starts an agent whose device is `board`, flashed by the gdb backend and confirmed by `confirm`; pushes `good`
/// and `bad` as ELF artifacts and installs `good`, which must confirm. Returns the agent, the device id and the two
/// references.
async fn install_good(
    board: &Board,
    confirm: &'static str,
    good: &Firmware,
    bad: &Firmware,
) -> (Env, String, String, String) {
    let chip = board.kind().chip();
    let env = Env::start(1, |s| AgentSpec {
        extra_device_toml: confirm,
        flasher_toml: Some((chip, gdb_flasher(board))),
        ..s
    })
    .await;
    let id = env.device(0).id;
    let tag = board.kind().machine();
    let v1 = push_elf(&env, &format!("{tag}:{}", good.version()), good).await;
    let v2 = push_elf(&env, &format!("{tag}:{}", bad.version()), bad).await;
    env.intent(0, &v1).await;
    env.wait(0, "firmware-state", "installed").await;
    assert_eq!(
        env.actual(0, "firmware-version").as_deref(),
        Some(good.version())
    );
    board
        .wait_line(&format!("boot version={}", good.version()), BOOT)
        .unwrap();
    assert!(env.cloud.states(&id).iter().any(|s| s == "confirming"));
    (env, id, v1, v2)
}

/// The gdb backend's settings for `board`, reset by QEMU's `system_reset`.
fn gdb_flasher(board: &Board) -> &'static str {
    leak(twinflash_testkit::gdb_flasher_toml(board))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_check_reads_the_banner_on_the_boards_pty_and_a_mislabelled_release_is_reverted() {
    if !board::required() {
        return;
    }
    let kind = BoardKind::Netduinoplus2;
    let board = Board::start(kind, None).unwrap();
    let good = Firmware::build(kind, Variant::Good, "1.0.0").unwrap();
    let liar = Firmware::build(
        kind,
        Variant::Mislabelled {
            prints: "9.9.9".into(),
        },
        "2.0.0",
    )
    .unwrap();
    // The agent itself listens on the board's serial port (a pty): no device-side script.
    let confirm = leak(format!(
        "[devices.confirm]\nkind = \"serial\"\nport = \"{}\"\nbaud = 115200\npattern = \"boot version={{version}}\"\ntimeout_secs = 10\n",
        board.uart_pty().display()
    ));
    let (env, id, v1, v2) = install_good(&board, confirm, &good, &liar).await;

    // The release prints another version than its artifact claims: version-mismatch, reverted.
    let before = board.uart_lines().len();
    env.intent(0, &v2).await;
    env.wait(0, "firmware-state", "failed:version-mismatch")
        .await;
    assert_eq!(env.actual(0, "firmware").as_deref(), Some(v1.as_str()));
    assert_eq!(env.actual(0, "firmware-version").as_deref(), Some("1.0.0"));
    board
        .wait_line_after(before, "boot version=1.0.0", BOOT)
        .unwrap();
    let after: Vec<String> = board.uart_lines().split_off(before);
    println!("UART after the mislabelled release and the revert: {after:?}");
    let banners: Vec<&String> = after
        .iter()
        .filter(|l| l.starts_with("boot version="))
        .collect();
    assert_eq!(
        banners,
        ["boot version=9.9.9", "boot version=1.0.0"],
        "the mislabelled release booted, then the old one"
    );
    let firmware = env.cloud.history(&id, "firmware");
    assert!(!firmware.contains(&v2), "{firmware:?}");
    let versions = env.cloud.history(&id, "firmware-version");
    assert!(!versions.iter().any(|v| v == "2.0.0"), "{versions:?}");
    let log = env.agent.log();
    assert!(
        log.contains("the device runs another version than the artifact claims"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_check_reads_the_running_version_of_a_stellaris_board_and_a_hanging_release_is_reverted()
 {
    if !board::required() {
        return;
    }
    // The second board family: TI Stellaris (Cortex-M3), flash at 0, UART0.
    let kind = BoardKind::Lm3s6965evb;
    let board = Board::start(kind, None).unwrap();
    let good = Firmware::build(kind, Variant::Good, "1.0.0").unwrap();
    let hangs = Firmware::build(kind, Variant::Hang, "2.0.0").unwrap();
    // The firmware writes its version into RAM at boot; the agent reads it through the GDB server, at the symbol
    // it finds in each flashed ELF.
    let confirm = "[devices.confirm]\nkind = \"memory\"\nsymbol = \"twinflash_running_version\"\ntimeout_secs = 5\ninterval_ms = 200\n";
    let (env, id, v1, v2) = install_good(&board, confirm, &good, &hangs).await;
    // The reads left the board running: QEMU's own view of the RAM holds what the firmware wrote.
    assert_eq!(&board.read_memory(0x2000_0000, 6).unwrap(), b"1.0.0\0");
    let seen = board.uart_lines().len();
    board.reset().unwrap();
    board
        .wait_line_after(seen, "boot version=1.0.0", BOOT)
        .unwrap();

    // A release that hangs before it writes its version: boot-failed, reverted, the old version runs again.
    let before = board.uart_lines().len();
    env.intent(0, &v2).await;
    env.wait(0, "firmware-state", "failed:boot-failed").await;
    assert_eq!(env.actual(0, "firmware").as_deref(), Some(v1.as_str()));
    assert_eq!(env.actual(0, "firmware-version").as_deref(), Some("1.0.0"));
    board
        .wait_line_after(before, "boot version=1.0.0", BOOT)
        .unwrap();
    assert_eq!(&board.read_memory(0x2000_0000, 6).unwrap(), b"1.0.0\0");
    let after: Vec<String> = board.uart_lines().split_off(before);
    assert!(
        !after.iter().any(|l| l.contains("2.0.0")),
        "the hanging release printed: {after:?}"
    );
    let firmware = env.cloud.history(&id, "firmware");
    assert!(!firmware.contains(&v2), "{firmware:?}");
    let log = env.agent.log();
    assert!(
        log.contains("previous firmware back and confirmed"),
        "{log}"
    );
}
