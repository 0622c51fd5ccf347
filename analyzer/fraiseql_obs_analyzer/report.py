"""Rendering an :class:`~fraiseql_obs_analyzer.records.Analysis`: ``json`` (SPEC §5 keys), ``sql``, ``text``.

JSON: one object with ``version``, ``analyzed_at``, ``database_type``, ``window{start,end,days}``,
``metrics{total_executions,unique_queries,avg_execution_time_ms}`` and ``suggestions[]``; every
suggestion carries all of SPEC §5's keys (``null`` where a key does not apply, so ``jq`` paths never
miss). ``coverage`` (added to SPEC §5's keys) says how much data the window holds and, when it
is short, the statement every format prints (:class:`~fraiseql_obs_analyzer.priority.DataCoverage`).
``applied_changes`` is added only when impact tracking found an index or column that
appeared during the window. The document is also what the scheduler stores and publishes, and
what ``diff-analysis`` reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from .priority import MIN_DATA_FOR_HIGH, format_duration
from .records import Analysis, AppliedChange, Suggestion
from .sqlgen import comment

__all__ = ["REPORT_VERSION", "analysis_document", "render_json", "render_sql", "render_text",
           "suggestion_document"]

REPORT_VERSION: Final = "1.0"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _round(value: float | None, digits: int = 3) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def suggestion_document(s: Suggestion) -> dict[str, Any]:
    return {
        "id": s.id,
        "type": s.type,
        "priority": s.priority,
        "table": s.qualified_table,
        "json_column": s.json_column,
        "path": s.path,
        "columns": list(s.columns),
        "new_column": s.new_column,
        "new_type": s.new_type,
        "reason": s.reason,
        "patterns": [
            {
                "fingerprint": p.fingerprint,
                "query_name": p.query_name,
                "queries_per_day": _round(p.queries_per_day, 1),
                "current_p95_ms": _round(p.current_p95_ms),
                "estimated_speedup": _round(p.estimated_speedup, 2),
            }
            for p in s.patterns
        ],
        "impact": {
            "queries_per_day": _round(s.impact.queries_per_day, 1),
            "estimated_speedup": _round(s.impact.estimated_speedup, 2),
            "current_p95_ms": _round(s.impact.current_p95_ms),
            "projected_p95_ms": _round(s.impact.projected_p95_ms),
            "storage_mb": _round(s.impact.storage_mb, 2),
        },
        "validation": _clean(s.validation),
        "sql": s.sql,
    }


def _clean(value: Any) -> Any:
    """JSON-safe copy: floats rounded, non-finite numbers as null."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return _round(value, 4)
    return value


def _applied_document(change: AppliedChange) -> dict[str, Any]:
    after, before = change.applied_between
    return {
        "kind": change.kind,
        "table": change.table if change.schema in ("", "public")
        else f"{change.schema}.{change.table}",
        "name": change.name,
        "definition": change.definition,
        "applied_after": _iso(after) if after else None,
        "applied_before": _iso(before),
        "suggestion_id": change.suggestion_id,
        "patterns": [
            {
                "fingerprint": p.fingerprint,
                "query_name": p.query_name,
                "p95_before_ms": _round(p.p95_before_ms),
                "p95_after_ms": _round(p.p95_after_ms),
                "speedup": _round(p.speedup, 2),
            }
            for p in change.patterns
        ],
    }


def _coverage_document(analysis: Analysis) -> dict[str, Any]:
    data = analysis.data
    return {
        "data_seconds": _round(data.data_secs, 1),
        "window_seconds": _round(data.window_secs, 1),
        "short": data.short,
        "min_data_seconds_for_high": MIN_DATA_FOR_HIGH,
        "priority_cap": data.priority_cap,
        "statement": data.statement(),
    }


def analysis_document(analysis: Analysis) -> dict[str, Any]:
    document: dict[str, Any] = {
        "version": REPORT_VERSION,
        "analyzed_at": _iso(analysis.analyzed_at),
        "database_type": "postgresql",
        "window": {
            "start": _iso(analysis.window_start),
            "end": _iso(analysis.window_end),
            "days": _round(analysis.window_days, 4),
        },
        "metrics": {
            "total_executions": _round(analysis.total_executions, 1),
            "unique_queries": analysis.unique_queries,
            "avg_execution_time_ms": _round(analysis.avg_execution_time_ms),
        },
        "suggestions": [suggestion_document(s) for s in analysis.suggestions],
        "coverage": _coverage_document(analysis),
    }
    if analysis.applied:
        document["applied_changes"] = [_applied_document(c) for c in analysis.applied]
    return document


def render_json(analysis: Analysis) -> str:
    return json.dumps(analysis_document(analysis), indent=2, ensure_ascii=False, allow_nan=False)


def render_sql(analysis: Analysis) -> str:
    """Every suggestion's migration, in rank order, runnable with ``psql -f``."""
    lines = [
        comment(f"FraiseQL Observability analysis {_iso(analysis.analyzed_at)}, window "
                f"{_iso(analysis.window_start)} .. {_iso(analysis.window_end)}"),
        comment(f"{len(analysis.suggestions)} suggestion(s). Review before applying: suggestions "
                "never run by themselves."),
        comment("Statements using CONCURRENTLY or COMMIT must run outside a transaction block "
                "(psql's default autocommit; do not use --single-transaction)."),
    ]
    statement = analysis.data.statement()
    if statement:
        lines.append(comment(statement[0].upper() + statement[1:] + "."))
    lines.append("")
    if not analysis.suggestions:
        lines.append(comment("Nothing to do."))
    for suggestion in analysis.suggestions:
        lines.append(suggestion.sql.rstrip("\n"))
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def fmt_num(value: float | None, unit: str = "") -> str:
    """A number for text output: 3 significant digits or thousands separators; '-' when unknown."""
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}{unit}"
    if abs(value) >= 1:
        return f"{value:,.1f}{unit}"
    return f"{value:.3g}{unit}"


def _wrap(text: str, indent: str, width: int = 100) -> list[str]:
    words = text.split()
    lines: list[str] = []
    current = indent
    for word in words:
        if len(current) + len(word) + 1 > width and current.strip():
            lines.append(current.rstrip())
            current = indent
        current += word + " "
    if current.strip():
        lines.append(current.rstrip())
    return lines


def _share(part: float, whole: float) -> str:
    share = 100.0 * part / whole
    return f"{share:.0f} %" if share >= 10 else f"{share:.2g} %"


def _suggestion_text(rank: int, s: Suggestion, workload_db_ms_per_day: float) -> list[str]:
    impact = s.impact
    method = s.validation.get("method", "model")
    lines = [
        f"{rank}. [{s.priority.upper()}] {s.type} on {_printable(s.qualified_table)}"
        + (f" ({_printable(', '.join(s.columns))})" if s.columns else "") + f"   id {s.id}",
        f"   impact: {fmt_num(impact.queries_per_day)} queries/day x {fmt_num(impact.estimated_speedup)}"
        f" speedup ({method}); p95 {fmt_num(impact.current_p95_ms, ' ms')} -> "
        f"{fmt_num(impact.projected_p95_ms, ' ms')}; storage {fmt_num(impact.storage_mb, ' MB')}; "
        f"saves ~{fmt_num(s.time_saved_ms_per_day / 3_600_000.0)} h of query time per day"
        + (f" ({_share(s.time_saved_ms_per_day, workload_db_ms_per_day)} of the workload's "
           "database time)" if workload_db_ms_per_day > 0 and s.time_saved_ms_per_day > 0 else ""),
    ]
    if s.new_column:
        lines.append(f"   new column: {_printable(s.new_column)} {s.new_type}")
    lines += _wrap("why: " + _printable(s.reason), "   ")
    if s.evidence:
        lines.append("   evidence:")
        lines += [f"     - {_printable(line)}" for line in s.evidence]
    lines.append("   apply: see the SQL below (or analyze --format sql)")
    lines += [f"     {line}" for line in s.sql.rstrip("\n").splitlines()]
    return lines


def _applied_text(changes: Sequence[AppliedChange]) -> list[str]:
    lines = ["", "Applied since the window began (impact tracking):"]
    for change in changes:
        after, before = change.applied_between
        when = f"between {_iso(after)} and {_iso(before)}" if after else f"by {_iso(before)}"
        link = f" (suggestion {change.suggestion_id})" if change.suggestion_id else ""
        lines.append(f"  {change.kind} {_printable(change.name)} on "
                     f"{_printable(change.schema)}.{_printable(change.table)}, {when}{link}")
        for pattern in change.patterns:
            speed = f"{pattern.speedup:,.1f}x" if pattern.speedup else "-"
            lines.append(f"    {_printable(pattern.query_name or pattern.fingerprint)}: p95 "
                         f"{fmt_num(pattern.p95_before_ms, ' ms')} before -> "
                         f"{fmt_num(pattern.p95_after_ms, ' ms')} after ({speed})")
    return lines


def render_text(analysis: Analysis) -> str:
    """A readable report: the workload in numbers, then each suggestion with its evidence."""
    lines = [
        f"FraiseQL Observability analysis at {_iso(analysis.analyzed_at)}",
        f"window {_iso(analysis.window_start)} .. {_iso(analysis.window_end)} "
        f"({format_duration(analysis.data.window_secs)}; data for "
        f"{format_duration(analysis.data.data_secs)})",
        f"workload: {fmt_num(analysis.total_executions)} executions (weighted), "
        f"{analysis.unique_queries} patterns, mean {fmt_num(analysis.avg_execution_time_ms, ' ms')}",
        "speedups: " + (f"HypoPG on {analysis.validated_with}, corrected with observed rows"
                        if analysis.validated_with else "cost model (no --validate-with)"),
    ]
    statement = analysis.data.statement()
    if statement:
        lines.append(statement[0].upper() + statement[1:] + ".")
    lines.append("")
    if not analysis.suggestions:
        lines.append("No suggestions: nothing in this window passes the thresholds "
                     f"({', '.join(f'{k}={v}' for k, v in analysis.settings.items())}).")
    else:
        counts = {p: sum(1 for s in analysis.suggestions if s.priority == p)
                  for p in ("critical", "high", "medium", "low")}
        lines.append(f"{len(analysis.suggestions)} suggestion(s): "
                     + ", ".join(f"{n} {p}" for p, n in counts.items() if n)
                     + " — ranked by query time saved per day; priority by its share of the "
                     "workload's database time")
        for rank, suggestion in enumerate(analysis.suggestions, start=1):
            lines.append("")
            lines += _suggestion_text(rank, suggestion, analysis.workload_db_ms_per_day)
    if analysis.applied:
        lines += _applied_text(analysis.applied)
    if analysis.notes:
        lines.append("")
        lines += [f"note: {_printable(n)}" for n in analysis.notes]
    return "\n".join(lines)
