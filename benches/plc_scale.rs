//! How many S7 PLC connections one gateway keeps at a 1 s scan on this
//! machine: N devices, each its own S7comm connection with 100 REALs spread
//! over 2000 bytes of DB2 (3 requests a scan at the 960-byte PDU), against
//! node-snap7's server (the Snap7 C++ library, so the server is not the
//! bottleneck python-snap7's would be). No PLC values change, so this
//! measures polling, not publishing (publishing: `make bench-gateway`).
//!
//! `make bench-plc-scale` (= `cargo bench --bench plc_scale`). For N = 100,
//! 300 and 1000: a private mosquitto, node-snap7's server and the release
//! gateway start; once every device is online (from /metrics) it measures
//! 20 s: scans done vs due, missed scans, the median of the devices' last
//! read latency, gateway CPU (utime+stime from /proc), RSS while polling
//! (VmRSS) and peak RSS (VmHWM: parsing a config of N × 100 tags is the peak).
//! The server, broker and gateway share this 2-core machine.
//! Written to `target/bench-plc-scale.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::plc::{S7Impl, S7Server};

fn metrics(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(s, "GET /metrics HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Per-device values of one series.
fn series(m: &str, name: &str) -> Vec<f64> {
    let prefix = format!("{name}{{");
    m.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

fn config(broker: u16, metrics_port: u16, plc: u16, n: usize) -> String {
    let mut c = format!(
        "[node]\ngroup_id = \"Bench\"\nnode_id = \"gw\"\n[mqtt]\nmax_packet_size = \"64MiB\"\n[[mqtt.servers]]\nhost = \"127.0.0.1\"\nport = {broker}\n[telemetry]\nlisten = \"127.0.0.1:{metrics_port}\"\nlog_level = \"warn\"\nlog_format = \"human\"\n"
    );
    for d in 0..n {
        c.push_str(&format!(
            "\n[[devices]]\nname = \"plc{d}\"\ndriver = \"s7\"\naddress = \"127.0.0.1:{plc}\"\ntimeout = \"5s\"\n"
        ));
        for t in 0..100 {
            c.push_str(&format!(
                "[[devices.tags]]\nname = \"T{t}\"\naddress = \"DB2.DBD{}\"\ndatatype = \"Float\"\n",
                t * 20
            ));
        }
    }
    c
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let tck = common::clk_tck();
    let mut rows = Vec::new();
    for n in [100usize, 300, 1000] {
        let broker = common::Broker::start(None);
        let server = S7Server::start(S7Impl::Node);
        let mport = common::free_port();
        let gw = common::Gateway::start(&config(broker.port, mport, server.port, n), &[]);
        let pid = gw.child.id();
        let t0 = Instant::now();
        loop {
            let online: f64 = series(&metrics(mport), "spb_device_online").iter().sum();
            if online as usize == n {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "{online}/{n} devices online after 120 s:\n{}",
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let up = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(3));
        let m0 = metrics(mport);
        let (cpu0, _) = common::proc_stat(pid);
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs(20));
        let secs = start.elapsed().as_secs_f64();
        let m1 = metrics(mport);
        let (cpu1, hwm) = common::proc_stat(pid);
        let rss_kib: f64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(f64::NAN);
        let sum = |m: &str, s: &str| series(m, s).iter().sum::<f64>();
        let scans = sum(&m1, "spb_plc_reads_total") - sum(&m0, "spb_plc_reads_total");
        let missed = sum(&m1, "spb_plc_missed_scans_total") - sum(&m0, "spb_plc_missed_scans_total");
        let errors = sum(&m1, "spb_plc_read_errors_total") - sum(&m0, "spb_plc_read_errors_total");
        let mut lat = series(&m1, "spb_plc_last_read_microseconds");
        lat.sort_by(f64::total_cmp);
        let p50 = lat.get(lat.len() / 2).copied().unwrap_or(f64::NAN) / 1000.0;
        let p99 = lat.get(lat.len() * 99 / 100).copied().unwrap_or(f64::NAN) / 1000.0;
        let cpu = (cpu1 - cpu0) as f64 / tck / secs;
        let due = n as f64 * secs;
        let line = format!(
            "| {n} | {up:.1} s | {:.0} / {:.0} | {missed:.0} | {errors:.0} | {:.0} | {p50:.2} / {p99:.2} ms | {:.0}% | {:.1} MiB | {:.1} MiB |",
            scans,
            due,
            scans * 100.0 / secs,
            cpu * 100.0,
            rss_kib / 1024.0,
            hwm as f64 / 1024.0
        );
        println!("{line}");
        rows.push(line);
        gw.signal(nix::sys::signal::Signal::SIGTERM);
        drop(gw);
        drop(server);
        drop(broker);
    }
    let table = format!(
        "| PLC connections | all online after | scans done / due (20 s) | missed scans | read errors | tag reads/s | last read p50 / p99 | gateway CPU | RSS while polling | peak RSS (config parse) |\n|---|---|---|---|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    println!("\n{table}");
    std::fs::write(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-plc-scale.md"),
        table,
    )
    .expect("write the table");
}
