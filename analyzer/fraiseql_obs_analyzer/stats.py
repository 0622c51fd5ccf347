"""Per-pattern, per-region latency statistics (``fraiseql-cli stats``, SPEC §5).

Over the rollups whose window lies entirely inside ``[start, end)`` (closed windows only):
weighted count, weighted errors, mean, and p50/p95/p99 of the execution time.

Percentiles come from merging the windows' sketches — never from averaging percentiles. The merge
runs in PostgreSQL (``unnest(sketch_keys, sketch_weights)`` grouped by bucket key, weights summed),
so only one merged bucket list per pattern and region leaves the database; the quantile is then
read with :func:`fraiseql_observability.sketch.quantile_from_buckets`, the very rule the stream
side uses. Rollups of the same window from different source partitions are separate rows and are
all summed.

Needs nothing beyond ``fraiseql_analyst`` (SELECT on rollups and patterns); the session is
read-only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg import sql

from fraiseql_observability.db import connect, describe_error
from fraiseql_observability.metricsdb.rollups import (
    StatsLevel,
    closed_rollups_query,
)
from fraiseql_observability.secrets import mask_url
from fraiseql_observability.sketch import (
    ZERO_KEY,
    QuantileSketch,
    bucket_value,
    quantile_from_buckets,
)

from .errors import StatsError

__all__ = [
    "ALL_REGIONS",
    "PatternStats",
    "StatsReport",
    "merge_sketches",
    "pattern_stats",
    "pattern_stats_all_regions",
    "pattern_stats_at_level",
    "render_stats_json",
    "render_stats_text",
]

QUANTILES: Final = (0.50, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class PatternStats:
    """One line of ``stats``; field names are the JSON keys of SPEC §5."""

    fingerprint: str
    query_name: str
    region: str
    count: float  # weighted
    errors: float  # weighted
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class StatsReport:
    window_start: datetime
    window_end: datetime
    patterns: list[PatternStats]


def merge_sketches(
    parts: Sequence[tuple[float, Sequence[int], Sequence[float]]],
) -> tuple[float, list[int], list[float]]:
    """Merge ``(alpha, keys, weights)`` bucket lists into one sorted list of the coarsest alpha.

    With one alpha (the normal case) the buckets are returned as they are. Otherwise each bucket
    is re-keyed by its representative value into the coarsest alpha's buckets; the result is then
    within about the sum of the two alphas of the truth instead of the coarser one.
    """
    if len(parts) == 1:
        alpha, keys, weights = parts[0]
        return alpha, list(keys), list(weights)
    coarse = max(alpha for alpha, _, _ in parts)
    target = QuantileSketch(coarse)
    merged: dict[int, float] = {}
    for alpha, keys, weights in parts:
        for key, weight in zip(keys, weights, strict=True):
            new_key = key if alpha == coarse else (
                ZERO_KEY if key == ZERO_KEY else target.key(bucket_value(key, alpha))
            )
            merged[new_key] = merged.get(new_key, 0.0) + weight
    ordered = sorted(merged)
    return coarse, ordered, [merged[k] for k in ordered]


def pattern_stats(
    url: str,
    start: datetime,
    end: datetime,
    *,
    connect_timeout_secs: float = 10.0,
    statement_timeout_secs: float = 120.0,
) -> StatsReport:
    """Statistics per (fingerprint, region) over the closed windows inside ``[start, end)``,
    from the minute level.

    Sorted by weighted count, busiest first (then fingerprint and region).
    """
    return pattern_stats_at_level(url, start, end, "minute", connect_timeout_secs=connect_timeout_secs,
                                  statement_timeout_secs=statement_timeout_secs)


def _fetch(url: str, query: Any, params: Mapping[str, Any], connect_timeout_secs: float,
           statement_timeout_secs: float) -> list[tuple[Any, ...]]:
    """Run one statistics query in a read-only session; failures become a masked StatsError."""
    try:
        with connect(url, application_name="fraiseql-stats", read_only=True,
                     statement_timeout=statement_timeout_secs, connect_timeout=connect_timeout_secs,
                     error=StatsError, what="the metrics database") as conn:
            return conn.execute(query, params).fetchall()
    except psycopg.Error as exc:
        raise StatsError(f"cannot read statistics from {mask_url(url)}: {describe_error(exc)}") from None


def _build(rows: Sequence[tuple[Any, ...]]) -> list[PatternStats]:
    grouped: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for row in rows:
        grouped.setdefault((row[0], row[1]), []).append(row)
    patterns: list[PatternStats] = []
    for (fingerprint, region), group in grouped.items():
        _, _, query_name, count, errors, exec_sum_ms = group[0][:6]
        count = float(count or 0.0)
        sketch_parts = [(float(r[6]), r[7], r[8]) for r in group if r[6] is not None]
        quantiles: list[float | None] = [None] * len(QUANTILES)
        if sketch_parts:
            alpha, keys, weights = merge_sketches(sketch_parts)
            quantiles = [quantile_from_buckets(keys, weights, q, alpha) for q in QUANTILES]
        patterns.append(
            PatternStats(
                fingerprint=str(fingerprint),
                query_name="" if query_name is None else str(query_name),
                region=str(region),
                count=count,
                errors=float(errors or 0.0),
                mean_ms=float(exec_sum_ms) / count if count > 0 else None,
                p50_ms=quantiles[0],
                p95_ms=quantiles[1],
                p99_ms=quantiles[2],
            )
        )
    patterns.sort(key=lambda p: (-p.count, p.fingerprint, p.region))
    return patterns


# The aggregation over either level's closed windows (merged sketches, summed counts).
# One row per (pattern, region, sketch alpha) with the totals of the (pattern, region) repeated:
# sketches of different alphas cannot be merged bucket by bucket, so they are merged in Python
# (see merge_sketches) — in practice there is one alpha and one row per pattern and region.
_LEVEL_QUERY: Final = """
WITH closed AS ({closed}),
totals AS (
    SELECT fingerprint, region,
           sum(count) AS count, sum(error_count) AS errors, sum(exec_sum_ms) AS exec_sum_ms
    FROM closed
    GROUP BY fingerprint, region
),
buckets AS (
    SELECT c.fingerprint, c.region, c.sketch_alpha AS alpha, b.key, sum(b.weight) AS weight
    FROM closed AS c
    CROSS JOIN LATERAL unnest(c.sketch_keys, c.sketch_weights) AS b(key, weight)
    GROUP BY c.fingerprint, c.region, c.sketch_alpha, b.key
),
sketches AS (
    SELECT fingerprint, region, alpha,
           array_agg(key ORDER BY key) AS keys, array_agg(weight ORDER BY key) AS weights
    FROM buckets
    GROUP BY fingerprint, region, alpha
)
SELECT t.fingerprint, t.region, p.query_name, t.count, t.errors, t.exec_sum_ms,
       s.alpha, s.keys, s.weights
FROM totals AS t
LEFT JOIN sketches AS s USING (fingerprint, region)
LEFT JOIN fraiseql_metrics.patterns AS p USING (fingerprint)
ORDER BY t.fingerprint, t.region, s.alpha
"""


def pattern_stats_at_level(
    url: str,
    start: datetime,
    end: datetime,
    level: StatsLevel | None = None,
    *,
    connect_timeout_secs: float = 10.0,
    statement_timeout_secs: float = 120.0,
) -> StatsReport:
    """:func:`pattern_stats` reading whole hours from the hourly level for long periods.

    ``level`` None chooses by period length (:func:`choose_level`). Needs SELECT on
    ``rollups_hourly`` (granted to ``fraiseql_analyst``) when the hourly level is used.
    """
    closed, params = closed_rollups_query(start, end, level)
    return _report(url, closed, params, connect_timeout_secs, statement_timeout_secs)


# --- global statistics: every region of a pattern merged ----------------------------------------

# The region of a line that merges every region of its pattern (``stats --all-regions``).
ALL_REGIONS: Final = "*"

# The closed windows with their region replaced by ALL_REGIONS, so that _LEVEL_QUERY's grouping by
# (fingerprint, region) becomes a grouping by fingerprint: counts summed, sketches merged bucket by
# bucket across every region and source partition (e.g. mirrored regional topics).
_ALL_REGIONS_CLOSED: Final = sql.SQL(
    "SELECT fingerprint, {label} AS region, count, error_count, exec_sum_ms,"
    " sketch_alpha, sketch_keys, sketch_weights FROM ({closed}) AS per_region"
)


def pattern_stats_all_regions(
    url: str,
    start: datetime,
    end: datetime,
    level: StatsLevel | None = None,
    *,
    connect_timeout_secs: float = 10.0,
    statement_timeout_secs: float = 120.0,
) -> StatsReport:
    """Global statistics per pattern over the closed windows inside ``[start, end)``.

    One line per fingerprint with region :data:`ALL_REGIONS`: weighted counts and errors summed
    over all regions, percentiles from one sketch merged across all of them — percentiles of the
    regions cannot be combined. ``level`` as for :func:`pattern_stats_at_level`.
    """
    closed, params = closed_rollups_query(start, end, level)
    merged = _ALL_REGIONS_CLOSED.format(label=sql.Literal(ALL_REGIONS), closed=closed)
    return _report(url, merged, params, connect_timeout_secs, statement_timeout_secs)


def _report(url: str, closed: sql.Composable, params: dict[str, datetime], connect_timeout_secs: float,
            statement_timeout_secs: float) -> StatsReport:
    """Aggregate the closed windows of ``closed`` per (fingerprint, region) into a report."""
    query = sql.SQL(_LEVEL_QUERY).format(closed=closed)
    rows = _fetch(url, query, params, connect_timeout_secs, statement_timeout_secs)
    return StatsReport(params["start"], params["end"], _build(rows))


# --- rendering ----------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _round(value: float | None, digits: int) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def render_stats_json(report: StatsReport) -> str:
    """The ``stats --format json`` object: ``window{start,end}`` and ``patterns[]``."""
    document = {
        "window": {"start": _iso(report.window_start), "end": _iso(report.window_end)},
        "patterns": [
            {
                "fingerprint": p.fingerprint,
                "query_name": p.query_name,
                "region": p.region,
                # Weighted sums of float weights: round off the summation noise, not the data.
                "count": _round(p.count, 6),
                "errors": _round(p.errors, 6),
                "mean_ms": _round(p.mean_ms, 3),
                "p50_ms": _round(p.p50_ms, 3),
                "p95_ms": _round(p.p95_ms, 3),
                "p99_ms": _round(p.p99_ms, 3),
            }
            for p in report.patterns
        ],
    }
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)


_MAX_NAME: Final = 40


def _printable(text: str, limit: int) -> str:
    # Names come from events: escape control characters so they cannot break the table or send
    # escape sequences to the operator's terminal.
    safe = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"


def _count(value: float) -> str:
    return f"{value:,.0f}" if abs(value - round(value)) < 1e-6 else f"{value:,.2f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def render_stats_text(report: StatsReport) -> str:
    """An aligned table for humans, busiest patterns first."""
    period = f"{_iso(report.window_start)} .. {_iso(report.window_end)}"
    title = f"Query statistics {period} (closed windows)"
    if not report.patterns:
        return f"{title}\nno closed windows in this period"
    header = ("FINGERPRINT", "QUERY", "REGION", "COUNT", "ERRORS", "MEAN_MS", "P50_MS", "P95_MS",
              "P99_MS")
    rows = [
        (
            _printable(p.fingerprint, _MAX_NAME),
            _printable(p.query_name, _MAX_NAME) or "-",
            _printable(p.region, _MAX_NAME),
            _count(p.count),
            _count(p.errors),
            _ms(p.mean_ms),
            _ms(p.p50_ms),
            _ms(p.p95_ms),
            _ms(p.p99_ms),
        )
        for p in report.patterns
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    text_columns = 3  # left-aligned; the numbers are right-aligned

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i < text_columns else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([title, line(header), *(line(r) for r in rows)])
