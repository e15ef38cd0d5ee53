//! The agent through outages: broker stopped or restarted without sessions, the agent SIGKILLed mid-download and
//! mid-flash. Real mosquitto, real registry (behind the fault proxy to count bytes), the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::time::Duration;

use support::{AgentSpec, Env, WAIT, image, until};
use twinflash_harness::FaultProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_stopped_the_install_goes_on_and_reports_arrive_after() {
    // 200 kB at 100 kB/s: about 2 s of download.
    let mut env = Env::start(1, |s| AgentSpec {
        rate_limit: Some(100_000),
        ..s
    })
    .await;
    let reference = env.push("a:1.0.0", &image(8, 200_000), "1.0.0").await;
    let dev = env.device(0);
    env.intent(0, &reference).await;
    env.wait_state_prefix(0, "downloading:").await;
    env.mqtt.stop();
    assert!(
        until(WAIT, || dev.completed(&reference) == 1).await,
        "download and flash go on without a broker\n{}",
        env.agent.log()
    );
    env.mqtt.restart(true).unwrap();
    env.wait(0, "firmware-state", "installed").await;
    assert_eq!(
        env.actual(0, "firmware").as_deref(),
        Some(reference.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_without_sessions_loses_nothing() {
    let mut env = Env::start(1, |s| AgentSpec {
        rate_limit: Some(100_000),
        ..s
    })
    .await;
    let a = env.push("a:1.0.0", &image(9, 200_000), "1.0.0").await;
    let b_fw = image(10, 20_000);
    let b = env.push("a:1.1.0", &b_fw, "1.1.0").await;
    let dev = env.device(0);
    env.intent(0, &a).await;
    env.wait_state_prefix(0, "downloading:").await;
    // Mid-download the broker loses every session: the agent must resubscribe and still report the end.
    env.mqtt.restart(false).unwrap();
    env.wait(0, "firmware", &a).await;

    // An intent published while the agent is away and the broker keeps no session for it is not queued anywhere;
    // the agent's twin/get after its reconnect brings it (edgecore answers with the whole twin).
    env.agent.kill9();
    env.mqtt.restart(false).unwrap();
    env.cloud.delta(&dev.id, &b, Some(&a)).await;
    env.agent.spawn();
    env.wait(0, "firmware", &b).await;
    env.wait(0, "firmware-state", "installed").await;
    assert!(dev.holds(&b_fw));
    assert_eq!(dev.completed(&a), 1);
    assert_eq!(dev.completed(&b), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_download_resumes_without_fetching_durable_bytes_again() {
    // The agent reaches the registry through the fault proxy only, which counts the bytes.
    let proxied = std::sync::OnceLock::new();
    let mut env = Env::start(1, |s| {
        let proxy = FaultProxy::start(s.registry_hosts[0].parse().unwrap()).unwrap();
        let host = format!("127.0.0.1:{}", proxy.port());
        let _ = proxied.set((proxy, host.clone()));
        AgentSpec {
            rate_limit: Some(2 * 1024 * 1024),
            flash_size: 16 * 1024 * 1024,
            registry_hosts: vec![host],
            ..s
        }
    })
    .await;
    let (proxy, proxy_host) = proxied.get().unwrap();
    let size = 12 * 1024 * 1024;
    let fw = image(11, size);
    let reference = env
        .push("big:1.0.0", &fw, "1.0.0")
        .await
        .replace(&env.registry.host(), proxy_host);
    let dev = env.device(0);
    env.intent(0, &reference).await;
    // Kill once the agent reports 40 % or more (4.8 MB received). At 2 MiB/s reports come about every 17 %, so a
    // report lands in 40..95 before the download ends. Its 1 MiB checkpoints (the default) lag what it received by the sink's
    // buffers and the checkpoint in flight, so at least 2 MiB are durable.
    let reported = || {
        env.cloud.states(&dev.id).iter().find_map(|s| {
            s.strip_prefix("downloading:")
                .and_then(|p| p.parse::<u8>().ok())
                .filter(|p| (40..90).contains(p))
        })
    };
    assert!(
        until(WAIT, || reported().is_some()).await,
        "{:?}\n{}",
        env.cloud.states(&dev.id),
        env.agent.log()
    );
    env.agent.kill9();
    let before = proxy.bytes_down();
    env.agent.spawn();
    env.wait(0, "firmware-state", "installed").await;
    let again = proxy.bytes_down() - before;
    assert!(dev.holds(&fw), "the device holds the verified image");
    // The kill came mid-download: the second run had bytes left to fetch.
    assert!(again > 0, "the download had ended before the kill");
    // The durable bytes are not fetched again: the second run fetches the rest only.
    let slack = 64 * 1024; // manifest and HTTP headers
    let rest = size as u64 - 2 * 1024 * 1024;
    assert!(
        again <= rest + slack,
        "second run fetched {again} bytes; at most {rest} were missing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_flash_redoes_it_and_the_device_ends_verified() {
    // 80 kB at 40 kB/s: about 2 s of flashing.
    let mut env = Env::start(1, |s| AgentSpec {
        write_bytes_per_sec: Some(40_000),
        ..s
    })
    .await;
    let fw = image(12, 80_000);
    let reference = env.push("a:1.0.0", &fw, "1.0.0").await;
    let dev = env.device(0);
    env.intent(0, &reference).await;
    env.wait_state_prefix(0, "flashing:").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.agent.kill9();
    assert_eq!(dev.completed(&reference), 0, "killed mid-flash");
    assert!(!dev.holds(&fw), "a partial image");
    env.agent.spawn();
    env.wait(0, "firmware-state", "installed").await;
    assert!(dev.holds(&fw));
    assert_eq!(
        dev.started(&reference),
        2,
        "the interrupted flash was redone once"
    );
    assert_eq!(dev.completed(&reference), 1);
}
