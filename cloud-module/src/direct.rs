//! Mode `direct`: twinflash-cloud plays edgecore's part for the firmware twins. [`Relay`] is the
//! pure twin book (expected from intents, actual from the agent's reports) that says what to
//! publish and what to write into the status; [`KubeStatusWriter`] writes reports as cloudcore.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use kube::api::Api;
use kube::{Client, ResourceExt};
use mqtt_schema::{
    BaseMessage, DeviceId, DeviceTopicKind, FirmwareState, MsgTwin, Topic, TopicLayout, TwinMap,
    TwinNames, TwinValue, TypeMetadata, ValueMetadata, to_go_json, unmarshal_device_twin_update,
};
use serde_json::json;

use crate::config::StatusLocation;
use crate::crd::{Device, DeviceStatus};
use crate::seams::{StatusError, StatusWriter, namespace_of};
use crate::status::apply_actual_report;
use crate::status_route::StatusRoute;

/// Something the relay wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish `payload` on `topic` with QoS 1 (`retain` for deltas; an empty retained payload
    /// clears the retained delta).
    Publish {
        /// The topic.
        topic: String,
        /// The bytes.
        payload: Vec<u8>,
        /// Whether the broker keeps it for later subscribers.
        retain: bool,
    },
    /// Write the agent's `actual` values into the status of `device`.
    WriteStatus {
        /// The Device.
        device: DeviceId,
        /// Twin name -> reported value.
        actual: BTreeMap<String, String>,
        /// When the report arrived (ms since the epoch).
        timestamp_ms: i64,
    },
}

#[derive(Debug, Clone, Default)]
struct RelayDevice {
    key: Option<DeviceId>,
    expected: Option<(String, i64)>,
    actual: BTreeMap<String, (String, i64)>,
    delta_retained: bool,
}

/// The twin book of the direct mode, one entry per device seen (intent or report).
#[derive(Debug, Clone)]
pub struct Relay {
    layout: TopicLayout,
    names: TwinNames,
    devices: BTreeMap<DeviceId, RelayDevice>,
    seq: u64,
}

/// The device id of `key` in `layout` (`{namespace}/{name}` or `{name}`).
pub fn device_id(key: &DeviceId, layout: TopicLayout) -> Result<DeviceId, mqtt_schema::TopicError> {
    match (layout, key.namespace()) {
        (TopicLayout::Namespaced, Some(_)) | (TopicLayout::Legacy, None) => Ok(key.clone()),
        (TopicLayout::Legacy, Some(_)) => DeviceId::legacy(key.name()),
        (TopicLayout::Namespaced, None) => Err(mqtt_schema::TopicError::InvalidSegment {
            segment: key.to_string(),
        }),
    }
}

impl Relay {
    /// An empty book.
    pub fn new(layout: TopicLayout, names: TwinNames) -> Relay {
        Relay {
            layout,
            names,
            devices: BTreeMap::new(),
            seq: 0,
        }
    }

    /// The subscriptions of the relay: agent reports and get requests of every device.
    pub fn filters(&self) -> [String; 2] {
        [
            DeviceTopicKind::TwinUpdate.filter(self.layout),
            DeviceTopicKind::TwinGet.filter(self.layout),
        ]
    }

    fn base(&mut self, now_ms: i64) -> BaseMessage {
        self.seq += 1;
        BaseMessage::new(format!("twinflash-cloud-{now_ms}-{}", self.seq), now_ms)
    }

    /// A new intent for `key`: the retained delta if the agent does not have it yet.
    pub fn set_intent(
        &mut self,
        key: &DeviceId,
        reference: &str,
        now_ms: i64,
    ) -> Result<Vec<Action>, mqtt_schema::TopicError> {
        let id = device_id(key, self.layout)?;
        let dev = self.devices.entry(id.clone()).or_default();
        dev.key = Some(key.clone());
        dev.expected = Some((reference.to_owned(), now_ms));
        Ok(self.delta_actions(&id, now_ms))
    }

    /// An intent from an earlier run: taken only when nothing newer is known for `key`.
    pub fn restore_intent(
        &mut self,
        key: &DeviceId,
        reference: &str,
        now_ms: i64,
    ) -> Result<Vec<Action>, mqtt_schema::TopicError> {
        let id = device_id(key, self.layout)?;
        if self.devices.get(&id).is_some_and(|d| d.expected.is_some()) {
            return Ok(Vec::new());
        }
        self.set_intent(key, reference, now_ms)
    }

    /// After every CONNACK: the retained delta of each device whose agent lacks its intent.
    pub fn on_connect(&mut self, now_ms: i64) -> Vec<Action> {
        let ids: Vec<DeviceId> = self.devices.keys().cloned().collect();
        ids.iter()
            .flat_map(|id| self.delta_actions(id, now_ms))
            .collect()
    }

    /// The expected value of `key`'s firmware twin, if any.
    pub fn expected(&self, key: &DeviceId) -> Option<&str> {
        let id = device_id(key, self.layout).ok()?;
        Some(self.devices.get(&id)?.expected.as_ref()?.0.as_str())
    }

    fn delta_actions(&mut self, id: &DeviceId, now_ms: i64) -> Vec<Action> {
        let topic = Topic::device(id, DeviceTopicKind::TwinUpdateDelta).to_string();
        let Some(dev) = self.devices.get(id).cloned() else {
            return Vec::new();
        };
        let Some((expected, expected_ts)) = dev.expected.clone() else {
            return Vec::new();
        };
        let actual = dev.actual.get(&self.names.firmware).cloned();
        // An agent that settled on a failure or rejection of another intent still reports the
        // firmware it had before (or nothing, when the failed flash destroyed it: the last value
        // then is stale). Going back to that value (a rollout's rollback) is a new intent for it.
        let settled_elsewhere = dev
            .actual
            .get(&self.names.state)
            .and_then(|(s, _)| s.parse::<FirmwareState>().ok())
            .is_some_and(|s| s.failure().is_some());
        if !settled_elsewhere && actual.as_ref().is_some_and(|(a, _)| *a == expected) {
            if !dev.delta_retained {
                return Vec::new();
            }
            if let Some(d) = self.devices.get_mut(id) {
                d.delta_retained = false;
            }
            return vec![Action::Publish {
                topic,
                payload: Vec::new(),
                retain: true,
            }];
        }
        let twin = MsgTwin {
            expected: Some(value(expected, expected_ts)),
            // After a failure the reported firmware is not what the agent settled on: leave it
            // out, so the delta names the expected value even when it equals that report.
            actual: actual
                .filter(|_| !settled_elsewhere)
                .map(|(a, ts)| value(a, ts)),
            optional: Some(false),
            metadata: Some(TypeMetadata::new("string")),
            ..MsgTwin::default()
        };
        let twins = BTreeMap::from([(self.names.firmware.clone(), twin)]);
        let base = self.base(now_ms);
        let Some(delta) = mqtt_schema::build_device_twin_delta(base, &twins) else {
            return Vec::new();
        };
        if let Some(d) = self.devices.get_mut(id) {
            d.delta_retained = true;
        }
        vec![Action::Publish {
            topic,
            payload: to_go_json(&delta),
            retain: true,
        }]
    }

    /// A message on one of [`Relay::filters`]. Anything unreadable is ignored (logged by the
    /// caller through the returned empty list).
    pub fn on_message(&mut self, topic: &str, payload: &[u8], now_ms: i64) -> Vec<Action> {
        let Ok(parsed) = Topic::parse(topic, self.layout) else {
            return Vec::new();
        };
        let Some((id, kind)) = parsed.device_kind() else {
            return Vec::new();
        };
        let id = id.clone();
        match kind {
            DeviceTopicKind::TwinGet => vec![self.get_result(&id, now_ms)],
            DeviceTopicKind::TwinUpdate => self.on_report(&id, payload, now_ms),
            _ => Vec::new(),
        }
    }

    fn on_report(&mut self, id: &DeviceId, payload: &[u8], now_ms: i64) -> Vec<Action> {
        let Ok(update) = unmarshal_device_twin_update(payload) else {
            return Vec::new();
        };
        let actual: BTreeMap<String, String> = update
            .twin
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, t)| Some((name, t?.actual?.value?)))
            .collect();
        if actual.is_empty() {
            return Vec::new();
        }
        let dev = self.devices.entry(id.clone()).or_default();
        for (name, v) in &actual {
            dev.actual.insert(name.clone(), (v.clone(), now_ms));
        }
        let key = dev
            .key
            .clone()
            .or_else(|| id.namespace().map(|_| id.clone()));
        let mut actions = Vec::new();
        if actual.contains_key(&self.names.firmware) {
            actions.extend(self.delta_actions(id, now_ms));
        }
        if let Some(device) = key {
            actions.push(Action::WriteStatus {
                device,
                actual,
                timestamp_ms: now_ms,
            });
        }
        actions
    }

    fn get_result(&mut self, id: &DeviceId, now_ms: i64) -> Action {
        let dev = self.devices.get(id).cloned().unwrap_or_default();
        let mut twins = TwinMap::new();
        let mut names: Vec<&String> = dev.actual.keys().collect();
        if dev.expected.is_some() && !names.contains(&&self.names.firmware) {
            names.push(&self.names.firmware);
        }
        for name in names {
            let expected = (*name == self.names.firmware)
                .then(|| dev.expected.clone())
                .flatten();
            let twin = MsgTwin {
                expected: expected.map(|(v, ts)| value(v, ts)),
                actual: dev.actual.get(name).map(|(v, ts)| value(v.clone(), *ts)),
                optional: Some(false),
                metadata: Some(TypeMetadata::new("string")),
                ..MsgTwin::default()
            };
            twins.insert(name.clone(), Some(twin));
        }
        let base = self.base(now_ms);
        let result = mqtt_schema::build_twin_get_result(base, &twins);
        Action::Publish {
            topic: Topic::device(id, DeviceTopicKind::TwinGetResult).to_string(),
            payload: to_go_json(&result),
            retain: false,
        }
    }
}

fn value(v: String, timestamp: i64) -> TwinValue {
    TwinValue {
        value: Some(v),
        metadata: Some(ValueMetadata { timestamp }),
    }
}

/// Writes reports into `Device.status` or the `DeviceStatus` object, as cloudcore does: a merge
/// patch carrying the resourceVersion (a conflict is retried), on the main resource or the status
/// subresource, whichever the CRD has ([`StatusRoute`]).
#[derive(Clone)]
pub struct KubeStatusWriter {
    client: Client,
    location: StatusLocation,
    route: Arc<StatusRoute>,
}

/// Attempts of a read-modify-patch cycle that meets a concurrent change (409).
const CONFLICT_ATTEMPTS: usize = 5;

impl KubeStatusWriter {
    /// A writer for the given status location.
    pub fn new(client: Client, location: StatusLocation) -> KubeStatusWriter {
        KubeStatusWriter {
            client,
            location,
            route: Arc::new(StatusRoute::default()),
        }
    }

    /// Shares `route` (what is known of the status subresource) with other writers.
    pub fn with_route(mut self, route: Arc<StatusRoute>) -> KubeStatusWriter {
        self.route = route;
        self
    }

    async fn write_once(
        &self,
        key: &DeviceId,
        actual: &BTreeMap<String, String>,
        timestamp_ms: i64,
    ) -> Result<(), kube::Error> {
        let devices: Api<Device> = Api::namespaced(self.client.clone(), namespace_of(key));
        let device = devices.get(key.name()).await?;
        match self.location {
            StatusLocation::Device => {
                let status = apply_actual_report(
                    &device.spec.properties,
                    device.status.as_ref(),
                    actual,
                    timestamp_ms,
                );
                let patch = json!({
                    "metadata": { "resourceVersion": device.resource_version() },
                    "status": { "twins": status.twins },
                });
                self.route.patch(&devices, key.name(), &patch).await?;
            }
            StatusLocation::DeviceStatus => {
                let api: Api<DeviceStatus> =
                    Api::namespaced(self.client.clone(), namespace_of(key));
                let ds = api.get(key.name()).await?;
                let status = apply_actual_report(
                    &device.spec.properties,
                    ds.status.as_ref(),
                    actual,
                    timestamp_ms,
                );
                let patch = json!({
                    "metadata": { "resourceVersion": ds.resource_version() },
                    "status": { "twins": status.twins },
                });
                self.route.patch(&api, key.name(), &patch).await?;
            }
        }
        Ok(())
    }
}

impl StatusWriter for KubeStatusWriter {
    fn write_actual<'a>(
        &'a self,
        device: &'a DeviceId,
        actual: &'a BTreeMap<String, String>,
        timestamp_ms: i64,
    ) -> BoxFuture<'a, Result<(), StatusError>> {
        Box::pin(async move {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.write_once(device, actual, timestamp_ms).await {
                    Ok(()) => return Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 && attempt < CONFLICT_ATTEMPTS => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        return Err(StatusError::NotFound {
                            device: device.to_string(),
                        });
                    }
                    Err(e) => {
                        return Err(StatusError::Api {
                            device: device.to_string(),
                            detail: e.to_string(),
                        });
                    }
                }
            }
        })
    }
}

#[cfg(test)]
#[path = "direct_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "direct_kube_tests.rs"]
mod kube_tests;
