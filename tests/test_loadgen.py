"""fraiseql_obs_producers.workload and fraiseql_obs_producers.loadgen: valid events, a sound sampling
model, real runs."""

from __future__ import annotations

import math
import random
import re
import threading
import time
import uuid
from collections import defaultdict
from datetime import timedelta
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from fraiseql_obs_producers.encoding import QueryEventEncoder
from fraiseql_obs_producers.errors import LoadgenError
from fraiseql_obs_producers.fingerprint import fingerprint_sql
from fraiseql_obs_producers.loadgen import EventModel, generate_events, run_loadgen, weighted_quantile
from fraiseql_obs_producers.workload import DEFAULT_REGIONS, VIEWS, default_workload
from fraiseql_obs_streams.validation import invalid_reason
from fraiseql_observability.codec import QUERY_EVENT, default_codec
from fraiseql_observability.config import KafkaSettings, MetricsSettings, Settings

HOUR_US = 3_600_000_000
START_US = 1_740_000_000_000_000


def test_workload_shape() -> None:
    workload = default_workload()
    patterns = workload.patterns
    assert len(patterns) >= 130
    assert {p.view for p in patterns} == set(VIEWS)
    assert len({p.fingerprint for p in patterns}) == len(patterns)
    assert sum(workload.share(p) for p in patterns) == pytest.approx(1.0)
    planted = [p for p in patterns if p.planted]
    assert len(planted) >= 6
    # Planted slow JSONB patterns: 100-420 ms medians (containment, a GIN case, is 60 ms).
    assert all(100 <= p.median_ms <= 420 or p.kind == "containment" for p in planted)
    assert all(p.median_ms <= 5 for p in patterns if p.kind == "by_id")
    for pattern in patterns:
        assert "data" in pattern.sql and pattern.fingerprint == fingerprint_sql(pattern.sql)
        # Argument generators fit the placeholders: ready for a real-execution mode.
        args = pattern.params(random.Random(1))
        highest = max((int(n) for n in re.findall(r"\$(\d+)", pattern.sql)), default=0)
        assert len(args) == highest, pattern.sql
    tail = [p for p in patterns if not p.planted and p.query_name[-1].isdigit()]
    assert len(tail) >= 100
    assert sum(workload.share(p) for p in tail) < 0.1  # rare
    # Zipf-like: the most popular pattern runs far more often than the median one.
    shares = sorted((workload.share(p) for p in patterns), reverse=True)
    assert shares[0] > 20 * shares[len(shares) // 2]


def test_every_event_is_valid_and_encodes() -> None:
    codec = default_codec()
    encoder = QueryEventEncoder()
    events = list(generate_events(20_000, start_us=START_US, end_us=START_US + HOUR_US,
                                  regions=("us-east-1", "eu-west-1", "ap-south-1"), seed=5,
                                  sample_rate=0.01))
    assert len(events) == 20_000
    for event in events:
        assert invalid_reason(event) is None, event
        encoded = encoder.encode_event(event)
        assert encoded == codec.encode(QUERY_EVENT, event)
    for event in events[:500]:
        assert codec.decode(encoder.encode_event(event), QUERY_EVENT) == event
    for event in events:
        components = (event["sql_generation_time_ms"] + event["db_round_trip_time_ms"]
                      + event["projection_time_ms"])
        assert components == pytest.approx(event["execution_time_ms"], rel=1e-9, abs=1e-9)
    assert len({e["event_id"] for e in events}) == len(events)
    assert {e["region"] for e in events} == {"us-east-1", "eu-west-1", "ap-south-1"}
    assert {e["sample_weight"] for e in events} == {1.0, 100.0}
    assert any(e["error"] for e in events)


def test_time_order_range_and_determinism() -> None:
    first = list(generate_events(5000, start_us=START_US, end_us=START_US + HOUR_US, seed=11))
    again = list(generate_events(5000, start_us=START_US, end_us=START_US + HOUR_US, seed=11))
    other = list(generate_events(5000, start_us=START_US, end_us=START_US + HOUR_US, seed=12))
    assert first == again
    assert first != other
    times = [e["occurred_at"] for e in first]
    assert times == sorted(times)
    assert times[0] >= START_US
    assert times[-1] < START_US + HOUR_US
    # Spread over the whole interval, not bunched: each 6-minute slice holds ~10 %.
    slices: dict[int, int] = defaultdict(int)
    for t in times:
        slices[(t - START_US) * 10 // HOUR_US] += 1
    assert all(400 < slices[i] < 600 for i in range(10))


def test_weights_reconstruct_the_modelled_population() -> None:
    """The generator draws kept events directly; their weights must add up to the model's shares.

    At sample rate 1 % the weighted share of each popular pattern matches its workload share
    (tolerance 3.5 standard errors of a ~1 % sample), and the slow planted patterns keep their
    lognormal medians.
    """
    workload = default_workload()
    events = list(generate_events(60_000, start_us=START_US, end_us=START_US + HOUR_US, seed=3,
                                  sample_rate=0.01, slow_query_ms=300.0, workload=workload))
    total = math.fsum(e["sample_weight"] for e in events)
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_name[event["query_name"]].append(event)
    for pattern in workload.patterns[:16]:
        share = workload.share(pattern)
        kept = by_name[pattern.query_name]
        weighted = math.fsum(e["sample_weight"] for e in kept)
        uniform = sum(1 for e in kept if e["sample_weight"] > 1)
        se = 100 * math.sqrt(max(uniform, 1)) / total
        assert abs(weighted / total - share) < 3.5 * se + 1e-3, pattern.query_name
        durations = [e["execution_time_ms"] for e in kept]
        weights = [e["sample_weight"] for e in kept]
        median = weighted_quantile(durations, weights, 0.5)
        # The first region is the busiest and the second runs 15 % slower.
        assert pattern.median_ms * 0.85 < median < pattern.median_ms * 1.3, pattern.query_name
    slow = [e for e in events if e["execution_time_ms"] >= 300.0]
    assert slow and all(e["sample_weight"] == 1.0 for e in slow)


def test_argument_errors() -> None:
    with pytest.raises(LoadgenError):
        list(generate_events(1, start_us=10, end_us=10))
    with pytest.raises(LoadgenError):
        EventModel(default_workload(), ())
    settings = Settings()
    with pytest.raises(LoadgenError):
        run_loadgen(settings, rate=0)
    with pytest.raises(LoadgenError):
        run_loadgen(settings, backfill=timedelta(hours=1))  # neither count nor rate


def _consume_all(kafka: KafkaSettings, expected: int, timeout: float = 60.0) -> list[Any]:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers,
                         "group.id": f"test-{uuid.uuid4().hex}", "enable.auto.commit": False})
    try:
        topic = kafka.events_topic
        partitions = consumer.list_topics(timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(messages) < expected:
            messages.extend(m for m in consumer.consume(5000, timeout=0.5) if m.error() is None)
        messages.extend(m for m in consumer.consume(5000, timeout=1.0) if m.error() is None)
        return messages
    finally:
        consumer.close()


@pytest.mark.kafka
def test_backfill_run_matches_its_report(kafka_settings: KafkaSettings) -> None:
    settings = Settings(sample_rate=0.01, kafka=kafka_settings,
                        metrics=MetricsSettings(slow_query_ms=500.0))
    before_us = time.time_ns() // 1000
    report = run_loadgen(settings, count=5000, backfill=timedelta(hours=1), seed=42)
    assert report.produced == 5000 and report.failed == 0 and report.delivered == 5000
    assert report.first_us is not None and report.last_us is not None
    assert before_us - HOUR_US - 5_000_000 <= report.first_us <= report.last_us
    assert report.last_us <= time.time_ns() // 1000
    assert report.last_us - report.first_us > 0.95 * HOUR_US

    messages = _consume_all(kafka_settings, 5000)
    assert len(messages) == 5000
    codec = default_codec()
    weighted: dict[tuple[str, str], float] = defaultdict(float)
    durations: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for message in messages:
        event = codec.decode(message.value(), QUERY_EVENT)
        assert message.key().decode() == event["fingerprint"]
        assert invalid_reason(event) is None
        key = (event["fingerprint"], event["region"])
        weighted[key] += event["sample_weight"]
        durations[key].append((event["execution_time_ms"], event["sample_weight"]))
    assert set(weighted) == set(report.patterns)
    for key, totals in report.patterns.items():
        assert weighted[key] == pytest.approx(totals.weighted_count, abs=1e-6)
        assert sorted(durations[key]) == sorted(zip(totals.durations, totals.weights,
                                                    strict=True))
    assert {region for _, region in report.patterns} == set(DEFAULT_REGIONS)
    assert report.summary()["delivered"] == 5000


@pytest.mark.kafka
def test_live_run_is_rate_limited_and_stoppable(kafka_settings: KafkaSettings) -> None:
    settings = Settings(sample_rate=1.0, kafka=kafka_settings)
    report = run_loadgen(settings, rate=400.0, duration=1.5, regions=("eu-west-1",), seed=1)
    assert report.failed == 0
    assert 450 <= report.produced <= 650  # 1.5 s at 400/s, pacing within scheduling noise
    now_us = time.time_ns() // 1000
    assert report.last_us is not None and now_us - report.last_us < 10_000_000

    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    started = time.monotonic()
    stopped = run_loadgen(settings, rate=100.0, stop=stop, seed=2)  # no count, no duration
    assert time.monotonic() - started < 5
    assert 20 <= stopped.produced <= 80
    assert len(_consume_all(kafka_settings, report.produced + stopped.produced)) == \
        report.produced + stopped.produced
