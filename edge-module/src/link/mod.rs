//! The MQTT link to the node's broker: intents in, reports out (docs/decisions/0002-edge-agent-design.md).
//!
//! Two connections: a persistent-session subscriber with manual acks (a delta is acked only once its intent is
//! journaled) and a clean-session publisher whose every report is cleared from the outbox on its PUBACK. What a
//! message means is decided by `wire::classify`; what the publisher may send, by the `ledger`. Both are pure.

pub mod ledger;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mqtt_schema::clip::clip;
use mqtt_schema::{
    BaseMessage, DeviceTopicKind, ErrorCode, FirmwareState, Topic, TopicLayout, to_go_json,
};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, Publish, QoS};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::device::{Ask, Device};
use crate::metrics::Metrics;
use crate::quiet::Quiet;
use crate::report::{Report, ReportQueue};
use crate::wire::{self, Incoming, Intent};
use ledger::{Budget, Ledger, Sent};

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
    /// Repeated warnings about hostile input, at most one a minute each.
    quiet: Quiet,
    /// Intents that could not be journaled yet, by device.
    held: Mutex<HashMap<String, Held>>,
    node: String,
    reconnect_max: Duration,
    max_message: usize,
    report_budget: Budget,
}

/// How the link treats what it receives and sends.
#[derive(Debug, Clone)]
pub struct LinkLimits {
    /// Cap of the reconnect backoff.
    pub reconnect_max: Duration,
    /// Largest inbound message handled (`limits.max_message_bytes`).
    pub max_message: usize,
    /// The report budget of each device (`limits.report_burst`, `limits.report_interval_ms`).
    pub report_budget: Budget,
}

impl Link {
    /// A link for these devices.
    pub fn new(
        node: &str,
        devices: HashMap<String, Arc<Device>>,
        layout: TopicLayout,
        reports: Arc<ReportQueue>,
        metrics: Arc<Metrics>,
        limits: LinkLimits,
    ) -> Link {
        Link {
            devices,
            layout,
            reports,
            metrics,
            gets_owed: Mutex::new(HashSet::new()),
            gets_changed: Notify::new(),
            logged: Mutex::new(HashSet::new()),
            quiet: Quiet::new(Duration::from_secs(60)),
            held: Mutex::new(HashMap::new()),
            node: node.to_owned(),
            reconnect_max: limits.reconnect_max,
            max_message: limits.max_message,
            report_budget: limits.report_budget,
        }
    }

    fn warn_once(&self, key: String, message: &str) {
        let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
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
            .unwrap_or_else(PoisonError::into_inner);
        owed.extend(self.devices.keys().cloned());
        drop(owed);
        self.gets_changed.notify_one();
    }

    fn rereport_all(&self) {
        for dev in self.devices.values() {
            dev.rereport(&self.reports);
        }
    }

    /// Handles one incoming publish. True when it may be acknowledged now; false when it is held (its intent could
    /// not be journaled yet: the broker keeps it until then, see [`Link::retry_held`]).
    async fn on_publish(&self, client: &AsyncClient, p: &Publish) -> bool {
        let incoming = wire::classify(
            &p.topic,
            &p.payload,
            self.layout,
            self.max_message,
            |d| self.devices.get(d).map(|dev| &dev.names),
            &self.get_prefix(),
        );
        match incoming {
            Incoming::Oversized { len, max } => {
                self.metrics.dropped("oversized");
                self.quiet.warn(format!("oversized {}", clip(&p.topic)), || {
                    tracing::warn!(topic = %clip(&p.topic), len, max, "dropping an MQTT message over limits.max_message_bytes")
                });
            }
            Incoming::Empty | Incoming::NoIntent { .. } | Incoming::OwnGet { .. } => {}
            Incoming::Ignored { key, why } => self.warn_once(key, why),
            Incoming::Malformed {
                device,
                code,
                error,
            } => {
                self.metrics.dropped("undecodable");
                self.warn_once(
                    format!("payload {device} {error}"),
                    &format!(
                        "malformed twin message for {device} on {}: {error}",
                        clip(&p.topic)
                    ),
                );
                if let Some(dev) = self.devices.get(&device) {
                    dev.report(
                        &self.reports,
                        Report {
                            state: FirmwareState::Rejected(code.into()),
                            installed: dev.installed_pair(),
                        },
                    );
                }
            }
            Incoming::Asked { device } => self.asked(&device),
            Incoming::Intent { device, intent } => {
                return self
                    .journal_intent(client, &device, intent, Some(p.clone()))
                    .await;
            }
        }
        true
    }

    /// Someone asks for the twin (a watcher such as `twinflash status`, edgecore's clients): besides whatever twin
    /// store answers, say what this device is doing now. Requests within a second are answered by one report.
    fn asked(&self, device: &str) {
        let Some(dev) = self.devices.get(device) else {
            return;
        };
        tracing::debug!(device, "twin/get seen");
        match dev.ask(Instant::now()) {
            Ask::Now => dev.rereport(&self.reports),
            Ask::Later(delay) => {
                let (dev, reports) = (dev.clone(), self.reports.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    dev.answer_scheduled(&reports, Instant::now());
                });
            }
            Ask::AlreadyScheduled => {}
        }
    }

    /// Journals an intent. True when it is journaled (or changed nothing): `publish`, and every held message of the
    /// same device, may be acknowledged. False when the journal cannot be written: the intent is held with its
    /// message, the device reports `waiting:<code>` (`waiting:disk-full`), and [`Link::retry_held`] tries again.
    async fn journal_intent(
        &self,
        client: &AsyncClient,
        device: &str,
        intent: Intent,
        publish: Option<Publish>,
    ) -> bool {
        let Some(dev) = self.devices.get(device).cloned() else {
            return true;
        };
        if let Intent::Invalid { error, .. } = &intent {
            self.metrics.dropped("invalid-reference");
            self.quiet.warn(format!("invalid intent {device}"), || {
                tracing::warn!(device, code = %ErrorCode::InvalidReference, error = %clip(error), "intent is not a digest-pinned reference; recorded as its prefix and rejected")
            });
        }
        let (d, i) = (dev.clone(), intent.clone());
        let journaled = tokio::task::spawn_blocking(move || d.on_intent(&i))
            .await
            .unwrap_or_else(|e| {
                Err(crate::journal::JournalError::Io {
                    path: Default::default(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        match journaled {
            Ok(changed) => {
                // An invalid intent was warned about above, at most once a minute.
                if changed && matches!(intent, Intent::Valid(_)) {
                    tracing::info!(device, "new firmware intent journaled");
                }
                if let Some(h) = held.remove(device) {
                    tracing::info!(device, messages = h.publishes.len(), "held intent released");
                    for p in &h.publishes {
                        let _ = client.try_ack(p);
                    }
                }
                true
            }
            Err(e) => {
                let entry = held.entry(device.to_owned()).or_insert_with(|| {
                    tracing::error!(device, code = %e.code(), error = %e, "cannot journal an intent; holding it unacknowledged until the journal can be written");
                    Held {
                        intent: intent.clone(),
                        publishes: Vec::new(),
                    }
                });
                entry.intent = intent;
                entry.publishes.extend(publish);
                drop(held);
                dev.report(
                    &self.reports,
                    Report {
                        state: FirmwareState::Waiting(e.code().into()),
                        installed: dev.installed_pair(),
                    },
                );
                false
            }
        }
    }

    /// Tries again to journal every held intent.
    async fn retry_held(&self, client: &AsyncClient) {
        let held: Vec<(String, Intent)> = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(d, h)| (d.clone(), h.intent.clone()))
            .collect();
        for (device, intent) in held {
            self.journal_intent(client, &device, intent, None).await;
        }
    }

    /// A new connection: held messages of the old one can no longer be acknowledged (their packet ids are gone; the
    /// broker redelivers them if it kept the session). Their intents stay held.
    fn forget_held_messages(&self) {
        for h in self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values_mut()
        {
            h.publishes.clear();
        }
    }

    /// The subscriber: receives intents, journals them, then acks. Runs until `shutdown`.
    ///
    /// A packet over the transport's cap cannot be read, so rumqttc ends the connection, and a persistent session
    /// would redeliver it at every reconnect. After such a drop the subscriber reconnects once with a clean session,
    /// which discards the broker's queue for this agent, and then asks every device's twin again (a subscribe is
    /// always followed by twin/get), so no intent is lost with the queue. The next reconnect is persistent again.
    pub async fn run_subscriber(
        self: Arc<Self>,
        client: AsyncClient,
        mut events: EventLoop,
        shutdown: CancellationToken,
    ) {
        let mut backoff = twinflash_mqtt::reconnect_backoff(self.reconnect_max);
        let mut down_since: Option<std::time::Instant> = None;
        let persistent = !events.mqtt_options.clean_session();
        let mut retry = tokio::time::interval(HELD_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let holding = !self
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty();
            let ev = tokio::select! {
                ev = events.poll() => ev,
                _ = retry.tick(), if holding => {
                    self.retry_held(&client).await;
                    continue;
                }
                () = shutdown.cancelled() => break,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = twinflash_mqtt::reconnect_backoff(self.reconnect_max);
                    self.metrics.set_broker_connected(true);
                    events.mqtt_options.set_clean_session(!persistent);
                    if let Some(t) = down_since.take() {
                        tracing::info!(node = %self.node, after_secs = t.elapsed().as_secs(), session_present = ack.session_present, "broker link back");
                    }
                    self.forget_held_messages();
                    if ack.session_present {
                        self.owe_gets();
                    } else if let Err(e) = client.try_subscribe_many(self.filters()) {
                        tracing::error!(error = %e, "cannot queue the subscription");
                    }
                    self.rereport_all();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => self.owe_gets(),
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if self.on_publish(&client, &p).await
                        && let Err(e) = client.try_ack(&p)
                    {
                        tracing::warn!(error = %e, "cannot queue an ack; the broker will redeliver");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.metrics.set_broker_connected(false);
                    if twinflash_mqtt::is_oversized(&e) {
                        self.metrics.dropped("over-transport-cap");
                        tracing::error!(
                            cap = twinflash_mqtt::MAX_INCOMING_PACKET,
                            "the broker sent a packet over the transport's cap; reconnecting once with a clean session (the broker's queue for this agent is discarded) and asking every device's twin again"
                        );
                        events.mqtt_options.set_clean_session(true);
                    }
                    if down_since.is_none() {
                        down_since = Some(std::time::Instant::now());
                        tracing::warn!(code = %ErrorCode::BrokerUnreachable, error = %e, "broker link down; retrying with backoff");
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
    /// outbox on its PUBACK. Per device one report is in flight at a time, within its budget (see [`Ledger`]). Runs until `shutdown`.
    pub async fn run_publisher(
        self: Arc<Self>,
        client: AsyncClient,
        mut events: EventLoop,
        shutdown: CancellationToken,
    ) {
        let mut backoff = twinflash_mqtt::reconnect_backoff(self.reconnect_max);
        let mut connected = false;
        let mut ledger = Ledger::new(self.report_budget);
        let mut counter: u64 = 0;
        loop {
            let due = if connected {
                self.send_owed(&client, &mut ledger, &mut counter, Instant::now())
            } else {
                None
            };
            let ev = tokio::select! {
                ev = events.poll() => ev,
                () = self.reports.changed(), if connected => continue,
                () = self.gets_changed.notified(), if connected => continue,
                () = sleep_until(due), if due.is_some() => continue,
                () = shutdown.cancelled() => break,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = twinflash_mqtt::reconnect_backoff(self.reconnect_max);
                    connected = true;
                    ledger.reset();
                    self.rereport_all();
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => ledger.written(pkid),
                Ok(Event::Incoming(Packet::PubAck(ack))) => match ledger.acked(ack.pkid) {
                    Some(Sent::Report { device, seq }) => {
                        if let Err(e) = self.reports.acked(&device, seq) {
                            tracing::error!(code = %e.code(), error = %e, "cannot clear an acknowledged report");
                        }
                        self.metrics.set_outbox_depth(self.reports.depth());
                    }
                    Some(Sent::Get { device }) => {
                        self.gets_owed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&device);
                    }
                    None => {}
                },
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

    /// Hands rumqttc what the ledger allows now; returns when the next report held back by the spacing is due.
    fn send_owed(
        &self,
        client: &AsyncClient,
        ledger: &mut Ledger,
        counter: &mut u64,
        now: Instant,
    ) -> Option<Instant> {
        let mut due: Option<Instant> = None;
        for (device, pending) in self.reports.fronts() {
            let churning = self.devices.get(&device).is_some_and(|d| d.churning(now));
            match ledger.may_report(&device, now, churning) {
                Ok(()) => {}
                Err(later) => {
                    due = match (due, later) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    continue;
                }
            }
            let Ok(id) = mqtt_schema::DeviceId::parse(&device, self.layout) else {
                continue;
            };
            let payload = to_go_json(&mqtt_schema::actual_update(
                BaseMessage::new("", now_ms()),
                pending.twins.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            ));
            let tag = Sent::Report {
                device,
                seq: pending.seq,
            };
            if !send(
                client,
                ledger,
                tag,
                &id,
                DeviceTopicKind::TwinUpdate,
                payload,
                now,
            ) {
                return due; // the request channel is full: the rest goes on the next turn
            }
        }
        let owed: Vec<String> = self
            .gets_owed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|d| ledger.may_get(d))
            .cloned()
            .collect();
        for device in owed {
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
                ledger,
                Sent::Get { device },
                &id,
                DeviceTopicKind::TwinGet,
                payload,
                now,
            ) {
                return due;
            }
        }
        due
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due.into()).await;
    }
}

/// Hands one QoS 1 publish to rumqttc and records it in the ledger. False when the request channel is full.
fn send(
    client: &AsyncClient,
    ledger: &mut Ledger,
    tag: Sent,
    id: &mqtt_schema::DeviceId,
    kind: DeviceTopicKind,
    payload: Vec<u8>,
    now: Instant,
) -> bool {
    let topic = Topic::device(id, kind).to_string();
    if client
        .try_publish(topic, QoS::AtLeastOnce, false, payload)
        .is_err()
    {
        return false;
    }
    ledger.handed(tag, now);
    true
}

/// An intent that could not be journaled yet, with the messages that carried it (unacknowledged, so the broker
/// keeps them).
#[derive(Debug)]
struct Held {
    intent: Intent,
    publishes: Vec<Publish>,
}

/// How often held intents are journaled again.
const HELD_RETRY: Duration = Duration::from_secs(1);
