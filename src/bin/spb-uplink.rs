//! `spb-uplink`: the Primary Host binary. Thin: argument parsing and wiring
//! only; the pipeline is `spb::uplink`. Built with `--features uplink`, so
//! the gateway build never compiles database drivers.

use std::path::PathBuf;
use std::process::ExitCode;

use spb::uplink::config::UplinkConfig;

const USAGE: &str = "\
spb-uplink — Sparkplug B Primary Host: persists what the edges publish

usage: spb-uplink [OPTIONS]

options:
  --config FILE    default /etc/spb-uplink/config.toml
  --check-config   validate the file and exit (0 valid, 1 invalid)
  --dry-run        connect to the broker, decode and log what would be written; no database
  --version | --help";

/// What the command line asks for.
enum Command {
    Run {
        config: PathBuf,
        check: bool,
        dry_run: bool,
    },
    Help,
    Version,
}

/// Parses the arguments with lexopt (the gateway's parser, docs/CRATES.md).
fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Command, lexopt::Error> {
    use lexopt::prelude::*;
    let mut config = PathBuf::from("/etc/spb-uplink/config.toml");
    let (mut check, mut dry_run) = (false, false);
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next()? {
        match arg {
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

fn main() -> ExitCode {
    let (config, check, dry_run) = match parse(std::env::args_os().skip(1)) {
        Ok(Command::Run { config, check, dry_run }) => (config, check, dry_run),
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
        let (errors, warnings) = spb::mqtt::tls::check_servers(&cfg.mqtt.servers, spb::clock::now_ms(), false);
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
    match rt.block_on(spb::uplink::run::run(cfg, dry_run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spb-uplink: {e}");
            ExitCode::from(2)
        }
    }
}
