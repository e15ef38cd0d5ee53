//! Edgecore mode end to end, with KubeEdge played by the harness's stand-ins (docs/kubeedge.md sections 9 and 10):
//! FakeApi holds the Devices, `twinflash-cloud` (the real binary, edgecore mode) turns their desired `firmware` into
//! `expected` on edgecore's MQTT topics, the `Edgecore` stand-in stores it and sends the agent the delta, a real
//! `twinflash-edge` installs and reports, and edgecore's cloud syncs go through the `Cloudcore` stand-in into
//! DeviceStatus. Convergence is judged by DeviceStatus, as an operator sees it.
//!
//! - Issue 13, case 3: edgecore's link to cloudcore is cut during an install. edgecore drops the syncs (it never
//!   sends them again) and the agent, converged, stays quiet: only twinflash-cloud's anti-entropy nudge (a `twin/get`
//!   that makes the agent report again) brings DeviceStatus to the truth, within one period after the link is back,
//!   without a new intent. With the nudge off (`anti_entropy.period_secs = 0`) it stays wrong.
//! - Issue 13, point 4: a restart of twinflash-cloud after cloudcore rewrote `observedDesired` publishes nothing
//!   again and posts no second Event for the same intent.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twinflash_harness::{FakeApi, Mosquitto, Registry, free_port};
use twinflash_testkit::CloudProcess as Cloud;
use twinflash_testkit::{
    Agent, AgentSpec, CHIP, Cloudcore, Direction, Edgecore, EdgecoreOptions, FIRMWARE_TWINS, image,
    init, push,
};

const NS: &str = "default";
const DEV: (&str, &str, &str) = ("devices.kubeedge.io", "v1beta1", "devices");
/// twinflash-cloud's anti-entropy period in this test.
const PERIOD: Duration = Duration::from_secs(5);
/// DeviceStatus must be right this soon after the fault ends: one period, its scan interval and jitter, slack.
const CONVERGE: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(90);

fn device_json(name: &str, desired: &str) -> Value {
    let prop = |n: &str, v: &str| json!({"name": n, "desired": {"value": v, "metadata": {"type": "string"}}});
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": name, "namespace": NS, "annotations": {"twinflash.io/chip": CHIP}},
        "spec": {
            "nodeName": "node-a",
            "properties": [prop("firmware", desired), prop("firmware-version", ""), prop("firmware-state", "")],
        },
    })
}

fn reported(api: &FakeApi, name: &str, twin: &str) -> Option<String> {
    api.get("devices.kubeedge.io", "v1beta1", "devicestatuses", NS, name)?["status"]["twins"]
        .as_array()?
        .iter()
        .find(|t| t["propertyName"] == twin)?["reported"]["value"]
        .as_str()
        .map(str::to_owned)
}

fn installed(api: &FakeApi, name: &str, reference: &str) -> bool {
    reported(api, name, "firmware").as_deref() == Some(reference)
        && reported(api, name, "firmware-state").as_deref() == Some("installed")
}

fn published_events(api: &FakeApi, name: &str) -> usize {
    api.list("events.k8s.io", "v1", "events", Some(NS))
        .iter()
        .filter(|e| e["regarding"]["name"] == name && e["reason"] == "IntentPublished")
        .count()
}

/// The controller's configuration: edgecore mode, DeviceStatus objects, nudge period `period` (0: off).
fn cloud_config(mqtt_port: u16, registry_host: &str, period: Duration) -> String {
    format!(
        "mode = \"edgecore\"\nstatus_location = \"device-status\"\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\nclient_id = \"twinflash-cloud-ke\"\n\
         [registry]\nplain_http = [\"{registry_host}\"]\n\
         [anti_entropy]\nperiod_secs = {}\n\
         [metrics]\nlisten = \"127.0.0.1:{}\"\n",
        period.as_secs(),
        free_port()
    )
}

struct Scene {
    dir: tempfile::TempDir,
    api: FakeApi,
    registry: Registry,
    mqtt: Mosquitto,
    edgecore: Edgecore,
    agent: Agent,
    kubeconfig: std::path::PathBuf,
}

impl Scene {
    async fn start() -> Scene {
        init();
        let dir = tempfile::tempdir().unwrap();
        let mqtt = Mosquitto::start().unwrap();
        let registry = Registry::start().unwrap();
        let api = FakeApi::start().unwrap();
        let kubeconfig = api.kubeconfig(dir.path()).unwrap();
        let edgecore = Edgecore::start(EdgecoreOptions::new(
            mqtt.port(),
            dir.path().join("edgecore.json"),
        ))
        .await;
        // edgecore's syncs reach DeviceStatus through cloudcore's upstream.
        Cloudcore::new(&api).follow(&edgecore);
        let agent_dir = dir.path().join("agent");
        let agent = Agent::start(AgentSpec {
            write_bytes_per_sec: Some(40_000),
            ..AgentSpec::new(&agent_dir, mqtt.port(), vec![registry.host()], 1)
        });
        // The membership update cloudcore sends when the Device is created.
        edgecore.add_device(&agent.devices[0].id, &FIRMWARE_TWINS);
        Scene {
            dir,
            api,
            registry,
            mqtt,
            edgecore,
            agent,
            kubeconfig,
        }
    }

    fn name(&self) -> String {
        self.agent.devices[0]
            .id
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned()
    }

    async fn push(&self, tag: &str, seed: u8) -> String {
        push(
            &self.registry,
            self.dir.path(),
            &format!("fw/blinky:{tag}"),
            &image(seed, 120_000),
            tag,
            CHIP,
        )
        .await
    }

    fn cloud(&self, period: Duration) -> Cloud {
        Cloud::start(
            self.dir.path(),
            &cloud_config(self.mqtt.port(), &self.registry.host(), period),
            &self.kubeconfig,
        )
    }

    fn want(&self, reference: &str) {
        let name = self.name();
        let (g, v, p) = DEV;
        let patch = json!({"spec": {"properties": [
            {"name": "firmware", "desired": {"value": reference, "metadata": {"type": "string"}}},
            {"name": "firmware-version", "desired": {"value": "", "metadata": {"type": "string"}}},
            {"name": "firmware-state", "desired": {"value": "", "metadata": {"type": "string"}}},
        ]}});
        if self.api.get(g, v, p, NS, &name).is_none() {
            self.api.put(device_json(&name, reference)).unwrap();
        } else {
            self.api.patch_spec(g, v, p, NS, &name, &patch).unwrap();
        }
    }

    async fn until(
        &self,
        what: &str,
        within: Duration,
        cloud: &Cloud,
        ok: impl Fn() -> bool,
    ) -> Duration {
        let t0 = Instant::now();
        while !ok() {
            assert!(
                t0.elapsed() < within,
                "{what} not within {within:?}; DeviceStatus {:?}\n{}\n--- cloud log ---\n{}\n--- agent log ---\n{}",
                self.api.get(
                    "devices.kubeedge.io",
                    "v1beta1",
                    "devicestatuses",
                    NS,
                    &self.name()
                ),
                self.edgecore.dump(),
                cloud.log(),
                self.agent.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        t0.elapsed()
    }
}

/// Runs case 3 with the controller's nudge period `period`; returns how long DeviceStatus took to be right after the
/// cloud link came back (panics past [`CONVERGE`]).
async fn cloud_link_cut_during_an_install(period: Duration) -> Duration {
    let scene = Scene::start().await;
    let name = scene.name();
    let id = scene.agent.devices[0].id.clone();
    let r1 = scene.push("1.0.0", 1).await;
    let r2 = scene.push("2.0.0", 2).await;
    let cloud = scene.cloud(period);
    scene.want(&r1);
    scene
        .until("v1 installed in DeviceStatus", WAIT, &cloud, || {
            installed(&scene.api, &name, &r1)
        })
        .await;

    // A new intent; cloudcore goes away once the install is under way, and comes back after it ended.
    scene.want(&r2);
    scene
        .until("edgecore holds the v2 intent", WAIT, &cloud, || {
            scene.edgecore.expected(&id, "firmware").as_deref() == Some(r2.as_str())
        })
        .await;
    scene
        .until("the install started", WAIT, &cloud, || {
            scene
                .edgecore
                .actual(&id, "firmware-state")
                .is_some_and(|s| s.starts_with("downloading") || s.starts_with("flashing"))
        })
        .await;
    scene.edgecore.set_cloud_link(false);
    scene
        .until("edgecore stores v2 installed", WAIT, &cloud, || {
            scene.edgecore.actual(&id, "firmware").as_deref() == Some(r2.as_str())
                && scene.edgecore.actual(&id, "firmware-state").as_deref() == Some("installed")
        })
        .await;
    // Let the agent's last reports (and their confirmations) settle: edgecore drops every sync meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !installed(&scene.api, &name, &r2),
        "DeviceStatus cannot know v2 yet"
    );
    assert!(scene.edgecore.counters().syncs_dropped > 0);
    scene.edgecore.set_cloud_link(true);
    let took = scene
        .until("DeviceStatus shows v2 installed", CONVERGE, &cloud, || {
            installed(&scene.api, &name, &r2)
        })
        .await;
    let nudges = scene
        .edgecore
        .messages(
            Direction::Received,
            &format!("$hw/events/device/{id}/twin/get"),
        )
        .iter()
        .filter(|p| String::from_utf8_lossy(p).contains("twinflash-cloud-"))
        .count();
    println!(
        "case 3: DeviceStatus right {:.1} s after cloudcore came back ({nudges} nudges)",
        took.as_secs_f64()
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_3_a_cloud_link_cut_during_an_install_is_repaired_by_the_nudge() {
    cloud_link_cut_during_an_install(PERIOD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_3_without_the_nudge_device_status_stays_wrong() {
    // The control experiment: the same scene with the nudge off never converges (the agent, converged, reports
    // nothing; edgecore resends nothing).
    let outcome = tokio::spawn(cloud_link_cut_during_an_install(Duration::ZERO)).await;
    assert!(
        outcome.is_err(),
        "DeviceStatus converged without the nudge: the scene does not reproduce case 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_restart_after_cloudcore_rewrote_its_fields_publishes_nothing_again() {
    let scene = Scene::start().await;
    let name = scene.name();
    let id = scene.agent.devices[0].id.clone();
    let r1 = scene.push("1.0.0", 1).await;
    let cloud = scene.cloud(PERIOD);
    scene.want(&r1);
    scene
        .until("v1 installed in DeviceStatus", WAIT, &cloud, || {
            installed(&scene.api, &name, &r1)
        })
        .await;
    // cloudcore has rewritten observedDesired from edgecore's expected on every sync by now.
    let intents = || {
        scene
            .edgecore
            .messages(
                Direction::Received,
                &format!("$hw/events/device/{id}/twin/update"),
            )
            .iter()
            .filter(|p| String::from_utf8_lossy(p).contains("\"expected\""))
            .count()
    };
    let (before, events) = (intents(), published_events(&scene.api, &name));
    assert_eq!(before, 1, "one intent published");
    assert_eq!(events, 1, "one IntentPublished Event");
    drop(cloud);
    let cloud = scene.cloud(PERIOD);
    // Long enough for the restarted controller to reconcile and resync, and for a nudge period to pass.
    tokio::time::sleep(PERIOD * 2).await;
    assert_eq!(
        intents(),
        before,
        "the restart published the intent again\n{}",
        cloud.log()
    );
    assert_eq!(
        published_events(&scene.api, &name),
        1,
        "a second Event for the same intent"
    );
    assert!(installed(&scene.api, &name, &r1));
}
