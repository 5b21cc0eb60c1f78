//! The shift calendar: shifts named by local start and end times on some
//! weekdays, with planned breaks, turned into UTC intervals in the plant's
//! time zone. Sans-IO.
//!
//! Invariants:
//! - A shift whose end is not after its start crosses midnight: it ends the
//!   next day. It belongs to the weekday it starts on.
//! - Local times are read with [`TimeZone::to_utc`]: a start or end in a
//!   spring-forward gap is the instant the gap ends, one in a fall-back
//!   overlap its first occurrence. So the night shift across a change is
//!   one hour shorter or longer in real time, and shifts that meet on the
//!   wall clock still meet without a hole or an overlap.
//! - A break is a local time range within its shift (a break before the
//!   shift's start time falls after midnight); it is clipped to the shift.

use super::tz::TimeZone;
use crate::clock::{civil_from_days, days_from_civil};

/// One shift of the calendar (`[[oee.shifts]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shift {
    pub name: String,
    /// Local seconds after midnight.
    pub start: u32,
    pub end: u32,
    /// Weekdays it starts on, Monday first.
    pub days: [bool; 7],
    /// Planned breaks, local seconds after midnight.
    pub breaks: Vec<(u32, u32)>,
}

/// One occurrence of a shift, in UTC seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShiftInstance {
    pub name: String,
    /// The local date it starts on, e.g. `2026-11-30`.
    pub date: String,
    pub start: i64,
    pub end: i64,
    pub breaks: Vec<(i64, i64)>,
}

impl ShiftInstance {
    /// Planned production time (s): the shift less its breaks.
    pub fn planned(&self) -> i64 {
        self.end - self.start - self.breaks.iter().map(|(a, b)| b - a).sum::<i64>()
    }
}

/// `"06:00"` (or `"06:00:30"`) as seconds after midnight (`"24:00"` is
/// midnight at the end).
pub fn parse_clock(s: &str) -> Result<u32, String> {
    let bad = || format!("'{s}' is not a time of day: use \"HH:MM\" (or \"HH:MM:SS\") from 00:00 to 24:00");
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len())
        || parts[0].is_empty()
        || parts[0].len() > 2
        || parts[1..].iter().any(|p| p.len() != 2)
    {
        return Err(bad());
    }
    let n: Vec<u32> = parts
        .iter()
        .map(|p| p.parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let (h, m, sec) = (n[0], n[1], n.get(2).copied().unwrap_or(0));
    if m >= 60 || sec >= 60 || h > 24 || (h == 24 && (m, sec) != (0, 0)) {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60 + sec)
}

/// `"mon"` … `"sun"` as 0 … 6.
pub fn parse_weekday(s: &str) -> Result<usize, String> {
    const DAYS: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    DAYS.iter()
        .position(|d| s.eq_ignore_ascii_case(d) || s.eq_ignore_ascii_case(&d[..3]))
        .ok_or_else(|| format!("'{s}' is not a weekday: use mon, tue, wed, thu, fri, sat or sun"))
}

/// Every occurrence of `shifts` that overlaps `[from, to)` (UTC seconds), by start.
pub fn instances(shifts: &[Shift], tz: &TimeZone, from: i64, to: i64) -> Vec<ShiftInstance> {
    let mut out = Vec::new();
    // Local days from one before `from` (a night shift started then) to the one of `to`.
    let first = (from + i64::from(tz.offset_at(from))).div_euclid(86_400) - 1;
    let last = (to + i64::from(tz.offset_at(to))).div_euclid(86_400);
    for day in first..=last {
        // 1970-01-01 was a Thursday: Monday = 0.
        let weekday = (day + 3).rem_euclid(7) as usize;
        for s in shifts.iter().filter(|s| s.days[weekday]) {
            let at = |secs: u32, next_day: bool| {
                let local = (day + i64::from(next_day)) * 86_400 + i64::from(secs);
                tz.to_utc(local).earliest()
            };
            let crosses = s.end <= s.start;
            let (start, end) = (at(s.start, false), at(s.end, crosses));
            if end <= from || start >= to || end <= start {
                continue;
            }
            let mut breaks: Vec<(i64, i64)> = s
                .breaks
                .iter()
                .map(|&(a, b)| {
                    // In a shift across midnight, a time before its start is after midnight.
                    (at(a, crosses && a < s.start), at(b, crosses && b < s.start))
                })
                .map(|(a, b)| (a.clamp(start, end), b.clamp(start, end)))
                .filter(|(a, b)| a < b)
                .collect();
            breaks.sort_unstable();
            let (y, m, d) = civil_from_days(day);
            out.push(ShiftInstance {
                name: s.name.clone(),
                date: format!("{y:04}-{m:02}-{d:02}"),
                start,
                end,
                breaks,
            });
        }
    }
    out.sort_by_key(|i| (i.start, i.name.clone()));
    out
}

/// Local midnight of a civil date, in UTC (for tests and reports).
pub fn local_midnight(tz: &TimeZone, y: i64, m: i64, d: i64) -> i64 {
    tz.to_utc(days_from_civil(y, m, d) * 86_400).earliest()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_shifts() -> Vec<Shift> {
        let all = [true; 7];
        vec![
            Shift {
                name: "early".into(),
                start: 6 * 3600,
                end: 14 * 3600,
                days: all,
                breaks: vec![(9 * 3600, 9 * 3600 + 15 * 60)],
            },
            Shift {
                name: "late".into(),
                start: 14 * 3600,
                end: 22 * 3600,
                days: all,
                breaks: vec![],
            },
            Shift {
                name: "night".into(),
                start: 22 * 3600,
                end: 6 * 3600,
                days: all,
                // 02:00-02:30: after midnight, before the start time.
                breaks: vec![(2 * 3600, 2 * 3600 + 30 * 60)],
            },
        ]
    }

    fn berlin() -> TimeZone {
        TimeZone::load("Europe/Berlin").expect("tzdata")
    }

    #[test]
    fn clock_times_and_weekdays_are_read_and_mistakes_said() {
        assert_eq!(parse_clock("06:00"), Ok(6 * 3600));
        assert_eq!(parse_clock("06:00:30"), Ok(6 * 3600 + 30));
        assert_eq!(parse_clock("24:00"), Ok(86_400));
        assert!(parse_clock("24:00:01").is_err());
        assert!(parse_clock("6").is_err());
        assert!(parse_clock("25:00").is_err());
        assert!(parse_clock("06:60").is_err());
        assert_eq!(parse_weekday("Mon"), Ok(0));
        assert_eq!(parse_weekday("sunday"), Ok(6));
        assert!(parse_weekday("funday").is_err());
    }

    #[test]
    fn a_day_of_three_shifts_meets_without_holes_and_the_night_shift_crosses_midnight() {
        let tz = berlin();
        let day = local_midnight(&tz, 2026, 6, 10);
        let got = instances(&three_shifts(), &tz, day, day + 86_400);
        let names: Vec<&str> = got.iter().map(|i| i.name.as_str()).collect();
        // The night shift of the 9th ends at 06:00 on the 10th.
        assert_eq!(names, ["night", "early", "late", "night"]);
        for w in got.windows(2) {
            assert_eq!(w[0].end, w[1].start, "{} then {}", w[0].name, w[1].name);
        }
        let night = &got[3];
        assert_eq!(night.date, "2026-06-10");
        assert_eq!(night.end - night.start, 8 * 3600);
        // The break after midnight belongs to the night that started the day before.
        assert_eq!(
            night.breaks,
            vec![(night.start + 4 * 3600, night.start + 4 * 3600 + 1800)]
        );
        assert_eq!(night.planned(), 8 * 3600 - 1800);
        assert_eq!(got[1].planned(), 8 * 3600 - 900);
    }

    #[test]
    fn the_night_shifts_across_daylight_saving_changes_are_seven_and_nine_hours() {
        let tz = berlin();
        // Spring forward, night of 28/29 March 2026.
        let spring = local_midnight(&tz, 2026, 3, 28);
        let got = instances(&three_shifts(), &tz, spring, spring + 2 * 86_400);
        let night = got
            .iter()
            .find(|i| i.name == "night" && i.date == "2026-03-28")
            .expect("night");
        assert_eq!(night.end - night.start, 7 * 3600);
        // Fall back, night of 24/25 October 2026: the 02:00 break is its first occurrence.
        let fall = local_midnight(&tz, 2026, 10, 24);
        let got = instances(&three_shifts(), &tz, fall, fall + 2 * 86_400);
        let night = got
            .iter()
            .find(|i| i.name == "night" && i.date == "2026-10-24")
            .expect("night");
        assert_eq!(night.end - night.start, 9 * 3600);
        let early = got
            .iter()
            .find(|i| i.name == "early" && i.date == "2026-10-25")
            .expect("early");
        assert_eq!(night.end, early.start, "still no hole");
    }

    #[test]
    fn weekdays_select_the_start_date_and_only_overlapping_shifts_are_listed() {
        let tz = TimeZone::utc();
        let mut weekdays = three_shifts();
        for s in &mut weekdays {
            s.days = [true, true, true, true, true, false, false];
        }
        // Friday 2026-12-04 to Monday 2026-12-07, UTC.
        let fri = days_from_civil(2026, 12, 4) * 86_400;
        let got = instances(&weekdays, &tz, fri, fri + 3 * 86_400);
        let dates: Vec<(&str, &str)> = got.iter().map(|i| (i.date.as_str(), i.name.as_str())).collect();
        assert_eq!(
            dates,
            [
                ("2026-12-03", "night"),
                ("2026-12-04", "early"),
                ("2026-12-04", "late"),
                ("2026-12-04", "night")
            ],
            "Friday's night shift runs into Saturday; nothing starts at the weekend"
        );
        assert!(instances(&weekdays, &tz, fri + 12 * 3600, fri + 12 * 3600 + 1)
            .iter()
            .all(|i| i.name == "early"));
    }
}
