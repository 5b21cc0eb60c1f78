//! The PostgreSQL sink (tokio-postgres): migrations, and one transaction per
//! [`Batch`] with binary COPY for the bulk rows.
//!
//! Invariants:
//! - The schema is versioned in `sp_schema_migrations`; the uplink applies
//!   what is missing at start, under an advisory lock (two uplinks starting
//!   together do not race).
//! - A batch commits entirely or not at all; retrying a failed batch is safe.
//! - A fact is written once: facts go through a staging table and
//!   `INSERT … ON CONFLICT DO NOTHING` on (group, node, device, metric, ts),
//!   and only the facts actually inserted feed the minute/hour/day rollups,
//!   so a replayed sample changes neither the facts nor the rollups.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use super::rows::Batch;
use super::sink::{Sink, Written};

/// Why the PostgreSQL sink failed.
#[derive(Debug, Error)]
pub enum PgError {
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("postgres: the schema is at version {found}, newer than this uplink knows ({known}); upgrade the uplink")]
    SchemaTooNew { found: i32, known: i32 },
}

/// The migrations, in order; never edit a released one, add the next.
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
CREATE TABLE sp_event_raw (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    kind text NOT NULL,
    seq smallint,
    bdseq bigint,
    received_at timestamptz NOT NULL,
    payload bytea NOT NULL
);
CREATE INDEX sp_event_raw_received ON sp_event_raw (received_at);
CREATE TABLE sp_metric_fact (
    group_id text NOT NULL,
    node_id text NOT NULL,
    device_id text NOT NULL,
    metric text NOT NULL,
    ts timestamptz NOT NULL,
    datatype smallint NOT NULL,
    v_int bigint,
    v_float double precision,
    v_bool boolean,
    v_text text,
    v_bytes bytea,
    quality integer NOT NULL,
    is_historical boolean NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, node_id, device_id, metric, ts)
);
CREATE TABLE sp_node_state (
    group_id text NOT NULL,
    node_id text NOT NULL,
    online boolean NOT NULL,
    stale boolean NOT NULL,
    bdseq bigint,
    last_birth timestamptz,
    last_death timestamptz,
    last_cause text,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (group_id, node_id)
);
CREATE TABLE sp_metric_catalog (
    group_id text NOT NULL,
    node_id text NOT NULL,
    device_id text NOT NULL,
    metric text NOT NULL,
    datatype smallint NOT NULL,
    properties text NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    PRIMARY KEY (group_id, node_id, device_id, metric)
);
CREATE TABLE sp_quarantine (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    received_at timestamptz NOT NULL,
    payload bytea NOT NULL,
    reason text NOT NULL
);
CREATE TABLE sp_command_audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    group_id text NOT NULL,
    node_id text NOT NULL,
    device_id text NOT NULL,
    metric text NOT NULL,
    value text,
    accepted boolean NOT NULL,
    reason text NOT NULL,
    requested_by text NOT NULL
);
CREATE TABLE sp_metric_rollup (
    bucket_size text NOT NULL CHECK (bucket_size IN ('minute', 'hour', 'day')),
    bucket timestamptz NOT NULL,
    group_id text NOT NULL,
    node_id text NOT NULL,
    device_id text NOT NULL,
    metric text NOT NULL,
    count bigint NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    sum double precision NOT NULL,
    last double precision NOT NULL,
    last_ts timestamptz NOT NULL,
    PRIMARY KEY (bucket_size, bucket, group_id, node_id, device_id, metric)
);
"#,
)];

/// A connected PostgreSQL sink.
pub struct PgSink {
    client: Client,
    conn: tokio::task::JoinHandle<()>,
}

fn at(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

impl PgSink {
    /// Connects (`url`: `host=… user=… dbname=…` or `postgres://…`).
    pub async fn connect(url: &str) -> Result<PgSink, PgError> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        let conn = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "postgres connection ended");
            }
        });
        client.batch_execute("SET TIME ZONE 'UTC'").await?;
        Ok(PgSink { client, conn })
    }

    /// Whether the connection is still up.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Applies the missing migrations; returns the schema version.
    pub async fn migrate(&mut self) -> Result<i32, PgError> {
        let tx = self.client.transaction().await?;
        // One uplink migrates at a time (key: "spbmigr" in ASCII).
        tx.execute("SELECT pg_advisory_xact_lock(7021224979706482)", &[])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS sp_schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        let found: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM sp_schema_migrations", &[])
            .await?
            .get(0);
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if found > known {
            return Err(PgError::SchemaTooNew { found, known });
        }
        for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
            tx.batch_execute(sql).await?;
            tx.execute("INSERT INTO sp_schema_migrations (version) VALUES ($1)", &[v])
                .await?;
            tracing::info!(version = v, "database schema migrated");
        }
        tx.commit().await?;
        Ok(known)
    }

    /// Writes a batch in one transaction.
    pub async fn write(&mut self, b: &Batch) -> Result<Written, PgError> {
        let mut out = Written::default();
        let tx = self.client.transaction().await?;
        if !b.raw.is_empty() {
            let sink = tx
                .copy_in("COPY sp_event_raw (topic, kind, seq, bdseq, received_at, payload) FROM STDIN BINARY")
                .await?;
            let w = BinaryCopyInWriter::new(
                sink,
                &[
                    Type::TEXT,
                    Type::TEXT,
                    Type::INT2,
                    Type::INT8,
                    Type::TIMESTAMPTZ,
                    Type::BYTEA,
                ],
            );
            futures_util::pin_mut!(w);
            for r in &b.raw {
                let received = at(r.received_ms);
                let row: [&(dyn ToSql + Sync); 6] = [&r.topic, &r.kind, &r.seq, &r.bdseq, &received, &r.payload];
                w.as_mut().write(&row).await?;
            }
            out.raw = w.finish().await?;
        }
        if !b.facts.is_empty() {
            tx.batch_execute(
                "CREATE TEMP TABLE IF NOT EXISTS sp_fact_stage (
                    group_id text, node_id text, device_id text, metric text, ts timestamptz,
                    datatype smallint, v_int bigint, v_float double precision, v_bool boolean,
                    v_text text, v_bytes bytea, quality integer, is_historical boolean
                 ) ON COMMIT DELETE ROWS",
            )
            .await?;
            let sink = tx
                .copy_in(
                    "COPY sp_fact_stage (group_id, node_id, device_id, metric, ts, datatype, v_int, v_float, v_bool, v_text, v_bytes, quality, is_historical) FROM STDIN BINARY",
                )
                .await?;
            let w = BinaryCopyInWriter::new(
                sink,
                &[
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TIMESTAMPTZ,
                    Type::INT2,
                    Type::INT8,
                    Type::FLOAT8,
                    Type::BOOL,
                    Type::TEXT,
                    Type::BYTEA,
                    Type::INT4,
                    Type::BOOL,
                ],
            );
            futures_util::pin_mut!(w);
            for f in &b.facts {
                let ts = at(f.ts_ms);
                let row: [&(dyn ToSql + Sync); 13] = [
                    &f.group,
                    &f.node,
                    &f.device,
                    &f.metric,
                    &ts,
                    &f.datatype,
                    &f.v_int,
                    &f.v_float,
                    &f.v_bool,
                    &f.v_text,
                    &f.v_bytes,
                    &f.quality,
                    &f.is_historical,
                ];
                w.as_mut().write(&row).await?;
            }
            w.finish().await?;
            let inserted: i64 = tx
                .query_one(
                    "WITH ins AS (
                        INSERT INTO sp_metric_fact (group_id, node_id, device_id, metric, ts, datatype, v_int, v_float, v_bool, v_text, v_bytes, quality, is_historical)
                        SELECT group_id, node_id, device_id, metric, ts, datatype, v_int, v_float, v_bool, v_text, v_bytes, quality, is_historical
                        FROM sp_fact_stage
                        ON CONFLICT DO NOTHING
                        RETURNING group_id, node_id, device_id, metric, ts, coalesce(v_float, v_int::double precision) AS v
                     ), m AS (
                        -- The batch's minute buckets first; hours and days are
                        -- built from these few rows, not from every fact again.
                        SELECT date_trunc('minute', ts) AS bucket, group_id, node_id, device_id, metric,
                               count(*) AS count, min(v) AS min, max(v) AS max, sum(v) AS sum,
                               (array_agg(v ORDER BY ts DESC))[1] AS last, max(ts) AS last_ts
                        FROM ins WHERE v IS NOT NULL
                        GROUP BY 1, 2, 3, 4, 5
                     ), d AS (
                        SELECT 'minute' AS size, bucket, group_id, node_id, device_id, metric, count, min, max, sum, last, last_ts FROM m
                        UNION ALL
                        SELECT s.size, date_trunc(s.size, bucket), group_id, node_id, device_id, metric,
                               sum(count)::bigint, min(min), max(max), sum(sum),
                               (array_agg(last ORDER BY last_ts DESC))[1], max(last_ts)
                        FROM m CROSS JOIN (VALUES ('hour'), ('day')) AS s(size)
                        GROUP BY 1, 2, 3, 4, 5, 6
                     ), roll AS (
                        INSERT INTO sp_metric_rollup AS r (bucket_size, bucket, group_id, node_id, device_id, metric, count, min, max, sum, last, last_ts)
                        SELECT * FROM d
                        ON CONFLICT (bucket_size, bucket, group_id, node_id, device_id, metric) DO UPDATE SET
                            count = r.count + EXCLUDED.count,
                            min = least(r.min, EXCLUDED.min),
                            max = greatest(r.max, EXCLUDED.max),
                            sum = r.sum + EXCLUDED.sum,
                            last = CASE WHEN EXCLUDED.last_ts >= r.last_ts THEN EXCLUDED.last ELSE r.last END,
                            last_ts = greatest(r.last_ts, EXCLUDED.last_ts)
                     )
                     SELECT count(*) FROM ins",
                    &[],
                )
                .await?
                .get(0);
            out.facts = inserted as u64;
        }
        if !b.catalog.is_empty() {
            let stmt = tx
                .prepare(
                    "INSERT INTO sp_metric_catalog AS c (group_id, node_id, device_id, metric, datatype, properties, first_seen, last_seen)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
                     ON CONFLICT (group_id, node_id, device_id, metric) DO UPDATE SET
                        datatype = EXCLUDED.datatype, properties = EXCLUDED.properties,
                        last_seen = greatest(c.last_seen, EXCLUDED.last_seen)",
                )
                .await?;
            for c in &b.catalog {
                let seen = at(c.seen_ms);
                tx.execute(
                    &stmt,
                    &[
                        &c.group,
                        &c.node,
                        &c.device,
                        &c.metric,
                        &c.datatype,
                        &c.properties,
                        &seen,
                    ],
                )
                .await?;
            }
        }
        for s in &b.states {
            let when = at(s.at_ms);
            tx.execute(
                "INSERT INTO sp_node_state AS n (group_id, node_id, online, stale, bdseq, last_birth, last_death, last_cause, updated_at)
                 VALUES ($1, $2, $3, NOT $3, $4, CASE WHEN $3 THEN $5::timestamptz END, CASE WHEN NOT $3 THEN $5::timestamptz END, $6, now())
                 ON CONFLICT (group_id, node_id) DO UPDATE SET
                    online = $3, stale = NOT $3,
                    bdseq = coalesce($4, n.bdseq),
                    last_birth = CASE WHEN $3 THEN $5::timestamptz ELSE n.last_birth END,
                    last_death = CASE WHEN NOT $3 THEN $5::timestamptz ELSE n.last_death END,
                    last_cause = $6, updated_at = now()",
                &[&s.group, &s.node, &s.online, &s.bdseq, &when, &s.cause],
            )
            .await?;
        }
        for q in &b.quarantine {
            let when = at(q.received_ms);
            tx.execute(
                "INSERT INTO sp_quarantine (topic, received_at, payload, reason) VALUES ($1, $2, $3, $4)",
                &[&q.topic, &when, &q.payload, &q.reason],
            )
            .await?;
        }
        for c in &b.commands {
            let when = at(c.at_ms);
            tx.execute(
                "INSERT INTO sp_command_audit (at, group_id, node_id, device_id, metric, value, accepted, reason, requested_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &when,
                    &c.group,
                    &c.node,
                    &c.device,
                    &c.metric,
                    &c.value,
                    &c.accepted,
                    &c.reason,
                    &c.requested_by,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(out)
    }
}

impl Sink for PgSink {
    type Error = PgError;

    async fn connect(url: &str) -> Result<Self, PgError> {
        PgSink::connect(url).await
    }

    async fn migrate(&mut self) -> Result<i32, PgError> {
        PgSink::migrate(self).await
    }

    async fn write(&mut self, b: &Batch) -> Result<Written, PgError> {
        PgSink::write(self, b).await
    }

    fn is_closed(&self) -> bool {
        PgSink::is_closed(self)
    }
}

impl Drop for PgSink {
    fn drop(&mut self) {
        self.conn.abort();
    }
}
