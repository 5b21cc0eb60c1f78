//! The gateway binary polling real-protocol PLC simulators (python-snap7's S7
//! server, cpppo's Logix simulator) and publishing to a private mosquitto,
//! decoded by pysparkplug: births carry PLC values, a missing DB is BAD on
//! its tag only, killing a PLC gives DDEATH and restarting it DBIRTH, and a
//! PLC that hangs slows nobody else.

mod common;

use std::time::Duration;

use common::plc::{Cpppo, PeerClient, S7Impl, S7Server, SilentPlc};
use common::{metric, test_config, Broker, Gateway, Peer};
use serde_json::{json, Value as J};

const T: Duration = Duration::from_secs(20);

fn kind(m: &J) -> &str {
    m["kind"].as_str().unwrap_or("")
}

fn is(m: &J, k: &str, device: &str) -> bool {
    kind(m) == k && m["topic"].as_str().is_some_and(|t| t.ends_with(&format!("/{device}")))
}

/// A Float as the peer prints it (little-endian bit hex).
fn f(v: f32) -> J {
    J::String(v.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect())
}

fn series(metrics: &str, name: &str, device: &str) -> f64 {
    let key = format!("{name}{{device=\"{device}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /metrics"))
}

// [tck-id-operational-behavior-device-ddeath] [tck-id-topics-ddeath-seq-num]
// [tck-id-payloads-dbirth-order]
#[test]
fn real_plcs_are_born_bad_tags_stay_alone_death_and_return_are_published_and_a_hung_plc_stalls_nobody() {
    let broker = Broker::start(None);
    let mut peer = Peer::start(broker.port);
    let mut s7 = S7Server::start(S7Impl::Python);
    let mut s7c = PeerClient::snap7(s7.port);
    s7c.call(json!({"op":"set","db":1,"offset":0,"type":"REAL","value":21.5}));
    let mut logix = Cpppo::start(&["Counter=DINT", "Temp=REAL[10]"]);
    let mut lc = PeerClient::pylogix(logix.port);
    lc.call(json!({"op":"write","tag":"Counter","value":5}));
    let ghost = SilentPlc::start();
    let metrics_port = common::free_port();
    let devices = format!(
        r#"
[[devices]]
name = "oven"
driver = "s7"
address = "127.0.0.1:{s7}"
timeout = "1s"
fail_after = 1
backoff_min = "200ms"
backoff_max = "1s"
[devices.scan_classes]
default = "200ms"
[[devices.tags]]
name = "Temp"
address = "DB1.DBD0"
datatype = "Float"
[[devices.tags]]
name = "Missing"
address = "DB9.DBD0"
datatype = "Float"

[[devices]]
name = "ghost"
driver = "s7"
address = "127.0.0.1:{ghost}"
timeout = "1s"
[[devices.tags]]
name = "Temp"
address = "DB1.DBD0"
datatype = "Float"

[[devices]]
name = "line"
driver = "logix"
address = "127.0.0.1:{logix}"
timeout = "1s"
fail_after = 1
backoff_min = "200ms"
backoff_max = "1s"
[devices.scan_classes]
default = "200ms"
[[devices.tags]]
name = "Counter"
address = "Counter"
datatype = "Int32"
[[devices.tags]]
name = "Temps"
address = "Temp[0]{{4}}"
datatype = "FloatArray"
"#,
        s7 = s7.port,
        ghost = ghost.port,
        logix = logix.port,
    );
    let cfg = common::with_http(
        test_config("P1", "gw", &format!("host = \"127.0.0.1\"\nport = {}", broker.port), ""),
        metrics_port,
    ) + &devices;
    let _gw = Gateway::start(&cfg, &[]);

    let oven = peer.wait_for("DBIRTH of the S7 PLC", T, |m| is(m, "DBIRTH", "oven"));
    assert_eq!(metric(&oven, "Temp")["value"], f(21.5));
    assert_eq!(
        metric(&oven, "Missing")["is_null"],
        true,
        "a missing DB is BAD: no value"
    );
    let line = peer.wait_for("DBIRTH of the Logix PLC", T, |m| is(m, "DBIRTH", "line"));
    assert_eq!(metric(&line, "Counter")["value"], 5);
    assert_eq!(metric(&line, "Temps")["value"], json!([f(0.0), f(0.0), f(0.0), f(0.0)]));

    // Changes made by the peers' own clients arrive as DDATA while "ghost" hangs.
    s7c.call(json!({"op":"set","db":1,"offset":0,"type":"REAL","value":42.25}));
    lc.call(json!({"op":"write","tag":"Counter","value":6}));
    let d = peer.wait_for("DDATA from the S7 PLC", Duration::from_secs(3), |m| {
        is(m, "DDATA", "oven")
            && m["metrics"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|x| x["value"] == f(42.25)))
    });
    assert!(d.get("error").is_none(), "{d}");
    peer.wait_for("DDATA from the Logix PLC", Duration::from_secs(3), |m| {
        is(m, "DDATA", "line")
            && m["metrics"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|x| x["value"] == 6))
    });
    let m = common::plc::eventually("the hung PLC's connect times out", T, || {
        let m = common::http_get(metrics_port, "/metrics");
        (series(&m, "spb_plc_connect_failures_total", "ghost") >= 2.0).then_some(m)
    });
    assert_eq!(
        series(&m, "spb_plc_missed_scans_total", "oven"),
        0.0,
        "the hung PLC delays nobody"
    );
    assert_eq!(series(&m, "spb_plc_missed_scans_total", "line"), 0.0);
    assert_eq!(series(&m, "spb_device_online", "ghost"), 0.0);
    assert!(
        series(&m, "spb_plc_tag_errors_total", "oven") >= 1.0,
        "the missing DB is counted"
    );

    // Kill the S7 PLC: DDEATH; bring it back: DBIRTH with current values.
    s7.kill();
    drop(s7c);
    peer.wait_for("DDEATH of the S7 PLC", T, |m| is(m, "DDEATH", "oven"));
    s7.restart();
    let mut s7c = PeerClient::snap7(s7.port);
    s7c.call(json!({"op":"set","db":1,"offset":0,"type":"REAL","value":7.0}));
    let again = peer.wait_for("DBIRTH after the PLC returns", T, |m| is(m, "DBIRTH", "oven"));
    // The restarted PLC starts from zero; the gateway may be back before our write.
    if metric(&again, "Temp")["value"] != f(7.0) {
        assert_eq!(
            metric(&again, "Temp")["value"],
            f(0.0),
            "DBIRTH carries the PLC's current value"
        );
        peer.wait_for("the new value after the return", T, |m| {
            is(m, "DDATA", "oven")
                && m["metrics"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|x| x["value"] == f(7.0)))
        });
    }
    assert!(
        !peer.seen.iter().any(|m| is(m, "DBIRTH", "ghost")),
        "a PLC that never answers is never born"
    );

    // The same for the Logix controller.
    drop(lc);
    logix.kill();
    peer.wait_for("DDEATH of the Logix PLC", T, |m| is(m, "DDEATH", "line"));
    logix.restart();
    let back = peer.wait_for("DBIRTH of the Logix PLC again", T, |m| is(m, "DBIRTH", "line"));
    assert_eq!(metric(&back, "Counter")["value"], 0, "the restarted controller's value");
}
