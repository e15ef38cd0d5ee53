//! `direct` mode end to end: real mosquitto, real registry, a real `twinflash-edge` with
//! simulated devices, and the relay of twinflash-cloud in edgecore's place. The intent converges
//! and the recorded status carries the reported firmware, version and state.
//!
//! The agent binary comes from `twinflash_testkit::agent_binary` (beside this test, else built by it).
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use mqtt_schema::DeviceId;
use tokio_util::sync::CancellationToken;
use twinflash_cloud::config::{Config, Mode};
use twinflash_cloud::mqtt::MqttSink;
use twinflash_cloud::seams::{IntentSink, MemoryStatusWriter};
use twinflash_harness::{Fault, FaultProxy, Mosquitto, Registry};
use twinflash_testkit::{Agent, AgentSpec, CHIP, Observer, image, init, push, wait_until};

fn key(i: usize) -> DeviceId {
    DeviceId::namespaced("default", format!("sim-{i:02}")).unwrap()
}

fn config(port: u16) -> Config {
    let env = HashMap::from([
        (
            "TWINFLASH_CLOUD__MQTT__URL".to_owned(),
            format!("mqtt://127.0.0.1:{port}"),
        ),
        ("TWINFLASH_CLOUD__MODE".to_owned(), "direct".to_owned()),
    ]);
    Config::load_with_env(None, Some(env)).unwrap()
}

fn converged(status: &MemoryStatusWriter, i: usize, reference: &str, version: &str) -> bool {
    let r = status.reported(&key(i));
    r.get("firmware").map(String::as_str) == Some(reference)
        && r.get("firmware-version").map(String::as_str) == Some(version)
        && r.get("firmware-state").map(String::as_str) == Some("installed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_mode_converges_with_a_real_agent_and_survives_an_outage() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    // The controller reaches the broker through a fault proxy; the agent directly.
    let proxy = FaultProxy::start(mqtt.addr()).unwrap();
    let deltas = Observer::start(
        mqtt.port(),
        "delta-observer",
        &["$hw/events/device/+/+/twin/update/delta"],
    )
    .await;
    let status = MemoryStatusWriter::default();
    let cancel = CancellationToken::new();
    let cfg = config(proxy.port());
    let (sink, task) = MqttSink::start(
        cfg.mqtt.as_ref().expect("direct mode has [mqtt]"),
        Mode::Direct,
        std::time::Duration::from_secs(3600),
        Some(Arc::new(status.clone())),
        cancel.clone(),
    )
    .unwrap();
    wait_until(|| sink.is_connected(), || "relay connected".into()).await;

    let agent = Agent::start(AgentSpec {
        client_id: "agent-e2e".into(),
        ..AgentSpec::new(dir.path(), mqtt.port(), vec![registry.host()], 2)
    });
    // The agent's first reports (idle) reach the status through the relay.
    wait_until(
        || {
            (0..2).all(|i| {
                status
                    .reported(&key(i))
                    .get("firmware-state")
                    .map(String::as_str)
                    == Some("idle")
            })
        },
        || format!("no idle reports; agent log:\n{}", agent.log()),
    )
    .await;

    let fw1 = image(1, 4096);
    let r1 = push(
        &registry,
        dir.path(),
        "fw/blinky:1.0.0",
        &fw1,
        "1.0.0+b1",
        CHIP,
    )
    .await;
    sink.publish_intent(&key(0), &r1).await.unwrap();
    wait_until(
        || converged(&status, 0, &r1, "1.0.0_b1"),
        || {
            format!(
                "sim-00 reported {:?}; agent log:\n{}",
                status.reported(&key(0)),
                agent.log()
            )
        },
    )
    .await;
    assert!(agent.devices[0].holds(&fw1));
    // Installed: the retained delta is cleared (an empty retained payload was published).
    wait_until(
        || {
            deltas
                .messages()
                .iter()
                .any(|(t, p, _)| t.contains("/sim-00/") && p.is_empty())
        },
        || "retained delta of sim-00 not cleared".into(),
    )
    .await;

    // Outage of the controller: intents set meanwhile are delivered once it is back.
    proxy.set(Fault::Refuse);
    wait_until(|| !sink.is_connected(), || "relay disconnected".into()).await;
    let fw2 = image(2, 4096);
    let r2 = push(
        &registry,
        dir.path(),
        "fw/blinky:2.0.0",
        &fw2,
        "2.0.0",
        CHIP,
    )
    .await;
    assert!(
        sink.publish_intent(&key(1), &r2).await.is_err(),
        "not delivered yet"
    );
    proxy.set(Fault::Pass);
    wait_until(
        || converged(&status, 1, &r2, "2.0.0"),
        || {
            format!(
                "sim-01 reported {:?}; agent log:\n{}",
                status.reported(&key(1)),
                agent.log()
            )
        },
    )
    .await;
    assert!(agent.devices[1].holds(&fw2));
    // sim-00 kept its firmware: nothing else was asked of it.
    assert!(converged(&status, 0, &r1, "1.0.0_b1"));

    cancel.cancel();
    task.await.unwrap();
}
