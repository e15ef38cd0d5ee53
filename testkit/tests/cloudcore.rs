#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The cloudcore stand-in against KubeEdge's own upstream code: the golden vector `cloud01` (tests/data/README.md)
//! holds the merge-patch bodies cloudcore v1.23.1 sent for a sequence of edge syncs; the stand-in, applying the same
//! syncs to an empty DeviceStatus in FakeApi, must send JSON-equal bodies and leave the same twins behind.

use std::collections::BTreeMap;

use mqtt_schema::MsgTwin;
use serde_json::{Value, json};
use twinflash_harness::FakeApi;
use twinflash_testkit::Cloudcore;

fn golden() -> Value {
    serde_json::from_str(include_str!(
        "data/cloud01_upstream_devicestatus_patches.json"
    ))
    .unwrap()
}

fn twins_of(content: &str) -> BTreeMap<String, MsgTwin> {
    let update = mqtt_schema::unmarshal_device_twin_update(content.as_bytes()).unwrap();
    update
        .twin
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, t)| Some((k, t?)))
        .collect()
}

fn device_status(api: &FakeApi) -> Value {
    api.get(
        "devices.kubeedge.io",
        "v1beta1",
        "devicestatuses",
        "default",
        "blinky-1",
    )
    .unwrap()
}

fn device(api: &FakeApi) {
    // temperature is not a property: cloudcore drops it (p07).
    api.put(json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "blinky-1", "namespace": "default"},
        "spec": {"properties": [{"name": "firmware-version"}, {"name": "firmware"}, {"name": "firmware-state"}]},
    }))
    .unwrap();
}

#[tokio::test]
async fn the_stand_in_sends_cloudcores_patch_bodies() {
    let api = FakeApi::start().unwrap();
    device(&api);
    let cloudcore = Cloudcore::new(&api);
    let g = golden();
    let mut compared = 0;
    for out in g["output"].as_array().unwrap() {
        let msg = &out["edge_message"];
        if !msg["resource_at_cloud"]
            .as_str()
            .unwrap()
            .ends_with("/twin/edge_updated")
        {
            continue; // state/update is not modelled
        }
        let twins = twins_of(msg["content"].as_str().unwrap());
        let sent = cloudcore
            .apply_sync("default", "blinky-1", &twins)
            .await
            .unwrap();
        let want = &out["patch_sent_to_apiserver"];
        assert_eq!(want["method"], "PATCH");
        assert_eq!(want["content_type"], "application/merge-patch+json");
        assert_eq!(
            sent, want["body"],
            "patch #{compared} for {}",
            msg["content"]
        );
        let stored = device_status(&api);
        assert_eq!(
            stored["status"]["twins"], want["body"]["status"]["twins"],
            "stored after #{compared}"
        );
        compared += 1;
    }
    assert_eq!(compared, 7);
    // Each patch went to the object itself, with no resourceVersion, as merge patches.
    let patches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 7);
    assert!(patches.iter().all(|r| r.path
        == "/apis/devices.kubeedge.io/v1beta1/namespaces/default/devicestatuses/blinky-1"
        && r.content_type == "application/merge-patch+json"
        && r.status == 200));
    assert!(api.unknown_requests().is_empty());
}

#[tokio::test]
async fn the_stand_in_overwrites_other_writers_and_drops_unknown_devices() {
    let api = FakeApi::start().unwrap();
    device(&api);
    let cloudcore = Cloudcore::new(&api);
    let ts = 1_796_115_151_432;
    let fw = BTreeMap::from([(
        "firmware".to_owned(),
        twinflash_testkit::sync_twin(Some("a"), Some("b"), ts),
    )]);
    cloudcore
        .apply_sync("default", "blinky-1", &fw)
        .await
        .unwrap();
    // Another writer's metadata in observedDesired, and a field Go's Twin does not have.
    let mut ds = device_status(&api);
    ds["status"]["twins"][0]["observedDesired"] =
        json!({"value": "b", "metadata": {"twinflash.io/reason": "x"}});
    ds["status"]["twins"][0]["extra"] = json!(1);
    api.put(ds).unwrap();
    let body = cloudcore
        .apply_sync("default", "blinky-1", &fw)
        .await
        .unwrap();
    let want = json!([{"propertyName": "firmware",
        "reported": {"value": "a", "metadata": {"timestamp": ts.to_string(), "type": "string"}},
        "observedDesired": {"value": "b", "metadata": {"timestamp": ts.to_string(), "type": "string"}}}]);
    assert_eq!(body["status"]["twins"], want);
    let ds = device_status(&api);
    assert_eq!(
        ds["status"]["twins"], want,
        "the other writer's keys are gone"
    );
    assert!(
        cloudcore
            .apply_sync("default", "nobody", &fw)
            .await
            .is_none()
    );
}
