//! `spb-uplink`, the central half: a Sparkplug Primary Host that persists
//! what the edges publish (docs/ARCHITECTURE.md, "Data flow, uplink").
//!
//! broker → [`crate::sparkplug::host::HostSession`] (per-node state, seq
//! reorder, aliases, STALE on death, rebirth requests) → [`rows::Batch`] →
//! a [`sink::Sink`] ([`postgres`] or [`mssql`]). Built only with the `uplink` feature, so the
//! gateway's build never compiles a database driver.
//!
//! Invariants: every received message is logged raw; every fact is written
//! once however often it arrives; a batch is written whole or retried, and
//! rows the database refuses are isolated and quarantined
//! ([`writer`]), never retried forever.

pub mod api;
pub mod client;
pub mod commands;
pub mod config;
pub mod mssql;
pub mod oee;
pub mod pg_partitions;
pub mod pg_tls;
pub mod postgres;
pub mod retention;
pub mod rows;
pub mod run;
pub mod scale;
pub mod scale_pg;
pub mod sink;
pub mod stats;
pub mod writer;
