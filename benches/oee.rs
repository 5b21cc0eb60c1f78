//! The OEE engine's cost per sample: one machine's hour, computed from its
//! samples as the folder does (`make bench-oee`). Median of 21 runs per
//! size; results in `target/bench-oee.md`.
//!
//! The hour: a cycle counter changing every `period`, the running state
//! and a reason code changing every 5 minutes, a reject counter every
//! minute; planned 08:00-16:00 with a break.

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
    let mut reasons = BTreeMap::new();
    reasons.insert("12".to_string(), ("Jam".to_string(), Category::Breakdown));
    let model = Model {
        running_values: vec![],
        reasons,
        reject_reasons: BTreeMap::new(),
        ideal_cycle_ms: Some(1000.0),
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
