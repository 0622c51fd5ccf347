"""The analyzer: statistics and schema-change suggestions read from the metrics database.

* :mod:`fraiseql_obs_analyzer.stats` -- per-pattern, per-region counts and percentiles (``fraiseql-cli
stats``);
* :func:`run_analysis` -- one analysis (``fraiseql-cli analyze``): evidence
  (:mod:`~fraiseql_obs_analyzer.evidence`), SQL understood with pglast
  (:mod:`~fraiseql_obs_analyzer.parse` and :mod:`~fraiseql_obs_analyzer.expressions` build the
  :mod:`~fraiseql_obs_analyzer.shape` of each statement), candidates across the workload
  (:mod:`~fraiseql_obs_analyzer.context` holds the tables, patterns and candidates;
  :mod:`~fraiseql_obs_analyzer.candidates` generates them, :mod:`~fraiseql_obs_analyzer.drops`
  finds unused indexes, :mod:`~fraiseql_obs_analyzer.evaluate` prices, filters and de-duplicates
  them), speedups from the cost model (:mod:`~fraiseql_obs_analyzer.costmodel`) or HypoPG
  (:mod:`~fraiseql_obs_analyzer.hypo`), migrations (:mod:`~fraiseql_obs_analyzer.sqlgen`),
  ranking and priorities (:mod:`~fraiseql_obs_analyzer.priority`), reports
  (:mod:`~fraiseql_obs_analyzer.report`);
* :func:`run_once` / :func:`run_scheduler` -- the scheduled analyzer (``fraiseql-cli schedule``):
  stored runs (:mod:`~fraiseql_obs_analyzer.store`), published suggestions
  (:mod:`~fraiseql_obs_analyzer.publish`), the
  per-day sketch cache (:mod:`~fraiseql_obs_analyzer.cache`), Prometheus gauges
  (:mod:`~fraiseql_obs_analyzer.metrics`);
* :func:`diff_documents` -- ``fraiseql-cli diff-analysis``.

Every exception is in :mod:`~fraiseql_obs_analyzer.errors`.

How the estimates are made, and what was measured: ``analyzer/DESIGN.md``.
"""

from __future__ import annotations

from fraiseql_observability.lazy import lazy_attributes

__all__ = [
    "Analysis",
    "AnalyzeOptions",
    "AnalyzerError",
    "AnalyzerUnavailable",
    "StatsError",
    "Suggestion",
    "UnsupportedSql",
    "ValidationUnavailable",
    "diff_documents",
    "run_analysis",
    "run_once",
    "run_scheduler",
]

# Imported on first use: ``fraiseql-cli stats`` (fraiseql_obs_analyzer.stats) should not pay for Kafka,
# croniter and pglast, which only the analysis needs.
_WHERE = {
    "Analysis": "records", "AnalyzeOptions": "analyze", "AnalyzerError": "errors",
    "AnalyzerUnavailable": "errors", "StatsError": "errors", "Suggestion": "records",
    "UnsupportedSql": "errors",
    "ValidationUnavailable": "errors", "diff_documents": "diff", "run_analysis": "analyze",
    "run_once": "schedule", "run_scheduler": "schedule",
}

__getattr__ = lazy_attributes(__name__, _WHERE)
