"""Reading query events back from a topic: single ``QueryEvent`` or ``QueryEventBatch`` messages."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer

from fraiseql_observability.codec import QUERY_EVENT, QUERY_EVENT_BATCH, default_codec


def events_of(value: bytes | None) -> list[dict[str, Any]]:
    """The events of one message (either schema; SPEC §3)."""
    name, record = default_codec().decode_named(value)
    if name == QUERY_EVENT_BATCH:
        events: list[dict[str, Any]] = record["events"]
        return events
    assert name == QUERY_EVENT, name
    return [record]


def read_events(bootstrap: str, topic: str, expected: int, *, max_secs: float = 30.0,
                extra_secs: float = 1.0) -> list[dict[str, Any]]:
    """Every event of ``topic`` from the start: waits for ``expected`` events, then reads on for
    ``extra_secs`` more, so duplicates or extras would show."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + max_secs
    until: float | None = None
    try:
        while time.monotonic() < (until or deadline):
            if until is None and len(out) >= expected:
                until = time.monotonic() + extra_secs
            for message in consumer.consume(1000, 0.2):
                if message.error() is None:
                    out.extend(events_of(message.value()))
    finally:
        consumer.close()
    return out
