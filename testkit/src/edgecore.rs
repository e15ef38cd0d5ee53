//! [`Edgecore`]: an in-process stand-in for KubeEdge's edgecore (v1.23.1) on the MQTT side, for tests and the demo.
//!
//! The kind [`crate::Cloud`] observer answered everything at once, forgot nothing and never went away, so tests
//! against it passed where the real edgecore loses messages. This one copies the behaviours that matter, each traced
//! to a fact of docs/kubeedge.md (`§N "phrase"`) or to a golden vector of mqtt-schema/tests/data/kubeedge/ (named by
//! file) in the comment where it is implemented. docs/kubeedge.md section 9 lists them, and what is NOT modelled.
//!
//! Rules, in short: a clean-session QoS 1 client that reconnects every 5 s and publishes nothing on (re)connect; a
//! twin store written to a JSON file on every processed change and reloaded at start; devices known only when added;
//! edgecore's `twin/update` pipeline (validation, 400/404, no comparison, result, document, delta, cloud sync) and
//! `twin/get`; a switchable cloud link that drops syncs while down.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_schema::gojson::decode;
use mqtt_schema::topic::TWIN_UPDATE_ERROR_RESULT;
use mqtt_schema::validate::{TYPE_DELETED, validate_value};
use mqtt_schema::{
    BaseMessage, DeviceId, DeviceTopicKind, DeviceTwinDocument, DeviceTwinResult, MsgTwin,
    ResultMessage, Topic, TopicLayout, TwinDoc, TwinMap, TwinValue, TwinVersion, TypeMetadata,
    ValueMetadata, build_device_twin_delta, build_twin_get_result, to_go_json,
    unmarshal_device_twin_update,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// A twin as edgecore stores it: expected and actual `{value, metadata.timestamp}`, `optional`, `metadata.type` and
/// both versions (edge/pkg/devicetwin/dttype `MsgTwin`, the in-memory form of a `device_twin` row).
pub type StoredTwin = MsgTwin;

/// The reconnect interval of edgecore's broker clients (§8 "a reconnect loop every 5 s").
pub const EDGECORE_RECONNECT: Duration = Duration::from_secs(5);

/// A clock in Unix milliseconds; tests that compare bytes with golden vectors fix it.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// How the stand-in connects and where it keeps its store.
#[derive(Clone)]
pub struct EdgecoreOptions {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// The store file (edgecore's sqlite database in the real one), created on the first write.
    pub store: PathBuf,
    /// Wait after a connection error before connecting again. Keep [`EDGECORE_RECONNECT`] unless the test is not
    /// about reconnects and only wants speed.
    pub reconnect: Duration,
    /// MQTT client id.
    pub client_id: String,
    /// Device ids in topics (§1); edgecore v1.23 uses the namespaced layout.
    pub layout: TopicLayout,
    /// Server-side clock for timestamps (default: the system clock).
    pub clock: Clock,
    /// Event ids of deltas and syncs as the golden vectors have them (`00000000-0000-4000-8000-00000000000N`, N = 1
    /// for the delta and 2 for the sync of each update), instead of unique ones.
    pub golden_ids: bool,
}

impl std::fmt::Debug for EdgecoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgecoreOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("store", &self.store)
            .field("reconnect", &self.reconnect)
            .field("client_id", &self.client_id)
            .field("layout", &self.layout)
            .field("golden_ids", &self.golden_ids)
            .finish_non_exhaustive()
    }
}

static INSTANCES: AtomicU64 = AtomicU64::new(0);

fn system_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl EdgecoreOptions {
    /// Options for a broker on 127.0.0.1:`port` and a store at `store`, with edgecore's 5 s reconnect.
    pub fn new(port: u16, store: impl Into<PathBuf>) -> Self {
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        EdgecoreOptions {
            host: "127.0.0.1".into(),
            port,
            store: store.into(),
            reconnect: EDGECORE_RECONNECT,
            client_id: format!("edgecore-standin-{}-{n}", std::process::id()),
            layout: TopicLayout::Namespaced,
            clock: Arc::new(system_ms),
            golden_ids: false,
        }
    }
}

/// One edge -> cloud sync (`device/{id}/twin/edge_updated`, carried by edgehub, not MQTT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudSync {
    /// The device id as in topics: `namespace/name`.
    pub device: String,
    /// The namespace (`None` in the legacy layout).
    pub namespace: Option<String>,
    /// The device name.
    pub name: String,
    /// The updated twins with their versions, exactly what edgecore syncs: for an MQTT `twin/update` only the sides
    /// the update set (p02_set_expected_firmware_04_cloud_edge_updated carries `expected` only), unlike the DMI path
    /// of the cloud01 vector, where both sides travel. A deleted twin has `metadata.type = "deleted"`.
    pub twins: BTreeMap<String, StoredTwin>,
    /// The content bytes (a `DeviceTwinResult` in Go JSON, byte-identical to the `*_cloud_edge_updated` vectors).
    pub json: Vec<u8>,
}

/// What a logged message was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received from the broker.
    Received,
    /// Published to the broker.
    Sent,
    /// Synced to the cloud (topic = the edge_updated resource).
    Synced,
    /// A sync dropped because the cloud link was down.
    DroppedSync,
}

/// One message of the log.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Received, sent, synced or dropped.
    pub direction: Direction,
    /// The MQTT topic (or the cloud resource of a sync).
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// When.
    pub at: Instant,
}

/// What the stand-in did, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// CONNACKs received (first connect and every reconnect).
    pub connects: u64,
    /// SUBACKs received: the stand-in is subscribed (again).
    pub subscriptions: u64,
    /// `twin/update` messages processed (including refused ones).
    pub updates: u64,
    /// Successful `twin/update/result` messages published.
    pub results: u64,
    /// `twin/update/document` messages published.
    pub documents: u64,
    /// `twin/update/delta` messages published.
    pub deltas: u64,
    /// `twin/get` requests answered (any code).
    pub gets: u64,
    /// Results with code 400.
    pub bad_requests: u64,
    /// Results with code 404.
    pub not_found: u64,
    /// Syncs sent to the cloud.
    pub syncs_sent: u64,
    /// Syncs dropped while the cloud link was down.
    pub syncs_dropped: u64,
}

#[derive(Debug, Clone, Default)]
struct Device {
    properties: Vec<String>,
    twins: BTreeMap<String, StoredTwin>,
}

/// A sync waiting for the MQTT messages of its update to go out first.
type PendingSync = (DeviceId, BTreeMap<String, MsgTwin>, i64);

struct Shared {
    opts: EdgecoreOptions,
    devices: Mutex<BTreeMap<String, Device>>,
    counters: Mutex<Counters>,
    log: Mutex<Vec<Logged>>,
    cloud_up: AtomicBool,
    sync_tx: Mutex<Vec<UnboundedSender<CloudSync>>>,
    ids: AtomicU64,
    run: u64,
}

/// The edgecore stand-in. Dropping it stops it like [`Edgecore::stop`].
pub struct Edgecore {
    shared: Arc<Shared>,
    client: AsyncClient,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Edgecore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edgecore")
            .field("opts", &self.shared.opts)
            .finish_non_exhaustive()
    }
}

/// Writes the store: `{"<ns>/<name>": {"properties": [...], "twin": {<name>: MsgTwin}}}`. Every processed change
/// is written before anything is published (§8 "keeps its twins in sqlite ... a database write" per update).
fn save(path: &Path, devices: &BTreeMap<String, Device>) {
    let mut doc = serde_json::Map::new();
    for (id, d) in devices {
        let twins: serde_json::Value =
            serde_json::from_slice(&to_go_json(&d.twins)).expect("Go JSON is JSON");
        doc.insert(
            id.clone(),
            serde_json::json!({"properties": d.properties, "twin": twins}),
        );
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).expect("a JSON value")).expect("store");
    std::fs::rename(&tmp, path).expect("store");
}

/// The twin as sqlite gives it back (dttype `DeviceTwinToMsgTwin`): an empty or nil value is not stored, so its
/// side is absent after a reload; `optional` and `metadata` are always present.
pub(crate) fn reloaded(mut t: MsgTwin) -> MsgTwin {
    for side in [&mut t.expected, &mut t.actual] {
        if side.as_ref().is_some_and(|v| v.value_or_empty().is_empty()) {
            *side = None;
        }
    }
    t.optional = Some(t.optional.unwrap_or(true));
    t.metadata = Some(t.metadata.unwrap_or_default());
    t
}

/// Reloads the store (§8 "reloads them at start (`SyncSqlite`)"). A missing file is an empty store.
fn load(path: &Path) -> BTreeMap<String, Device> {
    let Ok(bytes) = std::fs::read(path) else {
        return BTreeMap::new();
    };
    let doc: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes).expect("the stand-in's store is JSON");
    doc.into_iter()
        .map(|(id, v)| {
            let properties = v["properties"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect();
            let raw = serde_json::to_vec(&v["twin"]).expect("JSON");
            let twins: BTreeMap<String, MsgTwin> = decode(&raw).expect("stored twins decode");
            let twins = twins.into_iter().map(|(k, t)| (k, reloaded(t))).collect();
            (id, Device { properties, twins })
        })
        .collect()
}

fn strip_versions(t: &MsgTwin) -> MsgTwin {
    MsgTwin {
        expected_version: None,
        actual_version: None,
        ..t.clone()
    }
}

fn bump(v: &mut Option<TwinVersion>) -> TwinVersion {
    // dtmanager `dealVersion` with RestDealType: the edge version grows by one, the cloud version stays.
    let v = v.get_or_insert_with(TwinVersion::default);
    v.edge += 1;
    v.clone()
}

fn type_of(t: &MsgTwin) -> String {
    t.value_type().unwrap_or("").to_owned()
}

/// What one `twin/update` does to a device's twins (dtmanager `DealMsgTwin` with RestDealType, the path of MQTT
/// updates): the result twins, the documents and the sync twins; or the reason of a 400.
#[derive(Default)]
pub(crate) struct Dealt {
    result: TwinMap,
    document: BTreeMap<String, Option<TwinDoc>>,
    pub(crate) sync: BTreeMap<String, MsgTwin>,
    changed: bool,
}

/// dtmanager `dealTwinDelete` for a `"key": null` on a stored twin (§5 "`"key": null` deletes an optional twin";
/// p04_delete_twin_*: result `null`, document `current: null`, sync with type `deleted` and versions).
fn delete(out: &mut Dealt, key: &str, twin: &mut MsgTwin) {
    let last = strip_versions(twin);
    if twin.optional != Some(true) {
        return; // a required twin is not deleted, and nothing is reported
    }
    if twin.is_deleted() {
        // Deleting a deleted twin: edgecore returns early and leaves its document and an empty sync entry behind.
        out.document.insert(
            key.to_owned(),
            Some(TwinDoc {
                last: Some(last),
                current: None,
            }),
        );
        out.sync.insert(key.to_owned(), MsgTwin::default());
        return;
    }
    let mut sync = None;
    let had_expected = twin.expected_version.is_some();
    twin.expected_version
        .get_or_insert_with(TwinVersion::default);
    if had_expected {
        bump(&mut twin.expected_version);
        twin.expected = Some(TwinValue::default());
        twin.metadata = Some(TypeMetadata::new(TYPE_DELETED));
        sync = Some(twin.clone());
    }
    let had_actual = twin.actual_version.is_some();
    twin.actual_version.get_or_insert_with(TwinVersion::default);
    if had_actual {
        bump(&mut twin.actual_version);
        twin.actual = Some(TwinValue::default());
        twin.metadata = Some(TypeMetadata::new(TYPE_DELETED));
        sync = Some(twin.clone());
    }
    if let Some(sync) = sync {
        out.changed = true;
        out.result.insert(key.to_owned(), None);
        out.sync.insert(key.to_owned(), sync);
        out.document.insert(
            key.to_owned(),
            Some(TwinDoc {
                last: Some(last),
                current: None,
            }),
        );
    }
}

/// dtmanager `dealTwinCompare` for an update of a stored twin. Every value present is a change, compared with
/// nothing (§5 "Every value present in an update counts as a change"); values are checked against the STORED type
/// (e46_metadata_type_change_on_existing, e46b: the stored type wins).
fn compare(
    out: &mut Dealt,
    key: &str,
    twin: &mut MsgTwin,
    msg: &MsgTwin,
    now: i64,
) -> Result<(), String> {
    let last = (!twin.is_deleted()).then(|| strip_versions(twin));
    let value_type = if twin.is_deleted() {
        msg.value_type().unwrap_or("string").to_owned()
    } else {
        type_of(twin)
    };
    let mut sync = MsgTwin::default();
    let mut changed = false;
    let meta = Some(ValueMetadata { timestamp: now });
    if let Some(e) = &msg.expected {
        // An expected value is checked only when the twin already has one (isTwinValueDiff).
        if twin.expected.is_some() {
            validate_value(&value_type, e.value_or_empty()).map_err(|e| e.to_string())?;
        }
        let version = bump(&mut twin.expected_version);
        let value = TwinValue {
            value: e.value.clone(),
            metadata: meta.clone(),
        };
        twin.expected = Some(value.clone());
        sync.expected = Some(value);
        sync.expected_version = Some(version);
        sync.optional = twin.optional;
        sync.metadata = twin.metadata.clone();
        changed = true;
    }
    if let Some(a) = &msg.actual {
        validate_value(&value_type, a.value_or_empty()).map_err(|e| e.to_string())?;
        let version = bump(&mut twin.actual_version);
        let value = TwinValue {
            value: a.value.clone(),
            metadata: meta,
        };
        twin.actual = Some(value.clone());
        sync.actual = Some(value);
        sync.actual_version = Some(version);
        sync.optional = twin.optional;
        sync.metadata = twin.metadata.clone();
        changed = true;
    }
    if let Some(o) = msg.optional
        && twin.optional == Some(true)
        && !o
    {
        twin.optional = Some(o);
        sync.optional = Some(o);
        changed = true;
    }
    match &msg.metadata {
        Some(m) if to_go_json(m) != to_go_json(&twin.metadata) => {
            if twin.is_deleted() {
                twin.metadata = Some(m.clone());
                sync.metadata = Some(m.clone());
            }
            changed = true;
        }
        None if twin.is_deleted() => {
            twin.metadata = Some(TypeMetadata::new("string"));
            sync.metadata = twin.metadata.clone();
            changed = true;
        }
        _ => {}
    }
    if changed {
        out.changed = true;
        out.document.insert(
            key.to_owned(),
            Some(TwinDoc {
                last,
                current: Some(strip_versions(twin)),
            }),
        );
        out.result
            .insert(key.to_owned(), Some(strip_versions(&sync)));
        out.sync.insert(key.to_owned(), sync);
    }
    Ok(())
}

/// dtmanager `dealTwinAdd` for a twin the device does not have (§5 "A new twin gets `optional: true` and
/// `metadata.type: "string"` unless given"); values are checked against the given type.
fn add(out: &mut Dealt, key: &str, msg: &MsgTwin, now: i64) -> Result<MsgTwin, String> {
    let value_type = msg.value_type().unwrap_or("string").to_owned();
    let mut twin = MsgTwin {
        optional: Some(msg.optional.unwrap_or(true)),
        metadata: Some(TypeMetadata::new(value_type.clone())),
        ..MsgTwin::default()
    };
    let meta = Some(ValueMetadata { timestamp: now });
    if let Some(e) = &msg.expected {
        validate_value(&value_type, e.value_or_empty()).map_err(|e| e.to_string())?;
        twin.expected = Some(TwinValue {
            value: e.value.clone(),
            metadata: meta.clone(),
        });
        twin.expected_version = Some(TwinVersion { cloud: 0, edge: 1 });
    }
    if let Some(a) = &msg.actual {
        validate_value(&value_type, a.value_or_empty()).map_err(|e| e.to_string())?;
        twin.actual = Some(TwinValue {
            value: a.value.clone(),
            metadata: meta,
        });
        twin.actual_version = Some(TwinVersion { cloud: 0, edge: 1 });
    }
    // The in-memory twin is what sqlite would give back (DeviceTwinToMsgTwin): an empty value is absent.
    let twin = reloaded(twin);
    out.changed = true;
    out.document.insert(
        key.to_owned(),
        Some(TwinDoc {
            last: None,
            current: (!twin.is_deleted()).then(|| strip_versions(&twin)),
        }),
    );
    out.result
        .insert(key.to_owned(), Some(strip_versions(&twin)));
    out.sync.insert(key.to_owned(), twin.clone());
    Ok(twin)
}

/// dtmanager `DealMsgTwin`: applies `update` to a copy of `twins`; on a value error the copy is thrown away (edgecore
/// reloads the device from sqlite) and the reason returned for a 400 on the device's result topic (e43, e46).
pub(crate) fn deal(
    twins: &BTreeMap<String, MsgTwin>,
    update: &TwinMap,
    now: i64,
) -> Result<(BTreeMap<String, MsgTwin>, Dealt), String> {
    let mut twins = twins.clone();
    let mut out = Dealt::default();
    // Go walks the map in random order; this walks it in key order (see docs/kubeedge.md section 9).
    for (key, msg) in update {
        match (twins.get_mut(key), msg) {
            (Some(twin), None) => delete(&mut out, key, twin),
            (Some(twin), Some(msg)) => compare(&mut out, key, twin, msg, now)?,
            (None, Some(msg)) => {
                let twin = add(&mut out, key, msg, now)?;
                twins.insert(key.clone(), twin);
            }
            (None, None) => {
                // dealTwinAdd fails ("the request body is wrong") without marking an error: the rest of the update
                // is skipped, an empty document entry stays, and the result goes out as if all went well.
                out.document.insert(key.clone(), Some(TwinDoc::default()));
                break;
            }
        }
    }
    Ok((twins, out))
}

impl Shared {
    fn now(&self) -> i64 {
        (self.opts.clock)()
    }

    /// A fresh event id for a delta (`k` = 1) or a sync (`k` = 2), as dttype `BuildBaseMessage` makes one.
    fn fresh_id(&self, k: u64) -> String {
        if self.opts.golden_ids {
            return format!("00000000-0000-4000-8000-{k:012}");
        }
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        format!(
            "{:08x}-{:04x}-4000-8000-{n:012x}",
            self.run >> 16,
            self.run & 0xffff
        )
    }

    fn log(&self, direction: Direction, topic: &str, payload: &[u8]) {
        self.log.lock().unwrap().push(Logged {
            direction,
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            at: Instant::now(),
        });
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.counters.lock().unwrap());
    }

    fn error_result(
        &self,
        out: &mut Vec<(String, Vec<u8>)>,
        topic: String,
        id: &str,
        code: i64,
        reason: &str,
    ) {
        let msg = ResultMessage::error(BaseMessage::new(id, self.now()), code, reason);
        self.count(|c| match code {
            400 => c.bad_requests += 1,
            404 => c.not_found += 1,
            _ => {}
        });
        out.push((topic, to_go_json(&msg)));
    }

    /// Handles one message; returns what to publish, in edgecore's order, and the sync to send after it.
    fn handle(&self, topic: &str, payload: &[u8]) -> (Vec<(String, Vec<u8>)>, Option<PendingSync>) {
        let (mut out, mut sync) = (Vec::new(), None);
        let Ok(parsed) = Topic::parse(topic, self.opts.layout) else {
            return (out, sync);
        };
        let Some((device, kind)) = parsed.device_kind() else {
            return (out, sync); // membership/get: nothing of it is modelled (docs/kubeedge.md section 9)
        };
        match kind {
            DeviceTopicKind::TwinUpdate => self.update(device, payload, &mut out, &mut sync),
            DeviceTopicKind::TwinGet => self.get(device, payload, &mut out),
            _ => {} // state/update: not modelled
        }
        (out, sync)
    }

    fn update(
        &self,
        device: &DeviceId,
        payload: &[u8],
        out: &mut Vec<(String, Vec<u8>)>,
        sync: &mut Option<PendingSync>,
    ) {
        self.count(|c| c.updates += 1);
        let id = device.to_string();
        let result_topic = Topic::device(device, DeviceTopicKind::TwinUpdateResult).to_string();
        // §4 "A message that fails to parse or validate gets a Result with code 400 on
        // `$hw/events/device//twin/update/result` (empty id)" (e04, e14, e26 edgecore_replies).
        let update = match unmarshal_device_twin_update(payload) {
            Ok(u) => u,
            Err(e) => {
                let topic = TWIN_UPDATE_ERROR_RESULT.to_owned();
                return self.error_result(out, topic, "", 400, &e.reason());
            }
        };
        let event_id = update.base.event_id.clone();
        let now = self.now();
        let mut devices = self.devices.lock().unwrap();
        // §4 "an unknown device gets 404 on its own result topic"; reason from dtmanager DealDeviceTwin.
        let Some(dev) = devices.get_mut(&id) else {
            drop(devices);
            let reason = "update rejected due to the device is not existed";
            return self.error_result(out, result_topic, &event_id, 404, reason);
        };
        let (twins, dealt) = match deal(
            &dev.twins,
            update.twin.as_ref().unwrap_or(&TwinMap::new()),
            now,
        ) {
            Ok(d) => d,
            Err(reason) => {
                drop(devices);
                return self.error_result(out, result_topic, &event_id, 400, &reason);
            }
        };
        dev.twins = twins;
        let delta_base = BaseMessage::new(self.fresh_id(1), now);
        let delta = build_device_twin_delta(delta_base, &dev.twins);
        if dealt.changed {
            // §8 "Every processed `twin/update` costs edgecore: a new version, a database write, ...".
            save(&self.opts.store, &devices);
        }
        drop(devices);
        // The result reuses the update's event_id: the end-to-end acknowledgement (§8 "a report with a unique
        // `event_id` gets its own `update/result`"); BuildDeviceTwinResult strips versions (p02_*_01, c10).
        let base = BaseMessage::new(event_id.clone(), now);
        out.push((
            result_topic,
            to_go_json(&build_twin_get_result(base.clone(), &dealt.result)),
        ));
        self.count(|c| c.results += 1);
        if !dealt.document.is_empty() {
            // p02_*_02_twin_update_document: last and current, the update's event_id; none for `"twin":{}` (e16).
            let doc = DeviceTwinDocument {
                base,
                twin: Some(dealt.document),
            };
            let topic = Topic::device(device, DeviceTopicKind::TwinUpdateDocument).to_string();
            out.push((topic, to_go_json(&doc)));
            self.count(|c| c.documents += 1);
        }
        // §5 "A delta is published only when `delta` is non-empty, with a fresh event_id, after every update while
        // a mismatch lasts" (p02_*_03, p03_*_99_delta_not_sent, e16).
        if let Some(delta) = delta {
            let topic = Topic::device(device, DeviceTopicKind::TwinUpdateDelta).to_string();
            out.push((topic, to_go_json(&delta)));
            self.count(|c| c.deltas += 1);
        }
        if !dealt.sync.is_empty() {
            // Sent after the MQTT messages, as edgecore orders them (p01_*_03 after _01 and _02).
            *sync = Some((device.clone(), dealt.sync, now));
        }
    }

    /// §8 "edgecore drops edge->cloud syncs while its cloud link is down" (p08_report_while_cloud_disconnected:
    /// dropped, never queued or re-sent). Content as p01_*_03_cloud_edge_updated.
    fn sync(&self, device: &DeviceId, twins: BTreeMap<String, MsgTwin>, now: i64) {
        let id = device.to_string();
        let resource = format!("device/{id}/twin/edge_updated");
        let msg = DeviceTwinResult {
            base: BaseMessage::new(self.fresh_id(2), now),
            twin: Some(
                twins
                    .iter()
                    .map(|(k, t)| (k.clone(), Some(t.clone())))
                    .collect(),
            ),
        };
        let json = to_go_json(&msg);
        if !self.cloud_up.load(Ordering::SeqCst) {
            self.count(|c| c.syncs_dropped += 1);
            self.log(Direction::DroppedSync, &resource, &json);
            return;
        }
        self.count(|c| c.syncs_sent += 1);
        self.log(Direction::Synced, &resource, &json);
        let sync = CloudSync {
            device: id,
            namespace: device.namespace().map(str::to_owned),
            name: device.name().to_owned(),
            twins,
            json,
        };
        self.sync_tx
            .lock()
            .unwrap()
            .retain(|tx| tx.send(sync.clone()).is_ok());
    }

    /// §8 "edgecore answers a `twin/get` from the twin store without writing anything" (p05_twin_get_*); an unknown
    /// device gets 404 "Device <ns>/<name> not found while getting twin" (§8, dtmanager DealGetTwin).
    fn get(&self, device: &DeviceId, payload: &[u8], out: &mut Vec<(String, Vec<u8>)>) {
        self.count(|c| c.gets += 1);
        let topic = Topic::device(device, DeviceTopicKind::TwinGetResult).to_string();
        let Ok(req) = decode::<BaseMessage>(payload) else {
            // Go's reason embeds `%#v` of its error, which cannot be copied byte for byte.
            let reason = format!(
                "Unmarshal twin info {} failed",
                String::from_utf8_lossy(payload)
            );
            return self.error_result(out, topic, "", 400, &reason);
        };
        let id = device.to_string();
        let twins: Option<TwinMap> = self.devices.lock().unwrap().get(&id).map(|d| {
            d.twins
                .iter()
                .map(|(k, t)| (k.clone(), Some(t.clone())))
                .collect()
        });
        match twins {
            Some(twins) => {
                let base = BaseMessage::new(req.event_id, self.now());
                out.push((topic, to_go_json(&build_twin_get_result(base, &twins))));
            }
            None => {
                let reason = format!("Device {id} not found while getting twin");
                self.error_result(out, topic, &req.event_id, 404, &reason);
            }
        }
    }
}

fn filters(layout: TopicLayout) -> Vec<SubscribeFilter> {
    // §2 "edgecore subscribes ... to `$hw/events/device/+/+/twin/+`, `$hw/events/device/+/+/state/update`,
    // `$hw/events/node/+/membership/get`", with QoS 1.
    let levels = match layout {
        TopicLayout::Namespaced => "+/+",
        TopicLayout::Legacy => "+",
    };
    [
        format!("$hw/events/device/{levels}/twin/+"),
        format!("$hw/events/device/{levels}/state/update"),
        "$hw/events/node/+/membership/get".to_owned(),
    ]
    .into_iter()
    .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce))
    .collect()
}

impl Edgecore {
    /// Loads the store and starts the stand-in's MQTT client; returns at once (the first connect may still fail,
    /// and is then retried every `reconnect`). Publishes nothing at start (§8 "edgecore sends nothing when it starts
    /// or reconnects"). Panics when the store file exists but is not the stand-in's JSON.
    pub fn spawn(opts: EdgecoreOptions) -> Edgecore {
        let devices = load(&opts.store);
        // §2 "clean sessions" and §8 "auto-reconnect off": rumqttc's own immediate reconnect is replaced by the
        // fixed wait below.
        let mut mqtt = MqttOptions::new(opts.client_id.clone(), opts.host.clone(), opts.port);
        mqtt.set_clean_session(true)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = twinflash_mqtt::client(mqtt);
        let run = (system_ms() as u64).wrapping_mul(2_654_435_761) ^ u64::from(std::process::id());
        let shared = Arc::new(Shared {
            opts,
            devices: Mutex::new(devices),
            counters: Mutex::new(Counters::default()),
            log: Mutex::new(Vec::new()),
            cloud_up: AtomicBool::new(true),
            sync_tx: Mutex::new(Vec::new()),
            ids: AtomicU64::new(1),
            run: run & 0xffff_ffff_ffff,
        });
        let (s, c) = (shared.clone(), client.clone());
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        s.count(|c| c.connects += 1);
                        // Subscribe again at each CONNACK: a clean session keeps no subscriptions.
                        let _ = c.subscribe_many(filters(s.opts.layout)).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => s.count(|c| c.subscriptions += 1),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        s.log(Direction::Received, &p.topic, &p.payload);
                        let (publish, sync) = s.handle(&p.topic, &p.payload);
                        for (topic, payload) in publish {
                            s.log(Direction::Sent, &topic, &payload);
                            // §2 "publishes with QoS 1, retain false".
                            let _ = c.try_publish(topic, QoS::AtLeastOnce, false, payload);
                        }
                        if let Some((device, twins, now)) = sync {
                            s.sync(&device, twins, now);
                        }
                    }
                    Ok(_) => {}
                    // §8 "a reconnect loop every 5 s".
                    Err(_) => tokio::time::sleep(s.opts.reconnect).await,
                }
            }
        });
        Edgecore {
            shared,
            client,
            task: Mutex::new(Some(task)),
        }
    }

    /// [`Edgecore::spawn`], then waits (at most [`crate::WAIT`]) until it is subscribed.
    pub async fn start(opts: EdgecoreOptions) -> Edgecore {
        let ec = Edgecore::spawn(opts);
        ec.wait_subscribed(1).await;
        ec
    }

    /// Waits until the stand-in has been subscribed `n` times in all (n - 1 reconnects); panics after
    /// [`crate::WAIT`].
    pub async fn wait_subscribed(&self, n: u64) {
        crate::wait_until(
            || self.counters().subscriptions >= n,
            || {
                format!(
                    "edgecore stand-in subscribed {n} times: {:?}",
                    self.counters()
                )
            },
        )
        .await;
    }

    /// Kills it abruptly, like SIGKILL: the task is aborted and the connection dropped without DISCONNECT. The
    /// store on disk keeps every processed change; [`Edgecore::start`] on the same path reloads it.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// The options it runs with.
    pub fn options(&self) -> &EdgecoreOptions {
        &self.shared.opts
    }

    /// Makes a device known, as cloudcore's membership update does on a Device add (§8 "cloudcore sends edgecore a
    /// membership update (id and name only, no twins)"): it starts with no twins; `properties` (the names in the
    /// Device's `spec.properties`) are kept for [`Edgecore::properties`] only. Written to the store.
    pub fn add_device(&self, id: &str, properties: &[&str]) {
        let mut devices = self.shared.devices.lock().unwrap();
        let d = devices.entry(id.to_owned()).or_default();
        d.properties = properties.iter().map(|p| (*p).to_owned()).collect();
        save(&self.shared.opts.store, &devices);
    }

    /// Forgets a device (a Device delete); its twins go with it.
    pub fn remove_device(&self, id: &str) {
        let mut devices = self.shared.devices.lock().unwrap();
        devices.remove(id);
        save(&self.shared.opts.store, &devices);
    }

    /// The property names given to [`Edgecore::add_device`].
    pub fn properties(&self, id: &str) -> Option<Vec<String>> {
        let devices = self.shared.devices.lock().unwrap();
        devices.get(id).map(|d| d.properties.clone())
    }

    /// Switches the cloud link: while down, every sync is dropped and counted (§8, p08).
    pub fn set_cloud_link(&self, up: bool) {
        self.shared.cloud_up.store(up, Ordering::SeqCst);
    }

    /// A stream of the syncs sent to the cloud from now on (for a cloudcore stand-in). Dropped syncs never appear.
    pub fn syncs(&self) -> UnboundedReceiver<CloudSync> {
        let (tx, rx) = unbounded_channel();
        self.shared.sync_tx.lock().unwrap().push(tx);
        rx
    }

    /// A device's stored twins, `None` for an unknown device.
    pub fn twin(&self, device: &str) -> Option<BTreeMap<String, StoredTwin>> {
        let devices = self.shared.devices.lock().unwrap();
        devices.get(device).map(|d| d.twins.clone())
    }

    /// The stored actual value of a twin (absent: `None`).
    pub fn actual(&self, device: &str, twin: &str) -> Option<String> {
        self.twin(device)?.get(twin)?.actual.as_ref()?.value.clone()
    }

    /// The stored expected value of a twin (absent: `None`).
    pub fn expected(&self, device: &str, twin: &str) -> Option<String> {
        self.twin(device)?
            .get(twin)?
            .expected
            .as_ref()?
            .value
            .clone()
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        *self.shared.counters.lock().unwrap()
    }

    /// Every message received, sent, synced or dropped, in order.
    pub fn log(&self) -> Vec<Logged> {
        self.shared.log.lock().unwrap().clone()
    }

    /// The messages of the log on exactly `topic` in `direction`.
    pub fn messages(&self, direction: Direction, topic: &str) -> Vec<Vec<u8>> {
        self.log()
            .into_iter()
            .filter(|l| l.direction == direction && l.topic == topic)
            .map(|l| l.payload)
            .collect()
    }

    /// Messages received and sent on one device's topics (`$hw/events/device/<id>/...`).
    pub fn device_messages(&self, device: &str) -> usize {
        let prefix = format!("$hw/events/device/{device}/");
        self.log()
            .iter()
            .filter(|l| {
                matches!(l.direction, Direction::Received | Direction::Sent)
                    && l.topic.starts_with(&prefix)
            })
            .count()
    }

    /// The store and the message log, for a failing test's message.
    pub fn dump(&self) -> String {
        let devices = self.shared.devices.lock().unwrap().clone();
        let mut s = format!("edgecore stand-in {:?}\nstore:\n", self.counters());
        for (id, d) in devices {
            s.push_str(&format!(
                "  {id}: {}\n",
                String::from_utf8_lossy(&to_go_json(&d.twins))
            ));
        }
        s.push_str("log:\n");
        for l in self.log() {
            s.push_str(&format!(
                "  {:?} {} {}\n",
                l.direction,
                l.topic,
                String::from_utf8_lossy(&l.payload)
            ));
        }
        s
    }

    /// Waits until the stored actual value of `twin` is `value`; panics with the store and the log after `within`.
    pub async fn wait_actual(&self, device: &str, twin: &str, value: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while tokio::time::Instant::now() < deadline {
            tick.tick().await;
            if self.actual(device, twin).as_deref() == Some(value) {
                return;
            }
        }
        panic!(
            "timed out after {within:?} waiting for {device} {twin} actual = {value:?}\n{}",
            self.dump()
        );
    }

    /// Publishes an ordinary `twin/update` setting `expected` of `twin` (as an app, or twinflash-cloud in edgecore
    /// mode, does) from a client of its own, and returns its event id once the broker has acknowledged it.
    pub async fn set_expected(&self, device: &str, twin: &str, value: &str) -> String {
        let opts = &self.shared.opts;
        let event_id = format!("set-expected-{}", self.shared.fresh_id(0));
        publish_expected(
            &opts.host,
            opts.port,
            opts.layout,
            device,
            twin,
            value,
            &event_id,
        )
        .await;
        event_id
    }

    /// The stand-in's own client (to publish as it would, in tests).
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }
}

impl Drop for Edgecore {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Publishes, as the cloud does, an update of `device`'s `twin` with `value` as its expected value (`event_id`) on
/// the broker `host:port`: what twinflash-cloud sends edgecore in mode `edgecore` (the stand-in's
/// [`Edgecore::set_expected`], and the real edgecore's in the test kit's real mode).
pub async fn publish_expected(
    host: &str,
    port: u16,
    layout: TopicLayout,
    device: &str,
    twin: &str,
    value: &str,
    event_id: &str,
) {
    let id = DeviceId::parse(device, layout).expect("a device id for the layout");
    let mut twins = TwinMap::new();
    twins.insert(
        twin.to_owned(),
        Some(MsgTwin {
            expected: Some(TwinValue::new(value)),
            metadata: Some(TypeMetadata::new("string")),
            ..MsgTwin::default()
        }),
    );
    let update = mqtt_schema::DeviceTwinUpdate {
        base: BaseMessage::new(event_id.to_owned(), system_ms()),
        twin: Some(twins),
    };
    let topic = Topic::device(&id, DeviceTopicKind::TwinUpdate).to_string();
    publish_once(host, port, &topic, to_go_json(&update)).await;
}

/// Connects a clean-session client, publishes one QoS 1 message, waits for its PUBACK (at most [`crate::WAIT`]),
/// and disconnects.
pub async fn publish_once(host: &str, port: u16, topic: &str, payload: Vec<u8>) {
    let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
    let opts = MqttOptions::new(
        format!("publish-once-{}-{n}", std::process::id()),
        host,
        port,
    );
    let (client, mut events) = twinflash_mqtt::client(opts);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .expect("queued");
    tokio::time::timeout(crate::WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the broker acknowledged the publish");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
}
