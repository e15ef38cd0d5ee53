//! Pure status bookkeeping: where twinflash keeps its [`Record`] (`twinflash.io/*` annotations
//! on the Device) and how an edge report becomes `status.twins[]`, the way cloudcore writes it.
//!
//! Why annotations on the Device: cloudcore owns `status.twins`. It merge-patches the whole list
//! on every edge sync without a resourceVersion and replaces `observedDesired` with
//! `{value, metadata {timestamp, type}}` (docs/kubeedge.md section 8), so a record kept there (the
//! previous home: the `firmware` twin's `observedDesired` metadata) is erased within seconds.
//! cloudcore never writes a Device's metadata; the annotations travel with the Device (the
//! controller's watch cache has them, no extra read), are deleted with it, and need no object or
//! RBAC of their own. A merge patch of the annotations map touches only twinflash's keys, so it
//! needs no resourceVersion. KubeEdge's CRD schemas have no `status.conditions` either.
//!
//! The old place is still read ([`record_from_status`]) for one release, so a controller upgraded
//! in place does not redo the intents its predecessor recorded there.

use std::collections::BTreeMap;

use crate::crd::{DeviceProperty, DeviceTwinStatus, Twin, TwinProperty};
use mqtt_schema::firmware::TWIN_FIRMWARE as FIRMWARE;

use crate::decide::{Reason, Record};

/// Metadata key: Device generation the record is for.
pub const META_GENERATION: &str = "twinflash.io/generation";
/// Metadata key: the desired value as written in the spec.
pub const META_DESIRED: &str = "twinflash.io/desired";
/// Metadata key: the condition reason ([`Reason::as_str`]).
pub const META_REASON: &str = "twinflash.io/reason";
/// Metadata key: the condition message.
pub const META_MESSAGE: &str = "twinflash.io/message";
/// Annotation key: the digest-pinned reference sent to the edge (empty when none).
pub const META_PINNED: &str = "twinflash.io/pinned";

/// The record kept in a Device's annotations ([`record_annotations`]), if one is there and
/// readable.
pub fn record_from_annotations(annotations: &BTreeMap<String, String>) -> Option<Record> {
    Some(Record {
        generation: annotations.get(META_GENERATION)?.parse().ok()?,
        desired: annotations.get(META_DESIRED)?.clone(),
        pinned: annotations.get(META_PINNED)?.clone(),
        reason: Reason::parse(annotations.get(META_REASON)?)?,
        message: annotations.get(META_MESSAGE).cloned().unwrap_or_default(),
    })
}

/// The annotations that hold `record` (the body of a merge patch's `metadata.annotations`).
pub fn record_annotations(record: &Record) -> BTreeMap<String, String> {
    BTreeMap::from([
        (META_GENERATION.to_owned(), record.generation.to_string()),
        (META_DESIRED.to_owned(), record.desired.clone()),
        (META_PINNED.to_owned(), record.pinned.clone()),
        (META_REASON.to_owned(), record.reason.as_str().to_owned()),
        (META_MESSAGE.to_owned(), record.message.clone()),
    ])
}

/// The `observedDesired` value of twin `name`, as cloudcore wrote it from edgecore's `expected`
/// (empty when none).
pub fn observed_desired<'a>(status: Option<&'a DeviceTwinStatus>, name: &str) -> &'a str {
    status
        .and_then(|s| s.twin(name))
        .map_or("", |t| t.observed_desired.value.as_str())
}

/// `status` with the `firmware` twin's `observedDesired` set to `pinned` as cloudcore writes it
/// from an edge sync carrying `expected`: `{value, metadata {timestamp: "<ms>", type: "string"}}`.
/// In `direct` mode the relay plays edgecore, so the controller writes what cloudcore would.
pub fn with_observed_desired(
    status: Option<&DeviceTwinStatus>,
    pinned: &str,
    now_ms: i64,
) -> DeviceTwinStatus {
    let mut status = status.cloned().unwrap_or_default();
    twin_mut(&mut status, FIRMWARE).observed_desired = TwinProperty {
        value: pinned.to_owned(),
        metadata: BTreeMap::from([
            ("timestamp".to_owned(), now_ms.to_string()),
            ("type".to_owned(), "string".to_owned()),
        ]),
    };
    status
}

/// The record an older twinflash-cloud kept in `status` (the `firmware` twin's `observedDesired`
/// metadata), if one is there and readable: the one-release fallback of [`record_from_annotations`].
pub fn record_from_status(status: Option<&DeviceTwinStatus>) -> Option<Record> {
    let od = &status?.twin(FIRMWARE)?.observed_desired;
    Some(Record {
        generation: od.metadata.get(META_GENERATION)?.parse().ok()?,
        desired: od.metadata.get(META_DESIRED)?.clone(),
        pinned: od.value.clone(),
        reason: Reason::parse(od.metadata.get(META_REASON)?)?,
        message: od.metadata.get(META_MESSAGE).cloned().unwrap_or_default(),
    })
}

/// The newer of two records (by generation; the in-memory one wins a tie, it is never stale).
pub fn newest(memory: Option<Record>, stored: Option<Record>) -> Option<Record> {
    match (memory, stored) {
        (Some(m), Some(s)) => Some(if s.generation > m.generation { s } else { m }),
        (m, s) => m.or(s),
    }
}

/// `status` with `record` written into the `firmware` twin's `observedDesired` the way an older
/// twinflash-cloud did (what [`record_from_status`] reads; tests and benches build old statuses
/// with it); every other twin and field unchanged.
pub fn with_record(
    status: Option<&DeviceTwinStatus>,
    record: &Record,
    now_ms: i64,
) -> DeviceTwinStatus {
    let mut status = status.cloned().unwrap_or_default();
    let metadata = BTreeMap::from([
        ("timestamp".to_owned(), now_ms.to_string()),
        ("type".to_owned(), "string".to_owned()),
        (META_GENERATION.to_owned(), record.generation.to_string()),
        (META_DESIRED.to_owned(), record.desired.clone()),
        (META_REASON.to_owned(), record.reason.as_str().to_owned()),
        (META_MESSAGE.to_owned(), record.message.clone()),
    ]);
    twin_mut(&mut status, FIRMWARE).observed_desired = TwinProperty {
        value: record.pinned.clone(),
        metadata,
    };
    status
}

/// Applies an edge `actual` report (twin name -> value, at `timestamp_ms`) to `status` as
/// cloudcore does: `reported = {value, metadata {"timestamp": "<ms>", "type": "string"}}` for
/// each twin the Device declares in `spec.properties`; undeclared twins are dropped.
pub fn apply_actual_report(
    properties: &[DeviceProperty],
    status: Option<&DeviceTwinStatus>,
    actual: &BTreeMap<String, String>,
    timestamp_ms: i64,
) -> DeviceTwinStatus {
    let mut status = status.cloned().unwrap_or_default();
    for (name, value) in actual {
        if !properties.iter().any(|p| &p.name == name) {
            continue;
        }
        twin_mut(&mut status, name).reported = TwinProperty {
            value: value.clone(),
            metadata: BTreeMap::from([
                ("timestamp".to_owned(), timestamp_ms.to_string()),
                ("type".to_owned(), "string".to_owned()),
            ]),
        };
    }
    status
}

fn twin_mut<'a>(status: &'a mut DeviceTwinStatus, name: &str) -> &'a mut Twin {
    let idx = match status.twins.iter().position(|t| t.property_name == name) {
        Some(i) => i,
        None => {
            status.twins.push(Twin {
                property_name: name.to_owned(),
                ..Twin::default()
            });
            status.twins.len() - 1
        }
    };
    &mut status.twins[idx]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(names: &[&str]) -> Vec<DeviceProperty> {
        names
            .iter()
            .map(|n| DeviceProperty {
                name: (*n).to_owned(),
                ..DeviceProperty::default()
            })
            .collect()
    }

    #[test]
    fn actual_report_maps_like_cloudcore_and_drops_undeclared_twins() {
        let existing = DeviceTwinStatus {
            twins: vec![Twin {
                property_name: "temperature".into(),
                reported: TwinProperty {
                    value: "25".into(),
                    metadata: BTreeMap::new(),
                },
                ..Twin::default()
            }],
            state: "online".into(),
            ..DeviceTwinStatus::default()
        };
        let actual = BTreeMap::from([
            ("firmware".to_owned(), "r.local/fw/b@sha256:ab".to_owned()),
            ("firmware-state".to_owned(), "installed".to_owned()),
            ("undeclared".to_owned(), "x".to_owned()),
        ]);
        let out = apply_actual_report(
            &props(&[
                "temperature",
                "firmware",
                "firmware-version",
                "firmware-state",
            ]),
            Some(&existing),
            &actual,
            1_723_000_000_123,
        );
        assert_eq!(out.state, "online");
        assert_eq!(out.twin("temperature").unwrap().reported.value, "25");
        let fw = out.twin("firmware").unwrap();
        assert_eq!(fw.reported.value, "r.local/fw/b@sha256:ab");
        assert_eq!(fw.reported.metadata["timestamp"], "1723000000123");
        assert_eq!(fw.reported.metadata["type"], "string");
        assert_eq!(
            out.twin("firmware-state").unwrap().reported.value,
            "installed"
        );
        assert!(out.twin("undeclared").is_none());
        assert!(
            out.twin("firmware-version").is_none(),
            "not reported, not invented"
        );
        assert_eq!(out.twins.len(), 3);
    }

    #[test]
    fn record_round_trips_through_the_status_and_keeps_other_twins() {
        let rec = Record {
            generation: 7,
            desired: "r.local/fw/b:1".into(),
            pinned: "r.local/fw/b:1@sha256:ab".into(),
            reason: Reason::IntentPublished,
            message: "published".into(),
        };
        let reported = apply_actual_report(
            &props(&["firmware"]),
            None,
            &BTreeMap::from([("firmware".to_owned(), "old".to_owned())]),
            5,
        );
        let out = with_record(Some(&reported), &rec, 99);
        assert_eq!(out.twin(FIRMWARE).unwrap().reported.value, "old");
        assert_eq!(
            out.twin(FIRMWARE).unwrap().observed_desired.metadata["timestamp"],
            "99"
        );
        assert_eq!(record_from_status(Some(&out)), Some(rec.clone()));
        assert_eq!(record_from_status(Some(&reported)), None);
        assert_eq!(record_from_status(None), None);

        let older = Record {
            generation: 3,
            ..rec.clone()
        };
        assert_eq!(
            newest(Some(older.clone()), Some(rec.clone())),
            Some(rec.clone())
        );
        assert_eq!(
            newest(Some(rec.clone()), Some(older.clone())),
            Some(rec.clone())
        );
        assert_eq!(newest(None, Some(older.clone())), Some(older));
    }

    #[test]
    fn record_round_trips_through_annotations_and_observed_desired_is_cloudcores() {
        let rec = Record {
            generation: 3,
            desired: "r.local/fw/b:1".into(),
            pinned: "r.local/fw/b:1@sha256:ab".into(),
            reason: Reason::IntentPublished,
            message: "published".into(),
        };
        let mut ann = record_annotations(&rec);
        ann.insert("other.io/x".into(), "y".into());
        assert_eq!(record_from_annotations(&ann), Some(rec.clone()));
        ann.insert(META_REASON.into(), "Nonsense".into());
        assert_eq!(record_from_annotations(&ann), None);
        assert_eq!(record_from_annotations(&BTreeMap::new()), None);

        let st = with_observed_desired(None, &rec.pinned, 42);
        let od = &st.twin(FIRMWARE).unwrap().observed_desired;
        assert_eq!(od.value, rec.pinned);
        assert_eq!(
            od.metadata.keys().collect::<Vec<_>>(),
            ["timestamp", "type"],
            "nothing cloudcore would not write"
        );
        assert_eq!(observed_desired(Some(&st), FIRMWARE), rec.pinned);
        assert_eq!(observed_desired(None, FIRMWARE), "");
        assert_eq!(record_from_status(Some(&st)), None);
    }

    #[test]
    fn unreadable_records_are_ignored() {
        let mut out = with_record(
            None,
            &Record {
                generation: 1,
                desired: "d".into(),
                pinned: String::new(),
                reason: Reason::InvalidReference,
                message: String::new(),
            },
            1,
        );
        out.twins[0]
            .observed_desired
            .metadata
            .insert(META_GENERATION.into(), "x".into());
        assert_eq!(record_from_status(Some(&out)), None);
    }
}
