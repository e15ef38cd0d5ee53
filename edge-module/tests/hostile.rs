//! Hostile input (issue #16), each case as it was found against the release binaries: the real agent, a real
//! mosquitto with the agent's persistent session, the real registry. None of these may take the node offline, fill
//! its disk or cost another device its intent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // tests: a panic is a failed test

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mqtt_schema::{DeviceId, DeviceTopicKind, Topic, TopicLayout};
use rumqttc::{Event, MqttOptions, Packet, QoS};
use support::{AgentSpec, Env, WAIT, image, print_vm_hwm};
use twinflash_harness::Mosquitto;

fn delta_topic(device: &str) -> String {
    let id = DeviceId::parse(device, TopicLayout::Namespaced).unwrap();
    Topic::device(&id, DeviceTopicKind::TwinUpdateDelta).to_string()
}

/// Publishes `len` bytes on `topic` at QoS 1 with mosquitto_pub (the test's own MQTT client caps its packets).
fn publish_big(mqtt: &Mosquitto, dir: &std::path::Path, topic: &str, len: usize) {
    publish_file(mqtt, dir, topic, &vec![b'x'; len], false);
}

/// Publishes `payload` on `topic` at QoS 1 with mosquitto_pub, retained if `retain`.
fn publish_file(
    mqtt: &Mosquitto,
    dir: &std::path::Path,
    topic: &str,
    payload: &[u8],
    retain: bool,
) {
    let file = dir.join(format!("payload-{}.bin", payload.len()));
    std::fs::write(&file, payload).unwrap();
    let port = mqtt.port().to_string();
    let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-q", "1", "-t", topic];
    if retain {
        args.push("-r");
    }
    let status = Command::new("mosquitto_pub")
        .args(args)
        .arg("-f")
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_pub of {} bytes", payload.len());
}

/// Polls the agent's log until `needle` appears `n` times.
async fn wait_log(env: &Env, needle: &str, n: usize) {
    let deadline = Instant::now() + WAIT;
    while env.agent.log().matches(needle).count() < n {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged {n} times:\n{}",
            env.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_costs_no_other_device_its_intent_and_no_reconnect_loop() {
    let env = Env::start(2, |s| s).await;
    let (v1, v2) = (image(40, 6_000), image(41, 6_000));
    let r1 = env.push("a:1.0.0", &v1, "1.0.0").await;
    let r2 = env.push("a:2.0.0", &v2, "2.0.0").await;
    let dev0 = env.device(0).id;

    // 10 MiB on device 0's delta topic: read, acknowledged and dropped (under the transport's cap).
    publish_big(&env.mqtt, env.dir.path(), &delta_topic(&dev0), 10 << 20);
    let t0 = Instant::now();
    env.intent(1, &r1).await;
    env.wait(1, "firmware", &r1).await;
    println!(
        "device 1 installed {:.1} s after the 10 MiB message",
        t0.elapsed().as_secs_f64()
    );
    wait_log(
        &env,
        "dropping an MQTT message over limits.max_message_bytes",
        1,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = env.agent.log();
    assert_eq!(
        log.matches("broker link down").count(),
        0,
        "no reconnect at all:\n{log}"
    );

    // 17 MiB, over the transport's cap: one clean-session reconnect drops it, then the twin is asked again.
    publish_big(&env.mqtt, env.dir.path(), &delta_topic(&dev0), 17 << 20);
    wait_log(&env, "over the transport's cap", 1).await;
    wait_log(&env, "broker link back", 1).await;
    env.intent(1, &r2).await;
    env.wait(1, "firmware", &r2).await;
    // Device 0 still takes intents.
    env.intent(0, &r1).await;
    env.wait(0, "firmware", &r1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = env.agent.log();
    assert_eq!(
        log.matches("over the transport's cap").count(),
        1,
        "redelivered:\n{log}"
    );
    assert_eq!(
        log.matches("broker link down").count(),
        1,
        "a reconnect loop:\n{log}"
    );
    assert!(env.device(1).holds(&v2) && env.device(0).holds(&v1));
    print_vm_hwm(&env.agent, "a 10 MiB and a 17 MiB MQTT message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_references_never_fill_the_journal_or_the_log() {
    // The agent's message limit is raised so the 200 KiB references reach validation (by default they are dropped
    // as oversized, which the test above covers).
    let env = Env::start(1, |s| AgentSpec {
        limits_extra: "max_message_bytes = 1048576\n".into(),
        ..s
    })
    .await;
    let fw = image(42, 6_000);
    let good = env.push("a:1.0.0", &fw, "1.0.0").await;
    let id = env.device(0).id;
    let journal = env
        .agent
        .state_dir
        .join("journal")
        .join(format!("{}.jsonl", id.replace('/', "__")));
    let log_before = env.agent.log().len();

    let mut opts = MqttOptions::new("hostile", "127.0.0.1", env.mqtt.port());
    opts.set_max_packet_size(1 << 22, 1 << 22);
    let (client, mut events) = twinflash_mqtt::client(opts);
    let acked = Arc::new(AtomicUsize::new(0));
    let counter = acked.clone();
    tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = ev {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let filler = "a".repeat(200 * 1024);
    for i in 0..300 {
        // Distinct within the kept prefix, so each one is a new intent and is journaled.
        let value = format!("{i}.{}/fw/a@sha256:{filler}", env.registry.host());
        let payload =
            format!(r#"{{"event_id":"","timestamp":1,"delta":{{"firmware":"{value}"}}}}"#);
        client
            .publish(delta_topic(&id), QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    // All 300 are with the broker before the good intent, so they reach the agent first.
    let deadline = Instant::now() + WAIT;
    while acked.load(Ordering::Relaxed) < 300 {
        assert!(
            Instant::now() < deadline,
            "the broker took {acked:?} of 300"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.wait(0, "firmware-state", "rejected:invalid-reference")
        .await;
    env.intent(0, &good).await;
    env.wait(0, "firmware", &good).await;

    let journal_bytes = std::fs::metadata(&journal).unwrap().len();
    let log_bytes = env.agent.log().len() - log_before;
    println!(
        "300 x 200 KiB invalid references: journal {journal_bytes} bytes, log +{log_bytes} bytes"
    );
    assert!(journal_bytes < 256 * 1024, "journal {journal_bytes} bytes");
    assert!(log_bytes < 64 * 1024, "log grew {log_bytes} bytes");
    assert!(
        !std::fs::read_to_string(&journal)
            .unwrap()
            .contains(&filler[..1024])
    );
    assert!(env.device(0).holds(&fw));
    print_vm_hwm(&env.agent, "300 invalid references of 200 KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_intents_costs_bounded_reports_and_flashes() {
    let env = Env::start(1, |s| s).await;
    let (a, b) = (image(43, 6_000), image(44, 6_000));
    let ra = env.push("a:1.0.0", &a, "1.0.0").await;
    let rb = env.push("a:2.0.0", &b, "2.0.0").await;
    env.intent(0, &ra).await;
    env.wait(0, "firmware", &ra).await;
    let id = env.device(0).id;
    let before = env.cloud.seen.lock().unwrap().reports;
    let t0 = Instant::now();
    for i in 0..2000 {
        env.intent(0, if i % 2 == 0 { &ra } else { &rb }).await;
    }
    env.wait(0, "firmware", &rb).await;
    env.wait(0, "firmware-state", "installed").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let took = t0.elapsed().as_secs_f64();
    let reports = env.cloud.seen.lock().unwrap().reports - before;
    // The budget: a burst of 10, then one report per 500 ms (defaults), plus the re-report after a reconnect.
    let allowed = 10 + (took / 0.5).ceil() as usize + 2;
    println!("2000 alternating intents in {took:.1} s: {reports} reports (budget {allowed})");
    assert!(
        reports <= allowed,
        "{reports} reports in {took:.1} s for {id}"
    );
    assert!(env.device(0).holds(&b));
    assert!(
        env.device(0).started(&rb) <= 3,
        "{:?}",
        env.device(0).counters()
    );
    print_vm_hwm(&env.agent, "2000 alternating intents");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_messages_even_retained_cost_no_device_its_intent() {
    let mut env = Env::start(2, |s| s).await;
    let dev0 = env.device(0).id;
    // Not UTF-8 inside the twin's value (decoded as Go does, U+FFFD for each bad byte, then refused by the twin
    // charset), and as the whole payload.
    let in_value = b"{\"delta\":{\"firmware\":\"\xff\xfe\xc0\x80\"}}".to_vec();
    let not_utf8 = b"\xff\xfe{\xc0\x80}".to_vec();
    // 9,000 levels of nesting where the twin belongs (serde_json's own limit is 128).
    let deep = format!(
        r#"{{"event_id":"","timestamp":1,"delta":{}{}}}"#,
        "[".repeat(9_000),
        "]".repeat(9_000)
    )
    .into_bytes();
    for (round, (payload, state)) in [
        (&in_value, "rejected:invalid-reference"),
        (&not_utf8, "rejected:invalid-message"),
        (&deep, "rejected:invalid-message"),
    ]
    .into_iter()
    .enumerate()
    {
        publish_file(
            &env.mqtt,
            env.dir.path(),
            &delta_topic(&dev0),
            payload,
            true,
        );
        env.wait(0, "firmware-state", state).await;
        // A good intent still installs (a new one each round: the state of an intent already installed is not
        // reported again).
        let version = format!("1.{round}.0");
        let good = env
            .push(
                &format!("a:{version}"),
                &image(50 + round as u8, 6_000),
                &version,
            )
            .await;
        env.intent(0, &good).await;
        env.wait(0, "firmware", &good).await;
        env.wait(0, "firmware-state", "installed").await;
    }
    // Retained: an agent that starts on a new session (another client id, as after its session expired) gets the
    // last poison again at subscription, and still takes intents.
    env.agent.kill9();
    let config = std::fs::read_to_string(&env.agent.config).unwrap();
    let config = config.replacen("client_id = \"", "client_id = \"fresh-", 1);
    std::fs::write(&env.agent.config, config).unwrap();
    env.agent.spawn();
    wait_log(&env, "malformed twin message", 3).await;
    let fw = image(45, 6_000);
    let good = env.push("a:2.0.0", &fw, "2.0.0").await;
    env.intent(1, &good).await;
    env.wait(1, "firmware", &good).await;
    env.intent(0, &good).await;
    env.wait(0, "firmware", &good).await;
    assert!(env.device(0).holds(&fw) && env.device(1).holds(&fw));
    print_vm_hwm(
        &env.agent,
        "retained non-UTF-8 and 9,000-deep MQTT messages",
    );
}
