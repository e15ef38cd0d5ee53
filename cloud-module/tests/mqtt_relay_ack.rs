//! The direct-mode relay answers as edgecore does, over a real mosquitto: an agent's report (unique event id) gets
//! its `twin/update/result` once the report is written into the status, and no result while the status write
//! fails (the agent keeps the report and retries); an unreadable update gets 400 on the empty-id topic.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use mqtt_schema::gojson::decode;
use mqtt_schema::{BaseMessage, DeviceId, DeviceTwinResult, ResultMessage, TwinNames, to_go_json};
use tokio_util::sync::CancellationToken;
use twinflash_cloud::config::Mode;
use twinflash_cloud::mqtt::MqttSink;
use twinflash_cloud::seams::{MemoryStatusWriter, StatusError};
use twinflash_harness::Mosquitto;
use twinflash_testkit::{Observer, init, publish_once, wait_until};

const HOUR: Duration = Duration::from_secs(3600);
const UPDATE: &str = "$hw/events/device/default/blinky-01/twin/update";
const RESULT: &str = "$hw/events/device/default/blinky-01/twin/update/result";

fn report(event_id: &str, state: &str) -> Vec<u8> {
    to_go_json(&mqtt_schema::actual_update(
        BaseMessage::new(event_id, 1),
        [(TwinNames::default().state.as_str(), state)],
    ))
}

/// An agent-like client's one message on the device's `twin/update`.
async fn send(port: u16, payload: Vec<u8>) {
    publish_once("127.0.0.1", port, UPDATE, payload).await;
}

fn results(obs: &Observer, topic: &str) -> Vec<BaseMessage> {
    obs.messages()
        .into_iter()
        .filter(|(t, _, _)| t == topic)
        .map(|(_, p, _)| decode::<BaseMessage>(&p).unwrap())
        .collect()
}

#[tokio::test]
async fn a_report_is_acknowledged_only_after_its_status_write() {
    init();
    let mqtt = Mosquitto::start().unwrap();
    let obs = Observer::start(
        mqtt.port(),
        "observer",
        &[
            "$hw/events/device/+/+/twin/update/result",
            "$hw/events/device//twin/update/result",
        ],
    )
    .await;
    let cfg = support::mqtt_settings(mqtt.port());
    let writer = MemoryStatusWriter::default();
    let cancel = CancellationToken::new();
    let (sink, task) = MqttSink::start(
        &cfg,
        Mode::Direct,
        HOUR,
        Some(Arc::new(writer.clone())),
        cancel.clone(),
    )
    .unwrap();
    wait_until(|| sink.is_connected(), || "connected".into()).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the relay's subscriptions land

    let key = DeviceId::namespaced("default", "blinky-01").unwrap();
    send(mqtt.port(), report("twinflash-n-1-r1", "idle")).await;
    wait_until(
        || !results(&obs, RESULT).is_empty(),
        || format!("no update/result for the report: {:?}", obs.messages()),
    )
    .await;
    let (_, payload, retain) = obs
        .messages()
        .into_iter()
        .find(|(t, _, _)| t == RESULT)
        .unwrap();
    assert!(!retain);
    let result: DeviceTwinResult = decode(&payload).unwrap();
    assert_eq!(result.base.event_id, "twinflash-n-1-r1");
    assert_eq!(
        result.twin("firmware-state").unwrap().actual_value(),
        "idle"
    );
    assert_eq!(
        writer.reported(&key)["firmware-state"],
        "idle",
        "written before it was answered"
    );

    // The API server fails: the report is not acknowledged (the agent's outbox keeps and resends it).
    writer.fail_with(Some(StatusError::Api {
        device: key.to_string(),
        detail: "503".into(),
    }));
    send(mqtt.port(), report("twinflash-n-1-r2", "pending")).await;
    // write_reports tries 3 times, 500 ms apart: well past that, still no answer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        results(&obs, RESULT).len(),
        1,
        "a failed write must not be acknowledged"
    );
    // The agent's retry, once the API server is back, gets its result.
    writer.fail_with(None);
    send(mqtt.port(), report("twinflash-n-1-r2", "pending")).await;
    wait_until(
        || {
            results(&obs, RESULT)
                .iter()
                .any(|b| b.event_id == "twinflash-n-1-r2")
        },
        || "the retried report was not acknowledged".into(),
    )
    .await;
    assert_eq!(writer.reported(&key)["firmware-state"], "pending");

    // Garbage: 400 with the empty id on `$hw/events/device//twin/update/result` (docs/kubeedge.md section 4).
    send(mqtt.port(), b"{not json".to_vec()).await;
    let empty = "$hw/events/device//twin/update/result";
    wait_until(
        || !results(&obs, empty).is_empty(),
        || "no 400 for an unreadable update".into(),
    )
    .await;
    let (_, payload, _) = obs
        .messages()
        .into_iter()
        .find(|(t, _, _)| t == empty)
        .unwrap();
    let err: ResultMessage = decode(&payload).unwrap();
    assert_eq!((err.base.event_id.as_str(), err.code), ("", 400));
    cancel.cancel();
    task.await.unwrap();
}
