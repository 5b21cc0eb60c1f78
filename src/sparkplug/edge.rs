//! `EdgeSession`: the Sparkplug B edge node as a pure state machine.
//!
//! Inputs are method calls (connected, message received, samples, device up or
//! down, tick with `now`); outputs are [`EdgeAction`]s for the I/O loop. The
//! session reads no clock and opens no socket.
//!
//! Invariants (each a test below, most citing a tck-id):
//! - bdSeq starts at 0 (or the persisted next value), is the same in the Will
//!   and the NBIRTH that follows it, survives restarts through
//!   [`EdgeAction::PersistBdSeq`], increments once per CONNECT actually sent
//!   (not per failed attempt), wraps 255→0, and a rebirth keeps it.
//! - `seq` is 0 in NBIRTH and +1 mod 256 across NBIRTH, DBIRTH, NDATA, DDATA
//!   and DDEATH of one session; NDEATH has none.
//! - No DATA is published before the births of the session, while a rebirth is
//!   pending, or while the configured Primary Host is not known online. Such
//!   samples leave as [`EdgeAction::StoreHistorical`]: nothing is dropped.
//! - With a Primary Host configured, nothing is born until its STATE says online
//!   with a timestamp ≥ the newest seen; an offline STATE older than that is ignored.
//! - Aliases are unique across the node and all its devices; births carry name,
//!   alias and datatype; DATA carries the alias alone and no datatype.
//! - Control messages cannot loop the node: a retained NCMD/DCMD is refused
//!   (Sparkplug forbids retain on them, so a retained one is stale or
//!   forged); a STATE stamped more than `limits.state_max_skew_ms` ahead of a
//!   plausible clock is refused, and the STATE comparison starts afresh in
//!   every MQTT session; a rebirth request within `rebirth_debounce_ms` of
//!   the last birth, and Next Server within it of the birth, are refused, so
//!   a storm of them neither stops DATA nor walks the servers in a loop; a
//!   command of more than `limits.max_command_metrics` metrics is refused
//!   whole, counted on the wire before it is decoded.

use std::borrow::Cow;
use std::collections::HashMap;

use thiserror::Error;

use super::codec::{encode_iter, CodecError, DatatypeSource, Datatypes, Metric, Payload, PropertySet, Quality, Value};
use super::datatype::DataType;
use super::state::HostState;
use super::topic::{validate_id, MessageType, Topic, TopicError};
use super::{Publish, QoS, BDSEQ, NEXT_SERVER, REBIRTH};

/// Why the session refused an input.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum EdgeError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("encoding failed: {0}")]
    Codec(#[from] CodecError),
    #[error("at least one MQTT server must be configured")]
    NoServers,
    #[error("device '{0}' is declared twice")]
    DuplicateDevice(String),
    #[error("metric '{metric}' is declared twice on {scope}")]
    DuplicateMetric { scope: String, metric: String },
    #[error("a metric on {scope} has no name")]
    UnnamedMetric { scope: String },
    #[error("metric name '{metric}' on {scope} is reserved by Sparkplug")]
    ReservedMetric { scope: String, metric: String },
    #[error("metric '{metric}' on {scope} has no datatype")]
    UntypedMetric { scope: String, metric: String },
    #[error("unknown device '{0}'")]
    UnknownDevice(String),
    #[error("metric '{metric}' was not declared in the birth of {scope}")]
    UnknownMetric { scope: String, metric: String },
    #[error("metric '{metric}' on {scope} is {declared}, but the sample is {got}")]
    TypeMismatch {
        scope: String,
        metric: String,
        declared: DataType,
        got: DataType,
    },
    #[error("device '{0}' is offline: bring it online before sending its samples")]
    DeviceOffline(String),
    #[error("not publishing DATA now (not born, rebirth pending, or Primary Host offline)")]
    NotPublishing,
}

/// What the I/O loop must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum EdgeAction {
    /// Set the MQTT Will for the next CONNECT (NDEATH with the current bdSeq).
    SetWill(Publish),
    /// Open a connection to `servers[server]` with a clean session.
    Connect {
        server: usize,
    },
    /// Persist this as the bdSeq to use after a restart.
    PersistBdSeq(u8),
    /// Subscribe to these topics at QoS 1 ([tck-id-message-flow-edge-node-ncmd-subscribe]).
    Subscribe(Vec<String>),
    Publish(Publish),
    /// A live DATA message (QoS 0) and the samples it carries, encoded as a
    /// Sparkplug payload with names and datatypes and without aliases (what
    /// [`EdgeAction::StoreHistorical`] holds, in a few bytes per sample): the
    /// I/O loop keeps them until a watermark proves the broker read the
    /// message, and stores them if it never does.
    Data {
        publish: Publish,
        device: Option<String>,
        samples: Vec<u8>,
        /// How many samples (metrics) `samples` holds.
        count: usize,
        /// The oldest sample's timestamp (ms), for the store's age gauge.
        oldest_ms: Option<u64>,
    },
    /// Send DISCONNECT and close the connection.
    Disconnect,
    /// These samples could not be published now: keep them and replay them later.
    StoreHistorical {
        device: Option<String>,
        metrics: Vec<Metric>,
    },
    /// A write request (NCMD/DCMD other than node control) for the command guard.
    Command {
        device: Option<String>,
        metrics: Vec<Metric>,
    },
    /// The Primary Host's STATE changed (a STATE accepted: not stale, not
    /// too far ahead); it comes before what the change makes the node do.
    HostState {
        online: bool,
        timestamp: u64,
    },
    /// A node-control command the session acted on (`refused` None) or
    /// refused, for the audit: `Node Control/Next Server`.
    NodeControl {
        metric: &'static str,
        refused: Option<String>,
    },
    /// An incoming message or replayed sample that could not be used, and why.
    Rejected {
        topic: String,
        reason: String,
    },
}

impl EdgeAction {
    /// The message to publish, for [`EdgeAction::Publish`] and [`EdgeAction::Data`].
    pub fn publish(&self) -> Option<&Publish> {
        match self {
            EdgeAction::Publish(p) | EdgeAction::Data { publish: p, .. } => Some(p),
            _ => None,
        }
    }
}

/// Static configuration of one edge node.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeConfig {
    pub group_id: String,
    pub node_id: String,
    /// Wait for this host's STATE before birth, walk servers when it is offline.
    pub primary_host_id: Option<String>,
    /// How many MQTT servers the I/O loop can connect to (walked in order).
    pub server_count: usize,
    /// Rebirth requests closer than this to the last birth are coalesced into
    /// one rebirth at `last birth + debounce`.
    pub rebirth_debounce_ms: u64,
    /// Send aliases in DATA instead of names.
    pub aliases: bool,
    /// Split DATA into messages of at most this many metrics (each with its
    /// own seq), so a large scan never exceeds the broker's packet limit.
    pub max_data_metrics: usize,
    pub limits: EdgeLimits,
}

/// What inbound control messages may do (module invariants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Metrics in one NCMD/DCMD; more and the whole command is refused.
    pub max_command_metrics: usize,
    /// How far ahead of this node's clock a STATE timestamp may be.
    pub state_max_skew_ms: u64,
    /// The largest MQTT packet the broker takes (`mqtt.max_packet_size`):
    /// DATA is split so that no message, topic and header included, is
    /// larger, before a seq is given to it.
    pub max_packet_bytes: usize,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            max_command_metrics: 1_000,
            state_max_skew_ms: 10 * 60 * 1000,
            max_packet_bytes: 1024 * 1024,
        }
    }
}

/// Bytes of an MQTT PUBLISH besides its topic and payload: fixed header (at
/// most 5), topic length (2) and packet id (2).
pub const PUBLISH_OVERHEAD: usize = 9;

/// Before this (2020-01-01T00:00:00Z) the node's own clock is not trusted to
/// judge a STATE timestamp (a box without an RTC boots in 1970).
pub const PLAUSIBLE_CLOCK_MS: u64 = 1_577_836_800_000;

/// A new value of a declared metric, addressed by its position in the
/// declarations (the poller's tag order), so the hot path carries no names.
/// A sample with no value and a quality other than GOOD means "this read
/// failed": the metric keeps its last value and takes the quality.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub index: u32,
    /// `None` is null.
    pub value: Option<Value>,
    pub quality: Quality,
    pub timestamp: u64,
}

fn quality_properties(q: Quality) -> Option<PropertySet> {
    match q {
        Quality::Good => None,
        q => {
            let mut p = PropertySet::default();
            p.set_quality(q);
            Some(p)
        }
    }
}

/// A device and the metrics it will ever report (current value or null).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceDef {
    pub name: String,
    pub metrics: Vec<Metric>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Offline,
    Connecting,
    AwaitingHost,
    Born,
}

/// What is declared of a metric beyond its name and type: rare, so boxed.
#[derive(Debug, Clone, PartialEq)]
struct Declared {
    properties: Option<PropertySet>,
    metadata: Option<Box<crate::sparkplug::codec::MetaData>>,
    is_transient: bool,
}

/// One declared metric in the session's table: its current value and what
/// births need, in 72 bytes (a full `Metric` is 128). Its name lives in the
/// scope's name arena (one allocation for all names, not one each), its alias
/// is derived from its position.
#[derive(Debug, Clone)]
struct Slot {
    name_start: u32,
    name_len: u32,
    datatype: DataType,
    quality: Quality,
    timestamp: Option<u64>,
    value: Option<Value>,
    declared: Option<Box<Declared>>,
}

impl Slot {
    fn from_metric(m: Metric, name_start: u32, name_len: u32) -> Slot {
        let quality = m.quality();
        let declared = (m.properties.is_some() || m.metadata.is_some() || m.is_transient).then(|| {
            Box::new(Declared {
                properties: m.properties,
                metadata: m.metadata,
                is_transient: m.is_transient,
            })
        });
        Slot {
            name_start,
            name_len,
            datatype: m.datatype,
            quality,
            timestamp: m.timestamp,
            value: m.value,
            declared,
        }
    }

    /// The metric as a birth declares it: name, alias, datatype, current value.
    fn to_birth_metric(&self, name: &str, alias: u64, now: u64) -> Metric {
        let mut properties = self.declared.as_ref().and_then(|d| d.properties.clone());
        if self.quality != Quality::Good {
            properties
                .get_or_insert_with(PropertySet::default)
                .set_quality(self.quality);
        }
        Metric {
            name: Some(name.to_string()),
            alias: Some(alias),
            // [tck-id-payloads-name-birth-data-requirement]: a timestamp on every metric.
            timestamp: Some(self.timestamp.unwrap_or(now)),
            datatype: self.datatype,
            value: self.value.clone(),
            is_historical: false,
            is_transient: self.declared.as_ref().is_some_and(|d| d.is_transient),
            metadata: self.declared.as_ref().and_then(|d| d.metadata.clone()),
            properties,
        }
    }
}

/// The metrics of the node or of one device.
#[derive(Debug, Clone)]
struct Scope {
    label: String,
    device: Option<String>,
    metrics: Vec<Slot>,
    /// All metric names of this scope, back to back.
    names: String,
    /// Metric indices sorted by name: 4 bytes a metric, binary-searched.
    /// Name lookups are off the hot path (the poller addresses by index).
    by_name: Vec<u32>,
    /// Aliases are assigned in declaration order: alias = first_alias + index.
    first_alias: u64,
    /// The device is reachable (always true for the node scope).
    online: bool,
    /// Its birth was published in the current session.
    born: bool,
}

impl Scope {
    fn new(device: Option<String>, metrics: Vec<Metric>, next_alias: &mut u64) -> Result<Scope, EdgeError> {
        let label = match &device {
            Some(d) => format!("device '{d}'"),
            None => "the edge node".to_string(),
        };
        let mut scope = Scope {
            label,
            online: device.is_none(),
            device,
            metrics: Vec::with_capacity(metrics.len()),
            names: String::new(),
            by_name: Vec::new(),
            first_alias: *next_alias,
            born: false,
        };
        for m in metrics {
            let name = m.name.clone().ok_or_else(|| EdgeError::UnnamedMetric {
                scope: scope.label.clone(),
            })?;
            if scope.device.is_none() && [BDSEQ, REBIRTH, NEXT_SERVER].contains(&name.as_str()) {
                return Err(EdgeError::ReservedMetric {
                    scope: scope.label.clone(),
                    metric: name,
                });
            }
            if m.datatype == DataType::Unknown {
                return Err(EdgeError::UntypedMetric {
                    scope: scope.label.clone(),
                    metric: name,
                });
            }
            // [tck-id-payloads-alias-uniqueness]: one counter across the node and all devices.
            *next_alias += 1;
            let start = u32::try_from(scope.names.len()).map_err(|_| EdgeError::UnnamedMetric {
                scope: scope.label.clone(),
            })?;
            scope.names.push_str(&name);
            scope.metrics.push(Slot::from_metric(m, start, name.len() as u32));
        }
        scope.names.shrink_to_fit();
        let mut order: Vec<u32> = (0..scope.metrics.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| scope.name_at(a).cmp(scope.name_at(b)));
        if let Some(w) = order.windows(2).find(|w| scope.name_at(w[0]) == scope.name_at(w[1])) {
            return Err(EdgeError::DuplicateMetric {
                scope: scope.label.clone(),
                metric: scope.name_at(w[0]).to_string(),
            });
        }
        scope.by_name = order;
        Ok(scope)
    }

    fn slot_name(&self, s: &Slot) -> &str {
        let start = s.name_start as usize;
        &self.names[start..start + s.name_len as usize]
    }

    fn alias_of(&self, i: usize) -> u64 {
        self.first_alias + i as u64
    }

    /// The birth declarations, built one at a time from the table.
    fn birth_metrics(&self, now: u64) -> impl Iterator<Item = Metric> + '_ {
        self.metrics
            .iter()
            .enumerate()
            .map(move |(i, s)| s.to_birth_metric(self.slot_name(s), self.alias_of(i), now))
    }

    fn name_at(&self, i: u32) -> &str {
        self.slot_name(&self.metrics[i as usize])
    }

    fn name_index(&self, name: &str) -> Option<usize> {
        let pos = self.by_name.binary_search_by(|&i| self.name_at(i).cmp(name)).ok()?;
        Some(self.by_name[pos] as usize)
    }

    fn alias_index(&self, alias: u64) -> Option<usize> {
        let i = usize::try_from(alias.checked_sub(self.first_alias)?).ok()?;
        (i < self.metrics.len()).then_some(i)
    }

    fn index_of(&self, m: &Metric) -> Option<usize> {
        match (&m.name, m.alias) {
            (Some(n), _) => self.name_index(n),
            (None, Some(a)) => self.alias_index(a),
            (None, None) => None,
        }
    }
}

impl DatatypeSource for Scope {
    fn datatype_of(&self, name: Option<&str>, alias: Option<u64>) -> Option<DataType> {
        if self.device.is_none() && matches!(name, Some(REBIRTH) | Some(NEXT_SERVER)) {
            return Some(DataType::Boolean);
        }
        let i = match (name, alias) {
            (Some(n), _) => self.name_index(n)?,
            (None, Some(a)) => self.alias_index(a)?,
            (None, None) => return None,
        };
        Some(self.metrics[i].datatype)
    }
}

/// The edge node session. See the module docs for its invariants.
#[derive(Debug, Clone)]
pub struct EdgeSession {
    cfg: EdgeConfig,
    phase: Phase,
    bdseq: u8,
    connect_sent: bool,
    server: usize,
    next_seq: u8,
    node: Scope,
    devices: Vec<Scope>,
    device_index: HashMap<String, usize>,
    /// Newest timestamp of a STATE (online or offline) from the Primary
    /// Host in this MQTT session: an older one of either kind is stale.
    host_state_ts: Option<u64>,
    host_online: bool,
    last_birth_at: Option<u64>,
}

impl EdgeSession {
    /// A session for `cfg` with the node's own metrics and its devices.
    /// `stored_bdseq` is the last value seen in [`EdgeAction::PersistBdSeq`].
    pub fn new(
        cfg: EdgeConfig,
        node_metrics: Vec<Metric>,
        devices: Vec<DeviceDef>,
        stored_bdseq: Option<u8>,
    ) -> Result<EdgeSession, EdgeError> {
        validate_id("group id", &cfg.group_id)?;
        validate_id("edge node id", &cfg.node_id)?;
        if let Some(h) = &cfg.primary_host_id {
            validate_id("host id", h)?;
        }
        if cfg.server_count == 0 {
            return Err(EdgeError::NoServers);
        }
        let mut next_alias = 1;
        let node = Scope::new(None, node_metrics, &mut next_alias)?;
        let mut scopes = Vec::with_capacity(devices.len());
        let mut device_index = HashMap::new();
        for d in devices {
            // [tck-id-topic-structure-namespace-valid-device-id]
            validate_id("device id", &d.name)?;
            // [tck-id-topic-structure-namespace-unique-device-id]
            if device_index.insert(d.name.clone(), scopes.len()).is_some() {
                return Err(EdgeError::DuplicateDevice(d.name));
            }
            scopes.push(Scope::new(Some(d.name), d.metrics, &mut next_alias)?);
        }
        Ok(EdgeSession {
            cfg,
            phase: Phase::Offline,
            // [tck-id-topics-nbirth-bdseq-increment]: starts at zero.
            bdseq: stored_bdseq.unwrap_or(0),
            connect_sent: false,
            server: 0,
            next_seq: 0,
            node,
            devices: scopes,
            device_index,
            host_state_ts: None,
            host_online: false,
            last_birth_at: None,
        })
    }

    /// The bdSeq of the current (or next) MQTT session.
    pub fn bdseq(&self) -> u8 {
        self.bdseq
    }

    /// The seq the next sequenced message will carry.
    pub fn next_seq(&self) -> u8 {
        self.next_seq
    }

    /// Index of the server the session is (or will be) connected to.
    pub fn server(&self) -> usize {
        self.server
    }

    /// NBIRTH was published in the current MQTT session.
    pub fn is_born(&self) -> bool {
        self.phase == Phase::Born
    }

    /// DATA for the node would be published now rather than stored.
    pub fn is_publishing(&self) -> bool {
        self.phase == Phase::Born
    }

    /// The configured Primary Host's last accepted STATE said online.
    pub fn host_online(&self) -> bool {
        self.host_online
    }

    /// The configuration.
    pub fn config(&self) -> &EdgeConfig {
        &self.cfg
    }

    fn topic(&self, kind: MessageType, device: Option<&str>) -> String {
        let group = &self.cfg.group_id;
        let node = &self.cfg.node_id;
        // IDs were validated in `new`, so the plain format is the topic.
        match device {
            Some(d) => format!("spBv1.0/{group}/{}/{node}/{d}", kind.as_str()),
            None => format!("spBv1.0/{group}/{}/{node}", kind.as_str()),
        }
    }

    fn take_seq(&mut self) -> u64 {
        // [tck-id-payloads-sequence-num-incrementing]: +1, wrapping 255 → 0.
        let s = self.next_seq;
        self.next_seq = s.wrapping_add(1);
        s.into()
    }

    /// The NDEATH payload: the bdSeq metric only, no seq
    /// ([tck-id-topics-ndeath-payload], [tck-id-topics-ndeath-seq]).
    fn ndeath(&self, now: u64) -> Publish {
        let payload = Payload {
            timestamp: Some(now),
            metrics: vec![Metric::new(BDSEQ, Value::Int64(self.bdseq.into()), now)],
            ..Payload::default()
        };
        Publish {
            topic: self.topic(MessageType::NDeath, None),
            payload: encode_known_good(&payload, Datatypes::Include),
            // [tck-id-payloads-ndeath-will-message-qos] [tck-id-payloads-ndeath-will-message-retain]
            qos: QoS::AtLeastOnce,
            retain: false,
            kind: Some(MessageType::NDeath),
        }
    }

    /// Prepares the next CONNECT: the Will and the server to dial.
    /// [tck-id-payloads-ndeath-will-message]
    pub fn begin_connect(&mut self, now: u64) -> Vec<EdgeAction> {
        if self.connect_sent {
            // [tck-id-topics-nbirth-bdseq-increment] [tck-id-payloads-nbirth-bdseq-inc]
            self.bdseq = self.bdseq.wrapping_add(1);
            self.connect_sent = false;
        }
        self.phase = Phase::Connecting;
        vec![
            EdgeAction::SetWill(self.ndeath(now)),
            EdgeAction::Connect { server: self.server },
        ]
    }

    /// The CONNECT carrying the current Will left for the broker. From now on
    /// the next connection uses a new bdSeq; persist it so a restart does too.
    pub fn connect_sent(&mut self) -> Vec<EdgeAction> {
        if self.connect_sent {
            return Vec::new();
        }
        self.connect_sent = true;
        vec![EdgeAction::PersistBdSeq(self.bdseq.wrapping_add(1))]
    }

    /// The connection attempt failed before a session was established: walk
    /// to the next server. bdSeq moves only if the CONNECT had been sent.
    pub fn connect_failed(&mut self) {
        self.phase = Phase::Offline;
        self.walk();
    }

    fn walk(&mut self) {
        self.server = (self.server + 1) % self.cfg.server_count;
    }

    /// CONNACK accepted: subscribe, then be born (or wait for the Primary Host).
    /// [tck-id-message-flow-edge-node-birth-publish-connect]
    pub fn connected(&mut self, now: u64) -> Vec<EdgeAction> {
        let mut out = self.connect_sent();
        // [tck-id-message-flow-edge-node-ncmd-subscribe] [tck-id-message-flow-device-dcmd-subscribe]: before NBIRTH.
        let group = &self.cfg.group_id;
        let node = &self.cfg.node_id;
        let mut topics = vec![
            format!("spBv1.0/{group}/NCMD/{node}"),
            format!("spBv1.0/{group}/DCMD/{node}/+"),
        ];
        if let Some(host) = &self.cfg.primary_host_id {
            topics.push(format!("spBv1.0/STATE/{host}"));
        }
        out.push(EdgeAction::Subscribe(topics));
        self.host_online = false;
        // Each session judges STATE afresh: a timestamp seen in an earlier
        // one (a forged one, or one from a host whose clock was reset) cannot
        // keep this session from hearing the host.
        self.host_state_ts = None;
        if self.cfg.primary_host_id.is_some() {
            // [tck-id-message-flow-edge-node-birth-publish-subscribe]
            // [tck-id-operational-behavior-edge-node-birth-sequence-wait]
            self.phase = Phase::AwaitingHost;
        } else {
            out.extend(self.births(now));
        }
        out
    }

    /// The connection dropped (the broker publishes our Will). Walk to the next server.
    pub fn connection_lost(&mut self) {
        self.phase = Phase::Offline;
        for d in &mut self.devices {
            d.born = false;
        }
        self.walk();
    }

    /// Deliberate shutdown: NDEATH, then DISCONNECT.
    /// [tck-id-operational-behavior-edge-node-intentional-disconnect-ndeath]
    /// [tck-id-operational-behavior-edge-node-intentional-disconnect-packet]
    pub fn shutdown(&mut self, now: u64) -> Vec<EdgeAction> {
        let out = match self.phase {
            Phase::AwaitingHost | Phase::Born => {
                vec![EdgeAction::Publish(self.ndeath(now)), EdgeAction::Disconnect]
            }
            Phase::Connecting => vec![EdgeAction::Disconnect],
            Phase::Offline => Vec::new(),
        };
        self.phase = Phase::Offline;
        for d in &mut self.devices {
            d.born = false;
        }
        out
    }

    /// NBIRTH then a DBIRTH for every reachable device.
    fn births(&mut self, now: u64) -> Vec<EdgeAction> {
        // [tck-id-topics-nbirth-seq-num] [tck-id-payloads-sequence-num-zero-nbirth]
        self.next_seq = 0;
        let seq = self.take_seq();
        // [tck-id-topics-nbirth-bdseq-included] [tck-id-topics-nbirth-bdseq-matching]
        // [tck-id-topics-nbirth-rebirth-metric] [tck-id-operational-behavior-data-commands-rebirth-datatype]
        // [tck-id-operational-behavior-data-commands-rebirth-value]
        let control = [
            Metric::new(BDSEQ, Value::Int64(self.bdseq.into()), now),
            Metric::new(REBIRTH, Value::Boolean(false), now),
            Metric::new(NEXT_SERVER, Value::Boolean(false), now),
        ];
        // [tck-id-topics-nbirth-metric-reqs] [tck-id-operational-behavior-data-publish-nbirth-values]
        // Streamed from the table: a 100k-metric birth is never copied whole.
        let metrics = control
            .iter()
            .map(Cow::Borrowed)
            .chain(self.node.birth_metrics(now).map(Cow::Owned));
        let payload = encode_iter(Some(now), Some(seq), metrics, Datatypes::Include)
            .expect("session payloads are built from declarations checked in EdgeSession::new");
        let mut out = vec![EdgeAction::Publish(Publish {
            topic: self.topic(MessageType::NBirth, None),
            // [tck-id-payloads-metric-datatype-req]
            payload,
            // [tck-id-topics-nbirth-mqtt]
            qos: QoS::AtMostOnce,
            retain: false,
            kind: Some(MessageType::NBirth),
        })];
        // [tck-id-payloads-dbirth-order]: all DBIRTHs right after NBIRTH, before any DATA.
        for i in 0..self.devices.len() {
            self.devices[i].born = false;
            if self.devices[i].online {
                out.push(self.dbirth(i, now));
            }
        }
        self.phase = Phase::Born;
        self.last_birth_at = Some(now);
        out
    }

    fn dbirth(&mut self, i: usize, now: u64) -> EdgeAction {
        // [tck-id-topics-dbirth-seq] [tck-id-payloads-dbirth-seq-inc]
        let seq = self.take_seq();
        let d = &mut self.devices[i];
        d.born = true;
        // [tck-id-topics-dbirth-metrics] [tck-id-operational-behavior-data-publish-dbirth-values]
        let payload = encode_iter(
            Some(now),
            Some(seq),
            d.birth_metrics(now).map(Cow::Owned),
            Datatypes::Include,
        )
        .expect("session payloads are built from declarations checked in EdgeSession::new");
        let device = d.device.clone();
        EdgeAction::Publish(Publish {
            topic: self.topic(MessageType::DBirth, device.as_deref()),
            payload,
            // [tck-id-topics-dbirth-mqtt]
            qos: QoS::AtMostOnce,
            retain: false,
            kind: Some(MessageType::DBirth),
        })
    }

    fn scope_index(&self, device: Option<&str>) -> Result<Option<usize>, EdgeError> {
        match device {
            None => Ok(None),
            Some(d) => self
                .device_index
                .get(d)
                .copied()
                .map(Some)
                .ok_or_else(|| EdgeError::UnknownDevice(d.to_string())),
        }
    }

    fn scope(&self, i: Option<usize>) -> &Scope {
        match i {
            None => &self.node,
            Some(i) => &self.devices[i],
        }
    }

    fn scope_mut(&mut self, i: Option<usize>) -> &mut Scope {
        match i {
            None => &mut self.node,
            Some(i) => &mut self.devices[i],
        }
    }

    /// The node publishes DATA and births now: born, no rebirth pending, and
    /// the Primary Host (if any) known online.
    fn node_publishing(&self) -> bool {
        self.is_publishing() && (self.cfg.primary_host_id.is_none() || self.host_online)
    }

    fn scope_publishing(&self, i: Option<usize>) -> bool {
        self.node_publishing() && self.scope(i).born_or_node()
    }

    /// Builds DATA messages for `metrics` (named, declared in `scope`), at
    /// most `max_data_metrics` per message, each with the next seq.
    fn data(&mut self, i: Option<usize>, metrics: Vec<Metric>, now: u64, historical: bool) -> Vec<EdgeAction> {
        let aliases = self.cfg.aliases;
        let chunk = self.cfg.max_data_metrics.max(1);
        let scope = self.scope(i);
        let out_metrics: Vec<Metric> = metrics
            .into_iter()
            .map(|mut m| {
                let idx = scope.index_of(&m).expect("callers only pass declared metrics");
                if aliases {
                    // [tck-id-payloads-alias-data-cmd-requirement]: alias only, no name.
                    m.alias = Some(scope.alias_of(idx));
                    m.name = None;
                } else {
                    // [tck-id-payloads-name-requirement]
                    m.alias = None;
                    m.name = Some(scope.name_at(idx as u32).to_string());
                }
                m.is_historical = historical;
                m.timestamp = Some(m.timestamp.unwrap_or(now));
                m
            })
            .collect();
        let device = scope.device.clone();
        let kind = if device.is_some() {
            MessageType::DData
        } else {
            MessageType::NData
        };
        let topic = self.topic(kind, device.as_deref());
        let max_payload = self
            .cfg
            .limits
            .max_packet_bytes
            .saturating_sub(topic.len() + PUBLISH_OVERHEAD);
        // Parts of at most `chunk` metrics; a part whose payload is over the
        // packet limit is halved until it fits, before its seq is taken, so
        // no seq is ever burnt on a message that cannot be sent.
        let mut parts: std::collections::VecDeque<&[Metric]> = out_metrics.chunks(chunk).collect();
        let mut out = Vec::new();
        while let Some(part) = parts.pop_front() {
            // [tck-id-payloads-metric-datatype-not-req]
            let payload = encode_iter(
                Some(now),
                Some(u64::from(self.next_seq)),
                part.iter().map(Cow::Borrowed),
                Datatypes::Omit,
            )
            .expect("session payloads are built from declarations checked in EdgeSession::new");
            if payload.len() > max_payload {
                if part.len() > 1 {
                    let (a, b) = part.split_at(part.len() / 2);
                    parts.push_front(b);
                    parts.push_front(a);
                } else {
                    out.push(EdgeAction::Rejected {
                        topic: topic.clone(),
                        reason: format!(
                            "one metric encodes to {} bytes, more than mqtt.max_packet_size allows ({max_payload} for this topic): not sent",
                            payload.len()
                        ),
                    });
                }
                continue;
            }
            // The seq encoded above is the one taken now.
            self.take_seq();
            out.push({
                let publish = Publish {
                    topic: topic.clone(),
                    payload,
                    // [tck-id-topics-ndata-mqtt] [tck-id-topics-ddata-mqtt]
                    qos: QoS::AtMostOnce,
                    retain: false,
                    kind: Some(kind),
                };
                if historical {
                    // Replayed from the store, which keeps the samples.
                    out.push(EdgeAction::Publish(publish));
                    continue;
                }
                let scope = self.scope(i);
                let named = part.iter().map(|m| {
                    let mut s = m.clone();
                    if let Some(idx) = scope.index_of(m) {
                        s.name = Some(scope.name_at(idx as u32).to_string());
                    }
                    s.alias = None;
                    Cow::Owned(s)
                });
                let samples = encode_iter(None, None, named, Datatypes::Include)
                    .expect("session payloads are built from declarations checked in EdgeSession::new");
                EdgeAction::Data {
                    publish,
                    device: device.clone(),
                    samples,
                    count: part.len(),
                    oldest_ms: part.iter().filter_map(|m| m.timestamp).min(),
                }
            });
        }
        out
    }

    /// Checks samples against the birth declarations and returns them with
    /// names filled in, in chronological order.
    fn checked(&self, i: Option<usize>, samples: Vec<Metric>) -> Result<Vec<(usize, Metric)>, EdgeError> {
        let scope = self.scope(i);
        let mut out = Vec::with_capacity(samples.len());
        for mut m in samples {
            let Some(idx) = scope.index_of(&m) else {
                return Err(EdgeError::UnknownMetric {
                    scope: scope.label.clone(),
                    metric: m.name.clone().unwrap_or_else(|| format!("alias {:?}", m.alias)),
                });
            };
            let def = &scope.metrics[idx];
            let got = m.value.as_ref().map_or(m.datatype, Value::datatype);
            if got != def.datatype && !(m.value.is_none() && got == DataType::Unknown) {
                return Err(EdgeError::TypeMismatch {
                    scope: scope.label.clone(),
                    metric: scope.slot_name(def).to_string(),
                    declared: def.datatype,
                    got,
                });
            }
            m.datatype = def.datatype;
            m.name = Some(scope.slot_name(def).to_string());
            out.push((idx, m));
        }
        // [tck-id-operational-behavior-data-publish-nbirth-order]
        // [tck-id-operational-behavior-data-publish-dbirth-order]: chronological order.
        out.sort_by_key(|(_, m)| m.timestamp.unwrap_or(0));
        Ok(out)
    }

    /// New samples from the node (`device = None`) or a device. Changed values
    /// are published as DATA, or handed back for storage when not publishing.
    /// Samples equal to the current value and quality are not resent
    /// ([tck-id-operational-behavior-data-publish-nbirth-change],
    /// [tck-id-operational-behavior-data-publish-dbirth-change]).
    pub fn update(
        &mut self,
        now: u64,
        device: Option<&str>,
        samples: Vec<Metric>,
    ) -> Result<Vec<EdgeAction>, EdgeError> {
        let i = self.scope_index(device)?;
        let samples = self.to_samples(i, samples, now)?;
        self.update_samples(now, device, samples)
    }

    fn to_samples(&self, i: Option<usize>, metrics: Vec<Metric>, now: u64) -> Result<Vec<Sample>, EdgeError> {
        Ok(self
            .checked(i, metrics)?
            .into_iter()
            .map(|(idx, m)| Sample {
                index: idx as u32,
                quality: m.quality(),
                value: m.value,
                timestamp: m.timestamp.unwrap_or(now),
            })
            .collect())
    }

    fn check_samples(&self, i: Option<usize>, samples: &[Sample]) -> Result<(), EdgeError> {
        let scope = self.scope(i);
        for s in samples {
            let Some(def) = scope.metrics.get(s.index as usize) else {
                return Err(EdgeError::UnknownMetric {
                    scope: scope.label.clone(),
                    metric: format!("#{}", s.index),
                });
            };
            if let Some(v) = &s.value {
                if v.datatype() != def.datatype {
                    return Err(EdgeError::TypeMismatch {
                        scope: scope.label.clone(),
                        metric: scope.slot_name(def).to_string(),
                        declared: def.datatype,
                        got: v.datatype(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Like [`update`](Self::update), by declaration index (the poller's path).
    pub fn update_samples(
        &mut self,
        now: u64,
        device: Option<&str>,
        mut samples: Vec<Sample>,
    ) -> Result<Vec<EdgeAction>, EdgeError> {
        let i = self.scope_index(device)?;
        if let Some(d) = i {
            if !self.devices[d].online {
                return Err(EdgeError::DeviceOffline(device.unwrap_or_default().to_string()));
            }
        }
        self.check_samples(i, &samples)?;
        // [tck-id-operational-behavior-data-publish-nbirth-order]
        // [tck-id-operational-behavior-data-publish-dbirth-order]: chronological order.
        samples.sort_by_key(|s| s.timestamp);
        let publishing = self.scope_publishing(i);
        let aliases = self.cfg.aliases;
        // While publishing, changes are encoded one DATA message at a time, so
        // a 100k-tag scan never holds 100k Metrics at once.
        // Published or stored, changes go out in chunks of `max_data_metrics`:
        // a 100k-tag scan never holds 100k Metrics, nor one giant stored record.
        let chunk = self.cfg.max_data_metrics.max(1);
        let mut out = Vec::new();
        let mut changed: Vec<Metric> = Vec::with_capacity(samples.len().min(chunk));
        for s in samples {
            let scope = self.scope_mut(i);
            let alias = scope.alias_of(s.index as usize);
            // Stored samples keep their names, so a replay after a reload
            // maps them to the aliases of the births then current.
            let name = (!(aliases && publishing)).then(|| scope.name_at(s.index).to_string());
            let cur = &mut scope.metrics[s.index as usize];
            // A bad read carries no value: the metric keeps its last one.
            let value = if s.value.is_none() && s.quality != Quality::Good {
                cur.value.clone()
            } else {
                s.value
            };
            if cur.value == value && cur.quality == s.quality {
                continue;
            }
            let properties = quality_properties(s.quality);
            cur.value.clone_from(&value);
            cur.timestamp = Some(s.timestamp);
            cur.quality = s.quality;
            changed.push(Metric {
                name,
                alias: Some(alias),
                timestamp: Some(s.timestamp),
                datatype: cur.datatype,
                value,
                is_historical: false,
                is_transient: false,
                metadata: None,
                properties,
            });
            if changed.len() == chunk {
                out.extend(self.emit(i, device, std::mem::take(&mut changed), now, publishing));
            }
        }
        if !changed.is_empty() {
            out.extend(self.emit(i, device, changed, now, publishing));
        }
        Ok(out)
    }

    /// The outcome of a write to a device's tag (or a node metric, with
    /// `device` None), published at once rather than when the value next
    /// changes: the value read back (or, with no value and a bad quality,
    /// the last one), with `properties` saying what happened. Stored like
    /// any sample while DATA cannot be published.
    pub fn write_outcome(
        &mut self,
        now: u64,
        device: Option<&str>,
        sample: Sample,
        properties: PropertySet,
    ) -> Result<Vec<EdgeAction>, EdgeError> {
        let i = self.scope_index(device)?;
        if let (Some(d), Some(name)) = (i, device) {
            if !self.devices[d].online {
                return Err(EdgeError::DeviceOffline(name.to_string()));
            }
        }
        self.check_samples(i, std::slice::from_ref(&sample))?;
        let publishing = self.scope_publishing(i);
        let aliases = self.cfg.aliases;
        let scope = self.scope_mut(i);
        let alias = scope.alias_of(sample.index as usize);
        let name = (!(aliases && publishing)).then(|| scope.name_at(sample.index).to_string());
        let cur = &mut scope.metrics[sample.index as usize];
        let value = if sample.value.is_none() && sample.quality != Quality::Good {
            cur.value.clone()
        } else {
            sample.value
        };
        let mut properties = properties;
        if sample.quality != Quality::Good {
            properties.set_quality(sample.quality);
        }
        cur.value.clone_from(&value);
        cur.timestamp = Some(sample.timestamp);
        cur.quality = sample.quality;
        let metric = Metric {
            name,
            alias: Some(alias),
            timestamp: Some(sample.timestamp),
            datatype: cur.datatype,
            value,
            is_historical: false,
            is_transient: false,
            metadata: None,
            properties: Some(properties),
        };
        Ok(self.emit(i, device, vec![metric], now, publishing))
    }

    /// The last value the session holds for a declared metric (what the
    /// births and DATA said), by declaration index.
    pub fn current(&self, device: Option<&str>, index: usize) -> Option<&Value> {
        let scope = match device {
            None => &self.node,
            Some(d) => &self.devices[*self.device_index.get(d)?],
        };
        scope.metrics.get(index)?.value.as_ref()
    }

    /// Whether a device is online (born or to be born) in this session.
    pub fn is_device_online(&self, device: &str) -> bool {
        self.device_index.get(device).is_some_and(|&i| self.devices[i].online)
    }

    /// Publishes a chunk of changes, or hands it back for storage.
    fn emit(
        &mut self,
        i: Option<usize>,
        device: Option<&str>,
        mut changed: Vec<Metric>,
        now: u64,
        publishing: bool,
    ) -> Vec<EdgeAction> {
        if publishing {
            // [tck-id-topics-ndata-payload] [tck-id-topics-ddata-payload]
            return self.data(i, changed, now, false);
        }
        for m in &mut changed {
            m.alias = None;
        }
        vec![EdgeAction::StoreHistorical {
            device: device.map(str::to_string),
            metrics: changed,
        }]
    }

    /// Publishes stored samples as historical DATA, with the aliases of the
    /// current births. Samples for metrics no longer declared come back as
    /// [`EdgeAction::Rejected`]; `Err(NotPublishing)` means keep them stored.
    pub fn replay(
        &mut self,
        now: u64,
        device: Option<&str>,
        samples: Vec<Metric>,
    ) -> Result<Vec<EdgeAction>, EdgeError> {
        let i = self.scope_index(device)?;
        if !self.scope_publishing(i) {
            return Err(EdgeError::NotPublishing);
        }
        let scope = self.scope(i);
        let mut out = Vec::new();
        let mut ok = Vec::with_capacity(samples.len());
        for m in samples {
            match scope.index_of(&m) {
                Some(idx)
                    if m.value
                        .as_ref()
                        .is_none_or(|v| v.datatype() == scope.metrics[idx].datatype) =>
                {
                    ok.push(m)
                }
                _ => out.push(EdgeAction::Rejected {
                    topic: self.topic(
                        if device.is_some() {
                            MessageType::DData
                        } else {
                            MessageType::NData
                        },
                        device,
                    ),
                    reason: format!(
                        "stored sample for '{}' no longer matches the birth of {}",
                        m.name.as_deref().unwrap_or("?"),
                        scope.label
                    ),
                }),
            }
        }
        if !ok.is_empty() {
            // Store-and-forward: [tck-id-operational-behavior-data-publish-nbirth-order]
            // applies to is_historical=false only, so stored order is kept.
            let mut data = self.data(i, ok, now, true);
            data.append(&mut out);
            out = data;
        }
        Ok(out)
    }

    /// A device became reachable: DBIRTH if the node is born.
    pub fn device_online(&mut self, now: u64, device: &str) -> Result<Vec<EdgeAction>, EdgeError> {
        let i = self
            .scope_index(Some(device))?
            .expect("a device name gives a device index");
        if self.devices[i].online && self.devices[i].born {
            return Ok(Vec::new());
        }
        self.devices[i].online = true;
        if self.node_publishing() {
            return Ok(vec![self.dbirth(i, now)]);
        }
        Ok(Vec::new())
    }

    /// A device became reachable with fresh values: they become the current
    /// values, then DBIRTH (if the node is born) carries them.
    pub fn device_online_with(
        &mut self,
        now: u64,
        device: &str,
        samples: Vec<Metric>,
    ) -> Result<Vec<EdgeAction>, EdgeError> {
        let i = self.scope_index(Some(device))?;
        let samples = self.to_samples(i, samples, now)?;
        self.device_online_samples(now, device, samples)
    }

    /// Sets current values of a device that is not yet online (the first
    /// chunks of a large device's first read); nothing is published.
    pub fn preload_samples(&mut self, device: &str, samples: Vec<Sample>) -> Result<(), EdgeError> {
        let i = self.scope_index(Some(device))?;
        self.check_samples(i, &samples)?;
        let scope = self.scope_mut(i);
        for s in samples {
            let cur = &mut scope.metrics[s.index as usize];
            if s.value.is_some() || s.quality == Quality::Good {
                cur.value = s.value;
            }
            cur.timestamp = Some(s.timestamp);
            cur.quality = s.quality;
        }
        Ok(())
    }

    /// Like [`device_online_with`](Self::device_online_with), by declaration index.
    pub fn device_online_samples(
        &mut self,
        now: u64,
        device: &str,
        samples: Vec<Sample>,
    ) -> Result<Vec<EdgeAction>, EdgeError> {
        self.preload_samples(device, samples)?;
        let i = self
            .scope_index(Some(device))?
            .expect("a device name gives a device index");
        self.devices[i].born = false;
        self.device_online(now, device)
    }

    /// Replaces the node's and devices' declarations (a configuration reload
    /// changed the tag set). Same MQTT session, same bdSeq; when born, a new
    /// birth sequence follows at once. Devices start offline until their
    /// pollers report them.
    pub fn redefine(
        &mut self,
        now: u64,
        node_metrics: Vec<Metric>,
        devices: Vec<DeviceDef>,
    ) -> Result<Vec<EdgeAction>, EdgeError> {
        let fresh = EdgeSession::new(self.cfg.clone(), node_metrics, devices, None)?;
        self.node = fresh.node;
        self.devices = fresh.devices;
        self.device_index = fresh.device_index;
        if self.phase == Phase::Born {
            return Ok(self.births(now));
        }
        Ok(Vec::new())
    }

    /// Device names in declaration order.
    /// The declaration index and datatype of a metric of the node (`device`
    /// None) or a device, as its birth declares it; None when undeclared.
    /// A binary search: cheap enough for every metric of a command flood.
    pub fn declared(&self, device: Option<&str>, name: &str) -> Option<(usize, DataType)> {
        let scope = match device {
            None => &self.node,
            Some(d) => &self.devices[*self.device_index.get(d)?],
        };
        let i = scope.name_index(name)?;
        Some((i, scope.metrics[i].datatype))
    }

    pub fn device_names(&self) -> Vec<String> {
        self.devices.iter().filter_map(|d| d.device.clone()).collect()
    }

    /// A device became unreachable: DDEATH if it was born in this session.
    /// [tck-id-operational-behavior-device-ddeath]
    pub fn device_offline(&mut self, now: u64, device: &str) -> Result<Vec<EdgeAction>, EdgeError> {
        let i = self
            .scope_index(Some(device))?
            .expect("a device name gives a device index");
        let was_born = self.devices[i].born;
        self.devices[i].online = false;
        self.devices[i].born = false;
        if !(was_born && self.phase == Phase::Born) {
            return Ok(Vec::new());
        }
        // [tck-id-topics-ddeath-seq-num] [tck-id-payloads-ddeath-seq-inc]
        let seq = self.take_seq();
        let payload = Payload {
            timestamp: Some(now),
            seq: Some(seq),
            ..Payload::default()
        };
        Ok(vec![EdgeAction::Publish(Publish {
            topic: self.topic(MessageType::DDeath, Some(device)),
            payload: encode_known_good(&payload, Datatypes::Include),
            // [tck-id-topics-ddeath-mqtt]
            qos: QoS::AtMostOnce,
            retain: false,
            kind: Some(MessageType::DDeath),
        })])
    }

    /// A live (not retained) message arrived on a subscribed topic.
    pub fn handle_message(&mut self, now: u64, topic: &str, payload: &[u8]) -> Vec<EdgeAction> {
        self.handle_delivery(now, topic, payload, false)
    }

    /// A message arrived on a subscribed topic; `retained` when the broker
    /// delivered it from its retained store.
    pub fn handle_delivery(&mut self, now: u64, topic: &str, payload: &[u8], retained: bool) -> Vec<EdgeAction> {
        let rejected = |reason: String| {
            vec![EdgeAction::Rejected {
                topic: topic.to_string(),
                reason,
            }]
        };
        let parsed = match Topic::parse(topic) {
            Ok(t) => t,
            Err(e) => return rejected(e.to_string()),
        };
        match parsed {
            Topic::State { host_id } if Some(&host_id) == self.cfg.primary_host_id.as_ref() => {
                match HostState::parse(payload) {
                    Ok(s) if now >= PLAUSIBLE_CLOCK_MS && s.timestamp > now.saturating_add(self.cfg.limits.state_max_skew_ms) => {
                        rejected(format!(
                            "STATE timestamp {} is {} s ahead of this node's clock (more than state_max_skew allows): ignored",
                            s.timestamp,
                            (s.timestamp - now) / 1000
                        ))
                    }
                    Ok(s) => self.host_state(now, s),
                    Err(e) => rejected(e.to_string()),
                }
            }
            Topic::State { .. } => Vec::new(),
            Topic::Edge {
                group,
                kind,
                node,
                device,
            } => {
                if group != self.cfg.group_id || node != self.cfg.node_id {
                    return Vec::new();
                }
                if matches!(kind, MessageType::NCmd | MessageType::DCmd) {
                    if retained {
                        return rejected(format!(
                            "retained {kind} ignored: Sparkplug commands are never retained"
                        ));
                    }
                    let max = self.cfg.limits.max_command_metrics;
                    match super::wire::Envelope::read(payload) {
                        Some(e) if e.metrics > max => {
                            return rejected(format!(
                                "{kind} of {} metrics refused whole (more than max_command_metrics, {max})",
                                e.metrics
                            ))
                        }
                        _ => {}
                    }
                }
                match kind {
                    MessageType::NCmd => self.ncmd(now, topic, payload),
                    MessageType::DCmd => self.dcmd(topic, device.as_deref().unwrap_or_default(), payload),
                    _ => Vec::new(),
                }
            }
        }
    }

    fn host_state(&mut self, now: u64, s: HostState) -> Vec<EdgeAction> {
        // A STATE older than the newest one seen (online or offline) is
        // stale: an online older than the last offline does not bring the
        // host back, an offline older than the last online does not take
        // it away.
        if self.host_state_ts.is_some_and(|newest| s.timestamp < newest) {
            return Vec::new();
        }
        self.host_state_ts = Some(s.timestamp);
        self.host_online = s.online;
        let mut out = vec![EdgeAction::HostState {
            online: s.online,
            timestamp: s.timestamp,
        }];
        out.extend(match (s.online, self.phase) {
            (true, Phase::AwaitingHost) => self.births(now),
            (true, _) => Vec::new(),
            // [tck-id-operational-behavior-primary-application-state-with-multiple-servers-walk]
            (false, Phase::Born) => self.leave_server(now),
            // Just connected and the retained STATE says offline: walk if there
            // is another server; with one server, stay connected and store
            // (docs/ARCHITECTURE.md decision 4) until the host comes back.
            (false, Phase::AwaitingHost) if self.cfg.server_count > 1 => self.leave_server(now),
            (false, _) => Vec::new(),
        });
        out
    }

    fn leave_server(&mut self, now: u64) -> Vec<EdgeAction> {
        let out = self.shutdown(now);
        self.walk();
        out
    }

    fn ncmd(&mut self, now: u64, topic: &str, payload: &[u8]) -> Vec<EdgeAction> {
        let decoded = match Payload::decode_with(payload, &self.node) {
            Ok(p) => p,
            Err(e) => {
                return vec![EdgeAction::Rejected {
                    topic: topic.to_string(),
                    reason: e.to_string(),
                }]
            }
        };
        let mut writes = Vec::new();
        let mut rebirth = false;
        let mut next_server = false;
        for mut m in decoded.metrics {
            match (m.name.as_deref(), &m.value) {
                // [tck-id-operational-behavior-data-commands-ncmd-rebirth-name]
                // [tck-id-operational-behavior-data-commands-ncmd-rebirth-value]
                (Some(REBIRTH), Some(Value::Boolean(true))) => rebirth = true,
                (Some(NEXT_SERVER), Some(Value::Boolean(true))) => next_server = true,
                (Some(REBIRTH), _) | (Some(NEXT_SERVER), _) => {}
                _ => {
                    if let Some(idx) = self.node.index_of(&m) {
                        m.name = Some(self.node.name_at(idx as u32).to_string());
                    }
                    writes.push(m);
                }
            }
        }
        let mut out = Vec::new();
        if !writes.is_empty() {
            out.push(EdgeAction::Command {
                device: None,
                metrics: writes,
            });
        }
        let recent_birth = self
            .last_birth_at
            .is_some_and(|t| now < t.saturating_add(self.cfg.rebirth_debounce_ms));
        if next_server && recent_birth {
            let reason = format!(
                "Next Server within {} ms of this session's birth refused (rebirth_debounce)",
                self.cfg.rebirth_debounce_ms
            );
            out.push(EdgeAction::NodeControl {
                metric: NEXT_SERVER,
                refused: Some(reason.clone()),
            });
            out.push(EdgeAction::Rejected {
                topic: topic.to_string(),
                reason,
            });
        } else if next_server {
            out.push(EdgeAction::NodeControl {
                metric: NEXT_SERVER,
                refused: None,
            });
            out.extend(self.leave_server(now));
        } else if rebirth {
            out.extend(self.rebirth_requested(now, topic));
        }
        out
    }

    fn dcmd(&mut self, topic: &str, device: &str, payload: &[u8]) -> Vec<EdgeAction> {
        let rejected = |reason: String| {
            vec![EdgeAction::Rejected {
                topic: topic.to_string(),
                reason,
            }]
        };
        let Some(&i) = self.device_index.get(device) else {
            return rejected(format!("DCMD for unknown device '{device}'"));
        };
        match Payload::decode_with(payload, &self.devices[i]) {
            Ok(p) => {
                let scope = &self.devices[i];
                let metrics = p
                    .metrics
                    .into_iter()
                    .map(|mut m| {
                        if let Some(idx) = scope.index_of(&m) {
                            m.name = Some(scope.name_at(idx as u32).to_string());
                        }
                        m
                    })
                    .collect();
                vec![EdgeAction::Command {
                    device: Some(device.to_string()),
                    metrics,
                }]
            }
            Err(e) => rejected(e.to_string()),
        }
    }

    /// [tck-id-operational-behavior-data-commands-rebirth-action-1]: DATA stops
    /// at once (samples are stored while a debounced rebirth is pending);
    /// [tck-id-operational-behavior-data-commands-rebirth-action-2]: full birth
    /// sequence; [tck-id-operational-behavior-data-commands-rebirth-action-3]: same bdSeq.
    /// A request within `rebirth_debounce_ms` of the last birth is refused
    /// (the host has births that fresh): a storm of requests costs one birth
    /// per window and never holds DATA back.
    fn rebirth_requested(&mut self, now: u64, topic: &str) -> Vec<EdgeAction> {
        if self.phase != Phase::Born {
            return Vec::new(); // Births follow the connection anyway.
        }
        match self.last_birth_at {
            Some(t) if now < t.saturating_add(self.cfg.rebirth_debounce_ms) => vec![EdgeAction::Rejected {
                topic: topic.to_string(),
                reason: format!(
                    "rebirth requested {} ms after the last birth: refused (rebirth_debounce is {} ms)",
                    now - t,
                    self.cfg.rebirth_debounce_ms
                ),
            }],
            _ => self.births(now),
        }
    }
}

impl Scope {
    fn born_or_node(&self) -> bool {
        self.device.is_none() || self.born
    }
}

/// Encodes a payload the session built itself from checked declarations.
fn encode_known_good(p: &Payload, datatypes: Datatypes) -> Vec<u8> {
    p.encode_with(datatypes)
        .expect("session payloads are built from declarations checked in EdgeSession::new")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparkplug::codec::SelfDescribing;
    use proptest::prelude::*;

    const T0: u64 = 1_700_000_000_000;

    fn cfg() -> EdgeConfig {
        EdgeConfig {
            group_id: "Plant1".into(),
            node_id: "gw1".into(),
            primary_host_id: None,
            server_count: 1,
            rebirth_debounce_ms: 5_000,
            aliases: true,
            max_data_metrics: 500,
            limits: Default::default(),
        }
    }

    fn session_with(cfg: EdgeConfig, stored: Option<u8>) -> EdgeSession {
        EdgeSession::new(
            cfg,
            vec![Metric::new("Uptime", Value::UInt64(0), T0)],
            vec![
                DeviceDef {
                    name: "press".into(),
                    metrics: vec![
                        Metric::new("Temp", Value::Float(20.0), T0),
                        Metric::null("Mode", DataType::String, T0),
                    ],
                },
                DeviceDef {
                    name: "oven".into(),
                    metrics: vec![Metric::new("On", Value::Boolean(false), T0)],
                },
            ],
            stored,
        )
        .expect("valid session")
    }

    fn session() -> EdgeSession {
        session_with(cfg(), None)
    }

    fn publishes(actions: &[EdgeAction]) -> Vec<&Publish> {
        actions.iter().filter_map(EdgeAction::publish).collect()
    }

    fn will(actions: &[EdgeAction]) -> Publish {
        actions
            .iter()
            .find_map(|a| match a {
                EdgeAction::SetWill(p) => Some(p.clone()),
                _ => None,
            })
            .expect("a Will")
    }

    fn decode(p: &Publish) -> Payload {
        Payload::decode(&p.payload).expect("own birth payloads decode")
    }

    fn bdseq_of(p: &Payload) -> i64 {
        match p
            .metrics
            .iter()
            .find(|m| m.name.as_deref() == Some(BDSEQ))
            .and_then(|m| m.value.clone())
        {
            Some(Value::Int64(v)) => v,
            other => panic!("bdSeq metric missing or not Int64: {other:?}"),
        }
    }

    /// Connects, brings both devices online and returns everything published.
    fn born(s: &mut EdgeSession) -> Vec<EdgeAction> {
        s.device_online(T0, "press").expect("known");
        s.device_online(T0, "oven").expect("known");
        let mut out = s.begin_connect(T0);
        out.extend(s.connected(T0));
        out
    }

    fn cmd(metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp: Some(T0),
            metrics,
            ..Payload::default()
        }
        .encode()
        .expect("encodes")
    }

    fn rebirth_cmd() -> Vec<u8> {
        cmd(vec![Metric::new(REBIRTH, Value::Boolean(true), T0)])
    }

    fn state(online: bool, ts: u64) -> Vec<u8> {
        HostState { online, timestamp: ts }.to_json()
    }

    // [tck-id-payloads-ndeath-will-message] [tck-id-payloads-ndeath-will-message-qos]
    // [tck-id-payloads-ndeath-will-message-retain] [tck-id-topics-ndeath-topic]
    #[test]
    fn will_is_ndeath_at_qos1_not_retained_with_bdseq_only() {
        let mut s = session();
        let w = will(&s.begin_connect(T0));
        assert_eq!(w.topic, "spBv1.0/Plant1/NDEATH/gw1");
        assert_eq!((w.qos, w.retain), (QoS::AtLeastOnce, false));
        let p = decode(&w);
        // [tck-id-topics-ndeath-payload] [tck-id-topics-ndeath-seq] [tck-id-payloads-ndeath-seq]
        assert_eq!(p.seq, None);
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(p.metrics[0].datatype, DataType::Int64);
        assert_eq!(bdseq_of(&p), 0);
    }

    // [tck-id-topics-nbirth-bdseq-matching] [tck-id-payloads-ndeath-bdseq] [tck-id-payloads-nbirth-bdseq]
    #[test]
    fn nbirth_bdseq_matches_the_will_of_its_connect() {
        let mut s = session_with(cfg(), Some(41));
        let out = born(&mut s);
        let w = decode(&will(&out));
        let nbirth = decode(publishes(&out)[0]);
        assert_eq!(bdseq_of(&w), 41);
        assert_eq!(bdseq_of(&nbirth), 41);
    }

    // [tck-id-topics-nbirth-bdseq-increment] [tck-id-payloads-nbirth-bdseq-inc]
    #[test]
    fn nbirth_after_reconnect_increments_bdseq_and_wraps_at_255() {
        let mut s = session_with(cfg(), Some(254));
        born(&mut s);
        assert_eq!(s.bdseq(), 254);
        s.connection_lost();
        born(&mut s);
        assert_eq!(s.bdseq(), 255);
        s.connection_lost();
        let out = born(&mut s);
        assert_eq!(bdseq_of(&decode(publishes(&out)[0])), 0);
    }

    #[test]
    fn failed_attempts_before_connect_is_sent_do_not_move_bdseq() {
        let mut s = session();
        s.begin_connect(T0);
        s.connect_failed();
        s.begin_connect(T0);
        s.connect_failed();
        let out = s.begin_connect(T0);
        assert_eq!(bdseq_of(&decode(&will(&out))), 0);
        // Once the CONNECT went out, the next attempt uses a new bdSeq.
        s.connect_sent();
        s.connect_failed();
        assert_eq!(bdseq_of(&decode(&will(&s.begin_connect(T0)))), 1);
    }

    #[test]
    fn connect_sent_persists_the_next_bdseq_so_a_restart_increments_it() {
        let mut s = session_with(cfg(), Some(7));
        s.begin_connect(T0);
        let persisted = s.connected(T0).iter().find_map(|a| match a {
            EdgeAction::PersistBdSeq(b) => Some(*b),
            _ => None,
        });
        assert_eq!(persisted, Some(8));
        let mut restarted = session_with(cfg(), persisted);
        assert_eq!(bdseq_of(&decode(&will(&restarted.begin_connect(T0)))), 8);
    }

    // [tck-id-message-flow-edge-node-ncmd-subscribe] [tck-id-message-flow-device-dcmd-subscribe] [tck-id-message-flow-edge-node-birth-publish-connect]
    #[test]
    fn subscribes_to_ncmd_and_dcmd_before_nbirth() {
        let mut s = session();
        s.begin_connect(T0);
        let out = s.connected(T0);
        let sub = out
            .iter()
            .position(|a| matches!(a, EdgeAction::Subscribe(_)))
            .expect("subscribes");
        let birth = out
            .iter()
            .position(|a| matches!(a, EdgeAction::Publish(_)))
            .expect("births");
        assert!(sub < birth);
        match &out[sub] {
            EdgeAction::Subscribe(t) => {
                assert_eq!(
                    t,
                    &vec![
                        "spBv1.0/Plant1/NCMD/gw1".to_string(),
                        "spBv1.0/Plant1/DCMD/gw1/+".to_string()
                    ]
                )
            }
            _ => unreachable!(),
        }
    }

    // [tck-id-topics-nbirth-mqtt] [tck-id-payloads-nbirth-qos] [tck-id-payloads-nbirth-retain]
    // [tck-id-topics-nbirth-seq-num] [tck-id-payloads-nbirth-seq] [tck-id-payloads-sequence-num-zero-nbirth]
    // [tck-id-topics-nbirth-timestamp] [tck-id-payloads-nbirth-timestamp]
    #[test]
    fn nbirth_is_qos0_not_retained_seq0_with_timestamp() {
        let mut s = session();
        let out = born(&mut s);
        let nb = publishes(&out)[0];
        assert_eq!(nb.topic, "spBv1.0/Plant1/NBIRTH/gw1");
        assert_eq!((nb.qos, nb.retain), (QoS::AtMostOnce, false));
        let p = decode(nb);
        assert_eq!(p.seq, Some(0));
        assert_eq!(p.timestamp, Some(T0));
    }

    // [tck-id-topics-nbirth-rebirth-metric] [tck-id-payloads-nbirth-rebirth-req]
    // [tck-id-operational-behavior-data-commands-rebirth-name] [tck-id-operational-behavior-data-commands-rebirth-datatype]
    // [tck-id-operational-behavior-data-commands-rebirth-value]
    #[test]
    fn nbirth_declares_node_control_rebirth_boolean_false() {
        let mut s = session();
        let p = decode(publishes(&born(&mut s))[0]);
        let r = p
            .metrics
            .iter()
            .find(|m| m.name.as_deref() == Some(REBIRTH))
            .expect("rebirth metric");
        assert_eq!(
            (r.datatype, &r.value),
            (DataType::Boolean, &Some(Value::Boolean(false)))
        );
    }

    // [tck-id-topics-nbirth-metrics] [tck-id-topics-nbirth-metric-reqs] [tck-id-payloads-alias-birth-requirement]
    // [tck-id-payloads-metric-datatype-req] [tck-id-payloads-name-birth-data-requirement]
    // [tck-id-operational-behavior-data-publish-nbirth] [tck-id-operational-behavior-data-publish-nbirth-values]
    #[test]
    fn nbirth_metrics_have_name_alias_datatype_timestamp_and_current_value() {
        let mut s = session();
        born(&mut s);
        s.update(T0 + 5, None, vec![Metric::new("Uptime", Value::UInt64(99), T0 + 5)])
            .expect("declared");
        let out = s.handle_message(T0 + 10_000, "spBv1.0/Plant1/NCMD/gw1", &rebirth_cmd());
        let p = decode(publishes(&out)[0]);
        let up = p
            .metrics
            .iter()
            .find(|m| m.name.as_deref() == Some("Uptime"))
            .expect("Uptime in NBIRTH");
        assert_eq!(up.alias, Some(1));
        assert_eq!(up.datatype, DataType::UInt64);
        assert_eq!(up.value, Some(Value::UInt64(99)));
        assert_eq!(up.timestamp, Some(T0 + 5));
        assert!(p.metrics.iter().all(|m| m.timestamp.is_some() && m.name.is_some()));
    }

    // [tck-id-payloads-dbirth-order] [tck-id-topics-dbirth-topic] [tck-id-topics-dbirth-seq] [tck-id-payloads-dbirth-seq]
    // [tck-id-payloads-dbirth-seq-inc] [tck-id-topics-dbirth-mqtt] [tck-id-payloads-dbirth-qos] [tck-id-payloads-dbirth-retain]
    // [tck-id-topics-dbirth-timestamp] [tck-id-payloads-dbirth-timestamp] [tck-id-principles-birth-certificates-order]
    #[test]
    fn dbirths_follow_nbirth_in_order_with_increasing_seq() {
        let mut s = session();
        let out = born(&mut s);
        let p = publishes(&out);
        let topics: Vec<&str> = p.iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "spBv1.0/Plant1/NBIRTH/gw1",
                "spBv1.0/Plant1/DBIRTH/gw1/press",
                "spBv1.0/Plant1/DBIRTH/gw1/oven"
            ]
        );
        for (i, pb) in p.iter().enumerate() {
            let d = decode(pb);
            assert_eq!(d.seq, Some(i as u64));
            assert_eq!(d.timestamp, Some(T0));
            assert_eq!((pb.qos, pb.retain), (QoS::AtMostOnce, false));
        }
    }

    // [tck-id-topics-dbirth-metrics] [tck-id-operational-behavior-data-publish-dbirth-values]
    #[test]
    fn dbirth_carries_null_metrics_explicitly() {
        let mut s = session();
        let p = decode(publishes(&born(&mut s))[1]);
        let mode = p
            .metrics
            .iter()
            .find(|m| m.name.as_deref() == Some("Mode"))
            .expect("Mode");
        assert_eq!((mode.datatype, &mode.value), (DataType::String, &None));
        assert_eq!(mode.alias, Some(3));
    }

    // [tck-id-payloads-alias-uniqueness]
    #[test]
    fn aliases_are_unique_across_node_and_devices() {
        let mut s = session();
        let out = born(&mut s);
        let mut aliases: Vec<u64> = publishes(&out)
            .iter()
            .flat_map(|p| decode(p).metrics)
            .filter_map(|m| m.alias)
            .collect();
        let n = aliases.len();
        aliases.sort_unstable();
        aliases.dedup();
        assert_eq!((n, aliases), (4, vec![1, 2, 3, 4]));
    }

    // [tck-id-payloads-alias-data-cmd-requirement] [tck-id-payloads-metric-datatype-not-req] [tck-id-topics-ddata-mqtt]
    // [tck-id-topics-ddata-seq-num] [tck-id-payloads-ddata-seq] [tck-id-payloads-ddata-seq-inc] [tck-id-topics-ddata-timestamp]
    // [tck-id-payloads-ddata-timestamp] [tck-id-payloads-ddata-qos] [tck-id-payloads-ddata-retain]
    #[test]
    fn ddata_carries_alias_only_no_datatype_and_the_next_seq() {
        let mut s = session();
        born(&mut s);
        let out = s
            .update(
                T0 + 1,
                Some("press"),
                vec![Metric::new("Temp", Value::Float(21.5), T0 + 1)],
            )
            .expect("ok");
        let p = publishes(&out)[0];
        assert_eq!(p.topic, "spBv1.0/Plant1/DDATA/gw1/press");
        assert_eq!((p.qos, p.retain), (QoS::AtMostOnce, false));
        let raw = <crate::sparkplug::pb::Payload as prost::Message>::decode(p.payload.as_slice()).expect("protobuf");
        assert_eq!(raw.seq, Some(3));
        assert_eq!(raw.timestamp, Some(T0 + 1));
        assert_eq!(raw.metrics[0].name, None);
        assert_eq!(raw.metrics[0].alias, Some(2));
        assert_eq!(raw.metrics[0].datatype, None);
        assert_eq!(raw.metrics[0].timestamp, Some(T0 + 1));
    }

    // [tck-id-topics-ndata-topic] [tck-id-topics-ndata-mqtt] [tck-id-topics-ndata-seq-num] [tck-id-topics-ndata-timestamp]
    // [tck-id-payloads-ndata-seq] [tck-id-payloads-ndata-seq-inc] [tck-id-payloads-ndata-qos] [tck-id-payloads-ndata-retain]
    // [tck-id-payloads-ndata-timestamp] [tck-id-payloads-name-requirement]
    #[test]
    fn ndata_without_aliases_carries_names() {
        let mut s = session_with(
            EdgeConfig {
                aliases: false,
                ..cfg()
            },
            None,
        );
        born(&mut s);
        let out = s
            .update(T0 + 1, None, vec![Metric::new("Uptime", Value::UInt64(1), T0 + 1)])
            .expect("ok");
        let p = publishes(&out)[0];
        assert_eq!(p.topic, "spBv1.0/Plant1/NDATA/gw1");
        assert_eq!((p.qos, p.retain), (QoS::AtMostOnce, false));
        let d = Payload::decode_with(&p.payload, &s.node).expect("decodes");
        assert_eq!((d.seq, d.timestamp), (Some(3), Some(T0 + 1)));
        assert_eq!(d.metrics[0].name.as_deref(), Some("Uptime"));
        assert_eq!(d.metrics[0].alias, None);
    }

    // [tck-id-payloads-sequence-num-incrementing] [tck-id-payloads-ndata-seq-inc]
    #[test]
    fn seq_wraps_from_255_to_0() {
        let mut s = session();
        born(&mut s); // NBIRTH 0, DBIRTH 1, DBIRTH 2
        let mut seqs = Vec::new();
        for v in 0..300u64 {
            let out = s
                .update(T0 + v, None, vec![Metric::new("Uptime", Value::UInt64(v + 1), T0 + v)])
                .expect("ok");
            let raw = <crate::sparkplug::pb::Payload as prost::Message>::decode(publishes(&out)[0].payload.as_slice())
                .expect("protobuf");
            seqs.push(raw.seq.expect("seq"));
        }
        assert_eq!(seqs[0], 3);
        assert_eq!(seqs[252], 255);
        assert_eq!(seqs[253], 0);
        assert!(seqs.windows(2).all(|w| w[1] == (w[0] + 1) % 256));
    }

    #[test]
    fn large_updates_are_split_into_data_messages_with_consecutive_seq() {
        let metrics: Vec<Metric> = (0..25)
            .map(|i| Metric::new(format!("T{i}"), Value::Int32(0), T0))
            .collect();
        let mut s = connected_node(
            EdgeConfig {
                max_data_metrics: 10,
                ..cfg()
            },
            metrics,
        );
        let changes: Vec<Metric> = (0..25)
            .map(|i| Metric::new(format!("T{i}"), Value::Int32(1), T0 + 1))
            .collect();
        let out = s.update(T0 + 1, None, changes).expect("declared");
        let sizes: Vec<(usize, Option<u64>)> = publishes(&out)
            .iter()
            .map(|p| {
                let raw = decoded(p);
                (raw.metrics.len(), raw.seq)
            })
            .collect();
        assert_eq!(sizes, vec![(10, Some(1)), (10, Some(2)), (5, Some(3))]);
    }

    /// A node with `metrics` and no devices, connected (and so born).
    fn connected_node(cfg: EdgeConfig, metrics: Vec<Metric>) -> EdgeSession {
        let mut s = EdgeSession::new(cfg, metrics, vec![], None).expect("valid");
        s.begin_connect(T0);
        s.connected(T0);
        s
    }

    /// A node with 40 String metrics whose packets may be at most `max` bytes.
    fn strings_node(max: usize) -> EdgeSession {
        let metrics: Vec<Metric> = (0..40)
            .map(|i| Metric::null(format!("S{i}"), DataType::String, T0))
            .collect();
        connected_node(
            EdgeConfig {
                limits: EdgeLimits {
                    max_packet_bytes: max,
                    ..EdgeLimits::default()
                },
                ..cfg()
            },
            metrics,
        )
    }

    fn decoded(p: &Publish) -> crate::sparkplug::pb::Payload {
        <crate::sparkplug::pb::Payload as prost::Message>::decode(p.payload.as_slice()).expect("pb")
    }

    // [tck-id-payloads-sequence-num-incrementing]
    #[test]
    fn data_larger_than_the_packet_limit_is_split_before_seqs_are_given_and_every_message_fits() {
        let mut s = strings_node(1024);
        let long = "x".repeat(100);
        let changes: Vec<Metric> = (0..40)
            .map(|i| Metric::new(format!("S{i}"), Value::String(format!("{long}{i}")), T0 + 1))
            .collect();
        let out = s.update(T0 + 1, None, changes).expect("declared");
        let msgs = publishes(&out);
        assert!(msgs.len() >= 5, "4 KiB of strings in 1 KiB packets: {}", msgs.len());
        let mut seqs = Vec::new();
        let mut values = 0;
        for p in &msgs {
            assert!(p.packet_bytes() <= 1024, "{} bytes", p.payload.len());
            let raw = decoded(p);
            seqs.push(raw.seq.expect("seq"));
            values += raw.metrics.len();
        }
        assert_eq!(values, 40, "every change sent once");
        let want: Vec<u64> = (1..=msgs.len() as u64).collect();
        assert_eq!(seqs, want, "consecutive seqs, none burnt");
        // The same holds for stored samples replayed after a birth.
        let mut s = strings_node(1024);
        let stored: Vec<Metric> = (0..40)
            .map(|i| Metric::new(format!("S{i}"), Value::String(format!("{long}{i}")), T0 - 5))
            .collect();
        let out = s.replay(T0 + 1, None, stored).expect("publishing");
        let msgs = publishes(&out);
        assert!(msgs.len() >= 5);
        assert!(msgs.iter().all(|p| p.packet_bytes() <= 1024));
        assert_eq!(msgs.iter().map(|p| decoded(p).metrics.len()).sum::<usize>(), 40);
    }

    #[test]
    fn a_single_metric_larger_than_the_packet_limit_is_refused_without_burning_a_seq() {
        let mut s = strings_node(512);
        let out = s
            .update(
                T0 + 1,
                None,
                vec![Metric::new("S0", Value::String("y".repeat(2000)), T0 + 1)],
            )
            .expect("declared");
        assert!(publishes(&out).is_empty());
        assert!(
            matches!(&out[..], [EdgeAction::Rejected { reason, .. }] if reason.contains("more than mqtt.max_packet_size allows")),
            "{out:?}"
        );
        let out = s
            .update(
                T0 + 2,
                None,
                vec![Metric::new("S1", Value::String("ok".into()), T0 + 2)],
            )
            .expect("declared");
        assert_eq!(
            decoded(publishes(&out)[0]).seq,
            Some(1),
            "the next DATA has the next seq"
        );
    }

    // [tck-id-operational-behavior-data-publish-nbirth-change] [tck-id-operational-behavior-data-publish-dbirth-change]
    #[test]
    fn unchanged_values_are_not_resent() {
        let mut s = session();
        born(&mut s);
        let same = s
            .update(
                T0 + 1,
                Some("press"),
                vec![Metric::new("Temp", Value::Float(20.0), T0 + 1)],
            )
            .expect("ok");
        assert!(same.is_empty());
    }

    // [tck-id-operational-behavior-data-publish-dbirth-order] [tck-id-operational-behavior-data-publish-nbirth-order]
    #[test]
    fn metrics_in_data_are_in_chronological_order() {
        let mut s = session();
        born(&mut s);
        let out = s
            .update(
                T0 + 9,
                Some("press"),
                vec![
                    Metric::new("Temp", Value::Float(30.0), T0 + 9),
                    Metric::new("Mode", Value::String("run".into()), T0 + 2),
                ],
            )
            .expect("ok");
        let d = Payload::decode_with(&publishes(&out)[0].payload, &s.devices[0]).expect("decodes");
        let ts: Vec<_> = d.metrics.iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, vec![Some(T0 + 2), Some(T0 + 9)]);
    }

    #[test]
    fn undeclared_or_mistyped_samples_are_refused_with_the_metric_named() {
        let mut s = session();
        born(&mut s);
        let e = s
            .update(T0, Some("press"), vec![Metric::new("Nope", Value::Float(1.0), T0)])
            .expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "metric 'Nope' was not declared in the birth of device 'press'"
        );
        let e = s
            .update(T0, Some("press"), vec![Metric::new("Temp", Value::Int32(1), T0)])
            .expect_err("type");
        assert_eq!(
            e.to_string(),
            "metric 'Temp' on device 'press' is Float, but the sample is Int32"
        );
        assert!(matches!(
            s.update(T0, Some("x"), vec![]),
            Err(EdgeError::UnknownDevice(_))
        ));
    }

    #[test]
    fn samples_before_birth_are_stored_not_published() {
        let mut s = session();
        s.device_online(T0, "press").expect("known");
        let out = s
            .update(T0, Some("press"), vec![Metric::new("Temp", Value::Float(5.0), T0)])
            .expect("ok");
        assert!(
            matches!(&out[..], [EdgeAction::StoreHistorical { device: Some(d), metrics }] if d == "press" && metrics.len() == 1)
        );
    }

    // Store-and-forward replay: [tck-id-payloads-ddata-order]
    #[test]
    fn replay_after_birth_is_historical_with_current_aliases_and_original_timestamps() {
        let mut s = session();
        s.device_online(T0, "press").expect("known");
        let stored = match &s
            .update(
                T0 - 60_000,
                Some("press"),
                vec![Metric::new("Temp", Value::Float(5.0), T0 - 60_000)],
            )
            .expect("ok")[..]
        {
            [EdgeAction::StoreHistorical { metrics, .. }] => metrics.clone(),
            other => panic!("expected storage, got {other:?}"),
        };
        assert_eq!(
            s.replay(T0, Some("press"), stored.clone()),
            Err(EdgeError::NotPublishing)
        );
        born(&mut s);
        let out = s.replay(T0 + 1, Some("press"), stored).expect("born");
        let d = Payload::decode_with(&publishes(&out)[0].payload, &s.devices[0]).expect("decodes");
        assert!(d.metrics[0].is_historical);
        assert_eq!(d.metrics[0].timestamp, Some(T0 - 60_000));
        assert_eq!(d.metrics[0].alias, Some(2));
    }

    #[test]
    fn live_data_hands_its_samples_by_name_to_the_outbox_and_a_replay_does_not() {
        let mut s = session();
        s.device_online(T0, "press").expect("known");
        born(&mut s);
        let out = s
            .update(
                T0 + 5,
                Some("press"),
                vec![Metric::new("Temp", Value::Float(7.5), T0 + 5)],
            )
            .expect("ok");
        let [EdgeAction::Data {
            publish,
            device,
            samples,
            count: 1,
            ..
        }] = &out[..]
        else {
            panic!("expected one DATA, got {out:?}")
        };
        assert_eq!(device.as_deref(), Some("press"));
        let samples = Payload::decode(samples).expect("self-describing").metrics;
        assert_eq!(samples.len(), 1);
        let m = &samples[0];
        assert_eq!(
            (m.name.as_deref(), m.alias, &m.value, m.timestamp, m.is_historical),
            (Some("Temp"), None, &Some(Value::Float(7.5)), Some(T0 + 5), false),
            "the stored form: named, no alias, so a replay after a rebirth maps it anew"
        );
        let d = Payload::decode_with(&publish.payload, &s.devices[0]).expect("decodes");
        assert_eq!((d.metrics[0].alias, d.metrics[0].name.as_deref()), (Some(2), None));
        // Replaying the samples (as the gateway does after a lost connection).
        let again = s.replay(T0 + 9, device.as_deref(), samples.clone()).expect("born");
        assert!(
            matches!(&again[..], [EdgeAction::Publish(_)]),
            "replayed data is kept by the store, not handed back: {again:?}"
        );
    }

    #[test]
    fn replay_of_a_metric_no_longer_declared_is_rejected_not_published() {
        let mut s = session();
        born(&mut s);
        let out = s
            .replay(T0, None, vec![Metric::new("Gone", Value::Int32(1), T0)])
            .expect("born");
        assert!(matches!(&out[..], [EdgeAction::Rejected { .. }]));
    }

    // [tck-id-operational-behavior-device-ddeath] [tck-id-topics-ddeath-topic] [tck-id-topics-ddeath-mqtt]
    // [tck-id-topics-ddeath-seq-num] [tck-id-payloads-ddeath-seq] [tck-id-payloads-ddeath-seq-inc] [tck-id-payloads-ddeath-timestamp]
    #[test]
    fn lost_device_gets_ddeath_with_seq_and_dbirth_when_back() {
        let mut s = session();
        born(&mut s);
        let out = s.device_offline(T0 + 1, "press").expect("known");
        let p = publishes(&out)[0];
        assert_eq!(p.topic, "spBv1.0/Plant1/DDEATH/gw1/press");
        assert_eq!((p.qos, p.retain), (QoS::AtMostOnce, false));
        let d = decode(p);
        assert_eq!((d.seq, d.timestamp), (Some(3), Some(T0 + 1)));
        assert!(matches!(
            s.update(T0, Some("press"), vec![]),
            Err(EdgeError::DeviceOffline(_))
        ));
        let back = s.device_online(T0 + 2, "press").expect("known");
        let p = publishes(&back)[0];
        assert_eq!(p.topic, "spBv1.0/Plant1/DBIRTH/gw1/press");
        assert_eq!(decode(p).seq, Some(4));
    }

    #[test]
    fn failed_read_keeps_the_last_value_with_bad_quality_then_recovers_to_good() {
        let mut s = session();
        born(&mut s);
        let bad = Sample {
            index: 0,
            value: None,
            quality: Quality::Bad,
            timestamp: T0 + 1,
        };
        let out = s
            .update_samples(T0 + 1, Some("press"), vec![bad.clone()])
            .expect("declared");
        let d = Payload::decode_with(&publishes(&out)[0].payload, &s.devices[0]).expect("decodes");
        assert_eq!(
            (d.metrics[0].value.clone(), d.metrics[0].quality()),
            (Some(Value::Float(20.0)), Quality::Bad)
        );
        assert!(
            s.update_samples(T0 + 2, Some("press"), vec![bad])
                .expect("declared")
                .is_empty(),
            "no repeat"
        );
        let good = Sample {
            index: 0,
            value: Some(Value::Float(20.0)),
            quality: Quality::Good,
            timestamp: T0 + 3,
        };
        let out = s.update_samples(T0 + 3, Some("press"), vec![good]).expect("declared");
        let d = Payload::decode_with(&publishes(&out)[0].payload, &s.devices[0]).expect("decodes");
        assert_eq!(
            d.metrics[0].quality(),
            Quality::Good,
            "back to GOOD: no Quality property"
        );
    }

    #[test]
    fn device_online_with_fresh_values_births_them_not_the_stale_ones() {
        let mut s = session();
        born(&mut s);
        s.device_offline(T0 + 1, "press").expect("known");
        let out = s
            .device_online_with(T0 + 2, "press", vec![Metric::new("Temp", Value::Float(99.0), T0 + 2)])
            .expect("declared");
        let d = decode(publishes(&out)[0]);
        let temp = d
            .metrics
            .iter()
            .find(|m| m.name.as_deref() == Some("Temp"))
            .expect("Temp");
        assert_eq!(
            (temp.value.clone(), temp.timestamp),
            (Some(Value::Float(99.0)), Some(T0 + 2))
        );
    }

    #[test]
    fn redefine_keeps_bdseq_and_rebirths_with_the_new_declarations() {
        let mut s = session_with(cfg(), Some(4));
        born(&mut s);
        let out = s
            .redefine(
                T0 + 1,
                vec![
                    Metric::new("Uptime", Value::UInt64(0), T0),
                    Metric::new("Version", Value::String("2".into()), T0),
                ],
                vec![DeviceDef {
                    name: "press".into(),
                    metrics: vec![Metric::new("Temp", Value::Float(1.0), T0)],
                }],
            )
            .expect("valid");
        let p = publishes(&out);
        assert_eq!(p.len(), 1, "devices start offline until their pollers report");
        let nb = decode(p[0]);
        assert_eq!((nb.seq, bdseq_of(&nb)), (Some(0), 4));
        assert!(nb.metrics.iter().any(|m| m.name.as_deref() == Some("Version")));
        assert!(matches!(
            s.update(T0, Some("oven"), vec![]),
            Err(EdgeError::UnknownDevice(_))
        ));
    }

    // [tck-id-operational-behavior-data-commands-rebirth-action-1] [tck-id-operational-behavior-data-commands-rebirth-action-2]
    // [tck-id-operational-behavior-data-commands-rebirth-action-3] [tck-id-operational-behavior-data-commands-ncmd-rebirth-verb]
    #[test]
    fn ncmd_rebirth_gives_a_new_nbirth_with_the_same_bdseq_and_seq_zero() {
        let mut s = session_with(cfg(), Some(3));
        born(&mut s);
        s.update(T0 + 1, None, vec![Metric::new("Uptime", Value::UInt64(5), T0 + 1)])
            .expect("ok");
        let out = s.handle_message(T0 + 60_000, "spBv1.0/Plant1/NCMD/gw1", &rebirth_cmd());
        let p = publishes(&out);
        assert_eq!(p.len(), 3, "NBIRTH and both DBIRTHs");
        let nb = decode(p[0]);
        assert_eq!((nb.seq, bdseq_of(&nb)), (Some(0), 3));
        assert_eq!(decode(p[2]).seq, Some(2));
    }

    #[test]
    fn rebirth_by_alias_free_name_also_works_when_aliases_are_used() {
        // Hosts send the rebirth metric by name: it has no alias in our NBIRTH.
        let mut s = session();
        born(&mut s);
        let out = s.handle_message(T0 + 60_000, "spBv1.0/Plant1/NCMD/gw1", &rebirth_cmd());
        assert_eq!(publishes(&out)[0].topic, "spBv1.0/Plant1/NBIRTH/gw1");
    }

    #[test]
    fn a_rebirth_storm_costs_one_birth_per_window_and_data_keeps_flowing() {
        let mut s = session();
        born(&mut s); // born at T0
        let mut published_data = 0;
        for sec in 1..=10u64 {
            let now = T0 + sec * 1_000;
            let out = s.handle_message(now, "spBv1.0/Plant1/NCMD/gw1", &rebirth_cmd());
            if sec == 5 || sec == 10 {
                assert!(
                    publishes(&out).iter().any(|p| p.topic.contains("/NBIRTH/")),
                    "second {sec}"
                );
            } else {
                assert!(
                    matches!(&out[..], [EdgeAction::Rejected { reason, .. }] if reason.contains("refused (rebirth_debounce is 5000 ms)")),
                    "second {sec}: {out:?}"
                );
            }
            let data = s
                .update(
                    now + 500,
                    None,
                    vec![Metric::new("Uptime", Value::UInt64(sec), now + 500)],
                )
                .expect("ok");
            assert!(
                !data.iter().any(|a| matches!(a, EdgeAction::StoreHistorical { .. })),
                "no sample diverted to the store"
            );
            published_data += data.iter().filter(|a| matches!(a, EdgeAction::Data { .. })).count();
        }
        assert_eq!(published_data, 10, "every sample published live");
    }

    // [tck-id-operational-behavior-data-commands-ncmd-verb] [tck-id-operational-behavior-data-commands-dcmd-verb]
    // [tck-id-operational-behavior-data-commands-dcmd-metric-name]
    #[test]
    fn ncmd_and_dcmd_writes_reach_the_command_guard_with_names_resolved() {
        let mut s = session();
        born(&mut s);
        let mut m = Metric::new("Temp", Value::Float(50.0), T0);
        m.name = None;
        m.alias = Some(2);
        let out = s.handle_message(
            T0,
            "spBv1.0/Plant1/DCMD/gw1/press",
            &Payload {
                metrics: vec![m],
                ..Payload::default()
            }
            .encode_with(Datatypes::Omit)
            .expect("encodes"),
        );
        match &out[..] {
            [EdgeAction::Command {
                device: Some(d),
                metrics,
            }] => {
                assert_eq!(d, "press");
                assert_eq!(metrics[0].name.as_deref(), Some("Temp"));
                assert_eq!(metrics[0].value, Some(Value::Float(50.0)));
            }
            other => panic!("expected a command, got {other:?}"),
        }
        let out = s.handle_message(
            T0,
            "spBv1.0/Plant1/NCMD/gw1",
            &cmd(vec![Metric::new("Uptime", Value::UInt64(0), T0)]),
        );
        assert!(matches!(&out[..], [EdgeAction::Command { device: None, .. }]));
    }

    #[test]
    fn undecodable_command_is_rejected_with_the_reason() {
        let mut s = session();
        born(&mut s);
        let out = s.handle_message(T0, "spBv1.0/Plant1/NCMD/gw1", b"\xff\xff");
        assert!(
            matches!(&out[..], [EdgeAction::Rejected { reason, .. }] if reason.starts_with("not a Sparkplug B payload"))
        );
        let out = s.handle_message(T0, "spBv1.0/Plant1/DCMD/gw1/ghost", &rebirth_cmd());
        assert!(matches!(&out[..], [EdgeAction::Rejected { reason, .. }] if reason.contains("ghost")));
    }

    fn primary() -> EdgeConfig {
        EdgeConfig {
            primary_host_id: Some("scada".into()),
            server_count: 2,
            ..cfg()
        }
    }

    // [tck-id-message-flow-edge-node-birth-publish-subscribe] [tck-id-operational-behavior-edge-node-birth-sequence-wait]
    #[test]
    fn with_a_primary_host_nothing_is_born_until_its_state_is_online() {
        let mut s = session_with(primary(), None);
        s.begin_connect(T0);
        let out = s.connected(T0);
        assert!(publishes(&out).is_empty());
        assert!(matches!(&out[1], EdgeAction::Subscribe(t) if t.contains(&"spBv1.0/STATE/scada".to_string())));
        let held = s
            .update(T0, None, vec![Metric::new("Uptime", Value::UInt64(1), T0)])
            .expect("ok");
        assert!(matches!(&held[..], [EdgeAction::StoreHistorical { .. }]));
        let out = s.handle_message(T0, "spBv1.0/STATE/scada", &state(true, T0 - 5));
        assert_eq!(publishes(&out)[0].topic, "spBv1.0/Plant1/NBIRTH/gw1");
    }

    // [tck-id-operational-behavior-primary-application-state-with-multiple-servers-walk]
    // [tck-id-operational-behavior-primary-application-state-with-multiple-servers-single-server]
    #[test]
    fn offline_state_publishes_ndeath_disconnects_and_walks_to_the_next_server() {
        let mut s = session_with(primary(), None);
        s.begin_connect(T0);
        s.connected(T0);
        s.handle_message(T0, "spBv1.0/STATE/scada", &state(true, T0));
        let out = s.handle_message(T0 + 1, "spBv1.0/STATE/scada", &state(false, T0 + 1));
        assert_eq!(publishes(&out)[0].topic, "spBv1.0/Plant1/NDEATH/gw1");
        assert_eq!(out.last(), Some(&EdgeAction::Disconnect));
        assert!(!s.is_born());
        assert!(matches!(s.begin_connect(T0 + 2)[1], EdgeAction::Connect { server: 1 }));
    }

    #[test]
    fn offline_state_older_than_the_last_online_is_ignored() {
        let mut s = session_with(primary(), None);
        s.begin_connect(T0);
        s.connected(T0);
        s.handle_message(T0, "spBv1.0/STATE/scada", &state(true, T0 + 100));
        assert!(s
            .handle_message(T0, "spBv1.0/STATE/scada", &state(false, T0 + 99))
            .is_empty());
        assert!(s.is_born());
        // An online STATE older than the newest seen does not count either.
        let mut s = session_with(primary(), None);
        s.begin_connect(T0);
        s.connected(T0);
        s.handle_message(T0, "spBv1.0/STATE/scada", &state(false, T0 + 50));
        s.handle_message(T0, "spBv1.0/STATE/scada", &state(true, T0 + 100));
        assert!(publishes(&s.handle_message(T0, "spBv1.0/STATE/scada", &state(true, T0 + 99))).is_empty());
    }

    // [tck-id-operational-behavior-edge-node-birth-sequence-wait]
    #[test]
    fn an_online_state_older_than_the_last_offline_is_stale_and_the_node_stays_unborn() {
        // One server: an offline STATE keeps the node connected, waiting.
        let one = EdgeConfig {
            server_count: 1,
            ..primary()
        };
        let mut s = session_with(one, None);
        s.begin_connect(T0);
        s.connected(T0);
        s.handle_message(T0, "spBv1.0/STATE/scada", &state(false, T0 + 50));
        let out = s.handle_message(T0, "spBv1.0/STATE/scada", &state(true, T0 + 40));
        assert!(publishes(&out).is_empty(), "{out:?}");
        assert!(!s.is_born() && !s.host_online());
        // An online as new as the offline (the host's next session) counts.
        let out = s.handle_message(T0, "spBv1.0/STATE/scada", &state(true, T0 + 50));
        assert_eq!(publishes(&out)[0].topic, "spBv1.0/Plant1/NBIRTH/gw1");
    }

    #[test]
    fn each_mqtt_session_judges_state_afresh_so_a_forged_future_timestamp_cannot_keep_the_node_unborn() {
        let mut s = session_with(primary(), None);
        s.begin_connect(T0);
        s.connected(T0);
        // Forged: online, then a retained offline, stamped far ahead but
        // within the skew allowed (the limit itself is tested below).
        s.handle_message(T0, "spBv1.0/STATE/scada", &state(true, T0 + 500_000));
        s.handle_message(T0, "spBv1.0/STATE/scada", &state(false, T0 + 500_000));
        assert!(!s.is_born());
        // The real host, connected since T0, answers with its own online: in
        // this session it is older than the forged one and ignored...
        assert!(publishes(&s.handle_message(T0 + 1, "spBv1.0/STATE/scada", &state(true, T0))).is_empty());
        // ...but the host's online replaced the forged retained offline on the
        // broker, and in the node's next session it counts.
        s.connection_lost();
        s.begin_connect(T0 + 2);
        s.connected(T0 + 2);
        let born = s.handle_message(T0 + 3, "spBv1.0/STATE/scada", &state(true, T0));
        assert_eq!(publishes(&born)[0].topic, "spBv1.0/Plant1/NBIRTH/gw1");
    }

    #[test]
    fn a_state_stamped_beyond_the_allowed_skew_is_refused_unless_the_clock_is_implausible() {
        let mut s = session_with(primary(), None);
        s.begin_connect(T0);
        s.connected(T0);
        let out = s.handle_message(T0, "spBv1.0/STATE/scada", &state(true, u64::MAX));
        assert!(
            matches!(&out[..], [EdgeAction::Rejected { reason, .. }] if reason.contains("ahead of this node's clock")),
            "{out:?}"
        );
        assert!(!s.is_born());
        let born = s.handle_message(T0, "spBv1.0/STATE/scada", &state(true, T0 + 600_000));
        assert_eq!(
            publishes(&born)[0].topic,
            "spBv1.0/Plant1/NBIRTH/gw1",
            "ten minutes ahead is allowed"
        );
        // A box that booted in 1970 cannot judge: the STATE is taken.
        let mut early = session_with(primary(), None);
        early.begin_connect(1_000);
        early.connected(1_000);
        let born = early.handle_message(1_000, "spBv1.0/STATE/scada", &state(true, T0));
        assert_eq!(publishes(&born)[0].topic, "spBv1.0/Plant1/NBIRTH/gw1");
    }

    #[test]
    fn retained_commands_are_refused_and_never_loop_the_node() {
        let mut s = session_with(
            EdgeConfig {
                server_count: 2,
                ..cfg()
            },
            None,
        );
        born(&mut s);
        for kind in ["NCMD/gw1", "DCMD/gw1/press"] {
            let ncmd = cmd(vec![Metric::new(NEXT_SERVER, Value::Boolean(true), T0)]);
            let out = s.handle_delivery(T0 + 60_000, &format!("spBv1.0/Plant1/{kind}"), &ncmd, true);
            assert!(
                matches!(&out[..], [EdgeAction::Rejected { reason, .. }] if reason.contains("never retained")),
                "{out:?}"
            );
        }
        assert_eq!(s.server(), 0, "no walk");
        assert!(s.is_born());
    }

    #[test]
    fn a_command_of_too_many_metrics_is_refused_whole_before_it_is_decoded() {
        let mut s = session_with(
            EdgeConfig {
                limits: EdgeLimits {
                    max_command_metrics: 10,
                    ..EdgeLimits::default()
                },
                ..cfg()
            },
            None,
        );
        born(&mut s);
        let big = cmd((0..11).map(|_| Metric::new("Uptime", Value::UInt64(1), T0)).collect());
        let out = s.handle_message(T0, "spBv1.0/Plant1/NCMD/gw1", &big);
        assert!(
            matches!(&out[..], [EdgeAction::Rejected { reason, .. }] if reason == "NCMD of 11 metrics refused whole (more than max_command_metrics, 10)"),
            "{out:?}"
        );
    }

    #[test]
    fn single_server_with_retained_offline_state_stays_connected_and_stores() {
        let mut s = session_with(
            EdgeConfig {
                server_count: 1,
                ..primary()
            },
            None,
        );
        s.begin_connect(T0);
        s.connected(T0);
        assert_eq!(
            s.handle_message(T0, "spBv1.0/STATE/scada", &state(false, T0)),
            vec![EdgeAction::HostState {
                online: false,
                timestamp: T0
            }],
            "the change is reported, and the node stays connected"
        );
        let out = s
            .update(T0, None, vec![Metric::new("Uptime", Value::UInt64(3), T0)])
            .expect("ok");
        assert!(matches!(&out[..], [EdgeAction::StoreHistorical { .. }]));
        let born = s.handle_message(T0 + 1, "spBv1.0/STATE/scada", &state(true, T0 + 1));
        assert_eq!(publishes(&born)[0].topic, "spBv1.0/Plant1/NBIRTH/gw1");
    }

    #[test]
    fn an_accepted_state_is_reported_before_what_it_makes_the_node_do_and_a_stale_one_not_at_all() {
        // [tck-id-operational-behavior-edge-node-birth-sequence-wait]
        let mut s = session_with(primary(), None);
        s.begin_connect(T0);
        s.connected(T0);
        let born = s.handle_message(T0, "spBv1.0/STATE/scada", &state(true, T0));
        assert_eq!(
            born[0],
            EdgeAction::HostState {
                online: true,
                timestamp: T0
            }
        );
        assert_eq!(publishes(&born)[0].kind, Some(MessageType::NBirth));
        assert!(
            s.handle_message(T0, "spBv1.0/STATE/scada", &state(false, T0 - 1))
                .is_empty(),
            "older than the newest STATE: ignored, not reported"
        );
        assert!(s.host_online());
    }

    #[test]
    fn next_server_command_walks() {
        let mut s = session_with(
            EdgeConfig {
                server_count: 3,
                ..cfg()
            },
            None,
        );
        born(&mut s);
        let next = cmd(vec![Metric::new(NEXT_SERVER, Value::Boolean(true), T0)]);
        // Within rebirth_debounce of the birth it is refused: a storm of them
        // cannot walk the servers in a loop.
        let out = s.handle_message(T0 + 1_000, "spBv1.0/Plant1/NCMD/gw1", &next);
        assert!(
            matches!(
                &out[..],
                [
                    EdgeAction::NodeControl { refused: Some(_), .. },
                    EdgeAction::Rejected { .. }
                ]
            ),
            "{out:?}"
        );
        assert_eq!(s.server(), 0);
        let out = s.handle_message(T0 + 5_000, "spBv1.0/Plant1/NCMD/gw1", &next);
        assert_eq!(
            out[0],
            EdgeAction::NodeControl {
                metric: NEXT_SERVER,
                refused: None
            },
            "honoured, for the audit"
        );
        assert_eq!(out.last(), Some(&EdgeAction::Disconnect));
        assert_eq!(s.server(), 1);
    }

    // [tck-id-operational-behavior-edge-node-intentional-disconnect-ndeath]
    // [tck-id-operational-behavior-edge-node-intentional-disconnect-packet] [tck-id-payloads-ndeath-will-message-publisher]
    #[test]
    fn shutdown_publishes_ndeath_with_current_bdseq_then_disconnects() {
        let mut s = session_with(cfg(), Some(9));
        born(&mut s);
        let out = s.shutdown(T0 + 5);
        assert_eq!(out.len(), 2);
        let nd = decode(publishes(&out)[0]);
        assert_eq!((bdseq_of(&nd), nd.seq), (9, None));
        assert_eq!(out[1], EdgeAction::Disconnect);
    }

    #[test]
    fn invalid_configuration_is_refused_with_a_reason() {
        let bad = EdgeSession::new(
            EdgeConfig {
                group_id: "a/b".into(),
                ..cfg()
            },
            vec![],
            vec![],
            None,
        );
        assert_eq!(
            bad.expect_err("slash").to_string(),
            "group id 'a/b' is invalid: it contains '/', the topic separator"
        );
        let dup = EdgeSession::new(
            cfg(),
            vec![],
            vec![
                DeviceDef {
                    name: "d".into(),
                    metrics: vec![],
                },
                DeviceDef {
                    name: "d".into(),
                    metrics: vec![],
                },
            ],
            None,
        );
        assert!(matches!(dup, Err(EdgeError::DuplicateDevice(_))));
        let reserved = EdgeSession::new(cfg(), vec![Metric::new(BDSEQ, Value::Int64(0), 0)], vec![], None);
        assert!(matches!(reserved, Err(EdgeError::ReservedMetric { .. })));
        assert!(matches!(
            EdgeSession::new(
                EdgeConfig {
                    server_count: 0,
                    ..cfg()
                },
                vec![],
                vec![],
                None
            ),
            Err(EdgeError::NoServers)
        ));
    }

    // ---- property test: seq contiguity and bdSeq/Will agreement under any input sequence ----

    #[derive(Debug, Clone)]
    enum Op {
        Connect,
        ConnectFail,
        Lose,
        Update(u64),
        DeviceUp(bool),
        DeviceDown(bool),
        Rebirth,
        Tick(u64),
        State(bool, u64),
        Shutdown,
        Replay,
        /// Many changes in a row, so sessions cross the 255 → 0 wrap.
        Burst(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Connect),
            Just(Op::ConnectFail),
            Just(Op::Lose),
            (0u64..50).prop_map(Op::Update),
            any::<bool>().prop_map(Op::DeviceUp),
            any::<bool>().prop_map(Op::DeviceDown),
            Just(Op::Rebirth),
            (0u64..10_000).prop_map(Op::Tick),
            (any::<bool>(), 0u64..1_000).prop_map(|(o, t)| Op::State(o, t)),
            Just(Op::Shutdown),
            Just(Op::Replay),
            (100u16..300).prop_map(Op::Burst),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn seq_stays_contiguous_and_nbirth_bdseq_equals_the_will(
            ops in prop::collection::vec(op(), 1..150),
            primary_host in any::<bool>(),
        ) {
            let mut c = cfg();
            if primary_host {
                c.primary_host_id = Some("scada".into());
                c.server_count = 2;
            }
            let mut s = session_with(c, None);
            let mut now = T0;
            let mut will_bdseq: Option<i64> = None;
            let mut last_seq: Option<u64> = None;
            for op in ops {
                now += 100;
                let actions = match op {
                    Op::Connect => {
                        let mut a = s.begin_connect(now);
                        a.extend(s.connected(now));
                        a
                    }
                    Op::ConnectFail => { s.begin_connect(now); s.connect_failed(); vec![] }
                    Op::Lose => { s.connection_lost(); vec![] }
                    Op::Update(v) => s.update(now, None, vec![Metric::new("Uptime", Value::UInt64(v), now)]).expect("declared"),
                    Op::DeviceUp(p) => s.device_online(now, if p { "press" } else { "oven" }).expect("known"),
                    Op::DeviceDown(p) => s.device_offline(now, if p { "press" } else { "oven" }).expect("known"),
                    Op::Rebirth => s.handle_message(now, "spBv1.0/Plant1/NCMD/gw1", &rebirth_cmd()),
                    Op::Tick(d) => { now += d; vec![] }
                    Op::State(o, t) => s.handle_message(now, "spBv1.0/STATE/scada", &state(o, T0 + t)),
                    Op::Shutdown => s.shutdown(now),
                    Op::Replay => s.replay(now, None, vec![Metric::new("Uptime", Value::UInt64(1), now)]).unwrap_or_default(),
                    Op::Burst(n) => (0..n)
                        .flat_map(|i| {
                            s.update(now, None, vec![Metric::new("Uptime", Value::UInt64(1_000 + u64::from(i)), now)])
                                .expect("declared")
                        })
                        .collect(),
                };
                for a in &actions {
                    match (a, a.publish()) {
                        (EdgeAction::SetWill(w), _) => { will_bdseq = Some(bdseq_of(&decode(w))); last_seq = None; }
                        (_, Some(p)) if p.topic.contains("/NDEATH/") => {
                            prop_assert_eq!(Payload::decode(&p.payload).expect("decodes").seq, None);
                        }
                        (_, Some(p)) => {
                            // DATA omits datatypes; the raw protobuf has the seq.
                            let raw = <crate::sparkplug::pb::Payload as prost::Message>::decode(p.payload.as_slice())
                                .expect("own payloads decode");
                            let seq = raw.seq.expect("every message but NDEATH has a seq");
                            if p.topic.contains("/NBIRTH/") {
                                prop_assert_eq!(seq, 0);
                                let d = Payload::decode_with(&p.payload, &SelfDescribing).expect("births are self-describing");
                                prop_assert_eq!(Some(bdseq_of(&d)), will_bdseq);
                            } else {
                                prop_assert_eq!(Some(seq), last_seq.map(|l| (l + 1) % 256), "topic {}", p.topic);
                            }
                            last_seq = Some(seq);
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
