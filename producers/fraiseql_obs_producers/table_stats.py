"""The table-statistics job: snapshots of the application database, published to Kafka.

:func:`run_table_stats` (``fraiseql-cli table-stats``) takes a snapshot
(:func:`~fraiseql_obs_producers.table_snapshot.snapshot_table_stats`: what is read and how) every
``interval_secs`` and :func:`publish_table_stats` produces it to ``fraiseql.table-stats``, one
``TableStats`` record per table keyed ``schema.table``; the sink writes them to the metrics
database, where the analyzer reads them. The job exports its own Prometheus metrics
(``fraiseql_table_stats_*``): snapshots by outcome, the last success, tables and duration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaException, Producer
from prometheus_client import Counter, Gauge

from fraiseql_observability.codec import TABLE_STATS, default_codec
from fraiseql_observability.config import Settings
from fraiseql_observability.errors import FraiseqlError
from fraiseql_observability.jsonpath import parse_json_path  # re-exported (see __all__)
from fraiseql_observability.kafka import ensure_topics, producer_config
from fraiseql_observability.secrets import mask_secrets

from .errors import TableStatsError
from .table_snapshot import snapshot_table_stats, workload_json_paths

# parse_json_path (home: fraiseql_observability.jsonpath) and workload_json_paths (home:
# table_snapshot) are re-exported for callers that still import them from here.
__all__ = [
    "TableStatsError",
    "parse_json_path",
    "publish_table_stats",
    "run_table_stats",
    "snapshot_table_stats",
    "workload_json_paths",
]

log = logging.getLogger(__name__)

SNAPSHOTS = Counter("fraiseql_table_stats_snapshots", "Table-statistics snapshot runs",
                    ["outcome"])
LAST_SUCCESS = Gauge("fraiseql_table_stats_last_success",
                     "Unix time of the last table-statistics snapshot published to Kafka")
TABLES = Gauge("fraiseql_table_stats_tables", "Tables in the last published snapshot")
DURATION = Gauge("fraiseql_table_stats_duration_seconds",
                 "Seconds the last snapshot took (catalogue reads, samples, publishing)")


def publish_table_stats(settings: Settings, records: Sequence[Mapping[str, Any]], *,
                        timeout: float = 30.0) -> None:
    """Produce ``records`` to ``settings.kafka.table_stats_topic`` (key ``schema.table``) and wait
    until Kafka acknowledged every one; raises :class:`TableStatsError` otherwise (and
    ``KafkaUnavailable`` when the broker does not answer at all)."""
    codec = default_codec()
    # Encode everything first: a record that does not fit the schema sends nothing.
    messages = [(f"{r['schema_name']}.{r['table_name']}", codec.encode(TABLE_STATS, r))
                for r in records]
    if not messages:
        return
    topic = settings.kafka.table_stats_topic
    ensure_topics(settings.kafka, [topic], timeout=timeout)
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer = Producer(producer_config(settings.kafka, **{
        "client.id": "fraiseql-table-stats",
        "message.timeout.ms": max(1, int(timeout * 1000)),
        "logger": log,
    }))
    try:
        for key, value in messages:
            producer.produce(topic, value, key, on_delivery=on_delivery)
    except (KafkaException, BufferError) as exc:
        raise TableStatsError(f"cannot produce table statistics to {topic}: {exc}") from None
    remaining = producer.flush(timeout + 5.0)
    if failures or remaining:
        detail = failures[0] if failures else "not acknowledged in time"
        raise TableStatsError(f"{len(failures) + remaining} of {len(messages)} table-stats "
                              f"record(s) not delivered to {topic}: {detail}")


def run_table_stats(
    settings: Settings,
    app_db_url: str,
    *,
    interval_secs: float = 300.0,
    once: bool = False,
    tables: Sequence[str] | None = None,
    json_paths: Mapping[str, Sequence[str]] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Snapshot and publish every ``interval_secs`` until ``stop`` (or once); returns the number
    of snapshots published. In the periodic mode a failed snapshot (database or Kafka down) is
    logged and counted (``fraiseql_table_stats_snapshots_total{outcome="failed"}``) and the job
    carries on; with ``once`` it raises."""
    if not interval_secs > 0:
        raise TableStatsError(f"--interval {interval_secs}: must be > 0")
    stop = stop or threading.Event()
    published = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            records = snapshot_table_stats(app_db_url, region=settings.kafka.region, tables=tables,
                                           json_paths=json_paths)
            publish_table_stats(settings, records)
        except FraiseqlError as exc:
            SNAPSHOTS.labels("failed").inc()
            if once:
                raise
            log.warning("table-stats snapshot failed (retry in %g s): %s", interval_secs,
                        mask_secrets(str(exc)))
        else:
            published += 1
            SNAPSHOTS.labels("ok").inc()
            LAST_SUCCESS.set(time.time())
            TABLES.set(len(records))
            DURATION.set(time.monotonic() - started)
            log.info("published statistics of %d table(s) to %s in %.2f s", len(records),
                     settings.kafka.table_stats_topic, time.monotonic() - started)
        if once or stop.wait(max(0.0, interval_secs - (time.monotonic() - started))):
            break
    return published
