//! The OEE arithmetic of one machine over one interval, from samples by
//! their own timestamps (ISO 22400-2): sans-IO, deterministic.
//!
//! Availability = run time / planned busy time; performance = ideal cycle
//! time × produced / run time; quality = good / produced; OEE = A × P × Q.
//!
//! Invariants (each a test below):
//! - Only sample timestamps count, never arrival: the same samples in any
//!   order, or twice, give the same figures.
//! - Every rule is local in time: the state at an instant is the last
//!   sample at or before it. So the figures of an interval depend only on
//!   the samples within it, the last one before it and, for a stop that
//!   crosses its end, those up to `minor_stop` after it. That is what makes
//!   recomputing only the intervals a late sample touches exact.
//! - Planned time is the shift less its breaks; only planned time counts
//!   toward availability. A stop whose reason's category is `planned`
//!   leaves the planned busy time instead of being a loss.
//! - A stop shorter than `minor_stop` (its whole length, also beyond the
//!   interval) is run time: a performance loss, not downtime.
//! - A cycle counter's drop is a reset (it counted from 0 again) unless
//!   the counter wraps (`wrap`) and was near the top; a duplicate sample
//!   (same timestamp) counts once.
//! - Time whose running state is unknown (before the first sample) is
//!   neither run nor downtime nor busy time; `completeness` says how much
//!   planned time was known.

use std::collections::BTreeMap;

/// What a downtime reason is, for the Pareto and for availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    /// Planned downtime (maintenance, meetings): not a loss.
    Planned,
    Breakdown,
    Setup,
    MinorStop,
    Starved,
    Blocked,
    /// A stop without a known reason code.
    Unassigned,
}

impl Category {
    pub fn parse(s: &str) -> Option<Category> {
        Some(match s {
            "planned" => Category::Planned,
            "breakdown" => Category::Breakdown,
            "setup" | "changeover" => Category::Setup,
            "minor_stop" => Category::MinorStop,
            "starved" => Category::Starved,
            "blocked" => Category::Blocked,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Planned => "planned",
            Category::Breakdown => "breakdown",
            Category::Setup => "setup",
            Category::MinorStop => "minor_stop",
            Category::Starved => "starved",
            Category::Blocked => "blocked",
            Category::Unassigned => "unassigned",
        }
    }
}

/// A sample's value, as the roles need it.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Num(f64),
    Bool(bool),
    Text(String),
}

impl V {
    fn num(&self) -> Option<f64> {
        match self {
            V::Num(x) => Some(*x),
            V::Bool(b) => Some(f64::from(u8::from(*b))),
            V::Text(t) => t.trim().parse().ok(),
        }
    }

    /// A reason code as text (`12`, `"JAM"`); 0 and empty mean none.
    fn code(&self) -> Option<String> {
        let s = match self {
            V::Num(x) if *x == 0.0 => return None,
            V::Num(x) if x.fract() == 0.0 => format!("{}", *x as i64),
            V::Num(x) => x.to_string(),
            V::Bool(_) => return None,
            V::Text(t) => t.trim().to_string(),
        };
        (!s.is_empty() && s != "0").then_some(s)
    }
}

/// What a metric is to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A counter of produced pieces (cycles).
    CycleCount,
    /// A Boolean whose rising edge is one cycle.
    CycleStart,
    Running,
    /// A fault or downtime reason code.
    Reason,
    GoodCount,
    RejectCount,
    /// The reason code of rejects: each sample of a code is one reject,
    /// or, beside a reject counter, the reason of its increments.
    RejectCode,
    IdealCycleTime,
    Product,
}

/// One sample of a mapped metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub role: Role,
    /// Milliseconds since the epoch: the sample's own timestamp.
    pub ts: i64,
    pub value: V,
}

/// How to read a machine's samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The running values of a state string (empty: `running` is Boolean).
    pub running_values: Vec<String>,
    /// Reason code → (reason, category).
    pub reasons: BTreeMap<String, (String, Category)>,
    /// Reject code → reason.
    pub reject_reasons: BTreeMap<String, String>,
    /// A fixed ideal cycle time (ms), when no metric gives it.
    pub ideal_cycle_ms: Option<f64>,
    /// The ideal cycle time (ms) of each product, before the fixed one.
    pub ideal_by_product: BTreeMap<String, f64>,
    /// Stops shorter than this are performance loss (ms).
    pub minor_stop_ms: i64,
    /// The counters' wrap (e.g. 65535 for a UInt16), if they wrap.
    pub wrap: Option<f64>,
}

/// One cycle (or a run of `count` cycles a counter showed at once).
#[derive(Debug, Clone, PartialEq)]
pub struct Cycle {
    pub start: i64,
    pub end: i64,
    pub count: u64,
    pub product: Option<String>,
}

/// One stop with one reason, clipped to the interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Downtime {
    pub start: i64,
    pub end: i64,
    pub code: Option<String>,
    pub reason: Option<String>,
    pub category: Category,
}

/// Pieces counted good or rejected at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityEvent {
    pub at: i64,
    pub good: u64,
    pub rejected: u64,
    /// The rejects' reason code, and its meaning when the mapping has one.
    pub code: Option<String>,
    pub reason: Option<String>,
}

/// The figures of one interval.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Figures {
    pub planned_ms: i64,
    pub planned_downtime_ms: i64,
    pub run_ms: i64,
    pub downtime_ms: BTreeMap<Category, i64>,
    pub produced: u64,
    pub good: u64,
    pub rejected: u64,
    pub ideal_ms: f64,
    pub availability: Option<f64>,
    pub performance: Option<f64>,
    pub quality: Option<f64>,
    pub oee: Option<f64>,
    /// Planned time whose running state was known.
    pub known_ms: i64,
    /// `known_ms` over planned time.
    pub completeness: f64,
    pub cycles: Vec<Cycle>,
    pub downtimes: Vec<Downtime>,
    /// Each quality event in the interval: counter increments and reject codes.
    pub quality_events: Vec<QualityEvent>,
}

/// The samples of each role, by time: the value in force at an instant
/// is a binary search away.
struct Series<'a> {
    by_role: BTreeMap<Role, Vec<&'a Sample>>,
}

impl<'a> Series<'a> {
    fn new(samples: &'a [Sample]) -> Series<'a> {
        let mut by_role: BTreeMap<Role, Vec<&Sample>> = BTreeMap::new();
        for s in samples {
            by_role.entry(s.role).or_default().push(s);
        }
        Series { by_role }
    }

    fn of(&self, role: Role) -> &[&'a Sample] {
        self.by_role.get(&role).map_or(&[], Vec::as_slice)
    }

    /// The value of `role` in force at `t`: the last sample at or before it.
    fn at(&self, role: Role, t: i64) -> Option<&'a V> {
        let v = self.of(role);
        let i = v.partition_point(|s| s.ts <= t);
        (i > 0).then(|| &v[i - 1].value)
    }
}

fn running(model: &Model, v: &V) -> bool {
    match v {
        V::Bool(b) => *b,
        V::Text(t) => model.running_values.iter().any(|r| r == t.trim()),
        V::Num(x) if model.running_values.is_empty() => *x != 0.0,
        V::Num(x) => model.running_values.iter().any(|r| r.parse::<f64>() == Ok(*x)),
    }
}

/// Increments of a counter between consecutive samples (module invariants).
fn increments(model: &Model, samples: &[&Sample]) -> Vec<(i64, i64, u64)> {
    let mut out = Vec::new();
    let mut last: Option<(i64, f64)> = None;
    for s in samples {
        let Some(v) = s.value.num() else { continue };
        if let Some((t0, prev)) = last {
            let delta = if v >= prev {
                v - prev
            } else {
                match model.wrap {
                    Some(w) if prev > 0.9 * w => w - prev + v + 1.0,
                    _ => v,
                }
            };
            if delta >= 1.0 && s.ts > t0 {
                out.push((t0, s.ts, delta.round() as u64));
            }
        }
        last = Some((s.ts, v));
    }
    out
}

/// The figures of `[from, to)` for samples sorted by timestamp (those
/// before `from` give the state at `from`); `planned` is when production
/// is planned (shifts less breaks), sorted.
pub fn compute(model: &Model, samples: &[Sample], from: i64, to: i64, planned: &[(i64, i64)]) -> Figures {
    compute_known(model, samples, from, to, planned, i64::MAX)
}

/// [`compute`], with the running state unknown from `known_to` on (the
/// edge died then and has not come back): planned time after it is
/// neither run nor downtime, and lowers `completeness`.
pub fn compute_known(
    model: &Model,
    samples: &[Sample],
    from: i64,
    to: i64,
    planned: &[(i64, i64)],
    known_to: i64,
) -> Figures {
    let mut samples: Vec<Sample> = samples.to_vec();
    // One metric per role, and a fact per (metric, ts): equal keys are the same sample.
    samples.sort_by_key(|s| (s.ts, s.role));
    samples.dedup_by(|a, b| a.ts == b.ts && a.role == b.role);
    let samples = &samples[..];
    let series = Series::new(samples);
    let at = |role: Role, t: i64| series.at(role, t);
    let mut f = Figures::default();
    let planned: Vec<(i64, i64)> = planned
        .iter()
        .map(|&(a, b)| (a.max(from), b.min(to)))
        .filter(|(a, b)| a < b)
        .collect();
    f.planned_ms = planned.iter().map(|(a, b)| b - a).sum();

    // The instants where the running state or the reason may change.
    let mut edges: Vec<i64> = samples
        .iter()
        .filter(|s| matches!(s.role, Role::Running | Role::Reason | Role::Product))
        .map(|s| s.ts)
        .chain([from, to, known_to.clamp(from, to)])
        .chain(planned.iter().flat_map(|&(a, b)| [a, b]))
        .collect();
    edges.sort_unstable();
    edges.dedup();
    let states = series.of(Role::Running);
    let stop_bounds = |t: i64| -> (i64, i64) {
        // The whole stop around `t`: back to the first stopped sample after
        // the last running one, on to the next running one.
        let i = states.partition_point(|s| s.ts <= t);
        let begin = states[..i]
            .iter()
            .rev()
            .take_while(|s| !running(model, &s.value))
            .last()
            .map_or(t, |s| s.ts);
        let end = states[i..]
            .iter()
            .find(|s| running(model, &s.value))
            .map_or(i64::MAX, |s| s.ts);
        (begin, end)
    };
    let product_at = |t: i64| -> Option<String> {
        at(Role::Product, t).and_then(|v| match v {
            V::Text(t) => Some(t.trim().to_string()),
            other => other.code(),
        })
    };
    let mut known_ms = 0;
    for w in edges.windows(2) {
        let (a, b) = (w[0].max(from), w[1].min(to));
        if a >= b {
            continue;
        }
        let in_plan: i64 = planned.iter().map(|&(p, q)| (b.min(q) - a.max(p)).max(0)).sum();
        if in_plan == 0 {
            continue;
        }
        if a >= known_to {
            continue;
        }
        let Some(state) = at(Role::Running, a) else { continue };
        known_ms += in_plan;
        if running(model, state) {
            f.run_ms += in_plan;
            continue;
        }
        let (begin, end) = stop_bounds(a);
        if end != i64::MAX && end - begin < model.minor_stop_ms {
            // A minor stop: run time, its loss is in performance.
            f.run_ms += in_plan;
            continue;
        }
        let code = at(Role::Reason, a).and_then(V::code);
        let (reason, category) = match code.as_ref().and_then(|c| model.reasons.get(c)) {
            Some((r, c)) => (Some(r.clone()), *c),
            // No reason given, and the product changed since the stop
            // began: from the change on, a changeover.
            None if product_at(begin) != product_at(a) => (
                Some(format!("Changeover to {}", product_at(a).unwrap_or_default())),
                Category::Setup,
            ),
            None => (None, Category::Unassigned),
        };
        if category == Category::Planned {
            f.planned_downtime_ms += in_plan;
        } else {
            *f.downtime_ms.entry(category).or_default() += in_plan;
        }
        match f.downtimes.last_mut() {
            Some(d) if d.end == a && d.code == code && d.category == category => d.end = b,
            _ => f.downtimes.push(Downtime {
                start: a,
                end: b,
                code,
                reason,
                category,
            }),
        }
    }
    f.known_ms = known_ms;

    // Cycles: counter increments, or rising edges of a start signal.
    let mut cycles: Vec<(i64, i64, u64)> = increments(model, series.of(Role::CycleCount));
    let mut last_edge: Option<i64> = None;
    let mut prev = false;
    for s in series.of(Role::CycleStart) {
        let on = matches!(s.value, V::Bool(true)) || s.value.num().is_some_and(|x| x != 0.0);
        if on && !prev {
            if let Some(t0) = last_edge {
                cycles.push((t0, s.ts, 1));
            }
            last_edge = Some(s.ts);
        }
        prev = on;
    }
    for (start, end, count) in cycles.into_iter().filter(|&(_, end, _)| end >= from && end < to) {
        f.produced += count;
        let product = product_at(end);
        // The ideal time: the metric's, else the product's, else the fixed one.
        let ideal = at(Role::IdealCycleTime, end)
            .and_then(V::num)
            .map(|s| s * 1000.0)
            .or_else(|| product.as_ref().and_then(|p| model.ideal_by_product.get(p).copied()))
            .or(model.ideal_cycle_ms)
            .unwrap_or(0.0);
        f.ideal_ms += ideal * count as f64;
        f.cycles.push(Cycle {
            start,
            end,
            count,
            product,
        });
    }
    let has = |role: Role| !series.of(role).is_empty();
    let good_inc = increments(model, series.of(Role::GoodCount));
    let reject_inc = increments(model, series.of(Role::RejectCount));
    let in_window = |end: i64| end >= from && end < to;
    // Beside a reject counter, a code names its increments' reason; alone,
    // each sample of a code (not 0, not empty) is one reject.
    let reject_codes: Vec<(i64, i64, u64)> = if has(Role::RejectCount) {
        Vec::new()
    } else {
        series
            .of(Role::RejectCode)
            .iter()
            .filter(|s| s.value.code().is_some())
            .map(|s| (s.ts, s.ts, 1))
            .collect()
    };
    let mut events: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for &(_, end, n) in good_inc.iter().filter(|&&(_, end, _)| in_window(end)) {
        events.entry(end).or_default().0 += n;
    }
    for &(_, end, n) in reject_inc
        .iter()
        .chain(&reject_codes)
        .filter(|&&(_, end, _)| in_window(end))
    {
        events.entry(end).or_default().1 += n;
    }
    f.quality_events = events
        .into_iter()
        .map(|(at, (good, rejected))| {
            let code = (rejected > 0)
                .then(|| series.at(Role::RejectCode, at).and_then(V::code))
                .flatten();
            let reason = code.as_ref().and_then(|c| model.reject_reasons.get(c)).cloned();
            QualityEvent {
                at,
                good,
                rejected,
                code,
                reason,
            }
        })
        .collect();
    let sum = |v: &[(i64, i64, u64)]| -> u64 { v.iter().filter(|&&(_, end, _)| in_window(end)).map(|x| x.2).sum() };
    let good = has(Role::GoodCount).then(|| sum(&good_inc));
    let rejected = if has(Role::RejectCount) {
        Some(sum(&reject_inc))
    } else {
        has(Role::RejectCode).then(|| sum(&reject_codes))
    };
    (f.good, f.rejected) = match (good, rejected) {
        (Some(g), Some(r)) => {
            f.produced = f.produced.max(g + r);
            (g, r)
        }
        (Some(g), None) => (g, f.produced.saturating_sub(g)),
        (None, Some(r)) => (f.produced.saturating_sub(r), r),
        (None, None) => (f.produced, 0),
    };

    f.finish();
    f
}

impl Figures {
    /// Adds the times and counts of an adjacent interval (every figure but
    /// the ratios is a sum over time; call [`Figures::finish`] after).
    pub fn add(&mut self, o: &Figures) {
        self.planned_ms += o.planned_ms;
        self.planned_downtime_ms += o.planned_downtime_ms;
        self.run_ms += o.run_ms;
        for (c, ms) in &o.downtime_ms {
            *self.downtime_ms.entry(*c).or_default() += ms;
        }
        self.produced += o.produced;
        self.good += o.good;
        self.rejected += o.rejected;
        self.ideal_ms += o.ideal_ms;
        self.known_ms += o.known_ms;
    }

    /// The ratios from the sums.
    pub fn finish(&mut self) {
        self.completeness = if self.planned_ms > 0 {
            self.known_ms as f64 / self.planned_ms as f64
        } else {
            1.0
        };
        // Planned busy time: planned time whose state is known, less planned
        // downtime (unknown time is no loss; `completeness` shows it).
        let busy = self.known_ms - self.planned_downtime_ms;
        let ratio = |n: f64, d: f64| (d > 0.0).then(|| n / d);
        self.availability = ratio(self.run_ms as f64, busy as f64);
        self.performance = ratio(self.ideal_ms, self.run_ms as f64);
        self.quality = ratio(self.good as f64, self.produced as f64);
        self.oee = match (self.availability, self.performance, self.quality) {
            (Some(a), Some(p), Some(q)) => Some(a * p * q),
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;
    const MIN: i64 = 60 * S;
    const T0: i64 = 1_796_000_400_000; // an hour boundary (2026-11-30 01:00 UTC)

    fn model() -> Model {
        let mut reasons = BTreeMap::new();
        reasons.insert("12".into(), ("Hydraulic pressure low".into(), Category::Breakdown));
        reasons.insert("40".into(), ("Die change".into(), Category::Setup));
        reasons.insert("90".into(), ("Planned maintenance".into(), Category::Planned));
        let mut reject_reasons = BTreeMap::new();
        reject_reasons.insert("3".into(), "Underfilled".into());
        Model {
            running_values: vec![],
            reasons,
            reject_reasons,
            ideal_cycle_ms: Some(2.0 * 1000.0),
            ideal_by_product: BTreeMap::new(),
            minor_stop_ms: 2 * MIN,
            wrap: Some(65535.0),
        }
    }

    fn s(role: Role, ts: i64, value: V) -> Sample {
        Sample { role, ts, value }
    }

    /// A scripted hour: a break 20:00-30:00 (planned time 50 min), running
    /// except a 10-minute breakdown (code 12) from 40:00 and a 1-minute
    /// minor stop at 55:00; a cycle every 3 s while running (ideal 2 s),
    /// 10 rejects.
    fn scripted_hour() -> (Vec<Sample>, Vec<(i64, i64)>) {
        let mut v = vec![
            s(Role::Running, T0 - 5 * MIN, V::Bool(true)),
            s(Role::Reason, T0 - 5 * MIN, V::Num(0.0)),
            s(Role::Running, T0 + 40 * MIN, V::Bool(false)),
            s(Role::Reason, T0 + 40 * MIN, V::Num(12.0)),
            s(Role::Running, T0 + 50 * MIN, V::Bool(true)),
            s(Role::Reason, T0 + 50 * MIN, V::Num(0.0)),
            s(Role::Running, T0 + 55 * MIN, V::Bool(false)),
            s(Role::Running, T0 + 56 * MIN, V::Bool(true)),
        ];
        let mut count = 100.0;
        v.push(s(Role::CycleCount, T0 - 1, V::Num(count)));
        v.push(s(Role::RejectCount, T0 - 1, V::Num(0.0)));
        let stopped = |t: i64| {
            (T0 + 20 * MIN..T0 + 30 * MIN).contains(&t)
                || (T0 + 40 * MIN..T0 + 50 * MIN).contains(&t)
                || (T0 + 55 * MIN..T0 + 56 * MIN).contains(&t)
        };
        let mut t = T0;
        while t < T0 + 60 * MIN {
            if !stopped(t) {
                count += 1.0;
                v.push(s(Role::CycleCount, t + 3 * S - 1, V::Num(count)));
            }
            t += 3 * S;
        }
        v.push(s(Role::RejectCount, T0 + 59 * MIN, V::Num(10.0)));
        (v, vec![(T0, T0 + 20 * MIN), (T0 + 30 * MIN, T0 + 60 * MIN)])
    }

    #[test]
    fn a_scripted_hour_gives_the_analytic_a_p_q_and_oee() {
        let (samples, planned) = scripted_hour();
        let f = compute(&model(), &samples, T0, T0 + 60 * MIN, &planned);
        assert_eq!(f.planned_ms, 50 * MIN);
        // Down 40:00-50:00 for the breakdown; 55:00-56:00 is a minor stop (run time).
        assert_eq!(f.downtime_ms.get(&Category::Breakdown), Some(&(10 * MIN)));
        assert_eq!(f.run_ms, 40 * MIN);
        // Cycles every 3 s while the machine ran, not in the break:
        // 0-20 min (400), 30-40 min (200), 50-55 min (100), 56-60 min (80).
        assert_eq!(f.produced, 780);
        assert_eq!((f.good, f.rejected), (770, 10));
        assert_eq!(f.availability, Some(0.8));
        let p = 780.0 * 2.0 / (40.0 * 60.0);
        assert!((f.performance.expect("p") - p).abs() < 1e-12);
        assert!((f.quality.expect("q") - 770.0 / 780.0).abs() < 1e-12);
        assert!((f.oee.expect("oee") - 0.8 * p * 770.0 / 780.0).abs() < 1e-12);
        assert_eq!(f.completeness, 1.0);
        assert_eq!(f.downtimes.len(), 1);
        assert_eq!(
            (f.downtimes[0].start, f.downtimes[0].end, f.downtimes[0].code.as_deref()),
            (T0 + 40 * MIN, T0 + 50 * MIN, Some("12"))
        );
    }

    #[test]
    fn order_and_duplicates_of_samples_change_nothing() {
        let (samples, planned) = scripted_hour();
        let want = compute(&model(), &samples, T0, T0 + 60 * MIN, &planned);
        let mut shuffled = samples.clone();
        shuffled.reverse();
        shuffled.extend(samples.iter().step_by(7).cloned());
        assert_eq!(compute(&model(), &shuffled, T0, T0 + 60 * MIN, &planned), want);
    }

    #[test]
    fn two_halves_add_up_to_the_whole_hour() {
        let (samples, planned) = scripted_hour();
        let m = model();
        let whole = compute(&m, &samples, T0, T0 + 60 * MIN, &planned);
        let a = compute(&m, &samples, T0, T0 + 45 * MIN, &planned);
        let b = compute(&m, &samples, T0 + 45 * MIN, T0 + 60 * MIN, &planned);
        assert_eq!(a.run_ms + b.run_ms, whole.run_ms);
        assert_eq!(a.produced + b.produced, whole.produced);
        assert_eq!(a.planned_ms + b.planned_ms, whole.planned_ms);
        assert_eq!(
            a.downtime_ms[&Category::Breakdown] + b.downtime_ms[&Category::Breakdown],
            whole.downtime_ms[&Category::Breakdown]
        );
    }

    #[test]
    fn planned_downtime_leaves_the_busy_time_and_an_unknown_state_the_completeness() {
        let m = model();
        let samples = vec![
            s(Role::Running, T0 + 10 * MIN, V::Bool(false)),
            s(Role::Reason, T0 + 10 * MIN, V::Num(90.0)),
            s(Role::Running, T0 + 40 * MIN, V::Bool(true)),
        ];
        let f = compute(&m, &samples, T0, T0 + 60 * MIN, &[(T0, T0 + 60 * MIN)]);
        assert_eq!(f.planned_downtime_ms, 30 * MIN);
        assert_eq!(f.run_ms, 20 * MIN);
        assert!(f.downtime_ms.is_empty(), "planned is not a loss");
        assert_eq!(f.availability, Some(1.0));
        assert!(
            (f.completeness - 50.0 / 60.0).abs() < 1e-12,
            "the first 10 minutes are unknown"
        );
    }

    #[test]
    fn counter_resets_and_wraps_count_what_was_produced() {
        let m = model();
        let c = |ts, v| s(Role::CycleCount, ts, V::Num(v));
        let samples = vec![
            c(T0, 65530.0),
            c(T0 + S, 65535.0),
            c(T0 + 2 * S, 4.0), // wrapped: 65535 → 0 → 4 = 5 more
            c(T0 + 3 * S, 10.0),
            c(T0 + 4 * S, 2.0), // reset to 0 far from the top: 2 more
            c(T0 + 4 * S, 2.0), // the same sample again
        ];
        let f = compute(&m, &samples, T0, T0 + MIN, &[]);
        assert_eq!(f.produced, 5 + 5 + 6 + 2);
    }

    #[test]
    fn a_stop_across_the_interval_end_is_judged_by_its_whole_length() {
        let m = model();
        // Stopped at 59:30 for 1 minute in all: a minor stop in both hours.
        let samples = vec![
            s(Role::Running, T0 - MIN, V::Bool(true)),
            s(Role::Running, T0 + 59 * MIN + 30 * S, V::Bool(false)),
            s(Role::Running, T0 + 60 * MIN + 30 * S, V::Bool(true)),
        ];
        let all = [(T0, T0 + 120 * MIN)];
        let f = compute(&m, &samples, T0, T0 + 60 * MIN, &all);
        assert_eq!(f.run_ms, 60 * MIN);
        // Unknown end (no sample after the stop yet): downtime so far.
        let f = compute(&m, &samples[..2], T0, T0 + 60 * MIN, &all);
        assert_eq!(f.run_ms, 59 * MIN + 30 * S);
        assert_eq!(f.downtime_ms[&Category::Unassigned], 30 * S);
    }

    #[test]
    fn a_state_string_runs_only_in_its_listed_values_and_edges_count_cycles() {
        let m = Model {
            running_values: vec!["RUN".into(), "AUTO".into()],
            ..model()
        };
        let samples = vec![
            s(Role::Running, T0, V::Text("AUTO".into())),
            s(Role::Running, T0 + 30 * MIN, V::Text("JAM".into())),
            s(Role::CycleStart, T0, V::Bool(true)),
            s(Role::CycleStart, T0 + S, V::Bool(false)),
            s(Role::CycleStart, T0 + 2 * S, V::Bool(true)),
            s(Role::CycleStart, T0 + 3 * S, V::Bool(true)),
            s(Role::CycleStart, T0 + 4 * S, V::Bool(false)),
            s(Role::CycleStart, T0 + 5 * S, V::Bool(true)),
        ];
        let f = compute(&m, &samples, T0, T0 + 60 * MIN, &[(T0, T0 + 60 * MIN)]);
        assert_eq!(f.run_ms, 30 * MIN);
        assert_eq!(f.produced, 2, "three rising edges: two whole cycles");
        assert_eq!(f.cycles[0].end - f.cycles[0].start, 2 * S);
    }

    /// Each sample of a reject code is one reject with its reason; a 0
    /// between rejects is no reject (the PLC clears the code).
    #[test]
    fn reject_codes_alone_count_one_reject_each_with_its_reason() {
        let m = model();
        let mut samples = vec![s(Role::Running, T0, V::Bool(true))];
        for i in 0..10 {
            samples.push(s(Role::CycleCount, T0 + i * S, V::Num(i as f64)));
        }
        for (t, code) in [(2, 3.0), (3, 0.0), (5, 7.0), (6, 0.0), (8, 3.0)] {
            samples.push(s(Role::RejectCode, T0 + t * S, V::Num(code)));
        }
        let f = compute(&m, &samples, T0, T0 + MIN, &[(T0, T0 + MIN)]);
        assert_eq!((f.produced, f.good, f.rejected), (9, 6, 3));
        let events: Vec<(i64, u64, Option<&str>, Option<&str>)> = f
            .quality_events
            .iter()
            .map(|q| (q.at - T0, q.rejected, q.code.as_deref(), q.reason.as_deref()))
            .collect();
        assert_eq!(
            events,
            [
                (2 * S, 1, Some("3"), Some("Underfilled")),
                (5 * S, 1, Some("7"), None),
                (8 * S, 1, Some("3"), Some("Underfilled")),
            ]
        );
    }

    /// Beside a reject counter, the code in force when it counts names the
    /// reason, and the counter alone says how many.
    #[test]
    fn a_reject_code_beside_a_counter_names_the_reason_of_its_increments() {
        let m = model();
        let samples = vec![
            s(Role::Running, T0, V::Bool(true)),
            s(Role::CycleCount, T0, V::Num(0.0)),
            s(Role::CycleCount, T0 + 50 * S, V::Num(20.0)),
            s(Role::RejectCount, T0, V::Num(0.0)),
            s(Role::RejectCode, T0 + 9 * S, V::Text("JAM".into())),
            s(Role::RejectCount, T0 + 10 * S, V::Num(2.0)),
            s(Role::RejectCode, T0 + 19 * S, V::Num(3.0)),
            s(Role::RejectCount, T0 + 20 * S, V::Num(3.0)),
            s(Role::RejectCode, T0 + 25 * S, V::Num(3.0)),
        ];
        let f = compute(&m, &samples, T0, T0 + MIN, &[(T0, T0 + MIN)]);
        assert_eq!((f.produced, f.good, f.rejected), (20, 17, 3));
        let events: Vec<(u64, Option<&str>, Option<&str>)> = f
            .quality_events
            .iter()
            .map(|q| (q.rejected, q.code.as_deref(), q.reason.as_deref()))
            .collect();
        assert_eq!(events, [(2, Some("JAM"), None), (1, Some("3"), Some("Underfilled"))]);
    }

    #[test]
    fn after_the_edge_died_the_state_is_unknown_not_carried_on() {
        let m = model();
        let samples = vec![
            s(Role::Running, T0 - MIN, V::Bool(false)),
            s(Role::Reason, T0 - MIN, V::Num(12.0)),
        ];
        let all = [(T0, T0 + 60 * MIN)];
        let f = compute_known(&m, &samples, T0, T0 + 60 * MIN, &all, T0 + 15 * MIN);
        assert_eq!(f.downtime_ms[&Category::Breakdown], 15 * MIN);
        assert_eq!(f.planned_ms, 60 * MIN);
        assert!((f.completeness - 0.25).abs() < 1e-12, "{}", f.completeness);
        assert_eq!(f.availability, Some(0.0));
    }

    /// What makes shifts cheap to compute: the figures of an interval are
    /// the sums of those of its parts, cut anywhere.
    #[test]
    fn the_figures_of_an_interval_are_the_sums_of_its_parts() {
        let m = model();
        let (samples, planned) = scripted_hour();
        let whole = compute(&m, &samples, T0, T0 + 60 * MIN, &planned);
        for cuts in [
            vec![T0 + 30 * MIN],
            vec![T0 + 7 * MIN + 1, T0 + 40 * MIN + 30 * S, T0 + 55 * MIN + 10 * S],
        ] {
            let mut bounds = vec![T0];
            bounds.extend(cuts);
            bounds.push(T0 + 60 * MIN);
            let mut sum = Figures::default();
            for w in bounds.windows(2) {
                sum.add(&compute(&m, &samples, w[0], w[1], &planned));
            }
            sum.finish();
            assert_eq!(
                (
                    sum.planned_ms,
                    sum.run_ms,
                    &sum.downtime_ms,
                    sum.produced,
                    sum.good,
                    sum.known_ms
                ),
                (
                    whole.planned_ms,
                    whole.run_ms,
                    &whole.downtime_ms,
                    whole.produced,
                    whole.good,
                    whole.known_ms
                )
            );
            assert!((sum.ideal_ms - whole.ideal_ms).abs() < 1e-6);
            assert_eq!(sum.availability, whole.availability);
        }
    }

    /// Each product has its ideal time; a stop without a reason in which
    /// the product changes is a changeover from the change on.
    #[test]
    fn products_have_their_ideal_times_and_a_product_change_in_a_stop_is_a_changeover() {
        let mut m = model();
        m.ideal_by_product.insert("A".into(), 1000.0);
        m.ideal_by_product.insert("B".into(), 4000.0);
        let samples = vec![
            s(Role::Running, T0, V::Bool(true)),
            s(Role::Product, T0, V::Text("A".into())),
            s(Role::CycleCount, T0, V::Num(0.0)),
            s(Role::CycleCount, T0 + 10 * MIN, V::Num(10.0)),
            s(Role::Running, T0 + 10 * MIN, V::Bool(false)),
            s(Role::Product, T0 + 14 * MIN, V::Text("B".into())),
            s(Role::Running, T0 + 20 * MIN, V::Bool(true)),
            s(Role::CycleCount, T0 + 30 * MIN, V::Num(15.0)),
            s(Role::Product, T0 + 40 * MIN, V::Text("C".into())),
            s(Role::CycleCount, T0 + 50 * MIN, V::Num(16.0)),
        ];
        let f = compute(&m, &samples, T0, T0 + 60 * MIN, &[(T0, T0 + 60 * MIN)]);
        // 10 pieces of A (1 s), 5 of B (4 s), 1 of C (not listed: the fixed 2 s).
        assert_eq!(f.ideal_ms, 10.0 * 1000.0 + 5.0 * 4000.0 + 2000.0);
        assert_eq!(f.downtime_ms[&Category::Unassigned], 4 * MIN);
        assert_eq!(f.downtime_ms[&Category::Setup], 6 * MIN);
        assert_eq!(f.downtimes.len(), 2);
        assert_eq!(f.downtimes[1].reason.as_deref(), Some("Changeover to B"));
        assert_eq!(f.cycles.last().and_then(|c| c.product.as_deref()), Some("C"));
    }
}
