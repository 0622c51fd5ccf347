"""Table-statistics snapshots: the application database's shape, read from its catalogue and rows.

The metrics service never connects to the application database (SPEC §6), so this runs where the
API already has read access: :func:`snapshot_table_stats` returns one ``TableStats`` record
(``schemas/table_stats.avsc``) per table, and :mod:`fraiseql_obs_producers.table_stats` publishes
them to Kafka; the analyzer reads them from the metrics database. This module only reads SQL.

Per table: ``pg_class.reltuples`` (row estimate; -1 when never analyzed), total size with indexes
and TOAST, sequential scans (``pg_stat_user_tables``); per column the planner's ``pg_stats``
(``null_frac``, ``n_distinct``, ``avg_width``); per index its definition, scans
(``pg_stat_user_indexes.idx_scan``), size, unique/primary flags.

JSONB paths -- what the analyzer needs and ``pg_stats`` does not have (it keeps one histogram for
the whole ``data`` column) -- are added as extra columns whose ``expression`` is the path in
FraiseQL's text-extraction form, e.g. ``data->>'status'``, ``data->'customer'->>'region'``
(:func:`fraiseql_observability.jsonpath.path_expression`). Which paths: those given in
``json_paths``, else discovered from a sample of rows (``TABLESAMPLE SYSTEM``, up to 1,000 rows):
every key path to a scalar, up to three levels deep, the ``max_paths`` most frequent first.

Their statistics, in order of preference:

1. an expression index on exactly that path has been analyzed: its ``pg_stats`` row (the
   planner's own numbers, from its 300 × statistics-target sample). PostgreSQL shows an index's
   statistics only to the index owner or a superuser; a read-only role falls back to (2);
2. otherwise a bounded sample: ``sample_rows`` rows (default 30,000, ANALYZE's default sample)
   read with ``TABLESAMPLE SYSTEM (p) REPEATABLE (seed)``, ``p`` chosen from ``reltuples`` so the
   expected sample is ``sample_rows`` -- or the whole table when it is that small, which makes
   the values exact. ``null_frac`` is the null share of the sample; ``n_distinct`` follows
   ANALYZE: the Haas-Stokes Duj1 estimator ``n·d / (n − f1 + f1·n/N)`` over the non-null sample
   (``d`` distinct values, ``f1`` seen once, ``N`` non-null rows in the table), -1 × (1 −
   null_frac) when every sampled value is unique, ``d`` when every value repeats, and a negative
   fraction of the row count when the estimate exceeds 10 % of the rows (the ``pg_stats``
   convention). ``avg_width`` is the mean size of the extracted text datum (length + 4-byte
   header), as ANALYZE reports it for an expression. SYSTEM sampling reads whole pages: values
   clustered by insertion order are sampled in runs, so their n_distinct can be underestimated.

Everything runs in one read-only transaction with a statement timeout; identifiers and path keys
reach SQL only through ``psycopg.sql.Identifier``/``Literal``.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from fraiseql_observability.db import connect, describe_error
from fraiseql_observability.jsonpath import InvalidJsonPath, JsonPath, parse_json_path
from fraiseql_observability.secrets import mask_url
from fraiseql_observability.timeutil import now_micros

from .errors import TableStatsError

__all__ = [
    "DEFAULT_MAX_PATHS",
    "DEFAULT_SAMPLE_ROWS",
    "TableStatsError",
    "estimate_n_distinct",
    "snapshot_table_stats",
    "workload_json_paths",
]

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_ROWS: Final = 30_000
DISCOVERY_SAMPLE_ROWS: Final = 1_000
DEFAULT_MAX_PATHS: Final = 64
MAX_PATH_DEPTH: Final = 3
_SAMPLE_SEED: Final = 0
_SYSTEM_SCHEMAS: Final = ("pg_catalog", "information_schema", "pg_toast")


def workload_json_paths(patterns: Iterable[Any]) -> dict[str, list[str]]:
    """``{view: [dotted paths]}`` read by a workload's patterns (``QueryPattern.jsonb_paths``)."""
    out: dict[str, dict[str, None]] = {}
    for pattern in patterns:
        for path in pattern.jsonb_paths:
            out.setdefault(pattern.view, {})[".".join(path)] = None
    return {view: list(paths) for view, paths in out.items()}


def estimate_n_distinct(*, sampled: int, nonnull: int, distinct: int, singletons: int,
                        total_rows: float, exact: bool) -> float | None:
    """ANALYZE's distinct-value estimate in the ``pg_stats.n_distinct`` convention.

    ``sampled`` rows were read (``nonnull`` of them non-null, holding ``distinct`` values of
    which ``singletons`` appear once) from a table of ``total_rows``; ``exact`` when the sample
    is the whole table. Positive: a count of values; negative: minus a fraction of the rows
    (used once the count exceeds 10 % of the rows, so it scales with the table). None when
    nothing was sampled.
    """
    if sampled <= 0:
        return None
    if nonnull <= 0 or distinct <= 0:
        return 0.0
    null_frac = 1.0 - nonnull / sampled
    total = max(float(total_rows), float(sampled))
    if exact:
        estimate = float(distinct)
    elif singletons >= distinct:  # every sampled value unique: assume the column is unique
        return -1.0 * (1.0 - null_frac)
    elif singletons == 0:  # every sampled value repeats: assume these are all the values
        estimate = float(distinct)
    else:
        n = float(nonnull)
        big_n = total * (1.0 - null_frac)
        estimate = n * distinct / ((n - singletons) + singletons * n / big_n)
        estimate = math.floor(min(max(estimate, float(distinct)), big_n) + 0.5)
    if estimate > 0.1 * total:
        return -(estimate / total)
    return estimate


# --- catalogue reads ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Relation:
    oid: int
    schema: str
    name: str
    relkind: str
    reltuples: float
    total_bytes: int
    seq_scans: int


_RELATIONS: Final = sql.SQL("""
SELECT c.oid, n.nspname, c.relname, c.relkind::text, c.reltuples::float8,
       pg_total_relation_size(c.oid), coalesce(s.seq_scan, 0)
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
WHERE {where}
ORDER BY n.nspname, c.relname
""")


def _relations(conn: psycopg.Connection[Any], tables: Sequence[str] | None) -> list[_Relation]:
    where: sql.Composable
    if tables is None:
        where = sql.SQL(
            "c.relkind IN ('r', 'p', 'm') AND NOT c.relispartition "
            "AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg\\_temp\\_%%' "
            "AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'")
        rows = conn.execute(_RELATIONS.format(where=where), (list(_SYSTEM_SCHEMAS),)).fetchall()
        return [_Relation(*row) for row in rows]
    found: list[_Relation] = []
    for name in tables:
        schema, _, table = name.rpartition(".")
        qualified = (sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
                     if schema else sql.Identifier(table))
        # to_regclass of a quoted name: NULL (skipped) when the table does not exist.
        where = sql.SQL("c.oid = to_regclass({})").format(
            sql.Literal(qualified.as_string(conn)))
        rows = conn.execute(_RELATIONS.format(where=where)).fetchall()
        if not rows:
            log.warning("table-stats: no table %s, skipped", name)
        found.extend(_Relation(*row) for row in rows)
    return found


_COLUMNS: Final = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), s.null_frac::float8, s.n_distinct::float8,
       s.avg_width, a.atttypid = 'jsonb'::regtype
FROM pg_attribute AS a
LEFT JOIN pg_stats AS s
       ON s.schemaname = %(schema)s AND s.tablename = %(table)s AND s.attname = a.attname
      AND s.inherited = %(inherited)s
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_INDEXES: Final = """
SELECT ic.relname, pg_get_indexdef(i.indexrelid), coalesce(s.idx_scan, 0),
       pg_relation_size(i.indexrelid), i.indisunique, i.indisprimary
FROM pg_index AS i
JOIN pg_class AS ic ON ic.oid = i.indexrelid
LEFT JOIN pg_stat_user_indexes AS s ON s.indexrelid = i.indexrelid
WHERE i.indrelid = %(oid)s
ORDER BY ic.relname
"""

# Statistics of analyzed expression-index columns (non-partial indexes: a partial index's
# statistics describe only the rows it covers).
_INDEX_EXPRESSIONS: Final = """
SELECT pg_get_indexdef(i.indexrelid, a.attnum, true), s.null_frac::float8, s.n_distinct::float8,
       s.avg_width
FROM pg_index AS i
JOIN pg_class AS ic ON ic.oid = i.indexrelid
JOIN pg_namespace AS n ON n.oid = ic.relnamespace
JOIN pg_attribute AS a ON a.attrelid = i.indexrelid AND a.attnum > 0 AND a.attnum <= i.indnkeyatts
JOIN pg_stats AS s ON s.schemaname = n.nspname AND s.tablename = ic.relname
                  AND s.attname = a.attname
WHERE i.indrelid = %(oid)s AND i.indpred IS NULL AND i.indkey[a.attnum - 1] = 0
"""


def _discover_paths(conn: psycopg.Connection[Any], rel: _Relation, columns: Sequence[str],
                    max_paths: int) -> list[JsonPath]:
    paths: list[JsonPath] = []
    for column in columns:
        query = sql.SQL("""
WITH RECURSIVE s AS MATERIALIZED (
    SELECT {col} AS d FROM {table} {sample} LIMIT {limit}
), walk(path, value) AS (
    SELECT ARRAY[e.key], e.value
    FROM s, jsonb_each(CASE WHEN jsonb_typeof(s.d) = 'object' THEN s.d END) AS e
  UNION ALL
    SELECT w.path || e.key, e.value
    FROM walk AS w, jsonb_each(CASE WHEN jsonb_typeof(w.value) = 'object' THEN w.value END) AS e
    WHERE cardinality(w.path) < {depth}
)
SELECT path FROM walk WHERE jsonb_typeof(value) NOT IN ('object', 'array')
GROUP BY path ORDER BY count(*) DESC, path LIMIT {max_paths}
""").format(col=sql.Identifier(column),
            table=sql.Identifier(rel.schema, rel.name),
            sample=_sample_clause(rel, DISCOVERY_SAMPLE_ROWS),
            limit=sql.Literal(DISCOVERY_SAMPLE_ROWS), depth=sql.Literal(MAX_PATH_DEPTH),
            max_paths=sql.Literal(max_paths))
        paths.extend(JsonPath(column, tuple(row[0])) for row in conn.execute(query))
    return paths[:max_paths]


def _scalar(conn: psycopg.Connection[Any], query: sql.SQL | sql.Composed) -> Any:
    row = conn.execute(query).fetchone()
    return None if row is None else row[0]


def _sample_clause(rel: _Relation, rows: int) -> sql.Composable:
    """``TABLESAMPLE SYSTEM`` sized from reltuples so about ``rows`` rows come back; nothing
    (read from the start, whole table if small) when the table is that small or never analyzed."""
    if rel.reltuples <= rows:
        return sql.SQL("")
    percent = min(100.0, 100.0 * rows / rel.reltuples)
    return sql.SQL("TABLESAMPLE SYSTEM ({}) REPEATABLE ({})").format(
        sql.Literal(round(percent, 6)), sql.Literal(_SAMPLE_SEED))


def _sampled_path_stats(conn: psycopg.Connection[Any], rel: _Relation, paths: Sequence[JsonPath],
                        sample_rows: int) -> dict[JsonPath, dict[str, Any]]:
    if not paths:
        return {}
    columns = list(dict.fromkeys(p.column for p in paths))
    limit = 2 * sample_rows  # SYSTEM sampling returns about sample_rows; cap a stale estimate
    values = sql.SQL(", ").join(
        sql.SQL("({}, {})").format(sql.Literal(i), path.sql()) for i, path in enumerate(paths))
    query = sql.SQL("""
WITH s AS MATERIALIZED (
    SELECT {columns} FROM {table} {sample} LIMIT {limit}
), x AS (
    SELECT p.i, p.v FROM s CROSS JOIN LATERAL (VALUES {values}) AS p(i, v)
), g AS (
    SELECT i, v, count(*) AS c FROM x WHERE v IS NOT NULL GROUP BY i, v
)
SELECT (SELECT count(*) FROM s), i, count(*), count(*) FILTER (WHERE c = 1), sum(c),
       sum(c * (octet_length(v) + 4))::float8 / sum(c)
FROM g GROUP BY i
""").format(columns=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            table=sql.Identifier(rel.schema, rel.name), sample=_sample_clause(rel, sample_rows),
            limit=sql.Literal(limit), values=values)
    rows = conn.execute(query).fetchall()
    if rows:
        sampled = int(rows[0][0])
    else:  # no path has a value in the sample: count the sample on its own
        sampled = int(_scalar(conn, sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} {} LIMIT {}) s")
                              .format(sql.Identifier(rel.schema, rel.name),
                                      _sample_clause(rel, sample_rows), sql.Literal(limit))))
    exact = rel.reltuples <= sample_rows and sampled < limit
    total = float(sampled) if exact or rel.reltuples < 0 else rel.reltuples
    found = {int(row[1]): row for row in rows}
    out: dict[JsonPath, dict[str, Any]] = {}
    for i, path in enumerate(paths):
        row = found.get(i)
        distinct, singletons, nonnull = (int(row[2]), int(row[3]), int(row[4])) if row else (0, 0, 0)
        out[path] = {
            "null_frac": (1.0 - nonnull / sampled) if sampled else None,
            "n_distinct": estimate_n_distinct(sampled=sampled, nonnull=nonnull, distinct=distinct,
                                              singletons=singletons, total_rows=total,
                                              exact=exact),
            "avg_width": round(row[5]) if row else (0 if sampled else None),
        }
    return out


def _indexed_path(expression: str) -> JsonPath | None:
    """The JSONB text path an index column computes (``pg_get_indexdef`` text), else None."""
    if "->" not in expression and "#>" not in expression:
        return None  # not an extraction (parse_json_path would read it as a dotted path)
    try:
        return parse_json_path(expression)
    except InvalidJsonPath:
        return None


def _table_record(conn: psycopg.Connection[Any], rel: _Relation, *, paths: Sequence[JsonPath] | None,
                  max_paths: int, sample_rows: int) -> dict[str, Any]:
    params = {"schema": rel.schema, "table": rel.name, "oid": rel.oid,
              "inherited": rel.relkind == "p"}
    columns: list[dict[str, Any]] = []
    jsonb_columns: list[str] = []
    for name, data_type, null_frac, n_distinct, avg_width, is_jsonb in conn.execute(_COLUMNS, params):
        columns.append({"expression": name, "data_type": data_type, "null_frac": null_frac,
                        "n_distinct": n_distinct, "avg_width": avg_width})
        if is_jsonb:
            jsonb_columns.append(name)
    indexes = [
        {"name": name, "definition": definition, "scans": int(scans), "size_bytes": int(size),
         "is_unique": bool(unique), "is_primary": bool(primary)}
        for name, definition, scans, size, unique, primary in conn.execute(_INDEXES, params)
    ]
    if paths is None:
        paths = _discover_paths(conn, rel, jsonb_columns, max_paths) if rel.relkind != "v" else []
    paths = list(dict.fromkeys(paths))
    from_index: dict[JsonPath, dict[str, Any]] = {}
    for expression, null_frac, n_distinct, avg_width in conn.execute(_INDEX_EXPRESSIONS, params):
        indexed = _indexed_path(expression)
        if indexed is not None and indexed in paths and indexed not in from_index:
            from_index[indexed] = {"null_frac": null_frac, "n_distinct": n_distinct,
                                   "avg_width": avg_width}
    sampled = _sampled_path_stats(conn, rel, [p for p in paths if p not in from_index],
                                  sample_rows)
    for path in paths:
        stats = from_index.get(path) or sampled[path]
        columns.append({"expression": path.expression, "data_type": "text", **stats})
    return {
        "schema_name": rel.schema,
        "table_name": rel.name,
        "relkind": rel.relkind,
        "row_estimate": float(rel.reltuples),
        "total_bytes": int(rel.total_bytes),
        "seq_scans": int(rel.seq_scans),
        "columns": columns,
        "indexes": indexes,
    }


def _paths_for(rel: _Relation, json_paths: Mapping[str, Sequence[str]] | None) -> list[JsonPath] | None:
    if json_paths is None:
        return None
    given = json_paths.get(f"{rel.schema}.{rel.name}", json_paths.get(rel.name, ()))
    return [parse_json_path(text) for text in given]


def snapshot_table_stats(
    app_db_url: str,
    *,
    region: str,
    tables: Sequence[str] | None = None,
    json_paths: Mapping[str, Sequence[str]] | None = None,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    max_paths: int = DEFAULT_MAX_PATHS,
    statement_timeout_ms: int = 60_000,
) -> list[dict[str, Any]]:
    """One ``TableStats`` record (a dict ready for the codec) per table; see the module doc.

    ``tables``: names (``tv_order`` or ``public.tv_order``); default every ordinary,
    partitioned and materialized table outside the system schemas (missing ones are skipped
    with a warning). ``json_paths``: ``{table: [path, …]}`` with paths as accepted by
    :func:`parse_json_path`; a table without an entry gets no path statistics; ``None``
    discovers paths by sampling. All records share ``snapshot_id`` and ``taken_at``.
    Raises :class:`TableStatsError` (password masked) when the database cannot be read, and
    :class:`~fraiseql_observability.jsonpath.InvalidJsonPath` for a path it cannot read.
    """
    if sample_rows < 1:
        raise TableStatsError(f"sample_rows = {sample_rows}: must be >= 1")
    snapshot_id = str(uuid.uuid4())
    taken_at = now_micros()
    conn = connect(app_db_url, application_name="fraiseql-table-stats", read_only=True,
                   statement_timeout=statement_timeout_ms / 1000, error=TableStatsError,
                   what="the application database")
    try:
        with conn:
            source = _scalar(conn, sql.SQL("SELECT current_database()"))
            records = []
            for rel in _relations(conn, tables):
                record = _table_record(conn, rel, paths=_paths_for(rel, json_paths),
                                       max_paths=max_paths, sample_rows=sample_rows)
                records.append({"snapshot_id": snapshot_id, "taken_at": taken_at,
                                "source": source, "region": region, **record})
            conn.rollback()
    except psycopg.Error as exc:
        raise TableStatsError(f"cannot read table statistics from {mask_url(app_db_url)}: "
                              f"{describe_error(exc)}") from None
    return records
