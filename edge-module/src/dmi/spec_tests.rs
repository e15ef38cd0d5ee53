use super::*;
use prost::Message;
use twinflash_flasher::FlasherConfig;

const OLD: &str = "registry.local:5000/fw/blinky:1.4.1@sha256:5d46f53d9fa65c9b2ea381117133b7bb9cfde3905da307dad7d4576efc76859f";

/// The Device of a golden RegisterDeviceRequest (dmi/tests/data, produced by KubeEdge's own code).
fn golden(name: &str) -> pb::Device {
    let path = format!(
        "{}/../dmi/tests/data/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let bytes = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        v["payload_b64"].as_str().unwrap(),
    )
    .unwrap();
    pb::RegisterDeviceRequest::decode(bytes.as_slice())
        .unwrap()
        .device
        .unwrap()
}

fn config(pairs: &[(&str, Value)]) -> pb::ProtocolConfig {
    pb::ProtocolConfig {
        protocol_name: "twinflash".into(),
        config_data: Some(pb::CustomizedValue {
            data: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), twinflash_dmi::value::from_json(v).unwrap()))
                .collect(),
        }),
    }
}

#[test]
fn the_golden_device_reads_as_a_probe_rs_device_with_its_intent_and_report_cycle() {
    let d = read(&golden("c01_RegisterDeviceRequest_blinky-1")).unwrap();
    assert_eq!(d.id, "default/blinky-1");
    let cfg = d.settings.unwrap();
    assert_eq!(cfg.chip, "nRF52840_xxAA");
    let FlasherConfig::ProbeRs(p) = cfg.flasher else {
        panic!("not probe-rs")
    };
    assert_eq!(p.probe.as_deref(), Some("1366:1015"));
    assert_eq!(d.intent, Some(Intent::Valid(OLD.into())));
    assert_eq!(d.report_cycle, Some(Duration::from_secs(60)));
}

#[test]
fn a_key_the_backend_does_not_have_is_refused_with_the_toml_message() {
    // c05's model defaults carry `verify`, which the probe-rs backend does not know (it has `preverify`).
    let d = read(&golden("c05_RegisterDeviceRequest_model_defaults_override")).unwrap();
    let e = d.settings.unwrap_err();
    assert!(e.reason.contains("unknown field `verify`"), "{e}");
    assert!(
        d.intent.is_some(),
        "the intent is still read: the device reports rejected:invalid-config"
    );
}

#[test]
fn numbers_as_strings_json_lists_and_float32_limits() {
    let p = config(&[
        ("flasher", Value::from("simulated")),
        ("chip", Value::from("STM32F411RETx")),
        ("dir", Value::from("/tmp/sim-1")),
        ("size", Value::from("262144")),
        ("origin", Value::from("0x08000000")),
        ("ab", Value::from(true)),
        ("faults", Value::from(r#"{"power_cut_at_byte": 100}"#)),
    ]);
    let cfg = settings("default/sim-1", Some(&p)).unwrap();
    let FlasherConfig::Simulated(s) = cfg.flasher else {
        panic!("not simulated")
    };
    assert_eq!((s.size, s.origin, s.ab), (262_144, 0x0800_0000, true));

    let p = config(&[
        ("flasher", Value::from("command")),
        ("chip", Value::from("esp32")),
        (
            "flash",
            Value::from(r#"["esptool.py","write_flash","{base_address}","{file}"]"#),
        ),
        ("timeout_secs", Value::from(120)),
    ]);
    let FlasherConfig::Command(c) = settings("default/esp-1", Some(&p)).unwrap().flasher else {
        panic!("not command")
    };
    assert_eq!(c.flash.len(), 4);
    assert_eq!(c.timeout_secs, 120);

    // A number KubeEdge passed through float32 above 2^24 may have lost digits.
    let p = config(&[
        ("flasher", Value::from("simulated")),
        ("chip", Value::from("x")),
        ("dir", Value::from("/tmp/s")),
        ("size", Value::from(134_217_728)),
    ]);
    let e = settings("default/s", Some(&p)).unwrap_err();
    assert_eq!(e.key, "size");
    assert!(e.reason.contains("write it as a string"), "{e}");
}

#[test]
fn missing_and_wrong_settings_name_their_key() {
    let cases: &[(&[(&str, Value)], &str)] = &[
        (&[("chip", Value::from("x"))], "flasher"),
        (&[("flasher", Value::from("probe-rs"))], "chip"),
        (
            &[
                ("flasher", Value::from("probe-rs")),
                ("chip", Value::from("")),
            ],
            "chip",
        ),
        (
            &[
                ("flasher", Value::from("jtag-magic")),
                ("chip", Value::from("x")),
            ],
            "flasher",
        ),
        (
            &[
                ("flasher", Value::from("simulated")),
                ("chip", Value::from("x")),
                ("dir", Value::from("/tmp/sim")),
                ("size", Value::from("lots")),
            ],
            "size",
        ),
        (
            &[
                ("flasher", Value::from("probe-rs")),
                ("chip", Value::from("x")),
                ("preverify", Value::from("yes please")),
            ],
            "preverify",
        ),
        (
            &[
                ("flasher", Value::from("probe-rs")),
                ("chip", Value::from("x")),
                ("allow_downgrade", Value::from("sometimes")),
            ],
            "allow_downgrade",
        ),
        (
            &[
                ("flasher", Value::from("command")),
                ("chip", Value::from("x")),
                ("flash", Value::from("[oops")),
            ],
            "flash",
        ),
        (
            &[
                ("flasher", Value::from("probe-rs")),
                ("chip", Value::from("x")),
                ("twin_prefix", Value::from("a b")),
            ],
            "twin_prefix",
        ),
    ];
    for (pairs, key) in cases {
        let e = settings("default/d", Some(&config(pairs))).unwrap_err();
        assert_eq!(e.key, *key, "{e}");
    }
    assert_eq!(settings("default/d", None).unwrap_err().key, "protocol");
}

#[test]
fn a_tag_is_flashed_only_through_the_pin_written_for_exactly_that_tag() {
    let tag = "registry.local:5000/fw/blinky:1.4.1";
    let with = |meta: &[(&str, &str)]| pb::TwinProperty {
        value: tag.into(),
        metadata: meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    assert_eq!(
        intent(&with(&[(PINNED_KEY, OLD)])),
        Some(Intent::Valid(OLD.into()))
    );
    // No pin, a pin of another tag, a pin that is not digest-pinned: not an intent that can be flashed.
    for meta in [
        vec![],
        vec![(
            PINNED_KEY,
            "registry.local:5000/fw/blinky:1.4.2@sha256:5d46f53d9fa65c9b2ea381117133b7bb9cfde3905da307dad7d4576efc76859f",
        )],
        vec![(PINNED_KEY, "registry.local:5000/fw/blinky:1.4.1")],
    ] {
        assert!(
            matches!(intent(&with(&meta)), Some(Intent::Invalid { .. })),
            "{meta:?}"
        );
    }
    // A digest-pinned value needs no pin; an empty one is no intent.
    let pinned = pb::TwinProperty {
        value: OLD.into(),
        metadata: Default::default(),
    };
    assert_eq!(intent(&pinned), Some(Intent::Valid(OLD.into())));
    assert_eq!(intent(&pb::TwinProperty::default()), None);
}

#[test]
fn names_that_could_escape_the_state_directory_are_refused() {
    for bad in ["", "..", "a/b", "A", "a_b", ".hidden", &"x".repeat(254)] {
        assert!(device_id("default", bad).is_none(), "{bad:?}");
        assert!(device_id(bad, "d").is_none(), "{bad:?}");
    }
    assert_eq!(
        device_id("default", "blinky-1.a").as_deref(),
        Some("default/blinky-1.a")
    );
}

#[test]
fn a_value_of_the_wrong_type_names_its_own_key_not_the_config_data() {
    // Issue 22: the real run logged ``config data key `configData`: invalid type: string "lots"``.
    let p = config(&[
        ("flasher", Value::from("simulated")),
        ("chip", Value::from("x")),
        ("dir", Value::from("/tmp/sim")),
        ("size", Value::from("lots")),
    ]);
    let e = settings("default/d", Some(&p)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config data key `size`: invalid type: string \"lots\", expected u64"
    );
}

#[test]
fn the_confirm_key_takes_every_check_kind_of_the_toml_table() {
    let base = |confirm: &str| {
        config(&[
            ("flasher", Value::from("gdb")),
            ("target", Value::from("127.0.0.1:3333")),
            ("chip", Value::from("STM32F405RG")),
            ("confirm", Value::from(confirm)),
        ])
    };
    let serial = settings(
        "default/d",
        Some(&base(
            r#"{"kind":"serial","port":"/dev/ttyUSB0","pattern":"boot version={version}","timeout_secs":30}"#,
        )),
    )
    .unwrap();
    let c = serial.confirm.unwrap();
    assert_eq!(
        (c.kind, c.port.as_deref(), c.timeout_secs),
        (
            crate::config::ConfirmKind::Serial,
            Some(std::path::Path::new("/dev/ttyUSB0")),
            30
        )
    );
    // An address above 2^24 is safe inside the JSON string (KubeEdge's float32 does not touch it), as a number or
    // as a "0x..." string.
    for memory in [
        r#"{"kind":"memory","address":536870912}"#,
        r#"{"kind":"memory","address":"0x20000000"}"#,
    ] {
        let c = settings("default/d", Some(&base(memory)))
            .unwrap()
            .confirm
            .unwrap();
        assert_eq!(c.address, Some(0x2000_0000), "{memory}");
    }
    // The same rules as the TOML table, and the key named.
    let e = settings(
        "default/d",
        Some(&base(r#"{"kind":"serial","port":"/dev/ttyUSB0"}"#)),
    )
    .unwrap_err();
    assert_eq!(e.key, "confirm.pattern", "{e}");
    // A twin check needs edgecore's twin store (MQTT mode): refused, by name.
    let e = settings(
        "default/d",
        Some(&base(r#"{"kind":"twin","property":"app-version"}"#)),
    )
    .unwrap_err();
    assert_eq!(e.key, "confirm.kind", "{e}");
    assert!(e.reason.contains("DMI"), "{e}");
}
