//! OEE against ground truth: the test is the PLC program of a line. It
//! drives python-snap7's S7 server (running bit, fault code, piece and
//! reject counters) through a compressed shift with a break, a breakdown
//! and a minor stop; the real gateway polls it, mosquitto carries it, the
//! uplink computes the shift into PostgreSQL. Counts are exact; times are
//! within one scan period per change of state.
#![cfg(feature = "uplink")]

mod common;

use std::time::{Duration, Instant};

use common::pg::TestDb;
use common::plc::{PeerClient, S7Impl, S7Server};
use common::uplink::Uplink;
use common::{Broker, Gateway};
use serde_json::json;

/// Seconds of the compressed shift and its events, from its start.
const SHIFT: f64 = 36.0;
const BREAK: (f64, f64) = (12.0, 16.0);
const FAULT: (f64, f64) = (20.0, 26.0);
const MINOR: (f64, f64) = (30.0, 31.0);
const REJECT_AT: [f64; 3] = [5.25, 9.25, 33.25];
/// One scan (100 ms) of delay per change of state, and some slack.
const TOLERANCE_MS: i64 = 4 * 150;

fn hms(t: u64) -> String {
    let s = t % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

#[test]
fn a_scripted_shift_through_the_gateway_gives_the_analytic_oee() {
    line(false);
}

/// The same shift with the broker down from 8 s to 22 s (the gateway
/// stores and replays what it polled meanwhile), the piece counter reset
/// to 0 at 18 s, and the uplink killed and started again at 28 s: the
/// same figures.
#[test]
fn an_outage_a_counter_reset_and_an_uplink_restart_change_nothing() {
    line(true);
}

fn line(disturbed: bool) {
    let db = TestDb::new(if disturbed { "oee_truth_dist" } else { "oee_truth" });
    let mut broker = Broker::start(None);
    let s7 = S7Server::start(S7Impl::Python);
    let mut plc = PeerClient::snap7(s7.port);
    let set = |plc: &mut PeerClient, offset: u32, ty: &str, value: serde_json::Value| {
        let mut req = json!({"op": "set", "db": 1, "offset": offset, "type": ty, "value": value});
        if ty == "BOOL" {
            req["bit"] = json!(0);
        }
        let r = plc.call(req);
        assert_eq!(r["ok"], true, "{r}");
    };
    set(&mut plc, 0, "UDINT", json!(1000));
    set(&mut plc, 4, "BOOL", json!(true));
    set(&mut plc, 6, "INT", json!(0));
    set(&mut plc, 8, "UDINT", json!(0));
    // The shift starts on a whole second, after everything is up.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let t0 = now + 12;
    let oee = format!(
        r#"
[oee]
time_zone = "UTC"
minor_stop = "3s"
[[oee.shifts]]
name = "test"
start = "{}"
end = "{}"
breaks = ["{}-{}"]
[[oee.machines]]
name = "line"
node = "GT/gw"
device = "line"
cycle_count = "Count"
running = "Running"
fault_code = "Fault"
reject_count = "Rejects"
ideal_cycle_time = "500ms"
[oee.machines.reasons]
12 = {{ reason = "Jam", category = "breakdown" }}
"#,
        hms(t0),
        hms(t0 + SHIFT as u64),
        hms(t0 + BREAK.0 as u64),
        hms(t0 + BREAK.1 as u64),
    );
    let mut uplink = Uplink::start(broker.port, &db.url(), &oee);
    let cfg = format!(
        r#"[node]
group_id = "GT"
node_id = "gw"
primary_host_id = "scada"
[mqtt]
backoff_min = "200ms"
backoff_max = "1s"
[[mqtt.servers]]
host = "127.0.0.1"
port = {broker}
[telemetry]
listen = ""
log_format = "human"
[[devices]]
name = "line"
driver = "s7"
address = "127.0.0.1:{s7}"
[devices.scan_classes]
default = "100ms"
[[devices.tags]]
name = "Count"
address = "DB1.DBD0"
datatype = "UInt32"
[[devices.tags]]
name = "Running"
address = "DB1.DBX4.0"
datatype = "Boolean"
[[devices.tags]]
name = "Fault"
address = "DB1.DBW6"
datatype = "Int16"
[[devices.tags]]
name = "Rejects"
address = "DB1.DBD8"
datatype = "UInt32"
"#,
        broker = broker.port,
        s7 = s7.port
    );
    let _gw = Gateway::start(&cfg, &[]);

    // The line: a piece every 500 ms while running (on the quarter second,
    // away from every change of state), stopped in the break, the fault
    // (code 12) and the minor stop.
    let start = std::time::UNIX_EPOCH + Duration::from_secs(t0);
    let at = |s: f64| {
        if s >= 0.0 {
            start + Duration::from_secs_f64(s)
        } else {
            start - Duration::from_secs_f64(-s)
        }
    };
    let sleep_until = |t: std::time::SystemTime| {
        if let Ok(d) = t.duration_since(std::time::SystemTime::now()) {
            std::thread::sleep(d);
        }
    };
    let stopped = |s: f64| [BREAK, FAULT, MINOR].iter().any(|&(a, b)| s >= a - 0.3 && s < b + 0.3);
    let mut events: Vec<(f64, &str)> = vec![
        (BREAK.0, "stop"),
        (BREAK.1, "run"),
        (FAULT.0, "fault"),
        (FAULT.1, "run"),
        (MINOR.0, "stop"),
        (MINOR.1, "run"),
    ];
    let mut k = -2.0;
    while k < SHIFT + 2.0 {
        let s = k + 0.25;
        if !stopped(s) {
            events.push((s, "piece"));
        }
        k += 0.5;
    }
    for r in REJECT_AT {
        events.push((r + 0.1, "reject"));
    }
    if disturbed {
        events.extend([
            (8.1, "broker down"),
            (18.1, "reset"),
            (22.1, "broker up"),
            (28.1, "uplink restart"),
        ]);
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut count, mut rejects, mut produced) = (1000u64, 0u64, 0u64);
    for (s, what) in events {
        sleep_until(at(s));
        match what {
            "piece" => {
                count += 1;
                if (0.0..SHIFT).contains(&s) {
                    produced += 1;
                }
                set(&mut plc, 0, "UDINT", json!(count));
            }
            "reject" => {
                rejects += 1;
                set(&mut plc, 8, "UDINT", json!(rejects));
            }
            "stop" => set(&mut plc, 4, "BOOL", json!(false)),
            "fault" => {
                set(&mut plc, 6, "INT", json!(12));
                set(&mut plc, 4, "BOOL", json!(false));
            }
            "run" => {
                set(&mut plc, 4, "BOOL", json!(true));
                set(&mut plc, 6, "INT", json!(0));
            }
            "broker down" => broker.kill(),
            "broker up" => broker.restart(),
            "reset" => {
                // Not a piece: the counter starts again from 0.
                count = 0;
                set(&mut plc, 0, "UDINT", json!(0));
            }
            "uplink restart" => {
                drop(uplink);
                uplink = Uplink::start(broker.port, &db.url(), &oee);
            }
            _ => unreachable!(),
        }
    }
    // The shift's row, once the folder has everything.
    let row = |db: &TestDb| {
        db.query_text(&format!(
            "SELECT concat_ws('|', planned_ms, planned_downtime_ms, run_ms, breakdown_ms, unassigned_ms, produced, good, rejected, completeness)
             FROM oee_interval WHERE machine = 'line' AND kind = 'shift' AND start_at = to_timestamp({t0})"
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let fields = loop {
        let r = row(&db);
        let f: Vec<f64> = r.split('|').filter_map(|x| x.parse().ok()).collect();
        if f.len() == 9 && f[5] as u64 == produced {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "shift row {r:?}, want {produced} pieces:\n{}",
            uplink.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    if disturbed {
        assert!(
            db.query_i64("SELECT count(*) FROM sp_metric_fact WHERE group_id = 'GT' AND is_historical") > 10,
            "the outage's samples came late, replayed by the gateway"
        );
    }
    let ms = |s: f64| (s * 1000.0) as i64;
    let near = |got: f64, want: i64, what: &str| {
        assert!(
            (got as i64 - want).abs() <= TOLERANCE_MS,
            "{what}: {got} ms, want {want} ± {TOLERANCE_MS}"
        );
    };
    let planned = ms(SHIFT - (BREAK.1 - BREAK.0));
    assert_eq!(fields[0] as i64, planned, "planned: the shift less its break");
    assert_eq!(fields[1], 0.0, "no planned downtime");
    near(
        fields[2],
        planned - ms(FAULT.1 - FAULT.0),
        "run (the minor stop counts as run)",
    );
    near(fields[3], ms(FAULT.1 - FAULT.0), "breakdown");
    near(fields[4], 0, "unassigned");
    assert_eq!(
        (fields[5] as u64, fields[6] as u64, fields[7] as u64),
        (produced, produced - 3, 3),
        "exact counts"
    );
    assert_eq!(fields[8], 1.0, "every planned second known");
    // The ratios as the analytic values give them, within the time tolerance.
    let ratios = db.query_text(&format!(
        "SELECT concat_ws('|', availability, performance, quality, oee) FROM oee_interval
         WHERE machine = 'line' AND kind = 'shift' AND start_at = to_timestamp({t0})"
    ));
    let r: Vec<f64> = ratios.split('|').map(|x| x.parse().expect("ratio")).collect();
    let run = (planned - ms(FAULT.1 - FAULT.0)) as f64;
    let (a, p, q) = (
        run / planned as f64,
        500.0 * produced as f64 / run,
        (produced - 3) as f64 / produced as f64,
    );
    let tol = TOLERANCE_MS as f64 / planned as f64 * 2.0;
    assert!((r[0] - a).abs() < tol, "A {} vs {a}", r[0]);
    assert!((r[1] - p).abs() < tol, "P {} vs {p}", r[1]);
    assert!((r[2] - q).abs() < 1e-12, "Q {} vs {q}", r[2]);
    assert!((r[3] - a * p * q).abs() < 2.0 * tol, "OEE {} vs {}", r[3], a * p * q);
}
