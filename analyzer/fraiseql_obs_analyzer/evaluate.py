"""What each candidate would save, which candidates qualify, and which are redundant.

Evaluation: per (candidate, pattern) a database work ratio — the calibrated cost model, or HypoPG's
planner costs corrected with the observed rows (:mod:`fraiseql_obs_analyzer.hypo`; a pattern the
validation server cannot plan, even through its inner query, is priced by the model, and
``validation`` says which and why: ``planned``, ``planned_because``, ``planned_without_limit``,
``hypopg_skipped``) — turned into a
projected mean and p95 by :func:`fraiseql_obs_analyzer.costmodel.project`. A candidate's estimated
speedup is the p95 of all its patterns' executions together before / after (each pattern's values
divided by its own speedup), so a frequent fast pattern cannot hide a slow one; its time saved per
day (the ranking) sums queries/day × (mean before − mean after). A ``materialize_view`` qualifies
only for an aggregate that is frequent (> 100/day) and slow (p95 > 500 ms).

Then filters (:func:`apply_filters`: min_frequency on queries/day, min_speedup, min_selectivity
per pattern) and redundancy (:func:`remove_redundant`): a candidate whose every pattern is served
at least as well (90 %) by a better-ranked candidate touching the same key (a composite index over
its prefix, a materialized view over a denormalization) is dropped.

Selectivity (``min_selectivity``): the fraction of a table's rows an index lets a query skip,
1 − rows read through the index / table rows; an ``add_index`` is not credited with the patterns
it would leave reading most of the table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Final

from . import costmodel as cm
from .context import Benefit, Candidate
from .evidence import Sketch, merged_quantile
from .hypo import HypoValidator, PlanSummary, corrected_costs
from .shape import Usage

__all__ = [
    "HYPOPG_SANITY_CAP",
    "MIN_GAIN",
    "MV_MIN_P95_MS",
    "MV_MIN_PER_DAY",
    "REDUNDANT_WITHIN",
    "apply_filters",
    "evaluate_candidates",
    "finalize",
    "remove_redundant",
]

MV_MIN_P95_MS: Final = 500.0
MV_MIN_PER_DAY: Final = 100.0
MIN_GAIN: Final = 1.1  # a pattern sped up less than this is not credited to a candidate
REDUNDANT_WITHIN: Final = 0.9
HYPOPG_SANITY_CAP: Final = 100_000.0


def _json_exprs(uses: Iterable[Any]) -> int:
    return len({u.key.uncast() for u in uses if u.key.is_json_path and u.usage not in
                (Usage.PROJECTION,)})


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


def _limit_cannot_stop_early(benefit: Benefit, before: PlanSummary | str) -> bool:
    """Whether the generic plan's early stop at the LIMIT is impossible for this pattern.

    With no argument values the planner guesses a parameter LIMIT keeps 10 % of the rows it
    expects, and for an expression without statistics (a hypothetical index has none) it
    expects 0.5 % of the table: so walking an index in ORDER BY order looks like it stops after
    a small part of the table — FraiseQL 2.x's "ORDER BY id … LIMIT $n" on the primary key.
    When the statistics say the filter matches fewer rows than that guess, the walk never
    collects that many: it reads the whole table, whatever order it goes in. Then the plans to
    compare are those without the LIMIT.
    """
    fit = benefit.fit
    return (isinstance(before, PlanSummary) and before.limit_rows is not None
            and benefit.pattern.shape.limit.kind != "none" and fit is not None
            and fit.matched_rows is not None and fit.matched_rows < before.limit_rows)


def _unbounded_key(fingerprint: str) -> str:
    return fingerprint + "\x1funbounded"


def _hypopg(candidate: Candidate, validator: HypoValidator, floor: cm.Floor,
            before_plans: dict[str, PlanSummary | str]) -> None:
    for benefit in candidate.benefits:
        fingerprint = benefit.pattern.fingerprint
        if fingerprint not in before_plans:
            before_plans[fingerprint] = validator.plan(benefit.pattern.shape)
        if (_limit_cannot_stop_early(benefit, before_plans[fingerprint])
                and _unbounded_key(fingerprint) not in before_plans):
            before_plans[_unbounded_key(fingerprint)] = validator.plan(benefit.pattern.shape,
                                                                       unbounded=True)
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
            skipped = (before if isinstance(before, str) else after if isinstance(after, str)
                       else None if before.planned == after.planned
                       else "the planner took the statement once and its inner query once")
            if skipped is not None:
                # Never fails the run: the model prices what the planner could not.
                _model(candidate, benefit, floor)
                benefit.details["hypopg_skipped"] = skipped
                kept.append(benefit)
                continue
            assert isinstance(before, PlanSummary) and isinstance(after, PlanSummary)
            assert benefit.fit is not None
            corrected = corrected_costs(before, after, index.name,
                                        visited_rows=benefit.fit.visited_rows)
            without_limit = None
            if corrected is None:
                plans = _unbounded(benefit, validator, before_plans, index.name)
                if plans is not None:
                    without_limit = (
                        f"the generic plan expected the LIMIT to stop a scan after "
                        f"{before.limit_rows or 0:.3g} rows; the statistics say "
                        f"~{benefit.fit.matched_rows or 0:.3g} rows match: planned without the "
                        "LIMIT")
                    before, after, corrected = plans
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
                "planned": before.planned,
            }
            if before.fallback_reason:
                benefit.details["planned_because"] = before.fallback_reason
            if without_limit:
                benefit.details["planned_without_limit"] = without_limit
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
            # "statement", or "inner query" when the server could not plan the statement itself
            # (FraiseQL 2.x's JSON_OBJECT on PostgreSQL < 16): the query that filters was planned.
            "planned": top.details["planned"],
            "patterns": {b.pattern.fingerprint: {"method": b.method, **b.details} for b in kept},
        }
        for note in ("planned_because", "planned_without_limit"):
            if note in top.details:
                candidate.validation[note] = top.details[note]
        candidate.storage_mb = size_mb
        if unused:
            candidate.validation["index_unused_for"] = unused
    else:
        candidate.validation = {"method": "model"}
        if unused:
            candidate.validation["hypopg_index_unused_for"] = unused
    not_planned = {b.evidence.query_name or b.pattern.fingerprint: b.details["hypopg_skipped"]
                   for b in kept if "hypopg_skipped" in b.details}
    if not_planned:
        # Which patterns the model priced because the planner could not plan them, and why.
        candidate.validation["hypopg_skipped"] = not_planned


def _unbounded(benefit: Benefit, validator: HypoValidator,
               before_plans: dict[str, PlanSummary | str], index_name: str
               ) -> tuple[PlanSummary, PlanSummary, tuple[float, float]] | None:
    """Before and after plans without the LIMIT, and their corrected costs, when they apply."""
    before = before_plans.get(_unbounded_key(benefit.pattern.fingerprint))
    if not isinstance(before, PlanSummary) or benefit.fit is None:
        return None
    after = validator.plan(benefit.pattern.shape, unbounded=True)
    if not isinstance(after, PlanSummary) or after.planned != before.planned:
        return None
    corrected = corrected_costs(before, after, index_name, visited_rows=benefit.fit.visited_rows)
    return None if corrected is None else (before, after, corrected)


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
