use super::*;
use crate::config::Config;

const REF: &str = "registry.local:5000/fw/blinky@sha256:98c66134049792d306ac83cef42f94bbebd970b95f54a26adc1120b4db8f5ad2";

fn golden(name: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mqtt-schema/tests/data/kubeedge")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

#[test]
fn edgecore_intent_is_the_golden_update_plus_the_type_metadata() {
    let key = DeviceId::namespaced("default", "blinky-01").unwrap();
    let (topic, bytes) = intent_message(
        &key,
        REF,
        TopicLayout::Namespaced,
        &TwinNames::default(),
        BaseMessage::new("fw-rollout-0001", 1_700_000_000_000),
    )
    .unwrap();
    let g = golden("b01_update_expected_firmware_digest.json");
    assert_eq!(topic, g["topic"].as_str().unwrap());
    // edgecore accepts it.
    let update = mqtt_schema::unmarshal_device_twin_update(&bytes).unwrap();
    assert_eq!(update.twin("firmware").unwrap().expected_value(), REF);
    // Same shape as the golden payload; twinflash adds `metadata.type = string` to its twins.
    let mut ours: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(ours["twin"]["firmware"]["metadata"]["type"], "string");
    ours["twin"]["firmware"]
        .as_object_mut()
        .unwrap()
        .remove("metadata");
    let theirs: serde_json::Value = serde_json::from_str(g["payload"].as_str().unwrap()).unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn a_reference_that_is_not_pinned_is_never_encoded() {
    let key = DeviceId::namespaced("default", "b").unwrap();
    let err = intent_message(
        &key,
        "registry.local/fw/b:1.0",
        TopicLayout::Namespaced,
        &TwinNames::default(),
        BaseMessage::default(),
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal);
    // A namespace with a topic separator cannot even make an id.
    assert!(DeviceId::namespaced("a/b", "c").is_err());
}

fn mqtt_cfg(url: &str) -> MqttConfig {
    let toml = format!("[mqtt]\nurl = \"{url}\"\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load_with_env(Some(&path), Some(Default::default()))
        .unwrap()
        .mqtt
        .unwrap()
}

#[test]
fn options_follow_the_url() {
    let o = mqtt_options(&mqtt_cfg("mqtt://127.0.0.1:1999")).unwrap();
    assert_eq!(o.broker_address(), ("127.0.0.1".to_owned(), 1999));
    let o = mqtt_options(&mqtt_cfg("tcp://broker")).unwrap();
    assert_eq!(o.broker_address(), ("broker".to_owned(), 1883));
    let mut cfg = mqtt_cfg("mqtt://h:1");
    cfg.url = "mqtt://h:notaport".into();
    assert!(matches!(mqtt_options(&cfg), Err(MqttError::Connection(_))));
    cfg.url = "mqtts://h:8883".into();
    let err = mqtt_options(&cfg).unwrap_err().to_string();
    assert!(err.contains("mqtt.ca_file"), "TLS needs a CA: {err}");
    cfg.ca_file = Some("/nonexistent/ca.pem".into());
    let err = mqtt_options(&cfg).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    cfg.url = "mqtt://h:1".into();
    cfg.username = Some("u".into());
    cfg.password_file = Some("/nonexistent/pw".into());
    let err = mqtt_options(&cfg).unwrap_err();
    assert!(matches!(err, MqttError::Connection(_)), "{err}");
    assert!(err.to_string().contains("mqtt.password_file"), "{err}");
}
