//! A first boot: the configuration file as installed has no Sparkplug
//! identity and no broker, and the gateway waits for them instead of
//! failing.
//!
//! Invariants:
//! - Nothing is published, no store is opened and no PLC is polled while
//!   waiting; the state directory is not touched.
//! - The process stays up (no crash loop under `Restart=`): READY=1 is sent
//!   with the missing keys as the unit's STATUS, the watchdog is petted,
//!   `/ready` answers 503 with one line per missing key, and the journal
//!   says the same at start, on every reload and once an hour.
//! - A reload (SIGHUP) that brings everything ends the wait and the gateway
//!   starts with that file; a reload that is invalid or still incomplete
//!   changes nothing and says why. SIGTERM/SIGINT end the process with 0.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{Config, SetupNeeded};
use crate::telemetry::metrics::Telemetry;
use crate::telemetry::systemd;

use super::{RunOptions, Signals};

/// How often the journal is reminded while the gateway waits.
const REMIND_EVERY: Duration = Duration::from_secs(3600);

/// Waits until the configuration names an identity and a broker. Returns
/// the configuration to start with, or `None` when asked to stop first.
pub(super) async fn until_set_up(
    mut cfg: Config,
    opts: &RunOptions,
    telemetry: &Arc<Telemetry>,
    status: &Arc<Mutex<String>>,
    signals: &mut Signals,
) -> Option<Config> {
    let mut needed = cfg.setup_needed();
    if needed.is_empty() {
        return Some(cfg);
    }
    let path = opts
        .config_path
        .as_ref()
        .map_or_else(|| crate::config::DEFAULT_PATH.to_string(), |p| p.display().to_string());
    telemetry.setup_incomplete.store(true, Relaxed);
    let watchdog = tokio::spawn(systemd::watchdog(telemetry.clone()));
    announce(&needed, &path, status);
    systemd::ready(&one_line(&needed, &path));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since_reminder = Duration::ZERO;
    let outcome = loop {
        tokio::select! {
            _ = tick.tick() => {
                // The watchdog's sign of life: this loop is not stuck.
                telemetry.mqtt_progress.fetch_add(1, Relaxed);
                since_reminder += Duration::from_secs(1);
                if since_reminder >= REMIND_EVERY {
                    since_reminder = Duration::ZERO;
                    announce(&needed, &path, status);
                }
            }
            _ = signals.term.recv() => break None,
            _ = signals.int.recv() => break None,
            _ = signals.hup.recv() => {
                let Some(p) = &opts.config_path else { continue };
                let next = match Config::load_with(p, &opts.overrides) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!("reload refused, still waiting for setup:\n{e}");
                        continue;
                    }
                };
                needed = next.setup_needed();
                cfg = next;
                if needed.is_empty() {
                    tracing::info!("{path} is set up: starting");
                    break Some(cfg);
                }
                announce(&needed, &path, status);
                systemd::status(&one_line(&needed, &path));
            }
        }
    };
    watchdog.abort();
    telemetry.setup_incomplete.store(false, Relaxed);
    if outcome.is_none() {
        tracing::info!("stopped while waiting for setup");
        systemd::stopping();
    }
    outcome
}

/// The journal's lines and `/ready`'s body.
fn announce(needed: &[SetupNeeded], path: &str, status: &Arc<Mutex<String>>) {
    let mut text = format!("waiting for setup: fill in, in {path}:");
    for n in needed {
        tracing::warn!("not set up: {path} needs {n}");
        text.push_str(&format!("\n  - {n}"));
    }
    text.push_str("\nthen: spb-gateway --check-config && systemctl reload spb-gateway");
    tracing::warn!("waiting for setup; then: spb-gateway --check-config && systemctl reload spb-gateway");
    if let Ok(mut s) = status.lock() {
        *s = text;
    }
}

/// `systemctl status`'s one line.
fn one_line(needed: &[SetupNeeded], path: &str) -> String {
    let keys: Vec<&str> = needed
        .iter()
        .map(|n| match n {
            SetupNeeded::Identity => "[node] group_id/node_id",
            SetupNeeded::Broker => "[[mqtt.servers]]",
        })
        .collect();
    format!("waiting for setup: fill in {} in {path}", keys.join(" and "))
}
