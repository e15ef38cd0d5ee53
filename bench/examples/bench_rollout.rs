//! Benchmark of the rollout planner: 10,000 simulated Devices in 4 waves (1 %, 10 %, 40 %, the
//! rest), maxInFlight 500, simulated reports (installs after 30-300 s, 0.5 % flash failures, a few
//! stuck Devices that time out), one reconcile every 15 s of simulated time. Prints, per wave, the
//! planner time per reconcile and the process's peak RSS, as markdown rows.
//!
//! Run: `cargo run --release -p twinflash-bench --example bench_rollout [devices]`.
//! It times the pure planner and status aggregation only (the simulated fleet's own work and the
//! API server round trips are outside the measured span).

use std::time::{Duration, Instant};

use twinflash_cloud::rollout::sim::{Behaviour, Fleet, bench_strategy};
use twinflash_cloud::rollout::{FirmwareRolloutSpec, Phase, Pin, PlanInput, plan};

const OLD: &str = "registry.local:5000/fw/blinky:1.0.0@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const PIN: &str = "registry.local:5000/fw/blinky:2.0.0@sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// A fixed pseudo-random number per Device (splitmix64), so runs are comparable.
fn mix(i: usize) -> u64 {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Default)]
struct WaveStats {
    reconciles: u32,
    total: Duration,
    max: Duration,
    started: u32,
    sim_secs: i64,
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let mut fleet = Fleet::new(
        n,
        OLD,
        |i| match mix(i) % 1000 {
            0..=4 => Behaviour::Fail("flash-failed".into(), 60),
            5 => Behaviour::Hang,
            r => Behaviour::Install(30 + i64::try_from(r % 271).unwrap_or(0)),
        },
        |_| 0,
    );
    let spec = FirmwareRolloutSpec {
        selector: Default::default(),
        firmware: PIN.into(),
        strategy: bench_strategy(),
        paused: false,
        abort: false,
        rollback_on_abort: true,
    };
    let rss_before = twinflash_harness::status_kib(None, "VmHWM").unwrap_or(0);
    let mut waves: Vec<WaveStats> = (0..4).map(|_| WaveStats::default()).collect();
    let mut status = None;
    let t0 = fleet.now;
    let wall = Instant::now();
    let mut reconciles = 0u32;
    let mut max_status_bytes = 0usize;
    while reconciles < 20_000 {
        let devices = fleet.visible();
        let start = Instant::now();
        let mut plan = plan(PlanInput {
            name: "bench",
            generation: 1,
            spec: &spec,
            status: status.as_ref(),
            devices: &devices,
            pin: Pin::Ready(PIN),
            conflict: None,
            now: fleet.now,
        });
        let took = start.elapsed();
        fleet.apply_plan(&mut plan);
        max_status_bytes =
            max_status_bytes.max(serde_json::to_vec(&plan.status).map_or(0, |v| v.len()));
        reconciles += 1;
        let w = usize::try_from(plan.status.current_wave.max(1) - 1).unwrap_or(0);
        if let Some(s) = waves.get_mut(w) {
            s.reconciles += 1;
            s.total += took;
            s.max = s.max.max(took);
            s.started += u32::try_from(plan.patches.len()).unwrap_or(u32::MAX);
            s.sim_secs += 15;
        }
        let phase = plan.status.phase;
        status = Some(plan.status);
        if phase.is_terminal() {
            break;
        }
        fleet.tick(15, PIN);
    }
    let rss_after = twinflash_harness::status_kib(None, "VmHWM").unwrap_or(0);
    let Some(st) = status else { return };
    println!(
        "| wave | devices started | reconciles | planner mean per reconcile | planner max | simulated wave duration |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, s) in waves.iter().enumerate() {
        let mean = s.total.checked_div(s.reconciles.max(1)).unwrap_or_default();
        println!(
            "| {} | {} | {} | {:.2} ms | {:.2} ms | {} s |",
            i + 1,
            s.started,
            s.reconciles,
            mean.as_secs_f64() * 1e3,
            s.max.as_secs_f64() * 1e3,
            s.sim_secs
        );
    }
    println!();
    println!(
        "| devices | waves | maxInFlight | phase | installed | failed | reconciles | planner total | wall | peak RSS (before -> after) | largest status | simulated time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let planner_total: Duration = waves.iter().map(|w| w.total).sum();
    println!(
        "| {n} | 4 | 500 | {} | {} | {} | {reconciles} | {:.1} ms | {:.1} ms | {:.1} MiB -> {:.1} MiB | {:.1} KiB | {} s |",
        st.phase.as_str(),
        st.installed,
        st.failed,
        planner_total.as_secs_f64() * 1e3,
        wall.elapsed().as_secs_f64() * 1e3,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        max_status_bytes as f64 / 1024.0,
        fleet.now - t0
    );
    let mut codes = std::collections::BTreeMap::<&str, u32>::new();
    for f in &st.failed_devices {
        *codes.entry(f.code.as_str()).or_default() += 1;
    }
    println!();
    println!("failed by code: {codes:?}");
    if st.phase != Phase::Completed {
        eprintln!(
            "note: the rollout ended {} ({})",
            st.phase.as_str(),
            st.message
        );
    }
}
