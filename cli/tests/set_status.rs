//! `twinflash set` and `twinflash status` against a real mosquitto and registry, and the test kit's edgecore
//! stand-in (which answers as edgecore v1.23.1 does).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::path::Path;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use mqtt_schema::gojson::decode;
use mqtt_schema::{DeviceTwinDelta, unmarshal_device_twin_update};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use twinflash_harness::{Mosquitto, Registry};
use twinflash_testkit::{Direction, Edgecore, EdgecoreOptions, publish_once, wait_until};

fn twinflash(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_twinflash"))
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn push(registry: &Registry, dir: &Path) -> String {
    let file = dir.join("fw.bin");
    std::fs::write(&file, vec![0x5a; 4096]).unwrap();
    let target = format!("{}/fw/blinky:1.2.0", registry.host());
    let file = file.to_str().unwrap();
    let out = twinflash(&[
        "push",
        &target,
        file,
        "--version",
        "1.2.0",
        "--chip",
        "STM32F411RETx",
        "--base-address",
        "0x08000000",
        "--plain-http",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// A subscriber that hands over every message on `filter`, retained ones included.
fn subscribe(mqtt: &Mosquitto, filter: &str) -> mpsc::Receiver<(String, Vec<u8>, bool)> {
    let (client, mut conn) = Client::new(
        MqttOptions::new(format!("t-{}", rand_id()), "127.0.0.1", mqtt.port()),
        64,
    );
    client.subscribe(filter, QoS::AtLeastOnce).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _keep = client;
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx
                        .send((p.topic.clone(), p.payload.to_vec(), p.retain))
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    rx
}

fn rand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

const DEV: &str = "default/blinky-01";

fn digest_ref(c: char) -> String {
    format!(
        "reg.local:5000/fw/blinky@sha256:{}",
        c.to_string().repeat(64)
    )
}

/// The CLI, run off the async runtime (the stand-in runs on it meanwhile).
async fn twinflash_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        twinflash(&args)
    })
    .await
    .unwrap()
}

async fn standin(mqtt: &Mosquitto, dir: &Path) -> Edgecore {
    let mut opts = EdgecoreOptions::new(mqtt.port(), dir.join("edgecore.json"));
    opts.reconnect = Duration::from_millis(200); // these tests are not about reconnects
    Edgecore::start(opts).await
}

/// An agent-like report of actual values on `device`'s twin/update.
async fn report(mqtt: &Mosquitto, device: &str, twins: &[(&str, &str)]) {
    let twin: Vec<String> = twins
        .iter()
        .map(|(k, v)| {
            format!(r#""{k}":{{"actual":{{"value":"{v}"}},"metadata":{{"type":"string"}}}}"#)
        })
        .collect();
    let payload = format!(
        r#"{{"event_id":"","timestamp":1,"twin":{{{}}}}}"#,
        twin.join(",")
    );
    publish_once(
        "127.0.0.1",
        mqtt.port(),
        &format!("$hw/events/device/{device}/twin/update"),
        payload.into_bytes(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_pins_a_tag_and_edgecore_acknowledges_it() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let ec = standin(&mqtt, dir.path()).await;
    ec.add_device(DEV, &["firmware"]);
    let pinned = push(&registry, dir.path());
    let tag = format!("{}/fw/blinky:1.2.0", registry.host());
    let out = twinflash_async(&["set", DEV, &tag, "--mqtt", &mqtt.url(), "--plain-http"]).await;
    assert!(out.status.success(), "{}\n{}", text(&out), ec.dump());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        pinned,
        "the tag was pinned to the pushed digest"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("edgecore stored firmware expected = {pinned}")),
        "{err}"
    );
    assert_eq!(
        ec.expected(DEV, "firmware").as_deref(),
        Some(pinned.as_str())
    );
    // What edgecore received is an intent its own checks accept, set on expected only, not retained.
    let received = ec.messages(
        Direction::Received,
        &format!("$hw/events/device/{DEV}/twin/update"),
    );
    assert_eq!(received.len(), 1);
    let update =
        unmarshal_device_twin_update(&received[0]).expect("edgecore's own checks accept it");
    let twin = update.twin.unwrap()["firmware"].clone().unwrap();
    assert!(twin.actual.is_none(), "an intent sets expected only");
    assert!(
        update.base.event_id.starts_with("twinflash-set-"),
        "a unique event id"
    );

    // --json carries what edgecore stored.
    let other = digest_ref('c');
    let out = twinflash_async(&["set", DEV, &other, "--mqtt", &mqtt.url(), "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["acknowledged"], true);
    assert_eq!(json["stored"]["expected"]["value"], other.as_str());
    assert!(
        json["stored"]["expected"]["metadata"]["timestamp"]
            .as_i64()
            .unwrap()
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_on_a_device_unknown_to_edgecore_fails_with_404_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let ec = standin(&mqtt, dir.path()).await;
    let out = twinflash_async(&[
        "set",
        "default/ghost",
        &digest_ref('a'),
        "--mqtt",
        &mqtt.url(),
    ])
    .await;
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for part in [
        "default/ghost is unknown to edgecore",
        "code 404: update rejected due to the device is not existed",
        "re-create the Device",
        "docs/operations.md",
        "[not-found]",
    ] {
        assert!(err.contains(part), "{part:?} in {err}");
    }
    assert_eq!(ec.counters().not_found, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_without_an_answer_fails_unless_told_not_to_wait() {
    let mqtt = Mosquitto::start().unwrap();
    let url = mqtt.url();
    let r = digest_ref('d');
    let out = twinflash_async(&["set", DEV, &r, "--mqtt", &url, "--wait", "1"]).await;
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "edgecore did not acknowledge within 1 s (the intent may still arrive) [timeout]"
        ),
        "{err}"
    );
    let out = twinflash_async(&[
        "set", DEV, &r, "--mqtt", &url, "--mode", "direct", "--wait", "1",
    ])
    .await;
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("twinflash-cloud's relay did not acknowledge"),
        "{}",
        text(&out)
    );
    let out = twinflash_async(&["set", DEV, &r, "--mqtt", &url, "--wait", "0"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not waiting"),
        "{}",
        text(&out)
    );
}

#[test]
fn set_in_delta_mode_leaves_a_retained_delta_for_agents_that_connect_later() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let pinned = push(&registry, dir.path());
    let out = twinflash(&[
        "set",
        "default/blinky-02",
        &pinned,
        "--mqtt",
        &mqtt.url(),
        "--mode",
        "delta",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["mode"], "delta");
    assert_eq!(json["retained"], true);
    assert_eq!(json["acknowledged"], false, "nothing acknowledges a delta");
    // A subscriber that arrives afterwards still gets it.
    let rx = subscribe(
        &mqtt,
        "$hw/events/device/default/blinky-02/twin/update/delta",
    );
    let (_, payload, retain) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(retain);
    let delta: DeviceTwinDelta = decode(&payload).unwrap();
    assert_eq!(delta.wanted("firmware"), Some(pinned.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_edgecores_view_and_marks_it_stale_when_the_agent_says_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let ec = standin(&mqtt, dir.path()).await;
    ec.add_device(DEV, &[]);
    let wanted = digest_ref('e');
    ec.set_expected(DEV, "firmware", &wanted).await;
    report(
        &mqtt,
        DEV,
        &[
            ("firmware", &wanted),
            ("firmware-version", "1.2.0"),
            ("firmware-state", "installed"),
        ],
    )
    .await;
    ec.wait_actual(DEV, "firmware-state", "installed", Duration::from_secs(30))
        .await;

    // Healthy: edgecore's view, no note.
    let out = twinflash_async(&["status", DEV, "--mqtt", &mqtt.url(), "--wait", "1"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.lines().next().unwrap().contains("NOTE"), "{table}");
    let line = table.lines().nth(1).unwrap();
    assert!(
        line.contains(&wanted) && line.contains("1.2.0") && line.trim_end().ends_with("installed"),
        "{table}"
    );

    // The agent reports while edgecore is down: edgecore still holds `installed`.
    let gets = ec.counters().gets;
    let status = {
        let url = mqtt.url();
        tokio::task::spawn_blocking(move || {
            twinflash(&["status", DEV, "--mqtt", &url, "--wait", "4", "--json"])
        })
    };
    wait_until(|| ec.counters().gets > gets, || ec.dump()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ec.stop();
    report(&mqtt, DEV, &[("firmware-state", "downloading:40")]).await;
    let out = status.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &rows[0];
    assert_eq!(row["edgecore"]["state"], "installed", "{row}");
    assert_eq!(row["edgecore"]["desired"], wanted.as_str(), "{row}");
    assert_eq!(row["agent"]["state"], "downloading:40", "{row}");
    assert_eq!(
        row["stale"],
        serde_json::json!(["firmware-state downloading:40"]),
        "{row}"
    );
    assert!(row["note"].as_str().unwrap().starts_with("stale:"), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_device_unknown_to_edgecore_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let ec = standin(&mqtt, dir.path()).await;
    ec.add_device(DEV, &[]);
    let out = twinflash_async(&[
        "status",
        DEV,
        "default/ghost",
        "--mqtt",
        &mqtt.url(),
        "--wait",
        "2",
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let ghost = table
        .lines()
        .find(|l| l.starts_with("default/ghost"))
        .unwrap();
    assert!(ghost.contains("unknown to edgecore"), "{table}");
    let known = table.lines().find(|l| l.starts_with(DEV)).unwrap();
    assert!(
        !known.contains("unknown") && !known.contains("no answer"),
        "{table}"
    );
    let out = twinflash_async(&[
        "status",
        "default/ghost",
        "--mqtt",
        &mqtt.url(),
        "--wait",
        "1",
        "--json",
    ])
    .await;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["edgecore_error"]["code"], 404);
    assert_eq!(
        rows[0]["edgecore_error"]["reason"],
        "Device default/ghost not found while getting twin"
    );
    assert!(rows[0]["edgecore"].is_null());
}

#[test]
fn set_refuses_bad_input_with_one_line() {
    let mqtt = Mosquitto::start().unwrap();
    let url = mqtt.url();
    let good = format!("r/fw@sha256:{}", "a".repeat(64));
    for (args, code) in [
        (
            vec![
                "set",
                "default/blinky-01",
                "reg/fw@sha256:abc",
                "--mqtt",
                &url,
            ],
            "invalid-reference",
        ),
        (
            vec!["set", "no-namespace", "reg/fw@sha256:abc", "--mqtt", &url],
            "invalid-reference",
        ),
        (
            vec!["set", "default/x", &good, "--mqtt", "tcp://x"],
            "broker-unreachable",
        ),
        (
            vec!["set", "default/x", &good, "--mqtt", "mqtt://127.0.0.1:1"],
            "broker-unreachable",
        ),
    ] {
        let out = twinflash(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.starts_with("twinflash: "), "{err}");
        assert!(err.contains(&format!("[{code}]")), "{args:?}: {err}");
    }
}

#[test]
fn status_watches_reports_until_installed_and_fails_on_a_rejection() {
    let mqtt = Mosquitto::start().unwrap();
    let url = mqtt.url();
    let reference = format!("reg.local:5000/fw/blinky@sha256:{}", "b".repeat(64));
    let publish = |device: &str, state: &str, firmware: Option<&str>| {
        let mut twin = format!(r#""firmware-state":{{"actual":{{"value":"{state}"}}}}"#);
        if let Some(f) = firmware {
            twin.push_str(&format!(r#","firmware":{{"actual":{{"value":"{f}"}}}},"firmware-version":{{"actual":{{"value":"1.2.0"}}}}"#));
        }
        let payload = format!(r#"{{"event_id":"","timestamp":1,"twin":{{{twin}}}}}"#);
        let (c, mut conn) = Client::new(
            MqttOptions::new(format!("p-{}", rand_id()), "127.0.0.1", mqtt.port()),
            8,
        );
        c.publish(
            format!("$hw/events/device/{device}/twin/update"),
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .unwrap();
        for ev in conn.iter() {
            if matches!(ev, Ok(Event::Incoming(Packet::PubAck(_))) | Err(_)) {
                break;
            }
        }
    };
    let status = {
        let url = url.clone();
        std::thread::spawn(move || {
            twinflash(&[
                "status",
                "default/a",
                "default/b",
                "--mqtt",
                &url,
                "--until-installed",
                "--wait",
                "20",
            ])
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    publish("default/a", "downloading:40", None);
    publish("default/a", "installed", Some(&reference));
    publish("default/b", "installed", Some(&reference));
    let out = status.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("DEVICE"), "{table}");
    assert_eq!(table.matches("installed").count(), 2, "{table}");

    let status = std::thread::spawn(move || {
        twinflash(&[
            "status",
            "default/c",
            "--mqtt",
            &url,
            "--until-installed",
            "--wait",
            "20",
            "--json",
        ])
    });
    std::thread::sleep(Duration::from_millis(800));
    publish("default/c", "rejected:chip-mismatch", None);
    let out = status.join().unwrap();
    assert!(
        !out.status.success(),
        "a rejection ends the wait with a failure"
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["state"], "rejected:chip-mismatch");
}
