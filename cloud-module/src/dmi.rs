//! Mode `dmi`: twinflash-edge is edgecore's DMI mapper, and KubeEdge itself hands it every Device's spec
//! (RegisterDevice/UpdateDevice carry `spec.properties[i].desired` with its metadata, docs/kubeedge.md section 11).
//! The controller delivers nothing; it keeps the two jobs only the cloud can do, both as writes on the Device:
//!
//! - **Tag pinning, once.** The agent never resolves a tag: it flashes a tag-only `firmware` value only when
//!   `desired.metadata["twinflash.io/pinned"]` holds the digest-pinned reference of that repository and tag
//!   (docs/contract.md section 4). [`pin_patch`] writes it there, next to the user's value and never over it,
//!   so kubectl and GitOps keep owning `desired.value`.
//! - **The anti-entropy nudge.** No message reaches a DMI mapper except through a Device change, so a stale Device
//!   gets `desired.metadata["twinflash.io/nudge"]` bumped ([`nudge_patch`], [`KubeNudger`]): edgecore sees a
//!   changed spec and calls UpdateDevice, and the agent answers an UpdateDevice whose intent is unchanged by
//!   reporting that device again.
//!
//! Both are RFC 6902 JSON patches on one property. The CRD's `spec.properties` is an atomic list, so a merge patch
//! would replace the user's whole list; the patch instead `test`s the property's name and desired value at its
//! index (a concurrent edit that moved or changed it makes the API server refuse with 422) and `add`s one key.

use futures::future::BoxFuture;
use kube::Client;
use kube::api::{Api, Patch};
use mqtt_schema::firmware::TWIN_FIRMWARE as FIRMWARE;
use mqtt_schema::{DeviceId, FirmwareRef, RefKind};
use serde_json::{Value, json};

use crate::crd::{Device, TwinProperty};
use crate::decide::{Reason, Record};
use crate::seams::{IntentSink, SinkError, namespace_of};

/// `desired.metadata` key of the `firmware` property: the digest-pinned reference of its tag-only value.
pub const PINNED_KEY: &str = "twinflash.io/pinned";

/// `desired.metadata` key of the `firmware` property: bumped (Unix ms) to make edgecore call `UpdateDevice`.
pub const NUDGE_KEY: &str = "twinflash.io/nudge";

/// Index of the `firmware` property in `spec.properties`.
pub fn firmware_index(device: &Device) -> Option<usize> {
    device
        .spec
        .properties
        .iter()
        .position(|p| p.name == FIRMWARE)
}

/// The JSON patch that sets `desired.metadata[key] = value` on property `index`, guarded by `test`s of that
/// property's name and of `desired.value`. An empty metadata map (or none) is added whole: RFC 6902 `add` needs
/// the parent to exist, and the cached object cannot tell `{}` from absent.
pub fn metadata_patch(index: usize, desired: &TwinProperty, key: &str, value: &str) -> Value {
    let base = format!("/spec/properties/{index}");
    let set = if desired.metadata.is_empty() {
        json!({"op": "add", "path": format!("{base}/desired/metadata"), "value": {key: value}})
    } else {
        let escaped = key.replace('~', "~0").replace('/', "~1");
        json!({"op": "add", "path": format!("{base}/desired/metadata/{escaped}"), "value": value})
    };
    json!([
        {"op": "test", "path": format!("{base}/name"), "value": FIRMWARE},
        {"op": "test", "path": format!("{base}/desired/value"), "value": desired.value},
        set,
    ])
}

/// The patch that pins `record`'s intent on `device`, or `None` when nothing is to be written: the record is not
/// a publication of the Device's current desired value, that value is not tag-only (a digest needs no pin; an
/// invalid one was rejected), or the pin is already there.
pub fn pin_patch(device: &Device, record: &Record) -> Option<Value> {
    let index = firmware_index(device)?;
    let desired = &device.spec.properties.get(index)?.desired;
    let publishes = record.reason == Reason::IntentPublished
        && record.desired == desired.value
        && !record.pinned.is_empty();
    let tag_only = matches!(FirmwareRef::classify(&desired.value), Ok(RefKind::Tag));
    let pinned = desired.metadata.get(PINNED_KEY) == Some(&record.pinned);
    (publishes && tag_only && !pinned)
        .then(|| metadata_patch(index, desired, PINNED_KEY, &record.pinned))
}

/// The nudge patch for `device` with `stamp` (Unix ms), or `None` without a `firmware` property.
pub fn nudge_patch(device: &Device, stamp: i64) -> Option<Value> {
    let index = firmware_index(device)?;
    let desired = &device.spec.properties.get(index)?.desired;
    Some(metadata_patch(
        index,
        desired,
        NUDGE_KEY,
        &stamp.to_string(),
    ))
}

/// Applies a JSON `patch` to Device `key`.
pub async fn patch_device(
    client: &Client,
    key: &DeviceId,
    patch: Value,
) -> Result<Device, kube::Error> {
    // The RFC 6902 operations kube sends as `application/json-patch+json` (its `json_patch::Patch`).
    let body = serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
    Api::<Device>::namespaced(client.clone(), namespace_of(key))
        .patch(
            key.name(),
            &crate::identity::patch_params(crate::controller::MANAGER),
            &Patch::<()>::Json(body),
        )
        .await
}

/// The dmi-mode [`crate::anti_entropy::Nudger`]: bumps [`NUDGE_KEY`] on the stale Device through the API server.
pub struct KubeNudger {
    client: Client,
}

impl KubeNudger {
    /// A nudger writing through `client`.
    pub fn new(client: Client) -> KubeNudger {
        KubeNudger { client }
    }
}

impl crate::anti_entropy::Nudger for KubeNudger {
    /// One guarded JSON patch; a Device changed meanwhile (422) or gone (404) is reported as not nudged, and the next
    /// scan looks at it again.
    fn nudge<'a>(
        &'a self,
        key: &'a DeviceId,
        device: &'a Device,
        _event_id: &'a str,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let patch =
                nudge_patch(device, crate::controller::now_ms()).ok_or_else(|| SinkError::Api {
                    device: key.to_string(),
                    detail: "the Device has no firmware property".to_owned(),
                })?;
            patch_device(&self.client, key, patch)
                .await
                .map(|_| ())
                .map_err(|e| SinkError::Api {
                    device: key.to_string(),
                    detail: e.to_string(),
                })
        })
    }
}

/// The dmi-mode [`IntentSink`]: there is no MQTT client at all. The controller never calls it in this mode; a call
/// would be a bug, refused loudly rather than dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMqtt;

impl IntentSink for NoMqtt {
    fn publish_intent<'a>(
        &'a self,
        device: &'a DeviceId,
        _reference: &'a str,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(std::future::ready(Err(SinkError::NoMqtt {
            device: device.to_string(),
        })))
    }
}

#[cfg(test)]
#[path = "dmi_tests.rs"]
mod tests;
