//! Benchmarks of the agent in DMI mode (issue 14), run by scripts/bench.sh; prints markdown table rows.
//!
//! `cargo build --release -p twinflash-edge --bins && cargo run --release -p twinflash-bench --example bench_dmi -- [fleet N | cost | latency N | restart N]`
//! Against the harness's DMI stand-in (`twinflash_testkit::DmiEdgecore`: edgecore v1.23.1's DMI side, with its
//! node-wide rate limit of one call per second and a burst of 100), a real registry and the release agent.
//! - `fleet N`: N new Devices with one install each: time until edgecore stores every `installed`, and until
//!   DeviceStatus (cloudcore's stand-in writing into FakeApi) holds all three twins of every device; DMI calls made,
//!   calls refused by the rate limit.
//! - `cost`: the anti-entropy cost of converged devices (the periodic re-report at the `firmware-state`
//!   property's `reportCycle`, stretched so that re-reports use at most a quarter of the budget): calls per minute
//!   for 1 device and for 8 devices with a 2 s report cycle (8 devices stretch it to 32 s), each over a window of
//!   several periods.
//! - `latency N`: one device, N installs one after another (64 KiB at 32 KiB/s: a 2 s flash with progress), with
//!   cloudcore's stand-in writing DeviceStatus into FakeApi: per install, the time from the end of the flash (the
//!   simulated device's counters, written as it completes) to edgecore's store holding `installed` and to
//!   DeviceStatus holding all three twins of it, and the DMI calls the install cost once the agent fell silent
//!   (confirmations included).
//! - `restart N`: one converged device, edgecore stopped for 3 s and started N times: the time from the start to the
//!   agent's next MapperRegister.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark driver

use std::time::{Duration, Instant};

use twinflash_harness::{FakeApi, Registry};
use twinflash_testkit::{
    Agent, AgentSpec, CHIP, Cloudcore, DmiEdgecore, device_model, image, init, push,
};

struct Scene {
    agent: Agent,
    edgecore: DmiEdgecore,
    registry: Registry,
    dir: tempfile::TempDir,
    reference: String,
}

/// A registry holding `fw/blinky:1.0.0`, the DMI stand-in and an agent with `devices` devices, no Device yet.
async fn empty_scene(devices: usize, tweak: impl FnOnce(AgentSpec<'_>) -> AgentSpec<'_>) -> Scene {
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
    let agent = Agent::start(tweak(AgentSpec {
        dmi: Some(edgecore.socket()),
        ..AgentSpec::new(&agent_dir, 0, vec![registry.host()], devices)
    }));
    Scene {
        agent,
        edgecore,
        registry,
        dir,
        reference,
    }
}

/// Every device's Device, wanting `fw/blinky:1.0.0`, with this `reportCycle`.
fn apply_all(s: &Scene, report_cycle_ms: u64) {
    for d in &s.agent.devices {
        let mut dev = d.device("node-a", &s.reference);
        dev["spec"]["properties"][2]["reportCycle"] = serde_json::json!(report_cycle_ms);
        s.edgecore.apply_device(&dev);
    }
}

async fn scene(devices: usize, report_cycle_ms: u64) -> Scene {
    let s = empty_scene(devices, |spec| spec).await;
    apply_all(&s, report_cycle_ms);
    s
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
    let s = empty_scene(n, |spec| spec).await;
    let api = FakeApi::start().unwrap();
    let names: Vec<String> = s
        .agent
        .devices
        .iter()
        .map(|d| d.id.split_once('/').unwrap().1.to_owned())
        .collect();
    for name in &names {
        Cloudcore::declare_device(&api, "default", name);
    }
    let follow = Cloudcore::new(&api).follow_syncs(s.edgecore.syncs());
    apply_all(&s, 60_000);
    let took = all_installed(&s, Duration::from_secs(900)).await;
    let c = s.edgecore.counters();
    let started = Instant::now();
    loop {
        let done = names
            .iter()
            .filter(|name| {
                let ds = |twin: &str| Cloudcore::reported(&api, "default", name, twin);
                ds("firmware-state").as_deref() == Some("installed")
                    && ds("firmware").as_deref() == Some(s.reference.as_str())
                    && ds("firmware-version").as_deref() == Some("1.0.0")
            })
            .count();
        if done == n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{done}/{n} installed in DeviceStatus"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let in_ds = took + started.elapsed();
    let d = s.edgecore.counters();
    follow.abort();
    println!(
        "| {n} new Devices, one install each: until edgecore stores every `installed`; until DeviceStatus holds all three twins of every device | no call refused by the rate limit | store {:.1} s, {} ReportDeviceStatus ({:.2} per device); DeviceStatus {:.1} s, {} ReportDeviceStatus ({:.2} per device); {} ReportDeviceStates, {} MapperRegister; {} refused | edgecore's budget alone: burst 100, then 1 call/s; the agent keeps 90 of the burst |",
        took.as_secs_f64(),
        c.report_status,
        c.report_status as f64 / n as f64,
        in_ds.as_secs_f64(),
        d.report_status,
        d.report_status as f64 / n as f64,
        d.report_states,
        d.mapper_register,
        d.rate_limited
    );
}

async fn cost_of(n: usize, cycle_ms: u64, window: Duration) {
    let s = scene(n, cycle_ms).await;
    all_installed(&s, Duration::from_secs(900)).await;
    // Let the first report cycle, the reachability reports and the confirmations (5 s after each settled report,
    // two calls 1 s apart) of the install pass.
    tokio::time::sleep(Duration::from_secs(12)).await;
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

fn unix_ms(t: std::time::SystemTime) -> i64 {
    i64::try_from(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// Median and maximum.
fn spread(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

async fn latency(n: usize) {
    let s = empty_scene(1, |spec| AgentSpec {
        write_bytes_per_sec: Some(32 * 1024),
        extra_sections: "[twin]\nanti_entropy_secs = 600\n".into(),
        ..spec
    })
    .await;
    let (edgecore, registry, dir) = (&s.edgecore, &s.registry, &s.dir);
    let sim = &s.agent.devices[0];
    let name = sim.id.split_once('/').unwrap().1.to_owned();
    let api = FakeApi::start().unwrap();
    Cloudcore::declare_device(&api, "default", &name);
    let follow = Cloudcore::new(&api).follow_syncs(edgecore.syncs());
    let ds = |twin: &str| Cloudcore::reported(&api, "default", &name, twin);
    let (mut to_store, mut to_ds, mut calls) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let version = format!("1.0.{i}");
        let seed = u8::try_from(20 + i % 200).unwrap();
        let reference = push(
            registry,
            dir.path(),
            &format!("fw/blinky:{version}"),
            &image(seed, 64 * 1024),
            &version,
            CHIP,
        )
        .await;
        let before = edgecore.counters();
        let synced = edgecore.cloud_syncs().len();
        edgecore.apply_device(&sim.device("node-a", &reference));
        let started = Instant::now();
        let ds_at = loop {
            if ds("firmware").as_deref() == Some(reference.as_str())
                && ds("firmware-version").as_deref() == Some(version.as_str())
                && ds("firmware-state").as_deref() == Some("installed")
            {
                break unix_ms(std::time::SystemTime::now());
            }
            assert!(started.elapsed() < Duration::from_secs(120), "install {i}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let end = unix_ms(
            std::fs::metadata(sim.dir.join("counters.json"))
                .unwrap()
                .modified()
                .unwrap(),
        );
        let store_at = edgecore.cloud_syncs()[synced..]
            .iter()
            .find_map(|c| {
                let a = c.twins.get("firmware-state")?.actual.as_ref()?;
                (a.value.as_deref() == Some("installed"))
                    .then(|| a.metadata.as_ref().map(|m| m.timestamp))
            })
            .flatten()
            .unwrap();
        // Until the agent falls silent: the confirmation comes 5 s after the settled report, in two calls 1 s apart.
        let mut last = edgecore.counters();
        loop {
            tokio::time::sleep(Duration::from_secs(8)).await;
            let now = edgecore.counters();
            if now == last {
                break;
            }
            last = now;
        }
        to_store.push((store_at - end) as f64 / 1000.0);
        to_ds.push((ds_at - end) as f64 / 1000.0);
        calls.push(
            ((last.report_status - before.report_status)
                + (last.report_states - before.report_states)) as f64,
        );
    }
    follow.abort();
    let (s_med, s_max) = spread(to_store);
    let (d_med, d_max) = spread(to_ds);
    let per_install = calls.iter().sum::<f64>() / n as f64;
    println!(
        "| {n} installs of one device (2 s flash with progress): end of the flash to edgecore's store / to DeviceStatus (all three twins), median and max; DMI calls per install | DeviceStatus within 1 s | store {s_med:.2} s / {s_max:.2} s; DeviceStatus {d_med:.2} s / {d_max:.2} s; {per_install:.1} calls per install | the reports of one device are `report_spacing_ms` (1 s) apart |"
    );
}

async fn restart(n: usize) {
    let s = scene(1, 600_000).await;
    all_installed(&s, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut seen = Vec::new();
    for _ in 0..n {
        s.edgecore.stop();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let registered = s.edgecore.counters().mapper_register;
        s.edgecore.start().await.unwrap();
        let back = Instant::now();
        while s.edgecore.counters().mapper_register == registered {
            assert!(
                back.elapsed() < Duration::from_secs(60),
                "no registration within 60 s of edgecore's start"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen.push(back.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (med, max) = spread(seen);
    println!(
        "| edgecore restarted {n} times under a converged device: its start to the agent's MapperRegister, median and max | within 10 s, no DMI call spent on watching | {med:.2} s / {max:.2} s | the agent stats edgecore's socket every 1 s |"
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fleet") => fleet(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100)).await,
        Some("latency") => latency(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10)).await,
        Some("restart") => restart(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5)).await,
        Some("cost") => {
            cost_of(1, 2_000, Duration::from_secs(30)).await;
            cost_of(8, 2_000, Duration::from_secs(96)).await;
        }
        _ => {
            eprintln!("usage: bench_dmi fleet <N> | cost | latency <N> | restart <N>");
            std::process::exit(2);
        }
    }
}
