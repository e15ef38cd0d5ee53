//! A stand-in for cloudcore's upstream (cloud/pkg/devicecontroller/controller/upstream.go of KubeEdge v1.23.1): it
//! applies edge syncs (the twins of one `edge_updated` message) to the DeviceStatus in a [`FakeApi`], over HTTP, the
//! way cloudcore does (docs/kubeedge.md section 8, golden `cloud01_upstream_devicestatus_patches.json`):
//! - only twins named in the Device's `spec.properties` are kept (an unknown Device: the sync is dropped);
//! - `reported` from `actual`, `observedDesired` from `expected`, each `{value, metadata}` with metadata replaced by
//!   `{timestamp: "<the value's ms>", type: <the twin's type>}` (a key only when the edge sent it);
//! - the first value of a twin DeviceStatus does not hold yet is lost: `findOrCreateTwinByName` appends a copy of a
//!   fresh twin and writes into the original, so an entry with empty `reported`/`observedDesired` appears;
//! - one JSON merge patch of the whole `status.twins` list of `devicestatuses/<name>`, without a resourceVersion:
//!   whatever another writer put into the list since cloudcore read it is overwritten.
//!
//! cloudcore computes the list from its cache of DeviceStatus (`deviceStatusManager.DeviceStatus`), not from the API
//! server. Two writers share that cache (upstream.go `updateDeviceStatus`, downstream.go `deviceStatusUpdated`): the
//! status worker (`updateDeviceStatusWorkers`, 1 by default) stores its own result before it patches, and the
//! DeviceStatus informer stores the object of every watch event when the event arrives. An event is a write that
//! happened earlier, so when it arrives after the worker's next write of the same Device, the cache falls back to
//! the older object, and the next sync of that Device patches the whole list computed from it: a twin written in
//! between goes back to its previous value, and stays there until the edge reports it again. Real run (issue 22,
//! 20 Devices installing at once on one node): fleet-04's `firmware` back to "" for 71 s, fleet-13's
//! `firmware-version` back to "" for 88 s, blinky-1's `firmware-state` from `verifying` back to `downloading:0`.
//! - [`Cloudcore::new`]: the cache is never behind (the stand-in reads the object right before each patch).
//! - [`Cloudcore::under_load`]: the cache as above, fed by a real watch of `devicestatuses` whose events are applied
//!   [`Load::informer_lag`] after they arrive, and a worker that spends [`Load::per_sync`] before each sync (the API
//!   server's latency and the other Devices' syncs ahead of it in the one worker's queue). With
//!   `per_sync < informer_lag < 2 x per_sync`, the three syncs of one DMI report (one per twin, golden d02) revert the
//!   second twin: the third is computed from the object the first one wrote.
//!
//! A missing DeviceStatus is created empty first (`getOrCreateDeviceStatusForDevice`). Twins are applied in name order
//! (Go iterates the message's map in random order: several new twins in one sync may be appended in any order).
//! `state/update` syncs (`state`, `lastOnlineTime`) are not modelled.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqtt_schema::MsgTwin;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;
use twinflash_harness::FakeApi;

const GROUP: &str = "/apis/devices.kubeedge.io/v1beta1";

/// cloudcore's upstream, writing to one API server.
#[derive(Debug, Clone)]
pub struct Cloudcore {
    addr: SocketAddr,
    cache: Option<Arc<StatusCache>>,
}

/// How far behind cloudcore's DeviceStatus cache runs ([`Cloudcore::under_load`]; module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// From a DeviceStatus write to its watch event being stored in the cache.
    pub informer_lag: Duration,
    /// What the status worker spends before it computes each sync.
    pub per_sync: Duration,
}

/// `deviceStatusManager.DeviceStatus`: `ns/name` to the DeviceStatus object, written by the worker and the informer.
#[derive(Debug)]
struct StatusCache {
    load: Load,
    objects: Arc<Mutex<HashMap<String, Value>>>,
    watch: JoinHandle<()>,
}

impl Drop for StatusCache {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// A background [`Cloudcore`] that keeps applying a sync ([`Cloudcore::spawn_writer`]); stops when dropped.
#[derive(Debug)]
pub struct CloudcoreWriter {
    twins: Arc<Mutex<BTreeMap<String, MsgTwin>>>,
    syncs: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl CloudcoreWriter {
    /// Replaces the twins of the sync applied from now on (e.g. the `expected` edgecore holds after an intent).
    pub fn set(&self, twins: BTreeMap<String, MsgTwin>) {
        *self.twins.lock().unwrap() = twins;
    }

    /// Stops the writer (an aborted sync may have reached the API server) and returns the syncs it completed.
    pub async fn stop(mut self) -> usize {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.syncs()
    }

    /// Syncs applied so far (patches sent).
    pub fn syncs(&self) -> usize {
        self.syncs.load(Ordering::Relaxed)
    }
}

impl Drop for CloudcoreWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A twin of an edge sync: `actual` and/or `expected` with their timestamps, and the twin's type.
pub fn sync_twin(actual: Option<&str>, expected: Option<&str>, timestamp_ms: i64) -> MsgTwin {
    let value = |v: &str| mqtt_schema::TwinValue {
        value: Some(v.to_owned()),
        metadata: Some(mqtt_schema::ValueMetadata {
            timestamp: timestamp_ms,
        }),
    };
    MsgTwin {
        actual: actual.map(value),
        expected: expected.map(value),
        optional: Some(true),
        metadata: Some(mqtt_schema::TypeMetadata::new("string")),
        ..MsgTwin::default()
    }
}

/// The twins every twinflash Device declares in `spec.properties` (cloudcore keeps only declared twins).
pub const FIRMWARE_TWINS: [&str; 3] = ["firmware", "firmware-version", "firmware-state"];

impl Cloudcore {
    /// A stand-in writing to `api`, its cache never behind.
    pub fn new(api: &FakeApi) -> Cloudcore {
        Cloudcore {
            addr: api.addr(),
            cache: None,
        }
    }

    /// A stand-in writing to `api` whose DeviceStatus cache lags as `load` says (module doc); needs a tokio runtime.
    /// The watch stops when the last clone is dropped.
    pub fn under_load(api: &FakeApi, load: Load) -> Cloudcore {
        let objects = Arc::new(Mutex::new(HashMap::new()));
        let watch = tokio::spawn(informer(api.addr(), load.informer_lag, objects.clone()));
        Cloudcore {
            addr: api.addr(),
            cache: Some(Arc::new(StatusCache {
                load,
                objects,
                watch,
            })),
        }
    }

    /// Puts a Device `namespace/name` declaring [`FIRMWARE_TWINS`] (and nothing else) into `api`.
    pub fn declare_device(api: &FakeApi, namespace: &str, name: &str) {
        api.put(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"properties": FIRMWARE_TWINS.iter().map(|t| json!({"name": t})).collect::<Vec<_>>()},
        }))
        .unwrap();
    }

    /// The `reported` value of twin `twin` in DeviceStatus `namespace/name` of `api` (what cloudcore wrote).
    pub fn reported(api: &FakeApi, namespace: &str, name: &str, twin: &str) -> Option<String> {
        let ds = api.get(
            "devices.kubeedge.io",
            "v1beta1",
            "devicestatuses",
            namespace,
            name,
        )?;
        ds["status"]["twins"]
            .as_array()?
            .iter()
            .find(|t| t["propertyName"] == twin)?["reported"]["value"]
            .as_str()
            .map(str::to_owned)
    }

    /// Applies every sync of `edgecore` from now on, in order (edgehub to cloudhub to the upstream controller). The
    /// task ends with the stand-in; abort it to stop following.
    pub fn follow(&self, edgecore: &crate::Edgecore) -> JoinHandle<()> {
        self.follow_syncs(edgecore.syncs())
    }

    /// Applies every sync of a stream, in order (e.g. [`crate::DmiEdgecore::syncs`]); the task ends with the
    /// stream.
    pub fn follow_syncs(
        &self,
        mut syncs: tokio::sync::mpsc::UnboundedReceiver<crate::CloudSync>,
    ) -> JoinHandle<()> {
        let cloudcore = self.clone();
        tokio::spawn(async move {
            while let Some(s) = syncs.recv().await {
                let ns = s.namespace.clone().unwrap_or_default();
                cloudcore.apply_sync(&ns, &s.name, &s.twins).await;
            }
        })
    }

    /// Applies one edge sync of Device `namespace/name` as cloudcore does; returns the merge-patch body sent, or
    /// `None` when the Device does not exist (cloudcore drops the sync).
    pub async fn apply_sync(
        &self,
        namespace: &str,
        name: &str,
        twins: &BTreeMap<String, MsgTwin>,
    ) -> Option<Value> {
        let device_path = format!("{GROUP}/namespaces/{namespace}/devices/{name}");
        let (code, device) = request(self.addr, "GET", &device_path, None).await;
        if code == 404 {
            return None;
        }
        assert_eq!(code, 200, "GET {device_path}: {device}");
        let properties: Vec<&str> = device["spec"]["properties"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        let status_path = format!("{GROUP}/namespaces/{namespace}/devicestatuses/{name}");
        let key = format!("{namespace}/{name}");
        if let Some(cache) = &self.cache {
            tokio::time::sleep(cache.load.per_sync).await;
        }
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.objects.lock().unwrap().get(&key).cloned());
        let (code, mut current) = match cached {
            Some(object) => (200, object),
            None => request(self.addr, "GET", &status_path, None).await,
        };
        if code == 404 {
            let create = json!({
                "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceStatus",
                "metadata": {"name": name, "namespace": namespace, "ownerReferences": [{
                    "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device", "name": name,
                    "uid": device["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
                }]},
                "spec": {}, "status": {},
            });
            let path = format!("{GROUP}/namespaces/{namespace}/devicestatuses");
            let (code, created) = request(self.addr, "POST", &path, Some(&create)).await;
            assert!(code == 201 || code == 409, "POST {path}: {created}");
            current = created;
        }
        // Decoded into KubeEdge's Twin struct and encoded again: only its fields survive.
        let mut list: Vec<Value> = current["status"]["twins"]
            .as_array()
            .map(|ts| ts.iter().map(normalized).collect())
            .unwrap_or_default();
        for (twin_name, twin) in twins {
            if !properties.contains(&twin_name.as_str()) {
                continue;
            }
            let Some(i) = list
                .iter()
                .position(|t| t["propertyName"] == twin_name.as_str())
            else {
                // findOrCreateTwinByName: a copy is appended, the values go into the original and are lost.
                list.push(normalized(&json!({"propertyName": twin_name})));
                continue;
            };
            let kind = twin.metadata.as_ref().map(|m| m.value_type.clone());
            let from = |v: &Option<mqtt_schema::TwinValue>| {
                let v = v.as_ref()?;
                let ts = v.metadata.as_ref().map(|m| m.timestamp);
                Some(property(v.value.as_deref()?, ts, kind.as_deref()))
            };
            if let Some(p) = from(&twin.actual) {
                list[i]["reported"] = p;
            }
            if let Some(p) = from(&twin.expected) {
                list[i]["observedDesired"] = p;
            }
        }
        // `twins` is `omitempty` in cloudcore's patch struct.
        let body = if list.is_empty() {
            json!({"status": {}})
        } else {
            json!({"status": {"twins": list}})
        };
        // "Store the status in cache so that when update is received by informer" (upstream.go), then patch.
        if let Some(cache) = &self.cache {
            current["status"]["twins"] = Value::Array(list.clone());
            cache.objects.lock().unwrap().insert(key, current);
        }
        let (code, answer) = request(self.addr, "PATCH", &status_path, Some(&body)).await;
        assert_eq!(code, 200, "PATCH {status_path}: {answer}");
        Some(body)
    }

    /// Keeps applying `twins` to `namespace/name` every `period` (racing other writers of DeviceStatus) until the
    /// returned writer is dropped; [`CloudcoreWriter::set`] changes what it applies.
    pub fn spawn_writer(
        &self,
        namespace: &str,
        name: &str,
        twins: BTreeMap<String, MsgTwin>,
        period: Duration,
    ) -> CloudcoreWriter {
        let shared = Arc::new(Mutex::new(twins));
        let syncs = Arc::new(AtomicUsize::new(0));
        let (me, ns, n, t, s) = (
            self.clone(),
            namespace.to_owned(),
            name.to_owned(),
            shared.clone(),
            syncs.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let twins = t.lock().unwrap().clone();
                if me.apply_sync(&ns, &n, &twins).await.is_some() {
                    s.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(period).await;
            }
        });
        CloudcoreWriter {
            twins: shared,
            syncs,
            task,
        }
    }
}

/// The DeviceStatus informer: a watch of every `devicestatuses` object (first the current ones as ADDED), each event
/// stored in `objects` `lag` after it arrived, in order (downstream.go `syncDeviceStatus`). Watches again when the
/// stream ends.
async fn informer(addr: SocketAddr, lag: Duration, objects: Arc<Mutex<HashMap<String, Value>>>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Value)>();
    let store = tokio::spawn(async move {
        while let Some((due, event)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            let object = &event["object"];
            let key = format!(
                "{}/{}",
                object["metadata"]["namespace"].as_str().unwrap_or_default(),
                object["metadata"]["name"].as_str().unwrap_or_default()
            );
            let mut objects = objects.lock().unwrap();
            match event["type"].as_str() {
                Some("ADDED" | "MODIFIED") => {
                    objects.insert(key, object.clone());
                }
                Some("DELETED") => {
                    objects.remove(&key);
                }
                _ => {}
            }
        }
    });
    let _stop_store = AbortOnDrop(store);
    loop {
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = BufReader::new(stream);
        let head = format!(
            "GET {GROUP}/devicestatuses?watch=true HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\
             User-Agent: cloudcore-standin\r\n\r\n"
        );
        if stream.get_mut().write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        // Status line and headers; the body is chunked, one JSON event per line.
        let mut line = String::new();
        loop {
            line.clear();
            match stream.read_line(&mut line).await {
                Ok(n) if n > 0 && line != "\r\n" => {}
                _ => break,
            }
        }
        let mut pending = Vec::new();
        loop {
            line.clear();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                break;
            }
            let Ok(size) = usize::from_str_radix(line.trim(), 16) else {
                break;
            };
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            if stream.read_exact(&mut chunk).await.is_err() {
                break;
            }
            pending.extend_from_slice(&chunk[..size]);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let event: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(event) = serde_json::from_slice::<Value>(&event) {
                    let _ = tx.send((tokio::time::Instant::now() + lag, event));
                }
            }
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A `TwinProperty` as cloudcore writes it: metadata keys only for what the edge sent (an empty map is omitted).
fn property(value: &str, timestamp: Option<i64>, kind: Option<&str>) -> Value {
    let mut metadata = Map::new();
    if let Some(ts) = timestamp {
        metadata.insert("timestamp".into(), json!(ts.to_string()));
    }
    if let Some(k) = kind {
        metadata.insert("type".into(), json!(k));
    }
    let mut p = json!({"value": value});
    if !metadata.is_empty() {
        p["metadata"] = Value::Object(metadata);
    }
    p
}

/// A twin as Go's `v1beta1.Twin` round-trips it: `propertyName`, `reported` and `observedDesired` (each
/// `{value, metadata?}`), nothing else.
fn normalized(t: &Value) -> Value {
    let prop = |p: &Value| {
        let mut out = json!({"value": p["value"].as_str().unwrap_or("")});
        if let Some(m) = p["metadata"].as_object().filter(|m| !m.is_empty()) {
            out["metadata"] = Value::Object(m.clone());
        }
        out
    };
    let mut out = Map::new();
    if let Some(n) = t["propertyName"].as_str().filter(|n| !n.is_empty()) {
        out.insert("propertyName".into(), json!(n));
    }
    out.insert("reported".into(), prop(&t["reported"]));
    out.insert("observedDesired".into(), prop(&t["observedDesired"]));
    Value::Object(out)
}

/// One HTTP/1.1 request with a JSON body (`merge-patch+json` for PATCH), `Connection: close`: (status, JSON body).
async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let bytes = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let content_type = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nUser-Agent: cloudcore-standin\r\nConnection: close\r\n\r\n",
        bytes.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}
