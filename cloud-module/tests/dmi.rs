//! Mode `dmi` against FakeApi (the API server's JSON patch semantics, `test` included) and a real mosquitto: a
//! tag is pinned once into `desired.metadata["twinflash.io/pinned"]` with the user's value and every other property
//! untouched, pinned again when the tag changes, a digest needs no write; a stale Device is nudged through
//! `desired.metadata["twinflash.io/nudge"]`, a converged one never; nothing is ever published over MQTT, and the
//! binary runs in this mode with no `[mqtt]` at all.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::client;
use twinflash_cloud::config::{Mode, StatusLocation};
use twinflash_cloud::controller::{self, Context};
use twinflash_cloud::crd::Device;
use twinflash_cloud::dmi::{KubeNudger, NUDGE_KEY, NoMqtt, PINNED_KEY};
use twinflash_cloud::seams::{MemoryResolver, ResolvedArtifact};
use twinflash_cloud::status::apply_actual_report;
use twinflash_harness::{FakeApi, Mosquitto};
use twinflash_testkit::{Observer, init, wait_until};

const NS: &str = "default";
const GROUP: (&str, &str, &str) = ("devices.kubeedge.io", "v1beta1", "devices");
const PERIOD: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const TAG: &str = "registry.local:5000/fw/blinky:1.4.2";
const TAG2: &str = "registry.local:5000/fw/blinky:1.5.0";

fn pin_of(tag: &str, byte: &str) -> String {
    format!("{tag}@sha256:{}", byte.repeat(32))
}

/// A Device as in manifests/examples/dmi: the three properties, `firmware` first with the user's metadata.
fn device(name: &str, firmware: &str) -> Value {
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "nodeName": "edge-1",
            "protocol": {"protocolName": "twinflash", "configData": {"flasher": "simulated", "chip": "sim"}},
            "properties": [
                {"name": "firmware", "desired": {"value": firmware, "metadata": {"type": "string"}}},
                {"name": "firmware-version", "desired": {"value": ""}},
                {"name": "firmware-state", "desired": {"value": ""}, "reportCycle": 60000},
            ],
        },
    })
}

/// A DeviceStatus whose twins cloudcore wrote long ago (`apply_actual_report`: cloudcore's rules).
fn device_status(name: &str, firmware: &str, state: &str) -> Value {
    let d: Device = serde_json::from_value(device(name, firmware)).unwrap();
    let actual = BTreeMap::from([
        ("firmware".to_owned(), firmware.to_owned()),
        ("firmware-state".to_owned(), state.to_owned()),
    ]);
    let status = apply_actual_report(&d.spec.properties, None, &actual, 1_700_000_000_000);
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceStatus",
        "metadata": {"name": name, "namespace": NS},
        "status": status,
    })
}

/// A client of `api` (its kubeconfig written into `dir`).
struct Fleet {
    api: FakeApi,
    ctx: Arc<Context>,
    run: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// The controller in mode dmi (no MQTT client: [`NoMqtt`]), anti-entropy every `period` (zero: off).
    async fn start(api: FakeApi, resolver: MemoryResolver, period: Duration) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let client = client(&api, dir.path()).await;
        let mut ctx = Context::new(
            client.clone(),
            Arc::new(NoMqtt),
            Arc::new(resolver),
            StatusLocation::DeviceStatus,
            HOUR,
            Some("test-pod".into()),
        );
        ctx.mode = Mode::Dmi;
        ctx.anti_entropy = period;
        ctx.nudger = Some(Arc::new(KubeNudger::new(client)));
        let ctx = Arc::new(ctx);
        let c = ctx.clone();
        let run = tokio::spawn(async move { controller::run(c, Some(NS), None).await });
        Fleet {
            api,
            ctx,
            run,
            _dir: dir,
        }
    }

    fn device(&self, name: &str) -> Value {
        let (g, v, p) = GROUP;
        self.api.get(g, v, p, NS, name).unwrap()
    }

    /// Every stored version of Device `name`, oldest first.
    fn versions(&self, name: &str) -> Vec<Value> {
        let (g, v, p) = GROUP;
        self.api
            .history(g, v, p)
            .into_iter()
            .filter(|r| r.object["metadata"]["name"] == name)
            .map(|r| r.object)
            .collect()
    }

    /// The JSON patches sent for Device `name`.
    fn json_patches(&self, name: &str) -> usize {
        self.api
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with(&format!("/devices/{name}")))
            .filter(|r| r.content_type.starts_with("application/json-patch+json"))
            .count()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.run.abort();
    }
}

/// Mode dmi published nothing: the observer (subscribed to `#`) saw no message.
fn assert_silent(obs: &Observer) {
    let seen = obs.messages();
    assert!(seen.is_empty(), "published over MQTT in mode dmi: {seen:?}");
}

fn firmware(d: &Value) -> &Value {
    &d["spec"]["properties"][0]
}

fn artifact(digest_ref: &str) -> ResolvedArtifact {
    ResolvedArtifact {
        digest_ref: digest_ref.to_owned(),
        chip: None,
        version: Some("1.4.2".into()),
    }
}

#[tokio::test]
async fn a_tag_is_pinned_once_in_metadata_and_again_when_it_changes() {
    init();
    let (p1, p2) = (pin_of(TAG, "ab"), pin_of(TAG2, "cd"));
    let digest = pin_of("registry.local:5000/fw/blinky", "ef");
    let resolver = MemoryResolver::default();
    resolver.insert(TAG, Ok(artifact(&p1)));
    resolver.insert(TAG2, Ok(artifact(&p2)));
    resolver.insert(&digest, Ok(artifact(&digest)));
    let api = FakeApi::start().unwrap();
    api.put(device("tagged", TAG)).unwrap();
    api.put(device("digest", &digest)).unwrap();
    let before = api.get(GROUP.0, GROUP.1, GROUP.2, NS, "tagged").unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let obs = Observer::start(mqtt.port(), "observer", &["#"]).await;
    let fleet = Fleet::start(api, resolver, Duration::ZERO).await;

    wait_until(
        || firmware(&fleet.device("tagged"))["desired"]["metadata"][PINNED_KEY] == p1.as_str(),
        || format!("no pin: {}", fleet.device("tagged")),
    )
    .await;
    let after = fleet.device("tagged");
    // Only the pin was added: the user's value and metadata, the other properties and the rest of the spec as
    // they were.
    let mut expected = before["spec"].clone();
    expected["properties"][0]["desired"]["metadata"][PINNED_KEY] = json!(p1);
    assert_eq!(after["spec"], expected);
    assert_eq!(fleet.json_patches("tagged"), 1);
    // The Record and the Event as in the other modes.
    wait_until(
        || fleet.device("tagged")["metadata"]["annotations"]["twinflash.io/pinned"] == p1.as_str(),
        || format!("no record: {}", fleet.device("tagged")),
    )
    .await;
    wait_until(
        || {
            fleet
                .ctx
                .metrics
                .render()
                .contains("twinflash_cloud_intents_published_total 2\n")
        },
        || fleet.ctx.metrics.render(),
    )
    .await;

    // The digest needs no pin: its record is written, its spec never.
    wait_until(
        || {
            fleet.device("digest")["metadata"]["annotations"]["twinflash.io/reason"]
                == "IntentPublished"
        },
        || format!("digest not recorded: {}", fleet.device("digest")),
    )
    .await;
    assert_eq!(fleet.json_patches("digest"), 0);
    assert!(
        firmware(&fleet.device("digest"))["desired"]["metadata"]
            .get(PINNED_KEY)
            .is_none()
    );

    // Reconciles of the pinned Device (its own writes, a resync) write no second pin.
    tokio::time::sleep(PERIOD).await;
    assert_eq!(fleet.json_patches("tagged"), 1, "pinned twice");

    // A kubectl edit of the tag alone: the old pin no longer matches and is replaced.
    let mut edited = fleet.device("tagged");
    edited["spec"]["properties"][0]["desired"]["value"] = json!(TAG2);
    fleet.api.put(edited).unwrap();
    wait_until(
        || firmware(&fleet.device("tagged"))["desired"]["metadata"][PINNED_KEY] == p2.as_str(),
        || format!("no new pin: {}", fleet.device("tagged")),
    )
    .await;
    let now = fleet.device("tagged");
    assert_eq!(firmware(&now)["desired"]["value"], TAG2);
    assert_eq!(firmware(&now)["desired"]["metadata"]["type"], "string");
    // A `kubectl apply` of the manifest drops the pin with the list: it comes back.
    fleet.api.put(device("tagged", TAG2)).unwrap();
    wait_until(
        || firmware(&fleet.device("tagged"))["desired"]["metadata"][PINNED_KEY] == p2.as_str(),
        || format!("pin not restored: {}", fleet.device("tagged")),
    )
    .await;
    // Every stored version kept the user's value: the controller never wrote `desired.value`.
    for v in fleet.versions("tagged") {
        let value = firmware(&v)["desired"]["value"].clone();
        assert!(value == TAG || value == TAG2, "desired.value written: {v}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_silent(&obs);
}

#[tokio::test]
async fn a_pin_refused_by_the_test_guard_is_not_forced() {
    init();
    // The Device's firmware property sits at index 0 in the cache; the API server's copy has it moved (an edit the
    // watch has not delivered yet is the same situation): the `test` op fails with 422 and nothing is written.
    let api = FakeApi::start().unwrap();
    let mut moved = device("tagged", TAG);
    let props = moved["spec"]["properties"].as_array_mut().unwrap();
    props.swap(0, 1);
    let patch = json!([
        {"op": "test", "path": "/spec/properties/0/name", "value": "firmware"},
        {"op": "add", "path": "/spec/properties/0/desired/metadata", "value": {PINNED_KEY: "x"}},
    ]);
    api.put(moved).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&api, dir.path()).await;
    let key = mqtt_schema::DeviceId::namespaced(NS, "tagged").unwrap();
    let err = twinflash_cloud::dmi::patch_device(&client, &key, patch)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err}"
    );
    let stored = api.get(GROUP.0, GROUP.1, GROUP.2, NS, "tagged").unwrap();
    assert!(
        stored["spec"]["properties"][1]["desired"]["metadata"]
            .get(PINNED_KEY)
            .is_none()
    );
}

#[tokio::test]
async fn a_stale_device_is_nudged_through_its_spec_and_a_converged_one_never() {
    init();
    let p = pin_of("registry.local:5000/fw/blinky", "ab");
    let old = pin_of("registry.local:5000/fw/blinky", "01");
    let resolver = MemoryResolver::default();
    resolver.insert(&p, Ok(artifact(&p)));
    let api = FakeApi::start().unwrap();
    for obj in [
        device("stale", &p),
        device("done", &p),
        device_status("stale", &old, "downloading:40"),
        device_status("done", &p, "installed"),
    ] {
        api.put(obj).unwrap();
    }
    let mqtt = Mosquitto::start().unwrap();
    let obs = Observer::start(mqtt.port(), "observer", &["#"]).await;
    let fleet = Fleet::start(api, resolver, PERIOD).await;
    let nudges = |name: &str| -> Vec<String> {
        let mut seen: Vec<String> = fleet
            .versions(name)
            .iter()
            .filter_map(|v| {
                firmware(v)["desired"]["metadata"][NUDGE_KEY]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        seen.dedup();
        seen
    };
    wait_until(
        || !nudges("stale").is_empty(),
        || format!("no nudge: {}", fleet.device("stale")),
    )
    .await;
    let d = fleet.device("stale");
    assert_eq!(firmware(&d)["desired"]["value"], p.as_str());
    assert_eq!(firmware(&d)["desired"]["metadata"]["type"], "string");
    assert_eq!(
        d["spec"]["properties"][2],
        device("stale", &p)["spec"]["properties"][2]
    );
    tokio::time::sleep(PERIOD * 5).await;
    let n = nudges("stale").len();
    assert!((4..=7).contains(&n), "{n} nudges in about 6 periods");
    assert!(nudges("done").is_empty(), "a converged Device was nudged");
    assert!(fleet.ctx.metrics.nudges() >= 4);
    assert!(
        fleet
            .ctx
            .metrics
            .render()
            .contains("twinflash_cloud_anti_entropy_stale_devices 1\n")
    );
    // Converged: the nudges stop.
    fleet
        .api
        .put(device_status("stale", &p, "installed"))
        .unwrap();
    tokio::time::sleep(PERIOD * 2).await;
    let settled = nudges("stale").len();
    tokio::time::sleep(PERIOD * 3).await;
    assert_eq!(nudges("stale").len(), settled, "nudged after converging");
    assert_silent(&obs);
}

#[tokio::test]
async fn the_binary_leads_in_mode_dmi_without_any_mqtt_section() {
    init();
    let api = FakeApi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cloud.toml");
    let metrics = format!("127.0.0.1:{}", twinflash_harness::free_port());
    std::fs::write(
        &config,
        format!("mode = \"dmi\"\n[metrics]\nlisten = \"{metrics}\"\n"),
    )
    .unwrap();
    let log = dir.path().join("cloud.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_twinflash-cloud"))
        .arg("--config")
        .arg(&config)
        .env("KUBECONFIG", api.kubeconfig(dir.path()).unwrap())
        .env("POD_NAME", "dmi-1")
        .env("POD_NAMESPACE", "twinflash-system")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(
        || text().contains("mode dmi: KubeEdge delivers the Devices"),
        || format!("the dmi replica never led: {}", text()),
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !text().to_lowercase().contains("mqtt delivery"),
        "{}",
        text()
    );
}
