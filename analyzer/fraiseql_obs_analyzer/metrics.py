"""Prometheus metrics of the scheduled analyzer (SPEC §7), registered once per process at import.

``fraiseql_analysis_suggestions_high_priority`` (critical + high suggestions of the last run) is
what the reference alert fires on; it is exported from process start (0 until the first run).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "HIGH_PRIORITY",
    "LAST_RUN",
    "NEXT_RUN",
    "RUNS",
    "RUN_SECONDS",
    "SUGGESTIONS",
]

HIGH_PRIORITY = Gauge(
    "fraiseql_analysis_suggestions_high_priority",
    "Suggestions of priority critical or high in the last analysis",
)
SUGGESTIONS = Gauge(
    "fraiseql_analysis_suggestions",
    "Suggestions in the last analysis, by priority",
    ["priority"],
)
RUNS = Counter(
    "fraiseql_analysis_runs_total",
    "Scheduled analyses, by outcome (ok, failed)",
    ["outcome"],
)
LAST_RUN = Gauge(
    "fraiseql_analysis_last_run_timestamp_seconds",
    "Unix time of the last successful analysis",
)
NEXT_RUN = Gauge(
    "fraiseql_analysis_next_run_timestamp_seconds",
    "Unix time of the next scheduled analysis",
)
RUN_SECONDS = Gauge(
    "fraiseql_analysis_run_duration_seconds",
    "Wall-clock duration of the last analysis",
)
