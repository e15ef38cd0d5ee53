//! The controller's signature policy (`[signatures]`) end to end: FakeApi, a real docker-registry holding the
//! artifacts and their cosign `.sig` signatures (written by `twinflash_artifact::signature::write`), a real
//! mosquitto, the real resolver and verifier, key files read by `Policies::load`. Under `require` only what a
//! trusted key signed is published (its Event names the signer); an unsigned artifact and one signed by another
//! key are recorded as `Unsigned` / `SignatureInvalid` with one Warning Event each and nothing published, until a
//! trusted signature appears; a namespace override turns the policy off there; `warn` publishes with the warning;
//! in mode `dmi` only a signed tag gets its pin.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Run, client};
use tokio_util::sync::CancellationToken;
use twinflash_artifact::signature::write::{SignFormat, sign};
use twinflash_artifact::signature::{Mode as SignatureMode, SigningKey};
use twinflash_artifact::{Credentials, TlsOptions};
use twinflash_cloud::config::{Mode, SignatureOverride, SignaturesConfig, StatusLocation};
use twinflash_cloud::controller::{self, Context};
use twinflash_cloud::dmi::{NoMqtt, PINNED_KEY};
use twinflash_cloud::mqtt::MqttSink;
use twinflash_cloud::resolver::{PinnedCache, RegistryResolver};
use twinflash_cloud::seams::IntentSink;
use twinflash_cloud::signatures::{Policies, RegistrySignatures, SignatureGate};
use twinflash_harness::{FakeApi, Mosquitto, Registry};
use twinflash_testkit::{Observer, image, init, push, wait_until};

const DEV: (&str, &str) = ("devices.kubeedge.io", "v1beta1");
const RESYNC: Duration = Duration::from_millis(300);
/// Shorter than a few resyncs, so a signature pushed during the test is seen.
const TTL: Duration = Duration::from_millis(200);
const UPDATE: &str = "$hw/events/device/+/+/twin/update";

fn key() -> SigningKey {
    SigningKey::from_pkcs8_der(&SigningKey::generate_p256_pkcs8().unwrap()).unwrap()
}

fn device(ns: &str, name: &str, firmware: &str) -> Value {
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"properties": [
            {"name": "firmware", "desired": {"value": firmware, "metadata": {"type": "string"}}},
            {"name": "firmware-state"},
        ]},
    })
}

/// FakeApi, a registry, the trusted key `release` (its public key in `release.pub`) and, in the modes that publish
/// over MQTT, a mosquitto with an observer of the twin updates.
struct World {
    api: FakeApi,
    dir: tempfile::TempDir,
    registry: Registry,
    mqtt: Option<(Mosquitto, Observer)>,
    release: SigningKey,
    release_pub: PathBuf,
}

impl World {
    async fn new(with_mqtt: bool) -> World {
        init();
        let dir = tempfile::tempdir().unwrap();
        let release = key();
        let release_pub = dir.path().join("release.pub");
        std::fs::write(&release_pub, release.public().to_pem()).unwrap();
        let mqtt = if with_mqtt {
            let m = Mosquitto::start().unwrap();
            let obs = Observer::start(m.port(), "observer", &[UPDATE]).await;
            Some((m, obs))
        } else {
            None
        };
        World {
            api: FakeApi::start().unwrap(),
            dir,
            registry: Registry::start().unwrap(),
            mqtt,
            release,
            release_pub,
        }
    }

    /// `host/<repo_tag>` in the registry.
    fn tag(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.registry.host())
    }

    /// Pushes an artifact (content from `seed`) as `repo_tag`; its digest-pinned reference.
    async fn artifact(&self, repo_tag: &str, seed: u8) -> String {
        let bytes = image(seed, 1024);
        push(
            &self.registry,
            self.dir.path(),
            repo_tag,
            &bytes,
            "1.0.0",
            "sim",
        )
        .await
    }

    /// Signs `reference` with `k` (cosign's `.sig` tag).
    async fn sign(&self, reference: &str, k: &SigningKey) {
        let tls = TlsOptions {
            plain_http: vec![self.registry.host()],
            ..TlsOptions::default()
        };
        sign(
            &tls,
            &Credentials::default(),
            reference,
            k,
            SignFormat::Cosign,
        )
        .await
        .unwrap();
    }

    fn put(&self, ns: &str, name: &str, firmware: &str) {
        self.api.put(device(ns, name, firmware)).unwrap();
    }

    /// The controller (every namespace, delivery `mode`) with the default policy `policy` trusting `release`,
    /// the real resolver and verifier, and the MQTT sink where there is a broker.
    async fn start(
        &self,
        policy: SignatureMode,
        overrides: Vec<SignatureOverride>,
        mode: Mode,
    ) -> Run {
        let cfg = SignaturesConfig {
            mode: policy,
            keys: vec![self.release_pub.clone()],
            overrides,
        };
        let policies = Policies::load(&cfg).unwrap();
        let host = self.registry.host();
        let checker = RegistrySignatures::with_plain_http(vec![host.clone()]).unwrap();
        let gate = SignatureGate::new(policies, Arc::new(checker)).with_ttl(TTL);
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        // Mode dmi has no MQTT client: KubeEdge delivers the Device (and the pin) to the mapper.
        let sink: Arc<dyn IntentSink> = if let Some((mqtt, _)) = &self.mqtt {
            let settings = support::mqtt_settings(mqtt.port());
            let (sink, mqtt_task) =
                MqttSink::start(&settings, mode, RESYNC, None, cancel.clone()).unwrap();
            wait_until(|| sink.is_connected(), || "sink connected".into()).await;
            tasks.push(mqtt_task);
            Arc::new(sink)
        } else {
            Arc::new(NoMqtt)
        };
        let resolver = PinnedCache::new(RegistryResolver::with_plain_http(vec![host]));
        let mut ctx = Context::new(
            client(&self.api, self.dir.path()).await,
            sink,
            Arc::new(resolver),
            StatusLocation::DeviceStatus,
            RESYNC,
            Some("test-pod".into()),
        );
        ctx.mode = mode;
        ctx.signatures = Some(Arc::new(gate));
        let ctx = Arc::new(ctx);
        let c = ctx.clone();
        tasks.push(tokio::spawn(async move {
            controller::run(c, None, None).await;
        }));
        Run { ctx, cancel, tasks }
    }

    fn annotations(&self, ns: &str, name: &str) -> Value {
        self.api.get(DEV.0, DEV.1, "devices", ns, name).unwrap()["metadata"]["annotations"].clone()
    }

    /// The Events regarding Device `ns/name`.
    fn events(&self, ns: &str, name: &str) -> Vec<Value> {
        self.api
            .list("events.k8s.io", "v1", "events", Some(ns))
            .into_iter()
            .filter(|e| e["regarding"]["name"] == name)
            .collect()
    }

    /// Waits for a first Event on each of `devices`.
    async fn wait_events(&self, devices: &[(&str, &str)]) {
        wait_until(
            || devices.iter().all(|(ns, n)| !self.events(ns, n).is_empty()),
            || format!("an Event for each of {devices:?}"),
        )
        .await;
    }

    /// The intents published for Device `ns/name` (the `expected` firmware of its twin updates, in order, each
    /// once: with no cloudcore to show edgecore holds it, the sink sends an intent again at every resync).
    fn published(&self, ns: &str, name: &str) -> Vec<String> {
        let Some((_, obs)) = &self.mqtt else {
            return Vec::new();
        };
        let topic = format!("$hw/events/device/{ns}/{name}/twin/update");
        let mut out: Vec<String> = obs
            .messages()
            .into_iter()
            .filter(|(t, _, _)| *t == topic)
            .map(|(_, payload, _)| {
                let upd = mqtt_schema::unmarshal_device_twin_update(&payload).unwrap();
                upd.twin("firmware").unwrap().expected_value().to_owned()
            })
            .collect();
        out.dedup();
        out
    }
}

fn note(ev: &Value) -> String {
    ev["note"].as_str().unwrap_or_default().to_owned()
}

/// `(type, reason)` of an Event.
fn kind(ev: &Value) -> (&str, &str) {
    (
        ev["type"].as_str().unwrap_or_default(),
        ev["reason"].as_str().unwrap_or_default(),
    )
}

#[tokio::test]
async fn require_publishes_only_what_a_trusted_key_signed() {
    let w = World::new(true).await;
    let rogue = key();
    let good = w.artifact("fw/good:1", 0).await;
    let plain = w.artifact("fw/plain:1", 1).await;
    let wrong = w.artifact("fw/rogue:1", 2).await;
    w.sign(&good, &w.release).await;
    w.sign(&wrong, &rogue).await;
    // Tags in the Devices: the controller pins them, then checks the pinned reference.
    for (ns, name, tag) in [
        ("plant", "good", "fw/good:1"),
        ("plant", "plain", "fw/plain:1"),
        ("plant", "rogue", "fw/rogue:1"),
        ("lab", "plain", "fw/plain:1"),
    ] {
        w.put(ns, name, &w.tag(tag));
    }
    let lab_off = SignatureOverride {
        namespace: "lab".into(),
        device: None,
        mode: SignatureMode::Off,
        keys: Vec::new(),
    };
    let run = w
        .start(SignatureMode::Require, vec![lab_off], Mode::Edgecore)
        .await;
    w.wait_events(&[
        ("plant", "good"),
        ("plant", "plain"),
        ("plant", "rogue"),
        ("lab", "plain"),
    ])
    .await;

    // Signed by a trusted key: published, the Event names the signer and its key.
    assert_eq!(w.published("plant", "good"), vec![good.clone()]);
    let ev = &w.events("plant", "good")[0];
    assert_eq!(kind(ev), ("Normal", "IntentPublished"));
    let signer = format!("signed by release ({})", w.release.public().key_id());
    assert!(note(ev).contains(&signer), "{ev}");
    // Unsigned: nothing published, recorded as Unsigned (code unsigned), one Warning Event with the verdict.
    let a = w.annotations("plant", "plain");
    assert_eq!(a["twinflash.io/reason"], "Unsigned", "{a}");
    assert_eq!(
        a["twinflash.io/pinned"], "",
        "nothing sent to the edge: {a}"
    );
    let ev = &w.events("plant", "plain")[0];
    assert_eq!(kind(ev), ("Warning", "Unsigned"));
    assert!(note(ev).contains("no signature found"), "{ev}");
    assert!(note(ev).ends_with("[unsigned]"), "{ev}");
    assert!(note(ev).contains(plain.as_str()), "{ev}");
    // Signed by a key the policy does not trust: SignatureInvalid.
    let a = w.annotations("plant", "rogue");
    assert_eq!(a["twinflash.io/reason"], "SignatureInvalid", "{a}");
    let ev = &w.events("plant", "rogue")[0];
    assert_eq!(kind(ev), ("Warning", "SignatureInvalid"));
    assert!(note(ev).contains("no signature verifies"), "{ev}");
    assert!(note(ev).ends_with("[signature-invalid]"), "{ev}");
    // The namespace override turns the policy off: the same unsigned artifact is published in `lab`.
    assert_eq!(w.published("lab", "plain"), vec![plain.clone()]);
    let ev = &w.events("lab", "plain")[0];
    assert_eq!(kind(ev), ("Normal", "IntentPublished"));
    assert!(
        !note(ev).contains("signed by"),
        "policy off, nothing checked: {ev}"
    );

    // Resyncs re-check the rejected ones (after the verdict TTL) without a new Event or a publish each time.
    let before = run.ctx.metrics.reconciles();
    wait_until(
        || run.ctx.metrics.reconciles() >= before + 12,
        || "a few resyncs".into(),
    )
    .await;
    assert_eq!(w.events("plant", "plain").len(), 1, "no Event storm");
    assert_eq!(w.events("plant", "rogue").len(), 1, "no Event storm");
    assert!(w.published("plant", "plain").is_empty());
    assert!(w.published("plant", "rogue").is_empty());

    // A trusted signature appears, the Device unchanged: the next resync publishes it, naming the signer.
    w.sign(&plain, &w.release).await;
    wait_until(
        || !w.published("plant", "plain").is_empty() && w.events("plant", "plain").len() == 2,
        || "published once signed, with its Event".into(),
    )
    .await;
    assert_eq!(w.published("plant", "plain"), vec![plain.clone()]);
    assert_eq!(
        w.annotations("plant", "plain")["twinflash.io/reason"],
        "IntentPublished"
    );
    let evs = w.events("plant", "plain");
    let last = evs
        .iter()
        .find(|e| e["reason"] == "IntentPublished")
        .unwrap();
    assert!(note(last).contains(&signer), "{last}");
    assert!(
        w.published("plant", "rogue").is_empty(),
        "{wrong} stays unpublished"
    );
    run.stop().await;
}

#[tokio::test]
async fn warn_publishes_an_unsigned_artifact_with_the_warning() {
    let w = World::new(true).await;
    let plain = w.artifact("fw/plain:2", 7).await;
    w.put("plant", "plain", &plain);
    let run = w
        .start(SignatureMode::Warn, Vec::new(), Mode::Edgecore)
        .await;
    w.wait_events(&[("plant", "plain")]).await;
    assert_eq!(w.published("plant", "plain"), vec![plain.clone()]);
    let a = w.annotations("plant", "plain");
    assert_eq!(a["twinflash.io/reason"], "IntentPublished", "{a}");
    let ev = &w.events("plant", "plain")[0];
    assert_eq!(kind(ev), ("Normal", "IntentPublished"));
    let n = note(ev);
    assert!(
        n.contains("warning") && n.contains("default (warn)"),
        "{ev}"
    );
    assert!(
        n.contains("no signature found") && n.ends_with("[unsigned]"),
        "{ev}"
    );
    run.stop().await;
}

#[tokio::test]
async fn in_mode_dmi_only_a_signed_tag_gets_its_pin() {
    let w = World::new(false).await;
    let good = w.artifact("fw/good:3", 1).await;
    w.artifact("fw/plain:3", 2).await;
    w.sign(&good, &w.release).await;
    w.put("plant", "good", &w.tag("fw/good:3"));
    w.put("plant", "plain", &w.tag("fw/plain:3"));
    let run = w.start(SignatureMode::Require, Vec::new(), Mode::Dmi).await;
    w.wait_events(&[("plant", "good"), ("plant", "plain")])
        .await;
    let firmware = |name: &str| {
        w.api.get(DEV.0, DEV.1, "devices", "plant", name).unwrap()["spec"]["properties"][0]["desired"]
            .clone()
    };
    // The signed tag is pinned where the mapper reads it; the unsigned one is not, so the agent never flashes it.
    assert_eq!(firmware("good")["metadata"][PINNED_KEY], good.as_str());
    assert!(
        firmware("plain")["metadata"].get(PINNED_KEY).is_none(),
        "{}",
        firmware("plain")
    );
    assert_eq!(
        w.annotations("plant", "plain")["twinflash.io/reason"],
        "Unsigned"
    );
    let ev = &w.events("plant", "good")[0];
    assert!(note(ev).contains("signed by release"), "{ev}");
    run.stop().await;
}
