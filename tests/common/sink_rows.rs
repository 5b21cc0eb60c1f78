//! Batches the sink tests of every backend write (`tests/uplink_postgres.rs`,
//! `tests/uplink_mssql.rs`), so both prove the same behaviour.
#![cfg(feature = "uplink")]

use spb::sparkplug::host::{DeathCause, HostEvent, Stale};
use spb::sparkplug::DataType;
use spb::sparkplug::{Metric, Value};
use spb::uplink::rows::Batch;

/// Second 40 of its minute: T0 + 2 s share it.
pub const T0: u64 = 1_795_000_000_000;

/// A DDATA of device G/N/D with `metric` at `values` (ts, value).
pub fn data(node: &str, metric: &str, values: &[(u64, f64)], historical: bool) -> HostEvent {
    HostEvent::data(
        "G",
        node,
        Some("D"),
        1,
        Some(values.last().map_or(0, |v| v.0)),
        values
            .iter()
            .map(|(ts, v)| {
                let mut m = Metric::new(metric, Value::Double(*v), *ts);
                m.is_historical = historical;
                m
            })
            .collect(),
    )
}

/// A node's birth (bdSeq 3, one metric "Uptime") with a raw NBIRTH and a
/// quarantined payload; then its NDEATH with the matching bdSeq.
pub fn birth_then_death() -> (Batch, Batch) {
    let mut b = Batch::default();
    b.add_raw("spBv1.0/G/NBIRTH/N", b"\x08\x01", T0);
    b.add_event(
        &HostEvent::NodeBirth {
            group: "G".into(),
            node: "N".into(),
            bdseq: 3,
            timestamp: Some(T0),
            metrics: vec![Metric::new("Uptime", Value::UInt64(1), T0)],
        },
        T0,
    );
    b.add_event(
        &HostEvent::Quarantine {
            topic: "spBv1.0/G/DDATA/N/D".into(),
            payload: b"\xffgarbage".to_vec(),
            reason: "not a Sparkplug payload".into(),
        },
        T0 + 1,
    );
    let mut d = Batch::default();
    d.add_event(
        &HostEvent::NodeDeath {
            group: "G".into(),
            node: "N".into(),
            cause: DeathCause::NDeath { bdseq: 3 },
            at: T0 + 10,
            stale: vec![],
        },
        T0 + 10,
    );
    (b, d)
}

/// A device "D" of node G/N (bdSeq 3) that is born at T0 with Temp = 1,
/// sends 2 at T0 + 3 s, dies at T0 + 3 s (DDEATH), is born again at T0 + 4 s
/// with 5, and then the node dies (NDEATH) at T0 + 9 s. The sample at T0 +
/// 3 s arrives after the DDEATH, replayed, in the same batch as the rebirth.
pub fn device_lifecycle() -> Vec<Batch> {
    let one = |ev: &HostEvent, at: u64| {
        let mut b = Batch::default();
        b.add_event(ev, at);
        b
    };
    let node_birth = HostEvent::NodeBirth {
        group: "G".into(),
        node: "N".into(),
        bdseq: 3,
        timestamp: Some(T0),
        metrics: vec![Metric::new("Uptime", Value::UInt64(1), T0)],
    };
    let device_birth = |at: u64, v: f64| HostEvent::DeviceBirth {
        group: "G".into(),
        node: "N".into(),
        device: "D".into(),
        timestamp: Some(at),
        metrics: vec![Metric::new("Temp", Value::Double(v), at)],
    };
    let mut rebirth = one(&data("N", "Temp", &[(T0 + 3000, 2.0)], true), T0 + 4000);
    rebirth.add_event(&device_birth(T0 + 4000, 5.0), T0 + 4000);
    vec![
        one(&node_birth, T0),
        one(&device_birth(T0, 1.0), T0),
        one(&device_death(T0 + 3000), T0 + 3000),
        rebirth,
        one(
            &HostEvent::NodeDeath {
                group: "G".into(),
                node: "N".into(),
                cause: DeathCause::NDeath { bdseq: 3 },
                at: T0 + 9000,
                stale: vec![
                    temp_stale(None, "Uptime", DataType::UInt64),
                    temp_stale(Some("D"), "Temp", DataType::Double),
                ],
            },
            T0 + 9000,
        ),
    ]
}

/// The DDEATH of device G/N/D at `at`: its Temp goes STALE.
pub fn device_death(at: u64) -> HostEvent {
    HostEvent::DeviceDeath {
        group: "G".into(),
        node: "N".into(),
        device: "D".into(),
        at,
        stale: vec![temp_stale(Some("D"), "Temp", DataType::Double)],
    }
}

fn temp_stale(device: Option<&str>, metric: &str, datatype: DataType) -> Stale {
    Stale {
        device: device.map(str::to_string),
        metric: metric.to_string(),
        datatype,
    }
}
