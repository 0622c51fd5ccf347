-- 0001_initial: the fraiseql_metrics schema, its three roles, partitioned storage and grants.
--
-- Run by fraiseql_obs_sinks.migrate inside one transaction, after the runner created the schema and
-- fraiseql_metrics.schema_migrations (owned by the migrating user until this file hands them over).
-- Every name is schema-qualified: nothing here depends on search_path.
--
-- Roles (cluster-wide NOLOGIN group roles; operators create LOGIN users that are members, e.g.
-- CREATE ROLE sink_eu LOGIN PASSWORD '…' IN ROLE fraiseql_collector):
--   fraiseql_maintainer  owns every object (DDL, partitions, retention). The migrating user becomes a
--                        member when it is not a superuser, because it must SET ROLE to it below.
--   fraiseql_collector   the sink: INSERT, UPDATE of non-key columns, and SELECT only on the columns
--                        INSERT … ON CONFLICT must read (the conflict keys of rollups and
--                        table_stats; all of patterns, whose upsert compares first/last seen and
--                        the SQL shape — no PII by SPEC §3). EXECUTE ensure_partitions. No DELETE,
--                        no TRUNCATE, no DDL, no direct access to partitions.
--   fraiseql_analyst     the analyzer and `stats`: SELECT only.

-- Roles are shared by every database of the cluster, so another database's migration may be
-- creating them at this very moment: the second CREATE ROLE then fails with a unique violation
-- once the first commits, which means "it exists now" and is fine.
DO $roles$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['fraiseql_maintainer', 'fraiseql_collector', 'fraiseql_analyst']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
    -- SET ROLE below (and ALTER … OWNER TO) need membership unless we are a superuser.
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
       AND NOT pg_catalog.pg_has_role(current_user, 'fraiseql_maintainer', 'MEMBER') THEN
        EXECUTE pg_catalog.format('GRANT fraiseql_maintainer TO %I', current_user);
    END IF;
END
$roles$;

ALTER SCHEMA fraiseql_metrics OWNER TO fraiseql_maintainer;
ALTER TABLE fraiseql_metrics.schema_migrations OWNER TO fraiseql_maintainer;
REVOKE ALL ON SCHEMA fraiseql_metrics FROM PUBLIC;

-- Everything below is created by, hence owned by, the maintainer; so are the partitions that
-- ensure_partitions (SECURITY DEFINER) creates later on behalf of the collector.
SET LOCAL ROLE fraiseql_maintainer;

-- Future functions in this schema are not executable by PUBLIC unless granted (PostgreSQL's default
-- is the opposite, which would expose any later SECURITY DEFINER function).
ALTER DEFAULT PRIVILEGES FOR ROLE fraiseql_maintainer IN SCHEMA fraiseql_metrics
    REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- The pattern catalogue: one row per SQL shape. query_name/sql describe the most recent window
-- seen (ties broken by the greatest (query_name, sql) in "C" order, so the result does not depend
-- on delivery order).
CREATE TABLE fraiseql_metrics.patterns (
    fingerprint text PRIMARY KEY,
    query_name  text NOT NULL,
    sql         text NOT NULL,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    CHECK (first_seen <= last_seen)
);

-- One row per closed window per (fingerprint, region, source partition), mirroring
-- schemas/query_rollup.avsc. Rows of the same window from different source partitions are
-- separate (different rollup_id) and are summed by readers; re-deliveries overwrite (same id).
-- Daily RANGE partitions on window_start: retention drops whole days, queries over a period
-- prune to its days. There is deliberately no DEFAULT partition: it could not be dropped by
-- retention, and attaching a new day would have to scan it under lock.
CREATE TABLE fraiseql_metrics.rollups (
    rollup_id             uuid NOT NULL,
    fingerprint           text NOT NULL,
    region                text NOT NULL,
    window_start          timestamptz NOT NULL,
    window_end            timestamptz NOT NULL,
    source_topic          text NOT NULL,
    source_partition      integer NOT NULL,
    first_offset          bigint NOT NULL,
    last_offset           bigint NOT NULL,
    event_count           bigint NOT NULL,
    count                 double precision NOT NULL,
    error_count           double precision NOT NULL,
    cache_hits            double precision NOT NULL,
    rows_sum              double precision NOT NULL,
    exec_sum_ms           double precision NOT NULL,
    exec_min_ms           double precision NOT NULL,
    exec_max_ms           double precision NOT NULL,
    sql_generation_sum_ms double precision NOT NULL,
    db_round_trip_sum_ms  double precision NOT NULL,
    projection_sum_ms     double precision NOT NULL,
    sketch_alpha          double precision NOT NULL,
    sketch_keys           integer[] NOT NULL,
    sketch_weights        double precision[] NOT NULL,
    written_at            timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (rollup_id, window_start),
    CONSTRAINT rollups_window_check CHECK (window_end > window_start),
    CONSTRAINT rollups_sketch_check CHECK (
        sketch_alpha > 0 AND sketch_alpha < 1
        AND pg_catalog.cardinality(sketch_keys) = pg_catalog.cardinality(sketch_weights))
) PARTITION BY RANGE (window_start);

-- Per-pattern drill-down (Grafana p95 by pattern, analyzer evidence): an index range scan.
CREATE INDEX rollups_pattern_idx ON fraiseql_metrics.rollups (fingerprint, region, window_start);
-- Whole-period scans (`stats`, analysis): rows arrive roughly in window order, so a BRIN index is
-- a few pages per day and lets sub-day periods skip most of a partition.
CREATE INDEX rollups_window_brin ON fraiseql_metrics.rollups USING brin (window_start);

-- Table statistics snapshots (schemas/table_stats.avsc), one row per table per snapshot.
-- Partitioned by day like rollups so that retention never deletes rows: snapshots of every table
-- every few minutes from every region add up (and each row carries JSON of all columns and
-- indexes). A partitioned table's primary key must contain the partition key, hence taken_at
-- in it; a snapshot run has one taken_at per table, so (snapshot_id, schema_name, table_name)
-- stays unique in practice and re-deliveries hit the same key.
CREATE TABLE fraiseql_metrics.table_stats (
    snapshot_id  uuid NOT NULL,
    taken_at     timestamptz NOT NULL,
    source       text NOT NULL,
    region       text NOT NULL,
    schema_name  text NOT NULL,
    table_name   text NOT NULL,
    relkind      text NOT NULL,
    row_estimate double precision NOT NULL,
    total_bytes  bigint NOT NULL,
    seq_scans    bigint NOT NULL DEFAULT 0,
    columns      jsonb NOT NULL DEFAULT '[]'::jsonb,
    indexes      jsonb NOT NULL DEFAULT '[]'::jsonb,
    written_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (snapshot_id, schema_name, table_name, taken_at)
) PARTITION BY RANGE (taken_at);

CREATE INDEX table_stats_latest_idx
    ON fraiseql_metrics.table_stats (source, region, schema_name, table_name, taken_at DESC);

-- The newest snapshot of each table per application database and region (what the analyzer
-- usually wants).
CREATE VIEW fraiseql_metrics.table_stats_latest AS
    SELECT DISTINCT ON (source, region, schema_name, table_name) *
    FROM fraiseql_metrics.table_stats
    ORDER BY source, region, schema_name, table_name, taken_at DESC;

-- Creates the missing daily partitions of rollups and table_stats covering [from_ts, to_ts);
-- returns the names it created. SECURITY DEFINER so that the collector, which has no DDL rights,
-- gets partitions for backfilled days; it can do nothing else through it.
--
-- A partition is created standalone and then ATTACHed: ATTACH takes SHARE UPDATE EXCLUSIVE on
-- the parent, which does not block concurrent INSERTs and SELECTs, whereas
-- CREATE TABLE … PARTITION OF takes ACCESS EXCLUSIVE on the parent (blocking every writer and
-- reader until the transaction ends). Days are UTC days whatever the session's TimeZone.
CREATE FUNCTION fraiseql_metrics.ensure_partitions(from_ts timestamptz, to_ts timestamptz)
RETURNS SETOF text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    -- A guard against absurd timestamps: no caller legitimately needs more in one call.
    max_days CONSTANT integer := 1000;
    first_day date;
    last_day  date;
    d_day     date;
    i         integer;
    parent    text;
    part      text;
    part_oid  oid;
    locked    boolean := false;
BEGIN
    IF from_ts IS NULL OR to_ts IS NULL THEN
        RAISE EXCEPTION 'ensure_partitions: from_ts and to_ts must not be NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF to_ts <= from_ts THEN
        RETURN;
    END IF;
    first_day := (from_ts AT TIME ZONE 'UTC')::date;
    last_day := ((to_ts AT TIME ZONE 'UTC') - interval '1 microsecond')::date;
    IF last_day - first_day + 1 > max_days THEN
        RAISE EXCEPTION 'ensure_partitions: % days requested (% .. %), at most % per call',
            last_day - first_day + 1, first_day, last_day, max_days
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    FOR i IN 0 .. (last_day - first_day) LOOP
        d_day := first_day + i;
        FOREACH parent IN ARRAY ARRAY['rollups', 'table_stats'] LOOP
            part := parent || '_p' || to_char(d_day::timestamp, 'YYYYMMDD');
            part_oid := to_regclass('fraiseql_metrics.' || quote_ident(part));
            IF part_oid IS NULL AND NOT locked THEN
                -- Serialize creators (several sinks backfilling the same day), then look again.
                PERFORM pg_advisory_xact_lock(hashtext('fraiseql_metrics.ensure_partitions'));
                locked := true;
                part_oid := to_regclass('fraiseql_metrics.' || quote_ident(part));
            END IF;
            IF part_oid IS NULL THEN
                EXECUTE format(
                    'CREATE TABLE fraiseql_metrics.%I (LIKE fraiseql_metrics.%I'
                    ' INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE'
                    ' INCLUDING COMPRESSION)', part, parent);
                EXECUTE format(
                    'ALTER TABLE fraiseql_metrics.%I ATTACH PARTITION fraiseql_metrics.%I'
                    ' FOR VALUES FROM (%L) TO (%L)',
                    parent, part,
                    to_char(d_day::timestamp, 'YYYY-MM-DD') || ' 00:00:00+00',
                    to_char((d_day + 1)::timestamp, 'YYYY-MM-DD') || ' 00:00:00+00');
                RETURN NEXT 'fraiseql_metrics.' || part;
            ELSIF NOT EXISTS (
                SELECT 1 FROM pg_inherits
                WHERE inhrelid = part_oid
                  AND inhparent = ('fraiseql_metrics.' || quote_ident(parent))::regclass
            ) THEN
                -- Someone detached it by hand: inserts for that day would fail forever.
                RAISE EXCEPTION 'fraiseql_metrics.% exists but is not a partition of %', part, parent
                    USING ERRCODE = 'object_not_in_prerequisite_state',
                          HINT = 'drop it or attach it again, then retry';
            END IF;
        END LOOP;
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION fraiseql_metrics.ensure_partitions(timestamptz, timestamptz) FROM PUBLIC;

-- Grants. Privileges are checked on the partitioned parent only, for rows routed through it, so
-- new partitions need no grants of their own and are not readable or writable directly by
-- anyone but their owner.
GRANT USAGE ON SCHEMA fraiseql_metrics TO fraiseql_collector, fraiseql_analyst;

-- The sink upserts with values passed as parameters (never EXCLUDED.col, which would need
-- SELECT on every column): SELECT is needed on the conflict-target columns only.
GRANT INSERT ON fraiseql_metrics.rollups TO fraiseql_collector;
GRANT SELECT (rollup_id, window_start) ON fraiseql_metrics.rollups TO fraiseql_collector;
GRANT UPDATE (fingerprint, region, window_end, source_topic, source_partition, first_offset,
              last_offset, event_count, count, error_count, cache_hits, rows_sum, exec_sum_ms,
              exec_min_ms, exec_max_ms, sql_generation_sum_ms, db_round_trip_sum_ms,
              projection_sum_ms, sketch_alpha, sketch_keys, sketch_weights, written_at)
    ON fraiseql_metrics.rollups TO fraiseql_collector;

GRANT INSERT ON fraiseql_metrics.table_stats TO fraiseql_collector;
GRANT SELECT (snapshot_id, schema_name, table_name, taken_at)
    ON fraiseql_metrics.table_stats TO fraiseql_collector;
GRANT UPDATE (source, region, relkind, row_estimate, total_bytes, seq_scans, columns, indexes,
              written_at)
    ON fraiseql_metrics.table_stats TO fraiseql_collector;

-- patterns' upsert keeps the earliest first_seen and the latest last_seen and compares the stored
-- SQL shape: it reads every column of the existing row.
GRANT INSERT, SELECT ON fraiseql_metrics.patterns TO fraiseql_collector;
GRANT UPDATE (query_name, sql, first_seen, last_seen) ON fraiseql_metrics.patterns
    TO fraiseql_collector;

GRANT EXECUTE ON FUNCTION fraiseql_metrics.ensure_partitions(timestamptz, timestamptz)
    TO fraiseql_collector;

GRANT SELECT ON fraiseql_metrics.rollups, fraiseql_metrics.patterns, fraiseql_metrics.table_stats,
                fraiseql_metrics.table_stats_latest, fraiseql_metrics.schema_migrations
    TO fraiseql_analyst;
