//! One task per device: scan classes, batched reads, report by exception with
//! deadbands, per-tag quality, and the device's reachability.
//!
//! Invariants:
//! - Tags due at the same moment are read in one batch, whatever their class.
//! - A value is reported when it differs from the last *reported* one by at
//!   least the tag's deadband (absolute, and percent of the last reported
//!   value; with both set, both must be exceeded); non-numeric values and
//!   quality changes are always reported; zero deadband reports every change.
//! - A failed tag keeps its last value and is reported once with BAD quality.
//! - After `fail_after` consecutive failed scans the device is `Offline`
//!   (DDEATH); the first good scan after that is `Online` with *every* tag's
//!   current value (DBIRTH), as is the very first scan.
//! - A scan that is late by more than its period counts as missed; missed
//!   scans are skipped, never queued.
//! - The loop wakes at least once a second and advances its heartbeat, also
//!   while the PLC is unreachable: the systemd watchdog watches that.
//! - Circuit breaker: after a failed read or connect the device gets no
//!   traffic until a backoff has passed (from `backoff_min`, doubling per
//!   consecutive failure up to `backoff_max`, with jitter so a plant of dead
//!   PLCs does not retry in step); scans keep their schedule meanwhile and do
//!   not count as missed. A dead PLC costs one attempt per backoff, and no
//!   other device waits for it (each device has its own task).
//! - A write (already accepted by the command guard) runs between scans:
//!   written, then read back until it equals the value written, within
//!   `confirm_timeout` in all; only then `confirmed`, else `failed` with
//!   the reason and the value last read. A device that is offline fails a
//!   write at once and is not connected for it; a write that comes before
//!   the poller's first scan waits for that scan to say which it is. A broken connection during
//!   a write is dropped, like one during a read.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::device::{DeviceConfig, TagAddress, TagConfig};
use super::stats::DeviceStats;
use super::{Driver, TagSpec};
use crate::commands::{shown, Outcome, Ticket};
use crate::sparkplug::edge::Sample;
use crate::sparkplug::{DataType, Metric, Quality, Value};

/// What a device poller tells the session. Samples address tags by their
/// position in the device's declarations (see [`plan`] and [`declarations`]).
#[derive(Debug, Clone, PartialEq)]
pub enum PollEvent {
    /// Reachable (first time or again): every tag's current value, in chunks;
    /// the DBIRTH follows the chunk with `complete = true`.
    Online {
        device: String,
        samples: Vec<Sample>,
        complete: bool,
    },
    /// Unreachable for `fail_after` scans.
    Offline { device: String, reason: String },
    /// Changed values.
    Samples { device: String, samples: Vec<Sample> },
    /// A write ended: `read_back` is the tag's value as read after it (None
    /// when it could not be read), taken at `at` (ms).
    Written {
        ticket: Ticket,
        outcome: Outcome,
        read_back: Option<Value>,
        at: u64,
    },
}

/// A write the command guard accepted, for the device's poller: written,
/// then read back until it equals the value or `confirm_timeout` is over.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteRequest {
    pub ticket: Ticket,
    pub confirm_timeout: Duration,
}

/// How often a write is read back while it does not equal the value yet.
const READ_BACK_EVERY: Duration = Duration::from_millis(50);

/// What the poller keeps per tag: just what report-by-exception needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deadband {
    pub absolute: f64,
    pub percent: f64,
}

impl Deadband {
    /// No deadband: every change is reported.
    pub const NONE: Deadband = Deadband {
        absolute: 0.0,
        percent: 0.0,
    };
}

impl From<&TagConfig> for Deadband {
    fn from(t: &TagConfig) -> Self {
        Deadband {
            absolute: t.deadband,
            percent: t.deadband_percent,
        }
    }
}

/// The last reported state of a tag, in 16 bytes: scalars as their exact
/// bits (exact for every integer, unlike f64), anything else boxed (rare in
/// large tag sets).
#[derive(Debug, Clone, PartialEq)]
pub enum Last {
    Unseen,
    Scalar { bits: u64, quality: Quality },
    Other(Box<(Option<Value>, Quality)>),
}

fn scalar_bits(v: &Value) -> Option<u64> {
    Some(match *v {
        Value::Int8(x) => x as i64 as u64,
        Value::Int16(x) => x as i64 as u64,
        Value::Int32(x) => x as i64 as u64,
        Value::Int64(x) => x as u64,
        Value::UInt8(x) => x.into(),
        Value::UInt16(x) => x.into(),
        Value::UInt32(x) => x.into(),
        Value::UInt64(x) | Value::DateTime(x) => x,
        Value::Float(x) => x.to_bits().into(),
        Value::Double(x) => x.to_bits(),
        Value::Boolean(x) => x.into(),
        _ => return None,
    })
}

/// Reads `bits` as a number of the same type as `like`.
fn bits_as_f64(like: &Value, bits: u64) -> Option<f64> {
    Some(match like {
        Value::Int8(_) | Value::Int16(_) | Value::Int32(_) | Value::Int64(_) => bits as i64 as f64,
        Value::UInt8(_) | Value::UInt16(_) | Value::UInt32(_) | Value::UInt64(_) => bits as f64,
        Value::Float(_) => f32::from_bits(bits as u32).into(),
        Value::Double(_) => f64::from_bits(bits),
        _ => return None,
    })
}

impl Last {
    /// The record of having reported `value` with `quality`.
    pub fn of(value: &Option<Value>, quality: Quality) -> Last {
        match value.as_ref().and_then(scalar_bits) {
            Some(bits) => Last::Scalar { bits, quality },
            None => Last::Other(Box::new((value.clone(), quality))),
        }
    }
}

fn moved_enough(tag: Deadband, old: f64, new: f64) -> bool {
    let delta = (new - old).abs();
    let abs_ok = tag.absolute <= 0.0 || delta >= tag.absolute;
    let pct_ok = tag.percent <= 0.0 || delta >= old.abs() * tag.percent / 100.0;
    abs_ok && pct_ok && delta > 0.0
}

/// Report-by-exception decision for one tag.
pub fn should_report(tag: Deadband, last: &Last, value: &Option<Value>, quality: Quality) -> bool {
    let deadbanded = tag.absolute > 0.0 || tag.percent > 0.0;
    match last {
        Last::Unseen => true,
        Last::Scalar { quality: q, .. } if *q != quality => true,
        Last::Other(b) if b.1 != quality => true,
        // Same quality and no new value (a read that failed again): nothing to say.
        _ if value.is_none() && quality != Quality::Good => false,
        Last::Scalar { bits, .. } => {
            let Some(new) = value else { return true };
            let Some(new_bits) = scalar_bits(new) else { return true };
            match (deadbanded, bits_as_f64(new, *bits), new.as_f64()) {
                (true, Some(old), Some(now)) => moved_enough(tag, old, now),
                _ => new_bits != *bits,
            }
        }
        Last::Other(b) => {
            let (old, _) = &**b;
            match (old, value) {
                (Some(o), Some(n)) if deadbanded => match (o.as_f64(), n.as_f64()) {
                    (Some(a), Some(b)) => moved_enough(tag, a, b),
                    _ => o != n,
                },
                (o, n) => o != n,
            }
        }
    }
}

/// A device's tags as the poller uses them, by position (the session knows
/// the names; samples address tags by index): configured tags first, then
/// the generated ones. Built without a per-tag record for generated tags:
/// at 100k tags every byte per tag is 100 kB.
pub struct Plan {
    /// How many tags (configured and generated).
    pub count: usize,
    /// The configured tags' specs, then, if the simulator generates tags,
    /// the one spec they share (see [`Driver::for_device`]).
    pub specs: Vec<TagSpec>,
    /// Per tag, up to the last one that has a deadband (the rest have none).
    pub deadbands: Vec<Deadband>,
    /// Each scan period with the tags it reads; classes without tags are left out.
    pub classes: Vec<(Duration, Vec<u32>)>,
}

fn class_index(d: &DeviceConfig, name: &str) -> usize {
    d.scan_classes.iter().position(|(n, _)| n == name).unwrap_or(0)
}

fn generated_name(i: usize, n: usize) -> String {
    let width = n.to_string().len().max(6);
    format!("Gen/Tag {i:0width$}")
}

/// The device's tags in declaration order (configured, then generated).
pub fn plan(d: &DeviceConfig) -> Plan {
    let n = d.sim.generate as usize;
    let mut classes: Vec<(Duration, Vec<u32>)> = d.scan_classes.iter().map(|(_, p)| (*p, Vec::new())).collect();
    let mut specs = Vec::with_capacity(d.tags.len() + usize::from(n > 0));
    let mut deadbands = Vec::with_capacity(d.tags.len());
    for (i, t) in d.tags.iter().enumerate() {
        specs.push(TagSpec {
            address: t.address.clone(),
            datatype: t.datatype,
        });
        deadbands.push(Deadband::from(t));
        classes[class_index(d, &t.scan_class)].1.push(i as u32);
    }
    if n > 0 {
        let signal =
            Arc::new(d.sim.generate_signal.clone().unwrap_or_else(|| {
                super::sim::Signal::parse("random_walk(step=0.5)").expect("the default signal parses")
            }));
        specs.push(TagSpec {
            address: TagAddress::Sim(signal),
            datatype: d.sim.generate_datatype.unwrap_or(DataType::Double),
        });
        let class = class_index(d, d.sim.generate_scan_class.as_deref().unwrap_or("default"));
        let first = d.tags.len() as u32;
        classes[class].1.extend(first..first + n as u32);
    }
    while deadbands.last() == Some(&Deadband::NONE) {
        deadbands.pop();
    }
    deadbands.shrink_to_fit();
    classes.retain(|(_, idx)| !idx.is_empty());
    for (_, idx) in &mut classes {
        idx.shrink_to_fit();
    }
    Plan {
        count: d.tags.len() + n,
        specs,
        deadbands,
        classes,
    }
}

/// Birth declarations for a device, in the order of [`plan`]: every tag,
/// null until first read.
pub fn declarations(d: &DeviceConfig, now_ms: u64) -> Vec<Metric> {
    let n = d.sim.generate as usize;
    let mut out = Vec::with_capacity(d.tags.len() + n);
    out.extend(d.tags.iter().map(|t| Metric::null(t.name.clone(), t.datatype, now_ms)));
    let datatype = d.sim.generate_datatype.unwrap_or(DataType::Double);
    out.extend((1..=n).map(|i| Metric::null(generated_name(i, n), datatype, now_ms)));
    out
}

use crate::clock::now_ms;

/// Polls one device until `stop` turns true or the session goes away.
pub async fn run(
    d: DeviceConfig,
    tx: mpsc::Sender<PollEvent>,
    stats: Arc<DeviceStats>,
    mut writes: mpsc::Receiver<WriteRequest>,
    mut stop: watch::Receiver<bool>,
) {
    let Plan {
        count,
        specs,
        deadbands,
        classes,
    } = plan(&d);
    let mut driver = Driver::for_device(&d, &specs);
    // Only the configured tags can be written: their datatypes are kept.
    let specs_types: Vec<DataType> = specs.iter().take(d.tags.len()).map(|t| t.datatype).collect();
    drop(specs);
    let start = Instant::now();
    let mut due: Vec<Instant> = vec![start; classes.len()];
    let mut last: Vec<Last> = vec![Last::Unseen; count];
    let mut stamps = Stamps::default();
    let mut online = false;
    // Whether a scan was tried yet: until then a write waits (a poller
    // started by a reload does not know yet that its PLC answers).
    let mut tried = false;
    let mut connected = false;
    let mut breaker = Breaker::new(&d, stats.clone());
    loop {
        let next = due
            .iter()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        // Wake at least once a second: the heartbeat tells the watchdog this loop is alive.
        let wake = next.min(Instant::now() + Duration::from_secs(1));
        // Stopping comes first, then a write the host waits for, then the scan.
        tokio::select! {
            biased;
            _ = stop.changed() => {
                // Writes not taken yet fail, and say so (never silently lost).
                writes.close();
                while let Ok(req) = writes.try_recv() {
                    let event = PollEvent::Written {
                        ticket: req.ticket,
                        outcome: Outcome::Failed("not written: the device's poller stopped (reload or shutdown)".into()),
                        read_back: None,
                        at: now_ms(),
                    };
                    if let Err(e) = tx.try_send(event) {
                        tracing::warn!(target: "spb::audit", device = %d.name, error = %e, "a write not taken before the poller stopped could not be reported");
                    }
                }
                return;
            }
            Some(req) = writes.recv(), if tried => {
                let event = write_and_confirm(&mut driver, &d, &specs_types, online, &mut connected, req).await;
                // What the write's DDATA reports is the last reported value.
                if let PollEvent::Written { ticket, read_back: Some(v), .. } = &event {
                    last[ticket.index] = Last::of(&Some(v.clone()), Quality::Good);
                }
                if tx.send(event).await.is_err() {
                    return;
                }
                continue;
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
        stats.heartbeat.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        if now < next {
            continue;
        }
        // Which classes are due; while offline every tag is read, for DBIRTH.
        let mut batch: Vec<usize> = Vec::new();
        for (c, (period, idx)) in classes.iter().enumerate() {
            if due[c] <= now {
                let late = now.duration_since(due[c]);
                if late > *period {
                    stats.missed_scans.fetch_add(
                        (late.as_nanos() / period.as_nanos().max(1)) as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    due[c] = now + *period;
                } else {
                    due[c] += *period;
                }
                if online {
                    batch.extend(idx.iter().map(|&i| i as usize));
                }
            }
        }
        if !online {
            batch.clear();
            batch.extend(0..count);
        }
        if batch.is_empty() {
            continue;
        }
        batch.sort_unstable();
        batch.dedup();
        if breaker.waiting(now) {
            continue;
        }
        tried = true;
        if batch.len() > CHUNK {
            // Large scans go out in chunks, so neither the read results nor
            // the samples of 100k tags are held at once.
            let mut failed: Option<super::DriverError> = None;
            if !connected {
                // Counted like the single-read path's connect.
                stats.connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let c = tokio::time::timeout(d.timeout, driver.connect(&d.name)).await;
                match c.unwrap_or_else(|_| {
                    Err(super::DriverError::Timeout {
                        device: d.name.clone(),
                        timeout_ms: d.timeout.as_millis() as u64,
                    })
                }) {
                    Ok(()) => connected = true,
                    Err(e) => {
                        stats
                            .connect_failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        failed = Some(e);
                    }
                }
            }
            for part in batch.chunks(CHUNK) {
                if failed.is_some() {
                    break;
                }
                let t0 = Instant::now();
                let r = tokio::time::timeout(d.timeout, driver.read(&d.name, part, now_ms())).await;
                let r = r.unwrap_or_else(|_| {
                    Err(super::DriverError::Timeout {
                        device: d.name.clone(),
                        timeout_ms: d.timeout.as_millis() as u64,
                    })
                });
                stats.observe_read(t0.elapsed(), r.is_ok());
                match r {
                    Ok(values) => {
                        let ts = stamps.next(now_ms());
                        let samples = changed(part, values, &deadbands, &mut last, &stats, &d.name, online, ts);
                        stats
                            .changes
                            .fetch_add(samples.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        let event = if online {
                            if samples.is_empty() {
                                continue;
                            }
                            PollEvent::Samples {
                                device: d.name.clone(),
                                samples,
                            }
                        } else {
                            let complete = std::ptr::eq(part.as_ptr_range().end, batch.as_ptr_range().end);
                            PollEvent::Online {
                                device: d.name.clone(),
                                samples,
                                complete,
                            }
                        };
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        if matches!(e, super::DriverError::Protocol { .. }) {
                            stats
                                .protocol_violations
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::warn!(device = %d.name, error = %e, "the PLC broke the protocol: connection dropped");
                        }
                        tracing::debug!(device = %d.name, error = %e, "chunked read failed");
                        failed = Some(e);
                        break;
                    }
                }
            }
            let Some(e) = failed else {
                breaker.succeeded();
                if !online {
                    online = true;
                    stats.set_online(true);
                    tracing::info!(device = %d.name, tags = count, "device reachable: DBIRTH");
                }
                continue;
            };
            // A half-read device stays offline; the next scan reads it all again.
            connected = false;
            let failures = breaker.failed();
            if online && failures >= d.fail_after {
                online = false;
                stats.set_online(false);
                tracing::warn!(device = %d.name, error = %e, "device unreachable: DDEATH");
                if tx
                    .send(PollEvent::Offline {
                        device: d.name.clone(),
                        reason: e.to_string(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            continue;
        }
        let t0 = Instant::now();
        let result = async {
            if !connected {
                stats.connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = driver.connect(&d.name).await {
                    stats
                        .connect_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Err(e);
                }
                connected = true;
            }
            driver.read(&d.name, &batch, now_ms()).await
        };
        let result = match tokio::time::timeout(d.timeout, result).await {
            Ok(r) => r,
            Err(_) => {
                if !connected {
                    // A connect that hangs (a PLC that accepts and never answers).
                    stats
                        .connect_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(super::DriverError::Timeout {
                    device: d.name.clone(),
                    timeout_ms: d.timeout.as_millis() as u64,
                })
            }
        };
        stats.observe_read(t0.elapsed(), result.is_ok());
        match result {
            Err(e) => {
                connected = false;
                if matches!(e, super::DriverError::Protocol { .. }) {
                    stats
                        .protocol_violations
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(device = %d.name, error = %e, "the PLC broke the protocol: connection dropped");
                }
                let failures = breaker.failed();
                if online && failures >= d.fail_after {
                    online = false;
                    stats.set_online(false);
                    tracing::warn!(device = %d.name, error = %e, "device unreachable: DDEATH");
                    if tx
                        .send(PollEvent::Offline {
                            device: d.name.clone(),
                            reason: e.to_string(),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                } else if !online && failures == d.fail_after {
                    tracing::warn!(device = %d.name, error = %e, "device not reachable yet");
                }
            }
            Ok(values) => {
                breaker.succeeded();
                let ts = stamps.next(now_ms());
                let samples = changed(&batch, values, &deadbands, &mut last, &stats, &d.name, online, ts);
                let event = if online {
                    if samples.is_empty() {
                        continue;
                    }
                    PollEvent::Samples {
                        device: d.name.clone(),
                        samples,
                    }
                } else {
                    online = true;
                    stats.set_online(true);
                    tracing::info!(device = %d.name, tags = count, "device reachable: DBIRTH");
                    PollEvent::Online {
                        device: d.name.clone(),
                        samples,
                        complete: true,
                    }
                };
                stats
                    .changes
                    .fetch_add(event_len(&event), std::sync::atomic::Ordering::Relaxed);
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes `req` and reads it back (module invariants); the event to send.
async fn write_and_confirm(
    driver: &mut Driver,
    d: &DeviceConfig,
    types: &[DataType],
    online: bool,
    connected: &mut bool,
    req: WriteRequest,
) -> PollEvent {
    let WriteRequest {
        ticket,
        confirm_timeout,
    } = req;
    let deadline = Instant::now() + confirm_timeout;
    let timeout_ms = confirm_timeout.as_millis();
    let mut read_back = None;
    let outcome = 'outcome: {
        if !online {
            break 'outcome Outcome::Failed("the device is offline".into());
        }
        let Some(&dt) = types.get(ticket.index) else {
            break 'outcome Outcome::Failed("not a configured tag".into());
        };
        let Some(expected) = ticket.new.in_datatype(dt) else {
            break 'outcome Outcome::Failed(format!("{} does not fit a {dt} tag", shown(&ticket.new)));
        };
        if !*connected {
            match tokio::time::timeout_at(deadline, driver.connect(&d.name)).await {
                Ok(Ok(())) => *connected = true,
                Ok(Err(e)) => break 'outcome Outcome::Failed(e.to_string()),
                Err(_) => {
                    break 'outcome Outcome::Failed(format!("no connection within confirm_timeout ({timeout_ms} ms)"))
                }
            }
        }
        match tokio::time::timeout_at(deadline, driver.write(&d.name, ticket.index, &expected)).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(tag))) => break 'outcome Outcome::Failed(format!("the PLC refused the write: {tag}")),
            Ok(Err(e)) => {
                *connected = false;
                break 'outcome Outcome::Failed(e.to_string());
            }
            Err(_) => {
                *connected = false;
                break 'outcome Outcome::Failed(format!(
                    "the write was not answered within confirm_timeout ({timeout_ms} ms)"
                ));
            }
        }
        loop {
            match tokio::time::timeout_at(deadline, driver.read(&d.name, &[ticket.index], now_ms())).await {
                Ok(Ok(mut values)) => match values.pop() {
                    Some(Ok(v)) if v == expected => {
                        read_back = Some(v);
                        break 'outcome Outcome::Confirmed;
                    }
                    Some(Ok(v)) => read_back = Some(v),
                    Some(Err(tag)) => {
                        break 'outcome Outcome::Failed(format!("written, but the read-back failed: {tag}"))
                    }
                    None => break 'outcome Outcome::Failed("written, but the read-back returned nothing".into()),
                },
                Ok(Err(e)) => {
                    *connected = false;
                    break 'outcome Outcome::Failed(format!("written, but the read-back failed: {e}"));
                }
                Err(_) => {
                    break 'outcome Outcome::Failed(format!(
                        "written, but not read back within confirm_timeout ({timeout_ms} ms)"
                    ))
                }
            }
            if Instant::now() + READ_BACK_EVERY >= deadline {
                let got = read_back.as_ref().map_or_else(|| "nothing".to_string(), shown);
                break 'outcome Outcome::Failed(format!(
                    "written, but read back {got} instead of {} until confirm_timeout ({timeout_ms} ms)",
                    shown(&expected)
                ));
            }
            tokio::time::sleep(READ_BACK_EVERY).await;
        }
    };
    PollEvent::Written {
        ticket,
        outcome,
        read_back,
        at: now_ms(),
    }
}

/// The circuit breaker: consecutive failures, and the moment until which
/// the PLC gets no traffic (`stats.circuit_open` mirrors it).
struct Breaker {
    failures: u32,
    retry_at: Option<Instant>,
    min: Duration,
    max: Duration,
    /// Seeded by the device name, so a plant of dead PLCs does not retry in step.
    jitter: crate::backoff::Rng,
    stats: Arc<DeviceStats>,
}

impl Breaker {
    fn new(d: &DeviceConfig, stats: Arc<DeviceStats>) -> Breaker {
        let seed = d.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        Breaker {
            failures: 0,
            retry_at: None,
            min: d.backoff_min,
            max: d.backoff_max,
            jitter: crate::backoff::Rng::new(seed),
            stats,
        }
    }

    /// Whether the backoff after the last failure is still running at `now`.
    fn waiting(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|at| now < at)
    }

    /// Counts a failure, opens the circuit for a backoff; the failures in a row.
    fn failed(&mut self) -> u32 {
        self.failures += 1;
        let wait = crate::backoff::delay(self.min, self.max, self.failures, self.jitter.next_u64());
        self.retry_at = Some(Instant::now() + wait);
        self.stats
            .circuit_open
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.failures
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        self.stats
            .circuit_open
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Tags per driver call and per event once a device is online.
const CHUNK: usize = 2000;

/// Turns read results into the samples to report (all of them when `online`
/// is false: the DBIRTH needs every value), updating the last-reported table.
/// A device's sample timestamps, strictly increasing within a second: two
/// scans in one millisecond (a scan catching up on its schedule) get
/// different ones, so (metric, timestamp), a sample's identity downstream
/// (the uplink writes each once), never names two values. A clock stepped
/// back by more than a second is followed as it is.
#[derive(Debug, Default)]
struct Stamps {
    last: u64,
}

impl Stamps {
    fn next(&mut self, now: u64) -> u64 {
        self.last = if now <= self.last && self.last - now < 1000 {
            self.last + 1
        } else {
            now
        };
        self.last
    }
}

/// The samples of a scan read at `ts` that are to be reported.
#[allow(clippy::too_many_arguments)]
fn changed(
    batch: &[usize],
    values: Vec<Result<crate::sparkplug::Value, super::TagError>>,
    deadbands: &[Deadband],
    last: &mut [Last],
    stats: &DeviceStats,
    device: &str,
    online: bool,
    ts: u64,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    for (&i, r) in batch.iter().zip(values) {
        let (value, quality) = match r {
            Ok(v) => (Some(v), Quality::Good),
            Err(e) => {
                stats.tag_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(device, tag_index = i, error = %e, "tag read failed");
                // No new value, BAD quality: the session keeps the last value.
                (None, Quality::Bad)
            }
        };
        let deadband = deadbands.get(i).copied().unwrap_or(Deadband::NONE);
        if online && !should_report(deadband, &last[i], &value, quality) {
            continue;
        }
        last[i] = match (&value, &last[i]) {
            (None, Last::Scalar { bits, .. }) => Last::Scalar { bits: *bits, quality },
            _ => Last::of(&value, quality),
        };
        samples.push(Sample {
            index: i as u32,
            value,
            quality,
            timestamp: ts,
        });
    }
    samples
}

fn event_len(e: &PollEvent) -> u64 {
    match e {
        PollEvent::Online { samples, .. } | PollEvent::Samples { samples, .. } => samples.len() as u64,
        PollEvent::Offline { .. } | PollEvent::Written { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(deadband: f64, pct: f64) -> TagConfig {
        TagConfig {
            name: "t".into(),
            address: TagAddress::Sim(Arc::new(super::super::sim::Signal::parse("counter").expect("a signal"))),
            datatype: DataType::Double,
            scan_class: "default".into(),
            deadband,
            deadband_percent: pct,
            write: None,
        }
    }

    /// Whether a Good value moving `from` → `to` is reported under `t`'s deadbands.
    fn moves(t: &TagConfig, from: f64, to: f64) -> bool {
        should_report(Deadband::from(t), &last(from), &Some(Value::Double(to)), Quality::Good)
    }

    fn last(v: f64) -> Last {
        Last::of(&Some(Value::Double(v)), Quality::Good)
    }

    #[test]
    fn two_scans_in_one_millisecond_get_different_timestamps_and_a_clock_stepped_back_is_followed() {
        let mut s = Stamps::default();
        assert_eq!(s.next(1_000_000), 1_000_000);
        assert_eq!(s.next(1_000_000), 1_000_001, "a catch-up scan in the same millisecond");
        assert_eq!(s.next(1_000_000), 1_000_002);
        assert_eq!(s.next(1_000_010), 1_000_010, "the clock again once it is ahead");
        assert_eq!(
            s.next(996_000),
            996_000,
            "a step back of 4 s: the clock, not a run of +1"
        );
    }

    #[test]
    fn first_value_is_always_reported() {
        assert!(should_report(
            Deadband::from(&tag(100.0, 0.0)),
            &Last::Unseen,
            &Some(Value::Double(1.0)),
            Quality::Good
        ));
    }

    #[test]
    fn absolute_deadband_suppresses_small_moves() {
        let t = tag(0.5, 0.0);
        assert!(!moves(&t, 10.0, 10.4));
        assert!(moves(&t, 10.0, 10.5));
        assert!(moves(&t, 10.0, 9.4));
    }

    #[test]
    fn percent_deadband_is_relative_to_the_last_reported_value() {
        let t = tag(0.0, 1.0);
        assert!(!moves(&t, 200.0, 201.9));
        assert!(moves(&t, 200.0, 202.0));
    }

    #[test]
    fn with_both_deadbands_both_must_be_exceeded() {
        let t = tag(5.0, 1.0);
        assert!(!moves(&t, 1000.0, 1004.0));
        assert!(!moves(&t, 100.0, 100.9));
        assert!(moves(&t, 100.0, 106.0));
    }

    #[test]
    fn zero_deadband_reports_every_change_and_no_repeat() {
        let t = tag(0.0, 0.0);
        assert!(!moves(&t, 1.0, 1.0));
        assert!(moves(&t, 1.0, 1.0000001));
    }

    #[test]
    fn quality_change_is_reported_even_when_the_value_is_the_same() {
        let t = tag(100.0, 0.0);
        assert!(should_report(
            Deadband::from(&t),
            &last(1.0),
            &Some(Value::Double(1.0)),
            Quality::Bad
        ));
    }

    #[test]
    fn generated_tags_are_named_in_order_with_their_class() {
        let d = DeviceConfig {
            tags: vec![tag(0.0, 0.0)],
            sim: crate::plc::device::SimDeviceConfig {
                generate: 3,
                ..Default::default()
            },
            ..DeviceConfig::minimal("d", crate::plc::device::DriverKind::Sim)
        };
        let names: Vec<String> = declarations(&d, 0).into_iter().filter_map(|m| m.name).collect();
        assert_eq!(names, ["t", "Gen/Tag 000001", "Gen/Tag 000002", "Gen/Tag 000003"]);
    }
}

#[cfg(test)]
mod last_tests {
    use super::*;

    #[test]
    fn large_integers_compare_exactly_not_through_f64() {
        let big = 9_007_199_254_740_993i64; // 2^53 + 1: equal to its neighbour as f64
        let last = Last::of(&Some(Value::Int64(big)), Quality::Good);
        assert!(should_report(
            Deadband::NONE,
            &last,
            &Some(Value::Int64(big - 1)),
            Quality::Good
        ));
        assert!(!should_report(
            Deadband::NONE,
            &last,
            &Some(Value::Int64(big)),
            Quality::Good
        ));
    }

    #[test]
    fn a_failed_tag_is_reported_once_as_bad_without_a_value_then_good_again() {
        let stats = DeviceStats::default();
        let mut last = vec![Last::Unseen; 1];
        let db: Vec<Deadband> = Vec::new();
        let ok = |v: f64| vec![Ok(Value::Double(v))];
        let failed = || vec![Err(crate::plc::TagError("address out of range".into()))];
        let first = changed(&[0], ok(1.0), &db, &mut last, &stats, "d", true, 7);
        assert_eq!(
            (first[0].value.clone(), first[0].quality),
            (Some(Value::Double(1.0)), Quality::Good)
        );
        let bad = changed(&[0], failed(), &db, &mut last, &stats, "d", true, 7);
        assert_eq!((bad[0].value.clone(), bad[0].quality), (None, Quality::Bad));
        assert!(
            changed(&[0], failed(), &db, &mut last, &stats, "d", true, 7).is_empty(),
            "reported once"
        );
        let back = changed(&[0], ok(1.0), &db, &mut last, &stats, "d", true, 7);
        assert_eq!(back[0].quality, Quality::Good, "the same value comes back as GOOD");
        assert_eq!(stats.tag_errors.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn the_breaker_holds_traffic_after_a_failure_and_closes_on_success() {
        let mut d = crate::plc::device::DeviceConfig::minimal("plc", crate::plc::device::DriverKind::Sim);
        d.backoff_min = Duration::from_secs(60);
        let stats = Arc::new(DeviceStats::default());
        let mut b = Breaker::new(&d, stats.clone());
        let open = || stats.circuit_open.load(std::sync::atomic::Ordering::Relaxed);
        assert!(!b.waiting(Instant::now()) && !open());
        assert_eq!((b.failed(), b.failed()), (1, 2), "failures in a row");
        assert!(b.waiting(Instant::now()) && open(), "no traffic during the backoff");
        b.succeeded();
        assert!(!b.waiting(Instant::now()) && !open());
        assert_eq!(b.failed(), 1, "a success resets the count");
    }

    #[test]
    fn a_chunked_scan_connects_first_and_counts_the_connect_like_a_single_read() {
        let mut d = crate::plc::device::DeviceConfig::minimal("big", crate::plc::device::DriverKind::Sim);
        d.sim.generate = (CHUNK + 500) as u32;
        let stats = Arc::new(DeviceStats::default());
        let (tx, mut rx) = mpsc::channel(16);
        let (stop_tx, stop) = watch::channel(false);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (_writes_tx, writes) = mpsc::channel(1);
            let poller = tokio::spawn(run(d, tx, stats.clone(), writes, stop));
            loop {
                match rx.recv().await.expect("an event") {
                    PollEvent::Online { complete: true, .. } => break,
                    PollEvent::Online { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            stop_tx.send(true).expect("stop");
            poller.await.expect("poller");
        });
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((load(&stats.connects), load(&stats.connect_failures)), (1, 0));
    }

    #[test]
    fn scalar_records_are_16_bytes() {
        assert_eq!(std::mem::size_of::<Last>(), 16);
    }

    #[test]
    fn strings_use_the_boxed_record() {
        let last = Last::of(&Some(Value::String("a".into())), Quality::Good);
        assert!(!should_report(
            Deadband::NONE,
            &last,
            &Some(Value::String("a".into())),
            Quality::Good
        ));
        assert!(should_report(
            Deadband::NONE,
            &last,
            &Some(Value::String("b".into())),
            Quality::Good
        ));
    }
    fn sim_press(extra: &str) -> DeviceConfig {
        let text = format!(
            "[node]\ngroup_id = \"g\"\nnode_id = \"n\"\n[[devices]]\nname = \"press\"\ndriver = \"sim\"\n{extra}\n\
             [[devices.tags]]\nname = \"Setpoint\"\naddress = \"sine(amplitude=1, offset=0, period=10s)\"\ndatatype = \"Int16\"\nwritable = true\n"
        );
        crate::config::Config::parse("t.toml", &text)
            .expect("valid")
            .devices
            .remove(0)
    }

    fn ticket(value: Value) -> WriteRequest {
        WriteRequest {
            ticket: Ticket {
                device: "press".into(),
                metric: "Setpoint".into(),
                index: 0,
                old: None,
                new: value,
                request: "r1".into(),
                requested_at: 0,
            },
            confirm_timeout: Duration::from_millis(500),
        }
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Runs a poller of `d`, sends `writes` once it is online (or at once
    /// when `wait_online` is false), and returns the write outcomes.
    fn run_writes(d: DeviceConfig, wait_online: bool, writes: Vec<WriteRequest>) -> Vec<(Outcome, Option<Value>)> {
        current_thread().block_on(async {
            let (tx, mut rx) = mpsc::channel(64);
            let (wtx, wrx) = mpsc::channel(8);
            let (stop_tx, stop) = watch::channel(false);
            let poller = tokio::spawn(run(d, tx, Arc::new(DeviceStats::default()), wrx, stop));
            if wait_online {
                while !matches!(rx.recv().await, Some(PollEvent::Online { complete: true, .. })) {}
            }
            let n = writes.len();
            for w in writes {
                wtx.send(w).await.expect("poller alive");
            }
            let mut got = Vec::new();
            while got.len() < n {
                if let Some(PollEvent::Written {
                    outcome,
                    read_back,
                    ticket,
                    ..
                }) = rx.recv().await
                {
                    assert_eq!(ticket.request, "r1", "the ticket comes back");
                    got.push((outcome, read_back));
                }
            }
            stop_tx.send(true).expect("stop");
            poller.await.expect("poller");
            got
        })
    }

    #[test]
    fn a_write_is_confirmed_by_reading_the_value_back_in_the_tags_datatype() {
        let got = run_writes(sim_press(""), true, vec![ticket(Value::Int64(42))]);
        assert_eq!(got, vec![(Outcome::Confirmed, Some(Value::Int16(42)))]);
    }

    #[test]
    fn a_write_sent_before_the_first_scan_waits_for_it_and_is_confirmed() {
        let got = run_writes(sim_press(""), false, vec![ticket(Value::Int64(7))]);
        assert_eq!(got, vec![(Outcome::Confirmed, Some(Value::Int16(7)))]);
    }

    #[test]
    fn a_write_to_an_offline_device_fails_at_once_without_connecting() {
        let d = sim_press("[devices.sim]\nunreachable_every = \"1s\"\nunreachable_for = \"1s\"");
        let got = run_writes(d, false, vec![ticket(Value::Int16(1))]);
        assert_eq!(got, vec![(Outcome::Failed("the device is offline".into()), None)]);
    }

    #[test]
    fn a_value_the_plc_refuses_fails_with_the_plcs_reason() {
        // Past the guard only by a bug: the driver still refuses it.
        let got = run_writes(sim_press(""), true, vec![ticket(Value::Int64(100_000))]);
        assert!(
            matches!(&got[..], [(Outcome::Failed(r), None)] if r.contains("does not fit a Int16 tag")),
            "{got:?}"
        );
    }

    #[test]
    fn writes_still_queued_when_the_poller_stops_fail_and_say_why() {
        current_thread().block_on(async {
            let (tx, mut rx) = mpsc::channel(64);
            let (wtx, wrx) = mpsc::channel(8);
            let (stop_tx, stop) = watch::channel(false);
            // Stopped before it runs: the queued write is never taken.
            wtx.send(ticket(Value::Int16(1))).await.expect("queued");
            stop_tx.send(true).expect("stop");
            run(sim_press(""), tx, Arc::new(DeviceStats::default()), wrx, stop).await;
            match rx.recv().await {
                Some(PollEvent::Written {
                    outcome: Outcome::Failed(r),
                    ..
                }) => {
                    assert!(r.contains("poller stopped"), "{r}")
                }
                other => panic!("{other:?}"),
            }
        });
    }
}
