//! What an incoming MQTT message means to the agent, decided without I/O: [`classify`] turns a topic and a payload
//! into an [`Incoming`], and the link only dispatches it. First stop of the flow wire -> link -> plan -> fetch ->
//! flash -> journal -> report.
//!
//! Hostile input ends here: a message over the agent's own size limit is never decoded, and an intent that is not a
//! valid digest-pinned reference is cut to a bounded [`Intent::Invalid`] before anything is journaled or logged.

use mqtt_schema::clip::prefix;
use mqtt_schema::gojson::decode;
use mqtt_schema::{
    DeviceTopicKind, DeviceTwinDelta, DeviceTwinResult, ErrorCode, FirmwareRef, Topic, TopicLayout,
    TwinGetRequest, TwinNames,
};

/// Bytes of an invalid reference that are kept (journal, outcome, logs).
pub const INVALID_PREFIX: usize = 64;

/// Marks a kept prefix of an invalid reference. It is outside KubeEdge's twin charset, so a kept prefix can never
/// parse as a reference, even when the prefix of a longer string happens to be one.
pub const INVALID_MARK: char = '…';

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
    /// Someone asked for the twin of a managed device (not this agent itself).
    Asked { device: String },
    /// This agent's own twin/get request, echoed back by the broker.
    OwnGet { device: String },
    /// A delta or get result that carries no wanted firmware.
    NoIntent { device: String },
    /// The wanted firmware of a managed device.
    Intent { device: String, intent: Intent },
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
            let ours = decode::<TwinGetRequest>(payload)
                .is_ok_and(|g| g.event_id.starts_with(own_get_prefix));
            return if ours {
                Incoming::OwnGet { device }
            } else {
                Incoming::Asked { device }
            };
        }
        DeviceTopicKind::TwinUpdateDelta => {
            decode::<DeviceTwinDelta>(payload).map(|d| d.wanted(&names.firmware).map(str::to_owned))
        }
        DeviceTopicKind::TwinGetResult => decode::<DeviceTwinResult>(payload).map(|r| {
            r.twin
                .as_ref()
                .and_then(|t| t.get(&names.firmware))
                .and_then(Option::as_ref)
                .map(|t| t.expected_value().to_owned())
                .filter(|v| !v.is_empty())
        }),
        _ => return Incoming::NoIntent { device },
    };
    match wanted {
        Ok(Some(w)) => Incoming::Intent {
            device,
            intent: Intent::from_twin(&w),
        },
        Ok(None) => Incoming::NoIntent { device },
        Err(e) => Incoming::Malformed {
            device,
            code: e.code(),
            error: prefix(&e.to_string(), 256).to_owned(),
        },
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
