//! Log setup: journald when started by systemd, human-readable on a terminal,
//! JSON lines otherwise (or as configured).
//!
//! Invariant: when journald is asked for but unreachable, it falls back to
//! human output and says so, rather than losing logs.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// journald under systemd, human-readable on a terminal, JSON otherwise.
    Auto,
    Human,
    Json,
    Journald,
}

/// Installs the global subscriber. `level` is a filter like `info` or `warn,spb=debug`.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::builder()
        .parse(level)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let format = match format {
        LogFormat::Auto if super::systemd::under_systemd() => LogFormat::Journald,
        LogFormat::Auto if std::io::stderr().is_terminal() => LogFormat::Human,
        LogFormat::Auto => LogFormat::Json,
        f => f,
    };
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(j) => {
                let _ = registry.with(j).try_init();
            }
            Err(e) => {
                let _ = registry
                    .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                    .try_init();
                tracing::warn!(error = %e, "journald is not reachable; logging to stderr");
            }
        },
        LogFormat::Json => {
            let _ = registry
                .with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr))
                .try_init();
        }
        LogFormat::Human | LogFormat::Auto => {
            let _ = registry
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                .try_init();
        }
    }
}
