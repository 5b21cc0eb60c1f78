//! Interop with an independent Sparkplug B implementation (pysparkplug 0.6.1):
//! it decodes what we encode and we decode what it encodes, compared field by
//! field for every datatype both support (pysparkplug has no DataSet,
//! Template or PropertySet). Runs for real: fails if the peer is missing.

mod common;

use std::collections::HashMap;

use serde_json::{json, Value as J};
use spb::sparkplug::codec::{DatatypeSource, Datatypes};
use spb::sparkplug::edge::{DeviceDef, EdgeConfig, EdgeSession};
use spb::sparkplug::{DataType, Metric, Payload, Value};

const T: u64 = 1_700_000_000_123;

/// The canonical JSON form of a value, as `pysparkplug_peer.py` writes it.
fn canonical(v: &Option<Value>) -> J {
    let f32h = |f: &f32| J::String(common::hex(&f.to_le_bytes()));
    let f64h = |f: &f64| J::String(common::hex(&f.to_le_bytes()));
    match v {
        None => J::Null,
        Some(v) => match v {
            Value::Int8(x) => json!(x),
            Value::Int16(x) => json!(x),
            Value::Int32(x) => json!(x),
            Value::Int64(x) => json!(x),
            Value::UInt8(x) => json!(x),
            Value::UInt16(x) => json!(x),
            Value::UInt32(x) => json!(x),
            Value::UInt64(x) | Value::DateTime(x) => json!(x),
            Value::Float(x) => f32h(x),
            Value::Double(x) => f64h(x),
            Value::Boolean(x) => json!(x),
            Value::String(s) | Value::Text(s) | Value::Uuid(s) => json!(s),
            Value::Bytes(b) | Value::File(b) => json!(common::hex(b)),
            Value::Int8Array(a) => json!(a),
            Value::Int16Array(a) => json!(a),
            Value::Int32Array(a) => json!(a),
            Value::Int64Array(a) => json!(a),
            Value::UInt8Array(a) => json!(a),
            Value::UInt16Array(a) => json!(a),
            Value::UInt32Array(a) => json!(a),
            Value::UInt64Array(a) | Value::DateTimeArray(a) => json!(a),
            Value::FloatArray(a) => J::Array(a.iter().map(f32h).collect()),
            Value::DoubleArray(a) => J::Array(a.iter().map(f64h).collect()),
            Value::BooleanArray(a) => json!(a),
            Value::StringArray(a) => json!(a),
            other => panic!("pysparkplug does not support {}", other.datatype()),
        },
    }
}

/// One metric of every datatype both implementations support, with the values
/// that have burned implementations before: minimums, maximums, -0.0, unicode,
/// empty and odd-length arrays.
fn every_supported_type() -> Vec<Metric> {
    let values = vec![
        Value::Int8(i8::MIN),
        Value::Int16(i16::MIN),
        Value::Int32(i32::MIN),
        Value::Int64(i64::MIN),
        Value::UInt8(u8::MAX),
        Value::UInt16(u16::MAX),
        Value::UInt32(u32::MAX),
        Value::UInt64(u64::MAX),
        Value::Float(-0.0),
        Value::Double(f64::MAX),
        Value::Boolean(true),
        Value::String("Füllstand Tank 3 – °C".into()),
        Value::DateTime(1_700_000_000_123),
        Value::Text("line 1\nline 2".into()),
        Value::Uuid("6f1c0a1e-3b2d-4c1a-9e55-0123456789ab".into()),
        Value::Bytes(vec![0, 1, 0xfe, 0xff]),
        Value::File(b"%PDF-1.7".to_vec()),
        Value::Int8Array(vec![i8::MIN, -1, 0, i8::MAX]),
        Value::Int16Array(vec![i16::MIN, -2, i16::MAX]),
        Value::Int32Array(vec![i32::MIN, 7, i32::MAX]),
        Value::Int64Array(vec![i64::MIN, -3, i64::MAX]),
        Value::UInt8Array(vec![0, 128, 255]),
        Value::UInt16Array(vec![0, u16::MAX]),
        Value::UInt32Array(vec![]),
        Value::UInt64Array(vec![u64::MAX, 0]),
        Value::FloatArray(vec![1.5, f32::MIN_POSITIVE, -0.0]),
        Value::DoubleArray(vec![std::f64::consts::PI, -1e300]),
        Value::BooleanArray(vec![true, false, true, true, false, false, false, false, true]),
        Value::StringArray(vec!["a".into(), "ß".into(), "".into(), "z z".into()]),
        Value::DateTimeArray(vec![1_700_000_000_000, 1_600_000_000_500]),
    ];
    let mut metrics: Vec<Metric> = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let mut m = Metric::new(format!("Types/{}", v.datatype()), v, T + i as u64);
            m.alias = Some(i as u64 + 1);
            m
        })
        .collect();
    let mut null = Metric::null("Types/Null Double", DataType::Double, T);
    null.alias = Some(100);
    metrics.push(null);
    metrics
}

fn metric_json(m: &Metric) -> J {
    json!({
        "name": m.name,
        "alias": m.alias,
        "timestamp": m.timestamp,
        "datatype": m.datatype.code(),
        "is_historical": m.is_historical,
        "is_transient": m.is_transient,
        "is_null": m.value.is_none(),
        "value": canonical(&m.value),
    })
}

struct Birth(HashMap<u64, DataType>);

impl DatatypeSource for Birth {
    fn datatype_of(&self, _: Option<&str>, alias: Option<u64>) -> Option<DataType> {
        self.0.get(&alias?).copied()
    }
}

fn birth_of(metrics: &[Metric]) -> Birth {
    Birth(
        metrics
            .iter()
            .map(|m| (m.alias.expect("aliased"), m.datatype))
            .collect(),
    )
}

#[test]
fn pysparkplug_decodes_every_datatype_we_encode_field_by_field() {
    let metrics = every_supported_type();
    let ours = Payload {
        timestamp: Some(T),
        metrics: metrics.clone(),
        seq: Some(0),
        ..Payload::default()
    };
    let answer =
        common::pysparkplug(&json!({"op": "decode_birth", "payload": common::hex(&ours.encode().expect("encodes"))}));
    assert_eq!(answer["pysparkplug_version"], "0.6.1");
    assert_eq!(answer["timestamp"], json!(T));
    assert_eq!(answer["seq"], json!(0));
    let theirs = answer["metrics"].as_array().expect("metrics");
    assert_eq!(theirs.len(), metrics.len());
    for (m, t) in metrics.iter().zip(theirs) {
        assert_eq!(&metric_json(m), t, "metric {:?}", m.name);
    }
}

#[test]
fn we_decode_every_datatype_pysparkplug_encodes_field_by_field() {
    let metrics = every_supported_type();
    let answer = common::pysparkplug(&json!({
        "op": "encode_birth",
        "timestamp": T,
        "seq": 0,
        "metrics": metrics.iter().map(metric_json).collect::<Vec<_>>(),
    }));
    let bytes = common::unhex(answer["payload"].as_str().expect("hex payload"));
    let decoded = Payload::decode(&bytes).expect("we decode pysparkplug's NBIRTH");
    assert_eq!((decoded.timestamp, decoded.seq), (Some(T), Some(0)));
    assert_eq!(decoded.metrics, metrics);
}

#[test]
fn alias_only_data_without_datatypes_round_trips_both_ways() {
    let birth_metrics = every_supported_type();
    let birth = Payload {
        timestamp: Some(T),
        metrics: birth_metrics.clone(),
        seq: Some(0),
        ..Payload::default()
    };
    let birth_bytes = birth.encode().expect("encodes");
    let mut data = birth_metrics.clone();
    for m in &mut data {
        m.name = None;
        m.is_historical = true;
    }
    // Ours → theirs.
    let ours = Payload {
        timestamp: Some(T + 1),
        metrics: data.clone(),
        seq: Some(1),
        ..Payload::default()
    };
    let answer = common::pysparkplug(&json!({
        "op": "decode_data",
        "birth": common::hex(&birth_bytes),
        "payload": common::hex(&ours.encode_with(Datatypes::Omit).expect("encodes")),
    }));
    for (m, t) in birth_metrics.iter().zip(answer["metrics"].as_array().expect("metrics")) {
        let mut expect = metric_json(m);
        expect["is_historical"] = json!(true); // pysparkplug fills the name back in from the birth
        assert_eq!(&expect, t);
    }
    // Theirs → ours.
    let answer = common::pysparkplug(&json!({
        "op": "encode_data",
        "timestamp": T + 1,
        "seq": 1,
        "metrics": data.iter().map(metric_json).collect::<Vec<_>>(),
    }));
    let bytes = common::unhex(answer["payload"].as_str().expect("hex payload"));
    let decoded = Payload::decode_with(&bytes, &birth_of(&birth_metrics)).expect("decodes with the birth");
    assert_eq!(decoded.metrics, data);
}

#[test]
fn pysparkplug_decodes_the_births_and_data_of_our_edge_session() {
    let mut edge = EdgeSession::new(
        EdgeConfig {
            group_id: "Plant 1".into(),
            node_id: "gw-01".into(),
            primary_host_id: None,
            server_count: 1,
            rebirth_debounce_ms: 0,
            aliases: true,
            max_data_metrics: 500,
            limits: Default::default(),
        },
        vec![Metric::new("Uptime", Value::UInt64(5), T)],
        vec![DeviceDef {
            name: "press".into(),
            metrics: vec![Metric::new("Temp", Value::Float(20.5), T)],
        }],
        Some(17),
    )
    .expect("valid");
    edge.device_online(T, "press").expect("declared");
    edge.begin_connect(T);
    let mut actions = edge.connected(T);
    actions.extend(
        edge.update(T + 5, None, vec![Metric::new("Uptime", Value::UInt64(6), T + 5)])
            .expect("declared"),
    );
    let published: Vec<_> = actions.into_iter().filter_map(|a| a.publish().cloned()).collect();
    let nbirth = common::pysparkplug(&json!({"op": "decode_birth", "payload": common::hex(&published[0].payload)}));
    let names: Vec<&str> = nbirth["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["bdSeq", "Node Control/Rebirth", "Node Control/Next Server", "Uptime"]
    );
    assert_eq!(nbirth["metrics"][0]["value"], json!(17));
    assert_eq!(nbirth["metrics"][0]["datatype"], json!(4), "bdSeq is Int64");
    assert_eq!(nbirth["metrics"][1]["value"], json!(false));
    assert_eq!(nbirth["seq"], json!(0));
    let ndata = common::pysparkplug(&json!({
        "op": "decode_data",
        "birth": common::hex(&published[0].payload),
        "payload": common::hex(&published[2].payload),
    }));
    assert_eq!(ndata["seq"], json!(2));
    assert_eq!(ndata["metrics"][0]["name"], json!("Uptime"));
    assert_eq!(ndata["metrics"][0]["value"], json!(6));
}
