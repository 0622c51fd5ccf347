"""Candidate schema changes across the whole workload, and what each would save.

Generation (from SQL shapes and table statistics, no latencies needed):

* ``add_index`` (btree): per pattern and table, the ideal key list — equality filters first (most
  selective first, by the statistics), then the ORDER BY keys, or else a range key. Identical key
  lists from different patterns are one candidate; every pattern the index can serve (a prefix of
  its keys matches) is credited, so one suggestion serves many patterns and their impact adds up.
  A GIN candidate for ``@>``/``?`` containment on a JSONB column.
* ``denormalize``: a JSONB path grouped or aggregated over — extracting it per row is what a full
  scan pays for; a typed column turns that into a column read.
* ``materialize_view``: an aggregate without parameters that is frequent (> 100/day) and slow
  (p95 > 500 ms) — its answer can be precomputed.
* ``drop_index``: an index that is neither unique nor primary, existed for the whole window,
  serves no pattern of the workload, and whose scan counter barely moved (< 10 scans per 30 days,
  scaled to the window; 0 since the last statistics reset when the window holds one snapshot).

Selectivity (``min_selectivity``): the fraction of a table's rows an index lets a query skip,
1 − rows read through the index / table rows; an ``add_index`` is not credited with the patterns
it would leave reading most of the table.

Never suggested: an index an existing one already provides (same keys as a prefix), a pattern's
index when an existing index already serves it at least as well, a column that exists.

Evaluation: per (candidate, pattern) a database work ratio — the calibrated cost model, or HypoPG's
planner costs corrected with the observed rows (:mod:`fraiseql_obs_analyzer.hypo`) — turned into a projected
mean and p95 by :func:`fraiseql_obs_analyzer.costmodel.project`. A candidate's estimated speedup is the p95 of
all its patterns' executions together before / after (each pattern's values divided by its own
speedup), so a frequent fast pattern cannot hide a slow one; its time saved per day (the ranking)
sums queries/day × (mean before − mean after). Then filters (min_frequency on queries/day,
min_speedup, min_selectivity per pattern) and redundancy: a candidate whose every pattern is
served at least as well (90 %) by a better-ranked candidate touching the same key (a composite
index over its prefix, a materialized view over a denormalization) is dropped.

Expressions PostgreSQL cannot index — text cast to ``date``/``timestamp``/``timestamptz`` is not
immutable — end an index's key list, and become a ``denormalize`` candidate instead: a typed
column filled by a trigger can be indexed (once the API filters on the column).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pglast import ast

from . import costmodel as cm
from .evidence import IndexStat, PatternEvidence, Sketch, TableSnapshot, merged_quantile
from .hypo import HypoValidator, PlanSummary, corrected_costs, explainable
from .sqlshape import IndexDefinition, KeyExpr, QueryShape, Relation, Usage

__all__ = [
    "Benefit",
    "Candidate",
    "PatternContext",
    "TableContext",
    "apply_filters",
    "evaluate_candidates",
    "finalize",
    "find_drop_candidates",
    "generate_candidates",
    "remove_redundant",
    "resolve_tables",
]

MV_MIN_P95_MS: Final = 500.0
MV_MIN_PER_DAY: Final = 100.0
DROP_SCANS_PER_30_DAYS: Final = 10.0
MIN_GAIN: Final = 1.1  # a pattern sped up less than this is not credited to a candidate
REDUNDANT_WITHIN: Final = 0.9
MAX_EQ_KEYS: Final = 3
# Rows a JSONB-filtering sequential scan reads per millisecond, measured here (NOTES.md: 400k rows
# in 184 ms): estimates a table's size from a pattern's latency when no statistics arrived.
SEQ_SCAN_ROWS_PER_MS: Final = 400_000 / 184.0
HYPOPG_SANITY_CAP: Final = 100_000.0
_NOT_SERVED = {Usage.PROJECTION, Usage.JOIN}


@dataclass(slots=True, eq=False)
class TableContext:
    """An application table as the analyzer knows it."""

    relation: Relation  # schema-qualified
    snapshot: TableSnapshot | None
    rows: float
    rows_source: str  # "statistics" | "estimated from latency"
    stats: dict[KeyExpr, tuple[float | None, float | None]]
    existing: tuple[IndexDefinition, ...]

    @property
    def schema(self) -> str:
        return self.relation.schema or "public"

    @property
    def name(self) -> str:
        return self.relation.name

    def width(self, key: KeyExpr) -> int:
        column = self.snapshot.column_stat(key) if self.snapshot else None
        return cm.key_width(key, column.avg_width if column else None)

    def btree_keys(self) -> list[tuple[IndexDefinition, tuple[KeyExpr, ...]]]:
        out = []
        for index in self.existing:
            if index.method != "btree" or index.partial:
                continue
            keys: list[KeyExpr] = []
            for key in index.keys:
                if key is None:
                    break
                keys.append(key)
            if keys:
                out.append((index, tuple(keys)))
        return out


@dataclass(slots=True, eq=False)
class PatternContext:
    evidence: PatternEvidence
    shape: QueryShape
    tables: dict[Relation, TableContext]  # the SQL's relation -> its table

    @property
    def fingerprint(self) -> str:
        return self.evidence.fingerprint

    def uses_on(self, table: TableContext) -> list[Any]:
        return [u for u in self.shape.uses
                if u.relation is not None and self.tables.get(u.relation) is table]


@dataclass(slots=True, eq=False)
class Benefit:
    """What one candidate would do for one pattern."""

    pattern: PatternContext
    fit: cm.IndexFit | None
    ratio: float = 1.0  # database work above the floor, before / after
    after_ms: float = 0.0  # projected mean
    p95_ms: float | None = None  # observed
    p95_after_ms: float | None = None  # projected
    speedup: float = 1.0  # p95 before / after (mean before / after when no p95 is known)
    method: str = "model"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def evidence(self) -> PatternEvidence:
        return self.pattern.evidence

    @property
    def time_saved_ms_per_day(self) -> float:
        return self.evidence.queries_per_day * max(0.0, self.evidence.mean_ms - self.after_ms)


@dataclass(slots=True, eq=False)
class Candidate:
    kind: str  # add_index | denormalize | materialize_view | drop_index
    table: TableContext
    keys: tuple[KeyExpr, ...] = ()
    method: str = "btree"
    opclass: str | None = None
    new_column: str | None = None
    new_type: str | None = None
    # denormalize: the expression whose values the new column holds, as filters and sorts use it
    # (cast to the column's type); the index on the column serves them like an index on it.
    filter_key: KeyExpr | None = None
    pattern: PatternContext | None = None  # materialize_view
    drop: IndexStat | None = None  # drop_index
    benefits: list[Benefit] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=lambda: {"method": "model"})
    storage_mb: float = 0.0
    notes: list[str] = field(default_factory=list)
    current_p95_ms: float | None = None  # of all its patterns' executions together
    projected_p95_ms: float | None = None

    @property
    def identity(self) -> tuple[Any, ...]:
        if self.kind == "materialize_view" and self.pattern is not None:
            return (self.kind, self.table.relation, self.pattern.fingerprint)
        if self.kind == "drop_index" and self.drop is not None:
            return (self.kind, self.table.relation, self.drop.name)
        return (self.kind, self.table.relation, self.keys, self.method)

    @property
    def queries_per_day(self) -> float:
        return math.fsum(b.evidence.queries_per_day for b in self.benefits)

    @property
    def speedup(self) -> float:
        """p95 of its patterns together before / after (time-weighted means without sketches)."""
        if self.current_p95_ms and self.projected_p95_ms:
            return self.current_p95_ms / self.projected_p95_ms
        before = math.fsum(b.evidence.queries_per_day * b.evidence.mean_ms for b in self.benefits)
        after = math.fsum(b.evidence.queries_per_day * b.after_ms for b in self.benefits)
        if before <= 0 or after <= 0:
            return 1.0
        return before / after

    @property
    def time_saved_ms_per_day(self) -> float:
        return math.fsum(b.time_saved_ms_per_day for b in self.benefits)

    def benefit_for(self, fingerprint: str) -> Benefit | None:
        for benefit in self.benefits:
            if benefit.pattern.fingerprint == fingerprint:
                return benefit
        return None

    def touched_keys(self) -> set[tuple[str, tuple[str | int, ...]]]:
        keys = set(self.keys)
        if self.pattern is not None:
            keys |= {u.key for u in self.pattern.shape.uses
                     if u.usage in (Usage.GROUP, Usage.AGGREGATE)}
        return {(k.column, k.path) for k in keys}


# --- tables ---------------------------------------------------------------------------------------


def _stats_map(snapshot: TableSnapshot | None) -> dict[KeyExpr, tuple[float | None, float | None]]:
    out: dict[KeyExpr, tuple[float | None, float | None]] = {}
    if snapshot is None:
        return out
    for column in snapshot.columns:
        if column.key is None:
            continue
        distinct = column.distinct_values(snapshot.row_estimate)
        stat = (column.null_frac, distinct)
        key = column.key.uncast()
        # Statistics describe the value a path holds, whichever operator spells it.
        for style in ("arrow", "hash", "func"):
            for as_text in (True, False):
                variant = KeyExpr(key.column, key.path, as_text if key.path else False,
                                  style if key.path else "arrow")
                out.setdefault(variant, stat)
                if variant.style == "func":
                    out.setdefault(KeyExpr(key.column, key.path, as_text, "func", None,
                                           "jsonb_extract_path_text" if as_text
                                           else "jsonb_extract_path"), stat)
    return out


def resolve_tables(patterns: Iterable[tuple[PatternEvidence, QueryShape]],
                   snapshots: Sequence[TableSnapshot]
                   ) -> tuple[list[PatternContext], list[TableContext]]:
    """Attach each relation a pattern reads to its table (one context per table).

    Returns the patterns' contexts and every table known: all tables with statistics (an unused
    index matters even on a table the workload never reads) and the tables patterns read that
    have none (their size estimated from the patterns' latency).
    """
    contexts: dict[Relation, TableContext] = {}
    by_name: dict[str, list[TableSnapshot]] = {}
    for snapshot in snapshots:
        by_name.setdefault(snapshot.table_name, []).append(snapshot)
        resolved = Relation(snapshot.schema_name, snapshot.table_name)
        contexts[resolved] = TableContext(
            resolved, snapshot, snapshot.row_estimate if snapshot.row_estimate > 0 else 1.0,
            "statistics" if snapshot.row_estimate > 0 else "statistics (empty table)",
            _stats_map(snapshot),
            tuple(i.parsed for i in snapshot.indexes if i.parsed is not None))

    def table_for(relation: Relation, evidence: PatternEvidence) -> TableContext:
        candidates = [s for s in by_name.get(relation.name, [])
                      if relation.schema is None or s.schema_name == relation.schema]
        if candidates:
            # An unqualified name resolves like a default search_path would: public first.
            candidates.sort(key=lambda s: (s.schema_name != "public", s.schema_name))
            return contexts[Relation(candidates[0].schema_name, candidates[0].table_name)]
        resolved = Relation(relation.schema or "public", relation.name)
        estimate = max(1.0, evidence.mean_db_ms * SEQ_SCAN_ROWS_PER_MS)
        context = contexts.get(resolved)
        if context is None:
            context = TableContext(resolved, None, estimate, "estimated from latency", {}, ())
            contexts[resolved] = context
        else:
            context.rows = max(context.rows, estimate)
        return context

    out = []
    for evidence, shape in patterns:
        tables = {relation: table_for(relation, evidence) for relation in shape.relations}
        out.append(PatternContext(evidence, shape, tables))
    return out, list(contexts.values())


# --- generation -------------------------------------------------------------------------------


def _selectivity_rank(table: TableContext, key: KeyExpr) -> float:
    stat = table.stats.get(key.uncast())
    if stat is None or not stat[1]:
        return 1.0  # unknown: after the keys the statistics call selective
    return (1.0 - (stat[0] or 0.0)) / max(stat[1], 1.0)


def _ideal_keys(uses: Sequence[Any], table: TableContext) -> tuple[KeyExpr, ...]:
    eq: list[KeyExpr] = []
    ranges: list[KeyExpr] = []
    sort: list[KeyExpr] = []
    for use in uses:
        if use.in_or:
            continue
        if use.usage == Usage.EQUALITY and use.key not in eq:
            eq.append(use.key)
        elif use.usage == Usage.RANGE and use.key not in ranges:
            ranges.append(use.key)
        elif use.usage == Usage.SORT and use.key not in sort:
            sort.append(use.key)
    eq.sort(key=lambda k: _selectivity_rank(table, k))
    keys = eq[:MAX_EQ_KEYS]
    sort_rest = [k for k in sort if k not in keys]
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
        fit = _fit(keys, uses, pattern, table)
        if fit is not None and (best is None or fit.visited_rows < best.visited_rows
                                or fit.at_least_as_good_as(best)):
            best = fit
    return best


def _fit(keys: Sequence[KeyExpr], uses: Sequence[Any], pattern: PatternContext,
         table: TableContext) -> cm.IndexFit | None:
    return cm.fit_index(keys, uses, pattern.shape.limit, table_rows=table.rows,
                        observed_rows=pattern.evidence.mean_rows, stats=table.stats)


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
                ideal = _fit(keys, uses, pattern, table)
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


def _json_exprs(uses: Iterable[Any]) -> int:
    return len({u.key.uncast() for u in uses if u.key.is_json_path and u.usage not in
                (Usage.PROJECTION,)})


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
                column_fit = _fit((candidate.filter_key,), uses, pattern, candidate.table)
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
            index_fit = _fit(candidate.keys, uses, pattern, candidate.table)
            if index_fit is None:
                continue
            existing = _best_existing_fit(candidate.table, uses, pattern)
            if existing is not None and existing.at_least_as_good_as(index_fit):
                continue
            candidate.benefits.append(Benefit(pattern, index_fit))


# --- drop_index ---------------------------------------------------------------------------------


def find_drop_candidates(tables: Sequence[TableContext], patterns: Sequence[PatternContext],
                         new_indexes: set[tuple[str, str, str]]) -> list[Candidate]:
    """Indexes unused over the window that serve no pattern (see the module docstring).

    ``new_indexes``: (schema, table, index) that appeared during the window — never dropped.
    """
    out: list[Candidate] = []
    for table in tables:
        snapshot = table.snapshot
        if snapshot is None:
            continue
        baseline = snapshot.baseline
        for index in snapshot.indexes:
            if index.is_primary or index.is_unique or (index.parsed and index.parsed.unique):
                continue
            if (snapshot.schema_name, snapshot.table_name, index.name) in new_indexes:
                continue
            if index.parsed is not None and _serves_workload(table, index.parsed, patterns):
                continue
            base = None
            if baseline is not None and baseline.taken_at < snapshot.taken_at:
                base = next((i for i in baseline.indexes if i.name == index.name), None)
                if base is None:
                    continue  # created during the window
            if base is not None and baseline is not None:
                span_days = (snapshot.taken_at - baseline.taken_at).total_seconds() / 86400.0
                delta = index.scans - base.scans
                if delta < 0:  # statistics were reset meanwhile
                    delta = index.scans
                if span_days < 1.0 and index.scans > 0:
                    continue
                allowed = DROP_SCANS_PER_30_DAYS * span_days / 30.0
                if delta >= max(allowed, 1.0):
                    continue
                why = (f"{delta} scan(s) in {span_days:.1f} days of statistics "
                       f"(threshold {max(allowed, 1.0):.1f})")
            else:
                if index.scans > 0:
                    continue
                why = "0 scans since the statistics were last reset (one snapshot in the window)"
            candidate = Candidate("drop_index", table, drop=index,
                                  keys=tuple(k for k in (index.parsed.keys if index.parsed else ())
                                             if k is not None),
                                  method=index.parsed.method if index.parsed else "btree")
            candidate.storage_mb = -index.size_bytes / 2**20
            candidate.notes.append(why)
            candidate.validation = {"method": "statistics", "scans": index.scans,
                                    "size_bytes": index.size_bytes}
            out.append(candidate)
    return out


def _serves_workload(table: TableContext, index: IndexDefinition,
                     patterns: Sequence[PatternContext]) -> bool:
    keys: list[KeyExpr] = []
    for key in index.keys:
        if key is None:
            break
        keys.append(key)
    if not keys:
        return False
    for pattern in patterns:
        if table not in pattern.tables.values():
            continue
        uses = pattern.uses_on(table)
        if index.method == "gin":
            if any(u.usage == Usage.CONTAINMENT and u.key == keys[0] for u in uses):
                return True
        elif _fit(keys, uses, pattern, table) is not None:
            return True
    return False


# --- evaluation ---------------------------------------------------------------------------------


def _cap(candidate: Candidate) -> float:
    aggregate = candidate.kind == "materialize_view" or (
        candidate.kind == "denormalize" and candidate.filter_key is None)
    return cm.AGGREGATE_CAP if aggregate else cm.FILTER_CAP


def _apply(benefit: Benefit, ratio: float, floor: cm.Floor, cap: float | None) -> None:
    evidence = benefit.evidence
    mean_after, p95_after = cm.project(evidence.mean_ms, evidence.mean_db_ms, benefit.p95_ms,
                                       ratio, floor)
    if benefit.p95_ms and p95_after:
        speedup = benefit.p95_ms / p95_after
    else:
        speedup = evidence.mean_ms / mean_after if mean_after > 0 else 1.0
    if cap is not None and speedup > cap:
        # The model's caps: no claim beyond 100× (filters) or 50× (aggregates).
        speedup = cap
        mean_after = max(mean_after, evidence.mean_ms / cap)
        if benefit.p95_ms:
            p95_after = benefit.p95_ms / cap
    benefit.ratio = ratio
    benefit.after_ms = mean_after
    benefit.p95_after_ms = p95_after
    benefit.speedup = speedup


def _model(candidate: Candidate, benefit: Benefit, floor: cm.Floor) -> None:
    table = candidate.table
    uses = benefit.pattern.uses_on(table)
    json_exprs = _json_exprs(uses)
    json_ms = cm.calibrated_json_ms(benefit.evidence.mean_db_ms, floor, table.rows, json_exprs)
    if candidate.kind == "denormalize" and benefit.fit is not None:
        # A filter or sort served by an index on the new column (once the query reads it).
        before, after = cm.model_index_costs(benefit.fit, uses, json_ms=json_ms)
    elif candidate.kind == "denormalize":
        before, after = cm.model_aggregate_costs(table.rows, max(1, json_exprs), removed_json=1,
                                                 json_ms=json_ms)
    elif candidate.kind == "materialize_view":
        before, after = cm.model_aggregate_costs(table.rows, max(1, json_exprs), removed_json=0,
                                                 output_rows=benefit.evidence.mean_rows,
                                                 json_ms=json_ms)
    elif candidate.method == "gin":
        assert benefit.fit is not None
        before = table.rows * max(json_ms, cm.COLUMN_MS_PER_ROW)
        after = (cm.INDEX_LOOKUP_MS * math.log2(max(table.rows, 2.0))
                 + benefit.fit.visited_rows * cm.COLUMN_MS_PER_ROW)
    else:
        assert benefit.fit is not None
        before, after = cm.model_index_costs(benefit.fit, uses, json_ms=json_ms)
    ratio = before / after if after > 0 else 1.0
    benefit.method = "model"
    benefit.details = {"model_cost_before_ms": round(before, 4),
                       "model_cost_after_ms": round(after, 6),
                       "jsonb_ms_per_row": round(json_ms, 8)}
    _apply(benefit, ratio, floor, _cap(candidate))


def _create_index(candidate: Candidate) -> Any:
    from psycopg import sql  # noqa: PLC0415

    elements = sql.SQL(", ").join(k.composable() for k in candidate.keys)
    return sql.SQL("CREATE INDEX ON {} USING btree ({})").format(
        sql.Identifier(candidate.table.schema, candidate.table.name), elements)


def _hypopg(candidate: Candidate, validator: HypoValidator, floor: cm.Floor,
            before_plans: dict[str, PlanSummary | str]) -> None:
    for benefit in candidate.benefits:
        fingerprint = benefit.pattern.fingerprint
        if fingerprint not in before_plans:
            before_plans[fingerprint] = validator.plan(benefit.pattern.shape)
    kept: list[Benefit] = []
    unused: list[str] = []
    statement = _create_index(candidate)
    with validator.hypothetical(statement) as index:
        if isinstance(index, str):
            candidate.notes.append(index)
            for benefit in candidate.benefits:
                _model(candidate, benefit, floor)
            candidate.validation = {"method": "model", "hypopg_error": index}
            return
        size_mb = index.size_bytes / 2**20
        for benefit in candidate.benefits:
            before = before_plans[benefit.pattern.fingerprint]
            after = validator.plan(benefit.pattern.shape)
            if isinstance(before, str) or isinstance(after, str):
                _model(candidate, benefit, floor)
                benefit.details["hypopg_skipped"] = before if isinstance(before, str) else after
                kept.append(benefit)
                continue
            assert benefit.fit is not None
            corrected = corrected_costs(before, after, index.name,
                                        visited_rows=benefit.fit.visited_rows)
            if corrected is None:
                unused.append(benefit.evidence.query_name or benefit.pattern.fingerprint)
                continue
            ratio = min(corrected[0] / corrected[1], HYPOPG_SANITY_CAP)
            benefit.method = "hypopg"
            benefit.details = {
                "cost_before": round(before.total_cost, 2),
                "cost_after": round(after.total_cost, 2),
                "corrected_cost_before": round(corrected[0], 2),
                "corrected_cost_after": round(corrected[1], 2),
                "planner_rows": (after.index_node(index.name) or {}).get("Plan Rows"),
                "visited_rows": round(benefit.fit.visited_rows, 2),
                "index_used": True,
            }
            _apply(benefit, ratio, floor, None)
            kept.append(benefit)
    candidate.benefits = kept
    if unused:
        candidate.notes.append("the planner did not use the index for: " + ", ".join(unused))
    hypo = [b for b in kept if b.method == "hypopg"]
    if hypo:
        top = max(hypo, key=lambda b: b.evidence.queries_per_day)
        candidate.validation = {
            "method": "hypopg",
            "cost_before": top.details["cost_before"],
            "cost_after": top.details["cost_after"],
            "corrected_cost_before": top.details["corrected_cost_before"],
            "corrected_cost_after": top.details["corrected_cost_after"],
            "index_size_bytes": index.size_bytes,
            "patterns": {b.pattern.fingerprint: {"method": b.method, **b.details} for b in kept},
        }
        candidate.storage_mb = size_mb
        if unused:
            candidate.validation["index_unused_for"] = unused
    else:
        candidate.validation = {"method": "model"}
        if unused:
            candidate.validation["hypopg_index_unused_for"] = unused


def _model_storage(candidate: Candidate) -> float:
    table = candidate.table
    if candidate.kind == "materialize_view" and candidate.pattern is not None:
        rows = max((b.evidence.mean_rows for b in candidate.benefits), default=1.0)
        width = sum(table.width(u.key) for u in candidate.pattern.shape.uses
                    if u.usage in (Usage.GROUP, Usage.AGGREGATE)) or 16
        return cm.storage_mb(rows, width + 8)
    if candidate.method == "gin":
        return cm.storage_mb(table.rows, 32)
    return cm.storage_mb(table.rows, sum(table.width(k) for k in candidate.keys))


def finalize(candidate: Candidate, sketches: dict[str, Sketch]) -> None:
    """The candidate's p95 over all its patterns' executions, before and after."""
    parts = [(sketches[b.pattern.fingerprint], b.speedup) for b in candidate.benefits
             if b.pattern.fingerprint in sketches]
    candidate.current_p95_ms = merged_quantile([(sk, 1.0) for sk, _ in parts], 0.95)
    candidate.projected_p95_ms = merged_quantile(parts, 0.95)


def evaluate_candidates(
    candidates: Sequence[Candidate],
    *,
    floor: cm.Floor,
    sketches: dict[str, Sketch],
    validator: HypoValidator | None = None,
) -> list[Candidate]:
    """Estimate every (candidate, pattern) speedup; drop what does not qualify at all."""
    before_plans: dict[str, PlanSummary | str] = {}
    out: list[Candidate] = []
    for candidate in candidates:
        for benefit in candidate.benefits:
            sketch = sketches.get(benefit.pattern.fingerprint)
            benefit.p95_ms = sketch.quantile(0.95) if sketch else None
        if candidate.kind == "materialize_view":
            benefit = candidate.benefits[0]
            if benefit.p95_ms is None or benefit.p95_ms <= MV_MIN_P95_MS or \
                    benefit.evidence.queries_per_day <= MV_MIN_PER_DAY:
                continue
        candidate.storage_mb = _model_storage(candidate)
        hypopg_able = (validator is not None and candidate.kind == "add_index"
                       and candidate.method == "btree")
        if hypopg_able:
            assert validator is not None
            _hypopg(candidate, validator, floor, before_plans)
        else:
            for benefit in candidate.benefits:
                _model(candidate, benefit, floor)
            candidate.validation = {"method": "model"}
            if validator is not None:
                candidate.validation["hypopg_not_applicable"] = (
                    "HypoPG has no hypothetical GIN indexes" if candidate.method == "gin"
                    else "HypoPG cannot create hypothetical columns or views")
        candidate.benefits = [b for b in candidate.benefits if b.speedup >= MIN_GAIN]
        if candidate.benefits:
            finalize(candidate, sketches)
            out.append(candidate)
    return out


def apply_filters(candidates: Sequence[Candidate], *, min_frequency: float, min_speedup: float,
                  min_selectivity: float, sketches: dict[str, Sketch]) -> list[Candidate]:
    out = []
    for candidate in candidates:
        if candidate.kind == "drop_index":
            out.append(candidate)
            continue
        if candidate.kind == "add_index":
            kept = [b for b in candidate.benefits
                    if b.fit is None or b.fit.selectivity >= min_selectivity]
            if len(kept) != len(candidate.benefits):
                candidate.benefits = kept
                finalize(candidate, sketches)
        if not candidate.benefits:
            continue
        if candidate.queries_per_day < min_frequency or candidate.speedup < min_speedup:
            continue
        out.append(candidate)
    return out


def remove_redundant(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Drop candidates every pattern of which a better-ranked one on the same key serves as well."""
    # Ties (the model caps speedups) go to the change that costs less storage.
    ranked = sorted(candidates, key=lambda c: (-c.time_saved_ms_per_day, c.storage_mb))
    kept: list[Candidate] = []
    for candidate in ranked:
        if candidate.kind == "drop_index":
            kept.append(candidate)
            continue
        mine = candidate.touched_keys()
        redundant = False
        for better in kept:
            if better.kind == "drop_index" or better.table is not candidate.table:
                continue
            if not (mine & better.touched_keys()):
                continue
            covered = True
            for benefit in candidate.benefits:
                other = better.benefit_for(benefit.pattern.fingerprint)
                if other is None or other.speedup < REDUNDANT_WITHIN * benefit.speedup:
                    covered = False
                    break
            if covered:
                redundant = True
                break
        if not redundant:
            kept.append(candidate)
    return kept


def describe_keys(keys: Sequence[KeyExpr]) -> str:
    return ", ".join(k.display() for k in keys)
