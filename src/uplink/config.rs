//! The uplink's one TOML file (`/etc/spb-uplink/config.toml`), read with the
//! gateway's reader: unknown keys are errors, every error names its key path
//! and line:column, all errors are reported at once. `[mqtt]` and
//! `[telemetry]` are the gateway's tables, read by the same code.
//!
//! ```toml
//! [host]
//! host_id = "scada"                 # required
//! subscriptions = ["spBv1.0/#"]
//! reorder_timeout = "2s"
//! rebirth_min_interval = "5s"
//! [mqtt]
//! [[mqtt.servers]]
//! host = "broker"
//! [database]
//! backend = "postgres"              # postgres | mssql
//! url = "host=db user=spb dbname=plant"
//! batch_max_rows = 20000
//! batch_max_latency = "200ms"
//! backlog_max_rows = 500000         # rows held while the database is down (~350 B each)
//! offline_after_rows = 100000       # then STATE offline: the edges store
//! writers = 4                       # connections writing in parallel
//! [limits]                          # what one message may cost; over → quarantined
//! max_payload_bytes = "1MiB"
//! max_metrics_per_message = 20000
//! max_name_bytes = 512              # ids and metric names (at most 512)
//! max_held_messages = 1000          # per node, waiting for a seq gap to fill
//! max_nodes = 10000                 # edge nodes tracked (offline ones evicted first)
//! max_devices_per_node = 10000
//! max_rebirths_per_second = 20      # rebirth requests over all nodes
//! [commands]                        # POST /commands and `spb-uplink command`
//! enabled = false
//! timeout = "5s"                    # wait this long for the confirming DDATA
//! [[commands.identities]]
//! name = "mes"
//! token_sha256 = "…64 hex digits…"  # `spb-uplink hash-token` makes a token and this
//! certificate = "mes-01"            # or: a client certificate's CN (HTTPS listener below)
//! roles = ["sparkplug_command"]
//! allow = ["Plant1/+/oven/#"]       # group/node/device/metric, MQTT wildcards
//! # POST /commands over HTTPS as well (tokens, and client certificates):
//! https_listen = "0.0.0.0:9443"
//! https_cert = "/etc/spb-uplink/api.pem"
//! https_key = "/etc/spb-uplink/api.key"
//! https_client_ca = "/etc/spb-uplink/clients-ca.pem"
//! ```

use std::path::Path;
use std::time::Duration;

use crate::config::reader::{Ctx, Table};
use crate::config::{read_mqtt, read_telemetry, ConfigErrors, LoadError, MqttConfig, TelemetryConfig};
use crate::sparkplug::host::HostLimits;

use super::commands::{check_pattern, parse_hash, ApiConfig, Identity, COMMAND_ROLE};

/// Which database the uplink writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Mssql,
}

/// `[host]`: who this Primary Host is and what it listens to.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSection {
    pub host_id: String,
    pub subscriptions: Vec<String>,
    pub reorder_timeout: Duration,
    pub rebirth_min_interval: Duration,
}

/// `[database]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseConfig {
    pub backend: Backend,
    /// The login the uplink ingests with.
    pub url: String,
    /// The schema owner's login, for migrations and retention (partitions
    /// dropped, rows deleted); `None`: `url` does both.
    pub owner_url: Option<String>,
    pub batch_max_rows: usize,
    pub batch_max_latency: Duration,
    pub backlog_max_rows: usize,
    /// The backlog's bound in bytes (rows' estimated size), whichever of
    /// the two bounds comes first.
    pub backlog_max_bytes: u64,
    pub offline_after_rows: usize,
    /// Database connections writing in parallel (each edge node on one).
    pub writers: usize,
    /// How often the rollups are folded from the pending log.
    pub rollup_interval: Duration,
    /// `[retention]`: how long each class of rows is kept.
    pub retention: super::retention::Retention,
}

/// The whole uplink configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkConfig {
    pub host: HostSection,
    pub mqtt: MqttConfig,
    pub database: DatabaseConfig,
    pub limits: HostLimits,
    pub telemetry: TelemetryConfig,
    pub commands: ApiConfig,
    /// `[oee]`: machines, shifts and the plant's time zone.
    pub oee: Option<super::oee::config::OeeConfig>,
    /// `[scale]`: the groups this instance shares with other instances.
    pub scale: Option<super::scale::ScaleConfig>,
}

impl UplinkConfig {
    pub fn load(path: &Path) -> Result<UplinkConfig, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(UplinkConfig::parse(&path.display().to_string(), &text)?)
    }

    pub fn parse(file: &str, text: &str) -> Result<UplinkConfig, ConfigErrors> {
        let ctx = Ctx::new(file, text);
        let Some(doc) = ctx.parse() else {
            return Err(ctx.finish().expect_err("syntax errors were recorded"));
        };
        let root = Table::new(&ctx, "", doc.get_ref(), 0);
        let host = match root.opt_table("host") {
            Some(t) => read_host(&t),
            None => {
                root.missing("host", "a [host] table with host_id");
                None
            }
        };
        let mqtt = read_mqtt(root.opt_table("mqtt"), &root, true);
        let database = match root.opt_table("database") {
            Some(t) => read_database(&t),
            None => {
                root.missing("database", "a [database] table with backend and url");
                None
            }
        };
        let limits = root
            .opt_table("limits")
            .map_or_else(HostLimits::default, |t| read_limits(&t));
        let telemetry = read_telemetry(root.opt_table("telemetry"));
        let commands = root
            .opt_table("commands")
            .map_or_else(ApiConfig::default, |t| read_commands(&t));
        if commands.enabled && telemetry.listen.is_none() {
            root.invalid(
                "commands",
                "commands are served on [telemetry] listen, which is disabled: set listen = \"127.0.0.1:9103\" (or another address)",
            );
        }
        let oee = root.opt_table("oee").map(|t| super::oee::config::read(&t));
        let retention = root
            .opt_table("retention")
            .map_or_else(Default::default, |t| read_retention(&t));
        let subscribes = root.opt_table("host").is_some_and(|h| h.is_present("subscriptions"));
        let scale = root
            .opt_table("scale")
            .map(|t| read_scale(&t, database.as_ref(), subscribes));
        root.finish(&[
            "host",
            "mqtt",
            "database",
            "limits",
            "telemetry",
            "commands",
            "oee",
            "retention",
            "scale",
        ]);
        ctx.finish()?;
        let mut database = database.expect("no errors, so [database] was read");
        database.retention = retention;
        Ok(UplinkConfig {
            host: host.expect("no errors, so [host] was read"),
            mqtt,
            database,
            limits,
            telemetry,
            commands,
            oee,
            scale,
        })
    }
}

/// `[scale]`: several instances share `groups`, one lease each, on the
/// PostgreSQL the rows go to.
fn read_scale(t: &Table, db: Option<&DatabaseConfig>, subscribes: bool) -> super::scale::ScaleConfig {
    use super::scale::{ScaleConfig, STATE_LEASE};
    if db.is_some_and(|d| d.backend != Backend::Postgres) {
        t.invalid(
            "groups",
            "scale-out keeps its leases on PostgreSQL in this version; with SQL Server run one instance",
        );
    }
    if subscribes {
        t.invalid(
            "groups",
            "with [scale] each instance subscribes to spBv1.0/<group>/# of every group: remove host.subscriptions",
        );
    }
    let groups = t.opt_str_list("groups").unwrap_or_default();
    if !t.is_present("groups") {
        t.missing(
            "groups",
            "the edge-node groups the instances share, e.g. [\"Plant1\", \"Plant2\"]",
        );
    } else if groups.is_empty() {
        t.invalid("groups", "at least one group");
    }
    for (i, g) in groups.iter().enumerate() {
        if let Err(e) = crate::sparkplug::topic::validate_id("group id", g) {
            t.invalid("groups", e.to_string());
        } else if g == STATE_LEASE {
            t.invalid("groups", "STATE is the host's topic, not a group");
        } else if groups[..i].contains(g) {
            t.invalid("groups", format!("'{g}' is listed twice"));
        }
    }
    let instance = t.opt_str("instance").unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "uplink".into());
        format!("{host}-{}", std::process::id())
    });
    if instance.is_empty() || instance.len() > 128 {
        t.invalid("instance", "1 to 128 characters, unique among the instances");
    }
    let c = ScaleConfig {
        instance,
        groups,
        lease_ttl: t.duration_or("lease_ttl", Duration::from_secs(10)),
        clock_margin: t.duration_or("clock_margin", Duration::from_secs(2)),
        standby_max_bytes: t.bytes_or("standby_max_bytes", 256 * 1024 * 1024),
    };
    if c.lease_ttl < Duration::from_secs(1) || c.lease_ttl > Duration::from_secs(300) {
        t.invalid(
            "lease_ttl",
            "between 1s and 5m: how long a dead instance's groups wait for another",
        );
    }
    if c.clock_margin > Duration::from_secs(60) {
        t.invalid("clock_margin", "at most 1m: keep the instances' clocks in sync (NTP)");
    }
    t.finish(&["instance", "groups", "lease_ttl", "clock_margin", "standby_max_bytes"]);
    c
}

/// `[retention]`: per class a duration (`"90d"`) or `"forever"`; the
/// partition span; the horizon; how often it runs.
fn read_retention(t: &Table) -> super::retention::Retention {
    use super::retention::{Retention, Span};
    let d = Retention::default();
    let keep = |key: &str, default: Option<Duration>| -> Option<Duration> {
        match t.opt_str(key).as_deref() {
            Some("forever") => None,
            Some(_) => {
                let v = t.duration_or(key, default.unwrap_or_default());
                if v < Duration::from_secs(86_400) {
                    t.invalid(key, "at least 1d (or \"forever\")");
                }
                Some(v)
            }
            // Absent, or not a string (reported by opt_str).
            None => default,
        }
    };
    let span = match t.opt_str("partition").as_deref() {
        None | Some("day") => Span::Day,
        Some("week") => Span::Week,
        Some(other) => {
            t.invalid("partition", format!("'{other}': use day or week"));
            Span::Day
        }
    };
    let r = Retention {
        raw: keep("raw", d.raw),
        facts: keep("facts", d.facts),
        rollups: [
            keep("rollup_minute", d.rollups[0]),
            keep("rollup_hour", d.rollups[1]),
            keep("rollup_day", d.rollups[2]),
        ],
        span,
        horizon: t.duration_or("horizon", d.horizon),
        interval: t.duration_or("interval", d.interval),
    };
    if r.horizon < Duration::from_secs(3600) {
        t.invalid("horizon", "at least 1h: samples stamped up to this far ahead are kept");
    }
    if r.interval < Duration::from_secs(60) {
        t.invalid("interval", "at least 1m");
    }
    t.finish(&[
        "raw",
        "facts",
        "rollup_minute",
        "rollup_hour",
        "rollup_day",
        "partition",
        "horizon",
        "interval",
    ]);
    r
}

fn read_commands(t: &Table) -> ApiConfig {
    let d = ApiConfig::default();
    let https = match t.opt_str("https_listen") {
        None => {
            for k in ["https_cert", "https_key", "https_client_ca"] {
                if t.is_present(k) {
                    t.invalid(k, "applies with https_listen only");
                }
            }
            None
        }
        Some(addr) => {
            let listen = addr
                .parse()
                .map_err(|e| t.invalid("https_listen", format!("'{addr}': {e} (e.g. \"0.0.0.0:9443\")")))
                .ok();
            let path = |k: &str| {
                let p = t.opt_path(k);
                if p.is_none() {
                    t.missing(k, "a PEM file, with https_listen");
                }
                p
            };
            let (cert, key, client_ca) = (path("https_cert"), path("https_key"), path("https_client_ca"));
            match (listen, cert, key, client_ca) {
                (Some(listen), Some(cert), Some(key), Some(client_ca)) => Some(super::commands::HttpsConfig {
                    listen,
                    cert,
                    key,
                    client_ca,
                }),
                _ => None,
            }
        }
    };
    let mut cfg = ApiConfig {
        enabled: t.bool_or("enabled", false),
        timeout: t.duration_or("timeout", d.timeout),
        identities: Vec::new(),
        https,
    };
    if cfg.timeout < Duration::from_millis(100) || cfg.timeout > Duration::from_secs(60) {
        t.invalid("timeout", "must be between 100ms and 60s");
    }
    for it in t.tables("identities") {
        let name = it
            .req_str("name", "a name for the audit (requested_by)")
            .unwrap_or_default();
        let token_sha256 = it.opt_str("token_sha256").and_then(|h| {
            let parsed = parse_hash(&h.to_ascii_lowercase());
            if parsed.is_none() {
                it.invalid(
                    "token_sha256",
                    "64 hex digits: the SHA-256 of the token (`spb-uplink hash-token` prints a new token and its hash)",
                );
            }
            parsed
        });
        let certificate = it.opt_str("certificate");
        if !it.is_present("token_sha256") && certificate.is_none() {
            it.missing(
                "token_sha256",
                "token_sha256 or certificate: how this identity is recognised",
            );
        }
        let roles = it.opt_str_list("roles").unwrap_or_default();
        for r in &roles {
            if r != COMMAND_ROLE {
                it.invalid("roles", format!("unknown role '{r}': the one role is {COMMAND_ROLE}"));
            }
        }
        let allow = it.opt_str_list("allow").unwrap_or_default();
        for p in &allow {
            if let Err(e) = check_pattern(p) {
                it.invalid("allow", e);
            }
        }
        it.finish(&["name", "token_sha256", "certificate", "roles", "allow"]);
        if cfg.identities.iter().any(|i| i.name == name) {
            it.invalid("name", format!("identity '{name}' is defined twice"));
        }
        cfg.identities.push(Identity {
            name,
            token_sha256,
            certificate,
            roles,
            allow,
        });
    }
    t.finish(&[
        "enabled",
        "timeout",
        "identities",
        "https_listen",
        "https_cert",
        "https_key",
        "https_client_ca",
    ]);
    cfg
}

fn read_host(t: &Table) -> Option<HostSection> {
    let host_id = t.req_str("host_id", "the Primary Host id, as the edges' primary_host_id");
    if let Some(id) = &host_id {
        if let Err(e) = crate::sparkplug::topic::validate_id("host_id", id) {
            t.invalid("host_id", e.to_string());
        }
    }
    let subscriptions = match t.opt_str_list("subscriptions") {
        Some(v) if v.is_empty() => {
            t.invalid("subscriptions", "at least one topic filter, e.g. \"spBv1.0/#\"");
            Vec::new()
        }
        Some(v) => v,
        None => vec!["spBv1.0/#".to_string()],
    };
    for s in &subscriptions {
        if !s.starts_with("spBv1.0/") {
            t.invalid("subscriptions", format!("'{s}' is not a Sparkplug filter (spBv1.0/…)"));
        }
    }
    let s = HostSection {
        host_id: host_id.unwrap_or_default(),
        subscriptions,
        reorder_timeout: t.duration_or("reorder_timeout", Duration::from_secs(2)),
        rebirth_min_interval: t.duration_or("rebirth_min_interval", Duration::from_secs(5)),
    };
    t.finish(&["host_id", "subscriptions", "reorder_timeout", "rebirth_min_interval"]);
    Some(s)
}

/// A PostgreSQL connection string, its TLS part included (the files it
/// names are read now: what would fail at start fails the check).
fn check_pg_url(t: &Table, key: &str, url: &str) {
    let example = "e.g. \"host=db.plant user=spb dbname=plant sslmode=verify-full sslrootcert=/etc/spb-uplink/db-ca.pem\" or \"postgres://spb@db.plant/plant\"";
    match super::pg_tls::split(url) {
        Err(e) => t.invalid(key, format!("{e}; {example}")),
        Ok((rest, tls)) => {
            if let Err(e) = rest.parse::<tokio_postgres::Config>() {
                t.invalid(key, format!("not a PostgreSQL connection string ({e}); {example}"));
            } else if let Err(e) = super::pg_tls::client_config(&tls) {
                t.invalid(key, e.to_string());
            }
        }
    }
}

fn read_database(t: &Table) -> Option<DatabaseConfig> {
    let backend = match t.req_str("backend", "postgres or mssql").as_deref() {
        Some("postgres") => Backend::Postgres,
        Some("mssql") => Backend::Mssql,
        Some(other) => {
            t.invalid("backend", format!("'{other}': use postgres or mssql"));
            Backend::Postgres
        }
        None => Backend::Postgres,
    };
    let url = t.req_str("url", "the connection string").unwrap_or_default();
    if backend == Backend::Postgres && !url.is_empty() {
        check_pg_url(t, "url", &url);
    }
    if backend == Backend::Mssql && !url.is_empty() {
        if let Err(e) = super::mssql::parse_url(&url) {
            t.invalid("url", format!("not an ADO.NET connection string ({e}); e.g. \"server=tcp:db.plant,1433;database=spb;user id=spb;password=…;encrypt=true\""));
        }
    }
    let owner_url = t.opt_str("owner_url");
    if let Some(o) = &owner_url {
        match backend {
            Backend::Postgres => check_pg_url(t, "owner_url", o),
            Backend::Mssql => {
                if let Err(e) = super::mssql::parse_url(o) {
                    t.invalid("owner_url", format!("not an ADO.NET connection string ({e})"));
                }
            }
        }
    }
    let d = DatabaseConfig {
        backend,
        url,
        owner_url,
        batch_max_rows: t.int_in("batch_max_rows", 20_000, 1..=1_000_000) as usize,
        batch_max_latency: t.duration_or("batch_max_latency", Duration::from_millis(200)),
        backlog_max_rows: t.int_in("backlog_max_rows", 500_000, 1_000..=100_000_000) as usize,
        backlog_max_bytes: t.bytes_or("backlog_max_bytes", 256 * 1024 * 1024),
        offline_after_rows: t.int_in("offline_after_rows", 100_000, 1..=100_000_000) as usize,
        writers: t.int_in("writers", 4, 1..=64) as usize,
        rollup_interval: t.duration_or("rollup_interval", Duration::from_secs(5)),
        retention: Default::default(),
    };
    if d.offline_after_rows > d.backlog_max_rows {
        t.invalid(
            "offline_after_rows",
            format!("must not exceed backlog_max_rows ({})", d.backlog_max_rows),
        );
    }
    t.finish(&[
        "backend",
        "url",
        "owner_url",
        "batch_max_rows",
        "batch_max_latency",
        "backlog_max_rows",
        "backlog_max_bytes",
        "offline_after_rows",
        "writers",
        "rollup_interval",
    ]);
    Some(d)
}

fn read_limits(t: &Table) -> HostLimits {
    let d = HostLimits::default();
    let l = HostLimits {
        max_payload_bytes: t.bytes_or("max_payload_bytes", d.max_payload_bytes as u64) as usize,
        max_metrics_per_message: t.int_in(
            "max_metrics_per_message",
            d.max_metrics_per_message as i64,
            1..=1_000_000,
        ) as usize,
        max_name_bytes: t.int_in(
            "max_name_bytes",
            d.max_name_bytes as i64,
            1..=super::rows::MAX_NAME_BYTES as i64,
        ) as usize,
        max_held_messages: t.int_in("max_held_messages", d.max_held_messages as i64, 1..=1_000_000) as usize,
        max_nodes: t.int_in("max_nodes", d.max_nodes as i64, 1..=10_000_000) as usize,
        max_devices_per_node: t.int_in("max_devices_per_node", d.max_devices_per_node as i64, 1..=10_000_000) as usize,
        max_rebirths_per_second: t.int_in("max_rebirths_per_second", d.max_rebirths_per_second.into(), 1..=100_000)
            as u32,
    };
    if l.max_payload_bytes < 1024 {
        t.invalid("max_payload_bytes", "at least 1KiB");
    }
    t.finish(&[
        "max_payload_bytes",
        "max_metrics_per_message",
        "max_name_bytes",
        "max_held_messages",
        "max_nodes",
        "max_devices_per_node",
        "max_rebirths_per_second",
    ]);
    l
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest valid uplink file (other modules' tests add to it).
    pub(crate) const GOOD: &str = r#"
[host]
host_id = "scada"
[mqtt]
[[mqtt.servers]]
host = "127.0.0.1"
[database]
backend = "postgres"
url = "host=127.0.0.1 user=postgres dbname=plant"
"#;

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let c = UplinkConfig::parse("u.toml", GOOD).expect("valid");
        assert_eq!(c.host.subscriptions, vec!["spBv1.0/#".to_string()]);
        assert_eq!(c.database.batch_max_rows, 20_000);
        assert_eq!(c.database.offline_after_rows, 100_000);
        assert_eq!(c.database.backlog_max_rows, 500_000);
        assert_eq!(c.database.rollup_interval, Duration::from_secs(5));
        assert_eq!(c.mqtt.servers.len(), 1);
    }

    #[test]
    fn the_documented_example_is_valid() {
        let text = include_str!("../../config/uplink.example.toml");
        let c = UplinkConfig::parse("uplink.example.toml", text).expect("valid");
        assert_eq!(c.host.host_id, "scada");
    }

    #[test]
    fn retention_defaults_to_90_and_400_days_and_rollups_forever_and_reads_each_class() {
        use crate::uplink::retention::{Class, Span};
        let d = UplinkConfig::parse("u.toml", GOOD).expect("valid").database.retention;
        assert_eq!(d.keep(Class::Raw), Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(d.keep(Class::Facts), Some(Duration::from_secs(400 * 86_400)));
        assert_eq!(d.keep(Class::Rollup("minute")), None);
        let text = format!(
            "{GOOD}[retention]\nraw = \"7d\"\nfacts = \"forever\"\nrollup_minute = \"30d\"\npartition = \"week\"\nhorizon = \"6h\"\n"
        );
        let r = UplinkConfig::parse("u.toml", &text).expect("valid").database.retention;
        assert_eq!(r.keep(Class::Raw), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(r.keep(Class::Facts), None);
        assert_eq!(r.keep(Class::Rollup("minute")), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(r.keep(Class::Rollup("day")), None);
        assert_eq!((r.span, r.horizon), (Span::Week, Duration::from_secs(6 * 3600)));
    }

    #[test]
    fn a_retention_mistake_names_its_key_and_line_column() {
        let text = format!(
            "{GOOD}[retention]\nraw = \"12h\"\nfacts = 400\npartition = \"month\"\nhorizon = \"10m\"\nrollup_hour = \"never\"\n"
        );
        let e = UplinkConfig::parse("u.toml", &text).expect_err("invalid").to_string();
        assert!(e.contains("u.toml:11:7: retention.raw: at least 1d"), "{e}");
        assert!(e.contains("u.toml:12:9: retention.facts"), "{e}");
        assert!(e.contains("retention.partition: 'month': use day or week"), "{e}");
        assert!(e.contains("retention.horizon: at least 1h"), "{e}");
        assert!(e.contains("retention.rollup_hour"), "{e}");
    }

    #[test]
    fn every_error_names_its_key_and_line_column() {
        let bad = GOOD
            .replace("backend = \"postgres\"", "backend = \"oracle\"\nbatch_max_rowz = 5")
            .replace("host_id = \"scada\"", "host_id = \"sca/da\"");
        let e = UplinkConfig::parse("u.toml", &bad).expect_err("invalid").to_string();
        assert!(e.contains("u.toml:3:11: host.host_id"), "{e}");
        assert!(e.contains("database.backend: 'oracle': use postgres or mssql"), "{e}");
        assert!(e.contains("database.batch_max_rowz: unknown key"), "{e}");
    }

    #[test]
    fn command_identities_are_read_and_mistakes_named_with_their_line() {
        let hash = crate::uplink::commands::hex(&crate::uplink::commands::token_hash("t0k3n"));
        let text = format!(
            "{GOOD}[telemetry]\nlisten = \"127.0.0.1:9103\"\n[commands]\nenabled = true\ntimeout = \"3s\"\n\
             [[commands.identities]]\nname = \"mes\"\ntoken_sha256 = \"{hash}\"\nroles = [\"sparkplug_command\"]\nallow = [\"Plant1/#\"]\n\
             [[commands.identities]]\nname = \"hmi\"\ncertificate = \"hmi-01\"\nroles = []\n"
        );
        let c = UplinkConfig::parse("u.toml", &text).expect("valid");
        assert!(c.commands.enabled);
        assert_eq!(c.commands.timeout, Duration::from_secs(3));
        assert_eq!(c.commands.identities.len(), 2);
        assert!(crate::uplink::commands::authenticate(&c.commands, Some("t0k3n"), None).is_ok());
        let bad = text
            .replace(&hash, "abc")
            .replace("roles = []", "roles = [\"admin\"]\nallow = [\"Plant1/gw\"]");
        let e = UplinkConfig::parse("u.toml", &bad).expect_err("invalid").to_string();
        assert!(
            e.contains("u.toml:17:16: commands.identities[0].token_sha256: 64 hex digits"),
            "{e}"
        );
        assert!(e.contains("commands.identities[1].roles: unknown role 'admin'"), "{e}");
        assert!(
            e.contains("commands.identities[1].allow: 'Plant1/gw': a target is group/node/device/metric"),
            "{e}"
        );
        let no_listener = text.replace("listen = \"127.0.0.1:9103\"", "listen = \"\"");
        let e = UplinkConfig::parse("u.toml", &no_listener)
            .expect_err("invalid")
            .to_string();
        assert!(e.contains("commands are served on [telemetry] listen"), "{e}");
    }

    #[test]
    fn an_mssql_connection_string_is_checked_when_the_file_is_read() {
        let ok = GOOD.replace("backend = \"postgres\"", "backend = \"mssql\"").replace(
            "host=127.0.0.1 user=postgres dbname=plant",
            "server=tcp:127.0.0.1,1433;database=plant;user id=spb;password=s3cret;encrypt=true",
        );
        let c = UplinkConfig::parse("u.toml", &ok).expect("valid");
        assert_eq!(c.database.backend, Backend::Mssql);
        let bad = ok.replace("127.0.0.1,1433", "127.0.0.1,port");
        let e = UplinkConfig::parse("u.toml", &bad).expect_err("bad port").to_string();
        assert!(
            e.contains("u.toml:9:7: database.url: not an ADO.NET connection string"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "the password stays out of the message: {e}");
    }
}
