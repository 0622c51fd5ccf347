"""The stream worker process (``fraiseql-cli stream``).

A confluent-kafka consumer feeds :class:`fraiseql_obs_streams.processor.StreamProcessor` in
batches; the process serves Prometheus ``/metrics`` and stops cleanly on SIGTERM. Why not a Faust
agent: Faust 0.15 awaits several asyncio tasks per message in its fetch loop, which caps an agent
that only decodes at about 4k events/s on the reference machine, against the 50k+ this loop does
end to end; and our checkpoints need a synchronous commit of an offset with metadata, which
librdkafka gives directly (measurements and the rest of the reasoning: ``streams/DESIGN.md``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from fraiseql_observability.codec import default_codec
from fraiseql_observability.config import Settings
from fraiseql_observability.kafka import ensure_topics, producer_config, wait_for_kafka
from fraiseql_observability.metrics import serve_worker_metrics

from .processor import StreamProcessor, Tally

__all__ = ["consumer_config", "run_stream_loop", "run_stream_worker", "startup_line", "stream_producer"]

log = logging.getLogger(__name__)

# Both engines: lag gauges and idle partitions every 5 s, a health line a minute.
LAG_EVERY_SECS = 5.0
HEALTH_EVERY_SECS = 60.0


def consumer_config(settings: Settings, group_id: str | None = None) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "group.id": group_id or settings.streams.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # Eager range assignment: every rebalance revokes everything, and each new owner rebuilds
        # from its checkpoint; simple and exact.
        "partition.assignment.strategy": "range",
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "queued.max.messages.kbytes": 256 * 1024,
        "session.timeout.ms": 10000,
        "max.poll.interval.ms": 300000,
        # A regex subscription notices a newly mirrored regional topic at the next metadata
        # refresh (librdkafka's default: 5 minutes).
        "topic.metadata.refresh.interval.ms": 30000,
    }


def stream_producer(settings: Settings) -> Producer:
    # Never give up on a rollup: while the broker restarts the worker waits (SPEC §8).
    overrides = {"message.timeout.ms": 0, "partitioner": "murmur2_random"}
    return Producer(producer_config(settings.kafka, **overrides))


def run_stream_loop(settings: Settings, stop: threading.Event,
                    on_ready: Callable[[], None] | None = None) -> None:
    """Consume, aggregate and publish until ``stop`` is set."""
    kafka = settings.kafka
    # events_topic may be a regex ("^…", librdkafka's convention), e.g. to consume the topics that
    # MirrorMaker 2 mirrors from regional clusters; regex subscriptions create nothing.
    ensure_topics(kafka, [t for t in (kafka.events_topic, kafka.rollups_topic, kafka.dead_letters_topic)
                          if not t.startswith("^")])
    producer = stream_producer(settings)
    processor = StreamProcessor(settings, producer, default_codec())
    consumer = Consumer(consumer_config(settings))

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        c.assign(processor.assign(c, partitions))

    def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
        # Hand over cleanly: publish what is ready and checkpoint before the partitions move.
        try:
            processor.flush_and_checkpoint(c, stop.is_set)
        except Exception:
            log.warning("could not checkpoint before revocation", exc_info=True)
        processor.revoke(partitions)
        c.unassign()

    consumer.subscribe([kafka.events_topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
    log.info("stream worker consuming %s (group %s)", kafka.events_topic, settings.streams.group_id)
    if on_ready:
        on_ready()
    last_lag = 0.0
    last_health = time.monotonic()
    try:
        while not stop.is_set():
            messages = consumer.consume(settings.streams.batch_size, settings.streams.batch_timeout_secs)
            if messages:
                processor.process(messages)
            processor.flush_and_checkpoint(consumer, stop.is_set)
            if time.monotonic() - last_lag > LAG_EVERY_SECS:
                processor.update_lag(consumer)
                processor.advance_idle_partitions(consumer)
                last_lag = time.monotonic()
            if time.monotonic() - last_health >= HEALTH_EVERY_SECS:
                log.info("%s", processor.tally.line())
                processor.tally = Tally(lag=processor.tally.lag)
                last_health = time.monotonic()
    finally:
        try:
            processor.flush_and_checkpoint(consumer, lambda: True)
        except Exception:
            log.warning("final checkpoint skipped", exc_info=True)
        consumer.close()
        producer.flush(5)
        log.info("stream worker stopped")


def startup_line(settings: Settings, metrics_port: int) -> str:
    """What an operator checks first: where it reads, where it writes, under which group."""
    kafka, streams = settings.kafka, settings.streams
    return (f"stream worker: Kafka {kafka.bootstrap_servers}, events {kafka.events_topic} -> "
            f"rollups {kafka.rollups_topic}, dead letters {kafka.dead_letters_topic}, group "
            f"{streams.group_id}, {streams.window_secs}s windows closing {streams.grace_secs:g}s "
            f"after their end, /metrics port {metrics_port}; a health line every "
            f"{HEALTH_EVERY_SECS:.0f}s")


def run_stream_worker(settings: Settings, stop: threading.Event) -> None:
    """Entry point of ``fraiseql-cli stream``: serve /metrics, wait for Kafka (at most
    ``kafka.startup_timeout_secs``), run the loop until ``stop``."""
    port = serve_worker_metrics(settings.streams.metrics_port, settings.metrics_bind,
                                setting="--metrics-port or [observability.streams] metrics_port")
    log.info("%s", startup_line(settings, port))
    if not wait_for_kafka(settings.kafka, budget_secs=settings.kafka.startup_timeout_secs, stop=stop):
        return
    run_stream_loop(settings, stop)
