//! The agent end to end: real mosquitto, real registry, the real binary, simulated devices.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::time::Duration;

use support::{AgentSpec, Env, image};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_as_edgecore_sends_it_installs_and_reports_back() {
    let env = Env::start(1, |s| s).await;
    let fw = image(1, 20_000);
    let reference = env.push("blinky:1.0.0", &fw, "1.0.0+b7").await;
    env.intent(0, &reference).await;
    env.wait(0, "firmware-state", "installed").await;
    assert_eq!(
        env.actual(0, "firmware").as_deref(),
        Some(reference.as_str())
    );
    assert_eq!(
        env.actual(0, "firmware-version").as_deref(),
        Some("1.0.0_b7")
    );
    let dev = env.device(0);
    assert!(
        dev.holds(&fw),
        "flash.bin holds the payload at base-address - origin"
    );
    // Unsent progress is replaced by newer progress (latest wins), so fast stages may merge; but the stages
    // never go backwards, the download shows progress, and installed comes last.
    let states = env.cloud.states(&dev.id);
    let rank = |s: &str| {
        [
            "idle",
            "pending",
            "downloading",
            "verifying",
            "flashing",
            "installed",
        ]
        .iter()
        .position(|p| s.split(':').next() == Some(*p))
        .unwrap_or_else(|| panic!("unexpected state {s} in {states:?}"))
    };
    assert!(
        states.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
        "{states:?}"
    );
    assert!(
        states.iter().any(|s| s.starts_with("downloading:")),
        "{states:?}"
    );
    assert_eq!(states.last().map(String::as_str), Some("installed"));
    assert_eq!(dev.completed(&reference), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_delta_ten_times_flashes_once() {
    let env = Env::start(1, |s| AgentSpec {
        write_bytes_per_sec: Some(200_000),
        ..s
    })
    .await;
    let reference = env.push("blinky:1.0.0", &image(2, 8_000), "1.0.0").await;
    for _ in 0..10 {
        env.intent(0, &reference).await;
    }
    env.wait(0, "firmware-state", "installed").await;
    // edgecore repeats the delta after the report too.
    for _ in 0..10 {
        env.intent(0, &reference).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dev = env.device(0);
    assert_eq!(dev.started(&reference), 1, "{:?}", dev.counters());
    assert_eq!(dev.completed(&reference), 1);
    assert_eq!(
        env.actual(0, "firmware-state").as_deref(),
        Some("installed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_intent_during_a_download_cancels_it_and_installs_the_new_one() {
    // 200 kB at 100 kB/s: the first download takes about 2 s.
    let env = Env::start(1, |s| AgentSpec {
        rate_limit: Some(100_000),
        ..s
    })
    .await;
    let old = env.push("a:1.0.0", &image(3, 200_000), "1.0.0").await;
    let new_fw = image(4, 20_000);
    let new = env.push("a:1.1.0", &new_fw, "1.1.0").await;
    env.intent(0, &old).await;
    env.wait_state_prefix(0, "downloading:").await;
    env.intent(0, &new).await;
    env.wait(0, "firmware", &new).await;
    let dev = env.device(0);
    assert_eq!(
        env.actual(0, "firmware-state").as_deref(),
        Some("installed")
    );
    assert_eq!(
        dev.started(&old),
        0,
        "the old download was cancelled before any flash"
    );
    assert_eq!(dev.completed(&new), 1);
    assert!(dev.holds(&new_fw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_intent_during_a_flash_waits_for_it_then_installs() {
    // 60 kB at 40 kB/s: the first flash takes about 1.5 s.
    let env = Env::start(1, |s| AgentSpec {
        write_bytes_per_sec: Some(40_000),
        ..s
    })
    .await;
    let old = env.push("a:1.0.0", &image(5, 60_000), "1.0.0").await;
    let new_fw = image(6, 10_000);
    let new = env.push("a:1.1.0", &new_fw, "1.1.0").await;
    env.intent(0, &old).await;
    env.wait_state_prefix(0, "flashing:").await;
    env.intent(0, &new).await;
    env.wait(0, "firmware", &new).await;
    let dev = env.device(0);
    assert_eq!(dev.started(&old), 1);
    assert_eq!(
        dev.completed(&old),
        1,
        "the running flash was not interrupted"
    );
    assert_eq!(dev.completed(&new), 1);
    assert!(dev.holds(&new_fw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_down_is_waiting_then_success_when_it_is_back() {
    let mut env = Env::start(1, |s| s).await;
    let fw = image(7, 10_000);
    let reference = env.push("a:1.0.0", &fw, "1.0.0").await;
    env.registry.stop();
    env.intent(0, &reference).await;
    env.wait(0, "firmware-state", "waiting:registry-unreachable")
        .await;
    env.registry.start_again().unwrap();
    env.wait(0, "firmware-state", "installed").await;
    assert!(env.device(0).holds(&fw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_probe_waits_without_blocking_other_devices() {
    let env = Env::start(2, |s| s).await;
    let fw = image(13, 8_000);
    let reference = env.push("a:1.0.0", &fw, "1.0.0").await;
    let (busy, free) = (env.device(0), env.device(1));
    busy.set_faults(r#"{"busy": true}"#);
    env.intent(0, &reference).await;
    env.wait(0, "firmware-state", "waiting:probe-busy").await;
    env.intent(1, &reference).await;
    env.wait(1, "firmware-state", "installed").await;
    // Device 0 keeps retrying meanwhile (each attempt reports its flash start, then the wait again).
    let state = env.actual(0, "firmware-state").unwrap_or_default();
    assert!(
        state == "waiting:probe-busy" || state == "flashing:0",
        "{state}"
    );
    busy.set_faults("{}");
    env.wait(0, "firmware-state", "installed").await;
    assert!(busy.holds(&fw) && free.holds(&fw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_mid_flash_is_retried_and_a_bad_verify_fails_for_good() {
    let env = Env::start(2, |s| s).await;
    let fw = image(14, 30_000);
    let reference = env.push("a:1.0.0", &fw, "1.0.0").await;
    let (cut, weak) = (env.device(0), env.device(1));
    cut.set_faults(r#"{"power_cut_at_byte": 10000}"#);
    weak.set_faults(r#"{"verify_error": true}"#);
    env.intent(0, &reference).await;
    env.intent(1, &reference).await;
    env.wait(0, "firmware-state", "installed").await;
    assert!(
        cut.holds(&fw),
        "flashing again after the power cut restored a verified image"
    );
    assert_eq!(cut.started(&reference), 2);
    assert_eq!(cut.completed(&reference), 1);
    env.wait(1, "firmware-state", "failed:verify-failed").await;
    assert_eq!(weak.started(&reference), 3, "flash_attempts = 3");
    assert_eq!(weak.completed(&reference), 0);
    assert_eq!(
        env.actual(1, "firmware").as_deref(),
        Some(""),
        "nothing unverified is reported installed, and the erased image is no longer named"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_get_from_a_watcher_makes_the_device_report_its_state_again() {
    use mqtt_schema::{DeviceTopicKind, to_go_json, twin_get_request};
    let env = Env::start(1, |s| s).await;
    let reference = env.push("a:1.0.0", &image(15, 4_000), "1.0.0").await;
    env.intent(0, &reference).await;
    env.wait(0, "firmware-state", "installed").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = env.device(0).id;
    let reports = || env.cloud.seen.lock().unwrap().reports;

    // The agent's own request (after each reconnect) is not answered.
    let before = reports();
    let own = to_go_json(&twin_get_request("twinflash-node-a-99", 1));
    env.cloud.raw(&id, DeviceTopicKind::TwinGet, own).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reports(), before, "own twin/get answered");

    // A watcher's requests are answered, coalesced: at most two reports a second however many arrive.
    for _ in 0..5 {
        env.cloud
            .raw(
                &id,
                DeviceTopicKind::TwinGet,
                to_go_json(&twin_get_request("watcher", 1)),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        reports(),
        before + 2,
        "a burst of requests is answered at once and once more at the end of the second"
    );
    assert_eq!(
        env.actual(0, "firmware").as_deref(),
        Some(reference.as_str())
    );
    assert_eq!(
        env.actual(0, "firmware-state").as_deref(),
        Some("installed")
    );
}
