//! A minimal in-memory Kubernetes API server for tests, hand-written (no maintained crate offers
//! one; kube's own tests use tower mocks). Plain HTTP/1.1 on a free loopback port, generic over
//! resources, serving what kube-rs `Api`, `watcher`/`Controller`, `Recorder` and kube-lease-manager send.
//!
//! Like a real cluster where twinflash depends on it:
//! - Each resource follows its definition ([`resources::builtin`]): KubeEdge's Device, DeviceModel
//!   and DeviceStatus have no status subresource (`.status` is written with the object, by a
//!   patch or replace of the object, and `.../status` answers 404), FirmwareRollout has one, Events
//!   and Leases have no status. With a status subresource, writes of the object keep `.status`,
//!   writes of `/status` change only `.status`, and create drops `.status`.
//! - Lists are `<Kind>List` with `apiVersion`, empty ones included; discovery (`/api`,
//!   `/api/v1`, `/apis`, `/apis/<group>`, `/apis/<group>/<version>`) lists the served resources.
//! - `metadata.generation` of a custom resource: 1 at create, +1 when a write changes anything outside
//!   `metadata` (`.status` included where it is no subresource, as for KubeEdge's CRDs); built-in types
//!   (Event, Lease, ConfigMap) have none (`ResourceInfo::custom`).
//! - Every request is recorded ([`RequestRecord`]) with its `User-Agent` and `fieldManager`.
//! - A write carrying a stale `metadata.resourceVersion` is a 409 Conflict; a merge patch without
//!   one applies unconditionally (what cloudcore relies on). A write that changes nothing gets no
//!   new resourceVersion and no event; a watch from a version older than the kept history
//!   ([`HISTORY`] writes) gets one `ERROR` event carrying a 410 `Expired` Status;
//!   `sendInitialEvents=true` ends the initial ADDED events with a BOOKMARK annotated
//!   `k8s.io/initial-events-end`.
//!
//! Where it differs from a real API server: no authentication, authorization, admission,
//! validation against schemas (unknown fields are kept, not pruned), or defaulting; JSON only (no
//! protobuf: cloudcore's own client, which speaks protobuf, cannot use it; its stand-in is
//! `twinflash_testkit::Cloudcore`); a resource outside the table is served as a CRD with the
//! status subresource, scoped by the path it is used with, and discovery knows it only once an
//! object of it was written; server-side apply (`application/apply-patch+yaml`, body JSON) and
//! strategic merge are applied as JSON merge patches (the `fieldManager` is recorded per request, but no
//! `managedFields` are kept and no apply conflicts raised; lists replaced whole); `limit`/`continue` are ignored (one page, no continue token); a watch whose
//! label selector stops matching a modified object does not turn it into DELETED; no
//! `deletecollection`, finalizers, owner-reference garbage collection or namespaces lifecycle;
//! one global resourceVersion counter for all resources (as etcd's revision).
//!
//! ```no_run
//! use twinflash_harness::FakeApi;
//!
//! # fn main() -> Result<(), twinflash_harness::HarnessError> {
//! let api = FakeApi::start()?;
//! let dir = tempfile::tempdir().map_err(|e| twinflash_harness::HarnessError::Io { what: "tempdir".into(), source: e })?;
//! let kubeconfig = api.kubeconfig(dir.path())?; // KUBECONFIG=... for a kube::Client or a binary
//! api.put(serde_json::json!({
//!     "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
//!     "metadata": {"name": "d1", "namespace": "default"}, "spec": {}
//! }))?;
//! assert!(api.get("devices.kubeedge.io", "v1beta1", "devices", "default", "d1").is_some());
//! assert!(api.unknown_requests().is_empty());
//! # let _ = kubeconfig;
//! # Ok(())
//! # }
//! ```

pub mod resources;
mod selector;
mod server;
mod store;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde_json::Value;
use tokio::sync::oneshot;

use crate::HarnessError;
pub use resources::ResourceInfo;
pub use selector::{FieldSelector, LabelSelector};
pub use server::RequestRecord;
use server::Shared;
pub use store::{ApiError, EventType, Gvr, HISTORY, Part, WatchRecord};

/// A running fake API server; stops when dropped.
pub struct FakeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApi").field("addr", &self.addr).finish()
    }
}

/// The plural of a kind, as Kubernetes derives it by default (`Device` -> `devices`,
/// `DeviceStatus` -> `devicestatuses`, `Policy` -> `policies`).
pub fn plural_of(kind: &str) -> String {
    let k = kind.to_ascii_lowercase();
    if k.ends_with('s') || k.ends_with('x') || k.ends_with("ch") || k.ends_with("sh") {
        format!("{k}es")
    } else if let Some(stem) = k.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        format!("{stem}ies")
    } else {
        format!("{k}s")
    }
}

/// The resource of `obj` from its `apiVersion` and `kind`.
fn gvr_of(obj: &Value) -> Result<Gvr, HarnessError> {
    let invalid = |m: &str| HarnessError::KubeApi {
        code: 400,
        reason: "BadRequest".into(),
        message: m.to_owned(),
    };
    let api_version = obj["apiVersion"]
        .as_str()
        .ok_or_else(|| invalid("no apiVersion"))?;
    let kind = obj["kind"].as_str().ok_or_else(|| invalid("no kind"))?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    Ok(Gvr::new(group, version, &plural_of(kind)))
}

fn api_err(e: ApiError) -> HarnessError {
    HarnessError::KubeApi {
        code: e.code,
        reason: e.reason.to_owned(),
        message: e.message,
    }
}

impl FakeApi {
    /// Starts the server on a free loopback port, on its own thread and tokio runtime (works from
    /// `#[test]` and `#[tokio::test]` alike).
    pub fn start() -> Result<FakeApi, HarnessError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| HarnessError::io("binding the fake API server on 127.0.0.1", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| HarnessError::io("non-blocking listener", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("fake API server address", e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| HarnessError::io("tokio runtime of the fake API server", e))?;
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let app = axum::Router::new()
            .fallback(server::handle)
            .with_state(shared.clone());
        let thread = std::thread::Builder::new()
            .name("fake-kube-api".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        r = axum::serve(listener, app) => {
                            if let Err(e) = r {
                                tracing::warn!(error = %e, "fake API server stopped");
                            }
                        }
                        _ = stopped => {}
                    }
                });
                // Open watch connections are dropped with the runtime.
                rt.shutdown_background();
            })
            .map_err(|e| HarnessError::io("spawning the fake API server thread", e))?;
        Ok(FakeApi {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes `dir/kubeconfig` pointing at this server (namespace `default`, no credentials).
    pub fn kubeconfig(&self, dir: &Path) -> Result<PathBuf, HarnessError> {
        self.kubeconfig_for(dir, &self.url())
    }

    /// Writes `dir/kubeconfig` pointing at `server` (e.g. a [`crate::FaultProxy`] in front of this one).
    pub fn kubeconfig_for(&self, dir: &Path, server: &str) -> Result<PathBuf, HarnessError> {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        );
        std::fs::write(&path, text)
            .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))?;
        Ok(path)
    }

    /// Serves `group/version/plural` as a CRD without a status subresource, as KubeEdge's Device
    /// CRD is: `.status` is written by writes of the object itself, and `/status` answers 404.
    /// KubeEdge's resources are already served so ([`resources::builtin`]); this is for others.
    pub fn without_status_subresource(&self, group: &str, version: &str, plural: &str) {
        let gvr = Gvr::new(group, version, plural);
        let mut info = self.shared.info(&gvr, true);
        info.status_subresource = false;
        self.shared.resources().insert(gvr, info);
    }

    /// What the server knows of `group/version/plural` (kind, scope, status subresource).
    pub fn resource(&self, group: &str, version: &str, plural: &str) -> ResourceInfo {
        self.shared.info(&Gvr::new(group, version, plural), true)
    }

    /// Creates or replaces `obj` as given, status included (the test acting as the cluster admin
    /// or as cloudcore). The resource comes from `apiVersion` and `kind` ([`plural_of`]).
    pub fn put(&self, obj: Value) -> Result<Value, HarnessError> {
        let gvr = gvr_of(&obj)?;
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        self.shared.learn(&gvr, &obj, !ns.is_empty());
        let info = self.shared.info(&gvr, !ns.is_empty());
        let mut store = self.shared.store();
        let result = if store.get(&gvr, &ns, &name).is_some() {
            let mut obj = obj;
            if let Value::Object(m) = &mut obj["metadata"] {
                m.remove("resourceVersion");
            }
            store.update(&gvr, &ns, &name, obj, Part::Whole, &info)
        } else {
            store.create(&gvr, &ns, obj, Part::Whole, &info)
        };
        result.map_err(api_err)
    }

    /// One object (`ns` empty for cluster-scoped resources).
    pub fn get(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        ns: &str,
        name: &str,
    ) -> Option<Value> {
        self.shared
            .store()
            .get(&Gvr::new(group, version, plural), ns, name)
    }

    /// The objects of a resource in `ns` (`None`: every namespace), in namespace and name order.
    pub fn list(&self, group: &str, version: &str, plural: &str, ns: Option<&str>) -> Vec<Value> {
        self.shared
            .store()
            .list(&Gvr::new(group, version, plural), ns)
    }

    /// A JSON merge patch on the main resource, as an operator's `kubectl patch --type merge`
    /// would do; watchers see it. `.status` in the patch is kept out where the resource has a
    /// status subresource and applied where it has none, as the API server does.
    pub fn patch_spec(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        ns: &str,
        name: &str,
        merge_patch: &Value,
    ) -> Result<Value, HarnessError> {
        let gvr = Gvr::new(group, version, plural);
        let info = self.shared.info(&gvr, !ns.is_empty());
        let mut store = self.shared.store();
        let mut obj = store
            .get(&gvr, ns, name)
            .ok_or_else(|| HarnessError::KubeApi {
                code: 404,
                reason: "NotFound".into(),
                message: format!("{plural} \"{ns}/{name}\" not found"),
            })?;
        json_patch::merge(&mut obj, merge_patch);
        let part = if info.status_subresource {
            Part::Main
        } else {
            Part::Whole
        };
        store
            .update(&gvr, ns, name, obj, part, &info)
            .map_err(api_err)
    }

    /// Deletes one object (`ns` empty for cluster-scoped resources); watchers see it. Returns the object as it
    /// was, or the API server's 404.
    pub fn delete(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        ns: &str,
        name: &str,
    ) -> Result<Value, HarnessError> {
        self.shared
            .store()
            .delete(&Gvr::new(group, version, plural), ns, name)
            .map_err(api_err)
    }

    /// Every write of a resource still in the history (at most [`HISTORY`] writes of all
    /// resources), oldest first: what a watch from the beginning would have seen.
    pub fn history(&self, group: &str, version: &str, plural: &str) -> Vec<WatchRecord> {
        self.shared
            .store()
            .history(&Gvr::new(group, version, plural))
            .iter()
            .map(|r| (**r).clone())
            .collect()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The requests the server did not understand (answered 404 without looking at any object).
    pub fn unknown_requests(&self) -> Vec<RequestRecord> {
        self.requests().into_iter().filter(|r| !r.known).collect()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_follow_the_kubernetes_default() {
        assert_eq!(plural_of("Device"), "devices");
        assert_eq!(plural_of("DeviceStatus"), "devicestatuses");
        assert_eq!(plural_of("FirmwareRollout"), "firmwarerollouts");
        assert_eq!(plural_of("Policy"), "policies");
        assert_eq!(plural_of("Gateway"), "gateways");
        assert_eq!(plural_of("Lease"), "leases");
    }
}
