//! An edge node fed arbitrary commands and STATE messages, live or
//! retained, never panics, never honours a retained command, and stays
//! within its limits: what it cannot use becomes `Rejected`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spb::sparkplug::edge::{DeviceDef, EdgeAction, EdgeConfig, EdgeLimits, EdgeSession};
use spb::sparkplug::{Metric, Value};

const T0: u64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let mut e = EdgeSession::new(
        EdgeConfig {
            group_id: "G".into(),
            node_id: "N".into(),
            primary_host_id: Some("scada".into()),
            server_count: 2,
            rebirth_debounce_ms: 1_000,
            aliases: true,
            max_data_metrics: 10,
            limits: EdgeLimits {
                max_command_metrics: 50,
                state_max_skew_ms: 60_000,
                max_packet_bytes: 4096,
            },
        },
        vec![Metric::new("Load", Value::Double(0.5), T0)],
        vec![DeviceDef {
            name: "D".into(),
            metrics: vec![Metric::new("Temp", Value::Float(1.0), T0)],
        }],
        None,
    )
    .expect("valid");
    let _ = e.device_online(T0, "D");
    e.begin_connect(T0);
    e.connected(T0);
    let topics = ["spBv1.0/G/NCMD/N", "spBv1.0/G/DCMD/N/D", "spBv1.0/G/DCMD/N/X", "spBv1.0/STATE/scada"];
    let mut now = T0;
    // Each record: 1 byte selector (topic, retained), 2 bytes length, payload.
    let mut rest = data;
    while let [sel, hi, lo, tail @ ..] = rest {
        let n = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (payload, next) = tail.split_at(n);
        now += u64::from(*sel) * 10;
        let topic = topics[*sel as usize % topics.len()];
        let retained = sel & 0x80 != 0;
        let server = e.server();
        let out = e.handle_delivery(now, topic, payload, retained);
        if retained && !topic.contains("STATE") {
            assert!(out.iter().all(|a| matches!(a, EdgeAction::Rejected { .. })), "{out:?}");
            assert_eq!(e.server(), server, "a retained command walked the node");
        }
        for a in &out {
            if let EdgeAction::Command { metrics, .. } = a {
                assert!(metrics.len() <= 50);
            }
        }
        rest = next;
    }
});
