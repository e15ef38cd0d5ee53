//! Bad input never stops the agent: each is logged once, reported through the device's firmware-state where a
//! device is known, and nothing else is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::time::Duration;

use mqtt_schema::DeviceTopicKind;
use support::{Agent, AgentSpec, Env, WAIT, image};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_code_and_the_agent_keeps_working() {
    let env = Env::start(5, |s| s).await;
    let good_fw = image(20, 10_000);
    let good = env.push("a:1.0.0", &good_fw, "1.0.0").await;
    let other_chip = env
        .push_for("nrf:1.0.0", &image(21, 10_000), "1.0.0", "nRF52840_xxAA")
        .await;
    let id0 = env.device(0).id;

    // A malformed payload (not JSON; then `value` as a number, which Go's decoder rejects).
    env.cloud
        .raw(
            &id0,
            DeviceTopicKind::TwinUpdateDelta,
            b"{not json".to_vec(),
        )
        .await;
    env.wait(0, "firmware-state", "rejected:invalid-message")
        .await;
    let typed = br#"{"event_id":"x","timestamp":1,"twin":{},"delta":{"firmware":5}}"#.to_vec();
    env.cloud
        .raw(&id0, DeviceTopicKind::TwinUpdateDelta, typed)
        .await;
    // A delta for a device this agent does not manage.
    env.cloud.delta("default/ghost", &good, None).await;
    // A value that fails KubeEdge's twin value check.
    env.intent(1, "fw blinky:1.0.0 latest").await;
    env.wait(1, "firmware-state", "rejected:invalid-reference")
        .await;
    // A reference without a digest.
    let tag_only = good.split('@').next().unwrap().to_owned();
    env.intent(2, &tag_only).await;
    env.wait(2, "firmware-state", "rejected:invalid-reference")
        .await;
    // A wrong artifact: built for another chip.
    env.intent(3, &other_chip).await;
    env.wait(3, "firmware-state", "rejected:chip-mismatch")
        .await;
    // A digest the registry does not have.
    let unknown = format!("{}/fw/a@sha256:{}", env.registry.host(), "0".repeat(64));
    env.intent(4, &unknown).await;
    env.wait(4, "firmware-state", "failed:not-found").await;

    // Nothing else was lost: a good intent on the device that saw garbage installs.
    env.intent(0, &good).await;
    env.wait(0, "firmware-state", "installed").await;
    assert!(env.device(0).holds(&good_fw));
    // Each problem was logged once, however often edgecore repeats it.
    for _ in 0..5 {
        env.intent(1, "fw blinky:1.0.0 latest").await;
        env.cloud.delta("default/ghost", &good, None).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = env.agent.log();
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
        env.actual(1, "firmware-state").as_deref(),
        Some("rejected:invalid-reference")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_version_is_refused_unless_the_device_allows_downgrades() {
    let env = Env::start(1, |s| s).await;
    let v11 = env.push("a:1.1.0", &image(22, 5_000), "1.1.0").await;
    let v10_fw = image(23, 5_000);
    let v10 = env.push("a:1.0.0", &v10_fw, "1.0.0").await;
    let id = env.device(0).id;
    env.intent(0, &v11).await;
    env.wait(0, "firmware", &v11).await;
    env.cloud.delta(&id, &v10, Some(&v11)).await;
    env.wait(0, "firmware-state", "rejected:downgrade-refused")
        .await;
    assert_eq!(
        env.actual(0, "firmware").as_deref(),
        Some(v11.as_str()),
        "1.1.0 still runs"
    );

    // The same device (same id, fresh state) on an agent that allows downgrades.
    drop(env.agent);
    let dir2 = tempfile::tempdir().unwrap();
    let agent = Agent::start(AgentSpec {
        extra_device_toml: "allow_downgrade = true\n",
        ..AgentSpec::new(dir2.path(), env.mqtt.port(), vec![env.registry.host()], 1)
    });
    env.cloud.delta(&id, &v11, None).await;
    env.cloud
        .wait_for(&id, "firmware", &v11, WAIT, &agent)
        .await;
    env.cloud.delta(&id, &v10, Some(&v11)).await;
    env.cloud
        .wait_for(&id, "firmware", &v10, WAIT, &agent)
        .await;
    assert!(agent.devices[0].holds(&v10_fw));
}
