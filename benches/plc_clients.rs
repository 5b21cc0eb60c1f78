//! PLC clients side by side, one run: a 100-tag scan against each simulator,
//! repeated, by our drivers and by the peers' own clients, with every
//! client's values checked against what the test wrote.
//!
//! `make bench-plc` (= `cargo bench --bench plc_clients`). Scans:
//! - S7 "block": 100 REALs back to back in DB1 (400 bytes);
//! - S7 "sparse": 100 REALs every 20 bytes in DB2 (2000 bytes);
//! - Logix: 100 DINT elements `Big[0]`..`Big[99]` as 100 tags.
//!
//! Clients: ours (`S7Driver`, `LogixDriver`), python-snap7 3.3's optimizing
//! `read_tags`, the `s7-client` 0.1.2 crate (the customer's choice; items
//! packed 20 per request by hand, since it does not split), and pylogix
//! 1.1.6's list `Read`. Each client connects once, warms up, then times 200
//! scans (Logix: 50, cpppo is slow); the table gives the median scan time,
//! tag reads/s per connection (100 / median) and the ratio to ours. All
//! servers, clients and this process share the 2-core machine: the figures
//! include the server's time (python-snap7's server and cpppo are pure
//! Python, so they bound every client).
//! Written to `target/bench-plc-clients.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::plc::{Cpppo, PeerClient, S7Impl, S7Server};
use serde_json::json;
use spb::plc::logix::LogixDriver;
use spb::plc::s7::{S7Driver, S7Options};
use spb::sparkplug::{DataType, Value};

const S7_SCANS: usize = 200;
const LOGIX_SCANS: usize = 50;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `n` calls of `scan`.
fn timed(n: usize, mut scan: impl FnMut()) -> f64 {
    median(
        (0..n)
            .map(|_| {
                let t0 = Instant::now();
                scan();
                t0.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// A peer client's own timed scans (`{"op":"bench"}`): median seconds and
/// whether its first scan's values were `want`.
fn peer_bench(
    peer: &mut PeerClient,
    tags: serde_json::Value,
    n: usize,
    want: impl Fn(usize, &serde_json::Value) -> bool,
) -> (f64, bool) {
    let r = peer.call(json!({"op":"bench","tags":tags,"n":n}));
    let secs: Vec<f64> = r["seconds"]
        .as_array()
        .expect("seconds")
        .iter()
        .filter_map(|x| x.as_f64())
        .collect();
    let ok = r["first"]
        .as_array()
        .expect("values")
        .iter()
        .enumerate()
        .all(|(i, v)| want(i, v));
    (median(secs), ok)
}

struct Row {
    target: String,
    client: &'static str,
    median_s: f64,
    correct: String,
}

fn s7_tags(pattern: &str) -> Vec<(u16, u32)> {
    match pattern {
        "block" => (0..100).map(|i| (1, i * 4)).collect(),
        _ => (0..100).map(|i| (2, i * 20)).collect(),
    }
}

fn value_of(i: u32) -> f32 {
    i as f32 * 1.5 + 0.25
}

fn bench_s7(kind: S7Impl, rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
    let server = S7Server::start(kind);
    let mut peer = PeerClient::snap7(server.port);
    for pattern in ["block", "sparse"] {
        let tags = s7_tags(pattern);
        for (i, (db, off)) in tags.iter().enumerate() {
            peer.call(json!({"op":"set","db":db,"offset":off,"type":"REAL","value":value_of(i as u32)}));
        }
        let target = format!("{kind:?} S7 server, 100 REALs {pattern}");
        let addrs: Vec<String> = tags.iter().map(|(db, off)| format!("DB{db}.DBD{off}")).collect();

        // Ours.
        let mut d = S7Driver::new(
            S7Options {
                addr: format!("127.0.0.1:{}", server.port),
                local_tsap: 0x0100,
                remote_tsap: 0x0101,
                pdu_size: 960,
                max_items: 20,
            },
            addrs.iter().map(|a| (a.clone(), DataType::Float)),
        );
        let all: Vec<usize> = (0..100).collect();
        let first = rt.block_on(d.read(&all)).expect("our read");
        let ok = first
            .iter()
            .enumerate()
            .all(|(i, v)| *v == Ok(Value::Float(value_of(i as u32))));
        let median_s = timed(S7_SCANS, || {
            rt.block_on(d.read(&all)).expect("our read");
        });
        let requests = {
            let before = d.requests();
            rt.block_on(d.read(&all)).expect("read");
            d.requests() - before
        };
        rows.push(Row {
            target: target.clone(),
            client: "spb S7Driver",
            median_s,
            correct: format!("{} ({requests} requests/scan)", if ok { "yes" } else { "NO" }),
        });

        // python-snap7's client.
        let plc4x: Vec<String> = addrs.iter().map(|a| format!("{a}:REAL")).collect();
        let (median_s, ok) = peer_bench(&mut peer, json!(plc4x), S7_SCANS, |i, v| {
            v.as_f64().map(|f| f as f32) == Some(value_of(i as u32))
        });
        rows.push(Row {
            target: target.clone(),
            client: "python-snap7 read_tags",
            median_s,
            correct: (if ok { "yes" } else { "NO" }).into(),
        });

        // The s7-client crate.
        rows.push(bench_s7_client(server.port, &tags, &target, rt));
    }
}

fn bench_s7_client(port: u16, tags: &[(u16, u32)], target: &str, rt: &tokio::runtime::Runtime) -> Row {
    use s7_client::{Area, ConnectMode, ConnectionType, DataSizeType, Options, S7Client};
    let opts = Options::new(
        "127.0.0.1".parse().expect("ip"),
        port,
        ConnectMode::init_rack_slot(ConnectionType::PG, 0, 1),
    );
    let mut c = match rt.block_on(S7Client::connect(opts)) {
        Ok(c) => c,
        Err(e) => {
            return Row {
                target: target.into(),
                client: "s7-client 0.1.2",
                median_s: f64::NAN,
                correct: format!("cannot connect: {e}"),
            }
        }
    };
    let areas = |chunk: &[(u16, u32)]| -> Vec<Area> {
        chunk
            .iter()
            .map(|(db, off)| {
                Area::DataBausteine(
                    *db,
                    DataSizeType::Real {
                        addr: *off as u16,
                        len: 1,
                    },
                )
            })
            .collect()
    };
    let scan = |c: &mut S7Client| -> Result<Vec<Vec<u8>>, String> {
        let mut out = Vec::new();
        for chunk in tags.chunks(20) {
            let items = rt.block_on(c.read(areas(chunk))).map_err(|e| e.to_string())?;
            out.extend(items.into_iter().map(|i| i.data));
        }
        Ok(out)
    };
    let first = match scan(&mut c) {
        Ok(v) => v,
        Err(e) => {
            return Row {
                target: target.into(),
                client: "s7-client 0.1.2",
                median_s: f64::NAN,
                correct: format!("read fails: {e}"),
            }
        }
    };
    let right = first
        .iter()
        .enumerate()
        .filter(|(i, b)| b.len() == 4 && f32::from_be_bytes([b[0], b[1], b[2], b[3]]) == value_of(*i as u32))
        .count();
    let lens: std::collections::BTreeSet<usize> = first.iter().map(Vec::len).collect();
    let times: Vec<f64> = (0..S7_SCANS)
        .filter_map(|_| {
            let t0 = Instant::now();
            scan(&mut c).ok().map(|_| t0.elapsed().as_secs_f64())
        })
        .collect();
    Row {
        target: target.into(),
        client: "s7-client 0.1.2",
        median_s: if times.is_empty() { f64::NAN } else { median(times) },
        correct: format!("{right}/100 right; a REAL read returns {lens:?} byte(s)"),
    }
}

fn bench_logix(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
    let plc = Cpppo::start(&["Big=DINT[200]"]);
    let mut peer = PeerClient::pylogix(plc.port);
    let names: Vec<String> = (0..100).map(|i| format!("Big[{i}]")).collect();
    for (i, n) in names.iter().enumerate() {
        peer.call(json!({"op":"write","tag":n,"value":i * 7}));
    }
    let target = "cpppo Logix sim, 100 DINT tags".to_string();
    let mut d = LogixDriver::new(
        format!("127.0.0.1:{}", plc.port),
        None,
        20,
        names.iter().map(|n| (n.clone(), DataType::Int32)),
    );
    let all: Vec<usize> = (0..100).collect();
    let first = rt.block_on(d.read(&all)).expect("our read");
    let ok = first
        .iter()
        .enumerate()
        .all(|(i, v)| *v == Ok(Value::Int32(i as i32 * 7)));
    let median_s = timed(LOGIX_SCANS, || {
        rt.block_on(d.read(&all)).expect("our read");
    });
    rows.push(Row {
        target: target.clone(),
        client: "spb LogixDriver (rust-ethernet-ip)",
        median_s,
        correct: (if ok { "yes" } else { "NO" }).into(),
    });
    let (median_s, ok) = peer_bench(&mut peer, json!(names), LOGIX_SCANS, |i, v| {
        v.as_i64() == Some(i as i64 * 7)
    });
    rows.push(Row {
        target,
        client: "pylogix Read(list)",
        median_s,
        correct: (if ok { "yes" } else { "NO" }).into(),
    });
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    bench_s7(S7Impl::Python, &rt, &mut rows);
    bench_s7(S7Impl::Node, &rt, &mut rows);
    bench_logix(&rt, &mut rows);
    let mut md = String::from(
        "| target | client | median scan | tag reads/s | vs ours | values right |\n|---|---|---|---|---|---|\n",
    );
    let mut ours = f64::NAN;
    for r in &rows {
        if r.client.starts_with("spb") {
            ours = r.median_s;
        }
        let line = format!(
            "| {} | {} | {:.2} ms | {:.0} | {:.2}× | {} |\n",
            r.target,
            r.client,
            r.median_s * 1e3,
            100.0 / r.median_s,
            r.median_s / ours,
            r.correct
        );
        print!("{line}");
        md.push_str(&line);
    }
    std::fs::write("target/bench-plc-clients.md", md).expect("write the table");
}
