//! Builders for the messages twinflash sends, and edgecore's delta and result builders
//! (dttype `BuildDeviceTwinDelta`, `BuildDeviceTwinResult`) for the direct mode. The caller
//! supplies event ids and timestamps: this crate has no clock and no UUID source.

use std::collections::BTreeMap;

use crate::firmware::{FirmwareRef, FirmwareState, TWIN_TYPE_STRING, TwinNames, version_to_twin};
use crate::types::{
    BaseMessage, DeviceTwinDelta, DeviceTwinResult, DeviceTwinUpdate, MsgTwin, TwinGetRequest,
    TwinMap, TwinValue, TypeMetadata,
};

/// What the edge reports about a device's firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareReport<'a> {
    /// The installed and verified firmware, if known (the `firmware` twin is left out otherwise).
    pub installed: Option<&'a FirmwareRef>,
    /// The installed version as in the artifact annotation; converted with [`version_to_twin`]
    /// (left out when absent or empty).
    pub version: Option<&'a str>,
    /// The current state.
    pub state: &'a FirmwareState,
}

fn string_twin(expected: Option<String>, actual: Option<String>) -> Option<MsgTwin> {
    Some(MsgTwin {
        expected: expected.map(TwinValue::new),
        actual: actual.map(TwinValue::new),
        metadata: Some(TypeMetadata::new(TWIN_TYPE_STRING)),
        ..MsgTwin::default()
    })
}

/// A `twin/update` with the `actual` values of the firmware twins (metadata type `string`).
/// Never writes a null value: absent facts are left out.
pub fn report(
    base: BaseMessage,
    names: &TwinNames,
    report: &FirmwareReport<'_>,
) -> DeviceTwinUpdate {
    let reference = report.installed.map(ToString::to_string);
    let version = report
        .version
        .map(version_to_twin)
        .filter(|v| !v.is_empty());
    let state = report.state.to_string();
    let values = [
        (names.firmware.as_str(), reference.as_deref()),
        (names.version.as_str(), version.as_deref()),
        (names.state.as_str(), Some(state.as_str())),
    ];
    actual_update(base, values.into_iter().filter_map(|(n, v)| Some((n, v?))))
}

/// A `twin/update` with these `actual` values, each with metadata type `string`, as the mapper SDKs report. The
/// general form of [`report`], for callers that keep reports as twin name to value (the agent's outbox).
pub fn actual_update<'a>(
    base: BaseMessage,
    values: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> DeviceTwinUpdate {
    let twin = values
        .into_iter()
        .map(|(name, value)| (name.to_owned(), string_twin(None, Some(value.to_owned()))))
        .collect();
    DeviceTwinUpdate {
        base,
        twin: Some(twin),
    }
}

/// A `twin/update` setting the `expected` value of the firmware twin: the intent.
pub fn intent(base: BaseMessage, names: &TwinNames, reference: &FirmwareRef) -> DeviceTwinUpdate {
    let mut twin = TwinMap::new();
    twin.insert(
        names.firmware.clone(),
        string_twin(Some(reference.to_string()), None),
    );
    DeviceTwinUpdate {
        base,
        twin: Some(twin),
    }
}

/// The body of a `twin/get` request.
pub fn twin_get_request(event_id: impl Into<String>, timestamp: i64) -> TwinGetRequest {
    BaseMessage::new(event_id, timestamp)
}

fn without_versions(twin: &MsgTwin) -> MsgTwin {
    MsgTwin {
        expected_version: None,
        actual_version: None,
        ..twin.clone()
    }
}

/// edgecore's `BuildDeviceTwinDelta`, always returning the message and whether edgecore would
/// publish it (`delta` non-empty). `twin` holds every non-deleted twin with a non-empty expected
/// value (versions stripped); `delta` maps those whose expected differs from actual ("" when
/// absent) to the expected value. Both maps are always present (`{}`, never null).
pub fn device_twin_delta(
    base: BaseMessage,
    twins: &BTreeMap<String, MsgTwin>,
) -> (DeviceTwinDelta, bool) {
    let mut twin = TwinMap::new();
    let mut delta = BTreeMap::new();
    for (name, t) in twins {
        if t.is_deleted() || t.expected_value().is_empty() {
            continue;
        }
        if t.expected_value() != t.actual_value() {
            delta.insert(name.clone(), t.expected_value().to_owned());
        }
        twin.insert(name.clone(), Some(without_versions(t)));
    }
    let publish = !delta.is_empty();
    (
        DeviceTwinDelta {
            base,
            twin: Some(twin),
            delta: Some(delta),
        },
        publish,
    )
}

/// edgecore's `BuildDeviceTwinDelta` as published: `None` when no twin needs a change.
pub fn build_device_twin_delta(
    base: BaseMessage,
    twins: &BTreeMap<String, MsgTwin>,
) -> Option<DeviceTwinDelta> {
    match device_twin_delta(base, twins) {
        (delta, true) => Some(delta),
        (_, false) => None,
    }
}

/// edgecore's `BuildDeviceTwinResult` with deal type 0 (`twin/get/result`): deleted twins left
/// out, versions stripped, nil entries kept as `null`; the map is always present.
pub fn build_twin_get_result(base: BaseMessage, twins: &TwinMap) -> DeviceTwinResult {
    let twin = twins
        .iter()
        .filter(|(_, t)| !t.as_ref().is_some_and(MsgTwin::is_deleted))
        .map(|(k, t)| (k.clone(), t.as_ref().map(without_versions)))
        .collect();
    DeviceTwinResult {
        base,
        twin: Some(twin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WireMessage;

    const REF: &str = "registry.local:5000/fw/blinky@sha256:98c66134049792d306ac83cef42f94bbebd970b95f54a26adc1120b4db8f5ad2";

    #[test]
    fn report_and_intent_pass_edgecore_validation() {
        let r = FirmwareRef::parse(REF).unwrap();
        let names = TwinNames::default();
        let state = FirmwareState::Downloading(5);
        let rep = report(
            BaseMessage::new("e1", 7),
            &names,
            &FirmwareReport {
                installed: Some(&r),
                version: Some("1.4.2+b7"),
                state: &state,
            },
        );
        let bytes = rep.encode();
        let back = crate::unmarshal_device_twin_update(&bytes).unwrap();
        assert_eq!(back, rep);
        let twins = back.twin.unwrap();
        assert_eq!(
            twins["firmware-version"].as_ref().unwrap().actual_value(),
            "1.4.2_b7"
        );
        assert_eq!(
            twins["firmware-state"].as_ref().unwrap().actual_value(),
            "downloading:5"
        );
        assert!(!String::from_utf8(bytes).unwrap().contains("null"));
        let i = intent(BaseMessage::new("i1", 8), &names, &r);
        assert_eq!(
            String::from_utf8(i.encode()).unwrap(),
            format!(
                "{{\"event_id\":\"i1\",\"timestamp\":8,\"twin\":{{\"firmware\":{{\"expected\":{{\"value\":\"{REF}\"}},\"metadata\":{{\"type\":\"string\"}}}}}}}}"
            )
        );
    }

    #[test]
    fn report_leaves_out_unknown_facts() {
        let state = FirmwareState::Idle;
        let rep = report(
            BaseMessage::default(),
            &TwinNames::default(),
            &FirmwareReport {
                installed: None,
                version: Some(""),
                state: &state,
            },
        );
        assert_eq!(
            rep.twin.unwrap().keys().collect::<Vec<_>>(),
            ["firmware-state"]
        );
    }
}
