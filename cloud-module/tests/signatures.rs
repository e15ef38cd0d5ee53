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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::client;
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

/// Writes `k`'s public key as `<dir>/<name>.pub` (the signer's name is the file stem).
fn key_file(dir: &Path, name: &str, k: &SigningKey) -> PathBuf {
    let p = dir.join(format!("{name}.pub"));
    std::fs::write(&p, k.public().to_pem()).unwrap();
    p
}

async fn signed(registry: &Registry, reference: &str, k: &SigningKey) {
    let tls = TlsOptions {
        plain_http: vec![registry.host()],
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

/// The controller (edgecore mode, every namespace) with the real resolver, verifier and MQTT sink.
struct Run {
    ctx: Arc<Context>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Run {
    async fn start(
        api: &FakeApi,
        dir: &Path,
        mqtt: Option<&Mosquitto>,
        registry: &Registry,
        cfg: &SignaturesConfig,
        mode: Mode,
    ) -> Run {
        let policies = Policies::load(cfg).unwrap();
        let checker = RegistrySignatures::with_plain_http(vec![registry.host()]).unwrap();
        let gate = SignatureGate::new(policies, Arc::new(checker)).with_ttl(TTL);
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        // Mode dmi has no MQTT client: KubeEdge delivers the Device (and the pin) to the mapper.
        let sink: Arc<dyn IntentSink> = if let Some(mqtt) = mqtt {
            let settings = support::mqtt_settings(mqtt.port());
            let (sink, mqtt_task) =
                MqttSink::start(&settings, mode, RESYNC, None, cancel.clone()).unwrap();
            wait_until(|| sink.is_connected(), || "sink connected".into()).await;
            tasks.push(mqtt_task);
            Arc::new(sink)
        } else {
            Arc::new(NoMqtt)
        };
        let resolver = PinnedCache::new(RegistryResolver::with_plain_http(vec![registry.host()]));
        let mut ctx = Context::new(
            client(api, dir).await,
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

    async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

fn annotations(api: &FakeApi, ns: &str, name: &str) -> Value {
    api.get(DEV.0, DEV.1, "devices", ns, name).unwrap()["metadata"]["annotations"].clone()
}

/// The Events regarding Device `ns/name`.
fn events(api: &FakeApi, ns: &str, name: &str) -> Vec<Value> {
    api.list("events.k8s.io", "v1", "events", Some(ns))
        .into_iter()
        .filter(|e| e["regarding"]["name"] == name)
        .collect()
}

/// The intents published for Device `ns/name` (the `expected` firmware of its twin updates, in order, each once:
/// with no cloudcore to show edgecore holds it, the sink sends an intent again at every resync).
fn published(obs: &Observer, ns: &str, name: &str) -> Vec<String> {
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

fn note(ev: &Value) -> String {
    ev["note"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn require_publishes_only_what_a_trusted_key_signed() {
    init();
    let api = FakeApi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let (release, rogue) = (key(), key());
    let release_pub = key_file(dir.path(), "release", &release);
    let mut pinned = Vec::new();
    for (n, repo) in ["fw/good:1", "fw/plain:1", "fw/rogue:1"].iter().enumerate() {
        let seed = u8::try_from(n).unwrap();
        pinned.push(
            push(
                &registry,
                dir.path(),
                repo,
                &image(seed, 1024),
                "1.0.0",
                "sim",
            )
            .await,
        );
    }
    let (good, plain, wrong) = (&pinned[0], &pinned[1], &pinned[2]);
    signed(&registry, &format!("{host}/fw/good:1"), &release).await;
    signed(&registry, &format!("{host}/fw/rogue:1"), &rogue).await;
    // Tags in the Devices: the controller pins them, then checks the pinned reference.
    for (ns, name, tag) in [
        ("plant", "good", "fw/good:1"),
        ("plant", "plain", "fw/plain:1"),
        ("plant", "rogue", "fw/rogue:1"),
        ("lab", "plain", "fw/plain:1"),
    ] {
        api.put(device(ns, name, &format!("{host}/{tag}"))).unwrap();
    }
    let obs = Observer::start(mqtt.port(), "observer", &[UPDATE]).await;
    let cfg = SignaturesConfig {
        mode: SignatureMode::Require,
        keys: vec![release_pub],
        overrides: vec![SignatureOverride {
            namespace: "lab".into(),
            device: None,
            mode: SignatureMode::Off,
            keys: Vec::new(),
        }],
    };
    let run = Run::start(
        &api,
        dir.path(),
        Some(&mqtt),
        &registry,
        &cfg,
        Mode::Edgecore,
    )
    .await;

    wait_until(
        || {
            !events(&api, "plant", "good").is_empty()
                && !events(&api, "plant", "plain").is_empty()
                && !events(&api, "plant", "rogue").is_empty()
                && !events(&api, "lab", "plain").is_empty()
        },
        || "an Event per Device".into(),
    )
    .await;
    // Signed by a trusted key: published, the Event names the signer and its key.
    assert_eq!(published(&obs, "plant", "good"), vec![good.clone()]);
    let ev = &events(&api, "plant", "good")[0];
    assert_eq!(
        (ev["type"].as_str(), ev["reason"].as_str()),
        (Some("Normal"), Some("IntentPublished"))
    );
    let signer = format!("signed by release ({})", release.public().key_id());
    assert!(note(ev).contains(&signer), "{ev}");
    // Unsigned: nothing published, recorded as Unsigned (code unsigned), one Warning Event with the verdict.
    let a = annotations(&api, "plant", "plain");
    assert_eq!(a["twinflash.io/reason"], "Unsigned", "{a}");
    assert_eq!(
        a["twinflash.io/pinned"], "",
        "nothing sent to the edge: {a}"
    );
    let ev = &events(&api, "plant", "plain")[0];
    assert_eq!(
        (ev["type"].as_str(), ev["reason"].as_str()),
        (Some("Warning"), Some("Unsigned"))
    );
    assert!(note(ev).contains("no signature found"), "{ev}");
    assert!(note(ev).ends_with("[unsigned]"), "{ev}");
    assert!(note(ev).contains(plain.as_str()), "{ev}");
    // Signed by a key the policy does not trust: SignatureInvalid.
    let a = annotations(&api, "plant", "rogue");
    assert_eq!(a["twinflash.io/reason"], "SignatureInvalid", "{a}");
    let ev = &events(&api, "plant", "rogue")[0];
    assert_eq!(
        (ev["type"].as_str(), ev["reason"].as_str()),
        (Some("Warning"), Some("SignatureInvalid"))
    );
    assert!(note(ev).contains("no signature verifies"), "{ev}");
    assert!(note(ev).ends_with("[signature-invalid]"), "{ev}");
    // The namespace override turns the policy off: the same unsigned artifact is published in `lab`.
    assert_eq!(published(&obs, "lab", "plain"), vec![plain.clone()]);
    let ev = &events(&api, "lab", "plain")[0];
    assert_eq!(ev["reason"], "IntentPublished");
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
    assert_eq!(events(&api, "plant", "plain").len(), 1, "no Event storm");
    assert_eq!(events(&api, "plant", "rogue").len(), 1, "no Event storm");
    assert!(published(&obs, "plant", "plain").is_empty());
    assert!(published(&obs, "plant", "rogue").is_empty());

    // A trusted signature appears, the Device unchanged: the next resync publishes it, naming the signer.
    signed(&registry, &format!("{host}/fw/plain:1"), &release).await;
    wait_until(
        || !published(&obs, "plant", "plain").is_empty(),
        || "published once signed".into(),
    )
    .await;
    assert_eq!(published(&obs, "plant", "plain"), vec![plain.clone()]);
    assert_eq!(
        annotations(&api, "plant", "plain")["twinflash.io/reason"],
        "IntentPublished"
    );
    wait_until(
        || events(&api, "plant", "plain").len() == 2,
        || "the publication's Event".into(),
    )
    .await;
    let evs = events(&api, "plant", "plain");
    let last = evs
        .iter()
        .find(|e| e["reason"] == "IntentPublished")
        .unwrap();
    assert!(note(last).contains(&signer), "{last}");
    assert!(
        published(&obs, "plant", "rogue").is_empty(),
        "{wrong} stays unpublished"
    );
    run.stop().await;
}

#[tokio::test]
async fn warn_publishes_an_unsigned_artifact_with_the_warning() {
    init();
    let api = FakeApi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let release = key();
    let plain = push(
        &registry,
        dir.path(),
        "fw/plain:2",
        &image(7, 1024),
        "2.0.0",
        "sim",
    )
    .await;
    api.put(device("plant", "plain", &plain)).unwrap();
    let obs = Observer::start(mqtt.port(), "observer", &[UPDATE]).await;
    let cfg = SignaturesConfig {
        mode: SignatureMode::Warn,
        keys: vec![key_file(dir.path(), "release", &release)],
        overrides: Vec::new(),
    };
    let run = Run::start(
        &api,
        dir.path(),
        Some(&mqtt),
        &registry,
        &cfg,
        Mode::Edgecore,
    )
    .await;
    wait_until(
        || !events(&api, "plant", "plain").is_empty(),
        || "the Event".into(),
    )
    .await;
    assert_eq!(published(&obs, "plant", "plain"), vec![plain.clone()]);
    let a = annotations(&api, "plant", "plain");
    assert_eq!(a["twinflash.io/reason"], "IntentPublished", "{a}");
    let ev = &events(&api, "plant", "plain")[0];
    assert_eq!(ev["reason"], "IntentPublished");
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
    init();
    let api = FakeApi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let release = key();
    let good = push(
        &registry,
        dir.path(),
        "fw/good:3",
        &image(1, 1024),
        "3.0.0",
        "sim",
    )
    .await;
    push(
        &registry,
        dir.path(),
        "fw/plain:3",
        &image(2, 1024),
        "3.0.0",
        "sim",
    )
    .await;
    signed(&registry, &good, &release).await;
    api.put(device("plant", "good", &format!("{host}/fw/good:3")))
        .unwrap();
    api.put(device("plant", "plain", &format!("{host}/fw/plain:3")))
        .unwrap();
    let cfg = SignaturesConfig {
        mode: SignatureMode::Require,
        keys: vec![key_file(dir.path(), "release", &release)],
        overrides: Vec::new(),
    };
    let run = Run::start(&api, dir.path(), None, &registry, &cfg, Mode::Dmi).await;
    wait_until(
        || !events(&api, "plant", "good").is_empty() && !events(&api, "plant", "plain").is_empty(),
        || "an Event per Device".into(),
    )
    .await;
    let firmware = |name: &str| {
        api.get(DEV.0, DEV.1, "devices", "plant", name).unwrap()["spec"]["properties"][0]["desired"]
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
        annotations(&api, "plant", "plain")["twinflash.io/reason"],
        "Unsigned"
    );
    let ev = &events(&api, "plant", "good")[0];
    assert!(note(ev).contains("signed by release"), "{ev}");
    run.stop().await;
}
