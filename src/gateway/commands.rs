//! The runtime's side of NCMD/DCMD writes: each metric of a command goes
//! through the command guard (`crate::commands`), and every decision is
//! audited, one journal line per metric under the target `spb::audit`, and
//! counted on `/metrics` by outcome.
//!
//! Invariants:
//! - `Node Control/Write Lock` is handled here: setting it always works,
//!   clearing it only where the file allows; a change is published at once
//!   as NDATA (and every NBIRTH carries the current state).
//! - No write reaches a PLC in this version: `[commands] enabled = true` is
//!   refused by the configuration, so the guard refuses every write, and a
//!   write the guard would accept is refused as not available.
//! - A flood of commands costs the journal the inbound log budget, not a
//!   line per metric: the audit lines of one command are its first three
//!   metrics and a count.

use std::sync::atomic::Ordering::Relaxed;

use crate::clock::now_ms;
use crate::commands::{shown, Refusal, WRITE_LOCK_METRIC};
use crate::sparkplug::{Metric, Value};

use super::Runtime;

/// The audit lines written for one command at most; the rest are counted.
const AUDITED_PER_COMMAND: usize = 3;

impl Runtime {
    /// An NCMD (`device` None) or DCMD asking for writes.
    pub(super) fn on_command(&mut self, device: Option<String>, metrics: Vec<Metric>) {
        self.telemetry.commands_received.fetch_add(1, Relaxed);
        let now = now_ms();
        let log = self.inbound_log.allow(now);
        let total = metrics.len();
        for (i, m) in metrics.into_iter().enumerate() {
            let name = m
                .name
                .clone()
                .unwrap_or_else(|| format!("alias {}", m.alias.unwrap_or(0)));
            let value = m.value.as_ref().map_or_else(|| "(no value)".to_string(), shown);
            let outcome = if device.is_none() && name == WRITE_LOCK_METRIC {
                self.write_lock_command(now, m.value.as_ref())
            } else {
                self.write_request(now, device.as_deref(), &name, m.value.as_ref())
            };
            let counter = match &outcome {
                Ok(_) => &self.telemetry.commands_applied,
                Err(_) => &self.telemetry.commands_refused,
            };
            counter.fetch_add(1, Relaxed);
            if !log || i >= AUDITED_PER_COMMAND {
                continue;
            }
            let device = device.as_deref().unwrap_or("(node)");
            match outcome {
                Ok(what) => {
                    tracing::warn!(target: "spb::audit", device, metric = %name, new = %value, outcome = "applied", "{what}")
                }
                Err(reason) => {
                    tracing::warn!(target: "spb::audit", device, metric = %name, new = %value, outcome = "refused", reason = %reason, "write refused")
                }
            }
        }
        if log && total > AUDITED_PER_COMMAND {
            tracing::warn!(
                target: "spb::audit",
                device = device.as_deref().unwrap_or("(node)"),
                "{} more metrics of this command decided the same way (counted in spb_commands_total)",
                total - AUDITED_PER_COMMAND
            );
        }
    }

    /// `Node Control/Write Lock = true|false` by NCMD.
    fn write_lock_command(&mut self, now: u64, value: Option<&Value>) -> Result<String, Refusal> {
        let Some(Value::Boolean(lock)) = value else {
            return Err(Refusal::WrongType {
                declared: crate::sparkplug::DataType::Boolean,
                got: value.map_or(crate::sparkplug::DataType::Unknown, Value::datatype),
            });
        };
        let before = self.guard.locked().is_some();
        self.guard.set_lock_by_command(*lock)?;
        let after = self.guard.locked().is_some();
        if before != after {
            self.publish_write_lock(now, after);
        }
        Ok(if *lock {
            "write lock set: every write is refused until it is cleared".to_string()
        } else {
            "write lock cleared".to_string()
        })
    }

    /// The write lock's state as NDATA (when born; a birth carries it anyway).
    pub(super) fn publish_write_lock(&mut self, now: u64, locked: bool) {
        self.telemetry.write_locked.store(locked, Relaxed);
        match self.session.update(
            now,
            None,
            vec![Metric::new(WRITE_LOCK_METRIC, Value::Boolean(locked), now)],
        ) {
            Ok(actions) => self.execute(actions),
            Err(e) => tracing::error!(error = %e, "cannot report the write lock"),
        }
    }

    /// One write the host asked for: the guard decides.
    fn write_request(
        &mut self,
        now: u64,
        device: Option<&str>,
        metric: &str,
        value: Option<&Value>,
    ) -> Result<String, Refusal> {
        // The birth's declaration (a binary search), then the tag's guard:
        // configured tags come first in a device's declaration, in order.
        let declared = self.session.declared(device, metric);
        let guard = match (device, declared) {
            (Some(d), Some((i, _))) => self
                .cfg
                .devices
                .iter()
                .find(|c| c.name == d)
                .and_then(|c| c.tags.get(i))
                .and_then(|t| t.write.as_ref()),
            _ => None,
        };
        self.guard
            .decide(now, device, metric, declared.map(|(_, dt)| dt), guard, value)?;
        // The configuration cannot enable write-back in this version.
        Err(Refusal::Disabled)
    }
}
