//! PostgreSQL's time partitions: reads what exists, creates a period's
//! partition and drops an expired one, as [`super::retention`] decides.
//!
//! Invariants:
//! - Writers never wait for this: a partition is created (by the owner's
//!   `sp_ensure_partition`, which the ingest role may call) as a plain
//!   table with a CHECK of its bounds and then attached (`ATTACH PARTITION` takes
//!   a lock that does not conflict with inserts, and the CHECK spares it a
//!   scan), and one is dropped only after `DETACH PARTITION … CONCURRENTLY`
//!   (no default partitions, which would forbid it). Neither
//!   `CREATE TABLE … PARTITION OF` nor a plain `DROP` of an attached
//!   partition, both of which lock the parent against every insert, is used.
//! - Creating is idempotent and serialized per parent (an advisory lock);
//!   a period that existing partitions partly cover is created around them.
//! - A detach interrupted half-way is finished (`FINALIZE`) by the next run.

use tokio_postgres::Client;

use super::retention::{gaps, Class, Partition, Span};

/// The partitioned table of a class and the column it is partitioned by.
pub fn parent(class: Class) -> (String, &'static str) {
    match class {
        Class::Raw => ("sp_event_raw".into(), "received_at"),
        Class::Facts => ("sp_series_fact".into(), "ts"),
        Class::Rollup(r) => (format!("sp_series_rollup_{r}"), "bucket"),
    }
}

/// Every class with partitions.
pub fn classes() -> Vec<Class> {
    let mut v = vec![Class::Raw, Class::Facts];
    v.extend(super::retention::RESOLUTIONS.iter().map(|r| Class::Rollup(r)));
    v
}

/// A time in ms since the Unix epoch, for a `timestamptz` parameter.
pub fn at(ms: i64) -> std::time::SystemTime {
    if ms < 0 {
        std::time::UNIX_EPOCH - std::time::Duration::from_millis(ms.unsigned_abs())
    } else {
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)
    }
}

/// The partitions of `class` as the catalog has them.
pub async fn list<C: tokio_postgres::GenericClient>(
    c: &C,
    class: Class,
) -> Result<Vec<Partition>, tokio_postgres::Error> {
    let (table, _) = parent(class);
    let rows = c
        .query(
            "WITH p AS (
                 SELECT c.relname::text AS name, i.inhdetachpending AS pending,
                        pg_get_expr(c.relpartbound, c.oid) AS bound
                 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = $1::text::regclass
             )
             SELECT name, pending,
                    (extract(epoch FROM (regexp_match(bound, 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz) * 1000)::bigint,
                    (extract(epoch FROM (regexp_match(bound, 'TO \\(''([^'']+)''\\)'))[1]::timestamptz) * 1000)::bigint
             FROM p",
            &[&table],
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(Partition {
                name: r.get(0),
                detach_pending: r.get(1),
                lo: r.get::<_, Option<i64>>(2)?,
                hi: r.get::<_, Option<i64>>(3)?,
            })
        })
        .collect())
}

/// Makes sure partitions of `class` cover `[lo, hi)`; returns the names
/// it created. Safe to call from several connections at once.
pub async fn ensure(
    c: &mut Client,
    class: Class,
    span: Span,
    lo: i64,
    hi: i64,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let (table, _) = parent(class);
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&table])
        .await?;
    let have = list(&tx, class).await?;
    let mut made = Vec::new();
    for (a, b) in gaps(lo, hi, &have) {
        let name = format!("{table}_{}", span.suffix(a));
        // The owner's function (the ingest role has no DDL of its own).
        let created: bool = tx
            .query_one(
                "SELECT sp_ensure_partition($1, $2, $3, $4)",
                &[&table, &name, &at(a), &at(b)],
            )
            .await?
            .get(0);
        if created {
            made.push(name);
        }
    }
    tx.commit().await?;
    Ok(made)
}

/// Detaches `name` from its class's table without blocking writers, then
/// drops it (or finishes a detach an earlier run began).
pub async fn drop(c: &Client, class: Class, name: &str, detach_pending: bool) -> Result<(), tokio_postgres::Error> {
    let (table, _) = parent(class);
    let how = if detach_pending { "FINALIZE" } else { "CONCURRENTLY" };
    // Each its own statement: a concurrent detach cannot run in a transaction block.
    c.batch_execute(&format!("ALTER TABLE {table} DETACH PARTITION {name} {how}"))
        .await?;
    c.batch_execute(&format!("DROP TABLE {name}")).await?;
    Ok(())
}

/// Whether `e` is PostgreSQL finding no partition for a row (the partition
/// set changed under the writer: ensure and retry, not the row's fault).
pub fn is_no_partition(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| d.message().starts_with("no partition of relation"))
}
