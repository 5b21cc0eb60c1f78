//! The delivery watermark's premise, against a real mosquitto (
//! docs/ARCHITECTURE.md decision 3): once a QoS 1 marker published after a run of
//! QoS 0 messages is acknowledged, the broker has every one of them (an
//! independent subscriber receives them all); when the broker dies, data
//! after the last acknowledged marker stays unconfirmed and the new
//! connection forgets the markers in flight.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Broker;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use spb::mqtt::watermark::Watermark;

fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(true);
    o.set_keep_alive(Duration::from_secs(5));
    o
}

/// Feeds the publisher's events to the watermark; reconnects after errors.
/// `up` is set once the connection's CONNACK has been handled: like the
/// gateway, the tests publish only on an established connection (a marker
/// queued before the CONNACK is forgotten by it).
async fn drive(mut el: EventLoop, w: Arc<Mutex<Watermark>>, up: Arc<std::sync::atomic::AtomicBool>) {
    loop {
        match el.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => w.lock().expect("lock").on_outgoing_publish(pkid),
            Ok(Event::Incoming(Packet::PubAck(a))) => {
                w.lock().expect("lock").on_puback(a.pkid);
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                w.lock().expect("lock").on_connack();
                up.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A publisher connection driving `w`, returned once it is up.
async fn connect(id: &str, port: u16, w: &Arc<Mutex<Watermark>>) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let (c, el) = AsyncClient::new(options(id, port), 4096);
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let task = tokio::spawn(drive(el, w.clone(), up.clone()));
    until("the publisher is connected", Duration::from_secs(15), || {
        up.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    (c, task)
}

async fn subscriber(port: u16, got: Arc<Mutex<BTreeSet<u64>>>, ready: tokio::sync::oneshot::Sender<()>) {
    let (c, mut el) = AsyncClient::new(options("wm-sub", port), 10_000);
    c.subscribe("wm/data", QoS::AtMostOnce).await.expect("subscribe");
    let mut ready = Some(ready);
    while let Ok(ev) = el.poll().await {
        match ev {
            Event::Incoming(Packet::SubAck(_)) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                if let Ok(b) = <[u8; 8]>::try_from(&p.payload[..]) {
                    got.lock().expect("lock").insert(u64::from_be_bytes(b));
                }
            }
            _ => {}
        }
    }
}

async fn publish_run(c: &AsyncClient, w: &Mutex<Watermark>, ids: std::ops::Range<u64>, marker_every: u64) {
    for id in ids {
        c.publish("wm/data", QoS::AtMostOnce, false, id.to_be_bytes().to_vec())
            .await
            .expect("queue data");
        if (id + 1).is_multiple_of(marker_every) {
            w.lock().expect("lock").marker_sent(id);
            c.publish("wm/marker", QoS::AtLeastOnce, false, Vec::new())
                .await
                .expect("queue marker");
        }
    }
}

async fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_markers_puback_means_the_broker_has_every_qos0_message_before_it() {
    let broker = Broker::start(None);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let got = Arc::new(Mutex::new(BTreeSet::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(subscriber(broker.port, got.clone(), tx));
        rx.await.expect("the subscriber is subscribed");
        let w = Arc::new(Mutex::new(Watermark::new()));
        let (c, _task) = connect("wm-pub", broker.port, &w).await;
        publish_run(&c, &w, 0..20_000, 500).await;
        until("the last marker is acknowledged", Duration::from_secs(20), || {
            w.lock().expect("lock").confirmed() == Some(19_999)
        })
        .await;
        // Everything the watermark confirms reached the broker: the subscriber gets all of it.
        until(
            "the subscriber has every confirmed message",
            Duration::from_secs(10),
            || got.lock().expect("lock").len() == 20_000,
        )
        .await;
        let got = got.lock().expect("lock");
        assert_eq!(got.first(), Some(&0));
        assert_eq!(got.last(), Some(&19_999));
    });
}

#[test]
fn data_after_the_last_acknowledged_marker_stays_unconfirmed_when_the_broker_dies() {
    let mut broker = Broker::start(None);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let w = Arc::new(Mutex::new(Watermark::new()));
        // Connection 1 (a client per connection, as the gateway does).
        let (c, conn1) = connect("wm-pub2", broker.port, &w).await;
        publish_run(&c, &w, 0..1000, 1000).await;
        until("the first run is confirmed", Duration::from_secs(10), || {
            w.lock().expect("lock").confirmed() == Some(999)
        })
        .await;
        broker.kill();
        publish_run(&c, &w, 1000..2000, 1000).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            w.lock().expect("lock").confirmed(),
            Some(999),
            "no PUBACK from a dead broker"
        );
        conn1.abort();
        drop(c);

        // Connection 2: its CONNACK forgets connection 1's markers; the caller
        // replays everything after the watermark before its first marker.
        tokio::task::block_in_place(|| broker.restart());
        let (c, _task) = connect("wm-pub2", broker.port, &w).await;
        assert_eq!(
            w.lock().expect("lock").pending(),
            0,
            "connection 1's marker is forgotten"
        );
        assert_eq!(
            w.lock().expect("lock").confirmed(),
            Some(999),
            "1000..1999 are unconfirmed"
        );
        let replay_from = w.lock().expect("lock").confirmed().map_or(0, |c| c + 1);
        publish_run(&c, &w, replay_from..2100, 100).await;
        until(
            "the replayed run is confirmed on the new connection",
            Duration::from_secs(10),
            || w.lock().expect("lock").confirmed() == Some(2099),
        )
        .await;
    });
}
