//! Shared fixtures of the end-to-end tests: firmware pushed with twinflash-artifact, a real
//! `twinflash-edge` process with simulated devices, and an MQTT observer. The agent parts are a
//! trimmed copy of `edge-module/tests/support/mod.rs` (`image`, `push`, `Agent`).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // tests: a panic is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use twinflash_harness::Registry;

pub const ORIGIN: u64 = 0x0800_0000;
pub const FLASH_SIZE: u64 = 256 * 1024;
pub const CHIP: &str = "STM32F411RETx";
/// Generous bound of every wait (a loaded machine; a passing run takes seconds).
pub const WAIT: Duration = Duration::from_secs(60);

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A firmware image of `len` bytes whose content depends on `seed`.
pub fn image(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Pushes `bytes` as a BIN artifact at ORIGIN; returns the digest-pinned reference.
pub async fn push(
    registry: &Registry,
    dir: &Path,
    repo_tag: &str,
    bytes: &[u8],
    version: &str,
    chip: &str,
) -> String {
    let file = dir.join(format!("{}.bin", repo_tag.replace(['/', ':'], "_")));
    std::fs::write(&file, bytes).unwrap();
    let tls = twinflash_artifact::TlsOptions {
        plain_http: vec![registry.host()],
        ..Default::default()
    };
    let req = twinflash_artifact::PushRequest {
        reference: format!("{}/{repo_tag}", registry.host()),
        file,
        version: version.into(),
        chip: chip.into(),
        format: None,
        base_address: Some(ORIGIN),
        annotations: BTreeMap::new(),
    };
    twinflash_artifact::push(
        &tls,
        &twinflash_artifact::Credentials::default(),
        &req,
        |_, _| {},
    )
    .await
    .unwrap()
    .pinned_reference
}

/// The `twinflash-edge` binary.
///
/// Cargo builds binaries only for their own package's tests, so this test finds it:
/// `TWINFLASH_EDGE_BIN`, else `<target>/<profile>/twinflash-edge` next to this test executable
/// (`cargo build -p twinflash-edge --no-default-features` with the same `CARGO_TARGET_DIR` puts
/// it there). If it is missing, the test builds it itself with `$CARGO` into a separate target
/// directory `<target>/<profile>/edge-agent-build` (the outer `cargo test` holds the lock of the
/// main one); that first build takes minutes.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TWINFLASH_EDGE_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let beside = profile_dir.join("twinflash-edge");
    if beside.exists() {
        return beside;
    }
    let own_target = profile_dir.join("edge-agent-build");
    let built = own_target.join("debug").join("twinflash-edge");
    if !built.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let status = Command::new(cargo)
            .args(["build", "-p", "twinflash-edge", "--no-default-features"])
            .arg("--manifest-path")
            .arg(manifest)
            .env("CARGO_TARGET_DIR", &own_target)
            .status()
            .unwrap();
        assert!(status.success(), "building twinflash-edge failed");
    }
    built
}

/// One simulated device of an agent.
#[derive(Clone, Debug)]
pub struct SimDevice {
    /// `default/sim-NN`.
    pub id: String,
    pub dir: PathBuf,
}

impl SimDevice {
    /// The payload region of the simulated flash holds `bytes`.
    pub fn holds(&self, bytes: &[u8]) -> bool {
        let flash = std::fs::read(self.dir.join("flash.bin")).unwrap_or_default();
        flash.len() >= bytes.len() && &flash[..bytes.len()] == bytes
    }
}

/// A running `twinflash-edge` process with simulated devices `default/sim-NN`.
pub struct Agent {
    pub devices: Vec<SimDevice>,
    child: Option<Child>,
    log: PathBuf,
}

/// How an [`Agent`] is configured beyond the broker and the registry.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    /// MQTT client id (unique per agent on one broker).
    pub client_id: String,
    /// Edge node name.
    pub node: String,
    /// Device numbers: `default/sim-NN` for each.
    pub devices: std::ops::Range<usize>,
    /// `allow_downgrade` of every device (a rollback to an older version needs it).
    pub allow_downgrade: bool,
    /// `[limits] flash_attempts`.
    pub flash_attempts: u32,
}

impl Agent {
    /// One agent (`agent-e2e`, node `node-a`) with devices `sim-00..` (`devices` of them).
    pub fn start(dir: &Path, mqtt_port: u16, registry_host: &str, devices: usize) -> Agent {
        let spec = AgentSpec {
            client_id: "agent-e2e".into(),
            node: "node-a".into(),
            devices: 0..devices,
            allow_downgrade: false,
            flash_attempts: 3,
        };
        Agent::start_with(dir, mqtt_port, registry_host, &spec)
    }

    /// An agent as `spec` says; its state, devices and log live under `dir`.
    pub fn start_with(dir: &Path, mqtt_port: u16, registry_host: &str, spec: &AgentSpec) -> Agent {
        std::fs::create_dir_all(dir).unwrap();
        let state_dir = dir.join("state");
        let mut toml = format!(
            "node = \"{}\"\nstate_dir = \"{}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\n\
             client_id = \"{}\"\n[registry]\nplain_http = [\"{registry_host}\"]\n\
             [limits]\nflash_attempts = {}\n[log]\nlevel = \"info,twinflash_edge=debug\"\n",
            spec.node,
            state_dir.display(),
            spec.client_id,
            spec.flash_attempts,
        );
        let mut sims = Vec::new();
        for i in spec.devices.clone() {
            let id = format!("default/sim-{i:02}");
            let dir = dir.join(format!("sim-{i:02}"));
            toml.push_str(&format!(
                "[[devices]]\nid = \"{id}\"\nchip = \"{CHIP}\"\nallow_downgrade = {}\n\
                 [devices.flasher]\nkind = \"simulated\"\n\
                 dir = \"{}\"\nsize = {FLASH_SIZE}\norigin = {ORIGIN}\n",
                spec.allow_downgrade,
                dir.display(),
            ));
            sims.push(SimDevice { id, dir });
        }
        let config = dir.join("edge.toml");
        std::fs::write(&config, toml).unwrap();
        let log = dir.join("agent.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(agent_binary())
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        Agent {
            devices: sims,
            child: Some(child),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A message as observed: topic, payload, retain flag.
pub type Seen = (String, Vec<u8>, bool);

/// Every message seen on the subscribed filters, in arrival order.
#[derive(Clone, Default)]
pub struct Observer {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub client: Option<AsyncClient>,
}

impl Observer {
    /// Connects to the broker at `port` and subscribes to `filters` (again after reconnects).
    pub async fn start(port: u16, id: &str, filters: &[&str]) -> Observer {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(opts, 256);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(tokio::sync::Notify::new());
        let (s, c, n) = (seen.clone(), client.clone(), subscribed.clone());
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in &filters {
                            c.subscribe(f.clone(), QoS::AtLeastOnce).await.unwrap();
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => n.notify_one(),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        s.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec(), p.retain));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(WAIT, subscribed.notified())
            .await
            .expect("observer subscribed");
        Observer {
            seen,
            client: Some(client),
        }
    }

    pub fn messages(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Polls `cond` until it holds or `WAIT` passes; panics with `what()` otherwise.
pub async fn wait_until(mut cond: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out: {}", what());
}
