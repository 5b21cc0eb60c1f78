//! The protocol core at work, no broker needed: a real `EdgeSession` (one node,
//! a simulated press) talks to a real `HostSession`; every message is printed
//! decoded. A message is lost on purpose to show the host's reorder timeout and
//! rebirth request, and the node shuts down cleanly at the end.
//!
//! `make demo-core` runs it; `make demo` is the networked demo (broker, PLC
//! simulator, the gateway).

use std::fmt::Write;

use spb::sparkplug::edge::{DeviceDef, EdgeAction, EdgeConfig, EdgeSession};
use spb::sparkplug::host::{HostConfig, HostEvent, HostLimits, HostSession};
use spb::sparkplug::{pretty, DataType, Metric, Payload, Publish, Value};

/// One line of the demo's output (kept in a String, so that a test can read it).
macro_rules! say {
    ($out:expr, $($t:tt)*) => {{
        let _ = writeln!($out, $($t)*);
    }};
}

fn show(out: &mut String, p: &Publish) {
    let decoded = Payload::decode(&p.payload)
        .map(|d| pretty::payload_lines(&d))
        .unwrap_or_else(|_| format!("{} bytes (DATA: decoded by the host below)", p.payload.len()));
    say!(out, "→ {}  {}", p.topic, decoded.replace('\n', "\n   "));
}

fn deliver(out: &mut String, now: u64, host: &mut HostSession, edge: &mut EdgeSession, p: &Publish) {
    for ev in host.handle_message(now, &p.topic, &p.payload) {
        report(out, now, edge, host, ev);
    }
}

fn report(out: &mut String, now: u64, edge: &mut EdgeSession, host: &mut HostSession, ev: HostEvent) {
    match ev {
        HostEvent::Data {
            device,
            seq,
            metrics,
            names,
            ..
        } => {
            for (m, n) in metrics.iter().zip(&names) {
                say!(
                    out,
                    "   host: {} seq {seq}: {}",
                    device.as_deref().unwrap_or("node"),
                    pretty::metric_line_named(m, n)
                );
            }
        }
        HostEvent::Publish(p) => {
            say!(out, "← host publishes {}", p.topic);
            // The rebirth request goes back to the edge, whose births go to the host.
            for a in edge.handle_message(now, &p.topic, &p.payload) {
                if let Some(b) = a.publish() {
                    show(out, b);
                    deliver(out, now, host, edge, b);
                }
            }
        }
        HostEvent::NodeBirth {
            node, bdseq, metrics, ..
        } => {
            say!(
                out,
                "   host: node {node} online, bdSeq {bdseq}, {} metrics",
                metrics.len()
            )
        }
        HostEvent::DeviceBirth { device, metrics, .. } => {
            say!(out, "   host: device {device} online, {} metrics", metrics.len())
        }
        HostEvent::SequenceError { expected, got, .. } => say!(out, "   host: expected seq {expected}, got {got}"),
        HostEvent::RebirthRequested { reason, .. } => say!(out, "   host: rebirth requested ({reason})"),
        other => say!(out, "   host: {other:?}"),
    }
}

fn main() {
    print!("{}", run());
}

/// The whole demo; its output, line by line.
pub fn run() -> String {
    let mut out = String::new();
    let out = &mut out;
    let mut now = 1_700_000_000_000u64;
    let mut edge = EdgeSession::new(
        EdgeConfig {
            group_id: "Plant1".into(),
            node_id: "gw-01".into(),
            primary_host_id: Some("scada".into()),
            server_count: 1,
            rebirth_debounce_ms: 1_000,
            aliases: true,
            max_data_metrics: 500,
            limits: Default::default(),
        },
        vec![],
        vec![DeviceDef {
            name: "press".into(),
            metrics: vec![
                Metric::new("Temperature", Value::Float(20.0), now),
                Metric::new("Cycles", Value::UInt32(0), now),
                Metric::null("Recipe", DataType::String, now),
            ],
        }],
        None,
    )
    .expect("valid demo configuration");
    let mut host = HostSession::new(HostConfig {
        host_id: "scada".into(),
        subscriptions: vec!["spBv1.0/#".into()],
        reorder_timeout_ms: 2_000,
        rebirth_min_interval_ms: 5_000,
        limits: HostLimits::default(),
    })
    .expect("valid host id");

    say!(out, "== host connects: Will = STATE offline, then STATE online");
    host.begin_connect(now);
    let mut host_state = None;
    for ev in host.connected() {
        if let HostEvent::Publish(p) = ev {
            say!(out, "← {} {}", p.topic, String::from_utf8_lossy(&p.payload));
            host_state = Some(p);
        }
    }
    say!(
        out,
        "== edge connects, subscribes, waits for the Primary Host STATE, then is born"
    );
    edge.device_online(now, "press").expect("declared device");
    edge.begin_connect(now);
    edge.connected(now);
    let state = host_state.expect("the host published its STATE");
    for a in edge.handle_message(now, &state.topic, &state.payload) {
        if let Some(p) = a.publish() {
            show(out, p);
            deliver(out, now, &mut host, &mut edge, p);
        }
    }
    say!(out, "== the press changes; one DDATA is lost on the way");
    for i in 1..=5u32 {
        now += 500;
        let samples = vec![
            Metric::new("Temperature", Value::Float(20.0 + i as f32 * 0.75), now),
            Metric::new("Cycles", Value::UInt32(i), now),
        ];
        // DATA comes as `EdgeAction::Data` (its samples kept for the
        // store), births and deaths as `EdgeAction::Publish`.
        for a in edge.update(now, Some("press"), samples).expect("declared metrics") {
            if let Some(p) = a.publish() {
                if i == 2 {
                    say!(out, "✗ lost: {}", p.topic);
                    continue;
                }
                say!(out, "→ {} ({} bytes)", p.topic, p.payload.len());
                deliver(out, now, &mut host, &mut edge, p);
            }
        }
    }
    say!(
        out,
        "== reorder timeout passes: the host requests a rebirth, the edge answers"
    );
    now += 2_000;
    for ev in host.tick(now) {
        report(out, now, &mut edge, &mut host, ev);
    }
    say!(out, "== the edge shuts down: NDEATH, then DISCONNECT");
    for a in edge.shutdown(now) {
        match a {
            EdgeAction::Publish(p) => {
                show(out, &p);
                for ev in host.handle_message(now, &p.topic, &p.payload) {
                    if let HostEvent::NodeDeath { stale, .. } = ev {
                        say!(out, "   host: node offline, {} metrics STALE", stale.len());
                    }
                }
            }
            other => say!(out, "   edge: {other:?}"),
        }
    }
    out.clone()
}
