use super::*;
use mqtt_schema::gojson::decode;
use mqtt_schema::{DeviceTwinDelta, DeviceTwinResult, DeviceTwinUpdate, MsgTwin};

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
    assert_eq!(
        acts,
        vec![Action::WriteStatus {
            device: key(),
            actual: BTreeMap::from([("firmware-state".into(), "downloading:5".into())]),
            timestamp_ms: 11,
        }]
    );

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
fn twin_get_is_answered_with_expected_and_actual() {
    let mut r = relay();
    r.on_message(UPDATE, &report(&[("firmware", REF_A)]), 5);
    r.set_intent(&key(), REF_B, 10).unwrap();
    let acts = r.on_message("$hw/events/device/default/sim-00/twin/get", b"{}", 11);
    let p = publishes(&acts);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, "$hw/events/device/default/sim-00/twin/get/result");
    assert!(!p[0].2, "a get result is not retained");
    let res: DeviceTwinResult = decode(p[0].1).unwrap();
    let fw = res.twin("firmware").unwrap();
    assert_eq!(fw.expected_value(), REF_B);
    assert_eq!(fw.actual_value(), REF_A);

    // An unknown device gets an empty twin map (no intent), not silence.
    let acts = r.on_message("$hw/events/device/default/other/twin/get", b"", 12);
    let res: DeviceTwinResult = decode(publishes(&acts)[0].1).unwrap();
    assert_eq!(res.twin, Some(mqtt_schema::TwinMap::new()));
}

#[test]
fn garbage_and_foreign_topics_are_ignored() {
    let mut r = relay();
    assert!(r.on_message(UPDATE, b"{not json", 1).is_empty());
    assert!(r.on_message(UPDATE, b"", 1).is_empty());
    assert!(
        r.on_message("$hw/events/node/n/membership/get", b"{}", 1)
            .is_empty()
    );
    assert!(r.on_message("not/a/kubeedge/topic", b"{}", 1).is_empty());
    // A report with only expected values (someone else's intent) writes nothing.
    let only_expected = to_go_json(&mqtt_schema::intent(
        BaseMessage::new("x", 1),
        &TwinNames::default(),
        &mqtt_schema::FirmwareRef::parse(REF_A).unwrap(),
    ));
    assert!(r.on_message(UPDATE, &only_expected, 1).is_empty());
}

#[test]
fn legacy_layout_reports_need_a_known_device_for_the_namespace() {
    let mut r = Relay::new(TopicLayout::Legacy, TwinNames::default());
    let upd = "$hw/events/device/sim-00/twin/update";
    let acts = r.on_message(upd, &report(&[("firmware-state", "idle")]), 1);
    assert!(acts.is_empty(), "namespace unknown: nothing to write");
    r.set_intent(&key(), REF_A, 2).unwrap();
    let acts = r.on_message(upd, &report(&[("firmware-state", "idle")]), 3);
    assert!(matches!(&acts[..], [Action::WriteStatus { device, .. }] if *device == key()));
}
