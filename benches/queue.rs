//! Store-and-forward queue (the segment log): durable appends/s, replay records/s, disk
//! bytes per record, and disk use under churn through a small cap.
//!
//! `make bench-queue` (= `cargo bench --bench queue`). Records of about 300
//! bytes (one device, six Double metrics with names and timestamps). Phases:
//! 200k appends in group commits of 100, each acknowledged after its fsync
//! (the gateway's policy); 5k appends with a flush per record; replay of the 200k (read in
//! batches of 1000, then confirm); churn: 2M records through a 16 MiB cap
//! with the consumer ~10k records behind, sampling the files' size on disk.
//! Results go to stdout and `target/bench-queue.md`.

use std::time::{Duration, Instant};

use spb::queue::disk::{DiskOptions, DiskQueue};
use spb::queue::Record;
use spb::sparkplug::{Metric, Value};

fn record(i: u64) -> Record {
    Record {
        device: Some("press-04".into()),
        metrics: (0..6)
            .map(|m| {
                Metric::new(
                    format!("Line 4/Press/Sensor {m}"),
                    Value::Double(i as f64 + f64::from(m)),
                    1_700_000_000_000 + i,
                )
            })
            .collect(),
    }
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().expect("metadata");
            total += if m.is_dir() { dir_bytes(&e.path()) } else { m.len() };
        }
    }
    total
}

/// Appends records 0..n in group commits of 100.
fn append_in_batches_of_100(q: &mut DiskQueue, n: u64) {
    let mut i = 0;
    while i < n {
        let batch: Vec<Record> = (i..(i + 100).min(n)).map(record).collect();
        q.append_batch(&batch).expect("append");
        i += batch.len() as u64;
    }
}

fn hwm_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let base = tempfile::tempdir().expect("tmp");
    let size = spb::sparkplug::Payload {
        metrics: record(0).metrics,
        ..Default::default()
    }
    .encode()
    .expect("encodes")
    .len();
    let mut rows = Vec::new();

    // Group commits of 100, each synced before it returns; then the
    // gateway's default (written at once, synced every second).
    let n = 200_000u64;
    let d0 = base.path().join("synced");
    let mut q = DiskQueue::open(
        &d0,
        DiskOptions {
            sync_interval: Duration::ZERO,
            ..DiskOptions::default()
        },
    )
    .expect("open");
    let t = Instant::now();
    append_in_batches_of_100(&mut q, n);
    let secs = t.elapsed().as_secs_f64();
    rows.push(format!(
        "| append_batch of 100, each fdatasync'ed before it returns | {n} | {:.0} records/s | {:.0} B/record on disk | {:.1} MiB |",
        n as f64 / secs,
        dir_bytes(&d0) as f64 / n as f64,
        hwm_mib()
    ));
    drop(q);
    let d1 = base.path().join("default");
    let mut q = DiskQueue::open(&d1, DiskOptions::default()).expect("open");
    let t = Instant::now();
    append_in_batches_of_100(&mut q, n);
    q.sync().expect("sync");
    let secs = t.elapsed().as_secs_f64();
    let disk = dir_bytes(&d1);
    rows.push(format!(
        "| append_batch of 100, written at once, fdatasync every 1 s or 1000 records (the gateway's default) | {n} | {:.0} records/s | {:.0} B/record on disk | {:.1} MiB |",
        n as f64 / secs,
        disk as f64 / n as f64,
        hwm_mib()
    ));

    // Replay: read in batches, confirm.
    let t = Instant::now();
    let mut cursor = None;
    let mut replayed = 0u64;
    loop {
        let batch = q.read_after(cursor, 1000).expect("read");
        let Some((last, _)) = batch.last() else { break };
        cursor = Some(*last);
        replayed += batch.len() as u64;
        q.confirm_through(*last).expect("confirm");
    }
    q.flush().expect("flush");
    let secs = t.elapsed().as_secs_f64();
    rows.push(format!(
        "| replay (read 1000, confirm) | {replayed} | {:.0} records/s ({:.0} metrics/s) | {:.0} MiB on disk after drain | {:.1} MiB |",
        replayed as f64 / secs,
        replayed as f64 * 6.0 / secs,
        dir_bytes(&d1) as f64 / 1048576.0,
        hwm_mib()
    ));
    drop(q);

    // Flush per record.
    let m = 5_000u64;
    let d2 = base.path().join("per-record");
    let mut q = DiskQueue::open(
        &d2,
        DiskOptions {
            sync_interval: Duration::ZERO,
            ..DiskOptions::default()
        },
    )
    .expect("open");
    let t = Instant::now();
    for i in 0..m {
        q.append(&record(i)).expect("append");
    }
    let secs = t.elapsed().as_secs_f64();
    rows.push(format!(
        "| append, flush (fsync) every record | {m} | {:.0} records/s | {:.0} B/record on disk | {:.1} MiB |",
        m as f64 / secs,
        dir_bytes(&d2) as f64 / m as f64,
        hwm_mib()
    ));
    drop(q);

    // Churn through a small cap.
    let d3 = base.path().join("churn");
    let cap = 16 * 1024 * 1024;
    let mut q = DiskQueue::open(
        &d3,
        DiskOptions {
            max_bytes: cap,
            ..DiskOptions::default()
        },
    )
    .expect("open");
    let total = 2_000_000u64;
    let mut samples = Vec::new();
    let t = Instant::now();
    let mut dropped = 0;
    for i in 0..total {
        let (id, d) = q.append(&record(i)).expect("append");
        dropped += d.metrics;
        if id >= 10_000 && id % 1_000 == 0 {
            q.confirm_through(id - 10_000).expect("confirm");
        }
        if i % 250_000 == 0 && i > 0 {
            q.flush().expect("flush");
            samples.push((i, dir_bytes(&d3)));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let sizes: Vec<String> = samples
        .iter()
        .map(|(i, b)| format!("{}k: {:.0} MiB", i / 1000, *b as f64 / 1048576.0))
        .collect();
    rows.push(format!(
        "| churn: 2M records, cap 16 MiB, consumer 10k behind | {total} | {:.0} records/s, {dropped} metrics dropped | disk: {} | {:.1} MiB |",
        total as f64 / secs,
        sizes.join(", "),
        hwm_mib()
    ));
    let table = format!(
        "Record: {size} bytes of Sparkplug payload (+ 11-byte value header, 16-byte frame header).\n\n| phase | records | rate | disk | peak RSS (bench process) |\n|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    println!("{table}");
    std::fs::write(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-queue.md"),
        table,
    )
    .expect("write");
}
