//! The S7 driver against two independent S7 servers (python-snap7's, and
//! node-snap7's, the Snap7 C++ library), checked with python-snap7's own
//! client and its own `snap7.util` codecs: every datatype read and written,
//! multi-item packing at both negotiated PDU sizes, per-tag errors.

mod common;

use common::plc::{PeerClient, S7Impl, S7Server};
use serde_json::json;
use spb::plc::s7::{S7Driver, S7Options};
use spb::sparkplug::{DataType, Value};

fn driver(port: u16, tags: &[(&str, DataType)]) -> S7Driver {
    S7Driver::new(
        S7Options {
            addr: format!("127.0.0.1:{port}"),
            local_tsap: 0x0100,
            remote_tsap: S7Options::tsap_for(1, 0, 1),
            pdu_size: 960,
            max_items: 20,
        },
        tags.iter().map(|(a, dt)| (a.to_string(), *dt)),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// (our address, datatype, python-snap7 type, peer value, our value)
fn matrix() -> Vec<(&'static str, DataType, &'static str, serde_json::Value, Value)> {
    vec![
        (
            "DB1.DBX0.0",
            DataType::Boolean,
            "BOOL",
            json!(true),
            Value::Boolean(true),
        ),
        ("DB1.DBB1", DataType::UInt8, "BYTE", json!(200), Value::UInt8(200)),
        ("DB1.DBB2:SINT", DataType::Int8, "SINT", json!(-100), Value::Int8(-100)),
        ("DB1.DBW4", DataType::UInt16, "WORD", json!(65000), Value::UInt16(65000)),
        (
            "DB1.DBW6",
            DataType::Int16,
            "INT",
            json!(-32768),
            Value::Int16(i16::MIN),
        ),
        (
            "DB1.DBD8",
            DataType::UInt32,
            "DWORD",
            json!(4_000_000_000u32),
            Value::UInt32(4_000_000_000),
        ),
        (
            "DB1.DBD12",
            DataType::Int32,
            "DINT",
            json!(i32::MIN),
            Value::Int32(i32::MIN),
        ),
        ("DB1.DBD16", DataType::Float, "REAL", json!(-1.25), Value::Float(-1.25)),
        (
            "DB1.DBB20:LREAL",
            DataType::Double,
            "LREAL",
            json!(1.0e300),
            Value::Double(1.0e300),
        ),
        (
            "DB1.DBB28:LINT",
            DataType::Int64,
            "LINT",
            json!(i64::MIN),
            Value::Int64(i64::MIN),
        ),
        (
            "DB1.DBB36:CHAR",
            DataType::String,
            "CHAR",
            json!("Z"),
            Value::String("Z".into()),
        ),
        (
            "DB1.DBB38:STRING[20]",
            DataType::String,
            "STRING",
            json!("Pump 3 ÄÖ"),
            Value::String("Pump 3 ÄÖ".into()),
        ),
        (
            "DB1.DBB60:DT",
            DataType::DateTime,
            "DT",
            json!("2024-02-29T13:45:07.123000"),
            Value::DateTime(1_709_214_307_123),
        ),
        (
            "DB1.DBD68:TIME",
            DataType::Int32,
            "TIME",
            json!(-86_400_000),
            Value::Int32(-86_400_000),
        ),
        (
            "DB1.DBW72:DATE",
            DataType::DateTime,
            "DATE",
            json!("2026-11-24"),
            Value::DateTime(1_795_478_400_000),
        ),
        ("MW10", DataType::Int16, "INT", json!(1234), Value::Int16(1234)),
        ("MD20", DataType::Float, "REAL", json!(3.5), Value::Float(3.5)),
        ("I0.1", DataType::Boolean, "BOOL", json!(true), Value::Boolean(true)),
        ("IW2", DataType::UInt16, "WORD", json!(513), Value::UInt16(513)),
        ("Q1.7", DataType::Boolean, "BOOL", json!(true), Value::Boolean(true)),
        ("QB2", DataType::UInt8, "BYTE", json!(7), Value::UInt8(7)),
    ]
}

/// The peer's (area, db, offset, bit) for one of our addresses.
fn peer_req(op: &str, addr: &str, dt: DataType, ty: &str) -> serde_json::Value {
    use spb::plc::s7::address::{Area, S7Address};
    let a = S7Address::parse(addr, dt).unwrap_or_else(|e| panic!("{addr}: {e}"));
    let area = match a.area {
        Area::Db(_) => "DB",
        Area::Merker => "M",
        Area::Inputs => "I",
        Area::Outputs => "Q",
        other => panic!("no peer area for {other}"),
    };
    json!({"op": op, "area": area, "db": a.area.db(), "offset": a.byte, "bit": a.bit, "type": ty, "max": 20})
}

fn every_type_the_peer_writes_reads_back_exactly(kind: S7Impl) {
    let server = S7Server::start(kind);
    let mut peer = PeerClient::snap7(server.port);
    let m = matrix();
    for (addr, dt, ty, pv, _) in &m {
        let mut req = peer_req("set", addr, *dt, ty);
        req["value"] = pv.clone();
        peer.call(req);
    }
    let tags: Vec<(&str, DataType)> = m.iter().map(|(a, dt, ..)| (*a, *dt)).collect();
    let mut d = driver(server.port, &tags);
    let got = rt().block_on(d.read(&(0..m.len()).collect::<Vec<_>>())).expect("read");
    for ((addr, _, _, _, want), got) in m.iter().zip(got) {
        assert_eq!(got.as_ref(), Ok(want), "{addr} on {kind:?}");
    }
}

fn every_type_we_write_the_peer_reads_back_exactly(kind: S7Impl) {
    let server = S7Server::start(kind);
    let mut peer = PeerClient::snap7(server.port);
    let m = matrix();
    let tags: Vec<(&str, DataType)> = m.iter().map(|(a, dt, ..)| (*a, *dt)).collect();
    let mut d = driver(server.port, &tags);
    let rt = rt();
    for (i, (addr, dt, ty, pv, ours)) in m.iter().enumerate() {
        // python-snap7 3.3's server stores a bit write as the whole byte 0/1
        // (so only bit 0 comes out right); bits are proven on node-snap7 and in
        // a_bit_write_leaves_the_other_bits_of_its_byte_alone.
        if kind == S7Impl::Python && *dt == DataType::Boolean && !addr.ends_with(".0") {
            continue;
        }
        rt.block_on(d.write(i, ours))
            .expect("connection")
            .unwrap_or_else(|e| panic!("{addr}: {e}"));
        let got = peer.call(peer_req("get", addr, *dt, ty))["value"].clone();
        match (pv.as_f64(), got.as_f64()) {
            (Some(a), Some(b)) => assert!((a - b).abs() <= a.abs() * 1e-6, "{addr}: peer read {got}, wrote {pv}"),
            _ => assert_eq!(&got, pv, "{addr} on {kind:?}"),
        }
    }
}

#[test]
fn every_s7_type_written_by_python_snap7_reads_back_exactly() {
    every_type_the_peer_writes_reads_back_exactly(S7Impl::Python);
}

#[test]
fn every_s7_type_written_on_node_snap7_reads_back_exactly() {
    every_type_the_peer_writes_reads_back_exactly(S7Impl::Node);
}

#[test]
fn every_s7_type_we_write_reads_back_exactly_in_python_snap7() {
    every_type_we_write_the_peer_reads_back_exactly(S7Impl::Python);
}

#[test]
fn every_s7_type_we_write_reads_back_exactly_on_node_snap7() {
    every_type_we_write_the_peer_reads_back_exactly(S7Impl::Node);
}

#[test]
fn a_bit_write_leaves_the_other_bits_of_its_byte_alone() {
    // node-snap7 (Snap7's C++ server) writes single bits as a CPU does;
    // python-snap7 3.3's server stores a bit write as a whole byte (its quirk).
    let server = S7Server::start(S7Impl::Node);
    let mut peer = PeerClient::snap7(server.port);
    peer.call(json!({"op":"rawset","area":"M","offset":5,"hex":"a5"}));
    let mut d = driver(server.port, &[("M5.1", DataType::Boolean), ("M5.2", DataType::Boolean)]);
    let rt = rt();
    rt.block_on(d.write(0, &Value::Boolean(true)))
        .expect("conn")
        .expect("write");
    rt.block_on(d.write(1, &Value::Boolean(true)))
        .expect("conn")
        .expect("write");
    assert_eq!(
        peer.call(json!({"op":"raw","area":"M","offset":5,"size":1}))["hex"],
        "a7"
    );
    rt.block_on(d.write(1, &Value::Boolean(false)))
        .expect("conn")
        .expect("write");
    assert_eq!(
        peer.call(json!({"op":"raw","area":"M","offset":5,"size":1}))["hex"],
        "a3"
    );
}

fn packing(kind: S7Impl, pdu: u16, requests_for_1600_bytes: u64) {
    let server = S7Server::start(kind);
    let mut peer = PeerClient::snap7(server.port);
    // 400 REALs (1600 bytes) written by the peer, one value each.
    let bytes: Vec<u8> = (0..400).flat_map(|i| (i as f32 * 0.5).to_be_bytes()).collect();
    for (k, chunk) in bytes.chunks(400).enumerate() {
        let hex: String = chunk.iter().map(|b| format!("{b:02x}")).collect();
        peer.call(json!({"op":"rawset","area":"DB","db":2,"offset":k * 400,"hex":hex}));
    }
    let mut d = driver(server.port, &[("DB2.DBD0:REAL[400]", DataType::FloatArray)]);
    let rt = rt();
    rt.block_on(d.connect()).expect("connect");
    assert_eq!(d.pdu(), Some(pdu), "negotiated PDU on {kind:?}");
    let before = d.requests();
    let got = rt.block_on(d.read(&[0])).expect("read");
    assert_eq!(
        d.requests() - before,
        requests_for_1600_bytes,
        "requests for 1600 bytes at PDU {pdu}"
    );
    let want: Vec<f32> = (0..400).map(|i| i as f32 * 0.5).collect();
    assert_eq!(got[0], Ok(Value::FloatArray(want)));

    // 60 scattered tags in three DBs and M: at most 20 items a request.
    let tags: Vec<(String, DataType)> = (0..20)
        .flat_map(|i| {
            [
                (format!("DB1.DBD{}", i * 24), DataType::Float),
                (format!("DB2.DBW{}", i * 40), DataType::Int16),
                (format!("MB{}", i * 12), DataType::UInt8),
            ]
        })
        .collect();
    let refs: Vec<(&str, DataType)> = tags.iter().map(|(a, dt)| (a.as_str(), *dt)).collect();
    let mut d = driver(server.port, &refs);
    rt.block_on(d.connect()).expect("connect");
    let before = d.requests();
    let got = rt.block_on(d.read(&(0..60).collect::<Vec<_>>())).expect("read");
    assert!(got.iter().all(Result::is_ok), "{got:?}");
    assert_eq!(d.requests() - before, 3, "60 items in requests of 20");
}

#[test]
fn reads_are_packed_and_split_at_python_snap7s_480_byte_pdu() {
    // 462 data bytes fit one response item at 480: 1600 bytes take 4 requests.
    packing(S7Impl::Python, 480, 4);
}

#[test]
fn reads_are_packed_and_split_at_node_snap7s_960_byte_pdu() {
    // 942 data bytes per item at 960: 1600 bytes take 2 requests.
    packing(S7Impl::Node, 960, 2);
}

fn errors_stay_on_their_tag(kind: S7Impl) {
    let server = S7Server::start(kind);
    let mut peer = PeerClient::snap7(server.port);
    peer.call(json!({"op":"set","db":3,"offset":56,"type":"REAL","value":2.5}));
    peer.call(json!({"op":"set","db":1,"offset":0,"type":"DINT","value":42}));
    let tags = [
        ("DB1.DBD0", DataType::Int32),
        ("DB9.DBD0", DataType::Float),  // no DB9
        ("DB3.DBD62", DataType::Float), // DB3 has 64 bytes: 62..66 is out of range
        ("DB3.DBD56", DataType::Float), // merged with the one above at first
        ("DB1.DBW0:REAL", DataType::Float),
    ];
    // The last address is refused at parse time (REAL is 4 bytes), yet the others read.
    let mut d = driver(server.port, &tags);
    let rt = rt();
    for _ in 0..2 {
        let got = rt.block_on(d.read(&[0, 1, 2, 3, 4])).expect("the connection stays up");
        assert_eq!(got[0], Ok(Value::Int32(42)));
        assert!(
            got[1].as_ref().unwrap_err().contains("object does not exist"),
            "{:?}",
            got[1]
        );
        assert!(got[2].as_ref().unwrap_err().contains("out of range"), "{:?}", got[2]);
        assert_eq!(got[3], Ok(Value::Float(2.5)), "the neighbour of a bad tag is good");
        assert!(got[4].as_ref().unwrap_err().contains("REAL is 4 bytes"), "{:?}", got[4]);
    }
}

#[test]
fn a_missing_db_or_out_of_range_tag_is_bad_alone_on_python_snap7() {
    errors_stay_on_their_tag(S7Impl::Python);
}

#[test]
fn a_missing_db_or_out_of_range_tag_is_bad_alone_on_node_snap7() {
    errors_stay_on_their_tag(S7Impl::Node);
}

#[test]
fn timers_and_counters_read_as_words() {
    // On python-snap7's server: Snap7's C++ server (node-snap7) answers every
    // timer/counter read from T0/C0 whatever number is asked, to python-snap7's
    // own client too (seen in this test's history), so it cannot check this.
    let server = S7Server::start(S7Impl::Python);
    let mut peer = PeerClient::snap7(server.port);
    // Timer 3 and counter 4 live at bytes 6 and 8 of their areas.
    peer.call(json!({"op":"rawset","area":"T","offset":0,"hex":"000000000000123400000000"}));
    peer.call(json!({"op":"rawset","area":"C","offset":0,"hex":"00000000000000000042"}));
    let mut d = driver(server.port, &[("T3", DataType::UInt16), ("C4", DataType::UInt16)]);
    let got = rt().block_on(d.read(&[0, 1])).expect("read");
    assert_eq!(got, vec![Ok(Value::UInt16(0x1234)), Ok(Value::UInt16(0x42))]);
}

#[test]
fn a_dead_server_is_a_connection_error_and_reconnect_works() {
    let mut server = S7Server::start(S7Impl::Python);
    let mut d = driver(server.port, &[("DB1.DBD0", DataType::Int32)]);
    let rt = rt();
    assert!(rt.block_on(d.read(&[0])).is_ok());
    server.kill();
    assert!(rt.block_on(d.read(&[0])).is_err(), "a dead PLC is an outer error");
    server.restart();
    assert_eq!(rt.block_on(d.read(&[0])).expect("reconnected")[0], Ok(Value::Int32(0)));
}
