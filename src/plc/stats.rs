//! What each device's poller counts: reads, errors, connects, latency. The
//! poller writes these with relaxed atomics; the telemetry module renders
//! them. Kept beside the drivers so that they never depend on telemetry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the PLC read latency histogram.
pub const LATENCY_BUCKETS: [f64; 11] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Per-device polling statistics.
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// Advanced by the poller loop at least once a second while it is alive.
    pub heartbeat: AtomicU64,
    pub reads: AtomicU64,
    pub read_errors: AtomicU64,
    pub tag_errors: AtomicU64,
    pub missed_scans: AtomicU64,
    pub changes: AtomicU64,
    pub online: AtomicBool,
    /// Connection attempts and the ones that failed.
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Answers that broke the protocol's bounds (oversized, endless
    /// fragments, malformed past what a PLC sends): connection dropped.
    pub protocol_violations: AtomicU64,
    /// True while the poller waits out a reconnect backoff (no I/O to the PLC).
    pub circuit_open: AtomicBool,
    /// Latency of the last batched read, in microseconds.
    pub last_read_us: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_sum_us: AtomicU64,
}

impl DeviceStats {
    /// Records one batched read.
    pub fn observe_read(&self, took: Duration, ok: bool) {
        self.reads.fetch_add(1, Relaxed);
        if !ok {
            self.read_errors.fetch_add(1, Relaxed);
        }
        let s = took.as_secs_f64();
        for (b, le) in self.buckets.iter().zip(LATENCY_BUCKETS) {
            if s <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.latency_sum_us.fetch_add(took.as_micros() as u64, Relaxed);
        self.last_read_us.store(took.as_micros() as u64, Relaxed);
    }

    pub fn set_online(&self, online: bool) {
        self.online.store(online, Relaxed);
    }

    /// Reads at or under each of [`LATENCY_BUCKETS`], in order.
    pub fn latency_buckets(&self) -> impl Iterator<Item = u64> + '_ {
        self.buckets.iter().map(|b| b.load(Relaxed))
    }

    /// The sum of every read's latency, in microseconds.
    pub fn latency_sum_us(&self) -> u64 {
        self.latency_sum_us.load(Relaxed)
    }
}
