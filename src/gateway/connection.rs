//! The gateway's side of the MQTT link: a CONNECT with the session's
//! Will, the link's events handed to the session and the forwarder, inbound
//! messages bounded and counted, and publishes counted by the kind the
//! session gave them.
//!
//! Invariants: nothing here waits on the link; a bdSeq whose Will reached
//! the broker is persisted before the next CONNECT; an inbound message over
//! `commands.max_message_size` is dropped and counted, the connection kept.

use std::sync::atomic::Ordering::Relaxed;

use super::{bdseq, watermark_topic, Runtime};
use crate::clock::now_ms;
use crate::mqtt::link::{Closed, LinkEvent, Sent};
use crate::mqtt::Server;
use crate::sparkplug::edge::EdgeAction;
use crate::sparkplug::topic::MessageType;
use crate::sparkplug::{pretty, Publish, QoS};

impl Runtime {
    /// The link's wait is over: a CONNECT with the session's Will to the
    /// server the session picks (a dry run is connected at once, to nothing).
    pub(super) fn start_connect(&mut self) {
        let now = now_ms();
        let actions = self.session.begin_connect(now);
        if self.opts.dry_run {
            // No broker: behave as if connected, and log instead of publishing.
            let actions = self.session.connected(now);
            self.telemetry.connected.store(true, Relaxed);
            self.dry_run_actions(actions);
            return;
        }
        let (mut will, mut server) = (None, 0);
        for a in actions {
            match a {
                EdgeAction::SetWill(w) => will = Some(w),
                EdgeAction::Connect { server: s } => server = s,
                other => tracing::debug!(?other, "unexpected action before connect"),
            }
        }
        if self.link.connect(Some(server), will.as_ref()) {
            let label = self.link.server().map(Server::label).unwrap_or_default();
            tracing::info!(server = %label, bdseq = self.session.bdseq(), "the Will holds this bdSeq");
            self.set_status(format!("connecting to {label}"));
        }
    }

    pub(super) fn on_link(&mut self, ev: LinkEvent) {
        self.telemetry.mqtt_progress.fetch_add(1, Relaxed);
        match ev {
            LinkEvent::Connected { .. } => {
                self.telemetry.connects.fetch_add(1, Relaxed);
                self.telemetry.connected.store(true, Relaxed);
                let label = self.link.server().map(Server::label).unwrap_or_default();
                tracing::info!(server = %label, bdseq = self.session.bdseq(), "connected");
                self.fwd.connected();
                let actions = self.session.connected(now_ms());
                self.execute(actions);
            }
            LinkEvent::Message(p) => self.on_message(&p.topic, &p.payload, p.retain),
            LinkEvent::Sent(pkid) => self.fwd.outgoing_publish(pkid),
            LinkEvent::Acked(pkid) => {
                self.fwd.puback(pkid, now_ms());
                self.update_gauges();
            }
            LinkEvent::Closed(c) => self.on_closed(c),
            LinkEvent::Reconnect => self.start_connect(),
        }
    }

    pub(super) fn on_message(&mut self, topic: &str, payload: &[u8], retained: bool) {
        if payload.len() as u64 > self.cfg.commands.max_message_size {
            // Dropped here, the connection kept: only commands and STATE
            // arrive, and neither is ever this large.
            self.telemetry.rejected_messages.fetch_add(1, Relaxed);
            self.telemetry.oversized_messages.fetch_add(1, Relaxed);
            if !self.inbound_log.allow(now_ms()) {
                return;
            }
            tracing::warn!(topic = %pretty::prefix(topic, 300), bytes = payload.len(),
                max_message_size = self.cfg.commands.max_message_size, retained,
                "inbound message over commands.max_message_size dropped");
            return;
        }
        let actions = self.session.handle_delivery(now_ms(), topic, payload, retained);
        // An NBIRTH that answers a command, not the host's STATE, is a rebirth.
        let state = actions.iter().any(|a| matches!(a, EdgeAction::HostState { .. }));
        let birth = actions
            .iter()
            .filter_map(EdgeAction::publish)
            .any(|p| p.kind == Some(MessageType::NBirth));
        if birth && !state {
            self.telemetry.rebirths.fetch_add(1, Relaxed);
        }
        self.execute(actions);
    }

    pub(super) fn on_closed(&mut self, c: Closed) {
        self.telemetry.connected.store(false, Relaxed);
        self.telemetry.born.store(false, Relaxed);
        // What the broker has not provably read goes to the store.
        self.fwd.connection_lost();
        if c.on_purpose {
            // We disconnected on purpose (host offline, next server); the
            // session already walked on.
            tracing::info!("disconnected; moving to the next server");
        } else if c.was_connected {
            self.telemetry.connection_failures.fetch_add(1, Relaxed);
            tracing::warn!(error = %c.why, "connection lost");
            self.session.connection_lost();
        } else {
            self.telemetry.connection_failures.fetch_add(1, Relaxed);
            tracing::error!(error = %c.why, "connection failed");
            if c.connect_sent {
                for a in self.session.connect_sent() {
                    if let EdgeAction::PersistBdSeq(b) = a {
                        bdseq::persist(&self.state_dir, b);
                    }
                }
            }
            self.session.connect_failed();
        }
        self.set_status(format!("disconnected: {}", c.why));
    }

    /// Publishes a QoS 1 marker after everything sent so far.
    pub(super) fn send_marker(&mut self) {
        let marker = Publish {
            topic: watermark_topic(&self.cfg.node.group_id, &self.cfg.node.node_id),
            payload: Vec::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            kind: None,
        };
        if self.link.publish(marker) == Sent::Yes {
            self.fwd.marker_sent();
        }
    }

    /// Hands a publish to the link, counted by the kind the session gave it.
    pub(super) fn publish(&mut self, p: Publish) -> Sent {
        let (kind, len) = (p.kind, p.payload.len());
        if kind == Some(MessageType::NBirth) {
            tracing::info!(topic = %p.topic, bdseq = self.session.bdseq(), "NBIRTH");
        }
        let sent = self.link.publish(p);
        if let (Sent::Yes, Some(k)) = (sent, kind) {
            self.telemetry.published(k, len);
        }
        sent
    }
}
