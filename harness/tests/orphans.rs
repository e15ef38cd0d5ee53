//! A test process that crashes must not leave a broker or registry behind (PR_SET_PDEATHSIG).
// Test code: unwrap/expect on setup steps is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use twinflash_harness::{Mosquitto, Registry};

const CHILD_ENV: &str = "TWINFLASH_HARNESS_ORPHAN_CHILD";

/// Only does something when re-run by `crashed_test_process_leaves_no_orphan`: starts both
/// services, prints their pids and aborts without running any destructor.
#[test]
fn orphan_child_entry() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let broker = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    println!("PIDS {} {}", broker.pid(), registry.pid());
    // The abort skips the temp dirs' destructors; the parent removes them.
    println!(
        "DIRS {} {}",
        broker.dir().display(),
        registry.root_dir().parent().unwrap().display()
    );
    std::process::abort();
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| !s.trim_start().starts_with('Z'))
    })
}

#[test]
fn crashed_test_process_leaves_no_orphan() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "orphan_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the child should have aborted");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("PIDS ").map(|(_, pids)| pids))
        .unwrap_or_else(|| panic!("no PIDS line in {stdout}"));
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    let dirs: Vec<&str> = stdout
        .lines()
        .find_map(|l| l.split_once("DIRS ").map(|(_, dirs)| dirs))
        .map(|d| d.split_whitespace().collect())
        .unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&pid| alive(pid)) {
        assert!(Instant::now() < deadline, "orphans still alive: {pids:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(dirs.len(), 2, "{stdout}");
    for dir in dirs {
        std::fs::remove_dir_all(dir).unwrap();
    }
}
