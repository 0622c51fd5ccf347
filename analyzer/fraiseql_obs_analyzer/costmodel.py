"""Speedup estimates: the FraiseQL design docs' cost model, and the projection both modes share.

The cost model (NOTES.md, "Workload analysis"; used when no database is given to validate with):
JSONB extraction 0.05 ms per row and path, column access 0.0001 ms per row, index lookup
0.001 ms × log2(N); speedup capped at 100 for filters and sorts and 50 for aggregates; storage MB
= rows × bytes per value × 3.5 / 2^20.

Measured here, the JSONB constant is 100× too slow (400k rows scanned in 184 ms: 0.00046 ms per
row and path), so the model is *calibrated* on what the pipeline observed: the per-row JSONB cost
of a pattern is its observed database time above the floor divided by the rows × paths its scan
evaluates (never more than the model's 0.05 ms). The work a change removes is then priced at
that observed rate and the work that remains at the model's column and index costs.

Both modes end in a *work ratio* ``r``: database work above the floor before, divided by after
(the calibrated model here; HypoPG's corrected planner costs in :mod:`fraiseql_obs_analyzer.hypo`). The floor
is what the workload's fastest patterns spend anyway — network round trip, parse, plan, executor
start-up, and on a busy host the scheduling noise in their tail —, learned from the evidence:
``floor.db_ms`` the least mean database time of a pattern, ``floor.p95_ms`` the median p95 of the
five fastest (patterns under 10 ms; 1 ms and 2 ms when the workload has none). No index makes a
query faster than a primary-key lookup of the same workload. Then (:func:`project`):

* mean after = (mean − mean db) + floor.db + (mean db − floor.db) / r  (only the database part
  changes; SQL generation and projection stay);
* p95 after = floor.p95 + (p95 − floor.p95) / r.

The estimated speedup reported is p95 before / p95 after — what an operator measures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .shape import ColumnUse, KeyExpr, Limit, Usage

__all__ = [
    "AGGREGATE_CAP",
    "COLUMN_MS_PER_ROW",
    "DEFAULT_FLOOR_MS",
    "DEFAULT_FLOOR_P95_MS",
    "FILTER_CAP",
    "INDEX_LOOKUP_MS",
    "JSONB_EXTRACT_MS_PER_ROW",
    "MAX_FLOOR_MS",
    "Floor",
    "IndexFit",
    "calibrated_json_ms",
    "fit_index",
    "key_width",
    "model_aggregate_costs",
    "model_index_costs",
    "project",
    "storage_mb",
]

JSONB_EXTRACT_MS_PER_ROW: Final = 0.05
COLUMN_MS_PER_ROW: Final = 0.0001
INDEX_LOOKUP_MS: Final = 0.001  # × log2(rows)
FILTER_CAP: Final = 100.0
AGGREGATE_CAP: Final = 50.0
STORAGE_FACTOR: Final = 3.5
# When the workload has no fast pattern to learn the floor from.
DEFAULT_FLOOR_MS: Final = 1.0
DEFAULT_FLOOR_P95_MS: Final = 2.0
MIN_FLOOR_MS: Final = 0.05
# A pattern slower than this (mean database time) says nothing about the floor.
MAX_FLOOR_MS: Final = 10.0
# PostgreSQL's selectivity defaults (selfuncs.h), used when statistics are missing.
DEFAULT_EQ_SEL: Final = 0.005
DEFAULT_INEQ_SEL: Final = 1.0 / 3.0

# Bytes per value by type when the statistics carry no average width.
_TYPE_WIDTH: Final = {
    "smallint": 2, "integer": 4, "bigint": 8, "real": 4, "double precision": 8, "numeric": 8,
    "boolean": 1, "date": 4, "timestamp": 8, "timestamptz": 8, "uuid": 16, "text": 16,
    "jsonb": 64,
}

_FILTERS: Final = frozenset({Usage.EQUALITY, Usage.RANGE, Usage.PATTERN, Usage.OTHER,
                             Usage.CONTAINMENT})


@dataclass(frozen=True, slots=True)
class IndexFit:
    """How a btree index with given keys serves one pattern's use of one table."""

    eq_served: tuple[KeyExpr, ...]
    range_served: KeyExpr | None
    sort_served: bool  # the pattern sorts and the index delivers that order
    needs_sort: bool
    residual_json: int  # JSONB expressions still evaluated per visited row
    residual: bool  # filters or a sort the index leaves to per-row work
    matched_rows: float | None  # rows matching the served filters (statistics), None: unknown
    visited_rows: float  # rows read through the index
    table_rows: float

    @property
    def selectivity(self) -> float:
        """Fraction of the table the index lets the query skip."""
        if self.table_rows <= 0:
            return 0.0
        return max(0.0, 1.0 - self.visited_rows / self.table_rows)

    def at_least_as_good_as(self, other: IndexFit) -> bool:
        return (len(self.eq_served) >= len(other.eq_served)
                and (self.sort_served or not other.sort_served)
                and (self.range_served is not None or other.range_served is None)
                and self.visited_rows <= other.visited_rows * 1.01)


def _key_stats_selectivity(key: KeyExpr, eq: bool, stats: dict[KeyExpr, tuple[float | None,
                                                                         float | None]],
                           rows: float) -> float | None:
    found = stats.get(key.uncast())
    if found is None:
        return None
    null_frac, distinct = found
    if not eq:
        return None
    if distinct is None or distinct <= 0:
        return None
    return max(0.0, 1.0 - (null_frac or 0.0)) / max(distinct, 1.0)


def fit_index(
    keys: Sequence[KeyExpr],
    uses: Sequence[ColumnUse],
    limit: Limit,
    *,
    table_rows: float,
    observed_rows: float,
    stats: dict[KeyExpr, tuple[float | None, float | None]] | None = None,
) -> IndexFit | None:
    """How a btree on ``keys`` serves a pattern whose uses of the table are ``uses``.

    None when the index does not help at all (its leading key is neither an equality filter, a
    range filter nor the leading sort key). ``stats`` maps an uncast key to (null_frac, distinct
    values) from the table statistics. ``observed_rows`` is the pattern's mean rows returned.
    """
    stats = stats or {}
    eq: list[KeyExpr] = []
    ranges: list[KeyExpr] = []
    sort: list[tuple[KeyExpr, bool]] = []
    other_filters = 0
    json_exprs: set[KeyExpr] = set()
    for use in uses:
        if (use.usage in _FILTERS or use.usage == Usage.SORT) and use.key.is_json_path:
            json_exprs.add(use.key)
        if use.usage == Usage.EQUALITY and not use.in_or:
            if use.key not in eq:
                eq.append(use.key)
        elif use.usage == Usage.RANGE and not use.in_or:
            if use.key not in ranges:
                ranges.append(use.key)
        elif use.usage == Usage.SORT:
            sort.append((use.key, use.descending))
        elif use.usage in _FILTERS:
            other_filters += 1
    i = 0
    eq_served: list[KeyExpr] = []
    while i < len(keys) and keys[i] in eq and keys[i] not in eq_served:
        eq_served.append(keys[i])
        i += 1
    # ORDER BY keys that equality already pins down need no ordering.
    sort_rest = [(k, d) for k, d in sort if k not in eq_served]
    needs_sort = bool(sort_rest)
    sort_served = False
    range_served: KeyExpr | None = None
    if sort_rest:
        tail = list(keys[i:i + len(sort_rest)])
        directions = {d for _, d in sort_rest}
        if tail == [k for k, _ in sort_rest] and len(directions) == 1:
            sort_served = True
            if sort_rest[0][0] in ranges:
                range_served = sort_rest[0][0]
    if not sort_served and i < len(keys) and keys[i] in ranges:
        range_served = keys[i]
    if not eq_served and range_served is None and not sort_served:
        return None
    residual_eq = [k for k in eq if k not in eq_served]
    residual_range = [k for k in ranges if k != range_served]
    residual = bool(residual_eq or residual_range or other_filters or (needs_sort
                                                                        and not sort_served))
    served_exprs = set(eq_served) | ({range_served} if range_served else set())
    if sort_served:
        served_exprs |= {k for k, _ in sort_rest}
    residual_json = len([k for k in json_exprs if k not in served_exprs])
    rows = max(table_rows, 1.0)
    matched: float | None = rows
    for key in eq_served:
        selectivity = _key_stats_selectivity(key, True, stats, rows)
        if selectivity is None:
            matched = None
            break
        matched = (matched or rows) * selectivity
    if matched is not None and range_served is not None:
        matched *= DEFAULT_INEQ_SEL
    returned = max(observed_rows, 1.0)
    stops_early = limit.kind != "none" and (sort_served or not needs_sort)
    if not residual and (stops_early or limit.kind == "none"):
        visited = returned  # the index delivers exactly the rows returned
    elif matched is not None:
        visited = max(matched, returned)
    else:
        guess = rows * DEFAULT_EQ_SEL ** len(eq_served) if eq_served else rows * DEFAULT_INEQ_SEL
        visited = max(guess, returned)
    return IndexFit(tuple(eq_served), range_served, sort_served, needs_sort, residual_json,
                    residual, matched, min(visited, rows), rows)


def model_index_costs(fit: IndexFit, uses: Sequence[ColumnUse], *,
                      json_ms: float = JSONB_EXTRACT_MS_PER_ROW) -> tuple[float, float]:
    """(before, after) database work in ms: a sequential scan versus the index.

    ``json_ms``: the (calibrated) cost of one JSONB extraction per row.
    """
    json_exprs = {u.key for u in uses if u.key.is_json_path
                  and (u.usage in _FILTERS or u.usage == Usage.SORT)}
    plain = {u.key for u in uses if not u.key.is_json_path
             and (u.usage in _FILTERS or u.usage == Usage.SORT)}
    per_row = len(json_exprs) * json_ms + max(1, len(plain)) * COLUMN_MS_PER_ROW
    before = fit.table_rows * per_row
    after = (INDEX_LOOKUP_MS * math.log2(max(fit.table_rows, 2.0))
             + fit.visited_rows * (fit.residual_json * json_ms + COLUMN_MS_PER_ROW))
    return before, after


def model_aggregate_costs(table_rows: float, json_exprs: int, *, removed_json: int,
                          output_rows: float | None = None,
                          json_ms: float = JSONB_EXTRACT_MS_PER_ROW) -> tuple[float, float]:
    """(before, after) database work in ms of a full-scan aggregate.

    ``removed_json`` JSONB extractions per row become column reads (denormalization);
    ``output_rows`` set: the result is read precomputed instead (materialized view).
    """
    rows = max(table_rows, 1.0)
    before = rows * (json_exprs * json_ms + COLUMN_MS_PER_ROW)
    if output_rows is not None:
        out = max(output_rows, 1.0)
        return before, INDEX_LOOKUP_MS * math.log2(out + 1.0) + out * COLUMN_MS_PER_ROW
    remaining = max(0, json_exprs - removed_json)
    after = rows * (remaining * json_ms
                    + (1 + min(removed_json, json_exprs)) * COLUMN_MS_PER_ROW)
    return before, after


@dataclass(frozen=True, slots=True)
class Floor:
    """What the workload's fastest patterns spend regardless of any schema change."""

    db_ms: float = DEFAULT_FLOOR_MS  # least mean database round trip
    p95_ms: float = DEFAULT_FLOOR_P95_MS  # median p95 of the fastest patterns


def project(mean_ms: float, mean_db_ms: float, p95_ms: float | None, ratio: float,
            floor: Floor) -> tuple[float, float | None]:
    """(mean, p95) after a change whose database work ratio (above the floor) is ``ratio``."""
    mean_db_ms = min(max(mean_db_ms, 0.0), mean_ms)
    if ratio <= 1.0:
        return mean_ms, p95_ms
    mean_after = mean_ms
    if mean_db_ms > floor.db_ms:
        mean_after = (mean_ms - mean_db_ms) + floor.db_ms + (mean_db_ms - floor.db_ms) / ratio
    p95_after = p95_ms
    if p95_ms is not None and p95_ms > floor.p95_ms:
        p95_after = floor.p95_ms + (p95_ms - floor.p95_ms) / ratio
    return mean_after, p95_after


def calibrated_json_ms(db_ms: float, floor: Floor, table_rows: float, json_exprs: int) -> float:
    """Observed JSONB cost per row and path of a full scan (capped by the model's 0.05 ms)."""
    rows = max(table_rows, 1.0) * max(json_exprs, 1)
    return min(JSONB_EXTRACT_MS_PER_ROW, max(db_ms - floor.db_ms, 0.0) / rows)


def key_width(key: KeyExpr, avg_width: int | None) -> int:
    if avg_width is not None and avg_width > 0:
        return avg_width
    return _TYPE_WIDTH.get(key.value_type(), 16)


def storage_mb(rows: float, bytes_per_value: float) -> float:
    """NOTES.md: rows × bytes per value × 3.5 / 2^20."""
    return max(rows, 0.0) * max(bytes_per_value, 0.0) * STORAGE_FACTOR / 2**20
