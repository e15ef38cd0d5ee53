//! Issue 24: the time from reset to confirmation on an emulated STM32 (QEMU netduinoplus2 started by the harness,
//! test firmware built from C), and the whole intent-to-installed time through the agent with the gdb backend and a
//! `command` check that reads the board's UART. Prints markdown table rows.
//!
//! `cargo build --release -p twinflash-edge --bins && cargo run --release -p twinflash-bench --example bench_confirm -- [runs] [interval_ms]`
//!
//! - board: QMP `system_reset` to the new boot banner in the UART file (polled every millisecond): what the board
//!   itself takes, the floor of any check.
//! - agent: `N` installs alternating two good releases; per install the agent's own figure from the end of the
//!   flash's reset to the check passing (`secs` of its "firmware confirmed" log line), and the time from the intent
//!   published to `installed` reported (fetch, flash with read-back verify, reset, confirmation, report).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark driver

use std::time::{Duration, Instant};

use twinflash_harness::board::{Board, BoardKind, Firmware, Variant};
use twinflash_harness::{Mosquitto, Registry};
use twinflash_testkit::{Agent, AgentSpec, Cloud, gdb_flasher_toml, init, push, uart_confirm_toml};

const KIND: BoardKind = BoardKind::Netduinoplus2;
const WAIT: Duration = Duration::from_secs(60);

/// (median, max) in milliseconds.
fn stats(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() - 1])
}

fn row(what: &str, runs: usize, ms: Vec<f64>) {
    let (median, max) = stats(ms);
    println!("| {what} | {runs} | {median:.0} ms | {max:.0} ms |");
}

/// QMP reset to the next banner, `runs` times.
fn board_boot(runs: usize) -> Vec<f64> {
    let fw = Firmware::build(KIND, Variant::Good, "1.0.0").unwrap();
    let board = Board::start(KIND, Some(&fw)).unwrap();
    board.wait_line("boot version=1.0.0", WAIT).unwrap();
    (0..runs)
        .map(|_| {
            let before = board.uart_lines().len();
            let t0 = Instant::now();
            board.reset().unwrap();
            while board.uart_lines().len() <= before {
                assert!(t0.elapsed() < WAIT, "no banner after the reset");
                std::thread::sleep(Duration::from_millis(1));
            }
            t0.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

/// `line` without ANSI escape sequences (the agent's text log may colour its field names).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC '[' parameters, ended by a letter.
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `secs` of every "firmware confirmed" line of the agent's log, in milliseconds.
fn confirmed_ms(log: &str) -> Vec<f64> {
    log.lines()
        .map(plain)
        .filter(|l| l.contains("firmware confirmed"))
        .filter_map(|l| {
            l.split("secs=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .map(|s| s * 1000.0)
        .collect()
}

/// `runs` installs through the agent: (reset to confirmation as the agent measured it, intent to installed).
async fn agent_installs(runs: usize, interval_ms: u64) -> (Vec<f64>, Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let board = Board::start(KIND, None).unwrap();
    let mut refs = Vec::new();
    for version in ["1.0.0", "1.0.1"] {
        let fw = Firmware::build(KIND, Variant::Good, version).unwrap();
        let bin = std::fs::read(fw.bin()).unwrap();
        let tag = format!("fw/confirm:{version}");
        refs.push((
            push(&registry, dir.path(), &tag, &bin, version, KIND.chip()).await,
            version,
        ));
    }
    let device_toml = format!(
        "allow_downgrade = true\n{}",
        uart_confirm_toml(&board, 30, interval_ms)
    );
    let flasher = gdb_flasher_toml(&board);
    let agent = Agent::start(AgentSpec {
        extra_device_toml: &device_toml,
        flasher_toml: Some((KIND.chip(), &flasher)),
        ..AgentSpec::new(dir.path(), mqtt.port(), vec![registry.host()], 1)
    });
    let id = agent.devices[0].id.clone();
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    cloud
        .wait_for(&id, "firmware-state", "idle", WAIT, &agent)
        .await;
    let mut total = Vec::new();
    // One install more than measured: the first one also connects to the board and fills the caches.
    for i in 0..=runs {
        let (reference, version) = &refs[i % 2];
        let t0 = Instant::now();
        cloud.delta(&id, reference, None).await;
        loop {
            let done = cloud.actual(&id, "firmware").as_deref() == Some(reference.as_str())
                && cloud.actual(&id, "firmware-state").as_deref() == Some("installed");
            if done {
                break;
            }
            assert!(
                t0.elapsed() < WAIT,
                "{version} not installed:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if i > 0 {
            total.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let confirmed = confirmed_ms(&agent.log());
    assert_eq!(confirmed.len(), runs + 1, "{}", agent.log());
    (confirmed[1..].to_vec(), total)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    init();
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let interval_ms: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(50);
    println!(
        "| figure (netduinoplus2 in QEMU, check every {interval_ms} ms) | runs | median | max |"
    );
    println!("|---|---|---|---|");
    row(
        "board: reset to boot banner on the UART",
        runs,
        board_boot(runs),
    );
    let (confirmed, total) = agent_installs(runs, interval_ms).await;
    row(
        "agent: end of the flash's reset to confirmation",
        runs,
        confirmed,
    );
    row(
        "agent: intent published to `installed` reported",
        runs,
        total,
    );
}
