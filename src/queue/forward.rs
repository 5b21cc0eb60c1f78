//! Store-and-forward decisions, sans-IO: what to keep, what to confirm,
//! what to replay.
//!
//! The gateway's runtime tells the [`Forwarder`] what became of each DATA
//! message, which samples the session could not publish, each PUBACK, the
//! connection's and the Primary Host's transitions, the store's replies and
//! the time; the forwarder answers with [`StoreOp`]s for the store (run in
//! order on the store's own thread, see [`super::thread`]), with records to
//! replay and with when a watermark marker is due. It never touches a
//! socket, a file or a clock, so every rule below is a unit test here.
//!
//! Invariants:
//! - Samples reach the store in the order they were taken, except that
//!   samples pulled back from the broker (unconfirmed at a connection loss,
//!   or confirmed within the host window when the Primary Host goes
//!   offline) go ahead of the pending group: they are older. They are
//!   handed to the store at once.
//! - A record leaves the store only through a [`StoreOp::ConfirmThrough`]
//!   for an id that a marker's PUBACK confirmed (see [`Outbox`]).
//! - A replay read in flight when the replay restarts (connection lost,
//!   host offline) is discarded when it arrives: its records are read again.
//! - At most `replay_window` replayed samples are unconfirmed at a time, at
//!   most `replay_rate` a second when one is set.
//! - A sample counts as stored once the store says it is written; each
//!   sample that cannot be kept is counted as dropped, with a [`Notice`].
//! - Bytes are never decoded between the outbox and the store: they are
//!   written as they were sent.

use std::collections::VecDeque;

use super::disk::{DiskOptions, QueueError, QueueStats};
use super::outbox::{Encoded, Outbox, OutboxOptions};
use super::{Dropped, Record};

pub use crate::mqtt::link::Sent;

/// What the forwarder needs from `[store]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwarderOptions {
    pub outbox: OutboxOptions,
    /// Replayed samples per second, 0 for as fast as the broker confirms.
    pub replay_rate: u32,
    /// Replayed samples the broker may have unconfirmed at a time.
    pub replay_window: u64,
    /// Samples read from the store at a time during a replay.
    pub replay_batch: u64,
    /// A group commit is due once this many records wait, idle or not.
    pub flush_records: usize,
}

impl Default for ForwarderOptions {
    fn default() -> Self {
        ForwarderOptions {
            outbox: OutboxOptions::default(),
            replay_rate: 0,
            replay_window: 100_000,
            replay_batch: 8_192,
            flush_records: 10_000,
        }
    }
}

/// One operation for the store, executed in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// One group commit.
    Append(Vec<Encoded>),
    /// Delete every record up to and including this id.
    ConfirmThrough(u64),
    /// Up to `max_records` records after `cursor`, at most `max_samples`
    /// samples (one record at least), for the replay numbered `epoch`.
    Read {
        epoch: u64,
        cursor: Option<u64>,
        max_records: usize,
        max_samples: u64,
    },
    /// Sync if due; try a new store if a failed one has waited long enough.
    Tick,
    /// Sync now and persist the head (shutdown).
    Flush,
    /// New options (a reload).
    SetOptions(DiskOptions),
}

/// What the store did with one [`StoreOp`].
#[derive(Debug, Clone, PartialEq)]
pub enum StoreReply {
    Appended { samples: u64, dropped: Dropped },
    AppendFailed { samples: u64, error: String },
    Confirmed,
    ConfirmFailed(String),
    Batch { epoch: u64, records: Vec<(u64, Record)> },
    ReadFailed { epoch: u64, error: String },
    Ticked,
    SyncFailed(String),
    Flushed(Result<(), String>),
    OptionsSet,
}

/// The store's state after an operation, for the gauges and the replay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreSnapshot {
    pub stats: QueueStats,
    pub unsynced_samples: u64,
    pub file_bytes: u64,
    /// The bound in force (`max_bytes` unless the disk is short).
    pub limit: u64,
    pub max_bytes: u64,
    /// Why the store does not take writes now, if it does not.
    pub failure: Option<String>,
    pub oldest_ms: Option<u64>,
}

impl StoreSnapshot {
    /// Whether the store's tick has work: a sync, the manifest of an open
    /// store, or a failed store to replace. A closed, healthy store has none.
    pub fn needs_tick(&self) -> bool {
        self.stats.records > 0 || self.unsynced_samples > 0 || self.failure.is_some()
    }
}

/// A reply with the snapshot taken after it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreReport {
    pub reply: StoreReply,
    pub snapshot: StoreSnapshot,
}

/// The store as the forwarder uses it; the runtime's is the durable
/// [`super::LazyStore`] on its own thread, the unit tests' is in memory.
pub trait Store {
    fn append(&mut self, records: &[Encoded]) -> Result<(u64, Dropped), QueueError>;
    fn confirm_through(&mut self, id: u64) -> Result<usize, QueueError>;
    fn read(&mut self, cursor: Option<u64>, max: usize, max_samples: u64) -> Result<Vec<(u64, Record)>, QueueError>;
    /// Sync if due (and retry a failed store if due).
    fn tick(&mut self) -> Result<(), QueueError>;
    fn flush(&mut self) -> Result<(), QueueError>;
    fn set_options(&mut self, opts: DiskOptions);
    fn snapshot(&self) -> StoreSnapshot;
}

/// Runs one operation on `store`.
pub fn execute(store: &mut impl Store, op: StoreOp) -> StoreReport {
    let reply = match op {
        StoreOp::Append(records) => {
            let samples = records.iter().map(|r| r.samples).sum();
            match store.append(&records) {
                Ok((_, dropped)) => StoreReply::Appended { samples, dropped },
                Err(e) => StoreReply::AppendFailed {
                    samples,
                    error: e.to_string(),
                },
            }
        }
        StoreOp::ConfirmThrough(id) => match store.confirm_through(id) {
            Ok(_) => StoreReply::Confirmed,
            Err(e) => StoreReply::ConfirmFailed(e.to_string()),
        },
        StoreOp::Read {
            epoch,
            cursor,
            max_records,
            max_samples,
        } => match store.read(cursor, max_records, max_samples) {
            Ok(records) => StoreReply::Batch { epoch, records },
            Err(e) => StoreReply::ReadFailed {
                epoch,
                error: e.to_string(),
            },
        },
        StoreOp::Tick => match store.tick() {
            Ok(()) => StoreReply::Ticked,
            Err(e) => StoreReply::SyncFailed(e.to_string()),
        },
        StoreOp::Flush => StoreReply::Flushed(store.flush().map_err(|e| e.to_string())),
        StoreOp::SetOptions(o) => {
            store.set_options(o);
            StoreReply::OptionsSet
        }
    };
    StoreReport {
        reply,
        snapshot: store.snapshot(),
    }
}

/// Something the runtime should log (it throttles repeated lines).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// The store refused a group commit; the samples were dropped.
    StoreFailed { samples: u64, error: String },
    /// The bound (or a short disk) dropped the oldest samples.
    StoreFull { samples: u64, limit: u64, max_bytes: u64 },
    /// The Primary Host went offline: samples it may have missed go to the store.
    HostOffline { samples: u64 },
    /// A stored record cannot be replayed; dropped (deleted once confirmed).
    Unreplayable { samples: u64, error: String },
    /// A message refused for its size (not a connection loss).
    TooLarge { samples: u64 },
    /// The store could not delete, read or sync.
    StoreError { what: &'static str, error: String },
}

/// Cumulative counts for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Samples written to the store.
    pub stored: u64,
    /// Samples dropped: refused for size, store full or failed, unreplayable.
    pub dropped: u64,
    /// Samples a marker confirmed, live and replayed.
    pub confirmed: u64,
    /// Samples handed to the session for replay.
    pub replayed: u64,
}

/// What a replayed record became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// Published (or refused for its size, the count in `too_large`).
    Sent { too_large: u64 },
    /// The session cannot replay it: dropped, deleted once confirmed.
    Unreplayable(String),
    /// The connection is going or the session stopped publishing: the
    /// record stays stored and is replayed later.
    Stopped,
}

/// The store-and-forward state of one gateway. See the module docs.
#[derive(Debug)]
pub struct Forwarder {
    opts: ForwarderOptions,
    outbox: Outbox,
    /// Records waiting for the next group commit.
    pending: Vec<Encoded>,
    ops: Vec<StoreOp>,
    notices: Vec<Notice>,
    counts: Counts,
    store: StoreSnapshot,
    host_was_online: bool,
    /// The replay's number: bumped whenever it restarts from the head.
    epoch: u64,
    read_in_flight: bool,
    /// The last read found nothing after the cursor: read again only once
    /// something new is stored or the replay restarts.
    caught_up: bool,
    ready: VecDeque<(u64, Record)>,
    budget: f64,
    rate_since_ms: Option<u64>,
    replayed_in_window: u64,
    /// Samples replayed per second over the last full second.
    replay_rate: u64,
}

impl Forwarder {
    /// A forwarder for a store whose state is `store` (after opening it).
    pub fn new(opts: ForwarderOptions, store: StoreSnapshot) -> Forwarder {
        Forwarder {
            opts,
            outbox: Outbox::new(opts.outbox),
            pending: Vec::new(),
            ops: Vec::new(),
            notices: Vec::new(),
            counts: Counts::default(),
            store,
            host_was_online: false,
            epoch: 0,
            read_in_flight: false,
            caught_up: false,
            ready: VecDeque::new(),
            budget: 0.0,
            rate_since_ms: None,
            replayed_in_window: 0,
            replay_rate: 0,
        }
    }

    /// New options (a reload); the outbox keeps its own.
    pub fn set_options(&mut self, opts: ForwarderOptions) {
        self.opts = ForwarderOptions {
            outbox: self.opts.outbox,
            ..opts
        };
    }

    // ---- what the session published -------------------------------------

    /// A DATA message carrying `data`, and what became of its publish.
    pub fn data(&mut self, data: Encoded, sent: Sent) {
        match sent {
            Sent::Yes => {
                let spill = self.outbox.sent_live(data);
                self.pending.extend(spill);
            }
            Sent::TooLarge => {
                // Not a connection loss: the markers and the outbox stay.
                self.counts.dropped += data.samples;
                self.notices.push(Notice::TooLarge { samples: data.samples });
            }
            Sent::Closed => {
                // The connection is gone (its close may not be seen yet):
                // what it left unconfirmed is older than this record.
                let back = self.outbox.connection_lost();
                self.restart_replay();
                self.pending.extend(back);
                self.pending.push(data);
            }
        }
    }

    /// Samples the session could not publish (not born, host offline).
    pub fn historical(&mut self, record: &Record) {
        if !record.metrics.is_empty() {
            self.pending.push(Encoded::of(record));
        }
    }

    /// Another QoS 1 message (NDEATH) was handed to the client.
    pub fn other_qos1_sent(&mut self) {
        self.outbox.other_qos1_sent();
    }

    // ---- the connection ---------------------------------------------------

    /// CONNACK: markers of an earlier connection are void.
    pub fn connected(&mut self) {
        self.outbox.connected();
    }

    /// The connection is gone: what the broker has not provably read is
    /// stored, ahead of what waits, at once.
    pub fn connection_lost(&mut self) {
        let back = self.outbox.connection_lost();
        self.restart_replay();
        self.store_first(back);
    }

    /// The client wrote a PUBLISH with `pkid`.
    pub fn outgoing_publish(&mut self, pkid: u16) {
        self.outbox.on_outgoing_publish(pkid);
    }

    /// A PUBACK at `now` (ms): deletes what a marker confirmed.
    pub fn puback(&mut self, pkid: u16, now: u64) {
        let c = self.outbox.on_puback(pkid, now);
        self.counts.confirmed += c.samples;
        if let Some(id) = c.stored_through {
            self.ops.push(StoreOp::ConfirmThrough(id));
        }
    }

    /// Whether to publish a marker now: DATA went out since the last one,
    /// and it is the tick or `marker_every` messages went out.
    pub fn marker_due(&self, tick: bool) -> bool {
        self.outbox.marker_due(tick)
    }

    /// A marker was handed to the client after everything sent so far.
    pub fn marker_sent(&mut self) {
        self.outbox.marker_sent();
    }

    /// Markers waiting for their PUBACK.
    pub fn markers_pending(&self) -> usize {
        self.outbox.stats().markers_pending
    }

    /// The Primary Host's state as the session now sees it, at `now`. When
    /// it goes offline, what it may not have processed is stored to be
    /// replayed: every unconfirmed sample, and those confirmed within the
    /// host window.
    pub fn host_state(&mut self, online: bool, now: u64) {
        if online {
            self.host_was_online = true;
            return;
        }
        if !self.host_was_online {
            return;
        }
        self.host_was_online = false;
        let back = self.outbox.host_offline(now);
        self.restart_replay();
        let samples = back.iter().map(|e| e.samples).sum();
        if samples > 0 {
            self.notices.push(Notice::HostOffline { samples });
        }
        self.store_first(back);
    }

    fn restart_replay(&mut self) {
        self.epoch += 1;
        self.read_in_flight = false;
        self.caught_up = false;
        self.ready.clear();
    }

    fn store_first(&mut self, mut back: Vec<Encoded>) {
        back.append(&mut self.pending);
        self.pending = back;
        self.commit();
    }

    // ---- the store --------------------------------------------------------

    /// The group commit: hands what waits to the store when the runtime has
    /// no more samples ready (`idle`) or `flush_records` wait.
    pub fn maybe_commit(&mut self, idle: bool) {
        if !self.pending.is_empty() && (idle || self.pending.len() >= self.opts.flush_records) {
            self.commit();
        }
    }

    /// Hands what waits to the store now.
    pub fn commit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.ops.push(StoreOp::Append(std::mem::take(&mut self.pending)));
    }

    /// The operations for the store, in order.
    pub fn take_ops(&mut self) -> Vec<StoreOp> {
        std::mem::take(&mut self.ops)
    }

    /// What to log since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// The store's answer to one operation.
    pub fn on_store(&mut self, report: StoreReport) {
        self.store = report.snapshot;
        match report.reply {
            StoreReply::Appended { samples, dropped } => {
                self.counts.stored += samples;
                self.caught_up = false;
                if dropped.metrics > 0 {
                    self.counts.dropped += dropped.metrics as u64;
                    self.notices.push(Notice::StoreFull {
                        samples: dropped.metrics as u64,
                        limit: self.store.limit,
                        max_bytes: self.store.max_bytes,
                    });
                }
            }
            StoreReply::AppendFailed { samples, error } => {
                self.counts.dropped += samples;
                self.notices.push(Notice::StoreFailed { samples, error });
            }
            StoreReply::Batch { epoch, records } if epoch == self.epoch => {
                self.read_in_flight = false;
                self.caught_up = records.is_empty();
                self.ready.extend(records);
            }
            StoreReply::ReadFailed { epoch, error } => {
                if epoch == self.epoch {
                    self.read_in_flight = false;
                    // Not again before something changes: no error loop.
                    self.caught_up = true;
                }
                self.notices.push(Notice::StoreError { what: "read", error });
            }
            StoreReply::ConfirmFailed(error) => self.notices.push(Notice::StoreError {
                what: "delete from",
                error,
            }),
            StoreReply::SyncFailed(error) => self.notices.push(Notice::StoreError { what: "sync", error }),
            StoreReply::Flushed(Err(error)) => self.notices.push(Notice::StoreError { what: "flush", error }),
            // A batch of a replay that restarted: read again from the head.
            StoreReply::Batch { .. }
            | StoreReply::Confirmed
            | StoreReply::Ticked
            | StoreReply::Flushed(Ok(()))
            | StoreReply::OptionsSet => {}
        }
    }

    // ---- the replay ------------------------------------------------------

    /// The 100 ms tick at `now` (ms); `publishing`: the session is born and
    /// may send. Expires the host window, refills the replay's budget, and
    /// asks the store for the next records to replay.
    pub fn tick(&mut self, now: u64, publishing: bool) {
        self.outbox.expire(now);
        let since = *self.rate_since_ms.get_or_insert(now);
        if now.saturating_sub(since) >= 1000 {
            self.replay_rate = self.replayed_in_window * 1000 / (now - since);
            self.replayed_in_window = 0;
            self.rate_since_ms = Some(now);
        }
        if !publishing || (self.store.stats.records == 0 && self.ready.is_empty()) {
            self.budget = 0.0;
            return;
        }
        let rate = f64::from(self.opts.replay_rate);
        if rate > 0.0 {
            self.budget = (self.budget + rate / 10.0).min(rate);
        }
        self.request_read();
    }

    /// Samples the replay may send now.
    fn room(&self) -> u64 {
        let mut room = self
            .opts
            .replay_window
            .saturating_sub(self.outbox.stats().replay_unconfirmed);
        if self.opts.replay_rate > 0 {
            room = room.min(self.budget.max(0.0) as u64);
        }
        room
    }

    fn request_read(&mut self) {
        if self.read_in_flight || self.caught_up || !self.ready.is_empty() || self.store.stats.records == 0 {
            return;
        }
        let room = self.room();
        if room == 0 {
            return;
        }
        self.read_in_flight = true;
        self.ops.push(StoreOp::Read {
            epoch: self.epoch,
            cursor: self.outbox.replay_cursor(),
            max_records: 256,
            max_samples: room.min(self.opts.replay_batch),
        });
    }

    /// The next stored record to replay, if the window and the rate allow
    /// one now; when none is ready, the next read is asked for.
    pub fn next_replay(&mut self) -> Option<(u64, Record)> {
        if self.room() == 0 {
            return None;
        }
        match self.ready.pop_front() {
            Some(r) => Some(r),
            None => {
                self.request_read();
                None
            }
        }
    }

    /// What became of the record `id` (of `samples` samples) that
    /// [`next_replay`](Self::next_replay) gave.
    pub fn replayed(&mut self, id: u64, samples: u64, what: Replayed) {
        match what {
            Replayed::Sent { too_large } => {
                self.budget -= samples as f64;
                self.counts.replayed += samples;
                self.replayed_in_window += samples;
                if too_large > 0 {
                    self.counts.dropped += too_large;
                    self.notices.push(Notice::TooLarge { samples: too_large });
                }
                self.outbox.sent_stored(id, samples);
            }
            Replayed::Unreplayable(error) => {
                self.counts.dropped += samples;
                self.notices.push(Notice::Unreplayable { samples, error });
                // Deleted with the next confirmation, like a replayed one.
                self.outbox.sent_stored(id, 0);
            }
            // Read again from the cursor when the replay resumes.
            Replayed::Stopped => self.restart_replay(),
        }
    }

    // ---- what it holds ---------------------------------------------------

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The store as of its last reply.
    pub fn store(&self) -> &StoreSnapshot {
        &self.store
    }

    pub fn outbox(&self) -> super::outbox::OutboxStats {
        self.outbox.stats()
    }

    /// Samples replayed per second over the last full second.
    pub fn replay_rate(&self) -> u64 {
        self.replay_rate
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::sparkplug::{Metric, Value};

    /// The store in memory: ids only grow, bounded by a record count.
    #[derive(Default)]
    struct MemStore {
        records: BTreeMap<u64, Encoded>,
        next: u64,
        max_records: usize,
        fail_appends: bool,
    }

    impl Store for MemStore {
        fn append(&mut self, records: &[Encoded]) -> Result<(u64, Dropped), QueueError> {
            if self.fail_appends {
                return Err(QueueError::Encode("disk on fire".into()));
            }
            let first = self.next;
            let mut dropped = Dropped::default();
            for r in records {
                self.records.insert(self.next, r.clone());
                self.next += 1;
                while self.max_records > 0 && self.records.len() > self.max_records {
                    let (_, old) = self.records.pop_first().expect("non-empty");
                    dropped.records += 1;
                    dropped.metrics += old.samples as usize;
                }
            }
            Ok((first, dropped))
        }
        fn confirm_through(&mut self, id: u64) -> Result<usize, QueueError> {
            let keep = self.records.split_off(&(id + 1));
            let n = self.records.len();
            self.records = keep;
            Ok(n)
        }
        fn read(
            &mut self,
            cursor: Option<u64>,
            max: usize,
            max_samples: u64,
        ) -> Result<Vec<(u64, Record)>, QueueError> {
            let from = cursor.map_or(0, |c| c + 1);
            let mut out = Vec::new();
            let mut samples = 0;
            for (&id, e) in self.records.range(from..) {
                if out.len() >= max || (!out.is_empty() && samples + e.samples > max_samples) {
                    break;
                }
                samples += e.samples;
                out.push((id, e.record().expect("decodes")));
            }
            Ok(out)
        }
        fn tick(&mut self) -> Result<(), QueueError> {
            Ok(())
        }
        fn flush(&mut self) -> Result<(), QueueError> {
            Ok(())
        }
        fn set_options(&mut self, _: DiskOptions) {}
        fn snapshot(&self) -> StoreSnapshot {
            StoreSnapshot {
                stats: QueueStats {
                    records: self.records.len() as u64,
                    metrics: self.records.values().map(|e| e.samples).sum(),
                    ..QueueStats::default()
                },
                ..StoreSnapshot::default()
            }
        }
    }

    fn rec(v: i32) -> Record {
        Record {
            device: Some("d".into()),
            metrics: vec![Metric::new("m", Value::Int32(v), 1_000 + v as u64)],
        }
    }

    fn value(r: &Record) -> i32 {
        match r.metrics[0].value {
            Some(Value::Int32(v)) => v,
            _ => unreachable!(),
        }
    }

    /// A forwarder and its store; `run` executes the forwarder's operations
    /// and feeds the replies back, as the store thread and runtime do.
    struct Rig {
        f: Forwarder,
        store: MemStore,
        pkid: u16,
    }

    impl Rig {
        fn new(opts: ForwarderOptions) -> Rig {
            Rig {
                f: Forwarder::new(opts, StoreSnapshot::default()),
                store: MemStore::default(),
                pkid: 0,
            }
        }

        fn run(&mut self) {
            loop {
                let ops = self.f.take_ops();
                if ops.is_empty() {
                    return;
                }
                for op in ops {
                    let r = execute(&mut self.store, op);
                    self.f.on_store(r);
                }
            }
        }

        fn stored(&self) -> Vec<i32> {
            self.store
                .records
                .values()
                .map(|e| value(&e.record().expect("decodes")))
                .collect()
        }

        /// Publishes a marker and has the broker acknowledge it.
        fn ack(&mut self, now: u64) {
            self.f.marker_sent();
            self.pkid += 1;
            self.f.outgoing_publish(self.pkid);
            self.f.puback(self.pkid, now);
            self.run();
        }

        /// Stores `values` as samples the session could not publish.
        fn store_values(&mut self, values: std::ops::Range<i32>) {
            for v in values {
                self.f.historical(&rec(v));
            }
            self.f.commit();
            self.run();
        }

        /// Replays what the forwarder offers, as the session would; a read
        /// it asks for on the way is run before giving up.
        fn replay_all(&mut self) -> Vec<i32> {
            let mut out = Vec::new();
            loop {
                self.run();
                let next = self.f.next_replay().or_else(|| {
                    self.run();
                    self.f.next_replay()
                });
                let Some((id, r)) = next else { return out };
                out.push(value(&r));
                self.f.replayed(id, 1, Replayed::Sent { too_large: 0 });
            }
        }
    }

    #[test]
    fn samples_the_session_could_not_publish_are_stored_in_one_group_when_idle() {
        let mut rig = Rig::new(ForwarderOptions::default());
        rig.f.historical(&rec(1));
        rig.f.historical(&rec(2));
        rig.f.maybe_commit(false);
        assert!(rig.f.take_ops().is_empty(), "more samples are ready: wait");
        rig.f.maybe_commit(true);
        let ops = rig.f.take_ops();
        assert!(matches!(&ops[..], [StoreOp::Append(v)] if v.len() == 2), "{ops:?}");
        for op in ops {
            let r = execute(&mut rig.store, op);
            rig.f.on_store(r);
        }
        assert_eq!(rig.f.counts().stored, 2, "counted once written");
        assert_eq!(rig.stored(), vec![1, 2]);
    }

    #[test]
    fn flush_records_forces_a_commit_while_samples_keep_coming() {
        let mut rig = Rig::new(ForwarderOptions {
            flush_records: 3,
            ..ForwarderOptions::default()
        });
        for v in 0..3 {
            rig.f.historical(&rec(v));
        }
        rig.f.maybe_commit(false);
        assert_eq!(rig.f.take_ops().len(), 1);
    }

    #[test]
    fn a_message_refused_for_its_size_is_counted_and_is_no_connection_loss() {
        let mut rig = Rig::new(ForwarderOptions::default());
        rig.f.data(Encoded::of(&rec(1)), Sent::Yes);
        rig.f.data(Encoded::of(&rec(2)), Sent::TooLarge);
        assert_eq!(rig.f.counts().dropped, 1);
        assert_eq!(rig.f.take_notices(), vec![Notice::TooLarge { samples: 1 }]);
        rig.f.maybe_commit(true);
        assert!(rig.f.take_ops().is_empty(), "nothing pulled back from the broker");
        rig.ack(5);
        assert_eq!(rig.f.counts().confirmed, 1, "the marker still confirms what was sent");
    }

    #[test]
    fn a_lost_connection_stores_the_unconfirmed_samples_at_once_ahead_of_those_waiting() {
        let mut rig = Rig::new(ForwarderOptions::default());
        rig.f.data(Encoded::of(&rec(1)), Sent::Yes);
        rig.ack(0);
        rig.f.data(Encoded::of(&rec(2)), Sent::Yes);
        rig.f.historical(&rec(3));
        rig.f.connection_lost();
        rig.run();
        assert_eq!(rig.stored(), vec![2, 3], "the confirmed one is not stored again");
    }

    #[test]
    fn a_publish_that_finds_the_connection_closed_stores_the_unconfirmed_then_itself() {
        let mut rig = Rig::new(ForwarderOptions::default());
        rig.f.data(Encoded::of(&rec(1)), Sent::Yes);
        rig.f.data(Encoded::of(&rec(2)), Sent::Closed);
        rig.f.connection_lost(); // the close event, seen later
        rig.run();
        assert_eq!(rig.stored(), vec![1, 2]);
    }

    #[test]
    fn stored_records_are_replayed_in_order_and_deleted_only_once_a_marker_confirms_them() {
        let mut rig = Rig::new(ForwarderOptions::default());
        rig.store_values(0..5);
        rig.f.tick(0, true);
        assert_eq!(rig.replay_all(), vec![0, 1, 2, 3, 4]);
        assert_eq!(rig.stored().len(), 5, "sent but not confirmed: still stored");
        rig.ack(10);
        assert!(rig.stored().is_empty());
        assert_eq!(rig.f.counts().confirmed, 5);
    }

    #[test]
    fn a_lost_connection_replays_again_from_the_head_and_a_stale_read_is_discarded() {
        let mut rig = Rig::new(ForwarderOptions::default());
        rig.store_values(0..3);
        rig.f.tick(0, true);
        let read = rig.f.take_ops();
        assert!(matches!(read[..], [StoreOp::Read { cursor: None, .. }]));
        let stale = execute(&mut rig.store, read[0].clone());
        rig.f.connection_lost();
        rig.f.on_store(stale);
        assert_eq!(rig.f.next_replay(), None, "the read of the old connection is dropped");
        rig.f.connected();
        rig.f.tick(100, true);
        assert_eq!(rig.replay_all(), vec![0, 1, 2], "everything again, from the head");
    }

    #[test]
    fn the_replay_window_bounds_unconfirmed_replayed_samples() {
        let mut rig = Rig::new(ForwarderOptions {
            replay_window: 2,
            ..ForwarderOptions::default()
        });
        rig.store_values(0..5);
        rig.f.tick(0, true);
        assert_eq!(rig.replay_all(), vec![0, 1], "two unconfirmed at most");
        rig.ack(1);
        rig.f.tick(100, true);
        assert_eq!(rig.replay_all(), vec![2, 3]);
    }

    #[test]
    fn replay_rate_caps_replayed_samples_per_second() {
        let mut rig = Rig::new(ForwarderOptions {
            replay_rate: 20,
            ..ForwarderOptions::default()
        });
        rig.store_values(0..10);
        rig.f.tick(0, true);
        assert_eq!(rig.replay_all().len(), 2, "20/s is 2 per 100 ms tick");
        rig.f.tick(100, true);
        assert_eq!(rig.replay_all().len(), 2);
    }

    #[test]
    fn nothing_is_replayed_while_the_session_does_not_publish() {
        let mut rig = Rig::new(ForwarderOptions::default());
        rig.store_values(1..2);
        rig.f.tick(0, false);
        assert!(rig.f.take_ops().is_empty(), "no read while not born");
    }

    #[test]
    fn a_replay_caught_up_reads_again_only_once_something_new_is_stored() {
        let mut rig = Rig::new(ForwarderOptions::default());
        rig.store_values(1..2);
        rig.f.tick(0, true);
        assert_eq!(rig.replay_all(), vec![1]);
        rig.f.tick(100, true);
        assert!(rig.f.take_ops().is_empty(), "caught up: no read on every tick");
        rig.store_values(2..3);
        rig.f.tick(200, true);
        assert_eq!(rig.replay_all(), vec![2], "the new record, after the cursor");
    }

    #[test]
    fn ids_appended_after_a_drain_are_not_skipped_by_the_replay_cursor() {
        let mut rig = Rig::new(ForwarderOptions::default());
        rig.store_values(0..3);
        rig.f.tick(0, true);
        assert_eq!(rig.replay_all(), vec![0, 1, 2]);
        rig.ack(1); // drained
        rig.store_values(7..8);
        rig.f.tick(100, true);
        assert_eq!(rig.replay_all(), vec![7]);
    }

    #[test]
    fn a_primary_host_that_dies_gets_the_samples_confirmed_within_the_window_again() {
        let mut rig = Rig::new(ForwarderOptions {
            outbox: OutboxOptions {
                host_window_ms: 1_000,
                ..OutboxOptions::default()
            },
            ..ForwarderOptions::default()
        });
        rig.f.host_state(true, 0);
        rig.f.data(Encoded::of(&rec(1)), Sent::Yes);
        rig.ack(0);
        rig.f.data(Encoded::of(&rec(2)), Sent::Yes);
        rig.ack(900);
        rig.f.data(Encoded::of(&rec(3)), Sent::Yes);
        rig.f.historical(&rec(4));
        rig.f.host_state(false, 1_500);
        rig.run();
        assert_eq!(
            rig.stored(),
            vec![2, 3, 4],
            "within the window, unconfirmed, then waiting"
        );
        assert_eq!(rig.f.take_notices(), vec![Notice::HostOffline { samples: 2 }]);
        rig.f.host_state(false, 1_600);
        rig.run();
        assert_eq!(rig.stored().len(), 3, "offline twice stores nothing twice");
    }

    #[test]
    fn a_failed_or_full_store_counts_every_sample_it_drops() {
        let mut rig = Rig::new(ForwarderOptions::default());
        rig.store.max_records = 2;
        rig.store_values(0..3);
        assert_eq!(rig.stored(), vec![1, 2], "the oldest dropped");
        assert_eq!(
            rig.f.counts(),
            Counts {
                stored: 3,
                dropped: 1,
                ..Counts::default()
            }
        );
        rig.store.fail_appends = true;
        rig.store_values(9..10);
        assert_eq!(rig.f.counts().dropped, 2);
        let notices = rig.f.take_notices();
        assert!(
            matches!(notices[0], Notice::StoreFull { samples: 1, .. }),
            "{notices:?}"
        );
        assert!(
            matches!(notices[1], Notice::StoreFailed { samples: 1, .. }),
            "{notices:?}"
        );
    }

    #[test]
    fn an_unreplayable_record_is_dropped_counted_and_deleted_with_the_next_confirmation() {
        let mut rig = Rig::new(ForwarderOptions::default());
        rig.store_values(1..3);
        rig.f.tick(0, true);
        rig.run();
        let (id, _) = rig.f.next_replay().expect("ready");
        rig.f.replayed(id, 1, Replayed::Unreplayable("not in the birth".into()));
        let (id, _) = rig.f.next_replay().expect("ready");
        rig.f.replayed(id, 1, Replayed::Sent { too_large: 0 });
        rig.ack(1);
        assert!(rig.stored().is_empty(), "the replay goes on past it");
        assert_eq!(rig.f.counts().dropped, 1);
    }

    #[test]
    fn a_replay_stopped_by_the_connection_keeps_the_record_for_the_next() {
        let mut rig = Rig::new(ForwarderOptions::default());
        rig.store_values(1..3);
        rig.f.tick(0, true);
        rig.run();
        let (id, _) = rig.f.next_replay().expect("ready");
        rig.f.replayed(id, 1, Replayed::Stopped);
        rig.f.connection_lost();
        rig.f.connected();
        rig.f.tick(100, true);
        assert_eq!(rig.replay_all(), vec![1, 2]);
    }

    #[test]
    fn the_bytes_sent_are_the_bytes_stored() {
        let mut rig = Rig::new(ForwarderOptions::default());
        let e = Encoded::of(&rec(5));
        rig.f.data(e.clone(), Sent::Yes);
        rig.f.connection_lost();
        rig.run();
        assert_eq!(rig.store.records.values().next(), Some(&e));
    }
}
