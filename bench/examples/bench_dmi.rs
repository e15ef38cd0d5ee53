//! Benchmarks of the agent in DMI mode (issue 14), run by scripts/bench.sh; prints markdown table rows.
//!
//! `cargo build --release -p twinflash-edge --bins && cargo run --release -p twinflash-bench --example bench_dmi -- [fleet N | cost]`
//! Against the harness's DMI stand-in (`twinflash_testkit::DmiEdgecore`: edgecore v1.23.1's DMI side, with its
//! node-wide rate limit of one call per second and a burst of 100), a real registry and the release agent.
//! - `fleet N`: N new Devices with one install each: time until edgecore stores every `installed`, DMI calls made,
//!   calls refused by the rate limit.
//! - `cost`: the anti-entropy cost of converged devices (the periodic re-report at the `firmware-state`
//!   property's `reportCycle`, stretched so that re-reports use at most a quarter of the budget): calls per minute
//!   for 1 device and for 8 devices with a 2 s report cycle (8 devices stretch it to 32 s), each over a window of
//!   several periods.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark driver

use std::time::{Duration, Instant};

use twinflash_harness::Registry;
use twinflash_testkit::{Agent, AgentSpec, CHIP, DmiEdgecore, device_model, image, init, push};

struct Scene {
    agent: Agent,
    edgecore: DmiEdgecore,
    _registry: Registry,
    _dir: tempfile::TempDir,
    reference: String,
}

async fn scene(devices: usize, report_cycle_ms: u64) -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start().unwrap();
    let reference = push(
        &registry,
        dir.path(),
        "fw/blinky:1.0.0",
        &image(1, 4 * 1024),
        "1.0.0",
        CHIP,
    )
    .await;
    let edgecore = DmiEdgecore::start_in(&dir.path().join("edgecore"))
        .await
        .unwrap();
    edgecore.apply_model(&device_model("default"));
    let agent_dir = dir.path().join("agent");
    let agent = Agent::start(AgentSpec {
        dmi: Some(edgecore.socket()),
        ..AgentSpec::new(&agent_dir, 0, vec![registry.host()], devices)
    });
    for d in &agent.devices {
        let mut dev = d.device("node-a", &reference);
        dev["spec"]["properties"][2]["reportCycle"] = serde_json::json!(report_cycle_ms);
        edgecore.apply_device(&dev);
    }
    Scene {
        agent,
        edgecore,
        _registry: registry,
        _dir: dir,
        reference,
    }
}

async fn all_installed(s: &Scene, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let done = s
            .agent
            .devices
            .iter()
            .filter(|d| {
                let name = d.id.split_once('/').unwrap().1;
                s.edgecore
                    .actual("default", name, "firmware-state")
                    .as_deref()
                    == Some("installed")
                    && s.edgecore.actual("default", name, "firmware").as_deref()
                        == Some(s.reference.as_str())
            })
            .count();
        if done == s.agent.devices.len() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{done}/{} installed after {within:?}",
            s.agent.devices.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fleet(n: usize) {
    let s = scene(n, 60_000).await;
    let took = all_installed(&s, Duration::from_secs(900)).await;
    let c = s.edgecore.counters();
    println!(
        "| {n} new Devices, one install each: until edgecore stores every `installed` | no call refused by the rate limit | {:.1} s; {} ReportDeviceStatus ({:.2} per device), {} ReportDeviceStates, {} MapperRegister; {} refused | edgecore's budget alone: burst 100, then 1 call/s; the agent keeps 90 of the burst |",
        took.as_secs_f64(),
        c.report_status,
        c.report_status as f64 / n as f64,
        c.report_states,
        c.mapper_register,
        c.rate_limited
    );
}

async fn cost_of(n: usize, cycle_ms: u64, window: Duration) {
    let s = scene(n, cycle_ms).await;
    all_installed(&s, Duration::from_secs(900)).await;
    // Let the first report cycle and the reachability reports of the install pass.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = s.edgecore.counters();
    tokio::time::sleep(window).await;
    let after = s.edgecore.counters();
    let calls =
        (after.report_status - before.report_status) + (after.report_states - before.report_states);
    let per_min = calls as f64 * 60.0 / window.as_secs_f64();
    let period = (cycle_ms as f64 / 1000.0).max(n as f64 / 0.25);
    println!(
        "| {n} converged device(s), `reportCycle` {cycle_ms} ms: DMI calls per minute, node-wide | at most a quarter of edgecore's 60 calls/min | {per_min:.1} calls/min ({calls} in {} s) | expected {:.1} calls/min (one re-report per device every {period:.0} s) |",
        window.as_secs(),
        n as f64 * 60.0 / period
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fleet") => fleet(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100)).await,
        Some("cost") => {
            cost_of(1, 2_000, Duration::from_secs(30)).await;
            cost_of(8, 2_000, Duration::from_secs(96)).await;
        }
        _ => {
            eprintln!("usage: bench_dmi fleet <N> | cost");
            std::process::exit(2);
        }
    }
}
