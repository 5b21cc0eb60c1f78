//! Sparkplug topics: `spBv1.0/<group>/<MSG>/<edge node>[/<device>]` and
//! `spBv1.0/STATE/<host id>`.
//!
//! Invariants: a parsed topic always rebuilds to the same string; IDs are
//! non-empty UTF-8 without `+`, `/` or `#`
//! ([tck-id-topic-structure-namespace-valid-group-id],
//! [tck-id-topic-structure-namespace-valid-edge-node-id],
//! [tck-id-topic-structure-namespace-valid-device-id]); device-level message
//! types always carry a device and node-level ones never do
//! ([tck-id-topic-structure-namespace-device-id-associated-message-types],
//! [tck-id-topic-structure-namespace-device-id-non-associated-message-types]).

use std::fmt;

use thiserror::Error;

/// The Sparkplug B namespace element ([tck-id-topic-structure-namespace-a]).
pub const NAMESPACE: &str = "spBv1.0";

/// Why a topic or an ID is not valid Sparkplug.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("topic '{topic}' is not in the {NAMESPACE} namespace")]
    Namespace { topic: String },
    #[error("topic '{topic}' has {levels} levels; Sparkplug topics have 4 or 5 (STATE: 3)")]
    Shape { topic: String, levels: usize },
    #[error("topic '{topic}': unknown message type '{kind}'")]
    MessageType { topic: String, kind: String },
    #[error("topic '{topic}': {kind} {problem}")]
    DeviceLevel {
        topic: String,
        kind: MessageType,
        problem: &'static str,
    },
    #[error("{what} '{id}' is invalid: {problem}")]
    Id {
        what: &'static str,
        id: String,
        problem: &'static str,
    },
}

/// The eight edge message types ([tck-id-topic-structure]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    NBirth,
    NDeath,
    DBirth,
    DDeath,
    NData,
    DData,
    NCmd,
    DCmd,
}

impl MessageType {
    /// The topic element (`NBIRTH`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::NBirth => "NBIRTH",
            MessageType::NDeath => "NDEATH",
            MessageType::DBirth => "DBIRTH",
            MessageType::DDeath => "DDEATH",
            MessageType::NData => "NDATA",
            MessageType::DData => "DDATA",
            MessageType::NCmd => "NCMD",
            MessageType::DCmd => "DCMD",
        }
    }

    fn parse(s: &str) -> Option<MessageType> {
        Some(match s {
            "NBIRTH" => MessageType::NBirth,
            "NDEATH" => MessageType::NDeath,
            "DBIRTH" => MessageType::DBirth,
            "DDEATH" => MessageType::DDeath,
            "NDATA" => MessageType::NData,
            "DDATA" => MessageType::DData,
            "NCMD" => MessageType::NCmd,
            "DCMD" => MessageType::DCmd,
            _ => return None,
        })
    }

    /// True for DBIRTH, DDEATH, DDATA, DCMD.
    pub fn is_device_level(self) -> bool {
        matches!(
            self,
            MessageType::DBirth | MessageType::DDeath | MessageType::DData | MessageType::DCmd
        )
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed Sparkplug topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A message to or from an edge node or one of its devices.
    Edge {
        group: String,
        kind: MessageType,
        node: String,
        device: Option<String>,
    },
    /// A host application's STATE.
    State { host_id: String },
}

/// Checks a group, edge node, device or host ID.
pub fn validate_id(what: &'static str, id: &str) -> Result<(), TopicError> {
    let problem = if id.is_empty() {
        "it is empty"
    } else if id.contains('+') {
        "it contains '+', an MQTT wildcard"
    } else if id.contains('#') {
        "it contains '#', an MQTT wildcard"
    } else if id.contains('/') {
        "it contains '/', the topic separator"
    } else {
        return Ok(());
    };
    Err(TopicError::Id {
        what,
        id: id.to_string(),
        problem,
    })
}

impl Topic {
    /// A node-level topic; checks the IDs.
    pub fn node(group: &str, kind: MessageType, node: &str) -> Result<Topic, TopicError> {
        Self::build(group, kind, node, None)
    }

    /// A device-level topic; checks the IDs.
    pub fn device(group: &str, kind: MessageType, node: &str, device: &str) -> Result<Topic, TopicError> {
        Self::build(group, kind, node, Some(device))
    }

    /// The STATE topic of a host.
    pub fn state(host_id: &str) -> Result<Topic, TopicError> {
        validate_id("host id", host_id)?;
        Ok(Topic::State {
            host_id: host_id.to_string(),
        })
    }

    fn build(group: &str, kind: MessageType, node: &str, device: Option<&str>) -> Result<Topic, TopicError> {
        validate_id("group id", group)?;
        validate_id("edge node id", node)?;
        if let Some(d) = device {
            validate_id("device id", d)?;
        }
        let topic = Topic::Edge {
            group: group.to_string(),
            kind,
            node: node.to_string(),
            device: device.map(str::to_string),
        };
        topic.check_device_level()?;
        Ok(topic)
    }

    fn check_device_level(&self) -> Result<(), TopicError> {
        if let Topic::Edge { kind, device, .. } = self {
            let problem = match (kind.is_device_level(), device.is_some()) {
                (true, false) => "needs a device id",
                (false, true) => "must not have a device id",
                _ => return Ok(()),
            };
            return Err(TopicError::DeviceLevel {
                topic: self.to_string(),
                kind: *kind,
                problem,
            });
        }
        Ok(())
    }

    /// Parses a topic string received from a broker.
    pub fn parse(topic: &str) -> Result<Topic, TopicError> {
        let levels: Vec<&str> = topic.split('/').collect();
        if levels[0] != NAMESPACE {
            return Err(TopicError::Namespace {
                topic: topic.to_string(),
            });
        }
        let shape = || TopicError::Shape {
            topic: topic.to_string(),
            levels: levels.len(),
        };
        if levels.get(1) == Some(&"STATE") {
            if levels.len() != 3 {
                return Err(shape());
            }
            return Topic::state(levels[2]);
        }
        if !(4..=5).contains(&levels.len()) {
            return Err(shape());
        }
        let kind = MessageType::parse(levels[2]).ok_or_else(|| TopicError::MessageType {
            topic: topic.to_string(),
            kind: levels[2].to_string(),
        })?;
        Self::build(levels[1], kind, levels[3], levels.get(4).copied())
    }

    /// The message type, `None` for STATE.
    pub fn kind(&self) -> Option<MessageType> {
        match self {
            Topic::Edge { kind, .. } => Some(*kind),
            Topic::State { .. } => None,
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Edge {
                group,
                kind,
                node,
                device: None,
            } => write!(f, "{NAMESPACE}/{group}/{kind}/{node}"),
            Topic::Edge {
                group,
                kind,
                node,
                device: Some(d),
            } => write!(f, "{NAMESPACE}/{group}/{kind}/{node}/{d}"),
            Topic::State { host_id } => write!(f, "{NAMESPACE}/STATE/{host_id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // [tck-id-topic-structure] [tck-id-topics-nbirth-topic] [tck-id-topics-ddata-topic]
    #[test]
    fn node_and_device_topics_parse_and_rebuild() {
        for s in [
            "spBv1.0/Plant 1/NBIRTH/gw-01",
            "spBv1.0/Plant 1/NDATA/gw-01",
            "spBv1.0/Plant 1/NDEATH/gw-01",
            "spBv1.0/Plant 1/NCMD/gw-01",
            "spBv1.0/Plant 1/DBIRTH/gw-01/press.4",
            "spBv1.0/Plant 1/DDATA/gw-01/press.4",
            "spBv1.0/Plant 1/DDEATH/gw-01/press.4",
            "spBv1.0/Plant 1/DCMD/gw-01/press.4",
            "spBv1.0/STATE/scada-1",
        ] {
            assert_eq!(Topic::parse(s).expect(s).to_string(), s);
        }
    }

    // [tck-id-topic-structure-namespace-a]
    #[test]
    fn other_namespaces_are_rejected() {
        assert!(matches!(
            Topic::parse("spAv1.0/g/NDATA/n"),
            Err(TopicError::Namespace { .. })
        ));
    }

    // [tck-id-topic-structure-namespace-device-id-associated-message-types]
    #[test]
    fn device_message_without_device_is_rejected() {
        let err = Topic::parse("spBv1.0/g/DDATA/n").expect_err("DDATA needs a device");
        assert_eq!(err.to_string(), "topic 'spBv1.0/g/DDATA/n': DDATA needs a device id");
    }

    // [tck-id-topic-structure-namespace-device-id-non-associated-message-types]
    #[test]
    fn node_message_with_device_is_rejected() {
        let err = Topic::parse("spBv1.0/g/NDATA/n/d").expect_err("NDATA has no device");
        assert_eq!(
            err.to_string(),
            "topic 'spBv1.0/g/NDATA/n/d': NDATA must not have a device id"
        );
    }

    // [tck-id-topic-structure-namespace-valid-group-id] [tck-id-topic-structure-namespace-valid-edge-node-id]
    // [tck-id-topic-structure-namespace-valid-device-id]
    #[test]
    fn ids_with_wildcards_or_separators_are_rejected_with_a_reason() {
        assert_eq!(
            validate_id("group id", "a+b").expect_err("+").to_string(),
            "group id 'a+b' is invalid: it contains '+', an MQTT wildcard"
        );
        assert!(validate_id("edge node id", "a#").is_err());
        assert!(validate_id("device id", "a/b").is_err());
        assert!(validate_id("device id", "").is_err());
        assert!(Topic::device("g", MessageType::DData, "n", "x#").is_err());
        assert!(validate_id("device id", "Presse 4 – Zone B").is_ok());
    }

    #[test]
    fn unknown_message_type_and_wrong_depth_are_rejected() {
        assert!(matches!(
            Topic::parse("spBv1.0/g/NFOO/n"),
            Err(TopicError::MessageType { .. })
        ));
        assert!(matches!(Topic::parse("spBv1.0/g/NDATA"), Err(TopicError::Shape { .. })));
        assert!(matches!(
            Topic::parse("spBv1.0/g/DDATA/n/d/x"),
            Err(TopicError::Shape { .. })
        ));
        assert!(matches!(
            Topic::parse("spBv1.0/STATE/a/b"),
            Err(TopicError::Shape { .. })
        ));
    }

    proptest! {
        #[test]
        fn parsing_any_string_never_panics(s in ".{0,64}") {
            let _ = Topic::parse(&s);
        }

        #[test]
        fn valid_ids_always_round_trip(g in "[^+/#]{1,8}", n in "[^+/#]{1,8}", d in "[^+/#]{1,8}") {
            let t = Topic::device(&g, MessageType::DData, &n, &d).expect("valid ids");
            prop_assert_eq!(Topic::parse(&t.to_string()).expect("reparses"), t);
        }
    }
}
