//! A host fed arbitrary (topic, payload) pairs, ticks included, never panics:
//! bad input becomes quarantine events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spb::sparkplug::host::{HostConfig, HostSession};

fuzz_target!(|data: &[u8]| {
    let mut host = HostSession::new(HostConfig {
        host_id: "fuzz".into(),
        subscriptions: vec!["spBv1.0/#".into()],
        reorder_timeout_ms: 100,
        rebirth_min_interval_ms: 1_000,
    })
    .expect("valid host id");
    host.begin_connect(0);
    host.connected();
    let topics = [
        "spBv1.0/G/NBIRTH/N",
        "spBv1.0/G/NDATA/N",
        "spBv1.0/G/DBIRTH/N/D",
        "spBv1.0/G/DDATA/N/D",
        "spBv1.0/G/DDEATH/N/D",
        "spBv1.0/G/NDEATH/N",
        "spBv1.0/STATE/fuzz",
    ];
    let mut now = 0u64;
    // Each record: 1 byte topic selector, 1 byte length, then the payload.
    let mut rest = data;
    while let [sel, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (payload, next) = tail.split_at(n);
        now += u64::from(*sel);
        let _ = host.handle_message(now, topics[*sel as usize % topics.len()], payload);
        let _ = host.tick(now);
        rest = next;
    }
});
