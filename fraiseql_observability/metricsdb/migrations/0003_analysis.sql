-- 0003_analysis: analysis runs, their suggestions, and the schema changes seen applied since.
--
-- Written by the scheduled analyzer (`fraiseql-cli schedule`); read by `analyze` (impact
-- tracking links an index that appeared to the suggestion that proposed it) and by dashboards.
-- Small tables (one run a week, a few dozen suggestions each): not partitioned.
--
-- Roles:
--   fraiseql_scheduler  new NOLOGIN group role for the scheduler: a member of fraiseql_analyst
--                       (reads everything the analyzer reads) plus INSERT on the runs and
--                       suggestions and INSERT/UPDATE on applied_changes. Nothing else: no DELETE,
--                       no DDL. The scheduler also runs retention, which drops partitions and so
--                       needs fraiseql_maintainer; an operator who runs retention elsewhere gives
--                       the scheduler's login only fraiseql_scheduler.
--   fraiseql_analyst    SELECT on the three tables.

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'fraiseql_scheduler') THEN
        BEGIN
            CREATE ROLE fraiseql_scheduler NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database's migration created it meanwhile (roles are cluster-wide)
        END;
    END IF;
END
$roles$;

GRANT fraiseql_analyst TO fraiseql_scheduler;

SET LOCAL ROLE fraiseql_maintainer;

CREATE TABLE fraiseql_metrics.analysis_runs (
    run_id                uuid PRIMARY KEY,
    analyzed_at           timestamptz NOT NULL,
    window_start          timestamptz NOT NULL,
    window_end            timestamptz NOT NULL,
    total_executions      double precision NOT NULL,
    unique_queries        integer NOT NULL,
    avg_execution_time_ms double precision NOT NULL,
    suggestion_count      integer NOT NULL,
    high_priority_count   integer NOT NULL,  -- critical + high
    validation            text NOT NULL,  -- 'hypopg' or 'model'
    report                jsonb NOT NULL,  -- the `analyze --format json` document
    recorded_by           text NOT NULL DEFAULT pg_catalog.session_user(),
    CHECK (window_start < window_end)
);
CREATE INDEX analysis_runs_analyzed_at_idx ON fraiseql_metrics.analysis_runs (analyzed_at DESC);

-- One row per suggestion per run. suggestion_id is stable across runs (a digest of type, table
-- and keys), so the history of one suggestion is a scan of suggestions_id_idx.
CREATE TABLE fraiseql_metrics.suggestions (
    run_id            uuid NOT NULL REFERENCES fraiseql_metrics.analysis_runs ON DELETE CASCADE,
    suggestion_id     text NOT NULL,
    rank              integer NOT NULL,
    type              text NOT NULL
        CHECK (type IN ('denormalize', 'add_index', 'drop_index', 'materialize_view')),
    priority          text NOT NULL CHECK (priority IN ('critical', 'high', 'medium', 'low')),
    schema_name       text NOT NULL,
    table_name        text NOT NULL,
    new_column        text,
    queries_per_day   double precision NOT NULL,
    estimated_speedup double precision NOT NULL,
    current_p95_ms    double precision,
    projected_p95_ms  double precision,
    storage_mb        double precision NOT NULL,
    is_new            boolean NOT NULL,  -- absent from the previous run
    document          jsonb NOT NULL,  -- the suggestion's object of the JSON report
    PRIMARY KEY (run_id, suggestion_id)
);
CREATE INDEX suggestions_id_idx ON fraiseql_metrics.suggestions (suggestion_id);

-- Applied-migration records: an index or column that appeared in the table statistics, first
-- detected by a run, with the before/after p95 of the patterns it affects (refreshed each run).
CREATE TABLE fraiseql_metrics.applied_changes (
    schema_name        text NOT NULL,
    table_name         text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('index', 'column')),
    object_name        text NOT NULL,
    definition         text NOT NULL,
    applied_after      timestamptz,  -- last snapshot without it
    applied_before     timestamptz NOT NULL,  -- first snapshot with it
    suggestion_id      text,
    first_detected_run uuid REFERENCES fraiseql_metrics.analysis_runs ON DELETE SET NULL,
    detected_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    impact             jsonb NOT NULL DEFAULT '[]'::jsonb,
    PRIMARY KEY (schema_name, table_name, kind, object_name)
);

GRANT USAGE ON SCHEMA fraiseql_metrics TO fraiseql_scheduler;
GRANT INSERT ON fraiseql_metrics.analysis_runs, fraiseql_metrics.suggestions
    TO fraiseql_scheduler;
GRANT INSERT, UPDATE ON fraiseql_metrics.applied_changes TO fraiseql_scheduler;
GRANT SELECT ON fraiseql_metrics.analysis_runs, fraiseql_metrics.suggestions,
                fraiseql_metrics.applied_changes
    TO fraiseql_analyst;
