//! The operator's flow across the real binaries: `twinflash push` (format detected), `twinflash-edge` with
//! simulated devices (one A/B), `twinflash set` (a tag pinned through the registry, direct mode),
//! `twinflash status --until-installed`, then an upgrade. Real mosquitto and registry; twinflash-cloud's relay (its
//! direct mode, in process and without Kubernetes) stores and acknowledges the intents as edgecore would.
//!
//! The binaries come from the target directory of this test: `cargo test --workspace` builds them before any test
//! runs (run `cargo build --workspace` first when running this crate alone).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use std::time::{Duration, Instant};

use twinflash_cloud::config::{Config, Mode};
use twinflash_cloud::mqtt::MqttSink;
use twinflash_harness::{Mosquitto, Registry};

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

fn run(name: &str, args: &[&str]) -> Output {
    let out = Command::new(bin(name)).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Intel HEX of `data` at 0x08000000.
fn ihex(data: &[u8]) -> String {
    let mut out = String::from(":020000040800F2\n");
    for (i, chunk) in data.chunks(16).enumerate() {
        let off = i * 16;
        let mut rec = vec![chunk.len() as u8, (off >> 8) as u8, off as u8, 0];
        rec.extend_from_slice(chunk);
        let sum = rec.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        rec.push(sum.wrapping_neg());
        out.push(':');
        out.extend(rec.iter().map(|b| format!("{b:02X}")));
        out.push('\n');
    }
    out + ":00000001FF\n"
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn push_set_status_and_upgrade_across_the_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = Mosquitto::start().unwrap();
    let registry = Registry::start().unwrap();
    let reg = registry.host();
    let v1: Vec<u8> = (0..12_000u32).map(|i| (i * 7) as u8).collect();
    let v2: Vec<u8> = (0..16_000u32).map(|i| (i * 13 + 1) as u8).collect();
    std::fs::write(dir.path().join("v1.hex"), ihex(&v1)).unwrap();
    std::fs::write(dir.path().join("v2.bin"), &v2).unwrap();
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
    let push = |target: &str, file: &str, version: &str, extra: &[&str]| {
        let mut args = vec![
            "push",
            target,
            file,
            "--version",
            version,
            "--chip",
            "STM32F411RETx",
            "--plain-http",
        ];
        args.extend_from_slice(extra);
        let out = run("twinflash", &args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .to_owned()
    };
    let ref1 = push(
        &format!("{reg}/fw/blinky:1.0.0"),
        &p("v1.hex"),
        "1.0.0",
        &[],
    );
    let ref2 = push(
        &format!("{reg}/fw/blinky:1.1.0"),
        &p("v2.bin"),
        "1.1.0",
        &["--base-address", "0x08000000"],
    );
    let inspect = run("twinflash", &["inspect", &ref1, "--plain-http", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(
        info["format"], "ihex",
        "the format was detected from the content: {info}"
    );

    let mut toml = format!(
        "node = \"e2e\"\nstate_dir = \"{}\"\n[mqtt]\nurl = \"{}\"\nclient_id = \"e2e-agent\"\n[registry]\nplain_http = [\"{reg}\"]\n",
        p("state"),
        mqtt.url()
    );
    for (i, ab) in [(1, false), (2, true)] {
        toml.push_str(&format!(
            "[[devices]]\nid = \"default/blinky-0{i}\"\nchip = \"STM32F411RETx\"\n[devices.flasher]\nkind = \"simulated\"\n\
             dir = \"{}\"\nsize = 262144\norigin = 0x08000000\nab = {ab}\n",
            p(&format!("dev{i}"))
        ));
    }
    std::fs::write(dir.path().join("edge.toml"), toml).unwrap();
    run(
        "twinflash-edge",
        &["--config", &p("edge.toml"), "--check-config"],
    );
    let _agent = Agent(
        Command::new(bin("twinflash-edge"))
            .args(["--config", &p("edge.toml")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // The relay `twinflash set --mode direct` talks to: it answers each intent with its update/result (the agent's
    // reports too: no status writer here, so they are acknowledged at once) and publishes the retained delta.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    let env = [("TWINFLASH_CLOUD__MQTT__URL".to_owned(), mqtt.url())];
    let cfg = Config::load_with_env(None, Some(env.into_iter().collect())).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let (relay, _relay_task) = MqttSink::start(
        cfg.mqtt.as_ref().expect("direct mode has [mqtt]"),
        Mode::Direct,
        Duration::from_secs(3600),
        None,
        cancel.clone(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay.is_connected() {
        assert!(Instant::now() < deadline, "the relay did not connect");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300)); // its subscriptions land

    let devices = ["default/blinky-01", "default/blinky-02"];
    let url = mqtt.url();
    for (tag, pinned) in [("1.0.0", &ref1), ("1.1.0", &ref2)] {
        for d in devices {
            let out = run(
                "twinflash",
                &[
                    "set",
                    d,
                    &format!("{reg}/fw/blinky:{tag}"),
                    "--mqtt",
                    &url,
                    "--mode",
                    "direct",
                    "--plain-http",
                ],
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                pinned.as_str(),
                "the tag was pinned"
            );
        }
        let mut args = vec!["status"];
        args.extend(devices);
        args.extend([
            "--mqtt",
            url.as_str(),
            "--until-installed",
            "--wait",
            "60",
            "--json",
        ]);
        let out = run("twinflash", &args);
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for row in rows.as_array().unwrap() {
            assert_eq!(row["state"], "installed", "{rows}");
            assert_eq!(row["reported"], pinned.as_str(), "{rows}");
            assert_eq!(row["version"], tag, "{rows}");
        }
    }
    let flash = std::fs::read(dir.path().join("dev1/flash.bin")).unwrap();
    assert_eq!(
        &flash[..v2.len()],
        &v2[..],
        "the single-bank device holds 1.1.0"
    );
    let installed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("dev2/installed.json")).unwrap())
            .unwrap();
    assert!(
        installed.to_string().contains(&ref2),
        "the A/B device runs 1.1.0: {installed}"
    );
    cancel.cancel();
}
