-- 0005_fold_hourly: very late rollups of days whose minute rows retention already dropped.
--
-- Before this migration such a rollup (a late correction, or a replay, for a day older than
-- minute_retention_days but younger than retention_days) was written to a re-created minute
-- partition while the day's hourly cells stayed frozen (0002), so it was lost at the next
-- retention run. Now the sink folds it into its hourly cell instead:
--
-- * The cell is frozen: refresh_hourly never recomputes cells before the retention horizon, so
--   adding to it is the only way in, and nothing ever recomputes (and so overwrites) the addition.
--   The horizon only moves forward (retention records GREATEST), so a cell is either refreshed
--   from minute rows or folded into, never both.
-- * Idempotent: the cell remembers the ids of the rollups folded into it (folded_rollups). A
--   rollup id always carries the same content (streams/DESIGN.md: every incarnation that emits
--   an aggregate emits the same content under the same id), so a re-delivered rollup whose id is
--   already there is skipped, and the fold is exactly-once. The ledger lives in the cell's row, so
--   it goes with the cell's partition when retention drops it: no table of its own to expire.
-- * Sketches merge bucket-wise (weights of equal keys add), as refresh_hourly merges minute rows.
-- * A rollup of a day whose hourly partition is gone too (older than retention_days: only an old
--   topic replayed into a sink can carry one) has no storage left: it is returned as 'expired'
--   for the sink to count and log, never re-creating what retention dropped.
--
-- The routing decision (minute level or fold) must use the horizon as of the writing transaction:
-- fraiseql_metrics.rollups_horizon() reads it FOR SHARE, so a retention run that moves it waits
-- for the writer's commit (and the writer's refresh then already included the rows the drop
-- removes), or has committed before and the writer folds.

SET LOCAL ROLE fraiseql_maintainer;

ALTER TABLE fraiseql_metrics.rollups_hourly
    ADD COLUMN folded_rollups uuid[] NOT NULL DEFAULT '{}';

CREATE FUNCTION fraiseql_metrics.rollups_horizon()
RETURNS timestamptz
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT r.dropped_before FROM fraiseql_metrics.retention_horizons AS r
    WHERE r.table_name = 'rollups'
    FOR SHARE
$fn$;

-- rollups: a JSON array of minute rollups (the columns of fraiseql_metrics.rollups that an hourly
-- cell sums). Returns one row per rollup that was not folded: (rollup_id, window_start, reason)
-- with reason 'duplicate' (already folded) or 'expired' (no hourly partition for its day).
-- Windows crossing an hour boundary belong to no cell and are refused (the sink keeps those at
-- the minute level).
CREATE FUNCTION fraiseql_metrics.fold_hourly(rollups jsonb)
RETURNS TABLE (rollup_id uuid, window_start timestamptz, reason text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    max_rollups CONSTANT integer := 1000000;
    horizon timestamptz;
    r record;
    h timestamptz;
    cell fraiseql_metrics.rollups_hourly%ROWTYPE;
    mk integer[];
    mw double precision[];
BEGIN
    IF rollups IS NULL OR jsonb_typeof(rollups) <> 'array' THEN
        RAISE EXCEPTION 'fold_hourly: a JSON array of rollups expected'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_array_length(rollups) > max_rollups THEN
        RAISE EXCEPTION 'fold_hourly: % rollups, at most % per call',
            jsonb_array_length(rollups), max_rollups
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    SELECT fraiseql_metrics.rollups_horizon() INTO horizon;

    -- Cells in a fixed order: concurrent sinks lock them in the same order (no deadlocks).
    FOR r IN
        SELECT x.*
        FROM jsonb_to_recordset(rollups) AS x(
            rollup_id uuid, window_start timestamptz, window_end timestamptz, fingerprint text,
            region text, sketch_alpha double precision, event_count bigint,
            count double precision, error_count double precision, cache_hits double precision,
            rows_sum double precision, exec_sum_ms double precision,
            exec_min_ms double precision, exec_max_ms double precision,
            sql_generation_sum_ms double precision, db_round_trip_sum_ms double precision,
            projection_sum_ms double precision, sketch_keys integer[],
            sketch_weights double precision[])
        ORDER BY x.fingerprint COLLATE "C", x.region COLLATE "C", x.window_start,
                 x.sketch_alpha, x.rollup_id
    LOOP
        h := date_bin('1 hour', r.window_start, '2000-01-01 00:00:00+00');
        IF r.rollup_id IS NULL OR r.fingerprint IS NULL OR r.region IS NULL
           OR r.sketch_alpha IS NULL OR r.window_end IS NULL OR r.window_end > h + interval '1 hour'
           OR cardinality(r.sketch_keys) IS DISTINCT FROM cardinality(r.sketch_weights) THEN
            RAISE EXCEPTION 'fold_hourly: rollup % of % cannot be folded (incomplete, or its window'
                ' crosses an hour)', r.rollup_id, r.window_start
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF horizon IS NULL OR h >= horizon THEN
            RAISE EXCEPTION 'fold_hourly: hour % still has its minute rows (horizon %)', h, horizon
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'write it as a minute rollup';
        END IF;
        IF to_regclass('fraiseql_metrics.'
                       || quote_ident('rollups_hourly_p' || to_char(h AT TIME ZONE 'UTC', 'YYYYMMDD')))
           IS NULL THEN
            rollup_id := r.rollup_id; window_start := r.window_start; reason := 'expired';
            RETURN NEXT;
            CONTINUE;
        END IF;

        INSERT INTO fraiseql_metrics.rollups_hourly AS t
            (fingerprint, region, hour_start, sketch_alpha, windows, event_count, count,
             error_count, cache_hits, rows_sum, exec_sum_ms, exec_min_ms, exec_max_ms,
             sql_generation_sum_ms, db_round_trip_sum_ms, projection_sum_ms, sketch_keys,
             sketch_weights)
        VALUES (r.fingerprint, r.region, h, r.sketch_alpha, 0, 0, 0, 0, 0, 0, 0,
                'Infinity', '-Infinity', 0, 0, 0, '{}', '{}')
        ON CONFLICT DO NOTHING;
        SELECT t.* INTO cell
        FROM fraiseql_metrics.rollups_hourly AS t
        WHERE t.fingerprint = r.fingerprint AND t.region = r.region AND t.hour_start = h
          AND t.sketch_alpha = r.sketch_alpha
        FOR UPDATE;
        IF r.rollup_id = ANY (cell.folded_rollups) THEN
            rollup_id := r.rollup_id; window_start := r.window_start; reason := 'duplicate';
            RETURN NEXT;
            CONTINUE;
        END IF;

        SELECT coalesce(array_agg(q.key ORDER BY q.key), '{}'),
               coalesce(array_agg(q.weight ORDER BY q.key), '{}')
        INTO mk, mw
        FROM (SELECT u.key, sum(u.weight) AS weight
              FROM (SELECT unnest(cell.sketch_keys) AS key, unnest(cell.sketch_weights) AS weight
                    UNION ALL
                    SELECT unnest(r.sketch_keys), unnest(r.sketch_weights)) AS u
              GROUP BY u.key) AS q;

        UPDATE fraiseql_metrics.rollups_hourly AS t
        SET windows = t.windows + 1,
            event_count = t.event_count + r.event_count,
            count = t.count + r.count,
            error_count = t.error_count + r.error_count,
            cache_hits = t.cache_hits + r.cache_hits,
            rows_sum = t.rows_sum + r.rows_sum,
            exec_sum_ms = t.exec_sum_ms + r.exec_sum_ms,
            exec_min_ms = LEAST(t.exec_min_ms, r.exec_min_ms),
            exec_max_ms = GREATEST(t.exec_max_ms, r.exec_max_ms),
            sql_generation_sum_ms = t.sql_generation_sum_ms + r.sql_generation_sum_ms,
            db_round_trip_sum_ms = t.db_round_trip_sum_ms + r.db_round_trip_sum_ms,
            projection_sum_ms = t.projection_sum_ms + r.projection_sum_ms,
            sketch_keys = mk,
            sketch_weights = mw,
            folded_rollups = t.folded_rollups || r.rollup_id,
            -- A new refreshed_at also invalidates the analyzer's cached day (0004).
            refreshed_at = now()
        WHERE t.fingerprint = r.fingerprint AND t.region = r.region AND t.hour_start = h
          AND t.sketch_alpha = r.sketch_alpha;
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION fraiseql_metrics.rollups_horizon() FROM PUBLIC;
REVOKE ALL ON FUNCTION fraiseql_metrics.fold_hourly(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fraiseql_metrics.rollups_horizon() TO fraiseql_collector;
GRANT EXECUTE ON FUNCTION fraiseql_metrics.fold_hourly(jsonb) TO fraiseql_collector;
