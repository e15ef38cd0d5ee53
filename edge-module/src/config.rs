//! The agent's configuration: a TOML file plus `TWINFLASH_EDGE__...` environment overrides, read with the `config`
//! crate and checked at start. Unknown keys are errors that name the key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use twinflash_artifact::Timeouts;
use twinflash_artifact::signature::{Mode, Policy};
use twinflash_flasher::FlasherConfig;

#[path = "config_confirm.rs"]
mod confirm;
pub use confirm::{ConfirmConfig, ConfirmKind, VersionPattern};

/// Prefix of the environment overrides: `TWINFLASH_EDGE__MQTT__URL=mqtt://...` sets `mqtt.url`.
pub const ENV_PREFIX: &str = "TWINFLASH_EDGE";

/// Most downloads, and most flashes, at once (`limits.downloads`, `limits.flashes`). tokio's semaphore panics above
/// `usize::MAX >> 3`; a node has no use for more than this.
pub const MAX_CONCURRENCY: usize = 1024;
/// Longest time setting (every `*_secs` and `*_ms` key): one day. Far longer ones overflow the clock arithmetic of
/// timers and backoffs (a panic in the middle of the run), and no deadline or period of a node needs more.
pub const MAX_DURATION_SECS: u64 = 86_400;
/// Largest file a setting names that the agent reads (a key, a certificate, a password, a docker config.json).
pub const MAX_SETTING_FILE_BYTES: u64 = 1024 * 1024;
/// Longest unix socket path (`sun_path` holds 108 bytes with the terminating NUL): a longer one cannot be bound or
/// dialled.
pub const MAX_SOCKET_PATH: usize = 107;
/// Largest MQTT keep-alive: the protocol's 16-bit field (rumqttc silently truncates a larger one).
pub const MAX_KEEP_ALIVE_SECS: u64 = 65_535;

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
    /// Follow a registry's redirect (or token realm) to a link-local address (169.254.0.0/16, fe80::/10: where
    /// cloud metadata services answer). Off: such a redirect fails the fetch with `redirect-refused`.
    #[serde(default)]
    pub allow_link_local_redirects: bool,
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
            allow_link_local_redirects: false,
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignaturesConfig {
    /// `off` (default: not looked up), `warn` (checked, logged, used anyway) or `require` (only an artifact signed by
    /// a trusted key is flashed: otherwise `rejected:unsigned` or `rejected:signature-invalid`).
    #[serde(default)]
    pub mode: Mode,
    /// PEM public keys (cosign's `cosign.pub`); any one suffices. A signer is reported by its file's stem.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    /// The total deadline of one signature lookup, every source asked at once (default 120 s, at most 3600). When it
    /// passes, what was found counts; a source not done is a transient failure (`waiting:registry-unreachable` under
    /// `require`).
    #[serde(default = "default_lookup_deadline")]
    pub lookup_deadline_secs: u64,
}

impl Default for SignaturesConfig {
    fn default() -> Self {
        SignaturesConfig {
            mode: Mode::default(),
            keys: Vec::new(),
            lookup_deadline_secs: default_lookup_deadline(),
        }
    }
}

fn default_lookup_deadline() -> u64 {
    twinflash_artifact::signature::LookupLimits::default()
        .deadline
        .as_secs()
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
    /// `twinflash_edge_mqtt_dropped_messages_total{reason="oversized"}`). At most the transport's cap (16 MiB). Also
    /// the largest message of one call on the DMI mapper socket, there at most 512 KiB
    /// (`twinflash_dmi::transport::MAX_MESSAGE`).
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
    /// How the device proves it runs a new firmware after its flash (`[devices.confirm]`). Without it, `installed`
    /// means written and read back; with it, the device reports `confirming` until the check passes, and the
    /// previous firmware is flashed back when it does not (`failed:boot-failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<ConfirmConfig>,
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
        cfg.check_files()?;
        Ok(cfg)
    }

    /// Checks what serde cannot, so that no setting that passes fails later (issue 23): device ids fit the topic
    /// layout, the state directory's file names and Kubernetes' names, and are unique; limits, sizes and times are
    /// within what the agent can run with; addresses and paths are usable. Reads no file ([`EdgeConfig::check_files`]
    /// does).
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: &str| ConfigError::Invalid {
            key,
            reason: reason.to_owned(),
        };
        let mqtt = self.kubeedge.mode == DeliveryMode::Mqtt;
        if !crate::dmi::spec::valid_name(&self.node) {
            return Err(invalid(
                "node".into(),
                "must be the Kubernetes name of the edge node (lower-case letters, digits, `-` and `.`, at most 253)",
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid(
                "state_dir".into(),
                "must not be empty (the agent would write into its working directory)",
            ));
        }
        self.check_durations()?;
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
        if mqtt && let Err(e) = twinflash_mqtt::parse_url(&self.mqtt.url) {
            return Err(invalid("mqtt.url".into(), &e.to_string()));
        }
        if mqtt && self.mqtt.client_id.is_empty() {
            return Err(invalid(
                "mqtt.client_id".into(),
                "must not be empty (a persistent session needs a stable id)",
            ));
        }
        if mqtt && self.mqtt.keep_alive_secs > MAX_KEEP_ALIVE_SECS {
            return Err(invalid(
                "mqtt.keep_alive_secs".into(),
                &format!("must be at most {MAX_KEEP_ALIVE_SECS} (MQTT's 16-bit keep-alive)"),
            ));
        }
        self.check_registry()?;
        if self.registry.cert_file.is_some() != self.registry.key_file.is_some() {
            return Err(invalid(
                "registry.cert_file".into(),
                "cert_file and key_file go together (a client certificate needs its key)",
            ));
        }
        let deadline = self.signatures.lookup_deadline_secs;
        if !(1..=3600).contains(&deadline) {
            return Err(invalid(
                "signatures.lookup_deadline_secs".into(),
                "must be between 1 and 3600",
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
        for (key, n) in [
            ("downloads", self.limits.downloads),
            ("flashes", self.limits.flashes),
        ] {
            if !(1..=MAX_CONCURRENCY).contains(&n) {
                return Err(invalid(
                    format!("limits.{key}"),
                    &format!("must be between 1 and {MAX_CONCURRENCY}"),
                ));
            }
        }
        if self.limits.flash_attempts == 0 {
            return Err(invalid(
                "limits.flash_attempts".into(),
                "must be at least 1",
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
        if t.retry_max_secs == 0 || t.retry_max_secs.saturating_mul(1000) < t.ack_timeout_ms {
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
        if let Some(level) = &self.log.level
            && let Err(e) = level.parse::<tracing_subscriber::filter::Targets>()
        {
            return Err(invalid(
                "log.level".into(),
                &format!(
                    "{e} (a level, or `target=level` directives such as `info,twinflash_edge=debug`)"
                ),
            ));
        }
        if let Some(listen) = &self.metrics.listen {
            parse_listen(listen)?;
        }
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
            // The rules the agent's files and KubeEdge apply to the same id (a longer id passed this check and
            // then failed every journal write).
            let names_ok = d.id.split('/').all(crate::dmi::spec::valid_name);
            if !names_ok {
                return Err(invalid(
                    format!("devices[{i}].id"),
                    &format!(
                        "{:?}: namespace and name must be Kubernetes names (lower-case letters, digits, `-` and `.`, at most 253 characters each)",
                        mqtt_schema::clip::clip(&d.id).to_string()
                    ),
                ));
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

    /// Every time setting is at most [`MAX_DURATION_SECS`].
    fn check_durations(&self) -> Result<(), ConfigError> {
        let (r, t) = (&self.registry, &self.twin);
        let ms = MAX_DURATION_SECS * 1000;
        for (key, value, max) in [
            (
                "registry.connect_timeout_secs",
                r.connect_timeout_secs,
                MAX_DURATION_SECS,
            ),
            (
                "registry.idle_timeout_secs",
                r.idle_timeout_secs,
                MAX_DURATION_SECS,
            ),
            (
                "registry.manifest_timeout_secs",
                r.manifest_timeout_secs,
                MAX_DURATION_SECS,
            ),
            (
                "registry.token_timeout_secs",
                r.token_timeout_secs,
                MAX_DURATION_SECS,
            ),
            (
                "registry.blob_request_timeout_secs",
                r.blob_request_timeout_secs,
                MAX_DURATION_SECS,
            ),
            ("twin.ack_timeout_ms", t.ack_timeout_ms, ms),
            ("twin.retry_max_secs", t.retry_max_secs, MAX_DURATION_SECS),
            (
                "twin.anti_entropy_secs",
                t.anti_entropy_secs,
                MAX_DURATION_SECS,
            ),
            ("twin.progress_interval_ms", t.progress_interval_ms, ms),
            (
                "limits.report_interval_ms",
                self.limits.report_interval_ms,
                ms,
            ),
            (
                "kubeedge.report_spacing_ms",
                self.kubeedge.report_spacing_ms,
                ms,
            ),
            (
                "metrics.unready_after_broker_down_secs",
                self.metrics.unready_after_broker_down_secs,
                MAX_DURATION_SECS,
            ),
            (
                "mqtt.reconnect_max_secs",
                self.mqtt.reconnect_max_secs,
                MAX_DURATION_SECS,
            ),
        ] {
            if value > max {
                let unit = if key.ends_with("_ms") { "ms" } else { "s" };
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    reason: format!("must be at most {max} {unit} (one day)"),
                });
            }
        }
        Ok(())
    }

    /// `[registry]`: hosts are `host[:port]`, paths are not empty, sizes are usable.
    fn check_registry(&self) -> Result<(), ConfigError> {
        let r = &self.registry;
        let invalid = |key: String, reason: String| ConfigError::Invalid {
            key: format!("registry.{key}"),
            reason,
        };
        for (i, host) in r.plain_http.iter().enumerate() {
            check_host(host).map_err(|e| invalid(format!("plain_http[{i}]"), e))?;
        }
        for (i, m) in r.mirrors.iter().enumerate() {
            match m {
                MirrorConfig::Registry { host } => {
                    check_host(host).map_err(|e| invalid(format!("mirrors[{i}].host"), e))?;
                }
                MirrorConfig::Layout { path } if path.as_os_str().is_empty() => {
                    return Err(invalid(
                        format!("mirrors[{i}].path"),
                        "must not be empty (it would name the agent's working directory)".into(),
                    ));
                }
                MirrorConfig::Layout { .. } => {}
            }
        }
        if r.max_artifact_bytes == 0 {
            return Err(invalid(
                "max_artifact_bytes".into(),
                "must be at least 1 (0 refuses every artifact as too-large)".into(),
            ));
        }
        Ok(())
    }

    /// Opens every file a setting names, as the agent will read it, so that `--check-config` (and the start) fails
    /// on it now rather than at the first download or connection: each must be a regular file of at most
    /// [`MAX_SETTING_FILE_BYTES`] (a FIFO, `/dev/zero` or a directory is refused without being read), certificates
    /// and keys must hold what TLS will look for, and credentials must resolve as the fetcher resolves them.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let r = &self.registry;
        let mqtt = self.kubeedge.mode == DeliveryMode::Mqtt;
        let m = &self.mqtt;
        let mut files: Vec<(String, &Option<PathBuf>, Pem)> = vec![
            ("registry.ca_file".into(), &r.ca_file, Pem::Certificates),
            ("registry.cert_file".into(), &r.cert_file, Pem::Certificates),
            ("registry.key_file".into(), &r.key_file, Pem::PrivateKey),
            ("registry.password_file".into(), &r.password_file, Pem::None),
            ("registry.docker_config".into(), &r.docker_config, Pem::None),
        ];
        if mqtt {
            files.extend([
                ("mqtt.ca_file".into(), &m.ca_file, Pem::Certificates),
                ("mqtt.cert_file".into(), &m.cert_file, Pem::Certificates),
                ("mqtt.key_file".into(), &m.key_file, Pem::PrivateKey),
                ("mqtt.password_file".into(), &m.password_file, Pem::None),
            ]);
        }
        let keys: Vec<Option<PathBuf>> = self.signatures.keys.iter().cloned().map(Some).collect();
        for (i, key) in keys.iter().enumerate() {
            files.push((format!("signatures.keys[{i}]"), key, Pem::None));
        }
        for (key, path, pem) in files {
            if let Some(path) = path {
                read_setting_file(path, pem)
                    .map_err(|reason| ConfigError::Invalid { key, reason })?;
            }
        }
        // The same resolution the fetcher does at start (a username needs its password file, and the reverse).
        twinflash_artifact::Credentials {
            username: r.username.clone(),
            password_file: r.password_file.clone(),
            bearer_token: None,
            docker_config: r.docker_config.clone(),
        }
        .resolve()
        .map_err(|e| ConfigError::Invalid {
            key: "registry".into(),
            reason: e.to_string(),
        })?;
        if mqtt {
            // The options the link connects with (TLS files, credentials).
            twinflash_mqtt::options(m, &m.client_id, true).map_err(|e| ConfigError::Invalid {
                key: "mqtt".into(),
                reason: e.to_string(),
            })?;
        }
        self.signatures.policy()?;
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
        let mapper_socket = k.mapper_socket(&self.state_dir);
        for (key, path) in [
            ("dmi_socket", &k.dmi_socket),
            ("mapper_socket", &mapper_socket),
        ] {
            let len = path.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(invalid(
                    key,
                    format!(
                        "{}: a unix socket path of {len} bytes, longer than {MAX_SOCKET_PATH}, cannot be used",
                        path.display()
                    ),
                ));
            }
        }
        if normalise(&mapper_socket) == normalise(&k.dmi_socket) {
            return Err(invalid(
                "mapper_socket",
                format!(
                    "{} is edgecore's own DMI socket (kubeedge.dmi_socket): the agent would take it over and \
                     cut every mapper of the node off",
                    mapper_socket.display()
                ),
            ));
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
        if let Some(c) = &self.confirm {
            c.check(&self.flasher)?;
        }
        let empty_path = match &self.flasher {
            FlasherConfig::Simulated(s) if s.dir.as_os_str().is_empty() => Some("flasher.dir"),
            FlasherConfig::Command(c)
                if c.workdir.as_ref().is_some_and(|w| w.as_os_str().is_empty()) =>
            {
                Some("flasher.workdir")
            }
            _ => None,
        };
        if let Some(key) = empty_path {
            return Err((
                key.into(),
                "must not be empty (it would name the agent's working directory)".into(),
            ));
        }
        Ok(())
    }
}

/// `metrics.listen` as the address it binds: an `ip:port` (`127.0.0.1:9464`, `[::1]:9464`). A host name is refused:
/// what it resolves to could change between the check and the start.
/// Port 0 is refused too: the kernel would pick a port no probe knows.
pub fn parse_listen(listen: &str) -> Result<std::net::SocketAddr, ConfigError> {
    let refused = |why: String| ConfigError::Invalid {
        key: "metrics.listen".into(),
        reason: format!(
            "{:?} is not an ip:port address such as 127.0.0.1:9464 ({why})",
            mqtt_schema::clip::clip(listen).to_string()
        ),
    };
    let addr: std::net::SocketAddr = listen.parse().map_err(|e| refused(format!("{e}")))?;
    if addr.port() == 0 {
        return Err(refused("port 0 would be a port no probe knows".into()));
    }
    Ok(addr)
}

/// A registry host as `plain_http` and mirrors name it: `host[:port]`, nothing else (no scheme, path or user).
fn check_host(host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && !host.contains(['@', '/'])
        && host.parse::<axum::http::uri::Authority>().is_ok();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a registry host (`host` or `host:port`, without a scheme or path)",
            mqtt_schema::clip::clip(host).to_string()
        ))
    }
}

/// What a setting's file must hold besides being readable.
#[derive(Debug, Clone, Copy)]
enum Pem {
    /// Nothing checked here (its reader checks it: a password, a docker config, a signature key).
    None,
    /// At least one PEM certificate, and nothing that fails to parse.
    Certificates,
    /// A PEM private key (PKCS#8, PKCS#1 or SEC1).
    PrivateKey,
}

/// Reads a file a setting names, bounded, and checks what it holds (see [`Pem`]).
fn read_setting_file(path: &Path, pem: Pem) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    if path.as_os_str().is_empty() {
        return Err("must not be empty".into());
    }
    let bytes = crate::state_dir::read_bounded(path, MAX_SETTING_FILE_BYTES).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("{}: {e}", path.display())
        } else {
            e.to_string()
        }
    })?;
    let what = match pem {
        Pem::None => return Ok(()),
        Pem::Certificates => {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
            match certs {
                Ok(c) if !c.is_empty() => return Ok(()),
                Ok(_) => "holds no PEM certificate".to_owned(),
                Err(e) => format!("is not PEM ({e})"),
            }
        }
        Pem::PrivateKey => match PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(_) => return Ok(()),
            Err(e) => format!("holds no PEM private key ({e})"),
        },
    };
    Err(format!("{} {what}", path.display()))
}

/// `path` as the kernel resolves it, as far as it exists: the whole path when it does, else its directory's real
/// path and its name, else the path with `.`, `..` and doubled slashes taken out.
fn normalise(path: &Path) -> PathBuf {
    use std::path::Component;
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let mut lexical = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    match (lexical.parent(), lexical.file_name()) {
        (Some(dir), Some(name)) => match std::fs::canonicalize(dir) {
            Ok(real) => real.join(name),
            Err(_) => lexical,
        },
        _ => lexical,
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
