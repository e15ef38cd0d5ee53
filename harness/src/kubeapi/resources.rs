//! What the fake API server knows about each resource, as a real cluster learns it from its CRDs
//! and built-in types: the kind (for `<Kind>List` and discovery), the scope, and whether `.status`
//! is a subresource. The table is what decides the write rules, so a stand-in that writes
//! `.status` (cloudcore) sees what it would see on a real API server.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::store::Gvr;

/// One served resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    /// `Device`, `Lease`, ... (empty while not known: no object created yet, not in the table).
    pub kind: String,
    /// Namespaced (true) or cluster scoped.
    pub namespaced: bool,
    /// `subresources: {status: {}}` in the CRD (or a built-in type with a status subresource):
    /// writes of the object keep `.status`, `/status` writes only `.status`. Without it `.status`
    /// is an ordinary field and `/status` answers 404.
    pub status_subresource: bool,
    /// Served from a CustomResourceDefinition: the API server keeps `metadata.generation` (1 at create, +1 on
    /// every write that changes anything outside `metadata`, and outside `.status` where that is a
    /// subresource). Built-in types without a spec/status split (Event, Lease, ConfigMap) have no generation.
    pub custom: bool,
}

impl ResourceInfo {
    /// A custom resource's entry (what the server assumes of a resource it does not know).
    pub fn custom(kind: &str, namespaced: bool, status_subresource: bool) -> ResourceInfo {
        ResourceInfo {
            kind: kind.to_owned(),
            namespaced,
            status_subresource,
            custom: true,
        }
    }
}

/// The resources twinflash and its stand-ins use, as their definitions declare them:
/// - `devices.kubeedge.io/v1beta1` `devices`, `devicemodels`, `devicestatuses`: KubeEdge v1.23's
///   `build/crds/devices/devices_v1beta1_{device,devicemodel,devicestatus}.yaml` declare no
///   `subresources` (cloudcore merge-patches `devicestatuses/<name>` itself, docs/kubeedge.md 8).
/// - `twinflash.io/v1alpha1` `firmwarerollouts`: `manifests/crds/firmwarerollout.yaml` declares
///   `subresources: {status: {}}`.
/// - `events.k8s.io/v1` and core `v1` `events`, `coordination.k8s.io/v1` `leases`, core
///   `configmaps`: built-in types without a status (no status subresource) and without a generation.
pub fn builtin() -> BTreeMap<Gvr, ResourceInfo> {
    let entry = |g: &str, v: &str, p: &str, kind: &str, status: bool| {
        (Gvr::new(g, v, p), ResourceInfo::custom(kind, true, status))
    };
    let core = |g: &str, v: &str, p: &str, kind: &str| {
        let info = ResourceInfo {
            custom: false,
            ..ResourceInfo::custom(kind, true, false)
        };
        (Gvr::new(g, v, p), info)
    };
    BTreeMap::from([
        entry("devices.kubeedge.io", "v1beta1", "devices", "Device", false),
        entry(
            "devices.kubeedge.io",
            "v1beta1",
            "devicemodels",
            "DeviceModel",
            false,
        ),
        entry(
            "devices.kubeedge.io",
            "v1beta1",
            "devicestatuses",
            "DeviceStatus",
            false,
        ),
        entry(
            "twinflash.io",
            "v1alpha1",
            "firmwarerollouts",
            "FirmwareRollout",
            true,
        ),
        core("events.k8s.io", "v1", "events", "Event"),
        core("", "v1", "events", "Event"),
        core("coordination.k8s.io", "v1", "leases", "Lease"),
        core("", "v1", "configmaps", "ConfigMap"),
    ])
}

/// The verbs the fake server serves on a resource (discovery).
const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The discovery documents of `resources` for `path` (`/api`, `/api/v1`, `/apis`, `/apis/<g>`,
/// `/apis/<g>/<v>`); `None` when `path` is none of them or names no served group/version.
pub fn discovery(resources: &BTreeMap<Gvr, ResourceInfo>, path: &str) -> Option<Value> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let groups = || {
        let mut g: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for gvr in resources.keys().filter(|g| !g.group.is_empty()) {
            let versions = g.entry(gvr.group.as_str()).or_default();
            if !versions.contains(&gvr.version.as_str()) {
                versions.push(gvr.version.as_str());
            }
        }
        g
    };
    let group_doc = |name: &str, versions: &[&str]| {
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
            .collect();
        json!({
            "kind": "APIGroup", "apiVersion": "v1", "name": name,
            "versions": vs.clone(), "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
        })
    };
    match segs.as_slice() {
        ["api"] => Some(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [],
        })),
        ["api", v] => resource_list(resources, "", v),
        ["apis"] => {
            let list: Vec<Value> = groups()
                .iter()
                .map(|(name, versions)| {
                    let mut d = group_doc(name, versions);
                    if let Value::Object(m) = &mut d {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                    d
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list}))
        }
        ["apis", g] => groups().get(g).map(|versions| group_doc(g, versions)),
        ["apis", g, v] => resource_list(resources, g, v),
        _ => None,
    }
}

fn resource_list(
    resources: &BTreeMap<Gvr, ResourceInfo>,
    group: &str,
    version: &str,
) -> Option<Value> {
    let mut list = Vec::new();
    for (gvr, info) in resources
        .iter()
        .filter(|(g, _)| g.group == group && g.version == version)
    {
        list.push(json!({
            "name": gvr.plural, "singularName": info.kind.to_ascii_lowercase(),
            "namespaced": info.namespaced, "kind": info.kind, "verbs": VERBS,
        }));
        if info.status_subresource {
            list.push(json!({
                "name": format!("{}/status", gvr.plural), "singularName": "",
                "namespaced": info.namespaced, "kind": info.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if list.is_empty() {
        return None;
    }
    let gv = Gvr::new(group, version, "").api_version();
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}
