//! `[oee]` of the uplink's file: the plant's time zone, the shift calendar
//! and each machine's mapping of Sparkplug metrics to OEE roles, read with
//! the gateway's reader (every error names its key path and line:column).
//!
//! ```toml
//! [oee]
//! time_zone = "Europe/Berlin"       # IANA name (default UTC)
//! quality_threshold = 192           # samples of a lower quality (or STALE, 500) are not used
//! minor_stop = "2m"                 # shorter stops are performance loss
//! [[oee.shifts]]
//! name = "early"
//! start = "06:00"
//! end = "14:00"                     # not after start: it ends the next day
//! days = ["mon", "tue", "wed", "thu", "fri"]   # default every day
//! breaks = ["09:00-09:15"]          # planned downtime
//! [[oee.machines]]
//! name = "press4"
//! node = "Plant1/gw-01"             # group/node
//! device = "press4"                 # absent: node metrics
//! cycle_count = "Counters/Strokes"  # or cycle_start (a BOOL whose rising edge is a cycle)
//! running = "State"                 # a BOOL, or a state string with…
//! running_values = ["running"]      # …these values meaning running
//! fault_code = "Fault/Code"         # or downtime_reason
//! good_count = "Counters/Good"
//! reject_count = "Counters/Reject"
//! reject_code = "Quality/RejectCode" # each reject's reason (see README)
//! ideal_cycle_time = "2.5s"         # or ideal_cycle_time_metric = "Recipe/IdealCycle" (seconds)
//! product = "Recipe/Name"           # a change during a stop without a reason: changeover
//! counter_wrap = 65535              # the counters' top, if they wrap
//! [oee.machines.reasons]
//! 12 = { reason = "Hydraulic pressure low", category = "breakdown" }
//! [oee.machines.reject_reasons]
//! 3 = "Underfilled"
//! [oee.machines.ideal_cycle_times]  # per product, before ideal_cycle_time
//! "PN-4711" = "2.1s"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use super::engine::{Category, Model, Role};
use super::shifts::{parse_clock, parse_weekday, Shift};
use super::tz::TimeZone;
use crate::config::reader::Table;

/// One machine: where its metrics are and how to read them.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub name: String,
    pub group: String,
    pub node: String,
    /// Empty for node metrics.
    pub device: String,
    /// The metric name of each role it maps.
    pub metrics: BTreeMap<Role, String>,
    pub model: Model,
}

/// `[oee]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OeeConfig {
    pub time_zone: String,
    pub tz: TimeZone,
    pub quality_threshold: i32,
    pub shifts: Vec<Shift>,
    pub machines: Vec<Machine>,
}

/// The keys that map a metric to a role, and the role.
const ROLE_KEYS: [(&str, Role); 10] = [
    ("cycle_count", Role::CycleCount),
    ("cycle_start", Role::CycleStart),
    ("running", Role::Running),
    ("fault_code", Role::Reason),
    ("downtime_reason", Role::Reason),
    ("good_count", Role::GoodCount),
    ("reject_count", Role::RejectCount),
    ("reject_code", Role::RejectCode),
    ("ideal_cycle_time_metric", Role::IdealCycleTime),
    ("product", Role::Product),
];

impl Machine {
    /// What is wrong with this machine's mapping against a birth of its
    /// node or device (`declared`: each metric's name and datatype): a
    /// mapped metric the birth does not declare, or one whose datatype
    /// cannot play its role. Empty: the mapping holds.
    pub fn check_birth(&self, declared: &[(&str, crate::sparkplug::DataType)]) -> Vec<String> {
        use crate::sparkplug::DataType as D;
        let mut problems = Vec::new();
        for (role, metric) in &self.metrics {
            let Some(&(_, dt)) = declared.iter().find(|(n, _)| n == metric) else {
                problems.push(format!(
                    "machine '{}': {} metric '{metric}' is not in the birth of {}/{}{}",
                    self.name,
                    role_key(*role),
                    self.group,
                    self.node,
                    if self.device.is_empty() {
                        String::new()
                    } else {
                        format!("/{}", self.device)
                    }
                ));
                continue;
            };
            let integer = dt.is_numeric() && !matches!(dt, D::Float | D::Double);
            let fits = match role {
                Role::CycleCount | Role::GoodCount | Role::RejectCount => integer,
                Role::CycleStart => dt == D::Boolean || integer,
                Role::Running if self.model.running_values.is_empty() => dt == D::Boolean || integer,
                Role::Running => matches!(dt, D::String | D::Text) || integer,
                Role::Reason | Role::RejectCode | Role::Product => integer || matches!(dt, D::String | D::Text),
                Role::IdealCycleTime => dt.is_numeric(),
            };
            if !fits {
                let wants = match role {
                    Role::CycleCount | Role::GoodCount | Role::RejectCount => "an integer counter",
                    Role::CycleStart => "a Boolean (or an integer)",
                    Role::Running if self.model.running_values.is_empty() => {
                        "a Boolean (or give running_values for a state)"
                    }
                    Role::Running => "a state string or integer",
                    Role::Reason | Role::RejectCode | Role::Product => "an integer or string code",
                    Role::IdealCycleTime => "a number of seconds",
                };
                problems.push(format!(
                    "machine '{}': {} metric '{metric}' is {dt}, but the role needs {wants}",
                    self.name,
                    role_key(*role)
                ));
            }
        }
        problems
    }
}

/// The key that maps `role` (for messages).
fn role_key(role: Role) -> &'static str {
    ROLE_KEYS.iter().find(|(_, r)| *r == role).map_or("a", |(k, _)| k)
}

/// Reads `[oee]` (errors go to the table's context).
pub fn read(t: &Table) -> OeeConfig {
    let time_zone = t.opt_str("time_zone").unwrap_or_else(|| "UTC".into());
    let tz = match TimeZone::load(&time_zone) {
        Ok(tz) => tz,
        Err(e) => {
            t.invalid("time_zone", e);
            TimeZone::utc()
        }
    };
    let quality_threshold = t.int_in("quality_threshold", 192, 0..=255) as i32;
    let minor_stop = t.duration_or("minor_stop", Duration::from_secs(120));
    let shifts: Vec<Shift> = t.tables("shifts").iter().filter_map(read_shift).collect();
    for (i, s) in shifts.iter().enumerate() {
        if shifts[..i].iter().any(|o| o.name == s.name) {
            t.invalid("shifts", format!("shift '{}' is defined twice", s.name));
        }
    }
    let machines: Vec<Machine> = t
        .tables("machines")
        .iter()
        .filter_map(|m| read_machine(m, minor_stop))
        .collect();
    for (i, m) in machines.iter().enumerate() {
        if machines[..i].iter().any(|o| o.name == m.name) {
            t.invalid("machines", format!("machine '{}' is defined twice", m.name));
        }
    }
    t.finish(&["time_zone", "quality_threshold", "minor_stop", "shifts", "machines"]);
    OeeConfig {
        time_zone,
        tz,
        quality_threshold,
        shifts,
        machines,
    }
}

fn read_shift(t: &Table) -> Option<Shift> {
    let name = t.req_str("name", "the shift's name, e.g. \"early\"");
    let clock = |key: &str| {
        let v = t.req_str(key, "a local time of day, e.g. \"06:00\"")?;
        parse_clock(&v).map_err(|e| t.invalid(key, e)).ok()
    };
    let (start, end) = (clock("start"), clock("end"));
    let mut days = [true; 7];
    if let Some(list) = t.opt_str_list("days") {
        days = [false; 7];
        for d in &list {
            match parse_weekday(d) {
                Ok(i) => days[i] = true,
                Err(e) => t.invalid("days", e),
            }
        }
        if list.is_empty() {
            t.invalid("days", "at least one weekday (or leave days out: every day)");
        }
    }
    let mut breaks = Vec::new();
    for b in t.opt_str_list("breaks").unwrap_or_default() {
        let parsed = b
            .split_once('-')
            .ok_or_else(|| format!("'{b}' is not a break: use \"HH:MM-HH:MM\""))
            .and_then(|(a, z)| Ok((parse_clock(a.trim())?, parse_clock(z.trim())?)));
        match parsed {
            Ok((a, z)) if a != z => breaks.push((a, z)),
            Ok(_) => t.invalid("breaks", format!("'{b}' is empty")),
            Err(e) => t.invalid("breaks", e),
        }
    }
    t.finish(&["name", "start", "end", "days", "breaks"]);
    Some(Shift {
        name: name?,
        start: start?,
        end: end?,
        days,
        breaks,
    })
}

fn read_machine(t: &Table, minor_stop: Duration) -> Option<Machine> {
    let name = t.req_str("name", "the machine's name, e.g. \"press4\"");
    let node = t.req_str("node", "its edge node as group/node, e.g. \"Plant1/gw-01\"");
    let (group, node) = match node.as_deref().map(|n| n.split_once('/')) {
        Some(Some((g, n))) if !g.is_empty() && !n.is_empty() && !n.contains('/') => (g.to_string(), n.to_string()),
        Some(_) => {
            t.invalid("node", "group/node, e.g. \"Plant1/gw-01\"");
            (String::new(), String::new())
        }
        None => (String::new(), String::new()),
    };
    let device = t.opt_str("device").unwrap_or_default();
    let mut metrics = BTreeMap::new();
    for (key, role) in ROLE_KEYS {
        if let Some(m) = t.opt_str(key) {
            if metrics.insert(role, m).is_some() {
                t.invalid(key, "fault_code and downtime_reason map the same role: give one");
            }
        }
    }
    match (
        metrics.contains_key(&Role::CycleCount),
        metrics.contains_key(&Role::CycleStart),
    ) {
        (false, false) => t.missing("cycle_count", "cycle_count (a counter) or cycle_start (a BOOL edge)"),
        (true, true) => t.invalid("cycle_start", "give cycle_count or cycle_start, not both"),
        _ => {}
    }
    if !metrics.contains_key(&Role::Running) {
        t.missing(
            "running",
            "the metric that says whether it runs (a BOOL or a state string)",
        );
    }
    let running_values = t.opt_str_list("running_values").unwrap_or_default();
    let ideal_cycle_ms = t.opt_duration("ideal_cycle_time").map(|d| d.as_secs_f64() * 1000.0);
    let mut ideal_by_product = BTreeMap::new();
    let product_table = t.opt_table("ideal_cycle_times");
    if let Some(pt) = &product_table {
        for (product, _, _) in pt.entries() {
            if let Some(d) = pt.opt_duration(&product) {
                if d.is_zero() {
                    pt.invalid(&product, "must be more than 0");
                }
                ideal_by_product.insert(product, d.as_secs_f64() * 1000.0);
            }
        }
        if !metrics.contains_key(&Role::Product) {
            t.invalid(
                "ideal_cycle_times",
                "per product: map the product metric too (product = \"…\")",
            );
        }
    }
    match (
        ideal_cycle_ms,
        metrics.contains_key(&Role::IdealCycleTime) || product_table.is_some(),
    ) {
        (None, false) => t.missing(
            "ideal_cycle_time",
            "the ideal cycle time, e.g. \"2.5s\", or ideal_cycle_time_metric, or ideal_cycle_times per product",
        ),
        (Some(ms), _) if ms <= 0.0 => t.invalid("ideal_cycle_time", "must be more than 0"),
        _ => {}
    }
    let wrap = t.opt_f64("counter_wrap");
    if wrap.is_some_and(|w| w < 1.0) {
        t.invalid("counter_wrap", "the counters' largest value, e.g. 65535");
    }
    let minor = t.opt_duration("minor_stop").unwrap_or(minor_stop);
    let mut reasons = BTreeMap::new();
    if let Some(rt) = t.opt_table("reasons") {
        for (code, _, _) in rt.entries() {
            let Some(r) = rt.opt_table(&code) else { continue };
            let reason = r.req_str("reason", "what the code means, e.g. \"Hydraulic pressure low\"");
            let category = r.req_str("category", "planned, breakdown, setup, minor_stop, starved or blocked");
            let category = category.and_then(|c| {
                let parsed = Category::parse(&c);
                if parsed.is_none() {
                    r.invalid(
                        "category",
                        format!("'{c}': use planned, breakdown, setup, minor_stop, starved or blocked"),
                    );
                }
                parsed
            });
            r.finish(&["reason", "category"]);
            if let (Some(reason), Some(category)) = (reason, category) {
                reasons.insert(code, (reason, category));
            }
        }
    }
    let mut reject_reasons = BTreeMap::new();
    let reject_table = t.opt_table("reject_reasons");
    if let Some(rt) = &reject_table {
        for (code, _, _) in rt.entries() {
            // Not a string: named by the reader, with its line:column.
            if let Some(reason) = rt.opt_str(&code) {
                reject_reasons.insert(code, reason);
            }
        }
    }
    if reject_table.is_some() && !metrics.contains_key(&Role::RejectCode) {
        t.invalid("reject_reasons", "name the metric that carries them: reject_code");
    }
    let mut allowed: Vec<&str> = ROLE_KEYS.iter().map(|(k, _)| *k).collect();
    allowed.extend([
        "name",
        "node",
        "device",
        "running_values",
        "ideal_cycle_time",
        "counter_wrap",
        "minor_stop",
        "reasons",
        "reject_reasons",
        "ideal_cycle_times",
    ]);
    t.finish(&allowed);
    Some(Machine {
        name: name?,
        group,
        node,
        device,
        metrics,
        model: Model {
            running_values,
            reasons,
            reject_reasons,
            ideal_cycle_ms,
            ideal_by_product,
            minor_stop_ms: minor.as_millis() as i64,
            wrap,
        },
    })
}

#[cfg(test)]
mod tests {
    use crate::uplink::config::UplinkConfig;

    use super::*;

    use crate::uplink::config::tests::GOOD as BASE;

    const OEE: &str = r#"
[oee]
time_zone = "Europe/Berlin"
minor_stop = "90s"
[[oee.shifts]]
name = "early"
start = "06:00"
end = "14:00"
days = ["mon", "tue", "wed", "thu", "fri"]
breaks = ["09:00-09:15"]
[[oee.shifts]]
name = "night"
start = "22:00"
end = "06:00"
[[oee.machines]]
name = "press4"
node = "Plant1/gw-01"
device = "press4"
cycle_count = "Counters/Strokes"
running = "State"
running_values = ["running"]
fault_code = "Fault/Code"
reject_count = "Counters/Reject"
ideal_cycle_time = "2.5s"
counter_wrap = 65535
[oee.machines.reasons]
12 = { reason = "Hydraulic pressure low", category = "breakdown" }
"JAM" = { reason = "Jam at the infeed", category = "minor_stop" }
"#;

    #[test]
    fn a_plant_calendar_and_a_machine_are_read() {
        let c = UplinkConfig::parse("u.toml", &format!("{BASE}{OEE}")).expect("valid");
        let o = c.oee.expect("[oee]");
        assert_eq!(o.time_zone, "Europe/Berlin");
        assert_eq!(o.quality_threshold, 192);
        assert_eq!(o.shifts.len(), 2);
        assert_eq!(o.shifts[0].breaks, vec![(9 * 3600, 9 * 3600 + 15 * 60)]);
        assert_eq!(o.shifts[0].days, [true, true, true, true, true, false, false]);
        let m = &o.machines[0];
        assert_eq!(
            (m.group.as_str(), m.node.as_str(), m.device.as_str()),
            ("Plant1", "gw-01", "press4")
        );
        assert_eq!(m.metrics[&Role::CycleCount], "Counters/Strokes");
        assert_eq!(m.metrics[&Role::Reason], "Fault/Code");
        assert_eq!(m.model.ideal_cycle_ms, Some(2500.0));
        assert_eq!(m.model.minor_stop_ms, 90_000, "the [oee] default");
        assert_eq!(m.model.wrap, Some(65535.0));
        assert_eq!(
            m.model.reasons["12"],
            ("Hydraulic pressure low".to_string(), Category::Breakdown)
        );
        assert_eq!(m.model.reasons["JAM"].1, Category::MinorStop);
    }

    #[test]
    fn the_readmes_oee_example_is_valid() {
        let readme = include_str!("../../../README.md");
        let section = &readme[readme.find("## OEE").expect("the section")..];
        let start = section.find("```toml").expect("a block") + "```toml".len();
        let end = start + section[start..].find("```").expect("closed");
        let c = UplinkConfig::parse("README.md", &format!("{BASE}{}", &section[start..end])).expect("valid");
        let o = c.oee.expect("[oee]");
        assert_eq!((o.shifts.len(), o.machines.len()), (2, 1));
        assert_eq!(o.machines[0].model.reasons.len(), 3);
    }

    #[test]
    fn a_birth_without_a_mapped_metric_or_of_the_wrong_type_is_named() {
        use crate::sparkplug::DataType as D;
        let c = UplinkConfig::parse("u.toml", &format!("{BASE}{OEE}")).expect("valid");
        let m = &c.oee.expect("[oee]").machines[0];
        let good = [
            ("Counters/Strokes", D::UInt32),
            ("State", D::String),
            ("Fault/Code", D::Int16),
            ("Counters/Reject", D::UInt64),
        ];
        assert_eq!(m.check_birth(&good), Vec::<String>::new());
        let bad = [
            ("Counters/Strokes", D::Float),
            ("State", D::String),
            ("Fault/Code", D::Int16),
        ];
        assert_eq!(
            m.check_birth(&bad),
            vec![
                "machine 'press4': cycle_count metric 'Counters/Strokes' is Float, but the role needs an integer counter",
                "machine 'press4': reject_count metric 'Counters/Reject' is not in the birth of Plant1/gw-01/press4",
            ]
        );
    }

    #[test]
    fn every_mistake_names_its_key_path_and_line() {
        let bad = OEE
            .replace("Europe/Berlin", "Europe/Atlantis")
            .replace("\"06:00\"\nend = \"14:00\"", "\"6 o'clock\"\nend = \"14:00\"")
            .replace("\"tue\"", "\"tues\"")
            .replace("\"09:00-09:15\"", "\"09:00\"")
            .replace("node = \"Plant1/gw-01\"", "node = \"gw-01\"")
            .replace("cycle_count = \"Counters/Strokes\"\n", "")
            .replace("category = \"breakdown\"", "category = \"broken\"")
            .replace("counter_wrap = 65535", "counter_wrapp = 65535");
        let e = UplinkConfig::parse("u.toml", &format!("{BASE}{bad}"))
            .expect_err("invalid")
            .to_string();
        for want in [
            "oee.time_zone: unknown time zone 'Europe/Atlantis'",
            "oee.shifts[0].start: '6 o'clock' is not a time of day",
            "oee.shifts[0].days: 'tues' is not a weekday",
            "oee.shifts[0].breaks: '09:00' is not a break",
            "oee.machines[0].node: group/node",
            "oee.machines[0].cycle_count: is required",
            "oee.machines[0].reasons.12.category: 'broken': use planned",
            "oee.machines[0].counter_wrapp: unknown key (did you mean `counter_wrap`?)",
        ] {
            assert!(e.contains(want), "{want:?} missing in:\n{e}");
        }
        assert!(e.contains("u.toml:12:13: oee.time_zone"), "line:column: {e}");
    }

    #[test]
    fn reject_codes_map_to_reasons_and_need_their_metric() {
        let with_codes = OEE.replace(
            "reject_count = \"Counters/Reject\"\n",
            "reject_code = \"Quality/Code\"\n",
        ) + "[oee.machines.reject_reasons]\n3 = \"Underfilled\"\n\"CAP\" = \"Cap missing\"\n";
        let c = UplinkConfig::parse("u.toml", &format!("{BASE}{with_codes}")).expect("valid");
        let m = &c.oee.expect("[oee]").machines[0];
        assert_eq!(m.metrics[&Role::RejectCode], "Quality/Code");
        assert_eq!(m.model.reject_reasons["3"], "Underfilled");
        assert_eq!(m.model.reject_reasons["CAP"], "Cap missing");
        let problems = m.check_birth(&[
            ("Counters/Strokes", crate::sparkplug::DataType::UInt32),
            ("State", crate::sparkplug::DataType::String),
            ("Fault/Code", crate::sparkplug::DataType::Int16),
            ("Quality/Code", crate::sparkplug::DataType::Boolean),
        ]);
        assert_eq!(
            problems,
            ["machine 'press4': reject_code metric 'Quality/Code' is Boolean, but the role needs an integer or string code"]
        );
        let orphan = OEE.to_string() + "[oee.machines.reject_reasons]\n3 = 4\n";
        let e = UplinkConfig::parse("u.toml", &format!("{BASE}{orphan}"))
            .expect_err("invalid")
            .to_string();
        assert!(e.contains("oee.machines[0].reject_reasons.3:"), "{e}");
        assert!(
            e.contains("oee.machines[0].reject_reasons: name the metric that carries them: reject_code"),
            "{e}"
        );
    }

    #[test]
    fn ideal_cycle_times_per_product_need_the_product_metric() {
        let per_product = OEE.replace("ideal_cycle_time = \"2.5s\"\n", "product = \"Recipe\"\n")
            + "[oee.machines.ideal_cycle_times]\n\"PN-4711\" = \"2.1s\"\n\"PN-9\" = \"900ms\"\n";
        let c = UplinkConfig::parse("u.toml", &format!("{BASE}{per_product}")).expect("valid");
        let m = &c.oee.expect("[oee]").machines[0];
        assert_eq!(m.model.ideal_cycle_ms, None);
        assert_eq!(m.model.ideal_by_product["PN-4711"], 2100.0);
        assert_eq!(m.model.ideal_by_product["PN-9"], 900.0);
        let orphan = OEE.to_string() + "[oee.machines.ideal_cycle_times]\nX = \"0s\"\nY = \"fast\"\n";
        let e = UplinkConfig::parse("u.toml", &format!("{BASE}{orphan}"))
            .expect_err("invalid")
            .to_string();
        for want in [
            "oee.machines[0].ideal_cycle_times.X: must be more than 0",
            "oee.machines[0].ideal_cycle_times.Y:",
            "oee.machines[0].ideal_cycle_times: per product: map the product metric too",
        ] {
            assert!(e.contains(want), "{want:?} in:\n{e}");
        }
    }
}
