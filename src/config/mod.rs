//! The gateway's one configuration file, `/etc/spb-gateway/config.toml`.
//!
//! Invariants: unknown keys are errors; every error names its dotted key path
//! and `line:column`; all errors are reported at once; every key has a
//! documented default (see `config/example.toml`, which a test parses);
//! durations accept `500ms`/`30s`/`1m` or a number of seconds, sizes `256MiB`
//! or a number of bytes. A configuration that loads is fully validated: IDs are
//! valid Sparkplug IDs, names are unique, tag addresses parse for their driver,
//! scan classes exist, TLS settings are complete. The one exception is
//! deliberate: a file without `[node]` or without `[[mqtt.servers]]` (the
//! file as installed) loads, and `Config::setup_needed` says what is missing.

pub mod reader;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::commands::{Allowed, TagGuard};
pub use crate::mqtt::settings::{MqttConfig, ServerConfig, TlsConfig};
pub use crate::plc::device::{
    DeviceConfig, DriverKind, LogixDeviceConfig, S7DeviceConfig, SimDeviceConfig, TagAddress, TagConfig,
    DEFAULT_SCAN_CLASS,
};
use crate::plc::sim::Signal;
use crate::sparkplug::topic::validate_id;
use crate::sparkplug::DataType;
pub use crate::telemetry::logging::LogFormat;
pub use crate::units::{check_host, PlcAddress};
use reader::{Ctx, Scalar, Table};

/// The default config path.
pub const DEFAULT_PATH: &str = "/etc/spb-gateway/config.toml";

/// The configuration file as installed by the packages
/// (`spb-gateway --print-default-config`): valid, with no identity, broker
/// or devices yet, so a first boot waits instead of failing.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `devices[0].tags[3].datatype`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.path, self.message
        )
    }
}

/// Every problem found in a config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        write!(
            f,
            "{} error{} in the configuration",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: NodeConfig,
    pub mqtt: MqttConfig,
    pub store: StoreConfig,
    pub devices: Vec<DeviceConfig>,
    pub commands: CommandsConfig,
    pub telemetry: TelemetryConfig,
}

/// `[node]`: who this edge node is.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub group_id: String,
    pub node_id: String,
    /// Wait for this Primary Host's STATE before birth; store while it is offline.
    pub primary_host_id: Option<String>,
    /// Send aliases instead of names in DATA (default true).
    pub aliases: bool,
    /// Rebirth requests closer together than this are coalesced (default 5s).
    pub rebirth_debounce: Duration,
    /// At most this many metrics per NDATA/DDATA message (default 500).
    pub max_data_metrics: usize,
    /// A STATE stamped further ahead of this box's clock is refused (default 10m).
    pub state_max_skew: Duration,
}

/// `[store]`: where data waits while the broker or the Primary Host is away.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
    /// Cap on stored samples replayed per second after a new birth (0, the
    /// default: as fast as the broker confirms them).
    pub replay_rate: u32,
    /// Stored samples are written as soon as no more are ready (they then
    /// survive a crash of the gateway) and synced (fdatasync: they survive a
    /// power cut) once this many records wait for it…
    pub flush_records: u32,
    /// …or the oldest has waited this long: the power-cut window (0: every
    /// write synced, the most flash wear).
    pub flush_interval: Duration,
    /// Confirmed live samples kept to replay if the Primary Host dies (0: none).
    pub host_window: Duration,
    /// Memory bound of those samples.
    pub host_window_max_bytes: u64,
}

/// `[commands]`: write-back, off by default, and what an inbound message
/// (NCMD, DCMD, STATE) may cost.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandsConfig {
    pub enabled: bool,
    /// Inbound messages larger than this are dropped and counted, the
    /// connection kept (default 64KiB).
    pub max_message_size: u64,
    /// An NCMD/DCMD of more metrics is refused whole (default 1000).
    pub max_metrics: usize,
    /// The emergency stop: every write refused while set (default false).
    pub write_lock: bool,
    /// Whether NCMD `Node Control/Write Lock = false` may clear a lock set
    /// by NCMD (default true); the file's lock is cleared only in the file.
    pub unlock_by_command: bool,
    /// A write is confirmed by reading the tag back within this (default 2s).
    pub confirm_timeout: Duration,
    /// Whether NCMD `Node Control/Reboot` restarts the service (default
    /// false; it is then declared in NBIRTH). Never a reboot of the box.
    pub reboot: bool,
    /// The audit file rotates at this size (default 10MiB).
    pub audit_max_size: u64,
    /// Rotated audit files kept (default 5).
    pub audit_keep: u32,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            enabled: false,
            max_message_size: 64 * 1024,
            max_metrics: 1_000,
            write_lock: false,
            unlock_by_command: true,
            confirm_timeout: Duration::from_secs(2),
            reboot: false,
            audit_max_size: 10 << 20,
            audit_keep: 5,
        }
    }
}

impl CommandsConfig {
    /// The command guard's settings.
    pub fn guard(&self) -> crate::commands::GuardConfig {
        crate::commands::GuardConfig {
            enabled: self.enabled,
            write_lock: self.write_lock,
            unlock_by_command: self.unlock_by_command,
        }
    }
}

/// `[telemetry]`: logs, health and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// `/health`, `/ready`, `/metrics` listen here; `""` disables.
    pub listen: Option<SocketAddr>,
    pub log_level: String,
    pub log_format: LogFormat,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Config::parse(&path.display().to_string(), &text)?)
    }

    /// Reads and validates a config file, then applies the command line's
    /// overrides: what a start and every reload begin with. The error is
    /// the text to show (every problem of the file, or the bad override).
    pub fn load_with(path: &Path, overrides: &Overrides) -> Result<Config, String> {
        let mut cfg = Config::load(path).map_err(|e| e.to_string())?;
        cfg.apply(overrides)?;
        Ok(cfg)
    }

    /// Parses and validates config text; `file` is used in error messages.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigErrors> {
        let ctx = Ctx::new(file, text);
        let Some(doc) = ctx.parse() else {
            return Err(ctx.finish().expect_err("syntax errors were recorded"));
        };
        let root = Table::new(&ctx, "", doc.get_ref(), 0);
        // A file without [node] (as shipped) is valid: the gateway waits for
        // the identity to be filled in (`Config::setup_needed`).
        let node = root.opt_table("node").map_or_else(NodeConfig::unset, |t| read_node(&t));
        let mqtt = read_mqtt(root.opt_table("mqtt"), &root, false);
        let store = read_store(root.opt_table("store"));
        let devices: Vec<DeviceConfig> = root.tables("devices").iter().filter_map(read_device).collect();
        let commands = root.opt_table("commands").map(|t| {
            let d = CommandsConfig::default();
            let c = CommandsConfig {
                enabled: t.bool_or("enabled", false),
                max_message_size: t.bytes_or("max_message_size", d.max_message_size),
                max_metrics: t.int_in("max_metrics", d.max_metrics as i64, 1..=100_000) as usize,
                write_lock: t.bool_or("write_lock", d.write_lock),
                unlock_by_command: t.bool_or("unlock_by_command", d.unlock_by_command),
                confirm_timeout: t.duration_or("confirm_timeout", d.confirm_timeout),
                reboot: t.bool_or("reboot", d.reboot),
                audit_max_size: t.bytes_or("audit_max_size", d.audit_max_size),
                audit_keep: t.int_in("audit_keep", i64::from(d.audit_keep), 0..=100) as u32,
            };
            if c.audit_max_size < 4096 || c.audit_max_size > 1 << 30 {
                t.invalid("audit_max_size", "must be between 4KiB and 1GiB");
            }
            if c.confirm_timeout < Duration::from_millis(100) || c.confirm_timeout > Duration::from_secs(60) {
                t.invalid("confirm_timeout", "must be between 100ms and 60s");
            }
            if c.max_message_size < 1024 || c.max_message_size > crate::mqtt::INBOUND_TRANSPORT_MAX as u64 {
                t.invalid(
                    "max_message_size",
                    format!(
                        "must be between 1KiB and {}MiB",
                        crate::mqtt::INBOUND_TRANSPORT_MAX >> 20
                    ),
                );
            }
            t.finish(&[
                "enabled",
                "max_message_size",
                "max_metrics",
                "write_lock",
                "unlock_by_command",
                "confirm_timeout",
                "reboot",
                "audit_max_size",
                "audit_keep",
            ]);
            c
        });
        let telemetry = read_telemetry(root.opt_table("telemetry"));
        check_unique_names(&root, &devices);
        root.finish(&["node", "mqtt", "store", "devices", "commands", "telemetry"]);
        let errors = ctx.finish();
        errors.map(|()| Config {
            node,
            mqtt,
            store,
            devices,
            commands: commands.unwrap_or_default(),
            telemetry,
        })
    }

    /// What must still be filled in before the gateway can take part in
    /// Sparkplug: its identity and a broker. Empty for a complete file. The
    /// file as shipped (`--print-default-config`) has neither; a gateway
    /// started with it stays up, says this on `/ready`, in the journal and in
    /// `systemctl status`, and starts once a reload brings them.
    pub fn setup_needed(&self) -> Vec<SetupNeeded> {
        let mut out = Vec::new();
        if self.node.group_id.is_empty() || self.node.node_id.is_empty() {
            out.push(SetupNeeded::Identity);
        }
        if self.mqtt.servers.is_empty() {
            out.push(SetupNeeded::Broker);
        }
        out
    }
}

/// One thing a technician must fill in before the gateway can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupNeeded {
    /// `[node]` `group_id` and `node_id`.
    Identity,
    /// A `[[mqtt.servers]]` entry.
    Broker,
}

impl fmt::Display for SetupNeeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetupNeeded::Identity => {
                "[node] group_id and node_id: this edge node's Sparkplug identity (unique on the broker)"
            }
            SetupNeeded::Broker => {
                "[[mqtt.servers]] host (and its [mqtt.servers.tls] ca, cert, key): the broker to publish to"
            }
        })
    }
}

fn id(t: &Table, key: &str, what: &'static str, required: bool) -> Option<String> {
    let v = if required { t.req_str(key, what) } else { t.opt_str(key) }?;
    match validate_id(what, &v) {
        Ok(()) => Some(v),
        Err(e) => {
            t.invalid(key, e.to_string());
            None
        }
    }
}

impl NodeConfig {
    /// No identity yet (a file without `[node]`); every other key at its default.
    fn unset() -> NodeConfig {
        NodeConfig {
            group_id: String::new(),
            node_id: String::new(),
            primary_host_id: None,
            aliases: true,
            rebirth_debounce: Duration::from_secs(5),
            max_data_metrics: 500,
            state_max_skew: Duration::from_secs(600),
        }
    }
}

fn read_node(t: &Table) -> NodeConfig {
    let d = NodeConfig::unset();
    let n = NodeConfig {
        group_id: id(t, "group_id", "group id", true).unwrap_or_default(),
        node_id: id(t, "node_id", "edge node id", true).unwrap_or_default(),
        primary_host_id: id(t, "primary_host_id", "host id", false),
        aliases: t.bool_or("aliases", d.aliases),
        rebirth_debounce: t.duration_or("rebirth_debounce", d.rebirth_debounce),
        max_data_metrics: t.int_in("max_data_metrics", d.max_data_metrics as i64, 1..=1_000_000) as usize,
        state_max_skew: t.duration_or("state_max_skew", d.state_max_skew),
    };
    t.finish(&[
        "group_id",
        "node_id",
        "primary_host_id",
        "aliases",
        "rebirth_debounce",
        "max_data_metrics",
        "state_max_skew",
    ]);
    n
}

/// Reads `[mqtt]`. Without `servers_required`, no broker is valid (the
/// gateway's file as shipped: it waits for one, `Config::setup_needed`).
pub(crate) fn read_mqtt(t: Option<Table>, root: &Table, servers_required: bool) -> MqttConfig {
    let Some(t) = t else {
        if servers_required {
            root.missing("mqtt", "an [mqtt] table with at least one [[mqtt.servers]]");
        }
        return MqttConfig::defaults(Vec::new());
    };
    let servers: Vec<ServerConfig> = t.tables("servers").iter().filter_map(read_server).collect();
    if servers_required && servers.is_empty() && !t.ctx().has_errors() {
        t.missing("servers", "at least one [[mqtt.servers]] with a host");
    }
    let d = MqttConfig::defaults(Vec::new());
    let m = MqttConfig {
        servers,
        keepalive: t.duration_or("keepalive", d.keepalive),
        backoff_min: t.duration_or("backoff_min", d.backoff_min),
        backoff_max: t.duration_or("backoff_max", d.backoff_max),
        max_packet_size: t.bytes_or("max_packet_size", d.max_packet_size),
        connect_timeout: t.duration_or("connect_timeout", d.connect_timeout),
    };
    if m.keepalive < Duration::from_secs(5) {
        t.invalid(
            "keepalive",
            "must be at least 5s (MQTT keepalive has one-second resolution)",
        );
    }
    if m.backoff_min > m.backoff_max {
        t.invalid("backoff_min", "must not exceed backoff_max");
    }
    if m.max_packet_size < 16 * 1024 {
        t.invalid(
            "max_packet_size",
            "must be at least 16KiB: a real NBIRTH is larger than rumqttc's 10 KiB default",
        );
    }
    t.finish(&[
        "servers",
        "keepalive",
        "backoff_min",
        "backoff_max",
        "max_packet_size",
        "connect_timeout",
    ]);
    m
}

impl MqttConfig {
    fn defaults(servers: Vec<ServerConfig>) -> MqttConfig {
        MqttConfig {
            servers,
            keepalive: Duration::from_secs(30),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_packet_size: 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

fn read_server(t: &Table) -> Option<ServerConfig> {
    let host = t.req_str("host", "the broker's host name or IP address");
    if let Some(Err(e)) = host.as_deref().map(check_host) {
        t.invalid("host", e);
    }
    let tls = t.opt_table("tls").map(|tt| {
        let tls = TlsConfig {
            ca: tt.opt_path("ca"),
            system_roots: tt.bool_or("system_roots", false),
            cert: tt.opt_path("cert"),
            key: tt.opt_path("key"),
            server_name: tt.opt_str("server_name"),
        };
        if tls.ca.is_none() && !tls.system_roots {
            tt.missing(
                "ca",
                "the CA that signed the broker certificate (or system_roots = true)",
            );
        }
        match (&tls.cert, &tls.key) {
            (Some(_), None) => tt.missing("key", "the client key that goes with `cert`"),
            (None, Some(_)) => tt.missing("cert", "the client certificate that goes with `key`"),
            _ => {}
        }
        tt.finish(&["ca", "system_roots", "cert", "key", "server_name"]);
        tls
    });
    let default_port = if tls.is_some() { 8883 } else { 1883 };
    let s = ServerConfig {
        host: host.unwrap_or_default(),
        port: t.int_in("port", default_port, 1..=65535) as u16,
        client_id: t.opt_str("client_id"),
        username: t.opt_str("username"),
        password: t.opt_str("password"),
        keepalive: t.opt_duration("keepalive"),
        tls,
    };
    if s.keepalive.is_some_and(|k| k < Duration::from_secs(5)) {
        t.invalid(
            "keepalive",
            "must be at least 5s (MQTT keepalive has one-second resolution)",
        );
    }
    t.finish(&["host", "port", "client_id", "username", "password", "keepalive", "tls"]);
    Some(s)
}

fn read_store(t: Option<Table>) -> StoreConfig {
    let d = StoreConfig::default();
    let Some(t) = t else { return d };
    let s = StoreConfig {
        path: t.opt_path("path").unwrap_or(d.path),
        max_bytes: t.bytes_or("max_bytes", d.max_bytes),
        replay_rate: t.int_in("replay_rate", d.replay_rate.into(), 0..=10_000_000) as u32,
        flush_records: t.int_in("flush_records", d.flush_records.into(), 1..=1_000_000) as u32,
        flush_interval: t.duration_or("flush_interval", d.flush_interval),
        host_window: t.duration_or("host_window", d.host_window),
        host_window_max_bytes: t.bytes_or("host_window_max_bytes", d.host_window_max_bytes),
    };
    if s.max_bytes < 1024 * 1024 {
        t.invalid("max_bytes", "must be at least 1MiB");
    }
    if s.flush_interval > Duration::from_secs(10) {
        t.invalid(
            "flush_interval",
            "must be at most 10s (a power cut loses up to this much)",
        );
    }
    t.finish(&[
        "path",
        "max_bytes",
        "replay_rate",
        "flush_records",
        "flush_interval",
        "host_window",
        "host_window_max_bytes",
    ]);
    s
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("/var/lib/spb-gateway/store"),
            max_bytes: 256 * 1024 * 1024,
            replay_rate: 0,
            flush_records: 1000,
            flush_interval: Duration::from_secs(1),
            host_window: Duration::from_secs(60),
            host_window_max_bytes: 8 * 1024 * 1024,
        }
    }
}

pub(crate) fn read_telemetry(t: Option<Table>) -> TelemetryConfig {
    let d = TelemetryConfig::default();
    let Some(t) = t else { return d };
    let listen = match t.opt_str("listen") {
        None => d.listen,
        Some(s) if s.is_empty() => None,
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                t.invalid(
                    "listen",
                    format!("'{s}' is not an address:port like \"127.0.0.1:9102\" (\"\" disables)"),
                );
                d.listen
            }
        },
    };
    let log_level = t.opt_str("log_level").unwrap_or(d.log_level);
    if tracing_level_ok(&log_level).is_err() {
        t.invalid(
            "log_level",
            format!(
                "'{log_level}' is not one of error, warn, info, debug, trace (or a filter like \"info,spb=debug\")"
            ),
        );
    }
    let log_format = match t.opt_str("log_format").as_deref() {
        None | Some("auto") => LogFormat::Auto,
        Some("human") => LogFormat::Human,
        Some("json") => LogFormat::Json,
        Some("journald") => LogFormat::Journald,
        Some(other) => {
            t.invalid(
                "log_format",
                format!("'{other}' is not one of auto, human, json, journald"),
            );
            LogFormat::Auto
        }
    };
    t.finish(&["listen", "log_level", "log_format"]);
    TelemetryConfig {
        listen,
        log_level,
        log_format,
    }
}

/// Checks a log filter (`info`, `warn,spb=debug`).
pub fn tracing_level_ok(s: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9102))),
            log_level: "info".to_string(),
            log_format: LogFormat::Auto,
        }
    }
}

fn read_device(t: &Table) -> Option<DeviceConfig> {
    let name = id(t, "name", "device id", true);
    let driver = match t.req_str("driver", "the PLC protocol: s7, logix or sim").as_deref() {
        Some("sim") => Some(DriverKind::Sim),
        Some("s7") => Some(DriverKind::S7),
        Some("logix") => Some(DriverKind::Logix),
        Some(other) => {
            t.invalid("driver", format!("unknown driver '{other}'; available: s7, logix, sim"));
            None
        }
        None => None,
    };
    let address = match t.opt_str("address").filter(|a| !a.trim().is_empty()) {
        None => {
            if matches!(driver, Some(DriverKind::S7 | DriverKind::Logix)) {
                t.missing("address", "the PLC's IP address or host name (host or host:port)");
            }
            None
        }
        Some(a) => match PlcAddress::parse(&a) {
            Ok(a) => Some(a),
            Err(e) => {
                t.invalid("address", e);
                None
            }
        },
    };
    let s7 = match t.opt_table("s7") {
        Some(st) => {
            if driver != Some(DriverKind::S7) {
                t.invalid("s7", "an [devices.s7] table belongs to a device with driver = \"s7\"");
            }
            read_s7(&st)
        }
        None => S7DeviceConfig::default(),
    };
    let logix = match t.opt_table("logix") {
        Some(lt) => {
            if driver != Some(DriverKind::Logix) {
                t.invalid(
                    "logix",
                    "a [devices.logix] table belongs to a device with driver = \"logix\"",
                );
            }
            read_logix(&lt)
        }
        None => LogixDeviceConfig::default(),
    };
    let mut scan_classes = vec![(DEFAULT_SCAN_CLASS.to_string(), Duration::from_secs(1))];
    if let Some(sc) = t.opt_table("scan_classes") {
        for (k, at, _) in sc.entries() {
            let period = sc.duration_or(&k, Duration::from_secs(1));
            if period < Duration::from_millis(10) {
                sc.ctx()
                    .error(at, &sc.key_path(&k), "a scan period must be at least 10ms");
            }
            match scan_classes.iter_mut().find(|(n, _)| *n == k) {
                Some(existing) => existing.1 = period,
                None => scan_classes.push((k, period)),
            }
        }
    }
    let sim = t
        .opt_table("sim")
        .map(|st| read_sim(&st, &scan_classes))
        .unwrap_or_default();
    let mut tags = Vec::new();
    // Names are checked on the tables, so that a tag with another error is
    // still seen, and the index is the table's.
    let mut seen = std::collections::HashSet::new();
    for (i, tt) in t.tables("tags").iter().enumerate() {
        if let Some(n) = tt.peek_str("name") {
            if !seen.insert(n) {
                t.ctx().error(
                    tt.offset_of("name"),
                    &format!("{}[{i}].name", t.key_path("tags")),
                    format!("tag '{n}' is defined twice on this device"),
                );
            }
        }
        if let Some(tag) = read_tag(tt, driver, &scan_classes) {
            let machine_tag =
                matches!(&tag.address, TagAddress::Sim(s) if matches!(s.shape, crate::plc::sim::Shape::Machine(_)));
            if machine_tag && sim.machine.is_none() {
                tt.invalid(
                    "address",
                    "a machine output needs a [devices.sim.machine] table on its device",
                );
            }
            tags.push(tag);
        }
    }
    let d = DeviceConfig {
        name: name.unwrap_or_default(),
        driver: driver.unwrap_or(DriverKind::Sim),
        address,
        enabled: t.bool_or("enabled", true),
        scan_classes,
        timeout: t.duration_or("timeout", Duration::from_secs(2)),
        fail_after: t.int_in("fail_after", 3, 1..=1000) as u32,
        tags,
        sim,
        s7,
        logix,
        backoff_min: t.duration_or("backoff_min", Duration::from_secs(1)),
        backoff_max: t.duration_or("backoff_max", Duration::from_secs(30)),
    };
    if d.backoff_min > d.backoff_max {
        t.invalid("backoff_min", "must not be larger than backoff_max");
    }
    t.finish(&[
        "name",
        "driver",
        "address",
        "enabled",
        "scan_classes",
        "timeout",
        "fail_after",
        "tags",
        "sim",
        "s7",
        "logix",
        "backoff_min",
        "backoff_max",
    ]);
    driver.map(|_| d)
}

/// A TSAP as `0x0102`, `01.02` (as TIA Portal shows it) or a number.
fn tsap(t: &Table, key: &str, default: u16) -> u16 {
    if t.is_str(key) {
        let s = t.opt_str(key).unwrap_or_default();
        let parsed = match s.split_once('.') {
            Some((hi, lo)) => u8::from_str_radix(hi.trim(), 16)
                .ok()
                .zip(u8::from_str_radix(lo.trim(), 16).ok())
                .map(|(h, l)| u16::from_be_bytes([h, l])),
            None => u16::from_str_radix(s.trim().trim_start_matches("0x").trim_start_matches("0X"), 16).ok(),
        };
        return parsed.unwrap_or_else(|| {
            t.invalid(key, format!("'{s}' is not a TSAP: write it as \"01.02\" or \"0x0102\""));
            default
        });
    }
    t.int_in(key, default.into(), 0..=0xFFFF) as u16
}

fn read_s7(t: &Table) -> S7DeviceConfig {
    let rack = t.int_in("rack", 0, 0..=7) as u8;
    let slot = t.int_in("slot", 1, 0..=31) as u8;
    let conn_type = match t.opt_str("connection_type").as_deref() {
        None | Some("pg") => 1,
        Some("op") => 2,
        Some("basic") => 3,
        Some(other) => {
            t.invalid(
                "connection_type",
                format!("unknown connection type '{other}'; available: pg, op, basic"),
            );
            1
        }
    };
    let derived = crate::plc::s7::S7Options::tsap_for(conn_type, rack, slot);
    let c = S7DeviceConfig {
        rack,
        slot,
        local_tsap: tsap(t, "local_tsap", 0x0100),
        remote_tsap: tsap(t, "remote_tsap", derived),
        pdu_size: t.int_in("pdu_size", 960, 240..=960) as u16,
        max_items: t.int_in("max_items", 20, 1..=255) as usize,
    };
    t.finish(&[
        "rack",
        "slot",
        "connection_type",
        "local_tsap",
        "remote_tsap",
        "pdu_size",
        "max_items",
    ]);
    c
}

fn read_logix(t: &Table) -> LogixDeviceConfig {
    let slot = t.opt_i64("slot").map(|_| t.int_in("slot", 0, 0..=31) as u8);
    let c = LogixDeviceConfig {
        slot,
        batch_size: t.int_in("batch_size", LogixDeviceConfig::default().batch_size as i64, 1..=200) as usize,
    };
    t.finish(&["slot", "batch_size"]);
    c
}

fn read_sim(t: &Table, classes: &[(String, Duration)]) -> SimDeviceConfig {
    let signal = t.opt_str("generate_signal").and_then(|s| match Signal::parse(&s) {
        Ok(sig) => Some(sig),
        Err(e) => {
            t.invalid("generate_signal", e);
            None
        }
    });
    let datatype = t
        .opt_str("generate_datatype")
        .and_then(|s| datatype(t, "generate_datatype", &s));
    let class = t.opt_str("generate_scan_class");
    if let Some(c) = &class {
        check_class(t, "generate_scan_class", c, classes);
    }
    let s = SimDeviceConfig {
        generate: t.int_in("generate", 0, 0..=10_000_000) as u32,
        generate_signal: signal,
        generate_datatype: datatype,
        generate_scan_class: class,
        unreachable_every: t
            .opt_str("unreachable_every")
            .map(|_| t.duration_or("unreachable_every", Duration::ZERO)),
        unreachable_for: t.duration_or("unreachable_for", Duration::from_secs(3)),
        seed: t.int_in("seed", 1, 0..=i64::MAX) as u64,
        machine: None,
    };
    let machine = t.opt_table("machine").map(|m| read_sim_machine(&m, s.seed));
    t.finish(&[
        "generate",
        "generate_signal",
        "generate_datatype",
        "generate_scan_class",
        "unreachable_every",
        "unreachable_for",
        "seed",
        "machine",
    ]);
    SimDeviceConfig { machine, ..s }
}

/// `[devices.sim.machine]`.
fn read_sim_machine(t: &Table, seed: u64) -> crate::plc::machine::MachineParams {
    let secs = |key: &str, default: f64| t.duration_or(key, Duration::from_secs_f64(default)).as_secs_f64();
    let p = crate::plc::machine::MachineParams {
        cycle: secs("cycle", 2.0),
        jitter: t.opt_f64("jitter").unwrap_or(0.1),
        fault_every: secs("fault_every", 600.0),
        fault_for: secs("fault_for", 60.0),
        fault_codes: match t.opt_scalar_list("fault_codes") {
            None => vec![12],
            Some(v) => v
                .iter()
                .filter_map(|s| match s {
                    Scalar::Int(i) => Some(*i),
                    _ => {
                        t.invalid("fault_codes", "integers, e.g. [12, 40]");
                        None
                    }
                })
                .collect(),
        },
        reject_rate: t.opt_f64("reject_rate").unwrap_or(0.02),
        seed,
    };
    if p.cycle <= 0.0 {
        t.invalid("cycle", "must be more than 0");
    }
    if !(0.0..0.5).contains(&p.jitter) {
        t.invalid("jitter", "a fraction from 0 to 0.5");
    }
    if p.fault_every > 0.0 && p.fault_for * 6.0 > p.fault_every {
        t.invalid("fault_for", "at most a sixth of fault_every (faults must not overlap)");
    }
    if !(0.0..=1.0).contains(&p.reject_rate) {
        t.invalid("reject_rate", "a share from 0 to 1");
    }
    t.finish(&[
        "cycle",
        "jitter",
        "fault_every",
        "fault_for",
        "fault_codes",
        "reject_rate",
    ]);
    p
}

/// IEC 61131-3 elementary type names (as a controls engineer types them,
/// any case) and the Sparkplug datatype each is polled as.
pub const IEC_DATATYPES: [(&str, DataType); 18] = [
    ("BOOL", DataType::Boolean),
    ("SINT", DataType::Int8),
    ("INT", DataType::Int16),
    ("DINT", DataType::Int32),
    ("LINT", DataType::Int64),
    ("USINT", DataType::UInt8),
    ("BYTE", DataType::UInt8),
    ("UINT", DataType::UInt16),
    ("WORD", DataType::UInt16),
    ("UDINT", DataType::UInt32),
    ("DWORD", DataType::UInt32),
    ("ULINT", DataType::UInt64),
    ("LWORD", DataType::UInt64),
    ("REAL", DataType::Float),
    ("LREAL", DataType::Double),
    ("STRING", DataType::String),
    ("DT", DataType::DateTime),
    ("DATE_AND_TIME", DataType::DateTime),
];

fn datatype(t: &Table, key: &str, s: &str) -> Option<DataType> {
    let iec = IEC_DATATYPES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(s))
        .map(|(_, d)| *d);
    match iec.or_else(|| DataType::from_name(s)) {
        Some(dt) if dt.is_metric_type() && !matches!(dt, DataType::DataSet | DataType::Template | DataType::File) => {
            Some(dt)
        }
        Some(dt) => {
            t.invalid(key, format!("{dt} cannot be polled from a PLC tag"));
            None
        }
        None => {
            // The closest name, Sparkplug's or IEC's, if it is close.
            let pollable: Vec<String> = crate::sparkplug::datatype::ALL
                .iter()
                .filter(|d| {
                    d.is_metric_type()
                        && !matches!(
                            d,
                            DataType::DataSet | DataType::Template | DataType::File | DataType::Unknown
                        )
                })
                .map(|d| d.name().to_string())
                .collect();
            let candidates = pollable
                .iter()
                .map(String::as_str)
                .chain(IEC_DATATYPES.iter().map(|(n, _)| *n));
            let hint = candidates
                .map(|n| (reader::edit_distance(&n.to_lowercase(), &s.to_lowercase()), n))
                .filter(|(d, _)| *d <= 2)
                .min_by_key(|(d, _)| *d)
                .map(|(_, n)| format!(" (did you mean {n}?)"))
                .unwrap_or_default();
            let iec: Vec<&str> = IEC_DATATYPES.iter().map(|(n, _)| *n).collect();
            t.invalid(
                key,
                format!(
                    "unknown datatype '{s}'{hint}; valid: {}; or IEC 61131-3: {}",
                    pollable.join(", "),
                    iec.join(", ")
                ),
            );
            None
        }
    }
}

fn check_class(t: &Table, key: &str, class: &str, classes: &[(String, Duration)]) {
    if !classes.iter().any(|(n, _)| n == class) {
        let known: Vec<&str> = classes.iter().map(|(n, _)| n.as_str()).collect();
        t.invalid(
            key,
            format!("unknown scan class '{class}'; this device has: {}", known.join(", ")),
        );
    }
}

fn read_tag(t: &Table, driver: Option<DriverKind>, classes: &[(String, Duration)]) -> Option<TagConfig> {
    let name = t.req_str("name", "the Sparkplug metric name, folders separated by '/'");
    if let Some(n) = &name {
        if n.is_empty() || n.starts_with('/') || n.ends_with('/') || n.contains("//") {
            t.invalid("name", format!("'{n}' is not a metric name: no empty folder names"));
        }
    }
    let address = t.req_str("address", "where the value lives in the PLC");
    let dt = t
        .req_str("datatype", "the Sparkplug datatype, e.g. Float, Int32, Boolean")
        .and_then(|s| datatype(t, "datatype", &s));
    let scan_class = t
        .opt_str("scan_class")
        .unwrap_or_else(|| DEFAULT_SCAN_CLASS.to_string());
    check_class(t, "scan_class", &scan_class, classes);
    let deadband = t.opt_f64("deadband").unwrap_or(0.0);
    let deadband_percent = t.opt_f64("deadband_percent").unwrap_or(0.0);
    if deadband < 0.0 {
        t.invalid("deadband", "must not be negative");
    }
    if !(0.0..=100.0).contains(&deadband_percent) {
        t.invalid("deadband_percent", "must be between 0 and 100");
    }
    if let Some(dt) = dt {
        if (deadband > 0.0 || deadband_percent > 0.0) && !dt.is_numeric() {
            t.invalid("deadband", format!("a deadband needs a numeric datatype, not {dt}"));
        }
    }
    // Parsed once, for the device's driver: what the driver gets cannot fail to parse.
    let parsed = match (driver, &address, dt) {
        (Some(DriverKind::Sim), Some(a), _) => match Signal::parse(a) {
            Ok(s) => {
                if let Some(Err(e)) = dt.map(|dt| s.check_datatype(dt)) {
                    t.invalid("address", e);
                }
                Some(TagAddress::Sim(std::sync::Arc::new(s)))
            }
            Err(e) => {
                t.invalid("address", e);
                None
            }
        },
        (Some(DriverKind::S7), Some(a), Some(dt)) => match crate::plc::s7::address::S7Address::parse(a, dt) {
            Ok(a) => Some(TagAddress::S7(a)),
            Err(e) => {
                t.invalid("address", e.to_string());
                None
            }
        },
        (Some(DriverKind::Logix), Some(a), Some(dt)) => match crate::plc::logix::LogixTag::parse(a, dt) {
            Ok(a) => Some(TagAddress::Logix(Box::new(a))),
            Err(e) => {
                t.invalid("address", e.to_string());
                None
            }
        },
        _ => None,
    };
    let write = read_write_guard(t, dt);
    // Unknown keys are reported even when a required key was bad.
    t.finish(&[
        "name",
        "address",
        "datatype",
        "scan_class",
        "deadband",
        "deadband_percent",
        "writable",
        "min",
        "max",
        "allowed",
        "max_rate",
        "cooldown",
    ]);
    Some(TagConfig {
        name: name?,
        address: parsed?,
        datatype: dt?,
        scan_class,
        deadband,
        deadband_percent,
        write,
    })
}

/// `writable` and the keys that bound what a write may do. They apply only
/// to a writable tag, and each to the datatypes it can judge: an error
/// otherwise, so that a guard the technician wrote is never silently ignored.
fn read_write_guard(t: &Table, dt: Option<DataType>) -> Option<TagGuard> {
    let writable = t.bool_or("writable", false);
    let guard = TagGuard {
        min: t.opt_f64("min"),
        max: t.opt_f64("max"),
        allowed: t
            .opt_scalar_list("allowed")
            .unwrap_or_default()
            .into_iter()
            .map(|s| match s {
                Scalar::Bool(b) => Allowed::Bool(b),
                Scalar::Int(i) => Allowed::Int(i),
                Scalar::Float(x) => Allowed::Float(x),
                Scalar::Str(s) => Allowed::Text(s),
            })
            .collect(),
        max_rate: t.opt_i64("max_rate").and_then(|n| match u32::try_from(n) {
            Ok(n) if (1..=6000).contains(&n) => Some(n),
            _ => {
                t.invalid("max_rate", format!("{n} is outside 1..=6000 (writes a minute)"));
                None
            }
        }),
        cooldown: t.opt_duration("cooldown").unwrap_or_default(),
    };
    let keys = ["min", "max", "allowed", "max_rate", "cooldown"];
    if !writable {
        for k in keys.iter().filter(|k| t.is_present(k)) {
            t.invalid(k, "applies to a writable tag only: set `writable = true`, or remove it");
        }
        return None;
    }
    if let Some(dt) = dt {
        let numeric = dt.is_numeric();
        for k in ["min", "max"] {
            if !numeric && t.is_present(k) {
                t.invalid(k, format!("a {k} needs a numeric datatype, not {dt}"));
            }
        }
        if let (Some(lo), Some(hi)) = (guard.min, guard.max) {
            if lo > hi {
                t.invalid("min", format!("{lo} is above max ({hi})"));
            }
        }
        let kind_ok = |a: &Allowed| match a {
            Allowed::Bool(_) => dt == DataType::Boolean,
            Allowed::Int(_) => numeric,
            Allowed::Float(_) => matches!(dt, DataType::Float | DataType::Double),
            Allowed::Text(_) => matches!(dt, DataType::String | DataType::Text),
        };
        if let Some(a) = guard.allowed.iter().find(|a| !kind_ok(a)) {
            t.invalid("allowed", format!("{a} cannot be a value of a {dt} tag"));
        }
        let writable_type = numeric || matches!(dt, DataType::Boolean | DataType::String | DataType::Text);
        if !writable_type {
            t.invalid(
                "writable",
                format!("{dt} tags cannot be written by this version (numbers, Boolean and String can)"),
            );
        }
    }
    Some(guard)
}

fn check_unique_names(root: &Table, devices: &[DeviceConfig]) {
    let tables = root.tables("devices");
    let mut seen = std::collections::HashSet::new();
    for (i, d) in devices.iter().enumerate() {
        if !d.name.is_empty() && !seen.insert(d.name.as_str()) {
            let at = tables.get(i).map_or(0, |t| t.offset_of("name"));
            root.ctx().error(
                at,
                &format!("devices[{i}].name"),
                format!("device '{}' is defined twice", d.name),
            );
        }
    }
}

/// Command-line settings that override the file (`--broker-host` etc.).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub broker_host: Option<String>,
    pub broker_port: Option<u16>,
    pub group_id: Option<String>,
    pub node_id: Option<String>,
    pub metrics_port: Option<u16>,
    pub data_dir: Option<PathBuf>,
    pub log_level: Option<String>,
}

impl Config {
    /// Applies command-line overrides; they are validated like the file.
    pub fn apply(&mut self, o: &Overrides) -> Result<(), String> {
        if let Some(g) = &o.group_id {
            validate_id("group id", g).map_err(|e| format!("--group-id: {e}"))?;
            self.node.group_id = g.clone();
        }
        if let Some(n) = &o.node_id {
            validate_id("edge node id", n).map_err(|e| format!("--node-id: {e}"))?;
            self.node.node_id = n.clone();
        }
        if o.broker_host.is_some() || o.broker_port.is_some() {
            // The command line names one broker: it replaces the list, keeping
            // the first server's TLS and credentials.
            let mut first = self
                .mqtt
                .servers
                .first()
                .cloned()
                .unwrap_or_else(|| ServerConfig::plain("", 1883));
            if let Some(h) = &o.broker_host {
                first.host = h.clone();
            }
            if first.host.is_empty() {
                return Err("--broker-port: the configuration has no [[mqtt.servers]]: give --broker-host too".into());
            }
            if let Some(p) = o.broker_port {
                first.port = p;
            }
            self.mqtt.servers = vec![first];
        }
        if let Some(p) = o.metrics_port {
            let ip = self.telemetry.listen.map_or([127, 0, 0, 1].into(), |a| a.ip());
            self.telemetry.listen = Some(SocketAddr::new(ip, p));
        }
        if let Some(d) = &o.data_dir {
            self.store.path = d.clone();
        }
        if let Some(l) = &o.log_level {
            tracing_level_ok(l).map_err(|e| format!("--log-level: {e}"))?;
            self.telemetry.log_level = l.clone();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[node]
group_id = "Plant1"
node_id = "gw-01"

[[mqtt.servers]]
host = "broker.local"
"#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse("c.toml", MINIMAL).expect("valid");
        assert_eq!(c.mqtt.servers[0].port, 1883);
        assert_eq!(c.mqtt.keepalive, Duration::from_secs(30));
        assert_eq!(c.mqtt.max_packet_size, 1024 * 1024);
        assert!(c.node.aliases);
        assert!(!c.commands.enabled, "commands are off by default");
        assert_eq!(c.store.max_bytes, 256 * 1024 * 1024);
        assert_eq!(c.telemetry.listen, Some("127.0.0.1:9102".parse().expect("addr")));
    }

    #[test]
    fn every_error_is_reported_at_once_with_key_path_and_line_column() {
        let text = r#"[node]
group_id = "Plant/1"
node_id = "gw-01"
colour = "blue"

[[mqtt.servers]]
host = "b"
port = 70000
keepalive = "fast"

[[devices]]
name = "press"
driver = "sim"

[[devices.tags]]
name = "Temp"
address = "sine(period=10s)"
datatype = "Flaot"
deadbnad = 0.5
"#;
        let errs = Config::parse("config.toml", text)
            .expect_err("five problems")
            .to_string();
        let lines: Vec<&str> = errs.lines().collect();
        assert_eq!(
            lines,
            vec![
                "config.toml:2:12: node.group_id: group id 'Plant/1' is invalid: it contains '/', the topic separator",
                "config.toml:4:1: node.colour: unknown key; allowed here: group_id, node_id, primary_host_id, aliases, rebirth_debounce, max_data_metrics, state_max_skew",
                "config.toml:8:8: mqtt.servers[0].port: 70000 is outside 1..=65535",
                // Written under [[mqtt.servers]], so it is that server's keepalive.
                "config.toml:9:13: mqtt.servers[0].keepalive: 'fast' is not a duration: use e.g. \"500ms\", \"30s\", \"5m\", \"1h\"",
                "config.toml:18:12: devices[0].tags[0].datatype: unknown datatype 'Flaot' (did you mean Float?); valid: Int8, Int16, Int32, Int64, UInt8, UInt16, UInt32, UInt64, Float, Double, Boolean, String, DateTime, Text, UUID, Bytes, Int8Array, Int16Array, Int32Array, Int64Array, UInt8Array, UInt16Array, UInt32Array, UInt64Array, FloatArray, DoubleArray, BooleanArray, StringArray, DateTimeArray; or IEC 61131-3: BOOL, SINT, INT, DINT, LINT, USINT, BYTE, UINT, WORD, UDINT, DWORD, ULINT, LWORD, REAL, LREAL, STRING, DT, DATE_AND_TIME",
                "config.toml:19:1: devices[0].tags[0].deadbnad: unknown key (did you mean `deadband`?); allowed here: name, address, datatype, scan_class, deadband, deadband_percent, writable, min, max, allowed, max_rate, cooldown",
                "6 errors in the configuration",
            ]
        );
    }

    #[test]
    fn the_readmes_writing_to_plcs_example_is_a_valid_guard_and_its_audit_line_parses() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("## Writing to PLCs").expect("the section")..];
        let block = |fence: &str| {
            let start = section.find(fence).expect("a block") + fence.len();
            let end = start + section[start..].find("```").expect("closed");
            section[start..end]
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("\n")
        };
        let text = format!(
            "{MINIMAL}\n[commands]\nenabled = true\n[[devices]]\nname = \"oven\"\ndriver = \"sim\"\n\
             [[devices.tags]]\nname = \"Setpoint\"\naddress = \"const(1)\"\ndatatype = \"Int16\"\n{}",
            block("```toml")
        );
        let c = Config::parse("c.toml", &text).expect("the README's keys are valid");
        let g = c.devices[0].tags[0].write.clone().expect("writable");
        assert_eq!((g.min, g.max, g.max_rate), (Some(0.0), Some(250.0), Some(6)));
        assert_eq!(g.cooldown, Duration::from_secs(2));
        assert_eq!(g.allowed.len(), 3);
        let line: serde_json::Value = serde_json::from_str(&block("```json")).expect("the audit line is JSON");
        for key in ["at", "command", "device", "metric", "old", "new", "outcome", "request"] {
            assert!(line.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn a_simulated_machine_is_configured_and_its_mistakes_named() {
        let dev = "[[devices]]\nname = \"press\"\ndriver = \"sim\"\n";
        let tag = |a: &str, dt: &str| {
            format!("[[devices.tags]]\nname = \"T{a}{dt}\"\naddress = \"{a}\"\ndatatype = \"{dt}\"\n")
        };
        let ok = format!(
            "{MINIMAL}{dev}[devices.sim.machine]\ncycle = \"2.5s\"\nfault_codes = [12, 40]\n{}",
            tag("machine(count)", "UInt32")
        );
        let c = Config::parse("c.toml", &ok).expect("valid");
        let m = c.devices[0].sim.machine.clone().expect("machine");
        assert_eq!(
            (m.cycle, m.fault_codes.clone(), m.fault_every),
            (2.5, vec![12, 40], 600.0)
        );
        let no_table = format!("{MINIMAL}{dev}{}", tag("machine(count)", "UInt32"));
        let e = Config::parse("c.toml", &no_table).expect_err("refused").to_string();
        assert!(
            e.contains("address: a machine output needs a [devices.sim.machine] table"),
            "{e}"
        );
        let bad = format!(
            "{MINIMAL}{dev}[devices.sim.machine]\nfault_every = \"60s\"\nfault_for = \"30s\"\njitter = 2\n{}{}{}",
            tag("machine(state)", "Int32"),
            tag("machine(speed)", "Float"),
            tag("machine(running)", "Boolean")
        );
        let e = Config::parse("c.toml", &bad).expect_err("refused").to_string();
        for want in [
            "devices[0].sim.machine.fault_for: at most a sixth of fault_every",
            "devices[0].sim.machine.jitter: a fraction from 0 to 0.5",
            "machine(state) is a String, not Int32",
            "'machine(speed)': machine(count), (good), (rejects), (running), (state) or (fault)",
        ] {
            assert!(e.contains(want), "{want:?} in {e}");
        }
    }

    #[test]
    fn commands_keys_are_read_with_safe_defaults_and_bounds_name_their_line() {
        let c = Config::parse("c.toml", MINIMAL).expect("valid");
        assert!(!c.commands.enabled && !c.commands.reboot && !c.commands.write_lock);
        assert_eq!((c.commands.audit_max_size, c.commands.audit_keep), (10 << 20, 5));
        let on = format!(
            "{MINIMAL}\n[commands]\nenabled = true\nreboot = true\naudit_max_size = \"1MiB\"\naudit_keep = 2\n"
        );
        let c = Config::parse("c.toml", &on).expect("valid");
        assert!(c.commands.enabled && c.commands.reboot);
        assert_eq!((c.commands.audit_max_size, c.commands.audit_keep), (1 << 20, 2));
        let bad = format!("{MINIMAL}\n[commands]\naudit_max_size = \"1KiB\"\naudit_keep = 1000\nreboot = \"yes\"\n");
        let errs = Config::parse("c.toml", &bad).expect_err("refused").to_string();
        assert!(
            errs.contains("c.toml:10:18: commands.audit_max_size: must be between 4KiB and 1GiB"),
            "{errs}"
        );
        assert!(errs.contains("c.toml:11:14: commands.audit_keep"), "{errs}");
        assert!(errs.contains("c.toml:12:10: commands.reboot"), "{errs}");
    }

    #[test]
    fn hosts_and_plc_addresses_a_technician_mistypes_are_errors_that_say_what_to_write() {
        for good in [
            "broker.plant.local",
            "10.0.0.5",
            "localhost",
            "::1",
            "[fe80::1]",
            "b-1.x.",
        ] {
            assert_eq!(check_host(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("", "is empty"),
            ("192.168.10.5:8883", "its port as `port`"),
            ("mqtts://broker", "has a scheme"),
            ("192.168.10.300", "not an IPv4 address"),
            ("broker_1.plant", "not a host name"),
            ("-x.plant", "not a host name"),
        ] {
            let e = check_host(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        for good in [
            "192.168.10.30",
            "192.168.10.30:102",
            "plc-4.line",
            "[fe80::1]:44818",
            "fe80::1",
        ] {
            assert!(PlcAddress::parse(good).is_ok(), "{good}");
        }
        for (bad, says) in [
            ("192.168.10.30:", "without a port"),
            (":99999", "not a number from 1 to 65535"),
            (":102", "no host before the port"),
            ("192.168.10.300", "not an IPv4 address"),
            ("http://192.168.10.30", "has a scheme"),
            ("10.0.0.1:0", "not a number from 1 to 65535"),
        ] {
            let e = PlcAddress::parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        // In a file: the key path and line:column.
        let text = MINIMAL.replace("host = \"broker.local\"", "host = \"mqtts://broker.local\"")
            + "\n[[devices]]\nname = \"plc\"\ndriver = \"s7\"\naddress = \"192.168.10.30:\"\n";
        let errs = Config::parse("c.toml", &text).expect_err("two errors").to_string();
        assert!(
            errs.contains("c.toml:7:8: mqtt.servers[0].host: 'mqtts://broker.local' has a scheme"),
            "{errs}"
        );
        assert!(
            errs.contains("c.toml:12:11: devices[0].address: '192.168.10.30:' ends in ':' without a port"),
            "{errs}"
        );
    }

    #[test]
    fn iec_61131_datatype_names_are_accepted_in_any_case_and_a_typo_gets_the_nearest_name() {
        let tag = |dt: &str| {
            format!("{MINIMAL}\n[[devices]]\nname = \"plc\"\ndriver = \"sim\"\n[[devices.tags]]\nname = \"T\"\naddress = \"counter\"\ndatatype = \"{dt}\"\n")
        };
        for (name, dt) in [
            ("REAL", DataType::Float),
            ("dint", DataType::Int32),
            ("Bool", DataType::Boolean),
            ("LREAL", DataType::Double),
            ("WORD", DataType::UInt16),
            ("Int32", DataType::Int32),
        ] {
            let c = Config::parse("c.toml", &tag(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.devices[0].tags[0].datatype, dt, "{name}");
        }
        let e = Config::parse("c.toml", &tag("DINTT")).expect_err("typo").to_string();
        assert!(e.contains("unknown datatype 'DINTT' (did you mean DINT?)"), "{e}");
        assert!(
            e.contains("or IEC 61131-3: BOOL, SINT"),
            "the valid names are listed: {e}"
        );
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let errs = Config::parse("c.toml", "[node\ngroup_id = 1").expect_err("syntax");
        assert_eq!((errs.0[0].line, errs.0[0].path.as_str()), (1, "(syntax)"));
    }

    #[test]
    fn missing_keys_and_tls_halves_are_named() {
        let errs = Config::parse(
            "c.toml",
            "[node]\ngroup_id = \"g\"\n[mqtt]\n[[mqtt.servers]]\nhost = \"h\"\n[mqtt.servers.tls]\ncert = \"c.pem\"\n",
        )
        .expect_err("missing");
        let text = errs.to_string();
        assert!(text.contains("c.toml:1:1: node.node_id: is required"), "{text}");
        assert!(text.contains("mqtt.servers[0].tls.ca: is required"), "{text}");
        assert!(
            text.contains("mqtt.servers[0].tls.key: is required (the client key that goes with `cert`)"),
            "{text}"
        );
    }

    #[test]
    fn a_file_without_identity_or_broker_is_valid_and_lists_them_as_setup_needed() {
        let c = Config::parse("c.toml", DEFAULT_CONFIG).expect("the file as installed is valid");
        assert_eq!(c.setup_needed(), [SetupNeeded::Identity, SetupNeeded::Broker]);
        assert!(c.devices.is_empty());
        assert!(c.telemetry.listen.is_some(), "telemetry is on as installed");
        assert!(!c.commands.enabled);
        let c = Config::parse("c.toml", MINIMAL).expect("valid");
        assert!(c.setup_needed().is_empty());
        // The command line may complete it, as it may override it.
        let mut c = Config::parse("c.toml", DEFAULT_CONFIG).expect("valid");
        c.apply(&Overrides {
            group_id: Some("g".into()),
            node_id: Some("n".into()),
            broker_host: Some("127.0.0.1".into()),
            ..Overrides::default()
        })
        .expect("overrides");
        assert!(c.setup_needed().is_empty());
        let mut c = Config::parse("c.toml", DEFAULT_CONFIG).expect("valid");
        let e = c
            .apply(&Overrides {
                broker_port: Some(1884),
                ..Overrides::default()
            })
            .expect_err("a port without a host");
        assert!(e.contains("give --broker-host too"), "{e}");
    }

    #[test]
    fn tls_server_defaults_to_port_8883() {
        let c = Config::parse(
            "c.toml",
            &format!("{MINIMAL}[mqtt.servers.tls]\nca = \"/etc/ca.pem\"\n"),
        )
        .expect("valid");
        assert_eq!(c.mqtt.servers[0].port, 8883);
    }

    #[test]
    fn write_guards_are_read_for_writable_tags_and_a_misplaced_one_is_an_error() {
        let tags = r#"
[commands]
write_lock = true
unlock_by_command = false
confirm_timeout = "500ms"
[[devices]]
name = "press"
driver = "sim"
[[devices.tags]]
name = "Setpoint"
address = "counter"
datatype = "Float"
writable = true
min = 0
max = 250.5
max_rate = 6
cooldown = "2s"
[[devices.tags]]
name = "Mode"
address = "counter"
datatype = "Int16"
writable = true
allowed = [1, 2, 5]
[[devices.tags]]
name = "Count"
address = "counter"
datatype = "Int32"
"#;
        let c = Config::parse("c.toml", &format!("{MINIMAL}{tags}")).expect("valid");
        let t = &c.devices[0].tags;
        assert_eq!(
            t[0].write,
            Some(TagGuard {
                min: Some(0.0),
                max: Some(250.5),
                allowed: vec![],
                max_rate: Some(6),
                cooldown: Duration::from_secs(2),
            })
        );
        assert_eq!(
            t[1].write.as_ref().map(|g| g.allowed.clone()),
            Some(vec![Allowed::Int(1), Allowed::Int(2), Allowed::Int(5)])
        );
        assert_eq!(t[2].write, None, "not writable by default");
        let g = c.commands.guard();
        assert!(g.write_lock && !g.unlock_by_command);
        assert_eq!(c.commands.confirm_timeout, Duration::from_millis(500));

        let bad = r#"
[[devices]]
name = "press"
driver = "sim"
[[devices.tags]]
name = "A"
address = "counter"
datatype = "Int32"
max = 10
[[devices.tags]]
name = "B"
address = "counter"
datatype = "Boolean"
writable = true
min = 0
allowed = ["on"]
[[devices.tags]]
name = "C"
address = "counter"
datatype = "Int32"
writable = true
min = 10
max = 1
max_rate = 0
[[devices.tags]]
name = "D"
address = "sine(amplitude=1, offset=0, period=10s)"
datatype = "FloatArray"
writable = true
"#;
        let errs = Config::parse("c.toml", &format!("{MINIMAL}{bad}"))
            .expect_err("invalid")
            .to_string();
        for e in [
            "devices[0].tags[0].max: applies to a writable tag only: set `writable = true`, or remove it",
            "devices[0].tags[1].min: a min needs a numeric datatype, not Boolean",
            "devices[0].tags[1].allowed: \"on\" cannot be a value of a Boolean tag",
            "devices[0].tags[2].min: 10 is above max (1)",
            "devices[0].tags[2].max_rate: 0 is outside 1..=6000 (writes a minute)",
            "devices[0].tags[3].writable: FloatArray tags cannot be written by this version",
        ] {
            assert!(errs.contains(e), "missing {e:?} in:\n{errs}");
        }
    }

    #[test]
    fn bad_sim_address_unknown_scan_class_and_duplicate_names_are_errors() {
        let text = format!(
            "{MINIMAL}\n[[devices]]\nname = \"d\"\ndriver = \"sim\"\n[[devices.tags]]\nname = \"a\"\naddress = \"wobble()\"\ndatatype = \"Float\"\nscan_class = \"turbo\"\n[[devices.tags]]\nname = \"a\"\naddress = \"counter\"\ndatatype = \"Int32\"\n[[devices]]\nname = \"d\"\ndriver = \"modbus\"\n"
        );
        let text = Config::parse("c.toml", &text).expect_err("errors").to_string();
        assert!(
            text.contains("devices[0].tags[0].address: unknown signal 'wobble'"),
            "{text}"
        );
        assert!(
            text.contains("devices[0].tags[0].scan_class: unknown scan class 'turbo'; this device has: default"),
            "{text}"
        );
        assert!(
            text.contains("devices[0].tags[1].name: tag 'a' is defined twice on this device"),
            "{text}"
        );
        assert!(
            text.contains("devices[1].driver: unknown driver 'modbus'; available: s7, logix, sim"),
            "{text}"
        );
    }

    #[test]
    fn bad_plc_addresses_and_options_name_key_and_line_column() {
        let text = format!(
            "{MINIMAL}\n[[devices]]\nname = \"s\"\ndriver = \"s7\"\naddress = \"10.0.0.5\"\n[devices.s7]\nslot = 40\nremote_tsap = \"zz\"\n[[devices.tags]]\nname = \"t\"\naddress = \"DB1.DBW0:REAL\"\ndatatype = \"Float\"\n[[devices]]\nname = \"l\"\ndriver = \"logix\"\n[[devices.tags]]\nname = \"t\"\naddress = \"Temps\"\ndatatype = \"FloatArray\"\n"
        );
        let errors = Config::parse("c.toml", &text).expect_err("errors");
        let text = errors.to_string();
        for want in [
            "devices[0].s7.slot: 40 is outside 0..=31",
            "devices[0].s7.remote_tsap: 'zz' is not a TSAP",
            "devices[0].tags[0].address: 'DB1.DBW0:REAL': REAL is 4 bytes but the address says W",
            "devices[1].address: is required",
            "devices[1].tags[0].address: 'Temps' is not a Logix tag: FloatArray needs an element count",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(
            text.lines()
                .all(|l| l.starts_with("c.toml:") || l.contains("errors in")),
            "{text}"
        );
    }

    #[test]
    fn plc_addresses_get_the_driver_default_port() {
        let text = format!("{MINIMAL}\n[[devices]]\nname = \"s\"\ndriver = \"s7\"\naddress = \"10.0.0.5\"\n");
        let mut d = Config::parse("c.toml", &text).expect("valid").devices.remove(0);
        assert_eq!(d.socket_address().as_deref(), Some("10.0.0.5:102"));
        d.address = Some(PlcAddress::parse("plc.local:1102").expect("valid"));
        assert_eq!(d.socket_address().as_deref(), Some("plc.local:1102"));
        d.driver = DriverKind::Logix;
        d.address = Some(PlcAddress::parse("fe80::1").expect("valid"));
        assert_eq!(d.socket_address().as_deref(), Some("[fe80::1]:44818"));
        d.address = Some(PlcAddress::parse("[fe80::1]:2222").expect("valid"));
        assert_eq!(
            d.address.as_ref().map(ToString::to_string).as_deref(),
            Some("[fe80::1]:2222")
        );
        d.address = Some(PlcAddress::parse("fe80::1").expect("valid"));
        assert_eq!(d.socket_address().as_deref(), Some("[fe80::1]:44818"));
    }

    #[test]
    fn tag_addresses_come_out_parsed_for_their_devices_driver() {
        let text = format!(
            "{MINIMAL}\n[[devices]]\nname = \"s\"\ndriver = \"s7\"\naddress = \"10.0.0.5\"\n[[devices.tags]]\nname = \"T\"\naddress = \"DB1.DBD4\"\ndatatype = \"REAL\"\n\
             [[devices]]\nname = \"l\"\ndriver = \"logix\"\naddress = \"[fe80::1]:44818\"\n[[devices.tags]]\nname = \"B\"\naddress = \"Status.5\"\ndatatype = \"BOOL\"\n\
             [[devices]]\nname = \"m\"\ndriver = \"sim\"\n[[devices.tags]]\nname = \"C\"\naddress = \"counter\"\ndatatype = \"UInt32\"\n"
        );
        let c = Config::parse("c.toml", &text).expect("valid");
        let s7 = crate::plc::s7::address::S7Address::parse("DB1.DBD4", DataType::Float).expect("valid");
        assert_eq!(c.devices[0].tags[0].address, TagAddress::S7(s7));
        assert_eq!(
            c.devices[1].tags[0].address,
            TagAddress::Logix(Box::new(crate::plc::logix::LogixTag::Bit {
                base: "Status".into(),
                bit: 5
            }))
        );
        assert!(matches!(&c.devices[2].tags[0].address, TagAddress::Sim(_)));
        let plc = c.devices[1].address.as_ref().expect("an address");
        assert_eq!((plc.host.as_str(), plc.port), ("fe80::1", Some(44818)));
    }

    #[test]
    fn overrides_replace_broker_ids_and_ports() {
        let mut c = Config::parse("c.toml", MINIMAL).expect("valid");
        c.apply(&Overrides {
            broker_host: Some("127.0.0.1".into()),
            broker_port: Some(18830),
            node_id: Some("gw-99".into()),
            metrics_port: Some(9999),
            ..Overrides::default()
        })
        .expect("valid overrides");
        assert_eq!((c.mqtt.servers.len(), c.mqtt.servers[0].port), (1, 18830));
        assert_eq!(c.node.node_id, "gw-99");
        assert_eq!(c.telemetry.listen.map(|a| a.port()), Some(9999));
        assert!(c
            .apply(&Overrides {
                group_id: Some("a#b".into()),
                ..Overrides::default()
            })
            .is_err());
    }
}
