//! OEE on PostgreSQL, from facts to intervals: a scripted hour of a press
//! (a break, a breakdown, a minor stop, cycles every 3 s, rejects) written
//! through the sink with its OEE marks, folded, and read back: A, P, Q and
//! OEE equal the analytic values; the same samples again change nothing;
//! a late sample changes exactly its interval.
#![cfg(feature = "uplink")]

mod common;

use common::pg::TestDb;
use spb::sparkplug::host::HostEvent;
use spb::sparkplug::{Metric, Value};
use spb::uplink::config::UplinkConfig;
use spb::uplink::oee::config::OeeConfig;
use spb::uplink::oee::OeeIndex;
use spb::uplink::postgres::PgSink;
use spb::uplink::rows::Batch;
use spb::uplink::sink::Sink;

/// 2026-11-30 01:00 UTC.
const T0: u64 = 1_796_000_400_000;
const S: u64 = 1000;
const MIN: u64 = 60 * S;

fn cfg() -> OeeConfig {
    UplinkConfig::parse("u.toml", CONFIG)
        .expect("valid")
        .oee
        .expect("[oee]")
}

const CONFIG: &str = r#"
[host]
host_id = "scada"
[mqtt]
[[mqtt.servers]]
host = "127.0.0.1"
[database]
backend = "postgres"
url = "host=127.0.0.1 user=postgres dbname=plant"
[oee]
time_zone = "UTC"
minor_stop = "2m"
[[oee.shifts]]
name = "day"
start = "00:00"
end = "24:00"
breaks = ["01:20-01:30"]
[[oee.machines]]
name = "press"
node = "G/N"
device = "press"
cycle_count = "Count"
running = "Running"
fault_code = "Fault"
reject_count = "Rejects"
reject_code = "RejectCode"
ideal_cycle_time = "2s"
[oee.machines.reasons]
12 = { reason = "Hydraulic pressure low", category = "breakdown" }
[oee.machines.reject_reasons]
3 = "Underfilled"
"#;

/// The scripted hour as (metric, timestamp, value).
fn script() -> Vec<(&'static str, u64, Value)> {
    let mut v = vec![
        ("Running", T0 - 5 * MIN, Value::Boolean(true)),
        ("Fault", T0 - 5 * MIN, Value::Int32(0)),
        ("Running", T0 + 40 * MIN, Value::Boolean(false)),
        ("Fault", T0 + 40 * MIN, Value::Int32(12)),
        ("Running", T0 + 50 * MIN, Value::Boolean(true)),
        ("Fault", T0 + 50 * MIN, Value::Int32(0)),
        ("Running", T0 + 55 * MIN, Value::Boolean(false)),
        ("Running", T0 + 56 * MIN, Value::Boolean(true)),
        ("Count", T0 - 1, Value::UInt32(100)),
        ("Rejects", T0 - 1, Value::UInt32(0)),
        ("RejectCode", T0 - 1, Value::Int32(0)),
        ("RejectCode", T0 + 58 * MIN, Value::Int32(3)),
        ("Rejects", T0 + 59 * MIN, Value::UInt32(10)),
    ];
    let stopped = |t: u64| {
        (T0 + 20 * MIN..T0 + 30 * MIN).contains(&t)
            || (T0 + 40 * MIN..T0 + 50 * MIN).contains(&t)
            || (T0 + 55 * MIN..T0 + 56 * MIN).contains(&t)
    };
    let mut count = 100;
    let mut t = T0;
    while t < T0 + 60 * MIN {
        if !stopped(t) {
            count += 1;
            v.push(("Count", t + 3 * S - 1, Value::UInt32(count)));
        }
        t += 3 * S;
    }
    v
}

/// The samples as batches of DDATA, each with its OEE marks.
fn batches(samples: &[(&'static str, u64, Value)], historical: bool) -> Vec<Batch> {
    batches_of(&cfg(), samples, historical)
}

fn batches_of(cfg: &OeeConfig, samples: &[(&'static str, u64, Value)], historical: bool) -> Vec<Batch> {
    let index = OeeIndex::new(Some(cfg));
    samples
        .chunks(200)
        .map(|chunk| {
            let metrics = chunk
                .iter()
                .map(|(name, ts, v)| {
                    let mut m = Metric::new(*name, v.clone(), *ts);
                    m.is_historical = historical;
                    m
                })
                .collect();
            let mut b = Batch::default();
            b.add_event(
                &HostEvent::data("G", "N", Some("press"), 0, None, metrics),
                T0 + 2 * 60 * MIN,
            );
            let marks: Vec<_> = index.marks(&b.facts).collect();
            b.oee.extend(marks);
            b
        })
        .collect()
}

fn write_and_fold(db: &TestDb, batches: &[Batch]) -> u64 {
    write_and_fold_at(db, batches, T0 + 2 * 60 * MIN)
}

/// Writes the batches, then folds as if the clock said `now`.
fn write_and_fold_at(db: &TestDb, batches: &[Batch], now: u64) -> u64 {
    db.rt.block_on(async {
        let mut s = PgSink::connect(&db.url()).await.expect("connect");
        s.migrate().await.expect("migrate");
        for b in batches {
            s.write(b).await.expect("write");
        }
        s.fold_oee(&cfg(), now as i64).await.expect("fold")
    })
}

/// The night shift 22:00-06:00 in Europe/Berlin crosses midnight and, on
/// the two nights of 2026 when the clocks change, lasts 7 h (spring: the
/// break at 02:30 does not exist that night) and 9 h (autumn: 02:30 comes
/// twice; the break is the first one). A machine that ran all night, a
/// cycle a minute, fills exactly those hours.
#[test]
fn a_night_shift_across_midnight_follows_the_plant_clock_through_both_dst_changes() {
    let db = TestDb::new("oee_dst");
    let config = CONFIG
        .replace("time_zone = \"UTC\"", "time_zone = \"Europe/Berlin\"")
        .replace(
            "name = \"day\"\nstart = \"00:00\"\nend = \"24:00\"\nbreaks = [\"01:20-01:30\"]",
            "name = \"night\"\nstart = \"22:00\"\nend = \"06:00\"\nbreaks = [\"02:30-02:45\"]",
        );
    let cfg = UplinkConfig::parse("u.toml", &config)
        .expect("valid")
        .oee
        .expect("[oee]");
    // (shift start, end) in UTC ms: 2026-03-28 22:00 CET to 03-29 06:00
    // CEST, and 2026-10-24 22:00 CEST to 10-25 06:00 CET.
    let nights = [
        (1_774_731_600_000_u64, 1_774_756_800_000_u64, 7 * 60 * MIN, 420),
        (1_792_872_000_000, 1_792_904_400_000, 9 * 60 * MIN - 15 * MIN, 540),
    ];
    for &(start, end, planned, cycles) in &nights {
        let mut samples = vec![("Running", start - MIN, Value::Boolean(true))];
        let mut t = start - MIN;
        let mut n = 0;
        while t <= end + MIN {
            samples.push(("Count", t, Value::UInt32(n)));
            n += 1;
            t += MIN;
        }
        write_and_fold_at(&db, &[], 0);
        db.rt.block_on(async {
            let mut s = PgSink::connect(&db.url()).await.expect("connect");
            for b in batches_of(&cfg, &samples, false) {
                s.write(&b).await.expect("write");
            }
            s.fold_oee(&cfg, (end + 3 * 60 * MIN) as i64).await.expect("fold");
        });
        let row = db.query_text(&format!(
            "SELECT coalesce(string_agg(concat_ws('|', shift, extract(epoch FROM start_at)::bigint,
                    extract(epoch FROM end_at)::bigint, planned_ms, produced, completeness), ';'), 'none')
             FROM oee_interval WHERE kind = 'shift' AND start_at = to_timestamp({})",
            start / 1000
        ));
        assert_eq!(
            row,
            format!("night|{}|{}|{planned}|{cycles}|1", start / 1000, end / 1000)
        );
        assert_eq!(
            db.query_i64(&format!(
                "SELECT sum(planned_ms)::bigint FROM oee_interval WHERE kind = 'hour'
                 AND start_at >= to_timestamp({}) AND start_at < to_timestamp({})",
                start / 1000,
                end / 1000
            )),
            planned as i64,
            "the hours add up to the shift"
        );
    }
}

/// An edge that died (NDEATH, not back) stops the running state at its
/// death: the hour it died in is closed with the time after it unknown, and
/// no later hour is made up from its last state.
#[test]
fn after_the_edge_died_its_last_state_is_not_carried_on() {
    let db = TestDb::new("oee_dead");
    write_and_fold_at(&db, &batches(&script(), false), T0 + 30 * MIN);
    db.rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        c.execute(
            "INSERT INTO sp_node_state (group_id, node_id, online, stale, last_death, updated_at)
             VALUES ('G', 'N', false, true, to_timestamp($1::float8 / 1000), now())",
            &[&((T0 + 35 * MIN) as f64)],
        )
        .await
        .expect("node state");
    });
    write_and_fold_at(&db, &[], T0 + 3 * 60 * MIN);
    // Known 00:00-20:00 and 30:00-35:00 of 50 planned minutes, all running.
    let got = hour(&db);
    assert!(
        got.starts_with(&format!("{}|0|{}|0|0|", 50 * MIN, 25 * MIN)) && got.ends_with("|0.5"),
        "{got}"
    );
    assert_eq!(
        db.query_i64(&format!(
            "SELECT count(*) FROM oee_interval WHERE kind = 'hour' AND start_at > to_timestamp({})",
            T0 / 1000
        )),
        0,
        "no hour after the death"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM oee_interval WHERE computed_to < end_at AND kind = 'hour'"),
        0,
        "nothing left open"
    );
}

/// Half-way through the hour, its figures are those so far: the state the
/// last sample set is not carried into the future. Later folds compute the
/// hour again although no sample arrives, and close it with the figures of
/// the whole hour.
#[test]
fn a_running_hour_is_computed_up_to_now_and_again_until_it_has_ended() {
    let db = TestDb::new("oee_open");
    let samples = script();
    write_and_fold_at(&db, &batches(&samples, false), T0 + 30 * MIN);
    // 00:00-20:00 planned and running (the break 20:00-30:00 is not
    // planned), 400 cycles of 3 s done by 30:00; nothing after now.
    let p = 400.0 * 2.0 / (20.0 * 60.0);
    assert_eq!(
        hour(&db),
        format!(
            "{}|0|{}|0|0|400|400|0|800000|1.000000000|{p:.9}|1.000000000|{p:.9}|1",
            20 * MIN,
            20 * MIN
        )
    );
    let open = format!(
        "SELECT count(*) FROM oee_interval WHERE kind = 'hour' AND computed_to < end_at AND start_at = to_timestamp({})",
        T0 / 1000
    );
    assert_eq!(db.query_i64(&open), 1, "the hour is open");
    // 45:00: in the breakdown that began at 40:00; no new sample.
    write_and_fold_at(&db, &[], T0 + 45 * MIN);
    let got = hour(&db);
    assert!(
        got.starts_with(&format!("{}|0|{}|{}|0|600|", 35 * MIN, 30 * MIN, 5 * MIN)),
        "{got}"
    );
    // After the hour: closed, and equal to the hour computed at once.
    write_and_fold_at(&db, &[], T0 + 2 * 60 * MIN);
    assert_eq!(db.query_i64(&open), 0, "the hour is closed");
    let closed = hour(&db);
    let whole = TestDb::new("oee_open_whole");
    write_and_fold(&whole, &batches(&samples, false));
    assert_eq!(closed, hour(&whole));
}

/// The hour's figures, as text to compare whole.
fn hour(db: &TestDb) -> String {
    db.query_text(&format!(
        "SELECT concat_ws('|', planned_ms, planned_downtime_ms, run_ms, breakdown_ms, unassigned_ms, produced, good, rejected,
                ideal_ms, round(availability::numeric, 9), round(performance::numeric, 9), round(quality::numeric, 9),
                round(oee::numeric, 9), completeness)
         FROM oee_interval WHERE machine = 'press' AND kind = 'hour' AND start_at = to_timestamp({})",
        T0 / 1000
    ))
}

#[test]
fn a_scripted_hour_folds_to_the_analytic_figures_and_a_replay_changes_nothing() {
    let db = TestDb::new("oee_hour");
    let samples = script();
    assert!(
        write_and_fold(&db, &batches(&samples, false)) >= 2,
        "an hour and a shift at least"
    );
    // Planned 50 min (a 10-minute break); down 40:00-50:00 (breakdown);
    // 55:00-56:00 a minor stop, so run time 40 min; 780 cycles, 10 rejects.
    let a = 40.0 / 50.0;
    let p = 780.0 * 2.0 / (40.0 * 60.0);
    let q = 770.0 / 780.0;
    let want = format!(
        "{}|0|{}|{}|0|780|770|10|1560000|{:.9}|{:.9}|{:.9}|{:.9}|1",
        50 * MIN,
        40 * MIN,
        10 * MIN,
        a,
        p,
        q,
        a * p * q
    );
    assert_eq!(hour(&db), want);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM oee_downtime WHERE machine = 'press' AND category = 'breakdown' AND reason_code = '12'"),
        1
    );
    assert_eq!(
        db.query_i64("SELECT sum(count)::bigint FROM oee_cycle WHERE machine = 'press'"),
        780
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM oee_pending"),
        0,
        "the log is emptied"
    );
    // The rejects carry the code in force when the counter counted them.
    assert_eq!(
        db.query_text("SELECT concat_ws('|', rejected, reason_code, reason) FROM oee_quality WHERE rejected > 0"),
        "10|3|Underfilled"
    );
    let shift =
        db.query_text("SELECT concat_ws('|', shift, produced, rejected) FROM oee_interval WHERE kind = 'shift'");
    assert_eq!(shift, "day|780|10");

    // `spb-uplink oee` says the same to the process engineer.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("uplink.toml");
    std::fs::write(
        &file,
        CONFIG.replace("host=127.0.0.1 user=postgres dbname=plant", &db.url()),
    )
    .expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spb-uplink"))
        .args([
            "oee",
            "--machine",
            "press",
            "--from",
            "2026-11-30 01:00",
            "--to",
            "2026-11-30 02:00",
            "--config",
        ])
        .arg(&file)
        .output()
        .expect("spb-uplink oee");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    // Without a period: the current (here: the only) shift.
    let shift = std::process::Command::new(env!("CARGO_BIN_EXE_spb-uplink"))
        .args(["oee", "--machine", "press", "--config"])
        .arg(&file)
        .output()
        .expect("spb-uplink oee");
    let shift_text = String::from_utf8_lossy(&shift.stdout);
    assert!(
        shift_text.starts_with("press: shift \"day\", 2026-11-30 00:00 to 2026-12-01 00:00 (UTC)"),
        "{shift_text}{}",
        String::from_utf8_lossy(&shift.stderr)
    );
    assert!(
        shift_text.contains("produced 780, good 770, rejected 10"),
        "{shift_text}"
    );
    for want in [
        "press: period, 2026-11-30 01:00 to 2026-11-30 02:00 (UTC)",
        "OEE 51.3%  =  availability 80.0%  x  performance 65.0%  x  quality 98.7%",
        "planned 50m00s, planned downtime 0s, run 40m00s; produced 780, good 770, rejected 10",
        "downtime: breakdown 10m00s",
        "10m00s      12  Hydraulic pressure low (breakdown, 1 stop)",
        "top reject reasons:\n        10       3  Underfilled",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }

    // Every query of the Grafana dashboard runs on these tables and finds them.
    dashboard_queries_answer(&db);

    // The live view's cycle count: the same whether the hours are recent or
    // summed once into the base of older days.
    db.rt.block_on(async {
        let mut s = PgSink::connect(&db.url()).await.expect("connect");
        for now in [T0 + 2 * 60 * MIN, T0 + 3 * 24 * 60 * MIN, T0 + 2 * 60 * MIN] {
            let live = s.oee_live(now as i64).await.expect("live");
            assert_eq!(live.len(), 1, "{live:?}");
            assert_eq!((live[0].machine.as_str(), live[0].cycles), ("press", 780), "at {now}");
        }
    });

    // The gateway replays it all (historical), in another order: nothing changes.
    let mut again = samples.clone();
    again.reverse();
    write_and_fold(&db, &batches(&again, true));
    assert_eq!(hour(&db), want);
    assert_eq!(
        db.query_i64("SELECT sum(count)::bigint FROM oee_cycle WHERE machine = 'press'"),
        780
    );

    // A stop 10:00-15:00 reported two hours late changes that hour's run
    // and downtime, and no other interval.
    let before = db.query_text(
        "SELECT string_agg(concat_ws('|', kind, start_at, run_ms, produced), ';' ORDER BY kind, start_at)
         FROM oee_interval WHERE NOT (kind = 'hour' AND start_at = to_timestamp(1796000400))",
    );
    let late = vec![
        ("Running", T0 + 10 * MIN, Value::Boolean(false)),
        ("Running", T0 + 15 * MIN, Value::Boolean(true)),
    ];
    write_and_fold(&db, &batches(&late, true));
    let got = hour(&db);
    assert!(
        got.starts_with(&format!("{}|0|{}|{}|{}|780|", 50 * MIN, 35 * MIN, 10 * MIN, 5 * MIN)),
        "{got}"
    );
    let after = db.query_text(
        "SELECT string_agg(concat_ws('|', kind, start_at, run_ms, produced), ';' ORDER BY kind, start_at)
         FROM oee_interval WHERE NOT (kind = 'hour' AND start_at = to_timestamp(1796000400))",
    );
    // The day's shift holds the hour: it changes with it; the hour before does not.
    let other_hours = |t: &str| {
        t.split(';')
            .filter(|r| r.starts_with("hour"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(other_hours(&after), other_hours(&before));

    // Samples that are not good (BAD, 0; STALE, 500: above the threshold
    // as a number) are not used: a stop 30:00-35:00 of either changes nothing.
    let before = hour(&db);
    for quality in [spb::sparkplug::Quality::Stale, spb::sparkplug::Quality::Bad] {
        let mut b = Batch::default();
        let metrics = [(T0 + 30 * MIN, false), (T0 + 35 * MIN, true)]
            .into_iter()
            .map(|(ts, v)| {
                let mut m = Metric::new("Running", Value::Boolean(v), ts);
                m.properties.get_or_insert_with(Default::default).set_quality(quality);
                m
            })
            .collect();
        b.add_event(
            &HostEvent::data("G", "N", Some("press"), 0, None, metrics),
            T0 + 2 * 60 * MIN,
        );
        let marks: Vec<_> = OeeIndex::new(Some(&cfg())).marks(&b.facts).collect();
        assert_eq!(marks.len(), 2);
        b.oee.extend(marks);
        write_and_fold(&db, &[b]);
        assert_eq!(hour(&db), before, "{quality:?}");
    }
}

/// Through the real gateway (a simulated press), mosquitto and the uplink:
/// the OEE folder writes the current hour and shift, and `/metrics` shows
/// the machine's figures and cycles.
#[test]
fn the_uplink_computes_oee_from_a_running_gateway_and_shows_it_on_metrics() {
    use common::uplink::Uplink;
    use common::{Broker, Gateway};
    let db = TestDb::new("oee_live");
    let broker = Broker::start(None);
    let oee = r#"
[oee]
time_zone = "Europe/Berlin"
[[oee.shifts]]
name = "all day"
start = "00:00"
end = "24:00"
[[oee.machines]]
name = "press"
node = "OE1/gw"
device = "press"
cycle_count = "Strokes"
running = "Running"
ideal_cycle_time = "100ms"
[[oee.machines]]
name = "ghost"
node = "OE1/gw"
device = "press"
cycle_count = "Nope"
running = "Running"
ideal_cycle_time = "1s"
[[oee.machines]]
name = "wrong"
node = "OE1/gw"
device = "press"
cycle_count = "Strokes"
running = "Pressure"
ideal_cycle_time = "1s"
"#;
    let uplink = Uplink::start(broker.port, &db.url(), oee);
    let cfg = common::test_config("OE1", "gw", &format!("host = \"127.0.0.1\"\nport = {}", broker.port), "")
        + "[[devices.tags]]\nname = \"Running\"\naddress = \"const(true)\"\ndatatype = \"Boolean\"\nscan_class = \"fast\"\n";
    let _gw = Gateway::start(&cfg, &[]);
    uplink.wait_until("OEE intervals computed", |u| {
        u.metric("spb_uplink_oee_intervals_total") >= 2.0
    });
    uplink.wait_until("cycles counted", |u| {
        common::http_get(u.http, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix("spb_uplink_oee_cycles_total{machine=\"press\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|v| v > 5.0)
    });
    let metrics = common::http_get(uplink.http, "/metrics");
    assert!(
        metrics.contains("spb_uplink_oee{machine=\"press\",shift=\"all day\",figure=\"availability\"} 1"),
        "always running: {metrics}"
    );
    assert!(metrics.contains("figure=\"performance\"}"), "{metrics}");
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM oee_interval WHERE machine = 'press' AND kind = 'shift' AND shift = 'all day'"
        ),
        1
    );
    // A mapping the birth refutes is said, counted and not computed.
    assert!(
        metrics.contains("spb_uplink_oee_mapping_errors{machine=\"ghost\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spb_uplink_oee_mapping_errors{machine=\"wrong\"} 1"),
        "{metrics}"
    );
    let log = uplink.log();
    assert!(
        log.contains("cycle_count metric 'Nope' is not in the birth of OE1/gw/press"),
        "{log}"
    );
    assert!(
        log.contains("running metric 'Pressure' is Float, but the role needs a Boolean"),
        "{log}"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM oee_interval WHERE machine IN ('ghost', 'wrong')"),
        0
    );
}

/// Each query of `grafana/oee.json`, with Grafana's macros as Grafana
/// expands them for PostgreSQL, run against the folded scripted hour.
fn dashboard_queries_answer(db: &TestDb) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/oee.json")).expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let mut queries: Vec<(String, String)> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                (
                    p["title"].as_str().unwrap_or("").to_string(),
                    t["rawSql"].as_str().expect("rawSql").to_string(),
                )
            })
        })
        .collect();
    for v in dash["templating"]["list"].as_array().expect("variables") {
        if v["type"] == "query" {
            queries.push((
                format!("variable {}", v["name"]),
                v["query"].as_str().expect("query").to_string(),
            ));
        }
    }
    assert_eq!(queries.len(), 6);
    let (from, to) = (T0 / 1000 - 3600, T0 / 1000 + 7200);
    let expand = |sql: &str| {
        let mut out = sql.replace("'$machine'", "'press'");
        while let Some(i) = out.find("$__timeFilter(") {
            let end = i + out[i..].find(')').expect("closed");
            let column = out[i + "$__timeFilter(".len()..end].to_string();
            out.replace_range(
                i..=end,
                &format!("{column} BETWEEN to_timestamp({from}) AND to_timestamp({to})"),
            );
        }
        out
    };
    db.rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        for (title, sql) in &queries {
            let sql = expand(sql);
            assert!(!sql.contains('$'), "{title}: a macro left: {sql}");
            let rows = client
                .query(sql.as_str(), &[])
                .await
                .unwrap_or_else(|e| panic!("{title}: {e}\n{sql}"));
            assert!(!rows.is_empty(), "{title}: no rows\n{sql}");
            if title.starts_with("Downtime Pareto") {
                let top = client
                    .query_one(
                        format!("SELECT reason, minutes::text FROM ({sql}) q LIMIT 1").as_str(),
                        &[],
                    )
                    .await
                    .expect("pareto");
                let (reason, minutes): (String, String) = (top.get(0), top.get(1));
                assert_eq!((reason.as_str(), minutes.as_str()), ("Hydraulic pressure low", "10.0"));
            }
        }
    });
}
