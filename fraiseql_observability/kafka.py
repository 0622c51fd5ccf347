"""Kafka client settings and topic creation shared by every stage.

Workers create missing topics themselves (SPEC §5a); creating an existing topic is not an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from .config import KafkaSettings
from .errors import FraiseqlError

__all__ = [
    "EVENTS_TOPIC_CONFIG", "KafkaUnavailable", "admin_client", "ensure_topics", "producer_config",
    "wait_for_broker",
]

log = logging.getLogger(__name__)


class KafkaUnavailable(FraiseqlError):
    """The broker did not answer in time."""


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
    }
    config.update(extra)
    return config


def admin_client(kafka: KafkaSettings) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka.bootstrap_servers, "logger": log})


def wait_for_broker(kafka: KafkaSettings, timeout: float = 30.0) -> None:
    try:
        admin_client(kafka).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailable(f"Kafka at {kafka.bootstrap_servers} did not answer: {exc}") from None


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
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise KafkaUnavailable(f"Kafka at {kafka.bootstrap_servers} did not answer: {exc}") from None
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
