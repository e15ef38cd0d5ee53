//! [`DmiEdgecore`]: an in-process stand-in for edgecore v1.23.1's side of KubeEdge DMI (v1beta1), the gRPC interface
//! between edgecore and a device mapper on unix sockets. The end-to-end tests run the real `twinflash-edge` in DMI
//! mode against it, so it is no kinder than edgecore: every rule below is traced, in the comment where it is
//! implemented, to docs/kubeedge-dmi.md (`spec §N`) or to a golden vector of dmi/tests/data/ (named
//! by its prefix, e.g. `c05`).
//!
//! - **Cloud objects in, DMI calls out.** A test hands it Devices and DeviceModels as cloudcore sends them
//!   ([`DmiEdgecore::apply_device`], ...). One worker task handles them in turn, as edgecore's DMI worker does
//!   (spec §4): it caches, overrides with the model's defaults, converts, and calls the mapper of the protocol on a
//!   new connection per call with a 10 s deadline and no retry, as grpc-go does it: its header list, `:authority`
//!   the dialled path percent-encoded (h01), on raw HTTP/2 ([`crate::grpc_go`], none of twinflash's transport).
//!   Failures are only logged ([`DmiEdgecore::log`]), in grpc-go's words.
//! - **DeviceManagerService on `<dir>/dmi.sock`**: MapperRegister, ReportDeviceStatus and ReportDeviceStates with
//!   edgecore's validation, error strings, shared rate limit, and crashes (spec §3, §5, §6).
//! - **The twin store**: each twin of a report is its own MQTT-style update through the MQTT stand-in's twin
//!   pipeline (crate::edgecore `deal`), applied in random order after the call returned OK (d02); the cloud-bound
//!   syncs go to [`DmiEdgecore::syncs`] subscribers, which [`crate::Cloudcore::follow_syncs`] applies.
//!
//! By concern: this file (the store, the worker and the twin pipeline, the public API), `convert` (what the worker
//! makes of the cloud's objects), `mapper_client` (the calls to a mapper), `server` (the DeviceManagerService).
//!
//! What it does NOT model: the MQTT side of the twin module (result, document and delta publishes are not sent to
//! any broker; rejections are in the log), membership/detail requests, cloudcore's own resends. Cloud messages
//! applied while the stand-in is stopped, and those still queued when it stopped, update its cache (what
//! MapperRegister answers) but are never sent to the mapper (see [`DmiEdgecore::start`]); an operation in progress
//! when it stops or crashes is lost.
#![allow(clippy::disallowed_types)] // edgecore's side must decode the raw requests a mapper sends, incomplete ones too

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_schema::{BaseMessage, DeviceTwinResult, MsgTwin, TwinMap, to_go_json};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use twinflash_dmi::pb;
use twinflash_dmi::pb::device_manager_service_server::DeviceManagerServiceServer;

use crate::edgecore::{CloudSync, StoredTwin, deal, reloaded};

mod convert;
mod mapper_client;
mod server;

use convert::{comparable_spec, overridden, text};
pub use convert::{convert_device, convert_model};
use mapper_client::{MapperCall, call_mapper};
use server::{KillableIo, Limiter, Server, create_listener};

/// edgecore's deadline for a call to a mapper, counted from the dial (spec §3 "deadline 10 s counted from the dial").
pub const MAPPER_CALL_DEADLINE: Duration = Duration::from_secs(10);
/// The DMI server's rate limit: tokens per second (spec §3 "one token per second, burst 100"; e16).
pub const RATE_PER_SEC: f64 = 1.0;
/// The DMI server's rate limit: burst (e16).
pub const RATE_BURST: f64 = 100.0;
/// The states the twin module accepts, compared lower-case (spec §5, d03, p04).
pub const ACCEPTED_STATES: [&str; 5] = ["online", "offline", "ok", "unknown", "unhealthy"];

/// What a log line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmiLogKind {
    /// A call to a mapper that succeeded.
    Call,
    /// A call to a mapper that failed or could not be made (no client, dial error, deadline): only logged (e01,
    /// e13, e15, e17).
    CallFailed,
    /// A device or model the worker did not send (model not cached e12, unconvertible config data e11, spec
    /// unchanged c03).
    Skipped,
    /// A twin update the twin module refused with 400 (charset, p05); the mapper got OK.
    Rejected400,
    /// A twin update for a device the twin module does not know (404, p06); the mapper got OK.
    Rejected404,
    /// A state report with a state edgecore does not accept, dropped silently (p04).
    StateDropped,
    /// A cloud-bound message sent to the cloud.
    Synced,
    /// A cloud-bound message dropped because the cloud link was cut (p08).
    SyncDropped,
    /// A DMI server call refused by the rate limit (e16).
    RateLimited,
    /// A DMI server call refused by validation (e02, e03, e05, e06, e07).
    Refused,
    /// edgecore died (e04a-c).
    Crash,
    /// Started, stopped, registered a mapper, created a client.
    Lifecycle,
}

/// One line of the stand-in's log (edgecore's klog, in its words where a golden vector shows them).
#[derive(Debug, Clone)]
pub struct DmiLog {
    /// When.
    pub at: Instant,
    /// What about.
    pub kind: DmiLogKind,
    /// The text.
    pub text: String,
}

/// What the stand-in did, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DmiCounters {
    /// MapperRegister calls received (including refused ones).
    pub mapper_register: u64,
    /// ReportDeviceStatus calls received.
    pub report_status: u64,
    /// ReportDeviceStates calls received.
    pub report_states: u64,
    /// Calls of the three refused by the rate limit.
    pub rate_limited: u64,
    /// Twin updates applied to the store (one per twin of a report).
    pub twins_applied: u64,
    /// Twin updates refused by the twin module (400 or 404).
    pub twins_rejected: u64,
    /// State reports applied.
    pub states_applied: u64,
    /// Calls made to mappers that succeeded.
    pub mapper_calls: u64,
    /// Calls to mappers that failed or had no client.
    pub mapper_call_failures: u64,
    /// Cloud-bound messages sent.
    pub syncs_sent: u64,
    /// Cloud-bound messages dropped (cloud link cut).
    pub syncs_dropped: u64,
    /// Crashes (e04a-c).
    pub crashes: u64,
}

/// A device's state as the twin module stores it (p03).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStateRecord {
    /// The state as reported.
    pub state: String,
    /// RFC 3339 UTC time of the last `online`/`ok` report.
    pub last_online_time: Option<String>,
}

/// A cloud-bound `device/<ns>/<name>/state/update` (p03).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSync {
    /// The device's namespace.
    pub namespace: String,
    /// The device's name.
    pub name: String,
    /// The content, as edgecore sends it: `{"event_id","timestamp","device":{"name","state","lastOnlineTime"}}`.
    pub json: Value,
}

/// A message from the cloud for the DMI worker (spec §4: metamanager forwards inserts, updates, deletes).
#[derive(Debug, Clone)]
enum Op {
    ModelInsert(Value),
    ModelUpdate(Value),
    ModelDelete(Value),
    DeviceInsert(Value),
    DeviceUpdate(Value),
    DeviceDelete(Value),
}

/// A device the twin module knows (membership) and its twins.
#[derive(Debug, Clone, Default)]
struct Member {
    twins: BTreeMap<String, StoredTwin>,
    state: Option<DeviceStateRecord>,
}

/// What survives a restart, like edgecore's sqlite (spec §3 "it reloads devices, models and the saved MapperInfos").
#[derive(Debug, Default)]
struct Store {
    /// The DMI cache: `ns/name` -> the Device as received.
    devices: BTreeMap<String, Value>,
    /// `ns/name` -> the DeviceModel as received.
    models: BTreeMap<String, Value>,
    /// Saved MapperInfos by mapper name.
    mappers: BTreeMap<String, pb::MapperInfo>,
    /// The twin module's devices.
    members: BTreeMap<String, Member>,
    /// What cloudcore has sent (to tell an add from an update, and a spec change for the model companion).
    cloud: BTreeMap<String, Value>,
    /// Models cloudcore has sent to the edge and not deleted since (`ns/name`).
    models_sent: BTreeSet<String>,
    /// The resourceVersion of each model as last sent to the edge (cloudhub's ObjectSync; 0 when absent).
    model_versions: BTreeMap<String, u64>,
    /// DMI clients: protocol -> mapper address (runtime state, rebuilt at start).
    clients: BTreeMap<String, Vec<u8>>,
    /// Cloud messages that came while edgecore was down (see [`Inner::cache_only`]).
    missed: Vec<Op>,
    /// What the synccontroller re-sent after the last start: in the database (metamanager's `meta` table), not in
    /// the DMI cache until the next start reloads it.
    in_database_only: Vec<Op>,
}

impl Store {
    /// A Device or DeviceModel message as the database has it after metamanager stored it.
    fn apply_to_cache(&mut self, op: Op) {
        let (cache, object, delete) = match op {
            Op::DeviceInsert(d) | Op::DeviceUpdate(d) => (&mut self.devices, d, false),
            Op::DeviceDelete(d) => (&mut self.devices, d, true),
            Op::ModelInsert(m) | Op::ModelUpdate(m) => (&mut self.models, m, false),
            Op::ModelDelete(m) => (&mut self.models, m, true),
        };
        let key = meta_id(&object);
        if delete {
            cache.remove(&key);
        } else {
            cache.insert(key, object);
        }
    }
}

struct Running {
    kill: CancellationToken,
    server: JoinHandle<()>,
    worker: JoinHandle<()>,
}

struct Inner {
    dir: PathBuf,
    store: Mutex<Store>,
    log: Mutex<Vec<DmiLog>>,
    counters: Mutex<DmiCounters>,
    cloud_up: AtomicBool,
    sync_tx: Mutex<Vec<UnboundedSender<CloudSync>>>,
    synced: Mutex<Vec<CloudSync>>,
    state_syncs: Mutex<Vec<StateSync>>,
    ops_tx: UnboundedSender<Op>,
    ops_rx: Arc<tokio::sync::Mutex<UnboundedReceiver<Op>>>,
    queued: AtomicUsize,
    busy: AtomicBool,
    running: Mutex<Option<Running>>,
}

/// The DMI edgecore stand-in. Dropping it stops it.
pub struct DmiEdgecore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DmiEdgecore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmiEdgecore")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

fn system_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

static SEED: AtomicU64 = AtomicU64::new(0);

/// A random number (std's randomly keyed hasher over a counter; no dependency for test noise).
fn random() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(SEED.fetch_add(1, Ordering::Relaxed))
}

/// A fresh event id in UUID form (edgecore's are random UUIDs).
fn event_id() -> String {
    let (a, b) = (random(), random());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

fn id(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn meta_id(obj: &Value) -> String {
    id(
        obj["metadata"]["namespace"].as_str().unwrap_or("default"),
        obj["metadata"]["name"].as_str().unwrap_or(""),
    )
}

/// `metadata.resourceVersion` as cloudhub compares it (a number; 0 when absent or not one).
fn resource_version(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

impl Inner {
    fn log(&self, kind: DmiLogKind, text: impl Into<String>) {
        self.log.lock().unwrap().push(DmiLog {
            at: Instant::now(),
            kind,
            text: text.into(),
        });
    }

    fn count(&self, f: impl FnOnce(&mut DmiCounters)) {
        f(&mut self.counters.lock().unwrap());
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("dmi.sock")
    }

    fn enqueue(&self, op: Op) {
        if self.running.lock().unwrap().is_none() {
            return self.cache_only(op);
        }
        self.queued.fetch_add(1, Ordering::SeqCst);
        let _ = self.ops_tx.send(op);
    }

    /// A cloud message for edgecore while it is not running: cloudhub keeps it in the node's message pool, which is
    /// replaced at the reconnection (message_handler.go `InitNodeMessagePool`), so the DMI worker never gets it.
    /// cloudcore's synccontroller re-sends the newer object after the reconnection, to edgecore's metamanager only:
    /// it lands in the database, not in the DMI cache (see [`DmiEdgecore::start`]).
    fn cache_only(&self, op: Op) {
        let (kind, key) = match &op {
            Op::DeviceInsert(d) | Op::DeviceUpdate(d) => ("device", meta_id(d)),
            Op::DeviceDelete(d) => ("device delete", meta_id(d)),
            Op::ModelInsert(m) | Op::ModelUpdate(m) => ("model", meta_id(m)),
            Op::ModelDelete(m) => ("model delete", meta_id(m)),
        };
        self.store.lock().unwrap().missed.push(op);
        self.log(
            DmiLogKind::Lifecycle,
            format!("not running: {kind} {key} lost for the DMI worker, stored by metamanager after the start"),
        );
    }

    /// A call to the mapper of `protocol`, or the error edgecore logs (e01: no client for the protocol).
    async fn call(&self, protocol: &str, target: &str, call: MapperCall) -> Result<(), String> {
        let method = call.method();
        let result = match self.client(protocol) {
            Err(e) => Err(e),
            Ok(a) => call_mapper(&a, call).await,
        };
        self.record(method, protocol, target, &result);
        result
    }

    /// The address of the protocol's DMI client (client.go getDMIClientByProtocol).
    fn client(&self, protocol: &str) -> Result<Vec<u8>, String> {
        let address = self.store.lock().unwrap().clients.get(protocol).cloned();
        address.ok_or_else(|| format!("fail to get dmi client of protocol {protocol}"))
    }

    fn record(&self, method: &str, protocol: &str, target: &str, result: &Result<(), String>) {
        match result {
            Ok(()) => {
                self.count(|c| c.mapper_calls += 1);
                self.log(
                    DmiLogKind::Call,
                    format!("{method} {target} ({protocol}): OK"),
                );
            }
            Err(e) => {
                self.count(|c| c.mapper_call_failures += 1);
                self.log(
                    DmiLogKind::CallFailed,
                    format!("{method} {target} ({protocol}) failed with err: {e}"),
                );
            }
        }
    }

    /// `dealMetaDeviceOperation` (dmiworker.go; spec §4): one cloud message.
    async fn handle(&self, op: Op) {
        match op {
            Op::DeviceInsert(d) => {
                // Device insert = cache + RegisterDevice (an upsert: cloudcore replays adds after its restart).
                let key = meta_id(&d);
                let converted = {
                    let mut store = self.store.lock().unwrap();
                    store.devices.insert(key.clone(), d.clone());
                    overridden(&d, &store.models)
                };
                self.send_device(&key, &d, converted, true).await;
            }
            Op::DeviceUpdate(d) => {
                let key = meta_id(&d);
                let converted = {
                    let mut store = self.store.lock().unwrap();
                    // CompareDeviceSpecHasChanged (c03): the whole spec, properties/methods sorted by name.
                    let unchanged = store
                        .devices
                        .get(&key)
                        .is_some_and(|old| comparable_spec(old) == comparable_spec(&d));
                    if unchanged {
                        drop(store);
                        self.log(
                            DmiLogKind::Skipped,
                            format!("device unchanged, skip updateDevice: {key}"),
                        );
                        return;
                    }
                    // The new spec is cached BEFORE the call: a failed UpdateDevice is lost (e15).
                    store.devices.insert(key.clone(), d.clone());
                    overridden(&d, &store.models)
                };
                self.send_device(&key, &d, converted, false).await;
            }
            Op::DeviceDelete(d) => {
                // RemoveDevice, then uncache only on success (c04).
                let key = meta_id(&d);
                let protocol = text(&d["spec"]["protocol"]["protocolName"]);
                let ns = text(&d["metadata"]["namespace"]);
                let call = MapperCall::Remove(ns, name_of(&d).to_owned());
                if self.call(&protocol, &key, call).await.is_ok() {
                    self.store.lock().unwrap().devices.remove(&key);
                }
            }
            op @ (Op::ModelInsert(_) | Op::ModelUpdate(_)) => {
                // Model insert = cache + CreateDeviceModel (b01); update = cache + UpdateDeviceModel, always (b02);
                // routed by spec.protocol (e01).
                let (Op::ModelInsert(m) | Op::ModelUpdate(m)) = &op else {
                    return;
                };
                let key = meta_id(m);
                self.store
                    .lock()
                    .unwrap()
                    .models
                    .insert(key.clone(), m.clone());
                let protocol = text(&m["spec"]["protocol"]);
                let model = convert_model(m);
                let call = if matches!(op, Op::ModelInsert(_)) {
                    MapperCall::CreateModel(model)
                } else {
                    MapperCall::UpdateModel(model)
                };
                let _ = self.call(&protocol, &key, call).await;
            }
            Op::ModelDelete(m) => {
                // RemoveDeviceModel, then uncache only on success (b03).
                let key = meta_id(&m);
                let protocol = text(&m["spec"]["protocol"]);
                let ns = text(&m["metadata"]["namespace"]);
                let call = MapperCall::RemoveModel(ns, name_of(&m).to_owned());
                if self.call(&protocol, &key, call).await.is_ok() {
                    self.store.lock().unwrap().models.remove(&key);
                }
            }
        }
    }

    async fn send_device(
        &self,
        key: &str,
        device: &Value,
        converted: Result<(Value, Value), String>,
        insert: bool,
    ) {
        let dev = match converted {
            Ok((dev, _model)) => dev,
            Err(e) => {
                // e12: a device whose model is not cached is never sent (it stays cached).
                self.log(
                    DmiLogKind::Skipped,
                    format!("DMIModule deal MetaDeviceOperation event failed: {e}"),
                );
                return;
            }
        };
        let protocol = text(&device["spec"]["protocol"]["protocolName"]);
        let (verb, request) = if insert {
            ("add", "createDeviceRequest")
        } else {
            ("update", "UpdateDeviceRequest")
        };
        let method = if insert {
            "RegisterDevice"
        } else {
            "UpdateDevice"
        };
        // The client is looked up before the conversion (client.go), so "no client" wins over e11.
        if let Err(e) = self.client(&protocol) {
            return self.record(method, &protocol, key, &Err(e));
        }
        let pb_device = match convert_device(&dev) {
            Ok(d) => d,
            Err(e) => {
                // e11: unconvertible configData, the device is never sent.
                self.log(
                    DmiLogKind::Skipped,
                    format!(
                        "{verb} device {} failed with err: fail to create {request} for device {} with err: {e}",
                        name_of(device),
                        name_of(device)
                    ),
                );
                return;
            }
        };
        let call = if insert {
            MapperCall::Register(pb_device)
        } else {
            MapperCall::Update(pb_device)
        };
        let _ = self.call(&protocol, key, call).await;
    }

    /// Sends a cloud-bound twin sync, or drops it while the cloud link is cut (p08).
    fn sync(&self, namespace: &str, name: &str, twins: BTreeMap<String, MsgTwin>, now: i64) {
        let device = id(namespace, name);
        let resource = format!("device/{device}/twin/edge_updated");
        let msg = DeviceTwinResult {
            base: BaseMessage::new(event_id(), now),
            twin: Some(
                twins
                    .iter()
                    .map(|(k, t)| (k.clone(), Some(t.clone())))
                    .collect(),
            ),
        };
        let bytes = to_go_json(&msg);
        if !self.cloud_up.load(Ordering::SeqCst) {
            self.count(|c| c.syncs_dropped += 1);
            self.log(
                DmiLogKind::SyncDropped,
                format!("{resource} {}", String::from_utf8_lossy(&bytes)),
            );
            return;
        }
        self.count(|c| c.syncs_sent += 1);
        self.log(
            DmiLogKind::Synced,
            format!("{resource} {}", String::from_utf8_lossy(&bytes)),
        );
        let sync = CloudSync {
            device,
            namespace: Some(namespace.to_owned()),
            name: name.to_owned(),
            twins,
            json: bytes,
        };
        self.synced.lock().unwrap().push(sync.clone());
        self.sync_tx
            .lock()
            .unwrap()
            .retain(|tx| tx.send(sync.clone()).is_ok());
    }

    /// One twin of a report, as the twin module applies a `twin/update` (spec §5, d02, p01, p02, p05, p06, p07).
    fn apply_twin(&self, namespace: &str, name: &str, content: &[u8]) {
        let device = id(namespace, name);
        // The charset and JSON checks of the twin module: 400 on `$hw/events/device//twin/update/result` (p05).
        let update = match mqtt_schema::unmarshal_device_twin_update(content) {
            Ok(u) => u,
            Err(e) => {
                self.count(|c| c.twins_rejected += 1);
                self.log(
                    DmiLogKind::Rejected400,
                    format!(
                        "$hw/events/device//twin/update/result code 400: {} ({device}: {})",
                        e.reason(),
                        String::from_utf8_lossy(content)
                    ),
                );
                return;
            }
        };
        let now = system_ms();
        let mut store = self.store.lock().unwrap();
        // Unknown to the twin module: 404 on the device's result topic (p06).
        let Some(member) = store.members.get_mut(&device) else {
            drop(store);
            self.count(|c| c.twins_rejected += 1);
            self.log(
                DmiLogKind::Rejected404,
                format!(
                    "$hw/events/device/{device}/twin/update/result code 404: update rejected due to the device is not existed"
                ),
            );
            return;
        };
        let empty = TwinMap::new();
        match deal(&member.twins, update.twin.as_ref().unwrap_or(&empty), now) {
            Ok((twins, dealt)) => {
                member.twins = twins;
                drop(store);
                self.count(|c| c.twins_applied += 1);
                if !dealt.sync.is_empty() {
                    self.sync(namespace, name, dealt.sync, now);
                }
            }
            Err(reason) => {
                drop(store);
                self.count(|c| c.twins_rejected += 1);
                self.log(
                    DmiLogKind::Rejected400,
                    format!("$hw/events/device/{device}/twin/update/result code 400: {reason}"),
                );
            }
        }
    }

    /// A state report as the twin module applies it (p03, p04).
    fn apply_state(&self, namespace: &str, name: &str, state: &str) {
        let device = id(namespace, name);
        let lower = state.to_lowercase();
        if !ACCEPTED_STATES.contains(&lower.as_str()) {
            self.log(
                DmiLogKind::StateDropped,
                format!("state {state:?} of {device} is not accepted: dropped"),
            );
            return;
        }
        let last_online = matches!(lower.as_str(), "online" | "ok")
            .then(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        {
            let mut store = self.store.lock().unwrap();
            let Some(member) = store.members.get_mut(&device) else {
                drop(store);
                self.log(
                    DmiLogKind::StateDropped,
                    format!("state of {device}: the device is not known, dropped"),
                );
                return;
            };
            let keep = member
                .state
                .as_ref()
                .and_then(|s| s.last_online_time.clone());
            member.state = Some(DeviceStateRecord {
                state: state.to_owned(),
                last_online_time: last_online.clone().or(keep),
            });
        }
        self.count(|c| c.states_applied += 1);
        let mut dev = json!({"name": name, "state": state});
        if let Some(t) = &last_online {
            dev["lastOnlineTime"] = json!(t);
        }
        let content = json!({"event_id": event_id(), "timestamp": system_ms(), "device": dev});
        let resource = format!("device/{device}/state/update");
        if !self.cloud_up.load(Ordering::SeqCst) {
            self.count(|c| c.syncs_dropped += 1);
            self.log(DmiLogKind::SyncDropped, format!("{resource} {content}"));
            return;
        }
        self.count(|c| c.syncs_sent += 1);
        self.log(DmiLogKind::Synced, format!("{resource} {content}"));
        self.state_syncs.lock().unwrap().push(StateSync {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            json: content,
        });
    }

    /// edgecore dies (e04a-c): the socket goes at once, every connection drops, the worker stops; the store stays.
    fn crash(&self, why: &str) {
        self.count(|c| c.crashes += 1);
        self.log(
            DmiLogKind::Crash,
            format!(
                "panic: runtime error: invalid memory address or nil pointer dereference ({why})"
            ),
        );
        self.halt();
    }

    fn halt(&self) {
        if let Some(r) = self.running.lock().unwrap().take() {
            r.kill.cancel();
            r.server.abort();
            r.worker.abort();
        }
        self.busy.store(false, Ordering::SeqCst);
        let _ = std::fs::remove_file(self.socket());
        self.store.lock().unwrap().clients.clear();
    }
}

impl DmiEdgecore {
    /// A stand-in serving `<dir>/dmi.sock`, started (with an empty store).
    pub async fn start_in(dir: &Path) -> io::Result<DmiEdgecore> {
        let (ops_tx, ops_rx) = unbounded_channel();
        let ec = DmiEdgecore {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                store: Mutex::new(Store::default()),
                log: Mutex::new(Vec::new()),
                counters: Mutex::new(DmiCounters::default()),
                cloud_up: AtomicBool::new(true),
                sync_tx: Mutex::new(Vec::new()),
                synced: Mutex::new(Vec::new()),
                state_syncs: Mutex::new(Vec::new()),
                ops_tx,
                ops_rx: Arc::new(tokio::sync::Mutex::new(ops_rx)),
                queued: AtomicUsize::new(0),
                busy: AtomicBool::new(false),
                running: Mutex::new(None),
            }),
        };
        ec.start().await?;
        Ok(ec)
    }

    /// The DMI server's socket, `<dir>/dmi.sock` (spec §3: the file is always `dmi.sock`).
    pub fn socket(&self) -> PathBuf {
        self.inner.socket()
    }

    /// Starts serving again after [`DmiEdgecore::stop`] or a crash (no-op while running). As edgecore at start
    /// (spec §3, e14): the store is reloaded (twins as sqlite gives them back), a client is created for every
    /// saved MapperInfo whether its socket exists or not, and NO device is pushed to any mapper. The socket is a new
    /// file (a new inode), as edgecore's `CreateListener` unlinks and recreates it.
    ///
    /// Cloud messages that came while it was stopped, or were still queued when it stopped, never reach the mapper
    /// and are not in the DMI cache that answers the next MapperRegister: the second real run of issue 22 (edgecore
    /// and cloudcore v1.23.1) edited a Device while edgecore was down; after its return edgecore's `meta` table held
    /// the new Device (cloudcore's synccontroller re-sends it to metamanager), but the DMI cache, loaded from the
    /// database before that, kept the old one: no UpdateDevice, and the mapper's MapperRegister answer (server.go,
    /// from `dmiCache`) gave the old value for 120 s. They reach the DMI cache only at the next start, which reloads
    /// the database (dmiworker.go `init`). edgecore pushes nothing after a start (e14).
    pub async fn start(&self) -> io::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let inner = &self.inner;
        {
            let mut rx = inner.ops_rx.lock().await;
            while let Ok(op) = rx.try_recv() {
                inner.queued.fetch_sub(1, Ordering::SeqCst);
                inner.cache_only(op);
            }
        }
        {
            // The database as this start loads it, then what the synccontroller re-sends after the reconnection.
            let mut store = inner.store.lock().unwrap();
            for op in std::mem::take(&mut store.in_database_only) {
                store.apply_to_cache(op);
            }
            store.in_database_only = std::mem::take(&mut store.missed);
        }
        std::fs::create_dir_all(&inner.dir)?;
        let listener = create_listener(&inner.socket())?;
        {
            let mut store = inner.store.lock().unwrap();
            let saved: Vec<(String, Vec<u8>)> = store
                .mappers
                .values()
                .map(|m| (m.protocol.clone(), m.address.clone()))
                .collect();
            store.clients = saved.into_iter().collect();
            for m in store.members.values_mut() {
                let twins = std::mem::take(&mut m.twins);
                m.twins = twins.into_iter().map(|(k, t)| (k, reloaded(t))).collect();
            }
        }
        let kill = CancellationToken::new();
        let token = kill.clone();
        let incoming = listener.map(move |s| {
            s.map(|io| KillableIo {
                io,
                killed: Box::pin(token.clone().cancelled_owned()),
            })
        });
        let service = Server {
            inner: inner.clone(),
            limiter: Mutex::new(Limiter::new()),
            kill: kill.clone(),
        };
        let shutdown = kill.clone().cancelled_owned();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(DeviceManagerServiceServer::new(service))
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
        });
        let worker_inner = inner.clone();
        let rx = inner.ops_rx.clone();
        let worker = tokio::spawn(async move {
            // One worker handling cloud messages in turn (spec §3 "One DMI worker goroutine").
            let mut rx = rx.lock().await;
            while let Some(op) = rx.recv().await {
                worker_inner.busy.store(true, Ordering::SeqCst);
                worker_inner.queued.fetch_sub(1, Ordering::SeqCst);
                worker_inner.handle(op).await;
                worker_inner.busy.store(false, Ordering::SeqCst);
            }
        });
        *inner.running.lock().unwrap() = Some(Running {
            kill,
            server,
            worker,
        });
        inner.log(
            DmiLogKind::Lifecycle,
            format!("started: DMI server on {}", inner.socket().display()),
        );
        Ok(())
    }

    /// Stops edgecore abruptly (like SIGKILL): the socket is removed, connections drop, the operation in progress
    /// is lost. The store (devices, models, MapperInfos, twins) stays for [`DmiEdgecore::start`].
    pub fn stop(&self) {
        if self.is_running() {
            self.inner.halt();
            self.inner.log(DmiLogKind::Lifecycle, "stopped");
        }
    }

    /// [`DmiEdgecore::stop`] then [`DmiEdgecore::start`] (what systemd does after a crash).
    pub async fn restart(&self) -> io::Result<()> {
        self.stop();
        self.start().await
    }

    /// Whether it is serving (false after a stop or a crash).
    pub fn is_running(&self) -> bool {
        self.inner.running.lock().unwrap().is_some()
    }

    /// A DeviceModel from the cloud (`devices.kubeedge.io/v1beta1` JSON): an insert the first time
    /// (CreateDeviceModel), an update afterwards (UpdateDeviceModel, always: b02).
    pub fn apply_model(&self, model: &Value) {
        let key = format!("model/{}", meta_id(model));
        let known = {
            let mut store = self.inner.store.lock().unwrap();
            store.models_sent.insert(meta_id(model));
            store
                .model_versions
                .insert(meta_id(model), resource_version(model));
            store.cloud.insert(key, model.clone()).is_some()
        };
        self.inner.enqueue(if known {
            Op::ModelUpdate(model.clone())
        } else {
            Op::ModelInsert(model.clone())
        });
    }

    /// A Device from the cloud, added or updated. An add makes the device known to the twin module (membership,
    /// p00) and is a Device insert (RegisterDevice), preceded by its model's insert when the model was applied
    /// before but is not on the edge any more (its last device was deleted). An update whose spec differs from the
    /// previous one is a Device update, which edgecore passes on only when the sorted spec changed (c03). No
    /// DeviceModel update comes with it unless the model's `metadata.resourceVersion` is newer than the one last sent
    /// to the edge: cloudcore does send the model with every spec change (downstream.go `deviceUpdated` ->
    /// `sendDeviceModelMsg`, with the model's own resourceVersion), but cloudhub drops a message whose
    /// resourceVersion is not newer than its ObjectSync's (dispatcher/message_dispatcher.go `enqueueAckMessage` ->
    /// `enqueueNamespacedResource`). The real run of issue 22 saw UpdateDevice alone for 29 Device changes; b02 and
    /// p00 were recorded with cloudhub bypassed.
    pub fn apply_device(&self, device: &Value) {
        let key = meta_id(device);
        let model_ref = text(&device["spec"]["deviceModelRef"]["name"]);
        let ns = text(&device["metadata"]["namespace"]);
        let mut store = self.inner.store.lock().unwrap();
        let previous = store.cloud.insert(format!("device/{key}"), device.clone());
        store.members.entry(key).or_default();
        match previous {
            None => {
                // cloudcore sends the model with the first device of the node that uses it (spec §4); a model
                // given to apply_model (and not deleted since) is already there.
                let model_key = id(&ns, &model_ref);
                let model = store
                    .cloud
                    .get(&format!("model/{model_key}"))
                    .filter(|_| !store.models_sent.contains(&model_key))
                    .cloned();
                if let Some(m) = &model {
                    store
                        .model_versions
                        .insert(model_key.clone(), resource_version(m));
                    store.models_sent.insert(model_key);
                }
                drop(store);
                if let Some(m) = model {
                    self.inner.enqueue(Op::ModelInsert(m));
                }
                self.inner.enqueue(Op::DeviceInsert(device.clone()));
            }
            Some(old) => {
                let model_key = id(&ns, &model_ref);
                let model = (old["spec"] != device["spec"])
                    .then(|| store.cloud.get(&format!("model/{model_key}")).cloned())
                    .flatten()
                    .filter(|m| {
                        resource_version(m)
                            > store.model_versions.get(&model_key).copied().unwrap_or(0)
                    });
                if let Some(m) = &model {
                    store.model_versions.insert(model_key, resource_version(m));
                }
                drop(store);
                if let Some(m) = model {
                    self.inner.enqueue(Op::ModelUpdate(m));
                }
                self.inner.enqueue(Op::DeviceUpdate(device.clone()));
            }
        }
    }

    /// The cloud deletes a Device: the twin module forgets it (membership removal), then, when it was the last
    /// Device of its model, the model delete (RemoveDeviceModel) before the Device delete (RemoveDevice) (spec
    /// §4, c04).
    pub fn delete_device(&self, namespace: &str, name: &str) {
        let key = id(namespace, name);
        let mut store = self.inner.store.lock().unwrap();
        store.members.remove(&key);
        let Some(device) = store.cloud.remove(&format!("device/{key}")) else {
            return;
        };
        let model_ref = text(&device["spec"]["deviceModelRef"]["name"]);
        let last_user = !store.cloud.iter().any(|(k, d)| {
            k.starts_with("device/")
                && d["metadata"]["namespace"] == device["metadata"]["namespace"]
                && d["spec"]["deviceModelRef"]["name"] == model_ref.as_str()
        });
        let model = store
            .cloud
            .get(&format!("model/{namespace}/{model_ref}"))
            .filter(|_| last_user)
            .cloned();
        if model.is_some() {
            store.models_sent.remove(&id(namespace, &model_ref));
        }
        drop(store);
        if let Some(m) = model {
            self.inner.enqueue(Op::ModelDelete(m));
        }
        self.inner.enqueue(Op::DeviceDelete(device));
    }

    /// The cloud deletes a DeviceModel: RemoveDeviceModel, then it leaves the cache (b03).
    pub fn delete_model(&self, namespace: &str, name: &str) {
        let key = format!("model/{}", id(namespace, name));
        let model = {
            let mut store = self.inner.store.lock().unwrap();
            store.models_sent.remove(&id(namespace, name));
            store.cloud.remove(&key)
        };
        if let Some(m) = model {
            self.inner.enqueue(Op::ModelDelete(m));
        }
    }

    /// Waits until the worker has handled every cloud message so far (panics after [`crate::WAIT`]; it must be
    /// running).
    pub async fn wait_idle(&self) {
        let inner = &self.inner;
        crate::wait_until(
            || inner.queued.load(Ordering::SeqCst) == 0 && !inner.busy.load(Ordering::SeqCst),
            || format!("DMI worker idle\n{}", self.dump()),
        )
        .await;
    }

    /// Cuts the cloud link: cloud-bound messages are dropped from now on, never re-sent (p08).
    pub fn cut_cloud_link(&self) {
        self.inner.cloud_up.store(false, Ordering::SeqCst);
    }

    /// Restores the cloud link (nothing dropped meanwhile comes back, p08).
    pub fn restore_cloud_link(&self) {
        self.inner.cloud_up.store(true, Ordering::SeqCst);
    }

    /// A stream of the twin syncs sent to the cloud from now on, for [`crate::Cloudcore::follow_syncs`].
    pub fn syncs(&self) -> UnboundedReceiver<CloudSync> {
        let (tx, rx) = unbounded_channel();
        self.inner.sync_tx.lock().unwrap().push(tx);
        rx
    }

    /// Every twin sync sent to the cloud so far (`device/<ns>/<name>/twin/edge_updated`, one per applied twin).
    pub fn cloud_syncs(&self) -> Vec<CloudSync> {
        self.inner.synced.lock().unwrap().clone()
    }

    /// Every state sync sent to the cloud so far (`device/<ns>/<name>/state/update`, p03).
    pub fn state_syncs(&self) -> Vec<StateSync> {
        self.inner.state_syncs.lock().unwrap().clone()
    }

    /// The twins of `namespace/name` in the twin store (empty for a device the twin module does not know).
    pub fn twin(&self, namespace: &str, name: &str) -> BTreeMap<String, StoredTwin> {
        let store = self.inner.store.lock().unwrap();
        store
            .members
            .get(&id(namespace, name))
            .map(|m| m.twins.clone())
            .unwrap_or_default()
    }

    /// The stored actual value of a twin.
    pub fn actual(&self, namespace: &str, name: &str, twin: &str) -> Option<String> {
        self.twin(namespace, name)
            .get(twin)?
            .actual
            .as_ref()?
            .value
            .clone()
    }

    /// The stored expected value of a twin (the mapper's last observedDesired).
    pub fn expected(&self, namespace: &str, name: &str, twin: &str) -> Option<String> {
        self.twin(namespace, name)
            .get(twin)?
            .expected
            .as_ref()?
            .value
            .clone()
    }

    /// Waits until the stored actual value of `twin` is `value`; panics with [`DmiEdgecore::dump`] after `within`.
    pub async fn wait_actual(
        &self,
        namespace: &str,
        name: &str,
        twin: &str,
        value: &str,
        within: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.actual(namespace, name, twin).as_deref() == Some(value) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "timed out after {within:?} waiting for {namespace}/{name} {twin} actual = {value:?}\n{}",
            self.dump()
        );
    }

    /// The device's state (`None`: never reported, or unknown device).
    pub fn state(&self, namespace: &str, name: &str) -> Option<DeviceStateRecord> {
        let store = self.inner.store.lock().unwrap();
        store.members.get(&id(namespace, name))?.state.clone()
    }

    /// The saved MapperInfos (by mapper name).
    pub fn mappers(&self) -> BTreeMap<String, pb::MapperInfo> {
        self.inner.store.lock().unwrap().mappers.clone()
    }

    /// The devices of the DMI cache (`ns/name`).
    pub fn cached_devices(&self) -> BTreeSet<String> {
        self.inner
            .store
            .lock()
            .unwrap()
            .devices
            .keys()
            .cloned()
            .collect()
    }

    /// The models of the DMI cache (`ns/name`).
    pub fn cached_models(&self) -> BTreeSet<String> {
        self.inner
            .store
            .lock()
            .unwrap()
            .models
            .keys()
            .cloned()
            .collect()
    }

    /// The counters.
    pub fn counters(&self) -> DmiCounters {
        *self.inner.counters.lock().unwrap()
    }

    /// Everything logged, in order.
    pub fn log(&self) -> Vec<DmiLog> {
        self.inner.log.lock().unwrap().clone()
    }

    /// The log lines of one kind.
    pub fn logged(&self, kind: DmiLogKind) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| l.kind == kind)
            .map(|l| l.text)
            .collect()
    }

    /// The twin store, counters and log, for a failing test's message.
    pub fn dump(&self) -> String {
        let mut s = format!("DMI edgecore stand-in {:?}\ntwins:\n", self.counters());
        {
            let store = self.inner.store.lock().unwrap();
            for (id, m) in &store.members {
                s.push_str(&format!(
                    "  {id}: {} state {:?}\n",
                    String::from_utf8_lossy(&to_go_json(&m.twins)),
                    m.state
                ));
            }
        }
        s.push_str("log:\n");
        for l in self.log() {
            s.push_str(&format!("  {:?} {}\n", l.kind, l.text));
        }
        s
    }
}

impl Drop for DmiEdgecore {
    fn drop(&mut self) {
        self.inner.halt();
    }
}
