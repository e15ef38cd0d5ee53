//! Bad input never stops the agent: each is logged once, reported through the device's firmware-state where a
//! device is known, and nothing else is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::time::Duration;

use mqtt_schema::DeviceTopicKind;
use support::{Agent, AgentSpec, Cloud, image, init, push};
use twinflash_harness::{Mosquitto, Registry};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_code_and_the_agent_keeps_working() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let good_fw = image(20, 10_000);
    let good = push(
        &registry,
        dir.path(),
        "fw/a:1.0.0",
        &good_fw,
        "1.0.0",
        support::CHIP,
    )
    .await;
    let other_chip = push(
        &registry,
        dir.path(),
        "fw/nrf:1.0.0",
        &image(21, 10_000),
        "1.0.0",
        "nRF52840_xxAA",
    )
    .await;
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let agent = Agent::start(AgentSpec::new(
        dir.path(),
        mqtt.port(),
        vec![registry.host()],
        5,
    ));
    let ids: Vec<String> = agent.devices.iter().map(|d| d.id.clone()).collect();
    for id in &ids {
        cloud
            .wait_for(id, "firmware-state", "idle", T, &agent)
            .await;
    }

    // A malformed payload (not JSON; then `value` as a number, which Go's decoder rejects).
    cloud
        .raw(
            &ids[0],
            DeviceTopicKind::TwinUpdateDelta,
            b"{not json".to_vec(),
        )
        .await;
    cloud
        .wait_for(
            &ids[0],
            "firmware-state",
            "rejected:invalid-message",
            T,
            &agent,
        )
        .await;
    let typed = br#"{"event_id":"x","timestamp":1,"twin":{},"delta":{"firmware":5}}"#.to_vec();
    cloud
        .raw(&ids[0], DeviceTopicKind::TwinUpdateDelta, typed)
        .await;
    // A delta for a device this agent does not manage.
    cloud.delta("default/ghost", &good, None).await;
    // A value that fails KubeEdge's twin value check.
    cloud.delta(&ids[1], "fw blinky:1.0.0 latest", None).await;
    cloud
        .wait_for(
            &ids[1],
            "firmware-state",
            "rejected:invalid-reference",
            T,
            &agent,
        )
        .await;
    // A reference without a digest.
    let tag_only = good.split('@').next().unwrap().to_owned();
    cloud.delta(&ids[2], &tag_only, None).await;
    cloud
        .wait_for(
            &ids[2],
            "firmware-state",
            "rejected:invalid-reference",
            T,
            &agent,
        )
        .await;
    // A wrong artifact: built for another chip.
    cloud.delta(&ids[3], &other_chip, None).await;
    cloud
        .wait_for(
            &ids[3],
            "firmware-state",
            "rejected:chip-mismatch",
            T,
            &agent,
        )
        .await;
    // A digest the registry does not have.
    let unknown = format!("{}/fw/a@sha256:{}", registry.host(), "0".repeat(64));
    cloud.delta(&ids[4], &unknown, None).await;
    cloud
        .wait_for(&ids[4], "firmware-state", "failed:not-found", T, &agent)
        .await;

    // Nothing else was lost: a good intent on the device that saw garbage installs.
    cloud.delta(&ids[0], &good, None).await;
    cloud
        .wait_for(&ids[0], "firmware-state", "installed", T, &agent)
        .await;
    assert!(agent.devices[0].holds(&good_fw));
    // Each problem was logged once, however often edgecore repeats it.
    for _ in 0..5 {
        cloud.delta(&ids[1], "fw blinky:1.0.0 latest", None).await;
        cloud.delta("default/ghost", &good, None).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = agent.log();
    assert_eq!(
        log.matches("does not manage").count(),
        0,
        "no subscription for unknown devices:\n{log}"
    );
    assert_eq!(
        log.matches("intent is not a digest-pinned reference")
            .count(),
        2,
        "one line per bad intent, not per repeat:\n{log}"
    );
    assert_eq!(
        cloud.actual(&ids[1], "firmware-state").as_deref(),
        Some("rejected:invalid-reference")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_version_is_refused_unless_the_device_allows_downgrades() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let v11 = push(
        &registry,
        dir.path(),
        "fw/a:1.1.0",
        &image(22, 5_000),
        "1.1.0",
        support::CHIP,
    )
    .await;
    let v10_fw = image(23, 5_000);
    let v10 = push(
        &registry,
        dir.path(),
        "fw/a:1.0.0",
        &v10_fw,
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
    let id = agent.devices[0].id.clone();
    cloud
        .wait_for(&id, "firmware-state", "idle", T, &agent)
        .await;
    cloud.delta(&id, &v11, None).await;
    cloud.wait_for(&id, "firmware", &v11, T, &agent).await;
    cloud.delta(&id, &v10, Some(&v11)).await;
    cloud
        .wait_for(
            &id,
            "firmware-state",
            "rejected:downgrade-refused",
            T,
            &agent,
        )
        .await;
    assert_eq!(
        cloud.actual(&id, "firmware").as_deref(),
        Some(v11.as_str()),
        "1.1.0 still runs"
    );
    drop(agent);

    let dir2 = tempfile::tempdir().unwrap();
    let agent = Agent::start(AgentSpec {
        extra_device_toml: "allow_downgrade = true\n",
        ..AgentSpec::new(dir2.path(), mqtt.port(), vec![registry.host()], 1)
    });
    cloud.delta(&id, &v11, None).await;
    cloud.wait_for(&id, "firmware", &v11, T, &agent).await;
    cloud.delta(&id, &v10, Some(&v11)).await;
    cloud.wait_for(&id, "firmware", &v10, T, &agent).await;
    assert!(agent.devices[0].holds(&v10_fw));
}
