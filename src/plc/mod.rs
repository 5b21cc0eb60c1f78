//! PLC access: the driver interface, the built-in simulator and the poller.
//!
//! Two-layer results, as in tokio-modbus: a driver's outer error means "this
//! connection is broken, reconnect" (and, after `fail_after` scans, DDEATH);
//! an inner per-tag error means "this tag is bad" and maps to that metric's
//! BAD quality, never to a dropped connection.

pub mod poller;
pub mod sim;

use std::time::Instant;

use thiserror::Error;

use crate::config::{DeviceConfig, DriverKind};
use crate::sparkplug::{DataType, Value};
use sim::{Rng, Signal, SimTag};

/// The connection to a PLC is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DriverError {
    #[error("{device}: cannot connect to {address}: {reason}")]
    Connect {
        device: String,
        address: String,
        reason: String,
    },
    #[error("{device}: read failed: {reason}")]
    Read { device: String, reason: String },
    #[error("{device}: no answer within {timeout_ms} ms")]
    Timeout { device: String, timeout_ms: u64 },
}

/// One tag could not be read; the others may be fine.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct TagError(pub String);

/// A tag as a driver sees it.
#[derive(Debug, Clone)]
pub struct TagSpec {
    pub address: String,
    pub datatype: DataType,
    pub signal: Option<std::sync::Arc<Signal>>,
}

/// A PLC driver. An enum rather than a trait object: the set is closed, calls
/// are static, and each variant keeps its own connection state.
pub enum Driver {
    Sim(SimDriver),
}

impl Driver {
    /// The driver for a device's configuration, not yet connected.
    pub fn for_device(d: &DeviceConfig, tags: &[TagSpec]) -> Driver {
        match d.driver {
            DriverKind::Sim => Driver::Sim(SimDriver::new(d, tags)),
        }
    }

    /// Opens (or re-opens) the connection.
    pub async fn connect(&mut self) -> Result<(), DriverError> {
        match self {
            Driver::Sim(s) => s.check_reachable(),
        }
    }

    /// Reads the tags at `indices`; the outer error means reconnect.
    pub async fn read(&mut self, indices: &[usize], now_ms: u64) -> Result<Vec<Result<Value, TagError>>, DriverError> {
        match self {
            Driver::Sim(s) => s.read(indices, now_ms),
        }
    }
}

/// The simulator as a driver: values from signals, optional periodic outages.
pub struct SimDriver {
    device: String,
    /// Configured tags, each with its own signal.
    tags: Vec<SimTag>,
    /// Generated tags (after the configured ones) share one signal: a
    /// template plus one f64 of state each, 8 bytes a tag at 100k tags.
    generated: Option<(SimTag, Vec<f64>)>,
    rng: Rng,
    started: Instant,
    outage_every: Option<f64>,
    outage_for: f64,
}

impl SimDriver {
    fn new(d: &DeviceConfig, specs: &[TagSpec]) -> SimDriver {
        let const_zero = || {
            std::sync::Arc::new(Signal {
                shape: sim::Shape::Const("0".into()),
                len: None,
            })
        };
        let configured = d.tags.len().min(specs.len());
        let tags = specs[..configured]
            .iter()
            .map(|t| SimTag::new(t.signal.clone().unwrap_or_else(const_zero), t.datatype))
            .collect();
        let generated = specs[configured..].first().map(|g| {
            (
                SimTag::new(g.signal.clone().unwrap_or_else(const_zero), g.datatype),
                vec![0.0; specs.len() - configured],
            )
        });
        SimDriver {
            device: d.name.clone(),
            tags,
            generated,
            rng: Rng::new(d.sim.seed),
            started: Instant::now(),
            outage_every: d.sim.unreachable_every.map(|e| e.as_secs_f64()).filter(|e| *e > 0.0),
            outage_for: d.sim.unreachable_for.as_secs_f64(),
        }
    }

    fn check_reachable(&self) -> Result<(), DriverError> {
        if let Some(every) = self.outage_every {
            let t = self.started.elapsed().as_secs_f64();
            // The outage is the last `outage_for` seconds of every period, so
            // the device starts reachable.
            if t % every >= every - self.outage_for {
                return Err(DriverError::Read {
                    device: self.device.clone(),
                    reason: "simulated outage".into(),
                });
            }
        }
        Ok(())
    }

    fn read(&mut self, indices: &[usize], now_ms: u64) -> Result<Vec<Result<Value, TagError>>, DriverError> {
        self.check_reachable()?;
        let t = self.started.elapsed().as_secs_f64();
        let n = self.tags.len();
        Ok(indices
            .iter()
            .map(|&i| {
                if i < n {
                    return Ok(self.tags[i].read(t, now_ms, &mut self.rng));
                }
                let (template, states) = self.generated.as_mut().ok_or_else(|| TagError(format!("no tag {i}")))?;
                let state = states.get_mut(i - n).ok_or_else(|| TagError(format!("no tag {i}")))?;
                template.state = *state;
                let v = template.read(t, now_ms, &mut self.rng);
                *state = template.state;
                Ok(v)
            })
            .collect())
    }
}
