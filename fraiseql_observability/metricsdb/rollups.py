"""How a reader takes rollups out of the metrics database: the closed windows of a period.

This sits next to the migrations because it depends on them: the hourly cells of
``0002_hourly_rollups.sql`` and the predicate of its partial index ``rollups_cross_hour_idx``,
which :data:`_CLOSED_HOURLY` repeats verbatim so the planner can use it. Change them together.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from psycopg import sql

from ..timeutil import EPOCH, HOUR

__all__ = ["HOURLY_LEVEL_FROM", "StatsLevel", "choose_level", "closed_rollups_query", "utc"]


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; naive means UTC, as on the command line."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


StatsLevel = Literal["minute", "hourly"]

# From this period length on, whole hours are read from fraiseql_metrics.rollups_hourly: one row
# per pattern, region and hour instead of up to 60 × (source partitions) minute rows. Below it the
# gain is small and the minute level is the simplest truth.
HOURLY_LEVEL_FROM: Final = timedelta(hours=6)

# The columns both levels share: what a reader may aggregate over ``closed``.
_LEVEL_COLUMNS: Final = sql.SQL(
    "fingerprint, region, event_count, count, error_count, cache_hits, rows_sum, exec_sum_ms,"
    " exec_min_ms, exec_max_ms, sql_generation_sum_ms, db_round_trip_sum_ms, projection_sum_ms,"
    " sketch_alpha, sketch_keys, sketch_weights"
)

_CLOSED_MINUTE: Final = sql.SQL(
    "SELECT {columns} FROM fraiseql_metrics.rollups"
    " WHERE window_start >= %(start)s AND window_start < %(end)s AND window_end <= %(end)s"
).format(columns=_LEVEL_COLUMNS)

# The same closed windows with the whole hours [h0, h1) read from their hourly cells. A cell holds
# the minute windows lying inside its hour, so the minute level only contributes the ragged edges
# [start, h0) and [h1, end) and the windows that cross an hour boundary (in no cell; found through
# the partial index rollups_cross_hour_idx, whose predicate is repeated here verbatim so that the
# planner can use it). The four parts are disjoint and together are exactly _CLOSED_MINUTE.
_CLOSED_HOURLY: Final = sql.SQL(
    "SELECT {columns} FROM fraiseql_metrics.rollups_hourly"
    " WHERE hour_start >= %(h0)s AND hour_start < %(h1)s"
    " UNION ALL SELECT {columns} FROM fraiseql_metrics.rollups"
    " WHERE window_start >= %(start)s AND window_start < %(h0)s AND window_end <= %(end)s"
    " UNION ALL SELECT {columns} FROM fraiseql_metrics.rollups"
    " WHERE window_start >= %(h1)s AND window_start < %(end)s AND window_end <= %(end)s"
    " UNION ALL SELECT {columns} FROM fraiseql_metrics.rollups"
    " WHERE window_start >= %(h0)s AND window_start < %(h1)s AND window_end <= %(end)s"
    " AND window_end - pg_catalog.date_bin('1 hour', window_start, '2000-01-01 00:00:00+00')"
    " > interval '1 hour'"
).format(columns=_LEVEL_COLUMNS)

def choose_level(start: datetime, end: datetime) -> StatsLevel:
    """``hourly`` for periods of :data:`HOURLY_LEVEL_FROM` or longer, else ``minute``.

    Both give the same statistics (sums within float rounding; identical merged sketches, hence
    identical percentiles), as long as the minute rows of the period are still kept: past the
    minute retention only the hourly level has data.
    """
    return "hourly" if utc(end) - utc(start) >= HOURLY_LEVEL_FROM else "minute"


def closed_rollups_query(
    start: datetime, end: datetime, level: StatsLevel | None = None
) -> tuple[sql.Composed, dict[str, datetime]]:
    """The closed windows inside ``[start, end)`` from the chosen level: ``(query, params)``.

    Columns: fingerprint, region, event_count, count, error_count, cache_hits, rows_sum,
    exec_sum_ms, exec_min_ms, exec_max_ms, sql_generation_sum_ms, db_round_trip_sum_ms,
    projection_sum_ms, sketch_alpha, sketch_keys, sketch_weights. Use it as
    ``sql.SQL("WITH closed AS ({}) SELECT … GROUP BY fingerprint, region").format(query)``:
    sum the sums, take min/max of min/max, merge sketches bucket-wise (never average per-row
    percentiles). ``level`` None: :func:`choose_level`.
    """
    start, end = utc(start), utc(end)
    if end <= start:
        raise ValueError("end must be after start")
    if (level or choose_level(start, end)) == "minute":
        return _CLOSED_MINUTE, {"start": start, "end": end}
    h0 = start + (EPOCH - start) % HOUR  # first whole hour at or after start
    h1 = end - (end - EPOCH) % HOUR  # end of the last whole hour before end
    if h1 <= h0:  # no whole hour inside: everything comes from the minute level
        h0 = h1 = start
    return _CLOSED_HOURLY, {"start": start, "end": end, "h0": h0, "h1": h1}
