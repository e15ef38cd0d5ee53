//! The dmi-mode patches, as data: what is tested, what is added, and when nothing is written.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::crd::{DeviceProperty, DeviceSpec};

const TAG: &str = "registry.local:5000/fw/blinky:1.4.2";

fn pinned() -> String {
    format!("{TAG}@sha256:{}", "ab".repeat(32))
}

fn device(value: &str, metadata: &[(&str, &str)]) -> Device {
    let desired = TwinProperty {
        value: value.to_owned(),
        metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    };
    Device::new(
        "blinky-1",
        DeviceSpec {
            properties: vec![
                DeviceProperty {
                    name: "firmware-version".into(),
                    desired: TwinProperty::default(),
                },
                DeviceProperty {
                    name: "firmware".into(),
                    desired,
                },
            ],
            ..DeviceSpec::default()
        },
    )
}

fn published(desired: &str) -> Record {
    Record {
        generation: 1,
        desired: desired.to_owned(),
        pinned: pinned(),
        reason: Reason::IntentPublished,
        message: String::new(),
    }
}

#[test]
fn a_tag_is_pinned_into_its_metadata_with_guards() {
    let d = device(TAG, &[("type", "string")]);
    let patch = pin_patch(&d, &published(TAG)).unwrap();
    assert_eq!(
        patch,
        json!([
            {"op": "test", "path": "/spec/properties/1/name", "value": "firmware"},
            {"op": "test", "path": "/spec/properties/1/desired/value", "value": TAG},
            {"op": "add", "path": "/spec/properties/1/desired/metadata/twinflash.io~1pinned", "value": pinned()},
        ])
    );
    // No metadata at all: the map is added whole.
    let bare = device(TAG, &[]);
    assert_eq!(
        pin_patch(&bare, &published(TAG)).unwrap()[2],
        json!({"op": "add", "path": "/spec/properties/1/desired/metadata", "value": {PINNED_KEY: pinned()}})
    );
}

#[test]
fn nothing_is_written_when_pinned_or_digest_or_not_a_publication() {
    let p = pinned();
    assert!(pin_patch(&device(TAG, &[(PINNED_KEY, &p)]), &published(TAG)).is_none());
    assert!(pin_patch(&device(&p, &[]), &published(&p)).is_none());
    // A rejection carries the previous pin: never written for the new value.
    let mut rejected = published(TAG);
    rejected.reason = Reason::ChipMismatch;
    assert!(pin_patch(&device(TAG, &[]), &rejected).is_none());
    // A record of another desired value (the user changed the tag since).
    assert!(
        pin_patch(
            &device("registry.local:5000/fw/blinky:2.0.0", &[]),
            &published(TAG)
        )
        .is_none()
    );
    // A stale pin of another tag is replaced.
    let moved = device(
        TAG,
        &[(PINNED_KEY, "registry.local:5000/fw/blinky:1.4.1@sha256:00")],
    );
    assert!(pin_patch(&moved, &published(TAG)).is_some());
}

#[test]
fn the_nudge_bumps_its_own_key_only() {
    let d = device(&pinned(), &[("type", "string")]);
    let patch = nudge_patch(&d, 1_700_000_000_123).unwrap();
    assert_eq!(
        patch[2],
        json!({"op": "add", "path": "/spec/properties/1/desired/metadata/twinflash.io~1nudge", "value": "1700000000123"})
    );
    assert_eq!(patch[0]["path"], "/spec/properties/1/name");
    let mut none = d.clone();
    none.spec.properties.remove(1);
    assert!(nudge_patch(&none, 1).is_none());
}
