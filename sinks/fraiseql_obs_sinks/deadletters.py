"""The sink's dead letters: what they carry, and producing them until Kafka acknowledged them.

A message the sink cannot use (undecodable, invalid, refused by PostgreSQL) is sent, with its
original bytes and a reason, to the dead-letter topic. The delivery protocol of
:mod:`fraiseql_obs_sinks.worker` commits a batch's offsets only once every dead letter of the batch
is acknowledged, so each :class:`DeadLetter` tracks its own delivery state, and
:meth:`DeadLetterProducer.deliver` produces again whatever was not acknowledged before it returns
(or raises :class:`~fraiseql_obs_sinks.errors.WriteFailed`, and the batch is retried).

Dead letters are at-least-once: one re-delivered after a crash or a rebalance is produced again
(never lost, occasionally twice). Kept apart from the consumer loop because delivery tracking is
the part of the protocol that involves the producer, not the consumer or the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from fraiseql_observability.codec import DEAD_LETTER, Codec
from fraiseql_observability.deadletter import dead_letter_record

from .errors import WriteFailed
from .metrics import DEAD_LETTERS

__all__ = [
    "DEAD_LETTER_FLUSH_SECS",
    "STAGE",
    "DeadLetter",
    "DeadLetterProducer",
    "Delivery",
    "Source",
]

STAGE: Final = "sink"
# How long one delivery round waits for Kafka's acknowledgements.
DEAD_LETTER_FLUSH_SECS: Final = 10.0


@dataclass(frozen=True, slots=True)
class Source:
    """Where a row came from: what a dead letter needs to carry."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Delivery(Enum):
    NEW = "new"  # not handed to the producer yet (or to be produced again)
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(slots=True)
class DeadLetter:
    """One message the sink gives up on, and how far its delivery got."""

    source: Source
    reason: str
    detail: str
    state: Delivery = Delivery.NEW
    error: str = ""

    def on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            if self.state is not Delivery.DELIVERED:
                DEAD_LETTERS.labels(self.reason).inc()
            self.state = Delivery.DELIVERED
        else:
            self.state = Delivery.FAILED
            self.error = str(err)


class DeadLetterProducer:
    """Produces :class:`DeadLetter` records to ``topic`` and waits for their acknowledgement."""

    def __init__(self, producer: Producer, codec: Codec, topic: str) -> None:
        self._producer = producer
        self._codec = codec
        self._topic = topic

    def produce(self, letter: DeadLetter) -> None:
        """Hand ``letter`` to the producer; a refusal leaves it to be produced again."""
        src = letter.source
        value = self._codec.encode(
            DEAD_LETTER,
            dead_letter_record(
                stage=STAGE, reason=letter.reason, detail=letter.detail, topic=src.topic,
                partition=src.partition, offset=src.offset, key=src.key, value=src.value,
            ),
        )
        try:
            self._producer.produce(
                self._topic, value=value, key=src.key, on_delivery=letter.on_delivery
            )
            letter.state = Delivery.PENDING
        except (BufferError, KafkaException) as exc:
            # Queue full or broker trouble: produced again before the batch may commit.
            letter.state, letter.error = Delivery.NEW, str(exc)
        self._producer.poll(0)

    def deliver(self, letters: Iterable[DeadLetter]) -> None:
        """Return once Kafka acknowledged every one of ``letters``; raise WriteFailed otherwise."""
        pending = list(letters)
        if not pending:
            return
        for letter in pending:
            if letter.state in (Delivery.NEW, Delivery.FAILED):
                self.produce(letter)
        self._producer.flush(DEAD_LETTER_FLUSH_SECS)
        missing = [letter for letter in pending if letter.state is not Delivery.DELIVERED]
        if missing:
            raise WriteFailed(
                f"{len(missing)} dead letter(s) not acknowledged by Kafka"
                + (f": {missing[0].error}" if missing[0].error else "")
            )
