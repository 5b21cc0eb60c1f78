//! Time zones for shift calendars: the system's IANA database
//! (`/usr/share/zoneinfo`, TZif versions 1 to 4) read without a crate, so
//! that a plant's shifts follow its local time through daylight-saving
//! changes. Sans-IO: [`TimeZone::from_tzif`] takes the file's bytes.
//!
//! Invariants:
//! - Every size read from the file is bounded before anything is
//!   allocated (a TZif file is at most 64 KiB, counts are checked against
//!   what the file holds).
//! - Instants past the last transition follow the file's POSIX TZ footer
//!   (`CET-1CEST,M3.5.0,M10.5.0/3`), so a "slim" file and a "fat" one give
//!   the same answers. Julian-day rules (`Jn`, `n`) are refused by name.
//! - Local time to UTC is never guessed silently: a local time in a
//!   spring-forward gap is [`Local::Gap`] (with the instant the gap ends),
//!   one in a fall-back overlap is [`Local::Twice`] (both instants).

use thiserror::Error;

use crate::clock::days_from_civil;

/// Why a zone cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TzError {
    #[error("not a TZif file: {0}")]
    Format(String),
    #[error("the TZ rule {rule:?} is not supported: {why}")]
    Rule { rule: String, why: String },
}

/// One local time type: UTC offset (s) and whether it is daylight-saving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LocalType {
    offset: i32,
}

/// A POSIX TZ rule's transition date: month, week (1-5, 5 = last), weekday (0 = Sunday), at seconds local.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RuleDate {
    month: u32,
    week: u32,
    weekday: u32,
    time: i32,
}

/// The footer: standard offset, and the DST offset with its start and end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    std: i32,
    dst: Option<(i32, RuleDate, RuleDate)>,
}

/// A time zone: transitions (UTC seconds) and the offset from each on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeZone {
    /// (transition instant, offset from then on), ascending.
    transitions: Vec<(i64, i32)>,
    /// The offset before the first transition.
    initial: i32,
    rule: Option<Rule>,
}

/// What a local wall-clock time is in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    Single(i64),
    /// In a fall-back overlap: the earlier and the later instant.
    Twice(i64, i64),
    /// In a spring-forward gap (the time does not exist): the instant the gap ends.
    Gap(i64),
}

impl Local {
    /// The earliest instant the local time can mean (the gap's end for a
    /// time that does not exist).
    pub fn earliest(self) -> i64 {
        match self {
            Local::Single(t) | Local::Twice(t, _) | Local::Gap(t) => t,
        }
    }
}

const MAX_TZIF: usize = 64 * 1024;

fn be32(b: &[u8], at: usize) -> Result<i64, TzError> {
    b.get(at..at + 4)
        .map(|x| i64::from(i32::from_be_bytes([x[0], x[1], x[2], x[3]])))
        .ok_or_else(|| TzError::Format("cut short".into()))
}

fn be64(b: &[u8], at: usize) -> Result<i64, TzError> {
    b.get(at..at + 8)
        .map(|x| i64::from_be_bytes(x.try_into().expect("8 bytes")))
        .ok_or_else(|| TzError::Format("cut short".into()))
}

impl TimeZone {
    /// UTC: no offset ever.
    pub fn utc() -> TimeZone {
        TimeZone {
            transitions: Vec::new(),
            initial: 0,
            rule: None,
        }
    }

    /// Parses a TZif file.
    pub fn from_tzif(b: &[u8]) -> Result<TimeZone, TzError> {
        if b.len() > MAX_TZIF {
            return Err(TzError::Format(format!("{} bytes, over {MAX_TZIF}", b.len())));
        }
        let header = |at: usize| -> Result<[usize; 6], TzError> {
            if b.get(at..at + 4) != Some(b"TZif") {
                return Err(TzError::Format("no TZif magic".into()));
            }
            let mut counts = [0usize; 6];
            for (i, c) in counts.iter_mut().enumerate() {
                *c = usize::try_from(be32(b, at + 20 + 4 * i)?)
                    .map_err(|_| TzError::Format("a negative count".into()))?;
            }
            Ok(counts)
        };
        // isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt
        let v1 = header(0)?;
        let version = b[4];
        let v1_len = v1[3] * 5 + v1[4] * 6 + v1[5] + v1[2] * 8 + v1[1] + v1[0];
        let (at, counts, time_size) = if version >= b'2' {
            let at = 44 + v1_len;
            (at, header(at)?, 8)
        } else {
            (0, v1, 4)
        };
        let [isut, isstd, leap, timecnt, typecnt, charcnt] = counts;
        let data = at + 44;
        let need = timecnt * time_size + timecnt + typecnt * 6 + charcnt + leap * (time_size + 4) + isstd + isut;
        if typecnt == 0 || b.len() < data + need {
            return Err(TzError::Format("counts larger than the file".into()));
        }
        let mut types = Vec::with_capacity(typecnt);
        let types_at = data + timecnt * time_size + timecnt;
        for i in 0..typecnt {
            let offset = be32(b, types_at + 6 * i)? as i32;
            if offset.unsigned_abs() > 26 * 3600 {
                return Err(TzError::Format(format!("an offset of {offset} s")));
            }
            types.push(LocalType { offset });
        }
        let mut transitions = Vec::with_capacity(timecnt);
        for i in 0..timecnt {
            let t = if time_size == 8 {
                be64(b, data + 8 * i)?
            } else {
                be32(b, data + 4 * i)?
            };
            let idx = usize::from(b[data + timecnt * time_size + i]);
            let ty = types
                .get(idx)
                .ok_or_else(|| TzError::Format(format!("type {idx} of {typecnt}")))?;
            transitions.push((t, ty.offset));
        }
        if transitions.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(TzError::Format("transitions out of order".into()));
        }
        let rule = if version >= b'2' {
            let footer = &b[data + need..];
            let text = std::str::from_utf8(footer)
                .map_err(|_| TzError::Format("footer is not text".into()))?
                .trim_matches('\n');
            if text.is_empty() {
                None
            } else {
                Some(parse_rule(text)?)
            }
        } else {
            None
        };
        Ok(TimeZone {
            transitions,
            initial: types[0].offset,
            rule,
        })
    }

    /// The zone named `name` in the system's database.
    pub fn load(name: &str) -> Result<TimeZone, String> {
        if name == "UTC" || name == "Etc/UTC" {
            return Ok(TimeZone::utc());
        }
        if name.is_empty()
            || name.starts_with('/')
            || name.split('/').any(|p| p == ".." || p.is_empty())
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || "/_-+".contains(c))
        {
            return Err(format!(
                "'{name}' is not an IANA time zone name (e.g. \"Europe/Berlin\")"
            ));
        }
        let path = std::path::Path::new("/usr/share/zoneinfo").join(name);
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "unknown time zone '{name}' ({}: {e}; the tzdata package provides them)",
                path.display()
            )
        })?;
        TimeZone::from_tzif(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The UTC offset (s) at the instant `t` (Unix seconds).
    pub fn offset_at(&self, t: i64) -> i32 {
        match self.transitions.last() {
            Some(&(last, off)) if t >= last => self.rule.map_or(off, |r| r.offset_at(t)),
            None => self.rule.map_or(self.initial, |r| r.offset_at(t)),
            Some(_) => {
                let i = self.transitions.partition_point(|&(at, _)| at <= t);
                if i == 0 {
                    self.initial
                } else {
                    self.transitions[i - 1].1
                }
            }
        }
    }

    /// What the local wall-clock time `local` (seconds since 1970-01-01
    /// 00:00 local) is in UTC.
    pub fn to_utc(&self, local: i64) -> Local {
        // The offsets in force within a day of it are the only candidates.
        let mut offsets = vec![self.offset_at(local - 86_400), self.offset_at(local + 86_400)];
        offsets.dedup();
        let mut hits: Vec<i64> = offsets
            .iter()
            .map(|o| local - i64::from(*o))
            .filter(|&t| local - i64::from(self.offset_at(t)) == t)
            .collect();
        hits.sort_unstable();
        hits.dedup();
        match hits[..] {
            [t] => Local::Single(t),
            [a, b, ..] => Local::Twice(a, b),
            [] => {
                // In a gap: the first instant whose local time is past it
                // (local time rises with the instant, but for overlaps).
                let f = |t: i64| t + i64::from(self.offset_at(t));
                let (mut lo, mut hi) = (local - 26 * 3600, local + 26 * 3600);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if f(mid) > local {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                Local::Gap(hi)
            }
        }
    }
}

impl Rule {
    fn offset_at(&self, t: i64) -> i32 {
        let Some((dst, start, end)) = self.dst else {
            return self.std;
        };
        let (year, _, _) = crate::clock::civil_from_days((t + i64::from(self.std)).div_euclid(86_400));
        // Start is given in standard time, end in daylight time.
        let s = start.instant(year) - i64::from(self.std);
        let e = end.instant(year) - i64::from(dst);
        let in_dst = if s < e { t >= s && t < e } else { t >= s || t < e };
        if in_dst {
            dst
        } else {
            self.std
        }
    }
}

impl RuleDate {
    /// Local seconds since 1970 of this date in `year`.
    fn instant(&self, year: i64) -> i64 {
        let first = days_from_civil(year, i64::from(self.month), 1);
        // 1970-01-01 was a Thursday (4).
        let wd_first = (first + 4).rem_euclid(7);
        let mut day = first + (i64::from(self.weekday) - wd_first).rem_euclid(7) + 7 * (i64::from(self.week) - 1);
        let next_month = if self.month == 12 {
            days_from_civil(year + 1, 1, 1)
        } else {
            days_from_civil(year, i64::from(self.month) + 1, 1)
        };
        while day >= next_month {
            day -= 7;
        }
        day * 86_400 + i64::from(self.time)
    }
}

/// A POSIX TZ string: `STDoffset[DST[offset],start[/time],end[/time]]`.
fn parse_rule(text: &str) -> Result<Rule, TzError> {
    let bad = |why: &str| TzError::Rule {
        rule: text.to_string(),
        why: why.to_string(),
    };
    let mut s = text;
    let name = |s: &mut &str| -> Result<(), TzError> {
        if let Some(rest) = s.strip_prefix('<') {
            let end = rest.find('>').ok_or_else(|| bad("unclosed <name>"))?;
            *s = &rest[end + 1..];
        } else {
            let n = s.chars().take_while(|c| c.is_ascii_alphabetic()).count();
            if n < 3 {
                return Err(bad("a zone abbreviation of at least three letters"));
            }
            *s = &s[n..];
        }
        Ok(())
    };
    // [+-]hh[:mm[:ss]] → seconds.
    let time = |s: &mut &str| -> Result<i32, TzError> {
        let (sign, rest) = match s.as_bytes().first() {
            Some(b'-') => (-1, &s[1..]),
            Some(b'+') => (1, &s[1..]),
            _ => (1, *s),
        };
        let n = rest.chars().take_while(|c| c.is_ascii_digit() || *c == ':').count();
        let mut secs = 0i32;
        for (i, part) in rest[..n].split(':').enumerate() {
            let v: i32 = part.parse().map_err(|_| bad("a time as hh[:mm[:ss]]"))?;
            secs += v * [3600, 60, 1].get(i).copied().ok_or_else(|| bad("too many ':'"))?;
        }
        *s = &rest[n..];
        Ok(sign * secs)
    };
    name(&mut s)?;
    // POSIX offsets are west-positive: CET-1 is UTC+1.
    let std = -time(&mut s)?;
    if s.is_empty() {
        return Ok(Rule { std, dst: None });
    }
    name(&mut s)?;
    let dst = if s.starts_with(',') { std + 3600 } else { -time(&mut s)? };
    let date = |s: &mut &str| -> Result<RuleDate, TzError> {
        *s = s.strip_prefix(',').ok_or_else(|| bad("a ',' before each date"))?;
        let rest = s
            .strip_prefix('M')
            .ok_or_else(|| bad("only Mm.w.d dates are supported"))?;
        let n = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').count();
        let parts: Vec<u32> = rest[..n]
            .split('.')
            .map(|p| p.parse().map_err(|_| bad("Mm.w.d")))
            .collect::<Result<_, _>>()?;
        let [month, week, weekday] = parts[..] else {
            return Err(bad("Mm.w.d"));
        };
        if !(1..=12).contains(&month) || !(1..=5).contains(&week) || weekday > 6 {
            return Err(bad("Mm.w.d out of range"));
        }
        *s = &rest[n..];
        let time = if let Some(r) = s.strip_prefix('/') {
            *s = r;
            time(s)?
        } else {
            7200
        };
        Ok(RuleDate {
            month,
            week,
            weekday,
            time,
        })
    };
    let start = date(&mut s)?;
    let end = date(&mut s)?;
    if !s.is_empty() {
        return Err(bad("text after the end date"));
    }
    Ok(Rule {
        std,
        dst: Some((dst, start, end)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i64, m: i64, d: i64, h: i64, min: i64) -> i64 {
        days_from_civil(y, m, d) * 86_400 + h * 3600 + min * 60
    }

    fn berlin() -> TimeZone {
        TimeZone::load("Europe/Berlin").expect("tzdata installs it")
    }

    #[test]
    fn berlin_changes_at_the_dates_zdump_shows() {
        // zdump -v -c 2026,2027 Europe/Berlin: CEST from 2026-03-29 01:00 UTC to 2026-10-25 01:00 UTC.
        let tz = berlin();
        assert_eq!(tz.offset_at(utc(2026, 3, 29, 0, 59)), 3600);
        assert_eq!(tz.offset_at(utc(2026, 3, 29, 1, 0)), 7200);
        assert_eq!(tz.offset_at(utc(2026, 10, 25, 0, 59)), 7200);
        assert_eq!(tz.offset_at(utc(2026, 10, 25, 1, 0)), 3600);
        assert_eq!(tz.offset_at(utc(1990, 7, 1, 0, 0)), 7200);
    }

    #[test]
    fn the_footer_rule_agrees_with_the_transitions_and_carries_on_after_them() {
        let tz = berlin();
        let rule = tz.rule.expect("a footer");
        // Every transition of 2000..2037 in the file, by the rule alone.
        for &(t, off) in tz.transitions.iter().filter(|(t, _)| *t > utc(2000, 1, 1, 0, 0)) {
            assert_eq!(rule.offset_at(t), off, "at {t}");
            assert_ne!(rule.offset_at(t - 1), off, "just before {t}");
        }
        // Past the file's last transition (2037): the last Sunday of March 2050.
        assert_eq!(tz.offset_at(utc(2050, 3, 27, 0, 59)), 3600);
        assert_eq!(tz.offset_at(utc(2050, 3, 27, 1, 0)), 7200);
        // A southern zone (DST across the new year).
        let syd = TimeZone::load("Australia/Sydney").expect("tzdata");
        assert_eq!(syd.offset_at(utc(2060, 1, 15, 0, 0)), 11 * 3600);
        assert_eq!(syd.offset_at(utc(2060, 7, 15, 0, 0)), 10 * 3600);
    }

    #[test]
    fn local_times_in_a_gap_or_twice_are_said_so() {
        let tz = berlin();
        let local = |y, m, d, h, min| utc(y, m, d, h, min);
        assert_eq!(tz.to_utc(local(2026, 6, 1, 6, 0)), Local::Single(utc(2026, 6, 1, 4, 0)));
        // 02:30 on 29 March 2026 does not exist: the gap ends at 01:00 UTC (03:00 CEST).
        assert_eq!(tz.to_utc(local(2026, 3, 29, 2, 30)), Local::Gap(utc(2026, 3, 29, 1, 0)));
        // 02:30 on 25 October 2026 happens twice.
        assert_eq!(
            tz.to_utc(local(2026, 10, 25, 2, 30)),
            Local::Twice(utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30))
        );
        assert_eq!(TimeZone::utc().to_utc(1000), Local::Single(1000));
    }

    #[test]
    fn bad_names_and_bad_files_are_refused_by_name() {
        assert!(TimeZone::load("../../etc/passwd").unwrap_err().contains("not an IANA"));
        assert!(TimeZone::load("Mars/Olympus")
            .unwrap_err()
            .contains("unknown time zone 'Mars/Olympus'"));
        assert!(TimeZone::from_tzif(b"nope").is_err());
        let mut b = std::fs::read("/usr/share/zoneinfo/Europe/Berlin").expect("tzdata");
        b.truncate(100);
        assert!(TimeZone::from_tzif(&b).is_err());
        // Huge counts in the header are checked against the file.
        let mut b = std::fs::read("/usr/share/zoneinfo/Europe/Berlin").expect("tzdata");
        b[32..36].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(TimeZone::from_tzif(&b).is_err());
        assert!(matches!(parse_rule("ABC-1DEF,J60,J300"), Err(TzError::Rule { .. })));
    }
}
