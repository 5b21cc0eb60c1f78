//! spb-uplink end to end: a real mosquitto, the gateway with its
//! sim PLC, the uplink as Primary Host, and a fresh PostgreSQL database.
#![cfg(feature = "uplink")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::pg::TestDb;
use common::uplink::{Probe, Uplink};
use common::{Broker, Gateway};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(30);

/// A counter gateway (`common::counter_config`) whose Primary Host is the uplink.
fn gateway_config(group: &str, port: u16, http: u16) -> String {
    common::with_http(
        common::counter_config(group, port, "primary_host_id = \"scada\"", ""),
        http,
    )
}

fn gateway_metric(http: u16, name: &str) -> f64 {
    common::prom_value(http, name).unwrap_or(-1.0)
}

#[test]
fn every_sample_lands_exactly_once_as_a_fact_even_when_the_gateway_replays_history() {
    let db = TestDb::new("e2e_once");
    let mut broker = Broker::start(None);
    let uplink = Uplink::start(broker.port, &db.url(), "");
    let ghttp = common::free_port();
    let mut gw = Gateway::start(&gateway_config("U1", broker.port, ghttp), &[]);
    uplink.wait_until("the node is online", |u| u.metric("spb_uplink_online_nodes") >= 1.0);
    std::thread::sleep(Duration::from_secs(2));
    // A broker outage: the gateway stores and replays; the uplink reconnects.
    broker.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1500));
    broker.kill();
    std::thread::sleep(Duration::from_millis(1000));
    broker.restart();
    wait_gateway_drained(ghttp, &gw, true);
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(T).success(), "{}", gw.log());
    uplink.wait_until("the backlog is written", |u| {
        u.metric("spb_uplink_backlog_rows") == 0.0 && u.metric("spb_uplink_online_nodes") == 0.0
    });
    uplink.wait_until("the rollups are folded", |_| {
        db.query_i64("SELECT count(*) FROM sp_rollup_pending") == 0
    });
    std::thread::sleep(Duration::from_millis(300));
    let q = |sql: &str| db.query_i64(sql);
    // Samples only: the STALE fact the node's death wrote has no value.
    let count = "FROM sp_metric_fact WHERE group_id = 'U1' AND metric = 'Count' AND quality <> 500";
    let n = q(&format!("SELECT count(*) {count}"));
    let (lo, hi) = (
        q(&format!("SELECT min(v_int) {count}")),
        q(&format!("SELECT max(v_int) {count}")),
    );
    assert!(n > 300, "{n} facts");
    assert_eq!(
        q(&format!("SELECT count(DISTINCT v_int) {count}")),
        n,
        "each counter value once: no sample written twice"
    );
    assert_eq!(
        hi - lo + 1,
        n,
        "no value missing between {lo} and {hi}: {}",
        counter_diagnosis(&db, &uplink, "U1", lo, hi, "")
    );
    assert!(
        q(&format!("SELECT count(*) {count} AND is_historical")) > 50,
        "the outage was replayed"
    );
    assert!(
        uplink.metric("spb_uplink_facts_duplicate_total") > 0.0,
        "replays brought duplicates, written once"
    );
    assert_eq!(
        q("SELECT count(*) FROM sp_node_state WHERE group_id = 'U1' AND NOT online AND stale"),
        1
    );
    // Each death of the node (the host's own loss of the broker, then the
    // NDEATH) made its metrics STALE in the tables too: one STALE fact per
    // metric and death, and the last value says so.
    let deaths = q("SELECT count(*) FROM sp_state_history WHERE group_id = 'U1' AND device_id = '' AND NOT online");
    assert!(deaths >= 1);
    assert_eq!(
        q("SELECT count(*) FROM sp_stale WHERE group_id = 'U1' AND metric = 'Count'"),
        deaths
    );
    assert_eq!(
        q("SELECT count(*) FROM sp_metric_last WHERE group_id = 'U1' AND metric = 'Count' AND is_stale"),
        1
    );
    assert_eq!(
        q("SELECT count(*) FROM sp_metric_last WHERE group_id = 'U1' AND NOT is_stale"),
        0,
        "every metric of the dead node is STALE"
    );
    assert_eq!(
        q("SELECT sum(count)::bigint FROM sp_metric_rollup WHERE bucket_size = 'day' AND group_id = 'U1' AND metric = 'Count'"),
        n,
        "rollups count each fact once"
    );
    assert!(q("SELECT count(*) FROM sp_event_raw WHERE kind = 'DDATA'") > 10);
}

#[test]
fn the_uplink_fails_over_to_its_second_server_and_ingests_over_mutual_tls() {
    let db = TestDb::new("e2e_tls");
    let pki = common::Pki::generate();
    let broker = Broker::start(Some(&pki));
    let dead = common::free_port(); // nothing listens: the first server is down
    let servers = format!(
        "[[mqtt.servers]]\nhost = \"127.0.0.1\"\nport = {dead}\n\
         [[mqtt.servers]]\nhost = \"127.0.0.1\"\nport = {}\n\
         [mqtt.servers.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nserver_name = \"localhost\"\n",
        broker.tls_port.expect("mTLS listener"),
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let uplink = Uplink::start_on(&servers, &db.url(), "");
    let ghttp = common::free_port();
    let gw = Gateway::start(&gateway_config("U8", broker.port, ghttp), &[]);
    uplink.wait_until("connected over mTLS", |u| u.metric("spb_uplink_connected") == 1.0);
    uplink.wait_until("facts written", |u| u.metric("spb_uplink_facts_written_total") >= 50.0);
    assert!(
        uplink.log().contains("connection failed"),
        "the dead first server was tried:\n{}",
        uplink.log()
    );
    uplink.wait_until("a message rate", |u| u.metric("spb_uplink_messages_per_second") > 0.0);
    // README's alert rules name only metrics the uplink exposes, each with
    // the service levels' bounds as buckets.
    let metrics = common::http_get(uplink.http, "/metrics");
    let readme = include_str!("../README.md");
    let rules = &readme[readme.find("### Alerts on the service levels").expect("the section")..];
    let rules = &rules[rules.find("```yaml").expect("the rules")..];
    let rules = &rules[..rules[3..].find("```").expect("closed") + 3];
    let mut named = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("spb_uplink_") {
            assert!(
                metrics.contains(&format!("{word}{{le=\"3\"}}")),
                "{word}: a bucket at 3 s"
            );
            assert!(
                metrics.contains(&format!("{word}{{le=\"60\"}}")),
                "{word}: a bucket at 60 s"
            );
            named += 1;
        }
    }
    assert_eq!(named, 3, "{rules}");
    // So does every query of the uplink's Grafana dashboard.
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../grafana/uplink.json")).expect("grafana/uplink.json is JSON");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a PromQL expr").to_string())
        .collect();
    exprs.push(
        dashboard["templating"]["list"][1]["query"]
            .as_str()
            .expect("instance query")
            .into(),
    );
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("spb_uplink_") {
                assert!(
                    metrics.lines().any(|l| l.starts_with(word)),
                    "{word} (in {e}) is not on /metrics"
                );
            }
        }
    }
    for name in [
        "spb_uplink_ingest_lag_seconds_count",
        "spb_uplink_commit_lag_seconds_count",
        "spb_uplink_batch_seconds_count",
        "spb_uplink_batches_total",
        "spb_uplink_online_nodes",
    ] {
        assert!(uplink.metric(name) >= 1.0, "{name}");
    }
    for name in [
        "spb_uplink_rebirths_requested_total",
        "spb_uplink_sequence_errors_total",
        "spb_uplink_quarantined_total",
        "spb_uplink_database_errors_total",
    ] {
        assert_eq!(uplink.metric(name), 0.0, "{name}");
    }
    drop(gw);
    assert!(db.query_i64("SELECT count(*) FROM sp_metric_fact WHERE group_id = 'U8' AND metric = 'Count'") >= 50);
}

#[test]
fn garbage_on_a_sparkplug_topic_is_quarantined_and_the_pipeline_goes_on() {
    let db = TestDb::new("e2e_quar");
    let broker = Broker::start(None);
    let uplink = Uplink::start(broker.port, &db.url(), "");
    let ghttp = common::free_port();
    let mut gw = Gateway::start(&gateway_config("U2", broker.port, ghttp), &[]);
    uplink.wait_until("the node is online", |u| u.metric("spb_uplink_online_nodes") >= 1.0);
    let st = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-t",
            "spBv1.0/U2/DDATA/gw/line",
            "-m",
            "not protobuf",
        ])
        .status()
        .expect("mosquitto_pub");
    assert!(st.success());
    uplink.wait_until("the garbage is quarantined", |u| {
        u.metric("spb_uplink_quarantined_total") >= 1.0
    });
    let facts = uplink.metric("spb_uplink_facts_written_total");
    uplink.wait_until("facts keep coming", |u| {
        u.metric("spb_uplink_facts_written_total") > facts + 50.0
    });
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(T).success());
    uplink.wait_until("the backlog is written", |u| u.metric("spb_uplink_backlog_rows") == 0.0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(db.query_i64("SELECT count(*) FROM sp_quarantine WHERE topic = 'spBv1.0/U2/DDATA/gw/line'") >= 1);
}

/// What a failed counter check needs to be read: each value missing from
/// `lo..=hi` with its neighbours (timestamp, quality, historical), the STALE
/// marks, duplicates, raw DDATA against facts, seq gaps in the raw log,
/// quarantine reasons, and the WARN/ERROR lines of the uplink and `other_log`.
fn counter_diagnosis(db: &TestDb, uplink: &Uplink, group: &str, lo: i64, hi: i64, other_log: &str) -> String {
    let facts = format!("FROM sp_metric_fact WHERE group_id = '{group}' AND metric = 'Count'");
    let warnings = |log: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "missing: {}; STALE marks at: {}; duplicates {}; raw DDATA {}, Count facts {}; seq gaps: {}; quarantine: {}\n{}\n{}",
        db.query_text(&format!(
            "SELECT string_agg(g::text || ' near ' || coalesce((SELECT string_agg(v_int::text || '@' || (extract(epoch FROM ts) * 1000)::bigint || ':' || quality || ':' || is_historical, ' ') {facts} AND v_int BETWEEN g - 1 AND g + 1), ''), '; ')
             FROM generate_series({lo}, {hi}) g WHERE NOT EXISTS (SELECT 1 {facts} AND quality <> 500 AND v_int = g)"
        )),
        db.query_text(&format!(
            "SELECT string_agg((extract(epoch FROM ts) * 1000)::bigint::text, ' ') FROM sp_stale WHERE group_id = '{group}' AND metric = 'Count'"
        )),
        uplink.metric("spb_uplink_facts_duplicate_total"),
        db.query_i64(&format!("SELECT count(*) FROM sp_event_raw WHERE topic LIKE 'spBv1.0/{group}/DDATA/%'")),
        db.query_i64(&format!("SELECT count(*) {facts} AND quality <> 500")),
        db.query_text(&format!(
            "SELECT string_agg(a::text || '->' || b::text, ' ') FROM (SELECT seq AS a, lead(seq) OVER (ORDER BY id) AS b
             FROM sp_event_raw WHERE topic LIKE 'spBv1.0/{group}/%' AND seq IS NOT NULL) x WHERE b <> (a + 1) % 256"
        )),
        db.query_text("SELECT string_agg(topic || ': ' || reason, '; ') FROM sp_quarantine"),
        warnings(&uplink.log()),
        warnings(other_log),
    )
}

/// Counter facts of `group`: (rows, distinct values, min, max, historical).
fn counter_facts(q: impl Fn(&str) -> i64, group: &str) -> (i64, i64, i64, i64, i64) {
    let from = format!("FROM sp_metric_fact WHERE group_id = '{group}' AND metric = 'Count' AND quality <> 500");
    (
        q(&format!("SELECT count(*) {from}")),
        q(&format!("SELECT count(DISTINCT v_int) {from}")),
        q(&format!("SELECT min(v_int) {from}")),
        q(&format!("SELECT max(v_int) {from}")),
        q(&format!("SELECT count(*) {from} AND is_historical")),
    )
}

/// Waits until the gateway's store is empty and the broker confirmed what it
/// sent (after a replay, when `replayed`), read from one `/metrics` page so the
/// three values belong to the same moment.
fn wait_gateway_drained(ghttp: u16, gw: &Gateway, replayed: bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = common::http_get(ghttp, "/metrics");
        let value = |name: &str| {
            let prefix = format!("{name} ");
            page.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(-1.0)
        };
        let (r, q, u) = (
            value("spb_replayed_samples_total"),
            value("spb_queue_depth"),
            value("spb_unconfirmed_samples"),
        );
        if (r > 0.0 || !replayed) && q == 0.0 && u == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never drained (replayed {r}, queue {q}, unconfirmed {u}):\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(37));
    }
}

/// Under systemd (a notify socket and a 400 ms watchdog), the uplink says
/// READY and keeps petting the watchdog through the database outage: a
/// restart would only lose the backlog held in memory.
#[test]
fn stopping_postgresql_mid_stream_loses_nothing_once_it_is_back() {
    use std::os::unix::net::UnixDatagram;
    let pg = common::pg::PrivatePg::start();
    let broker = Broker::start(None);
    let sock_dir = tempfile::tempdir().expect("tmp");
    let sock_path = sock_dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let uplink = Uplink::start_env(
        &format!("[[mqtt.servers]]\nhost = \"127.0.0.1\"\nport = {}\n", broker.port),
        &pg.url(),
        "",
        &[],
        &[
            ("NOTIFY_SOCKET", sock_path.display().to_string()),
            ("WATCHDOG_USEC", "400000".to_string()),
        ],
    );
    let notes = |n: usize| -> Vec<String> {
        let mut buf = [0u8; 4096];
        (0..n)
            .map(|_| {
                let k = sock.recv(&mut buf).expect("a notification in time");
                String::from_utf8_lossy(&buf[..k]).into_owned()
            })
            .collect()
    };
    let first = notes(3);
    assert!(first[0].contains("READY=1"), "READY first: {first:?}");
    let ghttp = common::free_port();
    let mut gw = Gateway::start(&gateway_config("U3", broker.port, ghttp), &[]);
    uplink.wait_until("the node is online", |u| u.metric("spb_uplink_online_nodes") >= 1.0);
    std::thread::sleep(Duration::from_secs(1));
    pg.stop_hard();
    uplink.wait_until("a write fails", |u| u.metric("spb_uplink_database_errors_total") >= 1.0);
    // Drain what came before, then: the watchdog, every 200 ms, database down.
    sock.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    while sock.recv(&mut buf).is_ok() {}
    sock.set_nonblocking(false).expect("blocking");
    let during = notes(5);
    assert!(during.iter().all(|m| m.contains("WATCHDOG=1")), "{during:?}");
    assert_eq!(uplink.metric("spb_uplink_database_ok"), 0.0, "still down");
    pg.start_again();
    uplink.wait_until("writes succeed again", |u| u.metric("spb_uplink_database_ok") == 1.0);
    std::thread::sleep(Duration::from_secs(1));
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(T).success(), "{}", gw.log());
    uplink.wait_until("the backlog is written", |u| u.metric("spb_uplink_backlog_rows") == 0.0);
    std::thread::sleep(Duration::from_millis(300));
    let (n, distinct, lo, hi, _) = counter_facts(|s| pg.query_i64(s), "U3");
    assert!(n > 300, "{n} facts");
    assert_eq!(
        (distinct, hi - lo + 1),
        (n, n),
        "every sample exactly once across the outage"
    );
    assert!(uplink
        .log()
        .contains("database write failed; retrying (nothing is dropped)"));
    assert_eq!(uplink.metric("spb_uplink_dropped_rows_total"), 0.0);
}

// docs/ARCHITECTURE.md decision 4
#[test]
fn past_the_backlog_threshold_state_goes_offline_and_the_gateway_stores_meanwhile() {
    let pg = common::pg::PrivatePg::start();
    let broker = Broker::start(None);
    let uplink = Uplink::start(broker.port, &pg.url(), "offline_after_rows = 200");
    let ghttp = common::free_port();
    let mut gw = Gateway::start(&gateway_config("U4", broker.port, ghttp), &[]);
    uplink.wait_until("the node is online", |u| u.metric("spb_uplink_online_nodes") >= 1.0);
    std::thread::sleep(Duration::from_secs(1));
    pg.stop_hard();
    uplink.wait_until("STATE offline", |u| u.metric("spb_uplink_state_offline") == 1.0);
    // The gateway sees the host offline and stores on its own flash.
    let deadline = Instant::now() + T;
    while gateway_metric(ghttp, "spb_primary_host_online") != 0.0 || gateway_metric(ghttp, "spb_queue_depth") < 50.0 {
        assert!(
            Instant::now() < deadline,
            "the gateway does not store:\n{}\nuplink:\n{}",
            gw.log(),
            uplink.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // What was already on its way (in the broker, in the uplink's queue)
    // still arrives: sample the backlog once the uplink has received nothing
    // for half a second. If the edges kept sending, this never settles.
    let mut last = uplink.metric("spb_uplink_messages_total");
    let mut quiet_since = Instant::now();
    uplink.wait_until("the uplink stops receiving", |u| {
        let now = u.metric("spb_uplink_messages_total");
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
        quiet_since.elapsed() >= Duration::from_millis(500)
    });
    let backlog = uplink.metric("spb_uplink_backlog_rows");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        uplink.metric("spb_uplink_backlog_rows") <= backlog + 10.0,
        "the uplink's backlog stops growing once the edges store"
    );
    pg.start_again();
    uplink.wait_until("caught up and STATE online", |u| {
        u.metric("spb_uplink_state_offline") == 0.0
    });
    wait_gateway_drained(ghttp, &gw, false);
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(T).success(), "{}", gw.log());
    uplink.wait_until("the backlog is written", |u| u.metric("spb_uplink_backlog_rows") == 0.0);
    std::thread::sleep(Duration::from_millis(300));
    let (n, distinct, lo, hi, historical) = counter_facts(|s| pg.query_i64(s), "U4");
    assert!(n > 300, "{n} facts");
    assert_eq!((distinct, hi - lo + 1), (n, n), "every sample exactly once");
    assert!(
        historical > 50,
        "what the gateway stored came back historical: {historical}"
    );
}

fn fake_edge(group: &str) -> spb::sparkplug::edge::EdgeSession {
    spb::sparkplug::edge::EdgeSession::new(
        spb::sparkplug::edge::EdgeConfig {
            group_id: group.into(),
            node_id: "fake".into(),
            primary_host_id: None,
            server_count: 1,
            rebirth_debounce_ms: 0,
            aliases: true,
            max_data_metrics: 100,
            limits: Default::default(),
        },
        vec![spb::sparkplug::Metric::new(
            "Temp",
            spb::sparkplug::Value::Double(1.0),
            1,
        )],
        vec![],
        Some(7),
    )
    .expect("valid")
}

fn will_of(actions: Vec<spb::sparkplug::edge::EdgeAction>) -> spb::sparkplug::Publish {
    actions
        .into_iter()
        .find_map(|a| match a {
            spb::sparkplug::edge::EdgeAction::SetWill(w) => Some(w),
            _ => None,
        })
        .expect("a Will")
}

fn publishes(actions: Vec<spb::sparkplug::edge::EdgeAction>) -> Vec<spb::sparkplug::Publish> {
    actions.iter().filter_map(|a| a.publish().cloned()).collect()
}

// [tck-id-operational-behavior-host-reordering-rebirth]
#[test]
fn a_seq_gap_triggers_exactly_one_rebirth_after_the_reorder_timeout() {
    let db = TestDb::new("e2e_gap");
    let broker = Broker::start(None);
    let uplink = Uplink::start(broker.port, &db.url(), "");
    let probe = Probe::start(broker.port, "spBv1.0/U6/NCMD/#");
    let mut edge = fake_edge("U6");
    let now = 1_795_000_000_000;
    edge.begin_connect(now);
    for p in publishes(edge.connected(now)) {
        probe.publish(&p); // NBIRTH, seq 0
    }
    uplink.wait_until("the fake node is online", |u| {
        u.metric("spb_uplink_online_nodes") >= 1.0
    });
    let data = |e: &mut spb::sparkplug::edge::EdgeSession, v: f64, t: u64| {
        publishes(
            e.update(
                t,
                None,
                vec![spb::sparkplug::Metric::new("Temp", spb::sparkplug::Value::Double(v), t)],
            )
            .expect("declared"),
        )
    };
    let _lost = data(&mut edge, 2.0, now + 1); // seq 1 never arrives
    for p in data(&mut edge, 3.0, now + 2)
        .iter()
        .chain(data(&mut edge, 4.0, now + 3).iter())
    {
        probe.publish(p);
    }
    // reorder_timeout is 1 s: nothing before it, exactly one rebirth after.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        uplink.metric("spb_uplink_rebirths_requested_total"),
        0.0,
        "not before the timeout"
    );
    uplink.wait_until("a rebirth", |u| u.metric("spb_uplink_rebirths_requested_total") >= 1.0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(uplink.metric("spb_uplink_rebirths_requested_total"), 1.0, "exactly one");
    assert_eq!(
        probe.count("spBv1.0/U6/NCMD/fake"),
        1,
        "one NCMD Rebirth reached the broker"
    );
    uplink.wait_until("the held messages are written", |u| {
        u.metric("spb_uplink_backlog_rows") == 0.0
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sp_metric_fact WHERE group_id = 'U6' AND v_float IN (3, 4)"),
        2,
        "the messages after the gap are kept, in order"
    );
    // The rebirth request is audited once as this host's own command (its
    // echo from the broker is not audited again).
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM sp_command_audit WHERE group_id = 'U6' AND node_id = 'fake' AND device_id = ''
             AND metric = 'Node Control/Rebirth' AND value = 'true' AND accepted AND requested_by = 'scada'"
        ),
        1
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM sp_command_audit"), 1);
}

// [tck-id-operational-behavior-data-commands-ncmd-metric-name] [tck-id-operational-behavior-data-commands-ncmd-metric-value]
#[test]
fn every_command_on_the_broker_is_audited_with_whether_the_birth_allows_it() {
    let db = TestDb::new("e2e_cmd");
    let broker = Broker::start(None);
    let uplink = Uplink::start(broker.port, &db.url(), "");
    let probe = Probe::start(broker.port, "spBv1.0/U7/NCMD/#");
    let mut edge = fake_edge("U7");
    let now = 1_795_000_000_000;
    edge.begin_connect(now);
    for p in publishes(edge.connected(now)) {
        probe.publish(&p);
    }
    uplink.wait_until("the fake node is online", |u| {
        u.metric("spb_uplink_online_nodes") >= 1.0
    });
    // Another host (or an engineer's MQTT tool) writes: one good value, one of
    // the wrong type, one to a metric the node never declared, and garbage.
    let cmd = |metrics: Vec<spb::sparkplug::Metric>| spb::sparkplug::Publish {
        topic: "spBv1.0/U7/NCMD/fake".into(),
        payload: spb::sparkplug::Payload {
            timestamp: Some(now + 5),
            metrics,
            ..Default::default()
        }
        .encode()
        .expect("encodes"),
        qos: spb::sparkplug::QoS::AtMostOnce,
        retain: false,
        kind: None,
    };
    use spb::sparkplug::{Metric, Value};
    probe.publish(&cmd(vec![Metric::new("Temp", Value::Double(21.5), now + 5)]));
    probe.publish(&cmd(vec![
        Metric::new("Temp", Value::Int32(3), now + 5),
        Metric::new("Valve", Value::Boolean(true), now + 5),
    ]));
    probe.publish(&spb::sparkplug::Publish {
        topic: "spBv1.0/U7/DCMD/fake/Pump".into(),
        payload: b"\xff\x01garbage".to_vec(),
        qos: spb::sparkplug::QoS::AtMostOnce,
        retain: false,
        kind: None,
    });
    uplink.wait_until("four audited", |u| {
        u.metric("spb_uplink_commands_audited_total") >= 4.0 && u.metric("spb_uplink_backlog_rows") == 0.0
    });
    std::thread::sleep(Duration::from_millis(300));
    let q = |w: &str| db.query_i64(&format!("SELECT count(*) FROM sp_command_audit WHERE {w}"));
    assert_eq!(q("true"), 4);
    assert_eq!(
        q(
            "metric = 'Temp' AND value = '21.5' AND accepted AND requested_by = 'another MQTT client'
           AND at = to_timestamp(1795000000.005)"
        ),
        1
    );
    assert_eq!(
        q("metric = 'Temp' AND value = '3' AND NOT accepted AND reason LIKE '%is Double; a Int32 value cannot%'"),
        1
    );
    assert_eq!(
        q("metric = 'Valve' AND NOT accepted AND reason LIKE '%not declared in the birth%'"),
        1
    );
    assert_eq!(
        q("device_id = 'Pump' AND metric = '' AND NOT accepted AND reason LIKE 'not a Sparkplug payload%'"),
        1
    );
    assert_eq!(
        uplink.metric("spb_uplink_rebirths_requested_total"),
        0.0,
        "commands are audited, never answered with a rebirth"
    );
}

// [tck-id-operational-behavior-host-application-ndeath-bdseq]
#[test]
fn an_ndeath_marks_the_node_stale_only_with_the_matching_bdseq() {
    let db = TestDb::new("e2e_death");
    let broker = Broker::start(None);
    let uplink = Uplink::start(broker.port, &db.url(), "");
    let probe = Probe::start(broker.port, "spBv1.0/U7/NCMD/#");
    let mut edge = fake_edge("U7"); // bdSeq 7
    let now = 1_795_000_000_000;
    let will = will_of(edge.begin_connect(now)); // NDEATH bdSeq 7
    for p in publishes(edge.connected(now)) {
        probe.publish(&p);
    }
    uplink.wait_until("the fake node is online", |u| {
        u.metric("spb_uplink_online_nodes") >= 1.0
    });
    // A late Will of an older session (bdSeq 6) must not kill this one.
    let mut older = spb::sparkplug::edge::EdgeSession::new(
        edge.config().clone(),
        vec![spb::sparkplug::Metric::new(
            "Temp",
            spb::sparkplug::Value::Double(1.0),
            1,
        )],
        vec![],
        Some(6),
    )
    .expect("valid");
    let old_will = will_of(older.begin_connect(now));
    probe.publish(&old_will);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        uplink.metric("spb_uplink_online_nodes"),
        1.0,
        "an NDEATH with another bdSeq is ignored"
    );
    probe.publish(&will);
    uplink.wait_until("the node is offline", |u| u.metric("spb_uplink_online_nodes") == 0.0);
    uplink.wait_until("the backlog is written", |u| u.metric("spb_uplink_backlog_rows") == 0.0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sp_node_state WHERE group_id = 'U7' AND NOT online AND stale AND bdseq = 7"),
        1
    );
}

/// A metric as `tests/interop/pysparkplug_peer.py` takes it.
fn py_metric(
    name: Option<&str>,
    alias: Option<u64>,
    datatype: u32,
    value: serde_json::Value,
    ts: u64,
) -> serde_json::Value {
    serde_json::json!({"name": name, "alias": alias, "datatype": datatype, "value": value, "timestamp": ts})
}

fn double_hex(v: f64) -> serde_json::Value {
    serde_json::json!(common::hex(&v.to_le_bytes()))
}

// Interop: what an independent Sparkplug implementation publishes, the uplink
// stores. [tck-id-payloads-alias-data-cmd-requirement] [tck-id-payloads-name-birth-data-requirement]
#[test]
fn births_and_data_encoded_by_pysparkplug_land_as_facts_named_through_their_aliases() {
    let db = TestDb::new("e2e_py");
    let broker = Broker::start(None);
    let uplink = Uplink::start(broker.port, &db.url(), "");
    let probe = Probe::start(broker.port, "spBv1.0/U9/NCMD/#");
    let t = 1_795_000_000_000u64;
    let birth = common::pysparkplug(&serde_json::json!({
        "op": "encode_birth", "timestamp": t, "seq": 0,
        "metrics": [
            py_metric(Some("bdSeq"), None, 4, serde_json::json!(0), t),
            py_metric(Some("Temp"), Some(1), 10, double_hex(21.5), t),
            py_metric(Some("Count"), Some(2), 4, serde_json::json!(7), t),
            py_metric(Some("Running"), Some(3), 11, serde_json::json!(true), t),
        ],
    }));
    let data = common::pysparkplug(&serde_json::json!({
        "op": "encode_data", "timestamp": t + 1000, "seq": 1,
        "metrics": [
            py_metric(None, Some(1), 10, double_hex(22.25), t + 1000),
            py_metric(None, Some(2), 4, serde_json::json!(8), t + 1000),
        ],
    }));
    for (kind, answer) in [("NBIRTH", &birth), ("NDATA", &data)] {
        probe.publish(&spb::sparkplug::Publish {
            topic: format!("spBv1.0/U9/{kind}/py"),
            payload: common::unhex(answer["payload"].as_str().expect("hex payload")),
            qos: spb::sparkplug::QoS::AtMostOnce,
            retain: false,
            kind: None,
        });
    }
    uplink.wait_until("the facts are written", |u| {
        u.metric("spb_uplink_facts_written_total") >= 6.0 && u.metric("spb_uplink_backlog_rows") == 0.0
    });
    let q = |w: &str| {
        db.query_i64(&format!(
            "SELECT count(*) FROM sp_metric_fact WHERE group_id = 'U9' AND node_id = 'py' AND {w}"
        ))
    };
    assert_eq!(
        q("metric = 'Temp' AND v_float = 21.5 AND ts = to_timestamp(1795000000)"),
        1
    );
    assert_eq!(
        q("metric = 'Temp' AND v_float = 22.25 AND ts = to_timestamp(1795000001)"),
        1,
        "named through alias 1"
    );
    assert_eq!(
        q("metric = 'Count' AND v_int = 8 AND datatype = 4"),
        1,
        "named through alias 2"
    );
    assert_eq!(q("metric = 'Running' AND v_bool"), 1);
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM sp_metric_catalog WHERE group_id = 'U9' AND metric IN ('Temp', 'Count', 'Running')"
        ),
        3
    );
    assert_eq!(uplink.metric("spb_uplink_quarantined_total"), 0.0);
    assert_eq!(uplink.metric("spb_uplink_rebirths_requested_total"), 0.0);
}

/// `--dry-run` needs no database: it connects to the broker, decodes the
/// gateway's traffic and logs what it would write.
#[test]
fn a_dry_run_decodes_and_logs_what_it_would_write_without_a_database() {
    let broker = Broker::start(None);
    let dead = common::free_port(); // no database listens here
    let uplink = Uplink::start_env(
        &format!("[[mqtt.servers]]\nhost = \"127.0.0.1\"\nport = {}\n", broker.port),
        &format!("host=127.0.0.1 port={dead} user=postgres dbname=postgres"),
        "",
        &["--dry-run"],
        &[],
    );
    let ghttp = common::free_port();
    let _gw = Gateway::start(&gateway_config("U9", broker.port, ghttp), &[]);
    uplink.wait_until("a would-write line with the gateway's facts", |u| {
        let log = u.log();
        log.contains("dry run, would write") && log.contains("U9")
    });
    assert_eq!(uplink.metric("spb_uplink_database_errors_total"), 0.0);
    assert_eq!(uplink.metric("spb_uplink_facts_written_total"), 0.0);
    assert!(uplink.metric("spb_uplink_online_nodes") >= 1.0);
}

/// The demo's own configuration (`config/demo.toml`) with the oven's
/// outages made short: every 5 s it is unreachable for 2 s.
fn demo_with_short_oven_outages() -> String {
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).expect("demo config");
    let cfg = demo
        .replace("unreachable_every = \"25s\"", "unreachable_every = \"5s\"")
        .replace("unreachable_for = \"6s\"", "unreachable_for = \"2s\"");
    assert_ne!(cfg, demo, "the demo's oven outage settings moved");
    cfg
}

// [tck-id-topics-ddeath-seq-number] [tck-id-operational-behavior-host-application-metric-stale]
#[test]
fn the_demo_ovens_dropout_is_a_device_death_in_the_tables_and_its_metrics_read_stale_until_it_is_back() {
    let db = TestDb::new("e2e_oven");
    let broker = Broker::start(None);
    let uplink = Uplink::start(broker.port, &db.url(), "");
    let port = broker.port.to_string();
    let mut gw = Gateway::start(&demo_with_short_oven_outages(), &["--broker-port", &port]);
    uplink.wait_until("facts are written", |u| {
        u.metric("spb_uplink_facts_written_total") > 0.0
    });
    let q = |sql: &str| db.query_i64(sql);
    let ms = |ts: &str| format!("(extract(epoch FROM {ts}) * 1000)::bigint");
    // The oven died and was born again after.
    let first_death =
        "(SELECT min(at) FROM sp_state_history WHERE device_id = 'oven' AND NOT online AND cause = 'DDEATH')";
    uplink.wait_until("the oven died and came back", |_| {
        q(&format!(
            "SELECT count(*) FROM sp_state_history WHERE device_id = 'oven' AND online AND at > {first_death}"
        )) >= 1
    });
    let death = q(&format!("SELECT {}", ms(first_death)));
    let back = q(&format!(
        "SELECT {} FROM sp_state_history WHERE device_id = 'oven' AND online AND at > {first_death}",
        ms("min(at)")
    ));
    // Each metric its birth declared went STALE at the death's own timestamp.
    let declared = q("SELECT count(*) FROM sp_metric_catalog WHERE device_id = 'oven'");
    assert!(declared >= 2, "{declared} oven metrics");
    assert_eq!(
        q(&format!(
            "SELECT count(*) FROM sp_metric_fact WHERE device_id = 'oven' AND quality = 500
             AND v_int IS NULL AND v_float IS NULL AND v_bool IS NULL AND {} = {death}",
            ms("ts")
        )),
        declared
    );
    // Between the death and the rebirth, every oven metric's last value is STALE...
    let last_before = |t: i64| {
        format!(
            "SELECT count(*) FROM sp_metric_catalog c CROSS JOIN LATERAL (
                 SELECT quality FROM sp_metric_fact f
                 WHERE (f.group_id, f.node_id, f.device_id, f.metric) = (c.group_id, c.node_id, c.device_id, c.metric)
                   AND {} < {t} ORDER BY ts DESC LIMIT 1) f
             WHERE c.device_id = 'oven' AND f.quality = 500",
            ms("f.ts")
        )
    };
    let next_sample = q(&format!(
        "SELECT {} FROM sp_metric_fact WHERE device_id = 'oven' AND quality <> 500 AND {} > {death}",
        ms("min(ts)"),
        ms("ts")
    ));
    assert!(
        next_sample <= back,
        "the rebirth carries the first values after the outage"
    );
    assert_eq!(
        q(&last_before(next_sample)),
        declared,
        "STALE while the oven was away (death {death}, back {back}): {}",
        db.query_text(&format!(
            "SELECT string_agg(metric || ' ' || quality || ' ' || {} || ' ' || coalesce(v_text, v_float::text, v_bool::text, '-'), E'\n' ORDER BY ts)
             FROM sp_metric_fact WHERE device_id = 'oven'",
            ms("ts")
        ))
    );
    // ...and once it is back, none is.
    uplink.wait_until("the reborn oven's values are the last ones", |_| {
        q("SELECT count(*) FROM sp_metric_last WHERE device_id = 'oven' AND NOT is_stale") == declared
            && q("SELECT count(*) FROM sp_device_state WHERE device_id = 'oven' AND online") == 1
    });
    // The press never went away: no STALE fact of it.
    assert_eq!(
        q("SELECT count(*) FROM sp_metric_fact WHERE device_id = 'press' AND quality = 500"),
        0
    );
    assert!(q("SELECT count(*) FROM sp_metric_fact WHERE device_id = 'press'") > 0);
    // The gateway stops: its NDEATH takes every device offline with it and
    // every metric of the node reads STALE.
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(T).success(), "{}", gw.log());
    uplink.wait_until("the node is offline", |_| {
        q("SELECT count(*) FROM sp_node_state WHERE node_id = 'gw-demo' AND NOT online") == 1
            && q("SELECT count(*) FROM sp_device_state WHERE online") == 0
    });
    assert_eq!(
        q("SELECT count(*) FROM sp_metric_last WHERE node_id = 'gw-demo' AND NOT is_stale"),
        0
    );
    assert!(q("SELECT count(*) FROM sp_metric_last WHERE node_id = 'gw-demo'") > declared);
    assert_eq!(
        q("SELECT count(DISTINCT device_id) FROM sp_state_history WHERE NOT online AND cause IN ('node NDEATH', 'DDEATH')"),
        3,
        "press, oven and filler each have a death in the history"
    );
}

/// Writes `days` days of old data (`per_day` facts and one raw message a
/// day) as they were written then, `ago` days before now; returns the
/// first day's start (ms).
fn seed_old_days(db: &TestDb, group: &str, ago: u64, days: u64, per_day: u64) -> u64 {
    use spb::uplink::sink::Sink;
    const DAY: u64 = 86_400_000;
    let now = spb::clock::now_ms();
    let first = (now - ago * DAY) - (now - ago * DAY) % DAY;
    db.rt.block_on(async {
        let mut s = spb::uplink::postgres::PgSink::connect(&db.url())
            .await
            .expect("connect");
        s.migrate().await.expect("migrate");
        for d in 0..days {
            let day = first + d * DAY;
            s.set_retention(&spb::uplink::retention::Retention::forever(), Some(day as i64));
            let mut b = spb::uplink::rows::Batch::default();
            let metrics = (0..per_day)
                .map(|i| spb::sparkplug::Metric::new("Old", spb::sparkplug::Value::Double(i as f64), day + i * 1000))
                .collect();
            b.add_event(
                &spb::sparkplug::host::HostEvent::data(group, "old", Some("D"), 1, Some(day), metrics),
                day,
            );
            b.add_raw(&format!("spBv1.0/{group}/DDATA/old/D"), b"\x08\x01", day);
            assert_eq!(s.write(&b).await.expect("seed").facts, per_day);
        }
    });
    first
}

#[test]
fn expired_partitions_are_dropped_while_the_uplink_ingests_as_the_ingest_role_and_no_sample_is_lost() {
    let db = TestDb::new("e2e_retain");
    // 40 days ago, 3 days of data: expired under a 30-day retention.
    seed_old_days(&db, "R0", 40, 3, 20_000);
    let broker = Broker::start(None);
    // Least privilege: the uplink ingests as a login in sparkplug_ingest;
    // the schema's owner migrates and drops what expired.
    let login = common::pg::Login::new(&db, "sparkplug_ingest");
    let db_url = db.url();
    let extra = format!("owner_url = \"{db_url}\"\n[retention]\nraw = \"30d\"\nfacts = \"30d\"\n");
    let uplink = Uplink::start(broker.port, &login.url(), &extra);
    // Its own run at start drops them and creates today's and the horizon's.
    uplink.wait_until("the uplink's first retention run", |u| {
        u.metric("spb_uplink_retention_runs_total") >= 1.0
    });
    assert_eq!(uplink.metric("spb_uplink_partitions_dropped_total"), 6.0);
    assert!(uplink.metric("spb_uplink_partitions_created_total") >= 3.0);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sp_metric_fact WHERE group_id = 'R0'"),
        0
    );
    // Live data flows; meanwhile more expired days appear (as after a
    // restore) and a retention run drops them under the running writers.
    let ghttp = common::free_port();
    let mut gw = Gateway::start(&gateway_config("R1", broker.port, ghttp), &[]);
    uplink.wait_until("facts flow", |u| u.metric("spb_uplink_facts_written_total") > 100.0);
    seed_old_days(&db, "R2", 45, 5, 40_000);
    let written_before = uplink.metric("spb_uplink_facts_written_total");
    let dropped = db.rt.block_on(async {
        use spb::uplink::sink::Sink;
        let mut s = spb::uplink::postgres::PgSink::connect(&db.url())
            .await
            .expect("connect");
        let keep = spb::uplink::retention::Retention {
            raw: Some(Duration::from_secs(30 * 86_400)),
            facts: Some(Duration::from_secs(30 * 86_400)),
            ..Default::default()
        };
        s.set_retention(&keep, None);
        s.retain(spb::clock::now_ms() as i64).await.expect("retain").dropped
    });
    assert_eq!(dropped.len(), 10, "{dropped:?}");
    uplink.wait_until("ingestion went on", |u| {
        u.metric("spb_uplink_facts_written_total") > written_before + 50.0
    });
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(T).success(), "{}", gw.log());
    uplink.wait_until("the backlog is written", |u| u.metric("spb_uplink_backlog_rows") == 0.0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sp_metric_fact WHERE group_id = 'R2'"),
        0
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sp_event_raw WHERE topic LIKE 'spBv1.0/R%/DDATA/old/D'"),
        0
    );
    let (n, distinct, lo, hi, _) = counter_facts(|s| db.query_i64(s), "R1");
    assert!(n > 50, "{n} facts");
    assert_eq!(
        (distinct, hi - lo + 1),
        (n, n),
        "every live sample exactly once: {}",
        counter_diagnosis(&db, &uplink, "R1", lo, hi, &gw.log())
    );
    assert_eq!(
        uplink.metric("spb_uplink_database_errors_total"),
        0.0,
        "no write failed"
    );
    assert_eq!(uplink.metric("spb_uplink_rows_refused_total"), 0.0);
}
