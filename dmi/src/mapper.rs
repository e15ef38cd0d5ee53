//! What a DMI mapper sends to edgecore, as types that cannot be built incomplete, and the client that sends them.
//!
//! edgecore (v1.23.1, edge/pkg/devicetwin/dmiserver/server.go) takes `&twin.ObservedDesired.Value` and
//! `&twin.Reported.Value` of every twin, and `request.Mapper.Protocol`, without a nil check; a message without one of
//! them kills the whole edgecore process (golden e04a-c). Here a [`TwinReport`] holds both values as plain strings,
//! a [`StatusReport`] holds at least one twin, a [`StateReport`] holds a state edgecore accepts, and registration
//! always sends the [`MapperInfo`] with `withData = true` (without it edgecore creates no client for the mapper and
//! never calls it, golden a03). The raw request types of [`crate::pb`] are forbidden elsewhere by the workspace's
//! clippy configuration (`disallowed-types`).
//!
//! ```compile_fail
//! // A twin without its observedDesired value does not compile:
//! let t = twinflash_dmi::mapper::TwinReport { property: "firmware".into(), reported: "x".into() };
//! ```
//!
//! ```compile_fail
//! // Nor does a status report built without its twins (its fields are private):
//! let r = twinflash_dmi::mapper::StatusReport { namespace: "default".into(), name: "d".into(), twins: vec![] };
//! ```

#![allow(clippy::disallowed_types)] // the one place that builds the raw requests, from the checked types

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pb;

/// The mapper's registration: who it is and where edgecore reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapperInfo {
    name: String,
    version: String,
    protocol: String,
    address: PathBuf,
}

/// A registration that edgecore would store but never be able to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapperInfoError {
    /// An empty mapper name or protocol.
    #[error("the mapper's {0} must not be empty")]
    Empty(&'static str),
    /// The socket is not a plain absolute path (edgecore dials `unix://...` literally and fails, golden e13).
    #[error(
        "the mapper's socket {0:?} must be a plain absolute path without a scheme (edgecore cannot dial unix:// addresses)"
    )]
    Address(String),
}

impl MapperInfo {
    /// The mapper `name` (version `version`) of `protocol`, served on the unix socket `address`.
    pub fn new(
        name: &str,
        version: &str,
        protocol: &str,
        address: &Path,
    ) -> Result<MapperInfo, MapperInfoError> {
        if name.is_empty() {
            return Err(MapperInfoError::Empty("name"));
        }
        if protocol.is_empty() {
            return Err(MapperInfoError::Empty("protocol"));
        }
        let text = address.to_string_lossy();
        if !address.is_absolute() || text.contains("://") || text.starts_with("unix:") {
            return Err(MapperInfoError::Address(text.into_owned()));
        }
        Ok(MapperInfo {
            name: name.to_owned(),
            version: version.to_owned(),
            protocol: protocol.to_owned(),
            address: address.to_owned(),
        })
    }

    /// The protocol this mapper serves.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// The registration request: with data (the response carries every device and model of the protocol, the only
    /// catch-up after either side restarts) and the mapper's socket as a plain path.
    pub fn register_request(&self) -> pb::MapperRegisterRequest {
        pb::MapperRegisterRequest {
            with_data: true,
            mapper: Some(pb::MapperInfo {
                name: self.name.clone(),
                version: self.version.clone(),
                api_version: "v1beta1".into(),
                protocol: self.protocol.clone(),
                address: self.address.as_os_str().as_encoded_bytes().to_vec(),
                state: "ok".into(),
            }),
        }
    }
}

/// One twin of a report: the value the mapper observed as desired (`""` when it has none to say) and the reported
/// value. Both always go on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinReport {
    /// The Device property (`firmware`, `firmware-version`, `firmware-state`).
    pub property: String,
    /// The desired value the mapper acts on; edgecore stores it as the twin's `expected`.
    pub observed_desired: String,
    /// The value the device has; edgecore stores it as the twin's `actual`.
    pub reported: String,
}

/// A `ReportDeviceStatus` of one device: at least one twin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    namespace: String,
    name: String,
    twins: Vec<TwinReport>,
    at_ms: i64,
}

impl StatusReport {
    /// A report of `namespace/name` with `first` and `rest`, made at `at_ms` (Unix milliseconds, the metadata
    /// `timestamp` mapper-framework sends; edgecore ignores it).
    pub fn new(
        namespace: &str,
        name: &str,
        first: TwinReport,
        rest: impl IntoIterator<Item = TwinReport>,
        at_ms: i64,
    ) -> StatusReport {
        let mut twins = vec![first];
        twins.extend(rest);
        StatusReport {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            twins,
            at_ms,
        }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The twins.
    pub fn twins(&self) -> &[TwinReport] {
        &self.twins
    }

    /// The request as edgecore receives it. Every twin has both TwinProperty messages; a value carries the
    /// metadata `{timestamp, type: string}` as mapper-framework sends it (edgecore drops metadata, golden d02), an
    /// empty observedDesired is an empty message.
    pub fn request(&self) -> pb::ReportDeviceStatusRequest {
        let meta = || {
            BTreeMap::from([
                ("timestamp".to_owned(), self.at_ms.to_string()),
                ("type".to_owned(), "string".to_owned()),
            ])
        };
        let property = |value: &str| pb::TwinProperty {
            value: value.to_owned(),
            metadata: if value.is_empty() {
                BTreeMap::new()
            } else {
                meta()
            },
        };
        pb::ReportDeviceStatusRequest {
            device_name: self.name.clone(),
            device_namespace: self.namespace.clone(),
            reported_device: Some(pb::DeviceStatus {
                twins: self
                    .twins
                    .iter()
                    .map(|t| pb::Twin {
                        property_name: t.property.clone(),
                        observed_desired: Some(property(&t.observed_desired)),
                        reported: Some(pb::TwinProperty {
                            value: t.reported.clone(),
                            metadata: meta(),
                        }),
                    })
                    .collect(),
                report_to_cloud: false,
                report_cycle: 0,
            }),
        }
    }
}

/// A device's reachability, as edgecore accepts it (edge/pkg/devicetwin/dtmanager/device.go; anything else is
/// dropped silently, golden p04).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Reachable (edgecore records `lastOnlineTime`).
    Online,
    /// Not reachable.
    Offline,
    /// Reachable and healthy (edgecore records `lastOnlineTime`).
    Ok,
    /// Not known.
    Unknown,
    /// Reachable but not healthy.
    Unhealthy,
}

impl DeviceState {
    /// The string edgecore stores.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Online => "online",
            DeviceState::Offline => "offline",
            DeviceState::Ok => "ok",
            DeviceState::Unknown => "unknown",
            DeviceState::Unhealthy => "unhealthy",
        }
    }
}

/// A `ReportDeviceStates` of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateReport {
    /// The device's namespace.
    pub namespace: String,
    /// The device's name (edgecore refuses an empty one, golden e06).
    name: String,
    /// Its state.
    pub state: DeviceState,
}

impl StateReport {
    /// The state of `namespace/name`; None for an empty name.
    pub fn new(namespace: &str, name: &str, state: DeviceState) -> Option<StateReport> {
        (!name.is_empty()).then(|| StateReport {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            state,
        })
    }

    /// The request as edgecore receives it.
    pub fn request(&self) -> pb::ReportDeviceStatesRequest {
        pb::ReportDeviceStatesRequest {
            device_name: self.name.clone(),
            device_namespace: self.namespace.clone(),
            state: self.state.as_str().to_owned(),
        }
    }
}

/// A call to edgecore failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("edgecore's DMI server answered {code:?}: {message}")]
pub struct CallError {
    /// The gRPC status code (`Unavailable`: edgecore is down or restarting; `Unknown`: edgecore refused, e.g. its
    /// rate limit).
    pub code: tonic::Code,
    /// edgecore's message.
    pub message: String,
}

impl CallError {
    /// edgecore cannot be reached (down, restarting, no socket): register again once it answers.
    pub fn unavailable(&self) -> bool {
        matches!(
            self.code,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        )
    }

    /// edgecore's node-wide rate limit refused the call (golden e16).
    pub fn rate_limited(&self) -> bool {
        self.message.contains("too many request")
    }
}

impl From<tonic::Status> for CallError {
    fn from(s: tonic::Status) -> Self {
        CallError {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

/// The mapper's client of edgecore's DeviceManagerService on its `dmi.sock`: it sends only the checked types.
#[derive(Debug, Clone)]
pub struct EdgecoreClient {
    inner: pb::device_manager_service_client::DeviceManagerServiceClient<
        crate::transport::UnixConnector,
    >,
    timeout: Duration,
}

/// The largest answer the client decodes: MapperRegister's holds every Device and DeviceModel of the protocol
/// (about 0.8 KiB per simulated Device: 64 MiB is some 80,000 devices; gRPC's default of 4 MiB was about 5,500). A
/// larger answer fails the call with `OutOfRange` ("decoded message length too large").
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

impl EdgecoreClient {
    /// A client of the DMI server on `socket`; each call waits at most `timeout` (mapper-framework uses 1 s).
    pub fn new(socket: PathBuf, timeout: Duration) -> EdgecoreClient {
        EdgecoreClient {
            inner: pb::device_manager_service_client::DeviceManagerServiceClient::with_origin(
                crate::transport::UnixConnector::new(socket, timeout),
                crate::transport::origin(),
            )
            .max_decoding_message_size(MAX_ANSWER_BYTES),
            timeout,
        }
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        req
    }

    /// Registers the mapper with data: the answer holds every device of its protocol with its model.
    pub async fn register(
        &mut self,
        info: &MapperInfo,
    ) -> Result<pb::MapperRegisterResponse, CallError> {
        let req = self.request(info.register_request());
        let out = tokio::time::timeout(self.timeout, self.inner.mapper_register(req)).await;
        match out {
            Ok(r) => Ok(r?.into_inner()),
            Err(_) => Err(timeout()),
        }
    }

    /// Reports twins of one device.
    pub async fn report_status(&mut self, report: &StatusReport) -> Result<(), CallError> {
        let req = self.request(report.request());
        match tokio::time::timeout(self.timeout, self.inner.report_device_status(req)).await {
            Ok(r) => r.map(|_| ()).map_err(CallError::from),
            Err(_) => Err(timeout()),
        }
    }

    /// Reports the reachability of one device.
    pub async fn report_states(&mut self, report: &StateReport) -> Result<(), CallError> {
        let req = self.request(report.request());
        match tokio::time::timeout(self.timeout, self.inner.report_device_states(req)).await {
            Ok(r) => r.map(|_| ()).map_err(CallError::from),
            Err(_) => Err(timeout()),
        }
    }
}

fn timeout() -> CallError {
    CallError {
        code: tonic::Code::DeadlineExceeded,
        message: "no answer within the call's deadline".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_address_with_a_scheme_or_relative_is_refused() {
        for bad in ["unix:///var/lib/t.sock", "unix:/var/lib/t.sock", "t.sock"] {
            assert!(matches!(
                MapperInfo::new("twinflash", "0.1.0", "twinflash", Path::new(bad)),
                Err(MapperInfoError::Address(_))
            ));
        }
        assert!(MapperInfo::new("", "0.1.0", "twinflash", Path::new("/a.sock")).is_err());
        assert!(MapperInfo::new("twinflash", "0.1.0", "", Path::new("/a.sock")).is_err());
        let req = MapperInfo::new("twinflash", "0.1.0", "twinflash", Path::new("/a.sock"))
            .unwrap()
            .register_request();
        assert!(req.with_data);
        assert_eq!(req.mapper.unwrap().address, b"/a.sock");
    }

    #[test]
    fn a_state_report_needs_a_device_name() {
        assert!(StateReport::new("default", "", DeviceState::Online).is_none());
        assert_eq!(
            StateReport::new("default", "d", DeviceState::Unhealthy)
                .unwrap()
                .request()
                .state,
            "unhealthy"
        );
    }
}
