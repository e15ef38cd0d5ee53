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
//!
//! Cases 3 (with the nudge) and the controller restart also run against a real edgecore and cloudcore when EDGECORE,
//! CLOUDCORE and KUBECONFIG name them (`twinflash_testkit::MqttKubeEdge`, docs/testing.md; `--test-threads=1`): the
//! cloud link is then cut by stopping cloudcore (an outage), the Devices, DeviceStatus and Events are the real API
//! server's, and the messages counted are seen by an observer on edgecore's broker. The control experiment (no nudge)
//! runs against the stand-ins in both modes: real KubeEdge may repair the outage by other means.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twinflash_harness::{Registry, free_port};
use twinflash_testkit::CloudProcess as Cloud;
use twinflash_testkit::real::{DEVICE, DEVICE_STATUS, EVENT, LABEL, reported};
use twinflash_testkit::{
    Agent, AgentSpec, CHIP, KubeEdgeMode, MQTT_MODEL, MqttKubeEdge, Observer, image, init, push,
};

const NS: &str = "default";
/// twinflash-cloud's anti-entropy period in this test.
const PERIOD: Duration = Duration::from_secs(5);
/// DeviceStatus must be right this soon after the fault ends: one period, its scan interval and jitter, slack (and
/// edgecore's reconnect to a restarted cloudcore in real mode).
const CONVERGE: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(90);

fn device_json(name: &str, node: &str, desired: &str) -> Value {
    let prop = |n: &str, v: &str| json!({"name": n, "desired": {"value": v, "metadata": {"type": "string"}}});
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": name, "namespace": NS, "annotations": {"twinflash.io/chip": CHIP}},
        "spec": {
            "nodeName": node,
            "deviceModelRef": {"name": MQTT_MODEL},
            "properties": [prop("firmware", desired), prop("firmware-version", ""), prop("firmware-state", "")],
        },
    })
}

/// The controller's configuration: edgecore mode, DeviceStatus objects, nudge period `period` (0: off), only the
/// test kit's Devices.
fn cloud_config(mqtt_port: u16, registry_host: &str, period: Duration) -> String {
    format!(
        "mode = \"edgecore\"\nstatus_location = \"device-status\"\n\
         [watch]\nlabel_selector = \"{}={}\"\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\nclient_id = \"twinflash-cloud-ke\"\n\
         [registry]\nplain_http = [\"{registry_host}\"]\n\
         [anti_entropy]\nperiod_secs = {}\n\
         [metrics]\nlisten = \"127.0.0.1:{}\"\n",
        LABEL.0,
        LABEL.1,
        period.as_secs(),
        free_port()
    )
}

struct Scene {
    dir: tempfile::TempDir,
    registry: Registry,
    ke: MqttKubeEdge,
    agent: Agent,
    /// Every message on the device's topics, as edgecore's broker carries them.
    watcher: Observer,
}

impl Scene {
    /// Real KubeEdge when the environment names it and `real_ok`, the stand-ins (with FakeApi and cloudcore's
    /// upstream) otherwise.
    async fn start(real_ok: bool) -> Scene {
        init();
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::start().unwrap();
        let ke_dir = dir.path().join("kubeedge");
        let ke = if real_ok {
            MqttKubeEdge::start(&ke_dir, true).await
        } else {
            MqttKubeEdge::standin(&ke_dir, true).await
        };
        let agent_dir = dir.path().join("agent");
        let agent = Agent::start(AgentSpec {
            write_bytes_per_sec: Some(40_000),
            node: ke.node().to_owned(),
            device_prefix: ke.device_prefix(),
            ..AgentSpec::new(&agent_dir, ke.mqtt().port(), vec![registry.host()], 1)
        });
        let watcher = Observer::start(
            ke.mqtt().port(),
            "ke-watcher",
            &[&format!("$hw/events/device/{}/#", agent.devices[0].id)],
        )
        .await;
        Scene {
            dir,
            registry,
            ke,
            agent,
            watcher,
        }
    }

    fn id(&self) -> String {
        self.agent.devices[0].id.clone()
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
            &cloud_config(self.ke.mqtt().port(), &self.registry.host(), period),
            &self.ke.kubeconfig().unwrap(),
        )
    }

    /// The operator wants `reference`: the Device is created (and edgecore learns it), or its desired value edited.
    async fn want(&self, reference: &str) {
        let name = self.name();
        let cluster = self.ke.cluster().unwrap();
        if cluster.get(&DEVICE, NS, &name).await.is_none() {
            self.ke
                .apply_device(&device_json(&name, self.ke.node(), reference))
                .await;
        } else {
            let patch = json!({"spec": {"properties": [
                {"name": "firmware", "desired": {"value": reference, "metadata": {"type": "string"}}},
                {"name": "firmware-version", "desired": {"value": "", "metadata": {"type": "string"}}},
                {"name": "firmware-state", "desired": {"value": "", "metadata": {"type": "string"}}},
            ]}});
            cluster
                .merge_patch(&DEVICE, NS, &name, &patch)
                .await
                .unwrap();
        }
    }

    /// What DeviceStatus reports for `twin`.
    async fn reported(&self, twin: &str) -> Option<String> {
        let status = self
            .ke
            .cluster()
            .unwrap()
            .get(&DEVICE_STATUS, NS, &self.name())
            .await?;
        reported(&status, twin)
    }

    /// DeviceStatus shows `reference` installed.
    async fn installed(&self, reference: &str) -> bool {
        self.reported("firmware").await.as_deref() == Some(reference)
            && self.reported("firmware-state").await.as_deref() == Some("installed")
    }

    /// IntentPublished Events about the Device.
    async fn published_events(&self) -> usize {
        self.ke
            .cluster()
            .unwrap()
            .list(&EVENT, Some(NS), None)
            .await
            .iter()
            .filter(|e| e["regarding"]["name"] == self.name() && e["reason"] == "IntentPublished")
            .count()
    }

    /// Messages on the device's topic `suffix` (e.g. `twin/get`) whose payload contains `needle`.
    fn seen(&self, suffix: &str, needle: &str) -> usize {
        let topic = format!("$hw/events/device/{}/{suffix}", self.id());
        self.watcher
            .messages()
            .iter()
            .filter(|(t, p, _)| *t == topic && String::from_utf8_lossy(p).contains(needle))
            .count()
    }

    async fn until(
        &self,
        what: &str,
        within: Duration,
        cloud: &Cloud,
        ok: impl AsyncFn() -> bool,
    ) -> Duration {
        let t0 = Instant::now();
        while !ok().await {
            assert!(
                t0.elapsed() < within,
                "[{}] {what} not within {within:?}; DeviceStatus {:?}\n{}\n--- cloud log ---\n{}\n--- agent log ---\n{}",
                self.ke.mode(),
                self.ke
                    .cluster()
                    .unwrap()
                    .get(&DEVICE_STATUS, NS, &self.name())
                    .await,
                self.ke.dump(),
                cloud.log(),
                self.agent.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        t0.elapsed()
    }
}

/// Runs case 3 with the controller's nudge period `period` (against real KubeEdge when `real_ok` and the environment
/// names it); returns how long DeviceStatus took to be right after the cloud link came back (panics past
/// [`CONVERGE`]).
async fn cloud_link_cut_during_an_install(period: Duration, real_ok: bool) -> Duration {
    let scene = Scene::start(real_ok).await;
    let id = scene.id();
    let r1 = scene.push("1.0.0", 1).await;
    let r2 = scene.push("2.0.0", 2).await;
    let cloud = scene.cloud(period);
    scene.want(&r1).await;
    scene
        .until("v1 installed in DeviceStatus", WAIT, &cloud, || {
            scene.installed(&r1)
        })
        .await;

    // A new intent; cloudcore goes away once the install is under way, and comes back after it ended.
    scene.want(&r2).await;
    scene
        .until("edgecore holds the v2 intent", WAIT, &cloud, || {
            std::future::ready({
                scene.ke.expected(&id, "firmware").as_deref() == Some(r2.as_str())
            })
        })
        .await;
    scene
        .until("the install started", WAIT, &cloud, || {
            std::future::ready({
                scene
                    .ke
                    .actual(&id, "firmware-state")
                    .is_some_and(|s| s.starts_with("downloading") || s.starts_with("flashing"))
            })
        })
        .await;
    scene.ke.stop_cloudcore().await;
    scene
        .until("edgecore stores v2 installed", WAIT, &cloud, || {
            std::future::ready({
                scene.ke.actual(&id, "firmware").as_deref() == Some(r2.as_str())
                    && scene.ke.actual(&id, "firmware-state").as_deref() == Some("installed")
            })
        })
        .await;
    // Let the agent's last reports (and their confirmations) settle: edgecore drops every sync meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !scene.installed(&r2).await,
        "DeviceStatus cannot know v2 yet"
    );
    if let Some(ec) = scene.ke.standin_edgecore() {
        assert!(ec.counters().syncs_dropped > 0);
    }
    scene.ke.start_cloudcore().await;
    let took = scene
        .until("DeviceStatus shows v2 installed", CONVERGE, &cloud, || {
            scene.installed(&r2)
        })
        .await;
    let nudges = scene.seen("twin/get", "twinflash-cloud-");
    println!(
        "case 3 [{}]: DeviceStatus right {:.1} s after cloudcore came back ({nudges} nudges)",
        scene.ke.mode(),
        took.as_secs_f64()
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_3_a_cloud_link_cut_during_an_install_is_repaired_by_the_nudge() {
    cloud_link_cut_during_an_install(PERIOD, true).await;
}

#[test]
fn case_3_without_the_nudge_device_status_stays_wrong() {
    // The control experiment: the same scene with the nudge off never converges (the agent, converged, reports
    // nothing; edgecore resends nothing). Stand-in only, in real mode too: it shows what the stand-in reproduces.
    // Its own thread and runtime, so that its panic is the outcome.
    let outcome = std::thread::spawn(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(cloud_link_cut_during_an_install(Duration::ZERO, false))
    })
    .join();
    assert!(
        outcome.is_err(),
        "DeviceStatus converged without the nudge: the scene does not reproduce case 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_restart_after_cloudcore_rewrote_its_fields_publishes_nothing_again() {
    let scene = Scene::start(true).await;
    let r1 = scene.push("1.0.0", 1).await;
    let cloud = scene.cloud(PERIOD);
    scene.want(&r1).await;
    scene
        .until("v1 installed in DeviceStatus", WAIT, &cloud, || {
            scene.installed(&r1)
        })
        .await;
    // cloudcore has rewritten observedDesired from edgecore's expected on every sync by now. The intents: updates of
    // the twin that carry an expected value (the agent's reports carry actual values only).
    let intents = || scene.seen("twin/update", "\"expected\"");
    let (before, events) = (intents(), scene.published_events().await);
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
        scene.published_events().await,
        1,
        "a second Event for the same intent"
    );
    assert!(scene.installed(&r1).await);
}
