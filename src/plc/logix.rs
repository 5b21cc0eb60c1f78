//! Allen-Bradley Logix (ControlLogix, CompactLogix, GuardLogix) over
//! EtherNet/IP, on `rust-ethernet-ip` behind this wrapper.
//!
//! What the wrapper adds (docs/CRATES.md): our own timeouts (the crate hard-codes
//! 5/10 s; the poller bounds every call with the device `timeout`), the
//! two-layer result (a CIP status for one tag is that tag's BAD quality; an
//! I/O error drops the connection), Sparkplug type conversion with range
//! checks, and type-preserving writes (the tag is read first so the value is
//! written as the controller's own type).
//!
//! Addresses: controller tags `Counter`, program tags `Program:Main.Speed`,
//! UDT members `Motor.Speed`, array elements `Temp[3]`, array ranges
//! `Temp[0]{10}` (10 elements from index 0, as in Kepware), and bits of an
//! integer `Flags.5`.
//!
//! Invariants: tags are read in Multiple Service Packets of at most
//! `batch_size`; a tag the controller does not have never fails its batch
//! neighbours; no call outlives the device timeout (the poller's).
//! Not supported by the crate and so not here: connected messaging (Forward
//! Open), PCCC (MicroLogix, SLC 500, PLC-5), whole-UDT writes.

use thiserror::Error;

use rust_ethernet_ip::{EipClient, EtherNetIpError, PlcValue, RoutePath};

use crate::sparkplug::{DataType, Value};

/// A Logix tag address that cannot be used, or a connection failure.
#[derive(Debug, Error)]
pub enum LogixError {
    #[error("'{addr}' is not a Logix tag: {reason}")]
    Address { addr: String, reason: String },
    #[error("{0}")]
    Connection(String),
}

/// A parsed Logix tag reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogixTag {
    /// A scalar (or one element, or a UDT member) read by name.
    Scalar(String),
    /// Bit `bit` of an integer tag.
    Bit { base: String, bit: u8 },
    /// `count` elements of array `base` from `start`.
    Range { base: String, start: u32, count: u32 },
}

impl LogixTag {
    /// Parses `addr` for a metric of Sparkplug type `dt`.
    pub fn parse(addr: &str, dt: DataType) -> Result<LogixTag, LogixError> {
        let bad = |reason: &str| LogixError::Address {
            addr: addr.to_string(),
            reason: reason.to_string(),
        };
        let a = addr.trim();
        if a.is_empty() {
            return Err(bad("empty"));
        }
        let (path, count) = match a.strip_suffix('}').and_then(|x| x.rsplit_once('{')) {
            Some((p, n)) => (
                p.trim(),
                Some(
                    n.trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("{N} needs a positive element count"))?,
                ),
            ),
            None => (a, None),
        };
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "_:.[],".contains(c);
        if !path.chars().all(ok_char) || path.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            return Err(bad("tag names use letters, digits, '_', ':', '.', '[i]'"));
        }
        if path.starts_with("Program:") && !path.contains('.') {
            return Err(bad("a program tag is written Program:<program>.<tag>"));
        }
        if let Some(n) = count {
            if !dt.is_array() {
                return Err(bad(&format!(
                    "{{{n}}} reads an array: the datatype must be an array type, not {dt}"
                )));
            }
            let (base, start) = match path.strip_suffix(']').and_then(|x| x.rsplit_once('[')) {
                Some((b, i)) => (
                    b,
                    i.parse::<u32>()
                        .map_err(|_| bad("a range starts at one index, e.g. Temp[0]{10}"))?,
                ),
                None => (path, 0),
            };
            return Ok(LogixTag::Range {
                base: base.to_string(),
                start,
                count: n,
            });
        }
        if dt.is_array() {
            return Err(bad(&format!("{dt} needs an element count, e.g. {path}[0]{{10}}")));
        }
        if let Some((base, bit)) = path.rsplit_once('.') {
            if let Ok(bit) = bit.parse::<u8>() {
                if dt != DataType::Boolean {
                    return Err(bad(&format!("a bit reference ({path}) is a Boolean, not {dt}")));
                }
                if bit > 63 {
                    return Err(bad("bit numbers go up to 63"));
                }
                return Ok(LogixTag::Bit {
                    base: base.to_string(),
                    bit,
                });
            }
        }
        if !is_supported(dt) {
            return Err(bad(&format!("{dt} is not read from Logix")));
        }
        Ok(LogixTag::Scalar(path.to_string()))
    }
}

fn is_supported(dt: DataType) -> bool {
    dt.is_numeric() || matches!(dt, DataType::Boolean | DataType::String | DataType::Text)
}

/// Converts what the controller returned into the metric's Sparkplug type.
pub fn to_value(v: PlcValue, dt: DataType) -> Result<Value, String> {
    let int = |i: i128| -> Result<Value, String> {
        match dt {
            DataType::Float => Ok(Value::Float(i as f32)),
            DataType::Double => Ok(Value::Double(i as f64)),
            DataType::Boolean => Ok(Value::Boolean(i != 0)),
            _ if dt.is_numeric() => super::int_value(i, dt).ok_or_else(|| format!("{i} does not fit {dt}")),
            _ => Err(format!("an integer cannot be reported as {dt}")),
        }
    };
    match v {
        PlcValue::Bool(b) => match dt {
            DataType::Boolean => Ok(Value::Boolean(b)),
            _ => int(b.into()),
        },
        PlcValue::Sint(x) => int(x.into()),
        PlcValue::Int(x) => int(x.into()),
        PlcValue::Dint(x) => int(x.into()),
        PlcValue::Lint(x) => int(x.into()),
        PlcValue::Usint(x) => int(x.into()),
        PlcValue::Uint(x) => int(x.into()),
        PlcValue::Udint(x) => int(x.into()),
        PlcValue::Ulint(x) => int(x.into()),
        PlcValue::Real(f) => float(f.into(), dt, int),
        PlcValue::Lreal(f) => float(f, dt, int),
        PlcValue::String(s) => match dt {
            DataType::String => Ok(Value::String(s)),
            DataType::Text => Ok(Value::Text(s)),
            _ => Err(format!("a STRING cannot be reported as {dt}")),
        },
        PlcValue::Udt(_) => Err("a whole UDT is not one metric: address its members (Tag.Member)".into()),
    }
}

fn float(f: f64, dt: DataType, int: impl Fn(i128) -> Result<Value, String>) -> Result<Value, String> {
    match dt {
        DataType::Float => Ok(Value::Float(f as f32)),
        DataType::Double => Ok(Value::Double(f)),
        _ if f.fract() == 0.0 && f.is_finite() => int(f as i128),
        _ => Err(format!("{f} does not fit {dt}")),
    }
}

/// `value` as a whole number, for an integer tag.
fn whole(value: &Value) -> Result<i128, String> {
    Ok(match *value {
        Value::Boolean(b) => b.into(),
        Value::Int8(x) => x.into(),
        Value::Int16(x) => x.into(),
        Value::Int32(x) => x.into(),
        Value::Int64(x) => x.into(),
        Value::UInt8(x) => x.into(),
        Value::UInt16(x) => x.into(),
        Value::UInt32(x) => x.into(),
        Value::UInt64(x) => x.into(),
        Value::Float(f) if f.fract() == 0.0 && f.is_finite() => f as i128,
        Value::Double(f) if f.fract() == 0.0 && f.is_finite() => f as i128,
        ref other => return Err(format!("an integer tag takes a whole number, not {other:?}")),
    })
}

fn narrow<T: TryFrom<i128>>(value: &Value) -> Result<T, String> {
    let n = whole(value)?;
    T::try_from(n).map_err(|_| format!("{n} is out of range for the tag's type"))
}

/// `value` as the controller's type `like` (taken from a read of the tag).
pub fn to_plc(value: &Value, like: &PlcValue) -> Result<PlcValue, String> {
    Ok(match like {
        PlcValue::Bool(_) => match value {
            Value::Boolean(b) => PlcValue::Bool(*b),
            other => return Err(format!("BOOL takes a Boolean, not {}", other.datatype())),
        },
        PlcValue::Sint(_) => PlcValue::Sint(narrow(value)?),
        PlcValue::Int(_) => PlcValue::Int(narrow(value)?),
        PlcValue::Dint(_) => PlcValue::Dint(narrow(value)?),
        PlcValue::Lint(_) => PlcValue::Lint(narrow(value)?),
        PlcValue::Usint(_) => PlcValue::Usint(narrow(value)?),
        PlcValue::Uint(_) => PlcValue::Uint(narrow(value)?),
        PlcValue::Udint(_) => PlcValue::Udint(narrow(value)?),
        PlcValue::Ulint(_) => PlcValue::Ulint(narrow(value)?),
        PlcValue::Real(_) => PlcValue::Real(value.as_f64().ok_or("REAL takes a number")? as f32),
        PlcValue::Lreal(_) => PlcValue::Lreal(value.as_f64().ok_or("LREAL takes a number")?),
        PlcValue::String(_) => match value {
            Value::String(s) | Value::Text(s) => PlcValue::String(s.clone()),
            other => return Err(format!("STRING takes a String, not {}", other.datatype())),
        },
        PlcValue::Udt(_) => return Err("whole-UDT writes are not supported: write its members".into()),
    })
}

fn array_value(items: Vec<PlcValue>, dt: DataType) -> Result<Value, String> {
    let element = dt.element().ok_or_else(|| format!("{dt} is not an array"))?;
    let values = items
        .into_iter()
        .map(|v| to_value(v, element))
        .collect::<Result<Vec<Value>, String>>()?;
    super::array_value(values, dt)
}

/// The route to a ControlLogix CPU: out of the Ethernet module's backplane
/// port (1) to the CPU's slot.
pub fn backplane(slot: u8) -> RoutePath {
    RoutePath::new().add_backplane(1, slot)
}

/// Whether an error of the crate means the connection is unusable (vs. one tag).
fn is_connection_error(e: &EtherNetIpError) -> bool {
    matches!(
        e,
        EtherNetIpError::Io(_)
            | EtherNetIpError::Timeout(_)
            | EtherNetIpError::Connection(_)
            | EtherNetIpError::ConnectionLost(_)
    )
}

/// The Logix driver of one device.
pub struct LogixDriver {
    addr: String,
    slot: Option<u8>,
    batch_size: usize,
    tags: Vec<(Result<LogixTag, String>, DataType)>,
    client: Option<EipClient>,
}

impl LogixDriver {
    pub fn new(
        addr: String,
        slot: Option<u8>,
        batch_size: usize,
        tags: impl IntoIterator<Item = (String, DataType)>,
    ) -> LogixDriver {
        let tags = tags
            .into_iter()
            .map(|(a, dt)| (LogixTag::parse(&a, dt).map_err(|e| e.to_string()), dt));
        LogixDriver::with_parsed(addr, slot, batch_size, tags)
    }

    /// A driver for tags the configuration already parsed.
    pub fn with_parsed(
        addr: String,
        slot: Option<u8>,
        batch_size: usize,
        tags: impl IntoIterator<Item = (Result<LogixTag, String>, DataType)>,
    ) -> LogixDriver {
        let tags = tags.into_iter().collect();
        LogixDriver {
            addr,
            slot,
            batch_size: batch_size.max(1),
            tags,
            client: None,
        }
    }

    /// Registers a session (through the backplane to `slot` when set).
    pub async fn connect(&mut self) -> Result<(), LogixError> {
        self.client = None;
        let c = match self.slot {
            Some(slot) => EipClient::with_route_path(&self.addr, backplane(slot)).await,
            None => EipClient::connect(&self.addr).await,
        };
        self.client = Some(c.map_err(|e| LogixError::Connection(format!("{}: {e}", self.addr)))?);
        Ok(())
    }

    fn client(&mut self) -> Result<&mut EipClient, LogixError> {
        self.client
            .as_mut()
            .ok_or_else(|| LogixError::Connection("not connected".into()))
    }

    fn lost(&mut self, e: EtherNetIpError) -> LogixError {
        self.client = None;
        LogixError::Connection(e.to_string())
    }

    /// Reads tags at `indices`: outer error = connection, inner = per tag.
    pub async fn read(&mut self, indices: &[usize]) -> Result<Vec<Result<Value, String>>, LogixError> {
        if self.client.is_none() {
            self.connect().await?;
        }
        let mut out: Vec<Option<Result<Value, String>>> = vec![None; indices.len()];
        let mut scalars: Vec<(usize, String)> = Vec::new();
        for (k, &i) in indices.iter().enumerate() {
            match self.tags.get(i) {
                Some((Ok(LogixTag::Scalar(name)), _)) => scalars.push((k, name.clone())),
                Some((Ok(_), _)) => {}
                Some((Err(e), _)) => out[k] = Some(Err(e.clone())),
                None => out[k] = Some(Err(format!("no tag {i}"))),
            }
        }
        for chunk in scalars.chunks(self.batch_size) {
            let names: Vec<&str> = chunk.iter().map(|(_, n)| n.as_str()).collect();
            let client = self.client()?;
            let results = match client.read_tags_batch(&names).await {
                Ok(r) => r,
                Err(e) if is_connection_error(&e) => return Err(self.lost(e)),
                Err(e) => {
                    // The whole packet was refused: read its tags one by one so only the bad one is BAD.
                    let mut single = Vec::with_capacity(names.len());
                    for n in &names {
                        match client.read_tag(n).await {
                            Ok(v) => single.push((n.to_string(), Ok(v))),
                            Err(e2) if is_connection_error(&e2) => return Err(self.lost(e2)),
                            Err(e2) => single.push((n.to_string(), Err(e2.to_string()))),
                        }
                    }
                    tracing::debug!(error = %e, "Logix batch refused; read one by one");
                    single
                        .into_iter()
                        .map(|(n, r)| (n, r.map_err(rust_ethernet_ip::BatchError::Other)))
                        .collect()
                }
            };
            // The crate reports a broken connection inside each tag's result.
            let broken = results.iter().find_map(|(_, r)| match r {
                Err(e @ (rust_ethernet_ip::BatchError::NetworkError(_) | rust_ethernet_ip::BatchError::Timeout)) => {
                    Some(e.to_string())
                }
                _ => None,
            });
            if let Some(e) = broken {
                self.client = None;
                return Err(LogixError::Connection(e));
            }
            for ((k, _), (_, r)) in chunk.iter().zip(results) {
                let dt = self.tags[indices[*k]].1;
                out[*k] = Some(match r {
                    Ok(v) => to_value(v, dt),
                    Err(e) => Err(e.to_string()),
                });
            }
        }
        for (k, &i) in indices.iter().enumerate() {
            if out[k].is_some() {
                continue;
            }
            let (tag, dt) = match &self.tags[i] {
                (Ok(t), dt) => (t.clone(), *dt),
                (Err(e), _) => {
                    out[k] = Some(Err(e.clone()));
                    continue;
                }
            };
            let client = self.client()?;
            // Outer: the controller's answer; inner: its conversion to the metric's type.
            let r = match &tag {
                LogixTag::Bit { base, bit } => client.read_bit(base, *bit).await.map(|b| Ok(Value::Boolean(b))),
                LogixTag::Range { base, start, count } => client
                    .read_array_range(base, *start, *count)
                    .await
                    .map(|items| array_value(items, dt)),
                LogixTag::Scalar(_) => unreachable!("scalars were read in batches"),
            };
            out[k] = Some(match r {
                Ok(v) => v,
                Err(e) if is_connection_error(&e) => return Err(self.lost(e)),
                Err(e) => Err(e.to_string()),
            });
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err("not read".into())))
            .collect())
    }

    /// Writes `value` to tag `index` as the controller's own type.
    pub async fn write(&mut self, index: usize, value: &Value) -> Result<Result<(), String>, LogixError> {
        let Some((Ok(tag), _)) = self.tags.get(index).cloned() else {
            return Ok(Err(format!("tag {index} has no usable Logix address")));
        };
        if self.client.is_none() {
            self.connect().await?;
        }
        let client = self.client()?;
        let r = match &tag {
            LogixTag::Bit { base, bit } => match value {
                Value::Boolean(b) => client.write_bit(base, *bit, *b).await,
                other => return Ok(Err(format!("a bit takes a Boolean, not {}", other.datatype()))),
            },
            LogixTag::Scalar(name) => {
                let current = match client.read_tag(name).await {
                    Ok(v) => v,
                    Err(e) if is_connection_error(&e) => return Err(self.lost(e)),
                    Err(e) => return Ok(Err(e.to_string())),
                };
                let v = match to_plc(value, &current) {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e)),
                };
                client.write_tag(name, v).await
            }
            LogixTag::Range { .. } => return Ok(Err("array ranges are written element by element (Tag[i])".into())),
        };
        match r {
            Ok(()) => Ok(Ok(())),
            Err(e) if is_connection_error(&e) => Err(self.lost(e)),
            Err(e) => Ok(Err(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logix_addresses_parse_by_form() {
        let p = |s: &str, dt| LogixTag::parse(s, dt).unwrap();
        assert_eq!(p("Counter", DataType::Int32), LogixTag::Scalar("Counter".into()));
        assert_eq!(
            p("Program:Main.Speed", DataType::Float),
            LogixTag::Scalar("Program:Main.Speed".into())
        );
        assert_eq!(p("Temp[3]", DataType::Float), LogixTag::Scalar("Temp[3]".into()));
        assert_eq!(
            p("Motor.Speed", DataType::Float),
            LogixTag::Scalar("Motor.Speed".into())
        );
        assert_eq!(
            p("Flags.5", DataType::Boolean),
            LogixTag::Bit {
                base: "Flags".into(),
                bit: 5
            }
        );
        assert_eq!(
            p("Temp[2]{10}", DataType::FloatArray),
            LogixTag::Range {
                base: "Temp".into(),
                start: 2,
                count: 10
            }
        );
    }

    #[test]
    fn bad_logix_addresses_say_what_to_write() {
        let e = |s: &str, dt| LogixTag::parse(s, dt).unwrap_err().to_string();
        assert!(e("Temp{10}", DataType::Float).contains("must be an array type"));
        assert!(e("Temp", DataType::FloatArray).contains("needs an element count"));
        assert!(e("Flags.5", DataType::Int32).contains("is a Boolean"));
        assert!(e("Program:Main", DataType::Int32).contains("Program:<program>.<tag>"));
        assert!(e("bad name", DataType::Int32).contains("tag names use"));
        assert!(e("T{0}", DataType::FloatArray).contains("positive element count"));
    }

    #[test]
    fn the_route_to_a_chassis_slot_is_port_1_then_the_slot() {
        // CIP port segment: port 1 (backplane), link address = slot.
        assert_eq!(backplane(2).to_cip_bytes(), vec![0x01, 0x02]);
        assert_eq!(backplane(0).to_cip_bytes(), vec![0x01, 0x00]);
    }

    #[test]
    fn values_convert_with_range_checks() {
        assert_eq!(to_value(PlcValue::Dint(-5), DataType::Int32), Ok(Value::Int32(-5)));
        assert_eq!(to_value(PlcValue::Real(1.5), DataType::Double), Ok(Value::Double(1.5)));
        assert!(to_value(PlcValue::Dint(70_000), DataType::Int16).is_err());
        assert_eq!(to_plc(&Value::Int32(7), &PlcValue::Int(0)), Ok(PlcValue::Int(7)));
        assert!(to_plc(&Value::Int32(70_000), &PlcValue::Int(0)).is_err());
        assert_eq!(
            to_plc(&Value::Float(2.5), &PlcValue::Real(0.0)),
            Ok(PlcValue::Real(2.5))
        );
    }
}
