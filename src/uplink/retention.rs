//! Retention: how long each class of rows is kept, the time partitions
//! that hold them, and what to create and drop at a given `now` — the
//! sans-IO core; the backends execute its answers (PostgreSQL with
//! declarative partitions, SQL Server with bounded batched deletes).
//!
//! Invariants:
//! - Periods are UTC and half-open `[lo, hi)`: a day, an ISO week (from
//!   Monday) for raw messages and facts, a calendar month for rollups.
//! - A row is written only into a period whose partition exists: a writer
//!   asks [`Retention::fate`] first. A row already past its class's
//!   retention is not written (counted as expired: it would be dropped at
//!   the next run anyway); a row further ahead of `now` than `horizon` is
//!   quarantined, because a clock years off would otherwise make a
//!   partition per sample.
//! - A partition is dropped only once all of it is older than the
//!   retention by [`GRACE_MS`] as well, so a writer that accepted a row a
//!   moment ago still finds its partition; nothing younger is ever dropped.
//! - `None` as a retention means forever: nothing of that class is dropped.

use std::time::Duration;

use super::rows::{prefix, storable, Batch, FactRow, QuarantineRow};
use crate::clock::{civil_from_days, days_from_civil};

const DAY_MS: i64 = 86_400_000;

/// How much older than its retention a whole partition must be before it
/// is dropped (writers decide a row's fate on their own clock reading).
pub const GRACE_MS: i64 = 3_600_000;

/// The length of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Day,
    Week,
    Month,
}

impl Span {
    /// The period `[lo, hi)` (ms, UTC) that holds `ts_ms`.
    pub fn period(self, ts_ms: i64) -> (i64, i64) {
        let day = ts_ms.div_euclid(DAY_MS);
        match self {
            Span::Day => (day * DAY_MS, (day + 1) * DAY_MS),
            Span::Week => {
                // 1970-01-01 was a Thursday: Monday is 3 days before.
                let monday = day - (day + 3).rem_euclid(7);
                (monday * DAY_MS, (monday + 7) * DAY_MS)
            }
            Span::Month => {
                let (y, m, _) = civil_from_days(day);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (days_from_civil(y, m, 1) * DAY_MS, days_from_civil(ny, nm, 1) * DAY_MS)
            }
        }
    }

    /// A partition's name suffix for the period starting at `lo`:
    /// `20261130` (day, week) or `202611` (month).
    pub fn suffix(self, lo: i64) -> String {
        let (y, m, d) = civil_from_days(lo.div_euclid(DAY_MS));
        match self {
            Span::Day | Span::Week => format!("{y:04}{m:02}{d:02}"),
            Span::Month => format!("{y:04}{m:02}"),
        }
    }
}

/// A class of rows with a retention of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// `sp_event_raw`, by time of arrival.
    Raw,
    /// `sp_metric_fact`, by the sample's timestamp.
    Facts,
    /// Rollups of one resolution (`minute`, `hour`, `day`), by bucket.
    Rollup(&'static str),
}

/// Rows a retention delete removes per statement, each statement its own
/// transaction (SQL Server's retention; PostgreSQL's STALE marks).
pub const DELETE_BATCH: i64 = 5_000;

/// The rollup resolutions, as the rollup tables name them.
pub const RESOLUTIONS: [&str; 3] = ["minute", "hour", "day"];

/// What to do with a row of a class at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Into the partition of this period `[lo, hi)`.
    Keep(i64, i64),
    /// Older than the retention: not written.
    Expired,
    /// Further ahead of `now` than the horizon: quarantined.
    Ahead,
}

/// One partition as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub lo: i64,
    pub hi: i64,
    /// A concurrent detach began and did not finish (PostgreSQL).
    pub detach_pending: bool,
}

/// A step toward the partitions a class should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create { lo: i64, hi: i64 },
    Drop { name: String, detach_pending: bool },
}

/// `[retention]`: how long each class is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    pub raw: Option<Duration>,
    pub facts: Option<Duration>,
    /// Per resolution, in [`RESOLUTIONS`] order.
    pub rollups: [Option<Duration>; 3],
    /// The span of a raw or fact partition (day or week).
    pub span: Span,
    /// How far ahead of now a sample may be stamped; partitions exist up to
    /// here.
    pub horizon: Duration,
    /// How often the partitions are created ahead and the expired dropped.
    pub interval: Duration,
}

impl Default for Retention {
    /// The configuration's defaults: raw 90 days, facts 400 days, rollups
    /// forever, day partitions, a 2-day horizon, hourly runs.
    fn default() -> Retention {
        Retention {
            raw: Some(Duration::from_secs(90 * 86_400)),
            facts: Some(Duration::from_secs(400 * 86_400)),
            rollups: [None; 3],
            span: Span::Day,
            horizon: Duration::from_secs(2 * 86_400),
            interval: Duration::from_secs(3600),
        }
    }
}

impl Retention {
    /// Everything kept forever (a sink nobody configured, as in the tests
    /// of other behaviour), still partitioned by day.
    pub fn forever() -> Retention {
        Retention {
            raw: None,
            facts: None,
            ..Retention::default()
        }
    }

    pub fn keep(&self, class: Class) -> Option<Duration> {
        match class {
            Class::Raw => self.raw,
            Class::Facts => self.facts,
            Class::Rollup(r) => RESOLUTIONS.iter().position(|x| *x == r).and_then(|i| self.rollups[i]),
        }
    }

    pub fn span(&self, class: Class) -> Span {
        match class {
            Class::Raw | Class::Facts => self.span,
            Class::Rollup(_) => Span::Month,
        }
    }

    /// Rows of `class` stamped before this are expired at `now`.
    pub fn cutoff(&self, class: Class, now_ms: i64) -> Option<i64> {
        self.keep(class)
            .map(|k| now_ms.saturating_sub(k.as_millis().min(i64::MAX as u128) as i64))
    }

    /// Where a row of `class` stamped `ts_ms` goes at `now_ms`.
    pub fn fate(&self, class: Class, ts_ms: i64, now_ms: i64) -> Fate {
        if self.cutoff(class, now_ms).is_some_and(|c| ts_ms < c) {
            return Fate::Expired;
        }
        if ts_ms > now_ms.saturating_add(self.horizon.as_millis() as i64) {
            return Fate::Ahead;
        }
        let (lo, hi) = self.span(class).period(ts_ms);
        Fate::Keep(lo, hi)
    }

    /// What `class` needs at `now_ms`, given the partitions it has: the
    /// periods from now to the horizon that no partition covers yet, and
    /// every partition wholly older than the retention plus [`GRACE_MS`].
    pub fn plan(&self, class: Class, have: &[Partition], now_ms: i64) -> Vec<Action> {
        let span = self.span(class);
        let mut out = Vec::new();
        let end = now_ms.saturating_add(self.horizon.as_millis() as i64);
        let mut t = now_ms;
        loop {
            let (lo, hi) = span.period(t);
            if lo > end {
                break;
            }
            out.extend(gaps(lo, hi, have).into_iter().map(|(lo, hi)| Action::Create { lo, hi }));
            t = hi;
        }
        if let Some(cutoff) = self.cutoff(class, now_ms) {
            for p in have {
                if p.hi <= cutoff.saturating_sub(GRACE_MS) || p.detach_pending {
                    out.push(Action::Drop {
                        name: p.name.clone(),
                        detach_pending: p.detach_pending,
                    });
                }
            }
        }
        out
    }
}

impl Retention {
    /// The batch without the rows this retention keeps out at `now_ms`
    /// (expired rows dropped, facts past the horizon quarantined with
    /// their value), with how many of each; `None` when every row stays,
    /// the usual case, which costs two comparisons a row and no copy.
    pub fn trim(&self, b: &Batch, now_ms: i64) -> Option<(Batch, u64, u64)> {
        let window = |class: Class| {
            let lo = self.cutoff(class, now_ms).unwrap_or(i64::MIN);
            lo..=now_ms.saturating_add(self.horizon.as_millis() as i64)
        };
        let (raw, facts) = (window(Class::Raw), window(Class::Facts));
        if b.raw.iter().all(|x| raw.contains(&x.received_ms)) && b.facts.iter().all(|f| facts.contains(&f.ts_ms)) {
            return None;
        }
        let mut out = b.clone();
        let (mut expired, mut ahead) = (0, 0);
        // A raw row is stamped on arrival by this uplink: never ahead.
        out.raw.retain(|x| {
            let keep = matches!(self.fate(Class::Raw, x.received_ms, now_ms), Fate::Keep(..));
            expired += u64::from(!keep);
            keep
        });
        for f in std::mem::take(&mut out.facts) {
            match self.fate(Class::Facts, f.ts_ms, now_ms) {
                Fate::Keep(..) => out.facts.push(f),
                Fate::Expired => expired += 1,
                Fate::Ahead => {
                    ahead += 1;
                    let why = format!(
                        "more than {} h ahead of the uplink's clock ({}): only samples within the retention's horizon are stored as facts",
                        self.horizon.as_secs() / 3600,
                        crate::clock::rfc3339_ms(now_ms.max(0) as u64)
                    );
                    out.quarantine.push(quarantined_fact(&f, now_ms, &why));
                }
            }
        }
        Some((out, expired, ahead))
    }
}

/// A fact that is not stored as one, as a quarantine row that keeps its
/// value and says `why` (after "stamped …").
pub fn quarantined_fact(f: &FactRow, now: i64, why: &str) -> QuarantineRow {
    let kind = if f.device.is_empty() { "NDATA" } else { "DDATA" };
    let mut topic = format!("spBv1.0/{}/{kind}/{}", f.group, f.node);
    if !f.device.is_empty() {
        topic.push('/');
        topic.push_str(&f.device);
    }
    let value = f
        .v_int
        .map(|v| v.to_string())
        .or(f.v_float.map(|v| v.to_string()))
        .or(f.v_bool.map(|v| v.to_string()))
        .or(f.v_text.clone())
        .unwrap_or_else(|| "null".into());
    QuarantineRow {
        topic: storable(prefix(&topic, 2048)).into_owned(),
        received_ms: now,
        payload: f.v_bytes.clone().unwrap_or_else(|| value.clone().into_bytes()),
        reason: storable(&format!(
            "metric '{}' = {} stamped {}, {why}",
            prefix(&f.metric, 120),
            prefix(&value, 120),
            crate::clock::rfc3339_ms(f.ts_ms.max(0) as u64),
        ))
        .into_owned(),
    }
}

/// The parts of `[lo, hi)` no partition in `have` covers (a change of
/// span leaves partitions of the old length: a period is created around
/// them, never over them).
pub fn gaps(lo: i64, hi: i64, have: &[Partition]) -> Vec<(i64, i64)> {
    let mut covered: Vec<(i64, i64)> = have
        .iter()
        .filter(|p| !p.detach_pending && p.lo < hi && lo < p.hi)
        .map(|p| (p.lo, p.hi))
        .collect();
    covered.sort_unstable();
    let mut out = Vec::new();
    let mut at = lo;
    for (a, b) in covered {
        if a > at {
            out.push((at, a));
        }
        at = at.max(b);
    }
    if at < hi {
        out.push((at, hi));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-30 (a Monday) 10:00 UTC.
    const NOW: i64 = 1_796_032_800_000;
    const D: i64 = DAY_MS;

    fn part(lo: i64, hi: i64) -> Partition {
        Partition {
            name: format!("p{}", Span::Day.suffix(lo)),
            lo,
            hi,
            detach_pending: false,
        }
    }

    #[test]
    fn periods_are_utc_days_iso_weeks_and_calendar_months() {
        let today = NOW - 10 * 3_600_000;
        assert_eq!(Span::Day.period(NOW), (today, today + D));
        assert_eq!(Span::Day.suffix(today), "20261130");
        // Monday to Monday; a Sunday belongs to the week before.
        assert_eq!(Span::Week.period(NOW), (today, today + 7 * D));
        assert_eq!(Span::Week.period(today - 1), (today - 7 * D, today));
        let (lo, hi) = Span::Month.period(NOW);
        assert_eq!(
            (Span::Month.suffix(lo), Span::Month.suffix(hi)),
            ("202611".into(), "202612".into())
        );
        assert_eq!(hi, today + D, "November ends tonight");
        // February of a leap year, and before 1970.
        let (lo, hi) = Span::Month.period(1_709_251_199_999);
        assert_eq!((hi - lo) / D, 29);
        assert_eq!(Span::Day.period(-1), (-D, 0));
    }

    #[test]
    fn a_row_is_kept_in_its_period_expired_past_retention_and_quarantined_past_the_horizon() {
        let r = Retention::default();
        assert_eq!(
            r.fate(Class::Facts, NOW - 399 * D, NOW),
            Fate::Keep(Span::Day.period(NOW - 399 * D).0, Span::Day.period(NOW - 399 * D).1)
        );
        assert_eq!(r.fate(Class::Facts, NOW - 401 * D, NOW), Fate::Expired);
        assert_eq!(r.fate(Class::Raw, NOW - 91 * D, NOW), Fate::Expired);
        assert_eq!(
            r.fate(Class::Rollup("minute"), 0, NOW),
            Fate::Keep(0, 31 * D),
            "rollups: forever"
        );
        assert!(matches!(r.fate(Class::Facts, NOW + 2 * D, NOW), Fate::Keep(..)));
        assert_eq!(r.fate(Class::Facts, NOW + 2 * D + 1, NOW), Fate::Ahead);
    }

    #[test]
    fn the_plan_creates_the_periods_up_to_the_horizon_and_drops_only_what_is_wholly_expired() {
        let r = Retention {
            facts: Some(Duration::from_secs(30 * 86_400)),
            ..Retention::default()
        };
        let today = Span::Day.period(NOW).0;
        // Nothing yet: today and the two days of the horizon.
        assert_eq!(
            r.plan(Class::Facts, &[], NOW),
            vec![
                Action::Create {
                    lo: today,
                    hi: today + D
                },
                Action::Create {
                    lo: today + D,
                    hi: today + 2 * D
                },
                Action::Create {
                    lo: today + 2 * D,
                    hi: today + 3 * D
                },
            ]
        );
        let old = part(today - 31 * D, today - 30 * D); // ends 10 h before the cutoff
        let edge = part(today - 30 * D, today - 29 * D); // holds the cutoff itself
        let have = vec![
            old.clone(),
            edge,
            part(today, today + D),
            part(today + D, today + 2 * D),
            part(today + 2 * D, today + 3 * D),
        ];
        assert_eq!(
            r.plan(Class::Facts, &have, NOW),
            vec![Action::Drop {
                name: old.name.clone(),
                detach_pending: false
            }]
        );
        // Within the grace, the old partition stays.
        let just = today - 30 * D + 10 * 3_600_000 - GRACE_MS + 1;
        let mut young = old.clone();
        young.hi = just;
        assert!(r
            .plan(Class::Facts, &[young], NOW)
            .iter()
            .all(|a| matches!(a, Action::Create { .. })));
        // Forever: nothing dropped, however old.
        assert!(Retention::forever()
            .plan(Class::Facts, &have, NOW)
            .iter()
            .all(|a| !matches!(a, Action::Drop { .. })));
        // A detach that was interrupted is finished whatever its age.
        let mut pending = part(today, today + D);
        pending.detach_pending = true;
        assert!(r.plan(Class::Facts, &[pending], NOW).contains(&Action::Drop {
            name: "p20261130".into(),
            detach_pending: true
        }));
    }

    #[test]
    fn after_a_change_of_span_new_partitions_fill_the_gaps_around_the_old_ones() {
        let r = Retention {
            span: Span::Week,
            ..Retention::default()
        };
        let today = Span::Day.period(NOW).0;
        // Day partitions made before the change cover today and tomorrow:
        // the rest of the week gets one partition around them.
        let have = vec![part(today, today + D), part(today + D, today + 2 * D)];
        assert_eq!(
            r.plan(Class::Facts, &have, NOW),
            vec![Action::Create {
                lo: today + 2 * D,
                hi: today + 7 * D
            }]
        );
        assert_eq!(
            gaps(0, 10, &[part(2, 4), part(3, 6), part(8, 12)]),
            vec![(0, 2), (6, 8)]
        );
    }
}
