//! Options of the verbs that talk MQTT (set, status): the broker, its TLS and credentials, the topic layout; and a
//! connection that waits for its CONNACK.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use mqtt_schema::{DeviceId, TopicLayout};
use rumqttc::{AsyncClient, Event, EventLoop, Packet};

/// How to reach the broker.
#[derive(Debug, Clone, clap::Args)]
pub struct MqttArgs {
    /// The broker: `mqtt://host:port` or `mqtts://host:port`.
    #[arg(long = "mqtt", env = "TWINFLASH_MQTT", value_name = "URL")]
    pub url: String,
    /// CA certificate (PEM) of the broker, for mqtts://.
    #[arg(long, value_name = "FILE")]
    pub mqtt_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE")]
    pub mqtt_cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE")]
    pub mqtt_key_file: Option<PathBuf>,
    /// Broker username.
    #[arg(long, env = "TWINFLASH_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    /// Broker password.
    #[arg(long, env = "TWINFLASH_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,
    /// Device ids in topics: `namespaced` (`ns/name`, KubeEdge >= 1.16.2) or `legacy` (`name`).
    #[arg(long, default_value = "namespaced", value_name = "LAYOUT")]
    pub layout: TopicLayout,
}

impl MqttArgs {
    /// Parses a device id for the layout, with the reason when it does not fit.
    pub fn device(&self, id: &str) -> anyhow::Result<DeviceId> {
        DeviceId::parse(id, self.layout).with_context(|| {
            format!(
                "device {id:?} is not a Device id for the {} layout [invalid-reference]",
                self.layout
            )
        })
    }

    /// Connects with a clean session and waits for the broker's CONNACK (at most 10 s).
    pub async fn connect(&self, who: &str) -> anyhow::Result<(AsyncClient, EventLoop)> {
        let endpoint = twinflash_mqtt::MqttSettings {
            username: self.mqtt_username.clone(),
            password: self.mqtt_password.clone(),
            ca_file: self.mqtt_ca_file.clone(),
            cert_file: self.mqtt_cert_file.clone(),
            key_file: self.mqtt_key_file.clone(),
            topic_layout: self.layout,
            ..twinflash_mqtt::MqttSettings::new(self.url.clone())
        };
        let client_id = format!("twinflash-{who}-{}", std::process::id());
        let opts = twinflash_mqtt::options(&endpoint, &client_id, false)
            .map_err(|e| anyhow::anyhow!("{e} [{}]", e.code()))?;
        let (client, mut events) = twinflash_mqtt::client(opts);
        let connack = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match connack {
            Ok(Ok(())) => Ok((client, events)),
            Ok(Err(e)) => anyhow::bail!("cannot connect to {}: {e} [broker-unreachable]", self.url),
            Err(_) => anyhow::bail!(
                "no answer from {} within 10 s [broker-unreachable]",
                self.url
            ),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
