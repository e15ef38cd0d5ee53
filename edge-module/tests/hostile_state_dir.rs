//! The state directory as an attacker on the node and a careless operator leave it (issue 23): the agent replays
//! what it finds there as its own (journaled intents, whole Devices with their flasher settings), so it must be the
//! agent's alone. Every agent of this module runs under `umask 000` (a wrapper script is the agent binary), the
//! umask that left `mkdir(state_dir, 0777)` behind in the report.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prost::Message as _;
use support::{Agent, AgentSpec, CHIP, image, push};
use twinflash_edge::state_dir::SUBDIRS;
use twinflash_harness::Registry;
use twinflash_testkit::{DmiEdgecore, SimDevice, convert_device, device_model};

const WAIT: Duration = Duration::from_secs(60);
const NS: &str = "default";

/// The agent binary of this module: `umask 000`, then the real agent (`TWINFLASH_EDGE_BIN` if set, as
/// `support::init` takes it).
fn agent() -> PathBuf {
    static WRAPPER: OnceLock<PathBuf> = OnceLock::new();
    WRAPPER
        .get_or_init(|| {
            let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("twinflash-edge-umask-000.sh");
            let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
            std::fs::write(
                &tmp,
                format!(
                    "#!/bin/sh\numask 000\nexec '{}' \"$@\"\n",
                    std::env::var("TWINFLASH_EDGE_BIN")
                        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_twinflash-edge").to_owned())
                ),
            )
            .unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            path
        })
        .clone()
}

fn init() {
    twinflash_testkit::set_agent_binary(agent());
    support::init();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

/// A DMI-mode configuration whose edgecore is absent (the agent must stop before it would dial it), and its state
/// directory `dir/state/<sub>` made as `0700` directories.
fn dmi_config(dir: &Path, sub: &str) -> PathBuf {
    let state = dir.join("state");
    std::fs::create_dir_all(state.join(sub)).unwrap();
    let mut d = state.join(sub);
    while d.starts_with(&state) {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d.pop();
    }
    let file = dir.join("edge.toml");
    std::fs::write(
        &file,
        format!(
            "node = \"n\"\nstate_dir = \"{0}/state\"\n[kubeedge]\nmode = \"dmi\"\ndmi_socket = \"{0}/no-edgecore/dmi.sock\"\n",
            dir.display()
        ),
    )
    .unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_umask_000_every_directory_is_0700_and_every_state_file_0600() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start().unwrap();
    let edgecore = DmiEdgecore::start_in(&dir.path().join("edgecore"))
        .await
        .unwrap();
    edgecore.apply_model(&device_model(NS));
    let agent_dir = dir.path().join("agent");
    let spec = AgentSpec {
        dmi: Some(edgecore.socket()),
        ..AgentSpec::new(&agent_dir, 0, vec![registry.host()], 1)
    };
    let mut agent = Agent::start(spec);
    let reference = push(
        &registry,
        dir.path(),
        "fw/blinky:1.0.0",
        &image(1, 16 * 1024),
        "1.0.0",
        CHIP,
    )
    .await;
    let sim = agent.devices[0].clone();
    let name = sim.id.split_once('/').unwrap().1.to_owned();
    edgecore.apply_device(&sim.device("node-a", &reference));
    edgecore
        .wait_actual(NS, &name, "firmware-state", "installed", WAIT)
        .await;

    let state = agent.state_dir.clone();
    let mut wrong = Vec::new();
    for sub in std::iter::once("").chain(SUBDIRS) {
        let m = mode(&state.join(sub));
        if m != 0o700 {
            wrong.push(format!("directory state/{sub}: mode {m:04o}, wanted 0700"));
        }
    }
    let mut files = vec![state.join("agent.lock")];
    for sub in ["journal", "outbox", "dmi/devices", "dmi/models"] {
        for entry in std::fs::read_dir(state.join(sub)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    for needed in [
        state.join("journal/default__sim-00.jsonl"),
        state.join("dmi/devices/default__sim-00.pb"),
    ] {
        assert!(
            files.contains(&needed),
            "{} missing: {files:?}",
            needed.display()
        );
    }
    for f in &files {
        let m = mode(f);
        if m != 0o600 {
            wrong.push(format!("file {}: mode {m:04o}, wanted 0600", f.display()));
        }
    }
    // The mapper socket (bound by the DMI transport) is the agent's alone too.
    let m = mode(&state.join("dmi.sock"));
    if m & 0o077 != 0 {
        wrong.push(format!("socket state/dmi.sock: mode {m:04o}"));
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));

    // A journal record with a 1 MiB `wanted` (no record of this agent is that long): refused on load, never logged
    // whole; the device keeps what it has.
    agent.kill9();
    let journal = state.join("journal/default__sim-00.jsonl");
    let mut text = std::fs::read(&journal).unwrap();
    text.extend(
        format!(
            "{{\"schema\":1,\"wanted\":\"{}\",\"installed\":null,\"flash_started\":null,\"outcome\":null,\"attempts\":0}}\n",
            "r".repeat(1 << 20)
        )
        .as_bytes(),
    );
    std::fs::write(&journal, text).unwrap();
    let before = agent.log().len();
    agent.spawn();
    let deadline = Instant::now() + WAIT;
    while !agent.log()[before..].contains("twinflash-edge running") {
        assert!(
            Instant::now() < deadline,
            "no restart:\n{}",
            &agent.log()[before..]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    edgecore
        .wait_actual(NS, &name, "firmware", &reference, WAIT)
        .await;
    // The device is loaded after the registration's answer, off the manager task: wait for its load.
    let deadline = Instant::now() + WAIT;
    while !agent.log()[before..].contains("journal holds unreadable lines") {
        assert!(
            Instant::now() < deadline,
            "the refused record is counted: {}",
            &agent.log()[before..]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Measured for the issue's note (memory goals are proven by measurement, not asserted here).
    support::print_vm_hwm(&agent, "a start on a 1 MiB journal record");
    let grown = agent.log().len() - before;
    assert!(
        grown < 64 * 1024,
        "the log grew by {grown} bytes at start: the 1 MiB value was logged"
    );
}

/// The report's case: a Device `.pb` dropped into a world-writable `dmi/devices` was replayed at start (with
/// `flasher = command`, its argv ran as root). Now the agent refuses to start, with one line and exit status 2,
/// `--check-config` says the same, and nothing of the directory is read.
#[test]
fn a_state_directory_others_can_write_is_refused_and_nothing_in_it_is_replayed() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dmi_config(dir, "dmi/devices");
    let devices = dir.join("state/dmi/devices");
    std::fs::set_permissions(&devices, std::fs::Permissions::from_mode(0o777)).unwrap();
    let planted = SimDevice {
        id: "default/planted".into(),
        dir: dir.join("planted-device"),
        ab: false,
        size: 64 * 1024,
        write_bytes_per_sec: None,
    };
    let pb = convert_device(&planted.device("n", "")).unwrap();
    std::fs::write(devices.join("default__planted.pb"), pb.encode_to_vec()).unwrap();

    let line = |out: &str| -> String {
        let ours: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("twinflash-edge:"))
            .collect();
        assert_eq!(ours.len(), 1, "one line: {out}");
        ours[0].to_owned()
    };
    let (code, out) = support::run_for(&agent(), &config, &["--check-config"], WAIT);
    assert_eq!(code, Some(2), "--check-config: {out}");
    let check_line = line(&out);
    let (code, out) = support::run_for(&agent(), &config, &[], WAIT);
    assert_eq!(
        code,
        Some(2),
        "the agent started (None: still running after {WAIT:?}): {out}"
    );
    let start_line = line(&out);
    assert_eq!(check_line, start_line);
    for part in [
        "dmi/devices",
        "writable by group or others (mode 0777)",
        "chmod 700",
        "[invalid-config]",
    ] {
        assert!(start_line.contains(part), "{part}: {start_line}");
    }
    assert!(
        !out.contains("planted"),
        "the planted Device was read: {out}"
    );
    assert!(!planted.dir.exists(), "the planted Device was replayed");

    // Not writable by others (an older agent's 0755): accepted as it is, and the rest created 0700.
    std::fs::set_permissions(&devices, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, out) = support::run_for(&agent(), &config, &["--check-config"], WAIT);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(mode(&devices), 0o755, "--check-config changes nothing");
}

#[test]
fn a_state_directory_another_user_owns_is_refused() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dmi_config(dir, "");
    let state = dir.join("state");
    if std::os::unix::fs::chown(&state, Some(65534), Some(65534)).is_err() {
        println!("SKIPPED: changing the owner needs root");
        return;
    }
    let (code, out) = support::run_for(&agent(), &config, &[], WAIT);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("owned by uid 65534"), "{out}");
    // Nothing was created in it.
    assert!(std::fs::read_dir(&state).unwrap().next().is_none(), "{out}");
}
