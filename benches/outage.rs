//! Long outages as a box on a plant lives them: memory, flash wear, the disk
//! bound and the drain, per scenario, from the outside of the process.
//!
//! `make bench-outage` (= `cargo bench --bench outage`). For each scenario a
//! private mosquitto, a subscriber in this process that counts live and
//! historical metrics, and the release gateway with sim tags. After a 5 s
//! warm-up the broker is killed for the outage, then restarted; the drain is
//! timed from the restart to an empty store while live data keeps flowing.
//! Reported: resident memory before, at its peak during (VmRSS sampled every
//! 250 ms) and 5 s after the drain; bytes written per stored sample — by the
//! store (`spb_store_bytes_written_total`) and by the process to the block
//! device (`write_bytes` of /proc/<pid>/io, file-system overhead included) —
//! and per byte of Sparkplug payload stored; the store's files' largest size
//! against `store.max_bytes`; the drain time and live samples/s meanwhile.
//!
//! `SPB_BENCH_OUTAGE` picks scenarios by name (comma-separated; default all);
//! `SPB_BENCH_GATEWAY` (labelled `SPB_BENCH_GATEWAY_LABEL`, with the
//! `[store]` lines `SPB_BENCH_GATEWAY_STORE` added to its config) runs
//! another build of the gateway beside this one, e.g. an older one for a
//! before/after in one run. Table: `target/bench-outage.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ddata::{count, dir_bytes, Counts};

struct Scenario {
    name: &'static str,
    tags: u32,
    scan: &'static str,
    outage: Duration,
    max_bytes: &'static str,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "100k-60s",
        tags: 10_000,
        scan: "100ms",
        outage: Duration::from_secs(60),
        max_bytes: "2GiB",
    },
    Scenario {
        name: "100tags-60s",
        tags: 100,
        scan: "1s",
        outage: Duration::from_secs(60),
        max_bytes: "256MiB",
    },
    Scenario {
        name: "10tags-60s",
        tags: 10,
        scan: "250ms",
        outage: Duration::from_secs(60),
        max_bytes: "256MiB",
    },
    Scenario {
        name: "100k-60s-bound-64MiB",
        tags: 10_000,
        scan: "100ms",
        outage: Duration::from_secs(60),
        max_bytes: "64MiB",
    },
    Scenario {
        name: "100k-10min",
        tags: 10_000,
        scan: "100ms",
        outage: Duration::from_secs(600),
        max_bytes: "2GiB",
    },
];

fn config(s: &Scenario, port: u16, http: u16, store_extra: &str) -> String {
    format!(
        r#"[node]
group_id = "BenchOut"
node_id = "gw"

[mqtt]
max_packet_size = "64MiB"
backoff_min = "100ms"
backoff_max = "500ms"

[[mqtt.servers]]
host = "127.0.0.1"
port = {port}

[store]
max_bytes = "{max}"
{store_extra}

[telemetry]
listen = "127.0.0.1:{http}"
log_level = "warn"
log_format = "human"

[[devices]]
name = "sim"
driver = "sim"
timeout = "10s"
[devices.scan_classes]
scan = "{scan}"
[devices.sim]
generate = {tags}
generate_signal = "random_walk(step=0.5)"
generate_datatype = "Double"
generate_scan_class = "scan"
"#,
        max = s.max_bytes,
        scan = s.scan,
        tags = s.tags,
    )
}

fn metric(http: u16, name: &str) -> f64 {
    common::prom_value(http, name).unwrap_or(f64::NAN)
}

fn status_kib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

fn write_bytes(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

fn run(label: &str, bin: &Path, store_extra: &str, s: &Scenario, rt: &tokio::runtime::Runtime) -> String {
    let mut broker = common::Broker::start(None);
    let counts = Arc::new(Counts::default());
    rt.spawn(count(broker.port, "BenchOut", counts.clone()));
    std::thread::sleep(Duration::from_millis(300));
    let http = common::free_port();
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, config(s, broker.port, http, store_extra)).expect("config");
    let state = dir.path().join("state");
    let mut gw: Child = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway");
    let pid = gw.id();
    let t0 = Instant::now();
    while counts.live.load(Relaxed) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no DDATA from {}",
            bin.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(5));
    let rss_before = status_kib(pid, "VmRSS:");
    broker.kill();
    let (io0, stored0, written0) = (
        write_bytes(pid),
        metric(http, "spb_stored_samples_total"),
        metric(http, "spb_store_bytes_written_total"),
    );
    let outage = Instant::now();
    let (mut rss_peak, mut files_peak) = (0.0f64, 0u64);
    let queue = state.join("queue");
    while outage.elapsed() < s.outage {
        rss_peak = rss_peak.max(status_kib(pid, "VmRSS:"));
        files_peak = files_peak.max(dir_bytes(&queue));
        std::thread::sleep(Duration::from_millis(250));
    }
    let stored = metric(http, "spb_stored_samples_total") - stored0;
    let written = metric(http, "spb_store_bytes_written_total") - written0;
    let io = write_bytes(pid) - io0;
    let (depth, qbytes, records) = (
        metric(http, "spb_queue_depth"),
        metric(http, "spb_queue_bytes"),
        metric(http, "spb_queue_records"),
    );
    let dropped = metric(http, "spb_dropped_samples_total");
    // Sparkplug payload per stored sample: the records' bytes less the
    // store's own framing (16-byte frame, 11-byte header, device name "sim").
    let payload = (qbytes - records * (16.0 + 11.0 + 3.0)) / depth;
    let live0 = counts.live.load(Relaxed);
    broker.restart();
    let drain = Instant::now();
    while metric(http, "spb_queue_depth") > 0.0 {
        assert!(drain.elapsed() < Duration::from_secs(1800), "the drain never ended");
        rss_peak = rss_peak.max(status_kib(pid, "VmRSS:"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let drain_s = drain.elapsed().as_secs_f64();
    let live_rate = (counts.live.load(Relaxed) - live0) as f64 / drain_s;
    std::thread::sleep(Duration::from_secs(5));
    let rss_after = status_kib(pid, "VmRSS:");
    let hwm = status_kib(pid, "VmHWM:");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = gw.wait();
    let per = |x: f64| x / stored.max(1.0);
    format!(
        "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {:.0} B | {:.0} B | {:.1} B | {:.1}× | {:.1}× | {:.1} MiB / {} | {:.1} s | {:.0} |",
        s.name,
        label,
        stored,
        dropped,
        mib(rss_before),
        mib(rss_peak),
        mib(rss_after),
        mib(hwm),
        per(written),
        per(io),
        payload,
        per(written) / payload,
        per(io) / payload,
        files_peak as f64 / 1048576.0,
        s.max_bytes,
        drain_s,
        live_rate,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pick = std::env::var("SPB_BENCH_OUTAGE").unwrap_or_default();
    let mut bins = vec![(
        "this build".to_string(),
        PathBuf::from(env!("CARGO_BIN_EXE_spb-gateway")),
        String::new(),
    )];
    if let Some(other) = std::env::var_os("SPB_BENCH_GATEWAY") {
        let label = std::env::var("SPB_BENCH_GATEWAY_LABEL").unwrap_or_else(|_| "other build".into());
        let extra = std::env::var("SPB_BENCH_GATEWAY_STORE").unwrap_or_default();
        bins.push((label, PathBuf::from(other), extra));
    }
    let mut rows = Vec::new();
    for s in SCENARIOS
        .iter()
        .filter(|s| pick.is_empty() || pick.split(',').any(|p| p == s.name))
    {
        for (label, bin, extra) in &bins {
            let row = run(label, bin, extra, s, &rt);
            println!("{row}");
            rows.push(row);
        }
    }
    let table = format!(
        "| scenario | gateway | samples stored | dropped | RSS before | RSS peak (outage and drain) | RSS 5 s after the drain | VmHWM | store bytes written / sample | block-device bytes / sample | payload B / sample | store write amplification | device write amplification | files' peak / max_bytes | drain | live samples/s during the drain |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    println!("\n{table}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-outage.md");
    std::fs::write(&out, table).expect("write the table");
}
