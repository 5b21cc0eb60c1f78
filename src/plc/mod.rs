//! PLC access: the driver interface, the built-in simulator and the poller.
//!
//! Two-layer results, as in tokio-modbus: a driver's outer error means "this
//! connection is broken, reconnect" (and, after `fail_after` scans, DDEATH);
//! an inner per-tag error means "this tag is bad" and maps to that metric's
//! BAD quality, never to a dropped connection.

pub mod device;
pub mod discover;
pub mod logix;
pub mod machine;
pub mod poller;
pub mod s7;
pub mod sim;
pub mod stats;

use std::time::Instant;

use thiserror::Error;

use crate::sparkplug::{DataType, Value};
use device::{DeviceConfig, DriverKind, TagAddress};
use sim::{Rng, Signal, SimTag};

/// `v` as the integer datatype `dt`, when it fits (None: out of range or not an integer type).
pub fn int_value(v: i128, dt: DataType) -> Option<Value> {
    Some(match dt {
        DataType::Int8 => Value::Int8(v.try_into().ok()?),
        DataType::Int16 => Value::Int16(v.try_into().ok()?),
        DataType::Int32 => Value::Int32(v.try_into().ok()?),
        DataType::Int64 => Value::Int64(v.try_into().ok()?),
        DataType::UInt8 => Value::UInt8(v.try_into().ok()?),
        DataType::UInt16 => Value::UInt16(v.try_into().ok()?),
        DataType::UInt32 => Value::UInt32(v.try_into().ok()?),
        DataType::UInt64 => Value::UInt64(v.try_into().ok()?),
        _ => return None,
    })
}

/// Elements (each already of `dt`'s element type) as one array value of `dt`.
pub fn array_value(values: Vec<Value>, dt: DataType) -> Result<Value, String> {
    macro_rules! collect {
        ($variant:ident, $scalar:ident) => {
            Value::$variant(
                values
                    .into_iter()
                    .map(|v| match v {
                        Value::$scalar(x) => Ok(x),
                        other => Err(format!("{other:?} is not an element of {dt}")),
                    })
                    .collect::<Result<_, String>>()?,
            )
        };
    }
    Ok(match dt {
        DataType::Int8Array => collect!(Int8Array, Int8),
        DataType::Int16Array => collect!(Int16Array, Int16),
        DataType::Int32Array => collect!(Int32Array, Int32),
        DataType::Int64Array => collect!(Int64Array, Int64),
        DataType::UInt8Array => collect!(UInt8Array, UInt8),
        DataType::UInt16Array => collect!(UInt16Array, UInt16),
        DataType::UInt32Array => collect!(UInt32Array, UInt32),
        DataType::UInt64Array => collect!(UInt64Array, UInt64),
        DataType::FloatArray => collect!(FloatArray, Float),
        DataType::DoubleArray => collect!(DoubleArray, Double),
        DataType::BooleanArray => collect!(BooleanArray, Boolean),
        DataType::DateTimeArray => collect!(DateTimeArray, DateTime),
        other => return Err(format!("{other} arrays are not read from PLCs")),
    })
}

/// The connection to a PLC is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DriverError {
    #[error("{device}: cannot connect: {reason}")]
    Connect { device: String, reason: String },
    #[error("{device}: read failed: {reason}")]
    Read { device: String, reason: String },
    #[error("{device}: write failed: {reason}")]
    Write { device: String, reason: String },
    #[error("{device}: no answer within {timeout_ms} ms")]
    Timeout { device: String, timeout_ms: u64 },
    /// The PLC (or whatever answers in its place) broke the protocol's
    /// bounds: an answer too large or never ending. Counted apart.
    #[error("{device}: protocol violation: {reason}")]
    Protocol { device: String, reason: String },
}

/// One tag could not be read; the others may be fine.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct TagError(pub String);

/// A tag as a driver sees it.
#[derive(Debug, Clone)]
pub struct TagSpec {
    pub address: TagAddress,
    pub datatype: DataType,
}

/// A PLC driver. An enum rather than a trait object: the set is closed, calls
/// are static, and each variant keeps its own connection state.
pub enum Driver {
    Sim(SimDriver),
    S7(Box<s7::S7Driver>),
    Logix(Box<logix::LogixDriver>),
}

impl Driver {
    /// The driver for a device's configuration, not yet connected. `tags`
    /// are the configured tags, then (for the simulator's generated tags)
    /// one spec they share, as [`poller::plan`] makes them.
    pub fn for_device(d: &DeviceConfig, tags: &[TagSpec]) -> Driver {
        let addr = d.socket_address().unwrap_or_default();
        match d.driver {
            DriverKind::Sim => Driver::Sim(SimDriver::new(d, tags)),
            DriverKind::S7 => Driver::S7(Box::new(s7::S7Driver::with_parsed(
                s7::S7Options {
                    addr,
                    local_tsap: d.s7.local_tsap,
                    remote_tsap: d.s7.remote_tsap,
                    pdu_size: d.s7.pdu_size,
                    max_items: d.s7.max_items,
                },
                tags.iter().map(|t| {
                    let a = match &t.address {
                        TagAddress::S7(a) => Ok(*a),
                        _ => Err("not an S7 address".to_string()),
                    };
                    (a, t.datatype)
                }),
            ))),
            DriverKind::Logix => Driver::Logix(Box::new(logix::LogixDriver::with_parsed(
                addr,
                d.logix.slot,
                d.logix.batch_size,
                tags.iter().map(|t| {
                    let a = match &t.address {
                        TagAddress::Logix(a) => Ok((**a).clone()),
                        _ => Err("not a Logix tag".to_string()),
                    };
                    (a, t.datatype)
                }),
            ))),
        }
    }

    /// Opens (or re-opens) the connection.
    pub async fn connect(&mut self, device: &str) -> Result<(), DriverError> {
        match self {
            Driver::Sim(s) => s.check_reachable(),
            Driver::S7(s) => s.connect().await.map_err(|e| s7_error(device, e, Op::Connect)),
            Driver::Logix(l) => l.connect().await.map_err(|e| connect_error(device, e)),
        }
    }

    /// Reads the tags at `indices`; the outer error means reconnect.
    pub async fn read(
        &mut self,
        device: &str,
        indices: &[usize],
        now_ms: u64,
    ) -> Result<Vec<Result<Value, TagError>>, DriverError> {
        let tagged = |r: Vec<Result<Value, String>>| r.into_iter().map(|x| x.map_err(TagError)).collect();
        match self {
            Driver::Sim(s) => s.read(indices, now_ms),
            Driver::S7(s) => s
                .read(indices)
                .await
                .map(tagged)
                .map_err(|e| s7_error(device, e, Op::Read)),
            Driver::Logix(l) => l.read(indices).await.map(tagged).map_err(|e| read_error(device, e)),
        }
    }

    /// Writes `value` to the tag at `index`: outer error = connection, inner = this tag.
    pub async fn write(
        &mut self,
        device: &str,
        index: usize,
        value: &Value,
    ) -> Result<Result<(), TagError>, DriverError> {
        let r = match self {
            Driver::Sim(s) => s.write(index, value),
            Driver::S7(s) => s.write(index, value).await.map_err(|e| s7_error(device, e, Op::Write)),
            Driver::Logix(l) => l.write(index, value).await.map_err(|e| write_error(device, e)),
        };
        r.map(|inner| inner.map_err(TagError))
    }
}

fn connect_error(device: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError::Connect {
        device: device.to_string(),
        reason: e.to_string(),
    }
}

/// What a driver was doing when its connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Connect,
    Read,
    Write,
}

fn s7_error(device: &str, e: s7::S7Error, op: Op) -> DriverError {
    if e.is_protocol_violation() {
        return DriverError::Protocol {
            device: device.to_string(),
            reason: e.to_string(),
        };
    }
    match op {
        Op::Connect => connect_error(device, e),
        Op::Read => read_error(device, e),
        Op::Write => write_error(device, e),
    }
}

fn write_error(device: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError::Write {
        device: device.to_string(),
        reason: e.to_string(),
    }
}

fn read_error(device: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError::Read {
        device: device.to_string(),
        reason: e.to_string(),
    }
}

/// A machine's reading in a tag's datatype.
fn machine_value(r: machine::Reading, dt: DataType) -> Result<Value, String> {
    let v = match r {
        machine::Reading::Num(x) if dt == DataType::Boolean => Value::Boolean(x != 0.0),
        machine::Reading::Num(x) => Value::Double(x),
        machine::Reading::Bool(b) if dt == DataType::Boolean => Value::Boolean(b),
        machine::Reading::Bool(b) => Value::Double(f64::from(u8::from(b))),
        machine::Reading::Text(s) => Value::String(s.to_string()),
    };
    match (&v, dt) {
        (Value::Double(x), dt) if dt.is_numeric() && !matches!(dt, DataType::Float | DataType::Double) => {
            int_value(*x as i128, dt).ok_or_else(|| format!("{x} does not fit a {dt} tag"))
        }
        _ => v
            .in_datatype(dt)
            .ok_or_else(|| format!("a machine output cannot be held by a {dt} tag")),
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
    /// A value written to a configured tag, which it then holds (as a PLC
    /// holds a setpoint) instead of following its signal.
    held: Vec<Option<Value>>,
    /// The device's simulated machine, read by `machine(…)` tags.
    machine: Option<Box<machine::MachineSim>>,
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
        // The configured tags' specs, then one shared by every generated tag.
        let configured = d.tags.len().min(specs.len());
        let signal = |t: &TagSpec| match &t.address {
            TagAddress::Sim(s) => s.clone(),
            _ => const_zero(),
        };
        let tags = specs[..configured]
            .iter()
            .map(|t| SimTag::new(signal(t), t.datatype))
            .collect();
        let generated = specs[configured..]
            .first()
            .map(|g| (SimTag::new(signal(g), g.datatype), vec![0.0; d.sim.generate as usize]));
        SimDriver {
            device: d.name.clone(),
            held: vec![None; configured],
            machine: d.sim.machine.clone().map(|p| Box::new(machine::MachineSim::new(p))),
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
                    if let Some(v) = &self.held[i] {
                        return Ok(v.clone());
                    }
                    if let (sim::Shape::Machine(o), Some(m)) = (&self.tags[i].signal.shape, self.machine.as_mut()) {
                        m.advance(t);
                        return machine_value(m.read(*o), self.tags[i].datatype).map_err(TagError);
                    }
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

    /// Writes a configured tag: it holds `value`, stored in the tag's own
    /// datatype, from then on. Fails as a PLC would: while unreachable (the
    /// connection), or for a value the tag's type cannot hold (the tag).
    fn write(&mut self, index: usize, value: &Value) -> Result<Result<(), String>, DriverError> {
        self.check_reachable().map_err(|e| write_error(&self.device, e))?;
        let Some(tag) = self.tags.get(index) else {
            return Ok(Err(format!(
                "tag {index} is generated: only configured tags are writable"
            )));
        };
        Ok(match value.in_datatype(tag.datatype) {
            Some(v) => {
                self.held[index] = Some(v);
                Ok(())
            }
            None => Err(format!(
                "a {} value cannot be held by a {} tag",
                value.datatype(),
                tag.datatype
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim_device(extra: &str) -> DeviceConfig {
        let text = format!(
            "[node]\ngroup_id = \"g\"\nnode_id = \"n\"\n[[devices]]\nname = \"press\"\ndriver = \"sim\"\n{extra}\n\
             [[devices.tags]]\nname = \"Count\"\naddress = \"counter\"\ndatatype = \"UInt32\"\n\
             [[devices.tags]]\nname = \"Setpoint\"\naddress = \"sine(amplitude=1, offset=0, period=10s)\"\ndatatype = \"Float\"\n"
        );
        crate::config::Config::parse("t.toml", &text)
            .expect("valid")
            .devices
            .remove(0)
    }

    #[tokio::test]
    async fn the_simulator_holds_what_is_written_in_the_tags_own_datatype() {
        let d = sim_device("[devices.sim]\ngenerate = 2");
        let mut drv = Driver::for_device(&d, &poller::plan(&d).specs);
        assert_eq!(
            drv.write("press", 0, &Value::Int64(7)).await.expect("reachable"),
            Ok(())
        );
        assert_eq!(
            drv.write("press", 1, &Value::Double(2.5)).await.expect("reachable"),
            Ok(())
        );
        for _ in 0..3 {
            let got = drv.read("press", &[0, 1], 0).await.expect("read");
            assert_eq!(
                got,
                vec![Ok(Value::UInt32(7)), Ok(Value::Float(2.5))],
                "held, not the signal"
            );
        }
        let refused = |r: Result<Result<(), TagError>, DriverError>| r.expect("reachable").expect_err("refused").0;
        assert!(refused(drv.write("press", 0, &Value::Int64(-1)).await).contains("cannot be held by a UInt32 tag"));
        assert!(refused(drv.write("press", 0, &Value::String("7".into())).await).contains("a String value"));
        assert!(refused(drv.write("press", 2, &Value::Double(1.0)).await).contains("only configured tags"));
    }

    #[tokio::test]
    async fn a_simulated_machine_is_read_through_its_tags_consistently() {
        let text = "[node]\ngroup_id = \"g\"\nnode_id = \"n\"\n[[devices]]\nname = \"press\"\ndriver = \"sim\"\n\
             [devices.sim.machine]\ncycle = \"10ms\"\njitter = 0.1\nfault_every = \"0s\"\nreject_rate = 0.5\n\
             [[devices.tags]]\nname = \"Count\"\naddress = \"machine(count)\"\ndatatype = \"UInt32\"\n\
             [[devices.tags]]\nname = \"Good\"\naddress = \"machine(good)\"\ndatatype = \"UInt32\"\n\
             [[devices.tags]]\nname = \"Rejects\"\naddress = \"machine(rejects)\"\ndatatype = \"UInt32\"\n\
             [[devices.tags]]\nname = \"Running\"\naddress = \"machine(running)\"\ndatatype = \"Boolean\"\n\
             [[devices.tags]]\nname = \"State\"\naddress = \"machine(state)\"\ndatatype = \"String\"\n\
             [[devices.tags]]\nname = \"Fault\"\naddress = \"machine(fault)\"\ndatatype = \"Int16\"\n";
        let d = crate::config::Config::parse("t.toml", text)
            .expect("valid")
            .devices
            .remove(0);
        let mut drv = Driver::for_device(&d, &poller::plan(&d).specs);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let got = drv.read("press", &[0, 1, 2, 3, 4, 5], 0).await.expect("read");
        let n = |i: usize| match &got[i] {
            Ok(Value::UInt32(x)) => *x,
            other => panic!("{other:?}"),
        };
        assert!(n(0) >= 20, "about 30 cycles of 10 ms in 300 ms: {}", n(0));
        assert_eq!(n(1) + n(2), n(0), "good + rejects = count");
        assert_eq!(got[3], Ok(Value::Boolean(true)), "no faults");
        assert_eq!(got[4], Ok(Value::String("running".into())));
        assert_eq!(got[5], Ok(Value::Int16(0)));
        let again = drv.read("press", &[0], 0).await.expect("read");
        assert!(
            matches!(again[0], Ok(Value::UInt32(x)) if x >= n(0)),
            "a counter only grows"
        );
    }

    #[tokio::test]
    async fn a_write_to_an_unreachable_simulator_fails_as_a_connection_would() {
        let d = sim_device("[devices.sim]\nunreachable_every = \"1s\"\nunreachable_for = \"1s\"");
        let mut drv = Driver::for_device(&d, &poller::plan(&d).specs);
        let e = drv.write("press", 0, &Value::UInt32(1)).await.expect_err("unreachable");
        assert!(e.to_string().contains("write failed"), "{e}");
    }

    #[test]
    fn a_connection_that_fails_during_a_write_says_write_failed_not_read_failed() {
        let closed = || s7::S7Error::Closed;
        assert_eq!(
            s7_error("press", closed(), Op::Write).to_string(),
            "press: write failed: the PLC closed the connection"
        );
        assert_eq!(
            s7_error("press", closed(), Op::Read).to_string(),
            "press: read failed: the PLC closed the connection"
        );
        assert!(matches!(
            s7_error("press", closed(), Op::Connect),
            DriverError::Connect { .. }
        ));
        let oversized = s7::S7Error::Oversized {
            max: 304,
            fragments: 64,
            pdu: 240,
        };
        assert!(matches!(
            s7_error("press", oversized, Op::Write),
            DriverError::Protocol { .. }
        ));
    }
}
