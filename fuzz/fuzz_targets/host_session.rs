//! A host fed arbitrary (topic, payload) pairs, ticks included, never panics:
//! bad input becomes quarantine events. Payloads up to 64 KiB (a two-byte
//! length), so messages of many metrics and long names are reached, with
//! small limits so that every limit is met.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spb::sparkplug::host::{HostConfig, HostLimits, HostSession};

fuzz_target!(|data: &[u8]| {
    let mut host = HostSession::new(HostConfig {
        host_id: "fuzz".into(),
        subscriptions: vec!["spBv1.0/#".into()],
        reorder_timeout_ms: 100,
        rebirth_min_interval_ms: 1_000,
        limits: HostLimits {
            max_payload_bytes: 32 * 1024,
            max_metrics_per_message: 500,
            max_name_bytes: 64,
            max_held_messages: 8,
            max_nodes: 4,
            max_devices_per_node: 4,
            max_rebirths_per_second: 3,
        },
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
        "spBv1.0/G/NCMD/N",
        "spBv1.0/G/NBIRTH/M",
        "spBv1.0/G/NDATA/M",
        "spBv1.0/STATE/fuzz",
    ];
    let mut now = 0u64;
    // Each record: 1 byte topic selector, 2 bytes length, then the payload.
    let mut rest = data;
    while let [sel, hi, lo, tail @ ..] = rest {
        let n = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (payload, next) = tail.split_at(n);
        now += u64::from(*sel);
        let topic = topics[*sel as usize % topics.len()];
        let _ = host.inspect_command(topic, payload);
        let _ = host.handle_message(now, topic, payload);
        let _ = host.tick(now);
        assert!(host.tracked_nodes() <= 4);
        rest = next;
    }
});
