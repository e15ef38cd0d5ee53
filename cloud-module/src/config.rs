//! The controller configuration: a TOML file plus `TWINFLASH_CLOUD__<SECTION>__<KEY>` environment
//! overrides (the `config` crate). Unknown keys are errors, so a typo never silently falls back to
//! a default.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mqtt_schema::ErrorCode;
use serde::Deserialize;

/// Prefix of the environment overrides (`TWINFLASH_CLOUD__MQTT__URL=...`).
pub const ENV_PREFIX: &str = "TWINFLASH_CLOUD";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How intents reach the edge.
    #[serde(default)]
    pub mode: Mode,
    /// Where KubeEdge keeps `status.twins`.
    #[serde(default)]
    pub status_location: StatusLocation,
    /// Every Device is reconciled again after this many seconds.
    #[serde(default = "default_resync")]
    pub resync_period_secs: u64,
    /// Which Devices to watch.
    #[serde(default)]
    pub watch: WatchConfig,
    /// The MQTT broker the intents go to. Required in modes `edgecore` and `direct`; unused (and optional) in
    /// `dmi`, where KubeEdge itself delivers the Device's spec to the mapper.
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
    /// Registry access.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The nudge of Devices whose status went stale (`crate::anti_entropy`).
    #[serde(default)]
    pub anti_entropy: AntiEntropyConfig,
    /// Which Devices get only signed firmware (`crate::signatures`).
    #[serde(default)]
    pub signatures: SignaturesConfig,
}

/// The signature policy of the controller: checked before an intent is published (or, in mode `dmi`, a tag
/// pinned), so an unsigned artifact never reaches a Device under `require`. The edge agent has its own policy;
/// this one stops the intent at the source and tells the operator why, on the Device.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignaturesConfig {
    /// The policy of every Device no override names: `off` (default), `warn` or `require`.
    #[serde(default)]
    pub mode: SignatureMode,
    /// PEM public keys (SPKI) trusted by the default policy; a signer is named by its file stem.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    /// Policies of some namespaces or Devices; the most specific wins (namespace + device, then namespace).
    #[serde(default)]
    pub overrides: Vec<SignatureOverride>,
}

/// The policy of one namespace, or of one Device in it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureOverride {
    /// The namespace.
    pub namespace: String,
    /// One Device of the namespace; unset: every Device of it.
    #[serde(default)]
    pub device: Option<String>,
    /// What the policy does.
    pub mode: SignatureMode,
    /// Its trusted keys; empty: the default policy's keys.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
}

/// What a signature policy does (`off`, `warn`, `require`): twinflash-artifact's, shared with the agent.
pub use twinflash_artifact::signature::Mode as SignatureMode;

/// The controller's anti-entropy nudge (docs/operations.md section 8.2).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AntiEntropyConfig {
    /// A Device whose status shows no final state of its intent, with a report older than this, gets a `twin/get`
    /// (at most one per period). 0 disables the nudge.
    #[serde(default = "default_anti_entropy_period")]
    pub period_secs: u64,
}

impl Default for AntiEntropyConfig {
    fn default() -> Self {
        AntiEntropyConfig {
            period_secs: default_anti_entropy_period(),
        }
    }
}

fn default_anti_entropy_period() -> u64 {
    60
}

impl AntiEntropyConfig {
    /// [`AntiEntropyConfig::period_secs`] as a duration (zero: disabled).
    pub fn period(&self) -> Duration {
        Duration::from_secs(self.period_secs)
    }
}

fn default_resync() -> u64 {
    300
}

/// Delivery mode (docs/contract.md section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// edgecore at the edge stores the `expected` value and emits the delta.
    #[default]
    Edgecore,
    /// No edgecore: twinflash-cloud publishes the delta and answers `twin/get` itself.
    Direct,
    /// KubeEdge >= 1.15 with twinflash-edge as the DMI mapper: edgecore hands the Device's spec to the agent
    /// itself, so nothing is published over MQTT. The controller pins tags into the `firmware` property's
    /// `desired.metadata` and nudges stale Devices through a spec change (`crate::dmi`).
    Dmi,
}

impl Mode {
    /// Whether intents travel over MQTT in this mode (and so `[mqtt]` is required).
    pub const fn uses_mqtt(self) -> bool {
        !matches!(self, Mode::Dmi)
    }
}

/// Where `status.twins` lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StatusLocation {
    /// KubeEdge >= 1.23: a separate `DeviceStatus` object (resource `devicestatuses`).
    #[default]
    DeviceStatus,
    /// KubeEdge < 1.23: `Device.status`.
    Device,
}

/// Which Devices are watched.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// One namespace; unset or empty means every namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// A label selector on Devices (`twinflash.io/managed=true`); unset means every Device.
    #[serde(default)]
    pub label_selector: Option<String>,
}

/// The MQTT connection: the settings every twinflash program shares (`twinflash_mqtt::MqttSettings`). An empty
/// `client_id` means `twinflash-cloud`; the password is read from `password_file` (never written in the config).
pub type MqttConfig = twinflash_mqtt::MqttSettings;

/// The controller's MQTT client id when none is configured.
pub const DEFAULT_CLIENT_ID: &str = "twinflash-cloud";

/// Registry access.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registry hosts (`host:port`) spoken to over plain HTTP.
    #[serde(default)]
    pub plain_http: Vec<String>,
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Listen address of `GET /metrics`.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9100))
}

/// The configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or the environment could not be read or parsed (unknown key, wrong type).
    #[error("cannot load the configuration{}: {source}", path.as_ref().map(|p| format!(" from {}", p.display())).unwrap_or_default())]
    Load {
        /// The file, when one was given.
        path: Option<PathBuf>,
        /// What the `config` crate said.
        #[source]
        source: config::ConfigError,
    },
    /// A value is well-formed but not acceptable.
    #[error("invalid configuration key {key}: {reason}")]
    Invalid {
        /// Dotted key (`mqtt.url`).
        key: &'static str,
        /// Why.
        reason: String,
    },
}

impl ConfigError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Internal
    }
}

impl Config {
    /// Loads `path` (TOML) and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with_env(path, None)
    }

    /// Loads `path` and the given environment (`None`: the process environment).
    pub fn load_with_env(
        path: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let load_err = |source| ConfigError::Load {
            path: path.map(Path::to_path_buf),
            source,
        };
        let mut builder = config::Config::builder();
        if let Some(p) = path {
            builder = builder.add_source(
                config::File::from(p)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let env_source = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("registry.plain_http")
            .with_list_parse_key("signatures.keys")
            .source(env.map(|m| m.into_iter().collect()));
        let mut cfg: Config = builder
            .add_source(env_source)
            .build()
            .map_err(load_err)?
            .try_deserialize()
            .map_err(load_err)?;
        if let Some(mqtt) = cfg.mqtt.as_mut().filter(|m| m.client_id.is_empty()) {
            mqtt.client_id = DEFAULT_CLIENT_ID.to_owned();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.mqtt {
            Some(mqtt) => validate_mqtt(mqtt)?,
            None if self.mode.uses_mqtt() => {
                return invalid(
                    "mqtt",
                    "an [mqtt] section is required in modes edgecore and direct (only mode dmi delivers without MQTT)",
                );
            }
            None => {}
        }
        if self.resync_period_secs == 0 {
            return invalid("resync_period_secs", "must be at least 1");
        }
        if self
            .watch
            .namespace
            .as_deref()
            .is_some_and(|n| n.contains('/'))
        {
            return invalid("watch.namespace", "is a namespace name, not a path");
        }
        self.signatures.validate()
    }

    /// [`Config::resync_period_secs`] as a duration.
    pub fn resync_period(&self) -> Duration {
        Duration::from_secs(self.resync_period_secs)
    }

    /// The namespace to watch (`None`: all).
    pub fn namespace(&self) -> Option<&str> {
        self.watch.namespace.as_deref().filter(|n| !n.is_empty())
    }
}

impl SignaturesConfig {
    /// Checks what can be checked without reading the key files: a policy that verifies has a key (its own or
    /// the default's), every override names a namespace, and no two overrides name the same scope.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mode != SignatureMode::Off && self.keys.is_empty() {
            return invalid(
                "signatures.keys",
                &format!(
                    "mode \"{}\" needs at least one trusted key",
                    self.mode.as_str()
                ),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for o in &self.overrides {
            let scope = o.scope();
            if o.namespace.is_empty() || o.namespace.contains('/') {
                return invalid(
                    "signatures.overrides",
                    &format!("namespace {:?} is not a namespace name", o.namespace),
                );
            }
            if o.device.as_deref().is_some_and(str::is_empty) {
                return invalid(
                    "signatures.overrides",
                    &format!("{scope}: device is empty (leave it out for the whole namespace)"),
                );
            }
            if o.mode != SignatureMode::Off && o.keys.is_empty() && self.keys.is_empty() {
                return invalid(
                    "signatures.overrides",
                    &format!(
                        "{scope}: mode \"{}\" needs at least one trusted key (its own or signatures.keys)",
                        o.mode.as_str()
                    ),
                );
            }
            if !seen.insert(scope.clone()) {
                return invalid(
                    "signatures.overrides",
                    &format!("{scope} is named by two overrides"),
                );
            }
        }
        Ok(())
    }

    /// Whether any Device's policy looks at signatures (otherwise no verifier is built).
    pub fn any_enabled(&self) -> bool {
        self.mode != SignatureMode::Off
            || self.overrides.iter().any(|o| o.mode != SignatureMode::Off)
    }
}

impl SignatureOverride {
    /// `namespace` or `namespace/device`: how logs and Events name the policy.
    pub fn scope(&self) -> String {
        match &self.device {
            Some(d) => format!("{}/{d}", self.namespace),
            None => self.namespace.clone(),
        }
    }
}

/// The refusal of a well-formed but unacceptable value.
fn invalid(key: &'static str, reason: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        reason: reason.to_owned(),
    })
}

/// Checks the `[mqtt]` section: a usable URL scheme and host, and TLS files that fit it.
fn validate_mqtt(mqtt: &MqttConfig) -> Result<(), ConfigError> {
    let scheme = mqtt.url.split_once("://").map(|(s, _)| s);
    let tls = match scheme {
        Some("mqtt" | "tcp") => false,
        Some("mqtts" | "ssl") => true,
        _ => {
            return invalid(
                "mqtt.url",
                "must start with mqtt://, mqtts://, tcp:// or ssl://",
            );
        }
    };
    if mqtt
        .url
        .split_once("://")
        .is_none_or(|(_, rest)| rest.is_empty())
    {
        return invalid("mqtt.url", "has no host");
    }
    if mqtt.cert_file.is_some() != mqtt.key_file.is_some() {
        return invalid("mqtt.cert_file", "cert_file and key_file go together");
    }
    if !tls && (mqtt.ca_file.is_some() || mqtt.cert_file.is_some()) {
        return invalid("mqtt.ca_file", "TLS files given for a plain mqtt:// url");
    }
    Ok(())
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
