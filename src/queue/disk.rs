//! The durable store-and-forward queue: an append-only log of segment files.
//!
//! Layout: `<dir>/seg-<first id, 16 hex digits>.log` files holding frames
//! `len u32 | id u64 | crc32(len, id) u32 | value`, where the value is
//! `crc32 | version | metric count | device | Sparkplug payload` (the CRC
//! covers everything after itself), and a `manifest` (`next_id oldest_id`).
//! docs/ARCHITECTURE.md explains why this replaced sled (durability, wear,
//! memory and disk bound, each measured).
//!
//! Invariants, in the order they are relied on:
//! 1. **FIFO by id.** Every record gets the next u64 id, consecutive within
//!    and across segments; ids are never reused, also across reopen.
//! 2. **Written, then synced.** [`DiskQueue::append_batch`] hands its frames
//!    to the kernel with one `write` (they survive SIGKILL from then on) and
//!    `fdatasync`s when `sync_interval` has passed since the last sync or
//!    `sync_records` wait ([`DiskQueue::sync`] forces it). A record is
//!    *durable* (survives a power cut) once [`DiskQueue::synced_through`]
//!    covers it; the interval is the power-cut window. A new segment's
//!    directory entry is synced (fsync of the directory) before anything in
//!    it counts as durable; a new store's directory likewise in its parent.
//! 3. **Nothing leaves before it is confirmed.** Reading does not remove;
//!    [`DiskQueue::confirm_through`] moves the head and deletes segments
//!    wholly confirmed. The head is persisted in the manifest (written on
//!    confirmation at most once a second, and on close); after a power cut a
//!    stale head only replays confirmed records again (duplicates, which the
//!    Primary Host drops), never loses one.
//! 4. **Bounded on the files' size.** The segment files never exceed
//!    `max_bytes` together: an append that would pass it deletes the oldest
//!    segments first (segments are `max_bytes / 16`, at most 4 MiB, so at
//!    most that goes at once), counted in [`Dropped`] for the caller to log
//!    at ERROR.
//! 5. **Damage is detected, never silent, never a panic.** A frame whose
//!    header or value fails its CRC is skipped by scanning for the next valid
//!    frame; the ids in between are counted as corrupt, their bytes copied to
//!    `<dir>.quarantine/` for inspection. An invalid tail of the last segment
//!    is a write the power cut tore before its sync: it is cut off, and only
//!    counted as lost when the manifest says it had been synced. Every size
//!    read from disk is checked against the file before it is allocated.
//!
//! Memory: a few words per segment, one read buffer, the frames of the
//! batch being written, and one segment (≤ 4 MiB) while it is checked at
//! open; nothing grows with the number of records stored.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::outbox::Encoded;
use super::{Dropped, Record};
use crate::sparkplug::codec::Payload;

/// Why the queue could not do what was asked.
#[derive(Debug, Error)]
pub enum QueueError {
    #[error("store {path}: {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("store: a record could not be encoded: {0}")]
    Encode(String),
    #[error("store {path} failed a write ({why}); a new store is tried beside it, and what it held stays on disk for the next start")]
    Unusable { path: String, why: String },
    #[error("store: record ids are exhausted (a record holds id 2^64-1); move the store aside")]
    IdsExhausted,
}

/// Tuning of a [`DiskQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskOptions {
    /// Bound on the segment files' total size.
    pub max_bytes: u64,
    /// `fdatasync` at the latest this long after a write (0: with every
    /// append): the power-cut window.
    pub sync_interval: Duration,
    /// …or once this many records wait for it.
    pub sync_records: u32,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            max_bytes: 256 * 1024 * 1024,
            sync_interval: Duration::from_secs(1),
            sync_records: 1000,
        }
    }
}

/// Counters for `/metrics` and `/ready`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Live (unconfirmed) records, their metrics and their bytes.
    pub records: u64,
    pub metrics: u64,
    pub bytes: u64,
    pub dropped_metrics: u64,
    pub corrupt_records: u64,
    /// Bytes written to the store's files (frames and manifest).
    pub bytes_written: u64,
    /// `fdatasync`/`fsync` calls.
    pub syncs: u64,
    /// Metrics made durable by a sync.
    pub synced_metrics: u64,
}

impl QueueStats {
    /// Adds the counters of a queue that closed (live counts are not kept).
    pub fn add(&mut self, closed: QueueStats) {
        self.dropped_metrics += closed.dropped_metrics;
        self.corrupt_records += closed.corrupt_records;
        self.bytes_written += closed.bytes_written;
        self.syncs += closed.syncs;
        self.synced_metrics += closed.synced_metrics;
    }
}

const VERSION: u8 = 1;
/// Frame header: `len u32 | id u64 | crc32 of the 12 bytes before it`.
const FRAME: usize = 16;
/// Value header: `crc32 | version | metric count u32 | device length u16`.
const HEADER: usize = 4 + 1 + 4 + 2;
/// The largest value accepted from disk (a record is one DATA message).
pub const MAX_RECORD_BYTES: u64 = 64 << 20;
/// How often the head is persisted while records are being confirmed.
const MANIFEST_EVERY: Duration = Duration::from_secs(1);
/// How often the synced tail is persisted while records are only written
/// (it lets the next open tell damage at the end from a torn write).
const MANIFEST_IDLE: Duration = Duration::from_secs(60);

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

/// A stored value's bytes, checked (CRC, version, counts) and decoded;
/// why not, for anything else.
pub fn decode_record(v: &[u8]) -> Result<Record, String> {
    decode(v)
}

/// A stored value: `crc | version | count | device_len | device | payload`,
/// the payload kept exactly as the outbox holds it (no decode, no re-encode).
fn encode(e: &Encoded) -> Result<Vec<u8>, QueueError> {
    let device = e.device.as_deref().unwrap_or("");
    let device_len = u16::try_from(device.len()).map_err(|_| QueueError::Encode("device name too long".into()))?;
    let count = u32::try_from(e.samples).map_err(|_| QueueError::Encode("too many samples in one record".into()))?;
    let mut v = Vec::with_capacity(HEADER + device.len() + e.payload.len());
    v.extend_from_slice(&[0; 4]);
    v.push(VERSION);
    v.extend_from_slice(&count.to_le_bytes());
    v.extend_from_slice(&device_len.to_le_bytes());
    v.extend_from_slice(device.as_bytes());
    v.extend_from_slice(&e.payload);
    let crc = crc32fast::hash(&v[4..]);
    v[..4].copy_from_slice(&crc.to_le_bytes());
    Ok(v)
}

/// Checks and decodes a stored value; `Err` says why it is corrupt.
fn decode(v: &[u8]) -> Result<Record, String> {
    if v.len() < HEADER {
        return Err(format!("{} bytes, shorter than a header", v.len()));
    }
    if !value_crc_ok(v) {
        return Err("checksum mismatch".into());
    }
    if v[4] != VERSION {
        return Err(format!("unknown record version {}", v[4]));
    }
    let count = metric_count(v) as usize;
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

fn value_crc_ok(v: &[u8]) -> bool {
    v.len() >= HEADER && crc32fast::hash(&v[4..]) == u32::from_le_bytes([v[0], v[1], v[2], v[3]])
}

fn metric_count(v: &[u8]) -> u64 {
    v.get(5..9)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]).into())
}

fn frame_header(len: u32, id: u64) -> [u8; FRAME] {
    let mut h = [0u8; FRAME];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..12].copy_from_slice(&id.to_le_bytes());
    let crc = crc32fast::hash(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// `(len, id)` of a frame header whose CRC holds.
fn parse_header(h: &[u8]) -> Option<(u32, u64)> {
    let h: &[u8; FRAME] = h.get(..FRAME)?.try_into().ok()?;
    let crc = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    (crc32fast::hash(&h[..12]) == crc).then(|| {
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let id = u64::from_le_bytes(h[4..12].try_into().expect("8 bytes"));
        (len, id)
    })
}

fn segment_name(first_id: u64) -> String {
    format!("seg-{first_id:016x}.log")
}

fn segment_id(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
}

/// fsync of a directory: makes the entries created or renamed in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One segment file, as far as the queue needs to know it in memory.
#[derive(Debug, Clone)]
struct Segment {
    first_id: u64,
    /// One past the last id written to it.
    next_id: u64,
    /// Its length on disk.
    len: u64,
    /// Valid records and their metrics in it (confirmed ones included).
    records: u64,
    metrics: u64,
    /// Byte ranges found damaged at open, skipped by every scan.
    skip: Vec<(u64, u64)>,
}

impl Segment {
    fn path(&self, dir: &Path) -> PathBuf {
        dir.join(segment_name(self.first_id))
    }
}

/// A frame met by a scan: its offset, id, value length and metric count.
#[derive(Debug, Clone, Copy)]
struct FrameInfo {
    offset: u64,
    id: u64,
    len: u64,
    metrics: u64,
}

/// The head: where the oldest unconfirmed record starts in the first segment.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    id: u64,
    offset: u64,
    /// Records and metrics of the first segment before `offset` (confirmed).
    records: u64,
    metrics: u64,
}

/// A durable FIFO of [`Record`]s. See the module docs for its invariants.
pub struct DiskQueue {
    dir: PathBuf,
    path: String,
    opts: DiskOptions,
    segments: Vec<Segment>,
    /// The last segment, open for appending.
    active: Option<File>,
    head: Head,
    next_id: u64,
    stats: QueueStats,
    /// Records written but not yet synced, and their metrics.
    unsynced: u64,
    unsynced_metrics: u64,
    /// Records before this id are durable.
    synced_through: u64,
    /// A segment was created since the last directory sync.
    dir_dirty: bool,
    /// Since when the oldest unsynced write waits.
    unsynced_since: Option<Instant>,
    manifest_written: Option<Instant>,
    manifest_dirty: bool,
    /// Where the last `read_after` stopped: (segment first id, offset, next id).
    cursor: Option<(u64, u64, u64)>,
}

impl DiskQueue {
    /// Opens (or creates) the queue in `dir`, checking every frame.
    pub fn open(dir: &Path, opts: DiskOptions) -> Result<DiskQueue, QueueError> {
        Self::open_from(dir, opts, 0)
    }

    /// Opens like [`open`](Self::open), with ids starting at `first_id` at
    /// the least (a store that replaces a failed one continues its ids, so
    /// that no id of the old one can name a record of the new).
    pub fn open_from(dir: &Path, opts: DiskOptions, first_id: u64) -> Result<DiskQueue, QueueError> {
        let path = dir.display().to_string();
        let io = |what: &'static str| {
            let path = path.clone();
            move |source| QueueError::Io { path, what, source }
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io("cannot create the directory"))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(io("cannot sync the parent directory"))?;
            }
        }
        let mut q = DiskQueue {
            dir: dir.to_path_buf(),
            path: path.clone(),
            opts,
            segments: Vec::new(),
            active: None,
            head: Head::default(),
            next_id: 0,
            stats: QueueStats::default(),
            unsynced: 0,
            unsynced_metrics: 0,
            synced_through: 0,
            dir_dirty: false,
            unsynced_since: None,
            manifest_written: None,
            manifest_dirty: false,
            cursor: None,
        };
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io("cannot list the directory"))?
            .filter_map(|e| e.ok().and_then(|e| segment_id(&e.file_name().to_string_lossy())))
            .collect();
        firsts.sort_unstable();
        let manifest = read_manifest(dir);
        let mut expected = firsts.first().copied().unwrap_or(0);
        let n = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            if first < expected {
                // Ids already seen (a segment resurrected by a lost unlink
                // after its records were written again?): not believed.
                tracing::error!(store = %path, segment = %segment_name(first), "a segment repeats ids already stored: moved to quarantine");
                q.quarantine_file(&dir.join(segment_name(first)));
                continue;
            }
            if first > expected {
                let lost = first - expected;
                tracing::error!(store = %path, first_missing = expected, lost_records = lost, "records between two segments are missing");
                q.stats.corrupt_records += lost;
            }
            let seg = q.recover_segment(first, i + 1 == n)?;
            expected = seg.next_id;
            q.segments.push(seg);
        }
        q.next_id = expected.max(first_id);
        if let Some(last) = q.segments.last() {
            q.next_id = q.next_id.max(last.next_id);
        }
        let first_live = q.segments.first().map_or(q.next_id, |s| s.first_id);
        q.head = Head {
            id: first_live,
            ..Head::default()
        };
        if let Some((next, oldest)) = manifest {
            // The most records the store can hold: a manifest promising more
            // than that beyond what is on disk is damaged or edited.
            let most = q.opts.max_bytes / (FRAME + HEADER) as u64 + 1;
            if next.saturating_sub(q.next_id) > most {
                tracing::error!(
                    store = %path, manifest_next = next, manifest_first = oldest, recovered_through = q.next_id.checked_sub(1),
                    "the store's manifest promises more records than the store can hold: not believed (damaged or edited)"
                );
            } else {
                let lost = next.saturating_sub(q.next_id.max(oldest));
                if lost > 0 {
                    tracing::error!(
                        store = %path, lost_records = lost, recovered_through = q.next_id.checked_sub(1),
                        written_through = next - 1,
                        "records the store had synced are missing from its files (damaged storage)"
                    );
                    q.stats.corrupt_records += lost;
                }
                q.next_id = q.next_id.max(next);
                // Skip what was confirmed before the restart.
                if oldest > first_live {
                    q.advance_head(oldest - 1, true)?;
                }
            }
        }
        q.synced_through = q.next_id;
        q.recount();
        if let Some(last) = q.segments.last() {
            let f = OpenOptions::new()
                .append(true)
                .open(last.path(dir))
                .map_err(io("cannot open the last segment"))?;
            q.active = Some(f);
        }
        q.write_manifest();
        Ok(q)
    }

    /// Scans one segment; quarantines damage; cuts a torn tail of the last one.
    fn recover_segment(&mut self, first: u64, last: bool) -> Result<Segment, QueueError> {
        let path = self.dir.join(segment_name(first));
        let io = |what: &'static str| {
            let path = self.path.clone();
            move |source| QueueError::Io { path, what, source }
        };
        let bytes = std::fs::read(&path).map_err(io("cannot read a segment"))?;
        let scan = scan_segment(&bytes, first);
        let mut seg = Segment {
            first_id: first,
            next_id: scan.next_id,
            len: bytes.len() as u64,
            records: scan.records,
            metrics: scan.metrics,
            skip: Vec::new(),
        };
        for d in &scan.damaged {
            tracing::error!(
                store = %self.path, segment = %segment_name(first), offset = d.from, bytes = d.to - d.from,
                first_lost = d.first_lost, lost_records = d.lost,
                "corrupt records in the store: their bytes are quarantined, the records after them kept"
            );
            self.quarantine_bytes(first, d.from as u64, &bytes[d.from..d.to]);
            self.stats.corrupt_records += d.lost;
            seg.skip.push((d.from as u64, d.to as u64));
        }
        if let Some(at) = scan.tail {
            if last {
                // A write the power cut tore before its sync (or damage at
                // the very end: the manifest tells).
                tracing::warn!(
                    store = %self.path, segment = %segment_name(first), offset = at, bytes = bytes.len() - at,
                    "the store's last write was incomplete (cut off before its sync): removed"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io("cannot open a segment"))?;
                f.set_len(at as u64).map_err(io("cannot cut a torn write"))?;
                f.sync_all().map_err(io("cannot sync a segment"))?;
                seg.len = at as u64;
            } else {
                tracing::error!(
                    store = %self.path, segment = %segment_name(first), offset = at, bytes = bytes.len() - at,
                    "the end of a segment is corrupt: its bytes are quarantined"
                );
                self.quarantine_bytes(first, at as u64, &bytes[at..]);
                self.stats.corrupt_records += 1;
                seg.skip.push((at as u64, bytes.len() as u64));
            }
        }
        Ok(seg)
    }

    fn quarantine_dir(&self) -> PathBuf {
        let name = self
            .dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        self.dir.with_file_name(format!("{name}.quarantine"))
    }

    fn quarantine_bytes(&self, first: u64, offset: u64, bytes: &[u8]) {
        let q = self.quarantine_dir();
        let file = q.join(format!("seg-{first:016x}-at-{offset}.bin"));
        if let Err(e) = std::fs::create_dir_all(&q).and_then(|()| std::fs::write(&file, bytes)) {
            tracing::warn!(store = %self.path, error = %e, "cannot keep the corrupt bytes for inspection");
        }
    }

    fn quarantine_file(&self, path: &Path) {
        let q = self.quarantine_dir();
        let to = q.join(path.file_name().unwrap_or_default());
        if let Err(e) = std::fs::create_dir_all(&q).and_then(|()| std::fs::rename(path, &to)) {
            tracing::warn!(store = %self.path, error = %e, "cannot move a segment to quarantine");
        }
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> QueueError + '_ {
        move |source| QueueError::Io {
            path: self.path.clone(),
            what,
            source,
        }
    }

    /// Live records, metrics and bytes from the segments and the head.
    fn recount(&mut self) {
        let (mut records, mut metrics, mut bytes) = (0, 0, 0);
        for s in &self.segments {
            records += s.records;
            metrics += s.metrics;
            bytes += s.len;
        }
        self.stats.records = records - self.head.records;
        self.stats.metrics = metrics - self.head.metrics;
        self.stats.bytes = bytes - self.head.offset;
    }

    /// Bytes the segment files take.
    pub fn file_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    fn segment_bytes(&self) -> u64 {
        // At most 4 MiB: a segment is read whole once, at open.
        (self.opts.max_bytes / 16).clamp(1024, 4 << 20)
    }

    /// Appends a record (see [`append_batch`](Self::append_batch)).
    pub fn append(&mut self, r: &Record) -> Result<(u64, Dropped), QueueError> {
        self.append_batch(std::slice::from_ref(r))
    }

    /// Appends `records` with one write per segment touched: once this
    /// returns they survive SIGKILL, and they survive a power cut once
    /// synced (at once if the sync is due; see the module docs). Ids are
    /// consecutive, from the returned first id. The oldest records are
    /// dropped first if the bound would be passed.
    pub fn append_batch(&mut self, records: &[Record]) -> Result<(u64, Dropped), QueueError> {
        let encoded: Vec<Encoded> = records.iter().map(Encoded::of).collect();
        self.append_encoded(&encoded)
    }

    /// [`append_batch`](Self::append_batch) for samples already encoded as
    /// the outbox keeps them: their bytes are written as they are.
    pub fn append_encoded(&mut self, records: &[Encoded]) -> Result<(u64, Dropped), QueueError> {
        let first = self.next_id;
        let mut dropped = Dropped::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_metrics = 0u64;
        let mut buf_records = 0u64;
        for r in records {
            let v = encode(r)?;
            let frame = (FRAME + v.len()) as u64;
            if frame > MAX_RECORD_BYTES || frame > self.opts.max_bytes {
                return Err(QueueError::Encode(format!(
                    "a record of {frame} bytes is larger than the store"
                )));
            }
            let active_len = self.segments.last().map_or(0, |s| s.len) + buf.len() as u64;
            if self.segments.is_empty() || (active_len > 0 && active_len + frame > self.segment_bytes()) {
                self.write_out(&mut buf, &mut buf_records, &mut buf_metrics)?;
                self.new_segment()?;
            }
            // The bound, on the files' size: oldest segments go first.
            while self.file_bytes() + buf.len() as u64 + frame > self.opts.max_bytes && self.segments.len() > 1 {
                let d = self.drop_oldest()?;
                dropped.records += d.records;
                dropped.metrics += d.metrics;
            }
            let id = self.next_id;
            self.next_id = id.checked_add(1).ok_or(QueueError::IdsExhausted)?;
            buf.extend_from_slice(&frame_header(v.len() as u32, id));
            buf.extend_from_slice(&v);
            buf_records += 1;
            buf_metrics += r.samples;
        }
        self.write_out(&mut buf, &mut buf_records, &mut buf_metrics)?;
        self.stats.dropped_metrics += dropped.metrics as u64;
        if self.sync_due() {
            self.sync()?;
        }
        Ok((first, dropped))
    }

    fn write_out(&mut self, buf: &mut Vec<u8>, records: &mut u64, metrics: &mut u64) -> Result<(), QueueError> {
        if buf.is_empty() {
            return Ok(());
        }
        let f = self
            .active
            .as_mut()
            .expect("a segment is open before frames are written");
        if let Err(source) = f.write_all(buf) {
            // What part of the write landed is unknown: the segment ends
            // where it did; the next open cuts a torn frame off.
            return Err(QueueError::Io {
                path: self.path.clone(),
                what: "cannot write",
                source,
            });
        }
        let seg = self.segments.last_mut().expect("active segment");
        seg.len += buf.len() as u64;
        seg.records += *records;
        seg.metrics += *metrics;
        seg.next_id = self.next_id;
        self.stats.records += *records;
        self.stats.metrics += *metrics;
        self.stats.bytes += buf.len() as u64;
        self.stats.bytes_written += buf.len() as u64;
        self.unsynced += *records;
        self.unsynced_metrics += *metrics;
        self.unsynced_since.get_or_insert_with(Instant::now);
        self.manifest_dirty = true;
        buf.clear();
        *records = 0;
        *metrics = 0;
        Ok(())
    }

    /// Closes the active segment (synced) and starts the next one.
    fn new_segment(&mut self) -> Result<(), QueueError> {
        if self.active.is_some() && self.unsynced > 0 {
            self.sync()?;
        }
        let seg = Segment {
            first_id: self.next_id,
            next_id: self.next_id,
            len: 0,
            records: 0,
            metrics: 0,
            skip: Vec::new(),
        };
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(seg.path(&self.dir))
            .map_err(self.io("cannot create a segment"))?;
        // A resurrected file of that name (a lost unlink) holds nothing live.
        f.set_len(0).map_err(self.io("cannot create a segment"))?;
        if self.segments.is_empty() {
            self.head = Head {
                id: self.next_id,
                ..Head::default()
            };
        }
        self.segments.push(seg);
        self.active = Some(f);
        self.dir_dirty = true;
        Ok(())
    }

    /// Deletes the oldest segment, counting its live records as dropped.
    fn drop_oldest(&mut self) -> Result<Dropped, QueueError> {
        let seg = self.segments.remove(0);
        let d = Dropped {
            records: (seg.records - self.head.records) as usize,
            metrics: (seg.metrics - self.head.metrics) as usize,
        };
        self.remove_segment_file(&seg);
        let next = &self.segments[0];
        self.head = Head {
            id: next.first_id,
            ..Head::default()
        };
        self.recount();
        self.manifest_dirty = true;
        Ok(d)
    }

    fn remove_segment_file(&mut self, seg: &Segment) {
        // Not synced: an unlink a power cut undoes only replays confirmed
        // records again, and a dropped one is counted already.
        if let Err(e) = std::fs::remove_file(seg.path(&self.dir)) {
            tracing::warn!(store = %self.path, segment = %segment_name(seg.first_id), error = %e, "cannot delete a segment");
        }
        if self.cursor.is_some_and(|(s, _, _)| s == seg.first_id) {
            self.cursor = None;
        }
    }

    fn sync_due(&self) -> bool {
        self.unsynced > 0
            && (self.opts.sync_interval.is_zero()
                || self.unsynced >= u64::from(self.opts.sync_records)
                || self
                    .unsynced_since
                    .is_some_and(|t| t.elapsed() >= self.opts.sync_interval))
    }

    /// Makes everything written so far durable (`fdatasync`, and the
    /// directory's `fsync` after a new segment).
    pub fn sync(&mut self) -> Result<(), QueueError> {
        if self.unsynced == 0 && !self.dir_dirty {
            return Ok(());
        }
        if let Some(f) = &self.active {
            f.sync_data().map_err(self.io("cannot sync"))?;
            self.stats.syncs += 1;
        }
        if self.dir_dirty {
            sync_dir(&self.dir).map_err(self.io("cannot sync the directory"))?;
            self.stats.syncs += 1;
            self.dir_dirty = false;
        }
        self.stats.synced_metrics += self.unsynced_metrics;
        self.unsynced = 0;
        self.unsynced_metrics = 0;
        self.unsynced_since = None;
        self.synced_through = self.next_id;
        Ok(())
    }

    /// Syncs if the interval has passed, and persists a moved head now and
    /// then (call on a timer).
    pub fn tick(&mut self) -> Result<(), QueueError> {
        if self.sync_due() {
            self.sync()?;
        }
        if self.manifest_dirty && self.manifest_written.is_none_or(|t| t.elapsed() >= MANIFEST_IDLE) {
            self.write_manifest();
        }
        Ok(())
    }

    /// Records with an id below this are durable.
    pub fn synced_through(&self) -> u64 {
        self.synced_through
    }

    /// Metrics written but not yet synced (lost by a power cut now).
    pub fn unsynced_metrics(&self) -> u64 {
        self.unsynced_metrics
    }

    /// Iterates the frames of segment `i` from `offset`, calling `f` with
    /// each frame's info and value until it returns false.
    fn scan(
        &self,
        i: usize,
        offset: u64,
        mut f: impl FnMut(FrameInfo, &[u8]) -> bool,
        read_values: bool,
    ) -> Result<(), QueueError> {
        let seg = &self.segments[i];
        let file = File::open(seg.path(&self.dir)).map_err(self.io("cannot open a segment"))?;
        let mut r = BufReader::with_capacity(64 * 1024, file);
        r.seek(SeekFrom::Start(offset))
            .map_err(self.io("cannot read a segment"))?;
        let mut at = offset;
        let mut value = Vec::new();
        while at < seg.len {
            if let Some(&(_, end)) = seg.skip.iter().find(|(s, _)| *s == at) {
                r.seek(SeekFrom::Start(end)).map_err(self.io("cannot read a segment"))?;
                at = end;
                continue;
            }
            let mut h = [0u8; FRAME];
            r.read_exact(&mut h).map_err(self.io("cannot read a segment"))?;
            let Some((len, id)) = parse_header(&h) else {
                return Err(QueueError::Io {
                    path: self.path.clone(),
                    what: "a frame checked at open changed on disk",
                    source: std::io::Error::from(std::io::ErrorKind::InvalidData),
                });
            };
            let len = u64::from(len);
            if len > MAX_RECORD_BYTES || at + FRAME as u64 + len > seg.len {
                return Err(QueueError::Io {
                    path: self.path.clone(),
                    what: "a frame runs past its segment",
                    source: std::io::Error::from(std::io::ErrorKind::InvalidData),
                });
            }
            let need = if read_values {
                len as usize
            } else {
                HEADER.min(len as usize)
            };
            value.resize(need, 0);
            r.read_exact(&mut value).map_err(self.io("cannot read a segment"))?;
            if !read_values {
                r.seek_relative((len as usize - need) as i64)
                    .map_err(self.io("cannot read a segment"))?;
            }
            let info = FrameInfo {
                offset: at,
                id,
                len,
                metrics: metric_count(&value),
            };
            at += FRAME as u64 + len;
            if !f(info, &value) {
                break;
            }
        }
        Ok(())
    }

    /// Up to `max` records after `cursor` (from the head when `None`),
    /// oldest first. A record whose value no longer decodes is counted as
    /// corrupt and skipped.
    pub fn read_after(&mut self, cursor: Option<u64>, max: usize) -> Result<Vec<(u64, Record)>, QueueError> {
        self.read_batch(cursor, max, u64::MAX)
    }

    /// Like [`read_after`](Self::read_after), stopping before the records'
    /// metrics would pass `max_metrics` (one record at least).
    pub fn read_batch(
        &mut self,
        cursor: Option<u64>,
        max: usize,
        max_metrics: u64,
    ) -> Result<Vec<(u64, Record)>, QueueError> {
        let mut metrics = 0u64;
        let start = cursor.map_or(self.head.id, |c| c.saturating_add(1)).max(self.head.id);
        let mut out = Vec::new();
        if max == 0 || start >= self.next_id {
            return Ok(out);
        }
        let mut i = self.segments.partition_point(|s| s.next_id <= start);
        let mut offset = if i == 0 { self.head.offset } else { 0 };
        if let Some((seg, off, next)) = self.cursor {
            if next == start && self.segments.get(i).is_some_and(|s| s.first_id == seg) {
                offset = off;
            }
        }
        let mut bad: Vec<(usize, FrameInfo, Vec<u8>)> = Vec::new();
        let mut full = false;
        let mut last = None;
        while i < self.segments.len() && out.len() < max {
            let mut end = None;
            self.scan(
                i,
                offset,
                |info, v| {
                    if info.id < start {
                        return true;
                    }
                    if !out.is_empty() && metrics + info.metrics > max_metrics {
                        full = true;
                        return false;
                    }
                    match decode(v) {
                        Ok(r) => {
                            metrics += info.metrics;
                            out.push((info.id, r));
                        }
                        Err(why) => {
                            tracing::error!(store = %self.path, id = info.id, reason = %why, "corrupt record quarantined");
                            bad.push((i, info, v.to_vec()));
                        }
                    }
                    end = Some(info.offset + FRAME as u64 + info.len);
                    if metrics >= max_metrics {
                        full = true;
                    }
                    out.len() < max && !full
                },
                true,
            )?;
            if let Some(e) = end {
                last = Some((self.segments[i].first_id, e));
            }
            if out.len() >= max || full {
                break;
            }
            i += 1;
            offset = 0;
        }
        for (i, info, v) in bad {
            // Skipped from now on, by reads and by the head alike.
            let seg = &mut self.segments[i];
            seg.skip.push((info.offset, info.offset + FRAME as u64 + info.len));
            seg.records -= 1;
            seg.metrics -= info.metrics;
            let first = seg.first_id;
            self.quarantine_bytes(first, info.offset, &v);
            self.stats.corrupt_records += 1;
        }
        self.recount();
        if let (Some((seg, off)), Some((id, _))) = (last, out.last()) {
            self.cursor = Some((seg, off, id + 1));
        }
        Ok(out)
    }

    /// Moves the head past every record with an id ≤ `id`.
    fn advance_head(&mut self, id: u64, at_open: bool) -> Result<usize, QueueError> {
        let mut n = 0usize;
        while let Some(first) = self.segments.first() {
            if self.head.id > id {
                break;
            }
            if first.next_id <= id.saturating_add(1) && self.segments.len() > 1 {
                // Wholly confirmed: delete it.
                n += (first.records - self.head.records) as usize;
                let seg = self.segments.remove(0);
                self.remove_segment_file(&seg);
                let next = &self.segments[0];
                self.head = Head {
                    id: next.first_id,
                    ..Head::default()
                };
                continue;
            }
            let mut head = self.head;
            self.scan(
                0,
                head.offset,
                |info, _| {
                    if info.id > id {
                        return false;
                    }
                    head.id = info.id + 1;
                    head.offset = info.offset + FRAME as u64 + info.len;
                    head.records += 1;
                    head.metrics += info.metrics;
                    n += 1;
                    true
                },
                false,
            )?;
            head.id = head.id.max(self.head.id);
            if head.offset >= self.segments[0].len {
                // Through the end of the (only, active) segment.
                head.id = self.segments[0].next_id.max(head.id);
            }
            self.head = head;
            break;
        }
        if !at_open && n > 0 {
            self.manifest_dirty = true;
        }
        Ok(n)
    }

    /// Removes every record with an id ≤ `id`: the broker has read them.
    pub fn confirm_through(&mut self, id: u64) -> Result<usize, QueueError> {
        let n = self.advance_head(id, false)?;
        if n > 0 {
            self.recount();
            if self.manifest_written.is_none_or(|t| t.elapsed() >= MANIFEST_EVERY) {
                self.write_manifest();
            }
        }
        Ok(n)
    }

    /// Syncs, and persists the head (on close and before a planned stop).
    pub fn flush(&mut self) -> Result<(), QueueError> {
        self.sync()?;
        if self.manifest_dirty {
            self.write_manifest();
        }
        Ok(())
    }

    /// Records the next id and the oldest live one: write, `fdatasync`,
    /// rename, directory `fsync` — a power cut leaves the old or the new
    /// manifest, either of which is true. It never promises more than is
    /// synced.
    fn write_manifest(&mut self) {
        let text = format!("{} {}\n", self.synced_through, self.head.id.min(self.synced_through));
        let tmp = self.dir.join("manifest.tmp");
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_data()?;
            std::fs::rename(&tmp, self.dir.join("manifest"))?;
            sync_dir(&self.dir)
        })();
        match written {
            Ok(()) => {
                self.stats.bytes_written += text.len() as u64;
                self.stats.syncs += 2;
                self.manifest_dirty = false;
                self.manifest_written = Some(Instant::now());
            }
            Err(e) => tracing::warn!(store = %self.path, error = %e, "cannot write the store's manifest"),
        }
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

    /// Changes the sync policy (a reload); the next append or tick follows it.
    pub fn set_sync(&mut self, interval: Duration, records: u32) {
        self.opts.sync_interval = interval;
        self.opts.sync_records = records;
    }

    /// Bytes the store occupies on disk (its segment files).
    pub fn disk_bytes(&self) -> u64 {
        self.file_bytes()
    }
}

/// A damaged range of a segment: bytes `from..to`, the ids it lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub from: usize,
    pub to: usize,
    pub first_lost: u64,
    /// At least 1: bytes that are no frame count as one lost record.
    pub lost: u64,
}

/// What a segment's bytes hold (sans-IO; the store acts on it at open).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SegmentScan {
    pub records: u64,
    pub metrics: u64,
    /// One past the last valid frame's id.
    pub next_id: u64,
    /// Ranges skipped between valid frames.
    pub damaged: Vec<Damage>,
    /// Where the bytes after the last valid frame start, if any are left
    /// that are no frame (a torn write in the last segment).
    pub tail: Option<usize>,
}

/// Scans a segment's bytes whose first id is `first`: valid frames in
/// order, damage resynced on the next valid frame with a later id.
pub fn scan_segment(bytes: &[u8], first: u64) -> SegmentScan {
    let mut scan = SegmentScan {
        next_id: first,
        ..SegmentScan::default()
    };
    let mut at = 0usize;
    while at < bytes.len() {
        if let Some((len, id)) = valid_frame(bytes, at, scan.next_id) {
            scan.records += 1;
            scan.metrics += metric_count(&bytes[at + FRAME..]);
            scan.next_id = id + 1;
            at += FRAME + len;
            continue;
        }
        // Damage: find the next frame that holds, with a later id.
        match (at + 1..bytes.len()).find_map(|o| valid_frame(bytes, o, scan.next_id).map(|(_, id)| (o, id))) {
            Some((o, id)) => {
                scan.damaged.push(Damage {
                    from: at,
                    to: o,
                    first_lost: scan.next_id,
                    lost: (id - scan.next_id).max(1),
                });
                scan.next_id = id;
                at = o;
            }
            None => {
                scan.tail = Some(at);
                break;
            }
        }
    }
    scan
}

/// `(value length, id)` of a frame at `at` whose header and value check out
/// and whose id is not before `min_id`.
fn valid_frame(bytes: &[u8], at: usize, min_id: u64) -> Option<(usize, u64)> {
    let (len, id) = parse_header(bytes.get(at..)?)?;
    let len = len as usize;
    if id < min_id || len as u64 > MAX_RECORD_BYTES {
        return None;
    }
    let v = bytes.get(at + FRAME..at + FRAME + len)?;
    value_crc_ok(v).then_some((len, id))
}

impl Drop for DiskQueue {
    fn drop(&mut self) {
        let _ = self.flush();
    }
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
            sync_interval: Duration::from_secs(60),
            sync_records: 10,
        }
    }

    fn values(q: &mut DiskQueue) -> Vec<Record> {
        q.read_after(None, usize::MAX)
            .expect("read")
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        v.sort();
        v
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
        assert_eq!(
            values(&mut q),
            vec![rec(2), rec(3), rec(4)],
            "confirmed records are not replayed again"
        );
        let (id, _) = q.append(&rec(9)).expect("append");
        assert_eq!(id, 5, "ids are never reused");
        assert_eq!(q.stats().records, 4);
    }

    #[test]
    fn a_corrupt_record_is_quarantined_counted_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = dir.path().join("queue");
        let one = (FRAME + encode(&Encoded::of(&rec(0))).expect("encode").len()) as u64;
        {
            let mut q = DiskQueue::open(&store, opts()).expect("open");
            q.append_batch(&[rec(0), rec(1), rec(2)]).expect("append");
        }
        // Flip the last byte of the middle record, as bit rot would.
        let seg = &segments(&store)[0];
        let mut bytes = std::fs::read(seg).expect("segment");
        bytes[(2 * one - 1) as usize] ^= 0xFF;
        std::fs::write(seg, bytes).expect("damage");
        let mut q = DiskQueue::open(&store, opts()).expect("reopen");
        assert_eq!(q.stats().corrupt_records, 1);
        assert_eq!(q.stats().records, 2);
        assert_eq!(values(&mut q), vec![rec(0), rec(2)]);
        let kept = std::fs::read_dir(dir.path().join("queue.quarantine"))
            .expect("quarantine")
            .count();
        assert_eq!(kept, 1, "the damaged bytes are kept for inspection, not deleted");
        assert_eq!(q.append(&rec(3)).expect("append").0, 3);
    }

    #[test]
    fn the_files_never_exceed_max_bytes_and_the_oldest_are_dropped_and_counted() {
        let dir = tempfile::tempdir().expect("tmp");
        let max = 64 * 1024;
        let mut q = DiskQueue::open(
            dir.path(),
            DiskOptions {
                max_bytes: max,
                ..opts()
            },
        )
        .expect("open");
        let mut dropped = 0;
        for v in 0..5_000 {
            dropped += q.append(&rec(v)).expect("append").1.metrics;
            let on_disk: u64 = segments(dir.path())
                .iter()
                .map(|p| std::fs::metadata(p).expect("stat").len())
                .sum();
            assert!(on_disk <= max, "{on_disk} bytes on disk after record {v}");
        }
        assert!(dropped > 0);
        assert_eq!(q.stats().dropped_metrics, dropped as u64);
        let left = values(&mut q);
        assert_eq!(left.len() + dropped, 5_000, "every record kept or counted");
        assert_eq!(left.last(), Some(&rec(4_999)), "the newest are kept");
        assert!(left
            .windows(2)
            .all(|w| w[0].metrics[0].timestamp < w[1].metrics[0].timestamp));
    }

    #[test]
    fn confirming_everything_deletes_the_segments_and_a_reopen_finds_nothing_to_replay() {
        let dir = tempfile::tempdir().expect("tmp");
        let o = DiskOptions {
            max_bytes: 64 * 1024,
            ..opts()
        };
        {
            let mut q = DiskQueue::open(dir.path(), o).expect("open");
            for v in 0..300 {
                q.append(&rec(v)).expect("append");
            }
            assert!(segments(dir.path()).len() > 1);
            let all = q.read_after(None, usize::MAX).expect("read");
            q.confirm_through(all.last().expect("some").0).expect("confirm");
            assert_eq!(q.stats().records, 0);
            assert_eq!(segments(dir.path()).len(), 1, "only the active segment is left");
        }
        let mut q = DiskQueue::open(dir.path(), o).expect("reopen");
        assert!(values(&mut q).is_empty());
        assert_eq!(q.stats().records, 0);
        assert_eq!(q.append(&rec(0)).expect("append").0, 300);
    }

    #[test]
    fn a_torn_last_write_is_cut_off_not_counted_and_appends_go_on() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut q = DiskQueue::open(dir.path(), opts()).expect("open");
            q.append_batch(&[rec(0), rec(1)]).expect("append");
            q.sync().expect("sync");
        }
        let seg = &segments(dir.path())[0];
        let whole = std::fs::read(seg).expect("segment");
        // Half a frame after the synced ones, as a power cut leaves it; and a
        // header that claims 4 GiB (checked, never allocated).
        for tail in [
            encode(&Encoded::of(&rec(2))).expect("encode")[..7].to_vec(),
            frame_header(u32::MAX, 2).to_vec(),
        ] {
            let mut bytes = whole.clone();
            bytes.extend_from_slice(&tail);
            std::fs::write(seg, &bytes).expect("tear");
            let mut q = DiskQueue::open(dir.path(), opts()).expect("reopen");
            assert_eq!(q.stats().corrupt_records, 0, "an unsynced write is not a loss");
            assert_eq!(values(&mut q), vec![rec(0), rec(1)]);
            assert_eq!(
                std::fs::metadata(seg).expect("stat").len(),
                whole.len() as u64,
                "cut off"
            );
        }
        let mut q = DiskQueue::open(dir.path(), opts()).expect("reopen");
        assert_eq!(q.append(&rec(2)).expect("append").0, 2);
        assert_eq!(values(&mut q), vec![rec(0), rec(1), rec(2)]);
    }

    #[test]
    fn records_synced_then_lost_from_the_end_are_counted_from_the_manifest() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut q = DiskQueue::open(dir.path(), opts()).expect("open");
            q.append_batch(&(0..10).map(rec).collect::<Vec<_>>()).expect("append");
        }
        // The drive lost the last three synced records' bytes.
        let seg = &segments(dir.path())[0];
        let bytes = std::fs::read(seg).expect("segment");
        let one = bytes.len() / 10;
        std::fs::write(seg, &bytes[..bytes.len() - 3 * one + 5]).expect("lose");
        let mut q = DiskQueue::open(dir.path(), opts()).expect("reopen");
        assert_eq!(q.stats().corrupt_records, 3);
        assert_eq!(values(&mut q).len(), 7);
        assert_eq!(
            q.append(&rec(10)).expect("append").0,
            10,
            "ids of lost records are not reused"
        );
    }

    #[test]
    fn damage_in_the_middle_of_a_segment_loses_only_the_records_it_hit() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut q = DiskQueue::open(dir.path(), opts()).expect("open");
            for i in 0..20 {
                q.append_batch(&(0..10).map(|v| rec(i * 10 + v)).collect::<Vec<_>>())
                    .expect("append");
            }
            q.read_after(None, 10).expect("read");
            q.confirm_through(9).expect("confirm the first ten");
        }
        let seg = &segments(dir.path())[0];
        let mut bytes = std::fs::read(seg).expect("segment");
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 64] {
            *b ^= 0x5a;
        }
        std::fs::write(seg, bytes).expect("corrupt");
        let mut q = DiskQueue::open(dir.path(), opts()).expect("reopen");
        let st = q.stats();
        assert!((1..=2).contains(&st.corrupt_records), "{st:?}");
        assert_eq!(
            st.records + st.corrupt_records,
            190,
            "every live record kept or counted: {st:?}"
        );
        assert_eq!(values(&mut q).len() as u64, st.records);
        let (id, _) = q.append(&rec(999)).expect("append");
        assert_eq!(id, 200, "ids are never reused");
    }

    #[test]
    fn with_a_zero_interval_every_append_is_synced_before_it_returns() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut q = DiskQueue::open(
            dir.path(),
            DiskOptions {
                sync_interval: Duration::ZERO,
                ..opts()
            },
        )
        .expect("open");
        let before = q.stats().syncs;
        q.append(&rec(0)).expect("append");
        assert_eq!(q.synced_through(), 1);
        assert_eq!(q.unsynced_metrics(), 0);
        assert!(q.stats().syncs > before);
        let mut lazy = DiskQueue::open(&dir.path().join("lazy"), opts()).expect("open");
        lazy.append(&rec(0)).expect("append");
        assert_eq!(
            (lazy.synced_through(), lazy.unsynced_metrics()),
            (0, 1),
            "waits for the interval"
        );
        lazy.tick().expect("tick");
        assert_eq!(lazy.synced_through(), 0, "the interval has not passed");
        lazy.sync().expect("sync");
        assert_eq!((lazy.synced_through(), lazy.stats().synced_metrics), (1, 1));
    }

    #[test]
    fn decode_says_why_a_value_is_corrupt() {
        assert!(decode(&[1, 2]).expect_err("short").contains("shorter than a header"));
        let mut v = encode(&Encoded::of(&rec(1))).expect("encode");
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
        /// prefix, and a close/reopen changes nothing. Small segments, so
        /// that reads and confirmations cross them.
        #[test]
        fn the_queue_behaves_like_a_simple_fifo_model(ops in prop::collection::vec(op(), 1..60)) {
            let dir = tempfile::tempdir().expect("tmp");
            let o = DiskOptions { max_bytes: 16 << 10, ..opts() };
            let mut q = Some(DiskQueue::open(dir.path(), o).expect("open"));
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
                        q = Some(DiskQueue::open(dir.path(), o).expect("reopen"));
                    }
                }
                let s = q.as_ref().expect("open").stats();
                prop_assert_eq!(s.records, model.len() as u64);
                prop_assert_eq!(s.metrics, model.len() as u64);
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
        assert_eq!(id, 5, "ids go on from what the files hold");
        let got = q.read_after(None, 100).expect("read");
        let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (0..7).collect::<Vec<_>>(), "every record once, in order");
        drop(q);
        // And the manifest is rewritten true.
        assert_eq!(read_manifest(dir.path()), Some((7, 0)));
    }
}
