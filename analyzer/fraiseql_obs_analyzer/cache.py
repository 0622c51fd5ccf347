"""Merged sketches per pattern and closed UTC day (``sinks/migrations/0004_analysis_cache.sql``).

Merging the sketches of 14 days of hourly cells is the expensive part of a long analysis (tens of
millions of buckets); past days rarely change. :func:`refresh_sketch_cache` (run by the scheduler,
which may write) stores one merged sketch per (day, pattern); :func:`split_window` tells
:func:`fraiseql_obs_analyzer.evidence.load_sketches` (read-only) which whole days of a window it may take from
the cache and which ranges it must still merge from the rollups.

A cached day is used only while the day's hourly cells are as they were when it was built: the
same number of cells and the same latest ``refreshed_at`` (the sink sets it to ``now()`` whenever
it recomputes a cell — a late rollup, a replay, a backfill). The state is captured *before* the
day is merged, so a cell refreshed meanwhile makes the entry stale rather than wrong. Minute
windows that cross an hour boundary (only with a window size that does not divide an hour) are
outside that check.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

from fraiseql_observability.db import connect, describe_error
from fraiseql_observability.metricsdb.rollups import closed_rollups_query
from fraiseql_observability.secrets import mask_url

from .errors import AnalyzerError

__all__ = ["CacheRefresh", "cache_available", "refresh_sketch_cache", "split_window"]

log = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]
DAY: Final = timedelta(days=1)

_STATE: Final = """
SELECT (hour_start AT TIME ZONE 'UTC')::date, count(*), max(refreshed_at)
FROM fraiseql_metrics.rollups_hourly
WHERE hour_start >= %(d0)s AND hour_start < %(d1)s
GROUP BY 1
"""
_CACHED: Final = """
SELECT day, source_cells, source_refreshed_at FROM fraiseql_metrics.analysis_cached_days
WHERE day >= %(d0)s AND day < %(d1)s
"""
_BUILD: Final = """
WITH closed AS ({closed}),
counts AS (
    SELECT fingerprint, sketch_alpha AS alpha, sum(count) AS count
    FROM closed GROUP BY fingerprint, sketch_alpha
),
buckets AS (
    SELECT c.fingerprint, c.sketch_alpha AS alpha, b.key, sum(b.weight) AS weight
    FROM closed AS c
    CROSS JOIN LATERAL unnest(c.sketch_keys, c.sketch_weights) AS b(key, weight)
    GROUP BY c.fingerprint, c.sketch_alpha, b.key
)
INSERT INTO fraiseql_metrics.analysis_daily_sketches
    (day, fingerprint, sketch_alpha, count, sketch_keys, sketch_weights)
SELECT %(day)s, n.fingerprint, n.alpha, n.count,
       coalesce(s.keys, '{{}}'), coalesce(s.weights, '{{}}')
FROM counts AS n
LEFT JOIN (SELECT fingerprint, alpha, array_agg(key ORDER BY key) AS keys,
                  array_agg(weight ORDER BY key) AS weights
           FROM buckets GROUP BY fingerprint, alpha) AS s USING (fingerprint, alpha)
"""


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _whole_days(start: datetime, end: datetime) -> tuple[date, date]:
    """[first, last) UTC days lying entirely inside [start, end)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    first = start.date() if start == _midnight(start.date()) else start.date() + DAY
    return first, end.date()


def cache_available(conn: Conn) -> bool:
    row = conn.execute(
        "SELECT to_regclass('fraiseql_metrics.analysis_daily_sketches') IS NOT NULL"
        " AND to_regclass('fraiseql_metrics.rollups_hourly') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _states(conn: Conn, first: date, last: date) -> dict[date, tuple[int, datetime | None]]:
    params = {"d0": _midnight(first), "d1": _midnight(last)}
    return {day: (int(cells), refreshed)
            for day, cells, refreshed in conn.execute(_STATE, params).fetchall()}


def split_window(conn: Conn, start: datetime, end: datetime
                 ) -> tuple[list[date], list[tuple[datetime, datetime]]]:
    """(cached days to read, ranges to merge from the rollups) covering [start, end) exactly."""
    first, last = _whole_days(start, end)
    if last <= first or not cache_available(conn):
        return [], [(start, end)]
    states = _states(conn, first, last)
    cached = {day: (int(cells), refreshed) for day, cells, refreshed in conn.execute(
        _CACHED, {"d0": first, "d1": last}).fetchall()}
    valid = sorted(day for day, state in cached.items()
                   if states.get(day, (0, None)) == state)
    ranges: list[tuple[datetime, datetime]] = []
    cursor = start
    for day in valid:
        if _midnight(day) > cursor:
            ranges.append((cursor, _midnight(day)))
        cursor = _midnight(day) + DAY
    if cursor < end:
        ranges.append((cursor, end))
    return valid, ranges


@dataclass(frozen=True, slots=True)
class CacheRefresh:
    built: tuple[date, ...]
    removed: int
    seconds: float


def refresh_sketch_cache(url: str, *, retention_days: int, now: datetime | None = None,
                         connect_timeout_secs: float = 10.0) -> CacheRefresh:
    """(Re)build the cached days that are missing or stale, drop those past retention."""
    began = time.monotonic()
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    first = today - timedelta(days=retention_days)
    built: list[date] = []
    try:
        with connect(url, application_name="fraiseql-analysis-cache", autocommit=True,
                     connect_timeout=connect_timeout_secs,
                     settings={"jit": "off", "enable_memoize": "off", "work_mem": "64MB"},
                     error=AnalyzerError, what="the metrics database") as conn:
            if not cache_available(conn):
                return CacheRefresh((), 0, 0.0)
            removed = conn.execute("DELETE FROM fraiseql_metrics.analysis_cached_days "
                                   "WHERE day < %s", (first,)).rowcount
            states = _states(conn, first, today)
            cached = {day: (int(cells), refreshed) for day, cells, refreshed in conn.execute(
                _CACHED, {"d0": first, "d1": today}).fetchall()}
            for day in sorted(states):
                state = states[day]
                if cached.get(day) == state:
                    continue
                closed, params = closed_rollups_query(_midnight(day), _midnight(day) + DAY)
                with conn.transaction():
                    # One builder at a time; the state recorded is the one read before merging.
                    conn.execute("SELECT pg_catalog.pg_advisory_xact_lock("
                                 "pg_catalog.hashtext('fraiseql_metrics.analysis_cache'))")
                    conn.execute("DELETE FROM fraiseql_metrics.analysis_cached_days "
                                 "WHERE day = %s", (day,))
                    conn.execute("INSERT INTO fraiseql_metrics.analysis_cached_days "
                                 "(day, source_cells, source_refreshed_at) VALUES (%s, %s, %s)",
                                 (day, state[0], state[1]))
                    conn.execute(sql.SQL(_BUILD).format(closed=closed), {**params, "day": day})
                built.append(day)
    except psycopg.Error as exc:
        raise AnalyzerError(f"cannot refresh the analysis cache in {mask_url(url)}: "
                            f"{describe_error(exc)}") from None
    seconds = time.monotonic() - began
    if built or removed:
        log.info("analysis cache: %d day(s) built, %d removed in %.1f s", len(built), removed,
                 seconds)
    return CacheRefresh(tuple(built), removed, seconds)
