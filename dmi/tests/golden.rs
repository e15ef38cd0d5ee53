//! Every DMI golden vector with protobuf bytes (dmi/tests/data, produced by KubeEdge v1.23.1's own Go code; see
//! README.md there): our decoder reads the bytes Go wrote, including what grpc-go really sent (map entries in random
//! order), and our encoder reproduces Go's deterministic bytes. The three messages a mapper sends are built with
//! the checked types of `twinflash_dmi::mapper` from the vector's input. The vectors about behaviour (what edgecore
//! does with a call) are the tests of the harness's stand-in (testkit/tests/dmi_standin.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::path::Path;

use base64::Engine;
use prost::Message;
use serde_json::Value;
use twinflash_dmi::mapper::{DeviceState, MapperInfo, StateReport, StatusReport, TwinReport};
use twinflash_dmi::pb;

fn vector(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

/// Decodes the payload (and the wire capture, when there is one) as `M`, re-encodes, and compares.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(name: &str) -> M {
    let v = vector(name);
    let payload = b64(&v["payload_b64"]);
    assert_eq!(payload.len() as u64, v["payload_len"].as_u64().unwrap());
    let msg = M::decode(payload.as_slice()).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        msg.encode_to_vec(),
        payload,
        "{name}: re-encoded bytes differ"
    );
    if let Some(wire) = v.get("wire_capture").filter(|w| w.get("b64").is_some()) {
        let captured = M::decode(b64(&wire["b64"]).as_slice()).unwrap();
        assert_eq!(
            captured, msg,
            "{name}: what grpc-go sent decodes differently"
        );
        assert_eq!(wire["proto_equal_payload"], Value::Bool(true));
    }
    msg
}

#[test]
fn edgecore_messages_decode_and_reencode_byte_for_byte() {
    let r: pb::MapperRegisterResponse = round_trip("a02_MapperRegisterResponse_withData");
    assert_eq!(r.device_list.len(), 2);
    assert_eq!(r.model_list.len(), 2, "one model per device, repeated");
    let r: pb::MapperRegisterResponse = round_trip("a03_MapperRegisterResponse_withoutData");
    assert!(r.device_list.is_empty());
    let m: pb::CreateDeviceModelRequest = round_trip("b01_CreateDeviceModelRequest");
    assert_eq!(m.model.unwrap().spec.unwrap().properties.len(), 3);
    let _: pb::CreateDeviceModelResponse = round_trip("b01r_CreateDeviceModelResponse");
    let _: pb::UpdateDeviceModelRequest = round_trip("b02_UpdateDeviceModelRequest");
    let m: pb::RemoveDeviceModelRequest = round_trip("b03_RemoveDeviceModelRequest");
    assert_eq!(m.model_name, "blinky-model-defaults");
    let _: pb::RegisterDeviceResponse = round_trip("c01r_RegisterDeviceResponse");
    let d: pb::RemoveDeviceRequest = round_trip("c04_RemoveDeviceRequest");
    assert_eq!(
        (d.device_namespace.as_str(), d.device_name.as_str()),
        ("default", "blinky-1")
    );
    let _: pb::GetDeviceRequest = round_trip("c04b_GetDeviceRequest");
    let _: pb::ReportDeviceStatesResponse = round_trip("d0r_ReportDeviceStatesResponse");
    let _: pb::ReportDeviceStatusResponse = round_trip("d0r_ReportDeviceStatusResponse");
}

#[test]
fn the_desired_firmware_and_the_config_data_are_where_the_mapper_reads_them() {
    let old = "registry.local:5000/fw/blinky:1.4.1@sha256:5d46f53d9fa65c9b2ea381117133b7bb9cfde3905da307dad7d4576efc76859f";
    let new = "registry.local:5000/fw/blinky:1.4.2@sha256:98c66134049792d306ac83cef42f94bbebd970b95f54a26adc1120b4db8f5ad2";
    for (name, wanted) in [
        ("c01_RegisterDeviceRequest_blinky-1", old),
        ("c02_UpdateDeviceRequest_desired_changed", new),
    ] {
        let req: pb::RegisterDeviceRequest = round_trip(name);
        let dev = req.device.unwrap();
        let spec = dev.spec.unwrap();
        let fw = spec
            .properties
            .iter()
            .find(|p| p.name == "firmware")
            .unwrap();
        assert_eq!(fw.desired.as_ref().unwrap().value, wanted, "{name}");
        let state = spec
            .properties
            .iter()
            .find(|p| p.name == "firmware-state")
            .unwrap();
        assert_eq!(state.report_cycle, 60_000);
        let cfg =
            twinflash_dmi::value::config_json(spec.protocol.unwrap().config_data.as_ref()).unwrap();
        assert_eq!(cfg["chip"], "nRF52840_xxAA");
        assert_eq!(cfg["flasher"], "probe-rs");
        assert_eq!(cfg["probe"], "1366:1015");
    }
    // UpdateDeviceRequest has the same shape (field 1: the device).
    let _: pb::UpdateDeviceRequest = round_trip("c02_UpdateDeviceRequest_desired_changed");
    // Model defaults merged by edgecore; numbers arrive as float32, booleans as BoolValue.
    let req: pb::RegisterDeviceRequest =
        round_trip("c05_RegisterDeviceRequest_model_defaults_override");
    let spec = req.device.unwrap().spec.unwrap();
    let cfg =
        twinflash_dmi::value::config_json(spec.protocol.unwrap().config_data.as_ref()).unwrap();
    let floats: Vec<_> = cfg.values().filter(|v| v.is_number()).collect();
    assert!(!floats.is_empty(), "c05 carries a number: {cfg:?}");
    assert!(
        floats.iter().all(|v| v.is_i64()),
        "integral FloatValues read as integers: {cfg:?}"
    );
}

#[test]
fn what_the_mapper_sends_is_built_from_checked_types_and_matches_go_byte_for_byte() {
    // a01: MapperRegister with data.
    let v = vector("a01_MapperRegisterRequest_withData");
    let m = &v["input"]["mapper"];
    let info = MapperInfo::new(
        m["name"].as_str().unwrap(),
        m["version"].as_str().unwrap(),
        m["protocol"].as_str().unwrap(),
        Path::new(m["address"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(
        info.register_request().encode_to_vec(),
        b64(&v["payload_b64"])
    );

    // d01: ReportDeviceStatus with the three twins.
    let v = vector("d01_ReportDeviceStatusRequest");
    let input = &v["input"];
    let twins: Vec<TwinReport> = input["reportedDevice"]["twins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| TwinReport {
            property: t["propertyName"].as_str().unwrap().into(),
            observed_desired: t["observedDesired"]["value"].as_str().unwrap_or("").into(),
            reported: t["reported"]["value"].as_str().unwrap().into(),
        })
        .collect();
    let ts: i64 = input["reportedDevice"]["twins"][0]["reported"]["metadata"]["timestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut it = twins.into_iter();
    let first = it.next().unwrap();
    let report = StatusReport::new(
        input["deviceNamespace"].as_str().unwrap(),
        input["deviceName"].as_str().unwrap(),
        first,
        it,
        ts,
    );
    assert_eq!(report.request().encode_to_vec(), b64(&v["payload_b64"]));
    let wire =
        pb::ReportDeviceStatusRequest::decode(b64(&v["wire_capture"]["b64"]).as_slice()).unwrap();
    assert_eq!(wire, report.request());

    // d03: ReportDeviceStates.
    let v = vector("d03_ReportDeviceStatesRequest");
    let s = StateReport::new("default", "blinky-1", DeviceState::Online).unwrap();
    assert_eq!(s.request().encode_to_vec(), b64(&v["payload_b64"]));
}

/// e04a-c: edgecore dies on a twin without observedDesired or reported, and on a registration without the mapper.
/// Whatever strings a report is made of, both TwinProperty messages are on the wire (fields 2 and 3 of every Twin,
/// checked on the bytes), and a registration always carries field 2.
#[test]
fn no_report_or_registration_can_leave_out_what_edgecore_dereferences() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::default();
    runner
        .run(
            &(
                proptest::collection::vec((".{0,8}", ".{0,8}", ".{0,8}"), 1..5),
                any::<i64>(),
            ),
            |(twins, at)| {
                let mut it = twins.into_iter().map(|(p, o, r)| TwinReport {
                    property: p,
                    observed_desired: o,
                    reported: r,
                });
                let first = it.next().unwrap();
                let report = StatusReport::new("ns", "dev", first, it, at);
                let bytes = report.request().encode_to_vec();
                // Decode with a type that knows only the presence of fields 2 and 3 of each Twin.
                let raw = RawStatus::decode(bytes.as_slice()).unwrap();
                let status = raw.reported_device.unwrap();
                prop_assert_eq!(status.twins.len(), report.twins().len());
                for t in status.twins {
                    prop_assert!(t.observed_desired.is_some() && t.reported.is_some());
                }
                Ok(())
            },
        )
        .unwrap();
    for name in ["", "x"] {
        let info =
            MapperInfo::new("twinflash", name, "twinflash", Path::new("/run/t.sock")).unwrap();
        let raw = RawRegister::decode(info.register_request().encode_to_vec().as_slice()).unwrap();
        assert!(raw.with_data && raw.mapper.is_some());
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawRegister {
    #[prost(bool, tag = "1")]
    with_data: bool,
    #[prost(bytes = "vec", optional, tag = "2")]
    mapper: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawStatus {
    #[prost(message, optional, tag = "2")]
    reported_device: Option<RawDeviceStatus>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawDeviceStatus {
    #[prost(message, repeated, tag = "1")]
    twins: Vec<RawTwin>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawTwin {
    #[prost(bytes = "vec", optional, tag = "2")]
    observed_desired: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    reported: Option<Vec<u8>>,
}
