//! `spb-uplink`: the Primary Host binary. Thin: argument parsing and wiring only.
//! The MQTT pipeline and database sinks arrive with issue #6; built only with
//! `--features uplink` so the gateway build never compiles database drivers.

use anyhow::{bail, Result};

fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("--version") | Some("-V") => {
            println!("spb-uplink {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => bail!("usage: spb-uplink --version (the host pipeline is tracked in issue #6)"),
    }
}
