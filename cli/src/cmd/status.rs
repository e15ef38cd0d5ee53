//! `twinflash status`: a device's twin as KubeEdge's edgecore holds it, over MQTT (no cluster needed), checked
//! against what the agent reports.
//!
//! edgecore can hold older values than the agent reported (it misses reports while it or the broker restarts, and
//! learns nothing by itself, docs/kubeedge.md section 8), so this shows both: edgecore's stored twin from
//! `twin/get/result` (matched by event id, asked again while unanswered, and once more after the agent reported),
//! and the agent's reports that arrive during `--wait`. Retained deltas (delta mode) fill the wanted firmware.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use mqtt_schema::gojson::decode;
use mqtt_schema::{
    BaseMessage, DeviceId, DeviceTopicKind, DeviceTwinDelta, DeviceTwinResult, DeviceTwinUpdate,
    ErrorCode, FirmwareState, ResultMessage, StateCode, Topic, TwinNames, to_go_json,
};
use rumqttc::{Event, Packet, QoS, SubscribeFilter};
use serde::Serialize;

use super::mqtt::{MqttArgs, now_ms};

/// Show a device's twin as edgecore holds it, and where the agent's reports say otherwise.
///
/// It asks edgecore with `twin/get` (a unique event id per request, retried while unanswered) and shows edgecore's
/// stored twin. During the wait it also reads the agent's reports (`twin/update` with actual values); where the
/// agent's latest report differs from what edgecore holds, the row is marked stale. A 404 means the Device is unknown
/// to edgecore (see docs/operations.md).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  twinflash status default/blinky-01 default/blinky-02 --mqtt mqtt://127.0.0.1:1883\n  twinflash status default/blinky-01 --mqtt mqtt://127.0.0.1:1883 --until-installed --wait 120\n\nNOTE column: `unknown to edgecore` (404: re-create the Device, docs/operations.md), `stale: agent reports ...`\n(edgecore holds an older value than the agent's latest report), `no answer from edgecore` (the values shown are\nthe agent's reports)."
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
    /// Print the rows as JSON, with both views per device (`edgecore`: its stored twin; `agent`: the latest report).
    #[arg(long)]
    pub json: bool,
}

/// Firmware twin values as one source holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct View {
    /// The wanted firmware (expected), where known.
    pub desired: Option<String>,
    /// The installed firmware (actual).
    pub reported: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// `firmware-state`.
    pub state: Option<String>,
}

/// edgecore's refusal of a `twin/get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GetError {
    /// 404: unknown device.
    pub code: i64,
    /// edgecore's reason.
    pub reason: String,
}

/// One device: edgecore's view, the agent's latest report, and what is shown (edgecore's values, else the agent's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Row {
    /// `namespace/name`.
    pub device: String,
    /// The wanted firmware shown.
    pub desired: Option<String>,
    /// The installed firmware shown.
    pub reported: Option<String>,
    /// The version shown.
    pub version: Option<String>,
    /// The state shown.
    pub state: Option<String>,
    /// edgecore's stored twin, from its latest `twin/get/result` (`null`: no answer).
    pub edgecore: Option<View>,
    /// edgecore's error answer (404: the device is unknown to edgecore).
    pub edgecore_error: Option<GetError>,
    /// The agent's latest report during the wait (only the twins it reported).
    pub agent: View,
    /// The twins where the agent's latest report differs from edgecore's stored value.
    pub stale: Vec<String>,
    /// What the table's NOTE column says.
    pub note: Option<String>,
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

    /// Recomputes what is shown: what KubeEdge holds (edgecore's values) where edgecore answered, the agent's
    /// latest report only where it did not; the stale twins and the note. `--until-installed` therefore ends when
    /// edgecore holds `installed`, not when the agent says so.
    fn settle(&mut self, names: &TwinNames) {
        let e = self.edgecore.clone().unwrap_or_default();
        let a = &self.agent;
        let answered = self.edgecore.is_some();
        let pick = |agent: &Option<String>, edge: &Option<String>| {
            if answered {
                edge.clone()
            } else {
                agent.clone()
            }
        };
        self.reported = pick(&a.reported, &e.reported);
        self.version = pick(&a.version, &e.version);
        self.state = pick(&a.state, &e.state);
        self.desired = pick(&a.desired, &e.desired);
        self.stale.clear();
        if self.edgecore.is_some() {
            for (name, agent, edge) in [
                (&names.firmware, &a.reported, &e.reported),
                (&names.version, &a.version, &e.version),
                (&names.state, &a.state, &e.state),
            ] {
                if let Some(v) = agent
                    && Some(v) != edge.as_ref()
                {
                    self.stale.push(format!("{name} {v}"));
                }
            }
        }
        self.note = if self.edgecore_error.as_ref().is_some_and(|e| e.code == 404) {
            Some("unknown to edgecore".into())
        } else if let Some(err) = &self.edgecore_error {
            Some(format!("edgecore answered {}: {}", err.code, err.reason))
        } else if self.edgecore.is_none() {
            Some("no answer from edgecore".into())
        } else if !self.stale.is_empty() {
            Some(format!(
                "stale: edgecore holds older values, agent reports {}",
                self.stale.join(", ")
            ))
        } else {
            self.firmware_state().and_then(|s| state_note(&s))
        };
    }
}

/// What the NOTE column says of a state an operator may not read at a glance: the confirmation and its outcomes
/// (docs/contract.md section 3).
fn state_note(state: &FirmwareState) -> Option<String> {
    let note = match state {
        FirmwareState::Confirming => {
            "flashed; waiting for the device to prove it runs the new firmware"
        }
        _ => match state.failure()? {
            StateCode::Known(ErrorCode::BootFailed) => {
                "the new firmware did not boot: the previous one was put back and runs (REPORTED)"
            }
            StateCode::Known(ErrorCode::VersionMismatch) => {
                "the device ran another version than the artifact claims: the previous one was put back"
            }
            StateCode::Known(ErrorCode::RevertFailed) => {
                "the revert failed: the device runs an unknown image; set another desired firmware"
            }
            _ => return None,
        },
    };
    Some(note.to_owned())
}

fn view_of(twin: &mqtt_schema::TwinMap, names: &TwinNames) -> View {
    let get = |n: &str| twin.get(n).cloned().flatten();
    let actual = |n: &str| get(n).and_then(|t| t.actual).and_then(|a| a.value);
    // An empty firmware or version means nothing verified is installed (the agent's report after a failed flash
    // that erased the old image): shown as absent.
    View {
        desired: get(&names.firmware)
            .and_then(|t| t.expected)
            .and_then(|e| e.value)
            .filter(|v| !v.is_empty()),
        reported: actual(&names.firmware).filter(|v| !v.is_empty()),
        version: actual(&names.version).filter(|v| !v.is_empty()),
        state: actual(&names.state),
    }
}

/// Applies one message to the rows; `gets` maps the event ids of our `twin/get` requests to their device.
fn apply(
    rows: &mut BTreeMap<String, Row>,
    names: &TwinNames,
    gets: &BTreeMap<String, String>,
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
            let has = |n: &str, actual: bool| {
                twin.get(n).cloned().flatten().is_some_and(|t| {
                    if actual {
                        t.actual.is_some_and(|a| a.value.is_some())
                    } else {
                        t.expected.is_some_and(|e| e.value.is_some())
                    }
                })
            };
            let v = view_of(&twin, names);
            // Only the twins this report carries replace the agent's view; an empty value clears it.
            if has(&names.firmware, true) {
                row.agent.reported = v.reported;
            }
            if has(&names.version, true) {
                row.agent.version = v.version;
            }
            if has(&names.state, true) {
                row.agent.state = v.state;
            }
            if has(&names.firmware, false) {
                row.agent.desired = v.desired;
            }
        }
        DeviceTopicKind::TwinUpdateDelta => {
            // Delta mode (a retained delta, no edgecore): the wanted firmware as the agent is told it.
            if let Ok(d) = decode::<DeviceTwinDelta>(payload)
                && let Some(w) = d.wanted(&names.firmware)
            {
                row.agent.desired = Some(w.to_owned());
            }
        }
        DeviceTopicKind::TwinGetResult => {
            let Ok(err) = decode::<ResultMessage>(payload) else {
                return;
            };
            if gets.get(&err.base.event_id).map(String::as_str) != Some(device) {
                return; // someone else's get
            }
            if err.code != 0 {
                row.edgecore_error = Some(GetError {
                    code: err.code,
                    reason: err.reason,
                });
                row.edgecore = None;
            } else if let Ok(r) = decode::<DeviceTwinResult>(payload) {
                row.edgecore_error = None;
                row.edgecore = Some(view_of(&r.twin.unwrap_or_default(), names));
            }
        }
        _ => {}
    }
    row.settle(names);
}

/// The rows as an aligned table: edgecore's view where it answered, and a note.
pub fn table(rows: &[Row]) -> String {
    let cell = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut lines = vec![[
        "DEVICE".to_owned(),
        "DESIRED".into(),
        "REPORTED".into(),
        "VERSION".into(),
        "STATE".into(),
        "NOTE".into(),
    ]];
    for r in rows {
        let shown = match (&r.edgecore, &r.edgecore_error) {
            (Some(e), _) => e.clone(),
            (None, Some(_)) => View::default(),
            (None, None) => View {
                desired: r.desired.clone(),
                reported: r.reported.clone(),
                version: r.version.clone(),
                state: r.state.clone(),
            },
        };
        lines.push([
            r.device.clone(),
            cell(&shown.desired),
            cell(&shown.reported),
            cell(&shown.version),
            cell(&shown.state),
            r.note.clone().unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
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

/// How long a `twin/get` may stay unanswered before it is sent again.
const GET_RETRY: Duration = Duration::from_secs(1);
/// How many `twin/get` requests a device gets at most in one wait (the first and two retries).
const GET_TRIES: u32 = 3;
/// While watching, edgecore is asked again after an agent report at most this often per device.
const REASK: Duration = Duration::from_millis(500);
/// After the wait, how long the final `twin/get` (edgecore's view after the agent's last report) may take.
const REFRESH: Duration = Duration::from_secs(2);

/// The `twin/get` requests and their answers.
struct Asker {
    ids: Vec<DeviceId>,
    /// Event id -> device.
    gets: BTreeMap<String, String>,
    /// Per device: requests sent, when the last one went out, whether the last one was answered.
    sent: BTreeMap<String, (u32, Instant, bool)>,
    n: u64,
}

impl Asker {
    fn ask(&mut self, client: &rumqttc::AsyncClient, id: &DeviceId) -> anyhow::Result<()> {
        self.n += 1;
        let event_id = format!(
            "twinflash-status-{}-{}-{}",
            std::process::id(),
            now_ms(),
            self.n
        );
        self.gets.insert(event_id.clone(), id.to_string());
        let e = self
            .sent
            .entry(id.to_string())
            .or_insert((0, Instant::now(), false));
        *e = (e.0 + 1, Instant::now(), false);
        let get = mqtt_schema::twin_get_request(event_id, now_ms());
        let topic = Topic::device(id, DeviceTopicKind::TwinGet).to_string();
        client.try_publish(
            topic,
            QoS::AtLeastOnce,
            false,
            to_go_json::<BaseMessage>(&get),
        )?;
        Ok(())
    }

    fn answered(&mut self, event_id: &str) {
        if let Some(d) = self.gets.get(event_id)
            && let Some(e) = self.sent.get_mut(d)
        {
            e.2 = true;
        }
    }

    /// Sends again where the last request is unanswered after [`GET_RETRY`], up to [`GET_TRIES`] requests.
    fn retry(&mut self, client: &rumqttc::AsyncClient) -> anyhow::Result<()> {
        let due: Vec<DeviceId> = self
            .ids
            .iter()
            .filter(|id| {
                self.sent
                    .get(&id.to_string())
                    .is_some_and(|(n, at, ok)| !ok && *n < GET_TRIES && at.elapsed() >= GET_RETRY)
            })
            .cloned()
            .collect();
        for id in &due {
            self.ask(client, id)?;
        }
        Ok(())
    }

    /// Asks again for `id` after the agent reported (edgecore stores a report before it answers it), unless a request
    /// is on its way or went out less than [`REASK`] ago.
    fn reask(&mut self, client: &rumqttc::AsyncClient, id: &DeviceId) -> anyhow::Result<bool> {
        if let Some((_, at, answered)) = self.sent.get(&id.to_string())
            && (!answered || at.elapsed() < REASK)
        {
            return Ok(false);
        }
        self.sent.remove(&id.to_string());
        self.ask(client, id)?;
        Ok(true)
    }

    fn all_answered(&self) -> bool {
        self.ids
            .iter()
            .all(|id| self.sent.get(&id.to_string()).is_some_and(|e| e.2))
    }
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
            let mut row = Row {
                device: id.to_string(),
                ..Row::default()
            };
            row.settle(&names);
            (id.to_string(), row)
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
    let mut asker = Asker {
        ids: ids.clone(),
        gets: BTreeMap::new(),
        sent: BTreeMap::new(),
        n: 0,
    };
    let mut deadline = Instant::now() + Duration::from_secs(cmd.wait);
    let mut subscribed = false;
    // Reports that arrived after edgecore's last answer: edgecore is asked once more at the end.
    let mut reported_since_answer = false;
    let mut refreshing = false;
    // Devices the agent reported for since edgecore was last asked (watch and --until-installed ask again).
    let mut dirty: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut stderr = std::io::stderr();
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            if !refreshing && subscribed && reported_since_answer {
                // Ask again: did edgecore store what the agent reported during the wait?
                refreshing = true;
                reported_since_answer = false;
                for id in &ids {
                    asker.ask(&client, id)?;
                }
                deadline = Instant::now() + REFRESH;
                continue;
            }
            break;
        };
        let tick = left.min(Duration::from_millis(250));
        if subscribed && !refreshing && (cmd.watch || cmd.until_installed) {
            // What did edgecore store of what the agent just reported?
            let ready: Vec<String> = dirty.iter().cloned().collect();
            for key in ready {
                if let Some(id) = ids.iter().find(|i| i.to_string() == key)
                    && asker.reask(&client, id)?
                {
                    dirty.remove(&key);
                }
            }
        }
        let ev = match tokio::time::timeout(tick, events.poll()).await {
            Err(_) => {
                if subscribed && !refreshing {
                    asker.retry(&client)?;
                }
                continue;
            }
            Ok(Err(e)) => anyhow::bail!("lost the broker: {e} [broker-unreachable]"),
            Ok(Ok(ev)) => ev,
        };
        match ev {
            Event::Incoming(Packet::SubAck(_)) if !subscribed => {
                subscribed = true;
                for id in &ids {
                    asker.ask(&client, id)?;
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
                apply(&mut rows, &names, &asker.gets, kind, &key, &p.payload);
                match kind {
                    DeviceTopicKind::TwinGetResult => {
                        if let Ok(b) = decode::<BaseMessage>(&p.payload)
                            && asker.gets.contains_key(&b.event_id)
                        {
                            asker.answered(&b.event_id);
                            reported_since_answer = false;
                        }
                        if refreshing && asker.all_answered() {
                            break;
                        }
                    }
                    DeviceTopicKind::TwinUpdate => {
                        reported_since_answer = true;
                        dirty.insert(key.clone());
                    }
                    _ => {}
                }
                if cmd.watch
                    && let Some(now) = rows.get(&key)
                    && before.as_ref().map(|b| (&b.state, &b.reported))
                        != Some((&now.state, &now.reported))
                {
                    let _ = writeln!(
                        stderr,
                        "{key}: {} {}",
                        now.state.as_deref().unwrap_or("-"),
                        now.reported.as_deref().unwrap_or("")
                    );
                }
                if !refreshing
                    && cmd.until_installed
                    && rows.values().all(|r| r.converged() || r.ended_badly())
                {
                    deadline = Instant::now();
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

    fn rows() -> BTreeMap<String, Row> {
        let mut rows = BTreeMap::new();
        let mut row = Row {
            device: "ns/d".into(),
            ..Row::default()
        };
        row.settle(&TwinNames::default());
        rows.insert("ns/d".to_owned(), row);
        rows
    }

    #[test]
    fn reports_deltas_and_get_results_fill_the_row() {
        let names = TwinNames::default();
        let none = BTreeMap::new();
        let mut rows = rows();
        let delta =
            br#"{"event_id":"e","timestamp":1,"twin":{},"delta":{"firmware":"r@sha256:1"}}"#;
        apply(
            &mut rows,
            &names,
            &none,
            DeviceTopicKind::TwinUpdateDelta,
            "ns/d",
            delta,
        );
        let report = br#"{"event_id":"","timestamp":2,"twin":{"firmware":{"actual":{"value":"r@sha256:1"}},"firmware-version":{"actual":{"value":"1.0.0"}},"firmware-state":{"actual":{"value":"installed"}}}}"#;
        apply(
            &mut rows,
            &names,
            &none,
            DeviceTopicKind::TwinUpdate,
            "ns/d",
            report,
        );
        apply(
            &mut rows,
            &names,
            &none,
            DeviceTopicKind::TwinUpdate,
            "ns/other",
            report,
        );
        let row = &rows["ns/d"];
        assert!(row.converged());
        assert_eq!(row.version.as_deref(), Some("1.0.0"));
        assert_eq!(row.note.as_deref(), Some("no answer from edgecore"));
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
            &none,
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

    #[test]
    fn confirmation_states_are_explained_in_the_note_when_edgecore_holds_them() {
        let names = TwinNames::default();
        let row = |state: &str| {
            let held = View {
                desired: Some("r@sha256:2".into()),
                reported: Some("r@sha256:1".into()),
                version: Some("1.0.0".into()),
                state: Some(state.into()),
            };
            let mut r = Row {
                device: "ns/d".into(),
                edgecore: Some(held.clone()),
                agent: held,
                ..Row::default()
            };
            r.settle(&names);
            r
        };
        let confirming = row("confirming");
        assert!(!confirming.converged() && !confirming.ended_badly());
        let booted = row("failed:boot-failed");
        assert!(booted.ended_badly());
        for (r, says) in [
            (&confirming, "waiting for the device to prove"),
            (&booted, "did not boot: the previous one was put back"),
            (&row("failed:version-mismatch"), "another version"),
            (&row("failed:revert-failed"), "unknown image"),
        ] {
            let t = table(std::slice::from_ref(r));
            assert!(t.contains(says), "{t}");
        }
        assert_eq!(
            row("failed:flash-failed").note,
            None,
            "other codes speak for themselves"
        );
        assert_eq!(row("installed").note, None);
        // A connectivity note comes first: it says the values shown may not be KubeEdge's.
        let mut unanswered = row("confirming");
        unanswered.edgecore = None;
        unanswered.settle(&names);
        assert_eq!(unanswered.note.as_deref(), Some("no answer from edgecore"));
    }

    #[test]
    fn edgecore_answers_are_matched_by_event_id_and_compared_with_the_agent() {
        let names = TwinNames::default();
        let mut gets = BTreeMap::new();
        gets.insert("g1".to_owned(), "ns/d".to_owned());
        let mut rows = rows();
        let feed = |rows: &mut BTreeMap<String, Row>, kind, payload: &[u8]| {
            apply(rows, &names, &gets, kind, "ns/d", payload);
        };
        let theirs = br#"{"event_id":"other","timestamp":1,"twin":{"firmware-state":{"actual":{"value":"idle"}}}}"#;
        feed(&mut rows, DeviceTopicKind::TwinGetResult, theirs);
        assert_eq!(
            rows["ns/d"].edgecore, None,
            "someone else's get result is ignored"
        );
        let ours = br#"{"event_id":"g1","timestamp":1,"twin":{"firmware-state":{"actual":{"value":"installed"}}}}"#;
        feed(&mut rows, DeviceTopicKind::TwinGetResult, ours);
        assert_eq!(rows["ns/d"].note, None);
        let report = br#"{"event_id":"","timestamp":2,"twin":{"firmware-state":{"actual":{"value":"downloading:40"}}}}"#;
        feed(&mut rows, DeviceTopicKind::TwinUpdate, report);
        let row = &rows["ns/d"];
        assert_eq!(row.stale, ["firmware-state downloading:40"]);
        let t = table(std::slice::from_ref(row));
        assert!(
            t.contains("installed") && t.contains("stale: edgecore holds older values"),
            "{t}"
        );
        let unknown = br#"{"event_id":"g1","timestamp":3,"code":404,"reason":"Device ns/d not found while getting twin"}"#;
        feed(&mut rows, DeviceTopicKind::TwinGetResult, unknown);
        assert_eq!(rows["ns/d"].note.as_deref(), Some("unknown to edgecore"));
    }
}
