//! `twinflash set`: set the wanted firmware of a device over MQTT, without a cluster (labs, tests, the demo), and
//! wait for edgecore's acknowledgement (`twin/update/result` with the intent's event id, docs/kubeedge.md section 8).
//! A tag is pinned to its digest through the registry first: the edge only ever sees digests.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use std::sync::atomic::{AtomicU64, Ordering};

use mqtt_schema::gojson::decode;
use mqtt_schema::{
    BaseMessage, DeviceTopicKind, DeviceTwinResult, FirmwareRef, MsgTwin, ResultMessage, Topic,
    TwinNames, TwinValue, TypeMetadata, ValueMetadata, to_go_json,
};
use rumqttc::{Event, Packet, QoS};

use super::mqtt::{MqttArgs, now_ms};
use super::registry::{ClientCertArgs, RegistryArgs};

/// How an intent reaches the agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Publish `expected` on `twin/update` and wait for edgecore's `update/result` with the same event id: edgecore
    /// stored it and sends the agent the delta (KubeEdge at the edge).
    #[default]
    Edgecore,
    /// The same `twin/update`, answered by twinflash-cloud's relay (its direct mode, where no edgecore runs), which
    /// stores it as edgecore does, acknowledges it and sends the delta.
    Direct,
    /// Publish the delta itself, retained, for a lab with neither edgecore nor twinflash-cloud. Nothing stores or
    /// acknowledges it.
    Delta,
}

impl Mode {
    /// Who answers the update in this mode.
    fn answerer(self) -> &'static str {
        match self {
            Mode::Direct => "twinflash-cloud's relay",
            Mode::Edgecore | Mode::Delta => "edgecore",
        }
    }
}

/// Set the wanted firmware of a device through its twin (MQTT only, no cluster needed).
///
/// In edgecore and direct mode the intent is a `twin/update` with a unique event id, and `set` waits for the
/// `twin/update/result` carrying that id: the only proof that edgecore (or the relay) stored it. Exit status:
/// non-zero on a 400 (refused), a 404 (device unknown to edgecore) or no answer within --wait.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  twinflash set default/blinky-01 registry.local:5000/fw/blinky:1.4.2 --mqtt mqtt://127.0.0.1:1883 --plain-http\n  twinflash set default/blinky-01 registry.local:5000/fw/blinky@sha256:<64 hex> --mqtt mqtt://127.0.0.1:1883 --mode direct\n  twinflash set default/blinky-01 registry.local:5000/fw/blinky@sha256:<64 hex> --mqtt mqtt://127.0.0.1:1883 --mode delta\n\nA 404 means the Device never reached edgecore (KubeEdge drops Devices created before their edge node first\nconnected): re-create the Device; see docs/operations.md."
)]
pub struct Cmd {
    /// The Device: `namespace/name` (`name` with --layout legacy).
    pub device: String,
    /// The firmware: a digest-pinned reference, or a tag that is pinned through the registry first.
    pub reference: String,
    /// How the intent reaches the agent: `edgecore` (acknowledged by edgecore), `direct` (acknowledged by
    /// twinflash-cloud's relay), `delta` (a retained delta, never acknowledged).
    #[arg(long, value_enum, default_value_t = Mode::Edgecore)]
    pub mode: Mode,
    /// Seconds to wait for the acknowledgement (`twin/update/result` with the intent's event id); 0 does not wait.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub wait: u64,
    #[command(flatten)]
    pub mqtt: MqttArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub client_cert: ClientCertArgs,
    /// Print what was published (and what edgecore stored) as JSON.
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
        &cmd.registry.tls(&cmd.reference, &(&cmd.client_cert).into()),
        &cmd.registry.credentials()?,
        &cmd.reference,
    )
    .await
    .with_context(|| format!("cannot pin {} to a digest [{}]", cmd.reference, "registry"))?;
    FirmwareRef::parse(&inspected.pinned_reference)
        .with_context(|| format!("{} [invalid-reference]", inspected.pinned_reference))
}

/// A unique event id: the acknowledgement is matched by it.
pub fn event_id(now: i64) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "twinflash-set-{}-{now}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The topic, payload and retain flag of the intent with this event id.
pub fn message(
    mode: Mode,
    device: &mqtt_schema::DeviceId,
    reference: &FirmwareRef,
    event_id: &str,
    now: i64,
) -> (String, Vec<u8>, bool) {
    let names = TwinNames::default();
    let base = BaseMessage::new(event_id, now);
    match mode {
        Mode::Edgecore | Mode::Direct => (
            Topic::device(device, DeviceTopicKind::TwinUpdate).to_string(),
            to_go_json(&mqtt_schema::intent(base, &names, reference)),
            false,
        ),
        Mode::Delta => {
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

/// What the answer to an intent says: stored (the result's firmware twin), or the error line to exit with.
pub fn judge(
    mode: Mode,
    device: &mqtt_schema::DeviceId,
    names: &TwinNames,
    payload: &[u8],
) -> anyhow::Result<Option<MsgTwin>> {
    let who = mode.answerer();
    let err: ResultMessage = decode(payload)
        .map_err(|e| anyhow::anyhow!("{who} sent an unreadable result: {e} [invalid-message]"))?;
    match err.code {
        0 => {}
        400 => anyhow::bail!(
            "{who} refused the intent: code 400: {} [invalid-message]",
            err.reason
        ),
        404 => anyhow::bail!(
            "{device} is unknown to {who} (code 404: {}); a Device created before its edge node first connected never \
             reaches edgecore: re-create the Device (docs/operations.md, \"unknown to edgecore\") [not-found]",
            err.reason
        ),
        code => anyhow::bail!("{who} answered code {code}: {} [internal]", err.reason),
    }
    let result: DeviceTwinResult = decode(payload)
        .map_err(|e| anyhow::anyhow!("{who} sent an unreadable result: {e} [invalid-message]"))?;
    Ok(result.twin(&names.firmware).cloned())
}

/// Runs the verb.
pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let names = TwinNames::default();
    let device = cmd.mqtt.device(&cmd.device)?;
    let reference = pin(&cmd).await?;
    let now = now_ms();
    let id = event_id(now);
    let (topic, payload, retain) = message(cmd.mode, &device, &reference, &id, now);
    let (client, mut events) = cmd.mqtt.connect("set").await?;
    let waits = cmd.mode != Mode::Delta && cmd.wait > 0;
    let result_topic = Topic::device(&device, DeviceTopicKind::TwinUpdateResult).to_string();
    if waits {
        // Subscribed before publishing, or a fast answer is missed (results are not retained).
        client
            .subscribe(&result_topic, QoS::AtLeastOnce)
            .await
            .context("cannot subscribe to the result [broker-unreachable]")?;
        poll_until(&mut events, Duration::from_secs(10), |p| {
            matches!(p, Packet::SubAck(_)).then_some(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}, subscribing to {result_topic} [broker-unreachable]"))?;
    }
    client
        .publish(&topic, QoS::AtLeastOnce, retain, payload)
        .await
        .context("cannot queue the intent [broker-unreachable]")?;
    let wait = Duration::from_secs(cmd.wait);
    let mut answer = None;
    let acked = poll_until(&mut events, Duration::from_secs(10), |p| match p {
        Packet::PubAck(_) => Some(true),
        Packet::Publish(p) if p.topic == result_topic => {
            answer = Some(p.payload.to_vec());
            None
        }
        _ => None,
    })
    .await;
    if let Err(e) = acked {
        anyhow::bail!("{e} [broker-unreachable]");
    }
    let who = cmd.mode.answerer();
    let mut stored = None;
    if waits {
        let is_ours =
            |payload: &[u8]| decode::<BaseMessage>(payload).is_ok_and(|b| b.event_id == id);
        let payload = match answer.filter(|p| is_ours(p)) {
            Some(p) => p,
            None => poll_until(&mut events, wait, |p| match p {
                Packet::Publish(p) if p.topic == result_topic && is_ours(&p.payload) => {
                    Some(p.payload.to_vec())
                }
                _ => None,
            })
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{who} did not acknowledge within {} s (the intent may still arrive) [timeout]",
                    cmd.wait
                )
            })?,
        };
        stored = judge(cmd.mode, &device, &names, &payload)?;
    }
    let _ = client.disconnect().await;
    let stored_value = stored
        .as_ref()
        .and_then(|t| t.expected.as_ref())
        .and_then(|e| e.value.clone());
    if cmd.json {
        let out = serde_json::json!({
            "device": device.to_string(),
            "reference": reference.to_string(),
            "mode": format!("{:?}", cmd.mode).to_lowercase(),
            "topic": topic,
            "retained": retain,
            "event_id": id,
            "acknowledged": waits,
            "stored": stored.as_ref().map(|t| {
                serde_json::from_slice::<serde_json::Value>(&to_go_json(t)).unwrap_or_default()
            }),
        });
        outln!("{out}");
    } else {
        match (cmd.mode, waits) {
            (Mode::Delta, _) => eprintln!(
                "{device}: published the retained delta on {topic} (delta mode: nothing stores or acknowledges it)"
            ),
            (_, false) => eprintln!(
                "{device}: intent published on {topic}, not waiting for {who}'s acknowledgement (--wait 0)"
            ),
            (_, true) => eprintln!(
                "{device}: {who} stored firmware expected = {} (event {id})",
                stored_value.as_deref().unwrap_or("-")
            ),
        }
        outln!("{reference}");
    }
    Ok(())
}

/// Polls until `f` picks a packet, the connection fails, or `within` passes.
async fn poll_until<T>(
    events: &mut rumqttc::EventLoop,
    within: Duration,
    mut f: impl FnMut(&Packet) -> Option<T>,
) -> Result<T, String> {
    let found = tokio::time::timeout(within, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(p)) => {
                    if let Some(t) = f(&p) {
                        return Ok(t);
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(format!("the broker dropped the connection: {e}")),
            }
        }
    })
    .await;
    match found {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the broker did not answer within {} s",
            within.as_secs()
        )),
    }
}
