"""Analysis runs in the metrics database (``sinks/migrations/0003_analysis.sql``).

:func:`store_run` writes one run, its suggestions (marking those absent from the previous run as
new) and the applied changes impact tracking found, in one transaction. Needs the
``fraiseql_scheduler`` role (or the maintainer).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg.types.json import Jsonb

from fraiseql_observability.db import connect, describe_error
from fraiseql_observability.secrets import mask_url

from .errors import AnalyzerError
from .records import Analysis
from .report import analysis_document, suggestion_document

__all__ = ["StoredRun", "latest_suggestion_ids", "store_run"]

_PREVIOUS: Final = """
SELECT s.suggestion_id
FROM fraiseql_metrics.suggestions AS s
WHERE s.run_id = (SELECT run_id FROM fraiseql_metrics.analysis_runs
                  ORDER BY analyzed_at DESC, run_id LIMIT 1)
"""


@dataclass(frozen=True, slots=True)
class StoredRun:
    run_id: uuid.UUID
    new_ids: frozenset[str]  # suggestions absent from the previous run
    document: dict[str, Any]


def latest_suggestion_ids(conn: psycopg.Connection[tuple[Any, ...]]) -> set[str]:
    return {str(row[0]) for row in conn.execute(_PREVIOUS).fetchall()}


def store_run(url: str, analysis: Analysis, *, connect_timeout_secs: float = 10.0) -> StoredRun:
    """Record ``analysis``; returns its run id and which suggestions are new."""
    run_id = uuid.uuid4()
    document = analysis_document(analysis)
    high = sum(1 for s in analysis.suggestions if s.priority in ("critical", "high"))
    method = "hypopg" if analysis.validated_with else "model"
    try:
        with connect(url, application_name="fraiseql-schedule", connect_timeout=connect_timeout_secs,
                     error=AnalyzerError, what="the metrics database") as conn, conn.transaction():
            # One writer at a time decides what "new" means.
            conn.execute("SELECT pg_catalog.pg_advisory_xact_lock("
                         "pg_catalog.hashtext('fraiseql_metrics.analysis_runs'))")
            previous = latest_suggestion_ids(conn)
            conn.execute(
                "INSERT INTO fraiseql_metrics.analysis_runs (run_id, analyzed_at, window_start,"
                " window_end, total_executions, unique_queries, avg_execution_time_ms,"
                " suggestion_count, high_priority_count, validation, report)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (run_id, analysis.analyzed_at, analysis.window_start, analysis.window_end,
                 analysis.total_executions, analysis.unique_queries,
                 analysis.avg_execution_time_ms, len(analysis.suggestions), high, method,
                 Jsonb(document)))
            new_ids: set[str] = set()
            rows = []
            for rank, suggestion in enumerate(analysis.suggestions, start=1):
                is_new = suggestion.id not in previous
                if is_new:
                    new_ids.add(suggestion.id)
                rows.append((run_id, suggestion.id, rank, suggestion.type, suggestion.priority,
                             suggestion.schema, suggestion.table, suggestion.new_column,
                             suggestion.impact.queries_per_day,
                             suggestion.impact.estimated_speedup,
                             suggestion.impact.current_p95_ms, suggestion.impact.projected_p95_ms,
                             suggestion.impact.storage_mb, is_new,
                             Jsonb(suggestion_document(suggestion))))
            if rows:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO fraiseql_metrics.suggestions (run_id, suggestion_id, rank,"
                        " type, priority, schema_name, table_name, new_column, queries_per_day,"
                        " estimated_speedup, current_p95_ms, projected_p95_ms, storage_mb, is_new,"
                        " document) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                        " %s, %s) ON CONFLICT (run_id, suggestion_id) DO NOTHING", rows)
            for change, entry in zip(analysis.applied, document.get("applied_changes", []),
                                     strict=True):
                after, before = change.applied_between
                conn.execute(
                    "INSERT INTO fraiseql_metrics.applied_changes AS a (schema_name, table_name,"
                    " kind, object_name, definition, applied_after, applied_before,"
                    " suggestion_id, first_detected_run, impact)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (schema_name, table_name, kind, object_name) DO UPDATE"
                    " SET impact = %s, suggestion_id = coalesce(a.suggestion_id, %s)",
                    (change.schema, change.table, change.kind, change.name, change.definition,
                     after, before, change.suggestion_id, run_id, Jsonb(entry["patterns"]),
                     Jsonb(entry["patterns"]), change.suggestion_id))
    except psycopg.Error as exc:
        raise AnalyzerError(f"cannot record the analysis in {mask_url(url)}: "
                            f"{describe_error(exc)}") from None
    return StoredRun(run_id, frozenset(new_ids), document)
