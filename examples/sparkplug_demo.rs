//! The protocol core at work, no broker needed: a real `EdgeSession` (one node,
//! a simulated press) talks to a real `HostSession`; every message is printed
//! decoded. A message is lost on purpose to show the host's reorder timeout and
//! rebirth request, and the node shuts down cleanly at the end.
//!
//! `make demo-core` runs it; `make demo` is the networked demo (broker, PLC
//! simulator, the gateway).

use spb::sparkplug::edge::{DeviceDef, EdgeAction, EdgeConfig, EdgeSession};
use spb::sparkplug::host::{HostConfig, HostEvent, HostLimits, HostSession};
use spb::sparkplug::{pretty, DataType, Metric, Payload, Publish, Value};

fn show(p: &Publish) {
    let decoded = Payload::decode(&p.payload)
        .map(|d| pretty::payload_lines(&d))
        .unwrap_or_else(|_| format!("{} bytes (DATA: decoded by the host below)", p.payload.len()));
    println!("→ {}  {}", p.topic, decoded.replace('\n', "\n   "));
}

fn deliver(now: u64, host: &mut HostSession, edge: &mut EdgeSession, p: &Publish) {
    for ev in host.handle_message(now, &p.topic, &p.payload) {
        report(now, edge, host, ev);
    }
}

fn report(now: u64, edge: &mut EdgeSession, host: &mut HostSession, ev: HostEvent) {
    match ev {
        HostEvent::Data {
            device,
            seq,
            metrics,
            names,
            ..
        } => {
            for (m, n) in metrics.iter().zip(&names) {
                println!(
                    "   host: {} seq {seq}: {}",
                    device.as_deref().unwrap_or("node"),
                    pretty::metric_line_named(m, n)
                );
            }
        }
        HostEvent::Publish(p) => {
            println!("← host publishes {}", p.topic);
            // The rebirth request goes back to the edge, whose births go to the host.
            for a in edge.handle_message(now, &p.topic, &p.payload) {
                if let EdgeAction::Publish(b) = a {
                    show(&b);
                    deliver(now, host, edge, &b);
                }
            }
        }
        HostEvent::NodeBirth {
            node, bdseq, metrics, ..
        } => {
            println!("   host: node {node} online, bdSeq {bdseq}, {} metrics", metrics.len())
        }
        HostEvent::DeviceBirth { device, metrics, .. } => {
            println!("   host: device {device} online, {} metrics", metrics.len())
        }
        HostEvent::SequenceError { expected, got, .. } => println!("   host: expected seq {expected}, got {got}"),
        HostEvent::RebirthRequested { reason, .. } => println!("   host: rebirth requested ({reason})"),
        other => println!("   host: {other:?}"),
    }
}

fn main() {
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

    println!("== host connects: Will = STATE offline, then STATE online");
    host.begin_connect(now);
    let mut host_state = None;
    for ev in host.connected() {
        if let HostEvent::Publish(p) = ev {
            println!("← {} {}", p.topic, String::from_utf8_lossy(&p.payload));
            host_state = Some(p);
        }
    }
    println!("== edge connects, subscribes, waits for the Primary Host STATE, then is born");
    edge.device_online(now, "press").expect("declared device");
    edge.begin_connect(now);
    edge.connected(now);
    let state = host_state.expect("the host published its STATE");
    for a in edge.handle_message(now, &state.topic, &state.payload) {
        if let EdgeAction::Publish(p) = a {
            show(&p);
            deliver(now, &mut host, &mut edge, &p);
        }
    }
    println!("== the press changes; one DDATA is lost on the way");
    for i in 1..=5u32 {
        now += 500;
        let samples = vec![
            Metric::new("Temperature", Value::Float(20.0 + i as f32 * 0.75), now),
            Metric::new("Cycles", Value::UInt32(i), now),
        ];
        for a in edge.update(now, Some("press"), samples).expect("declared metrics") {
            if let EdgeAction::Publish(p) = a {
                if i == 2 {
                    println!("✗ lost: {}", p.topic);
                    continue;
                }
                println!("→ {} ({} bytes)", p.topic, p.payload.len());
                deliver(now, &mut host, &mut edge, &p);
            }
        }
    }
    println!("== reorder timeout passes: the host requests a rebirth, the edge answers");
    now += 2_000;
    for ev in host.tick(now) {
        report(now, &mut edge, &mut host, ev);
    }
    println!("== the edge shuts down: NDEATH, then DISCONNECT");
    for a in edge.shutdown(now) {
        match a {
            EdgeAction::Publish(p) => {
                show(&p);
                for ev in host.handle_message(now, &p.topic, &p.payload) {
                    if let HostEvent::NodeDeath { stale, .. } = ev {
                        println!("   host: node offline, {} metrics STALE", stale.len());
                    }
                }
            }
            other => println!("   edge: {other:?}"),
        }
    }
}
