//! Batches the sink tests of every backend write (`tests/uplink_postgres.rs`,
//! `tests/uplink_mssql.rs`), so both prove the same behaviour.
#![cfg(feature = "uplink")]

use spb::sparkplug::host::{DeathCause, HostEvent};
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
