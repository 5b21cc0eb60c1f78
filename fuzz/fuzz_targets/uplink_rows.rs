//! Whatever the broker carries, the rows the uplink makes are rows every
//! database takes: no NUL in any text column, every timestamp within
//! 1970-9999, every name within the key limit (the rest is quarantined).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spb::sparkplug::host::{HostConfig, HostLimits, HostSession};
use spb::uplink::rows::{fact_defect, Batch, MAX_TS_MS};

fuzz_target!(|data: &[u8]| {
    let mut host = HostSession::new(HostConfig {
        host_id: "fuzz".into(),
        subscriptions: vec!["spBv1.0/#".into()],
        reorder_timeout_ms: 0,
        rebirth_min_interval_ms: 0,
        limits: HostLimits::default(),
    })
    .expect("valid");
    host.begin_connect(0);
    host.connected();
    let topics = ["spBv1.0/G/NBIRTH/N", "spBv1.0/G/NDATA/N", "spBv1.0/G/DBIRTH/N/D", "spBv1.0/G/DDATA/N/D", "spBv1.0/G/NCMD/N"];
    let mut b = Batch::default();
    let mut rest = data;
    let mut now = 1_800_000_000_000u64;
    while let [sel, hi, lo, tail @ ..] = rest {
        let n = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (payload, next) = tail.split_at(n);
        now += 1;
        let topic = topics[*sel as usize % topics.len()];
        b.add_raw(topic, payload, now);
        if let Some(c) = host.inspect_command(topic, payload) {
            b.add_command(&c, now, "fuzz");
        }
        for ev in host.handle_message(now, topic, payload) {
            b.add_event(&ev, now);
        }
        rest = next;
    }
    let ts_ok = |t: i64| (0..=MAX_TS_MS).contains(&t);
    for f in &b.facts {
        assert_eq!(fact_defect(f), None, "{f:?}");
    }
    for r in &b.raw {
        assert!(!r.topic.contains('\0') && ts_ok(r.received_ms));
    }
    for s in &b.states {
        assert!(!s.group.contains('\0') && !s.node.contains('\0') && ts_ok(s.at_ms));
    }
    for c in &b.catalog {
        assert!(!c.properties.contains('\0') && !c.metric.contains('\0') && ts_ok(c.seen_ms));
    }
    for q in &b.quarantine {
        assert!(!q.topic.contains('\0') && !q.reason.contains('\0') && ts_ok(q.received_ms));
    }
    for c in &b.commands {
        let texts = [&c.group, &c.node, &c.device, &c.metric, &c.reason];
        assert!(texts.iter().all(|t| !t.contains('\0')) && ts_ok(c.at_ms));
        assert!(c.value.as_ref().is_none_or(|v| !v.contains('\0')));
    }
});
