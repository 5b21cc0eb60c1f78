//! The command line of `spb-gateway`: the subcommands, their options and
//! their help, parsed with lexopt into typed commands.
//!
//! Invariants: every subcommand answers `--help` (and `-h`) with its own
//! usage, exit 0; an unknown or malformed argument is an error that names
//! it, followed by the usage of the subcommand it was given to; values are
//! parsed here, once (a port is a `u16`, a PLC address a [`PlcAddress`]),
//! so nothing downstream sees text it would have to check again.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use lexopt::prelude::*;
use spb::config::{DriverKind, Overrides, PlcAddress};
use thiserror::Error;

pub const USAGE: &str = "\
spb-gateway — Sparkplug B edge gateway

usage:
  spb-gateway [OPTIONS]                 run the gateway
  spb-gateway --check-config [--at-boot] [--config PATH]
                                        validate the configuration and exit (0 = valid); --at-boot
                                        (the unit's ExecStartPre) only warns about a client
                                        certificate's dates, so that the gateway still stores
  spb-gateway watch [WATCH OPTIONS]     decoded live view of the Sparkplug traffic on a broker
  spb-gateway decode [--hex] [FILE]     decode one Sparkplug B payload (stdin without FILE)
  spb-gateway discover --driver s7|logix --address HOST[:PORT] [DISCOVER OPTIONS]
                                        list what a PLC has, as TOML to paste into the config
  spb-gateway --print-default-config    print the configuration file as installed (valid: the
                                        gateway waits until [node] and a broker are filled in)
  spb-gateway --version | --help        (each subcommand has its own --help)

options:
  --config PATH        configuration file (default /etc/spb-gateway/config.toml)
  --log-level LEVEL    error, warn, info, debug, trace, or a filter like info,spb=debug
  --dry-run            poll and log what would be published; connect to no broker
  --broker-host HOST   use this broker instead of [[mqtt.servers]] (keeps the first server's TLS)
  --broker-port PORT
  --group-id ID        override [node] group_id
  --node-id ID         override [node] node_id
  --metrics-port PORT  serve /health /ready /metrics on this port
  --data-dir DIR       state directory (bdSeq, store); overrides [store] path
  --disable-plc        do not poll PLCs (the node is born without devices)";

pub const WATCH_USAGE: &str = "\
spb-gateway watch — a decoded live view of the Sparkplug traffic on a broker

usage: spb-gateway watch [OPTIONS]

options:
  --broker-host HOST   default 127.0.0.1
  --broker-port PORT   default 1883 (8883 with TLS)
  --ca PATH  --cert PATH  --key PATH
                       mTLS to the broker
  --config PATH        take broker and TLS from this configuration's first server
  --filter TOPIC       default spBv1.0/#
  --count N            stop after N messages
  --seconds S          stop after S seconds
  --rebirth            ask nodes whose birth came before we subscribed for a new one (publishes NCMD)

watch is passive (it publishes nothing) unless --rebirth.";

pub const DECODE_USAGE: &str = "\
spb-gateway decode — decode one Sparkplug B payload

usage: spb-gateway decode [--hex] [FILE]

  FILE                 the payload's bytes (stdin without FILE)
  --hex                the input is hex digits (white space allowed), as a broker tool prints them

DATA sent with aliases and without datatypes needs its birth to be read fully.";

pub const DISCOVER_USAGE: &str = "\
spb-gateway discover — list what a PLC has, as TOML to paste into the config

usage: spb-gateway discover --driver s7|logix --address HOST[:PORT] [OPTIONS]

options:
  --timeout S          give up after S seconds (default 30)
  s7:    --rack N (default 0)  --slot N (default 1)  --max-db N (probe DB1..DBN, default 1000)
  logix: --slot N      ControlLogix CPU slot (omit for CompactLogix)

discover only reads.";

/// A command line that cannot be used: what is wrong, and the usage of
/// the subcommand it was given to.
#[derive(Debug, Error)]
#[error("{message}\n\n{usage}")]
pub struct CliError {
    pub message: String,
    pub usage: &'static str,
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Run(RunArgs),
    Watch(WatchArgs),
    Decode(DecodeArgs),
    Discover(DiscoverArgs),
    /// Print this usage and exit 0.
    Help(&'static str),
    /// Print the configuration file as installed.
    PrintDefaultConfig,
    Version,
}

#[derive(Debug, PartialEq, Default)]
pub struct RunArgs {
    pub config: Option<PathBuf>,
    pub check: bool,
    pub at_boot: bool,
    pub overrides: Overrides,
    pub dry_run: bool,
    pub disable_plc: bool,
}

#[derive(Debug, PartialEq, Default)]
pub struct WatchArgs {
    pub config: Option<PathBuf>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub filter: Option<String>,
    pub count: u64,
    pub duration: Option<Duration>,
    pub rebirth: bool,
}

#[derive(Debug, PartialEq, Default)]
pub struct DecodeArgs {
    pub hex: bool,
    pub file: Option<PathBuf>,
}

#[derive(Debug, PartialEq)]
pub struct DiscoverArgs {
    pub driver: DriverKind,
    pub address: PlcAddress,
    pub timeout: Duration,
    pub rack: Option<u8>,
    pub slot: Option<u8>,
    pub max_db: u16,
}

/// Parses the arguments after the program's name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, CliError> {
    let mut p = lexopt::Parser::from_args(args);
    let fail = |usage: &'static str| {
        move |e: lexopt::Error| CliError {
            message: e.to_string(),
            usage,
        }
    };
    let mut run = RunArgs::default();
    let mut first = true;
    while let Some(arg) = p.next().map_err(fail(USAGE))? {
        let at_start = std::mem::replace(&mut first, false);
        match arg {
            Value(v) if at_start && v == "watch" => return watch(&mut p).map_err(fail(WATCH_USAGE)),
            Value(v) if at_start && v == "decode" => return decode(&mut p).map_err(fail(DECODE_USAGE)),
            Value(v) if at_start && v == "discover" => return discover(&mut p).map_err(fail(DISCOVER_USAGE)),
            Short('h') | Long("help") => return Ok(Command::Help(USAGE)),
            Short('V') | Long("version") => return Ok(Command::Version),
            Long("print-default-config") => return Ok(Command::PrintDefaultConfig),
            Long("config") => run.config = Some(p.value().map_err(fail(USAGE))?.into()),
            Long("check-config") => run.check = true,
            Long("at-boot") => run.at_boot = true,
            Long("dry-run") => run.dry_run = true,
            Long("disable-plc") => run.disable_plc = true,
            Long("log-level") => run.overrides.log_level = Some(string(&mut p).map_err(fail(USAGE))?),
            Long("broker-host") => run.overrides.broker_host = Some(string(&mut p).map_err(fail(USAGE))?),
            Long("broker-port") => run.overrides.broker_port = Some(port(&mut p).map_err(fail(USAGE))?),
            Long("group-id") => run.overrides.group_id = Some(string(&mut p).map_err(fail(USAGE))?),
            Long("node-id") => run.overrides.node_id = Some(string(&mut p).map_err(fail(USAGE))?),
            Long("metrics-port") => run.overrides.metrics_port = Some(port(&mut p).map_err(fail(USAGE))?),
            Long("data-dir") => run.overrides.data_dir = Some(p.value().map_err(fail(USAGE))?.into()),
            other => return Err(fail(USAGE)(other.unexpected())),
        }
    }
    Ok(Command::Run(run))
}

fn string(p: &mut lexopt::Parser) -> Result<String, lexopt::Error> {
    p.value()?.string()
}

fn port(p: &mut lexopt::Parser) -> Result<u16, lexopt::Error> {
    let n: u16 = p.value()?.parse()?;
    if n == 0 {
        return Err("port 0: a port is a number from 1 to 65535".into());
    }
    Ok(n)
}

fn watch(p: &mut lexopt::Parser) -> Result<Command, lexopt::Error> {
    let mut w = WatchArgs::default();
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(WATCH_USAGE)),
            Long("config") => w.config = Some(p.value()?.into()),
            Long("broker-host") => w.host = Some(string(p)?),
            Long("broker-port") => w.port = Some(port(p)?),
            Long("ca") => w.ca = Some(p.value()?.into()),
            Long("cert") => w.cert = Some(p.value()?.into()),
            Long("key") => w.key = Some(p.value()?.into()),
            Long("filter") => w.filter = Some(string(p)?),
            Long("count") => w.count = p.value()?.parse()?,
            Long("seconds") => {
                let s: f64 = p.value()?.parse()?;
                if !(s.is_finite() && s > 0.0) {
                    return Err(format!("--seconds {s}: a positive number of seconds").into());
                }
                w.duration = Some(Duration::from_secs_f64(s));
            }
            Long("rebirth") => w.rebirth = true,
            other => return Err(other.unexpected()),
        }
    }
    Ok(Command::Watch(w))
}

fn decode(p: &mut lexopt::Parser) -> Result<Command, lexopt::Error> {
    let mut d = DecodeArgs::default();
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(DECODE_USAGE)),
            Long("hex") => d.hex = true,
            Value(v) if d.file.is_none() => d.file = Some(v.into()),
            other => return Err(other.unexpected()),
        }
    }
    Ok(Command::Decode(d))
}

fn discover(p: &mut lexopt::Parser) -> Result<Command, lexopt::Error> {
    let (mut driver, mut address) = (None, None);
    let (mut timeout, mut rack, mut slot, mut max_db) = (Duration::from_secs(30), None, None, 1000);
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(DISCOVER_USAGE)),
            Long("driver") => {
                driver = Some(match string(p)?.as_str() {
                    "s7" => DriverKind::S7,
                    "logix" => DriverKind::Logix,
                    other => return Err(format!("--driver {other}: discover knows s7 and logix").into()),
                })
            }
            Long("address") => {
                let a = string(p)?;
                address = Some(PlcAddress::parse(&a).map_err(|e| format!("--address {e}"))?);
            }
            Long("timeout") => {
                let s: f64 = p.value()?.parse()?;
                if !(s.is_finite() && s > 0.0) {
                    return Err(format!("--timeout {s}: a positive number of seconds").into());
                }
                timeout = Duration::from_secs_f64(s);
            }
            Long("rack") => rack = Some(p.value()?.parse()?),
            Long("slot") => slot = Some(p.value()?.parse()?),
            Long("max-db") => max_db = p.value()?.parse()?,
            other => return Err(other.unexpected()),
        }
    }
    Ok(Command::Discover(DiscoverArgs {
        driver: driver.ok_or("discover needs --driver s7 or --driver logix")?,
        address: address.ok_or("discover needs --address HOST[:PORT]")?,
        timeout,
        rack,
        slot,
        max_db,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Command, CliError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn every_subcommand_answers_help_with_its_own_usage() {
        assert_eq!(parse_str(&["--help"]).expect("help"), Command::Help(USAGE));
        assert_eq!(parse_str(&["-h"]).expect("help"), Command::Help(USAGE));
        assert_eq!(
            parse_str(&["watch", "--help"]).expect("help"),
            Command::Help(WATCH_USAGE)
        );
        assert_eq!(parse_str(&["decode", "-h"]).expect("help"), Command::Help(DECODE_USAGE));
        assert_eq!(
            parse_str(&["discover", "--help"]).expect("help"),
            Command::Help(DISCOVER_USAGE)
        );
        assert_eq!(parse_str(&["--version"]).expect("version"), Command::Version);
    }

    #[test]
    fn options_take_values_in_both_spellings_and_are_typed() {
        let Command::Run(r) =
            parse_str(&["--config=/tmp/c.toml", "--broker-port", "8883", "--check-config"]).expect("valid")
        else {
            panic!("run")
        };
        assert_eq!(r.config, Some(PathBuf::from("/tmp/c.toml")));
        assert_eq!(r.overrides.broker_port, Some(8883));
        assert!(r.check && !r.dry_run);
        let Command::Discover(d) =
            parse_str(&["discover", "--driver", "s7", "--address", "10.0.0.30:1102"]).expect("valid")
        else {
            panic!("discover")
        };
        assert_eq!(d.address.socket_address(102), "10.0.0.30:1102");
        assert_eq!((d.timeout, d.max_db), (Duration::from_secs(30), 1000));
    }

    #[test]
    fn a_bad_argument_is_named_with_the_usage_of_its_subcommand() {
        let cases: &[(&[&str], &str, &str)] = &[
            (&["--frobnicate"], "--frobnicate", USAGE),
            (&["--broker-port", "abc"], "abc", USAGE),
            (&["--broker-port", "70000"], "70000", USAGE),
            (&["--metrics-port", "0"], "port 0", USAGE),
            (&["--config"], "--config", USAGE),
            (&["watch", "--count", "-3"], "-3", WATCH_USAGE),
            (&["watch", "--seconds", "0"], "positive", WATCH_USAGE),
            (&["decode", "a.bin", "b.bin"], "b.bin", DECODE_USAGE),
            (
                &["discover", "--driver", "modbus", "--address", "x"],
                "modbus",
                DISCOVER_USAGE,
            ),
            (&["discover", "--driver", "s7"], "needs --address", DISCOVER_USAGE),
            (
                &["discover", "--driver", "s7", "--address", "192.168.10.300"],
                "not an IPv4 address",
                DISCOVER_USAGE,
            ),
            (&["watch", "decode"], "decode", WATCH_USAGE),
        ];
        for (args, says, usage) in cases {
            let e = parse_str(args).expect_err(&format!("{args:?}"));
            assert!(e.message.contains(says), "{args:?}: {}", e.message);
            assert_eq!(e.usage, *usage, "{args:?}");
        }
    }
}
