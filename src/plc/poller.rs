//! One task per device: scan classes, batched reads, report by exception with
//! deadbands, per-tag quality, and the device's reachability.
//!
//! Invariants:
//! - Tags due at the same moment are read in one batch, whatever their class.
//! - A value is reported when it differs from the last *reported* one by at
//!   least the tag's deadband (absolute, and percent of the last reported
//!   value; with both set, both must be exceeded); non-numeric values and
//!   quality changes are always reported; zero deadband reports every change.
//! - A failed tag keeps its last value and is reported once with BAD quality.
//! - After `fail_after` consecutive failed scans the device is `Offline`
//!   (DDEATH); the first good scan after that is `Online` with *every* tag's
//!   current value (DBIRTH), as is the very first scan.
//! - A scan that is late by more than its period counts as missed; missed
//!   scans are skipped, never queued.
//! - The loop wakes at least once a second and advances its heartbeat, also
//!   while the PLC is unreachable: the systemd watchdog watches that.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{Driver, TagSpec};
use crate::config::{DeviceConfig, TagConfig};
use crate::sparkplug::{DataType, Metric, PropertySet, Quality, Value};
use crate::telemetry::metrics::DeviceStats;

/// What a device poller tells the session.
#[derive(Debug, Clone, PartialEq)]
pub enum PollEvent {
    /// Reachable (first time or again), with every tag's current value.
    Online { device: String, metrics: Vec<Metric> },
    /// Unreachable for `fail_after` scans.
    Offline { device: String, reason: String },
    /// Changed values.
    Samples { device: String, metrics: Vec<Metric> },
}

/// The last reported state of a tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Reported {
    pub value: Option<Value>,
    pub quality: Quality,
}

/// Report-by-exception decision for one tag.
pub fn should_report(tag: &TagConfig, last: Option<&Reported>, value: &Option<Value>, quality: Quality) -> bool {
    let Some(last) = last else { return true };
    if last.quality != quality {
        return true;
    }
    let (Some(old), Some(new)) = (&last.value, value) else {
        return last.value != *value;
    };
    match (old.as_f64(), new.as_f64()) {
        (Some(a), Some(b)) if tag.deadband > 0.0 || tag.deadband_percent > 0.0 => {
            let delta = (b - a).abs();
            let abs_ok = tag.deadband <= 0.0 || delta >= tag.deadband;
            let pct_ok = tag.deadband_percent <= 0.0 || delta >= a.abs() * tag.deadband_percent / 100.0;
            abs_ok && pct_ok && delta > 0.0
        }
        _ => old != new,
    }
}

/// The tags of a device, including generated ones, as the session and the
/// driver see them.
pub fn expand_tags(d: &DeviceConfig) -> Vec<TagConfig> {
    let mut tags = d.tags.clone();
    let n = d.sim.generate as usize;
    if n > 0 {
        let signal =
            d.sim.generate_signal.clone().unwrap_or_else(|| {
                super::sim::Signal::parse("random_walk(step=0.5)").expect("the default signal parses")
            });
        let datatype = d.sim.generate_datatype.unwrap_or(DataType::Double);
        let class = d
            .sim
            .generate_scan_class
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let width = n.to_string().len().max(6);
        tags.extend((1..=n).map(|i| TagConfig {
            name: format!("Gen/Tag {i:0width$}"),
            address: "generated".to_string(),
            datatype,
            scan_class: class.clone(),
            deadband: 0.0,
            deadband_percent: 0.0,
            writable: false,
            signal: Some(signal.clone()),
        }));
    }
    tags
}

/// Birth declarations for a device: every tag, null until first read.
pub fn declarations(tags: &[TagConfig], now_ms: u64) -> Vec<Metric> {
    tags.iter()
        .map(|t| Metric::null(t.name.clone(), t.datatype, now_ms))
        .collect()
}

fn bad(value: Option<Value>, name: &str, datatype: DataType, now_ms: u64) -> Metric {
    let mut m = match value {
        Some(v) => Metric::new(name, v, now_ms),
        None => Metric::null(name, datatype, now_ms),
    };
    let mut p = PropertySet::default();
    p.set_quality(Quality::Bad);
    m.properties = Some(p);
    m
}

/// Wall clock in ms since the epoch (the poller's only clock read besides tokio's).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Polls one device until `stop` turns true or the session goes away.
pub async fn run(
    d: DeviceConfig,
    tags: Vec<TagConfig>,
    tx: mpsc::Sender<PollEvent>,
    stats: Arc<DeviceStats>,
    mut stop: watch::Receiver<bool>,
) {
    let specs: Vec<TagSpec> = tags
        .iter()
        .map(|t| TagSpec {
            address: t.address.clone(),
            datatype: t.datatype,
            signal: t.signal.clone(),
        })
        .collect();
    let mut driver = Driver::for_device(&d, &specs);
    let classes: Vec<(Duration, Vec<usize>)> = d
        .scan_classes
        .iter()
        .map(|(name, period)| {
            (
                *period,
                (0..tags.len())
                    .filter(|&i| tags[i].scan_class == *name)
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, idx)| !idx.is_empty())
        .collect();
    let all: Vec<usize> = (0..tags.len()).collect();
    let start = Instant::now();
    let mut due: Vec<Instant> = vec![start; classes.len()];
    let mut last: Vec<Option<Reported>> = vec![None; tags.len()];
    let mut online = false;
    let mut connected = false;
    let mut failures: u32 = 0;
    loop {
        let next = due
            .iter()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        // Wake at least once a second: the heartbeat tells the watchdog this loop is alive.
        let wake = next.min(Instant::now() + Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.changed() => return,
        }
        stats.heartbeat.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        if now < next {
            continue;
        }
        // Which classes are due; while offline every tag is read, for DBIRTH.
        let mut batch: Vec<usize> = Vec::new();
        for (c, (period, idx)) in classes.iter().enumerate() {
            if due[c] <= now {
                let late = now.duration_since(due[c]);
                if late > *period {
                    stats.missed_scans.fetch_add(
                        (late.as_nanos() / period.as_nanos().max(1)) as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    due[c] = now + *period;
                } else {
                    due[c] += *period;
                }
                if online {
                    batch.extend(idx);
                }
            }
        }
        if !online {
            batch.clone_from(&all);
        }
        if batch.is_empty() {
            continue;
        }
        batch.sort_unstable();
        batch.dedup();
        let t0 = Instant::now();
        let result = async {
            if !connected {
                driver.connect().await?;
                connected = true;
            }
            driver.read(&batch, now_ms()).await
        };
        let result = match tokio::time::timeout(d.timeout, result).await {
            Ok(r) => r,
            Err(_) => Err(super::DriverError::Timeout {
                device: d.name.clone(),
                timeout_ms: d.timeout.as_millis() as u64,
            }),
        };
        stats.observe_read(t0.elapsed(), result.is_ok());
        let ts = now_ms();
        match result {
            Err(e) => {
                connected = false;
                failures += 1;
                if online && failures >= d.fail_after {
                    online = false;
                    stats.set_online(false);
                    tracing::warn!(device = %d.name, error = %e, "device unreachable: DDEATH");
                    if tx
                        .send(PollEvent::Offline {
                            device: d.name.clone(),
                            reason: e.to_string(),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                } else if !online && failures == d.fail_after {
                    tracing::warn!(device = %d.name, error = %e, "device not reachable yet");
                }
            }
            Ok(values) => {
                failures = 0;
                let mut metrics = Vec::with_capacity(batch.len());
                for (&i, r) in batch.iter().zip(values) {
                    let tag = &tags[i];
                    let (value, quality) = match r {
                        Ok(v) => (Some(v), Quality::Good),
                        Err(e) => {
                            stats.tag_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::debug!(device = %d.name, tag = %tag.name, error = %e, "tag read failed");
                            (last[i].as_ref().and_then(|l| l.value.clone()), Quality::Bad)
                        }
                    };
                    if online && !should_report(tag, last[i].as_ref(), &value, quality) {
                        continue;
                    }
                    metrics.push(match quality {
                        Quality::Good => match &value {
                            Some(v) => Metric::new(tag.name.clone(), v.clone(), ts),
                            None => Metric::null(tag.name.clone(), tag.datatype, ts),
                        },
                        _ => bad(value.clone(), &tag.name, tag.datatype, ts),
                    });
                    last[i] = Some(Reported { value, quality });
                }
                let event = if online {
                    if metrics.is_empty() {
                        continue;
                    }
                    PollEvent::Samples {
                        device: d.name.clone(),
                        metrics,
                    }
                } else {
                    online = true;
                    stats.set_online(true);
                    tracing::info!(device = %d.name, tags = tags.len(), "device reachable: DBIRTH");
                    PollEvent::Online {
                        device: d.name.clone(),
                        metrics,
                    }
                };
                stats
                    .changes
                    .fetch_add(event_len(&event), std::sync::atomic::Ordering::Relaxed);
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn event_len(e: &PollEvent) -> u64 {
    match e {
        PollEvent::Online { metrics, .. } | PollEvent::Samples { metrics, .. } => metrics.len() as u64,
        PollEvent::Offline { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(deadband: f64, pct: f64) -> TagConfig {
        TagConfig {
            name: "t".into(),
            address: "counter".into(),
            datatype: DataType::Double,
            scan_class: "default".into(),
            deadband,
            deadband_percent: pct,
            writable: false,
            signal: None,
        }
    }

    fn last(v: f64) -> Reported {
        Reported {
            value: Some(Value::Double(v)),
            quality: Quality::Good,
        }
    }

    #[test]
    fn first_value_is_always_reported() {
        assert!(should_report(
            &tag(100.0, 0.0),
            None,
            &Some(Value::Double(1.0)),
            Quality::Good
        ));
    }

    #[test]
    fn absolute_deadband_suppresses_small_moves() {
        let t = tag(0.5, 0.0);
        assert!(!should_report(
            &t,
            Some(&last(10.0)),
            &Some(Value::Double(10.4)),
            Quality::Good
        ));
        assert!(should_report(
            &t,
            Some(&last(10.0)),
            &Some(Value::Double(10.5)),
            Quality::Good
        ));
        assert!(should_report(
            &t,
            Some(&last(10.0)),
            &Some(Value::Double(9.4)),
            Quality::Good
        ));
    }

    #[test]
    fn percent_deadband_is_relative_to_the_last_reported_value() {
        let t = tag(0.0, 1.0);
        assert!(!should_report(
            &t,
            Some(&last(200.0)),
            &Some(Value::Double(201.9)),
            Quality::Good
        ));
        assert!(should_report(
            &t,
            Some(&last(200.0)),
            &Some(Value::Double(202.0)),
            Quality::Good
        ));
    }

    #[test]
    fn with_both_deadbands_both_must_be_exceeded() {
        let t = tag(5.0, 1.0);
        assert!(!should_report(
            &t,
            Some(&last(1000.0)),
            &Some(Value::Double(1004.0)),
            Quality::Good
        ));
        assert!(!should_report(
            &t,
            Some(&last(100.0)),
            &Some(Value::Double(100.9)),
            Quality::Good
        ));
        assert!(should_report(
            &t,
            Some(&last(100.0)),
            &Some(Value::Double(106.0)),
            Quality::Good
        ));
    }

    #[test]
    fn zero_deadband_reports_every_change_and_no_repeat() {
        let t = tag(0.0, 0.0);
        assert!(!should_report(
            &t,
            Some(&last(1.0)),
            &Some(Value::Double(1.0)),
            Quality::Good
        ));
        assert!(should_report(
            &t,
            Some(&last(1.0)),
            &Some(Value::Double(1.0000001)),
            Quality::Good
        ));
    }

    #[test]
    fn quality_change_is_reported_even_when_the_value_is_the_same() {
        let t = tag(100.0, 0.0);
        assert!(should_report(
            &t,
            Some(&last(1.0)),
            &Some(Value::Double(1.0)),
            Quality::Bad
        ));
    }

    #[test]
    fn generated_tags_are_named_in_order_with_their_class() {
        let d = DeviceConfig {
            name: "d".into(),
            driver: crate::config::DriverKind::Sim,
            address: None,
            enabled: true,
            scan_classes: vec![("default".into(), Duration::from_secs(1))],
            timeout: Duration::from_secs(1),
            fail_after: 3,
            tags: vec![tag(0.0, 0.0)],
            sim: crate::config::SimDeviceConfig {
                generate: 3,
                ..Default::default()
            },
        };
        let names: Vec<String> = expand_tags(&d).into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["t", "Gen/Tag 000001", "Gen/Tag 000002", "Gen/Tag 000003"]);
    }
}
