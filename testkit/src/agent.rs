//! A real `twinflash-edge` process with simulated devices: its configuration written from an [`AgentSpec`], its
//! log, and the simulated devices' flash, counters and faults as files.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{CHIP, FLASH_SIZE, ORIGIN, agent_binary};

/// One simulated device of an agent.
#[derive(Clone, Debug)]
pub struct SimDevice {
    /// `<namespace>/sim-NN`, or `sim-NN` in the legacy layout (`sim`: [`AgentSpec::device_prefix`]).
    pub id: String,
    pub dir: PathBuf,
    pub ab: bool,
    /// Its flash size.
    pub size: u64,
    /// Its programming speed.
    pub write_bytes_per_sec: Option<u64>,
}

/// The DeviceModel every DMI test device uses (`devices.kubeedge.io/v1beta1`, as cloudcore sends it): protocol
/// `twinflash`, the three firmware properties.
pub fn device_model(namespace: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": "sim-model", "namespace": namespace, "resourceVersion": "1"},
        "spec": {
            "protocol": "twinflash",
            "properties": [
                {"name": "firmware", "type": "STRING", "accessMode": "ReadWrite"},
                {"name": "firmware-version", "type": "STRING", "accessMode": "ReadOnly"},
                {"name": "firmware-state", "type": "STRING", "accessMode": "ReadOnly"},
            ],
        },
    })
}

impl SimDevice {
    /// Its Device object (`devices.kubeedge.io/v1beta1`, as cloudcore sends it) for the DMI mode: protocol
    /// `twinflash` with the simulated backend's settings as flat config data (the origin, above 2^24, as a string),
    /// and `wanted` as the `firmware` property's desired value.
    pub fn device(&self, node: &str, wanted: &str) -> serde_json::Value {
        let (namespace, name) = self
            .id
            .split_once('/')
            .unwrap_or(("default", self.id.as_str()));
        let mut config = serde_json::json!({
            "flasher": "simulated",
            "chip": CHIP,
            "dir": self.dir.display().to_string(),
            "size": self.size,
            "origin": format!("0x{ORIGIN:x}"),
        });
        if let Some(w) = self.write_bytes_per_sec {
            config["write_bytes_per_sec"] = serde_json::json!(w);
        }
        serde_json::json!({
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "Device",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
            "spec": {
                "deviceModelRef": {"name": "sim-model"},
                "nodeName": node,
                "protocol": {"protocolName": "twinflash", "configData": config},
                "properties": [
                    {"name": "firmware", "desired": {"value": wanted, "metadata": {"type": "string"}}, "visitors": {}},
                    {"name": "firmware-version", "desired": {"value": ""}, "visitors": {}},
                    {"name": "firmware-state", "desired": {"value": ""}, "reportCycle": 60000, "visitors": {}},
                ],
            },
            "status": {},
        })
    }

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

/// A running `twinflash-edge` process.
pub struct Agent {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub devices: Vec<SimDevice>,
    child: Option<Child>,
    log: PathBuf,
}

/// How an [`Agent`] is configured; [`AgentSpec::new`] gives the defaults, a test changes what it needs.
pub struct AgentSpec<'a> {
    /// Where the agent's configuration, state, devices and log live (created if missing).
    pub dir: &'a Path,
    pub mqtt_port: u16,
    pub registry_hosts: Vec<String>,
    /// How many simulated devices: `<device_prefix>-NN` for NN from `first_device`.
    pub devices: usize,
    /// The name of the simulated devices before `-NN` (`sim`; real mode takes a name unique to the run, since the
    /// cluster outlives the test).
    pub device_prefix: String,
    /// The number of the first simulated device (several agents on one broker own distinct devices).
    pub first_device: usize,
    /// Edge node name (`node-a`).
    pub node: String,
    /// MQTT client id (unique per agent on one broker): `agent-<name of dir>`.
    pub client_id: String,
    /// `[limits] flash_attempts` (3).
    pub flash_attempts: u32,
    /// Extra lines in each `[[devices]]` (e.g. `allow_downgrade = true`).
    pub extra_device_toml: &'a str,
    /// The chip and the `[devices.flasher]` table of each device instead of the simulated one (e.g. a gdb backend on
    /// an emulated board); the device's [`SimDevice`] then says nothing about it.
    pub flasher_toml: Option<(&'a str, &'a str)>,
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
    /// DMI mode: edgecore's DMI socket. The file then has `[kubeedge] mode = "dmi"`, no `[mqtt]` and no
    /// `[[devices]]`: the simulated devices are declared by their Device objects ([`SimDevice::device`]).
    pub dmi: Option<PathBuf>,
    /// Extra lines in `[kubeedge]` (DMI mode).
    pub kubeedge_extra: String,
}

impl<'a> AgentSpec<'a> {
    pub fn new(dir: &'a Path, mqtt_port: u16, registry_hosts: Vec<String>, devices: usize) -> Self {
        AgentSpec {
            dir,
            mqtt_port,
            registry_hosts,
            devices,
            device_prefix: "sim".into(),
            first_device: 0,
            node: "node-a".into(),
            client_id: format!(
                "agent-{}",
                dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
            ),
            flash_attempts: 3,
            extra_device_toml: "",
            flasher_toml: None,
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
            dmi: None,
            kubeedge_extra: String::new(),
        }
    }
}

impl Agent {
    pub fn start(spec: AgentSpec<'_>) -> Agent {
        std::fs::create_dir_all(spec.dir).unwrap();
        let state_dir = spec.dir.join("state");
        let transport = match &spec.dmi {
            Some(socket) => format!(
                "[kubeedge]\nmode = \"dmi\"\ndmi_socket = \"{}\"\n{}",
                socket.display(),
                spec.kubeedge_extra
            ),
            None => format!(
                "[mqtt]\nurl = \"{}://127.0.0.1:{}\"\nclient_id = \"{}\"\n{}",
                spec.mqtt_scheme, spec.mqtt_port, spec.client_id, spec.mqtt_extra,
            ),
        };
        let mut toml = format!(
            "node = \"{}\"\nstate_dir = \"{}\"\n{}\
             [registry]\nplain_http = {:?}\n{}{}[limits]\nflash_attempts = {}\n{}[log]\nlevel = \"info,twinflash_edge=debug\"\n{}",
            spec.node,
            state_dir.display(),
            transport,
            spec.registry_hosts,
            spec.rate_limit
                .map(|r| format!("rate_limit_bytes_per_sec = {r}\n"))
                .unwrap_or_default(),
            spec.registry_extra,
            spec.flash_attempts,
            spec.limits_extra,
            spec.extra_sections,
        );
        let mut devices = Vec::new();
        for i in spec.first_device..spec.first_device + spec.devices {
            let name = format!("{}-{i:02}", spec.device_prefix);
            let id = if spec.legacy {
                name.clone()
            } else {
                format!("{}/{name}", spec.namespace)
            };
            let dir = spec.dir.join(&name);
            devices.push(SimDevice {
                id: id.clone(),
                dir: dir.clone(),
                ab: false,
                size: spec.flash_size,
                write_bytes_per_sec: spec.write_bytes_per_sec,
            });
            // In DMI mode the device is declared by its Device object (SimDevice::device).
            if spec.dmi.is_some() {
                continue;
            }
            if let Some((chip, flasher)) = spec.flasher_toml {
                toml.push_str(&format!(
                    "[[devices]]\nid = \"{id}\"\nchip = \"{chip}\"\n{}{flasher}",
                    spec.extra_device_toml
                ));
                continue;
            }
            toml.push_str(&format!(
                "[[devices]]\nid = \"{id}\"\nchip = \"{CHIP}\"\n{}[devices.flasher]\nkind = \"simulated\"\ndir = \"{}\"\nsize = {}\norigin = {ORIGIN}\n{}",
                spec.extra_device_toml,
                dir.display(),
                spec.flash_size,
                spec.write_bytes_per_sec.map(|w| format!("write_bytes_per_sec = {w}\n")).unwrap_or_default(),
            ));
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
