//! Commands from the central host to the PLC, end to end: `spb-uplink
//! command` (and `POST /commands`) → the uplink, which checks who asks and
//! what against the last birth → mosquitto → the gateway's guard → the
//! python-snap7 and cpppo peers, read back by their own clients → the
//! confirming DDATA → the answer and `sp_command_audit` in PostgreSQL.
//! Every refusal (identity, role, ACL, offline node, unknown metric, wrong
//! type, the edge's own guard) and a timeout are answered and audited.
#![cfg(feature = "uplink")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::pg::TestDb;
use common::plc::{Cpppo, PeerClient, S7Impl, S7Server};
use common::uplink::Uplink;
use common::{test_config, Broker, Gateway};
use serde_json::{json, Value as J};

const T: Duration = Duration::from_secs(30);
const TOKEN: &str = "mes-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789abcdef";
const NARROW: &str = "narrow-token-0123456789abcdef";

fn hash(t: &str) -> String {
    spb::uplink::commands::hex(&spb::uplink::commands::token_hash(t))
}

/// `[commands]` of the uplink: three identities.
fn commands(group: &str) -> String {
    commands_with(group, "")
}

/// … with more `[commands]` keys.
fn commands_with(group: &str, keys: &str) -> String {
    format!(
        r#"
[commands]
enabled = true
timeout = "3s"
{keys}
[[commands.identities]]
name = "mes"
token_sha256 = "{mes}"
roles = ["sparkplug_command"]
allow = ["{group}/#"]
[[commands.identities]]
name = "viewer"
token_sha256 = "{viewer}"
roles = []
allow = ["{group}/#"]
[[commands.identities]]
name = "narrow"
token_sha256 = "{narrow}"
roles = ["sparkplug_command"]
allow = ["{group}/gw/line/#"]
"#,
        mes = hash(TOKEN),
        viewer = hash(VIEWER),
        narrow = hash(NARROW),
    )
}

/// `spb-uplink command …` with the API token in the environment: exit code and answer.
fn cli(http: u16, token: &str, args: &[&str]) -> (i32, J) {
    let out = Command::new(env!("CARGO_BIN_EXE_spb-uplink"))
        .arg("command")
        .args(["--url", &format!("http://127.0.0.1:{http}")])
        .args(args)
        .env("SPB_UPLINK_TOKEN", token)
        .output()
        .expect("run spb-uplink command");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let answer = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text:?}\nstderr: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), answer)
}

/// `POST /commands` as any client would: status and answer.
fn post(http: u16, token: &str, body: &J) -> (u16, J) {
    let (status, text) = spb::uplink::client::post(
        &format!("http://127.0.0.1:{http}"),
        "/commands",
        token,
        &body.to_string(),
        Duration::from_secs(20),
    )
    .expect("an answer");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

fn wait_for(db: &TestDb, what: &str, sql: &str, want: i64, uplink: &Uplink) {
    // The schema exists once the uplink says its database is up.
    uplink.wait_until("the database is up", |u| u.metric("spb_uplink_database_ok") == 1.0);
    let deadline = Instant::now() + T;
    while db.query_i64(sql) != want {
        assert!(Instant::now() < deadline, "{what}: {sql}\n{}", uplink.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_command_from_the_cli_reaches_the_s7_and_logix_peers_is_confirmed_and_audited() {
    let db = TestDb::new("cmd_ok");
    let broker = Broker::start(None);
    let s7 = S7Server::start_holding(S7Impl::Python, &[3]);
    let mut s7c = PeerClient::snap7(s7.port);
    let logix = Cpppo::start(&["Batch=DINT", "Speed=REAL"]);
    let mut lc = PeerClient::pylogix(logix.port);
    let uplink = Uplink::start(broker.port, &db.url(), &commands("WC1"));
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
max = 250
[[devices.tags]]
name = "Held"
address = "DB3.DBW0"
datatype = "Int16"
writable = true

[[devices]]
name = "line"
driver = "logix"
address = "127.0.0.1:{logix}"
[devices.scan_classes]
default = "5s"
[[devices.tags]]
name = "Batch"
address = "Batch"
datatype = "Int32"
writable = true
"#,
        s7 = s7.port,
        logix = logix.port
    );
    let cfg = test_config(
        "WC1",
        "gw",
        &format!("host = \"127.0.0.1\"\nport = {}", broker.port),
        "",
    )
    .replace("[telemetry]", "[commands]\nenabled = true\n\n[telemetry]")
        + &devices;
    let _gw = Gateway::start(&cfg, &[]);
    // Both PLC devices born, as the uplink's facts show.
    wait_for(
        &db,
        "both devices born",
        "SELECT count(DISTINCT device_id) FROM sp_metric_fact WHERE group_id = 'WC1' AND device_id IN ('oven', 'line')",
        2,
        &uplink,
    );
    let (code, a) = cli(
        uplink.http,
        TOKEN,
        &[
            "--group", "WC1", "--node", "gw", "--device", "oven", "--metric", "Setpoint", "--value", "182.5",
        ],
    );
    assert_eq!((code, &a["outcome"]), (0, &json!("confirmed")), "{a}\n{}", uplink.log());
    assert_eq!(a["value"], "182.5");
    assert_eq!(
        s7c.call(json!({"op":"get","db":1,"offset":0,"type":"REAL"}))["value"],
        json!(182.5),
        "the S7 peer's own client reads it"
    );
    let (code, a) = cli(
        uplink.http,
        TOKEN,
        &[
            "--group", "WC1", "--node", "gw", "--device", "line", "--metric", "Batch", "--value", "-42",
        ],
    );
    assert_eq!((code, &a["outcome"]), (0, &json!("confirmed")), "{a}");
    assert_eq!(
        lc.call(json!({"op":"read","tag":"Batch"}))["value"],
        json!(-42),
        "pylogix reads it"
    );
    // The PLC puts its own value back: failed, with the value it holds.
    let (code, a) = cli(
        uplink.http,
        TOKEN,
        &[
            "--group", "WC1", "--node", "gw", "--device", "oven", "--metric", "Held", "--value", "7",
        ],
    );
    assert_eq!(
        (code, &a["outcome"], &a["value"]),
        (1, &json!("failed"), &json!("0")),
        "{a}"
    );
    assert!(a["reason"].as_str().is_some_and(|r| r.contains("instead of 7")), "{a}");

    wait_for(
        &db,
        "three outcomes audited",
        "SELECT count(*) FROM sp_command_audit WHERE request_id IS NOT NULL AND outcome <> 'sent'",
        3,
        &uplink,
    );
    let rows = db.query_text(
        "SELECT string_agg(concat_ws('|', device_id, metric, value, outcome, requested_by, confirmed_value,
                (sent_at IS NOT NULL AND confirmed_at IS NOT NULL AND sent_at >= at)::text), ';' ORDER BY id)
         FROM sp_command_audit WHERE request_id IS NOT NULL",
    );
    assert_eq!(
        rows,
        "oven|Setpoint|182.5|confirmed|mes|182.5|true;line|Batch|-42|confirmed|mes|-42|true;oven|Held|7|failed|mes|0|true"
    );
    assert_eq!(uplink.metric("spb_uplink_commands_total{outcome=\"confirmed\"}"), 2.0);
    assert_eq!(uplink.metric("spb_uplink_commands_total{outcome=\"failed\"}"), 1.0);
}

#[test]
fn every_refusal_and_a_timeout_is_answered_and_audited_and_nothing_refused_is_sent() {
    let db = TestDb::new("cmd_refused");
    let broker = Broker::start(None);
    let uplink = Uplink::start(broker.port, &db.url(), &commands("WC2"));
    let cfg = test_config(
        "WC2",
        "gw",
        &format!("host = \"127.0.0.1\"\nport = {}", broker.port),
        "",
    )
    .replace("[telemetry]", "[commands]\nenabled = true\n\n[telemetry]")
    .replace(
        "address = \"counter\"\ndatatype = \"UInt32\"",
        "address = \"counter\"\ndatatype = \"UInt32\"\nwritable = true\nmax = 1000000",
    );
    let gw = Gateway::start(&cfg, &[]);
    wait_for(
        &db,
        "the press born",
        "SELECT least(count(*), 1) FROM sp_metric_fact WHERE group_id = 'WC2' AND device_id = 'press'",
        1,
        &uplink,
    );
    let body = |device: &str, metric: &str, value: J| json!({"group": "WC2", "node": "gw", "device": device, "metric": metric, "value": value});
    let ok = body("press", "Strokes", json!(5));
    let cases: Vec<(&str, J, u16, &str)> = vec![
        ("wrong-token", ok.clone(), 401, "unknown identity"),
        ("", ok.clone(), 401, "unknown identity"),
        (VIEWER, ok.clone(), 403, "lacks the role sparkplug_command"),
        (NARROW, ok.clone(), 403, "may not write WC2/gw/press/Strokes"),
        (TOKEN, json!({"group": "WC2"}), 400, "'node' is required"),
        (
            TOKEN,
            json!({"group": "WC2", "node": "ghost", "metric": "x", "value": 1}),
            409,
            "edge node WC2/ghost is not online",
        ),
        (TOKEN, body("press", "Nope", json!(1)), 422, "was not declared"),
        (
            TOKEN,
            body("press", "Strokes", json!("12")),
            422,
            "a string cannot be written to a UInt32 metric",
        ),
        (
            TOKEN,
            body("press", "Strokes", json!(3.7)),
            422,
            "a number with a fraction cannot be written",
        ),
        (
            TOKEN,
            body("press", "Strokes", json!(-1)),
            422,
            "-1 does not fit a UInt32 metric",
        ),
        // Allowed by the uplink, refused by the edge's guard (not writable).
        (
            TOKEN,
            body("press", "Pressure", json!(1.5)),
            422,
            "the tag is not writable",
        ),
    ];
    for (token, b, status, says) in &cases {
        let (got, a) = post(uplink.http, token, b);
        assert_eq!(got, *status, "{b}: {a}");
        assert_eq!(a["outcome"], "refused", "{b}: {a}");
        assert!(
            a["reason"].as_str().is_some_and(|r| r.contains(says)),
            "{b}: {a} should say {says:?}"
        );
    }
    // The CLI says the same, and its exit status is 1.
    let (code, a) = cli(
        uplink.http,
        VIEWER,
        &[
            "--group", "WC2", "--node", "gw", "--device", "press", "--metric", "Strokes", "--value", "5",
        ],
    );
    assert_eq!((code, &a["outcome"]), (1, &json!("refused")));
    // A gateway that does not answer: the uplink times out.
    gw.signal(nix::sys::signal::Signal::SIGSTOP);
    let mut late = ok.clone();
    late["timeout_ms"] = json!(500);
    let (got, a) = post(uplink.http, TOKEN, &late);
    gw.signal(nix::sys::signal::Signal::SIGCONT);
    assert_eq!((got, &a["outcome"]), (504, &json!("timeout")), "{a}");
    // And one that goes through, for contrast.
    let (got, a) = post(uplink.http, TOKEN, &ok);
    assert_eq!((got, &a["outcome"]), (200, &json!("confirmed")), "{a}");

    let n = cases.len() as i64 + 1 + 2;
    wait_for(
        &db,
        "every request audited",
        "SELECT count(*) FROM sp_command_audit WHERE outcome <> 'sent'",
        n,
        &uplink,
    );
    let q = |w: &str| db.query_i64(&format!("SELECT count(*) FROM sp_command_audit WHERE {w}"));
    assert_eq!(q("outcome = 'refused' AND requested_by = 'unauthenticated'"), 2);
    assert_eq!(q("outcome = 'refused' AND requested_by = 'viewer'"), 2);
    assert_eq!(
        q("outcome = 'refused' AND requested_by = 'narrow' AND metric = 'Strokes'"),
        1
    );
    assert_eq!(q("outcome = 'refused' AND requested_by = 'mes'"), 7);
    // Refused by the uplink: never sent. Refused by the edge: sent, then refused.
    assert_eq!(q("outcome = 'refused' AND sent_at IS NOT NULL"), 1);
    assert_eq!(
        q("outcome = 'refused' AND sent_at IS NOT NULL AND metric = 'Pressure'"),
        1
    );
    assert_eq!(
        q("outcome = 'timeout' AND sent_at IS NOT NULL AND confirmed_at IS NULL"),
        1
    );
    assert_eq!(q("outcome = 'confirmed' AND confirmed_value = '5'"), 1);
    assert_eq!(
        uplink.metric("spb_uplink_commands_total{outcome=\"refused\"}"),
        (cases.len() + 1) as f64
    );

    // Node control through the API: the write lock (a node metric, empty
    // device level) is confirmed on the edge's NDATA, then every write is
    // refused by the edge until it is cleared.
    let lock = |v: bool| json!({"group": "WC2", "node": "gw", "metric": "Node Control/Write Lock", "value": v});
    let (got, a) = post(uplink.http, TOKEN, &lock(true));
    assert_eq!(
        (got, &a["outcome"], &a["value"]),
        (200, &json!("confirmed"), &json!("true")),
        "{a}"
    );
    let (got, a) = post(uplink.http, TOKEN, &ok);
    assert_eq!(got, 422, "{a}");
    assert!(
        a["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the write lock is set")),
        "{a}"
    );
    let (got, a) = post(uplink.http, TOKEN, &lock(false));
    assert_eq!((got, &a["value"]), (200, &json!("false")), "{a}");
    let (got, a) = post(uplink.http, TOKEN, &ok);
    assert_eq!((got, &a["outcome"]), (200, &json!("confirmed")), "{a}");
}

/// `POST /commands` over HTTPS with `client` (cert, key) or none; the
/// status and answer, or the handshake's error.
fn https_post(port: u16, ca: &str, client: Option<(&str, &str)>, token: &str, body: &J) -> Result<(u16, J), String> {
    use std::io::{Read, Write};
    let tls = spb::mqtt::settings::TlsConfig {
        ca: Some(ca.into()),
        system_roots: false,
        cert: client.map(|c| c.0.into()),
        key: client.map(|c| c.1.into()),
        server_name: None,
    };
    let cfg = spb::mqtt::tls::client_config(&tls, rustls::pki_types::UnixTime::now()).map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let body = body.to_string();
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    write!(
        s,
        "POST /commands HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    // A refused handshake shows here (TLS 1.3 alerts come with the first read).
    match s.read_to_string(&mut out) {
        Ok(_) => {}
        Err(e) if out.is_empty() => return Err(e.to_string()),
        Err(_) => {}
    }
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no answer: {out:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("status")?;
    Ok((status, serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?))
}

#[test]
fn over_https_a_client_certificate_names_the_identity_and_another_cas_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::new("cmd_https");
    let broker = Broker::start(None);
    let pki = common::Pki::generate();
    // The uplink refuses a key every user can read.
    std::fs::set_permissions(pki.path("server.key"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let https = common::free_port();
    let keys = format!(
        "https_listen = \"127.0.0.1:{https}\"\nhttps_cert = \"{}\"\nhttps_key = \"{}\"\nhttps_client_ca = \"{}\"",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let hmi = "[[commands.identities]]\nname = \"hmi\"\ncertificate = \"gw-test\"\nroles = [\"sparkplug_command\"]\nallow = [\"WC3/gw/press/#\"]\n";
    let uplink = Uplink::start(broker.port, &db.url(), &format!("{}{hmi}", commands_with("WC3", &keys)));
    let cfg = test_config(
        "WC3",
        "gw",
        &format!("host = \"127.0.0.1\"\nport = {}", broker.port),
        "",
    )
    .replace("[telemetry]", "[commands]\nenabled = true\n\n[telemetry]")
    .replace(
        "address = \"counter\"\ndatatype = \"UInt32\"",
        "address = \"counter\"\ndatatype = \"UInt32\"\nwritable = true",
    );
    let _gw = Gateway::start(&cfg, &[]);
    wait_for(
        &db,
        "the press born",
        "SELECT least(count(*), 1) FROM sp_metric_fact WHERE group_id = 'WC3' AND device_id = 'press'",
        1,
        &uplink,
    );
    let write = json!({"group": "WC3", "node": "gw", "device": "press", "metric": "Strokes", "value": 77});
    let ca = pki.path("ca.pem");
    let mine = (pki.path("client.pem"), pki.path("client.key"));
    // The certificate alone names "hmi".
    let (status, a) = https_post(https, &ca, Some((&mine.0, &mine.1)), "", &write).expect("https");
    assert_eq!(
        (status, &a["outcome"]),
        (200, &json!("confirmed")),
        "{a}\n{}",
        uplink.log()
    );
    // No certificate: a token still works over HTTPS; nothing at all is 401.
    let (status, a) = https_post(https, &ca, None, TOKEN, &write).expect("https");
    assert_eq!((status, &a["outcome"]), (200, &json!("confirmed")), "{a}");
    let (status, _) = https_post(https, &ca, None, "", &write).expect("https");
    assert_eq!(status, 401);
    // A certificate of another CA does not get through the handshake.
    let rogue = (pki.path("rogue-client.pem"), pki.path("rogue-client.key"));
    // (The client sees the alert, or a reset if the server closed first:
    // either way no answer.)
    let refused = https_post(https, &ca, Some((&rogue.0, &rogue.1)), "", &write);
    assert!(refused.is_err(), "answered: {refused:?}");
    // hmi's ACL is its own press only.
    let mut other = write.clone();
    other["device"] = json!("oven");
    let (status, a) = https_post(https, &ca, Some((&mine.0, &mine.1)), "", &other).expect("https");
    assert_eq!(status, 403, "{a}");
    wait_for(
        &db,
        "audited with the identity",
        "SELECT count(*) FROM sp_command_audit WHERE requested_by = 'hmi' AND outcome IN ('confirmed', 'refused')",
        2,
        &uplink,
    );
}

/// The README's two examples of the command API, run as shown (the token,
/// address and target replaced by this test's).
#[test]
fn the_readmes_command_examples_run_as_shown() {
    let readme = include_str!("../README.md");
    let section = &readme[readme.find("### The uplink's command API").expect("the section")..];
    let blocks: Vec<String> = section
        .split("```sh")
        .skip(1)
        .take(2)
        .map(|b| b[..b.find("```").expect("closed")].replace("\\\n", " "))
        .collect();
    assert_eq!(blocks.len(), 2, "a CLI and a curl example");
    let db = TestDb::new("cmd_readme");
    let broker = Broker::start(None);
    let uplink = Uplink::start(broker.port, &db.url(), &commands("Plant1"));
    let cfg = test_config(
        "Plant1",
        "gw-01",
        &format!("host = \"127.0.0.1\"\nport = {}", broker.port),
        "",
    )
    .replace("[telemetry]", "[commands]\nenabled = true\n\n[telemetry]")
    .replace("name = \"press\"", "name = \"oven\"")
    .replace(
        "name = \"Pressure\"\naddress = \"sine(amplitude=20, offset=180, period=5s)\"\ndatatype = \"Float\"",
        "name = \"Setpoint\"\naddress = \"const(20)\"\ndatatype = \"Float\"\nwritable = true",
    );
    assert!(cfg.contains("name = \"Setpoint\""), "{cfg}");
    let _gw = Gateway::start(&cfg, &[]);
    wait_for(
        &db,
        "the oven born",
        "SELECT least(count(*), 1) FROM sp_metric_fact WHERE group_id = 'Plant1' AND device_id = 'oven'",
        1,
        &uplink,
    );
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_spb-uplink"));
    let run = |script: &str| {
        let script = script
            .replace("SPB_UPLINK_TOKEN=…", &format!("SPB_UPLINK_TOKEN={TOKEN}"))
            .replace(
                "spb-uplink command",
                &format!("{} command --url http://127.0.0.1:{}", bin.display(), uplink.http),
            )
            .replace("http://127.0.0.1:9103", &format!("http://127.0.0.1:{}", uplink.http));
        let out = Command::new("sh")
            .args(["-c", &script])
            .env("TOKEN", TOKEN)
            .output()
            .expect("sh (and curl: make deps installs it)");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{script}\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str::<J>(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    for b in &blocks {
        let a = run(b);
        assert_eq!(a["outcome"], "confirmed", "{b}: {a}");
        assert_eq!(a["value"], "182.5");
    }
}

/// SIGHUP reads the file again: `[commands]` applies at once (here: the API
/// goes from disabled to an identity that may write), a change that takes
/// a restart is named, and an invalid file changes nothing.
#[test]
fn sighup_applies_commands_at_once_and_names_what_needs_a_restart() {
    let db = TestDb::new("cmd_reload");
    let broker = Broker::start(None);
    let mut uplink = Uplink::start(broker.port, &db.url(), "");
    let body = json!({"group": "R1", "node": "gw", "device": "d", "metric": "m", "value": 1});
    let (status, answer) = post(uplink.http, TOKEN, &body);
    assert_eq!((status, answer["outcome"].as_str()), (403, Some("refused")), "{answer}");
    let signal = |u: &Uplink| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(u.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
    };
    let path = uplink.config_path();
    let before = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        before.replace("reorder_timeout = \"1s\"", "reorder_timeout = \"2s\"") + &commands("R1"),
    )
    .expect("edit");
    signal(&uplink);
    uplink.wait_until("the reload", |u| u.metric("spb_uplink_reloads_total") == 1.0);
    // Authorised now: the target is checked, and its node is unknown.
    let (status, answer) = post(uplink.http, TOKEN, &body);
    assert_eq!(status, 409, "{answer}");
    let log = uplink.log();
    assert!(log.contains("[commands]") && log.contains("read again"), "{log}");
    assert!(
        log.contains("[host] changed in the file but take effect only after a restart"),
        "{log}"
    );
    // A broken file: said, and nothing changes.
    std::fs::write(&path, before.replace("host_id = ", "hostid = ") + &commands("R1")).expect("edit");
    signal(&uplink);
    uplink.wait_until("the refusal logged", |u| {
        u.log().contains("is not valid; nothing changed")
    });
    assert!(uplink.log().contains("host.hostid: unknown key"), "{}", uplink.log());
    assert_eq!(uplink.metric("spb_uplink_reloads_total"), 1.0);
    let (status, _) = post(uplink.http, TOKEN, &body);
    assert_eq!(status, 409, "still the reloaded [commands]");
    // [oee] applies at once too: its folder starts with the new machines.
    let oee = "[oee]\n[[oee.machines]]\nname = \"m\"\nnode = \"R1/gw\"\ncycle_count = \"C\"\nrunning = \"R\"\nideal_cycle_time = \"1s\"\n";
    std::fs::write(
        &path,
        before.replace("[telemetry]", &format!("{oee}[telemetry]")) + &commands("R1"),
    )
    .expect("edit");
    signal(&uplink);
    uplink.wait_until("the second reload", |u| u.metric("spb_uplink_reloads_total") == 2.0);
    uplink.wait_until("[oee] applied", |u| u.log().matches("[oee]").count() >= 1);
    assert!(uplink.child.try_wait().expect("status").is_none(), "still running");
}
