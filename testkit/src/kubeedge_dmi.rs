//! [`DmiKubeEdge`]: KubeEdge as a DMI scenario sees it, real or stand-in, behind one facade, so that the SAME
//! scenario runs against both:
//! - **stand-in** (CI, and whenever `EDGECORE`/`CLOUDCORE` are unset): the DMI edgecore stand-in
//!   ([`DmiEdgecore`]), the harness's API server ([`FakeApi`]), and cloudcore played by two small loops: its
//!   downstream (the Devices and DeviceModels of the API server handed to edgecore as cloudcore sends them,
//!   [`DmiEdgecore::apply_device`]) and its upstream ([`Cloudcore`]: edgecore's twin syncs written into
//!   DeviceStatus);
//! - **real** ([`RealKubeEdge`]): the user's edgecore and cloudcore on the API server of `KUBECONFIG`.
//!
//! A scenario writes only through the API server ([`DmiKubeEdge::apply`], [`DmiKubeEdge::edit_device`]: what an
//! operator does with kubectl) and judges only by what KubeEdge holds: edgecore's stored twins
//! ([`DmiKubeEdge::twins`]: the stand-in's store, or the real `device_twin` table) and DeviceStatus
//! ([`DmiKubeEdge::reported`]).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use twinflash_harness::FakeApi;

use crate::kubeedge_backend::{Backend, KubeEdgeMode, STANDIN_NODE};
use crate::real::{
    Cluster, DEVICE, DEVICE_MODEL, DEVICE_STATUS, DbTwin, Kind, RealEnv, RealKubeEdge,
};
use crate::{Cloudcore, DmiEdgecore};

/// KubeEdge for a DMI scenario (see the module's documentation).
pub struct DmiKubeEdge {
    backend: Backend<StandIn>,
    cluster: Cluster,
}

impl std::fmt::Debug for DmiKubeEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmiKubeEdge")
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

struct StandIn {
    edgecore: Arc<DmiEdgecore>,
    api: Arc<FakeApi>,
    kubeconfig: PathBuf,
    /// cloudcore runs (its downstream hands changes to edgecore).
    cloud_up: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// cloudcore's downstream, stand-in: every 50 ms, the DeviceModels and the Devices of [`STANDIN_NODE`] that are
/// new or changed since it last looked are handed to edgecore (models first), deleted ones are deleted. While
/// cloudcore is down nothing moves; when it comes back, every object is handed over again (its informers list them
/// all at start), which edgecore passes to the mapper only where the spec changed.
async fn downstream(api: Arc<FakeApi>, edgecore: Arc<DmiEdgecore>, up: Arc<AtomicBool>) {
    let mut seen: BTreeMap<(String, String, String), String> = BTreeMap::new();
    let mut was_up = true;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let is_up = up.load(Ordering::SeqCst);
        if !is_up {
            was_up = false;
            continue;
        }
        if !was_up {
            seen.clear();
            was_up = true;
        }
        let key = |k: &str, o: &Value| {
            (
                k.to_owned(),
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        };
        let rv = |o: &Value| {
            o["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let models = api.list(
            DEVICE_MODEL.group,
            DEVICE_MODEL.version,
            DEVICE_MODEL.plural,
            None,
        );
        let devices: Vec<Value> = api
            .list(DEVICE.group, DEVICE.version, DEVICE.plural, None)
            .into_iter()
            .filter(|d| d["spec"]["nodeName"] == STANDIN_NODE)
            .collect();
        let mut present = std::collections::BTreeSet::new();
        for (k, list) in [("model", &models), ("device", &devices)] {
            for o in list {
                let id = key(k, o);
                present.insert(id.clone());
                if seen.get(&id) == Some(&rv(o)) {
                    continue;
                }
                seen.insert(id, rv(o));
                if k == "model" {
                    edgecore.apply_model(o);
                } else {
                    edgecore.apply_device(o);
                }
            }
        }
        let gone: Vec<_> = seen
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for id in gone {
            seen.remove(&id);
            let (k, ns, name) = id;
            if k == "model" {
                edgecore.delete_model(&ns, &name);
            } else {
                edgecore.delete_device(&ns, &name);
            }
        }
    }
}

fn kind_of(obj: &Value) -> &'static Kind {
    match obj["kind"].as_str() {
        Some("Device") => &DEVICE,
        Some("DeviceModel") => &DEVICE_MODEL,
        Some("DeviceStatus") => &DEVICE_STATUS,
        k => panic!("DmiKubeEdge::apply takes Devices and DeviceModels, not {k:?}"),
    }
}

fn stored(t: &crate::StoredTwin) -> DbTwin {
    let value = |v: &Option<mqtt_schema::TwinValue>| {
        v.as_ref()
            .and_then(|v| v.value.clone())
            .filter(|v| !v.is_empty())
    };
    DbTwin {
        expected: value(&t.expected),
        actual: value(&t.actual),
    }
}

impl DmiKubeEdge {
    /// Real KubeEdge when the environment names it ([`RealEnv::from_env`]), the stand-ins otherwise (with
    /// edgecore's stand-in keeping its files under `dir`); says which on stderr.
    pub async fn start(dir: &Path) -> DmiKubeEdge {
        crate::init();
        match RealEnv::announce("this DMI scenario") {
            Some(env) => {
                let real = RealKubeEdge::start(env).await;
                let cluster = real.cluster().clone();
                DmiKubeEdge {
                    backend: Backend::Real(Box::new(real)),
                    cluster,
                }
            }
            None => {
                std::fs::create_dir_all(dir).unwrap();
                let api = Arc::new(FakeApi::start().unwrap());
                let kubeconfig = api.kubeconfig(dir).unwrap();
                let cluster = Cluster::connect(&kubeconfig).await.unwrap();
                let edgecore =
                    Arc::new(DmiEdgecore::start_in(&dir.join("edgecore")).await.unwrap());
                let cloud_up = Arc::new(AtomicBool::new(true));
                let upstream = Cloudcore::new(&api).follow_syncs(edgecore.syncs());
                let down =
                    tokio::spawn(downstream(api.clone(), edgecore.clone(), cloud_up.clone()));
                DmiKubeEdge {
                    backend: Backend::StandIn(StandIn {
                        edgecore,
                        api,
                        kubeconfig,
                        cloud_up,
                        tasks: vec![upstream, down],
                    }),
                    cluster,
                }
            }
        }
    }

    /// edgecore's DMI socket (the agent's `[kubeedge] dmi_socket`).
    pub fn socket(&self) -> PathBuf {
        match &self.backend {
            Backend::StandIn(s) => s.edgecore.socket(),
            Backend::Real(r) => r.dmi_socket(),
        }
    }

    /// A kubeconfig of the API server (for twinflash-cloud).
    pub fn kubeconfig(&self) -> PathBuf {
        match &self.backend {
            Backend::StandIn(s) => s.kubeconfig.clone(),
            Backend::Real(r) => r.kubeconfig().to_owned(),
        }
    }

    /// The API server.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The stand-in edgecore (stand-in mode only: its counters and log).
    pub fn standin(&self) -> Option<&DmiEdgecore> {
        self.backend.standin().map(|s| &*s.edgecore)
    }

    /// Creates or replaces a Device or DeviceModel through the API server, as `kubectl apply` of the whole object
    /// (a Device is labelled for the sweep of real mode).
    pub async fn apply(&self, obj: &Value) -> Value {
        let mut obj = obj.clone();
        if obj["kind"] == "Device" {
            RealKubeEdge::mark(&mut obj);
        }
        self.cluster.put(kind_of(&obj), &obj).await
    }

    /// `kubectl edit` of Device `namespace/name`: `edit` changes the object as read, and its `spec` goes back as a
    /// JSON merge patch (lists whole; a key set to null is removed).
    pub async fn edit_device(&self, namespace: &str, name: &str, edit: impl FnOnce(&mut Value)) {
        let mut d = self
            .cluster
            .get(&DEVICE, namespace, name)
            .await
            .unwrap_or_else(|| panic!("no Device {namespace}/{name}"));
        edit(&mut d);
        self.cluster
            .merge_patch(&DEVICE, namespace, name, &json!({"spec": d["spec"]}))
            .await
            .unwrap_or_else(|e| panic!("editing Device {namespace}/{name}: {e}"));
    }

    /// `kubectl edit` of the `firmware` property's desired value.
    pub async fn set_firmware(&self, namespace: &str, name: &str, reference: &str) {
        self.edit_device(namespace, name, |d| {
            for p in d["spec"]["properties"].as_array_mut().into_iter().flatten() {
                if p["name"] == "firmware" {
                    p["desired"]["value"] = json!(reference);
                }
            }
        })
        .await;
    }

    /// Deletes Device `namespace/name` (and its DeviceStatus, which no garbage collector may remove).
    pub async fn delete_device(&self, namespace: &str, name: &str) {
        let _ = self.cluster.delete(&DEVICE, namespace, name).await;
        let _ = self.cluster.delete(&DEVICE_STATUS, namespace, name).await;
    }

    /// The twins edgecore stores for `namespace/name`, by twin name (an empty value is `None`).
    pub fn twins(&self, namespace: &str, name: &str) -> BTreeMap<String, DbTwin> {
        match &self.backend {
            Backend::StandIn(s) => s
                .edgecore
                .twin(namespace, name)
                .iter()
                .map(|(k, t)| (k.clone(), stored(t)))
                .collect(),
            Backend::Real(r) => r.twins(namespace, name),
        }
    }

    /// The actual value edgecore stores for `twin`.
    pub fn actual(&self, namespace: &str, name: &str, twin: &str) -> Option<String> {
        self.twins(namespace, name).remove(twin)?.actual
    }

    /// The expected value edgecore stores for `twin` (the mapper's last observedDesired).
    pub fn expected(&self, namespace: &str, name: &str, twin: &str) -> Option<String> {
        self.twins(namespace, name).remove(twin)?.expected
    }

    /// DeviceStatus `namespace/name`, if it exists.
    pub async fn status(&self, namespace: &str, name: &str) -> Option<Value> {
        self.cluster.get(&DEVICE_STATUS, namespace, name).await
    }

    /// What DeviceStatus reports for `twin`.
    pub async fn reported(&self, namespace: &str, name: &str, twin: &str) -> Option<String> {
        crate::real::reported(&self.status(namespace, name).await?, twin)
    }

    /// Stops edgecore abruptly (real: SIGKILL).
    pub async fn stop_edgecore(&self) {
        match &self.backend {
            Backend::StandIn(s) => s.edgecore.stop(),
            Backend::Real(r) => r.stop_edgecore(),
        }
    }

    /// Starts edgecore again (real: returns once it serves DMI and, if cloudcore runs, is connected).
    pub async fn start_edgecore(&self) {
        match &self.backend {
            Backend::StandIn(s) => s.edgecore.start().await.unwrap(),
            Backend::Real(r) => r.start_edgecore().await,
        }
    }

    /// Whether edgecore runs (false after a stop or a crash).
    pub fn edgecore_running(&self) -> bool {
        match &self.backend {
            Backend::StandIn(s) => s.edgecore.is_running(),
            Backend::Real(r) => r.edgecore_running(),
        }
    }

    /// A cloudcore outage begins: edgecore's cloud link is down (its syncs are dropped), and no change of the API
    /// server reaches the edge (real: cloudcore SIGKILLed).
    pub async fn stop_cloudcore(&self) {
        match &self.backend {
            Backend::StandIn(s) => {
                s.cloud_up.store(false, Ordering::SeqCst);
                s.edgecore.cut_cloud_link();
            }
            Backend::Real(r) => r.stop_cloudcore(),
        }
    }

    /// The outage ends (real: cloudcore started again; edgecore reconnects on its own schedule).
    pub async fn start_cloudcore(&self) {
        match &self.backend {
            Backend::StandIn(s) => {
                s.edgecore.restore_cloud_link();
                s.cloud_up.store(true, Ordering::SeqCst);
            }
            Backend::Real(r) => r.start_cloudcore().await,
        }
    }

    /// What KubeEdge holds, for a failure message: the stand-in's store and log, or the real `device_twin` rows
    /// and log tails.
    pub fn dump(&self) -> String {
        match &self.backend {
            Backend::StandIn(s) => format!(
                "{}\nDeviceStatus objects: {}",
                s.edgecore.dump(),
                serde_json::to_string(&s.api.list(
                    DEVICE_STATUS.group,
                    DEVICE_STATUS.version,
                    DEVICE_STATUS.plural,
                    None
                ))
                .unwrap_or_default()
            ),
            Backend::Real(r) => r.dump(),
        }
    }
}

impl KubeEdgeMode for DmiKubeEdge {
    fn real(&self) -> Option<&RealKubeEdge> {
        self.backend.real()
    }
}
