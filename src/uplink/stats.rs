//! The uplink's counters and gauges, shared by the MQTT loop and the writer
//! tasks, exposed on `/metrics` and `/ready`.
//!
//! Invariants: counters only grow; every gauge is set by one owner (the loop
//! or a writer); rendering takes no lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::telemetry::http::Exposition;

/// Upper bounds (seconds) of the lag and batch-duration histograms; 3 and
/// 60 are the service levels' own bounds (README, "Alerts").
const LAG_BUCKETS: [f64; 11] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 3.0, 5.0, 30.0, 60.0];

/// A Prometheus histogram over [`LAG_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; LAG_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

/// The index of the bucket of `s` seconds (the last one: +Inf).
fn bucket(s: f64) -> usize {
    LAG_BUCKETS.iter().position(|b| s <= *b).unwrap_or(LAG_BUCKETS.len())
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.counts[bucket(d.as_secs_f64())].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// Many observations in milliseconds (negative ones count as 0), added
    /// with one atomic operation per bucket.
    pub fn observe_ms(&self, lags: impl Iterator<Item = i64>) {
        let mut counts = [0u64; LAG_BUCKETS.len() + 1];
        let mut sum_us = 0u64;
        for ms in lags {
            let ms = ms.max(0);
            counts[bucket(ms as f64 / 1000.0)] += 1;
            sum_us = sum_us.saturating_add(ms as u64 * 1000);
        }
        for (c, n) in self.counts.iter().zip(counts) {
            if n > 0 {
                c.fetch_add(n, Relaxed);
            }
        }
        self.sum_us.fetch_add(sum_us, Relaxed);
    }

    fn write(&self, s: &mut String, name: &str, help: &str) {
        use std::fmt::Write as _;
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in LAG_BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Relaxed);
            let _ = writeln!(s, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[LAG_BUCKETS.len()].load(Relaxed);
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(s, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(s, "{name}_count {cum}");
    }
}

/// Counters and gauges for `/metrics` and `/ready`.
#[derive(Debug, Default)]
pub struct Stats {
    pub messages: AtomicU64,
    pub facts_written: AtomicU64,
    pub facts_duplicate: AtomicU64,
    pub raw_written: AtomicU64,
    pub batches: AtomicU64,
    pub db_errors: AtomicU64,
    pub rebirths: AtomicU64,
    pub sequence_errors: AtomicU64,
    pub quarantined: AtomicU64,
    pub commands_audited: AtomicU64,
    pub rollup_folded: AtomicU64,
    /// Rows not written: older than their retention on arrival.
    pub rows_expired: AtomicU64,
    /// Facts quarantined: stamped beyond the retention's horizon.
    pub facts_ahead: AtomicU64,
    /// Facts quarantined: their day had no partition and the connection's
    /// budget of new partitions was spent.
    pub facts_over_budget: AtomicU64,
    pub partitions_created: AtomicU64,
    pub partitions_dropped: AtomicU64,
    /// Rows deleted by retention (SQL Server's batched deletes).
    pub retention_deleted_rows: AtomicU64,
    pub retention_runs: AtomicU64,
    pub retention_errors: AtomicU64,
    pub dropped_rows: AtomicU64,
    pub online_nodes: AtomicU64,
    pub tracked_nodes: AtomicU64,
    pub rebirths_suppressed: AtomicU64,
    pub backlog_rows: AtomicU64,
    /// What the backlog holds in memory, roughly ([`super::rows::Batch::approx_bytes`]).
    pub backlog_bytes: AtomicU64,
    pub last_batch_us: AtomicU64,
    pub connected: AtomicBool,
    pub db_ok: AtomicBool,
    pub declared_offline: AtomicBool,
    /// This instance's own backlog was past `offline_after_rows` (or half
    /// the byte bound) at a tick since the lease round last read (and
    /// cleared) it, whoever publishes STATE.
    pub behind: AtomicBool,
    /// Messages received in the last whole second.
    pub messages_per_second: AtomicU64,
    /// Rows the database refused, isolated from their batch and quarantined.
    pub rows_refused: AtomicU64,
    /// Rows that could be neither written nor quarantined (logged at ERROR).
    pub rows_unstorable: AtomicU64,
    /// Writes that panicked (caught; the rows were isolated and retried).
    pub writer_panics: AtomicU64,
    /// Writer tasks started again after they ended unexpectedly.
    pub writer_restarts: AtomicU64,
    /// From a message's arrival to the commit of its rows (per batch: its
    /// oldest message).
    pub lag: Histogram,
    /// Ticks of the MQTT loop (every 50 ms): the systemd watchdog is
    /// petted while it moves.
    pub loop_ticks: AtomicU64,
    /// Valid configuration files read again (SIGHUP).
    pub reloads: AtomicU64,
    /// Scale-out: leases held (groups, and STATE), live instances, rows of
    /// groups held elsewhere kept in the standby, rows given back because
    /// their lease was found lost while writing, rows the standby's bound
    /// dropped, leases taken from another instance or a free one.
    pub leases_held: AtomicU64,
    pub state_owner: AtomicBool,
    pub scale_members: AtomicU64,
    pub standby_rows: AtomicU64,
    pub deferred_messages: AtomicU64,
    pub standby_bytes: AtomicU64,
    pub rows_handed_over: AtomicU64,
    pub standby_dropped: AtomicU64,
    pub leases_taken: AtomicU64,
    /// From each live fact's own sample timestamp to its commit: the
    /// service level's lag (historical facts, replayed late on purpose,
    /// are not counted).
    pub sample_lag: Histogram,
    pub batch_time: Histogram,
    /// Commands of the API by outcome: refused, sent (still waiting is not
    /// counted), confirmed, failed, timeout.
    pub api_commands: [AtomicU64; 5],
    /// From sending a command of the API to its outcome on the edge's DDATA.
    pub command_round_trip: Histogram,
    /// Intervals the OEE folder wrote.
    pub oee_intervals: AtomicU64,
    /// Each OEE machine's current shift, as of the last fold.
    pub oee_live: std::sync::Mutex<Vec<OeeLive>>,
    /// OEE machines whose mapping the last birth refutes, with why: they
    /// are not computed until a birth fits.
    pub oee_mapping: std::sync::Mutex<std::collections::BTreeMap<String, Vec<String>>>,
}

/// One machine's OEE now: its current shift's figures and its cycles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OeeLive {
    pub machine: String,
    pub shift: Option<String>,
    pub availability: Option<f64>,
    pub performance: Option<f64>,
    pub quality: Option<f64>,
    pub oee: Option<f64>,
    pub cycles: u64,
}

/// The order of [`Stats::api_commands`].
pub const API_OUTCOMES: [&str; 5] = ["refused", "sent", "confirmed", "failed", "timeout"];

impl Exposition for Stats {
    fn ready(&self) -> (bool, String) {
        let (c, d, off) = (
            self.connected.load(Relaxed),
            self.db_ok.load(Relaxed),
            self.declared_offline.load(Relaxed),
        );
        let ready = c && d && !off;
        let word = if ready { "ready" } else { "not ready" };
        (
            ready,
            format!(
                "{word}: broker {}, database {}, STATE {}\nonline nodes {}, backlog {} rows, facts written {}, duplicates {}, database errors {}\n",
                if c { "connected" } else { "disconnected" },
                if d { "ok" } else { "failing" },
                if off { "offline (catching up)" } else { "online" },
                self.online_nodes.load(Relaxed),
                self.backlog_rows.load(Relaxed),
                self.facts_written.load(Relaxed),
                self.facts_duplicate.load(Relaxed),
                self.db_errors.load(Relaxed),
            ),
        )
    }

    fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let mut g = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        g(
            "spb_uplink_messages_total",
            "MQTT messages received on spBv1.0/.",
            "counter",
            self.messages.load(Relaxed),
        );
        g(
            "spb_uplink_facts_written_total",
            "Metric facts inserted.",
            "counter",
            self.facts_written.load(Relaxed),
        );
        g(
            "spb_uplink_facts_duplicate_total",
            "Facts already stored (replays, duplicates): written once.",
            "counter",
            self.facts_duplicate.load(Relaxed),
        );
        g(
            "spb_uplink_raw_events_total",
            "Messages logged raw.",
            "counter",
            self.raw_written.load(Relaxed),
        );
        g(
            "spb_uplink_batches_total",
            "Batches committed.",
            "counter",
            self.batches.load(Relaxed),
        );
        g(
            "spb_uplink_database_errors_total",
            "Failed database writes or connects (retried).",
            "counter",
            self.db_errors.load(Relaxed),
        );
        g(
            "spb_uplink_rebirths_requested_total",
            "Rebirth requests sent to edge nodes.",
            "counter",
            self.rebirths.load(Relaxed),
        );
        g(
            "spb_uplink_sequence_errors_total",
            "Messages with an unexpected seq.",
            "counter",
            self.sequence_errors.load(Relaxed),
        );
        g(
            "spb_uplink_quarantined_total",
            "Payloads quarantined.",
            "counter",
            self.quarantined.load(Relaxed),
        );
        g(
            "spb_uplink_commands_audited_total",
            "NCMD/DCMD metrics recorded in sp_command_audit (this host's and others').",
            "counter",
            self.commands_audited.load(Relaxed),
        );
        g(
            "spb_uplink_rollup_folded_total",
            "Facts folded into the minute/hour/day rollups.",
            "counter",
            self.rollup_folded.load(Relaxed),
        );
        g(
            "spb_uplink_rows_expired_total",
            "Rows not written because they were older than their retention on arrival.",
            "counter",
            self.rows_expired.load(Relaxed),
        );
        g(
            "spb_uplink_facts_ahead_total",
            "Facts quarantined for a timestamp beyond the retention's horizon.",
            "counter",
            self.facts_ahead.load(Relaxed),
        );
        g(
            "spb_uplink_facts_partition_budget_total",
            "Facts quarantined because their day had no partition and the minute's budget of new partitions was spent.",
            "counter",
            self.facts_over_budget.load(Relaxed),
        );
        g(
            "spb_uplink_partitions_created_total",
            "Time partitions created (ahead, or for arriving rows).",
            "counter",
            self.partitions_created.load(Relaxed),
        );
        g(
            "spb_uplink_partitions_dropped_total",
            "Expired time partitions dropped.",
            "counter",
            self.partitions_dropped.load(Relaxed),
        );
        g(
            "spb_uplink_retention_deleted_rows_total",
            "Expired rows deleted in bounded batches (SQL Server).",
            "counter",
            self.retention_deleted_rows.load(Relaxed),
        );
        g(
            "spb_uplink_retention_runs_total",
            "Retention runs completed.",
            "counter",
            self.retention_runs.load(Relaxed),
        );
        g(
            "spb_uplink_retention_errors_total",
            "Retention runs that failed (tried again at the next interval).",
            "counter",
            self.retention_errors.load(Relaxed),
        );
        g(
            "spb_uplink_dropped_rows_total",
            "Rows dropped because the backlog was full.",
            "counter",
            self.dropped_rows.load(Relaxed),
        );
        g(
            "spb_uplink_rows_refused_total",
            "Rows the database refused (data errors), isolated from their batch and quarantined.",
            "counter",
            self.rows_refused.load(Relaxed),
        );
        g(
            "spb_uplink_rows_unstorable_total",
            "Rows neither written nor quarantined (each logged at ERROR).",
            "counter",
            self.rows_unstorable.load(Relaxed),
        );
        g(
            "spb_uplink_writer_panics_total",
            "Database writes that panicked; their rows were isolated and retried.",
            "counter",
            self.writer_panics.load(Relaxed),
        );
        g(
            "spb_uplink_writer_restarts_total",
            "Writer tasks started again after they ended.",
            "counter",
            self.writer_restarts.load(Relaxed),
        );
        g(
            "spb_uplink_reloads_total",
            "Valid configuration files read again on SIGHUP.",
            "counter",
            self.reloads.load(Relaxed),
        );
        g(
            "spb_uplink_scale_leases_held",
            "Scale-out: group leases this instance holds (STATE not counted).",
            "gauge",
            self.leases_held.load(Relaxed),
        );
        g(
            "spb_uplink_scale_state_owner",
            "Scale-out: 1 while this instance holds the STATE identity.",
            "gauge",
            u64::from(self.state_owner.load(Relaxed)),
        );
        g(
            "spb_uplink_scale_instances",
            "Scale-out: live instances sharing the groups.",
            "gauge",
            self.scale_members.load(Relaxed),
        );
        g(
            "spb_uplink_scale_standby_rows",
            "Scale-out: rows of groups held elsewhere, kept until their holder commits them.",
            "gauge",
            self.standby_rows.load(Relaxed),
        );
        g(
            "spb_uplink_scale_deferred_messages",
            "Scale-out: DATA messages of groups held elsewhere, kept undecoded until their holder commits them.",
            "gauge",
            self.deferred_messages.load(Relaxed),
        );
        g(
            "spb_uplink_scale_standby_bytes",
            "Scale-out: the standby's estimated size.",
            "gauge",
            self.standby_bytes.load(Relaxed),
        );
        g(
            "spb_uplink_scale_rows_handed_over_total",
            "Scale-out: rows not written because their lease was found lost (kept in the standby).",
            "counter",
            self.rows_handed_over.load(Relaxed),
        );
        g(
            "spb_uplink_scale_standby_dropped_total",
            "Scale-out: standby rows dropped at its bound (a takeover may miss them).",
            "counter",
            self.standby_dropped.load(Relaxed),
        );
        g(
            "spb_uplink_scale_leases_taken_total",
            "Scale-out: leases this instance took (groups and STATE).",
            "counter",
            self.leases_taken.load(Relaxed),
        );
        g(
            "spb_uplink_online_nodes",
            "Edge nodes online.",
            "gauge",
            self.online_nodes.load(Relaxed),
        );
        g(
            "spb_uplink_rebirths_suppressed_total",
            "Rebirth requests not sent: over limits.max_rebirths_per_second.",
            "counter",
            self.rebirths_suppressed.load(Relaxed),
        );
        g(
            "spb_uplink_tracked_nodes",
            "Edge nodes the host keeps state for (bounded by limits.max_nodes).",
            "gauge",
            self.tracked_nodes.load(Relaxed),
        );
        g(
            "spb_uplink_backlog_rows",
            "Rows waiting for the database.",
            "gauge",
            self.backlog_rows.load(Relaxed),
        );
        g(
            "spb_uplink_backlog_bytes",
            "Memory the rows waiting for the database hold (estimate).",
            "gauge",
            self.backlog_bytes.load(Relaxed),
        );
        g(
            "spb_uplink_last_batch_microseconds",
            "Duration of the last committed batch.",
            "gauge",
            self.last_batch_us.load(Relaxed),
        );
        g(
            "spb_uplink_connected",
            "1 while connected to a broker.",
            "gauge",
            self.connected.load(Relaxed).into(),
        );
        g(
            "spb_uplink_database_ok",
            "1 while the last database write succeeded.",
            "gauge",
            self.db_ok.load(Relaxed).into(),
        );
        g(
            "spb_uplink_state_offline",
            "1 while this host has declared itself offline to catch up.",
            "gauge",
            self.declared_offline.load(Relaxed).into(),
        );
        g(
            "spb_uplink_messages_per_second",
            "Messages received in the last whole second.",
            "gauge",
            self.messages_per_second.load(Relaxed),
        );
        self.sample_lag.write(
            &mut s,
            "spb_uplink_ingest_lag_seconds",
            "From each live sample's own timestamp (the edge's) to the commit of its fact: the service level's lag.",
        );
        self.lag.write(
            &mut s,
            "spb_uplink_commit_lag_seconds",
            "From a message's arrival at the uplink to the commit of its rows (per batch, its oldest message).",
        );
        self.batch_time.write(
            &mut s,
            "spb_uplink_batch_seconds",
            "Duration of each committed database transaction.",
        );
        let _ = writeln!(
            s,
            "# HELP spb_uplink_commands_total Commands of the API (POST /commands) by outcome.\n# TYPE spb_uplink_commands_total counter"
        );
        for (i, o) in API_OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                s,
                "spb_uplink_commands_total{{outcome=\"{o}\"}} {}",
                self.api_commands[i].load(Relaxed)
            );
        }
        self.command_round_trip.write(
            &mut s,
            "spb_uplink_command_round_trip_seconds",
            "From a command of the API sent to its confirming (or failing) DDATA.",
        );
        let _ = writeln!(
            s,
            "# HELP spb_uplink_oee_intervals_total OEE intervals (hours and shifts) computed.\n# TYPE spb_uplink_oee_intervals_total counter\nspb_uplink_oee_intervals_total {}",
            self.oee_intervals.load(Relaxed)
        );
        if let Ok(errors) = self.oee_mapping.lock() {
            if !errors.is_empty() {
                let _ = writeln!(
                    s,
                    "# HELP spb_uplink_oee_mapping_errors Problems of a machine's [oee] mapping against its birth (not computed while > 0).\n# TYPE spb_uplink_oee_mapping_errors gauge"
                );
                for (m, e) in errors.iter() {
                    let _ = writeln!(s, "spb_uplink_oee_mapping_errors{{machine={m:?}}} {}", e.len());
                }
            }
        }
        if let Ok(live) = self.oee_live.lock() {
            if !live.is_empty() {
                let _ = writeln!(
                    s,
                    "# HELP spb_uplink_oee Each machine's current shift: availability, performance, quality and oee (ISO 22400-2).\n# TYPE spb_uplink_oee gauge"
                );
                for l in live.iter() {
                    let shift = l.shift.as_deref().unwrap_or("");
                    for (figure, v) in [
                        ("availability", l.availability),
                        ("performance", l.performance),
                        ("quality", l.quality),
                        ("oee", l.oee),
                    ] {
                        if let Some(v) = v {
                            let _ = writeln!(
                                s,
                                "spb_uplink_oee{{machine={:?},shift={shift:?},figure=\"{figure}\"}} {v}",
                                l.machine
                            );
                        }
                    }
                }
                let _ = writeln!(
                    s,
                    "# HELP spb_uplink_oee_cycles_total Cycles each machine produced, over every computed hour.\n# TYPE spb_uplink_oee_cycles_total counter"
                );
                for l in live.iter() {
                    let _ = writeln!(s, "spb_uplink_oee_cycles_total{{machine={:?}}} {}", l.machine, l.cycles);
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_lags_land_in_their_buckets_and_the_slo_bounds_are_buckets() {
        let h = Histogram::default();
        h.observe_ms([5, 2_900, 3_000, 3_001, 61_000, -7].into_iter());
        let mut s = String::new();
        h.write(&mut s, "x", "help");
        for want in [
            "x_bucket{le=\"0.01\"} 2",
            "x_bucket{le=\"2.5\"} 2",
            "x_bucket{le=\"3\"} 4",
            "x_bucket{le=\"5\"} 5",
            "x_bucket{le=\"60\"} 5",
            "x_bucket{le=\"+Inf\"} 6",
            "x_sum 69.906",
            "x_count 6",
        ] {
            assert!(s.contains(want), "{want} in\n{s}");
        }
    }
}
