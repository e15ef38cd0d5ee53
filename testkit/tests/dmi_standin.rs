//! The DMI edgecore stand-in against KubeEdge's own behaviour: every behaviour golden vector of dmi/tests/data
//! (produced by KubeEdge v1.23.1's Go code; see README.md there) is a test named after it, in which the stand-in
//! does what the vector says edgecore did. A stub mapper (a DeviceMapperService served by twinflash's DMI transport
//! on a temp socket, recording the calls) plays the mapper, or, for the frames of a call (h01), a raw HTTP/2 server; reports go through twinflash_dmi's `EdgecoreClient`, or, for the malformed requests a
//! correct mapper cannot build, through the raw client.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The raw client and requests are needed to send what EdgecoreClient refuses to build (e02-e07, e13).
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use prost::Message;
use serde_json::{Value, json};
use twinflash_dmi::mapper::{
    DeviceState, EdgecoreClient, MapperInfo, StateReport, StatusReport, TwinReport,
};
use twinflash_dmi::pb;
use twinflash_dmi::pb::device_manager_service_client::DeviceManagerServiceClient;
use twinflash_dmi::pb::device_mapper_service_server::{
    DeviceMapperService, DeviceMapperServiceServer,
};
use twinflash_testkit::{DmiEdgecore, DmiLogKind};

const NEW: &str = "registry.local:5000/fw/blinky:1.4.2@sha256:98c66134049792d306ac83cef42f94bbebd970b95f54a26adc1120b4db8f5ad2";
const OLD: &str = "registry.local:5000/fw/blinky:1.4.1@sha256:5d46f53d9fa65c9b2ea381117133b7bb9cfde3905da307dad7d4576efc76859f";
const SETTLE: Duration = Duration::from_millis(300);

fn vector(name: &str) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dmi/tests/data");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}_"))
        })
        .unwrap_or_else(|| panic!("no vector {name}"));
    serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap()
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

/// One call a stub mapper received: method, `ns/name`, the request's bytes.
#[derive(Debug, Clone)]
struct Received {
    method: &'static str,
    target: String,
    bytes: Vec<u8>,
    at: Instant,
}

#[derive(Clone, Default)]
struct Stub {
    calls: Arc<Mutex<Vec<Received>>>,
    /// UpdateDevice of this device name takes this long (e17).
    slow: Arc<Mutex<Option<(String, Duration)>>>,
}

impl Stub {
    async fn record(&self, method: &'static str, ns: &str, name: &str, bytes: Vec<u8>) {
        self.calls.lock().unwrap().push(Received {
            method,
            target: format!("{ns}/{name}"),
            bytes,
            at: Instant::now(),
        });
        let slow = self.slow.lock().unwrap().clone();
        if let Some((n, d)) = slow
            && method == "UpdateDevice"
            && n == name
        {
            tokio::time::sleep(d).await;
        }
    }
}

fn dev_of(d: &Option<pb::Device>) -> (String, String) {
    let d = d.clone().unwrap_or_default();
    (d.namespace, d.name)
}

fn model_of(m: &Option<pb::DeviceModel>) -> (String, String) {
    let m = m.clone().unwrap_or_default();
    (m.namespace, m.name)
}

/// The stub's handlers: record the call, answer an empty response (edgecore ignores the content, spec §1);
/// GetDevice is Unimplemented (never called by edgecore 1.23, c04b).
macro_rules! recorded {
    ($($f:ident: $req:ty => $resp:ty, $method:literal, $target:expr;)*) => {
        #[tonic::async_trait]
        impl DeviceMapperService for Stub {
            $(async fn $f(
                &self,
                r: tonic::Request<$req>,
            ) -> Result<tonic::Response<$resp>, tonic::Status> {
                let r = r.into_inner();
                let (ns, name): (String, String) = ($target)(&r);
                self.record($method, &ns, &name, r.encode_to_vec()).await;
                Ok(tonic::Response::new(<$resp>::default()))
            })*

            async fn get_device(
                &self,
                _: tonic::Request<pb::GetDeviceRequest>,
            ) -> Result<tonic::Response<pb::GetDeviceResponse>, tonic::Status> {
                Err(tonic::Status::unimplemented("never called by edgecore 1.23"))
            }
        }
    };
}

recorded! {
        register_device: pb::RegisterDeviceRequest => pb::RegisterDeviceResponse, "RegisterDevice",
            |r: &pb::RegisterDeviceRequest| dev_of(&r.device);
        update_device: pb::UpdateDeviceRequest => pb::UpdateDeviceResponse, "UpdateDevice",
            |r: &pb::UpdateDeviceRequest| dev_of(&r.device);
        remove_device: pb::RemoveDeviceRequest => pb::RemoveDeviceResponse, "RemoveDevice",
            |r: &pb::RemoveDeviceRequest| (r.device_namespace.clone(), r.device_name.clone());
        create_device_model: pb::CreateDeviceModelRequest => pb::CreateDeviceModelResponse,
            "CreateDeviceModel", |r: &pb::CreateDeviceModelRequest| model_of(&r.model);
        update_device_model: pb::UpdateDeviceModelRequest => pb::UpdateDeviceModelResponse,
            "UpdateDeviceModel", |r: &pb::UpdateDeviceModelRequest| model_of(&r.model);
        remove_device_model: pb::RemoveDeviceModelRequest => pb::RemoveDeviceModelResponse,
            "RemoveDeviceModel",
            |r: &pb::RemoveDeviceModelRequest| (r.model_namespace.clone(), r.model_name.clone());
}

/// A stub mapper serving on a socket; stopping it removes the socket (e15).
struct StubMapper {
    stub: Stub,
    socket: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StubMapper {
    fn start(socket: &Path) -> StubMapper {
        let mut m = StubMapper {
            stub: Stub::default(),
            socket: socket.to_owned(),
            task: None,
        };
        m.serve();
        m
    }

    /// Serves with twinflash's own DMI transport: the stub is the mapper, twinflash's side of the wire (tonic's
    /// transport refuses grpc-go's `:authority`, h01).
    fn serve(&mut self) {
        let incoming = twinflash_dmi::transport::bind(&self.socket).unwrap();
        let svc = DeviceMapperServiceServer::new(self.stub.clone());
        self.task = Some(tokio::spawn(twinflash_dmi::transport::serve(
            incoming,
            svc,
            std::future::pending(),
        )));
    }

    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    fn calls(&self) -> Vec<Received> {
        self.stub.calls.lock().unwrap().clone()
    }

    fn methods(&self) -> Vec<(&'static str, String)> {
        self.calls()
            .into_iter()
            .map(|c| (c.method, c.target))
            .collect()
    }

    fn bytes_of(&self, method: &str, target: &str) -> Vec<Vec<u8>> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method && c.target == target)
            .map(|c| c.bytes)
            .collect()
    }
}

impl Drop for StubMapper {
    fn drop(&mut self) {
        self.stop();
    }
}

struct World {
    _dir: tempfile::TempDir,
    ec: DmiEdgecore,
    mapper: StubMapper,
    client: EdgecoreClient,
    info: MapperInfo,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let ec = DmiEdgecore::start_in(&dir.path().join("kubeedge"))
        .await
        .unwrap();
    let sock = dir.path().join("mapper/dmi.sock");
    let mapper = StubMapper::start(&sock);
    let client = EdgecoreClient::new(ec.socket(), Duration::from_secs(5));
    let info = MapperInfo::new("twinflash", "0.1.0", "twinflash", &sock).unwrap();
    World {
        _dir: dir,
        ec,
        mapper,
        client,
        info,
    }
}

impl World {
    async fn register(&mut self) -> pb::MapperRegisterResponse {
        self.client.register(&self.info).await.unwrap()
    }

    fn raw(&self) -> DeviceManagerServiceClient<twinflash_dmi::transport::UnixConnector> {
        DeviceManagerServiceClient::with_origin(
            twinflash_dmi::transport::UnixConnector::new(self.ec.socket(), Duration::from_secs(5)),
            twinflash_dmi::transport::origin(),
        )
    }

    /// The mapper of `info`, registered with `withData` and an address given as text (e13).
    async fn register_raw(&self, with_data: bool, address: &str) -> pb::MapperRegisterResponse {
        let req = pb::MapperRegisterRequest {
            with_data,
            mapper: Some(pb::MapperInfo {
                name: "twinflash".into(),
                version: "0.1.0".into(),
                api_version: "v1beta1".into(),
                protocol: "twinflash".into(),
                address: address.as_bytes().to_vec(),
                state: "ok".into(),
            }),
        };
        self.raw().mapper_register(req).await.unwrap().into_inner()
    }

    async fn report(&mut self, ns: &str, name: &str, twins: &[(&str, &str, &str)]) {
        let mut t = twins.iter().map(|(p, od, rep)| TwinReport {
            property: (*p).into(),
            observed_desired: (*od).into(),
            reported: (*rep).into(),
        });
        let first = t.next().unwrap();
        let report = StatusReport::new(ns, name, first, t, 1_700_000_000_000);
        self.client.report_status(&report).await.unwrap();
    }
}

fn c01() -> Value {
    vector("c01")
}

fn model() -> Value {
    c01()["input"]["model"].clone()
}

fn blinky1() -> Value {
    c01()["input"]["device"].clone()
}

/// A copy of blinky-1 named `name` (with `desired` as the firmware's desired value).
fn blinky(name: &str, desired: &str) -> Value {
    let mut d = blinky1();
    d["metadata"]["name"] = json!(name);
    d["spec"]["properties"][0]["desired"]["value"] = json!(desired);
    d
}

fn stored_twin_json(ec: &DmiEdgecore, name: &str) -> Value {
    serde_json::from_slice(&mqtt_schema::to_go_json(&ec.twin("default", name))).unwrap()
}

/// The twins of a sync as JSON with the timestamps zeroed (edgecore's clock), for comparing with a vector.
fn without_timestamps(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if let Some(ts) = m.get_mut("timestamp") {
                    *ts = json!(0);
                }
                m.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// The twins of the `edge_updated` messages a p-vector shows going to the cloud, merged by twin name.
fn cloud_twins_of(p: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for e in p["output"]["emitted_in_order"].as_array().unwrap() {
        if e["resource"]
            .as_str()
            .unwrap()
            .ends_with("/twin/edge_updated")
        {
            let content: Value = serde_json::from_str(e["content"].as_str().unwrap()).unwrap();
            for (k, v) in content["twin"].as_object().unwrap() {
                out.insert(k.clone(), without_timestamps(v.clone()));
            }
        }
    }
    out
}

/// The twins of the stand-in's syncs since sync number `from`, merged by twin name (each sync has one twin).
fn synced_twins(ec: &DmiEdgecore, from: usize) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for s in ec.cloud_syncs().into_iter().skip(from) {
        let v: Value = serde_json::from_slice(&s.json).unwrap();
        for (k, t) in v["twin"].as_object().unwrap() {
            out.insert(k.clone(), without_timestamps(t.clone()));
        }
    }
    out
}

/// The report of a p-vector's input, through the checked client.
async fn report_input(w: &mut World, p: &Value) {
    let input = &p["input"];
    let twins: Vec<(String, String, String)> = input["reportedDevice"]["twins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["propertyName"].as_str().unwrap().to_owned(),
                t["observedDesired"]["value"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                t["reported"]["value"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let refs: Vec<(&str, &str, &str)> = twins
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    w.report(
        input["deviceNamespace"].as_str().unwrap(),
        input["deviceName"].as_str().unwrap(),
        &refs,
    )
    .await;
}

async fn wait_applied(ec: &DmiEdgecore, n: u64) {
    twinflash_testkit::wait_until(
        || ec.counters().twins_applied + ec.counters().twins_rejected >= n,
        || ec.dump(),
    )
    .await;
}

/// The registered world with blinky-model and blinky-1 delivered (b01, c01).
async fn delivered() -> World {
    let mut w = world().await;
    w.register().await;
    w.ec.apply_model(&model());
    w.ec.apply_device(&blinky1());
    w.ec.wait_idle().await;
    w
}

#[tokio::test]
async fn b01_c01_model_and_device_insert_reach_the_mapper_as_go_encodes_them() {
    let w = delivered().await;
    assert_eq!(
        w.mapper.methods(),
        vec![
            ("CreateDeviceModel", "default/blinky-model".to_owned()),
            ("RegisterDevice", "default/blinky-1".to_owned()),
        ]
    );
    assert_eq!(
        w.mapper
            .bytes_of("CreateDeviceModel", "default/blinky-model"),
        vec![b64(&vector("b01")["payload_b64"])]
    );
    assert_eq!(
        w.mapper.bytes_of("RegisterDevice", "default/blinky-1"),
        vec![b64(&c01()["payload_b64"])]
    );
}

#[tokio::test]
async fn c02_b02_a_desired_change_is_device_update_alone_and_a_model_message_is_model_update() {
    let w = delivered().await;
    let c02 = vector("c02");
    w.ec.apply_device(&c02["input"]["device"]);
    w.ec.wait_idle().await;
    let m = w.mapper.methods();
    // UpdateDevice alone: cloudhub drops the model message of an unchanged model (issue 22's real run; the stand-in's
    // apply_device).
    assert_eq!(m[2..], [("UpdateDevice", "default/blinky-1".to_owned())]);
    assert_eq!(
        w.mapper.bytes_of("UpdateDevice", "default/blinky-1"),
        vec![b64(&c02["payload_b64"])]
    );
    // A model message that reaches edgecore is passed on as UpdateDeviceModel, always (b02).
    w.ec.apply_model(&model());
    w.ec.wait_idle().await;
    assert_eq!(
        w.mapper
            .bytes_of("UpdateDeviceModel", "default/blinky-model"),
        vec![b64(&vector("b02")["payload_b64"])]
    );
}

#[tokio::test]
async fn c03_update_device_not_sent_when_spec_unchanged() {
    let w = delivered().await;
    w.ec.apply_device(&vector("c02")["input"]["device"]);
    w.ec.wait_idle().await;
    let before = w.mapper.bytes_of("UpdateDevice", "default/blinky-1").len();
    assert_eq!(before, 1);
    let c03 = vector("c03");
    w.ec.apply_device(&c03["input"]["update_1_labels_status_resourceVersion_only"]);
    w.ec.apply_device(&c03["input"]["update_2_properties_reordered"]);
    w.ec.wait_idle().await;
    assert_eq!(
        w.mapper.bytes_of("UpdateDevice", "default/blinky-1").len(),
        1,
        "{:?}",
        w.mapper.methods()
    );
    assert_eq!(w.ec.logged(DmiLogKind::Skipped).len(), 2);
}

#[tokio::test]
async fn c04_delete_of_the_last_device_removes_the_model_first() {
    let w = delivered().await;
    w.ec.apply_device(&blinky("blinky-2", OLD));
    w.ec.wait_idle().await;
    w.ec.delete_device("default", "blinky-2");
    w.ec.wait_idle().await;
    assert_eq!(
        w.mapper.methods().last().unwrap(),
        &("RemoveDevice", "default/blinky-2".to_owned()),
        "blinky-1 still uses the model"
    );
    assert!(w.ec.twin("default", "blinky-2").is_empty());
    let n = w.mapper.calls().len();
    w.ec.delete_device("default", "blinky-1");
    w.ec.wait_idle().await;
    assert_eq!(
        w.mapper.methods()[n..],
        [
            ("RemoveDeviceModel", "default/blinky-model".to_owned()),
            ("RemoveDevice", "default/blinky-1".to_owned()),
        ]
    );
    assert_eq!(
        w.mapper.bytes_of("RemoveDevice", "default/blinky-1"),
        vec![b64(&vector("c04")["payload_b64"])]
    );
    assert!(w.ec.cached_devices().is_empty() && w.ec.cached_models().is_empty());
    // Added again: cloudcore sends the model first, as for any first device of a model on the node.
    let n = w.mapper.calls().len();
    w.ec.apply_device(&blinky1());
    w.ec.wait_idle().await;
    assert_eq!(
        w.mapper.methods()[n..],
        [
            ("CreateDeviceModel", "default/blinky-model".to_owned()),
            ("RegisterDevice", "default/blinky-1".to_owned()),
        ]
    );
}

#[tokio::test]
async fn c05_register_device_request_model_defaults_override() {
    let mut w = world().await;
    w.register().await;
    let c05 = vector("c05");
    w.ec.apply_model(&c05["input"]["model"]);
    w.ec.apply_device(&c05["input"]["device"]);
    w.ec.wait_idle().await;
    assert_eq!(
        w.mapper.bytes_of("RegisterDevice", "default/blinky-3"),
        vec![b64(&c05["payload_b64"])]
    );
}

/// The cloud objects edgecore held in a02 (blinky-model, blinky-1, blinky-2; thermo-model, thermo-1 of modbus).
fn cache_of_a02(ec: &DmiEdgecore, a02: &Value) {
    for obj in a02["input"]["edgecore_cache_from_cloud"]
        .as_array()
        .unwrap()
    {
        if obj["kind"] == "DeviceModel" {
            ec.apply_model(obj);
        } else {
            ec.apply_device(obj);
        }
    }
}

#[tokio::test]
async fn a02_mapper_register_with_data_returns_every_device_of_the_protocol_with_its_model() {
    let mut w = world().await;
    let a02 = vector("a02");
    cache_of_a02(&w.ec, &a02);
    w.ec.wait_idle().await;
    assert!(w.mapper.calls().is_empty(), "no client before registration");
    let got = w.register().await;
    let want = pb::MapperRegisterResponse::decode(b64(&a02["payload_b64"]).as_slice()).unwrap();
    let pairs = |r: &pb::MapperRegisterResponse| {
        let mut p: Vec<(Vec<u8>, Vec<u8>)> = r
            .device_list
            .iter()
            .zip(&r.model_list)
            .map(|(d, m)| (d.encode_to_vec(), m.encode_to_vec()))
            .collect();
        p.sort();
        p
    };
    assert_eq!(got.device_list.len(), 2, "thermo-1 is modbus");
    assert_eq!(got.model_list.len(), 2, "one model per device, repeated");
    assert_eq!(
        pairs(&got),
        pairs(&want),
        "the same devices and models, up to the order"
    );
    assert_eq!(
        w.ec.mappers()["twinflash"].address,
        w.info.register_request().mapper.unwrap().address
    );
}

#[tokio::test]
async fn a03_mapper_register_without_data_answers_nothing_and_creates_no_client() {
    let w = world().await;
    w.ec.apply_model(&model());
    w.ec.apply_device(&blinky1());
    w.ec.wait_idle().await;
    let r = w
        .register_raw(false, &w.mapper.socket.display().to_string())
        .await;
    assert_eq!(r, pb::MapperRegisterResponse::default());
    assert!(r.encode_to_vec().is_empty(), "a03: zero bytes");
    w.ec.apply_device(&blinky("blinky-1", NEW));
    w.ec.wait_idle().await;
    assert!(w.mapper.calls().is_empty());
}

#[tokio::test]
async fn e01_before_register_no_dmi_client() {
    let mut w = world().await;
    let a02 = vector("a02");
    cache_of_a02(&w.ec, &a02);
    w.ec.wait_idle().await;
    w.register_raw(false, &w.mapper.socket.display().to_string())
        .await;
    w.ec.apply_model(&model()); // devicemodel update blinky-model
    w.ec.wait_idle().await;
    assert!(w.mapper.calls().is_empty(), "rpcs_sent 0");
    let failed = w.ec.logged(DmiLogKind::CallFailed);
    for (what, protocol) in [
        ("CreateDeviceModel default/blinky-model", "twinflash"),
        ("RegisterDevice default/blinky-1", "twinflash"),
        ("RegisterDevice default/blinky-2", "twinflash"),
        ("CreateDeviceModel default/thermo-model", "modbus"),
        ("RegisterDevice default/thermo-1", "modbus"),
        ("UpdateDeviceModel default/blinky-model", "twinflash"),
    ] {
        let want = format!("fail to get dmi client of protocol {protocol}");
        assert!(
            failed
                .iter()
                .any(|l| l.starts_with(what) && l.ends_with(&want)),
            "{what}: {failed:#?}"
        );
    }
    // Lost, except through the next registration with data.
    let r = w.register().await;
    assert_eq!(r.device_list.len(), 2);
}

/// The error of the vector: gRPC code Unknown (plain Go errors) and its exact message.
fn assert_refused_as(err: tonic::Status, name: &str) {
    assert_eq!(err.code(), tonic::Code::Unknown);
    assert_eq!(err.message(), vector(name)["error"]["message"]);
}

fn status_of_blinky2(reported_device: Option<pb::DeviceStatus>) -> pb::ReportDeviceStatusRequest {
    pb::ReportDeviceStatusRequest {
        device_name: "blinky-2".into(),
        device_namespace: "default".into(),
        reported_device,
    }
}

fn states_request(name: &str, state: &str) -> pb::ReportDeviceStatesRequest {
    pb::ReportDeviceStatesRequest {
        device_name: name.into(),
        device_namespace: "default".into(),
        state: state.into(),
    }
}

#[tokio::test]
async fn e02_report_device_status_without_reported_device() {
    let w = world().await;
    let err = w.raw().report_device_status(status_of_blinky2(None)).await;
    assert_refused_as(err.unwrap_err(), "e02");
}

#[tokio::test]
async fn e03_report_device_status_zero_twins() {
    let w = world().await;
    let empty = Some(pb::DeviceStatus::default());
    let err = w.raw().report_device_status(status_of_blinky2(empty)).await;
    assert_refused_as(err.unwrap_err(), "e03");
}

/// A crash: the caller sees Unavailable, the socket is gone, later calls fail, and a restart serves the same
/// store again (the mapper must register again to get a client).
async fn crashes(w: &mut World, call: impl AsyncFnOnce(&World) -> tonic::Status) {
    w.ec.apply_model(&model());
    w.ec.apply_device(&blinky1());
    w.ec.wait_idle().await;
    w.register().await;
    let status = call(&*w).await;
    // grpc-go reports the dropped connection as Unavailable "error reading from server: EOF" (e04); tonic reports
    // the same death as Unknown "transport error" (hyper: connection reset), with no message of edgecore's.
    assert!(
        status.code() == tonic::Code::Unavailable
            || (status.code() == tonic::Code::Unknown && status.message() == "transport error"),
        "{status:?}"
    );
    assert_eq!(w.ec.counters().crashes, 1);
    assert!(!w.ec.is_running());
    assert!(!w.ec.socket().exists(), "the socket is gone");
    let later = w.client.register(&w.info).await.unwrap_err();
    assert!(later.unavailable(), "{later:?}");
    assert_eq!(w.ec.logged(DmiLogKind::Crash).len(), 1);
    // Stays down until restart; then the store is there and the mapper's re-registration catches up.
    w.ec.restart().await.unwrap();
    let r = w.register().await;
    assert_eq!(r.device_list.len(), 1);
    assert!(w.ec.mappers().contains_key("twinflash"));
}

#[tokio::test]
async fn e04a_report_device_status_twin_without_observed_desired_crashes_edgecore() {
    let mut w = world().await;
    crashes(&mut w, async |w: &World| {
        w.raw()
            .report_device_status(pb::ReportDeviceStatusRequest {
                device_name: "blinky-1".into(),
                device_namespace: "default".into(),
                reported_device: Some(pb::DeviceStatus {
                    twins: vec![pb::Twin {
                        property_name: "firmware-state".into(),
                        observed_desired: None,
                        reported: Some(pb::TwinProperty {
                            value: "idle".into(),
                            metadata: BTreeMap::new(),
                        }),
                    }],
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err()
    })
    .await;
    assert!(
        w.ec.twin("default", "blinky-1").is_empty(),
        "nothing applied"
    );
}

#[tokio::test]
async fn e04b_report_device_status_twin_without_reported_crashes_edgecore() {
    let mut w = world().await;
    crashes(&mut w, async |w: &World| {
        w.raw()
            .report_device_status(pb::ReportDeviceStatusRequest {
                device_name: "blinky-1".into(),
                device_namespace: "default".into(),
                reported_device: Some(pb::DeviceStatus {
                    twins: vec![pb::Twin {
                        property_name: "firmware".into(),
                        observed_desired: Some(pb::TwinProperty {
                            value: NEW.into(),
                            metadata: BTreeMap::new(),
                        }),
                        reported: None,
                    }],
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err()
    })
    .await;
}

#[tokio::test]
async fn e04c_mapper_register_without_mapper_crashes_edgecore() {
    let mut w = world().await;
    crashes(&mut w, async |w: &World| {
        w.raw()
            .mapper_register(pb::MapperRegisterRequest {
                with_data: true,
                mapper: None,
            })
            .await
            .unwrap_err()
    })
    .await;
}

#[tokio::test]
async fn e05_report_device_states_empty_state() {
    let w = world().await;
    let err = w
        .raw()
        .report_device_states(states_request("blinky-2", ""))
        .await;
    assert_refused_as(err.unwrap_err(), "e05");
}

#[tokio::test]
async fn e06_report_device_states_empty_device_name() {
    let w = world().await;
    let err = w
        .raw()
        .report_device_states(states_request("", "online"))
        .await;
    assert_refused_as(err.unwrap_err(), "e06");
}

#[tokio::test]
async fn e07_mapper_register_empty_protocol() {
    let w = world().await;
    let err = w
        .raw()
        .mapper_register(pb::MapperRegisterRequest {
            with_data: true,
            mapper: Some(pb::MapperInfo {
                name: "twinflash".into(),
                address: b"/var/lib/twinflash/dmi.sock".to_vec(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_refused_as(err, "e07");
    assert!(w.ec.mappers().is_empty(), "nothing stored");
}

#[tokio::test]
async fn e08_p05_a_value_outside_the_charset_is_accepted_by_dmi_and_dropped_by_the_twin_module() {
    let mut w = delivered().await;
    w.report(
        "default",
        "blinky-1",
        &[("firmware-state", "", "failed: flash error")],
    )
    .await;
    wait_applied(&w.ec, 1).await;
    let p05 = vector("p05");
    let reason: Value = serde_json::from_str(
        p05["output"]["emitted_in_order"][0]["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let rejected = w.ec.logged(DmiLogKind::Rejected400);
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0].contains(reason["reason"].as_str().unwrap())
            && rejected[0].starts_with("$hw/events/device//twin/update/result code 400"),
        "{rejected:?}"
    );
    assert!(w.ec.twin("default", "blinky-1").is_empty());
    assert!(w.ec.cloud_syncs().is_empty());
}

#[tokio::test]
async fn e09_p06_an_unknown_device_is_accepted_by_dmi_and_gets_404_on_mqtt_only() {
    let mut w = delivered().await;
    w.report(
        "default",
        "no-such-device",
        &[("firmware-state", "", "idle")],
    )
    .await;
    wait_applied(&w.ec, 1).await;
    let rejected = w.ec.logged(DmiLogKind::Rejected404);
    assert_eq!(
        rejected,
        vec![
            "$hw/events/device/default/no-such-device/twin/update/result code 404: update rejected due to the device is not existed"
        ]
    );
    assert!(w.ec.cloud_syncs().is_empty());
}

#[tokio::test]
async fn e10_p04_an_unknown_state_is_accepted_by_dmi_and_dropped() {
    let mut w = delivered().await;
    let req = pb::ReportDeviceStatesRequest {
        device_name: "blinky-1".into(),
        device_namespace: "default".into(),
        state: "flashing".into(),
    };
    w.raw().report_device_states(req).await.unwrap();
    twinflash_testkit::wait_until(
        || !w.ec.logged(DmiLogKind::StateDropped).is_empty(),
        || w.ec.dump(),
    )
    .await;
    assert_eq!(w.ec.state("default", "blinky-1"), None);
    assert!(w.ec.state_syncs().is_empty());
    // An accepted one goes through (compared lower-case).
    let ok = StateReport::new("default", "blinky-1", DeviceState::Offline).unwrap();
    w.client.report_states(&ok).await.unwrap();
    twinflash_testkit::wait_until(
        || w.ec.state("default", "blinky-1").is_some(),
        || w.ec.dump(),
    )
    .await;
}

#[tokio::test]
async fn e11_config_data_nested_object_not_convertible() {
    let mut w = delivered().await;
    let e11 = vector("e11");
    w.ec.apply_device(&e11["input"]);
    w.ec.wait_idle().await;
    assert!(
        w.mapper
            .bytes_of("RegisterDevice", "default/blinky-nested")
            .is_empty()
    );
    let want = e11["error"]["message"].as_str().unwrap();
    assert!(
        w.ec.logged(DmiLogKind::Skipped)
            .iter()
            .any(|l| l.contains("add device blinky-nested failed") && l.contains(want)),
        "{}",
        w.ec.dump()
    );
    let r = w.register().await;
    let names: Vec<_> = r.device_list.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["blinky-1"], "left out of MapperRegister too");
}

#[tokio::test]
async fn e12_device_model_not_in_cache() {
    let mut w = delivered().await;
    w.ec.apply_device(&vector("e12")["input"]);
    w.ec.wait_idle().await;
    assert!(
        w.mapper
            .bytes_of("RegisterDevice", "default/blinky-orphan")
            .is_empty()
    );
    assert!(
        w.ec.logged(DmiLogKind::Skipped).iter().any(|l| l
            .contains("device model missing-model not found in cache for device blinky-orphan")),
        "{}",
        w.ec.dump()
    );
    let r = w.register().await;
    assert_eq!(r.device_list.len(), 1, "left out");
    assert!(
        w.ec.cached_devices().contains("default/blinky-orphan"),
        "still cached"
    );
    // It appears once its model arrives and the mapper registers again.
    let mut m = model();
    m["metadata"]["name"] = json!("missing-model");
    w.ec.apply_model(&m);
    w.ec.wait_idle().await;
    assert_eq!(w.register().await.device_list.len(), 2);
}

#[tokio::test]
async fn e13_mapper_address_forms() {
    let w = delivered().await;
    let plain = w.mapper.socket.display().to_string();
    for (address, reaches) in [
        (format!("unix://{plain}"), false),
        (format!("unix:{plain}"), false),
        (plain.clone(), true),
    ] {
        w.register_raw(true, &address).await;
        let n = w.mapper.calls().len();
        w.ec.apply_device(&blinky("blinky-1", &format!("{NEW}-{}", address.len())));
        w.ec.wait_idle().await;
        let got = w.mapper.calls()[n..]
            .iter()
            .map(|c| c.method)
            .collect::<Vec<_>>();
        if reaches {
            assert_eq!(got, ["UpdateDevice"], "{address}");
        } else {
            assert!(got.is_empty(), "{address}: {got:?}");
            let failed = w.ec.logged(DmiLogKind::CallFailed);
            assert!(
                failed.last().unwrap().contains(&format!(
                    "dial unix {address}: connect: no such file or directory"
                )),
                "{failed:?}"
            );
        }
    }
}

#[tokio::test]
async fn e14_restart_reconnect_check_is_a_noop() {
    let mut w = delivered().await;
    // A second mapper whose socket does not exist.
    let ghost = MapperInfo::new(
        "ghost",
        "0.1.0",
        "ghost-protocol",
        Path::new("/nonexistent/ghost.sock"),
    )
    .unwrap();
    w.client.register(&ghost).await.unwrap();
    w.ec.restart().await.unwrap();
    tokio::time::sleep(SETTLE).await;
    let n = w.mapper.calls().len();
    assert_eq!(
        n,
        2,
        "no device pushed after the restart: {:?}",
        w.mapper.methods()
    );
    // Both saved mappers got a client again: calls go out (and the ghost's fails at the dial, not for lack of a
    // client).
    let mut g = blinky("ghost-1", NEW);
    g["spec"]["protocol"]["protocolName"] = json!("ghost-protocol");
    w.ec.apply_device(&g);
    w.ec.apply_device(&blinky("blinky-1", NEW));
    w.ec.wait_idle().await;
    let failed = w.ec.logged(DmiLogKind::CallFailed);
    assert!(
        failed
            .iter()
            .any(|l| l.contains("ghost-1") && l.contains("dial unix /nonexistent/ghost.sock")),
        "{failed:?}"
    );
    assert_eq!(
        w.mapper.bytes_of("UpdateDevice", "default/blinky-1").len(),
        1
    );
}

#[tokio::test]
async fn e15_mapper_down() {
    let mut w = delivered().await;
    w.mapper.stop();
    let update = blinky("blinky-1", NEW);
    w.ec.apply_device(&update);
    w.ec.wait_idle().await;
    assert!(
        w.ec.logged(DmiLogKind::CallFailed)
            .iter()
            .any(|l| l.starts_with("UpdateDevice default/blinky-1")
                && l.contains("no such file or directory")),
        "{}",
        w.ec.dump()
    );
    w.mapper.serve();
    // The same spec again is suppressed: the cache already holds it.
    w.ec.apply_device(&update);
    w.ec.wait_idle().await;
    assert!(
        w.mapper
            .bytes_of("UpdateDevice", "default/blinky-1")
            .is_empty()
    );
    // Only MapperRegister catches up.
    let r = w.register().await;
    assert_eq!(
        r.device_list[0].spec.as_ref().unwrap().properties[0]
            .desired
            .as_ref()
            .unwrap()
            .value,
        NEW
    );
}

#[tokio::test]
async fn e16_rate_limit() {
    let w = delivered().await;
    let mut raw = w.raw();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..130 {
        let req = pb::ReportDeviceStatesRequest {
            device_name: "blinky-2".into(),
            device_namespace: "default".into(),
            state: "online".into(),
        };
        match raw.report_device_states(req).await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unknown);
                assert_eq!(e.message(), vector("e16")["error"]["message"]);
                refused += 1;
            }
        }
    }
    // The burst of 100, plus what one token per second refilled while the loop ran.
    // (delivered() spent one token on its MapperRegister.)
    assert!((99..=110).contains(&ok), "ok {ok}");
    assert_eq!(ok + refused, 130);
    assert_eq!(w.ec.counters().rate_limited, refused);
    // Shared by all three RPCs: MapperRegister is refused too.
    let mut w = w;
    if let Err(err) = w.client.register(&w.info).await {
        assert_eq!(
            err.message,
            "fail to register mapper because of too many request: twinflash"
        );
    }
}

#[tokio::test]
async fn e17_slow_mapper_blocks_dmi_worker() {
    let w = delivered().await;
    w.ec.apply_device(&blinky("blinky-2", OLD));
    w.ec.apply_device(&blinky("blinky-3", OLD));
    w.ec.wait_idle().await;
    *w.mapper.stub.slow.lock().unwrap() = Some(("blinky-2".into(), Duration::from_secs(12)));
    w.ec.apply_device(&blinky("blinky-2", NEW));
    w.ec.apply_device(&blinky("blinky-3", NEW));
    twinflash_testkit::wait_until(
        || {
            !w.mapper
                .bytes_of("UpdateDevice", "default/blinky-3")
                .is_empty()
        },
        || w.ec.dump(),
    )
    .await;
    let deadline = w
        .ec
        .log()
        .into_iter()
        .find(|l| {
            l.kind == DmiLogKind::CallFailed && l.text.starts_with("UpdateDevice default/blinky-2")
        })
        .expect("blinky-2's UpdateDevice gave up");
    assert!(
        deadline
            .text
            .contains("code = DeadlineExceeded desc = context deadline exceeded")
    );
    let second = w
        .mapper
        .calls()
        .into_iter()
        .find(|c| c.method == "UpdateDevice" && c.target == "default/blinky-3")
        .unwrap();
    let first = w
        .mapper
        .calls()
        .into_iter()
        .find(|c| c.method == "UpdateDevice" && c.target == "default/blinky-2")
        .unwrap();
    assert!(
        second.at >= deadline.at,
        "blinky-3 waited for blinky-2's deadline"
    );
    assert!(second.at.duration_since(first.at) >= Duration::from_secs(9));
}

#[tokio::test]
async fn d02_each_twin_of_a_report_is_its_own_update_expected_from_observed_desired() {
    let mut w = delivered().await;
    let d02 = vector("d02");
    report_input(&mut w, &d02).await;
    wait_applied(&w.ec, 3).await;
    assert_eq!(w.ec.counters().twins_applied, 3);
    assert_eq!(w.ec.cloud_syncs().len(), 3, "one edge_updated per twin");
    assert!(w.ec.cloud_syncs().iter().all(|s| s.twins.len() == 1));
    assert_eq!(
        w.ec.actual("default", "blinky-1", "firmware").as_deref(),
        Some(NEW)
    );
    assert_eq!(
        w.ec.expected("default", "blinky-1", "firmware").as_deref(),
        Some(NEW)
    );
    assert_eq!(
        w.ec.actual("default", "blinky-1", "firmware-version")
            .as_deref(),
        Some("1.4.2")
    );
    assert_eq!(
        w.ec.actual("default", "blinky-1", "firmware-state")
            .as_deref(),
        Some("installed")
    );
}

#[tokio::test]
async fn d04_p03_report_states_online() {
    let mut w = delivered().await;
    let r = StateReport::new("default", "blinky-1", DeviceState::Online).unwrap();
    w.client.report_states(&r).await.unwrap();
    twinflash_testkit::wait_until(|| !w.ec.state_syncs().is_empty(), || w.ec.dump()).await;
    let s = w.ec.state("default", "blinky-1").unwrap();
    assert_eq!(s.state, "online");
    let t = s.last_online_time.unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(&t).is_ok() && t.ends_with('Z'),
        "{t}"
    );
    let sync = &w.ec.state_syncs()[0];
    let p03 = vector("p03");
    let want: Value = serde_json::from_str(
        p03["output"]["emitted_in_order"][0]["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let keys = |v: &Value| {
        v["device"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&sync.json), keys(&want));
    assert_eq!(sync.json["device"]["state"], "online");
    // offline: no lastOnlineTime in the message.
    let r = StateReport::new("default", "blinky-1", DeviceState::Offline).unwrap();
    w.client.report_states(&r).await.unwrap();
    twinflash_testkit::wait_until(|| w.ec.state_syncs().len() == 2, || w.ec.dump()).await;
    assert!(
        w.ec.state_syncs()[1].json["device"]
            .get("lastOnlineTime")
            .is_none()
    );
}

#[tokio::test]
async fn p00_setup_steps() {
    let w = delivered().await;
    // The membership update added the device without twins.
    assert!(w.ec.twin("default", "blinky-1").is_empty());
    assert!(w.ec.cloud_syncs().is_empty());
    let n = w.mapper.calls().len();
    w.ec.apply_device(&blinky("blinky-1", NEW));
    w.ec.wait_idle().await;
    let got: Vec<_> = w.mapper.calls()[n..].iter().map(|c| c.method).collect();
    assert_eq!(got, ["UpdateDevice"]);
    assert!(
        w.ec.cloud_syncs().is_empty(),
        "a desired change emits nothing else"
    );
}

#[tokio::test]
async fn p01_p02_report_while_flashing_then_converged() {
    let mut w = delivered().await;
    let p01 = vector("p01");
    report_input(&mut w, &p01).await;
    wait_applied(&w.ec, 3).await;
    assert_eq!(synced_twins(&w.ec, 0), cloud_twins_of(&p01));
    assert_eq!(
        w.ec.expected("default", "blinky-1", "firmware").as_deref(),
        Some(NEW)
    );
    assert_eq!(
        w.ec.actual("default", "blinky-1", "firmware").as_deref(),
        Some(OLD)
    );
    let p02 = vector("p02");
    report_input(&mut w, &p02).await;
    wait_applied(&w.ec, 6).await;
    assert_eq!(synced_twins(&w.ec, 3), cloud_twins_of(&p02));
    assert_eq!(
        w.ec.actual("default", "blinky-1", "firmware").as_deref(),
        Some(NEW)
    );
    let stored = stored_twin_json(&w.ec, "blinky-1");
    assert_eq!(stored["firmware-version"]["expected"]["value"], "");
}

#[tokio::test]
async fn p07_report_twin_not_in_device_spec() {
    let mut w = delivered().await;
    let p07 = vector("p07");
    report_input(&mut w, &p07).await;
    wait_applied(&w.ec, 1).await;
    assert_eq!(
        w.ec.actual("default", "blinky-1", "temperature").as_deref(),
        Some("23")
    );
    assert_eq!(synced_twins(&w.ec, 0), cloud_twins_of(&p07));
}

#[tokio::test]
async fn p08_report_while_cloud_disconnected() {
    let mut w = delivered().await;
    w.ec.cut_cloud_link();
    report_input(&mut w, &vector("p08")).await;
    wait_applied(&w.ec, 1).await;
    assert_eq!(
        w.ec.actual("default", "blinky-1", "firmware-state")
            .as_deref(),
        Some("idle")
    );
    assert!(w.ec.cloud_syncs().is_empty());
    assert_eq!(w.ec.counters().syncs_dropped, 1);
    w.ec.restore_cloud_link();
    tokio::time::sleep(SETTLE).await;
    assert!(w.ec.cloud_syncs().is_empty(), "never re-sent");
    w.report("default", "blinky-1", &[("firmware-state", "", "idle")])
        .await;
    wait_applied(&w.ec, 2).await;
    assert_eq!(w.ec.cloud_syncs().len(), 1);
}

#[tokio::test]
async fn cloud01_upstream_devicestatus_patches_through_cloudcore() {
    let api = twinflash_harness::FakeApi::start().unwrap();
    api.put(json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "blinky-1", "namespace": "default"},
        "spec": {"properties": [{"name": "firmware-version"}, {"name": "firmware"}, {"name": "firmware-state"}]},
    }))
    .unwrap();
    let mut w = delivered().await;
    let cloudcore = twinflash_testkit::Cloudcore::new(&api);
    let follow = cloudcore.follow_syncs(w.ec.syncs());
    let mut applied = 0;
    for p in ["p01", "p02", "p07"] {
        let v = vector(p);
        report_input(&mut w, &v).await;
        applied += v["input"]["reportedDevice"]["twins"]
            .as_array()
            .unwrap()
            .len() as u64;
        wait_applied(&w.ec, applied).await;
    }
    let golden: Value = serde_json::from_str(include_str!(
        "data/cloud01_upstream_devicestatus_patches.json"
    ))
    .unwrap();
    let last = golden["output"].as_array().unwrap().last().unwrap();
    let want = &last["cloudcore_cached_devicestatus_status_after"]["twins"];
    let key = |v: &Value| {
        let mut t: Vec<(String, Value)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["propertyName"].as_str().unwrap().to_owned(),
                    json!([t["reported"]["value"], t["observedDesired"]["value"]]),
                )
            })
            .collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let status = || {
        api.get(
            "devices.kubeedge.io",
            "v1beta1",
            "devicestatuses",
            "default",
            "blinky-1",
        )
        .map(|s| s["status"]["twins"].clone())
    };
    twinflash_testkit::wait_until(
        || {
            status()
                .is_some_and(|t| t.as_array().is_some_and(|a| a.len() == 3) && key(&t) == key(want))
        },
        || format!("{:?} want {want}", status()),
    )
    .await;
    follow.abort();
}

/// What a raw HTTP/2 server in the mapper's place saw of one connection from the stand-in.
#[derive(Debug, Default, Clone)]
struct Connection {
    /// Client frames: type, flags, stream.
    frames: Vec<(u8, u8, u32)>,
    headers: Vec<(String, String)>,
    goaway: Vec<u8>,
}

/// A mapper at the frame level on `socket`: its SETTINGS at once, the client's SETTINGS acknowledged, each call
/// answered when its request ends: with RST_STREAM `reset`, or `:status` 200, one empty message and grpc-status 0.
/// Each connection is recorded when the client closes it.
fn raw_mapper(socket: &Path, reset: Option<u32>) -> Arc<Mutex<Vec<Connection>>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use twinflash_testkit::grpc_go::frame;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut c = Connection::default();
                let mut decoder = loona_hpack::Decoder::new();
                let mut encoder = loona_hpack::Encoder::new();
                let mut preface = [0u8; 24];
                s.read_exact(&mut preface).await.unwrap();
                assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
                s.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
                let mut head = [0u8; 9];
                while s.read_exact(&mut head).await.is_ok() {
                    let len = usize::from(head[0]) << 16
                        | usize::from(head[1]) << 8
                        | usize::from(head[2]);
                    let (t, flags) = (head[3], head[4]);
                    let stream = u32::from_be_bytes(head[5..9].try_into().unwrap());
                    let mut payload = vec![0u8; len];
                    s.read_exact(&mut payload).await.unwrap();
                    c.frames.push((t, flags, stream));
                    match t {
                        0x1 => {
                            c.headers = decoder
                                .decode(&payload)
                                .unwrap()
                                .into_iter()
                                .map(|(n, v)| {
                                    (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                                })
                                .collect();
                        }
                        0x4 if flags & 1 == 0 => s.write_all(&frame(0x4, 1, 0, &[])).await.unwrap(),
                        0x0 if flags & 1 != 0 => {
                            let answer = match reset {
                                Some(code) => frame(0x3, 0, stream, &code.to_be_bytes()),
                                None => {
                                    let h = encoder.encode([
                                        (&b":status"[..], &b"200"[..]),
                                        (b"content-type", b"application/grpc"),
                                    ]);
                                    let t = encoder.encode([(&b"grpc-status"[..], &b"0"[..])]);
                                    let mut a = frame(0x1, 0x4, stream, &h);
                                    a.extend(frame(0x0, 0, stream, &[0, 0, 0, 0, 0]));
                                    a.extend(frame(0x1, 0x5, stream, &t));
                                    a
                                }
                            };
                            s.write_all(&answer).await.unwrap();
                        }
                        0x7 => c.goaway = payload,
                        _ => {}
                    }
                }
                record.lock().unwrap().push(c);
            });
        }
    });
    seen
}

/// The world with its stub mapper replaced by [`raw_mapper`], registered.
async fn raw_world(reset: Option<u32>) -> (World, Arc<Mutex<Vec<Connection>>>) {
    let mut w = world().await;
    w.mapper.stop();
    let seen = raw_mapper(&w.mapper.socket, reset);
    w.register().await;
    (w, seen)
}

#[path = "../../dmi/tests/common/h01.rs"]
mod h01;

/// h01's header list as recorded.
fn h01_headers() -> Vec<(String, String)> {
    h01::header_list(&vector("h01"))
}

#[tokio::test]
async fn h01_each_call_is_a_new_connection_with_grpc_gos_frames_and_headers() {
    let (w, seen) = raw_world(None).await;
    w.ec.apply_model(&model());
    w.ec.apply_device(&blinky1());
    w.ec.wait_idle().await;
    for _ in 0..100 {
        if seen.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let conns = seen.lock().unwrap().clone();
    assert_eq!(
        conns.len(),
        2,
        "one connection per call: {conns:?}\n{}",
        w.ec.dump()
    );
    // h01: SETTINGS, SETTINGS ACK, HEADERS (END_HEADERS), DATA (END_STREAM), GOAWAY.
    let h01 = vector("h01");
    let recorded: Vec<(u8, u8, u32)> = h01["client_to_mapper"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["frame"] != "client preface")
        .map(|f| {
            let t = match f["frame"].as_str().unwrap() {
                "SETTINGS" => 0x4,
                "HEADERS" => 0x1,
                "DATA" => 0x0,
                "GOAWAY" => 0x7,
                other => panic!("{other}"),
            };
            let flags = f["flags"].as_str().map_or(0, |x| {
                u8::from_str_radix(
                    x.split_whitespace()
                        .next()
                        .unwrap()
                        .trim_start_matches("0x"),
                    16,
                )
                .unwrap()
            });
            (
                t,
                flags,
                u32::try_from(f["stream"].as_u64().unwrap()).unwrap(),
            )
        })
        .collect();
    // The socket path the stand-in dialled, as grpc-go escapes it ('/' -> %2F; a temp dir's name needs no more).
    let authority = w.mapper.socket.to_string_lossy().replace('/', "%2F");
    for (c, method) in conns.iter().zip(["CreateDeviceModel", "RegisterDevice"]) {
        assert_eq!(c.frames, recorded, "{method}");
        let mut want = h01_headers();
        want[2].1 = format!("/v1beta1.DeviceMapperService/{method}");
        want[3].1.clone_from(&authority);
        let timeout = &c.headers[8].1;
        want[8].1.clone_from(timeout);
        assert_eq!(c.headers, want, "{method}");
        let micros: u64 = timeout.strip_suffix('u').unwrap().parse().unwrap();
        assert!(
            (9_000_000..=10_000_000).contains(&micros),
            "grpc-timeout {timeout}: the time left of 10 s"
        );
        let mut goaway = 1u32.to_be_bytes().to_vec();
        goaway.extend(0u32.to_be_bytes());
        goaway.extend(
            h01["client_to_mapper"][5]["debug"]
                .as_str()
                .unwrap()
                .as_bytes(),
        );
        assert_eq!(
            c.goaway, goaway,
            "{method}: GOAWAY last stream 1, NO_ERROR, \"client transport shutdown\""
        );
    }
    assert_eq!(w.ec.counters().mapper_calls, 2, "{}", w.ec.dump());
}

#[tokio::test]
async fn h01_a_stream_reset_by_the_mapper_is_logged_in_grpc_gos_words() {
    let (w, _seen) = raw_world(Some(1)).await;
    w.ec.apply_model(&model());
    w.ec.apply_device(&blinky1());
    w.ec.wait_idle().await;
    let failed = w.ec.logged(DmiLogKind::CallFailed);
    let edgecore = vector("h01")["edgecore_log_then"]
        .as_str()
        .unwrap()
        .to_owned();
    let err = edgecore.split("failed with err: ").nth(1).unwrap();
    assert_eq!(failed.len(), 2, "{}", w.ec.dump());
    assert!(
        failed[1].starts_with("RegisterDevice default/blinky-1")
            && failed[1].ends_with(&format!("failed with err: {err}")),
        "{failed:?}"
    );
}
