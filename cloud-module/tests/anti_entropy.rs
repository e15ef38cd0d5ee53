//! The controller's anti-entropy loop against FakeApi and a real mosquitto (edgecore mode): a Device whose
//! DeviceStatus stopped short of the final state of its intent gets a `twin/get` nudge on its own topic, about once
//! per period; a converged one gets none over several periods; and the scan costs no API request.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use mqtt_schema::BaseMessage;
use mqtt_schema::gojson::decode;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use twinflash_cloud::config::{Mode, StatusLocation};
use twinflash_cloud::controller::{self, Context};
use twinflash_cloud::mqtt::MqttSink;
use twinflash_cloud::seams::{MemoryResolver, ResolvedArtifact};
use twinflash_harness::{FakeApi, Mosquitto};
use twinflash_testkit::{Observer, init, wait_until};

const NS: &str = "default";
const PERIOD: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

fn pinned() -> String {
    format!("registry.local:5000/fw/blinky@sha256:{}", "ab".repeat(32))
}

fn device(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"properties": [
            {"name": "firmware", "desired": {"value": pinned(), "metadata": {"type": "string"}}},
            {"name": "firmware-state"},
        ]},
    })
}

/// A DeviceStatus as cloudcore writes it (reported values with `{timestamp: "<ms>", type}`), reported long ago.
fn device_status(name: &str, firmware: &str, state: &str) -> serde_json::Value {
    let twin = |n: &str, v: &str| {
        json!({"propertyName": n, "reported": {"value": v, "metadata": {"timestamp": "1700000000000", "type": "string"}},
               "observedDesired": {"value": "", "metadata": {}}})
    };
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceStatus",
        "metadata": {"name": name, "namespace": NS},
        "status": {"twins": [twin("firmware", firmware), twin("firmware-state", state)]},
    })
}

#[tokio::test]
async fn a_stale_device_is_nudged_once_per_period_and_a_converged_one_never() {
    init();
    let (p, api) = (pinned(), FakeApi::start().unwrap());
    let old = format!("registry.local:5000/fw/blinky@sha256:{}", "01".repeat(32));
    for obj in [
        device("stale"),
        device("done"),
        device_status("stale", &old, "downloading:40"),
        device_status("done", &p, "installed"),
    ] {
        api.put(obj).unwrap();
    }
    let resolver = MemoryResolver::default();
    let artifact = ResolvedArtifact {
        digest_ref: p.clone(),
        chip: None,
        version: Some("1.4.2".into()),
    };
    resolver.insert(&p, Ok(artifact));
    let (dir, mqtt) = (tempfile::tempdir().unwrap(), Mosquitto::start().unwrap());
    let obs = Observer::start(mqtt.port(), "observer", &["$hw/events/device/+/+/twin/get"]).await;

    let cfg = support::mqtt_settings(mqtt.port());
    let cancel = CancellationToken::new();
    let (sink, mqtt_task) =
        MqttSink::start(&cfg, Mode::Edgecore, HOUR, None, cancel.clone()).unwrap();
    wait_until(|| sink.is_connected(), || "sink connected".into()).await;
    let sink = Arc::new(sink);
    let mut ctx = Context::new(
        support::client(&api, dir.path()).await,
        sink.clone(),
        Arc::new(resolver),
        StatusLocation::DeviceStatus,
        HOUR,
        Some("test-pod".into()),
    );
    ctx.anti_entropy = PERIOD;
    ctx.nudger = Some(sink);
    let ctx = Arc::new(ctx);
    let c = ctx.clone();
    let run = tokio::spawn(async move { controller::run(c, Some(NS), None).await });

    let nudges = |name: &str| -> Vec<BaseMessage> {
        let topic = format!("$hw/events/device/{NS}/{name}/twin/get");
        obs.messages()
            .into_iter()
            .filter(|(t, _, _)| *t == topic)
            .map(|(_, payload, _)| decode::<BaseMessage>(&payload).unwrap())
            .collect()
    };
    wait_until(
        || !nudges("stale").is_empty(),
        || format!("no nudge for the stale Device: {:?}", obs.messages()),
    )
    .await;
    let first = &nudges("stale")[0];
    assert!(first.event_id.starts_with("twinflash-cloud-"), "{first:?}");
    assert_eq!(ctx.metrics.nudges(), 1);
    // Several periods: the stale Device about once per period, the converged one never, and no API request.
    let requests = api.requests().len();
    tokio::time::sleep(PERIOD * 5).await;
    let n = nudges("stale").len();
    assert!((4..=7).contains(&n), "{n} nudges in about 6 periods");
    assert!(nudges("done").is_empty(), "a converged Device was nudged");
    let later: Vec<_> = api.requests().into_iter().skip(requests).collect();
    assert!(
        later.iter().all(|r| r.query.contains("watch")),
        "the scan read the caches only: {:?}",
        later
            .iter()
            .map(|r| (&r.method, &r.path, &r.query))
            .collect::<Vec<_>>()
    );
    assert!(
        ctx.metrics
            .render()
            .contains("twinflash_cloud_anti_entropy_stale_devices 1\n")
    );

    // Once the status shows the final state, the nudges stop.
    api.put(device_status("stale", &p, "installed")).unwrap();
    tokio::time::sleep(PERIOD * 2).await;
    let settled = nudges("stale").len();
    tokio::time::sleep(PERIOD * 3).await;
    assert_eq!(nudges("stale").len(), settled, "nudged after converging");
    cancel.cancel();
    run.abort();
    let _ = run.await;
    let _ = mqtt_task.await;
}
