//! `spb-uplink`: the Primary Host binary. Thin: argument parsing and wiring
//! only; the pipeline is `spb::uplink`. Built with `--features uplink`, so
//! the gateway build never compiles database drivers.

use std::path::PathBuf;
use std::process::ExitCode;

use spb::uplink::config::UplinkConfig;

const USAGE: &str = "\
spb-uplink — Sparkplug B Primary Host: persists what the edges publish

usage: spb-uplink [OPTIONS]
       spb-uplink command --group G --node N [--device D] --metric M --value V [OPTIONS]
       spb-uplink hash-token
       spb-uplink oee --machine M [--shift | --from T --to T] [--config FILE]

options:
  --config FILE    default /etc/spb-uplink/config.toml
  --check-config   validate the file and exit (0 valid, 1 invalid)
  --dry-run        connect to the broker, decode and log what would be written; no database
  --version | --help

command: writes a metric through the running uplink (POST /commands on its
[telemetry] listen address) and waits for the edge's outcome. V is JSON
(12, 182.5, true, \"text\"); anything else is a string. The API token comes
from --token-file FILE or the SPB_UPLINK_TOKEN environment variable.
  --url http://HOST:PORT   instead of the config's listen address
  --timeout-ms N           how long to wait for the outcome (default: the uplink's)
Exit status: 0 confirmed; 1 refused, failed or timed out; 2 usage or no answer.

hash-token: prints a new random API token and the token_sha256 line for the
uplink's [[commands.identities]].

oee: a machine's OEE (availability x performance x quality) for its current
shift (the default) or from T to T (\"2026-11-30 06:00\", in [oee] time_zone),
with the top downtime reasons, from the uplink's PostgreSQL database.";

/// What the command line asks for.
enum Command {
    Run {
        config: PathBuf,
        check: bool,
        dry_run: bool,
    },
    Write(WriteArgs),
    HashToken,
    Oee {
        config: PathBuf,
        machine: String,
        range: Option<(String, String)>,
    },
    Help,
    Version,
}

/// `spb-uplink command …`.
#[derive(Default)]
struct WriteArgs {
    config: Option<PathBuf>,
    url: Option<String>,
    token_file: Option<PathBuf>,
    group: String,
    node: String,
    device: Option<String>,
    metric: String,
    value: String,
    timeout_ms: Option<u64>,
}

/// Parses the arguments with lexopt (the gateway's parser, docs/CRATES.md).
fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Command, lexopt::Error> {
    use lexopt::prelude::*;
    let mut config = PathBuf::from("/etc/spb-uplink/config.toml");
    let (mut check, mut dry_run) = (false, false);
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next()? {
        match arg {
            Value(v) if v == "hash-token" => return Ok(Command::HashToken),
            Value(v) if v == "command" => return parse_write(p).map(Command::Write),
            Value(v) if v == "oee" => return parse_oee(p),
            Short('V') | Long("version") => return Ok(Command::Version),
            Short('h') | Long("help") => return Ok(Command::Help),
            Long("config") => config = p.value()?.into(),
            Long("check-config") => check = true,
            Long("dry-run") => dry_run = true,
            other => return Err(other.unexpected()),
        }
    }
    Ok(Command::Run { config, check, dry_run })
}

fn parse_write(mut p: lexopt::Parser) -> Result<WriteArgs, lexopt::Error> {
    use lexopt::prelude::*;
    let mut a = WriteArgs::default();
    let (mut metric, mut value) = (None, None);
    while let Some(arg) = p.next()? {
        match arg {
            Long("config") => a.config = Some(p.value()?.into()),
            Long("url") => a.url = Some(p.value()?.string()?),
            Long("token-file") => a.token_file = Some(p.value()?.into()),
            Long("group") => a.group = p.value()?.string()?,
            Long("node") => a.node = p.value()?.string()?,
            Long("device") => a.device = Some(p.value()?.string()?),
            Long("metric") => metric = Some(p.value()?.string()?),
            Long("value") => value = Some(p.value()?.string()?),
            Long("timeout-ms") => a.timeout_ms = Some(p.value()?.parse()?),
            other => return Err(other.unexpected()),
        }
    }
    for (name, v) in [("--group", &a.group), ("--node", &a.node)] {
        if v.is_empty() {
            return Err(lexopt::Error::MissingValue {
                option: Some(name.into()),
            });
        }
    }
    a.metric = metric.ok_or(lexopt::Error::MissingValue {
        option: Some("--metric".into()),
    })?;
    a.value = value.ok_or(lexopt::Error::MissingValue {
        option: Some("--value".into()),
    })?;
    Ok(a)
}

fn parse_oee(mut p: lexopt::Parser) -> Result<Command, lexopt::Error> {
    use lexopt::prelude::*;
    let mut config = PathBuf::from("/etc/spb-uplink/config.toml");
    let (mut machine, mut from, mut to) = (None, None, None);
    while let Some(arg) = p.next()? {
        match arg {
            Long("config") => config = p.value()?.into(),
            Long("machine") => machine = Some(p.value()?.string()?),
            Long("shift") => {}
            Long("from") => from = Some(p.value()?.string()?),
            Long("to") => to = Some(p.value()?.string()?),
            other => return Err(other.unexpected()),
        }
    }
    let machine = machine.ok_or(lexopt::Error::MissingValue {
        option: Some("--machine".into()),
    })?;
    let range = match (from, to) {
        (Some(a), Some(b)) => Some((a, b)),
        (None, None) => None,
        _ => {
            return Err(lexopt::Error::MissingValue {
                option: Some("--from and --to".into()),
            })
        }
    };
    Ok(Command::Oee { config, machine, range })
}

/// `spb-uplink oee`: the report from the database.
fn oee(config: PathBuf, machine: String, range: Option<(String, String)>) -> ExitCode {
    let cfg = match UplinkConfig::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let Some(oee) = &cfg.oee else {
        eprintln!("spb-uplink: {} has no [oee]", config.display());
        return ExitCode::from(2);
    };
    if cfg.database.backend != spb::uplink::config::Backend::Postgres {
        eprintln!("spb-uplink: the OEE report reads PostgreSQL in this version");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spb-uplink: {e}");
            return ExitCode::from(2);
        }
    };
    let period = match range {
        Some((a, b)) => spb::uplink::oee::report::Period::Range(a, b),
        None => spb::uplink::oee::report::Period::Shift,
    };
    let r = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&cfg.database.url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("postgres: {e}"))?;
        tokio::spawn(conn);
        spb::uplink::oee::report::report(&client, &oee.time_zone, &machine, &period).await
    });
    match r {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spb-uplink: {e}");
            ExitCode::from(1)
        }
    }
}

/// `spb-uplink command`: POST /commands to the running uplink.
fn write(a: WriteArgs) -> ExitCode {
    let token = match (&a.token_file, std::env::var("SPB_UPLINK_TOKEN")) {
        (Some(f), _) => match std::fs::read_to_string(f) {
            Ok(t) => t.trim().to_string(),
            Err(e) => {
                eprintln!("spb-uplink: {}: {e}", f.display());
                return ExitCode::from(2);
            }
        },
        (None, Ok(t)) => t.trim().to_string(),
        (None, Err(_)) => String::new(),
    };
    let url = match a.url.clone() {
        Some(u) => u,
        None => {
            let path = a
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from("/etc/spb-uplink/config.toml"));
            match UplinkConfig::load(&path) {
                Ok(c) => match c.telemetry.listen {
                    Some(addr) => format!("http://{addr}"),
                    None => {
                        eprintln!(
                            "spb-uplink: {}: [telemetry] listen is disabled: no API to send to (or use --url)",
                            path.display()
                        );
                        return ExitCode::from(2);
                    }
                },
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    // The value as JSON when it is JSON (12, 182.5, true, "text"), else a string.
    let value =
        serde_json::from_str::<serde_json::Value>(&a.value).unwrap_or(serde_json::Value::String(a.value.clone()));
    let mut body = serde_json::json!({"group": a.group, "node": a.node, "metric": a.metric, "value": value});
    if let Some(d) = &a.device {
        body["device"] = d.clone().into();
    }
    if let Some(t) = a.timeout_ms {
        body["timeout_ms"] = t.into();
    }
    let wait = std::time::Duration::from_millis(a.timeout_ms.unwrap_or(60_000) + 10_000);
    match spb::uplink::client::post(&url, "/commands", &token, &body.to_string(), wait) {
        Ok((status, answer)) => {
            print!("{answer}");
            let confirmed = status == 200
                && serde_json::from_str::<serde_json::Value>(&answer).is_ok_and(|v| v["outcome"] == "confirmed");
            if confirmed {
                ExitCode::SUCCESS
            } else {
                eprintln!("spb-uplink: HTTP {status}");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("spb-uplink: {url}: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let (config, check, dry_run) = match parse(std::env::args_os().skip(1)) {
        Ok(Command::Run { config, check, dry_run }) => (config, check, dry_run),
        Ok(Command::Write(a)) => return write(a),
        Ok(Command::Oee { config, machine, range }) => return oee(config, machine, range),
        Ok(Command::HashToken) => {
            let token = spb::uplink::commands::new_token();
            println!("token (give it to the client, keep it secret): {token}");
            println!(
                "token_sha256 = \"{}\"   # in the uplink's [[commands.identities]]",
                spb::uplink::commands::hex(&spb::uplink::commands::token_hash(&token))
            );
            return ExitCode::SUCCESS;
        }
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("spb-uplink {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("spb-uplink: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let cfg = match UplinkConfig::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if check {
        // What would fail at start or at the first connect: the TLS files.
        let (mut errors, mut warnings) = spb::mqtt::tls::check_servers(&cfg.mqtt.servers, spb::clock::now_ms(), false);
        warnings.extend(spb::uplink::run::database_transport_warnings(&cfg.database));
        if let Some(h) = &cfg.commands.https {
            if let Err(e) = spb::mqtt::tls::server_config(&h.cert, &h.key, &h.client_ca) {
                errors.push(format!("commands: {e}"));
            }
        }
        for w in &warnings {
            eprintln!("{}: warning: {w}", config.display());
        }
        if !errors.is_empty() {
            for e in &errors {
                eprintln!("{}: {e}", config.display());
            }
            eprintln!(
                "{} error{} that would stop or fail the uplink",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            return ExitCode::from(1);
        }
        println!(
            "{}: valid ({} MQTT server{}, {} database)",
            config.display(),
            cfg.mqtt.servers.len(),
            if cfg.mqtt.servers.len() == 1 { "" } else { "s" },
            match cfg.database.backend {
                spb::uplink::config::Backend::Postgres => "PostgreSQL",
                spb::uplink::config::Backend::Mssql => "SQL Server",
            }
        );
        return ExitCode::SUCCESS;
    }
    spb::telemetry::logging::init(&cfg.telemetry.log_level, cfg.telemetry.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spb-uplink: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(spb::uplink::run::run(cfg, dry_run, Some(config))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spb-uplink: {e}");
            ExitCode::from(2)
        }
    }
}
