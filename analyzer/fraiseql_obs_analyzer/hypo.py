"""Validating index candidates against a real planner with HypoPG (``--validate-with URL``).

For each candidate: a hypothetical index (``hypopg_create_index``), then the generic plan of each
pattern it should serve — before and after — and the index's estimated size
(``hypopg_relation_size``), then ``hypopg_reset()``. Generic plans because the pipeline has no
argument values (no PII): on PostgreSQL 16+ ``EXPLAIN (GENERIC_PLAN)``, before that ``PREPARE`` +
``plan_cache_mode = force_generic_plan`` + ``EXPLAIN EXECUTE`` with NULL arguments (a parameter
whose type the server cannot infer, such as a normalized ``jsonb_build_object($1, …)`` key, is
declared ``text``).

When the validation server cannot plan the statement itself — FraiseQL 2.x's ``JSON_OBJECT(…
RETURNING json)`` needs PostgreSQL 16, ``pg_column_toast_chunk_id`` 17 — the query inside its
pass-through wrappers that filters, sorts and limits (:func:`fraiseql_obs_analyzer.parse.filter_query`)
is planned instead: the wrappers only reshape the page's rows. :attr:`PlanSummary.planned` says
which was planned, and why when it was the inner query.

Nothing is written to the validation database: the session runs in a READ ONLY transaction that is
rolled back; hypothetical indexes live in the backend's memory only (and are reset anyway).

What the planner gets wrong, and how :func:`corrected_costs` fixes it with what the pipeline knows
(NOTES.md measured a naive ratio 70× too pessimistic):

* a hypothetical expression index has no statistics, so an equality on it is costed at the
  default selectivity (0.5 % of the table) instead of the handful of rows it really matches;
* a parameter ``LIMIT`` is costed as 10 % of the rows, hiding an early stop — or its absence: a
  selective filter makes the sequential scan read the whole table however small the LIMIT.

So the *before* cost is the full cost of the plan under its top ``Limit``, or under the page's
``Limit`` below pass-through wrappers (:func:`summarize`): the scan reads the whole table when few
rows match, which is what a candidate worth suggesting looks like. The
*after* cost is the planner's cost of the plan with the hypothetical index scaled from the rows it
assumed at the index scan to the rows the pattern really visits (observed rows returned per
execution; statistics for residual filters), never below one index descent. Raw and corrected
costs are both reported. When the LIMIT guess alone makes the planner prefer walking another index
in ORDER BY order (FraiseQL 2.x's ``ORDER BY id … LIMIT $n``) although the statistics say fewer
rows match than it expects the LIMIT to keep, both plans are made without the LIMIT
(``plan(…, unbounded=True)``; :mod:`fraiseql_obs_analyzer.evaluate` decides).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from pglast import ast
from pglast.stream import RawStream
from psycopg import sql

from fraiseql_observability.db import connect, describe_error
from fraiseql_observability.secrets import mask_url

from .errors import ValidationUnavailable
from .expressions import walk
from .parse import filter_query, without_limit
from .shape import QueryShape

__all__ = [
    "SAFE_FUNCTIONS",
    "HypoIndex",
    "HypoValidator",
    "PlanSummary",
    "corrected_costs",
    "explainable",
]

log = logging.getLogger(__name__)

STATEMENT_NAME: Final = "fraiseql_hypo"
# The cost of reading one row through a btree (one heap page at random_page_cost = 4, one index
# leaf): the lowest a corrected "after" cost may go.
MIN_INDEX_COST: Final = 8.0
# Functions a pattern may call and still be planned (EXPLAIN never executes it, but the planner
# folds immutable calls on constants): aggregates, JSON accessors, casts' helpers, comparisons.
SAFE_FUNCTIONS: Final = frozenset({
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "array_agg",
    "string_agg", "jsonb_agg", "json_agg", "jsonb_object_agg", "jsonb_build_object",
    "json_build_object", "jsonb_extract_path", "jsonb_extract_path_text", "json_extract_path",
    "json_extract_path_text", "jsonb_array_length", "jsonb_typeof", "coalesce", "lower", "upper",
    "length", "now", "date_trunc", "greatest", "least", "nullif", "abs", "round", "floor", "ceil",
    "to_jsonb", "row_to_json", "jsonb_build_array", "unnest", "any_value", "pg_catalog.count",
    # Window functions: FraiseQL 2.x numbers its page's rows with row_number() OVER (ORDER BY …).
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
    # FraiseQL 2.x detoasts its page's documents (CASE WHEN pg_column_compression(data) …).
    "pg_column_compression", "pg_column_toast_chunk_id", "pg_column_size",
    # Operators FraiseQL spells as functions: network filters, full-text search, array length.
    "host", "family", "to_tsvector", "to_tsquery", "plainto_tsquery", "phraseto_tsquery",
    "websearch_to_tsquery", "json_array_length",
})
# Plan nodes that pass their input through in one piece above a Limit: the wrappers of a
# FraiseQL 2.x page (an outer ORDER BY "_o", subquery scans, a projection).
_PASS_THROUGH: Final = frozenset({"Sort", "Incremental Sort", "Subquery Scan", "Result",
                                  "Materialize"})
_INDETERMINATE_TYPE: Final = "42P18"  # "could not determine data type of parameter $n"
_BLOCKING: Final = frozenset({"Sort", "Aggregate", "Hash", "HashAggregate", "Incremental Sort",
                              "Materialize", "WindowAgg", "Gather Merge", "SetOp", "Unique"})


def explainable(shape: QueryShape) -> str | None:
    """Why ``shape`` must not be planned on the validation database, or None when it may."""
    if shape.statement != "select" or not shape.read_only:
        return "not a plain read-only SELECT"
    unsafe = sorted(f for f in shape.functions if f.lower() not in SAFE_FUNCTIONS)
    if unsafe:
        return "calls functions outside the allowlist: " + ", ".join(unsafe[:3])
    return None


@dataclass(frozen=True, slots=True)
class PlanSummary:
    """What the analyzer reads from an ``EXPLAIN (FORMAT JSON)`` plan."""

    total_cost: float  # of the whole plan (a top Limit included)
    full_cost: float  # of the plan under the top Limit: as if no early stop
    plan_rows: float
    index_names: tuple[str, ...]
    blocking: bool  # a Sort/Aggregate/Hash consumes its whole input before the first row
    node: dict[str, Any] | None  # the node that reads through the hypothetical index, if any
    raw: dict[str, Any]
    # Rows the plan's (page) Limit was assumed to pass: with a parameter LIMIT, 10 % of the
    # rows below it. None: no Limit on top or below pass-through nodes.
    limit_rows: float | None = None
    planned: str = "statement"  # or "inner query": the filtering query inside the wrappers
    fallback_reason: str | None = None  # why the statement itself was not planned

    def index_node(self, name: str) -> dict[str, Any] | None:
        return _find_index_node(self.raw, name)


@dataclass(frozen=True, slots=True)
class HypoIndex:
    indexrelid: int
    name: str
    size_bytes: int


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []) or []:
        if isinstance(child, dict):
            yield from _walk(child)


def _find_index_node(plan: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The node whose cost covers reading rows through index ``name``.

    For a bitmap scan that is the Bitmap Heap Scan above the Bitmap Index Scan (the heap fetches
    are most of the cost).
    """
    for node in _walk(plan):
        for child in node.get("Plans", []) or []:
            if (isinstance(child, dict) and child.get("Index Name") == name
                    and node.get("Node Type") == "Bitmap Heap Scan"):
                return node
        if node.get("Index Name") == name and node.get("Node Type") != "Bitmap Index Scan":
            return node
    for node in _walk(plan):
        if node.get("Index Name") == name:
            return node
    return None


def _page_limit(plan: dict[str, Any]) -> dict[str, Any] | None:
    """The Limit node at the top of ``plan`` or below nodes that only pass its rows through."""
    node = plan
    while node.get("Node Type") != "Limit":
        if node.get("Node Type") not in _PASS_THROUGH:
            return None
        children = [c for c in node.get("Plans", []) or [] if isinstance(c, dict)
                    and c.get("Parent Relationship") in (None, "Outer", "Subquery")]
        if len(children) != 1:
            return None
        node = children[0]
    return node


def summarize(plan: dict[str, Any]) -> PlanSummary:
    top = plan
    full = plan
    total = float(top.get("Total Cost", 0.0))
    full_cost = total
    limit = _page_limit(plan)
    if limit is not None and limit.get("Plans"):
        # As if no early stop: the Limit's cost replaced by its input's (the wrappers above it
        # cost next to nothing on a page of rows).
        full = limit["Plans"][0]
        full_cost = total - float(limit.get("Total Cost", 0.0)) + float(full.get("Total Cost", 0.0))
    names = tuple(str(n["Index Name"]) for n in _walk(plan) if "Index Name" in n)
    blocking = any(n.get("Node Type") in _BLOCKING for n in _walk(full))
    return PlanSummary(
        total_cost=total,
        full_cost=full_cost,
        plan_rows=float(full.get("Plan Rows", 0.0)),
        index_names=names,
        blocking=blocking,
        node=None,
        raw=plan,
        limit_rows=float(limit.get("Plan Rows", 0.0)) if limit is not None else None,
    )


def corrected_costs(before: PlanSummary, after: PlanSummary, index_name: str, *,
                    visited_rows: float) -> tuple[float, float] | None:
    """(before, after) planner costs corrected with the observed row counts; None: index unused."""
    node = after.index_node(index_name)
    if node is None:
        return None
    planned = max(float(node.get("Plan Rows", 1.0)), 1.0)
    scale = min(1.0, max(visited_rows, 1.0) / planned)
    # Everything of the after plan is driven by the rows the index yields: scale it as a whole.
    corrected_after = max(after.full_cost * scale, MIN_INDEX_COST)
    return before.full_cost, corrected_after


def _indeterminate_parameter(exc: psycopg.Error) -> int | None:
    """``n`` of "could not determine data type of parameter $n", else None."""
    if exc.sqlstate != _INDETERMINATE_TYPE:
        return None
    _, _, number = (exc.diag.message_primary or "").rpartition("$")
    return int(number) if number.isdigit() else None


class HypoValidator:
    """One session on the validation database; use as a context manager."""

    def __init__(self, url: str, *, statement_timeout_secs: float = 30.0,
                 connect_timeout_secs: float = 10.0) -> None:
        self._url = url
        self._prepared = False
        # Not read_only here: the session opens its READ ONLY transaction itself (below).
        self._conn: psycopg.Connection[tuple[Any, ...]] = connect(
            url, application_name="fraiseql-analyze-hypopg",
            statement_timeout=statement_timeout_secs, connect_timeout=connect_timeout_secs,
            error=ValidationUnavailable, what="the validation database")
        try:
            row = self._conn.execute(
                "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'hypopg'"
            ).fetchone()
            if row is None:
                raise ValidationUnavailable(
                    f"the validation database {mask_url(url)} has no HypoPG extension "
                    "(CREATE EXTENSION hypopg; as a superuser there, or drop --validate-with)")
            self.hypopg_version = str(row[0])
            self.server_version = int(self._conn.info.server_version)
            self._conn.execute("BEGIN TRANSACTION READ ONLY")
            self._conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            self._conn.execute("SELECT hypopg_reset()")
        except psycopg.Error as exc:
            self._conn.close()
            raise ValidationUnavailable(
                f"the validation database {mask_url(url)} cannot be used: "
                f"{describe_error(exc)}") from None
        except ValidationUnavailable:
            self._conn.close()
            raise

    def __enter__(self) -> HypoValidator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn.closed:
            return
        try:
            if not self._conn.broken:
                self._conn.execute("ROLLBACK")
                self._conn.execute("SELECT hypopg_reset()")
        except psycopg.Error:
            pass
        finally:
            self._conn.close()

    def _savepoint(self, name: str) -> None:
        self._conn.execute(sql.SQL("SAVEPOINT {}").format(sql.Identifier(name)))

    def _rollback_to(self, name: str) -> None:
        self._conn.execute(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(sql.Identifier(name)))

    def plan(self, shape: QueryShape, *, unbounded: bool = False) -> PlanSummary | str:
        """The generic plan of a pattern, or the reason it could not be planned.

        When the server cannot plan the statement, the query inside its pass-through wrappers
        is planned instead (``planned == "inner query"``), if it has one. ``unbounded``: the
        statement without the LIMIT of its page (:func:`~fraiseql_obs_analyzer.parse.without_limit`).
        """
        reason = explainable(shape)
        if reason is not None:
            return reason
        # The statement is re-rendered from its parse tree: one statement, exactly what was
        # parsed, whatever the text it came from contained (comments, a second statement …).
        tree = without_limit(shape.tree) if unbounded else shape.tree
        whole = self._plan(tree)
        if isinstance(whole, PlanSummary):
            return whole
        inner = filter_query(tree)
        if inner is None:
            return whole
        part = self._plan(inner)
        if isinstance(part, str):
            return f"{whole}; its inner query too: {part}"
        return dataclasses.replace(part, planned="inner query", fallback_reason=whole)

    def _plan(self, tree: Any) -> PlanSummary | str:
        statement = RawStream()(tree)
        params = max((int(n.number or 0) for n in walk(tree) if isinstance(n, ast.ParamRef)),
                     default=0)
        types: list[str] | None = None  # None: the server infers every parameter's type
        for _ in range(params + 1):
            self._savepoint("fraiseql_plan")
            try:
                row = self._explain(statement, params, types)
            except psycopg.Error as exc:
                self._rollback_to("fraiseql_plan")
                self._deallocate()
                position = _indeterminate_parameter(exc)
                if position is None or not 1 <= position <= params or \
                        (types is not None and types[position - 1] == "text"):
                    return f"the planner refused it: {describe_error(exc).splitlines()[0]}"
                # A parameter nothing gives a type (a normalized jsonb_build_object key, or a
                # number the query skips): declared text, the others still inferred.
                types = types or ["unknown"] * params
                types[position - 1] = "text"
                continue
            document = row[0] if row else None
            if isinstance(document, str):
                document = json.loads(document)
            if not isinstance(document, list) or not document or "Plan" not in document[0]:
                return "EXPLAIN returned no plan"
            return summarize(document[0]["Plan"])
        return "the planner refused it: parameter types could not be determined"

    def _explain(self, statement: str, params: int, types: Sequence[str] | None) -> Any:
        if types is None and self.server_version >= 160000:
            query = sql.SQL("EXPLAIN (FORMAT JSON, GENERIC_PLAN) {}").format(sql.SQL(statement))
            return self._conn.execute(query).fetchone()
        name = sql.Identifier(STATEMENT_NAME)
        declared = (sql.SQL("({})").format(sql.SQL(", ").join(sql.SQL(t) for t in types))
                    if types else sql.SQL(""))
        self._conn.execute(sql.SQL("PREPARE {}{} AS {}").format(name, declared,
                                                                 sql.SQL(statement)))
        self._prepared = True
        nulls = sql.SQL(", ").join([sql.SQL("NULL")] * params)
        execute = (sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE {}({})").format(name, nulls)
                   if params else sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE {}").format(name))
        row = self._conn.execute(execute).fetchone()
        self._deallocate()
        return row

    def _deallocate(self) -> None:
        # A prepared statement outlives ROLLBACK TO SAVEPOINT: deallocate it whatever happened.
        if self._prepared:
            self._conn.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(STATEMENT_NAME)))
            self._prepared = False

    @contextmanager
    def hypothetical(self, create_index: sql.Composable) -> Iterator[HypoIndex | str]:
        """A hypothetical index for the duration of the block (or the reason it failed)."""
        statement = create_index.as_string(self._conn)
        self._savepoint("fraiseql_hypo")
        try:
            row = self._conn.execute(
                "SELECT indexrelid, indexname, hypopg_relation_size(indexrelid)"
                " FROM hypopg_create_index(%s)", (statement,)).fetchone()
        except psycopg.Error as exc:
            self._rollback_to("fraiseql_hypo")
            yield f"HypoPG refused the index: {describe_error(exc).splitlines()[0]}"
            return
        if row is None:
            yield "HypoPG created no index"
            return
        try:
            yield HypoIndex(int(row[0]), str(row[1]), int(row[2] or 0))
        finally:
            try:
                self._conn.execute("SELECT hypopg_reset()")
            except psycopg.Error:
                self._rollback_to("fraiseql_hypo")
                self._conn.execute("SELECT hypopg_reset()")
