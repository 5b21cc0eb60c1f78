//! The SQL Server sink (tiberius over rustls): T-SQL migrations, and one
//! transaction per [`Batch`] with TDS bulk loads into temp tables, then
//! `MERGE`.
//!
//! Invariants:
//! - The schema is versioned in `sp_schema_migrations`; missing migrations
//!   are applied at start under `sp_getapplock` (two uplinks starting
//!   together do not race).
//! - A batch commits entirely or not at all (`XACT_ABORT ON`; on any error
//!   the connection is dropped and the server rolls back); a retry is safe.
//! - A fact is written once. SQL Server compares `nvarchar` case-blind under
//!   the default collation and caps index keys at 900 bytes, while Sparkplug
//!   names are case-sensitive and unbounded, so every table keys its rows on
//!   a persisted SHA-256 of the length-prefixed names ([`series_key`]), not on
//!   the names themselves. Only facts the `MERGE` inserted reach
//!   `sp_rollup_pending` (same transaction), which the folder moves into
//!   the rollups and empties in one transaction, as on PostgreSQL.
//! - Timestamps are `datetime2(3)` in UTC, milliseconds exact, like the
//!   Sparkplug timestamps they come from.
//!
//! SQL Server cannot run on our machines: this module is built and
//! unit-tested in CI, and `tests/uplink_mssql.rs` runs it against a real
//! server when `SPB_TEST_MSSQL_URL` is set (README, "spb-uplink").

use std::borrow::Cow;

use thiserror::Error;
use tiberius::time::{Date, DateTime2, Time};
use tiberius::{Client, ColumnData, Config, TokenRow};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::retention::{Class, Retention, DELETE_BATCH, RESOLUTIONS};
use super::rows::{Batch, CatalogRow, FactRow, RawRow};
use super::sink::{Retained, Sink, Written};

/// Why the SQL Server sink failed.
#[derive(Debug, Error)]
pub enum MssqlError {
    #[error("mssql: {0}")]
    Db(#[from] tiberius::error::Error),
    #[error("mssql: connecting to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("mssql: the schema is at version {found}, newer than this uplink knows ({known}); upgrade the uplink")]
    SchemaTooNew { found: i32, known: i32 },
    #[error("mssql: the schema is at version {found}, older than this uplink needs ({known}); it is migrated at start through database.owner_url")]
    SchemaBehind { found: i32, known: i32 },
}

/// The T-SQL expression of a row's key: SHA-256 over the length-prefixed
/// names (injective, case-sensitive, 32 bytes whatever the names' length).
pub fn series_key(names: &[&str]) -> String {
    let parts: Vec<String> = names
        .iter()
        .map(|n| format!("CAST(DATALENGTH({n}) AS varchar(12)), N':', {n}"))
        .collect();
    format!(
        "CAST(HASHBYTES('SHA2_256', CONCAT({}, N'')) AS binary(32))",
        parts.join(", N'|', ")
    )
}

fn fact_key() -> String {
    series_key(&["group_id", "node_id", "device_id", "metric"])
}

/// The migrations, in order; never edit a released one, add the next.
pub fn migrations() -> Vec<(i32, String)> {
    let series = fact_key();
    let node = series_key(&["group_id", "node_id"]);
    vec![
        (
            1,
            format!(
                r#"
CREATE TABLE sp_event_raw (
    id bigint IDENTITY PRIMARY KEY,
    topic nvarchar(max) NOT NULL,
    kind nvarchar(16) NOT NULL,
    seq smallint NULL,
    bdseq bigint NULL,
    received_at datetime2(3) NOT NULL,
    payload varbinary(max) NOT NULL
);
CREATE INDEX sp_event_raw_received ON sp_event_raw (received_at);
CREATE TABLE sp_metric_fact (
    group_id nvarchar(max) NOT NULL,
    node_id nvarchar(max) NOT NULL,
    device_id nvarchar(max) NOT NULL,
    metric nvarchar(max) NOT NULL,
    ts datetime2(3) NOT NULL,
    datatype smallint NOT NULL,
    v_int bigint NULL,
    v_float float NULL,
    v_bool bit NULL,
    v_text nvarchar(max) NULL,
    v_bytes varbinary(max) NULL,
    quality int NOT NULL,
    is_historical bit NOT NULL,
    written_at datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME(),
    series_key AS {series} PERSISTED NOT NULL,
    CONSTRAINT sp_metric_fact_pk PRIMARY KEY (series_key, ts)
);
CREATE TABLE sp_node_state (
    group_id nvarchar(max) NOT NULL,
    node_id nvarchar(max) NOT NULL,
    online bit NOT NULL,
    stale bit NOT NULL,
    bdseq bigint NULL,
    last_birth datetime2(3) NULL,
    last_death datetime2(3) NULL,
    last_cause nvarchar(200) NULL,
    updated_at datetime2(3) NOT NULL,
    node_key AS {node} PERSISTED NOT NULL,
    CONSTRAINT sp_node_state_pk PRIMARY KEY (node_key)
);
CREATE TABLE sp_metric_catalog (
    group_id nvarchar(max) NOT NULL,
    node_id nvarchar(max) NOT NULL,
    device_id nvarchar(max) NOT NULL,
    metric nvarchar(max) NOT NULL,
    datatype smallint NOT NULL,
    properties nvarchar(max) NOT NULL,
    first_seen datetime2(3) NOT NULL,
    last_seen datetime2(3) NOT NULL,
    series_key AS {series} PERSISTED NOT NULL,
    CONSTRAINT sp_metric_catalog_pk PRIMARY KEY (series_key)
);
CREATE TABLE sp_quarantine (
    id bigint IDENTITY PRIMARY KEY,
    topic nvarchar(max) NOT NULL,
    received_at datetime2(3) NOT NULL,
    payload varbinary(max) NOT NULL,
    reason nvarchar(max) NOT NULL
);
CREATE TABLE sp_command_audit (
    id bigint IDENTITY PRIMARY KEY,
    at datetime2(3) NOT NULL,
    group_id nvarchar(max) NOT NULL,
    node_id nvarchar(max) NOT NULL,
    device_id nvarchar(max) NOT NULL,
    metric nvarchar(max) NOT NULL,
    value nvarchar(max) NULL,
    accepted bit NOT NULL,
    reason nvarchar(max) NOT NULL,
    requested_by nvarchar(max) NOT NULL
);
CREATE TABLE sp_metric_rollup (
    bucket_size varchar(6) NOT NULL CHECK (bucket_size IN ('minute', 'hour', 'day')),
    bucket datetime2(3) NOT NULL,
    group_id nvarchar(max) NOT NULL,
    node_id nvarchar(max) NOT NULL,
    device_id nvarchar(max) NOT NULL,
    metric nvarchar(max) NOT NULL,
    count bigint NOT NULL,
    min float NOT NULL,
    max float NOT NULL,
    sum float NOT NULL,
    last float NOT NULL,
    last_ts datetime2(3) NOT NULL,
    series_key AS {series} PERSISTED NOT NULL,
    CONSTRAINT sp_metric_rollup_pk PRIMARY KEY (bucket_size, bucket, series_key)
);
"#
            ),
        ),
        (
            // The command audit follows a command of the API from request to
            // outcome (as PostgreSQL's v4): `at` is when it was requested.
            // Two migrations, so that the index is compiled once the column
            // exists (each migration is one batch).
            2,
            r#"
ALTER TABLE sp_command_audit ADD
    request_id nvarchar(450) NULL,
    outcome varchar(9) NOT NULL CONSTRAINT sp_command_audit_outcome_df DEFAULT 'sent'
        CONSTRAINT sp_command_audit_outcome_ck CHECK (outcome IN ('refused', 'sent', 'confirmed', 'failed', 'timeout')),
    sent_at datetime2(3) NULL,
    confirmed_value nvarchar(max) NULL,
    confirmed_at datetime2(3) NULL;
"#
            .to_string(),
        ),
        (
            3,
            "CREATE UNIQUE INDEX sp_command_audit_request ON sp_command_audit (request_id) WHERE request_id IS NOT NULL;"
                .to_string(),
        ),
        (
            // OEE, as PostgreSQL's v5.
            4,
            r#"
CREATE TABLE oee_pending (
    machine nvarchar(450) NOT NULL,
    ts datetime2(3) NOT NULL
);
CREATE TABLE oee_interval (
    machine nvarchar(450) NOT NULL,
    kind varchar(5) NOT NULL CHECK (kind IN ('hour', 'shift')),
    start_at datetime2(3) NOT NULL,
    end_at datetime2(3) NOT NULL,
    shift nvarchar(max) NOT NULL,
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
    ideal_ms float NOT NULL,
    availability float NULL,
    performance float NULL,
    quality float NULL,
    oee float NULL,
    completeness float NOT NULL,
    computed_at datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME(),
    CONSTRAINT oee_interval_pk PRIMARY KEY (machine, kind, start_at)
);
CREATE TABLE oee_cycle (
    machine nvarchar(450) NOT NULL,
    start_at datetime2(3) NOT NULL,
    end_at datetime2(3) NOT NULL,
    duration_ms float NOT NULL,
    count bigint NOT NULL,
    product nvarchar(max) NULL,
    CONSTRAINT oee_cycle_pk PRIMARY KEY (machine, end_at)
);
CREATE TABLE oee_downtime (
    machine nvarchar(450) NOT NULL,
    start_at datetime2(3) NOT NULL,
    end_at datetime2(3) NOT NULL,
    reason_code nvarchar(max) NULL,
    reason nvarchar(max) NULL,
    category varchar(12) NOT NULL,
    planned bit NOT NULL,
    CONSTRAINT oee_downtime_pk PRIMARY KEY (machine, start_at)
);
CREATE TABLE oee_quality (
    machine nvarchar(450) NOT NULL,
    at datetime2(3) NOT NULL,
    good bigint NOT NULL,
    rejected bigint NOT NULL,
    CONSTRAINT oee_quality_pk PRIMARY KEY (machine, at)
);
"#
            .to_string(),
        ),
        (
            // As PostgreSQL's v6: intervals computed while running, and the
            // reason code of a quality event's rejects.
            5,
            r#"
ALTER TABLE oee_interval ADD computed_to datetime2(3) NULL, known_ms bigint NULL;
ALTER TABLE oee_quality ADD reason_code nvarchar(max) NULL, reason nvarchar(max) NULL;
"#
            .to_string(),
        ),
        (
            // As PostgreSQL's v7: device state, the state history, and each
            // metric's last value with whether it is STALE. (`GO` ends a
            // batch: CREATE VIEW must open one.)
            6,
            format!(
                r#"
CREATE TABLE sp_device_state (
    group_id nvarchar(max) NOT NULL,
    node_id nvarchar(max) NOT NULL,
    device_id nvarchar(max) NOT NULL,
    online bit NOT NULL,
    bdseq bigint NULL,
    last_birth datetime2(3) NULL,
    last_death datetime2(3) NULL,
    last_cause nvarchar(200) NULL,
    updated_at datetime2(3) NOT NULL,
    node_key AS {node} PERSISTED NOT NULL,
    device_key AS {device} PERSISTED NOT NULL,
    CONSTRAINT sp_device_state_pk PRIMARY KEY (device_key)
);
CREATE INDEX sp_device_state_node ON sp_device_state (node_key) INCLUDE (online);
CREATE TABLE sp_state_history (
    id bigint IDENTITY PRIMARY KEY,
    group_id nvarchar(max) NOT NULL,
    node_id nvarchar(max) NOT NULL,
    device_id nvarchar(max) NOT NULL,
    online bit NOT NULL,
    bdseq bigint NULL,
    at datetime2(3) NOT NULL,
    cause nvarchar(200) NOT NULL,
    written_at datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME(),
    device_key AS {device} PERSISTED NOT NULL
);
CREATE INDEX sp_state_history_at ON sp_state_history (device_key, at);
CREATE INDEX sp_metric_fact_age ON sp_metric_fact (ts);
CREATE INDEX sp_metric_rollup_age ON sp_metric_rollup (bucket_size, bucket);
CREATE TABLE sp_stale (
    group_id nvarchar(max) NOT NULL,
    node_id nvarchar(max) NOT NULL,
    device_id nvarchar(max) NOT NULL,
    metric nvarchar(max) NOT NULL,
    ts datetime2(3) NOT NULL,
    datatype smallint NOT NULL,
    series_key AS {series} PERSISTED NOT NULL,
    CONSTRAINT sp_stale_pk PRIMARY KEY (series_key, ts)
);
CREATE INDEX sp_stale_ts ON sp_stale (ts);
GO
CREATE VIEW sp_metric_last AS
    SELECT c.group_id, c.node_id, c.device_id, c.metric,
           CASE WHEN k.mark = 1 THEN m.ts ELSE f.ts END AS ts,
           CASE WHEN k.mark = 1 THEN m.datatype ELSE f.datatype END AS datatype,
           CASE WHEN k.mark = 1 THEN NULL ELSE f.v_int END AS v_int,
           CASE WHEN k.mark = 1 THEN NULL ELSE f.v_float END AS v_float,
           CASE WHEN k.mark = 1 THEN NULL ELSE f.v_bool END AS v_bool,
           CASE WHEN k.mark = 1 THEN NULL ELSE f.v_text END AS v_text,
           CASE WHEN k.mark = 1 THEN NULL ELSE f.v_bytes END AS v_bytes,
           CASE WHEN k.mark = 1 THEN 500 ELSE f.quality END AS quality,
           CAST(CASE WHEN k.mark = 1 OR f.quality = 500 THEN 1 ELSE 0 END AS bit) AS is_stale
    FROM sp_metric_catalog c
    OUTER APPLY (
        SELECT TOP (1) f.ts, f.datatype, f.v_int, f.v_float, f.v_bool, f.v_text, f.v_bytes, f.quality
        FROM sp_metric_fact f WHERE f.series_key = c.series_key ORDER BY f.ts DESC
    ) f
    OUTER APPLY (
        SELECT TOP (1) m.ts, m.datatype FROM sp_stale m WHERE m.series_key = c.series_key ORDER BY m.ts DESC
    ) m
    CROSS APPLY (
        SELECT CASE WHEN m.ts IS NOT NULL AND (f.ts IS NULL OR m.ts > f.ts) THEN 1 ELSE 0 END AS mark
    ) k
    WHERE f.ts IS NOT NULL OR m.ts IS NOT NULL;
"#,
                device = series_key(&["group_id", "node_id", "device_id"])
            ),
        ),
        (
            // As PostgreSQL's v9: least privilege. The uplink migrates and
            // deletes what expired as the owner (database.owner_url) and
            // ingests as a user in sparkplug_ingest: inserts facts and raw
            // messages (no UPDATE or DELETE on them is granted), upserts
            // state, catalog and rollups, no DDL. sparkplug_command reads
            // and writes the command audit.
            7,
            r#"
IF DATABASE_PRINCIPAL_ID('sparkplug_ingest') IS NULL CREATE ROLE sparkplug_ingest;
IF DATABASE_PRINCIPAL_ID('sparkplug_command') IS NULL CREATE ROLE sparkplug_command;
GRANT SELECT ON sp_schema_migrations TO sparkplug_ingest;
GRANT SELECT ON sp_schema_migrations TO sparkplug_command;
GRANT SELECT, INSERT ON sp_event_raw TO sparkplug_ingest;
GRANT SELECT, INSERT ON sp_metric_fact TO sparkplug_ingest;
GRANT SELECT, INSERT ON sp_stale TO sparkplug_ingest;
GRANT SELECT, INSERT ON sp_state_history TO sparkplug_ingest;
GRANT SELECT, INSERT ON sp_quarantine TO sparkplug_ingest;
GRANT SELECT, INSERT ON sp_command_audit TO sparkplug_ingest;
GRANT SELECT, INSERT, UPDATE ON sp_node_state TO sparkplug_ingest;
GRANT SELECT, INSERT, UPDATE ON sp_device_state TO sparkplug_ingest;
GRANT SELECT, INSERT, UPDATE ON sp_metric_catalog TO sparkplug_ingest;
GRANT SELECT, INSERT, UPDATE ON sp_metric_rollup TO sparkplug_ingest;
GRANT SELECT, INSERT, DELETE ON oee_pending TO sparkplug_ingest;
GRANT SELECT, INSERT, UPDATE, DELETE ON oee_interval TO sparkplug_ingest;
GRANT SELECT, INSERT, UPDATE, DELETE ON oee_cycle TO sparkplug_ingest;
GRANT SELECT, INSERT, UPDATE, DELETE ON oee_downtime TO sparkplug_ingest;
GRANT SELECT, INSERT, UPDATE, DELETE ON oee_quality TO sparkplug_ingest;
GRANT SELECT ON sp_metric_last TO sparkplug_ingest;
GRANT SELECT, INSERT, UPDATE ON sp_command_audit TO sparkplug_command;
GRANT SELECT ON sp_node_state TO sparkplug_command;
GRANT SELECT ON sp_device_state TO sparkplug_command;
GRANT SELECT ON sp_metric_catalog TO sparkplug_command;
"#
            .to_string(),
        ),
        (
            // As PostgreSQL's v3: the rollups leave the write path. Each new
            // numeric fact also goes to this heap, in its write's
            // transaction; the folder moves it into sp_metric_rollup and
            // empties it, in one transaction.
            8,
            r#"
CREATE TABLE sp_rollup_pending (
    series_key binary(32) NOT NULL,
    group_id nvarchar(max) NOT NULL,
    node_id nvarchar(max) NOT NULL,
    device_id nvarchar(max) NOT NULL,
    metric nvarchar(max) NOT NULL,
    ts datetime2(3) NOT NULL,
    v float NOT NULL
);
GRANT SELECT, INSERT, DELETE ON sp_rollup_pending TO sparkplug_ingest;
"#
            .to_string(),
        ),
    ]
}

/// Staging tables, one set per connection (temp tables live as long as it).
fn staging_ddl() -> String {
    let series = fact_key();
    format!(
        r#"
IF OBJECT_ID('tempdb..#sp_fact_stage') IS NULL
CREATE TABLE #sp_fact_stage (
    group_id nvarchar(max) NOT NULL, node_id nvarchar(max) NOT NULL,
    device_id nvarchar(max) NOT NULL, metric nvarchar(max) NOT NULL,
    ts datetime2(3) NOT NULL, datatype smallint NOT NULL, v_int bigint NULL,
    v_float float NULL, v_bool bit NULL, v_text nvarchar(max) NULL,
    v_bytes varbinary(max) NULL, quality int NOT NULL, is_historical bit NOT NULL,
    series_key AS {series} PERSISTED
);
IF OBJECT_ID('tempdb..#sp_catalog_stage') IS NULL
CREATE TABLE #sp_catalog_stage (
    group_id nvarchar(max) NOT NULL, node_id nvarchar(max) NOT NULL,
    device_id nvarchar(max) NOT NULL, metric nvarchar(max) NOT NULL,
    datatype smallint NOT NULL, properties nvarchar(max) NOT NULL,
    seen datetime2(3) NOT NULL,
    series_key AS {series} PERSISTED
);
"#
    )
}

/// The columns bulk-loaded, in the order [`fact_row`] fills them.
pub const FACT_COLUMNS: [&str; 13] = [
    "group_id",
    "node_id",
    "device_id",
    "metric",
    "ts",
    "datatype",
    "v_int",
    "v_float",
    "v_bool",
    "v_text",
    "v_bytes",
    "quality",
    "is_historical",
];
/// The columns bulk-loaded into `sp_event_raw`, in [`raw_row`]'s order.
pub const RAW_COLUMNS: [&str; 6] = ["topic", "kind", "seq", "bdseq", "received_at", "payload"];
/// The columns bulk-loaded into `#sp_catalog_stage`, in [`catalog_row`]'s order.
pub const CATALOG_COLUMNS: [&str; 7] = [
    "group_id",
    "node_id",
    "device_id",
    "metric",
    "datatype",
    "properties",
    "seen",
];

/// Staged facts → `sp_metric_fact` (each key once, new keys only), and the
/// numeric ones among those inserted to `sp_rollup_pending` (the rollups
/// are folded from there by [`fold_rollups_sql`], off the write path);
/// returns how many facts were new.
fn merge_facts_sql() -> String {
    let cols = FACT_COLUMNS.join(", ");
    let vals = FACT_COLUMNS.map(|c| format!("s.{c}")).join(", ");
    format!(
        r#"
SET NOCOUNT ON;
DECLARE @ins TABLE (series_key binary(32), group_id nvarchar(max), node_id nvarchar(max),
    device_id nvarchar(max), metric nvarchar(max), ts datetime2(3), v float);
MERGE sp_metric_fact WITH (HOLDLOCK) AS t
USING (
    SELECT * FROM (
        SELECT *, ROW_NUMBER() OVER (PARTITION BY series_key, ts ORDER BY (SELECT NULL)) AS rn
        FROM #sp_fact_stage
    ) AS x WHERE rn = 1
) AS s
ON t.series_key = s.series_key AND t.ts = s.ts
WHEN NOT MATCHED BY TARGET THEN INSERT ({cols}) VALUES ({vals})
OUTPUT inserted.series_key, inserted.group_id, inserted.node_id, inserted.device_id, inserted.metric,
       inserted.ts, COALESCE(inserted.v_float, CAST(inserted.v_int AS float)) INTO @ins;
INSERT INTO sp_rollup_pending (series_key, group_id, node_id, device_id, metric, ts, v)
SELECT series_key, group_id, node_id, device_id, metric, ts, v FROM @ins WHERE v IS NOT NULL;
SELECT COUNT_BIG(*) FROM @ins;
"#
    )
}

/// `sp_rollup_pending` → the minute/hour/day rows of `sp_metric_rollup`,
/// and empty, in one transaction under an application lock (one folder at
/// a time; another finds the lock taken and folds nothing). @P1, @P2, @P3:
/// the minute, hour and day cutoffs of the retention (NULL: forever);
/// older buckets are not written. Returns how many facts were folded.
pub fn fold_rollups_sql() -> String {
    let bucket = |unit: &str| {
        format!("DATEADD({unit}, DATEDIFF({unit}, CAST('19000101' AS datetime2(3)), i.ts), CAST('19000101' AS datetime2(3)))")
    };
    format!(
        r#"
SET NOCOUNT ON;
SET XACT_ABORT ON;
BEGIN TRANSACTION;
DECLARE @lock int;
EXEC @lock = sp_getapplock @Resource = 'spb-uplink-fold', @LockMode = 'Exclusive',
    @LockOwner = 'Transaction', @LockTimeout = 0;
DECLARE @p TABLE (series_key binary(32), group_id nvarchar(max), node_id nvarchar(max),
    device_id nvarchar(max), metric nvarchar(max), ts datetime2(3), v float);
IF @lock >= 0
    DELETE FROM sp_rollup_pending
    OUTPUT deleted.series_key, deleted.group_id, deleted.node_id, deleted.device_id, deleted.metric,
           deleted.ts, deleted.v INTO @p;
WITH b AS (
    SELECT z.size, z.bucket, i.series_key, i.group_id, i.node_id, i.device_id, i.metric, i.ts, i.v
    FROM @p AS i
    CROSS APPLY (VALUES ('minute', {m}), ('hour', {h}), ('day', {d})) AS z(size, bucket)
), l AS (
    SELECT *, FIRST_VALUE(v) OVER (PARTITION BY size, bucket, series_key ORDER BY ts DESC) AS last_v
    FROM b
    WHERE bucket >= COALESCE(CASE size WHEN 'minute' THEN @P1 WHEN 'hour' THEN @P2 ELSE @P3 END,
                             CAST('00010101' AS datetime2(3)))
), g AS (
    SELECT size, bucket, series_key, MIN(group_id) AS group_id, MIN(node_id) AS node_id,
           MIN(device_id) AS device_id, MIN(metric) AS metric, COUNT_BIG(*) AS count,
           MIN(v) AS min, MAX(v) AS max, SUM(v) AS sum, MIN(last_v) AS last, MAX(ts) AS last_ts
    FROM l GROUP BY size, bucket, series_key
)
MERGE sp_metric_rollup WITH (HOLDLOCK) AS r
USING g ON r.bucket_size = g.size AND r.bucket = g.bucket AND r.series_key = g.series_key
WHEN MATCHED THEN UPDATE SET
    count = r.count + g.count,
    min = IIF(g.min < r.min, g.min, r.min),
    max = IIF(g.max > r.max, g.max, r.max),
    sum = r.sum + g.sum,
    last = IIF(g.last_ts >= r.last_ts, g.last, r.last),
    last_ts = IIF(g.last_ts > r.last_ts, g.last_ts, r.last_ts)
WHEN NOT MATCHED THEN INSERT (bucket_size, bucket, group_id, node_id, device_id, metric, count, min, max, sum, last, last_ts)
    VALUES (g.size, g.bucket, g.group_id, g.node_id, g.device_id, g.metric, g.count, g.min, g.max, g.sum, g.last, g.last_ts);
COMMIT TRANSACTION;
SELECT COUNT_BIG(*) FROM @p;
"#,
        m = bucket("minute"),
        h = bucket("hour"),
        d = bucket("day"),
    )
}

/// Staged catalog rows → `sp_metric_catalog` (the newest birth's declaration wins).
const MERGE_CATALOG: &str = r#"
SET NOCOUNT ON;
MERGE sp_metric_catalog WITH (HOLDLOCK) AS c
USING (
    SELECT * FROM (
        SELECT *, ROW_NUMBER() OVER (PARTITION BY series_key ORDER BY seen DESC) AS rn FROM #sp_catalog_stage
    ) AS x WHERE rn = 1
) AS s
ON c.series_key = s.series_key
WHEN MATCHED THEN UPDATE SET datatype = s.datatype, properties = s.properties,
    last_seen = IIF(s.seen > c.last_seen, s.seen, c.last_seen)
WHEN NOT MATCHED THEN INSERT (group_id, node_id, device_id, metric, datatype, properties, first_seen, last_seen)
    VALUES (s.group_id, s.node_id, s.device_id, s.metric, s.datatype, s.properties, s.seen, s.seen);
"#;

/// A command audit row; one with a request_id replaces the earlier row of
/// that id (sent, then its outcome).
const INSERT_COMMAND: &str = "MERGE sp_command_audit WITH (HOLDLOCK) AS t \
    USING (SELECT @P1 AS at, @P2 AS group_id, @P3 AS node_id, @P4 AS device_id, @P5 AS metric, \
        @P6 AS value, @P7 AS accepted, @P8 AS reason, @P9 AS requested_by, @P10 AS request_id, \
        @P11 AS outcome, @P12 AS sent_at, @P13 AS confirmed_value, @P14 AS confirmed_at) AS s \
    ON s.request_id IS NOT NULL AND t.request_id = s.request_id \
    WHEN MATCHED THEN UPDATE SET accepted = s.accepted, reason = s.reason, outcome = s.outcome, \
        sent_at = COALESCE(s.sent_at, t.sent_at), confirmed_value = s.confirmed_value, \
        confirmed_at = s.confirmed_at \
    WHEN NOT MATCHED THEN INSERT (at, group_id, node_id, device_id, metric, value, accepted, reason, \
        requested_by, request_id, outcome, sent_at, confirmed_value, confirmed_at) \
    VALUES (s.at, s.group_id, s.node_id, s.device_id, s.metric, s.value, s.accepted, s.reason, \
        s.requested_by, s.request_id, s.outcome, s.sent_at, s.confirmed_value, s.confirmed_at);";

/// A command audit row seen on the broker (no request id).
const INSERT_COMMAND_SEEN: &str = "INSERT INTO sp_command_audit (at, group_id, node_id, device_id, metric, \
    value, accepted, reason, requested_by, request_id, outcome, sent_at, confirmed_value, confirmed_at) \
    VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12, @P13, @P14);";

const INSERT_OEE_MARK: &str = "INSERT INTO oee_pending (machine, ts) VALUES (@P1, @P2)";

/// A STALE mark, once (a second of the same key is a replay of the death).
static INSERT_STALE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO sp_stale (group_id, node_id, device_id, metric, ts, datatype)
         SELECT @P1, @P2, @P3, @P4, @P5, @P6
         WHERE NOT EXISTS (SELECT 1 FROM sp_stale WITH (UPDLOCK, HOLDLOCK) WHERE series_key = {} AND ts = @P5)",
        series_key(&["@P1", "@P2", "@P3", "@P4"])
    )
});

const INSERT_QUARANTINE: &str =
    "INSERT INTO sp_quarantine (topic, received_at, payload, reason) VALUES (@P1, @P2, @P3, @P4)";

/// The per-batch statements, built once.
static MERGE_FACTS: std::sync::LazyLock<String> = std::sync::LazyLock::new(merge_facts_sql);
static FOLD_ROLLUPS: std::sync::LazyLock<String> = std::sync::LazyLock::new(fold_rollups_sql);
static MERGE_STATE: std::sync::LazyLock<String> = std::sync::LazyLock::new(merge_state_sql);
static MERGE_DEVICE_STATE: std::sync::LazyLock<String> = std::sync::LazyLock::new(merge_device_state_sql);

fn merge_state_sql() -> String {
    format!(
        r#"
MERGE sp_node_state WITH (HOLDLOCK) AS n
USING (SELECT @P1 AS group_id, @P2 AS node_id, @P3 AS online, @P4 AS bdseq, @P5 AS at, @P6 AS cause) AS s
ON n.node_key = {key}
WHEN MATCHED THEN UPDATE SET
    online = s.online, stale = IIF(s.online = 1, 0, 1),
    bdseq = COALESCE(s.bdseq, n.bdseq),
    last_birth = IIF(s.online = 1, s.at, n.last_birth),
    last_death = IIF(s.online = 1, n.last_death, s.at),
    last_cause = s.cause, updated_at = SYSUTCDATETIME()
WHEN NOT MATCHED THEN INSERT (group_id, node_id, online, stale, bdseq, last_birth, last_death, last_cause, updated_at)
    VALUES (s.group_id, s.node_id, s.online, IIF(s.online = 1, 0, 1), s.bdseq,
            IIF(s.online = 1, s.at, NULL), IIF(s.online = 1, NULL, s.at), s.cause, SYSUTCDATETIME());
IF @P3 = 0
    UPDATE sp_device_state
    SET online = 0, last_death = @P5, last_cause = CONCAT(N'node ', @P6), updated_at = SYSUTCDATETIME()
    OUTPUT inserted.group_id, inserted.node_id, inserted.device_id, 0, inserted.bdseq, @P5, CONCAT(N'node ', @P6)
        INTO sp_state_history (group_id, node_id, device_id, online, bdseq, at, cause)
    WHERE node_key = {param_key} AND online = 1;
INSERT INTO sp_state_history (group_id, node_id, device_id, online, bdseq, at, cause)
    SELECT @P1, @P2, N'', @P3, bdseq, @P5, @P6 FROM sp_node_state WHERE node_key = {param_key};
"#,
        key = series_key(&["s.group_id", "s.node_id"]),
        param_key = series_key(&["@P1", "@P2"]),
    )
}

/// A device's birth or death under its node's current bdSeq, and its
/// history row. @P1 group, @P2 node, @P3 device, @P4 online, @P5 at, @P6 cause.
fn merge_device_state_sql() -> String {
    format!(
        r#"
MERGE sp_device_state WITH (HOLDLOCK) AS d
USING (SELECT @P1 AS group_id, @P2 AS node_id, @P3 AS device_id, @P4 AS online, @P5 AS at, @P6 AS cause,
              (SELECT bdseq FROM sp_node_state WHERE node_key = {node}) AS bdseq) AS s
ON d.device_key = {key}
WHEN MATCHED THEN UPDATE SET
    online = s.online, bdseq = s.bdseq,
    last_birth = IIF(s.online = 1, s.at, d.last_birth),
    last_death = IIF(s.online = 1, d.last_death, s.at),
    last_cause = s.cause, updated_at = SYSUTCDATETIME()
WHEN NOT MATCHED THEN INSERT (group_id, node_id, device_id, online, bdseq, last_birth, last_death, last_cause, updated_at)
    VALUES (s.group_id, s.node_id, s.device_id, s.online, s.bdseq,
            IIF(s.online = 1, s.at, NULL), IIF(s.online = 1, NULL, s.at), s.cause, SYSUTCDATETIME())
OUTPUT inserted.group_id, inserted.node_id, inserted.device_id, inserted.online, inserted.bdseq, s.at, s.cause
    INTO sp_state_history (group_id, node_id, device_id, online, bdseq, at, cause);
"#,
        node = series_key(&["@P1", "@P2"]),
        key = series_key(&["s.group_id", "s.node_id", "s.device_id"]),
    )
}

/// A script's batches: the text between lines that read `GO` (the batch
/// separator of SQL Server's own tools, which the server does not know).
pub fn batches(script: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut at = 0;
    for line in script.split_inclusive('\n') {
        if line.trim().eq_ignore_ascii_case("GO") {
            parts.push(&script[start..at]);
            start = at + line.len();
        }
        at += line.len();
    }
    parts.push(&script[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty())
}

/// One bounded retention delete of `table`'s rows older than @P1 (of one
/// rollup resolution); returns how many went.
fn retention_delete(table: &str, column: &str, resolution: Option<&str>) -> String {
    let only = resolution.map_or(String::new(), |r| format!(" AND bucket_size = '{r}'"));
    format!("SET NOCOUNT ON; DELETE TOP ({DELETE_BATCH}) FROM {table} WHERE {column} < @P1{only}; SELECT @@ROWCOUNT;")
}

/// Every T-SQL text this sink sends, named, for checks by an independent
/// T-SQL parser (`tests/uplink_mssql.rs`).
pub fn statements() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = migrations()
        .into_iter()
        .flat_map(|(n, sql)| {
            let parts: Vec<String> = batches(&sql).map(str::to_string).collect();
            let many = parts.len() > 1;
            parts.into_iter().enumerate().map(move |(i, part)| {
                let name = if many {
                    format!("migration {n}, batch {}", i + 1)
                } else {
                    format!("migration {n}")
                };
                (name, part)
            })
        })
        .collect();
    v.push(("staging tables".into(), staging_ddl()));
    v.push(("fact merge".into(), merge_facts_sql()));
    v.push(("rollup fold".into(), fold_rollups_sql()));
    v.push(("catalog merge".into(), MERGE_CATALOG.to_string()));
    v.push(("node state merge".into(), merge_state_sql()));
    v.push(("device state merge".into(), merge_device_state_sql()));
    v.push(("quarantine insert".into(), INSERT_QUARANTINE.to_string()));
    v.push(("command audit upsert".into(), INSERT_COMMAND.to_string()));
    v.push(("command audit insert".into(), INSERT_COMMAND_SEEN.to_string()));
    v.push(("OEE mark insert".into(), INSERT_OEE_MARK.to_string()));
    v.push(("STALE mark insert".into(), INSERT_STALE.to_string()));
    v.push((
        "retention delete".into(),
        retention_delete("sp_metric_rollup", "bucket", Some("minute")),
    ));
    v
}

/// Days from 0001-01-01 (`datetime2`'s epoch) to 1970-01-01.
const DAYS_TO_UNIX_EPOCH: i64 = 719_162;

/// A Sparkplug timestamp (ms since the Unix epoch, UTC) as `datetime2(3)`.
pub fn datetime2(ms: i64) -> DateTime2 {
    let ms = ms.max(0);
    let days = ms / 86_400_000;
    let in_day = ms % 86_400_000;
    DateTime2::new(
        Date::new((DAYS_TO_UNIX_EPOCH + days) as u32),
        Time::new(in_day as u64, 3),
    )
}

fn text(s: &str) -> ColumnData<'_> {
    ColumnData::String(Some(Cow::Borrowed(s)))
}

/// One fact as a bulk-load row, in [`FACT_COLUMNS`] order.
pub fn fact_row(f: &FactRow) -> TokenRow<'_> {
    let mut r = TokenRow::with_capacity(FACT_COLUMNS.len());
    r.push(text(&f.group));
    r.push(text(&f.node));
    r.push(text(&f.device));
    r.push(text(&f.metric));
    r.push(ColumnData::DateTime2(Some(datetime2(f.ts_ms))));
    r.push(ColumnData::I16(Some(f.datatype)));
    r.push(ColumnData::I64(f.v_int));
    // `float` holds no NaN or infinity: those keep their spelling in v_text.
    let finite = f.v_float.filter(|x| x.is_finite());
    r.push(ColumnData::F64(finite));
    r.push(ColumnData::Bit(f.v_bool));
    let text = match (f.v_float, finite, f.v_text.as_deref()) {
        (Some(x), None, None) => Some(Cow::Owned(x.to_string())),
        (_, _, t) => t.map(Cow::Borrowed),
    };
    r.push(ColumnData::String(text));
    r.push(ColumnData::Binary(f.v_bytes.as_deref().map(Cow::Borrowed)));
    r.push(ColumnData::I32(Some(f.quality)));
    r.push(ColumnData::Bit(Some(f.is_historical)));
    r
}

/// One received message as a bulk-load row, in [`RAW_COLUMNS`] order.
pub fn raw_row(x: &RawRow) -> TokenRow<'_> {
    let mut r = TokenRow::with_capacity(RAW_COLUMNS.len());
    r.push(text(&x.topic));
    r.push(text(&x.kind));
    r.push(ColumnData::I16(x.seq));
    r.push(ColumnData::I64(x.bdseq));
    r.push(ColumnData::DateTime2(Some(datetime2(x.received_ms))));
    r.push(ColumnData::Binary(Some(Cow::Borrowed(&x.payload))));
    r
}

/// One catalog row as a bulk-load row, in [`CATALOG_COLUMNS`] order.
pub fn catalog_row(c: &CatalogRow) -> TokenRow<'_> {
    let mut r = TokenRow::with_capacity(CATALOG_COLUMNS.len());
    r.push(text(&c.group));
    r.push(text(&c.node));
    r.push(text(&c.device));
    r.push(text(&c.metric));
    r.push(ColumnData::I16(Some(c.datatype)));
    r.push(text(&c.properties));
    r.push(ColumnData::DateTime2(Some(datetime2(c.seen_ms))));
    r
}

/// Checks a `database.url` for the mssql backend (an ADO.NET connection
/// string, e.g. `server=tcp:db.plant,1433;database=spb;user id=spb;password=…;encrypt=true`).
/// What the connection string gives up of the safe default (encrypted
/// with TLS, the server's certificate verified): one sentence per
/// weakening, for a WARN at start and in `--check-config`. Keys are
/// case-blind, as in ADO.NET.
pub fn transport_warnings(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in url.split(';') {
        let Some((k, v)) = part.split_once('=') else { continue };
        let (k, v) = (
            k.trim().to_ascii_lowercase(),
            v.trim().trim_matches(|c| c == '\'' || c == '"'),
        );
        match (k.as_str(), v.to_ascii_lowercase().as_str()) {
            ("encrypt", "false" | "no") => out.push(
                "encrypt=false: only the login is encrypted, the data travels in clear; leave encrypt out (TLS, the default)"
                    .to_string(),
            ),
            ("encrypt", "danger_plaintext") => {
                out.push("encrypt=DANGER_PLAINTEXT: nothing is encrypted, not even the password".to_string())
            }
            ("trustservercertificate", "true" | "yes") => out.push(
                "TrustServerCertificate=true: any server certificate is accepted; pin the server's CA with TrustServerCertificateCA=/path/ca.pem instead"
                    .to_string(),
            ),
            _ => {}
        }
    }
    out
}

pub fn parse_url(url: &str) -> Result<Config, MssqlError> {
    let mut c = Config::from_ado_string(url)?;
    c.application_name("spb-uplink");
    Ok(c)
}

type Conn = Client<Compat<TcpStream>>;

/// A connected SQL Server sink.
pub struct MssqlSink {
    client: Conn,
    /// Whether this connection's temp tables exist.
    staged: bool,
    retention: Retention,
    /// A clock the tests set; `None`: the wall clock.
    clock: Option<i64>,
}

impl MssqlSink {
    async fn open(config: &Config) -> Result<Conn, MssqlError> {
        let addr = config.get_addr();
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|source| MssqlError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        Ok(Client::connect(config.clone(), tcp.compat_write()).await?)
    }

    async fn batch(&mut self, sql: &str) -> Result<(), MssqlError> {
        self.client.simple_query(sql).await?.into_results().await?;
        Ok(())
    }
}

impl Sink for MssqlSink {
    type Error = MssqlError;

    /// Connects (following an Azure SQL gateway's redirect once).
    async fn connect(url: &str) -> Result<Self, MssqlError> {
        // tiberius takes the process's rustls provider; ours is ring (docs/CRATES.md).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = parse_url(url)?;
        let client = match Self::open(&config).await {
            Err(MssqlError::Db(tiberius::error::Error::Routing { host, port })) => {
                config.host(&host);
                config.port(port);
                Self::open(&config).await?
            }
            other => other?,
        };
        let mut s = MssqlSink {
            client,
            staged: false,
            retention: Retention::forever(),
            clock: None,
        };
        s.client
            .simple_query("SET XACT_ABORT ON; SET NOCOUNT ON;")
            .await?
            .into_results()
            .await?;
        Ok(s)
    }

    /// Applies the missing migrations; returns the schema version.
    async fn check_schema(&mut self) -> Result<i32, MssqlError> {
        let known = migrations().last().map_or(0, |m| m.0);
        let found: i32 = self
            .client
            .simple_query(
                "IF OBJECT_ID('sp_schema_migrations') IS NULL SELECT 0 \
                 ELSE SELECT COALESCE(MAX(version), 0) FROM sp_schema_migrations",
            )
            .await?
            .into_row()
            .await?
            .and_then(|r| r.get::<i32, _>(0))
            .unwrap_or(0);
        match found.cmp(&known) {
            std::cmp::Ordering::Equal => Ok(found),
            std::cmp::Ordering::Greater => Err(MssqlError::SchemaTooNew { found, known }),
            std::cmp::Ordering::Less => Err(MssqlError::SchemaBehind { found, known }),
        }
    }

    async fn migrate(&mut self) -> Result<i32, MssqlError> {
        self.client.begin_transaction().await?;
        self.batch(
            "EXEC sp_getapplock @Resource = 'spb-uplink-migrate', @LockMode = 'Exclusive', \
             @LockOwner = 'Transaction', @LockTimeout = 60000;
             IF OBJECT_ID('sp_schema_migrations') IS NULL
             CREATE TABLE sp_schema_migrations (version int PRIMARY KEY, \
                 applied_at datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME());",
        )
        .await?;
        let found: i32 = self
            .client
            .simple_query("SELECT COALESCE(MAX(version), 0) FROM sp_schema_migrations")
            .await?
            .into_row()
            .await?
            .and_then(|r| r.get::<i32, _>(0))
            .unwrap_or(0);
        let all = migrations();
        let known = all.last().map_or(0, |m| m.0);
        if found > known {
            self.client.rollback_transaction().await?;
            return Err(MssqlError::SchemaTooNew { found, known });
        }
        for (v, sql) in all.iter().filter(|(v, _)| *v > found) {
            for part in batches(sql) {
                self.batch(part).await?;
            }
            self.client
                .execute("INSERT INTO sp_schema_migrations (version) VALUES (@P1)", &[v])
                .await?;
            tracing::info!(version = v, "database schema migrated");
        }
        self.client.commit_transaction().await?;
        Ok(known)
    }

    /// Writes a batch in one transaction, without the rows the retention
    /// keeps out.
    async fn write(&mut self, b: &Batch) -> Result<Written, MssqlError> {
        let now = self.clock.unwrap_or_else(|| crate::clock::now_ms() as i64);
        match self.retention.trim(b, now) {
            None => self.write_rows(b).await,
            Some((b, expired, ahead)) => Ok(Written {
                expired,
                ahead,
                ..self.write_rows(&b).await?
            }),
        }
    }

    fn set_retention(&mut self, r: &Retention, clock: Option<i64>) {
        self.retention = r.clone();
        self.clock = clock;
    }

    /// Deletes what the retention expired in batches of [`DELETE_BATCH`]
    /// rows, each its own transaction, so the log never holds more than one
    /// batch's deletes and a writer waits at most for one batch; one uplink
    /// runs it at a time (an application lock).
    async fn retain(&mut self, now_ms: i64) -> Result<Retained, MssqlError> {
        let got = self
            .client
            .simple_query(
                "DECLARE @r int; EXEC @r = sp_getapplock @Resource = 'spb-uplink-retain', \
                 @LockMode = 'Exclusive', @LockOwner = 'Session', @LockTimeout = 0; SELECT @r;",
            )
            .await?
            .into_row()
            .await?
            .and_then(|r| r.get::<i32, _>(0))
            .unwrap_or(-1);
        if got < 0 {
            return Ok(Retained {
                skipped: true,
                ..Retained::default()
            });
        }
        let done = self.retain_locked(now_ms).await;
        self.batch("EXEC sp_releaseapplock @Resource = 'spb-uplink-retain', @LockOwner = 'Session';")
            .await?;
        done
    }

    /// Folds `sp_rollup_pending` into the rollups (one transaction; folds
    /// nothing while another connection folds); returns the facts folded.
    async fn fold(&mut self) -> Result<u64, MssqlError> {
        let now = self.clock.unwrap_or_else(|| crate::clock::now_ms() as i64);
        let cut = |r: &'static str| ColumnData::DateTime2(self.retention.cutoff(Class::Rollup(r), now).map(datetime2));
        let (m, h, d) = (cut("minute"), cut("hour"), cut("day"));
        let n = self
            .client
            .query(FOLD_ROLLUPS.as_str(), &[&m, &h, &d])
            .await?
            .into_results()
            .await?
            .into_iter()
            .flatten()
            .last()
            .and_then(|r| r.get::<i64, _>(0))
            .unwrap_or(0);
        Ok(n as u64)
    }

    fn is_closed(&self) -> bool {
        // tiberius notices a dead socket on the next request; the writer
        // drops the sink after any error, so a failed one is never reused.
        false
    }

    /// Server errors about values (conversion, overflow, truncation, bulk
    /// load column data, NULL, keys and constraints), and values tiberius
    /// could not encode.
    fn is_data_error(e: &MssqlError) -> bool {
        match e {
            MssqlError::Db(tiberius::error::Error::Server(t)) => DATA_ERRORS.contains(&t.code()),
            MssqlError::Db(tiberius::error::Error::Conversion(_)) => true,
            _ => false,
        }
    }
}

impl MssqlSink {
    /// Writes a batch in one transaction.
    async fn write_rows(&mut self, b: &Batch) -> Result<Written, MssqlError> {
        let mut out = Written::default();
        if !self.staged {
            self.batch(&staging_ddl()).await?;
            self.staged = true;
        }
        self.client.begin_transaction().await?;
        if !b.raw.is_empty() {
            let mut req = self.client.bulk_insert_columns("sp_event_raw", &RAW_COLUMNS).await?;
            for r in &b.raw {
                req.send(raw_row(r)).await?;
            }
            out.raw = req.finalize().await?.total();
        }
        if !b.facts.is_empty() {
            self.batch("TRUNCATE TABLE #sp_fact_stage").await?;
            let mut req = self.client.bulk_insert_columns("#sp_fact_stage", &FACT_COLUMNS).await?;
            for f in &b.facts {
                req.send(fact_row(f)).await?;
            }
            req.finalize().await?;
            let inserted: i64 = self
                .client
                .simple_query(MERGE_FACTS.as_str())
                .await?
                .into_row()
                .await?
                .and_then(|r| r.get::<i64, _>(0))
                .unwrap_or(0);
            out.facts = inserted as u64;
        }
        if !b.catalog.is_empty() {
            self.batch("TRUNCATE TABLE #sp_catalog_stage").await?;
            let mut req = self
                .client
                .bulk_insert_columns("#sp_catalog_stage", &CATALOG_COLUMNS)
                .await?;
            for c in &b.catalog {
                req.send(catalog_row(c)).await?;
            }
            req.finalize().await?;
            self.batch(MERGE_CATALOG).await?;
        }
        for s in &b.states {
            let at = ColumnData::DateTime2(Some(datetime2(s.at_ms)));
            let (group, node, cause) = (s.group.as_str(), s.node.as_str(), s.cause.as_str());
            if s.device.is_empty() {
                self.client
                    .execute(MERGE_STATE.as_str(), &[&group, &node, &s.online, &s.bdseq, &at, &cause])
                    .await?;
            } else {
                let device = s.device.as_str();
                self.client
                    .execute(
                        MERGE_DEVICE_STATE.as_str(),
                        &[&group, &node, &device, &s.online, &at, &cause],
                    )
                    .await?;
            }
        }
        for q in &b.quarantine {
            let at = ColumnData::DateTime2(Some(datetime2(q.received_ms)));
            let payload = ColumnData::Binary(Some(Cow::Borrowed(&q.payload)));
            self.client
                .execute(
                    INSERT_QUARANTINE,
                    &[&q.topic.as_str(), &at, &payload, &q.reason.as_str()],
                )
                .await?;
        }
        for m in &b.oee {
            let ts = ColumnData::DateTime2(Some(datetime2(m.ts_ms)));
            self.client.execute(INSERT_OEE_MARK, &[&&*m.machine, &ts]).await?;
        }
        for m in &b.stale {
            let ts = ColumnData::DateTime2(Some(datetime2(m.ts_ms)));
            self.client
                .execute(
                    INSERT_STALE.as_str(),
                    &[&&*m.group, &&*m.node, &&*m.device, &&*m.metric, &ts, &m.datatype],
                )
                .await?;
        }
        for c in &b.commands {
            let at = ColumnData::DateTime2(Some(datetime2(c.at_ms)));
            let sent = ColumnData::DateTime2(c.sent_ms.map(datetime2));
            let confirmed = ColumnData::DateTime2(c.confirmed_ms.map(datetime2));
            // A row without a request id (seen on the broker) is never
            // replaced: a plain insert, which the ingest role may do.
            let sql = if c.request_id.is_some() {
                INSERT_COMMAND
            } else {
                INSERT_COMMAND_SEEN
            };
            self.client
                .execute(
                    sql,
                    &[
                        &at,
                        &c.group.as_str(),
                        &c.node.as_str(),
                        &c.device.as_str(),
                        &c.metric.as_str(),
                        &c.value.as_deref(),
                        &c.accepted,
                        &c.reason.as_str(),
                        &c.requested_by.as_str(),
                        &c.request_id.as_deref(),
                        &c.outcome,
                        &sent,
                        &c.confirmed_value.as_deref(),
                        &confirmed,
                    ],
                )
                .await?;
        }
        self.client.commit_transaction().await?;
        Ok(out)
    }

    /// The retention's deletes, table by table, oldest first.
    async fn retain_locked(&mut self, now_ms: i64) -> Result<Retained, MssqlError> {
        let mut out = Retained::default();
        let r = self.retention.clone();
        let mut work: Vec<(String, Option<i64>)> = vec![
            (
                retention_delete("sp_event_raw", "received_at", None),
                r.cutoff(Class::Raw, now_ms),
            ),
            (
                retention_delete("sp_metric_fact", "ts", None),
                r.cutoff(Class::Facts, now_ms),
            ),
        ];
        for res in RESOLUTIONS {
            work.push((
                retention_delete("sp_metric_rollup", "bucket", Some(res)),
                r.cutoff(Class::Rollup(res), now_ms),
            ));
        }
        for (sql, cutoff) in work {
            let Some(cutoff) = cutoff else { continue };
            let before = ColumnData::DateTime2(Some(datetime2(cutoff)));
            loop {
                let n = self
                    .client
                    .query(sql.as_str(), &[&before])
                    .await?
                    .into_row()
                    .await?
                    .and_then(|row| row.get::<i32, _>(0))
                    .unwrap_or(0);
                out.deleted_rows += n.max(0) as u64;
                if (n as i64) < DELETE_BATCH {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// SQL Server error numbers that blame the rows: 220/232/8115 arithmetic
/// overflow, 241/242/245/8114 conversion, 515 NULL, 547 constraint,
/// 2601/2627 duplicate key, 2628/8152 truncation, 4815/4816/4819 bulk load
/// column data.
const DATA_ERRORS: [u32; 16] = [
    220, 232, 241, 242, 245, 515, 547, 2601, 2627, 2628, 4815, 4816, 4819, 8114, 8115, 8152,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_transport_is_tls_with_the_server_certificate_verified_and_weakening_it_is_said() {
        assert!(transport_warnings("server=tcp:db.plant,1433;database=plant;user id=spb;password=x").is_empty());
        assert!(transport_warnings("server=tcp:db,1433;TrustServerCertificateCA=/etc/spb/db-ca.pem").is_empty());
        let w = transport_warnings("server=tcp:db,1433;Encrypt=False;TrustServerCertificate=true");
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("encrypt=false") && w[1].starts_with("TrustServerCertificate=true"),
            "{w:?}"
        );
        // tiberius' own defaults agree: encrypted when encrypt is left out.
        let c = parse_url("server=tcp:db.plant,1433;user id=spb;password=x").expect("valid");
        assert!(format!("{c:?}").contains("Required"), "{c:?}");
    }

    fn ms(y: i32, mo: u8, d: u8, h: u8, mi: u8, s: u8, milli: u16) -> i64 {
        let dt = time::Date::from_calendar_date(y, time::Month::try_from(mo).expect("month"), d)
            .expect("date")
            .with_hms_milli(h, mi, s, milli)
            .expect("time")
            .assume_utc();
        (dt.unix_timestamp_nanos() / 1_000_000) as i64
    }

    #[test]
    fn sparkplug_milliseconds_map_to_datetime2_exactly() {
        let epoch = time::Date::from_calendar_date(1, time::Month::January, 1).expect("0001-01-01");
        for (y, mo, d, h, mi, s, milli) in [
            (1970, 1, 1, 0, 0, 0, 0),
            (2026, 11, 25, 1, 2, 3, 456),
            (2024, 2, 29, 23, 59, 59, 999),
            (2100, 3, 1, 12, 0, 0, 1),
        ] {
            let v = datetime2(ms(y, mo, d, h, mi, s, milli));
            let date = time::Date::from_calendar_date(y, time::Month::try_from(mo).expect("month"), d).expect("date");
            assert_eq!(
                v.date().days() as i64,
                (date - epoch).whole_days(),
                "{y}-{mo}-{d}: days since 0001-01-01"
            );
            assert_eq!(v.time().scale(), 3);
            assert_eq!(
                v.time().increments(),
                ((h as u64 * 60 + mi as u64) * 60 + s as u64) * 1000 + milli as u64,
                "{y}-{mo}-{d} {h}:{mi}:{s}.{milli}: ms since midnight"
            );
        }
        assert_eq!(datetime2(-5).date().days(), 719_162, "before 1970 clamps to the epoch");
    }

    /// The columns a `CREATE TABLE` declares, in order (computed ones skipped).
    fn declared_columns(ddl: &str, table: &str) -> Vec<String> {
        let start = ddl.find(&format!("CREATE TABLE {table} (")).expect("table in DDL");
        let body = &ddl[start..];
        let body = &body[body.find('(').expect("(") + 1..];
        let mut depth = 0;
        let mut cols = Vec::new();
        let mut cur = String::new();
        for ch in body.chars() {
            match ch {
                '(' => depth += 1,
                ')' if depth == 0 => break,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    cols.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(ch);
        }
        cols.push(cur);
        cols.iter()
            .map(|c| c.split_whitespace().next().unwrap_or("").to_string())
            .filter(|c| !c.is_empty() && c != "CONSTRAINT")
            .collect()
    }

    #[test]
    fn bulk_rows_fill_the_staging_and_raw_tables_column_for_column() {
        let stage = declared_columns(&staging_ddl(), "#sp_fact_stage");
        assert_eq!(&stage[..FACT_COLUMNS.len()], FACT_COLUMNS, "staging order");
        assert_eq!(&stage[FACT_COLUMNS.len()..], ["series_key"], "only the key is computed");
        let fact = declared_columns(&migrations()[0].1, "sp_metric_fact");
        assert_eq!(
            &fact[..FACT_COLUMNS.len()],
            FACT_COLUMNS,
            "the fact table has the same columns"
        );
        let raw = declared_columns(&migrations()[0].1, "sp_event_raw");
        assert_eq!(&raw[1..], RAW_COLUMNS, "raw: all but the identity");
        let cat = declared_columns(&staging_ddl(), "#sp_catalog_stage");
        assert_eq!(&cat[..CATALOG_COLUMNS.len()], CATALOG_COLUMNS);

        let mut b = Batch::default();
        b.add_raw("spBv1.0/G/NDATA/N", b"x", 5);
        b.facts.push(FactRow {
            group: "G".into(),
            node: "N".into(),
            device: "".into(),
            metric: "m".into(),
            ts_ms: 1,
            datatype: 10,
            v_int: None,
            v_float: Some(2.5),
            v_bool: None,
            v_text: None,
            v_bytes: None,
            quality: 192,
            is_historical: true,
        });
        let f = fact_row(&b.facts[0]);
        assert_eq!(f.len(), FACT_COLUMNS.len());
        let col = |name: &str| FACT_COLUMNS.iter().position(|c| *c == name).expect("column");
        assert_eq!(f.get(col("v_float")), Some(&ColumnData::F64(Some(2.5))));
        assert_eq!(
            f.get(col("v_int")),
            Some(&ColumnData::I64(None)),
            "absent values are NULL"
        );
        assert_eq!(f.get(col("is_historical")), Some(&ColumnData::Bit(Some(true))));
        assert_eq!(f.get(col("quality")), Some(&ColumnData::I32(Some(192))));
        assert_eq!(raw_row(&b.raw[0]).len(), RAW_COLUMNS.len());
        // SQL Server's float holds no NaN or infinity: NULL, the spelling in v_text.
        for (x, text) in [(f64::NAN, "NaN"), (f64::INFINITY, "inf"), (f64::NEG_INFINITY, "-inf")] {
            let mut nan = b.facts[0].clone();
            nan.v_float = Some(x);
            let r = fact_row(&nan);
            assert_eq!(r.get(col("v_float")), Some(&ColumnData::F64(None)));
            assert_eq!(r.get(col("v_text")), Some(&ColumnData::String(Some(text.into()))));
        }
    }

    #[test]
    fn every_keyed_table_keys_on_the_case_sensitive_hash_of_length_prefixed_names() {
        let k = series_key(&["a", "b"]);
        assert_eq!(
            k,
            "CAST(HASHBYTES('SHA2_256', CONCAT(CAST(DATALENGTH(a) AS varchar(12)), N':', a, N'|', \
             CAST(DATALENGTH(b) AS varchar(12)), N':', b, N'')) AS binary(32))"
        );
        let ddl = &migrations()[0].1;
        for (table, pk) in [
            ("sp_metric_fact", "PRIMARY KEY (series_key, ts)"),
            ("sp_node_state", "PRIMARY KEY (node_key)"),
            ("sp_metric_catalog", "PRIMARY KEY (series_key)"),
            ("sp_metric_rollup", "PRIMARY KEY (bucket_size, bucket, series_key)"),
        ] {
            let body = &ddl[ddl.find(&format!("CREATE TABLE {table} (")).expect(table)..];
            let body = &body[..body.find(");").expect("end")];
            assert!(body.contains(pk), "{table}: {pk}");
            assert!(body.contains("PERSISTED NOT NULL"), "{table}: persisted key");
        }
        // No index anywhere on a names column: SQL Server's 900-byte key limit.
        assert!(!ddl.contains("PRIMARY KEY (group_id"));
    }

    #[test]
    fn a_bad_connection_string_is_refused_before_connecting() {
        assert!(parse_url("server=tcp:db.plant,1433;database=spb;user id=spb;password=x;encrypt=true").is_ok());
        let e = parse_url("server=tcp:db.plant,notaport;database=spb").expect_err("bad port");
        assert!(e.to_string().starts_with("mssql: "), "{e}");
    }

    #[test]
    fn the_merge_keeps_each_sample_once_and_logs_for_the_rollups_only_what_it_inserted() {
        let sql = merge_facts_sql();
        assert!(
            sql.contains("PARTITION BY series_key, ts"),
            "a batch's own duplicates collapse"
        );
        assert!(
            sql.contains("WHEN NOT MATCHED BY TARGET THEN INSERT"),
            "stored facts are never updated"
        );
        assert!(
            !sql.contains("WHEN MATCHED THEN UPDATE SET\n    datatype"),
            "facts are immutable"
        );
        // The pending log takes @ins (the OUTPUT of the insert), never the
        // staging table; the rollups are not touched by the write.
        let pending = &sql[sql.find("INSERT INTO sp_rollup_pending").expect("the pending log")..];
        assert!(pending.contains("FROM @ins") && !pending.contains("#sp_fact_stage"));
        assert!(!sql.contains("sp_metric_rollup"), "no rollup in the write");
        // The fold empties the log into the rollups, in one transaction,
        // one folder at a time.
        let fold = fold_rollups_sql();
        assert!(fold.contains("DELETE FROM sp_rollup_pending") && fold.contains("MERGE sp_metric_rollup"));
        assert!(fold.contains("BEGIN TRANSACTION") && fold.contains("sp_getapplock"));
    }
}
