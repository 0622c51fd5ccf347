"""``fraiseql_obs_analyzer.sqlgen``: migrations that parse and name exactly the intended objects, whatever the
names hold (quotes, semicolons, newlines, dollar signs, Unicode)."""

from __future__ import annotations

import re
from typing import Any

import pglast
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import ast
from psycopg import sql

from fraiseql_obs_analyzer.parse import parse_index_definition, parse_query_shape
from fraiseql_obs_analyzer.shape import KeyExpr
from fraiseql_obs_analyzer.sqlgen import (
    MAX_IDENTIFIER_BYTES,
    add_index_sql,
    comment,
    commented,
    denormalize_sql,
    drop_index_sql,
    materialize_view_sql,
    object_name,
)

# Everything PostgreSQL can store in a name or a JSON key (no NUL), with the nasty bits likely.
nasty = st.sampled_from(['"', "'", ";", "\n", "\r", "$", "$fraiseql$", "--", "/*", "*/", "\\",
                         " ", "é", "名", "\u2028", "DROP TABLE x;"])
names = st.lists(st.one_of(nasty, st.text(st.characters(blacklist_categories=["Cs"],
                                                         blacklist_characters="\x00"),
                                          max_size=4)), min_size=1, max_size=4).map("".join).filter(
    # What PostgreSQL can hold in a name: non-empty, at most 63 bytes.
    lambda s: 0 < len(s.encode()) <= MAX_IDENTIFIER_BYTES)
paths = st.lists(names, min_size=1, max_size=3).map(tuple)
header = st.lists(names, max_size=2)


def uncomment(script: str, marker: str) -> str:
    """The commented statements after ``marker`` with their ``-- `` prefixes removed."""
    rest = script.split(marker, 1)[1].lstrip("\n")
    return re.sub(r"(?:^|(?<=\n)|(?<=\r))-- ", "", rest)


def statements(script: str) -> list[Any]:
    return [raw.stmt for raw in pglast.parse_sql(script)]


def relation(node: ast.RangeVar | None) -> tuple[str | None, str | None]:
    assert node is not None
    return node.schemaname, node.relname


def plpgsql_queries(body: str) -> list[Any]:
    """The SQL statements inside a plpgsql body, parsed."""
    tree = pglast.parse_plpgsql(
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $body$" + body + "$body$")
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "PLpgSQL_stmt_execsql" in node:
                found.append(node["PLpgSQL_stmt_execsql"]["sqlstmt"]["PLpgSQL_expr"]["query"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    return [s for q in found for s in statements(q)]


def body_of(options: Any, name: str = "as") -> str:
    for option in options:
        if option.defname == name:
            arg = option.arg
            return str(arg[0].sval if isinstance(arg, tuple | list) else arg.sval)
    raise AssertionError("no body")


@settings(max_examples=150, deadline=None)
@given(names, names, paths, header, st.booleans())
def test_add_index_names_exactly_its_objects(schema: str, table: str, path: tuple[str, ...],
                                             lines: list[str], cast: bool) -> None:
    key = KeyExpr("data", path, True, "arrow", "numeric" if cast else None)
    index_name = object_name(table, *path, suffix="idx")
    script = add_index_sql(schema, table, [key, KeyExpr("id")], index_name, header=lines)
    create, analyze = statements(script)  # the rollback and the header are comments
    assert isinstance(create, ast.IndexStmt) and create.concurrent and create.if_not_exists
    assert create.idxname == index_name
    assert relation(create.relation) == (schema, table)
    indexed = parse_index_definition(pglast.stream.RawStream()(create))
    assert indexed.keys == (key, KeyExpr("id"))
    assert isinstance(analyze, ast.VacuumStmt) and analyze.rels is not None
    assert relation(analyze.rels[0].relation) == (schema, table)
    [drop] = statements(uncomment(script, "-- Rollback:"))
    assert isinstance(drop, ast.DropStmt) and drop.concurrent
    assert drop.objects is not None
    assert [n.sval for n in drop.objects[0]] == [schema, index_name]


@settings(max_examples=150, deadline=None)
@given(names, names, paths, names, st.sampled_from(["text", "numeric", "timestamptz"]),
       header)
def test_denormalize_names_exactly_its_objects(schema: str, table: str, path: tuple[str, ...],
                                               column: str, new_type: str,
                                               lines: list[str]) -> None:
    key = KeyExpr("data", path, True)
    script = denormalize_sql(schema, table, key, column, new_type, index_name="ix",
                             function_name="sync_fn", trigger_name="sync_tg", json_column="data",
                             header=lines)
    kinds = [type(s).__name__ for s in statements(script)]
    assert kinds == ["AlterTableStmt", "CreateFunctionStmt", "DropStmt", "CreateTrigStmt",
                     "DoStmt", "IndexStmt", "VacuumStmt"]
    alter, function, _, trigger, backfill, index, _ = statements(script)
    assert relation(alter.relation) == (schema, table)
    [add] = alter.cmds
    assert add.def_.colname == column
    assert [n.sval for n in add.def_.typeName.names][-1] in {"text", "numeric", "timestamptz"}
    assert [n.sval for n in function.funcname] == [schema, "sync_fn"]
    [assignment] = plpgsql_assignments(body_of(function.options))
    target = "NEW." + sql.Identifier(column).as_string(None) + " := "
    assert assignment.startswith(target)
    assigned = parse_query_shape("SELECT " + assignment[len(target):] + " FROM t")
    assert [u.key.uncast() for u in assigned.uses] == [key]
    assert relation(trigger.relation) == (schema, table) and trigger.trigname == "sync_tg"
    [update] = plpgsql_queries(body_of(backfill.args))
    assert isinstance(update, ast.UpdateStmt)
    assert relation(update.relation) == (schema, table)
    assert update.targetList is not None
    assert [t.name for t in update.targetList] == [column]
    # The value written is exactly the path's expression (cast to the column type if needed).
    written = parse_query_shape("SELECT " + pglast.stream.RawStream()(update.targetList[0].val))
    assert [u.key.uncast() for u in written.uses] == [key]
    assert index.idxname == "ix" and relation(index.relation) == (schema, table)
    assert [e.name for e in index.indexParams] == [column]


def plpgsql_assignments(body: str) -> list[str]:
    tree = pglast.parse_plpgsql(
        "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $body$" + body + "$body$")
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "PLpgSQL_stmt_assign" in node:
                found.append(node["PLpgSQL_stmt_assign"]["expr"]["PLpgSQL_expr"]["query"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    return found


@settings(max_examples=100, deadline=None)
@given(names, names, names)
def test_drop_index_and_its_commented_recreation(schema: str, table: str, name: str) -> None:
    original = pglast.parse_sql("CREATE INDEX x ON t ((data ->> 'k'))")[0].stmt
    assert original is not None
    definition = pglast.stream.RawStream()(original)
    tree = parse_index_definition(definition).tree
    tree.idxname = name
    tree.relation.schemaname, tree.relation.relname = schema, table
    script = drop_index_sql(schema, name, tree, header=[name])
    [drop] = statements(script)
    assert isinstance(drop, ast.DropStmt) and drop.concurrent
    assert drop.objects is not None
    assert [n.sval for n in drop.objects[0]] == [schema, name]
    [create] = statements(uncomment(script, "-- Rollback (recreate it):"))
    assert isinstance(create, ast.IndexStmt) and create.concurrent
    assert create.idxname == name and relation(create.relation) == (schema, table)


@settings(max_examples=100, deadline=None)
@given(names, names, st.lists(names, min_size=2, max_size=2, unique=True), names)
def test_materialized_view_names_exactly_its_objects(schema: str, view: str,
                                                     columns: list[str], key: str) -> None:
    query = pglast.parse_sql(
        "SELECT data->>'region' AS region, count(*) AS n FROM tv_order GROUP BY data->>'region'"
    )[0].stmt
    assert isinstance(query, ast.SelectStmt)
    script = materialize_view_sql(schema, view, query, columns, columns[:1], index_name=key,
                                  header=[view])
    create, index, _ = statements(script)
    assert isinstance(create, ast.CreateTableAsStmt) and create.into is not None
    assert relation(create.into.rel) == (schema, view)
    assert create.into.colNames is not None
    assert [c.sval for c in create.into.colNames] == columns
    assert isinstance(index, ast.IndexStmt) and index.unique and index.idxname == key
    assert relation(index.relation) == (schema, view)


def test_the_backfill_runs_in_batches_outside_one_transaction() -> None:
    script = denormalize_sql("public", "tv_order", KeyExpr("data", ("status",), True), "status",
                             "text", index_name="i", function_name="f", trigger_name="t",
                             json_column="data")
    assert "COMMIT;" in script and "ctid >= " in script and "IS DISTINCT FROM" in script
    assert script.index("ADD COLUMN") < script.index("CREATE TRIGGER") < script.index("DO ") \
        < script.index("CREATE INDEX CONCURRENTLY") < script.index("ANALYZE")
    assert "-- ALTER TABLE \"public\".\"tv_order\" DROP COLUMN IF EXISTS \"status\";" in script


def test_comments_never_end_early() -> None:
    assert comment("a\nDROP TABLE x;") == "-- a\\nDROP TABLE x;"
    assert "\n" not in comment("x\r\n\u2028y")
    assert commented("DROP INDEX \"a\nb\";") == "-- DROP INDEX \"a\n-- b\";"
    assert commented("x\r\ny\rz\u2028") == "-- x\r\n-- y\r-- z\u2028"


@given(st.lists(names, min_size=1, max_size=4), st.sampled_from(["idx", "gin", "sync", ""]))
def test_object_names_fit_and_are_unique(parts: list[str], suffix: str) -> None:
    first = object_name(*parts, suffix=suffix)
    second = object_name(*parts, suffix=suffix, taken={first})
    for name in (first, second):
        assert len(name.encode()) <= MAX_IDENTIFIER_BYTES
        assert name.isascii() and name
    assert first != second
