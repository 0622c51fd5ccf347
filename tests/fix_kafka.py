"""Kafka fixtures: the real broker of ``scripts/stack`` (never a fake).

Each test gets its own topic names, so tests never see each other's messages.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient

from fraiseql_observability.config import KafkaSettings

BOOTSTRAP = os.environ.get("FRAISEQL_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The broker address; fails (not skips) when no broker answers, so CI cannot pass empty."""
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    try:
        admin.list_topics(timeout=15)
    except Exception as exc:
        pytest.fail(f"no Kafka broker at {BOOTSTRAP} ({exc}); start it with: scripts/stack up")
    return BOOTSTRAP


@contextlib.contextmanager
def _own_topics(kafka_bootstrap: str) -> Iterator[KafkaSettings]:
    """KafkaSettings with topic names of their own (prefix ``t<random>.``), deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    settings = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        region="test",
        events_topic=prefix + "fraiseql.query-events",
        rollups_topic=prefix + "fraiseql.query-rollups",
        table_stats_topic=prefix + "fraiseql.table-stats",
        suggestions_topic=prefix + "fraiseql.suggestions",
        dead_letters_topic=prefix + "fraiseql.dead-letters",
    )
    yield settings
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if topics:
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best-effort cleanup
                future.result()


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> Iterator[KafkaSettings]:
    """KafkaSettings with per-test topic names (prefix ``t<random>.``), deleted afterwards."""
    with _own_topics(kafka_bootstrap) as settings:
        yield settings


@pytest.fixture(scope="module")
def module_kafka_settings(kafka_bootstrap: str) -> Iterator[KafkaSettings]:
    """The same, shared by a module's tests (for an expensive module-scoped setup)."""
    with _own_topics(kafka_bootstrap) as settings:
        yield settings


# --- helpers shared by Kafka tests --------------------------------------------------------------


def produce(
    bootstrap: str,
    topic: str,
    messages: list[tuple[bytes | None, bytes]],
    *,
    partition: int | None = None,
) -> None:
    """Produce ``(key, value)`` pairs and wait until Kafka acknowledged every one."""
    from confluent_kafka import Producer  # noqa: PLC0415

    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "linger.ms": 5, "partitioner": "murmur2_random"})
    for key, value in messages:
        kwargs = {} if partition is None else {"partition": partition}
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0, "messages left undelivered"
    assert not errors, errors[:3]


def consume_all(bootstrap: str, topic: str, *, idle_secs: float = 3.0, max_secs: float = 60.0,
                expected: int | None = None) -> list[tuple[bytes | None, bytes, int, int]]:
    """Read a topic from the beginning: ``(key, value, partition, offset)`` until quiet or ``expected``."""
    import time  # noqa: PLC0415

    from confluent_kafka import Consumer  # noqa: PLC0415

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out: list[tuple[bytes | None, bytes, int, int]] = []
    deadline = time.monotonic() + max_secs
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if expected is not None and len(out) >= expected:
                break
            if expected is None and out and time.monotonic() - last > idle_secs:
                break
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    out.append((msg.key(), msg.value(), msg.partition(), msg.offset()))
                    last = time.monotonic()
    finally:
        consumer.close()
    return out
