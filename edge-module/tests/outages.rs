//! The agent through outages: broker stopped or restarted without sessions, the agent SIGKILLed mid-download and
//! mid-flash. Real mosquitto, real registry behind the fault proxy (to count bytes), the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::time::{Duration, Instant};

use support::{Agent, AgentSpec, Cloud, image, init, push};
use twinflash_harness::{FaultProxy, Mosquitto, Registry};

const T: Duration = Duration::from_secs(40);

async fn until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_stopped_the_install_goes_on_and_reports_arrive_after() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mut mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let fw = image(8, 200_000);
    let reference = push(
        &registry,
        dir.path(),
        "fw/a:1.0.0",
        &fw,
        "1.0.0",
        support::CHIP,
    )
    .await;
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let agent = Agent::start(AgentSpec {
        rate_limit: Some(100_000), // about 2 s of download
        ..AgentSpec::new(dir.path(), mqtt.port(), vec![registry.host()], 1)
    });
    let dev = agent.devices[0].clone();
    cloud
        .wait_for(&dev.id, "firmware-state", "idle", T, &agent)
        .await;
    cloud.delta(&dev.id, &reference, None).await;
    cloud
        .wait_state_prefix(&dev.id, "downloading:", T, &agent)
        .await;
    mqtt.stop();
    assert!(
        until(T, || dev.completed(&reference) == 1).await,
        "download and flash go on without a broker\n{}",
        agent.log()
    );
    mqtt.restart(true).unwrap();
    cloud
        .wait_for(&dev.id, "firmware-state", "installed", T, &agent)
        .await;
    assert_eq!(
        cloud.actual(&dev.id, "firmware").as_deref(),
        Some(reference.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_without_sessions_loses_nothing() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mut mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let a = push(
        &registry,
        dir.path(),
        "fw/a:1.0.0",
        &image(9, 200_000),
        "1.0.0",
        support::CHIP,
    )
    .await;
    let b_fw = image(10, 20_000);
    let b = push(
        &registry,
        dir.path(),
        "fw/a:1.1.0",
        &b_fw,
        "1.1.0",
        support::CHIP,
    )
    .await;
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let mut agent = Agent::start(AgentSpec {
        rate_limit: Some(100_000),
        ..AgentSpec::new(dir.path(), mqtt.port(), vec![registry.host()], 1)
    });
    let dev = agent.devices[0].clone();
    cloud
        .wait_for(&dev.id, "firmware-state", "idle", T, &agent)
        .await;
    cloud.delta(&dev.id, &a, None).await;
    cloud
        .wait_state_prefix(&dev.id, "downloading:", T, &agent)
        .await;
    // Mid-download the broker loses every session: the agent must resubscribe and still report the end.
    mqtt.restart(false).unwrap();
    cloud.wait_for(&dev.id, "firmware", &a, T, &agent).await;

    // An intent published while the agent is away and the broker keeps no session for it is not queued anywhere;
    // the agent's twin/get after its reconnect brings it (edgecore answers with the whole twin).
    agent.kill9();
    mqtt.restart(false).unwrap();
    cloud.delta(&dev.id, &b, Some(&a)).await;
    agent.spawn();
    cloud.wait_for(&dev.id, "firmware", &b, T, &agent).await;
    cloud
        .wait_for(&dev.id, "firmware-state", "installed", T, &agent)
        .await;
    assert!(dev.holds(&b_fw));
    assert_eq!(dev.completed(&a), 1);
    assert_eq!(dev.completed(&b), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_download_resumes_without_fetching_durable_bytes_again() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    let proxy_host = format!("127.0.0.1:{}", proxy.port());
    let size = 12 * 1024 * 1024;
    let fw = image(11, size);
    let pushed = push(
        &registry,
        dir.path(),
        "fw/big:1.0.0",
        &fw,
        "1.0.0",
        support::CHIP,
    )
    .await;
    let reference = pushed.replace(&registry.host(), &proxy_host);
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let mut agent = Agent::start(AgentSpec {
        rate_limit: Some(4 * 1024 * 1024),
        flash_size: 16 * 1024 * 1024,
        ..AgentSpec::new(dir.path(), mqtt.port(), vec![proxy_host.clone()], 1)
    });
    let dev = agent.devices[0].clone();
    cloud
        .wait_for(&dev.id, "firmware-state", "idle", T, &agent)
        .await;
    cloud.delta(&dev.id, &reference, None).await;
    // Kill once the agent has received 70 % (8.8 MB): its checkpoints at 4 and 8 MiB are durable. (The proxy's
    // byte count runs ahead of what the agent consumed: loopback socket buffers hold megabytes.)
    let past_70 = || {
        cloud.states(&dev.id).iter().any(|s| {
            s.strip_prefix("downloading:")
                .and_then(|p| p.parse::<u8>().ok())
                .is_some_and(|p| (70..100).contains(&p))
        })
    };
    assert!(
        until(T, past_70).await,
        "{:?}\n{}",
        cloud.states(&dev.id),
        agent.log()
    );
    agent.kill9();
    let before = proxy.bytes_down();
    agent.spawn();
    cloud
        .wait_for(&dev.id, "firmware-state", "installed", T, &agent)
        .await;
    let again = proxy.bytes_down() - before;
    assert!(dev.holds(&fw), "the device holds the verified image");
    // The durable 8 MiB are not fetched again: the second run fetches the rest only.
    let slack = 64 * 1024; // manifest and HTTP headers
    let rest = size as u64 - 8 * 1024 * 1024;
    assert!(
        again <= rest + slack,
        "second run fetched {again} bytes; at most {rest} were missing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_flash_redoes_it_and_the_device_ends_verified() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let fw = image(12, 80_000);
    let reference = push(
        &registry,
        dir.path(),
        "fw/a:1.0.0",
        &fw,
        "1.0.0",
        support::CHIP,
    )
    .await;
    let cloud = Cloud::connect(&mqtt, "cloud").await;
    let mut agent = Agent::start(AgentSpec {
        write_bytes_per_sec: Some(40_000), // about 2 s of flashing
        ..AgentSpec::new(dir.path(), mqtt.port(), vec![registry.host()], 1)
    });
    let dev = agent.devices[0].clone();
    cloud
        .wait_for(&dev.id, "firmware-state", "idle", T, &agent)
        .await;
    cloud.delta(&dev.id, &reference, None).await;
    cloud
        .wait_state_prefix(&dev.id, "flashing:", T, &agent)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.kill9();
    assert_eq!(dev.completed(&reference), 0, "killed mid-flash");
    assert!(!dev.holds(&fw), "a partial image");
    agent.spawn();
    cloud
        .wait_for(&dev.id, "firmware-state", "installed", T, &agent)
        .await;
    assert!(dev.holds(&fw));
    assert_eq!(
        dev.started(&reference),
        2,
        "the interrupted flash was redone once"
    );
    assert_eq!(dev.completed(&reference), 1);
}
