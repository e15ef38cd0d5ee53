//! The agent's signature policy end to end (issue #15): the real binary with `[signatures]`, a real mosquitto, real
//! registries (Debian's docker-registry, distribution 2.8.2: no referrers API), signatures written by
//! `twinflash_artifact::signature::write`, simulated devices. Judged by what the cloud stand-in (MQTT) or edgecore's
//! stand-in (DMI) stores and by the simulated device's flash: a refused artifact leaves the device's content and
//! counters as they were, and the installed firmware twins unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Agent, AgentSpec, Env, SimDevice, WAIT, image, init, push};
use twinflash_artifact::signature::SigningKey;
use twinflash_artifact::signature::write::{SignFormat, Signed, sign};
use twinflash_artifact::{Credentials, TlsOptions};
use twinflash_harness::Registry;
use twinflash_testkit::{DmiEdgecore, device_model};

/// A signing key and its public half as a PEM file `<name>.pub` (the signer's name in logs is `name`).
struct Key {
    signing: SigningKey,
    public: PathBuf,
}

fn key(dir: &Path, name: &str) -> Key {
    let signing = SigningKey::from_pkcs8_der(&SigningKey::generate_p256_pkcs8().unwrap()).unwrap();
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&public, signing.public().to_pem()).unwrap();
    Key { signing, public }
}

/// The `[signatures]` section trusting `keys`.
fn policy(mode: &str, keys: &[&Key]) -> String {
    let files: Vec<String> = keys
        .iter()
        .map(|k| k.public.display().to_string())
        .collect();
    format!("[signatures]\nmode = \"{mode}\"\nkeys = {files:?}\n")
}

/// Signs `reference` (on the registry `host`) with `key`.
async fn signed(host: &str, reference: &str, key: &Key, format: SignFormat) -> Signed {
    let tls = TlsOptions {
        plain_http: vec![host.to_owned()],
        ..TlsOptions::default()
    };
    sign(
        &tls,
        &Credentials::default(),
        reference,
        &key.signing,
        format,
    )
    .await
    .unwrap()
}

fn digest(reference: &str) -> &str {
    reference.rsplit_once('@').unwrap().1
}

fn hex(reference: &str) -> &str {
    digest(reference).trim_start_matches("sha256:")
}

/// Runs skopeo against the plain-HTTP loopback registries; its stdout.
fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The tags of `repo` on `host`.
fn tags(host: &str, repo: &str) -> Vec<String> {
    let out = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{host}/{repo}"),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    v["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

/// `twinflash_edge_signature_checks_total{result}` as the agent's `/metrics` shows it (0 when absent).
fn checks(port: u16, result: &str) -> u64 {
    let out = Command::new("curl")
        .args(["-sSf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = format!("twinflash_edge_signature_checks_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// What a device holds and has done: unchanged by a refused artifact.
fn snapshot(dev: &SimDevice) -> (Vec<u8>, serde_json::Value) {
    (dev.flash(), dev.counters())
}

/// An MQTT scene whose agent applies `section`, with `v1` (signed by `trusted`) installed on device 0.
struct Installed {
    env: Env,
    v1: String,
}

impl Installed {
    async fn start(section: String, trusted: &Key) -> Installed {
        let env = Env::start(1, |s| AgentSpec {
            extra_sections: section,
            ..s
        })
        .await;
        let v1 = env.push("blinky:1.0.0", &image(1, 12_000), "1.0.0").await;
        signed(&env.registry.host(), &v1, trusted, SignFormat::Cosign).await;
        env.intent(0, &v1).await;
        env.wait(0, "firmware-state", "installed").await;
        Installed { env, v1 }
    }

    /// Offers `reference` and expects `rejected:<code>` with nothing flashed and the installed twins still v1's.
    async fn refuses(&self, reference: &str, code: &str) {
        let env = &self.env;
        let dev = env.device(0);
        let before = snapshot(&dev);
        env.intent(0, reference).await;
        env.wait(0, "firmware-state", &format!("rejected:{code}"))
            .await;
        assert_eq!(snapshot(&dev), before, "nothing flashed");
        assert_eq!(dev.started(reference), 0);
        assert_eq!(env.actual(0, "firmware").as_deref(), Some(self.v1.as_str()));
        assert_eq!(env.actual(0, "firmware-version").as_deref(), Some("1.0.0"));
        assert!(dev.holds(&image(1, 12_000)), "v1 still on the device");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_artifact_installs_under_require_and_its_signer_is_logged() {
    let keys = tempfile::tempdir().unwrap();
    let release = key(keys.path(), "release");
    let port = twinflash_harness::free_port();
    let env = Env::start(1, |s| AgentSpec {
        extra_sections: format!(
            "{}[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            policy("require", &[&release])
        ),
        ..s
    })
    .await;
    let fw = image(7, 20_000);
    let reference = env.push("blinky:2.0.0", &fw, "2.0.0").await;
    let s = signed(
        &env.registry.host(),
        &reference,
        &release,
        SignFormat::Cosign,
    )
    .await;
    assert_eq!(s.location, format!("tag sha256-{}.sig", hex(&reference)));
    env.intent(0, &reference).await;
    env.wait(0, "firmware-state", "installed").await;
    assert_eq!(
        env.actual(0, "firmware").as_deref(),
        Some(reference.as_str())
    );
    let dev = env.device(0);
    assert!(dev.holds(&fw));
    assert_eq!(dev.completed(&reference), 1);
    let log = env.agent.log();
    let flashed = log
        .lines()
        .find(|l| l.contains("flashed and verified"))
        .unwrap_or_else(|| panic!("no flash logged:\n{log}"));
    assert!(
        flashed.contains("signed by release") && flashed.contains(&s.key_id),
        "{flashed}"
    );
    assert_eq!(checks(port, "verified"), 1);
    assert_eq!(checks(port, "unsigned"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_artifact_is_rejected_under_require_and_not_retried_until_the_intent_changes() {
    let keys = tempfile::tempdir().unwrap();
    let release = key(keys.path(), "release");
    let scene = Installed::start(policy("require", &[&release]), &release).await;
    let env = &scene.env;
    let v2 = env.push("blinky:1.1.0", &image(2, 12_000), "1.1.0").await;
    scene.refuses(&v2, "unsigned").await;
    assert!(env.agent.log().contains("no signature found"));

    // Signed afterwards, the same intent again (edgecore repeats deltas): a rejection stays until the intent
    // changes. The next intent, handled after that one, installs: the repeated delta was seen and did nothing.
    signed(&env.registry.host(), &v2, &release, SignFormat::Cosign).await;
    env.intent(0, &v2).await;
    let fw3 = image(3, 12_000);
    let v3 = env.push("blinky:1.2.0", &fw3, "1.2.0").await;
    signed(&env.registry.host(), &v3, &release, SignFormat::Cosign).await;
    env.intent(0, &v3).await;
    env.wait(0, "firmware", &v3).await;
    let dev = env.device(0);
    assert_eq!(dev.started(&v2), 0, "{:?}", dev.counters());
    assert!(dev.holds(&fw3));
    assert_eq!(
        env.actual(0, "firmware-state").as_deref(),
        Some("installed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_by_an_untrusted_key_is_rejected_as_invalid() {
    let keys = tempfile::tempdir().unwrap();
    let release = key(keys.path(), "release");
    let stranger = key(keys.path(), "stranger");
    let scene = Installed::start(policy("require", &[&release]), &release).await;
    let env = &scene.env;
    let v2 = env.push("blinky:1.1.0", &image(2, 12_000), "1.1.0").await;
    signed(&env.registry.host(), &v2, &stranger, SignFormat::Cosign).await;
    scene.refuses(&v2, "signature-invalid").await;
    assert!(env.agent.log().contains("does not verify"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_of_another_digest_is_rejected_as_invalid() {
    let keys = tempfile::tempdir().unwrap();
    let release = key(keys.path(), "release");
    let scene = Installed::start(policy("require", &[&release]), &release).await;
    let env = &scene.env;
    let host = env.registry.host();
    // v1's good `.sig` manifest, copied byte for byte to v2's signature tag in the same repository.
    let v2 = env.push("blinky:1.1.0", &image(2, 12_000), "1.1.0").await;
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--preserve-digests",
        &format!("docker://{host}/fw/blinky:sha256-{}.sig", hex(&scene.v1)),
        &format!("docker://{host}/fw/blinky:sha256-{}.sig", hex(&v2)),
    ]);
    scene.refuses(&v2, "signature-invalid").await;
    assert!(env.agent.log().contains("another digest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_only_a_mirror_serves_installs() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let release = key(keys.path(), "release");
    let mirror = Registry::start().unwrap();
    let m = mirror.host();
    let env = Env::start(1, |mut s| {
        s.registry_hosts.push(m.clone());
        AgentSpec {
            registry_extra: format!("[[registry.mirrors]]\nkind = \"registry\"\nhost = \"{m}\"\n"),
            extra_sections: policy("require", &[&release]),
            ..s
        }
    })
    .await;
    let fw = image(5, 12_000);
    let reference = env.push("blinky:1.0.0", &fw, "1.0.0").await;
    // The same artifact on the mirror; only the mirror holds a signature.
    let on_mirror = push(
        &mirror,
        env.dir.path(),
        "fw/blinky:1.0.0",
        &fw,
        "1.0.0",
        support::CHIP,
    )
    .await;
    assert_eq!(digest(&on_mirror), digest(&reference));
    signed(&m, &on_mirror, &release, SignFormat::Cosign).await;
    assert!(
        !tags(&env.registry.host(), "fw/blinky")
            .iter()
            .any(|t| t.ends_with(".sig"))
    );
    env.intent(0, &reference).await;
    env.wait(0, "firmware-state", "installed").await;
    assert!(env.device(0).holds(&fw));
    let log = env.agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("flashed and verified")
                && l.contains(&format!("at {m} tag sha256-"))),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oci_layout_with_the_signature_installs_with_the_origin_stopped() {
    init();
    let keys = tempfile::tempdir().unwrap();
    let release = key(keys.path(), "release");
    let usb = tempfile::tempdir().unwrap();
    let layout = usb.path().join("layout");
    let mut env = Env::start(1, |s| AgentSpec {
        registry_extra: format!(
            "[[registry.mirrors]]\nkind = \"layout\"\npath = \"{}\"\n",
            layout.display()
        ),
        extra_sections: policy("require", &[&release]),
        ..s
    })
    .await;
    let host = env.registry.host();
    let fw = image(6, 12_000);
    let reference = env.push("blinky:1.0.0", &fw, "1.0.0").await;
    signed(&host, &reference, &release, SignFormat::Cosign).await;
    // What `skopeo copy` puts on a USB stick: the artifact and cosign's `.sig` tag, both in index.json.
    let sig_tag = format!("sha256-{}.sig", hex(&reference));
    for (from, tag) in [
        (format!("{host}/fw/blinky@{}", digest(&reference)), "blinky"),
        (format!("{host}/fw/blinky:{sig_tag}"), sig_tag.as_str()),
    ] {
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            "--preserve-digests",
            &format!("docker://{from}"),
            &format!("oci:{}:{tag}", layout.display()),
        ]);
    }
    env.registry.stop();
    env.intent(0, &reference).await;
    env.wait(0, "firmware-state", "installed").await;
    assert!(env.device(0).holds(&fw));
    let log = env.agent.log();
    let at = format!("at oci-layout:{} tag {sig_tag}", layout.display());
    assert!(
        log.lines()
            .any(|l| l.contains("flashed and verified") && l.contains(&at)),
        "no flash signed {at}:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_referrer_in_the_referrers_tag_schema_installs_without_a_referrers_api() {
    let keys = tempfile::tempdir().unwrap();
    let release = key(keys.path(), "release");
    let env = Env::start(1, |s| AgentSpec {
        extra_sections: policy("require", &[&release]),
        ..s
    })
    .await;
    let host = env.registry.host();
    let fw = image(8, 12_000);
    let reference = env.push("blinky:1.0.0", &fw, "1.0.0").await;
    // This registry answers 404 to the referrers API: the writer lists the referrer in the tag schema index.
    let status = http_status(&format!(
        "http://{host}/v2/fw/blinky/referrers/{}",
        digest(&reference)
    ));
    assert_eq!(status, "404");
    let s = signed(&host, &reference, &release, SignFormat::Bundle).await;
    let tags = tags(&host, "fw/blinky");
    assert!(
        tags.contains(&format!("sha256-{}", hex(&reference))),
        "{tags:?}"
    );
    assert!(!tags.iter().any(|t| t.ends_with(".sig")), "{tags:?}");
    env.intent(0, &reference).await;
    env.wait(0, "firmware-state", "installed").await;
    assert!(env.device(0).holds(&fw));
    let log = env.agent.log();
    assert!(
        log.lines().any(|l| l.contains("flashed and verified")
            && l.contains("sigstore bundle")
            && l.contains(&s.location)),
        "{} not in the flash line:\n{log}",
        s.location
    );
}

/// The HTTP status of a GET (curl without `-f`).
fn http_status(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_installs_an_unsigned_artifact_and_logs_why() {
    let keys = tempfile::tempdir().unwrap();
    let release = key(keys.path(), "release");
    let env = Env::start(1, |s| AgentSpec {
        extra_sections: policy("warn", &[&release]),
        ..s
    })
    .await;
    let fw = image(9, 12_000);
    let reference = env.push("blinky:1.0.0", &fw, "1.0.0").await;
    env.intent(0, &reference).await;
    env.wait(0, "firmware-state", "installed").await;
    assert!(env.device(0).holds(&fw));
    let log = env.agent.log();
    let warned = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("signatures = warn"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warned.contains("no signature found"), "{warned}");
    assert!(warned.contains("sim-00"), "names the device: {warned}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmi_mode_rejects_an_unsigned_artifact_and_installs_a_signed_one() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let release = key(dir.path(), "release");
    let registry = Registry::start().unwrap();
    let edgecore = DmiEdgecore::start_in(&dir.path().join("edgecore"))
        .await
        .unwrap();
    edgecore.apply_model(&device_model("default"));
    let agent_dir = dir.path().join("agent");
    let agent = Agent::start(AgentSpec {
        dmi: Some(edgecore.socket()),
        extra_sections: policy("require", &[&release]),
        ..AgentSpec::new(&agent_dir, 0, vec![registry.host()], 1)
    });
    let dev = agent.devices[0].clone();
    let unsigned = push_seeded(&registry, dir.path(), "1.0.0", 1).await;
    edgecore.apply_device(&dev.device("node-a", &unsigned));
    edgecore
        .wait_actual(
            "default",
            "sim-00",
            "firmware-state",
            "rejected:unsigned",
            WAIT,
        )
        .await;
    assert_eq!(dev.started(&unsigned), 0);
    assert_eq!(
        edgecore
            .actual("default", "sim-00", "firmware")
            .unwrap_or_default(),
        ""
    );

    let good = push_seeded(&registry, dir.path(), "1.1.0", 2).await;
    signed(&registry.host(), &good, &release, SignFormat::Cosign).await;
    edgecore.apply_device(&dev.device("node-a", &good));
    edgecore
        .wait_actual("default", "sim-00", "firmware", &good, WAIT)
        .await;
    edgecore
        .wait_actual("default", "sim-00", "firmware-state", "installed", WAIT)
        .await;
    assert!(dev.holds(&image(2, 12_000)));
    assert_eq!(dev.started(&unsigned), 0);
}

/// Pushes `image(seed, 12_000)` as `fw/blinky:<version>`.
async fn push_seeded(registry: &Registry, dir: &Path, version: &str, seed: u8) -> String {
    push(
        registry,
        dir,
        &format!("fw/blinky:{version}"),
        &image(seed, 12_000),
        version,
        support::CHIP,
    )
    .await
}

#[test]
fn check_config_prints_the_policy_and_a_missing_key_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let release = key(dir.path(), "release");
    let run = |section: &str| {
        let file = dir.path().join("edge.toml");
        std::fs::write(
            &file,
            format!(
                "node = \"n\"\nstate_dir = \"{0}/state\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nclient_id = \"c\"\n{section}\
                 [[devices]]\nid = \"default/d\"\nchip = \"{1}\"\n[devices.flasher]\nkind = \"simulated\"\ndir = \"{0}/d\"\nsize = 65536\n",
                dir.path().display(),
                support::CHIP,
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_twinflash-edge"))
            .arg("--config")
            .arg(&file)
            .arg("--check-config")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = run(&policy("require", &[&release]));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("signatures: require, 1 trusted key(s)"),
        "{out}"
    );
    let line = format!(
        "release: ecdsa-p256-sha256 {}",
        release.signing.public().key_id()
    );
    assert!(out.contains(&line), "{line} not in {out}");

    let (code, out) = run("");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("signatures: off, 0 trusted key(s)"), "{out}");

    let gone = dir.path().join("gone.pub");
    let (code, out) = run(&format!(
        "[signatures]\nmode = \"require\"\nkeys = [\"{}\"]\n",
        gone.display()
    ));
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("signatures.keys") && out.contains(&gone.display().to_string()),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "one clear line: {out}");

    let (code, out) = run("[signatures]\nmode = \"warn\"\n");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("needs at least one trusted key"), "{out}");
}
