//! The write round trip of command write-back, S7 and Logix, with the
//! peers' own clients beside it in the same run.
//!
//! `make bench-command` (= `cargo bench --features uplink --bench command_round_trip`).
//! A private mosquitto, PostgreSQL, the release uplink and gateway, python-snap7's
//! S7 server and cpppo's Logix simulator. `N` writes of a REAL to each PLC,
//! one after the other, through `POST /commands`:
//! - **round trip**: the uplink's `round_trip_ms`, from publishing the DCMD
//!   to the edge's DDATA that confirms it (the gateway's guard, the PLC
//!   write, the read-back until equal, the DDATA, the broker both ways);
//! - **request**: the HTTP client's whole request (the above, plus the
//!   checks against the birth and the audit row handed to the writer);
//! - **peer alone**: the peer's own client (python-snap7, pylogix) writing
//!   the same tag and reading it back, directly: what the simulator itself
//!   costs per write and read, the floor under the round trip.
//!
//! p50, p99 and max of each, with mosquitto as installed and with its
//! `set_tcp_nodelay true` (without it, a reply sent right after another
//! message on the same connection waits for the delayed ACK); results in
//! `target/bench-command.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::pg::TestDb;
use common::plc::{Cpppo, PeerClient, S7Impl, S7Server};
use common::uplink::Uplink;
use common::{test_config, Broker, Gateway};
use serde_json::json;

const N: usize = 300;
const TOKEN: &str = "bench-token-0123456789abcdef";

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn row(what: &str, mut ms: Vec<f64>) -> String {
    format!(
        "| {what} | {:.2} | {:.2} | {:.2} |",
        pct(&mut ms, 0.5),
        pct(&mut ms, 0.99),
        pct(&mut ms, 1.0)
    )
}

fn main() {
    let mut lines = vec![
        format!("Write round trip, {N} sequential writes of a REAL each (ms)"),
        String::new(),
        "| path | p50 | p99 | max |".into(),
        "|---|---|---|---|".into(),
    ];
    for (broker, options) in [
        ("mosquitto as installed", ""),
        ("mosquitto set_tcp_nodelay true", "set_tcp_nodelay true"),
    ] {
        lines.push(format!("| **{broker}** | | | |"));
        run(options, &mut lines);
    }
    let text = lines.join("\n") + "\n";
    print!("{text}");
    std::fs::create_dir_all("target").expect("target");
    std::fs::write("target/bench-command.md", text).expect("write results");
}

fn run(broker_options: &str, lines: &mut Vec<String>) {
    let db = TestDb::new("bench_cmd");
    let broker = Broker::start_with(None, broker_options);
    let s7 = S7Server::start(S7Impl::Python);
    let logix = Cpppo::start(&["Speed=REAL"]);
    let hash = spb::uplink::commands::hex(&spb::uplink::commands::token_hash(TOKEN));
    let uplink = Uplink::start(
        broker.port,
        &db.url(),
        &format!(
            "\n[commands]\nenabled = true\ntimeout = \"5s\"\n[[commands.identities]]\nname = \"bench\"\n\
             token_sha256 = \"{hash}\"\nroles = [\"sparkplug_command\"]\nallow = [\"CB/#\"]\n"
        ),
    );
    let devices = format!(
        r#"
[[devices]]
name = "oven"
driver = "s7"
address = "127.0.0.1:{s7}"
[devices.scan_classes]
default = "5s"
[[devices.tags]]
name = "Setpoint"
address = "DB1.DBD0"
datatype = "Float"
writable = true

[[devices]]
name = "line"
driver = "logix"
address = "127.0.0.1:{logix}"
[devices.scan_classes]
default = "5s"
[[devices.tags]]
name = "Speed"
address = "Speed"
datatype = "Float"
writable = true
"#,
        s7 = s7.port,
        logix = logix.port
    );
    let cfg = test_config("CB", "gw", &format!("host = \"127.0.0.1\"\nport = {}", broker.port), "")
        .replace("[telemetry]", "[commands]\nenabled = true\n\n[telemetry]")
        + &devices;
    let _gw = Gateway::start(&cfg, &[]);
    let url = format!("http://127.0.0.1:{}", uplink.http);
    let write = |device: &str, metric: &str, v: f64| {
        let body = json!({"group": "CB", "node": "gw", "device": device, "metric": metric, "value": v});
        let t0 = Instant::now();
        let (status, text) =
            spb::uplink::client::post(&url, "/commands", TOKEN, &body.to_string(), Duration::from_secs(20))
                .expect("an answer");
        let request = t0.elapsed().as_secs_f64() * 1000.0;
        (status, text, request)
    };
    // Until both devices are born at the uplink (a write is then accepted).
    for (device, metric) in [("oven", "Setpoint"), ("line", "Speed")] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while write(device, metric, 0.0).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "{device} never accepted a write:\n{}",
                uplink.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for (label, device, metric) in [
        ("S7 (python-snap7)", "oven", "Setpoint"),
        ("Logix (cpppo)", "line", "Speed"),
    ] {
        let (mut trip, mut req) = (Vec::with_capacity(N), Vec::with_capacity(N));
        for i in 0..N {
            let (status, text, request) = write(device, metric, (i % 250) as f64 + 0.5);
            let a: serde_json::Value = serde_json::from_str(&text).expect("json");
            assert_eq!((status, &a["outcome"]), (200, &json!("confirmed")), "{a}");
            trip.push(a["round_trip_ms"].as_f64().expect("round_trip_ms"));
            req.push(request);
        }
        lines.push(row(&format!("{label}: round trip, DCMD sent → confirming DDATA"), trip));
        lines.push(row(&format!("{label}: the whole POST /commands"), req));
    }
    let mut s7c = PeerClient::snap7(s7.port);
    let r = s7c.call(json!({"op": "bench_rw", "db": 1, "offset": 0, "n": N}));
    let secs = |r: &serde_json::Value| -> Vec<f64> {
        r["seconds"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .iter()
            .map(|s| s.as_f64().expect("seconds") * 1000.0)
            .collect()
    };
    lines.push(row("S7: python-snap7's own client, write + read back", secs(&r)));
    let mut lc = PeerClient::pylogix(logix.port);
    let r = lc.call(json!({"op": "bench_rw", "tag": "Speed", "n": N}));
    lines.push(row("Logix: pylogix's own client, write + read back", secs(&r)));
}
