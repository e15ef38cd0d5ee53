//! The chaos soak (issue 8): an agent with ~20 simulated devices takes repeated intents while a seeded, printed,
//! reproducible fault schedule cuts the broker and registry links through the fault proxy, restarts mosquitto with
//! and without its sessions, SIGKILLs the agent at random points (mid-flash included) and cuts device power.
//!
//! CI size by default; `scripts/chaos.sh` runs it longer. Knobs: `TWINFLASH_CHAOS_SEED`, `TWINFLASH_CHAOS_CYCLES`
//! (default 20), `TWINFLASH_CHAOS_DEVICES` (default 20).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // tests: a panic is a failed test

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use support::{Agent, AgentSpec, Cloud, image, init, push};
use twinflash_harness::{Fault, FaultProxy, Mosquitto, Registry};

const IMAGE: usize = 1024 * 1024;
const CHECKPOINT: u64 = 256 * 1024;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FaultKind {
    CutBrokerLink,
    CutRegistryLink,
    StallRegistry,
    RestartBrokerKeepSessions,
    RestartBrokerLoseSessions,
    KillAgent,
    PowerCut,
}

const KINDS: [FaultKind; 7] = [
    FaultKind::CutBrokerLink,
    FaultKind::CutRegistryLink,
    FaultKind::StallRegistry,
    FaultKind::RestartBrokerKeepSessions,
    FaultKind::RestartBrokerLoseSessions,
    FaultKind::KillAgent,
    FaultKind::PowerCut,
];

/// One planned fault: what, and how long after the intents were published.
#[derive(Debug, Clone, Copy)]
struct Planned {
    kind: FaultKind,
    after: Duration,
    device: usize,
}

fn schedule(seed: u64, cycles: usize, devices: usize) -> Vec<Vec<Planned>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..cycles)
        .map(|_| {
            let n = rng.random_range(1..=2);
            let mut faults: Vec<Planned> = (0..n)
                .map(|_| Planned {
                    kind: KINDS[rng.random_range(0..KINDS.len())],
                    after: Duration::from_millis(rng.random_range(0..1500)),
                    device: rng.random_range(0..devices),
                })
                .collect();
            faults.sort_by_key(|f| f.after);
            faults
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_every_intent_lands_exactly_once() {
    init();
    let seed = env("TWINFLASH_CHAOS_SEED", rand::random::<u32>() as u64);
    let cycles = env("TWINFLASH_CHAOS_CYCLES", 20) as usize;
    let n_dev = env("TWINFLASH_CHAOS_DEVICES", 20) as usize;
    println!(
        "chaos soak: seed {seed}, {cycles} cycles, {n_dev} devices (rerun: TWINFLASH_CHAOS_SEED={seed})"
    );
    let plan = schedule(seed, cycles, n_dev);
    for (i, c) in plan.iter().enumerate() {
        println!(
            "  cycle {i:2}: {:?}",
            c.iter()
                .map(|f| (f.kind, f.after.as_millis(), f.device))
                .collect::<Vec<_>>()
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let mut mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let mqtt_link = FaultProxy::start(mqtt.addr()).unwrap();
    let reg_link = FaultProxy::start(registry.addr()).unwrap();
    reg_link.set(Fault::Bandwidth {
        bytes_per_sec: 8 << 20,
    });
    let reg_host = format!("127.0.0.1:{}", reg_link.port());

    // One distinct firmware per cycle, so each intent is identifiable in the device's counters.
    let mut refs = Vec::new();
    let mut images = Vec::new();
    for c in 0..cycles {
        let fw = image(c as u8, IMAGE);
        let pushed = push(
            &registry,
            dir.path(),
            &format!("fw/soak:1.0.{c}"),
            &fw,
            &format!("1.0.{c}"),
            support::CHIP,
        )
        .await;
        refs.push(pushed.replace(&registry.host(), &reg_host));
        images.push(fw);
    }
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let mut agent = Agent::start(AgentSpec {
        write_bytes_per_sec: Some(4 << 20),
        flash_size: 2 * IMAGE as u64,
        registry_extra: format!("checkpoint_bytes = {CHECKPOINT}\n"),
        mqtt_extra: "reconnect_max_secs = 1\n".into(),
        ..AgentSpec::new(dir.path(), mqtt_link.port(), vec![reg_host.clone()], n_dev)
    });
    let ids: Vec<String> = agent.devices.iter().map(|d| d.id.clone()).collect();
    let limit = Duration::from_secs(90);
    for id in &ids {
        cloud
            .wait_for(id, "firmware-state", "idle", limit, &agent)
            .await;
    }

    let mut counts: BTreeMap<FaultKind, usize> = BTreeMap::new();
    // (device, cycle) pairs where a second flash of the same intent is allowed: a power cut or a crash mid-flash.
    let mut allowed_redo = vec![vec![false; cycles]; n_dev];
    let started = Instant::now();
    for (c, faults) in plan.iter().enumerate() {
        for f in faults.iter().filter(|f| f.kind == FaultKind::PowerCut) {
            agent.devices[f.device]
                .set_faults(&format!("{{\"power_cut_at_byte\": {}}}", IMAGE / 2));
            allowed_redo[f.device][c] = true;
        }
        let t0 = Instant::now();
        for id in &ids {
            cloud
                .delta(id, &refs[c], if c > 0 { Some(&refs[c - 1]) } else { None })
                .await;
        }
        for f in faults {
            *counts.entry(f.kind).or_default() += 1;
            if let Some(wait) = f.after.checked_sub(t0.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            match f.kind {
                FaultKind::PowerCut => {}
                FaultKind::CutBrokerLink => mqtt_link.cut_all(),
                FaultKind::CutRegistryLink => reg_link.cut_all(),
                FaultKind::StallRegistry => {
                    reg_link.set(Fault::Stall);
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    reg_link.set(Fault::Bandwidth {
                        bytes_per_sec: 8 << 20,
                    });
                }
                FaultKind::RestartBrokerKeepSessions | FaultKind::RestartBrokerLoseSessions => {
                    // Hold the agent away until the observer (the cloud side) is subscribed again, so what the agent
                    // reports after its reconnect has someone to receive it.
                    mqtt_link.set(Fault::Refuse);
                    let before = cloud.subacks();
                    mqtt.restart(f.kind == FaultKind::RestartBrokerKeepSessions)
                        .unwrap();
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while cloud.subacks() < before + 2 && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    mqtt_link.set(Fault::Pass);
                    if std::env::var_os("TWINFLASH_CHAOS_DEBUG").is_some() {
                        println!(
                            "    restart: observer back after {:.1} s (subacks {} -> {})",
                            t0.elapsed().as_secs_f64(),
                            before,
                            cloud.subacks()
                        );
                    }
                }
                FaultKind::KillAgent => {
                    agent.kill9();
                    for row in &mut allowed_redo {
                        row[c] = true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    agent.spawn();
                }
            }
        }
        for id in &ids {
            cloud
                .wait_for(id, "firmware", &refs[c], limit, &agent)
                .await;
            cloud
                .wait_for(id, "firmware-state", "installed", limit, &agent)
                .await;
        }
        println!(
            "  cycle {c:2} converged in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
    }

    // Every device holds exactly the last payload; no intent was flashed twice except after a power cut or a crash.
    let last = cycles - 1;
    let mut duplicates = 0;
    for (d, dev) in agent.devices.iter().enumerate() {
        assert!(
            dev.holds(&images[last]),
            "{} does not hold the last firmware",
            dev.id
        );
        for (c, reference) in refs.iter().enumerate() {
            let n = dev.started(reference);
            let done = dev.completed(reference);
            // The simulated device counts a completion in a write after the one that records the verified image,
            // so a SIGKILL between the two leaves an installed image with no count: only crash cycles may show that.
            let done_ok = if allowed_redo[d][c] {
                done <= n
            } else {
                done == 1
            };
            assert!(
                n >= 1 && done_ok,
                "{} cycle {c}: started {n}, completed {done}",
                dev.id
            );
            if n > 1 {
                duplicates += n - 1;
                assert!(
                    allowed_redo[d][c],
                    "{} flashed cycle {c}'s firmware {n} times without a power cut or crash",
                    dev.id
                );
            }
        }
    }
    let needed = (cycles * IMAGE) as u64;
    let down = reg_link.bytes_down();
    let ratio = down as f64 / needed as f64;
    println!(
        "chaos summary: seed {seed}; {cycles} cycles x {n_dev} devices in {:.0} s; faults {:?}; bytes downloaded {down} for {needed} needed (x{ratio:.3}, {} re-downloaded); duplicate flashes {duplicates} (all after a power cut or crash); lost reports 0",
        started.elapsed().as_secs_f64(),
        counts,
        down.saturating_sub(needed)
    );
    assert!(
        ratio <= 1.05,
        "bytes downloaded x{ratio:.3} of what was needed (seed {seed})"
    );
}
