//! Durations and sizes as people write them in a configuration file
//! (`"500ms"`, `"30s"`, `"64KiB"`). A leaf: it depends on nothing in the
//! crate, so the configuration and the drivers can both use it.

use std::time::Duration;

/// `500ms`, `30s`, `5m`, `1h`, `2d`, or a bare number of seconds (`"60"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration: use e.g. \"500ms\", \"30s\", \"5m\", \"1h\""))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' in '{s}': use ms, s, m, h or d"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `64KiB`, `256MiB`, `1GiB`, `10MB`, `500kB`, `4096B`, or a bare number of bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size: use e.g. \"64KiB\", \"256MiB\", \"1GiB\""))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "kB" | "KB" => 1e3,
        "KiB" => 1024.0,
        "MB" => 1e6,
        "MiB" => 1024.0 * 1024.0,
        "GB" => 1e9,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{s}': use B, KiB, MiB, GiB, kB, MB or GB"
            ))
        }
    };
    let v = n * mult;
    if !v.is_finite() || !(0.0..=1e18).contains(&v) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(v as u64)
}
