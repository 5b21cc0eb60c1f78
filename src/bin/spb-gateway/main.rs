//! `spb-gateway`: the edge node binary. Thin: arguments, configuration,
//! logging, then the runtime in `spb::gateway`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cli::{Command, DecodeArgs, DiscoverArgs, RunArgs, WatchArgs};
use spb::config::{self, Config, DriverKind, ServerConfig, TlsConfig};
use spb::gateway::{self, RunOptions};
use watch::WatchOptions;

mod cli;
mod watch;
use spb::sparkplug::{pretty, Payload};

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
    let run = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(run)) => run,
        Ok(Command::Help(usage)) => {
            emit(format_args!("{usage}\n"))?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Ok(Command::PrintDefaultConfig) => {
            emit(format_args!("{}", config::DEFAULT_CONFIG))?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Ok(Command::Version) => {
            emit(format_args!("spb-gateway {}\n", env!("CARGO_PKG_VERSION")))?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Ok(Command::Watch(w)) => return watch(w).map(|()| std::process::ExitCode::SUCCESS),
        Ok(Command::Decode(d)) => return decode(d).map(|()| std::process::ExitCode::SUCCESS),
        Ok(Command::Discover(d)) => return discover(d).map(|()| std::process::ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("spb-gateway: {e}");
            return Ok(std::process::ExitCode::from(2));
        }
    };
    let RunArgs {
        config,
        check,
        at_boot,
        overrides,
        dry_run,
        disable_plc,
    } = run;
    let config_path = config.unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let cfg = match Config::load_with(&config_path, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(std::process::ExitCode::from(1));
        }
    };
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
        let setup = cfg.setup_needed();
        if !setup.is_empty() {
            let mut text = format!(
                "{}: valid, but not set up: the gateway starts and waits (it publishes nothing) until these are filled in:\n",
                config_path.display()
            );
            for s in &setup {
                text.push_str(&format!("  - {s}\n"));
            }
            emit(format_args!("{text}"))?;
            return Ok(std::process::ExitCode::SUCCESS);
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
    let exit = runtime.block_on(gateway::run(
        cfg,
        RunOptions {
            config_path: Some(config_path),
            overrides,
            dry_run,
            disable_plc,
        },
    ))?;
    Ok(match exit {
        gateway::Exit::Stopped => std::process::ExitCode::SUCCESS,
        // Node Control/Reboot: systemd starts the service again.
        gateway::Exit::RestartRequested => std::process::ExitCode::from(gateway::RESTART_EXIT_STATUS as u8),
    })
}

fn watch(args: WatchArgs) -> Result<()> {
    let WatchArgs {
        config: from_config,
        host,
        port,
        ca,
        cert,
        key,
        filter,
        count,
        duration,
        rebirth,
    } = args;
    let filter = filter.unwrap_or_else(|| "spBv1.0/#".to_string());
    let mut server = match from_config {
        Some(p) => {
            let cfg = Config::load(&p).map_err(|e| anyhow::anyhow!("{e}"))?;
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
            ca,
            system_roots: false,
            cert,
            key,
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
        duration,
        rebirth,
    }))?;
    Ok(())
}

fn discover(args: DiscoverArgs) -> Result<()> {
    use spb::plc::{discover, s7::S7Options};
    let DiscoverArgs {
        driver,
        address,
        timeout,
        rack,
        slot,
        max_db,
    } = args;
    let addr = address.socket_address(driver.default_port());
    let address = address.to_string();
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

fn decode(args: DecodeArgs) -> Result<()> {
    let DecodeArgs { hex, file } = args;
    let mut raw = Vec::new();
    match &file {
        Some(path) => raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
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
