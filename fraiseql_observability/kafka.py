"""Kafka client settings and topic creation shared by every stage.

Workers create missing topics themselves (SPEC §5a); creating an existing topic is not an error.
A broker that does not answer is reported within :data:`PROBE_SECS`, naming the address and the
setting that holds it; a missing topic is reported with the process that creates it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from .config import KafkaSettings
from .errors import FraiseqlError

__all__ = [
    "BOOTSTRAP_SETTING", "EVENTS_TOPIC_CONFIG", "PROBE_SECS", "KafkaUnavailable", "MissingTopic",
    "admin_client", "ensure_topics", "missing_topic_message", "producer_config", "require_topics",
    "topic_creators", "unavailable", "wait_for_broker", "wait_for_kafka",
]

log = logging.getLogger(__name__)


class KafkaUnavailable(FraiseqlError):
    """The broker did not answer in time."""


class MissingTopic(FraiseqlError):
    """A topic a command reads does not exist (and this command does not create it)."""


# A metadata request answers in milliseconds from a live broker; librdkafka's own default wait is
# much longer than an operator watching a silent terminal (SPEC: "within a few seconds").
PROBE_SECS: Final = 5.0
BOOTSTRAP_SETTING: Final = ("kafka.bootstrap_servers in the config file, or "
                            "FRAISEQL_KAFKA_BOOTSTRAP_SERVERS")


def _reason(exc: BaseException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


def unavailable(kafka: KafkaSettings, seconds: float, exc: BaseException) -> KafkaUnavailable:
    """The one-line error for a broker that did not answer: address, setting, reason."""
    return KafkaUnavailable(
        f"Kafka at {kafka.bootstrap_servers} did not answer within {seconds:.3g}s ({_reason(exc)}); "
        f"is it running, and is the address right? It comes from {BOOTSTRAP_SETTING}"
    )


def topic_creators(kafka: KafkaSettings, topic: str) -> str:
    """Which process creates ``topic`` (for the message about a missing one)."""
    creators = {
        kafka.events_topic: "the stream worker (`fraiseql-cli stream`), `fraiseql-cli loadgen` "
                            "and the API processes' recorders create it when they start",
        kafka.rollups_topic: "the stream worker (`fraiseql-cli stream`) and the sink "
                             "(`fraiseql-cli sink`) create it when they start",
        kafka.table_stats_topic: "`fraiseql-cli table-stats` and the sink (`fraiseql-cli sink`) "
                                 "create it when they start",
        kafka.dead_letters_topic: "the stream worker and the sink create it when they start",
        kafka.suggestions_topic: "the scheduled analyzer (`fraiseql-cli schedule`) creates it",
    }
    return creators.get(topic, "no fraiseql-cli process creates it: check the topic names in "
                               "[observability.kafka]")


def missing_topic_message(kafka: KafkaSettings, topic: str) -> str:
    return (f"topic {topic} does not exist on Kafka at {kafka.bootstrap_servers}: "
            f"{topic_creators(kafka, topic)}")


def require_topics(kafka: KafkaSettings, names: Iterable[str], *, timeout: float = PROBE_SECS) -> None:
    """Raise :class:`MissingTopic` (naming its creator) unless every topic exists."""
    try:
        existing = admin_client(kafka).list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise unavailable(kafka, timeout, exc) from None
    for name in names:
        if name not in existing:
            raise MissingTopic(missing_topic_message(kafka, name))


def producer_config(kafka: KafkaSettings, **extra: Any) -> dict[str, Any]:
    """An idempotent, compressed, batching producer: safe retries, no reordering."""
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 20,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 200000,
        # Kafka's default (Java) partitioner: a key lands in the same partition whichever
        # producer sends it, and the Recorder's batches (fraiseql_obs_producers.partitioning)
        # agree with it (librdkafka's own default is CRC32).
        "partitioner": "murmur2_random",
    }
    config.update(extra)
    return config


def admin_client(kafka: KafkaSettings) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka.bootstrap_servers, "logger": log})


def wait_for_broker(kafka: KafkaSettings, timeout: float = 30.0) -> None:
    try:
        admin_client(kafka).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise unavailable(kafka, timeout, exc) from None


def wait_for_kafka(kafka: KafkaSettings, *, budget_secs: float,
                   stop: threading.Event | None = None, probe_secs: float = PROBE_SECS) -> bool:
    """Wait at most ``budget_secs`` for the broker; True once it answers, False if ``stop`` is set.

    Each failed probe (``probe_secs`` each) logs one warning with the address, the setting and the
    reason, so a wrong address shows within seconds and the log grows by one line per probe at
    most; after ``budget_secs`` raises :class:`KafkaUnavailable`.
    """
    deadline = time.monotonic() + budget_secs
    admin = admin_client(kafka)
    probe = probe_secs  # the first probe is whole even with no budget: "did not answer in 5s"
    while True:
        try:
            admin.list_topics(timeout=probe)
            return True
        except KafkaException as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise unavailable(kafka, max(budget_secs, probe_secs), exc) from None
            log.warning("%s; retrying, giving up in %.0fs", unavailable(kafka, probe, exc), left)
        if (stop or threading.Event()).wait(min(1.0, max(0.0, deadline - time.monotonic()))):
            return False
        probe = max(0.5, min(probe_secs, deadline - time.monotonic()))


# The broker stamps each event message with its own clock when it appends it (streams/DESIGN.md).
EVENTS_TOPIC_CONFIG: Final = {"message.timestamp.type": "LogAppendTime"}


def ensure_topics(
    kafka: KafkaSettings,
    names: Iterable[str],
    *,
    partitions: int | None = None,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """Create the topics that do not exist yet (idempotent, safe for concurrent workers).

    The events topic is created with broker timestamps (``LogAppendTime``): the stream workers'
    watermark follows them, so an API host with a skewed clock cannot make others' events late.
    """
    admin = admin_client(kafka)
    probe = min(timeout, PROBE_SECS)
    try:
        existing = set(admin.list_topics(timeout=probe).topics)
    except KafkaException as exc:
        raise unavailable(kafka, probe, exc) from None
    wanted = [
        NewTopic(name, num_partitions=partitions or kafka.partitions,
                 replication_factor=kafka.replication_factor,
                 config=config or (EVENTS_TOPIC_CONFIG if name == kafka.events_topic else {}))
        for name in dict.fromkeys(names)
        if name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result()
            log.info("created topic %s", name)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise
    _wait_until_listed(admin, [t.topic for t in wanted], timeout)


def _wait_until_listed(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Return once the broker's metadata lists every topic with a leader for each partition.

    A consumer that subscribes before that sees "unknown topic" and only looks again at its next
    metadata refresh (five minutes by default): its partitions would sit unassigned until then.
    """
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        topics = admin.list_topics(timeout=max(1.0, deadline - time.monotonic())).topics
        pending = {
            name for name in pending
            if name not in topics or topics[name].error is not None
            or not topics[name].partitions
            or any(p.leader < 0 for p in topics[name].partitions.values())
        }
        if pending:
            time.sleep(0.1)
    if pending:
        raise KafkaUnavailable(f"topics not visible after creation: {', '.join(sorted(pending))}")
