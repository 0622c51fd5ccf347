"""The API-side recorder: sample, buffer, batch and send query events to Kafka (SPEC §2, §8).

One :class:`Recorder` per API process, one :meth:`Recorder.record` call per query. Guarantees
(SPEC §8 "the API is never slowed or blocked by observability"):

* ``record()`` never blocks and never raises: it samples (inline, ~1 µs when the query is not
  kept), and for a kept query appends one small tuple to a bounded deque under a lock held for
  O(1) work. Everything costly -- fingerprinting (cached), event ids, Avro encoding, Kafka I/O --
  runs on one background daemon thread. Any exception inside ``record()`` is counted and swallowed.
* Bounded memory: at most ``metrics.buffer_size`` events are *held* by the process, counting both
  the recorder's deque and the messages librdkafka has not yet acknowledged. Past that, new events
  are dropped and counted (``fraiseql_events_dropped_total{reason="buffer_full"}``).
* A broker outage costs no caller latency: the producer retries each message for at most
  ``delivery_timeout_secs`` (librdkafka ``message.timeout.ms``), then the event is counted as
  dropped (``reason="delivery_failed"``) and its slot is freed.

Messages: by default one ``QueryEventBatch`` per flush and target partition (``metrics.batch_messages``),
each below ``metrics.max_message_bytes``; the partition is Kafka's default for the fingerprint
(:mod:`~fraiseql_obs_producers.partitioning`: murmur2, the same for every producer), from the
topic's partition count (cached, refreshed every minute and after an error), so a pattern's events
meet in one partition as with one keyed message per event, which is the fallback while the
partition count is unknown and the behaviour with ``batch_messages = false``.

Delivery is at-least-once from the recorder's side (idempotent producer, ``acks=all``); the stream
worker and sink make counts exactly-once downstream.

Fork safety: create the recorder in each worker process after the fork (e.g. in the ASGI lifespan
startup); a recorder started before ``fork()`` has no background thread in the child.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import itertools
import logging
import os
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self

from confluent_kafka import KafkaError, KafkaException, Producer
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fraiseql_observability.config import Settings
from fraiseql_observability.kafka import KafkaUnavailable, ensure_topics, producer_config
from fraiseql_observability.metrics import serve_metrics
from fraiseql_observability.timeutil import to_micros

from .encoding import BATCH_OVERHEAD, EventIdFactory, QueryEventEncoder
from .fingerprint import fingerprint_sql
from .normalize import PendingSQL, normalize_sql
from .partitioning import PARTITIONER, murmur2
from .sampling import Sampler

__all__ = ["DROP_REASONS", "Recorder", "RecorderStats"]

log = logging.getLogger(__name__)

# Why a sampled event did not reach Kafka (label values of fraiseql_events_dropped_total).
DROP_REASONS: Final = (
    "buffer_full",      # the process already holds buffer_size events
    "delivery_failed",  # Kafka did not acknowledge within delivery_timeout_secs
    "queue_full",       # librdkafka's local queue stayed full for queue_full_retry_secs
    "encode_error",     # the recorded values do not fit the QueryEvent schema
    "invalid_input",    # record() itself failed on its arguments (e.g. a None duration)
    "shutdown",         # still unacknowledged when close() gave up
    "closed",           # recorded after close()
    "not_recorded",     # a PendingSQL the normalizer skips (transaction control, SET, SHOW)
)

# While messages are in flight the background thread polls librdkafka at least this often, so
# acknowledgements free buffer slots promptly; idle, it sleeps up to _IDLE_WAIT_SECS.
_POLL_SECS: Final = 0.02
_IDLE_WAIT_SECS: Final = 1.0
# Within a large batch, poll librdkafka (which releases the GIL) every 1024 events.
_POLL_EVERY_MASK: Final = 1023
_TOPIC_RETRY_SECS: Final = 30.0
# A duration beyond a day is a broken clock: do not shift the event time by it (the stream worker
# rejects such events with a reason; they are still sent so the rejection is visible).
_MAX_DURATION_MS: Final = 86_400_000.0
_SHAPE_CACHE_MAX: Final = 65536
# The events topic's partition count: refreshed this often, sooner after a produce error, and
# looked up again no sooner than _PARTITIONS_RETRY_SECS after a failed lookup (broker down).
_PARTITIONS_REFRESH_SECS: Final = 60.0
_PARTITIONS_RETRY_SECS: Final = 5.0
_PARTITIONS_TIMEOUT_SECS: Final = 2.0


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """A snapshot of one recorder's counters (the Prometheus metrics sum these over recorders)."""

    sampled: int
    not_sampled: int
    sent: int
    dropped: dict[str, int]
    buffered: int  # waiting in the recorder's deque
    held: int  # buffered + handed to librdkafka and not yet acknowledged or failed
    capacity: int
    running: bool

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


@dataclass(slots=True)
class _Counts:
    """Counters of one recorder; kept by the module collector even after the recorder is gone,
    so the exported counters never decrease."""

    sampled: int = 0
    sent: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    held: int = 0
    capacity: int = 0
    # Not-sampled queries: itertools.count's __next__ is one atomic C call (~70 ns), cheaper and
    # safer across threads than `x += 1`; reading it advances it, so reads are counted and removed.
    not_sampled_counter: Iterator[int] = field(default_factory=itertools.count)
    not_sampled_reads: int = 0
    read_lock: threading.Lock = field(default_factory=threading.Lock)

    def not_sampled(self) -> int:
        with self.read_lock:
            value = next(self.not_sampled_counter) - self.not_sampled_reads
            self.not_sampled_reads += 1
            return value


class _RecorderCollector(Collector):
    """Exports the recorders' counters at scrape time: no metric cost on the query path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: list[_Counts] = []

    def add(self, counts: _Counts) -> None:
        with self._lock:
            self._counts.append(counts)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            all_counts = list(self._counts)
        size = GaugeMetricFamily("fraiseql_metrics_buffer_size",
                                 "Query events held by the API-side recorder (buffer + in flight)")
        capacity = GaugeMetricFamily("fraiseql_metrics_buffer_capacity",
                                     "Events the API-side recorder may hold before dropping")
        sampled = CounterMetricFamily("fraiseql_events_sampled",
                                      "Queries kept by the sampler (slow, error or uniform)")
        not_sampled = CounterMetricFamily("fraiseql_events_not_sampled",
                                          "Queries the sampler did not keep")
        sent = CounterMetricFamily("fraiseql_events_sent",
                                   "Query events acknowledged by Kafka")
        dropped = CounterMetricFamily("fraiseql_events_dropped",
                                      "Sampled query events that never reached Kafka",
                                      labels=["reason"])
        size.add_metric([], float(sum(c.held for c in all_counts)))
        capacity.add_metric([], float(sum(c.capacity for c in all_counts)))
        sampled.add_metric([], float(sum(c.sampled for c in all_counts)))
        not_sampled.add_metric([], float(sum(c.not_sampled() for c in all_counts)))
        sent.add_metric([], float(sum(c.sent for c in all_counts)))
        for reason in DROP_REASONS:
            dropped.add_metric([reason], float(sum(c.dropped[reason] for c in all_counts)))
        return [size, capacity, sampled, not_sampled, sent, dropped]


_COLLECTOR = _RecorderCollector()
REGISTRY.register(_COLLECTOR)
_SERVED_PORTS: set[int] = set()
_SERVED_LOCK = threading.Lock()


def _default_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:512]


class Recorder:
    """Records one event per API query; see the module docstring for the guarantees.

    ``Recorder(settings)`` builds it; :meth:`start` (or ``with``/``async with``) starts the
    background sender; :meth:`close` flushes. Events recorded before :meth:`start` wait in the
    bounded buffer. The keyword arguments tune what the settings file does not cover:
    ``delivery_timeout_secs`` bounds how long Kafka may take to acknowledge one event,
    ``queue_full_retry_secs`` how long the sender waits for room in librdkafka's queue before
    dropping, ``producer_overrides`` are extra librdkafka properties, ``random_source`` replaces
    the sampler's uniform [0, 1) source (tests), ``instance`` names this API process (default
    ``host:pid``). Construction and :meth:`start` may raise on invalid arguments (setup time);
    :meth:`record` never raises.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        instance: str | None = None,
        delivery_timeout_secs: float = 30.0,
        queue_full_retry_secs: float = 1.0,
        producer_overrides: dict[str, Any] | None = None,
        random_source: Callable[[], float] | None = None,
    ) -> None:
        metrics = settings.metrics
        self._settings = settings
        self._enabled = settings.enabled
        if not self._enabled:  # once per recorder: record() then keeps nothing, silently
            log.warning("recording is off (observability.enabled = false; set enabled = true or "
                        "FRAISEQL_OBSERVABILITY_ENABLED=true): record() keeps no query")
        self._sampler = Sampler.from_settings(settings, random_source)
        # The sampling rule inlined into record(): attribute reads, no method call.
        self._slow_ms = self._sampler.slow_query_ms
        self._keep_errors = self._sampler.always_keep_errors
        self._rate = self._sampler.rate
        self._uniform_weight = self._sampler.uniform_weight
        self._random = self._sampler.random
        self._capacity = metrics.buffer_size
        self._batch_size = metrics.batch_size
        self._batch_messages = metrics.batch_messages
        self._max_message_bytes = metrics.max_message_bytes
        self._flush_interval = metrics.flush_interval_secs
        self._region = settings.kafka.region
        self._topic = settings.kafka.events_topic
        self._instance = (instance or _default_instance())[:512]
        self._delivery_timeout = delivery_timeout_secs
        self._queue_full_retry = queue_full_retry_secs
        self._producer_overrides = dict(producer_overrides or {})

        self._lock = threading.Lock()
        self._buf: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._flush_requested = False
        self._stopping = False
        self._closed = False  # close() was called (idempotency)
        self._rejecting = False  # record() drops: closed, or the background thread died
        self._abandoned = False  # close() gave up on a stuck thread: it must not count any more
        self._thread: threading.Thread | None = None
        self._producer: Any = None
        self._encoder = QueryEventEncoder()
        self._event_id = EventIdFactory()
        # Bookkeeping of the background thread only (no lock needed).
        self._produced = 0
        self._failed_seen = 0
        self._acked_seen = 0
        # (SQL, query, instance) -> (fingerprint, encoded strings, murmur2 of the fingerprint).
        # None: a PendingSQL text the normalizer says not to record (transaction control, SET).
        self._shapes: dict[tuple[str, str, str | None], tuple[str, bytes, int, str] | None] = {}
        self._batch_key = self._instance.encode()  # the key of batch messages: who sent them
        self._partitions: int | None = None  # of the events topic, once known
        self._partitions_checked = -_PARTITIONS_REFRESH_SECS
        self._finished = 0  # batch mode: events acknowledged or failed (from delivery callbacks)
        self._topic_ready = False
        self._topic_attempt = -_TOPIC_RETRY_SECS
        self._last_error_log = 0.0

        self._counts = _Counts(capacity=self._capacity if self._enabled else 0)
        self._count_not_sampled = self._counts.not_sampled_counter.__next__
        _COLLECTOR.add(self._counts)
        self._shutdown_deadline = 0.0

    # ------------------------------------------------------------------ hot path

    def record(
        self,
        *,
        query_name: str,
        sql: str,
        execution_time_ms: float,
        sql_generation_time_ms: float,
        db_round_trip_time_ms: float,
        projection_time_ms: float,
        rows_returned: int,
        cache_hit: bool,
        error: str | None = None,
        occurred_at: datetime | int | None = None,
        instance: str | None = None,
    ) -> bool:
        """Record one executed query; True when it was kept for sending. Never blocks or raises.

        ``occurred_at`` is when the query started (a ``datetime``, naive meaning UTC, or
        microseconds since the epoch); by default now minus ``execution_time_ms``, since this is
        called once the query has finished.
        """
        try:
            if not self._enabled:
                return False
            # Sampler.weight(), inlined: this branch runs for ~99 % of queries.
            if execution_time_ms >= self._slow_ms or (error is not None and self._keep_errors):
                weight = 1.0
            elif self._random() < self._rate:
                weight = self._uniform_weight
            else:
                self._count_not_sampled()
                return False
            now_ns = time.time_ns() if occurred_at is None else 0
            item = (occurred_at, now_ns, instance, query_name, sql, execution_time_ms,
                    sql_generation_time_ms, db_round_trip_time_ms, projection_time_ms,
                    rows_returned, cache_hit, error, weight)
            counts = self._counts
            with self._lock:
                counts.sampled += 1
                if self._rejecting:
                    counts.dropped["closed"] += 1
                    return False
                if counts.held >= self._capacity:
                    counts.dropped["buffer_full"] += 1
                    return False
                counts.held += 1
                buf = self._buf
                buf.append(item)
                if len(buf) == self._batch_size:
                    self._wake.set()
            return True
        except Exception:
            with self._lock:
                self._counts.dropped["invalid_input"] += 1
            return False

    # ------------------------------------------------------------------ lifecycle

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def sampler(self) -> Sampler:
        return self._sampler

    def start(self) -> Self:
        """Start the background sender (and ``/metrics`` if ``metrics.metrics_port``); idempotent.

        Never waits for Kafka: topic creation happens on the background thread and tolerates a
        broker that is down (it is retried every 30 s until it succeeds).
        """
        if not self._enabled or self._thread is not None or self._closed:
            return self
        port = self._settings.metrics.metrics_port
        if port:
            with _SERVED_LOCK:
                if port not in _SERVED_PORTS:
                    try:
                        serve_metrics(port, self._settings.metrics_bind)
                        _SERVED_PORTS.add(port)
                    except OSError as exc:
                        log.warning("cannot serve /metrics on port %d: %s", port, exc)
        config = producer_config(self._settings.kafka, **{
            "client.id": f"fraiseql-recorder-{self._instance}"[:200],
            # linger.ms stays at producer_config's 20 ms: larger per-partition batches cost the
            # API process (and the broker) less CPU per event, and 20 ms is nothing next to
            # flush_interval_secs.
            "message.timeout.ms": max(1, int(self._delivery_timeout * 1000)),
            # The held-events bound keeps librdkafka's queue under buffer_size; allow a margin.
            "queue.buffering.max.messages": self._capacity + self._batch_size + 1000,
            # Keyed single messages land where partition_of() puts batches (Kafka's default).
            "partitioner": PARTITIONER,
            # Single messages: successes are counted from the queue length (see _poll), one
            # Python callback per failure only. Batch messages carry many events each: one
            # callback per message says how many finished.
            "delivery.report.only.error": not self._batch_messages,
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
            "logger": logging.getLogger(__name__ + ".librdkafka"),
            **self._producer_overrides,
        })
        self._producer = Producer(config)
        self._thread = threading.Thread(target=self._run, name="fraiseql-recorder", daemon=True)
        self._thread.start()
        _LIVE.add(self)
        return self

    def flush(self, timeout: float = 10.0) -> bool:
        """Send everything buffered now and wait until Kafka acknowledged it (or it failed).

        True when nothing is held any more. Meant for tests and graceful shutdown, not per query.
        """
        if self._thread is None:
            return self._counts.held == 0
        deadline = time.monotonic() + timeout
        with self._lock:
            self._flush_requested = True
        self._wake.set()
        while time.monotonic() < deadline:
            if self._counts.held == 0:
                return True
            time.sleep(0.005)
        return self._counts.held == 0

    def close(self, timeout: float = 10.0) -> int:
        """Flush and stop; events still unacknowledged after ``timeout`` are dropped and counted.

        Returns the number of events dropped as ``shutdown``. Idempotent.
        """
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            self._rejecting = True
            # Set before _stopping: the thread reads the deadline as soon as it sees _stopping.
            self._shutdown_deadline = time.monotonic() + max(0.0, timeout)
            self._stopping = True
        _LIVE.discard(self)
        thread = self._thread
        if thread is not None:
            self._wake.set()
            thread.join(timeout + 1.0)
        with self._lock:
            if thread is not None and thread.is_alive():
                log.warning("recorder thread did not stop within %.1f s", timeout)
                self._abandoned = True
            lost = self._counts.held
            if lost:
                self._counts.dropped["shutdown"] += lost
                self._counts.held = 0
            self._buf.clear()
            self._counts.capacity = 0
        if lost:
            log.warning("recorder closed with %d events undelivered", lost)
        return lost

    async def aclose(self, timeout: float = 10.0) -> int:
        """:meth:`close` on the default executor, so an event loop keeps running meanwhile."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.close, timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def stats(self) -> RecorderStats:
        counts = self._counts
        with self._lock:
            return RecorderStats(
                sampled=counts.sampled,
                not_sampled=counts.not_sampled(),
                sent=counts.sent,
                dropped=dict(counts.dropped),
                buffered=len(self._buf),
                held=counts.held,
                capacity=counts.capacity,
                running=self._thread is not None and self._thread.is_alive(),
            )

    # ------------------------------------------------------------------ background thread

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug here must not kill silently: log, and free held slots
            log.exception("recorder background thread failed; events are dropped from now on")
            with self._lock:
                self._rejecting = True

    def _loop(self) -> None:
        producer = self._producer
        self._ensure_topic()
        deadline = time.monotonic() + self._flush_interval
        while True:
            stopping = self._stopping
            now = time.monotonic()
            if (stopping or self._flush_requested or len(self._buf) >= self._batch_size
                    or now >= deadline):
                self._flush_requested = False
                self._drain()
                deadline = now + self._flush_interval
            self._poll(0)
            if stopping:
                break
            wait = max(0.0, min(deadline - time.monotonic(), _IDLE_WAIT_SECS))
            if self._produced - self._acked_seen > 0:
                # Messages in flight: wait inside librdkafka so failures are served promptly.
                producer.poll(min(wait, _POLL_SECS))
            else:
                self._wake.wait(wait)
            self._wake.clear()
        remaining = max(0.0, self._shutdown_deadline - time.monotonic())
        producer.flush(remaining)
        self._poll(0)

    def _ensure_topic(self) -> None:
        now = time.monotonic()
        if self._topic_ready or now - self._topic_attempt < _TOPIC_RETRY_SECS:
            return
        self._topic_attempt = now
        try:
            ensure_topics(self._settings.kafka, [self._topic], timeout=5.0)
            self._topic_ready = True
        except (KafkaUnavailable, KafkaException) as exc:
            log.warning("cannot create topic %s yet (%s); will retry", self._topic, exc)

    def _drain(self) -> None:
        """Encode and hand to librdkafka everything buffered (runs on the background thread)."""
        with self._lock:
            if not self._buf:
                return
            batch, self._buf = self._buf, deque()
        self._ensure_topic()
        produce = self._producer.produce
        encoder = self._encoder
        encode = encoder.encode_with_strings if encoder.fast else None
        new_id = self._event_id
        topic, region, default_instance = self._topic, self._region, self._instance
        shapes = self._shapes
        dropped: dict[str, int] = {}
        partitions = self._partition_count() if self._batch_messages else None
        # Batch mode: per target partition, the encoded events and their fingerprints.
        groups: dict[int, tuple[list[bytes], list[str]]] = {}
        grouped = 0
        produced = 0  # added to self._produced before anything reads it (_poll, end of batch)
        for occurred_at, now_ns, instance, query_name, sql, execution_ms, generation_ms, \
                round_trip_ms, projection_ms, rows, cache_hit, error, weight in batch:
            try:
                # One dict lookup per event for the fingerprint and the encoded string fields.
                try:
                    shape = shapes[(sql, query_name, instance)]
                except KeyError:
                    shape = self._shape(sql, query_name, instance)
                if shape is None:
                    dropped["not_recorded"] = dropped.get("not_recorded", 0) + 1
                    continue
                fingerprint, strings, hashed, text = shape
                if occurred_at is None:
                    # timeutil.now_micros() split in two and inlined: the clock is read in
                    # record() (time.time_ns, no extra call there), the division done here.
                    occurred_us = now_ns // 1000
                    if 0.0 <= execution_ms <= _MAX_DURATION_MS:  # False for NaN too
                        occurred_us -= int(execution_ms * 1000.0)
                elif isinstance(occurred_at, datetime):
                    occurred_us = to_micros(occurred_at)  # naive means UTC: the schema is UTC
                else:
                    occurred_us = int(occurred_at)
                if encode is not None:
                    value = encode(new_id(), occurred_us, strings, execution_ms, generation_ms,
                                   round_trip_ms, projection_ms, rows, cache_hit, error, weight)
                else:  # the schema changed under the fast encoder: generic path, same bytes
                    value = encoder.encode(new_id(), occurred_us, region,
                                           instance or default_instance, query_name or "anonymous",
                                           text, fingerprint, execution_ms, generation_ms,
                                           round_trip_ms, projection_ms, rows, cache_hit, error,
                                           weight)
            except Exception as exc:
                dropped["encode_error"] = dropped.get("encode_error", 0) + 1
                self._log_error("cannot encode a query event: %s", exc)
                continue
            if partitions is not None:
                group = groups.get(part := (hashed & 0x7FFFFFFF) % partitions)
                if group is None:
                    group = groups[part] = ([], [])
                group[0].append(value)
                group[1].append(fingerprint)
                grouped += 1
                if grouped & _POLL_EVERY_MASK == 0:
                    self._poll(0)  # as below: free slots and release the GIL now and then
                continue
            try:
                produce(topic, value, fingerprint)
                produced += 1
            except BufferError:
                self._produced += produced
                produced = 0
                if not self._produce_retrying(produce, topic, value, fingerprint):
                    dropped["queue_full"] = dropped.get("queue_full", 0) + 1
                continue
            if produced & _POLL_EVERY_MASK == 0:
                # Serve acknowledgements mid-batch so slots free up, and release the GIL (poll
                # does) so API threads never wait a whole switch interval behind a big batch.
                self._produced += produced
                produced = 0
                self._poll(0)
        self._produced += produced
        for part, (values, fingerprints) in sorted(groups.items()):
            self._send_batches(part, values, fingerprints, dropped)
        if dropped:
            with self._lock:
                if self._abandoned:
                    return
                for reason, count in dropped.items():
                    self._counts.dropped[reason] += count
                    self._counts.held -= count

    def _shape(self, sql: str, query_name: str,
               instance: str | None) -> tuple[str, bytes, int, str] | None:
        """Fingerprint, encoded string fields, partition hash and recorded text of a new (SQL,
        query, instance); cached. A :class:`~.normalize.PendingSQL` is normalized here, on the
        background thread and only for kept events, instead of on the API's request path: a
        FraiseQL 0.5.x statement with a new filter value costs the normalizer 0.2-1.4 ms.
        None: not to be recorded (transaction control, ``SET``)."""
        text: str | None = normalize_sql(sql) if type(sql) is PendingSQL else sql
        if len(self._shapes) >= _SHAPE_CACHE_MAX:
            self._shapes.clear()  # unbounded distinct SQL texts must not grow memory forever
        if text is None:
            self._shapes[(sql, query_name, instance)] = None
            return None
        text = str(text)  # a plain str from here on (the encoder and the cache)
        fingerprint = fingerprint_sql(text)
        strings = self._encoder.strings(self._region, instance or self._instance,
                                        query_name or "anonymous", text, fingerprint)
        shape = (fingerprint, strings, murmur2(fingerprint.encode()), text)
        self._shapes[(sql, query_name, instance)] = shape
        return shape

    def _partition_count(self) -> int | None:
        """The events topic's partition count (cached); None while unknown: send single messages."""
        now = time.monotonic()
        wait = _PARTITIONS_REFRESH_SECS if self._partitions is not None else _PARTITIONS_RETRY_SECS
        if not self._topic_ready or now - self._partitions_checked < wait:
            return self._partitions
        self._partitions_checked = now
        try:
            # The topic exists (_ensure_topic): asking for it alone cannot auto-create it.
            found = self._producer.list_topics(self._topic, timeout=_PARTITIONS_TIMEOUT_SECS)
            meta = found.topics.get(self._topic)
            count = len(meta.partitions) if meta is not None and meta.error is None else 0
        except KafkaException as exc:
            self._log_error("cannot read the partitions of %s (%s): single messages meanwhile",
                            self._topic, exc)
            return self._partitions  # a stale count still meets the producers' partitions
        self._partitions = count or None
        return self._partitions

    def _send_batches(self, partition: int, values: list[bytes], fingerprints: list[str],
                      dropped: dict[str, int]) -> None:
        """Produce one partition's events as batch messages of at most max_message_bytes."""
        limit = self._max_message_bytes
        start, size = 0, BATCH_OVERHEAD
        for i, value in enumerate(values):
            body = len(value) - 10  # its single-object header is not repeated in a batch
            if size + body > limit and i > start:
                self._send_batch(partition, values[start:i], fingerprints[start:i], dropped)
                start, size = i, BATCH_OVERHEAD
            size += body
        self._send_batch(partition, values[start:], fingerprints[start:], dropped)

    def _send_batch(self, partition: int, values: list[bytes], fingerprints: list[str],
                    dropped: dict[str, int]) -> None:
        count = len(values)
        message = self._encoder.batch(values)
        callback = functools.partial(self._on_batch_delivery, count)
        give_up = time.monotonic() + self._queue_full_retry
        while True:
            try:
                self._producer.produce(self._topic, message, self._batch_key, partition=partition,
                                       on_delivery=callback)
                self._produced += count
                return
            except BufferError:
                if time.monotonic() >= give_up:
                    dropped["queue_full"] = dropped.get("queue_full", 0) + count
                    return
                self._poll(0.05)
            except KafkaException as exc:
                # Most likely fewer partitions than cached (a topic re-created): look again next
                # flush, and send these events as keyed single messages now.
                self._log_error("cannot produce a batch to %s[%d] (%s): sent one by one",
                                self._topic, partition, exc)
                self._partitions_checked = -_PARTITIONS_REFRESH_SECS
                for value, fingerprint in zip(values, fingerprints, strict=True):
                    self._produce_single(value, fingerprint, dropped)
                return

    def _produce_single(self, value: bytes, fingerprint: str, dropped: dict[str, int]) -> None:
        try:
            self._producer.produce(self._topic, value, fingerprint)
            self._produced += 1
        except BufferError:
            if not self._produce_retrying(self._producer.produce, self._topic, value, fingerprint):
                dropped["queue_full"] = dropped.get("queue_full", 0) + 1
        except KafkaException as exc:
            self._log_error("cannot produce a query event: %s", exc)
            dropped["delivery_failed"] = dropped.get("delivery_failed", 0) + 1

    def _produce_retrying(self, produce: Any, topic: str, value: bytes, key: str) -> bool:
        """librdkafka's queue is full: serve acknowledgements for a bounded time, then give up."""
        give_up = time.monotonic() + self._queue_full_retry
        while time.monotonic() < give_up:
            self._poll(0.05)
            try:
                produce(topic, value, key)
                self._produced += 1
                return True
            except BufferError:
                continue
        return False

    def _poll(self, timeout: float) -> None:
        """Serve delivery failures, then count acknowledgements and free their buffer slots.

        With ``delivery.report.only.error`` librdkafka reports failures only; ``len(producer)``
        counts messages queued, in flight or with an unserved report, so after ``poll()``
        ``produced - len(producer)`` is exactly the number of messages acknowledged or failed.
        """
        producer = self._producer
        producer.poll(timeout)
        # Batch mode: every message has a delivery report, counting its events.
        finished = self._finished if self._batch_messages else self._produced - len(producer)
        delta = finished - self._acked_seen
        if delta <= 0:
            return
        self._acked_seen = finished
        failed, self._failed_seen = self._failed_seen, 0
        with self._lock:
            if self._abandoned:
                return
            counts = self._counts
            counts.sent += delta - failed
            counts.dropped["delivery_failed"] += failed
            counts.held -= delta

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if self._batch_messages:
            self._finished += 1  # a single message (partitions unknown), success reported too
        if err is not None:
            self._failed_seen += 1
            self._log_error("query event not delivered: %s", err)

    def _on_batch_delivery(self, count: int, err: Any, msg: Any) -> None:
        self._finished += count
        if err is not None:
            self._failed_seen += count
            self._partitions_checked = -_PARTITIONS_REFRESH_SECS  # maybe the partitions changed
            self._log_error("%d query events (one batch message) not delivered: %s", count, err)

    def _on_error(self, err: Any) -> None:
        if isinstance(err, KafkaError) and err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._log_error("Kafka unreachable at %s: %s",
                            self._settings.kafka.bootstrap_servers, err)
        else:
            self._log_error("Kafka client error: %s", err)

    def _log_error(self, message: str, *args: Any) -> None:
        """Log at most once a minute: an outage must not flood the API's logs."""
        now = time.monotonic()
        if now - self._last_error_log >= 60.0:
            self._last_error_log = now
            log.warning(message, *args)


# Recorders that are running: flushed when the interpreter exits (their thread is a daemon and
# would otherwise vanish with whatever it still held).
_LIVE: weakref.WeakSet[Recorder] = weakref.WeakSet()


@atexit.register
def _close_live_recorders() -> None:
    for recorder in list(_LIVE):
        recorder.close(timeout=5.0)
