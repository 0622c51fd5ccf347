-- 0004_analysis_cache: merged sketches per pattern and closed UTC day, for long analyses.
--
-- A 14-day analysis of 1,000 patterns in 2 regions merges ~38M sketch buckets from the hourly
-- cells (672,000 cells) — about 15 s on a 2-core machine, all of it in the bucket-wise merge.
-- Past days do not change (except through a replay/backfill, which refreshes their hourly
-- cells), so the scheduler keeps one merged sketch per (day, pattern) here and `analyze` reads
-- those instead of the day's 48,000 cells. A cached day is used only while its hourly cells are
-- exactly as they were when it was built: same number of cells, same latest refreshed_at (every
-- refresh of a cell sets it to now()); otherwise the day is read from the hourly cells again.
--
-- Written by fraiseql_scheduler (analyzer/cache.py), read by fraiseql_analyst. Small: one row per
-- pattern per day; the scheduler deletes days past retention_days.

SET LOCAL ROLE fraiseql_maintainer;

CREATE TABLE fraiseql_metrics.analysis_cached_days (
    day                 date PRIMARY KEY,
    source_cells        bigint NOT NULL,  -- hourly cells of the day when it was cached
    source_refreshed_at timestamptz,  -- their latest refreshed_at (NULL: no cell)
    built_at            timestamptz NOT NULL DEFAULT pg_catalog.now()
);

CREATE TABLE fraiseql_metrics.analysis_daily_sketches (
    day            date NOT NULL
        REFERENCES fraiseql_metrics.analysis_cached_days ON DELETE CASCADE,
    fingerprint    text NOT NULL,
    sketch_alpha   double precision NOT NULL,
    count          double precision NOT NULL,  -- weighted executions (all regions)
    sketch_keys    integer[] NOT NULL,
    sketch_weights double precision[] NOT NULL,
    PRIMARY KEY (day, fingerprint, sketch_alpha),
    CHECK (pg_catalog.cardinality(sketch_keys) = pg_catalog.cardinality(sketch_weights))
);

GRANT SELECT, INSERT, UPDATE, DELETE ON fraiseql_metrics.analysis_cached_days,
    fraiseql_metrics.analysis_daily_sketches TO fraiseql_scheduler;
GRANT SELECT ON fraiseql_metrics.analysis_cached_days, fraiseql_metrics.analysis_daily_sketches
    TO fraiseql_analyst;
