//! `HostSession`: a Sparkplug B host application (Primary Host) as a pure
//! state machine.
//!
//! Inputs are connection events, received messages and ticks with `now`;
//! outputs are [`HostEvent`]s: MQTT actions for the I/O loop (STATE births
//! and deaths, rebirth requests) and decoded facts for the sinks (births,
//! data with names and datatypes resolved, deaths with the metrics that went
//! STALE, quarantined payloads).
//!
//! Invariants (each a test below):
//! - The STATE Will and the STATE birth of one connection carry the same
//!   timestamp; subscriptions go out before the birth.
//! - Per node: an NDEATH counts only if its bdSeq matches the current NBIRTH.
//! - Sequenced messages (DBIRTH, DDEATH, NDATA, DDATA) are processed in seq
//!   order. A gap holds later messages for the reorder timeout; if the gap is
//!   filled in time nothing else happens, otherwise exactly one rebirth is
//!   requested and the held messages are processed in order. Nothing received
//!   is dropped: what cannot be interpreted becomes [`HostEvent::Quarantine`].
//! - Rebirth requests per node are at least `rebirth_min_interval_ms` apart,
//!   and at most `max_rebirths_per_second` go out over all nodes.
//! - What one message can cost is bounded before it is decoded
//!   ([`HostLimits`]): a payload over `max_payload_bytes`, over
//!   `max_metrics_per_message` metrics (counted on the wire, nothing
//!   allocated), or with a name or id over `max_name_bytes` is quarantined
//!   whole. Names resolved from aliases are shared with the birth's map
//!   ([`HostEvent::Data`]'s `names`), never copied per metric.
//! - The session's own memory is bounded: at most `max_nodes` nodes are
//!   tracked (an offline node seen least recently makes room; the online
//!   ones are never evicted), at most `max_devices_per_node` devices per
//!   node, and at most `max_held_messages` held per node (one more closes
//!   the reorder window early: what is held is processed in order and one
//!   rebirth is requested, as when the timeout passes).

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;
use thiserror::Error;

use super::codec::{DatatypeSource, Datatypes, Metric, Payload, PropertySet, Value};
use super::datatype::DataType;
use super::pb;
use super::state::HostState;
use super::topic::{validate_id, MessageType, Topic, TopicError, NAMESPACE};
use super::{Publish, QoS, BDSEQ, REBIRTH};

/// Why a host-side request was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum HostError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("edge node {group}/{node} is not online")]
    NodeOffline { group: String, node: String },
    #[error("device '{device}' of {group}/{node} is not online")]
    DeviceOffline {
        group: String,
        node: String,
        device: String,
    },
    #[error("metric '{metric}' was not declared in the birth of {scope}")]
    UnknownMetric { scope: String, metric: String },
    #[error("metric '{metric}' of {scope} is {declared}; a {got} value cannot be written to it")]
    TypeMismatch {
        scope: String,
        metric: String,
        declared: DataType,
        got: DataType,
    },
    #[error("encoding failed: {0}")]
    Codec(#[from] super::codec::CodecError),
}

/// A command (NCMD/DCMD) seen on the broker, checked against its target's
/// birth: what a Sparkplug edge has to accept, and why it would refuse the
/// rest (for the uplink's command audit).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandSeen {
    pub group: String,
    pub node: String,
    pub device: Option<String>,
    pub timestamp: Option<u64>,
    pub writes: Vec<CommandWrite>,
}

/// One metric of a [`CommandSeen`].
#[derive(Debug, Clone, PartialEq)]
pub struct CommandWrite {
    /// The metric's name, resolved from its alias where the birth has it
    /// (`alias N` where it does not).
    pub metric: String,
    /// The value as text (`None`: no value, or not decodable).
    pub value: Option<String>,
    /// `Ok` when the target is online, declared the metric and the value is
    /// of its datatype; otherwise why an edge refuses it.
    pub verdict: Result<(), String>,
}

/// Host application settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    pub host_id: String,
    /// Topic filters to subscribe to, e.g. `spBv1.0/#` or `spBv1.0/Plant1/#`.
    pub subscriptions: Vec<String>,
    /// How long a seq gap may stay open before a rebirth is requested
    /// ([tck-id-operational-behavior-host-reordering-param]).
    pub reorder_timeout_ms: u64,
    /// Minimum time between two rebirth requests to the same node.
    pub rebirth_min_interval_ms: u64,
    pub limits: HostLimits,
}

/// What one message, and the session's state, may cost (module invariants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    pub max_payload_bytes: usize,
    pub max_metrics_per_message: usize,
    /// Longest group, node or device id and metric name, in bytes.
    pub max_name_bytes: usize,
    pub max_held_messages: usize,
    pub max_nodes: usize,
    pub max_devices_per_node: usize,
    /// Rebirth requests this host sends per second over all nodes (a burst
    /// of as many is allowed): forged traffic for a thousand strangers
    /// cannot turn the host into a flood of NCMDs.
    pub max_rebirths_per_second: u32,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            max_payload_bytes: 1024 * 1024,
            max_metrics_per_message: 20_000,
            max_name_bytes: 512,
            max_held_messages: 1_000,
            max_nodes: 10_000,
            max_devices_per_node: 10_000,
            max_rebirths_per_second: 20,
        }
    }
}

/// How many metrics a Sparkplug payload holds, counted on the wire
/// without decoding; `None` when the protobuf framing is broken.
pub fn count_metrics(b: &[u8]) -> Option<usize> {
    super::wire::Envelope::read(b).map(|e| e.metrics)
}

/// Why a node's metrics went STALE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathCause {
    /// An NDEATH whose bdSeq matched the current NBIRTH.
    NDeath { bdseq: u64 },
    /// This host lost its own connection to the broker.
    HostDisconnected,
}

/// A metric a death made STALE: its device (`None` for the node's own), its
/// name and the datatype its birth declared.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stale {
    pub device: Option<String>,
    pub metric: String,
    pub datatype: DataType,
}

/// What the host session wants done or reports.
#[derive(Debug, Clone, PartialEq)]
pub enum HostEvent {
    Subscribe(Vec<String>),
    Publish(Publish),
    Disconnect,
    NodeBirth {
        group: String,
        node: String,
        bdseq: u64,
        timestamp: Option<u64>,
        metrics: Vec<Metric>,
    },
    DeviceBirth {
        group: String,
        node: String,
        device: String,
        timestamp: Option<u64>,
        metrics: Vec<Metric>,
    },
    /// NDATA/DDATA with every metric's datatype filled in from the births,
    /// and `names[i]` the name of `metrics[i]` (shared with the birth's map:
    /// a metric sent by alias keeps `name: None`).
    Data {
        group: String,
        node: String,
        device: Option<String>,
        seq: u8,
        timestamp: Option<u64>,
        metrics: Vec<Metric>,
        names: Vec<Arc<str>>,
    },
    /// The node and all its devices are offline; `stale` lists the node's
    /// metrics and those of its devices that were online, now STALE as of `at`.
    NodeDeath {
        group: String,
        node: String,
        cause: DeathCause,
        at: u64,
        stale: Vec<Stale>,
    },
    /// A device is offline; its metrics are STALE as of `at` (the DDEATH timestamp).
    DeviceDeath {
        group: String,
        node: String,
        device: String,
        at: u64,
        stale: Vec<Stale>,
    },
    /// An NDEATH whose bdSeq does not match the current birth (late Will of an older session).
    DeathIgnored {
        group: String,
        node: String,
        bdseq: Option<u64>,
    },
    /// A message that arrived with an unexpected seq.
    SequenceError {
        group: String,
        node: String,
        expected: u8,
        got: u8,
    },
    /// A rebirth request was published to this node.
    RebirthRequested {
        group: String,
        node: String,
        reason: String,
    },
    /// A command (NCMD/DCMD) for the audit: one this host sent
    /// (`by_this_host`), or one another client published. The broker's
    /// echo of this host's own command is not reported again.
    Command {
        seen: CommandSeen,
        by_this_host: bool,
    },
    /// A payload that could not be interpreted: kept with the reason, never dropped.
    Quarantine {
        topic: String,
        payload: Vec<u8>,
        reason: String,
    },
}

impl HostEvent {
    /// A [`HostEvent::Data`] of metrics that carry their own names.
    pub fn data(
        group: &str,
        node: &str,
        device: Option<&str>,
        seq: u8,
        timestamp: Option<u64>,
        metrics: Vec<Metric>,
    ) -> HostEvent {
        let names = metrics
            .iter()
            .map(|m| Arc::from(m.name.as_deref().unwrap_or_default()))
            .collect();
        HostEvent::Data {
            group: group.to_string(),
            node: node.to_string(),
            device: device.map(str::to_string),
            seq,
            timestamp,
            metrics,
            names,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct ScopeMap {
    label: String,
    by_alias: HashMap<u64, (Arc<str>, DataType)>,
    by_name: HashMap<Arc<str>, DataType>,
    online: bool,
}

impl ScopeMap {
    fn from_birth(label: String, metrics: &[Metric]) -> ScopeMap {
        let mut s = ScopeMap {
            label,
            online: true,
            ..ScopeMap::default()
        };
        for m in metrics {
            if let Some(name) = &m.name {
                let name: Arc<str> = Arc::from(name.as_str());
                s.by_name.insert(name.clone(), m.datatype);
                if let Some(a) = m.alias {
                    s.by_alias.insert(a, (name, m.datatype));
                }
            }
        }
        s
    }

    /// The scope's metrics as STALE entries of `device`.
    fn stale<'a>(&'a self, device: Option<&'a str>) -> impl Iterator<Item = Stale> + 'a {
        self.by_name.iter().map(move |(m, d)| Stale {
            device: device.map(str::to_string),
            metric: m.to_string(),
            datatype: *d,
        })
    }

    /// The shared name of a metric sent by name or alias, if declared.
    fn name_of(&self, name: Option<&str>, alias: Option<u64>) -> Option<Arc<str>> {
        match (name, alias) {
            (Some(n), _) => self.by_name.get_key_value(n).map(|(k, _)| k.clone()),
            (None, Some(a)) => self.by_alias.get(&a).map(|(n, _)| n.clone()),
            (None, None) => None,
        }
    }
}

impl DatatypeSource for ScopeMap {
    fn datatype_of(&self, name: Option<&str>, alias: Option<u64>) -> Option<DataType> {
        match (name, alias) {
            (Some(n), _) => self.by_name.get(n).copied(),
            (None, Some(a)) => self.by_alias.get(&a).map(|(_, d)| *d),
            (None, None) => None,
        }
    }
}

/// A sequenced message waiting for the gap before it to fill.
#[derive(Debug, Clone)]
struct Held {
    seq: u8,
    kind: MessageType,
    device: Option<String>,
    topic: String,
    payload: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct NodeState {
    online: bool,
    bdseq: Option<u64>,
    expected_seq: u8,
    metrics: ScopeMap,
    devices: HashMap<String, ScopeMap>,
    held: Vec<Held>,
    reorder_deadline: Option<u64>,
    last_rebirth_request: Option<u64>,
    /// When a message of this node last arrived (eviction order).
    last_seen: u64,
}

/// The host application session. See the module docs for its invariants.
#[derive(Debug, Clone)]
pub struct HostSession {
    cfg: HostConfig,
    state_topic: String,
    will_ts: u64,
    connected: bool,
    /// This host said it is offline while connected (its sink is behind).
    declared_offline: bool,
    nodes: HashMap<(String, String), NodeState>,
    /// Rebirth requests left in the current second, and which second.
    rebirth_budget: (u64, u32),
    /// Rebirth requests not sent because the budget was spent.
    rebirths_suppressed: u64,
    /// Commands this host sent lately (ms, topic, payload), so that their
    /// echo from the broker is not audited twice; at most
    /// [`OWN_COMMANDS_KEPT`], none older than [`OWN_COMMANDS_MS`].
    own_commands: std::collections::VecDeque<(u64, String, Vec<u8>)>,
}

/// How many of its own commands a host remembers to recognise their echo.
pub const OWN_COMMANDS_KEPT: usize = 4096;
/// How long a host waits for the echo of its own command.
pub const OWN_COMMANDS_MS: u64 = 60_000;

/// Reads the bdSeq metric; Int64 per the spec, UInt64 from Tahu JS, any integer accepted.
fn bdseq_in(p: &Payload) -> Option<u64> {
    p.metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(BDSEQ))
        .and_then(|m| match m.value {
            Some(Value::Int64(v)) => u64::try_from(v).ok(),
            Some(Value::UInt64(v)) => Some(v),
            Some(Value::Int32(v)) => u64::try_from(v).ok(),
            Some(Value::UInt32(v)) => Some(v.into()),
            _ => None,
        })
}

impl HostSession {
    /// A session for `cfg`.
    pub fn new(cfg: HostConfig) -> Result<HostSession, HostError> {
        // [tck-id-operational-behavior-host-application-host-id]
        validate_id("host id", &cfg.host_id)?;
        let state_topic = Topic::state(&cfg.host_id)?.to_string();
        Ok(HostSession {
            cfg,
            state_topic,
            will_ts: 0,
            connected: false,
            declared_offline: false,
            nodes: HashMap::new(),
            rebirth_budget: (0, 0),
            rebirths_suppressed: 0,
            own_commands: std::collections::VecDeque::new(),
        })
    }

    /// The STATE topic of this host.
    pub fn state_topic(&self) -> &str {
        &self.state_topic
    }

    /// Online edge nodes.
    pub fn online_nodes(&self) -> usize {
        self.nodes.values().filter(|n| n.online).count()
    }

    /// Rebirth requests not sent because `max_rebirths_per_second` was spent.
    pub fn rebirths_suppressed(&self) -> u64 {
        self.rebirths_suppressed
    }

    /// Edge nodes the session keeps state for (at most `max_nodes`).
    pub fn tracked_nodes(&self) -> usize {
        self.nodes.len()
    }

    fn state(&self, online: bool, ts: u64) -> Publish {
        Publish {
            topic: self.state_topic.clone(),
            payload: HostState { online, timestamp: ts }.to_json(),
            // [tck-id-host-topic-phid-birth-qos] [tck-id-host-topic-phid-birth-retain]
            // [tck-id-host-topic-phid-death-qos] [tck-id-host-topic-phid-death-retain]
            qos: QoS::AtLeastOnce,
            retain: true,
            kind: None,
        }
    }

    /// The Will for the next CONNECT: STATE offline stamped `now`.
    /// [tck-id-host-topic-phid-death-required] [tck-id-host-topic-phid-death-topic]
    /// [tck-id-host-topic-phid-death-payload-timestamp-connect]
    pub fn begin_connect(&mut self, now: u64) -> Publish {
        self.will_ts = now;
        self.state(false, now)
    }

    /// CONNACK accepted: subscribe, then publish STATE online with the Will's timestamp.
    /// [tck-id-host-topic-phid-birth-sub-required] [tck-id-host-topic-phid-birth-required]
    /// [tck-id-host-topic-phid-birth-message] [tck-id-message-flow-phid-sparkplug-subscription]
    pub fn connected(&mut self) -> Vec<HostEvent> {
        self.connected = true;
        let mut subs = self.cfg.subscriptions.clone();
        subs.push(self.state_topic.clone());
        // [tck-id-host-topic-phid-birth-payload-timestamp]
        vec![
            HostEvent::Subscribe(subs),
            // Still declared offline (catching up): the birth says so.
            HostEvent::Publish(self.state(!self.declared_offline, self.will_ts)),
        ]
    }

    /// Takes the messages of `group`/`node` up to `seq` as seen without
    /// processing them (another host instance wrote them): the next
    /// message in sequence is `seq + 1`, not a gap. Nothing changes for a
    /// node not online, holding messages, or already past `seq`.
    pub fn skip_to(&mut self, group: &str, node: &str, seq: u8) {
        if let Some(n) = self.nodes.get_mut(&(group.to_string(), node.to_string())) {
            if n.online && n.held.is_empty() && seq.wrapping_sub(n.expected_seq) < 128 {
                n.expected_seq = seq.wrapping_add(1);
            }
        }
    }

    /// The STATE birth of the current connection (online unless declared
    /// offline), for a host whose STATE travels on a connection of its own.
    pub fn state_birth(&self) -> Publish {
        self.state(!self.declared_offline, self.will_ts)
    }

    /// While connected, declare this host offline (its sink is behind,
    /// docs/ARCHITECTURE.md decision 4): STATE offline with this connection's
    /// timestamp, so edges store on their own flash.
    pub fn declare_offline(&mut self) -> Publish {
        self.declared_offline = true;
        self.state(false, self.will_ts)
    }

    /// Online again after [`declare_offline`](Self::declare_offline): the
    /// same timestamp, which edges accept (not older than the newest seen).
    pub fn declare_online(&mut self) -> Publish {
        self.declared_offline = false;
        self.state(true, self.will_ts)
    }

    /// This host lost its broker connection: every online node's metrics go STALE.
    pub fn connection_lost(&mut self, now: u64) -> Vec<HostEvent> {
        self.connected = false;
        let mut out = Vec::new();
        let mut keys: Vec<_> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.online)
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        for (group, node) in keys {
            out.push(self.kill_node(&group, &node, DeathCause::HostDisconnected, now));
        }
        out
    }

    /// Deliberate disconnect: STATE offline stamped `now`, then DISCONNECT.
    /// [tck-id-host-topic-phid-death-payload-timestamp-disconnect-clean]
    /// [tck-id-operational-behavior-host-application-disconnect-intentional]
    pub fn shutdown(&mut self, now: u64) -> Vec<HostEvent> {
        self.connected = false;
        vec![HostEvent::Publish(self.state(false, now)), HostEvent::Disconnect]
    }

    fn kill_node(&mut self, group: &str, node: &str, cause: DeathCause, at: u64) -> HostEvent {
        let n = self.nodes.entry((group.to_string(), node.to_string())).or_default();
        n.online = false;
        n.held.clear();
        n.reorder_deadline = None;
        let mut stale: Vec<Stale> = n.metrics.stale(None).collect();
        for (d, scope) in &mut n.devices {
            // A device already dead went STALE with its own death.
            if std::mem::replace(&mut scope.online, false) {
                stale.extend(scope.stale(Some(d)));
            }
        }
        stale.sort();
        HostEvent::NodeDeath {
            group: group.to_string(),
            node: node.to_string(),
            cause,
            at,
            stale,
        }
    }

    /// Publishes an NCMD `Node Control/Rebirth = true` unless one went out to
    /// this node less than `rebirth_min_interval_ms` ago.
    pub fn request_rebirth(&mut self, now: u64, group: &str, node: &str, reason: &str) -> Vec<HostEvent> {
        let min = self.cfg.rebirth_min_interval_ms;
        let Some(n) = self.node_entry(group, node, now) else {
            // Every tracked node is online: a stranger gets no rebirth
            // request (its rate could not be limited).
            return Vec::new();
        };
        if let Some(last) = n.last_rebirth_request {
            if now < last.saturating_add(min) {
                return Vec::new();
            }
        }
        let second = now / 1000;
        if self.rebirth_budget.0 != second {
            self.rebirth_budget = (second, self.cfg.limits.max_rebirths_per_second);
        }
        if self.rebirth_budget.1 == 0 {
            // The node asks again with its next message after this second.
            self.rebirths_suppressed += 1;
            return Vec::new();
        }
        self.rebirth_budget.1 -= 1;
        let n = self
            .nodes
            .get_mut(&(group.to_string(), node.to_string()))
            .expect("made above");
        n.last_rebirth_request = Some(now);
        // [tck-id-operational-behavior-data-commands-ncmd-rebirth-verb]
        // [tck-id-operational-behavior-data-commands-ncmd-rebirth-name]
        // [tck-id-operational-behavior-data-commands-ncmd-rebirth-value]
        // [tck-id-topics-ncmd-timestamp] [tck-id-payloads-ncmd-timestamp] [tck-id-payloads-ncmd-seq]
        let payload = Payload {
            timestamp: Some(now),
            metrics: vec![Metric::new(REBIRTH, Value::Boolean(true), now)],
            ..Payload::default()
        };
        let topic = format!("{NAMESPACE}/{group}/NCMD/{node}");
        let publish = Publish {
            topic,
            // The rebirth metric has no alias; its datatype goes along so that
            // edges which cannot look it up (no birth on their side) decode it.
            payload: payload
                .encode_with(Datatypes::Include)
                .expect("a boolean metric always encodes"),
            // [tck-id-topics-ncmd-mqtt] [tck-id-payloads-ncmd-qos] [tck-id-payloads-ncmd-retain]
            qos: QoS::AtMostOnce,
            retain: false,
            kind: Some(MessageType::NCmd),
        };
        let mut out = self.own_command(now, publish);
        out.push(HostEvent::RebirthRequested {
            group: group.to_string(),
            node: node.to_string(),
            reason: reason.to_string(),
        });
        out
    }

    /// A command this host publishes: audited now, and remembered so that
    /// the broker's echo of it is not audited again.
    fn own_command(&mut self, now: u64, p: Publish) -> Vec<HostEvent> {
        let mut out = Vec::with_capacity(2);
        if let Some(seen) = self.inspect_command(&p.topic, &p.payload) {
            out.push(HostEvent::Command {
                seen,
                by_this_host: true,
            });
            self.remember_own(now, &p);
        }
        out.push(HostEvent::Publish(p));
        out
    }

    /// Keeps a command this host sends, to know its echo.
    fn remember_own(&mut self, now: u64, p: &Publish) {
        while self
            .own_commands
            .front()
            .is_some_and(|(t, ..)| now.saturating_sub(*t) > OWN_COMMANDS_MS)
            || self.own_commands.len() >= OWN_COMMANDS_KEPT
        {
            self.own_commands.pop_front();
        }
        self.own_commands.push_back((now, p.topic.clone(), p.payload.clone()));
    }

    /// A command seen on the broker: reported for the audit unless it is
    /// the echo of one this host sent (then forgotten: a second copy is
    /// another client's).
    fn command_seen(&mut self, topic: &str, payload: &[u8]) -> Option<HostEvent> {
        let seen = self.inspect_command(topic, payload)?;
        let echo = self
            .own_commands
            .iter()
            .position(|(_, t, b)| t == topic && b[..] == payload[..]);
        match echo {
            Some(i) => {
                self.own_commands.remove(i);
                None
            }
            None => Some(HostEvent::Command {
                seen,
                by_this_host: false,
            }),
        }
    }

    /// Builds an NCMD (`device = None`) or DCMD writing `writes` (name, value).
    /// Names must be in the birth and values of the declared datatype
    /// ([tck-id-operational-behavior-data-commands-ncmd-metric-name],
    /// [tck-id-operational-behavior-data-commands-ncmd-metric-value],
    /// [tck-id-operational-behavior-data-commands-dcmd-metric-value]).
    pub fn command(
        &self,
        now: u64,
        group: &str,
        node: &str,
        device: Option<&str>,
        writes: Vec<(String, Value)>,
    ) -> Result<Publish, HostError> {
        let writes = writes.into_iter().map(|(n, v)| (n, v, None)).collect();
        self.build_command(now, group, node, device, writes)
    }

    /// The datatype the last birth of an online node (and device) declared
    /// for `metric`, or why there is none.
    pub fn declared(&self, group: &str, node: &str, device: Option<&str>, metric: &str) -> Result<DataType, HostError> {
        let scope = self.online_scope(group, node, device)?;
        scope
            .by_name
            .get(metric)
            .copied()
            .ok_or_else(|| HostError::UnknownMetric {
                scope: scope.label.clone(),
                metric: metric.to_string(),
            })
    }

    /// A write of one metric that carries `properties` (the request id the
    /// edge echoes), checked like [`command`](Self::command). It is
    /// remembered, so that the broker's echo is not reported as another
    /// client's command: the caller audits it.
    #[allow(clippy::too_many_arguments)]
    pub fn write_command(
        &mut self,
        now: u64,
        group: &str,
        node: &str,
        device: Option<&str>,
        metric: &str,
        value: Value,
        properties: PropertySet,
    ) -> Result<Publish, HostError> {
        let p = self.build_command(
            now,
            group,
            node,
            device,
            vec![(metric.to_string(), value, Some(properties))],
        )?;
        self.remember_own(now, &p);
        Ok(p)
    }

    fn online_scope(&self, group: &str, node: &str, device: Option<&str>) -> Result<&ScopeMap, HostError> {
        let offline = || HostError::NodeOffline {
            group: group.to_string(),
            node: node.to_string(),
        };
        let n = self
            .nodes
            .get(&(group.to_string(), node.to_string()))
            .filter(|n| n.online)
            .ok_or_else(offline)?;
        let scope = match device {
            None => &n.metrics,
            Some(d) => n
                .devices
                .get(d)
                .filter(|s| s.online)
                .ok_or_else(|| HostError::DeviceOffline {
                    group: group.to_string(),
                    node: node.to_string(),
                    device: d.to_string(),
                })?,
        };
        Ok(scope)
    }

    fn build_command(
        &self,
        now: u64,
        group: &str,
        node: &str,
        device: Option<&str>,
        writes: Vec<(String, Value, Option<PropertySet>)>,
    ) -> Result<Publish, HostError> {
        let scope = self.online_scope(group, node, device)?;
        let mut metrics = Vec::with_capacity(writes.len());
        for (name, value, properties) in writes {
            let declared = *scope
                .by_name
                .get(name.as_str())
                .ok_or_else(|| HostError::UnknownMetric {
                    scope: scope.label.clone(),
                    metric: name.clone(),
                })?;
            if declared != value.datatype() {
                return Err(HostError::TypeMismatch {
                    scope: scope.label.clone(),
                    metric: name,
                    declared,
                    got: value.datatype(),
                });
            }
            let alias = scope.by_alias.iter().find(|(_, (n, _))| **n == *name).map(|(a, _)| *a);
            let mut m = Metric::new(name, value, now);
            m.properties = properties;
            // [tck-id-payloads-alias-data-cmd-requirement]: alias alone when the birth gave one.
            // [tck-id-payloads-name-cmd-requirement]: a timestamp MAY be included.
            if alias.is_some() {
                m.name = None;
                m.alias = alias;
            }
            metrics.push(m);
        }
        let kind = if device.is_some() {
            MessageType::DCmd
        } else {
            MessageType::NCmd
        };
        let topic = match device {
            None => Topic::node(group, kind, node)?,
            Some(d) => Topic::device(group, kind, node, d)?,
        };
        // [tck-id-topics-ncmd-payload] [tck-id-topics-dcmd-payload] [tck-id-topics-dcmd-timestamp] [tck-id-payloads-dcmd-seq]
        let payload = Payload {
            timestamp: Some(now),
            metrics,
            ..Payload::default()
        };
        Ok(Publish {
            topic: topic.to_string(),
            payload: payload.encode_with(Datatypes::Omit)?,
            // [tck-id-topics-dcmd-mqtt] [tck-id-payloads-dcmd-qos] [tck-id-payloads-dcmd-retain]
            qos: QoS::AtMostOnce,
            retain: false,
            kind: Some(kind),
        })
    }

    /// Checks an NCMD/DCMD (`None` for any other topic) against the target's
    /// birth: node and device online, metric declared
    /// ([tck-id-operational-behavior-data-commands-ncmd-metric-name]), value of
    /// the declared datatype
    /// ([tck-id-operational-behavior-data-commands-ncmd-metric-value]). A payload
    /// that does not decode is one write with an empty name.
    pub fn inspect_command(&self, topic: &str, payload: &[u8]) -> Option<CommandSeen> {
        // Called for every message: the common case (not a command) costs
        // no allocation.
        if !matches!(topic.split('/').nth(2), Some("NCMD" | "DCMD")) {
            return None;
        }
        let Ok(Topic::Edge {
            group,
            kind: MessageType::NCmd | MessageType::DCmd,
            node,
            device,
        }) = Topic::parse(topic)
        else {
            return None;
        };
        let mut seen = CommandSeen {
            group,
            node,
            device,
            timestamp: None,
            writes: Vec::new(),
        };
        // One audit row, not one per metric, for a command over the limits.
        let lim = self.cfg.limits;
        let over = if payload.len() > lim.max_payload_bytes {
            Some(format!(
                "payload of {} bytes is over max_payload_bytes ({})",
                payload.len(),
                lim.max_payload_bytes
            ))
        } else {
            count_metrics(payload)
                .filter(|n| *n > lim.max_metrics_per_message)
                .map(|n| {
                    format!(
                        "{n} metrics in one message, over max_metrics_per_message ({})",
                        lim.max_metrics_per_message
                    )
                })
        };
        if let Some(why) = over {
            seen.writes.push(CommandWrite {
                metric: String::new(),
                value: None,
                verdict: Err(why),
            });
            return Some(seen);
        }
        let raw = match pb::Payload::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                seen.writes.push(CommandWrite {
                    metric: String::new(),
                    value: None,
                    verdict: Err(format!("not a Sparkplug payload: {e}")),
                });
                return Some(seen);
            }
        };
        seen.timestamp = raw.timestamp;
        let node = self
            .nodes
            .get(&(seen.group.clone(), seen.node.clone()))
            .filter(|n| n.online);
        let scope: Result<&ScopeMap, String> = match (node, &seen.device) {
            (None, _) => Err(format!("edge node {}/{} is not online", seen.group, seen.node)),
            (Some(n), None) => Ok(&n.metrics),
            (Some(n), Some(d)) => n
                .devices
                .get(d)
                .filter(|s| s.online)
                .ok_or_else(|| format!("device '{d}' of {}/{} is not online", seen.group, seen.node)),
        };
        for m in raw.metrics {
            let known = scope.as_ref().ok().and_then(|s| match (&m.name, m.alias) {
                (Some(n), _) => s.by_name.get(n.as_str()).map(|d| (n.clone(), *d)),
                (None, Some(a)) => s.by_alias.get(&a).map(|(n, d)| (n.to_string(), *d)),
                (None, None) => None,
            });
            let label = m
                .name
                .clone()
                .or_else(|| known.as_ref().map(|k| k.0.clone()))
                .unwrap_or_else(|| {
                    m.alias
                        .map_or_else(|| "(no name or alias)".into(), |a| format!("alias {a}"))
                });
            let one = pb::Payload {
                metrics: vec![m],
                ..Default::default()
            };
            let decoded = match &scope {
                Ok(s) => Payload::from_pb(one, *s),
                Err(_) => Payload::from_pb(one, &super::codec::SelfDescribing),
            };
            let value = decoded
                .as_ref()
                .ok()
                .and_then(|p| p.metrics.first())
                .and_then(|d| d.value.as_ref())
                .map(|v| v.to_string());
            let verdict = match (&scope, &known, &decoded) {
                (Err(why), _, _) => Err(why.clone()),
                (Ok(s), None, _) => Err(format!("metric '{label}' was not declared in the birth of {}", s.label)),
                (Ok(_), Some(_), Err(e)) => Err(e.to_string()),
                (Ok(s), Some((_, declared)), Ok(p)) => match p.metrics.first().map(|d| d.datatype) {
                    Some(got) if got != *declared => Err(format!(
                        "metric '{label}' of {} is {declared}; a {got} value cannot be written to it",
                        s.label
                    )),
                    _ => Ok(()),
                },
            };
            seen.writes.push(CommandWrite {
                metric: label,
                value,
                verdict,
            });
        }
        Some(seen)
    }

    /// Handles one received message.
    pub fn handle_message(&mut self, now: u64, topic: &str, payload: &[u8]) -> Vec<HostEvent> {
        let mut out: Vec<HostEvent> = self.command_seen(topic, payload).into_iter().collect();
        out.extend(self.message(now, topic, payload));
        out
    }

    fn message(&mut self, now: u64, topic: &str, payload: &[u8]) -> Vec<HostEvent> {
        let lim = self.cfg.limits;
        if payload.len() > lim.max_payload_bytes {
            let reason = format!(
                "payload of {} bytes is over max_payload_bytes ({})",
                payload.len(),
                lim.max_payload_bytes
            );
            return vec![quarantine(topic, payload, reason)];
        }
        let parsed = match Topic::parse(topic) {
            Ok(t) => t,
            Err(e) => return vec![quarantine(topic, payload, e.to_string())],
        };
        // Read once here: the metric count for the limit, the seq for the order.
        let envelope = super::wire::Envelope::read(payload);
        if let Topic::Edge {
            group, node, device, ..
        } = &parsed
        {
            let longest = [Some(group), Some(node), device.as_ref()]
                .into_iter()
                .flatten()
                .map(|s| s.len())
                .max()
                .unwrap_or(0);
            if longest > lim.max_name_bytes {
                let reason = format!(
                    "an id of {longest} bytes is over max_name_bytes ({})",
                    lim.max_name_bytes
                );
                return vec![quarantine(topic, payload, reason)];
            }
            if let Some(n) = envelope.map(|e| e.metrics).filter(|n| *n > lim.max_metrics_per_message) {
                let reason = format!(
                    "{n} metrics in one message, over max_metrics_per_message ({})",
                    lim.max_metrics_per_message
                );
                return vec![quarantine(topic, payload, reason)];
            }
            if let Some(n) = self.nodes.get_mut(&(group.clone(), node.clone())) {
                n.last_seen = now;
            }
        }
        match parsed {
            Topic::State { host_id } => {
                if host_id != self.cfg.host_id || !self.connected {
                    return Vec::new();
                }
                match HostState::parse(payload) {
                    // Our own declaration (see `declare_offline`): leave it.
                    Ok(s) if !s.online && self.declared_offline => Vec::new(),
                    // Someone (or a stale retained message) says we are offline: correct it.
                    Ok(s) if !s.online => vec![HostEvent::Publish(self.state(true, self.will_ts))],
                    Ok(_) => Vec::new(),
                    Err(e) => vec![quarantine(topic, payload, e.to_string())],
                }
            }
            Topic::Edge {
                group,
                kind,
                node,
                device,
            } => match kind {
                MessageType::NBirth => self.nbirth(now, &group, &node, topic, payload),
                MessageType::NDeath => self.ndeath(now, &group, &node, topic, payload),
                MessageType::NCmd | MessageType::DCmd => Vec::new(),
                MessageType::DBirth | MessageType::DDeath | MessageType::NData | MessageType::DData => {
                    self.sequenced(now, &group, &node, kind, device, topic, payload, envelope)
                }
            },
        }
    }

    fn rejected(
        &mut self,
        now: u64,
        group: &str,
        node: &str,
        topic: &str,
        payload: &[u8],
        reason: String,
    ) -> Vec<HostEvent> {
        let mut out = vec![quarantine(topic, payload, reason.clone())];
        out.extend(self.request_rebirth(now, group, node, &reason));
        out
    }

    fn nbirth(&mut self, now: u64, group: &str, node: &str, topic: &str, payload: &[u8]) -> Vec<HostEvent> {
        let p = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => return self.rejected(now, group, node, topic, payload, e.to_string()),
        };
        // [tck-id-payloads-nbirth-seq]
        if p.seq != Some(0) {
            return self.rejected(
                now,
                group,
                node,
                topic,
                payload,
                format!("NBIRTH seq is {:?}, must be 0", p.seq),
            );
        }
        // [tck-id-payloads-nbirth-bdseq]
        let Some(bdseq) = bdseq_in(&p) else {
            return self.rejected(
                now,
                group,
                node,
                topic,
                payload,
                "NBIRTH has no integer bdSeq metric".to_string(),
            );
        };
        if let Some(reason) = self.long_name(&p.metrics) {
            return self.rejected(now, group, node, topic, payload, reason);
        }
        let max_nodes = self.cfg.limits.max_nodes;
        let Some(n) = self.node_entry(group, node, now) else {
            let reason = format!("max_nodes ({max_nodes}) edge nodes are online: NBIRTH refused");
            return vec![quarantine(topic, payload, reason)];
        };
        n.online = true;
        n.bdseq = Some(bdseq);
        n.expected_seq = 1;
        n.held.clear();
        n.reorder_deadline = None;
        n.metrics = ScopeMap::from_birth(format!("edge node {group}/{node}"), &p.metrics);
        // Devices stay known (for STALE bookkeeping) but offline until their DBIRTH.
        for d in n.devices.values_mut() {
            d.online = false;
        }
        vec![HostEvent::NodeBirth {
            group: group.to_string(),
            node: node.to_string(),
            bdseq,
            timestamp: p.timestamp,
            metrics: p.metrics,
        }]
    }

    fn ndeath(&mut self, now: u64, group: &str, node: &str, topic: &str, payload: &[u8]) -> Vec<HostEvent> {
        let p = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => return vec![quarantine(topic, payload, e.to_string())],
        };
        let bdseq = bdseq_in(&p);
        let current = self
            .nodes
            .get(&(group.to_string(), node.to_string()))
            .filter(|n| n.online)
            .and_then(|n| n.bdseq);
        match (bdseq, current) {
            (Some(b), Some(c)) if b == c => {
                vec![self.kill_node(group, node, DeathCause::NDeath { bdseq: b }, now)]
            }
            _ => vec![HostEvent::DeathIgnored {
                group: group.to_string(),
                node: node.to_string(),
                bdseq,
            }],
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn sequenced(
        &mut self,
        now: u64,
        group: &str,
        node: &str,
        kind: MessageType,
        device: Option<String>,
        topic: &str,
        payload: &[u8],
        envelope: Option<super::wire::Envelope>,
    ) -> Vec<HostEvent> {
        let online = self
            .nodes
            .get(&(group.to_string(), node.to_string()))
            .is_some_and(|n| n.online);
        if !online {
            let reason = format!("{kind} before NBIRTH of {group}/{node}");
            return self.rejected(now, group, node, topic, payload, reason);
        }
        // The seq decides the order, and later births change the alias maps,
        // so only the protobuf envelope is read before the message's turn.
        // No envelope means broken framing: prost says how it is broken.
        let seq = match envelope
            .map(|e| e.seq)
            .ok_or(())
            .or_else(|()| pb::Payload::decode(payload).map(|raw| raw.seq))
        {
            Ok(seq) => seq,
            Err(e) => {
                return self.rejected(
                    now,
                    group,
                    node,
                    topic,
                    payload,
                    format!("not a Sparkplug B payload: {e}"),
                )
            }
        };
        // [tck-id-payloads-sequence-num-always-included]
        let Some(seq) = seq.and_then(|s| u8::try_from(s).ok()) else {
            return self.rejected(
                now,
                group,
                node,
                topic,
                payload,
                format!("{kind} has no seq in 0..=255"),
            );
        };
        let held = Held {
            seq,
            kind,
            device,
            topic: topic.to_string(),
            payload: payload.to_vec(),
        };
        let timeout = self.cfg.reorder_timeout_ms;
        let n = self
            .nodes
            .get_mut(&(group.to_string(), node.to_string()))
            .expect("checked online above");
        let ahead = seq.wrapping_sub(n.expected_seq);
        if ahead == 0 {
            n.expected_seq = seq.wrapping_add(1);
            let mut out = self.process(now, group, node, held);
            out.extend(self.drain_in_order(now, group, node));
            return out;
        }
        if ahead < 128 {
            // [tck-id-operational-behavior-host-reordering-start]
            n.held.push(held);
            if n.reorder_deadline.is_none() {
                n.reorder_deadline = Some(now.saturating_add(timeout));
            }
            if timeout == 0 || n.held.len() >= self.cfg.limits.max_held_messages {
                return self.expire(now, group, node);
            }
            return Vec::new();
        }
        // Behind the expected seq: a duplicate or very late message. Report it
        // and still use it; duplicates are harmless downstream.
        let mut out = vec![HostEvent::SequenceError {
            group: group.to_string(),
            node: node.to_string(),
            expected: n.expected_seq,
            got: seq,
        }];
        out.extend(self.process(now, group, node, held));
        out
    }

    /// Processes held messages that have become next in line.
    /// [tck-id-operational-behavior-host-reordering-success]
    fn drain_in_order(&mut self, now: u64, group: &str, node: &str) -> Vec<HostEvent> {
        let mut out = Vec::new();
        while let Some(n) = self.nodes.get_mut(&(group.to_string(), node.to_string())) {
            let Some(pos) = n.held.iter().position(|h| h.seq == n.expected_seq) else {
                if n.held.is_empty() {
                    n.reorder_deadline = None;
                }
                break;
            };
            let h = n.held.remove(pos);
            n.expected_seq = h.seq.wrapping_add(1);
            out.extend(self.process(now, group, node, h));
        }
        out
    }

    /// The reorder timeout passed with the gap still open: request a rebirth
    /// and process what was held, in seq order.
    /// [tck-id-operational-behavior-host-reordering-rebirth]
    fn expire(&mut self, now: u64, group: &str, node: &str) -> Vec<HostEvent> {
        let Some(n) = self.nodes.get_mut(&(group.to_string(), node.to_string())) else {
            return Vec::new();
        };
        let expected = n.expected_seq;
        let mut held = std::mem::take(&mut n.held);
        n.reorder_deadline = None;
        held.sort_by_key(|h| h.seq.wrapping_sub(expected));
        let mut out = Vec::new();
        if let Some(first) = held.first() {
            out.push(HostEvent::SequenceError {
                group: group.to_string(),
                node: node.to_string(),
                expected,
                got: first.seq,
            });
            if let Some(last) = held.last() {
                n.expected_seq = last.seq.wrapping_add(1);
            }
        }
        // Held data is delivered before the rebirth request, so that whoever
        // acts on these events in order never sees the new birth first.
        for h in held {
            out.extend(self.process(now, group, node, h));
        }
        out.extend(self.drain_in_order(now, group, node));
        let reason = format!("seq {expected} missing after the reorder timeout");
        out.extend(self.request_rebirth(now, group, node, &reason));
        out
    }

    /// Time passes: expire reorder windows whose deadline has come.
    pub fn tick(&mut self, now: u64) -> Vec<HostEvent> {
        let mut due: Vec<(String, String)> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.reorder_deadline.is_some_and(|d| now >= d))
            .map(|(k, _)| k.clone())
            .collect();
        due.sort();
        let mut out = Vec::new();
        for (g, n) in due {
            out.extend(self.expire(now, &g, &n));
        }
        out
    }

    fn process(&mut self, now: u64, group: &str, node: &str, h: Held) -> Vec<HostEvent> {
        let key = (group.to_string(), node.to_string());
        let device = h.device.clone().unwrap_or_default();
        match h.kind {
            MessageType::DBirth => {
                let p = match Payload::decode(&h.payload) {
                    Ok(p) => p,
                    Err(e) => return self.rejected(now, group, node, &h.topic, &h.payload, e.to_string()),
                };
                if let Some(reason) = self.long_name(&p.metrics) {
                    return self.rejected(now, group, node, &h.topic, &h.payload, reason);
                }
                let label = format!("device '{device}' of {group}/{node}");
                let max = self.cfg.limits.max_devices_per_node;
                let n = self
                    .nodes
                    .get_mut(&key)
                    .expect("sequenced messages belong to known nodes");
                if !n.devices.contains_key(&device) && n.devices.len() >= max {
                    let reason = format!("{group}/{node} already has max_devices_per_node ({max}) devices");
                    return vec![quarantine(&h.topic, &h.payload, reason)];
                }
                n.devices
                    .insert(device.clone(), ScopeMap::from_birth(label, &p.metrics));
                vec![HostEvent::DeviceBirth {
                    group: group.to_string(),
                    node: node.to_string(),
                    device,
                    timestamp: p.timestamp,
                    metrics: p.metrics,
                }]
            }
            MessageType::DDeath => {
                let ts = pb::Payload::decode(h.payload.as_slice())
                    .ok()
                    .and_then(|p| p.timestamp)
                    .unwrap_or(now);
                let n = self
                    .nodes
                    .get_mut(&key)
                    .expect("sequenced messages belong to known nodes");
                let mut stale: Vec<Stale> = match n.devices.get_mut(&device) {
                    Some(d) => match std::mem::replace(&mut d.online, false) {
                        true => d.stale(Some(&device)).collect(),
                        false => Vec::new(),
                    },
                    None => Vec::new(),
                };
                stale.sort();
                vec![HostEvent::DeviceDeath {
                    group: group.to_string(),
                    node: node.to_string(),
                    device,
                    at: ts,
                    stale,
                }]
            }
            MessageType::NData | MessageType::DData => {
                let n = self.nodes.get(&key).expect("sequenced messages belong to known nodes");
                let scope = match &h.device {
                    None => &n.metrics,
                    Some(d) => match n.devices.get(d).filter(|s| s.online) {
                        Some(s) => s,
                        None => {
                            let reason = format!("DDATA for device '{d}' before its DBIRTH");
                            return self.rejected(now, group, node, &h.topic, &h.payload, reason);
                        }
                    },
                };
                let p = match Payload::decode_with(&h.payload, scope) {
                    Ok(p) => p,
                    Err(e) => return self.rejected(now, group, node, &h.topic, &h.payload, e.to_string()),
                };
                let mut names = Vec::with_capacity(p.metrics.len());
                for m in &p.metrics {
                    match scope.name_of(m.name.as_deref(), m.alias) {
                        Some(n) => names.push(n),
                        None => {
                            let reason = format!(
                                "metric {} was not declared in the birth of {}",
                                m.name.clone().unwrap_or_else(|| format!("alias {:?}", m.alias)),
                                scope.label
                            );
                            return self.rejected(now, group, node, &h.topic, &h.payload, reason);
                        }
                    }
                }
                vec![HostEvent::Data {
                    group: group.to_string(),
                    node: node.to_string(),
                    device: h.device,
                    seq: h.seq,
                    timestamp: p.timestamp,
                    metrics: p.metrics,
                    names,
                }]
            }
            _ => Vec::new(),
        }
    }
}

impl HostSession {
    /// Why a birth's metric names are too long, if one is.
    fn long_name(&self, metrics: &[Metric]) -> Option<String> {
        let max = self.cfg.limits.max_name_bytes;
        metrics
            .iter()
            .filter_map(|m| m.name.as_ref())
            .find(|n| n.len() > max)
            .map(|n| format!("a metric name of {} bytes is over max_name_bytes ({max})", n.len()))
    }

    /// The node's state, made when new. At `max_nodes`, the offline node
    /// seen least recently makes room; `None` when every tracked node is
    /// online (nothing is evicted then).
    fn node_entry(&mut self, group: &str, node: &str, now: u64) -> Option<&mut NodeState> {
        let key = (group.to_string(), node.to_string());
        if !self.nodes.contains_key(&key) && self.nodes.len() >= self.cfg.limits.max_nodes {
            let oldest = self
                .nodes
                .iter()
                .filter(|(_, n)| !n.online)
                .min_by_key(|(k, n)| (n.last_seen, (*k).clone()))
                .map(|(k, _)| k.clone())?;
            self.nodes.remove(&oldest);
        }
        let n = self.nodes.entry(key).or_default();
        n.last_seen = n.last_seen.max(now);
        Some(n)
    }
}

fn quarantine(topic: &str, payload: &[u8], reason: String) -> HostEvent {
    HostEvent::Quarantine {
        topic: topic.to_string(),
        payload: payload.to_vec(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparkplug::edge::{DeviceDef, EdgeAction, EdgeConfig, EdgeSession};

    const T0: u64 = 1_700_000_000_000;

    fn host() -> HostSession {
        let mut h = HostSession::new(HostConfig {
            host_id: "scada".into(),
            subscriptions: vec!["spBv1.0/#".into()],
            reorder_timeout_ms: 2_000,
            rebirth_min_interval_ms: 10_000,
            limits: HostLimits::default(),
        })
        .expect("valid");
        h.begin_connect(T0);
        h.connected();
        h
    }

    /// A real edge session produces the traffic the host sees.
    fn edge() -> EdgeSession {
        EdgeSession::new(
            EdgeConfig {
                group_id: "G".into(),
                node_id: "N".into(),
                primary_host_id: None,
                server_count: 1,
                rebirth_debounce_ms: 0,
                aliases: true,
                max_data_metrics: 500,
                limits: Default::default(),
            },
            vec![Metric::new("Load", Value::Double(0.5), T0)],
            vec![DeviceDef {
                name: "D".into(),
                metrics: vec![Metric::new("Temp", Value::Float(1.0), T0)],
            }],
            Some(5),
        )
        .expect("valid")
    }

    fn published(actions: Vec<EdgeAction>) -> Vec<Publish> {
        actions
            .into_iter()
            .filter_map(|a| match a {
                EdgeAction::Publish(p) | EdgeAction::Data { publish: p, .. } => Some(p),
                _ => None,
            })
            .collect()
    }

    fn born_edge() -> (EdgeSession, Vec<Publish>) {
        let mut e = edge();
        e.device_online(T0, "D").expect("known");
        e.begin_connect(T0);
        let births = published(e.connected(T0));
        (e, births)
    }

    fn feed(h: &mut HostSession, now: u64, msgs: &[Publish]) -> Vec<HostEvent> {
        msgs.iter()
            .flat_map(|p| h.handle_message(now, &p.topic, &p.payload))
            .collect()
    }

    fn temp(e: &mut EdgeSession, v: f32, t: u64) -> Publish {
        published(
            e.update(t, Some("D"), vec![Metric::new("Temp", Value::Float(v), t)])
                .expect("ok"),
        )
        .remove(0)
    }

    fn rebirths(events: &[HostEvent]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, HostEvent::RebirthRequested { .. }))
            .count()
    }

    // [tck-id-host-topic-phid-death-required] [tck-id-host-topic-phid-death-qos] [tck-id-host-topic-phid-death-retain]
    // [tck-id-host-topic-phid-death-payload] [tck-id-host-topic-phid-death-payload-timestamp-connect]
    // [tck-id-operational-behavior-host-application-connect-will] [tck-id-operational-behavior-host-application-connect-will-qos]
    // [tck-id-operational-behavior-host-application-connect-will-retained]
    #[test]
    fn will_is_retained_qos1_offline_state_stamped_at_connect() {
        let mut h = HostSession::new(HostConfig {
            host_id: "scada".into(),
            subscriptions: vec!["spBv1.0/#".into()],
            reorder_timeout_ms: 0,
            rebirth_min_interval_ms: 0,
            limits: HostLimits::default(),
        })
        .expect("valid");
        let w = h.begin_connect(T0);
        assert_eq!(w.topic, "spBv1.0/STATE/scada");
        assert_eq!((w.qos, w.retain), (QoS::AtLeastOnce, true));
        assert_eq!(
            HostState::parse(&w.payload),
            Ok(HostState {
                online: false,
                timestamp: T0
            })
        );
    }

    // [tck-id-host-topic-phid-birth-sub-required] [tck-id-host-topic-phid-birth-required] [tck-id-host-topic-phid-birth-topic]
    // [tck-id-host-topic-phid-birth-payload-timestamp] [tck-id-host-topic-phid-birth-qos] [tck-id-host-topic-phid-birth-retain]
    // [tck-id-message-flow-phid-sparkplug-subscription] [tck-id-operational-behavior-host-application-connect-birth]
    #[test]
    fn subscribes_first_then_publishes_online_state_with_the_wills_timestamp() {
        let mut h = HostSession::new(HostConfig {
            host_id: "scada".into(),
            subscriptions: vec!["spBv1.0/#".into()],
            reorder_timeout_ms: 0,
            rebirth_min_interval_ms: 0,
            limits: HostLimits::default(),
        })
        .expect("valid");
        h.begin_connect(T0);
        let out = h.connected();
        assert_eq!(
            out[0],
            HostEvent::Subscribe(vec!["spBv1.0/#".into(), "spBv1.0/STATE/scada".into()])
        );
        match &out[1] {
            HostEvent::Publish(p) => {
                assert_eq!(p.topic, "spBv1.0/STATE/scada");
                assert_eq!((p.qos, p.retain), (QoS::AtLeastOnce, true));
                assert_eq!(
                    HostState::parse(&p.payload),
                    Ok(HostState {
                        online: true,
                        timestamp: T0
                    })
                );
            }
            other => panic!("expected the STATE birth, got {other:?}"),
        }
    }

    #[test]
    fn own_offline_state_is_answered_with_online() {
        let mut h = host();
        let out = h.handle_message(
            T0 + 1,
            "spBv1.0/STATE/scada",
            &HostState {
                online: false,
                timestamp: T0 + 1,
            }
            .to_json(),
        );
        assert!(
            matches!(&out[..], [HostEvent::Publish(p)] if HostState::parse(&p.payload).map(|s| s.online) == Ok(true))
        );
    }

    // [tck-id-operational-behavior-host-application-termination] [tck-id-host-topic-phid-death-payload-timestamp-disconnect-clean]
    #[test]
    fn shutdown_publishes_offline_state_then_disconnects() {
        let mut h = host();
        let out = h.shutdown(T0 + 9);
        assert!(
            matches!(&out[0], HostEvent::Publish(p) if HostState::parse(&p.payload) == Ok(HostState { online: false, timestamp: T0 + 9 }) && p.retain)
        );
        assert_eq!(out[1], HostEvent::Disconnect);
    }

    #[test]
    fn births_from_a_real_edge_session_build_the_alias_maps_and_data_resolves_names() {
        let mut h = host();
        let (mut e, births) = born_edge();
        let ev = feed(&mut h, T0, &births);
        assert!(matches!(&ev[0], HostEvent::NodeBirth { bdseq: 5, .. }));
        assert!(matches!(&ev[1], HostEvent::DeviceBirth { device, .. } if device == "D"));
        let ev = feed(&mut h, T0 + 1, &[temp(&mut e, 3.5, T0 + 1)]);
        match &ev[..] {
            [HostEvent::Data {
                device: Some(d),
                seq: 2,
                metrics,
                names,
                ..
            }] => {
                assert_eq!(d, "D");
                assert_eq!(metrics[0].name, None, "sent by alias");
                assert_eq!(&*names[0], "Temp", "named from the birth");
                assert_eq!(metrics[0].datatype, DataType::Float);
                assert_eq!(metrics[0].value, Some(Value::Float(3.5)));
            }
            other => panic!("expected data, got {other:?}"),
        }
    }

    // NDEATH must match the bdSeq of the current NBIRTH.
    #[test]
    fn ndeath_marks_node_stale_only_with_matching_bdseq() {
        let mut h = host();
        let (mut e, births) = born_edge();
        feed(&mut h, T0, &births);
        // A late Will from an older session (bdSeq 4) is ignored.
        let mut old = edge();
        let old_will = match old.begin_connect(T0).remove(0) {
            EdgeAction::SetWill(w) => w,
            other => panic!("expected a will, got {other:?}"),
        };
        let mut stale_old = EdgeSession::new(old.config().clone(), vec![], vec![], Some(4)).expect("valid");
        let stale_will = match stale_old.begin_connect(T0).remove(0) {
            EdgeAction::SetWill(w) => w,
            other => panic!("expected a will, got {other:?}"),
        };
        let ev = feed(&mut h, T0 + 1, &[stale_will]);
        assert!(matches!(&ev[..], [HostEvent::DeathIgnored { bdseq: Some(4), .. }]));
        assert_eq!(h.online_nodes(), 1);
        // The matching one (bdSeq 5) kills the node and all its metrics go STALE.
        let _ = &mut e;
        let ev = feed(&mut h, T0 + 2, &[old_will]);
        match &ev[..] {
            [HostEvent::NodeDeath {
                cause: DeathCause::NDeath { bdseq: 5 },
                at,
                stale,
                ..
            }] => {
                assert_eq!(*at, T0 + 2);
                let got: Vec<(Option<&str>, &str)> =
                    stale.iter().map(|s| (s.device.as_deref(), s.metric.as_str())).collect();
                assert_eq!(
                    got,
                    vec![
                        (None, "Load"),
                        (None, "Node Control/Next Server"),
                        (None, "Node Control/Rebirth"),
                        (None, "bdSeq"),
                        (Some("D"), "Temp")
                    ]
                );
                let temp = stale.last().expect("listed");
                assert_eq!(temp.datatype, DataType::Float, "the datatype its birth declared");
            }
            other => panic!("expected node death, got {other:?}"),
        }
        assert_eq!(h.online_nodes(), 0);
    }

    #[test]
    fn ddeath_marks_the_devices_metrics_stale_at_the_message_timestamp() {
        let mut h = host();
        let (mut e, births) = born_edge();
        feed(&mut h, T0, &births);
        let dd = published(e.device_offline(T0 + 7, "D").expect("known"));
        let ev = feed(&mut h, T0 + 50, &dd);
        assert!(
            matches!(&ev[..], [HostEvent::DeviceDeath { device, at, stale, .. }] if device == "D" && *at == T0 + 7 && stale.len() == 1 && stale[0].metric == "Temp" && stale[0].device.as_deref() == Some("D"))
        );
        // A second DDEATH of the dead device is still an event, with nothing left to make STALE.
        let again = published(e.device_offline(T0 + 8, "D").unwrap_or_default());
        for ev in feed(&mut h, T0 + 60, &again) {
            if let HostEvent::DeviceDeath { stale, .. } = ev {
                assert!(stale.is_empty());
            }
        }
    }

    // [tck-id-operational-behavior-host-reordering-start] [tck-id-operational-behavior-host-reordering-success]
    #[test]
    fn out_of_order_messages_within_the_timeout_are_reordered_without_a_rebirth() {
        let mut h = host();
        let (mut e, births) = born_edge();
        feed(&mut h, T0, &births);
        let a = temp(&mut e, 2.0, T0 + 1);
        let b = temp(&mut e, 3.0, T0 + 2);
        assert!(feed(&mut h, T0 + 3, &[b]).is_empty(), "seq 3 waits for seq 2");
        let ev = feed(&mut h, T0 + 4, &[a]);
        let seqs: Vec<u8> = ev
            .iter()
            .filter_map(|e| match e {
                HostEvent::Data { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, vec![2, 3]);
        assert_eq!(rebirths(&ev), 0);
        assert!(h.tick(T0 + 10_000).is_empty());
    }

    // [tck-id-operational-behavior-host-reordering-rebirth] [tck-id-operational-behavior-host-reordering-param]
    #[test]
    fn seq_gap_triggers_exactly_one_rebirth_after_the_reorder_timeout() {
        let mut h = host();
        let (mut e, births) = born_edge();
        feed(&mut h, T0, &births);
        let _lost = temp(&mut e, 2.0, T0 + 1);
        let later = [temp(&mut e, 3.0, T0 + 2), temp(&mut e, 4.0, T0 + 3)];
        assert!(feed(&mut h, T0 + 100, &later).is_empty());
        assert!(h.tick(T0 + 2_099).is_empty());
        let ev = h.tick(T0 + 2_100);
        assert_eq!(rebirths(&ev), 1);
        let ncmd = first_publish(&ev).expect("NCMD");
        assert_eq!(ncmd.topic, "spBv1.0/G/NCMD/N");
        assert_eq!((ncmd.qos, ncmd.retain), (QoS::AtMostOnce, false));
        let p = Payload::decode(&ncmd.payload).expect("decodes");
        assert_eq!(
            (p.seq, &p.metrics[0].name, &p.metrics[0].value),
            (None, &Some(REBIRTH.to_string()), &Some(Value::Boolean(true)))
        );
        // The held messages are still delivered, in order; nothing is lost.
        let seqs: Vec<u8> = ev
            .iter()
            .filter_map(|e| match e {
                HostEvent::Data { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, vec![3, 4]);
        let last_data = ev
            .iter()
            .rposition(|e| matches!(e, HostEvent::Data { .. }))
            .expect("data");
        let request = ev
            .iter()
            .position(|e| matches!(e, HostEvent::Publish(_)))
            .expect("request");
        assert!(last_data < request, "held data is delivered before the rebirth request");
        assert!(h.tick(T0 + 60_000).is_empty(), "exactly one");
        // The edge answers with a birth sequence that the host accepts.
        let rebirth = published(e.handle_message(T0 + 3_000, &ncmd.topic, &ncmd.payload));
        let ev = feed(&mut h, T0 + 3_000, &rebirth);
        assert!(matches!(&ev[0], HostEvent::NodeBirth { .. }));
    }

    // Another instance of this host wrote seq 2 and 3: taking them as seen
    // leaves no gap. [tck-id-operational-behavior-host-reordering-start]
    #[test]
    fn messages_skipped_as_seen_elsewhere_leave_no_gap_and_no_rebirth() {
        let mut h = host();
        let (mut e, births) = born_edge();
        feed(&mut h, T0, &births);
        let _elsewhere = [temp(&mut e, 2.0, T0 + 1), temp(&mut e, 3.0, T0 + 2)];
        h.skip_to("G", "N", 3);
        let ev = feed(&mut h, T0 + 3, &[temp(&mut e, 4.0, T0 + 3)]);
        assert!(matches!(&ev[..], [HostEvent::Data { seq: 4, .. }]), "{ev:?}");
        assert_eq!(rebirths(&h.tick(T0 + 60_000)), 0);
        // A skip behind the expected seq changes nothing.
        h.skip_to("G", "N", 2);
        let ev = feed(&mut h, T0 + 4, &[temp(&mut e, 5.0, T0 + 4)]);
        assert!(matches!(&ev[..], [HostEvent::Data { seq: 5, .. }]), "{ev:?}");
    }

    // DATA before BIRTH, unknown alias, undecodable payload: quarantine + rate-limited rebirth.
    #[test]
    fn data_before_birth_is_quarantined_and_a_rebirth_requested_once_per_interval() {
        let mut h = host();
        let (mut e, _births) = born_edge();
        let d1 = temp(&mut e, 2.0, T0 + 1);
        let d2 = temp(&mut e, 3.0, T0 + 2);
        let ev = feed(&mut h, T0, &[d1, d2.clone()]);
        assert_eq!(
            ev.iter().filter(|e| matches!(e, HostEvent::Quarantine { .. })).count(),
            2
        );
        assert_eq!(rebirths(&ev), 1, "rate limited");
        assert_eq!(
            rebirths(&feed(&mut h, T0 + 10_000, &[d2])),
            1,
            "allowed again after the interval"
        );
    }

    fn first_publish(events: &[HostEvent]) -> Option<Publish> {
        events.iter().find_map(|e| match e {
            HostEvent::Publish(p) => Some(p.clone()),
            _ => None,
        })
    }

    fn commands(events: &[HostEvent]) -> Vec<(&CommandSeen, bool)> {
        events
            .iter()
            .filter_map(|e| match e {
                HostEvent::Command { seen, by_this_host } => Some((seen, *by_this_host)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn own_commands_are_audited_once_when_sent_and_their_echo_is_not_audited_again() {
        // [tck-id-operational-behavior-data-commands-ncmd-rebirth-verb]
        let mut h = host();
        let (mut e, _births) = born_edge();
        let ev = feed(&mut h, T0, &[temp(&mut e, 2.0, T0 + 1)]);
        let sent = commands(&ev);
        assert_eq!(sent.len(), 1, "the rebirth request is audited as sent: {ev:?}");
        assert!(sent[0].1, "by this host");
        assert_eq!(sent[0].0.writes[0].metric, REBIRTH);
        let request = first_publish(&ev).expect("the request");
        assert!(
            commands(&h.handle_message(T0 + 2, &request.topic, &request.payload)).is_empty(),
            "the broker's echo of it is not a second command"
        );
        let again = h.handle_message(T0 + 3, &request.topic, &request.payload);
        assert_eq!(
            commands(&again).iter().map(|c| c.1).collect::<Vec<_>>(),
            [false],
            "a second copy is another client's"
        );
    }

    #[test]
    fn commands_of_other_clients_are_audited_and_own_ones_forgotten_after_a_minute() {
        let mut h = host();
        let (mut e, _births) = born_edge();
        let ev = feed(&mut h, T0, &[temp(&mut e, 2.0, T0 + 1)]);
        let request = first_publish(&ev).expect("the request");
        // Past the wait for an echo, the same bytes are a command of someone else.
        let late = h.handle_message(T0 + OWN_COMMANDS_MS + 10, "spBv1.0/G/NCMD/other", &request.payload);
        assert_eq!(commands(&late).iter().map(|c| c.1).collect::<Vec<_>>(), [false]);
        assert!(commands(&h.handle_message(T0, "spBv1.0/G/NDATA/N", b"")).is_empty());
    }

    #[test]
    fn garbage_on_a_sparkplug_topic_is_quarantined_with_the_reason() {
        let mut h = host();
        let (_e, births) = born_edge();
        feed(&mut h, T0, &births);
        let ev = h.handle_message(T0, "spBv1.0/G/NDATA/N", b"\xff\xfe garbage");
        match &ev[0] {
            HostEvent::Quarantine { reason, payload, .. } => {
                assert!(reason.starts_with("not a Sparkplug B payload"), "{reason}");
                assert_eq!(payload, b"\xff\xfe garbage");
            }
            other => panic!("expected quarantine, got {other:?}"),
        }
        assert_eq!(rebirths(&ev), 1);
        let ev = h.handle_message(T0, "spBv1.0/G/NFOO/N", b"");
        assert!(matches!(&ev[..], [HostEvent::Quarantine { .. }]));
    }

    #[test]
    fn unknown_alias_is_quarantined_with_a_rebirth_request() {
        let mut h = host();
        let (_e, births) = born_edge();
        feed(&mut h, T0, &births);
        let mut m = Metric::new("x", Value::Float(1.0), T0);
        m.name = None;
        m.alias = Some(99);
        let bad = Payload {
            timestamp: Some(T0),
            metrics: vec![m],
            seq: Some(2),
            ..Payload::default()
        };
        let ev = h.handle_message(
            T0,
            "spBv1.0/G/DDATA/N/D",
            &bad.encode_with(Datatypes::Omit).expect("encodes"),
        );
        assert!(matches!(&ev[0], HostEvent::Quarantine { reason, .. } if reason.contains("alias 99")));
        assert_eq!(rebirths(&ev), 1);
    }

    #[test]
    fn nbirth_with_nonzero_seq_or_no_bdseq_is_quarantined() {
        let mut h = host();
        let p = Payload {
            timestamp: Some(T0),
            seq: Some(0),
            ..Payload::default()
        };
        let ev = h.handle_message(T0, "spBv1.0/G/NBIRTH/N", &p.encode().expect("encodes"));
        assert!(matches!(&ev[0], HostEvent::Quarantine { reason, .. } if reason.contains("bdSeq")));
    }

    #[test]
    fn tahu_js_uint64_bdseq_is_accepted() {
        let mut h = host();
        let p = Payload {
            timestamp: Some(T0),
            seq: Some(0),
            metrics: vec![Metric::new(BDSEQ, Value::UInt64(3), T0)],
            ..Payload::default()
        };
        let ev = h.handle_message(T0, "spBv1.0/G/NBIRTH/N", &p.encode().expect("encodes"));
        assert!(matches!(&ev[0], HostEvent::NodeBirth { bdseq: 3, .. }));
    }

    #[test]
    fn losing_the_broker_marks_every_online_node_stale() {
        let mut h = host();
        let (_e, births) = born_edge();
        feed(&mut h, T0, &births);
        let ev = h.connection_lost(T0 + 5);
        assert!(
            matches!(&ev[..], [HostEvent::NodeDeath { cause: DeathCause::HostDisconnected, at, .. }] if *at == T0 + 5)
        );
    }

    // [tck-id-operational-behavior-data-commands-dcmd-metric-value] [tck-id-operational-behavior-data-commands-ncmd-metric-name]
    // [tck-id-topics-dcmd-topic] [tck-id-topics-dcmd-mqtt] [tck-id-payloads-dcmd-timestamp] [tck-id-payloads-dcmd-seq]
    #[test]
    fn commands_use_the_birth_alias_and_refuse_wrong_types_and_names() {
        let mut h = host();
        let (mut e, births) = born_edge();
        feed(&mut h, T0, &births);
        let p = h
            .command(T0, "G", "N", Some("D"), vec![("Temp".into(), Value::Float(9.0))])
            .expect("valid");
        assert_eq!(p.topic, "spBv1.0/G/DCMD/N/D");
        assert_eq!((p.qos, p.retain), (QoS::AtMostOnce, false));
        let raw = pb::Payload::decode(p.payload.as_slice()).expect("protobuf");
        assert_eq!(
            (
                raw.seq,
                raw.timestamp,
                raw.metrics[0].name.clone(),
                raw.metrics[0].alias
            ),
            (None, Some(T0), None, Some(2))
        );
        // The real edge session understands it.
        let got = e.handle_message(T0, &p.topic, &p.payload);
        assert!(
            matches!(&got[..], [EdgeAction::Command { metrics, .. }] if metrics[0].value == Some(Value::Float(9.0)))
        );
        let err = h
            .command(T0, "G", "N", Some("D"), vec![("Temp".into(), Value::Boolean(true))])
            .expect_err("type");
        assert_eq!(
            err.to_string(),
            "metric 'Temp' of device 'D' of G/N is Float; a Boolean value cannot be written to it"
        );
        assert!(matches!(
            h.command(T0, "G", "N", None, vec![("Nope".into(), Value::Int32(1))]),
            Err(HostError::UnknownMetric { .. })
        ));
        assert!(matches!(
            h.command(T0, "G", "X", None, vec![]),
            Err(HostError::NodeOffline { .. })
        ));
    }

    // [tck-id-operational-behavior-data-commands-ncmd-metric-name] [tck-id-operational-behavior-data-commands-ncmd-metric-value]
    #[test]
    fn commands_seen_on_the_broker_are_checked_against_the_birth_for_the_audit() {
        let mut h = host();
        let (_e, births) = born_edge();
        feed(&mut h, T0, &births);
        // Our own well-formed command, by alias: resolved and accepted.
        let ok = h
            .command(T0, "G", "N", Some("D"), vec![("Temp".into(), Value::Float(9.0))])
            .expect("valid");
        let seen = h.inspect_command(&ok.topic, &ok.payload).expect("a command");
        assert_eq!((seen.device.as_deref(), seen.timestamp), (Some("D"), Some(T0)));
        assert_eq!(
            seen.writes,
            vec![CommandWrite {
                metric: "Temp".into(),
                value: Some("9".into()),
                verdict: Ok(())
            }]
        );
        // Someone else's: a wrong type and an undeclared name, in one payload.
        let bad = Payload {
            timestamp: Some(T0),
            metrics: vec![
                Metric::new("Temp", Value::Boolean(true), T0),
                Metric::new("Nope", Value::Int32(1), T0),
            ],
            ..Payload::default()
        };
        let seen = h
            .inspect_command("spBv1.0/G/DCMD/N/D", &bad.encode().expect("encodes"))
            .expect("a command");
        let verdicts: Vec<_> = seen
            .writes
            .iter()
            .map(|w| (w.metric.as_str(), w.verdict.clone()))
            .collect();
        assert_eq!(
            verdicts,
            vec![
                (
                    "Temp",
                    Err("metric 'Temp' of device 'D' of G/N is Float; a Boolean value cannot be written to it".into())
                ),
                (
                    "Nope",
                    Err("metric 'Nope' was not declared in the birth of device 'D' of G/N".into())
                ),
            ]
        );
        let offline = h
            .inspect_command("spBv1.0/G/NCMD/X", &bad.encode().expect("encodes"))
            .expect("a command");
        assert_eq!(offline.writes[0].verdict, Err("edge node G/X is not online".into()));
        assert_eq!(
            offline.writes[0].value.as_deref(),
            Some("true"),
            "the value is still audited"
        );
        let garbage = h.inspect_command("spBv1.0/G/NCMD/N", b"\xff\xfe").expect("a command");
        assert!(garbage.writes[0]
            .verdict
            .as_ref()
            .is_err_and(|e| e.starts_with("not a Sparkplug payload")));
        assert!(
            h.inspect_command("spBv1.0/G/NDATA/N", &ok.payload).is_none(),
            "only commands"
        );
    }

    // docs/ARCHITECTURE.md decision 4
    #[test]
    fn a_host_that_declared_itself_offline_does_not_correct_its_own_offline_state() {
        let mut h = HostSession::new(HostConfig {
            host_id: "scada".into(),
            subscriptions: vec!["spBv1.0/#".into()],
            reorder_timeout_ms: 1000,
            rebirth_min_interval_ms: 1000,
            limits: HostLimits::default(),
        })
        .expect("valid");
        h.begin_connect(T0);
        h.connected();
        let off = h.declare_offline();
        assert_eq!(
            HostState::parse(&off.payload).expect("json"),
            HostState {
                online: false,
                timestamp: T0
            }
        );
        assert!(off.retain);
        assert!(
            h.handle_message(T0 + 1, &off.topic, &off.payload).is_empty(),
            "our own declaration stands"
        );
        // A reconnect while still behind is born offline.
        h.connection_lost(T0 + 2);
        h.begin_connect(T0 + 3);
        let births = h.connected();
        let HostEvent::Publish(p) = &births[1] else {
            panic!("{births:?}")
        };
        assert!(!HostState::parse(&p.payload).expect("json").online);
        let on = h.declare_online();
        assert_eq!(
            HostState::parse(&on.payload).expect("json"),
            HostState {
                online: true,
                timestamp: T0 + 3
            }
        );
        // Once online again, an offline STATE from elsewhere is corrected.
        let stale = HostState {
            online: false,
            timestamp: T0,
        }
        .to_json();
        assert!(matches!(
            &h.handle_message(T0 + 4, &on.topic, &stale)[..],
            [HostEvent::Publish(_)]
        ));
    }

    fn host_with(limits: HostLimits) -> HostSession {
        let mut h = HostSession::new(HostConfig {
            host_id: "scada".into(),
            subscriptions: vec!["spBv1.0/#".into()],
            reorder_timeout_ms: 2_000,
            rebirth_min_interval_ms: 10_000,
            limits,
        })
        .expect("valid");
        h.begin_connect(T0);
        h.connected();
        h
    }

    fn nbirth(metrics: Vec<Metric>) -> Vec<u8> {
        let mut all = vec![Metric::new(BDSEQ, Value::Int64(0), T0)];
        all.extend(metrics);
        Payload {
            timestamp: Some(T0),
            seq: Some(0),
            metrics: all,
            ..Payload::default()
        }
        .encode()
        .expect("encodes")
    }

    fn quarantined(ev: &[HostEvent], needle: &str) -> bool {
        ev.iter()
            .any(|e| matches!(e, HostEvent::Quarantine { reason, .. } if reason.contains(needle)))
    }

    #[test]
    fn metrics_are_counted_on_the_wire_as_prost_decodes_them() {
        let (_, births) = born_edge();
        for p in &births {
            let n = pb::Payload::decode(p.payload.as_slice())
                .expect("decodes")
                .metrics
                .len();
            assert_eq!(count_metrics(&p.payload), Some(n), "{}", p.topic);
        }
        assert_eq!(count_metrics(b""), Some(0));
        assert_eq!(count_metrics(b"\x12\x05ab"), None, "a length past the end");
        assert_eq!(count_metrics(b"\x0f"), None, "wire type 7");
    }

    #[test]
    fn one_message_over_a_limit_is_quarantined_whole_before_it_is_decoded() {
        let lim = HostLimits {
            max_payload_bytes: 2_000,
            max_metrics_per_message: 10,
            max_name_bytes: 64,
            ..HostLimits::default()
        };
        let mut h = host_with(lim);
        let big = nbirth(vec![Metric::new("Blob", Value::Bytes(vec![0; 3_000]), T0)]);
        assert!(quarantined(
            &h.handle_message(T0, "spBv1.0/G/NBIRTH/N", &big),
            "over max_payload_bytes (2000)"
        ));
        let many = nbirth(
            (0..11)
                .map(|i| Metric::new(format!("m{i}"), Value::Int32(i), T0))
                .collect(),
        );
        assert!(quarantined(
            &h.handle_message(T0, "spBv1.0/G/NBIRTH/N", &many),
            "12 metrics in one message, over max_metrics_per_message (10)"
        ));
        let long = nbirth(vec![Metric::new("x".repeat(65), Value::Int32(1), T0)]);
        assert!(quarantined(
            &h.handle_message(T0, "spBv1.0/G/NBIRTH/N", &long),
            "a metric name of 65 bytes is over max_name_bytes (64)"
        ));
        let node = "n".repeat(65);
        let ok = nbirth(vec![]);
        assert!(quarantined(
            &h.handle_message(T0, &format!("spBv1.0/G/NBIRTH/{node}"), &ok),
            "an id of 65 bytes"
        ));
        assert_eq!(h.online_nodes(), 0, "no birth over a limit was taken");
        assert!(matches!(
            &h.handle_message(T0, "spBv1.0/G/NBIRTH/N", &ok)[..],
            [HostEvent::NodeBirth { .. }]
        ));
    }

    #[test]
    fn data_sent_by_alias_shares_the_births_names_instead_of_copying_them() {
        let mut h = host();
        let mut m = Metric::new("x".repeat(500), Value::Int32(0), T0);
        m.alias = Some(7);
        assert!(matches!(
            &h.handle_message(T0, "spBv1.0/G/NBIRTH/N", &nbirth(vec![m]))[..],
            [HostEvent::NodeBirth { .. }]
        ));
        let metrics: Vec<Metric> = (0..20_000)
            .map(|i| Metric::by_alias(7, Value::Int32(i as i32), T0 + i))
            .collect();
        let p = Payload {
            timestamp: Some(T0),
            seq: Some(1),
            metrics,
            ..Payload::default()
        }
        .encode_with(Datatypes::Omit)
        .expect("encodes");
        let ev = h.handle_message(T0, "spBv1.0/G/NDATA/N", &p);
        let [HostEvent::Data { metrics, names, .. }] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!((metrics.len(), names.len()), (20_000, 20_000));
        assert!(
            metrics.iter().all(|m| m.name.is_none()),
            "no name copied into the metrics"
        );
        assert!(names.iter().all(|n| Arc::ptr_eq(n, &names[0])), "one name, shared");
        assert_eq!(names[0].len(), 500);
    }

    #[test]
    fn held_messages_are_capped_the_window_closes_early_with_one_rebirth_and_nothing_lost() {
        let mut h = host_with(HostLimits {
            max_held_messages: 3,
            ..HostLimits::default()
        });
        let (mut e, births) = born_edge();
        feed(&mut h, T0, &births);
        let msgs: Vec<Publish> = (0..5).map(|i| temp(&mut e, i as f32, T0 + i)).collect();
        // seq of msgs[0] is lost; the next two are held, the third closes the window.
        assert!(feed(&mut h, T0, &msgs[1..3]).is_empty());
        let ev = feed(&mut h, T0, &msgs[3..4]);
        assert_eq!(rebirths(&ev), 1);
        let delivered = ev.iter().filter(|e| matches!(e, HostEvent::Data { .. })).count();
        assert_eq!(delivered, 3, "every held message processed, in order");
    }

    #[test]
    fn strangers_cannot_grow_the_node_table_and_online_nodes_are_never_evicted() {
        let mut h = host_with(HostLimits {
            max_nodes: 3,
            ..HostLimits::default()
        });
        let (_, births) = born_edge();
        feed(&mut h, T0, &births);
        for i in 0..1_000u64 {
            h.handle_message(T0 + i, &format!("spBv1.0/G/NDATA/forged{i}"), b"\x18\x01");
        }
        assert!(h.nodes.len() <= 3, "{} nodes tracked", h.nodes.len());
        assert_eq!(h.online_nodes(), 1, "the real node stays");
        assert!(h.nodes.contains_key(&("G".to_string(), "N".to_string())));
        // The table full of online nodes: a stranger gets neither an entry nor a rebirth.
        let mut full = host_with(HostLimits {
            max_nodes: 1,
            ..HostLimits::default()
        });
        feed(&mut full, T0, &births);
        let ev = full.handle_message(T0, "spBv1.0/G/NDATA/forged", b"\x18\x01");
        assert_eq!(rebirths(&ev), 0);
        assert_eq!(full.nodes.len(), 1);
    }

    #[test]
    fn devices_per_node_are_capped() {
        let mut h = host_with(HostLimits {
            max_devices_per_node: 1,
            ..HostLimits::default()
        });
        let (_, births) = born_edge();
        feed(&mut h, T0, &births);
        let dbirth = Payload {
            timestamp: Some(T0),
            seq: Some(2),
            metrics: vec![Metric::new("X", Value::Int32(1), T0)],
            ..Payload::default()
        }
        .encode()
        .expect("encodes");
        let ev = h.handle_message(T0, "spBv1.0/G/DBIRTH/N/Other", &dbirth);
        assert!(quarantined(&ev, "max_devices_per_node (1)"), "{ev:?}");
    }

    #[test]
    fn a_command_over_the_limits_is_one_audit_entry_not_one_per_metric() {
        let h = host_with(HostLimits {
            max_metrics_per_message: 10,
            ..HostLimits::default()
        });
        let p = Payload {
            timestamp: Some(T0),
            metrics: (0..450)
                .map(|i| Metric::new(format!("m{i}"), Value::Boolean(true), T0))
                .collect(),
            ..Payload::default()
        }
        .encode()
        .expect("encodes");
        let seen = h.inspect_command("spBv1.0/G/NCMD/N", &p).expect("a command");
        assert_eq!(seen.writes.len(), 1);
        assert_eq!(
            seen.writes[0].verdict,
            Err("450 metrics in one message, over max_metrics_per_message (10)".into())
        );
    }

    #[test]
    fn rebirth_requests_over_all_nodes_are_capped_per_second() {
        let mut h = host_with(HostLimits {
            max_rebirths_per_second: 5,
            ..HostLimits::default()
        });
        let sent: usize = (0..100)
            .map(|i| rebirths(&h.handle_message(T0, &format!("spBv1.0/G/NDATA/s{i}"), b"\x18\x01")))
            .sum();
        assert_eq!(sent, 5);
        assert_eq!(h.rebirths_suppressed(), 95);
        // The next second has a budget again.
        assert_eq!(
            rebirths(&h.handle_message(T0 + 1_000, "spBv1.0/G/NDATA/s99", b"\x18\x01")),
            1
        );
    }
}
