//! Gateway throughput with the sim driver: tag changes per second that reach
//! the broker, the gateway's CPU and peak RSS, at 1k, 10k and 100k tags.
//!
//! `make bench-gateway` (= `cargo bench --bench gateway_throughput`). For each
//! case a private mosquitto (loopback, free port) and the release gateway run;
//! every tag is a random walk, so every scan changes every tag (offered load =
//! tags × scans/s). A subscriber in this process counts the metrics in every
//! DDATA it receives from the broker (delivered load). After a 3 s warm-up it
//! measures for 10 s: delivered changes/s, gateway CPU (utime+stime from
//! /proc), and peak RSS (VmHWM, so it includes the NBIRTH). Results are
//! printed and written to `target/bench-gateway.md`. Note: mosquitto and the
//! counting subscriber share this 2-core machine with the gateway.
//! `SPB_BENCH_GATEWAY=/path/to/spb-gateway` (labelled
//! `SPB_BENCH_GATEWAY_LABEL`) runs each case with that build too, right
//! after this one, for a before/after in one run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;

fn config(port: u16, tags: u32, scan: &str) -> String {
    format!(
        r#"[node]
group_id = "Bench"
node_id = "gw"

[mqtt]
max_packet_size = "64MiB"

[[mqtt.servers]]
host = "127.0.0.1"
port = {port}

[telemetry]
listen = ""
log_level = "warn"
log_format = "human"

[[devices]]
name = "sim"
driver = "sim"
timeout = "10s"
[devices.scan_classes]
fast = "{scan}"
[devices.sim]
generate = {tags}
generate_signal = "random_walk(step=0.5)"
generate_datatype = "Double"
generate_scan_class = "fast"
"#
    )
}

async fn count_ddata(port: u16, counted: Arc<AtomicU64>, births: Arc<AtomicU64>) {
    let mut o = rumqttc::MqttOptions::new(format!("bench-counter-{port}"), "127.0.0.1", port);
    o.set_max_packet_size(64 << 20, 64 << 20);
    o.set_clean_session(true);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
    client
        .subscribe("spBv1.0/Bench/#", rumqttc::QoS::AtMostOnce)
        .await
        .expect("subscribe");
    while let Ok(ev) = el.poll().await {
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
            if p.topic.contains("/DDATA/") {
                if let Ok(raw) = spb::sparkplug::pb::Payload::decode(p.payload) {
                    counted.fetch_add(raw.metrics.len() as u64, Relaxed);
                }
            } else if p.topic.contains("/DBIRTH/") {
                births.fetch_add(1, Relaxed);
            }
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tck = common::clk_tck();
    let mut bins = vec![(
        "this build".to_string(),
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_spb-gateway")),
    )];
    if let Some(other) = std::env::var_os("SPB_BENCH_GATEWAY") {
        let label = std::env::var("SPB_BENCH_GATEWAY_LABEL").unwrap_or_else(|_| "other build".into());
        bins.push((label, std::path::PathBuf::from(other)));
    }
    let mut rows = Vec::new();
    for ((tags, scan, scans_per_s), (label, bin)) in [
        (1_000u32, "10ms", 100.0),
        (10_000, "100ms", 10.0),
        (100_000, "1s", 1.0),
        (100_000, "250ms", 4.0),
    ]
    .into_iter()
    .flat_map(|case| bins.iter().map(move |b| (case, b)))
    {
        let broker = common::Broker::start(None);
        let counted = Arc::new(AtomicU64::new(0));
        let births = Arc::new(AtomicU64::new(0));
        rt.spawn(count_ddata(broker.port, counted.clone(), births.clone()));
        std::thread::sleep(Duration::from_millis(300));
        let dir = tempfile::tempdir().expect("tmp");
        let gw = common::Gateway::start_bin(bin, dir, &config(broker.port, tags, scan), &[], &[]);
        let pid = gw.child.id();
        let t0 = Instant::now();
        while births.load(Relaxed) == 0 {
            assert!(t0.elapsed() < Duration::from_secs(60), "no DBIRTH:\n{}", gw.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(3));
        let (c0, (cpu0, _)) = (counted.load(Relaxed), common::proc_stat(pid));
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs(10));
        let secs = start.elapsed().as_secs_f64();
        let (c1, (cpu1, hwm_kib)) = (counted.load(Relaxed), common::proc_stat(pid));
        let delivered = (c1 - c0) as f64 / secs;
        let cpu = (cpu1 - cpu0) as f64 / tck / secs;
        let offered = f64::from(tags) * scans_per_s;
        println!(
            "{label}: {tags:>7} tags @ {scan:>5}: offered {offered:>9.0}/s delivered {delivered:>9.0}/s, gateway CPU {:.0}% of a core, peak RSS {:.1} MiB",
            cpu * 100.0,
            hwm_kib as f64 / 1024.0
        );
        rows.push(format!(
            "| {label} | {tags} | {scan} | {offered:.0} | {delivered:.0} | {:.0}% | {:.0} | {:.1} MiB |",
            cpu * 100.0,
            if cpu > 0.0 { delivered / cpu } else { 0.0 },
            hwm_kib as f64 / 1024.0
        ));
        gw.signal(nix::sys::signal::Signal::SIGTERM);
        drop(gw);
        drop(broker);
    }
    let table = format!(
        "| gateway | tags | scan | offered changes/s | delivered changes/s | gateway CPU | changes/s per core | peak RSS |\n|---|---|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    println!("\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-gateway.md");
    std::fs::write(&out, table).expect("write the table");
}
