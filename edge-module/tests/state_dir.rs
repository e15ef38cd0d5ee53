//! The state directory under stress (issue #16): a full disk is a state, not a loss; one agent per state directory;
//! no temporary file outlives a crash. The disk-full case mounts a small tmpfs, so it needs root (CI runs as root);
//! elsewhere it says SKIPPED.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // tests: a panic is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{Agent, AgentSpec, Cloud, WAIT, agent_binary, image, init, push};
use twinflash_harness::{Mosquitto, Registry};

/// A tmpfs of `size` bytes mounted on `at` for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: u64) -> Option<Tmpfs> {
        let uid = Command::new("id").arg("-u").output().unwrap();
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            // mode=0700: a tmpfs is 1777 by default, and the agent refuses a state directory others can write.
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tf-test",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }

    /// Fills the filesystem: writes until the disk is full.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let _ = std::fs::write(&filler, vec![0u8; 64 << 20]);
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_the_intent_unacknowledged_and_recovers_by_itself() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("state"), 2 << 20) else {
        println!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let mut agent = Agent::start(AgentSpec::new(
        dir.path(),
        mqtt.port(),
        vec![registry.host()],
        3,
    ));
    for d in &agent.devices {
        cloud
            .wait_for(&d.id, "firmware-state", "idle", WAIT, &agent)
            .await;
    }
    let fw = image(50, 8_000);
    let r = push(
        &registry,
        dir.path(),
        "fw/a:1.0.0",
        &fw,
        "1.0.0",
        support::CHIP,
    )
    .await;
    let ids: Vec<String> = agent.devices.iter().map(|d| d.id.clone()).collect();

    // Device 1's first intent needs a new journal file, and the disk is full: no ack, waiting:disk-full.
    let filler = disk.fill();
    cloud.delta(&ids[1], &r, None).await;
    cloud
        .wait_for(&ids[1], "firmware-state", "waiting:disk-full", WAIT, &agent)
        .await;
    // A crash while the intent is held: the broker still has the message and redelivers it to the next agent.
    agent.kill9();
    std::fs::remove_file(&filler).unwrap();
    agent.spawn();
    cloud.wait_for(&ids[1], "firmware", &r, WAIT, &agent).await;
    assert!(agent.devices[1].holds(&fw));

    // Device 2, the same without a crash: space comes back and the held intent lands by itself.
    let filler = disk.fill();
    cloud.delta(&ids[2], &r, None).await;
    cloud
        .wait_for(&ids[2], "firmware-state", "waiting:disk-full", WAIT, &agent)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        agent.devices[2].started(&r),
        0,
        "nothing flashed while the intent is not journaled"
    );
    std::fs::remove_file(&filler).unwrap();
    cloud.wait_for(&ids[2], "firmware", &r, WAIT, &agent).await;
    cloud
        .wait_for(&ids[2], "firmware-state", "installed", WAIT, &agent)
        .await;
    assert!(agent.devices[2].holds(&fw));
    assert_eq!(agent.devices[2].completed(&r), 1);
    let log = agent.log();
    assert!(log.contains("holding it unacknowledged"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_state_directory_exits_with_one_clear_line() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let mut agent = Agent::start(AgentSpec::new(dir.path(), mqtt.port(), vec![], 1));
    let id = agent.devices[0].id.clone();
    cloud
        .wait_for(&id, "firmware-state", "idle", WAIT, &agent)
        .await;

    let second = Command::new(agent_binary())
        .arg("--config")
        .arg(&agent.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("twinflash-edge:"))
        .collect();
    assert_eq!(ours.len(), 1, "{stderr}");
    assert!(
        ours[0].contains("in use by another twinflash-edge"),
        "{stderr}"
    );
    assert!(
        ours[0].contains(&agent.pid().unwrap().to_string()),
        "names the holder: {stderr}"
    );

    // Temporary files that a crash left mid-write are removed at start, and nothing else is.
    let stale = agent
        .state_dir
        .join("outbox")
        .join(".default__sim-00.json.Xk3j9Q");
    std::fs::write(&stale, b"{").unwrap();
    agent.kill9();
    agent.spawn();
    cloud
        .wait_for(&id, "firmware-state", "idle", WAIT, &agent)
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    while stale.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "stale temporary file kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
