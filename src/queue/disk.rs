//! The durable store-and-forward queue on sled 0.34.
//!
//! Invariants, in the order they are relied on:
//! 1. **FIFO by id.** Every record gets the next u64 id (big-endian key, so
//!    sled's order is append order); ids are never reused, also across reopen.
//! 2. **Checksummed.** A value is `crc32 | version | metric count | device |
//!    Sparkplug payload`; the CRC covers everything after itself. A record
//!    that fails it (torn write, bit rot, a bad edit) is moved to the
//!    `quarantine` tree on open or on read, counted, and never returned,
//!    never a panic and never a silent skip.
//! 3. **Nothing leaves before it is confirmed.** Reading does not remove:
//!    the caller replays from a cursor and calls [`DiskQueue::confirm_through`]
//!    only once the broker has provably read the data (docs/ARCHITECTURE.md
//!    decision 3).
//! 4. **Bounded.** The live records' bytes stay under `max_bytes`: an append
//!    that would exceed it drops the oldest records first, counted in
//!    [`Dropped`] for the caller to log at ERROR.
//! 5. **Group commit.** `append_batch` writes a batch and returns only after
//!    its flush (write + fsync): what it acknowledged survives SIGKILL and
//!    power cuts (56k appends/s in batches of 100, BENCHMARKS.md). Single
//!    `append`s flush every `flush_every` appends or `flush_interval`; sled
//!    keeps unflushed writes in process memory, so for them SIGKILL has the
//!    same window as a power cut.
//!
//! 6. **Truncation is detected.** sled recovers a damaged log by cutting it
//!    at the first bad entry and says nothing: measured, a 64-byte flip in the
//!    middle of its file silently lost 39% to 100% of 209 stored records,
//!    depending on where it hit. After every flush and confirmation the queue
//!    writes a `manifest` beside sled's files (the next id and the oldest live
//!    id); on open, ids the manifest promises but sled no longer has are
//!    reported at ERROR and counted as corrupt, never skipped silently.
//!    The manifest is itself checked against what sled recovered: one that
//!    promises more records than the store could ever hold (a damaged or
//!    edited file, `18446744073709551614 0`) is reported and not believed,
//!    and every id is computed with checked arithmetic, so ids can never
//!    wrap onto live records.
//!
//! sled's page cache is capped (`cache_bytes`, default 4 MiB; its own
//! default is 1 GiB), and sled does not give deleted space back to the file
//! system by itself.

use std::path::Path;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::{Dropped, Record};
use crate::sparkplug::codec::{encode_iter, Datatypes, Payload};

/// Why the queue could not do what was asked.
#[derive(Debug, Error)]
pub enum QueueError {
    #[error("store {path}: {source}")]
    Sled { path: String, source: sled::Error },
    #[error("store: a record could not be encoded: {0}")]
    Encode(String),
    #[error("store {path} failed a write ({why}) and is closed until a restart; what it held stays on disk for then")]
    Unusable { path: String, why: String },
    #[error("store: record ids are exhausted (a record holds id 2^64-1); move the store aside")]
    IdsExhausted,
}

/// Tuning of a [`DiskQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskOptions {
    pub max_bytes: u64,
    pub flush_every: u32,
    pub flush_interval: Duration,
    pub cache_bytes: u64,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            max_bytes: 256 * 1024 * 1024,
            flush_every: 100,
            flush_interval: Duration::from_millis(200),
            cache_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Counters for `/metrics` and `/ready`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub records: u64,
    pub metrics: u64,
    pub bytes: u64,
    pub dropped_metrics: u64,
    pub corrupt_records: u64,
}

const VERSION: u8 = 1;

/// What the manifest says: `(next_id, oldest live id)`.
pub fn read_manifest(dir: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join("manifest")).ok()?;
    let parsed = parse_manifest(&text);
    if parsed.is_none() {
        tracing::warn!(store = %dir.display(), "the store's manifest is unreadable; losses cannot be checked this time");
    }
    parsed
}

/// A manifest's text: `next_id oldest_id`, with `oldest ≤ next`.
pub fn parse_manifest(text: &str) -> Option<(u64, u64)> {
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(next)), Some(Ok(first))) if first <= next => Some((next, first)),
        _ => None,
    }
}

/// A stored record's bytes, checked (CRC, version, counts) and decoded;
/// why not, for anything else.
pub fn decode_record(v: &[u8]) -> Result<Record, String> {
    decode(v)
}
const HEADER: usize = 4 + 1 + 4 + 2;

fn encode(r: &Record) -> Result<Vec<u8>, QueueError> {
    let device = r.device.as_deref().unwrap_or("");
    let device_len = u16::try_from(device.len()).map_err(|_| QueueError::Encode("device name too long".into()))?;
    let payload = encode_iter(
        None,
        None,
        r.metrics.iter().map(std::borrow::Cow::Borrowed),
        Datatypes::Include,
    )
    .map_err(|e| QueueError::Encode(e.to_string()))?;
    let mut v = Vec::with_capacity(HEADER + device.len() + payload.len());
    v.extend_from_slice(&[0; 4]);
    v.push(VERSION);
    v.extend_from_slice(&(r.metrics.len() as u32).to_le_bytes());
    v.extend_from_slice(&device_len.to_le_bytes());
    v.extend_from_slice(device.as_bytes());
    v.extend_from_slice(&payload);
    let crc = crc32fast::hash(&v[4..]);
    v[..4].copy_from_slice(&crc.to_le_bytes());
    Ok(v)
}

/// Checks and decodes a stored value; `Err` says why it is corrupt.
fn decode(v: &[u8]) -> Result<Record, String> {
    if v.len() < HEADER {
        return Err(format!("{} bytes, shorter than a header", v.len()));
    }
    let crc = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
    if crc32fast::hash(&v[4..]) != crc {
        return Err("checksum mismatch".into());
    }
    if v[4] != VERSION {
        return Err(format!("unknown record version {}", v[4]));
    }
    let count = u32::from_le_bytes([v[5], v[6], v[7], v[8]]) as usize;
    let dlen = usize::from(u16::from_le_bytes([v[9], v[10]]));
    let device = v.get(HEADER..HEADER + dlen).ok_or("device name runs past the record")?;
    let device = std::str::from_utf8(device).map_err(|_| "device name is not UTF-8")?;
    let payload = Payload::decode(&v[HEADER + dlen..]).map_err(|e| e.to_string())?;
    if payload.metrics.len() != count {
        return Err(format!("{} metrics, header says {count}", payload.metrics.len()));
    }
    Ok(Record {
        device: (!device.is_empty()).then(|| device.to_string()),
        metrics: payload.metrics,
    })
}

fn metric_count(v: &[u8]) -> u64 {
    v.get(5..9)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]).into())
}

/// A durable FIFO of [`Record`]s. See the module docs for its invariants.
pub struct DiskQueue {
    path: String,
    db: sled::Db,
    records: sled::Tree,
    quarantine: sled::Tree,
    /// `next_id`, so ids are never reused even after every record was confirmed.
    meta: sled::Tree,
    opts: DiskOptions,
    next_id: u64,
    stats: QueueStats,
    unflushed: u32,
    last_flush: Instant,
}

impl DiskQueue {
    /// Opens (or creates) the queue in `dir`, checking every record.
    pub fn open(dir: &Path, opts: DiskOptions) -> Result<DiskQueue, QueueError> {
        Self::open_from(dir, opts, 0)
    }

    /// Opens like [`open`](Self::open), with ids starting at `first_id` at
    /// the least (a store that replaces a failed one continues its ids, so
    /// that no id of the old one can name a record of the new).
    pub fn open_from(dir: &Path, opts: DiskOptions, first_id: u64) -> Result<DiskQueue, QueueError> {
        let path = dir.display().to_string();
        let err = |source| QueueError::Sled {
            path: path.clone(),
            source,
        };
        // sled releases its file lock asynchronously after a close: a quick
        // restart retries for up to 2 s before giving up.
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_bytes)
            .flush_every_ms(None);
        let deadline = Instant::now() + Duration::from_secs(2);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(err(e)),
            }
        };
        let records = db.open_tree("records").map_err(err)?;
        let quarantine = db.open_tree("quarantine").map_err(err)?;
        let meta = db.open_tree("meta").map_err(err)?;
        let mut q = DiskQueue {
            meta,
            path: path.clone(),
            db,
            records,
            quarantine,
            opts,
            next_id: 0,
            stats: QueueStats::default(),
            unflushed: 0,
            last_flush: Instant::now(),
        };
        q.stats.corrupt_records = q.quarantine.len() as u64;
        let mut bad = Vec::new();
        for item in q.records.iter() {
            let (k, v) = item.map_err(err)?;
            match decode(&v) {
                Ok(r) => {
                    q.stats.records += 1;
                    q.stats.metrics += r.metrics.len() as u64;
                    q.stats.bytes += v.len() as u64;
                }
                Err(why) => bad.push((k, v, why)),
            }
        }
        // Not counted in the stats above, so nothing to subtract.
        q.quarantine_all(bad, false)?;
        let last = |t: &sled::Tree| -> Result<u64, QueueError> {
            // A key of u64::MAX (bit rot) leaves no id after it: the
            // append then fails loudly instead of wrapping.
            Ok(t.last().map_err(err)?.map_or(0, |(k, _)| key_id(&k).saturating_add(1)))
        };
        let stored = q
            .meta
            .get(b"next_id")
            .map_err(err)?
            .and_then(|v| v.as_ref().try_into().ok())
            .map(u64::from_be_bytes);
        let recovered = last(&q.records)?
            .max(last(&q.quarantine)?)
            .max(stored.unwrap_or(0))
            .max(first_id);
        q.next_id = recovered;
        let manifest = read_manifest(dir).filter(|&(next, first)| {
            // The most records the store can hold: a manifest that promises
            // more than that beyond what sled has is not believed.
            let most = q.opts.max_bytes / HEADER as u64 + 1;
            let credible = next.saturating_sub(first.max(recovered)) <= most;
            if !credible {
                tracing::error!(
                    store = %path, manifest_next = next, manifest_first = first, recovered_through = recovered.checked_sub(1),
                    "the store's manifest promises more records than the store can hold: not believed (damaged or edited)"
                );
            }
            credible
        });
        if let Some((next, first)) = manifest {
            let lost = next.saturating_sub(first.max(recovered));
            if lost > 0 {
                tracing::error!(
                    store = %path, lost_records = lost, recovered_through = recovered.checked_sub(1),
                    written_through = next - 1,
                    "the store's files are damaged: sled recovered its log only in part; the records written after the damage are lost"
                );
                q.stats.corrupt_records += lost;
            }
            q.next_id = q.next_id.max(next);
        }
        q.flush()?;
        Ok(q)
    }

    fn err(&self, source: sled::Error) -> QueueError {
        QueueError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends a record; drops the oldest records if the bound is exceeded.
    /// The record may sit in sled's memory until the next group flush: a
    /// SIGKILL before it loses it (BENCHMARKS.md, "What survives SIGKILL").
    /// Use [`append_batch`](Self::append_batch) where that matters.
    pub fn append(&mut self, r: &Record) -> Result<(u64, Dropped), QueueError> {
        let out = self.insert(r)?;
        self.unflushed += 1;
        if self.unflushed >= self.opts.flush_every || self.last_flush.elapsed() >= self.opts.flush_interval {
            self.flush()?;
        }
        Ok(out)
    }

    /// Appends `records` as one group commit and returns only once they are
    /// written and fsynced: acknowledged records survive SIGKILL and power
    /// cuts alike (tests/queue_crash.rs kills a writer 20 times in a row).
    /// The ids are consecutive, from the returned first id.
    pub fn append_batch(&mut self, records: &[Record]) -> Result<(u64, Dropped), QueueError> {
        let first = self.next_id;
        let mut dropped = Dropped::default();
        for r in records {
            let (_, d) = self.insert(r)?;
            dropped.records += d.records;
            dropped.metrics += d.metrics;
        }
        self.flush()?;
        Ok((first, dropped))
    }

    fn insert(&mut self, r: &Record) -> Result<(u64, Dropped), QueueError> {
        let v = encode(r)?;
        let id = self.next_id;
        self.next_id = id.checked_add(1).ok_or(QueueError::IdsExhausted)?;
        let len = v.len() as u64;
        self.records.insert(id.to_be_bytes(), v).map_err(|e| self.err(e))?;
        self.meta
            .insert(b"next_id", &self.next_id.to_be_bytes())
            .map_err(|e| self.err(e))?;
        self.stats.records += 1;
        self.stats.metrics += r.metrics.len() as u64;
        self.stats.bytes += len;
        let mut dropped = Dropped::default();
        while self.stats.bytes > self.opts.max_bytes && self.stats.records > 1 {
            let Some((k, v)) = self.records.pop_min().map_err(|e| self.err(e))? else {
                break;
            };
            self.forget(&v);
            dropped.records += 1;
            dropped.metrics += metric_count(&v) as usize;
            let _ = k;
        }
        self.stats.dropped_metrics += dropped.metrics as u64;
        Ok((id, dropped))
    }

    fn forget(&mut self, v: &[u8]) {
        self.stats.records = self.stats.records.saturating_sub(1);
        self.stats.metrics = self.stats.metrics.saturating_sub(metric_count(v));
        self.stats.bytes = self.stats.bytes.saturating_sub(v.len() as u64);
    }

    /// Up to `max` records after `cursor` (all from the start when `None`),
    /// oldest first. Corrupt ones met here are quarantined and skipped.
    pub fn read_after(&mut self, cursor: Option<u64>, max: usize) -> Result<Vec<(u64, Record)>, QueueError> {
        let start = cursor.map_or(0, |c| c.saturating_add(1));
        let mut out = Vec::with_capacity(max.min(1024));
        let mut bad = Vec::new();
        for item in self.records.range(start.to_be_bytes()..) {
            if out.len() >= max {
                break;
            }
            let (k, v) = item.map_err(|e| self.err(e))?;
            match decode(&v) {
                Ok(r) => out.push((key_id(&k), r)),
                Err(why) => bad.push((k, v, why)),
            }
        }
        self.quarantine_all(bad, true)?;
        Ok(out)
    }

    /// Moves corrupt records to the quarantine tree (kept for inspection) and
    /// counts them; `counted` says whether they are in the live stats.
    fn quarantine_all(&mut self, bad: Vec<(sled::IVec, sled::IVec, String)>, counted: bool) -> Result<(), QueueError> {
        for (k, v, why) in bad {
            tracing::error!(store = %self.path, id = key_id(&k), reason = %why, "corrupt record quarantined");
            self.quarantine.insert(&k, v.clone()).map_err(|e| self.err(e))?;
            self.records.remove(&k).map_err(|e| self.err(e))?;
            if counted {
                self.forget(&v);
            }
            self.stats.corrupt_records += 1;
        }
        Ok(())
    }

    /// Removes every record with an id ≤ `id`: the broker has read them.
    pub fn confirm_through(&mut self, id: u64) -> Result<usize, QueueError> {
        let mut n = 0;
        while let Some((k, v)) = self.records.first().map_err(|e| self.err(e))? {
            if key_id(&k) > id {
                break;
            }
            self.records.remove(&k).map_err(|e| self.err(e))?;
            self.forget(&v);
            n += 1;
        }
        if n > 0 {
            self.write_manifest();
        }
        Ok(n)
    }

    /// Writes and fsyncs everything appended so far.
    pub fn flush(&mut self) -> Result<(), QueueError> {
        self.db.flush().map_err(|e| self.err(e))?;
        self.unflushed = 0;
        self.last_flush = Instant::now();
        // After sled's fsync: the manifest never promises more than sled holds.
        self.write_manifest();
        Ok(())
    }

    /// Records the next id and the oldest live one (write and rename; a
    /// crash leaves the old or the new manifest, either of which is true).
    fn write_manifest(&self) {
        let first = self
            .records
            .first()
            .ok()
            .flatten()
            .map_or(self.next_id, |(k, _)| key_id(&k));
        let dir = Path::new(&self.path);
        let tmp = dir.join("manifest.tmp");
        let written = std::fs::write(&tmp, format!("{} {first}\n", self.next_id))
            .and_then(|()| std::fs::rename(&tmp, dir.join("manifest")));
        if let Err(e) = written {
            tracing::warn!(store = %self.path, error = %e, "cannot write the store's manifest");
        }
    }

    /// Flushes if the group-commit interval has passed (call on a timer).
    pub fn tick(&mut self) -> Result<(), QueueError> {
        if self.unflushed > 0 && self.last_flush.elapsed() >= self.opts.flush_interval {
            self.flush()?;
        }
        Ok(())
    }

    /// The id the next append gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Changes the bound; the next append drops the oldest down to it.
    pub fn set_max_bytes(&mut self, max_bytes: u64) {
        self.opts.max_bytes = max_bytes;
    }

    /// Bytes sled occupies on disk (its files, not the live records).
    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

impl Drop for DiskQueue {
    fn drop(&mut self) {
        let _ = self.db.flush();
    }
}

fn key_id(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = k.len().min(8);
    b[8 - n..].copy_from_slice(&k[k.len() - n..]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparkplug::{Metric, Value};
    use proptest::prelude::*;

    fn rec(v: i64) -> Record {
        Record {
            device: Some("press".into()),
            metrics: vec![Metric::new("Counter", Value::Int64(v), 1_000 + v as u64)],
        }
    }

    fn opts() -> DiskOptions {
        DiskOptions {
            max_bytes: 1 << 30,
            flush_every: 10,
            flush_interval: Duration::from_secs(60),
            cache_bytes: 1 << 20,
        }
    }

    #[test]
    fn records_come_back_in_order_and_survive_reopen_until_confirmed() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut q = DiskQueue::open(dir.path(), opts()).expect("open");
            for v in 0..5 {
                q.append(&rec(v)).expect("append");
            }
            let first = q.read_after(None, 2).expect("read");
            assert_eq!(
                first.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
                vec![rec(0), rec(1)]
            );
            assert_eq!(q.confirm_through(first[1].0).expect("confirm"), 2);
        }
        let mut q = DiskQueue::open(dir.path(), opts()).expect("reopen");
        let rest: Vec<Record> = q
            .read_after(None, 10)
            .expect("read")
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        assert_eq!(rest, vec![rec(2), rec(3), rec(4)]);
        let (id, _) = q.append(&rec(9)).expect("append");
        assert_eq!(id, 5, "ids are never reused");
        assert_eq!(q.stats().records, 4);
    }

    #[test]
    fn a_corrupt_record_is_quarantined_counted_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut q = DiskQueue::open(dir.path(), opts()).expect("open");
            for v in 0..3 {
                q.append(&rec(v)).expect("append");
            }
            // Flip a byte in the middle record, as a torn write would.
            let k = 1u64.to_be_bytes();
            let mut v = q.records.get(k).expect("get").expect("present").to_vec();
            let last = v.len() - 1;
            v[last] ^= 0xFF;
            q.records.insert(k, v).expect("insert");
        }
        let mut q = DiskQueue::open(dir.path(), opts()).expect("reopen");
        assert_eq!(q.stats().corrupt_records, 1);
        let got: Vec<Record> = q
            .read_after(None, 10)
            .expect("read")
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        assert_eq!(got, vec![rec(0), rec(2)]);
        assert_eq!(q.quarantine.len(), 1, "kept for inspection, not deleted");
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let one = encode(&rec(0)).expect("encode").len() as u64;
        let mut q = DiskQueue::open(
            dir.path(),
            DiskOptions {
                max_bytes: one * 3,
                ..opts()
            },
        )
        .expect("open");
        let mut dropped = 0;
        for v in 0..10 {
            dropped += q.append(&rec(v)).expect("append").1.metrics;
        }
        assert_eq!(dropped, 7);
        assert_eq!(q.stats().dropped_metrics, 7);
        let got: Vec<Record> = q
            .read_after(None, 10)
            .expect("read")
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        assert_eq!(got, vec![rec(7), rec(8), rec(9)]);
    }

    #[test]
    fn records_sled_lost_to_a_damaged_file_are_counted_from_the_manifest() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut q = DiskQueue::open(dir.path(), opts()).expect("open");
            for i in 0..20 {
                q.append_batch(&(0..10).map(|v| rec(i * 10 + v)).collect::<Vec<_>>())
                    .expect("append");
            }
            q.confirm_through(9).expect("confirm the first ten");
        }
        let db = dir.path().join("db");
        let mut bytes = std::fs::read(&db).expect("db");
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 64] {
            *b ^= 0x5a;
        }
        std::fs::write(&db, bytes).expect("corrupt");
        let mut q = DiskQueue::open(dir.path(), opts()).expect("reopen");
        let st = q.stats();
        assert!(
            st.corrupt_records > 0,
            "sled cut its log and the manifest tells: {st:?}"
        );
        // Confirmed records whose removal sled also forgot come back (as
        // duplicates, harmless): 190 live plus up to the 10 confirmed.
        let accounted = st.records + st.corrupt_records;
        assert!(
            (190..=200).contains(&accounted),
            "every live record kept or counted: {st:?}"
        );
        let (id, _) = q.append(&rec(999)).expect("append");
        assert_eq!(id, 200, "ids are never reused, even those sled forgot");
    }

    #[test]
    fn decode_says_why_a_value_is_corrupt() {
        assert!(decode(&[1, 2]).expect_err("short").contains("shorter than a header"));
        let mut v = encode(&rec(1)).expect("encode");
        v[6] ^= 1;
        assert_eq!(decode(&v).expect_err("crc"), "checksum mismatch");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(i64),
        Read(usize),
        Confirm(usize),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<i64>().prop_map(Op::Append),
            2 => (1usize..5).prop_map(Op::Read),
            2 => (0usize..4).prop_map(Op::Confirm),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The queue behaves like a VecDeque of (id, record): appends at the
        /// back, reads from a cursor without removing, confirms remove a
        /// prefix, and a close/reopen changes nothing.
        #[test]
        fn the_queue_behaves_like_a_simple_fifo_model(ops in prop::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().expect("tmp");
            let mut q = Some(DiskQueue::open(dir.path(), opts()).expect("open"));
            let mut model: std::collections::VecDeque<(u64, Record)> = Default::default();
            let mut next = 0u64;
            let mut cursor: Option<u64> = None;
            for op in ops {
                let queue = q.as_mut().expect("open");
                match op {
                    Op::Append(v) => {
                        let (id, d) = queue.append(&rec(v)).expect("append");
                        prop_assert_eq!((id, d), (next, Dropped::default()));
                        model.push_back((next, rec(v)));
                        next += 1;
                    }
                    Op::Read(n) => {
                        let got = queue.read_after(cursor, n).expect("read");
                        let want: Vec<(u64, Record)> = model.iter().filter(|(id, _)| cursor.is_none_or(|c| *id > c)).take(n).cloned().collect();
                        prop_assert_eq!(&got, &want);
                        if let Some((id, _)) = got.last() { cursor = Some(*id); }
                    }
                    Op::Confirm(n) => {
                        if let Some((id, _)) = model.get(n).cloned() {
                            queue.confirm_through(id).expect("confirm");
                            model.retain(|(i, _)| *i > id);
                        }
                    }
                    Op::Reopen => {
                        drop(q.take());
                        q = Some(DiskQueue::open(dir.path(), opts()).expect("reopen"));
                    }
                }
                let s = q.as_ref().expect("open").stats();
                prop_assert_eq!(s.records, model.len() as u64);
            }
        }
    }

    #[test]
    fn a_manifest_promising_impossible_ids_is_not_believed_and_ids_never_wrap_onto_live_records() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut q = DiskQueue::open(dir.path(), opts()).expect("open");
            q.append_batch(&(0..5).map(rec).collect::<Vec<_>>()).expect("append");
        }
        std::fs::write(dir.path().join("manifest"), "18446744073709551614 0\n").expect("edit");
        let mut q = DiskQueue::open(dir.path(), opts()).expect("reopen");
        assert_eq!(
            q.stats().corrupt_records,
            0,
            "nothing counted lost on a manifest's word"
        );
        let (id, _) = q.append_batch(&[rec(5), rec(6)]).expect("append");
        assert_eq!(id, 5, "ids go on from what sled holds");
        let got = q.read_after(None, 100).expect("read");
        let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (0..7).collect::<Vec<_>>(), "every record once, in order");
        drop(q);
        // And the manifest is rewritten true.
        assert_eq!(read_manifest(dir.path()), Some((7, 0)));
    }
}
