//! The MQTT link: one connection at a time to one of the configured
//! servers, shared by the gateway, the uplink and `watch`. It walks the
//! servers, waits between attempts with the one backoff formula, explains
//! a failure in plant terms, and carries publishes, subscriptions and the
//! DISCONNECT without ever making its caller wait.
//!
//! Invariants:
//! - At most one connection exists; events of an earlier one never reach
//!   the caller ([`Link::next`] drops them by connection id).
//! - The caller never waits on the link: [`Link::publish`],
//!   [`Link::subscribe`] and [`Link::disconnect`] queue the request, in
//!   order, for the connection's sender task, and only that task waits for
//!   room in rumqttc's request channel. The event-loop task waits only for
//!   the caller to take its events (backpressure on inbound traffic). As the
//!   caller waits on neither task, no burst of births, DATA or inbound
//!   messages can make the three wait on each other in a cycle.
//! - What is queued is bounded by the caller: [`Link::backlogged`] says when
//!   more than [`BACKLOG_BYTES`] wait, and the caller stops producing (the
//!   gateway stops taking samples and replaying; its pollers then wait).
//! - Requests keep their order, so a QoS 1 marker published after DATA
//!   leaves after it (the watermark's rule).
//! - After a close the next attempt waits `backoff::delay` (reset by a
//!   CONNACK); the link moves to the next server unless the caller names one.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, Outgoing, Packet};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::settings::MqttConfig;
use super::{connect_was_sent, explain, options, ConnEvent, Server};
use crate::backoff::{self, Rng};
use crate::sparkplug::{Publish, QoS};

/// Requests may wait for the connection up to this many payload bytes
/// before [`Link::backlogged`] says so.
pub const BACKLOG_BYTES: usize = 16 * 1024 * 1024;

/// Events between the event-loop task and the caller.
const EVENTS: usize = 4096;

/// What became of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued for the connection, in order.
    Yes,
    /// Larger than `mqtt.max_packet_size`: refused, the connection kept.
    TooLarge,
    /// No connection (or it is closing).
    Closed,
}

/// What the link reports to its caller.
#[derive(Debug)]
pub enum LinkEvent {
    /// CONNACK from `server` (an index into the configured servers).
    Connected { server: usize },
    /// An inbound message.
    Message(rumqttc::Publish),
    /// A QoS 1 publish left with this packet id.
    Sent(u16),
    /// The broker acknowledged this packet id.
    Acked(u16),
    /// The connection ended (or never came up).
    Closed(Closed),
    /// The wait after a close is over: call [`Link::connect`].
    Reconnect,
}

/// How a connection ended.
#[derive(Debug)]
pub struct Closed {
    /// The server it was to.
    pub server: usize,
    /// The CONNACK had arrived.
    pub was_connected: bool,
    /// The caller asked for it ([`Link::disconnect`]).
    pub on_purpose: bool,
    /// The CONNECT had left before it failed, so its Will is registered.
    pub connect_sent: bool,
    /// One line: scheme, server, error and a hint.
    pub why: String,
}

enum Request {
    Publish(Publish),
    Subscribe(Vec<String>, QoS),
    Disconnect,
}

impl Request {
    fn bytes(&self) -> usize {
        match self {
            Request::Publish(p) => p.topic.len() + p.payload.len(),
            Request::Subscribe(t, _) => t.iter().map(String::len).sum(),
            Request::Disconnect => 0,
        }
    }
}

/// The current connection's request queue.
struct Conn {
    requests: mpsc::UnboundedSender<Request>,
}

/// One MQTT connection at a time, with what it takes to keep one.
pub struct Link {
    servers: Vec<Server>,
    cfg: MqttConfig,
    client_id: String,
    server: usize,
    conn: Option<Conn>,
    conn_id: u64,
    connack: bool,
    closing: bool,
    attempt: u32,
    reconnect_at: Option<Instant>,
    rng: Rng,
    queued: Arc<AtomicUsize>,
    tx: mpsc::Sender<ConnEvent>,
    rx: mpsc::Receiver<ConnEvent>,
}

impl Link {
    /// A link to `servers` (prepared with [`Server::prepare_all`]); the
    /// first [`next`](Self::next) says [`LinkEvent::Reconnect`] at once.
    pub fn new(servers: Vec<Server>, cfg: MqttConfig, client_id: String, seed: u64) -> Link {
        let (tx, rx) = mpsc::channel(EVENTS);
        Link {
            servers,
            cfg,
            client_id,
            server: 0,
            conn: None,
            conn_id: 0,
            connack: false,
            closing: false,
            attempt: 0,
            reconnect_at: Some(Instant::now()),
            rng: Rng::new(seed),
            queued: Arc::new(AtomicUsize::new(0)),
            tx,
            rx,
        }
    }

    /// Connects to `server` (the next one in turn without it), with `will`
    /// as the Last Will. Returns false when no server is configured.
    pub fn connect(&mut self, server: Option<usize>, will: Option<&Publish>) -> bool {
        self.reconnect_at = None;
        if let Some(s) = server {
            self.server = s;
        }
        let Some(srv) = self.servers.get(self.server).cloned() else {
            tracing::error!("no MQTT server configured");
            return false;
        };
        self.conn_id += 1;
        self.connack = false;
        self.closing = false;
        if let Some(problem) = srv.certificate_problem(rustls::pki_types::UnixTime::now()) {
            tracing::warn!(server = %srv.label(), "tls.cert: {problem}: connecting anyway (the broker decides)");
        }
        let opts = options(&srv, &self.cfg, &self.client_id, will);
        tracing::info!(server = %srv.label(), attempt = self.attempt, "connecting");
        let (client, eventloop) = AsyncClient::new(opts, 4096);
        let (requests, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(
            eventloop,
            self.cfg.connect_timeout,
            self.conn_id,
            self.tx.clone(),
        ));
        tokio::spawn(send_requests(client, rx, self.queued.clone()));
        self.conn = Some(Conn { requests });
        true
    }

    /// Queues a publish; refused when over `mqtt.max_packet_size` (logged:
    /// a birth cannot be split, so the limit must be raised).
    pub fn publish(&self, p: Publish) -> Sent {
        let Some(conn) = &self.conn else { return Sent::Closed };
        let bytes = p.packet_bytes();
        if bytes as u64 > self.cfg.max_packet_size {
            tracing::error!(
                topic = %p.topic, bytes = p.payload.len(), max_packet_size = self.cfg.max_packet_size,
                "message larger than mqtt.max_packet_size: raise it (the broker's limit too)"
            );
            return Sent::TooLarge;
        }
        if self.request(conn, Request::Publish(p)) {
            Sent::Yes
        } else {
            Sent::Closed
        }
    }

    /// Queues a subscription to `topics`.
    pub fn subscribe(&self, topics: Vec<String>, qos: QoS) {
        if let Some(conn) = &self.conn {
            self.request(conn, Request::Subscribe(topics, qos));
        }
    }

    /// Queues a DISCONNECT (after what is queued): the close that follows
    /// is reported as on purpose.
    pub fn disconnect(&mut self) {
        if let Some(conn) = &self.conn {
            self.closing = true;
            self.request(conn, Request::Disconnect);
        }
    }

    fn request(&self, conn: &Conn, r: Request) -> bool {
        let n = r.bytes();
        self.queued.fetch_add(n, Relaxed);
        if conn.requests.send(r).is_err() {
            self.queued.fetch_sub(n, Relaxed);
            return false;
        }
        true
    }

    /// More than [`BACKLOG_BYTES`] wait to be handed to the connection.
    pub fn backlogged(&self) -> bool {
        self.queued() > BACKLOG_BYTES
    }

    /// Payload bytes waiting to be handed to the connection.
    pub fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }

    /// A connection exists (it may not be acknowledged yet).
    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// The connection is up (CONNACK received).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some() && self.connack
    }

    /// The server connected to, or tried next.
    pub fn server(&self) -> Option<&Server> {
        self.servers.get(self.server)
    }

    /// The next event. Cancel-safe: it may lose a `select!` race and be
    /// called again without losing anything.
    pub async fn next(&mut self) -> LinkEvent {
        loop {
            let at = self.reconnect_at;
            let reconnect = async {
                match at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let ev = tokio::select! {
                Some(ev) = self.rx.recv() => ev,
                () = reconnect => {
                    self.reconnect_at = None;
                    return LinkEvent::Reconnect;
                }
            };
            if let Some(ev) = self.event(ev) {
                return ev;
            }
        }
    }

    fn event(&mut self, ev: ConnEvent) -> Option<LinkEvent> {
        match ev {
            ConnEvent::Event(id, _) | ConnEvent::Closed(id, _) if id != self.conn_id => None,
            ConnEvent::Event(_, Event::Incoming(Packet::ConnAck(_))) => {
                self.connack = true;
                self.attempt = 0;
                Some(LinkEvent::Connected { server: self.server })
            }
            ConnEvent::Event(_, Event::Incoming(Packet::Publish(p))) => Some(LinkEvent::Message(p)),
            ConnEvent::Event(_, Event::Outgoing(Outgoing::Publish(pkid))) => Some(LinkEvent::Sent(pkid)),
            ConnEvent::Event(_, Event::Incoming(Packet::PubAck(ack))) => Some(LinkEvent::Acked(ack.pkid)),
            ConnEvent::Event(..) => None,
            ConnEvent::Closed(_, e) => Some(LinkEvent::Closed(self.closed(&e))),
        }
    }

    fn closed(&mut self, e: &ConnectionError) -> Closed {
        self.conn = None;
        let why = self
            .servers
            .get(self.server)
            .map_or_else(|| e.to_string(), |s| explain(s, e));
        let closed = Closed {
            server: self.server,
            was_connected: self.connack,
            on_purpose: self.closing,
            connect_sent: !self.connack && connect_was_sent(e),
            why,
        };
        (self.connack, self.closing) = (false, false);
        self.server = (self.server + 1) % self.servers.len().max(1);
        self.attempt = self.attempt.saturating_add(1);
        let wait = backoff::delay(
            self.cfg.backoff_min,
            self.cfg.backoff_max,
            self.attempt,
            self.rng.next_u64(),
        );
        self.reconnect_at = Some(Instant::now() + wait);
        closed
    }
}

pub(super) fn qos(q: QoS) -> rumqttc::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
    }
}

/// Drives rumqttc's event loop, forwarding what the caller needs, tagged
/// with the connection's `id`, until the connection ends.
async fn drive(mut eventloop: rumqttc::EventLoop, timeout: Duration, id: u64, tx: mpsc::Sender<ConnEvent>) {
    let mut net = eventloop.network_options();
    net.set_connection_timeout(timeout.as_secs().max(1));
    // Without it a small publish after another waits for the broker's
    // delayed ACK (40 ms on Linux): a command's confirmation took 44 ms
    // instead of a few (BENCHMARKS.md, "Command write-back"). rumqttc
    // still writes what is queued together.
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    loop {
        match eventloop.poll().await {
            // What nobody waits for is not forwarded, above all the trace
            // of every QoS 0 publish (packet id 0).
            Ok(Event::Outgoing(Outgoing::Publish(0) | Outgoing::PingReq) | Event::Incoming(Packet::PingResp)) => {}
            Ok(ev) => {
                if tx.send(ConnEvent::Event(id, ev)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(ConnEvent::Closed(id, e)).await;
                return;
            }
        }
    }
}

/// Hands the connection's requests to rumqttc, in order; the only task
/// that waits for room in its request channel.
async fn send_requests(client: AsyncClient, mut rx: mpsc::UnboundedReceiver<Request>, queued: Arc<AtomicUsize>) {
    while let Some(r) = rx.recv().await {
        let n = r.bytes();
        let done = match r {
            Request::Publish(p) => client.publish(p.topic, qos(p.qos), p.retain, p.payload).await,
            Request::Subscribe(topics, q) => {
                let filters = topics.into_iter().map(|t| rumqttc::SubscribeFilter::new(t, qos(q)));
                client.subscribe_many(filters).await
            }
            Request::Disconnect => client.disconnect().await,
        };
        queued.fetch_sub(n, Relaxed);
        if let Err(e) = done {
            tracing::debug!(error = %e, "request not sent (connection closing)");
            break;
        }
    }
    // What is left was never handed over: it no longer waits.
    rx.close();
    while let Some(r) = rx.recv().await {
        queued.fetch_sub(r.bytes(), Relaxed);
    }
}
