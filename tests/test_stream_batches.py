"""The stream worker on ``QueryEventBatch`` messages, against the real broker.

A batch's events share its offset and broker timestamp: one bad event is dead-lettered alone
(the message's original bytes, its index in the detail) and the others count (several bad for one
reason: one dead letter naming their indexes); an undecodable
batch is one dead letter of the whole message; batches and single events mix on one topic; and
kill -9 three times still counts every event exactly once (offsets address whole batches).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from fraiseql_obs_producers.encoding import QueryEventEncoder
from fraiseql_obs_producers.partitioning import partition_of
from fraiseql_observability.codec import QUERY_EVENT, QUERY_EVENT_BATCH
from fraiseql_observability.config import KafkaSettings, Settings
from fraiseql_observability.kafka import ensure_topics
from tests.fix_kafka import produce
from tests.fix_procs import ENGINES, Processes, write_config
from tests.test_stream import (
    CODEC,
    MICROS,
    MINUTE,
    Worker,
    assert_rollups_match,
    make_event,
    read_dead_letters,
    read_rollups,
    stream_settings,
)
from tests.test_stream_faults import (
    FINGERPRINTS,
    REGIONS,
    Feeder,
    assert_exact,
    kill_three_times,
    wait_for_totals,
)

pytestmark = [pytest.mark.kafka]


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _batch(events: list[dict[str, Any]]) -> bytes:
    return CODEC.encode(QUERY_EVENT_BATCH, {"events": events})


def test_one_bad_event_in_a_batch_is_dead_lettered_alone_and_the_rest_counted(
    kafka_settings: KafkaSettings,
) -> None:
    settings: Settings = stream_settings(kafka_settings, late_slot_secs=1)  # corrections close fast
    ensure_topics(kafka_settings, [kafka_settings.events_topic])
    base = (time.time_ns() // 1000 // MINUTE - 30) * MINUTE
    good = [make_event(["aa01", "bb02"][i % 2], "us-east-1", base + i * MICROS, 1.0 + i, 2.0)
            for i in range(40)]
    bad = make_event("aa01", "us-east-1", base + 7 * MICROS, float("nan"), 1.0)
    future = make_event("bb02", "us-east-1", time.time_ns() // 1000 + 3600 * MICROS, 1.0, 1.0)
    mixed = [*good[:7], bad, *good[7:20]]  # the invalid event at index 7 of 21
    # Two of one reason: one dead letter names both (a skewed host must not copy a batch per event).
    with_future = [*good[20:23], future, *good[23:26], future, *good[26:30]]  # 3 and 7 of 12
    broken = _batch(good[30:35])[:-40]  # truncated inside its last item: undecodable as a whole
    single = CODEC.encode(QUERY_EVENT, good[35])  # other producers' single events still count
    messages: list[tuple[bytes | None, bytes]] = [
        (b"api-1", _batch(mixed)), (b"api-1", _batch(with_future)), (b"api-1", broken),
        (b"api-1", _batch([])), (b"aa01", single), (b"api-1", _batch(good[36:]))]
    produce(settings.kafka.bootstrap_servers, settings.kafka.events_topic, messages, partition=2)
    counted0 = _counter("fraiseql_stream_events_counted_total")
    events0 = _counter("fraiseql_stream_events_total")

    worker = Worker(settings)
    try:
        rollups = read_rollups(settings)
    finally:
        worker.close()
    counted = good[:30] + good[35:]  # all but the undecodable batch's five
    assert_rollups_match(rollups, counted)
    assert {(r["first_offset"], r["last_offset"]) for r in rollups} <= {
        (a, b) for a in range(6) for b in range(a, 6)}  # offsets address messages
    assert _counter("fraiseql_stream_events_counted_total") - counted0 == len(counted)
    # Events in: 21 + 12 + one undecodable message + 0 + 1 + 4.
    assert _counter("fraiseql_stream_events_total") - events0 == 21 + 12 + 1 + 0 + 1 + 4

    letters = sorted(read_dead_letters(settings), key=lambda d: d["source_offset"])
    assert [(d["reason"], d["source_offset"], d["source_partition"]) for d in letters] == [
        ("invalid", 0, 2), ("future_timestamp", 1, 2), ("undecodable", 2, 2)]
    invalid, ahead, undecodable = letters
    assert invalid["original_value"] == _batch(mixed)  # the message's original bytes, whole
    assert invalid["detail"].startswith("event index 7 of 21: ")
    assert ahead["original_value"] == _batch(with_future)
    assert ahead["detail"].startswith("event indexes 3, 7 of 12 (2 events): ")
    assert undecodable["original_value"] == broken
    assert "QueryEventBatch" in undecodable["detail"]
    assert all(d["original_key"] == b"api-1" for d in letters)


class BatchFeeder(Feeder):
    """Feeder's events (same totals and event times), sent as batch messages of up to ``size``
    events per partition, partitioned like the Recorder does."""

    size = 250

    def run(self) -> None:
        producer = Producer({"bootstrap.servers": self.kafka.bootstrap_servers, "linger.ms": 20,
                             "enable.idempotence": True})
        encoder = QueryEventEncoder()
        partitions = len(producer.list_topics(self.kafka.events_topic, timeout=10)
                         .topics[self.kafka.events_topic].partitions)

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                self.errors.append(str(err))

        start_us = time.time_ns() // 1000 - 40 * 60 * MICROS
        step = 30 * 60 * MICROS // self.total
        chunks = 40
        per_chunk = self.total // chunks
        for chunk in range(chunks):
            began = time.monotonic()
            groups: dict[int, list[bytes]] = defaultdict(list)
            for i in range(per_chunk if chunk < chunks - 1 else self.total - per_chunk * (chunks - 1)):
                n = chunk * per_chunk + i
                fp = self.rng.choice(FINGERPRINTS)
                region = self.rng.choice(REGIONS)
                weight = self.rng.choice([1.0, 4.0, 100.0])
                event = make_event(fp, region, start_us + n * step, self.rng.uniform(0.5, 300.0), weight)
                groups[partition_of(fp.encode(), partitions)].append(encoder.encode_event(event))
                self.weights[(fp, region)] += weight
                self.counts[(fp, region)] += 1
            for partition, values in groups.items():
                for at in range(0, len(values), self.size):
                    value = encoder.batch(values[at:at + self.size])
                    while True:
                        try:
                            producer.produce(self.kafka.events_topic, value=value, key=b"feeder",
                                             partition=partition, on_delivery=on_delivery)
                            break
                        except BufferError:
                            producer.poll(0.1)
            producer.poll(0)
            time.sleep(max(0.0, self.seconds / chunks - (time.monotonic() - began)))
        assert producer.flush(60) == 0


@pytest.mark.fault
@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_kill_minus_9_three_times_on_batches_counts_every_event_once(
    tmp_path: Path, kafka_settings: KafkaSettings, processes: Processes, engine: str
) -> None:
    ensure_topics(kafka_settings, [kafka_settings.events_topic, kafka_settings.rollups_topic,
                                   kafka_settings.dead_letters_topic])
    config = write_config(tmp_path / "c.toml", kafka_settings)
    feeder = BatchFeeder(kafka_settings, total=100_000, seconds=10, seed=21)
    feeder.start()
    kill_three_times(processes, config, engine, [1.5, 2.5, 3.5])
    feeder.join()
    assert not feeder.errors
    assert_exact(wait_for_totals(kafka_settings, feeder, processes), feeder)
