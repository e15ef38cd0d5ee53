use super::*;
use mqtt_schema::gojson::decode;
use mqtt_schema::{DeviceTwinDelta, DeviceTwinResult, DeviceTwinUpdate, MsgTwin, ResultMessage};

const REF_A: &str =
    "r.local:5000/fw/b@sha256:98c66134049792d306ac83cef42f94bbebd970b95f54a26adc1120b4db8f5ad2";
const REF_B: &str =
    "r.local:5000/fw/b@sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn key() -> DeviceId {
    DeviceId::namespaced("default", "sim-00").unwrap()
}

fn relay() -> Relay {
    Relay::new(TopicLayout::Namespaced, TwinNames::default())
}

fn report(pairs: &[(&str, &str)]) -> Vec<u8> {
    let twin = pairs
        .iter()
        .map(|(n, v)| {
            (
                (*n).to_owned(),
                Some(MsgTwin {
                    actual: Some(TwinValue::new(*v)),
                    metadata: Some(TypeMetadata::new("string")),
                    ..MsgTwin::default()
                }),
            )
        })
        .collect();
    to_go_json(&DeviceTwinUpdate {
        base: BaseMessage::new("r", 1),
        twin: Some(twin),
    })
}

fn publishes(actions: &[Action]) -> Vec<(&str, &[u8], bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish {
                topic,
                payload,
                retain,
            } => Some((topic.as_str(), payload.as_slice(), *retain)),
            Action::WriteStatus { .. } => None,
        })
        .collect()
}

const DELTA: &str = "$hw/events/device/default/sim-00/twin/update/delta";
const UPDATE: &str = "$hw/events/device/default/sim-00/twin/update";
const RESULT: &str = "$hw/events/device/default/sim-00/twin/update/result";
const GET: &str = "$hw/events/device/default/sim-00/twin/get";

#[test]
fn an_intent_becomes_a_retained_delta_that_is_cleared_once_installed() {
    let mut r = relay();
    let acts = r.set_intent(&key(), REF_A, 10).unwrap();
    let p = publishes(&acts);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].0, p[0].2), (DELTA, true));
    let delta: DeviceTwinDelta = decode(p[0].1).unwrap();
    assert_eq!(delta.wanted("firmware"), Some(REF_A));

    // Progress reports: written to the status, no new delta.
    let acts = r.on_message(UPDATE, &report(&[("firmware-state", "downloading:5")]), 11);
    assert!(publishes(&acts).is_empty());
    let [
        Action::WriteStatus {
            device,
            actual,
            timestamp_ms,
            ack: Some(ack),
        },
    ] = &acts[..]
    else {
        panic!("one status write with its acknowledgement: {acts:?}");
    };
    assert_eq!((device, *timestamp_ms), (&key(), 11));
    assert_eq!(
        actual,
        &BTreeMap::from([("firmware-state".into(), "downloading:5".into())])
    );
    assert_eq!(ack.topic, RESULT);
    assert_eq!(ack.event_id, "r");

    // Installed: the retained delta is cleared with an empty retained payload, once.
    let acts = r.on_message(
        UPDATE,
        &report(&[("firmware", REF_A), ("firmware-state", "idle")]),
        12,
    );
    assert_eq!(publishes(&acts), vec![(DELTA, &b""[..], true)]);
    assert!(matches!(acts.last(), Some(Action::WriteStatus { .. })));
    let acts = r.on_message(UPDATE, &report(&[("firmware", REF_A)]), 13);
    assert!(publishes(&acts).is_empty());
    assert!(r.on_connect(14).is_empty(), "nothing pending after install");
}

#[test]
fn going_back_to_the_reported_firmware_after_a_failure_is_delivered() {
    // Found end to end (tests/rollout_e2e.rs): the agent had REF_A, a rollout set REF_B, the
    // flash failed and destroyed REF_A (the agent reports only `failed:flash-failed`, nothing
    // verified is installed). The rollback sets REF_A again: the agent must get it, although
    // the last `firmware` it reported is REF_A.
    let mut r = relay();
    r.set_intent(&key(), REF_A, 1).unwrap();
    let acts = r.on_message(
        UPDATE,
        &report(&[("firmware", REF_A), ("firmware-state", "installed")]),
        2,
    );
    assert_eq!(publishes(&acts), vec![(DELTA, &b""[..], true)]);
    assert_eq!(publishes(&r.set_intent(&key(), REF_B, 3).unwrap()).len(), 1);
    r.on_message(
        UPDATE,
        &report(&[("firmware-state", "failed:flash-failed")]),
        4,
    );
    let acts = r.set_intent(&key(), REF_A, 5).unwrap();
    let p = publishes(&acts);
    assert_eq!(p.len(), 1, "the rollback is delivered");
    let delta: DeviceTwinDelta = decode(p[0].1).unwrap();
    assert_eq!(delta.wanted("firmware"), Some(REF_A));
    // Once the agent installed it again, the delta is cleared as usual.
    let acts = r.on_message(
        UPDATE,
        &report(&[("firmware", REF_A), ("firmware-state", "installed")]),
        6,
    );
    assert_eq!(publishes(&acts), vec![(DELTA, &b""[..], true)]);
    // The same after a rejection (the old firmware really is still there).
    r.set_intent(&key(), REF_B, 7).unwrap();
    r.on_message(
        UPDATE,
        &report(&[
            ("firmware", REF_A),
            ("firmware-state", "rejected:chip-mismatch"),
        ]),
        8,
    );
    assert_eq!(publishes(&r.set_intent(&key(), REF_A, 9).unwrap()).len(), 1);
}

#[test]
fn reconnect_republishes_pending_deltas_and_newer_intents_win() {
    let mut r = relay();
    r.set_intent(&key(), REF_A, 10).unwrap();
    r.set_intent(&key(), REF_B, 11).unwrap();
    // A restored (older run) intent never overwrites a newer one.
    assert!(r.restore_intent(&key(), REF_A, 12).unwrap().is_empty());
    assert_eq!(r.expected(&key()), Some(REF_B));
    let acts = r.on_connect(20);
    let p = publishes(&acts);
    assert_eq!(p.len(), 1);
    let delta: DeviceTwinDelta = decode(p[0].1).unwrap();
    assert_eq!(delta.wanted("firmware"), Some(REF_B));
}

#[test]
fn twin_get_is_answered_with_the_whole_book_and_the_requests_event_id() {
    let mut r = relay();
    r.on_message(
        UPDATE,
        &report(&[("firmware", REF_A), ("firmware-state", "installed")]),
        5,
    );
    r.set_intent(&key(), REF_B, 10).unwrap();
    let acts = r.on_message(GET, br#"{"event_id":"g7","timestamp":3}"#, 11);
    let p = publishes(&acts);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, "$hw/events/device/default/sim-00/twin/get/result");
    assert!(!p[0].2, "a get result is not retained");
    let res: DeviceTwinResult = decode(p[0].1).unwrap();
    assert_eq!(
        res.base,
        BaseMessage::new("g7", 11),
        "the request's event id (p05)"
    );
    let fw = res.twin("firmware").unwrap();
    assert_eq!(fw.expected_value(), REF_B);
    assert_eq!(fw.actual_value(), REF_A);
    assert_eq!(
        res.twin("firmware-state").unwrap().actual_value(),
        "installed"
    );

    // An unknown device gets an empty twin map (no intent), not silence.
    let acts = r.on_message(
        "$hw/events/device/default/other/twin/get",
        br#"{"event_id":"g8","timestamp":0}"#,
        12,
    );
    let res: DeviceTwinResult = decode(publishes(&acts)[0].1).unwrap();
    assert_eq!(res.twin, Some(mqtt_schema::TwinMap::new()));
    // An unreadable request: 400 with the empty id on the get result topic.
    let acts = r.on_message(GET, b"", 13);
    let err: ResultMessage = decode(publishes(&acts)[0].1).unwrap();
    assert_eq!((err.base.event_id.as_str(), err.code), ("", 400));
    // The controller's own nudge is for the agent: the relay stays silent.
    let nudge = to_go_json(&mqtt_schema::twin_get_request("twinflash-cloud-3", 14));
    assert!(r.on_message(GET, &nudge, 14).is_empty());
}

#[test]
fn a_report_is_acknowledged_with_the_golden_result_shape() {
    // c10_result_dealtype0_get_or_update: edgecore's BuildDeviceTwinResult(base, twins, 0) for a device whose
    // firmware twin holds an expected (t = ...2000) and an actual (t = ...1000) value.
    let g: serde_json::Value = serde_json::from_str(include_str!(
        "../../mqtt-schema/tests/data/kubeedge/c10_result_dealtype0_get_or_update.json"
    ))
    .unwrap();
    let expected = "registry.local:5000/fw/blinky@sha256:98c66134049792d306ac83cef42f94bbebd970b95f54a26adc1120b4db8f5ad2";
    let actual = "registry.local:5000/fw/blinky@sha256:5d46f53d9fa65c9b2ea381117133b7bb9cfde3905da307dad7d4576efc76859f";
    let key = DeviceId::namespaced("default", "blinky-01").unwrap();
    let mut r = relay();
    r.set_intent(&key, expected, 1_700_000_002_000).unwrap();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&report(&[("firmware", actual)])).unwrap();
    payload["event_id"] = "evt-c10".into();
    let acts = r.on_message(
        "$hw/events/device/default/blinky-01/twin/update",
        payload.to_string().as_bytes(),
        1_700_000_001_000,
    );
    let Some(Action::WriteStatus { ack: Some(ack), .. }) = acts.last() else {
        panic!("the result waits for the status write: {acts:?}");
    };
    assert_eq!(ack.topic, g["topic"].as_str().unwrap());
    assert_eq!(ack.event_id, "evt-c10");
    // Byte for byte the golden payload, but for its extra nil twin `removed` and the server's clock.
    let golden = g["payload"]
        .as_str()
        .unwrap()
        .replace(r#","removed":null"#, "")
        .replace(
            "\"timestamp\":1700000000000,",
            "\"timestamp\":1700000001000,",
        );
    assert_eq!(String::from_utf8(ack.payload.clone()).unwrap(), golden);
    // The delta goes out at once (expected differs from actual); only the result waits.
    let p = publishes(&acts);
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].0,
        "$hw/events/device/default/blinky-01/twin/update/delta"
    );
}

#[test]
fn an_expected_update_is_stored_answered_and_delivered_as_the_retained_delta() {
    // `twinflash set --mode direct`: a twin/update with expected (golden b01) and a unique event id.
    let mut r = relay();
    let set = to_go_json(&mqtt_schema::intent(
        BaseMessage::new("twinflash-set-1-2-0", 2),
        &TwinNames::default(),
        &mqtt_schema::FirmwareRef::parse(REF_A).unwrap(),
    ));
    let acts = r.on_message(UPDATE, &set, 20);
    let p = publishes(&acts);
    assert_eq!(p.len(), 2, "{acts:?}");
    assert_eq!((p[0].0, p[0].2), (RESULT, false));
    let res: DeviceTwinResult = decode(p[0].1).unwrap();
    assert_eq!(res.base, BaseMessage::new("twinflash-set-1-2-0", 20));
    assert_eq!(res.twin("firmware").unwrap().expected_value(), REF_A);
    assert_eq!((p[1].0, p[1].2), (DELTA, true));
    let delta: DeviceTwinDelta = decode(p[1].1).unwrap();
    assert_eq!(delta.wanted("firmware"), Some(REF_A));
    assert_eq!(r.expected(&key()), Some(REF_A));
    // An older run's intent restored later does not overwrite it.
    assert!(r.restore_intent(&key(), REF_B, 21).unwrap().is_empty());
}

#[test]
fn garbage_gets_400_on_the_empty_id_topic_and_foreign_topics_are_ignored() {
    let mut r = relay();
    for bad in [
        &b"{not json"[..],
        b"",
        br#"{"event_id":"x","timestamp":1,"twin":{"a b":null}}"#,
    ] {
        let acts = r.on_message(UPDATE, bad, 1);
        let p = publishes(&acts);
        assert_eq!(p.len(), 1, "{acts:?}");
        assert_eq!(p[0].0, "$hw/events/device//twin/update/result");
        let err: ResultMessage = decode(p[0].1).unwrap();
        assert_eq!((err.base.event_id.as_str(), err.code), ("", 400));
        assert!(!err.reason.is_empty());
    }
    assert!(
        r.on_message("$hw/events/node/n/membership/get", b"{}", 1)
            .is_empty()
    );
    assert!(r.on_message("not/a/kubeedge/topic", b"{}", 1).is_empty());
}

#[test]
fn legacy_layout_reports_need_a_known_device_for_the_namespace() {
    let mut r = Relay::new(TopicLayout::Legacy, TwinNames::default());
    let upd = "$hw/events/device/sim-00/twin/update";
    let acts = r.on_message(upd, &report(&[("firmware-state", "idle")]), 1);
    let p = publishes(&acts);
    assert_eq!(
        acts.len(),
        1,
        "namespace unknown: nothing to write, answered at once"
    );
    assert_eq!(p[0].0, "$hw/events/device/sim-00/twin/update/result");
    r.set_intent(&key(), REF_A, 2).unwrap();
    let acts = r.on_message(upd, &report(&[("firmware-state", "idle")]), 3);
    assert!(
        matches!(&acts[..], [Action::WriteStatus { device, ack: Some(_), .. }] if *device == key())
    );
}
