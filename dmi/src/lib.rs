//! KubeEdge's DMI (Device Management Interface, v1beta1) as twinflash speaks it: gRPC over unix sockets between
//! edgecore and a device mapper (docs/kubeedge.md, section 11).
//!
//! - [`pb`]: the wire types and gRPC stubs, generated from `proto/v1beta1/api.proto` (KubeEdge's package, names and
//!   field numbers; only what twinflash uses). Every message field is optional there, as it is on the wire: that is
//!   what a decoder sees, and what edgecore's side (the test harness's stand-in) handles.
//! - [`mapper`]: what a mapper sends, as types that cannot be built incomplete. edgecore dereferences
//!   `Twin.observedDesired`, `Twin.reported` and `MapperRegisterRequest.mapper` without a check and dies of a nil
//!   pointer when one is missing; a [`mapper::TwinReport`] has both values as plain strings, a
//!   [`mapper::StatusReport`] has at least one twin, and registration always carries the mapper and `withData`.
//!   The workspace's clippy configuration forbids building the raw request types anywhere else.
//! - [`value`]: the `google.protobuf.Any` values of a Device's config data (KubeEdge's StringValue, FloatValue,
//!   BoolValue) as JSON.
//! - [`transport`]: serving on, and calling, a unix socket.

pub mod mapper;
pub mod transport;
pub mod value;

/// The generated DMI wire types (package `v1beta1`) and the gRPC client and server of both services.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::disallowed_types,
    missing_docs,
    unreachable_pub
)]
pub mod pb {
    tonic::include_proto!("v1beta1");
}

/// gRPC paths of the calls, as edgecore logs and the golden vectors name them.
pub mod method {
    /// The mapper registers with edgecore.
    pub const MAPPER_REGISTER: &str = "/v1beta1.DeviceManagerService/MapperRegister";
    /// The mapper reports twins.
    pub const REPORT_DEVICE_STATUS: &str = "/v1beta1.DeviceManagerService/ReportDeviceStatus";
    /// The mapper reports a device's reachability.
    pub const REPORT_DEVICE_STATES: &str = "/v1beta1.DeviceManagerService/ReportDeviceStates";
}
