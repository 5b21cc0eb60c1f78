//! Scale-out: two uplink processes share four groups of one Primary Host
//! identity on a real mosquitto and a fresh PostgreSQL database; one is
//! killed mid-stream (docs/ARCHITECTURE.md, decision 16).
#![cfg(feature = "uplink")]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg::TestDb;
use common::uplink::Uplink;
use common::Broker;
use spb::clock::now_ms;
use spb::sparkplug::edge::{EdgeAction, EdgeConfig, EdgeSession};
use spb::sparkplug::{Metric, Value};

const GROUPS: [&str; 4] = ["g1", "g2", "g3", "g4"];
const NODES_PER_GROUP: usize = 2;

fn scale_section(instance: &str, ttl: &str) -> String {
    format!(
        "\n[scale]\ninstance = \"{instance}\"\ngroups = [\"g1\", \"g2\", \"g3\", \"g4\"]\nlease_ttl = \"{ttl}\"\nclock_margin = \"500ms\"\n"
    )
}

async fn publish_all(client: &rumqttc::AsyncClient, actions: Vec<EdgeAction>) {
    for a in actions {
        if let Some(p) = a.publish() {
            client
                .publish(p.topic.clone(), rumqttc::QoS::AtLeastOnce, p.retain, p.payload.clone())
                .await
                .expect("publish");
        }
    }
}

/// An edge node of `group` publishing `n` = 1, 2, 3… every 20 ms (aliases
/// on, so only a host that saw the birth can name it) until `stop`; the
/// last `n` published is left in `last`.
async fn counter_node(port: u16, group: &'static str, node: String, stop: Arc<AtomicBool>, last: Arc<AtomicI64>) {
    let mut o = rumqttc::MqttOptions::new(format!("edge-{group}-{node}-{port}"), "127.0.0.1", port);
    o.set_request_channel_capacity(1000);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 1000);
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let now = now_ms();
    let mut s = EdgeSession::new(
        EdgeConfig {
            group_id: group.into(),
            node_id: node,
            primary_host_id: None,
            server_count: 1,
            rebirth_debounce_ms: 0,
            aliases: true,
            max_data_metrics: 100,
            limits: Default::default(),
        },
        vec![Metric::new("n", Value::Int64(0), now)],
        vec![],
        None,
    )
    .expect("valid edge");
    s.begin_connect(now);
    publish_all(&client, s.connected(now)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    // The first tick is at once: a sample in the birth's millisecond would
    // be the birth's sample (a fact is keyed by its timestamp).
    tick.tick().await;
    let mut n = 0i64;
    while !stop.load(Relaxed) {
        tick.tick().await;
        n += 1;
        let now = now_ms();
        let a = s
            .update(now, None, vec![Metric::new("n", Value::Int64(n), now)])
            .expect("declared");
        publish_all(&client, a).await;
        last.store(n, Relaxed);
    }
    // Every publish handed over leaves before the connection goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The retained STATE of the host on the broker: (online, timestamp).
fn retained_state(port: u16) -> (bool, u64) {
    let out = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "spBv1.0/STATE/scada",
            "-C",
            "1",
            "-W",
            "5",
        ])
        .output()
        .expect("mosquitto_sub");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("STATE is JSON");
    (
        v["online"].as_bool().expect("online"),
        v["timestamp"].as_u64().expect("timestamp"),
    )
}

/// Per node: the samples published, and the first values missing.
fn gaps(db: &TestDb, last: &BTreeMap<String, Arc<AtomicI64>>) -> String {
    let mut out = String::new();
    for (key, l) in last {
        let (g, n) = key.split_once('/').expect("group/node");
        let missing = db.query_text(&format!(
            "SELECT coalesce(string_agg(i::text, ',' ORDER BY i), '') FROM (SELECT i FROM generate_series(1, {}) i
             WHERE NOT EXISTS (SELECT 1 FROM sp_metric_fact WHERE metric = 'n' AND group_id = '{g}' AND node_id = '{n}' AND v_int = i)
             ORDER BY i LIMIT 20) m",
            l.load(Relaxed)
        ));
        out += &format!("\n{key}: {} published, missing [{missing}]", l.load(Relaxed));
    }
    out
}

fn leases(db: &TestDb) -> String {
    db.query_text(
        "SELECT string_agg(name || '=' || coalesce(holder, '-') || CASE WHEN expires_at > now() THEN '' ELSE '(expired)' END, ' ' ORDER BY name) FROM sp_uplink_lease",
    )
}

/// Eight edge nodes, two per group, counting on their own runtime.
struct Stream {
    rt: tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
    last: BTreeMap<String, Arc<AtomicI64>>,
    nodes: Vec<tokio::task::JoinHandle<()>>,
}

impl Stream {
    fn start(port: u16) -> Stream {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let stop = Arc::new(AtomicBool::new(false));
        let mut last = BTreeMap::new();
        let mut nodes = Vec::new();
        for g in GROUPS {
            for i in 0..NODES_PER_GROUP {
                let node = format!("n{i}");
                let l = Arc::new(AtomicI64::new(0));
                last.insert(format!("{g}/{node}"), l.clone());
                nodes.push(rt.spawn(counter_node(port, g, node, stop.clone(), l)));
            }
        }
        Stream { rt, stop, last, nodes }
    }

    /// Waits until every group has committed facts.
    fn wait_written(&self, db: &TestDb, log: impl Fn() -> String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while db.query_i64("SELECT count(DISTINCT group_id) FROM sp_metric_fact WHERE metric = 'n'") < 4 {
            assert!(Instant::now() < deadline, "not every group was written:\n{}", log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the nodes, then checks that every sample landed exactly once,
    /// in each node's order, facts and raw log alike.
    fn finish_and_check(self, db: &TestDb, survivor: &Uplink) {
        self.stop.store(true, Relaxed);
        let Stream { rt, last, nodes, .. } = self;
        rt.block_on(async {
            for n in nodes {
                n.await.expect("edge node");
            }
        });
        let expected: i64 = last.values().map(|l| l.load(Relaxed)).sum();
        let facts = "FROM sp_metric_fact WHERE metric = 'n' AND quality = 192";
        let deadline = Instant::now() + Duration::from_secs(30);
        while db.query_i64(&format!(
            "SELECT count(DISTINCT (group_id, node_id, v_int)) {facts} AND v_int > 0"
        )) < expected
        {
            assert!(
                Instant::now() < deadline,
                "samples missing {}; leases {}:\n{}",
                gaps(db, &last),
                leases(db),
                survivor.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        for (key, l) in &last {
            let (g, n) = key.split_once('/').expect("group/node");
            let n_last = l.load(Relaxed);
            let of = format!("{facts} AND group_id = '{g}' AND node_id = '{n}' AND v_int > 0");
            assert_eq!(
                db.query_i64(&format!("SELECT count(*) {of}")),
                n_last,
                "{key}: one fact per sample"
            );
            assert_eq!(db.query_i64(&format!("SELECT min(v_int) {of}")), 1, "{key}");
            assert_eq!(db.query_i64(&format!("SELECT max(v_int) {of}")), n_last, "{key}");
            // In timestamp order the values count up: no sample is out of its place.
            let disorder = db.query_i64(&format!(
                "SELECT count(*) FROM (SELECT v_int - lag(v_int) OVER (ORDER BY ts) AS step {of}) s WHERE step <> 1"
            ));
            assert_eq!(disorder, 0, "{key}: facts in the node's order");
            // The raw log: each message's first arrival in the node's order
            // (a takeover may log a message twice, never out of order).
            let seqs = db.query_text(&format!(
                "SELECT string_agg(seq::text, ',' ORDER BY id) FROM (SELECT DISTINCT ON (payload) id, seq FROM sp_event_raw
                 WHERE topic = 'spBv1.0/{g}/NDATA/{n}' ORDER BY payload, id) first"
            ));
            let seqs: Vec<i64> = seqs.split(',').map(|s| s.parse().expect("seq")).collect();
            assert_eq!(seqs.len() as i64, n_last, "{key}: every NDATA logged raw");
            for w in seqs.windows(2) {
                assert_eq!((w[0] + 1) % 256, w[1], "{key}: raw messages in order");
            }
        }
    }
}

/// Starts `a`, then `b`, and waits until they hold two groups each.
fn pair(port: u16, db: &TestDb, ttl: &str) -> (Uplink, Uplink) {
    pair_with(port, port, db, ttl, "")
}

/// [`pair`] with b on a broker port and `[database]` lines of its own.
fn pair_with(a_port: u16, b_port: u16, db: &TestDb, ttl: &str, b_db: &str) -> (Uplink, Uplink) {
    let a = Uplink::start(a_port, &db.url(), &scale_section("a", ttl));
    a.wait_until("a holds every group", |u| {
        u.metric("spb_uplink_scale_leases_held") == 4.0
    });
    let b = Uplink::start(b_port, &db.url(), &format!("{b_db}{}", scale_section("b", ttl)));
    for u in [&a, &b] {
        u.wait_until("the groups are shared two and two", |u| {
            u.metric("spb_uplink_scale_leases_held") == 2.0 && u.metric("spb_uplink_scale_instances") == 2.0
        });
    }
    (a, b)
}

#[test]
fn two_instances_share_four_groups_and_the_survivor_of_a_kill_writes_every_sample_once_in_order() {
    let db = TestDb::new("scale_two");
    let broker = Broker::start(None);
    let (mut a, b) = pair(broker.port, &db, "2s");
    // One STATE identity: a took it first and keeps it.
    assert_eq!(a.metric("spb_uplink_scale_state_owner"), 1.0, "{}", leases(&db));
    assert_eq!(b.metric("spb_uplink_scale_state_owner"), 0.0, "{}", leases(&db));
    let (online, born) = retained_state(broker.port);
    assert!(online, "the host's STATE is online");

    let stream = Stream::start(broker.port);
    // Mid-stream: every group has committed facts, then the STATE owner dies.
    stream.wait_written(&db, || a.log());
    std::thread::sleep(Duration::from_secs(1));
    a.child.kill().expect("SIGKILL");
    a.child.wait().expect("reaped");
    b.wait_until("the survivor holds every group and the STATE identity", |u| {
        u.metric("spb_uplink_scale_leases_held") == 4.0 && u.metric("spb_uplink_scale_state_owner") == 1.0
    });
    let (online, ts) = retained_state(broker.port);
    assert!(
        online && ts > born,
        "the survivor's STATE birth is online and newer: {online} {ts} > {born}"
    );
    std::thread::sleep(Duration::from_secs(2));
    stream.finish_and_check(&db, &b);
    // The survivor holds every lease; the dead one's wrote through the standby.
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sp_uplink_lease WHERE holder = 'b' AND expires_at > now()"),
        5,
        "{}",
        leases(&db)
    );
    assert!(b
        .log()
        .contains("writing the rows and messages kept while another instance held the group"));
    assert_eq!(b.metric("spb_uplink_scale_standby_dropped_total"), 0.0);
}

#[test]
fn an_instance_stopped_on_purpose_hands_its_groups_over_at_once() {
    let db = TestDb::new("scale_stop");
    let broker = Broker::start(None);
    // Leases of 30 s: a takeover within seconds is the handover, not an expiry.
    let (a, mut b) = pair(broker.port, &db, "30s");
    // A forged STATE offline for the host: its owner (a) answers, on its
    // STATE connection, and b (which sees it too) publishes no STATE.
    let forged = format!("{{\"online\":false,\"timestamp\":{}}}", now_ms());
    common::mosquitto_pub(broker.port, "spBv1.0/STATE/scada", forged.as_bytes(), true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !retained_state(broker.port).0 {
        assert!(
            Instant::now() < deadline,
            "the STATE owner never answered:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stream = Stream::start(broker.port);
    stream.wait_written(&db, || b.log());
    std::thread::sleep(Duration::from_secs(1));
    let stopped = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert!(b.child.wait().expect("exit").success(), "{}", b.log());
    assert!(b.log().contains("leases given up"), "{}", b.log());
    a.wait_until("a holds every group again", |u| {
        u.metric("spb_uplink_scale_leases_held") == 4.0
    });
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "handed over in {:?}, not at the 30 s expiry",
        stopped.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1));
    stream.finish_and_check(&db, &a);
    assert_eq!(a.metric("spb_uplink_scale_state_owner"), 1.0);
}

/// A TCP relay to the broker that the test can cut (every connection
/// closed, new ones refused) and restore.
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl Relay {
    fn start(broker: u16) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let c = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Relaxed) {
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", broker)) else {
                    continue;
                };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (from, to) = (from.try_clone().expect("clone"), to.try_clone().expect("clone"));
                    let c = c.clone();
                    std::thread::spawn(move || pump(from, to, c));
                }
            }
        });
        Relay { port, cut }
    }
}

fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream, cut: Arc<AtomicBool>) {
    use std::io::{Read, Write};
    from.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    let mut buf = [0u8; 16384];
    loop {
        if cut.load(Relaxed) {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[test]
fn an_instance_cut_off_the_broker_gives_its_groups_to_one_that_still_receives_them() {
    let db = TestDb::new("scale_cut");
    let broker = Broker::start(None);
    let relay = Relay::start(broker.port);
    // Leases of 30 s: what moves within seconds moves because of the cut.
    let (a, b) = pair_with(broker.port, relay.port, &db, "30s", "");
    let stream = Stream::start(broker.port);
    stream.wait_written(&db, || b.log());
    std::thread::sleep(Duration::from_secs(1));
    relay.cut.store(true, Relaxed);
    a.wait_until("a, still receiving, holds every group", |u| {
        u.metric("spb_uplink_scale_leases_held") == 4.0
    });
    assert!(
        b.log().contains("lease given up: not connected to the broker"),
        "{}",
        b.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    // Back on the broker, b gets its share again.
    relay.cut.store(false, Relaxed);
    b.wait_until("b holds two groups again", |u| {
        u.metric("spb_uplink_scale_leases_held") == 2.0
    });
    std::thread::sleep(Duration::from_secs(2));
    stream.finish_and_check(&db, &a);
    // b's own loss of the broker is not the nodes' death: none is offline.
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sp_node_state WHERE NOT online"),
        0,
        "{}",
        db.query_text("SELECT string_agg(group_id || '/' || node_id || ' ' || last_cause, ', ') FROM sp_node_state")
    );
}

#[test]
fn the_state_owner_declares_the_host_offline_while_another_instances_database_is_behind() {
    let db = TestDb::new("scale_behind");
    let broker = Broker::start(None);
    // b counts itself behind whenever a row of its waits for the database.
    let (a, b) = pair_with(broker.port, broker.port, &db, "30s", "offline_after_rows = 1");
    assert!(retained_state(broker.port).0, "online before any load");
    let stream = Stream::start(broker.port);
    // a owns STATE and its own backlog is far below its bound: the
    // offline STATE it publishes is b's.
    a.wait_until("a declares the host offline for b", |u| {
        u.metric("spb_uplink_state_offline") == 1.0
    });
    assert_eq!(b.metric("spb_uplink_scale_state_owner"), 0.0);
    stream.finish_and_check(&db, &a);
    a.wait_until("online again once b caught up", |u| {
        u.metric("spb_uplink_state_offline") == 0.0
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !retained_state(broker.port).0 {
        assert!(Instant::now() < deadline, "STATE never online again:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(a.log().contains("the database is behind: STATE offline"), "{}", a.log());
}
