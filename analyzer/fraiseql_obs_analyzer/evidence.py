"""The evidence behind every suggestion, read from the metrics database (read-only).

Per pattern over the analysis window: weighted executions, errors, mean execution and database
round-trip time, mean rows returned, and p50/p95/p99 of the execution time from *merged sketches*
(bucket weights summed in SQL, the quantile read by
:func:`fraiseql_observability.sketch.quantile_from_buckets` — the one rule of
:mod:`fraiseql_obs_analyzer.stats`). Per application table: the newest statistics snapshot (rows, size, column
statistics of JSONB paths, index definitions, sizes and scan counters) and, for the scan counters
and for impact tracking, the earliest snapshot of the window and when each index and column first
appeared.

Every read of rollups goes through
:func:`fraiseql_observability.metricsdb.rollups.closed_rollups_query`, which reads whole hours from
the hourly level for long windows and the minute rows otherwise (the two give the same sums and
identical merged sketches); this module never names a rollup table itself.

Two phases keep a long window cheap: :func:`load_pattern_totals` (sums only: one row per pattern
and region) for every pattern, then :func:`load_sketches` only for the patterns a suggestion is
about — unnesting sketch buckets is the expensive part.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

from fraiseql_observability.metricsdb.rollups import closed_rollups_query
from fraiseql_observability.sketch import bucket_value, quantile_from_buckets
from fraiseql_observability.timeutil import MINUTE

from .cache import split_window
from .parse import parse_index_definition, parse_query_shape
from .shape import IndexDefinition, KeyExpr
from .stats import merge_sketches

__all__ = [
    "ColumnStat",
    "IndexStat",
    "ObjectHistory",
    "PatternEvidence",
    "Sketch",
    "TableSnapshot",
    "WorkloadEvidence",
    "load_object_history",
    "load_pattern_totals",
    "load_sketches",
    "load_table_snapshots",
    "merged_quantile",
    "parse_key_expression",
]

MIN_COVERAGE: Final = MINUTE
# The newest table snapshot may predate the window (snapshots every few hours, a short window).
SNAPSHOT_LOOKBACK: Final = timedelta(days=7)

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Sketch:
    """A merged execution-time sketch: bucket keys (sorted) and their weights."""

    alpha: float
    keys: tuple[int, ...]
    weights: tuple[float, ...]

    def quantile(self, q: float) -> float | None:
        return quantile_from_buckets(self.keys, self.weights, q, self.alpha) if self.keys else None

    def points(self) -> list[tuple[float, float]]:
        """(representative value, weight) per bucket."""
        return [(bucket_value(k, self.alpha), w) for k, w in zip(self.keys, self.weights,
                                                                   strict=True)]


@dataclass(frozen=True, slots=True)
class PatternEvidence:
    """One pattern (fingerprint) over the window, all regions together."""

    fingerprint: str
    query_name: str
    sql: str
    count: float  # weighted executions
    errors: float
    exec_sum_ms: float
    db_sum_ms: float
    rows_sum: float
    regions: tuple[str, ...]
    queries_per_day: float

    @property
    def mean_ms(self) -> float:
        return self.exec_sum_ms / self.count if self.count > 0 else 0.0

    @property
    def mean_db_ms(self) -> float:
        """Mean database round trip, never more than the total (bad producer data)."""
        if self.count <= 0:
            return 0.0
        return min(self.db_sum_ms / self.count, self.mean_ms)

    @property
    def mean_rows(self) -> float:
        return self.rows_sum / self.count if self.count > 0 else 0.0


@dataclass(frozen=True, slots=True)
class WorkloadEvidence:
    start: datetime
    end: datetime
    observed_start: datetime | None  # first window holding data (None: no data)
    observed_end: datetime | None
    patterns: dict[str, PatternEvidence]

    @property
    def coverage_days(self) -> float:
        if self.observed_start is None or self.observed_end is None:
            return 0.0
        span = max(self.observed_end - self.observed_start, MIN_COVERAGE)
        return span.total_seconds() / 86400.0

    @property
    def total_executions(self) -> float:
        return math.fsum(p.count for p in self.patterns.values())

    @property
    def avg_execution_time_ms(self) -> float:
        total = self.total_executions
        return math.fsum(p.exec_sum_ms for p in self.patterns.values()) / total if total else 0.0


@dataclass(frozen=True, slots=True)
class ColumnStat:
    expression: str
    data_type: str
    null_frac: float | None
    n_distinct: float | None
    avg_width: int | None
    key: KeyExpr | None  # the expression parsed, None when it is not a modelled key

    def distinct_values(self, rows: float) -> float | None:
        """pg_stats convention: a negative n_distinct is minus a fraction of the rows."""
        if self.n_distinct is None or self.n_distinct == 0:
            return None
        return -self.n_distinct * rows if self.n_distinct < 0 else self.n_distinct


@dataclass(frozen=True, slots=True)
class IndexStat:
    name: str
    definition: str
    scans: int
    size_bytes: int
    is_unique: bool
    is_primary: bool
    parsed: IndexDefinition | None


@dataclass(frozen=True, slots=True)
class TableSnapshot:
    source: str
    region: str
    schema_name: str
    table_name: str
    relkind: str
    taken_at: datetime
    row_estimate: float
    total_bytes: int
    seq_scans: int
    columns: tuple[ColumnStat, ...]
    indexes: tuple[IndexStat, ...]
    # The earliest snapshot of the same table inside the window (scan counters' baseline).
    baseline: TableSnapshot | None = field(default=None, repr=False, compare=False)

    @property
    def qualified(self) -> str:
        return f"{self.schema_name}.{self.table_name}"

    def column_stat(self, key: KeyExpr) -> ColumnStat | None:
        """Statistics of the value ``key`` extracts (spelling and cast do not matter)."""
        for column in self.columns:
            other = column.key
            if (other is not None and other.column == key.column and other.path == key.path
                    and (other.as_text == key.as_text or not key.path)):
                return column
        return None

    def plain_columns(self) -> set[str]:
        return {c.key.column for c in self.columns if c.key is not None and not c.key.path}


@dataclass(frozen=True, slots=True)
class ObjectHistory:
    """When an index (or plain column) of a table was first and last seen in the snapshots."""

    schema_name: str
    table_name: str
    kind: str  # "index" | "column"
    name: str
    definition: str
    first_seen: datetime
    previous_snapshot: datetime | None  # the table's last snapshot before first_seen
    table_first_snapshot: datetime


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def merged_quantile(parts: Sequence[tuple[Sketch, float]], q: float) -> float | None:
    """Quantile of several sketches' executions together, each value divided by its scale.

    Scale 1 everywhere: the merged sketch's quantile, bucket-wise (the :mod:`fraiseql_obs_analyzer.stats`
    rule). Other scales: a projection ("these patterns, each sped up by its factor").
    """
    parts = [(s, scale) for s, scale in parts if s.keys]
    if not parts:
        return None
    if all(scale == 1.0 for _, scale in parts):
        alpha, keys, weights = merge_sketches([(s.alpha, s.keys, s.weights) for s, _ in parts])
        return quantile_from_buckets(keys, weights, q, alpha)
    points = sorted((value / scale, weight) for sketch, scale in parts
                    for value, weight in sketch.points())
    total = math.fsum(w for _, w in points)
    if total <= 0:
        return None
    running = 0.0
    for value, weight in points:
        running += weight
        if running >= q * total:
            return value
    return points[-1][0]


# --- patterns -------------------------------------------------------------------------------------


_TOTALS: Final = """
WITH closed AS ({closed})
SELECT fingerprint, region, sum(count), sum(error_count), sum(exec_sum_ms),
       sum(db_round_trip_sum_ms), sum(rows_sum)
FROM closed
GROUP BY fingerprint, region
"""

_SKETCHES: Final = """
WITH closed AS ({closed}),
buckets AS (
    SELECT c.fingerprint, c.sketch_alpha AS alpha, b.key, sum(b.weight) AS weight
    FROM closed AS c
    CROSS JOIN LATERAL unnest(c.sketch_keys, c.sketch_weights) AS b(key, weight)
    WHERE c.fingerprint = ANY(%(fingerprints)s)
    GROUP BY c.fingerprint, c.sketch_alpha, b.key
)
SELECT fingerprint, alpha, array_agg(key ORDER BY key), array_agg(weight ORDER BY key)
FROM buckets
GROUP BY fingerprint, alpha
"""

_PATTERNS: Final = """
SELECT fingerprint, query_name, sql, first_seen, last_seen
FROM fraiseql_metrics.patterns
WHERE fingerprint = ANY(%(fingerprints)s)
"""


def load_pattern_totals(conn: Conn, start: datetime, end: datetime) -> WorkloadEvidence:
    """Sums per pattern over the closed windows of ``[start, end)`` (no percentiles yet).

    ``queries_per_day`` divides by the days the window actually holds data for (from the first
    to the last window seen, across all patterns): a pipeline that started an hour ago does not
    report 1/168 of its traffic in a 7-day analysis.
    """
    start, end = _utc(start), _utc(end)
    closed, params = closed_rollups_query(start, end)
    rows = conn.execute(sql.SQL(_TOTALS).format(closed=closed), params).fetchall()
    sums: dict[str, list[float]] = {}
    regions: dict[str, set[str]] = {}
    for fingerprint, region, count, errors, exec_sum, db_sum, rows_sum in rows:
        acc = sums.setdefault(str(fingerprint), [0.0, 0.0, 0.0, 0.0, 0.0])
        for i, value in enumerate((count, errors, exec_sum, db_sum, rows_sum)):
            acc[i] += float(value or 0.0)
        regions.setdefault(str(fingerprint), set()).add(str(region))
    catalogue: dict[str, tuple[str, str, datetime, datetime]] = {}
    if sums:
        for fingerprint, query_name, text, first, last in conn.execute(
                _PATTERNS, {"fingerprints": list(sums)}).fetchall():
            catalogue[str(fingerprint)] = (str(query_name), str(text), _utc(first), _utc(last))
    observed_start: datetime | None = None
    observed_end: datetime | None = None
    if catalogue:
        observed_start = max(start, min(c[2] for c in catalogue.values()))
        # The catalogue's first_seen is the earliest window start, last_seen the latest end.
        observed_end = min(end, max(c[3] for c in catalogue.values()))
        if observed_end <= observed_start:
            observed_end = observed_start + MIN_COVERAGE
    elif sums:
        observed_start, observed_end = start, end
    days = (max(observed_end - observed_start, MIN_COVERAGE).total_seconds() / 86400.0
            if observed_start and observed_end else 1.0)
    patterns: dict[str, PatternEvidence] = {}
    for fingerprint, (count, errors, exec_sum, db_sum, rows_sum) in sums.items():
        query_name, text = catalogue.get(fingerprint, ("", "", start, end))[:2]
        patterns[fingerprint] = PatternEvidence(
            fingerprint=fingerprint, query_name=query_name, sql=text, count=count, errors=errors,
            exec_sum_ms=exec_sum, db_sum_ms=db_sum, rows_sum=rows_sum,
            regions=tuple(sorted(regions[fingerprint])), queries_per_day=count / days)
    return WorkloadEvidence(start, end, observed_start, observed_end, patterns)


_CACHED_SKETCHES: Final = """
WITH buckets AS (
    SELECT c.fingerprint, c.sketch_alpha AS alpha, b.key, sum(b.weight) AS weight
    FROM fraiseql_metrics.analysis_daily_sketches AS c
    CROSS JOIN LATERAL unnest(c.sketch_keys, c.sketch_weights) AS b(key, weight)
    WHERE c.day = ANY(%(days)s) AND c.fingerprint = ANY(%(fingerprints)s)
    GROUP BY c.fingerprint, c.sketch_alpha, b.key
)
SELECT fingerprint, alpha, array_agg(key ORDER BY key), array_agg(weight ORDER BY key)
FROM buckets
GROUP BY fingerprint, alpha
"""


def load_sketches(conn: Conn, start: datetime, end: datetime, fingerprints: Iterable[str], *,
                  use_cache: bool = True) -> dict[str, Sketch]:
    """The merged execution-time sketch of each pattern over ``[start, end)``, all regions.

    Whole UTC days the scheduler cached (:mod:`fraiseql_obs_analyzer.cache`) and whose rollups have not
    changed since are read as one merged sketch per pattern and day; the rest of the window is
    merged from the rollups. Either way the result is the bucket-wise merge of the same sketches.
    """
    wanted = sorted(set(fingerprints))
    if not wanted:
        return {}
    start, end = _utc(start), _utc(end)
    days, ranges = split_window(conn, start, end) if use_cache else ([], [(start, end)])
    rows: list[tuple[Any, ...]] = []
    for range_start, range_end in ranges:
        closed, params = closed_rollups_query(range_start, range_end)
        rows += conn.execute(sql.SQL(_SKETCHES).format(closed=closed),
                             {**params, "fingerprints": wanted}).fetchall()
    if days:
        rows += conn.execute(_CACHED_SKETCHES, {"days": days, "fingerprints": wanted}).fetchall()
    parts: dict[str, list[tuple[float, Sequence[int], Sequence[float]]]] = {}
    for fingerprint, alpha, keys, weights in rows:
        parts.setdefault(str(fingerprint), []).append((float(alpha), keys, weights))
    out: dict[str, Sketch] = {}
    for fingerprint, group in parts.items():
        alpha, keys_out, weights_out = merge_sketches(group)  # bucket weights add up
        out[fingerprint] = Sketch(alpha, tuple(int(k) for k in keys_out),
                                  tuple(float(w) for w in weights_out))
    return out


# --- table statistics -------------------------------------------------------------------------


def parse_key_expression(expression: str) -> KeyExpr | None:
    """A column-statistics ``expression`` (``data->>'region'``, ``status``) as a key, or None."""
    # Only parsed (by pglast), never executed: a hostile expression yields None or a harmless key.
    try:
        shape = parse_query_shape("SELECT " + expression + " FROM t")  # noqa: S608
    except Exception:
        return None
    uses = [u for u in shape.uses if u.relation is not None]
    if len(shape.uses) != 1 or len(uses) != 1:
        return None
    return uses[0].key


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _columns(raw: Any) -> tuple[ColumnStat, ...]:
    items = raw if isinstance(raw, list) else json.loads(raw or "[]")
    out: list[ColumnStat] = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("expression"), str):
            continue
        expression = str(item["expression"])
        width = _number(item.get("avg_width"))
        out.append(ColumnStat(
            expression=expression,
            data_type=str(item.get("data_type") or ""),
            null_frac=_number(item.get("null_frac")),
            n_distinct=_number(item.get("n_distinct")),
            avg_width=int(width) if width is not None else None,
            key=parse_key_expression(expression),
        ))
    return tuple(out)


def _indexes(raw: Any) -> tuple[IndexStat, ...]:
    items = raw if isinstance(raw, list) else json.loads(raw or "[]")
    out: list[IndexStat] = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("definition"), str):
            continue
        definition = str(item["definition"])
        try:
            parsed: IndexDefinition | None = parse_index_definition(definition)
        except Exception:
            parsed = None
        scans = _number(item.get("scans"))
        size = _number(item.get("size_bytes"))
        out.append(IndexStat(
            name=str(item.get("name") or (parsed.name if parsed else "")),
            definition=definition,
            scans=int(scans) if scans is not None else 0,
            size_bytes=int(size) if size is not None else 0,
            is_unique=bool(item.get("is_unique")),
            is_primary=bool(item.get("is_primary")),
            parsed=parsed,
        ))
    return tuple(out)


# The newest snapshot of each table as of the window's end, and the earliest inside the window.
_LATEST: Final = """
SELECT DISTINCT ON (schema_name, table_name) source, region, schema_name, table_name, relkind,
       taken_at, row_estimate, total_bytes, seq_scans, columns, indexes
FROM fraiseql_metrics.table_stats
WHERE taken_at >= %(lookback)s AND taken_at < %(end)s
ORDER BY schema_name, table_name, taken_at DESC
"""
_EARLIEST: Final = """
SELECT DISTINCT ON (schema_name, table_name) source, region, schema_name, table_name, relkind,
       taken_at, row_estimate, total_bytes, seq_scans, columns, indexes
FROM fraiseql_metrics.table_stats
WHERE taken_at >= %(start)s AND taken_at < %(end)s
ORDER BY schema_name, table_name, taken_at ASC
"""


def _snapshot(row: Sequence[Any], baseline: TableSnapshot | None = None) -> TableSnapshot:
    (source, region, schema_name, table_name, relkind, taken_at, row_estimate, total_bytes,
     seq_scans, columns, indexes) = row
    return TableSnapshot(
        source=str(source), region=str(region), schema_name=str(schema_name),
        table_name=str(table_name), relkind=str(relkind), taken_at=_utc(taken_at),
        row_estimate=max(0.0, float(row_estimate or 0.0)), total_bytes=int(total_bytes or 0),
        seq_scans=int(seq_scans or 0), columns=_columns(columns), indexes=_indexes(indexes),
        baseline=baseline,
    )


def load_table_snapshots(conn: Conn, start: datetime, end: datetime) -> list[TableSnapshot]:
    """The newest snapshot of each (schema, table) before ``end``, with its window baseline."""
    start, end = _utc(start), _utc(end)
    params = {"start": start, "end": end, "lookback": start - SNAPSHOT_LOOKBACK}
    earliest = {(str(r[2]), str(r[3])): _snapshot(r)
                for r in conn.execute(_EARLIEST, params).fetchall()}
    out = []
    for row in conn.execute(_LATEST, params).fetchall():
        base = earliest.get((str(row[2]), str(row[3])))
        out.append(_snapshot(row, base))
    return out


# First appearance of every index and plain column per table, over the window and its lookback.
_HISTORY: Final = """
WITH snaps AS (
    SELECT schema_name, table_name, taken_at, indexes, columns
    FROM fraiseql_metrics.table_stats
    WHERE taken_at >= %(lookback)s AND taken_at < %(end)s
),
tables AS (
    SELECT schema_name, table_name, min(taken_at) AS first_snapshot FROM snaps
    GROUP BY schema_name, table_name
),
objects AS (
    SELECT s.schema_name, s.table_name, 'index' AS kind, i->>'name' AS name,
           min(i->>'definition') AS definition, min(s.taken_at) AS first_seen
    FROM snaps AS s CROSS JOIN LATERAL jsonb_array_elements(s.indexes) AS i
    WHERE jsonb_typeof(s.indexes) = 'array' AND i ? 'name'
    GROUP BY 1, 2, 3, 4
    UNION ALL
    SELECT s.schema_name, s.table_name, 'column', c->>'expression', min(c->>'data_type'),
           min(s.taken_at)
    FROM snaps AS s CROSS JOIN LATERAL jsonb_array_elements(s.columns) AS c
    WHERE jsonb_typeof(s.columns) = 'array' AND c ? 'expression'
    GROUP BY 1, 2, 3, 4
)
SELECT o.schema_name, o.table_name, o.kind, o.name, o.definition, o.first_seen,
       (SELECT max(p.taken_at) FROM snaps AS p
        WHERE p.schema_name = o.schema_name AND p.table_name = o.table_name
          AND p.taken_at < o.first_seen),
       t.first_snapshot
FROM objects AS o JOIN tables AS t USING (schema_name, table_name)
WHERE o.first_seen > t.first_snapshot AND o.first_seen >= %(start)s
"""


def load_object_history(conn: Conn, start: datetime, end: datetime,
                        lookback: timedelta = SNAPSHOT_LOOKBACK) -> list[ObjectHistory]:
    """Indexes and columns that appeared during ``[start, end)`` (absent from earlier snapshots)."""
    start, end = _utc(start), _utc(end)
    rows = conn.execute(_HISTORY, {"start": start, "end": end,
                                   "lookback": start - lookback}).fetchall()
    return [
        ObjectHistory(str(schema), str(table), str(kind), str(name), str(definition or ""),
                      _utc(first), _utc(previous) if previous is not None else None, _utc(first_table))
        for schema, table, kind, name, definition, first, previous, first_table in rows
        if name is not None
    ]
