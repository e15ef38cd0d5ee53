//! The binary's command-line surface: `--help`, `--version`, `--check-config`, and one clear
//! line on stderr with a non-zero exit for bad input.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twinflash-cloud"));
    cmd.args(args).env_remove("TWINFLASH_CLOUD_CONFIG");
    for (k, _) in std::env::vars() {
        if k.starts_with("TWINFLASH_CLOUD__") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_and_version() {
    let out = run(&["--help"], &[]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(
        help.contains("--config") && help.contains("--check-config"),
        "{help}"
    );
    let out = run(&["--version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("twinflash-cloud {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_accepts_a_good_file_and_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloud.toml");
    std::fs::write(
        &path,
        "status_location = \"device\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let out = run(
        &["--config", p, "--check-config"],
        &[("TWINFLASH_CLOUD__MODE", "direct")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(
        summary.contains("mode=Direct") && summary.contains("status_location=Device"),
        "{summary}"
    );
}

#[test]
fn bad_config_is_one_clear_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloud.toml");
    std::fs::write(
        &path,
        "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nclientid = \"typo\"\n",
    )
    .unwrap();
    let out = run(&["--config", path.to_str().unwrap(), "--check-config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("twinflash-cloud: ") && err.contains("clientid"),
        "{err}"
    );

    let out = run(&["--check-config"], &[]);
    assert_eq!(out.status.code(), Some(2), "no mqtt.url anywhere");
}

#[test]
fn running_fails_clearly_without_usable_mqtt_files_or_cluster_credentials() {
    let out = run(
        &["--check-config"],
        &[("TWINFLASH_CLOUD__MQTT__URL", "mqtt://127.0.0.1:1")],
    );
    assert!(out.status.success());
    // An unreadable CA file is reported before any network or cluster access.
    let out = run(
        &[],
        &[
            ("TWINFLASH_CLOUD__MQTT__URL", "mqtts://127.0.0.1:1"),
            ("TWINFLASH_CLOUD__MQTT__CA_FILE", "/nonexistent/ca.pem"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("MQTT configuration") && err.contains("mqtt.ca_file"),
        "{err}"
    );
    // No cluster: one clear error, no hang.
    let home = tempfile::tempdir().unwrap();
    let out = run(
        &[],
        &[
            ("TWINFLASH_CLOUD__MQTT__URL", "mqtt://127.0.0.1:1"),
            ("KUBECONFIG", "/nonexistent/kubeconfig"),
            ("HOME", home.path().to_str().unwrap()),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no Kubernetes credentials"), "{err}");
}

#[test]
fn check_config_in_mode_dmi_needs_no_mqtt_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloud.toml");
    std::fs::write(&path, "mode = \"dmi\"\n").unwrap();
    let out = run(&["--config", path.to_str().unwrap(), "--check-config"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(
        summary.contains("mode=Dmi") && summary.contains("mqtt=none (mode dmi"),
        "{summary}"
    );
    // Any other mode still requires [mqtt].
    let out = run(
        &["--config", path.to_str().unwrap(), "--check-config"],
        &[("TWINFLASH_CLOUD__MODE", "edgecore")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("[mqtt]"),
        "{}",
        text(&out.stderr)
    );
    let help = text(&run(&["--help"], &[]).stdout);
    assert!(help.contains("dmi"), "{help}");
}

#[test]
fn signature_keys_are_read_at_start_and_a_missing_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloud.toml");
    let missing = dir.path().join("release.pub");
    std::fs::write(
        &path,
        format!(
            "mode = \"dmi\"\n[signatures]\nmode = \"require\"\nkeys = [{:?}]\n",
            missing.to_str().unwrap()
        ),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let out = run(&["--config", p, "--check-config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("signatures.keys") && err.contains(missing.to_str().unwrap()),
        "{err}"
    );
    // The key in place: accepted, and the summary shows the policy.
    let der = twinflash_artifact::signature::SigningKey::generate_p256_pkcs8().unwrap();
    let key = twinflash_artifact::signature::SigningKey::from_pkcs8_der(&der).unwrap();
    std::fs::write(&missing, key.public().to_pem()).unwrap();
    let out = run(&["--config", p, "--check-config"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(summary.contains("signatures=require (keys=1)"), "{summary}");
}
