//! [`Cluster`]: a Kubernetes API server seen through kube's client as plain JSON objects, for the test kit's
//! writes as an operator makes them (create, replace, a merge patch as `kubectl edit` sends for a custom
//! resource, delete). The same client talks to a real API server (the one `KUBECONFIG` names) and to the harness's
//! FakeApi, so a scenario written against it runs unchanged against both.
use std::path::Path;
use std::time::Duration;

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

/// The field manager of every write the test kit makes (server-side field ownership shows it).
pub const FIELD_MANAGER: &str = "twinflash-testkit";

/// One resource: group, version, kind, plural, and whether it is namespaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

impl Kind {
    fn resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
}

const fn kind(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> Kind {
    Kind {
        group,
        version,
        kind,
        plural,
        namespaced,
    }
}

/// KubeEdge's Device (`devices.kubeedge.io/v1beta1`).
pub const DEVICE: Kind = kind("devices.kubeedge.io", "v1beta1", "Device", "devices", true);
/// KubeEdge's DeviceModel.
pub const DEVICE_MODEL: Kind = kind(
    "devices.kubeedge.io",
    "v1beta1",
    "DeviceModel",
    "devicemodels",
    true,
);
/// KubeEdge's DeviceStatus (written by cloudcore from edgecore's twin syncs).
pub const DEVICE_STATUS: Kind = kind(
    "devices.kubeedge.io",
    "v1beta1",
    "DeviceStatus",
    "devicestatuses",
    true,
);
/// cloudhub's record of the resourceVersion of an object a node acknowledged (`<node>.<object uid>`, in the object's
/// namespace).
pub const OBJECT_SYNC: Kind = kind(
    "reliablesyncs.kubeedge.io",
    "v1alpha1",
    "ObjectSync",
    "objectsyncs",
    true,
);
pub const NAMESPACE: Kind = kind("", "v1", "Namespace", "namespaces", false);
pub const NODE: Kind = kind("", "v1", "Node", "nodes", false);
pub const SECRET: Kind = kind("", "v1", "Secret", "secrets", true);
pub const EVENT: Kind = kind("events.k8s.io", "v1", "Event", "events", true);
pub const CRD: Kind = kind(
    "apiextensions.k8s.io",
    "v1",
    "CustomResourceDefinition",
    "customresourcedefinitions",
    false,
);

/// An API server, through the kubeconfig a test was given.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

fn name_of(obj: &Value) -> (String, String) {
    (
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn to_dynamic(obj: &Value) -> DynamicObject {
    serde_json::from_value(obj.clone()).unwrap_or_else(|e| panic!("not an object: {e}: {obj}"))
}

fn to_json(obj: DynamicObject) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

impl Cluster {
    /// A client of the API server `kubeconfig` names (its current context). Needs rustls's provider
    /// ([`crate::init`]).
    pub async fn connect(kubeconfig: &Path) -> Result<Cluster, String> {
        let kc = Kubeconfig::read_from(kubeconfig)
            .map_err(|e| format!("reading {}: {e}", kubeconfig.display()))?;
        let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| format!("kubeconfig {}: {e}", kubeconfig.display()))?;
        cfg.read_timeout = Some(Duration::from_secs(30));
        let client = kube::Client::try_from(cfg)
            .map_err(|e| format!("client of {}: {e}", kubeconfig.display()))?;
        Ok(Cluster { client })
    }

    /// The underlying client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    fn api(&self, k: &Kind, ns: &str) -> Api<DynamicObject> {
        if k.namespaced {
            Api::namespaced_with(self.client.clone(), ns, &k.resource())
        } else {
            Api::all_with(self.client.clone(), &k.resource())
        }
    }

    /// One object, `None` when the server answers 404.
    pub async fn get(&self, k: &Kind, ns: &str, name: &str) -> Option<Value> {
        self.api(k, ns)
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("GET {} {ns}/{name}: {e}", k.plural))
            .map(to_json)
    }

    /// The objects of `k` in `ns` (`None`: every namespace) matching `labels` (a label selector, `None`: all).
    pub async fn list(&self, k: &Kind, ns: Option<&str>, labels: Option<&str>) -> Vec<Value> {
        let api = match ns {
            Some(ns) => self.api(k, ns),
            None => Api::all_with(self.client.clone(), &k.resource()),
        };
        let mut lp = ListParams::default();
        if let Some(l) = labels {
            lp = lp.labels(l);
        }
        api.list(&lp)
            .await
            .unwrap_or_else(|e| panic!("LIST {}: {e}", k.plural))
            .items
            .into_iter()
            .map(to_json)
            .collect()
    }

    /// Creates `obj`; `Err` with the server's answer (e.g. 409 when it exists, 422 when the schema refuses it).
    pub async fn create(&self, k: &Kind, obj: &Value) -> Result<Value, kube::Error> {
        let (ns, _) = name_of(obj);
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        self.api(k, &ns)
            .create(&pp, &to_dynamic(obj))
            .await
            .map(to_json)
    }

    /// Creates `obj`, or replaces what is there (its resourceVersion taken from the current object, retried on a
    /// conflict): `kubectl apply` as a whole object. Panics on any other refusal.
    pub async fn put(&self, k: &Kind, obj: &Value) -> Value {
        let (ns, name) = name_of(obj);
        let mut obj = obj.clone();
        if let Some(m) = obj["metadata"].as_object_mut() {
            for key in ["resourceVersion", "uid", "creationTimestamp", "generation"] {
                m.remove(key);
            }
        }
        for _ in 0..10 {
            let Some(current) = self.get(k, &ns, &name).await else {
                match self.create(k, &obj).await {
                    Ok(v) => return v,
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => panic!("POST {} {ns}/{name}: {e}\n{obj}", k.plural),
                }
            };
            let mut replacement = obj.clone();
            replacement["metadata"]["resourceVersion"] =
                current["metadata"]["resourceVersion"].clone();
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            match self
                .api(k, &ns)
                .replace(&name, &pp, &to_dynamic(&replacement))
                .await
            {
                Ok(v) => return to_json(v),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => panic!("PUT {} {ns}/{name}: {e}\n{obj}", k.plural),
            }
        }
        panic!("PUT {} {ns}/{name}: conflicts every time", k.plural)
    }

    /// A JSON merge patch (RFC 7386) of the object: what `kubectl edit` and `kubectl patch --type merge` send for a
    /// custom resource (a list in the patch replaces the whole list).
    pub async fn merge_patch(
        &self,
        k: &Kind,
        ns: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, kube::Error> {
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        self.api(k, ns)
            .patch(name, &pp, &Patch::Merge(patch))
            .await
            .map(to_json)
    }

    /// Deletes one object; true if it was there. Errors other than 404 are returned.
    pub async fn delete(&self, k: &Kind, ns: &str, name: &str) -> Result<bool, kube::Error> {
        match self.api(k, ns).delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// What DeviceStatus `status` reports for `twin` (`status.twins[propertyName = twin].reported.value`).
pub fn reported(status: &Value, twin: &str) -> Option<String> {
    twin_field(status, twin, "reported")
}

/// What DeviceStatus `status` holds as `observedDesired` of `twin`.
pub fn observed_desired(status: &Value, twin: &str) -> Option<String> {
    twin_field(status, twin, "observedDesired")
}

fn twin_field(status: &Value, twin: &str, field: &str) -> Option<String> {
    status["status"]["twins"]
        .as_array()?
        .iter()
        .find(|t| t["propertyName"] == twin)?[field]["value"]
        .as_str()
        .map(str::to_owned)
}
