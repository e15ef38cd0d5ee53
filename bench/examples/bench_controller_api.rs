//! Full-path benchmark of the controller (issue 6): the real `twinflash-cloud` binary (edgecore
//! mode, `status_location = "device"`) against the harness's in-memory Kubernetes API server holding
//! 10,000 KubeEdge Devices, a real docker-registry and a real mosquitto. After the cold start has
//! published every Device's first intent, all desired values change to a second artifact at once;
//! the figure is the time until all new intents reached a subscriber, and until every record
//! and Event was written. Also: the controller's peak RSS and the API requests it made.
//!
//! `cargo build --release -p twinflash-cloud --bins -p twinflash-bench --examples &&
//!  target/release/examples/bench_controller_api [devices]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark driver

mod api_bench;

use std::time::{Duration, Instant};

use anyhow::bail;
use api_bench::{
    Cloud, DEV, Intents, NS, World, cpu_secs, device_count, device_json, digest_of, kind_of, name,
    properties, summary, wait_until,
};
use serde_json::json;
use twinflash_harness::kubeapi::RequestRecord;
use twinflash_harness::{FakeApi, Mosquitto};

/// Devices whose `twinflash.io/*` annotations hold the controller's record of `pinned` (where it keeps it since
/// issue 13: cloudcore never writes Device metadata).
fn recorded(api: &FakeApi, pinned: &str) -> usize {
    api.list(DEV.0, DEV.1, DEV.2, Some(NS))
        .iter()
        .filter(|d| d["metadata"]["annotations"][twinflash_cloud::status::META_PINNED] == pinned)
        .count()
}

/// Event writes (create or series patch) in `reqs`.
fn event_writes(reqs: &[RequestRecord]) -> usize {
    reqs.iter()
        .filter(|r| matches!(kind_of(r).as_str(), "POST events" | "PATCH events"))
        .count()
}

fn ms(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = device_count()?;
    let limit = Duration::from_secs(120 + n as u64 / 25);
    let mqtt = Mosquitto::start()?;
    let world = World::start()?;
    let api = &world.api;
    let (v1, v2) = world.push_v1_v2().await?;
    let intents = Intents::start(mqtt.port(), vec![digest_of(&v1)?, digest_of(&v2)?], None).await?;
    for i in 0..n {
        api.put(device_json(i, &v1))?;
    }

    // Cold start: list, reconcile, resolve, publish, record every Device's first intent.
    let mut cloud = Cloud::start(
        world.dir.path(),
        &world.kubeconfig,
        mqtt.port(),
        &world.registry.host(),
        3600,
    )?;
    let fail = |cloud: &Cloud, e: anyhow::Error| -> anyhow::Error {
        e.context(format!("controller log tail:\n{}", cloud.log_tail(20)))
    };
    wait_until(
        "the first intents",
        limit,
        Duration::from_millis(20),
        || intents.count(0) >= n,
    )
    .await
    .map_err(|e| fail(&cloud, e))?;
    let cold_intents = intents
        .last_arrival(0)
        .map_or(Duration::ZERO, |t| t - cloud.spawned);
    let mut reqs = Vec::new();
    wait_until(
        "the first records and Events",
        limit,
        Duration::from_millis(250),
        || {
            reqs = api.requests();
            event_writes(&reqs) >= n && recorded(api, &v1) >= n
        },
    )
    .await
    .map_err(|e| fail(&cloud, e))?;
    let cold_all = cloud.spawned.elapsed();
    if !cloud.running() {
        bail!("the controller exited:\n{}", cloud.log_tail(20));
    }
    // Let the watch deliver the controller's own status writes before the change.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = api.requests().len();
    let m0 = cloud.metrics();
    let messages0 = intents.messages();

    let rss_cold = cloud.peak_rss_mib().unwrap_or(0.0);
    let (cpu0, own0) = (cloud.cpu_secs(), cpu_secs("/proc/self/stat"));
    // The change: every desired value to v2 at once, through the fake's Rust API.
    let t0 = Instant::now();
    let patch = json!({"spec": {"properties": properties(&v2)}});
    for i in 0..n {
        api.patch_spec(DEV.0, DEV.1, DEV.2, NS, &name(i), &patch)?;
    }
    let patched = t0.elapsed();
    wait_until("the new intents", limit, Duration::from_millis(5), || {
        intents.count(1) >= n
    })
    .await
    .map_err(|e| fail(&cloud, e))?;
    let all_intents = intents.last_arrival(1).map_or(Duration::ZERO, |t| t - t0);
    wait_until(
        "the new records and Events",
        limit,
        Duration::from_millis(100),
        || {
            reqs = api.requests();
            event_writes(reqs.get(before..).unwrap_or_default()) >= n && recorded(api, &v2) >= n
        },
    )
    .await
    .map_err(|e| fail(&cloud, e))?;
    let all_done = t0.elapsed();
    let rss = cloud.peak_rss_mib().unwrap_or(0.0);
    let cpu = cloud.cpu_secs().zip(cpu0).map_or(0.0, |(b, a)| b - a);
    let own = cpu_secs("/proc/self/stat")
        .zip(own0)
        .map_or(0.0, |(b, a)| b - a);
    let m1 = cloud.metrics();
    let messages = intents.messages() - messages0;
    let reqs = api.requests();
    let failures: Vec<String> = m1
        .iter()
        .filter(|(k, v)| k.starts_with("twinflash_cloud_reconcile_failures_total") && **v > 0.0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let counter = |m: &std::collections::BTreeMap<String, f64>, k: &str| -> f64 {
        m.get(k).copied().unwrap_or(0.0)
    };
    let reconciles = counter(&m1, "twinflash_cloud_reconciles_total")
        - counter(&m0, "twinflash_cloud_reconciles_total");
    let published = counter(&m1, "twinflash_cloud_intents_published_total")
        - counter(&m0, "twinflash_cloud_intents_published_total");
    let unknown = api.unknown_requests().len();
    let conflicts = reqs[before..].iter().filter(|r| r.status == 409).count();
    drop(cloud);

    println!(
        "| what | goal | figure | peak RSS of twinflash-cloud | API requests of the controller |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {n} Devices all given a new desired firmware at once: watch event, decide, resolve in the registry, publish, until all {n} new intents reached a subscriber on local mosquitto | < 5 s; RSS < 150 MiB | **{}** ({:.0} intents/s); every record and Event written after {} | {rss:.1} MiB ({rss_cold:.1} MiB after the cold start) | {} during the change ({}) |",
        ms(all_intents),
        n as f64 / all_intents.as_secs_f64().max(1e-9),
        ms(all_done),
        reqs.len() - before,
        summary(&reqs[before..]),
    );
    println!(
        "| cold start: {n} Devices listed, every first intent published, recorded and announced | - | all first intents after {} from spawn; records and Events after {} | (same process) | {} ({}) |",
        ms(cold_intents),
        ms(cold_all),
        before,
        summary(&reqs[..before]),
    );
    println!();
    println!(
        "During the change: {reconciles:.0} reconciles and {published:.0} intents published (controller metrics), {messages} intent messages at the subscriber, {conflicts} requests answered 409, reconcile failures: {}; unknown requests: {unknown}. The driver's {n} spec patches took {} of the figure. CPU time from the change until every record was seen: twinflash-cloud {cpu:.2} s, this driver (API server, subscriber, polling) {own:.2} s, over {} of wall time on {} cores.",
        if failures.is_empty() {
            "none".to_owned()
        } else {
            failures.join(", ")
        },
        ms(patched),
        ms(all_done),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
    );
    println!(
        "Caveats: the API server is the harness's in-process, in-memory stand-in (`FakeApi`, plain HTTP, no etcd, no admission), \
         running in this driver together with the subscriber and sharing the machine's cores with twinflash-cloud, mosquitto and \
         docker-registry; the Device CRD is served without a status subresource, as KubeEdge's; times of the records are \
         seen by polling every 100 ms."
    );
    Ok(())
}
