//! The KubeEdge device-twin messages (edge/pkg/devicetwin/dttype), shaped like the Go types.
//!
//! Go pointers are `Option`s (`None` = nil), Go maps are `BTreeMap`s (sorted like Go's encoder),
//! and a map or slice written without `omitempty` is an `Option` so that nil (`null`) and empty
//! (`{}`) stay distinct. Encode with [`WireMessage::encode`], decode with [`WireMessage::decode`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::gojson::{self, DecodeError, GoDecode, go_struct};

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Twins by name, as in `map[string]*MsgTwin`; a `None` entry is Go's nil (`"name": null`).
pub type TwinMap = BTreeMap<String, Option<MsgTwin>>;

/// Attributes by name, as in `map[string]*MsgAttr`.
pub type AttrMap = BTreeMap<String, Option<MsgAttr>>;

/// `dttype.BaseMessage`: the `event_id` and `timestamp` (Unix ms) every message starts with.
/// It is also the whole body of a `twin/get` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BaseMessage {
    /// Correlates a request with its result; edgecore uses a UUID, mappers often send "".
    pub event_id: String,
    /// Unix milliseconds.
    pub timestamp: i64,
}

impl BaseMessage {
    /// A base message with the given event id and timestamp (the caller owns clock and ids).
    pub fn new(event_id: impl Into<String>, timestamp: i64) -> Self {
        BaseMessage {
            event_id: event_id.into(),
            timestamp,
        }
    }
}

/// The body of a `twin/get` request: just a [`BaseMessage`].
pub type TwinGetRequest = BaseMessage;

/// `dttype.ValueMetadata`: when a value was set (omitted when 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ValueMetadata {
    /// Unix milliseconds; 0 is omitted.
    #[serde(skip_serializing_if = "is_zero")]
    pub timestamp: i64,
}

/// `dttype.TypeMetadata`: the twin's value type (`string`, `int`, `deleted`, ...; "" is omitted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeMetadata {
    /// The type name, JSON key `type`.
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub value_type: String,
}

impl TypeMetadata {
    /// Metadata with the given type name.
    pub fn new(value_type: impl Into<String>) -> Self {
        TypeMetadata {
            value_type: value_type.into(),
        }
    }
}

/// `dttype.TwinVersion`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TwinVersion {
    /// JSON `cloud`.
    pub cloud: i64,
    /// JSON `edge`.
    pub edge: i64,
}

/// `dttype.TwinValue`: a value and its metadata, both optional pointers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TwinValue {
    /// The value; `Some("")` is written as `"value":""`, `None` is omitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Value metadata; `Some(default)` is written as `"metadata":{}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ValueMetadata>,
}

impl TwinValue {
    /// A value without metadata.
    pub fn new(value: impl Into<String>) -> Self {
        TwinValue {
            value: Some(value.into()),
            metadata: None,
        }
    }

    /// The value, "" when absent (how edgecore compares values).
    pub fn value_or_empty(&self) -> &str {
        self.value.as_deref().unwrap_or("")
    }
}

/// `dttype.MsgTwin`: one twin property. Field order is the JSON key order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MsgTwin {
    /// The desired value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<TwinValue>,
    /// The reported value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<TwinValue>,
    /// Whether the twin may be deleted; `Some(false)` is written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    /// The value type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TypeMetadata>,
    /// Version of `expected` (edgecore strips it from results, deltas and documents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<TwinVersion>,
    /// Version of `actual`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual_version: Option<TwinVersion>,
}

impl MsgTwin {
    /// The type name from `metadata.type`, if any.
    pub fn value_type(&self) -> Option<&str> {
        self.metadata.as_ref().map(|m| m.value_type.as_str())
    }

    /// Whether edgecore considers this twin deleted (`metadata.type == "deleted"`).
    pub fn is_deleted(&self) -> bool {
        self.value_type() == Some(crate::validate::TYPE_DELETED)
    }

    /// The expected value, "" when absent.
    pub fn expected_value(&self) -> &str {
        self.expected.as_ref().map_or("", TwinValue::value_or_empty)
    }

    /// The actual value, "" when absent.
    pub fn actual_value(&self) -> &str {
        self.actual.as_ref().map_or("", TwinValue::value_or_empty)
    }
}

/// `dttype.MsgAttr`: a device attribute (`value` is always written).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MsgAttr {
    /// The value.
    pub value: String,
    /// Whether the attribute may be deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    /// The value type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TypeMetadata>,
}

/// `dttype.DeviceTwinUpdate` (topic `twin/update`). A `None` entry asks to delete that twin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceTwinUpdate {
    /// `event_id` and `timestamp`.
    #[serde(flatten)]
    pub base: BaseMessage,
    /// The twins to set; `None` is written as `"twin":null` (edgecore rejects it).
    pub twin: Option<TwinMap>,
}

impl DeviceTwinUpdate {
    /// The twin `name`, if present and not null.
    pub fn twin(&self, name: &str) -> Option<&MsgTwin> {
        self.twin.as_ref()?.get(name)?.as_ref()
    }
}

/// `dttype.DeviceTwinResult` (topics `twin/update/result` and `twin/get/result`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceTwinResult {
    /// `event_id` (the request's) and `timestamp`.
    #[serde(flatten)]
    pub base: BaseMessage,
    /// The twins.
    pub twin: Option<TwinMap>,
}

impl DeviceTwinResult {
    /// The twin `name`, if present and not null.
    pub fn twin(&self, name: &str) -> Option<&MsgTwin> {
        self.twin.as_ref()?.get(name)?.as_ref()
    }
}

/// `dttype.DeviceTwinDelta` (topic `twin/update/delta`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceTwinDelta {
    /// A fresh `event_id` and `timestamp`.
    #[serde(flatten)]
    pub base: BaseMessage,
    /// Every non-deleted twin with a non-empty expected value, versions stripped.
    pub twin: Option<TwinMap>,
    /// Twin name to expected value, for each twin whose expected differs from its actual.
    pub delta: Option<BTreeMap<String, String>>,
}

impl DeviceTwinDelta {
    /// The expected value the delta asks for, for twin `name`.
    pub fn wanted(&self, name: &str) -> Option<&str> {
        self.delta.as_ref()?.get(name).map(String::as_str)
    }

    /// The twin `name` as carried in the delta's `twin` map.
    pub fn twin(&self, name: &str) -> Option<&MsgTwin> {
        self.twin.as_ref()?.get(name)?.as_ref()
    }
}

/// `dttype.TwinDoc`: a twin before and after an update (`null` for added / deleted twins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TwinDoc {
    /// State before the update (JSON `last`).
    pub last: Option<MsgTwin>,
    /// State after the update (JSON `current`).
    pub current: Option<MsgTwin>,
}

/// `dttype.DeviceTwinDocument` (topic `twin/update/document`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceTwinDocument {
    /// The request's `event_id` and `timestamp`.
    #[serde(flatten)]
    pub base: BaseMessage,
    /// The changed twins.
    pub twin: Option<BTreeMap<String, Option<TwinDoc>>>,
}

/// `dttype.Result`: an error on a result topic (`code` and `reason` omitted when zero / empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ResultMessage {
    /// The request's `event_id` and a `timestamp`.
    #[serde(flatten)]
    pub base: BaseMessage,
    /// HTTP-like status, e.g. 400 or 404.
    #[serde(skip_serializing_if = "is_zero")]
    pub code: i64,
    /// Human-readable reason.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl ResultMessage {
    /// An error result as edgecore's `BuildErrorResult` makes it.
    pub fn error(base: BaseMessage, code: i64, reason: impl Into<String>) -> Self {
        ResultMessage {
            base,
            code,
            reason: reason.into(),
        }
    }
}

/// `dttype.DeviceUpdate` (topic `state/update`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceUpdate {
    /// `event_id` and `timestamp`.
    #[serde(flatten)]
    pub base: BaseMessage,
    /// online, offline, ok, unknown, unhealthy ("" omitted).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// Attributes (`null` when nil).
    pub attributes: Option<AttrMap>,
}

/// dmiserver's `DeviceStateUpdate`: its field has no JSON tag, so Go writes the key `State`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceStateUpdate {
    /// `event_id` and `timestamp`.
    #[serde(flatten)]
    pub base: BaseMessage,
    /// The state, JSON key `State`.
    #[serde(rename = "State")]
    pub state: String,
}

/// `dttype.Device` as carried by membership messages (every field `omitempty`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Device {
    /// `{namespace}/{name}` on current KubeEdge.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Device name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Description.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// State.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// Last time online (JSON `last_online`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_online: String,
    /// Attributes (omitted when empty).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: AttrMap,
    /// Twins (omitted when empty).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub twin: TwinMap,
}

/// `dttype.MembershipUpdate` (topic `membership/updated`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MembershipUpdate {
    /// `event_id` and `timestamp`.
    #[serde(flatten)]
    pub base: BaseMessage,
    /// Devices added to the node (`null` when nil).
    pub added_devices: Option<Vec<Device>>,
    /// Devices removed from the node (`null` when nil).
    pub removed_devices: Option<Vec<Device>>,
}

/// `dttype.MembershipGetResult` / `MembershipDetail` (topic `membership/get/result`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MembershipGetResult {
    /// The request's `event_id` and a `timestamp`.
    #[serde(flatten)]
    pub base: BaseMessage,
    /// The node's devices (edgecore always sends a list, possibly `[]`).
    pub devices: Option<Vec<Device>>,
}

/// `dttype.MembershipDetail`: the same shape as [`MembershipGetResult`].
pub type MembershipDetail = MembershipGetResult;

/// `dttype.DeviceCloudMsg`: the device inside a `state/update/result`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceCloudMsg {
    /// Device name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// State.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// RFC 3339 time, JSON key `lastOnlineTime`.
    #[serde(rename = "lastOnlineTime", skip_serializing_if = "String::is_empty")]
    pub last_online_time: String,
}

/// `dttype.DeviceMsg` (topic `state/update/result`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceMsg {
    /// `event_id` and `timestamp`.
    #[serde(flatten)]
    pub base: BaseMessage,
    /// The device's state.
    pub device: DeviceCloudMsg,
}

/// `dttype.DeviceAttrUpdate` (topic `$hw/events/device/{id}/updated`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceAttrUpdate {
    /// `event_id` and `timestamp`.
    #[serde(flatten)]
    pub base: BaseMessage,
    /// Changed attributes (`null` entry = deleted).
    pub attributes: Option<AttrMap>,
}

go_struct!(BaseMessage { "event_id" => event_id, "timestamp" => timestamp });
go_struct!(ValueMetadata { "timestamp" => timestamp });
go_struct!(TypeMetadata { "type" => value_type });
go_struct!(TwinVersion { "cloud" => cloud, "edge" => edge });
go_struct!(TwinValue { "value" => value, "metadata" => metadata });
go_struct!(MsgTwin {
    "expected" => expected,
    "actual" => actual,
    "optional" => optional,
    "metadata" => metadata,
    "expected_version" => expected_version,
    "actual_version" => actual_version,
});
go_struct!(MsgAttr { "value" => value, "optional" => optional, "metadata" => metadata });
go_struct!(DeviceTwinUpdate {
    "event_id" => base.event_id, "timestamp" => base.timestamp, "twin" => twin
});
go_struct!(DeviceTwinResult {
    "event_id" => base.event_id, "timestamp" => base.timestamp, "twin" => twin
});
go_struct!(DeviceTwinDelta {
    "event_id" => base.event_id, "timestamp" => base.timestamp, "twin" => twin, "delta" => delta
});
go_struct!(TwinDoc { "last" => last, "current" => current });
go_struct!(DeviceTwinDocument {
    "event_id" => base.event_id, "timestamp" => base.timestamp, "twin" => twin
});
go_struct!(ResultMessage {
    "event_id" => base.event_id, "timestamp" => base.timestamp, "code" => code, "reason" => reason
});
go_struct!(DeviceUpdate {
    "event_id" => base.event_id,
    "timestamp" => base.timestamp,
    "state" => state,
    "attributes" => attributes,
});
go_struct!(DeviceStateUpdate {
    "event_id" => base.event_id, "timestamp" => base.timestamp, "State" => state
});
go_struct!(Device {
    "id" => id,
    "name" => name,
    "description" => description,
    "state" => state,
    "last_online" => last_online,
    "attributes" => attributes,
    "twin" => twin,
});
go_struct!(MembershipUpdate {
    "event_id" => base.event_id,
    "timestamp" => base.timestamp,
    "added_devices" => added_devices,
    "removed_devices" => removed_devices,
});
go_struct!(MembershipGetResult {
    "event_id" => base.event_id, "timestamp" => base.timestamp, "devices" => devices
});
go_struct!(DeviceCloudMsg {
    "name" => name, "state" => state, "lastOnlineTime" => last_online_time
});
go_struct!(DeviceMsg {
    "event_id" => base.event_id, "timestamp" => base.timestamp, "device" => device
});
go_struct!(DeviceAttrUpdate {
    "event_id" => base.event_id, "timestamp" => base.timestamp, "attributes" => attributes
});

/// A message that travels as JSON bytes, encoded and decoded exactly like its Go counterpart.
pub trait WireMessage: Serialize + GoDecode {
    /// The bytes Go's `json.Marshal` writes for this value.
    fn encode(&self) -> Vec<u8> {
        gojson::to_go_json(self)
    }

    /// Decodes as Go's `json.Unmarshal` does; every input Go rejects is an error.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        gojson::decode(bytes)
    }
}

impl WireMessage for BaseMessage {}
impl WireMessage for DeviceTwinUpdate {}
impl WireMessage for DeviceTwinResult {}
impl WireMessage for DeviceTwinDelta {}
impl WireMessage for DeviceTwinDocument {}
impl WireMessage for ResultMessage {}
impl WireMessage for DeviceUpdate {}
impl WireMessage for DeviceStateUpdate {}
impl WireMessage for MembershipUpdate {}
impl WireMessage for MembershipGetResult {}
impl WireMessage for DeviceMsg {}
impl WireMessage for DeviceAttrUpdate {}
