//! The gateway binary against a real mosquitto (started here on free loopback
//! ports, plain and mTLS with certificates generated here), checked by an
//! independent decoder (pysparkplug). Each test names the behaviour and the
//! spec rules it proves.

mod common;

use std::time::Duration;

use common::{metric, test_config, Broker, Gateway, Peer, Pki};
use nix::sys::signal::Signal;
use serde_json::{json, Value as J};

const T: Duration = Duration::from_secs(20);

fn plain(port: u16) -> String {
    format!("host = \"127.0.0.1\"\nport = {port}")
}

fn kind(m: &J) -> &str {
    m["kind"].as_str().unwrap_or("")
}

fn bdseq(m: &J) -> i64 {
    metric(m, "bdSeq")["value"].as_i64().expect("bdSeq value")
}

// [tck-id-topics-nbirth-mqtt] [tck-id-topics-nbirth-seq-num] [tck-id-topics-nbirth-bdseq-included]
// [tck-id-topics-nbirth-rebirth-metric] [tck-id-payloads-dbirth-order] [tck-id-payloads-sequence-num-incrementing]
// [tck-id-principles-persistence-clean-session-311]
#[test]
fn born_node_publishes_nbirth_seq0_then_dbirth_then_contiguous_seq() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let _gw = Gateway::start(&test_config("G1", "gw", &plain(broker.port), ""), &[]);
    let nbirth = peer.wait_for("NBIRTH", T, |m| kind(m) == "NBIRTH");
    assert_eq!(nbirth["topic"], "spBv1.0/G1/NBIRTH/gw");
    assert_eq!(
        (
            nbirth["seq"].as_i64(),
            nbirth["retain"].as_bool(),
            nbirth["qos"].as_i64()
        ),
        (Some(0), Some(false), Some(0))
    );
    assert_eq!(bdseq(&nbirth), 0);
    assert_eq!(metric(&nbirth, "bdSeq")["datatype"], 4, "bdSeq is Int64");
    let rebirth = metric(&nbirth, "Node Control/Rebirth");
    assert_eq!(
        (rebirth["datatype"].as_i64(), rebirth["value"].as_bool()),
        (Some(11), Some(false))
    );
    let dbirth = peer.wait_for("DBIRTH", T, |m| kind(m) != "STATE");
    assert_eq!(
        (dbirth["kind"].as_str(), dbirth["seq"].as_i64()),
        (Some("DBIRTH"), Some(1))
    );
    assert_eq!(dbirth["topic"], "spBv1.0/G1/DBIRTH/gw/press");
    assert!(metric(&dbirth, "Strokes")["value"].as_i64().is_some());
    let mut last = 1;
    for _ in 0..20 {
        let m = peer.wait_for("DDATA", T, |m| kind(m) == "DDATA");
        assert!(m.get("error").is_none(), "pysparkplug decodes our DDATA: {m}");
        let seq = m["seq"].as_i64().expect("seq");
        assert_eq!(seq, (last + 1) % 256, "contiguous seq");
        last = seq;
    }
}

// [tck-id-payloads-ndeath-will-message] [tck-id-payloads-ndeath-bdseq] [tck-id-topics-nbirth-bdseq-increment]
#[test]
fn sigkill_makes_the_broker_deliver_ndeath_with_the_matching_bdseq_and_restart_increments_it() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let cfg = test_config("G2", "gw", &plain(broker.port), "");
    let gw = Gateway::start(&cfg, &[]);
    let first = bdseq(&peer.wait_for("NBIRTH", T, |m| kind(m) == "NBIRTH"));
    let state = gw.kill_keep_state();
    let ndeath = peer.wait_for("the Will NDEATH", T, |m| kind(m) == "NDEATH");
    assert_eq!(bdseq(&ndeath), first, "NDEATH carries the bdSeq of the NBIRTH it ends");
    assert_eq!(ndeath["seq"], J::Null);
    let _gw = Gateway::start_in(state, &cfg, &[]);
    let second = bdseq(&peer.wait_for("NBIRTH after restart", T, |m| kind(m) == "NBIRTH"));
    assert_eq!(second, first + 1, "bdSeq survives the restart and increments");
}

// [tck-id-operational-behavior-data-commands-rebirth-action-2] [tck-id-operational-behavior-data-commands-rebirth-action-3]
#[test]
fn ncmd_rebirth_from_pysparkplug_gives_a_new_nbirth_with_the_same_bdseq() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let _gw = Gateway::start(&test_config("G3", "gw", &plain(broker.port), ""), &[]);
    let first = peer.wait_for("NBIRTH", T, |m| kind(m) == "NBIRTH");
    peer.wait_for("DDATA", T, |m| kind(m) == "DDATA");
    peer.send(json!({"op": "rebirth", "group": "G3", "node": "gw"}));
    let again = peer.wait_for("NBIRTH after rebirth", T, |m| kind(m) == "NBIRTH");
    assert_eq!(again["seq"], 0);
    assert_eq!(bdseq(&again), bdseq(&first));
    let dbirth = peer.wait_for("DBIRTH after rebirth", T, |m| kind(m) != "STATE");
    assert_eq!(
        (dbirth["kind"].as_str(), dbirth["seq"].as_i64()),
        (Some("DBIRTH"), Some(1))
    );
}

// [tck-id-message-flow-edge-node-birth-publish-subscribe] [tck-id-operational-behavior-edge-node-birth-sequence-wait]
// [tck-id-operational-behavior-primary-application-state-with-multiple-servers-walk]
#[test]
fn with_a_primary_host_nothing_is_born_until_state_online_and_offline_state_ends_the_session() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let gw = Gateway::start(
        &test_config("G4", "gw", &plain(broker.port), "primary_host_id = \"scada\""),
        &[],
    );
    gw.wait_log("connected", T);
    let early = peer.collect(Duration::from_millis(1500));
    assert!(
        early.iter().all(|m| kind(m) == "STATE" || m.get("kind").is_none()),
        "nothing before STATE: {early:?}"
    );
    // The host's clock: a STATE from further ahead than node.state_max_skew is refused.
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    peer.send(json!({"op": "state", "host": "scada", "online": true, "timestamp": ts}));
    let nbirth = peer.wait_for("NBIRTH once the host is online", T, |m| kind(m) == "NBIRTH");
    let b = bdseq(&nbirth);
    peer.send(json!({"op": "state", "host": "scada", "online": false, "timestamp": ts + 1}));
    let ndeath = peer.wait_for("NDEATH when the host goes offline", T, |m| kind(m) == "NDEATH");
    assert_eq!(bdseq(&ndeath), b);
    gw.wait_log("disconnected; moving to the next server", T);
    // Reconnected, the retained STATE is offline: no birth until it is online again.
    let quiet = peer.collect(Duration::from_millis(1500));
    assert!(
        quiet.iter().all(|m| kind(m) != "NBIRTH"),
        "no birth while the host is offline: {quiet:?}"
    );
    peer.send(json!({"op": "state", "host": "scada", "online": true, "timestamp": ts + 2}));
    let reborn = peer.wait_for("NBIRTH when the host is back", T, |m| kind(m) == "NBIRTH");
    assert_eq!(bdseq(&reborn), b + 1, "a new MQTT session, a new bdSeq");
    peer.send(json!({"op": "clear_state", "host": "scada"}));
}

// [tck-id-operational-behavior-edge-node-intentional-disconnect-ndeath]
// [tck-id-operational-behavior-edge-node-intentional-disconnect-packet]
#[test]
fn sigterm_publishes_ndeath_disconnects_and_exits_zero() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let mut gw = Gateway::start(&test_config("G5", "gw", &plain(broker.port), ""), &[]);
    let b = bdseq(&peer.wait_for("NBIRTH", T, |m| kind(m) == "NBIRTH"));
    gw.signal(Signal::SIGTERM);
    let ndeath = peer.wait_for("NDEATH", T, |m| kind(m) == "NDEATH");
    assert_eq!(bdseq(&ndeath), b);
    assert!(gw.wait_exit(T).success(), "exit 0:\n{}", gw.log());
    // A clean DISCONNECT: the broker did not publish the Will a second time.
    let after = peer.collect(Duration::from_millis(1000));
    assert!(after.iter().all(|m| kind(m) != "NDEATH"), "one NDEATH only: {after:?}");
}

fn tls_server(broker: &Broker, pki: &Pki, ca: &str, client: Option<(&str, &str)>) -> String {
    let mut s = format!(
        "host = \"127.0.0.1\"\nport = {}\n[mqtt.servers.tls]\nca = \"{}\"\n",
        broker.tls_port.expect("tls listener"),
        pki.path(ca)
    );
    if let Some((cert, key)) = client {
        s.push_str(&format!("cert = \"{}\"\nkey = \"{}\"\n", pki.path(cert), pki.path(key)));
    }
    s
}

#[test]
fn mtls_gateway_with_a_client_certificate_is_born() {
    let pki = Pki::generate();
    let broker = Broker::start(Some(&pki));
    let mut peer = Peer::start(broker.port);
    let server = tls_server(&broker, &pki, "ca.pem", Some(("client.pem", "client.key")));
    let _gw = Gateway::start(&test_config("G6", "gw", &server, ""), &[]);
    let nbirth = peer.wait_for("NBIRTH over mTLS", T, |m| kind(m) == "NBIRTH");
    assert_eq!(nbirth["topic"], "spBv1.0/G6/NBIRTH/gw");
}

#[test]
fn client_without_a_certificate_is_refused_with_a_clear_log_line() {
    let pki = Pki::generate();
    let broker = Broker::start(Some(&pki));
    let server = tls_server(&broker, &pki, "ca.pem", None);
    let gw = Gateway::start(&test_config("G7", "gw", &server, ""), &[]);
    let log = gw.wait_log("connection failed", T);
    assert!(
        log.contains("the broker requires a client certificate") || log.contains("refused our client certificate"),
        "the log says what to fix:\n{log}"
    );
    assert!(
        broker.log().contains("peer did not return a certificate") || broker.log().contains("certificate"),
        "{}",
        broker.log()
    );
}

#[test]
fn broker_certificate_from_another_ca_is_refused_with_a_clear_log_line() {
    let pki = Pki::generate();
    let broker = Broker::start(Some(&pki));
    let server = tls_server(&broker, &pki, "rogue-ca.pem", Some(("client.pem", "client.key")));
    let gw = Gateway::start(&test_config("G8", "gw", &server, ""), &[]);
    let log = gw.wait_log("connection failed", T);
    assert!(
        log.contains("not signed by the configured tls.ca"),
        "the log says what to fix:\n{log}"
    );
}

#[test]
fn client_certificate_from_another_ca_is_refused_by_the_broker() {
    let pki = Pki::generate();
    let broker = Broker::start(Some(&pki));
    let server = tls_server(&broker, &pki, "ca.pem", Some(("rogue-client.pem", "rogue-client.key")));
    let gw = Gateway::start(&test_config("G9", "gw", &server, ""), &[]);
    let log = gw.wait_log("connection failed", T);
    assert!(log.contains("mqtts://127.0.0.1:"), "{log}");
}

#[test]
fn health_ready_and_metrics_endpoints_report_the_session() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let port = common::free_port();
    let _gw = Gateway::start(
        &test_config("G10", "gw", &plain(broker.port), ""),
        &["--metrics-port", &port.to_string()],
    );
    peer.wait_for("NBIRTH", T, |m| kind(m) == "NBIRTH");
    peer.wait_for("DDATA", T, |m| kind(m) == "DDATA");
    let get = |path: &str| common::http_get(port, path);
    assert!(get("/health").starts_with("HTTP/1.1 200"));
    let ready = get("/ready");
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.contains("born, bdSeq 0"),
        "{ready}"
    );
    let metrics = get("/metrics");
    for needle in [
        "spb_messages_published_total{type=\"NBIRTH\"} 1",
        "spb_messages_published_total{type=\"DBIRTH\"} 1",
        "spb_mqtt_connected 1",
        "spb_bdseq 0",
        "spb_device_online{device=\"press\"} 1",
        "spb_plc_read_seconds_count{device=\"press\"}",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in:\n{metrics}");
    }
    assert!(get("/nope").starts_with("HTTP/1.1 404"));
}

#[test]
fn sighup_with_a_changed_tag_set_rebirths_with_the_same_bdseq_and_a_bad_file_changes_nothing() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let cfg = test_config("G11", "gw", &plain(broker.port), "");
    let gw = Gateway::start(&cfg, &[]);
    let b = bdseq(&peer.wait_for("NBIRTH", T, |m| kind(m) == "NBIRTH"));
    let path = gw.dir.path().join("config.toml");
    std::fs::write(&path, "[node]\ngroup_id = \"G11\"\nbad key\n").expect("write");
    gw.signal(Signal::SIGHUP);
    gw.wait_log("reload refused", T);
    let with_new_tag =
        format!("{cfg}[[devices.tags]]\nname = \"Mode\"\naddress = \"cycle(a|b)\"\ndatatype = \"String\"\n");
    std::fs::write(&path, with_new_tag).expect("write");
    gw.signal(Signal::SIGHUP);
    let nbirth = peer.wait_for("NBIRTH after reload", T, |m| kind(m) == "NBIRTH");
    assert_eq!(bdseq(&nbirth), b, "same MQTT session");
    let dbirth = peer.wait_for("DBIRTH with the new tag", T, |m| kind(m) == "DBIRTH");
    metric(&dbirth, "Mode");
}

#[test]
fn dry_run_polls_and_logs_what_it_would_publish_without_a_broker() {
    let port = common::free_port(); // nothing listens here
    let cfg = test_config("G12", "gw", &plain(port), "");
    let gw = Gateway::start(&cfg, &["--dry-run"]);
    let log = gw.wait_log("would publish", T);
    assert!(log.contains("spBv1.0/G12/NBIRTH/gw"), "{log}");
    gw.wait_log("spBv1.0/G12/DDATA/gw/press", T);
}

#[test]
fn check_config_exits_1_and_names_every_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[node]\ngroup_id = \"a\"\nnode_id = \"b\"\nnodeid = 1\n[[mqtt.servers]]\nhost = \"h\"\nport = \"x\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spb-gateway"))
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:4:1: node.nodeid: unknown key (did you mean `node_id`?)"),
        "{err}"
    );
    assert!(
        err.contains("bad.toml:7:8: mqtt.servers[0].port: expected an integer, found string"),
        "{err}"
    );
    // The shipped files pass once the certificates they name exist (the
    // example's are under /etc/spb-gateway: here a PKI of the test's own).
    let pki = Pki::generate();
    for shipped in ["config/example.toml", "config/demo.toml"] {
        let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(shipped))
            .expect("shipped config")
            .replace("/etc/spb-gateway/ca.pem", &pki.path("ca.pem"))
            .replace("/etc/spb-gateway/client.pem", &pki.path("client.pem"))
            .replace("/etc/spb-gateway/client.key", &pki.path("client.key"));
        let copy = dir.path().join("shipped.toml");
        std::fs::write(&copy, text).expect("write");
        let ok = std::process::Command::new(env!("CARGO_BIN_EXE_spb-gateway"))
            .args(["--check-config", "--config"])
            .arg(&copy)
            .output()
            .expect("run");
        assert!(
            ok.status.success(),
            "{shipped}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
    }
}

/// `--check-config` on `text` (written beside the test's files): exit code and stderr.
fn check_config(dir: &std::path::Path, text: &str) -> (Option<i32>, String) {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spb-gateway"))
        .args(["--check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_config_rejects_what_would_fail_at_the_first_connect_tls_files_a_mismatched_key_an_expired_cert_a_birth_too_large(
) {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::generate();
    let node = "[node]\ngroup_id = \"G\"\nnode_id = \"gw\"\n";
    let server = |ca: &str, cert: &str, key: &str| {
        format!("[[mqtt.servers]]\nhost = \"127.0.0.1\"\n[mqtt.servers.tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n")
    };
    let good = server(&pki.path("ca.pem"), &pki.path("client.pem"), &pki.path("client.key"));
    assert_eq!(check_config(dir.path(), &format!("{node}{good}")).0, Some(0));
    // A key file that is not there.
    let missing = server(&pki.path("ca.pem"), &pki.path("client.pem"), "/nonexistent/client.key");
    let (code, err) = check_config(dir.path(), &format!("{node}{missing}"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("mqtt.servers[0].tls.key: cannot read /nonexistent/client.key"),
        "{err}"
    );
    // The rogue client's key with the good client's certificate.
    let mismatch = server(
        &pki.path("ca.pem"),
        &pki.path("client.pem"),
        &pki.path("rogue-client.key"),
    );
    let (code, err) = check_config(dir.path(), &format!("{node}{mismatch}"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("does not match the client certificate"), "{err}");
    // A client certificate that expired, and one not valid for 10 years.
    for (label, from, to, says) in [
        ("expired", 1_500_000_000i64, 1_600_000_000i64, "expired on 2020-09-13"),
        ("future", 2_100_000_000, 2_200_000_000, "is not valid yet"),
    ] {
        let (cert, key) = pki.client_cert_valid(label, from, to);
        let text = format!("{node}{}", server(&pki.path("ca.pem"), &cert, &key));
        let (code, err) = check_config(dir.path(), &text);
        assert_eq!(code, Some(1), "{label}: {err}");
        assert!(err.contains(says), "{label}: {err}");
        // At boot (the unit's ExecStartPre) only a warning: the gateway
        // must start, poll and store while the certificate is replaced.
        let path = dir.path().join("boot.toml");
        std::fs::write(&path, &text).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spb-gateway"))
            .args(["--check-config", "--at-boot", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{label} at boot: {err}");
        assert!(err.contains("warning:") && err.contains(says), "{label} at boot: {err}");
    }
    // 2,000 tags born in one DBIRTH of more than the 16 KiB allowed.
    let big = format!(
        "{node}[mqtt]\nmax_packet_size = \"16KiB\"\n[[mqtt.servers]]\nhost = \"127.0.0.1\"\n[[devices]]\nname = \"d\"\ndriver = \"sim\"\n[devices.sim]\ngenerate = 2000\n"
    );
    let (code, err) = check_config(dir.path(), &big);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("mqtt.max_packet_size: the birth spBv1.0/G/DBIRTH/gw/d is"),
        "{err}"
    );
}

#[test]
fn under_systemd_it_notifies_ready_and_pets_the_watchdog_even_while_the_plc_is_down() {
    use std::os::unix::net::UnixDatagram;
    let broker = Broker::start(None);
    let dir = tempfile::tempdir().expect("tmp");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    // The PLC never answers: its poller keeps failing, but its loop is alive.
    let cfg = test_config("G13", "gw", &plain(broker.port), "").replace(
        "[devices.scan_classes]",
        "[devices.sim]\nunreachable_every = \"1s\"\nunreachable_for = \"1s\"\n[devices.scan_classes]",
    );
    let gw = Gateway::start_with_env(
        dir,
        &cfg,
        &[],
        &[
            ("NOTIFY_SOCKET", sock_path.display().to_string()),
            ("WATCHDOG_USEC", "400000".to_string()),
        ],
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while got.iter().filter(|m: &&String| m.contains("WATCHDOG=1")).count() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "notifications so far: {got:?}\n{}",
            gw.log()
        );
        let n = sock.recv(&mut buf).expect("a notification");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(got[0].contains("READY=1"), "READY first: {got:?}");
    assert!(got.iter().any(|m| m.contains("STATUS=")), "{got:?}");
    // Failures come a reconnect backoff apart (1 s, then 2 s): the third is logged.
    gw.wait_log("device not reachable yet", Duration::from_secs(10));
}

#[test]
fn a_dead_first_server_is_skipped_for_the_next_one_in_the_list() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let dead = common::free_port(); // nothing listens here
    let servers = format!(
        "host = \"127.0.0.1\"\nport = {dead}\n\n[[mqtt.servers]]\n{}",
        plain(broker.port)
    );
    let gw = Gateway::start(&test_config("G14", "gw", &servers, ""), &[]);
    let nbirth = peer.wait_for("NBIRTH via the second server", T, |m| kind(m) == "NBIRTH");
    assert_eq!(nbirth["topic"], "spBv1.0/G14/NBIRTH/gw");
    let log = gw.log();
    assert!(
        log.contains(&format!("127.0.0.1:{dead}")) && log.contains("nothing listens there"),
        "{log}"
    );
}

// [tck-id-operational-behavior-device-ddeath] [tck-id-topics-ddeath-seq-num]
#[test]
fn an_unreachable_plc_gets_ddeath_and_dbirth_when_it_answers_again() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let cfg = test_config("G15", "gw", &plain(broker.port), "").replace(
        "[devices.scan_classes]",
        "fail_after = 1\n[devices.sim]\nunreachable_every = \"3s\"\nunreachable_for = \"1s\"\n[devices.scan_classes]",
    );
    let _gw = Gateway::start(&cfg, &[]);
    peer.wait_for("the first DBIRTH", T, |m| kind(m) == "DBIRTH");
    let ddeath = peer.wait_for("DDEATH", T, |m| kind(m) == "DDEATH");
    assert_eq!(ddeath["topic"], "spBv1.0/G15/DDEATH/gw/press");
    let seq = ddeath["seq"].as_i64().expect("DDEATH has a seq");
    let again = peer.wait_for("DBIRTH after the outage", T, |m| kind(m) == "DBIRTH");
    assert_eq!(
        again["seq"].as_i64(),
        Some((seq + 1) % 256),
        "DBIRTH follows DDEATH in seq order"
    );
    assert!(
        metric(&again, "Strokes")["value"].as_i64().is_some(),
        "DBIRTH carries current values"
    );
}

#[test]
fn samples_stored_while_offline_survive_a_restart_and_are_replayed_as_historical() {
    let dead = common::free_port(); // no broker yet: everything polled is stored
    let http = common::free_port();
    let cfg = common::with_http(test_config("G16", "gw", &plain(dead), ""), http);
    let mut offline = Gateway::start(&cfg, &[]);
    offline.wait_log("connection failed", T);
    std::thread::sleep(Duration::from_millis(1500));
    // The store shows on /ready and in /metrics while it fills.
    let ready = common::http_get(http, "/ready");
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    let line = ready
        .lines()
        .find(|l| l.starts_with("store: "))
        .unwrap_or_else(|| panic!("{ready}"));
    let samples: u64 = line["store: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("count");
    assert!(samples > 0, "{line}");
    let metrics = common::http_get(http, "/metrics");
    let age: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("spb_queue_oldest_age_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no oldest age in {metrics}"));
    assert!(age >= 1, "the first sample was stored over a second ago: {age}");
    offline.signal(Signal::SIGTERM);
    assert!(offline.wait_exit(T).success(), "{}", offline.log());
    let state = offline.kill_keep_state();
    assert!(
        state.path().join("state/queue").exists(),
        "the offline run stored on disk"
    );
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let gw = Gateway::start_in(state, &test_config("G16", "gw", &plain(broker.port), ""), &[]);
    let nbirth = peer.wait_for("NBIRTH", T, |m| kind(m) == "NBIRTH");
    let born_at = nbirth["timestamp"].as_u64().expect("timestamp");
    let historical = peer.wait_for("historical DDATA", T, |m| {
        kind(m) == "DDATA"
            && m["metrics"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|x| x["is_historical"] == true))
    });
    for m in historical["metrics"].as_array().expect("metrics") {
        assert_eq!(m["is_historical"], true);
        assert!(
            m["timestamp"].as_u64().expect("ts") < born_at,
            "stored before this session was born: {m}"
        );
    }
    assert!(
        gw.log()
            .contains("stored samples from before the restart will be replayed"),
        "{}",
        gw.log()
    );
    // Replayed and drained: the queue is closed and its directory deleted.
    let queue = gw.dir.path().join("state/queue");
    let deadline = std::time::Instant::now() + T;
    while queue.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the drained store is still on disk"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_store_drops_the_oldest_samples_with_an_error_and_a_counter_and_keeps_running() {
    let dead = common::free_port(); // no broker: everything polled is stored
    let http = common::free_port();
    let cfg = common::with_http(test_config("G17", "gw", &plain(dead), ""), http).replace(
        "[devices.scan_classes]",
        "[devices.sim]\ngenerate = 5000\ngenerate_scan_class = \"fast\"\n[devices.scan_classes]",
    ) + "\n[store]\nmax_bytes = \"1MiB\"\n";
    let mut gw = Gateway::start(&cfg, &[]);
    gw.wait_log("store full: dropped the oldest samples", T);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        gw.child.try_wait().expect("status").is_none(),
        "still running: {}",
        gw.log()
    );
    let metrics = common::http_get(http, "/metrics");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    assert!(value("spb_dropped_samples_total") > 0.0, "drops are counted");
    assert!(value("spb_queue_bytes") <= 1024.0 * 1024.0, "the bound holds");
    assert!(value("spb_queue_depth") > 0.0, "the newest samples are kept");
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(T).success(), "{}", gw.log());
}

#[test]
fn decode_refuses_non_hex_input_with_an_error_and_a_closed_pipe_is_a_quiet_exit() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_spb-gateway");
    let out = Command::new(bin)
        .args(["decode", "--hex"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            // "0é1": the old reader sliced it mid-character and panicked.
            c.stdin.take().expect("stdin").write_all("0é1".as_bytes())?;
            c.wait_with_output()
        })
        .expect("run decode");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a hex digit"));
    // The reader of stdout is gone before anything is printed (`| head -0`).
    let payload = spb::sparkplug::Payload {
        timestamp: Some(1),
        metrics: vec![spb::sparkplug::Metric::new("T", spb::sparkplug::Value::Int32(7), 1)],
        ..Default::default()
    }
    .encode()
    .expect("encode");
    let mut child = Command::new(bin)
        .arg("decode")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run decode");
    drop(child.stdout.take());
    child.stdin.take().expect("stdin").write_all(&payload).expect("payload");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A box without a real-time clock boots at 1970, where its client
/// certificate is "not valid yet": the gateway polls and stores from its
/// first second anyway, says why at each connect, and the broker decides.
/// (Here the certificate is valid only from 2036, the clock being right.)
#[test]
fn a_client_certificate_not_yet_valid_does_not_stop_polling_or_storing() {
    let pki = Pki::generate();
    let broker = Broker::start(Some(&pki));
    let (cert, key) = pki.client_cert_valid("future", 2_100_000_000, 2_200_000_000);
    let server = format!(
        "host = \"127.0.0.1\"\nport = {}\n[mqtt.servers.tls]\nca = \"{}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nserver_name = \"localhost\"\n",
        broker.tls_port.expect("mTLS listener"),
        pki.path("ca.pem"),
    );
    let http = common::free_port();
    let gw = Gateway::start(&common::with_http(test_config("TC", "gw", &server, ""), http), &[]);
    gw.wait_log("device reachable", Duration::from_secs(20));
    gw.wait_log("is not valid yet (valid from 2036", Duration::from_secs(20));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while common::prom_value(http, "spb_stored_samples_total").unwrap_or(0.0) < 5.0 {
        assert!(std::time::Instant::now() < deadline, "nothing stored:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A gateway of group `group` with 10,000 sim devices of one tag each (read
/// every 10 s), reconnecting after `backoff_min` (at most 1 s).
fn ten_thousand_devices(group: &str, broker: u16, http: u16, backoff_min: &str) -> String {
    let devices: String = (0..10_000)
        .map(|i| {
            format!(
                "[[devices]]\nname = \"d{i}\"\ndriver = \"sim\"\n[devices.scan_classes]\nslow = \"10s\"\n[[devices.tags]]\nname = \"T\"\naddress = \"counter\"\ndatatype = \"UInt32\"\nscan_class = \"slow\"\n"
            )
        })
        .collect();
    format!(
        "[node]\ngroup_id = \"{group}\"\nnode_id = \"gw\"\n[mqtt]\nbackoff_min = \"{backoff_min}\"\nbackoff_max = \"1s\"\n[[mqtt.servers]]\nhost = \"127.0.0.1\"\nport = {broker}\n[telemetry]\nlisten = \"127.0.0.1:{http}\"\nlog_format = \"human\"\n{devices}"
    )
}

/// 10,000 devices born at one connect: NBIRTH and 10,000 DBIRTHs leave in one
/// go. The task that drives the MQTT client and the runtime that feeds it
/// must not wait on each other (two bounded channels); every birth arrives.
#[test]
fn ten_thousand_devices_born_at_once_all_reach_the_broker() {
    let mut broker = Broker::start(None);
    let http = common::free_port();
    let cfg = ten_thousand_devices("Storm", broker.port, http, "200ms");
    let mut gw = Gateway::start(&cfg, &[]);
    gw.wait_log("health and metrics on", Duration::from_secs(60));
    let births = || common::prom_value(http, "spb_messages_published_total{type=\"DBIRTH\"}").unwrap_or(0.0);
    let wait_births = |n: f64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while births() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} DBIRTHs published:\n{}",
                births(),
                gw.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // At the first connect the devices come online one by one; after a
    // reconnect all 10,000 are online and born in one go.
    wait_births(10_000.0);
    broker.kill();
    broker.restart();
    wait_births(20_000.0);
    // The loop is alive: it answers and stops cleanly.
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
}

/// A flood of commands while 10,000 devices are born in one go: the task
/// that reads the connection waits for the loop to take its messages, and
/// the loop, publishing the births, must never wait for that task in turn
/// (docs/ARCHITECTURE.md, "The MQTT link"). Every birth arrives, the flood
/// is read and refused, and the loop answers and stops cleanly.
#[test]
fn a_flood_of_commands_during_a_birth_storm_stalls_neither_the_births_nor_the_loop() {
    use std::io::Write;
    let mut broker = Broker::start(None);
    let http = common::free_port();
    let cfg = ten_thousand_devices("Flood", broker.port, http, "1s");
    let mut gw = Gateway::start(&cfg, &[]);
    gw.wait_log("health and metrics on", Duration::from_secs(60));
    let value = |name: &str| common::prom_value(http, name).unwrap_or(0.0);
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} never happened; {} DBIRTHs, {} messages rejected:\n{}",
                value("spb_messages_published_total{type=\"DBIRTH\"}"),
                value("spb_rejected_messages_total"),
                gw.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let births = || value("spb_messages_published_total{type=\"DBIRTH\"}");
    wait_for("10,000 DBIRTHs", &|| births() >= 10_000.0);
    // The broker goes away; while the gateway waits to reconnect, a client
    // starts flooding its command topic, so the flood is running when all
    // 10,000 devices are born again at the next connect.
    broker.kill();
    broker.restart();
    // Killed however the test ends: a flood left running fills memory.
    struct Flood(std::process::Child);
    impl Drop for Flood {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut flood = Flood(
        std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "0", "-l"])
            .args(["-t", "spBv1.0/Flood/NCMD/gw"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto_pub"),
    );
    let mut stdin = flood.0.stdin.take().expect("stdin");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = stop.clone();
    let writer = std::thread::spawn(move || {
        // Not a Sparkplug payload: each one is refused and counted. At most
        // a million of them.
        let chunk = "not a command\n".repeat(1000);
        for _ in 0..1000 {
            if flooding.load(std::sync::atomic::Ordering::Relaxed) || stdin.write_all(chunk.as_bytes()).is_err() {
                break;
            }
        }
    });
    wait_for("20,000 DBIRTHs", &|| births() >= 20_000.0);
    wait_for("the flood refused", &|| {
        value("spb_rejected_messages_total") >= 10_000.0
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(flood);
    writer.join().expect("writer");
    // The summary of what was held back comes once its second is over.
    let log = gw.wait_log(
        "warnings about inbound messages held back in the last second",
        Duration::from_secs(10),
    );
    let refused = log.matches("message rejected").count();
    assert!(
        refused < 2_000,
        "a flood costs a few lines a second, not one per message: {refused} lines"
    );
    let health = common::http_get(http, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "the loop is alive: {health}");
    gw.signal(Signal::SIGTERM);
    assert!(
        gw.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        gw.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
}

/// 100,000 changes in one scan with `max_data_metrics = 10`: 10,000 DDATA
/// in a burst, and the loop keeps up (no wait cycle with the MQTT task).
#[test]
fn a_hundred_thousand_changes_in_one_scan_as_ten_thousand_ddata_all_leave() {
    let broker = Broker::start(None);
    let http = common::free_port();
    let cfg = format!(
        "[node]\ngroup_id = \"Burst\"\nnode_id = \"gw\"\nmax_data_metrics = 10\n[mqtt]\nmax_packet_size = \"16MiB\"\n[[mqtt.servers]]\nhost = \"127.0.0.1\"\nport = {}\n[telemetry]\nlisten = \"127.0.0.1:{http}\"\nlog_format = \"human\"\n[[devices]]\nname = \"big\"\ndriver = \"sim\"\ntimeout = \"10s\"\n[devices.scan_classes]\nscan = \"5s\"\n[devices.sim]\ngenerate = 100000\ngenerate_signal = \"random_walk(step=0.5)\"\ngenerate_datatype = \"Double\"\ngenerate_scan_class = \"scan\"\n",
        broker.port
    );
    let mut gw = Gateway::start(&cfg, &[]);
    gw.wait_log("health and metrics on", Duration::from_secs(60));
    let ddata = || common::prom_value(http, "spb_messages_published_total{type=\"DDATA\"}").unwrap_or(0.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while ddata() < 10_000.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} DDATA published:\n{}",
            ddata(),
            gw.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
}
