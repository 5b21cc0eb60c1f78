//! `spb-gateway`: the edge node binary. Thin: arguments, configuration,
//! logging, then the runtime in `spb::gateway`.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use spb::config::{self, Config, Overrides, ServerConfig, TlsConfig};
use spb::gateway::{self, RunOptions};
use watch::WatchOptions;

mod watch;
use spb::sparkplug::{pretty, Payload};

const USAGE: &str = "\
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
  spb-gateway --version | --help

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
  --disable-plc        do not poll PLCs (the node is born without devices)

watch options:
  --broker-host HOST (default 127.0.0.1)  --broker-port PORT (default 1883)
  --ca PATH  --cert PATH  --key PATH     mTLS to the broker
  --config PATH        take broker and TLS from this configuration's first server
  --filter TOPIC       default spBv1.0/#
  --count N            stop after N messages
  --seconds S          stop after S seconds
  --rebirth            ask nodes whose birth came before we subscribed for a new one (publishes NCMD)

discover options:
  --timeout S          give up after S seconds (default 30)
  s7:    --rack N (default 0)  --slot N (default 1)  --max-db N (probe DB1..DBN, default 1000)
  logix: --slot N      ControlLogix CPU slot (omit for CompactLogix)";

struct Args {
    rest: Vec<String>,
}

impl Args {
    fn flag(&mut self, name: &str) -> bool {
        match self.rest.iter().position(|a| a == name) {
            Some(i) => {
                self.rest.remove(i);
                true
            }
            None => false,
        }
    }

    fn value(&mut self, name: &str) -> Result<Option<String>> {
        let Some(i) = self
            .rest
            .iter()
            .position(|a| a == name || a.starts_with(&format!("{name}=")))
        else {
            return Ok(None);
        };
        let a = self.rest.remove(i);
        if let Some(v) = a.strip_prefix(&format!("{name}=")) {
            return Ok(Some(v.to_string()));
        }
        if i >= self.rest.len() {
            bail!("{name} needs a value\n\n{USAGE}");
        }
        Ok(Some(self.rest.remove(i)))
    }

    fn parsed<T: std::str::FromStr>(&mut self, name: &str) -> Result<Option<T>> {
        match self.value(name)? {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| anyhow::anyhow!("{name}: '{v}' is not valid")),
        }
    }

    fn done(self) -> Result<()> {
        if let Some(a) = self.rest.first() {
            bail!("unknown argument '{a}'\n\n{USAGE}");
        }
        Ok(())
    }
}

/// Gives the heap that parsing the config freed back to the OS: the spanned
/// TOML document of a large file (1,000 PLCs × 100 tags) is several times the
/// file, and glibc keeps freed memory otherwise (BENCHMARKS.md, PLC scale).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One malloc arena: the gateway's allocations are not contended, and glibc's
/// per-thread arenas cost about 5.6 MiB of RSS at 100k tags (BENCHMARKS.md).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Writes to stdout. A reader that went away (`spb-gateway decode … | head
/// -1`) ends the program quietly with 0, as other Unix tools do, instead of
/// a panic.
fn emit(text: std::fmt::Arguments) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(text).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r.context("writing to stdout"),
    }
}

/// Whether an error comes from stdout's reader going away.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `text` (hex digits, white space allowed) as bytes; why not, by digit.
fn parse_hex(text: &str) -> Result<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if let Some(i) = digits.iter().position(|b| !b.is_ascii_hexdigit()) {
        bail!("--hex input: not a hex digit at digit {i}");
    }
    if !digits.len().is_multiple_of(2) {
        bail!("--hex input has an odd number of digits");
    }
    let nibble = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
    Ok(digits.chunks(2).map(|p| nibble(p[0]) << 4 | nibble(p[1])).collect())
}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    match real_main() {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spb-gateway: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<std::process::ExitCode> {
    let mut args = Args {
        rest: std::env::args().skip(1).collect(),
    };
    if args.flag("--version") || args.flag("-V") {
        emit(format_args!("spb-gateway {}\n", env!("CARGO_PKG_VERSION")))?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if args.flag("--help") || args.flag("-h") {
        emit(format_args!("{USAGE}\n"))?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    match args.rest.first().map(String::as_str) {
        Some("decode") => {
            args.rest.remove(0);
            return decode(args).map(|()| std::process::ExitCode::SUCCESS);
        }
        Some("watch") => {
            args.rest.remove(0);
            return watch(args).map(|()| std::process::ExitCode::SUCCESS);
        }
        Some("discover") => {
            args.rest.remove(0);
            return discover(args).map(|()| std::process::ExitCode::SUCCESS);
        }
        _ => {}
    }
    let config_path = PathBuf::from(
        args.value("--config")?
            .unwrap_or_else(|| config::DEFAULT_PATH.to_string()),
    );
    let check = args.flag("--check-config");
    let at_boot = args.flag("--at-boot");
    let overrides = Overrides {
        broker_host: args.value("--broker-host")?,
        broker_port: args.parsed("--broker-port")?,
        group_id: args.value("--group-id")?,
        node_id: args.value("--node-id")?,
        metrics_port: args.parsed("--metrics-port")?,
        data_dir: args.value("--data-dir")?.map(PathBuf::from),
        log_level: args.value("--log-level")?,
    };
    let dry_run = args.flag("--dry-run");
    let disable_plc = args.flag("--disable-plc");
    args.done()?;
    let mut cfg = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(std::process::ExitCode::from(1));
        }
    };
    if let Err(e) = cfg.apply(&overrides) {
        eprintln!("{e}");
        return Ok(std::process::ExitCode::from(1));
    }
    release_freed_memory();
    if check {
        let pre = gateway::preflight(&cfg, spb::clock::now_ms(), at_boot);
        for w in &pre.warnings {
            eprintln!("{}: warning: {w}", config_path.display());
        }
        if !pre.errors.is_empty() {
            for e in &pre.errors {
                eprintln!("{}: {e}", config_path.display());
            }
            eprintln!(
                "{} error{} that would stop or fail the gateway",
                pre.errors.len(),
                if pre.errors.len() == 1 { "" } else { "s" }
            );
            return Ok(std::process::ExitCode::from(1));
        }
        let tags: usize = cfg.devices.iter().map(|d| d.tags.len() + d.sim.generate as usize).sum();
        emit(format_args!(
            "{}: valid ({} device{}, {tags} tags, {} MQTT server{})\n",
            config_path.display(),
            cfg.devices.len(),
            if cfg.devices.len() == 1 { "" } else { "s" },
            cfg.mqtt.servers.len(),
            if cfg.mqtt.servers.len() == 1 { "" } else { "s" },
        ))?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    spb::telemetry::logging::init(&cfg.telemetry.log_level, cfg.telemetry.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(gateway::run(
        cfg,
        RunOptions {
            config_path: Some(config_path),
            overrides,
            dry_run,
            disable_plc,
        },
    ))?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn watch(mut args: Args) -> Result<()> {
    let from_config = args.value("--config")?;
    let host = args.value("--broker-host")?;
    let port: Option<u16> = args.parsed("--broker-port")?;
    let (ca, cert, key) = (args.value("--ca")?, args.value("--cert")?, args.value("--key")?);
    let filter = args.value("--filter")?.unwrap_or_else(|| "spBv1.0/#".to_string());
    let count = args.parsed("--count")?.unwrap_or(0);
    let seconds: Option<f64> = args.parsed("--seconds")?;
    let rebirth = args.flag("--rebirth");
    args.done()?;
    let mut server = match from_config {
        Some(p) => {
            let cfg = Config::load(std::path::Path::new(&p)).map_err(|e| anyhow::anyhow!("{e}"))?;
            cfg.mqtt
                .servers
                .into_iter()
                .next()
                .context("the configuration has no [[mqtt.servers]]")?
        }
        None => ServerConfig::plain("127.0.0.1", 1883),
    };
    server.client_id = None;
    if let Some(h) = host {
        server.host = h;
    }
    if ca.is_some() || cert.is_some() {
        server.tls = Some(TlsConfig {
            ca: ca.map(PathBuf::from),
            system_roots: false,
            cert: cert.map(PathBuf::from),
            key: key.map(PathBuf::from),
            server_name: None,
        });
    }
    if let Some(p) = port {
        server.port = p;
    } else if server.tls.is_some() && server.port == 1883 {
        server.port = 8883;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(watch::run(WatchOptions {
        server,
        filter,
        count,
        duration: seconds.map(Duration::from_secs_f64),
        rebirth,
    }))?;
    Ok(())
}

fn discover(mut args: Args) -> Result<()> {
    use spb::config::DriverKind;
    use spb::plc::{discover, s7::S7Options};
    let driver = match args.value("--driver")?.as_deref() {
        Some("s7") => DriverKind::S7,
        Some("logix") => DriverKind::Logix,
        Some(other) => bail!("--driver {other}: discover knows s7 and logix"),
        None => bail!("discover needs --driver s7 or --driver logix"),
    };
    let address = args
        .value("--address")?
        .context("discover needs --address HOST[:PORT]")?;
    let timeout = Duration::from_secs_f64(args.parsed("--timeout")?.unwrap_or(30.0));
    let rack: Option<u8> = args.parsed("--rack")?;
    let slot: Option<u8> = args.parsed("--slot")?;
    let max_db: u16 = args.parsed("--max-db")?.unwrap_or(1000);
    args.done()?;
    let device = config::DeviceConfig {
        address: Some(address.clone()),
        ..config::DeviceConfig::minimal("discover", driver)
    };
    let addr = device.socket_address().context("--address is empty")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let toml = runtime.block_on(async {
        tokio::time::timeout(timeout, async {
            match driver {
                DriverKind::S7 => {
                    let opts = S7Options {
                        addr: addr.clone(),
                        local_tsap: 0x0100,
                        remote_tsap: S7Options::tsap_for(1, rack.unwrap_or(0), slot.unwrap_or(1)),
                        pdu_size: 960,
                        max_items: 20,
                    };
                    let inv = discover::s7(&opts, max_db).await?;
                    Ok::<_, anyhow::Error>(discover::s7_template(&inv, &address))
                }
                _ => {
                    let tags = discover::logix(&addr, slot).await?;
                    Ok(format!(
                        "# Logix at {address}: {} tags.\n[[devices]]\nname = \"plc\"\ndriver = \"logix\"\naddress = \"{address}\"\n\n{}",
                        tags.len(),
                        discover::logix_toml(&tags)
                    ))
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("{addr}: no complete answer within {timeout:?}"))?
    })?;
    emit(format_args!("{toml}"))
}

fn decode(mut args: Args) -> Result<()> {
    let hex = args.flag("--hex");
    let file = if args.rest.is_empty() {
        None
    } else {
        Some(args.rest.remove(0))
    };
    args.done()?;
    let mut raw = Vec::new();
    match &file {
        Some(path) => raw = std::fs::read(path).with_context(|| format!("reading {path}"))?,
        None => {
            std::io::stdin().read_to_end(&mut raw).context("reading stdin")?;
        }
    }
    if hex {
        let text = String::from_utf8(raw).context("--hex input is not text")?;
        raw = parse_hex(&text)?;
    }
    let payload = Payload::decode(&raw).context("decoding the payload (DATA without datatypes needs its birth)")?;
    emit(format_args!("{}\n", pretty::payload_lines(&payload)))
}

#[cfg(test)]
mod tests {
    use super::parse_hex;

    #[test]
    fn hex_input_is_read_digit_by_digit_and_anything_else_is_an_error_not_a_panic() {
        assert_eq!(parse_hex("0a ff\n10").expect("hex"), vec![0x0a, 0xff, 0x10]);
        for bad in ["é1", "0aé", "zz", "1\u{2003}2x"] {
            let e = parse_hex(bad).expect_err(bad).to_string();
            assert!(e.contains("not a hex digit"), "{bad}: {e}");
        }
        assert!(parse_hex("abc").expect_err("odd").to_string().contains("odd number"));
    }
}
