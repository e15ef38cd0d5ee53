//! The controller next to cloudcore (its stand-in, `twinflash_testkit::Cloudcore`), against FakeApi and a real
//! mosquitto, in `edgecore` mode. cloudcore merge-patches the whole `status.twins` list of DeviceStatus without a
//! resourceVersion, rewrites `observedDesired` from edgecore's `expected` and drops the first value of a new twin,
//! all the time, racing the controller. Nothing of the controller's may be lost: its record stays intact, each
//! intent gets exactly one Event, and a restarted controller publishes nothing that edgecore already holds.
//! (Before the record moved to the Device's annotations, cloudcore erased it and the restart published the intent
//! again with a second `IntentPublished` Event.)
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::{Run, client};
use tokio_util::sync::CancellationToken;
use twinflash_cloud::config::{Mode, StatusLocation};
use twinflash_cloud::controller::{self, Context};
use twinflash_cloud::mqtt::MqttSink;
use twinflash_cloud::seams::{MemoryResolver, ResolvedArtifact};
use twinflash_harness::{FakeApi, Mosquitto};
use twinflash_testkit::{Cloudcore, Observer, init, sync_twin, wait_until};

const NS: &str = "default";
const NAME: &str = "blinky-1";
const DEV: (&str, &str) = ("devices.kubeedge.io", "v1beta1");
const RESYNC: Duration = Duration::from_millis(300);

fn pinned() -> String {
    format!("registry.local:5000/fw/blinky@sha256:{}", "ab".repeat(32))
}

async fn start(
    api: &FakeApi,
    dir: &std::path::Path,
    mqtt: &Mosquitto,
    resolver: &MemoryResolver,
) -> Run {
    let cfg = support::mqtt_settings(mqtt.port());
    let cancel = CancellationToken::new();
    let (sink, mqtt_task) =
        MqttSink::start(&cfg, Mode::Edgecore, RESYNC, None, cancel.clone()).unwrap();
    wait_until(|| sink.is_connected(), || "sink connected".into()).await;
    let ctx = Arc::new(Context::new(
        client(api, dir).await,
        Arc::new(sink),
        Arc::new(resolver.clone()),
        StatusLocation::DeviceStatus,
        RESYNC,
        Some("test-pod".into()),
    ));
    let c = ctx.clone();
    let run = tokio::spawn(async move { controller::run(c, Some(NS), None).await });
    Run {
        ctx,
        cancel,
        tasks: vec![mqtt_task, run],
    }
}

fn events(api: &FakeApi) -> Vec<serde_json::Value> {
    api.list("events.k8s.io", "v1", "events", Some(NS))
}

fn annotations(api: &FakeApi) -> serde_json::Value {
    api.get(DEV.0, DEV.1, "devices", NS, NAME).unwrap()["metadata"]["annotations"].clone()
}

#[tokio::test]
async fn cloudcore_racing_the_controller_loses_nothing_and_a_restart_republishes_nothing() {
    init();
    let api = FakeApi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let p = pinned();
    let resolver = MemoryResolver::default();
    resolver.insert(
        &p,
        Ok(ResolvedArtifact {
            digest_ref: p.clone(),
            chip: None,
            version: Some("1.4.2".into()),
        }),
    );
    api.put(json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {"properties": [
            {"name": "firmware", "desired": {"value": p, "metadata": {"type": "string"}}},
            {"name": "firmware-state"},
        ]},
    }))
    .unwrap();
    // cloudcore from the start, as edgecore syncs once it holds the intent: expected = the intent, actual = the old
    // firmware; firmware-state is new to DeviceStatus (its first value is dropped).
    let old = format!("registry.local:5000/fw/blinky@sha256:{}", "01".repeat(32));
    let edge = BTreeMap::from([
        (
            "firmware".to_owned(),
            sync_twin(Some(&old), Some(&p), 1_796_115_151_432),
        ),
        (
            "firmware-state".to_owned(),
            sync_twin(Some("flashing:40"), None, 1_796_115_151_434),
        ),
    ]);
    let writer = Cloudcore::new(&api).spawn_writer(NS, NAME, edge, Duration::from_millis(5));
    let obs = Observer::start(
        mqtt.port(),
        "observer",
        &["$hw/events/device/+/+/twin/update"],
    )
    .await;

    let first = start(&api, dir.path(), &mqtt, &resolver).await;
    wait_until(
        || !obs.messages().is_empty() && !events(&api).is_empty(),
        || "intent and Event".into(),
    )
    .await;
    // Let cloudcore and the controller's resyncs race for a while.
    let (reconciles, syncs) = (first.ctx.metrics.reconciles(), writer.syncs());
    wait_until(
        || first.ctx.metrics.reconciles() >= reconciles + 5 && writer.syncs() >= syncs + 50,
        || "controller resyncs and cloudcore syncs".into(),
    )
    .await;
    let a = annotations(&api);
    assert_eq!(a["twinflash.io/pinned"], p.as_str(), "record intact: {a}");
    assert_eq!(a["twinflash.io/reason"], "IntentPublished");
    assert_eq!(a["twinflash.io/desired"], p.as_str());
    let ds = api.get(DEV.0, DEV.1, "devicestatuses", NS, NAME).unwrap();
    let fw = ds["status"]["twins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["propertyName"] == "firmware")
        .unwrap()
        .clone();
    assert_eq!(
        fw["observedDesired"]["metadata"].as_object().unwrap().len(),
        2,
        "cloudcore's fields only: {fw}"
    );
    first.stop().await;
    let published = obs.messages().len();

    // A restarted controller: nothing republished (cloudcore's observedDesired shows edgecore holds the intent),
    // no second Event.
    let second = start(&api, dir.path(), &mqtt, &resolver).await;
    wait_until(
        || second.ctx.metrics.reconciles() >= 5,
        || "restarted controller resyncs".into(),
    )
    .await;
    tokio::time::sleep(RESYNC * 2).await; // a resync tick of the sink, too
    assert_eq!(
        obs.messages().len(),
        published,
        "no publish after the restart: {:?}",
        obs.messages()
    );
    assert_eq!(second.ctx.metrics.intents_published(), 0);
    let evs = events(&api);
    assert_eq!(evs.len(), 1, "exactly one Event for the intent: {evs:?}");
    assert_eq!(evs[0]["reason"], "IntentPublished");
    assert_eq!(annotations(&api)["twinflash.io/pinned"], p.as_str());
    second.stop().await;
    // twinflash-cloud never wrote DeviceStatus in edgecore mode: every write of it is cloudcore's (its syncs, one
    // more aborted in flight at most, and its one create).
    let syncs = writer.stop().await;
    let ds_writes = api
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/devicestatuses") && r.method != "GET")
        .count();
    assert!(
        (syncs + 1..=syncs + 2).contains(&ds_writes),
        "{ds_writes} writes of DeviceStatus, {syncs} cloudcore syncs"
    );
}
