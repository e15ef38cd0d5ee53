//! `twinflash sign`, `push --sign-key`, `verify` and `inspect` against a real registry (Debian's
//! docker-registry 2.8, which has no referrers API: bundles go through the referrers tag
//! schema). The independent verifier of the format is sigstore-rs (`interop/tests/sigstore_rs.rs`): Debian's
//! skopeo 1.9.3 is built with sigstore disabled ("Debian-local change: sigstore disabled") and can neither verify
//! nor sign sigstore signatures; it still copies the artifact and its `.sig` tag into a layout (below).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine;
use twinflash_artifact::signature::SigningKey;
use twinflash_harness::Registry;

/// `verify`'s exit statuses (docs/contract.md §6).
const EXIT_UNSIGNED: i32 = 3;
const EXIT_SIGNATURE_INVALID: i32 = 4;

fn twinflash() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twinflash"));
    cmd.env_remove("DOCKER_CONFIG")
        .env_remove("COSIGN_PASSWORD")
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::null());
    cmd
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../artifact/tests/fixtures")
        .join(name)
}

/// cosign's encrypted test keys and their public halves (`.pub.derived`), with their passwords in
/// artifact/tests/data/cosign/README.md.
fn cosign_key(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../artifact/tests/data/cosign/cosign-encrypted-keys")
        .join(name)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        stdout(&out)
    );
    stdout(&out)
}

/// The command exited with `code` and exactly one line on stderr; returns that line.
fn fails_with(out: Output, code: i32) -> String {
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    stderr
}

/// The metadata every pushed artifact gets.
const ARTIFACT_ARGS: &[&str] = &["--version=1.0.0", "--chip=nRF52840_xxAA", "--plain-http"];

/// `twinflash push` of blinky.elf as `<host>/<repo>:1.0.0`, to be completed and run.
fn push(host: &str, repo: &str) -> Command {
    let mut cmd = twinflash();
    cmd.args(["push", &format!("{host}/{repo}:1.0.0")])
        .arg(fixture("blinky.elf"))
        .args(ARTIFACT_ARGS);
    cmd
}

fn pushed(host: &str, repo: &str) -> String {
    ok(push(host, repo).output().unwrap()).trim().to_owned()
}

/// A new P-256 key pair in `dir`: `<name>.key` (PKCS#8 PEM) and `<name>.pub`.
fn key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let der = SigningKey::generate_p256_pkcs8().unwrap();
    let key = SigningKey::from_pkcs8_der(&der).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let private = dir.join(format!("{name}.key"));
    std::fs::write(
        &private,
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&public, key.public().to_pem()).unwrap();
    (private, public)
}

fn sign(reference: &str, key: &Path, format: &str) -> String {
    ok(twinflash()
        .args([
            "sign",
            reference,
            "--plain-http",
            "--format",
            format,
            "--key",
        ])
        .arg(key)
        .output()
        .unwrap())
}

fn verify(reference: &str, keys: &[&Path], extra: &[&str]) -> Output {
    let mut cmd = twinflash();
    cmd.args(["verify", reference, "--plain-http"]).args(extra);
    for k in keys {
        cmd.arg("--key").arg(k);
    }
    cmd.output().unwrap()
}

fn inspect_json(reference: &str, keys: &[&Path]) -> serde_json::Value {
    let mut cmd = twinflash();
    cmd.args(["inspect", reference, "--plain-http", "--json"]);
    for k in keys {
        cmd.arg("--verify-key").arg(k);
    }
    serde_json::from_str(&ok(cmd.output().unwrap())).unwrap()
}

#[test]
fn sign_then_verify_and_inspect_in_both_formats() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(dir.path(), "release");
    let (_, other) = key_pair(dir.path(), "someone-else");
    for (format, stored) in [("cosign", "tag sha256-"), ("bundle", "referrer sha256:")] {
        let pinned = pushed(&host, &format!("fw/{format}"));
        let digest = pinned.split('@').nth(1).unwrap().to_owned();
        // Signed by tag: sign resolves it and prints the pinned reference last.
        let out = sign(&format!("{host}/fw/{format}:1.0.0"), &key, format);
        assert_eq!(out.lines().last(), Some(pinned.as_str()), "{out}");
        assert!(out.contains(&format!("format    {format}")), "{out}");
        assert!(out.contains(&format!("stored    {stored}")), "{out}");
        let key_id = SigningKey::from_pem(&std::fs::read(&key).unwrap())
            .unwrap()
            .public()
            .key_id();
        assert!(out.contains(&format!("key       {key_id}")), "{out}");

        // verify: the signer is the key file's name; a second, untrusted key does not hurt.
        let text = ok(verify(&pinned, &[&other, &public], &[]));
        let last = text.lines().last().unwrap();
        assert!(last.starts_with("verified   signed by release"), "{text}");
        assert!(text.contains(stored), "{text}");

        let v: serde_json::Value =
            serde_json::from_str(&ok(verify(&pinned, &[&public], &["--json"]))).unwrap();
        assert_eq!(v["verdict"], "verified");
        assert_eq!(v["signer"]["name"], "release");
        assert_eq!(v["digest"], digest.as_str());
        assert_eq!(v["signatures"].as_array().unwrap().len(), 1, "{v}");

        // Another key: the signature is there but is not that key's.
        let line = fails_with(verify(&pinned, &[&other], &[]), EXIT_SIGNATURE_INVALID);
        assert!(line.contains("[signature-invalid]"), "{line}");

        // inspect lists the signature without keys, and checks it with --verify-key.
        let v = inspect_json(&pinned, &[]);
        let sigs = v["signatures"].as_array().unwrap();
        assert_eq!(sigs.len(), 1, "{v}");
        assert!(
            sigs[0]["location"].as_str().unwrap().contains(stored),
            "{v}"
        );
        assert_eq!(sigs[0]["keyless"], false);
        assert_eq!(sigs[0]["result"], "unchecked");
        assert_eq!(v["version"], "1.0.0", "the metadata stays: {v}");
        if format == "cosign" {
            assert_eq!(
                sigs[0]["claimed_reference"],
                format!("{host}/fw/{format}").as_str()
            );
            assert_eq!(sigs[0]["format"], "cosign-simple-signing");
        } else {
            assert_eq!(sigs[0]["format"], "sigstore-bundle");
        }
        let v = inspect_json(&pinned, &[&public]);
        assert_eq!(v["signatures"][0]["result"], "verified", "{v}");
        assert_eq!(v["signatures"][0]["signer"], "release", "{v}");
        assert_eq!(v["signature_verdict"], "verified", "{v}");
        let v = inspect_json(&pinned, &[&other]);
        assert_eq!(v["signatures"][0]["result"], "invalid", "{v}");
        assert_eq!(v["signature_verdict"], "signature-invalid", "{v}");

        let text = ok(twinflash()
            .args(["inspect", &pinned, "--plain-http"])
            .output()
            .unwrap());
        assert!(text.contains("signature     "), "{text}");
        assert!(text.contains(stored), "{text}");
    }
}

#[test]
fn verify_of_an_unsigned_artifact_exits_with_its_own_status() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = key_pair(dir.path(), "release");
    let pinned = pushed(&host, "fw/unsigned");
    let line = fails_with(verify(&pinned, &[&public], &[]), EXIT_UNSIGNED);
    assert!(line.contains("[unsigned]"), "{line}");
    let text = ok(twinflash()
        .args(["inspect", &pinned, "--plain-http"])
        .output()
        .unwrap());
    assert!(text.contains("signatures    none"), "{text}");
    // No key at all is a usage error, not a verdict.
    let out = twinflash()
        .args(["verify", &pinned, "--plain-http"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(EXIT_UNSIGNED));
}

#[test]
fn push_with_a_cosign_key_signs_right_after_the_push() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let key = cosign_key("cosign-keys_test-pemsigstorekey.key");
    let public = cosign_key("cosign-keys_test-pemsigstorekey.pub.derived");

    // Without the password and without a terminal: refused before anything is pushed.
    let out = push(&host, "fw/signed")
        .arg("--sign-key")
        .arg(&key)
        .output()
        .unwrap();
    let line = fails_with(out, 1);
    assert!(line.contains("COSIGN_PASSWORD"), "{line}");
    let pinned = pushed(&host, "fw/other");
    let missing = pinned.replace("/fw/other:", "/fw/signed:");
    assert!(!verify(&missing, &[&public], &[]).status.success());

    for format in ["cosign", "bundle"] {
        let out = push(&host, &format!("fw/signed-{format}"))
            .args(["--sign-format", format, "--sign-key"])
            .arg(&key)
            .env("COSIGN_PASSWORD", "hello")
            .output()
            .unwrap();
        let stdout = ok(out);
        assert_eq!(stdout.lines().count(), 1, "only the reference: {stdout}");
        let pinned = stdout.trim();
        let text = ok(verify(pinned, &[&public], &[]));
        assert!(
            text.contains("signed by cosign-keys_test-pemsigstorekey"),
            "{text}"
        );
    }
    // A wrong password is one line, exit 1.
    let out = twinflash()
        .args(["sign", &pinned, "--plain-http", "--key"])
        .arg(&key)
        .env("COSIGN_PASSWORD", "wrong")
        .output()
        .unwrap();
    let line = fails_with(out, 1);
    assert!(line.contains("wrong password"), "{line}");
}

/// skopeo, when it may run; `None` (after saying why) otherwise.
fn skopeo() -> Option<PathBuf> {
    twinflash_harness::needs(twinflash_harness::tool_available("skopeo"), "skopeo")
        .then(|| PathBuf::from("skopeo"))
}

#[test]
fn verify_finds_the_signature_in_an_oci_layout_with_the_origin_stopped() {
    let Some(skopeo) = skopeo() else { return };
    let mut registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(dir.path(), "release");
    let pinned = pushed(&host, "fw/offline");
    sign(&pinned, &key, "cosign");
    let digest = pinned.split_once('@').unwrap().1;
    let layout = dir.path().join("layout");
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    // The artifact and its `.sig` tag copied as plain images (skopeo accepts the firmware
    // artifact: an OCI manifest with the empty config).
    let sig_tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    for tag in ["1.0.0", sig_tag.as_str()] {
        let out = Command::new(&skopeo)
            .arg("copy")
            .arg("--policy")
            .arg(&policy)
            .arg("--src-tls-verify=false")
            .arg(format!("docker://{host}/fw/offline:{tag}"))
            .arg(format!("oci:{}:{tag}", layout.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    registry.stop();
    let layout_arg = layout.display().to_string();
    let text = ok(verify(&pinned, &[&public], &["--layout", &layout_arg]));
    assert!(text.contains("signed by release"), "{text}");
    assert!(text.contains(&sig_tag), "{text}");
    // Without the layout nothing can be asked: an error, not a verdict.
    let line = fails_with(verify(&pinned, &[&public], &[]), 1);
    assert!(line.contains("[registry-unreachable]"), "{line}");
}
