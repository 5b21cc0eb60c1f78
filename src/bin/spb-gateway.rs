//! `spb-gateway`: the edge node binary. Thin: argument parsing and wiring only.
//!
//! Today it offers `decode` (inspect a captured Sparkplug payload); the polling
//! runtime, MQTT transport and systemd integration arrive with issue #3.

use std::io::Read;

use anyhow::{bail, Context, Result};
use spb::sparkplug::{pretty, Payload};

const USAGE: &str = "\
usage: spb-gateway decode [--hex] [FILE]   decode a Sparkplug B payload (stdin when FILE is absent)
       spb-gateway --version";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => {
            println!("spb-gateway {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some("decode") => decode(&args[1..]),
        Some("--help") | Some("-h") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

fn decode(args: &[String]) -> Result<()> {
    let hex = args.iter().any(|a| a == "--hex");
    let file = args.iter().find(|a| !a.starts_with("--"));
    let mut raw = Vec::new();
    match file {
        Some(path) => raw = std::fs::read(path).with_context(|| format!("reading {path}"))?,
        None => {
            std::io::stdin().read_to_end(&mut raw).context("reading stdin")?;
        }
    }
    if hex {
        let text: String = String::from_utf8(raw)
            .context("--hex input is not text")?
            .split_whitespace()
            .collect();
        if text.len() % 2 != 0 {
            bail!("--hex input has an odd number of digits");
        }
        raw = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).with_context(|| format!("bad hex at digit {i}")))
            .collect::<Result<_>>()?;
    }
    let payload = Payload::decode(&raw).context("decoding the payload (DATA without datatypes needs its birth)")?;
    println!("{}", pretty::payload_lines(&payload));
    Ok(())
}
