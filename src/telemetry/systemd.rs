//! systemd integration: READY=1, STATUS=, and watchdogs that pet systemd
//! only while the loops they watch make progress: the gateway's poll and
//! MQTT loops, or any counter a loop advances (the uplink's).
//!
//! Invariant: outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use super::metrics::Telemetry;

/// True when started by systemd with a notify socket.
pub fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// READY=1 with a status line.
pub fn ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// STATUS= line shown by `systemctl status`.
pub fn status(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(status)]);
}

/// STOPPING=1.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Pets the watchdog at half its interval while the session loop ticks and
/// every device poller is alive (a dead PLC does not stop a poller's loop,
/// so it does not make systemd restart the gateway); stays silent, so that
/// systemd restarts us, when either is stuck.
pub async fn watchdog(t: Arc<Telemetry>) {
    let mut last_main = u64::MAX;
    let mut last_pollers: Vec<(String, u64)> = Vec::new();
    pet_while(move || {
        let main = t.mqtt_progress.load(Relaxed);
        let pollers = t.heartbeats();
        let main_ok = main != last_main;
        let stuck: Vec<&str> = pollers
            .iter()
            .filter(|(name, beat)| last_pollers.iter().any(|(n, b)| n == name && b == beat))
            .map(|(n, _)| n.as_str())
            .collect();
        let ok = main_ok && stuck.is_empty();
        if !ok {
            tracing::error!(main_loop_stuck = !main_ok, stuck_pollers = ?stuck, "not petting the systemd watchdog");
        }
        last_main = main;
        last_pollers = pollers;
        ok
    })
    .await
}

/// Pets the watchdog at half its interval while `progress` moves (a loop
/// that ticks on its own advances it); stays silent when it stops, so that
/// systemd restarts the process.
pub async fn watchdog_while(progress: impl Fn() -> u64, what: &'static str) {
    let mut last = u64::MAX;
    pet_while(move || {
        let now = progress();
        let ok = now != last;
        if !ok {
            tracing::error!(loop_stuck = what, "not petting the systemd watchdog");
        }
        last = now;
        ok
    })
    .await
}

/// Every half watchdog interval, asks `healthy` (which says why not) and
/// pets systemd only when it is; returns at once outside a watchdog.
async fn pet_while(mut healthy: impl FnMut() -> bool) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        if healthy() {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        }
    }
}
