//! Command write-back in the running gateway, end to end: an independent
//! Primary Host (pysparkplug) sends DCMD through a real mosquitto; the
//! write reaches python-snap7's S7 server and cpppo's Logix simulator,
//! whose own clients (python-snap7, pylogix) read the value back; the
//! gateway confirms it by reading back and says so on the tag's DDATA
//! (properties `writeOutcome`, `writeRequest`, `writeReason`, decoded with
//! the Sparkplug schema); a PLC that puts its own value back makes the
//! write `failed`; every refusal of the guard is audited with its reason,
//! in the journal and the audit file; `Node Control/Reboot` restarts the
//! service only when enabled, and `Node Control/Next Server` is audited.

mod common;

use std::time::{Duration, Instant};

use common::plc::{Cpppo, PeerClient, S7Impl, S7Server};
use common::{http_get, metric, prom_value, test_config, Broker, Gateway, Peer};
use serde_json::{json, Value as J};

const T: Duration = Duration::from_secs(20);

/// A Float as the peer prints it (little-endian bit hex).
fn f(v: f32) -> J {
    J::String(v.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect())
}

/// A gateway with write-back on (plus `commands`), its devices appended.
fn gateway(group: &str, broker: u16, http: u16, commands: &str, devices: &str) -> Gateway {
    let cfg = common::with_http(
        test_config(group, "gw", &format!("host = \"127.0.0.1\"\nport = {broker}"), ""),
        http,
    )
    .replace("[telemetry]", &format!("[commands]\n{commands}\n\n[telemetry]"));
    // The common press (sim) stays; the test's devices follow it.
    Gateway::start(&format!("{cfg}\n{devices}"), &[])
}

fn dcmd(peer: &mut Peer, group: &str, device: &str, metrics: J) {
    peer.send(json!({"op": "command", "group": group, "node": "gw", "device": device, "metrics": metrics}));
}

/// The DDATA metric that reports the write `request`, whenever it came
/// (writes to two devices end in either order).
fn outcome(peer: &mut Peer, group: &str, device: &str, name: &str, request: &str) -> J {
    let topic = format!("spBv1.0/{group}/DDATA/gw/{device}");
    let find = |peer: &Peer| {
        peer.seen.iter().rev().find_map(|m| {
            (m["topic"] == topic.as_str())
                .then(|| m["metrics"].as_array())
                .flatten()
                .and_then(|ms| {
                    ms.iter()
                        .find(|x| x["name"] == name && x["properties"]["writeRequest"] == request)
                        .cloned()
                })
        })
    };
    loop {
        if let Some(m) = find(peer) {
            return m;
        }
        peer.wait_for(&format!("the outcome of {request}"), T, |m| {
            m["topic"] == topic.as_str()
        });
    }
}

/// The audit file's lines (JSON), once `n` are there.
fn audit(gw: &Gateway, n: usize) -> Vec<J> {
    let path = gw.dir.path().join("state/audit.log");
    let deadline = Instant::now() + T;
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<J> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} audit lines, not {n}:\n{text}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last line for `metric` and `request` (an accepted write has two:
/// `accepted`, synced before the PLC is written, then its outcome).
fn audited<'a>(lines: &'a [J], metric: &str, request: &str) -> &'a J {
    lines
        .iter()
        .rev()
        .find(|l| l["metric"] == metric && (request.is_empty() || l["request"] == request))
        .unwrap_or_else(|| panic!("no audit line for {metric} {request}: {lines:#?}"))
}

fn counted(http: u16, outcome: &str, n: u64) {
    let want = format!("spb_commands_total{{outcome=\"{outcome}\"}} {n}\n");
    let deadline = Instant::now() + T;
    loop {
        let m = http_get(http, "/metrics");
        if m.contains(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "no {want:?} in\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_allowed_write_reaches_the_s7_plc_is_read_back_and_confirmed_and_one_the_plc_undoes_fails() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    // DB3 is held by the "PLC program": a write is acknowledged, then undone.
    let s7 = S7Server::start_holding(S7Impl::Python, &[3]);
    let mut client = PeerClient::snap7(s7.port);
    // Bits on Snap7's C++ server, which writes a single bit as a CPU does
    // (python-snap7's server stores a bit write as its whole byte).
    let bits = S7Server::start(S7Impl::Node);
    let mut bits_client = PeerClient::snap7(bits.port);
    bits_client.call(json!({"op":"rawset","area":"DB","db":1,"offset":6,"hex":"a4"}));
    let http = common::free_port();
    let devices = format!(
        r#"
[[devices]]
name = "oven"
driver = "s7"
address = "127.0.0.1:{port}"
[devices.scan_classes]
default = "5s"
[[devices.tags]]
name = "Setpoint"
address = "DB1.DBD0"
datatype = "Float"
writable = true
min = 0
max = 250
[[devices.tags]]
name = "Mode"
address = "DB1.DBW4"
datatype = "Int16"
writable = true
allowed = [1, 2, 3]
[[devices.tags]]
name = "Held"
address = "DB3.DBW0"
datatype = "Int16"
writable = true

[[devices]]
name = "valve"
driver = "s7"
address = "127.0.0.1:{bits}"
[devices.scan_classes]
default = "5s"
[[devices.tags]]
name = "Run"
address = "DB1.DBX6.0"
datatype = "Boolean"
writable = true
[[devices.tags]]
name = "Guard door"
address = "DB1.DBX6.2"
datatype = "Boolean"
"#,
        port = s7.port,
        bits = bits.port,
    );
    let gw = gateway("WB1", broker.port, http, "enabled = true", &devices);
    // Both births, in whichever order they come.
    let births = |peer: &Peer| {
        let find = |d: &str| {
            let topic = format!("spBv1.0/WB1/DBIRTH/gw/{d}");
            peer.seen.iter().find(|m| m["topic"] == topic.as_str()).cloned()
        };
        find("oven").zip(find("valve"))
    };
    let (oven, valve) = loop {
        if let Some(b) = births(&peer) {
            break b;
        }
        peer.wait_for("the DBIRTHs", T, |m| {
            m["topic"]
                .as_str()
                .is_some_and(|t| t.starts_with("spBv1.0/WB1/DBIRTH/gw/"))
        });
    };
    assert_eq!(metric(&oven, "Setpoint")["value"], f(0.0));
    assert_eq!(metric(&valve, "Guard door")["value"], true);

    dcmd(
        &mut peer,
        "WB1",
        "oven",
        json!([
            {"name": "Setpoint", "type": "Float", "value": 182.5, "properties": {"writeRequest": "req-1"}},
            {"name": "Mode", "type": "Int16", "value": 2, "properties": {"writeRequest": "req-2"}},
        ]),
    );
    dcmd(
        &mut peer,
        "WB1",
        "valve",
        json!([{"name": "Run", "type": "Boolean", "value": true, "properties": {"writeRequest": "req-3"}}]),
    );
    // Each confirmed on its own DDATA, not waiting for the 5 s scan.
    let sp = outcome(&mut peer, "WB1", "oven", "Setpoint", "req-1");
    assert_eq!(sp["properties"]["writeOutcome"], "confirmed", "{sp}");
    assert_eq!(sp["value"], f(182.5));
    assert!(sp["properties"].get("writeReason").is_none(), "{sp}");
    let mode = outcome(&mut peer, "WB1", "oven", "Mode", "req-2");
    assert_eq!(
        (&mode["properties"]["writeOutcome"], &mode["value"]),
        (&json!("confirmed"), &json!(2))
    );
    let run = outcome(&mut peer, "WB1", "valve", "Run", "req-3");
    assert_eq!(
        (&run["properties"]["writeOutcome"], &run["value"]),
        (&json!("confirmed"), &json!(true))
    );
    // The PLCs hold them, as their own client reads; the other bits of the
    // byte are untouched (0xa4 with bit 0 set).
    let get = |c: &mut PeerClient, offset: u32, ty: &str| {
        c.call(json!({"op":"get","db":1,"offset":offset,"type":ty}))["value"].clone()
    };
    assert_eq!(get(&mut client, 0, "REAL"), json!(182.5));
    assert_eq!(get(&mut client, 4, "INT"), json!(2));
    let byte = bits_client.call(json!({"op":"raw","area":"DB","db":1,"offset":6,"size":1}));
    assert_eq!(byte["hex"], "a5", "only bit 0 changed: {byte}");

    // The held block takes the write and puts its value back: failed.
    dcmd(
        &mut peer,
        "WB1",
        "oven",
        json!([{"name": "Held", "type": "Int16", "value": 7, "properties": {"writeRequest": "req-4"}}]),
    );
    let held = outcome(&mut peer, "WB1", "oven", "Held", "req-4");
    assert_eq!(held["properties"]["writeOutcome"], "failed", "{held}");
    let reason = held["properties"]["writeReason"].as_str().unwrap_or_default();
    assert!(reason.contains("read back 0 instead of 7"), "{reason}");
    assert_eq!(held["value"], 0, "the value the PLC holds");
    let r = client.call(json!({"op":"get","db":3,"offset":0,"type":"INT"}));
    assert_eq!(r["value"], 0);

    // Audited on the box: old and new values, outcome, the host's id; each
    // write's `accepted` line came first.
    let lines = audit(&gw, 8);
    for r in ["req-1", "req-2", "req-3", "req-4"] {
        let mine: Vec<&J> = lines.iter().filter(|l| l["request"] == r).collect();
        assert_eq!(mine.len(), 2, "{r}: {mine:?}");
        assert_eq!(mine[0]["outcome"], "accepted", "{r}: {mine:?}");
    }
    let l = audited(&lines, "Setpoint", "req-1");
    assert_eq!(
        (&l["command"], &l["device"], &l["old"], &l["new"], &l["outcome"]),
        (
            &json!("DCMD"),
            &json!("oven"),
            &json!("0"),
            &json!("182.5"),
            &json!("confirmed")
        )
    );
    let l = audited(&lines, "Held", "req-4");
    assert_eq!(l["outcome"], "failed");
    assert!(l["reason"].as_str().is_some_and(|r| r.contains("instead of 7")), "{l}");
    counted(http, "confirmed", 3);
    counted(http, "failed", 1);
    let log = gw.log();
    assert!(
        log.contains("spb::audit") && log.contains("req-4"),
        "the journal has it too:\n{log}"
    );
}

#[test]
fn an_allowed_write_reaches_the_logix_plc_type_preserved_and_is_confirmed() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let logix = Cpppo::start(&["Speed=REAL", "Batch=DINT", "Enable=BOOL"]);
    let mut client = PeerClient::pylogix(logix.port);
    let http = common::free_port();
    let devices = format!(
        r#"
[[devices]]
name = "line"
driver = "logix"
address = "127.0.0.1:{port}"
[devices.scan_classes]
default = "5s"
[[devices.tags]]
name = "Speed"
address = "Speed"
datatype = "Float"
writable = true
max = 3000
[[devices.tags]]
name = "Batch"
address = "Batch"
datatype = "Int32"
writable = true
[[devices.tags]]
name = "Enable"
address = "Enable"
datatype = "Boolean"
writable = true
"#,
        port = logix.port
    );
    let gw = gateway("WB2", broker.port, http, "enabled = true", &devices);
    peer.wait_for("DBIRTH line", T, |m| m["topic"] == "spBv1.0/WB2/DBIRTH/gw/line");
    dcmd(
        &mut peer,
        "WB2",
        "line",
        json!([
            {"name": "Speed", "type": "Float", "value": 1250.5, "properties": {"writeRequest": "l-1"}},
            {"name": "Batch", "type": "Int32", "value": -40000, "properties": {"writeRequest": "l-2"}},
            {"name": "Enable", "type": "Boolean", "value": true, "properties": {"writeRequest": "l-3"}},
        ]),
    );
    let speed = outcome(&mut peer, "WB2", "line", "Speed", "l-1");
    assert_eq!(
        (&speed["properties"]["writeOutcome"], &speed["value"]),
        (&json!("confirmed"), &f(1250.5))
    );
    let batch = outcome(&mut peer, "WB2", "line", "Batch", "l-2");
    assert_eq!(
        (&batch["properties"]["writeOutcome"], &batch["value"]),
        (&json!("confirmed"), &json!(-40000))
    );
    let enable = outcome(&mut peer, "WB2", "line", "Enable", "l-3");
    assert_eq!(enable["properties"]["writeOutcome"], "confirmed", "{enable}");
    assert_eq!(client.call(json!({"op":"read","tag":"Speed"}))["value"], json!(1250.5));
    assert_eq!(client.call(json!({"op":"read","tag":"Batch"}))["value"], json!(-40000));
    assert_eq!(client.call(json!({"op":"read","tag":"Enable"}))["value"], json!(true));
    let lines = audit(&gw, 6);
    assert_eq!(audited(&lines, "Batch", "l-2")["new"], "-40000");
    counted(http, "confirmed", 3);
}

/// The sim press with writable tags of every kind of guard, and a device
/// that never answers (offline).
fn guarded_devices(dead_port: u16) -> String {
    format!(
        r#"
[[devices]]
name = "mixer"
driver = "sim"
[devices.scan_classes]
default = "5s"
[[devices.tags]]
name = "Speed"
address = "const(10)"
datatype = "Float"
writable = true
min = 0
max = 100
max_rate = 2
[[devices.tags]]
name = "Mode"
address = "const(1)"
datatype = "Int16"
writable = true
allowed = [1, 2]
[[devices.tags]]
name = "Recipe"
address = "cycle(A)"
datatype = "String"
writable = true
allowed = ["A", "B"]
[[devices.tags]]
name = "Slow"
address = "const(0)"
datatype = "Int32"
writable = true
cooldown = "1h"
[[devices.tags]]
name = "Level"
address = "const(5)"
datatype = "Float"

[[devices]]
name = "ghost"
driver = "s7"
address = "127.0.0.1:{dead_port}"
timeout = "300ms"
[[devices.tags]]
name = "Setpoint"
address = "DB1.DBD0"
datatype = "Float"
writable = true
"#
    )
}

// [tck-id-operational-behavior-data-commands-dcmd-verb] (DCMD is the host's write)
#[test]
fn every_refusal_is_audited_with_its_reason_and_reported_to_the_host_on_the_tags_ddata() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let http = common::free_port();
    let dead = common::free_port();
    let mut gw = gateway("WB3", broker.port, http, "enabled = true", &guarded_devices(dead));
    peer.wait_for("DBIRTH mixer", T, |m| m["topic"] == "spBv1.0/WB3/DBIRTH/gw/mixer");
    let cases: &[(&str, J, &str)] = &[
        ("Level", json!({"type": "Float", "value": 1.0}), "not writable"),
        (
            "Speed",
            json!({"type": "Float", "value": 150.0}),
            "above the tag's max (100)",
        ),
        (
            "Speed",
            json!({"type": "Float", "value": -1.0}),
            "below the tag's min (0)",
        ),
        (
            "Speed",
            json!({"type": "String", "value": "12"}),
            "a String value for a Float tag",
        ),
        (
            "Mode",
            json!({"type": "Double", "value": 3.7}),
            "a Double value for a Int16 tag",
        ),
        (
            "Mode",
            json!({"type": "Int16", "value": 3}),
            "not one of the tag's allowed values (1, 2)",
        ),
        (
            "Recipe",
            json!({"type": "String", "value": "C"}),
            "not one of the tag's allowed values (\"A\", \"B\")",
        ),
    ];
    for (i, (name, v, why)) in cases.iter().enumerate() {
        let request = format!("bad-{i}");
        let mut m = v.clone();
        m["name"] = json!(name);
        m["properties"] = json!({"writeRequest": request});
        dcmd(&mut peer, "WB3", "mixer", json!([m]));
        let o = outcome(&mut peer, "WB3", "mixer", name, &request);
        assert_eq!(o["properties"]["writeOutcome"], "refused", "{o}");
        let reason = o["properties"]["writeReason"].as_str().unwrap_or_default();
        assert!(reason.contains(why), "{name}: {reason:?} should say {why:?}");
    }
    // Rate and cooldown count accepted writes: two pass, the third is too fast.
    for (i, v) in [20.0, 30.0, 40.0].iter().enumerate() {
        dcmd(
            &mut peer,
            "WB3",
            "mixer",
            json!([{"name": "Speed", "type": "Float", "value": v, "properties": {"writeRequest": format!("rate-{i}")}}]),
        );
        let o = outcome(&mut peer, "WB3", "mixer", "Speed", &format!("rate-{i}"));
        let want = if i < 2 { "confirmed" } else { "refused" };
        assert_eq!(o["properties"]["writeOutcome"], want, "{o}");
    }
    for (i, want) in ["confirmed", "refused"].iter().enumerate() {
        dcmd(
            &mut peer,
            "WB3",
            "mixer",
            json!([{"name": "Slow", "type": "Int32", "value": 5 + i, "properties": {"writeRequest": format!("cool-{i}")}}]),
        );
        let o = outcome(&mut peer, "WB3", "mixer", "Slow", &format!("cool-{i}"));
        assert_eq!(o["properties"]["writeOutcome"], *want, "{o}");
    }
    // An offline device and an undeclared metric: refused before anything is
    // written (no DDATA to carry it: the audit has it).
    dcmd(
        &mut peer,
        "WB3",
        "ghost",
        json!([{"name": "Setpoint", "type": "Float", "value": 1.0, "properties": {"writeRequest": "off-1"}}]),
    );
    dcmd(
        &mut peer,
        "WB3",
        "mixer",
        json!([{"name": "Nope", "type": "Float", "value": 1.0, "properties": {"writeRequest": "und-1"}}]),
    );
    // The write lock by NCMD refuses everything until cleared.
    peer.send(json!({"op": "command", "group": "WB3", "node": "gw",
        "metrics": [{"name": "Node Control/Write Lock", "type": "Boolean", "value": true}]}));
    gw.wait_log("write lock set", T);
    dcmd(
        &mut peer,
        "WB3",
        "mixer",
        json!([{"name": "Mode", "type": "Int16", "value": 2, "properties": {"writeRequest": "lock-1"}}]),
    );
    let o = outcome(&mut peer, "WB3", "mixer", "Mode", "lock-1");
    assert!(
        o["properties"]["writeReason"]
            .as_str()
            .is_some_and(|r| r.contains("the write lock is set (by NCMD")),
        "{o}"
    );

    // 12 refused, 3 accepted and confirmed, the lock applied.
    let lines = audit(&gw, cases.len() + 12);
    for (i, (_, _, why)) in cases.iter().enumerate() {
        let l = audited(&lines, cases[i].0, &format!("bad-{i}"));
        assert_eq!(l["outcome"], "refused");
        assert!(l["reason"].as_str().is_some_and(|r| r.contains(why)), "{l}");
    }
    assert_eq!(audited(&lines, "Setpoint", "off-1")["reason"], "the device is offline");
    assert_eq!(
        audited(&lines, "Nope", "und-1")["reason"],
        "no metric of that name was declared in the birth"
    );
    assert!(audited(&lines, "Speed", "rate-2")["reason"]
        .as_str()
        .is_some_and(|r| r.contains("more than max_rate (2)")));
    assert!(audited(&lines, "Slow", "cool-1")["reason"]
        .as_str()
        .is_some_and(|r| r.contains("cooldown")));
    let confirmed = audited(&lines, "Speed", "rate-1");
    assert_eq!((&confirmed["old"], &confirmed["new"]), (&json!("20"), &json!("30")));
    assert_eq!(audited(&lines, "Node Control/Write Lock", "")["outcome"], "applied");
    counted(http, "confirmed", 3);
    counted(http, "refused", (cases.len() + 5) as u64);

    // Malformed DCMDs with write-back on: rejected and counted, nothing
    // accepted or written, the gateway still running.
    let before = prom_value(http, "spb_rejected_messages_total").unwrap_or(0.0);
    for garbage in [&b"\x08\x01garbage"[..], &[0x12, 0xff, 0xff, 0xff, 0x0f], &[]] {
        common::mosquitto_pub(broker.port, "spBv1.0/WB3/DCMD/gw/mixer", garbage, false);
    }
    let deadline = Instant::now() + T;
    while prom_value(http, "spb_rejected_messages_total").unwrap_or(0.0) < before + 2.0 {
        assert!(Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    counted(http, "confirmed", 3);
    let after = audit(&gw, cases.len() + 12);
    assert_eq!(
        after.iter().filter(|l| l["outcome"] == "accepted").count(),
        3,
        "nothing more accepted"
    );
    assert!(gw.child.try_wait().expect("wait").is_none(), "still running");
}

#[test]
fn the_files_write_lock_applied_by_a_reload_refuses_writes_until_the_file_clears_it() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let http = common::free_port();
    let dead = common::free_port();
    let gw = gateway("WB4", broker.port, http, "enabled = true", &guarded_devices(dead));
    peer.wait_for("DBIRTH mixer", T, |m| m["topic"] == "spBv1.0/WB4/DBIRTH/gw/mixer");
    let cfg_path = gw.dir.path().join("config.toml");
    let original = std::fs::read_to_string(&cfg_path).expect("config");
    let write = |peer: &mut Peer, request: &str| {
        dcmd(
            peer,
            "WB4",
            "mixer",
            json!([{"name": "Mode", "type": "Int16", "value": 2, "properties": {"writeRequest": request}}]),
        );
    };
    std::fs::write(
        &cfg_path,
        original.replace("enabled = true", "enabled = true\nwrite_lock = true"),
    )
    .expect("edit");
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    peer.wait_for("NDATA lock", T, |m| {
        m["topic"] == "spBv1.0/WB4/NDATA/gw"
            && m["metrics"].as_array().is_some_and(|ms| {
                ms.iter()
                    .any(|x| x["name"] == "Node Control/Write Lock" && x["value"] == true)
            })
    });
    write(&mut peer, "file-1");
    let o = outcome(&mut peer, "WB4", "mixer", "Mode", "file-1");
    assert!(
        o["properties"]["writeReason"]
            .as_str()
            .is_some_and(|r| r.contains("commands.write_lock in the configuration file")),
        "{o}"
    );
    std::fs::write(&cfg_path, &original).expect("edit");
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    peer.wait_for("NDATA unlock", T, |m| {
        m["topic"] == "spBv1.0/WB4/NDATA/gw"
            && m["metrics"].as_array().is_some_and(|ms| {
                ms.iter()
                    .any(|x| x["name"] == "Node Control/Write Lock" && x["value"] == false)
            })
    });
    write(&mut peer, "file-2");
    let o = outcome(&mut peer, "WB4", "mixer", "Mode", "file-2");
    assert_eq!(o["properties"]["writeOutcome"], "confirmed", "{o}");
}

#[test]
fn reboot_restarts_the_service_only_when_enabled_and_next_server_is_audited() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let reboot = |peer: &mut Peer, group: &str| {
        peer.send(json!({"op": "command", "group": group, "node": "gw",
            "metrics": [{"name": "Node Control/Reboot", "type": "Boolean", "value": true}]}));
    };
    // Not enabled: refused, audited, still running.
    let http = common::free_port();
    let mut gw = gateway("WB5", broker.port, http, "", "");
    let nbirth = peer.wait_for("NBIRTH", T, |m| m["topic"] == "spBv1.0/WB5/NBIRTH/gw");
    assert!(
        !nbirth["metrics"]
            .as_array()
            .is_some_and(|ms| ms.iter().any(|m| m["name"] == "Node Control/Reboot")),
        "not declared when not enabled: {nbirth}"
    );
    reboot(&mut peer, "WB5");
    let lines = audit(&gw, 1);
    let l = audited(&lines, "Node Control/Reboot", "");
    assert_eq!(
        (&l["command"], &l["outcome"], &l["reason"]),
        (
            &json!("NCMD"),
            &json!("refused"),
            &json!("Node Control/Reboot is not enabled (commands.reboot = false)")
        )
    );
    // Next Server with one server: it leaves and comes back, audited.
    peer.send(json!({"op": "command", "group": "WB5", "node": "gw",
        "metrics": [{"name": "Node Control/Next Server", "type": "Boolean", "value": true}]}));
    peer.wait_for("NDEATH", T, |m| m["topic"] == "spBv1.0/WB5/NDEATH/gw");
    peer.wait_for("NBIRTH again", T, |m| m["topic"] == "spBv1.0/WB5/NBIRTH/gw");
    let lines = audit(&gw, 2);
    assert_eq!(audited(&lines, "Node Control/Next Server", "")["outcome"], "applied");
    assert!(gw.child.try_wait().expect("wait").is_none(), "still running");

    // Enabled: declared in NBIRTH; the command stops the service cleanly
    // (NDEATH) with the status systemd restarts.
    let http = common::free_port();
    let mut gw = gateway("WB6", broker.port, http, "reboot = true", "");
    let nbirth = peer.wait_for("NBIRTH", T, |m| m["topic"] == "spBv1.0/WB6/NBIRTH/gw");
    assert_eq!(metric(&nbirth, "Node Control/Reboot")["value"], false);
    reboot(&mut peer, "WB6");
    peer.wait_for("NDEATH", T, |m| m["topic"] == "spBv1.0/WB6/NDEATH/gw");
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(s) = gw.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "still running:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(75), "{}", gw.log());
    let lines = audit(&gw, 1);
    assert_eq!(audited(&lines, "Node Control/Reboot", "")["outcome"], "applied");
}
