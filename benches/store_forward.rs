//! Store-and-forward at gateway level: how fast an outage is stored and then
//! replayed to a subscriber, and what it costs in disk, memory and CPU.
//!
//! `make bench-store-forward` (= `cargo bench --bench store_forward`). For each
//! case a private mosquitto and the release gateway run on loopback, with
//! 10,000 sim tags changing on every 100 ms scan (100k changes/s). A subscriber
//! in this process decodes every DDATA and counts live and historical metrics
//! separately. After a 3 s warm-up the broker is killed for 10 s (the gateway
//! stores about 1M samples), then restarted; the replay is measured from the
//! first historical metric received to the queue being empty, while live data
//! keeps flowing. Reported per flush policy: stored samples/s while offline,
//! disk bytes per stored sample (the store's files at the end of the outage),
//! replayed samples/s, live samples/s during the replay, gateway CPU during the
//! replay and peak RSS. Written to `target/bench-store-forward.md`.
//!
//! `SPB_BENCH_GATEWAY=/path/to/spb-gateway` (labelled
//! `SPB_BENCH_GATEWAY_LABEL`) runs each case with that build too, right
//! after this one, for a before/after in one run on this noisy machine.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ddata::{count, dir_bytes, Counts};

fn config(port: u16, http: u16, store: &str) -> String {
    format!(
        r#"[node]
group_id = "BenchSF"
node_id = "gw"

[mqtt]
max_packet_size = "64MiB"
backoff_min = "100ms"
backoff_max = "500ms"

[[mqtt.servers]]
host = "127.0.0.1"
port = {port}

[store]
max_bytes = "1GiB"
{store}

[telemetry]
listen = "127.0.0.1:{http}"
log_level = "warn"
log_format = "human"

[[devices]]
name = "sim"
driver = "sim"
timeout = "10s"
[devices.scan_classes]
fast = "100ms"
[devices.sim]
generate = 10000
generate_signal = "random_walk(step=0.5)"
generate_datatype = "Double"
generate_scan_class = "fast"
"#
    )
}

fn metric(http: u16, name: &str) -> f64 {
    common::prom_value(http, name).unwrap_or(0.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tck = common::clk_tck();
    let mut rows = Vec::new();
    let this = std::path::PathBuf::from(env!("CARGO_BIN_EXE_spb-gateway"));
    let mut builds = vec![("this build".to_string(), this)];
    if let Some(other) = std::env::var_os("SPB_BENCH_GATEWAY") {
        let label = std::env::var("SPB_BENCH_GATEWAY_LABEL").unwrap_or_else(|_| "other build".into());
        builds.push((label, other.into()));
    }
    let cases = [
        (
            "default: written when no more samples are ready, fdatasync every 1 s",
            "",
        ),
        ("fdatasync every write (flush_interval = 0s)", "flush_interval = \"0s\""),
    ];
    for ((label, store), (build, bin)) in cases.iter().flat_map(|c| builds.iter().map(move |b| (c, b))) {
        let mut broker = common::Broker::start(None);
        let counts = Arc::new(Counts::default());
        rt.spawn(count(broker.port, "BenchSF", counts.clone()));
        std::thread::sleep(Duration::from_millis(300));
        let http = common::free_port();
        let gw = common::Gateway::start_bin(
            bin,
            tempfile::tempdir().expect("tmp"),
            &config(broker.port, http, store),
            &[],
            &[],
        );
        let pid = gw.child.id();
        let t0 = Instant::now();
        while counts.live.load(Relaxed) == 0 {
            assert!(t0.elapsed() < Duration::from_secs(60), "no DDATA:\n{}", gw.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(3));
        broker.kill();
        let outage = Instant::now();
        let stored0 = metric(http, "spb_stored_samples_total");
        std::thread::sleep(Duration::from_secs(10));
        let stored = metric(http, "spb_stored_samples_total") - stored0;
        let store_rate = stored / outage.elapsed().as_secs_f64();
        let disk = dir_bytes(&gw.dir.path().join("state/queue"));
        let depth = metric(http, "spb_queue_depth");
        let (live0, (cpu0, _)) = (counts.live.load(Relaxed), common::proc_stat(pid));
        broker.restart();
        let t1 = Instant::now();
        while counts.historical.load(Relaxed) == 0 {
            assert!(t1.elapsed() < Duration::from_secs(60), "no replay:\n{}", gw.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        let replay = Instant::now();
        let h0 = counts.historical.load(Relaxed);
        while metric(http, "spb_queue_depth") > 0.0 {
            assert!(
                replay.elapsed() < Duration::from_secs(300),
                "replay too slow:\n{}",
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let secs = replay.elapsed().as_secs_f64();
        let replayed = (counts.historical.load(Relaxed) - h0) as f64;
        let (live1, (cpu1, hwm_kib)) = (counts.live.load(Relaxed), common::proc_stat(pid));
        let live_rate = (live1 - live0) as f64 / t1.elapsed().as_secs_f64();
        let cpu = (cpu1 - cpu0) as f64 / tck / t1.elapsed().as_secs_f64();
        let line = format!(
            "| {build} | {label} | {stored:.0} | {store_rate:.0} | {:.0} B | {:.0} | {live_rate:.0} | {:.0}% | {:.1} MiB |",
            disk as f64 / depth.max(1.0),
            replayed / secs,
            cpu * 100.0,
            hwm_kib as f64 / 1024.0
        );
        println!("{line}");
        rows.push(line);
        gw.signal(nix::sys::signal::Signal::SIGTERM);
        drop(gw);
        drop(broker);
    }
    let table = format!(
        "| gateway | flush policy | samples stored in 10 s | stored samples/s | disk per stored sample | replayed samples/s | live samples/s during replay | gateway CPU during replay | peak RSS |\n|---|---|---|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    println!("\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-store-forward.md");
    std::fs::write(&out, table).expect("write the table");
}
