"""The sink worker (``fraiseql-cli sink``): Kafka rollups and table stats → metrics PostgreSQL.

Delivery protocol, per batch (size ``sinks.batch_size`` messages or ``sinks.batch_timeout_secs``
after its first message, whichever comes first):

1. Every message is decoded and validated as it arrives. One that cannot be used becomes a
   ``DeadLetter`` (stage ``sink``, original bytes, reason) produced to the dead-letter topic.
2. The dead letters of the batch are acknowledged by Kafka (``flush``) …
3. … the rows are written in one database transaction
   (:class:`~fraiseql_obs_sinks.writer.RollupWriter`) …
4. … and only then are the offsets committed, synchronously.

A crash anywhere re-delivers the uncommitted batch, which the idempotent upserts absorb: the
database ends with every rollup exactly once. While PostgreSQL is unreachable the *same* batch is
retried with exponential back-off (capped at 10 s); meanwhile the assigned partitions are paused
and the consumer keeps being polled, so it stays in its group (``max.poll.interval.ms``) and
serves rebalances without buffering more messages.

Rebalances: offsets are committed explicitly per partition, so when partitions are revoked (or
lost) their part of the pending batch is simply dropped — the next owner re-reads it from the
last committed offset. Stopping (``stop`` event or SIGTERM) makes one last attempt to write the
pending batch and never commits anything unwritten.

Dead letters are at-least-once: a bad message re-delivered after a crash or a rebalance is
dead-lettered again (never lost, occasionally twice).

The ``cooperative-sticky`` assignor is used so a rebalance only revokes the partitions that move,
instead of dropping every in-flight batch of the group.

This module is the loop and its timing; the books it keeps live beside it: the pending batch per
partition (:mod:`~fraiseql_obs_sinks.batching`), dead letters and their delivery tracking
(:mod:`~fraiseql_obs_sinks.deadletters`) and the consumer-lag gauge (:mod:`~fraiseql_obs_sinks.lag`).

Start-up (:func:`run_sink`): one line naming the Kafka address, topics, group and the masked
database; a metrics database that is not migrated stops the sink at once (``NotMigrated``), one
that is unreachable is only warned about (the writes wait for it, as during any outage); an
unreachable broker is logged every few seconds and stops the sink after
``kafka.startup_timeout_secs``. Then a health line a minute (:class:`SinkTally`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from fraiseql_observability.codec import QUERY_ROLLUP, TABLE_STATS, Codec, default_codec
from fraiseql_observability.config import Settings
from fraiseql_observability.db import DatabaseUnreachable, require_migrated
from fraiseql_observability.errors import DecodeError
from fraiseql_observability.kafka import (
    admin_client,
    ensure_topics,
    producer_config,
    wait_for_kafka,
)
from fraiseql_observability.secrets import mask_url

from .batching import Batch, TopicPartitionKey
from .deadletters import DEAD_LETTER_FLUSH_SECS, DeadLetter, DeadLetterProducer, Source
from .errors import InvalidRecord, RecordRejected, SinkError, WriteFailed
from .lag import ConsumerLag
from .metrics import BATCHES, CONSUMER_LAG, RETRIES
from .records import RecordLimits, RollupRow, TableStatsRow
from .writer import RollupWriter, WriteResult

__all__ = ["SinkTally", "SinkWorker", "consumer_config", "run_sink", "startup_line"]

log = logging.getLogger(__name__)

INITIAL_BACKOFF_SECS: Final = 0.2
MAX_BACKOFF_SECS: Final = 10.0
LAG_INTERVAL_SECS: Final = 10.0
PARTITION_UPKEEP_SECS: Final = 3600.0
UPKEEP_DAYS_AHEAD: Final = 7
_POLL_SLICE_SECS: Final = 0.2
HEALTH_INTERVAL_SECS: Final = 60.0


def consumer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """At-least-once consumption with offsets committed by hand after the database commit."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "group.id": settings.sinks.group_id,
        "client.id": f"fraiseql-sink-{socket.gethostname()}-{os.getpid()}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # A new group must read what was produced before it started: rollups are not replayable
        # from anywhere else once the stream worker committed past their events.
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        # A sink killed without leaving the group holds its partitions until its session expires
        # (librdkafka's default: 45 s of no progress). Heartbeats come from librdkafka's own
        # thread, so a database outage (the loop keeps polling anyway) cannot expire a session.
        "session.timeout.ms": 10000,
    }
    config.update(extra)
    return config


def startup_line(settings: Settings) -> str:
    kafka, sinks = settings.kafka, settings.sinks
    return (f"sink worker: Kafka {kafka.bootstrap_servers}, consuming {kafka.rollups_topic} and "
            f"{kafka.table_stats_topic} (group {sinks.group_id}), dead letters "
            f"{kafka.dead_letters_topic}, database {mask_url(settings.database_url)}; a health "
            f"line every {HEALTH_INTERVAL_SECS:.0f}s")


@dataclass(slots=True)
class SinkTally:
    """What the sink did since its last health line (logged once a minute)."""

    rollups: int = 0
    table_stats: int = 0
    expired: int = 0
    batches: int = 0
    retries: int = 0
    dead: dict[str, int] = field(default_factory=dict)

    def wrote(self, result: WriteResult | None) -> None:
        if isinstance(result, WriteResult):  # a writer stand-in may return nothing
            self.rollups += result.rollups
            self.table_stats += result.table_stats
            self.expired += result.expired

    def dead_letter(self, reason: str) -> None:
        self.dead[reason] = self.dead.get(reason, 0) + 1

    def line(self, lag: int | None) -> str:
        dead = ", ".join(f"{reason} {n}" for reason, n in sorted(self.dead.items())) or "none"
        return (f"health: rollups written {self.rollups} (expired {self.expired}), table stats "
                f"{self.table_stats}, batches {self.batches}, retries {self.retries}, "
                f"dead-lettered {sum(self.dead.values())} ({dead}), lag "
                f"{'unknown' if lag is None else lag}")


# --- the worker -----------------------------------------------------------------------------------


class SinkWorker:
    """The consume → dead-letter → write → commit loop around injected clients."""

    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        producer: Producer,
        writer: RollupWriter,
        *,
        stop: threading.Event,
        codec: Codec | None = None,
        limits: RecordLimits | None = None,
        admin: AdminClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._consumer = consumer
        self._writer = writer
        self._stop = stop
        self._codec = codec or default_codec()
        self._limits = limits or writer.limits
        self._clock = clock
        kafka = settings.kafka
        self._expected = {kafka.rollups_topic: QUERY_ROLLUP, kafka.table_stats_topic: TABLE_STATS}
        self._dead_letters = DeadLetterProducer(producer, self._codec, kafka.dead_letters_topic)
        self._lag = ConsumerLag(consumer, admin)
        self._buffer = Batch()
        self._inflight: Batch | None = None
        self._assigned: set[TopicPartitionKey] = set()
        self._next_lag_at = 0.0
        self._next_upkeep_at = 0.0
        self.tally = SinkTally()
        self._next_health_at = clock() + HEALTH_INTERVAL_SECS

    # --- rebalance callbacks (run inside consume()) ---------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned |= keys
        log.info("assigned %s", _names(keys))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        # Paused during a database outage? Resume while still assigned, so no pause flag can
        # linger should the partition come back to this consumer later.
        with contextlib.suppress(KafkaException):
            consumer.resume(partitions)
        dropped = self._buffer.drop(keys)
        if self._inflight is not None:
            dropped += self._inflight.drop(keys)
        self._assigned -= keys
        self._lag.forget(keys)
        if dropped:
            log.info("revoked %s; dropped %d uncommitted message(s), the next owner re-reads them",
                     _names(keys), dropped)
        else:
            log.info("revoked %s", _names(keys))

    # --- main loop ------------------------------------------------------------------------------

    def run(self) -> None:
        kafka = self.settings.kafka
        self._consumer.subscribe(
            [kafka.rollups_topic, kafka.table_stats_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        sinks = self.settings.sinks
        while not self._stop.is_set():
            now = self._clock()
            timeout = _POLL_SLICE_SECS
            if self._buffer.first_at is not None:
                due = self._buffer.first_at + sinks.batch_timeout_secs
                timeout = max(0.0, min(timeout, due - now))
            room = max(1, sinks.batch_size - self._buffer.messages)
            for msg in self._consumer.consume(num_messages=min(room, 10_000), timeout=timeout):
                self._handle(msg)
            if self._buffer.ready(self._clock(), sinks.batch_size, sinks.batch_timeout_secs):
                self._flush()
            self._housekeeping()
        if self._buffer:
            log.info("stopping: writing the pending batch once")
            self._flush(final=True)

    def _handle(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return
            if err.fatal():
                raise SinkError(f"fatal Kafka consumer error: {err}")
            log.warning("consumer error: %s", err)
            return
        topic, partition = msg.topic(), msg.partition()
        if (topic, partition) not in self._assigned:
            return  # a straggler of a partition revoked meanwhile: its next owner reads it
        source = Source(topic, partition, msg.offset(), msg.key(), msg.value())
        now = self._clock()
        expected = self._expected.get(topic)
        try:
            record = self._codec.decode(source.value, expected=expected)
            if expected == TABLE_STATS:
                self._buffer.add_table_stats(
                    source, TableStatsRow.from_record(record, limits=self._limits), now
                )
            else:
                self._buffer.add_rollup(
                    source, RollupRow.from_record(record, limits=self._limits), now
                )
        except (DecodeError, InvalidRecord) as exc:
            letter = DeadLetter(source, exc.reason, exc.detail)
            self._dead_letters.produce(letter)
            self.tally.dead_letter(exc.reason)
            self._buffer.add_dead_letter(letter, now)

    # --- writing --------------------------------------------------------------------------------

    def _flush(self, *, final: bool = False) -> None:
        batch, self._buffer = self._buffer, Batch()
        self._inflight = batch
        try:
            written = self._write_with_retry(batch, final=final)
        finally:
            self._inflight = None
        if written:
            self._commit(batch)
        elif batch:
            # Messages of these partitions read meanwhile (during the back-off) come after the
            # dropped ones: committing them would commit past unwritten data. Drop them too.
            dropped = self._buffer.drop(set(batch.parts))
            if dropped:
                log.info("dropped %d later message(s) of the same partitions", dropped)

    def _write_with_retry(self, batch: Batch, *, final: bool) -> bool:
        delay = INITIAL_BACKOFF_SECS
        paused = False
        try:
            while batch:
                try:
                    self._dead_letters.deliver(batch.dead_letters())
                    self._write(batch)
                    return True
                except WriteFailed as exc:
                    RETRIES.inc()
                    self.tally.retries += 1
                    if final or self._stop.is_set():
                        log.warning("dropping the uncommitted batch (%d message(s), re-delivered "
                                    "on restart): %s", batch.messages, exc)
                        return False
                    log.warning("batch of %d message(s) not written, retrying in %.1fs: %s",
                                batch.messages, delay, exc)
                    if not paused:
                        self._consumer.pause(self._consumer.assignment())
                        paused = True
                    self._wait(delay)
                    delay = min(delay * 2, MAX_BACKOFF_SECS)
                    if self._stop.is_set():
                        log.warning("stopping: dropping the uncommitted batch (%d message(s), "
                                    "re-delivered on restart)", batch.messages)
                        return False
            return False  # every partition of the batch was revoked meanwhile
        finally:
            if paused:
                self._consumer.resume(self._consumer.assignment())

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds`` while serving the consumer (group membership, rebalances)."""
        deadline = self._clock() + seconds
        while not self._stop.is_set():
            left = deadline - self._clock()
            if left <= 0:
                return
            # Partitions assigned by a rebalance during the outage arrive unpaused.
            self._consumer.pause(self._consumer.assignment())
            slice_secs = min(left, _POLL_SLICE_SECS)
            for msg in self._consumer.consume(num_messages=1000, timeout=slice_secs):
                self._handle(msg)  # goes to the next batch, after the in-flight one
            self._housekeeping()

    def _write(self, batch: Batch) -> None:
        rollups = batch.rollup_items()
        stats = batch.table_stats_items()
        if not rollups and not stats:
            return
        try:
            self.tally.wrote(self._writer.write([r for _, r in rollups], [s for _, s in stats]))
            BATCHES.inc()
            self.tally.batches += 1
            self._after_write()
            return
        except RecordRejected as exc:
            log.warning("the database refused a batch of %d row(s) (%s); isolating the culprit",
                        len(rollups) + len(stats), exc)
        # Row by row (each its own transaction, idempotent like the whole): the rows PostgreSQL
        # refuses become dead letters, the others are written. A WriteFailed here propagates and
        # the whole batch is retried; rows rejected so far are no longer in it.
        for source, rollup in rollups:
            self._write_one(batch, source, rollups=[rollup])
        for source, table_stats in stats:
            self._write_one(batch, source, table_stats=[table_stats])
        self._dead_letters.deliver(batch.dead_letters())
        BATCHES.inc()
        self.tally.batches += 1
        self._after_write()

    def _write_one(
        self,
        batch: Batch,
        source: Source,
        *,
        rollups: Iterable[RollupRow] = (),
        table_stats: Iterable[TableStatsRow] = (),
    ) -> None:
        try:
            self.tally.wrote(self._writer.write(rollups, table_stats))
        except RecordRejected as exc:
            letter = DeadLetter(source, "rejected", f"refused by PostgreSQL: {exc.detail}")
            batch.reject(source, letter)
            self._dead_letters.produce(letter)
            self.tally.dead_letter("rejected")

    def _commit(self, batch: Batch) -> None:
        offsets = [
            TopicPartition(topic, partition, part.next_offset)
            for (topic, partition), part in sorted(batch.parts.items())
            if (topic, partition) in self._assigned and part.next_offset >= 0
        ]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The rows are durable; an uncommitted offset only means a re-delivery that the
            # upserts absorb. Not a reason to stop.
            log.warning("offset commit failed (the batch may be re-delivered): %s", exc)
            return
        self._lag.committed(offsets)

    # --- housekeeping ---------------------------------------------------------------------------

    def _after_write(self) -> None:
        # The database just answered: a good moment to keep the coming days' partitions ready so
        # the write path rarely needs DDL. Failures are only logged (the writer retries anyway).
        now = self._clock()
        if now < self._next_upkeep_at:
            return
        self._next_upkeep_at = now + PARTITION_UPKEEP_SECS
        today = datetime.now(UTC)
        try:
            self._writer.ensure_partitions(today, today + timedelta(days=UPKEEP_DAYS_AHEAD + 1))
        except WriteFailed as exc:
            log.warning("could not pre-create partitions: %s", exc)

    def _housekeeping(self) -> None:
        now = self._clock()
        if now >= self._next_health_at:
            self._next_health_at = now + HEALTH_INTERVAL_SECS
            log.info("%s", self.tally.line(self.lag()))
            self.tally = SinkTally()
        if now < self._next_lag_at:
            return
        self._next_lag_at = now + LAG_INTERVAL_SECS
        try:
            self._lag.update(self._assigned)
        except KafkaException as exc:  # the broker is away: keep the last values
            log.debug("consumer lag not updated: %s", exc)


    def lag(self) -> int | None:
        """Total lag of the assigned partitions as last measured (None: not measured yet)."""
        total: int | None = None
        for metric in CONSUMER_LAG.collect():  # the gauge is shared by the sinks of a process
            for sample in metric.samples:
                key = (sample.labels.get("topic", ""), int(sample.labels.get("partition", -1)))
                if key in self._assigned:
                    total = (total or 0) + int(sample.value)
        return total


def _names(keys: set[TopicPartitionKey]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(keys)) or "nothing"


def _check_database(settings: Settings) -> None:
    """Refuse an unmigrated metrics database at once; only warn about an unreachable one."""
    try:
        require_migrated(settings.database_url, application_name="fraiseql-sink",
                         connect_timeout=settings.database.timeout_secs)
    except DatabaseUnreachable as exc:
        log.warning("%s; writes wait for it (retried with back-off)", exc)


def _ensure_topics_at_start(settings: Settings, stop: threading.Event) -> bool:
    """Wait for the broker at most ``kafka.startup_timeout_secs`` (saying why every few seconds),
    then create missing topics; False when stopped meanwhile."""
    kafka = settings.kafka
    if not wait_for_kafka(kafka, budget_secs=kafka.startup_timeout_secs, stop=stop):
        return False
    ensure_topics(kafka, [kafka.rollups_topic, kafka.table_stats_topic, kafka.dead_letters_topic])
    return True


def _no_op() -> None:
    return None


def _install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT set ``stop`` (main thread only); returns a function restoring the old ones."""
    if threading.current_thread() is not threading.main_thread():
        return _no_op

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d received: stopping after the current batch", signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def run_sink(settings: Settings, *, stop: threading.Event | None = None) -> None:
    """Run one sink worker until ``stop`` is set (or SIGTERM/SIGINT when called without one).

    Does not serve ``/metrics``: the CLI does (several sinks can share one process).
    """
    restore = _no_op
    if stop is None:
        stop = threading.Event()
        restore = _install_signal_handlers(stop)
    try:
        log.info("%s", startup_line(settings))
        _check_database(settings)
        if not _ensure_topics_at_start(settings, stop):
            return
        limits = RecordLimits(
            # Accept whatever the stream stage accepted (plus a day of window slack).
            max_age=timedelta(days=max(400.0, settings.streams.max_age_days + 1)),
        )
        writer = RollupWriter.from_settings(settings.database, limits=limits)
        consumer = Consumer(consumer_config(settings))
        producer = Producer(producer_config(settings.kafka, **{"linger.ms": 5}))
        try:
            SinkWorker(
                settings, consumer, producer, writer, stop=stop, admin=admin_client(settings.kafka)
            ).run()
        finally:
            consumer.close()  # leaves the group at once; commits nothing
            remaining = producer.flush(DEAD_LETTER_FLUSH_SECS)
            if remaining:
                log.warning("%d dead letter(s) still unacknowledged at exit; their offsets were "
                            "not committed, so they will be dead-lettered again", remaining)
            writer.close()
    finally:
        restore()
