//! Mode `direct`: twinflash-cloud plays edgecore's part for the firmware twins. [`Relay`] is the
//! pure twin book (expected from intents, actual from the agent's reports) that says what to
//! publish and what to write into the status; [`KubeStatusWriter`] writes reports as cloudcore.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use kube::api::Api;
use kube::{Client, ResourceExt};
use mqtt_schema::gojson::decode;
use mqtt_schema::topic::TWIN_UPDATE_ERROR_RESULT;
use mqtt_schema::{
    BaseMessage, DeviceId, DeviceTopicKind, FirmwareState, MsgTwin, ResultMessage, Topic,
    TopicLayout, TwinMap, TwinNames, TwinValue, TypeMetadata, ValueMetadata, to_go_json,
    unmarshal_device_twin_update,
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
    /// Write the agent's `actual` values into the status of `device`, then publish `ack`.
    WriteStatus {
        /// The Device.
        device: DeviceId,
        /// Twin name -> reported value.
        actual: BTreeMap<String, String>,
        /// When the report arrived (ms since the epoch).
        timestamp_ms: i64,
        /// The report's `update/result`, published only once the write is accepted: the agent keeps a report in
        /// its outbox until that result arrives, so a write that fails is retried by the agent, not lost here.
        ack: Option<Ack>,
    },
}

/// The `twin/update/result` owed to a report once its status write is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// `$hw/events/device/<id>/twin/update/result`.
    pub topic: String,
    /// The report's event id (a 404 for a Device the API server does not know carries it too).
    pub event_id: String,
    /// The DeviceTwinResult to publish on success.
    pub payload: Vec<u8>,
}

impl Ack {
    /// edgecore's answer for an unknown device (dtmanager `DealDeviceTwin`): 404 with the update's event id. The
    /// agent treats it as no acknowledgement and retries with backoff.
    pub fn not_found(&self, now_ms: i64) -> Vec<u8> {
        let base = BaseMessage::new(self.event_id.clone(), now_ms);
        to_go_json(&ResultMessage::error(
            base,
            404,
            "update rejected due to the device is not existed",
        ))
    }
}

/// Event ids of the controller's own messages start so (`twinflash-cloud-<n>` for the anti-entropy nudges). The
/// relay does not answer its own nudges: they are meant for the agent, which re-reports.
pub const OWN_EVENT_PREFIX: &str = "twinflash-cloud-";

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
            DeviceTopicKind::TwinGet => self.get_result(&id, payload, now_ms),
            DeviceTopicKind::TwinUpdate => self.on_report(&id, payload, now_ms),
            _ => Vec::new(),
        }
    }

    /// A `twin/update`, handled as edgecore's `DealDeviceTwin` would for the firmware twins: an unreadable or
    /// invalid update gets 400 on `$hw/events/device//twin/update/result` with the empty id (docs/kubeedge.md
    /// section 4, golden d01); `expected` of the firmware twin becomes the device's intent (the retained delta);
    /// `actual` values go to the status. The result carries the update's event id and the updated twins as the
    /// book now holds them (c10, p01/p02 `_01_twin_update_result`); it waits for the status write when there is one.
    fn on_report(&mut self, id: &DeviceId, payload: &[u8], now_ms: i64) -> Vec<Action> {
        let update = match unmarshal_device_twin_update(payload) {
            Ok(u) => u,
            Err(e) => {
                let error = ResultMessage::error(BaseMessage::new("", now_ms), 400, e.reason());
                return vec![Action::Publish {
                    topic: TWIN_UPDATE_ERROR_RESULT.to_owned(),
                    payload: to_go_json(&error),
                    retain: false,
                }];
            }
        };
        let event_id = update.base.event_id.clone();
        let twins = update.twin.unwrap_or_default();
        let expected = twins
            .get(&self.names.firmware)
            .and_then(|t| t.as_ref()?.expected.as_ref()?.value.clone())
            .filter(|v| !v.is_empty());
        let actual: BTreeMap<String, String> = twins
            .iter()
            .filter_map(|(name, t)| {
                Some((name.clone(), t.as_ref()?.actual.as_ref()?.value.clone()?))
            })
            .collect();
        let dev = self.devices.entry(id.clone()).or_default();
        for (name, v) in &actual {
            dev.actual.insert(name.clone(), (v.clone(), now_ms));
        }
        if let Some(reference) = &expected {
            dev.expected = Some((reference.clone(), now_ms));
        }
        if dev.key.is_none() && id.namespace().is_some() {
            dev.key = Some(id.clone());
        }
        let key = dev.key.clone();
        let mut actions = Vec::new();
        let result = self.update_result(id, &event_id, twins.keys(), now_ms);
        if expected.is_some() || actual.contains_key(&self.names.firmware) {
            actions.extend(self.delta_actions(id, now_ms));
        }
        let topic = Topic::device(id, DeviceTopicKind::TwinUpdateResult).to_string();
        match key.filter(|_| !actual.is_empty()) {
            Some(device) => actions.push(Action::WriteStatus {
                device,
                actual,
                timestamp_ms: now_ms,
                ack: Some(Ack {
                    topic,
                    event_id,
                    payload: result,
                }),
            }),
            // Nothing to write (only `expected`, or a legacy-layout device whose namespace is unknown): the book
            // holds it, so it is answered at once, before the delta as edgecore orders them.
            None => actions.insert(
                0,
                Action::Publish {
                    topic,
                    payload: result,
                    retain: false,
                },
            ),
        }
        actions
    }

    /// One twin as the book holds it (`expected` only for the firmware twin, which is all the relay stores).
    fn stored_twin(&self, dev: &RelayDevice, name: &str) -> MsgTwin {
        let expected = (name == self.names.firmware)
            .then(|| dev.expected.clone())
            .flatten();
        MsgTwin {
            expected: expected.map(|(v, ts)| value(v, ts)),
            actual: dev.actual.get(name).map(|(v, ts)| value(v.clone(), *ts)),
            optional: Some(false),
            metadata: Some(TypeMetadata::new("string")),
            ..MsgTwin::default()
        }
    }

    /// edgecore's `BuildDeviceTwinResult(base, twins, 0)` for an update: the update's event id and the twins it
    /// named, as stored now (a twin named without a value the relay keeps is `null`, as edgecore's nil entries).
    fn update_result<'a>(
        &self,
        id: &DeviceId,
        event_id: &str,
        names: impl Iterator<Item = &'a String>,
        now_ms: i64,
    ) -> Vec<u8> {
        let dev = self.devices.get(id).cloned().unwrap_or_default();
        let twins: TwinMap = names
            .map(|name| {
                let twin = self.stored_twin(&dev, name);
                let held = twin.expected.is_some() || twin.actual.is_some();
                (name.clone(), held.then_some(twin))
            })
            .collect();
        let base = BaseMessage::new(event_id, now_ms);
        to_go_json(&mqtt_schema::build_twin_get_result(base, &twins))
    }

    /// `twin/get`: the whole twin book of the device (expected and actual of each twin) with the request's event
    /// id, as edgecore's `DealGetTwin` (p05). An unreadable request gets 400 with the empty id on the get result
    /// topic; the controller's own nudges (`twinflash-cloud-*`) are not answered (they are for the agent).
    fn get_result(&mut self, id: &DeviceId, payload: &[u8], now_ms: i64) -> Vec<Action> {
        let topic = Topic::device(id, DeviceTopicKind::TwinGetResult).to_string();
        let request = match decode::<BaseMessage>(payload) {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("Unmarshal twin info failed: {e}");
                let error = ResultMessage::error(BaseMessage::new("", now_ms), 400, reason);
                return vec![Action::Publish {
                    topic,
                    payload: to_go_json(&error),
                    retain: false,
                }];
            }
        };
        if request.event_id.starts_with(OWN_EVENT_PREFIX) {
            return Vec::new();
        }
        let dev = self.devices.get(id).cloned().unwrap_or_default();
        let mut names: Vec<&String> = dev.actual.keys().collect();
        if dev.expected.is_some() && !names.contains(&&self.names.firmware) {
            names.push(&self.names.firmware);
        }
        let twins: TwinMap = names
            .into_iter()
            .map(|name| (name.clone(), Some(self.stored_twin(&dev, name))))
            .collect();
        let base = BaseMessage::new(request.event_id, now_ms);
        let result = mqtt_schema::build_twin_get_result(base, &twins);
        vec![Action::Publish {
            topic,
            payload: to_go_json(&result),
            retain: false,
        }]
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
