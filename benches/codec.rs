//! Sparkplug B codec throughput, ours next to pysparkplug's in the same run.
//!
//! `make bench-codec` (= `cargo bench --bench codec`). Criterion measures
//! encode and decode of a 100-metric DDATA (alias only, Double values, no
//! datatypes, decoded against its birth) and a 1,000-metric NBIRTH (names,
//! aliases, five datatypes). Then the pysparkplug peer times the very same
//! payloads (median of 50 ms batches) and a table with the ratio is printed
//! and written to `target/bench-codec.md`. Set `SPB_BENCH_NO_PEER=1` to skip
//! the peer (e.g. while profiling).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, Criterion};
use serde_json::json;
use spb::sparkplug::codec::{DatatypeSource, Datatypes};
use spb::sparkplug::{DataType, Metric, Payload, Value};

const NOW: u64 = 1_700_000_000_000;

fn ddata(n: usize) -> Payload {
    let metrics = (0..n)
        .map(|i| {
            let mut m = Metric::new("", Value::Double(i as f64 * 0.5), NOW + i as u64);
            m.name = None;
            m.alias = Some(i as u64 + 1);
            m
        })
        .collect();
    Payload {
        timestamp: Some(NOW),
        metrics,
        seq: Some(7),
        ..Payload::default()
    }
}

fn nbirth(n: usize) -> Payload {
    let values = [
        Value::Double(1.25),
        Value::Int32(-7),
        Value::Boolean(true),
        Value::String("running".into()),
        Value::Float(0.5),
    ];
    let metrics = (0..n)
        .map(|i| {
            let mut m = Metric::new(format!("Area {}/Tag {i}", i / 100), values[i % 5].clone(), NOW);
            m.alias = Some(i as u64 + 1);
            m
        })
        .collect();
    Payload {
        timestamp: Some(NOW),
        metrics,
        seq: Some(0),
        ..Payload::default()
    }
}

struct AllDouble(HashMap<u64, DataType>);

impl DatatypeSource for AllDouble {
    fn datatype_of(&self, _: Option<&str>, alias: Option<u64>) -> Option<DataType> {
        self.0.get(&alias?).copied()
    }
}

fn codec(c: &mut Criterion) {
    let dd = ddata(100);
    let dd_bytes = dd.encode_with(Datatypes::Omit).expect("encodes");
    let birth = AllDouble((1..=100).map(|a| (a, DataType::Double)).collect());
    let nb = nbirth(1000);
    let nb_bytes = nb.encode().expect("encodes");
    assert_eq!(Payload::decode_with(&dd_bytes, &birth).expect("decodes"), dd);

    let mut g = c.benchmark_group("codec");
    g.bench_function("ddata100_encode", |b| {
        b.iter(|| black_box(&dd).encode_with(Datatypes::Omit))
    });
    g.bench_function("ddata100_decode", |b| {
        b.iter(|| Payload::decode_with(black_box(&dd_bytes), &birth))
    });
    g.bench_function("nbirth1000_encode", |b| b.iter(|| black_box(&nb).encode()));
    g.bench_function("nbirth1000_decode", |b| {
        b.iter(|| Payload::decode(black_box(&nb_bytes)))
    });
    g.finish();
}

criterion_group!(benches, codec);

fn median_ns(id: &str) -> Option<f64> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target/criterion/codec/{id}/new/estimates.json"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::var_os("SPB_BENCH_NO_PEER").is_some() || std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let mut rows = Vec::new();
    for (kind, n, ours_id, bytes) in [
        (
            "ddata",
            100,
            "ddata100",
            ddata(100).encode_with(Datatypes::Omit).expect("encodes").len(),
        ),
        (
            "nbirth",
            1000,
            "nbirth1000",
            nbirth(1000).encode().expect("encodes").len(),
        ),
    ] {
        let theirs = common::pysparkplug(&json!({"op": "bench", "payload_kind": kind, "metrics": n, "seconds": 3.0}));
        for op in ["encode", "decode"] {
            let Some(ours) = median_ns(&format!("{ours_id}_{op}")) else {
                continue;
            };
            let theirs_ns = theirs[format!("{op}_median_s")].as_f64().expect("peer timing") * 1e9;
            rows.push(format!(
                "| {kind} {n} metrics | {op} | {bytes} / {} | {:.1} µs | {:.0} | {:.1} µs | {:.0} | {:.0}× |",
                theirs["bytes"],
                ours / 1e3,
                1e9 / ours * n as f64,
                theirs_ns / 1e3,
                1e9 / theirs_ns * n as f64,
                theirs_ns / ours,
            ));
        }
    }
    let table = format!(
        "| payload | op | bytes ours / theirs | ours median | ours metrics/s | pysparkplug median | pysparkplug metrics/s | speed-up |\n|---|---|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    println!("\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-codec.md");
    std::fs::write(&out, &table).expect("write the comparison table");
    println!("written to {}", out.display());
}
