//! Store-and-forward: samples that could not be published wait here, oldest
//! first, and are replayed as historical after the next birth.
//!
//! [`disk::DiskQueue`] is the durable queue (a log of checksummed segment
//! files, written at once, synced on an interval, bounded on the files' size,
//! survives restarts). The gateway holds it through [`LazyStore`], which
//! opens it only while there is something to keep: a gateway that is online
//! keeps no files open, and a drained queue is closed and its directory
//! deleted (and that deletion synced, so a power cut cannot bring old ids
//! back beside new ones). [`MemoryStore`] is the same FIFO in memory, for
//! tests and tools that need no disk.
//!
//! Invariants: FIFO order; the bound holds after every append; every dropped
//! metric is counted; the bound shrinks to what the file system can still
//! hold, so a filling disk drops the oldest samples like a full store
//! instead of failing writes; an appended record survives SIGKILL at once
//! (tests/queue_crash.rs) and a power cut once synced (tests/power_cut.rs).
//!
//! A store that failed a write is not left closed: after [`RETRY_AFTER`] a
//! new one is opened beside it (`<dir>.retry-<n>`), its ids continuing the
//! failed one's, so no confirmation meant for the old store can touch the
//! new. What the failed store holds stays on disk and is merged back, in
//! order, at the next start.

pub mod disk;
pub mod forward;
pub mod outbox;
pub mod thread;

use std::collections::VecDeque;
use std::path::PathBuf;

use disk::{DiskOptions, DiskQueue, QueueError, QueueStats};
use outbox::Encoded;

use crate::sparkplug::Metric;

/// Samples of one device (or of the node) that wait to be replayed.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub device: Option<String>,
    pub metrics: Vec<Metric>,
}

impl Record {
    /// An estimate of the memory a record holds, for the byte bound.
    pub fn size(&self) -> usize {
        64 + self.device.as_ref().map_or(0, String::len)
            + self
                .metrics
                .iter()
                .map(|m| 96 + m.name.as_ref().map_or(0, String::len))
                .sum::<usize>()
    }
}

/// The durable queue, open only while it holds records. Ids only grow within
/// a run, across drains and failed stores; a new run continues from what is
/// on disk (from 0 when nothing is), and its replay starts at the head.
pub struct LazyStore {
    dir: PathBuf,
    opts: DiskOptions,
    queue: Option<DiskQueue>,
    /// Counters of queues closed before (drops, corrupt records, writes).
    past: QueueStats,
    /// Timestamp (ms) of the oldest sample stored, while any is.
    oldest_ms: Option<u64>,
    /// The bound in force at the last append (≤ `opts.max_bytes`).
    limit: u64,
    /// Why the store is unusable, after a failed write or sync, and when.
    failed: Option<(String, std::time::Instant)>,
    /// 0: the store lives in `dir`; n: in `<dir>.retry-<n>` (a store that
    /// failed a write is abandoned for the next generation).
    generation: u32,
    /// The first id of a store opened to replace a failed one.
    next_first_id: u64,
}

/// How long a store that failed a write stays closed before a new one is tried.
pub const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Room kept free on the file system besides the store.
const DISK_RESERVE: u64 = 4 << 20;

fn oldest_in(records: &[Record]) -> Option<u64> {
    records
        .iter()
        .flat_map(|r| r.metrics.iter().filter_map(|m| m.timestamp))
        .min()
}

fn oldest_encoded(records: &[Encoded]) -> Option<u64> {
    records.iter().filter_map(|e| e.oldest_ms).min()
}

impl LazyStore {
    /// Opens the queue now only if a previous run left one (to replay it).
    pub fn open(dir: PathBuf, opts: DiskOptions) -> Result<LazyStore, QueueError> {
        let mut s = LazyStore {
            dir,
            opts,
            queue: None,
            past: QueueStats::default(),
            oldest_ms: None,
            limit: opts.max_bytes,
            failed: None,
            generation: 0,
            next_first_id: 0,
        };
        let leftovers = s.retry_dirs();
        if s.dir.exists() || !leftovers.is_empty() {
            if s.dir.join("conf").exists() || s.dir.join("db").exists() {
                s.set_aside("written by sled, the store of development builds before the segment log");
            }
            s.queue = Some(DiskQueue::open(&s.dir, s.opts)?);
            s.merge(leftovers)?;
            s.close_if_drained();
            s.oldest_ms = s.head_timestamp()?;
        }
        Ok(s)
    }

    /// The directory of the store in use.
    fn active_dir(&self) -> PathBuf {
        match self.generation {
            0 => self.dir.clone(),
            n => self.retry_dir(n),
        }
    }

    fn retry_dir(&self, n: u32) -> PathBuf {
        let name = self
            .dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        self.dir.with_file_name(format!("{name}.retry-{n}"))
    }

    /// Stores a previous run opened after a failure, oldest first.
    fn retry_dirs(&self) -> Vec<PathBuf> {
        let (Some(parent), Some(name)) = (self.dir.parent(), self.dir.file_name()) else {
            return Vec::new();
        };
        let prefix = format!("{}.retry-", name.to_string_lossy());
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(parent)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().strip_prefix(&prefix)?.parse().ok()?;
                Some((n, e.path()))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, p)| p).collect()
    }

    /// Appends the records of stores opened after a failure (newer than
    /// the main one's) to the main store, in order, then deletes them.
    fn merge(&mut self, leftovers: Vec<PathBuf>) -> Result<(), QueueError> {
        for dir in leftovers {
            let mut old = match DiskQueue::open(&dir, self.opts) {
                Ok(q) => q,
                Err(e) => {
                    tracing::error!(store = %dir.display(), error = %e, "a store opened after a failure cannot be read; left in place");
                    continue;
                }
            };
            let mut cursor = None;
            let mut moved = 0usize;
            loop {
                let batch = old.read_after(cursor, 1_000)?;
                let Some(&(last, _)) = batch.last() else { break };
                cursor = Some(last);
                let records: Vec<Record> = batch.into_iter().map(|(_, r)| r).collect();
                moved += records.len();
                self.queue()?.append_batch(&records)?;
            }
            self.past.add(old.stats());
            drop(old);
            tracing::info!(store = %dir.display(), records = moved, "records of a store opened after a failure merged back");
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(store = %dir.display(), error = %e, "could not remove a merged store");
            }
        }
        Ok(())
    }

    /// The directory holds a store this build cannot read: move it aside
    /// for inspection, count what its manifest says it held, and start an
    /// empty store.
    fn set_aside(&mut self, why: &str) {
        let lost = disk::read_manifest(&self.dir).map_or(0, |(next, first)| next - first);
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = self.dir.with_extension(format!("damaged-{secs}"));
        let moved = std::fs::rename(&self.dir, &aside);
        tracing::error!(
            store = %self.dir.display(), error = %why, lost_records = lost, moved_to = %aside.display(),
            moved = moved.is_ok(), "the store cannot be opened: its files were moved aside and a new store started"
        );
        self.past.corrupt_records += lost.max(1);
    }

    fn queue(&mut self) -> Result<&mut DiskQueue, QueueError> {
        if let Some((why, at)) = &self.failed {
            if at.elapsed() < RETRY_AFTER {
                return Err(QueueError::Unusable {
                    path: self.active_dir().display().to_string(),
                    why: why.clone(),
                });
            }
            // Time to try a new store beside the failed one.
            self.generation += 1;
            let dir = self.active_dir();
            match DiskQueue::open_from(&dir, self.opts, self.next_first_id) {
                Ok(q) => {
                    tracing::warn!(store = %dir.display(), first_id = self.next_first_id,
                        "a new store is open after the failed one; what the failed one holds is merged back at the next start");
                    self.failed = None;
                    self.queue = Some(q);
                }
                Err(e) => {
                    self.failed = Some((e.to_string(), std::time::Instant::now()));
                    return Err(e);
                }
            }
        }
        if self.queue.is_none() {
            let q = DiskQueue::open_from(&self.active_dir(), self.opts, self.next_first_id)?;
            self.queue = Some(q);
        }
        Ok(self.queue.as_mut().expect("opened above"))
    }

    /// The bound for the next append: `max_bytes`, or less when the file
    /// system cannot hold that much (free space plus what the store's files
    /// already take, less a reserve: the bound is on the files' size).
    fn fit_to_disk(&mut self) -> u64 {
        let configured = self.opts.max_bytes;
        let parent = self.dir.parent().unwrap_or(&self.dir);
        let Ok(st) = nix::sys::statvfs::statvfs(parent) else {
            return configured;
        };
        // fsblkcnt_t and c_ulong are 32 bits on some targets: keep the casts.
        #[allow(clippy::unnecessary_cast)]
        let free = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
        let used = self.queue.as_ref().map_or(0, DiskQueue::disk_bytes);
        let fits = free.saturating_add(used).saturating_sub(DISK_RESERVE);
        configured.min(fits.max(64 * 1024))
    }

    /// New options (a reload): the bound applies from the next append, the
    /// sync policy from the next append or tick.
    pub fn set_options(&mut self, opts: DiskOptions) {
        self.opts = opts;
        if let Some(q) = self.queue.as_mut() {
            q.set_sync(opts.sync_interval, opts.sync_records);
        }
    }

    /// The bound in force at the last append (`max_bytes` unless the disk is short).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The configured bound, `store.max_bytes`.
    pub fn max_bytes(&self) -> u64 {
        self.opts.max_bytes
    }

    /// Appends `records` as one group commit; returns once they are written
    /// (and synced, if the sync is due).
    ///
    /// After a failed write (a disk filled by something else faster than the
    /// bound could follow) what part of it landed is unknown, so the queue is
    /// closed as it is (the next start cuts a torn frame off and merges it
    /// back) and the store answers [`QueueError::Unusable`] until
    /// [`RETRY_AFTER`], when a new store is opened beside it.
    pub fn append_batch(&mut self, records: &[Record]) -> Result<(u64, Dropped), QueueError> {
        let encoded: Vec<Encoded> = records.iter().map(Encoded::of).collect();
        self.append_encoded(&encoded)
    }

    /// [`append_batch`](Self::append_batch) for samples as the outbox keeps
    /// them: their bytes are written as they are.
    pub fn append_encoded(&mut self, records: &[Encoded]) -> Result<(u64, Dropped), QueueError> {
        if records.is_empty() {
            // Nothing to keep: do not open (or create) the queue for it.
            return Ok((0, Dropped::default()));
        }
        self.limit = self.fit_to_disk();
        let limit = self.limit;
        let q = self.queue()?;
        q.set_max_bytes(limit);
        let out = match q.append_encoded(records) {
            Ok(out) => out,
            Err(e) => return Err(self.fail(e)),
        };
        if out.1.records > 0 {
            // The oldest were dropped: the head tells what is oldest now.
            self.oldest_ms = self.head_timestamp()?;
        } else if self.oldest_ms.is_none() {
            self.oldest_ms = oldest_encoded(records);
        }
        Ok(out)
    }

    fn head_timestamp(&mut self) -> Result<Option<u64>, QueueError> {
        let head = self.read_after(None, 1)?;
        Ok(head.first().and_then(|(_, r)| oldest_in(std::slice::from_ref(r))))
    }

    /// Timestamp (ms since the epoch) of the oldest sample still stored.
    pub fn oldest_timestamp(&self) -> Option<u64> {
        self.oldest_ms
    }

    /// Up to `max` records after `cursor`, oldest first (none while closed).
    pub fn read_after(&mut self, cursor: Option<u64>, max: usize) -> Result<Vec<(u64, Record)>, QueueError> {
        match self.queue.as_mut() {
            Some(q) => q.read_after(cursor, max),
            None => Ok(Vec::new()),
        }
    }

    /// Like [`read_after`](Self::read_after), stopping before the records'
    /// metrics would pass `max_metrics` (one record at least).
    pub fn read_batch(
        &mut self,
        cursor: Option<u64>,
        max: usize,
        max_metrics: u64,
    ) -> Result<Vec<(u64, Record)>, QueueError> {
        match self.queue.as_mut() {
            Some(q) => q.read_batch(cursor, max, max_metrics),
            None => Ok(Vec::new()),
        }
    }

    /// Removes every record with an id ≤ `id`; closes and deletes a drained queue.
    pub fn confirm_through(&mut self, id: u64) -> Result<usize, QueueError> {
        let n = match self.queue.as_mut() {
            Some(q) => q.confirm_through(id)?,
            None => 0,
        };
        self.close_if_drained();
        if n > 0 {
            self.oldest_ms = self.head_timestamp()?;
        }
        Ok(n)
    }

    fn close_if_drained(&mut self) {
        let Some(q) = self.queue.as_ref() else { return };
        if q.stats().records > 0 {
            return;
        }
        let st = q.stats();
        self.past.add(st);
        // Ids never go back within a run: a replay cursor taken before the
        // drain can never skip a record appended after it.
        self.next_first_id = q.next_id();
        self.queue = None;
        let dir = self.active_dir();
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(store = %dir.display(), error = %e, "could not remove the drained store");
        }
        // The deletion is made durable before a new store can reuse its ids.
        if let Some(parent) = dir.parent() {
            if let Err(e) = disk::sync_dir(parent) {
                tracing::warn!(store = %dir.display(), error = %e, "could not sync the removal of the drained store");
            }
        }
    }

    /// Syncs an open queue and persists its head (on shutdown).
    pub fn flush(&mut self) -> Result<(), QueueError> {
        match self.queue.as_mut() {
            Some(q) => q.flush(),
            None => Ok(()),
        }
    }

    /// Syncs when the interval has passed (call on a timer). A failed sync
    /// fails the store like a failed write: after a failed `fdatasync` the
    /// kernel may have dropped the data, so nothing written since the last
    /// good sync is trusted to this store any more.
    pub fn tick(&mut self) -> Result<(), QueueError> {
        let Some(q) = self.queue.as_mut() else { return Ok(()) };
        match q.tick() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Closes the store after a failed write or sync; a new one is tried
    /// after [`RETRY_AFTER`].
    fn fail(&mut self, e: QueueError) -> QueueError {
        if let Some(q) = self.queue.take() {
            self.past.add(q.stats());
            // The next store's ids continue after every id this one gave.
            self.next_first_id = q.next_id();
        }
        self.failed = Some((e.to_string(), std::time::Instant::now()));
        e
    }

    /// Metrics written but not yet synced: what a power cut now would lose.
    pub fn unsynced_metrics(&self) -> u64 {
        self.queue.as_ref().map_or(0, DiskQueue::unsynced_metrics)
    }

    /// Bytes the open store's files take.
    pub fn file_bytes(&self) -> u64 {
        self.queue.as_ref().map_or(0, DiskQueue::file_bytes)
    }

    /// Opens a new store when a failed one has waited [`RETRY_AFTER`]
    /// (closed again at once if there is nothing to keep), so that the
    /// failure clears without waiting for the next sample to store.
    pub fn retry_if_due(&mut self) {
        if self.failed.as_ref().is_some_and(|(_, at)| at.elapsed() >= RETRY_AFTER) && self.queue().is_ok() {
            self.close_if_drained();
        }
    }

    /// Why the store does not accept writes now, if it does not (a new
    /// store is tried [`RETRY_AFTER`] the failure).
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_ref().map(|(why, _)| why.as_str())
    }

    /// Whether the disk queue is open.
    pub fn is_open(&self) -> bool {
        self.queue.is_some()
    }

    /// Live counts of the open queue plus everything counted before.
    pub fn stats(&self) -> QueueStats {
        let mut st = self.queue.as_ref().map(DiskQueue::stats).unwrap_or_default();
        st.dropped_metrics += self.past.dropped_metrics;
        st.corrupt_records += self.past.corrupt_records;
        st.bytes_written += self.past.bytes_written;
        st.syncs += self.past.syncs;
        st.synced_metrics += self.past.synced_metrics;
        st
    }
}

/// A bounded FIFO of records in memory.
#[derive(Debug)]
pub struct MemoryStore {
    queue: VecDeque<Record>,
    bytes: usize,
    max_bytes: usize,
    metrics: usize,
}

/// What `push` had to drop to stay within bounds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub records: usize,
    pub metrics: usize,
}

impl MemoryStore {
    pub fn new(max_bytes: u64) -> MemoryStore {
        MemoryStore {
            queue: VecDeque::new(),
            bytes: 0,
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            metrics: 0,
        }
    }

    /// Appends; drops the oldest records while over the bound.
    pub fn push(&mut self, r: Record) -> Dropped {
        self.bytes += r.size();
        self.metrics += r.metrics.len();
        self.queue.push_back(r);
        let mut dropped = Dropped::default();
        while self.bytes > self.max_bytes && self.queue.len() > 1 {
            if let Some(old) = self.queue.pop_front() {
                self.bytes -= old.size();
                self.metrics -= old.metrics.len();
                dropped.records += 1;
                dropped.metrics += old.metrics.len();
            }
        }
        dropped
    }

    /// Takes the oldest record.
    pub fn pop(&mut self) -> Option<Record> {
        let r = self.queue.pop_front()?;
        self.bytes -= r.size();
        self.metrics -= r.metrics.len();
        Some(r)
    }

    /// Puts a record back at the head (it could not be replayed yet).
    pub fn unpop(&mut self, r: Record) {
        self.bytes += r.size();
        self.metrics += r.metrics.len();
        self.queue.push_front(r);
    }

    pub fn len_metrics(&self) -> usize {
        self.metrics
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparkplug::Value;

    fn rec(v: i32) -> Record {
        Record {
            device: Some("d".into()),
            metrics: vec![Metric::new("m", Value::Int32(v), 0)],
        }
    }

    #[test]
    fn the_lazy_store_opens_on_first_append_and_deletes_itself_when_drained() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("queue");
        let mut s = LazyStore::open(dir.clone(), DiskOptions::default()).expect("open");
        assert!(!s.is_open() && !dir.exists(), "nothing stored, nothing open");
        let (first, _) = s.append_batch(&[rec(1), rec(2)]).expect("append");
        assert!(s.is_open() && dir.exists());
        assert_eq!(s.oldest_timestamp(), Some(0), "rec() samples carry timestamp 0");
        drop(s);
        let mut s = LazyStore::open(dir.clone(), DiskOptions::default()).expect("reopen");
        assert!(s.is_open(), "a store left by a previous run is opened to replay it");
        let got = s.read_after(None, 10).expect("read");
        assert_eq!(
            got.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
            vec![rec(1), rec(2)]
        );
        s.confirm_through(first).expect("confirm");
        assert!(s.is_open(), "one record left");
        s.confirm_through(first + 1).expect("confirm");
        assert!(!s.is_open() && !dir.exists(), "drained: closed and deleted");
        assert_eq!((s.stats().records, s.oldest_timestamp()), (0, None));
        let (again, _) = s.append_batch(&[rec(3)]).expect("append");
        assert_eq!(
            again,
            first + 2,
            "ids go on after a drain: a replay cursor taken before it skips nothing"
        );
    }

    #[test]
    fn a_store_this_build_cannot_read_is_moved_aside_counted_and_replaced_by_an_empty_one() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("queue");
        // What a development build's sled store left: its files and manifest.
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("conf"), b"segment_size: 524288").expect("sled");
        std::fs::write(dir.join("db"), vec![0xa5; 4096]).expect("sled");
        std::fs::write(dir.join("manifest"), b"3 0").expect("sled");
        let s = LazyStore::open(dir.clone(), DiskOptions::default()).expect("starts anyway");
        assert_eq!(s.stats().records, 0);
        assert_eq!(
            s.stats().corrupt_records,
            3,
            "the manifest's three records are counted lost"
        );
        let aside: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("queue.damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "kept for inspection");
    }

    #[test]
    fn a_reload_changes_the_sync_policy_of_the_open_store() {
        let tmp = tempfile::tempdir().expect("tmp");
        let lazy = DiskOptions {
            sync_interval: std::time::Duration::from_secs(10),
            ..DiskOptions::default()
        };
        let mut s = LazyStore::open(tmp.path().join("queue"), lazy).expect("open");
        s.append_batch(&[rec(1)]).expect("append");
        assert_eq!(s.unsynced_metrics(), 1, "waits for the 10 s interval");
        s.set_options(DiskOptions {
            sync_interval: std::time::Duration::ZERO,
            ..lazy
        });
        s.append_batch(&[rec(2)]).expect("append");
        assert_eq!(s.unsynced_metrics(), 0, "every write synced from now on");
        assert_eq!(s.stats().synced_metrics, 2);
    }

    #[test]
    fn fifo_order_and_unpop_restores_the_head() {
        let mut s = MemoryStore::new(1 << 20);
        s.push(rec(1));
        s.push(rec(2));
        let head = s.pop().expect("one");
        s.unpop(head);
        assert_eq!(s.pop(), Some(rec(1)));
        assert_eq!(s.pop(), Some(rec(2)));
        assert_eq!((s.pop(), s.bytes(), s.len_metrics()), (None, 0, 0));
    }

    #[test]
    fn full_store_drops_the_oldest_and_counts_them() {
        let one = rec(0).size();
        let mut s = MemoryStore::new((one * 3) as u64);
        let mut dropped = 0;
        for v in 0..10 {
            dropped += s.push(rec(v)).metrics;
        }
        assert_eq!(dropped, 7);
        assert!(s.bytes() <= one * 3);
        assert_eq!(s.pop(), Some(rec(7)));
    }

    #[test]
    fn records_of_a_store_opened_after_a_failure_are_merged_back_in_order_at_the_next_start() {
        use crate::sparkplug::{Metric, Value};
        let rec = |v: i64| Record {
            device: None,
            metrics: vec![Metric::new("C", Value::Int64(v), 1_000 + v as u64)],
        };
        let root = tempfile::tempdir().expect("tmp");
        let dir = root.path().join("queue");
        let opts = DiskOptions::default();
        {
            // The failed store (generation 0) and the one opened after it,
            // whose ids continue the failed one's.
            let mut old = DiskQueue::open(&dir, opts).expect("open");
            old.append_batch(&(0..3).map(rec).collect::<Vec<_>>()).expect("append");
            let mut new = DiskQueue::open_from(&root.path().join("queue.retry-1"), opts, old.next_id()).expect("open");
            let (first, _) = new.append_batch(&(3..5).map(rec).collect::<Vec<_>>()).expect("append");
            assert_eq!(first, 3, "ids continue, so no old confirmation can name a new record");
        }
        let mut s = LazyStore::open(dir.clone(), opts).expect("open");
        let got: Vec<i64> = s
            .read_after(None, 100)
            .expect("read")
            .into_iter()
            .map(|(_, r)| match r.metrics[0].value {
                Some(Value::Int64(v)) => v,
                ref other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4], "every record once, oldest first");
        assert!(
            !root.path().join("queue.retry-1").exists(),
            "the merged store is removed"
        );
    }
}
