//! Benchmarks of the agent (issue 5), run by scripts/bench.sh; prints one markdown table row per figure.
//!
//! `cargo build --release -p twinflash-edge --bins && cargo run --release -p twinflash-bench --example bench_agent -- [latency|rss|fleet|fleet-multi|twin] [args]`
//! Uses the same real services and fixtures as the integration tests (twinflash-testkit).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark driver

use std::time::{Duration, Instant};

use mqtt_schema::gojson::decode;
use mqtt_schema::{DeviceTwinUpdate, TopicLayout};
use rumqttc::{Event, MqttOptions, Packet, QoS};
use twinflash_harness::{Mosquitto, Registry};
use twinflash_testkit::{Agent, AgentSpec, CHIP, Cloud, image, init, push};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// B3: delta published to first report received, over `n` intents on loopback. Also the mosquitto round trip
/// alone (publish to receive, same client), measured in the same run as the anchor.
async fn latency(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let a = push(
        &registry,
        dir.path(),
        "fw/a:1.0.0",
        &image(1, 1024),
        "1.0.0",
        CHIP,
    )
    .await;
    let b = push(
        &registry,
        dir.path(),
        "fw/a:1.0.1",
        &image(2, 1024),
        "1.0.1",
        CHIP,
    )
    .await;
    let agent = Agent::start(AgentSpec {
        extra_device_toml: "allow_downgrade = true\n",
        ..AgentSpec::new(dir.path(), mqtt.port(), vec![registry.host()], 1)
    });
    let id = agent.devices[0].id.clone();
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    cloud
        .wait_for(
            &id,
            "firmware-state",
            "idle",
            Duration::from_secs(20),
            &agent,
        )
        .await;

    let mut opts = MqttOptions::new("bench", "127.0.0.1", mqtt.port());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = twinflash_mqtt::client(opts);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, String, Vec<u8>)>();
    tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let _ = tx.send((Instant::now(), p.topic.clone(), p.payload.to_vec()));
            }
        }
    });
    let report_topic = format!("$hw/events/device/{id}/twin/update");
    client
        .subscribe(&report_topic, QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe("bench/echo", QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    while rx.try_recv().is_ok() {}

    // Anchor: a QoS 1 round trip through mosquitto.
    let mut rtt = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        client
            .publish("bench/echo", QoS::AtLeastOnce, false, b"x".to_vec())
            .await
            .unwrap();
        loop {
            let (t, topic, _) = rx.recv().await.unwrap();
            if topic == "bench/echo" {
                rtt.push((t - t0).as_secs_f64() * 1000.0);
                break;
            }
        }
    }

    let mut lat = Vec::new();
    for i in 0..n {
        let wanted = if i % 2 == 0 { &b } else { &a };
        let t0 = Instant::now();
        cloud.delta(&id, wanted, None).await;
        let mut first = None;
        loop {
            let (t, topic, payload) = rx.recv().await.unwrap();
            if topic != report_topic {
                continue;
            }
            first.get_or_insert(t);
            let Ok(upd) = decode::<DeviceTwinUpdate>(&payload) else {
                continue;
            };
            let twins = upd.twin.unwrap_or_default();
            let state = twins
                .get("firmware-state")
                .cloned()
                .flatten()
                .and_then(|t| t.actual)
                .and_then(|a| a.value);
            let fw = twins
                .get("firmware")
                .cloned()
                .flatten()
                .and_then(|t| t.actual)
                .and_then(|a| a.value);
            if state.as_deref() == Some("installed") && fw.as_deref() == Some(wanted.as_str()) {
                break;
            }
        }
        lat.push((first.unwrap() - t0).as_secs_f64() * 1000.0);
    }
    rtt.sort_by(f64::total_cmp);
    lat.sort_by(f64::total_cmp);
    println!(
        "| B3 delta published to first report, {n} intents (p50 / p99) | p99 < 10 ms | {:.2} ms / {:.2} ms | mosquitto QoS 1 round trip {:.2} ms / {:.2} ms (x{:.1} at p99) |",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&rtt, 0.5),
        percentile(&rtt, 0.99),
        percentile(&lat, 0.99) / percentile(&rtt, 0.99).max(1e-6)
    );
    let _ = TopicLayout::Namespaced;
}

/// Resident memory idle, and peak during a fetch of `mib` MiB.
async fn rss(mib: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let size = mib * 1024 * 1024;
    let fw = image(3, size);
    let reference = push(&registry, dir.path(), "fw/big:1.0.0", &fw, "1.0.0", CHIP).await;
    drop(fw);
    let agent = Agent::start(AgentSpec {
        registry_extra: format!("max_artifact_bytes = {}\n", size * 2),
        // A device the image fits, so that the flash runs to the end.
        flash_size: size as u64,
        ..AgentSpec::new(dir.path(), mqtt.port(), vec![registry.host()], 1)
    });
    let id = agent.devices[0].id.clone();
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    cloud
        .wait_for(
            &id,
            "firmware-state",
            "idle",
            Duration::from_secs(60),
            &agent,
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = agent.pid().unwrap();
    let idle = twinflash_harness::status_kib(Some(pid), "VmRSS").unwrap_or(0);
    let t0 = Instant::now();
    cloud.delta(&id, &reference, None).await;
    // Sampled while the agent still reports the fetch; VmHWM at its end includes the start of the flash and is shown
    // beside. The flash is sampled on its own below.
    let mut peak = 0;
    loop {
        let rss = twinflash_harness::status_kib(Some(pid), "VmRSS").unwrap_or(0);
        let states = cloud.states(&id);
        if states
            .iter()
            .any(|s| s == "verifying" || s.starts_with("flashing") || s == "installed")
        {
            break;
        }
        peak = peak.max(rss);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let hwm = twinflash_harness::status_kib(Some(pid), "VmHWM").unwrap_or(0);
    // Then through the flash (a BIN, which the simulated backend reads in place since issue 24) until installed.
    let t1 = Instant::now();
    let mut flash_peak = 0;
    loop {
        let states = cloud.states(&id);
        if states.iter().any(|s| s == "installed") {
            break;
        }
        assert!(
            !states.iter().any(|s| s.starts_with("failed")),
            "the flash failed: {states:?}"
        );
        flash_peak = flash_peak.max(twinflash_harness::status_kib(Some(pid), "VmRSS").unwrap_or(0));
        assert!(
            t1.elapsed() < Duration::from_secs(900),
            "no installed after 900 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let flash_secs = t1.elapsed().as_secs_f64();
    let flash_hwm = twinflash_harness::status_kib(Some(pid), "VmHWM").unwrap_or(0);
    println!(
        "| Agent resident memory, idle (1 device) | <= 10 MiB | {:.1} MiB | - |",
        idle as f64 / 1024.0
    );
    println!(
        "| Agent resident memory during a {mib} MiB fetch (peak sampled every 5 ms while the fetch is reported; VmHWM incl. the start of the flash) | <= 40 MiB | {:.1} MiB (VmHWM {:.1} MiB) | artifact {mib} MiB fetched and verified in {secs:.1} s ({:.0} MB/s) |",
        peak as f64 / 1024.0,
        hwm as f64 / 1024.0,
        size as f64 / 1e6 / secs
    );
    println!(
        "| Agent resident memory while flashing the {mib} MiB BIN into a simulated device (peak VmRSS sampled every 5 ms from the end of the fetch to installed) | <= 32 MiB (issue 24) | {:.1} MiB (VmHWM of the whole run, fetch included: {:.1} MiB) | flashed and verified in {flash_secs:.1} s |",
        flash_peak as f64 / 1024.0,
        flash_hwm as f64 / 1024.0,
    );
}

/// `agents` agent processes with `per_agent` devices each on one broker, one intent each: time until all installed.
async fn fleet_multi(agents: usize, per_agent: usize, kib: usize) {
    let root = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let reference = push(
        &registry,
        root.path(),
        "fw/fleet:2.0.0",
        &image(5, kib * 1024),
        "2.0.0",
        CHIP,
    )
    .await;
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let mut running = Vec::new();
    for a in 0..agents {
        let dir = root.path().join(format!("agent-{a}"));
        std::fs::create_dir_all(&dir).unwrap();
        running.push(Agent::start(AgentSpec {
            flash_size: ((kib * 1024) as u64).next_power_of_two().max(64 * 1024),
            namespace: format!("fleet-{a}"),
            ..AgentSpec::new(&dir, mqtt.port(), vec![registry.host()], per_agent)
        }));
    }
    let idle = Duration::from_secs(120);
    for agent in &running {
        for d in &agent.devices {
            cloud
                .wait_for(&d.id, "firmware-state", "idle", idle, agent)
                .await;
        }
    }
    let t0 = Instant::now();
    for agent in &running {
        for d in &agent.devices {
            cloud.delta(&d.id, &reference, None).await;
        }
    }
    for agent in &running {
        for d in &agent.devices {
            cloud
                .wait_for(
                    &d.id,
                    "firmware-state",
                    "installed",
                    Duration::from_secs(600),
                    agent,
                )
                .await;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let n = agents * per_agent;
    let across = if agents == 1 {
        "on one agent".to_owned()
    } else {
        format!("across {agents} agent processes on one broker")
    };
    println!(
        "| {n} simulated devices {across}, one {kib} KiB intent each, until all report installed | - | {secs:.2} s | {:.0} devices/s; each agent downloads once |",
        n as f64 / secs
    );
}

/// CPU seconds (user + system) the process `pid` used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name in parentheses: utime is the 14th field, stime the 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

/// Issue 13: against the edgecore stand-in, `installs` small installs (24 KiB, flashed at 64 KiB/s): messages the
/// agent published and messages on the device's topics per install, and the edgecore-acknowledged report latency
/// (a report seen on the broker to edgecore's `update/result` with its event id, seen on the broker). Then the cost
/// of anti-entropy for `devices` converged devices on one agent over three periods of `period` seconds.
async fn twin(installs: usize, devices: usize, period: u64) {
    use twinflash_testkit::{Direction, Edgecore, EdgecoreOptions, FIRMWARE_TWINS as TWINS};
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let edgecore = Edgecore::start(EdgecoreOptions::new(
        mqtt.port(),
        dir.path().join("edgecore.json"),
    ))
    .await;
    let refs = [
        push(
            &registry,
            dir.path(),
            "fw/t:1.0.0",
            &image(1, 24 * 1024),
            "1.0.0",
            CHIP,
        )
        .await,
        push(
            &registry,
            dir.path(),
            "fw/t:1.0.1",
            &image(2, 24 * 1024),
            "1.0.1",
            CHIP,
        )
        .await,
    ];
    let one = dir.path().join("one");
    std::fs::create_dir_all(&one).unwrap();
    let agent = Agent::start(AgentSpec {
        extra_device_toml: "allow_downgrade = true\n",
        write_bytes_per_sec: Some(64 * 1024),
        ..AgentSpec::new(&one, mqtt.port(), vec![registry.host()], 1)
    });
    let id = agent.devices[0].id.clone();
    edgecore.add_device(&id, &TWINS);
    edgecore
        .wait_actual(&id, "firmware-state", "idle", Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A watcher on the broker, for the acknowledgement latency.
    let mut opts = MqttOptions::new("bench-watch", "127.0.0.1", mqtt.port());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = twinflash_mqtt::client(opts);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(
        Vec::<(Instant, String, String)>::new(),
    ));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let id = decode::<mqtt_schema::ResultMessage>(&p.payload)
                    .map(|r| r.base.event_id)
                    .unwrap_or_default();
                s.lock()
                    .unwrap()
                    .push((Instant::now(), p.topic.clone(), id));
            }
        }
    });
    for f in [
        format!("$hw/events/device/{id}/twin/update"),
        format!("$hw/events/device/{id}/twin/update/result"),
    ] {
        client.subscribe(f, QoS::AtLeastOnce).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let prefix = format!("$hw/events/device/{id}/");
    let (mut by_agent, mut total) = (Vec::new(), Vec::new());
    for i in 0..installs {
        let wanted = &refs[(i + 1) % 2];
        let start = edgecore.log().len();
        edgecore.set_expected(&id, "firmware", wanted).await;
        edgecore
            .wait_actual(&id, "firmware", wanted, Duration::from_secs(60))
            .await;
        edgecore
            .wait_actual(&id, "firmware-state", "installed", Duration::from_secs(60))
            .await;
        // The confirmation and the last delta-less results settle within a second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let log = edgecore.log();
        let on_device: Vec<_> = log[start..]
            .iter()
            .filter(|m| m.topic.starts_with(&prefix))
            .filter(|m| matches!(m.direction, Direction::Received | Direction::Sent))
            .collect();
        let received = on_device
            .iter()
            .filter(|m| m.direction == Direction::Received)
            .count();
        by_agent.push((received - 1) as f64); // the intent itself came from the set_expected client
        total.push(on_device.len() as f64);
    }
    let seen = seen.lock().unwrap().clone();
    let mut ack = Vec::new();
    for (t, topic, eid) in &seen {
        if !topic.ends_with("/twin/update") || !eid.starts_with("twinflash-") {
            continue;
        }
        if let Some((t2, _, _)) = seen.iter().find(|(t2, topic2, eid2)| {
            t2 >= t && topic2.ends_with("/twin/update/result") && eid2 == eid
        }) {
            ack.push((*t2 - *t).as_secs_f64() * 1000.0);
        }
    }
    by_agent.sort_by(f64::total_cmp);
    total.sort_by(f64::total_cmp);
    ack.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "| Messages per small install (24 KiB), by the agent (mean / max of {installs}) | <= 15 | {:.1} / {:.0} | - |",
        mean(&by_agent),
        by_agent.last().copied().unwrap_or(0.0)
    );
    println!(
        "| Messages per small install on the device's topics, edgecore's results, documents and deltas included (mean / max) | <= 60 | {:.1} / {:.0} | - |",
        mean(&total),
        total.last().copied().unwrap_or(0.0)
    );
    if !ack.is_empty() {
        println!(
            "| edgecore-acknowledged report latency, report to its update/result on the broker, {} reports (p50 / p99) | - | {:.2} ms / {:.2} ms | stand-in edgecore in process |",
            ack.len(),
            percentile(&ack, 0.5),
            percentile(&ack, 0.99)
        );
    }
    drop(agent);

    // Anti-entropy at `devices` converged devices.
    let many = dir.path().join("many");
    std::fs::create_dir_all(&many).unwrap();
    let fleet = Agent::start(AgentSpec {
        namespace: "ae".into(),
        extra_sections: format!("[twin]\nanti_entropy_secs = {period}\n"),
        ..AgentSpec::new(&many, mqtt.port(), vec![registry.host()], devices)
    });
    for d in &fleet.devices {
        edgecore.add_device(&d.id, &TWINS);
    }
    for d in &fleet.devices {
        edgecore
            .wait_actual(&d.id, "firmware-state", "idle", Duration::from_secs(120))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(period + 2)).await;
    let pid = fleet.pid().unwrap();
    let (c0, cpu0, t0) = (edgecore.counters(), cpu_secs(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(period * 3)).await;
    let (c1, cpu1, secs) = (
        edgecore.counters(),
        cpu_secs(pid),
        t0.elapsed().as_secs_f64(),
    );
    let periods = secs / period as f64;
    println!(
        "| Anti-entropy, {devices} converged devices on one agent, per {period} s period (twin/get sent, edgecore writes, agent CPU) | 1 get per device, 0 writes | {:.0} gets, {:.0} writes, {:.2} CPU s | measured over {secs:.0} s; the default period is 30 s |",
        (c1.gets - c0.gets) as f64 / periods,
        (c1.updates - c0.updates) as f64 / periods,
        (cpu1 - cpu0) / periods
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    match args.first().map(String::as_str) {
        Some("latency") => latency(num(1, 200)).await,
        Some("rss") => rss(num(1, 512)).await,
        Some("fleet") => fleet_multi(1, num(1, 100), num(2, 1024)).await,
        Some("fleet-multi") => fleet_multi(num(1, 10), num(2, 100), num(3, 64)).await,
        Some("twin") => twin(num(1, 20), num(2, 100), num(3, 10) as u64).await,
        _ => eprintln!(
            "usage: bench_agent latency [N] | rss [MiB] | fleet [devices] [KiB] | fleet-multi [agents] [devices each] [KiB] | twin [installs] [devices] [period s]"
        ),
    }
}
