//! The agent against the harness's edgecore stand-in (`twinflash_testkit::Edgecore`, docs/kubeedge.md section 9),
//! in the fault cases where the real edgecore v1.23.1 kept a wrong twin (issue 13): convergence is judged by what the
//! stand-in STORES, never by what the agent says it sent.
//!
//! - case 1: edgecore restarts during a download and is back after the flash (it keeps its store, sends nothing);
//! - case 2: mosquitto restarts shortly before a flash ends; the agent reconnects at once, edgecore only 5 s later;
//! - case 5: cloudcore drops the first value of a twin its DeviceStatus does not hold yet (with the cloudcore
//!   stand-in writing DeviceStatus into a FakeApi);
//! - a Device unknown to edgecore (404, the KubeEdge bug about Devices created before the node connected);
//! - the cost: a converged device costs one `twin/get` per period and no edgecore write, and one small install
//!   stays within the message budget.
//!
//! Each converges "within one period after the fault ends": the period here is 5 s (`twin.anti_entropy_secs`, and
//! `twin.retry_max_secs` caps the report retries), the bound below adds edgecore's own 5 s reconnect and slack for a
//! loaded machine. Before issue 13 the agent never re-reported in cases 1 and 2 (its broker link never dropped, or
//! its re-report went to a broker with nobody subscribed), so these waits ran out.
//!
//! Cases 1 and 2 and the unknown Device also run against a real edgecore and cloudcore when EDGECORE, CLOUDCORE and
//! KUBECONFIG name them (`twinflash_testkit::MqttKubeEdge`, docs/testing.md; `--test-threads=1`): the Device is then
//! created through the API server and the store read is the real `device_twin` table. The cost and budget tests count
//! the stand-in's messages, and case 5 feeds the cloudcore stand-in by hand: they run against the stand-ins in both
//! modes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // tests: a panic is a failed test

mod support;

use std::time::{Duration, Instant};

use mqtt_schema::DeviceTwinUpdate;
use mqtt_schema::gojson::decode;
use support::{Agent, AgentSpec, image, init, push};
use twinflash_harness::{FakeApi, Registry};
use twinflash_testkit::{
    Cloudcore, Direction, Edgecore, FIRMWARE_TWINS, KubeEdgeMode, MqttKubeEdge, Observer,
};

/// The anti-entropy period and retry cap of these agents.
const PERIOD: Duration = Duration::from_secs(5);
/// How long after a fault ends edgecore's store must be right: one period, edgecore's 5 s reconnect, slack.
const CONVERGE: Duration = Duration::from_secs(20);
/// Bound of waits that are not about convergence.
const WAIT: Duration = Duration::from_secs(60);
const TWINS: [&str; 3] = FIRMWARE_TWINS;

struct Scene {
    agent: Agent,
    ke: MqttKubeEdge,
    registry: Registry,
    dir: tempfile::TempDir,
}

impl Scene {
    /// A scene against real KubeEdge when the environment names it (`real_ok`), the stand-in otherwise; `known`:
    /// the agent's devices are declared (their Device exists).
    async fn start(
        known: bool,
        real_ok: bool,
        tweak: impl FnOnce(AgentSpec<'_>) -> AgentSpec<'_>,
    ) -> Scene {
        init();
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::start().unwrap();
        let ke_dir = dir.path().join("kubeedge");
        let ke = if real_ok {
            MqttKubeEdge::start(&ke_dir, false).await
        } else {
            MqttKubeEdge::standin(&ke_dir, false).await
        };
        let spec = AgentSpec {
            mqtt_extra: "reconnect_max_secs = 1\n".into(),
            extra_sections: format!(
                "[twin]\nanti_entropy_secs = {}\nretry_max_secs = {}\n",
                PERIOD.as_secs(),
                PERIOD.as_secs()
            ),
            node: ke.node().to_owned(),
            device_prefix: ke.device_prefix(),
            ..AgentSpec::new(dir.path(), ke.mqtt().port(), vec![registry.host()], 1)
        };
        let agent = Agent::start(tweak(spec));
        if known {
            for d in &agent.devices {
                ke.declare(&d.id, &TWINS).await;
            }
        }
        Scene {
            agent,
            ke,
            registry,
            dir,
        }
    }

    /// The edgecore stand-in (stand-in-only tests).
    fn edgecore(&self) -> &Edgecore {
        self.ke.standin_edgecore().expect("a stand-in scene")
    }

    fn id(&self) -> String {
        self.agent.devices[0].id.clone()
    }

    async fn push(&self, tag: &str, bytes: &[u8]) -> String {
        push(
            &self.registry,
            self.dir.path(),
            &format!("fw/{tag}"),
            bytes,
            "1.0.0",
            support::CHIP,
        )
        .await
    }

    /// Waits until edgecore stores `firmware-state` starting with `prefix`.
    async fn wait_state(&self, prefix: &str, within: Duration) {
        let id = self.id();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self
                .ke
                .actual(&id, "firmware-state")
                .is_some_and(|s| s.starts_with(prefix))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "edgecore never stored a state starting with {prefix:?}\n{}\n--- agent log ---\n{}",
            self.ke.dump(),
            self.agent.log()
        );
    }

    /// Waits until the simulated device completed the flash of `reference`.
    async fn wait_flashed(&self, reference: &str) {
        let deadline = Instant::now() + WAIT;
        while self.agent.devices[0].completed(reference) == 0 {
            assert!(
                Instant::now() < deadline,
                "never flashed\n{}",
                self.agent.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts that edgecore's store names `reference` installed within [`CONVERGE`] of now; returns how long it took.
    async fn converged(&self, reference: &str) -> Duration {
        let id = self.id();
        let t0 = Instant::now();
        self.ke
            .wait_actual(&id, "firmware", reference, CONVERGE)
            .await;
        self.ke
            .wait_actual(
                &id,
                "firmware-state",
                "installed",
                CONVERGE.saturating_sub(t0.elapsed()),
            )
            .await;
        self.ke
            .wait_actual(
                &id,
                "firmware-version",
                "1.0.0",
                CONVERGE.saturating_sub(t0.elapsed()),
            )
            .await;
        t0.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_1_edgecore_restarted_during_a_download_holds_the_truth_within_a_period() {
    // 200 KB at 50 KB/s: edgecore is stopped while the download runs and started again after the flash.
    let mut scene = Scene::start(true, true, |s| AgentSpec {
        rate_limit: Some(50_000),
        ..s
    })
    .await;
    let id = scene.id();
    scene.wait_state("idle", WAIT).await;
    let fw = image(1, 200_000);
    let reference = scene.push("case1:1.0.0", &fw).await;
    scene.ke.set_expected(&id, "firmware", &reference).await;
    scene.wait_state("downloading", WAIT).await;
    // A watcher on the broker sees the agent's final report go out while edgecore is away (the broker PUBACKs it,
    // nobody stores it): only then does edgecore come back, so nothing but a retry can carry it.
    let watcher = Observer::start(
        scene.ke.mqtt().port(),
        "watcher",
        &[&format!("$hw/events/device/{id}/twin/update")],
    )
    .await;
    scene.ke.stop_edgecore();
    scene.wait_flashed(&reference).await;
    let deadline = Instant::now() + WAIT;
    while !watcher.messages().iter().any(|(_, p, _)| {
        decode::<DeviceTwinUpdate>(p)
            .ok()
            .and_then(|u| u.twin)
            .is_some_and(|t| {
                t.get("firmware-state")
                    .and_then(Option::as_ref)
                    .and_then(|t| t.actual.as_ref())
                    .and_then(|a| a.value.as_deref())
                    == Some("installed")
            })
    }) {
        assert!(
            Instant::now() < deadline,
            "the agent never reported installed\n{}",
            scene.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The agent's broker link never dropped: nothing but the retries of unanswered reports and its periodic
    // twin/get can repair the restarted edgecore's stale store (it sends nothing when it starts).
    scene.ke.start_edgecore().await;
    let took = scene.converged(&reference).await;
    println!(
        "case 1 [{}]: edgecore's store right {:.1} s after it came back",
        scene.ke.mode(),
        took.as_secs_f64()
    );
    assert!(scene.agent.devices[0].holds(&fw));
    assert_eq!(
        scene.agent.devices[0].started(&reference),
        1,
        "flashed once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_2_a_broker_restart_before_the_flash_ends_loses_no_final_report() {
    // A 200 KB flash at 50 KB/s; the broker restarts (its sessions gone) once the flash is under way. The agent is
    // back within a second, edgecore only after its 5 s reconnect loop: what the agent published in between was
    // PUBACKed by a broker with nobody subscribed, and is lost.
    let mut scene = Scene::start(true, true, |s| AgentSpec {
        write_bytes_per_sec: Some(50_000),
        ..s
    })
    .await;
    let id = scene.id();
    scene.wait_state("idle", WAIT).await;
    let fw = image(2, 200_000);
    let reference = scene.push("case2:1.0.0", &fw).await;
    scene.ke.set_expected(&id, "firmware", &reference).await;
    scene.wait_state("flashing", WAIT).await;
    let subscribed = scene.ke.subscriptions();
    scene.ke.mqtt_mut().restart(false).unwrap();
    scene.wait_flashed(&reference).await;
    let fault_end = Instant::now();
    scene.ke.wait_subscribed(subscribed + 1).await;
    let took = scene.converged(&reference).await;
    println!(
        "case 2 [{}]: edgecore's store right {:.1} s after the flash ended ({:.1} s after edgecore was back)",
        scene.ke.mode(),
        fault_end.elapsed().as_secs_f64(),
        took.as_secs_f64()
    );
    assert_eq!(
        scene.agent.devices[0].started(&reference),
        1,
        "flashed once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_unknown_to_edgecore_is_named_and_lands_once_edgecore_knows_it() {
    let scene = Scene::start(false, true, |s| s).await;
    let id = scene.id();
    // edgecore answers 404 to every report; the agent says why, and keeps the report.
    let deadline = Instant::now() + WAIT;
    while !scene
        .agent
        .log()
        .contains("edgecore does not know this device")
    {
        assert!(
            Instant::now() < deadline,
            "no 404 warning\n{}",
            scene.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(scene.agent.log().contains("re-create the Device"));
    if let Some(ec) = scene.ke.standin_edgecore() {
        assert!(ec.counters().not_found >= 1);
    }
    // Once the Device reaches edgecore (re-created), the kept report lands within a retry period.
    scene.ke.declare(&id, &TWINS).await;
    scene.wait_state("idle", CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_check_confirms_by_the_applications_own_report_and_a_release_it_never_names_is_reverted()
 {
    // Issue 24 (`[devices.confirm] kind = "twin"`): the device's application reports its running version in its own
    // twin property, as a KubeEdge mapper reports any property (a twin/update with an actual value on edgecore's
    // broker). The agent asks edgecore for the stored twin and confirms once the property names the flashed
    // version. Judged by edgecore's store (the real `device_twin` table in real mode).
    let confirm = "[devices.confirm]\nkind = \"twin\"\nproperty = \"app-version\"\ntimeout_secs = 8\ninterval_ms = 200\n";
    let scene = Scene::start(false, true, |s| AgentSpec {
        extra_device_toml: confirm,
        ..s
    })
    .await;
    let id = scene.id();
    let mut twins = TWINS.to_vec();
    twins.push("app-version");
    scene.ke.declare(&id, &twins).await;
    scene.wait_state("idle", CONVERGE).await;
    let (r, d) = (&scene.registry, scene.dir.path());
    let v1 = push(
        r,
        d,
        "fw/app:1.0.0",
        &image(61, 4096),
        "1.0.0",
        support::CHIP,
    )
    .await;
    let v2 = push(
        r,
        d,
        "fw/app:2.0.0",
        &image(62, 4096),
        "2.0.0",
        support::CHIP,
    )
    .await;
    let app_reports = |version: &str| {
        let payload = format!(
            r#"{{"event_id":"app-{version}","timestamp":1,"twin":{{"app-version":{{"actual":{{"value":"{version}"}},"metadata":{{"type":"string"}}}}}}}}"#
        );
        let topic = format!("$hw/events/device/{id}/twin/update");
        let port = scene.ke.mqtt().port();
        async move {
            twinflash_testkit::publish_once("127.0.0.1", port, &topic, payload.into_bytes()).await
        }
    };

    scene.ke.set_expected(&id, "firmware", &v1).await;
    scene.wait_state("confirming", WAIT).await;
    app_reports("1.0.0").await;
    scene.wait_state("installed", CONVERGE).await;
    assert_eq!(
        scene.ke.actual(&id, "firmware").as_deref(),
        Some(v1.as_str())
    );
    assert_eq!(
        scene.ke.actual(&id, "app-version").as_deref(),
        Some("1.0.0")
    );

    // 2.0.0's application never says so: no confirmation within 8 s, 1.0.0 flashed back and confirmed by the
    // application's (unchanged) report; edgecore never stores 2.0.0 as the firmware.
    scene.ke.set_expected(&id, "firmware", &v2).await;
    scene.wait_state("failed:boot-failed", WAIT).await;
    assert_eq!(
        scene.ke.actual(&id, "firmware").as_deref(),
        Some(v1.as_str())
    );
    assert_eq!(
        scene.ke.actual(&id, "firmware-version").as_deref(),
        Some("1.0.0")
    );
    assert!(
        scene.agent.devices[0].holds(&image(61, 4096)),
        "1.0.0 is back"
    );
    println!(
        "SCENARIO twin confirm [{}]: edgecore stores {:?}",
        scene.ke.mode(),
        TWINS.map(|t| (t, scene.ke.actual(&id, t)))
    );
}

/// Stand-in only (in real mode too): it counts the messages edgecore received and wrote, which only the stand-in
/// records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converged_device_costs_one_twin_get_per_period_and_no_edgecore_write() {
    let scene = Scene::start(true, false, |s| s).await;
    let id = scene.id();
    let reference = scene.push("quiet:1.0.0", &image(3, 8_000)).await;
    scene
        .edgecore()
        .set_expected(&id, "firmware", &reference)
        .await;
    scene.converged(&reference).await;
    // Let the install's last reports (and the confirmation of the first acknowledged one) settle.
    tokio::time::sleep(PERIOD).await;
    let before = scene.edgecore().counters();
    let watch = PERIOD * 3;
    tokio::time::sleep(watch).await;
    let after = scene.edgecore().counters();
    assert_eq!(
        after.updates,
        before.updates,
        "a converged device makes no edgecore write\n{}",
        scene.edgecore().dump()
    );
    let gets = after.gets - before.gets;
    assert!(
        (2..=4).contains(&gets),
        "one twin/get per {PERIOD:?} over {watch:?}: {gets}"
    );
}

/// Stand-in only (in real mode too): it counts the messages in the stand-in's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_small_install_stays_within_the_message_budget() {
    // The budget of issue 13: at most 15 messages published by the agent for one small install, at most 60 on the
    // device's topics in all (edgecore's results, documents and deltas included). Counted on the stand-in's log,
    // from the intent to the confirmation of `installed`.
    let scene = Scene::start(true, false, |s| AgentSpec {
        write_bytes_per_sec: Some(64 * 1024),
        ..s
    })
    .await;
    let id = scene.id();
    scene.wait_state("idle", WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = scene.edgecore().log().len();
    let reference = scene.push("budget:1.0.0", &image(4, 24 * 1024)).await;
    scene
        .edgecore()
        .set_expected(&id, "firmware", &reference)
        .await;
    scene.converged(&reference).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = scene.edgecore().log();
    let prefix = format!("$hw/events/device/{id}/");
    let on_device: Vec<_> = log[start..]
        .iter()
        .filter(|m| m.topic.starts_with(&prefix))
        .filter(|m| matches!(m.direction, Direction::Received | Direction::Sent))
        .collect();
    // The agent's messages: its reports and twin/get requests (the intent is the one update it did not send).
    let by_agent = on_device
        .iter()
        .filter(|m| m.direction == Direction::Received)
        .count()
        - 1;
    let states: Vec<String> = on_device
        .iter()
        .filter(|m| m.direction == Direction::Received && m.topic.ends_with("/twin/update"))
        .filter_map(|m| {
            let upd = decode::<DeviceTwinUpdate>(&m.payload).ok()?;
            upd.twin?
                .get("firmware-state")?
                .as_ref()?
                .actual
                .as_ref()?
                .value
                .clone()
        })
        .collect();
    println!(
        "one 24 KiB install: {by_agent} messages by the agent, {} on the device's topics; states {states:?}",
        on_device.len()
    );
    assert!(
        by_agent <= 15,
        "{by_agent} messages by the agent: {states:?}"
    );
    assert!(on_device.len() <= 60, "{} messages in all", on_device.len());
    // Honest progress: pending first, verifying reported, installed last.
    assert_eq!(
        states.first().map(String::as_str),
        Some("pending"),
        "{states:?}"
    );
    assert!(states.iter().any(|s| s == "verifying"), "{states:?}");
    assert_eq!(
        states.last().map(String::as_str),
        Some("installed"),
        "{states:?}"
    );
    let installed_at = states.iter().position(|s| s == "installed").unwrap();
    assert!(
        states[installed_at..].iter().all(|s| s == "installed"),
        "{states:?}"
    );
}

/// What DeviceStatus `name` reports for `twin`, if anything.
fn device_status(api: &FakeApi, name: &str, twin: &str) -> Option<String> {
    Cloudcore::reported(api, "default", name, twin)
}

async fn wait_device_status(api: &FakeApi, name: &str, twin: &str, value: &str, agent: &Agent) {
    let deadline = Instant::now() + CONVERGE;
    while device_status(api, name, twin).as_deref() != Some(value) {
        assert!(
            Instant::now() < deadline,
            "DeviceStatus {name} never reported {twin}={value}: {:?}\n--- agent log ---\n{}",
            api.get(
                "devices.kubeedge.io",
                "v1beta1",
                "devicestatuses",
                "default",
                name
            ),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stand-in only (in real mode too): it wires the cloudcore stand-in to a FakeApi by hand and re-creates
/// DeviceStatus in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_5_cloudcores_first_write_loss_never_hides_a_settled_state() {
    // cloudcore drops the first value of every twin its DeviceStatus does not hold yet (docs/kubeedge.md section 8).
    // A settled state (idle, installed) is followed by nothing until something happens, so it must not be the only
    // write: the first report edgecore acknowledges after a start is confirmed once.
    let mut scene = Scene::start(true, false, |s| s).await;
    let api = FakeApi::start().unwrap();
    let id = scene.id();
    let name = id.rsplit('/').next().unwrap().to_owned();
    api.put(serde_json::json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"properties": TWINS.iter().map(|t| serde_json::json!({"name": t})).collect::<Vec<_>>()},
    }))
    .unwrap();
    let cloudcore = Cloudcore::new(&api);
    let wire = |edgecore: &Edgecore| {
        let mut syncs = edgecore.syncs();
        let cloudcore = cloudcore.clone();
        tokio::spawn(async move {
            while let Some(s) = syncs.recv().await {
                cloudcore
                    .apply_sync(
                        s.namespace.as_deref().unwrap_or_default(),
                        &s.name,
                        &s.twins,
                    )
                    .await;
            }
        })
    };
    let wired = wire(scene.edgecore());
    // A fresh device: its only report is `idle`.
    wait_device_status(&api, &name, "firmware-state", "idle", &scene.agent).await;
    wait_device_status(&api, &name, "firmware", "", &scene.agent).await;
    let reference = scene.push("case5:1.0.0", &image(5, 8_000)).await;
    scene
        .edgecore()
        .set_expected(&id, "firmware", &reference)
        .await;
    wait_device_status(&api, &name, "firmware", &reference, &scene.agent).await;
    wait_device_status(&api, &name, "firmware-state", "installed", &scene.agent).await;
    wait_device_status(&api, &name, "firmware-version", "1.0.0", &scene.agent).await;
    // The Device is re-created (a fresh DeviceStatus) and the agent restarts: its only report is `installed`.
    wired.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.put(serde_json::json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceStatus",
        "metadata": {"name": name, "namespace": "default"},
        "status": {"twins": []},
    }))
    .unwrap();
    let _wired = cloudcore.follow(scene.edgecore());
    scene.agent.kill9();
    scene.agent.spawn();
    wait_device_status(&api, &name, "firmware", &reference, &scene.agent).await;
    wait_device_status(&api, &name, "firmware-state", "installed", &scene.agent).await;
    wait_device_status(&api, &name, "firmware-version", "1.0.0", &scene.agent).await;
}
