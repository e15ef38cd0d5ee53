//! KubeEdge MQTT topics (edge/pkg/devicetwin/dtcommon/common.go) as a typed enum that builds and
//! parses both device-id layouts: namespaced `{namespace}/{name}` (KubeEdge >= 1.16.2, the
//! default) and legacy `{name}` (<= 1.15). Parsing never guesses the layout; it is an argument.

use std::fmt;
use std::str::FromStr;

use crate::ErrorCode;

/// Prefix of device topics.
pub const DEVICE_PREFIX: &str = "$hw/events/device/";
/// Prefix of node topics.
pub const NODE_PREFIX: &str = "$hw/events/node/";
/// Where edgecore publishes the 400 result of an update it could not parse or validate (empty id).
pub const TWIN_UPDATE_ERROR_RESULT: &str = "$hw/events/device//twin/update/result";

/// How a device is identified in topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TopicLayout {
    /// `{namespace}/{name}`: KubeEdge v1.16.2 and later.
    #[default]
    Namespaced,
    /// `{name}`: KubeEdge v1.15 and earlier.
    Legacy,
}

impl TopicLayout {
    /// The configuration string: `namespaced` or `legacy`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TopicLayout::Namespaced => "namespaced",
            TopicLayout::Legacy => "legacy",
        }
    }
}

impl fmt::Display for TopicLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is neither `namespaced` nor `legacy`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown topic layout {0:?}: expected \"namespaced\" or \"legacy\"")]
pub struct UnknownTopicLayout(pub String);

impl FromStr for TopicLayout {
    type Err = UnknownTopicLayout;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "namespaced" => Ok(TopicLayout::Namespaced),
            "legacy" => Ok(TopicLayout::Legacy),
            other => Err(UnknownTopicLayout(other.to_owned())),
        }
    }
}

/// Why a topic or device id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Not under `$hw/events/device/` or `$hw/events/node/`.
    #[error("topic {topic:?} is not a KubeEdge device or node topic")]
    UnknownPrefix {
        /// The topic.
        topic: String,
    },
    /// The part after the id is not a known suffix for this layout.
    #[error("topic {topic:?} has no known suffix for the {layout:?} layout")]
    UnknownSuffix {
        /// The topic.
        topic: String,
        /// The layout it was parsed with.
        layout: TopicLayout,
    },
    /// An id level is empty or holds `/`, `+`, `#` or NUL.
    #[error("invalid topic level {segment:?}: must be non-empty without '/', '+', '#' or NUL")]
    InvalidSegment {
        /// The level.
        segment: String,
    },
}

impl TopicError {
    /// The stable code: a topic we cannot use is an unexpected input, reported as `internal`.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Internal
    }
}

fn check_segment(s: &str) -> Result<(), TopicError> {
    if s.is_empty() || s.contains(['/', '+', '#', '\0']) {
        return Err(TopicError::InvalidSegment {
            segment: s.to_owned(),
        });
    }
    Ok(())
}

/// A device as named in topics: `{namespace}/{name}` or, in the legacy layout, `{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    namespace: Option<String>,
    name: String,
}

impl DeviceId {
    /// A namespaced id.
    pub fn namespaced(
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Result<Self, TopicError> {
        let (namespace, name) = (namespace.into(), name.into());
        check_segment(&namespace)?;
        check_segment(&name)?;
        Ok(DeviceId {
            namespace: Some(namespace),
            name,
        })
    }

    /// A legacy (name-only) id.
    pub fn legacy(name: impl Into<String>) -> Result<Self, TopicError> {
        let name = name.into();
        check_segment(&name)?;
        Ok(DeviceId {
            namespace: None,
            name,
        })
    }

    /// Parses `ns/name` (namespaced layout) or `name` (legacy layout).
    pub fn parse(s: &str, layout: TopicLayout) -> Result<Self, TopicError> {
        match layout {
            TopicLayout::Legacy => DeviceId::legacy(s),
            TopicLayout::Namespaced => match s.split_once('/') {
                Some((ns, name)) => DeviceId::namespaced(ns, name),
                None => Err(TopicError::InvalidSegment {
                    segment: s.to_owned(),
                }),
            },
        }
    }

    /// The namespace (`None` for a legacy id).
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The layout this id is written in.
    pub fn layout(&self) -> TopicLayout {
        match self.namespace {
            Some(_) => TopicLayout::Namespaced,
            None => TopicLayout::Legacy,
        }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// `ns/name` is namespaced, `name` is legacy.
impl FromStr for DeviceId {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('/') {
            DeviceId::parse(s, TopicLayout::Namespaced)
        } else {
            DeviceId::legacy(s)
        }
    }
}

/// The per-device topics, by suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceTopicKind {
    /// `twin/update`: set expected and/or actual values (to edgecore).
    TwinUpdate,
    /// `twin/update/result`: stored twins after an update, or an error (from edgecore).
    TwinUpdateResult,
    /// `twin/update/delta`: twins whose expected differs from actual (from edgecore).
    TwinUpdateDelta,
    /// `twin/update/document`: last and current of changed twins (from edgecore).
    TwinUpdateDocument,
    /// `twin/get`: ask for the whole twin (to edgecore).
    TwinGet,
    /// `twin/get/result`: the whole twin (from edgecore).
    TwinGetResult,
    /// `state/update`: device state (to edgecore).
    StateUpdate,
    /// `state/update/result` (from edgecore).
    StateUpdateResult,
    /// `updated`: attribute changes (from edgecore).
    DeviceUpdated,
}

impl DeviceTopicKind {
    /// Every kind.
    pub const ALL: [DeviceTopicKind; 9] = [
        DeviceTopicKind::TwinUpdate,
        DeviceTopicKind::TwinUpdateResult,
        DeviceTopicKind::TwinUpdateDelta,
        DeviceTopicKind::TwinUpdateDocument,
        DeviceTopicKind::TwinGet,
        DeviceTopicKind::TwinGetResult,
        DeviceTopicKind::StateUpdate,
        DeviceTopicKind::StateUpdateResult,
        DeviceTopicKind::DeviceUpdated,
    ];

    /// The topic suffix after the device id, without the leading `/`.
    pub const fn suffix(self) -> &'static str {
        match self {
            DeviceTopicKind::TwinUpdate => "twin/update",
            DeviceTopicKind::TwinUpdateResult => "twin/update/result",
            DeviceTopicKind::TwinUpdateDelta => "twin/update/delta",
            DeviceTopicKind::TwinUpdateDocument => "twin/update/document",
            DeviceTopicKind::TwinGet => "twin/get",
            DeviceTopicKind::TwinGetResult => "twin/get/result",
            DeviceTopicKind::StateUpdate => "state/update",
            DeviceTopicKind::StateUpdateResult => "state/update/result",
            DeviceTopicKind::DeviceUpdated => "updated",
        }
    }

    fn from_suffix(s: &str) -> Option<Self> {
        DeviceTopicKind::ALL.into_iter().find(|k| k.suffix() == s)
    }

    /// Subscription filter for this kind on every device, e.g.
    /// `$hw/events/device/+/+/twin/update/delta` (namespaced) or `$hw/events/device/+/twin/update/delta`.
    pub fn filter(self, layout: TopicLayout) -> String {
        let wild = match layout {
            TopicLayout::Namespaced => "+/+",
            TopicLayout::Legacy => "+",
        };
        format!("{DEVICE_PREFIX}{wild}/{}", self.suffix())
    }
}

/// The per-node topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeTopicKind {
    /// `membership/get` (to edgecore).
    MembershipGet,
    /// `membership/get/result` (from edgecore).
    MembershipGetResult,
    /// `membership/updated` (from edgecore).
    MembershipUpdated,
}

impl NodeTopicKind {
    /// Every kind.
    pub const ALL: [NodeTopicKind; 3] = [
        NodeTopicKind::MembershipGet,
        NodeTopicKind::MembershipGetResult,
        NodeTopicKind::MembershipUpdated,
    ];

    /// The topic suffix after the node name.
    pub const fn suffix(self) -> &'static str {
        match self {
            NodeTopicKind::MembershipGet => "membership/get",
            NodeTopicKind::MembershipGetResult => "membership/get/result",
            NodeTopicKind::MembershipUpdated => "membership/updated",
        }
    }
}

/// A KubeEdge MQTT topic. `Display` writes the topic string; [`Topic::parse`] reads one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `$hw/events/device/{id}/twin/update` (to edgecore).
    TwinUpdate {
        /// The device.
        device: DeviceId,
    },
    /// `.../twin/update/result` (from edgecore).
    TwinUpdateResult {
        /// The device.
        device: DeviceId,
    },
    /// `.../twin/update/delta` (from edgecore).
    TwinUpdateDelta {
        /// The device.
        device: DeviceId,
    },
    /// `.../twin/update/document` (from edgecore).
    TwinUpdateDocument {
        /// The device.
        device: DeviceId,
    },
    /// `.../twin/get` (to edgecore).
    TwinGet {
        /// The device.
        device: DeviceId,
    },
    /// `.../twin/get/result` (from edgecore).
    TwinGetResult {
        /// The device.
        device: DeviceId,
    },
    /// `.../state/update` (to edgecore).
    StateUpdate {
        /// The device.
        device: DeviceId,
    },
    /// `.../state/update/result` (from edgecore).
    StateUpdateResult {
        /// The device.
        device: DeviceId,
    },
    /// `.../updated`: attribute changes (from edgecore).
    DeviceUpdated {
        /// The device.
        device: DeviceId,
    },
    /// `$hw/events/device//twin/update/result`: edgecore's 400 for an update it could not parse
    /// or validate (the device id is empty). Recognised in both layouts.
    TwinUpdateErrorResult,
    /// `$hw/events/node/{node}/membership/get` (to edgecore).
    MembershipGet {
        /// The node name.
        node: String,
    },
    /// `$hw/events/node/{node}/membership/get/result` (from edgecore).
    MembershipGetResult {
        /// The node name.
        node: String,
    },
    /// `$hw/events/node/{node}/membership/updated` (from edgecore).
    MembershipUpdated {
        /// The node name.
        node: String,
    },
}

impl Topic {
    /// The per-device topic of `kind` for `device`.
    pub fn device(device: &DeviceId, kind: DeviceTopicKind) -> Self {
        let device = device.clone();
        match kind {
            DeviceTopicKind::TwinUpdate => Topic::TwinUpdate { device },
            DeviceTopicKind::TwinUpdateResult => Topic::TwinUpdateResult { device },
            DeviceTopicKind::TwinUpdateDelta => Topic::TwinUpdateDelta { device },
            DeviceTopicKind::TwinUpdateDocument => Topic::TwinUpdateDocument { device },
            DeviceTopicKind::TwinGet => Topic::TwinGet { device },
            DeviceTopicKind::TwinGetResult => Topic::TwinGetResult { device },
            DeviceTopicKind::StateUpdate => Topic::StateUpdate { device },
            DeviceTopicKind::StateUpdateResult => Topic::StateUpdateResult { device },
            DeviceTopicKind::DeviceUpdated => Topic::DeviceUpdated { device },
        }
    }

    /// The per-node topic of `kind`; the node name must be a valid topic level.
    pub fn node(node: impl Into<String>, kind: NodeTopicKind) -> Result<Self, TopicError> {
        let node = node.into();
        check_segment(&node)?;
        Ok(match kind {
            NodeTopicKind::MembershipGet => Topic::MembershipGet { node },
            NodeTopicKind::MembershipGetResult => Topic::MembershipGetResult { node },
            NodeTopicKind::MembershipUpdated => Topic::MembershipUpdated { node },
        })
    }

    /// The device and kind of a per-device topic.
    pub fn device_kind(&self) -> Option<(&DeviceId, DeviceTopicKind)> {
        Some(match self {
            Topic::TwinUpdate { device } => (device, DeviceTopicKind::TwinUpdate),
            Topic::TwinUpdateResult { device } => (device, DeviceTopicKind::TwinUpdateResult),
            Topic::TwinUpdateDelta { device } => (device, DeviceTopicKind::TwinUpdateDelta),
            Topic::TwinUpdateDocument { device } => (device, DeviceTopicKind::TwinUpdateDocument),
            Topic::TwinGet { device } => (device, DeviceTopicKind::TwinGet),
            Topic::TwinGetResult { device } => (device, DeviceTopicKind::TwinGetResult),
            Topic::StateUpdate { device } => (device, DeviceTopicKind::StateUpdate),
            Topic::StateUpdateResult { device } => (device, DeviceTopicKind::StateUpdateResult),
            Topic::DeviceUpdated { device } => (device, DeviceTopicKind::DeviceUpdated),
            _ => return None,
        })
    }

    /// The node and kind of a per-node topic.
    pub fn node_kind(&self) -> Option<(&str, NodeTopicKind)> {
        Some(match self {
            Topic::MembershipGet { node } => (node, NodeTopicKind::MembershipGet),
            Topic::MembershipGetResult { node } => (node, NodeTopicKind::MembershipGetResult),
            Topic::MembershipUpdated { node } => (node, NodeTopicKind::MembershipUpdated),
            _ => return None,
        })
    }

    /// The device this topic is about, if any.
    pub fn device_id(&self) -> Option<&DeviceId> {
        self.device_kind().map(|(d, _)| d)
    }

    /// Parses a topic whose device ids are written in `layout`. Anything else is an error.
    pub fn parse(topic: &str, layout: TopicLayout) -> Result<Self, TopicError> {
        if topic == TWIN_UPDATE_ERROR_RESULT {
            return Ok(Topic::TwinUpdateErrorResult);
        }
        let unknown_suffix = || TopicError::UnknownSuffix {
            topic: topic.to_owned(),
            layout,
        };
        if let Some(rest) = topic.strip_prefix(NODE_PREFIX) {
            let (node, suffix) = rest.split_once('/').ok_or_else(unknown_suffix)?;
            let kind = NodeTopicKind::ALL
                .into_iter()
                .find(|k| k.suffix() == suffix)
                .ok_or_else(unknown_suffix)?;
            return Topic::node(node, kind);
        }
        let rest = topic
            .strip_prefix(DEVICE_PREFIX)
            .ok_or_else(|| TopicError::UnknownPrefix {
                topic: topic.to_owned(),
            })?;
        let (device, suffix) = match layout {
            TopicLayout::Legacy => {
                let (name, suffix) = rest.split_once('/').ok_or_else(unknown_suffix)?;
                (DeviceId::legacy(name)?, suffix)
            }
            TopicLayout::Namespaced => {
                let (ns, after) = rest.split_once('/').ok_or_else(unknown_suffix)?;
                let (name, suffix) = after.split_once('/').ok_or_else(unknown_suffix)?;
                (DeviceId::namespaced(ns, name)?, suffix)
            }
        };
        let kind = DeviceTopicKind::from_suffix(suffix).ok_or_else(unknown_suffix)?;
        Ok(Topic::device(&device, kind))
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((device, kind)) = self.device_kind() {
            return write!(f, "{DEVICE_PREFIX}{device}/{}", kind.suffix());
        }
        if let Some((node, kind)) = self.node_kind() {
            return write!(f, "{NODE_PREFIX}{node}/{}", kind.suffix());
        }
        f.write_str(TWIN_UPDATE_ERROR_RESULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_never_confused() {
        let legacy = "$hw/events/device/thermo-1/twin/update/result";
        assert!(Topic::parse(legacy, TopicLayout::Namespaced).is_err());
        let t = Topic::parse(legacy, TopicLayout::Legacy).unwrap();
        assert_eq!(
            t,
            Topic::TwinUpdateResult {
                device: DeviceId::legacy("thermo-1").unwrap()
            }
        );
        let ns = "$hw/events/device/default/thermo-1/twin/update";
        assert!(Topic::parse(ns, TopicLayout::Legacy).is_err());
        let t = Topic::parse(ns, TopicLayout::Namespaced).unwrap();
        assert_eq!(t.to_string(), ns);
        for layout in [TopicLayout::Namespaced, TopicLayout::Legacy] {
            assert_eq!(
                Topic::parse(TWIN_UPDATE_ERROR_RESULT, layout).unwrap(),
                Topic::TwinUpdateErrorResult
            );
            assert!(Topic::parse("$hw/events/device/+/+/twin/update", layout).is_err());
            assert!(Topic::parse("$hw/events/device/", layout).is_err());
            assert!(Topic::parse("", layout).is_err());
        }
    }

    #[test]
    fn filters() {
        assert_eq!(
            DeviceTopicKind::TwinUpdateDelta.filter(TopicLayout::Namespaced),
            "$hw/events/device/+/+/twin/update/delta"
        );
        assert_eq!(
            DeviceTopicKind::TwinGetResult.filter(TopicLayout::Legacy),
            "$hw/events/device/+/twin/get/result"
        );
    }

    #[test]
    fn node_topics() {
        let t = Topic::parse(
            "$hw/events/node/edge-1/membership/get/result",
            TopicLayout::Namespaced,
        )
        .unwrap();
        assert_eq!(
            t,
            Topic::node("edge-1", NodeTopicKind::MembershipGetResult).unwrap()
        );
        assert!(Topic::parse("$hw/events/node/edge-1/membership", TopicLayout::Legacy).is_err());
    }
}
