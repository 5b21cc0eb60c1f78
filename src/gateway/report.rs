//! What the gateway tells its operators about store-and-forward: a log
//! line for each of the forwarder's notices, throttled, and the store's
//! gauges on `/metrics`.
//!
//! Invariants: a repeated ERROR (a full disk, a failing store) is logged at
//! most once per 10 s per kind, with the samples and times it stands for,
//! so it stays loud without flooding the journal; every drop is also
//! counted by the forwarder, whether logged or not.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;

use crate::queue::forward::{Forwarder, Notice};
use crate::telemetry::metrics::Telemetry;

/// Limits a repeated ERROR line to one per 10 s that sums what it stood for:
/// a full disk must be loud, not 100 lines a second.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    /// Samples and occurrences since the last line.
    samples: u64,
    times: u64,
}

impl Throttle {
    fn note(&mut self, samples: u64, log: impl FnOnce(u64, u64)) {
        self.samples += samples;
        self.times += 1;
        if self.last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            return;
        }
        log(self.samples, self.times);
        self.last = Some(Instant::now());
        self.samples = 0;
        self.times = 0;
    }
}

/// The throttled log lines of the store.
#[derive(Debug, Default)]
pub struct StoreLog {
    store_errors: Throttle,
    store_full: Throttle,
}

impl StoreLog {
    /// Logs the forwarder's notices; `store_failed` says whether a write
    /// failure has closed the store.
    pub fn log(&mut self, notices: Vec<Notice>, store_failed: bool, host_window: Duration) {
        for n in notices {
            match n {
                Notice::StoreFailed { samples, error } => {
                    // The first write error that closed the store says what to do.
                    if self.store_errors.last.is_none() && store_failed {
                        tracing::error!(
                        "the store failed a write: a new one is tried in 10 s (what the failed one holds is kept and merged \
                         back at the next start); live data is still published, samples that cannot be stored are dropped \
                         and counted; /ready says 503 meanwhile: free disk space under store.path"
                    );
                    }
                    self.store_errors.note(samples, |dropped, times| {
                        tracing::error!(error = %error, dropped, times, "could not store samples");
                    });
                }
                Notice::StoreFull {
                    samples,
                    limit,
                    max_bytes,
                } => self.store_full.note(samples, |dropped, times| {
                    if limit < max_bytes {
                        tracing::error!(
                            dropped,
                            times,
                            max_bytes,
                            limit,
                            "disk nearly full: the store was bounded to what fits and dropped the oldest samples"
                        );
                    } else {
                        tracing::error!(dropped, times, max_bytes, "store full: dropped the oldest samples");
                    }
                }),
                Notice::HostOffline { samples } => tracing::warn!(
                    samples, window = ?host_window,
                    "Primary Host offline: storing the samples it may have missed, to replay them"
                ),
                Notice::Unreplayable { samples, error } => {
                    tracing::error!(error = %error, dropped = samples, "stored samples cannot be replayed")
                }
                // Logged where the publish was refused.
                Notice::TooLarge { .. } => {}
                Notice::StoreError { what, error } => tracing::error!(error = %error, "cannot {what} the store"),
            }
        }
    }
}

/// The store-and-forward gauges; `store_alive` is false once the store's
/// thread is gone.
pub fn store_gauges(t: &Telemetry, fwd: &Forwarder, store_alive: bool) {
    let c = fwd.counts();
    t.stored_samples.store(c.stored, Relaxed);
    t.dropped_samples.store(c.dropped, Relaxed);
    t.confirmed_samples.store(c.confirmed, Relaxed);
    t.replayed_samples.store(c.replayed, Relaxed);
    t.replay_rate.store(fwd.replay_rate(), Relaxed);
    let o = fwd.outbox();
    t.unconfirmed_samples.store(o.unconfirmed, Relaxed);
    t.retained_samples.store(o.retained, Relaxed);
    let s = fwd.store();
    t.store_failed.store(s.failure.is_some() || !store_alive, Relaxed);
    let q = s.stats;
    t.queue_depth.store(q.metrics, Relaxed);
    t.queue_records.store(q.records, Relaxed);
    t.queue_bytes.store(q.bytes, Relaxed);
    t.corrupt_records.store(q.corrupt_records, Relaxed);
    t.synced_samples.store(q.synced_metrics, Relaxed);
    t.unsynced_samples.store(s.unsynced_samples, Relaxed);
    t.store_bytes_written.store(q.bytes_written, Relaxed);
    t.store_syncs.store(q.syncs, Relaxed);
    t.store_file_bytes.store(s.file_bytes, Relaxed);
    t.queue_oldest_ms.store(s.oldest_ms.unwrap_or(0), Relaxed);
}
