//! The HTTP side of the fake API server (axum, plain HTTP/1.1): parses Kubernetes REST paths,
//! serves list, watch, get, create, replace, patch and delete from the [`Store`], and records
//! every request (unknown ones answered 404 with a `Status`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use futures_util::stream;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::resources::{self, ResourceInfo};
use super::selector::{FieldSelector, LabelSelector, labels_of};
use super::store::{ApiError, Gvr, Part, Store, WatchRecord};

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path.
    pub path: String,
    /// The raw query string.
    pub query: String,
    /// The `Content-Type` of the body (patches).
    pub content_type: String,
    /// The HTTP status answered.
    pub status: u16,
    /// Whether the server understood it (false: answered 404 as unknown).
    pub known: bool,
    /// The `User-Agent` header (empty when none was sent).
    pub user_agent: String,
    /// The `fieldManager` query parameter, decoded (empty when none was sent).
    pub field_manager: String,
    /// When the request arrived.
    pub at: std::time::Instant,
}

impl RequestRecord {
    /// Whether the request asks for a change (`POST`, `PUT`, `PATCH`, `DELETE`).
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

/// State shared by the handler and the test API.
pub struct Shared {
    /// The objects.
    pub store: Mutex<Store>,
    /// Every request, in arrival order.
    pub requests: Mutex<Vec<RequestRecord>>,
    /// What is known of each resource ([`resources::builtin`], then what objects taught).
    pub resources: Mutex<BTreeMap<Gvr, ResourceInfo>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            store: Mutex::default(),
            requests: Mutex::default(),
            resources: Mutex::new(resources::builtin()),
        }
    }
}

impl Shared {
    /// The resource table, even if a panicking holder poisoned the lock.
    pub fn resources(&self) -> std::sync::MutexGuard<'_, BTreeMap<Gvr, ResourceInfo>> {
        self.resources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What is known of `gvr`: a resource outside the table is served as a CRD with the status
    /// subresource (what kubebuilder generates), scoped by the path it was used with.
    pub fn info(&self, gvr: &Gvr, namespaced: bool) -> ResourceInfo {
        self.resources()
            .get(gvr)
            .cloned()
            .unwrap_or_else(|| ResourceInfo::custom("", namespaced, true))
    }

    /// Learns the kind of `gvr` from an object written to it (for `<Kind>List` and discovery).
    pub fn learn(&self, gvr: &Gvr, obj: &Value, namespaced: bool) {
        let Some(kind) = obj["kind"].as_str().filter(|k| !k.is_empty()) else {
            return;
        };
        let mut r = self.resources();
        let e = r
            .entry(gvr.clone())
            .or_insert_with(|| ResourceInfo::custom("", namespaced, true));
        if e.kind.is_empty() {
            e.kind = kind.to_owned();
        }
    }

    /// The store, even if a panicking holder poisoned the lock.
    pub fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A parsed resource path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    gvr: Gvr,
    /// `Some` on a namespaced path.
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

/// `/api/{v}/...` or `/apis/{g}/{v}/...`, then `[namespaces/{ns}/]{plural}[/{name}[/status]]`.
fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, r @ ..] if !r.is_empty() => (Some((*ns).to_owned()), r),
        r => (None, r),
    };
    let (plural, name, status) = match rest {
        [p] => (*p, None, false),
        [p, n] => (*p, Some((*n).to_owned()), false),
        [p, n, "status"] => (*p, Some((*n).to_owned()), true),
        _ => return None,
    };
    if plural.is_empty() || name.as_deref() == Some("") {
        return None;
    }
    Some(Target {
        gvr: Gvr::new(group, version, plural),
        namespace,
        name,
        status,
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string as decoded (key, value) pairs.
fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn json_response(code: u16, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.status())
}

/// The namespace key of a target (`""` for cluster scoped).
fn ns_key(t: &Target) -> &str {
    t.namespace.as_deref().unwrap_or("")
}

/// Whether `object` passes the selectors.
struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
    namespace: Option<String>,
    gvr: Gvr,
}

impl Filter {
    fn from(t: &Target, pairs: &[(String, String)]) -> Result<Filter, ApiError> {
        let bad = |what: &str, e: String| {
            ApiError::new(400, "BadRequest", format!("unsupported {what}: {e}"))
        };
        Ok(Filter {
            labels: LabelSelector::parse(param(pairs, "labelSelector").unwrap_or(""))
                .map_err(|e| bad("labelSelector", e))?,
            fields: FieldSelector::parse(param(pairs, "fieldSelector").unwrap_or(""))
                .map_err(|e| bad("fieldSelector", e))?,
            namespace: t.namespace.clone(),
            gvr: t.gvr.clone(),
        })
    }

    fn object(&self, obj: &Value) -> bool {
        self.labels.matches(&labels_of(obj)) && self.fields.matches(obj)
    }

    fn record(&self, r: &WatchRecord) -> bool {
        r.gvr == self.gvr
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| r.object["metadata"]["namespace"].as_str() == Some(ns))
            && self.object(&r.object)
    }
}

/// `<Kind>List`, as the API server names every list (client-go decodes by it): from the known
/// kind, else from the first item, else `List` (a resource never written and not in the table).
fn kind_of_list(kind: &str, items: &[Value]) -> String {
    Some(kind)
        .filter(|k| !k.is_empty())
        .or_else(|| items.first().and_then(|o| o["kind"].as_str()))
        .map_or_else(|| "List".to_owned(), |k| format!("{k}List"))
}

/// Applies a patch body of `content_type` to `old` (`None`: the object does not exist).
fn patched(old: Option<&Value>, content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let bad = |m: String| ApiError::new(400, "BadRequest", m);
    let mime = content_type.split(';').next().unwrap_or("").trim();
    match mime {
        "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/apply-patch+yaml" => {
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| bad(format!("patch body is not JSON: {e}")))?;
            let mut doc = old.cloned().unwrap_or_else(|| json!({}));
            json_patch::merge(&mut doc, &patch);
            Ok(doc)
        }
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| bad(format!("not an RFC 6902 JSON patch: {e}")))?;
            let mut doc = old.cloned().unwrap_or_else(|| json!({}));
            json_patch::patch(&mut doc, &ops).map_err(|e| {
                ApiError::new(422, "Invalid", format!("the JSON patch failed: {e}"))
            })?;
            Ok(doc)
        }
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format: {other}"),
        )),
    }
}

/// The one handler: every request goes through here.
pub async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = std::time::Instant::now();
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let field_manager = param(&query_pairs(&query), "fieldManager")
        .unwrap_or("")
        .to_owned();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let discovered = (method == Method::GET)
        .then(|| resources::discovery(&shared.resources(), &path))
        .flatten();
    let (resp, known) = match (discovered, parse_path(&path)) {
        (Some(doc), _) => (Some(json_response(200, &doc)), true),
        (None, Some(t)) => route(&shared, &method, &t, &query, &content_type, &body),
        (None, None) => (None, false),
    };
    let resp = resp.unwrap_or_else(|| {
        error_response(&ApiError::new(
            404,
            "NotFound",
            format!("the fake API server does not serve {method} {path}"),
        ))
    });
    let rec = RequestRecord {
        method: method.to_string(),
        path,
        query,
        content_type,
        status: resp.status().as_u16(),
        known,
        user_agent,
        field_manager,
        at,
    };
    shared
        .requests
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(rec);
    resp
}

/// Serves a parsed target; `(None, false)` for a method the server does not know there.
fn route(
    shared: &Arc<Shared>,
    method: &Method,
    t: &Target,
    query: &str,
    content_type: &str,
    body: &[u8],
) -> (Option<Response>, bool) {
    let pairs = query_pairs(query);
    let info = shared.info(&t.gvr, t.namespace.is_some());
    let plain = !info.status_subresource;
    if plain && t.status {
        // As for a CRD without `subresources: {status: {}}`.
        let e = ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        return (Some(error_response(&e)), true);
    }
    let part = match (t.status, plain) {
        (true, _) => Part::Status,
        (false, true) => Part::Whole,
        (false, false) => Part::Main,
    };
    let result = match (method.as_str(), &t.name) {
        ("GET", None) if param(&pairs, "watch").is_some_and(|w| w == "true" || w == "1") => {
            return (Some(watch(shared, t, &pairs)), true);
        }
        ("GET", None) if !t.status => list(shared, t, &info.kind, &pairs),
        ("POST", None) if !t.status => serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::new(400, "BadRequest", format!("body is not JSON: {e}")))
            .and_then(|obj| {
                shared.learn(&t.gvr, &obj, t.namespace.is_some());
                let info = shared.info(&t.gvr, t.namespace.is_some());
                shared.store().create(&t.gvr, ns_key(t), obj, part, &info)
            })
            .map(|o| (201, o)),
        ("GET", Some(name)) => shared
            .store()
            .get(&t.gvr, ns_key(t), name)
            .map(|o| (200, o))
            .ok_or_else(|| not_found(t, name)),
        ("PUT", Some(name)) => serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::new(400, "BadRequest", format!("body is not JSON: {e}")))
            .and_then(|obj| {
                shared
                    .store()
                    .update(&t.gvr, ns_key(t), name, obj, part, &info)
            })
            .map(|o| (200, o)),
        ("PATCH", Some(name)) => patch(shared, t, name, content_type, body, part, &info),
        ("DELETE", Some(name)) if !t.status => shared
            .store()
            .delete(&t.gvr, ns_key(t), name)
            .map(|o| (200, o)),
        _ => return (None, false),
    };
    let resp = match result {
        Ok((code, obj)) => json_response(code, &obj),
        Err(e) => error_response(&e),
    };
    (Some(resp), true)
}

fn not_found(t: &Target, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", t.gvr.plural),
    )
}

fn list(
    shared: &Shared,
    t: &Target,
    kind: &str,
    pairs: &[(String, String)],
) -> Result<(u16, Value), ApiError> {
    let filter = Filter::from(t, pairs)?;
    let store = shared.store();
    let items: Vec<Value> = store
        .list(&t.gvr, t.namespace.as_deref())
        .into_iter()
        .filter(|o| filter.object(o))
        .collect();
    Ok((
        200,
        json!({
            "kind": kind_of_list(kind, &items),
            "apiVersion": t.gvr.api_version(),
            "metadata": {"resourceVersion": store.resource_version().to_string()},
            "items": items,
        }),
    ))
}

fn patch(
    shared: &Shared,
    t: &Target,
    name: &str,
    content_type: &str,
    body: &[u8],
    part: Part,
    info: &ResourceInfo,
) -> Result<(u16, Value), ApiError> {
    let mut store = shared.store();
    let old = store.get(&t.gvr, ns_key(t), name);
    let apply = content_type.starts_with("application/apply-patch");
    match old {
        None if apply && part != Part::Status => {
            // Server-side apply creates a missing object.
            let mut obj = patched(None, content_type, body)?;
            obj["metadata"]["name"] = json!(name);
            store
                .create(&t.gvr, ns_key(t), obj, part, info)
                .map(|o| (201, o))
        }
        None => Err(not_found(t, name)),
        Some(old) => {
            let new = patched(Some(&old), content_type, body)?;
            store
                .update(&t.gvr, ns_key(t), name, new, part, info)
                .map(|o| (200, o))
        }
    }
}

/// One line of a watch stream.
fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

struct WatchState {
    backlog: std::collections::VecDeque<Bytes>,
    rx: broadcast::Receiver<Arc<WatchRecord>>,
    filter: Filter,
    deadline: tokio::time::Instant,
}

fn watch(shared: &Shared, t: &Target, pairs: &[(String, String)]) -> Response {
    let filter = match Filter::from(t, pairs) {
        Ok(f) => f,
        Err(e) => return error_response(&e),
    };
    let timeout = param(pairs, "timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let rv_param = param(pairs, "resourceVersion").unwrap_or("");
    let initial = param(pairs, "sendInitialEvents") == Some("true");
    let mut backlog = std::collections::VecDeque::new();
    let store = shared.store();
    // "" / "0" (any version) and sendInitialEvents start with the current objects as ADDED.
    let start_rv = if initial || rv_param.is_empty() || rv_param == "0" {
        for obj in store.list(&t.gvr, t.namespace.as_deref()) {
            if filter.object(&obj) {
                backlog.push_back(line("ADDED", &obj));
            }
        }
        if initial {
            let bookmark = json!({
                "kind": "Bookmark", "apiVersion": t.gvr.api_version(),
                "metadata": {
                    "resourceVersion": store.resource_version().to_string(),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                },
            });
            backlog.push_back(line("BOOKMARK", &bookmark));
        }
        store.resource_version()
    } else {
        match rv_param.parse::<u64>() {
            Ok(rv) => rv,
            Err(_) => {
                return error_response(&ApiError::new(
                    400,
                    "BadRequest",
                    format!("invalid resourceVersion {rv_param:?}"),
                ));
            }
        }
    };
    let rx = match store.watch_from(start_rv) {
        Ok((records, rx)) => {
            for r in records.iter().filter(|r| filter.record(r)) {
                backlog.push_back(line(r.kind.as_str(), &r.object));
            }
            rx
        }
        Err(e) => {
            // As the API server: 200 and one ERROR event carrying the 410 Status.
            let gone = line("ERROR", &e.status());
            let mut resp = Response::new(Body::from_stream(stream::iter([Ok::<
                _,
                std::convert::Infallible,
            >(gone)])));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            return resp;
        }
    };
    drop(store);
    let state = WatchState {
        backlog,
        rx,
        filter,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
    };
    let body = stream::unfold(state, |mut st| async move {
        if let Some(b) = st.backlog.pop_front() {
            return Some((Ok::<_, std::convert::Infallible>(b), st));
        }
        loop {
            let next = tokio::time::timeout_at(st.deadline, st.rx.recv()).await;
            match next {
                Ok(Ok(r)) if st.filter.record(&r) => {
                    return Some((Ok(line(r.kind.as_str(), &r.object)), st));
                }
                Ok(Ok(_)) => {}
                // Lagged or closed: end the stream; the client watches again from its last version.
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_core_and_group_resources() {
        let t = parse_path("/api/v1/namespaces/default/events").unwrap();
        assert_eq!(
            (t.gvr.group.as_str(), t.gvr.plural.as_str()),
            ("", "events")
        );
        assert_eq!(t.namespace.as_deref(), Some("default"));
        let t = parse_path("/apis/devices.kubeedge.io/v1beta1/devices").unwrap();
        assert_eq!((t.namespace, t.name), (None, None));
        let t = parse_path("/apis/twinflash.io/v1alpha1/namespaces/ns/firmwarerollouts/r1/status")
            .unwrap();
        assert_eq!((t.name.as_deref(), t.status), (Some("r1"), true));
        assert!(parse_path("/version").is_none());
        assert!(parse_path("/apis/g/v/namespaces/ns/x/n/scale").is_none());
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let p = query_pairs(
            "&labelSelector=twinflash.io%2Fmanaged%3Dtrue%2Cring+in+%28a%29&watch=true",
        );
        assert_eq!(
            param(&p, "labelSelector"),
            Some("twinflash.io/managed=true,ring in (a)")
        );
        assert_eq!(param(&p, "watch"), Some("true"));
        assert_eq!(decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn patch_kinds() {
        let old = json!({"spec": {"a": 1, "b": [1, 2]}});
        let m = patched(
            Some(&old),
            "application/merge-patch+json",
            br#"{"spec":{"a":null,"c":3}}"#,
        )
        .unwrap();
        assert_eq!(m, json!({"spec": {"b": [1, 2], "c": 3}}));
        let j = patched(
            Some(&old),
            "application/json-patch+json",
            br#"[{"op":"test","path":"/spec/a","value":1},{"op":"replace","path":"/spec/b/0","value":7}]"#,
        )
        .unwrap();
        assert_eq!(j["spec"]["b"], json!([7, 2]));
        let failed = patched(
            Some(&old),
            "application/json-patch+json",
            br#"[{"op":"test","path":"/spec/a","value":2}]"#,
        );
        assert_eq!(failed.unwrap_err().code, 422);
        assert_eq!(
            patched(Some(&old), "text/plain", b"x").unwrap_err().code,
            415
        );
    }
}
