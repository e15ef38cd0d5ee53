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
    let reference = push(&registry, dir.path(), "fw/blinky:1.0.0", &fw, "1.0.0+b7", support::CHIP).await;
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let agent = Agent::start(AgentSpec {
        dir: dir.path(),
        mqtt_port: mqtt.port(),
        registry_hosts: vec![registry.host()],
        devices: 1,
        extra_device_toml: "",
        write_bytes_per_sec: None,
        rate_limit: None,
    });
    let dev = agent.devices[0].clone();
    cloud.wait_for(&dev.id, "firmware-state", "idle", T, &agent).await;

    cloud.delta(&dev.id, &reference, None).await;
    cloud.wait_for(&dev.id, "firmware-state", "installed", T, &agent).await;
    assert_eq!(cloud.actual(&dev.id, "firmware").as_deref(), Some(reference.as_str()));
    assert_eq!(cloud.actual(&dev.id, "firmware-version").as_deref(), Some("1.0.0_b7"));
    assert!(dev.holds(&fw), "flash.bin holds the payload at base-address - origin");
    // Unsent progress is replaced by newer progress (latest wins), so fast stages may merge; but the stages
    // never go backwards, the download shows progress, and installed comes last.
    let states = cloud.states(&dev.id);
    let rank = |s: &str| {
        ["idle", "pending", "downloading", "verifying", "flashing", "installed"]
            .iter()
            .position(|p| s.split(':').next() == Some(*p))
            .unwrap_or_else(|| panic!("unexpected state {s} in {states:?}"))
    };
    assert!(states.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])), "{states:?}");
    assert!(states.iter().any(|s| s.starts_with("downloading:")), "{states:?}");
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
    let reference = push(&registry, dir.path(), "fw/blinky:1.0.0", &fw, "1.0.0", support::CHIP).await;
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let agent = Agent::start(AgentSpec {
        dir: dir.path(),
        mqtt_port: mqtt.port(),
        registry_hosts: vec![registry.host()],
        devices: 1,
        extra_device_toml: "",
        write_bytes_per_sec: Some(200_000),
        rate_limit: None,
    });
    let dev = agent.devices[0].clone();
    cloud.wait_for(&dev.id, "firmware-state", "idle", T, &agent).await;
    for _ in 0..10 {
        cloud.delta(&dev.id, &reference, None).await;
    }
    cloud.wait_for(&dev.id, "firmware-state", "installed", T, &agent).await;
    // edgecore repeats the delta after the report too.
    for _ in 0..10 {
        cloud.delta(&dev.id, &reference, None).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dev.started(&reference), 1, "{:?}", dev.counters());
    assert_eq!(dev.completed(&reference), 1);
    assert_eq!(cloud.actual(&dev.id, "firmware-state").as_deref(), Some("installed"));
}
