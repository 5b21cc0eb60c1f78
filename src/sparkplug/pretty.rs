//! Human-readable one-line-per-metric rendering of Sparkplug messages, for
//! technicians (`spb-gateway decode`, `spb-gateway watch`) and logs.
//!
//! Invariant: never fails; a value that cannot be shown in full is abbreviated
//! (long arrays and byte strings show their first items and their length).

use std::fmt::{self, Write as _};

use super::codec::{Metric, Payload, Value};

const MAX_ITEMS: usize = 8;

fn list<T>(f: &mut fmt::Formatter<'_>, items: &[T], show: impl Fn(&T) -> String) -> fmt::Result {
    f.write_char('[')?;
    for (i, x) in items.iter().take(MAX_ITEMS).enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        f.write_str(&show(x))?;
    }
    if items.len() > MAX_ITEMS {
        write!(f, ", … {} items", items.len())?;
    }
    f.write_char(']')
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int8(v) => write!(f, "{v}"),
            Value::Int16(v) => write!(f, "{v}"),
            Value::Int32(v) => write!(f, "{v}"),
            Value::Int64(v) => write!(f, "{v}"),
            Value::UInt8(v) => write!(f, "{v}"),
            Value::UInt16(v) => write!(f, "{v}"),
            Value::UInt32(v) => write!(f, "{v}"),
            Value::UInt64(v) | Value::DateTime(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Double(v) => write!(f, "{v}"),
            Value::Boolean(v) => write!(f, "{v}"),
            Value::String(s) | Value::Text(s) | Value::Uuid(s) => write!(f, "{s:?}"),
            Value::Bytes(b) | Value::File(b) | Value::UInt8Array(b) => list(f, b, |x| format!("{x:#04x}")),
            Value::Int8Array(a) => list(f, a, i8::to_string),
            Value::Int16Array(a) => list(f, a, i16::to_string),
            Value::Int32Array(a) => list(f, a, i32::to_string),
            Value::Int64Array(a) => list(f, a, i64::to_string),
            Value::UInt16Array(a) => list(f, a, u16::to_string),
            Value::UInt32Array(a) => list(f, a, u32::to_string),
            Value::UInt64Array(a) | Value::DateTimeArray(a) => list(f, a, u64::to_string),
            Value::FloatArray(a) => list(f, a, f32::to_string),
            Value::DoubleArray(a) => list(f, a, f64::to_string),
            Value::BooleanArray(a) => list(f, a, bool::to_string),
            Value::StringArray(a) => list(f, a, |s| format!("{s:?}")),
            Value::DataSet(d) => write!(f, "DataSet({} columns × {} rows)", d.columns.len(), d.rows.len()),
            Value::Template(t) => match &t.template_ref {
                Some(r) => write!(f, "Template instance of {r:?} ({} members)", t.metrics.len()),
                None => write!(f, "Template definition ({} members)", t.metrics.len()),
            },
            Value::PropertySet(p) => write!(f, "PropertySet({} entries)", p.entries.len()),
            Value::PropertySetList(l) => write!(f, "PropertySetList({} sets)", l.len()),
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary (for log lines
/// and columns fed from outside).
pub fn prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One line for a metric: `name (alias 3) Float = 21.5 @1700000000000 [historical] [STALE]`.
pub fn metric_line(m: &Metric) -> String {
    metric_line_as(m, m.name.as_deref())
}

/// [`metric_line`] for a metric whose name is known apart from it (a host
/// resolved it from the alias).
pub fn metric_line_named(m: &Metric, name: &str) -> String {
    metric_line_as(m, Some(name))
}

fn metric_line_as(m: &Metric, name: Option<&str>) -> String {
    let mut s = match (name, m.alias) {
        (Some(n), Some(a)) => format!("{n} (alias {a})"),
        (Some(n), None) => n.to_string(),
        (None, Some(a)) => format!("alias {a}"),
        (None, None) => "<unnamed>".to_string(),
    };
    let _ = write!(s, " {}", m.datatype);
    match &m.value {
        Some(v) => {
            let _ = write!(s, " = {v}");
        }
        None => s.push_str(" = null"),
    }
    if let Some(t) = m.timestamp {
        let _ = write!(s, " @{t}");
    }
    if m.is_historical {
        s.push_str(" [historical]");
    }
    if m.is_transient {
        s.push_str(" [transient]");
    }
    match m.quality() {
        super::Quality::Good => {}
        q => {
            let _ = write!(s, " [{q:?}]");
        }
    }
    s
}

/// A header line (`seq`, timestamp, metric count) and one indented line per metric.
pub fn payload_lines(p: &Payload) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "seq={} timestamp={} metrics={}",
        opt(p.seq),
        opt(p.timestamp),
        p.metrics.len()
    );
    for m in &p.metrics {
        let _ = write!(s, "\n  {}", metric_line(m));
    }
    s
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparkplug::{DataType, PropertySet, Quality};

    #[test]
    fn metric_line_shows_alias_type_value_flags_and_bad_quality() {
        let mut m = Metric::new("Temp", Value::Float(21.5), 7);
        m.alias = Some(3);
        m.is_historical = true;
        let mut p = PropertySet::default();
        p.set_quality(Quality::Stale);
        m.properties = Some(p);
        assert_eq!(metric_line(&m), "Temp (alias 3) Float = 21.5 @7 [historical] [Stale]");
        assert_eq!(metric_line(&Metric::null("x", DataType::Int32, 1)), "x Int32 = null @1");
    }

    #[test]
    fn long_arrays_are_abbreviated() {
        let v = Value::Int32Array((0..20).collect());
        assert_eq!(v.to_string(), "[0, 1, 2, 3, 4, 5, 6, 7, … 20 items]");
    }
}
