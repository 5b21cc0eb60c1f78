//! The OEE engine's cost per sample: one machine's hour, computed from its
//! samples as the folder does (`make bench-oee`). Median of 21 runs per
//! size; results in `target/bench-oee.md`. `-- fold` measures the folder
//! on PostgreSQL instead (below).
//!
//! The hour: a cycle counter changing every `period`, the running state
//! and a reason code changing every 5 minutes, a reject counter every
//! minute; planned 08:00-16:00 with a break.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use spb::uplink::oee::engine::{compute, Category, Model, Role, Sample, V};

const H: i64 = 3_600_000;
const T0: i64 = 1_796_000_400_000;

fn samples(cycle_ms: i64) -> Vec<Sample> {
    let mut v = Vec::new();
    let mut count = 0.0;
    let mut t = T0 - 60_000;
    while t < T0 + H {
        let minute = (t - T0).div_euclid(60_000);
        let stopped = minute.rem_euclid(5) == 4;
        if !stopped {
            count += 1.0;
            v.push(Sample {
                role: Role::CycleCount,
                ts: t,
                value: V::Num(count),
            });
        }
        t += cycle_ms;
    }
    for m in -1..60 {
        let ts = T0 + m * 60_000;
        if m.rem_euclid(5) == 4 {
            v.push(Sample {
                role: Role::Running,
                ts,
                value: V::Bool(false),
            });
            v.push(Sample {
                role: Role::Reason,
                ts,
                value: V::Num(12.0),
            });
        } else if m.rem_euclid(5) == 0 {
            v.push(Sample {
                role: Role::Running,
                ts,
                value: V::Bool(true),
            });
            v.push(Sample {
                role: Role::Reason,
                ts,
                value: V::Num(0.0),
            });
        }
        v.push(Sample {
            role: Role::RejectCount,
            ts,
            value: V::Num((m + 1) as f64),
        });
    }
    v
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    if std::env::args().any(|a| a == "fold") {
        return fold_cost();
    }
    let mut reasons = BTreeMap::new();
    reasons.insert("12".to_string(), ("Jam".to_string(), Category::Breakdown));
    let model = Model {
        running_values: vec![],
        reasons,
        reject_reasons: BTreeMap::new(),
        ideal_cycle_ms: Some(1000.0),
        ideal_by_product: BTreeMap::new(),
        minor_stop_ms: 120_000,
        wrap: None,
    };
    let planned = [(T0, T0 + 20 * 60_000), (T0 + 30 * 60_000, T0 + H)];
    let mut lines = vec![
        "OEE engine: one machine's hour (median of 21 runs)".to_string(),
        String::new(),
        "| cycle every | samples | µs per hour | ns per sample |".into(),
        "|---|---|---|---|".into(),
    ];
    for cycle_ms in [10_000, 1_000, 100] {
        let s = samples(cycle_ms);
        let mut times: Vec<f64> = (0..21)
            .map(|_| {
                let t = Instant::now();
                let f = compute(&model, &s, T0, T0 + H, &planned);
                let e = t.elapsed().as_secs_f64();
                assert!(f.produced > 0);
                e
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[10];
        lines.push(format!(
            "| {} ms | {} | {:.0} | {:.0} |",
            cycle_ms,
            s.len(),
            median * 1e6,
            median * 1e9 / s.len() as f64
        ));
    }
    let text = lines.join("\n") + "\n";
    print!("{text}");
    std::fs::create_dir_all("target").expect("target");
    std::fs::write("target/bench-oee.md", text).expect("write");
}

/// `-- fold`: the OEE folder's cost on PostgreSQL as an hour fills up.
/// 20 machines, a piece a second each with a 3 s stop every 30 s, written
/// through the sink with their marks, 5 s at a time (the folder's default
/// period); a fold after each 5 s of the first and the last minute, timed.
/// Reported: the median fold of each, and per machine.
fn fold_cost() {
    use spb::sparkplug::host::HostEvent;
    use spb::sparkplug::{Metric, Value};
    use spb::uplink::config::UplinkConfig;
    use spb::uplink::oee::OeeIndex;
    use spb::uplink::postgres::PgSink;
    use spb::uplink::rows::Batch;
    use spb::uplink::sink::Sink;

    const MACHINES: usize = 20;
    let mut text = String::from(
        "[host]\nhost_id = \"b\"\n[[mqtt.servers]]\nhost = \"127.0.0.1\"\n[database]\nbackend = \"postgres\"\nurl = \"host=127.0.0.1 dbname=x\"\n\
         [oee]\nminor_stop = \"1s\"\n[[oee.shifts]]\nname = \"all day\"\nstart = \"00:00\"\nend = \"24:00\"\n",
    );
    for m in 0..MACHINES {
        text += &format!(
            "[[oee.machines]]\nname = \"m{m}\"\nnode = \"B/n\"\ndevice = \"m{m}\"\ncycle_count = \"Count\"\nrunning = \"Running\"\nideal_cycle_time = \"900ms\"\n"
        );
    }
    let cfg = UplinkConfig::parse("bench.toml", &text)
        .expect("valid")
        .oee
        .expect("[oee]");
    let index = OeeIndex::new(Some(&cfg));
    let db = common::pg::TestDb::new("bench_oee_fold");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut sink = rt.block_on(async {
        let mut s = PgSink::connect(&db.url()).await.expect("connect");
        s.migrate().await.expect("migrate");
        s
    });
    let mut folds: Vec<(i64, f64)> = Vec::new();
    let mut count = 0u32;
    let mut t = T0;
    while t < T0 + H {
        let mut b = Batch::default();
        for s in 0..5 {
            let ts = t + s * 1000;
            let phase = (ts - T0) / 1000 % 30;
            let running = phase >= 3;
            if running {
                count += 1;
            }
            for m in 0..MACHINES {
                let mut metrics = vec![];
                if running {
                    metrics.push(Metric::new("Count", Value::UInt32(count), ts as u64));
                }
                if phase == 0 || phase == 3 || ts == T0 {
                    metrics.push(Metric::new("Running", Value::Boolean(running), ts as u64));
                }
                if !metrics.is_empty() {
                    b.add_event(
                        &HostEvent::data("B", "n", Some(&format!("m{m}")), 0, None, metrics),
                        ts as u64,
                    );
                }
            }
        }
        let marks: Vec<_> = index.marks(&b.facts).collect();
        b.oee.extend(marks);
        t += 5000;
        // Folded every 5 s in the first and the last minute (timed), once
        // just before the last minute (catching up), never in between.
        let timed = t - T0 <= 60_000 || t - T0 > H - 60_000;
        let catch_up = t - T0 == H - 60_000;
        let took = rt.block_on(async {
            sink.write(&b).await.expect("write");
            let start = Instant::now();
            if timed || catch_up {
                sink.fold_oee(&cfg, t).await.expect("fold");
            }
            start.elapsed().as_secs_f64()
        });
        if timed {
            folds.push((t - T0, took));
        }
    }
    let med = |from: i64, to: i64| {
        let mut v: Vec<f64> = folds
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
            .map(|x| x.1)
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (early, late) = (med(0, 60_001), med(H - 60_000 + 1, H + 1));
    let out = format!(
        "OEE folder on PostgreSQL: {MACHINES} machines, a piece a second, one fold per 5 s of data\n\n\
         | part of the hour | median fold | per machine |\n|---|---|---|\n\
         | minute 0-1 | {:.0} ms | {:.2} ms |\n| minute 59-60 | {:.0} ms | {:.2} ms |\n",
        early * 1e3,
        early * 1e3 / MACHINES as f64,
        late * 1e3,
        late * 1e3 / MACHINES as f64
    );
    print!("{out}");
    std::fs::write("target/bench-oee-fold.md", out).expect("write");
}
