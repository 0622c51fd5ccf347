"""SQL as real FraiseQL versions write it, for the analyzer's tests.

* FraiseQL 2.x (the Rust server, 2.19 run here, NOTES.md "Real FraiseQL, as it runs") pages
  through nested subqueries: the innermost ``_fq_page`` filters, sorts (with an ``id ASC``
  tiebreaker) and limits, numbering its rows with ``row_number() OVER (ORDER BY …)``; ``_fq_doc``
  detoasts the documents; the outermost SELECT projects them with ``JSON_OBJECT(… RETURNING
  json)`` (PostgreSQL 16+) and restores the page order. :func:`fraiseql2_sql` writes that
  statement around the filter, sort and limit of a flat ``SELECT data FROM view WHERE …`` —
  or, with ``postgres15=True``, the same statement a PostgreSQL 15 can run (``jsonb_build_object``
  for ``JSON_OBJECT``, no ``pg_column_toast_chunk_id``, which is 17+).
* FraiseQL 0.5.3 (PyPI) inlines values; :data:`FRAISEQL05_SQL` holds statements its
  ``FraiseQLRepository._build_find_query`` generated (with dictionary and typed where inputs,
  ``raw_json`` with and without field paths), as the instrumentation sees them before
  normalization.
"""

from __future__ import annotations

from typing import Final

import pglast
from pglast import ast
from pglast.stream import RawStream

__all__ = ["FRAISEQL05_SQL", "FRAISEQL2_REAL", "fraiseql2_sql"]

# The statement FraiseQL 2.19 sent for orders(where: {total: {gte: …}, status: {in: […]}},
# orderBy: {total: DESC}, limit, offset) — verbatim from its debug log (NOTES.md).
FRAISEQL2_REAL: Final = (
    """SELECT JSON_OBJECT('id' VALUE "data"->>'id', 'total' VALUE "data"->'total' RETURNING json) """
    """FROM (SELECT CASE WHEN pg_column_compression(data) IS NOT NULL OR """
    """pg_column_toast_chunk_id(data) IS NOT NULL THEN data || '{}'::jsonb ELSE data END AS data, """
    """"_o" FROM (SELECT data, row_number() OVER (ORDER BY (data->>'total')::numeric DESC, id ASC) """
    """AS "_o" FROM "tv_order" WHERE ((data->>'total')::numeric >= ($1::text)::numeric AND """
    """data->>'status' IN ($2, $3)) ORDER BY (data->>'total')::numeric DESC, id ASC LIMIT $4 """
    """OFFSET $5) AS _fq_page OFFSET 0) AS _fq_doc ORDER BY "_o\""""
)

# FraiseQL 0.5.3's SQL, exactly as generated (fraiseql==0.5.3, graphql-core 3.2).
FRAISEQL05_SQL: Final = (
    """SELECT * FROM "tv_order" WHERE (data ->> 'status') = 'paid' LIMIT 20""",
    """SELECT jsonb_build_object('id', data->>'id', 'status', data->>'status', 'total', """
    """data->'total', '__typename', 'Order')::text AS result FROM "tv_order" WHERE """
    """(data ->> 'status') IN ('paid', 'shipped') AND (data ->> 'total')::numeric >= 100.0 """
    """ORDER BY data->>'total' DESC LIMIT 10 OFFSET 20""",
    """SELECT data::text FROM "tv_order" WHERE ((data ->> 'total'))::numeric  >= 100 AND """
    """(data ->> 'status') = ANY('{paid,shipped}') ORDER BY data ->> 'total' DESC LIMIT 10 """
    """OFFSET 20""",
    """SELECT jsonb_build_object('id', data->>'id', 'status', data->>'status', 'total', """
    """data->'total', '__typename', 'Order')::text AS result FROM "tv_order" WHERE """
    """(data ->> 'created_at')::timestamp > '2025-01-01 00:00:00'::timestamp ORDER BY """
    """data->>'created_at' DESC LIMIT 5""",
    """SELECT jsonb_build_object('id', data->>'id', 'status', data->>'status', '__typename', """
    """'Order')::text AS result FROM "tv_order" WHERE (data ->> 'due_date')::date < """
    """'2025-01-01'::date ORDER BY data->>'due_date' ASC LIMIT 50""",
    """SELECT * FROM "tv_order" WHERE (data ->> 'is_gift')::boolean = true""",
    """SELECT * FROM "tv_order" WHERE (data ->> 'status') != 'paid' AND """
    """(data ->> 'total')::numeric < 5.0""",
    """SELECT * FROM "tv_order" WHERE (data ->> 'customer_email') LIKE '%example%'""",
    """SELECT * FROM "tv_order" WHERE (data ->> 'customer_email') = 'user1@example.com' LIMIT 20""",
    """SELECT * FROM "tv_order" WHERE (data ->> 'status') IS NULL""",
)


def _render(node: ast.Node) -> str:
    return str(RawStream()(node))


def fraiseql2_sql(flat: str, *, postgres15: bool = False) -> str:
    """``flat`` (``SELECT … FROM view [WHERE …] [ORDER BY …] [LIMIT …]``) as FraiseQL 2.x pages it."""
    [raw] = pglast.parse_sql(flat)
    stmt = raw.stmt
    assert isinstance(stmt, ast.SelectStmt) and stmt.fromClause, flat
    view = stmt.fromClause[0]
    assert isinstance(view, ast.RangeVar), flat
    order = [_render(s) for s in stmt.sortClause or ()]
    if not any(o.split(" ")[0] == "id" for o in order):
        order.append("id ASC")  # 2.x's tiebreaker: pages are stable
    sort = ", ".join(order)
    where = f" WHERE {_render(stmt.whereClause)}" if stmt.whereClause is not None else ""
    limit = f" LIMIT {_render(stmt.limitCount)}" if stmt.limitCount is not None else ""
    offset = f" OFFSET {_render(stmt.limitOffset)}" if stmt.limitOffset is not None else ""
    page = (f'SELECT data, row_number() OVER (ORDER BY {sort}) AS "_o" FROM "{view.relname}"'
            f"{where} ORDER BY {sort}{limit}{offset}")
    if postgres15:
        detoast = "pg_column_compression(data) IS NOT NULL"
        projection = """jsonb_build_object('id', "data"->>'id', 'data', "data")::text"""
    else:
        detoast = ("pg_column_compression(data) IS NOT NULL OR "
                   "pg_column_toast_chunk_id(data) IS NOT NULL")
        projection = """JSON_OBJECT('id' VALUE "data"->>'id', 'data' VALUE "data" RETURNING json)"""
    return (f"SELECT {projection} FROM (SELECT CASE WHEN {detoast} THEN data || '{{}}'::jsonb "
            f'ELSE data END AS data, "_o" FROM ({page}) AS _fq_page OFFSET 0) AS _fq_doc '
            'ORDER BY "_o"')
