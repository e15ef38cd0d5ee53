//! Parses every YAML document under `manifests/` and checks kind, apiVersion and the fields
//! twinflash relies on; also the embedded configs and the mosquitto bridge configuration.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mqtt_schema::firmware::{
    TWIN_FIRMWARE as FIRMWARE, TWIN_FIRMWARE_STATE as FIRMWARE_STATE,
    TWIN_FIRMWARE_VERSION as FIRMWARE_VERSION,
};
use serde::Deserialize;
use serde_json::Value;
use twinflash_cloud::config::{Config, Mode, StatusLocation};
use twinflash_cloud::controller::{API_ACCESS, LEASE_ACCESS};
use twinflash_cloud::crd::{Device, DeviceModel};
use twinflash_cloud::decide::CHIP_ANNOTATION;
use twinflash_cloud::rollout::reconcile::ROLLOUT_API_ACCESS;

const NS: &str = "twinflash-system";

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn files(dir: &Path, ext: &[&str], out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, ext, out);
        } else if path
            .extension()
            .is_some_and(|e| ext.iter().any(|x| e == *x))
        {
            out.push(path);
        }
    }
    out.sort();
}

/// Every document of every YAML file, as JSON, with the file it came from.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut paths = Vec::new();
    files(&manifests_dir(), &["yaml", "yml"], &mut paths);
    assert!(paths.len() >= 7, "manifests found: {paths:?}");
    let mut docs = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        for de in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(de).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if !v.is_null() {
                docs.push((path.clone(), v));
            }
        }
    }
    docs
}

struct Docs(Vec<(PathBuf, Value)>);

/// Whether `path` belongs to the KubeEdge-native (DMI) variant (`*dmi*` files and `dmi/` directories).
fn is_dmi(path: &Path) -> bool {
    path.strip_prefix(manifests_dir())
        .unwrap_or(path)
        .to_string_lossy()
        .contains("dmi")
}

impl Docs {
    /// The MQTT-path manifests (every file but the DMI variant's).
    fn load() -> Docs {
        Docs(
            documents()
                .into_iter()
                .filter(|(p, _)| !is_dmi(p))
                .collect(),
        )
    }
    /// The DMI variant's manifests only.
    fn load_dmi() -> Docs {
        Docs(documents().into_iter().filter(|(p, _)| is_dmi(p)).collect())
    }
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.0
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v["kind"] == kind)
            .collect()
    }
    fn one(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<_> = self
            .of_kind(kind)
            .into_iter()
            .filter(|v| v["metadata"]["name"] == name)
            .collect();
        assert_eq!(found.len(), 1, "{kind}/{name}");
        found[0]
    }
    /// The embedded cloud.toml, through the real loader (unknown keys would fail).
    fn cloud_config(&self) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud.toml");
        std::fs::write(
            &path,
            self.config_map_file("twinflash-cloud-config", "cloud.toml"),
        )
        .unwrap();
        Config::load_with_env(Some(&path), Some(Default::default())).unwrap()
    }
    fn config_map_file(&self, name: &str, key: &str) -> String {
        self.one("ConfigMap", name)["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("ConfigMap {name} has no {key}"))
            .to_owned()
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_document_has_a_known_kind_and_api_version() {
    let known: BTreeMap<&str, &str> = BTreeMap::from([
        ("Namespace", "v1"),
        ("ServiceAccount", "v1"),
        ("ConfigMap", "v1"),
        ("ClusterRole", "rbac.authorization.k8s.io/v1"),
        ("ClusterRoleBinding", "rbac.authorization.k8s.io/v1"),
        ("Role", "rbac.authorization.k8s.io/v1"),
        ("RoleBinding", "rbac.authorization.k8s.io/v1"),
        ("Deployment", "apps/v1"),
        ("DaemonSet", "apps/v1"),
        ("Device", "devices.kubeedge.io/v1beta1"),
        ("DeviceModel", "devices.kubeedge.io/v1beta1"),
        ("CustomResourceDefinition", "apiextensions.k8s.io/v1"),
    ]);
    let docs = documents();
    let mut kinds = BTreeSet::new();
    for (path, v) in &docs {
        let kind = v["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no kind", path.display()));
        assert_eq!(
            known.get(kind).copied(),
            v["apiVersion"].as_str(),
            "{}: {kind} apiVersion",
            path.display()
        );
        assert!(
            v["metadata"]["name"].is_string(),
            "{}: {kind} without a name",
            path.display()
        );
        let cluster_scoped = matches!(
            kind,
            "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition"
        );
        assert_eq!(
            v["metadata"]["namespace"].is_string(),
            !cluster_scoped,
            "{}: {kind} namespace",
            path.display()
        );
        kinds.insert(kind);
    }
    assert_eq!(kinds.len(), known.len(), "every kind is shipped: {kinds:?}");
}

#[test]
fn rbac_grants_exactly_what_the_controller_calls() {
    let docs = Docs::load();
    // (group, resource) -> verbs; each (group, resource) in one rule only.
    type Grants = BTreeMap<(String, String), BTreeSet<String>>;
    let rules = |v: &Value| -> Grants {
        let mut out = Grants::new();
        for rule in v["rules"].as_array().unwrap() {
            for group in strs(&rule["apiGroups"]) {
                for res in strs(&rule["resources"]) {
                    let verbs = strs(&rule["verbs"]).into_iter().collect();
                    assert!(
                        out.insert((group.clone(), res.clone()), verbs).is_none(),
                        "{group}/{res} in two rules"
                    );
                }
            }
            assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none());
        }
        out
    };
    // The union of what the Device controller and the rollout controller call.
    let want = |accesses: &[&[(&str, &str, &[&str])]]| -> Grants {
        let mut out = Grants::new();
        for (g, r, v) in accesses.iter().flat_map(|a| a.iter()) {
            out.entry(((*g).to_owned(), (*r).to_owned()))
                .or_default()
                .extend(v.iter().map(|s| (*s).to_owned()));
        }
        out
    };
    assert_eq!(
        rules(docs.one("ClusterRole", "twinflash-cloud")),
        want(&[API_ACCESS, ROLLOUT_API_ACCESS])
    );
    assert_eq!(
        rules(docs.one("Role", "twinflash-cloud-leader-election")),
        want(&[&[LEASE_ACCESS]])
    );
    assert!(
        !API_ACCESS
            .iter()
            .chain(ROLLOUT_API_ACCESS)
            .any(|(_, _, v)| v.iter().any(|x| matches!(*x, "*" | "delete" | "update"))),
        "no wildcard, delete or update"
    );
    assert!(
        ROLLOUT_API_ACCESS.contains(&(
            "devices.kubeedge.io",
            "devices",
            &["get", "list", "watch", "patch"]
        )),
        "rollouts patch Devices' spec (the desired firmware), nothing else"
    );
    for (kind, name, role_kind, role) in [
        (
            "ClusterRoleBinding",
            "twinflash-cloud",
            "ClusterRole",
            "twinflash-cloud",
        ),
        (
            "RoleBinding",
            "twinflash-cloud-leader-election",
            "Role",
            "twinflash-cloud-leader-election",
        ),
    ] {
        let b = docs.one(kind, name);
        assert_eq!(b["roleRef"]["kind"], role_kind);
        assert_eq!(b["roleRef"]["name"], role);
        assert_eq!(b["subjects"][0]["kind"], "ServiceAccount");
        assert_eq!(b["subjects"][0]["name"], "twinflash-cloud");
        assert_eq!(b["subjects"][0]["namespace"], NS);
        assert_eq!(b["subjects"].as_array().unwrap().len(), 1);
    }
    docs.one("ServiceAccount", "twinflash-cloud");
    assert_eq!(
        docs.one("Role", "twinflash-cloud-leader-election")["metadata"]["namespace"],
        NS
    );
}

#[test]
fn controller_deployment_runs_with_its_account_and_a_valid_config() {
    let docs = Docs::load();
    let dep = docs.one("Deployment", "twinflash-cloud");
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "twinflash-cloud");
    let app = "app.kubernetes.io/name";
    assert_eq!(
        dep["spec"]["selector"]["matchLabels"][app],
        dep["spec"]["template"]["metadata"]["labels"][app]
    );
    let c = &pod["containers"][0];
    assert_eq!(
        strs(&c["args"]),
        vec!["--config", "/etc/twinflash/cloud.toml"]
    );
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/twinflash");
    assert_eq!(
        pod["volumes"][0]["configMap"]["name"],
        "twinflash-cloud-config"
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    // Readiness is `/readyz` (standing by, or leading with its watches synced), liveness `/healthz`, both on the
    // metrics port the controller serves them on.
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            c[probe]["httpGet"]["port"], c["ports"][0]["name"],
            "{probe}"
        );
    }

    // The embedded cloud.toml is accepted by the real loader (unknown keys would fail).
    let cfg = docs.cloud_config();
    assert_eq!(cfg.mode, Mode::Edgecore);
    assert_eq!(cfg.status_location, StatusLocation::DeviceStatus);
    assert_eq!(c["ports"][0]["containerPort"], cfg.metrics.listen.port());

    // Every example Device is selected by the configured label selector.
    let selector = cfg.watch.label_selector.unwrap();
    let (k, v) = selector.split_once('=').unwrap();
    for d in docs.of_kind("Device") {
        assert_eq!(d["metadata"]["labels"][k], v, "{}", d["metadata"]["name"]);
    }
}

#[test]
fn edge_daemonset_runs_on_edge_nodes_with_state_usb_and_config() {
    let docs = Docs::load();
    let ds = docs.one("DaemonSet", "twinflash-edge");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["node-role.kubernetes.io/edge"], "");
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "node-role.kubernetes.io/edge" && t["operator"] == "Exists"),
        "tolerates the edge taint"
    );
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["automountServiceAccountToken"], false);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(
        strs(&c["args"]),
        vec!["--config", "/etc/twinflash/edge.toml"]
    );

    let volumes = volumes_by_name(pod);
    let mounts: BTreeMap<String, String> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap().to_owned(),
                m["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();

    let edge: toml::Value =
        toml::from_str(&docs.config_map_file("twinflash-edge-config", "edge.toml")).unwrap();
    let state_dir = edge["state_dir"].as_str().unwrap();
    let state = volumes[&mounts[state_dir]];
    assert_eq!(
        state["hostPath"]["path"], state_dir,
        "state survives pod restarts"
    );
    assert_eq!(state["hostPath"]["type"], "DirectoryOrCreate");
    assert_eq!(
        volumes[&mounts["/dev/bus/usb"]]["hostPath"]["path"],
        "/dev/bus/usb"
    );
    assert_eq!(
        volumes[&mounts["/etc/twinflash"]]["configMap"]["name"],
        "twinflash-edge-config"
    );
    let mqtt = edge["mqtt"]["url"].as_str().unwrap();
    assert!(
        mqtt.starts_with("mqtt://127.0.0.1:"),
        "the node's own broker: {mqtt}"
    );

    let env: BTreeMap<&str, &Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(
        env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(env["TWINFLASH_EDGE__NODE"]["value"], "$(NODE_NAME)");
    assert!(
        env["TWINFLASH_EDGE__MQTT__CLIENT_ID"]["value"]
            .as_str()
            .unwrap()
            .contains("$(NODE_NAME)")
    );
}

#[test]
fn devices_and_model_declare_the_firmware_twins() {
    let docs = Docs::load();
    let models: Vec<DeviceModel> = docs
        .of_kind("DeviceModel")
        .into_iter()
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .collect();
    assert_eq!(models.len(), 1);
    let model = &models[0];
    let twins = [FIRMWARE, FIRMWARE_VERSION, FIRMWARE_STATE];
    for name in twins {
        let p = model
            .spec
            .properties
            .iter()
            .find(|p| p.name == name)
            .expect(name);
        assert_eq!(p.type_, "STRING", "{name}");
        let want = if name == FIRMWARE {
            "ReadWrite"
        } else {
            "ReadOnly"
        };
        assert_eq!(p.access_mode, want, "{name}");
    }
    let model_chip = model.metadata.annotations.as_ref().unwrap()[CHIP_ANNOTATION].clone();

    let edge: toml::Value =
        toml::from_str(&docs.config_map_file("twinflash-edge-config", "edge.toml")).unwrap();
    let edge_devices: BTreeMap<String, String> = edge["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_owned(),
                d["chip"].as_str().unwrap().to_owned(),
            )
        })
        .collect();

    let devices: Vec<Device> = docs
        .of_kind("Device")
        .into_iter()
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .collect();
    assert_eq!(devices.len(), 2);
    for d in &devices {
        let name = d.metadata.name.clone().unwrap();
        for twin in twins {
            assert!(d.declares(twin), "{name} declares {twin}");
        }
        assert_digest_pinned(&name, d);
        assert_eq!(
            d.spec.device_model_ref.as_ref().unwrap().name,
            model.metadata.name.clone().unwrap()
        );
        assert!(!d.spec.node_name.is_empty());
        let id = format!("{}/{name}", d.metadata.namespace.clone().unwrap());
        assert_eq!(
            edge_devices.get(&id),
            Some(&model_chip),
            "edge config lists {id} with the model's chip"
        );
    }
}

#[test]
fn mosquitto_bridge_carries_only_the_firmware_twin_topics_at_qos_1() {
    let mut confs = Vec::new();
    files(&manifests_dir(), &["conf"], &mut confs);
    assert_eq!(confs.len(), 1, "{confs:?}");
    let text = std::fs::read_to_string(&confs[0]).unwrap();
    let mut settings: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line.split_once(' ').unwrap();
        settings.entry(key).or_default().push(value.trim());
    }
    assert_eq!(settings["connection"].len(), 1);
    assert_eq!(settings["cleansession"], vec!["false"]);
    assert!(!settings["remote_clientid"][0].is_empty());
    let topics: BTreeSet<&str> = settings["topic"].iter().copied().collect();
    let want: BTreeSet<&str> = [
        "$hw/events/device/+/+/twin/update both 1",
        "$hw/events/device/+/+/twin/update/delta in 1",
        "$hw/events/device/+/+/twin/get out 1",
        "$hw/events/device/+/+/twin/get/result in 1",
    ]
    .into();
    assert_eq!(topics, want);
}

#[test]
fn shipped_crd_is_the_one_the_rbac_and_the_controller_name() {
    let docs = Docs::load();
    let crd = docs.one("CustomResourceDefinition", "firmwarerollouts.twinflash.io");
    let group = crd["spec"]["group"].as_str().unwrap();
    let plural = crd["spec"]["names"]["plural"].as_str().unwrap();
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "fwr");
    for want in [plural.to_owned(), format!("{plural}/status")] {
        assert!(
            ROLLOUT_API_ACCESS
                .iter()
                .any(|(g, r, _)| *g == group && *r == want),
            "RBAC for {group}/{want}"
        );
    }
    let shipped: Value = serde_json::to_value(&twinflash_cloud::rollout::crds()[0]).unwrap();
    assert_eq!(crd, &shipped, "manifests/crds is the generated CRD");
}

/// A pod's volumes by name.
fn volumes_by_name(pod: &Value) -> BTreeMap<String, &Value> {
    pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_owned(), v))
        .collect()
}

/// The example's `firmware` desired value is a digest-pinned reference (flashed as is, on either path).
fn assert_digest_pinned(name: &str, d: &Device) {
    let desired = d.desired(FIRMWARE).unwrap();
    assert!(
        matches!(
            mqtt_schema::FirmwareRef::classify(desired),
            Ok(mqtt_schema::RefKind::Pinned(_))
        ),
        "{name}: {desired}"
    );
}

/// A flat configData: every value a string, a number or a boolean (KubeEdge
/// cannot convert nested ones, golden e11), and no number above 2^24 (float32, `dataToAny`).
fn assert_flat(what: &str, data: &Value) {
    for (k, v) in data
        .as_object()
        .unwrap_or_else(|| panic!("{what}: no configData"))
    {
        match v {
            Value::String(_) | Value::Bool(_) => {}
            Value::Number(n) => assert!(
                n.as_f64().unwrap().abs() <= 16_777_216.0,
                "{what}: {k} = {n} does not survive float32; write it as a string"
            ),
            other => panic!("{what}: {k} = {other} is nested: KubeEdge drops the Device"),
        }
    }
}

#[test]
fn dmi_daemonset_mounts_the_dmi_socket_directory_and_its_own_socket() {
    let docs = Docs::load_dmi();
    docs.one("ServiceAccount", "twinflash-edge-dmi");
    let pod = &docs.one("DaemonSet", "twinflash-edge-dmi")["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "twinflash-edge-dmi");
    assert_eq!(pod["nodeSelector"]["twinflash.io/delivery"], "dmi");
    assert_eq!(pod["automountServiceAccountToken"], false);
    let c = &pod["containers"][0];
    let volumes = volumes_by_name(pod);
    let mount_of = |path: &str| -> &Value {
        let m = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"));
        volumes[m["name"].as_str().unwrap()]
    };
    let edge: toml::Value =
        toml::from_str(&docs.config_map_file("twinflash-edge-dmi-config", "edge.toml")).unwrap();
    assert_eq!(
        mount_of("/etc/twinflash")["configMap"]["name"],
        "twinflash-edge-dmi-config"
    );
    let kubeedge = &edge["kubeedge"];
    assert_eq!(kubeedge["mode"].as_str(), Some("dmi"));
    assert_eq!(kubeedge["protocol"].as_str(), Some("twinflash"));
    assert!(
        edge.get("mqtt").is_none() && edge.get("devices").is_none(),
        "{edge}"
    );
    // edgecore's socket directory, as a directory (edgecore recreates dmi.sock at every start).
    let dmi_socket = Path::new(kubeedge["dmi_socket"].as_str().unwrap());
    assert_eq!(dmi_socket.file_name().unwrap(), "dmi.sock");
    let dir = dmi_socket.parent().unwrap().to_str().unwrap();
    assert_eq!(dir, "/etc/kubeedge");
    assert_eq!(mount_of(dir)["hostPath"]["path"], dir);
    assert_eq!(mount_of(dir)["hostPath"]["type"], "Directory");
    // The agent's socket: a plain absolute path, inside the state directory, the same path on the host (edgecore
    // dials it from there).
    let state_dir = edge["state_dir"].as_str().unwrap();
    let mapper = kubeedge["mapper_socket"].as_str().unwrap();
    assert!(
        mapper.starts_with('/') && !mapper.contains("://"),
        "{mapper}"
    );
    assert_eq!(Path::new(mapper).parent().unwrap(), Path::new(state_dir));
    assert_eq!(mount_of(state_dir)["hostPath"]["path"], state_dir);
    assert_eq!(mount_of(state_dir)["hostPath"]["type"], "DirectoryOrCreate");

    // The MQTT agent stays off the nodes labelled for DMI: one agent per node.
    let mqtt = Docs::load();
    let term = &mqtt.one("DaemonSet", "twinflash-edge")["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"]
        [0];
    assert_eq!(term["key"], "twinflash.io/delivery");
    assert_eq!(term["operator"], "NotIn");
    assert_eq!(strs(&term["values"]), vec!["dmi"]);
}

#[test]
fn dmi_examples_declare_the_protocol_flat_config_and_the_firmware_twins() {
    let docs = Docs::load_dmi();
    let model = docs.one("DeviceModel", "twinflash-board");
    assert_eq!(model["spec"]["protocol"], "twinflash");
    assert_flat(
        "DeviceModel protocolConfigData",
        &model["spec"]["protocolConfigData"],
    );
    let parsed: DeviceModel = serde_json::from_value(model.clone()).unwrap();
    for name in [FIRMWARE, FIRMWARE_VERSION, FIRMWARE_STATE] {
        assert!(
            parsed.spec.properties.iter().any(|p| p.name == name),
            "{name}"
        );
    }
    let mut backends = BTreeSet::new();
    for v in docs.of_kind("Device") {
        let name = v["metadata"]["name"].as_str().unwrap();
        let spec = &v["spec"];
        assert_eq!(spec["protocol"]["protocolName"], "twinflash", "{name}");
        assert_eq!(spec["deviceModelRef"]["name"], "twinflash-board", "{name}");
        assert_eq!(
            v["metadata"]["namespace"], model["metadata"]["namespace"],
            "{name}: the model's namespace"
        );
        assert!(
            spec["nodeName"].as_str().is_some_and(|n| !n.is_empty()),
            "{name}"
        );
        let data = &spec["protocol"]["configData"];
        assert_flat(name, data);
        backends.insert(data["flasher"].as_str().unwrap().to_owned());
        assert!(data["chip"].is_string(), "{name}: chip");
        for key in ["flash", "verify"] {
            if let Some(argv) = data.get(key) {
                let list: Vec<String> = serde_json::from_str(argv.as_str().unwrap()).unwrap();
                assert!(
                    list.iter().any(|a| a == "{file}"),
                    "{name}: {key} = {list:?}"
                );
            }
        }
        let d: Device = serde_json::from_value(v.clone()).unwrap();
        assert_digest_pinned(name, &d);
        let props = spec["properties"].as_array().unwrap();
        let prop = |n: &str| {
            props
                .iter()
                .find(|p| p["name"] == n)
                .unwrap_or_else(|| panic!("{name}: {n}"))
        };
        assert_eq!(
            prop(FIRMWARE)["desired"]["metadata"]["type"],
            "string",
            "{name}"
        );
        assert!(prop(FIRMWARE_VERSION).is_object());
        assert_eq!(prop(FIRMWARE_STATE)["reportCycle"], 60000, "{name}");
    }
    assert_eq!(
        backends,
        ["command", "probe-rs", "simulated"]
            .map(str::to_owned)
            .into(),
        "one Device per backend"
    );
}

#[test]
fn dmi_cloud_config_needs_no_mqtt_and_replaces_the_default_one() {
    let docs = Docs::load_dmi();
    let cfg = docs.cloud_config();
    assert_eq!(cfg.mode, Mode::Dmi);
    assert!(cfg.mqtt.is_none());
    // Same selector as the default config, so the example Devices are managed.
    assert_eq!(cfg.watch, Docs::load().cloud_config().watch);
    let (k, v) = cfg
        .watch
        .label_selector
        .as_deref()
        .unwrap()
        .split_once('=')
        .unwrap();
    for d in docs.of_kind("Device") {
        assert_eq!(d["metadata"]["labels"][k], v, "{}", d["metadata"]["name"]);
    }
}
