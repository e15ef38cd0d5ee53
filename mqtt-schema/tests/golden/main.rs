//! Every golden vector of tests/data/kubeedge is exercised here; a vector of an unknown kind,
//! or an encode vector without a hand-built counterpart, fails the run.
// Test code: unwrap/expect on fixture data is the point (a bad fixture must fail loudly).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod built;
mod pipeline;
mod vectors;

use std::collections::BTreeSet;

use mqtt_schema::{DeviceTwinUpdate, Topic, TopicLayout, WireMessage, validate};
use vectors::{Vector, load_all, reencode};

/// Vectors whose behaviour deliberately differs from Go; docs/mqtt-topics.md must list each.
const DEVIATIONS: &[&str] = &[
    "h01_string_escaping",
    "e70_mapperframework_decodes_core_delta",
];
/// Vectors where Go panics; documented, and our API cannot produce the input.
const PANICS: &[&str] = &["c09_delta_nil_twin_entry_PANICS", "e13_new_twin_value_null"];

#[test]
fn every_vector_is_handled() {
    let all = load_all();
    assert!(
        all.len() >= 100,
        "expected about 100 vectors, found {}",
        all.len()
    );
    let mut handled = BTreeSet::new();
    for v in &all {
        v.check_integrity();
        check_topic(v);
        match v.kind.as_str() {
            "encode" => {
                check_encode(v);
                handled.insert(v.name.clone());
            }
            "decode" => {
                check_decode(v);
                handled.insert(v.name.clone());
            }
            "validate" => {
                check_validate(v);
                handled.insert(v.name.clone());
            }
            "panic" => {
                assert!(
                    PANICS.contains(&v.name.as_str()),
                    "undocumented panic vector {}",
                    v.name
                );
                assert!(v.json["payload"].is_null());
                handled.insert(v.name.clone());
            }
            other => panic!(
                "vector {} has unknown kind {other:?}: teach this test about it",
                v.name
            ),
        }
    }
    let pipeline_names = pipeline::check_pipelines(&all);
    for v in all.iter().filter(|v| v.name.starts_with('p')) {
        assert!(
            pipeline_names.contains(&v.name),
            "pipeline vector {} not checked",
            v.name
        );
    }
    assert_eq!(handled.len(), all.len());
}

fn check_topic(v: &Vector) {
    let topic = v.json["topic"].as_str().unwrap_or("");
    if topic.starts_with("$hw/") {
        let t = Topic::parse(topic, TopicLayout::Namespaced)
            .unwrap_or_else(|e| panic!("{}: topic {topic} does not parse: {e}", v.name));
        assert_eq!(t.to_string(), topic, "{}", v.name);
        if t.device_id().is_some() {
            let legacy = Topic::parse(topic, TopicLayout::Legacy);
            assert!(legacy.is_err(), "{}: layouts confused", v.name);
        }
    }
}

fn check_encode(v: &Vector) {
    let bytes = v.payload();
    // 1. What Go wrote decodes and re-encodes to the same bytes.
    let again = reencode(&v.go_type(), &bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
    if v.name == "h01_string_escaping" {
        // Deviation (documented): the logical value held an invalid UTF-8 byte, which Go writes as
        // \ufffd; decoding already turned it into U+FFFD, which Go (and we) then write raw.
        assert_eq!(again, go_with_raw_fffd(&bytes), "{}", v.name);
    } else {
        assert_eq!(
            String::from_utf8_lossy(&again),
            String::from_utf8_lossy(&bytes),
            "{} (round trip)",
            v.name
        );
    }
    // 2. The logical value built by hand (or by our builders) encodes to Go's bytes.
    if v.name.starts_with('p') {
        return; // pipeline vectors: see pipeline.rs
    }
    let built = built::build(v)
        .unwrap_or_else(|| panic!("encode vector {} has no hand-built value", v.name));
    let want = if v.name == "h01_string_escaping" {
        go_with_raw_fffd(&bytes)
    } else {
        bytes
    };
    assert_eq!(
        String::from_utf8_lossy(&built),
        String::from_utf8_lossy(&want),
        "{} (built)",
        v.name
    );
}

/// Go's bytes with the escaped `\ufffd` written as the raw character.
fn go_with_raw_fffd(bytes: &[u8]) -> Vec<u8> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .replace("\\ufffd", "\u{fffd}")
        .into_bytes()
}

fn check_decode(v: &Vector) {
    let d = &v.json["decode"];
    let bytes = v.payload();
    let go_type = v.go_type();
    let accepted = d["accepted"].as_bool().unwrap();
    let remarshal = d["remarshal"].as_str().unwrap();
    if v.name == "e70_mapperframework_decodes_core_delta" {
        // Deviation (documented): mapper-framework's own type has a string timestamp; we model
        // edgecore's types, which accept this edgecore payload.
        assert!(!accepted);
        let delta = mqtt_schema::DeviceTwinDelta::decode(&bytes).unwrap();
        assert_eq!(delta.encode(), bytes);
        return;
    }
    // Re-encoding of the state Go left the value in (also after a failed call).
    let (state, _) = vectors::decode_partial_reencode(&go_type, &bytes);
    assert_eq!(
        String::from_utf8_lossy(&state),
        remarshal,
        "{} (remarshal)",
        v.name
    );
    if go_type == "DeviceTwinUpdate" {
        let ours = mqtt_schema::unmarshal_device_twin_update(&bytes);
        assert_eq!(ours.is_ok(), accepted, "{}: {ours:?}", v.name);
        match (&ours, d["function_error"].as_str()) {
            (Err(e), Some(go)) => assert_eq!(e.reason(), go, "{}", v.name),
            (Ok(_), None) => {}
            other => panic!("{}: {other:?}", v.name),
        }
        let json_err = !d["json_unmarshal_error"].is_null();
        assert_eq!(
            DeviceTwinUpdate::decode(&bytes).is_err(),
            json_err,
            "{}",
            v.name
        );
        if let Some(replies) = d["edgecore_replies"].as_array() {
            pipeline::check_replies(v, ours.as_ref(), replies);
        }
    } else {
        let ok = vectors::decode_ok(&go_type, &bytes);
        assert_eq!(ok, accepted, "{}", v.name);
    }
}

fn check_validate(v: &Vector) {
    let cases = v.json["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for c in cases {
        let value = c["value"].as_str().unwrap();
        if v.name.starts_with("v01") {
            assert_eq!(
                validate::validate_twin_value(value),
                c["ValidateTwinValue"].as_bool().unwrap(),
                "{value:?}"
            );
            assert_eq!(
                validate::validate_twin_key(value),
                c["ValidateTwinKey"].as_bool().unwrap(),
                "{value:?}"
            );
        } else if v.name.starts_with("v02") {
            let ty = c["type"].as_str().unwrap();
            let ours = validate::validate_value(ty, value);
            assert_eq!(ours.is_ok(), c["ok"].as_bool().unwrap(), "{ty} {value:?}");
            if let Err(e) = ours {
                assert_eq!(
                    Some(e.to_string().as_str()),
                    c["error"].as_str(),
                    "{ty} {value:?}"
                );
            }
        } else {
            panic!("validate vector {} is unknown to this test", v.name);
        }
    }
}

#[test]
fn docs_list_every_deviation_and_panic() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/mqtt-topics.md");
    let doc = std::fs::read_to_string(path).expect("docs/mqtt-topics.md");
    for name in DEVIATIONS.iter().chain(PANICS) {
        assert!(
            doc.contains(name),
            "docs/mqtt-topics.md does not mention {name}"
        );
    }
}

#[test]
fn docs_examples_are_what_we_encode() {
    use mqtt_schema::{
        FirmwareRef, FirmwareReport, FirmwareState, TwinNames, actual_update, intent, report,
    };
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/mqtt-topics.md"
    ))
    .unwrap();
    let names = TwinNames::default();
    let r = FirmwareRef::parse(built::NEW).unwrap();
    let i = intent(
        mqtt_schema::BaseMessage::new("fw-0001", built::T0),
        &names,
        &r,
    );
    let state = FirmwareState::Installed;
    let rep = report(
        mqtt_schema::BaseMessage::new("r-17", 1_700_000_100_000),
        &names,
        &FirmwareReport {
            installed: Some(&r),
            version: Some("1.4.2+b7"),
            state: &state,
        },
    );
    let downloading = FirmwareState::Downloading(40);
    let partial = report(
        mqtt_schema::BaseMessage::new("r-18", 1_700_000_101_000),
        &names,
        &FirmwareReport {
            installed: None,
            version: None,
            state: &downloading,
        },
    );
    // The agent's report after a failed flash erased the image: empty values, not left out.
    let erased = actual_update(
        mqtt_schema::BaseMessage::new("r-19", 1_700_000_102_000),
        [
            (names.firmware.as_str(), ""),
            (names.state.as_str(), "failed:flash-failed"),
            (names.version.as_str(), ""),
        ],
    );
    for msg in [i.encode(), rep.encode(), partial.encode(), erased.encode()] {
        let text = String::from_utf8(msg).unwrap();
        assert!(
            doc.contains(&text),
            "docs/mqtt-topics.md lacks the example {text}"
        );
    }
}
