//! The outbox: DATA from `publish` to proof of delivery, sans-IO.
//!
//! Sparkplug DATA is QoS 0, so the gateway learns that the broker has read it
//! only from a watermark (docs/ARCHITECTURE.md decision 3, [`Watermark`]). The
//! outbox numbers every DATA message sent on the current connection and keeps
//! what it needs to send it again until a marker's PUBACK confirms it:
//! - a **live** message keeps its samples in memory, encoded as the store
//!   encodes them (a few bytes per sample; the gateway writes
//!   nothing to flash while the broker keeps up: no write amplification, no
//!   store memory, no added latency);
//! - a **replayed** message keeps only the id of its record in the durable
//!   store, which deletes the record once confirmed.
//!
//! Invariants:
//! - A record leaves the durable store only through an id returned by
//!   [`Outbox::on_puback`]: every record up to it was sent on this connection
//!   before a marker the broker acknowledged.
//! - On a connection loss every unconfirmed live message comes back from
//!   [`Outbox::connection_lost`] for the store, and the replay cursor restarts
//!   at the head of the store: nothing unconfirmed is forgotten.
//! - Confirmed live samples are retained for `host_window` in their stored
//!   encoding (a few bytes per sample; bounded exactly by `host_window_bytes`,
//!   oldest dropped first); when the Primary Host goes
//!   offline they come back from [`Outbox::host_offline`], because a host that
//!   died may not have processed what the broker delivered to it. Duplicates
//!   are possible and harmless (the uplink's rows are idempotent).
//! - Unconfirmed live samples are bounded by `inflight_bytes`: past it the
//!   oldest are handed to the store at once (they may then arrive twice).
//!
//! What a crash can cost: a SIGKILL or power cut loses the live samples the
//! broker had not read yet (sent in the last round trip). Samples stored
//! while offline are written before they count as stored (a SIGKILL loses
//! none) and synced within `store.flush_interval` (a power cut loses at most
//! that window; see the store's module docs).

use std::collections::VecDeque;

use super::Record;
use crate::mqtt::watermark::Watermark;

/// Bounds of the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxOptions {
    /// How long confirmed live samples are kept for a Primary Host death (ms).
    pub host_window_ms: u64,
    /// Memory bound of those retained samples.
    pub host_window_bytes: usize,
    /// Memory bound of unconfirmed live samples.
    pub inflight_bytes: usize,
    /// A marker is due after this many DATA messages, even within a tick.
    pub marker_every: usize,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            host_window_ms: 60_000,
            host_window_bytes: 8 << 20,
            inflight_bytes: 16 << 20,
            marker_every: 1000,
        }
    }
}

/// Samples of one device (or the node) as a self-describing Sparkplug
/// payload: names and datatypes, no aliases (see `EdgeAction::Data`).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub device: Option<String>,
    pub samples: u64,
    pub payload: Vec<u8>,
    /// The oldest sample's timestamp (ms), if any has one.
    pub oldest_ms: Option<u64>,
}

impl Encoded {
    /// Encodes a record (tests and tools; the session encodes live data itself).
    pub fn of(r: &Record) -> Encoded {
        Encoded {
            device: r.device.clone(),
            samples: r.metrics.len() as u64,
            payload: crate::sparkplug::codec::encode_iter(
                None,
                None,
                r.metrics.iter().map(std::borrow::Cow::Borrowed),
                crate::sparkplug::codec::Datatypes::Include,
            )
            .unwrap_or_default(),
            oldest_ms: r.metrics.iter().filter_map(|m| m.timestamp).min(),
        }
    }

    /// The record back, for tests (`None` if it does not decode); the
    /// store keeps the bytes as they are and never calls this.
    #[cfg(test)]
    pub fn record(&self) -> Option<Record> {
        let p = crate::sparkplug::Payload::decode(&self.payload).ok()?;
        Some(Record {
            device: self.device.clone(),
            metrics: p.metrics,
        })
    }

    pub fn bytes(&self) -> usize {
        self.payload.len() + self.device.as_ref().map_or(0, String::len) + 48
    }
}

#[derive(Debug)]
enum Sent {
    Live { n: u64, data: Encoded },
    Stored { n: u64, id: u64, samples: u64 },
}

impl Sent {
    fn n(&self) -> u64 {
        match self {
            Sent::Live { n, .. } | Sent::Stored { n, .. } => *n,
        }
    }
}

#[derive(Debug)]
struct Retained {
    confirmed_at: u64,
    data: Encoded,
}

/// What a PUBACK confirmed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    /// Delete the store's records through this id.
    pub stored_through: Option<u64>,
    /// Samples (metrics) confirmed, live and replayed.
    pub samples: u64,
}

/// Counts for `/metrics` and `/ready`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Live samples sent but not yet confirmed.
    pub unconfirmed: u64,
    /// Confirmed live samples kept for a Primary Host death.
    pub retained: u64,
    pub retained_bytes: u64,
    /// Timestamp (ms) when the oldest retained sample was confirmed.
    pub retained_since: Option<u64>,
    /// Markers waiting for their PUBACK.
    pub markers_pending: usize,
    /// Replayed samples sent but not yet confirmed (the replay's window).
    pub replay_unconfirmed: u64,
}

/// The outbox of one gateway. See the module docs.
#[derive(Debug)]
pub struct Outbox {
    opts: OutboxOptions,
    watermark: Watermark,
    /// Number of the next DATA message on this connection.
    next: u64,
    sent: VecDeque<Sent>,
    sent_bytes: usize,
    sent_samples: u64,
    /// Replayed samples in `sent`.
    stored_samples: u64,
    /// DATA messages sent since the last marker.
    unmarked: usize,
    retained: VecDeque<Retained>,
    retained_bytes: usize,
    retained_samples: u64,
    /// The last store id sent on this connection.
    cursor: Option<u64>,
}

impl Outbox {
    pub fn new(opts: OutboxOptions) -> Outbox {
        Outbox {
            opts,
            watermark: Watermark::new(),
            next: 0,
            sent: VecDeque::new(),
            sent_bytes: 0,
            sent_samples: 0,
            stored_samples: 0,
            unmarked: 0,
            retained: VecDeque::new(),
            retained_bytes: 0,
            retained_samples: 0,
            cursor: None,
        }
    }

    fn take_n(&mut self) -> u64 {
        let n = self.next;
        self.next += 1;
        self.unmarked += 1;
        n
    }

    /// A live DATA message carrying `data` was handed to `publish`. Returns
    /// the oldest unconfirmed samples the memory bound pushes out, for the
    /// store.
    pub fn sent_live(&mut self, data: Encoded) -> Vec<Encoded> {
        let n = self.take_n();
        self.sent_bytes += data.bytes();
        self.sent_samples += data.samples;
        self.sent.push_back(Sent::Live { n, data });
        let mut spill = Vec::new();
        while self.sent_bytes > self.opts.inflight_bytes {
            let Some(i) = self.sent.iter().position(|s| matches!(s, Sent::Live { .. })) else {
                break;
            };
            if let Some(Sent::Live { data, .. }) = self.sent.remove(i) {
                self.sent_bytes -= data.bytes();
                self.sent_samples -= data.samples;
                spill.push(data);
            }
        }
        spill
    }

    /// The store's record `id` was replayed (or found unusable) on this
    /// connection; it is deleted once a marker confirms it.
    pub fn sent_stored(&mut self, id: u64, samples: u64) {
        let n = self.take_n();
        self.stored_samples += samples;
        self.sent.push_back(Sent::Stored { n, id, samples });
        self.cursor = Some(id);
    }

    /// Where the replay continues in the store (`None`: from its head).
    pub fn replay_cursor(&self) -> Option<u64> {
        self.cursor
    }

    /// A marker is due: DATA was sent since the last one, and either `tick`
    /// or `marker_every` messages.
    pub fn marker_due(&self, tick: bool) -> bool {
        self.unmarked > 0 && (tick || self.unmarked >= self.opts.marker_every)
    }

    /// A marker (QoS 1) was handed to `publish` after everything sent so far.
    pub fn marker_sent(&mut self) {
        if self.next > 0 {
            self.watermark.marker_sent(self.next - 1);
        }
        self.unmarked = 0;
    }

    /// Another QoS 1 publish (NDEATH) was handed to `publish`.
    pub fn other_qos1_sent(&mut self) {
        self.watermark.other_sent();
    }

    /// rumqttc wrote a PUBLISH with `pkid`.
    pub fn on_outgoing_publish(&mut self, pkid: u16) {
        self.watermark.on_outgoing_publish(pkid);
    }

    /// A PUBACK: what it confirmed, at `now` (ms).
    pub fn on_puback(&mut self, pkid: u16, now: u64) -> Confirmed {
        let mut out = Confirmed::default();
        let Some(through) = self.watermark.on_puback(pkid) else {
            return out;
        };
        while self.sent.front().is_some_and(|s| s.n() <= through) {
            match self.sent.pop_front() {
                Some(Sent::Live { data, .. }) => {
                    self.sent_bytes -= data.bytes();
                    self.sent_samples -= data.samples;
                    out.samples += data.samples;
                    self.retain(now, data);
                }
                Some(Sent::Stored { id, samples, .. }) => {
                    self.stored_samples -= samples;
                    out.samples += samples;
                    out.stored_through = Some(out.stored_through.map_or(id, |c: u64| c.max(id)));
                }
                None => break,
            }
        }
        self.expire(now);
        out
    }

    fn retain(&mut self, now: u64, data: Encoded) {
        if self.opts.host_window_ms == 0 || self.opts.host_window_bytes == 0 {
            return;
        }
        self.retained_bytes += data.bytes();
        self.retained_samples += data.samples;
        self.retained.push_back(Retained {
            confirmed_at: now,
            data,
        });
        while self.retained_bytes > self.opts.host_window_bytes {
            self.drop_oldest_retained();
        }
    }

    fn drop_oldest_retained(&mut self) {
        if let Some(r) = self.retained.pop_front() {
            self.retained_bytes -= r.data.bytes();
            self.retained_samples -= r.data.samples;
        }
    }

    /// Forgets retained samples confirmed longer than `host_window` ago.
    pub fn expire(&mut self, now: u64) {
        while self
            .retained
            .front()
            .is_some_and(|r| now.saturating_sub(r.confirmed_at) > self.opts.host_window_ms)
        {
            self.drop_oldest_retained();
        }
    }

    /// A new connection is up (CONNACK): markers of the old one are void.
    pub fn connected(&mut self) {
        self.watermark.on_connack();
    }

    /// The connection is gone: the unconfirmed live records, oldest first,
    /// for the store; the replay starts again at the store's head.
    pub fn connection_lost(&mut self) -> Vec<Encoded> {
        self.watermark.on_connack();
        self.cursor = None;
        self.unmarked = 0;
        self.sent_bytes = 0;
        self.sent_samples = 0;
        self.stored_samples = 0;
        let sent = std::mem::take(&mut self.sent);
        sent.into_iter()
            .filter_map(|s| match s {
                Sent::Live { data, .. } => Some(data),
                Sent::Stored { .. } => None,
            })
            .collect()
    }

    /// The Primary Host went offline at `now`: the samples confirmed within
    /// the window and every unconfirmed one, oldest first, for the store.
    pub fn host_offline(&mut self, now: u64) -> Vec<Encoded> {
        self.expire(now);
        self.retained_bytes = 0;
        self.retained_samples = 0;
        let retained = std::mem::take(&mut self.retained);
        let mut out: Vec<Encoded> = retained.into_iter().map(|r| r.data).collect();
        out.extend(self.connection_lost());
        out
    }

    pub fn stats(&self) -> OutboxStats {
        OutboxStats {
            unconfirmed: self.sent_samples,
            retained: self.retained_samples,
            retained_bytes: self.retained_bytes as u64,
            retained_since: self.retained.front().map(|r| r.confirmed_at),
            markers_pending: self.watermark.pending(),
            replay_unconfirmed: self.stored_samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparkplug::{Metric, Value};

    fn rec(v: i32) -> Record {
        Record {
            device: Some("d".into()),
            metrics: vec![Metric::new("m", Value::Int32(v), v as u64)],
        }
    }

    fn values(rs: &[Encoded]) -> Vec<i32> {
        rs.iter()
            .map(|e| e.record().expect("decodes"))
            .map(|r| match r.metrics[0].value {
                Some(Value::Int32(v)) => v,
                _ => unreachable!(),
            })
            .collect()
    }

    /// Sends a marker and has it acknowledged with packet id `pkid`.
    fn ack(o: &mut Outbox, pkid: u16, now: u64) -> Confirmed {
        o.marker_sent();
        o.on_outgoing_publish(pkid);
        o.on_puback(pkid, now)
    }

    #[test]
    fn live_data_is_kept_until_a_marker_after_it_is_acknowledged() {
        let mut o = Outbox::new(OutboxOptions::default());
        o.sent_live(Encoded::of(&rec(1)));
        o.sent_live(Encoded::of(&rec(2)));
        assert!(o.marker_due(true) && !o.marker_due(false));
        o.marker_sent();
        o.sent_live(Encoded::of(&rec(3))); // after the marker: not confirmed by it
        o.on_outgoing_publish(0);
        o.on_outgoing_publish(0);
        o.on_outgoing_publish(1);
        assert_eq!(o.stats().unconfirmed, 3);
        let c = o.on_puback(1, 10);
        assert_eq!((c.samples, c.stored_through), (2, None));
        assert_eq!((o.stats().unconfirmed, o.stats().retained), (1, 2));
        assert_eq!(
            values(&o.connection_lost()),
            vec![3],
            "only the unconfirmed one comes back"
        );
    }

    #[test]
    fn a_lost_connection_returns_every_unconfirmed_live_record_and_restarts_the_replay() {
        let mut o = Outbox::new(OutboxOptions::default());
        o.sent_stored(7, 1);
        o.sent_live(Encoded::of(&rec(1)));
        o.sent_stored(8, 1);
        o.sent_live(Encoded::of(&rec(2)));
        o.marker_sent(); // never acknowledged
        o.on_outgoing_publish(1);
        assert_eq!(o.replay_cursor(), Some(8));
        assert_eq!(values(&o.connection_lost()), vec![1, 2]);
        assert_eq!(
            o.replay_cursor(),
            None,
            "stored records are replayed again from the head"
        );
        assert_eq!(
            o.on_puback(1, 0),
            Confirmed::default(),
            "a PUBACK of the old connection"
        );
    }

    #[test]
    fn what_comes_back_for_the_store_is_the_bytes_that_were_sent_never_re_encoded() {
        let mut o = Outbox::new(OutboxOptions::default());
        let odd = Encoded {
            device: Some("d".into()),
            samples: 5,
            payload: vec![0xff; 7],
            oldest_ms: Some(3),
        };
        o.sent_live(odd.clone());
        o.sent_live(Encoded::of(&rec(1)));
        assert_eq!(o.connection_lost(), vec![odd, Encoded::of(&rec(1))]);
    }

    #[test]
    fn replayed_records_are_confirmed_through_the_highest_id_before_the_marker() {
        let mut o = Outbox::new(OutboxOptions::default());
        o.sent_stored(3, 1);
        o.sent_live(Encoded::of(&rec(9)));
        o.sent_stored(4, 1);
        assert_eq!(o.stats().replay_unconfirmed, 2, "the replay's window");
        let c = ack(&mut o, 5, 0);
        assert_eq!(
            c,
            Confirmed {
                stored_through: Some(4),
                samples: 3
            },
            "one live sample and two replayed"
        );
        assert_eq!(o.stats().replay_unconfirmed, 0);
        o.sent_stored(5, 1);
        o.connected(); // a new connection before the marker's PUBACK
        o.marker_sent();
        assert_eq!(o.on_puback(6, 0).stored_through, None);
    }

    #[test]
    fn the_host_window_keeps_confirmed_samples_for_a_primary_host_death() {
        let mut o = Outbox::new(OutboxOptions {
            host_window_ms: 1000,
            ..OutboxOptions::default()
        });
        o.sent_live(Encoded::of(&rec(1)));
        ack(&mut o, 1, 0);
        o.sent_live(Encoded::of(&rec(2)));
        ack(&mut o, 2, 900);
        o.sent_live(Encoded::of(&rec(3))); // unconfirmed
        o.expire(1500); // rec 1 was confirmed 1.5 s ago: out of the window
        assert_eq!(o.stats().retained, 1);
        assert_eq!(values(&o.host_offline(1500)), vec![2, 3], "retained, then unconfirmed");
        assert_eq!(o.stats(), OutboxStats::default());
    }

    #[test]
    fn the_host_window_is_bounded_by_bytes_oldest_first() {
        let one = Encoded::of(&rec(0)).bytes();
        let mut o = Outbox::new(OutboxOptions {
            host_window_bytes: one * 2,
            ..OutboxOptions::default()
        });
        for v in 0..5 {
            o.sent_live(Encoded::of(&rec(v)));
        }
        ack(&mut o, 1, 0);
        assert_eq!(values(&o.host_offline(0)), vec![3, 4]);
    }

    #[test]
    fn unconfirmed_samples_past_the_memory_bound_go_to_the_store_oldest_first() {
        let one = Encoded::of(&rec(0)).bytes();
        let mut o = Outbox::new(OutboxOptions {
            inflight_bytes: one * 2,
            ..OutboxOptions::default()
        });
        assert!(o.sent_live(Encoded::of(&rec(1))).is_empty());
        o.sent_stored(0, 1);
        assert!(o.sent_live(Encoded::of(&rec(2))).is_empty());
        assert_eq!(values(&o.sent_live(Encoded::of(&rec(3)))), vec![1]);
        assert_eq!(o.stats().unconfirmed, 2);
        // The marker still confirms the replayed record sent before it.
        assert_eq!(ack(&mut o, 1, 0).stored_through, Some(0));
    }

    #[test]
    fn a_marker_is_due_every_marker_every_messages_even_between_ticks() {
        let mut o = Outbox::new(OutboxOptions {
            marker_every: 2,
            ..OutboxOptions::default()
        });
        assert!(!o.marker_due(true), "nothing sent, no marker");
        o.sent_live(Encoded::of(&rec(1)));
        assert!(!o.marker_due(false));
        o.sent_live(Encoded::of(&rec(2)));
        assert!(o.marker_due(false));
        o.marker_sent();
        assert!(!o.marker_due(true));
    }

    #[test]
    fn a_window_of_zero_retains_nothing() {
        let mut o = Outbox::new(OutboxOptions {
            host_window_ms: 0,
            ..OutboxOptions::default()
        });
        o.sent_live(Encoded::of(&rec(1)));
        ack(&mut o, 1, 0);
        assert!(o.host_offline(0).is_empty());
    }

    mod model {
        //! The outbox and the durable store together against a model of the
        //! network and the broker: nothing the gateway accepted is lost
        //! unless it was in flight to the broker when the process died.
        use super::*;
        use crate::queue::disk::DiskOptions;
        use crate::queue::LazyStore;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        #[derive(Debug, Clone)]
        enum Op {
            Sample,
            Replay,
            Marker,
            Deliver,
            Ack,
            Lose,
            Connect,
            Crash,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => Just(Op::Sample),
                3 => Just(Op::Replay),
                2 => Just(Op::Marker),
                3 => Just(Op::Deliver),
                3 => Just(Op::Ack),
                1 => Just(Op::Lose),
                2 => Just(Op::Connect),
                1 => Just(Op::Crash),
            ]
        }

        enum Msg {
            Data(Vec<i32>),
            Marker(u16),
        }

        fn value_of(r: &Record) -> Vec<i32> {
            r.metrics
                .iter()
                .filter_map(|m| match m.value {
                    Some(Value::Int32(v)) => Some(v),
                    _ => None,
                })
                .collect()
        }

        fn stored(store: &mut LazyStore) -> BTreeSet<i32> {
            store
                .read_after(None, usize::MAX)
                .expect("read")
                .iter()
                .flat_map(|(_, r)| value_of(r))
                .collect()
        }

        struct World {
            store: LazyStore,
            outbox: Outbox,
            connected: bool,
            network: Vec<Msg>,
            acks: Vec<u16>,
            pkid: u16,
            broker: BTreeSet<i32>,
            accepted: BTreeSet<i32>,
            may_be_lost: BTreeSet<i32>,
        }

        impl World {
            fn confirm(&mut self, pkid: u16) {
                let c = self.outbox.on_puback(pkid, 0);
                if let Some(id) = c.stored_through {
                    self.store.confirm_through(id).expect("confirm");
                }
            }

            fn marker(&mut self) {
                self.outbox.marker_sent();
                self.pkid = self.pkid % 60_000 + 1;
                self.outbox.on_outgoing_publish(self.pkid);
                self.network.push(Msg::Marker(self.pkid));
            }

            /// The broker reads in order, up to and including the next marker.
            fn deliver(&mut self) {
                while !self.network.is_empty() {
                    match self.network.remove(0) {
                        Msg::Data(vs) => self.broker.extend(vs),
                        Msg::Marker(p) => {
                            self.acks.push(p);
                            return;
                        }
                    }
                }
            }

            fn replay_one(&mut self) {
                let cursor = self.outbox.replay_cursor();
                if let Some((id, r)) = self.store.read_after(cursor, 1).expect("read").pop() {
                    self.network.push(Msg::Data(value_of(&r)));
                    self.outbox.sent_stored(id, 1);
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]
            #[test]
            fn nothing_accepted_is_lost_but_what_was_in_flight_when_the_process_died(
                ops in prop::collection::vec(op(), 1..80)
            ) {
                let tmp = tempfile::tempdir().expect("tmp");
                let dir = tmp.path().join("queue");
                let opts = DiskOptions::default();
                let no_window = OutboxOptions { host_window_ms: 0, ..OutboxOptions::default() };
                let mut w = World {
                    store: LazyStore::open(dir.clone(), opts).expect("open"),
                    outbox: Outbox::new(no_window),
                    connected: false,
                    network: Vec::new(),
                    acks: Vec::new(),
                    pkid: 0,
                    broker: BTreeSet::new(),
                    accepted: BTreeSet::new(),
                    may_be_lost: BTreeSet::new(),
                };
                let mut next = 0;
                for op in ops {
                    match op {
                        Op::Sample => {
                            next += 1;
                            w.accepted.insert(next);
                            if w.connected {
                                let spill = w.outbox.sent_live(Encoded::of(&rec(next)));
                                prop_assert!(spill.is_empty());
                                w.network.push(Msg::Data(vec![next]));
                            } else {
                                w.store.append_batch(&[rec(next)]).expect("append");
                            }
                        }
                        Op::Replay if w.connected => w.replay_one(),
                        Op::Marker if w.connected => w.marker(),
                        Op::Deliver => w.deliver(),
                        Op::Ack => {
                            if let Some(p) = (!w.acks.is_empty()).then(|| w.acks.remove(0)) {
                                w.confirm(p);
                            }
                        }
                        Op::Lose => {
                            // Unread data and unsent acks die with the connection.
                            w.network.clear();
                            w.acks.clear();
                            let back = w.outbox.connection_lost();
                            w.store.append_encoded(&back).expect("append");
                            w.connected = false;
                        }
                        Op::Connect if !w.connected => {
                            w.outbox.connected();
                            w.connected = true;
                        }
                        Op::Crash => {
                            // The process dies: live data the broker had not
                            // read is the documented window.
                            for m in w.network.drain(..) {
                                if let Msg::Data(vs) = m {
                                    w.may_be_lost.extend(vs);
                                }
                            }
                            w.acks.clear();
                            w.outbox = Outbox::new(no_window);
                            w.connected = false;
                            // Close the old store first (one store per directory).
                            let placeholder = LazyStore::open(tmp.path().join("absent"), opts).expect("placeholder");
                            drop(std::mem::replace(&mut w.store, placeholder));
                            w.store = LazyStore::open(dir.clone(), opts).expect("reopen");
                        }
                        _ => {}
                    }
                    if !w.connected {
                        let kept = stored(&mut w.store);
                        let missing: Vec<i32> = w
                            .accepted
                            .iter()
                            .filter(|v| !w.broker.contains(v) && !kept.contains(v) && !w.may_be_lost.contains(v))
                            .copied()
                            .collect();
                        prop_assert!(missing.is_empty(), "lost while offline: {:?}", missing);
                    }
                }
                // Reconnect and drain: everything reaches the broker.
                if w.connected {
                    let back = w.outbox.connection_lost();
                    w.store.append_encoded(&back).expect("append");
                    w.network.clear();
                    w.acks.clear();
                }
                w.outbox.connected();
                w.connected = true;
                for _ in 0..10_000 {
                    if !w.store.is_open() {
                        break;
                    }
                    w.replay_one();
                    w.marker();
                    while !w.network.is_empty() {
                        w.deliver();
                    }
                    while let Some(p) = (!w.acks.is_empty()).then(|| w.acks.remove(0)) {
                        w.confirm(p);
                    }
                }
                prop_assert!(!w.store.is_open(), "the store drains");
                let missing: Vec<i32> = w
                    .accepted
                    .iter()
                    .filter(|v| !w.broker.contains(v) && !w.may_be_lost.contains(v))
                    .copied()
                    .collect();
                prop_assert!(missing.is_empty(), "never reached the broker: {:?}", missing);
            }
        }
    }
}
