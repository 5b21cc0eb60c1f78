//! `spb-uplink`: the Primary Host binary. Thin: argument parsing and wiring
//! only; the pipeline is `spb::uplink`. Built with `--features uplink`, so
//! the gateway build never compiles database drivers.

use std::path::PathBuf;
use std::process::ExitCode;

use spb::uplink::config::UplinkConfig;

const USAGE: &str = "usage: spb-uplink [--config FILE] [--check-config] [--dry-run] [--version]
  --config FILE    default /etc/spb-uplink/config.toml
  --check-config   validate the file and exit (0 valid, 1 invalid)
  --dry-run        connect to the broker, decode and log what would be written; no database";

fn main() -> ExitCode {
    let mut config = PathBuf::from("/etc/spb-uplink/config.toml");
    let (mut check, mut dry_run) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--version" | "-V" => {
                println!("spb-uplink {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--config" => match args.next() {
                Some(p) => config = PathBuf::from(p),
                None => {
                    eprintln!("spb-uplink: --config needs a file\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--check-config" => check = true,
            "--dry-run" => dry_run = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("spb-uplink: unknown argument '{other}'\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let cfg = match UplinkConfig::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if check {
        println!("{}: valid", config.display());
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
