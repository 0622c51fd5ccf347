"""Replay / backfill (``fraiseql-cli replay --from TIME [--to TIME]``).

Recomputes every rollup of the windows that start in ``[from, to)`` — the windows themselves and
their corrections (late events) — from the events topic, and publishes them to the rollups topic,
where the sink upserts them by rollup id. The windowing is the live worker's
(:mod:`fraiseql_obs_streams.windowing`): decisions depend only on the partition's content, so a
replayed rollup gets the live one's id and numbers, and replaying twice, or over what the live
pipeline already wrote, changes nothing.

Where to read: for each partition, from the first message whose (broker) timestamp is at or after
``from − max_future − grace − margin`` (no earlier message can hold an event of the interval, and
the margin lets the partition clock build up as the live worker's did) to the end of the
partition: a late event of the interval may have arrived at any time since. Only complete
aggregates are published: closed by the clock, or, at the end, by the live worker's idle rule
(``clock − idle_secs``). Those still open are the live worker's to publish. The replay uses its
own consumer (no group membership, no committed offsets) and never dead-letters: the live worker
already did.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, TopicPartition

from fraiseql_observability.codec import default_codec
from fraiseql_observability.config import Settings
from fraiseql_observability.timeutil import MICROS, to_micros

from .errors import ReplayError
from .processor import StreamProcessor
from .windowing import PartitionWindows
from .worker import consumer_config, stream_producer

__all__ = ["ReplayProgress", "ReplayReport", "replay", "terminal_progress"]

log = logging.getLogger(__name__)


@dataclass
class ReplayProgress:
    done: int
    total: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


@dataclass(frozen=True)
class ReplayReport:
    partitions: int
    events_read: int
    rollups_published: int
    dead_letters_skipped: int
    late_corrected: int
    seconds: float

    def summary(self) -> str:
        return (f"replayed {self.events_read:,} events from {self.partitions} partitions in "
                f"{self.seconds:.1f}s: {self.rollups_published:,} rollups published "
                f"({self.late_corrected:,} late events in corrections; {self.dead_letters_skipped:,} "
                "bad events skipped, as the live worker dead-lettered them)")


def _event_partitions(consumer: Consumer, pattern: str) -> list[TopicPartition]:
    """Every partition of the topic ``pattern`` names (or, for "^…", of the topics it matches)."""
    topics = consumer.list_topics(timeout=30).topics
    if pattern.startswith("^"):
        regex = re.compile(pattern)
        names = sorted(t for t in topics if regex.search(t))
    elif pattern in topics:
        names = [pattern]
    else:
        raise ReplayError(f"topic {pattern} does not exist")
    return [TopicPartition(t, p) for t in names for p in sorted(topics[t].partitions)]


def _offsets_at(consumer: Consumer, partitions: list[TopicPartition], ts_ms: int) -> list[int]:
    """First offset whose message timestamp is >= ts_ms; the end offset when there is none."""
    query = [TopicPartition(tp.topic, tp.partition, ts_ms) for tp in partitions]
    found = consumer.offsets_for_times(query, timeout=30)
    out = []
    for tp, res in zip(partitions, found, strict=True):
        if res.error is not None:
            raise ReplayError(f"offsets_for_times {tp.topic}[{tp.partition}]: {res.error}")
        if res.offset < 0:  # no message that late: the end of the partition
            _low, high = consumer.get_watermark_offsets(tp, timeout=30)
            out.append(int(high))
        else:
            out.append(int(res.offset))
    return out


def replay(
    settings: Settings,
    start: datetime,
    end: datetime,
    *,
    progress: Callable[[ReplayProgress], None] | None = None,
    stop: threading.Event | None = None,
) -> ReplayReport:
    """Recompute and publish the rollups of the windows in ``[start, end)``."""
    began = time.monotonic()
    stop = stop or threading.Event()
    window_us = settings.streams.window_secs * MICROS
    start_us = to_micros(start)
    end_us = to_micros(end)
    first_window = -(-start_us // window_us) * window_us  # windows starting at or after `start`
    streams = settings.streams
    lead_us = int((streams.max_future_secs + streams.grace_secs + streams.window_secs
                   + settings.metrics.flush_interval_secs) * MICROS)

    def in_interval(record: dict[str, Any]) -> bool:
        return bool(record["window_start"] >= first_window and record["window_end"] <= end_us)

    consumer = Consumer({**consumer_config(settings, f"{settings.streams.group_id}-replay"),
                         "enable.partition.eof": True})
    producer = stream_producer(settings)
    processor = StreamProcessor(settings, producer, default_codec(), stage="replay",
                                dead_letters=False, keep=in_interval)
    try:
        partitions = _event_partitions(consumer, settings.kafka.events_topic)
        if not partitions:
            raise ReplayError(f"no partitions match {settings.kafka.events_topic}")
        begin = _offsets_at(consumer, partitions, (start_us - lead_us) // 1000)
        finish = [int(consumer.get_watermark_offsets(tp, timeout=30)[1]) for tp in partitions]
        todo = {(tp.topic, tp.partition): (b, f) for tp, b, f in zip(partitions, begin, finish, strict=True)
                if f > b}
        total = sum(f - b for b, f in todo.values())
        for (topic, partition), (b, _f) in todo.items():
            windows = PartitionWindows(topic, partition, window_us=processor.window_us,
                                       grace_us=processor.grace_us, slot_us=processor.slot_us)
            windows.position = b
            processor.partitions[(topic, partition)] = windows
        consumer.incremental_assign([TopicPartition(t, p, b) for (t, p), (b, _f) in todo.items()])
        log.info("replaying %d events from %d partitions", total, len(todo))

        done = 0
        published = 0
        skipped = 0
        corrected = 0
        remaining = dict(todo)
        last_report = 0.0
        while remaining and not stop.is_set():
            messages = consumer.consume(settings.streams.batch_size, 1.0)
            batch = []
            for msg in messages:
                key = (msg.topic(), msg.partition())
                if key not in remaining:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:  # the end came early
                        remaining.pop(key, None)
                    continue
                end_offset = remaining[key][1]
                if msg.offset() < end_offset:
                    batch.append(msg)
                if msg.offset() + 1 >= end_offset:  # the partition's part of the interval is read
                    remaining.pop(key)
                    consumer.incremental_unassign([TopicPartition(*key)])
            if batch:
                result = processor.process(batch)
                done += result.consumed
                skipped += result.dead_letters
                corrected += result.corrected
            published += processor.publish(sorted(processor.partitions), stop.is_set)
            if progress and (time.monotonic() - last_report > 0.5 or not remaining):
                progress(ReplayProgress(done, total, time.monotonic() - began))
                last_report = time.monotonic()
        if stop.is_set():
            raise ReplayError("replay interrupted; run it again (it is idempotent)")
        # The end of the topic: what the live worker's idle rule has closed by now is complete too.
        idle_until = processor.now_us() - processor.idle_us
        for windows in processor.partitions.values():
            windows.advance_idle(idle_until)
        published += processor.publish(sorted(processor.partitions), stop.is_set)
    finally:
        consumer.close()
        producer.flush(30)
    return ReplayReport(len(todo), done, published, skipped, corrected, time.monotonic() - began)


def terminal_progress(stream: TextIO = sys.stderr) -> Callable[[ReplayProgress], None]:
    """A progress bar with rate and ETA on a terminal; a plain line every 5 s otherwise."""
    tty = stream.isatty()
    state = {"last": 0.0}

    def show(p: ReplayProgress) -> None:
        fraction = p.done / p.total if p.total else 1.0
        eta = "?" if p.eta is None else time.strftime("%H:%M:%S", time.gmtime(p.eta))
        text = f"{p.done:,}/{p.total:,} events  {p.rate:,.0f} ev/s  ETA {eta}"
        if tty:
            bar = "#" * int(fraction * 30)
            stream.write(f"\r[{bar:<30}] {fraction:6.1%} {text}")
            if p.done >= p.total:
                stream.write("\n")
            stream.flush()
        elif time.monotonic() - state["last"] >= 5 or p.done >= p.total:
            stream.write(f"replay: {fraction:.1%} {text}\n")
            stream.flush()
            state["last"] = time.monotonic()

    return show
