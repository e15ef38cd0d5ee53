//! The edgecore stand-in against a real mosquitto: the bytes of KubeEdge's own pipeline (golden vectors of
//! mqtt-schema/tests/data/kubeedge, produced by edgecore's Go code), 404s, deltas, persistence, the 5 s reconnect
//! that loses messages, and the cloud link that drops syncs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use twinflash_harness::Mosquitto;
use twinflash_testkit::{
    Counters, Direction, Edgecore, EdgecoreOptions, Observer, publish_once, wait_until,
};

const DEV: &str = "default/blinky-01";
const T0: i64 = 1_700_000_000_000;
/// edgecore's clock in the decode vectors' `edgecore_replies`.
const CLOCK: i64 = 1_700_000_060_000;

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mqtt-schema/tests/data/kubeedge")
}

fn vector(name: &str) -> serde_json::Value {
    let bytes = std::fs::read(vectors_dir().join(format!("{name}.json"))).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn payload(v: &serde_json::Value) -> String {
    v["payload"].as_str().unwrap().to_owned()
}

/// A stand-in with a fixed clock and golden event ids, and the handle on its clock.
async fn golden(mqtt: &Mosquitto, store: &Path) -> (Edgecore, Arc<AtomicI64>) {
    let clock = Arc::new(AtomicI64::new(T0));
    let c = clock.clone();
    let mut opts = EdgecoreOptions::new(mqtt.port(), store);
    opts.clock = Arc::new(move || c.load(Ordering::SeqCst));
    opts.golden_ids = true;
    (Edgecore::start(opts).await, clock)
}

async fn wait_counters(ec: &Edgecore, what: &str, cond: impl Fn(&Counters) -> bool) {
    wait_until(|| cond(&ec.counters()), || format!("{what}\n{}", ec.dump())).await;
}

/// Publishes `payload` on `topic` and waits until the stand-in processed one more update or get.
async fn send(ec: &Edgecore, port: u16, topic: &str, payload: &str) {
    let before = ec.counters();
    publish_once("127.0.0.1", port, topic, payload.as_bytes().to_vec()).await;
    wait_counters(ec, &format!("processed {topic}"), |c| {
        c.updates + c.gets > before.updates + before.gets
    })
    .await;
}

/// What the stand-in sent (MQTT) and synced since log position `from`, as (topic, payload) text.
fn sent_since(ec: &Edgecore, from: usize) -> Vec<(String, String)> {
    ec.log()
        .into_iter()
        .skip(from)
        .filter(|l| matches!(l.direction, Direction::Sent | Direction::Synced))
        .map(|l| (l.topic, String::from_utf8(l.payload).unwrap()))
        .collect()
}

#[tokio::test]
async fn the_update_pipeline_publishes_what_kubeedge_publishes_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let watcher = Observer::start(mqtt.port(), "watch", &["$hw/events/device/#"]).await;
    let (ec, clock) = golden(&mqtt, &dir.path().join("store.json")).await;
    ec.add_device(DEV, &["firmware", "firmware-version", "firmware-state"]);
    let steps: [(&str, &[&str]); 5] = [
        (
            "p01_mapper_reports_new_twins",
            &[
                "01_twin_update_result",
                "02_twin_update_document",
                "03_cloud_edge_updated",
            ],
        ),
        (
            "p02_set_expected_firmware",
            &[
                "01_twin_update_result",
                "02_twin_update_document",
                "03_twin_update_delta",
                "04_cloud_edge_updated",
            ],
        ),
        (
            "p03_mapper_reports_converged",
            &[
                "01_twin_update_result",
                "02_twin_update_document",
                "03_cloud_edge_updated",
            ],
        ),
        (
            "p04_delete_twin",
            &[
                "01_twin_update_result",
                "02_twin_update_document",
                "03_cloud_edge_updated",
            ],
        ),
        ("p05_twin_get", &["01_twin_get_result"]),
    ];
    let mut syncs = ec.syncs();
    let mut mqtt_expected = 0;
    for (step, outputs) in steps {
        let input = vector(&format!("{step}_00_input"));
        let ts: serde_json::Value = serde_json::from_str(&payload(&input)).unwrap();
        clock.store(ts["timestamp"].as_i64().unwrap(), Ordering::SeqCst);
        let from = ec.log().len();
        send(
            &ec,
            mqtt.port(),
            input["topic"].as_str().unwrap(),
            &payload(&input),
        )
        .await;
        let want: Vec<(String, String)> = outputs
            .iter()
            .map(|o| {
                let v = vector(&format!("{step}_{o}"));
                (v["topic"].as_str().unwrap().to_owned(), payload(&v))
            })
            .collect();
        assert_eq!(sent_since(&ec, from), want, "{step}");
        for (topic, body) in &want {
            if topic.starts_with("device/") {
                let sync = syncs.try_recv().expect("the sync reached the cloud stream");
                assert_eq!(
                    String::from_utf8(sync.json.clone()).unwrap(),
                    *body,
                    "{step}"
                );
                assert_eq!(
                    (sync.namespace.as_deref(), sync.name.as_str()),
                    (Some("default"), "blinky-01")
                );
            } else {
                mqtt_expected += 1;
            }
        }
    }
    // The same bytes went through the broker, not retained.
    wait_until(
        || {
            watcher
                .messages()
                .iter()
                .filter(|m| !m.0.ends_with("/twin/update") && !m.0.ends_with("/twin/get"))
                .count()
                >= mqtt_expected
        },
        || format!("{:?}", watcher.messages()),
    )
    .await;
    let seen: Vec<_> = watcher
        .messages()
        .into_iter()
        .filter(|m| !m.0.ends_with("/twin/update") && !m.0.ends_with("/twin/get"))
        .collect();
    assert!(
        seen.iter().all(|m| !m.2),
        "edgecore publishes with retain false"
    );
    let logged: Vec<Vec<u8>> = ec
        .log()
        .into_iter()
        .filter(|l| l.direction == Direction::Sent)
        .map(|l| l.payload)
        .collect();
    assert_eq!(seen.into_iter().map(|m| m.1).collect::<Vec<_>>(), logged);
    let c = ec.counters();
    assert_eq!(
        (
            c.updates,
            c.results,
            c.documents,
            c.deltas,
            c.gets,
            c.syncs_sent
        ),
        (4, 4, 4, 1, 1, 4)
    );
}

#[tokio::test]
async fn refused_and_odd_updates_get_edgecores_replies() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let (ec, clock) = golden(&mqtt, &dir.path().join("store.json")).await;
    let update_topic = format!("$hw/events/device/{DEV}/twin/update");
    let mut checked = 0;
    let mut names: Vec<_> = std::fs::read_dir(vectors_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('e') && n.ends_with(".json"))
        .collect();
    names.sort();
    for name in names {
        let v = vector(name.trim_end_matches(".json"));
        let Some(replies) = v["decode"]["edgecore_replies"].as_array() else {
            continue;
        };
        if v["payload"].as_str().is_none() || v["decode"]["pipeline_panic"].as_bool() == Some(true)
        {
            continue;
        }
        // The device of the vectors: p01 and p02 bring it to firmware {expected new, actual old}, temperature 23.
        ec.remove_device(DEV);
        ec.add_device(DEV, &[]);
        for (step, ts) in [
            ("p01_mapper_reports_new_twins", 1000),
            ("p02_set_expected_firmware", 2000),
        ] {
            clock.store(T0 + ts, Ordering::SeqCst);
            send(
                &ec,
                mqtt.port(),
                &update_topic,
                &payload(&vector(&format!("{step}_00_input"))),
            )
            .await;
        }
        clock.store(CLOCK, Ordering::SeqCst);
        let from = ec.log().len();
        send(&ec, mqtt.port(), &update_topic, &payload(&v)).await;
        let want: Vec<(String, String)> = replies
            .iter()
            .map(|r| {
                (
                    r["topic"].as_str().unwrap().to_owned(),
                    r["payload"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(sent_since(&ec, from), want, "{name}");
        checked += 1;
    }
    assert!(
        checked >= 10,
        "only {checked} vectors with edgecore_replies"
    );
    assert!(ec.counters().bad_requests >= 5, "{:?}", ec.counters());
}

#[tokio::test]
async fn an_unknown_device_gets_404_on_its_own_result_topics() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let (ec, clock) = golden(&mqtt, &dir.path().join("store.json")).await;
    clock.store(CLOCK, Ordering::SeqCst);
    let from = ec.log().len();
    send(
        &ec,
        mqtt.port(),
        "$hw/events/device/default/ghost/twin/update",
        r#"{"event_id":"u1","timestamp":1,"twin":{"firmware":{"expected":{"value":"x"}}}}"#,
    )
    .await;
    send(
        &ec,
        mqtt.port(),
        "$hw/events/device/default/ghost/twin/get",
        r#"{"event_id":"g1","timestamp":1}"#,
    )
    .await;
    assert_eq!(
        sent_since(&ec, from),
        [
            (
                "$hw/events/device/default/ghost/twin/update/result".to_owned(),
                format!(
                    r#"{{"event_id":"u1","timestamp":{CLOCK},"code":404,"reason":"update rejected due to the device is not existed"}}"#
                )
            ),
            (
                "$hw/events/device/default/ghost/twin/get/result".to_owned(),
                format!(
                    r#"{{"event_id":"g1","timestamp":{CLOCK},"code":404,"reason":"Device default/ghost not found while getting twin"}}"#
                )
            ),
        ]
    );
    assert_eq!(ec.counters().not_found, 2);
    assert!(
        ec.twin("default/ghost").is_none(),
        "an update does not create a device"
    );
}

#[tokio::test]
async fn a_delta_follows_every_update_while_expected_differs_from_actual() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let ec = Edgecore::start(EdgecoreOptions::new(mqtt.port(), dir.path().join("s.json"))).await;
    ec.add_device(DEV, &[]);
    let topic = format!("$hw/events/device/{DEV}/twin/update");
    let delta_topic = format!("$hw/events/device/{DEV}/twin/update/delta");
    ec.set_expected(DEV, "firmware", "reg/fw@sha256:new").await;
    wait_counters(&ec, "intent processed", |c| c.updates == 1).await;
    for i in 0..3 {
        let report = format!(
            r#"{{"event_id":"r{i}","timestamp":1,"twin":{{"firmware-state":{{"actual":{{"value":"downloading:{i}0"}}}}}}}}"#
        );
        send(&ec, mqtt.port(), &topic, &report).await;
    }
    let deltas = ec.messages(Direction::Sent, &delta_topic);
    assert_eq!(
        deltas.len(),
        4,
        "one delta per update while the mismatch lasts\n{}",
        ec.dump()
    );
    let ids: std::collections::BTreeSet<String> = deltas
        .iter()
        .map(|d| {
            serde_json::from_slice::<serde_json::Value>(d).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 4, "each delta has a fresh event id");
    send(
        &ec,
        mqtt.port(),
        &topic,
        r#"{"event_id":"done","timestamp":1,"twin":{"firmware":{"actual":{"value":"reg/fw@sha256:new"}}}}"#,
    )
    .await;
    assert_eq!(
        ec.messages(Direction::Sent, &delta_topic).len(),
        4,
        "no delta once converged"
    );
    assert_eq!(
        ec.actual(DEV, "firmware").as_deref(),
        Some("reg/fw@sha256:new")
    );
    assert_eq!(
        ec.device_messages(DEV),
        5 + 5 + 5 + 4,
        "update + result + document (+ delta) per update"
    );
}

#[tokio::test]
async fn the_store_survives_a_kill_and_nothing_is_sent_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.json");
    let mqtt = Mosquitto::start().unwrap();
    let ec = Edgecore::start(EdgecoreOptions::new(mqtt.port(), &store)).await;
    ec.add_device(DEV, &["firmware"]);
    ec.set_expected(DEV, "firmware", "reg/fw@sha256:one").await;
    wait_counters(&ec, "intent processed", |c| c.updates == 1).await;
    let topic = format!("$hw/events/device/{DEV}/twin/update");
    send(
        &ec,
        mqtt.port(),
        &topic,
        r#"{"event_id":"a","timestamp":1,"twin":{"firmware-state":{"actual":{"value":"idle"}}}}"#,
    )
    .await;
    let before = ec.twin(DEV).unwrap();
    ec.stop();
    // Killed: an update now reaches nobody.
    publish_once(
        "127.0.0.1",
        mqtt.port(),
        &topic,
        br#"{"event_id":"lost","timestamp":1,"twin":{"x":{"actual":{"value":"1"}}}}"#.to_vec(),
    )
    .await;

    let watcher = Observer::start(mqtt.port(), "after-restart", &["$hw/events/device/#"]).await;
    let again = Edgecore::start(EdgecoreOptions::new(mqtt.port(), &store)).await;
    assert_eq!(again.twin(DEV).unwrap(), before, "reloaded from the store");
    assert_eq!(again.properties(DEV).unwrap(), ["firmware"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        again.log().is_empty(),
        "nothing sent at start: {:?}",
        again.log()
    );
    assert!(watcher.messages().is_empty(), "{:?}", watcher.messages());
    assert_eq!(
        again.actual(DEV, "x"),
        None,
        "what was published while it was down is lost"
    );
    send(
        &again,
        mqtt.port(),
        &format!("$hw/events/device/{DEV}/twin/get"),
        r#"{"event_id":"g","timestamp":1}"#,
    )
    .await;
    let got = again.messages(
        Direction::Sent,
        &format!("$hw/events/device/{DEV}/twin/get/result"),
    );
    let got: serde_json::Value = serde_json::from_slice(&got[0]).unwrap();
    assert_eq!(
        got["twin"]["firmware"]["expected"]["value"],
        "reg/fw@sha256:one"
    );
    assert_eq!(got["twin"]["firmware-state"]["actual"]["value"], "idle");
    assert_eq!(again.twin(DEV).unwrap(), before, "a get writes nothing");
}

#[tokio::test]
async fn after_a_broker_restart_it_reconnects_after_5_s_and_what_came_before_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut mqtt = Mosquitto::start().unwrap();
    let ec = Edgecore::start(EdgecoreOptions::new(mqtt.port(), dir.path().join("s.json"))).await;
    assert_eq!(
        ec.options().reconnect,
        Duration::from_secs(5),
        "edgecore's interval"
    );
    ec.add_device(DEV, &[]);
    let topic = format!("$hw/events/device/{DEV}/twin/update");
    let result_topic = format!("$hw/events/device/{DEV}/twin/update/result");
    mqtt.restart(false).unwrap();
    let back = std::time::Instant::now();
    publish_once("127.0.0.1", mqtt.port(), &topic, br#"{"event_id":"early","timestamp":1,"twin":{"firmware-state":{"actual":{"value":"idle"}}}}"#.to_vec()).await;
    let acked_after = back.elapsed();
    assert!(
        ec.counters().subscriptions == 1,
        "the broker acknowledged the early report ({acked_after:?} after the restart) before the stand-in was back"
    );
    ec.wait_subscribed(2).await;
    assert!(
        back.elapsed() >= Duration::from_secs(4),
        "reconnected only after the fixed interval"
    );
    assert_eq!(
        ec.counters().updates,
        0,
        "the early report was lost\n{}",
        ec.dump()
    );
    assert!(ec.messages(Direction::Sent, &result_topic).is_empty());
    assert!(
        ec.log().iter().all(|l| l.direction == Direction::Received),
        "nothing sent on reconnect"
    );
    send(&ec, mqtt.port(), &topic, r#"{"event_id":"late","timestamp":1,"twin":{"firmware-state":{"actual":{"value":"idle"}}}}"#).await;
    let results = ec.messages(Direction::Sent, &result_topic);
    assert_eq!(results.len(), 1);
    assert!(String::from_utf8_lossy(&results[0]).contains(r#""event_id":"late""#));
}

#[tokio::test]
async fn syncs_are_dropped_while_the_cloud_link_is_down_and_never_resent() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let mut opts = EdgecoreOptions::new(mqtt.port(), dir.path().join("s.json"));
    opts.reconnect = Duration::from_millis(200); // not about reconnects
    let ec = Edgecore::start(opts).await;
    ec.add_device(DEV, &[]);
    let mut syncs = ec.syncs();
    let topic = format!("$hw/events/device/{DEV}/twin/update");
    let report = |s: &str| {
        format!(
            r#"{{"event_id":"{s}","timestamp":1,"twin":{{"firmware-state":{{"actual":{{"value":"{s}"}}}}}}}}"#
        )
    };
    send(&ec, mqtt.port(), &topic, &report("idle")).await;
    let first = syncs.recv().await.unwrap();
    assert_eq!(first.device, DEV);
    let t = &first.twins["firmware-state"];
    assert_eq!(t.actual.as_ref().unwrap().value.as_deref(), Some("idle"));
    assert_eq!(
        t.actual_version.as_ref().unwrap().edge,
        1,
        "the sync carries versions"
    );

    ec.set_cloud_link(false);
    send(&ec, mqtt.port(), &topic, &report("installed")).await;
    assert_eq!(ec.counters().syncs_dropped, 1);
    assert_eq!(
        ec.messages(Direction::Sent, &format!("{topic}/result"))
            .len(),
        2,
        "MQTT results still go out while the cloud link is down"
    );
    ec.set_cloud_link(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(syncs.try_recv().is_err(), "a dropped sync is never re-sent");
    send(&ec, mqtt.port(), &topic, &report("idle")).await;
    let next = syncs.recv().await.unwrap();
    assert_eq!(
        next.twins["firmware-state"]
            .actual_version
            .as_ref()
            .unwrap()
            .edge,
        3
    );
    let c = ec.counters();
    assert_eq!((c.syncs_sent, c.syncs_dropped), (2, 1));
}
