"""The SQL the sink's writer sends, and the parameters it binds, built once from fixed tables.

Kept apart from :mod:`fraiseql_obs_sinks.writer` (which owns transactions, retries and
partitions) because the statements are where the least-privilege and speed decisions of the
writer's docstring are spelled out, and they are easier to review as one page of SQL:

* every upsert passes its values as parameters in ``DO UPDATE SET`` instead of reading
  ``EXCLUDED.col`` (the collector holds SELECT on the conflict keys only);
* new rollups go in with one ``INSERT … SELECT FROM unnest(<one array per column>) … DO NOTHING
  RETURNING <key>``; only the existing keys are then overwritten by :data:`UPSERT_ROLLUPS`;
* identifiers and casts come from the column tables below, never from data.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from psycopg import sql

from fraiseql_observability.metricsdb import SCHEMA

from .records import RollupRow, TableStatsRow

__all__ = [
    "ENSURE_PARTITIONS",
    "FOLD_HOURLY",
    "INSERT_NEW_ROLLUPS",
    "REFRESH_HOURLY",
    "ROLLUPS_HORIZON",
    "ROLLUP_COLUMNS",
    "ROLLUP_KEY",
    "TABLE_STATS_COLUMNS",
    "TABLE_STATS_KEY",
    "UPSERT_PATTERNS",
    "UPSERT_ROLLUPS",
    "UPSERT_TABLE_STATS",
    "HourlyCell",
    "cell_arrays",
    "fold_document",
    "rollup_arrays",
    "rollup_params",
    "stats_params",
]

# (fingerprint, region, hour_start, sketch_alpha): one row of fraiseql_metrics.rollups_hourly.
HourlyCell = tuple[str, str, datetime, float]

# (column, SQL type) of the rollups table in insert order; the first two are the primary key.
ROLLUP_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("rollup_id", "uuid"),
    ("window_start", "timestamptz"),
    ("fingerprint", "text"),
    ("region", "text"),
    ("window_end", "timestamptz"),
    ("source_topic", "text"),
    ("source_partition", "int4"),
    ("first_offset", "int8"),
    ("last_offset", "int8"),
    ("event_count", "int8"),
    ("count", "float8"),
    ("error_count", "float8"),
    ("cache_hits", "float8"),
    ("rows_sum", "float8"),
    ("exec_sum_ms", "float8"),
    ("exec_min_ms", "float8"),
    ("exec_max_ms", "float8"),
    ("sql_generation_sum_ms", "float8"),
    ("db_round_trip_sum_ms", "float8"),
    ("projection_sum_ms", "float8"),
    ("sketch_alpha", "float8"),
    ("sketch_keys", "int4[]"),
    ("sketch_weights", "float8[]"),
)
ROLLUP_KEY: Final = ("rollup_id", "window_start")

TABLE_STATS_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("snapshot_id", "uuid"),
    ("schema_name", "text"),
    ("table_name", "text"),
    ("taken_at", "timestamptz"),
    ("source", "text"),
    ("region", "text"),
    ("relkind", "text"),
    ("row_estimate", "float8"),
    ("total_bytes", "int8"),
    ("seq_scans", "int8"),
    ("columns", "jsonb"),
    ("indexes", "jsonb"),
)
TABLE_STATS_KEY: Final = ("snapshot_id", "schema_name", "table_name", "taken_at")


def _upsert(table: str, columns: Sequence[tuple[str, str]], key: Sequence[str]) -> sql.Composed:
    """``INSERT … ON CONFLICT (key) DO UPDATE SET col = <same parameter>`` (no EXCLUDED reads)."""

    def value(name: str, type_name: str) -> sql.Composable:
        # The cast is spelled from a fixed table of types above, never from data.
        return sql.SQL("{}::{}").format(sql.Placeholder(name), sql.SQL(type_name))

    names = [name for name, _ in columns]
    return sql.SQL(
        "INSERT INTO {table} ({columns}) VALUES ({values})"
        " ON CONFLICT ({key}) DO UPDATE SET {updates}, written_at = now()"
    ).format(
        table=sql.Identifier(SCHEMA, table),
        columns=sql.SQL(", ").join(map(sql.Identifier, names)),
        values=sql.SQL(", ").join(value(n, t) for n, t in columns),
        key=sql.SQL(", ").join(map(sql.Identifier, key)),
        updates=sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(n), value(n, t))
            for n, t in columns
            if n not in key
        ),
    )


UPSERT_ROLLUPS: Final = _upsert("rollups", ROLLUP_COLUMNS, ROLLUP_KEY)

# The fast path for new rollups: the whole batch as one parameter array per column, one statement.
# Sketch arrays are ragged (PostgreSQL arrays are rectangular), so they travel as array literals
# in a text[] and are cast per row. Rows that already exist are left alone here (DO NOTHING needs
# no privilege beyond INSERT and SELECT on the key) and overwritten by UPSERT_ROLLUPS.
_TEXT_ARRAY_COLUMNS: Final = frozenset({"sketch_keys", "sketch_weights"})


def _insert_new(table: str, columns: Sequence[tuple[str, str]], key: Sequence[str]) -> sql.Composed:
    names = [name for name, _ in columns]
    return sql.SQL(
        "INSERT INTO {table} ({columns}) SELECT {values} FROM unnest({arrays}) AS u ({columns})"
        " ON CONFLICT ({key}) DO NOTHING RETURNING {key}"
    ).format(
        table=sql.Identifier(SCHEMA, table),
        columns=sql.SQL(", ").join(map(sql.Identifier, names)),
        values=sql.SQL(", ").join(
            sql.SQL("u.{}::{}").format(sql.Identifier(n), sql.SQL(t)) for n, t in columns
        ),
        # Types come from the fixed table above, never from data.
        arrays=sql.SQL(", ").join(
            # %b: binary arrays, several times cheaper to adapt than text ones (no quoting).
            sql.SQL("%b::text[]" if n in _TEXT_ARRAY_COLUMNS else f"%b::{t}[]")
            for n, t in columns
        ),
        key=sql.SQL(", ").join(map(sql.Identifier, key)),
    )


INSERT_NEW_ROLLUPS: Final = _insert_new("rollups", ROLLUP_COLUMNS, ROLLUP_KEY)
UPSERT_TABLE_STATS: Final = _upsert("table_stats", TABLE_STATS_COLUMNS, TABLE_STATS_KEY)
ENSURE_PARTITIONS: Final = sql.SQL("SELECT {}(%s, %s)").format(
    sql.Identifier(SCHEMA, "ensure_partitions")
)
REFRESH_HOURLY: Final = sql.SQL(
    "SELECT {}(%b::text[], %b::text[], %b::timestamptz[], %b::float8[])"
).format(sql.Identifier(SCHEMA, "refresh_hourly"))

ROLLUPS_HORIZON: Final = sql.SQL("SELECT {}()").format(sql.Identifier(SCHEMA, "rollups_horizon"))
# Very late rollups (hours before the retention horizon) as one JSON document: rare, so clarity
# beats speed here (19 parallel arrays would be the alternative).
FOLD_HOURLY: Final = sql.SQL("SELECT * FROM {}(%s::jsonb)").format(
    sql.Identifier(SCHEMA, "fold_hourly")
)
# The columns of a rollup that its hourly cell sums or merges (fold_hourly's record type).
_FOLD_COLUMNS: Final = (
    "fingerprint", "region", "sketch_alpha", "event_count", "count", "error_count", "cache_hits",
    "rows_sum", "exec_sum_ms", "exec_min_ms", "exec_max_ms", "sql_generation_sum_ms",
    "db_round_trip_sum_ms", "projection_sum_ms",
)


def fold_document(rows: Sequence[RollupRow]) -> list[dict[str, Any]]:
    """The JSON argument of FOLD_HOURLY. Floats go through json's repr(), which reads back as the
    same float8; validation already excluded NaN and infinities."""
    return [
        {
            "rollup_id": str(r.rollup_id),
            "window_start": r.window_start.isoformat(),
            "window_end": r.window_end.isoformat(),
            **{name: getattr(r, name) for name in _FOLD_COLUMNS},
            "sketch_keys": list(r.sketch_keys),
            "sketch_weights": list(r.sketch_weights),
        }
        for r in rows
    ]


# The catalogue row describes the newest window seen; on a tie of last_seen the greatest
# (query_name, sql) in byte order wins, the same rule as max() in Python over str (UTF-8 byte
# order equals code point order), so the outcome does not depend on the order of batches.
_NEWER: Final = (
    '(EXCLUDED.last_seen, EXCLUDED.query_name COLLATE "C", EXCLUDED.sql COLLATE "C")'
    ' > (p.last_seen, p.query_name COLLATE "C", p.sql COLLATE "C")'
)
# One statement per batch (fingerprints are unique in it). EXCLUDED may be read here: the collector
# holds SELECT on every column of the catalogue (no PII, SPEC §3).
UPSERT_PATTERNS: Final = sql.SQL(
    "INSERT INTO {table} AS p (fingerprint, query_name, sql, first_seen, last_seen)"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::timestamptz[],"
    " %b::timestamptz[])"
    " ON CONFLICT (fingerprint) DO UPDATE SET"
    " first_seen = LEAST(p.first_seen, EXCLUDED.first_seen),"
    " last_seen = GREATEST(p.last_seen, EXCLUDED.last_seen),"
    " query_name = CASE WHEN {newer} THEN EXCLUDED.query_name ELSE p.query_name END,"
    " sql = CASE WHEN {newer} THEN EXCLUDED.sql ELSE p.sql END"
    # Skip the write (a new row version) when nothing would change: the common case.
    " WHERE p.first_seen > EXCLUDED.first_seen OR {newer}"
).format(table=sql.Identifier(SCHEMA, "patterns"), newer=sql.SQL(_NEWER))


def cell_arrays(cells: Sequence[HourlyCell]) -> tuple[list[str], list[str], list[datetime], list[float]]:
    return ([c[0] for c in cells], [c[1] for c in cells], [c[2] for c in cells],
            [c[3] for c in cells])


def rollup_params(row: RollupRow) -> dict[str, Any]:
    params = {name: getattr(row, name) for name, _ in ROLLUP_COLUMNS}
    params["sketch_keys"] = list(row.sketch_keys)
    params["sketch_weights"] = list(row.sketch_weights)
    return params


def _array_literal(values: Sequence[float] | Sequence[int]) -> str:
    # repr() is the shortest text that reads back as the same float (PostgreSQL's float8 input is
    # correctly rounded), so weights arrive bit-exact; validation already excluded NaN and inf.
    return "{" + ",".join(map(repr, values)) + "}"


def rollup_arrays(rows: Sequence[RollupRow]) -> list[list[Any]]:
    """One list per column of ROLLUP_COLUMNS, in order (the parameters of INSERT_NEW_ROLLUPS)."""
    arrays: list[list[Any]] = []
    for name, _ in ROLLUP_COLUMNS:
        if name in _TEXT_ARRAY_COLUMNS:
            arrays.append([_array_literal(getattr(r, name)) for r in rows])
        else:
            arrays.append([getattr(r, name) for r in rows])
    return arrays


def stats_params(row: TableStatsRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name, _ in TABLE_STATS_COLUMNS}
