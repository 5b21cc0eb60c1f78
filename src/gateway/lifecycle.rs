//! The gateway's pollers, reload and shutdown.
//!
//! Invariants: a reload stops the pollers and delivers what they read
//! before anything changes, so no sample is lost; one that fails
//! validation changes nothing; `[node]` and `[mqtt]` changes wait for a
//! restart; at shutdown a last marker confirms what was sent, NDEATH and
//! DISCONNECT leave, and the store is flushed before its thread ends.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::setup::{definitions, disk_options, forwarder_options, node_metrics, same_tags};
use super::Runtime;
use crate::clock::now_ms;
use crate::config::Config;
use crate::mqtt::link::LinkEvent;
use crate::plc::poller;
use crate::queue::forward::{StoreOp, StoreReport};
use crate::telemetry::systemd;

impl Runtime {
    pub(super) fn start_pollers(&mut self) {
        if self.opts.disable_plc {
            tracing::warn!("--disable-plc: not polling any PLC");
            return;
        }
        let _ = self.stop_pollers.send(false);
        let enabled: Vec<_> = self.cfg.devices.iter().filter(|d| d.enabled).cloned().collect();
        self.telemetry
            .retain_devices(&enabled.iter().map(|d| d.name.as_str()).collect::<Vec<_>>());
        self.writers.clear();
        for d in enabled {
            let stats = self.telemetry.device(&d.name);
            let (writes_tx, writes) = mpsc::channel(super::commands::WRITES_QUEUED);
            self.writers.insert(d.name.clone(), writes_tx);
            let handle = tokio::spawn(poller::run(
                d,
                self.poll_tx.clone(),
                stats,
                writes,
                self.stop_pollers.subscribe(),
            ));
            self.pollers.push(handle);
        }
    }

    pub(super) async fn stop_all_pollers(&mut self) {
        // Writes not yet taken fail at once (the poller says so).
        self.writers.clear();
        let _ = self.stop_pollers.send(true);
        for h in self.pollers.drain(..) {
            let _ = h.await;
        }
    }

    /// SIGHUP: re-read the file; on success apply it, rebirthing if the tag set changed.
    pub(super) async fn reload(&mut self) {
        let Some(path) = self.opts.config_path.clone() else {
            tracing::warn!("SIGHUP ignored: no configuration file to reload");
            return;
        };
        let cfg = match Config::load_with(&path, &self.opts.overrides) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload refused, keeping the running configuration:\n{e}");
                return;
            }
        };
        let now = now_ms();
        let old = definitions(&self.cfg, now);
        let new = definitions(&cfg, now);
        // Node Control/Reboot is declared in NBIRTH only when enabled.
        let same_tags = same_tags(&old, &new) && cfg.commands.reboot == self.cfg.commands.reboot;
        // Stop the pollers first and deliver what they already read: no sample is lost.
        self.stop_all_pollers().await;
        let identity_changed = cfg.node != self.cfg.node;
        if cfg.mqtt != self.cfg.mqtt || identity_changed {
            tracing::warn!("[node] or [mqtt] changed: takes effect after a restart");
        }
        let node = self.cfg.node.clone();
        let mqtt_cfg = self.cfg.mqtt.clone();
        // What the forwarder queued goes first, under the options it was queued with.
        self.send_store_ops().await;
        self.send_store(StoreOp::SetOptions(disk_options(&cfg))).await;
        self.cfg = cfg;
        self.cfg.node = node;
        self.cfg.mqtt = mqtt_cfg;
        self.fwd.set_options(forwarder_options(&self.cfg));
        // The file's write lock takes effect at once, set or cleared.
        let was_locked = self.guard.locked().is_some();
        self.guard.reconfigure(self.cfg.commands.guard());
        let locked = self.guard.locked().is_some();
        if locked != was_locked && same_tags {
            self.publish_write_lock(now, locked);
        }
        if !same_tags {
            match self.session.redefine(
                now,
                node_metrics(now, self.guard.locked().is_some(), self.cfg.commands.reboot),
                new,
            ) {
                Ok(actions) => {
                    tracing::info!("configuration reloaded: tag set changed, rebirth");
                    self.telemetry.rebirths.fetch_add(1, Relaxed);
                    self.execute(actions);
                }
                Err(e) => tracing::error!(error = %e, "reload could not redefine the session"),
            }
        } else {
            tracing::info!("configuration reloaded: same tag set, no rebirth");
        }
        self.start_pollers();
    }

    /// NDEATH, DISCONNECT, and wait (briefly) for both to leave; then the
    /// store is flushed and its thread ends.
    pub(super) async fn shutdown(&mut self, store_rx: &mut mpsc::UnboundedReceiver<StoreReport>) {
        tracing::info!("shutting down");
        systemd::stopping();
        self.stop_all_pollers().await;
        let actions = self.session.shutdown(now_ms());
        if self.opts.dry_run {
            self.dry_run_actions(actions);
        } else {
            if self.link.is_connected() {
                // Let a last marker confirm what was sent, so that little is
                // stored to be replayed (as duplicates) after the restart.
                if self.fwd.marker_due(true) {
                    self.send_marker();
                }
                let deadline = Instant::now() + Duration::from_secs(2);
                while self.fwd.markers_pending() > 0 && self.link.is_open() {
                    match tokio::time::timeout_at(deadline, self.link.next()).await {
                        Ok(LinkEvent::Reconnect) => {}
                        Ok(ev) => self.on_link(ev),
                        Err(_) => break,
                    }
                }
            }
            self.execute(actions);
            if self.link.is_open() {
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while !matches!(self.link.next().await, LinkEvent::Closed(_)) {}
                })
                .await;
            }
            self.fwd.connection_lost();
        }
        self.fwd.commit();
        self.send_store_ops().await;
        self.send_store(StoreOp::Flush).await;
        if let Some(t) = self.store.take() {
            // Joining waits for every operation sent: off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || drop(t)).await;
        }
        if let Some(a) = self.audit_file.take() {
            // Its last lines are written and synced: off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || drop(a)).await;
        }
        while let Ok(report) = store_rx.try_recv() {
            self.fwd.on_store(report);
        }
        self.log_notices();
        if self.opts.dry_run {
            let _ = std::fs::remove_dir_all(&self.queue_dir);
        }
        tracing::info!(stored = self.fwd.store().stats.metrics, "stopped");
    }
}
