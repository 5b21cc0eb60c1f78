//! systemd integration: READY=1, STATUS=, and a watchdog that pets systemd
//! only while both the poll loop and the MQTT loop make progress.
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

/// Pets the watchdog at half its interval while both loops advance; stays
/// silent (so systemd restarts us) when either one is stuck.
pub async fn watchdog(t: Arc<Telemetry>) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(100));
    let (mut poll, mut mqtt) = (u64::MAX, u64::MAX);
    loop {
        tokio::time::sleep(period).await;
        let (p, m) = (t.poll_progress.load(Relaxed), t.mqtt_progress.load(Relaxed));
        if p != poll && m != mqtt {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        } else {
            tracing::warn!(
                poll_loop_stuck = p == poll,
                mqtt_loop_stuck = m == mqtt,
                "not petting the systemd watchdog"
            );
        }
        (poll, mqtt) = (p, m);
    }
}
