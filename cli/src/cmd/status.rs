//! `twinflash status`: what devices report through their twins, over MQTT (no cluster needed).
//!
//! Reports are not retained on MQTT, so this watches: it asks `twin/get` (edgecore, or twinflash-cloud in direct
//! mode, answers with the whole twin), reads retained deltas (direct mode) and every report that arrives, for
//! `--wait` seconds, or until every device runs its wanted firmware (`--until-installed`).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use mqtt_schema::gojson::decode;
use mqtt_schema::{
    BaseMessage, DeviceTopicKind, DeviceTwinDelta, DeviceTwinResult, DeviceTwinUpdate,
    FirmwareState, Topic, TwinNames, to_go_json,
};
use rumqttc::{Event, Packet, QoS, SubscribeFilter};
use serde::Serialize;

use super::mqtt::{MqttArgs, now_ms};

/// Show what devices report: wanted firmware, installed firmware, version and state.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  twinflash status default/blinky-01 default/blinky-02 --mqtt mqtt://127.0.0.1:1883\n  twinflash status default/blinky-01 --mqtt mqtt://127.0.0.1:1883 --until-installed --wait 120"
)]
pub struct Cmd {
    /// Devices: `namespace/name` (`name` with --layout legacy).
    #[arg(required = true)]
    pub devices: Vec<String>,
    #[command(flatten)]
    pub mqtt: MqttArgs,
    /// Seconds to listen (the longest wait with --until-installed).
    #[arg(long, default_value_t = 3, value_name = "SECS")]
    pub wait: u64,
    /// Print every state change as it arrives.
    #[arg(long)]
    pub watch: bool,
    /// Stop as soon as every device reports `installed` for its wanted firmware; exit non-zero if one reports
    /// `failed:`/`rejected:` or the wait ends first.
    #[arg(long)]
    pub until_installed: bool,
    /// Print the table as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One device's twin as seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Row {
    /// `namespace/name`.
    pub device: String,
    /// The wanted firmware (expected), where seen.
    pub desired: Option<String>,
    /// The installed firmware (actual).
    pub reported: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// `firmware-state`.
    pub state: Option<String>,
}

impl Row {
    /// The reported state, when it is a readable `firmware-state` value.
    fn firmware_state(&self) -> Option<FirmwareState> {
        self.state.as_deref().and_then(|s| s.parse().ok())
    }

    fn converged(&self) -> bool {
        self.firmware_state() == Some(FirmwareState::Installed)
            && self.reported.is_some()
            && (self.desired.is_none() || self.desired == self.reported)
    }

    fn ended_badly(&self) -> bool {
        self.firmware_state().is_some_and(|s| s.failure().is_some())
    }
}

/// Applies one message to the rows.
fn apply(
    rows: &mut BTreeMap<String, Row>,
    names: &TwinNames,
    kind: DeviceTopicKind,
    device: &str,
    payload: &[u8],
) {
    let Some(row) = rows.get_mut(device) else {
        return;
    };
    match kind {
        DeviceTopicKind::TwinUpdate => {
            let Ok(u) = decode::<DeviceTwinUpdate>(payload) else {
                return;
            };
            let twin = u.twin.unwrap_or_default();
            let actual = |n: &str| {
                twin.get(n)
                    .cloned()
                    .flatten()
                    .and_then(|t| t.actual)
                    .and_then(|a| a.value)
            };
            let expected = twin
                .get(&names.firmware)
                .cloned()
                .flatten()
                .and_then(|t| t.expected)
                .and_then(|e| e.value);
            // An empty firmware or version means nothing verified is installed (the agent's report after a failed
            // flash that erased the old image): shown as absent.
            if let Some(v) = actual(&names.firmware) {
                row.reported = Some(v).filter(|v| !v.is_empty());
            }
            if let Some(v) = actual(&names.version) {
                row.version = Some(v).filter(|v| !v.is_empty());
            }
            if let Some(v) = actual(&names.state) {
                row.state = Some(v);
            }
            if let Some(v) = expected {
                row.desired = Some(v);
            }
        }
        DeviceTopicKind::TwinUpdateDelta => {
            if let Ok(d) = decode::<DeviceTwinDelta>(payload)
                && let Some(w) = d.wanted(&names.firmware)
            {
                row.desired = Some(w.to_owned());
            }
        }
        DeviceTopicKind::TwinGetResult => {
            let Ok(r) = decode::<DeviceTwinResult>(payload) else {
                return;
            };
            let twin = r.twin.unwrap_or_default();
            let get = |n: &str| twin.get(n).cloned().flatten();
            if let Some(t) = get(&names.firmware) {
                row.desired = t
                    .expected
                    .and_then(|e| e.value)
                    .filter(|v| !v.is_empty())
                    .or(row.desired.take());
                // Present but empty: nothing verified is installed.
                if let Some(v) = t.actual.and_then(|a| a.value) {
                    row.reported = Some(v).filter(|v| !v.is_empty());
                }
            }
            if let Some(v) = get(&names.version)
                .and_then(|t| t.actual)
                .and_then(|a| a.value)
            {
                row.version = Some(v).filter(|v| !v.is_empty());
            }
            if let Some(v) = get(&names.state)
                .and_then(|t| t.actual)
                .and_then(|a| a.value)
            {
                row.state = Some(v);
            }
        }
        _ => {}
    }
}

/// The rows as an aligned table.
pub fn table(rows: &[Row]) -> String {
    let cell = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut lines = vec![[
        "DEVICE".to_owned(),
        "DESIRED".into(),
        "REPORTED".into(),
        "VERSION".into(),
        "STATE".into(),
    ]];
    for r in rows {
        lines.push([
            r.device.clone(),
            cell(&r.desired),
            cell(&r.reported),
            cell(&r.version),
            cell(&r.state),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    lines
        .iter()
        .map(|l| {
            l.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs the verb.
pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let names = TwinNames::default();
    let mut ids = Vec::new();
    for d in &cmd.devices {
        ids.push(cmd.mqtt.device(d)?);
    }
    let mut rows: BTreeMap<String, Row> = ids
        .iter()
        .map(|id| {
            (
                id.to_string(),
                Row {
                    device: id.to_string(),
                    ..Row::default()
                },
            )
        })
        .collect();
    let (client, mut events) = cmd.mqtt.connect("status").await?;
    let filters: Vec<SubscribeFilter> = ids
        .iter()
        .flat_map(|id| {
            [
                DeviceTopicKind::TwinUpdate,
                DeviceTopicKind::TwinUpdateDelta,
                DeviceTopicKind::TwinGetResult,
            ]
            .map(|k| SubscribeFilter::new(Topic::device(id, k).to_string(), QoS::AtLeastOnce))
        })
        .collect();
    client.subscribe_many(filters).await?;
    let deadline = Instant::now() + Duration::from_secs(cmd.wait);
    let mut asked = false;
    let mut stderr = std::io::stderr();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let ev = match tokio::time::timeout(left, events.poll()).await {
            Err(_) => break,
            Ok(Err(e)) => anyhow::bail!("lost the broker: {e} [broker-unreachable]"),
            Ok(Ok(ev)) => ev,
        };
        match ev {
            Event::Incoming(Packet::SubAck(_)) if !asked => {
                asked = true;
                for id in &ids {
                    let get = mqtt_schema::twin_get_request(
                        format!("twinflash-status-{}", now_ms()),
                        now_ms(),
                    );
                    let topic = Topic::device(id, DeviceTopicKind::TwinGet).to_string();
                    client.try_publish(
                        topic,
                        QoS::AtLeastOnce,
                        false,
                        to_go_json::<BaseMessage>(&get),
                    )?;
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let Ok(topic) = Topic::parse(&p.topic, cmd.mqtt.layout) else {
                    continue;
                };
                let Some((id, kind)) = topic.device_kind() else {
                    continue;
                };
                let key = id.to_string();
                let before = rows.get(&key).cloned();
                apply(&mut rows, &names, kind, &key, &p.payload);
                if cmd.watch
                    && let Some(now) = rows.get(&key)
                    && before.as_ref() != Some(now)
                {
                    let _ = writeln!(
                        stderr,
                        "{key}: {} {}",
                        now.state.as_deref().unwrap_or("-"),
                        now.reported.as_deref().unwrap_or("")
                    );
                }
                if cmd.until_installed && rows.values().all(|r| r.converged() || r.ended_badly()) {
                    break;
                }
            }
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    let rows: Vec<Row> = rows.into_values().collect();
    if cmd.json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        outln!("{}", table(&rows));
    }
    if cmd.until_installed {
        let bad: Vec<&str> = rows
            .iter()
            .filter(|r| !r.converged())
            .map(|r| r.device.as_str())
            .collect();
        if !bad.is_empty() {
            anyhow::bail!("not installed: {} [timeout]", bad.join(", "));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_deltas_and_get_results_fill_the_row() {
        let names = TwinNames::default();
        let mut rows = BTreeMap::new();
        rows.insert(
            "ns/d".to_owned(),
            Row {
                device: "ns/d".into(),
                ..Row::default()
            },
        );
        let delta =
            br#"{"event_id":"e","timestamp":1,"twin":{},"delta":{"firmware":"r@sha256:1"}}"#;
        apply(
            &mut rows,
            &names,
            DeviceTopicKind::TwinUpdateDelta,
            "ns/d",
            delta,
        );
        let report = br#"{"event_id":"","timestamp":2,"twin":{"firmware":{"actual":{"value":"r@sha256:1"}},"firmware-version":{"actual":{"value":"1.0.0"}},"firmware-state":{"actual":{"value":"installed"}}}}"#;
        apply(
            &mut rows,
            &names,
            DeviceTopicKind::TwinUpdate,
            "ns/d",
            report,
        );
        apply(
            &mut rows,
            &names,
            DeviceTopicKind::TwinUpdate,
            "ns/other",
            report,
        );
        let row = &rows["ns/d"];
        assert!(row.converged());
        assert_eq!(row.version.as_deref(), Some("1.0.0"));
        let t = table(std::slice::from_ref(row));
        assert!(
            t.starts_with("DEVICE") && t.contains("r@sha256:1") && t.contains("installed"),
            "{t}"
        );
        let mut failed = row.clone();
        failed.state = Some("failed:verify-failed".into());
        assert!(failed.ended_badly() && !failed.converged());

        // A failed flash that erased the image: the agent reports empty values, and the row forgets the old image.
        let erased = br#"{"event_id":"","timestamp":3,"twin":{"firmware":{"actual":{"value":""}},"firmware-version":{"actual":{"value":""}},"firmware-state":{"actual":{"value":"failed:flash-failed"}}}}"#;
        apply(
            &mut rows,
            &names,
            DeviceTopicKind::TwinUpdate,
            "ns/d",
            erased,
        );
        let row = &rows["ns/d"];
        assert_eq!(
            (row.reported.as_deref(), row.version.as_deref()),
            (None, None)
        );
        assert!(row.ended_badly());
    }
}
