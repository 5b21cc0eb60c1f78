//! The broker configuration `certs-example/make-certs.sh` writes, used as a
//! plant would use it: mosquitto with mTLS and the ACL, the gateway with its
//! node's certificate, the uplink with its own, PostgreSQL behind it. Data
//! flows end to end through the ACL; a node that uses another node's topics,
//! sends commands or forges the Primary Host's STATE is refused by the
//! broker; a certificate of another CA is refused at the handshake.
#![cfg(feature = "uplink")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pg::TestDb;
use common::uplink::Uplink;
use common::{Broker, Gateway};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(30);

fn make_certs(out: &Path, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-example/make-certs.sh");
    let o = Command::new(script)
        .arg(out)
        .args(args)
        .output()
        .expect("make-certs.sh");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn tls_server(port: u16, dir: &Path) -> String {
    format!(
        "[[mqtt.servers]]\nhost = \"127.0.0.1\"\nport = {port}\n[mqtt.servers.tls]\nca = \"{0}/ca.pem\"\ncert = \"{0}/client.pem\"\nkey = \"{0}/client.key\"\n",
        dir.display()
    )
}

/// A mosquitto client tool connecting as the identity in `dir` (a
/// directory make-certs.sh writes).
fn mosquitto_client(tool: &str, dir: &Path, port: u16) -> Command {
    let mut c = Command::new(tool);
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .arg("--cafile")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("client.pem"))
        .arg("--key")
        .arg(dir.join("client.key"));
    c
}

/// mosquitto_pub as the identity in `dir`, MQTT 5 so that the broker's
/// refusal comes back in the PUBACK; returns what the tool printed.
fn publish_as(dir: &Path, port: u16, topic: &str) -> String {
    let o = mosquitto_client("mosquitto_pub", dir, port)
        .args(["-V", "mqttv5", "-q", "1", "-t", topic, "-m", "forged"])
        .output()
        .expect("mosquitto_pub (make deps)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn gateway_and_uplink_work_through_the_acl_and_a_node_cannot_use_another_nodes_topics() {
    let pki = tempfile::tempdir().expect("tmp");
    let p = pki.path();
    make_certs(p, &["--group", "ACL", "--host", "scada", "gw-01", "gw-02"]);
    let conf = std::fs::read_to_string(p.join("broker/mosquitto.conf")).expect("conf");
    let broker = Broker::from_make_certs(&conf);
    let db = TestDb::new("acl");
    let uplink = Uplink::start_on(&tls_server(broker.port, &p.join("uplink")), &db.url(), "");
    // The counter gateway of the other end-to-end tests, as node gw-01 on
    // this broker with gw-01's certificate.
    let plain = format!("[[mqtt.servers]]\nhost = \"127.0.0.1\"\nport = {}\n", broker.port);
    let config = common::counter_config("ACL", broker.port, "primary_host_id = \"scada\"", "")
        .replace("node_id = \"gw\"", "node_id = \"gw-01\"")
        .replace(&plain, &tls_server(broker.port, &p.join("gw-01")));
    assert!(config.contains("client.key"), "{config}");
    let mut gw = Gateway::start(&config, &[]);
    // The uplink's STATE reached the node (it births only after it), its
    // births and data reached the uplink, and the uplink wrote them.
    let facts = "SELECT count(*) FROM sp_metric_fact WHERE group_id = 'ACL' AND node_id = 'gw-01' AND metric = 'Count'";
    uplink.wait_until("gw-01 is online and facts are written", |u| {
        u.metric("spb_uplink_online_nodes") >= 1.0 && u.metric("spb_uplink_facts_written_total") > 0.0
    });
    uplink.wait_until("facts from gw-01 through the ACL", |_| db.query_i64(facts) > 40);
    gw.wait_log("NBIRTH", T);

    // gw-01 may not speak for gw-02, send commands or forge the host's STATE.
    let node = p.join("gw-01");
    let forged = [
        "spBv1.0/ACL/NDATA/gw-02",
        "spBv1.0/ACL/DDATA/gw-02/line",
        "spBv1.0/ACL/NCMD/gw-02",
        "spBv1.0/ACL/DCMD/gw-01/line",
        "spBv1.0/STATE/scada",
        "spb-gateway/watermark/ACL/gw-02",
    ];
    for topic in forged {
        let said = publish_as(&node, broker.port, topic);
        assert!(said.contains("Not authorized"), "{topic}: {said}");
    }
    // Its own topics are allowed (the same tool, the same identity).
    let said = publish_as(&node, broker.port, "spb-gateway/watermark/ACL/gw-01");
    assert!(!said.contains("Not authorized"), "{said}");
    // Nor may it read another node's commands: the uplink sends one and
    // only gw-02's own subscription could receive it.
    let sub = mosquitto_client("mosquitto_sub", &node, broker.port)
        .args([
            "-v",
            "-W",
            "3",
            "-t",
            "spBv1.0/ACL/NCMD/gw-02",
            "-t",
            "spBv1.0/ACL/NCMD/gw-01",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_millis(500));
    let uplink_dir = p.join("uplink");
    for target in ["gw-02", "gw-01"] {
        let said = publish_as(&uplink_dir, broker.port, &format!("spBv1.0/ACL/NCMD/{target}"));
        assert!(
            !said.contains("Not authorized"),
            "the uplink may command {target}: {said}"
        );
    }
    let out = sub.wait_with_output().expect("mosquitto_sub");
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(
        got.contains("spBv1.0/ACL/NCMD/gw-01 forged"),
        "its own commands arrive: {got:?}"
    );
    assert!(!got.contains("gw-02"), "another node's commands do not: {got:?}");

    // A certificate from another CA does not get past the handshake.
    let said = publish_as(&p.join("rogue"), broker.port, "spBv1.0/ACL/NDATA/gw-01");
    assert!(said.contains("Error"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !broker.log().contains("certificate verify failed") {
        assert!(Instant::now() < deadline, "{}", broker.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = broker.log();
    // The broker refused exactly the forged publishes: nothing the gateway
    // or the uplink sent (every refusal is logged as "Denied PUBLISH").
    let denied: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Denied PUBLISH"))
        .filter_map(|l| l.split('\'').nth(1))
        .collect();
    assert_eq!(denied, forged, "{log}");
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(T).success(), "{}", gw.log());
    uplink.wait_until("gw-01's NDEATH arrived through the ACL", |u| {
        u.metric("spb_uplink_online_nodes") == 0.0
    });
    let deadline = Instant::now() + T;
    while db.query_i64("SELECT count(*) FROM sp_node_state WHERE group_id = 'ACL' AND node_id = 'gw-01' AND NOT online")
        != 1
    {
        assert!(Instant::now() < deadline, "the node's death is stored");
        std::thread::sleep(Duration::from_millis(100));
    }
}
