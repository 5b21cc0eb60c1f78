//! Scale-out: several uplink instances share the edge-node groups of one
//! Primary Host identity (docs/ARCHITECTURE.md, decision 16).
//!
//! Every instance subscribes to every configured group and gives the host
//! session every birth and death (births and aliases are known
//! everywhere), but decodes and writes only the DATA of the groups it
//! holds a lease on; the others' DATA waits undecoded ([`DeferredLog`]). A lease is
//! a row of `sp_uplink_lease` with a holder and an expiry on the database's
//! clock; the STATE identity is one more lease, [`STATE_LEASE`], and only
//! its holder publishes STATE (with its Will on a connection of its own).
//!
//! This module is the sans-IO part: which leases to take and give up
//! ([`decide`]), what is kept of groups held elsewhere until their holder
//! has committed it (undecoded DATA in [`DeferredLog`], rows already made
//! in [`Standby`]), and the instant before which everything this instance
//! received is committed ([`Inflight`]).
//!
//! Invariants:
//! - A row is written only inside a transaction that finds its group's
//!   lease held by this instance and live, under a shared advisory lock a
//!   taker holds exclusively: a writer whose lease was taken cannot commit
//!   it, and the row comes back to the [`Standby`].
//! - A holder publishes `safe_through`: every message it received before
//!   that instant is committed. Another instance keeps each row of that
//!   group until the holder's `safe_through` passes the row's arrival (plus
//!   `clock_margin`); on taking the lease it writes what it kept, before any
//!   newer row of the group. Facts are idempotent, so the overlap writes no
//!   fact twice.
//! - What is kept is bounded by bytes (`standby_max_bytes`, half each);
//!   past the bound the oldest goes, counted and logged at ERROR (a
//!   takeover then may miss it). What a holder committed is forgotten,
//!   and the host session takes its seq as seen
//!   ([`crate::sparkplug::host::HostSession::skip_to`]).
//! - An instance not connected to the broker holds no group.
//! - Leases are balanced: with `n` live instances each aims at
//!   `ceil(groups / n)`; one holding more gives one up per round, one
//!   holding fewer takes free ones. The STATE lease goes to whoever finds it
//!   free.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use thiserror::Error;

use super::rows::Batch;

/// The lease of the Primary Host identity: its holder publishes STATE and
/// writes the rows that belong to no group (STATE messages, unparsable
/// topics).
pub use super::rows::STATE_LEASE;

/// Why scale-out could not go on.
#[derive(Debug, Error)]
pub enum ScaleError {
    #[error("lease database: {0}")]
    Db(String),
    #[error("lease database: {0}")]
    Connect(String),
}

impl From<tokio_postgres::Error> for ScaleError {
    fn from(e: tokio_postgres::Error) -> ScaleError {
        // The server's own words (SQLSTATE and message), as the writers log them.
        ScaleError::Db(super::postgres::PgError::from(e).to_string())
    }
}

/// `[scale]`: this instance's name and the groups the instances share.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleConfig {
    /// Unique among the instances alive at one time.
    pub instance: String,
    /// The edge-node groups shared; each instance subscribes to all of them.
    pub groups: Vec<String>,
    /// A lease not renewed for this long is free for another instance.
    pub lease_ttl: Duration,
    /// The largest difference between two instances' clocks (and delivery
    /// times) that `safe_through` must cover.
    pub clock_margin: Duration,
    /// The bound of what is kept of groups held elsewhere: half for the
    /// undecoded DATA ([`DeferredLog`]), half for rows ([`Standby`]).
    pub standby_max_bytes: u64,
}

impl ScaleConfig {
    /// How often the leases are renewed and free ones looked for: a third
    /// of their lifetime, at least every second (a lease given up is taken
    /// within a second).
    pub fn renew_every(&self) -> Duration {
        (self.lease_ttl / 3).min(Duration::from_secs(1))
    }

    /// The subscriptions of an instance: each group, and the host's own STATE topic
    /// (added by the host session).
    pub fn subscriptions(&self) -> Vec<String> {
        self.groups.iter().map(|g| format!("spBv1.0/{g}/#")).collect()
    }
}

/// A lease row as the database has it now.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRow {
    pub name: String,
    pub holder: Option<String>,
    /// Not expired on the database's clock.
    pub live: bool,
    /// The holder's `safe_through` (ms since the epoch), 0 before any.
    pub safe_through_ms: i64,
}

/// What one round does with the leases.
#[derive(Debug, Default, PartialEq)]
pub struct Round {
    pub take: Vec<String>,
    pub release: Vec<String>,
}

/// The leases `me` takes and gives up this round, given every lease row and
/// the number of live instances (see the module invariants). An instance
/// not `connected` to the broker misses what its groups publish: it gives
/// them all up at once and takes none (the STATE identity it keeps: its
/// Will speaks on a connection of its own).
pub fn decide(me: &str, groups: &[String], rows: &[LeaseRow], members: usize, connected: bool) -> Round {
    let row = |name: &str| rows.iter().find(|r| r.name == name);
    let held = |name: &str| row(name).is_some_and(|r| r.live && r.holder.as_deref() == Some(me));
    let free = |name: &str| row(name).is_none_or(|r| !r.live || r.holder.is_none());
    let mut sorted: Vec<&String> = groups.iter().collect();
    sorted.sort();
    sorted.dedup();
    if !connected {
        return Round {
            take: Vec::new(),
            release: sorted.into_iter().filter(|g| held(g)).cloned().collect(),
        };
    }
    let target = sorted.len().div_ceil(members.max(1));
    let mine: Vec<&String> = sorted.iter().copied().filter(|g| held(g)).collect();
    let mut round = Round::default();
    if mine.len() > target {
        // One a round: the others take it before the next is given up.
        if let Some(g) = mine.last() {
            round.release.push((*g).clone());
        }
    } else {
        let want = target - mine.len();
        round
            .take
            .extend(sorted.iter().filter(|g| free(g)).take(want).map(|g| (*g).clone()));
    }
    if free(STATE_LEASE) {
        round.take.push(STATE_LEASE.to_string());
    }
    round
}

/// The rows of a group kept while another instance holds it.
struct Part {
    lease: String,
    /// No row of the part arrived earlier than this (ms).
    from_ms: u64,
    /// No row of the part arrived later than this (ms, this instance's clock).
    until_ms: u64,
    batch: Batch,
    bytes: u64,
}

/// Rows of groups this instance does not hold, oldest first, until their
/// holder's `safe_through` passes them (module invariants).
pub struct Standby {
    parts: VecDeque<Part>,
    bytes: u64,
    max_bytes: u64,
    margin_ms: u64,
}

impl Standby {
    pub fn new(max_bytes: u64, margin: Duration) -> Standby {
        Standby {
            parts: VecDeque::new(),
            bytes: 0,
            max_bytes,
            margin_ms: margin.as_millis() as u64,
        }
    }

    /// Keeps `batch` (rows of `lease` that arrived from `from_ms` to
    /// `until_ms`); returns how many rows, the oldest, went to stay under
    /// the byte bound.
    pub fn keep(&mut self, lease: &str, from_ms: u64, until_ms: u64, batch: Batch) -> u64 {
        if batch.is_empty() {
            return 0;
        }
        let bytes = batch.approx_bytes();
        self.bytes += bytes;
        self.parts.push_back(Part {
            lease: lease.to_string(),
            from_ms,
            until_ms,
            batch,
            bytes,
        });
        let mut dropped = 0;
        while self.bytes > self.max_bytes {
            let Some(p) = self.parts.pop_front() else { break };
            self.bytes -= p.bytes;
            dropped += p.batch.len() as u64;
        }
        dropped
    }

    /// Forgets the rows of `lease` its holder has committed: those that
    /// arrived more than the clock margin before `safe_through_ms`.
    pub fn prune(&mut self, lease: &str, safe_through_ms: i64) {
        let Ok(safe) = u64::try_from(safe_through_ms) else {
            return;
        };
        let margin = self.margin_ms;
        let mut freed = 0;
        self.parts.retain(|p| {
            let gone = p.lease == lease && p.until_ms.saturating_add(margin) < safe;
            if gone {
                freed += p.bytes;
            }
            !gone
        });
        self.bytes -= freed;
    }

    /// Takes every row of `lease` still kept, oldest first (on taking it),
    /// each part with the arrival of its first row.
    pub fn take(&mut self, lease: &str) -> Vec<(u64, Batch)> {
        let (out, keep): (VecDeque<Part>, VecDeque<Part>) = std::mem::take(&mut self.parts)
            .into_iter()
            .partition(|p| p.lease == lease);
        self.parts = keep;
        self.bytes = self.parts.iter().map(|p| p.bytes).sum();
        out.into_iter().map(|p| (p.from_ms, p.batch)).collect()
    }

    pub fn rows(&self) -> u64 {
        self.parts.iter().map(|p| p.batch.len() as u64).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// A DATA message of a group held elsewhere, kept as it arrived: it is
/// decoded only if this instance takes the group (or before the node's
/// next birth or death), so an instance pays little for the groups it
/// does not write.
#[derive(Debug, Clone, PartialEq)]
pub struct Deferred {
    pub group: String,
    pub node: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub received_ms: u64,
    /// The Sparkplug seq read from the wire, if any.
    pub seq: Option<u8>,
}

impl Deferred {
    fn bytes(&self) -> u64 {
        (96 + self.group.len() + self.node.len() + self.topic.len() + self.payload.len()) as u64
    }
}

/// The deferred messages, oldest first, bounded in bytes.
pub struct DeferredLog {
    items: VecDeque<Deferred>,
    bytes: u64,
    max_bytes: u64,
    margin_ms: u64,
}

impl DeferredLog {
    pub fn new(max_bytes: u64, margin: Duration) -> DeferredLog {
        DeferredLog {
            items: VecDeque::new(),
            bytes: 0,
            max_bytes,
            margin_ms: margin.as_millis() as u64,
        }
    }

    /// Keeps `d`; returns how many messages, the oldest, went to stay
    /// under the byte bound.
    pub fn keep(&mut self, d: Deferred) -> u64 {
        self.bytes += d.bytes();
        self.items.push_back(d);
        let mut dropped = 0;
        while self.bytes > self.max_bytes {
            let Some(old) = self.items.pop_front() else { break };
            self.bytes -= old.bytes();
            dropped += 1;
        }
        dropped
    }

    /// Takes the messages of one node (`Some`) or of every node of
    /// `group`, in arrival order: they are to be decoded now.
    pub fn take(&mut self, group: &str, node: Option<&str>) -> Vec<Deferred> {
        let (out, keep): (VecDeque<Deferred>, VecDeque<Deferred>) = std::mem::take(&mut self.items)
            .into_iter()
            .partition(|d| d.group == group && node.is_none_or(|n| d.node == n));
        self.items = keep;
        self.bytes -= out.iter().map(Deferred::bytes).sum::<u64>();
        out.into()
    }

    /// Forgets the messages of `group` its holder has committed (arrived
    /// more than the clock margin before `safe_through_ms`); returns per
    /// node the seq of the last one forgotten, which the host session is
    /// to take as seen.
    pub fn prune(&mut self, group: &str, safe_through_ms: i64) -> BTreeMap<String, u8> {
        let mut skipped = BTreeMap::new();
        let Ok(safe) = u64::try_from(safe_through_ms) else {
            return skipped;
        };
        let margin = self.margin_ms;
        let mut freed = 0;
        // Per node the forgotten ones are a prefix: stop at a node's first kept one.
        let mut kept_nodes: std::collections::HashSet<String> = std::collections::HashSet::new();
        self.items.retain(|d| {
            if d.group != group || kept_nodes.contains(&d.node) {
                return true;
            }
            if d.received_ms.saturating_add(margin) < safe {
                freed += d.bytes();
                if let Some(seq) = d.seq {
                    skipped.insert(d.node.clone(), seq);
                }
                false
            } else {
                kept_nodes.insert(d.node.clone());
                true
            }
        });
        self.bytes -= freed;
        skipped
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The arrival times (ms) of the batches handed to the writers and not yet
/// committed: the oldest bounds `safe_through`.
#[derive(Default)]
pub struct Inflight {
    since: BTreeMap<u64, usize>,
}

impl Inflight {
    pub fn add(&mut self, ms: u64) {
        *self.since.entry(ms).or_default() += 1;
    }

    pub fn done(&mut self, ms: u64) {
        if let Some(n) = self.since.get_mut(&ms) {
            *n -= 1;
            if *n == 0 {
                self.since.remove(&ms);
            }
        }
    }

    /// Every message received before the returned instant is committed:
    /// the oldest batch in flight, the batch being filled (`open`), or `now`.
    pub fn safe_through(&self, open: Option<u64>, now: u64) -> u64 {
        let oldest = self.since.keys().next().copied();
        [oldest, open, Some(now)].into_iter().flatten().min().unwrap_or(now)
    }
}

/// What the loop and the writers share: the standby and the batches in flight.
pub struct Shared {
    pub standby: std::sync::Mutex<Standby>,
    pub inflight: std::sync::Mutex<Inflight>,
}

impl Shared {
    pub fn new(cfg: &ScaleConfig) -> Shared {
        Shared {
            standby: std::sync::Mutex::new(Standby::new(cfg.standby_max_bytes / 2, cfg.clock_margin)),
            inflight: std::sync::Mutex::new(Inflight::default()),
        }
    }

    pub fn standby(&self) -> std::sync::MutexGuard<'_, Standby> {
        self.standby.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn inflight(&self) -> std::sync::MutexGuard<'_, Inflight> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::rows::RawRow;

    fn row(name: &str, holder: Option<&str>, live: bool) -> LeaseRow {
        LeaseRow {
            name: name.into(),
            holder: holder.map(Into::into),
            live,
            safe_through_ms: 0,
        }
    }

    fn groups() -> Vec<String> {
        ["a", "b", "c", "d"].map(String::from).to_vec()
    }

    fn raw(n: usize) -> Batch {
        let mut b = Batch::default();
        for i in 0..n {
            b.raw.push(RawRow {
                topic: format!("spBv1.0/a/NDATA/n{i}"),
                kind: "NDATA".into(),
                seq: None,
                bdseq: None,
                received_ms: 0,
                payload: vec![0; 100],
            });
        }
        b
    }

    #[test]
    fn an_instance_alone_takes_every_group_and_the_state_identity() {
        let r = decide("x", &groups(), &[], 1, true);
        assert_eq!(r.take, ["a", "b", "c", "d", STATE_LEASE]);
        assert!(r.release.is_empty());
    }

    #[test]
    fn a_second_instance_gets_half_the_groups_one_a_round() {
        let rows: Vec<LeaseRow> = ["a", "b", "c", "d", STATE_LEASE]
            .iter()
            .map(|g| row(g, Some("x"), true))
            .collect();
        // x holds four of a target of two: it gives up the last one.
        assert_eq!(decide("x", &groups(), &rows, 2, true).release, ["d"]);
        // y finds nothing free yet.
        assert_eq!(decide("y", &groups(), &rows, 2, true), Round::default());
        let mut rows = rows;
        rows[3] = row("d", Some("x"), false);
        assert_eq!(decide("y", &groups(), &rows, 2, true).take, ["d"]);
    }

    #[test]
    fn a_dead_instances_leases_are_taken_once_expired() {
        let rows = vec![
            row("a", Some("x"), true),
            row("b", Some("x"), true),
            row("c", Some("y"), false),
            row("d", Some("y"), false),
            row(STATE_LEASE, Some("y"), false),
        ];
        // y's member row expired too: x is alone.
        assert_eq!(decide("x", &groups(), &rows, 1, true).take, ["c", "d", STATE_LEASE]);
    }

    #[test]
    fn an_instance_cut_off_the_broker_gives_its_groups_up_and_takes_none() {
        let rows = vec![
            row("a", Some("x"), true),
            row("b", Some("x"), true),
            row("c", None, false),
            row(STATE_LEASE, Some("x"), true),
        ];
        let r = decide("x", &groups(), &rows, 2, false);
        assert_eq!(r.release, ["a", "b"]);
        assert!(r.take.is_empty());
    }

    #[test]
    fn the_standby_keeps_rows_until_their_holder_is_past_them() {
        let mut s = Standby::new(1 << 20, Duration::from_millis(100));
        s.keep("a", 900, 1_000, raw(2));
        s.keep("b", 900, 1_000, raw(1));
        s.keep("a", 1_900, 2_000, raw(3));
        // safe_through 1_050: within the margin of the first part, kept.
        s.prune("a", 1_050);
        assert_eq!(s.rows(), 6);
        s.prune("a", 1_101);
        assert_eq!(s.rows(), 4);
        let taken = s.take("a");
        assert_eq!(
            taken.iter().map(|(from, b)| (*from, b.len())).collect::<Vec<_>>(),
            [(1_900, 3)]
        );
        assert_eq!(s.rows(), 1);
        assert_eq!(s.bytes(), raw(1).approx_bytes());
    }

    #[test]
    fn the_standby_drops_its_oldest_rows_past_its_bound_and_counts_them() {
        let one = raw(1).approx_bytes();
        let mut s = Standby::new(one * 2, Duration::ZERO);
        assert_eq!(s.keep("a", 1, 1, raw(1)), 0);
        assert_eq!(s.keep("a", 2, 2, raw(1)), 0);
        assert_eq!(s.keep("a", 3, 3, raw(1)), 1);
        assert_eq!(s.rows(), 2);
    }

    fn deferred(node: &str, ms: u64, seq: u8) -> Deferred {
        Deferred {
            group: "a".into(),
            node: node.into(),
            topic: format!("spBv1.0/a/NDATA/{node}"),
            payload: vec![0; 10],
            received_ms: ms,
            seq: Some(seq),
        }
    }

    #[test]
    fn deferred_messages_are_forgotten_per_node_in_order_and_their_last_seq_reported() {
        let mut d = DeferredLog::new(1 << 20, Duration::from_millis(100));
        d.keep(deferred("n1", 1_000, 1));
        d.keep(deferred("n2", 1_000, 7));
        d.keep(deferred("n1", 1_500, 2));
        d.keep(deferred("n1", 1_100, 3)); // arrived late: kept behind seq 2
        let skipped = d.prune("a", 1_200);
        assert_eq!(skipped, BTreeMap::from([("n1".to_string(), 1), ("n2".to_string(), 7)]));
        assert_eq!(d.len(), 2);
        let rest = d.take("a", Some("n1"));
        assert_eq!(rest.iter().filter_map(|m| m.seq).collect::<Vec<_>>(), [2, 3]);
        assert!(d.is_empty());
        assert_eq!(d.bytes(), 0);
    }

    #[test]
    fn the_deferred_log_drops_its_oldest_messages_past_its_bound() {
        let one = deferred("n1", 1, 1).bytes();
        let mut d = DeferredLog::new(one * 2, Duration::ZERO);
        assert_eq!(d.keep(deferred("n1", 1, 1)), 0);
        assert_eq!(d.keep(deferred("n1", 2, 2)), 0);
        assert_eq!(d.keep(deferred("n1", 3, 3)), 1);
        assert_eq!(
            d.take("a", None).iter().filter_map(|m| m.seq).collect::<Vec<_>>(),
            [2, 3]
        );
    }

    #[test]
    fn safe_through_is_the_oldest_arrival_not_yet_committed() {
        let mut f = Inflight::default();
        assert_eq!(f.safe_through(None, 500), 500);
        f.add(100);
        f.add(100);
        f.add(200);
        assert_eq!(f.safe_through(Some(300), 500), 100);
        f.done(100);
        assert_eq!(f.safe_through(None, 500), 100);
        f.done(100);
        assert_eq!(f.safe_through(Some(300), 500), 200);
        f.done(200);
        assert_eq!(f.safe_through(Some(300), 500), 300);
    }
}
