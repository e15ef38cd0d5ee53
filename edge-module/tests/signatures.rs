//! The agent's signature policy end to end (issue #15): the real binary with `[signatures]`, a real mosquitto, real
//! registries (Debian's docker-registry, distribution 2.8.2: no referrers API), signatures written by
//! `twinflash_artifact::signature::write`, simulated devices. Judged by what the cloud stand-in stores and by the
//! simulated device's flash: a refused artifact leaves the device's content and counters as they were, and the
//! installed firmware twins unchanged. The DMI mode's case is in dmi.rs, beside that mode's scene.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

mod support;

use std::process::Command;

use support::{AgentSpec, Env, Key, SimDevice, check_config, image, init, policy, push};
use twinflash_artifact::signature::write::SignFormat;
use twinflash_harness::Registry;

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

/// An MQTT scene (support's [`Env`], one device) whose agent applies `mode`, trusting `release.pub` of `keys`;
/// `tweak` changes the rest of the agent's settings.
struct Scene {
    env: Env,
    release: Key,
    keys: tempfile::TempDir,
}

impl Scene {
    async fn start(mode: &str, tweak: impl FnOnce(AgentSpec<'_>) -> AgentSpec<'_>) -> Scene {
        let keys = tempfile::tempdir().unwrap();
        let release = Key::new(keys.path(), "release");
        let section = policy(mode, &[&release]);
        let env = Env::start(1, |mut s| {
            s.extra_sections.push_str(&section);
            tweak(s)
        })
        .await;
        Scene { env, release, keys }
    }

    /// Pushes `image(seed, 12_000)` as `fw/blinky:<version>`; its digest-pinned reference.
    async fn push(&self, version: &str, seed: u8) -> String {
        self.env
            .push(&format!("blinky:{version}"), &image(seed, 12_000), version)
            .await
    }

    fn host(&self) -> String {
        self.env.registry.host()
    }

    /// Sends the intent `reference` and waits for `installed`; the device then holds `image(seed, ...)`.
    async fn installs(&self, reference: &str, seed: u8) {
        self.env.intent(0, reference).await;
        self.env.wait(0, "firmware", reference).await;
        self.env.wait(0, "firmware-state", "installed").await;
        assert!(self.env.device(0).holds(&image(seed, 12_000)));
    }

    /// The line of the agent's log that reports the flash.
    fn flash_line(&self) -> String {
        let log = self.env.agent.log();
        log.lines()
            .find(|l| l.contains("flashed and verified"))
            .unwrap_or_else(|| panic!("no flash logged:\n{log}"))
            .to_owned()
    }
}

/// Under `require`, with `v1` (seed 1, signed by the trusted key) installed on device 0.
async fn with_v1_installed() -> (Scene, String) {
    let scene = Scene::start("require", |s| s).await;
    let v1 = scene.push("1.0.0", 1).await;
    scene
        .release
        .sign(&scene.host(), &v1, SignFormat::Cosign)
        .await;
    scene.installs(&v1, 1).await;
    (scene, v1)
}

/// Offers `reference` and expects `rejected:<code>`: nothing flashed, the installed twins still `v1`'s.
async fn refuses(scene: &Scene, v1: &str, reference: &str, code: &str) {
    let env = &scene.env;
    let dev = env.device(0);
    let before = snapshot(&dev);
    env.intent(0, reference).await;
    env.wait(0, "firmware-state", &format!("rejected:{code}"))
        .await;
    let after = snapshot(&dev);
    assert!(after.0 == before.0, "the flash changed");
    assert_eq!(after.1, before.1, "flash operations counted");
    assert_eq!(dev.started(reference), 0);
    assert_eq!(env.actual(0, "firmware").as_deref(), Some(v1));
    assert_eq!(env.actual(0, "firmware-version").as_deref(), Some("1.0.0"));
    assert!(dev.holds(&image(1, 12_000)), "v1 still on the device");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_artifact_installs_under_require_and_its_signer_is_logged() {
    let port = twinflash_harness::free_port();
    let scene = Scene::start("require", |mut s| {
        s.extra_sections
            .push_str(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
        s
    })
    .await;
    let reference = scene.push("2.0.0", 7).await;
    let s = scene
        .release
        .sign(&scene.host(), &reference, SignFormat::Cosign)
        .await;
    assert_eq!(s.location, format!("tag sha256-{}.sig", hex(&reference)));
    scene.installs(&reference, 7).await;
    assert_eq!(scene.env.device(0).completed(&reference), 1);
    let flashed = scene.flash_line();
    assert!(
        flashed.contains("signed by release") && flashed.contains(&s.key_id),
        "{flashed}"
    );
    assert_eq!(checks(port, "verified"), 1);
    assert_eq!(checks(port, "unsigned"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_artifact_is_rejected_under_require_and_not_retried_until_the_intent_changes() {
    let (scene, v1) = with_v1_installed().await;
    let env = &scene.env;
    let v2 = scene.push("1.1.0", 2).await;
    refuses(&scene, &v1, &v2, "unsigned").await;
    assert!(env.agent.log().contains("no signature found"));

    // Signed afterwards, the same intent again (edgecore repeats deltas): a rejection stays until the intent
    // changes. The next intent, handled after that one, installs: the repeated delta was seen and did nothing.
    let host = scene.host();
    scene.release.sign(&host, &v2, SignFormat::Cosign).await;
    env.intent(0, &v2).await;
    let v3 = scene.push("1.2.0", 3).await;
    scene.release.sign(&host, &v3, SignFormat::Cosign).await;
    scene.installs(&v3, 3).await;
    let dev = env.device(0);
    assert_eq!(dev.started(&v2), 0, "{:?}", dev.counters());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_by_an_untrusted_key_is_rejected_as_invalid() {
    let (scene, v1) = with_v1_installed().await;
    let stranger = Key::new(scene.keys.path(), "stranger");
    let v2 = scene.push("1.1.0", 2).await;
    stranger.sign(&scene.host(), &v2, SignFormat::Cosign).await;
    refuses(&scene, &v1, &v2, "signature-invalid").await;
    assert!(scene.env.agent.log().contains("does not verify"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_of_another_digest_is_rejected_as_invalid() {
    let (scene, v1) = with_v1_installed().await;
    let host = scene.host();
    // v1's good `.sig` manifest, copied byte for byte to v2's signature tag in the same repository.
    let v2 = scene.push("1.1.0", 2).await;
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--preserve-digests",
        &format!("docker://{host}/fw/blinky:sha256-{}.sig", hex(&v1)),
        &format!("docker://{host}/fw/blinky:sha256-{}.sig", hex(&v2)),
    ]);
    refuses(&scene, &v1, &v2, "signature-invalid").await;
    assert!(scene.env.agent.log().contains("another digest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_only_a_mirror_serves_installs() {
    init();
    let mirror = Registry::start().unwrap();
    let m = mirror.host();
    let scene = Scene::start("require", |mut s| {
        s.registry_hosts.push(m.clone());
        s.registry_extra = format!("[[registry.mirrors]]\nkind = \"registry\"\nhost = \"{m}\"\n");
        s
    })
    .await;
    let reference = scene.push("1.0.0", 5).await;
    // The same artifact on the mirror; only the mirror holds a signature.
    let on_mirror = push(
        &mirror,
        scene.env.dir.path(),
        "fw/blinky:1.0.0",
        &image(5, 12_000),
        "1.0.0",
        support::CHIP,
    )
    .await;
    assert_eq!(digest(&on_mirror), digest(&reference));
    scene.release.sign(&m, &on_mirror, SignFormat::Cosign).await;
    let origin_tags = tags(&scene.host(), "fw/blinky");
    assert!(
        !origin_tags.iter().any(|t| t.ends_with(".sig")),
        "{origin_tags:?}"
    );
    scene.installs(&reference, 5).await;
    let flashed = scene.flash_line();
    assert!(
        flashed.contains(&format!("at {m} tag sha256-")),
        "{flashed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oci_layout_with_the_signature_installs_with_the_origin_stopped() {
    let usb = tempfile::tempdir().unwrap();
    let layout = usb.path().join("layout");
    let mut scene = Scene::start("require", |mut s| {
        s.registry_extra = format!(
            "[[registry.mirrors]]\nkind = \"layout\"\npath = \"{}\"\n",
            layout.display()
        );
        s
    })
    .await;
    let host = scene.host();
    let reference = scene.push("1.0.0", 6).await;
    scene
        .release
        .sign(&host, &reference, SignFormat::Cosign)
        .await;
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
    scene.env.registry.stop();
    scene.installs(&reference, 6).await;
    let flashed = scene.flash_line();
    let at = format!("at oci-layout:{} tag {sig_tag}", layout.display());
    assert!(flashed.contains(&at), "{at} not in {flashed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_referrer_in_the_referrers_tag_schema_installs_without_a_referrers_api() {
    let scene = Scene::start("require", |s| s).await;
    let host = scene.host();
    let reference = scene.push("1.0.0", 8).await;
    // This registry answers 404 to the referrers API: the writer lists the referrer in the tag schema index.
    let status = http_status(&format!(
        "http://{host}/v2/fw/blinky/referrers/{}",
        digest(&reference)
    ));
    assert_eq!(status, "404");
    let s = scene
        .release
        .sign(&host, &reference, SignFormat::Bundle)
        .await;
    let tags = tags(&host, "fw/blinky");
    assert!(
        tags.contains(&format!("sha256-{}", hex(&reference))),
        "{tags:?}"
    );
    assert!(!tags.iter().any(|t| t.ends_with(".sig")), "{tags:?}");
    scene.installs(&reference, 8).await;
    let flashed = scene.flash_line();
    assert!(
        flashed.contains("sigstore bundle") && flashed.contains(&s.location),
        "{} not in {flashed}",
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
    let scene = Scene::start("warn", |s| s).await;
    let reference = scene.push("1.0.0", 9).await;
    scene.installs(&reference, 9).await;
    let log = scene.env.agent.log();
    let warned = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("signatures = warn"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warned.contains("no signature found"), "{warned}");
    assert!(warned.contains("sim-00"), "names the device: {warned}");
    assert!(!scene.flash_line().contains("signed by"));
}

#[test]
fn check_config_prints_the_policy_and_a_missing_key_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let release = Key::new(dir.path(), "release");
    let file = dir.path().join("edge.toml");
    let run = |section: &str| {
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
        check_config(&file, &[])
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
