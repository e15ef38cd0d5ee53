//! DMI install latency and calls per install against KubeEdge (issue 22): the same measurement against the
//! stand-ins (default) and against a real edgecore and cloudcore (EDGECORE, CLOUDCORE, KUBECONFIG; docs/testing.md),
//! through `twinflash_testkit::DmiScene`. Prints markdown table rows.
//!
//! `cargo run -p twinflash-bench --example bench_dmi_kubeedge -- installs N`
//!
//! One simulated device, declared by its Device (created with nothing wanted, idle); then N times: `kubectl edit` of
//! its desired firmware to a new 16 KiB artifact, and the time until DeviceStatus (and edgecore's store) show it
//! installed. After each install the run waits 3 s for the last reports, then counts, from the edit on:
//! - mapper calls, edgecore -> agent (RegisterDevice, UpdateDevice, *DeviceModel): the agent's debug log, in both
//!   modes;
//! - twin updates and state reports, agent -> edgecore (one twin update per twin of a ReportDeviceStatus): the
//!   stand-in's counters, or the real edgecore's log (each is classified by its topic, `.../twin/update` and
//!   `.../state/update`, in a line of its own);
//! - ReportDeviceStatus calls: the stand-in's counters only (the real edgecore logs twins, not calls).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark driver

use std::time::Duration;

use twinflash_testkit::{DmiScene, KubeEdgeMode, init};

const NS: &str = "default";

/// What was counted so far.
#[derive(Debug, Clone, Copy, Default)]
struct Count {
    mapper_calls: usize,
    twin_updates: usize,
    state_reports: usize,
    /// ReportDeviceStatus calls (stand-in only).
    status_calls: Option<usize>,
}

fn count(s: &DmiScene) -> Count {
    let calls = [
        "RegisterDevice",
        "UpdateDevice",
        "RemoveDevice",
        "CreateDeviceModel",
        "UpdateDeviceModel",
        "RemoveDeviceModel",
    ];
    let mapper_calls = s
        .agent
        .log()
        .lines()
        .filter(|l| l.contains("dmi::server") && calls.iter().any(|c| l.contains(c)))
        .count();
    if let Some(ec) = s.ke.standin() {
        let c = ec.counters();
        return Count {
            mapper_calls,
            twin_updates: usize::try_from(c.twins_applied + c.twins_rejected).unwrap(),
            state_reports: usize::try_from(c.report_states).unwrap(),
            status_calls: Some(usize::try_from(c.report_status).unwrap()),
        };
    }
    let real = s.ke.real().unwrap();
    let id = s.sim(0).id.clone();
    let log = real.edgecore_log();
    let classified = |suffix: &str| {
        let needle = format!("classify the msg with the topic $hw/events/device/{id}/{suffix}");
        log.lines().filter(|l| l.ends_with(&needle)).count()
    };
    Count {
        mapper_calls,
        twin_updates: classified("twin/update"),
        state_reports: classified("state/update"),
        status_calls: None,
    }
}

async fn installs(n: usize) {
    init();
    let s = DmiScene::start("bench: installs", 1, |spec| spec).await;
    let name = s.name(0);
    let mut refs = Vec::new();
    for k in 0..n {
        let tag = format!("1.{k}.0");
        refs.push((
            s.push(&tag, u8::try_from(k % 250).unwrap(), 16 * 1024)
                .await,
            tag,
        ));
    }
    s.create(0, "").await;
    s.wait_stored_state(0, "idle").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut took = Vec::new();
    let mut per = Vec::new();
    for (reference, version) in &refs {
        let before = count(&s);
        s.ke.set_firmware(NS, &name, reference).await;
        took.push(s.wait_installed(0, reference, version).await);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = count(&s);
        per.push(Count {
            mapper_calls: after.mapper_calls - before.mapper_calls,
            twin_updates: after.twin_updates - before.twin_updates,
            state_reports: after.state_reports - before.state_reports,
            status_calls: after
                .status_calls
                .zip(before.status_calls)
                .map(|(a, b)| a - b),
        });
    }
    took.sort();
    let p50 = took[took.len() / 2];
    let max = took[took.len() - 1];
    let mode = s.ke.mode();
    let mean = |f: fn(&Count) -> usize| per.iter().map(f).sum::<usize>() as f64 / per.len() as f64;
    println!(
        "| DMI install, Device edit -> DeviceStatus installed, {n} installs of 16 KiB (p50 / max) | {mode} | {:.2} s / {:.2} s |",
        p50.as_secs_f64(),
        max.as_secs_f64()
    );
    println!(
        "| mapper calls per install (edgecore -> agent; the agent's log) | {mode} | {:.1} |",
        mean(|c| c.mapper_calls)
    );
    println!(
        "| twin updates per install (agent -> edgecore, one per reported twin) | {mode} | {:.1} |",
        mean(|c| c.twin_updates)
    );
    println!(
        "| state reports per install (ReportDeviceStates) | {mode} | {:.1} |",
        mean(|c| c.state_reports)
    );
    let status_calls = if per.iter().all(|c| c.status_calls.is_some()) {
        format!("{:.1}", mean(|c| c.status_calls.unwrap_or(0)))
    } else {
        "not logged by edgecore".into()
    };
    println!("| ReportDeviceStatus calls per install | {mode} | {status_calls} |");
    println!(
        "<!-- per install: {per:?}; times: {:?} -->",
        took.iter().map(Duration::as_secs_f64).collect::<Vec<_>>()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("installs") => installs(args.get(1).map_or(5, |n| n.parse().unwrap())).await,
        _ => panic!("usage: bench_dmi_kubeedge installs N"),
    }
}
