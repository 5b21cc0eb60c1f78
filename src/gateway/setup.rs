//! What the gateway derives from its configuration: the Sparkplug
//! session's options and device definitions, the store's and the
//! forwarder's options, and the pre-flight check `--check-config` runs.
//!
//! Invariants: pure functions of the configuration (and `now`); the session
//! `--check-config` builds is the one a start would build, so a birth that
//! cannot fit is found before the unit starts, never at the first connect.

use std::time::Duration;

use crate::config::Config;
use crate::mqtt;
use crate::plc::poller;
use crate::queue::disk::DiskOptions;
use crate::queue::forward::ForwarderOptions;
use crate::queue::outbox::OutboxOptions;
use crate::sparkplug::edge::{DeviceDef, EdgeAction, EdgeConfig, EdgeSession};
use crate::sparkplug::{Metric, Value};

/// What `--check-config` finds beyond the file's syntax and keys: what
/// would fail at start or at the first connect.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Preflight {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Checks that `cfg` can run: every server's TLS files read, the key
/// matches its certificate, the client certificate is valid now (with a
/// clock before 2020 only a warning: a box without a real-time clock) and
/// not about to expire (a warning within 30 days), and every birth fits
/// `mqtt.max_packet_size` (a birth cannot be split). `at_boot` (the unit's
/// `ExecStartPre`) makes a certificate's validity a warning: the gateway
/// then polls and stores while it cannot connect, instead of not starting.
pub fn preflight(cfg: &Config, now_ms: u64, at_boot: bool) -> Preflight {
    let mut out = Preflight::default();
    let (errors, warnings) = mqtt::tls::check_servers(&cfg.mqtt.servers, now_ms, at_boot);
    out.errors.extend(errors);
    out.warnings.extend(warnings);
    // The births, as the session would publish them at a connect.
    let mut ecfg = edge_config(cfg, true);
    ecfg.limits.max_packet_bytes = usize::MAX;
    // Not set up yet (the file as installed): the births' sizes with
    // stand-in names, so that the devices already listed are checked.
    for id in [&mut ecfg.group_id, &mut ecfg.node_id] {
        if id.is_empty() {
            *id = "not-set-up".to_string();
        }
    }
    match EdgeSession::new(
        ecfg,
        node_metrics(now_ms, cfg.commands.write_lock, cfg.commands.reboot),
        definitions(cfg, now_ms),
        None,
    ) {
        Ok(mut session) => {
            let mut actions = Vec::new();
            for d in cfg.devices.iter().filter(|d| d.enabled) {
                let _ = session.device_online(now_ms, &d.name);
            }
            actions.extend(session.begin_connect(now_ms));
            actions.extend(session.connected(now_ms));
            for p in actions.iter().filter_map(EdgeAction::publish) {
                let bytes = p.packet_bytes();
                if bytes as u64 > cfg.mqtt.max_packet_size {
                    out.errors.push(format!(
                        "mqtt.max_packet_size: the birth {} is {bytes} bytes, more than {} (a birth holds every metric and cannot be split): raise it, and the broker's limit",
                        p.topic, cfg.mqtt.max_packet_size
                    ));
                }
            }
        }
        Err(e) => out.errors.push(format!("sparkplug session: {e}")),
    }
    out
}

/// The store's options from `[store]`.
pub fn disk_options(cfg: &Config) -> DiskOptions {
    DiskOptions {
        max_bytes: cfg.store.max_bytes,
        sync_interval: cfg.store.flush_interval,
        sync_records: cfg.store.flush_records,
    }
}

/// The gateway's software version, published in NBIRTH.
const VERSION_METRIC: &str = "Properties/Software Version";

/// The node's own metrics in NBIRTH: the software version, and the write
/// lock (`Node Control/Write Lock`, Boolean: its state now; an NCMD sets or
/// clears it, see `crate::commands`).
pub fn node_metrics(now: u64, write_locked: bool, reboot: bool) -> Vec<Metric> {
    let mut metrics = vec![
        Metric::new(
            VERSION_METRIC,
            Value::String(format!("spb-gateway {}", env!("CARGO_PKG_VERSION"))),
            now,
        ),
        Metric::new(crate::commands::WRITE_LOCK_METRIC, Value::Boolean(write_locked), now),
    ];
    if reboot {
        metrics.push(Metric::new(crate::commands::REBOOT_METRIC, Value::Boolean(false), now));
    }
    metrics
}

pub fn definitions(cfg: &Config, now: u64) -> Vec<DeviceDef> {
    cfg.devices
        .iter()
        .filter(|d| d.enabled)
        .map(|d| DeviceDef {
            name: d.name.clone(),
            metrics: poller::declarations(d, now),
        })
        .collect()
}

pub fn edge_config(cfg: &Config, dry_run: bool) -> EdgeConfig {
    EdgeConfig {
        group_id: cfg.node.group_id.clone(),
        node_id: cfg.node.node_id.clone(),
        // A dry run has no broker, so it cannot see the host's STATE.
        primary_host_id: if dry_run {
            None
        } else {
            cfg.node.primary_host_id.clone()
        },
        server_count: cfg.mqtt.servers.len().max(1),
        rebirth_debounce_ms: cfg.node.rebirth_debounce.as_millis() as u64,
        aliases: cfg.node.aliases,
        max_data_metrics: cfg.node.max_data_metrics,
        limits: crate::sparkplug::edge::EdgeLimits {
            max_command_metrics: cfg.commands.max_metrics,
            state_max_skew_ms: cfg.node.state_max_skew.as_millis() as u64,
            max_packet_bytes: usize::try_from(cfg.mqtt.max_packet_size).unwrap_or(usize::MAX),
        },
    }
}

/// The forwarder's options from `[store]`. The host window only matters
/// with a Primary Host to watch; without one nothing is retained.
pub fn forwarder_options(cfg: &Config) -> ForwarderOptions {
    let s = &cfg.store;
    let window = if cfg.node.primary_host_id.is_some() {
        s.host_window
    } else {
        Duration::ZERO
    };
    ForwarderOptions {
        outbox: OutboxOptions {
            host_window_ms: window.as_millis() as u64,
            host_window_bytes: usize::try_from(s.host_window_max_bytes).unwrap_or(usize::MAX),
            ..OutboxOptions::default()
        },
        replay_rate: s.replay_rate,
        flush_records: s.flush_records as usize,
        ..ForwarderOptions::default()
    }
}

/// The topic of the watermark markers: outside `spBv1.0/`, so Sparkplug
/// applications never see them (the broker's ACL must allow publishing it).
pub fn watermark_topic(group: &str, node: &str) -> String {
    format!("spb-gateway/watermark/{group}/{node}")
}

/// Whether two definitions declare the same devices and tags (names and
/// datatypes, in order): a reload that keeps them needs no rebirth.
pub fn same_tags(old: &[DeviceDef], new: &[DeviceDef]) -> bool {
    old.len() == new.len()
        && old.iter().zip(new).all(|(a, b)| {
            a.name == b.name
                && a.metrics.len() == b.metrics.len()
                && a.metrics
                    .iter()
                    .zip(&b.metrics)
                    .all(|(x, y)| x.name == y.name && x.datatype == y.datatype)
        })
}
