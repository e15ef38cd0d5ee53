//! The committed `manifests/crds/firmwarerollout.yaml` is exactly what the Rust types generate
//! (run with `TWINFLASH_BLESS=1` to rewrite it), and the CRD has what `kubectl get fwr` needs.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use twinflash_rollout_api::{crd_yaml, crds};

fn committed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds/firmwarerollout.yaml")
}

#[test]
fn committed_crd_matches_the_rust_types() {
    let generated = crd_yaml().unwrap();
    if std::env::var_os("TWINFLASH_BLESS").is_some() {
        std::fs::write(committed(), &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(committed()).unwrap();
    assert!(
        on_disk == generated,
        "manifests/crds/firmwarerollout.yaml drifted from the Rust types: \
         rerun with TWINFLASH_BLESS=1 (or `twinflash crd > ...`) and commit"
    );
}

#[test]
fn crd_names_scope_columns_and_status_subresource() {
    let crds = crds();
    assert_eq!(crds.len(), 1);
    let crd = serde_json::to_value(&crds[0]).unwrap();
    assert_eq!(crd["metadata"]["name"], "firmwarerollouts.twinflash.io");
    assert_eq!(crd["spec"]["group"], "twinflash.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "FirmwareRollout");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "fwr");
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert!(v["subresources"]["status"].is_object());
    let columns: Vec<(&str, &str)> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["jsonPath"].as_str().unwrap()))
        .collect();
    for want in [
        ("Phase", ".status.phase"),
        ("Firmware", ".spec.firmware"),
        ("Progress", ".status.progress"),
        ("Failed", ".status.failed"),
    ] {
        assert!(columns.contains(&want), "{want:?} in {columns:?}");
    }
    let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["required"], serde_json::json!(["firmware"]));
    let strategy = &spec["properties"]["strategy"]["properties"];
    for field in [
        "waves",
        "maxInFlight",
        "failureThreshold",
        "deviceTimeoutSeconds",
        "pauseBetweenWavesSeconds",
    ] {
        assert!(strategy[field].is_object(), "strategy.{field}");
    }
    let phase = &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"];
    let phases: Vec<&str> = phase["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        phases,
        [
            "Pending",
            "Progressing",
            "Paused",
            "Completed",
            "Aborted",
            "RolledBack"
        ]
    );
}
