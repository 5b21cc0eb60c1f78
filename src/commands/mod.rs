//! The command guard: whether a write a Primary Host asks for (a metric of
//! an NCMD or DCMD) may reach a PLC. Sans-IO: the caller passes `now` and
//! the datatype the birth declared; the guard keeps only the write lock and
//! each tag's recent writes.
//!
//! Invariants:
//! - Off by default: unless `[commands] enabled`, every write is refused.
//! - Only a tag configured `writable` can be written; a metric the birth
//!   did not declare is refused.
//! - The value must be of the declared datatype's kind, and fit it: an
//!   integer within the type's range for an integer tag, a finite number for
//!   a Float or Double tag, a Boolean for a Boolean tag, a string for a
//!   String tag. Nothing is converted: `"12"` for an Int32 tag and 3.7 for
//!   an Int16 tag are refused.
//! - Under the write lock (set in the file, or by the NCMD metric
//!   `Node Control/Write Lock`) every write is refused. Clearing it by NCMD
//!   can be forbidden in the file; the file's lock is cleared only by the file.
//! - `max_rate` (writes a minute) and `cooldown` count accepted writes only,
//!   per tag, so a refused flood cannot lock a tag out.
//! - Every refusal names its reason in words fit for the audit.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use thiserror::Error;

use crate::sparkplug::{DataType, Value};

/// The NCMD metric that sets and clears the write lock (Boolean).
pub const WRITE_LOCK_METRIC: &str = "Node Control/Write Lock";

/// A value listed in a tag's `allowed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Allowed {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allowed::Bool(b) => write!(f, "{b}"),
            Allowed::Int(i) => write!(f, "{i}"),
            Allowed::Float(x) => write!(f, "{x}"),
            Allowed::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// What a writable tag accepts (`[[devices.tags]]` keys).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TagGuard {
    /// Numeric tags: the smallest value accepted.
    pub min: Option<f64>,
    /// Numeric tags: the largest value accepted.
    pub max: Option<f64>,
    /// Only these values (enumerations, strings, booleans); empty: any.
    pub allowed: Vec<Allowed>,
    /// At most this many accepted writes in any minute.
    pub max_rate: Option<u32>,
    /// At least this long between two accepted writes.
    pub cooldown: Duration,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Refusal {
    #[error("command write-back is disabled ([commands] enabled = false)")]
    Disabled,
    #[error("the write lock is set ({0})")]
    WriteLocked(LockedBy),
    #[error("no metric of that name was declared in the birth")]
    Undeclared,
    #[error("the tag is not writable (writable = false)")]
    NotWritable,
    #[error("the command carries no value")]
    NoValue,
    #[error("a {got} value for a {declared} tag: values are not converted")]
    WrongType { declared: DataType, got: DataType },
    #[error("{value} does not fit a {declared} tag")]
    DoesNotFit { declared: DataType, value: String },
    #[error("{value} is below the tag's min ({min})")]
    BelowMin { value: f64, min: f64 },
    #[error("{value} is above the tag's max ({max})")]
    AboveMax { value: f64, max: f64 },
    #[error("{value} is not one of the tag's allowed values ({allowed})")]
    NotAllowed { value: String, allowed: String },
    #[error("more than max_rate ({max_rate}) writes in a minute")]
    TooFast { max_rate: u32 },
    #[error("within the tag's cooldown: {remaining_ms} ms left")]
    CoolingDown { remaining_ms: u64 },
    #[error("the write lock cannot be cleared by command (commands.unlock_by_command = false)")]
    UnlockForbidden,
    #[error("the write lock set in the configuration file is cleared only there")]
    FileLock,
}

/// Who set the write lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockedBy {
    File,
    Command,
}

impl fmt::Display for LockedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockedBy::File => "commands.write_lock in the configuration file",
            LockedBy::Command => "by NCMD Node Control/Write Lock",
        })
    }
}

/// The guard's settings (`[commands]`).
#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    pub enabled: bool,
    /// The file's emergency stop.
    pub write_lock: bool,
    /// Whether `Node Control/Write Lock = false` may clear a lock set by NCMD.
    pub unlock_by_command: bool,
}

/// One tag's accepted writes, for `max_rate` and `cooldown`.
#[derive(Debug, Default)]
struct Recent {
    at: VecDeque<u64>,
}

/// The command guard of one edge node.
#[derive(Debug)]
pub struct Guard {
    cfg: GuardConfig,
    command_lock: bool,
    recent: HashMap<(Option<String>, String), Recent>,
}

impl Guard {
    pub fn new(cfg: GuardConfig) -> Guard {
        Guard {
            cfg,
            command_lock: false,
            recent: HashMap::new(),
        }
    }

    /// New settings (a reload); the lock set by command and the tags'
    /// recent writes are kept.
    pub fn reconfigure(&mut self, cfg: GuardConfig) {
        self.cfg = cfg;
    }

    /// Whether writes are locked, and by whom (the file first).
    pub fn locked(&self) -> Option<LockedBy> {
        if self.cfg.write_lock {
            Some(LockedBy::File)
        } else if self.command_lock {
            Some(LockedBy::Command)
        } else {
            None
        }
    }

    /// `Node Control/Write Lock` by NCMD. Setting always works (an
    /// emergency stop needs no permission); clearing may be forbidden.
    pub fn set_lock_by_command(&mut self, locked: bool) -> Result<(), Refusal> {
        if locked {
            self.command_lock = true;
            return Ok(());
        }
        if self.cfg.write_lock {
            return Err(Refusal::FileLock);
        }
        if !self.cfg.unlock_by_command {
            return Err(Refusal::UnlockForbidden);
        }
        self.command_lock = false;
        Ok(())
    }

    /// Decides one write of `value` to `device`/`metric` (`device` None: a
    /// node metric). `tag` is the tag's guard when it is configured
    /// writable (None: not writable); `declared` the datatype of its birth
    /// (None: not declared). An accepted write counts toward the tag's rate.
    pub fn decide(
        &mut self,
        now_ms: u64,
        device: Option<&str>,
        metric: &str,
        declared: Option<DataType>,
        tag: Option<&TagGuard>,
        value: Option<&Value>,
    ) -> Result<(), Refusal> {
        if !self.cfg.enabled {
            return Err(Refusal::Disabled);
        }
        if let Some(by) = self.locked() {
            return Err(Refusal::WriteLocked(by));
        }
        let declared = declared.ok_or(Refusal::Undeclared)?;
        let tag = tag.ok_or(Refusal::NotWritable)?;
        let value = value.ok_or(Refusal::NoValue)?;
        check_value(declared, value, tag)?;
        let key = (device.map(str::to_string), metric.to_string());
        let recent = self.recent.entry(key).or_default();
        while recent.at.front().is_some_and(|&t| now_ms.saturating_sub(t) >= 60_000) {
            recent.at.pop_front();
        }
        if let Some(&last) = recent.at.back() {
            let cooldown = tag.cooldown.as_millis() as u64;
            let since = now_ms.saturating_sub(last);
            if since < cooldown {
                return Err(Refusal::CoolingDown {
                    remaining_ms: cooldown - since,
                });
            }
        }
        if let Some(max_rate) = tag.max_rate {
            if recent.at.len() >= max_rate as usize {
                return Err(Refusal::TooFast { max_rate });
            }
        }
        recent.at.push_back(now_ms);
        // Only what max_rate and cooldown can look at is kept.
        let keep = tag.max_rate.map_or(1, |r| r.max(1) as usize);
        while recent.at.len() > keep {
            recent.at.pop_front();
        }
        Ok(())
    }
}

/// The value's kind against the declared datatype, then whether it fits
/// the type ([`Value::in_datatype`]), then the tag's `min`, `max` and
/// `allowed`.
pub fn check_value(declared: DataType, value: &Value, tag: &TagGuard) -> Result<(), Refusal> {
    let same_kind = match declared {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => value.as_i128().is_some(),
        DataType::Float | DataType::Double => matches!(value, Value::Float(_) | Value::Double(_)),
        DataType::Boolean => matches!(value, Value::Boolean(_)),
        DataType::String | DataType::Text => matches!(value, Value::String(_) | Value::Text(_)),
        // Other datatypes (arrays, DateTime, DataSet, …) are not written by
        // this version: only the same datatype could be meant.
        _ => value.datatype() == declared,
    };
    if !same_kind {
        return Err(Refusal::WrongType {
            declared,
            got: value.datatype(),
        });
    }
    if value.in_datatype(declared).is_none() {
        return Err(Refusal::DoesNotFit {
            declared,
            value: shown(value),
        });
    }
    if let Some(x) = value.as_f64() {
        if let Some(min) = tag.min.filter(|&m| x < m) {
            return Err(Refusal::BelowMin { value: x, min });
        }
        if let Some(max) = tag.max.filter(|&m| x > m) {
            return Err(Refusal::AboveMax { value: x, max });
        }
    }
    if !tag.allowed.is_empty() && !tag.allowed.iter().any(|a| listed(value, a)) {
        return Err(Refusal::NotAllowed {
            value: shown(value),
            allowed: tag
                .allowed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(())
}

/// Whether `allowed` lists `value` (an integer listed matches a float of
/// that value, as `allowed = [1, 2]` on a Float tag means).
fn listed(value: &Value, allowed: &Allowed) -> bool {
    match (value, allowed) {
        (Value::Boolean(x), Allowed::Bool(y)) => x == y,
        (Value::String(x) | Value::Text(x), Allowed::Text(y)) => x == y,
        (Value::Float(_) | Value::Double(_), Allowed::Float(y)) => value.as_f64() == Some(*y),
        (Value::Float(_) | Value::Double(_), Allowed::Int(y)) => value.as_f64() == Some(*y as f64),
        (_, Allowed::Int(y)) => value.as_i128() == Some(i128::from(*y)),
        _ => false,
    }
}

/// A value for an audit line (long strings cut).
pub fn shown(v: &Value) -> String {
    let s = match v {
        Value::String(s) | Value::Text(s) => format!("{s:?}"),
        Value::Boolean(b) => b.to_string(),
        Value::Float(x) => x.to_string(),
        Value::Double(x) => x.to_string(),
        other => other
            .as_i128()
            .map_or_else(|| format!("a {} value", other.datatype()), |i| i.to_string()),
    };
    if s.len() > 80 {
        let cut = (0..=77).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        format!("{}...", &s[..cut])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(GuardConfig {
            enabled: true,
            write_lock: false,
            unlock_by_command: true,
        })
    }

    fn tag() -> TagGuard {
        TagGuard::default()
    }

    fn write(g: &mut Guard, now: u64, t: &TagGuard, declared: DataType, v: Value) -> Result<(), Refusal> {
        g.decide(now, Some("press"), "Setpoint", Some(declared), Some(t), Some(&v))
    }

    #[test]
    fn disabled_refuses_every_write_even_a_valid_one() {
        let mut g = Guard::new(GuardConfig {
            enabled: false,
            write_lock: false,
            unlock_by_command: true,
        });
        assert_eq!(
            write(&mut g, 0, &tag(), DataType::Int32, Value::Int32(1)),
            Err(Refusal::Disabled)
        );
    }

    #[test]
    fn only_declared_writable_tags_with_a_value_are_written() {
        let mut g = guard();
        let v = Value::Int32(1);
        assert_eq!(
            g.decide(0, None, "x", None, Some(&tag()), Some(&v)),
            Err(Refusal::Undeclared)
        );
        assert_eq!(
            g.decide(0, None, "x", Some(DataType::Int32), None, Some(&v)),
            Err(Refusal::NotWritable)
        );
        assert_eq!(
            g.decide(0, None, "x", Some(DataType::Int32), Some(&tag()), None),
            Err(Refusal::NoValue)
        );
        assert_eq!(
            g.decide(0, None, "x", Some(DataType::Int32), Some(&tag()), Some(&v)),
            Ok(())
        );
    }

    #[test]
    fn values_are_never_converted_between_kinds() {
        let mut g = guard();
        let t = tag();
        let refused = |r: Result<(), Refusal>| matches!(r, Err(Refusal::WrongType { .. }));
        assert!(refused(write(
            &mut g,
            0,
            &t,
            DataType::Int32,
            Value::String("12".into())
        )));
        assert!(refused(write(&mut g, 0, &t, DataType::Int16, Value::Double(3.7))));
        assert!(refused(write(&mut g, 0, &t, DataType::Int16, Value::Double(3.0))));
        assert!(refused(write(&mut g, 0, &t, DataType::Float, Value::Int32(3))));
        assert!(refused(write(&mut g, 0, &t, DataType::Boolean, Value::Int32(1))));
        assert!(refused(write(&mut g, 0, &t, DataType::String, Value::Int32(1))));
        assert!(refused(write(&mut g, 0, &t, DataType::FloatArray, Value::Float(1.0))));
        let e = write(&mut g, 0, &t, DataType::Int32, Value::String("12".into())).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "a String value for a Int32 tag: values are not converted"
        );
    }

    #[test]
    fn an_integer_of_another_width_is_accepted_only_when_it_fits() {
        let mut g = guard();
        let t = tag();
        assert_eq!(write(&mut g, 0, &t, DataType::Int16, Value::Int64(-32768)), Ok(()));
        assert_eq!(
            write(&mut g, 0, &t, DataType::Int16, Value::Int32(40_000)),
            Err(Refusal::DoesNotFit {
                declared: DataType::Int16,
                value: "40000".into()
            })
        );
        assert!(write(&mut g, 0, &t, DataType::UInt8, Value::Int8(-1)).is_err());
        assert_eq!(write(&mut g, 0, &t, DataType::UInt64, Value::UInt64(u64::MAX)), Ok(()));
        assert!(write(&mut g, 0, &t, DataType::Int64, Value::UInt64(u64::MAX)).is_err());
        assert!(write(&mut g, 0, &t, DataType::Float, Value::Double(1e300)).is_err());
        assert!(write(&mut g, 0, &t, DataType::Double, Value::Double(f64::NAN)).is_err());
        assert_eq!(write(&mut g, 0, &t, DataType::Float, Value::Double(2.5)), Ok(()));
    }

    #[test]
    fn min_max_and_allowed_bound_what_is_written() {
        let mut g = guard();
        let t = TagGuard {
            min: Some(0.0),
            max: Some(250.0),
            ..tag()
        };
        assert_eq!(write(&mut g, 0, &t, DataType::Float, Value::Float(250.0)), Ok(()));
        assert_eq!(
            write(&mut g, 0, &t, DataType::Float, Value::Float(250.5)),
            Err(Refusal::AboveMax {
                value: 250.5,
                max: 250.0
            })
        );
        assert_eq!(
            write(&mut g, 0, &t, DataType::Int32, Value::Int32(-1)),
            Err(Refusal::BelowMin { value: -1.0, min: 0.0 })
        );
        let modes = TagGuard {
            allowed: vec![Allowed::Int(1), Allowed::Int(2), Allowed::Int(5)],
            ..tag()
        };
        assert_eq!(write(&mut g, 0, &modes, DataType::Int16, Value::Int16(5)), Ok(()));
        let e = write(&mut g, 0, &modes, DataType::Int16, Value::Int16(3)).expect_err("not listed");
        assert_eq!(e.to_string(), "3 is not one of the tag's allowed values (1, 2, 5)");
        let recipes = TagGuard {
            allowed: vec![Allowed::Text("A".into()), Allowed::Text("B".into())],
            ..tag()
        };
        assert_eq!(
            write(&mut g, 0, &recipes, DataType::String, Value::String("B".into())),
            Ok(())
        );
        assert!(write(&mut g, 0, &recipes, DataType::String, Value::String("b".into())).is_err());
        // A tag that may only be switched off.
        let stop_only = TagGuard {
            allowed: vec![Allowed::Bool(false)],
            ..tag()
        };
        assert_eq!(
            write(&mut g, 0, &stop_only, DataType::Boolean, Value::Boolean(false)),
            Ok(())
        );
        assert!(write(&mut g, 0, &stop_only, DataType::Boolean, Value::Boolean(true)).is_err());
    }

    #[test]
    fn max_rate_and_cooldown_count_accepted_writes_per_tag() {
        let mut g = guard();
        let t = TagGuard {
            max_rate: Some(3),
            ..tag()
        };
        for i in 0..3 {
            assert_eq!(write(&mut g, i * 1000, &t, DataType::Int32, Value::Int32(1)), Ok(()));
        }
        assert_eq!(
            write(&mut g, 5_000, &t, DataType::Int32, Value::Int32(1)),
            Err(Refusal::TooFast { max_rate: 3 })
        );
        // Another tag has its own count.
        assert_eq!(
            g.decide(
                5_000,
                Some("press"),
                "Other",
                Some(DataType::Int32),
                Some(&t),
                Some(&Value::Int32(1))
            ),
            Ok(())
        );
        // A minute after the first write, one more fits.
        assert_eq!(write(&mut g, 60_000, &t, DataType::Int32, Value::Int32(1)), Ok(()));
        // Refused writes do not count: a flood of out-of-range values does not lock the tag out.
        let c = TagGuard {
            cooldown: Duration::from_secs(10),
            max: Some(10.0),
            ..tag()
        };
        for i in 0..100 {
            assert!(g
                .decide(i, None, "C", Some(DataType::Int32), Some(&c), Some(&Value::Int32(99)))
                .is_err());
        }
        assert_eq!(
            g.decide(100, None, "C", Some(DataType::Int32), Some(&c), Some(&Value::Int32(1))),
            Ok(())
        );
        assert_eq!(
            g.decide(
                5_100,
                None,
                "C",
                Some(DataType::Int32),
                Some(&c),
                Some(&Value::Int32(1))
            ),
            Err(Refusal::CoolingDown { remaining_ms: 5_000 })
        );
        assert_eq!(
            g.decide(
                10_100,
                None,
                "C",
                Some(DataType::Int32),
                Some(&c),
                Some(&Value::Int32(1))
            ),
            Ok(())
        );
    }

    #[test]
    fn the_write_lock_refuses_everything_and_only_its_setter_may_clear_it() {
        let mut g = guard();
        let t = tag();
        assert_eq!(g.set_lock_by_command(true), Ok(()));
        assert_eq!(
            write(&mut g, 0, &t, DataType::Int32, Value::Int32(1)),
            Err(Refusal::WriteLocked(LockedBy::Command))
        );
        assert_eq!(g.set_lock_by_command(false), Ok(()));
        assert_eq!(write(&mut g, 0, &t, DataType::Int32, Value::Int32(1)), Ok(()));
        // Clearing by command can be forbidden in the file.
        let mut strict = Guard::new(GuardConfig {
            enabled: true,
            write_lock: false,
            unlock_by_command: false,
        });
        strict.set_lock_by_command(true).expect("setting always works");
        assert_eq!(strict.set_lock_by_command(false), Err(Refusal::UnlockForbidden));
        assert_eq!(strict.locked(), Some(LockedBy::Command));
        // The file's lock is cleared only by the file (a reload).
        let mut file = Guard::new(GuardConfig {
            enabled: true,
            write_lock: true,
            unlock_by_command: true,
        });
        assert_eq!(file.set_lock_by_command(false), Err(Refusal::FileLock));
        assert_eq!(
            file.decide(0, None, "x", Some(DataType::Int32), Some(&t), Some(&Value::Int32(1))),
            Err(Refusal::WriteLocked(LockedBy::File))
        );
        file.reconfigure(GuardConfig {
            enabled: true,
            write_lock: false,
            unlock_by_command: true,
        });
        assert_eq!(file.locked(), None);
    }

    #[test]
    fn audit_values_are_short_and_quoted() {
        assert_eq!(shown(&Value::String("x".repeat(200))).len(), 80);
        assert_eq!(shown(&Value::String("a\"b".into())), "\"a\\\"b\"");
        assert_eq!(shown(&Value::UInt16(7)), "7");
        assert_eq!(shown(&Value::Int32Array(vec![1])), "a Int32Array value");
    }
}
