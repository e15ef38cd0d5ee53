//! The `twinflash` binary against a real registry: push, inspect, pull for every format; one-line
//! errors; a pull killed with SIGKILL mid-download resumes without re-downloading durable bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use twinflash_harness::{Fault, FaultProxy, Registry};

fn twinflash() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twinflash"));
    cmd.env_remove("DOCKER_CONFIG")
        .env("HOME", std::env::temp_dir());
    cmd
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../artifact/tests/fixtures")
        .join(name)
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The command failed with exactly one line on stderr; returns it.
fn one_line_error(out: Output) -> String {
    assert!(!out.status.success(), "unexpected success");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    stderr
}

fn push(host: &str, repo: &str, file: &Path, extra: &[&str]) -> String {
    let out = twinflash()
        .args(["push", &format!("{host}/{repo}:1.0.0")])
        .arg(file)
        .args([
            "--version",
            "1.0.0",
            "--chip",
            "nRF52840_xxAA",
            "--plain-http",
        ])
        .args([
            "--annotation",
            "org.opencontainers.image.source=https://example.test/fw",
        ])
        .args(extra)
        .output()
        .unwrap();
    let stdout = ok(out);
    assert_eq!(stdout.lines().count(), 1, "quiet when piped: {stdout:?}");
    stdout.lines().last().unwrap().to_owned()
}

fn sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
    )
}

#[test]
fn push_inspect_pull_round_trip_for_every_format() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    for (file, format, extra) in [
        ("blinky.elf", "elf", &[][..]),
        ("blinky.hex", "ihex", &[][..]),
        ("blinky.bin", "bin", &["--base-address", "0x08000000"][..]),
        ("blinky.uf2", "uf2", &[][..]),
    ] {
        let path = fixture(file);
        let pinned = push(&host, &format!("fw/{format}"), &path, extra);
        assert!(
            pinned.starts_with(&format!("{host}/fw/{format}:1.0.0@sha256:")),
            "{pinned}"
        );

        let json = ok(twinflash()
            .args(["inspect", &pinned, "--json", "--plain-http"])
            .output()
            .unwrap());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["version"], "1.0.0");
        assert_eq!(v["chip"], "nRF52840_xxAA");
        assert_eq!(v["format"], format);
        assert_eq!(v["size"], std::fs::metadata(&path).unwrap().len());
        assert_eq!(v["layer_digest"], sha256(&path));
        assert!(pinned.ends_with(v["digest"].as_str().unwrap()));
        assert!(v["created"].as_str().unwrap().starts_with("20"));
        let text = ok(twinflash()
            .args([
                "inspect",
                &format!("{host}/fw/{format}:1.0.0"),
                "--plain-http",
            ])
            .output()
            .unwrap());
        assert!(text.contains(&format!("format        {format}")), "{text}");

        let out = dir.path().join(format!("out-{file}"));
        ok(twinflash()
            .args(["pull", &pinned, "--plain-http", "-o"])
            .arg(&out)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .output()
            .unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&path).unwrap());
    }
}

#[test]
fn bad_input_gives_one_clear_line_and_a_non_zero_exit() {
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let push_err = |file: &Path, extra: &[&str]| {
        one_line_error(
            twinflash()
                .args(["push", &format!("{host}/fw/bad:1")])
                .arg(file)
                .args(["--version", "1.0.0", "--chip", "x", "--plain-http"])
                .args(extra)
                .output()
                .unwrap(),
        )
    };
    let bin = dir.path().join("app.bin");
    std::fs::write(&bin, [0u8; 100]).unwrap();
    assert!(push_err(&bin, &[]).contains("--base-address"));

    let hex = dir.path().join("bad.hex");
    let mut text = std::fs::read_to_string(fixture("blinky.hex")).unwrap();
    text = text.replacen("F2\n", "F3\n", 1);
    std::fs::write(&hex, text).unwrap();
    let line = push_err(&hex, &[]);
    assert!(
        line.contains("Intel HEX") && line.contains("line 1"),
        "{line}"
    );

    let elf = dir.path().join("trunc.elf");
    std::fs::write(&elf, &std::fs::read(fixture("blinky.elf")).unwrap()[..60]).unwrap();
    assert!(push_err(&elf, &[]).contains("ELF"));
    assert!(
        push_err(&fixture("blinky.elf"), &["--format", "exe"]).contains("unknown firmware format")
    );
    let line = one_line_error(
        twinflash()
            .args(["push", &format!("{host}/fw/bad:1")])
            .arg(fixture("blinky.elf"))
            .args(["--version", "one", "--chip", "x", "--plain-http"])
            .output()
            .unwrap(),
    );
    assert!(line.contains("semver"), "{line}");

    let unknown = format!("{host}/fw/none@sha256:{}", "cd".repeat(32));
    let line = one_line_error(
        twinflash()
            .args(["inspect", &unknown, "--plain-http"])
            .output()
            .unwrap(),
    );
    assert!(line.contains("not-found"), "{line}");
    let line = one_line_error(
        twinflash()
            .args(["pull", &unknown, "--plain-http", "-o"])
            .arg(dir.path().join("x"))
            .arg("--cache-dir")
            .arg(dir.path().join("c"))
            .output()
            .unwrap(),
    );
    assert!(line.contains("not-found"), "{line}");
}

#[test]
fn a_pull_killed_mid_download_resumes_from_its_durable_offset() {
    const SIZE: u64 = 16 * 1024 * 1024;
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    {
        use rand::RngExt;
        let mut data = vec![0u8; SIZE as usize];
        rand::rng().fill(&mut data[..]);
        std::fs::write(&file, data).unwrap();
    }
    let pinned = push(&host, "fw/kill", &file, &["--base-address", "0"]);
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    let proxy_host = proxy.addr().to_string();
    let via_proxy = pinned.replacen(&host, &proxy_host, 1);
    let cache = dir.path().join("cache");
    let out = dir.path().join("out.bin");
    let pull = || {
        let mut cmd = twinflash();
        cmd.args([
            "pull",
            &via_proxy,
            "--plain-http",
            "--checkpoint-every",
            "1048576",
            "-o",
        ])
        .arg(&out)
        .arg("--cache-dir")
        .arg(&cache);
        cmd
    };

    proxy.set(Fault::Bandwidth {
        bytes_per_sec: 4 * 1024 * 1024,
    });
    let mut child = pull()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let hex = sha256(&file).trim_start_matches("sha256:").to_owned();
    let state = cache.join("blobs/sha256").join(format!("{hex}.state"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let durable = twinflash_artifact::fetch::read_state(&state).map_or(0, |(o, _)| o);
        if durable >= 4 * 1024 * 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pull made no durable progress"
        );
        assert!(child.try_wait().unwrap().is_none(), "the pull ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (durable, _) = twinflash_artifact::fetch::read_state(&state).unwrap();
    assert!(durable < SIZE, "killed after the end");

    proxy.set(Fault::Pass);
    // Let the proxy notice the dead client before counting, so its last bytes are not ours.
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.open_connections() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = proxy.bytes_down();
    ok(pull().output().unwrap());
    let second = proxy.bytes_down() - before;
    assert_eq!(sha256(&out), sha256(&file));
    let remaining = SIZE - durable;
    eprintln!("durable {durable}, second run transferred {second} for {remaining} remaining");
    assert!(
        second >= remaining,
        "{second} < {remaining}: bytes missing?"
    );
    assert!(
        second <= remaining + 64 * 1024,
        "re-downloaded durable bytes: {second} transferred for {remaining} remaining"
    );
}

#[test]
fn pull_and_inspect_present_a_client_certificate_to_a_registry_that_requires_one() {
    use twinflash_harness::{RegistryOptions, RegistryTls, make_certs};
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path()).unwrap();
    let https = |client_cas: Vec<PathBuf>| RegistryOptions {
        tls: Some(RegistryTls {
            cert_file: certs.server_cert.clone(),
            key_file: certs.server_key.clone(),
            client_cas,
        }),
        ..RegistryOptions::default()
    };
    let mut registry = Registry::start_with(https(Vec::new())).unwrap();
    let tag = format!("{}/fw/mtls:1.0.0", registry.host());
    let ca = certs.ca.display().to_string();
    let pinned = ok(twinflash()
        .args(["push", &tag])
        .arg(fixture("blinky.elf"))
        .args([
            "--version",
            "1.0.0",
            "--chip",
            "nRF52840_xxAA",
            "--ca-file",
            &ca,
        ])
        .output()
        .unwrap());
    let pinned = pinned.trim().to_owned();
    registry
        .restart_with(https(vec![certs.ca.clone()]))
        .unwrap();
    let cert = certs.client_cert.display().to_string();
    let key = certs.client_key.display().to_string();

    let json = ok(twinflash()
        .args([
            "inspect",
            &tag,
            "--json",
            "--ca-file",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
        ])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["reference"], pinned.as_str());

    let out = dir.path().join("out.elf");
    let pull = |extra: &[&str]| {
        twinflash()
            .args(["pull", &pinned, "--ca-file", &ca, "--retries", "1", "-o"])
            .arg(&out)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(extra)
            .output()
            .unwrap()
    };
    let line = one_line_error(pull(&[]));
    assert!(line.contains("[registry-auth]"), "{line}");
    ok(pull(&["--cert", &cert, "--key", &key]));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(fixture("blinky.elf")).unwrap()
    );
    let out = twinflash()
        .args(["pull", &pinned, "--cert", &cert, "-o", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--key"),
        "a certificate needs its key: {stderr}"
    );
}

#[test]
fn a_closed_stdout_ends_the_command_quietly_without_a_panic() {
    // `twinflash crd | head -1`, with the reader gone before the first write: EPIPE at once.
    let mut child = twinflash()
        .arg("crd")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "status {:?}: {stderr}", out.status);
}

#[test]
fn pull_writes_regular_files_only_and_follows_a_symlink_with_force() {
    use std::os::unix::fs::FileTypeExt;
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let firmware = fixture("blinky.bin");
    let pinned = push(
        &host,
        "fw/out",
        &firmware,
        &["--base-address", "0x08000000"],
    );
    let pull = |out: &Path, extra: &[&str]| {
        twinflash()
            .args(["pull", &pinned, "--plain-http", "-o"])
            .arg(out)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(extra)
            .output()
            .unwrap()
    };

    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let line = one_line_error(pull(&fifo, &[]));
    assert!(line.contains("refusing") && line.contains("FIFO"), "{line}");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );

    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let line = one_line_error(pull(&sub, &[]));
    assert!(line.contains("a directory"), "{line}");

    let real = dir.path().join("real.bin");
    std::fs::write(&real, b"old").unwrap();
    let link = dir.path().join("link.bin");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let line = one_line_error(pull(&link, &[]));
    assert!(
        line.contains("symbolic link") && line.contains("--force"),
        "{line}"
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&real).unwrap(), b"old");

    ok(pull(&link, &["--force"]));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read(&real).unwrap(),
        std::fs::read(&firmware).unwrap()
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Runs `cmd` to its end, or kills it and fails the test after `limit` (a command that hangs).
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{cmd:?} hung for {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Issue 23: key, password and CA paths that are `/dev/zero` or a FIFO were read without bound or hung. Each verb
/// refuses them at once with one line naming what the path is.
#[test]
fn key_password_and_ca_files_that_are_fifos_or_devices_fail_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let fifo = fifo.to_str().unwrap().to_owned();
    // Nothing listens there: every file is read before the network.
    let reference = format!("127.0.0.1:9/fw/x@sha256:{}", "ab".repeat(32));
    let out = dir.path().join("out.bin");
    let out = out.to_str().unwrap();
    for (path, kind) in [(fifo.as_str(), "FIFO"), ("/dev/zero", "character device")] {
        for args in [
            vec!["verify", &reference, "--key", path, "--plain-http"],
            vec!["sign", &reference, "--key", path, "--plain-http"],
            vec!["inspect", &reference, "--ca-file", path],
            vec![
                "pull",
                &reference,
                "-o",
                out,
                "--username",
                "u",
                "--password-file",
                path,
                "--plain-http",
            ],
        ] {
            let mut cmd = twinflash();
            cmd.args(&args);
            let line = one_line_error(output_within(cmd, Duration::from_secs(20)));
            assert!(line.contains(kind), "{args:?}: {line}");
        }
    }
}
