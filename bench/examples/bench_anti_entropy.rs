//! The cost of the controller's anti-entropy nudge (issue 13, point 3) at 10,000 converged Devices: the controller
//! (in process, edgecore mode, `status_location = "device-status"`) against the harness's FakeApi holding 10,000
//! Devices with their record and 10,000 DeviceStatus objects that show the final state, and a real mosquitto. Over
//! several anti-entropy periods it counts the MQTT messages on the devices' `twin/get` topics, the API writes and
//! the API requests other than the open watches (expected: 0, 0, 0), and measures the CPU time of one scan of the
//! caches (the same `Caches::scan` the loop runs). Then one DeviceStatus in 100 goes stale: those get one nudge each
//! per period.
//!
//! `cargo build --release -p twinflash-bench --examples && target/release/examples/bench_anti_entropy [devices]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark driver

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{reflector, watcher};
use mqtt_schema::TwinNames;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use twinflash_cloud::anti_entropy::{AntiEntropy, Caches};
use twinflash_cloud::config::{Config, Mode, StatusLocation};
use twinflash_cloud::controller::{self, Context};
use twinflash_cloud::crd::{Device, DeviceStatus};
use twinflash_cloud::mqtt::MqttSink;
use twinflash_cloud::seams::MemoryResolver;
use twinflash_harness::{FakeApi, Mosquitto};
use twinflash_testkit::Observer;

const NS: &str = "default";
const PERIOD: Duration = Duration::from_secs(2);
const PERIODS: u32 = 3;

fn pinned() -> String {
    format!("registry.local:5000/fw/blinky@sha256:{}", "ab".repeat(32))
}

fn device(i: usize) -> Value {
    let p = pinned();
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": format!("sim-{i:05}"), "namespace": NS, "annotations": {
            "twinflash.io/generation": "1", "twinflash.io/desired": p, "twinflash.io/pinned": p,
            "twinflash.io/reason": "IntentPublished", "twinflash.io/message": "published"}},
        "spec": {"properties": [
            {"name": "firmware", "desired": {"value": p, "metadata": {"type": "string"}}},
            {"name": "firmware-version"}, {"name": "firmware-state"},
        ]},
    })
}

fn status(i: usize, state: &str, at_ms: i64) -> Value {
    let p = pinned();
    let meta = json!({"timestamp": at_ms.to_string(), "type": "string"});
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "DeviceStatus",
        "metadata": {"name": format!("sim-{i:05}"), "namespace": NS},
        "status": {"twins": [
            {"propertyName": "firmware", "reported": {"value": p, "metadata": meta},
             "observedDesired": {"value": p, "metadata": meta}},
            {"propertyName": "firmware-state", "reported": {"value": state, "metadata": meta},
             "observedDesired": {"value": "", "metadata": {}}},
        ]},
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Mean CPU time of `Caches::scan` over `rounds` scans of stores filled from FakeApi's objects.
fn scan_cpu(api: &FakeApi, rounds: u32) -> (Duration, usize) {
    let (devices, mut dw) = reflector::store::<Device>();
    let (statuses, mut sw) = reflector::store::<DeviceStatus>();
    for d in api.list("devices.kubeedge.io", "v1beta1", "devices", Some(NS)) {
        dw.apply_watcher_event(&watcher::Event::Apply(serde_json::from_value(d).unwrap()));
    }
    for s in api.list("devices.kubeedge.io", "v1beta1", "devicestatuses", Some(NS)) {
        sw.apply_watcher_event(&watcher::Event::Apply(serde_json::from_value(s).unwrap()));
    }
    let caches = Caches {
        devices,
        statuses: Some(statuses),
    };
    let mut book = AntiEntropy::new(PERIOD, TwinNames::default());
    let now = now_ms();
    caches.scan(&mut book, now); // first sight of every intent
    let start = Instant::now();
    let mut stale = 0;
    for r in 0..rounds {
        stale = caches.scan(&mut book, now + 10_000 + i64::from(r)).stale;
    }
    (start.elapsed() / rounds, stale)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let api = FakeApi::start()?;
    let mqtt = Mosquitto::start()?;
    let dir = tempfile::tempdir()?;
    let long_ago = now_ms() - 86_400_000;
    for i in 0..n {
        api.put(device(i))?;
        api.put(status(i, "installed", long_ago))?;
    }
    let obs = Observer::start(
        mqtt.port(),
        "bench-observer",
        &["$hw/events/device/+/+/twin/get"],
    )
    .await;
    let env = [("TWINFLASH_CLOUD__MQTT__URL".to_owned(), mqtt.url())];
    let cfg = Config::load_with_env(None, Some(env.into_iter().collect()))?;
    let cancel = CancellationToken::new();
    let hour = Duration::from_secs(3600);
    let (sink, mqtt_task) = MqttSink::start(
        cfg.mqtt.as_ref().context("the bench config has [mqtt]")?,
        Mode::Edgecore,
        hour,
        None,
        cancel.clone(),
    )?;
    let kc = Kubeconfig::read_from(api.kubeconfig(dir.path())?)?;
    let kcfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let sink = Arc::new(sink);
    let mut ctx = Context::new(
        kube::Client::try_from(kcfg)?,
        sink.clone(),
        Arc::new(MemoryResolver::default()),
        StatusLocation::DeviceStatus,
        hour,
        None,
    );
    ctx.anti_entropy = PERIOD;
    ctx.nudger = Some(sink);
    let ctx = Arc::new(ctx);
    let c = ctx.clone();
    let run = tokio::spawn(async move { controller::run(c, Some(NS), None).await });
    // The cold start: every Device reconciled once (its record says done: nothing published, nothing written).
    let started = Instant::now();
    while ctx.metrics.reconciles() < n as u64 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "cold start too slow"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(PERIOD * 2).await; // the caches are filled and the first sight's grace has passed
    let is_watch = |q: &str| q.contains("watch=true");
    let (reqs0, msgs0) = (api.requests().len(), obs.messages().len());
    tokio::time::sleep(PERIOD * PERIODS).await;
    let reqs: Vec<_> = api.requests().into_iter().skip(reqs0).collect();
    let writes = reqs.iter().filter(|r| r.method != "GET").count();
    let requests = reqs.iter().filter(|r| !is_watch(&r.query)).count();
    let msgs = obs.messages().len() - msgs0;
    let per = |x: usize| x as f64 / f64::from(PERIODS);

    // One DeviceStatus in 100 goes stale (an install cut short by a cloudcore outage).
    let stale_n = n / 100;
    for i in (0..n).step_by(100) {
        api.put(status(i, "downloading:40", long_ago))?;
    }
    tokio::time::sleep(PERIOD * 2).await; // the watch delivers, the grace passes, the first nudges go out
    let (nudges0, msgs1) = (ctx.metrics.nudges(), obs.messages().len());
    tokio::time::sleep(PERIOD * PERIODS).await;
    let stale_msgs = obs.messages().len() - msgs1;
    let stale_nudges = ctx.metrics.nudges() - nudges0;
    let (cpu, seen_stale) = scan_cpu(&api, 20);

    println!(
        "| Devices | period | MQTT messages / period | API writes / period | API requests / period (open watches aside) | CPU time of one scan | stale Devices: nudges / period |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {n} converged | {} s | {:.1} | {:.1} | {:.1} | {:.2} ms | {stale_n} stale ({seen_stale} seen by the scan): {:.1} nudges, {:.1} twin/get messages |",
        PERIOD.as_secs(),
        per(msgs),
        per(writes),
        per(requests),
        cpu.as_secs_f64() * 1e3,
        stale_nudges as f64 / f64::from(PERIODS),
        per(stale_msgs),
    );
    cancel.cancel();
    run.abort();
    let _ = run.await;
    let _ = mqtt_task.await;
    Ok(())
}
