//! The PostgreSQL sink against the real PostgreSQL of the dev machine, a
//! fresh database per test. `SPB_TEST_PG` overrides the server
//! (default `host=127.0.0.1 port=5432 user=postgres`, trust auth).
#![cfg(feature = "uplink")]

use spb::sparkplug::host::HostEvent;
use spb::sparkplug::{Metric, Value};
use spb::uplink::postgres::PgSink;
use spb::uplink::rows::Batch;
use spb::uplink::sink::Sink;
use spb::uplink::writer::{commit, Conn};
use std::sync::atomic::Ordering::Relaxed;

mod common;
use common::pg::{Login, TestDb};
use common::sink_rows::T0;

/// The newest schema version this uplink knows.
const LATEST: i32 = spb::uplink::postgres::MIGRATIONS[spb::uplink::postgres::MIGRATIONS.len() - 1].0;

fn data(values: &[(u64, f64)], historical: bool) -> HostEvent {
    common::sink_rows::data("N", "Temp", values, historical)
}

#[test]
fn migrations_apply_once_and_a_second_start_changes_nothing() {
    let db = TestDb::new("migr");
    db.rt.block_on(async {
        let mut s = PgSink::connect(&db.url()).await.expect("connect");
        assert_eq!(s.migrate().await.expect("migrate"), LATEST);
        let mut again = PgSink::connect(&db.url()).await.expect("connect");
        assert_eq!(again.migrate().await.expect("migrate again"), LATEST);
    });
    assert_eq!(db.query_i64("SELECT count(*) FROM sp_schema_migrations"), LATEST as i64);
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
        assert_eq!(s.migrate().await.expect("migrate"), LATEST);
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

// [tck-id-operational-behavior-edge-node-birth-sequence] [tck-id-topics-ddeath-seq-number]
#[test]
fn device_state_and_its_history_follow_births_and_deaths_and_a_death_makes_the_last_values_stale() {
    let db = TestDb::new("devstate");
    db.rt.block_on(async {
        let mut s = PgSink::connect(&db.url()).await.expect("connect");
        s.migrate().await.expect("migrate");
        for b in common::sink_rows::device_lifecycle() {
            s.write(&b).await.expect("write");
        }
    });
    let q = |sql: &str| db.query_i64(sql);
    // Now: the node died (NDEATH) and took its device with it.
    assert_eq!(
        q(
            "SELECT count(*) FROM sp_device_state WHERE group_id = 'G' AND node_id = 'N' AND device_id = 'D'
           AND NOT online AND bdseq = 3 AND last_cause = 'node NDEATH'
           AND last_birth = to_timestamp(1795000004) AND last_death = to_timestamp(1795000009)"
        ),
        1
    );
    // Every birth and death, in order, with the node's bdSeq.
    let history = db.query_text(
        "SELECT string_agg(device_id || ':' || online || ':' || cause || ':' || coalesce(bdseq::text, '-') || ':' ||
                (extract(epoch FROM at) - 1795000000)::int, ' ' ORDER BY at, device_id)
         FROM sp_state_history",
    );
    assert_eq!(
        history,
        ":true::3:0 D:true::3:0 D:false:DDEATH:3:3 D:true::3:4 :false:NDEATH:3:9 D:false:node NDEATH:3:9"
    );
    // The DDEATH's STALE marker at T0 + 3 s gave way to the sample of that
    // same millisecond the edge replayed later; the NDEATH's markers are
    // the last values now.
    assert_eq!(
        db.query_text(
            "SELECT string_agg(metric || ':' || quality || ':' || coalesce(v_float::text, '-') || ':' ||
                    (extract(epoch FROM ts) - 1795000000)::int, ' ' ORDER BY ts)
             FROM sp_metric_fact WHERE device_id = 'D'"
        ),
        "Temp:192:1:0 Temp:192:2:3 Temp:192:5:4 Temp:500:-:9"
    );
    assert_eq!(
        q("SELECT count(*) FROM sp_metric_last WHERE is_stale AND quality = 500 AND v_float IS NULL"),
        2,
        "Uptime of the node and Temp of the device"
    );
    assert_eq!(q("SELECT count(*) FROM sp_metric_last WHERE NOT is_stale"), 0);
    assert_eq!(
        q("SELECT count(*) FROM sp_metric_fact WHERE node_id = 'N' AND device_id = '' AND quality = 500"),
        1
    );
    // A STALE marker that finds a sample at its millisecond leaves it alone.
    db.rt.block_on(async {
        let mut s = PgSink::connect(&db.url()).await.expect("connect");
        let mut late = Batch::default();
        late.add_event(&common::sink_rows::device_death(T0 + 4000), T0 + 20_000);
        s.write(&late).await.expect("write");
    });
    assert_eq!(
        q("SELECT count(*) FROM sp_metric_fact WHERE device_id = 'D' AND ts = to_timestamp(1795000004) AND quality = 192 AND v_float = 5"),
        1
    );
    assert_eq!(
        q("SELECT count(*) FROM sp_rollup_pending"),
        4,
        "Uptime and the three Temp samples, no marker"
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
        b.add_event(&HostEvent::data("G", "N", Some("D"), 1, Some(ts), metrics), ts);
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

/// Healthy facts of node `N` at T0.. plus, if `poison`, rows PostgreSQL
/// refuses: a string with NUL and a metric name too long for a b-tree entry
/// (the validation before the sink would catch both; these bypass it to
/// prove the writer's own isolation).
fn poisoned_batch(healthy: usize) -> Batch {
    let mut b = Batch::default();
    b.add_raw("spBv1.0/G/DDATA/N/D", b"\x08\x01", T0);
    let values: Vec<(u64, f64)> = (0..healthy as u64).map(|i| (T0 + i, i as f64)).collect();
    b.add_event(&data(&values, false), T0);
    let mut nul = b.facts[0].clone();
    nul.metric = "Text".into();
    nul.datatype = 12;
    nul.v_float = None;
    nul.v_text = Some("a\0b".into());
    let mut long = b.facts[0].clone();
    // Incompressible, so that PostgreSQL cannot squeeze it into the index.
    let mut x = 88172645463325252u64;
    long.metric = (0..3000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect::<String>()
        .into();
    b.facts.insert(healthy / 2, nul);
    b.facts.push(long);
    b
}

#[test]
fn rows_the_database_refuses_are_quarantined_with_its_words_and_the_rest_of_the_batch_is_written() {
    let db = TestDb::new("poison");
    let stats = spb::uplink::stats::Stats::default();
    db.rt.block_on(async {
        let mut conn = Conn::<PgSink>::new(db.url());
        // Before the writer isolated refused rows, this retried forever.
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            commit(&mut conn, poisoned_batch(40), &stats),
        )
        .await
        .expect("a poisoned batch does not wedge the writer");
    });
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sp_metric_fact WHERE metric = 'Temp'"),
        40
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sp_event_raw"),
        1,
        "the raw row written once"
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM sp_quarantine"), 2);
    let reasons = db.query_text("SELECT string_agg(reason, ' | ' ORDER BY reason) FROM sp_quarantine");
    assert!(
        reasons.contains("22021"),
        "the database's own SQLSTATE and words: {reasons}"
    );
    assert!(reasons.contains("54000"), "index row too large: {reasons}");
    assert_eq!(
        db.query_text("SELECT topic FROM sp_quarantine WHERE reason LIKE '%22021%'"),
        "G/N/D/Text"
    );
    assert_eq!(stats.rows_refused.load(Relaxed), 2);
    assert_eq!(stats.facts_written.load(Relaxed), 40);
}

/// A PostgreSQL sink that panics on any write holding a metric named
/// `panic`: the fault a bug in a sink or a driver would cause.
struct PanickingSink(PgSink);

impl Sink for PanickingSink {
    type Error = spb::uplink::postgres::PgError;
    async fn connect(url: &str) -> Result<Self, Self::Error> {
        Ok(PanickingSink(PgSink::connect(url).await?))
    }
    async fn migrate(&mut self) -> Result<i32, Self::Error> {
        self.0.migrate().await
    }
    async fn check_schema(&mut self) -> Result<i32, Self::Error> {
        self.0.check_schema().await
    }
    async fn write(&mut self, b: &Batch) -> Result<spb::uplink::sink::Written, Self::Error> {
        if b.facts.iter().any(|f| &*f.metric == "panic") {
            panic!("a bug met metric 'panic'");
        }
        self.0.write(b).await
    }
    async fn fold(&mut self) -> Result<u64, Self::Error> {
        self.0.fold().await
    }
    fn set_retention(&mut self, r: &spb::uplink::retention::Retention, clock: Option<i64>) {
        self.0.set_retention(r, clock)
    }
    async fn retain(&mut self, now_ms: i64) -> Result<spb::uplink::sink::Retained, Self::Error> {
        self.0.retain(now_ms).await
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
    fn is_data_error(e: &Self::Error) -> bool {
        PgSink::is_data_error(e)
    }
}

#[test]
fn a_write_that_panics_loses_no_row_only_the_one_that_panics_is_quarantined() {
    let db = TestDb::new("panic");
    let stats = spb::uplink::stats::Stats::default();
    db.rt.block_on(async {
        let mut b = Batch::default();
        let values: Vec<(u64, f64)> = (0..10).map(|i| (T0 + i, i as f64)).collect();
        b.add_event(&data(&values, false), T0);
        let mut bad = b.facts[3].clone();
        bad.metric = "panic".into();
        b.facts.insert(5, bad);
        let mut conn = Conn::<PanickingSink>::new(db.url());
        tokio::time::timeout(std::time::Duration::from_secs(60), commit(&mut conn, b, &stats))
            .await
            .expect("finishes");
    });
    assert_eq!(db.query_i64("SELECT count(*) FROM sp_metric_fact"), 10);
    assert_eq!(
        db.query_text("SELECT reason FROM sp_quarantine"),
        "the database refused this fact at 1795000000003 ms: the write panicked: a bug met metric 'panic'"
    );
    assert!(stats.writer_panics.load(Relaxed) >= 1);
}

#[test]
fn a_writer_task_that_dies_is_started_again_and_the_batches_queued_for_it_are_written() {
    use spb::uplink::writer::{Pending, Queue, Writers};
    let db = TestDb::new("restart");
    let stats = std::sync::Arc::new(spb::uplink::stats::Stats::default());
    let url = db.url();
    let (st, stats2) = (stats.clone(), stats.clone());
    let starts = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = starts.clone();
    db.rt.block_on(async move {
        let stats = stats2;
        let cfg = spb::uplink::config::UplinkConfig::parse(
            "u.toml",
            &format!("[host]\nhost_id = \"h\"\n[mqtt]\n[[mqtt.servers]]\nhost = \"127.0.0.1\"\n[database]\nbackend = \"postgres\"\nurl = \"{url}\"\n"),
        )
        .expect("config");
        let db_cfg = cfg.database;
        // The first task dies at once (as a panic outside a write would end
        // it); every later one is the real writer on the same queue.
        let start: Box<dyn Fn(Queue) -> tokio::task::JoinHandle<()> + Send> = Box::new(move |q| {
            if count.fetch_add(1, Relaxed) == 0 {
                tokio::spawn(async move {
                    let _held = q.lock().await;
                    panic!("writer task dies");
                })
            } else {
                tokio::spawn(spb::uplink::writer::writer::<PgSink>(db_cfg.clone(), q, st.clone(), None))
            }
        });
        let mut w = Writers::start(1, stats.clone(), start);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        for i in 0..5u64 {
            let mut b = Batch::default();
            b.add_event(&data(&[(T0 + i, i as f64)], false), T0);
            stats.backlog_rows.fetch_add(b.len() as u64, Relaxed);
            let bytes = b.approx_bytes();
            stats.backlog_bytes.fetch_add(bytes, Relaxed);
            w.send(
                0,
                Pending {
                    batch: b,
                    since: tokio::time::Instant::now(),
                    since_ms: T0,
                    bytes,
                },
            );
        }
        assert!(w.finish(std::time::Duration::from_secs(30)).await, "every batch written");
    });
    assert_eq!(db.query_i64("SELECT count(*) FROM sp_metric_fact"), 5);
    assert_eq!(stats.writer_restarts.load(Relaxed), 1);
    assert_eq!(starts.load(Relaxed), 2);
}

/// Days in milliseconds.
const DAY: u64 = 86_400_000;

/// Partitions of `parent`, by name.
fn partitions(db: &TestDb, parent: &str) -> String {
    db.query_text(&format!(
        "SELECT string_agg(c.relname, ' ' ORDER BY c.relname) FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = '{parent}'::regclass"
    ))
}

#[test]
fn retention_on_a_clock_we_control_drops_whole_expired_partitions_and_nothing_newer() {
    use spb::uplink::retention::{Retention, Span};
    use std::time::Duration;
    let db = TestDb::new("retain");
    // 2026-11-18 00:00 UTC; a sample every 6 hours for 40 days.
    let start = T0 - T0 % DAY;
    let now = start + 40 * DAY;
    let keep = Retention {
        raw: Some(Duration::from_secs(30 * 86_400)),
        facts: Some(Duration::from_secs(30 * 86_400)),
        rollups: [Some(Duration::from_secs(20 * 86_400)), None, None],
        span: Span::Day,
        ..Retention::default()
    };
    let stamps: Vec<u64> = (0..160).map(|i| start + i * 6 * 3_600_000).collect();
    db.rt.block_on(async {
        let mut s = PgSink::connect(&db.url()).await.expect("connect");
        s.migrate().await.expect("migrate");
        // Written as it happened: each day on that day's clock.
        for day in stamps.chunks(4) {
            s.set_retention(&keep, Some(day[0] as i64));
            let mut b = Batch::default();
            let values: Vec<(u64, f64)> = day.iter().map(|t| (*t, 1.0)).collect();
            b.add_event(&data(&values, false), day[0]);
            b.add_raw("spBv1.0/G/DDATA/N/D", b"\x08\x01", day[0]);
            let w = s.write(&b).await.expect("write");
            assert_eq!((w.facts, w.raw, w.expired), (4, 1, 0));
            assert_eq!(s.fold().await.expect("fold"), 4);
        }
        // Now 40 days on: a run drops what is wholly older than 30 days.
        s.set_retention(&keep, Some(now as i64));
        let r = s.retain(now as i64).await.expect("retain");
        // The cutoff is 2026-11-28 00:00: the facts and raw of the 18th to
        // the 26th go, the 27th is within the grace hour of the cutoff and
        // goes at the next run; the minute rollups of November go whole.
        assert_eq!(r.dropped.len(), 2 * 9 + 1, "{r:?}");
        assert!(r.created.iter().any(|p| p.starts_with("sp_series_fact_")), "{r:?}");
        // Again: nothing left to do.
        let again = s.retain(now as i64).await.expect("retain");
        assert!(again.dropped.is_empty() && again.created.is_empty(), "{again:?}");
        // A sample of an expired day arriving late is not written; one
        // stamped 3 days ahead is quarantined; one of today is a fact.
        let mut late = Batch::default();
        late.add_event(
            &data(&[(start + 5 * DAY, 9.0), (now + 3 * DAY, 9.0), (now, 9.0)], true),
            now,
        );
        let w = s.write(&late).await.expect("write");
        assert_eq!((w.facts, w.expired, w.ahead), (1, 1, 1));
    });
    let q = |sql: &str| db.query_i64(sql);
    let cutoff_s = (now - 30 * DAY) / 1000;
    // Every fact from the cutoff on is still there, and none more than a
    // partition and the grace older than it.
    assert_eq!(
        q(&format!(
            "SELECT count(*) FROM sp_metric_fact WHERE v_float = 1 AND ts >= to_timestamp({cutoff_s})"
        )),
        120
    );
    assert_eq!(q("SELECT count(*) FROM sp_metric_fact WHERE v_float = 1"), 124);
    assert_eq!(
        q(&format!(
            "SELECT count(*) FROM sp_metric_fact WHERE ts < to_timestamp({cutoff_s}) - interval '1 day 1 hour'"
        )),
        0
    );
    assert_eq!(q("SELECT count(*) FROM sp_event_raw"), 31);
    // Minute rollups: only the last 20 days' (November from the 19th holds
    // some older than that: a month partition goes only when all of it has
    // expired); hour and day rollups are kept forever.
    assert_eq!(
        q("SELECT count(*) FROM sp_metric_rollup WHERE bucket_size = 'hour'"),
        160
    );
    assert_eq!(q("SELECT count(*) FROM sp_metric_rollup WHERE bucket_size = 'day'"), 40);
    assert_eq!(
        q("SELECT count(*) FROM sp_metric_rollup WHERE bucket_size = 'minute' AND bucket < '2026-12-01'"),
        0
    );
    assert_eq!(
        q("SELECT count(*) FROM sp_metric_rollup WHERE bucket_size = 'minute'"),
        q("SELECT count(*) FROM sp_metric_fact WHERE v_float = 1 AND ts >= '2026-12-01'")
    );
    // The quarantined sample keeps its value and says why.
    assert_eq!(
        q("SELECT count(*) FROM sp_quarantine WHERE reason LIKE 'metric ''Temp'' = 9 stamped %more than 48 h ahead%'"),
        1
    );
    // Partitions: none older than the cutoff's day, and the horizon's exist.
    let facts = partitions(&db, "sp_series_fact");
    assert!(!facts.contains("sp_series_fact_20261126"), "{facts}");
    assert!(facts.contains("sp_series_fact_20261127"), "{facts}");
    let tomorrow = spb::uplink::retention::Span::Day.suffix((now + 2 * DAY) as i64);
    assert!(facts.contains(&format!("sp_series_fact_{tomorrow}")), "{facts}");
    assert_eq!(
        partitions(&db, "sp_series_rollup_minute"),
        "sp_series_rollup_minute_202612"
    );
}

#[test]
fn the_ingest_role_writes_what_the_uplink_writes_and_cannot_delete_update_or_alter_a_fact() {
    let db = TestDb::new("roles");
    db.rt.block_on(async {
        let mut owner = PgSink::connect(&db.url()).await.expect("connect");
        owner.migrate().await.expect("the owner migrates");
    });
    let login = Login::new(&db, "sparkplug_ingest");
    db.rt.block_on(async {
        let mut s = PgSink::connect(&login.url()).await.expect("connect as the ingest login");
        assert_eq!(s.check_schema().await.expect("current"), LATEST);
        for b in common::sink_rows::device_lifecycle() {
            s.write(&b).await.expect("births, data, deaths and STALE marks as the ingest role");
        }
        // A day no partition holds yet (through the owner's function), a
        // command seen on the broker, and the rollups folded.
        let later_day = T0 + 100 * 86_400_000;
        s.set_retention(&spb::uplink::retention::Retention::forever(), Some(later_day as i64));
        let mut later = Batch::default();
        later.add_event(&data(&[(later_day, 7.0)], true), later_day);
        later.add_command(
            &spb::sparkplug::host::CommandSeen {
                group: "G".into(),
                node: "N".into(),
                device: None,
                timestamp: Some(T0),
                writes: vec![spb::sparkplug::host::CommandWrite {
                    metric: "Node Control/Rebirth".into(),
                    value: Some("true".into()),
                    verdict: Ok(()),
                }],
            },
            T0,
            "another MQTT client",
        );
        assert_eq!(s.write(&later).await.expect("a new partition as the ingest role").facts, 1);
        assert!(s.fold().await.expect("fold as the ingest role") > 0);
        // What the role must not do.
        let (c, conn) = tokio_postgres::connect(&login.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        for sql in [
            "DELETE FROM sp_series_fact",
            "UPDATE sp_series_fact SET v_float = 0",
            "TRUNCATE sp_series_fact",
            "DELETE FROM sp_event_raw",
            "UPDATE sp_event_raw SET kind = ''",
            "DELETE FROM sp_stale",
            "DELETE FROM sp_command_audit",
            "DROP TABLE sp_series_fact",
            "ALTER TABLE sp_series_fact ADD COLUMN x int",
            "CREATE TABLE sp_mine (a int)",
            "DELETE FROM sp_series",
        ] {
            let e = c.batch_execute(sql).await.expect_err(sql);
            let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
            assert_eq!(code, "42501", "{sql}: permission denied, not {e:?}");
        }
        // The partition function adds partitions to the uplink's tables only.
        let e = c
            .batch_execute("SELECT sp_ensure_partition('sp_command_audit', 'sp_command_audit_20260101', now(), now() + interval '1 day')")
            .await
            .expect_err("not a partitioned table of the uplink");
        assert!(e.to_string().contains("not a partitioned table of the uplink") || format!("{e:?}").contains("not a partitioned table"), "{e:?}");
    });
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sp_metric_fact WHERE quality = 192"),
        5,
        "nothing was deleted"
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM sp_command_audit"), 1);
    assert_eq!(db.query_i64("SELECT count(*) FROM sp_state_history"), 6);
}

// TLS to the database: libpq's modes, a pinned CA and a client certificate,
// against a server of the test's own whose certificates the test made.
#[test]
fn postgres_over_tls_verifies_what_each_sslmode_promises_and_presents_the_client_certificate() {
    let pki = common::Pki::generate();
    let pg = common::pg::PrivatePg::start_tls(&pki);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let at = |host: &str, tls: &str| format!("host={host} port={} user=postgres dbname=postgres {tls}", pg.port);
    let (ca, rogue_ca) = (pki.path("ca.pem"), pki.path("rogue-ca.pem"));
    let client = format!("sslcert={} sslkey={}", pki.path("client.pem"), pki.path("client.key"));
    let rogue_client = format!(
        "sslcert={} sslkey={}",
        pki.path("rogue-client.pem"),
        pki.path("rogue-client.key")
    );
    let connect =
        |url: String| rt.block_on(async move { PgSink::connect(&url).await.map(|_| ()).map_err(|e| e.to_string()) });
    // verify-full with the pinned CA and the client certificate: written over TLS.
    let full = at("127.0.0.1", &format!("sslmode=verify-full sslrootcert={ca} {client}"));
    rt.block_on(async {
        let mut s = PgSink::connect(&full)
            .await
            .expect("verify-full with a client certificate");
        s.migrate().await.expect("migrate over TLS");
        let mut b = Batch::default();
        b.add_event(&data(&[(T0, 1.0)], false), T0);
        assert_eq!(s.write(&b).await.expect("write over TLS").facts, 1);
    });
    // What the server saw: TLS, and the client certificate's subject.
    let (tls_on, dn): (bool, String) = rt.block_on(async {
        let (rest, tls) = spb::uplink::pg_tls::split(&full).expect("valid");
        let rustls = spb::uplink::pg_tls::client_config(&tls).expect("files").expect("tls");
        let (c, conn) = rest
            .parse::<tokio_postgres::Config>()
            .expect("config")
            .connect(spb::uplink::pg_tls::MakeRustls(rustls))
            .await
            .expect("connect");
        tokio::spawn(conn);
        let r = c
            .query_one(
                "SELECT ssl, coalesce(client_dn, '') FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_ssl");
        (r.get(0), r.get(1))
    });
    assert!(tls_on);
    assert_eq!(dn, "/CN=gw-test");
    // The other modes, each with what it must refuse.
    let refused = |url: String, why: &str| {
        let e = connect(url.clone()).expect_err(&url);
        assert!(e.to_lowercase().contains(why), "{url}: {e}");
    };
    refused(at("127.0.0.1", "sslmode=disable"), "no encryption");
    refused(at("127.0.0.1", "sslmode=require"), "certificate");
    refused(
        at(
            "127.0.0.1",
            &format!("sslmode=verify-full sslrootcert={rogue_ca} {client}"),
        ),
        "unknownissuer",
    );
    refused(
        at(
            "127.0.0.1",
            &format!("sslmode=verify-full sslrootcert={ca} {rogue_client}"),
        ),
        "unknownca",
    );
    // 127.0.0.2 is not a name the server's certificate holds: verify-full
    // refuses it, verify-ca (the chain only) accepts it.
    refused(
        at("127.0.0.2", &format!("sslmode=verify-full sslrootcert={ca} {client}")),
        "not valid for name",
    );
    connect(at("127.0.0.2", &format!("sslmode=verify-ca sslrootcert={ca} {client}")))
        .expect("verify-ca checks the chain only");
    // prefer and require encrypt without checking the server.
    connect(at("127.0.0.1", &format!("sslmode=require {client}"))).expect("require");
    connect(at("127.0.0.1", &client)).expect("prefer, libpq's default");
    // And prefer really encrypts: the server's own view of a sink's session.
    rt.block_on(async {
        let _sink = PgSink::connect(&at("127.0.0.1", &format!("application_name=spb-prefer {client}")))
            .await
            .expect("prefer");
        let (rest, tls) = spb::uplink::pg_tls::split(&full).expect("valid");
        let rustls = spb::uplink::pg_tls::client_config(&tls).expect("files").expect("tls");
        let (c, conn) = rest
            .parse::<tokio_postgres::Config>()
            .expect("config")
            .connect(spb::uplink::pg_tls::MakeRustls(rustls))
            .await
            .expect("connect");
        tokio::spawn(conn);
        let ssl: bool = c
            .query_one(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'spb-prefer'",
                &[],
            )
            .await
            .expect("the sink's session")
            .get(0);
        assert!(ssl, "sslmode=prefer encrypts when the server offers TLS");
    });
}

// A sender that spreads its timestamps over years cannot add a table per
// day it names: past the minute's budget of new partitions its facts are
// quarantined (with their values), and the budget comes back a minute on.
#[test]
fn a_sender_naming_a_hundred_days_gets_partitions_for_the_minutes_budget_and_the_rest_quarantined() {
    use spb::uplink::postgres::PARTITIONS_PER_MINUTE;
    let db = TestDb::new("budget");
    let day = 86_400_000u64;
    let now = T0 + 200 * day;
    db.rt.block_on(async {
        let mut s = PgSink::connect(&db.url()).await.expect("connect");
        s.migrate().await.expect("migrate");
        s.set_retention(&spb::uplink::retention::Retention::forever(), Some(now as i64));
        let spread: Vec<(u64, f64)> = (0..100).map(|d| (T0 + d * day, d as f64)).collect();
        let mut b = Batch::default();
        b.add_event(&data(&spread, true), now);
        let w = s.write(&b).await.expect("write");
        assert_eq!(w.facts, PARTITIONS_PER_MINUTE as u64);
        assert_eq!(w.over_budget, 100 - PARTITIONS_PER_MINUTE as u64);
        // The same a minute later: the rest find partitions now.
        s.set_retention(
            &spb::uplink::retention::Retention::forever(),
            Some((now + 61_000) as i64),
        );
        let mut again = Batch::default();
        again.add_event(&data(&spread, true), now + 61_000);
        let w = s.write(&again).await.expect("write");
        assert_eq!((w.facts, w.over_budget), (100 - PARTITIONS_PER_MINUTE as u64, 0));
    });
    assert_eq!(db.query_i64("SELECT count(*) FROM sp_metric_fact"), 100);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM pg_inherits WHERE inhparent = 'sp_series_fact'::regclass"),
        100
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sp_quarantine WHERE reason LIKE 'metric ''Temp'' = % stamped %no partition holds that day%'"),
        100 - PARTITIONS_PER_MINUTE as i64
    );
}

#[test]
fn a_write_under_a_lease_held_elsewhere_commits_none_of_its_rows_and_keeps_them_for_the_holder() {
    use spb::uplink::scale::{ScaleConfig, Shared};
    let db = TestDb::new("fence");
    let mut b = Batch::default();
    b.add_event(&data(&[(T0, 1.0), (T0 + 1, 2.0)], false), T0);
    let mut h = Batch::default();
    h.add_event(&data(&[(T0, 3.0)], false), T0);
    for f in &mut h.facts {
        f.group = "H".into();
    }
    b.append(&mut h);
    db.rt.block_on(async {
        let mut s = PgSink::connect(&db.url()).await.expect("connect");
        s.migrate().await.expect("migrate");
        // G is this instance's; H was taken by another.
        s.set_fence(Some("me".into()));
        let c = {
            let (c, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            c
        };
        c.batch_execute(
            "INSERT INTO sp_uplink_lease (name, holder, expires_at) VALUES
                 ('G', 'me', now() + interval '1 minute'), ('H', 'other', now() + interval '1 minute')",
        )
        .await
        .expect("leases");
        let e = s.write(&b).await.expect_err("H is not this instance's");
        assert_eq!(PgSink::fenced(&e), Some(&["H".to_string()][..]), "{e}");
        // Through the writer: G's rows commit, H's wait in the standby.
        let cfg = ScaleConfig {
            instance: "me".into(),
            groups: vec!["G".into(), "H".into()],
            lease_ttl: std::time::Duration::from_secs(10),
            clock_margin: std::time::Duration::from_secs(1),
            standby_max_bytes: 1 << 20,
        };
        let shared = std::sync::Arc::new(Shared::new(&cfg));
        let stats = spb::uplink::stats::Stats::default();
        let mut conn = Conn::<PgSink>::new(db.url()).fenced(Some(spb::uplink::writer::Fence {
            instance: "me".into(),
            shared: shared.clone(),
        }));
        commit(&mut conn, b, &stats).await;
        assert_eq!(stats.rows_handed_over.load(Relaxed), 1);
        let kept = shared.standby().take("H");
        assert_eq!(kept.iter().map(|(_, b)| b.facts.len()).sum::<usize>(), 1);
        // An expired lease of this instance fences as well.
        c.batch_execute("UPDATE sp_uplink_lease SET expires_at = now() - interval '1 second' WHERE name = 'G'")
            .await
            .expect("expire");
        let mut again = Batch::default();
        again.add_event(&data(&[(T0 + 2, 4.0)], false), T0);
        let e = s.write(&again).await.expect_err("G expired");
        assert_eq!(PgSink::fenced(&e), Some(&["G".to_string()][..]), "{e}");
        // A taker's lock waits for a writer's share of the same lease.
        let (mut w, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let writing = w.transaction().await.expect("begin");
        writing
            .execute(spb::uplink::postgres::LEASE_LOCK_SHARED, &[&vec!["G".to_string()]])
            .await
            .expect("share");
        let try_take = "SELECT pg_try_advisory_lock(1936744813, hashtext('G'))";
        let taken: bool = c.query_one(try_take, &[]).await.expect("try").get(0);
        assert!(!taken, "the lease's lock is shared by a write in flight");
        writing.commit().await.expect("commit");
        let taken: bool = c.query_one(try_take, &[]).await.expect("try").get(0);
        assert!(taken, "free once the write committed");
    });
    assert_eq!(
        db.query_text(
            "SELECT string_agg(group_id || ':' || v_float, ',' ORDER BY ts) FROM sp_metric_fact WHERE quality = 192"
        ),
        "G:1,G:2"
    );
}
