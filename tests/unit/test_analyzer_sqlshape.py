"""``fraiseql_obs_analyzer.parse`` / ``.shape``: what FraiseQL-style SQL reads and how, parsed with
pglast."""

from __future__ import annotations

import pglast
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import ast

from fraiseql_obs_analyzer.errors import UnsupportedSql
from fraiseql_obs_analyzer.expressions import parse_pg_array_literal
from fraiseql_obs_analyzer.parse import parse_index_definition, parse_query_shape
from fraiseql_obs_analyzer.shape import CAST_TYPES, KeyExpr, Limit, Relation, Usage
from fraiseql_obs_producers.workload import default_workload

ORDER = Relation(None, "tv_order")


def uses(sql: str) -> set[tuple[str, str, str, bool]]:
    """(relation, key as FraiseQL spells it, usage, descending) of every use but projections."""
    shape = parse_query_shape(sql)
    return {(str(u.relation), u.key.display(), u.usage.value, u.descending) for u in shape.uses
            if u.usage != Usage.PROJECTION}


def test_equality_and_sort_with_parameter_limit() -> None:
    sql = ("SELECT data FROM tv_order WHERE data->>'status' = $1 "
           "ORDER BY data->>'created_at' DESC LIMIT $2")
    shape = parse_query_shape(sql)
    assert shape.relations == (ORDER,)
    assert shape.limit == Limit("param")
    assert shape.param_count == 2
    assert shape.read_only and not shape.has_aggregates and not shape.has_joins
    assert uses(sql) == {("tv_order", "data->>'status'", "equality", False),
                         ("tv_order", "data->>'created_at'", "sort", True)}
    [status] = [u for u in shape.uses if u.usage == Usage.EQUALITY]
    assert status.key == KeyExpr("data", ("status",), as_text=True)
    assert status.key.path_text == "status" and status.key.is_json_path


def test_nested_paths_and_casts() -> None:
    assert uses("SELECT data FROM tv_order WHERE data->'customer'->>'region' = $1 LIMIT 20") == {
        ("tv_order", "data->'customer'->>'region'", "equality", False)}
    sql = ("SELECT data FROM tv_product WHERE (data->>'price')::numeric > $1 "
           "ORDER BY (data->>'price')::numeric LIMIT $2")
    assert uses(sql) == {("tv_product", "(data->>'price')::numeric", "range", False),
                         ("tv_product", "(data->>'price')::numeric", "sort", False)}
    key = parse_query_shape(sql).uses[1].key
    assert key.cast == "numeric" and key.uncast() == KeyExpr("data", ("price",), True)
    # A value on the left flips the comparison; the column is still the key.
    assert uses("SELECT 1 FROM t WHERE $1 < (data->>'n')::integer") == {
        ("t", "(data->>'n')::integer", "range", False)}
    assert parse_query_shape("SELECT 1 FROM t WHERE $1 < (data->>'n')::int4").uses[0].operator \
        == ">"
    # Casts are canonicalized however they are spelled.
    spelled = {parse_query_shape(f"SELECT 1 FROM t WHERE (data->>'d')::{t} = $1").uses[0].key.cast
               for t in ("timestamptz", "timestamp with time zone")}
    assert spelled == {"timestamptz"}


def test_hash_and_function_paths_are_distinct_keys() -> None:
    arrow, hashed, func = (parse_query_shape(sql).uses[0].key for sql in (
        "SELECT 1 FROM t WHERE data->'a'->>'b' = $1",
        "SELECT 1 FROM t WHERE data#>>'{a,b}' = $1",
        "SELECT 1 FROM t WHERE jsonb_extract_path_text(data, 'a', 'b') = $1",
    ))
    assert arrow.path == hashed.path == func.path == ("a", "b")
    # An expression index is only used by the same spelling: three different keys.
    assert len({arrow, hashed, func}) == 3
    assert hashed.style == "hash" and func.style == "func"
    assert parse_query_shape("SELECT 1 FROM t WHERE data #>> ARRAY['a', 'b'] = $1").uses[0].key \
        == hashed
    assert parse_query_shape("SELECT data->0->>'x' FROM t").uses[0].key.path == (0, "x")


def test_usages_of_every_predicate_kind() -> None:
    sql = ("SELECT data FROM tv_order WHERE data->>'a' IN ($1, $2) AND data->>'b' = ANY($3) "
           "AND (data->>'c')::date BETWEEN $4 AND $5 AND data->>'d' LIKE $6 "
           "AND data->>'e' ILIKE $7 AND data->>'f' IS NULL AND data->>'g' IS NOT NULL "
           "AND data->>'h' <> $8 AND data @> $9::jsonb AND data ? 'k' "
           "AND (data->>'flag')::boolean")
    got = {(key, usage) for _, key, usage, _ in uses(sql)}
    assert got == {
        ("data->>'a'", "equality"), ("data->>'b'", "equality"),
        ("(data->>'c')::date", "range"), ("data->>'d'", "pattern"), ("data->>'e'", "pattern"),
        ("data->>'f'", "equality"), ("data->>'g'", "other"), ("data->>'h'", "other"),
        ("data", "containment"), ("(data->>'flag')::boolean", "equality"),
    }


def test_or_branches_are_marked() -> None:
    shape = parse_query_shape("SELECT 1 FROM t WHERE a = $1 AND (b = $2 OR c = $3)")
    flags = {u.key.column: u.in_or for u in shape.uses}
    assert flags == {"a": False, "b": True, "c": True}


def test_aggregates_group_by_and_positions() -> None:
    sql = ("SELECT data->>'region' AS region, count(*) AS orders, "
           "sum((data->>'total')::numeric) AS revenue FROM tv_order GROUP BY data->>'region'")
    shape = parse_query_shape(sql)
    assert shape.has_aggregates and shape.has_group_by and shape.param_count == 0
    assert uses(sql) == {("tv_order", "data->>'region'", "group", False),
                         ("tv_order", "(data->>'total')::numeric", "aggregate", False)}
    assert shape.functions == {"count", "sum"}
    assert [(a, k.display() if k else None, agg) for a, k, agg in shape.targets] == [
        ("region", "data->>'region'", False), ("orders", None, True), ("revenue", None, True)]
    positional = parse_query_shape(
        "SELECT data->>'s', count(*) FROM tv_order GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10")
    assert positional.limit == Limit("const", 10)
    assert {(u.key.display(), u.usage.value) for u in positional.uses} >= {
        ("data->>'s'", "group"), ("data->>'s'", "sort")}


def test_joins_aliases_and_qualified_relations() -> None:
    sql = ("SELECT o.data FROM app.tv_order AS o JOIN tv_user u ON u.id = (o.data->>'user_id')::bigint "
           "WHERE u.data->>'email' = $1 AND o.data->>'status' = $2")
    shape = parse_query_shape(sql)
    assert shape.has_joins
    assert shape.relations == (Relation("app", "tv_order"), Relation(None, "tv_user"))
    assert uses(sql) == {
        ("app.tv_order", "(data->>'user_id')::bigint", "join", False),
        ("tv_user", "id", "join", False),
        ("tv_user", "data->>'email'", "equality", False),
        ("app.tv_order", "data->>'status'", "equality", False),
    }
    # Unqualified columns with two relations in scope cannot be attributed.
    ambiguous = parse_query_shape("SELECT 1 FROM a, b WHERE x = $1")
    assert [u.relation for u in ambiguous.uses] == [None]


def test_ctes_subqueries_and_unions() -> None:
    shape = parse_query_shape(
        "WITH recent AS (SELECT data FROM tv_order WHERE data->>'status' = $1) "
        "SELECT data FROM recent WHERE data->>'x' = $2")
    assert shape.relations == (ORDER,)
    assert ("tv_order", "data->>'status'", "equality", False) in {
        (str(u.relation), u.key.display(), u.usage.value, u.descending) for u in shape.uses}
    sub = parse_query_shape("SELECT * FROM t WHERE id IN (SELECT (data->>'t_id')::bigint FROM u "
                            "WHERE data->>'k' = $1)")
    assert sub.has_subqueries and Relation(None, "u") in sub.relations
    union = parse_query_shape("SELECT data FROM a WHERE x = $1 UNION ALL SELECT data FROM b")
    assert union.relations == (Relation(None, "a"), Relation(None, "b"))


def test_statements_the_analyzer_must_not_plan() -> None:
    assert not parse_query_shape("SELECT data FROM t FOR UPDATE").read_only
    assert not parse_query_shape("SELECT data INTO x FROM t").read_only
    assert not parse_query_shape(
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d").read_only
    assert parse_query_shape("DELETE FROM t WHERE id = $1").statement == "DeleteStmt"
    with pytest.raises(UnsupportedSql, match="one statement"):
        parse_query_shape("SELECT 1; DROP TABLE t")
    with pytest.raises(UnsupportedSql, match="does not parse"):
        parse_query_shape("SELEC data FROM")


def test_every_workload_pattern_parses_into_its_declared_paths() -> None:
    for pattern in default_workload(tail=175).patterns:
        shape = parse_query_shape(pattern.sql)
        paths = {u.key.path for u in shape.uses if u.key.is_json_path}
        assert {tuple(p) for p in pattern.jsonb_paths} <= paths, pattern.query_name
        assert shape.relations == (Relation(None, pattern.view),), pattern.query_name


def test_index_definitions_match_the_queries_they_serve() -> None:
    index = parse_index_definition(
        "CREATE INDEX tv_order_x ON public.tv_order USING btree "
        "((((data -> 'customer'::text) ->> 'region'::text)), (((data ->> 'price'::text))::numeric) "
        "DESC, id)")
    assert index.relation == Relation("public", "tv_order") and index.method == "btree"
    region = parse_query_shape(
        "SELECT 1 FROM tv_order WHERE data->'customer'->>'region' = $1").uses[0].key
    price = parse_query_shape("SELECT 1 FROM tv_order WHERE (data->>'price')::numeric > $1").uses[
        0].key
    assert index.keys == (region, price, KeyExpr("id"))
    gin = parse_index_definition("CREATE INDEX g ON t USING gin (data jsonb_path_ops)")
    assert gin.method == "gin" and gin.opclasses == ("jsonb_path_ops",)
    unique = parse_index_definition("CREATE UNIQUE INDEX p ON t USING btree (lower(x)) WHERE y")
    assert unique.unique and unique.partial and unique.keys == (None,)
    with pytest.raises(UnsupportedSql):
        parse_index_definition("SELECT 1")


def test_pg_array_literals() -> None:
    assert parse_pg_array_literal("{a,b}") == ("a", "b")
    assert parse_pg_array_literal('{"a b", "c\\"d", e}') == ("a b", 'c"d', "e")
    assert parse_pg_array_literal("{}") == ()
    for bad in ("a,b", "{a,,b}", '{"a}', "{a,NULL}", "{a{b}", "{a,}"):
        assert parse_pg_array_literal(bad) is None, bad


hostile = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
                  min_size=1, max_size=12)
elements = st.one_of(hostile, st.integers(min_value=0, max_value=99))


@st.composite
def keys(draw: st.DrawFn) -> KeyExpr:
    style = draw(st.sampled_from(["arrow", "hash", "func"]))
    path: tuple[str | int, ...] = tuple(draw(st.lists(
        elements if style == "arrow" else hostile, min_size=0, max_size=3)))
    as_text = draw(st.booleans()) if path else False
    if not path:
        style = "arrow"
    func = None
    if style == "func":
        func = "jsonb_extract_path_text" if as_text else "jsonb_extract_path"
    cast = draw(st.sampled_from([None, *sorted(set(CAST_TYPES.values()))]))
    return KeyExpr(draw(hostile), path, as_text, style, cast, func)


@settings(max_examples=300, deadline=None)
@given(keys())
def test_rendered_keys_parse_back_to_themselves(key: KeyExpr) -> None:
    """Whatever the names hold, the rendered SQL is one expression naming exactly that key."""
    sql = f"SELECT 1 FROM t WHERE {key.render()} = $1"
    shape = parse_query_shape(sql)
    assert [u.key for u in shape.uses] == [key]
    assert len(pglast.parse_sql(sql)) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(hostile, min_size=1, max_size=4))
def test_array_literal_round_trip(path: list[str]) -> None:
    key = KeyExpr("data", tuple(path), True, "hash")
    literal = key.render().split("#>> ", 1)[1].rstrip(")")
    # The SQL literal holds the PostgreSQL array literal; parse_pg_array_literal reads it back.
    select = pglast.parse_sql(f"SELECT {literal}")[0].stmt
    assert isinstance(select, ast.SelectStmt) and select.targetList is not None
    text = select.targetList[0].val.val.sval
    assert parse_pg_array_literal(text) == tuple(path)
