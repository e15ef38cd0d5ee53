//! [`Cloud`]: an MQTT client in edgecore's place for the agent's tests that are not about KubeEdge's faults (those
//! run against the `Edgecore` stand-in). It records what the agent reports per device, acknowledges each report with a
//! result carrying its event id, answers `twin/get` with the whole twin as edgecore does, and publishes deltas
//! shaped as edgecore's.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_schema::gojson::decode;
use mqtt_schema::{
    BaseMessage, DeviceTopicKind, DeviceTwinUpdate, MsgTwin, Topic, TopicLayout, TwinValue,
    TypeMetadata, ValueMetadata, to_go_json,
};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use twinflash_harness::Mosquitto;

use crate::Agent;
use crate::observe::{Incoming, watch};

/// Everything the observer saw the agent report, per device: the latest actual value per twin, and the history of
/// `firmware-state` values.
#[derive(Default, Debug, Clone)]
pub struct Seen {
    /// What the cloud wants per device (answered on twin/get, as edgecore does).
    pub expected: BTreeMap<String, String>,
    pub actual: BTreeMap<String, BTreeMap<String, String>>,
    /// Every reported value per device and twin, in order.
    pub history: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    pub reports: usize,
    pub gets: usize,
    /// SUBACKs received: grows each time the observer is subscribed again after a reconnect.
    pub subacks: usize,
}

/// An MQTT client that plays edgecore's part in tests: it watches reports and get requests, and publishes deltas.
pub struct Cloud {
    pub client: AsyncClient,
    pub layout: TopicLayout,
    pub seen: Arc<Mutex<Seen>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Cloud {
    pub async fn connect(mqtt: &Mosquitto, id: &str) -> Cloud {
        Self::connect_with(
            MqttOptions::new(id, "127.0.0.1", mqtt.port()),
            TopicLayout::Namespaced,
        )
        .await
    }

    pub async fn connect_with(opts: MqttOptions, layout: TopicLayout) -> Cloud {
        let levels = if layout == TopicLayout::Namespaced {
            "+/+"
        } else {
            "+"
        };
        let filters = vec![
            format!("$hw/events/device/{levels}/twin/update"),
            format!("$hw/events/device/{levels}/twin/get"),
        ];
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let (client, task) = watch(opts, filters, move |c, incoming| {
            let p = match incoming {
                Incoming::SubAck => {
                    s.lock().unwrap().subacks += 1;
                    return;
                }
                Incoming::Publish(p) => p,
            };
            let Ok(topic) = Topic::parse(&p.topic, layout) else {
                return;
            };
            let Some((dev, kind)) = topic.device_kind() else {
                return;
            };
            let mut seen = s.lock().unwrap();
            match kind {
                DeviceTopicKind::TwinGet => {
                    seen.gets += 1;
                    // Answer as edgecore does: the whole twin, expected and actual.
                    let mut twin = mqtt_schema::TwinMap::new();
                    let expected = seen.expected.get(&dev.to_string()).cloned();
                    let actual = seen
                        .actual
                        .get(&dev.to_string())
                        .cloned()
                        .unwrap_or_default();
                    let mut names: Vec<String> = actual.keys().cloned().collect();
                    if !names.iter().any(|n| n == "firmware") {
                        names.push("firmware".to_owned());
                    }
                    for name in names {
                        twin.insert(
                            name.clone(),
                            Some(MsgTwin {
                                expected: expected
                                    .clone()
                                    .filter(|_| name == "firmware")
                                    .map(TwinValue::new),
                                actual: actual.get(&name).cloned().map(TwinValue::new),
                                optional: Some(false),
                                metadata: Some(TypeMetadata::new("string")),
                                ..MsgTwin::default()
                            }),
                        );
                    }
                    let event_id = decode::<mqtt_schema::TwinGetRequest>(&p.payload)
                        .map(|g| g.event_id)
                        .unwrap_or_default();
                    let result =
                        mqtt_schema::build_twin_get_result(BaseMessage::new(event_id, 1), &twin);
                    let topic = Topic::device(dev, DeviceTopicKind::TwinGetResult).to_string();
                    let _ = c.try_publish(topic, QoS::AtLeastOnce, false, to_go_json(&result));
                }
                DeviceTopicKind::TwinUpdate => {
                    let Ok(upd) = decode::<DeviceTwinUpdate>(&p.payload) else {
                        return;
                    };
                    seen.reports += 1;
                    // Acknowledged as edgecore does: a result carrying the update's event id.
                    let result = mqtt_schema::build_twin_get_result(
                        BaseMessage::new(upd.base.event_id.clone(), 1),
                        &upd.twin.clone().unwrap_or_default(),
                    );
                    let topic = Topic::device(dev, DeviceTopicKind::TwinUpdateResult).to_string();
                    let _ = c.try_publish(topic, QoS::AtLeastOnce, false, to_go_json(&result));
                    for (name, twin) in upd.twin.unwrap_or_default() {
                        let Some(value) = twin.and_then(|t| t.actual).and_then(|a| a.value) else {
                            continue;
                        };
                        seen.history
                            .entry(dev.to_string())
                            .or_default()
                            .entry(name.clone())
                            .or_default()
                            .push(value.clone());
                        seen.actual
                            .entry(dev.to_string())
                            .or_default()
                            .insert(name, value);
                    }
                }
                _ => {}
            }
        });
        Cloud {
            client,
            seen,
            layout,
            _task: task,
        }
    }

    /// Publishes a delta for `device` asking for `wanted`, exactly as edgecore's BuildDeviceTwinDelta shapes it.
    pub async fn delta(&self, device: &str, wanted: &str, actual: Option<&str>) {
        self.seen
            .lock()
            .unwrap()
            .expected
            .insert(device.to_owned(), wanted.to_owned());
        let mut twins = BTreeMap::new();
        twins.insert(
            "firmware".to_owned(),
            MsgTwin {
                expected: Some(TwinValue {
                    value: Some(wanted.to_owned()),
                    metadata: Some(ValueMetadata {
                        timestamp: 1_700_000_002_000,
                    }),
                }),
                actual: actual.map(|a| TwinValue {
                    value: Some(a.to_owned()),
                    metadata: Some(ValueMetadata {
                        timestamp: 1_700_000_001_000,
                    }),
                }),
                optional: Some(false),
                metadata: Some(TypeMetadata::new("string")),
                ..MsgTwin::default()
            },
        );
        let delta = mqtt_schema::build_device_twin_delta(
            BaseMessage::new("00000000-0000-4000-8000-000000000001", 1_700_000_000_000),
            &twins,
        )
        .expect("expected differs from actual");
        self.raw(device, DeviceTopicKind::TwinUpdateDelta, to_go_json(&delta))
            .await;
    }

    pub async fn raw(&self, device: &str, kind: DeviceTopicKind, payload: Vec<u8>) {
        let id = mqtt_schema::DeviceId::parse(device, self.layout).unwrap();
        self.client
            .publish(
                Topic::device(&id, kind).to_string(),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
    }

    pub fn subacks(&self) -> usize {
        self.seen.lock().unwrap().subacks
    }

    pub fn actual(&self, device: &str, twin: &str) -> Option<String> {
        self.seen
            .lock()
            .unwrap()
            .actual
            .get(device)?
            .get(twin)
            .cloned()
    }

    /// Every value `device` reported for `twin`, in order.
    pub fn history(&self, device: &str, twin: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .history
            .get(device)
            .and_then(|h| h.get(twin))
            .cloned()
            .unwrap_or_default()
    }

    /// Every `firmware-state` `device` reported, in order.
    pub fn states(&self, device: &str) -> Vec<String> {
        self.history(device, "firmware-state")
    }

    /// Waits until `device` reports `twin` = `value`.
    pub async fn wait_for(
        &self,
        device: &str,
        twin: &str,
        value: &str,
        within: Duration,
        agent: &Agent,
    ) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.actual(device, twin).as_deref() == Some(value) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{device} did not report {twin}={value} within {within:?}; it reported {:?}; states {:?}\n--- agent log ---\n{}",
            self.actual(device, twin),
            self.states(device),
            agent.log()
        );
    }

    /// Waits until the state history of `device` contains a value starting with `prefix`.
    pub async fn wait_state_prefix(
        &self,
        device: &str,
        prefix: &str,
        within: Duration,
        agent: &Agent,
    ) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.states(device).iter().any(|s| s.starts_with(prefix)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{device} never reported a state starting with {prefix:?}; states {:?}\n--- agent log ---\n{}",
            self.states(device),
            agent.log()
        );
    }
}
