//! What edgecore's DMI worker makes of the cloud's Devices and DeviceModels before it calls a mapper: the model's
//! defaults (c05), the spec comparison (c03), `dataToAny` (e11) and the conversion to the DMI types (b01, c01).

use std::collections::BTreeMap;

use serde_json::Value;
use twinflash_dmi::pb;

use super::{id, name_of};

/// The spec as `CompareDeviceSpecHasChanged` compares it: properties and methods sorted by name (c03); nulls
/// dropped (Go decodes an absent and a null field alike).
pub(super) fn comparable_spec(device: &Value) -> Value {
    fn strip(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), strip(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
            other => other.clone(),
        }
    }
    let mut spec = strip(&device["spec"]);
    for key in ["properties", "methods"] {
        if let Some(list) = spec.get_mut(key).and_then(Value::as_array_mut) {
            list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        }
    }
    spec
}

/// `GetOverriddenDevice` (c05, spec §4 "Model override"): the device with the model's defaults, the device's keys
/// winning. A property whose model property has visitors gets the model's visitors, then the device's configData
/// keys on top; `protocol.configData` = the model's `protocolConfigData` with the device's keys on top. The model
/// must be cached in the device's namespace (e12).
pub(super) fn overridden(
    device: &Value,
    models: &BTreeMap<String, Value>,
) -> Result<(Value, Value), String> {
    let name = name_of(device);
    let Some(model_name) = device["spec"]["deviceModelRef"]["name"].as_str() else {
        return Err(format!(
            "override device instance config failed for device {name}: device {name} has no device model reference"
        ));
    };
    let ns = device["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let Some(model) = models.get(&id(ns, model_name)) else {
        return Err(format!(
            "override device instance config failed for device {name}: device model {model_name} not found in cache for device {name}"
        ));
    };
    let mut dev = device.clone();
    let merge = |base: &Value, over: &Value| -> Value {
        match (base.as_object(), over.as_object()) {
            (Some(b), Some(o)) => {
                let mut m = b.clone();
                m.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
                Value::Object(m)
            }
            (_, Some(_)) => over.clone(),
            _ => base.clone(),
        }
    };
    if let Some(props) = dev["spec"]["properties"].as_array_mut() {
        for p in props {
            let model_prop = model["spec"]["properties"]
                .as_array()
                .and_then(|mp| mp.iter().find(|m| m["name"] == p["name"]));
            let Some(visitors) = model_prop.map(|m| &m["visitors"]).filter(|v| !v.is_null()) else {
                continue;
            };
            let own = p["visitors"]["configData"].clone();
            let mut v = visitors.clone();
            let merged = merge(&v["configData"], &own);
            if !merged.is_null() {
                v["configData"] = merged;
            }
            p["visitors"] = v;
        }
    }
    let own = dev["spec"]["protocol"]["configData"].clone();
    let merged = merge(&model["spec"]["protocolConfigData"], &own);
    if let Some(protocol) = dev["spec"]["protocol"].as_object_mut() {
        if merged.is_null() {
            protocol.remove("configData");
        } else {
            protocol.insert("configData".into(), merged);
        }
    }
    Ok((dev, model.clone()))
}

/// `dataToAny` (edge/pkg/devicetwin/dtcommon/util.go; spec §2): Go decoded the Device's JSON into `interface{}`, so a
/// string is a `StringValue`, every number a float64 made `FloatValue` (float32), a boolean a `BoolValue`; anything
/// else (object, array, null) "does not support converting to any" (e11). The wrapper is encoded as Go's proto3
/// marshalling does: its `value = 1` field left out when it is the default.
fn data_to_any(v: &Value) -> Result<prost_types::Any, &'static str> {
    let (type_url, value) = match v {
        Value::String(s) => {
            let mut b = Vec::new();
            if !s.is_empty() {
                prost::encoding::string::encode(1, s, &mut b);
            }
            ("StringValue", b)
        }
        Value::Number(n) => {
            #[allow(clippy::cast_possible_truncation)] // float32(m), as Go does
            let f = n.as_f64().unwrap_or_default() as f32;
            let mut b = Vec::new();
            if f.to_bits() != 0 {
                prost::encoding::float::encode(1, &f, &mut b);
            }
            ("FloatValue", b)
        }
        Value::Bool(x) => {
            let mut b = Vec::new();
            if *x {
                prost::encoding::bool::encode(1, x, &mut b);
            }
            ("BoolValue", b)
        }
        Value::Object(_) => return Err("map[string]interface {}"),
        Value::Array(_) => return Err("[]interface {}"),
        Value::Null => return Err("<nil>"),
    };
    Ok(prost_types::Any {
        type_url: format!("type.googleapis.com/google.protobuf.{type_url}"),
        value,
    })
}

/// `dataToAny` over a configData map (spec §2; e11: an object or array cannot be converted).
fn config_data(data: &Value, what: &str) -> Result<Option<pb::CustomizedValue>, String> {
    let Some(map) = data.as_object() else {
        return Ok(None);
    };
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let any = data_to_any(v).map_err(|go_type| {
            format!(
                "failed to convert {what} config data: {go_type} does not support converting to any"
            )
        })?;
        out.insert(k.clone(), any);
    }
    Ok(Some(pb::CustomizedValue { data: out }))
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

/// `dtcommon.ConvertDevice` of an overridden device (c01, c02, c05): name, namespace, the model's name, protocol,
/// properties (each with a `desired` and a `visitors` message, even empty) and methods; `status` an empty message.
pub fn convert_device(device: &Value) -> Result<pb::Device, String> {
    let spec = &device["spec"];
    let protocol = &spec["protocol"];
    let mut properties = Vec::new();
    for p in spec["properties"].as_array().into_iter().flatten() {
        properties.push(pb::DeviceProperty {
            name: text(&p["name"]),
            desired: Some(pb::TwinProperty {
                value: text(&p["desired"]["value"]),
                metadata: string_map(&p["desired"]["metadata"]),
            }),
            visitors: Some(pb::VisitorConfig {
                protocol_name: text(&p["visitors"]["protocolName"]),
                config_data: config_data(&p["visitors"]["configData"], "visitor")?,
            }),
            report_cycle: p["reportCycle"].as_i64().unwrap_or(0),
            collect_cycle: p["collectCycle"].as_i64().unwrap_or(0),
            report_to_cloud: p["reportToCloud"].as_bool().unwrap_or(false),
        });
    }
    let methods = spec["methods"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| pb::DeviceMethod {
            name: text(&m["name"]),
            description: text(&m["description"]),
            property_names: m["propertyNames"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect(),
        })
        .collect();
    Ok(pb::Device {
        name: text(&device["metadata"]["name"]),
        namespace: text(&device["metadata"]["namespace"]),
        spec: Some(pb::DeviceSpec {
            device_model_reference: text(&spec["deviceModelRef"]["name"]),
            protocol: Some(pb::ProtocolConfig {
                protocol_name: text(&protocol["protocolName"]),
                config_data: config_data(&protocol["configData"], "protocol")?,
            }),
            properties,
            methods,
        }),
        status: Some(pb::DeviceStatus::default()),
    })
}

/// `dtcommon.ConvertDeviceModel` (b01): name, namespace and the properties; no protocol, no protocolConfigData, no
/// visitors.
pub fn convert_model(model: &Value) -> pb::DeviceModel {
    let properties = model["spec"]["properties"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| pb::ModelProperty {
            name: text(&p["name"]),
            description: text(&p["description"]),
            r#type: text(&p["type"]),
            access_mode: text(&p["accessMode"]),
            minimum: text(&p["minimum"]),
            maximum: text(&p["maximum"]),
            unit: text(&p["unit"]),
        })
        .collect();
    pb::DeviceModel {
        name: text(&model["metadata"]["name"]),
        namespace: text(&model["metadata"]["namespace"]),
        spec: Some(pb::DeviceModelSpec { properties }),
    }
}
