//! The delivery watermark (docs/ARCHITECTURE.md decision 3), sans-IO.
//!
//! Sparkplug DATA travels at QoS 0, so no PUBACK ever confirms it. A broker
//! reads one connection's packets in order, so the PUBACK of a QoS 1
//! *marker* published after a run of data confirms the whole run: the
//! broker has read it. The caller publishes a marker after data record `n`,
//! tells [`Watermark::marker_sent`], feeds rumqttc's events in, and deletes
//! stored data only through what [`Watermark::on_puback`] returns.
//!
//! Invariants:
//! - Confirmation only moves forward, and only on a PUBACK for a marker of
//!   the current connection.
//! - rumqttc assigns packet ids in the order `publish` is called; each QoS 1
//!   publish handed to it (a marker, or another one announced with
//!   [`Watermark::other_sent`], e.g. NDEATH) takes the next nonzero packet id
//!   it reports (`Event::Outgoing(Outgoing::Publish(pkid))`); QoS 0 publishes
//!   report 0 and take none.
//! - A new connection (CONNACK) forgets every marker not yet acknowledged:
//!   packet ids restart and rumqttc drops its pending queue on a clean
//!   session (docs/CRATES.md), so their data counts as unconfirmed and is replayed.
//! - Caller's rule: a marker confirms every record id up to its `through`,
//!   so on a new connection everything after [`Watermark::confirmed`] must be
//!   sent again *on that connection* before its first marker (a client per
//!   connection, as the gateway has, leaves nothing stale queued).

use std::collections::{HashMap, VecDeque};

/// Tracks markers from `publish` to PUBACK on one connection at a time.
#[derive(Debug, Default)]
pub struct Watermark {
    /// QoS 1 publishes not yet given a packet id, oldest first: `Some(through)`
    /// for a marker, `None` for any other.
    unassigned: VecDeque<Option<u64>>,
    /// Packet id → the record id its PUBACK confirms through.
    inflight: HashMap<u16, u64>,
    confirmed: Option<u64>,
}

impl Watermark {
    pub fn new() -> Watermark {
        Watermark::default()
    }

    /// A marker was handed to `publish` after data record `through`.
    pub fn marker_sent(&mut self, through: u64) {
        self.unassigned.push_back(Some(through));
    }

    /// A QoS 1 publish that is not a marker was handed to `publish`: it will
    /// take a packet id, which must not be mistaken for a marker's.
    pub fn other_sent(&mut self) {
        self.unassigned.push_back(None);
    }

    /// rumqttc wrote a PUBLISH with `pkid` (0 for QoS 0).
    pub fn on_outgoing_publish(&mut self, pkid: u16) {
        if pkid == 0 {
            return;
        }
        if let Some(Some(through)) = self.unassigned.pop_front() {
            self.inflight.insert(pkid, through);
        }
    }

    /// The broker acknowledged `pkid`: the record id now confirmed through,
    /// when this moved the watermark forward.
    pub fn on_puback(&mut self, pkid: u16) -> Option<u64> {
        let through = self.inflight.remove(&pkid)?;
        if self.confirmed.is_some_and(|c| c >= through) {
            return None;
        }
        self.confirmed = Some(through);
        Some(through)
    }

    /// A new connection: markers in flight will never be acknowledged.
    pub fn on_connack(&mut self) {
        self.unassigned.clear();
        self.inflight.clear();
    }

    /// Everything through this record id has provably reached the broker.
    pub fn confirmed(&self) -> Option<u64> {
        self.confirmed
    }

    /// Markers waiting for their PUBACK.
    pub fn pending(&self) -> usize {
        self.unassigned.iter().flatten().count() + self.inflight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_puback_confirms_the_data_before_its_marker() {
        let mut w = Watermark::new();
        w.on_outgoing_publish(0); // QoS 0 data
        w.marker_sent(99);
        w.on_outgoing_publish(0);
        w.on_outgoing_publish(7);
        assert_eq!(w.confirmed(), None);
        assert_eq!(w.on_puback(7), Some(99));
        assert_eq!((w.confirmed(), w.pending()), (Some(99), 0));
    }

    #[test]
    fn markers_take_packet_ids_in_publish_order_and_confirmation_never_goes_back() {
        let mut w = Watermark::new();
        w.marker_sent(10);
        w.marker_sent(20);
        w.on_outgoing_publish(1);
        w.on_outgoing_publish(2);
        assert_eq!(w.on_puback(2), Some(20));
        assert_eq!(
            w.on_puback(1),
            None,
            "an older marker acknowledged later confirms nothing new"
        );
        assert_eq!(w.confirmed(), Some(20));
    }

    #[test]
    fn a_new_connection_forgets_unacknowledged_markers() {
        let mut w = Watermark::new();
        w.marker_sent(10);
        w.on_outgoing_publish(1);
        w.marker_sent(20);
        w.on_connack();
        assert_eq!(w.pending(), 0);
        assert_eq!(w.on_puback(1), None, "a PUBACK for the old connection's packet id");
        w.marker_sent(30);
        w.on_outgoing_publish(1); // packet ids restart
        assert_eq!(w.on_puback(1), Some(30));
    }

    #[test]
    fn another_qos1_publish_before_a_marker_does_not_take_the_markers_packet_id() {
        let mut w = Watermark::new();
        w.other_sent(); // e.g. NDEATH at QoS 1
        w.marker_sent(40);
        w.on_outgoing_publish(1);
        w.on_outgoing_publish(2);
        assert_eq!(w.on_puback(1), None, "the other publish's PUBACK confirms nothing");
        assert_eq!(w.on_puback(2), Some(40));
    }

    #[test]
    fn an_unknown_packet_id_confirms_nothing() {
        let mut w = Watermark::new();
        assert_eq!(w.on_puback(5), None);
        w.on_outgoing_publish(3); // a QoS 1 publish that is not a marker
        assert_eq!(w.on_puback(3), None);
    }
}
