use super::*;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/edge-config.example.toml")
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("edge.toml");
    std::fs::write(&p, text).unwrap();
    p
}

const MINIMAL: &str = r#"
node = "n1"
state_dir = "/tmp/tf"
[mqtt]
url = "mqtt://127.0.0.1:1883"
client_id = "c1"
[[devices]]
id = "default/d1"
chip = "nRF52840_xxAA"
[devices.flasher]
kind = "simulated"
dir = "/tmp/tf/d1"
size = 65536
"#;

#[test]
fn the_documented_example_loads() {
    let cfg = EdgeConfig::load(&example()).unwrap();
    assert_eq!(cfg.devices.len(), 4);
    assert_eq!(cfg.mqtt.topic_layout, mqtt_schema::TopicLayout::Namespaced);
    assert_eq!(cfg.registry.mirrors.len(), 1);
    assert!(matches!(
        &cfg.devices[2].flasher,
        FlasherConfig::Gdb(g) if g.target == "127.0.0.1:3333"
    ));
    assert!(matches!(
        cfg.devices[3].flasher,
        FlasherConfig::Simulated(_)
    ));
}

#[test]
fn defaults_fill_what_a_minimal_file_leaves_out() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EdgeConfig::load(&write(dir.path(), MINIMAL)).unwrap();
    assert_eq!(cfg.limits.flash_attempts, 3);
    assert_eq!(cfg.registry.max_artifact_bytes, 64 * 1024 * 1024);
    assert_eq!(cfg.log.format, LogFormat::Text);
    assert!(cfg.metrics.listen.is_none());
}

#[test]
fn registry_deadlines_have_defaults_reach_the_fetcher_and_must_be_positive() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EdgeConfig::load(&write(dir.path(), MINIMAL)).unwrap();
    assert_eq!(
        crate::agent::fetch_config(&cfg).unwrap().timeouts,
        twinflash_artifact::Timeouts::default()
    );
    let text = format!(
        "{MINIMAL}\n[registry]\nmanifest_timeout_secs = 5\ntoken_timeout_secs = 4\n\
         idle_timeout_secs = 3\nconnect_timeout_secs = 2\nblob_request_timeout_secs = 600\n"
    );
    let cfg = EdgeConfig::load(&write(dir.path(), &text)).unwrap();
    let t = crate::agent::fetch_config(&cfg).unwrap().timeouts;
    assert_eq!(
        [t.manifest, t.token, t.idle, t.connect, t.blob_request].map(|d| d.as_secs()),
        [5, 4, 3, 2, 600]
    );
    let err = EdgeConfig::load(&write(dir.path(), &text.replace("= 5", "= 0")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("registry.manifest_timeout_secs"), "{err}");
}

#[test]
fn an_unknown_key_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace(
        "client_id = \"c1\"",
        "client_id = \"c1\"\nclientid = \"typo\"",
    );
    let err = EdgeConfig::load(&write(dir.path(), &text))
        .unwrap_err()
        .to_string();
    assert!(err.contains("clientid"), "{err}");
}

#[test]
fn ids_must_fit_the_topic_layout_and_be_unique() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = MINIMAL.replace(
        "client_id = \"c1\"",
        "client_id = \"c1\"\ntopic_layout = \"legacy\"",
    );
    let err = EdgeConfig::load(&write(dir.path(), &legacy))
        .unwrap_err()
        .to_string();
    assert!(err.contains("devices[0].id"), "{err}");

    let twice = format!(
        "{MINIMAL}\n{}",
        &MINIMAL[MINIMAL.find("[[devices]]").unwrap()..]
    );
    let err = EdgeConfig::load(&write(dir.path(), &twice))
        .unwrap_err()
        .to_string();
    assert!(err.contains("appears twice"), "{err}");

    let bad_url = MINIMAL.replace("mqtt://", "http://");
    let err = EdgeConfig::load(&write(dir.path(), &bad_url))
        .unwrap_err()
        .to_string();
    assert!(err.contains("mqtt.url"), "{err}");
}

#[test]
fn a_registry_client_certificate_needs_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace(
        "[[devices]]",
        "[registry]\ncert_file = \"/etc/tf/reg.pem\"\n[[devices]]",
    );
    let err = EdgeConfig::load(&write(dir.path(), &text))
        .unwrap_err()
        .to_string();
    assert!(err.contains("registry.cert_file"), "{err}");
    // Both, and the files hold a certificate and a key: read at load (issue 23).
    let certs = twinflash_harness::make_certs(dir.path()).unwrap();
    let both = MINIMAL.replace(
        "[[devices]]",
        &format!(
            "[registry]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[[devices]]",
            certs.client_cert.display(),
            certs.client_key.display()
        ),
    );
    let cfg = EdgeConfig::load(&write(dir.path(), &both)).unwrap();
    assert_eq!(cfg.registry.key_file, Some(certs.client_key.clone()));
    // Swapped: the key file holds no key.
    let swapped = both.replace(
        &certs.client_key.display().to_string(),
        &certs.ca.display().to_string(),
    );
    let err = EdgeConfig::load(&write(dir.path(), &swapped))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("registry.key_file") && err.contains("private key"),
        "{err}"
    );
}

#[test]
fn a_missing_file_names_the_file() {
    let err = EdgeConfig::load(Path::new("/nonexistent/edge.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/edge.toml"), "{err}");
}

#[test]
fn twin_settings_default_to_edgecore_acks_and_a_period_of_at_most_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EdgeConfig::load(&write(dir.path(), MINIMAL)).unwrap();
    assert_eq!(cfg.twin.acknowledgement, Acknowledgement::Edgecore);
    assert!((1..=60).contains(&cfg.twin.anti_entropy_secs));
    assert_eq!(cfg.twin.progress_interval_ms, 1000);
    let broker =
        format!("{MINIMAL}\n[twin]\nacknowledgement = \"broker\"\nanti_entropy_secs = 0\n");
    let cfg = EdgeConfig::load(&write(dir.path(), &broker)).unwrap();
    assert_eq!(cfg.twin.acknowledgement, Acknowledgement::Broker);
    assert_eq!(cfg.twin.anti_entropy_secs, 0);
    for (bad, key) in [
        ("ack_timeout_ms = 10", "twin.ack_timeout_ms"),
        ("retry_max_secs = 0", "twin.retry_max_secs"),
        (
            "ack_timeout_ms = 5000\nretry_max_secs = 2",
            "twin.retry_max_secs",
        ),
    ] {
        let text = format!("{MINIMAL}\n[twin]\n{bad}\n");
        let err = EdgeConfig::load(&write(dir.path(), &text)).unwrap_err();
        assert!(err.to_string().contains(key), "{bad}: {err}");
    }
    let typo = format!("{MINIMAL}\n[twin]\nacknowledgment = \"broker\"\n");
    assert!(EdgeConfig::load(&write(dir.path(), &typo)).is_err());
}

/// A fresh P-256 public key as PEM (what `cosign generate-key-pair` writes to `cosign.pub`).
fn public_pem() -> String {
    use twinflash_artifact::signature::SigningKey;
    let der = SigningKey::generate_p256_pkcs8().unwrap();
    SigningKey::from_pkcs8_der(&der).unwrap().public().to_pem()
}

#[test]
fn signatures_are_off_by_default_and_a_policy_reaches_the_fetcher_with_named_keys() {
    use twinflash_artifact::signature::Mode;
    let dir = tempfile::tempdir().unwrap();
    let cfg = EdgeConfig::load(&write(dir.path(), MINIMAL)).unwrap();
    assert_eq!(cfg.signatures.mode, Mode::Off);
    assert_eq!(
        crate::agent::fetch_config(&cfg).unwrap().signatures,
        twinflash_artifact::signature::Policy::default()
    );
    let key = dir.path().join("release.pub");
    std::fs::write(&key, public_pem()).unwrap();
    let text = format!(
        "{MINIMAL}\n[signatures]\nmode = \"require\"\nkeys = [\"{}\"]\n",
        key.display()
    );
    let cfg = EdgeConfig::load(&write(dir.path(), &text)).unwrap();
    let policy = crate::agent::fetch_config(&cfg).unwrap().signatures;
    assert_eq!(policy.mode, Mode::Require);
    assert_eq!(policy.keys.len(), 1);
    assert_eq!(policy.keys[0].name, "release");
}

#[test]
fn a_missing_or_bad_key_file_and_a_policy_without_keys_are_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gone.pub");
    let garbage = dir.path().join("garbage.pub");
    std::fs::write(&garbage, "not a key").unwrap();
    for (section, expect) in [
        (
            format!("mode = \"require\"\nkeys = [\"{}\"]", missing.display()),
            missing.display().to_string(),
        ),
        (
            format!("mode = \"warn\"\nkeys = [\"{}\"]", garbage.display()),
            garbage.display().to_string(),
        ),
        // Even with the policy off: a key that is listed must be readable.
        (
            format!("keys = [\"{}\"]", missing.display()),
            missing.display().to_string(),
        ),
        ("mode = \"require\"".to_owned(), "require".to_owned()),
        ("mode = \"warn\"\nkeys = []".to_owned(), "warn".to_owned()),
    ] {
        let text = format!("{MINIMAL}\n[signatures]\n{section}\n");
        let err = EdgeConfig::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("signatures.keys"), "{section}: {err}");
        assert!(err.contains(&expect), "{section}: {err}");
    }
    let typo = format!("{MINIMAL}\n[signatures]\nmode = \"enforce\"\n");
    assert!(EdgeConfig::load(&write(dir.path(), &typo)).is_err());
}

#[test]
fn a_confirm_check_is_read_and_checked_and_its_mistakes_named() {
    let dir = tempfile::tempdir().unwrap();
    let with = |table: &str| {
        MINIMAL.replace(
            "[devices.flasher]",
            &format!("[devices.confirm]\n{table}\n[devices.flasher]"),
        )
    };
    let cfg = EdgeConfig::load(&write(
        dir.path(),
        &with("kind = \"command\"\nargv = [\"/bin/check\", \"{version}\"]"),
    ))
    .unwrap();
    let c = cfg.devices[0].confirm.as_ref().unwrap();
    assert_eq!(
        (c.kind, c.timeout_secs, c.interval_ms),
        (ConfirmKind::Command, 60, 1000)
    );
    assert!(
        c.describe().contains("/bin/check {version}"),
        "{}",
        c.describe()
    );
    let serial = EdgeConfig::load(&write(
        dir.path(),
        &with("kind = \"serial\"\nport = \"/dev/ttyUSB0\"\npattern = \"boot version={version}\""),
    ))
    .unwrap();
    let c = serial.devices[0].confirm.as_ref().unwrap();
    assert_eq!((c.kind, c.baud()), (ConfirmKind::Serial, 115_200));
    assert!(
        c.describe().contains("/dev/ttyUSB0 at 115200 baud"),
        "{}",
        c.describe()
    );
    for (table, at) in [
        ("kind = \"memory\"\naddress = 0x20000000", "0x20000000"),
        (
            "kind = \"memory\"\naddress = \"0x20000000\"\nlength = 16",
            "0x20000000 (16 bytes)",
        ),
        (
            "kind = \"memory\"\nsymbol = \"fw_version\"",
            "the ELF symbol `fw_version`",
        ),
    ] {
        let cfg = EdgeConfig::load(&write(dir.path(), &with(table))).unwrap();
        let c = cfg.devices[0].confirm.as_ref().unwrap();
        assert_eq!(c.kind, ConfirmKind::Memory);
        assert!(c.describe().contains(at), "{table}: {}", c.describe());
    }
    // A memory check reads through the flasher: a backend that cannot read memory is refused.
    let command_flasher = MINIMAL.replace(
        "[devices.flasher]\nkind = \"simulated\"\ndir = \"/tmp/tf/d1\"\nsize = 65536",
        "[devices.confirm]\nkind = \"memory\"\naddress = 1\n[devices.flasher]\nkind = \"command\"\nflash = [\"x\", \"{file}\"]",
    );
    let err = EdgeConfig::load(&write(dir.path(), &command_flasher))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("confirm.kind") && err.contains("command backend"),
        "{err}"
    );
    for (table, key) in [
        ("kind = \"command\"", "confirm.argv"),
        ("kind = \"command\"\nargv = [\"\"]", "confirm.argv"),
        (
            "kind = \"command\"\nargv = [\"c\"]\ntimeout_secs = 0",
            "confirm.timeout_secs",
        ),
        (
            "kind = \"command\"\nargv = [\"c\"]\ninterval_ms = 0",
            "confirm.interval_ms",
        ),
        ("kind = \"serial\"", "confirm.port"),
        (
            "kind = \"command\"\nargv = [\"c\"]\npattern = \"x\"",
            "confirm.pattern",
        ),
        (
            "kind = \"serial\"\nport = \"ttyUSB0\"\npattern = \"v={version}\"",
            "confirm.port",
        ),
        (
            "kind = \"serial\"\nport = \"/dev/ttyUSB0\"",
            "confirm.pattern",
        ),
        (
            "kind = \"serial\"\nport = \"/dev/ttyUSB0\"\npattern = \"boot version=\"",
            "confirm.pattern",
        ),
        (
            "kind = \"serial\"\nport = \"/dev/ttyUSB0\"\npattern = \"v={version}\"\nbaud = 0",
            "confirm.baud",
        ),
        (
            "kind = \"serial\"\nport = \"/dev/ttyUSB0\"\npattern = \"v={version}\"\nargv = [\"c\"]",
            "confirm.argv",
        ),
        ("kind = \"memory\"", "confirm.address"),
        (
            "kind = \"memory\"\naddress = 1\nsymbol = \"v\"",
            "confirm.symbol",
        ),
        ("kind = \"memory\"\nsymbol = \"\"", "confirm.symbol"),
        ("kind = \"memory\"\naddress = \"0xzz\"", "confirm.address"),
        (
            "kind = \"memory\"\naddress = 1\nlength = 257",
            "confirm.length",
        ),
        (
            "kind = \"memory\"\naddress = 1\nport = \"/dev/ttyS0\"",
            "confirm.port",
        ),
        ("kind = \"twin\"", "confirm.property"),
        (
            "kind = \"twin\"\nproperty = \"app version\"",
            "confirm.property",
        ),
        (
            "kind = \"twin\"\nproperty = \"v\"\nargv = [\"c\"]",
            "confirm.argv",
        ),
    ] {
        let err = EdgeConfig::load(&write(dir.path(), &with(table)))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{table}: {err}");
    }
}

#[test]
fn the_signature_lookup_deadline_has_a_default_reaches_the_fetcher_and_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EdgeConfig::load(&write(dir.path(), MINIMAL)).unwrap();
    assert_eq!(cfg.signatures.lookup_deadline_secs, 120);
    let set = format!("{MINIMAL}\n[signatures]\nlookup_deadline_secs = 10\n");
    let cfg = EdgeConfig::load(&write(dir.path(), &set)).unwrap();
    let fc = crate::agent::fetch_config(&cfg).unwrap();
    assert_eq!(
        fc.signature_lookup.deadline,
        std::time::Duration::from_secs(10)
    );
    for bad in ["0", "3601"] {
        let text = format!("{MINIMAL}\n[signatures]\nlookup_deadline_secs = {bad}\n");
        let err = EdgeConfig::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("signatures.lookup_deadline_secs"), "{err}");
    }
}
