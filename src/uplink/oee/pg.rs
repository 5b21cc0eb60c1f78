//! The OEE folder on PostgreSQL: takes the marks of `oee_pending`, works
//! out which hours and shifts they touch, computes those intervals again
//! from the facts ([`super::engine`]) and replaces their rows and events,
//! all in one transaction.
//!
//! Invariants:
//! - Everything is computed from the facts, which hold each sample once:
//!   a replayed or duplicated sample changes nothing, a late one changes
//!   exactly the intervals it touches, and a crash before the commit
//!   leaves the marks for the next fold.
//! - A mark at `t` touches the hours from `t - minor_stop` (a stop it ends
//!   may become a minor one) to the next change of the running state or
//!   reason after the newest mark (the state it sets lasts until then),
//!   and every shift that overlaps them.
//! - An interval that has not ended is computed up to now (`computed_to`)
//!   and computed again by every fold until it has: a state is known from
//!   its sample to the next one, never into the future, so the live
//!   figures are those of the shift so far, and a machine that sends
//!   nothing (stopped, reporting by exception) still moves on. The hours
//!   still open and the hours the marks touch are separate ranges.
//! - A machine whose edge node is dead (NDEATH, no birth since) has an
//!   unknown state from its death on: its open hour is closed without
//!   carrying the last state further, and no later hour is made up.
//! - One folder at a time (an advisory lock); another one skips its turn.
//! - Samples below the quality threshold are not used, nor STALE ones
//!   (Sparkplug's quality 500: above every good code, but not good).

use std::collections::BTreeMap;

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::config::{Machine, OeeConfig};
use super::engine::{compute_known, Category, Figures, Role, Sample, V};
use super::shifts::instances;

const HOUR: i64 = 3_600_000;
/// Cycles of a start signal may begin up to this long before an interval.
const EDGE_LOOKBACK: i64 = HOUR;
/// The downtime categories that are losses, in the order of their columns
/// (`breakdown_ms` … `unassigned_ms`) in `oee_interval`.
const LOSSES: [Category; 6] = [
    Category::Breakdown,
    Category::Setup,
    Category::MinorStop,
    Category::Starved,
    Category::Blocked,
    Category::Unassigned,
];
/// A fold computes at most this much of one machine's history.
const MAX_HOURS: i64 = 24 * 62;

fn ts(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64)
}

pub(super) fn ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Folds what is pending; returns how many intervals were written.
pub async fn fold(client: &mut Client, cfg: &OeeConfig, now_ms: i64) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // Key: "spboee" in ASCII.
    let mine: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock(126970426484069)", &[])
        .await?
        .get(0);
    if !mine {
        return Ok(0);
    }
    let rows = tx.query("DELETE FROM oee_pending RETURNING machine, ts", &[]).await?;
    // Per machine: the oldest and the newest mark.
    let mut marks: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in rows {
        let t = ms(r.get(1));
        let e = marks.entry(r.get(0)).or_insert((t, t));
        e.0 = e.0.min(t);
        e.1 = e.1.max(t);
    }
    // Hours computed while they ran are computed again, up to now: from
    // where each machine's open hours were computed to.
    let open: BTreeMap<String, i64> = tx
        .query(
            "SELECT machine, min(computed_to) FROM oee_interval WHERE kind = 'hour' AND computed_to < end_at GROUP BY machine",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), ms(r.get(1))))
        .collect();
    // Dead edge nodes, once for all machines.
    let dead: BTreeMap<(String, String), i64> = tx
        .query(
            "SELECT group_id, node_id, last_death FROM sp_node_state WHERE NOT online AND last_death IS NOT NULL",
            &[],
        )
        .await?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), ms(r.get(2))))
        .collect();
    let mut written = 0;
    for m in &cfg.machines {
        // A machine no longer in the file: its marks are dropped. A mark
        // may change things from a minor stop before it on.
        let mark = marks
            .get(&m.name)
            .map(|&(first, last)| (first - m.model.minor_stop_ms, last));
        // The open hours are a range of their own (they may lie far from
        // the marks), unless the marks' range, which runs on to now,
        // already starts before them.
        let open = open
            .get(&m.name)
            .filter(|&&since| !matches!(mark, Some((first, _)) if first <= since));
        if mark.is_none() && open.is_none() {
            continue;
        }
        // The state is unknown from the death of a node that is dead now.
        let known_to = dead
            .get(&(m.group.clone(), m.node.clone()))
            .copied()
            .unwrap_or(i64::MAX);
        if let Some((since, last)) = mark {
            written += fold_machine(&tx, cfg, m, since, last, now_ms, known_to).await?;
        }
        if let Some(&since) = open {
            // Carried on to now, unless the edge is dead: then only its hour.
            let last = if known_to == i64::MAX { now_ms } else { since };
            written += fold_machine(&tx, cfg, m, since, last, now_ms, known_to).await?;
        }
    }
    tx.commit().await?;
    Ok(written)
}

/// The series id of each role the machine maps (those seen so far).
async fn series(
    tx: &tokio_postgres::Transaction<'_>,
    m: &Machine,
) -> Result<BTreeMap<Role, i64>, tokio_postgres::Error> {
    let names: Vec<&str> = m.metrics.values().map(String::as_str).collect();
    let rows = tx
        .query(
            "SELECT metric, series_id FROM sp_series WHERE group_id = $1 AND node_id = $2 AND device_id = $3 AND metric = ANY($4)",
            &[&m.group, &m.node, &m.device, &names],
        )
        .await?;
    let by_name: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(m.metrics
        .iter()
        .filter_map(|(role, metric)| by_name.get(metric).map(|id| (*role, *id)))
        .collect())
}

/// The samples of `ids` in `[from, to)` and, for each, the last one
/// before: one statement for all roles.
async fn samples(
    tx: &tokio_postgres::Transaction<'_>,
    ids: &BTreeMap<Role, i64>,
    from: i64,
    to: i64,
    quality: i32,
) -> Result<Vec<Sample>, tokio_postgres::Error> {
    let roles: Vec<Role> = ids.keys().copied().collect();
    let series: Vec<i64> = ids.values().copied().collect();
    let starts: Vec<std::time::SystemTime> = roles
        .iter()
        .map(|r| ts(from - if *r == Role::CycleStart { EDGE_LOOKBACK } else { 0 }))
        .collect();
    let index: Vec<i32> = (0..roles.len() as i32).collect();
    let rows = tx
        .query(
            "SELECT s.k, f.ts, f.v_int, f.v_float, f.v_bool, f.v_text
             FROM unnest($1::int8[], $2::timestamptz[], $3::int4[]) AS s(id, a, k)
             CROSS JOIN LATERAL (
                 (SELECT ts, v_int, v_float, v_bool, v_text FROM sp_series_fact
                   WHERE series_id = s.id AND ts < s.a AND quality BETWEEN $5 AND 255 ORDER BY ts DESC LIMIT 1)
                 UNION ALL
                 (SELECT ts, v_int, v_float, v_bool, v_text FROM sp_series_fact
                   WHERE series_id = s.id AND ts >= s.a AND ts < $4 AND quality BETWEEN $5 AND 255)
             ) AS f",
            &[&series, &starts, &index, &ts(to), &quality],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let k: i32 = r.get(0);
        let (i, f, bo, t): (Option<i64>, Option<f64>, Option<bool>, Option<String>) =
            (r.get(2), r.get(3), r.get(4), r.get(5));
        let value = match (i, f, bo, t) {
            (_, _, Some(b), _) => V::Bool(b),
            (_, Some(x), _, _) => V::Num(x),
            (Some(x), _, _, _) => V::Num(x as f64),
            (_, _, _, Some(s)) => V::Text(s),
            _ => continue,
        };
        out.push(Sample {
            role: roles[k as usize],
            ts: ms(r.get(1)),
            value,
        });
    }
    Ok(out)
}

async fn fold_machine(
    tx: &tokio_postgres::Transaction<'_>,
    cfg: &OeeConfig,
    m: &Machine,
    since: i64,
    last: i64,
    now_ms: i64,
    known_to: i64,
) -> Result<u64, tokio_postgres::Error> {
    let ids = series(tx, m).await?;
    let start_hour = since.div_euclid(HOUR) * HOUR;
    let minor = m.model.minor_stop_ms;
    // Up to the next change of state after the newest mark (or now).
    let mut until = last;
    let state_ids: Vec<i64> = [Role::Running, Role::Reason]
        .iter()
        .filter_map(|r| ids.get(r).copied())
        .collect();
    if !state_ids.is_empty() {
        let next: Option<std::time::SystemTime> = tx
            .query_one(
                "SELECT min(ts) FROM sp_series_fact WHERE series_id = ANY($1) AND ts > $2",
                &[&state_ids, &ts(last)],
            )
            .await?
            .get(0);
        until = next.map_or(now_ms.min(known_to).max(last), ms);
    }
    let end_hour = (until.div_euclid(HOUR) * HOUR).min(start_hour + MAX_HOURS * HOUR);
    // Only the hours touched are computed from the samples.
    let all = samples(tx, &ids, start_hour, end_hour + HOUR + minor, cfg.quality_threshold).await?;
    let planned = |from: i64, to: i64| -> Vec<(i64, i64)> {
        if cfg.shifts.is_empty() {
            return vec![(from, to)];
        }
        let mut p = Vec::new();
        for s in instances(&cfg.shifts, &cfg.tz, from / 1000, to / 1000) {
            let mut at = s.start * 1000;
            for &(a, b) in &s.breaks {
                p.push((at, a * 1000));
                at = b * 1000;
            }
            p.push((at, s.end * 1000));
        }
        p.retain(|(a, b)| a < b);
        p.sort_unstable();
        p
    };
    let mut written = 0;
    let mut hour = start_hour;
    // An interval still running is computed up to now: the state a
    // sample sets is known until the next sample, never into the future.
    let upto = |from: i64, to: i64| to.min(now_ms).max(from);
    while hour <= end_hour {
        let to = upto(hour, hour + HOUR);
        let f = compute_known(&m.model, &all, hour, to, &planned(hour, to), known_to);
        write_interval(tx, &m.name, "hour", "", (hour, hour + HOUR), to, &f).await?;
        // Events ending before `since` cannot have changed.
        replace_events(tx, &m.name, (hour, hour + HOUR), since, &f).await?;
        written += 1;
        hour += HOUR;
    }
    // A shift is the sum of its whole hours (their rows, just written or
    // older) and of the pieces of hours it starts or ends in, computed
    // from the samples: its cost does not grow with its length.
    for s in instances(&cfg.shifts, &cfg.tz, start_hour / 1000, (end_hour + HOUR) / 1000) {
        let (from, end) = (s.start * 1000, s.end * 1000);
        let to = upto(from, end);
        let (h0, h1) = ((from + HOUR - 1).div_euclid(HOUR) * HOUR, to.div_euclid(HOUR) * HOUR);
        let mut f = Figures::default();
        let pieces = if h0 < h1 {
            f.add(&hour_sums(tx, &m.name, h0, h1).await?.0);
            vec![(from, h0), (h1, to)]
        } else {
            vec![(from, to)]
        };
        for (a, b) in pieces.into_iter().filter(|(a, b)| a < b) {
            let near = if a >= start_hour && b <= end_hour + HOUR {
                None
            } else {
                Some(samples(tx, &ids, a, b + minor, cfg.quality_threshold).await?)
            };
            f.add(&compute_known(
                &m.model,
                near.as_deref().unwrap_or(&all),
                a,
                b,
                &planned(a, b),
                known_to,
            ));
        }
        // Planned time from the calendar: hours never computed (no data
        // yet) are planned and unknown.
        f.planned_ms = planned(from, to).iter().map(|(a, b)| b - a).sum();
        f.finish();
        write_interval(tx, &m.name, "shift", &s.name, (from, end), to, &f).await?;
        written += 1;
    }
    Ok(written)
}

/// The sums of a machine's hour rows in `[from, to)` (ratios not set),
/// and how many hours there are.
pub(super) async fn hour_sums(
    tx: &impl tokio_postgres::GenericClient,
    machine: &str,
    from: i64,
    to: i64,
) -> Result<(Figures, i64), tokio_postgres::Error> {
    let r = tx
        .query_one(
            "SELECT coalesce(sum(planned_ms), 0)::int8, coalesce(sum(planned_downtime_ms), 0)::int8,
                    coalesce(sum(run_ms), 0)::int8, coalesce(sum(breakdown_ms), 0)::int8,
                    coalesce(sum(setup_ms), 0)::int8, coalesce(sum(minor_stop_ms), 0)::int8,
                    coalesce(sum(starved_ms), 0)::int8, coalesce(sum(blocked_ms), 0)::int8,
                    coalesce(sum(unassigned_ms), 0)::int8, coalesce(sum(produced), 0)::int8,
                    coalesce(sum(good), 0)::int8, coalesce(sum(rejected), 0)::int8,
                    coalesce(sum(ideal_ms), 0)::float8,
                    coalesce(sum(coalesce(known_ms, round(completeness * planned_ms)::int8)), 0)::int8, count(*)
             FROM oee_interval WHERE machine = $1 AND kind = 'hour' AND start_at >= $2 AND start_at < $3",
            &[&machine, &ts(from), &ts(to)],
        )
        .await?;
    let n = |i: usize| r.get::<_, i64>(i);
    let mut f = Figures {
        planned_ms: n(0),
        planned_downtime_ms: n(1),
        run_ms: n(2),
        produced: n(9) as u64,
        good: n(10) as u64,
        rejected: n(11) as u64,
        ideal_ms: r.get(12),
        known_ms: n(13),
        ..Figures::default()
    };
    for (i, c) in LOSSES.into_iter().enumerate() {
        if n(3 + i) > 0 {
            f.downtime_ms.insert(c, n(3 + i));
        }
    }
    Ok((f, n(14)))
}

#[allow(clippy::too_many_arguments)]
async fn write_interval(
    tx: &tokio_postgres::Transaction<'_>,
    machine: &str,
    kind: &str,
    shift: &str,
    (from, to): (i64, i64),
    computed_to: i64,
    f: &Figures,
) -> Result<(), tokio_postgres::Error> {
    let [breakdown, setup, minor_stop, starved, blocked, unassigned] =
        LOSSES.map(|c| f.downtime_ms.get(&c).copied().unwrap_or(0));
    let (produced, good, rejected) = (f.produced as i64, f.good as i64, f.rejected as i64);
    let params: [&(dyn ToSql + Sync); 25] = [
        &machine,
        &kind,
        &ts(from),
        &ts(to),
        &shift,
        &f.planned_ms,
        &f.planned_downtime_ms,
        &f.run_ms,
        &breakdown,
        &setup,
        &minor_stop,
        &starved,
        &blocked,
        &unassigned,
        &produced,
        &good,
        &rejected,
        &f.ideal_ms,
        &f.availability,
        &f.performance,
        &f.quality,
        &f.oee,
        &f.completeness,
        &ts(computed_to),
        &f.known_ms,
    ];
    tx.execute(
        "INSERT INTO oee_interval (machine, kind, start_at, end_at, shift, planned_ms, planned_downtime_ms, run_ms,
             breakdown_ms, setup_ms, minor_stop_ms, starved_ms, blocked_ms, unassigned_ms, produced, good, rejected,
             ideal_ms, availability, performance, quality, oee, completeness, computed_to, known_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)
         ON CONFLICT (machine, kind, start_at) DO UPDATE SET end_at = EXCLUDED.end_at, shift = EXCLUDED.shift,
             planned_ms = EXCLUDED.planned_ms, planned_downtime_ms = EXCLUDED.planned_downtime_ms, run_ms = EXCLUDED.run_ms,
             breakdown_ms = EXCLUDED.breakdown_ms, setup_ms = EXCLUDED.setup_ms, minor_stop_ms = EXCLUDED.minor_stop_ms,
             starved_ms = EXCLUDED.starved_ms, blocked_ms = EXCLUDED.blocked_ms, unassigned_ms = EXCLUDED.unassigned_ms,
             produced = EXCLUDED.produced, good = EXCLUDED.good, rejected = EXCLUDED.rejected, ideal_ms = EXCLUDED.ideal_ms,
             availability = EXCLUDED.availability, performance = EXCLUDED.performance, quality = EXCLUDED.quality,
             oee = EXCLUDED.oee, completeness = EXCLUDED.completeness, computed_to = EXCLUDED.computed_to, known_ms = EXCLUDED.known_ms,
             computed_at = now()",
        &params,
    )
    .await?;
    Ok(())
}

/// The hour's cycles, downtimes and quality events, replaced.
async fn replace_events(
    tx: &tokio_postgres::Transaction<'_>,
    machine: &str,
    (from, to): (i64, i64),
    since: i64,
    f: &Figures,
) -> Result<(), tokio_postgres::Error> {
    let (a, b, c) = (ts(from), ts(to), ts(since.max(from)));
    tx.execute(
        "WITH c AS (DELETE FROM oee_cycle WHERE machine = $1 AND end_at >= $4 AND end_at < $3),
              q AS (DELETE FROM oee_quality WHERE machine = $1 AND at >= $4 AND at < $3)
         DELETE FROM oee_downtime WHERE machine = $1 AND start_at >= $2 AND start_at < $3 AND end_at >= $4",
        &[&machine, &a, &b, &c],
    )
    .await?;
    let since = since.max(from);
    let cycles: Vec<_> = f.cycles.iter().filter(|x| x.end >= since).collect();
    let downtimes: Vec<_> = f.downtimes.iter().filter(|x| x.end >= since).collect();
    let quality: Vec<_> = f.quality_events.iter().filter(|x| x.at >= since).collect();
    if cycles.is_empty() && downtimes.is_empty() && quality.is_empty() {
        return Ok(());
    }
    // One statement for the three tables, whatever the number of events:
    // an hour of a fast machine has thousands of cycles.
    let times = |v: &mut dyn Iterator<Item = i64>| v.map(ts).collect::<Vec<_>>();
    let c_start = times(&mut cycles.iter().map(|c| c.start));
    let c_end = times(&mut cycles.iter().map(|c| c.end));
    let c_duration: Vec<f64> = cycles
        .iter()
        .map(|c| (c.end - c.start) as f64 / c.count.max(1) as f64)
        .collect();
    let c_count: Vec<i64> = cycles.iter().map(|c| c.count as i64).collect();
    let c_product: Vec<Option<&str>> = cycles.iter().map(|c| c.product.as_deref()).collect();
    let d_start = times(&mut downtimes.iter().map(|x| x.start));
    let d_end = times(&mut downtimes.iter().map(|x| x.end));
    let d_code: Vec<Option<&str>> = downtimes.iter().map(|x| x.code.as_deref()).collect();
    let d_reason: Vec<Option<&str>> = downtimes.iter().map(|x| x.reason.as_deref()).collect();
    let d_category: Vec<&str> = downtimes.iter().map(|x| x.category.as_str()).collect();
    let d_planned: Vec<bool> = downtimes.iter().map(|x| x.category == Category::Planned).collect();
    let q_at = times(&mut quality.iter().map(|x| x.at));
    let q_good: Vec<i64> = quality.iter().map(|x| x.good as i64).collect();
    let q_rejected: Vec<i64> = quality.iter().map(|x| x.rejected as i64).collect();
    let q_code: Vec<Option<&str>> = quality.iter().map(|x| x.code.as_deref()).collect();
    let q_reason: Vec<Option<&str>> = quality.iter().map(|x| x.reason.as_deref()).collect();
    let params: [&(dyn ToSql + Sync); 17] = [
        &machine,
        &c_start,
        &c_end,
        &c_duration,
        &c_count,
        &c_product,
        &d_start,
        &d_end,
        &d_code,
        &d_reason,
        &d_category,
        &d_planned,
        &q_at,
        &q_good,
        &q_rejected,
        &q_code,
        &q_reason,
    ];
    tx.execute(
        "WITH c AS (INSERT INTO oee_cycle (machine, start_at, end_at, duration_ms, count, product)
                    SELECT $1, * FROM unnest($2::timestamptz[], $3::timestamptz[], $4::float8[], $5::int8[], $6::text[])),
              d AS (INSERT INTO oee_downtime (machine, start_at, end_at, reason_code, reason, category, planned)
                    SELECT $1, * FROM unnest($7::timestamptz[], $8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::bool[]))
         INSERT INTO oee_quality (machine, at, good, rejected, reason_code, reason)
         SELECT $1, * FROM unnest($13::timestamptz[], $14::int8[], $15::int8[], $16::text[], $17::text[])",
        &params,
    )
    .await?;
    Ok(())
}

/// The cycles of each machine's hours before a day boundary: summed once
/// a day, so the live view reads only the recent hours each time.
#[derive(Debug, Default)]
pub struct CycleBase {
    before: i64,
    cycles: BTreeMap<String, i64>,
}

/// Each machine's figures for the shift running at `now_ms` (none outside
/// shifts), and its cycles over all hours (hours before yesterday as of
/// the last day boundary, from `base`).
pub async fn live(
    client: &Client,
    base: &mut CycleBase,
    now_ms: i64,
) -> Result<Vec<crate::uplink::stats::OeeLive>, tokio_postgres::Error> {
    const DAY: i64 = 24 * HOUR;
    let before = (now_ms.div_euclid(DAY) - 1) * DAY;
    if base.before != before {
        let rows = client
            .query(
                "SELECT machine, sum(produced)::bigint FROM oee_interval WHERE kind = 'hour' AND start_at < $1 GROUP BY machine",
                &[&ts(before)],
            )
            .await?;
        base.cycles = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        base.before = before;
    }
    let now = ts(now_ms);
    let rows = client
        .query(
            "SELECT m.machine, s.shift, s.availability, s.performance, s.quality, s.oee, m.cycles
             FROM (SELECT machine, sum(produced)::bigint AS cycles FROM oee_interval
                   WHERE kind = 'hour' AND start_at >= $2 GROUP BY machine) m
             LEFT JOIN LATERAL (SELECT shift, availability, performance, quality, oee FROM oee_interval
                 WHERE machine = m.machine AND kind = 'shift' AND start_at <= $1 AND end_at > $1
                 ORDER BY start_at DESC LIMIT 1) s ON true
             ORDER BY m.machine",
            &[&now, &ts(before)],
        )
        .await?;
    let mut live: BTreeMap<String, crate::uplink::stats::OeeLive> = base
        .cycles
        .iter()
        .map(|(m, &n)| {
            let l = crate::uplink::stats::OeeLive {
                machine: m.clone(),
                cycles: n.max(0) as u64,
                ..Default::default()
            };
            (m.clone(), l)
        })
        .collect();
    for r in &rows {
        let machine: String = r.get(0);
        let old = live.get(&machine).map_or(0, |l| l.cycles);
        let recent = r.get::<_, i64>(6).max(0) as u64;
        live.insert(
            machine.clone(),
            crate::uplink::stats::OeeLive {
                machine,
                shift: r.get(1),
                availability: r.get(2),
                performance: r.get(3),
                quality: r.get(4),
                oee: r.get(5),
                cycles: old + recent,
            },
        );
    }
    Ok(live.into_values().collect())
}
