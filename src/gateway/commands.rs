//! The runtime's side of NCMD/DCMD: each metric of a command goes through
//! the command guard (`crate::commands`); an accepted write goes to its
//! device's poller, which writes and reads back; the outcome is published
//! as DDATA and every decision is audited.
//!
//! Invariants:
//! - Nothing reaches a PLC that the guard refused: the guard decides first,
//!   and the poller then writes exactly the value the guard checked,
//!   in the tag's declared datatype.
//! - Nothing reaches a PLC before the audit file holds it: an accepted
//!   write's line (`accepted`) is fdatasync'ed first, and only then is the
//!   write handed to its poller, in the order accepted. A write whose line
//!   cannot be synced is refused, not written.
//! - Every metric of a command is audited: one journal line (target
//!   `spb::audit`; refusals go through the inbound log budget, so a flood
//!   costs a few lines a second, and a command's refusals are its first
//!   three metrics and a count; what was carried out is always journaled)
//!   and one line in the
//!   audit file (refusals beyond a per-minute budget summed up in one
//!   line), with device, metric, old and new value, outcome and reason;
//!   `spb_commands_total` counts every one by outcome.
//! - A write's outcome (confirmed, failed) and a refusal of a declared tag
//!   of an online device are published at once as DDATA of the tag's value
//!   with the outcome properties, so the host can correlate its request.
//! - `Node Control/Write Lock` is handled here: setting it always works,
//!   clearing it only where the file allows; its state is published at once
//!   as NDATA with the command's outcome (and every NBIRTH carries it).
//! - `Node Control/Reboot` restarts the service (never the box), only with
//!   `[commands] reboot = true`: the gateway stops as on SIGTERM and exits
//!   with status 75, which systemd restarts.

use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use crate::clock::{now_ms, rfc3339_ms};
use crate::commands::{request_id, shown, AuditEntry, Outcome, Refusal, Ticket, REBOOT_METRIC, WRITE_LOCK_METRIC};
use crate::plc::poller::{PollEvent, WriteRequest};
use crate::sparkplug::edge::Sample;
use crate::sparkplug::{DataType, Metric, Quality, Value};

use super::Runtime;

/// The refusals of one command journaled at most; the rest are counted.
const AUDITED_PER_COMMAND: usize = 3;

/// Refusals a minute itemised in the audit file.
pub(super) const AUDIT_REFUSALS_PER_MINUTE: u32 = 100;

/// The exit status that asks systemd for a restart (`EX_TEMPFAIL`).
pub const RESTART_EXIT_STATUS: i32 = 75;

/// What the audit says of one command metric.
struct Audited<'a> {
    device: Option<&'a str>,
    metric: &'a str,
    old: Option<String>,
    new: Option<String>,
    request: String,
}

impl Runtime {
    /// An NCMD (`device` None) or DCMD asking for writes.
    pub(super) fn on_command(&mut self, device: Option<String>, metrics: Vec<Metric>) {
        self.telemetry.commands_received.fetch_add(1, Relaxed);
        let now = now_ms();
        let journal = self.inbound_log.allow(now);
        let mut refusals = 0;
        for m in metrics {
            let name = m
                .name
                .clone()
                .unwrap_or_else(|| format!("alias {}", m.alias.unwrap_or(0)));
            let request = request_id(&m);
            let new = m.value.as_ref().map(shown);
            let (outcome, old) = match (device.as_deref(), name.as_str()) {
                (None, WRITE_LOCK_METRIC) => {
                    let o = self.write_lock_command(m.value.as_ref());
                    let locked = Value::Boolean(self.guard.locked().is_some());
                    self.publish_node_outcome(now, WRITE_LOCK_METRIC, locked, &o, &request);
                    (o, None)
                }
                (None, REBOOT_METRIC) => {
                    let o = self.reboot_command(m.value.as_ref());
                    self.publish_node_outcome(now, REBOOT_METRIC, Value::Boolean(false), &o, &request);
                    (o, None)
                }
                (d, _) => match self.write_request(now, d, &name, m.value, &request) {
                    // On its way to the PLC: audited when it ends.
                    Ok(()) => continue,
                    Err((refusal, old)) => (Outcome::Refused(refusal), old),
                },
            };
            let entry = Audited {
                device: device.as_deref(),
                metric: &name,
                old: old.as_ref().map(shown),
                new,
                request,
            };
            if matches!(outcome, Outcome::Refused(_)) {
                refusals += 1;
            }
            self.audit(now, journal && refusals <= AUDITED_PER_COMMAND, entry, &outcome);
        }
        if journal && refusals > AUDITED_PER_COMMAND {
            tracing::warn!(
                target: "spb::audit",
                device = device.as_deref().unwrap_or("(node)"),
                "{} more refused metrics of this command: not in the journal (the audit file and spb_commands_total have them)",
                refusals - AUDITED_PER_COMMAND
            );
        }
    }

    /// A write came back from its poller: publish and audit its outcome.
    pub(super) fn on_written(&mut self, ticket: Ticket, outcome: Outcome, read_back: Option<Value>, at: u64) {
        let now = now_ms();
        // The value read back; else the last one reported, as a bad read.
        let sample = match read_back {
            Some(v) => Sample {
                index: ticket.index as u32,
                value: Some(v),
                quality: Quality::Good,
                timestamp: at,
            },
            None => Sample {
                index: ticket.index as u32,
                value: self.session.current(Some(&ticket.device), ticket.index).cloned(),
                quality: Quality::Good,
                timestamp: at,
            },
        };
        self.publish_outcome(now, &ticket.device, sample, &outcome, &ticket.request);
        let entry = Audited {
            device: Some(&ticket.device),
            metric: &ticket.metric,
            old: ticket.old.as_ref().map(shown),
            new: Some(shown(&ticket.new)),
            request: ticket.request.clone(),
        };
        self.audit(now, false, entry, &outcome);
    }

    /// The DDATA that tells the host how its write ended.
    fn publish_outcome(&mut self, now: u64, device: &str, sample: Sample, outcome: &Outcome, request: &str) {
        if !self.session.is_device_online(device) {
            return;
        }
        match self
            .session
            .write_outcome(now, Some(device), sample, outcome.properties(request))
        {
            Ok(actions) => self.execute(actions),
            Err(e) => tracing::error!(device, error = %e, "cannot publish a write's outcome"),
        }
    }

    /// The NDATA that tells the host how its node-control command ended:
    /// the metric's `value` now (the write lock's state), with the outcome
    /// (`confirmed` when carried out). Nothing for an undeclared metric.
    fn publish_node_outcome(&mut self, now: u64, metric: &str, value: Value, outcome: &Outcome, request: &str) {
        let Some((index, _)) = self.session.declared(None, metric) else {
            return;
        };
        let sample = Sample {
            index: index as u32,
            value: Some(value),
            quality: Quality::Good,
            timestamp: now,
        };
        let reported = match outcome {
            Outcome::Applied(_) => Outcome::Confirmed,
            other => other.clone(),
        };
        match self
            .session
            .write_outcome(now, None, sample, reported.properties(request))
        {
            Ok(actions) => self.execute(actions),
            Err(e) => tracing::error!(metric, error = %e, "cannot publish a command's outcome"),
        }
    }

    /// Counts, journals and files one decision. A refusal is journaled only
    /// when `journal_refusal` (the inbound log budget allowed it); what was
    /// carried out always is.
    fn audit(&mut self, now: u64, journal_refusal: bool, e: Audited<'_>, outcome: &Outcome) {
        let t = &self.telemetry;
        match outcome {
            Outcome::Applied(_) => &t.commands_applied,
            Outcome::Confirmed => &t.commands_confirmed,
            Outcome::Failed(_) => &t.commands_failed,
            Outcome::Refused(_) => &t.commands_refused,
        }
        .fetch_add(1, Relaxed);
        let reason = outcome.reason();
        if journal_refusal || !matches!(outcome, Outcome::Refused(_)) {
            tracing::warn!(
                target: "spb::audit",
                device = e.device.unwrap_or("(node)"),
                metric = %e.metric,
                old = e.old.as_deref().unwrap_or("-"),
                new = e.new.as_deref().unwrap_or("-"),
                outcome = outcome.label(),
                reason = reason.as_deref().unwrap_or("-"),
                request = %e.request,
                "command"
            );
        }
        let Some(file) = &self.audit_file else {
            return;
        };
        if let Some(held) = self.audit_budget.roll(now) {
            let summary = AuditEntry {
                at: rfc3339_ms(now),
                command: "-",
                device: None,
                metric: "-".into(),
                old: None,
                new: None,
                outcome: "refused",
                reason: Some(format!(
                    "{held} more refused command metrics in the last minute, not itemised (spb_commands_total counts them)"
                )),
                request: String::new(),
            };
            file.send(summary.line(), false);
        }
        if !self.audit_budget.itemise(outcome) {
            return;
        }
        let entry = AuditEntry {
            at: rfc3339_ms(now),
            command: if e.device.is_some() { "DCMD" } else { "NCMD" },
            device: e.device.map(str::to_string),
            metric: e.metric.to_string(),
            old: e.old,
            new: e.new,
            outcome: outcome.label(),
            reason,
            request: e.request,
        };
        file.send(entry.line(), !matches!(outcome, Outcome::Refused(_)));
    }

    /// `Node Control/Next Server`, honoured or refused by the session.
    pub(super) fn audit_node_control(&mut self, metric: &'static str, refused: Option<String>) {
        let now = now_ms();
        let outcome = match refused {
            None => Outcome::Applied("left this server for the next one".into()),
            Some(reason) => Outcome::Refused(Refusal::Session(reason)),
        };
        let entry = Audited {
            device: None,
            metric,
            old: None,
            new: Some("true".into()),
            request: String::new(),
        };
        let journal = self.inbound_log.allow(now);
        self.audit(now, journal, entry, &outcome);
    }

    /// `Node Control/Write Lock = true|false` by NCMD.
    fn write_lock_command(&mut self, value: Option<&Value>) -> Outcome {
        let Some(Value::Boolean(lock)) = value else {
            return Outcome::Refused(Refusal::WrongType {
                declared: DataType::Boolean,
                got: value.map_or(DataType::Unknown, Value::datatype),
            });
        };
        if let Err(r) = self.guard.set_lock_by_command(*lock) {
            return Outcome::Refused(r);
        }
        // The new state goes out as the outcome's NDATA (publish_node_outcome).
        self.telemetry
            .write_locked
            .store(self.guard.locked().is_some(), Relaxed);
        Outcome::Applied(if *lock {
            "write lock set: every write is refused until it is cleared".to_string()
        } else {
            "write lock cleared".to_string()
        })
    }

    /// `Node Control/Reboot = true` by NCMD: a restart of the service.
    fn reboot_command(&mut self, value: Option<&Value>) -> Outcome {
        if !self.cfg.commands.reboot {
            return Outcome::Refused(Refusal::RebootDisabled);
        }
        match value {
            Some(Value::Boolean(true)) => {
                self.restart_requested = true;
                Outcome::Applied(format!(
                    "restart of the service: it stops as on SIGTERM and exits with status {RESTART_EXIT_STATUS} for systemd to start it again"
                ))
            }
            Some(Value::Boolean(false)) => Outcome::Applied("false: nothing to do".into()),
            other => Outcome::Refused(Refusal::WrongType {
                declared: DataType::Boolean,
                got: other.map_or(DataType::Unknown, Value::datatype),
            }),
        }
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

    /// One write the host asked for: the guard decides; an accepted one
    /// goes to the device's poller. A refusal comes back with the value
    /// the node last reported, for the audit.
    fn write_request(
        &mut self,
        now: u64,
        device: Option<&str>,
        metric: &str,
        value: Option<Value>,
        request: &str,
    ) -> Result<(), (Refusal, Option<Value>)> {
        // The birth's declaration (a binary search), then the tag's guard:
        // configured tags come first in a device's declaration, in order.
        let declared = self.session.declared(device, metric);
        let old = declared.and_then(|(i, _)| self.session.current(device, i).cloned());
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
        let refuse = |rt: &mut Runtime, refusal: Refusal, old: Option<Value>| {
            // The host learns of it on the tag's own DDATA.
            if let (Some(d), Some((i, _))) = (device, declared) {
                let sample = Sample {
                    index: i as u32,
                    value: old.clone(),
                    quality: Quality::Good,
                    timestamp: now,
                };
                rt.publish_outcome(now, d, sample, &Outcome::Refused(refusal.clone()), request);
            }
            Err((refusal, old))
        };
        let decided = self
            .guard
            .decide(now, device, metric, declared.map(|(_, dt)| dt), guard, value.as_ref());
        if let Err(r) = decided {
            return refuse(self, r, old);
        }
        let (Some(d), Some((index, dt)), Some(value)) = (device, declared, value) else {
            // The guard accepts only a declared, configured tag of a device, with a value.
            return refuse(self, Refusal::NotWritable, old);
        };
        if !self.session.is_device_online(d) {
            return refuse(self, Refusal::DeviceOffline, old);
        }
        let Some(new) = value.in_datatype(dt) else {
            return refuse(
                self,
                Refusal::DoesNotFit {
                    declared: dt,
                    value: shown(&value),
                },
                old,
            );
        };
        let Some(tx) = self.writers.get(d).cloned() else {
            return refuse(self, Refusal::DeviceOffline, old);
        };
        if tx.capacity() == 0 {
            return refuse(self, Refusal::Busy(WRITES_QUEUED), old);
        }
        let req = WriteRequest {
            ticket: Ticket {
                device: d.to_string(),
                metric: metric.to_string(),
                index,
                old: old.clone(),
                new,
                request: request.to_string(),
                requested_at: now,
            },
            confirm_timeout: self.cfg.commands.confirm_timeout,
        };
        // The audit line first, synced; the write follows (a dry run has no file).
        let (Some(file), Some(ahead)) = (&self.audit_file, &self.write_ahead) else {
            return match tx.try_send(req) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => refuse(self, Refusal::Busy(WRITES_QUEUED), old),
                Err(TrySendError::Closed(_)) => refuse(self, Refusal::DeviceOffline, old),
            };
        };
        let intent = AuditEntry {
            at: rfc3339_ms(now),
            command: "DCMD",
            device: Some(d.to_string()),
            metric: metric.to_string(),
            old: old.as_ref().map(shown),
            new: Some(shown(&req.ticket.new)),
            outcome: "accepted",
            reason: Some("the guard accepted it; written to the PLC next, its outcome follows".into()),
            request: request.to_string(),
        };
        let synced = file.send_synced(intent.line());
        match ahead.try_send((synced, tx, req)) {
            Ok(()) => Ok(()),
            Err(_) => refuse(self, Refusal::Busy(WRITES_QUEUED), old),
        }
    }
}

/// An accepted write waiting for its audit line to be synced.
pub(super) type WriteAhead = (
    oneshot::Receiver<Result<(), String>>,
    mpsc::Sender<WriteRequest>,
    WriteRequest,
);

/// Hands each accepted write to its poller once its audit line is on the
/// flash, one after the other (so two writes to a tag keep their order);
/// one whose line cannot be synced, or whose poller has no room, comes
/// back to the runtime as refused.
pub(super) async fn write_ahead(mut rx: mpsc::Receiver<WriteAhead>, poll_tx: mpsc::Sender<PollEvent>) {
    while let Some((synced, tx, req)) = rx.recv().await {
        let why = match tokio::time::timeout(std::time::Duration::from_secs(5), synced).await {
            Ok(Ok(Ok(()))) => match tx.try_send(req) {
                Ok(()) => continue,
                Err(TrySendError::Full(r)) => (r, Refusal::Busy(WRITES_QUEUED)),
                Err(TrySendError::Closed(r)) => (r, Refusal::DeviceOffline),
            },
            Ok(Ok(Err(e))) => (req, Refusal::AuditUnavailable(e)),
            _ => (req, Refusal::AuditUnavailable("not synced within 5 s".into())),
        };
        let (req, refusal) = why;
        let event = PollEvent::Written {
            ticket: req.ticket,
            outcome: Outcome::Refused(refusal),
            read_back: None,
            at: now_ms(),
        };
        if poll_tx.send(event).await.is_err() {
            return;
        }
    }
}

/// Writes waiting for one device's poller at most; more are refused as busy.
pub(super) const WRITES_QUEUED: usize = 4;
