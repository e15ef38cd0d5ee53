//! The real [`IntentSink`]: one rumqttc connection (QoS 1, TCP_NODELAY, optional TLS, jittered
//! reconnect backoff). It keeps the latest intent per device and republishes all of them after
//! every CONNACK; in `direct` mode it also runs the [`Relay`] (deltas, `twin/get`, reports).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use mqtt_schema::{
    BaseMessage, DeviceTopicKind, ErrorCode, FirmwareRef, Topic, TopicLayout, TwinNames, to_go_json,
};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{self, Mode, MqttConfig};
use crate::direct::{Action, Relay, device_id};
use crate::seams::{IntentSink, SinkError, StatusError, StatusWriter};
use mqtt_schema::DeviceId;

/// The MQTT connection cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// `mqtt.url` cannot be used.
    #[error("mqtt.url {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The URL, the TLS settings or the password file cannot be used.
    #[error(transparent)]
    Connection(twinflash_mqtt::MqttError),
}

impl MqttError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Internal
    }
}

/// The topic layout of the configuration.
pub fn layout(cfg: &MqttConfig) -> TopicLayout {
    cfg.topic_layout
}

/// The rumqttc options for `cfg` (clean session: every intent is republished at each CONNACK). The connection
/// setup itself (URL, TLS, mutual TLS, the password file) is the shared `twinflash-mqtt`'s.
pub fn mqtt_options(cfg: &MqttConfig) -> Result<MqttOptions, MqttError> {
    let client_id = cfg.client_id_or(config::DEFAULT_CLIENT_ID);
    twinflash_mqtt::options(cfg, client_id, false).map_err(MqttError::Connection)
}

/// A rumqttc client with Nagle's algorithm off and a bounded connect time.
pub fn client(opts: MqttOptions) -> (AsyncClient, EventLoop) {
    twinflash_mqtt::client(opts)
}

/// The `edgecore` intent: topic `.../twin/update` and the DeviceTwinUpdate bytes with `expected`.
pub fn intent_message(
    key: &DeviceId,
    reference: &str,
    layout: TopicLayout,
    names: &TwinNames,
    base: BaseMessage,
) -> Result<(String, Vec<u8>), SinkError> {
    let encode = |detail: String| SinkError::Encode {
        device: key.to_string(),
        detail,
    };
    let id = device_id(key, layout).map_err(|e| encode(e.to_string()))?;
    let reference = FirmwareRef::parse(reference).map_err(|e| encode(e.to_string()))?;
    let update = mqtt_schema::intent(base, names, &reference);
    Ok((
        Topic::device(&id, DeviceTopicKind::TwinUpdate).to_string(),
        to_go_json(&update),
    ))
}

enum Book {
    Edgecore(BTreeMap<DeviceId, String>),
    Direct(Relay),
}

struct Shared {
    client: AsyncClient,
    layout: TopicLayout,
    names: TwinNames,
    connected: AtomicBool,
    book: Mutex<Book>,
    seq: std::sync::atomic::AtomicU64,
    reports: Option<mpsc::UnboundedSender<Action>>,
}

impl Shared {
    fn base(&self) -> BaseMessage {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        BaseMessage::new(format!("twinflash-cloud-{now}-{n}"), now)
    }

    /// Queues the relay's actions (publishes in order; status writes to the writer task).
    fn run(&self, actions: Vec<Action>) -> Result<(), rumqttc::ClientError> {
        let mut result = Ok(());
        for a in actions {
            match a {
                Action::Publish {
                    topic,
                    payload,
                    retain,
                } => {
                    if let Err(e) =
                        self.client
                            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
                    {
                        result = Err(e);
                    }
                }
                w @ Action::WriteStatus { .. } => match &self.reports {
                    Some(tx) => {
                        let _ = tx.send(w);
                    }
                    // No status writer (tests of the relay alone): nothing to wait for.
                    None => {
                        if let Action::WriteStatus { ack: Some(ack), .. } = w {
                            let _ = self.client.try_publish(
                                ack.topic,
                                QoS::AtLeastOnce,
                                false,
                                ack.payload,
                            );
                        }
                    }
                },
            }
        }
        result
    }

    /// At every CONNACK (`subscribe`) and every resync: republish every pending intent.
    fn republish(&self, subscribe: bool) {
        let Ok(mut book) = self.book.lock() else {
            return;
        };
        match &mut *book {
            Book::Edgecore(intents) => {
                for (key, reference) in intents.iter() {
                    match intent_message(key, reference, self.layout, &self.names, self.base()) {
                        Ok((topic, payload)) => {
                            let _ =
                                self.client
                                    .try_publish(topic, QoS::AtLeastOnce, false, payload);
                        }
                        Err(e) => warn!(device = %key, error = %e, "intent not republished"),
                    }
                }
                info!(
                    intents = intents.len(),
                    subscribe, "pending intents republished"
                );
            }
            Book::Direct(relay) => {
                if subscribe {
                    for filter in relay.filters() {
                        let _ = self.client.try_subscribe(filter, QoS::AtLeastOnce);
                    }
                }
                let actions = relay.on_connect(now_ms());
                info!(
                    deltas = actions.len(),
                    subscribe, "pending retained deltas republished"
                );
                let _ = self.run(actions);
            }
        }
    }

    fn on_publish(&self, topic: &str, payload: &[u8]) {
        let Ok(mut book) = self.book.lock() else {
            return;
        };
        if let Book::Direct(relay) = &mut *book {
            let actions = relay.on_message(topic, payload, now_ms());
            if actions.is_empty() {
                debug!(topic, "message ignored (unreadable or nothing to do)");
            }
            let _ = self.run(actions);
        }
    }
}

/// The MQTT intent sink (both modes). Cheap to clone.
#[derive(Clone)]
pub struct MqttSink {
    shared: Arc<Shared>,
}

impl MqttSink {
    /// Connects to the broker of `cfg` and spawns the connection task (and, in `direct` mode, the
    /// status writer task fed by the agents' reports). Pending intents are republished after
    /// every CONNACK and every `resync`. Both tasks end when `cancel` fires.
    pub fn start(
        cfg: &MqttConfig,
        mode: Mode,
        resync: Duration,
        status: Option<Arc<dyn StatusWriter>>,
        cancel: CancellationToken,
    ) -> Result<(MqttSink, JoinHandle<()>), MqttError> {
        let (client, events) = client(mqtt_options(cfg)?);
        let layout = layout(cfg);
        let names = TwinNames::default();
        let (reports, writer) = match (mode, status) {
            (Mode::Direct, Some(w)) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (
                    Some(tx),
                    Some(tokio::spawn(write_reports(rx, w, client.clone()))),
                )
            }
            _ => (None, None),
        };
        let book = match mode {
            // dmi mode starts no MqttSink (main.rs); an edgecore book is the harmless answer if one is made anyway.
            Mode::Edgecore | Mode::Dmi => Book::Edgecore(BTreeMap::new()),
            Mode::Direct => Book::Direct(Relay::new(layout, names.clone())),
        };
        let shared = Arc::new(Shared {
            client,
            layout,
            names,
            connected: AtomicBool::new(false),
            book: Mutex::new(book),
            seq: std::sync::atomic::AtomicU64::new(0),
            reports,
        });
        let task = tokio::spawn(connection(
            shared.clone(),
            events,
            resync,
            cfg.reconnect_max(),
            cancel,
            writer,
        ));
        Ok((MqttSink { shared }, task))
    }

    /// Whether the broker connection is up.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    fn store_and_send(
        &self,
        key: &DeviceId,
        reference: &str,
        restore: bool,
    ) -> Result<(), SinkError> {
        let unreachable = |detail: String| SinkError::BrokerUnreachable {
            device: key.to_string(),
            detail,
        };
        let s = &self.shared;
        let mut book = s
            .book
            .lock()
            .map_err(|_| unreachable("sink state poisoned".to_owned()))?;
        let connected = s.connected.load(Ordering::Acquire);
        let sent = match &mut *book {
            Book::Edgecore(intents) => {
                // Encode first: a reference that cannot be encoded is never stored.
                let (topic, payload) =
                    intent_message(key, reference, s.layout, &s.names, s.base())?;
                if restore {
                    intents
                        .entry(key.clone())
                        .or_insert_with(|| reference.to_owned());
                    return Ok(());
                }
                intents.insert(key.clone(), reference.to_owned());
                s.client
                    .try_publish(topic, QoS::AtLeastOnce, false, payload)
                    .map_err(|e| unreachable(e.to_string()))
            }
            Book::Direct(relay) => {
                let encode = |e: mqtt_schema::TopicError| SinkError::Encode {
                    device: key.to_string(),
                    detail: e.to_string(),
                };
                let actions = if restore {
                    relay
                        .restore_intent(key, reference, now_ms())
                        .map_err(encode)?
                } else {
                    relay.set_intent(key, reference, now_ms()).map_err(encode)?
                };
                s.run(actions).map_err(|e| unreachable(e.to_string()))
            }
        };
        sent?;
        if connected {
            Ok(())
        } else {
            Err(unreachable(
                "not connected; the intent is kept and published at the next connection".into(),
            ))
        }
    }
}

impl IntentSink for MqttSink {
    fn publish_intent<'a>(
        &'a self,
        device: &'a DeviceId,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            // While connected, a failed hand-over means rumqttc's request channel is full (a burst of thousands of
            // intents): wait for the event loop to drain it instead of reporting a broker outage.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                match self.store_and_send(device, reference, false) {
                    Err(SinkError::BrokerUnreachable { .. })
                        if self.is_connected() && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    other => return other,
                }
            }
        })
    }

    fn restore_intent(&self, device: &DeviceId, reference: &str) {
        if let Err(e) = self.store_and_send(device, reference, true) {
            debug!(device = %device, error = %e, "intent restored while disconnected");
        }
    }

    fn delivered(&self, device: &DeviceId, reference: &str) {
        // edgecore stores `expected` in its database and keeps it across restarts: nothing left
        // to republish. The relay of `direct` mode is its own edgecore and keeps its book.
        if let Ok(mut book) = self.shared.book.lock()
            && let Book::Edgecore(intents) = &mut *book
            && intents.get(device).is_some_and(|r| r == reference)
        {
            intents.remove(device);
        }
    }
}

impl crate::anti_entropy::Nudger for MqttSink {
    /// A `twin/get` (golden d10's shape) on the device's topic, QoS 1, not retained: the agent answers any get that
    /// is not its own by reporting its state again, which edgecore syncs to the cloud. In `direct` mode the relay
    /// ignores it ([`crate::direct::OWN_EVENT_PREFIX`]).
    fn nudge<'a>(
        &'a self,
        device: &'a DeviceId,
        _cached: &'a crate::crd::Device,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(std::future::ready(self.publish_get(device, event_id)))
    }
}

impl MqttSink {
    /// The nudge's `twin/get`, queued without waiting (`try_publish`).
    fn publish_get(&self, device: &DeviceId, event_id: &str) -> Result<(), SinkError> {
        let s = &self.shared;
        let id = device_id(device, s.layout).map_err(|e| SinkError::Encode {
            device: device.to_string(),
            detail: e.to_string(),
        })?;
        let topic = Topic::device(&id, DeviceTopicKind::TwinGet).to_string();
        let payload = to_go_json(&mqtt_schema::twin_get_request(event_id, now_ms()));
        s.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|e| SinkError::BrokerUnreachable {
                device: device.to_string(),
                detail: e.to_string(),
            })
    }
}

/// Largest inbound message the controller handles (the transport reads up to `twinflash_mqtt::MAX_INCOMING_PACKET`).
pub const MAX_MESSAGE: usize = twinflash_mqtt::DEFAULT_MAX_MESSAGE;

async fn connection(
    shared: Arc<Shared>,
    mut events: EventLoop,
    resync: Duration,
    reconnect_max: Duration,
    cancel: CancellationToken,
    writer: Option<JoinHandle<()>>,
) {
    // The status writer ends with this task, also when a leadership term aborts it (crate::leader::tasks).
    let _writer = writer.map(tokio_util::task::AbortOnDropHandle::new);
    let backoff = || twinflash_mqtt::reconnect_backoff(reconnect_max);
    let mut delays = backoff();
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + resync,
        resync.max(Duration::from_millis(10)),
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => break,
            _ = ticks.tick() => {
                if shared.connected.load(Ordering::Acquire) {
                    shared.republish(false);
                }
                continue;
            }
            e = events.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                shared.connected.store(true, Ordering::Release);
                delays = backoff();
                shared.republish(true);
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.payload.len() > MAX_MESSAGE => {
                // An agent's report or a get is a few KiB: anything this large is hostile or broken. Dropped unread;
                // the clean session acknowledges it, so it is never redelivered.
                let n = crate::metrics::MQTT_DROPPED_OVERSIZED.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() || n == 0 {
                    warn!(topic = %mqtt_schema::clip::clip(&p.topic), len = p.payload.len(), max = MAX_MESSAGE, dropped_so_far = n + 1, "dropping an MQTT message over the controller's limit");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => shared.on_publish(&p.topic, &p.payload),
            Ok(_) => {}
            Err(e) => {
                if shared.connected.swap(false, Ordering::AcqRel) {
                    warn!(error = %e, "MQTT connection lost");
                } else {
                    debug!(error = %e, "MQTT connect failed");
                }
                let delay = delays.next().unwrap_or(reconnect_max);
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    // Graceful: flush what is queued and say goodbye, within a bound.
    if shared.connected.load(Ordering::Acquire) {
        let _ = shared.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while events.poll().await.is_ok() {}
        })
        .await;
    }
    shared.connected.store(false, Ordering::Release);
}

/// Writes each report into the status, then acknowledges it with its `update/result`. A Device the API server does
/// not know is answered 404 (edgecore's answer for an unknown device); a write that keeps failing is not answered
/// at all, so the agent, which keeps the report until its result arrives, sends it again later.
async fn write_reports(
    mut rx: mpsc::UnboundedReceiver<Action>,
    writer: Arc<dyn StatusWriter>,
    client: AsyncClient,
) {
    while let Some(action) = rx.recv().await {
        let Action::WriteStatus {
            device,
            actual,
            timestamp_ms,
            ack,
        } = action
        else {
            continue;
        };
        let mut attempt = 0u32;
        let answer = loop {
            attempt += 1;
            match writer.write_actual(&device, &actual, timestamp_ms).await {
                Ok(()) => break ack.as_ref().map(|a| a.payload.clone()),
                Err(StatusError::NotFound { .. }) => {
                    debug!(device = %device, "report of a Device the API server does not know: 404");
                    break ack.as_ref().map(|a| a.not_found(now_ms()));
                }
                Err(e) if attempt < 3 => {
                    debug!(device = %device, error = %e, attempt, "status write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    warn!(device = %device, code = %e.code(), error = %e, "report not written into the status; not acknowledged (the agent retries)");
                    break None;
                }
            }
        };
        if let (Some(payload), Some(ack)) = (answer, ack)
            && let Err(e) = client
                .publish(ack.topic, QoS::AtLeastOnce, false, payload)
                .await
        {
            debug!(device = %device, error = %e, "update/result not queued (the agent retries)");
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
#[path = "mqtt_tests.rs"]
mod tests;
