//! KubeEdge device-twin wire format and twinflash's firmware twin conventions.
//!
//! Wire-only: no I/O, no async. Encodes byte-identically to Go's `encoding/json` and decodes with
//! Go's semantics, so edgecore, mappers and twinflash read the same bytes the same way. Two helpers every twinflash
//! crate shares live here too: [`clip`] (untrusted strings in logs) and [`small_file`] (the one bounded reader of
//! key, certificate and password files, this crate's only I/O).

mod builders;
pub mod clip;
mod code;
pub mod firmware;
pub mod gojson;
mod serde_impls;
pub mod small_file;
pub mod topic;
mod types;
pub mod validate;

pub use builders::{
    FirmwareReport, actual_update, build_device_twin_delta, build_twin_get_result,
    device_twin_delta, intent, report, twin_get_request,
};
pub use code::{ErrorCode, UnknownErrorCode};
pub use firmware::{
    FirmwareRef, FirmwareRefError, FirmwareState, FirmwareStateError, RefKind, StateCode,
    TwinNames, firmware_intent, version_to_twin,
};
pub use gojson::{DecodeError, to_go_json};
pub use topic::{
    DeviceId, DeviceTopicKind, NodeTopicKind, Topic, TopicError, TopicLayout, UnknownTopicLayout,
};
pub use types::{
    AttrMap, BaseMessage, Device, DeviceAttrUpdate, DeviceCloudMsg, DeviceMsg, DeviceStateUpdate,
    DeviceTwinDelta, DeviceTwinDocument, DeviceTwinResult, DeviceTwinUpdate, DeviceUpdate,
    MembershipDetail, MembershipGetResult, MembershipUpdate, MsgAttr, MsgTwin, ResultMessage,
    TwinDoc, TwinGetRequest, TwinMap, TwinValue, TwinVersion, TypeMetadata, ValueMetadata,
    WireMessage,
};
pub use validate::{
    TwinUpdateError, ValueTypeError, unmarshal_device_twin_update, validate_device_twin_update,
};
