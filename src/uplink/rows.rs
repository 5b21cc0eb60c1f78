//! What the uplink writes, as plain rows: the sans-IO step between
//! [`HostEvent`]s and a database sink.
//!
//! Invariants:
//! - Every received message becomes exactly one [`RawRow`]; every metric of a
//!   birth or DATA with a value becomes one [`FactRow`]; nothing is dropped
//!   here (what the host session could not interpret arrives as
//!   [`QuarantineRow`]).
//! - A fact's identity is (group, node, device, metric, timestamp): a
//!   replayed or duplicated sample maps to the same key, which the sinks use
//!   to write it once (the gateway replays history on purpose).
//! - Values are lossless: scalars go to typed columns, anything else
//!   (arrays, DataSet, Template, bytes) to `v_bytes` as a one-metric
//!   Sparkplug payload, with a readable summary in `v_text`.
//! - Every row is one a database can take: a fact that no database column
//!   could hold exactly (a NUL in a name or a string, a timestamp outside
//!   1970–9999, a name longer than [`MAX_NAME_BYTES`]) becomes a
//!   [`QuarantineRow`] with the reason and the metric as a one-metric
//!   Sparkplug payload, never a row that makes a whole batch fail. Descriptive
//!   text (topics, reasons, audit values, catalog properties) is kept with
//!   NULs spelled `\0`; a node state or audit time outside 1970–9999 falls back
//!   to the time of arrival.

use std::borrow::Cow;
use std::sync::Arc;

use crate::sparkplug::codec::{encode_iter, Datatypes, Metric, Value};
use crate::sparkplug::host::{CommandSeen, DeathCause, HostEvent, Stale};

/// The last millisecond every backend's timestamp column holds
/// (9999-12-31T23:59:59.999Z; SQL Server's `datetime2` ends there).
pub const MAX_TS_MS: i64 = 253_402_300_799_999;

/// The longest group, node, device or metric name written as a key, in
/// bytes: four of them stay under PostgreSQL's b-tree entry limit (2,704
/// bytes), so a long name can never make an index refuse a batch.
pub const MAX_NAME_BYTES: usize = 512;

/// Text a database text column takes: NUL (which neither PostgreSQL nor a
/// bulk load accepts) spelled `\0`. For descriptive text only, never values.
pub fn storable(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\\0"))
    } else {
        Cow::Borrowed(s)
    }
}

pub use crate::sparkplug::pretty::prefix;

fn storable_ts(ms: u64, fallback: u64) -> i64 {
    i64::try_from(ms)
        .ok()
        .filter(|t| *t <= MAX_TS_MS)
        .unwrap_or_else(|| fallback.min(MAX_TS_MS as u64) as i64)
}

/// Why (group, node, device, metric) cannot be a key, or `None` when it can.
fn key_defect(group: &str, node: &str, device: &str, metric: &str) -> Option<String> {
    for (what, name) in [
        ("group", group),
        ("node", node),
        ("device", device),
        ("metric name", metric),
    ] {
        if name.len() > MAX_NAME_BYTES {
            return Some(format!(
                "{what} is {} bytes long, over the {MAX_NAME_BYTES} a key holds",
                name.len()
            ));
        }
        if name.contains('\0') {
            return Some(format!("{what} contains a NUL character (U+0000)"));
        }
    }
    None
}

/// Why a fact cannot be stored exactly, or `None` when it can.
pub fn fact_defect(f: &FactRow) -> Option<String> {
    if let Some(defect) = key_defect(&f.group, &f.node, &f.device, &f.metric) {
        return Some(defect);
    }
    if !(0..=MAX_TS_MS).contains(&f.ts_ms) {
        return Some(format!("timestamp {} ms is outside 1970-01-01..9999-12-31", f.ts_ms));
    }
    if f.v_text.as_deref().is_some_and(|t| t.contains('\0')) {
        return Some("string value contains a NUL character (U+0000), which no text column holds".into());
    }
    None
}

/// One received MQTT message (`sp_event_raw`).
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    pub topic: String,
    pub kind: String,
    pub seq: Option<i16>,
    pub bdseq: Option<i64>,
    pub received_ms: i64,
    pub payload: Vec<u8>,
}

/// One metric value at one time (`sp_metric_fact`). Names are shared: the
/// facts of one message share its group, node and device, and a metric's
/// name is the one its birth declared.
#[derive(Debug, Clone, PartialEq)]
pub struct FactRow {
    pub group: Arc<str>,
    pub node: Arc<str>,
    /// Empty for node metrics.
    pub device: Arc<str>,
    pub metric: Arc<str>,
    pub ts_ms: i64,
    pub datatype: i16,
    pub v_int: Option<i64>,
    pub v_float: Option<f64>,
    pub v_bool: Option<bool>,
    pub v_text: Option<String>,
    pub v_bytes: Option<Vec<u8>>,
    pub quality: i32,
    pub is_historical: bool,
}

impl FactRow {
    /// The value as a number, for rollups (integers and floats only).
    pub fn numeric(&self) -> Option<f64> {
        self.v_float.or(self.v_int.map(|i| i as f64))
    }
}

/// A metric a death made STALE, at the death's timestamp (`sp_stale`): a
/// row of its own, so facts stay insert-only and a sample of the same
/// millisecond never competes with it.
#[derive(Debug, Clone, PartialEq)]
pub struct StaleRow {
    pub group: Arc<str>,
    pub node: Arc<str>,
    /// Empty for node metrics.
    pub device: Arc<str>,
    pub metric: Arc<str>,
    pub ts_ms: i64,
    /// The datatype its birth declared.
    pub datatype: i16,
}

/// A birth or death of a node (`sp_node_state`) or of a device
/// (`sp_device_state`), each also a row of `sp_state_history`.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRow {
    pub group: String,
    pub node: String,
    /// Empty for the node itself.
    pub device: String,
    pub online: bool,
    /// The node's bdSeq (a device's birth or death carries none: the sinks
    /// take the node's current one).
    pub bdseq: Option<i64>,
    pub at_ms: i64,
    /// Why it went offline (`NDEATH`, `DDEATH` or `host disconnected`),
    /// empty on a birth.
    pub cause: String,
}

/// A metric declared in a birth (`sp_metric_catalog`).
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogRow {
    pub group: String,
    pub node: String,
    pub device: String,
    pub metric: String,
    pub datatype: i16,
    pub properties: String,
    pub seen_ms: i64,
}

/// A payload that could not be used (`sp_quarantine`).
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineRow {
    pub topic: String,
    pub received_ms: i64,
    pub payload: Vec<u8>,
    pub reason: String,
}

/// One metric of a command seen on the broker (`sp_command_audit`).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRow {
    /// When it was requested (the command's timestamp for one seen on the broker).
    pub at_ms: i64,
    pub group: String,
    pub node: String,
    /// Empty for an NCMD.
    pub device: String,
    pub metric: String,
    pub value: Option<String>,
    /// Whether the target's birth allows it (online, declared, right type).
    pub accepted: bool,
    pub reason: String,
    /// This host's id for its own commands (rebirth requests), the API
    /// identity for a command sent through it; other publishers are not
    /// identified by MQTT.
    pub requested_by: String,
    /// A command of the API: its id (the `writeRequest` the edge echoes).
    /// A row with an id replaces the earlier row of the same id (the one
    /// written when it was sent).
    pub request_id: Option<String>,
    /// `refused`, `sent`, `confirmed`, `failed` or `timeout`.
    pub outcome: &'static str,
    pub sent_ms: Option<i64>,
    /// The value the edge read back, and when.
    pub confirmed_value: Option<String>,
    pub confirmed_ms: Option<i64>,
    /// Made by this instance's command API (not seen on the broker): with
    /// several instances ([`super::scale`]) it is this instance's to write,
    /// whichever holds its group.
    pub from_api: bool,
}

impl CommandRow {
    /// A row for a command of `requested_by` to (group, node, device,
    /// metric) of `value`, requested at `at_ms`: `sent` and accepted until
    /// the caller says otherwise; every text made storable.
    pub fn new(at_ms: i64, target: [&str; 4], value: Option<&str>, requested_by: &str) -> CommandRow {
        let [group, node, device, metric] = target.map(|t| storable(t).into_owned());
        CommandRow {
            at_ms,
            group,
            node,
            device,
            metric,
            value: value.map(|v| storable(v).into_owned()),
            accepted: true,
            reason: String::new(),
            requested_by: storable(requested_by).into_owned(),
            request_id: None,
            outcome: "sent",
            sent_ms: None,
            confirmed_value: None,
            confirmed_ms: None,
            from_api: false,
        }
    }
}

/// What decides where a row of a batch goes.
#[derive(Debug, Clone, Copy)]
pub enum RowKey<'a> {
    /// A row of an edge node.
    Node(&'a str, &'a str),
    /// A row known by its topic only (raw, quarantine).
    Topic(&'a str),
    /// An audit row of this instance's command API.
    Api(&'a str, &'a str),
}

/// The lease of the rows of no group (STATE messages, unparsable topics)
/// under scale-out: the Primary Host identity's. "STATE" cannot be a group
/// id: `spBv1.0/STATE/…` is the host topic.
pub const STATE_LEASE: &str = "STATE";

impl<'a> RowKey<'a> {
    /// The scale-out lease this row belongs to: its group, or [`STATE_LEASE`].
    pub fn lease(self) -> &'a str {
        self.node().map_or(STATE_LEASE, |(g, _)| g)
    }

    /// Its group and node; `None` for a topic of no edge node (STATE, garbage).
    pub fn node(self) -> Option<(&'a str, &'a str)> {
        match self {
            RowKey::Node(g, n) | RowKey::Api(g, n) => Some((g, n)),
            RowKey::Topic(t) => {
                let mut parts = t.split('/');
                match (parts.next(), parts.next(), parts.next(), parts.next()) {
                    (Some("spBv1.0"), Some(g), Some(_), Some(n)) if g != "STATE" => Some((g, n)),
                    _ => None,
                }
            }
        }
    }
}

/// A sample of a metric an OEE machine maps: the figures around `ts_ms`
/// are to be computed again (`oee_pending`).
#[derive(Debug, Clone, PartialEq)]
pub struct OeeMark {
    pub group: Arc<str>,
    pub node: Arc<str>,
    pub machine: Arc<str>,
    pub ts_ms: i64,
}

/// Rows to write together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub raw: Vec<RawRow>,
    pub facts: Vec<FactRow>,
    pub stale: Vec<StaleRow>,
    pub states: Vec<StateRow>,
    pub catalog: Vec<CatalogRow>,
    pub quarantine: Vec<QuarantineRow>,
    pub commands: Vec<CommandRow>,
    pub oee: Vec<OeeMark>,
}

impl Batch {
    /// Rows of every kind.
    pub fn len(&self) -> usize {
        self.raw.len()
            + self.facts.len()
            + self.stale.len()
            + self.states.len()
            + self.catalog.len()
            + self.quarantine.len()
            + self.commands.len()
            + self.oee.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the rows hold in memory, roughly: their own size and the bytes
    /// each owns (names shared between facts are not counted per fact).
    /// Additive: the bytes of an appended batch add to this one's.
    pub fn approx_bytes(&self) -> u64 {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let raw: usize = self.raw.iter().map(|r| 80 + r.topic.len() + r.payload.len()).sum();
        let facts: usize = self
            .facts
            .iter()
            .map(|f| 128 + opt(&f.v_text) + f.v_bytes.as_ref().map_or(0, Vec::len))
            .sum();
        let states: usize = self
            .states
            .iter()
            .map(|s| 96 + s.group.len() + s.node.len() + s.device.len())
            .sum();
        let catalog: usize = self
            .catalog
            .iter()
            .map(|c| 128 + c.group.len() + c.node.len() + c.device.len() + c.metric.len() + c.properties.len())
            .sum();
        let quarantine: usize = self
            .quarantine
            .iter()
            .map(|q| 80 + q.topic.len() + q.payload.len() + q.reason.len())
            .sum();
        let commands: usize = self
            .commands
            .iter()
            .map(|c| {
                160 + c.group.len() + c.node.len() + c.device.len() + c.metric.len() + opt(&c.value) + c.reason.len()
            })
            .sum();
        let oee = self.oee.len() * 48;
        let stale = self.stale.len() * 64;
        (raw + facts + stale + states + catalog + quarantine + commands + oee) as u64
    }

    pub fn append(&mut self, other: &mut Batch) {
        self.raw.append(&mut other.raw);
        self.facts.append(&mut other.facts);
        self.stale.append(&mut other.stale);
        self.states.append(&mut other.states);
        self.catalog.append(&mut other.catalog);
        self.quarantine.append(&mut other.quarantine);
        self.commands.append(&mut other.commands);
        self.oee.append(&mut other.oee);
    }

    /// Splits the rows among `n` writers by (group, node), so that one node's
    /// rows always go to the same writer, in order (rows without a node, e.g.
    /// STATE messages, go to the first).
    pub fn split(self, n: usize) -> Vec<Batch> {
        let n = n.max(1);
        if n == 1 {
            return vec![self];
        }
        self.split_by(n, |k| match k.node() {
            Some((group, node)) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (group, node).hash(&mut h);
                (h.finish() % n as u64) as usize
            }
            None => 0,
        })
    }

    /// Splits the rows into `n` batches, each row to the one `slot` names
    /// (each kind in order).
    pub fn split_by(self, n: usize, mut slot: impl FnMut(RowKey<'_>) -> usize) -> Vec<Batch> {
        let mut out: Vec<Batch> = (0..n.max(1)).map(|_| Batch::default()).collect();
        let last = out.len() - 1;
        let mut to = |k: RowKey<'_>| slot(k).min(last);
        for r in self.raw {
            let i = to(RowKey::Topic(&r.topic));
            out[i].raw.push(r);
        }
        for f in self.facts {
            let i = to(RowKey::Node(&f.group, &f.node));
            out[i].facts.push(f);
        }
        for m in self.stale {
            let i = to(RowKey::Node(&m.group, &m.node));
            out[i].stale.push(m);
        }
        for st in self.states {
            let i = to(RowKey::Node(&st.group, &st.node));
            out[i].states.push(st);
        }
        for c in self.catalog {
            let i = to(RowKey::Node(&c.group, &c.node));
            out[i].catalog.push(c);
        }
        for q in self.quarantine {
            let i = to(RowKey::Topic(&q.topic));
            out[i].quarantine.push(q);
        }
        for c in self.commands {
            let i = to(if c.from_api {
                RowKey::Api(&c.group, &c.node)
            } else {
                RowKey::Node(&c.group, &c.node)
            });
            out[i].commands.push(c);
        }
        for m in self.oee {
            let i = to(RowKey::Node(&m.group, &m.node));
            out[i].oee.push(m);
        }
        out
    }

    /// The leases of [`super::scale`] its rows belong to (a command of this
    /// instance's API belongs to none: it is always this instance's).
    pub fn leases(&self) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let mut add = |k: RowKey<'_>| {
            if !matches!(k, RowKey::Api(..)) {
                let lease = k.lease();
                if !out.contains(lease) {
                    out.insert(lease.to_string());
                }
            }
        };
        self.raw.iter().for_each(|r| add(RowKey::Topic(&r.topic)));
        self.facts.iter().for_each(|f| add(RowKey::Node(&f.group, &f.node)));
        self.stale.iter().for_each(|m| add(RowKey::Node(&m.group, &m.node)));
        self.states.iter().for_each(|s| add(RowKey::Node(&s.group, &s.node)));
        self.catalog.iter().for_each(|c| add(RowKey::Node(&c.group, &c.node)));
        self.quarantine.iter().for_each(|q| add(RowKey::Topic(&q.topic)));
        self.commands
            .iter()
            .filter(|c| !c.from_api)
            .for_each(|c| add(RowKey::Node(&c.group, &c.node)));
        self.oee.iter().for_each(|m| add(RowKey::Node(&m.group, &m.node)));
        out
    }

    /// Splits off the rows of `lease` (this instance's API commands stay).
    pub fn take_lease(self, lease: &str) -> (Batch, Batch) {
        let mut parts = self.split_by(2, |k| match k {
            RowKey::Api(..) => 0,
            k => usize::from(k.lease() == lease),
        });
        let taken = parts.pop().unwrap_or_default();
        (parts.pop().unwrap_or_default(), taken)
    }

    /// A received message, before the host session looks at it.
    pub fn add_raw(&mut self, topic: &str, payload: &[u8], received_ms: u64) {
        let kind = topic.split('/').nth(2).unwrap_or("").to_string();
        let kind = if topic.starts_with("spBv1.0/STATE/") {
            "STATE".to_string()
        } else {
            kind
        };
        let (seq, bdseq) = header(payload);
        self.raw.push(RawRow {
            topic: storable(topic).into_owned(),
            kind: storable(&kind).into_owned(),
            seq,
            bdseq,
            received_ms: received_ms as i64,
            payload: payload.to_vec(),
        });
    }

    /// The audit rows of a command seen on the broker or sent by this host.
    pub fn add_command(&mut self, c: &CommandSeen, received_ms: u64, requested_by: &str) {
        for w in &c.writes {
            let target = [
                c.group.as_str(),
                c.node.as_str(),
                c.device.as_deref().unwrap_or_default(),
                w.metric.as_str(),
            ];
            let at = storable_ts(c.timestamp.unwrap_or(received_ms), received_ms);
            let mut row = CommandRow::new(at, target, w.value.as_deref(), requested_by);
            row.accepted = w.verdict.is_ok();
            row.reason = match &w.verdict {
                Ok(()) => "matches the birth".to_string(),
                Err(why) => storable(why).into_owned(),
            };
            self.commands.push(row);
        }
    }

    /// The rows an event of the host session stands for.
    pub fn add_event(&mut self, ev: &HostEvent, received_ms: u64) {
        match ev {
            HostEvent::NodeBirth {
                group,
                node,
                bdseq,
                timestamp,
                metrics,
            } => {
                let at = timestamp.unwrap_or(received_ms);
                self.state(
                    group,
                    node,
                    "",
                    true,
                    Some(*bdseq as i64),
                    storable_ts(at, received_ms),
                    "",
                );
                self.birth(group, node, "", metrics, at, received_ms);
            }
            HostEvent::DeviceBirth {
                group,
                node,
                device,
                timestamp,
                metrics,
            } => {
                let at = timestamp.unwrap_or(received_ms);
                self.state(group, node, device, true, None, storable_ts(at, received_ms), "");
                self.birth(group, node, device, metrics, at, received_ms);
            }
            HostEvent::Data {
                group,
                node,
                device,
                timestamp,
                metrics,
                names,
                ..
            } => {
                let at = timestamp.unwrap_or(received_ms);
                let kind = if device.is_some() { "DDATA" } else { "NDATA" };
                let scope = Scope::new(kind, group, node, device.as_deref().unwrap_or(""));
                for (m, name) in metrics.iter().zip(names) {
                    self.fact(&scope, m, name.clone(), at, received_ms);
                }
            }
            HostEvent::NodeDeath {
                group,
                node,
                cause,
                at,
                stale,
            } => {
                let (bdseq, cause) = match cause {
                    DeathCause::NDeath { bdseq } => (Some(*bdseq as i64), "NDEATH"),
                    DeathCause::HostDisconnected => (None, "host disconnected"),
                };
                let at_ms = storable_ts(*at, received_ms);
                // The sinks take the node's devices offline with it.
                self.state(group, node, "", false, bdseq, at_ms, cause);
                self.stale(group, node, stale, at_ms);
            }
            HostEvent::DeviceDeath {
                group,
                node,
                device,
                at,
                stale,
            } => {
                let at_ms = storable_ts(*at, received_ms);
                self.state(group, node, device, false, None, at_ms, "DDEATH");
                self.stale(group, node, stale, at_ms);
            }
            HostEvent::Quarantine { topic, payload, reason } => self.quarantine.push(QuarantineRow {
                topic: storable(topic).into_owned(),
                received_ms: storable_ts(received_ms, 0),
                payload: payload.clone(),
                reason: storable(reason).into_owned(),
            }),
            HostEvent::Subscribe(_)
            | HostEvent::Publish(_)
            | HostEvent::Command { .. }
            | HostEvent::Disconnect
            | HostEvent::DeathIgnored { .. }
            | HostEvent::SequenceError { .. }
            | HostEvent::RebirthRequested { .. } => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn state(
        &mut self,
        group: &str,
        node: &str,
        device: &str,
        online: bool,
        bdseq: Option<i64>,
        at_ms: i64,
        cause: &str,
    ) {
        self.states.push(StateRow {
            group: storable(group).into_owned(),
            node: storable(node).into_owned(),
            device: storable(device).into_owned(),
            online,
            bdseq,
            at_ms,
            cause: cause.to_string(),
        });
    }

    /// A STALE row at the death's time for every metric the death made
    /// STALE: "last value" queries then see STALE.
    fn stale(&mut self, group: &str, node: &str, stale: &[Stale], at_ms: i64) {
        let (group, node): (Arc<str>, Arc<str>) = (Arc::from(group), Arc::from(node));
        let mut device: Arc<str> = Arc::from("");
        for s in stale {
            let d = s.device.as_deref().unwrap_or("");
            if *device != *d {
                device = Arc::from(d);
            }
            // A name no key can hold had its birth's fact quarantined; its
            // STALE mark goes with it.
            if key_defect(&group, &node, d, &s.metric).is_some() {
                continue;
            }
            self.stale.push(StaleRow {
                group: group.clone(),
                node: node.clone(),
                device: device.clone(),
                metric: Arc::from(s.metric.as_str()),
                ts_ms: at_ms,
                datatype: s.datatype as i16,
            });
        }
    }

    fn birth(&mut self, group: &str, node: &str, device: &str, metrics: &[Metric], at: u64, received_ms: u64) {
        let kind = if device.is_empty() { "NBIRTH" } else { "DBIRTH" };
        let scope = Scope::new(kind, group, node, device);
        for m in metrics {
            let Some(name) = &m.name else { continue };
            if !self.fact(&scope, m, Arc::from(name.as_str()), at, received_ms) {
                continue; // quarantined: not in the catalog either
            }
            self.catalog.push(CatalogRow {
                group: group.to_string(),
                node: node.to_string(),
                device: device.to_string(),
                metric: name.clone(),
                datatype: m.datatype as i16,
                properties: m
                    .properties
                    .as_ref()
                    .map(|p| {
                        let text = p
                            .entries
                            .iter()
                            .map(|(k, v)| format!("{k}={}", v.value.as_ref().map_or("null".into(), |x| x.to_string())))
                            .collect::<Vec<_>>()
                            .join("; ");
                        storable(&text).into_owned()
                    })
                    .unwrap_or_default(),
                seen_ms: storable_ts(at, received_ms),
            });
        }
    }

    /// Adds the metric's fact, or its quarantine row when no database could
    /// store it exactly; true for a fact.
    fn fact(&mut self, scope: &Scope, m: &Metric, name: Arc<str>, at: u64, received_ms: u64) -> bool {
        let mut f = FactRow {
            group: scope.group.clone(),
            node: scope.node.clone(),
            device: scope.device.clone(),
            metric: name,
            ts_ms: i64::try_from(m.timestamp.unwrap_or(at)).unwrap_or(i64::MAX),
            datatype: m.datatype as i16,
            v_int: None,
            v_float: None,
            v_bool: None,
            v_text: None,
            v_bytes: None,
            quality: m.quality().code(),
            is_historical: m.is_historical,
        };
        match &m.value {
            None => {}
            Some(v) => match v {
                Value::Int8(x) => f.v_int = Some((*x).into()),
                Value::Int16(x) => f.v_int = Some((*x).into()),
                Value::Int32(x) => f.v_int = Some((*x).into()),
                Value::Int64(x) => f.v_int = Some(*x),
                Value::UInt8(x) => f.v_int = Some((*x).into()),
                Value::UInt16(x) => f.v_int = Some((*x).into()),
                Value::UInt32(x) => f.v_int = Some((*x).into()),
                Value::UInt64(x) | Value::DateTime(x) => match i64::try_from(*x) {
                    Ok(i) => f.v_int = Some(i),
                    // Past i64: exact as text, approximate as a number.
                    Err(_) => {
                        f.v_text = Some(x.to_string());
                        f.v_float = Some(*x as f64);
                    }
                },
                Value::Float(x) => f.v_float = Some((*x).into()),
                Value::Double(x) => f.v_float = Some(*x),
                Value::Boolean(x) => f.v_bool = Some(*x),
                Value::String(s) | Value::Text(s) | Value::Uuid(s) => f.v_text = Some(s.clone()),
                other => {
                    f.v_text = Some(other.to_string());
                    f.v_bytes = encode_iter(
                        None,
                        None,
                        std::iter::once(std::borrow::Cow::Borrowed(m)),
                        Datatypes::Include,
                    )
                    .ok();
                }
            },
        }
        if let Some(defect) = fact_defect(&f) {
            let (kind, group, node) = (scope.kind, &scope.group, &scope.node);
            let topic = match &*scope.device {
                "" => format!("spBv1.0/{group}/{kind}/{node}"),
                d => format!("spBv1.0/{group}/{kind}/{node}/{d}"),
            };
            let name = prefix(&f.metric, 120);
            self.quarantine.push(QuarantineRow {
                topic: storable(prefix(&topic, 4 * MAX_NAME_BYTES)).into_owned(),
                received_ms: storable_ts(received_ms, 0),
                payload: encode_iter(None, None, std::iter::once(Cow::Borrowed(m)), Datatypes::Include)
                    .unwrap_or_default(),
                reason: storable(&format!("metric '{name}': {defect}")).into_owned(),
            });
            return false;
        }
        // A null value (e.g. a metric declared without one) is still a fact.
        self.facts.push(f);
        true
    }
}

/// The names one message's facts share.
struct Scope {
    kind: &'static str,
    group: Arc<str>,
    node: Arc<str>,
    device: Arc<str>,
}

impl Scope {
    fn new(kind: &'static str, group: &str, node: &str, device: &str) -> Scope {
        Scope {
            kind,
            group: Arc::from(group),
            node: Arc::from(node),
            device: Arc::from(device),
        }
    }
}

/// seq and bdSeq of a Sparkplug payload, read leniently (for the raw log)
/// off the wire: a message of many metrics costs no decoding here.
fn header(payload: &[u8]) -> (Option<i16>, Option<i64>) {
    match crate::sparkplug::wire::Envelope::read(payload) {
        Some(e) => (e.seq.map(|s| s as i16), e.bdseq.map(|b| b as i64)),
        None => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(metrics: Vec<Metric>) -> HostEvent {
        HostEvent::data("G", "N", Some("D"), 1, Some(5), metrics)
    }

    #[test]
    fn every_data_metric_becomes_a_fact_keyed_by_its_own_timestamp() {
        let mut b = Batch::default();
        let mut late = Metric::new("T", Value::Double(1.5), 3);
        late.is_historical = true;
        let mut untimed = Metric::new("C", Value::UInt64(u64::MAX), 0);
        untimed.timestamp = None;
        b.add_event(&data(vec![late, untimed]), 99);
        assert_eq!(b.facts.len(), 2);
        let (t, c) = (&b.facts[0], &b.facts[1]);
        assert_eq!((t.ts_ms, t.v_float, t.is_historical), (3, Some(1.5), true));
        assert_eq!(c.ts_ms, 5, "no metric timestamp: the payload's");
        assert_eq!(
            c.v_text.as_deref(),
            Some("18446744073709551615"),
            "beyond i64 kept exactly"
        );
        assert_eq!((&*t.device, t.quality), ("D", 192));
    }

    #[test]
    fn a_device_death_is_a_state_row_and_a_stale_row_per_metric_it_made_stale() {
        let mut b = Batch::default();
        let stale = |metric: &str, datatype| Stale {
            device: Some("D".into()),
            metric: metric.into(),
            datatype,
        };
        b.add_event(
            &HostEvent::DeviceDeath {
                group: "G".into(),
                node: "N".into(),
                device: "D".into(),
                at: 77,
                stale: vec![
                    stale("Temp", crate::sparkplug::DataType::Double),
                    stale("Run", crate::sparkplug::DataType::Boolean),
                ],
            },
            99,
        );
        assert_eq!(b.states.len(), 1);
        let s = &b.states[0];
        assert_eq!(
            (&*s.device, s.online, s.at_ms, &*s.cause, s.bdseq),
            ("D", false, 77, "DDEATH", None)
        );
        assert!(b.facts.is_empty(), "facts are samples only");
        assert_eq!(b.stale.len(), 2);
        for m in &b.stale {
            assert_eq!((&*m.group, &*m.device, m.ts_ms), ("G", "D", 77));
        }
        assert_eq!(b.stale[1].datatype, crate::sparkplug::DataType::Boolean as i16);
        assert_eq!(b.clone().split(3).iter().map(|p| p.stale.len()).sum::<usize>(), 2);
    }

    #[test]
    fn arrays_are_kept_losslessly_as_a_sparkplug_payload() {
        let mut b = Batch::default();
        b.add_event(&data(vec![Metric::new("A", Value::Int32Array(vec![1, 2, 3]), 7)]), 9);
        let f = &b.facts[0];
        let back = crate::sparkplug::Payload::decode(f.v_bytes.as_ref().expect("bytes")).expect("decodes");
        assert_eq!(back.metrics[0].value, Some(Value::Int32Array(vec![1, 2, 3])));
        assert_eq!(f.v_text.as_deref(), Some("[1, 2, 3]"));
    }

    #[test]
    fn births_fill_the_catalog_and_the_node_state_and_count_as_facts() {
        let mut b = Batch::default();
        b.add_event(
            &HostEvent::NodeBirth {
                group: "G".into(),
                node: "N".into(),
                bdseq: 4,
                timestamp: Some(10),
                metrics: vec![Metric::new("Up", Value::Boolean(true), 10)],
            },
            11,
        );
        assert_eq!(b.states[0].bdseq, Some(4));
        assert!(b.states[0].online);
        assert_eq!(b.catalog[0].metric, "Up");
        assert_eq!(b.facts[0].v_bool, Some(true));
    }

    #[test]
    fn a_split_keeps_every_row_and_each_node_on_one_writer() {
        let mut b = Batch::default();
        for node in ["a", "b", "c", "d"] {
            b.add_raw(&format!("spBv1.0/G/NDATA/{node}"), b"x", 1);
            b.add_event(
                &HostEvent::data(
                    "G",
                    node,
                    None,
                    0,
                    Some(1),
                    vec![
                        Metric::new("m", Value::Int32(1), 1),
                        Metric::new("n", Value::Int32(2), 1),
                    ],
                ),
                1,
            );
        }
        b.add_raw("spBv1.0/STATE/scada", b"{}", 1);
        let total = b.len();
        let parts = b.split(3);
        assert_eq!(parts.iter().map(Batch::len).sum::<usize>(), total);
        for p in &parts {
            for f in &p.facts {
                assert!(
                    p.raw.iter().any(|r| r.topic.ends_with(&format!("/{}", f.node))),
                    "node {} split",
                    f.node
                );
            }
        }
        assert!(parts[0].raw.iter().any(|r| r.kind == "STATE"));
    }

    #[test]
    fn the_raw_log_reads_seq_and_bdseq_leniently() {
        let mut b = Batch::default();
        let p = crate::sparkplug::Payload {
            timestamp: Some(1),
            seq: Some(0),
            metrics: vec![Metric::new("bdSeq", Value::Int64(7), 1)],
            ..Default::default()
        }
        .encode()
        .expect("encodes");
        b.add_raw("spBv1.0/G/NBIRTH/N", &p, 2);
        b.add_raw("spBv1.0/G/DDATA/N/D", b"garbage", 3);
        assert_eq!(
            (b.raw[0].kind.as_str(), b.raw[0].seq, b.raw[0].bdseq),
            ("NBIRTH", Some(0), Some(7))
        );
        assert_eq!((b.raw[1].kind.as_str(), b.raw[1].seq), ("DDATA", None));
    }

    #[test]
    fn a_fact_no_database_could_hold_is_quarantined_with_its_reason_and_the_rest_kept() {
        let mut b = Batch::default();
        let far = Metric::new("Far", Value::Double(1.0), 9_300_000_000_000_000);
        let nul = Metric::new("Text", Value::String("a\0b".into()), 3);
        let long = Metric::new("x".repeat(MAX_NAME_BYTES + 1), Value::Int32(1), 3);
        let ok = Metric::new("Ok", Value::Int32(7), 3);
        b.add_event(&data(vec![far, nul, long, ok]), 99);
        assert_eq!(b.facts.len(), 1, "only the good metric is a fact");
        assert_eq!(&*b.facts[0].metric, "Ok");
        assert_eq!(b.quarantine.len(), 3);
        let reasons: Vec<&str> = b.quarantine.iter().map(|q| q.reason.as_str()).collect();
        assert!(reasons[0].contains("outside 1970-01-01..9999-12-31"), "{reasons:?}");
        assert!(reasons[1].contains("NUL"), "{reasons:?}");
        assert!(reasons[2].contains("over the 512 a key holds"), "{reasons:?}");
        assert!(b.quarantine.iter().all(|q| q.topic == "spBv1.0/G/DDATA/N/D"));
        // The quarantined metric is kept whole, as a Sparkplug payload.
        let back = crate::sparkplug::Payload::decode(&b.quarantine[1].payload).expect("decodes");
        assert_eq!(back.metrics[0].value, Some(Value::String("a\0b".into())));
        for r in b
            .quarantine
            .iter()
            .map(|q| q.reason.as_str())
            .chain([&*b.facts[0].metric])
        {
            assert!(!r.contains('\0'));
        }
    }

    #[test]
    fn a_birth_metric_that_is_quarantined_stays_out_of_the_catalog_and_a_wild_birth_time_falls_back_to_arrival() {
        let mut b = Batch::default();
        b.add_event(
            &HostEvent::NodeBirth {
                group: "G".into(),
                node: "N".into(),
                bdseq: 0,
                timestamp: Some(u64::MAX),
                metrics: vec![
                    Metric::new("Bad\0", Value::Boolean(true), 10),
                    Metric::new("Good", Value::Boolean(true), 10),
                ],
            },
            11,
        );
        assert_eq!(b.states[0].at_ms, 11, "state time out of range: arrival");
        assert_eq!(
            b.catalog.iter().map(|c| c.metric.as_str()).collect::<Vec<_>>(),
            ["Good"]
        );
        assert_eq!(b.quarantine.len(), 1);
        assert_eq!(b.quarantine[0].topic, "spBv1.0/G/NBIRTH/N");
    }

    #[test]
    fn descriptive_text_spells_nul_so_the_raw_log_and_the_audit_always_store() {
        let mut b = Batch::default();
        b.add_raw("spBv1.0/G\0/NDATA/N", b"x", 1);
        assert_eq!(b.raw[0].topic, "spBv1.0/G\\0/NDATA/N");
        let seen = CommandSeen {
            group: "G".into(),
            node: "N".into(),
            device: None,
            timestamp: Some(9_300_000_000_000_000),
            writes: vec![crate::sparkplug::host::CommandWrite {
                metric: "M\0".into(),
                value: Some("v\0".into()),
                verdict: Err("no\0".into()),
            }],
        };
        b.add_command(&seen, 5, "me");
        let c = &b.commands[0];
        assert_eq!(
            (c.at_ms, c.metric.as_str(), c.value.as_deref(), c.reason.as_str()),
            (5, "M\\0", Some("v\\0"), "no\\0")
        );
    }
}
