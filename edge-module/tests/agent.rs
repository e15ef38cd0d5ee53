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
