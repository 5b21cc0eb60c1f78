//! The MQTT link against a real mosquitto: it walks the servers and says
//! why one failed, its publishes never make the caller wait and arrive in
//! order, its backlog bound is reported, and a close on purpose is told
//! apart from a failure (docs/ARCHITECTURE.md, "The MQTT link").

mod common;

use std::time::Duration;

use common::Broker;
use spb::mqtt::link::{Link, LinkEvent, Sent, BACKLOG_BYTES};
use spb::mqtt::settings::{MqttConfig, ServerConfig};
use spb::mqtt::Server;
use spb::sparkplug::{Publish, QoS};

fn config(ports: &[u16]) -> MqttConfig {
    MqttConfig {
        servers: ports.iter().map(|p| ServerConfig::plain("127.0.0.1", *p)).collect(),
        keepalive: Duration::from_secs(30),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        max_packet_size: 1024 * 1024,
        connect_timeout: Duration::from_secs(5),
    }
}

fn link(ports: &[u16], id: &str) -> Link {
    let cfg = config(ports);
    let servers = Server::prepare_all(&cfg).expect("plain servers");
    Link::new(servers, cfg, id.to_string(), 7)
}

/// The link's next event, connecting (to the next server) when it says so.
async fn next(link: &mut Link) -> LinkEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), link.next())
            .await
            .expect("an event within 20 s");
        match ev {
            LinkEvent::Reconnect => {
                assert!(link.connect(None, None));
            }
            ev => return ev,
        }
    }
}

fn message(topic: &str, payload: Vec<u8>) -> Publish {
    Publish {
        topic: topic.to_string(),
        payload,
        qos: QoS::AtLeastOnce,
        retain: false,
        kind: None,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_dead_server_is_explained_and_the_link_walks_on_to_the_next() {
    // [tck-id-operational-behavior-primary-application-state-with-multiple-servers-single-server]
    let broker = Broker::start(None);
    let dead = common::free_port();
    let mut l = link(&[dead, broker.port], "walker");
    assert_eq!(
        l.publish(message("t", vec![1])),
        Sent::Closed,
        "nothing to publish on yet"
    );
    let LinkEvent::Closed(c) = next(&mut l).await else {
        panic!("the dead server fails first")
    };
    assert_eq!(c.server, 0);
    assert!(!c.was_connected && !c.on_purpose && !c.connect_sent);
    assert!(c.why.contains(&format!("mqtt://127.0.0.1:{dead}")), "{}", c.why);
    assert!(c.why.contains("nothing listens there"), "{}", c.why);
    let LinkEvent::Connected { server } = next(&mut l).await else {
        panic!("then the next one")
    };
    assert_eq!(server, 1);
    assert!(l.is_connected());
    l.disconnect();
    let LinkEvent::Closed(c) = next(&mut l).await else {
        panic!("the DISCONNECT closes it")
    };
    assert!(c.on_purpose && c.was_connected, "{c:?}");
    assert!(!l.is_open());
}

#[tokio::test(flavor = "current_thread")]
async fn twenty_mib_of_publishes_queue_at_once_are_reported_backlogged_and_arrive_in_order() {
    const N: u64 = 20_480;
    let broker = Broker::start(None);
    let mut sub = link(&[broker.port], "sub");
    let mut publisher = link(&[broker.port], "pub");
    assert!(matches!(next(&mut sub).await, LinkEvent::Connected { .. }));
    sub.subscribe(vec!["link/#".into()], QoS::AtLeastOnce);
    assert!(matches!(next(&mut publisher).await, LinkEvent::Connected { .. }));
    // The subscription holds once a probe comes back.
    let mut probes = 0;
    'probe: loop {
        assert_eq!(publisher.publish(message("link/probe", vec![])), Sent::Yes);
        probes += 1;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(ev) = tokio::time::timeout_at(deadline, sub.next()).await {
            if matches!(ev, LinkEvent::Message(ref p) if p.topic == "link/probe") {
                break 'probe;
            }
        }
    }
    // 20 MiB handed over without one await: nothing waits for the broker,
    // and the link says it holds more than its bound.
    for i in 0..N {
        let mut payload = i.to_be_bytes().to_vec();
        payload.resize(1024, 0);
        assert_eq!(publisher.publish(message("link/data", payload)), Sent::Yes);
    }
    assert!(N * 1024 > BACKLOG_BYTES as u64);
    assert!(publisher.backlogged(), "more than the bound waits");
    // The broker acknowledges every one; the subscriber sees them in order
    // (mosquitto drops what passes its per-client queue of 1,000 while the
    // subscriber, on this one thread, reads slower than the burst comes).
    let (mut last, mut got, mut acked) = (None::<u64>, 0u64, 0u64);
    let mut quiet = tokio::time::Instant::now() + Duration::from_secs(30);
    let total = N + probes;
    while !(acked == total && last == Some(N - 1)) {
        tokio::select! {
            ev = sub.next() => match ev {
                LinkEvent::Message(p) if p.topic == "link/data" => {
                    let i = u64::from_be_bytes(p.payload[..8].try_into().expect("8 bytes"));
                    assert!(last.is_none_or(|l| i > l), "in order: {i} after {last:?}");
                    last = Some(i);
                    got += 1;
                    if acked == total {
                        quiet = tokio::time::Instant::now() + Duration::from_secs(1);
                    }
                }
                LinkEvent::Message(_) | LinkEvent::Sent(_) | LinkEvent::Acked(_) => {}
                other => panic!("subscriber: {other:?}"),
            },
            ev = publisher.next() => match ev {
                LinkEvent::Acked(_) => {
                    acked += 1;
                    if acked == total {
                        quiet = tokio::time::Instant::now() + Duration::from_secs(1);
                    }
                }
                LinkEvent::Sent(_) => {}
                other => panic!("publisher: {other:?}"),
            },
            // Everything acknowledged and the subscriber silent: the rest
            // was the broker's to drop.
            () = tokio::time::sleep_until(quiet) => {
                assert_eq!(acked, total, "stalled: {got} received, {acked} of {total} acknowledged");
                break;
            }
        }
    }
    assert!(got >= 1_000, "{got} received");
    assert!(!publisher.backlogged(), "all handed over");
}

#[tokio::test(flavor = "current_thread")]
async fn a_publish_over_the_packet_limit_is_refused_and_the_connection_kept() {
    let broker = Broker::start(None);
    let mut l = link(&[broker.port], "big");
    assert!(matches!(next(&mut l).await, LinkEvent::Connected { .. }));
    assert_eq!(l.publish(message("big", vec![0; 2 * 1024 * 1024])), Sent::TooLarge);
    assert!(l.is_connected());
    assert_eq!(l.publish(message("small", vec![0; 16])), Sent::Yes);
    assert!(matches!(next(&mut l).await, LinkEvent::Sent(_)), "the small one left");
}
