//! What a Device delivered over DMI means to the agent: its id, its flasher settings (the protocol's config data,
//! already merged with the DeviceModel's defaults by edgecore), its intent (the `firmware` property's desired value)
//! and its report cycle. Pure: no I/O, table-tested.
//!
//! The config data is flat (KubeEdge cannot convert nested values, golden e11): `flasher` names the backend kind,
//! `chip`, `allow_downgrade`, `twin_prefix` and `confirm` (a JSON object string: the `[devices.confirm]` table) are
//! the device's keys, every other key is the backend's, as in a TOML `[devices.flasher]` table. KubeEdge passes numbers through float32, so a number above 2^24 may have lost digits:
//! it is refused, and such values are written as strings (`"0x08000000"`), which are read as integers. A string
//! starting with `[` or `{` is read as JSON (the command backend's argv lists, the simulated device's faults).
//! The result is checked by the same serde types and rules as a `[[devices]]` entry, so the messages are the same.

use std::time::Duration;

use serde_json::{Map, Value};
use twinflash_dmi::pb;
use twinflash_dmi::value::FLOAT32_EXACT;

use crate::config::DeviceConfig;
use crate::wire::Intent;

/// The desired-value metadata key where twinflash-cloud writes the digest-pinned reference of a tag.
pub const PINNED_KEY: &str = "twinflash.io/pinned";
/// The desired-value metadata key twinflash-cloud bumps to make edgecore call UpdateDevice (a nudge).
pub const NUDGE_KEY: &str = "twinflash.io/nudge";

/// A Device as the agent reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct DmiDevice {
    /// `namespace/name`.
    pub id: String,
    /// The flasher settings, or why they are refused.
    pub settings: Result<DeviceConfig, SettingsError>,
    /// The wanted firmware; None when the `firmware` property has no desired value.
    pub intent: Option<Intent>,
    /// The `firmware-state` property's report cycle, when set.
    pub report_cycle: Option<Duration>,
}

/// The Device's settings are not acceptable: the config data key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config data key `{key}`: {reason}")]
pub struct SettingsError {
    /// The key of `spec.protocol.configData` (or `protocol` for the protocol itself).
    pub key: String,
    /// Why.
    pub reason: String,
}

fn err(key: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// A Device name or namespace the agent accepts (a Kubernetes name: lower-case alphanumerics, `-` and `.`, at
/// most 253 characters). It names files in the state directory, so nothing else is let through.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with('.')
}

/// The id of a Device (`namespace/name`), or None when either part is not a valid name.
pub fn device_id(namespace: &str, name: &str) -> Option<String> {
    (valid_name(namespace) && valid_name(name)).then(|| format!("{namespace}/{name}"))
}

/// Reads a Device delivered by edgecore. `None` when its name or namespace is unusable (the call is refused).
pub fn read(dev: &pb::Device) -> Option<DmiDevice> {
    let id = device_id(&dev.namespace, &dev.name)?;
    let empty = pb::DeviceSpec::default();
    let spec = dev.spec.as_ref().unwrap_or(&empty);
    let settings = settings(&id, spec.protocol.as_ref());
    let prefix = settings
        .as_ref()
        .map(|c| c.twin_prefix.clone())
        .unwrap_or_default();
    let names = mqtt_schema::TwinNames::with_prefix(&prefix).unwrap_or_default();
    let property = |name: &str| spec.properties.iter().find(|p| p.name == name);
    let intent = property(&names.firmware)
        .and_then(|p| p.desired.as_ref())
        .and_then(intent);
    let report_cycle = property(&names.state)
        .map(|p| p.report_cycle)
        .filter(|ms| *ms > 0)
        .and_then(|ms| u64::try_from(ms).ok())
        .map(Duration::from_millis);
    Some(DmiDevice {
        id,
        settings,
        intent,
        report_cycle,
    })
}

/// The intent of a desired `firmware` value. A digest-pinned value is the intent. A tag-only value is flashed only
/// through the pin twinflash-cloud wrote for exactly that tag (the edge never resolves a tag, and never flashes a
/// tag-only reference); without one it is an invalid intent (`rejected:invalid-reference`).
pub fn intent(desired: &pb::TwinProperty) -> Option<Intent> {
    let value = desired.value.as_str();
    if value.is_empty() {
        return None;
    }
    let direct = Intent::from_twin(value);
    if matches!(direct, Intent::Valid(_)) {
        return Some(direct);
    }
    if let Some(pinned) = desired.metadata.get(PINNED_KEY)
        && pinned
            .strip_prefix(value)
            .is_some_and(|rest| rest.starts_with("@sha256:"))
        && let Intent::Valid(r) = Intent::from_twin(pinned)
    {
        return Some(Intent::Valid(r));
    }
    Some(direct)
}

/// The flasher settings from the protocol's config data.
pub fn settings(
    id: &str,
    protocol: Option<&pb::ProtocolConfig>,
) -> Result<DeviceConfig, SettingsError> {
    let Some(protocol) = protocol else {
        return Err(err("protocol", "the Device has no protocol section"));
    };
    let data = twinflash_dmi::value::config_json(protocol.config_data.as_ref())
        .map_err(|(key, e)| err(&key, e.to_string()))?;
    let mut device = Map::new();
    let mut flasher = Map::new();
    device.insert("id".into(), Value::String(id.to_owned()));
    for (key, value) in data {
        let value = coerce(&key, value)?;
        match key.as_str() {
            "flasher" => {
                flasher.insert("kind".into(), value);
            }
            "kind" => {
                return Err(err(
                    "kind",
                    "the backend kind is the key `flasher` (probe-rs, command, gdb, simulated)",
                ));
            }
            "chip" | "allow_downgrade" | "twin_prefix" | "confirm" => {
                device.insert(key, value);
            }
            _ => {
                flasher.insert(key, value);
            }
        }
    }
    if !flasher.contains_key("kind") {
        return Err(err(
            "flasher",
            "missing: the backend kind (probe-rs, command, gdb, simulated)",
        ));
    }
    if !device.contains_key("chip") {
        return Err(err("chip", "missing: the device's chip"));
    }
    device.insert("flasher".into(), Value::Object(flasher.clone()));
    let cfg: DeviceConfig = deserialize(Value::Object(device)).map_err(|e| {
        // Inside the backend (an internally tagged enum, buffered by serde) the path ends at `flasher`: the backend's
        // own type names the key.
        if e.key == "flasher" {
            backend_error(&flasher).unwrap_or(e)
        } else {
            e
        }
    })?;
    cfg.check(mqtt_schema::TopicLayout::Namespaced)
        .map_err(|(key, reason)| err(&key, reason))?;
    if cfg
        .confirm
        .as_ref()
        .is_some_and(|c| c.kind == crate::config::ConfirmKind::Twin)
    {
        return Err(err(
            "confirm.kind",
            "\"twin\" reads another writer's report from edgecore's twin store, which DMI does not offer: use serial, memory or command",
        ));
    }
    Ok(cfg)
}

/// `T` from `value`, or the error with the config data key it is about: the first key of its path (the value is
/// flat), `configData` for the value as a whole (e.g. an unknown key, which the reason names).
fn deserialize<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, SettingsError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let key = match path.split('.').next() {
            Some(k) if !k.is_empty() && path != "." => k.to_owned(),
            _ => "configData".to_owned(),
        };
        err(&key, e.into_inner().to_string())
    })
}

/// The error of the backend's own settings (`flasher` = its kind, the other keys its fields), if it has one.
fn backend_error(flasher: &Map<String, Value>) -> Option<SettingsError> {
    let mut fields = flasher.clone();
    let kind = fields.remove("kind")?;
    let fields = Value::Object(fields);
    match kind.as_str()? {
        "probe-rs" => deserialize::<twinflash_flasher::ProbeRsConfig>(fields).err(),
        "command" => deserialize::<twinflash_flasher::CommandConfig>(fields).err(),
        "simulated" => deserialize::<twinflash_flasher::SimulatedConfig>(fields).err(),
        _ => None,
    }
}

/// One config data value as the TOML entry would hold it (see the module doc).
fn coerce(key: &str, value: Value) -> Result<Value, SettingsError> {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64()
                && i.unsigned_abs() > FLOAT32_EXACT as u64
            {
                return Err(err(
                    key,
                    format!(
                        "the number {i} is above 16777216: KubeEdge passes config data numbers through float32, so it may have lost digits; write it as a string, e.g. \"0x{i:x}\""
                    ),
                ));
            }
            Ok(Value::Number(n))
        }
        Value::String(s) if key != "chip" && key != "twin_prefix" && key != "flasher" => {
            if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))
                && !hex.is_empty()
                && let Ok(n) = u64::from_str_radix(hex, 16)
            {
                return Ok(Value::from(n));
            }
            if !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_digit())
                && let Ok(n) = s.parse::<u64>()
            {
                return Ok(Value::from(n));
            }
            if s.starts_with('[') || s.starts_with('{') {
                return serde_json::from_str(&s)
                    .map_err(|e| err(key, format!("not valid JSON: {e}")));
            }
            Ok(Value::String(s))
        }
        other => Ok(other),
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
