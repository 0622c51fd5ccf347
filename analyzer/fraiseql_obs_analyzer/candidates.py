"""Candidate schema changes across the whole workload, from SQL shapes and table statistics.

No latencies are needed to generate them (:mod:`fraiseql_obs_analyzer.evaluate` prices them):

* ``add_index`` (btree): per pattern and table, the ideal key list — equality filters first (most
  selective first, by the statistics), then the ORDER BY keys, or else a range key. Identical key
  lists from different patterns are one candidate; every pattern the index can serve (a prefix of
  its keys matches) is credited, so one suggestion serves many patterns and their impact adds up.
  A GIN candidate for ``@>``/``?`` containment on a JSONB column.
* ``denormalize``: a JSONB path grouped or aggregated over — extracting it per row is what a full
  scan pays for; a typed column turns that into a column read.
* ``materialize_view``: an aggregate without parameters (whether it is frequent and slow enough
  is decided when it is evaluated) — its answer can be precomputed.

Unused indexes to drop are :mod:`fraiseql_obs_analyzer.drops`' business.

Never suggested: an index an existing one already provides (same keys as a prefix), a pattern's
index when an existing index already serves it at least as well, a column that exists.

Expressions PostgreSQL cannot index — text cast to ``date``/``timestamp``/``timestamptz`` is not
immutable — end an index's key list, and become a ``denormalize`` candidate instead: a typed
column filled by a trigger can be indexed (once the API filters on the column).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Final

from pglast import ast

from . import costmodel as cm
from .context import Benefit, Candidate, PatternContext, TableContext, index_fit
from .hypo import explainable
from .shape import KeyExpr, Usage

__all__ = ["FEW_ROWS", "MAX_EQ_KEYS", "generate_candidates"]

MAX_EQ_KEYS: Final = 3
# Rows an equality lookup may leave and still be sorted in memory for next to nothing.
FEW_ROWS: Final = 100.0


def _selectivity_rank(table: TableContext, key: KeyExpr) -> float:
    stat = table.stats.get(key.uncast())
    if stat is None or not stat[1]:
        return 1.0  # unknown: after the keys the statistics call selective
    return (1.0 - (stat[0] or 0.0)) / max(stat[1], 1.0)


def _matched_rows(table: TableContext, keys: Sequence[KeyExpr]) -> float:
    """Rows the equality ``keys`` match together, by the statistics (inf: unknown)."""
    rows = max(table.rows, 1.0)
    for key in keys:
        stat = table.stats.get(key.uncast())
        if stat is None or not stat[1]:
            return math.inf
        rows *= (1.0 - (stat[0] or 0.0)) / max(stat[1], 1.0)
    return rows


def _ideal_keys(uses: Sequence[Any], table: TableContext) -> tuple[KeyExpr, ...]:
    eq: list[KeyExpr] = []
    ranges: list[KeyExpr] = []
    sort: list[tuple[KeyExpr, bool]] = []
    for use in uses:
        if use.in_or:
            continue
        if use.usage == Usage.EQUALITY and use.key not in eq:
            eq.append(use.key)
        elif use.usage == Usage.RANGE and use.key not in ranges:
            ranges.append(use.key)
        elif use.usage == Usage.SORT and use.key not in (k for k, _ in sort):
            sort.append((use.key, use.descending))
    eq.sort(key=lambda k: _selectivity_rank(table, k))
    keys = eq[:MAX_EQ_KEYS]
    sort_rest: list[KeyExpr] = []
    direction: bool | None = None
    for key, descending in sort:
        if key in keys:
            continue
        # One scan direction serves the ORDER BY keys up to the first that turns: FraiseQL 2.x
        # breaks ties with "id ASC" after a DESC key, which the index's keys cannot also follow.
        if direction is not None and descending != direction:
            break
        direction = descending
        sort_rest.append(key)
    if keys and _matched_rows(table, keys) <= FEW_ROWS:
        # The equality keys leave a handful of rows: sorting them costs nothing, so no ORDER BY
        # key belongs in the index (FraiseQL 2.x always orders its pages by id, at least).
        sort_rest = []
    if sort_rest:
        keys += sort_rest[:2]
    elif ranges:
        keys.append(ranges[0])
    # An expression PostgreSQL cannot index ends the key list (a typed column serves it instead).
    indexable: list[KeyExpr] = []
    for key in keys:
        if not key.indexable:
            break
        indexable.append(key)
    return tuple(indexable)


def _best_existing_fit(table: TableContext, uses: Sequence[Any], pattern: PatternContext
                       ) -> cm.IndexFit | None:
    best: cm.IndexFit | None = None
    for _, keys in table.btree_keys():
        fit = index_fit(keys, uses, pattern, table)
        if fit is not None and (best is None or fit.visited_rows < best.visited_rows
                                or fit.at_least_as_good_as(best)):
            best = fit
    return best


def _exists(table: TableContext, keys: Sequence[KeyExpr], method: str) -> bool:
    for index in table.existing:
        if index.method != method or index.partial:
            continue
        if tuple(index.keys[: len(keys)]) == tuple(keys):
            return True
    return False


def _infer_type(key: KeyExpr, uses: Iterable[Any], table: TableContext) -> str:
    casts = [u.key.cast for u in uses if u.key.uncast() == key and u.key.cast]
    if casts:
        return str(max(set(casts), key=casts.count))
    stat = table.snapshot.column_stat(key) if table.snapshot else None
    if stat is not None:
        declared = stat.data_type.lower().strip()
        mapped = {"text": "text", "numeric": "numeric", "integer": "integer", "bigint": "bigint",
                  "boolean": "boolean", "date": "date", "timestamptz": "timestamptz",
                  "timestamp with time zone": "timestamptz", "double precision":
                  "double precision", "uuid": "uuid"}.get(declared)
        if mapped:
            return mapped
    return "text" if key.as_text else "jsonb"


def _column_name(key: KeyExpr, table: TableContext) -> str:
    from .sqlgen import object_name  # noqa: PLC0415 - keeps the import graph one-way at load

    parts = [str(p) for p in key.path] or [key.column]
    base = "_".join(parts)
    name = object_name(base, suffix="").rstrip("_") if base else ""
    taken = table.snapshot.plain_columns() if table.snapshot else set()
    if not name or name in taken:
        name = object_name(key.column, *parts, suffix="col", taken=taken)
    return name


def _mv_eligible(pattern: PatternContext) -> bool:
    shape = pattern.shape
    return (shape.statement == "select" and (shape.has_aggregates or shape.has_group_by)
            and shape.param_count == 0 and not shape.has_subqueries
            and explainable(shape) is None and isinstance(shape.tree, ast.SelectStmt)
            and shape.tree.op in (None, 0) and len(shape.relations) >= 1)


def generate_candidates(patterns: Sequence[PatternContext]) -> list[Candidate]:
    """Every candidate the workload's SQL suggests, with the patterns each could serve."""
    found: dict[tuple[Any, ...], Candidate] = {}

    def add(candidate: Candidate) -> None:
        found.setdefault(candidate.identity, candidate)

    for pattern in patterns:
        shape = pattern.shape
        if shape.statement != "select":
            continue
        for table in dict.fromkeys(pattern.tables.values()):
            uses = pattern.uses_on(table)
            keys = _ideal_keys(uses, table)
            if keys and not _exists(table, keys, "btree"):
                ideal = index_fit(keys, uses, pattern, table)
                existing = _best_existing_fit(table, uses, pattern)
                if ideal is not None and not (existing and existing.at_least_as_good_as(ideal)):
                    add(Candidate("add_index", table, keys))
            containment = [u for u in uses if u.usage == Usage.CONTAINMENT and not u.in_or
                           and not u.key.path]
            for column in dict.fromkeys(u.key for u in containment):
                operators = {u.operator for u in containment if u.key == column}
                opclass = "jsonb_path_ops" if operators <= {"@>"} else None
                if not any(i.method == "gin" and i.keys[:1] == (column,) for i in table.existing):
                    add(Candidate("add_index", table, (column,), method="gin", opclass=opclass))
            for use in uses:
                if use.usage in (Usage.GROUP, Usage.AGGREGATE) and use.key.is_json_path:
                    key = use.key.uncast()
                    new_type = _infer_type(key, uses, table)
                    add(Candidate("denormalize", table, (key,), new_column=_column_name(key, table),
                                  new_type=new_type))
                elif (use.usage in (Usage.EQUALITY, Usage.RANGE, Usage.SORT) and not use.in_or
                      and not use.key.indexable):
                    # (data->>'created_at')::timestamptz cannot be indexed: a typed column can.
                    key = use.key.uncast()
                    column = _column_name(key, table)
                    if column not in (table.snapshot.plain_columns() if table.snapshot else ()):
                        add(Candidate("denormalize", table, (key,), new_column=column,
                                      new_type=use.key.cast, filter_key=use.key))
        if _mv_eligible(pattern):
            first = next(iter(pattern.tables.values()))
            add(Candidate("materialize_view", first, pattern=pattern))
    candidates = list(found.values())
    by_table: dict[int, list[PatternContext]] = {}
    for pattern in patterns:
        for table in dict.fromkeys(pattern.tables.values()):
            by_table.setdefault(id(table), []).append(pattern)
    for candidate in candidates:
        _attach_patterns(candidate, by_table.get(id(candidate.table), []))
    return [c for c in candidates if c.benefits]


def _attach_patterns(candidate: Candidate, patterns: Sequence[PatternContext]) -> None:
    if candidate.kind == "materialize_view":
        assert candidate.pattern is not None
        candidate.benefits = [Benefit(candidate.pattern, None)]
        return
    for pattern in patterns:
        if candidate.table not in pattern.tables.values():
            continue
        uses = pattern.uses_on(candidate.table)
        if candidate.kind == "denormalize":
            key = candidate.keys[0]
            if candidate.filter_key is not None:
                column_fit = index_fit((candidate.filter_key,), uses, pattern, candidate.table)
                if column_fit is not None:
                    candidate.benefits.append(Benefit(pattern, column_fit))
            elif any(u.key.uncast() == key and u.usage in (Usage.GROUP, Usage.AGGREGATE)
                     for u in uses):
                candidate.benefits.append(Benefit(pattern, None))
        elif candidate.method == "gin":
            if any(u.usage == Usage.CONTAINMENT and u.key == candidate.keys[0] for u in uses):
                returned = max(pattern.evidence.mean_rows, 1.0)
                visited = max(returned, candidate.table.rows * cm.DEFAULT_EQ_SEL)
                fit = cm.IndexFit((), None, False, False, 0, pattern.shape.limit.kind == "none",
                                  None, min(visited, candidate.table.rows),
                                  candidate.table.rows)
                candidate.benefits.append(Benefit(pattern, fit))
        else:
            served = index_fit(candidate.keys, uses, pattern, candidate.table)
            if served is None:
                continue
            existing = _best_existing_fit(candidate.table, uses, pattern)
            if existing is not None and existing.at_least_as_good_as(served):
                continue
            candidate.benefits.append(Benefit(pattern, served))
