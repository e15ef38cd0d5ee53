//! Pipeline vectors (p*) and `edgecore_replies`: replaying edgecore's documents on a model of
//! the device's twins, our delta and get-result builders must reproduce what edgecore published.

use std::collections::{BTreeMap, BTreeSet};

use mqtt_schema::topic::TWIN_UPDATE_ERROR_RESULT;
use mqtt_schema::validate::validate_value;
use mqtt_schema::{
    BaseMessage, DeviceTwinDocument, DeviceTwinUpdate, MsgTwin, ResultMessage, Topic, TopicLayout,
    TwinValue, WireMessage, build_device_twin_delta, build_twin_get_result, device_twin_delta,
    unmarshal_device_twin_update,
};

use crate::built::{NEW, OLD, T0, UUID1, tvm, ty};
use crate::vectors::{Vector, go_type_name};

const CLOCK: i64 = 1_700_000_060_000;

type State = BTreeMap<String, MsgTwin>;

fn apply(state: &mut State, doc: &DeviceTwinDocument) {
    for (name, d) in doc.twin.iter().flatten() {
        match d.as_ref().and_then(|d| d.current.clone()) {
            Some(current) => {
                state.insert(name.clone(), current);
            }
            None => {
                // edgecore keeps a deleted twin with metadata.type "deleted".
                state.insert(
                    name.clone(),
                    MsgTwin {
                        actual: Some(TwinValue::default()),
                        optional: Some(true),
                        metadata: ty("deleted"),
                        ..MsgTwin::default()
                    },
                );
            }
        }
    }
}

fn check_delta(name: &str, state: &State, payload: &[u8]) {
    let ts = BaseMessage::decode(payload).unwrap().timestamp;
    let ours = build_device_twin_delta(BaseMessage::new(UUID1, ts), state)
        .unwrap_or_else(|| panic!("{name}: edgecore published a delta, our builder returned none"));
    assert_eq!(
        String::from_utf8(ours.encode()).unwrap(),
        String::from_utf8_lossy(payload),
        "{name}"
    );
}

/// Checks the p* scenario; returns the names of the vectors it covered.
pub fn check_pipelines(all: &[Vector]) -> BTreeSet<String> {
    let mut covered = BTreeSet::new();
    let mut groups: BTreeMap<&str, Vec<&Vector>> = BTreeMap::new();
    for v in all.iter().filter(|v| v.name.starts_with('p')) {
        groups.entry(&v.name[..3]).or_default().push(v);
    }
    assert!(groups.len() >= 5, "expected the p01..p05 scenario");
    let mut state = State::new();
    for (group, vectors) in groups {
        let mut delta_seen = false;
        let mut is_update = false;
        for v in vectors {
            let payload = v.payload();
            let n = v.name.as_str();
            if n.contains("_00_input") {
                is_update = v.go_type() == "DeviceTwinUpdate";
                if is_update {
                    unmarshal_device_twin_update(&payload).unwrap_or_else(|e| panic!("{n}: {e}"));
                } else {
                    BaseMessage::decode(&payload).unwrap();
                }
            } else if n.contains("twin_update_document") {
                apply(&mut state, &DeviceTwinDocument::decode(&payload).unwrap());
            } else if n.contains("twin_update_delta") {
                assert_eq!(v.json["delta_produced"].as_bool(), Some(true));
                check_delta(n, &state, &payload);
                delta_seen = true;
            } else if n.contains("delta_not_sent") {
                let ts = BaseMessage::decode(&payload).unwrap().timestamp;
                let (msg, publish) = device_twin_delta(BaseMessage::new(UUID1, ts), &state);
                assert!(!publish, "{n}");
                assert_eq!(msg.encode(), payload, "{n}");
            } else if n.contains("twin_get_result") {
                let base = BaseMessage::decode(&payload).unwrap();
                let twins = state
                    .iter()
                    .map(|(k, t)| (k.clone(), Some(t.clone())))
                    .collect();
                let ours = build_twin_get_result(base, &twins);
                assert_eq!(
                    String::from_utf8(ours.encode()).unwrap(),
                    String::from_utf8_lossy(&payload),
                    "{n}"
                );
            } else {
                // update results and cloud syncs: round trip is checked in check_encode.
                assert!(
                    n.contains("result") || n.contains("cloud_edge_updated"),
                    "unknown pipeline step {n}"
                );
            }
            covered.insert(v.name.clone());
        }
        if is_update && !delta_seen {
            assert!(
                build_device_twin_delta(BaseMessage::new(UUID1, 0), &state).is_none(),
                "{group}: edgecore published no delta, our builder would"
            );
        }
    }
    covered
}

/// The device of the decode vectors' pipeline runs.
fn initial_state() -> State {
    let mut s = State::new();
    s.insert(
        "firmware".into(),
        MsgTwin {
            expected: Some(tvm(NEW, T0 + 2000)),
            actual: Some(tvm(OLD, T0 + 1000)),
            optional: Some(true),
            metadata: ty("string"),
            ..MsgTwin::default()
        },
    );
    s.insert(
        "temperature".into(),
        MsgTwin {
            actual: Some(tvm("23", T0 + 1000)),
            optional: Some(true),
            metadata: ty("int"),
            ..MsgTwin::default()
        },
    );
    s
}

/// The first value-type error edgecore's DealMsgTwin reports (the stored type wins, e46).
fn value_type_error(state: &State, update: &DeviceTwinUpdate) -> Option<String> {
    for (name, twin) in update.twin.iter().flatten() {
        let Some(twin) = twin else { continue };
        let ty = state
            .get(name)
            .and_then(|t| t.value_type())
            .or(twin.value_type())
            .unwrap_or("")
            .to_owned();
        for value in [twin.expected_value(), twin.actual_value()] {
            if !value.is_empty()
                && let Err(e) = validate_value(&ty, value)
            {
                return Some(e.to_string());
            }
        }
    }
    None
}

/// Checks the messages edgecore published for decode vector `v`.
pub fn check_replies(
    v: &Vector,
    ours: Result<&DeviceTwinUpdate, &mqtt_schema::TwinUpdateError>,
    replies: &[serde_json::Value],
) {
    let mut state = initial_state();
    let mut delta_seen = false;
    let mut error_seen = false;
    for reply in replies {
        let payload = reply["payload"].as_str().unwrap().as_bytes();
        let topic = reply["topic"].as_str().unwrap();
        let go_type = go_type_name(reply["go_type"].as_str().unwrap());
        if reply["action"] == "SendToCloud" {
            assert_eq!(
                crate::vectors::reencode(&go_type, payload).unwrap(),
                payload,
                "{}",
                v.name
            );
            continue;
        }
        let parsed = Topic::parse(topic, TopicLayout::Namespaced).unwrap();
        assert_eq!(parsed.to_string(), topic);
        match go_type.as_str() {
            "Result" => {
                error_seen = true;
                let (base, reason) = if topic == TWIN_UPDATE_ERROR_RESULT {
                    assert_eq!(parsed, Topic::TwinUpdateErrorResult);
                    (
                        BaseMessage::new("", CLOCK),
                        ours.expect_err("edgecore refused the update").reason(),
                    )
                } else {
                    let update = ours.expect("edgecore parsed the update");
                    let reason = value_type_error(&state, update).expect("a value-type error");
                    (
                        BaseMessage::new(update.base.event_id.clone(), CLOCK),
                        reason,
                    )
                };
                let mine = ResultMessage::error(base, 400, reason).encode();
                assert_eq!(
                    String::from_utf8(mine).unwrap(),
                    String::from_utf8_lossy(payload),
                    "{}",
                    v.name
                );
            }
            "DeviceTwinDocument" => {
                apply(&mut state, &DeviceTwinDocument::decode(payload).unwrap())
            }
            "DeviceTwinDelta" => {
                check_delta(&v.name, &state, payload);
                delta_seen = true;
            }
            "DeviceTwinResult" => {
                assert_eq!(
                    crate::vectors::reencode(&go_type, payload).unwrap(),
                    payload,
                    "{}",
                    v.name
                );
            }
            other => panic!("{}: reply of unknown type {other}", v.name),
        }
    }
    if ours.is_ok() && !error_seen && !delta_seen {
        assert!(
            build_device_twin_delta(BaseMessage::new(UUID1, CLOCK), &state).is_none(),
            "{}: edgecore published no delta, our builder would",
            v.name
        );
    }
}
