//! The agent's configuration: a TOML file plus `TWINFLASH_EDGE__...` environment overrides, read with the `config`
//! crate and checked at start. Unknown keys are errors that name the key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use twinflash_artifact::Timeouts;
use twinflash_artifact::signature::{Mode, Policy};
use twinflash_flasher::FlasherConfig;

/// Prefix of the environment overrides: `TWINFLASH_EDGE__MQTT__URL=mqtt://...` sets `mqtt.url`.
pub const ENV_PREFIX: &str = "TWINFLASH_EDGE";

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// The KubeEdge node this agent runs on (used in logs and metrics).
    pub node: String,
    /// Journals, outbox and the artifact cache live here.
    pub state_dir: PathBuf,
    /// How devices and intents reach the agent: KubeEdge's MQTT twin topics (default) or DMI.
    #[serde(default)]
    pub kubeedge: KubeedgeConfig,
    /// The MQTT link to the node's broker (required in `mqtt` mode; unused in `dmi` mode).
    #[serde(default = "no_mqtt")]
    pub mqtt: MqttConfig,
    /// Where firmware comes from.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// How much runs at once and how often a flash is tried.
    #[serde(default)]
    pub limits: Limits,
    /// Logs.
    #[serde(default)]
    pub log: LogConfig,
    /// Prometheus metrics and health endpoints.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Which firmware signatures the agent trusts, and whether it insists on one.
    #[serde(default)]
    pub signatures: SignaturesConfig,
    /// How reports are acknowledged and kept true in edgecore's twin store.
    #[serde(default)]
    pub twin: TwinConfig,
    /// The devices this agent flashes. In `dmi` mode optional: devices come from their Device objects, and an
    /// entry here wins over a Device of the same `namespace/name`.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
}

/// How devices and intents reach the agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// KubeEdge's MQTT twin topics on the node's broker; devices from `[[devices]]`; the desired value published by
    /// twinflash-cloud. The default, so an existing configuration keeps its transport on an upgrade.
    #[default]
    Mqtt,
    /// KubeEdge's Device Management Interface: the agent registers with edgecore as the mapper of
    /// `kubeedge.protocol`; devices, their settings and the desired value come from the Device objects.
    Dmi,
}

/// `[kubeedge]`: the delivery path (docs/operations.md, "KubeEdge-native (DMI)").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeedgeConfig {
    /// `mqtt` (default) or `dmi`.
    #[serde(default)]
    pub mode: DeliveryMode,
    /// edgecore's DMI server: `modules.deviceTwin.dmiSockPath` of edgecore.yaml plus `dmi.sock`.
    #[serde(default = "default_dmi_socket")]
    pub dmi_socket: PathBuf,
    /// The agent's own socket, where edgecore calls it (a plain absolute path); absent: `<state_dir>/dmi.sock`.
    #[serde(default)]
    pub mapper_socket: Option<PathBuf>,
    /// The protocol name the Devices and DeviceModels of this agent use (`spec.protocol.protocolName`).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// The mapper's name in edgecore.
    #[serde(default = "default_protocol")]
    pub mapper_name: String,
    /// DMI calls per second this agent makes at most, sustained. edgecore allows one per second, with a burst of
    /// 100, for all mappers of the node together.
    #[serde(default = "default_dmi_rate")]
    pub dmi_calls_per_sec: f64,
    /// DMI calls this agent may make at once (its share of edgecore's burst of 100).
    #[serde(default = "default_dmi_burst")]
    pub dmi_burst: u32,
    /// Two reports of one device are at least this far apart: edgecore applies a report's twins in no fixed order,
    /// and a quick second report could be overtaken by the first.
    #[serde(default = "default_dmi_spacing")]
    pub report_spacing_ms: u64,
    /// A settled state (installed, failed, rejected, idle) is reported once more this long after edgecore accepted
    /// it, in two spaced calls: cloudcore can write back an older value of a twin (it patches the whole twin list from
    /// a cache that lags), and nothing else would follow a settled state before the report cycle. 0: never.
    #[serde(default = "default_dmi_confirm")]
    pub confirm_after_ms: u64,
}

impl Default for KubeedgeConfig {
    fn default() -> Self {
        KubeedgeConfig {
            mode: DeliveryMode::default(),
            dmi_socket: default_dmi_socket(),
            mapper_socket: None,
            protocol: default_protocol(),
            mapper_name: default_protocol(),
            dmi_calls_per_sec: default_dmi_rate(),
            dmi_burst: default_dmi_burst(),
            report_spacing_ms: default_dmi_spacing(),
            confirm_after_ms: default_dmi_confirm(),
        }
    }
}

impl KubeedgeConfig {
    /// The agent's own DMI socket.
    pub fn mapper_socket(&self, state_dir: &Path) -> PathBuf {
        self.mapper_socket
            .clone()
            .unwrap_or_else(|| state_dir.join("dmi.sock"))
    }
}

fn no_mqtt() -> MqttConfig {
    MqttConfig::new("")
}

fn default_dmi_socket() -> PathBuf {
    PathBuf::from("/etc/kubeedge/dmi.sock")
}
fn default_protocol() -> String {
    "twinflash".into()
}
fn default_dmi_rate() -> f64 {
    1.0
}
fn default_dmi_burst() -> u32 {
    90
}
fn default_dmi_spacing() -> u64 {
    1_000
}
fn default_dmi_confirm() -> u64 {
    5_000
}

/// `[mqtt]`: the settings every twinflash program shares (`twinflash_mqtt::MqttSettings`). The agent's
/// `client_id` names its persistent session (the report connection uses `<client_id>-pub`); it is required.
pub type MqttConfig = twinflash_mqtt::MqttSettings;

/// `[registry]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registry hosts (`host:port`) reached over plain HTTP instead of HTTPS.
    #[serde(default)]
    pub plain_http: Vec<String>,
    /// Extra CA certificate (PEM) for registries.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to registries that want mutual TLS (with `key_file`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// A docker `config.json` with registry credentials.
    #[serde(default)]
    pub docker_config: Option<PathBuf>,
    /// Username for every registry (with `password_file`).
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password for `username`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Sources tried in order before the origin registry.
    #[serde(default)]
    pub mirrors: Vec<MirrorConfig>,
    /// Largest artifact accepted, in bytes (`too-large` above it).
    #[serde(default = "default_max_artifact")]
    pub max_artifact_bytes: u64,
    /// Cap of the artifact cache in bytes; least recently used blobs are evicted, never the installed or wanted one.
    #[serde(default)]
    pub cache_max_bytes: Option<u64>,
    /// Download rate limit in bytes per second, for metered links.
    #[serde(default)]
    pub rate_limit_bytes_per_sec: Option<u64>,
    /// A partial download is made durable (fsync and hash checkpoint) every this many bytes: at most this much is
    /// fetched again after a crash.
    #[serde(default = "default_checkpoint")]
    pub checkpoint_bytes: u64,
    /// Seconds to connect to a registry or token service.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Idle timeout in seconds: a request that receives no byte for this long fails.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Total deadline of one manifest request in seconds (`waiting:registry-unreachable` when hit).
    #[serde(default = "default_manifest_timeout")]
    pub manifest_timeout_secs: u64,
    /// Total deadline of one token-service request in seconds (`waiting:registry-unreachable` when hit).
    #[serde(default = "default_token_timeout")]
    pub token_timeout_secs: u64,
    /// Total deadline of one blob request in seconds; the download then resumes with Range at once, so a slow
    /// download that makes progress still completes.
    #[serde(default = "default_blob_request_timeout")]
    pub blob_request_timeout_secs: u64,
}

impl RegistryConfig {
    /// The fetcher's timeouts from the `*_secs` keys.
    pub fn timeouts(&self) -> Timeouts {
        let secs = std::time::Duration::from_secs;
        Timeouts {
            connect: secs(self.connect_timeout_secs),
            idle: secs(self.idle_timeout_secs),
            manifest: secs(self.manifest_timeout_secs),
            token: secs(self.token_timeout_secs),
            blob_request: secs(self.blob_request_timeout_secs),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            plain_http: Vec::new(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            docker_config: None,
            username: None,
            password_file: None,
            mirrors: Vec::new(),
            max_artifact_bytes: default_max_artifact(),
            cache_max_bytes: None,
            rate_limit_bytes_per_sec: None,
            checkpoint_bytes: default_checkpoint(),
            connect_timeout_secs: default_connect_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            manifest_timeout_secs: default_manifest_timeout(),
            token_timeout_secs: default_token_timeout(),
            blob_request_timeout_secs: default_blob_request_timeout(),
        }
    }
}

/// `[[registry.mirrors]]`: another registry, or an OCI image-layout directory (a USB stick at an air-gapped site).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MirrorConfig {
    /// A registry host (`host:port`) serving the same repositories.
    Registry {
        /// `host:port`.
        host: String,
    },
    /// An OCI image layout directory.
    Layout {
        /// The directory holding `index.json` and `blobs/`.
        path: PathBuf,
    },
}

/// `[signatures]`: the signature policy the fetcher applies after the manifest and before a byte of the layer
/// (docs/security.md). Off by default, so an existing configuration keeps working on an upgrade.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignaturesConfig {
    /// `off` (default: not looked up), `warn` (checked, logged, used anyway) or `require` (only an artifact signed by
    /// a trusted key is flashed: otherwise `rejected:unsigned` or `rejected:signature-invalid`).
    #[serde(default)]
    pub mode: Mode,
    /// PEM public keys (cosign's `cosign.pub`); any one suffices. A signer is reported by its file's stem.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
}

impl SignaturesConfig {
    /// Reads the key files into the fetcher's policy. A missing or unreadable key, or `warn`/`require` without a
    /// key, is a config error naming the file: an agent that was told to require signatures must not start
    /// without being able to check them.
    pub fn policy(&self) -> Result<Policy, ConfigError> {
        Policy::load(self.mode, &self.keys).map_err(|e| ConfigError::Invalid {
            key: "signatures.keys".into(),
            reason: e.0,
        })
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Downloads running at once across all devices.
    #[serde(default = "default_downloads")]
    pub downloads: usize,
    /// Flashes running at once across all devices (each probe still does one at a time).
    #[serde(default = "default_flashes")]
    pub flashes: usize,
    /// Flash attempts of one intent before it is `failed:flash-failed`.
    #[serde(default = "default_attempts")]
    pub flash_attempts: u32,
    /// Largest inbound MQTT message handled, in bytes; a larger one is acknowledged and dropped unread (one log line,
    /// `twinflash_edge_mqtt_dropped_messages_total{reason="oversized"}`). At most the transport's cap (16 MiB).
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// While a device's intents arrive faster than they complete (one replaced another before it ended): reports of
    /// it that may leave at once. Otherwise every report leaves as soon as the one before it was acknowledged.
    #[serde(default = "default_report_burst")]
    pub report_burst: u32,
    /// Past that burst, one report of such a device per this many milliseconds; reports made meanwhile merge (the
    /// latest value of each twin wins), so a storm of intents costs bounded messages.
    #[serde(default = "default_report_interval")]
    pub report_interval_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            downloads: default_downloads(),
            flashes: default_flashes(),
            flash_attempts: default_attempts(),
            max_message_bytes: default_max_message(),
            report_burst: default_report_burst(),
            report_interval_ms: default_report_interval(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `twinflash_edge=debug`; `RUST_LOG` wins when set.
    #[serde(default)]
    pub level: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Who acknowledges a twin report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acknowledgement {
    /// edgecore's (or twinflash-cloud's relay's) `twin/update/result` carrying the report's `event_id`: the report
    /// is in edgecore's store. A PUBACK only says the broker has it, and a broker with no edgecore subscribed (edgecore
    /// reconnects every 5 s) PUBACKs and drops it (docs/kubeedge.md section 8).
    #[default]
    Edgecore,
    /// The broker's PUBACK, for a lab broker with neither edgecore nor twinflash-cloud (nobody answers reports).
    /// Nothing checks edgecore's store then: anti-entropy is off.
    Broker,
}

/// `[twin]`: end-to-end acknowledged reports, anti-entropy and the progress budget (docs/operations.md section 8).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwinConfig {
    /// Who acknowledges a report: `edgecore` (default) or `broker`.
    #[serde(default)]
    pub acknowledgement: Acknowledgement,
    /// A report or `twin/get` unanswered this long is sent again (the wait doubles per attempt, with jitter).
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_ms: u64,
    /// Cap of that wait, in seconds.
    #[serde(default = "default_retry_max")]
    pub retry_max_secs: u64,
    /// Every this many seconds (with up to 10 % jitter), and after every reconnect, the agent reads edgecore's
    /// stored twin of each device (`twin/get`) and reports again only what differs from its own state. 0: only after
    /// reconnects.
    #[serde(default = "default_anti_entropy")]
    pub anti_entropy_secs: u64,
    /// Progress (`downloading:N`, `flashing:N`) of one device is reported at most once per this many milliseconds,
    /// and only when it changed; states and results always go out.
    #[serde(default = "default_progress_interval")]
    pub progress_interval_ms: u64,
}

impl Default for TwinConfig {
    fn default() -> Self {
        TwinConfig {
            acknowledgement: Acknowledgement::default(),
            ack_timeout_ms: default_ack_timeout(),
            retry_max_secs: default_retry_max(),
            anti_entropy_secs: default_anti_entropy(),
            progress_interval_ms: default_progress_interval(),
        }
    }
}

fn default_ack_timeout() -> u64 {
    2_000
}
fn default_retry_max() -> u64 {
    30
}
fn default_anti_entropy() -> u64 {
    30
}
fn default_progress_interval() -> u64 {
    1_000
}

/// `[metrics]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` for `/metrics`, `/healthz` and `/readyz`; absent: no listener.
    #[serde(default)]
    pub listen: Option<String>,
    /// `/readyz` answers 503 once the broker link has been down longer than this many seconds (0: never for that
    /// reason).
    #[serde(default = "default_unready_after")]
    pub unready_after_broker_down_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            unready_after_broker_down_secs: default_unready_after(),
        }
    }
}

/// `[[devices]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// `namespace/name` (namespaced layout) or `name` (legacy layout), as KubeEdge names the Device.
    pub id: String,
    /// The device's chip (a probe-rs chip name or family); artifacts for another chip are `rejected:chip-mismatch`.
    pub chip: String,
    /// Accept an intent with a lower semver than the installed firmware.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Prefix of the three firmware twin names (`<prefix>firmware`, ...), for devices with several firmware parts.
    #[serde(default)]
    pub twin_prefix: String,
    /// How this device is flashed.
    pub flasher: FlasherConfig,
}

fn default_max_artifact() -> u64 {
    64 * 1024 * 1024
}
fn default_checkpoint() -> u64 {
    1024 * 1024
}
fn default_connect_timeout() -> u64 {
    Timeouts::default().connect.as_secs()
}
fn default_idle_timeout() -> u64 {
    Timeouts::default().idle.as_secs()
}
fn default_manifest_timeout() -> u64 {
    Timeouts::default().manifest.as_secs()
}
fn default_token_timeout() -> u64 {
    Timeouts::default().token.as_secs()
}
fn default_blob_request_timeout() -> u64 {
    Timeouts::default().blob_request.as_secs()
}
fn default_downloads() -> usize {
    4
}
fn default_flashes() -> usize {
    8
}
fn default_attempts() -> u32 {
    3
}
fn default_max_message() -> usize {
    twinflash_mqtt::DEFAULT_MAX_MESSAGE
}
fn default_report_burst() -> u32 {
    10
}
fn default_report_interval() -> u64 {
    500
}
fn default_unready_after() -> u64 {
    60
}

/// The configuration could not be read or is wrong. The message names the file or the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing, unreadable, not TOML, or a key has the wrong type or is unknown.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// A value is well-formed but not acceptable.
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl EdgeConfig {
    /// Reads `path` and the `TWINFLASH_EDGE__...` environment, then checks the result.
    pub fn load(path: &Path) -> Result<EdgeConfig, ConfigError> {
        let cfg: EdgeConfig = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: device ids fit the topic layout and are unique, limits are positive, the URL is one
    /// the link understands.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: &str| ConfigError::Invalid {
            key,
            reason: reason.to_owned(),
        };
        let mqtt = self.kubeedge.mode == DeliveryMode::Mqtt;
        if mqtt && self.mqtt.url.is_empty() {
            return Err(invalid(
                "mqtt.url".into(),
                "missing: the [mqtt] section is required in mqtt mode (`kubeedge.mode`)",
            ));
        }
        if mqtt && !(self.mqtt.url.starts_with("mqtt://") || self.mqtt.url.starts_with("mqtts://"))
        {
            return Err(invalid(
                "mqtt.url".into(),
                "must start with mqtt:// or mqtts://",
            ));
        }
        if mqtt && self.mqtt.client_id.is_empty() {
            return Err(invalid(
                "mqtt.client_id".into(),
                "must not be empty (a persistent session needs a stable id)",
            ));
        }
        if self.registry.cert_file.is_some() != self.registry.key_file.is_some() {
            return Err(invalid(
                "registry.cert_file".into(),
                "cert_file and key_file go together (a client certificate needs its key)",
            ));
        }
        if self.registry.checkpoint_bytes < 4096 {
            return Err(invalid(
                "registry.checkpoint_bytes".into(),
                "must be at least 4096",
            ));
        }
        let r = &self.registry;
        for (key, secs) in [
            ("connect_timeout_secs", r.connect_timeout_secs),
            ("idle_timeout_secs", r.idle_timeout_secs),
            ("manifest_timeout_secs", r.manifest_timeout_secs),
            ("token_timeout_secs", r.token_timeout_secs),
            ("blob_request_timeout_secs", r.blob_request_timeout_secs),
        ] {
            if secs == 0 {
                return Err(invalid(format!("registry.{key}"), "must be at least 1"));
            }
        }
        if self.limits.downloads == 0 || self.limits.flashes == 0 || self.limits.flash_attempts == 0
        {
            return Err(invalid(
                "limits".into(),
                "downloads, flashes and flash_attempts must be at least 1",
            ));
        }
        if !(1024..=twinflash_mqtt::MAX_INCOMING_PACKET).contains(&self.limits.max_message_bytes) {
            return Err(invalid(
                "limits.max_message_bytes".into(),
                &format!(
                    "must be between 1024 and the transport's cap of {} bytes",
                    twinflash_mqtt::MAX_INCOMING_PACKET
                ),
            ));
        }
        let t = &self.twin;
        if t.ack_timeout_ms < 100 {
            return Err(invalid(
                "twin.ack_timeout_ms".into(),
                "must be at least 100",
            ));
        }
        if t.retry_max_secs == 0 || t.retry_max_secs * 1000 < t.ack_timeout_ms {
            return Err(invalid(
                "twin.retry_max_secs".into(),
                "must be at least 1 and at least twin.ack_timeout_ms",
            ));
        }
        if mqtt && self.devices.is_empty() {
            return Err(invalid(
                "devices".into(),
                "at least one [[devices]] entry is needed (or `kubeedge.mode = \"dmi\"`: devices from their Device objects)",
            ));
        }
        if !mqtt {
            self.check_dmi()?;
        }
        self.signatures.policy()?;
        // Device ids of DMI devices are always `namespace/name`.
        let layout = if mqtt {
            self.mqtt.topic_layout
        } else {
            mqtt_schema::TopicLayout::Namespaced
        };
        let mut seen = HashSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            if let Err((key, reason)) = d.check(layout) {
                return Err(invalid(format!("devices[{i}].{key}"), &reason));
            }
            if !seen.insert(d.id.as_str()) {
                return Err(invalid(
                    format!("devices[{i}].id"),
                    &format!("{:?} appears twice", d.id),
                ));
            }
        }
        Ok(())
    }

    fn check_dmi(&self) -> Result<(), ConfigError> {
        let k = &self.kubeedge;
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: format!("kubeedge.{key}"),
            reason,
        };
        if !k.dmi_socket.is_absolute() {
            return Err(invalid("dmi_socket", "must be an absolute path".into()));
        }
        if let Err(e) = twinflash_dmi::mapper::MapperInfo::new(
            &k.mapper_name,
            env!("CARGO_PKG_VERSION"),
            &k.protocol,
            &k.mapper_socket(&self.state_dir),
        ) {
            let key = match e {
                twinflash_dmi::mapper::MapperInfoError::Empty("name") => "mapper_name",
                twinflash_dmi::mapper::MapperInfoError::Empty(_) => "protocol",
                twinflash_dmi::mapper::MapperInfoError::Address(_) => "mapper_socket",
            };
            return Err(invalid(key, e.to_string()));
        }
        if !(k.dmi_calls_per_sec > 0.0 && k.dmi_calls_per_sec <= 100.0) {
            return Err(invalid(
                "dmi_calls_per_sec",
                "must be above 0 and at most 100 (edgecore allows 1 per second for the whole node)"
                    .into(),
            ));
        }
        if k.dmi_burst == 0 || k.dmi_burst > 100 {
            return Err(invalid(
                "dmi_burst",
                "must be between 1 and 100 (edgecore's burst for the whole node)".into(),
            ));
        }
        Ok(())
    }
}

impl DeviceConfig {
    /// Checks what serde cannot, for a `[[devices]]` entry and for a Device's config data alike: the id fits the
    /// topic layout, the twin prefix is usable, the chip is named. Returns the key (relative to the entry) and why.
    pub fn check(&self, layout: mqtt_schema::TopicLayout) -> Result<(), (String, String)> {
        if let Err(e) = mqtt_schema::DeviceId::parse(&self.id, layout) {
            return Err((
                "id".into(),
                format!(
                    "{:?} is not a Device id for the {layout:?} topic layout (namespaced: `namespace/name`, legacy: `name`): {e}",
                    self.id
                ),
            ));
        }
        if let Err(e) = mqtt_schema::TwinNames::with_prefix(&self.twin_prefix) {
            return Err(("twin_prefix".into(), e.to_string()));
        }
        if self.chip.is_empty() {
            return Err(("chip".into(), "must not be empty".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
