//! The object store of the fake API server: JSON objects keyed by resource, namespace and name,
//! one global resourceVersion counter, a bounded history of watch events and a broadcast of new
//! ones. It applies the API server's write rules (status subresource, generation, conflicts).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::resources::ResourceInfo;

/// A resource: API group (`""` for the core group), version and plural name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gvr {
    /// API group (`""` for core `/api/v1`).
    pub group: String,
    /// Version (`v1`, `v1beta1`, ...).
    pub version: String,
    /// Plural resource name (`devices`).
    pub plural: String,
}

impl Gvr {
    /// A resource from its three parts.
    pub fn new(group: &str, version: &str, plural: &str) -> Gvr {
        Gvr {
            group: group.to_owned(),
            version: version.to_owned(),
            plural: plural.to_owned(),
        }
    }

    /// `apiVersion` of its objects (`v1` or `group/version`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// The kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Deleted (the object as it was, with the resourceVersion of the deletion).
    Deleted,
}

impl EventType {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One write, as watchers see it.
#[derive(Debug, Clone)]
pub struct WatchRecord {
    /// The resourceVersion the write produced.
    pub rv: u64,
    /// The resource.
    pub gvr: Gvr,
    /// ADDED, MODIFIED or DELETED.
    pub kind: EventType,
    /// The object after the write.
    pub object: Value,
}

/// A refusal, sent as a `Status` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `BadRequest`, `Gone`, ...
    pub reason: &'static str,
    /// Human readable.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    /// The `Status` object of this refusal.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource: everything but `.status`.
    Main,
    /// The `/status` subresource: only `.status`.
    Status,
    /// Everything as given (the test API's `put`).
    Whole,
}

type Key = (Gvr, String, String);

/// New writes, as they happen.
pub type Receiver = broadcast::Receiver<Arc<WatchRecord>>;

/// Events kept for watches that resume from an older resourceVersion.
pub const HISTORY: usize = 100_000;

/// The store; the server keeps it behind a mutex.
pub struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Arc<WatchRecord>>,
    /// Highest resourceVersion dropped from the history (a watch from before it gets 410 Gone).
    dropped_up_to: u64,
    uids: u64,
    tx: broadcast::Sender<Arc<WatchRecord>>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            dropped_up_to: 0,
            uids: 0,
            tx: broadcast::channel(16_384).0,
        }
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The object without the parts whose change does not raise `metadata.generation`: `metadata`, and `.status` where
/// it is a subresource. As the API server's custom resource strategy
/// (apiextensions-apiserver `pkg/registry/customresource/strategy.go`, `PrepareForUpdate`: "except for the changes
/// to `metadata`, any other changes cause the generation to increment"; with the status subresource `.status` is
/// taken from the old object first). So on a CRD without the subresource (KubeEdge's Device, DeviceStatus) a status
/// write raises the generation, as seen on kube-apiserver v1.32 (docs/kubeedge.md section 10).
fn generation_part(obj: &Value, info: &ResourceInfo) -> Value {
    let mut v = obj.clone();
    if let Value::Object(m) = &mut v {
        m.remove("metadata");
        if info.status_subresource {
            m.remove("status");
        }
    }
    v
}

impl Store {
    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Objects of `gvr` (in `ns`, or every namespace), in namespace and name order.
    pub fn list(&self, gvr: &Gvr, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((g, n, _), _)| g == gvr && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// One object.
    pub fn get(&self, gvr: &Gvr, ns: &str, name: &str) -> Option<Value> {
        self.objects
            .get(&(gvr.clone(), ns.to_owned(), name.to_owned()))
            .cloned()
    }

    /// A receiver of every write from now on, and the history after `rv` (`Err` when events after
    /// `rv` were already dropped: 410 Gone).
    pub fn watch_from(&self, rv: u64) -> Result<(Vec<Arc<WatchRecord>>, Receiver), ApiError> {
        if rv < self.dropped_up_to {
            return Err(ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {rv} ({})", self.dropped_up_to),
            ));
        }
        let backlog = self.history.iter().filter(|r| r.rv > rv).cloned().collect();
        Ok((backlog, self.tx.subscribe()))
    }

    /// Every recorded write of `gvr` still in the history, oldest first.
    pub fn history(&self, gvr: &Gvr) -> Vec<Arc<WatchRecord>> {
        self.history
            .iter()
            .filter(|r| &r.gvr == gvr)
            .cloned()
            .collect()
    }

    fn record(&mut self, gvr: &Gvr, kind: EventType, object: Value) {
        let rec = Arc::new(WatchRecord {
            rv: self.rv,
            gvr: gvr.clone(),
            kind,
            object,
        });
        self.history.push_back(rec.clone());
        while self.history.len() > HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.dropped_up_to = old.rv;
            }
        }
        // No receiver is fine: nobody watches.
        let _ = self.tx.send(rec);
    }

    /// Creates `obj` in `ns` (`""`: cluster scoped). A missing name is made from `generateName`.
    /// Status is dropped unless `part` is [`Part::Whole`]. A custom resource starts at generation 1, a built-in
    /// type (`info.custom` false) has none.
    pub fn create(
        &mut self,
        gvr: &Gvr,
        ns: &str,
        mut obj: Value,
        part: Part,
        info: &ResourceInfo,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the body is not a JSON object",
            ));
        }
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let mut name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        if name.is_empty() {
            let Some(prefix) = obj["metadata"]["generateName"].as_str() else {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "metadata.name or metadata.generateName is required",
                ));
            };
            name = format!("{prefix}{:05x}", self.uids + 1);
        }
        let key = (gvr.clone(), ns.to_owned(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", gvr.plural),
            ));
        }
        self.rv += 1;
        self.uids += 1;
        if obj.get("apiVersion").is_none() {
            obj["apiVersion"] = json!(gvr.api_version());
        }
        if part != Part::Whole
            && let Value::Object(m) = &mut obj
        {
            m.remove("status");
        }
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if !ns.is_empty() {
            meta["namespace"] = json!(ns);
        }
        meta["resourceVersion"] = json!(self.rv.to_string());
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uids));
        meta["creationTimestamp"] = json!(now_rfc3339());
        match meta {
            Value::Object(m) if info.custom => {
                m.insert("generation".into(), json!(1));
            }
            Value::Object(m) => {
                m.remove("generation");
            }
            _ => {}
        }
        self.objects.insert(key, obj.clone());
        self.record(gvr, EventType::Added, obj.clone());
        Ok(obj)
    }

    /// Replaces the object with `candidate` within `part`: a `metadata.resourceVersion` in the
    /// candidate that is not the current one is a 409 Conflict. Identity fields are kept; a custom
    /// resource's `generation` grows when anything outside metadata changed (outside metadata and status where
    /// status is a subresource: [`generation_part`]); a write that changes nothing is not recorded (no new
    /// resourceVersion, no event), as the API server does.
    pub fn update(
        &mut self,
        gvr: &Gvr,
        ns: &str,
        name: &str,
        candidate: Value,
        part: Part,
        info: &ResourceInfo,
    ) -> Result<Value, ApiError> {
        let key = (gvr.clone(), ns.to_owned(), name.to_owned());
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", gvr.plural),
            ));
        };
        if !candidate.is_object() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the body is not a JSON object",
            ));
        }
        let current = old["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if let Some(rv) = candidate["metadata"]["resourceVersion"].as_str()
            && !rv.is_empty()
            && rv != current
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                     please apply your changes to the latest version and try again",
                    gvr.plural
                ),
            ));
        }
        let mut new = match part {
            Part::Status => {
                let mut n = old.clone();
                match candidate.get("status") {
                    Some(s) if !s.is_null() => n["status"] = s.clone(),
                    _ => {
                        if let Value::Object(m) = &mut n {
                            m.remove("status");
                        }
                    }
                }
                n
            }
            Part::Main => {
                let mut n = candidate;
                if let Value::Object(m) = &mut n {
                    m.remove("status");
                    if let Some(s) = old.get("status") {
                        m.insert("status".into(), s.clone());
                    }
                }
                n
            }
            Part::Whole => candidate,
        };
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "resourceVersion",
            "generation",
        ] {
            match old["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    if let Value::Object(m) = &mut new["metadata"] {
                        m.remove(k);
                    }
                }
            }
        }
        if new.get("apiVersion").is_none() {
            new["apiVersion"] = json!(gvr.api_version());
        }
        if new == old {
            return Ok(old);
        }
        if info.custom && generation_part(&new, info) != generation_part(&old, info) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key, new.clone());
        self.record(gvr, EventType::Modified, new.clone());
        Ok(new)
    }

    /// Deletes the object; returns it as it was (with the deletion's resourceVersion).
    pub fn delete(&mut self, gvr: &Gvr, ns: &str, name: &str) -> Result<Value, ApiError> {
        let key = (gvr.clone(), ns.to_owned(), name.to_owned());
        let Some(mut old) = self.objects.remove(&key) else {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", gvr.plural),
            ));
        };
        self.rv += 1;
        old["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(gvr, EventType::Deleted, old.clone());
        Ok(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gvr() -> Gvr {
        Gvr::new("devices.kubeedge.io", "v1beta1", "devices")
    }

    /// A CRD with the status subresource.
    fn with_status() -> ResourceInfo {
        ResourceInfo::custom("Device", true, true)
    }

    #[test]
    fn writes_bump_versions_and_keep_status_apart() {
        let mut s = Store::default();
        let obj = json!({"kind": "Device", "metadata": {"name": "d"}, "spec": {"a": 1}, "status": {"x": 1}});
        let created = s
            .create(&gvr(), "ns", obj, Part::Main, &with_status())
            .unwrap();
        assert!(created.get("status").is_none(), "create drops status");
        assert_eq!(created["metadata"]["generation"], 1);
        let rv1 = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        // The status subresource changes only status, not the generation.
        let st = s
            .update(
                &gvr(),
                "ns",
                "d",
                json!({"spec": {"a": 9}, "status": {"x": 2}}),
                Part::Status,
                &with_status(),
            )
            .unwrap();
        assert_eq!(st["status"]["x"], 2);
        assert_eq!(st["spec"]["a"], 1);
        assert_eq!(st["metadata"]["generation"], 1);
        // The main resource changes the spec, keeps the status, bumps the generation.
        let main = s
            .update(
                &gvr(),
                "ns",
                "d",
                json!({"spec": {"a": 2}, "status": {"x": 5}}),
                Part::Main,
                &with_status(),
            )
            .unwrap();
        assert_eq!(
            (main["spec"]["a"].clone(), main["status"]["x"].clone()),
            (json!(2), json!(2))
        );
        assert_eq!(main["metadata"]["generation"], 2);
        // A stale resourceVersion is a conflict; a no-op write records nothing.
        let stale = json!({"metadata": {"resourceVersion": rv1}, "spec": {"a": 3}});
        assert_eq!(
            s.update(&gvr(), "ns", "d", stale, Part::Main, &with_status())
                .unwrap_err()
                .code,
            409
        );
        let rv = s.resource_version();
        s.update(&gvr(), "ns", "d", main.clone(), Part::Main, &with_status())
            .unwrap();
        assert_eq!(s.resource_version(), rv);
        assert_eq!(s.history(&gvr()).len(), 3);
    }

    #[test]
    fn generation_follows_the_custom_resource_strategy() {
        let mut s = Store::default();
        let plain = ResourceInfo::custom("Device", true, false);
        let obj = json!({"metadata": {"name": "d"}, "spec": {"a": 1}});
        let created = s.create(&gvr(), "ns", obj, Part::Whole, &plain).unwrap();
        assert_eq!(created["metadata"]["generation"], 1);
        let write = |s: &mut Store, body: Value| {
            s.update(&gvr(), "ns", "d", body, Part::Whole, &plain)
                .unwrap()["metadata"]["generation"]
                .clone()
        };
        // Without the status subresource a status write is a change outside metadata: +1.
        let g = write(&mut s, json!({"spec": {"a": 1}, "status": {"x": 1}}));
        assert_eq!(g, 2);
        // Metadata only (annotations, labels): never.
        let g = write(
            &mut s,
            json!({"metadata": {"annotations": {"k": "v"}}, "spec": {"a": 1}, "status": {"x": 1}}),
        );
        assert_eq!(g, 2);
        let g = write(&mut s, json!({"spec": {"a": 2}, "status": {"x": 1}}));
        assert_eq!(g, 3);
        // A built-in type (Lease, Event, ConfigMap) has no generation at all.
        let lease = Gvr::new("coordination.k8s.io", "v1", "leases");
        let core = ResourceInfo {
            custom: false,
            ..ResourceInfo::custom("Lease", true, false)
        };
        let obj =
            json!({"metadata": {"name": "l", "generation": 4}, "spec": {"holderIdentity": "a"}});
        let l = s.create(&lease, "ns", obj, Part::Whole, &core).unwrap();
        assert!(l["metadata"].get("generation").is_none(), "{l}");
        let l = s
            .update(
                &lease,
                "ns",
                "l",
                json!({"spec": {"holderIdentity": "b"}}),
                Part::Whole,
                &core,
            )
            .unwrap();
        assert!(l["metadata"].get("generation").is_none(), "{l}");
    }

    #[test]
    fn watches_resume_from_history_and_expire() {
        let mut s = Store::default();
        let start = s.resource_version();
        s.create(
            &gvr(),
            "ns",
            json!({"metadata": {"name": "a"}}),
            Part::Main,
            &with_status(),
        )
        .unwrap();
        s.delete(&gvr(), "ns", "a").unwrap();
        let (backlog, _rx) = s.watch_from(start).unwrap();
        let kinds: Vec<_> = backlog.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [EventType::Added, EventType::Deleted]);
        s.dropped_up_to = 5;
        assert_eq!(s.watch_from(2).unwrap_err().code, 410);
        assert_eq!(
            s.create(
                &gvr(),
                "ns",
                json!({"metadata": {}}),
                Part::Main,
                &with_status()
            )
            .unwrap_err()
            .code,
            422
        );
    }
}
