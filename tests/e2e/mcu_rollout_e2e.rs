//! Issue 24's acceptance: a FirmwareRollout over several emulated microcontrollers where the release does not boot
//! on one of them. Three QEMU netduinoplus2 boards (STM32F405), each a Device with its own `twinflash-edge` agent
//! flashing it through its GDB server (the gdb backend) and confirming by the board's UART (a `command` check that
//! reads the UART file, as a device-side script reads a serial port); `twinflash-cloud` in direct mode over the
//! harness's in-memory Kubernetes API server ([`FakeApi`]); real mosquitto and registry.
//!
//! One board carries a marker word in a flash sector no image writes: a hardware variant the release v2 does not
//! support (`Variant::HangIfMarked`), so v2 hangs before its banner there and boots everywhere else. The rollout
//! (waves "1", "50%", "100%", one Device at a time, maxFailures 0, rollbackOnAbort) installs v2 on the first two,
//! meets `failed:boot-failed` on the third (whose agent already put v1 back), aborts, and rolls the others back:
//! their boards boot v1 again.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fleet;

use std::collections::BTreeMap;
use std::time::Duration;

use fleet::{DEV_GROUP, NS, reported};
use serde_json::{Value, json};
use twinflash_cloud::rollout::{
    DeviceSelector, FailureThreshold, FirmwareRollout, FirmwareRolloutSpec, FirmwareRolloutStatus,
    Phase, Strategy,
};
use twinflash_harness::board::{self, Board, BoardKind, Firmware, MARKER, Variant};
use twinflash_harness::{FakeApi, Mosquitto, Registry};
use twinflash_testkit::{
    Agent, AgentSpec, CloudProcess, gdb_flasher_toml, init, push, uart_confirm_toml,
};

const BOARDS: usize = 3;
/// The board marked as the hardware variant v2 does not support: the last one, so that the others confirmed v2
/// before it is started.
const MARKED: usize = 2;
const ROLLOUT: &str = "mcu-2";
const KIND: BoardKind = BoardKind::Netduinoplus2;
/// How long a release has to print its banner before the agent gives up on it.
const CONFIRM_SECS: u64 = 10;
const BOOT: Duration = Duration::from_secs(20);
/// Generous bound of each wait: a whole rollout with a confirmation timeout and a revert, on a loaded machine.
const WAIT: Duration = Duration::from_secs(240);

fn name(i: usize) -> String {
    format!("mcu-{i:02}")
}

fn device_json(i: usize, desired: &str) -> Value {
    let node = format!("node-{i}");
    fleet::device_json(&name(i), &node, json!({"app": "mcu"}), KIND.chip(), desired)
}

fn device(api: &FakeApi, i: usize) -> Value {
    fleet::device(api, &name(i))
}

fn installed(api: &FakeApi, i: usize, reference: &str) -> bool {
    let dev = device(api, i);
    reported(&dev, "firmware").as_deref() == Some(reference)
        && reported(&dev, "firmware-state").as_deref() == Some("installed")
}

/// Every value the `firmware` desired twin of Device `i` ever had.
fn desired_history(api: &FakeApi, i: usize) -> Vec<String> {
    let (g, v, p) = DEV_GROUP;
    api.history(g, v, p)
        .iter()
        .filter(|r| r.object["metadata"]["name"] == name(i).as_str())
        .filter_map(|r| {
            r.object["spec"]["properties"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == "firmware")?["desired"]["value"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn rollout_status(api: &FakeApi) -> Option<FirmwareRolloutStatus> {
    fleet::rollout_status(api, ROLLOUT)
}

fn rollout(firmware: &str) -> Value {
    let spec = FirmwareRolloutSpec {
        selector: DeviceSelector {
            match_labels: BTreeMap::from([("app".to_owned(), "mcu".to_owned())]),
            match_expressions: vec![],
        },
        firmware: firmware.to_owned(),
        strategy: Strategy {
            waves: vec!["1".into(), "50%".into(), "100%".into()],
            max_in_flight: 1,
            failure_threshold: FailureThreshold {
                max_failure_percent: None,
                min_sample: 1,
                max_failures: Some(0),
            },
            device_timeout_seconds: 120,
            pause_between_waves_seconds: 0,
        },
        paused: false,
        abort: false,
        rollback_on_abort: true,
    };
    let mut r = FirmwareRollout::new(ROLLOUT, spec);
    r.metadata.namespace = Some(NS.into());
    serde_json::to_value(&r).unwrap()
}

/// Polls `cond` until it holds or [`WAIT`] passes; panics with `what()` otherwise.
async fn wait_until(mut cond: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out: {}", what());
}

/// Every value Device `i` ever reported for `twin`.
fn reported_history(api: &FakeApi, i: usize, twin: &str) -> Vec<String> {
    let (g, v, p) = DEV_GROUP;
    api.history(g, v, p)
        .iter()
        .filter(|r| r.object["metadata"]["name"] == name(i).as_str())
        .filter_map(|r| reported(&r.object, twin))
        .collect()
}

/// The newest boot banner a board printed.
fn last_banner(board: &Board) -> Option<String> {
    board
        .uart_lines()
        .into_iter()
        .rev()
        .find(|l| l.starts_with("boot version="))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_whose_release_does_not_boot_on_one_emulated_board_aborts_and_rolls_the_others_back()
 {
    if !board::required() {
        return;
    }
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let api = FakeApi::start().unwrap();
    api.without_status_subresource(DEV_GROUP.0, DEV_GROUP.1, DEV_GROUP.2);
    let kubeconfig = api.kubeconfig(dir.path()).unwrap();

    // v1 boots everywhere; v2 hangs on the marked board. Pushed as BIN at the STM32's flash origin.
    let v1_fw = Firmware::build(KIND, Variant::Good, "1.0.0").unwrap();
    let v2_fw = Firmware::build(KIND, Variant::HangIfMarked, "2.0.0").unwrap();
    assert_eq!(KIND.flash_origin(), twinflash_testkit::ORIGIN);
    let bin = |fw: &Firmware| std::fs::read(fw.bin()).unwrap();
    let r1 = push(
        &registry,
        dir.path(),
        "fw/mcu:1.0.0",
        &bin(&v1_fw),
        "1.0.0",
        KIND.chip(),
    )
    .await;
    let r2 = push(
        &registry,
        dir.path(),
        "fw/mcu:2.0.0",
        &bin(&v2_fw),
        "2.0.0",
        KIND.chip(),
    )
    .await;

    // One board, one Device and one agent per node. A rollback installs an older version: allow_downgrade.
    let boards: Vec<Board> = (0..BOARDS)
        .map(|_| Board::start(KIND, None).unwrap())
        .collect();
    let agents: Vec<Agent> = boards
        .iter()
        .enumerate()
        .map(|(i, b)| {
            api.put(device_json(i, &r1)).unwrap();
            let device_toml = format!(
                "allow_downgrade = true\n{}",
                uart_confirm_toml(b, CONFIRM_SECS, 200)
            );
            let flasher = gdb_flasher_toml(b);
            let agent_dir = dir.path().join(format!("agent-{i}"));
            Agent::start(AgentSpec {
                client_id: format!("agent-mcu-{i}"),
                node: format!("node-{i}"),
                device_prefix: "mcu".into(),
                first_device: i,
                extra_device_toml: &device_toml,
                flasher_toml: Some((KIND.chip(), &flasher)),
                ..AgentSpec::new(&agent_dir, mqtt.port(), vec![registry.host()], 1)
            })
        })
        .collect();
    let cloud_config = fleet::cloud_config(
        mqtt.port(),
        &registry.host(),
        "device",
        "twinflash-cloud-mcu",
    );
    let cloud = CloudProcess::start(dir.path(), &cloud_config, &kubeconfig);
    let logs = || {
        let agent_logs: Vec<String> = agents.iter().map(Agent::log).collect();
        let uarts: Vec<Vec<String>> = boards.iter().map(Board::uart_lines).collect();
        format!(
            "cloud log:\n{}\nagent logs:\n{}\nUARTs: {uarts:?}",
            cloud.log(),
            agent_logs.join("\n---\n")
        )
    };

    let t0 = std::time::Instant::now();
    // 1. Every board runs v1, confirmed by its banner.
    wait_until(
        || (0..BOARDS).all(|i| installed(&api, i, &r1)),
        || format!("not installed with v1\n{}", logs()),
    )
    .await;
    for b in &boards {
        assert_eq!(last_banner(b).as_deref(), Some("boot version=1.0.0"));
    }

    eprintln!("{:?}: every board runs v1", t0.elapsed());
    // 2. Mark one board as the hardware variant v2 does not support (v1 runs on: it never reads the marker).
    let marked = &boards[MARKED];
    marked
        .write_memory(KIND.marker_address(), &MARKER.to_le_bytes())
        .unwrap();
    let uart_before: Vec<usize> = boards.iter().map(|b| b.uart_lines().len()).collect();

    // 3. The rollout: v2 confirmed on the first two boards, boot-failed on the marked one, abort, rollback.
    api.put(rollout(&r2)).unwrap();
    wait_until(
        || rollout_status(&api).is_some_and(|s| s.phase == Phase::RolledBack),
        || format!("rollout status {:#?}\n{}", rollout_status(&api), logs()),
    )
    .await;
    let status = rollout_status(&api).unwrap();
    eprintln!("{:?}: final rollout status: {status:#?}", t0.elapsed());
    assert_eq!(status.failed, 1, "{status:#?}");
    assert_eq!(status.failed_devices.len(), 1);
    let failed = &status.failed_devices[0];
    assert_eq!(
        (failed.device.as_str(), failed.code.as_str()),
        (name(MARKED).as_str(), "boot-failed")
    );
    assert_eq!(status.installed, 2, "{status:#?}");
    assert!(
        status.message.contains("crosses the failure threshold"),
        "{}",
        status.message
    );

    // 4. The first two boards booted v2 and the twin said so; the marked one never printed v2's banner.
    for (i, b) in boards.iter().enumerate() {
        let after = &b.uart_lines()[uart_before[i]..];
        let printed_v2 = after.iter().any(|l| l == "boot version=2.0.0");
        assert_eq!(printed_v2, i != MARKED, "{}: {after:?}", name(i));
        assert!(
            desired_history(&api, i).contains(&r2),
            "{} was started",
            name(i)
        );
    }

    // 5. Every Device wants v1 again, reports v1 installed, and its board boots v1 again: a real rollback, not
    //    refused as a downgrade.
    for i in 0..BOARDS {
        assert_eq!(
            desired_history(&api, i).last(),
            Some(&r1),
            "{} rolled back",
            name(i)
        );
    }
    wait_until(
        || (0..BOARDS).all(|i| installed(&api, i, &r1)),
        || format!("not back on v1\n{}", logs()),
    )
    .await;
    eprintln!("{:?}: every board back on v1", t0.elapsed());
    for (i, b) in boards.iter().enumerate() {
        b.wait_line_after(uart_before[i], "boot version=1.0.0", BOOT)
            .unwrap();
        assert_eq!(
            last_banner(b).as_deref(),
            Some("boot version=1.0.0"),
            "{}: {:?}",
            name(i),
            b.uart_lines()
        );
        let dev = device(&api, i);
        assert_eq!(
            reported(&dev, "firmware-version").as_deref(),
            Some("1.0.0"),
            "{}",
            name(i)
        );
    }
    // The marked board's agent put v1 back itself: its twin never claimed v2.
    let firmware = reported_history(&api, MARKED, "firmware");
    assert!(!firmware.contains(&r2), "{firmware:?}");
    let states = reported_history(&api, MARKED, "firmware-state");
    assert!(
        states.iter().any(|s| s == "failed:boot-failed"),
        "{states:?}"
    );
    let log = agents[MARKED].log();
    assert!(
        log.contains("previous firmware back and confirmed"),
        "{log}"
    );
    for (i, a) in agents.iter().enumerate() {
        assert!(
            !a.log().contains("downgrade-refused"),
            "{}: {}",
            name(i),
            a.log()
        );
    }
}
