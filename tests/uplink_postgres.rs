//! The PostgreSQL sink against the real PostgreSQL of the dev machine, a
//! fresh database per test (issue #6). `SPB_TEST_PG` overrides the server
//! (default `host=127.0.0.1 port=5432 user=postgres`, trust auth).
#![cfg(feature = "uplink")]

use spb::sparkplug::host::HostEvent;
use spb::sparkplug::{Metric, Value};
use spb::uplink::postgres::PgSink;
use spb::uplink::rows::Batch;
use spb::uplink::sink::Sink;

mod common;
use common::pg::TestDb;
use common::sink_rows::T0;

fn data(values: &[(u64, f64)], historical: bool) -> HostEvent {
    common::sink_rows::data("N", "Temp", values, historical)
}

#[test]
fn migrations_apply_once_and_a_second_start_changes_nothing() {
    let db = TestDb::new("migr");
    db.rt.block_on(async {
        let mut s = PgSink::connect(&db.url()).await.expect("connect");
        assert_eq!(s.migrate().await.expect("migrate"), 3);
        let mut again = PgSink::connect(&db.url()).await.expect("connect");
        assert_eq!(again.migrate().await.expect("migrate again"), 3);
    });
    assert_eq!(db.query_i64("SELECT count(*) FROM sp_schema_migrations"), 3);
}

#[test]
fn a_version_1_database_keeps_its_facts_and_rollups_through_the_series_id_migration() {
    let db = TestDb::new("migr_v1");
    db.rt.block_on(async {
        // A database as the v1 uplink left it: one sample and its rollups.
        let (c, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let v1 = spb::uplink::postgres::MIGRATIONS[0];
        assert_eq!(v1.0, 1);
        c.batch_execute(&format!(
            "SET TIME ZONE 'UTC';
             CREATE TABLE sp_schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
             {}
             INSERT INTO sp_schema_migrations (version) VALUES (1);
             INSERT INTO sp_metric_fact (group_id, node_id, device_id, metric, ts, datatype, v_float, quality, is_historical)
                 VALUES ('G', 'N', 'D', 'Temp', to_timestamp({t0}), 10, 1.0, 192, false);
             INSERT INTO sp_metric_rollup VALUES
                 ('minute', date_trunc('minute', to_timestamp({t0})), 'G', 'N', 'D', 'Temp', 1, 1.0, 1.0, 1.0, 1.0, to_timestamp({t0})),
                 ('hour', date_trunc('hour', to_timestamp({t0})), 'G', 'N', 'D', 'Temp', 1, 1.0, 1.0, 1.0, 1.0, to_timestamp({t0})),
                 ('day', date_trunc('day', to_timestamp({t0})), 'G', 'N', 'D', 'Temp', 1, 1.0, 1.0, 1.0, 1.0, to_timestamp({t0}));",
            v1.1,
            t0 = T0 / 1000
        ))
        .await
        .expect("v1 schema and rows");
        let mut s = PgSink::connect(&db.url()).await.expect("connect");
        assert_eq!(s.migrate().await.expect("migrate"), 3);
        // The gateway replays the old sample and sends one more.
        let mut b = Batch::default();
        b.add_event(&data(&[(T0, 1.0), (T0 + 1000, 3.0)], true), T0 + 5000);
        assert_eq!(s.write(&b).await.expect("write").facts, 1, "the v1 fact is known after the migration");
        assert_eq!(s.fold().await.expect("fold"), 1);
    });
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sp_metric_fact WHERE group_id = 'G' AND metric = 'Temp'"),
        2
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM sp_series"), 1, "one series, reused");
    assert_eq!(
        db.query_i64("SELECT count FROM sp_metric_rollup WHERE bucket_size = 'minute' AND metric = 'Temp'"),
        2,
        "the v1 rollup continued"
    );
    assert_eq!(
        db.query_i64("SELECT (sum * 10)::bigint FROM sp_metric_rollup WHERE bucket_size = 'day'"),
        40
    );
}

#[test]
fn a_replayed_sample_is_written_once_and_counted_once_in_the_rollups() {
    let db = TestDb::new("idem");
    db.rt.block_on(async {
        let mut s = PgSink::connect(&db.url()).await.expect("connect");
        s.migrate().await.expect("migrate");
        let mut live = Batch::default();
        live.add_event(&data(&[(T0, 1.0), (T0 + 1000, 3.0)], false), T0 + 1000);
        let w = s.write(&live).await.expect("write");
        assert_eq!(w.facts, 2);
        assert_eq!(s.fold().await.expect("fold"), 2);
        // The gateway replays the same samples as historical, plus one more.
        let mut replay = Batch::default();
        replay.add_event(&data(&[(T0, 1.0), (T0 + 1000, 3.0), (T0 + 2000, 5.0)], true), T0 + 5000);
        replay.add_event(&data(&[(T0 + 2000, 5.0)], true), T0 + 5000); // a duplicate within the batch
        let w = s.write(&replay).await.expect("write");
        assert_eq!(w.facts, 1, "only the new sample is inserted");
        assert_eq!(s.fold().await.expect("fold"), 1, "only the new sample is folded");
        assert_eq!(s.fold().await.expect("fold"), 0, "a second fold finds nothing");
    });
    assert_eq!(db.query_i64("SELECT count(*) FROM sp_rollup_pending"), 0);
    assert_eq!(db.query_i64("SELECT count(*) FROM sp_metric_fact"), 3);
    assert_eq!(
        db.query_i64("SELECT count FROM sp_metric_rollup WHERE bucket_size = 'minute'"),
        3,
        "rollups count each sample once"
    );
    assert_eq!(
        db.query_i64("SELECT (sum * 10)::bigint FROM sp_metric_rollup WHERE bucket_size = 'hour'"),
        90
    );
    assert_eq!(
        db.query_i64("SELECT last::bigint FROM sp_metric_rollup WHERE bucket_size = 'day'"),
        5
    );
    assert_eq!(
        db.query_i64("SELECT (extract(epoch FROM ts) * 1000)::bigint FROM sp_metric_fact ORDER BY ts LIMIT 1"),
        T0 as i64,
        "timestamps to the millisecond"
    );
}

#[test]
fn node_state_follows_births_and_deaths_and_garbage_is_quarantined() {
    let db = TestDb::new("state");
    db.rt.block_on(async {
        let mut s = PgSink::connect(&db.url()).await.expect("connect");
        s.migrate().await.expect("migrate");
        let (b, d) = common::sink_rows::birth_then_death();
        s.write(&b).await.expect("write");
        s.write(&d).await.expect("write");
    });
    assert_eq!(db.query_i64("SELECT count(*) FROM sp_node_state WHERE NOT online AND stale AND bdseq = 3 AND last_birth IS NOT NULL AND last_death IS NOT NULL"), 1);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sp_quarantine WHERE reason = 'not a Sparkplug payload'"),
        1
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sp_event_raw WHERE kind = 'NBIRTH'"),
        1
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sp_metric_catalog WHERE metric = 'Uptime'"),
        1
    );
}

/// Facts of every kind over two minutes, two hours and two days, as `historical`.
fn mixed_batch(historical: bool) -> Batch {
    let mut b = Batch::default();
    let day = 86_400_000;
    for (i, ts) in [T0, T0 + 1, T0 + 30_000, T0 + 3_600_000, T0 + day, T0 + day + 5]
        .into_iter()
        .enumerate()
    {
        let i = i as i32;
        let mut metrics = vec![
            Metric::new("f", Value::Double(f64::from(i) * 1.5 - 2.0), ts),
            Metric::new("i", Value::Int32(10 - i), ts),
            Metric::new("b", Value::Boolean(i % 2 == 0), ts),
            Metric::new("s", Value::String(format!("v{i}")), ts),
        ];
        if i == 2 {
            metrics.push(Metric::new("f", Value::Double(f64::NAN), ts + 2));
        }
        for m in &mut metrics {
            m.is_historical = historical;
        }
        b.add_event(
            &HostEvent::Data {
                group: "G".into(),
                node: "N".into(),
                device: Some("D".into()),
                seq: 1,
                timestamp: Some(ts),
                metrics,
            },
            ts,
        );
    }
    b
}

const ROLLUPS: &str =
    "SELECT string_agg(concat_ws(',', bucket_size, bucket, metric, count, min, max, sum, last, last_ts), ';'
     ORDER BY bucket_size, metric, bucket) FROM sp_metric_rollup";
const FACTS: &str =
    "SELECT string_agg(concat_ws(',', metric, ts, datatype, v_int, v_float, v_bool, v_text, quality), ';'
     ORDER BY metric, ts) FROM sp_metric_fact";

#[test]
fn live_facts_copied_directly_and_replays_merged_give_the_same_facts_and_folded_rollups() {
    let direct = TestDb::new("path_direct");
    let merged = TestDb::new("path_merge");
    for (db, historical) in [(&direct, false), (&merged, true)] {
        db.rt.block_on(async {
            let mut s = PgSink::connect(&db.url()).await.expect("connect");
            s.migrate().await.expect("migrate");
            let w = s.write(&mixed_batch(historical)).await.expect("write");
            assert_eq!(w.facts, 25);
            assert_eq!(
                s.fold().await.expect("fold"),
                13,
                "the numeric facts (f and i, one NaN)"
            );
        });
    }
    let rollups = direct.query_text(ROLLUPS);
    assert_eq!(rollups, merged.query_text(ROLLUPS), "the same rollups from either path");
    assert!(rollups.contains("minute"), "{rollups}");
    assert_eq!(
        direct.query_text(FACTS).replace(",t,", ",f,"),
        merged.query_text(FACTS).replace(",t,", ",f,"),
        "the same facts"
    );
    assert_eq!(
        direct.query_i64("SELECT count(*) FROM sp_metric_rollup WHERE max = 'NaN'"),
        3,
        "NaN as PostgreSQL orders it: its minute, hour and day"
    );
}

#[test]
fn a_live_batch_holding_an_already_stored_sample_falls_back_and_writes_each_once() {
    let db = TestDb::new("live_dup");
    db.rt.block_on(async {
        let mut s = PgSink::connect(&db.url()).await.expect("connect");
        s.migrate().await.expect("migrate");
        let mut first = Batch::default();
        first.add_event(&data(&[(T0, 1.0), (T0 + 1000, 3.0)], false), T0 + 1000);
        assert_eq!(s.write(&first).await.expect("write").facts, 2);
        // A QoS 1 redelivery of the second sample, live, with a new one.
        let mut again = Batch::default();
        again.add_event(&data(&[(T0 + 1000, 3.0), (T0 + 2000, 5.0)], false), T0 + 2000);
        again.add_event(&data(&[(T0 + 2000, 5.0)], false), T0 + 2000);
        assert_eq!(s.write(&again).await.expect("write").facts, 1, "only the new sample");
        assert_eq!(s.fold().await.expect("fold"), 3);
    });
    assert_eq!(db.query_i64("SELECT count(*) FROM sp_metric_fact"), 3);
    assert_eq!(
        db.query_i64("SELECT count FROM sp_metric_rollup WHERE bucket_size = 'day'"),
        3,
        "each sample counted once"
    );
    assert_eq!(
        db.query_i64("SELECT last::bigint FROM sp_metric_rollup WHERE bucket_size = 'minute'"),
        5
    );
}

#[test]
fn two_uplinks_folding_at_once_count_every_fact_once() {
    let db = TestDb::new("fold_race");
    db.rt.block_on(async {
        let mut a = PgSink::connect(&db.url()).await.expect("connect");
        let mut b = PgSink::connect(&db.url()).await.expect("connect");
        a.migrate().await.expect("migrate");
        b.migrate().await.expect("migrate");
        for round in 0..20u64 {
            let mut batch = Batch::default();
            let at = T0 + round * 100;
            batch.add_event(&data(&[(at, 1.0), (at + 50, 2.0)], false), at + 50);
            a.write(&batch).await.expect("write");
            // Both fold while the other may be folding: the advisory lock
            // lets one through, the other folds nothing.
            let (x, y) = tokio::join!(a.fold(), b.fold());
            assert_eq!(x.expect("fold a") + y.expect("fold b"), 2, "round {round}");
        }
    });
    assert_eq!(
        db.query_i64("SELECT count FROM sp_metric_rollup WHERE bucket_size = 'day'"),
        40
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM sp_rollup_pending"), 0);
}
