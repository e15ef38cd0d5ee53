//! `edgecore` mode against a real mosquitto: the intent on `twin/update` is exactly what
//! edgecore accepts, and an MQTT outage of the controller (a fault proxy refusing it) ends with
//! every pending intent republished, the newest one per device last.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use mqtt_schema::DeviceId;
use tokio_util::sync::CancellationToken;
use twinflash_cloud::config::{Config, Mode};
use twinflash_cloud::mqtt::MqttSink;
use twinflash_cloud::seams::IntentSink;
use twinflash_harness::{Fault, FaultProxy, Mosquitto};
use twinflash_testkit::{Observer, init, wait_until};

const FILTER: &str = "$hw/events/device/+/+/twin/update";
/// A resync period that never elapses during a test.
const HOUR: Duration = Duration::from_secs(3600);

fn pinned(n: u8) -> String {
    format!(
        "registry.local:5000/fw/blinky@sha256:{}",
        format!("{n:02x}").repeat(32)
    )
}

fn key(name: &str) -> DeviceId {
    DeviceId::namespaced("default", name).unwrap()
}

fn config(port: u16) -> Config {
    let mut env = std::collections::HashMap::new();
    env.insert(
        "TWINFLASH_CLOUD__MQTT__URL".to_owned(),
        format!("mqtt://127.0.0.1:{port}"),
    );
    Config::load_with_env(None, Some(env)).unwrap()
}

/// The latest `expected` firmware per device topic, from the observed messages in order.
fn latest(obs: &Observer) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (topic, payload, _) in obs.messages() {
        let upd = mqtt_schema::unmarshal_device_twin_update(&payload)
            .unwrap_or_else(|e| panic!("edgecore would reject {topic}: {e}"));
        let fw = upd.twin("firmware").expect("a firmware twin");
        out.insert(topic, fw.expected_value().to_owned());
    }
    out
}

async fn connected(sink: &MqttSink, up: bool) {
    wait_until(
        || sink.is_connected() == up,
        || format!("sink connected == {up}"),
    )
    .await;
}

#[tokio::test]
async fn intent_is_a_valid_twin_update_on_the_device_topic() {
    init();
    let mqtt = Mosquitto::start().unwrap();
    let obs = Observer::start(mqtt.port(), "observer-1", &[FILTER]).await;
    let cancel = CancellationToken::new();
    let cfg = config(mqtt.port()).mqtt.unwrap();
    let (sink, task) = MqttSink::start(&cfg, Mode::Edgecore, HOUR, None, cancel.clone()).unwrap();
    connected(&sink, true).await;
    sink.publish_intent(&key("blinky-01"), &pinned(1))
        .await
        .unwrap();
    wait_until(|| !obs.messages().is_empty(), || "no intent seen".into()).await;
    let msgs = obs.messages();
    assert_eq!(msgs[0].0, "$hw/events/device/default/blinky-01/twin/update");
    assert!(!msgs[0].2, "an edgecore intent is not retained");
    assert_eq!(
        latest(&obs)["$hw/events/device/default/blinky-01/twin/update"],
        pinned(1)
    );
    // A tag reference is never published (the controller pins first).
    let err = sink
        .publish_intent(&key("blinky-01"), "registry.local:5000/fw/blinky:1.0")
        .await
        .unwrap_err();
    assert_eq!(err.code(), mqtt_schema::ErrorCode::Internal);
    cancel.cancel();
    task.await.unwrap();
    assert!(!sink.is_connected());
}

#[tokio::test]
async fn an_outage_ends_with_every_pending_intent_republished() {
    init();
    let mqtt = Mosquitto::start().unwrap();
    let proxy = FaultProxy::start(mqtt.addr()).unwrap();
    let obs = Observer::start(mqtt.port(), "observer-2", &[FILTER]).await;
    let cancel = CancellationToken::new();
    let cfg = config(proxy.port()).mqtt.unwrap();
    let (sink, task) = MqttSink::start(&cfg, Mode::Edgecore, HOUR, None, cancel.clone()).unwrap();
    connected(&sink, true).await;
    sink.publish_intent(&key("a"), &pinned(1)).await.unwrap();
    sink.publish_intent(&key("d"), &pinned(5)).await.unwrap();
    wait_until(|| obs.messages().len() == 2, || "first intents".into()).await;

    proxy.set(Fault::Refuse);
    connected(&sink, false).await;
    // During the outage: a newer intent for `a`, a first one for `b` and `c`. The sink keeps them
    // and says they are not delivered yet (the controller retries; the sink republishes anyway).
    for (k, n) in [("a", 2), ("b", 3), ("c", 4)] {
        let err = sink.publish_intent(&key(k), &pinned(n)).await.unwrap_err();
        assert_eq!(err.code(), mqtt_schema::ErrorCode::BrokerUnreachable);
    }
    let before = obs.messages().len();
    assert_eq!(before, 2, "nothing reached the broker during the outage");

    proxy.set(Fault::Pass);
    connected(&sink, true).await;
    let want = BTreeMap::from([
        (
            "$hw/events/device/default/a/twin/update".to_owned(),
            pinned(2),
        ),
        (
            "$hw/events/device/default/b/twin/update".to_owned(),
            pinned(3),
        ),
        (
            "$hw/events/device/default/c/twin/update".to_owned(),
            pinned(4),
        ),
        (
            "$hw/events/device/default/d/twin/update".to_owned(),
            pinned(5),
        ),
    ]);
    wait_until(
        || latest(&obs) == want,
        || format!("after the outage the broker saw {:?}", latest(&obs)),
    )
    .await;
    // The older intent of `a` never came back after the newer one.
    let a: Vec<String> = obs
        .messages()
        .iter()
        .filter(|(t, _, _)| t.ends_with("/default/a/twin/update"))
        .map(|(_, p, _)| {
            mqtt_schema::unmarshal_device_twin_update(p)
                .unwrap()
                .twin("firmware")
                .unwrap()
                .expected_value()
                .to_owned()
        })
        .collect();
    assert_eq!(a[0], pinned(1));
    assert!(
        a[1..].iter().all(|r| *r == pinned(2)),
        "after the outage only the newest: {a:?}"
    );
    // `d` was delivered before the outage and not touched since: only the republish at the
    // CONNACK can have sent it again (rumqttc itself keeps nothing across a clean session).
    wait_until(
        || count(&obs, "/default/d/twin/update") >= 2,
        || "d not republished after the reconnect".into(),
    )
    .await;
    cancel.cancel();
    task.await.unwrap();
}

fn count(obs: &Observer, suffix: &str) -> usize {
    obs.messages()
        .iter()
        .filter(|(t, _, _)| t.ends_with(suffix))
        .count()
}

#[tokio::test]
async fn the_periodic_resync_republishes_known_intents() {
    init();
    let mqtt = Mosquitto::start().unwrap();
    let obs = Observer::start(mqtt.port(), "observer-3", &[FILTER]).await;
    let cancel = CancellationToken::new();
    let cfg = config(mqtt.port()).mqtt.unwrap();
    let resync = Duration::from_millis(200);
    let (sink, task) = MqttSink::start(&cfg, Mode::Edgecore, resync, None, cancel.clone()).unwrap();
    connected(&sink, true).await;
    sink.publish_intent(&key("e"), &pinned(6)).await.unwrap();
    wait_until(
        || count(&obs, "/default/e/twin/update") >= 3,
        || "intent not republished by the resync".into(),
    )
    .await;
    assert!(latest(&obs).values().all(|r| *r == pinned(6)));
    cancel.cancel();
    task.await.unwrap();
}
