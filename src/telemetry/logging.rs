//! Log setup: journald when started by systemd, human-readable on a terminal,
//! JSON lines otherwise (or as configured).
//!
//! Invariants: when journald is asked for but unreachable, it falls back to
//! human output and says so, rather than losing logs; a line that outside
//! input can repeat at will (a flood of bad messages) goes through a
//! [`LogBudget`], so a flood costs a few lines a second, not the journal.

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

/// At most `per_second` lines of one kind a second; what is held back is
/// said in one line when the next second opens (a counter on `/metrics`
/// counts every occurrence).
#[derive(Debug)]
pub struct LogBudget {
    per_second: u32,
    what: &'static str,
    counter: &'static str,
    second: u64,
    used: u32,
    held_back: u64,
}

impl LogBudget {
    /// A budget for lines of `what` (e.g. "quarantine warnings"), whose
    /// occurrences the metric `counter` counts.
    pub fn new(per_second: u32, what: &'static str, counter: &'static str) -> LogBudget {
        LogBudget {
            per_second,
            what,
            counter,
            second: 0,
            used: 0,
            held_back: 0,
        }
    }

    /// Says what was held back once its second is over (called on a
    /// tick, so that the line comes even when the flood has stopped).
    pub fn flush(&mut self, now_ms: u64) {
        let second = now_ms / 1000;
        if second != self.second {
            if self.held_back > 0 {
                tracing::warn!(
                    lines = self.held_back,
                    "{} held back in the last second ({} counts them all)",
                    self.what,
                    self.counter
                );
            }
            (self.second, self.used, self.held_back) = (second, 0, 0);
        }
    }

    /// Whether a line may be logged at `now_ms`.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        self.flush(now_ms);
        if self.used < self.per_second {
            self.used += 1;
            true
        } else {
            self.held_back += 1;
            false
        }
    }

    /// Lines held back in the current second.
    pub fn held_back(&self) -> u64 {
        self.held_back
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_gets_its_budget_of_lines_a_second_and_the_rest_is_held_back() {
        let mut b = LogBudget::new(3, "warnings", "spb_x_total");
        let allowed = (0..100).filter(|_| b.allow(5_000)).count();
        assert_eq!(allowed, 3);
        assert_eq!(b.held_back(), 97);
        b.flush(5_999);
        assert_eq!(b.held_back(), 97, "said once the second is over");
        b.flush(6_000);
        assert_eq!(b.held_back(), 0);
        assert!(b.allow(6_000), "a new second, a new budget");
    }
}
