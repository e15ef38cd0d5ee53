//! The MQTT link to the node's broker: intents in, reports out (docs/decisions/0002-edge-agent-design.md).
//!
//! Two connections: a persistent-session subscriber with manual acks (a delta is acked only once its intent is
//! journaled) and a clean-session publisher. Every report carries a unique `event_id`
//! (`twinflash-<node>-<boot>-r<seq>`) and stays in the outbox until edgecore's `twin/update/result` with that id says
//! edgecore stored it (or, with `twin.acknowledgement = "broker"`, until its PUBACK); unanswered, it is sent again
//! with backoff and jitter, carrying the device's latest state. Own `twin/get` requests are answered by a
//! `get/result` with their id, and retried the same way.
//!
//! Anti-entropy: after every subscribe and every `twin.anti_entropy_secs`, the agent asks edgecore for each device's
//! twin and compares edgecore's `actual` values with its own last report; it reports again only what differs. A
//! converged device therefore costs one `twin/get` per period and no edgecore write. What a message means is
//! decided by `wire::classify`; what the publisher may send, by the `ledger`. Both are pure.

pub mod ledger;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mqtt_schema::clip::clip;
use mqtt_schema::{
    BaseMessage, DeviceTopicKind, ErrorCode, FirmwareState, Topic, TopicLayout, to_go_json,
};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, Publish, QoS};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Acknowledgement;
use crate::device::{Ask, Device};
use crate::metrics::Metrics;
use crate::quiet::Quiet;
use crate::report::{Report, ReportQueue};
use crate::wire::{self, Incoming, Intent};
use ledger::{Budget, Ledger, Retry, Sent};

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
    /// Answers the subscriber received for the publisher's sends (edgecore's results and get results).
    answers: Mutex<Vec<Sent>>,
    /// The subscriber's subscriptions are in place: an answer to a report can be received. The publisher sends
    /// nothing before (an answer published meanwhile would be lost, and the report retried for nothing).
    subscribed: std::sync::atomic::AtomicBool,
    answers_changed: Notify,
    node: String,
    /// Unique per process start: event ids never repeat across restarts.
    boot: String,
    reconnect_max: Duration,
    max_message: usize,
    report_budget: Budget,
    ack: Acknowledgement,
    retry: Retry,
    anti_entropy: Option<Duration>,
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
    /// Who acknowledges a report (`twin.acknowledgement`).
    pub ack: Acknowledgement,
    /// The wait for an answer before sending again (`twin.ack_timeout_ms`, `twin.retry_max_secs`).
    pub retry: Retry,
    /// The anti-entropy period (`twin.anti_entropy_secs`; None: only after reconnects).
    pub anti_entropy: Option<Duration>,
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
            answers: Mutex::new(Vec::new()),
            answers_changed: Notify::new(),
            subscribed: std::sync::atomic::AtomicBool::new(false),
            node: node.to_owned(),
            boot: format!("{:08x}", rand::random::<u32>()),
            reconnect_max: limits.reconnect_max,
            max_message: limits.max_message,
            report_budget: limits.report_budget,
            ack: limits.ack,
            retry: limits.retry,
            anti_entropy: limits.anti_entropy,
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
                DeviceTopicKind::TwinUpdateResult,
            ] {
                out.push(rumqttc::SubscribeFilter::new(
                    Topic::device(&id, kind).to_string(),
                    QoS::AtLeastOnce,
                ));
            }
        }
        out
    }

    /// The event id prefix of this agent's own twin/get requests (of any start of it).
    fn get_prefix(&self) -> String {
        format!("twinflash-{}-", self.node)
    }

    /// The event id of report `seq`.
    fn report_id(&self, seq: u64) -> String {
        format!("twinflash-{}-{}-r{seq}", self.node, self.boot)
    }

    /// The event id of this process's twin/get number `n`.
    fn get_id(&self, n: u64) -> String {
        format!("twinflash-{}-{}-g{n}", self.node, self.boot)
    }

    /// The report seq an event id of this process names.
    fn report_seq(&self, event_id: &str) -> Option<u64> {
        event_id
            .strip_prefix(&format!("twinflash-{}-{}-r", self.node, self.boot))?
            .parse()
            .ok()
    }

    fn is_own_get(&self, event_id: &str) -> bool {
        event_id.starts_with(&format!("twinflash-{}-{}-g", self.node, self.boot))
    }

    fn set_subscribed(&self, up: bool) {
        self.subscribed
            .store(up, std::sync::atomic::Ordering::Release);
        if up {
            self.answers_changed.notify_one();
        }
    }

    fn answer(&self, sent: Sent) {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sent);
        self.answers_changed.notify_one();
    }

    /// edgecore answered a `twin/update`: when it is one of this agent's reports, the report is in edgecore's store
    /// and leaves the outbox. A 404 (edgecore does not know the device) is no acknowledgement: the report is retried
    /// with backoff while the operator fixes the Device (docs/operations.md).
    fn on_update_result(&self, device: &str, event_id: &str, code: i64, reason: &str) {
        let Some(seq) = self.report_seq(event_id) else {
            return;
        };
        if code != 0 {
            self.edgecore_error(device, code, reason, "a report");
            return;
        }
        // The publisher updates the outbox depth metric when it takes the answer.
        if let Err(e) = self.reports.acked(device, seq) {
            tracing::error!(code = %e.code(), error = %e, "cannot clear an acknowledged report");
        }
        self.answer(Sent::Report {
            device: device.to_owned(),
            seq,
        });
    }

    fn edgecore_error(&self, device: &str, code: i64, reason: &str, what: &str) {
        self.metrics.edgecore_error(code);
        self.quiet.warn(format!("edgecore {code} {device}"), || {
            if code == 404 {
                tracing::warn!(device, code, reason = %clip(reason), "edgecore does not know this device ({what} was answered 404): its Device object never reached this node. A KubeEdge bug drops Devices created before the edge node first connected; re-create the Device (docs/operations.md, section 8). Retrying with backoff");
            } else {
                tracing::warn!(device, code, reason = %clip(reason), "edgecore refused {what}");
            }
        });
    }

    /// edgecore's stored twin of `device`. Its wanted firmware is an intent like a delta's; its `actual` values are
    /// compared with this agent's last report (anti-entropy): when they differ and nothing is on its way, the
    /// device reports again.
    fn on_get_result(&self, device: &str, event_id: &str, actual: &BTreeMap<String, String>) {
        let Some(dev) = self.devices.get(device) else {
            return;
        };
        if self.ack == Acknowledgement::Edgecore
            && !self.reports.owes(device)
            && let Some(truth) = dev.last_values()
            && truth.iter().any(|(k, v)| actual.get(k) != Some(v))
        {
            tracing::info!(device, edgecore = ?actual, agent = ?truth, "edgecore's twin differs from the device's state; reporting again");
            self.metrics.anti_entropy_repair();
            dev.rereport(&self.reports);
        }
        if self.is_own_get(event_id) {
            self.answer(Sent::Get {
                device: device.to_owned(),
            });
        }
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
            // Reading edgecore's store must not make edgecore write: only a lab without a twin store needs the
            // agent to answer `twinflash status` by reporting again.
            Incoming::Read { device } if self.ack == Acknowledgement::Broker => self.asked(&device),
            Incoming::Read { .. } => {}
            Incoming::Intent { device, intent } => {
                return self
                    .journal_intent(client, &device, intent, Some(p.clone()))
                    .await;
            }
            Incoming::UpdateResult {
                device,
                event_id,
                code,
                reason,
            } => self.on_update_result(&device, &event_id, code, &reason),
            Incoming::GetResult {
                device,
                event_id,
                wanted,
                actual,
                others,
                code,
                reason,
            } => {
                if code != 0 {
                    if self.is_own_get(&event_id) {
                        self.edgecore_error(&device, code, &reason, "a twin/get");
                        self.answer(Sent::Get { device });
                    }
                    return true;
                }
                let journaled = match wanted {
                    Some(intent) => {
                        self.journal_intent(client, &device, intent, Some(p.clone()))
                            .await
                    }
                    None => true,
                };
                self.on_get_result(&device, &event_id, &actual);
                if let Some(dev) = self.devices.get(&device) {
                    dev.twin_reported(&others);
                }
                return journaled;
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
                        self.set_subscribed(true);
                        self.owe_gets();
                    } else if let Err(e) = client.try_subscribe_many(self.filters()) {
                        tracing::error!(error = %e, "cannot queue the subscription");
                    }
                    // With edgecore acknowledging, what it has not acknowledged is still in the outbox and what it
                    // has is in its store; the twin/get after the subscribe finds any difference. With only the
                    // broker acknowledging, nothing can be checked: report again (edgecore does not queue
                    // edge-to-cloud syncs, docs/kubeedge.md section 6).
                    if self.ack == Acknowledgement::Broker {
                        self.rereport_all();
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    self.set_subscribed(true);
                    self.owe_gets();
                }
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
                    self.set_subscribed(false);
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

    /// The publisher: sends every report still owed and the owed twin/get requests, retries what goes unanswered,
    /// and asks for every device's twin each anti-entropy period. Per device one report is in flight at a time,
    /// within its budget (see [`Ledger`]). Runs until `shutdown`.
    pub async fn run_publisher(
        self: Arc<Self>,
        client: AsyncClient,
        mut events: EventLoop,
        shutdown: CancellationToken,
    ) {
        let mut backoff = twinflash_mqtt::reconnect_backoff(self.reconnect_max);
        let mut connected = false;
        let mut ledger = Ledger::new(self.report_budget, self.retry);
        let mut counter: u64 = 0;
        let mut sweep = self.anti_entropy.map(|p| Instant::now() + jittered(p));
        loop {
            let now = Instant::now();
            if let (Some(at), Some(period)) = (sweep, self.anti_entropy)
                && at <= now
            {
                self.owe_gets();
                sweep = Some(now + jittered(period));
            }
            self.take_answers(&mut ledger);
            self.retry_overdue(&mut ledger, now);
            self.take_wanted_gets();
            let due = if connected && self.subscribed.load(std::sync::atomic::Ordering::Acquire) {
                let owed = self.send_owed(&client, &mut ledger, &mut counter, now);
                earliest(earliest(owed, ledger.next_due()), sweep)
            } else {
                sweep
            };
            let ev = tokio::select! {
                ev = events.poll() => ev,
                () = self.reports.changed(), if connected => continue,
                () = self.gets_changed.notified(), if connected => continue,
                () = self.answers_changed.notified() => continue,
                () = sleep_until(due), if due.is_some() => continue,
                () = shutdown.cancelled() => break,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = twinflash_mqtt::reconnect_backoff(self.reconnect_max);
                    connected = true;
                    ledger.reset(Instant::now());
                    if self.ack == Acknowledgement::Broker {
                        self.rereport_all();
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => ledger.written(pkid),
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    // With the broker as the acknowledgement a PUBACK answers the send; otherwise edgecore's
                    // result does, and the PUBACK only frees its packet id.
                    if let Some(sent) = ledger.puback(ack.pkid)
                        && self.ack == Acknowledgement::Broker
                    {
                        if let Sent::Report { device, seq } = &sent
                            && let Err(e) = self.reports.acked(device, *seq)
                        {
                            tracing::error!(code = %e.code(), error = %e, "cannot clear an acknowledged report");
                        }
                        self.answered(&mut ledger, &sent);
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

    /// The twin/get requests jobs asked for (a `twin` confirmation check) become owed.
    fn take_wanted_gets(&self) {
        let wanted = self.reports.take_wanted_gets();
        if !wanted.is_empty() {
            self.gets_owed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(wanted);
        }
    }

    /// Applies the answers the subscriber received.
    fn take_answers(&self, ledger: &mut Ledger) {
        let answers =
            std::mem::take(&mut *self.answers.lock().unwrap_or_else(PoisonError::into_inner));
        for sent in answers {
            self.answered(ledger, &sent);
        }
    }

    fn answered(&self, ledger: &mut Ledger, sent: &Sent) {
        ledger.answered(sent);
        if let Sent::Get { device } = sent {
            self.gets_owed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(device);
        }
        self.metrics.set_outbox_depth(self.reports.depth());
    }

    /// What went unanswered is sent again: a report as the device's newest state (older queued reports are
    /// dropped: nothing older is sent after something newer), a twin/get as it was.
    fn retry_overdue(&self, ledger: &mut Ledger, now: Instant) {
        for sent in ledger.overdue(now) {
            match &sent {
                // One missed answer is sent again as it was (the answer may just have been lost: every state stays
                // reported); from the second on edgecore is away, and a backlog is not replayed.
                Sent::Report { device, .. } if ledger.attempts(&sent) < 2 => {
                    self.metrics.retried("report");
                    tracing::debug!(device, "report unanswered; sending it again");
                }
                Sent::Report { device, .. } => {
                    self.metrics.retried("report");
                    tracing::debug!(
                        device,
                        "report unanswered again; sending only the newest state"
                    );
                    if let Err(e) = self.reports.collapse(device) {
                        tracing::error!(code = %e.code(), error = %e, "cannot update the outbox");
                    }
                }
                Sent::Get { device } => {
                    self.metrics.retried("twin-get");
                    tracing::debug!(device, "twin/get unanswered; asking again");
                }
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
            if let Err(later) = ledger.may_report(&device, now, churning) {
                due = earliest(due, later);
                continue;
            }
            let Ok(id) = mqtt_schema::DeviceId::parse(&device, self.layout) else {
                continue;
            };
            let payload = to_go_json(&mqtt_schema::actual_update(
                BaseMessage::new(self.report_id(pending.seq), now_ms()),
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
                self.get_id(*counter),
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

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `period` less up to 10 %, so the agents of a fleet do not ask edgecore in step.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(rand::random_range(0.9..=1.0))
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
    ledger.handed(tag, now, rand::random_range(0.5..=1.0));
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
