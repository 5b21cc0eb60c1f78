//! The Logix driver (rust-ethernet-ip behind src/plc/logix.rs) against
//! cpppo's EtherNet/IP simulator, checked with pylogix: every datatype cpppo
//! serves, read and written both ways; array elements and ranges; batched
//! reads; a missing tag is BAD alone; a dead controller is a connection error.

mod common;

use common::plc::{Cpppo, PeerClient};
use serde_json::json;
use spb::plc::logix::LogixDriver;
use spb::sparkplug::{DataType, Value};

const TAGS: &[&str] = &[
    "Counter=DINT",
    "Level=INT",
    "Small=SINT",
    "Flag=BOOL",
    "Temp=REAL[10]",
    "Big=DINT[200]",
    "Wide=LINT",
];

fn driver(port: u16, tags: &[(&str, DataType)]) -> LogixDriver {
    LogixDriver::new(
        format!("127.0.0.1:{port}"),
        None,
        20,
        tags.iter().map(|(a, dt)| (a.to_string(), *dt)),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// (our address, datatype, pylogix value, our value)
fn matrix() -> Vec<(&'static str, DataType, serde_json::Value, Value)> {
    vec![
        ("Counter", DataType::Int32, json!(-123456), Value::Int32(-123456)),
        ("Level", DataType::Int16, json!(-300), Value::Int16(-300)),
        ("Small", DataType::Int8, json!(-7), Value::Int8(-7)),
        ("Flag", DataType::Boolean, json!(true), Value::Boolean(true)),
        ("Temp[3]", DataType::Float, json!(21.5), Value::Float(21.5)),
        ("Big[150]", DataType::Int32, json!(99), Value::Int32(99)),
        (
            "Wide",
            DataType::Int64,
            json!(-5_000_000_000i64),
            Value::Int64(-5_000_000_000),
        ),
    ]
}

#[test]
fn every_logix_type_written_by_pylogix_reads_back_exactly() {
    let plc = Cpppo::start(TAGS);
    let mut peer = PeerClient::pylogix(plc.port);
    let m = matrix();
    for (tag, _, pv, _) in &m {
        peer.call(json!({"op":"write","tag":tag,"value":pv}));
    }
    let tags: Vec<(&str, DataType)> = m.iter().map(|(a, dt, ..)| (*a, *dt)).collect();
    let mut d = driver(plc.port, &tags);
    let got = rt().block_on(d.read(&(0..m.len()).collect::<Vec<_>>())).expect("read");
    for ((tag, _, _, want), got) in m.iter().zip(got) {
        assert_eq!(got.as_ref(), Ok(want), "{tag}");
    }
}

#[test]
fn every_logix_type_we_write_reads_back_exactly_in_pylogix() {
    let plc = Cpppo::start(TAGS);
    let mut peer = PeerClient::pylogix(plc.port);
    let m = matrix();
    let tags: Vec<(&str, DataType)> = m.iter().map(|(a, dt, ..)| (*a, *dt)).collect();
    let mut d = driver(plc.port, &tags);
    let rt = rt();
    for (i, (tag, _, pv, ours)) in m.iter().enumerate() {
        rt.block_on(d.write(i, ours))
            .expect("connection")
            .unwrap_or_else(|e| panic!("{tag}: {e}"));
        let got = peer.call(json!({"op":"read","tag":tag}))["value"].clone();
        assert_eq!(&got, pv, "{tag}");
    }
}

#[test]
fn array_ranges_read_in_one_metric_and_a_missing_tag_is_bad_alone() {
    let plc = Cpppo::start(TAGS);
    let mut peer = PeerClient::pylogix(plc.port);
    for i in 0..10 {
        peer.call(json!({"op":"write","tag":format!("Temp[{i}]"),"value":i as f64 * 1.5}));
    }
    peer.call(json!({"op":"write","tag":"Counter","value":7}));
    let mut d = driver(
        plc.port,
        &[
            ("Temp[2]{5}", DataType::FloatArray),
            ("NoSuchTag", DataType::Int32),
            ("Counter", DataType::Int32),
            ("Big[0]{200}", DataType::Int32Array),
        ],
    );
    let rt = rt();
    for _ in 0..2 {
        let got = rt.block_on(d.read(&[0, 1, 2, 3])).expect("the connection stays up");
        assert_eq!(got[0], Ok(Value::FloatArray(vec![3.0, 4.5, 6.0, 7.5, 9.0])));
        assert!(got[1].is_err(), "{:?}", got[1]);
        assert_eq!(
            got[2],
            Ok(Value::Int32(7)),
            "the batch neighbour of a missing tag is good"
        );
        assert_eq!(
            got[3],
            Ok(Value::Int32Array(vec![0; 200])),
            "larger than one reply: read in parts"
        );
    }
}

#[test]
fn a_batch_of_many_logix_tags_reads_every_value() {
    let plc = Cpppo::start(TAGS);
    let mut peer = PeerClient::pylogix(plc.port);
    for i in 0..60 {
        peer.call(json!({"op":"write","tag":format!("Big[{i}]"),"value":i * 3}));
    }
    let names: Vec<String> = (0..60).map(|i| format!("Big[{i}]")).collect();
    let tags: Vec<(&str, DataType)> = names.iter().map(|n| (n.as_str(), DataType::Int32)).collect();
    let mut d = driver(plc.port, &tags);
    let got = rt().block_on(d.read(&(0..60).collect::<Vec<_>>())).expect("read");
    let want: Vec<Result<Value, String>> = (0..60).map(|i| Ok(Value::Int32(i * 3))).collect();
    assert_eq!(got, want);
}

#[test]
fn a_dead_logix_controller_is_a_connection_error_and_reconnect_works() {
    let mut plc = Cpppo::start(TAGS);
    let mut d = driver(plc.port, &[("Counter", DataType::Int32)]);
    let rt = rt();
    assert!(rt.block_on(d.read(&[0])).is_ok());
    plc.kill();
    let r = rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(3), d.read(&[0])).await });
    assert!(!matches!(r, Ok(Ok(_))), "a dead controller is not a good read: {r:?}");
    plc.restart();
    let back = rt.block_on(async {
        for _ in 0..50 {
            if let Ok(v) = d.read(&[0]).await {
                return Some(v);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        None
    });
    assert_eq!(back.expect("reconnected")[0], Ok(Value::Int32(0)));
}

#[test]
fn a_routed_request_reaches_the_cpu_slot_and_a_wrong_slot_is_refused() {
    // cpppo configured with a route path (backplane port 1, slot 2) serves
    // requests routed there and refuses other slots; the route's bytes are
    // also checked in spb::plc::logix's unit tests.
    let plc = Cpppo::start_with(&["--route-path", "\"1/2\""], &["Counter=DINT"]);
    let rt = rt();
    let mut routed = LogixDriver::new(
        format!("127.0.0.1:{}", plc.port),
        Some(2),
        20,
        [("Counter".to_string(), DataType::Int32)],
    );
    assert_eq!(rt.block_on(routed.read(&[0])).expect("read")[0], Ok(Value::Int32(0)));
    rt.block_on(routed.write(0, &Value::Int32(31)))
        .expect("conn")
        .expect("write");
    assert_eq!(rt.block_on(routed.read(&[0])).expect("read")[0], Ok(Value::Int32(31)));
    let mut peer = PeerClient::pylogix(plc.port);
    assert_eq!(peer.call(json!({"op":"read","tag":"Counter"}))["value"], 31);
    let mut wrong = LogixDriver::new(
        format!("127.0.0.1:{}", plc.port),
        Some(5),
        20,
        [("Counter".to_string(), DataType::Int32)],
    );
    let r = rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), wrong.read(&[0])).await });
    assert!(
        matches!(r, Ok(Err(_))),
        "slot 5 holds no CPU: a connection error, got {r:?}"
    );
}
