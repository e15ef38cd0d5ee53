//! The MQTT connection of every twinflash program (agent, controller, CLI): one place that turns a broker URL, TLS
//! files and credentials into rumqttc options, switches Nagle's algorithm off and paces reconnects.
//!
//! Written here because rumqttc leaves these to each caller; everything else (sessions, acks, what to publish)
//! belongs to the program.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use mqtt_schema::small_file::read_small_file;
use rumqttc::{AsyncClient, EventLoop, MqttOptions, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};

/// Largest MQTT packet sent (a report or a get result of a device with many twins is a few KiB).
pub const MAX_OUTGOING_PACKET: usize = 256 * 1024;

/// Largest MQTT packet the transport reads: the transport's cap, far above any message a program handles.
///
/// A program enforces its own, smaller limit on every message it receives (for the agent, `mqtt.max_message_bytes`)
/// and acknowledges and drops what exceeds it, so one oversized message costs nothing else. A packet over this cap
/// cannot even be read: rumqttc ends the connection ([`is_oversized`] says so), and a persistent session would
/// redeliver it at every reconnect. Programs with persistent sessions recover from that with one clean-session
/// connect (see twinflash-edge's link), and brokers should refuse such messages first (mosquitto's
/// `message_size_limit`, docs/operations.md).
pub const MAX_INCOMING_PACKET: usize = 16 * 1024 * 1024;

/// Default limit a program puts on one inbound message (a KubeEdge twin value is at most 512 characters, and the
/// largest message twinflash reads, a get result, is a few KiB).
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

/// True when the connection ended because the broker sent a packet over [`MAX_INCOMING_PACKET`].
pub fn is_oversized(err: &rumqttc::ConnectionError) -> bool {
    matches!(
        err,
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
        ))
    )
}

/// The `[mqtt]` settings of every twinflash program: the agent's and the controller's config sections are this one
/// type, and the CLI fills it from its flags. Unknown keys are errors that name the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    /// `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (TLS, default port 8883); `tcp://` and
    /// `ssl://` are accepted as their aliases.
    pub url: String,
    /// Client id. A persistent session (the agent) needs it stable and unique; empty means the program's default.
    #[serde(default)]
    pub client_id: String,
    /// Username, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password, if the broker wants one (prefer `password_file`, or an environment override).
    #[serde(default)]
    pub password: Option<String>,
    /// File holding the password (a mounted Secret); its trailing newline is ignored.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) that signs the broker's certificate; required for `mqtts://`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// `namespaced` (`{ns}/{name}` in topics, KubeEdge >= 1.16.2, the default) or `legacy` (`{name}`).
    #[serde(default)]
    pub topic_layout: mqtt_schema::TopicLayout,
    /// Keep-alive in seconds (at least 5).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// Cap of the reconnect backoff in seconds (exponential from 100 ms, with jitter).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_secs: u64,
}

fn default_keep_alive() -> u64 {
    30
}

fn default_reconnect_max() -> u64 {
    30
}

impl MqttSettings {
    /// Settings with defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> MqttSettings {
        MqttSettings {
            url: url.into(),
            client_id: String::new(),
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            topic_layout: mqtt_schema::TopicLayout::default(),
            keep_alive_secs: default_keep_alive(),
            reconnect_max_secs: default_reconnect_max(),
        }
    }

    /// The client id, or `default` when none is configured.
    pub fn client_id_or<'a>(&'a self, default: &'a str) -> &'a str {
        if self.client_id.is_empty() {
            default
        } else {
            &self.client_id
        }
    }

    /// The cap of the reconnect backoff (at least 1 s).
    pub fn reconnect_max(&self) -> Duration {
        Duration::from_secs(self.reconnect_max_secs.max(1))
    }

    /// The password: `password`, else the content of `password_file` (trailing newline removed).
    pub fn password(&self) -> Result<Option<String>, MqttError> {
        match (&self.password, &self.password_file) {
            (Some(p), _) => Ok(Some(p.clone())),
            (None, Some(file)) => {
                let bytes = read("mqtt.password_file", file)?;
                Ok(Some(
                    String::from_utf8_lossy(&bytes)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                ))
            }
            (None, None) => Ok(None),
        }
    }
}

/// The connection settings are wrong.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The URL is not `mqtt://host[:port]` or `mqtts://host[:port]`, or TLS settings are incomplete.
    #[error("mqtt url {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// A TLS or password file could not be read (`what` is its configuration key, e.g. `mqtt.ca_file`). The cause
    /// is part of the message, not a separate source, so a chained report prints it once.
    #[error("{what} {}: {cause}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
}

impl MqttError {
    /// The stable code of this error.
    pub fn code(&self) -> mqtt_schema::ErrorCode {
        mqtt_schema::ErrorCode::BrokerUnreachable
    }
}

/// The host, port and TLS flag of a broker URL.
pub fn parse_url(url: &str) -> Result<(String, u16, bool), MqttError> {
    let bad = |reason: &str| MqttError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let (tls, rest) = match url.split_once("://") {
        Some(("mqtts" | "ssl", r)) => (true, r),
        Some(("mqtt" | "tcp", r)) => (false, r),
        _ => {
            return Err(bad(
                "must start with mqtt:// or mqtts:// (also tcp:// or ssl://)",
            ));
        }
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| bad("the port is not a number"))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() || host.contains('/') {
        return Err(bad("no host"));
    }
    Ok((host.to_owned(), port, tls))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, MqttError> {
    read_small_file(path).map_err(|cause| MqttError::File {
        what,
        path: path.to_owned(),
        cause,
    })
}

/// rumqttc options for `endpoint`. `persistent`: a session the broker keeps (clean_session false) with manual acks;
/// otherwise a clean session with automatic acks.
pub fn options(
    endpoint: &MqttSettings,
    client_id: &str,
    persistent: bool,
) -> Result<MqttOptions, MqttError> {
    let (host, port, tls) = parse_url(&endpoint.url)?;
    if client_id.is_empty() {
        return Err(MqttError::Url {
            url: endpoint.url.clone(),
            reason: "the client id must not be empty".into(),
        });
    }
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_clean_session(!persistent)
        .set_manual_acks(persistent)
        .set_keep_alive(Duration::from_secs(endpoint.keep_alive_secs.max(5)))
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
        .set_request_channel_capacity(4096);
    if let Some(u) = &endpoint.username {
        opts.set_credentials(u.clone(), endpoint.password()?.unwrap_or_default());
    }
    if tls {
        let Some(ca_file) = &endpoint.ca_file else {
            return Err(MqttError::Url {
                url: endpoint.url.clone(),
                reason: "mqtts:// needs mqtt.ca_file (the CA that signs the broker's certificate)"
                    .into(),
            });
        };
        let client_auth = match (&endpoint.cert_file, &endpoint.key_file) {
            (Some(c), Some(k)) => Some((read("mqtt.cert_file", c)?, read("mqtt.key_file", k)?)),
            (None, None) => None,
            _ => {
                return Err(MqttError::Url {
                    url: endpoint.url.clone(),
                    reason: "mutual TLS needs both mqtt.cert_file and mqtt.key_file".into(),
                });
            }
        };
        opts.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: read("mqtt.ca_file", ca_file)?,
            alpn: None,
            client_auth,
        }));
    }
    Ok(opts)
}

/// A rumqttc client for `opts` with Nagle's algorithm off (a QoS 1 exchange otherwise waits ~40 ms for a delayed
/// ACK) and a bounded connect time.
pub fn client(opts: MqttOptions) -> (AsyncClient, EventLoop) {
    let (client, mut events) = AsyncClient::new(opts, 4096);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(10);
    events.set_network_options(net);
    (client, events)
}

/// Delays between reconnect attempts: exponential from 100 ms, with jitter, capped at `max`, forever.
pub fn reconnect_backoff(max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_ports_and_bad_ones_say_why() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1").unwrap(),
            ("127.0.0.1".into(), 1883, false)
        );
        assert_eq!(
            parse_url("mqtts://broker.local:8884/").unwrap(),
            ("broker.local".into(), 8884, true)
        );
        assert_eq!(parse_url("tcp://b").unwrap(), ("b".into(), 1883, false));
        assert_eq!(parse_url("ssl://b").unwrap(), ("b".into(), 8883, true));
        for bad in [
            "http://x:1",
            "mqtt://:1883",
            "mqtt://h:port",
            "mqtt://h:99999",
            "mqtt://a/b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_needs_a_ca_and_both_halves_of_a_client_certificate() {
        let mut e = MqttSettings::new("mqtts://127.0.0.1:8883");
        assert!(
            options(&e, "c", false)
                .unwrap_err()
                .to_string()
                .contains("mqtt.ca_file")
        );
        e.ca_file = Some("/nonexistent/ca.pem".into());
        e.cert_file = Some("/nonexistent/c.pem".into());
        assert!(
            options(&e, "c", false)
                .unwrap_err()
                .to_string()
                .contains("both")
        );
        e.key_file = Some("/nonexistent/c.key".into());
        assert!(
            options(&e, "c", false)
                .unwrap_err()
                .to_string()
                .contains("/nonexistent")
        );
        assert!(
            options(&MqttSettings::new("mqtt://h"), "", true).is_err(),
            "empty client id"
        );
    }

    #[test]
    fn persistent_sessions_ack_by_hand() {
        let o = options(&MqttSettings::new("mqtt://h:1"), "c", true).unwrap();
        assert!(!o.clean_session() && o.manual_acks());
        let o = options(&MqttSettings::new("mqtt://h:1"), "c", false).unwrap();
        assert!(o.clean_session() && !o.manual_acks());
    }

    #[test]
    fn settings_read_with_defaults_refuse_unknown_keys_and_read_the_password_file() {
        let s: MqttSettings =
            serde_json::from_str(r#"{"url":"mqtt://h","topic_layout":"legacy"}"#).unwrap();
        assert_eq!(s.topic_layout, mqtt_schema::TopicLayout::Legacy);
        assert_eq!((s.keep_alive_secs, s.reconnect_max_secs), (30, 30));
        assert_eq!(s.client_id_or("twinflash-cloud"), "twinflash-cloud");
        let err = serde_json::from_str::<MqttSettings>(r#"{"url":"mqtt://h","pasword":"x"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("pasword"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let mut s = MqttSettings::new("mqtt://h");
        s.password_file = Some(file);
        assert_eq!(s.password().unwrap().as_deref(), Some("s3cret"));
        s.password = Some("inline".into());
        assert_eq!(s.password().unwrap().as_deref(), Some("inline"));
        s.password = None;
        s.password_file = Some(dir.path().join("missing"));
        assert!(
            s.password()
                .unwrap_err()
                .to_string()
                .contains("mqtt.password_file")
        );
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let d: Vec<Duration> = reconnect_backoff(Duration::from_secs(2)).take(12).collect();
        assert!(d.iter().all(|x| *x <= Duration::from_secs(4)), "{d:?}"); // jitter may add up to the delay itself
        assert!(d[11] >= Duration::from_secs(2), "{d:?}");
    }
}
