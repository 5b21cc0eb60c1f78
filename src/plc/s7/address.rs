//! S7 addresses as technicians type them in TIA Portal / STEP 7, and the
//! conversion between PLC bytes and Sparkplug values.
//!
//! Accepted (case-insensitive): `DB1.DBX0.0`, `DB1.DBB2`, `DB1.DBW2`,
//! `DB1.DBD4`, `MW10`, `M0.1`, `MB3`, `MD4`, `I0.1`/`E0.1`, `IB0`, `IW2`,
//! `Q1.7`/`A1.7`, `QB1`, `T5`, `C3`/`Z3`, each with an optional type hint
//! `:TYPE` and an array count `:TYPE[N]` (`DB5.DBD0:REAL`, `DB1.DBW0:INT[4]`,
//! `DB1.DBB10:STRING[20]`, where `[N]` is the string's declared length as in
//! TIA). Without a hint the type follows the width letter and the tag's
//! Sparkplug datatype (`DBD` + Float is REAL, `DBD` + Int32 is DINT, `DBW` +
//! UInt16 is WORD, ...).
//!
//! Invariants:
//! - A parsed address knows its exact byte span (`byte`, `len`), so the read
//!   planner never guesses sizes; a BOOL occupies its byte, its bit is `bit`.
//! - Every S7 value decodes big-endian, as the CPU stores it.
//! - A value that does not fit the tag's Sparkplug datatype is a per-tag error
//!   (BAD quality), never a silent wrap.

use thiserror::Error;

use crate::sparkplug::{DataType, Value};

/// An address that cannot be used, with what to type instead.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddressError {
    #[error("'{0}' is not an S7 address (examples: DB1.DBX0.0, DB1.DBW2, DB5.DBD0:REAL, MW10, I0.1, Q1.7, T5, C3)")]
    Syntax(String),
    #[error("'{addr}': {reason}")]
    Invalid { addr: String, reason: String },
}

/// A memory area of the CPU, with its S7ANY area code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Area {
    Inputs,
    Outputs,
    Merker,
    Db(u16),
    Timers,
    Counters,
}

impl Area {
    /// The S7ANY area byte.
    pub fn code(self) -> u8 {
        match self {
            Area::Inputs => 0x81,
            Area::Outputs => 0x82,
            Area::Merker => 0x83,
            Area::Db(_) => 0x84,
            Area::Counters => 0x1C,
            Area::Timers => 0x1D,
        }
    }

    /// The DB number in the S7ANY item (0 outside DBs).
    pub fn db(self) -> u16 {
        match self {
            Area::Db(n) => n,
            _ => 0,
        }
    }

    /// Timers and counters are addressed by number, two bytes each, with
    /// their own transport size.
    pub fn is_timer_or_counter(self) -> bool {
        matches!(self, Area::Timers | Area::Counters)
    }
}

impl std::fmt::Display for Area {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Area::Inputs => f.write_str("I"),
            Area::Outputs => f.write_str("Q"),
            Area::Merker => f.write_str("M"),
            Area::Db(n) => write!(f, "DB{n}"),
            Area::Timers => f.write_str("T"),
            Area::Counters => f.write_str("C"),
        }
    }
}

/// The PLC-side type of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S7Type {
    Bool,
    Byte,
    Word,
    Dword,
    Lword,
    Sint,
    Usint,
    Int,
    Uint,
    Dint,
    Udint,
    Lint,
    Ulint,
    Real,
    Lreal,
    Char,
    /// STRING[n]: a max-length byte, a current-length byte, n characters.
    String(u8),
    /// DATE_AND_TIME: 8 BCD bytes.
    DateAndTime,
    /// TIME: signed milliseconds.
    Time,
    /// DATE: days since 1990-01-01.
    Date,
    /// A timer or counter word (BCD-coded count or time value).
    TimerCounter,
}

impl S7Type {
    /// Bytes one element occupies in the PLC (a BOOL occupies its byte).
    pub fn size(self) -> usize {
        match self {
            S7Type::Bool | S7Type::Byte | S7Type::Sint | S7Type::Usint | S7Type::Char => 1,
            S7Type::Word | S7Type::Int | S7Type::Uint | S7Type::Date | S7Type::TimerCounter => 2,
            S7Type::Dword | S7Type::Dint | S7Type::Udint | S7Type::Real | S7Type::Time => 4,
            S7Type::Lword | S7Type::Lint | S7Type::Ulint | S7Type::Lreal | S7Type::DateAndTime => 8,
            S7Type::String(n) => n as usize + 2,
        }
    }

    fn parse(s: &str) -> Option<S7Type> {
        Some(match s {
            "BOOL" => S7Type::Bool,
            "BYTE" => S7Type::Byte,
            "WORD" => S7Type::Word,
            "DWORD" => S7Type::Dword,
            "LWORD" => S7Type::Lword,
            "SINT" => S7Type::Sint,
            "USINT" => S7Type::Usint,
            "INT" => S7Type::Int,
            "UINT" => S7Type::Uint,
            "DINT" => S7Type::Dint,
            "UDINT" => S7Type::Udint,
            "LINT" => S7Type::Lint,
            "ULINT" => S7Type::Ulint,
            "REAL" => S7Type::Real,
            "LREAL" => S7Type::Lreal,
            "CHAR" => S7Type::Char,
            "STRING" => S7Type::String(254),
            "DT" | "DATE_AND_TIME" => S7Type::DateAndTime,
            "TIME" => S7Type::Time,
            "DATE" => S7Type::Date,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            S7Type::Bool => "BOOL",
            S7Type::Byte => "BYTE",
            S7Type::Word => "WORD",
            S7Type::Dword => "DWORD",
            S7Type::Lword => "LWORD",
            S7Type::Sint => "SINT",
            S7Type::Usint => "USINT",
            S7Type::Int => "INT",
            S7Type::Uint => "UINT",
            S7Type::Dint => "DINT",
            S7Type::Udint => "UDINT",
            S7Type::Lint => "LINT",
            S7Type::Ulint => "ULINT",
            S7Type::Real => "REAL",
            S7Type::Lreal => "LREAL",
            S7Type::Char => "CHAR",
            S7Type::String(_) => "STRING",
            S7Type::DateAndTime => "DATE_AND_TIME",
            S7Type::Time => "TIME",
            S7Type::Date => "DATE",
            S7Type::TimerCounter => "timer/counter word",
        }
    }

    fn is_numeric(self) -> bool {
        !matches!(
            self,
            S7Type::Bool | S7Type::Char | S7Type::String(_) | S7Type::DateAndTime | S7Type::Date
        )
    }
}

/// A parsed S7 address: where the bytes are and how to read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S7Address {
    pub area: Area,
    /// First byte (for timers and counters: the timer/counter number).
    pub byte: u32,
    /// Bit within `byte`, for BOOL.
    pub bit: u8,
    pub ty: S7Type,
    /// Elements: 1 for a scalar.
    pub count: u16,
    /// Whether the tag is an array (`[N]`), even of one element.
    pub array: bool,
}

/// The width letter of an address (`DBX`, `MW`, `IB`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    Bit,
    Byte,
    Word,
    Dword,
}

impl S7Address {
    /// Parses `text` for a tag of Sparkplug type `datatype`.
    pub fn parse(text: &str, datatype: DataType) -> Result<S7Address, AddressError> {
        let syntax = || AddressError::Syntax(text.to_string());
        let invalid = |reason: String| AddressError::Invalid {
            addr: text.to_string(),
            reason,
        };
        let upper = text.trim().to_ascii_uppercase();
        let (loc, hint) = match upper.split_once(':') {
            Some((l, h)) => (l.trim(), Some(h.trim())),
            None => (upper.as_str(), None),
        };
        let (area, width, byte, bit) = parse_location(loc).ok_or_else(syntax)?;
        let (hint_ty, count) = match hint {
            None => (None, None),
            Some(h) => {
                let (name, n) = match h.split_once('[') {
                    Some((name, rest)) => {
                        let n = rest
                            .strip_suffix(']')
                            .and_then(|n| n.trim().parse::<u32>().ok())
                            .ok_or_else(syntax)?;
                        (name.trim(), Some(n))
                    }
                    None => (h, None),
                };
                let ty = S7Type::parse(name).ok_or_else(|| {
                    invalid(format!(
                        "unknown S7 type '{name}'; known: BOOL BYTE WORD DWORD LWORD SINT USINT INT UINT DINT UDINT LINT ULINT REAL LREAL CHAR STRING DT TIME DATE"
                    ))
                })?;
                (Some(ty), n)
            }
        };
        let (ty, count, array) = match (hint_ty, count) {
            (Some(S7Type::String(_)), Some(n)) => {
                if !(1..=254).contains(&n) {
                    return Err(invalid(format!("STRING[{n}]: the length must be 1..254")));
                }
                (S7Type::String(n as u8), 1, false)
            }
            (Some(t), Some(n)) => {
                if n == 0 || n > 65_535 {
                    return Err(invalid(format!("[{n}]: an array needs 1..65535 elements")));
                }
                (t, n as u16, true)
            }
            (Some(t), None) => (t, 1, false),
            (None, _) if area.is_timer_or_counter() => (S7Type::TimerCounter, 1, false),
            (None, _) => {
                let array = datatype.is_array();
                (
                    default_type(width, datatype).ok_or_else(|| {
                        invalid(format!(
                            "cannot tell the S7 type of a {datatype} here: add a hint like ':REAL' or ':DINT'"
                        ))
                    })?,
                    1,
                    array,
                )
            }
        };
        if array && datatype.is_array() && count == 1 && hint_ty.is_none() {
            return Err(invalid(format!(
                "{datatype} needs an element count, e.g. ':{}[10]'",
                ty.name()
            )));
        }
        check_width(width, ty).map_err(invalid)?;
        if area.is_timer_or_counter() && ty != S7Type::TimerCounter && hint_ty.is_some() {
            return Err(invalid("timers and counters take no type hint".into()));
        }
        check_datatype(ty, array, datatype).map_err(invalid)?;
        let a = S7Address {
            area,
            byte,
            bit,
            ty,
            count,
            array,
        };
        if a.byte as u64 + a.len() as u64 > 0xFFFF {
            return Err(invalid("the address range ends past byte 65535".into()));
        }
        Ok(a)
    }

    /// Bytes the tag spans in the PLC, from `byte`.
    pub fn len(&self) -> usize {
        if self.ty == S7Type::Bool {
            // Bits are consecutive from `bit`.
            (self.bit as usize + self.count as usize).div_ceil(8)
        } else {
            self.ty.size() * self.count as usize
        }
    }

    /// Never empty: every address spans at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Decodes the tag from exactly [`len`](Self::len) bytes, as `datatype`.
    pub fn decode(&self, bytes: &[u8], datatype: DataType) -> Result<Value, String> {
        if bytes.len() < self.len() {
            return Err(format!("{} bytes where {} were expected", bytes.len(), self.len()));
        }
        if !self.array {
            return scalar(self.ty, bytes, self.bit).and_then(|s| s.into_value(datatype));
        }
        let size = self.ty.size();
        let elements = (0..self.count as usize).map(|i| {
            if self.ty == S7Type::Bool {
                let b = self.bit as usize + i;
                Ok(Scalar::Bool(bytes[b / 8] >> (b % 8) & 1 == 1))
            } else {
                scalar(self.ty, &bytes[i * size..], 0)
            }
        });
        let elements: Result<Vec<Scalar>, String> = elements.collect();
        array_value(elements?, datatype)
    }

    /// Encodes `value` into the tag's bytes. A BOOL scalar is returned as
    /// one byte 0/1 to be written as a single bit (see [`is_bit`](Self::is_bit));
    /// a BOOL array is returned as whole bytes and needs `current` (the bytes
    /// as they are now) so neighbouring bits are kept.
    pub fn encode(&self, value: &Value, current: Option<&[u8]>) -> Result<Vec<u8>, String> {
        if self.is_bit() {
            return match value {
                Value::Boolean(b) => Ok(vec![*b as u8]),
                other => Err(format!("BOOL takes a Boolean, not {}", other.datatype())),
            };
        }
        if !self.array {
            let mut out = vec![0; self.len()];
            encode_scalar(self.ty, value, &mut out)?;
            return Ok(out);
        }
        let items = array_items(value)?;
        if items.len() != self.count as usize {
            return Err(format!("{} elements given, the array has {}", items.len(), self.count));
        }
        let mut out = match (self.ty, current) {
            (S7Type::Bool, Some(cur)) if cur.len() >= self.len() => cur[..self.len()].to_vec(),
            (S7Type::Bool, _) => return Err("a BOOL array write needs the current bytes".into()),
            _ => vec![0; self.len()],
        };
        let size = self.ty.size();
        for (i, item) in items.iter().enumerate() {
            if self.ty == S7Type::Bool {
                let b = self.bit as usize + i;
                let on = matches!(item, Value::Boolean(true));
                out[b / 8] = (out[b / 8] & !(1 << (b % 8))) | ((on as u8) << (b % 8));
            } else {
                encode_scalar(self.ty, item, &mut out[i * size..(i + 1) * size])?;
            }
        }
        Ok(out)
    }

    /// A single BOOL: written with the BIT transport size so that the other
    /// bits of its byte are left alone.
    pub fn is_bit(&self) -> bool {
        self.ty == S7Type::Bool && !self.array
    }
}

impl std::fmt::Display for S7Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.area {
            Area::Db(n) => write!(f, "DB{n}.DBB{}", self.byte)?,
            Area::Timers | Area::Counters => return write!(f, "{}{}", self.area, self.byte),
            a => write!(f, "{a}B{}", self.byte)?,
        }
        if self.ty == S7Type::Bool {
            write!(f, ".{}", self.bit)?;
        }
        write!(f, ":{}", self.ty.name())?;
        if self.array {
            write!(f, "[{}]", self.count)?;
        }
        Ok(())
    }
}

fn parse_location(loc: &str) -> Option<(Area, Width, u32, u8)> {
    let num = |s: &str| -> Option<u32> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (area, rest) = if let Some(r) = loc.strip_prefix("DB") {
        let (n, tail) = r.split_once('.')?;
        let n = num(n)?;
        if n == 0 || n > 65_535 {
            return None;
        }
        (Area::Db(n as u16), tail.strip_prefix("DB")?)
    } else {
        let mut chars = loc.chars();
        let area = match chars.next()? {
            'M' => Area::Merker,
            'I' | 'E' => Area::Inputs,
            'Q' | 'A' => Area::Outputs,
            'T' => Area::Timers,
            'C' | 'Z' => Area::Counters,
            _ => return None,
        };
        if area.is_timer_or_counter() {
            let n = num(chars.as_str())?;
            return (n <= 65_535).then_some((area, Width::Word, n, 0));
        }
        (area, chars.as_str())
    };
    let (width, rest) = match rest.chars().next()? {
        'X' => (Width::Bit, &rest[1..]),
        'B' => (Width::Byte, &rest[1..]),
        'W' => (Width::Word, &rest[1..]),
        'D' => (Width::Dword, &rest[1..]),
        c if c.is_ascii_digit() && !matches!(area, Area::Db(_)) => (Width::Bit, rest),
        _ => return None,
    };
    match (width, rest.split_once('.')) {
        (Width::Bit, Some((b, bit))) => {
            let bit = num(bit)?;
            (bit < 8).then_some((area, width, num(b)?, bit as u8))
        }
        (Width::Bit, None) => None,
        (_, Some(_)) => None,
        (_, None) => Some((area, width, num(rest)?, 0)),
    }
}

fn default_type(width: Width, dt: DataType) -> Option<S7Type> {
    let element = dt.element().unwrap_or(dt);
    let signed = matches!(
        element,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64
    );
    let float = matches!(element, DataType::Float | DataType::Double);
    Some(match width {
        Width::Bit => S7Type::Bool,
        Width::Byte if element == DataType::String => S7Type::Char,
        Width::Byte if signed => S7Type::Sint,
        Width::Byte if element.is_numeric() => S7Type::Byte,
        Width::Word if signed => S7Type::Int,
        Width::Word if element.is_numeric() => S7Type::Word,
        Width::Dword if float => S7Type::Real,
        Width::Dword if signed => S7Type::Dint,
        Width::Dword if element.is_numeric() => S7Type::Dword,
        _ => return None,
    })
}

fn check_width(width: Width, ty: S7Type) -> Result<(), String> {
    let ok = match width {
        Width::Bit => ty == S7Type::Bool,
        Width::Byte => ty != S7Type::Bool,
        Width::Word => ty.size() == 2,
        Width::Dword => ty.size() == 4,
    };
    if ok {
        return Ok(());
    }
    let letter = match width {
        Width::Bit => "X (a bit)",
        Width::Byte => "B",
        Width::Word => "W (2 bytes)",
        Width::Dword => "D (4 bytes)",
    };
    Err(match ty {
        S7Type::Bool => "BOOL needs a bit address like DB1.DBX0.0 or M0.1".to_string(),
        t => format!(
            "{} is {} bytes but the address says {letter}: write it as DBB/MB/IB/QB with the hint",
            t.name(),
            t.size()
        ),
    })
}

fn check_datatype(ty: S7Type, array: bool, dt: DataType) -> Result<(), String> {
    if array != dt.is_array() {
        return Err(if array {
            format!(
                "an array needs an array datatype (e.g. {}Array), not {dt}",
                element_name(ty)
            )
        } else {
            format!(
                "{dt} is an array datatype: give the element count, e.g. ':{}[10]'",
                ty.name()
            )
        });
    }
    let element = dt.element().unwrap_or(dt);
    let ok = match ty {
        S7Type::Bool => element == DataType::Boolean,
        S7Type::Char | S7Type::String(_) => matches!(element, DataType::String | DataType::Text) && !array,
        S7Type::DateAndTime | S7Type::Date => element == DataType::DateTime,
        t if t.is_numeric() => element.is_numeric(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("an S7 {} cannot be reported as {dt}", ty.name()))
    }
}

fn element_name(ty: S7Type) -> &'static str {
    match ty {
        S7Type::Bool => "Boolean",
        S7Type::Real => "Float",
        S7Type::Lreal => "Double",
        _ => "Int32",
    }
}

/// One decoded element before it becomes the tag's Sparkplug type.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Bool(bool),
    I(i64),
    U(u64),
    F(f64),
    Str(String),
    /// ms since the Unix epoch
    Time(u64),
}

fn be<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(&b[..N]);
    a
}

fn scalar(ty: S7Type, b: &[u8], bit: u8) -> Result<Scalar, String> {
    Ok(match ty {
        S7Type::Bool => Scalar::Bool(b[0] >> bit & 1 == 1),
        S7Type::Byte | S7Type::Usint => Scalar::U(b[0].into()),
        S7Type::Sint => Scalar::I((b[0] as i8).into()),
        S7Type::Word | S7Type::Uint => Scalar::U(u16::from_be_bytes(be(b)).into()),
        S7Type::Int => Scalar::I(i16::from_be_bytes(be(b)).into()),
        S7Type::Dword | S7Type::Udint => Scalar::U(u32::from_be_bytes(be(b)).into()),
        S7Type::Dint | S7Type::Time => Scalar::I(i32::from_be_bytes(be(b)).into()),
        S7Type::Lword | S7Type::Ulint => Scalar::U(u64::from_be_bytes(be(b))),
        S7Type::Lint => Scalar::I(i64::from_be_bytes(be(b))),
        S7Type::Real => Scalar::F(f32::from_be_bytes(be(b)).into()),
        S7Type::Lreal => Scalar::F(f64::from_be_bytes(be(b))),
        S7Type::TimerCounter => Scalar::U(u16::from_be_bytes(be(b)).into()),
        S7Type::Char => Scalar::Str(latin1(&b[..1])),
        S7Type::String(max) => {
            // The PLC's own max-length byte wins over the configured one when smaller.
            let cur = b[1].min(b[0]).min(max) as usize;
            Scalar::Str(latin1(&b[2..2 + cur]))
        }
        S7Type::Date => {
            let days = u16::from_be_bytes(be(b)) as u64;
            Scalar::Time((DAYS_1970_TO_1990 + days) * 86_400_000)
        }
        S7Type::DateAndTime => Scalar::Time(dt_to_ms(&b[..8])?),
    })
}

/// S7 strings are single-byte: Latin-1 maps byte for byte onto Unicode.
fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| c as char).collect()
}

impl Scalar {
    fn into_value(self, dt: DataType) -> Result<Value, String> {
        let range = |v: &dyn std::fmt::Display| format!("{v} does not fit {dt}");
        Ok(match (self, dt) {
            (Scalar::Bool(b), DataType::Boolean) => Value::Boolean(b),
            (Scalar::Str(s), DataType::String) => Value::String(s),
            (Scalar::Str(s), DataType::Text) => Value::Text(s),
            (Scalar::Time(t), DataType::DateTime) => Value::DateTime(t),
            (Scalar::F(f), DataType::Float) => Value::Float(f as f32),
            (Scalar::F(f), DataType::Double) => Value::Double(f),
            (Scalar::I(i), DataType::Float) => Value::Float(i as f32),
            (Scalar::I(i), DataType::Double) => Value::Double(i as f64),
            (Scalar::U(u), DataType::Float) => Value::Float(u as f32),
            (Scalar::U(u), DataType::Double) => Value::Double(u as f64),
            (Scalar::F(f), _) if dt.is_numeric() => {
                if f.fract() != 0.0 || !f.is_finite() {
                    return Err(range(&f));
                }
                return Scalar::I(f as i64).into_value(dt);
            }
            (Scalar::I(i), _) => crate::plc::int_value(i as i128, dt).ok_or_else(|| range(&i))?,
            (Scalar::U(u), _) => crate::plc::int_value(u as i128, dt).ok_or_else(|| range(&u))?,
            (s, _) => return Err(format!("{s:?} cannot be reported as {dt}")),
        })
    }
}

fn array_value(items: Vec<Scalar>, dt: DataType) -> Result<Value, String> {
    let element = dt.element().ok_or_else(|| format!("{dt} is not an array"))?;
    let values: Result<Vec<Value>, String> = items.into_iter().map(|s| s.into_value(element)).collect();
    crate::plc::array_value(values?, dt)
}

fn array_items(v: &Value) -> Result<Vec<Value>, String> {
    fn map<T: Copy>(xs: &[T], f: impl Fn(T) -> Value) -> Vec<Value> {
        xs.iter().map(|&x| f(x)).collect()
    }
    Ok(match v {
        Value::Int8Array(x) => map(x, Value::Int8),
        Value::Int16Array(x) => map(x, Value::Int16),
        Value::Int32Array(x) => map(x, Value::Int32),
        Value::Int64Array(x) => map(x, Value::Int64),
        Value::UInt8Array(x) => map(x, Value::UInt8),
        Value::UInt16Array(x) => map(x, Value::UInt16),
        Value::UInt32Array(x) => map(x, Value::UInt32),
        Value::UInt64Array(x) => map(x, Value::UInt64),
        Value::FloatArray(x) => map(x, Value::Float),
        Value::DoubleArray(x) => map(x, Value::Double),
        Value::BooleanArray(x) => map(x, Value::Boolean),
        Value::DateTimeArray(x) => map(x, Value::DateTime),
        other => return Err(format!("an array tag takes an array, not {}", other.datatype())),
    })
}

fn encode_scalar(ty: S7Type, v: &Value, out: &mut [u8]) -> Result<(), String> {
    let as_int = || -> Result<i128, String> {
        match v {
            Value::Int8(x) => Ok((*x).into()),
            Value::Int16(x) => Ok((*x).into()),
            Value::Int32(x) => Ok((*x).into()),
            Value::Int64(x) => Ok((*x).into()),
            Value::UInt8(x) => Ok((*x).into()),
            Value::UInt16(x) => Ok((*x).into()),
            Value::UInt32(x) => Ok((*x).into()),
            Value::UInt64(x) => Ok((*x).into()),
            Value::Float(f) if f.fract() == 0.0 && f.is_finite() => Ok(*f as i128),
            Value::Double(f) if f.fract() == 0.0 && f.is_finite() => Ok(*f as i128),
            other => Err(format!("{} needs a whole number, not {other:?}", ty.name())),
        }
    };
    let fits = |x: i128, lo: i128, hi: i128| {
        if (lo..=hi).contains(&x) {
            Ok(x)
        } else {
            Err(format!("{x} is out of range for {} ({lo}..={hi})", ty.name()))
        }
    };
    match ty {
        S7Type::Byte | S7Type::Usint => out[0] = fits(as_int()?, 0, 255)? as u8,
        S7Type::Sint => out[0] = fits(as_int()?, -128, 127)? as i8 as u8,
        S7Type::Word | S7Type::Uint | S7Type::TimerCounter => {
            out.copy_from_slice(&(fits(as_int()?, 0, 0xFFFF)? as u16).to_be_bytes())
        }
        S7Type::Int => out.copy_from_slice(&(fits(as_int()?, -32768, 32767)? as i16).to_be_bytes()),
        S7Type::Dword | S7Type::Udint => {
            out.copy_from_slice(&(fits(as_int()?, 0, u32::MAX.into())? as u32).to_be_bytes())
        }
        S7Type::Dint | S7Type::Time => {
            out.copy_from_slice(&(fits(as_int()?, i32::MIN.into(), i32::MAX.into())? as i32).to_be_bytes())
        }
        S7Type::Lword | S7Type::Ulint => {
            out.copy_from_slice(&(fits(as_int()?, 0, u64::MAX.into())? as u64).to_be_bytes())
        }
        S7Type::Lint => out.copy_from_slice(&(fits(as_int()?, i64::MIN.into(), i64::MAX.into())? as i64).to_be_bytes()),
        S7Type::Real | S7Type::Lreal => {
            let f = v
                .as_f64()
                .ok_or_else(|| format!("{} needs a number, not {v:?}", ty.name()))?;
            if ty == S7Type::Real {
                out.copy_from_slice(&(f as f32).to_be_bytes());
            } else {
                out.copy_from_slice(&f.to_be_bytes());
            }
        }
        S7Type::Char => out[0] = latin1_bytes(text(v)?, 1)?[0],
        S7Type::String(max) => {
            let b = latin1_bytes(text(v)?, max as usize)?;
            out[0] = max;
            out[1] = b.len() as u8;
            out[2..2 + b.len()].copy_from_slice(&b);
        }
        S7Type::Date => match v {
            Value::DateTime(ms) => {
                let days = (ms / 86_400_000)
                    .checked_sub(DAYS_1970_TO_1990)
                    .filter(|d| *d <= 0xFFFF)
                    .ok_or("DATE covers 1990-01-01..2169-06-06")?;
                out.copy_from_slice(&(days as u16).to_be_bytes());
            }
            other => return Err(format!("DATE takes a DateTime, not {}", other.datatype())),
        },
        S7Type::DateAndTime => match v {
            Value::DateTime(ms) => out.copy_from_slice(&ms_to_dt(*ms)?),
            other => return Err(format!("DATE_AND_TIME takes a DateTime, not {}", other.datatype())),
        },
        S7Type::Bool => return Err("BOOL is written as a bit".into()),
    }
    Ok(())
}

fn text(v: &Value) -> Result<&str, String> {
    match v {
        Value::String(s) | Value::Text(s) => Ok(s),
        other => Err(format!("a string tag takes a String, not {}", other.datatype())),
    }
}

fn latin1_bytes(s: &str, max: usize) -> Result<Vec<u8>, String> {
    let b: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
    let b = b.ok_or_else(|| format!("'{s}' has characters an S7 STRING cannot hold (Latin-1 only)"))?;
    if b.len() > max {
        return Err(format!("'{s}' is {} characters; the PLC holds {max}", b.len()));
    }
    Ok(b)
}

const DAYS_1970_TO_1990: u64 = 7305;

fn bcd(b: u8) -> Result<u32, String> {
    let (hi, lo) = (b >> 4, b & 0x0F);
    if hi > 9 || lo > 9 {
        return Err(format!("0x{b:02x} is not BCD"));
    }
    Ok((hi * 10 + lo).into())
}

fn to_bcd(v: u32) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// DATE_AND_TIME (BCD: yy mm dd hh mi ss, ms in 3 digits, weekday) → ms since the epoch.
fn dt_to_ms(b: &[u8]) -> Result<u64, String> {
    let yy = bcd(b[0])?;
    let year = if yy >= 90 { 1900 + yy } else { 2000 + yy } as i64;
    let (mo, d, h, mi, s) = (bcd(b[1])?, bcd(b[2])?, bcd(b[3])?, bcd(b[4])?, bcd(b[5])?);
    let ms = bcd(b[6])? * 10 + u32::from(b[7] >> 4);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 59 || b[7] >> 4 > 9 {
        return Err(format!("{b:02x?} is not a valid DATE_AND_TIME"));
    }
    let days = days_from_civil(year, mo, d);
    Ok(((days * 86_400 + i64::from(h * 3600 + mi * 60 + s)) * 1000 + i64::from(ms)) as u64)
}

fn ms_to_dt(ms: u64) -> Result<[u8; 8], String> {
    let days = (ms / 86_400_000) as i64;
    let (y, mo, d) = civil_from_days(days);
    if !(1990..=2089).contains(&y) {
        return Err(format!("DATE_AND_TIME covers 1990..2089, not {y}"));
    }
    let rem = (ms % 86_400_000) as u32;
    let (h, mi, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    // ISO weekday of 1970-01-01 was Thursday; S7 counts Sunday = 1.
    let weekday = ((days + 4).rem_euclid(7) + 1) as u8;
    Ok([
        to_bcd((y % 100) as u32),
        to_bcd(mo),
        to_bcd(d),
        to_bcd(h),
        to_bcd(mi),
        to_bcd(s),
        to_bcd(milli / 10),
        (((milli % 10) as u8) << 4) | weekday,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str, dt: DataType) -> S7Address {
        S7Address::parse(s, dt).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn tia_addresses_parse_to_area_byte_bit_and_type() {
        let a = p("DB1.DBX0.3", DataType::Boolean);
        assert_eq!(
            (a.area, a.byte, a.bit, a.ty, a.len()),
            (Area::Db(1), 0, 3, S7Type::Bool, 1)
        );
        assert_eq!(p("db10.dbb8", DataType::UInt8).ty, S7Type::Byte);
        assert_eq!(p("DB1.DBW2", DataType::Int16).ty, S7Type::Int);
        assert_eq!(p("DB1.DBW2", DataType::UInt16).ty, S7Type::Word);
        assert_eq!(p("DB1.DBD4", DataType::Float).ty, S7Type::Real);
        assert_eq!(p("DB1.DBD4", DataType::Int32).ty, S7Type::Dint);
        assert_eq!(p("DB5.DBD0:REAL", DataType::Double).ty, S7Type::Real);
        let m = p("MW10", DataType::Int16);
        assert_eq!((m.area, m.byte, m.len()), (Area::Merker, 10, 2));
        assert_eq!(p("I0.1", DataType::Boolean).area, Area::Inputs);
        assert_eq!(p("E0.1", DataType::Boolean).area, Area::Inputs);
        let q = p("Q1.7", DataType::Boolean);
        assert_eq!((q.area, q.byte, q.bit), (Area::Outputs, 1, 7));
        assert_eq!(p("A1.7", DataType::Boolean).area, Area::Outputs);
        assert_eq!(p("QB1", DataType::UInt8).len(), 1);
        assert_eq!(p("T5", DataType::UInt16).area, Area::Timers);
        assert_eq!(p("Z3", DataType::UInt16).area, Area::Counters);
        let s = p("DB1.DBB10:STRING[20]", DataType::String);
        assert_eq!((s.ty, s.len()), (S7Type::String(20), 22));
        let arr = p("DB1.DBD0:REAL[10]", DataType::FloatArray);
        assert_eq!((arr.count, arr.len(), arr.array), (10, 40, true));
        let bits = p("DB1.DBX0.6:BOOL[4]", DataType::BooleanArray);
        assert_eq!(bits.len(), 2, "bits 6,7 of byte 0 and 0,1 of byte 1");
        assert_eq!(p("DB2.DBB0:LREAL", DataType::Double).len(), 8);
        assert_eq!(p("DB2.DBB0:DT", DataType::DateTime).len(), 8);
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        let e = |s: &str, dt| S7Address::parse(s, dt).unwrap_err().to_string();
        assert!(e("DB1.DBX0", DataType::Boolean).contains("is not an S7 address"));
        assert!(e("DB1.DBX0.8", DataType::Boolean).contains("is not an S7 address"));
        assert!(e("DB0.DBW0", DataType::Int16).contains("is not an S7 address"));
        assert!(e("DB1.DBW0:REAL", DataType::Float).contains("REAL is 4 bytes"));
        assert!(e("DB1.DBD0:REEL", DataType::Float).contains("unknown S7 type 'REEL'"));
        assert!(e("DB1.DBD0:REAL", DataType::String).contains("cannot be reported as String"));
        assert!(e("DB1.DBD0:REAL", DataType::FloatArray).contains("give the element count"));
        assert!(e("DB1.DBD0:REAL[4]", DataType::Float).contains("an array needs an array datatype"));
        assert!(e("DB1.DBB0:STRING[300]", DataType::String).contains("1..254"));
        assert!(e("DB1.DBB65534:DINT[2]", DataType::Int32Array).contains("past byte 65535"));
        assert!(e("X1.0", DataType::Boolean).contains("is not an S7 address"));
        assert!(e("DB1.DBD0", DataType::String).contains("add a hint"));
    }

    #[test]
    fn values_decode_big_endian_into_the_configured_datatype() {
        let d = |s: &str, dt, b: &[u8]| p(s, dt).decode(b, dt).unwrap();
        assert_eq!(d("DB1.DBX0.3", DataType::Boolean, &[0b1000]), Value::Boolean(true));
        assert_eq!(d("DB1.DBW0", DataType::Int16, &[0x80, 0x00]), Value::Int16(i16::MIN));
        assert_eq!(d("DB1.DBW0", DataType::UInt16, &[0xFF, 0xFE]), Value::UInt16(65534));
        assert_eq!(d("DB1.DBD0", DataType::Float, &1.5f32.to_be_bytes()), Value::Float(1.5));
        assert_eq!(
            d("DB1.DBD0", DataType::Int32, &i32::MIN.to_be_bytes()),
            Value::Int32(i32::MIN)
        );
        assert_eq!(
            d("DB1.DBB0:LREAL", DataType::Double, &(-2.25f64).to_be_bytes()),
            Value::Double(-2.25)
        );
        assert_eq!(
            d("DB1.DBB0:STRING[8]", DataType::String, b"\x08\x03abcXXXXX"),
            Value::String("abc".into())
        );
        assert_eq!(d("DB1.DBB0:CHAR", DataType::String, b"Z"), Value::String("Z".into()));
        assert_eq!(
            d("DB1.DBW0:INT[2]", DataType::Int16Array, &[0, 1, 0xFF, 0xFF]),
            Value::Int16Array(vec![1, -1])
        );
        assert_eq!(
            d("DB1.DBX0.7:BOOL[2]", DataType::BooleanArray, &[0x80, 0x00]),
            Value::BooleanArray(vec![true, false])
        );
    }

    #[test]
    fn a_value_too_large_for_the_datatype_is_a_tag_error_not_a_wrap() {
        let a = p("DB1.DBD0:DINT", DataType::Int16);
        assert!(a
            .decode(&70_000i32.to_be_bytes(), DataType::Int16)
            .unwrap_err()
            .contains("does not fit"));
    }

    #[test]
    fn date_and_time_round_trips_through_bcd() {
        // 2024-02-29 13:45:07.123, a Thursday (S7 weekday 5).
        let ms = 1_709_214_307_123u64;
        let b = ms_to_dt(ms).unwrap();
        assert_eq!(b, [0x24, 0x02, 0x29, 0x13, 0x45, 0x07, 0x12, 0x35]);
        assert_eq!(dt_to_ms(&b).unwrap(), ms);
        assert_eq!(dt_to_ms(&[0x90, 1, 1, 0, 0, 0, 0, 0x02]).unwrap(), 631_152_000_000);
        assert!(dt_to_ms(&[0x24, 0x13, 1, 0, 0, 0, 0, 0]).is_err(), "month 13");
    }

    #[test]
    fn encode_checks_range_and_string_length() {
        let a = p("DB1.DBW0", DataType::Int16);
        assert_eq!(a.encode(&Value::Int16(-2), None).unwrap(), vec![0xFF, 0xFE]);
        assert!(p("DB1.DBB0", DataType::UInt8)
            .encode(&Value::Int32(300), None)
            .unwrap_err()
            .contains("out of range"));
        let s = p("DB1.DBB0:STRING[4]", DataType::String);
        assert_eq!(s.encode(&Value::String("ab".into()), None).unwrap(), b"\x04\x02ab\0\0");
        assert!(s.encode(&Value::String("abcde".into()), None).is_err());
        let bits = p("DB1.DBX0.1:BOOL[2]", DataType::BooleanArray);
        assert_eq!(
            bits.encode(&Value::BooleanArray(vec![true, false]), Some(&[0xFF]))
                .unwrap(),
            vec![0b1111_1011],
            "bit 1 set, bit 2 cleared, the others kept"
        );
    }
}
