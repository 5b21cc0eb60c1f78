//! `spb-uplink oee`: a machine's figures for its current shift or any
//! period, and its top downtime reasons, from PostgreSQL, as text for a
//! process engineer.
//!
//! Invariants: a period's figures are recomputed from the sums of its
//! hours (run time, planned busy time, ideal time, counts), never averaged
//! from the hours' ratios; times given without a zone are the plant's
//! (`[oee] time_zone`).

use std::fmt::Write as _;

use tokio_postgres::Client;

/// Which interval to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Period {
    /// The shift running now, or else the last one computed.
    Shift,
    /// From and to, as the engineer typed them (`2026-11-30 06:00`).
    Range(String, String),
}

/// The report, as text.
pub async fn report(client: &Client, time_zone: &str, machine: &str, period: &Period) -> Result<String, String> {
    let db = |e: tokio_postgres::Error| format!("postgres: {e}");
    client
        .batch_execute(&format!("SET TIME ZONE '{}'", time_zone.replace('\'', "")))
        .await
        .map_err(db)?;
    let (from, to, label): (std::time::SystemTime, std::time::SystemTime, String) = match period {
        Period::Shift => {
            let row = client
                .query_opt(
                    "SELECT start_at, end_at, shift FROM oee_interval WHERE machine = $1 AND kind = 'shift'
                     ORDER BY (start_at <= now() AND end_at > now()) DESC, start_at DESC LIMIT 1",
                    &[&machine],
                )
                .await
                .map_err(db)?
                .ok_or_else(|| format!("no shift computed for machine '{machine}' yet"))?;
            let name: String = row.get(2);
            (row.get(0), row.get(1), format!("shift \"{name}\""))
        }
        Period::Range(a, b) => {
            let row = client
                .query_one("SELECT $1::text::timestamptz, $2::text::timestamptz", &[a, b])
                .await
                .map_err(|e| format!("--from/--to: {e} (e.g. \"2026-11-30 06:00\", in {time_zone})"))?;
            (row.get(0), row.get(1), "period".to_string())
        }
    };
    let (mut f, hours) = super::pg::hour_sums(client, machine, super::pg::ms(from), super::pg::ms(to))
        .await
        .map_err(db)?;
    if hours == 0 {
        return Err(format!("no hour computed for machine '{machine}' in that {label}"));
    }
    f.finish();
    let bounds = client
        .query_one(
            "SELECT to_char($1::timestamptz, 'YYYY-MM-DD HH24:MI'), to_char($2::timestamptz, 'YYYY-MM-DD HH24:MI')",
            &[&from, &to],
        )
        .await
        .map_err(db)?;
    let (from_s, to_s): (String, String) = (bounds.get(0), bounds.get(1));
    let (planned, planned_down, run, known) = (f.planned_ms, f.planned_downtime_ms, f.run_ms, f.known_ms);
    let (produced, good, rejected) = (f.produced, f.good, f.rejected);
    let pct = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{:.1}%", v * 100.0));
    let hm = duration;
    let mut out = String::new();
    let _ = writeln!(out, "{machine}: {label}, {from_s} to {to_s} ({time_zone})");
    let _ = writeln!(
        out,
        "OEE {}  =  availability {}  x  performance {}  x  quality {}",
        pct(f.oee),
        pct(f.availability),
        pct(f.performance),
        pct(f.quality)
    );
    let _ = writeln!(
        out,
        "planned {}, planned downtime {}, run {}; produced {produced}, good {good}, rejected {rejected}",
        hm(planned),
        hm(planned_down),
        hm(run)
    );
    let losses: Vec<String> = f
        .downtime_ms
        .iter()
        .filter(|(_, ms)| **ms > 0)
        .map(|(c, ms)| format!("{} {}", c.as_str(), hm(*ms)))
        .collect();
    let _ = writeln!(
        out,
        "downtime: {}",
        if losses.is_empty() {
            "none".to_string()
        } else {
            losses.join(", ")
        }
    );
    if planned > 0 && known < planned {
        let _ = writeln!(
            out,
            "data: {:.0}% of the planned time known",
            known as f64 / planned as f64 * 100.0
        );
    }
    let top = client
        .query(
            "SELECT coalesce(reason_code, '-'), coalesce(reason, '(no reason)'), category,
                    (sum(extract(epoch FROM least(end_at, $3) - greatest(start_at, $2))) * 1000)::bigint AS ms, count(*)
             FROM oee_downtime WHERE machine = $1 AND end_at > $2 AND start_at < $3
             GROUP BY 1, 2, 3 ORDER BY ms DESC LIMIT 5",
            &[&machine, &from, &to],
        )
        .await
        .map_err(db)?;
    if !top.is_empty() {
        let _ = writeln!(out, "top downtime reasons:");
        for r in &top {
            let (code, reason, category, ms, stops): (String, String, String, i64, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            let _ = writeln!(
                out,
                "  {:>8}  {code:>6}  {reason} ({category}, {stops} stop{})",
                hm(ms),
                if stops == 1 { "" } else { "s" }
            );
        }
    }
    let rejects = client
        .query(
            "SELECT coalesce(reason_code, '-'), coalesce(max(reason), '(no reason)'), sum(rejected)::bigint AS n
             FROM oee_quality WHERE machine = $1 AND at >= $2 AND at < $3 AND rejected > 0
             GROUP BY 1 ORDER BY n DESC, 1 LIMIT 5",
            &[&machine, &from, &to],
        )
        .await
        .map_err(db)?;
    if !rejects.is_empty() {
        let _ = writeln!(out, "top reject reasons:");
        for r in &rejects {
            let (code, reason, n): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
            let _ = writeln!(out, "  {n:>8}  {code:>6}  {reason}");
        }
    }
    Ok(out)
}

/// A duration as an engineer reads it: `2h05m`, `5m12s`, `42s`.
fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_read_in_the_largest_sensible_units() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(42_900), "42s");
        assert_eq!(duration(312_000), "5m12s");
        assert_eq!(duration(3_000_000), "50m00s");
        assert_eq!(duration(7_500_000), "2h05m");
    }
}
