//! What the FirmwareRollout end-to-end tests share: the Devices they write into the harness's in-memory API server
//! ([`FakeApi`]), what they read back, and the controller's configuration in direct mode.
#![allow(dead_code)] // each test binary uses its part

use serde_json::{Value, json};
use twinflash_cloud::rollout::FirmwareRolloutStatus;
use twinflash_harness::{FakeApi, free_port};

pub const NS: &str = "default";
pub const DEV_GROUP: (&str, &str, &str) = ("devices.kubeedge.io", "v1beta1", "devices");
pub const FWR_GROUP: (&str, &str, &str) = ("twinflash.io", "v1alpha1", "firmwarerollouts");

/// A Device `name` on `node` with `labels`, the chip annotation, and `firmware` desired = `desired`.
pub fn device_json(name: &str, node: &str, labels: Value, chip: &str, desired: &str) -> Value {
    let prop = |n: &str, v: &str| json!({"name": n, "desired": {"value": v, "metadata": {"type": "string"}}});
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": labels,
            "annotations": {"twinflash.io/chip": chip},
        },
        "spec": {
            "nodeName": node,
            "properties": [prop("firmware", desired), prop("firmware-version", ""), prop("firmware-state", "")],
        },
    })
}

/// The Device `name` as the API server holds it now.
pub fn device(api: &FakeApi, name: &str) -> Value {
    let (g, v, p) = DEV_GROUP;
    api.get(g, v, p, NS, name).unwrap()
}

/// The `reported` value of `twin` in an object's `status.twins`.
pub fn reported(dev: &Value, twin: &str) -> Option<String> {
    dev["status"]["twins"]
        .as_array()?
        .iter()
        .find(|t| t["propertyName"] == twin)?["reported"]["value"]
        .as_str()
        .map(str::to_owned)
}

/// The status of the FirmwareRollout `name`.
pub fn rollout_status(api: &FakeApi, name: &str) -> Option<FirmwareRolloutStatus> {
    let (g, v, p) = FWR_GROUP;
    let obj = api.get(g, v, p, NS, name)?;
    serde_json::from_value(obj.get("status")?.clone()).ok()
}

/// The controller in direct mode with the default resync period (300 s): a rollout must progress on watch events
/// alone within the test's deadlines.
pub fn cloud_config(
    mqtt_port: u16,
    registry_host: &str,
    status_location: &str,
    client_id: &str,
) -> String {
    format!(
        "mode = \"direct\"\nstatus_location = \"{status_location}\"\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\nclient_id = \"{client_id}\"\n\
         [registry]\nplain_http = [\"{registry_host}\"]\n\
         [metrics]\nlisten = \"127.0.0.1:{}\"\n",
        free_port()
    )
}
