"""fraiseql_obs_producers.recorder against the real broker, plus the encoder it relies on."""

from __future__ import annotations

import asyncio
import math
import socket
import statistics
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from fraiseql_obs_producers.encoding import QUERY_EVENT_FIELDS, EventIdFactory, QueryEventEncoder
from fraiseql_obs_producers.fingerprint import fingerprint_sql
from fraiseql_obs_producers.partitioning import PARTITIONER, partition_of
from fraiseql_obs_producers.recorder import Recorder
from fraiseql_observability.codec import QUERY_EVENT, QUERY_EVENT_BATCH, default_codec
from fraiseql_observability.config import KafkaSettings, MetricsSettings, Settings
from fraiseql_observability.kafka import ensure_topics

SQL_STATUS = ("SELECT data FROM tv_order WHERE data->>'status' = $1 "
              "ORDER BY data->>'created_at' DESC LIMIT $2")
SQL_BY_ID = "SELECT data FROM tv_user WHERE id = $1"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
START_US = 1_740_000_000_000_000


def _settings(kafka: KafkaSettings, *, sample_rate: float = 1.0, **metrics: Any) -> Settings:
    metric_settings = {"buffer_size": 10_000, "batch_size": 50, "flush_interval_secs": 0.2,
                       **metrics}
    return Settings(enabled=True, sample_rate=sample_rate, kafka=kafka,
                    metrics=MetricsSettings(**metric_settings))


def _events(message: Any) -> list[dict[str, Any]]:
    """The events of one message: a single QueryEvent or a QueryEventBatch."""
    name, record = default_codec().decode_named(message.value())
    if name == QUERY_EVENT_BATCH:
        events: list[dict[str, Any]] = record["events"]
        return events
    assert name == QUERY_EVENT
    return [record]


def _consume_events(kafka: KafkaSettings, topic: str, expected: int,
                    timeout: float = 30.0) -> list[tuple[Any, dict[str, Any]]]:
    """(message, event) for every event of ``topic``, like :func:`_consume` counting events."""
    out: list[tuple[Any, dict[str, Any]]] = []
    for message in _consume(kafka, topic, expected, timeout, count=lambda m: len(_events(m))):
        out.extend((message, event) for event in _events(message))
    return out


def _consume(kafka: KafkaSettings, topic: str, expected: int,
             timeout: float = 30.0, count: Any = lambda m: 1) -> list[Any]:
    """Every message of ``topic`` (all partitions from the start); waits for ``expected`` (as
    ``count`` counts them: messages by default), then drains one more second so duplicates or
    extras would show."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers,
                         "group.id": f"test-{uuid.uuid4().hex}", "enable.auto.commit": False})
    try:
        # List all topics (a per-topic metadata request would auto-create it) until the recorder
        # has created it, with every partition led.
        deadline = time.monotonic() + timeout
        partitions: dict[int, Any] = {}
        while time.monotonic() < deadline:
            found = consumer.list_topics(timeout=10).topics.get(topic)
            if found is not None and found.partitions and found.error is None and all(
                    p.leader >= 0 for p in found.partitions.values()):
                partitions = found.partitions
                break
            time.sleep(0.1)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages: list[Any] = []
        seen = 0
        extra_until: float | None = None
        while time.monotonic() < deadline:
            if seen >= expected:
                extra_until = extra_until or time.monotonic() + 1.0
                if time.monotonic() >= extra_until:
                    break
            for message in consumer.consume(1000, timeout=0.2):
                if message.error() is None:
                    messages.append(message)
                    seen += count(message)
        return messages
    finally:
        consumer.close()


def _partition_count(kafka: KafkaSettings) -> int:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "unused"})
    try:
        return len(consumer.list_topics(kafka.events_topic, timeout=10).topics[kafka.events_topic]
                   .partitions)
    finally:
        consumer.close()


def _record(recorder: Recorder, **overrides: Any) -> bool:
    fields: dict[str, Any] = {
        "query_name": "ordersByStatus", "sql": SQL_STATUS, "execution_time_ms": 3.5,
        "sql_generation_time_ms": 0.1, "db_round_trip_time_ms": 3.0, "projection_time_ms": 0.4,
        "rows_returned": 20, "cache_hit": True,
    }
    fields.update(overrides)
    return recorder.record(**fields)


def _metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


# ----------------------------------------------------------------------------- Kafka


@pytest.mark.kafka
@pytest.mark.parametrize("batched", [True, False], ids=["batch-messages", "single-messages"])
def test_events_arrive_exactly_as_recorded(kafka_settings: KafkaSettings, batched: bool) -> None:
    settings = _settings(kafka_settings, batch_messages=batched)
    base = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    expected: list[dict[str, Any]] = []
    with Recorder(settings, instance="api-test-1") as recorder:
        for i in range(300):
            sql = SQL_STATUS if i % 3 else SQL_BY_ID
            error = "QueryCanceled" if i % 7 == 0 else None
            when: datetime | int = base + timedelta(milliseconds=i) if i % 2 \
                else 1_740_000_000_000_000 + i
            instance = "api-other" if i % 5 == 0 else None
            kept = recorder.record(
                query_name=f"query_{i % 4}_é", sql=sql, execution_time_ms=1.5 + i,
                sql_generation_time_ms=0.25, db_round_trip_time_ms=1.0 + i,
                projection_time_ms=0.125, rows_returned=i * 1000, cache_hit=i % 2 == 0,
                error=error, occurred_at=when, instance=instance)
            assert kept
            expected.append({
                # Integer arithmetic: float seconds would round some microseconds away.
                "occurred_at": (base + timedelta(milliseconds=i) - EPOCH) // MICROSECOND
                if i % 2 else 1_740_000_000_000_000 + i,
                "region": "test", "instance": instance or "api-test-1",
                "query_name": f"query_{i % 4}_é", "sql": sql, "fingerprint": fingerprint_sql(sql),
                "execution_time_ms": 1.5 + i, "sql_generation_time_ms": 0.25,
                "db_round_trip_time_ms": 1.0 + i, "projection_time_ms": 0.125,
                "rows_returned": i * 1000, "cache_hit": i % 2 == 0, "error": error,
                "sample_weight": 1.0,
            })
        assert recorder.flush(20)
        stats = recorder.stats()
    assert stats.sent == 300 and stats.dropped_total == 0 and stats.held == 0

    received = _consume_events(kafka_settings, kafka_settings.events_topic, 300)
    assert len(received) == 300
    partitions = _partition_count(kafka_settings)
    decoded = []
    for message, event in received:
        if batched:  # one batch per partition and flush, keyed by the sender
            assert message.key() == b"api-test-1"
            assert len(message.value()) <= settings.metrics.max_message_bytes
        else:
            assert message.key().decode() == event["fingerprint"]  # key = fingerprint (SPEC §2)
        # Either way in the partition Kafka's default partitioner gives the fingerprint.
        assert message.partition() == partition_of(event["fingerprint"].encode(), partitions)
        decoded.append(event)
    if batched:
        assert len({m.offset() for m, _ in received}) < 300 / 10
    assert len({e["event_id"] for e in decoded}) == 300
    for event in decoded:
        uuid.UUID(event.pop("event_id"))
    # Kafka orders per partition only; compare as multisets keyed by the unique rows_returned.
    assert sorted(decoded, key=lambda e: e["rows_returned"]) == expected


@pytest.mark.kafka
def test_default_time_is_query_start_and_interval_flush(kafka_settings: KafkaSettings) -> None:
    settings = _settings(kafka_settings, batch_size=1000, flush_interval_secs=0.3)
    with Recorder(settings) as recorder:
        before = time.time_ns() // 1000
        assert _record(recorder, execution_time_ms=250.0)
        after = time.time_ns() // 1000
        # No flush() call: the interval alone must send the partial batch.
        messages = _consume_events(kafka_settings, kafka_settings.events_topic, 1, timeout=15)
    assert len(messages) == 1
    event = messages[0][1]
    # occurred_at = when the query *started*: now minus its execution time.
    assert before - 250_000 - 1000 <= event["occurred_at"] <= after - 250_000 + 1000


@pytest.mark.kafka
def test_sampling_weights_on_the_wire(kafka_settings: KafkaSettings) -> None:
    settings = _settings(kafka_settings, sample_rate=0.5, slow_query_ms=100.0)
    with Recorder(settings) as recorder:
        kept = sum(_record(recorder, execution_time_ms=1.0, rows_returned=i) for i in range(400))
        assert _record(recorder, execution_time_ms=150.0, rows_returned=10_001)
        assert _record(recorder, error="DeadlockDetected", rows_returned=10_002)
        assert recorder.flush(20)
    assert 140 < kept < 260
    events = [e for _m, e in _consume_events(kafka_settings, kafka_settings.events_topic, kept + 2)]
    weights = {e["rows_returned"]: e["sample_weight"] for e in events}
    assert len(events) == kept + 2
    assert weights.pop(10_001) == 1.0 and weights.pop(10_002) == 1.0
    assert set(weights.values()) == {2.0}


@pytest.mark.kafka
def test_bad_values_are_counted_never_raised(kafka_settings: KafkaSettings) -> None:
    settings = _settings(kafka_settings)
    with Recorder(settings) as recorder:
        assert not _record(recorder, execution_time_ms=None)  # fails in record(): invalid_input
        assert _record(recorder, rows_returned="many")  # fails when encoded: encode_error
        assert _record(recorder, execution_time_ms=math.nan)  # schema-valid; the stream rejects
        assert _record(recorder)
        assert recorder.flush(20)
        stats = recorder.stats()
    assert stats.dropped["invalid_input"] == 1
    assert stats.dropped["encode_error"] == 1
    assert stats.sent == 2


@pytest.mark.kafka
def test_asyncio_usage(kafka_settings: KafkaSettings) -> None:
    settings = _settings(kafka_settings)

    async def api() -> Recorder:
        async with Recorder(settings) as recorder:
            for i in range(20):
                assert _record(recorder, rows_returned=i)  # sync, non-blocking: fine in a coroutine
                await asyncio.sleep(0)
        return recorder

    recorder = asyncio.run(api())
    assert recorder.stats().sent == 20
    assert len(_consume_events(kafka_settings, kafka_settings.events_topic, 20)) == 20


@pytest.mark.kafka
def test_prometheus_metrics(kafka_settings: KafkaSettings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = _settings(kafka_settings, sample_rate=0.0, slow_query_ms=10.0, metrics_port=port,
                         buffer_size=777)
    sampled0 = _metric("fraiseql_events_sampled_total")
    sent0 = _metric("fraiseql_events_sent_total")
    not_sampled0 = _metric("fraiseql_events_not_sampled_total")
    capacity0 = _metric("fraiseql_metrics_buffer_capacity")
    with Recorder(settings) as recorder:
        assert _metric("fraiseql_metrics_buffer_capacity") == capacity0 + 777
        for _ in range(10):
            _record(recorder, execution_time_ms=1.0)  # fast: not sampled at rate 0
        for _ in range(3):
            _record(recorder, execution_time_ms=50.0)  # slow: kept
        assert recorder.flush(20)
        assert _metric("fraiseql_events_not_sampled_total") == not_sampled0 + 10
        assert _metric("fraiseql_events_sampled_total") == sampled0 + 3
        assert _metric("fraiseql_events_sent_total") == sent0 + 3
        assert _metric("fraiseql_metrics_buffer_size") == 0
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in ("fraiseql_metrics_buffer_size", "fraiseql_metrics_buffer_capacity",
                 "fraiseql_events_sampled_total", "fraiseql_events_sent_total",
                 "fraiseql_events_not_sampled_total",
                 'fraiseql_events_dropped_total{reason="buffer_full"}'):
        assert name in body, name
    assert _metric("fraiseql_metrics_buffer_capacity") == capacity0


def test_broker_down_never_blocks_and_drops_are_counted() -> None:
    """A closed port stands for an unreachable broker; the shared broker is left alone."""
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1", region="test",
                          events_topic=f"t{uuid.uuid4().hex[:8]}.events")
    settings = _settings(kafka, buffer_size=500, batch_size=100, flush_interval_secs=0.05)
    dropped0 = _metric("fraiseql_events_dropped_total", {"reason": "buffer_full"})
    recorder = Recorder(settings, delivery_timeout_secs=1.0).start()
    timings = []
    record = recorder.record
    for i in range(20_000):
        start = time.perf_counter_ns()
        record(query_name="q", sql=SQL_BY_ID, execution_time_ms=1.0,
               sql_generation_time_ms=0.0, db_round_trip_time_ms=1.0, projection_time_ms=0.0,
               rows_returned=i, cache_hit=False)
        timings.append(time.perf_counter_ns() - start)
    stats = recorder.stats()
    assert stats.held <= 500  # bounded: buffer + unacknowledged never exceed buffer_size
    assert stats.dropped["buffer_full"] >= 20_000 - 500
    assert _metric("fraiseql_events_dropped_total", {"reason": "buffer_full"}) >= \
        dropped0 + 20_000 - 500
    timings.sort()
    # Per call: ~1-2 µs; bounds are generous for a loaded 2-CPU CI machine, and far below any
    # network timeout (the broker never answers).
    assert statistics.median(timings) < 50_000
    assert timings[int(len(timings) * 0.999)] < 20_000_000

    # Held events fail after the delivery timeout (plus the bounded topic-creation attempt) and
    # free their slots: the recorder recovers instead of staying full.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and recorder.stats().held:
        time.sleep(0.1)
    stats = recorder.stats()
    assert stats.held == 0
    assert stats.dropped["delivery_failed"] == stats.sampled - stats.dropped["buffer_full"]
    assert _record(recorder)  # room again
    closing = time.monotonic()
    lost = recorder.close(timeout=1.0)
    assert time.monotonic() - closing < 10
    assert lost == 1
    assert recorder.stats().dropped["shutdown"] == 1


# ----------------------------------------------------------------------------- no Kafka


def test_disabled_is_a_no_op() -> None:
    recorder = Recorder(Settings(enabled=False, sample_rate=1.0))
    assert recorder.start() is recorder
    assert not _record(recorder)
    stats = recorder.stats()
    assert (stats.sampled, stats.not_sampled, stats.held, stats.running) == (0, 0, 0, False)
    assert recorder.close() == 0


def test_buffer_is_bounded_before_start_and_after_close() -> None:
    settings = Settings(enabled=True, sample_rate=1.0,
                        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                        metrics=MetricsSettings(buffer_size=10, batch_size=5))
    recorder = Recorder(settings)
    results = [_record(recorder) for _ in range(25)]
    assert results.count(True) == 10
    assert recorder.stats().dropped["buffer_full"] == 15
    assert recorder.close(timeout=0) == 10  # never started: held events are lost, and counted
    assert not _record(recorder)
    assert recorder.stats().dropped["closed"] == 1


# ----------------------------------------------------------------------------- encoder

_text = st.text(max_size=40).filter(lambda s: all(not 0xD800 <= ord(c) <= 0xDFFF for c in s))
_double = st.floats(allow_nan=False) | st.just(math.inf) | st.just(-0.0)
_long = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)


@settings(max_examples=300, deadline=None)
@given(values=st.fixed_dictionaries({
    "event_id": _text, "occurred_at": _long, "region": _text, "instance": _text,
    "query_name": _text, "sql": st.text(max_size=400).filter(
        lambda s: all(not 0xD800 <= ord(c) <= 0xDFFF for c in s)),
    "fingerprint": _text, "execution_time_ms": _double, "sql_generation_time_ms": _double,
    "db_round_trip_time_ms": _double, "projection_time_ms": _double, "rows_returned": _long,
    "cache_hit": st.booleans(), "error": st.none() | _text, "sample_weight": _double,
}))
def test_fast_encoder_is_byte_identical_to_the_codec(values: dict[str, Any]) -> None:
    encoder = QueryEventEncoder()
    assert encoder.fast
    encoded = encoder.encode(*(values[name] for name in QUERY_EVENT_FIELDS))
    assert encoded == default_codec().encode(QUERY_EVENT, values)


def test_fast_encoder_rejects_what_the_schema_cannot_hold() -> None:
    encoder = QueryEventEncoder()
    good: list[Any] = ["id", 1, "r", "i", "q", "s", "f", 1.0, 0.0, 0.0, 0.0, 1, True, None, 1.0]
    for index, bad in ((1, 1 << 63), (11, "x"), (2, None), (7, "slow")):
        args = list(good)
        args[index] = bad
        with pytest.raises((TypeError, ValueError, Exception)):
            encoder.encode(*args)


def test_event_ids_are_unique_uuid4() -> None:
    factory = EventIdFactory()
    ids = [factory() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    for event_id in ids[:100] + ids[-100:]:
        parsed = uuid.UUID(event_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == event_id
    assert EventIdFactory(b"\x01" * 16)() == EventIdFactory(b"\x01" * 16)()  # seedable
    assert EventIdFactory()() != EventIdFactory()()


def test_generic_fallback_gives_the_same_bytes() -> None:
    """If the schema ever stops matching the fast layout, encode() falls back to the codec."""
    fast = QueryEventEncoder()
    slow = QueryEventEncoder()
    slow.fast = False  # what the constructor's self-check sets on a mismatch
    args: list[Any] = ["0f" * 18, START_US, "eu-west-1", "api-1", "orders", SQL_STATUS,
                       fingerprint_sql(SQL_STATUS), 12.5, 0.1, 12.0, 0.4, 300, False,
                       "QueryCanceled", 100.0]
    assert slow.encode(*args) == fast.encode(*args)


# ----------------------------------------------------------------------------- batch messages


@pytest.mark.kafka
def test_a_patterns_events_from_two_recorders_meet_in_one_partition(
    kafka_settings: KafkaSettings,
) -> None:
    """Batching recorders and a single-message one put each fingerprint where librdkafka's
    (and the Java client's) default partitioner puts a message keyed by it."""
    sqls = [f"SELECT data FROM tv_{name} WHERE id = $1" for name in "abcdefghij"]
    recorders = [Recorder(_settings(kafka_settings), instance="api-a"),
                 Recorder(_settings(kafka_settings), instance="api-b"),
                 Recorder(_settings(kafka_settings, batch_messages=False), instance="api-c")]
    for recorder in recorders:
        recorder.start()
        for i in range(60):
            assert _record(recorder, sql=sqls[i % len(sqls)], rows_returned=i)
    for recorder in recorders:
        assert recorder.flush(20)
        recorder.close()
    received = _consume_events(kafka_settings, kafka_settings.events_topic, 180)
    assert len(received) == 180
    by_fingerprint: dict[str, set[int]] = {}
    for message, event in received:
        by_fingerprint.setdefault(event["fingerprint"], set()).add(message.partition())
    partitions = _partition_count(kafka_settings)
    assert partitions > 1
    assert {fp: p for fp, p in by_fingerprint.items()} == {
        fingerprint_sql(sql): {partition_of(fingerprint_sql(sql).encode(), partitions)}
        for sql in sqls}
    assert len({p for ps in by_fingerprint.values() for p in ps}) > 1  # not all in one


@pytest.mark.kafka
def test_librdkafka_murmur2_partitioner_agrees_with_partition_of(
    kafka_settings: KafkaSettings,
) -> None:
    topic = kafka_settings.events_topic
    ensure_topics(kafka_settings, [topic], partitions=7)
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers,
                         "partitioner": PARTITIONER})
    delivered: dict[bytes, int] = {}
    keys = [uuid.uuid4().hex[: 1 + i % 40].encode() for i in range(300)]
    for key in keys:
        producer.produce(topic, b"x", key,
                         on_delivery=lambda err, msg: delivered.__setitem__(msg.key(), msg.partition()))
    assert producer.flush(30) == 0
    assert delivered == {key: partition_of(key, 7) for key in keys}


@pytest.mark.kafka
def test_batches_stay_under_max_message_bytes(kafka_settings: KafkaSettings) -> None:
    settings = _settings(kafka_settings, batch_size=1000, max_message_bytes=2048)
    with Recorder(settings, instance="api-split") as recorder:
        for i in range(200):
            assert _record(recorder, rows_returned=i)  # one pattern: one partition
        assert recorder.flush(20)
        assert recorder.stats().sent == 200
    received = _consume_events(kafka_settings, kafka_settings.events_topic, 200)
    messages = {m.offset(): m for m, _ in received}
    assert sorted(e["rows_returned"] for _, e in received) == list(range(200))
    assert len({m.partition() for m in messages.values()}) == 1
    assert len(messages) >= 200 * 150 // 2048  # ~150-byte events: split, not one message
    assert all(len(m.value()) <= 2048 for m in messages.values())
    # In order within the partition: offsets, then the events in each batch.
    in_order = [e["rows_returned"] for m, e in sorted(received, key=lambda r: r[0].offset())]
    assert in_order == list(range(200))
