//! Tests of the configuration loader.

use super::*;

fn write(dir: &tempfile::TempDir, body: &str) -> PathBuf {
    let p = dir.path().join("cloud.toml");
    std::fs::write(&p, body).unwrap();
    p
}

fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

#[test]
fn full_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        r#"
mode = "direct"
status_location = "device"
resync_period_secs = 60
[watch]
namespace = "fleet"
label_selector = "twinflash.io/managed=true"
[mqtt]
url = "mqtts://broker.local:8883"
client_id = "tf-cloud-1"
ca_file = "/etc/tf/ca.pem"
cert_file = "/etc/tf/c.pem"
key_file = "/etc/tf/k.pem"
topic_layout = "legacy"
[registry]
plain_http = ["registry.local:5000"]
[metrics]
listen = "127.0.0.1:9200"
"#,
    );
    let c = Config::load_with_env(Some(&p), env(&[])).unwrap();
    assert_eq!(c.mode, Mode::Direct);
    assert_eq!(c.status_location, StatusLocation::Device);
    assert_eq!(c.resync_period(), Duration::from_secs(60));
    assert_eq!(c.namespace(), Some("fleet"));
    assert_eq!(
        c.mqtt.as_ref().unwrap().topic_layout,
        mqtt_schema::TopicLayout::Legacy
    );
    assert_eq!(
        c.registry.plain_http,
        vec!["registry.local:5000".to_owned()]
    );
    assert_eq!(c.metrics.listen, "127.0.0.1:9200".parse().unwrap());
}

#[test]
fn defaults_and_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n");
    let c = Config::load_with_env(Some(&p), env(&[])).unwrap();
    assert_eq!(c.mode, Mode::Edgecore);
    assert_eq!(c.status_location, StatusLocation::DeviceStatus);
    assert_eq!(c.mqtt.as_ref().unwrap().client_id, "twinflash-cloud");
    assert_eq!(c.namespace(), None);
    assert_eq!(c.resync_period_secs, 300);

    let c = Config::load_with_env(
        Some(&p),
        env(&[
            ("TWINFLASH_CLOUD__MQTT__URL", "mqtt://127.0.0.1:1999"),
            ("TWINFLASH_CLOUD__STATUS_LOCATION", "device"),
            ("TWINFLASH_CLOUD__RESYNC_PERIOD_SECS", "42"),
            (
                "TWINFLASH_CLOUD__REGISTRY__PLAIN_HTTP",
                "a.local:5000,b.local:5000",
            ),
            ("TWINFLASH_CLOUD_CONFIG", "/not/ours"),
        ]),
    )
    .unwrap();
    assert_eq!(c.mqtt.as_ref().unwrap().url, "mqtt://127.0.0.1:1999");
    assert_eq!(c.status_location, StatusLocation::Device);
    assert_eq!(c.resync_period_secs, 42);
    assert_eq!(
        c.registry.plain_http,
        vec!["a.local:5000".to_owned(), "b.local:5000".to_owned()]
    );

    // Environment only, no file.
    let c = Config::load_with_env(
        None,
        env(&[("TWINFLASH_CLOUD__MQTT__URL", "tcp://127.0.0.1:1")]),
    )
    .unwrap();
    assert_eq!(c.mqtt.as_ref().unwrap().url, "tcp://127.0.0.1:1");
}

#[test]
fn unknown_keys_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for body in [
        "modes = \"direct\"\n[mqtt]\nurl = \"mqtt://h:1\"\n",
        "[mqtt]\nurl = \"mqtt://h:1\"\nclientid = \"x\"\n",
        "[mqtt]\nurl = \"mqtt://h:1\"\n[registry]\nplain = []\n",
    ] {
        let p = write(&dir, body);
        let err = Config::load_with_env(Some(&p), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Load { .. }), "{body}: {err}");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
    let p = write(&dir, "[mqtt]\nurl = \"mqtt://h:1\"\n");
    let err =
        Config::load_with_env(Some(&p), env(&[("TWINFLASH_CLOUD__MQTT__TYPO", "1")])).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn bad_values_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "mode = \"cloudcore\"\n[mqtt]\nurl = \"mqtt://h:1\"\n",
            "load",
        ),
        (
            "status_location = \"devices\"\n[mqtt]\nurl = \"mqtt://h:1\"\n",
            "load",
        ),
        ("[mqtt]\nclient_id = \"x\"\n", "load"),
        ("[mqtt]\nurl = \"http://h:1\"\n", "mqtt.url"),
        ("[mqtt]\nurl = \"mqtt://\"\n", "mqtt.url"),
        (
            "[mqtt]\nurl = \"mqtts://h:1\"\ncert_file = \"/c\"\n",
            "mqtt.cert_file",
        ),
        (
            "[mqtt]\nurl = \"mqtt://h:1\"\nca_file = \"/c\"\n",
            "mqtt.ca_file",
        ),
        (
            "resync_period_secs = 0\n[mqtt]\nurl = \"mqtt://h:1\"\n",
            "resync_period_secs",
        ),
        (
            "[watch]\nnamespace = \"a/b\"\n[mqtt]\nurl = \"mqtt://h:1\"\n",
            "watch.namespace",
        ),
        // Only dmi mode may leave out [mqtt]; a given one is checked in every mode.
        ("resync_period_secs = 5\n", "mqtt"),
        ("mode = \"direct\"\n", "mqtt"),
        ("mode = \"dmi\"\n[mqtt]\nurl = \"http://h:1\"\n", "mqtt.url"),
    ];
    for (body, want) in cases {
        let p = write(&dir, body);
        let err = Config::load_with_env(Some(&p), env(&[])).unwrap_err();
        match (&err, want) {
            (ConfigError::Load { .. }, "load") => {}
            (ConfigError::Invalid { key, .. }, w) => assert_eq!(*key, w, "{body}"),
            _ => panic!("{body}: unexpected {err}"),
        }
        assert_eq!(err.code(), ErrorCode::Internal);
    }
    let err =
        Config::load_with_env(Some(Path::new("/nonexistent/cloud.toml")), env(&[])).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cloud.toml"), "{err}");
}

#[test]
fn anti_entropy_period_defaults_to_60_s_and_0_disables_it() {
    let dir = tempfile::tempdir().unwrap();
    let load = |extra: &str| {
        let path = write(&dir, &format!("[mqtt]\nurl = \"mqtt://h:1\"\n{extra}"));
        Config::load_with_env(Some(&path), Some(Default::default()))
    };
    let cfg = load("").unwrap();
    assert_eq!(cfg.anti_entropy.period(), Duration::from_secs(60));
    let off = load("[anti_entropy]\nperiod_secs = 0\n").unwrap();
    assert!(off.anti_entropy.period().is_zero());
    assert!(load("[anti_entropy]\nperiod = 5\n").is_err(), "unknown key");
}

#[test]
fn dmi_mode_needs_no_mqtt_section() {
    let c = Config::load_with_env(None, env(&[("TWINFLASH_CLOUD__MODE", "dmi")])).unwrap();
    assert_eq!(c.mode, Mode::Dmi);
    assert!(c.mqtt.is_none());
    assert!(!c.mode.uses_mqtt() && Mode::Edgecore.uses_mqtt() && Mode::Direct.uses_mqtt());
    // Given anyway, it is accepted (and unused), with the default client id filled in.
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "mode = \"dmi\"\n[mqtt]\nurl = \"mqtt://h:1\"\n");
    let c = Config::load_with_env(Some(&p), env(&[])).unwrap();
    assert_eq!(c.mqtt.unwrap().client_id, DEFAULT_CLIENT_ID);
}

#[test]
fn signatures_section_with_overrides_loads_and_defaults_to_off() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        r#"
[mqtt]
url = "mqtt://h:1"
[signatures]
mode = "warn"
keys = ["/etc/twinflash/keys/release.pub"]
[[signatures.overrides]]
namespace = "plant-a"
device = "sensor-7"
mode = "require"
keys = ["/etc/twinflash/keys/plant-a.pub"]
[[signatures.overrides]]
namespace = "plant-b"
mode = "off"
"#,
    );
    let c = Config::load_with_env(Some(&p), env(&[])).unwrap();
    let s = &c.signatures;
    assert_eq!(s.mode, SignatureMode::Warn);
    assert_eq!(
        s.keys,
        vec![PathBuf::from("/etc/twinflash/keys/release.pub")]
    );
    assert_eq!(s.overrides.len(), 2);
    assert_eq!(s.overrides[0].scope(), "plant-a/sensor-7");
    assert_eq!(s.overrides[0].mode, SignatureMode::Require);
    assert_eq!(s.overrides[1].scope(), "plant-b");
    assert!(s.overrides[1].keys.is_empty());
    assert!(s.any_enabled());

    let c = Config::load_with_env(None, env(&[("TWINFLASH_CLOUD__MODE", "dmi")])).unwrap();
    assert_eq!(c.signatures, SignaturesConfig::default());
    assert!(!c.signatures.any_enabled());

    // The environment sets the default policy, keys as a comma-separated list.
    let c = Config::load_with_env(
        None,
        env(&[
            ("TWINFLASH_CLOUD__MODE", "dmi"),
            ("TWINFLASH_CLOUD__SIGNATURES__MODE", "require"),
            ("TWINFLASH_CLOUD__SIGNATURES__KEYS", "/k/a.pub,/k/b.pub"),
        ]),
    )
    .unwrap();
    assert_eq!(c.signatures.mode, SignatureMode::Require);
    assert_eq!(c.signatures.keys.len(), 2);
}

#[test]
fn signature_policies_that_cannot_verify_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let head = "mode = \"dmi\"\n";
    let ov = |body: &str| format!("{head}[signatures]\n[[signatures.overrides]]\n{body}");
    let cases = [
        (
            format!("{head}[signatures]\nmode = \"require\"\n"),
            "signatures.keys",
        ),
        (
            format!("{head}[signatures]\nmode = \"warn\"\nkeys = []\n"),
            "signatures.keys",
        ),
        (
            ov("namespace = \"a\"\nmode = \"require\"\n"),
            "signatures.overrides",
        ),
        (
            ov("namespace = \"\"\nmode = \"off\"\n"),
            "signatures.overrides",
        ),
        (
            ov("namespace = \"a/b\"\nmode = \"off\"\n"),
            "signatures.overrides",
        ),
        (
            ov("namespace = \"a\"\ndevice = \"\"\nmode = \"off\"\n"),
            "signatures.overrides",
        ),
        (
            ov(
                "namespace = \"a\"\nmode = \"off\"\n[[signatures.overrides]]\nnamespace = \"a\"\nmode = \"off\"\n",
            ),
            "signatures.overrides",
        ),
        (format!("{head}[signatures]\nmode = \"strict\"\n"), "load"),
        (ov("namespace = \"a\"\n"), "load"),
        (ov("namespace = \"a\"\nmode = \"off\"\nkey = []\n"), "load"),
    ];
    for (body, want) in cases {
        let p = write(&dir, &body);
        let err = Config::load_with_env(Some(&p), env(&[])).unwrap_err();
        match (&err, want) {
            (ConfigError::Load { .. }, "load") => {}
            (ConfigError::Invalid { key, .. }, w) => assert_eq!(*key, w, "{body}"),
            _ => panic!("{body}: unexpected {err}"),
        }
    }
    // An override that verifies may borrow the default's keys.
    let p = write(
        &dir,
        &format!(
            "{head}[signatures]\nkeys = [\"/k/r.pub\"]\n[[signatures.overrides]]\nnamespace = \"a\"\nmode = \"require\"\n"
        ),
    );
    Config::load_with_env(Some(&p), env(&[])).unwrap();
}
