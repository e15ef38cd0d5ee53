//! `twinflash set`: set the wanted firmware of a device over MQTT, without a cluster (labs, tests, the demo).
//! A tag is pinned to its digest through the registry first: the edge only ever sees digests.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use mqtt_schema::{
    BaseMessage, DeviceTopicKind, FirmwareRef, MsgTwin, Topic, TwinNames, TwinValue, TypeMetadata,
    ValueMetadata, to_go_json,
};
use rumqttc::{Event, Packet, QoS};

use super::mqtt::{MqttArgs, now_ms};
use super::registry::RegistryArgs;

/// How an intent reaches the agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Publish `expected` on `twin/update`; edgecore stores it and sends the agent the delta (KubeEdge at the edge).
    #[default]
    Edgecore,
    /// Publish the delta itself, retained, as twinflash-cloud does where no edgecore runs.
    Direct,
}

/// Set the wanted firmware of a device through its twin (MQTT only, no cluster needed).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  twinflash set default/blinky-01 registry.local:5000/fw/blinky:1.4.2 --mqtt mqtt://127.0.0.1:1883 --plain-http\n  twinflash set default/blinky-01 registry.local:5000/fw/blinky@sha256:<64 hex> --mqtt mqtt://127.0.0.1:1883 --mode direct"
)]
pub struct Cmd {
    /// The Device: `namespace/name` (`name` with --layout legacy).
    pub device: String,
    /// The firmware: a digest-pinned reference, or a tag that is pinned through the registry first.
    pub reference: String,
    /// How the intent reaches the agent.
    #[arg(long, value_enum, default_value_t = Mode::Edgecore)]
    pub mode: Mode,
    #[command(flatten)]
    pub mqtt: MqttArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print what was published as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The digest-pinned reference: as given when it has a digest, else pinned through the registry.
async fn pin(cmd: &Cmd) -> anyhow::Result<FirmwareRef> {
    if cmd.reference.contains('@') {
        return FirmwareRef::parse(&cmd.reference)
            .with_context(|| format!("{} [invalid-reference]", cmd.reference));
    }
    let inspected = twinflash_artifact::inspect(
        &cmd.registry.tls(&cmd.reference),
        &cmd.registry.credentials()?,
        &cmd.reference,
    )
    .await
    .with_context(|| format!("cannot pin {} to a digest [{}]", cmd.reference, "registry"))?;
    FirmwareRef::parse(&inspected.pinned_reference)
        .with_context(|| format!("{} [invalid-reference]", inspected.pinned_reference))
}

/// The topic, payload and retain flag of the intent.
pub fn message(
    mode: Mode,
    device: &mqtt_schema::DeviceId,
    reference: &FirmwareRef,
    now: i64,
) -> (String, Vec<u8>, bool) {
    let names = TwinNames::default();
    let base = BaseMessage::new(format!("twinflash-set-{now}"), now);
    match mode {
        Mode::Edgecore => (
            Topic::device(device, DeviceTopicKind::TwinUpdate).to_string(),
            to_go_json(&mqtt_schema::intent(base, &names, reference)),
            false,
        ),
        Mode::Direct => {
            let mut twins = BTreeMap::new();
            twins.insert(
                names.firmware.clone(),
                MsgTwin {
                    expected: Some(TwinValue {
                        value: Some(reference.to_string()),
                        metadata: Some(ValueMetadata { timestamp: now }),
                    }),
                    optional: Some(false),
                    metadata: Some(TypeMetadata::new(mqtt_schema::firmware::TWIN_TYPE_STRING)),
                    ..MsgTwin::default()
                },
            );
            // Expected differs from the (unknown, empty) actual, so a delta is always built.
            let delta = mqtt_schema::device_twin_delta(base, &twins).0;
            (
                Topic::device(device, DeviceTopicKind::TwinUpdateDelta).to_string(),
                to_go_json(&delta),
                true,
            )
        }
    }
}

/// Runs the verb.
pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let device = cmd.mqtt.device(&cmd.device)?;
    let reference = pin(&cmd).await?;
    let (topic, payload, retain) = message(cmd.mode, &device, &reference, now_ms());
    let (client, mut events) = cmd.mqtt.connect("set").await?;
    client
        .publish(&topic, QoS::AtLeastOnce, retain, payload)
        .await
        .context("cannot queue the intent [broker-unreachable]")?;
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match acked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => anyhow::bail!("the broker dropped the connection: {e} [broker-unreachable]"),
        Err(_) => anyhow::bail!("the broker did not acknowledge within 10 s [broker-unreachable]"),
    }
    let _ = client.disconnect().await;
    if cmd.json {
        let out = serde_json::json!({
            "device": device.to_string(),
            "reference": reference.to_string(),
            "mode": format!("{:?}", cmd.mode).to_lowercase(),
            "topic": topic,
            "retained": retain,
        });
        outln!("{out}");
    } else {
        eprintln!(
            "{device}: wanted firmware set ({:?} mode, {topic})",
            cmd.mode
        );
        outln!("{reference}");
    }
    Ok(())
}
