//! Hostile input against the real gateway: a rogue PLC on the plant
//! network, forged and retained control messages on the broker, a flood of
//! local HTTP clients. Each test asserts that the gateway is alive, that
//! healthy devices keep publishing, that memory stays under a stated bound,
//! and that the bad input is refused and counted (docs/ROBUSTNESS.md).

mod common;

use std::time::{Duration, Instant};

use common::rogue::EndlessS7;
use common::Gateway;
use spb::plc::s7::{S7Driver, S7Error, S7Options};
use spb::sparkplug::DataType;

fn wait(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_s7_peer_answering_with_endless_fragments_is_cut_off_at_the_negotiated_pdu() {
    let rogue = EndlessS7::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut d = S7Driver::new(
        S7Options {
            addr: format!("127.0.0.1:{}", rogue.port),
            local_tsap: 0x0100,
            remote_tsap: S7Options::tsap_for(1, 0, 1),
            pdu_size: 960,
            max_items: 20,
        },
        [("DB1.DBD0".to_string(), DataType::Float)],
    );
    // Before reassembly was capped, this read grew without end (1.38 GB
    // by the gateway's timeout); now it fails after 240 + 64 bytes.
    let r = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), d.read(&[0])).await });
    match r {
        Ok(Err(e @ S7Error::Oversized { max: 304, pdu: 240, .. })) => {
            assert!(e.is_protocol_violation());
            assert!(e.to_string().contains("without its last fragment"), "{e}");
        }
        other => panic!("expected an oversized answer, got {other:?}"),
    }
}

#[test]
fn a_rogue_s7_peer_costs_the_gateway_no_memory_and_the_healthy_device_keeps_publishing() {
    let rogue = EndlessS7::start();
    let http = common::free_port();
    let cfg = format!(
        r#"[node]
group_id = "Hostile"
node_id = "gw"
[mqtt]
[[mqtt.servers]]
host = "127.0.0.1"
port = 1
[telemetry]
listen = "127.0.0.1:{http}"
log_format = "human"

[[devices]]
name = "rogue"
driver = "s7"
address = "127.0.0.1:{port}"
timeout = "2s"
backoff_min = "100ms"
backoff_max = "200ms"
[[devices.tags]]
name = "Temp"
address = "DB1.DBD0"
datatype = "Float"

[[devices]]
name = "line"
driver = "sim"
[devices.scan_classes]
default = "50ms"
[[devices.tags]]
name = "Count"
address = "counter"
datatype = "UInt64"
"#,
        port = rogue.port
    );
    let gw = Gateway::start(&cfg, &["--dry-run"]);
    common::wait_for_port(http, Duration::from_secs(20));
    let violations = || common::prom_value(http, "spb_plc_protocol_violations_total{device=\"rogue\"}").unwrap_or(0.0);
    let changes = || common::prom_value(http, "spb_tag_changes_total{device=\"line\"}").unwrap_or(0.0);
    wait("three protocol violations", Duration::from_secs(30), || {
        violations() >= 3.0
    });
    let before = changes();
    wait("the healthy device keeps changing", Duration::from_secs(10), || {
        changes() > before + 20.0
    });
    let peak = common::peak_rss_mib(gw.child.id());
    eprintln!(
        "gateway peak RSS {peak:.1} MiB after {} rogue connections",
        rogue.connections.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(peak < 40.0, "peak RSS {peak:.1} MiB:\n{}", gw.log());
    assert!(gw.log().contains("the PLC broke the protocol: connection dropped"));
}
