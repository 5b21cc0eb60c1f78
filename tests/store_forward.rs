//! Store-and-forward end to end: a real mosquitto killed and
//! restarted, the gateway SIGKILLed, the Primary Host going offline; an
//! independent subscriber (pysparkplug) must receive every sample.
//!
//! The probe is the sim's `counter` tag, +1 on every 10 ms scan: within one
//! gateway process its values are consecutive integers, so any sample lost
//! between the PLC and the subscriber shows up as a hole.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{counter_config as config, with_http, Broker, Gateway, Peer};
use nix::sys::signal::Signal;
use serde_json::Value as J;
use spb::clock::now_ms;

const T: Duration = Duration::from_secs(20);

/// One received sample of `Count`.
#[derive(Debug, Clone, Copy)]
struct Sample {
    value: u64,
    timestamp: u64,
    historical: bool,
    /// Index of the session (NBIRTH) it arrived in.
    session: usize,
}

fn kind(m: &J) -> &str {
    m["kind"].as_str().unwrap_or("")
}

/// Every `Count` sample the subscriber received, in arrival order.
fn samples(seen: &[J]) -> Vec<Sample> {
    let mut alias: Option<u64> = None;
    let mut session = 0;
    let mut out = Vec::new();
    for m in seen {
        assert!(m.get("error").is_none(), "the subscriber could not decode: {m}");
        match kind(m) {
            "NBIRTH" => session += 1,
            "DBIRTH" | "DDATA" => {}
            _ => continue,
        }
        for x in m["metrics"].as_array().into_iter().flatten() {
            if kind(m) == "DBIRTH" && x["name"] == "Count" {
                alias = x["alias"].as_u64();
            }
            let is_count = x["name"] == "Count" || (x["name"].is_null() && x["alias"].as_u64() == alias);
            if !is_count || kind(m) == "NBIRTH" {
                continue;
            }
            let Some(value) = x["value"].as_u64() else { continue };
            out.push(Sample {
                value,
                timestamp: x["timestamp"].as_u64().expect("timestamp"),
                historical: x["is_historical"] == true,
                session,
            });
        }
    }
    out
}

/// The values in `[from, to]` that never arrived.
fn holes(got: &[Sample], from: u64, to: u64) -> Vec<u64> {
    let have: BTreeSet<u64> = got.iter().map(|s| s.value).collect();
    (from..=to).filter(|v| !have.contains(v)).collect()
}

/// Within one session, each metric's historical samples arrive oldest first.
fn assert_historical_in_order(got: &[Sample]) {
    let mut last: BTreeMap<usize, u64> = BTreeMap::new();
    for s in got.iter().filter(|s| s.historical) {
        let prev = last.insert(s.session, s.timestamp).unwrap_or(0);
        assert!(
            s.timestamp >= prev,
            "historical samples out of order in session {}: {} after {prev}",
            s.session,
            s.timestamp
        );
    }
}

fn metric(port: u16, name: &str) -> f64 {
    common::prom_value(port, name)
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{}", common::http_get(port, "/metrics")))
}

/// Waits until the gateway's store is empty and nothing is unconfirmed.
fn wait_drained(http: u16, gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(http, "spb_queue_depth") > 0.0 || metric(http, "spb_unconfirmed_samples") > 0.0 {
        assert!(Instant::now() < deadline, "the store never drained:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

// docs/ARCHITECTURE.md decisions 3 and 5; [tck-id-operational-behavior-data-publish-nbirth-order]
#[test]
fn a_broker_outage_loses_no_sample_and_the_stored_ones_arrive_historical_and_in_order() {
    let mut broker = Broker::start(None);
    let mut peer = Peer::start_host(broker.port, "scada");
    let http = common::free_port();
    let cfg = with_http(
        config(
            "SF1",
            broker.port,
            "primary_host_id = \"scada\"",
            "[store]\nreplay_rate = 2000",
        ),
        http,
    );
    let mut gw = Gateway::start(&cfg, &[]);
    peer.wait_for("NBIRTH", T, |m| kind(m) == "NBIRTH");
    std::thread::sleep(Duration::from_secs(2));
    // The broker hangs first: what the gateway sends now sits unread in the
    // socket buffers (QoS 0: no PUBACK tells), then the broker dies with it.
    // Only the watermark knows these samples never arrived.
    let down = now_ms();
    broker.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1500));
    broker.kill();
    std::thread::sleep(Duration::from_millis(1500));
    let up = now_ms();
    broker.restart();
    // The peer reconnects and says STATE online; the gateway is born again.
    peer.wait_for("the NBIRTH after the outage", T, |m| kind(m) == "NBIRTH");
    wait_drained(http, &gw);
    assert!(
        metric(http, "spb_replayed_samples_total") > 0.0,
        "the outage was stored and replayed"
    );
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(T).success(), "{}", gw.log());
    peer.collect(Duration::from_millis(500));

    let got = samples(&peer.seen);
    let first = got.iter().map(|s| s.value).min().expect("samples");
    let last = got.iter().map(|s| s.value).max().expect("samples");
    assert!(last - first > 400, "about 7 s of a 10 ms counter: {first}..{last}");
    assert_eq!(holes(&got, first, last), Vec::<u64>::new(), "samples lost");
    // What was read while the broker was down arrived flagged historical.
    let during: Vec<&Sample> = got
        .iter()
        .filter(|s| s.timestamp > down + 500 && s.timestamp + 500 < up)
        .collect();
    assert!(during.len() > 100, "{} samples from the outage", during.len());
    assert!(during.iter().all(|s| s.historical), "stored samples are historical");
    assert_historical_in_order(&got);
}

/// A small deterministic generator for the kill moments.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn twenty_sigkills_at_random_moments_lose_no_sample_the_gateway_had_delivered_or_stored() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    // A slow replay, so that kills land during replays too.
    let cfg = config("SF2", broker.port, "", "[store]\nreplay_rate = 300");
    let mut seed = 0x5eed_u64 ^ now_ms();
    eprintln!("kill schedule seed {seed:#x}");
    let mut state = tempfile::tempdir().expect("tmp");
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for _ in 0..20 {
        let start = now_ms();
        let gw = Gateway::start_in(state, &cfg, &[]);
        std::thread::sleep(Duration::from_millis(200 + next(&mut seed) % 1300));
        let end = now_ms();
        state = gw.kill_keep_state();
        runs.push((start, end));
    }
    // A last run replays everything that is left and stops cleanly.
    let http = common::free_port();
    let mut gw = Gateway::start_in(state, &with_http(cfg.clone(), http), &[]);
    peer.wait_for("NBIRTH of the last run", T, |m| {
        kind(m) == "NBIRTH" && m["timestamp"].as_u64().is_some_and(|t| t >= runs[19].1)
    });
    wait_drained(http, &gw);
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(T).success(), "{}", gw.log());
    peer.collect(Duration::from_millis(500));

    let got = samples(&peer.seen);
    let mut checked = 0;
    for (i, (start, end)) in runs.iter().enumerate() {
        // Each process counts from its own start; its samples are those
        // timestamped within its lifetime.
        let run: Vec<Sample> = got
            .iter()
            .filter(|s| s.timestamp >= *start && s.timestamp <= *end)
            .copied()
            .collect();
        let (Some(first), Some(last)) = (run.iter().map(|s| s.value).min(), run.iter().map(|s| s.value).max()) else {
            continue; // killed before its first scan left the process
        };
        assert_eq!(holes(&run, first, last), Vec::<u64>::new(), "run {i} lost samples");
        checked += 1;
    }
    assert!(
        checked >= 15,
        "only {checked} of 20 runs delivered samples:\n{}",
        gw.log()
    );
    assert_historical_in_order(&got);
}

// docs/ARCHITECTURE.md decision 4; [tck-id-operational-behavior-edge-node-birth-sequence-wait]
#[test]
fn primary_host_offline_stores_without_publishing_data_and_replays_its_window_when_back() {
    let broker = Broker::start(None);
    let mut peer = Peer::start_host(broker.port, "scada");
    let http = common::free_port();
    let cfg = with_http(config("SF3", broker.port, "primary_host_id = \"scada\"", ""), http);
    let mut gw = Gateway::start(&cfg, &[]);
    peer.wait_for("NBIRTH", T, |m| kind(m) == "NBIRTH");
    std::thread::sleep(Duration::from_secs(2));
    let offline_at = now_ms();
    peer.send(serde_json::json!({"op": "state", "host": "scada", "online": false, "timestamp": offline_at}));
    gw.wait_log("Primary Host offline: storing the samples it may have missed", T);
    std::thread::sleep(Duration::from_secs(2));
    let online_at = now_ms();
    peer.send(serde_json::json!({"op": "state", "host": "scada", "online": true, "timestamp": online_at}));
    peer.wait_for("NBIRTH after the host is back", T, |m| {
        kind(m) == "NBIRTH" && m["timestamp"].as_u64().is_some_and(|t| t >= online_at)
    });
    wait_drained(http, &gw);
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(T).success(), "{}", gw.log());
    peer.collect(Duration::from_millis(500));

    // The gateway leaves with NDEATH when it sees the offline STATE, and
    // publishes no DATA until the NBIRTH after the host is back.
    let mut left = false;
    for m in &peer.seen {
        match kind(m) {
            "NDEATH" => left = true,
            "NBIRTH" => left = false,
            "NDATA" | "DDATA" => assert!(!left, "DATA published while the Primary Host was offline: {m}"),
            _ => {}
        }
    }
    assert!(
        peer.seen.iter().any(|m| kind(m) == "NDEATH"),
        "the gateway left on the offline STATE"
    );
    let got = samples(&peer.seen);
    let live_while_offline: Vec<&Sample> = got
        .iter()
        .filter(|s| !s.historical && s.timestamp > offline_at + 500 && s.timestamp + 500 < online_at)
        .collect();
    assert!(live_while_offline.is_empty(), "{live_while_offline:?}");
    let first = got.iter().map(|s| s.value).min().expect("samples");
    let last = got.iter().map(|s| s.value).max().expect("samples");
    assert_eq!(holes(&got, first, last), Vec::<u64>::new(), "samples lost");
    // The window: samples the host may have missed before it went offline
    // were replayed (again) as historical after it came back.
    let replayed_window = got
        .iter()
        .filter(|s| s.historical && s.timestamp < offline_at && s.timestamp + 1000 > offline_at)
        .count();
    assert!(
        replayed_window > 50,
        "{replayed_window} samples of the last second before the host died replayed"
    );
    assert_historical_in_order(&got);
}

/// The number after `key=` in a log line.
fn logged(log: &str, line_has: &str, key: &str) -> u64 {
    let plain = log
        .replace("\u{1b}[3m", "")
        .replace("\u{1b}[0m", "")
        .replace("\u{1b}[2m", "");
    let line = plain
        .lines()
        .find(|l| l.contains(line_has))
        .unwrap_or_else(|| panic!("no log line with {line_has:?}:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

#[test]
fn corrupt_queue_files_between_runs_are_reported_counted_and_the_rest_is_replayed() {
    let dead = common::free_port();
    let mut offline = Gateway::start(&config("SF4", dead, "", ""), &[]);
    offline.wait_log("connection failed", T);
    std::thread::sleep(Duration::from_secs(2));
    offline.signal(Signal::SIGTERM);
    assert!(offline.wait_exit(T).success(), "{}", offline.log());
    let stored = logged(&offline.log(), "stopped", "stored");
    assert!(stored > 100, "2 s of a 10 ms counter stored: {stored}");
    let state = offline.kill_keep_state();
    // Flip 64 bytes in the middle of the store's largest segment file.
    let db = std::fs::read_dir(state.path().join("state/queue"))
        .expect("the store")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .expect("a segment");
    let mut bytes = std::fs::read(&db).expect("a segment file");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&db, bytes).expect("corrupt");

    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let http = common::free_port();
    let mut gw = Gateway::start_in(state, &with_http(config("SF4", broker.port, "", ""), http), &[]);
    peer.wait_for("NBIRTH", T, |m| kind(m) == "NBIRTH");
    wait_drained(http, &gw);
    let lost = metric(http, "spb_queue_corrupt_records") as u64;
    let replayed = metric(http, "spb_replayed_samples_total") as u64;
    assert!(lost > 0, "the damage is counted:\n{}", gw.log());
    assert!(replayed > 0, "the rest is replayed");
    assert_eq!(
        replayed + lost,
        stored,
        "one sample per record here: every stored record is replayed or counted lost"
    );
    assert!(gw.log().contains("corrupt records in the store"), "{}", gw.log());
    let quarantined = std::fs::read_dir(gw.dir.path().join("state/queue.quarantine"))
        .expect("the damaged bytes are kept for inspection")
        .count();
    assert_eq!(quarantined, 1);
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(T).success(), "{}", gw.log());
}

/// Starts the gateway in a private mount namespace whose state directory is
/// a tmpfs of `mib` MiB and 512 inodes (a small disk). `fill_after` seconds
/// in, something else fills it: every free byte (`dd`), then every free
/// inode, so that the store's next new segment cannot be created whatever
/// room it makes by dropping its oldest; `free_after` seconds later it is
/// freed again. `unshare -rm` needs no root where user namespaces are
/// enabled (Debian's default).
fn gateway_on_small_disk(config: &str, mib: u32, fill_after: Option<u32>, free_after: Option<u32>) -> Gateway {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, config).expect("write config");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    // The filler keeps taking what the store frees (blocks and inodes), so
    // that the store's own room-making cannot win the race every time: a
    // write must fail, as on a disk another program is filling.
    let fill = fill_after.map_or(String::new(), |s| {
        let (seconds, clean) = free_after.map_or((60, String::new()), |f| {
            (f, format!("; rm -f {0}/filler*", state.display()))
        });
        format!(
            "(sleep {s}; end=$(( $(date +%s) + {seconds} )); i=0; while [ $(date +%s) -lt $end ]; do \
             dd if=/dev/zero of={0}/filler.d$i bs=64k 2>/dev/null; while touch {0}/filler.$i 2>/dev/null; do i=$((i+1)); done; \
             i=$((i+1)); sleep 0.01; done{clean}) & ",
            state.display()
        )
    });
    let script = format!(
        "mount -t tmpfs -o size={mib}m,nr_inodes=512 none {st} || exit 97; {fill}exec {gw} --config {cfg} --data-dir {st}",
        st = state.display(),
        gw = env!("CARGO_BIN_EXE_spb-gateway"),
        cfg = cfg.display()
    );
    let stderr_path = dir.path().join("gateway.log");
    let err = std::fs::File::create(&stderr_path).expect("log");
    let child = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .expect("unshare (util-linux) is installed");
    let mut gw = Gateway {
        child,
        dir,
        stderr_path,
    };
    std::thread::sleep(Duration::from_millis(300));
    if let Some(s) = gw.child.try_wait().expect("status") {
        panic!("could not mount a tmpfs in a user namespace ({s}): {}", gw.log());
    }
    gw
}

fn small_disk_config(group: &str, http: u16) -> String {
    // 2,000 tags changing every 10 ms (200k samples/s) and no broker: the
    // store fills a small disk within a second.
    format!(
        r#"[node]
group_id = "{group}"
node_id = "gw"
[mqtt]
backoff_min = "1s"
backoff_max = "2s"
[[mqtt.servers]]
host = "127.0.0.1"
port = {dead}
[telemetry]
listen = "127.0.0.1:{http}"
log_format = "human"
[store]
max_bytes = "1GiB"
[[devices]]
name = "press"
driver = "sim"
[devices.sim]
generate = 2000
generate_scan_class = "fast"
[devices.scan_classes]
fast = "10ms"
"#,
        dead = common::free_port()
    )
}

#[test]
fn a_filling_disk_bounds_the_store_to_what_fits_and_drops_the_oldest_with_an_error_and_a_counter() {
    let http = common::free_port();
    let mut gw = gateway_on_small_disk(&small_disk_config("SF5", http), 16, None, None);
    gw.wait_log(
        "disk nearly full: the store was bounded to what fits and dropped the oldest samples",
        T,
    );
    let reads = metric(http, "spb_plc_reads_total{device=\"press\"}");
    let dropped = metric(http, "spb_dropped_samples_total");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        gw.child.try_wait().expect("status").is_none(),
        "still running: {}",
        gw.log()
    );
    assert!(
        metric(http, "spb_dropped_samples_total") > dropped,
        "drops go on being counted"
    );
    assert!(
        metric(http, "spb_plc_reads_total{device=\"press\"}") > reads + 100.0,
        "polling goes on"
    );
    // Both from one scrape, as the store grows between two; the gauges are
    // separate atomics, so a scrape may still catch an update half-way: one
    // of three consistent scrapes is what a dashboard sees.
    let scrape = || {
        let page = common::http_get(http, "/metrics");
        let value = |name: &str| -> f64 {
            let prefix = format!("{name} ");
            page.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /metrics:\n{page}"))
        };
        (value("spb_store_file_bytes"), value("spb_queue_bytes"))
    };
    let pages: Vec<(f64, f64)> = (0..3).map(|_| scrape()).collect();
    for &(files, _) in &pages {
        assert!(
            files > 0.0 && files <= 12.0 * 1024.0 * 1024.0,
            "the store's files leave the 4 MiB reserve of the 16 MiB disk free: {files}"
        );
    }
    assert!(
        pages.iter().any(|&(files, live)| live > 0.0 && live <= files),
        "live bytes within the files' bytes: {pages:?}"
    );
    assert!(metric(http, "spb_queue_depth") > 0.0, "the newest samples are kept");
    assert!(
        !gw.log().contains("could not store samples"),
        "no write failed: {}",
        gw.log()
    );
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(T).success(), "{}", gw.log());
}

#[test]
fn a_disk_filled_behind_the_stores_back_leaves_the_gateway_running_and_stopping_cleanly() {
    let http = common::free_port();
    let mut gw = gateway_on_small_disk(&small_disk_config("SF6", http), 64, Some(2), Some(4));
    gw.wait_log("could not store samples", T);
    assert!(gw.log().contains("No space left on device"), "{}", gw.log());
    assert!(
        gw.log()
            .contains("the store failed a write: a new one is tried in 10 s"),
        "{}",
        gw.log()
    );
    assert!(
        common::http_get(http, "/ready").starts_with("HTTP/1.1 503"),
        "/ready says the store failed"
    );
    let reads = metric(http, "spb_plc_reads_total{device=\"press\"}");
    let dropped = metric(http, "spb_dropped_samples_total");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        gw.child.try_wait().expect("status").is_none(),
        "still running: {}",
        gw.log()
    );
    assert!(
        metric(http, "spb_plc_reads_total{device=\"press\"}") > reads + 50.0,
        "polling goes on"
    );
    assert!(
        metric(http, "spb_dropped_samples_total") > dropped,
        "what cannot be stored is counted"
    );
    // The disk is freed 4 s after it filled; 10 s after the failure a new
    // store opens beside the failed one and storing goes on.
    gw.wait_log("a new store is open after the failed one", Duration::from_secs(30));
    let stored = metric(http, "spb_stored_samples_total");
    let dropped = metric(http, "spb_dropped_samples_total");
    std::thread::sleep(Duration::from_secs(2));
    assert!(metric(http, "spb_stored_samples_total") > stored, "storing again");
    let _ = dropped;
    assert!(common::http_get(http, "/ready").contains("store: "), "/ready answers");
    gw.signal(Signal::SIGTERM);
    assert!(
        gw.wait_exit(T).success(),
        "stops without hanging on the failed store: {}",
        gw.log()
    );
}
