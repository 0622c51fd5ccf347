"""Prometheus metrics of the sink (SPEC §7), registered once per process at import.

Module-level because ``prometheus_client`` refuses to register a name twice: several sink workers
in one process (the tests run several, with ``/metrics`` port 0) share these objects. Serving
``/metrics`` is the CLI's job (:func:`fraiseql_observability.metrics.serve_metrics`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "BATCHES",
    "CONSUMER_LAG",
    "DEAD_LETTERS",
    "EXPIRED_ROLLUPS",
    "LAST_WRITE",
    "RETRIES",
    "ROWS_WRITTEN",
]

LAST_WRITE = Gauge(
    "fraiseql_metrics_last_write",
    "Unix time (seconds) of the last successful write to the metrics database",
)
ROWS_WRITTEN = Counter(
    "fraiseql_sink_rows_written_total",
    "Rows upserted into the metrics database (re-deliveries count again)",
    ["table"],
)
BATCHES = Counter("fraiseql_sink_batches_total", "Batches committed to the metrics database")
RETRIES = Counter(
    "fraiseql_sink_retries_total",
    "Failed attempts to write a batch (database down, timeout …) that were retried",
)
DEAD_LETTERS = Counter(
    "fraiseql_sink_dead_letters_total",
    "Messages the sink sent to the dead-letter topic",
    ["reason"],
)
CONSUMER_LAG = Gauge(
    "fraiseql_sink_consumer_lag",
    "Messages not yet written to the metrics database: high watermark minus committed offset",
    ["topic", "partition"],
)
EXPIRED_ROLLUPS = Counter(
    "fraiseql_sink_rollups_expired_total",
    "Rollups older than the metrics database keeps (no hourly partition left for their day):"
    " not written",
)
