//! Shared fixtures of the agent's integration tests: real mosquitto and registry (harness), firmware pushed with
//! the artifact crate, the real `twinflash-edge` binary, and an MQTT observer that plays edgecore's part.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // tests: a panic is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_schema::gojson::decode;
use mqtt_schema::{
    BaseMessage, DeviceTopicKind, DeviceTwinUpdate, MsgTwin, Topic, TopicLayout, TwinValue,
    TypeMetadata, ValueMetadata, to_go_json,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use twinflash_harness::{Mosquitto, Registry};

pub const ORIGIN: u64 = 0x0800_0000;
pub const FLASH_SIZE: u64 = 256 * 1024;
pub const CHIP: &str = "STM32F411RETx";

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A firmware image of `len` bytes whose content depends on `seed`.
pub fn image(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Pushes `bytes` as a BIN artifact at ORIGIN and returns the digest-pinned reference.
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

/// One simulated device of an agent.
#[derive(Clone, Debug)]
pub struct SimDevice {
    pub id: String,
    pub dir: PathBuf,
    pub ab: bool,
}

impl SimDevice {
    pub fn flash(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("flash.bin")).unwrap_or_default()
    }
    pub fn counters(&self) -> serde_json::Value {
        std::fs::read(self.dir.join("counters.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }
    /// Flash operations that started writing for `reference`.
    pub fn started(&self, reference: &str) -> u64 {
        self.counters()["started"][reference].as_u64().unwrap_or(0)
    }
    pub fn completed(&self, reference: &str) -> u64 {
        self.counters()["completed"][reference]
            .as_u64()
            .unwrap_or(0)
    }
    /// Arms faults for the running agent (re-read by the device at each operation).
    pub fn set_faults(&self, json: &str) {
        std::fs::write(self.dir.join("faults.json"), json).unwrap();
    }
    /// The payload region of a single-bank device holds `bytes`.
    pub fn holds(&self, bytes: &[u8]) -> bool {
        let flash = self.flash();
        flash.len() >= bytes.len() && &flash[..bytes.len()] == bytes
    }
}

/// The agent binary: cargo's for tests; for examples (benchmarks) `TWINFLASH_EDGE_BIN` or the one built beside them.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_twinflash-edge") {
        return p.into();
    }
    if let Some(p) = std::env::var_os("TWINFLASH_EDGE_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("twinflash-edge")
}

/// A running `twinflash-edge` process.
pub struct Agent {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub devices: Vec<SimDevice>,
    child: Option<Child>,
    log: PathBuf,
}

pub struct AgentSpec<'a> {
    pub dir: &'a Path,
    pub mqtt_port: u16,
    pub registry_hosts: Vec<String>,
    pub devices: usize,
    pub extra_device_toml: &'a str,
    pub write_bytes_per_sec: Option<u64>,
    pub rate_limit: Option<u64>,
    pub flash_size: u64,
    /// Extra lines in `[mqtt]` (TLS files, credentials, topic_layout) and the URL scheme.
    pub mqtt_extra: String,
    pub mqtt_scheme: &'static str,
    /// Extra top-level sections appended at the end of the file's header (e.g. `[metrics]`).
    pub extra_sections: String,
    /// Legacy topic layout: device ids without a namespace.
    pub legacy: bool,
    /// Extra lines in `[registry]`.
    pub registry_extra: String,
    /// The Kubernetes namespace of the devices (namespaced layout).
    pub namespace: String,
    /// Extra lines in `[limits]`.
    pub limits_extra: String,
}

impl<'a> AgentSpec<'a> {
    pub fn new(dir: &'a Path, mqtt_port: u16, registry_hosts: Vec<String>, devices: usize) -> Self {
        AgentSpec {
            dir,
            mqtt_port,
            registry_hosts,
            devices,
            extra_device_toml: "",
            write_bytes_per_sec: None,
            rate_limit: None,
            flash_size: FLASH_SIZE,
            mqtt_extra: String::new(),
            mqtt_scheme: "mqtt",
            extra_sections: String::new(),
            legacy: false,
            registry_extra: String::new(),
            namespace: "default".into(),
            limits_extra: String::new(),
        }
    }
}

impl Agent {
    pub fn start(spec: AgentSpec<'_>) -> Agent {
        let state_dir = spec.dir.join("state");
        let mut toml = format!(
            "node = \"node-a\"\nstate_dir = \"{}\"\n[mqtt]\nurl = \"{}://127.0.0.1:{}\"\nclient_id = \"agent-{}\"\n{}\
             [registry]\nplain_http = {:?}\n{}{}[limits]\nflash_attempts = 3\n{}[log]\nlevel = \"info,twinflash_edge=debug\"\n{}",
            state_dir.display(),
            spec.mqtt_scheme,
            spec.mqtt_port,
            spec.dir.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
            spec.mqtt_extra,
            spec.registry_hosts,
            spec.rate_limit
                .map(|r| format!("rate_limit_bytes_per_sec = {r}\n"))
                .unwrap_or_default(),
            spec.registry_extra,
            spec.limits_extra,
            spec.extra_sections,
        );
        let mut devices = Vec::new();
        for i in 0..spec.devices {
            let id = if spec.legacy {
                format!("sim-{i:02}")
            } else {
                format!("{}/sim-{i:02}", spec.namespace)
            };
            let dir = spec.dir.join(format!("sim-{i:02}"));
            toml.push_str(&format!(
                "[[devices]]\nid = \"{id}\"\nchip = \"{CHIP}\"\n{}[devices.flasher]\nkind = \"simulated\"\ndir = \"{}\"\nsize = {}\norigin = {ORIGIN}\n{}",
                spec.extra_device_toml,
                dir.display(),
                spec.flash_size,
                spec.write_bytes_per_sec.map(|w| format!("write_bytes_per_sec = {w}\n")).unwrap_or_default(),
            ));
            devices.push(SimDevice { id, dir, ab: false });
        }
        let config = spec.dir.join("edge.toml");
        std::fs::write(&config, toml).unwrap();
        let log = spec.dir.join("agent.log");
        let mut a = Agent {
            config,
            state_dir,
            devices,
            child: None,
            log,
        };
        a.spawn();
        a
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(agent_binary())
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL, as a crash or a power loss of the gateway.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Everything the observer saw the agent report, per device: the latest actual value per twin, and the history of
/// `firmware-state` values.
#[derive(Default, Debug, Clone)]
pub struct Seen {
    /// What the cloud wants per device (answered on twin/get, as edgecore does).
    pub expected: BTreeMap<String, String>,
    pub actual: BTreeMap<String, BTreeMap<String, String>>,
    pub states: BTreeMap<String, Vec<String>>,
    pub reports: usize,
    pub gets: usize,
    /// SUBACKs received: grows each time the observer is subscribed again after a reconnect.
    pub subacks: usize,
}

/// An MQTT client that plays edgecore's part in tests: it watches reports and get requests, and publishes deltas.
pub struct Cloud {
    pub client: AsyncClient,
    pub layout: TopicLayout,
    pub seen: Arc<Mutex<Seen>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Cloud {
    pub async fn connect(mqtt: &Mosquitto, id: &str) -> Cloud {
        Self::connect_with(
            MqttOptions::new(id, "127.0.0.1", mqtt.port()),
            TopicLayout::Namespaced,
        )
        .await
    }

    pub async fn connect_with(mut opts: MqttOptions, layout: TopicLayout) -> Cloud {
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = twinflash_mqtt::client(opts);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let c = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let levels = if layout == TopicLayout::Namespaced {
                            "+/+"
                        } else {
                            "+"
                        };
                        let _ = c
                            .subscribe(
                                format!("$hw/events/device/{levels}/twin/update"),
                                QoS::AtLeastOnce,
                            )
                            .await;
                        let _ = c
                            .subscribe(
                                format!("$hw/events/device/{levels}/twin/get"),
                                QoS::AtLeastOnce,
                            )
                            .await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => s.lock().unwrap().subacks += 1,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Ok(topic) = Topic::parse(&p.topic, layout) else {
                            continue;
                        };
                        let Some((dev, kind)) = topic.device_kind() else {
                            continue;
                        };
                        let mut seen = s.lock().unwrap();
                        match kind {
                            DeviceTopicKind::TwinGet => {
                                seen.gets += 1;
                                // Answer as edgecore does: the whole twin, expected and actual.
                                let mut twin = mqtt_schema::TwinMap::new();
                                let expected = seen.expected.get(&dev.to_string()).cloned();
                                let actual = seen
                                    .actual
                                    .get(&dev.to_string())
                                    .and_then(|a| a.get("firmware"))
                                    .cloned();
                                twin.insert(
                                    "firmware".to_owned(),
                                    Some(MsgTwin {
                                        expected: expected.map(TwinValue::new),
                                        actual: actual.map(TwinValue::new),
                                        optional: Some(false),
                                        metadata: Some(TypeMetadata::new("string")),
                                        ..MsgTwin::default()
                                    }),
                                );
                                let result = mqtt_schema::build_twin_get_result(
                                    BaseMessage::new("g", 1),
                                    &twin,
                                );
                                let topic =
                                    Topic::device(dev, DeviceTopicKind::TwinGetResult).to_string();
                                let _ = c.try_publish(
                                    topic,
                                    QoS::AtLeastOnce,
                                    false,
                                    to_go_json(&result),
                                );
                            }
                            DeviceTopicKind::TwinUpdate => {
                                let Ok(upd) = decode::<DeviceTwinUpdate>(&p.payload) else {
                                    continue;
                                };
                                seen.reports += 1;
                                for (name, twin) in upd.twin.unwrap_or_default() {
                                    let Some(value) =
                                        twin.and_then(|t| t.actual).and_then(|a| a.value)
                                    else {
                                        continue;
                                    };
                                    if name == "firmware-state" {
                                        seen.states
                                            .entry(dev.to_string())
                                            .or_default()
                                            .push(value.clone());
                                    }
                                    seen.actual
                                        .entry(dev.to_string())
                                        .or_default()
                                        .insert(name, value);
                                }
                            }
                            _ => {}
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Cloud {
            client,
            seen,
            layout,
            _task: task,
        }
    }

    /// Publishes a delta for `device` asking for `wanted`, exactly as edgecore's BuildDeviceTwinDelta shapes it.
    pub async fn delta(&self, device: &str, wanted: &str, actual: Option<&str>) {
        self.seen
            .lock()
            .unwrap()
            .expected
            .insert(device.to_owned(), wanted.to_owned());
        let mut twins = BTreeMap::new();
        twins.insert(
            "firmware".to_owned(),
            MsgTwin {
                expected: Some(TwinValue {
                    value: Some(wanted.to_owned()),
                    metadata: Some(ValueMetadata {
                        timestamp: 1_700_000_002_000,
                    }),
                }),
                actual: actual.map(|a| TwinValue {
                    value: Some(a.to_owned()),
                    metadata: Some(ValueMetadata {
                        timestamp: 1_700_000_001_000,
                    }),
                }),
                optional: Some(false),
                metadata: Some(TypeMetadata::new("string")),
                ..MsgTwin::default()
            },
        );
        let delta = mqtt_schema::build_device_twin_delta(
            BaseMessage::new("00000000-0000-4000-8000-000000000001", 1_700_000_000_000),
            &twins,
        )
        .expect("expected differs from actual");
        self.raw(device, DeviceTopicKind::TwinUpdateDelta, to_go_json(&delta))
            .await;
    }

    pub async fn raw(&self, device: &str, kind: DeviceTopicKind, payload: Vec<u8>) {
        let id = mqtt_schema::DeviceId::parse(device, self.layout).unwrap();
        self.client
            .publish(
                Topic::device(&id, kind).to_string(),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
    }

    pub fn subacks(&self) -> usize {
        self.seen.lock().unwrap().subacks
    }

    pub fn actual(&self, device: &str, twin: &str) -> Option<String> {
        self.seen
            .lock()
            .unwrap()
            .actual
            .get(device)?
            .get(twin)
            .cloned()
    }

    pub fn states(&self, device: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .states
            .get(device)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `device` reports `twin` = `value`.
    pub async fn wait_for(
        &self,
        device: &str,
        twin: &str,
        value: &str,
        within: Duration,
        agent: &Agent,
    ) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.actual(device, twin).as_deref() == Some(value) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{device} did not report {twin}={value} within {within:?}; it reported {:?}; states {:?}\n--- agent log ---\n{}",
            self.actual(device, twin),
            self.states(device),
            agent.log()
        );
    }

    /// Waits until the state history of `device` contains a value starting with `prefix`.
    pub async fn wait_state_prefix(
        &self,
        device: &str,
        prefix: &str,
        within: Duration,
        agent: &Agent,
    ) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.states(device).iter().any(|s| s.starts_with(prefix)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{device} never reported a state starting with {prefix:?}; states {:?}\n--- agent log ---\n{}",
            self.states(device),
            agent.log()
        );
    }
}

/// The usual scene of an agent test: a broker, a registry, the observer playing the cloud, and an agent with
/// `devices` simulated devices that have all reported `idle`.
pub struct Env {
    pub agent: Agent,
    pub cloud: Cloud,
    pub registry: Registry,
    pub mqtt: Mosquitto,
    pub dir: tempfile::TempDir,
}

/// Generous bound of every wait in the agent tests (a loaded CI machine; a passing run takes seconds).
pub const WAIT: Duration = Duration::from_secs(40);

impl Env {
    pub async fn start(devices: usize, tweak: impl FnOnce(AgentSpec<'_>) -> AgentSpec<'_>) -> Env {
        init();
        let dir = tempfile::tempdir().unwrap();
        let mqtt = Mosquitto::start().unwrap();
        let registry = Registry::start().unwrap();
        let cloud = Cloud::connect(&mqtt, "cloud").await;
        let agent = Agent::start(tweak(AgentSpec::new(
            dir.path(),
            mqtt.port(),
            vec![registry.host()],
            devices,
        )));
        for d in &agent.devices {
            cloud
                .wait_for(&d.id, "firmware-state", "idle", WAIT, &agent)
                .await;
        }
        Env {
            agent,
            cloud,
            registry,
            mqtt,
            dir,
        }
    }

    /// Pushes `bytes` for the test chip as `fw/<repo_tag>`.
    pub async fn push(&self, repo_tag: &str, bytes: &[u8], version: &str) -> String {
        self.push_for(repo_tag, bytes, version, CHIP).await
    }

    pub async fn push_for(
        &self,
        repo_tag: &str,
        bytes: &[u8],
        version: &str,
        chip: &str,
    ) -> String {
        push(
            &self.registry,
            self.dir.path(),
            &format!("fw/{repo_tag}"),
            bytes,
            version,
            chip,
        )
        .await
    }

    pub fn device(&self, i: usize) -> SimDevice {
        self.agent.devices[i].clone()
    }

    /// Waits until device `i` reports `twin` = `value`.
    pub async fn wait(&self, i: usize, twin: &str, value: &str) {
        self.cloud
            .wait_for(&self.agent.devices[i].id, twin, value, WAIT, &self.agent)
            .await;
    }

    pub async fn wait_state_prefix(&self, i: usize, prefix: &str) {
        self.cloud
            .wait_state_prefix(&self.agent.devices[i].id, prefix, WAIT, &self.agent)
            .await;
    }

    /// Publishes a delta for device `i`.
    pub async fn intent(&self, i: usize, reference: &str) {
        self.cloud
            .delta(&self.agent.devices[i].id, reference, None)
            .await;
    }

    pub fn actual(&self, i: usize, twin: &str) -> Option<String> {
        self.cloud.actual(&self.agent.devices[i].id, twin)
    }
}
