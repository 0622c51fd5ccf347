"""Runnable migrations for suggestions: what ``analyze --format sql`` prints, psql-ready.

Every identifier is quoted with :class:`psycopg.sql.Identifier` and every literal with
:class:`psycopg.sql.Literal`; type names come from :data:`fraiseql_obs_analyzer.shape.CAST_TYPES` only; SQL
taken from the workload (a materialized view's query, an index definition to roll back to) is
re-rendered from its pglast parse tree, never pasted. Names from events may hold quotes,
semicolons, newlines or any Unicode: quoting keeps them inert in statements, and comments escape
control characters so a newline in a name cannot end a ``--`` comment. Dollar-quoted bodies get
a tag that does not occur in the body.

Operational shape (no long locks on a busy table):

* ``ALTER TABLE … ADD COLUMN`` of a nullable column without default: a catalog change, instant;
* a trigger keeps the new column in sync for rows written from now on;
* the backfill updates existing rows in batches of heap pages (TID range scans, PostgreSQL 14+),
  committing after each batch from a ``DO`` block — no row lock is held for long, no batch
  rescans the table, and re-running it is harmless;
* ``CREATE INDEX CONCURRENTLY`` (does not block writes; run outside a transaction block — psql's
  default autocommit), then ``ANALYZE`` so the planner knows the new column or expression;
* a commented rollback.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Final

from pglast import ast
from pglast.stream import RawStream
from psycopg import sql

from .shape import CAST_TYPES, KeyExpr

__all__ = [
    "MAX_IDENTIFIER_BYTES",
    "add_index_sql",
    "comment",
    "commented",
    "denormalize_sql",
    "drop_index_sql",
    "materialize_view_sql",
    "object_name",
    "render",
]

MAX_IDENTIFIER_BYTES: Final = 63  # NAMEDATALEN - 1: longer names are silently truncated
BACKFILL_PAGES: Final = 1000  # heap pages per backfill transaction (8 MB)
_SLUG: Final = re.compile(r"[^a-z0-9]+")
_LINE_BREAK: Final = re.compile(r"(\r\n|\r|\n)")


def render(statement: sql.Composable) -> str:
    return statement.as_string(None)


def comment(text: str) -> str:
    """One ``--`` comment line; control characters (newlines!) are escaped, never emitted."""
    safe = "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text)
    return ("-- " + safe).rstrip()


def commented(statement: str) -> str:
    """A statement as comment lines (a rollback the operator may uncomment).

    Every line starts with ``-- ``; lines end where SQL's ``--`` comments end (CR or LF, which a
    quoted name may contain) and keep their terminators, so removing the prefixes gives back the
    statement exactly.
    """
    parts = _LINE_BREAK.split(statement)
    return "".join(("-- " + part) if i % 2 == 0 else part for i, part in enumerate(parts))


def object_name(*parts: str, suffix: str, taken: Iterable[str] = ()) -> str:
    """A readable, ASCII, ≤ 63-byte name from ``parts`` (made unique against ``taken``).

    The digest of the original parts keeps two hostile names that slug the same apart.
    """
    slug = "_".join(p for p in (_SLUG.sub("_", unicodedata.normalize("NFKD", part).lower())
                                .strip("_") for part in parts) if p)
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    room = MAX_IDENTIFIER_BYTES - len(suffix) - len(digest) - 2
    slug = slug[:room].rstrip("_") or "x"
    name = f"{slug}_{digest}_{suffix}" if len(slug) + len(suffix) + 1 > room else f"{slug}_{suffix}"
    used = set(taken)
    counter = 1
    candidate = name
    while candidate in used:
        counter += 1
        tail = f"_{counter}"
        candidate = name[: MAX_IDENTIFIER_BYTES - len(tail)] + tail
    return candidate


def _dollar_tag(body: str, base: str = "fraiseql") -> str:
    tag = f"${base}$"
    counter = 0
    while tag in body:
        counter += 1
        tag = f"${base}{counter}$"
    return tag


def _index_element(key: KeyExpr, descending: bool = False) -> sql.Composable:
    element = key.composable()
    return sql.SQL("{} DESC").format(element) if descending else element


def _header(lines: Sequence[str]) -> str:
    return "\n".join(comment(line) for line in lines)


def add_index_sql(
    schema: str,
    table: str,
    keys: Sequence[KeyExpr],
    index_name: str,
    *,
    header: Sequence[str] = (),
    method: str = "btree",
    opclass: str | None = None,
    descending: Sequence[bool] | None = None,
) -> str:
    """``CREATE INDEX CONCURRENTLY`` + ``ANALYZE`` + commented rollback."""
    if method not in {"btree", "gin"}:
        raise ValueError(f"unsupported index method {method!r}")
    if opclass not in {None, "jsonb_path_ops", "jsonb_ops"}:
        raise ValueError(f"unsupported operator class {opclass!r}")
    target = sql.Identifier(schema, table)
    flags = list(descending or [False] * len(keys))
    elements = [_index_element(k, d) for k, d in zip(keys, flags, strict=True)]
    if opclass:
        elements = [sql.SQL("{} {}").format(e, sql.SQL(opclass)) for e in elements]
    create = sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} USING {} ({});").format(
        sql.Identifier(index_name), target, sql.SQL(method), sql.SQL(", ").join(elements))
    rollback = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {};").format(
        sql.Identifier(schema, index_name))
    return "\n".join([
        _header(header),
        comment("CONCURRENTLY: writes continue meanwhile; run outside a transaction block. If it "
                "fails it leaves an INVALID index: drop it and run again."),
        render(create),
        render(sql.SQL("ANALYZE {};").format(target)),
        comment("Rollback:"),
        commented(render(rollback)),
    ]) + "\n"


def denormalize_sql(
    schema: str,
    table: str,
    key: KeyExpr,
    new_column: str,
    new_type: str,
    *,
    index_name: str,
    function_name: str,
    trigger_name: str,
    json_column: str,
    header: Sequence[str] = (),
) -> str:
    """Typed column + sync trigger + batched backfill + concurrent index + ANALYZE + rollback."""
    if new_type not in CAST_TYPES.values():
        raise ValueError(f"unsupported column type {new_type!r}")
    target = sql.Identifier(schema, table)
    column = sql.Identifier(new_column)
    value_type = sql.SQL(new_type)
    # The expression the column mirrors, cast to the column's type unless it already is.
    base = key if key.cast == new_type or (key.cast is None and new_type == key.value_type()) \
        else key.with_cast(new_type)
    new_value = base.composable("new")
    row_value = base.composable("t")
    function = sql.Identifier(schema, function_name)
    body = render(sql.SQL("BEGIN NEW.{} := {}; RETURN NEW; END").format(column, new_value))
    tag = _dollar_tag(body)
    create_function = sql.SQL(
        "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {tag}{}{tag};"
    ).format(function, sql.SQL(body), tag=sql.SQL(tag))
    create_trigger = sql.SQL(
        "CREATE TRIGGER {} BEFORE INSERT OR UPDATE OF {} ON {} FOR EACH ROW EXECUTE FUNCTION {}();"
    ).format(sql.Identifier(trigger_name), sql.Identifier(json_column), target, function)
    update = sql.SQL(
        "UPDATE {} AS t SET {} = {}"
        " WHERE t.ctid >= pg_catalog.format('(%s,0)', fraiseql_page)::tid"
        " AND t.ctid < pg_catalog.format('(%s,0)', fraiseql_page + {})::tid"
        " AND t.{} IS DISTINCT FROM {};"
    ).format(target, column, row_value, sql.Literal(BACKFILL_PAGES), column, row_value)
    backfill_body = render(sql.SQL(
        "\nDECLARE\n    fraiseql_last_page bigint := pg_catalog.pg_relation_size({}::regclass)"
        " / pg_catalog.current_setting('block_size')::bigint;\n    fraiseql_page bigint := 0;\n"
        "BEGIN\n    WHILE fraiseql_page <= fraiseql_last_page LOOP\n        {}\n        COMMIT;\n"
        "        fraiseql_page := fraiseql_page + {};\n    END LOOP;\nEND\n"
    ).format(sql.Literal(render(target)), update, sql.Literal(BACKFILL_PAGES)))
    backfill_tag = _dollar_tag(backfill_body)
    create_index = sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({});").format(
        sql.Identifier(index_name), target, column)
    rollback = [
        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {};").format(sql.Identifier(schema, index_name)),
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {};").format(sql.Identifier(trigger_name), target),
        sql.SQL("DROP FUNCTION IF EXISTS {}();").format(function),
        sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {};").format(target, column),
    ]
    return "\n".join([
        _header(header),
        comment("1. A nullable column without default: a catalog change, no table rewrite."),
        render(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {};").format(
            target, column, value_type)),
        comment("2. Keep it in sync for every row written from now on."),
        render(create_function),
        render(sql.SQL("DROP TRIGGER IF EXISTS {} ON {};").format(
            sql.Identifier(trigger_name), target)),
        render(create_trigger),
        comment(f"3. Backfill existing rows, {BACKFILL_PAGES} heap pages per transaction "
                "(TID range scans; re-running is harmless). Outside a transaction block."),
        f"DO {backfill_tag}{backfill_body}{backfill_tag};",
        comment("4. Index it without blocking writes, then give the planner statistics."),
        render(create_index),
        render(sql.SQL("ANALYZE {};").format(target)),
        comment("Then let the API read the column instead of extracting the path from JSONB."),
        comment("Rollback:"),
        *(commented(render(statement)) for statement in rollback),
    ]) + "\n"


def materialize_view_sql(
    schema: str,
    view_name: str,
    query: ast.SelectStmt,
    column_names: Sequence[str],
    unique_columns: Sequence[str],
    *,
    index_name: str,
    header: Sequence[str] = (),
) -> str:
    """A materialized view of an expensive aggregate, its unique index and a refresh recipe."""
    view = sql.Identifier(schema, view_name)
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in column_names)
    body = RawStream()(query)
    create = sql.SQL("CREATE MATERIALIZED VIEW IF NOT EXISTS {} ({}) AS {} WITH DATA;").format(
        view, columns, sql.SQL(body))
    lines = [_header(header), render(create)]
    if unique_columns:
        lines.append(comment("A unique index lets REFRESH … CONCURRENTLY keep the view readable."))
        lines.append(render(sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({});").format(
            sql.Identifier(index_name), view,
            sql.SQL(", ").join(sql.Identifier(c) for c in unique_columns))))
        refresh = sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {};").format(view)
    else:
        refresh = sql.SQL("REFRESH MATERIALIZED VIEW {};").format(view)
    lines += [
        render(sql.SQL("ANALYZE {};").format(view)),
        comment("Refresh on a schedule that matches how fresh the numbers must be, e.g. pg_cron:"),
        commented(render(refresh)),
        comment("Then let the API read the view for this query."),
        comment("Rollback:"),
        commented(render(sql.SQL("DROP MATERIALIZED VIEW IF EXISTS {};").format(view))),
    ]
    return "\n".join(lines) + "\n"


def drop_index_sql(schema: str, index_name: str, recreate: ast.IndexStmt | None, *,
                   header: Sequence[str] = ()) -> str:
    """``DROP INDEX CONCURRENTLY`` and, commented, the statement that recreates it."""
    lines = [
        _header(header),
        render(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {};").format(
            sql.Identifier(schema, index_name))),
        comment("Rollback (recreate it):"),
    ]
    if recreate is not None:
        recreate.concurrent = True
        recreate.if_not_exists = True
        lines.append(commented(RawStream()(recreate) + ";"))
    else:
        lines.append(comment("(the index definition could not be parsed; see the statistics)"))
    return "\n".join(lines) + "\n"
