//! The KubeEdge `devices.kubeedge.io/v1beta1` resources twinflash reads and writes, reduced to
//! the fields it uses and tolerant of every other field (no `deny_unknown_fields`, defaults on
//! every field), so a newer KubeEdge with more fields still decodes.
//!
//! Field names are KubeEdge's, read from the kubeedge/kubeedge sources:
//! - `pkg/apis/devices/v1beta1/device_instance_types.go` (`DeviceSpec`, `DeviceProperty`,
//!   `TwinProperty`, `DeviceStatus`, `Twin`),
//! - `pkg/apis/devices/v1beta1/device_model_types.go` (`DeviceModelSpec`, `ModelProperty`),
//! - `build/crds/devices/devices_v1beta1_device.yaml` and `devices_v1beta1_devicemodel.yaml`,
//! - the separate `DeviceStatus` kind (resource `devicestatuses`) of KubeEdge >= 1.23:
//!   kubeedge/kubeedge PR 6534 "split Device CRD into Device CRD and DeviceStatus CRD",
//!   `build/crds/devices/devices_v1beta1_devicestatus.yaml`. Its Go type was not in the searched
//!   index; we assume (and the PR says) it carries the old `Device.status` (`twins`, `state`,
//!   `lastOnlineTime`) under `.status` of an object with the Device's name and namespace.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `DeviceSpec`: only `deviceModelRef`, `nodeName` and `properties` are read.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "devices.kubeedge.io",
    version = "v1beta1",
    kind = "Device",
    plural = "devices",
    namespaced,
    status = "DeviceTwinStatus"
)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceSpec {
    /// The DeviceModel this Device instantiates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_model_ref: Option<LocalObjectRef>,
    /// The edge node the device is bound to.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// The device's properties (twins), unique by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<DeviceProperty>,
}

/// `v1.LocalObjectReference`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(default)]
pub struct LocalObjectRef {
    /// Name of the referent.
    pub name: String,
}

/// `DeviceProperty`: `visitors`, `reportCycle`, `collectCycle`, `reportToCloud` and
/// `pushMethod` are not read and are dropped when decoded.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceProperty {
    /// Property (twin) name.
    pub name: String,
    /// The desired value set by the operator.
    pub desired: TwinProperty,
}

/// `TwinProperty`: a value and string metadata (`timestamp`, `type`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(default)]
pub struct TwinProperty {
    /// The value (always a string in KubeEdge).
    pub value: String,
    /// Metadata such as `timestamp` (Unix ms as a string) and `type`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// `DeviceStatus` of the Go types (the `.status` of a Device before 1.23, of a DeviceStatus
/// object from 1.23).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceTwinStatus {
    /// Reported (and observed desired) values, one entry per property.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub twins: Vec<Twin>,
    /// Device state (online, offline, ...), written by KubeEdge.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// Last time the device was online, written by KubeEdge.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_online_time: String,
}

/// `Twin`: reported and observed-desired values of one property.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Twin {
    /// The property this twin belongs to.
    pub property_name: String,
    /// The value the edge reported (`actual`).
    pub reported: TwinProperty,
    /// The desired value the edge side has received; twinflash records its published intent here.
    pub observed_desired: TwinProperty,
}

/// The `DeviceStatus` kind of KubeEdge >= 1.23: no spec of interest, the twins under `.status`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "devices.kubeedge.io",
    version = "v1beta1",
    kind = "DeviceStatus",
    plural = "devicestatuses",
    namespaced,
    status = "DeviceTwinStatus",
    no_spec
)]
pub struct DeviceStatusFields {}

/// `DeviceModelSpec`: only the properties are read.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "devices.kubeedge.io",
    version = "v1beta1",
    kind = "DeviceModel",
    plural = "devicemodels",
    namespaced
)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceModelSpec {
    /// The model's properties.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<ModelProperty>,
    /// Protocol name used by the device.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protocol: String,
}

/// `ModelProperty`: name, type (`STRING`, ...), access mode (`ReadWrite`, `ReadOnly`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ModelProperty {
    /// Property name.
    pub name: String,
    /// `INT`, `FLOAT`, `DOUBLE`, `STRING`, `BOOLEAN`, `BYTES`, `STREAM`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `ReadWrite` or `ReadOnly`.
    pub access_mode: String,
}

impl Device {
    /// The desired value of property `name`, if the Device declares it.
    pub fn desired(&self, name: &str) -> Option<&str> {
        self.spec
            .properties
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.desired.value.as_str())
    }

    /// Whether the Device declares property `name` in `spec.properties`.
    pub fn declares(&self, name: &str) -> bool {
        self.spec.properties.iter().any(|p| p.name == name)
    }
}

impl DeviceTwinStatus {
    /// The twin of property `name`.
    pub fn twin(&self, name: &str) -> Option<&Twin> {
        self.twins.iter().find(|t| t.property_name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_full_kubeedge_device_and_ignores_unknown_fields() {
        let json = serde_json::json!({
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "Device",
            "metadata": {"name": "blinky-1", "namespace": "default", "generation": 3},
            "spec": {
                "deviceModelRef": {"name": "blinky-model"},
                "nodeName": "edge-1",
                "protocol": {"protocolName": "modbus", "configData": {"x": 1}},
                "properties": [{
                    "name": "firmware",
                    "desired": {"value": "r.local:5000/fw/b@sha256:00", "metadata": {"type": "string"}},
                    "visitors": {"protocolName": "modbus"},
                    "reportCycle": 1000,
                    "reportToCloud": true,
                    "pushMethod": {"mqtt": {"address": "x"}}
                }]
            },
            "status": {
                "twins": [{"propertyName": "firmware", "reported": {"value": "a", "metadata": {"timestamp": "1"}},
                           "observedDesired": {"value": "b"}}],
                "state": "online",
                "somethingNew": 1
            }
        });
        let d: Device = serde_json::from_value(json).unwrap();
        assert_eq!(d.spec.node_name, "edge-1");
        assert_eq!(
            d.spec.device_model_ref.as_ref().unwrap().name,
            "blinky-model"
        );
        assert_eq!(d.desired("firmware"), Some("r.local:5000/fw/b@sha256:00"));
        assert!(!d.declares("firmware-state"));
        let status = d.status.unwrap();
        assert_eq!(status.state, "online");
        assert_eq!(status.twin("firmware").unwrap().reported.value, "a");
        assert_eq!(status.twin("firmware").unwrap().observed_desired.value, "b");
    }

    #[test]
    fn decodes_sparse_objects() {
        let d: Device = serde_json::from_value(serde_json::json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": "x"}, "spec": {}
        }))
        .unwrap();
        assert!(d.spec.properties.is_empty() && d.status.is_none());
        let s: DeviceStatus = serde_json::from_value(serde_json::json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceStatus",
            "metadata": {"name": "x"}, "spec": {"deviceRef": "whatever"},
            "status": {"twins": [{"propertyName": "firmware"}]}
        }))
        .unwrap();
        assert_eq!(s.status.unwrap().twins[0].property_name, "firmware");
        let m: DeviceModel = serde_json::from_value(serde_json::json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceModel",
            "metadata": {"name": "m", "annotations": {"twinflash.io/chip": "nRF52840_xxAA"}},
            "spec": {"properties": [{"name": "firmware", "type": "STRING", "accessMode": "ReadWrite"}]}
        }))
        .unwrap();
        assert_eq!(m.spec.properties[0].type_, "STRING");
        assert_eq!(m.spec.properties[0].access_mode, "ReadWrite");
    }

    #[test]
    fn resource_paths_match_kubeedge() {
        use kube::Resource;
        assert_eq!(Device::plural(&()), "devices");
        assert_eq!(DeviceStatus::plural(&()), "devicestatuses");
        assert_eq!(DeviceModel::plural(&()), "devicemodels");
        assert_eq!(Device::api_version(&()), "devices.kubeedge.io/v1beta1");
    }
}
