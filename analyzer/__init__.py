"""The analyzer: statistics and schema-change suggestions read from the metrics database.

* :mod:`analyzer.stats` -- per-pattern, per-region counts and percentiles (``fraiseql-cli stats``);
* :func:`run_analysis` -- one analysis (``fraiseql-cli analyze``): evidence
  (:mod:`~analyzer.evidence`), SQL understood with pglast (:mod:`~analyzer.sqlshape`), candidates
  across the workload (:mod:`~analyzer.candidates`), speedups from the cost model
  (:mod:`~analyzer.costmodel`) or HypoPG (:mod:`~analyzer.hypo`), migrations
  (:mod:`~analyzer.sqlgen`), reports (:mod:`~analyzer.report`);
* :func:`run_once` / :func:`run_scheduler` -- the scheduled analyzer (``fraiseql-cli schedule``):
  stored runs (:mod:`~analyzer.store`), published suggestions (:mod:`~analyzer.publish`), the
  per-day sketch cache (:mod:`~analyzer.cache`), Prometheus gauges (:mod:`~analyzer.metrics`);
* :func:`diff_documents` -- ``fraiseql-cli diff-analysis``.

How the estimates are made, and what was measured: ``analyzer/DESIGN.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Analysis",
    "AnalyzeOptions",
    "AnalyzerError",
    "AnalyzerUnavailable",
    "Suggestion",
    "UnsupportedSql",
    "ValidationUnavailable",
    "diff_documents",
    "run_analysis",
    "run_once",
    "run_scheduler",
]

# Imported on first use: ``fraiseql-cli stats`` (analyzer.stats) should not pay for Kafka,
# croniter and pglast, which only the analysis needs.
_WHERE = {
    "Analysis": "records", "AnalyzeOptions": "analyze", "AnalyzerError": "errors",
    "AnalyzerUnavailable": "errors", "Suggestion": "records", "UnsupportedSql": "errors",
    "ValidationUnavailable": "errors", "diff_documents": "diff", "run_analysis": "analyze",
    "run_once": "schedule", "run_scheduler": "schedule",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
