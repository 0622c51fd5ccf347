"""The analyzer's output records: suggestions, their impact, a whole analysis (SPEC §5).

Field names are the JSON keys of ``analyze --format json``; :mod:`fraiseql_obs_analyzer.report` renders them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from .priority import DataCoverage

__all__ = [
    "PRIORITIES",
    "SUGGESTION_TYPES",
    "Analysis",
    "AppliedChange",
    "Impact",
    "PatternImpact",
    "PatternRef",
    "Suggestion",
]

SUGGESTION_TYPES: Final = ("denormalize", "add_index", "drop_index", "materialize_view")
# Most urgent first; how a suggestion gets one: :mod:`fraiseql_obs_analyzer.priority`.
PRIORITIES: Final = ("critical", "high", "medium", "low")


@dataclass(frozen=True, slots=True)
class PatternRef:
    """A pattern a suggestion would speed up, with its own evidence and estimate."""

    fingerprint: str
    query_name: str
    queries_per_day: float
    current_p95_ms: float | None
    estimated_speedup: float


@dataclass(frozen=True, slots=True)
class Impact:
    queries_per_day: float
    estimated_speedup: float
    current_p95_ms: float | None
    projected_p95_ms: float | None
    storage_mb: float


@dataclass(frozen=True, slots=True)
class Suggestion:
    id: str
    type: str
    priority: str
    schema: str
    table: str
    json_column: str | None
    path: str | None
    columns: tuple[str, ...]
    new_column: str | None
    new_type: str | None
    reason: str
    patterns: tuple[PatternRef, ...]
    impact: Impact
    validation: dict[str, Any]
    sql: str
    time_saved_ms_per_day: float = 0.0
    evidence: tuple[str, ...] = ()  # lines for the text report

    @property
    def qualified_table(self) -> str:
        return self.table if self.schema in ("", "public") else f"{self.schema}.{self.table}"


@dataclass(frozen=True, slots=True)
class PatternImpact:
    fingerprint: str
    query_name: str
    p95_before_ms: float | None
    p95_after_ms: float | None

    @property
    def speedup(self) -> float | None:
        if self.p95_before_ms and self.p95_after_ms:
            return self.p95_before_ms / self.p95_after_ms
        return None


@dataclass(frozen=True, slots=True)
class AppliedChange:
    """An index or column that appeared in the table statistics during the window."""

    kind: str  # "index" | "column"
    schema: str
    table: str
    name: str
    definition: str
    applied_between: tuple[datetime | None, datetime]  # last snapshot without it, first with it
    patterns: tuple[PatternImpact, ...]
    suggestion_id: str | None = None


@dataclass(frozen=True, slots=True)
class Analysis:
    analyzed_at: datetime
    window_start: datetime
    window_end: datetime
    window_days: float
    total_executions: float
    unique_queries: int
    avg_execution_time_ms: float
    suggestions: tuple[Suggestion, ...]
    applied: tuple[AppliedChange, ...] = ()
    notes: tuple[str, ...] = ()
    coverage_days: float = 0.0  # days the data spans (first to last closed window)
    # Σ queries/day × mean database time over all patterns: what priorities are a share of.
    workload_db_ms_per_day: float = 0.0
    validated_with: str | None = None  # masked URL of the HypoPG database
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def data(self) -> DataCoverage:
        return DataCoverage(window_secs=self.window_days * 86400.0,
                            data_secs=self.coverage_days * 86400.0)
