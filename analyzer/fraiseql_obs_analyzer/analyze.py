"""One analysis (``fraiseql-cli analyze``): evidence → candidates → validated, ranked suggestions.

:func:`run_analysis` reads the metrics database (read-only, as ``fraiseql_analyst``), and — only
with ``validate_with`` — plans the workload's queries on a database with the application's schema
and statistics using HypoPG (nothing is written there). The result is an :class:`Analysis` that
:mod:`fraiseql_obs_analyzer.report` renders as JSON, SQL or text.

Ranking and priority both come from the time saved per day (queries/day × (mean before − mean
after)), the priority as a share of the workload's database time, capped at medium while the
window holds less than about an hour of data (:mod:`fraiseql_obs_analyzer.priority`); ``impact``
keeps SPEC §5's queries/day and estimated speedup.
"""

from __future__ import annotations

import hashlib
import logging
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from pglast import ast

from fraiseql_observability.config import window_to_seconds
from fraiseql_observability.db import connect, describe_error
from fraiseql_observability.secrets import mask_url

from . import costmodel as cm
from . import sqlgen
from .candidates import generate_candidates
from .context import Candidate, PatternContext, TableContext, resolve_tables
from .drops import find_drop_candidates
from .errors import AnalyzerUnavailable, UnsupportedSql
from .evaluate import apply_filters, evaluate_candidates, remove_redundant
from .evidence import (
    ObjectHistory,
    PatternEvidence,
    Sketch,
    WorkloadEvidence,
    load_object_history,
    load_pattern_totals,
    load_sketches,
    load_table_snapshots,
)
from .hypo import HypoValidator
from .parse import parse_index_definition, parse_query_shape
from .priority import DataCoverage, assign_priorities, rank
from .records import (
    Analysis,
    AppliedChange,
    Impact,
    PatternImpact,
    PatternRef,
    Suggestion,
)
from .report import fmt_num
from .shape import KeyExpr, QueryShape, Usage, describe_keys

__all__ = ["AnalyzeOptions", "floor_patterns", "run_analysis", "suggestion_id", "workload_floor"]

log = logging.getLogger(__name__)

MIN_FLOOR_COUNT: Final = 20.0  # weighted executions a pattern needs to set the floor
FLOOR_PATTERNS: Final = 5


@dataclass(frozen=True, slots=True)
class AnalyzeOptions:
    window: str = "7d"
    end: datetime | None = None
    min_frequency: float = 1000.0
    min_speedup: float = 5.0
    min_selectivity: float = 0.1
    types: frozenset[str] | None = None
    table: str | None = None
    validate_with: str | None = None
    statement_timeout_secs: float = 300.0
    connect_timeout_secs: float = 10.0


def suggestion_id(kind: str, schema: str, table: str, keys: Sequence[str], extra: str = "") -> str:
    """Stable across runs: the same change on the same table always has the same id."""
    text = "\x1f".join([kind, schema, table, *keys, extra])
    return "sug-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def floor_patterns(patterns: Iterable[PatternEvidence]) -> list[PatternEvidence]:
    """The workload's fastest healthy patterns (least mean database time), at most five."""
    healthy = [p for p in patterns
               if p.count >= MIN_FLOOR_COUNT and p.errors < 0.5 * p.count
               and 0 < p.mean_db_ms <= cm.MAX_FLOOR_MS]
    return sorted(healthy, key=lambda p: p.mean_db_ms)[:FLOOR_PATTERNS]


def workload_floor(fastest: Sequence[PatternEvidence], sketches: dict[str, Sketch]) -> cm.Floor:
    """What any query of this workload costs at least (see :mod:`fraiseql_obs_analyzer.costmodel`)."""
    if not fastest:
        return cm.Floor()  # no fast pattern to learn from: the defaults
    db = min(max(fastest[0].mean_db_ms, cm.MIN_FLOOR_MS), cm.DEFAULT_FLOOR_MS)
    p95s = [q for q in (sketches[p.fingerprint].quantile(0.95) for p in fastest
                        if p.fingerprint in sketches) if q is not None]
    # The median of the fastest patterns' p95, not the least: one lucky pattern's tail would
    # promise more than a new index delivers on the same busy host.
    p95 = max(statistics.median(p95s), db) if p95s else max(db, cm.DEFAULT_FLOOR_P95_MS)
    return cm.Floor(db_ms=db, p95_ms=p95)


def _connect(url: str, options: AnalyzeOptions) -> psycopg.Connection[tuple[Any, ...]]:
    return connect(
        url, application_name="fraiseql-analyze", read_only=True,
        statement_timeout=options.statement_timeout_secs,
        connect_timeout=options.connect_timeout_secs,
        # jit: compiling the sketch-merge query costs more than it saves (measured: 5.6 s instead
        # of 10 s over 14 days of hourly cells); memoize never hits on sketch arrays.
        settings={"work_mem": "64MB", "jit": "off", "enable_memoize": "off"},
        error=AnalyzerUnavailable, what="the metrics database")


def _shapes(evidence: WorkloadEvidence, notes: list[str]) -> list[tuple[PatternEvidence,
                                                                         QueryShape]]:
    cache: dict[str, QueryShape | None] = {}
    out = []
    unparsed = 0
    for pattern in evidence.patterns.values():
        if not pattern.sql:
            continue
        if pattern.sql not in cache:
            try:
                cache[pattern.sql] = parse_query_shape(pattern.sql)
            except UnsupportedSql:
                cache[pattern.sql] = None
        shape = cache[pattern.sql]
        if shape is None:
            unparsed += 1
            continue
        out.append((pattern, shape))
    if unparsed:
        notes.append(f"{unparsed} pattern(s) whose SQL does not parse were skipped")
    return out


def _usage_words(candidate: Candidate, pattern: PatternContext) -> str:
    uses = pattern.uses_on(candidate.table)
    wanted = {(k.column, k.path) for k in candidate.keys}
    words = sorted({u.usage.value for u in uses if (u.key.column, u.key.path) in wanted
                    and u.usage not in (Usage.PROJECTION,)})
    return "/".join(words) or "reads"


def _evidence_lines(candidate: Candidate, sketches: dict[str, Sketch]) -> list[str]:
    lines = []
    table = candidate.table
    rows = f"{table.rows:,.0f} rows ({table.rows_source})"
    lines.append(f"table {table.relation}: {rows}")
    for key in candidate.keys:
        stat = table.snapshot.column_stat(key) if table.snapshot else None
        if stat is not None:
            distinct = stat.distinct_values(table.rows)
            lines.append(f"  {key.display()}: n_distinct {fmt_num(distinct)}, null_frac "
                         f"{fmt_num(stat.null_frac)}, avg_width {stat.avg_width or '-'}")
    for benefit in sorted(candidate.benefits, key=lambda b: -b.evidence.queries_per_day):
        evidence = benefit.evidence
        sketch = sketches.get(evidence.fingerprint)
        p50, p95, p99 = ((sketch.quantile(0.5), sketch.quantile(0.95), sketch.quantile(0.99))
                         if sketch else (None, None, None))
        line = (f"{evidence.query_name or '?'} ({evidence.fingerprint}): "
                f"{fmt_num(evidence.queries_per_day)}/day, p50 {fmt_num(p50, ' ms')}, "
                f"p95 {fmt_num(p95, ' ms')}, p99 {fmt_num(p99, ' ms')}, "
                f"{fmt_num(evidence.mean_rows)} rows/query; {_usage_words(candidate, benefit.pattern)}"
                f" -> {fmt_num(benefit.speedup)}x ({benefit.method}")
        if benefit.method == "hypopg":
            d = benefit.details
            line += (f": planner cost {d['cost_before']} -> {d['cost_after']}, corrected "
                     f"{d['corrected_cost_before']} -> {d['corrected_cost_after']}")
        if benefit.fit is not None and candidate.kind == "add_index":
            line += f"; reads ~{fmt_num(benefit.fit.visited_rows)} rows"
        lines.append(line + ")")
    lines += candidate.notes
    return lines


def _reason(candidate: Candidate, patterns: Sequence[PatternRef], p95: float | None) -> str:
    table = candidate.table.relation
    count = len(patterns)
    per_day = fmt_num(sum(p.queries_per_day for p in patterns))
    tail = f"{count} pattern(s), {per_day} queries/day, p95 {fmt_num(p95, ' ms')}"
    if candidate.kind == "drop_index" and candidate.drop is not None:
        return (f"index {candidate.drop.name} on {table} is unused "
                f"({'; '.join(candidate.notes)}) and serves no query of the workload; dropping it "
                f"frees {fmt_num(-candidate.storage_mb, ' MB')} and speeds up writes")
    keys = describe_keys(candidate.keys)
    if candidate.kind == "denormalize" and candidate.filter_key is not None:
        return (f"{table} is filtered or sorted on {candidate.filter_key.display()} ({tail}); "
                f"PostgreSQL cannot index that cast (its result depends on session settings), "
                f"but a typed column {candidate.new_column} ({candidate.new_type}) kept in sync by "
                "a trigger can be indexed once the API filters on it")
    if candidate.kind == "denormalize":
        return (f"{keys} is extracted from JSONB on every row to group or aggregate {table} "
                f"({tail}); a typed column {candidate.new_column} ({candidate.new_type}) makes "
                "that a column read and can be indexed")
    if candidate.kind == "materialize_view":
        return (f"an aggregate over {table} without parameters runs often and slowly ({tail}); "
                "a materialized view serves it precomputed")
    if candidate.method == "gin":
        return (f"JSONB containment on {table}.{keys} ({tail}) scans the table; a GIN index "
                "answers it from the index")
    return (f"{table} is filtered or sorted on {keys} without a usable index ({tail}); a btree "
            "index lets PostgreSQL read only the matching rows")


def _mv_columns(pattern: PatternContext) -> tuple[list[str], list[str]]:
    """Output column names of the view, and those forming a unique key (the GROUP BY keys)."""
    group_keys = {u.key for u in pattern.shape.uses if u.usage == Usage.GROUP}
    names: list[str] = []
    unique: list[str] = []
    covered: set[KeyExpr] = set()
    for position, (alias, key, aggregate) in enumerate(pattern.shape.targets, start=1):
        base = alias or (str(key.path[-1]) if key is not None and key.path
                         else key.column if key is not None else f"col{position}")
        name = sqlgen.object_name(base, suffix="").rstrip("_")[:40] or f"col{position}"
        while name in names:
            name = f"{name}_{position}"
        names.append(name)
        if key is not None and not aggregate and key in group_keys and key not in covered:
            covered.add(key)
            unique.append(name)
    if covered != group_keys:
        unique = []  # a GROUP BY key is not in the output: rows have no identity to refresh by
    return names, unique


def _sql(candidate: Candidate, sid: str, header: list[str], taken: set[str]) -> str:
    table = candidate.table
    schema, name = table.schema, table.name
    if candidate.kind == "drop_index" and candidate.drop is not None:
        recreate = None
        try:
            parsed = parse_index_definition(candidate.drop.definition)
            recreate = parsed.tree
        except UnsupportedSql:
            pass
        return sqlgen.drop_index_sql(schema, candidate.drop.name, recreate, header=header)
    parts = [str(p) for k in candidate.keys for p in (k.path or (k.column,))]
    if candidate.kind == "denormalize":
        key = candidate.keys[0]
        assert candidate.new_column and candidate.new_type
        index_name = sqlgen.object_name(name, candidate.new_column, suffix="idx", taken=taken)
        sync = sqlgen.object_name(name, candidate.new_column, suffix="sync", taken=taken)
        taken |= {index_name, sync}
        return sqlgen.denormalize_sql(schema, name, key, candidate.new_column, candidate.new_type,
                                      index_name=index_name, function_name=sync,
                                      trigger_name=sync, json_column=key.column, header=header)
    if candidate.kind == "materialize_view":
        assert candidate.pattern is not None
        tree = candidate.pattern.shape.tree
        assert isinstance(tree, ast.SelectStmt)
        columns, unique = _mv_columns(candidate.pattern)
        view = sqlgen.object_name("mv", name, candidate.pattern.evidence.query_name or sid,
                                  suffix=candidate.pattern.fingerprint[:8], taken=taken)
        index_name = sqlgen.object_name(view, suffix="key", taken=taken)
        taken |= {view, index_name}
        return sqlgen.materialize_view_sql(schema, view, tree, columns, unique,
                                           index_name=index_name, header=header)
    suffix = "gin" if candidate.method == "gin" else "idx"
    index_name = sqlgen.object_name(name, *parts, suffix=suffix, taken=taken)
    taken.add(index_name)
    return sqlgen.add_index_sql(schema, name, candidate.keys, index_name, header=header,
                                method=candidate.method, opclass=candidate.opclass)


def _build(candidate: Candidate, priority: str, sketches: dict[str, Sketch],
           taken: set[str]) -> Suggestion:
    table = candidate.table
    keys_text = [k.render() for k in candidate.keys]  # canonical: part of the stable id
    extra = candidate.method if candidate.kind == "add_index" else ""
    if candidate.kind == "materialize_view" and candidate.pattern is not None:
        extra = candidate.pattern.fingerprint
    if candidate.kind == "drop_index" and candidate.drop is not None:
        extra = candidate.drop.name
    sid = suggestion_id(candidate.kind, table.schema, table.name, keys_text, extra)
    benefits = sorted(candidate.benefits, key=lambda b: -b.evidence.queries_per_day)
    refs = tuple(
        PatternRef(
            fingerprint=b.pattern.fingerprint,
            query_name=b.evidence.query_name,
            queries_per_day=b.evidence.queries_per_day,
            current_p95_ms=b.p95_ms,
            estimated_speedup=b.speedup,
        ) for b in benefits)
    current = candidate.current_p95_ms
    projected = candidate.projected_p95_ms
    speedup = candidate.speedup if candidate.benefits else 1.0
    qpd = candidate.queries_per_day
    json_key = next((k for k in candidate.keys if k.is_json_path), None)
    json_column = json_key.column if json_key else (
        candidate.keys[0].column if candidate.method == "gin" and candidate.keys else None)
    columns = tuple(k.display() for k in candidate.keys)
    if candidate.kind == "materialize_view" and candidate.pattern is not None:
        columns = tuple(dict.fromkeys(u.key.display() for u in candidate.pattern.shape.uses
                                      if u.usage == Usage.GROUP))
        json_key = next((u.key for u in candidate.pattern.shape.uses
                         if u.usage == Usage.GROUP and u.key.is_json_path), None)
        json_column = json_key.column if json_key else None
    method = candidate.validation.get("method", "model")
    header = [
        f"Suggestion {sid} [{priority}]: {candidate.kind} on {table.relation}"
        + (f" ({', '.join(columns)})" if columns else ""),
        f"{len(refs)} pattern(s), {fmt_num(qpd)} queries/day; estimated speedup {fmt_num(speedup)}x "
        f"({method}); p95 {fmt_num(current, ' ms')} -> {fmt_num(projected, ' ms')}"
        f"; storage {fmt_num(candidate.storage_mb, ' MB')}",
    ]
    if refs:
        header.append("Patterns: " + ", ".join(f"{r.query_name or '?'} ({r.fingerprint})"
                                               for r in refs[:10]))
    reason = _reason(candidate, refs, current)
    return Suggestion(
        id=sid,
        type=candidate.kind,
        priority=priority,
        schema=table.schema,
        table=table.name,
        json_column=json_column,
        path=json_key.path_text if json_key else None,
        columns=columns,
        new_column=candidate.new_column,
        new_type=candidate.new_type,
        reason=reason,
        patterns=refs,
        impact=Impact(
            queries_per_day=qpd,
            estimated_speedup=speedup,
            current_p95_ms=current,
            projected_p95_ms=projected if candidate.benefits else current,
            storage_mb=candidate.storage_mb,
        ),
        validation=candidate.validation,
        sql=_sql(candidate, sid, header, taken),
        time_saved_ms_per_day=candidate.time_saved_ms_per_day,
        evidence=tuple(_evidence_lines(candidate, sketches)),
    )


def _matches_table(suggestion: Suggestion, wanted: str) -> bool:
    return wanted in (suggestion.table, f"{suggestion.schema}.{suggestion.table}")


# --- impact tracking -------------------------------------------------------------------------


def _applied_changes(conn: psycopg.Connection[tuple[Any, ...]], history: Sequence[ObjectHistory],
                     contexts: Sequence[PatternContext], all_tables: Sequence[TableContext],
                     evidence: WorkloadEvidence) -> list[AppliedChange]:
    tables = {(table.schema, table.name): table for table in all_tables}
    stored = _stored_denormalizations(conn)
    changes: list[tuple[ObjectHistory, list[PatternContext], str | None]] = []
    for item in history:
        found = tables.get((item.schema_name, item.table_name))
        if found is None:
            continue
        table = found
        affected: list[PatternContext] = []
        sid: str | None = None
        if item.kind == "index":
            try:
                index = parse_index_definition(item.definition)
            except UnsupportedSql:
                continue
            keys = [k for k in index.keys if k is not None]
            if not keys or index.unique:
                continue
            for context in contexts:
                if table in context.tables.values():
                    uses = context.uses_on(table)
                    if index.method == "gin":
                        if any(u.usage == Usage.CONTAINMENT and u.key == keys[0] for u in uses):
                            affected.append(context)
                    elif cm.fit_index(keys, uses, context.shape.limit, table_rows=table.rows,
                                      observed_rows=context.evidence.mean_rows) is not None:
                        affected.append(context)
            sid = suggestion_id("add_index", table.schema, table.name,
                                [k.render() for k in keys], index.method)
        else:
            mapping = stored.get((item.schema_name, item.table_name, item.name))
            if mapping is None:
                continue
            sid, fingerprints = mapping
            affected = [c for c in contexts
                        if c.fingerprint in fingerprints or any(
                            u.key == KeyExpr(item.name) for u in c.shape.uses
                            if u.relation is not None and c.tables.get(u.relation) is table)]
        if affected:
            changes.append((item, affected, sid))
    out: list[AppliedChange] = []
    for item, affected, sid in changes:
        wanted = [c.fingerprint for c in affected]
        boundary_before = item.previous_snapshot or evidence.start
        before = load_sketches(conn, evidence.start, boundary_before + timedelta(microseconds=1), wanted) \
            if boundary_before > evidence.start else {}
        after = load_sketches(conn, item.first_seen, evidence.end, wanted) \
            if item.first_seen < evidence.end else {}
        impacts = tuple(PatternImpact(
            fingerprint=c.fingerprint, query_name=c.evidence.query_name,
            p95_before_ms=before[c.fingerprint].quantile(0.95) if c.fingerprint in before else None,
            p95_after_ms=after[c.fingerprint].quantile(0.95) if c.fingerprint in after else None,
        ) for c in affected)
        out.append(AppliedChange(item.kind, item.schema_name, item.table_name, item.name,
                                 item.definition, (item.previous_snapshot, item.first_seen),
                                 impacts, sid))
    return out


def _stored_denormalizations(conn: psycopg.Connection[tuple[Any, ...]]
                             ) -> dict[tuple[str, str, str], tuple[str, set[str]]]:
    """(schema, table, new column) -> (suggestion id, pattern fingerprints) from stored runs."""
    row = conn.execute("SELECT to_regclass('fraiseql_metrics.suggestions') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return {}
    out: dict[tuple[str, str, str], tuple[str, set[str]]] = {}
    try:
        rows = conn.execute(
            "SELECT DISTINCT ON (schema_name, table_name, new_column) schema_name, table_name,"
            " new_column, suggestion_id, document->'patterns'"
            " FROM fraiseql_metrics.suggestions"
            " WHERE type = 'denormalize' AND new_column IS NOT NULL"
            " ORDER BY schema_name, table_name, new_column, run_id").fetchall()
    except psycopg.errors.InsufficientPrivilege:
        return {}
    for schema, table, column, sid, patterns in rows:
        fingerprints = {str(p.get("fingerprint")) for p in (patterns or [])
                        if isinstance(p, dict)}
        out[(str(schema), str(table), str(column))] = (str(sid), fingerprints)
    return out


# --- the analysis ----------------------------------------------------------------------------


def run_analysis(url: str, options: AnalyzeOptions, *, now: datetime | None = None) -> Analysis:
    """Analyze the window ending at ``options.end`` (default now) of the metrics database."""
    analyzed_at = (now or datetime.now(UTC)).astimezone(UTC)
    end = (options.end or analyzed_at).astimezone(UTC)
    start = end - timedelta(seconds=window_to_seconds(options.window))
    notes: list[str] = []
    with _connect(url, options) as conn:
        try:
            evidence = load_pattern_totals(conn, start, end)
            snapshots = load_table_snapshots(conn, start, end)
            history = load_object_history(conn, start, end)
            contexts, all_tables = resolve_tables(_shapes(evidence, notes), snapshots)
            fastest = floor_patterns(evidence.patterns.values())
            candidates = generate_candidates(contexts)
            wanted = {b.pattern.fingerprint for c in candidates for b in c.benefits}
            sketches = load_sketches(conn, start, end,
                                     wanted | {p.fingerprint for p in fastest})
            floor = workload_floor(fastest, sketches)
            validator = HypoValidator(options.validate_with) if options.validate_with else None
            try:
                evaluated = evaluate_candidates(candidates, floor=floor, sketches=sketches,
                                                validator=validator)
            finally:
                if validator is not None:
                    validator.close()
            kept = remove_redundant(apply_filters(
                evaluated, min_frequency=options.min_frequency, min_speedup=options.min_speedup,
                min_selectivity=options.min_selectivity, sketches=sketches))
            new_indexes = {(h.schema_name, h.table_name, h.name) for h in history
                           if h.kind == "index"}
            drops = find_drop_candidates(all_tables, contexts, new_indexes)
            applied = _applied_changes(conn, history, contexts, all_tables, evidence)
        except psycopg.Error as exc:
            raise AnalyzerUnavailable(
                f"cannot read the metrics database {mask_url(url)}: {describe_error(exc)}") from None
    ranked = rank(kept, drops)
    # The same per-day scale as every pattern's queries/day: shares do not depend on it.
    workload_db = math.fsum(p.queries_per_day * p.mean_db_ms for p in evidence.patterns.values())
    window_days = (end - start).total_seconds() / 86400.0
    coverage = DataCoverage(window_secs=window_days * 86400.0,
                            data_secs=evidence.coverage_days * 86400.0)
    priorities = assign_priorities(ranked, workload_db, coverage)
    taken: set[str] = set()
    suggestions = [_build(c, p, sketches, taken)
                   for c, p in zip(ranked, priorities, strict=True)]
    if options.types:
        suggestions = [s for s in suggestions if s.type in options.types]
    if options.table:
        suggestions = [s for s in suggestions if _matches_table(s, options.table)]
    if evidence.patterns:  # without patterns there is no floor to speak of
        notes.append(f"floor: {floor.db_ms:.3g} ms mean database time, {floor.p95_ms:.3g} ms p95 "
                     "(the workload's fastest patterns; no change makes a query faster)")
    return Analysis(
        analyzed_at=analyzed_at,
        window_start=start,
        window_end=end,
        window_days=window_days,
        total_executions=evidence.total_executions,
        unique_queries=len(evidence.patterns),
        avg_execution_time_ms=evidence.avg_execution_time_ms,
        suggestions=tuple(suggestions),
        applied=tuple(applied),
        notes=tuple(notes),
        coverage_days=evidence.coverage_days,
        workload_db_ms_per_day=workload_db,
        validated_with=mask_url(options.validate_with) if options.validate_with else None,
        settings={"window": options.window, "min_frequency": options.min_frequency,
                  "min_speedup": options.min_speedup,
                  "min_selectivity": options.min_selectivity},
    )
