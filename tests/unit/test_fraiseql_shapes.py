"""The analyzer reads the SQL real FraiseQL versions write (``tests/fraiseql_sql.py``): 2.x's nested
pages (``JSON_OBJECT``, ``row_number() OVER``, ``_fq_page``/``_fq_doc`` subqueries) and 0.5.x's
inlined values, before and after the instrumentation's normalization — the same tables, paths,
filters, sorts, casts and limits as the flat statement they stand for."""

from __future__ import annotations

import pglast
import pytest
from pglast import ast
from pglast.stream import RawStream

from fraiseql_obs_analyzer.hypo import explainable, summarize
from fraiseql_obs_analyzer.parse import filter_query, parse_query_shape, without_limit
from fraiseql_obs_analyzer.shape import KeyExpr, Limit, QueryShape, Relation, Usage
from fraiseql_obs_producers.normalize import normalize_sql
from fraiseql_obs_producers.workload import default_workload
from tests.fraiseql_sql import FRAISEQL05_SQL, FRAISEQL2_REAL, fraiseql2_sql

ORDER = Relation(None, "tv_order")
# The example of 2.x SQL, as its server sends it (values bound as $n).
FRAISEQL2_PAGE = (
    """SELECT JSON_OBJECT('id' VALUE "data"->>'id', 'status' VALUE "data"->>'status' """
    """RETURNING json) FROM (SELECT data, "_o" FROM (SELECT data, row_number() OVER """
    """(ORDER BY id ASC) AS "_o" FROM "tv_order" WHERE data->>'status' = $1 ORDER BY id ASC """
    """LIMIT $2) AS _fq_page OFFSET 0) AS _fq_doc ORDER BY "_o\""""
)


def reads(shape: QueryShape, relation: Relation = ORDER) -> set[tuple[str, str, str, bool]]:
    """(key as FraiseQL spells it, usage, operator, descending) on ``relation``, projections aside."""
    return {(u.key.display(), u.usage.value, u.operator, u.descending) for u in shape.uses
            if u.relation == relation and u.usage != Usage.PROJECTION}


def test_the_page_of_a_2x_statement_reads_like_the_flat_query() -> None:
    shape = parse_query_shape(FRAISEQL2_PAGE)
    flat = parse_query_shape("SELECT data FROM tv_order WHERE data->>'status' = $1 "
                             "ORDER BY id ASC LIMIT $2")
    assert shape.relations == flat.relations == (ORDER,)
    assert reads(shape) == reads(flat) == {("data->>'status'", "equality", "=", False),
                                           ("id", "sort", "", False)}
    # The LIMIT of the page bounds the scan, though the statement around it has none.
    assert shape.limit == flat.limit == Limit("param") and shape.param_count == 2
    assert shape.has_subqueries and shape.functions == {"row_number"}
    assert explainable(shape) is None
    # What the wrappers read (the page's columns, "_o") belongs to no table.
    assert {u.key.display() for u in shape.uses if u.relation is None} >= {"_o", "data->>'id'"}


def test_the_real_2x_statement_filters_casts_and_sorts() -> None:
    shape = parse_query_shape(FRAISEQL2_REAL)
    assert shape.relations == (ORDER,)
    assert reads(shape) == {
        ("(data->>'total')::numeric", "range", ">=", False),  # >= ($1::text)::numeric
        ("data->>'status'", "equality", "IN", False),
        ("(data->>'total')::numeric", "sort", "", True),
        ("id", "sort", "", False),
    }
    total = next(u.key for u in shape.uses if u.usage == Usage.RANGE)
    assert total == KeyExpr("data", ("total",), True, cast="numeric") and total.indexable
    assert shape.limit == Limit("param") and shape.offset and shape.param_count == 5
    # Detoasting and numbering the page are read-only calls the validation may plan.
    assert shape.functions == {"row_number", "pg_column_compression", "pg_column_toast_chunk_id"}
    assert explainable(shape) is None


def test_normalization_changes_nothing_the_analyzer_reads() -> None:
    """The instrumentation turns 2.x's '{}' and OFFSET 0 into $6, $7: same keys, same page."""
    for text in (FRAISEQL2_PAGE, FRAISEQL2_REAL):
        normalized = normalize_sql(text)
        assert normalized is not None and normalized != text
        before, after = parse_query_shape(text), parse_query_shape(normalized or "")
        assert reads(after) == reads(before)
        assert (after.limit, after.offset, after.relations) == (before.limit, before.offset,
                                                               before.relations)


def test_every_flat_workload_query_paged_the_2x_way_reads_the_same() -> None:
    """Each core pattern's filter, sort and limit inside 2.x's page: the flat reads plus the
    ``id`` tiebreaker, whichever projection (JSON_OBJECT, or jsonb_build_object for PG 15)."""
    for pattern in default_workload(tail=0).patterns:
        flat = parse_query_shape(pattern.sql)
        if flat.has_aggregates:
            continue  # 2.x computes aggregates with other statements
        view = Relation(None, pattern.view)
        expected = reads(flat, view)
        if not any(key == "id" for key, usage, _, _ in expected if usage == "sort"):
            expected.add(("id", "sort", "", False))
        for postgres15 in (False, True):
            shape = parse_query_shape(fraiseql2_sql(pattern.sql, postgres15=postgres15))
            assert shape.relations == (view,), pattern.query_name
            assert reads(shape, view) == expected, pattern.query_name
            assert shape.limit == flat.limit, pattern.query_name
            assert explainable(shape) is None, pattern.query_name


def test_window_sorts_count_as_sorts() -> None:
    """``OVER (PARTITION BY p ORDER BY o)`` sorts by (p, o) before numbering, named or inline."""
    shape = parse_query_shape(
        "SELECT data, row_number() OVER (PARTITION BY data->>'category' "
        "ORDER BY (data->>'price')::numeric DESC) FROM tv_product WHERE data->>'brand' = $1")
    product = Relation(None, "tv_product")
    assert reads(shape, product) == {("data->>'brand'", "equality", "=", False),
                                     ("data->>'category'", "sort", "", False),
                                     ("(data->>'price')::numeric", "sort", "", True)}
    named = parse_query_shape("SELECT rank() OVER w FROM tv_order WINDOW w AS (ORDER BY id DESC)")
    assert reads(named) == {("id", "sort", "", True)}
    # A windowed aggregate is not a GROUP BY: it collapses no rows.
    running = parse_query_shape("SELECT sum((data->>'total')::numeric) OVER (ORDER BY id) "
                                "FROM tv_order")
    assert not running.has_aggregates and ("id", "sort", "", False) in reads(running)


def test_json_aggregates_are_aggregates() -> None:
    shape = parse_query_shape("SELECT JSON_ARRAYAGG(data->>'id' ORDER BY id) FROM tv_order "
                              "WHERE data->>'status' = $1")
    assert shape.has_aggregates
    assert ("data->>'status'", "equality", "=", False) in reads(shape)
    assert parse_query_shape("SELECT JSON_OBJECTAGG((data->>'id') VALUE data->>'total') "
                             "FROM tv_order").has_aggregates


def test_the_filtering_query_inside_the_wrappers() -> None:
    page = filter_query(parse_query_shape(FRAISEQL2_REAL).tree)
    assert isinstance(page, ast.SelectStmt)
    text = RawStream()(page)
    assert text.startswith("SELECT data, row_number() OVER") and "JSON_OBJECT" not in text.upper()
    # It is a statement of its own: it parses back to the same reads.
    assert reads(parse_query_shape(text)) == reads(parse_query_shape(FRAISEQL2_REAL))
    assert "LIMIT $4 OFFSET $5" in text
    # Not wrappers: flat statements, and outer queries that filter, group or limit.
    for sql in ("SELECT data FROM tv_order WHERE data->>'status' = $1",
                "SELECT count(*) FROM (SELECT data FROM tv_order WHERE id > $1) s",
                "SELECT * FROM (SELECT data FROM tv_order) s WHERE s.data->>'a' = $1",
                "SELECT * FROM (SELECT data FROM tv_order ORDER BY id) s LIMIT 5",
                "SELECT * FROM (SELECT 1) a, (SELECT 2) b"):
        assert filter_query(parse_query_shape(sql).tree) is None, sql
    # A nested list (a scalar subquery per row of the page) is still a pass-through projection.
    nested = parse_query_shape(
        "SELECT (SELECT count(*) FROM tv_invoice i WHERE i.id = p.id) FROM "
        "(SELECT id FROM tv_order WHERE data->>'status' = $1 LIMIT $2) p")
    assert isinstance(filter_query(nested.tree), ast.SelectStmt)
    assert nested.limit == Limit("param")


def test_without_limit_drops_the_page_limit_only() -> None:
    tree = parse_query_shape(FRAISEQL2_REAL).tree
    unbounded = RawStream()(without_limit(tree))
    assert "LIMIT" not in unbounded and "OFFSET $5" not in unbounded and "OFFSET 0" in unbounded
    shape = parse_query_shape(unbounded)
    assert shape.limit == Limit("none") and reads(shape) == reads(parse_query_shape(FRAISEQL2_REAL))
    assert "LIMIT $4" in RawStream()(tree)  # the pattern's own tree is left alone
    flat = RawStream()(without_limit(parse_query_shape(
        "SELECT data FROM tv_order WHERE data->>'a' = $1 ORDER BY id LIMIT $2 OFFSET $3").tree))
    assert flat == "SELECT data FROM tv_order WHERE data ->> 'a' = $1 ORDER BY id"


def test_wrapped_limits() -> None:
    assert parse_query_shape("SELECT * FROM (SELECT data FROM tv_order WHERE id > $1 LIMIT 5) s "
                             "ORDER BY 1").limit == Limit("const", 5)
    # An aggregate over the page returns one row whatever the page's limit: none of its own.
    assert parse_query_shape("SELECT count(*) FROM (SELECT data FROM tv_order LIMIT 5) s"
                             ).limit == Limit("none")
    # The statement's own LIMIT wins.
    assert parse_query_shape("SELECT * FROM (SELECT data FROM tv_order LIMIT $1) s LIMIT 3"
                             ).limit == Limit("const", 3)


# (what FraiseQL 0.5.3 generated, what the analyzer must read from it on tv_order)
FRAISEQL05_READS = [
    {("data->>'status'", "equality", "=", False)},
    {("data->>'status'", "equality", "IN", False),
     ("(data->>'total')::numeric", "range", ">=", False),
     ("data->>'total'", "sort", "", True)},
    {("(data->>'total')::numeric", "range", ">=", False),
     ("data->>'status'", "equality", "= ANY", False),
     ("data->>'total'", "sort", "", True)},
    {("(data->>'created_at')::timestamp", "range", ">", False),
     ("data->>'created_at'", "sort", "", True)},
    {("(data->>'due_date')::date", "range", "<", False),
     ("data->>'due_date'", "sort", "", False)},
    {("(data->>'is_gift')::boolean", "equality", "=", False)},
    {("data->>'status'", "other", "<>", False),
     ("(data->>'total')::numeric", "range", "<", False)},
    {("data->>'customer_email'", "pattern", "~~", False)},
    {("data->>'customer_email'", "equality", "=", False)},
    {("data->>'status'", "equality", "IS NULL", False)},
]


@pytest.mark.parametrize(("text", "expected"), list(zip(FRAISEQL05_SQL, FRAISEQL05_READS,
                                                         strict=True)))
def test_fraiseql05_sql_before_and_after_normalization(text: str,
                                                       expected: set[tuple[str, str, str, bool]]
                                                       ) -> None:
    normalized = normalize_sql(text)
    assert normalized is not None and "'paid'" not in normalized
    raw, shape = parse_query_shape(text), parse_query_shape(normalized)
    assert reads(raw) == reads(shape) == expected
    assert shape.relations == (ORDER,) and explainable(shape) is None
    # An inlined LIMIT 20 becomes LIMIT $n: a limit still, of unknown size.
    if raw.limit.kind == "const":
        assert shape.limit == Limit("param")
    # Casts FraiseQL 0.5 writes for dates and timestamps cannot be indexed (not immutable).
    for use in shape.uses:
        assert use.key.indexable == (use.key.cast not in {"timestamp", "date"})


def test_normalized_without_the_path_keys_reads_no_path_but_does_not_fail() -> None:
    """libpg_query's own normalizer also replaces JSONB keys: the paths are gone, nothing breaks."""
    stripped = pglast.parser.normalize(FRAISEQL05_SQL[1])
    assert "'status'" not in stripped
    shape = parse_query_shape(stripped)
    assert shape.relations == (ORDER,)
    assert not any(u.key.is_json_path for u in shape.uses)


def test_time_casts_are_modelled_and_not_indexable() -> None:
    [use] = parse_query_shape(
        "SELECT data FROM tv_shop WHERE (data->>'opens_at')::time < ($1::text)::time").uses[1:]
    assert use.key.cast == "time" and not use.key.indexable


def test_plans_summarized_through_the_page_wrappers() -> None:
    """PostgreSQL's plan of a 2.x statement: Sort ("_o") > Subquery Scans > Limit (the page)."""
    scan = {"Node Type": "Seq Scan", "Relation Name": "tv_order", "Total Cost": 5000.0,
            "Plan Rows": 500}
    page = {"Node Type": "Limit", "Total Cost": 510.0, "Plan Rows": 50, "Plans": [
        {"Node Type": "WindowAgg", "Total Cost": 5100.0, "Plan Rows": 500, "Plans": [
            {"Node Type": "Sort", "Total Cost": 5090.0, "Plan Rows": 500, "Plans": [scan]}]}]}
    plan = {"Node Type": "Sort", "Total Cost": 520.0, "Plan Rows": 50, "Plans": [
        {"Node Type": "Subquery Scan", "Parent Relationship": "Outer", "Total Cost": 515.0,
         "Plan Rows": 50, "Plans": [
             {"Node Type": "Subquery Scan", "Parent Relationship": "Subquery",
              "Total Cost": 512.0, "Plan Rows": 50, "Plans": [page]}]}]}
    summary = summarize(plan)
    assert summary.total_cost == 520.0
    # As if the page did not stop early: the Limit's cost replaced by its input's.
    assert summary.full_cost == pytest.approx(520.0 - 510.0 + 5100.0)
    assert summary.plan_rows == 500 and summary.blocking
    assert summary.limit_rows == 50  # what the planner expected the page's LIMIT to keep
    # A plan with no Limit, or one below a node that is not a pass-through, is taken whole.
    assert summarize(scan).full_cost == 5000.0 and summarize(scan).limit_rows is None
    hashed = {"Node Type": "Hash Join", "Total Cost": 900.0, "Plans": [page, scan]}
    assert summarize(hashed).full_cost == 900.0
