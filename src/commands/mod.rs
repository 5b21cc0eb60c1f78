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

use crate::sparkplug::{DataType, Metric, PropertySet, PropertyValue, Value};

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
    #[error("the device is offline")]
    DeviceOffline,
    #[error("a write to this device is already waiting ({0} queued): try again")]
    Busy(usize),
    #[error("Node Control/Reboot is not enabled (commands.reboot = false)")]
    RebootDisabled,
    /// A node-control command the session refused (e.g. too soon after a birth).
    #[error("{0}")]
    Session(String),
    #[error("the audit file could not record the write ({0}): nothing is written without its audit line")]
    AuditUnavailable(String),
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

/// The NCMD metric that asks for a restart of the service (Boolean true),
/// honoured only with `[commands] reboot = true`; never a reboot of the box.
pub const REBOOT_METRIC: &str = "Node Control/Reboot";

/// The DDATA metric property that says how a write ended: `confirmed`,
/// `failed` or `refused` (String).
pub const OUTCOME_PROPERTY: &str = "writeOutcome";
/// The host's id for the write, echoed (String): the command metric's own
/// `writeRequest` property, or else its timestamp in ms.
pub const REQUEST_PROPERTY: &str = "writeRequest";
/// Why a write failed or was refused (String; absent when confirmed).
pub const REASON_PROPERTY: &str = "writeReason";

/// The host's id for one metric of a command (see [`REQUEST_PROPERTY`]),
/// bounded to 128 bytes.
pub fn request_id(m: &Metric) -> String {
    let given = m
        .properties
        .as_ref()
        .and_then(|p| match &p.get(REQUEST_PROPERTY)?.value {
            Some(Value::String(s)) | Some(Value::Text(s)) => Some(s.clone()),
            _ => None,
        });
    let mut id = given.unwrap_or_else(|| m.timestamp.map_or_else(String::new, |t| t.to_string()));
    if id.len() > 128 {
        let cut = (0..=128).rev().find(|&i| id.is_char_boundary(i)).unwrap_or(0);
        id.truncate(cut);
    }
    id
}

/// A write the guard accepted, on its way to the PLC and back: what the
/// audit and the outcome's DDATA say of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    pub device: String,
    pub metric: String,
    /// The tag's position in the device's declarations.
    pub index: usize,
    /// The value the node last reported (None: null or never read).
    pub old: Option<Value>,
    /// The value to write, in the tag's declared datatype.
    pub new: Value,
    pub request: String,
    pub requested_at: u64,
}

/// How one metric of a command ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A node-control command was carried out (the words say what).
    Applied(String),
    /// Written, and read back equal within `confirm_timeout`.
    Confirmed,
    /// Written (or tried) but not read back equal in time: the reason.
    Failed(String),
    Refused(Refusal),
}

impl Outcome {
    /// The word for the audit, the DDATA property and `/metrics`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Applied(_) => "applied",
            Outcome::Confirmed => "confirmed",
            Outcome::Failed(_) => "failed",
            Outcome::Refused(_) => "refused",
        }
    }

    /// The reason (failed, refused) or what was done (applied).
    pub fn reason(&self) -> Option<String> {
        match self {
            Outcome::Applied(what) | Outcome::Failed(what) => Some(what.clone()),
            Outcome::Confirmed => None,
            Outcome::Refused(r) => Some(r.to_string()),
        }
    }

    /// The properties of the DDATA metric that reports it.
    pub fn properties(&self, request: &str) -> PropertySet {
        let mut p = PropertySet::default();
        let text = |s: &str| PropertyValue::new(Value::String(s.to_string()));
        p.set(OUTCOME_PROPERTY, text(self.label()));
        p.set(REQUEST_PROPERTY, text(request));
        if let Some(reason) = self.reason() {
            p.set(REASON_PROPERTY, text(&reason));
        }
        p
    }
}

/// One line of the audit file (JSON): every command metric, accepted or
/// refused, with the values as the audit shows them ([`shown`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    /// When it was decided or ended, RFC 3339 UTC.
    pub at: String,
    /// `NCMD` or `DCMD`.
    pub command: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub metric: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request: String,
}

impl AuditEntry {
    /// The entry as one line, newline included.
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"unencodable\":\"{e}\"}}"));
        s.push('\n');
        s
    }
}

/// How many refusals a minute the audit itemises; a flood beyond that is
/// summed up in one line, so refused commands cannot rotate the record of
/// accepted writes away. Accepted writes and node control are always
/// itemised. Sans-IO: the caller passes `now`.
#[derive(Debug)]
pub struct AuditBudget {
    per_minute: u32,
    minute: u64,
    used: u32,
    held: u64,
}

impl AuditBudget {
    pub fn new(per_minute: u32) -> AuditBudget {
        AuditBudget {
            per_minute,
            minute: 0,
            used: 0,
            held: 0,
        }
    }

    /// Once the minute of held-back refusals is over: how many there were
    /// (for one summary line), and the budget starts again.
    pub fn roll(&mut self, now_ms: u64) -> Option<u64> {
        let minute = now_ms / 60_000;
        if minute == self.minute {
            return None;
        }
        let held = std::mem::take(&mut self.held);
        (self.minute, self.used) = (minute, 0);
        (held > 0).then_some(held)
    }

    /// Whether an entry with `outcome` is itemised at `now_ms` (refusals
    /// within the budget, everything else always). Call [`roll`](Self::roll) first.
    pub fn itemise(&mut self, outcome: &Outcome) -> bool {
        if !matches!(outcome, Outcome::Refused(_)) {
            return true;
        }
        if self.used < self.per_minute {
            self.used += 1;
            true
        } else {
            self.held += 1;
            false
        }
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
    #[test]
    fn the_outcome_travels_as_string_properties_with_the_hosts_request_id() {
        let mut m = Metric::new("Setpoint", Value::Int32(5), 1_700_000_000_000);
        assert_eq!(request_id(&m), "1700000000000", "the timestamp without a property");
        let mut p = PropertySet::default();
        p.set(REQUEST_PROPERTY, PropertyValue::new(Value::String("audit-42".into())));
        m.properties = Some(p);
        assert_eq!(request_id(&m), "audit-42");
        let failed = Outcome::Failed("read back 3, not 5".into()).properties("audit-42");
        let get = |p: &PropertySet, k: &str| p.get(k).and_then(|v| v.value.clone());
        assert_eq!(get(&failed, OUTCOME_PROPERTY), Some(Value::String("failed".into())));
        assert_eq!(get(&failed, REQUEST_PROPERTY), Some(Value::String("audit-42".into())));
        assert_eq!(
            get(&failed, REASON_PROPERTY),
            Some(Value::String("read back 3, not 5".into()))
        );
        let ok = Outcome::Confirmed.properties("x");
        assert_eq!(get(&ok, OUTCOME_PROPERTY), Some(Value::String("confirmed".into())));
        assert_eq!(ok.get(REASON_PROPERTY), None);
        let long = "é".repeat(100);
        let mut p = PropertySet::default();
        p.set(REQUEST_PROPERTY, PropertyValue::new(Value::String(long)));
        m.properties = Some(p);
        assert!(request_id(&m).len() <= 128, "bounded, on a char boundary");
    }

    #[test]
    fn a_flood_of_refusals_is_summed_up_but_accepted_writes_are_always_itemised() {
        let mut b = AuditBudget::new(3);
        let refused = Outcome::Refused(Refusal::Disabled);
        let t0 = 60_000 * 1000;
        assert_eq!(b.roll(t0), None);
        let itemised = (0..10).filter(|_| b.itemise(&refused)).count();
        assert_eq!(itemised, 3);
        assert!(b.itemise(&Outcome::Confirmed));
        assert!(b.itemise(&Outcome::Failed("x".into())));
        assert_eq!(b.roll(t0 + 59_999), None, "the same minute");
        assert_eq!(b.roll(t0 + 60_000), Some(7), "the next minute sums the last one up");
        assert!(b.itemise(&refused), "and itemises again");
        assert_eq!(b.roll(t0 + 120_000), None);
    }

    #[test]
    fn an_audit_line_is_one_json_object_with_the_old_and_new_values() {
        let e = AuditEntry {
            at: "2026-11-30T00:00:00.000Z".into(),
            command: "DCMD",
            device: Some("press".into()),
            metric: "Setpoint".into(),
            old: Some("3".into()),
            new: Some("5".into()),
            outcome: "confirmed",
            reason: None,
            request: "audit-1".into(),
        };
        let line = e.line();
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["device"], "press");
        assert_eq!(v["old"], "3");
        assert_eq!(v["new"], "5");
        assert_eq!(v["outcome"], "confirmed");
        assert!(v.get("reason").is_none());
    }
}
