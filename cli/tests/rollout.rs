//! `twinflash crd` and `twinflash rollout` without a cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::process::{Command, Output};

fn twinflash(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_twinflash"))
        .args(args)
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap()
}

#[test]
fn crd_prints_exactly_the_committed_manifest() {
    let out = twinflash(&["crd"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/crds/firmwarerollout.yaml"
    ))
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

#[test]
fn create_dry_run_renders_the_rollout_and_refuses_bad_flags() {
    let out = twinflash(&[
        "rollout",
        "create",
        "blinky-142",
        "-n",
        "fleet",
        "--selector",
        "app=blinky,site in (a,b)",
        "--firmware",
        "registry.local:5000/fw/blinky:1.4.2",
        "--wave",
        "1",
        "--wave",
        "10%",
        "--wave",
        "100%",
        "--max-failure-percent",
        "5",
        "--min-sample",
        "10",
        "--rollback-on-abort",
        "--dry-run",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let obj: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(obj["kind"], "FirmwareRollout");
    assert_eq!(obj["apiVersion"], "twinflash.io/v1alpha1");
    assert_eq!(obj["metadata"]["namespace"], "fleet");
    assert_eq!(
        obj["spec"]["firmware"],
        "registry.local:5000/fw/blinky:1.4.2"
    );

    let out = twinflash(&[
        "rollout",
        "create",
        "x",
        "--selector",
        "app in (",
        "--firmware",
        "r/f:1",
        "--dry-run",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn without_a_cluster_the_other_actions_fail_in_one_line() {
    for args in [
        vec!["rollout", "status"],
        vec!["rollout", "pause", "x"],
        vec!["rollout", "abort", "x", "--rollback"],
    ] {
        let out = twinflash(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("no Kubernetes cluster"), "{err}");
    }
}

/// Issue 22, F3: against an API server, every request names `twinflash/<version>` and every write the field
/// manager `twinflash` (the harness's API server records both per request).
#[test]
fn against_an_api_server_the_cli_names_itself_and_its_field_manager() {
    let api = twinflash_harness::FakeApi::start().unwrap();
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(home.path()).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_twinflash"))
            .args(args)
            .env("HOME", home.path())
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let firmware = format!("registry.local:5000/fw/blinky@sha256:{}", "ab".repeat(32));
    run(&[
        "rollout",
        "create",
        "fw-2",
        "--selector",
        "app=blinky",
        "--firmware",
        &firmware,
    ]);
    run(&["rollout", "pause", "fw-2"]);
    run(&["rollout", "status"]);
    let requests = api.requests();
    let ua = format!("twinflash/{}", env!("CARGO_PKG_VERSION"));
    assert!(requests.iter().all(|r| r.user_agent == ua), "{requests:#?}");
    let writes: Vec<(&str, &str)> = requests
        .iter()
        .filter(|r| r.is_write())
        .map(|r| (r.method.as_str(), r.field_manager.as_str()))
        .collect();
    assert_eq!(writes, [("POST", "twinflash"), ("PATCH", "twinflash")]);
    let stored = api
        .get(
            "twinflash.io",
            "v1alpha1",
            "firmwarerollouts",
            "default",
            "fw-2",
        )
        .unwrap();
    assert_eq!(stored["spec"]["paused"], true);
}
