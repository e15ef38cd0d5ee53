//! Hostile input on the controller's subscriptions (issue #16): in direct mode it subscribes to every agent's
//! reports, so a message far over any report's size must be dropped unread, counted, and cost nothing else.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mqtt_schema::DeviceId;
use tokio_util::sync::CancellationToken;
use twinflash_cloud::config::Mode;
use twinflash_cloud::metrics::MQTT_DROPPED_OVERSIZED;
use twinflash_cloud::mqtt::MqttSink;
use twinflash_cloud::seams::IntentSink;
use twinflash_harness::Mosquitto;
use twinflash_testkit::{Observer, init, wait_until};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn an_oversized_report_is_dropped_and_the_relay_keeps_working() {
    init();
    let mqtt = Mosquitto::start().unwrap();
    let obs = Observer::start(
        mqtt.port(),
        "observer",
        &["$hw/events/device/+/+/twin/update/delta"],
    )
    .await;
    let cfg = support::mqtt_settings(mqtt.port());
    let cancel = CancellationToken::new();
    let (sink, task) = MqttSink::start(&cfg, Mode::Direct, HOUR, None, cancel.clone()).unwrap();
    wait_until(|| sink.is_connected(), || "connected".into()).await;
    // Let the relay's subscription land before the hostile report.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    std::fs::write(&file, vec![b'{'; 2 << 20]).unwrap();
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &mqtt.port().to_string(), "-q", "1"])
        .args([
            "-t",
            "$hw/events/device/default/blinky-01/twin/update",
            "-f",
        ])
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    wait_until(
        || MQTT_DROPPED_OVERSIZED.load(Ordering::Relaxed) == 1,
        || "the oversized report was not counted".into(),
    )
    .await;
    assert!(sink.is_connected(), "the connection survived");

    // The relay still delivers intents.
    let key = DeviceId::namespaced("default", "blinky-01").unwrap();
    let reference = format!("registry.local:5000/fw/blinky@sha256:{}", "ab".repeat(32));
    sink.publish_intent(&key, &reference).await.unwrap();
    wait_until(
        || !obs.messages().is_empty(),
        || "no delta after the hostile report".into(),
    )
    .await;
    cancel.cancel();
    task.await.unwrap();
}
