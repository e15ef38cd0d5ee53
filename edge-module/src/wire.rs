//! What an incoming MQTT message means to the agent, decided without I/O: [`classify`] turns a topic and a payload
//! into an [`Incoming`], and the link only dispatches it. First stop of the flow wire -> link -> plan -> fetch ->
//! flash -> journal -> report.
//!
//! Hostile input ends here: a message over the agent's own size limit is never decoded, and an intent that is not a
//! valid digest-pinned reference is cut to a bounded [`Intent::Invalid`] before anything is journaled or logged.

use mqtt_schema::clip::prefix;
use mqtt_schema::gojson::{DecodeError, decode};
use std::collections::BTreeMap;

use mqtt_schema::{
    DeviceTopicKind, DeviceTwinDelta, DeviceTwinResult, ErrorCode, FirmwareRef, ResultMessage,
    Topic, TopicLayout, TwinGetRequest, TwinNames,
};

/// Bytes of an invalid reference that are kept (journal, outcome, logs).
pub const INVALID_PREFIX: usize = 64;

/// Marks a kept prefix of an invalid reference. It is outside KubeEdge's twin charset, so a kept prefix can never
/// parse as a reference, even when the prefix of a longer string happens to be one.
pub const INVALID_MARK: char = '…';

/// The event id prefix of `twinflash status`'s `twin/get` requests.
pub const STATUS_GET_PREFIX: &str = "twinflash-status-";

/// A firmware intent as the twin carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// A digest-pinned reference, as the twin carried it.
    Valid(String),
    /// Not a reference twinflash accepts. `recorded` is a bounded prefix ending in [`INVALID_MARK`]; `error` says
    /// why (bounded too: the reference parser quotes at most a twin value's 512 characters).
    Invalid { recorded: String, error: String },
}

impl Intent {
    /// Validates a wanted `firmware` value (length, charset, digest).
    pub fn from_twin(value: &str) -> Intent {
        match FirmwareRef::parse(value) {
            Ok(_) => Intent::Valid(value.to_owned()),
            Err(e) => Intent::Invalid {
                recorded: format!("{}{INVALID_MARK}", prefix(value, INVALID_PREFIX)),
                error: e.to_string(),
            },
        }
    }

    /// The string the journal records as the wanted reference.
    pub fn recorded(&self) -> &str {
        match self {
            Intent::Valid(r) => r,
            Intent::Invalid { recorded, .. } => recorded,
        }
    }
}

/// What one incoming message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Larger than the agent's limit: acknowledged and dropped unread.
    Oversized { len: usize, max: usize },
    /// An empty payload (a retained delta being cleared once a device converged): nothing to do.
    Empty,
    /// Not for this agent (another topic, a device it does not manage). `key` groups repeats for a log-once.
    Ignored { key: String, why: &'static str },
    /// A twin message of a managed device that does not decode.
    Malformed {
        device: String,
        code: ErrorCode,
        error: String,
    },
    /// Someone asked for the twin of a managed device (not this agent itself): a nudge to report again
    /// (twinflash-cloud's anti-entropy, edgecore's clients).
    Asked { device: String },
    /// `twinflash status` read the twin store (its event ids start with [`STATUS_GET_PREFIX`]): edgecore answers it;
    /// the agent reports again only where no twin store acknowledges reports.
    Read { device: String },
    /// This agent's own twin/get request, echoed back by the broker.
    OwnGet { device: String },
    /// A delta or get result that carries no wanted firmware.
    NoIntent { device: String },
    /// The wanted firmware of a managed device (from a delta).
    Intent { device: String, intent: Intent },
    /// edgecore's answer to a `twin/update` (anyone's: the event id says whose). `code` is 0 on success, else the
    /// error (400, 404) with its reason.
    UpdateResult {
        device: String,
        event_id: String,
        code: i64,
        reason: String,
    },
    /// edgecore's stored twin of a managed device (the answer to anyone's `twin/get`): the wanted firmware, and the
    /// `actual` value of each of the device's three twins that edgecore holds. `code` is 0, or the error (404: the
    /// device is unknown to edgecore) with its reason and nothing else.
    GetResult {
        device: String,
        event_id: String,
        wanted: Option<Intent>,
        actual: BTreeMap<String, String>,
        /// The `actual` value of every other twin (what the device's own application reports, e.g. the property
        /// of a `twin` confirmation check).
        others: BTreeMap<String, String>,
        code: i64,
        reason: String,
    },
}

/// Classifies one message. `names` gives the twin names of a managed device (None: not managed); `own_get_prefix`
/// is the event id prefix of this agent's own twin/get requests.
pub fn classify<'a>(
    topic: &str,
    payload: &[u8],
    layout: TopicLayout,
    max_len: usize,
    names: impl Fn(&str) -> Option<&'a TwinNames>,
    own_get_prefix: &str,
) -> Incoming {
    if payload.len() > max_len {
        return Incoming::Oversized {
            len: payload.len(),
            max: max_len,
        };
    }
    if payload.is_empty() {
        return Incoming::Empty;
    }
    let ignored = |why| Incoming::Ignored {
        key: format!("topic {}", prefix(topic, 256)),
        why,
    };
    let Ok(parsed) = Topic::parse(topic, layout) else {
        return ignored("ignoring a message on an unexpected topic");
    };
    let Some((id, kind)) = parsed.device_kind() else {
        return ignored("ignoring a message on a topic that names no device");
    };
    let device = id.to_string();
    let Some(names) = names(&device) else {
        return Incoming::Ignored {
            key: format!("device {device}"),
            why: "ignoring a message for a device this agent does not manage",
        };
    };
    let wanted = match kind {
        DeviceTopicKind::TwinGet => {
            let id = decode::<TwinGetRequest>(payload)
                .map(|g| g.event_id)
                .unwrap_or_default();
            return if id.starts_with(own_get_prefix) {
                Incoming::OwnGet { device }
            } else if id.starts_with(STATUS_GET_PREFIX) {
                Incoming::Read { device }
            } else {
                Incoming::Asked { device }
            };
        }
        DeviceTopicKind::TwinUpdateDelta => {
            decode::<DeviceTwinDelta>(payload).map(|d| d.wanted(&names.firmware).map(str::to_owned))
        }
        DeviceTopicKind::TwinGetResult => {
            return get_result(&device, payload, names).unwrap_or_else(|e| malformed(device, &e));
        }
        DeviceTopicKind::TwinUpdateResult => {
            return match decode::<ResultMessage>(payload) {
                Ok(r) => Incoming::UpdateResult {
                    device,
                    event_id: prefix(&r.base.event_id, 256).to_owned(),
                    code: r.code,
                    reason: prefix(&r.reason, 256).to_owned(),
                },
                Err(e) => malformed(device, &e),
            };
        }
        _ => return Incoming::NoIntent { device },
    };
    match wanted {
        Ok(Some(w)) => Incoming::Intent {
            device,
            intent: Intent::from_twin(&w),
        },
        Ok(None) => Incoming::NoIntent { device },
        Err(e) => malformed(device, &e),
    }
}

/// A twin message of `device` that does not decode (its error cut to 256 bytes).
fn malformed(device: String, e: &DecodeError) -> Incoming {
    Incoming::Malformed {
        device,
        code: e.code(),
        error: prefix(&e.to_string(), 256).to_owned(),
    }
}

/// edgecore's answer to a `twin/get` of `device`: an error, or the wanted firmware and the device's actual values.
fn get_result(device: &str, payload: &[u8], names: &TwinNames) -> Result<Incoming, DecodeError> {
    let status = decode::<ResultMessage>(payload)?;
    let event_id = prefix(&status.base.event_id, 256).to_owned();
    let reason = prefix(&status.reason, 256).to_owned();
    let device = device.to_owned();
    if status.code != 0 {
        return Ok(Incoming::GetResult {
            device,
            event_id,
            wanted: None,
            actual: BTreeMap::new(),
            others: BTreeMap::new(),
            code: status.code,
            reason,
        });
    }
    let r = decode::<DeviceTwinResult>(payload)?;
    let wanted = r
        .twin(&names.firmware)
        .map(|t| t.expected_value())
        .filter(|v| !v.is_empty())
        .map(Intent::from_twin);
    let actual = [&names.firmware, &names.version, &names.state]
        .into_iter()
        .filter_map(|n| {
            let t = r.twin(n)?;
            t.actual.as_ref()?;
            Some((n.clone(), t.actual_value().to_owned()))
        })
        .collect();
    let own = [&names.firmware, &names.version, &names.state];
    let others = r
        .twin
        .iter()
        .flatten()
        .filter(|(n, _)| !own.contains(n))
        .filter_map(|(n, t)| {
            let t = t.as_ref()?;
            t.actual.as_ref()?;
            Some((
                prefix(n, 128).to_owned(),
                prefix(t.actual_value(), 512).to_owned(),
            ))
        })
        .collect();
    Ok(Incoming::GetResult {
        device,
        event_id,
        wanted,
        actual,
        others,
        code: 0,
        reason,
    })
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
