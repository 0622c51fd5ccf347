"""The stream worker against the real broker: exact windows, dead letters, restarts."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from fraiseql_obs_streams.worker import run_stream_loop
from fraiseql_observability.codec import DEAD_LETTER, QUERY_EVENT, QUERY_ROLLUP, default_codec
from fraiseql_observability.config import KafkaSettings, Settings, StreamSettings
from fraiseql_observability.kafka import ensure_topics
from fraiseql_observability.sketch import QuantileSketch
from tests.fix_kafka import consume_all, produce
from tests.oracles import exact_lower_quantile

pytestmark = [pytest.mark.kafka]

MICROS = 1_000_000
MINUTE = 60 * MICROS
CODEC = default_codec()


def make_event(fingerprint: str, region: str, occurred_at: int, duration: float, weight: float,
               *, error: str | None = None) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": occurred_at,
        "region": region,
        "instance": "api-1",
        "query_name": f"query_{fingerprint}",
        "sql": f"SELECT data FROM tv_{fingerprint} WHERE data->>'k' = $1",
        "fingerprint": fingerprint,
        "execution_time_ms": duration,
        "sql_generation_time_ms": 0.1,
        "db_round_trip_time_ms": duration * 0.8,
        "projection_time_ms": 0.05,
        "rows_returned": 3,
        "cache_hit": False,
        "error": error,
        "sample_weight": weight,
    }


def stream_settings(kafka: KafkaSettings, **streams: Any) -> Settings:
    options: dict[str, Any] = {"grace_secs": 5.0, "idle_secs": 2.0, "batch_timeout_secs": 0.2,
                               "metrics_port": 0, "group_id": f"stream-{uuid.uuid4().hex[:8]}"}
    options.update(streams)
    return Settings(kafka=kafka, streams=StreamSettings(**options))


class Worker:
    """One stream worker running in a thread of the test process."""

    def __init__(self, settings: Settings) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(settings,), daemon=True)
        self.thread.start()

    def _run(self, settings: Settings) -> None:
        try:
            run_stream_loop(settings, self.stop)
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "worker did not stop"
        assert self.error is None, self.error


@pytest.fixture
def settings(kafka_settings: KafkaSettings) -> Iterator[Settings]:
    s = stream_settings(kafka_settings)
    ensure_topics(kafka_settings, [kafka_settings.events_topic])
    yield s


def workload(seed: int, base: int, minutes: int = 8) -> list[tuple[int, dict[str, Any]]]:
    """(partition, event) pairs: 3 patterns x 2 regions spread over all 6 partitions, each
    partition's events slightly out of order (within the grace period)."""
    rng = random.Random(seed)
    out = []
    for minute in range(minutes):
        for _ in range(60):
            fp = rng.choice(["aa01", "bb02", "cc03"])
            region = rng.choice(["us-east-1", "eu-west-1"])
            t = base + minute * MINUTE + rng.randrange(MINUTE)
            out.append((rng.randrange(6), make_event(
                fp, region, t, round(rng.lognormvariate(2.0, 1.0), 3), rng.choice([1.0, 10.0, 100.0]),
                error="Timeout" if rng.random() < 0.05 else None,
            )))
    out.sort(key=lambda pe: pe[1]["occurred_at"] + rng.randrange(-2 * MICROS, 2 * MICROS))  # disorder < grace
    return out


def produce_events(settings: Settings, pairs: list[tuple[int, dict[str, Any]]]) -> None:
    by_partition: dict[int, list[tuple[bytes | None, bytes]]] = defaultdict(list)
    for partition, event in pairs:
        by_partition[partition].append((event["fingerprint"].encode(), CODEC.encode(QUERY_EVENT, event)))
    for partition, messages in by_partition.items():
        produce(settings.kafka.bootstrap_servers, settings.kafka.events_topic, messages, partition=partition)


def read_rollups(settings: Settings, *, idle_secs: float = 8.0) -> list[dict[str, Any]]:
    return [CODEC.decode(v, QUERY_ROLLUP)
            for _, v, _, _ in consume_all(settings.kafka.bootstrap_servers, settings.kafka.rollups_topic,
                                          idle_secs=idle_secs)]


def read_dead_letters(settings: Settings) -> list[dict[str, Any]]:
    return [CODEC.decode(v, DEAD_LETTER)
            for _, v, _, _ in consume_all(settings.kafka.bootstrap_servers, settings.kafka.dead_letters_topic,
                                          idle_secs=3.0, max_secs=20)]


def assert_rollups_match(rollups: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """Rollups (deduplicated by id) equal the oracle per (fingerprint, region, window)."""
    by_id: dict[str, dict[str, Any]] = {}
    for r in rollups:
        if r["rollup_id"] in by_id:
            assert by_id[r["rollup_id"]] == r, "one rollup id published with two contents"
        by_id[r["rollup_id"]] = r
    got: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in by_id.values():
        got[(r["fingerprint"], r["region"], r["window_start"])].append(r)
    want: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        want[(e["fingerprint"], e["region"], e["occurred_at"] - e["occurred_at"] % MINUTE)].append(e)
    assert set(got) == set(want)
    for key, evs in want.items():
        parts = got[key]
        assert sum(r["event_count"] for r in parts) == len(evs)
        assert sum(r["count"] for r in parts) == pytest.approx(sum(e["sample_weight"] for e in evs))
        assert sum(r["error_count"] for r in parts) == pytest.approx(
            sum(e["sample_weight"] for e in evs if e["error"]))
        assert min(r["exec_min_ms"] for r in parts) == min(e["execution_time_ms"] for e in evs)
        assert max(r["exec_max_ms"] for r in parts) == max(e["execution_time_ms"] for e in evs)
        merged = QuantileSketch()
        for r in parts:
            merged.merge(QuantileSketch.from_arrays(r["sketch_keys"], r["sketch_weights"], r["sketch_alpha"]))
        values = [(e["execution_time_ms"], e["sample_weight"]) for e in evs]
        for q in (0.5, 0.95, 0.99):
            exact = exact_lower_quantile(values, q)
            estimate = merged.quantile(q)
            assert estimate is not None
            assert abs(estimate - exact) <= merged.alpha * exact + 1e-9, (key, q, estimate, exact)


def test_windows_are_exact_across_partitions_with_late_and_bad_input(settings: Settings) -> None:
    base = (time.time_ns() // 1000 // MINUTE - 30) * MINUTE
    pairs = workload(1, base)
    produce_events(settings, pairs)
    # Late: partition 0 has already seen events minutes later, so minute 0 is closed there; they
    # are counted all the same, in a correction of that window.
    late = [make_event("aa01", "us-east-1", base + 5 * MICROS, 1.0, 1.0) for _ in range(3)]
    produce_events(settings, [(0, e) for e in late])
    bad_nan = make_event("aa01", "us-east-1", base + 7 * MINUTE, float("nan"), 1.0)
    future = make_event("aa01", "us-east-1", time.time_ns() // 1000 + 3600 * MICROS, 1.0, 1.0)
    produce(settings.kafka.bootstrap_servers, settings.kafka.events_topic, [
        (b"x", b"\x00garbage"),
        (b"x", b"\xc3\x01" + b"\x11" * 8 + b"body"),  # unknown schema fingerprint
        (b"x", CODEC.encode(QUERY_EVENT, make_event("aa01", "us-east-1", base, 1.0, 1.0))[:-3]),
        (b"aa01", CODEC.encode(QUERY_EVENT, bad_nan)),
        (b"aa01", CODEC.encode(QUERY_EVENT, future)),
    ], partition=1)

    worker = Worker(settings)
    try:
        rollups = read_rollups(settings)
    finally:
        worker.close()
    assert_rollups_match(rollups, [e for _, e in pairs] + late)
    assert any(r["correction_slot"] is not None for r in rollups)
    reasons = sorted(d["reason"] for d in read_dead_letters(settings))
    assert reasons == sorted(["undecodable", "unknown_schema", "undecodable", "invalid", "future_timestamp"])


def test_restart_midstream_counts_every_event_once(settings: Settings) -> None:
    base = (time.time_ns() // 1000 // MINUTE - 30) * MINUTE
    pairs = workload(2, base, minutes=10)
    half = len(pairs) // 2
    produce_events(settings, pairs[:half])
    first = Worker(settings)
    time.sleep(4)
    first.close()  # graceful: checkpoints on revocation; open windows are rebuilt by the next owner
    produce_events(settings, pairs[half:])
    second = Worker(settings)
    try:
        rollups = read_rollups(settings)
    finally:
        second.close()
    assert_rollups_match(rollups, [e for _, e in pairs])
