//! Full-path benchmark of a rollout (issue 7): the real `twinflash-cloud` binary (edgecore mode,
//! `status_location = "device"`) against the harness's in-memory Kubernetes API server holding
//! 10,000 KubeEdge Devices that report v1 installed, a real docker-registry and a real mosquitto. A
//! FirmwareRollout to v2 in 4 waves (1 %, 10 %, 40 %, the rest; maxInFlight 500) is created through
//! the fake's Rust API; this driver plays the fleet and cloudcore: each v2 intent that reaches the
//! broker is answered after a seeded 0-200 ms by a status write of the report (`installed`, or
//! `failed:flash-failed` for a seeded 0.5 %). Prints per wave the wall time, the rollout reconciles
//! and the requests they made, and the controller's peak RSS.
//!
//! `cargo build --release -p twinflash-cloud --bins -p twinflash-bench --examples &&
//!  target/release/examples/bench_rollout_api [devices]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark driver

mod api_bench;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use api_bench::{
    Cloud, DEV, FWR, Intents, NS, Seen, World, device_count, device_json, digest_of, kind_of, mix,
    name, parse_path, properties, summary, wait_until,
};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use twinflash_cloud::crd::{Device, DeviceProperty};
use twinflash_cloud::rollout::observe::META_WAVE;
use twinflash_cloud::rollout::sim::bench_strategy;
use twinflash_cloud::rollout::{
    DeviceSelector, FirmwareRollout, FirmwareRolloutSpec, FirmwareRolloutStatus, Phase,
};
use twinflash_cloud::status::{apply_actual_report, with_record};
use twinflash_cloud::{Reason, Record};
use twinflash_harness::kubeapi::RequestRecord;
use twinflash_harness::{FakeApi, Mosquitto};

const ROLLOUT: &str = "bench";
/// Seeded share of flash failures, per mille (below the 5 % threshold).
const FAIL_PER_MILLE: u64 = 5;
/// Longest simulated install.
const MAX_INSTALL_MS: u64 = 200;
/// Concurrent status writes of the simulated cloudcore.
const WRITERS: usize = 16;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn actual(firmware: &str, version: &str, state: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("firmware".to_owned(), firmware.to_owned()),
        ("firmware-version".to_owned(), version.to_owned()),
        ("firmware-state".to_owned(), state.to_owned()),
    ])
}

/// Device `i` on v1: reported installed (as cloudcore writes an edge report) and the controller's
/// record of having published v1 (as a previous run of the controller left it).
fn converged_device(i: usize, v1: &str) -> anyhow::Result<serde_json::Value> {
    let props: Vec<DeviceProperty> = serde_json::from_value(properties(v1))?;
    let reported = apply_actual_report(
        &props,
        None,
        &actual(v1, "1.0.0", "installed"),
        now_ms() - 86_400_000,
    );
    let record = Record {
        generation: 1,
        desired: v1.to_owned(),
        pinned: v1.to_owned(),
        reason: Reason::IntentPublished,
        message: format!("published {v1} (version 1.0.0) to the edge"),
    };
    let status = with_record(Some(&reported), &record, now_ms() - 86_400_000);
    let mut dev = device_json(i, v1);
    dev["status"] = serde_json::to_value(status)?;
    Ok(dev)
}

fn rollout(firmware: &str) -> anyhow::Result<serde_json::Value> {
    let spec = FirmwareRolloutSpec {
        selector: DeviceSelector {
            match_labels: BTreeMap::from([("app".to_owned(), "blinky".to_owned())]),
            match_expressions: Vec::new(),
        },
        firmware: firmware.to_owned(),
        strategy: bench_strategy(),
        paused: false,
        abort: false,
        rollback_on_abort: true,
    };
    let mut r = FirmwareRollout::new(ROLLOUT, spec);
    r.metadata.namespace = Some(NS.into());
    Ok(serde_json::to_value(&r)?)
}

fn rollout_status(api: &FakeApi) -> Option<FirmwareRolloutStatus> {
    let obj = api.get(FWR.0, FWR.1, FWR.2, NS, ROLLOUT)?;
    serde_json::from_value(obj.get("status")?.clone()).ok()
}

/// What cloudcore does with an edge report: read the Device, map the report into
/// `status.twins` and write it back guarded by the resourceVersion (again on a conflict).
/// Returns the requests made.
async fn write_report(
    api: &Api<Device>,
    device: &str,
    report: &BTreeMap<String, String>,
) -> anyhow::Result<usize> {
    let mut requests = 0;
    for _ in 0..20 {
        let d = api.get(device).await?;
        requests += 1;
        let status = apply_actual_report(&d.spec.properties, d.status.as_ref(), report, now_ms());
        let patch = json!({
            "metadata": {"resourceVersion": d.metadata.resource_version},
            "status": {"twins": status.twins},
        });
        requests += 1;
        match api
            .patch(device, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(requests),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    bail!("{device}: 20 conflicting status writes")
}

/// The simulated fleet and cloudcore: every first v2 intent is answered after a seeded delay.
fn fleet(
    mut seen: mpsc::UnboundedReceiver<Seen>,
    api: Api<Device>,
    v1: String,
    v2: String,
    driver_requests: Arc<AtomicUsize>,
    errors: Arc<AtomicUsize>,
) {
    let writers = Arc::new(Semaphore::new(WRITERS));
    tokio::spawn(async move {
        while let Some(s) = seen.recv().await {
            let Some(i) = s
                .device
                .rsplit_once("/dev-")
                .and_then(|(_, n)| n.parse::<usize>().ok())
            else {
                continue;
            };
            let (api, v1, v2) = (api.clone(), v1.clone(), v2.clone());
            let (writers, count, errors) =
                (writers.clone(), driver_requests.clone(), errors.clone());
            tokio::spawn(async move {
                let r = mix(i);
                tokio::time::sleep(Duration::from_millis((r >> 16) % (MAX_INSTALL_MS + 1))).await;
                let report = if r % 1000 < FAIL_PER_MILLE {
                    actual(&v1, "1.0.0", "failed:flash-failed")
                } else {
                    actual(&v2, "2.0.0", "installed")
                };
                let Ok(_permit) = writers.acquire().await else {
                    return;
                };
                match write_report(&api, &name(i), &report).await {
                    Ok(n) => {
                        count.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("report of {}: {e:#}", name(i));
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
}

/// One observed wave (index 0: from the creation of the rollout to the start of wave 1).
struct Mark {
    wave: u32,
    at: Instant,
    requests: usize,
    device_reconciles: f64,
    published: f64,
    status: Option<FirmwareRolloutStatus>,
}

fn count(reqs: &[RequestRecord], pred: impl Fn(&RequestRecord) -> bool) -> usize {
    reqs.iter().filter(|r| pred(r)).count()
}

/// A rollout reconcile starts with a GET of the rollout by name (nothing else GETs it).
fn is_rollout_get(r: &RequestRecord) -> bool {
    r.method == "GET"
        && !r.query.contains("watch=true")
        && parse_path(&r.path) == (FWR.2.to_owned(), Some(ROLLOUT.to_owned()), None)
}

fn is_rollout_status_patch(r: &RequestRecord) -> bool {
    r.method == "PATCH" && kind_of(r) == "PATCH firmwarerollouts/status"
}

fn is_device_start(r: &RequestRecord) -> bool {
    r.method == "PATCH" && kind_of(r) == "PATCH devices" && r.content_type.contains("json-patch")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = device_count()?;
    let limit = Duration::from_secs(120 + n as u64 / 50);
    let mqtt = Mosquitto::start()?;
    let world = World::start()?;
    let api = &world.api;
    let (v1, v2) = world.push_v1_v2().await?;
    for i in 0..n {
        api.put(converged_device(i, &v1)?)?;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let intents = Intents::start(mqtt.port(), vec![digest_of(&v2)?], Some(tx)).await?;
    let kube_cfg = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&world.kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let devices: Api<Device> = Api::namespaced(kube::Client::try_from(kube_cfg)?, NS);
    let driver_requests = Arc::new(AtomicUsize::new(0));
    let report_errors = Arc::new(AtomicUsize::new(0));
    fleet(
        rx,
        devices,
        v1.clone(),
        v2.clone(),
        driver_requests.clone(),
        report_errors.clone(),
    );

    let mut cloud = Cloud::start(
        world.dir.path(),
        &world.kubeconfig,
        mqtt.port(),
        &world.registry.host(),
        300,
    )?;
    let fail = |cloud: &Cloud, e: anyhow::Error| -> anyhow::Error {
        e.context(format!("controller log tail:\n{}", cloud.log_tail(20)))
    };
    // The Device controller's first pass: every Device already done (no publish, no API call).
    wait_until(
        "the controller's first pass",
        limit,
        Duration::from_millis(100),
        || cloud.metric("twinflash_cloud_reconciles_total") >= n as f64,
    )
    .await
    .map_err(|e| fail(&cloud, e))?;
    let first_pass = cloud.spawned.elapsed();
    let republished = cloud.metric("twinflash_cloud_intents_published_total");
    let rss_before = cloud.peak_rss_mib().unwrap_or(0.0);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mark = |wave: u32, status: Option<FirmwareRolloutStatus>, cloud: &Cloud| Mark {
        wave,
        at: Instant::now(),
        requests: api.requests().len(),
        device_reconciles: cloud.metric("twinflash_cloud_reconciles_total"),
        published: cloud.metric("twinflash_cloud_intents_published_total"),
        status,
    };
    let mut marks = vec![mark(0, None, &cloud)];
    api.put(rollout(&v2)?)?;
    let t0 = Instant::now();
    let end = loop {
        let st = rollout_status(api);
        let (wave, phase) = st
            .as_ref()
            .map_or((0, Phase::Pending), |s| (s.current_wave, s.phase));
        if wave != marks.last().map_or(0, |m| m.wave) || phase.is_terminal() {
            marks.push(mark(wave, st.clone(), &cloud));
        }
        if phase.is_terminal() {
            break st.context("no status")?;
        }
        if t0.elapsed() > limit || !cloud.running() {
            return Err(fail(
                &cloud,
                anyhow::anyhow!("the rollout did not finish within {limit:?}: {st:#?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let wall = t0.elapsed();
    let rss = cloud.peak_rss_mib().unwrap_or(0.0);
    let reqs = api.requests();
    let last = marks.last().map_or(0, |m| m.requests).min(reqs.len());
    let start = marks.first().map_or(0, |m| m.requests).min(last);
    let failures: Vec<String> = cloud
        .metrics()
        .into_iter()
        .filter(|(k, v)| k.starts_with("twinflash_cloud_reconcile_failures_total") && *v > 0.0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let rollout_failures = cloud.log_count("rollout reconcile failed");
    // The wave each Device was started in, from the rollout's marker on its desired value.
    let mut per_wave: BTreeMap<u32, usize> = BTreeMap::new();
    for d in api.list(DEV.0, DEV.1, DEV.2, Some(NS)) {
        if let Some(w) = d["spec"]["properties"][0]["desired"]["metadata"][META_WAVE]
            .as_str()
            .and_then(|w| w.parse().ok())
        {
            *per_wave.entry(w).or_default() += 1;
        }
    }
    drop(cloud);

    println!(
        "| wave (from `currentWave` = k to the next) | Devices of the wave | wall time | rollout reconciles | wall time / reconcile | rollout status patches | Device patches by the rollout | Device reconciles | intents published | API requests (all clients) | installed / failed at the end |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for pair in marks.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let window = &reqs[a.requests.min(b.requests)..b.requests.min(reqs.len())];
        let reconciles = count(window, is_rollout_get);
        let took = b.at - a.at;
        let label = if a.wave == 0 {
            "start".to_owned()
        } else {
            a.wave.to_string()
        };
        println!(
            "| {label} | {} | {:.2} s | {reconciles} | {} | {} | {} | {:.0} | {:.0} | {} | {} |",
            if a.wave == 0 {
                "-".to_owned()
            } else {
                per_wave.get(&a.wave).copied().unwrap_or(0).to_string()
            },
            took.as_secs_f64(),
            if reconciles == 0 {
                "-".to_owned()
            } else {
                format!("{:.0} ms", took.as_secs_f64() * 1e3 / reconciles as f64)
            },
            count(window, is_rollout_status_patch),
            count(window, is_device_start),
            b.device_reconciles - a.device_reconciles,
            b.published - a.published,
            window.len(),
            b.status.as_ref().map_or("-".to_owned(), |s| format!(
                "{} / {}",
                s.installed, s.failed
            )),
        );
    }
    let all = &reqs[start..last];
    let driver = driver_requests.load(Ordering::Relaxed);
    println!();
    println!(
        "| devices | waves | maxInFlight | phase | installed | failed | wall (creation to {}) | rollout reconciles | peak RSS of twinflash-cloud | API requests of the controller | controller's first pass over {n} converged Devices |",
        end.phase.as_str()
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | 4 | 500 | {} | {} | {} | **{:.2} s** | {} | **{rss:.1} MiB** ({rss_before:.1} MiB before the rollout) | {} | {:.2} s after spawn, {republished:.0} intents republished |",
        end.phase.as_str(),
        end.installed,
        end.failed,
        wall.as_secs_f64(),
        count(all, is_rollout_get),
        all.len().saturating_sub(driver),
        first_pass.as_secs_f64(),
    );
    println!();
    println!(
        "Requests during the rollout, all clients: {}. Of them, the simulated cloudcore's report writes: {driver} (a GET and a merge PATCH per report, again on a 409); failed report writes: {}; v2 intents seen by the fleet: {}; Device reconcile failures: {}; rollout reconcile failures (log): {rollout_failures}; unknown requests: {}.",
        summary(all),
        report_errors.load(Ordering::Relaxed),
        intents.count(0),
        if failures.is_empty() {
            "none".to_owned()
        } else {
            failures.join(", ")
        },
        api.unknown_requests().len(),
    );
    println!(
        "What is measured: wall time between the driver seeing `status.currentWave` change (polled every 25 ms; the reconcile that starts wave k+1 patches its first Devices just before it writes the status, so those patches count in the row of wave k); rollout reconciles = GETs of the rollout \
         (each reconcile reads it fresh first); wall time / reconcile is an upper bound of the mean reconcile time (equal to it only while reconciles run back to back; \
         the controller exposes no reconcile duration). Each reconcile lists all selected Devices from the API server. A Device starts when the rollout patches its \
         desired value; the Device controller then resolves v2 in the registry, publishes the intent, records it in the status and emits an Event; the simulated device \
         answers 0-200 ms after the intent reached the broker (no downloading/flashing states, no stuck devices: timeouts would take 900 s)."
    );
    println!(
        "Caveats: the API server is the harness's in-process, in-memory stand-in (`FakeApi`, plain HTTP, no etcd), running in this driver with the simulated fleet \
         and sharing the machine's cores with twinflash-cloud, mosquitto and docker-registry."
    );
    Ok(())
}
