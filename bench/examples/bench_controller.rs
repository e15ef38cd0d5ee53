//! Benchmark of the controller's delivery path (issue 6): 10,000 Devices held in memory all get a new desired
//! firmware at once; each goes through the pure `decide()` and the real `MqttSink` (edgecore mode) to a local
//! mosquitto, and a subscriber counts the intents that arrive. Prints the time until all arrived and the process's
//! peak RSS as a markdown row.
//!
//! `cargo run --release -p twinflash-bench --example bench_controller [devices]`
//! No API server can run here, so the watch that feeds the cache and the status patches after each publish are
//! not part of the figure; everything between them and the broker is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark driver

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mqtt_schema::DeviceId;
use rumqttc::{Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;
use twinflash_cloud::config::{Config, Mode};
use twinflash_cloud::decide::{Decision, Input, decide};
use twinflash_cloud::mqtt::MqttSink;
use twinflash_cloud::seams::{IntentSink, ResolveError, ResolvedArtifact};
use twinflash_harness::Mosquitto;

fn peak_rss_mib() -> f64 {
    twinflash_harness::status_kib(None, "VmHWM").unwrap_or(0) as f64 / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let mqtt = Mosquitto::start().unwrap();

    // A subscriber that counts intents.
    let received = Arc::new(AtomicUsize::new(0));
    let mut opts = MqttOptions::new("bench-sub", "127.0.0.1", mqtt.port());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (sub, mut events) = twinflash_mqtt::client(opts);
    sub.subscribe("$hw/events/device/+/+/twin/update", QoS::AtLeastOnce)
        .await
        .unwrap();
    let r = received.clone();
    tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            if let Event::Incoming(Packet::Publish(_)) = ev {
                r.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("cloud.toml");
    std::fs::write(
        &cfg_path,
        format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n", mqtt.port()),
    )
    .unwrap();
    let cfg = Config::load_with_env(Some(&cfg_path), Some(HashMap::new())).unwrap();
    let (sink, _task) = MqttSink::start(
        cfg.mqtt.as_ref().unwrap(),
        Mode::Edgecore,
        Duration::from_secs(3600),
        None,
        CancellationToken::new(),
    )
    .unwrap();
    while !sink.is_connected() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The cache: n Devices, each with a new digest-pinned desired firmware.
    let devices: Vec<(DeviceId, String)> = (0..n)
        .map(|i| {
            (
                DeviceId::namespaced(format!("site-{}", i % 20), format!("dev-{i:05}")).unwrap(),
                format!(
                    "registry.local:5000/fw/blinky:2.0.0@sha256:{:064x}",
                    0xbeef_u64 + (i as u64 % 4)
                ),
            )
        })
        .collect();
    let rss_before = peak_rss_mib();
    let t0 = Instant::now();
    for (generation, (key, desired)) in devices.iter().enumerate() {
        // What the registry answered for this reference (the controller caches it per reference).
        let resolved: Result<ResolvedArtifact, ResolveError> = Ok(ResolvedArtifact {
            digest_ref: desired.clone(),
            chip: Some("STM32F411RETx".into()),
            version: Some("2.0.0".into()),
        });
        let input = Input {
            generation: generation as i64 + 1,
            desired: Some(desired),
            device_chip: Some("STM32F411RETx"),
            last: None,
            resolution: Some(&resolved),
        };
        let Decision::Publish(record) = decide(input) else {
            panic!("a new pinned intent is published")
        };
        sink.publish_intent(key, &record.pinned).await.unwrap();
    }
    let queued = t0.elapsed();
    while received.load(Ordering::Relaxed) < n {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "only {} of {n} arrived",
            received.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "| {n} Devices given a new desired firmware at once: decide + publish until all {n} intents reached a subscriber on local mosquitto | < 5 s; RSS < 150 MiB | {secs:.2} s ({:.0} intents/s; all queued after {:.2} s); peak RSS {:.1} MiB (before: {rss_before:.1} MiB) | no API server here: watch and status patches not included |",
        n as f64 / secs,
        queued.as_secs_f64(),
        peak_rss_mib()
    );
}
