//! The built-in PLC simulator: signals that change like plant values, for the
//! demo and load tests. A tag's `address` names its signal:
//!
//! | address | produces |
//! |---|---|
//! | `counter` / `counter(step=5)` | +step every scan |
//! | `ramp(min=0, max=100, period=10s)` | sawtooth |
//! | `sine(amplitude=10, offset=20, period=60s)` | sine wave |
//! | `random_walk(step=0.5, min=-100, max=100)` | bounded random walk |
//! | `toggle(period=5s)` | boolean flipping every half period |
//! | `cycle(idle|run|fault, period=6s)` | strings in turn |
//! | `const(42)` / `const(hello)` | a fixed value |
//! | `clock` | DateTime: now |
//! | `machine(count)` | the device's simulated machine (`[devices.sim.machine]`): `count`, `good`, `rejects`, `running`, `state`, `fault` |
//!
//! Any numeric signal takes `len=N` to fill an array datatype (element i is
//! phase-shifted by i). Invariant: values always fit their datatype (integers
//! are rounded and clamped), and the same seed gives the same sequence.

use thiserror::Error;

use crate::sparkplug::{DataType, Value};

/// Why the simulator refused a read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SimError {
    #[error("simulated outage ({0})")]
    Unreachable(String),
}

/// A signal shape and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Counter {
        step: f64,
    },
    Ramp {
        min: f64,
        max: f64,
        period: f64,
    },
    Sine {
        amplitude: f64,
        offset: f64,
        period: f64,
    },
    RandomWalk {
        step: f64,
        min: f64,
        max: f64,
    },
    Toggle {
        period: f64,
    },
    Cycle {
        items: Vec<String>,
        period: f64,
    },
    Const(String),
    Clock,
    /// An output of the device's simulated machine ([`super::machine`]).
    Machine(super::machine::Output),
}

/// A parsed simulator address.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub shape: Shape,
    /// Array length for array datatypes.
    pub len: Option<usize>,
}

fn seconds(v: &str) -> Result<f64, String> {
    crate::units::parse_duration(v).map(|d| d.as_secs_f64())
}

impl Signal {
    /// Parses `name(key=value, …)`.
    pub fn parse(address: &str) -> Result<Signal, String> {
        let a = address.trim();
        let (name, args) = match a.find('(') {
            Some(i) => {
                let Some(inner) = a[i + 1..].strip_suffix(')') else {
                    return Err(format!("'{address}': missing ')'"));
                };
                (a[..i].trim(), inner)
            }
            None => (a, ""),
        };
        let mut positional = Vec::new();
        let mut named = Vec::new();
        for part in args.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((k, v)) => named.push((k.trim().to_string(), v.trim().to_string())),
                None => positional.push(part.to_string()),
            }
        }
        let mut len = None;
        let mut take = |key: &str, default: f64, parse: fn(&str) -> Result<f64, String>| -> Result<f64, String> {
            match named.iter().position(|(k, _)| k == key) {
                Some(i) => {
                    let (_, v) = named.remove(i);
                    parse(&v).map_err(|e| format!("'{address}': {key}: {e}"))
                }
                None => Ok(default),
            }
        };
        let num = |v: &str| v.parse::<f64>().map_err(|_| format!("'{v}' is not a number"));
        let l = take("len", 0.0, num)?;
        if l > 0.0 {
            len = Some(l as usize);
        }
        let shape = match name {
            "counter" => Shape::Counter {
                step: take("step", 1.0, num)?,
            },
            "ramp" => Shape::Ramp {
                min: take("min", 0.0, num)?,
                max: take("max", 100.0, num)?,
                period: take("period", 10.0, seconds)?,
            },
            "sine" => Shape::Sine {
                amplitude: take("amplitude", 10.0, num)?,
                offset: take("offset", 0.0, num)?,
                period: take("period", 60.0, seconds)?,
            },
            "random_walk" => Shape::RandomWalk {
                step: take("step", 0.5, num)?,
                min: take("min", -1e6, num)?,
                max: take("max", 1e6, num)?,
            },
            "toggle" => Shape::Toggle {
                period: take("period", 10.0, seconds)?,
            },
            "cycle" => {
                let items: Vec<String> = positional
                    .drain(..)
                    .flat_map(|p| p.split('|').map(str::to_string).collect::<Vec<_>>())
                    .collect();
                if items.is_empty() {
                    return Err(format!("'{address}': cycle needs values, e.g. cycle(idle|run|fault)"));
                }
                Shape::Cycle {
                    items,
                    period: take("period", 10.0, seconds)?,
                }
            }
            "const" => {
                if positional.len() != 1 {
                    return Err(format!("'{address}': const takes one value, e.g. const(42)"));
                }
                Shape::Const(positional.remove(0))
            }
            "clock" => Shape::Clock,
            "machine" => {
                let out = positional.first().map(String::as_str).unwrap_or("");
                let o = super::machine::Output::parse(out).ok_or_else(|| {
                    format!("'{address}': machine(count), (good), (rejects), (running), (state) or (fault)")
                })?;
                positional.clear();
                Shape::Machine(o)
            }
            other => {
                return Err(format!(
                    "unknown signal '{other}'; use counter, ramp, sine, random_walk, toggle, cycle, const or clock"
                ))
            }
        };
        if let Some((k, _)) = named.first() {
            return Err(format!("'{address}': unknown parameter '{k}' for {name}"));
        }
        if !positional.is_empty() {
            return Err(format!("'{address}': {name} takes named parameters only (key=value)"));
        }
        match &shape {
            Shape::Ramp { period, .. }
            | Shape::Sine { period, .. }
            | Shape::Toggle { period }
            | Shape::Cycle { period, .. }
                if *period <= 0.0 =>
            {
                return Err(format!("'{address}': period must be positive"))
            }
            Shape::Ramp { min, max, .. } | Shape::RandomWalk { min, max, .. } if min >= max => {
                return Err(format!("'{address}': min must be below max"))
            }
            _ => {}
        }
        Ok(Signal { shape, len })
    }

    /// Whether this signal can produce `dt`.
    pub fn check_datatype(&self, dt: DataType) -> Result<(), String> {
        let is_array = matches!(dt.code(), 22..=34);
        match (&self.shape, dt) {
            (_, DataType::Bytes | DataType::DataSet | DataType::Template | DataType::File | DataType::Unknown) => {
                Err(format!("the simulator cannot produce {dt}"))
            }
            (_, _) if is_array && self.len.is_none() => Err(format!("{dt} needs len=N in the signal")),
            (Shape::Cycle { .. }, DataType::String | DataType::Text | DataType::StringArray) => Ok(()),
            (Shape::Cycle { .. }, _) => Err(format!("cycle produces strings, not {dt}")),
            (Shape::Clock, DataType::DateTime | DataType::DateTimeArray | DataType::Int64 | DataType::UInt64) => Ok(()),
            (Shape::Clock, _) => Err(format!("clock produces DateTime, not {dt}")),
            (Shape::Machine(_), _) if is_array => Err(format!("a machine output is not an array ({dt})")),
            (Shape::Machine(super::machine::Output::State), DataType::String | DataType::Text) => Ok(()),
            (Shape::Machine(super::machine::Output::State), _) => Err(format!("machine(state) is a String, not {dt}")),
            (Shape::Machine(_), dt) if !dt.is_numeric() && dt != DataType::Boolean => {
                Err(format!("a machine output is a number or a Boolean, not {dt}"))
            }
            (Shape::Const(v), DataType::Boolean) if v != "true" && v != "false" => {
                Err(format!("const({v}) is not a Boolean"))
            }
            (Shape::Const(v), dt) if dt.is_numeric() && v.parse::<f64>().is_err() => {
                Err(format!("const({v}) is not a number"))
            }
            _ => Ok(()),
        }
    }
}

pub use crate::backoff::Rng;

/// A simulated tag: its signal, datatype and running state.
#[derive(Debug, Clone)]
pub struct SimTag {
    /// Shared: 100k generated tags have one signal.
    pub signal: std::sync::Arc<Signal>,
    pub datatype: DataType,
    /// Running state (counter, random walk).
    pub state: f64,
}

impl SimTag {
    pub fn new(signal: std::sync::Arc<Signal>, datatype: DataType) -> SimTag {
        SimTag {
            signal,
            datatype,
            state: 0.0,
        }
    }

    fn scalar(&mut self, t: f64, phase: f64, rng: &mut Rng, scan: bool) -> f64 {
        use std::f64::consts::TAU;
        match &self.signal.shape {
            Shape::Counter { step } => {
                if scan {
                    self.state += step;
                }
                self.state + phase
            }
            Shape::Ramp { min, max, period } => min + (max - min) * (((t + phase) / period).fract()),
            Shape::Sine {
                amplitude,
                offset,
                period,
            } => offset + amplitude * (TAU * (t + phase) / period).sin(),
            Shape::RandomWalk { step, min, max } => {
                if scan {
                    self.state = (self.state + step * rng.unit()).clamp(*min, *max);
                }
                self.state + phase
            }
            Shape::Toggle { period } => {
                if ((t + phase) / (period / 2.0)).floor() as i64 % 2 == 0 {
                    0.0
                } else {
                    1.0
                }
            }
            Shape::Const(v) => v.parse().unwrap_or(if v == "true" { 1.0 } else { 0.0 }),
            Shape::Cycle { .. } | Shape::Clock | Shape::Machine(_) => 0.0,
        }
    }

    fn text(&self, t: f64, i: usize) -> String {
        match &self.signal.shape {
            Shape::Cycle { items, period } => items[((t / period) as usize + i) % items.len()].clone(),
            Shape::Const(v) => v.clone(),
            _ => String::new(),
        }
    }

    /// The value at `t` seconds since start, `now_ms` wall clock; advances state.
    pub fn read(&mut self, t: f64, now_ms: u64, rng: &mut Rng) -> Value {
        let dt = self.datatype;
        let n = self.signal.len.unwrap_or(1);
        let mut nums = Vec::with_capacity(n);
        for i in 0..n {
            nums.push(self.scalar(t, i as f64, rng, i == 0));
        }
        let x = nums[0];
        let clamp = |v: f64, lo: f64, hi: f64| v.round().clamp(lo, hi);
        match dt {
            DataType::Int8 => Value::Int8(clamp(x, -128.0, 127.0) as i8),
            DataType::Int16 => Value::Int16(clamp(x, -32768.0, 32767.0) as i16),
            DataType::Int32 => Value::Int32(clamp(x, i32::MIN.into(), i32::MAX.into()) as i32),
            DataType::Int64 if matches!(self.signal.shape, Shape::Clock) => Value::Int64(now_ms as i64),
            DataType::Int64 => Value::Int64(clamp(x, -9.2e18, 9.2e18) as i64),
            DataType::UInt8 => Value::UInt8(clamp(x, 0.0, 255.0) as u8),
            DataType::UInt16 => Value::UInt16(clamp(x, 0.0, 65535.0) as u16),
            DataType::UInt32 => Value::UInt32(clamp(x, 0.0, u32::MAX.into()) as u32),
            DataType::UInt64 if matches!(self.signal.shape, Shape::Clock) => Value::UInt64(now_ms),
            DataType::UInt64 => Value::UInt64(clamp(x, 0.0, 1.8e19) as u64),
            DataType::Float => Value::Float(x as f32),
            DataType::Double => Value::Double(x),
            DataType::Boolean => Value::Boolean(x > 0.5),
            DataType::String => Value::String(self.text_or_number(t, 0, x)),
            DataType::Text => Value::Text(self.text_or_number(t, 0, x)),
            DataType::Uuid => Value::Uuid(format!("00000000-0000-4000-8000-{:012x}", x.abs() as u64)),
            DataType::DateTime => Value::DateTime(now_ms),
            DataType::Int8Array => Value::Int8Array(nums.iter().map(|v| clamp(*v, -128.0, 127.0) as i8).collect()),
            DataType::Int16Array => {
                Value::Int16Array(nums.iter().map(|v| clamp(*v, -32768.0, 32767.0) as i16).collect())
            }
            DataType::Int32Array => Value::Int32Array(nums.iter().map(|v| clamp(*v, -2.1e9, 2.1e9) as i32).collect()),
            DataType::Int64Array => Value::Int64Array(nums.iter().map(|v| v.round() as i64).collect()),
            DataType::UInt8Array => Value::UInt8Array(nums.iter().map(|v| clamp(*v, 0.0, 255.0) as u8).collect()),
            DataType::UInt16Array => Value::UInt16Array(nums.iter().map(|v| clamp(*v, 0.0, 65535.0) as u16).collect()),
            DataType::UInt32Array => Value::UInt32Array(nums.iter().map(|v| clamp(*v, 0.0, 4.2e9) as u32).collect()),
            DataType::UInt64Array => Value::UInt64Array(nums.iter().map(|v| v.round().max(0.0) as u64).collect()),
            DataType::FloatArray => Value::FloatArray(nums.iter().map(|v| *v as f32).collect()),
            DataType::DoubleArray => Value::DoubleArray(nums),
            DataType::BooleanArray => Value::BooleanArray(nums.iter().map(|v| *v > 0.5).collect()),
            DataType::StringArray => Value::StringArray((0..n).map(|i| self.text_or_number(t, i, nums[i])).collect()),
            DataType::DateTimeArray => Value::DateTimeArray(vec![now_ms; n]),
            // Refused by `check_datatype` at config time.
            DataType::Unknown
            | DataType::DataSet
            | DataType::Bytes
            | DataType::File
            | DataType::Template
            | DataType::PropertySet
            | DataType::PropertySetList => Value::Bytes(Vec::new()),
        }
    }

    fn text_or_number(&self, t: f64, i: usize, x: f64) -> String {
        match self.signal.shape {
            Shape::Cycle { .. } | Shape::Const(_) => self.text(t, i),
            _ => format!("{x:.3}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_defaults_and_named_parameters() {
        assert_eq!(
            Signal::parse("counter").expect("ok").shape,
            Shape::Counter { step: 1.0 }
        );
        assert_eq!(
            Signal::parse("sine(amplitude=5, period=2s)").expect("ok").shape,
            Shape::Sine {
                amplitude: 5.0,
                offset: 0.0,
                period: 2.0
            }
        );
        assert_eq!(Signal::parse("ramp(len=4)").expect("ok").len, Some(4));
        assert_eq!(
            Signal::parse("cycle(idle|run, period=1s)").expect("ok").shape,
            Shape::Cycle {
                items: vec!["idle".into(), "run".into()],
                period: 1.0
            }
        );
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        assert!(Signal::parse("wobble")
            .expect_err("unknown")
            .starts_with("unknown signal 'wobble'"));
        assert!(Signal::parse("sine(speed=3)")
            .expect_err("param")
            .contains("unknown parameter 'speed'"));
        assert!(Signal::parse("ramp(min=5, max=1)")
            .expect_err("range")
            .contains("min must be below max"));
        assert!(Signal::parse("sine(period=-1s)").is_err());
        assert!(Signal::parse("sine(").expect_err("paren").contains("missing ')'"));
    }

    #[test]
    fn values_fit_their_datatype_and_arrays_have_their_length() {
        let mut rng = Rng::new(1);
        let mut t = SimTag::new(
            std::sync::Arc::new(Signal::parse("ramp(min=0, max=1000, period=10s)").expect("ok")),
            DataType::Int8,
        );
        assert_eq!(t.read(9.99, 0, &mut rng), Value::Int8(127));
        let mut a = SimTag::new(
            std::sync::Arc::new(Signal::parse("sine(len=8)").expect("ok")),
            DataType::FloatArray,
        );
        assert!(matches!(a.read(1.0, 0, &mut rng), Value::FloatArray(v) if v.len() == 8));
        let mut c = SimTag::new(
            std::sync::Arc::new(Signal::parse("counter(step=2)").expect("ok")),
            DataType::UInt32,
        );
        assert_eq!(
            (c.read(0.0, 0, &mut rng), c.read(0.1, 0, &mut rng)),
            (Value::UInt32(2), Value::UInt32(4))
        );
        let mut s = SimTag::new(
            std::sync::Arc::new(Signal::parse("cycle(a|b)").expect("ok")),
            DataType::String,
        );
        assert_eq!(s.read(0.0, 0, &mut rng), Value::String("a".into()));
        assert!(Signal::parse("cycle(a|b)")
            .expect("ok")
            .check_datatype(DataType::Float)
            .is_err());
        assert!(Signal::parse("sine")
            .expect("ok")
            .check_datatype(DataType::FloatArray)
            .is_err());
    }

    #[test]
    fn the_same_seed_gives_the_same_random_walk() {
        let run = || {
            let mut rng = Rng::new(42);
            let mut t = SimTag::new(
                std::sync::Arc::new(Signal::parse("random_walk").expect("ok")),
                DataType::Double,
            );
            (0..5).map(|i| t.read(f64::from(i), 0, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
