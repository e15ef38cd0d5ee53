//! The logical value of each encode vector, built by hand from its notes (or with this crate's
//! builders where the vector records an edgecore builder), encoded with our encoder.

use std::collections::BTreeMap;

use mqtt_schema::{
    BaseMessage, Device, DeviceAttrUpdate, DeviceCloudMsg, DeviceMsg, DeviceStateUpdate,
    DeviceTwinDelta, DeviceTwinDocument, DeviceTwinResult, DeviceTwinUpdate, DeviceUpdate,
    MembershipGetResult, MembershipUpdate, MsgAttr, MsgTwin, ResultMessage, TwinDoc, TwinMap,
    TwinUpdateError, TwinValue, TwinVersion, TypeMetadata, ValueMetadata, WireMessage,
    build_twin_get_result, device_twin_delta, twin_get_request,
};

use crate::vectors::Vector;

pub const NEW: &str = "registry.local:5000/fw/blinky@sha256:98c66134049792d306ac83cef42f94bbebd970b95f54a26adc1120b4db8f5ad2";
pub const OLD: &str = "registry.local:5000/fw/blinky@sha256:5d46f53d9fa65c9b2ea381117133b7bb9cfde3905da307dad7d4576efc76859f";
pub const T0: i64 = 1_700_000_000_000;
pub const UUID1: &str = "00000000-0000-4000-8000-000000000001";
const UUID2: &str = "00000000-0000-4000-8000-000000000002";

pub fn tv(v: &str) -> TwinValue {
    TwinValue::new(v)
}

pub fn tvm(v: &str, ts: i64) -> TwinValue {
    TwinValue {
        value: Some(v.into()),
        metadata: Some(ValueMetadata { timestamp: ts }),
    }
}

pub fn ty(t: &str) -> Option<TypeMetadata> {
    Some(TypeMetadata::new(t))
}

fn base(id: &str, ts: i64) -> BaseMessage {
    BaseMessage::new(id, ts)
}

fn map<V>(entries: Vec<(&str, V)>) -> BTreeMap<String, V> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn update(b: BaseMessage, twins: Vec<(&str, Option<MsgTwin>)>) -> Vec<u8> {
    DeviceTwinUpdate {
        base: b,
        twin: Some(map(twins)),
    }
    .encode()
}

fn actual_only(v: TwinValue) -> Option<MsgTwin> {
    Some(MsgTwin {
        actual: Some(v),
        ..MsgTwin::default()
    })
}

/// The stored firmware twin of the c* vectors (expected new, actual old, optional false).
fn stored_firmware(versions: bool) -> MsgTwin {
    MsgTwin {
        expected: Some(tvm(NEW, T0 + 2000)),
        actual: Some(tvm(OLD, T0 + 1000)),
        optional: Some(false),
        metadata: ty("string"),
        expected_version: versions.then_some(TwinVersion { cloud: 1, edge: 2 }),
        actual_version: versions.then_some(TwinVersion { cloud: 0, edge: 3 }),
    }
}

fn deleted_led() -> MsgTwin {
    MsgTwin {
        expected: Some(TwinValue::default()),
        actual: Some(TwinValue::default()),
        optional: Some(true),
        metadata: ty("deleted"),
        expected_version: Some(TwinVersion { cloud: 0, edge: 2 }),
        actual_version: Some(TwinVersion { cloud: 0, edge: 2 }),
    }
}

fn delta(v: &Vector, twins: Vec<(&str, MsgTwin)>) -> Vec<u8> {
    let (msg, publish) = device_twin_delta(base(UUID1, T0), &map(twins));
    assert_eq!(
        Some(publish),
        v.json["delta_produced"].as_bool(),
        "{}",
        v.name
    );
    msg.encode()
}

fn vendor_attrs() -> BTreeMap<String, Option<MsgAttr>> {
    map(vec![(
        "vendor",
        Some(MsgAttr {
            value: "acme".into(),
            optional: Some(true),
            metadata: ty("string"),
        }),
    )])
}

fn blinky(with_twin: bool) -> Device {
    Device {
        id: "default/blinky-01".into(),
        name: "blinky-01".into(),
        description: "demo <blinky>".into(),
        state: "online".into(),
        attributes: vendor_attrs(),
        twin: if with_twin {
            map(vec![
                ("firmware", Some(stored_firmware(false))),
                ("led", None),
            ])
        } else {
            TwinMap::new()
        },
        ..Device::default()
    }
}

fn int_twin(v: TwinValue, optional: Option<bool>) -> Option<MsgTwin> {
    Some(MsgTwin {
        actual: Some(v),
        optional,
        metadata: ty("int"),
        ..MsgTwin::default()
    })
}

/// Our encoding of the logical value of encode vector `v`, or `None` if this test does not know it.
pub fn build(v: &Vector) -> Option<Vec<u8>> {
    let empty_meta = || TwinValue {
        value: None,
        metadata: Some(ValueMetadata::default()),
    };
    let with_empty_meta = |s: &str| TwinValue {
        value: Some(s.into()),
        ..empty_meta()
    };
    Some(match v.name.as_str() {
        "a01_update_actual_plain" => {
            update(base("", T0), vec![("temperature", actual_only(tv("23")))])
        }
        "a02_update_actual_with_metadata_int" => update(
            base("evt-a02", T0),
            vec![("temperature", int_twin(tvm("23", T0), None))],
        ),
        "a03_update_optional_nil_vs_false" => update(
            base("evt-a03", T0),
            vec![
                ("temperature", int_twin(tv("23"), Some(false))),
                ("humidity", int_twin(tv("41"), None)),
            ],
        ),
        "a04_update_optional_true" => update(
            base("evt-a04", T0),
            vec![(
                "temperature",
                Some(MsgTwin {
                    actual: Some(tv("23")),
                    optional: Some(true),
                    ..MsgTwin::default()
                }),
            )],
        ),
        "a05_update_null_twin_entry" => update(base("evt-a05", T0), vec![("led", None)]),
        "a06_update_empty_pointers" => update(
            base("evt-a06", T0),
            vec![
                ("a_empty_string", actual_only(tv(""))),
                ("b_nil_value", actual_only(TwinValue::default())),
                (
                    "c_zero_ts",
                    Some(MsgTwin {
                        actual: Some(with_empty_meta("1")),
                        metadata: Some(TypeMetadata::default()),
                        ..MsgTwin::default()
                    }),
                ),
                (
                    "d_versions",
                    Some(MsgTwin {
                        actual: Some(tv("1")),
                        expected_version: Some(TwinVersion::default()),
                        actual_version: Some(TwinVersion { cloud: 2, edge: 5 }),
                        ..MsgTwin::default()
                    }),
                ),
            ],
        ),
        "a07_update_nil_twin_map" => DeviceTwinUpdate {
            base: base("", 0),
            twin: None,
        }
        .encode(),
        "a08_update_empty_twin_map" => update(base("evt-a08", T0), vec![]),
        "a09_mappersgo_CreateMessageTwinUpdate" => update(
            base("", T0),
            vec![("temperature", int_twin(with_empty_meta("23"), None))],
        ),
        "a10_mapperframework_CreateMessageTwinUpdate"
        | "a11_mapperframework_CreateMessageTwinUpdate_empty_expected" => {
            let expected = if v.name.starts_with("a10") { "25" } else { "" };
            let mut t = int_twin(with_empty_meta("23"), None)?;
            t.expected = Some(with_empty_meta(expected));
            update(base("", T0), vec![("temperature", Some(t))])
        }
        "a12_dmiserver_CreateMessageTwinUpdate" => update(
            base("", T0),
            vec![(
                "temperature",
                Some(MsgTwin {
                    expected: Some(tv("25")),
                    actual: Some(tv("23")),
                    ..MsgTwin::default()
                }),
            )],
        ),
        "a13_mappersgo_CreateMessageState" => DeviceUpdate {
            base: base("", T0),
            state: "online".into(),
            attributes: None,
        }
        .encode(),
        "a14_dmiserver_CreateMessageStateUpdate" => DeviceStateUpdate {
            base: base("", T0),
            state: "online".into(),
        }
        .encode(),
        "b01_update_expected_firmware_digest" => update(
            base("fw-rollout-0001", T0),
            vec![(
                "firmware",
                Some(MsgTwin {
                    expected: Some(tv(NEW)),
                    ..MsgTwin::default()
                }),
            )],
        ),
        "b02_update_expected_firmware_full" => update(
            base("fw-rollout-0002", T0),
            vec![(
                "firmware",
                Some(MsgTwin {
                    expected: Some(tvm(NEW, T0)),
                    optional: Some(false),
                    metadata: ty("string"),
                    ..MsgTwin::default()
                }),
            )],
        ),
        "b03_update_expected_firmware_tag_plus_REJECTED" => {
            let tagged = "registry.local:5000/fw/blinky:1.2.3+build.5";
            let msg = DeviceTwinUpdate {
                base: base("fw-rollout-0003", T0),
                twin: Some(map(vec![(
                    "firmware",
                    Some(MsgTwin {
                        expected: Some(tv(tagged)),
                        ..MsgTwin::default()
                    }),
                )])),
            };
            let err = mqtt_schema::validate_device_twin_update(&msg).unwrap_err();
            assert!(v.json["notes"].as_str()?.contains(&err.reason()));
            msg.encode()
        }
        "c01_delta_firmware_differs" => delta(v, vec![("firmware", stored_firmware(true))]),
        "c02_delta_expected_equals_actual" => {
            let mut f = stored_firmware(true);
            f.actual = Some(tvm(NEW, T0 + 1000));
            delta(v, vec![("firmware", f)])
        }
        "c03_delta_several_twins_one_differs" => delta(
            v,
            vec![
                ("firmware", stored_firmware(true)),
                (
                    "mode",
                    MsgTwin {
                        expected: Some(tv("auto")),
                        actual: Some(tv("auto")),
                        optional: Some(true),
                        metadata: ty("string"),
                        ..MsgTwin::default()
                    },
                ),
                ("temperature", int_twin(tv("23"), Some(true))?),
                (
                    "led",
                    MsgTwin {
                        expected: Some(tv("on")),
                        actual: Some(tv("off")),
                        ..deleted_led()
                    },
                ),
            ],
        ),
        "c04_delta_deleted_twin_only" => delta(
            v,
            vec![(
                "led",
                MsgTwin {
                    expected: Some(tv("on")),
                    actual: Some(tv("off")),
                    ..deleted_led()
                },
            )],
        ),
        "c05_delta_empty_expected" => {
            let mut f = stored_firmware(true);
            f.expected = Some(tv(""));
            delta(v, vec![("firmware", f)])
        }
        "c06_delta_expected_without_actual" => {
            let mut f = stored_firmware(true);
            f.actual = None;
            delta(v, vec![("firmware", f)])
        }
        "c07_delta_actual_value_nil" => delta(
            v,
            vec![(
                "firmware",
                MsgTwin {
                    expected: Some(tv(NEW)),
                    actual: Some(TwinValue::default()),
                    metadata: ty("string"),
                    ..MsgTwin::default()
                },
            )],
        ),
        "c08_delta_nil_twins_map" => delta(v, vec![]),
        "c10_result_dealtype0_get_or_update" => build_twin_get_result(
            base("evt-c10", T0),
            &map(vec![
                ("firmware", Some(stored_firmware(true))),
                ("removed", None),
                ("led", Some(deleted_led())),
            ]),
        )
        .encode(),
        "c11_result_dealtype1_passthrough" => DeviceTwinResult {
            base: base("evt-c11", T0),
            twin: Some(map(vec![
                ("firmware", Some(stored_firmware(true))),
                ("removed", None),
                ("led", Some(deleted_led())),
            ])),
        }
        .encode(),
        "c12_result_nil_map_dealtype1" => DeviceTwinResult {
            base: base("evt-c12", T0),
            twin: None,
        }
        .encode(),
        "c13_document_last_null_and_current_null" => DeviceTwinDocument {
            base: base("evt-c13", T0),
            twin: Some(map(vec![
                (
                    "firmware",
                    Some(TwinDoc {
                        last: Some(MsgTwin {
                            expected: None,
                            ..stored_firmware(false)
                        }),
                        current: Some(stored_firmware(false)),
                    }),
                ),
                (
                    "gone",
                    Some(TwinDoc {
                        last: Some(MsgTwin {
                            actual: Some(tv("x")),
                            optional: Some(true),
                            metadata: ty("string"),
                            ..MsgTwin::default()
                        }),
                        current: None,
                    }),
                ),
                (
                    "newtwin",
                    Some(TwinDoc {
                        last: None,
                        current: int_twin(tvm("1", T0), Some(true)),
                    }),
                ),
            ])),
        }
        .encode(),
        "c14_document_nil_map" => DeviceTwinDocument {
            base: base("", T0),
            twin: None,
        }
        .encode(),
        "d01_error_result_400" => {
            let reason = TwinUpdateError::Value {
                key: "firmware".into(),
            }
            .reason();
            ResultMessage::error(base("evt-d01", T0), 400, reason).encode()
        }
        "d02_error_result_zero" => ResultMessage {
            base: base("", T0),
            ..ResultMessage::default()
        }
        .encode(),
        "d03_error_result_escaping" => {
            ResultMessage::error(base("evt-d03", T0), 500, "a<b && c>d \"q\" é \u{2028}").encode()
        }
        "d04_membership_updated_added" => MembershipUpdate {
            base: base(UUID1, T0),
            added_devices: Some(vec![blinky(true)]),
            removed_devices: None,
        }
        .encode(),
        "d05_membership_updated_removed" => MembershipUpdate {
            base: base(UUID2, T0),
            added_devices: None,
            removed_devices: Some(vec![Device {
                id: "default/blinky-01".into(),
                name: "blinky-01".into(),
                ..Device::default()
            }]),
        }
        .encode(),
        "d06_membership_get_result" => MembershipGetResult {
            base: base("evt-d06", T0),
            devices: Some(vec![blinky(false)]),
        }
        .encode(),
        "d07_membership_get_result_empty" => MembershipGetResult {
            base: base("evt-d07", T0),
            devices: Some(vec![]),
        }
        .encode(),
        "d08_state_update_result" | "d09_state_update_result_offline" => {
            let online = v.name.starts_with("d08");
            DeviceMsg {
                base: base(if online { UUID1 } else { UUID2 }, T0),
                device: DeviceCloudMsg {
                    name: "blinky-01".into(),
                    state: if online { "online" } else { "offline" }.into(),
                    last_online_time: if online {
                        "2023-11-14T22:13:20Z".into()
                    } else {
                        String::new()
                    },
                },
            }
            .encode()
        }
        "d10_twin_get_request" => twin_get_request("g1", T0).encode(),
        "d11_device_attr_updated" => {
            let mut attrs = vendor_attrs();
            attrs.insert("gone".into(), None);
            DeviceAttrUpdate {
                base: base("evt-d11", T0),
                attributes: Some(attrs),
            }
            .encode()
        }
        "h01_string_escaping" => update(
            base("<&>", T0),
            vec![(
                "note",
                actual_only(tv(
                    "<b>&amp;\"'\\/\u{2028}\u{2029}\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f} é 😀 \u{fffd}",
                )),
            )],
        ),
        "h02_map_key_ordering" => update(
            base("evt-h02", T0),
            [
                "~", "a_b", "é", "a", "Z", "10", "a/b", "B", "9", "_", "<x>", "a.b", "A", "a-b",
            ]
            .into_iter()
            .map(|k| (k, actual_only(tv("1"))))
            .collect(),
        ),
        "h03_delta_struct_nil_twin" => DeviceTwinDelta {
            base: base("evt-h03", T0),
            twin: None,
            delta: Some(map(vec![
                ("b", "2".to_owned()),
                ("a", "1".to_owned()),
                ("A", "0".to_owned()),
            ])),
        }
        .encode(),
        _ => return None,
    })
}
