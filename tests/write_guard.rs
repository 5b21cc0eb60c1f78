//! The command guard in the running gateway, driven by an independent
//! Primary Host (pysparkplug) through a real mosquitto: the write lock
//! (`Node Control/Write Lock`) is declared in NBIRTH, set and cleared by
//! NCMD and reported in NDATA; the file's lock and `unlock_by_command =
//! false` hold against an NCMD; with write-back off every write is refused
//! and audited with its reason; malformed commands write nothing and stop nothing.

mod common;

use std::time::Duration;

use common::{http_get, metric, prom_value, test_config, Broker, Gateway, Peer};
use serde_json::{json, Value as J};

const T: Duration = Duration::from_secs(20);
const LOCK: &str = "Node Control/Write Lock";

fn gateway(group: &str, broker: u16, http: u16, commands: &str) -> Gateway {
    let cfg = test_config(group, "gw", &format!("host = \"127.0.0.1\"\nport = {broker}"), "")
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{http}\""))
        .replace(
            "[telemetry]",
            &format!("[commands]\n{commands}\nmax_metrics = 10\n\n[telemetry]"),
        )
        .replace(
            "address = \"counter\"\ndatatype = \"UInt32\"",
            "address = \"counter\"\ndatatype = \"UInt32\"\nwritable = true\nmax = 100",
        );
    Gateway::start(&cfg, &[])
}

fn lock_command(peer: &mut Peer, group: &str, value: bool) {
    peer.send(json!({"op": "command", "group": group, "node": "gw",
        "metrics": [{"name": LOCK, "type": "Boolean", "value": value}]}));
}

fn ndata_lock(peer: &mut Peer, group: &str, value: bool) -> J {
    let topic = format!("spBv1.0/{group}/NDATA/gw");
    peer.wait_for(&format!("NDATA {LOCK} = {value}"), T, |m| {
        m["topic"] == topic.as_str()
            && m["metrics"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|x| x["name"] == LOCK && x["value"] == value))
    })
}

#[test]
fn the_write_lock_is_born_set_and_cleared_by_ncmd_and_reported_in_ndata() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let http = common::free_port();
    let gw = gateway("WG1", broker.port, http, "enabled = true");
    let nbirth = peer.wait_for("NBIRTH", T, |m| m["topic"] == "spBv1.0/WG1/NBIRTH/gw");
    assert_eq!(metric(&nbirth, LOCK)["value"], false, "{nbirth}");
    assert_eq!(metric(&nbirth, LOCK)["datatype"], 11, "Boolean: {nbirth}");
    peer.wait_for("DBIRTH", T, |m| m["topic"] == "spBv1.0/WG1/DBIRTH/gw/press");

    lock_command(&mut peer, "WG1", true);
    ndata_lock(&mut peer, "WG1", true);
    assert_eq!(prom_value(http, "spb_write_locked"), Some(1.0));
    gw.wait_log("write lock set", T);
    // Under the lock a write is refused, and says why.
    peer.send(json!({"op": "command", "group": "WG1", "node": "gw", "device": "press",
        "metrics": [{"name": "Strokes", "type": "UInt32", "value": 5}]}));
    let log = gw.wait_log("the write lock is set", T);
    assert!(log.contains("Strokes") && log.contains("\"refused\""), "{log}");

    lock_command(&mut peer, "WG1", false);
    ndata_lock(&mut peer, "WG1", false);
    assert_eq!(prom_value(http, "spb_write_locked"), Some(0.0));
    // (Counted after the NDATA leaves: wait for the scrape to show it.)
    let deadline = std::time::Instant::now() + T;
    loop {
        let metrics = http_get(http, "/metrics");
        if metrics.contains("spb_commands_total{outcome=\"applied\"} 2")
            && metrics.contains("spb_commands_total{outcome=\"refused\"} 1")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_files_lock_and_a_forbidden_unlock_hold_against_an_ncmd() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let http = common::free_port();
    let gw = gateway("WG2", broker.port, http, "write_lock = true");
    let nbirth = peer.wait_for("NBIRTH", T, |m| m["topic"] == "spBv1.0/WG2/NBIRTH/gw");
    assert_eq!(metric(&nbirth, LOCK)["value"], true, "born locked: {nbirth}");
    lock_command(&mut peer, "WG2", false);
    gw.wait_log("cleared only there", T);
    assert_eq!(prom_value(http, "spb_write_locked"), Some(1.0));
    drop(gw);

    let http = common::free_port();
    let gw = gateway("WG3", broker.port, http, "unlock_by_command = false");
    peer.wait_for("NBIRTH", T, |m| m["topic"] == "spBv1.0/WG3/NBIRTH/gw");
    lock_command(&mut peer, "WG3", true);
    ndata_lock(&mut peer, "WG3", true);
    lock_command(&mut peer, "WG3", false);
    let log = gw.wait_log("cannot be cleared by command", T);
    assert!(log.contains("unlock_by_command = false"), "{log}");
    assert_eq!(prom_value(http, "spb_write_locked"), Some(1.0));
    // No NDATA cleared it: the refusal's NDATA says it is still set.
    let later = peer.collect(Duration::from_millis(700));
    assert!(
        !later.iter().any(|m| m["topic"] == "spBv1.0/WG3/NDATA/gw"
            && m["metrics"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|x| x["name"] == LOCK && x["value"] == false))),
        "{later:#?}"
    );
}

#[test]
fn every_write_is_refused_with_its_reason_and_malformed_commands_stop_nothing() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let http = common::free_port();
    let mut gw = gateway("WG4", broker.port, http, "");
    peer.wait_for("DBIRTH", T, |m| m["topic"] == "spBv1.0/WG4/DBIRTH/gw/press");
    // Not writable; a wrong type; an undeclared metric: each refused, named.
    peer.send(
        json!({"op": "command", "group": "WG4", "node": "gw", "device": "press", "metrics": [
        {"name": "Pressure", "type": "Float", "value": 1.5},
        {"name": "Strokes", "type": "String", "value": "12"},
        {"name": "Nope", "type": "Int32", "value": 1}]}),
    );
    let log = gw.wait_log("Nope", T);
    // The guard's first rule: write-back is off in this version's file.
    assert_eq!(log.matches("command write-back is disabled").count(), 3, "{log}");
    // The write lock with the wrong type is refused, not applied.
    peer.send(json!({"op": "command", "group": "WG4", "node": "gw",
        "metrics": [{"name": LOCK, "type": "Int32", "value": 1}]}));
    gw.wait_log("a Int32 value for a Boolean tag", T);
    assert_eq!(prom_value(http, "spb_write_locked"), Some(0.0));
    // Garbage on the command topics: rejected, counted; the node keeps publishing.
    for topic in ["spBv1.0/WG4/NCMD/gw", "spBv1.0/WG4/DCMD/gw/press"] {
        common::mosquitto_pub(broker.port, topic, "\u{8}\u{1}garbage".as_bytes(), false);
    }
    let sent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    peer.wait_for("DDATA taken after the garbage", T, |m| {
        m["topic"] == "spBv1.0/WG4/DDATA/gw/press" && m["timestamp"].as_u64().is_some_and(|t| t > sent)
    });
    let deadline = std::time::Instant::now() + T;
    while prom_value(http, "spb_rejected_messages_total").unwrap_or(0.0) < 2.0 {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gw.child.try_wait().expect("wait").is_none(), "still running");
}
