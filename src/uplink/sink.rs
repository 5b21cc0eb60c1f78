//! The one interface every database backend implements, so the uplink's
//! writer tasks do not know which database they write to.
//!
//! Invariants every [`Sink`] keeps (tested per backend):
//! - `migrate` brings the schema to the newest version it knows, is safe to
//!   run by two uplinks at once, and refuses a schema newer than it knows.
//! - `write` commits a whole [`Batch`] or nothing, and writing the same batch
//!   again changes neither facts nor rollups (a retry after an unknown
//!   outcome, or a replay by the gateway, is harmless).
//! - After `fold`, the rollups count every committed fact exactly once.
//! - A write that fails for its data says so ([`Sink::is_data_error`]) and
//!   leaves the sink usable or closed, never half-committed; its error
//!   carries the database's own message.
//! - Dialect differences (DDL, bulk path, merge statement, key shape) stay
//!   inside the backend's module.

use std::future::Future;

use super::retention::Retention;
use super::rows::Batch;

/// What a write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Facts inserted (duplicates of stored facts are not counted).
    pub facts: u64,
    pub raw: u64,
    /// Rows not written because they were older than their retention.
    pub expired: u64,
    /// Facts quarantined for a timestamp beyond the retention's horizon.
    pub ahead: u64,
    /// Facts quarantined because their period had no partition and the
    /// connection had used its budget of new partitions (PostgreSQL).
    pub over_budget: u64,
}

/// What one retention run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Retained {
    /// Partitions created ahead (PostgreSQL).
    pub created: Vec<String>,
    /// Partitions dropped (PostgreSQL).
    pub dropped: Vec<String>,
    /// Rows deleted in bounded batches (SQL Server).
    pub deleted_rows: u64,
    /// Another uplink held the run: nothing was done here.
    pub skipped: bool,
}

/// A connected database the uplink writes batches to.
pub trait Sink: Sized + Send {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Connects with the configured `database.url`.
    fn connect(url: &str) -> impl Future<Output = Result<Self, Self::Error>> + Send;

    /// The schema version found, when it is the newest this uplink knows;
    /// an error naming both otherwise. No DDL: for a login that may not
    /// migrate (the owner's connection does).
    fn check_schema(&mut self) -> impl Future<Output = Result<i32, Self::Error>> + Send;

    /// Applies the missing migrations; returns the schema version.
    fn migrate(&mut self) -> impl Future<Output = Result<i32, Self::Error>> + Send;

    /// Writes a batch in one transaction.
    fn write(&mut self, b: &Batch) -> impl Future<Output = Result<Written, Self::Error>> + Send;

    /// Brings the rollups up to date with every committed write, for
    /// backends that maintain them apart from the write path; returns how
    /// many facts were folded in (0 when there was nothing to do).
    fn fold(&mut self) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// The retention to keep, and a clock to read instead of the wall
    /// clock (`None`: the wall clock). A sink nobody configured keeps
    /// everything.
    fn set_retention(&mut self, r: &Retention, clock: Option<i64>);

    /// Creates what the retention needs ahead and removes what it expired
    /// at `now_ms`, without making writers wait; safe to run from several
    /// uplinks (one does the work).
    fn retain(&mut self, now_ms: i64) -> impl Future<Output = Result<Retained, Self::Error>> + Send;

    /// Whether the connection is known to be gone (a reconnect is due).
    fn is_closed(&self) -> bool;

    /// Whether `e` is about the rows, not the connection or the server:
    /// writing the same rows again would fail the same way (a value out of
    /// range, a NUL in text, a constraint), so the writer isolates the rows
    /// at fault instead of retrying them.
    fn is_data_error(e: &Self::Error) -> bool;

    /// Writes from now on only rows whose lease `instance` holds
    /// (docs/ARCHITECTURE.md, decision 16); `None`: every row. A backend
    /// without leases refuses to be fenced (the configuration keeps
    /// scale-out to the backends that have them).
    fn set_fence(&mut self, instance: Option<String>) {
        assert!(instance.is_none(), "this backend keeps no leases");
    }

    /// The leases a write found held by another instance (or expired):
    /// their rows are not this instance's to write.
    fn fenced(e: &Self::Error) -> Option<&[String]> {
        let _ = e;
        None
    }
}
