"""The Faust engine: a ``faust.App`` whose one agent feeds the same :class:`StreamProcessor`.

Run as ``fraiseql-cli stream --engine faust`` or, for operators who run Faust workers, as
``faust -A fraiseql_obs_streams.faust_app worker -l info`` (configuration from ``fraiseql.toml`` in
the working directory, ``FRAISEQL_CONFIG`` naming another file, and ``FRAISEQL_*`` variables).

Faust moves the messages (group membership, fetching, offset commits); windowing, validation,
dead letters and publishing are the processor's, exactly as in the native engine. Faust's own
windowed tables are not used (they close windows by wall clock: ``../shared/NOTES.md``), and the
agent runs with concurrency 1.

The checkpoint protocol (``streams/DESIGN.md``, "The Faust engine"): Faust cannot commit offset
metadata, so each partition's :class:`~fraiseql_obs_streams.windowing.Checkpoint` is kept in a
compacted topic, ``<streams.group_id>-checkpoints``, keyed ``<topic>:<partition>``. After every
batch the engine publishes ready windows and waits for their ack, writes the checkpoints and waits
for their ack, and only then acknowledges to Faust the messages below each checkpoint's
``commit_offset`` (a message holds one extra reference until then, so ``take_events`` cannot ack
it). Faust's committed offset therefore never passes the stored checkpoint: on assignment the
engine reads the checkpoint topic to its end and skips what Faust re-delivers below
``commit_offset``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Final, cast

import faust
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from fraiseql_observability.codec import default_codec
from fraiseql_observability.config import Settings, load_settings
from fraiseql_observability.kafka import admin_client, ensure_topics, wait_for_kafka
from fraiseql_observability.metrics import serve_worker_metrics

from .errors import StreamError
from .processor import CHECKPOINTS, StreamProcessor, Tally, TopicPartitionKey
from .windowing import Checkpoint
from .worker import (
    HEALTH_EVERY_SECS,
    LAG_EVERY_SECS,
    consumer_config,
    startup_line,
    stream_producer,
)

__all__ = [
    "CheckpointStore",
    "FaustEngine",
    "FaustRecord",
    "checkpoint_topic",
    "create_app",
    "matching_topics",
    "prepare",
    "run_faust_worker",
    "serve_metrics",
]

log = logging.getLogger(__name__)

_TOPICS_EVERY_SECS: Final = 30.0  # as the native engine's topic.metadata.refresh.interval.ms
# aiokafka: timestamp_type 0 is CreateTime, 1 LogAppendTime; librdkafka counts from 1 (0: none).
_LIBRDKAFKA_TIMESTAMP_TYPE: Final = {0: 1, 1: 2}


def checkpoint_topic(settings: Settings) -> str:
    """Where the Faust engine keeps its checkpoints: one compacted topic per consumer group.

    A group id may hold characters a topic name cannot (anything but ``[a-zA-Z0-9._-]``): those
    become ``_``, and a hash of the real id keeps two such groups apart."""
    group = settings.streams.group_id
    legal = re.sub(r"[^a-zA-Z0-9._-]", "_", group)
    if legal != group:
        legal = f"{legal[:200]}-{hashlib.sha256(group.encode()).hexdigest()[:10]}"
    return f"{legal}-checkpoints"


def _key(topic: str, partition: int) -> bytes:
    return f"{topic}:{partition}".encode()  # ":" cannot occur in a topic name


class FaustRecord:
    """A Faust message seen through the confluent-kafka ``Message`` methods the processor reads."""

    __slots__ = ("_m",)

    def __init__(self, message: Any) -> None:
        self._m = message

    def error(self) -> KafkaError | None:
        return None  # Faust hands over records only, never errors

    def topic(self) -> str:
        return str(self._m.topic)

    def partition(self) -> int:
        return int(self._m.partition)

    def offset(self) -> int:
        return int(self._m.offset)

    def timestamp(self) -> tuple[int, int]:
        seconds = self._m.timestamp
        if seconds is None:
            return 0, -1
        return _LIBRDKAFKA_TIMESTAMP_TYPE.get(self._m.timestamp_type, 0), round(seconds * 1000)

    def key(self) -> bytes | None:
        key: bytes | None = self._m.key
        return key

    def value(self) -> bytes | None:
        value: bytes | None = self._m.value
        return value


class CheckpointStore:
    """The compacted checkpoint topic: read to its end on assignment, written after each batch."""

    def __init__(self, settings: Settings, processor: StreamProcessor) -> None:
        self.settings = settings
        self.processor = processor
        self.topic = checkpoint_topic(settings)

    def load(self, keys: Iterable[TopicPartitionKey]) -> dict[TopicPartitionKey, str | None]:
        """The latest checkpoint of each partition. A partition never checkpointed here falls back
        to the native engine's (offset metadata of the same group), so switching engines is exact."""
        wanted = set(keys)
        found: dict[TopicPartitionKey, str | None] = {}
        reader = Consumer({"bootstrap.servers": self.settings.kafka.bootstrap_servers,
                           "group.id": f"{self.settings.streams.group_id}-checkpoint-reader",
                           "enable.auto.commit": False, "enable.partition.eof": True})
        try:
            _low, high = reader.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=30)
            if high > 0:
                reader.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
                position = 0
                while position < high:
                    msg = reader.poll(10)
                    if msg is None:
                        raise StreamError(f"timed out reading checkpoints from {self.topic}")
                    if msg.error() is not None:
                        if msg.error().code() == KafkaError._PARTITION_EOF:
                            break
                        raise StreamError(f"cannot read checkpoints from {self.topic}: {msg.error()}")
                    position = msg.offset() + 1
                    topic, _, partition = (msg.key() or b"").decode().rpartition(":")
                    if topic and partition.isdigit() and (topic, int(partition)) in wanted:
                        value = msg.value()
                        found[(topic, int(partition))] = value.decode() if value else None
            missing = [TopicPartition(t, p) for t, p in wanted if (t, p) not in found]
            if missing:
                native = Consumer(consumer_config(self.settings))
                try:
                    for tp in native.committed(missing, timeout=30):
                        if tp.metadata:
                            found[(tp.topic, tp.partition)] = tp.metadata
                finally:
                    native.close()
        except KafkaException as exc:
            raise StreamError(f"cannot read checkpoints from {self.topic}: {exc}") from exc
        finally:
            reader.close()
        return found

    def save(self, checkpoints: Sequence[tuple[TopicPartitionKey, Checkpoint]],
             stop: Any) -> None:
        """Write and wait for the broker's ack (acks=all, idempotent: SPEC §8)."""
        self.processor.deliver(self.topic, [(_key(*key), cp.encode().encode())
                                            for key, cp in checkpoints], stop)
        CHECKPOINTS.inc(len(checkpoints))


class FaustEngine:
    """The processor, the checkpoint store and the messages held back from Faust's commit."""

    def __init__(self, settings: Settings, app: faust.App) -> None:
        self.settings = settings
        self.app = app
        self.processor = StreamProcessor(settings, stream_producer(settings), default_codec())
        self.store = CheckpointStore(settings, self.processor)
        # Every processor call runs under this lock: the agent, the timer and the rebalance
        # callbacks interleave on the event loop, and blocking steps run in a worker thread.
        self.lock = asyncio.Lock()
        self.held: dict[TopicPartitionKey, deque[Any]] = {}
        self.generation: dict[TopicPartitionKey, int] = {}
        # The commit_offset of each partition's last stored (or restored) checkpoint.
        self.floor: dict[TopicPartitionKey, int] = {}
        self.stopping = threading.Event()
        self._last_health = time.monotonic()

    # --- rebalance ------------------------------------------------------------------------------

    async def on_assigned(self, assigned: Iterable[Any]) -> None:
        keys = [(tp.topic, tp.partition) for tp in assigned if self._is_events_topic(tp.topic)]
        async with self.lock:
            new = [k for k in keys if k not in self.processor.partitions]
            if not new:
                return
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(None, self.store.load, new)
            generation = self.app.consumer_generation_id
            for key in new:
                start = self.processor.restore(key[0], key[1], found.get(key))
                self.floor[key] = max(start, 0)
                self.held[key] = deque()
                self.generation[key] = generation

    async def on_revoked(self, revoked: Iterable[Any]) -> None:
        keys = [(tp.topic, tp.partition) for tp in revoked]
        async with self.lock:
            try:
                await self._checkpoint()
            except Exception:
                log.warning("could not checkpoint before revocation", exc_info=True)
            self.processor.revoke([TopicPartition(t, p) for t, p in keys])
            for key in keys:
                self.held.pop(key, None)
                self.generation.pop(key, None)
                self.floor.pop(key, None)

    def _is_events_topic(self, topic: str) -> bool:
        return topic != self.store.topic

    # --- the agent ------------------------------------------------------------------------------

    async def handle(self, events: Sequence[Any]) -> None:
        """One ``take_events`` batch: fold it, publish, checkpoint, then release the acks."""
        async with self.lock:
            partitions = self.processor.partitions
            records: list[FaustRecord] = []
            for event in events:
                message = event.message
                key = (message.topic, message.partition)
                windows = partitions.get(key)
                if windows is None or message.generation_id != self.generation.get(key):
                    # Revoked, or fetched before this assignment: re-delivered later. Never acked
                    # (one extra reference): an ack of a high offset could let Faust commit past
                    # the checkpoint while its own committed offset is unknown.
                    message.incref()
                    continue
                if message.offset < windows.position:
                    # Faust restarts at its last commit, at or below the stored checkpoint: what
                    # lies below it was counted; ``take_events`` may ack that. Anything else
                    # below the position (a duplicate delivery) is left to its first copy's ack.
                    if message.offset >= self.floor.get(key, 0):
                        message.incref()
                    continue
                message.incref()  # held until a stored checkpoint covers it
                self.held[key].append(message)
                records.append(FaustRecord(message))
            if records:
                self.processor.process(records)
                for record in records:
                    # Held only for its ack: let a 900 KB batch's bytes go now.
                    record._m.value = None
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        loop = asyncio.get_running_loop()
        stop = self.stopping.is_set
        _, checkpoints = await loop.run_in_executor(
            None, self.processor.publish_and_checkpoint, stop)
        if not checkpoints:
            return
        await loop.run_in_executor(None, self.store.save, checkpoints, stop)
        consumer = self.app.consumer
        for key, checkpoint in checkpoints:
            self.floor[key] = checkpoint.commit_offset
            held = self.held.get(key)
            while held and held[0].offset < checkpoint.commit_offset:
                held.popleft().ack(consumer)

    async def tick(self) -> None:
        """Every 5 s: lag gauges, idle partitions' windows, and the health line once a minute."""
        async with self.lock:
            processor = self.processor
            consumer = self.app.consumer
            positions: dict[TopicPartitionKey, int] = {}
            highs: dict[TopicPartitionKey, int | None] = {}
            for key in list(processor.partitions):
                tp = faust.types.TP(*key)
                try:
                    # The fetch position steps over transaction markers, like librdkafka's.
                    position = await consumer.position(tp)
                    highs[key] = consumer.highwater(tp)
                except Exception:  # not fetched yet, or mid-rebalance: unknown this round
                    highs[key] = None
                    continue
                if position is not None and key in processor.partitions:
                    positions[key] = max(position, processor.partitions[key].position)
            processor.record_lag(positions, highs.get)
            processor.advance_idle(positions, highs.get)
            await self._checkpoint()
            if time.monotonic() - self._last_health >= HEALTH_EVERY_SECS:
                log.info("%s", processor.tally.line())
                processor.tally = Tally(lag=processor.tally.lag)
                self._last_health = time.monotonic()

    async def stop(self) -> None:
        # As the native engine's last step: one delivery attempt, not a wait for a broker that
        # may be down (what is not acknowledged is re-emitted from the last checkpoint). Set
        # before taking the lock: a batch waiting for the broker gives up and releases it.
        self.stopping.set()
        async with self.lock:
            try:
                await self._checkpoint()
            except Exception:
                log.warning("final checkpoint skipped", exc_info=True)
            self.processor.producer.flush(5)
            log.info("stream worker stopped")


def matching_topics(settings: Settings, *, wait_secs: float = 0.0) -> list[str]:
    """The broker's topics that the regex ``events_topic`` matches (librdkafka's semantics: a
    search), sorted; waits up to ``wait_secs`` for a first one (a subscription needs a name)."""
    kafka = settings.kafka
    pattern = re.compile(kafka.events_topic)
    deadline = time.monotonic() + wait_secs
    said = 0.0
    while True:
        names = sorted(t for t in admin_client(kafka).list_topics(timeout=30).topics
                       if pattern.search(t) and not t.startswith("__"))
        if names or time.monotonic() >= deadline:
            return names
        if time.monotonic() - said > 30:
            log.info("waiting for a topic matching %s", kafka.events_topic)
            said = time.monotonic()
        time.sleep(1.0)


def _broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{address.strip()}" for address in bootstrap.split(",") if address.strip()]


def create_app(settings: Settings, *, metrics_on_start: bool = False) -> faust.App:
    """The Faust application of ``settings`` (its id is ``streams.group_id``: the consumer group).
    ``metrics_on_start``: serve /metrics once the worker started (``faust -A``: its logging is
    set up by then, so the port is logged)."""
    kafka, streams = settings.kafka, settings.streams
    app = faust.App(
        streams.group_id,
        broker=_broker_urls(kafka.bootstrap_servers),
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        # Held messages stay unacked until their checkpoint is stored: a rebalance must not wait
        # for them (the revocation callback checkpoints instead).
        stream_wait_empty=False,
        stream_buffer_maxsize=max(4 * streams.batch_size, 4096),
        consumer_max_fetch_size=8 * 1024 * 1024,
        broker_session_timeout=10.0,
        topic_allow_declare=False,
        topic_disable_leader=True,
    )
    engine = FaustEngine(settings, app)
    # A regex events_topic (librdkafka's "^..." convention, e.g. MirrorMaker's regional copies):
    # Faust 0.15 cannot subscribe to a pattern ("XXX pattern does not work" in its aiokafka
    # driver), so the engine subscribes to the matching names and adds new ones as they appear.
    names = matching_topics(settings) if kafka.events_topic.startswith("^") else [kafka.events_topic]
    topic = app.topic(*names, value_serializer="raw", key_serializer="raw")

    # Faust's signals call receiver(sender, *args, signal=..., **kwargs).
    async def _assigned(_app: Any, /, *args: Any, signal: Any, **_kwargs: Any) -> None:
        await engine.on_assigned(args[0])

    async def _revoked(_app: Any, /, *args: Any, signal: Any, **_kwargs: Any) -> None:
        await engine.on_revoked(args[0])

    async def _shutdown(_app: Any, /, *_args: Any, signal: Any, **_kwargs: Any) -> None:
        await engine.stop()

    app.on_partitions_assigned.connect(_assigned)
    app.on_partitions_revoked.connect(_revoked)
    app.on_before_shutdown.connect(_shutdown)

    @app.agent(topic, concurrency=1)
    async def fold(stream: Any) -> None:
        async for events in stream.take_events(streams.batch_size, within=streams.batch_timeout_secs):
            await engine.handle(events)

    @app.timer(LAG_EVERY_SECS)  # type: ignore[untyped-decorator]
    async def tick() -> None:
        await engine.tick()

    if kafka.events_topic.startswith("^"):

        @app.timer(_TOPICS_EVERY_SECS)  # type: ignore[untyped-decorator]
        async def new_topics() -> None:
            found = await asyncio.get_running_loop().run_in_executor(None, matching_topics, settings)
            added = [name for name in found if name not in topic.topics]
            if added:
                log.info("subscribing to new topics matching %s: %s", kafka.events_topic,
                         ", ".join(added))
                topic.topics = [*topic.topics, *added]
                # The conductor re-reads every channel's names and resubscribes (a rebalance).
                cast(Any, app.topics)._flag_changes()

    if metrics_on_start:

        @app.task  # type: ignore[untyped-decorator]
        async def _metrics() -> None:
            serve_metrics(settings)

    return app


def prepare(settings: Settings) -> None:
    """Create the topics before the worker subscribes (Faust itself declares none: the events
    topic needs broker timestamps, the checkpoints compaction)."""
    kafka = settings.kafka
    ensure_topics(kafka, [t for t in (kafka.events_topic, kafka.rollups_topic,
                                      kafka.dead_letters_topic) if not t.startswith("^")])
    ensure_topics(kafka, [checkpoint_topic(settings)], partitions=1,
                  config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"})
    if kafka.events_topic.startswith("^"):
        matching_topics(settings, wait_secs=float("inf"))


def serve_metrics(settings: Settings) -> int:
    """``/metrics`` as the native engine serves it (same registry, same names)."""
    port = serve_worker_metrics(settings.streams.metrics_port, settings.metrics_bind,
                                setting="--metrics-port or [observability.streams] metrics_port")
    log.info("%s", startup_line(settings, port).replace("stream worker:", "stream worker (faust):"))
    return port


def __getattr__(name: str) -> Any:
    # ``faust -A fraiseql_obs_streams.faust_app worker``: Faust looks up ``app`` here. Built on
    # first access from the environment (the entry point), once.
    if name != "app":
        raise AttributeError(name)
    settings = load_settings(os.environ.get("FRAISEQL_CONFIG"))
    prepare(settings)
    built = globals()["app"] = create_app(settings, metrics_on_start=True)
    return built


def run_faust_worker(settings: Settings, *, loglevel: str = "info") -> None:
    """Entry point of ``fraiseql-cli stream --engine faust``: /metrics, topics, then a Faust
    worker (it handles SIGTERM/SIGINT: the final checkpoint runs before it stops)."""
    serve_metrics(settings)
    if not wait_for_kafka(settings.kafka, budget_secs=settings.kafka.startup_timeout_secs):
        return
    prepare(settings)
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False)
    worker.execute_from_commandline()
