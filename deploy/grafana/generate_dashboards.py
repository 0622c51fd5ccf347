#!/usr/bin/env python3
"""Writes the Grafana dashboards of deploy/grafana/dashboards/ (run it after editing this file).

The dashboards are generated rather than hand-edited because the query-performance panels share
one long SQL core (merging quantile sketches) that must stay identical everywhere, and because
tests/test_deploy_prometheus.py checks that the committed JSON is exactly what this file produces.

Datasources are referenced through dashboard variables (``${prometheus}``, ``${metricsdb}``) whose
defaults are the uids provisioned in deploy/grafana/provisioning/datasources/, so the JSON works
both provisioned and imported by hand into a Grafana with other datasource names.

Where each number comes from:

* Pipeline health, throughput, lags, storage write rates: Prometheus, from every process's
  /metrics (the names of SPEC §7).
* Latency per pattern and region (p50/p95/p99): the metrics database. Prometheus has no
  per-pattern latency (a label per SQL fingerprint would be unbounded cardinality, and the code
  exports none); the rollups hold a mergeable sketch per pattern, region and minute, and a
  percentile over any period must come from merging them, never from averaging percentiles
  (SPEC §6). The SQL below merges them in PostgreSQL exactly like fraiseql_obs_analyzer.stats (bucket
  weights summed per key; sketches of different accuracy re-keyed into the coarsest one), then
  reads the weighted lower quantile with the rule of fraiseql_observability/sketch.py.
  The datasource should log in as a member of ``fraiseql_analyst`` (read only).

Usage: ``python3 deploy/grafana/generate_dashboards.py [--check]``.
"""

# S608: the SQL here is Grafana query text assembled from this file's constants; no value from an
# event or a user is ever formatted into it (Grafana quotes its variables' values itself).
# ruff: noqa: S608

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "dashboards"

PROMETHEUS_UID = "fraiseql-prometheus"
METRICS_DB_UID = "fraiseql-metrics-db"
PROM = {"type": "prometheus", "uid": "${prometheus}"}
PG = {"type": "grafana-postgresql-datasource", "uid": "${metricsdb}"}

ZERO_KEY = -(2**31)  # fraiseql_observability.sketch.ZERO_KEY: values below 1 ns
MIN_VALUE = 1e-6  # fraiseql_observability.sketch.MIN_VALUE

# --- SQL -----------------------------------------------------------------------------------------

_ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
_COLUMNS = ("fingerprint, region, count, error_count, exec_sum_ms, sketch_alpha, sketch_keys, "
            "sketch_weights")

# The closed windows inside the dashboard's time range, as fraiseql_obs_analyzer.stats reads them: from the
# minute rollups, or — for periods of 6 hours or more (stats.HOURLY_LEVEL_FROM) — whole hours from
# fraiseql_metrics.rollups_hourly plus the minute windows of the ragged edges and those crossing
# an hour boundary. The hourly level matters twice: a week is ~170 rows per pattern and region
# instead of ~10,000, and past the minute level's retention only the hourly cells are left.
# Time series read the hourly level only when their bucket is an hour or more (a 5-minute bucket
# needs minute rows). Hourly cells appear as windows [hour_start, hour_start + 1 h).
RANGE_HOURLY = "t1 - t0 >= INTERVAL '6 hours'"
SERIES_HOURLY = f"{RANGE_HOURLY} AND INTERVAL '$bucket' >= INTERVAL '1 hour'"


def levels_ctes(hourly_when: str) -> str:
    minute = f"SELECT m.window_start, m.window_end, {', '.join('m.' + c for c in _COLUMNS.split(', '))}"
    return f"""bounds AS (
    SELECT t0, t1,
           CASE WHEN {hourly_when}
                THEN date_bin('1 hour', t0 - INTERVAL '1 microsecond', {_ORIGIN}) + INTERVAL '1 hour'
                ELSE t1 END AS h0,
           CASE WHEN {hourly_when} THEN date_bin('1 hour', t1, {_ORIGIN}) ELSE t1 END AS h1
    FROM (SELECT $__timeFrom()::timestamptz AS t0, $__timeTo()::timestamptz AS t1) AS period
),
levels AS (
    SELECT h.hour_start AS window_start, h.hour_start + INTERVAL '1 hour' AS window_end,
           {', '.join('h.' + c for c in _COLUMNS.split(', '))}
    FROM fraiseql_metrics.rollups_hourly AS h
    WHERE h.hour_start >= (SELECT h0 FROM bounds) AND h.hour_start < (SELECT h1 FROM bounds)
    UNION ALL
    {minute}
    FROM fraiseql_metrics.rollups AS m
    WHERE m.window_start >= (SELECT t0 FROM bounds) AND m.window_start < (SELECT h0 FROM bounds)
      AND m.window_end <= (SELECT t1 FROM bounds)
    UNION ALL
    {minute}
    FROM fraiseql_metrics.rollups AS m
    WHERE m.window_start >= (SELECT h1 FROM bounds) AND m.window_start < (SELECT t1 FROM bounds)
      AND m.window_end <= (SELECT t1 FROM bounds)
    UNION ALL
    {minute}
    FROM fraiseql_metrics.rollups AS m
    WHERE m.window_start >= (SELECT h0 FROM bounds) AND m.window_start < (SELECT h1 FROM bounds)
      AND m.window_end <= (SELECT t1 FROM bounds)
      AND m.window_end - date_bin('1 hour', m.window_start, {_ORIGIN}) > INTERVAL '1 hour'
)"""


# The selected regions. `ARRAY[$region]::text[]` stays valid SQL when the selection is empty.
_REGION_FILTER = "r.region = ANY (ARRAY[$region]::text[])"

_GAMMA = "((1 + {a}) / (1 - {a}))"


def _bucket_value(key: str, alpha: str) -> str:
    gamma = _GAMMA.format(a=alpha)
    return f"CASE WHEN {key} = {ZERO_KEY} THEN 0 ELSE 2 * power({gamma}, {key}) / ({gamma} + 1) END"


def latency_ctes(extra_select: str = "", extra_filter: str = "", group: str = "fingerprint, region",
                 prefix: str = "", hourly_when: str = RANGE_HOURLY) -> str:
    """``WITH … latency AS (…)``: one row per ``group`` with count, errors, exec_sum_ms and
    p50_ms/p95_ms/p99_ms from the merged sketches. ``extra_select`` adds grouping columns to the
    windows read (e.g. a time bucket), ``prefix`` adds CTEs after the levels."""
    rekeyed = (f"ceil(ln({_bucket_value('b.key', 'c.sketch_alpha')}) / ln({_GAMMA.format(a='t.alpha')}))"
               "::integer")
    quantile_keys = ",\n           ".join(
        f"coalesce(min(key) FILTER (WHERE below >= {q} * total), max(key)) AS k{name}"
        for name, q in (("50", "0.50"), ("95", "0.95"), ("99", "0.99")))
    percentiles = ",\n           ".join(
        f"{_bucket_value(f'q.k{name}', 't.alpha')} AS p{name}_ms" for name in ("50", "95", "99"))
    return f"""WITH {levels_ctes(hourly_when)},
{prefix}closed AS (
    SELECT {extra_select}r.fingerprint, r.region, r.count, r.error_count, r.exec_sum_ms,
           r.sketch_alpha, r.sketch_keys, r.sketch_weights
    FROM levels AS r
    WHERE {_REGION_FILTER}{extra_filter}
),
totals AS (
    SELECT {group}, sum(count) AS count, sum(error_count) AS errors,
           sum(exec_sum_ms) AS exec_sum_ms, max(sketch_alpha) AS alpha
    FROM closed
    GROUP BY {group}
),
-- Sketch buckets of every window, re-keyed into the coarsest alpha of the group when accuracies
-- differ (fraiseql_obs_analyzer.stats merge_sketches), then merged: weights summed per bucket key.
buckets AS (
    SELECT {', '.join('c.' + g.strip() for g in group.split(','))}, b.weight,
           CASE WHEN b.key = {ZERO_KEY} OR c.sketch_alpha = t.alpha THEN b.key
                WHEN {_bucket_value('b.key', 'c.sketch_alpha')} < {MIN_VALUE} THEN {ZERO_KEY}
                ELSE {rekeyed}
           END AS key
    FROM closed AS c
    JOIN totals AS t USING ({group})
    CROSS JOIN LATERAL unnest(c.sketch_keys, c.sketch_weights) AS b(key, weight)
),
merged AS (
    SELECT {group}, key, sum(weight) AS weight
    FROM buckets
    GROUP BY {group}, key
),
running AS (
    SELECT {group}, key,
           sum(weight) OVER (PARTITION BY {group} ORDER BY key) AS below,
           sum(weight) OVER (PARTITION BY {group}) AS total
    FROM merged
),
-- Weighted lower quantile: the first bucket whose cumulative weight reaches q x total.
quantiles AS (
    SELECT {group},
           {quantile_keys}
    FROM running
    GROUP BY {group}
),
latency AS (
    SELECT t.*,
           {percentiles}
    FROM totals AS t
    JOIN quantiles AS q USING ({group})
)"""


_SEARCH = "position(lower('$search') IN lower(coalesce(p.query_name, ''))) > 0"
_RANGE_SECS = "extract(epoch FROM ($__timeTo()::timestamptz - $__timeFrom()::timestamptz))"
_BUCKET = f"date_bin(INTERVAL '$bucket', r.window_start, {_ORIGIN})"
_PATTERN_LABEL = "coalesce(nullif(p.query_name, ''), left(l.fingerprint, 16)) || ' · ' || l.region"

LATENCY_TABLE_SQL = latency_ctes() + f"""
SELECT coalesce(p.query_name, '') AS "query",
       l.region AS "region",
       l.count AS "queries",
       l.count / {_RANGE_SECS} AS "queries/s",
       CASE WHEN l.count > 0 THEN l.errors / l.count END AS "error ratio",
       CASE WHEN l.count > 0 THEN l.exec_sum_ms / l.count END AS "mean ms",
       l.p50_ms AS "p50 ms",
       l.p95_ms AS "p95 ms",
       l.p99_ms AS "p99 ms",
       l.fingerprint AS "fingerprint"
FROM latency AS l
LEFT JOIN fraiseql_metrics.patterns AS p USING (fingerprint)
WHERE {_SEARCH}
ORDER BY l.count DESC, l.fingerprint, l.region
LIMIT 500"""

# The busiest $top (pattern, region) pairs of the range, then their percentile per time bucket.
_TOP = f"""top AS (
    SELECT r.fingerprint, r.region
    FROM levels AS r
    LEFT JOIN fraiseql_metrics.patterns AS p USING (fingerprint)
    WHERE {_REGION_FILTER}
      AND {_SEARCH}
    GROUP BY r.fingerprint, r.region
    ORDER BY sum(r.count) DESC, r.fingerprint, r.region
    LIMIT $top
),
"""


def percentile_series_sql(quantile: str) -> str:
    return latency_ctes(
        extra_select=f"{_BUCKET} AS bucket_time, ",
        extra_filter="\n      AND (r.fingerprint, r.region) IN (SELECT fingerprint, region FROM top)",
        group="bucket_time, fingerprint, region",
        prefix=_TOP,
        hourly_when=SERIES_HOURLY,
    ) + f"""
SELECT l.bucket_time AS "time",
       {_PATTERN_LABEL} AS metric,
       l.p{quantile}_ms AS value
FROM latency AS l
LEFT JOIN fraiseql_metrics.patterns AS p USING (fingerprint)
ORDER BY 1, 2"""


def region_series_sql(value: str) -> str:
    """One series per region of ``value`` (an aggregate over the windows of each time bucket)."""
    return f"""WITH {levels_ctes(SERIES_HOURLY)}
SELECT {_BUCKET} AS "time",
       r.region AS metric,
       {value} AS value
FROM levels AS r
WHERE {_REGION_FILTER}
GROUP BY 1, 2
ORDER BY 1, 2"""


THROUGHPUT_SQL = region_series_sql("sum(r.count) / extract(epoch FROM INTERVAL '$bucket')")
ERRORS_SQL = region_series_sql("sum(r.error_count) / nullif(sum(r.count), 0)")
# Total time the database spent on the observed queries, per second of wall time: what an
# optimization saves, whatever pattern it helped.
EXEC_TIME_SQL = region_series_sql("sum(r.exec_sum_ms) / 1000 / extract(epoch FROM INTERVAL '$bucket')")

# The moment the change was applied: the $change_at text box (ISO-8601); empty: the last schema
# change the analyzer saw applied in the range (fraiseql_metrics.applied_changes), else the middle
# of the range.
_CHANGE_AT = ("coalesce(nullif('$change_at', '')::timestamptz,"
              " (SELECT max(ac.applied_before) FROM fraiseql_metrics.applied_changes AS ac"
              " WHERE ac.applied_before > $__timeFrom() AND ac.applied_before < $__timeTo()),"
              " $__timeFrom()::timestamptz + ($__timeTo()::timestamptz - $__timeFrom()::timestamptz) / 2)")

BEFORE_AFTER_SQL = latency_ctes(
    prefix=f"change AS (SELECT {_CHANGE_AT} AS at),\n",
    extra_select="CASE WHEN r.window_start < (SELECT at FROM change) THEN 'before' ELSE 'after' END"
                 " AS period,\n           ",
    # A window (or hourly cell) that straddles the change belongs to neither side.
    extra_filter="\n      AND NOT (r.window_start < (SELECT at FROM change)"
                 " AND r.window_end > (SELECT at FROM change))",
    group="period, fingerprint, region",
) + f"""
SELECT coalesce(p.query_name, '') AS "query",
       b.region AS "region",
       b.count / extract(epoch FROM ((SELECT at FROM change) - $__timeFrom()::timestamptz))
           AS "queries/s before",
       a.count / extract(epoch FROM ($__timeTo()::timestamptz - (SELECT at FROM change)))
           AS "queries/s after",
       b.p95_ms AS "p95 ms before",
       a.p95_ms AS "p95 ms after",
       b.p95_ms / nullif(a.p95_ms, 0) AS "p95 speedup",
       b.exec_sum_ms / nullif(b.count, 0) AS "mean ms before",
       a.exec_sum_ms / nullif(a.count, 0) AS "mean ms after",
       b.fingerprint AS "fingerprint"
FROM latency AS b
JOIN latency AS a ON a.fingerprint = b.fingerprint AND a.region = b.region AND a.period = 'after'
LEFT JOIN fraiseql_metrics.patterns AS p ON p.fingerprint = b.fingerprint
WHERE b.period = 'before'
  AND {_SEARCH}
ORDER BY b.count * (b.p95_ms - a.p95_ms) DESC NULLS LAST, b.fingerprint, b.region
LIMIT 200"""

# The suggestions of the newest analysis run in the range (written by `fraiseql-cli schedule`).
SUGGESTIONS_SQL = """SELECT s.rank AS "rank",
       s.priority AS "priority",
       s.type AS "type",
       s.schema_name || '.' || s.table_name AS "table",
       s.new_column AS "new column",
       s.queries_per_day AS "queries/day",
       s.estimated_speedup AS "estimated speedup",
       s.current_p95_ms AS "p95 ms now",
       s.projected_p95_ms AS "p95 ms projected",
       s.storage_mb AS "storage MB",
       s.is_new AS "new",
       r.analyzed_at AS "analyzed at"
FROM fraiseql_metrics.suggestions AS s
JOIN fraiseql_metrics.analysis_runs AS r USING (run_id)
WHERE r.run_id = (SELECT run_id FROM fraiseql_metrics.analysis_runs
                  WHERE $__timeFilter(analyzed_at) ORDER BY analyzed_at DESC LIMIT 1)
ORDER BY s.rank"""

# Schema changes the analyzer saw appear in the table statistics, with the suggestion they match.
APPLIED_CHANGES_SQL = """SELECT c.applied_before AS "seen applied by",
       c.applied_after AS "not yet at",
       c.schema_name || '.' || c.table_name AS "table",
       c.kind AS "kind",
       c.object_name AS "object",
       c.definition AS "definition",
       coalesce(c.suggestion_id, '') AS "suggestion",
       jsonb_array_length(c.impact) AS "patterns measured"
FROM fraiseql_metrics.applied_changes AS c
WHERE c.applied_before >= $__timeFrom()::timestamptz - INTERVAL '30 days'
ORDER BY c.applied_before DESC
LIMIT 100"""

# Partitions of the metrics schema (one per UTC day: <table>_pYYYYMMDD). Sizes need no
# privilege on the tables, so the read-only analyst sees them.
_PARTITIONS = """SELECT parent.relname AS parent_table, child.relname AS partition,
           to_timestamp(substring(child.relname FROM '_p([0-9]{8})$'), 'YYYYMMDD') AS day,
           pg_catalog.pg_total_relation_size(child.oid) AS bytes,
           greatest(child.reltuples, 0) AS rows_estimate
    FROM pg_catalog.pg_inherits AS i
    JOIN pg_catalog.pg_class AS parent ON parent.oid = i.inhparent
    JOIN pg_catalog.pg_class AS child ON child.oid = i.inhrelid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = parent.relnamespace
    WHERE n.nspname = 'fraiseql_metrics' AND parent.relkind = 'p'"""

STORAGE_BY_TABLE_SQL = f"""WITH parts AS (
    {_PARTITIONS}
)
SELECT parent_table AS "table",
       count(*) AS "partitions",
       sum(bytes) AS "size",
       sum(rows_estimate) AS "rows (estimate)",
       min(day) AS "oldest day",
       max(day) AS "newest day"
FROM parts
GROUP BY parent_table
ORDER BY parent_table"""

PARTITION_SIZE_SQL = f"""WITH parts AS (
    {_PARTITIONS}
)
SELECT day AS "time", parent_table AS metric, bytes AS value
FROM parts
WHERE day >= $__timeFrom()::timestamptz - INTERVAL '1 day' AND day < $__timeTo()
ORDER BY 1, 2"""

SCHEMA_SIZE_SQL = f"""WITH parts AS (
    {_PARTITIONS}
)
SELECT coalesce(sum(bytes), 0) AS "metrics database size" FROM parts"""

APP_TABLES_SQL = """SELECT date_bin(INTERVAL '$bucket', s.taken_at,
                TIMESTAMPTZ '2000-01-01 00:00:00+00') AS "time",
       s.schema_name || '.' || s.table_name || ' · ' || s.region AS metric,
       max(s.total_bytes) AS value
FROM fraiseql_metrics.table_stats AS s
WHERE $__timeFilter(s.taken_at)
  AND s.region = ANY (ARRAY[$region]::text[])
GROUP BY 1, 2
ORDER BY 1, 2"""

REGION_VARIABLE_SQL = """SELECT region FROM fraiseql_metrics.rollups_hourly
WHERE hour_start > now() - INTERVAL '7 days'
UNION
SELECT region FROM fraiseql_metrics.rollups WHERE window_start > now() - INTERVAL '2 hours'
ORDER BY 1"""

# --- panels ---------------------------------------------------------------------------------------


class Layout:
    """Places panels left to right in rows of 24 grid units."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1

    def place(self, width: int, height: int) -> dict[str, int]:
        if self.x + width > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        pos = {"h": height, "w": width, "x": self.x, "y": self.y}
        self.x += width
        self.row_height = max(self.row_height, height)
        return pos

    def id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def _prom_target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": PROM, "editorMode": "code", "expr": expr, "legendFormat": legend,
            "range": True, "refId": ref}


def _sql_target(sql: str, fmt: str, ref: str = "A") -> dict[str, Any]:
    return {"datasource": PG, "editorMode": "code", "format": fmt, "rawQuery": True,
            "rawSql": sql, "refId": ref}


def timeseries(layout: Layout, title: str, description: str, targets: list[dict[str, Any]],
               unit: str, *, width: int = 12, height: int = 8) -> dict[str, Any]:
    source = targets[0]["datasource"]
    return {
        "datasource": source,
        "description": description,
        "fieldConfig": {"defaults": {"unit": unit, "min": 0,
                                     "custom": {"drawStyle": "line", "lineWidth": 1,
                                                "fillOpacity": 10, "showPoints": "never",
                                                "spanNulls": False}},
                        "overrides": []},
        "gridPos": layout.place(width, height),
        "id": layout.id(),
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": targets,
        "title": title,
        "type": "timeseries",
    }


def prom_series(layout: Layout, title: str, description: str, queries: list[tuple[str, str]],
                unit: str, **kw: Any) -> dict[str, Any]:
    refs = "ABCDEFGH"
    targets = [_prom_target(expr, legend, refs[i]) for i, (expr, legend) in enumerate(queries)]
    return timeseries(layout, title, description, targets, unit, **kw)


def stat(layout: Layout, title: str, description: str, target: dict[str, Any], unit: str,
         thresholds: list[tuple[float | None, str]], *, width: int = 6,
         height: int = 4) -> dict[str, Any]:
    return {
        "datasource": target["datasource"],
        "description": description,
        "fieldConfig": {"defaults": {
            "unit": unit,
            "thresholds": {"mode": "absolute",
                           "steps": [{"color": color, "value": value} for value, color in thresholds]},
        }, "overrides": []},
        "gridPos": layout.place(width, height),
        "id": layout.id(),
        "options": {"colorMode": "background", "graphMode": "none", "justifyMode": "auto",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "textMode": "auto"},
        "targets": [target],
        "title": title,
        "type": "stat",
    }


def table(layout: Layout, title: str, description: str, sql: str, units: dict[str, str], *,
          height: int = 10) -> dict[str, Any]:
    return {
        "datasource": PG,
        "description": description,
        "fieldConfig": {"defaults": {"custom": {"align": "auto", "filterable": True}},
                        "overrides": [{"matcher": {"id": "byName", "options": column},
                                       "properties": [{"id": "unit", "value": unit}]}
                                      for column, unit in units.items()]},
        "gridPos": layout.place(24, height),
        "id": layout.id(),
        "options": {"showHeader": True, "cellHeight": "sm"},
        "targets": [_sql_target(sql, "table")],
        "title": title,
        "type": "table",
    }


def row(layout: Layout, title: str) -> dict[str, Any]:
    if layout.x:
        layout.x, layout.y, layout.row_height = 0, layout.y + layout.row_height, 0
    panel = {"collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": layout.y},
             "id": layout.id(), "panels": [], "title": title, "type": "row"}
    layout.y += 1
    return panel


# --- variables -----------------------------------------------------------------------------------


def _datasource_variable(name: str, label: str, plugin: str, uid: str) -> dict[str, Any]:
    return {"current": {"selected": False, "text": uid, "value": uid}, "hide": 0,
            "includeAll": False, "label": label, "multi": False, "name": name, "options": [],
            "query": plugin, "refresh": 1, "regex": "", "skipUrlSync": False, "type": "datasource"}


PROMETHEUS_VARIABLE = _datasource_variable("prometheus", "Prometheus", "prometheus", PROMETHEUS_UID)
METRICSDB_VARIABLE = _datasource_variable("metricsdb", "Metrics database",
                                          "grafana-postgresql-datasource", METRICS_DB_UID)
REGION_VARIABLE = {
    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    "datasource": PG, "definition": REGION_VARIABLE_SQL, "hide": 0, "includeAll": True,
    "label": "Region", "multi": True, "name": "region", "options": [],
    "query": REGION_VARIABLE_SQL, "refresh": 2, "regex": "", "skipUrlSync": False, "sort": 1,
    "type": "query",
}


def _custom_variable(name: str, label: str, values: list[str], default: str) -> dict[str, Any]:
    return {"current": {"selected": True, "text": default, "value": default}, "hide": 0,
            "includeAll": False, "label": label, "multi": False, "name": name,
            "options": [{"selected": v == default, "text": v, "value": v} for v in values],
            "query": ",".join(values), "skipUrlSync": False, "type": "custom"}


def _textbox(name: str, label: str, description: str) -> dict[str, Any]:
    return {"current": {"selected": False, "text": "", "value": ""}, "description": description,
            "hide": 0, "label": label, "name": name, "options": [], "query": "",
            "skipUrlSync": False, "type": "textbox"}


def _bucket_variable(default: str) -> dict[str, Any]:
    return _custom_variable("bucket", "Time bucket", ["1m", "5m", "15m", "1h", "1d"], default)
TOP_VARIABLE = _custom_variable("top", "Patterns shown", ["5", "10", "20", "50"], "10")
SEARCH_VARIABLE = _textbox("search", "Query name contains", "Case-insensitive substring of the "
                           "GraphQL operation name (empty: all)")
CHANGE_VARIABLE = _textbox("change_at", "Change applied at", "ISO-8601 time the schema change was "
                           "applied, e.g. 2025-01-31T14:00:00Z (empty: middle of the time range)")


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]],
              variables: list[dict[str, Any]], *, time_from: str = "now-6h") -> dict[str, Any]:
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard"}]},
        "description": description,
        "editable": True,
        "graphTooltip": 1,
        "links": [{"asDropdown": True, "includeVars": False, "keepTime": True, "tags": ["fraiseql"],
                   "title": "FraiseQL", "type": "dashboards"}],
        "panels": panels,
        "refresh": "1m",
        "schemaVersion": 39,
        "tags": ["fraiseql"],
        "templating": {"list": variables},
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "title": title,
        "uid": uid,
        "version": 1,
    }


# --- the four dashboards --------------------------------------------------------------------------

R = "[$__rate_interval]"


def collection_health() -> dict[str, Any]:
    lay = Layout()
    panels = [
        stat(lay, "Metrics lag", "Seconds since the last successful write to the metrics database "
             "(alert FraiseqlMetricsLag at 5 min).",
             _prom_target("time() - max(fraiseql_metrics_last_write)", "lag", "A"), "s",
             [(None, "green"), (120, "orange"), (300, "red")]),
        stat(lay, "Recorder buffer (fullest API process)", "Events held / buffer_size of the "
             "fullest API process (alert at 90 %); when full, events are dropped.",
             _prom_target("max(fraiseql_metrics_buffer_size / fraiseql_metrics_buffer_capacity)",
                          "fill", "A"), "percentunit",
             [(None, "green"), (0.5, "orange"), (0.9, "red")]),
        stat(lay, "Events consumed / s", "Query events the stream workers read.",
             _prom_target(f"sum(rate(fraiseql_stream_events_total{R}))", "events/s", "A"), "ops",
             [(None, "red"), (0.001, "green")]),
        stat(lay, "Targets up", "FraiseQL processes Prometheus scrapes successfully / all.",
             _prom_target('sum(up{job=~"fraiseql-.*"}) / count(up{job=~"fraiseql-.*"})', "up", "A"),
             "percentunit", [(None, "red"), (1, "green")]),
        row(lay, "API processes (recorder)"),
        prom_series(lay, "Queries seen by the recorders", "Kept by the sampler (slow, failed or "
                    "uniformly sampled), not kept, and acknowledged by Kafka, per second.", [
                        (f"sum(rate(fraiseql_events_sampled_total{R}))", "sampled"),
                        (f"sum(rate(fraiseql_events_not_sampled_total{R}))", "not sampled"),
                        (f"sum(rate(fraiseql_events_sent_total{R}))", "sent to Kafka"),
                    ], "ops"),
        prom_series(lay, "Events dropped by reason", "Sampled events that never reached Kafka "
                    "(the API is never slowed: it drops and counts instead).", [
                        (f"sum by (reason) (rate(fraiseql_events_dropped_total{R}))", "{{reason}}"),
                    ], "ops"),
        prom_series(lay, "Recorder buffer fill by instance", "Events held / buffer_size per API "
                    "process.", [
                        ("fraiseql_metrics_buffer_size / fraiseql_metrics_buffer_capacity",
                         "{{instance}}"),
                    ], "percentunit"),
        prom_series(lay, "Recorder buffer", "Events held and capacity, summed over API processes.", [
            ("sum(fraiseql_metrics_buffer_size)", "held"),
            ("sum(fraiseql_metrics_buffer_capacity)", "capacity"),
        ], "short"),
        row(lay, "Stream workers"),
        prom_series(lay, "Events consumed and counted", "Read from the events topic; counted in a "
                    "window; late (window already closed).", [
                        (f"sum(rate(fraiseql_stream_events_total{R}))", "consumed"),
                        (f"sum(rate(fraiseql_stream_events_counted_total{R}))", "counted"),
                        (f"sum(rate(fraiseql_events_late_total{R}))", "late"),
                    ], "ops"),
        prom_series(lay, "Dead letters by stage and reason", "Messages sent to "
                    "fraiseql.dead-letters (original bytes kept).", [
                        (f"sum by (stage, reason) (rate(fraiseql_events_dead_lettered_total{R}))",
                         "{{stage}} {{reason}}"),
                        (f"sum by (reason) (rate(fraiseql_sink_dead_letters_total{R}))",
                         "sink {{reason}}"),
                    ], "ops"),
        prom_series(lay, "Stream consumer lag", "Events waiting per topic (max per partition over "
                    "workers, summed).", [
                        ("sum by (topic) (max by (topic, partition) (fraiseql_stream_consumer_lag))",
                         "{{topic}}"),
                    ], "short"),
        prom_series(lay, "Watermark delay", "Wall clock minus the event-time watermark: how late "
                    "windows close (grace period included).", [
                        ("max by (topic) (fraiseql_stream_watermark_delay_seconds)", "{{topic}}"),
                    ], "s"),
        prom_series(lay, "Windows", "Open event-time windows, and windows closed (rollups "
                    "published) per second.", [
                        ("sum(fraiseql_stream_windows_open)", "open"),
                        (f"sum(rate(fraiseql_stream_windows_closed_total{R}))", "closed/s"),
                        (f"sum(rate(fraiseql_stream_checkpoints_total{R}))", "checkpoints/s"),
                    ], "short"),
        row(lay, "Sink workers"),
        prom_series(lay, "Metrics lag", "Seconds since the last write to the metrics database.", [
            ("time() - max(fraiseql_metrics_last_write)", "lag"),
        ], "s"),
        prom_series(lay, "Sink consumer lag", "Records not yet written per topic.", [
            ("sum by (topic) (max by (topic, partition) (fraiseql_sink_consumer_lag))", "{{topic}}"),
        ], "short"),
        prom_series(lay, "Sink batches and retries", "Batches committed and failed write attempts "
                    "(database down, timeout) per second.", [
                        (f"sum(rate(fraiseql_sink_batches_total{R}))", "batches"),
                        (f"sum(rate(fraiseql_sink_retries_total{R}))", "retries"),
                    ], "ops"),
        prom_series(lay, "Scrape targets", "1 = up, per FraiseQL process.", [
            ('up{job=~"fraiseql-.*"}', "{{job}} {{instance}}"),
        ], "short"),
    ]
    return dashboard("fraiseql-collection-health", "FraiseQL · Collection health",
                     "Is every query event recorded, counted and stored? Recorders, stream and sink "
                     "workers, from Prometheus.", panels, [PROMETHEUS_VARIABLE], time_from="now-3h")


def query_performance() -> dict[str, Any]:
    lay = Layout()
    panels = [
        table(lay, "Latency by pattern and region",
              "Weighted by sample_weight; percentiles from the merged sketches of the closed "
              "1-minute windows in the time range (same numbers as `fraiseql-cli stats`).",
              LATENCY_TABLE_SQL,
              {"queries": "short", "queries/s": "ops", "error ratio": "percentunit",
               "mean ms": "ms", "p50 ms": "ms", "p95 ms": "ms", "p99 ms": "ms"}, height=12),
        timeseries(lay, "p95 by pattern (busiest $top)", "p95 of each time bucket, merged from "
                   "the windows' sketches.", [_sql_target(percentile_series_sql("95"), "time_series")],
                   "ms"),
        timeseries(lay, "p99 by pattern (busiest $top)", "p99 of each time bucket.",
                   [_sql_target(percentile_series_sql("99"), "time_series")], "ms"),
        timeseries(lay, "p50 by pattern (busiest $top)", "Median of each time bucket.",
                   [_sql_target(percentile_series_sql("50"), "time_series")], "ms"),
        timeseries(lay, "Queries per second by region", "Estimated real traffic (weighted).",
                   [_sql_target(THROUGHPUT_SQL, "time_series")], "ops"),
        timeseries(lay, "Error ratio by region", "Failed queries / all (weighted).",
                   [_sql_target(ERRORS_SQL, "time_series")], "percentunit"),
        prom_series(lay, "Events counted into windows", "Live rate from the stream workers "
                    "(sampled events, not weighted).", [
                        (f"sum(rate(fraiseql_stream_events_counted_total{R}))", "events/s"),
                    ], "ops"),
    ]
    return dashboard("fraiseql-query-performance", "FraiseQL · Query performance",
                     "p50/p95/p99 per SQL pattern and region from the metrics database.", panels,
                     [PROMETHEUS_VARIABLE, METRICSDB_VARIABLE, REGION_VARIABLE, _bucket_variable("5m"),
                      TOP_VARIABLE, SEARCH_VARIABLE])


def storage_growth() -> dict[str, Any]:
    lay = Layout()
    panels = [
        stat(lay, "Metrics database size", "All partitions of fraiseql_metrics.",
             _sql_target(SCHEMA_SIZE_SQL, "table"), "bytes", [(None, "blue")], width=8),
        stat(lay, "Rollup rows written / s", "Upserts into fraiseql_metrics.rollups (re-deliveries "
             "count again).",
             _prom_target(f'sum(rate(fraiseql_sink_rows_written_total{{table="rollups"}}{R}))',
                          "rows/s", "A"), "ops", [(None, "blue")], width=8),
        stat(lay, "Rollups published / s", "Windows closed by the stream workers.",
             _prom_target(f"sum(rate(fraiseql_stream_windows_closed_total{R}))", "rollups/s", "A"),
             "ops", [(None, "blue")], width=8),
        table(lay, "Metrics database by table", "Daily partitions per table; retention drops the "
              "oldest whole days.", STORAGE_BY_TABLE_SQL, {"size": "bytes", "rows (estimate)": "short"},
              height=7),
        timeseries(lay, "Partition size by day", "Size of each day's partition (indexes "
                   "included).", [_sql_target(PARTITION_SIZE_SQL, "time_series")], "bytes"),
        prom_series(lay, "Rows written by table", "Sink upserts per second.", [
            (f"sum by (table) (rate(fraiseql_sink_rows_written_total{R}))", "{{table}}"),
        ], "ops"),
        timeseries(lay, "Application tables (table statistics)", "Total size of the application "
                   "database's tables as reported by fraiseql.table-stats snapshots.",
                   [_sql_target(APP_TABLES_SQL, "time_series")], "bytes", width=24),
    ]
    return dashboard("fraiseql-storage-growth", "FraiseQL · Storage growth",
                     "How fast the metrics database and the observed application tables grow.",
                     panels, [PROMETHEUS_VARIABLE, METRICSDB_VARIABLE, REGION_VARIABLE,
                              _bucket_variable("1h")], time_from="now-14d")


def optimization_impact() -> dict[str, Any]:
    lay = Layout()
    panels = [
        stat(lay, "High-priority suggestions", "From the last scheduled analysis (alert "
             "FraiseqlHighPrioritySuggestions).",
             _prom_target("max(fraiseql_analysis_suggestions_high_priority)", "suggestions", "A"),
             "short", [(None, "green"), (1, "orange")], width=6, height=8),
        stat(lay, "Last analysis", "When the scheduler last completed an analysis (0: none since "
             "it started).", _prom_target("max(fraiseql_analysis_last_run_timestamp_seconds) * 1000",
                                          "last run", "A"), "dateTimeFromNow", [(None, "blue")],
             width=6, height=8),
        stat(lay, "Next analysis", "The next tick of analysis.schedule.",
             _prom_target("max(fraiseql_analysis_next_run_timestamp_seconds) * 1000", "next run",
                          "A"), "dateTimeFromNow", [(None, "blue")], width=6, height=8),
        stat(lay, "Analysis duration", "Wall-clock time of the last analysis.",
             _prom_target("max(fraiseql_analysis_run_duration_seconds)", "duration", "A"), "s",
             [(None, "blue")], width=6, height=8),
        prom_series(lay, "High-priority suggestions over time", "Falls when the operator applies "
                    "suggested migrations and the next analysis confirms them.", [
                        ("max(fraiseql_analysis_suggestions_high_priority)", "high priority"),
                    ], "short", width=24),
        table(lay, "Before / after the change", "Per pattern and region: p95 and mean before "
              "and after the change (the $change_at box; empty: the last change seen applied, else "
              "the middle of the range); windows straddling it are left out.", BEFORE_AFTER_SQL,
              {"queries/s before": "ops", "queries/s after": "ops", "p95 ms before": "ms",
               "p95 ms after": "ms", "p95 speedup": "none", "mean ms before": "ms",
               "mean ms after": "ms"}, height=12),
        table(lay, "Schema changes seen applied", "Indexes and columns that appeared in the "
              "application tables' statistics, and the suggestion each implements.",
              APPLIED_CHANGES_SQL, {}, height=7),
        table(lay, "Suggestions of the last analysis", "The newest scheduled analysis in the time "
              "range; apply with `fraiseql-cli analyze --format sql`.", SUGGESTIONS_SQL,
              {"queries/day": "short", "p95 ms now": "ms", "p95 ms projected": "ms"}, height=8),
        timeseries(lay, "p95 by pattern (busiest $top)", "Watch the optimized pattern drop.",
                   [_sql_target(percentile_series_sql("95"), "time_series")], "ms"),
        timeseries(lay, "Database time spent on observed queries", "Seconds of query execution "
                   "per second (weighted): what all optimizations together save.",
                   [_sql_target(EXEC_TIME_SQL, "time_series")], "s"),
    ]
    return dashboard("fraiseql-optimization-impact", "FraiseQL · Optimization impact",
                     "Before/after a schema change: per-pattern p95, and the analyzer's pending "
                     "high-priority suggestions.", panels,
                     [PROMETHEUS_VARIABLE, METRICSDB_VARIABLE, REGION_VARIABLE, _bucket_variable("1h"),
                      TOP_VARIABLE, SEARCH_VARIABLE, CHANGE_VARIABLE], time_from="now-7d")


DASHBOARDS = {
    "collection-health.json": collection_health,
    "query-performance.json": query_performance,
    "storage-growth.json": storage_growth,
    "optimization-impact.json": optimization_impact,
}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
            for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a committed dashboard differs from the generated one")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT_DIR / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale dashboards (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
