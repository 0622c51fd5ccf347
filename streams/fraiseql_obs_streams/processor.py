"""The stream worker's processing core: Kafka messages in, rollups and dead letters out.

It owns one :class:`~fraiseql_obs_streams.windowing.PartitionWindows` per assigned partition and
implements the checkpoint protocol of ``streams/DESIGN.md``: after every batch, close ready
windows, produce their rollups, wait for Kafka's acknowledgement, and only then commit
``(commit_offset, metadata)``. Dead letters are built by the core's
:func:`~fraiseql_observability.deadletter.dead_letter_record`, like the sink's.
The consumer loop that feeds it lives in :mod:`fraiseql_obs_streams.worker`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client import Counter, Gauge, Histogram

from fraiseql_observability.codec import DEAD_LETTER, QUERY_ROLLUP, Codec
from fraiseql_observability.config import Settings
from fraiseql_observability.deadletter import dead_letter_record
from fraiseql_observability.errors import DecodeError
from fraiseql_observability.timeutil import MICROS, now_micros

from .decoding import QueryEventDecoder
from .errors import StreamError
from .validation import invalid_reason
from .windowing import Checkpoint, Outcome, PartitionWindows

__all__ = ["BatchResult", "StreamProcessor", "TopicPartitionKey"]


def _batch_detail(found: list[tuple[int, str]], n: int) -> str:
    """``event index 7 of 21: <why>``, or for several ``event indexes 3, 8 of 21 (2 events):
    <why of the first>`` (the dead-letter builder caps the length; the count stays in front)."""
    index, why = found[0]
    if len(found) == 1:
        return f"event index {index} of {n}: {why}"
    indexes = ", ".join(str(i) for i, _ in found[:200])
    more = ", ..." if len(found) > 200 else ""
    return f"event indexes {indexes}{more} of {n} ({len(found)} events): {why}"

log = logging.getLogger(__name__)

EVENTS_IN = Counter("fraiseql_stream_events_total", "Query events consumed by the stream worker")
EVENTS_COUNTED = Counter("fraiseql_stream_events_counted_total",
                         "Events counted: into their window or into a correction of it")
LATE = Counter("fraiseql_events_late_total",
               "Events whose window had already closed, counted in a correction rollup")
LATENESS = Histogram("fraiseql_events_lateness_seconds",
                     "How long after its window closed a late event arrived",
                     buckets=(1, 10, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, float("inf")))
DEAD_LETTERED = Counter("fraiseql_events_dead_lettered_total", "Messages sent to the dead-letter topic",
                        ["stage", "reason"])
WINDOWS_OPEN = Gauge("fraiseql_stream_windows_open", "Open event-time windows held by this worker")
WINDOWS_CLOSED = Counter("fraiseql_stream_windows_closed_total", "Windows closed and published as rollups")
WATERMARK_DELAY = Gauge("fraiseql_stream_watermark_delay_seconds",
                        "Wall clock minus the partition's watermark", ["topic", "partition"])
CONSUMER_LAG = Gauge("fraiseql_stream_consumer_lag", "High watermark minus position",
                     ["topic", "partition"])
CHECKPOINTS = Counter("fraiseql_stream_checkpoints_total", "Checkpoints committed")

# librdkafka: how long flush() waits per attempt before we look at the stop flag again.
_FLUSH_SLICE_SECS: Final = 1.0


@dataclass
class BatchResult:
    """What one call of :meth:`StreamProcessor.process` did with its messages."""

    consumed: int = 0  # messages (a QueryEventBatch is one)
    events: int = 0  # events in them (an undecodable message counts as one)
    counted: int = 0  # into a window or a correction (re-read offsets not included)
    corrected: int = 0  # of those, late: into a correction
    dead_letters: int = 0


TopicPartitionKey = tuple[str, int]


@dataclass
class Tally:
    """What the worker did since its last health line (``fraiseql-cli stream`` logs one a minute)."""

    events: int = 0
    counted: int = 0
    corrected: int = 0
    rollups: int = 0
    dead: dict[str, int] = field(default_factory=dict)
    lag: int = 0

    def line(self) -> str:
        dead = ", ".join(f"{reason} {n}" for reason, n in sorted(self.dead.items())) or "none"
        return (f"health: events in {self.events}, counted {self.counted} (late-corrected "
                f"{self.corrected}), dead-lettered {sum(self.dead.values())} ({dead}), rollups "
                f"written {self.rollups}, lag {self.lag}")


class StreamProcessor:
    """Per-partition windows plus the produce-then-checkpoint protocol."""

    def __init__(
        self,
        settings: Settings,
        producer: Producer,
        codec: Codec,
        *,
        stage: str = "stream",
        now_us: Callable[[], int] | None = None,
        dead_letters: bool = True,
        keep: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """``dead_letters=False`` and ``keep`` serve replays: the live worker already dead-lettered
        bad input, and a replay publishes only the windows of its interval."""
        self.settings = settings
        self.producer = producer
        self.codec = codec
        self._decoder = QueryEventDecoder(codec)
        self.stage = stage
        self.dead_letters = dead_letters
        self.keep = keep
        self.now_us = now_us or now_micros
        streams = settings.streams
        self.window_us = streams.window_secs * MICROS
        self.grace_us = int(streams.grace_secs * MICROS)
        self.max_future_us = int(streams.max_future_secs * MICROS)
        self.max_age_us = int(streams.max_age_days * 86400 * MICROS)
        self.expired_us = settings.retention_days * 86400 * MICROS
        self.slot_us = streams.late_slot_secs * MICROS
        self._create_time_warned: set[TopicPartitionKey] = set()
        self.tally = Tally()
        self.partitions: dict[TopicPartitionKey, PartitionWindows] = {}
        self.idle_us = int(streams.idle_secs * MICROS)
        self._delivery_errors: list[str] = []
        self._dirty: set[TopicPartitionKey] = set()
        self._last_message_us: dict[TopicPartitionKey, int] = {}

    # --- assignment ---------------------------------------------------------------------------

    def assign(self, consumer: Consumer, partitions: Sequence[TopicPartition]) -> list[TopicPartition]:
        """Rebuild state for newly assigned partitions; returns them positioned at their checkpoint
        (the native engine keeps it in the committed offset's metadata)."""
        committed = consumer.committed(list(partitions), timeout=30) if partitions else []
        positioned: list[TopicPartition] = []
        for tp in committed:
            if tp.error is not None:
                raise StreamError(f"cannot read checkpoint of {tp.topic}[{tp.partition}]: {tp.error}")
            start = self.restore(tp.topic, tp.partition, tp.metadata)
            positioned.append(TopicPartition(tp.topic, tp.partition, start))
        return positioned

    def restore(self, topic: str, partition: int, metadata: str | None) -> int:
        """Rebuild one partition's state from its checkpoint text (None: none); returns the offset
        consumption must restart from (``OFFSET_BEGINNING`` without a checkpoint)."""
        checkpoint = None
        if metadata:
            try:
                checkpoint = Checkpoint.decode(metadata)
            except ValueError:
                log.warning("ignoring unreadable checkpoint %r of %s[%d]", metadata, topic, partition)
        self.partitions[(topic, partition)] = PartitionWindows(
            topic, partition, window_us=self.window_us, grace_us=self.grace_us,
            slot_us=self.slot_us, checkpoint=checkpoint,
        )
        self._dirty.discard((topic, partition))
        log.info("assigned %s[%d] from %s", topic, partition,
                 checkpoint.encode() if checkpoint else "the beginning")
        # No checkpoint: start at the beginning. A committed offset without our metadata was not
        # written by this protocol and cannot be trusted to cover open windows.
        return checkpoint.commit_offset if checkpoint else OFFSET_BEGINNING

    def revoke(self, partitions: Sequence[TopicPartition]) -> None:
        """Forget revoked partitions: the next owner rebuilds them from the last checkpoint."""
        for tp in partitions:
            self.partitions.pop((tp.topic, tp.partition), None)
            self._dirty.discard((tp.topic, tp.partition))
            # Another worker reports these partitions now: stale gauges would double-count lag.
            for gauge in (CONSUMER_LAG, WATERMARK_DELAY):
                with contextlib.suppress(KeyError):
                    gauge.remove(tp.topic, str(tp.partition))
        WINDOWS_OPEN.set(sum(p.open_windows for p in self.partitions.values()))

    # --- processing ---------------------------------------------------------------------------

    def process(self, messages: Sequence[Message]) -> BatchResult:
        """Fold a batch of messages into the windows; dead-letter what cannot count.

        This is the per-event hot path (SPEC: 50k events/s per worker). A batch from ``consume``
        arrives in runs of one partition, so the partition's state is looked up once per run.
        """
        result = BatchResult()
        now_us = self.now_us()
        decode = self._decoder.decode_message
        reject = self._reject
        corrected = Outcome.CORRECTED
        consumed = in_batches = counted = late = 0
        current: TopicPartitionKey | None = None
        windows: PartitionWindows | None = None
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
                continue
            key = (msg.topic(), msg.partition())
            if key != current:
                current = key
                windows = self.partitions.get(key)
                if windows is not None:
                    self._dirty.add(key)
                    self._last_message_us[key] = now_us
                    self._check_timestamp_type(key, msg)
            if windows is None:  # a message from a partition revoked meanwhile
                continue
            consumed += 1
            offset = msg.offset()
            sent_ms = msg.timestamp()[1]
            arrival = sent_ms * 1000 if sent_ms is not None and sent_ms > 0 else None
            try:
                event = decode(msg.value())
            except DecodeError as exc:
                windows.skip(offset, arrival)
                if not windows.is_replay(offset):
                    self._dead_letter(msg, exc.reason, exc.detail, result)
                continue
            if isinstance(event, list):  # a QueryEventBatch
                n = len(event)
                in_batches += n - 1  # the message is counted once below
                batch_counted, batch_late = self._process_batch(msg, event, windows, arrival, result)
                counted += batch_counted
                late += batch_late
                continue
            rejection = reject(event, arrival)
            if rejection is not None:
                windows.skip(offset, arrival)
                if not windows.is_replay(offset):
                    self._dead_letter(msg, *rejection, result)
                continue
            # No broker timestamp (a message format before 0.10): the event's own time stands in.
            outcome = windows.add(offset, event, event["occurred_at"] if arrival is None else arrival)
            if offset < windows.replay_until:
                continue  # counted before the checkpoint; re-read only to rebuild open windows
            counted += 1
            if outcome is corrected:
                late += 1
                LATENESS.observe(windows.lateness(event["occurred_at"]) / MICROS)
        events = consumed + in_batches
        result.consumed, result.events, result.counted, result.corrected = (
            consumed, events, counted, late)
        if consumed:
            EVENTS_IN.inc(events)
            EVENTS_COUNTED.inc(counted)
            LATE.inc(late)
            tally = self.tally
            tally.events += events
            tally.counted += counted
            tally.corrected += late
        return result

    def _process_batch(self, msg: Message, events: list[dict[str, Any]], windows: PartitionWindows,
                       arrival: int | None, result: BatchResult) -> tuple[int, int]:
        """Fold the events of one ``QueryEventBatch`` message: they share its offset and arrival.
        Returns (counted, late). Events that must not count are dead-lettered with the whole
        message's bytes and their index in the detail (``event index i of n``); the others count.
        Several rejected for one reason share one dead letter (all their indexes in the detail):
        a batch of a host whose clock is an hour fast must not copy a 900 KB message per event."""
        offset = msg.offset()
        n = len(events)
        if n == 0:
            windows.skip(offset, arrival)
            return 0, 0
        replay = windows.is_replay(offset)
        reject = self._reject
        add = windows.add
        corrected = Outcome.CORRECTED
        counted = late = 0
        rejected: dict[str, list[tuple[int, str]]] | None = None  # reason -> (index, detail)
        for index, event in enumerate(events):
            rejection = reject(event, arrival)
            if rejection is not None:
                windows.skip(offset, arrival, False)
                if rejected is None:
                    rejected = {}
                rejected.setdefault(rejection[0], []).append((index, rejection[1]))
                continue
            outcome = add(offset, event, event["occurred_at"] if arrival is None else arrival, False)
            if replay:
                continue  # counted before the checkpoint; re-read only to rebuild open windows
            counted += 1
            if outcome is corrected:
                late += 1
                LATENESS.observe(windows.lateness(event["occurred_at"]) / MICROS)
        # After the last event only: at the checkpoint's position the clock it saved (maybe with an
        # idle advance) applies to the messages after this one, not to the rest of this one.
        windows.settle()
        if rejected is not None and not replay:
            for reason, found in rejected.items():
                self._dead_letter(msg, reason, _batch_detail(found, n), result, events=len(found))
        return counted, late

    def _check_timestamp_type(self, key: TopicPartitionKey, msg: Message) -> None:
        """Say once per partition when its timestamps are the producers' clocks, not the broker's."""
        if key in self._create_time_warned or msg.timestamp()[0] != TIMESTAMP_CREATE_TIME:
            return
        self._create_time_warned.add(key)
        log.info("%s[%d] carries producer timestamps (CreateTime): its watermark follows the "
                 "producers' clocks. Topics this project creates use the broker's "
                 "(message.timestamp.type=LogAppendTime), and MirrorMaker 2 keeps the source "
                 "broker's; set that on a topic created by hand.", key[0], key[1])

    def _reject(self, event: dict[str, Any], arrival: int | None) -> tuple[str, str] | None:
        """(dead-letter reason, detail) for an event that must not count, else None.

        Timestamps are judged against the Kafka message's timestamp (the broker's append time on
        our topics), not this worker's clock: a replay then makes exactly the same decisions.
        Late is not a reason: a late event is counted in a correction of its window.
        """
        detail = invalid_reason(event)
        if detail is not None:
            return "invalid", detail
        if arrival is None:
            return None
        occurred_at: int = event["occurred_at"]
        if arrival - self.expired_us <= occurred_at <= arrival + self.max_future_us:
            return None
        if occurred_at > arrival:
            ahead = (occurred_at - arrival) / MICROS
            return "future_timestamp", f"occurred_at is {ahead:.0f}s after the message's timestamp"
        if occurred_at < arrival - self.max_age_us:
            days = self.settings.streams.max_age_days
            return "too_old", f"occurred_at is more than {days:g} days before the message's timestamp"
        return "expired", (f"occurred_at is more than retention_days = {self.settings.retention_days} "
                           "days before the message's timestamp: no storage keeps its window")

    def flush_and_checkpoint(
        self, consumer: Consumer, stop: Callable[[], bool], *, close_all: bool = False
    ) -> int:
        """Publish ready windows, wait for Kafka's ack, then commit checkpoints (as offsets with
        metadata, the native engine's store). Returns rollups sent.

        The order is the protocol: a checkpoint taken before its closed windows are published and
        acknowledged would make a restart treat their events as handled, losing the windows.
        """
        sent, checkpoints = self.publish_and_checkpoint(stop, close_all=close_all)
        if checkpoints:
            consumer.commit(offsets=[TopicPartition(t, p, cp.commit_offset, metadata=cp.encode())
                                     for (t, p), cp in checkpoints], asynchronous=False)
            CHECKPOINTS.inc(len(checkpoints))
        return sent

    def publish_and_checkpoint(
        self, stop: Callable[[], bool], *, close_all: bool = False
    ) -> tuple[int, list[tuple[TopicPartitionKey, Checkpoint]]]:
        """Publish the ready windows of the partitions that changed, wait for Kafka's ack, and
        return (rollups sent, their checkpoints): the engine stores those before it lets the
        consumer's offsets move (``streams/DESIGN.md``)."""
        dirty = sorted(self._dirty)
        sent = self.publish(dirty, stop, close_all=close_all)
        checkpoints = []
        now_s = self.now_us() / MICROS
        for key in dirty:
            windows = self.partitions[key]
            checkpoints.append((key, windows.checkpoint()))
            if windows.watermark is not None:
                WATERMARK_DELAY.labels(key[0], str(key[1])).set(now_s - windows.watermark / MICROS)
        self._dirty.clear()
        return sent, checkpoints

    def publish(self, keys: Sequence[TopicPartitionKey], stop: Callable[[], bool], *,
                close_all: bool = False) -> int:
        """Close ready (or all) windows of ``keys``, produce the rollups ``keep`` accepts, and wait
        until Kafka acknowledged them. Returns the number of rollups sent."""
        sent = 0
        for key in keys:
            windows = self.partitions[key]
            for rollup in windows.close_all() if close_all else windows.close_ready():
                if self.keep is not None and not self.keep(rollup.record):
                    continue
                self._produce(self.settings.kafka.rollups_topic, rollup.fingerprint.encode(),
                              self.codec.encode(QUERY_ROLLUP, rollup.record))
                sent += 1
        self._wait_delivered(stop)
        WINDOWS_CLOSED.inc(sent)
        self.tally.rollups += sent
        WINDOWS_OPEN.set(sum(p.open_windows for p in self.partitions.values()))
        return sent

    def advance_idle_partitions(self, consumer: Consumer) -> None:
        """Close the windows of partitions that are caught up and have been quiet for idle_secs."""
        self.advance_idle(self._positions(consumer), lambda key: self._high_watermark(consumer, key))

    def advance_idle(self, positions: dict[TopicPartitionKey, int],
                     high: Callable[[TopicPartitionKey], int | None]) -> None:
        """:meth:`advance_idle_partitions` for any engine: ``positions`` are the consumer's fetch
        positions (may be partial), ``high`` a partition's high watermark (None: unknown)."""
        now_us = self.now_us()
        for key, windows in self.partitions.items():
            quiet_since = self._last_message_us.setdefault(key, now_us)
            if now_us - quiet_since < self.idle_us or windows.open_windows == 0:
                continue
            high_offset = high(key)
            caught_up = high_offset is not None and positions.get(key, windows.position) >= high_offset
            log.debug("idle check %s[%d]: position %s, high %s, open %d", key[0], key[1],
                      positions.get(key), high_offset, windows.open_windows)
            if caught_up and windows.advance_idle(now_us - self.idle_us):
                self._dirty.add(key)

    def update_lag(self, consumer: Consumer) -> None:
        self.record_lag(self._positions(consumer), lambda key: self._high_watermark(consumer, key))

    def record_lag(self, positions: dict[TopicPartitionKey, int],
                   high: Callable[[TopicPartitionKey], int | None]) -> None:
        """Set the lag gauges (see :meth:`advance_idle` for the arguments)."""
        total = 0
        for key, windows in list(self.partitions.items()):
            high_offset = high(key)
            if high_offset is not None:
                position = positions.get(key, windows.position)
                CONSUMER_LAG.labels(key[0], str(key[1])).set(max(0, high_offset - position))
                total += max(0, high_offset - position)
        self.tally.lag = total

    def _positions(self, consumer: Consumer) -> dict[TopicPartitionKey, int]:
        """librdkafka's fetch positions: unlike "last record + 1" they step over transaction
        markers (MirrorMaker 2 in exactly-once mode writes them), so a caught-up partition's
        position equals its high watermark."""
        try:
            found = consumer.position([TopicPartition(t, p) for t, p in self.partitions])
        except Exception:  # any failure: fall back to our own positions
            return {}
        return {(tp.topic, tp.partition): max(tp.offset, self.partitions[(tp.topic, tp.partition)].position)
                for tp in found if tp.offset >= 0 and (tp.topic, tp.partition) in self.partitions}

    @staticmethod
    def _high_watermark(consumer: Consumer, key: TopicPartitionKey) -> int | None:
        """The high watermark from the last fetch response (cached: a broker query would wait
        behind the consumer's fetch long-poll). None when unknown: treated as "not caught up"."""
        try:
            _low, high = consumer.get_watermark_offsets(TopicPartition(*key), cached=True)
        except Exception:
            return None
        return int(high) if high is not None and high >= 0 else None

    # --- producing ------------------------------------------------------------------------------

    def _dead_letter(self, msg: Message, reason: str, detail: str, result: BatchResult, *,
                     events: int = 1) -> None:
        """One dead letter of ``msg`` standing for ``events`` events (several of one batch)."""
        result.dead_letters += events
        self.tally.dead[reason] = self.tally.dead.get(reason, 0) + events
        if not self.dead_letters:
            return
        record = dead_letter_record(
            stage=self.stage, reason=reason, detail=detail, topic=msg.topic(),
            partition=msg.partition(), offset=msg.offset(), key=msg.key(), value=msg.value(),
            failed_at=self.now_us(),
        )
        value = self.codec.encode(DEAD_LETTER, record)
        self._produce(self.settings.kafka.dead_letters_topic, msg.key(), value)
        DEAD_LETTERED.labels(self.stage, reason).inc()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err}")

    def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self.producer.poll(0.1)

    def deliver(self, topic: str, records: Sequence[tuple[bytes | None, bytes]],
                stop: Callable[[], bool]) -> None:
        """Produce ``(key, value)`` records and wait until Kafka acknowledged every one (the Faust
        engine's checkpoints go through here, on the same producer as the rollups)."""
        for key, value in records:
            self._produce(topic, key, value)
        self._wait_delivered(stop)

    def _wait_delivered(self, stop: Callable[[], bool]) -> None:
        """Block until every produced message is acknowledged (the broker may be restarting)."""
        while self.producer.flush(_FLUSH_SLICE_SECS) > 0:
            if stop():
                raise StreamError("stopped while rollups were still undelivered; they will be "
                                  "re-emitted from the last checkpoint")
        if self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors, []
            raise StreamError(f"{len(errors)} message(s) not delivered, first: {errors[0]}")
