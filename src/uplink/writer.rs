//! The writer tasks: take batches from the MQTT loop and commit them through
//! a [`Sink`], so that one bad row never stops the rows around it.
//!
//! Invariants:
//! - Every row handed to a writer ends in exactly one place: committed, or
//!   quarantined with the database's own reason, or (only when even its
//!   quarantine row is refused) counted in `rows_unstorable` and logged at
//!   ERROR with its key. Nothing is retried forever for the data's sake.
//! - A failure about the connection or the server (anything but a data
//!   error, see [`Sink::is_data_error`]) retries the same rows with backoff
//!   until the database takes them; nothing is dropped while it is down.
//! - A data error splits the failing rows in halves until the refused rows
//!   stand alone; each half that commits is never written again (facts are
//!   idempotent anyway). A write that panics is treated like a data error
//!   on a new connection.
//! - A writer task that ends while the loop still runs is started again on
//!   the same queue ([`Writers::supervise`]): the batches waiting for it are
//!   kept, never dropped.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::config::DatabaseConfig;
use super::rows::{prefix, storable, Batch, QuarantineRow};
use super::sink::{Sink, Written};
use super::stats::Stats;

/// A batch on its way to the database, with when its first message arrived.
pub struct Pending {
    pub batch: Batch,
    pub since: Instant,
    /// The same instant on the wall clock (ms): scale-out's `safe_through`.
    pub since_ms: u64,
    /// `batch.approx_bytes()`, added to the backlog when it was handed over.
    pub bytes: u64,
}

/// A writer's queue; it outlives the task that drains it, so a restarted
/// task finds what was waiting.
pub type Queue = Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>;

/// The writer tasks, each with its queue and a way to start it again.
pub struct Writers {
    tx: Vec<mpsc::UnboundedSender<Pending>>,
    queues: Vec<Queue>,
    tasks: Vec<JoinHandle<()>>,
    start: Box<dyn Fn(Queue) -> JoinHandle<()> + Send>,
    stats: Arc<Stats>,
}

impl Writers {
    /// Starts `n` writers, each by `start` on a queue of its own.
    pub fn start(n: usize, stats: Arc<Stats>, start: Box<dyn Fn(Queue) -> JoinHandle<()> + Send>) -> Writers {
        let mut w = Writers {
            tx: Vec::new(),
            queues: Vec::new(),
            tasks: Vec::new(),
            start,
            stats,
        };
        for _ in 0..n.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let q: Queue = Arc::new(Mutex::new(rx));
            w.tasks.push((w.start)(q.clone()));
            w.tx.push(tx);
            w.queues.push(q);
        }
        w
    }

    pub fn len(&self) -> usize {
        self.tx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }

    /// Starts again every writer whose task has ended (a panic outside a
    /// write, or a bug); its queue, with every batch waiting in it, is kept.
    pub fn supervise(&mut self) {
        for i in 0..self.tasks.len() {
            if self.tasks[i].is_finished() {
                self.stats.writer_restarts.fetch_add(1, Relaxed);
                tracing::error!(
                    writer = i,
                    "a database writer ended unexpectedly; started again on its queue"
                );
                self.tasks[i] = (self.start)(self.queues[i].clone());
            }
        }
    }

    /// Hands `p` to writer `i`.
    pub fn send(&mut self, i: usize, p: Pending) {
        self.supervise();
        if let Err(mpsc::error::SendError(p)) = self.tx[i].send(p) {
            // Unreachable while `queues` holds the receiver; kept loud.
            tracing::error!(rows = p.batch.len(), "writer queue closed: rows lost");
            self.stats.rows_unstorable.fetch_add(p.batch.len() as u64, Relaxed);
        }
    }

    /// Closes the queues and waits (up to `limit`) for every batch handed
    /// over to be committed; false when the time ran out.
    pub async fn finish(self, limit: Duration) -> bool {
        drop(self.tx);
        tokio::time::timeout(limit, futures_util::future::join_all(self.tasks))
            .await
            .is_ok()
    }
}

/// Takes batches as they come and commits them, merged up to
/// `batch_max_rows` (see the module invariants).
///
/// With scale-out (`fence`: this instance and what it shares with the
/// loop) rows are written only under their lease; rows of a lease found
/// lost go back to the standby ([`super::scale`]).
pub async fn writer<S: Sink>(db: DatabaseConfig, queue: Queue, stats: Arc<Stats>, fence: Option<Fence>) {
    let mut rx = queue.lock().await;
    let mut conn = Conn::<S>::new(db.url.clone())
        .keeping(db.retention.clone())
        .owner_migrates(db.owner_url.is_some())
        .fenced(fence.clone());
    while let Some(first) = rx.recv().await {
        let mut batch = first.batch;
        let mut oldest = first.since;
        let mut bytes = first.bytes;
        let mut arrivals = vec![first.since_ms];
        while batch.len() < db.batch_max_rows {
            match rx.try_recv() {
                Ok(mut more) => {
                    batch.append(&mut more.batch);
                    oldest = oldest.min(more.since);
                    bytes += more.bytes;
                    arrivals.push(more.since_ms);
                }
                Err(_) => break,
            }
        }
        let rows = batch.len() as u64;
        let live: Vec<i64> = batch
            .facts
            .iter()
            .filter(|f| !f.is_historical)
            .map(|f| f.ts_ms)
            .collect();
        let since_ms = arrivals.iter().copied().min().unwrap_or(0);
        commit_since(&mut conn, batch, since_ms, &stats).await;
        if let Some(f) = &fence {
            let mut inflight = f.shared.inflight();
            arrivals.iter().for_each(|ms| inflight.done(*ms));
        }
        stats.lag.observe(oldest.elapsed());
        let now = crate::clock::now_ms() as i64;
        stats.sample_lag.observe_ms(live.iter().map(|ts| now - ts));
        stats.backlog_rows.fetch_sub(rows, Relaxed);
        stats.backlog_bytes.fetch_sub(bytes, Relaxed);
    }
}

/// Scale-out's part of a writer: this instance's name (the fence) and the
/// standby that takes back rows of a lease found lost.
#[derive(Clone)]
pub struct Fence {
    pub instance: String,
    pub shared: Arc<super::scale::Shared>,
}

/// A sink connection that is (re)opened on demand, with the backoff of
/// consecutive failures.
pub struct Conn<S> {
    url: String,
    sink: Option<S>,
    fence: Option<Fence>,
    attempt: u32,
    retention: super::retention::Retention,
    /// Another login migrates: this one only checks the schema.
    owner_migrates: bool,
}

impl<S: Sink> Conn<S> {
    /// A connection keeping everything (see [`Conn::keeping`]).
    pub fn new(url: String) -> Conn<S> {
        Conn {
            url,
            sink: None,
            fence: None,
            attempt: 0,
            retention: super::retention::Retention::forever(),
            owner_migrates: false,
        }
    }

    /// Writes only under this instance's leases (scale-out).
    pub fn fenced(mut self, fence: Option<Fence>) -> Conn<S> {
        self.fence = fence;
        self
    }

    /// Whether another login (the owner) migrates the schema.
    pub fn owner_migrates(mut self, yes: bool) -> Conn<S> {
        self.owner_migrates = yes;
        self
    }

    /// The same, keeping rows as long as `r` says.
    pub fn keeping(mut self, r: super::retention::Retention) -> Conn<S> {
        self.retention = r;
        self
    }

    /// The open sink, connecting (and migrating) first when needed;
    /// waits with backoff and tries again until the database answers.
    async fn open(&mut self, stats: &Stats) -> &mut S {
        loop {
            if self.sink.as_ref().is_some_and(|s| !s.is_closed()) {
                break;
            }
            match open_as::<S>(&self.url, !self.owner_migrates, &self.retention).await {
                Ok(mut s) => {
                    s.set_fence(self.fence.as_ref().map(|f| f.instance.clone()));
                    self.sink = Some(s);
                }
                Err(e) => self.fail(stats, &e.to_string()).await,
            }
        }
        self.sink.as_mut().expect("opened above")
    }

    async fn fail(&mut self, stats: &Stats, why: &str) {
        self.sink = None;
        stats.db_errors.fetch_add(1, Relaxed);
        stats.db_ok.store(false, Relaxed);
        if self.attempt == 0 || self.attempt.is_power_of_two() {
            tracing::error!(error = %why, attempt = self.attempt, "database write failed; retrying (nothing is dropped)");
        }
        let wait = Duration::from_millis(200).saturating_mul(1 << self.attempt.min(5));
        self.attempt = self.attempt.saturating_add(1);
        tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
    }
}

/// How one write attempt ended.
enum Attempt<E> {
    Done(Written),
    /// The rows are at fault (the database's or the driver's words).
    Refused(String),
    /// The connection or the server is at fault: retry the same rows.
    Failed(E),
}

async fn attempt<S: Sink>(sink: &mut S, b: &Batch, stats: &Stats) -> Attempt<S::Error> {
    match AssertUnwindSafe(sink.write(b)).catch_unwind().await {
        Ok(Ok(w)) => Attempt::Done(w),
        Ok(Err(e)) if S::is_data_error(&e) => Attempt::Refused(e.to_string()),
        Ok(Err(e)) => Attempt::Failed(e),
        Err(panic) => {
            stats.writer_panics.fetch_add(1, Relaxed);
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            tracing::error!(rows = b.len(), panic = %what, "a database write panicked; isolating its rows");
            Attempt::Refused(format!("the write panicked: {what}"))
        }
    }
}

/// Commits every row of `batch`: whole when it can, else the refused rows
/// isolated and quarantined (module invariants). Returns when every row is
/// committed, quarantined or counted unstorable.
pub async fn commit<S: Sink>(conn: &mut Conn<S>, batch: Batch, stats: &Stats) {
    commit_since(conn, batch, 0, stats).await
}

/// [`commit`] of rows none of which arrived before `since_ms` (what a row
/// handed back to the standby is kept with).
pub async fn commit_since<S: Sink>(conn: &mut Conn<S>, batch: Batch, since_ms: u64, stats: &Stats) {
    // Pieces still to write, the next on top; a quarantine piece holds the
    // rows that replace refused ones and is never quarantined again.
    let mut todo: Vec<(Batch, bool)> = vec![(batch, false)];
    let mut refused: Vec<QuarantineRow> = Vec::new();
    while let Some((piece, is_quarantine)) = todo.pop() {
        let t = std::time::Instant::now();
        let sink = conn.open(stats).await;
        match attempt(sink, &piece, stats).await {
            Attempt::Done(w) => {
                if conn.attempt > 0 {
                    tracing::info!("database writes succeed again");
                }
                conn.attempt = 0;
                stats.db_ok.store(true, Relaxed);
                stats.batches.fetch_add(1, Relaxed);
                stats.facts_written.fetch_add(w.facts, Relaxed);
                stats.rows_expired.fetch_add(w.expired, Relaxed);
                stats.facts_ahead.fetch_add(w.ahead, Relaxed);
                stats.facts_over_budget.fetch_add(w.over_budget, Relaxed);
                stats.quarantined.fetch_add(w.ahead + w.over_budget, Relaxed);
                stats.facts_duplicate.fetch_add(
                    (piece.facts.len() as u64).saturating_sub(w.facts + w.expired + w.ahead + w.over_budget),
                    Relaxed,
                );
                stats.raw_written.fetch_add(w.raw, Relaxed);
                let took = t.elapsed();
                stats.last_batch_us.store(took.as_micros() as u64, Relaxed);
                stats.batch_time.observe(took);
            }
            Attempt::Failed(e) => match (S::fenced(&e), &conn.fence) {
                (Some(lost), Some(fence)) => {
                    // Another instance holds these now: its rows are its to
                    // write; they wait in the standby in case it dies too.
                    let mut rest = piece;
                    for lease in lost {
                        let (keep, theirs) = rest.take_lease(lease);
                        rest = keep;
                        let n = theirs.len() as u64;
                        stats.rows_handed_over.fetch_add(n, Relaxed);
                        let now = crate::clock::now_ms();
                        let dropped = fence.shared.standby().keep(lease, since_ms, now, theirs);
                        stats.standby_dropped.fetch_add(dropped, Relaxed);
                        tracing::warn!(%lease, rows = n, "lease lost while writing: rows kept for its holder");
                    }
                    if !rest.is_empty() {
                        todo.push((rest, is_quarantine));
                    }
                }
                _ => {
                    todo.push((piece, is_quarantine));
                    conn.fail(stats, &e.to_string()).await;
                }
            },
            Attempt::Refused(why) => {
                // The connection may be in any state after a refusal or a panic.
                conn.sink = None;
                if piece.len() > 1 {
                    let (a, b) = piece.halves();
                    todo.push((b, is_quarantine));
                    todo.push((a, is_quarantine));
                } else if is_quarantine {
                    stats.rows_unstorable.fetch_add(1, Relaxed);
                    let q = piece.quarantine.first();
                    tracing::error!(topic = ?q.map(|q| &q.topic), reason = ?q.map(|q| &q.reason), database = %why,
                        "a quarantine row was refused too: the row is lost");
                } else {
                    stats.rows_refused.fetch_add(1, Relaxed);
                    stats.quarantined.fetch_add(1, Relaxed);
                    let q = piece.into_refused(&why);
                    tracing::warn!(topic = %q.topic, reason = %q.reason, "the database refused a row: quarantined");
                    refused.push(q);
                }
            }
        }
        if todo.is_empty() && !refused.is_empty() {
            let q = Batch {
                quarantine: std::mem::take(&mut refused),
                ..Batch::default()
            };
            todo.push((q, true));
        }
    }
}

impl Batch {
    /// The first half of the rows and the rest (each kind in order).
    pub fn halves(mut self) -> (Batch, Batch) {
        let mut left = self.len() / 2;
        let mut a = Batch::default();
        fn take<T>(from: &mut Vec<T>, to: &mut Vec<T>, left: &mut usize) {
            let n = (*left).min(from.len());
            to.extend(from.drain(..n));
            *left -= n;
        }
        take(&mut self.raw, &mut a.raw, &mut left);
        take(&mut self.facts, &mut a.facts, &mut left);
        take(&mut self.stale, &mut a.stale, &mut left);
        take(&mut self.states, &mut a.states, &mut left);
        take(&mut self.catalog, &mut a.catalog, &mut left);
        take(&mut self.quarantine, &mut a.quarantine, &mut left);
        take(&mut self.commands, &mut a.commands, &mut left);
        take(&mut self.oee, &mut a.oee, &mut left);
        (a, self)
    }

    /// The quarantine row that stands for this batch's one row, which the
    /// database refused for `why`.
    pub fn into_refused(self, why: &str) -> QuarantineRow {
        let why = prefix(why, 2_000);
        let key = |parts: &[&str]| parts.join("/");
        let (topic, received_ms, payload, what) = if let Some(r) = self.raw.into_iter().next() {
            (r.topic, r.received_ms, r.payload, "raw message".to_string())
        } else if let Some(f) = self.facts.into_iter().next() {
            let value = f
                .v_bytes
                .clone()
                .or_else(|| f.v_text.as_ref().map(|t| t.as_bytes().to_vec()))
                .unwrap_or_else(|| format!("{:?}", (f.v_int, f.v_float, f.v_bool)).into_bytes());
            let ts = f.ts_ms;
            (
                key(&[&f.group, &f.node, &f.device, &f.metric]),
                ts.clamp(0, super::rows::MAX_TS_MS),
                value,
                format!("fact at {ts} ms"),
            )
        } else if let Some(m) = self.stale.into_iter().next() {
            let ts = m.ts_ms;
            (
                key(&[&m.group, &m.node, &m.device, &m.metric]),
                ts.clamp(0, super::rows::MAX_TS_MS),
                Vec::new(),
                format!("STALE mark at {ts} ms"),
            )
        } else if let Some(s) = self.states.into_iter().next() {
            (key(&[&s.group, &s.node, &s.device]), 0, Vec::new(), "state".into())
        } else if let Some(c) = self.catalog.into_iter().next() {
            (
                key(&[&c.group, &c.node, &c.device, &c.metric]),
                0,
                c.properties.into_bytes(),
                "catalog entry".into(),
            )
        } else if let Some(c) = self.commands.into_iter().next() {
            (
                key(&[&c.group, &c.node, &c.device, &c.metric]),
                0,
                c.value.unwrap_or_default().into_bytes(),
                "command audit row".into(),
            )
        } else if let Some(m) = self.oee.into_iter().next() {
            (
                key(&[&m.group, &m.node, &m.machine]),
                m.ts_ms.clamp(0, super::rows::MAX_TS_MS),
                Vec::new(),
                "OEE mark".into(),
            )
        } else if let Some(q) = self.quarantine.into_iter().next() {
            (
                q.topic,
                q.received_ms,
                q.payload,
                format!("quarantine row ({})", q.reason),
            )
        } else {
            (String::new(), 0, Vec::new(), "empty batch".into())
        };
        QuarantineRow {
            topic: storable(prefix(&topic, 4_096)).into_owned(),
            received_ms: received_ms.clamp(0, super::rows::MAX_TS_MS),
            payload,
            reason: storable(&format!("the database refused this {what}: {why}")).into_owned(),
        }
    }
}

/// Keeps the rollups current on a connection of its own (writers never wait
/// for a fold), every `rollup_interval` and once more when `stop` fires.
pub async fn folder<S: Sink>(db: DatabaseConfig, stats: Arc<Stats>, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let mut sink: Option<S> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(db.rollup_interval) => fold(&db, &mut sink, &stats).await,
            _ = &mut stop => break,
        }
    }
    fold(&db, &mut sink, &stats).await;
}

/// One rollup fold; a failure is logged and counted, and the next interval tries again.
async fn fold<S: Sink>(db: &DatabaseConfig, sink: &mut Option<S>, stats: &Stats) {
    if sink.as_ref().is_none_or(S::is_closed) {
        match open::<S>(db).await {
            Ok(s) => *sink = Some(s),
            Err(_) => return, // the write path reports the outage
        }
    }
    let Some(s) = sink.as_mut() else { return };
    match s.fold().await {
        Ok(n) => {
            stats.rollup_folded.fetch_add(n, Relaxed);
        }
        Err(e) => {
            *sink = None;
            stats.db_errors.fetch_add(1, Relaxed);
            tracing::warn!(error = %e, "rollup fold failed; the pending facts stay for the next one");
        }
    }
}

/// The OEE folder (PostgreSQL): every `rollup_interval`, computes what
/// the pending marks touch and refreshes the live figures on `/metrics`;
/// a failure is logged and counted, the marks stay for the next fold.
pub async fn oee_folder(
    db: DatabaseConfig,
    cfg: Arc<super::oee::config::OeeConfig>,
    stats: Arc<Stats>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut sink: Option<super::postgres::PgSink> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(db.rollup_interval) => oee_fold(&db, &cfg, &mut sink, &stats).await,
            _ = &mut stop => break,
        }
    }
    oee_fold(&db, &cfg, &mut sink, &stats).await;
}

async fn oee_fold(
    db: &DatabaseConfig,
    cfg: &super::oee::config::OeeConfig,
    sink: &mut Option<super::postgres::PgSink>,
    stats: &Stats,
) {
    if sink.as_ref().is_none_or(Sink::is_closed) {
        match open::<super::postgres::PgSink>(db).await {
            Ok(s) => *sink = Some(s),
            Err(_) => return,
        }
    }
    let Some(s) = sink.as_mut() else { return };
    let now = crate::clock::now_ms() as i64;
    // Machines whose mapping the last birth refutes are left out (their
    // marks are dropped: a fitting birth brings new facts and marks).
    let refuted: Vec<String> = stats
        .oee_mapping
        .lock()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut fitting;
    let cfg = if refuted.is_empty() {
        cfg
    } else {
        fitting = cfg.clone();
        fitting.machines.retain(|m| !refuted.contains(&m.name));
        &fitting
    };
    let r = async {
        let n = s.fold_oee(cfg, now).await?;
        let live = s.oee_live(now).await?;
        Ok::<_, super::postgres::PgError>((n, live))
    }
    .await;
    match r {
        Ok((n, live)) => {
            stats.oee_intervals.fetch_add(n, Relaxed);
            if let Ok(mut l) = stats.oee_live.lock() {
                *l = live;
            }
        }
        Err(e) => {
            *sink = None;
            stats.db_errors.fetch_add(1, Relaxed);
            tracing::warn!(error = %e, "OEE fold failed; its marks stay for the next one");
        }
    }
}

/// A connection to `url` keeping `retention`: it migrates the schema, or,
/// when another login (the owner) does, only checks that it is current.
async fn open_as<S: Sink>(url: &str, migrates: bool, retention: &super::retention::Retention) -> Result<S, S::Error> {
    let mut s = S::connect(url).await?;
    match migrates {
        true => s.migrate().await?,
        false => s.check_schema().await?,
    };
    s.set_retention(retention, None);
    Ok(s)
}

/// An ingesting connection of `db` (`url`).
async fn open<S: Sink>(db: &DatabaseConfig) -> Result<S, S::Error> {
    open_as(&db.url, db.owner_url.is_none(), &db.retention).await
}

/// The owner's connection (migrations, retention).
async fn open_owner<S: Sink>(db: &DatabaseConfig) -> Result<S, S::Error> {
    open_as(db.owner_url.as_deref().unwrap_or(&db.url), true, &db.retention).await
}

/// Keeps the partitions ahead and the retention applied, on a connection
/// of its own: at start (so today's and the horizon's partitions exist
/// before the writers need them), then every `retention.interval`.
pub async fn retainer<S: Sink>(db: DatabaseConfig, stats: Arc<Stats>, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let mut sink: Option<S> = None;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => return,
        }
        wait = if retain(&db, &mut sink, &stats).await {
            db.retention.interval
        } else {
            // Not done (no database yet, or it failed): again soon.
            db.retention.interval.min(Duration::from_secs(30))
        };
    }
}

/// One retention run; true when it ran to the end.
async fn retain<S: Sink>(db: &DatabaseConfig, sink: &mut Option<S>, stats: &Stats) -> bool {
    if sink.as_ref().is_none_or(S::is_closed) {
        match open_owner::<S>(db).await {
            Ok(s) => *sink = Some(s),
            Err(e) => {
                stats.retention_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "the schema owner's connection failed; migrations and retention wait");
                return false;
            }
        }
    }
    let Some(s) = sink.as_mut() else { return false };
    match s.retain(crate::clock::now_ms() as i64).await {
        Ok(r) => {
            stats.retention_runs.fetch_add(1, Relaxed);
            stats.partitions_created.fetch_add(r.created.len() as u64, Relaxed);
            stats.partitions_dropped.fetch_add(r.dropped.len() as u64, Relaxed);
            stats.retention_deleted_rows.fetch_add(r.deleted_rows, Relaxed);
            if !r.dropped.is_empty() || r.deleted_rows > 0 {
                tracing::info!(dropped = ?r.dropped, deleted_rows = r.deleted_rows, "retention applied");
            }
            true
        }
        Err(e) => {
            *sink = None;
            stats.retention_errors.fetch_add(1, Relaxed);
            tracing::warn!(error = %e, "retention run failed; the next one tries again");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparkplug::host::HostEvent;
    use crate::sparkplug::{Metric, Value};

    fn batch(n: usize) -> Batch {
        let mut b = Batch::default();
        b.add_raw("spBv1.0/G/NDATA/N", b"x", 1);
        b.add_event(
            &HostEvent::data(
                "G",
                "N",
                None,
                1,
                Some(1),
                (0..n)
                    .map(|i| Metric::new(format!("m{i}"), Value::Int32(1), 1))
                    .collect(),
            ),
            1,
        );
        b
    }

    #[test]
    fn halves_keep_every_row_once_and_in_order() {
        let b = batch(5);
        let (a, c) = b.clone().halves();
        assert_eq!(a.len() + c.len(), b.len());
        assert_eq!(a.len(), 3);
        let mut back = a;
        back.append(&mut c.clone());
        assert_eq!(back, b);
    }

    #[test]
    fn a_refused_fact_keeps_its_key_value_and_the_databases_words() {
        let mut b = Batch {
            facts: batch(1).facts,
            ..Batch::default()
        };
        b.facts[0].v_text = Some("a\0b".into());
        let q = b.into_refused("ERROR 22021: invalid byte sequence for encoding \"UTF8\": 0x00");
        assert_eq!(q.topic, "G/N//m0");
        assert_eq!(q.payload, b"a\0b");
        assert!(q.reason.contains("fact at 1 ms"), "{}", q.reason);
        assert!(q.reason.contains("22021"), "{}", q.reason);
    }
}
