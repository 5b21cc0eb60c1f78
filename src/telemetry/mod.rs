//! Operations: metrics, the `/health` `/ready` `/metrics` endpoint, systemd
//! notification and watchdog, and logging (journald under systemd, human on a
//! terminal, JSON otherwise).
//!
//! Invariant: nothing here blocks the data path; counters are atomics and the
//! HTTP endpoint only reads them.

pub mod http;
pub mod logging;
pub mod metrics;
pub mod systemd;
