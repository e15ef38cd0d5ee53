//! [`MqttKubeEdge`]: KubeEdge as an MQTT-mode scenario sees it (edgecore's twins over its broker), real or
//! stand-in, behind one facade:
//! - **stand-in**: mosquitto and the edgecore stand-in ([`Edgecore`]); with `cloud`, also the harness's API
//!   server ([`FakeApi`]) with cloudcore's upstream ([`Cloudcore`]: edgecore's syncs into DeviceStatus) and its
//!   membership update (a Device written through the facade becomes known to edgecore);
//! - **real** ([`RealKubeEdge`]): the user's edgecore and cloudcore (always both: edgecore needs cloudcore to learn
//!   its Devices), edgecore's external broker being the harness's mosquitto.
//!
//! Judged by what edgecore STORES ([`MqttKubeEdge::actual`]: the stand-in's store or the real `device_twin` table)
//! and by DeviceStatus. A scenario that needs a stand-in-only knob (message counters, its log of messages, a cut
//! cloud link that is not an outage) starts with [`MqttKubeEdge::standin`] and says so.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mqtt_schema::TopicLayout;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use twinflash_harness::{FakeApi, Mosquitto};

use crate::kubeedge_backend::{Backend, KubeEdgeMode, split_id};
use crate::real::{Cluster, DEVICE, DEVICE_MODEL, DbTwin, RealEnv, RealKubeEdge};
use crate::{Cloudcore, Edgecore, EdgecoreOptions, publish_expected};

/// The DeviceModel of MQTT-mode Devices (the three firmware properties; protocol `none`, which no mapper serves).
/// cloudcore v1.23.1 dies on a Device without `deviceModelRef` (a nil pointer in `isExistModel`,
/// cloud/pkg/devicecontroller/controller/downstream.go:236, seen in real mode), so every Device names one.
pub const MQTT_MODEL: &str = "twinflash-mqtt";

/// [`MQTT_MODEL`] in `namespace`.
pub fn mqtt_device_model(namespace: &str) -> Value {
    let mut m = crate::device_model(namespace);
    m["metadata"] = json!({"name": MQTT_MODEL, "namespace": namespace});
    m["spec"]["protocol"] = json!("none");
    m
}

/// KubeEdge for an MQTT-mode scenario (see the module's documentation).
pub struct MqttKubeEdge {
    backend: Backend<Box<StandIn>>,
}

impl std::fmt::Debug for MqttKubeEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttKubeEdge")
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

struct StandIn {
    mqtt: Mosquitto,
    edgecore: Edgecore,
    cloud: Option<StandInCloud>,
}

struct StandInCloud {
    api: FakeApi,
    kubeconfig: PathBuf,
    cluster: Cluster,
    upstream: JoinHandle<()>,
}

impl Drop for StandInCloud {
    fn drop(&mut self) {
        self.upstream.abort();
    }
}

/// The `device_twin`-style id `<namespace>/<name>` of a Device object.
fn id_of(device: &Value) -> String {
    format!(
        "{}/{}",
        device["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default"),
        device["metadata"]["name"].as_str().unwrap_or_default()
    )
}

impl MqttKubeEdge {
    /// Real KubeEdge when the environment names it ([`RealEnv::from_env`]), the stand-ins otherwise (with the
    /// API server and cloudcore's upstream when `cloud`); says which on stderr. The stand-in's store lives in `dir`.
    pub async fn start(dir: &Path, cloud: bool) -> MqttKubeEdge {
        crate::init();
        match RealEnv::announce("this MQTT-mode scenario") {
            Some(env) => MqttKubeEdge {
                backend: Backend::Real(Box::new(RealKubeEdge::start(env).await)),
            },
            None => MqttKubeEdge::standin_with(dir, cloud).await,
        }
    }

    /// The stand-ins, whatever the environment says: for a scenario that needs their knobs (it says so on stderr).
    pub async fn standin(dir: &Path, cloud: bool) -> MqttKubeEdge {
        if RealEnv::from_env().is_some() {
            eprintln!(
                "STAND-IN KubeEdge: this scenario needs the stand-ins' knobs; it runs against them in real mode too"
            );
        }
        MqttKubeEdge::standin_with(dir, cloud).await
    }

    async fn standin_with(dir: &Path, cloud: bool) -> MqttKubeEdge {
        crate::init();
        std::fs::create_dir_all(dir).unwrap();
        let mqtt = Mosquitto::start().unwrap();
        let edgecore =
            Edgecore::start(EdgecoreOptions::new(mqtt.port(), dir.join("edgecore.json"))).await;
        let cloud = if cloud {
            let api = FakeApi::start().unwrap();
            let kubeconfig = api.kubeconfig(dir).unwrap();
            let cluster = Cluster::connect(&kubeconfig).await.unwrap();
            let upstream = Cloudcore::new(&api).follow(&edgecore);
            Some(StandInCloud {
                api,
                kubeconfig,
                cluster,
                upstream,
            })
        } else {
            None
        };
        MqttKubeEdge {
            backend: Backend::StandIn(Box::new(StandIn {
                mqtt,
                edgecore,
                cloud,
            })),
        }
    }

    /// The broker edgecore uses (the agent's and twinflash-cloud's broker).
    pub fn mqtt(&self) -> &Mosquitto {
        match &self.backend {
            Backend::StandIn(s) => &s.mqtt,
            Backend::Real(r) => r.mqtt(),
        }
    }

    /// The broker, to restart it.
    pub fn mqtt_mut(&mut self) -> &mut Mosquitto {
        match &mut self.backend {
            Backend::StandIn(s) => &mut s.mqtt,
            Backend::Real(r) => r.mqtt_mut(),
        }
    }

    /// The API server (stand-in: only when started with `cloud`).
    pub fn cluster(&self) -> Option<&Cluster> {
        match &self.backend {
            Backend::StandIn(s) => s.cloud.as_ref().map(|c| &c.cluster),
            Backend::Real(r) => Some(r.cluster()),
        }
    }

    /// A kubeconfig of the API server (stand-in: only when started with `cloud`).
    pub fn kubeconfig(&self) -> Option<PathBuf> {
        match &self.backend {
            Backend::StandIn(s) => s.cloud.as_ref().map(|c| c.kubeconfig.clone()),
            Backend::Real(r) => Some(r.kubeconfig().to_owned()),
        }
    }

    /// The edgecore stand-in (stand-in mode only).
    pub fn standin_edgecore(&self) -> Option<&Edgecore> {
        self.backend.standin().map(|s| &s.edgecore)
    }

    /// The stand-in's API server (stand-in mode with `cloud` only).
    pub fn standin_api(&self) -> Option<&FakeApi> {
        self.backend.standin()?.cloud.as_ref().map(|c| &c.api)
    }

    /// Writes Device `device` through the API server as an operator does (labelled [`crate::real::LABEL`]), and
    /// returns once edgecore knows the device (cloudcore's membership update). Stand-in without `cloud`: the
    /// membership update only.
    pub async fn apply_device(&self, device: &Value) {
        let id = id_of(device);
        let mut device = device.clone();
        RealKubeEdge::mark(&mut device);
        let device = &device;
        match &self.backend {
            Backend::StandIn(s) => {
                if let Some(c) = &s.cloud {
                    c.cluster.put(&DEVICE, device).await;
                }
                let props: Vec<&str> = device["spec"]["properties"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                if s.edgecore.twin(&id).is_none() {
                    s.edgecore.add_device(&id, &props);
                }
            }
            Backend::Real(r) => {
                let mut device = device.clone();
                RealKubeEdge::mark(&mut device);
                if device["spec"]["deviceModelRef"]["name"] == MQTT_MODEL {
                    let ns = device["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("default");
                    r.cluster().put(&DEVICE_MODEL, &mqtt_device_model(ns)).await;
                }
                r.cluster().put(&DEVICE, &device).await;
                let t0 = Instant::now();
                while !r.devices().contains_key(&id) {
                    assert!(
                        t0.elapsed() < crate::WAIT,
                        "edgecore never learnt Device {id}\n{}",
                        r.dump()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// A Device `id` (`<namespace>/<name>`) on this node of model [`MQTT_MODEL`] declaring `twins` and nothing
    /// else, through [`MqttKubeEdge::apply_device`].
    pub async fn declare(&self, id: &str, twins: &[&str]) {
        let (ns, name) = split_id(id);
        self.apply_device(&json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"nodeName": self.node(), "deviceModelRef": {"name": MQTT_MODEL}, "properties": twins.iter().map(|t| json!({"name": t})).collect::<Vec<_>>()},
        }))
        .await;
    }

    /// The cloud sets `twin`'s expected value over edgecore's broker (what twinflash-cloud does in mode edgecore).
    pub async fn set_expected(&self, id: &str, twin: &str, value: &str) {
        match &self.backend {
            Backend::StandIn(s) => {
                s.edgecore.set_expected(id, twin, value).await;
            }
            Backend::Real(r) => {
                let event_id = format!("testkit-{}-{}", r.run_id(), crate::real::fresh_id());
                publish_expected(
                    "127.0.0.1",
                    r.mqtt().port(),
                    TopicLayout::Namespaced,
                    id,
                    twin,
                    value,
                    &event_id,
                )
                .await;
            }
        }
    }

    /// The actual value edgecore stores for `twin` of device `id`.
    pub fn actual(&self, id: &str, twin: &str) -> Option<String> {
        self.stored(id, twin)?.actual
    }

    /// The expected value edgecore stores for `twin` of device `id`.
    pub fn expected(&self, id: &str, twin: &str) -> Option<String> {
        self.stored(id, twin)?.expected
    }

    fn stored(&self, id: &str, twin: &str) -> Option<DbTwin> {
        match &self.backend {
            Backend::StandIn(s) => Some(DbTwin {
                expected: s.edgecore.expected(id, twin),
                actual: s.edgecore.actual(id, twin),
            }),
            Backend::Real(r) => {
                let (ns, name) = split_id(id);
                r.twins(ns, name).remove(twin)
            }
        }
    }

    /// Waits until edgecore stores `value` as `twin`'s actual value; panics with [`MqttKubeEdge::dump`] after
    /// `within`.
    pub async fn wait_actual(&self, id: &str, twin: &str, value: &str, within: Duration) {
        let t0 = Instant::now();
        while self.actual(id, twin).as_deref() != Some(value) {
            assert!(
                t0.elapsed() < within,
                "[{}] after {within:?} edgecore does not store {id} {twin} = {value:?}\n{}",
                self.mode(),
                self.dump()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many times edgecore has subscribed to its topics so far (once per connection to the broker).
    pub fn subscriptions(&self) -> u64 {
        match &self.backend {
            Backend::StandIn(s) => s.edgecore.counters().subscriptions,
            Backend::Real(r) => r
                .edgecore_log()
                .matches("subscribe topic to $hw/events/device/+/+/twin/+")
                .count() as u64,
        }
    }

    /// Waits until edgecore has subscribed `n` times in all (n - 1 reconnects).
    pub async fn wait_subscribed(&self, n: u64) {
        crate::wait_until(
            || self.subscriptions() >= n,
            || format!("edgecore subscribed {n} times\n{}", self.dump()),
        )
        .await;
    }

    /// Stops edgecore abruptly (its store stays).
    pub fn stop_edgecore(&mut self) {
        match &self.backend {
            Backend::StandIn(s) => s.edgecore.stop(),
            Backend::Real(r) => r.stop_edgecore(),
        }
    }

    /// Starts edgecore again on its store (stand-in: a new one on the same store file, followed by cloudcore's
    /// upstream again).
    pub async fn start_edgecore(&mut self) {
        match &mut self.backend {
            Backend::StandIn(s) => {
                let opts = s.edgecore.options().clone();
                s.edgecore = Edgecore::start(opts).await;
                if let Some(c) = &mut s.cloud {
                    c.upstream.abort();
                    c.upstream = Cloudcore::new(&c.api).follow(&s.edgecore);
                }
            }
            Backend::Real(r) => r.start_edgecore().await,
        }
    }

    /// A cloudcore outage begins: edgecore's syncs are dropped (real: cloudcore SIGKILLed).
    pub async fn stop_cloudcore(&self) {
        match &self.backend {
            Backend::StandIn(s) => s.edgecore.set_cloud_link(false),
            Backend::Real(r) => r.stop_cloudcore(),
        }
    }

    /// The outage ends.
    pub async fn start_cloudcore(&self) {
        match &self.backend {
            Backend::StandIn(s) => s.edgecore.set_cloud_link(true),
            Backend::Real(r) => r.start_cloudcore().await,
        }
    }

    /// What edgecore stores and logged, for a failure message.
    pub fn dump(&self) -> String {
        match &self.backend {
            Backend::StandIn(s) => s.edgecore.dump(),
            Backend::Real(r) => r.dump(),
        }
    }
}

impl KubeEdgeMode for MqttKubeEdge {
    fn real(&self) -> Option<&RealKubeEdge> {
        self.backend.real()
    }
}
