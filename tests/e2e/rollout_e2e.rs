//! Issue 7's acceptance, end to end through the real binaries: real mosquitto and registry, the
//! harness's in-memory Kubernetes API server ([`FakeApi`]), `twinflash-cloud` in direct mode and
//! three `twinflash-edge` agents with ten simulated devices each. A FirmwareRollout whose second
//! wave meets devices armed to fail their flash aborts at the threshold, rolls the changed Devices
//! back, and its status names exactly the devices that failed and their code.
//!
//! The binaries come from `twinflash_testkit::{agent_binary, cloud_binary}`: beside this test in the target
//! directory (`cargo test --workspace` builds them first), else built by the test itself.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fleet;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use fleet::{DEV_GROUP, FWR_GROUP, NS, reported};
use serde_json::{Value, json};
use twinflash_cloud::rollout::plan::threshold_crossed;
use twinflash_cloud::rollout::{
    DeviceSelector, FailureThreshold, FirmwareRollout, FirmwareRolloutSpec, FirmwareRolloutStatus,
    Phase, SelectorRequirement, Strategy,
};
use twinflash_harness::{FakeApi, Mosquitto, Registry};
use twinflash_testkit::{
    Agent, AgentSpec, CHIP, CloudProcess, SimDevice, image, init, push, wait_until,
};

const DEVICES: usize = 30;
const PER_AGENT: usize = 10;
const ROLLOUT: &str = "blinky-2";

// The scenario, in numbers.
// - Waves "1", "30%", "100%" over 30 Devices started in name order: wave 1 is the canary sim-00,
//   wave 2 is sim-01..sim-09 (ceil(30 * 30%) = 9), wave 3 the other 20.
// - maxInFlight 2: wave 2 proceeds two Devices at a time.
// - Six Devices of wave 2 are armed to fail flashing v2 with `flash-failed` (a one-shot
//   `fail_after_bytes` fault and `flash_attempts = 1`, so the rollback's v1 flash then works).
//   sim-01 and sim-02 fail first: 2 failed + 1 installed is a 67 % failure rate, but a sample of 3
//   is below minSample 4 and 2 failures do not exceed maxFailures 2, so the rollout goes on (the
//   min-sample rule at work). The third failure (sim-04 or sim-06, whichever reports first)
//   exceeds maxFailures and aborts; with two Devices in flight at most one more failure can be
//   seen in the same reconcile, so the status holds 3 or 4 failures, never fewer and never more.
// - The abort happens inside wave 2: wave 3 (sim-10..sim-29) is never started.
const FAILING: [usize; 6] = [1, 2, 4, 6, 7, 8];
const MAX_IN_FLIGHT: u32 = 2;
const MAX_FAILURES: u32 = 2;

fn name(i: usize) -> String {
    format!("sim-{i:02}")
}

fn device_json(i: usize, desired: &str) -> Value {
    let labels = json!({"app": "blinky", "twinflash.io/fleet": "e2e"});
    let node = format!("node-{}", i / PER_AGENT);
    fleet::device_json(&name(i), &node, labels, CHIP, desired)
}

fn device(api: &FakeApi, i: usize) -> Value {
    fleet::device(api, &name(i))
}

/// Where the controller keeps `status.twins` (its `status_location`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Location {
    /// `Device.status` (KubeEdge < 1.23).
    Device,
    /// A `DeviceStatus` object of the same name (KubeEdge >= 1.23), created by cloudcore.
    DeviceStatus,
}

impl Location {
    fn config(self) -> &'static str {
        match self {
            Location::Device => "device",
            Location::DeviceStatus => "device-status",
        }
    }

    /// The object whose `.status.twins` holds the reports of Device `i`.
    fn twins(self, api: &FakeApi, i: usize) -> Value {
        match self {
            Location::Device => device(api, i),
            Location::DeviceStatus => api
                .get(
                    "devices.kubeedge.io",
                    "v1beta1",
                    "devicestatuses",
                    NS,
                    &name(i),
                )
                .unwrap(),
        }
    }
}

fn firmware_desired(dev: &Value) -> Value {
    dev["spec"]["properties"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "firmware"))
        .map(|p| p["desired"].clone())
        .unwrap_or(Value::Null)
}

fn installed(dev: &Value, reference: &str) -> bool {
    reported(dev, "firmware").as_deref() == Some(reference)
        && reported(dev, "firmware-state").as_deref() == Some("installed")
}

fn rollout_status(api: &FakeApi) -> Option<FirmwareRolloutStatus> {
    fleet::rollout_status(api, ROLLOUT)
}

/// The references a simulated device started (`which` = "started") or verified ("completed")
/// flashing, from its `counters.json`.
fn flashes(dir: &Path, which: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(dir.join("counters.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    v[which]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn cloud_config(mqtt_port: u16, registry_host: &str, location: Location) -> String {
    fleet::cloud_config(
        mqtt_port,
        registry_host,
        location.config(),
        "twinflash-cloud-e2e",
    )
}

fn rollout(firmware: &str) -> Value {
    let spec = FirmwareRolloutSpec {
        selector: DeviceSelector {
            match_labels: BTreeMap::from([("app".to_owned(), "blinky".to_owned())]),
            match_expressions: vec![SelectorRequirement {
                key: "twinflash.io/fleet".into(),
                operator: "In".into(),
                values: vec!["e2e".into()],
            }],
        },
        firmware: firmware.to_owned(),
        strategy: Strategy {
            waves: vec!["1".into(), "30%".into(), "100%".into()],
            max_in_flight: MAX_IN_FLIGHT,
            failure_threshold: FailureThreshold {
                max_failure_percent: Some(50),
                min_sample: 4,
                max_failures: Some(MAX_FAILURES),
            },
            device_timeout_seconds: 120,
            pause_between_waves_seconds: 0,
        },
        paused: false,
        abort: false,
        rollback_on_abort: true,
    };
    let mut r = FirmwareRollout::new(ROLLOUT, spec);
    r.metadata.namespace = Some(NS.into());
    serde_json::to_value(&r).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_aborts_at_the_threshold_and_rolls_back_with_status_in_the_device() {
    scenario(Location::Device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_aborts_at_the_threshold_and_rolls_back_with_device_status_objects() {
    scenario(Location::DeviceStatus).await;
}

async fn scenario(location: Location) {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let api = FakeApi::start().unwrap();
    // KubeEdge's Device and DeviceStatus CRDs declare no status subresource (build/crds/devices): the
    // fake serves both so (harness/src/kubeapi/resources.rs); said again here for the Device.
    api.without_status_subresource(DEV_GROUP.0, DEV_GROUP.1, DEV_GROUP.2);
    let kubeconfig = api.kubeconfig(dir.path()).unwrap();

    let fw1 = image(1, 4096);
    let fw2 = image(2, 4096);
    let r1 = push(
        &registry,
        dir.path(),
        "fw/blinky:1.0.0",
        &fw1,
        "1.0.0",
        CHIP,
    )
    .await;
    let r2 = push(
        &registry,
        dir.path(),
        "fw/blinky:2.0.0",
        &fw2,
        "2.0.0",
        CHIP,
    )
    .await;
    for i in 0..DEVICES {
        api.put(device_json(i, &r1)).unwrap();
        if location == Location::DeviceStatus {
            // cloudcore creates the DeviceStatus of every Device.
            api.put(json!({
                "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceStatus",
                "metadata": {"name": name(i), "namespace": NS},
                "spec": {"deviceRef": name(i)},
            }))
            .unwrap();
        }
    }

    // Three agents, ten devices each. A rollback installs an older version: allow_downgrade.
    let agents: Vec<Agent> = (0..DEVICES / PER_AGENT)
        .map(|a| {
            let agent_dir = dir.path().join(format!("agent-{a}"));
            Agent::start(AgentSpec {
                client_id: format!("agent-e2e-{a}"),
                node: format!("node-{a}"),
                first_device: a * PER_AGENT,
                extra_device_toml: "allow_downgrade = true\n",
                flash_attempts: 1,
                ..AgentSpec::new(&agent_dir, mqtt.port(), vec![registry.host()], PER_AGENT)
            })
        })
        .collect();
    let sims: Vec<&SimDevice> = agents.iter().flat_map(|a| a.devices.iter()).collect();
    let cloud = CloudProcess::start(
        dir.path(),
        &cloud_config(mqtt.port(), &registry.host(), location),
        &kubeconfig,
    );
    let logs = || {
        let agent_logs: String = agents
            .iter()
            .map(|a| a.log())
            .collect::<Vec<_>>()
            .join("\n---\n");
        format!("cloud log:\n{}\nagent logs:\n{agent_logs}", cloud.log())
    };

    // 1. Everything converges on v1: the controller publishes, the agents install, the relay
    //    writes the reports into Device.status of the fake API server.
    wait_until(
        || (0..DEVICES).all(|i| installed(&location.twins(&api, i), &r1)),
        || {
            let missing: Vec<String> = (0..DEVICES)
                .filter(|i| !installed(&location.twins(&api, *i), &r1))
                .map(name)
                .collect();
            format!("not installed with v1: {missing:?}\n{}", logs())
        },
    )
    .await;
    for (i, sim) in sims.iter().enumerate() {
        assert!(sim.holds(&fw1), "{} holds v1", name(i));
        assert_eq!(
            reported(&location.twins(&api, i), "firmware-version").as_deref(),
            Some("1.0.0")
        );
    }
    // Every Device got its IntentPublished Event, although the relay writes reports into the same
    // status concurrently (a conflicting status patch must not lose the Event).
    let published: BTreeSet<String> = api
        .list("events.k8s.io", "v1", "events", Some(NS))
        .iter()
        .filter(|e| e["regarding"]["kind"] == "Device" && e["reason"] == "IntentPublished")
        .filter_map(|e| e["regarding"]["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(published, (0..DEVICES).map(name).collect::<BTreeSet<_>>());
    let (lg, lv, lp) = ("coordination.k8s.io", "v1", "leases");
    let lease = api
        .get(lg, lv, lp, NS, "twinflash-cloud")
        .expect("the controller took the Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "twinflash-cloud-e2e");

    // 2. Arm the failures, then create the rollout.
    for i in FAILING {
        std::fs::write(
            sims[i].dir.join("faults.json"),
            r#"{"fail_after_bytes": 1024}"#,
        )
        .unwrap();
    }
    api.put(rollout(&r2)).unwrap();
    wait_until(
        || rollout_status(&api).is_some_and(|s| s.phase == Phase::RolledBack),
        || format!("rollout status {:#?}\n{}", rollout_status(&api), logs()),
    )
    .await;
    let status = rollout_status(&api).unwrap();
    eprintln!("final rollout status: {status:#?}");

    // 3. Which Devices the rollout started: every Device whose desired value was ever v2.
    let (g, v, p) = DEV_GROUP;
    let started: BTreeSet<usize> = api
        .history(g, v, p)
        .iter()
        .filter(|r| firmware_desired(&r.object)["value"] == r2.as_str())
        .filter_map(|r| {
            r.object["metadata"]["name"]
                .as_str()?
                .strip_prefix("sim-")?
                .parse()
                .ok()
        })
        .collect();
    eprintln!("started with v2: {started:?}");
    assert!(started.contains(&0), "the canary was started");
    assert!(
        started.iter().all(|i| *i < 10),
        "wave 3 never started: {started:?}"
    );
    assert!(started.len() <= 10);

    // 4. The threshold: no status before the abort crossed it; the abort status does.
    let (fg, fv, fp) = FWR_GROUP;
    let statuses: Vec<FirmwareRolloutStatus> = api
        .history(fg, fv, fp)
        .iter()
        .filter_map(|r| serde_json::from_value(r.object.get("status")?.clone()).ok())
        .collect();
    let threshold = FailureThreshold {
        max_failure_percent: Some(50),
        min_sample: 4,
        max_failures: Some(MAX_FAILURES),
    };
    let abort_at = statuses
        .iter()
        .position(|s| s.phase == Phase::RolledBack)
        .expect("a RolledBack status was written");
    for s in &statuses[..abort_at] {
        assert!(
            matches!(s.phase, Phase::Pending | Phase::Progressing),
            "only progress before the abort: {s:#?}"
        );
        assert!(
            !threshold_crossed(&threshold, s.failed, s.installed),
            "crossed before the abort: {s:#?}"
        );
    }
    assert_eq!(
        abort_at,
        statuses.len() - 1,
        "nothing written after the terminal status"
    );
    assert!(threshold_crossed(
        &threshold,
        status.failed,
        status.installed
    ));
    let crossing = MAX_FAILURES + 1;
    assert!(
        (crossing..crossing + MAX_IN_FLIGHT).contains(&status.failed),
        "{} failures: the abort comes with the failure that exceeds maxFailures, plus at most the \
         other device in flight",
        status.failed
    );
    assert!(
        status.message.contains("crosses the failure threshold"),
        "{}",
        status.message
    );
    assert_eq!(status.current_wave, 2);

    // 5. failedDevices: exactly the armed Devices that were started and had reported before the
    //    abort (a started armed Device still in flight then is in inFlight), all flash-failed.
    let failed: BTreeMap<String, (String, u32)> = status
        .failed_devices
        .iter()
        .map(|f| (f.device.clone(), (f.code.clone(), f.wave)))
        .collect();
    assert_eq!(failed.len(), status.failed as usize);
    let in_flight: BTreeSet<String> = status.in_flight.iter().map(|e| e.device.clone()).collect();
    let armed_started: BTreeSet<String> = started
        .iter()
        .filter(|i| FAILING.contains(i))
        .map(|i| name(*i))
        .collect();
    let failed_names: BTreeSet<String> = failed.keys().cloned().collect();
    assert!(
        failed_names.is_subset(&armed_started),
        "{failed_names:?} vs {armed_started:?}"
    );
    assert_eq!(
        armed_started
            .difference(&failed_names)
            .cloned()
            .collect::<BTreeSet<_>>(),
        armed_started
            .intersection(&in_flight)
            .cloned()
            .collect::<BTreeSet<_>>(),
        "an armed, started Device is either failed or was still in flight at the abort"
    );
    for (device, (code, wave)) in &failed {
        assert_eq!((code.as_str(), *wave), ("flash-failed", 2), "{device}");
    }
    assert!(failed_names.contains("sim-01") && failed_names.contains("sim-02"));
    // The canary installed v2 (a verified flash) before wave 2 started.
    assert!(!failed_names.contains("sim-00"));
    assert!(
        flashes(&sims[0].dir, "completed").contains(&r2),
        "the canary installed v2"
    );
    // Every started Device that is not armed installed v2, or was in flight at the abort.
    for i in started.iter().filter(|i| !FAILING.contains(i)) {
        let ok = in_flight.contains(&name(*i))
            || sims[*i].holds(&fw2)
            || flashes(&sims[*i].dir, "started").contains(&r2);
        assert!(
            ok,
            "{} was started and neither installed v2 nor in flight",
            name(*i)
        );
    }

    // 6. Rollback: every changed Device has v1 desired again, without the rollout's marks, and
    //    the agents install v1 again (their flash holds v1 bytes).
    for i in &started {
        let d = firmware_desired(&device(&api, *i));
        assert_eq!(d["value"], r1.as_str(), "{} rolled back", name(*i));
        let meta = d["metadata"].as_object().unwrap();
        assert!(
            meta.keys().all(|k| !k.starts_with("twinflash.io/")),
            "{}: {meta:?}",
            name(*i)
        );
    }
    wait_until(
        || {
            started
                .iter()
                .all(|i| installed(&location.twins(&api, *i), &r1) && sims[*i].holds(&fw1))
        },
        || {
            let waiting: Vec<String> = started
                .iter()
                .filter(|i| !(installed(&location.twins(&api, **i), &r1) && sims[**i].holds(&fw1)))
                .map(|i| name(*i))
                .collect();
            format!("not back on v1: {waiting:?}\n{}", logs())
        },
    )
    .await;

    // 7. Devices never reached: spec untouched in every stored version (the generation is no
    //    witness: a status write raises it where the status lives in the Device, as on a real API
    //    server), never flashed v2, still holding v1.
    let history = api.history(g, v, p);
    for i in (0..DEVICES).filter(|i| !started.contains(i)) {
        let d = device(&api, i);
        let specs: BTreeSet<String> = history
            .iter()
            .filter(|r| r.object["metadata"]["name"] == name(i).as_str())
            .map(|r| r.object["spec"].to_string())
            .collect();
        assert_eq!(specs.len(), 1, "{} untouched: {specs:?}", name(i));
        assert_eq!(
            firmware_desired(&d),
            json!({"value": r1, "metadata": {"type": "string"}})
        );
        assert!(
            !flashes(&sims[i].dir, "started").contains(&r2),
            "{} never flashed v2",
            name(i)
        );
        assert!(sims[i].holds(&fw1) && installed(&location.twins(&api, i), &r1));
    }

    // 8. Events on the rollout: the phase changes and the wave starts.
    let events = api.list("events.k8s.io", "v1", "events", Some(NS));
    let on_rollout: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["regarding"]["kind"] == "FirmwareRollout" && e["regarding"]["name"] == ROLLOUT
        })
        .collect();
    let reasons: Vec<&str> = on_rollout
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    for want in ["Progressing", "WaveStarted", "RolledBack"] {
        assert!(reasons.contains(&want), "no {want} Event: {reasons:?}");
    }
    let rolled = on_rollout
        .iter()
        .find(|e| e["reason"] == "RolledBack")
        .unwrap();
    assert_eq!(rolled["type"], "Warning");
    assert_eq!(rolled["reportingController"], "twinflash-rollout");
    // Each wave's start and end is an Event of its own, found by its own note (issue 22, F2): waves 1 and 2
    // started, wave 1 finished, wave 3 never started; nothing was folded into a series of an earlier Event.
    let notes = |reason: &str| -> Vec<&str> {
        on_rollout
            .iter()
            .filter(|e| e["reason"] == reason)
            .filter_map(|e| e["note"].as_str())
            .collect()
    };
    let (started_notes, finished_notes) = (notes("WaveStarted"), notes("WaveFinished"));
    for (want, notes) in [
        ("wave 1/3 started", &started_notes),
        ("wave 2/3 started", &started_notes),
        ("wave 1/3 finished", &finished_notes),
    ] {
        assert_eq!(
            notes.iter().filter(|n| n.starts_with(want)).count(),
            1,
            "one Event \"{want}\": {notes:?}"
        );
    }
    assert_eq!(
        started_notes.len(),
        2,
        "wave 3 never started: {started_notes:?}"
    );
    assert!(
        on_rollout.iter().all(|e| e["series"].is_null()),
        "an Event folded into an earlier one: {on_rollout:#?}"
    );

    // 9. Nothing the fake API server did not understand; every request named twinflash-cloud, every write its
    //    field manager (the Lease's are kube-lease-manager's).
    assert!(
        api.unknown_requests().is_empty(),
        "unknown requests: {:#?}",
        api.unknown_requests()
    );
    let requests = api.requests();
    let ua = format!(
        "twinflash-cloud/{} (twinflash-cloud-e2e)",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        requests.iter().all(|r| r.user_agent == ua),
        "{:#?}",
        requests.iter().find(|r| r.user_agent != ua)
    );
    let mut managers: BTreeMap<String, usize> = BTreeMap::new();
    for r in requests
        .iter()
        .filter(|r| r.is_write() && !r.path.contains("/leases"))
    {
        *managers.entry(r.field_manager.clone()).or_default() += 1;
    }
    assert_eq!(
        managers.keys().map(String::as_str).collect::<Vec<_>>(),
        ["twinflash-cloud", "twinflash-rollout"],
        "{managers:?}"
    );
}
