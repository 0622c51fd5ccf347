"""Fault tests of ``fraiseql-cli stream`` processes on the real broker.

kill -9 at random moments, a worker lost in a two-worker group, hostile input: the closed windows'
rollups must count every valid event exactly once, and no rollup id may carry two contents.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from fraiseql_observability.codec import DEAD_LETTER, QUERY_EVENT, QUERY_ROLLUP, default_codec
from fraiseql_observability.config import KafkaSettings
from fraiseql_observability.kafka import ensure_topics
from tests.fix_kafka import consume_all
from tests.fix_procs import ENGINES, Processes, stream_cli, write_config
from tests.test_stream import make_event

pytestmark = [pytest.mark.kafka, pytest.mark.fault, pytest.mark.slow]

MICROS = 1_000_000
CODEC = default_codec()
FINGERPRINTS = [f"{i:04x}beef" for i in range(40)]
REGIONS = ["us-east-1", "eu-west-1"]


class Feeder(threading.Thread):
    """Produces ``total`` valid events (plus optional garbage) over ``seconds``, in event-time order.

    Event times advance with the feed, so windows keep closing while the workers run and get killed.
    """

    def __init__(self, kafka: KafkaSettings, total: int, seconds: float, seed: int,
                 garbage: list[bytes] | None = None) -> None:
        super().__init__(daemon=True)
        self.kafka, self.total, self.seconds = kafka, total, seconds
        self.rng = random.Random(seed)
        self.garbage = garbage or []
        self.weights: dict[tuple[str, str], float] = defaultdict(float)
        self.counts: dict[tuple[str, str], int] = defaultdict(int)
        self.errors: list[str] = []

    def run(self) -> None:
        producer = Producer({"bootstrap.servers": self.kafka.bootstrap_servers, "linger.ms": 20,
                             "enable.idempotence": True, "partitioner": "murmur2_random"})

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                self.errors.append(str(err))

        start_us = time.time_ns() // 1000 - 40 * 60 * MICROS  # 40 minutes of event time
        step = 30 * 60 * MICROS // self.total
        chunks = 40
        per_chunk = self.total // chunks
        garbage_per_chunk = -(-len(self.garbage) // chunks) if self.garbage else 0
        garbage = iter(self.garbage)
        for chunk in range(chunks):
            began = time.monotonic()
            for i in range(per_chunk if chunk < chunks - 1 else self.total - per_chunk * (chunks - 1)):
                n = chunk * per_chunk + i
                fp = self.rng.choice(FINGERPRINTS)
                region = self.rng.choice(REGIONS)
                weight = self.rng.choice([1.0, 4.0, 100.0])
                event = make_event(fp, region, start_us + n * step, self.rng.uniform(0.5, 300.0), weight)
                self._send(producer, fp.encode(), CODEC.encode(QUERY_EVENT, event), on_delivery)
                self.weights[(fp, region)] += weight
                self.counts[(fp, region)] += 1
            for _ in range(garbage_per_chunk):
                value = next(garbage, None)
                if value is not None:
                    self._send(producer, b"junk", value, on_delivery)
            producer.poll(0)
            time.sleep(max(0.0, self.seconds / chunks - (time.monotonic() - began)))
        assert producer.flush(60) == 0

    def _send(self, producer: Producer, key: bytes, value: bytes, on_delivery: Any) -> None:
        while True:
            try:
                producer.produce(self.kafka.events_topic, value=value, key=key, on_delivery=on_delivery)
                return
            except BufferError:
                producer.poll(0.1)


def dedupe(rollups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_id: dict[str, dict[str, Any]] = {}
    for r in rollups:
        previous = by_id.setdefault(r["rollup_id"], r)
        assert previous == r, f"rollup {r['rollup_id']} published with two different contents"
    return by_id


def wait_for_totals(kafka: KafkaSettings, feeder: Feeder, processes: Processes,
                    timeout: float = 180) -> dict[str, dict[str, Any]]:
    """Read rollups until their (deduplicated) totals reach what was produced."""
    want = sum(feeder.weights.values())
    deadline = time.monotonic() + timeout
    by_id: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        processes.assert_running()
        records = [CODEC.decode(v, QUERY_ROLLUP) for _, v, _, _ in
                   consume_all(kafka.bootstrap_servers, kafka.rollups_topic, idle_secs=2, max_secs=30)]
        by_id = dedupe(records)
        if sum(r["count"] for r in by_id.values()) >= want - 1e-6:
            break
        time.sleep(3)
    return by_id


def assert_exact(by_id: dict[str, dict[str, Any]], feeder: Feeder) -> None:
    weights: dict[tuple[str, str], float] = defaultdict(float)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for r in by_id.values():
        weights[(r["fingerprint"], r["region"])] += r["count"]
        counts[(r["fingerprint"], r["region"])] += r["event_count"]
    assert dict(counts) == dict(feeder.counts), "event counts differ per (pattern, region)"
    for key, weight in feeder.weights.items():
        assert weights[key] == pytest.approx(weight, rel=1e-12), key


def wait_assigned(processes: Processes, name: str, timeout: float = 60) -> None:
    """Until the worker logged its first partition assignment (``assigned <tp> from ...``)."""
    path = processes.logs / f"{name}.log"
    deadline = time.monotonic() + timeout
    while not (path.exists() and re.search(r"assigned \S+\[\d+\] from", path.read_text(errors="replace"))):
        assert time.monotonic() < deadline, processes.log(name)
        processes.assert_running()
        time.sleep(0.2)


def kill_three_times(processes: Processes, config: Path, engine: str, pauses: list[float]) -> None:
    """Start a stream worker, then kill -9 it and start another, once per pause: each killed while
    it works, ``pause`` seconds after it took its partitions (a restarted worker waits for the
    group to drop the killed one, up to the session timeout). The last one keeps running."""
    name = "stream-0"
    processes.start(name, stream_cli(config, engine))
    for kill, pause in enumerate(pauses):
        wait_assigned(processes, name)
        time.sleep(pause)
        processes.assert_running()
        processes.kill9(name)
        name = f"stream-{kill + 1}"
        processes.start(name, stream_cli(config, engine))
        print(f"kill -9 number {kill + 1} done")


@pytest.fixture
def fault_kafka(kafka_settings: KafkaSettings) -> KafkaSettings:
    ensure_topics(kafka_settings, [kafka_settings.events_topic, kafka_settings.rollups_topic,
                                   kafka_settings.dead_letters_topic])
    return kafka_settings


@pytest.mark.parametrize("engine", ENGINES)
def test_kill_minus_9_three_times_counts_every_event_once(
    tmp_path: Path, fault_kafka: KafkaSettings, processes: Processes, engine: str
) -> None:
    config = write_config(tmp_path / "c.toml", fault_kafka)
    feeder = Feeder(fault_kafka, total=100_000, seconds=15, seed=11)
    feeder.start()
    rng = random.Random(5)
    kill_three_times(processes, config, engine, [rng.uniform(2.0, 5.0) for _ in range(3)])
    feeder.join()
    assert not feeder.errors
    assert_exact(wait_for_totals(fault_kafka, feeder, processes), feeder)


@pytest.mark.parametrize("engine", ENGINES)
def test_rebalance_after_losing_one_of_two_workers(
    tmp_path: Path, fault_kafka: KafkaSettings, processes: Processes, engine: str
) -> None:
    config = write_config(tmp_path / "c.toml", fault_kafka)
    feeder = Feeder(fault_kafka, total=60_000, seconds=15, seed=12)
    processes.start("stream-a", stream_cli(config, engine))
    processes.start("stream-b", stream_cli(config, engine))
    time.sleep(3)
    feeder.start()
    time.sleep(6)
    processes.kill9("stream-b")  # its partitions move to stream-a after the session timeout
    feeder.join()
    assert not feeder.errors
    assert_exact(wait_for_totals(fault_kafka, feeder, processes), feeder)


def hostile_messages(n: int, seed: int) -> list[bytes]:
    """Random bytes, truncated events, unknown schemas, NaN durations, trailing junk: none valid."""
    rng = random.Random(seed)
    template = CODEC.encode(QUERY_EVENT, make_event("dead0001", "us-east-1",
                                                    time.time_ns() // 1000 - 45 * 60 * MICROS, 1.0, 1.0))
    nan_event = CODEC.encode(QUERY_EVENT, make_event("dead0002", "us-east-1",
                                                     time.time_ns() // 1000, float("nan"), 1.0))
    out: list[bytes] = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(0, 300)))
        elif kind == 1:
            out.append(template[: rng.randrange(0, len(template))])
        elif kind == 2:
            out.append(b"\xc3\x01" + rng.randbytes(8) + rng.randbytes(rng.randrange(0, 100)))
        elif kind == 3:
            out.append(nan_event)
        else:
            out.append(template + rng.randbytes(rng.randrange(1, 20)))  # trailing junk
    return out


@pytest.mark.parametrize("engine", ENGINES)
def test_hostile_input_is_dead_lettered_and_valid_traffic_counted(
    tmp_path: Path, fault_kafka: KafkaSettings, processes: Processes, engine: str
) -> None:
    config = write_config(tmp_path / "c.toml", fault_kafka)
    garbage = hostile_messages(10_000, seed=3)
    feeder = Feeder(fault_kafka, total=50_000, seconds=8, seed=13, garbage=garbage)
    processes.start("stream", stream_cli(config, engine))
    feeder.start()
    feeder.join()
    assert_exact(wait_for_totals(fault_kafka, feeder, processes), feeder)
    processes.assert_running()
    dead = [CODEC.decode(v, DEAD_LETTER) for _, v, _, _ in
            consume_all(fault_kafka.bootstrap_servers, fault_kafka.dead_letters_topic,
                        expected=len(garbage), max_secs=60)]
    assert len(dead) == len(garbage)
    assert sorted(d["original_value"] or b"" for d in dead) == sorted(garbage)
    assert all(d["reason"] in {"undecodable", "unknown_schema", "invalid"} and d["detail"] for d in dead)
