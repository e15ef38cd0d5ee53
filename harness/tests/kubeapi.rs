#![allow(clippy::unwrap_used, clippy::expect_used)]
// The fake Kubernetes API server, driven by a real kube::Client: CRUD, patches, status, watch, events.

use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::json;
use twinflash_harness::{FakeApi, FaultProxy};

async fn client_for(api: &FakeApi, dir: &std::path::Path) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = api.kubeconfig(dir).unwrap();
    let kc = Kubeconfig::read_from(path).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(cfg.default_namespace, "default");
    Client::try_from(cfg).unwrap()
}

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
        "data": {"k": "v"},
    }))
    .unwrap()
}

fn api_code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    }
}

/// Widget `w` with a spec and a status.
fn widget() -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "example.io/v1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"size": 1}, "status": {"ready": true}
    }))
    .unwrap()
}

fn widgets() -> ApiResource {
    ApiResource {
        group: "example.io".into(),
        version: "v1".into(),
        api_version: "example.io/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    }
}

#[tokio::test]
async fn crud_conflicts_patches_and_label_selectors() {
    let api = FakeApi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&api, dir.path()).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let pp = PostParams::default();

    let a = cms
        .create(&pp, &cm("a", &[("ring", "canary")]))
        .await
        .unwrap();
    assert_eq!(a.metadata.namespace.as_deref(), Some("default"));
    assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
    cms.create(&pp, &cm("b", &[("ring", "stable")]))
        .await
        .unwrap();
    cms.create(&pp, &cm("c", &[])).await.unwrap();
    assert_eq!(
        api_code(cms.create(&pp, &cm("a", &[])).await.unwrap_err()),
        409
    );

    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect()
    };
    let all = cms.list(&ListParams::default()).await.unwrap();
    assert!(all.metadata.resource_version.is_some());
    assert_eq!(names(all), ["a", "b", "c"]);
    let sel = |s: &str| ListParams::default().labels(s);
    assert_eq!(names(cms.list(&sel("ring=canary")).await.unwrap()), ["a"]);
    assert_eq!(
        names(cms.list(&sel("ring in (canary,stable)")).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(
        names(cms.list(&sel("ring notin (canary)")).await.unwrap()),
        ["b", "c"]
    );
    assert_eq!(names(cms.list(&sel("!ring")).await.unwrap()), ["c"]);
    let everywhere: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(everywhere.list(&sel("ring")).await.unwrap().items.len(), 2);

    // Replace with a stale resourceVersion: 409; with the current one: accepted.
    let mut stale = a.clone();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .unwrap();
    stale.data = Some([("k".to_owned(), "3".to_owned())].into());
    assert_eq!(
        api_code(cms.replace("a", &pp, &stale).await.unwrap_err()),
        409
    );
    let mut fresh = cms.get("a").await.unwrap();
    fresh.data = Some([("k".to_owned(), "4".to_owned())].into());
    let replaced = cms.replace("a", &pp, &fresh).await.unwrap();
    assert_eq!(replaced.data.unwrap()["k"], "4");

    // JSON patch: a failing test op is refused (422) and changes nothing.
    let p: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/k", "value": "nope"},
        {"op": "replace", "path": "/data/k", "value": "5"}
    ]))
    .unwrap();
    let refused = cms
        .patch("a", &PatchParams::default(), &Patch::<()>::Json(p))
        .await;
    assert_eq!(api_code(refused.unwrap_err()), 422);
    let p: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/k", "value": "4"},
        {"op": "add", "path": "/data/j", "value": "6"}
    ]))
    .unwrap();
    let patched = cms
        .patch("a", &PatchParams::default(), &Patch::<()>::Json(p))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["j"], "6");

    // Server-side apply (approximated as a merge) creates a missing object.
    let applied = cms
        .patch("d", &PatchParams::apply("test"), &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}, "data": {"x": "1"}
        })))
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["x"], "1");

    cms.delete("b", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(cms.get("b").await.unwrap_err()), 404);
    assert_eq!(
        api_code(cms.delete("b", &DeleteParams::default()).await.unwrap_err()),
        404
    );
    assert!(
        api.unknown_requests().is_empty(),
        "{:?}",
        api.unknown_requests()
    );
    assert!(
        api.requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.content_type == "application/json-patch+json")
    );
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let api = FakeApi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&api, dir.path()).await;
    let w: Api<DynamicObject> = Api::namespaced_with(client, "default", &widgets());
    let obj = widget();
    let created = w.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(
        created.data.get("status").is_none(),
        "create ignores status"
    );

    let pp = PatchParams::default();
    let st = w
        .patch_status(
            "w",
            &pp,
            &Patch::Merge(json!({"spec": {"size": 9}, "status": {"ready": true}})),
        )
        .await
        .unwrap();
    assert_eq!(st.data["status"]["ready"], true);
    assert_eq!(
        st.data["spec"]["size"], 1,
        "a status patch never changes the spec"
    );
    assert_eq!(st.metadata.generation, Some(1));

    let main = w
        .patch(
            "w",
            &pp,
            &Patch::Merge(json!({"spec": {"size": 2}, "status": {"ready": false}})),
        )
        .await
        .unwrap();
    assert_eq!(
        main.data["status"]["ready"], true,
        "a main patch never changes the status"
    );
    assert_eq!(main.metadata.generation, Some(2));

    // A merge patch carrying an old resourceVersion conflicts, on the status as on the main resource.
    let stale = json!({"metadata": {"resourceVersion": created.metadata.resource_version}, "status": {"ready": false}});
    assert_eq!(
        api_code(
            w.patch_status("w", &pp, &Patch::Merge(stale))
                .await
                .unwrap_err()
        ),
        409
    );
    let got = api
        .get("example.io", "v1", "widgets", "default", "w")
        .unwrap();
    assert_eq!(got["status"]["ready"], true);
    assert_eq!(got["spec"]["size"], 2);

    // The test API acts as an operator; the status stays.
    let after = api
        .patch_spec(
            "example.io",
            "v1",
            "widgets",
            "default",
            "w",
            &json!({"spec": {"size": 3}}),
        )
        .unwrap();
    assert_eq!(
        (
            after["spec"]["size"].clone(),
            after["status"]["ready"].clone()
        ),
        (json!(3), json!(true))
    );
    assert_eq!(after["metadata"]["generation"], 3);
}

async fn watch_sees_changes(config: watcher::Config) {
    let api = FakeApi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&api, dir.path()).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    cms.create(&PostParams::default(), &cm("before", &[("app", "x")]))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("other", &[("app", "y")]))
        .await
        .unwrap();

    let stream = watcher(Api::<ConfigMap>::all(client), config.labels("app=x"));
    let mut stream = Box::pin(stream);
    let mut seen = Vec::new();
    let listed = tokio::sync::Notify::new();
    let writer = async {
        listed.notified().await;
        let pp = PostParams::default();
        cms.create(&pp, &cm("after", &[("app", "x")]))
            .await
            .unwrap();
        cms.create(&pp, &cm("ignored", &[("app", "y")]))
            .await
            .unwrap();
        cms.patch(
            "after",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "2"}})),
        )
        .await
        .unwrap();
        cms.delete("before", &DeleteParams::default())
            .await
            .unwrap();
    };
    let reader = async {
        while let Some(ev) = stream.try_next().await.unwrap() {
            let entry = match ev {
                watcher::Event::InitApply(o) => format!("init {}", o.metadata.name.unwrap()),
                watcher::Event::Apply(o) => format!(
                    "apply {} {}",
                    o.metadata.name.unwrap(),
                    o.data.unwrap_or_default()["k"]
                ),
                watcher::Event::Delete(o) => format!("delete {}", o.metadata.name.unwrap()),
                watcher::Event::InitDone => {
                    listed.notify_one();
                    continue;
                }
                watcher::Event::Init => continue,
            };
            seen.push(entry);
            if seen.last().is_some_and(|e| e == "delete before") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("watch events in time");
    assert_eq!(
        seen,
        [
            "init before",
            "apply after v",
            "apply after 2",
            "delete before"
        ]
    );
    assert!(
        api.unknown_requests().is_empty(),
        "{:?}",
        api.unknown_requests()
    );
    assert!(
        api.requests()
            .iter()
            .any(|r| r.query.contains("watch=true"))
    );
}

#[tokio::test]
async fn watcher_list_then_watch() {
    watch_sees_changes(watcher::Config::default()).await;
}

#[tokio::test]
async fn watcher_streaming_list() {
    watch_sees_changes(watcher::Config::default().streaming_lists()).await;
}

#[tokio::test]
async fn recorder_events_and_unknown_requests_are_recorded() {
    let api = FakeApi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&api, dir.path()).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let obj = cms
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "test".into(),
            instance: None,
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "Tested".into(),
        note: Some("once".into()),
        action: "Test".into(),
        secondary: None,
    };
    recorder.publish(&ev, &obj.object_ref(&())).await.unwrap();
    recorder.publish(&ev, &obj.object_ref(&())).await.unwrap(); // a series: a merge patch
    let events = api.list("events.k8s.io", "v1", "events", Some("default"));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "Tested");
    assert_eq!(events[0]["series"]["count"], 2);
    assert!(api.unknown_requests().is_empty());

    // Discovery is not served: answered 404 and recorded as unknown.
    let err = client.apiserver_version().await.unwrap_err();
    assert_eq!(api_code(err), 404);
    let unknown = api.unknown_requests();
    assert_eq!(unknown.len(), 1);
    assert_eq!(
        (unknown[0].path.as_str(), unknown[0].status),
        ("/version", 404)
    );
}

#[tokio::test]
async fn works_behind_the_fault_proxy() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = FakeApi::start().unwrap();
    let proxy = FaultProxy::start(api.addr()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = api
        .kubeconfig_for(dir.path(), &format!("http://{}", proxy.addr()))
        .unwrap();
    let kc = Kubeconfig::read_from(path).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(Client::try_from(cfg).unwrap());
    cms.create(&PostParams::default(), &cm("via-proxy", &[]))
        .await
        .unwrap();
    assert!(
        api.get("", "v1", "configmaps", "default", "via-proxy")
            .is_some()
    );
    proxy.set(twinflash_harness::Fault::Refuse);
    assert!(cms.get("via-proxy").await.is_err(), "cut off");
    proxy.set(twinflash_harness::Fault::Pass);
    assert!(cms.get("via-proxy").await.is_ok());
}

#[test]
fn the_store_is_readable_without_a_runtime() {
    let api = FakeApi::start().unwrap();
    let obj = api
        .put(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "l", "namespace": "ns"}, "spec": {"holderIdentity": "me"}}))
        .unwrap();
    assert_eq!(obj["metadata"]["resourceVersion"], "2");
    let again = api
        .put(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "l", "namespace": "ns"}, "spec": {"holderIdentity": "you"}}))
        .unwrap();
    assert!(
        again["metadata"].get("generation").is_none(),
        "a Lease (built-in) has no generation: {again}"
    );
    assert_eq!(
        api.list("coordination.k8s.io", "v1", "leases", None).len(),
        1
    );
    let kinds: Vec<&str> = api
        .history("coordination.k8s.io", "v1", "leases")
        .iter()
        .map(|r| r.kind.as_str())
        .collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED"]);
}

#[tokio::test]
async fn core_events_and_a_lease_manager_work() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    let api = FakeApi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&api, dir.path()).await;

    let events: Api<CoreEvent> = Api::default_namespaced(client.clone());
    let ev: CoreEvent = serde_json::from_value(json!({
        "metadata": {"generateName": "x."},
        "involvedObject": {"kind": "ConfigMap", "name": "a", "namespace": "default"},
        "reason": "Core", "message": "core v1 event", "type": "Normal"
    }))
    .unwrap();
    let created = events.create(&PostParams::default(), &ev).await.unwrap();
    assert!(created.metadata.name.unwrap().starts_with("x."));
    assert_eq!(api.list("", "v1", "events", Some("default")).len(), 1);

    // kube-lease-manager: get, create, strategic-merge and apply patches on a Lease.
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, "leader")
        .with_namespace("default")
        .with_identity("replica-a")
        .with_duration(5)
        .with_grace(2)
        .build()
        .await
        .unwrap();
    let (mut leading, task) = manager.watch().await;
    tokio::time::timeout(Duration::from_secs(20), async {
        while !*leading.borrow_and_update() {
            leading.changed().await.unwrap();
        }
    })
    .await
    .expect("the lease is acquired");
    let lease = api
        .get("coordination.k8s.io", "v1", "leases", "default", "leader")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");
    drop(leading);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the lease task ends once its channel is dropped")
        .unwrap()
        .unwrap();
    let released = api
        .get("coordination.k8s.io", "v1", "leases", "default", "leader")
        .unwrap();
    assert!(
        released["spec"].get("holderIdentity").is_none(),
        "{released}"
    );
    assert!(
        api.unknown_requests().is_empty(),
        "{:?}",
        api.unknown_requests()
    );
    assert!(api.requests().iter().any(|r| {
        r.method == "PATCH"
            && r.content_type
                .starts_with("application/strategic-merge-patch+json")
    }));
}

#[tokio::test]
async fn a_resource_without_status_subresource_keeps_status_with_the_object() {
    // As KubeEdge's Device CRD: no `subresources: {status: {}}`.
    let api = FakeApi::start().unwrap();
    api.without_status_subresource("example.io", "v1", "widgets");
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&api, dir.path()).await;
    let w: Api<DynamicObject> = Api::namespaced_with(client, "default", &widgets());
    let obj = widget();
    let created = w.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(created.data["status"]["ready"], true, "create keeps status");
    let pp = PatchParams::default();
    let main = w
        .patch("w", &pp, &Patch::Merge(json!({"status": {"ready": false}})))
        .await
        .unwrap();
    assert_eq!(
        main.data["status"]["ready"], false,
        "a main patch writes status"
    );
    assert_eq!(
        main.metadata.generation,
        Some(2),
        "without the subresource, status is a change outside metadata (kube-apiserver v1.32, issue 22 F4)"
    );
    let err = w
        .patch_status("w", &pp, &Patch::Merge(json!({"status": {"ready": true}})))
        .await
        .unwrap_err();
    assert_eq!(api_code(err), 404, "/status is not served");
    assert!(api.unknown_requests().is_empty());
}

/// `GET path` over a plain connection: (status code, JSON body).
fn raw_get(api: &FakeApi, path: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api.addr()).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (code, serde_json::from_str(body).unwrap())
}

/// The `name` of each entry of a discovery array.
fn names_of(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect()
}

fn kubeedge(plural: &str, kind: &str) -> ApiResource {
    ApiResource {
        group: "devices.kubeedge.io".into(),
        version: "v1beta1".into(),
        api_version: "devices.kubeedge.io/v1beta1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

#[tokio::test]
async fn kubeedge_resources_have_no_status_subresource_as_their_crds() {
    let api = FakeApi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&api, dir.path()).await;
    for (plural, kind) in [
        ("devices", "Device"),
        ("devicemodels", "DeviceModel"),
        ("devicestatuses", "DeviceStatus"),
    ] {
        let r: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), "default", &kubeedge(plural, kind));
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "devices.kubeedge.io/v1beta1", "kind": kind,
            "metadata": {"name": "d"}, "spec": {}, "status": {"twins": [{"propertyName": "a"}]}
        }))
        .unwrap();
        let created = r.create(&PostParams::default(), &obj).await.unwrap();
        assert_eq!(
            created.data["status"]["twins"][0]["propertyName"], "a",
            "{kind}: create keeps status"
        );
        let pp = PatchParams::default();
        let twins = json!({"status": {"twins": [{"propertyName": "b"}]}});
        let patched = r.patch("d", &pp, &Patch::Merge(&twins)).await.unwrap();
        assert_eq!(
            patched.data["status"], twins["status"],
            "{kind}: a patch of the object writes status"
        );
        let err = r
            .patch_status("d", &pp, &Patch::Merge(&twins))
            .await
            .unwrap_err();
        assert_eq!(api_code(err), 404, "{kind}: no /status");
        let err = r.get_status("d").await.unwrap_err();
        assert_eq!(api_code(err), 404, "{kind}: no /status");
        assert!(
            !api.resource("devices.kubeedge.io", "v1beta1", plural)
                .status_subresource
        );
    }
    // FirmwareRollout's CRD declares the subresource; Events and Leases have no status.
    assert!(
        api.resource("twinflash.io", "v1alpha1", "firmwarerollouts")
            .status_subresource
    );
    assert!(
        !api.resource("events.k8s.io", "v1", "events")
            .status_subresource
    );
    assert!(
        !api.resource("coordination.k8s.io", "v1", "leases")
            .status_subresource
    );
}

#[tokio::test]
async fn merge_patches_without_a_resource_version_apply_and_stale_ones_conflict() {
    let api = FakeApi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&api, dir.path()).await;
    let r: Api<DynamicObject> = Api::namespaced_with(
        client,
        "default",
        &kubeedge("devicestatuses", "DeviceStatus"),
    );
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceStatus", "metadata": {"name": "d"}
    }))
    .unwrap();
    let created = r.create(&PostParams::default(), &obj).await.unwrap();
    let rv0 = created.metadata.resource_version.clone().unwrap();
    let pp = PatchParams::default();
    let one = json!({"status": {"twins": [{"propertyName": "x", "reported": {"value": "1"}}]}});
    let after = r.patch("d", &pp, &Patch::Merge(&one)).await.unwrap();
    assert_eq!(after.data["status"], one["status"]);
    // The same again, without a resourceVersion: applies (a no-op); a stale one: 409.
    r.patch("d", &pp, &Patch::Merge(&one)).await.unwrap();
    let stale = json!({"metadata": {"resourceVersion": rv0}, "status": {"twins": []}});
    assert_eq!(
        api_code(r.patch("d", &pp, &Patch::Merge(&stale)).await.unwrap_err()),
        409
    );
    let current = after.metadata.resource_version.clone().unwrap();
    let fresh = json!({"metadata": {"resourceVersion": current}, "status": {"twins": []}});
    let out = r.patch("d", &pp, &Patch::Merge(&fresh)).await.unwrap();
    assert_eq!(out.data["status"]["twins"], json!([]));
}

#[tokio::test]
async fn lists_are_kind_lists_and_discovery_lists_what_is_served() {
    let api = FakeApi::start().unwrap();
    // Empty lists: `<Kind>List` with apiVersion, as client-go wants.
    let (code, list) = raw_get(
        &api,
        "/apis/devices.kubeedge.io/v1beta1/namespaces/default/devices",
    );
    assert_eq!(
        (code, list["kind"].as_str(), list["apiVersion"].as_str()),
        (200, Some("DeviceList"), Some("devices.kubeedge.io/v1beta1"))
    );
    assert_eq!(list["items"], json!([]));
    let (_, list) = raw_get(&api, "/apis/devices.kubeedge.io/v1beta1/devicestatuses");
    assert_eq!(list["kind"], "DeviceStatusList");
    let (_, list) = raw_get(&api, "/apis/coordination.k8s.io/v1/namespaces/x/leases");
    assert_eq!(list["kind"], "LeaseList");
    api.put(json!({"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "default"}}))
        .unwrap();
    let (_, list) = raw_get(&api, "/apis/example.io/v1/namespaces/default/widgets");
    assert_eq!(
        (
            list["kind"].as_str(),
            list["items"].as_array().map(Vec::len)
        ),
        (Some("WidgetList"), Some(1))
    );

    let (code, core) = raw_get(&api, "/api");
    assert_eq!((code, core["kind"].as_str()), (200, Some("APIVersions")));
    assert_eq!(core["versions"], json!(["v1"]));
    let (_, v1) = raw_get(&api, "/api/v1");
    assert_eq!(v1["kind"], "APIResourceList");
    let (_, groups) = raw_get(&api, "/apis");
    assert_eq!(groups["kind"], "APIGroupList");
    let names = names_of(&groups["groups"]);
    for g in [
        "devices.kubeedge.io",
        "twinflash.io",
        "events.k8s.io",
        "coordination.k8s.io",
        "example.io",
    ] {
        assert!(names.iter().any(|n| n == g), "{g} in {names:?}");
    }
    let (code, group) = raw_get(&api, "/apis/devices.kubeedge.io");
    assert_eq!(
        (code, group["preferredVersion"]["groupVersion"].as_str()),
        (200, Some("devices.kubeedge.io/v1beta1"))
    );
    let served = |path: &str| -> Vec<String> {
        let (_, res) = raw_get(&api, path);
        names_of(&res["resources"])
    };
    assert_eq!(
        served("/apis/devices.kubeedge.io/v1beta1"),
        ["devicemodels", "devices", "devicestatuses"],
        "no status subresources"
    );
    assert_eq!(
        served("/apis/twinflash.io/v1alpha1"),
        ["firmwarerollouts", "firmwarerollouts/status"]
    );
    assert_eq!(raw_get(&api, "/apis/nothing.io").0, 404);

    // kube's own discovery reads them.
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&api, dir.path()).await;
    let discovery = kube::discovery::Discovery::new(client).run().await.unwrap();
    let (ar, caps) = discovery
        .groups()
        .find(|g| g.name() == "devices.kubeedge.io")
        .and_then(|g| {
            g.recommended_resources()
                .into_iter()
                .find(|(ar, _)| ar.plural == "devicestatuses")
        })
        .unwrap();
    assert_eq!(ar.kind, "DeviceStatus");
    assert!(caps.subresources.is_empty());
    let unknown: Vec<String> = api.unknown_requests().into_iter().map(|r| r.path).collect();
    assert!(unknown == ["/apis/nothing.io"], "{unknown:?}");
}

/// `metadata.generation` as kube-apiserver keeps it for custom resources (issue 22, F4): 1 at create; +1 on a write
/// that changes anything outside `metadata`, where `.status` counts on a CRD without the status subresource
/// (KubeEdge's Device and DeviceStatus) and does not on one with it (FirmwareRollout); metadata alone never counts.
/// And every request is recorded with its User-Agent and fieldManager.
#[tokio::test]
async fn generation_and_request_identity_as_a_real_api_server() {
    let api = FakeApi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = api.kubeconfig(dir.path()).unwrap();
    let kc = Kubeconfig::read_from(path).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    cfg.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static("tester/1.0"),
    ));
    let client = Client::try_from(cfg).unwrap();
    let device_res = ApiResource {
        group: "devices.kubeedge.io".into(),
        version: "v1beta1".into(),
        api_version: "devices.kubeedge.io/v1beta1".into(),
        kind: "Device".into(),
        plural: "devices".into(),
    };
    let devices: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &device_res);
    let d: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "d"}, "spec": {"properties": [{"name": "firmware"}]}
    }))
    .unwrap();
    let pp = PatchParams {
        field_manager: Some("tester".into()),
        ..PatchParams::default()
    };
    let created = devices.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let gen_after = |patch: serde_json::Value| {
        let devices = devices.clone();
        let pp = pp.clone();
        async move {
            devices
                .patch("d", &pp, &Patch::Merge(patch))
                .await
                .unwrap()
                .metadata
                .generation
        }
    };
    // cloudcore's status write on a Device: +1.
    assert_eq!(
        gen_after(json!({"status": {"twins": [{"propertyName": "firmware"}]}})).await,
        Some(2)
    );
    // An annotation (twinflash's record): never.
    assert_eq!(
        gen_after(json!({"metadata": {"annotations": {"twinflash.io/reason": "x"}}})).await,
        Some(2)
    );
    // A spec change: +1.
    assert_eq!(gen_after(json!({"spec": {"nodeName": "n"}})).await, Some(3));

    // With the status subresource: /status never, a main write's status is ignored.
    let w: Api<DynamicObject> = Api::namespaced_with(client, "default", &widgets());
    w.create(&PostParams::default(), &widget()).await.unwrap();
    let st = w
        .patch_status("w", &pp, &Patch::Merge(json!({"status": {"ready": false}})))
        .await
        .unwrap();
    assert_eq!(st.metadata.generation, Some(1));
    let main = w
        .patch("w", &pp, &Patch::Merge(json!({"status": {"ready": true}})))
        .await
        .unwrap();
    assert_eq!(main.metadata.generation, Some(1));

    let writes: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.is_write())
        .collect();
    assert_eq!(writes.len(), 7, "{writes:#?}");
    assert!(
        writes.iter().all(|r| r.user_agent == "tester/1.0"),
        "{writes:#?}"
    );
    let managers: Vec<&str> = writes.iter().map(|r| r.field_manager.as_str()).collect();
    assert_eq!(
        managers,
        ["", "tester", "tester", "tester", "", "tester", "tester"]
    );
}
