//! The MQTT link to the node's broker: intents in, reports out (docs/decisions/0002-edge-agent-design.md).
//!
//! Two connections: a persistent-session subscriber with manual acks (a delta is acked only once its intent is
//! journaled) and a clean-session publisher whose every report is cleared from the outbox on its PUBACK.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mqtt_schema::gojson::decode;
use mqtt_schema::{
    BaseMessage, DeviceTopicKind, DeviceTwinDelta, DeviceTwinResult, Topic, TopicLayout, to_go_json,
};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, Publish, QoS};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::MqttConfig;
use crate::device::{Ask, Device};
use crate::metrics::Metrics;
use crate::report::{Report, ReportQueue};

/// The agent's MQTT endpoint from its `[mqtt]` settings.
pub fn endpoint(cfg: &MqttConfig) -> twinflash_mqtt::Endpoint {
    twinflash_mqtt::Endpoint {
        url: cfg.url.clone(),
        username: cfg.username.clone(),
        password: cfg.password.clone(),
        ca_file: cfg.ca_file.clone(),
        cert_file: cfg.cert_file.clone(),
        key_file: cfg.key_file.clone(),
        keep_alive_secs: cfg.keep_alive_secs,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Everything the two link tasks share.
#[derive(Debug)]
pub struct Link {
    /// Devices by id (`ns/name` or `name`).
    pub devices: HashMap<String, Arc<Device>>,
    /// The topic layout.
    pub layout: TopicLayout,
    /// The outbox.
    pub reports: Arc<ReportQueue>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Devices whose twin/get is owed (after every subscribe).
    gets_owed: Mutex<HashSet<String>>,
    gets_changed: Notify,
    /// Problems already logged (logged once each).
    logged: Mutex<HashSet<String>>,
    node: String,
    reconnect_max: Duration,
}

impl Link {
    /// A link for these devices.
    pub fn new(
        node: &str,
        devices: HashMap<String, Arc<Device>>,
        layout: TopicLayout,
        reports: Arc<ReportQueue>,
        metrics: Arc<Metrics>,
        reconnect_max: Duration,
    ) -> Link {
        Link {
            devices,
            layout,
            reports,
            metrics,
            gets_owed: Mutex::new(HashSet::new()),
            gets_changed: Notify::new(),
            logged: Mutex::new(HashSet::new()),
            node: node.to_owned(),
            reconnect_max,
        }
    }

    fn warn_once(&self, key: String, message: &str) {
        let mut logged = self
            .logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if logged.len() < 10_000 && logged.insert(key.clone()) {
            tracing::warn!(what = %key, "{message}");
        }
    }

    /// The subscription filters: each device's delta and get-result topics.
    fn filters(&self) -> Vec<rumqttc::SubscribeFilter> {
        let mut out = Vec::new();
        for dev in self.devices.values() {
            let Ok(id) = mqtt_schema::DeviceId::parse(dev.id(), self.layout) else {
                continue;
            };
            for kind in [
                DeviceTopicKind::TwinUpdateDelta,
                DeviceTopicKind::TwinGetResult,
                DeviceTopicKind::TwinGet,
            ] {
                out.push(rumqttc::SubscribeFilter::new(
                    Topic::device(&id, kind).to_string(),
                    QoS::AtLeastOnce,
                ));
            }
        }
        out
    }

    /// The event id prefix of this agent's own twin/get requests.
    fn get_prefix(&self) -> String {
        format!("twinflash-{}-", self.node)
    }

    fn owe_gets(&self) {
        let mut owed = self
            .gets_owed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        owed.extend(self.devices.keys().cloned());
        drop(owed);
        self.gets_changed.notify_one();
    }

    fn rereport_all(&self) {
        for dev in self.devices.values() {
            dev.rereport(&self.reports);
        }
    }

    /// Handles one incoming publish; returns once it may be acknowledged.
    async fn on_publish(&self, p: &Publish) {
        if p.payload.is_empty() {
            // A retained delta being cleared (direct mode, once a device converged): nothing to do.
            return;
        }
        let topic = match Topic::parse(&p.topic, self.layout) {
            Ok(t) => t,
            Err(e) => {
                return self.warn_once(
                    format!("topic {}", p.topic),
                    &format!("ignoring a message on an unexpected topic: {e}"),
                );
            }
        };
        let Some((id, kind)) = topic.device_kind() else {
            return self.warn_once(
                format!("topic {}", p.topic),
                "ignoring a message on a topic that names no device",
            );
        };
        let key = id.to_string();
        let Some(device) = self.devices.get(&key) else {
            return self.warn_once(
                format!("device {key}"),
                "ignoring a message for a device this agent does not manage",
            );
        };
        if kind == DeviceTopicKind::TwinGet {
            // Someone asks for the twin (a watcher such as `twinflash status`, edgecore's clients): besides
            // whatever twin store answers, say what this device is doing now. Our own requests are not answered.
            let ours = mqtt_schema::gojson::decode::<mqtt_schema::TwinGetRequest>(&p.payload)
                .is_ok_and(|g| g.event_id.starts_with(&self.get_prefix()));
            tracing::debug!(device = %key, ours, "twin/get seen");
            if !ours {
                match device.ask() {
                    Ask::Now => device.rereport(&self.reports),
                    Ask::Later(delay) => {
                        let (dev, reports) = (device.clone(), self.reports.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            dev.answer_scheduled(&reports);
                        });
                    }
                    Ask::AlreadyScheduled => {}
                }
            }
            return;
        }
        let wanted = match kind {
            DeviceTopicKind::TwinUpdateDelta => decode::<DeviceTwinDelta>(&p.payload)
                .map(|d| d.wanted(&device.names.firmware).map(str::to_owned)),
            DeviceTopicKind::TwinGetResult => decode::<DeviceTwinResult>(&p.payload).map(|r| {
                r.twin
                    .as_ref()
                    .and_then(|t| t.get(&device.names.firmware))
                    .and_then(Option::as_ref)
                    .map(|t| t.expected_value().to_owned())
                    .filter(|v| !v.is_empty())
            }),
            _ => Ok(None),
        };
        let wanted = match wanted {
            Ok(Some(w)) => w,
            Ok(None) => return,
            Err(e) => {
                self.warn_once(
                    format!("payload {key} {e}"),
                    &format!("malformed twin message for {key} on {}: {e}", p.topic),
                );
                device.report(
                    &self.reports,
                    Report {
                        state: format!("rejected:{}", e.code()),
                        installed: device.installed_pair(),
                        terminal: true,
                    },
                );
                return;
            }
        };
        let dev = device.clone();
        let journaled = tokio::task::spawn_blocking(move || dev.on_intent(&wanted)).await;
        match journaled {
            Ok(Ok(true)) => tracing::info!(device = %key, "new firmware intent journaled"),
            Ok(Ok(false)) => tracing::debug!(device = %key, "repeated intent"),
            Ok(Err(e)) => {
                tracing::error!(device = %key, code = %e.code(), error = %e, "cannot journal intent")
            }
            Err(e) => tracing::error!(device = %key, error = %e, "journal task failed"),
        }
    }

    /// The subscriber: receives intents, journals them, then acks. Runs until `shutdown`.
    pub async fn run_subscriber(
        self: Arc<Self>,
        client: AsyncClient,
        mut events: EventLoop,
        shutdown: CancellationToken,
    ) {
        let mut backoff = twinflash_mqtt::reconnect_backoff(self.reconnect_max);
        let mut down_since: Option<std::time::Instant> = None;
        loop {
            let ev = tokio::select! {
                ev = events.poll() => ev,
                () = shutdown.cancelled() => break,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = twinflash_mqtt::reconnect_backoff(self.reconnect_max);
                    self.metrics.set_broker_connected(true);
                    if let Some(t) = down_since.take() {
                        tracing::info!(node = %self.node, after_secs = t.elapsed().as_secs(), session_present = ack.session_present, "broker link back");
                    }
                    if ack.session_present {
                        self.owe_gets();
                    } else if let Err(e) = client.try_subscribe_many(self.filters()) {
                        tracing::error!(error = %e, "cannot queue the subscription");
                    }
                    self.rereport_all();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => self.owe_gets(),
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    self.on_publish(&p).await;
                    if let Err(e) = client.try_ack(&p) {
                        tracing::warn!(error = %e, "cannot queue an ack; the broker will redeliver");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.metrics.set_broker_connected(false);
                    if down_since.is_none() {
                        down_since = Some(std::time::Instant::now());
                        tracing::warn!(code = %mqtt_schema::ErrorCode::BrokerUnreachable, error = %e, "broker link down; retrying with backoff");
                    }
                    let wait = backoff.next().unwrap_or(self.reconnect_max);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        let _ = client.try_disconnect();
    }

    /// The publisher: sends every report still owed and the owed twin/get requests; clears each report from the
    /// outbox on its PUBACK. Runs until `shutdown`.
    pub async fn run_publisher(
        self: Arc<Self>,
        client: AsyncClient,
        mut events: EventLoop,
        shutdown: CancellationToken,
    ) {
        let mut backoff = twinflash_mqtt::reconnect_backoff(self.reconnect_max);
        let mut connected = false;
        // Publishes handed to rumqttc on this connection, in order; each Outgoing::Publish event takes the front.
        let mut fifo: VecDeque<Sent> = VecDeque::new();
        let mut inflight: HashMap<u16, Sent> = HashMap::new();
        let mut sent: HashSet<Sent> = HashSet::new();
        let mut counter: u64 = 0;
        loop {
            if connected {
                self.send_owed(&client, &mut fifo, &mut sent, &mut counter);
            }
            let ev = tokio::select! {
                ev = events.poll() => ev,
                () = self.reports.changed(), if connected => continue,
                () = self.gets_changed.notified(), if connected => continue,
                () = shutdown.cancelled() => break,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = twinflash_mqtt::reconnect_backoff(self.reconnect_max);
                    connected = true;
                    fifo.clear();
                    inflight.clear();
                    sent.clear();
                    self.rereport_all();
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(s) = fifo.pop_front() {
                        inflight.insert(pkid, s);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(s) = inflight.remove(&ack.pkid) {
                        sent.remove(&s);
                        match s {
                            Sent::Report { device, seq } => {
                                if let Err(e) = self.reports.acked(&device, seq) {
                                    tracing::error!(code = %e.code(), error = %e, "cannot clear an acknowledged report");
                                }
                                self.metrics.set_outbox_depth(self.reports.depth());
                            }
                            Sent::Get { device } => {
                                self.gets_owed
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .remove(&device);
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    connected = false;
                    let wait = backoff.next().unwrap_or(self.reconnect_max);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        // Give queued reports a moment to leave before disconnecting; the outbox keeps whatever does not.
        let _ = client.try_disconnect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, events.poll()).await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    }

    fn send_owed(
        &self,
        client: &AsyncClient,
        fifo: &mut VecDeque<Sent>,
        sent: &mut HashSet<Sent>,
        counter: &mut u64,
    ) {
        for (device, pending) in self.reports.pending() {
            let tag = Sent::Report {
                device: device.clone(),
                seq: pending.seq,
            };
            if sent.contains(&tag) {
                continue;
            }
            let Ok(id) = mqtt_schema::DeviceId::parse(&device, self.layout) else {
                continue;
            };
            let payload = to_go_json(&mqtt_schema::actual_update(
                BaseMessage::new("", now_ms()),
                pending.twins.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            ));
            if !send(
                client,
                fifo,
                sent,
                tag,
                &id,
                DeviceTopicKind::TwinUpdate,
                payload,
            ) {
                return; // the request channel is full: the rest goes on the next turn
            }
        }
        let owed: Vec<String> = self
            .gets_owed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        for device in owed {
            let tag = Sent::Get {
                device: device.clone(),
            };
            if sent.contains(&tag) {
                continue;
            }
            let Ok(id) = mqtt_schema::DeviceId::parse(&device, self.layout) else {
                continue;
            };
            *counter += 1;
            let payload = to_go_json(&mqtt_schema::twin_get_request(
                format!("{}{counter}", self.get_prefix()),
                now_ms(),
            ));
            if !send(
                client,
                fifo,
                sent,
                tag,
                &id,
                DeviceTopicKind::TwinGet,
                payload,
            ) {
                return;
            }
        }
    }
}

/// Hands one QoS 1 publish to rumqttc and records what it carries, in order, for its PUBACK. False when the request
/// channel is full.
fn send(
    client: &AsyncClient,
    fifo: &mut VecDeque<Sent>,
    sent: &mut HashSet<Sent>,
    tag: Sent,
    id: &mqtt_schema::DeviceId,
    kind: DeviceTopicKind,
    payload: Vec<u8>,
) -> bool {
    let topic = Topic::device(id, kind).to_string();
    if client
        .try_publish(topic, QoS::AtLeastOnce, false, payload)
        .is_err()
    {
        return false;
    }
    fifo.push_back(tag.clone());
    sent.insert(tag);
    true
}

/// What a publish on the report connection carried.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Sent {
    Report { device: String, seq: u64 },
    Get { device: String },
}
