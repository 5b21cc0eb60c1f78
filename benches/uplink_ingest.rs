//! spb-uplink into PostgreSQL: sustained metric rows/s, ingest lag and RSS.
//!
//! `make bench-uplink` (= `cargo bench --features uplink --bench uplink_ingest`).
//! 1. The sink alone: `PgSink::write` of batches of 20,000 facts (plus their
//!    200 raw messages), built before the clock starts, into a fresh
//!    database, from 1 and from 4 connections in parallel (the uplink's
//!    default writer pool): rows/s. `SPB_BENCH_SINK_ONLY=1` stops there.
//! 2. End to end at a fixed offered load: a private mosquitto, the release
//!    uplink, and a load generator in this process: N edge nodes (one MQTT
//!    connection each, our `EdgeSession`), 10 devices each, 100 Double
//!    metrics per device changing every second (N × 1,000 facts/s). After a
//!    5 s warm-up, 20 s measured: facts written per second (from the
//!    database), p50/p99 of `written_at − sample timestamp` (the sample's
//!    trip from the edge to a committed row), and the uplink's peak RSS.
//!    Results in `target/bench-uplink.md`.
//! 3. OEE at that load (`-- oee` runs only this): 50 nodes as in 2, and
//!    every device is a machine as well: a piece counter (UInt32) that
//!    counts every second and a Running Boolean that stops for 3 s in every
//!    30. Three runs without `[oee]` and three with 500 machines mapped
//!    (shift all day, rollup_interval 5 s), alternating: the fact rate and
//!    the uplink's CPU of each, and the lag from a cycle's sample timestamp
//!    (the PLC read) to its `oee_cycle` row, polled every 100 ms for five
//!    machines. Results in `target/bench-uplink-oee.md`.
//! 4. Retention at load (`-- retention` runs only this): the sink-alone
//!    writers (4 connections) commit for 3 s, then a retention run drops
//!    10 expired days (100,000 facts and their raw messages each) while
//!    they go on, then 3 s more: the rate before, during and after, three
//!    runs. Results in `target/bench-uplink-retention.md`.
//! 5. Scale-out (`-- scale` runs only this): the end-to-end load of 2 with
//!    the nodes spread over four groups, against one uplink without
//!    `[scale]` (4 and 8 writers), one with it, and two sharing the groups;
//!    alternating, three rounds. Rate, lag p99, and the uplinks' CPU and
//!    RSS summed. Results in `target/bench-uplink-scale.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use spb::clock::now_ms;
use spb::sparkplug::edge::{DeviceDef, EdgeAction, EdgeConfig, EdgeSession};
use spb::sparkplug::{Metric, Value};
use spb::uplink::postgres::PgSink;
use spb::uplink::rows::Batch;
use spb::uplink::sink::Sink;

const DEVICES: usize = 10;
const METRICS: usize = 100;

fn edge(node: usize, group: &str) -> EdgeSession {
    let now = now_ms();
    let devices = (0..DEVICES)
        .map(|d| DeviceDef {
            name: format!("d{d}"),
            metrics: (0..METRICS)
                .map(|m| Metric::new(format!("m{m}"), Value::Double(0.0), now))
                .chain([
                    Metric::new("Count", Value::UInt32(0), now),
                    Metric::new("Running", Value::Boolean(true), now),
                ])
                .collect(),
        })
        .collect();
    EdgeSession::new(
        EdgeConfig {
            group_id: group.into(),
            node_id: format!("n{node}"),
            primary_host_id: None,
            server_count: 1,
            rebirth_debounce_ms: 0,
            aliases: true,
            max_data_metrics: 1000,
            limits: Default::default(),
        },
        vec![],
        devices,
        None,
    )
    .expect("valid")
}

async fn publish_all(client: &rumqttc::AsyncClient, actions: Vec<EdgeAction>) {
    for a in actions {
        if let Some(p) = a.publish() {
            let qos = match p.qos {
                spb::sparkplug::QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
                _ => rumqttc::QoS::AtLeastOnce,
            };
            let _ = client.publish(p.topic.clone(), qos, p.retain, p.payload.clone()).await;
        }
    }
}

/// One simulated edge node: births, then every device's 100 metrics each second.
async fn node(port: u16, n: usize, group: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let mut o = rumqttc::MqttOptions::new(format!("bench-edge-{n}-{port}"), "127.0.0.1", port);
    o.set_max_packet_size(1 << 24, 1 << 24);
    o.set_request_channel_capacity(10_000);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 10_000);
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let mut s = edge(n, &group);
    let now = now_ms();
    s.begin_connect(now);
    let births = s.connected(now);
    publish_all(&client, births).await;
    for d in 0..DEVICES {
        let a = s.device_online(now, &format!("d{d}")).expect("known");
        publish_all(&client, a).await;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut k = 0.0;
    let mut count = 0u32;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tick.tick().await;
        k += 1.0;
        let now = now_ms();
        // A machine: a piece a second, except a 3 s stop in every 30 s.
        let phase = k as u64 % 30;
        let running = phase >= 3;
        if running {
            count += 1;
        }
        for d in 0..DEVICES {
            let mut metrics: Vec<Metric> = (0..METRICS)
                .map(|m| Metric::new(format!("m{m}"), Value::Double(k + m as f64), now))
                .collect();
            if running {
                metrics.push(Metric::new("Count", Value::UInt32(count), now));
            }
            if phase == 0 || phase == 3 {
                metrics.push(Metric::new("Running", Value::Boolean(running), now));
            }
            let a = s.update(now, Some(&format!("d{d}")), metrics).expect("declared");
            publish_all(&client, a).await;
        }
    }
}

/// The uplink process, killed if the bench panics half-way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One batch as the uplink builds it: 200 DDATA of 100 metrics (20,000 facts) of `node`.
fn bench_batch(node: usize, b: u64, base: u64) -> Batch {
    let mut batch = Batch::default();
    for msg in 0..200u64 {
        let ts = base + b * 1000 + msg;
        let metrics: Vec<Metric> = (0..100)
            .map(|m| Metric::new(format!("m{m}"), Value::Double(m as f64), ts))
            .collect();
        batch.add_raw(&format!("spBv1.0/Bench/DDATA/n{node}/d0"), &[0u8; 1200], ts);
        batch.add_event(
            &spb::sparkplug::host::HostEvent::data(
                "Bench",
                &format!("n{node}"),
                Some(&format!("d{}", msg % 10)),
                0,
                Some(ts),
                metrics,
            ),
            ts,
        );
    }
    batch
}

/// `writers` connections in parallel, as the uplink's writer pool, each
/// committing its own nodes' batches (built before the clock starts).
fn sink_alone(writers: usize, rows: &mut Vec<String>) {
    let db = common::pg::TestDb::new(&format!("bench_sink{writers}"));
    let url = db.url();
    let per = 25 / writers.max(1) + usize::from(25 % writers.max(1) != 0);
    let base = now_ms();
    let work: Vec<Vec<Batch>> = (0..writers)
        .map(|w| (0..per as u64).map(|b| bench_batch(w, b, base)).collect())
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (total, secs) = rt.block_on(async {
        let mut sinks = Vec::new();
        for _ in 0..writers {
            let mut s = PgSink::connect(&url).await.expect("connect");
            s.migrate().await.expect("migrate");
            sinks.push(s);
        }
        let t = Instant::now();
        let tasks: Vec<_> = sinks
            .into_iter()
            .zip(work)
            .map(|(mut s, batches)| {
                tokio::spawn(async move {
                    let mut n = 0;
                    for b in &batches {
                        n += s.write(b).await.expect("write").facts;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("writer");
        }
        (total, t.elapsed().as_secs_f64())
    });
    let line = format!(
        "| sink alone, {writers} writer(s): {} batches of 20,000 facts + 200 raw messages | {total} facts | {:.0} facts/s | | | | |",
        per * writers,
        total as f64 / secs
    );
    println!("{line}");
    rows.push(line);
}

/// `[oee]` with every device of `nodes` nodes a machine.
fn oee_mapping(nodes: usize) -> String {
    let mut s = String::from(
        "[oee]\nminor_stop = \"1s\"\n[[oee.shifts]]\nname = \"all day\"\nstart = \"00:00\"\nend = \"24:00\"\n",
    );
    for n in 0..nodes {
        for d in 0..DEVICES {
            s += &format!(
                "[[oee.machines]]\nname = \"n{n}d{d}\"\nnode = \"Bench/n{n}\"\ndevice = \"d{d}\"\ncycle_count = \"Count\"\nrunning = \"Running\"\nideal_cycle_time = \"900ms\"\n"
            );
        }
    }
    s
}

/// What one end-to-end run measured.
struct Run {
    written: f64,
    /// ms from sample timestamp to commit, 99th percentile.
    p99: i64,
    cpu: f64,
    /// ms from a cycle's sample timestamp to its row, five machines (OEE only).
    cycle_lag: Vec<i64>,
}

fn end_to_end(nodes: usize, rows: &mut Vec<String>) {
    end_to_end_run(nodes, false, rows);
}

fn end_to_end_run(nodes: usize, oee: bool, rows: &mut Vec<String>) -> Run {
    end_to_end_on(nodes, oee, None, 4, rows)
}

/// The uplinks of a run: one without `[scale]` (`scale` None), or
/// `Some(k)` instances sharing the four groups g0..g3 under leases; the
/// edge nodes are in group "Bench", or spread over g0..g3 round-robin
/// with `scale`.
fn end_to_end_on(nodes: usize, oee: bool, scale: Option<usize>, writers: usize, rows: &mut Vec<String>) -> Run {
    let db = common::pg::TestDb::new(&format!(
        "bench_e2e{nodes}{}{}_w{writers}",
        if oee { "_oee" } else { "" },
        scale.map(|k| format!("_x{k}")).unwrap_or_default()
    ));
    let broker = common::Broker::start(None);
    let dir = tempfile::tempdir().expect("tmp");
    let groups = |n: usize| match scale {
        Some(_) => format!("g{}", n % 4),
        None if writers != 4 => format!("g{}", n % 4),
        None => "Bench".to_string(),
    };
    let mut uplinks = Vec::new();
    for i in 0..scale.unwrap_or(1) {
        let cfg = dir.path().join(format!("uplink{i}.toml"));
        let section = match scale {
            Some(k) if k > 1 => format!("[scale]\ninstance = \"u{i}\"\ngroups = [\"g0\", \"g1\", \"g2\", \"g3\"]\n"),
            Some(_) => "[scale]\ngroups = [\"g0\", \"g1\", \"g2\", \"g3\"]\n".to_string(),
            None => String::new(),
        };
        std::fs::write(
            &cfg,
            format!(
                "[host]\nhost_id = \"bench\"\n[mqtt]\nmax_packet_size = \"16MiB\"\n[[mqtt.servers]]\nhost = \"127.0.0.1\"\nport = {}\n[database]\nbackend = \"postgres\"\nurl = \"{}\"\nwriters = {writers}\n[telemetry]\nlisten = \"\"\nlog_level = \"warn\"\nlog_format = \"human\"\n{}{section}",
                broker.port,
                db.url(),
                if oee { oee_mapping(nodes) } else { String::new() }
            ),
        )
        .expect("config");
        uplinks.push(KillOnDrop(
            std::process::Command::new(env!("CARGO_BIN_EXE_spb-uplink"))
                .arg("--config")
                .arg(&cfg)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spb-uplink"),
        ));
    }
    // With several instances, wait until the groups are shared.
    let deadline = Instant::now() + Duration::from_secs(30);
    std::thread::sleep(Duration::from_secs(if scale.is_some_and(|k| k > 1) { 5 } else { 0 }));
    while scale.is_some_and(|k| k > 1)
        && db.query_i64(
            "SELECT count(DISTINCT holder) FROM sp_uplink_lease WHERE name <> 'STATE' AND expires_at > now()",
        ) < scale.unwrap_or(1) as i64
    {
        assert!(Instant::now() < deadline, "the instances never shared the groups");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for n in 0..nodes {
        rt.spawn(node(broker.port, n, groups(n), stop.clone()));
    }
    std::thread::sleep(Duration::from_secs(5));
    let start_ms = now_ms();
    let q0 = db.query_i64("SELECT count(*) FROM sp_metric_fact");
    let cpu_of = |u: &[KillOnDrop]| u.iter().map(|u| common::proc_stat(u.0.id()).0).sum::<u64>();
    let cpu0 = cpu_of(&uplinks);
    // Each cycle row of five machines, when it first appears.
    let mut cycle_lag = Vec::new();
    let mut seen: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    while now_ms() < start_ms + 20_000 {
        std::thread::sleep(Duration::from_millis(100));
        if !oee {
            continue;
        }
        let at = now_ms() as i64;
        let got = db.query_text(
            "SELECT coalesce(string_agg(machine || ' ' || (extract(epoch FROM end_at) * 1000)::bigint, ','), '')
             FROM oee_cycle WHERE machine IN ('n0d0', 'n10d1', 'n20d2', 'n30d3', 'n40d4') AND end_at > now() - interval '30 seconds'",
        );
        let rows: Vec<(&str, i64)> = got
            .split(',')
            .filter(|i| !i.is_empty())
            .map(|item| {
                let (m, t) = item.split_once(' ').expect("machine end");
                (m, t.parse().expect("ms"))
            })
            .collect();
        // Every cycle after the newest seen before this poll is new (rows
        // come in any order, so the newest moves only after all are seen).
        for &(m, t) in &rows {
            if t > *seen.get(m).unwrap_or(&(start_ms as i64)) {
                cycle_lag.push(at - t);
            }
        }
        for &(m, t) in &rows {
            let last = seen.entry(m.to_string()).or_insert(start_ms as i64);
            *last = (*last).max(t);
        }
    }
    let q1 = db.query_i64("SELECT count(*) FROM sp_metric_fact");
    let cpu1 = cpu_of(&uplinks);
    let end_ms = now_ms();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let window = format!(
        "FROM sp_metric_fact WHERE ts >= to_timestamp({:.3}) AND ts < to_timestamp({:.3})",
        start_ms as f64 / 1000.0,
        (end_ms - 2000) as f64 / 1000.0
    );
    let p = |pct: f64| {
        db.query_i64(&format!(
            "SELECT (percentile_cont({pct}) WITHIN GROUP (ORDER BY extract(epoch FROM written_at - ts)) * 1000)::bigint {window}"
        ))
    };
    let (p50, p99) = (p(0.5), p(0.99));
    let hwm = uplinks.iter().map(|u| common::proc_stat(u.0.id()).1).sum::<u64>();
    let offered = nodes * DEVICES * METRICS;
    let written = (q1 - q0) as f64 / 20.0;
    let cpu = (cpu1 - cpu0) as f64 / common::clk_tck() / 20.0;
    let line = format!(
        "| end to end{}{}: {nodes} nodes × {DEVICES} devices × {METRICS} metrics/s | {offered} facts/s offered | {written:.0} facts/s written | p50 {p50} ms | p99 {p99} ms | {:.1} MiB | {:.0}% ({:.1} µs/fact) |",
        if oee { " with OEE" } else { "" },
        match scale {
            Some(k) => format!(", {k} instance{} [scale]", if k > 1 { "s" } else { "" }),
            None if writers != 4 => format!(", 1 instance, {writers} writers"),
            None => String::new(),
        },
        hwm as f64 / 1024.0,
        cpu * 100.0,
        if written > 0.0 { cpu * 1e6 / written } else { 0.0 }
    );
    println!("{line}");
    rows.push(line);
    for u in &mut uplinks {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(u.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = u.0.wait();
    }
    drop(rt);
    Run {
        written,
        p99,
        cpu,
        cycle_lag,
    }
}

/// One instance against two sharing the groups, at the same offered load,
/// alternating, three runs of each (`SPB_BENCH_SCALE_NODES`, default 200;
/// `SPB_BENCH_SCALE_ROUNDS`, default 3).
fn scale_out() {
    let nodes: usize = std::env::var("SPB_BENCH_SCALE_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut rows = Vec::new();
    // One instance without [scale] (4 and 8 writers: two instances have 8
    // connections), one with it, two sharing the groups.
    let cases: [(&str, Option<usize>, usize); 4] = [
        ("one instance", None, 4),
        ("one instance, 8 writers", None, 8),
        ("one instance, [scale]", Some(1), 4),
        ("two instances, [scale]", Some(2), 4),
    ];
    let rounds: usize = std::env::var("SPB_BENCH_SCALE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut runs: Vec<Vec<Run>> = cases.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, (_, scale, writers)) in cases.iter().enumerate() {
            runs[i].push(end_to_end_on(nodes, false, *scale, *writers, &mut rows));
        }
    }
    let rate = |r: &[Run]| median(r.iter().map(|x| x.written).collect());
    let cpu = |r: &[Run]| median(r.iter().map(|x| x.cpu).collect());
    let p99 = |r: &[Run]| median(r.iter().map(|x| x.p99 as f64).collect());
    let summary: Vec<String> = cases
        .iter()
        .zip(&runs)
        .map(|((name, ..), r)| {
            format!(
                "| {name} | {:.0} | {:.0} ms | {:.0}% | {:.2} |",
                rate(r),
                p99(r),
                cpu(r) * 100.0,
                rate(r) / rate(&runs[0]).max(1e-9)
            )
        })
        .collect();
    let table = format!(
        "| run | load | rate | lag p50 | lag p99 | uplinks' RSS (sum) | uplinks' CPU (sum) |\n|---|---|---|---|---|---|---|\n{}\n\n\
         | median of {rounds} | facts/s written | lag p99 | uplinks' CPU | rate ÷ one instance |\n|---|---|---|---|---|\n{}\n",
        rows.join("\n"),
        summary.join("\n"),
    );
    println!("\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-uplink-scale.md");
    std::fs::write(&out, table).expect("write the table");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Without and with OEE at 50k facts/s, alternating, three of each.
fn oee_at_load() {
    let mut rows = Vec::new();
    let (mut plain, mut with) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        plain.push(end_to_end_run(50, false, &mut rows));
        with.push(end_to_end_run(50, true, &mut rows));
    }
    let rate = |r: &[Run]| median(r.iter().map(|x| x.written).collect());
    let cpu = |r: &[Run]| median(r.iter().map(|x| x.cpu).collect());
    let mut lag: Vec<i64> = with.iter().flat_map(|r| r.cycle_lag.iter().copied()).collect();
    lag.sort_unstable();
    let pct = |p: f64| lag.get(((lag.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(-1);
    let table = format!(
        "| run | load | rate | lag p50 | lag p99 | uplink peak RSS | uplink CPU |\n|---|---|---|---|---|---|---|\n{}\n\n\
         | median of 3 | facts/s written | uplink CPU |\n|---|---|---|\n\
         | without [oee] | {:.0} | {:.0}% |\n| with 500 machines | {:.0} | {:.0}% |\n| ratio | {:.3} | {:.2} |\n\n\
         cycle → oee_cycle row, {} cycles of 5 machines over the 3 runs: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms\n",
        rows.join("\n"),
        rate(&plain),
        cpu(&plain) * 100.0,
        rate(&with),
        cpu(&with) * 100.0,
        rate(&with) / rate(&plain),
        cpu(&with) / cpu(&plain).max(1e-9),
        lag.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        lag.last().copied().unwrap_or(-1),
    );
    println!("\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-uplink-oee.md");
    std::fs::write(&out, table).expect("write the table");
}

/// The sink's rate while a retention run drops expired partitions: a
/// fresh database holds `days` expired days of `per_day` facts (written as
/// they were, on those days' clock); 4 writers commit live batches (as in
/// the sink-alone case) for 3 s, then a retention run on a fifth connection
/// drops the expired days while they go on, then 3 s more. Returns (rate
/// before, rate while dropping, rate after, seconds the run took).
fn ingest_while_dropping(days: u64, per_day: u64) -> (f64, f64, f64, f64) {
    use spb::uplink::retention::Retention;
    const DAY: u64 = 86_400_000;
    let db = common::pg::TestDb::new("bench_retain");
    let url = db.url();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut s = PgSink::connect(&url).await.expect("connect");
        s.migrate().await.expect("migrate");
        let first = now_ms() - 60 * DAY;
        for d in 0..days {
            let day = first + d * DAY;
            s.set_retention(&Retention::forever(), Some(day as i64));
            let mut left = per_day;
            let mut b = 0;
            while left > 0 {
                let batch = bench_batch(9, b, day + b * 200_000);
                left = left.saturating_sub(batch.facts.len() as u64);
                s.write(&batch).await.expect("seed");
                b += 1;
            }
        }
    });
    let keep = Retention {
        facts: Some(Duration::from_secs(30 * 86_400)),
        raw: Some(Duration::from_secs(30 * 86_400)),
        ..Retention::default()
    };
    let base = now_ms();
    let t0 = Instant::now();
    let (marks, drop_from, drop_to) = rt.block_on(async {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..4usize {
            let mut s = PgSink::connect(&url).await.expect("connect");
            s.set_retention(&keep, None);
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut marks = Vec::new();
                let mut b = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let batch = bench_batch(w, b, base);
                    let n = s.write(&batch).await.expect("write").facts;
                    marks.push((t0.elapsed().as_secs_f64(), n));
                    b += 1;
                }
                marks
            }));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut r = PgSink::connect(&url).await.expect("connect");
        r.set_retention(&keep, None);
        let from = t0.elapsed().as_secs_f64();
        let done = r.retain(now_ms() as i64).await.expect("retain");
        let to = t0.elapsed().as_secs_f64();
        assert_eq!(done.dropped.len() as u64, 2 * days, "{done:?}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut marks = Vec::new();
        for t in tasks {
            marks.extend(t.await.expect("writer"));
        }
        (marks, from, to)
    });
    let rate = |a: f64, b: f64| {
        let n: u64 = marks.iter().filter(|(t, _)| *t > a && *t <= b).map(|(_, n)| n).sum();
        n as f64 / (b - a)
    };
    let end = marks.iter().map(|m| m.0).fold(0.0, f64::max);
    (
        rate(0.5, drop_from),
        rate(drop_from, drop_to.max(drop_from + 0.25)),
        rate(drop_to, end),
        drop_to - drop_from,
    )
}

fn retention_at_load() {
    let mut lines = Vec::new();
    for run in 1..=3 {
        let (before, during, after, secs) = ingest_while_dropping(10, 100_000);
        let line = format!("| {run} | {before:.0} | {during:.0} | {after:.0} | {:.2} s |", secs);
        println!("{line}");
        lines.push(line);
    }
    let table = format!(
        "| run | facts/s before | facts/s while 20 partitions (10 days × 100,000 facts, and their raw) are dropped | facts/s after | the drop took |\n|---|---|---|---|---|\n{}\n",
        lines.join("\n")
    );
    println!("\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-uplink-retention.md");
    std::fs::write(&out, table).expect("write the table");
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    if std::env::args().any(|a| a == "oee") {
        return oee_at_load();
    }
    if std::env::args().any(|a| a == "retention") {
        return retention_at_load();
    }
    if std::env::args().any(|a| a == "scale") {
        return scale_out();
    }
    let mut rows = Vec::new();
    for writers in [1, 4] {
        sink_alone(writers, &mut rows);
    }
    for nodes in [50usize, 200]
        .into_iter()
        .filter(|_| std::env::var_os("SPB_BENCH_SINK_ONLY").is_none())
    {
        end_to_end(nodes, &mut rows);
    }
    let table = format!(
        "| case | load | rate | lag p50 | lag p99 | uplink peak RSS | uplink CPU |\n|---|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    println!("\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-uplink.md");
    std::fs::write(&out, table).expect("write the table");
    if std::env::var_os("SPB_BENCH_SINK_ONLY").is_none() {
        oee_at_load();
    }
}
