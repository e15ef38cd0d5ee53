//! The agent end to end: real mosquitto, real registry, the real binary, simulated devices.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::time::Duration;

use support::{Agent, AgentSpec, Cloud, image, init, push};
use twinflash_harness::{Mosquitto, Registry};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_as_edgecore_sends_it_installs_and_reports_back() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let fw = image(1, 20_000);
    let reference = push(
        &registry,
        dir.path(),
        "fw/blinky:1.0.0",
        &fw,
        "1.0.0+b7",
        support::CHIP,
    )
    .await;
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let agent = Agent::start(AgentSpec::new(
        dir.path(),
        mqtt.port(),
        vec![registry.host()],
        1,
    ));
    let dev = agent.devices[0].clone();
    cloud
        .wait_for(&dev.id, "firmware-state", "idle", T, &agent)
        .await;

    cloud.delta(&dev.id, &reference, None).await;
    cloud
        .wait_for(&dev.id, "firmware-state", "installed", T, &agent)
        .await;
    assert_eq!(
        cloud.actual(&dev.id, "firmware").as_deref(),
        Some(reference.as_str())
    );
    assert_eq!(
        cloud.actual(&dev.id, "firmware-version").as_deref(),
        Some("1.0.0_b7")
    );
    assert!(
        dev.holds(&fw),
        "flash.bin holds the payload at base-address - origin"
    );
    // Unsent progress is replaced by newer progress (latest wins), so fast stages may merge; but the stages
    // never go backwards, the download shows progress, and installed comes last.
    let states = cloud.states(&dev.id);
    let rank = |s: &str| {
        [
            "idle",
            "pending",
            "downloading",
            "verifying",
            "flashing",
            "installed",
        ]
        .iter()
        .position(|p| s.split(':').next() == Some(*p))
        .unwrap_or_else(|| panic!("unexpected state {s} in {states:?}"))
    };
    assert!(
        states.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
        "{states:?}"
    );
    assert!(
        states.iter().any(|s| s.starts_with("downloading:")),
        "{states:?}"
    );
    assert_eq!(states.last().map(String::as_str), Some("installed"));
    assert_eq!(dev.completed(&reference), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_delta_ten_times_flashes_once() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let fw = image(2, 8_000);
    let reference = push(
        &registry,
        dir.path(),
        "fw/blinky:1.0.0",
        &fw,
        "1.0.0",
        support::CHIP,
    )
    .await;
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let agent = Agent::start(AgentSpec {
        write_bytes_per_sec: Some(200_000),
        ..AgentSpec::new(dir.path(), mqtt.port(), vec![registry.host()], 1)
    });
    let dev = agent.devices[0].clone();
    cloud
        .wait_for(&dev.id, "firmware-state", "idle", T, &agent)
        .await;
    for _ in 0..10 {
        cloud.delta(&dev.id, &reference, None).await;
    }
    cloud
        .wait_for(&dev.id, "firmware-state", "installed", T, &agent)
        .await;
    // edgecore repeats the delta after the report too.
    for _ in 0..10 {
        cloud.delta(&dev.id, &reference, None).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dev.started(&reference), 1, "{:?}", dev.counters());
    assert_eq!(dev.completed(&reference), 1);
    assert_eq!(
        cloud.actual(&dev.id, "firmware-state").as_deref(),
        Some("installed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_intent_during_a_download_cancels_it_and_installs_the_new_one() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let old = push(
        &registry,
        dir.path(),
        "fw/a:1.0.0",
        &image(3, 200_000),
        "1.0.0",
        support::CHIP,
    )
    .await;
    let new_fw = image(4, 20_000);
    let new = push(
        &registry,
        dir.path(),
        "fw/a:1.1.0",
        &new_fw,
        "1.1.0",
        support::CHIP,
    )
    .await;
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let agent = Agent::start(AgentSpec {
        rate_limit: Some(100_000), // 200 kB takes about 2 s
        ..AgentSpec::new(dir.path(), mqtt.port(), vec![registry.host()], 1)
    });
    let dev = agent.devices[0].clone();
    cloud
        .wait_for(&dev.id, "firmware-state", "idle", T, &agent)
        .await;
    cloud.delta(&dev.id, &old, None).await;
    cloud
        .wait_state_prefix(&dev.id, "downloading:", T, &agent)
        .await;
    cloud.delta(&dev.id, &new, None).await;
    cloud.wait_for(&dev.id, "firmware", &new, T, &agent).await;
    assert_eq!(
        cloud.actual(&dev.id, "firmware-state").as_deref(),
        Some("installed")
    );
    assert_eq!(
        dev.started(&old),
        0,
        "the old download was cancelled before any flash"
    );
    assert_eq!(dev.completed(&new), 1);
    assert!(dev.holds(&new_fw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_intent_during_a_flash_waits_for_it_then_installs() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let old = push(
        &registry,
        dir.path(),
        "fw/a:1.0.0",
        &image(5, 60_000),
        "1.0.0",
        support::CHIP,
    )
    .await;
    let new_fw = image(6, 10_000);
    let new = push(
        &registry,
        dir.path(),
        "fw/a:1.1.0",
        &new_fw,
        "1.1.0",
        support::CHIP,
    )
    .await;
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let agent = Agent::start(AgentSpec {
        write_bytes_per_sec: Some(40_000), // the first flash takes about 1.5 s
        ..AgentSpec::new(dir.path(), mqtt.port(), vec![registry.host()], 1)
    });
    let dev = agent.devices[0].clone();
    cloud
        .wait_for(&dev.id, "firmware-state", "idle", T, &agent)
        .await;
    cloud.delta(&dev.id, &old, None).await;
    cloud
        .wait_state_prefix(&dev.id, "flashing:", T, &agent)
        .await;
    cloud.delta(&dev.id, &new, None).await;
    cloud.wait_for(&dev.id, "firmware", &new, T, &agent).await;
    assert_eq!(dev.started(&old), 1);
    assert_eq!(
        dev.completed(&old),
        1,
        "the running flash was not interrupted"
    );
    assert_eq!(dev.completed(&new), 1);
    assert!(dev.holds(&new_fw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_down_is_waiting_then_success_when_it_is_back() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let mut registry = Registry::start().unwrap();
    let fw = image(7, 10_000);
    let reference = push(
        &registry,
        dir.path(),
        "fw/a:1.0.0",
        &fw,
        "1.0.0",
        support::CHIP,
    )
    .await;
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let agent = Agent::start(AgentSpec::new(
        dir.path(),
        mqtt.port(),
        vec![registry.host()],
        1,
    ));
    let dev = agent.devices[0].clone();
    cloud
        .wait_for(&dev.id, "firmware-state", "idle", T, &agent)
        .await;
    registry.stop();
    cloud.delta(&dev.id, &reference, None).await;
    cloud
        .wait_for(
            &dev.id,
            "firmware-state",
            "waiting:registry-unreachable",
            T,
            &agent,
        )
        .await;
    registry.start_again().unwrap();
    cloud
        .wait_for(&dev.id, "firmware-state", "installed", T, &agent)
        .await;
    assert!(dev.holds(&fw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_probe_waits_without_blocking_other_devices() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let fw = image(13, 8_000);
    let reference = push(
        &registry,
        dir.path(),
        "fw/a:1.0.0",
        &fw,
        "1.0.0",
        support::CHIP,
    )
    .await;
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let agent = Agent::start(AgentSpec::new(
        dir.path(),
        mqtt.port(),
        vec![registry.host()],
        2,
    ));
    let (busy, free) = (agent.devices[0].clone(), agent.devices[1].clone());
    for d in [&busy, &free] {
        cloud
            .wait_for(&d.id, "firmware-state", "idle", T, &agent)
            .await;
    }
    busy.set_faults(r#"{"busy": true}"#);
    cloud.delta(&busy.id, &reference, None).await;
    cloud
        .wait_for(&busy.id, "firmware-state", "waiting:probe-busy", T, &agent)
        .await;
    cloud.delta(&free.id, &reference, None).await;
    cloud
        .wait_for(&free.id, "firmware-state", "installed", T, &agent)
        .await;
    assert_eq!(
        cloud.actual(&busy.id, "firmware-state").as_deref(),
        Some("waiting:probe-busy")
    );
    busy.set_faults("{}");
    cloud
        .wait_for(&busy.id, "firmware-state", "installed", T, &agent)
        .await;
    assert!(busy.holds(&fw) && free.holds(&fw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_mid_flash_is_retried_and_a_bad_verify_fails_for_good() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let fw = image(14, 30_000);
    let reference = push(
        &registry,
        dir.path(),
        "fw/a:1.0.0",
        &fw,
        "1.0.0",
        support::CHIP,
    )
    .await;
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let agent = Agent::start(AgentSpec::new(
        dir.path(),
        mqtt.port(),
        vec![registry.host()],
        2,
    ));
    let (cut, weak) = (agent.devices[0].clone(), agent.devices[1].clone());
    for d in [&cut, &weak] {
        cloud
            .wait_for(&d.id, "firmware-state", "idle", T, &agent)
            .await;
    }
    cut.set_faults(r#"{"power_cut_at_byte": 10000}"#);
    weak.set_faults(r#"{"verify_error": true}"#);
    cloud.delta(&cut.id, &reference, None).await;
    cloud.delta(&weak.id, &reference, None).await;
    cloud
        .wait_for(&cut.id, "firmware-state", "installed", T, &agent)
        .await;
    assert!(
        cut.holds(&fw),
        "flashing again after the power cut restored a verified image"
    );
    assert_eq!(cut.started(&reference), 2);
    assert_eq!(cut.completed(&reference), 1);
    cloud
        .wait_for(
            &weak.id,
            "firmware-state",
            "failed:verify-failed",
            T,
            &agent,
        )
        .await;
    assert_eq!(weak.started(&reference), 3, "flash_attempts = 3");
    assert_eq!(weak.completed(&reference), 0);
    assert_eq!(
        cloud.actual(&weak.id, "firmware"),
        None,
        "nothing unverified is reported installed"
    );
}
