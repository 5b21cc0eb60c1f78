//! The PostgreSQL sink (tokio-postgres): migrations, and one transaction per
//! [`Batch`] with binary COPY for the bulk rows.
//!
//! Invariants:
//! - The schema is versioned in `sp_schema_migrations`; the uplink applies
//!   what is missing at start, under an advisory lock (two uplinks starting
//!   together do not race).
//! - A batch commits entirely or not at all; retrying a failed batch is safe.
//! - A fact is written once, keyed by (series id, ts); a series id stands for
//!   (group, node, device, metric) in `sp_series` and is committed before any
//!   fact uses it. A live batch is COPYed straight in; one that holds a
//!   stored key (a redelivery) or a replay goes through a staging table and
//!   `INSERT … ON CONFLICT DO NOTHING`.
//! - Only facts actually inserted reach `sp_rollup_pending` (same
//!   transaction), and [`PgSink::fold`] moves that log into the rollups and
//!   empties it in one transaction, so a replayed sample changes neither the
//!   facts nor the rollups, and folded rollups count every fact once.
//! - Facts are insert-only: a death's STALE marks are rows of `sp_stale`,
//!   which the views merge in; the ingest role may not change a fact.
//! - Raw messages and facts live in time partitions ([`super::pg_partitions`]);
//!   a batch's periods have theirs before its transaction, and what the
//!   retention keeps out never reaches one ([`super::retention`]).
//! - The connection speaks TLS as libpq's `sslmode` says ([`super::pg_tls`]).

use std::sync::Arc;
use std::time::SystemTime;

use thiserror::Error;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use super::pg_partitions::{self as parts, at};
use super::retention::{Class, Partition, Retention, DELETE_BATCH, RESOLUTIONS};
use super::rows::{Batch, FactRow};
use super::sink::{Retained, Sink, Written};

/// Why the PostgreSQL sink failed.
#[derive(Debug, Error)]
pub enum PgError {
    #[error("postgres: {}", db_message(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("postgres: the schema is at version {found}, newer than this uplink knows ({known}); upgrade the uplink")]
    SchemaTooNew { found: i32, known: i32 },
    #[error("postgres: the schema is at version {found}, older than this uplink needs ({known}); it is migrated at start through database.owner_url")]
    SchemaBehind { found: i32, known: i32 },
    #[error("postgres: {0}")]
    Tls(#[from] super::pg_tls::PgTlsError),
    #[error("postgres: series {0} was neither inserted nor found in sp_series")]
    SeriesUnresolved(String),
    #[error("postgres: this instance no longer holds the lease of {}", .0.join(", "))]
    Fenced(Vec<String>),
}

/// The migrations, in order; never edit a released one, add the next.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
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
    ),
    (
        // v2: facts and rollups keyed by an integer series id instead of four
        // text columns (half the insert cost, BENCHMARKS.md); the v1 names
        // stay as views with the same columns, so queries keep working.
        2,
        r#"
CREATE TABLE sp_series (
    series_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_id text NOT NULL,
    node_id text NOT NULL,
    device_id text NOT NULL,
    metric text NOT NULL,
    UNIQUE (group_id, node_id, device_id, metric)
);
INSERT INTO sp_series (group_id, node_id, device_id, metric)
    SELECT group_id, node_id, device_id, metric FROM sp_metric_fact
    UNION SELECT group_id, node_id, device_id, metric FROM sp_metric_rollup
    UNION SELECT group_id, node_id, device_id, metric FROM sp_metric_catalog
    ORDER BY 1, 2, 3, 4;
CREATE TABLE sp_series_fact (
    series_id bigint NOT NULL,
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
    PRIMARY KEY (series_id, ts)
);
INSERT INTO sp_series_fact
    SELECT s.series_id, f.ts, f.datatype, f.v_int, f.v_float, f.v_bool, f.v_text, f.v_bytes,
           f.quality, f.is_historical, f.written_at
    FROM sp_metric_fact f JOIN sp_series s USING (group_id, node_id, device_id, metric);
DROP TABLE sp_metric_fact;
CREATE VIEW sp_metric_fact AS
    SELECT s.group_id, s.node_id, s.device_id, s.metric, f.ts, f.datatype, f.v_int, f.v_float,
           f.v_bool, f.v_text, f.v_bytes, f.quality, f.is_historical, f.written_at, f.series_id
    FROM sp_series_fact f JOIN sp_series s USING (series_id);
CREATE TABLE sp_series_rollup (
    bucket_size text NOT NULL CHECK (bucket_size IN ('minute', 'hour', 'day')),
    series_id bigint NOT NULL,
    bucket timestamptz NOT NULL,
    count bigint NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    sum double precision NOT NULL,
    last double precision NOT NULL,
    last_ts timestamptz NOT NULL,
    PRIMARY KEY (bucket_size, series_id, bucket)
);
INSERT INTO sp_series_rollup
    SELECT r.bucket_size, s.series_id, r.bucket, r.count, r.min, r.max, r.sum, r.last, r.last_ts
    FROM sp_metric_rollup r JOIN sp_series s USING (group_id, node_id, device_id, metric);
DROP TABLE sp_metric_rollup;
CREATE VIEW sp_metric_rollup AS
    SELECT r.bucket_size, r.bucket, s.group_id, s.node_id, s.device_id, s.metric, r.count, r.min,
           r.max, r.sum, r.last, r.last_ts, r.series_id
    FROM sp_series_rollup r JOIN sp_series s USING (series_id);
"#,
    ),
    (
        // v3: rollups leave the write path. Each new numeric fact also goes
        // to this unindexed log, in the same transaction; `fold` aggregates
        // the log into sp_series_rollup and empties it, in one transaction,
        // so rollups are exact once folded (at most `rollup_interval` behind).
        3,
        r#"
CREATE TABLE sp_rollup_pending (
    series_id bigint NOT NULL,
    ts timestamptz NOT NULL,
    v double precision NOT NULL
);
"#,
    ),
    (
        // v4: the command audit follows a command of the API from request
        // to outcome: `at` is when it was requested; a row with a
        // request_id is replaced by the next row of that id.
        4,
        r#"
ALTER TABLE sp_command_audit
    ADD COLUMN request_id text,
    ADD COLUMN outcome text NOT NULL DEFAULT 'sent'
        CHECK (outcome IN ('refused', 'sent', 'confirmed', 'failed', 'timeout')),
    ADD COLUMN sent_at timestamptz,
    ADD COLUMN confirmed_value text,
    ADD COLUMN confirmed_at timestamptz;
CREATE UNIQUE INDEX sp_command_audit_request ON sp_command_audit (request_id) WHERE request_id IS NOT NULL;
"#,
    ),
    (
        // v5: OEE (ISO 22400-2). A fact of a metric an OEE machine maps
        // marks its time in oee_pending, in the fact's transaction; the OEE
        // folder computes the intervals it touches from the facts, writes
        // them and their events, and empties the log, in one transaction.
        5,
        r#"
CREATE TABLE oee_pending (
    machine text NOT NULL,
    ts timestamptz NOT NULL
);
CREATE TABLE oee_interval (
    machine text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('hour', 'shift')),
    start_at timestamptz NOT NULL,
    end_at timestamptz NOT NULL,
    shift text NOT NULL,
    planned_ms bigint NOT NULL,
    planned_downtime_ms bigint NOT NULL,
    run_ms bigint NOT NULL,
    breakdown_ms bigint NOT NULL,
    setup_ms bigint NOT NULL,
    minor_stop_ms bigint NOT NULL,
    starved_ms bigint NOT NULL,
    blocked_ms bigint NOT NULL,
    unassigned_ms bigint NOT NULL,
    produced bigint NOT NULL,
    good bigint NOT NULL,
    rejected bigint NOT NULL,
    ideal_ms double precision NOT NULL,
    availability double precision,
    performance double precision,
    quality double precision,
    oee double precision,
    completeness double precision NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (machine, kind, start_at)
);
CREATE TABLE oee_cycle (
    machine text NOT NULL,
    start_at timestamptz NOT NULL,
    end_at timestamptz NOT NULL,
    duration_ms double precision NOT NULL,
    count bigint NOT NULL,
    product text,
    PRIMARY KEY (machine, end_at)
);
CREATE TABLE oee_downtime (
    machine text NOT NULL,
    start_at timestamptz NOT NULL,
    end_at timestamptz NOT NULL,
    reason_code text,
    reason text,
    category text NOT NULL,
    planned boolean NOT NULL,
    PRIMARY KEY (machine, start_at)
);
CREATE TABLE oee_quality (
    machine text NOT NULL,
    at timestamptz NOT NULL,
    good bigint NOT NULL,
    rejected bigint NOT NULL,
    PRIMARY KEY (machine, at)
);
"#,
    ),
    (
        // v6: an interval computed while it was still running (its end in
        // the future) holds its figures up to computed_to; the folder
        // computes it again until computed_to reaches end_at. A quality
        // event carries the reason code of its rejects.
        6,
        r#"
ALTER TABLE oee_interval ADD COLUMN computed_to timestamptz, ADD COLUMN known_ms bigint;
ALTER TABLE oee_quality ADD COLUMN reason_code text, ADD COLUMN reason text;
CREATE INDEX oee_interval_open ON oee_interval (machine) WHERE computed_to < end_at;
"#,
    ),
    (
        // v7: device state beside the node's, every birth and death in a
        // history, and a STALE mark per metric a death makes STALE (a row
        // of sp_stale, so facts stay insert-only; the views of v8 merge the
        // marks in).
        7,
        r#"
CREATE TABLE sp_device_state (
    group_id text NOT NULL,
    node_id text NOT NULL,
    device_id text NOT NULL,
    online boolean NOT NULL,
    bdseq bigint,
    last_birth timestamptz,
    last_death timestamptz,
    last_cause text,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (group_id, node_id, device_id)
);
CREATE TABLE sp_state_history (
    id bigserial PRIMARY KEY,
    group_id text NOT NULL,
    node_id text NOT NULL,
    device_id text NOT NULL,
    online boolean NOT NULL,
    bdseq bigint,
    at timestamptz NOT NULL,
    cause text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sp_state_history_at ON sp_state_history (group_id, node_id, device_id, at);
CREATE TABLE sp_stale (
    group_id text NOT NULL,
    node_id text NOT NULL,
    device_id text NOT NULL,
    metric text NOT NULL,
    ts timestamptz NOT NULL,
    datatype smallint NOT NULL,
    PRIMARY KEY (group_id, node_id, device_id, metric, ts)
);
CREATE INDEX sp_stale_ts ON sp_stale (ts);
"#,
    ),
    (
        // v8: time partitions, so retention drops whole partitions instead
        // of deleting rows. Raw messages by arrival and facts by timestamp
        // (a partition per day or week, created ahead by the uplink), the
        // rollups by resolution and then by month. What is already stored
        // moves into day and month partitions made for it here.
        8,
        r#"
DROP VIEW sp_metric_fact;
DROP VIEW sp_metric_rollup;

ALTER TABLE sp_series_fact RENAME TO sp_series_fact_v7;
ALTER INDEX sp_series_fact_pkey RENAME TO sp_series_fact_v7_pkey;
CREATE TABLE sp_series_fact (
    series_id bigint NOT NULL,
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
    PRIMARY KEY (series_id, ts)
) PARTITION BY RANGE (ts);

ALTER TABLE sp_event_raw RENAME TO sp_event_raw_v7;
ALTER INDEX sp_event_raw_pkey RENAME TO sp_event_raw_v7_pkey;
ALTER INDEX sp_event_raw_received RENAME TO sp_event_raw_v7_received;
ALTER SEQUENCE sp_event_raw_id_seq OWNED BY NONE;
CREATE TABLE sp_event_raw (
    id bigint NOT NULL DEFAULT nextval('sp_event_raw_id_seq'),
    topic text NOT NULL,
    kind text NOT NULL,
    seq smallint,
    bdseq bigint,
    received_at timestamptz NOT NULL,
    payload bytea NOT NULL,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
ALTER SEQUENCE sp_event_raw_id_seq OWNED BY sp_event_raw.id;
CREATE INDEX sp_event_raw_received ON sp_event_raw (received_at);

ALTER TABLE sp_series_rollup RENAME TO sp_series_rollup_v7;
ALTER INDEX sp_series_rollup_pkey RENAME TO sp_series_rollup_v7_pkey;
CREATE TABLE sp_series_rollup (
    bucket_size text NOT NULL CHECK (bucket_size IN ('minute', 'hour', 'day')),
    series_id bigint NOT NULL,
    bucket timestamptz NOT NULL,
    count bigint NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    sum double precision NOT NULL,
    last double precision NOT NULL,
    last_ts timestamptz NOT NULL,
    PRIMARY KEY (bucket_size, series_id, bucket)
) PARTITION BY LIST (bucket_size);
CREATE TABLE sp_series_rollup_minute PARTITION OF sp_series_rollup FOR VALUES IN ('minute') PARTITION BY RANGE (bucket);
CREATE TABLE sp_series_rollup_hour PARTITION OF sp_series_rollup FOR VALUES IN ('hour') PARTITION BY RANGE (bucket);
CREATE TABLE sp_series_rollup_day PARTITION OF sp_series_rollup FOR VALUES IN ('day') PARTITION BY RANGE (bucket);

DO $$
DECLARE p record;
BEGIN
    FOR p IN SELECT DISTINCT date_trunc('day', ts) AS lo FROM sp_series_fact_v7 LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF sp_series_fact FOR VALUES FROM (%L) TO (%L)',
            'sp_series_fact_' || to_char(p.lo, 'YYYYMMDD'), p.lo, p.lo + interval '1 day');
    END LOOP;
    FOR p IN SELECT DISTINCT date_trunc('day', received_at) AS lo FROM sp_event_raw_v7 LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF sp_event_raw FOR VALUES FROM (%L) TO (%L)',
            'sp_event_raw_' || to_char(p.lo, 'YYYYMMDD'), p.lo, p.lo + interval '1 day');
    END LOOP;
    FOR p IN SELECT DISTINCT bucket_size AS size, date_trunc('month', bucket) AS lo FROM sp_series_rollup_v7 LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
            'sp_series_rollup_' || p.size || '_' || to_char(p.lo, 'YYYYMM'), 'sp_series_rollup_' || p.size,
            p.lo, p.lo + interval '1 month');
    END LOOP;
END $$;

INSERT INTO sp_series_fact SELECT * FROM sp_series_fact_v7;
INSERT INTO sp_event_raw SELECT * FROM sp_event_raw_v7;
INSERT INTO sp_series_rollup SELECT * FROM sp_series_rollup_v7;
DROP TABLE sp_series_fact_v7;
DROP TABLE sp_event_raw_v7;
DROP TABLE sp_series_rollup_v7;

-- The facts, and each STALE mark as a row of quality 500 without a value
-- (a sample of the same millisecond hides the mark).
CREATE VIEW sp_metric_fact AS
    SELECT s.group_id, s.node_id, s.device_id, s.metric, f.ts, f.datatype, f.v_int, f.v_float,
           f.v_bool, f.v_text, f.v_bytes, f.quality, f.is_historical, f.written_at, f.series_id
    FROM sp_series_fact f JOIN sp_series s USING (series_id)
    UNION ALL
    SELECT m.group_id, m.node_id, m.device_id, m.metric, m.ts, m.datatype, NULL, NULL, NULL, NULL,
           NULL, 500, false, m.ts, s.series_id
    FROM sp_stale m JOIN sp_series s USING (group_id, node_id, device_id, metric)
    WHERE NOT EXISTS (SELECT 1 FROM sp_series_fact f WHERE f.series_id = s.series_id AND f.ts = m.ts);
CREATE VIEW sp_metric_rollup AS
    SELECT r.bucket_size, r.bucket, s.group_id, s.node_id, s.device_id, s.metric, r.count, r.min,
           r.max, r.sum, r.last, r.last_ts, r.series_id
    FROM sp_series_rollup r JOIN sp_series s USING (series_id);
-- Each metric's last value, or its STALE mark when that is newer (a
-- sample of the same millisecond wins).
CREATE VIEW sp_metric_last AS
    SELECT s.group_id, s.node_id, s.device_id, s.metric, l.ts, l.datatype, l.v_int, l.v_float,
           l.v_bool, l.v_text, l.v_bytes, l.quality, l.stale AS is_stale, s.series_id
    FROM sp_series s
    CROSS JOIN LATERAL (
        SELECT * FROM (
            (SELECT f.ts, f.datatype, f.v_int, f.v_float, f.v_bool, f.v_text, f.v_bytes, f.quality,
                    f.quality = 500 AS stale, 0 AS rank
             FROM sp_series_fact f WHERE f.series_id = s.series_id ORDER BY f.ts DESC LIMIT 1)
            UNION ALL
            (SELECT m.ts, m.datatype, NULL, NULL, NULL, NULL, NULL, 500, true, 1
             FROM sp_stale m
             WHERE (m.group_id, m.node_id, m.device_id, m.metric) = (s.group_id, s.node_id, s.device_id, s.metric)
             ORDER BY m.ts DESC LIMIT 1)
        ) x ORDER BY ts DESC, rank LIMIT 1
    ) l;
"#,
    ),
    (
        // v9: least privilege. The uplink migrates (and drops expired
        // partitions) as the owner, and ingests as a login the DBA makes a
        // member of sparkplug_ingest: insert into raw, facts, STALE marks
        // and state, upsert the derived tables (state, catalog, rollups,
        // OEE), never UPDATE or DELETE a fact or a raw message, no DDL; the
        // partitions arriving rows need come from a SECURITY DEFINER
        // function that can only add a partition to the uplink's tables.
        // sparkplug_command may read and write the command audit. Every
        // later migration grants on the tables it adds.
        9,
        r#"
-- Roles belong to the cluster: another database's uplink may be creating
-- them at this moment, so "already there" is not an error.
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['sparkplug_ingest', 'sparkplug_command'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO sparkplug_ingest, sparkplug_command', current_schema());
END $$;

GRANT SELECT ON sp_schema_migrations TO sparkplug_ingest, sparkplug_command;
GRANT SELECT, INSERT ON sp_event_raw, sp_series_fact, sp_series, sp_stale, sp_state_history, sp_quarantine
    TO sparkplug_ingest;
GRANT USAGE ON SEQUENCE sp_event_raw_id_seq, sp_state_history_id_seq, sp_quarantine_id_seq,
    sp_command_audit_id_seq TO sparkplug_ingest;
GRANT SELECT, INSERT, UPDATE ON sp_node_state, sp_device_state, sp_metric_catalog, sp_series_rollup
    TO sparkplug_ingest;
GRANT SELECT, INSERT, DELETE ON sp_rollup_pending, oee_pending TO sparkplug_ingest;
GRANT SELECT, INSERT, UPDATE, DELETE ON oee_interval, oee_cycle, oee_downtime, oee_quality TO sparkplug_ingest;
GRANT SELECT, INSERT ON sp_command_audit TO sparkplug_ingest;
GRANT SELECT ON sp_metric_fact, sp_metric_rollup, sp_metric_last TO sparkplug_ingest, sparkplug_command;

GRANT SELECT, INSERT, UPDATE ON sp_command_audit TO sparkplug_command;
GRANT USAGE ON SEQUENCE sp_command_audit_id_seq TO sparkplug_command;
GRANT SELECT ON sp_node_state, sp_device_state, sp_metric_catalog TO sparkplug_command;

CREATE FUNCTION sp_ensure_partition(parent text, name text, lo timestamptz, hi timestamptz) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER AS $f$
DECLARE col text;
BEGIN
    col := CASE parent
        WHEN 'sp_event_raw' THEN 'received_at'
        WHEN 'sp_series_fact' THEN 'ts'
        WHEN 'sp_series_rollup_minute' THEN 'bucket'
        WHEN 'sp_series_rollup_hour' THEN 'bucket'
        WHEN 'sp_series_rollup_day' THEN 'bucket'
    END;
    IF col IS NULL THEN
        RAISE EXCEPTION 'sp_ensure_partition: % is not a partitioned table of the uplink', parent;
    END IF;
    IF name !~ ('^' || parent || '_[0-9]{6,8}$') THEN
        RAISE EXCEPTION 'sp_ensure_partition: % is not a partition name of %', name, parent;
    END IF;
    IF NOT (lo < hi AND hi - lo <= interval '31 days') THEN
        RAISE EXCEPTION 'sp_ensure_partition: [%, %) is not a period', lo, hi;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext(parent));
    IF EXISTS (SELECT 1 FROM pg_class WHERE relname = name AND relnamespace = current_schema()::regnamespace) THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name, parent);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (%I >= %L AND %I < %L)',
        name, name || '_bounds', col, lo, col, hi);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', parent, name, lo, hi);
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', name, name || '_bounds');
    RETURN true;
END $f$;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION sp_ensure_partition(text, text, timestamptz, timestamptz) SET search_path = %I, pg_temp',
        current_schema());
END $$;
REVOKE ALL ON FUNCTION sp_ensure_partition(text, text, timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_ensure_partition(text, text, timestamptz, timestamptz) TO sparkplug_ingest;
"#,
    ),
    (
        // Scale-out: one lease per group and one for the STATE identity,
        // on the database's clock; the instances alive (decision 16).
        10,
        r#"
CREATE TABLE sp_uplink_lease (
    name text PRIMARY KEY,
    holder text,
    expires_at timestamptz NOT NULL DEFAULT '-infinity',
    safe_through_ms bigint NOT NULL DEFAULT 0,
    epoch bigint NOT NULL DEFAULT 0,
    taken_at timestamptz
);
CREATE TABLE sp_uplink_member (
    instance text PRIMARY KEY,
    expires_at timestamptz NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    behind boolean NOT NULL DEFAULT false
);
GRANT SELECT, INSERT, UPDATE ON sp_uplink_lease TO sparkplug_ingest;
GRANT SELECT, INSERT, UPDATE, DELETE ON sp_uplink_member TO sparkplug_ingest;
"#,
    ),
];

/// A writer's share of the leases of its batch ($1 names), until commit;
/// a taker holds the same keys exclusively (scale-out). Two int4 keys: a
/// space apart from the uplink's other advisory locks.
pub const LEASE_LOCK_SHARED: &str =
    "SELECT pg_advisory_xact_lock_shared(1936744813, hashtext(l)) FROM unnest($1::text[]) l";
/// The taker's lock of one lease ($1), until its transaction commits.
pub const LEASE_LOCK: &str = "SELECT pg_advisory_xact_lock(1936744813, hashtext($1))";

/// A node's birth or death: its state, the history row, and on a death the
/// devices still online go offline with it (each with a history row).
/// $1 group, $2 node, $3 online, $4 bdseq, $5 at, $6 cause.
const NODE_STATE: &str = "WITH n AS (
    INSERT INTO sp_node_state AS n (group_id, node_id, online, stale, bdseq, last_birth, last_death, last_cause, updated_at)
    VALUES ($1, $2, $3, NOT $3, $4, CASE WHEN $3 THEN $5::timestamptz END, CASE WHEN NOT $3 THEN $5::timestamptz END, $6, now())
    ON CONFLICT (group_id, node_id) DO UPDATE SET
        online = $3, stale = NOT $3,
        bdseq = coalesce($4, n.bdseq),
        last_birth = CASE WHEN $3 THEN $5::timestamptz ELSE n.last_birth END,
        last_death = CASE WHEN NOT $3 THEN $5::timestamptz ELSE n.last_death END,
        last_cause = $6, updated_at = now()
    RETURNING bdseq
), d AS (
    UPDATE sp_device_state SET online = false, last_death = $5, last_cause = 'node ' || $6, updated_at = now()
    WHERE NOT $3 AND group_id = $1 AND node_id = $2 AND online
    RETURNING device_id, bdseq
), h AS (
    INSERT INTO sp_state_history (group_id, node_id, device_id, online, bdseq, at, cause)
    SELECT $1, $2, device_id, false, bdseq, $5, 'node ' || $6 FROM d
)
INSERT INTO sp_state_history (group_id, node_id, device_id, online, bdseq, at, cause)
SELECT $1, $2, '', $3, bdseq, $5, $6 FROM n";

/// A device's birth or death, under its node's current bdSeq, and the
/// history row. $1 group, $2 node, $3 device, $4 online, $5 at, $6 cause.
const DEVICE_STATE: &str = "WITH s AS (
    INSERT INTO sp_device_state AS d (group_id, node_id, device_id, online, bdseq, last_birth, last_death, last_cause, updated_at)
    SELECT $1, $2, $3, $4, (SELECT bdseq FROM sp_node_state WHERE group_id = $1 AND node_id = $2),
           CASE WHEN $4 THEN $5::timestamptz END, CASE WHEN NOT $4 THEN $5::timestamptz END, $6, now()
    ON CONFLICT (group_id, node_id, device_id) DO UPDATE SET
        online = $4, bdseq = EXCLUDED.bdseq,
        last_birth = CASE WHEN $4 THEN $5::timestamptz ELSE d.last_birth END,
        last_death = CASE WHEN NOT $4 THEN $5::timestamptz ELSE d.last_death END,
        last_cause = $6, updated_at = now()
    RETURNING bdseq
)
INSERT INTO sp_state_history (group_id, node_id, device_id, online, bdseq, at, cause)
SELECT $1, $2, $3, $4, bdseq, $5, $6 FROM s";

/// A command audit row; one with a request_id replaces the earlier row of
/// that id (sent, then its outcome).
const UPSERT_COMMAND: &str = "INSERT INTO sp_command_audit
    (at, group_id, node_id, device_id, metric, value, accepted, reason, requested_by,
     request_id, outcome, sent_at, confirmed_value, confirmed_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
    ON CONFLICT (request_id) WHERE request_id IS NOT NULL DO UPDATE SET
        accepted = EXCLUDED.accepted, reason = EXCLUDED.reason, outcome = EXCLUDED.outcome,
        sent_at = coalesce(EXCLUDED.sent_at, sp_command_audit.sent_at),
        confirmed_value = EXCLUDED.confirmed_value, confirmed_at = EXCLUDED.confirmed_at";

/// A command audit row seen on the broker (no request id: never replaced).
const INSERT_COMMAND: &str = "INSERT INTO sp_command_audit
    (at, group_id, node_id, device_id, metric, value, accepted, reason, requested_by,
     request_id, outcome, sent_at, confirmed_value, confirmed_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// Staged facts → `sp_series_fact` (new keys only), and the numeric ones
/// among those inserted to `sp_rollup_pending`; returns how many were new.
const INSERT_FACTS: &str = "WITH ins AS (
    INSERT INTO sp_series_fact (series_id, ts, datatype, v_int, v_float, v_bool, v_text, v_bytes, quality, is_historical)
    SELECT series_id, ts, datatype, v_int, v_float, v_bool, v_text, v_bytes, quality, is_historical
    FROM sp_fact_stage
    ON CONFLICT DO NOTHING
    RETURNING series_id, ts, coalesce(v_float, v_int::double precision) AS v
), pending AS (
    INSERT INTO sp_rollup_pending (series_id, ts, v) SELECT series_id, ts, v FROM ins WHERE v IS NOT NULL
)
SELECT count(*) FROM ins";

/// `sp_rollup_pending` → minute/hour/day rows of `sp_series_rollup`, and
/// empty; returns how many facts were folded in.
/// $1: the months whose rollup partitions exist (pending facts of other
/// months wait for the next fold); $2, $3, $4: the minute, hour and day
/// cutoffs of the retention (NULL: forever), older buckets not written.
const FOLD_ROLLUPS: &str = "WITH p AS (
    DELETE FROM sp_rollup_pending WHERE date_trunc('month', ts) = ANY($1::timestamptz[])
    RETURNING series_id, ts, v
), m AS (
    -- Minute buckets first; hours and days are built from these rows.
    SELECT series_id, date_trunc('minute', ts) AS bucket, count(*) AS count, min(v) AS min,
           max(v) AS max, sum(v) AS sum, (array_agg(v ORDER BY ts DESC))[1] AS last, max(ts) AS last_ts
    FROM p GROUP BY 1, 2
), d AS (
    SELECT 'minute' AS size, series_id, bucket, count, min, max, sum, last, last_ts FROM m
    UNION ALL
    SELECT s.size, series_id, date_trunc(s.size, bucket), sum(count)::bigint, min(min), max(max), sum(sum),
           (array_agg(last ORDER BY last_ts DESC))[1], max(last_ts)
    FROM m CROSS JOIN (VALUES ('hour'), ('day')) AS s(size)
    GROUP BY 1, 2, 3
), roll AS (
    INSERT INTO sp_series_rollup AS r (bucket_size, series_id, bucket, count, min, max, sum, last, last_ts)
    SELECT * FROM d
    WHERE bucket >= coalesce(CASE size WHEN 'minute' THEN $2::timestamptz WHEN 'hour' THEN $3::timestamptz
                                       ELSE $4::timestamptz END, '-infinity')
    ORDER BY 1, 2, 3
    ON CONFLICT (bucket_size, series_id, bucket) DO UPDATE SET
        count = r.count + EXCLUDED.count,
        min = least(r.min, EXCLUDED.min),
        max = greatest(r.max, EXCLUDED.max),
        sum = r.sum + EXCLUDED.sum,
        last = CASE WHEN EXCLUDED.last_ts >= r.last_ts THEN EXCLUDED.last ELSE r.last END,
        last_ts = greatest(r.last_ts, EXCLUDED.last_ts)
)
SELECT count(*) FROM p";

/// Resolves (group, node, device, metric) → `sp_series.series_id`, creating
/// the missing ones; returns every asked key that exists afterwards.
const RESOLVE_SERIES: &str = "WITH k AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS k(group_id, node_id, device_id, metric)
), ins AS (
    INSERT INTO sp_series (group_id, node_id, device_id, metric)
    SELECT * FROM k ON CONFLICT DO NOTHING
    RETURNING series_id, group_id, node_id, device_id, metric
)
SELECT * FROM ins
UNION ALL
SELECT s.series_id, s.group_id, s.node_id, s.device_id, s.metric
FROM sp_series s JOIN k USING (group_id, node_id, device_id, metric)";

/// Series ids kept per connection; past this many the cache starts over.
const SERIES_CACHE_MAX: usize = 2_000_000;

type SeriesKey = (Arc<str>, Arc<str>, Arc<str>, Arc<str>);

/// (group, node, device, metric) → series id, looked up by borrowed names
/// (no allocation per fact): buckets by a hash of the four names.
#[derive(Default)]
struct SeriesCache {
    buckets: std::collections::HashMap<u64, Vec<(SeriesKey, i64)>>,
    len: usize,
}

impl SeriesCache {
    fn hash(g: &str, n: &str, d: &str, m: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (g, n, d, m).hash(&mut h);
        h.finish()
    }

    fn lookup(&self, g: &str, n: &str, d: &str, m: &str) -> Option<i64> {
        self.buckets
            .get(&Self::hash(g, n, d, m))?
            .iter()
            .find(|(k, _)| &*k.0 == g && &*k.1 == n && &*k.2 == d && &*k.3 == m)
            .map(|(_, id)| *id)
    }

    fn get(&self, f: &FactRow) -> Option<i64> {
        self.lookup(&f.group, &f.node, &f.device, &f.metric)
    }

    fn get_key(&self, k: &SeriesKey) -> Option<i64> {
        self.lookup(&k.0, &k.1, &k.2, &k.3)
    }

    fn insert(&mut self, k: SeriesKey, id: i64) {
        if self.get_key(&k).is_none() {
            self.buckets
                .entry(Self::hash(&k.0, &k.1, &k.2, &k.3))
                .or_default()
                .push((k, id));
            self.len += 1;
        }
    }
}

/// A connected PostgreSQL sink.
pub struct PgSink {
    client: Client,
    conn: tokio::task::JoinHandle<()>,
    series: SeriesCache,
    oee_cycles: super::oee::pg::CycleBase,
    retention: Retention,
    /// A clock the tests set; `None`: the wall clock.
    clock: Option<i64>,
    /// The partitions of each class as last read (a miss reads again).
    parts: std::collections::HashMap<Class, Vec<Partition>>,
    /// When this connection created partitions for arriving rows (ms), the
    /// last minute's: at most [`PARTITIONS_PER_MINUTE`].
    made: std::collections::VecDeque<i64>,
    /// This instance's name when rows are written under leases.
    fence: Option<String>,
}

/// New partitions a connection may create for arriving rows in a minute:
/// a replay after a month's outage needs about 30; a sender spreading its
/// timestamps over years would otherwise add a table per day it names.
pub const PARTITIONS_PER_MINUTE: usize = 64;

/// The server's own words for an error (severity, SQLSTATE, message,
/// detail, where), or the driver's with its causes.
fn db_message(e: &tokio_postgres::Error) -> String {
    if let Some(d) = e.as_db_error() {
        let mut s = format!("{} {}: {}", d.severity(), d.code().code(), d.message());
        if let Some(detail) = d.detail() {
            s.push_str(&format!(" ({detail})"));
        }
        if let Some(w) = d.where_() {
            s.push_str(&format!(" [{}]", w.lines().next().unwrap_or_default()));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

/// A connection to `url` (its TLS settings applied), driven by a task of
/// its own, its session in UTC.
pub async fn connect(url: &str) -> Result<(Client, tokio::task::JoinHandle<()>), PgError> {
    let (rest, tls) = super::pg_tls::split(url)?;
    let mut config: tokio_postgres::Config = rest.parse()?;
    let (client, conn) = match super::pg_tls::client_config(&tls)? {
        None => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            drive(config.connect(NoTls).await?)
        }
        Some(rustls) => {
            config.ssl_mode(match tls.mode {
                super::pg_tls::SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
            drive(config.connect(super::pg_tls::MakeRustls(rustls)).await?)
        }
    };
    client.batch_execute("SET TIME ZONE 'UTC'").await?;
    Ok((client, conn))
}

/// The client, and the task that drives its connection until it ends.
fn drive<S, T>(
    (client, connection): (Client, tokio_postgres::Connection<S, T>),
) -> (Client, tokio::task::JoinHandle<()>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection ended");
        }
    });
    (client, task)
}

impl PgSink {
    /// The series id of every fact, in order.
    async fn series_ids(&mut self, facts: &[FactRow]) -> Result<Vec<i64>, PgError> {
        let mut ids: Vec<Option<i64>> = facts.iter().map(|f| self.series.get(f)).collect();
        if ids.iter().any(Option::is_none) {
            let mut missing: Vec<SeriesKey> = facts
                .iter()
                .zip(&ids)
                .filter(|(_, id)| id.is_none())
                .map(|(f, _)| (f.group.clone(), f.node.clone(), f.device.clone(), f.metric.clone()))
                .collect();
            if self.series.len + missing.len() > SERIES_CACHE_MAX {
                self.series = SeriesCache::default();
            }
            // Sorted: concurrent uplinks insert in the same order (no deadlock).
            missing.sort();
            missing.dedup();
            // Another uplink inserting the same key at the same moment makes
            // it invisible to this statement's snapshot: ask again.
            for _ in 0..3 {
                let cols: [Vec<&str>; 4] = [
                    missing.iter().map(|k| k.0.as_ref()).collect(),
                    missing.iter().map(|k| k.1.as_ref()).collect(),
                    missing.iter().map(|k| k.2.as_ref()).collect(),
                    missing.iter().map(|k| k.3.as_ref()).collect(),
                ];
                let rows = self
                    .client
                    .query(RESOLVE_SERIES, &[&cols[0], &cols[1], &cols[2], &cols[3]])
                    .await?;
                for r in rows {
                    let name = |i: usize| -> Arc<str> { Arc::from(r.get::<_, &str>(i)) };
                    self.series.insert((name(1), name(2), name(3), name(4)), r.get(0));
                }
                missing.retain(|k| self.series.get_key(k).is_none());
                if missing.is_empty() {
                    break;
                }
            }
            if let Some(k) = missing.first() {
                return Err(PgError::SeriesUnresolved(format!("{}/{}/{}/{}", k.0, k.1, k.2, k.3)));
            }
            ids = facts.iter().map(|f| self.series.get(f)).collect();
        }
        Ok(ids.into_iter().map(|id| id.expect("resolved above")).collect())
    }
}

impl Sink for PgSink {
    type Error = PgError;

    /// Connects (`url`: `host=… user=… dbname=…` or `postgres://…`, with
    /// libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey`: see
    /// [`super::pg_tls`]).
    async fn connect(url: &str) -> Result<Self, PgError> {
        let (client, conn) = connect(url).await?;
        Ok(PgSink {
            client,
            conn,
            series: SeriesCache::default(),
            oee_cycles: Default::default(),
            retention: Retention::forever(),
            clock: None,
            parts: Default::default(),
            made: Default::default(),
            fence: None,
        })
    }

    /// Whether the connection is still up.
    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// SQLSTATE classes 22 (data exception) and 23 (integrity constraint),
    /// 54 (a program limit such as an index entry too large for its page),
    /// and values the driver could not encode.
    fn is_data_error(e: &PgError) -> bool {
        let PgError::Db(e) = e else { return false };
        if e.is_closed() {
            return false;
        }
        if parts::is_no_partition(e) {
            return false; // the partitions changed: ensure them and retry
        }
        match e.code() {
            Some(c) => ["22", "23", "54"].iter().any(|class| c.code().starts_with(class)),
            // Client side: a parameter that would not serialize.
            None => e.to_string().starts_with("error serializing"),
        }
    }

    async fn check_schema(&mut self) -> Result<i32, PgError> {
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        let found: i32 = self
            .client
            .query_one(
                "SELECT CASE WHEN to_regclass('sp_schema_migrations') IS NULL THEN 0
                        ELSE (SELECT coalesce(max(version), 0) FROM sp_schema_migrations) END",
                &[],
            )
            .await?
            .get(0);
        match found.cmp(&known) {
            std::cmp::Ordering::Equal => Ok(found),
            std::cmp::Ordering::Greater => Err(PgError::SchemaTooNew { found, known }),
            std::cmp::Ordering::Less => Err(PgError::SchemaBehind { found, known }),
        }
    }

    /// Applies the missing migrations; returns the schema version.
    async fn migrate(&mut self) -> Result<i32, PgError> {
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

    /// Folds `sp_rollup_pending` into the rollups (one transaction; skipped
    /// while another connection folds); returns the facts folded in.
    async fn fold(&mut self) -> Result<u64, PgError> {
        let now = self.now();
        // The months pending facts fall in, and their rollup partitions, first
        // (outside the fold's lock: what arrives meanwhile waits its turn).
        let months: Vec<i64> = self
            .client
            .query(
                "SELECT DISTINCT (extract(epoch FROM date_trunc('month', ts)) * 1000)::bigint FROM sp_rollup_pending",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if months.is_empty() {
            return Ok(0);
        }
        for r in RESOLUTIONS {
            let class = Class::Rollup(r);
            let live: Vec<i64> = months
                .iter()
                .copied()
                .filter(|m| {
                    let end = self.retention.span(class).period(*m).1;
                    self.retention.cutoff(class, now).is_none_or(|c| end > c)
                })
                .collect();
            self.cover(class, live.into_iter(), None).await?;
        }
        let tx = self.client.transaction().await?;
        // Key: "spbfold" in ASCII.
        let mine: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock(32483054420946020)", &[])
            .await?
            .get(0);
        if !mine {
            return Ok(0);
        }
        let month_ts: Vec<SystemTime> = months.iter().map(|m| at(*m)).collect();
        let cut = |r: &'static str| self.retention.cutoff(Class::Rollup(r), now).map(at);
        let n: i64 = tx
            .query_one(FOLD_ROLLUPS, &[&month_ts, &cut("minute"), &cut("hour"), &cut("day")])
            .await?
            .get(0);
        tx.commit().await?;
        Ok(n as u64)
    }

    fn set_fence(&mut self, instance: Option<String>) {
        self.fence = instance;
    }

    fn fenced(e: &PgError) -> Option<&[String]> {
        match e {
            PgError::Fenced(lost) => Some(lost),
            _ => None,
        }
    }

    fn set_retention(&mut self, r: &Retention, clock: Option<i64>) {
        self.retention = r.clone();
        self.clock = clock;
    }

    /// Creates the partitions from now to the horizon and drops the
    /// expired ones, each class in turn, under a session lock one uplink
    /// holds at a time.
    async fn retain(&mut self, now_ms: i64) -> Result<Retained, PgError> {
        // Key: "spbretn" in ASCII.
        let mine: bool = self
            .client
            .query_one("SELECT pg_try_advisory_lock(32483058475054446)", &[])
            .await?
            .get(0);
        if !mine {
            return Ok(Retained {
                skipped: true,
                ..Retained::default()
            });
        }
        let done = self.retain_locked(now_ms).await;
        self.client
            .execute("SELECT pg_advisory_unlock(32483058475054446)", &[])
            .await?;
        done
    }

    /// Writes a batch in one transaction, after keeping out what the
    /// retention does not keep and making sure its periods have partitions.
    async fn write(&mut self, b: &Batch) -> Result<Written, PgError> {
        let now = self.now();
        let trimmed = self.retention.trim(b, now);
        let (b, expired, ahead) = match &trimmed {
            Some((t, expired, ahead)) => (t, *expired, *ahead),
            None => (b, 0, 0),
        };
        let cover = async {
            self.cover(Class::Raw, b.raw.iter().map(|r| r.received_ms), None)
                .await?;
            self.cover(Class::Facts, b.facts.iter().map(|f| f.ts_ms), Some(now))
                .await
        };
        let refused = match cover.await {
            Ok(refused) => refused,
            Err(e) => return self.no_partition(Err(e)),
        };
        // Facts of periods over the budget are quarantined, not waited for.
        let over: Option<Batch> = (!refused.is_empty()).then(|| {
            let mut kept = b.clone();
            let why = format!(
                "no partition holds that day and this connection created its {PARTITIONS_PER_MINUTE} partitions of the last minute: a sender spreads its timestamps over too many days"
            );
            for f in std::mem::take(&mut kept.facts) {
                if refused.iter().any(|(lo, hi)| (*lo..*hi).contains(&f.ts_ms)) {
                    kept.quarantine.push(super::retention::quarantined_fact(&f, now, &why));
                } else {
                    kept.facts.push(f);
                }
            }
            kept
        });
        let over_budget = over.as_ref().map_or(0, |k| (b.facts.len() - k.facts.len()) as u64);
        let written = self.write_rows(over.as_ref().unwrap_or(b)).await;
        match self.no_partition(written) {
            Ok(w) => Ok(Written {
                expired,
                ahead,
                over_budget,
                ..w
            }),
            Err(e) => Err(e),
        }
    }
}

impl PgSink {
    /// A write that found no partition clears what this connection knows of
    /// them (the next attempt reads them again); the error stands.
    fn no_partition(&mut self, r: Result<Written, PgError>) -> Result<Written, PgError> {
        match r {
            Err(PgError::Db(e)) if parts::is_no_partition(&e) => {
                self.parts.clear();
                Err(PgError::Db(e))
            }
            other => other,
        }
    }

    fn now(&self) -> i64 {
        self.clock.unwrap_or_else(|| crate::clock::now_ms() as i64)
    }

    /// Makes sure partitions of `class` cover every stamp (consecutive
    /// stamps of one period cost a comparison each). With `budget` (now,
    /// ms), at most [`PARTITIONS_PER_MINUTE`] are created in a minute;
    /// returns the periods left without one.
    async fn cover(
        &mut self,
        class: Class,
        stamps: impl Iterator<Item = i64>,
        budget: Option<i64>,
    ) -> Result<Vec<(i64, i64)>, PgError> {
        if !self.parts.contains_key(&class) {
            let have = parts::list(&self.client, class).await?;
            self.parts.insert(class, have);
        }
        let span = self.retention.span(class);
        let have = &self.parts[&class];
        let (mut lo, mut hi) = (1, 0);
        let mut missing: Vec<(i64, i64)> = Vec::new();
        for t in stamps {
            if lo <= t && t < hi {
                continue;
            }
            if let Some(p) = have.iter().find(|p| !p.detach_pending && p.lo <= t && t < p.hi) {
                (lo, hi) = (p.lo, p.hi);
                continue;
            }
            (lo, hi) = span.period(t);
            if !missing.contains(&(lo, hi)) {
                missing.push((lo, hi));
            }
        }
        let mut refused = Vec::new();
        if missing.is_empty() {
            return Ok(refused);
        }
        for (lo, hi) in missing {
            if let Some(now) = budget {
                while self.made.front().is_some_and(|t| *t <= now - 60_000) {
                    self.made.pop_front();
                }
                if self.made.len() >= PARTITIONS_PER_MINUTE {
                    refused.push((lo, hi));
                    continue;
                }
            }
            let made = parts::ensure(&mut self.client, class, span, lo, hi).await?;
            if !made.is_empty() {
                tracing::info!(partitions = ?made, "partitions created for arriving rows");
                if let Some(now) = budget {
                    self.made.extend(std::iter::repeat_n(now, made.len()));
                }
            }
        }
        if !refused.is_empty() {
            tracing::warn!(
                periods = refused.len(),
                "facts of days without a partition quarantined: {PARTITIONS_PER_MINUTE} partitions a minute at most"
            );
        }
        let have = parts::list(&self.client, class).await?;
        self.parts.insert(class, have);
        Ok(refused)
    }

    async fn retain_locked(&mut self, now: i64) -> Result<Retained, PgError> {
        let mut out = Retained::default();
        for class in parts::classes() {
            let have = parts::list(&self.client, class).await?;
            let span = self.retention.span(class);
            for a in self.retention.plan(class, &have, now) {
                match a {
                    super::retention::Action::Create { lo, hi } => {
                        out.created
                            .extend(parts::ensure(&mut self.client, class, span, lo, hi).await?);
                    }
                    super::retention::Action::Drop { name, detach_pending } => {
                        parts::drop(&self.client, class, &name, detach_pending).await?;
                        tracing::info!(partition = %name, "expired partition dropped");
                        out.dropped.push(name);
                    }
                }
            }
            self.parts.remove(&class);
        }
        // STALE marks go with the facts they stand among: few rows (one per
        // metric and death), deleted in bounded batches.
        if let Some(cutoff) = self.retention.cutoff(Class::Facts, now) {
            loop {
                let n = self
                    .client
                    .execute(
                        "DELETE FROM sp_stale WHERE ctid = ANY(ARRAY(SELECT ctid FROM sp_stale WHERE ts < $1 LIMIT $2))",
                        &[&at(cutoff), &DELETE_BATCH],
                    )
                    .await?;
                out.deleted_rows += n;
                if n < DELETE_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Writes a batch whose rows all have partitions, in one transaction.
    async fn write_rows(&mut self, b: &Batch) -> Result<Written, PgError> {
        let mut out = Written::default();
        // Series ids first, committed on their own: an id in the cache
        // always exists, whatever becomes of the batch's transaction.
        let ids = self.series_ids(&b.facts).await?;
        let tx = self.client.transaction().await?;
        if let Some(me) = &self.fence {
            // Held and live, and kept so until this commits: a taker takes
            // the same lock exclusively, so it waits for this transaction,
            // and this one, once the lock is granted, reads the lease as
            // taken (a new statement, a new snapshot). Renewals take no
            // lock: writers never queue behind them.
            let leases: Vec<String> = b.leases().into_iter().collect();
            if !leases.is_empty() {
                tx.execute(LEASE_LOCK_SHARED, &[&leases]).await?;
                let held: Vec<String> = tx
                    .query(
                        "SELECT name FROM sp_uplink_lease WHERE name = ANY($1) AND holder = $2 AND expires_at > now()",
                        &[&leases, me],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let lost: Vec<String> = leases.into_iter().filter(|l| !held.contains(l)).collect();
                if !lost.is_empty() {
                    return Err(PgError::Fenced(lost));
                }
            }
        }
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
            // Live facts are new but for a rare QoS 1 redelivery: COPY them
            // straight into the table (no conflict check per row). A
            // duplicate makes the COPY fail; then, and for replays
            // (historical), the staging + ON CONFLICT path.
            let direct = !b.facts.iter().any(|f| f.is_historical);
            let mut done = false;
            if direct {
                tx.batch_execute("SAVEPOINT direct").await?;
                match copy_facts(&tx, "sp_series_fact", &b.facts, &ids).await {
                    Ok(()) => {
                        tx.batch_execute("RELEASE SAVEPOINT direct").await?;
                        copy_pending(&tx, &b.facts, &ids).await?;
                        out.facts = b.facts.len() as u64;
                        done = true;
                    }
                    Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                        tx.batch_execute("ROLLBACK TO SAVEPOINT direct").await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if !done {
                tx.batch_execute(
                    "CREATE TEMP TABLE IF NOT EXISTS sp_fact_stage (
                        series_id bigint, ts timestamptz, datatype smallint, v_int bigint,
                        v_float double precision, v_bool boolean, v_text text, v_bytes bytea,
                        quality integer, is_historical boolean
                     ) ON COMMIT DELETE ROWS",
                )
                .await?;
                copy_facts(&tx, "sp_fact_stage", &b.facts, &ids).await?;
                let inserted: i64 = tx.query_one(INSERT_FACTS, &[]).await?.get(0);
                out.facts = inserted as u64;
            }
        }
        if !b.stale.is_empty() {
            let col = |f: fn(&super::rows::StaleRow) -> &str| b.stale.iter().map(f).collect::<Vec<&str>>();
            let ts: Vec<SystemTime> = b.stale.iter().map(|m| at(m.ts_ms)).collect();
            let datatype: Vec<i16> = b.stale.iter().map(|m| m.datatype).collect();
            tx.execute(
                "INSERT INTO sp_stale (group_id, node_id, device_id, metric, ts, datatype)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::smallint[])
                 ON CONFLICT DO NOTHING",
                &[
                    &col(|m| &m.group),
                    &col(|m| &m.node),
                    &col(|m| &m.device),
                    &col(|m| &m.metric),
                    &ts,
                    &datatype,
                ],
            )
            .await?;
        }
        if !b.oee.is_empty() {
            let sink = tx.copy_in("COPY oee_pending (machine, ts) FROM STDIN BINARY").await?;
            let w = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TIMESTAMPTZ]);
            futures_util::pin_mut!(w);
            for m in &b.oee {
                let (machine, ts) = (&*m.machine, at(m.ts_ms));
                let row: [&(dyn ToSql + Sync); 2] = [&machine, &ts];
                w.as_mut().write(&row).await?;
            }
            w.finish().await?;
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
            if s.device.is_empty() {
                tx.execute(NODE_STATE, &[&s.group, &s.node, &s.online, &s.bdseq, &when, &s.cause])
                    .await?;
            } else {
                tx.execute(
                    DEVICE_STATE,
                    &[&s.group, &s.node, &s.device, &s.online, &when, &s.cause],
                )
                .await?;
            }
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
            let outcome = c.outcome.to_string();
            // A row without a request id (a command seen on the broker) is
            // never replaced: a plain insert, which the ingest role may do.
            let sql = if c.request_id.is_some() {
                UPSERT_COMMAND
            } else {
                INSERT_COMMAND
            };
            tx.execute(
                sql,
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
                    &c.request_id,
                    &outcome,
                    &c.sent_ms.map(at),
                    &c.confirmed_value,
                    &c.confirmed_ms.map(at),
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(out)
    }
}

/// Binary COPY of facts (with their series ids) into `table`.
async fn copy_facts(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    facts: &[FactRow],
    ids: &[i64],
) -> Result<(), tokio_postgres::Error> {
    let sink = tx
        .copy_in(&format!(
            "COPY {table} (series_id, ts, datatype, v_int, v_float, v_bool, v_text, v_bytes, quality, is_historical) FROM STDIN BINARY"
        ))
        .await?;
    let w = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
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
    for (f, id) in facts.iter().zip(ids) {
        let ts = at(f.ts_ms);
        let row: [&(dyn ToSql + Sync); 10] = [
            id,
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
    Ok(())
}

/// Binary COPY of the numeric facts' (series, ts, value) into `sp_rollup_pending`.
async fn copy_pending(
    tx: &tokio_postgres::Transaction<'_>,
    facts: &[FactRow],
    ids: &[i64],
) -> Result<(), tokio_postgres::Error> {
    let sink = tx
        .copy_in("COPY sp_rollup_pending (series_id, ts, v) FROM STDIN BINARY")
        .await?;
    let w = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::TIMESTAMPTZ, Type::FLOAT8]);
    futures_util::pin_mut!(w);
    for (f, id) in facts.iter().zip(ids) {
        if let Some(v) = f.numeric() {
            let ts = at(f.ts_ms);
            let row: [&(dyn ToSql + Sync); 3] = [id, &ts, &v];
            w.as_mut().write(&row).await?;
        }
    }
    w.finish().await?;
    Ok(())
}

impl PgSink {
    /// Computes the OEE intervals the pending marks touch
    /// ([`super::oee::pg::fold`]); returns how many were written.
    pub async fn fold_oee(&mut self, cfg: &super::oee::config::OeeConfig, now_ms: i64) -> Result<u64, PgError> {
        Ok(super::oee::pg::fold(&mut self.client, cfg, now_ms).await?)
    }

    /// Each machine's figures for the shift running at `now_ms`, and the
    /// cycles counted in all its hours, for `/metrics`.
    pub async fn oee_live(&mut self, now_ms: i64) -> Result<Vec<super::stats::OeeLive>, PgError> {
        Ok(super::oee::pg::live(&self.client, &mut self.oee_cycles, now_ms).await?)
    }
}

impl Drop for PgSink {
    fn drop(&mut self) {
        self.conn.abort();
    }
}
