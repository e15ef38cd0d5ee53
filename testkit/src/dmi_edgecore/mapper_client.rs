//! edgecore's DMI client: one call to a mapper, made as grpc-go makes it ([`crate::grpc_go`]).

use std::path::PathBuf;

use prost::Message;
use twinflash_dmi::pb;

use super::MAPPER_CALL_DEADLINE;

/// A call edgecore's DMI client makes.
pub(super) enum MapperCall {
    Register(pb::Device),
    Update(pb::Device),
    Remove(String, String),
    CreateModel(pb::DeviceModel),
    UpdateModel(pb::DeviceModel),
    RemoveModel(String, String),
}

impl MapperCall {
    /// The request's protobuf bytes (prost's encoding of the generated types equals Go's: golden b01, c01, ...).
    fn encode(&self) -> Vec<u8> {
        match self {
            MapperCall::Register(d) => pb::RegisterDeviceRequest {
                device: Some(d.clone()),
            }
            .encode_to_vec(),
            MapperCall::Update(d) => pb::UpdateDeviceRequest {
                device: Some(d.clone()),
            }
            .encode_to_vec(),
            MapperCall::Remove(ns, name) => pb::RemoveDeviceRequest {
                device_name: name.clone(),
                device_namespace: ns.clone(),
            }
            .encode_to_vec(),
            MapperCall::CreateModel(m) => pb::CreateDeviceModelRequest {
                model: Some(m.clone()),
            }
            .encode_to_vec(),
            MapperCall::UpdateModel(m) => pb::UpdateDeviceModelRequest {
                model: Some(m.clone()),
            }
            .encode_to_vec(),
            MapperCall::RemoveModel(ns, name) => pb::RemoveDeviceModelRequest {
                model_name: name.clone(),
                model_namespace: ns.clone(),
            }
            .encode_to_vec(),
        }
    }

    pub(super) fn method(&self) -> &'static str {
        match self {
            MapperCall::Register(_) => "RegisterDevice",
            MapperCall::Update(_) => "UpdateDevice",
            MapperCall::Remove(..) => "RemoveDevice",
            MapperCall::CreateModel(_) => "CreateDeviceModel",
            MapperCall::UpdateModel(_) => "UpdateDeviceModel",
            MapperCall::RemoveModel(..) => "RemoveDeviceModel",
        }
    }
}

/// The `unix` socket path edgecore dials: the address bytes taken literally (e13: a `unix://` scheme is dialled
/// as part of the path, and fails).
fn socket_path(address: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(address))
}

/// One call on a new connection, closed afterwards, 10 s from the dial, fail-fast, no retry (spec §3, e15, e17),
/// made as edgecore's grpc-go makes it (h01: its headers, `:authority` the dialled path percent-encoded; see
/// [`crate::grpc_go`]). The answer's content is ignored (spec §1); the error is grpc-go's text.
pub(super) async fn call_mapper(address: &[u8], call: MapperCall) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + MAPPER_CALL_DEADLINE;
    let method = format!("/v1beta1.DeviceMapperService/{}", call.method());
    crate::grpc_go::unary(&socket_path(address), &method, &call.encode(), deadline)
        .await
        .map(drop)
        .map_err(|e| e.0)
}
