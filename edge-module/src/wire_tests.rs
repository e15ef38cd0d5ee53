//! Table tests of [`classify`] and [`Intent::from_twin`].

use super::*;

const REF: &str = "registry.local:5000/fw/blinky@sha256:98c66134049792d306ac83cef42f94bbebd970b95f54a26adc1120b4db8f5ad2";
const DEV: &str = "default/blinky-01";

fn delta(value: &str) -> Vec<u8> {
    format!(r#"{{"event_id":"","timestamp":1,"twin":{{}},"delta":{{"firmware":"{value}"}}}}"#)
        .into_bytes()
}

fn run(topic: &str, payload: &[u8]) -> Incoming {
    let names = TwinNames::default();
    classify(
        topic,
        payload,
        TopicLayout::Namespaced,
        4096,
        |d| (d == DEV).then_some(&names),
        "twinflash-node-",
    )
}

fn topic(kind: &str) -> String {
    format!("$hw/events/device/{DEV}/twin/{kind}")
}

#[test]
fn every_kind_of_message_is_classified() {
    let intent = |i| Incoming::Intent {
        device: DEV.into(),
        intent: i,
    };
    let get_result = format!(
        r#"{{"event_id":"e","timestamp":1,"twin":{{"firmware":{{"expected":{{"value":"{REF}"}}}}}}}}"#
    );
    let cases: Vec<(String, Vec<u8>, Incoming)> = vec![
        (
            topic("update/delta"),
            delta(REF),
            intent(Intent::Valid(REF.into())),
        ),
        (
            topic("get/result"),
            get_result.into_bytes(),
            Incoming::GetResult {
                device: DEV.into(),
                event_id: "e".into(),
                wanted: Some(Intent::Valid(REF.into())),
                actual: BTreeMap::new(),
                others: BTreeMap::new(),
                code: 0,
                reason: String::new(),
            },
        ),
        (
            topic("get/result"),
            br#"{"event_id":"e","timestamp":1,"twin":{"firmware-state":{"actual":{"value":"installed"}},"firmware-version":{"expected":{"value":"1"}},"other":{"actual":{"value":"x"}}}}"#.to_vec(),
            Incoming::GetResult {
                device: DEV.into(),
                event_id: "e".into(),
                wanted: None,
                actual: BTreeMap::from([("firmware-state".to_owned(), "installed".to_owned())]),
                others: BTreeMap::from([("other".to_owned(), "x".to_owned())]),
                code: 0,
                reason: String::new(),
            },
        ),
        (
            topic("get/result"),
            br#"{"event_id":"g1","timestamp":1,"code":404,"reason":"Device default/blinky-01 not found while getting twin"}"#.to_vec(),
            Incoming::GetResult {
                device: DEV.into(),
                event_id: "g1".into(),
                wanted: None,
                actual: BTreeMap::new(),
                others: BTreeMap::new(),
                code: 404,
                reason: "Device default/blinky-01 not found while getting twin".into(),
            },
        ),
        (
            topic("update/result"),
            br#"{"event_id":"twinflash-node-ab-r7","timestamp":1,"twin":{"firmware-state":{"actual":{"value":"installed"}}}}"#.to_vec(),
            Incoming::UpdateResult {
                device: DEV.into(),
                event_id: "twinflash-node-ab-r7".into(),
                code: 0,
                reason: String::new(),
            },
        ),
        (
            topic("update/result"),
            br#"{"event_id":"x","timestamp":1,"code":404,"reason":"not found"}"#.to_vec(),
            Incoming::UpdateResult {
                device: DEV.into(),
                event_id: "x".into(),
                code: 404,
                reason: "not found".into(),
            },
        ),
        (
            topic("update/delta"),
            br#"{"event_id":"","timestamp":1,"delta":{"temperature":"3"}}"#.to_vec(),
            Incoming::NoIntent { device: DEV.into() },
        ),
        (topic("update/delta"), Vec::new(), Incoming::Empty),
        (
            topic("get"),
            br#"{"event_id":"twinflash-node-7","timestamp":1}"#.to_vec(),
            Incoming::OwnGet { device: DEV.into() },
        ),
        (
            topic("get"),
            br#"{"event_id":"watcher","timestamp":1}"#.to_vec(),
            Incoming::Asked { device: DEV.into() },
        ),
        (
            topic("get"),
            br#"{"event_id":"twinflash-status-12-1-1","timestamp":1}"#.to_vec(),
            Incoming::Read { device: DEV.into() },
        ),
        (
            "$hw/events/device/default/other/twin/update/delta".into(),
            delta(REF),
            Incoming::Ignored {
                key: "device default/other".into(),
                why: "ignoring a message for a device this agent does not manage",
            },
        ),
        (
            "some/other/topic".into(),
            delta(REF),
            Incoming::Ignored {
                key: "topic some/other/topic".into(),
                why: "ignoring a message on an unexpected topic",
            },
        ),
        (
            topic("update/delta"),
            vec![b' '; 4097],
            Incoming::Oversized {
                len: 4097,
                max: 4096,
            },
        ),
    ];
    for (topic, payload, want) in cases {
        assert_eq!(
            run(&topic, &payload),
            want,
            "{topic} {:?}",
            String::from_utf8_lossy(&payload)
        );
    }
    match run(&topic("update/delta"), b"{not json") {
        Incoming::Malformed { device, code, .. } => {
            assert_eq!((device.as_str(), code), (DEV, ErrorCode::InvalidMessage));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_references_are_kept_as_a_bounded_prefix_that_never_parses() {
    // Too long, tag only, bad digest, bad charset; and a valid reference followed by junk whose prefix would be valid.
    let long = format!("{REF}{}", "a".repeat(200 * 1024));
    let cut_at_a_valid_ref = format!("{}!!!", &REF[..REF.len()]);
    for bad in [
        long.as_str(),
        "registry.local:5000/fw/blinky:1.0",
        "registry.local:5000/fw/blinky@sha256:00",
        "reg/fw@sha256:$(reboot)",
        cut_at_a_valid_ref.as_str(),
    ] {
        let Intent::Invalid { recorded, error } = Intent::from_twin(bad) else {
            panic!("{bad:.80} was accepted");
        };
        assert!(
            recorded.len() <= INVALID_PREFIX + INVALID_MARK.len_utf8(),
            "{recorded}"
        );
        assert!(recorded.ends_with(INVALID_MARK));
        assert!(FirmwareRef::parse(&recorded).is_err(), "{recorded}");
        assert!(error.len() < 700, "{}", error.len());
    }
    // A prefix of exactly a valid reference still carries the mark.
    let exact = format!("{}{}", &REF[..INVALID_PREFIX], "!");
    let Intent::Invalid { recorded, .. } = Intent::from_twin(&exact) else {
        panic!("accepted");
    };
    assert_eq!(
        recorded,
        format!("{}{INVALID_MARK}", &REF[..INVALID_PREFIX])
    );
    assert_eq!(Intent::from_twin(REF), Intent::Valid(REF.into()));
}
