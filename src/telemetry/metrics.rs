//! Counters and gauges shared by the poller, the session loop and the HTTP
//! endpoint, rendered in the Prometheus text format.
//!
//! Invariant: every update is a relaxed atomic operation (or a short lock for
//! registering a device); rendering never blocks a writer for long.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::sparkplug::topic::MessageType;

pub use crate::plc::stats::{DeviceStats, LATENCY_BUCKETS};

/// Everything the gateway exposes.
#[derive(Debug, Default)]
pub struct Telemetry {
    published: [AtomicU64; 8],
    pub published_bytes: AtomicU64,
    pub data_metrics: AtomicU64,
    pub rebirths: AtomicU64,
    pub seq: AtomicU64,
    pub bdseq: AtomicU64,
    pub connected: AtomicBool,
    pub born: AtomicBool,
    pub connects: AtomicU64,
    pub connection_failures: AtomicU64,
    pub commands_received: AtomicU64,
    /// Metrics of NCMD/DCMD by outcome: node control carried out (write
    /// lock, Next Server, Reboot), writes confirmed or failed, refused.
    pub commands_applied: AtomicU64,
    pub commands_confirmed: AtomicU64,
    pub commands_failed: AtomicU64,
    pub commands_refused: AtomicU64,
    /// Lines the command audit file could not take (the journal has them).
    pub audit_errors: Arc<AtomicU64>,
    /// Writes are locked (`Node Control/Write Lock` or `commands.write_lock`).
    pub write_locked: AtomicBool,
    pub rejected_messages: AtomicU64,
    /// The store failed a write and has not been replaced yet.
    pub store_failed: AtomicBool,
    /// The store has been opened (not yet while the gateway waits for setup).
    pub store_open: AtomicBool,
    /// The configuration lacks an identity or a broker: the gateway waits.
    pub setup_incomplete: AtomicBool,
    /// Inbound messages over `commands.max_message_size`, dropped unread.
    pub oversized_messages: AtomicU64,
    pub stored_samples: AtomicU64,
    /// Stored samples made durable by an fdatasync (they survive a power cut).
    pub synced_samples: AtomicU64,
    /// Stored samples written but not yet synced (a power cut now loses them).
    pub unsynced_samples: AtomicU64,
    /// Bytes the store wrote to its files, and its fdatasync/fsync calls.
    pub store_bytes_written: AtomicU64,
    pub store_syncs: AtomicU64,
    /// Bytes the store's files take (bounded by store.max_bytes).
    pub store_file_bytes: AtomicU64,
    pub replayed_samples: AtomicU64,
    pub dropped_samples: AtomicU64,
    pub queue_depth: AtomicU64,
    /// Records (DATA messages' worth of samples) waiting in the store.
    pub queue_records: AtomicU64,
    pub queue_bytes: AtomicU64,
    pub corrupt_records: AtomicU64,
    /// Timestamp (ms) of the oldest stored sample, 0 when nothing is stored.
    pub queue_oldest_ms: AtomicU64,
    pub primary_host_online: AtomicBool,
    /// Live samples sent but not yet confirmed by a watermark.
    pub unconfirmed_samples: AtomicU64,
    /// Confirmed samples kept in memory for a Primary Host death.
    pub retained_samples: AtomicU64,
    /// Samples (live and replayed) a watermark proved the broker read.
    pub confirmed_samples: AtomicU64,
    /// Stored samples replayed during the last second.
    pub replay_rate: AtomicU64,
    /// Advanced by the session loop on every tick (without pollers, it stands in for them).
    pub poll_progress: AtomicU64,
    /// Advanced by the session loop (which runs MQTT) on every event and tick.
    pub mqtt_progress: AtomicU64,
    devices: Mutex<BTreeMap<String, Arc<DeviceStats>>>,
}

fn index(kind: MessageType) -> usize {
    match kind {
        MessageType::NBirth => 0,
        MessageType::NDeath => 1,
        MessageType::DBirth => 2,
        MessageType::DDeath => 3,
        MessageType::NData => 4,
        MessageType::DData => 5,
        MessageType::NCmd => 6,
        MessageType::DCmd => 7,
    }
}

const KINDS: [MessageType; 8] = [
    MessageType::NBirth,
    MessageType::NDeath,
    MessageType::DBirth,
    MessageType::DDeath,
    MessageType::NData,
    MessageType::DData,
    MessageType::NCmd,
    MessageType::DCmd,
];

impl Telemetry {
    pub fn new() -> Arc<Telemetry> {
        Arc::new(Telemetry::default())
    }

    /// The statistics of a device, created on first use.
    pub fn device(&self, name: &str) -> Arc<DeviceStats> {
        let mut map = self.devices.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(name.to_string()).or_default().clone()
    }

    /// Each poller's heartbeat, by device: the watchdog's view of the poll loops.
    pub fn heartbeats(&self) -> Vec<(String, u64)> {
        let map = self.devices.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .map(|(k, d)| (k.clone(), d.heartbeat.load(Relaxed)))
            .collect()
    }

    /// Forgets devices no longer configured (after a reload).
    pub fn retain_devices(&self, names: &[&str]) {
        let mut map = self.devices.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|k, _| names.contains(&k.as_str()));
    }

    /// Counts one published message of `kind`.
    pub fn published(&self, kind: MessageType, bytes: usize) {
        self.published[index(kind)].fetch_add(1, Relaxed);
        self.published_bytes.fetch_add(bytes as u64, Relaxed);
    }

    pub fn published_count(&self, kind: MessageType) -> u64 {
        self.published[index(kind)].load(Relaxed)
    }

    /// Connected to a broker and born (with the Primary Host online if one is configured).
    /// Connected, born, and the store takes writes.
    pub fn ready(&self) -> bool {
        self.connected.load(Relaxed) && self.born.load(Relaxed) && !self.store_failed.load(Relaxed)
    }

    /// Age in seconds of the oldest stored sample (0 when nothing is stored).
    pub fn queue_oldest_age_s(&self, now_ms: u64) -> u64 {
        match self.queue_oldest_ms.load(Relaxed) {
            0 => 0,
            t => now_ms.saturating_sub(t) / 1000,
        }
    }

    /// The store's line on `/ready`.
    pub fn store_summary(&self, now_ms: u64) -> String {
        if !self.store_open.load(Relaxed) {
            return "store: not opened yet".to_string();
        }
        format!(
            "store{}: {} samples ({} bytes), oldest {} s, stored {}, replayed {} ({}/s), dropped {}, corrupt records {}, unconfirmed {}, kept for the host {}",
            if self.store_failed.load(Relaxed) {
                " FAILED (a new one is tried every 10 s)"
            } else {
                ""
            },
            self.queue_depth.load(Relaxed),
            self.queue_bytes.load(Relaxed),
            self.queue_oldest_age_s(now_ms),
            self.stored_samples.load(Relaxed),
            self.replayed_samples.load(Relaxed),
            self.replay_rate.load(Relaxed),
            self.dropped_samples.load(Relaxed),
            self.corrupt_records.load(Relaxed),
            self.unconfirmed_samples.load(Relaxed),
            self.retained_samples.load(Relaxed),
        )
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        let g = |s: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let _ = writeln!(
            s,
            "# HELP spb_messages_published_total Sparkplug messages published, by type."
        );
        let _ = writeln!(s, "# TYPE spb_messages_published_total counter");
        for k in KINDS
            .iter()
            .filter(|k| !matches!(k, MessageType::NCmd | MessageType::DCmd))
        {
            let _ = writeln!(
                s,
                "spb_messages_published_total{{type=\"{k}\"}} {}",
                self.published_count(*k)
            );
        }
        g(
            &mut s,
            "spb_published_bytes_total",
            "Payload bytes published.",
            "counter",
            self.published_bytes.load(Relaxed),
        );
        g(
            &mut s,
            "spb_data_metrics_total",
            "Metric values published in NDATA/DDATA.",
            "counter",
            self.data_metrics.load(Relaxed),
        );
        g(
            &mut s,
            "spb_rebirths_total",
            "Birth sequences published on request.",
            "counter",
            self.rebirths.load(Relaxed),
        );
        g(
            &mut s,
            "spb_seq",
            "The seq of the last message published.",
            "gauge",
            self.seq.load(Relaxed),
        );
        g(
            &mut s,
            "spb_bdseq",
            "The bdSeq of the current MQTT session.",
            "gauge",
            self.bdseq.load(Relaxed),
        );
        g(
            &mut s,
            "spb_mqtt_connected",
            "1 while connected to a broker.",
            "gauge",
            self.connected.load(Relaxed).into(),
        );
        g(
            &mut s,
            "spb_born",
            "1 while NBIRTH is published in the current session.",
            "gauge",
            self.born.load(Relaxed).into(),
        );
        g(
            &mut s,
            "spb_primary_host_online",
            "1 while the Primary Host's STATE is online.",
            "gauge",
            self.primary_host_online.load(Relaxed).into(),
        );
        g(
            &mut s,
            "spb_mqtt_connects_total",
            "Successful MQTT connections.",
            "counter",
            self.connects.load(Relaxed),
        );
        g(
            &mut s,
            "spb_mqtt_connection_failures_total",
            "Failed or lost MQTT connections.",
            "counter",
            self.connection_failures.load(Relaxed),
        );
        g(
            &mut s,
            "spb_commands_received_total",
            "NCMD/DCMD write requests received.",
            "counter",
            self.commands_received.load(Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP spb_commands_total Metrics of NCMD/DCMD, by outcome: applied (node control), confirmed or failed (writes), refused.\n\
             # TYPE spb_commands_total counter\n\
             spb_commands_total{{outcome=\"applied\"}} {}\n\
             spb_commands_total{{outcome=\"confirmed\"}} {}\n\
             spb_commands_total{{outcome=\"failed\"}} {}\n\
             spb_commands_total{{outcome=\"refused\"}} {}",
            self.commands_applied.load(Relaxed),
            self.commands_confirmed.load(Relaxed),
            self.commands_failed.load(Relaxed),
            self.commands_refused.load(Relaxed)
        );
        g(
            &mut s,
            "spb_audit_errors_total",
            "Command audit lines the audit file could not take (the journal has every line).",
            "counter",
            self.audit_errors.load(Relaxed),
        );
        g(
            &mut s,
            "spb_write_locked",
            "1 while every write is refused (commands.write_lock or NCMD Node Control/Write Lock).",
            "gauge",
            self.write_locked.load(Relaxed).into(),
        );
        g(
            &mut s,
            "spb_rejected_messages_total",
            "Incoming messages or stored samples that could not be used.",
            "counter",
            self.rejected_messages.load(Relaxed),
        );
        g(
            &mut s,
            "spb_setup_incomplete",
            "1 while the configuration lacks [node] identity or a broker: the gateway waits, publishing nothing.",
            "gauge",
            self.setup_incomplete.load(Relaxed).into(),
        );
        g(
            &mut s,
            "spb_store_failed",
            "1 while the store refuses writes (a new one is tried every 10 s).",
            "gauge",
            self.store_failed.load(Relaxed).into(),
        );
        g(
            &mut s,
            "spb_oversized_messages_total",
            "Inbound messages over commands.max_message_size, dropped with the connection kept.",
            "counter",
            self.oversized_messages.load(Relaxed),
        );
        g(
            &mut s,
            "spb_stored_samples_total",
            "Samples stored while not publishing (written: they survive a crash of the gateway).",
            "counter",
            self.stored_samples.load(Relaxed),
        );
        g(
            &mut s,
            "spb_store_synced_samples_total",
            "Stored samples made durable by fdatasync (they survive a power cut).",
            "counter",
            self.synced_samples.load(Relaxed),
        );
        g(
            &mut s,
            "spb_store_unsynced_samples",
            "Stored samples not yet synced: what a power cut now would lose (at most store.flush_interval of data).",
            "gauge",
            self.unsynced_samples.load(Relaxed),
        );
        g(
            &mut s,
            "spb_store_bytes_written_total",
            "Bytes the store wrote to its files (flash wear).",
            "counter",
            self.store_bytes_written.load(Relaxed),
        );
        g(
            &mut s,
            "spb_store_syncs_total",
            "fdatasync and fsync calls of the store.",
            "counter",
            self.store_syncs.load(Relaxed),
        );
        g(
            &mut s,
            "spb_store_file_bytes",
            "Bytes the store's files take (bounded by store.max_bytes).",
            "gauge",
            self.store_file_bytes.load(Relaxed),
        );
        g(
            &mut s,
            "spb_replayed_samples_total",
            "Stored samples replayed as historical.",
            "counter",
            self.replayed_samples.load(Relaxed),
        );
        g(
            &mut s,
            "spb_dropped_samples_total",
            "Stored samples dropped because the store was full.",
            "counter",
            self.dropped_samples.load(Relaxed),
        );
        g(
            &mut s,
            "spb_queue_depth",
            "Samples waiting in the store.",
            "gauge",
            self.queue_depth.load(Relaxed),
        );
        g(
            &mut s,
            "spb_queue_records",
            "Records waiting in the store (one per DATA message not published).",
            "gauge",
            self.queue_records.load(Relaxed),
        );
        g(
            &mut s,
            "spb_queue_bytes",
            "Bytes waiting in the store.",
            "gauge",
            self.queue_bytes.load(Relaxed),
        );
        g(
            &mut s,
            "spb_queue_corrupt_records",
            "Stored records that failed their checksum (quarantined, kept for inspection).",
            "gauge",
            self.corrupt_records.load(Relaxed),
        );
        g(
            &mut s,
            "spb_queue_oldest_age_seconds",
            "Age of the oldest stored sample (0 when nothing is stored).",
            "gauge",
            self.queue_oldest_age_s(crate::clock::now_ms()),
        );
        g(
            &mut s,
            "spb_replay_rate",
            "Stored samples replayed during the last second.",
            "gauge",
            self.replay_rate.load(Relaxed),
        );
        g(
            &mut s,
            "spb_unconfirmed_samples",
            "Live samples sent at QoS 0 and not yet confirmed by a watermark (stored if the connection drops).",
            "gauge",
            self.unconfirmed_samples.load(Relaxed),
        );
        g(
            &mut s,
            "spb_host_window_samples",
            "Confirmed samples kept in memory to replay if the Primary Host dies.",
            "gauge",
            self.retained_samples.load(Relaxed),
        );
        g(
            &mut s,
            "spb_confirmed_samples_total",
            "Samples a watermark proved the broker read.",
            "counter",
            self.confirmed_samples.load(Relaxed),
        );
        let devices = self.devices.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        type Series = (&'static str, &'static str, &'static str, fn(&DeviceStats) -> u64);
        let series: [Series; 11] = [
            ("spb_device_online", "1 while the device answers.", "gauge", |d| {
                d.online.load(Relaxed).into()
            }),
            ("spb_plc_reads_total", "Batched PLC reads.", "counter", |d| {
                d.reads.load(Relaxed)
            }),
            (
                "spb_plc_read_errors_total",
                "Batched PLC reads that failed.",
                "counter",
                |d| d.read_errors.load(Relaxed),
            ),
            (
                "spb_plc_protocol_violations_total",
                "Answers that broke the protocol's bounds (the connection was dropped).",
                "counter",
                |d| d.protocol_violations.load(Relaxed),
            ),
            (
                "spb_plc_tag_errors_total",
                "Single tags that could not be read (BAD quality).",
                "counter",
                |d| d.tag_errors.load(Relaxed),
            ),
            (
                "spb_plc_missed_scans_total",
                "Scans skipped because the previous one ran late.",
                "counter",
                |d| d.missed_scans.load(Relaxed),
            ),
            (
                "spb_tag_changes_total",
                "Tag values reported by exception.",
                "counter",
                |d| d.changes.load(Relaxed),
            ),
            (
                "spb_plc_connects_total",
                "Connection attempts to the PLC.",
                "counter",
                |d| d.connects.load(Relaxed),
            ),
            (
                "spb_plc_connect_failures_total",
                "Connection attempts that failed.",
                "counter",
                |d| d.connect_failures.load(Relaxed),
            ),
            (
                "spb_plc_circuit_open",
                "1 while the poller waits out a reconnect backoff (the PLC gets no traffic).",
                "gauge",
                |d| d.circuit_open.load(Relaxed).into(),
            ),
            (
                "spb_plc_last_read_microseconds",
                "Latency of the last batched read.",
                "gauge",
                |d| d.last_read_us.load(Relaxed),
            ),
        ];
        for (name, help, kind, get) in series {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (dev, d) in devices.iter() {
                let _ = writeln!(s, "{name}{{device=\"{}\"}} {}", escape(dev), get(d));
            }
        }
        let _ = writeln!(
            s,
            "# HELP spb_plc_read_seconds Latency of batched PLC reads.\n# TYPE spb_plc_read_seconds histogram"
        );
        for (dev, d) in devices.iter() {
            let dev = escape(dev);
            for (b, le) in d.latency_buckets().zip(LATENCY_BUCKETS) {
                let _ = writeln!(s, "spb_plc_read_seconds_bucket{{device=\"{dev}\",le=\"{le}\"}} {b}");
            }
            let n = d.reads.load(Relaxed);
            let _ = writeln!(s, "spb_plc_read_seconds_bucket{{device=\"{dev}\",le=\"+Inf\"}} {n}");
            let _ = writeln!(
                s,
                "spb_plc_read_seconds_sum{{device=\"{dev}\"}} {}",
                d.latency_sum_us() as f64 / 1e6
            );
            let _ = writeln!(s, "spb_plc_read_seconds_count{{device=\"{dev}\"}} {n}");
        }
        s
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_message_counts_device_series_and_a_cumulative_histogram() {
        let t = Telemetry::new();
        t.published(MessageType::NBirth, 100);
        t.published(MessageType::DData, 40);
        t.published(MessageType::DData, 40);
        let d = t.device("press \"4\"");
        d.observe_read(std::time::Duration::from_millis(3), true);
        d.observe_read(std::time::Duration::from_millis(300), false);
        let text = t.render();
        assert!(
            text.contains("spb_messages_published_total{type=\"DDATA\"} 2"),
            "{text}"
        );
        assert!(text.contains("spb_published_bytes_total 180"));
        assert!(
            text.contains("spb_plc_read_errors_total{device=\"press \\\"4\\\"\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("spb_plc_read_seconds_bucket{device=\"press \\\"4\\\"\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("spb_plc_read_seconds_bucket{device=\"press \\\"4\\\"\",le=\"0.5\"} 2"),
            "{text}"
        );
        assert!(text.contains("spb_plc_read_seconds_count{device=\"press \\\"4\\\"\"} 2"));
    }
}
