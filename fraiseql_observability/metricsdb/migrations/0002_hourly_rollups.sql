-- 0002_hourly_rollups: the hourly roll-up level, kept exact and idempotent by the sink.
--
-- Long periods (a 7-day analysis, a 30-day dashboard) would otherwise merge ~60 × 6 minute rows
-- per pattern, region and hour. fraiseql_metrics.rollups_hourly holds one row per
-- (fingerprint, region, UTC hour, sketch alpha): the sums, min/max and the bucket-wise merged
-- sketch of every minute rollup whose window lies inside that hour, across source partitions.
-- Merging sketches adds bucket weights, so percentiles read from an hourly row are exactly those
-- of the merged minute sketches (same buckets, same weights).
--
-- How it stays right (see sinks/writer.py): in the very transaction that upserts a batch of minute
-- rollups, the sink calls refresh_hourly() for the (fingerprint, region, hour, alpha) cells the
-- batch touched, which RECOMPUTES those cells from the minute rows. A recomputation is a function
-- of the minute rows alone, so re-delivered, duplicated, reordered or late rollups all end in the
-- same hourly row; folding a batch into the hourly row incrementally would double-count a
-- re-delivery. Concurrent sinks writing the same cell are serialized by the cell's row lock, taken
-- before the recomputation reads the minute rows; under READ COMMITTED that read then sees every
-- minute row committed by the others, so the last refresh of a cell always sees all its rows.
--
-- Windows that cross an hour boundary (only with a window size that does not divide an hour)
-- belong to no cell; readers take them from the minute level (partial index below).

SET LOCAL ROLE fraiseql_maintainer;

CREATE TABLE fraiseql_metrics.rollups_hourly (
    fingerprint           text NOT NULL,
    region                text NOT NULL,
    hour_start            timestamptz NOT NULL,
    sketch_alpha          double precision NOT NULL,
    windows               integer NOT NULL,  -- minute rollups merged into this row
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
    sketch_keys           integer[] NOT NULL,
    sketch_weights        double precision[] NOT NULL,
    refreshed_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (fingerprint, region, hour_start, sketch_alpha),
    CONSTRAINT rollups_hourly_hour_check CHECK (
        pg_catalog.date_bin('1 hour', hour_start, '2000-01-01 00:00:00+00') = hour_start),
    CONSTRAINT rollups_hourly_sketch_check CHECK (
        sketch_alpha > 0 AND sketch_alpha < 1
        AND pg_catalog.cardinality(sketch_keys) = pg_catalog.cardinality(sketch_weights))
) PARTITION BY RANGE (hour_start);

-- The primary key serves per-pattern drill-down; whole-period scans get a BRIN index (cells are
-- refreshed roughly in hour order).
CREATE INDEX rollups_hourly_hour_brin ON fraiseql_metrics.rollups_hourly USING brin (hour_start);

-- Minute windows that cross an hour boundary: empty with the standard 1-minute windows, so this
-- costs nothing, and lets readers combining both levels find the few windows no cell holds
-- without scanning the minute rows of the hours they read from rollups_hourly.
CREATE INDEX rollups_cross_hour_idx ON fraiseql_metrics.rollups (window_start)
    WHERE window_end - pg_catalog.date_bin('1 hour', window_start, '2000-01-01 00:00:00+00')
          > interval '1 hour';

-- Retention may keep minute rollups for a shorter time than hourly ones. Once the minute rows of
-- a day are dropped its hourly cells can no longer be recomputed from them: they are frozen.
-- Retention records here, per table, the time before which partitions were dropped.
CREATE TABLE fraiseql_metrics.retention_horizons (
    table_name     text PRIMARY KEY,
    dropped_before timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Same function as in 0001, now creating the daily partitions of rollups_hourly too.
CREATE OR REPLACE FUNCTION fraiseql_metrics.ensure_partitions(from_ts timestamptz, to_ts timestamptz)
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
        FOREACH parent IN ARRAY ARRAY['rollups', 'rollups_hourly', 'table_stats'] LOOP
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

-- Recomputes the given (fingerprint, region, hour, alpha) cells of rollups_hourly from the minute
-- rollups; returns how many cells hold data afterwards. The four arrays are parallel; duplicates
-- are fine. SECURITY DEFINER so that the collector, which may not read rollups, can keep the
-- derived level current; all it can do through it is make cells agree with the minute rows.
--
-- Steps: (1) insert a placeholder for each new cell, so that there is a row to lock even for a
-- cell two sinks create at once (the second waits on the first's insert); (2) lock the cells in a
-- fixed order (no deadlocks between sinks); (3) recompute them in a new statement, whose snapshot
-- includes every minute row committed before the locks were granted; (4) remove placeholders of
-- cells that turned out to have no minute rows. Sums are fed in rollup_id order (sorted subqueries
-- with nothing but the aggregation above them), so the same minute rows give bit-identical cells.
CREATE FUNCTION fraiseql_metrics.refresh_hourly(
    fingerprints text[], regions text[], hours timestamptz[], alphas double precision[])
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    -- A batch of the sink touches at most one cell per rollup (sinks.batch_size <= 1,000,000).
    max_cells CONSTANT integer := 1000000;
    horizon timestamptz;
    fs text[];
    rs text[];
    hs timestamptz[];
    als double precision[];
    refreshed integer;
BEGIN
    IF fingerprints IS NULL OR regions IS NULL OR hours IS NULL OR alphas IS NULL
       OR cardinality(regions) <> cardinality(fingerprints)
       OR cardinality(hours) <> cardinality(fingerprints)
       OR cardinality(alphas) <> cardinality(fingerprints) THEN
        RAISE EXCEPTION 'refresh_hourly: four arrays of equal length expected'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(fingerprints) > max_cells THEN
        RAISE EXCEPTION 'refresh_hourly: % cells, at most % per call',
            cardinality(fingerprints), max_cells
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(hours) AS x(h)
               WHERE x.h IS NULL OR date_bin('1 hour', x.h, '2000-01-01 00:00:00+00') <> x.h) THEN
        RAISE EXCEPTION 'refresh_hourly: hours must be whole UTC hours'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Cells of days whose minute rows retention dropped are frozen (see retention_horizons).
    SELECT r.dropped_before INTO horizon
    FROM fraiseql_metrics.retention_horizons AS r WHERE r.table_name = 'rollups';

    SELECT array_agg(d.f ORDER BY d.f COLLATE "C", d.r COLLATE "C", d.h, d.a),
           array_agg(d.r ORDER BY d.f COLLATE "C", d.r COLLATE "C", d.h, d.a),
           array_agg(d.h ORDER BY d.f COLLATE "C", d.r COLLATE "C", d.h, d.a),
           array_agg(d.a ORDER BY d.f COLLATE "C", d.r COLLATE "C", d.h, d.a)
    INTO fs, rs, hs, als
    FROM (SELECT DISTINCT c.f, c.r, c.h, c.a
          FROM unnest(fingerprints, regions, hours, alphas) AS c(f, r, h, a)
          WHERE c.f IS NOT NULL AND c.r IS NOT NULL AND c.a IS NOT NULL
            AND (horizon IS NULL OR c.h >= horizon)) AS d;
    IF fs IS NULL THEN
        RETURN 0;
    END IF;

    INSERT INTO fraiseql_metrics.rollups_hourly AS t
        (fingerprint, region, hour_start, sketch_alpha, windows, event_count, count, error_count,
         cache_hits, rows_sum, exec_sum_ms, exec_min_ms, exec_max_ms, sql_generation_sum_ms,
         db_round_trip_sum_ms, projection_sum_ms, sketch_keys, sketch_weights)
    SELECT c.f, c.r, c.h, c.a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '{}', '{}'
    FROM unnest(fs, rs, hs, als) WITH ORDINALITY AS c(f, r, h, a, n)
    ORDER BY c.n
    ON CONFLICT DO NOTHING;

    PERFORM 1
    FROM fraiseql_metrics.rollups_hourly AS t
    JOIN unnest(fs, rs, hs, als) WITH ORDINALITY AS c(f, r, h, a, n)
      ON t.fingerprint = c.f AND t.region = c.r AND t.hour_start = c.h AND t.sketch_alpha = c.a
    ORDER BY c.n
    FOR UPDATE OF t;

    -- One cell at a time (LATERAL): each is an index range scan of its minute rows, whatever the
    -- planner believes about the size of the batch (a hash or merge plan over whole partitions,
    -- or an aggregate re-run per cell, is what misestimates produce otherwise).
    UPDATE fraiseql_metrics.rollups_hourly AS t
    SET windows = x.windows,
        event_count = x.event_count,
        count = x.count,
        error_count = x.error_count,
        cache_hits = x.cache_hits,
        rows_sum = x.rows_sum,
        exec_sum_ms = x.exec_sum_ms,
        exec_min_ms = x.exec_min_ms,
        exec_max_ms = x.exec_max_ms,
        sql_generation_sum_ms = x.sql_generation_sum_ms,
        db_round_trip_sum_ms = x.db_round_trip_sum_ms,
        projection_sum_ms = x.projection_sum_ms,
        sketch_keys = coalesce(x.keys, '{}'),
        sketch_weights = coalesce(x.weights, '{}'),
        refreshed_at = now()
    FROM (
        SELECT c.f, c.r, c.h, c.a, tot.*, sk.*
        FROM unnest(fs, rs, hs, als) AS c(f, r, h, a)
        CROSS JOIN LATERAL (
            SELECT count(*) AS windows,
                   sum(m.event_count) AS event_count,
                   sum(m.count) AS count,
                   sum(m.error_count) AS error_count,
                   sum(m.cache_hits) AS cache_hits,
                   sum(m.rows_sum) AS rows_sum,
                   sum(m.exec_sum_ms) AS exec_sum_ms,
                   min(m.exec_min_ms) AS exec_min_ms,
                   max(m.exec_max_ms) AS exec_max_ms,
                   sum(m.sql_generation_sum_ms) AS sql_generation_sum_ms,
                   sum(m.db_round_trip_sum_ms) AS db_round_trip_sum_ms,
                   sum(m.projection_sum_ms) AS projection_sum_ms
            -- Sorted input, one aggregation level above it: the sums add in rollup_id order
            -- (one sort per cell instead of one per sum).
            FROM (SELECT * FROM fraiseql_metrics.rollups AS r
                  WHERE r.fingerprint = c.f AND r.region = c.r AND r.sketch_alpha = c.a
                    AND r.window_start >= c.h AND r.window_start < c.h + interval '1 hour'
                    AND r.window_end <= c.h + interval '1 hour'
                  ORDER BY r.rollup_id, r.window_start) AS m
        ) AS tot
        CROSS JOIN LATERAL (
            SELECT array_agg(q.key ORDER BY q.key) AS keys,
                   array_agg(q.weight ORDER BY q.key) AS weights
            FROM (
                SELECT u.key, sum(u.weight) AS weight
                -- unnest() in the select list (one ProjectSet node) costs a fraction of a
                -- LATERAL function scan per minute row; equal-length arrays zip pairwise.
                FROM (SELECT e.key, e.weight
                      FROM (SELECT r.rollup_id, r.window_start,
                                   unnest(r.sketch_keys) AS key, unnest(r.sketch_weights) AS weight
                            FROM fraiseql_metrics.rollups AS r
                            WHERE r.fingerprint = c.f AND r.region = c.r AND r.sketch_alpha = c.a
                              AND r.window_start >= c.h
                              AND r.window_start < c.h + interval '1 hour'
                              AND r.window_end <= c.h + interval '1 hour') AS e
                      ORDER BY e.key, e.rollup_id, e.window_start) AS u
                GROUP BY u.key
            ) AS q
        ) AS sk
    ) AS x
    WHERE t.fingerprint = x.f AND t.region = x.r AND t.hour_start = x.h AND t.sketch_alpha = x.a
      AND x.windows > 0;
    GET DIAGNOSTICS refreshed = ROW_COUNT;

    DELETE FROM fraiseql_metrics.rollups_hourly AS t
    USING unnest(fs, rs, hs, als) AS c(f, r, h, a)
    WHERE t.fingerprint = c.f AND t.region = c.r AND t.hour_start = c.h AND t.sketch_alpha = c.a
      AND t.windows = 0;
    RETURN refreshed;
END
$fn$;

REVOKE ALL ON FUNCTION fraiseql_metrics.refresh_hourly(text[], text[], timestamptz[],
                                                       double precision[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fraiseql_metrics.refresh_hourly(text[], text[], timestamptz[],
                                                          double precision[])
    TO fraiseql_collector;

GRANT SELECT ON fraiseql_metrics.rollups_hourly, fraiseql_metrics.retention_horizons
    TO fraiseql_analyst;

-- Databases migrated before this level existed: give their existing days hourly partitions and
-- fill every cell from the minute rows already stored (one-off; new writes keep it current).
-- Day by day, so that one call never exceeds refresh_hourly's cell limit. Interval arithmetic in
-- hours, never days: a day is 24 hours whatever the session's TimeZone.
DO $backfill$
DECLARE
    d timestamptz;
BEGIN
    FOR d IN
        SELECT DISTINCT date_bin('24 hours', window_start, '2000-01-01 00:00:00+00')
        FROM fraiseql_metrics.rollups ORDER BY 1
    LOOP
        PERFORM fraiseql_metrics.ensure_partitions(d, d + interval '24 hours');
        PERFORM fraiseql_metrics.refresh_hourly(
            coalesce(array_agg(c.fingerprint), '{}'), coalesce(array_agg(c.region), '{}'),
            coalesce(array_agg(c.hour_start), '{}'), coalesce(array_agg(c.sketch_alpha), '{}'))
        FROM (SELECT DISTINCT fingerprint, region, sketch_alpha,
                     date_bin('1 hour', window_start, '2000-01-01 00:00:00+00') AS hour_start
              FROM fraiseql_metrics.rollups
              WHERE window_start >= d AND window_start < d + interval '24 hours'
                AND window_end <= date_bin('1 hour', window_start, '2000-01-01 00:00:00+00')
                                  + interval '1 hour') AS c;
    END LOOP;
END
$backfill$;
