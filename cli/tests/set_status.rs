//! `twinflash set` and `twinflash status` against a real mosquitto and registry.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::path::Path;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use mqtt_schema::gojson::decode;
use mqtt_schema::{DeviceTwinDelta, unmarshal_device_twin_update};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use twinflash_harness::{Mosquitto, Registry};

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

#[test]
fn set_pins_a_tag_and_publishes_what_edgecore_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let pinned = push(&registry, dir.path());
    let rx = subscribe(&mqtt, "$hw/events/device/default/blinky-01/twin/update");
    let tag = format!("{}/fw/blinky:1.2.0", registry.host());
    let out = twinflash(&[
        "set",
        "default/blinky-01",
        &tag,
        "--mqtt",
        &mqtt.url(),
        "--plain-http",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        pinned,
        "the tag was pinned to the pushed digest"
    );
    let (topic, payload, retain) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(topic, "$hw/events/device/default/blinky-01/twin/update");
    assert!(!retain);
    let update = unmarshal_device_twin_update(&payload).expect("edgecore's own checks accept it");
    let twin = update.twin.unwrap()["firmware"].clone().unwrap();
    assert_eq!(
        twin.expected.unwrap().value.as_deref(),
        Some(pinned.as_str())
    );
    assert!(twin.actual.is_none(), "an intent sets expected only");
}

#[test]
fn set_in_direct_mode_leaves_a_retained_delta_for_agents_that_connect_later() {
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
        "direct",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["mode"], "direct");
    assert_eq!(json["retained"], true);
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
