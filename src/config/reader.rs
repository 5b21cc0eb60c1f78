//! A reader over a spanned TOML tree that keeps going after an error, so a
//! technician sees every problem in the file at once, each with its dotted
//! key path and `line:column`.
//!
//! Invariants: every key a table holds is either read or reported as unknown
//! (with a "did you mean" when one allowed key is close); a value of the wrong
//! type is reported at the value's own position; nothing here panics on input.

pub use crate::units::{parse_bytes, parse_duration};
use std::cell::RefCell;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{ConfigError, ConfigErrors};

/// Shared state of one read: the source (for line:column) and the errors so far.
pub struct Ctx<'s> {
    src: &'s str,
    file: String,
    errors: RefCell<Vec<ConfigError>>,
}

impl<'s> Ctx<'s> {
    pub fn new(file: &str, src: &'s str) -> Ctx<'s> {
        Ctx {
            src,
            file: file.to_string(),
            errors: RefCell::new(Vec::new()),
        }
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let before = &self.src[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    /// Records an error at a byte offset.
    pub fn error(&self, offset: usize, path: &str, message: impl Into<String>) {
        let (line, column) = self.line_col(offset);
        self.errors.borrow_mut().push(ConfigError {
            file: self.file.clone(),
            line,
            column,
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.borrow().is_empty()
    }

    /// All errors recorded, in file order, or `Ok` when there were none.
    pub fn finish(self) -> Result<(), ConfigErrors> {
        let mut errors = self.errors.into_inner();
        if errors.is_empty() {
            return Ok(());
        }
        errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(errors))
    }

    /// Parses the document; syntax errors are recorded and give `None`.
    pub fn parse(&self) -> Option<Spanned<DeTable<'s>>> {
        let (doc, errors) = DeTable::parse_recoverable(self.src);
        for e in &errors {
            let at = e.span().map_or(0, |s| s.start);
            self.error(at, "(syntax)", e.message().trim().to_string());
        }
        errors.is_empty().then_some(doc)
    }
}

/// One TOML table being read: tracks which keys were used.
pub struct Table<'c, 's, 't> {
    ctx: &'c Ctx<'s>,
    path: String,
    table: &'t DeTable<'s>,
    at: usize,
    used: RefCell<HashSet<String>>,
}

/// One item of a list of values.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    v.type_str()
}

impl<'c, 's, 't> Table<'c, 's, 't> {
    pub fn new(ctx: &'c Ctx<'s>, path: &str, table: &'t DeTable<'s>, at: usize) -> Self {
        Table {
            ctx,
            path: path.to_string(),
            table,
            at,
            used: RefCell::new(HashSet::new()),
        }
    }

    pub fn ctx(&self) -> &'c Ctx<'s> {
        self.ctx
    }

    /// The dotted path of `key` in this table.
    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'t Spanned<DeValue<'s>>> {
        self.used.borrow_mut().insert(key.to_string());
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    fn wrong_type(&self, key: &str, v: &Spanned<DeValue<'_>>, expected: &str) {
        self.ctx.error(
            v.span().start,
            &self.key_path(key),
            format!("expected {expected}, found {}", type_name(v.get_ref())),
        );
    }

    /// Reports a missing required key at the table's position.
    pub fn missing(&self, key: &str, what: &str) {
        self.ctx
            .error(self.at, &self.key_path(key), format!("is required ({what})"));
    }

    /// Records an error about `key`'s value.
    pub fn invalid(&self, key: &str, message: impl Into<String>) {
        let at = self.get(key).map_or(self.at, |v| v.span().start);
        self.ctx.error(at, &self.key_path(key), message);
    }

    /// Position of `key`'s value (or of the table when absent).
    pub fn offset_of(&self, key: &str) -> usize {
        self.get(key).map_or(self.at, |v| v.span().start)
    }

    /// Whether `key` is present (without marking it used).
    pub fn is_present(&self, key: &str) -> bool {
        self.table.iter().any(|(k, _)| k.get_ref().as_ref() == key)
    }

    /// Whether `key` is present and holds a string.
    pub fn is_str(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| v.get_ref().as_str().is_some())
    }

    /// The string at `key` if there is one, without reporting anything
    /// (for a check across tables whose own reading reports the errors).
    pub fn peek_str(&self, key: &str) -> Option<&'t str> {
        self.get(key)?.get_ref().as_str()
    }

    pub fn opt_str(&self, key: &str) -> Option<String> {
        let v = self.get(key)?;
        match v.get_ref().as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.wrong_type(key, v, "a string");
                None
            }
        }
    }

    /// A list of strings (`["a", "b"]`).
    pub fn opt_str_list(&self, key: &str) -> Option<Vec<String>> {
        let v = self.get(key)?;
        let Some(items) = v.get_ref().as_array() else {
            self.wrong_type(key, v, "a list of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            match item.get_ref().as_str() {
                Some(s) => out.push(s.to_string()),
                None => {
                    self.wrong_type(key, item, "a list of strings");
                    return None;
                }
            }
        }
        Some(out)
    }

    /// A list of scalars (`[1, 2]`, `["A", "B"]`, `[false]`); an item of
    /// another kind (a table, a date, a nested list) is an error at that item.
    pub fn opt_scalar_list(&self, key: &str) -> Option<Vec<Scalar>> {
        let v = self.get(key)?;
        let Some(items) = v.get_ref().as_array() else {
            self.wrong_type(key, v, "a list of values");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            let d = item.get_ref();
            let scalar = if let Some(b) = d.as_bool() {
                Some(Scalar::Bool(b))
            } else if let Some(s) = d.as_str() {
                Some(Scalar::Str(s.to_string()))
            } else if let Some(i) = d.as_integer() {
                i64::from_str_radix(i.as_str(), i.radix()).ok().map(Scalar::Int)
            } else if let Some(f) = d.as_float() {
                f.as_str()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .map(Scalar::Float)
            } else {
                None
            };
            match scalar {
                Some(x) => out.push(x),
                None => {
                    self.wrong_type(key, item, "a list of numbers, strings or booleans");
                    return None;
                }
            }
        }
        Some(out)
    }

    pub fn req_str(&self, key: &str, what: &str) -> Option<String> {
        if self.get(key).is_none() {
            self.missing(key, what);
            return None;
        }
        self.opt_str(key)
    }

    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        let Some(v) = self.get(key) else { return default };
        v.get_ref().as_bool().unwrap_or_else(|| {
            self.wrong_type(key, v, "true or false");
            default
        })
    }

    pub fn opt_i64(&self, key: &str) -> Option<i64> {
        let v = self.get(key)?;
        match v.get_ref().as_integer() {
            Some(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.ctx
                        .error(v.span().start, &self.key_path(key), "integer out of range");
                    None
                }
            },
            None => {
                self.wrong_type(key, v, "an integer");
                None
            }
        }
    }

    /// An integer in `range`, or `default` when absent.
    pub fn int_in(&self, key: &str, default: i64, range: std::ops::RangeInclusive<i64>) -> i64 {
        match self.opt_i64(key) {
            Some(n) if range.contains(&n) => n,
            Some(n) => {
                self.invalid(key, format!("{n} is outside {}..={}", range.start(), range.end()));
                default
            }
            None => default,
        }
    }

    /// A number (integer or float).
    pub fn opt_f64(&self, key: &str) -> Option<f64> {
        let v = self.get(key)?;
        if let Some(f) = v.get_ref().as_float() {
            return match f.as_str().parse::<f64>() {
                Ok(x) if x.is_finite() => Some(x),
                _ => {
                    self.ctx
                        .error(v.span().start, &self.key_path(key), "must be a finite number");
                    None
                }
            };
        }
        if v.get_ref().as_integer().is_some() {
            return self.opt_i64(key).map(|i| i as f64);
        }
        self.wrong_type(key, v, "a number");
        None
    }

    /// A duration: an integer number of seconds, or a string `500ms`, `30s`, `5m`, `1h`.
    pub fn duration_or(&self, key: &str, default: Duration) -> Duration {
        let Some(v) = self.get(key) else { return default };
        if v.get_ref().as_integer().is_some() {
            return match self.opt_i64(key) {
                Some(n) if n >= 0 => Duration::from_secs(n as u64),
                Some(_) => {
                    self.invalid(key, "a duration cannot be negative");
                    default
                }
                None => default,
            };
        }
        match v.get_ref().as_str() {
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                self.ctx.error(v.span().start, &self.key_path(key), e);
                default
            }),
            None => {
                self.wrong_type(
                    key,
                    v,
                    "a duration like \"500ms\", \"30s\", \"5m\" or a number of seconds",
                );
                default
            }
        }
    }

    /// An optional duration (see [`duration_or`](Self::duration_or)).
    /// `None` when absent or invalid (an invalid one is reported once).
    pub fn opt_duration(&self, key: &str) -> Option<Duration> {
        self.get(key)?;
        let before = self.ctx.errors.borrow().len();
        let d = self.duration_or(key, Duration::ZERO);
        (self.ctx.errors.borrow().len() == before).then_some(d)
    }

    /// A size in bytes: an integer, or a string `64KiB`, `256MiB`, `1GiB`, `10MB`.
    pub fn bytes_or(&self, key: &str, default: u64) -> u64 {
        let Some(v) = self.get(key) else { return default };
        if v.get_ref().as_integer().is_some() {
            return match self.opt_i64(key) {
                Some(n) if n >= 0 => n as u64,
                Some(_) => {
                    self.invalid(key, "a size cannot be negative");
                    default
                }
                None => default,
            };
        }
        match v.get_ref().as_str() {
            Some(s) => parse_bytes(s).unwrap_or_else(|e| {
                self.ctx.error(v.span().start, &self.key_path(key), e);
                default
            }),
            None => {
                self.wrong_type(key, v, "a size like \"256MiB\" or a number of bytes");
                default
            }
        }
    }

    pub fn opt_path(&self, key: &str) -> Option<PathBuf> {
        self.opt_str(key).map(PathBuf::from)
    }

    /// A sub-table (`[a.b]` or `b = { … }`).
    pub fn opt_table(&self, key: &str) -> Option<Table<'c, 's, 't>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Table::new(self.ctx, &self.key_path(key), t, v.span().start)),
            _ => {
                self.wrong_type(key, v, "a table");
                None
            }
        }
    }

    /// An array of tables (`[[a.b]]`), each with its path `a.b[i]`.
    pub fn tables(&self, key: &str) -> Vec<Table<'c, 's, 't>> {
        let Some(v) = self.get(key) else { return Vec::new() };
        let Some(items) = v.get_ref().as_array() else {
            self.wrong_type(key, v, "an array of tables");
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match item.get_ref() {
                DeValue::Table(t) => Some(Table::new(
                    self.ctx,
                    &format!("{}[{i}]", self.key_path(key)),
                    t,
                    item.span().start,
                )),
                _ => {
                    self.ctx.error(
                        item.span().start,
                        &format!("{}[{i}]", self.key_path(key)),
                        format!("expected a table, found {}", type_name(item.get_ref())),
                    );
                    None
                }
            })
            .collect()
    }

    /// Every (key, value) of this table, for maps with free-form keys.
    pub fn entries(&self) -> Vec<(String, usize, &'t Spanned<DeValue<'s>>)> {
        self.table
            .iter()
            .map(|(k, v)| {
                self.used.borrow_mut().insert(k.get_ref().to_string());
                (k.get_ref().to_string(), k.span().start, v)
            })
            .collect()
    }

    /// Reports keys that were never read as unknown, naming a close allowed one.
    pub fn finish(&self, allowed: &[&str]) {
        let used = self.used.borrow().clone();
        for (k, _) in self.table.iter() {
            let key = k.get_ref().as_ref();
            if used.contains(key) {
                continue;
            }
            let hint = allowed
                .iter()
                .filter(|a| edit_distance(a, key) <= 2)
                .min_by_key(|a| edit_distance(a, key))
                .map(|a| format!(" (did you mean `{a}`?)"))
                .unwrap_or_default();
            self.ctx.error(
                k.span().start,
                &self.key_path(key),
                format!("unknown key{hint}; allowed here: {}", allowed.join(", ")),
            );
        }
    }
}

/// Levenshtein distance, for "did you mean" hints on short keys.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn sizes_accept_binary_and_decimal_units() {
        assert_eq!(parse_bytes("256MiB"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("3 bananas").is_err());
    }

    #[test]
    fn edit_distance_finds_typos() {
        assert_eq!(edit_distance("deadband", "deadbnad"), 2);
        assert_eq!(edit_distance("host", "host"), 0);
    }
}
