//! The gateway's side of store-and-forward: the forwarder's operations
//! handed to the store's thread in order, its reports handed back, and
//! stored records replayed through the session.
//!
//! Invariants: operations reach the store in the order the forwarder made
//! them; replay runs only while the session publishes, and keeps at most
//! 4 MiB of it waiting in the link, so live data never waits long behind
//! the backlog; a record is
//! deleted only once the forwarder has seen it confirmed.

use super::Runtime;
use crate::clock::now_ms;
use crate::mqtt::link::Sent;
use crate::queue::forward::{Replayed, StoreOp, StoreReport};
use crate::sparkplug::edge::{EdgeAction, EdgeError};

/// What replayed DATA may have waiting in the link's queue at once.
const REPLAY_QUEUE_BYTES: usize = 4 * 1024 * 1024;

impl Runtime {
    /// Hands the forwarder's operations to the store's thread, in order,
    /// and logs what the forwarder noticed.
    pub(super) async fn send_store_ops(&mut self) {
        for op in self.fwd.take_ops() {
            self.send_store(op).await;
        }
        self.log_notices();
    }

    pub(super) async fn send_store(&mut self, op: StoreOp) {
        let sent = match &self.store {
            Some(t) => t.send(op).await,
            None => false,
        };
        if !sent {
            // The thread is gone (it panicked): nothing more can be stored.
            tracing::error!("the store's thread is gone: nothing more can be stored or replayed");
            self.store = None;
        }
    }

    pub(super) fn log_notices(&mut self) {
        let failed = self.fwd.store().failure.is_some();
        self.store_log
            .log(self.fwd.take_notices(), failed, self.cfg.store.host_window);
    }

    /// A report from the store's thread.
    pub(super) fn on_store(&mut self, report: StoreReport) {
        self.fwd.on_store(report);
        self.replay(now_ms());
        self.update_gauges();
    }

    /// Replays the stored records the forwarder has ready, as far as its
    /// window and rate and the link's queue allow. It runs after every turn
    /// of the loop, on the tick (before the marker that confirms it) and as
    /// a store read arrives (before the gauges), so live data, handled
    /// between them, never waits behind the backlog.
    pub(super) fn replay(&mut self, now: u64) {
        if !self.session.is_publishing() {
            return;
        }
        // Replay tops the link's queue up to REPLAY_QUEUE_BYTES only: live
        // DATA, queued after it, never waits behind more than that.
        while self.link.queued() < REPLAY_QUEUE_BYTES {
            let Some((id, r)) = self.fwd.next_replay() else { return };
            let n = r.metrics.len() as u64;
            let actions = match self.session.replay(now, r.device.as_deref(), r.metrics) {
                Ok(actions) => actions,
                Err(EdgeError::NotPublishing) => {
                    self.fwd.replayed(id, n, Replayed::Stopped);
                    return;
                }
                Err(e) => {
                    self.fwd.replayed(id, n, Replayed::Unreplayable(e.to_string()));
                    continue;
                }
            };
            let mut too_large = 0;
            for a in actions {
                match a {
                    EdgeAction::Publish(p) => match self.publish(p) {
                        Sent::Yes => {}
                        // The session splits DATA to fit: nothing to retry;
                        // counted, deleted with the next confirmation.
                        Sent::TooLarge => too_large = n,
                        // The connection is going: the record stays stored
                        // and is replayed on the next one.
                        Sent::Closed => {
                            self.fwd.replayed(id, n, Replayed::Stopped);
                            return;
                        }
                    },
                    other => self.execute(vec![other]),
                }
            }
            self.fwd.replayed(id, n, Replayed::Sent { too_large });
        }
    }
}
