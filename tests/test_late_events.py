"""Every event counted, whatever its arrival order or its host's clock, on real Kafka + PostgreSQL.

Real processes (``fraiseql-cli stream`` and ``sink``), real recorders, ``stats --format json`` as
the operator reads it:

* an hour of events from 3 patterns and 2 regions, weights other than 1, spread over every
  partition and produced in fully shuffled order while the stream worker is killed with -9 three
  times: exact weighted counts and errors per (pattern, region), p95/p99 within the sketch bound;
* three recorder instances, one with its clock 5 minutes fast: every event counted in its own
  window, nobody else's late; and an hour backfilled into the caught-up live pipeline: exact.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from fraiseql_obs_producers.recorder import Recorder
from fraiseql_observability.codec import QUERY_EVENT, QUERY_ROLLUP, default_codec
from fraiseql_observability.config import KafkaSettings, load_settings
from fraiseql_observability.kafka import ensure_topics
from fraiseql_observability.timeutil import MICROS, now_micros
from tests.fix_kafka import consume_all
from tests.fix_procs import Processes, clean_env, cli, write_config
from tests.oracles import exact_lower_quantile
from tests.test_stream import make_event

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.slow]

CODEC = default_codec()
MINUTE = 60 * MICROS
ALPHA = 0.01
ROUNDING = 5e-4  # stats prints milliseconds with 3 decimals
PATTERNS = ("a1b2c3", "d4e5f6", "0badf00d")
REGIONS = ("us-east-1", "eu-west-1")

Truth = dict[tuple[str, str], list[dict[str, Any]]]  # by (query name, region)


def stats(config: Path, metrics_db: str, *, end: datetime | None = None) -> dict[tuple[str, str], Any]:
    args = ["stats", "--database", metrics_db, "--window", "6h", "--format", "json"]
    if end is not None:
        args += ["--end", end.isoformat()]
    out = subprocess.run(cli(config, *args), capture_output=True, text=True, check=True,
                         env=clean_env(), timeout=60)
    return {(p["query_name"], p["region"]): p for p in json.loads(out.stdout)["patterns"]}


def wait_for_counts(config: Path, metrics_db: str, truth: Truth, processes: Processes, *,
                    timeout: float, end: datetime | None = None) -> dict[tuple[str, str], Any]:
    want = sum(e["sample_weight"] for events in truth.values() for e in events)
    deadline = time.monotonic() + timeout
    got: dict[tuple[str, str], Any] = {}
    while time.monotonic() < deadline:
        got = stats(config, metrics_db, end=end)
        if sum(got[k]["count"] for k in truth if k in got) >= want - 1e-6:
            break
        processes.assert_running()
        time.sleep(2)
    return got


def assert_stats_exact(got: dict[tuple[str, str], Any], truth: Truth) -> None:
    for key, events in truth.items():
        assert key in got, f"{key} missing from stats"
        row = got[key]
        assert row["count"] == pytest.approx(sum(e["sample_weight"] for e in events), abs=1e-6), key
        assert row["errors"] == pytest.approx(
            sum(e["sample_weight"] for e in events if e["error"]), abs=1e-6), key
        values = [(e["execution_time_ms"], e["sample_weight"]) for e in events]
        for q, field in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
            exact = exact_lower_quantile(values, q)
            assert abs(row[field] - exact) <= ALPHA * exact + ROUNDING, (key, field, row[field], exact)


@pytest.fixture
def pipeline_kafka(kafka_settings: KafkaSettings) -> KafkaSettings:
    ensure_topics(kafka_settings, [kafka_settings.events_topic, kafka_settings.rollups_topic,
                                   kafka_settings.dead_letters_topic])
    return kafka_settings


def test_shuffled_hour_with_three_kills_is_exact_in_stats(
    tmp_path: Path, pipeline_kafka: KafkaSettings, metrics_db: str, processes: Processes
) -> None:
    rng = random.Random(12)
    hour_start = (now_micros() // MINUTE - 75) * MINUTE
    truth: Truth = defaultdict(list)
    events: list[tuple[int, dict[str, Any]]] = []
    for _ in range(30_000):
        fp, region = rng.choice(PATTERNS), rng.choice(REGIONS)
        error = "QueryCanceled" if rng.random() < 0.04 else None
        event = make_event(fp, region, hour_start + rng.randrange(60 * MINUTE),
                           round(rng.lognormvariate(2.0, 0.8), 3), rng.choice([1.0, 4.0, 100.0]),
                           error=error)
        events.append((rng.randrange(6), event))  # every partition, not only the keys' ones
        truth[(event["query_name"], region)].append(event)
    rng.shuffle(events)

    config = write_config(tmp_path / "c.toml", pipeline_kafka, metrics_db)
    processes.start("sink", cli(config, "sink"))
    processes.start("stream", cli(config, "stream"))
    errors: list[str] = []

    def feed() -> None:
        producer = Producer({"bootstrap.servers": pipeline_kafka.bootstrap_servers,
                             "enable.idempotence": True, "linger.ms": 20})
        for i, (partition, event) in enumerate(events):
            producer.produce(pipeline_kafka.events_topic, CODEC.encode(QUERY_EVENT, event),
                             event["fingerprint"].encode(), partition=partition,
                             on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
            if i % 1000 == 999:
                producer.flush(30)
                time.sleep(0.4)  # about 12 s in all: the kills land mid-stream
        assert producer.flush(60) == 0

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    for _ in range(3):
        time.sleep(rng.uniform(2.5, 4.0))
        processes.assert_running()
        processes.kill9("stream")
        processes.start("stream", cli(config, "stream"))
    feeder.join()
    assert not errors

    assert_stats_exact(wait_for_counts(config, metrics_db, truth, processes, timeout=180), truth)
    rollups = [CODEC.decode(v, QUERY_ROLLUP) for _, v, _, _ in
               consume_all(pipeline_kafka.bootstrap_servers, pipeline_kafka.rollups_topic)]
    ids = {r["rollup_id"] for r in rollups}
    corrections = {r["rollup_id"] for r in rollups if r["correction_slot"] is not None}
    # Bounded: about a correction per (pattern, region, window, partition) and arrival slot,
    # never one per event (30,000).
    assert corrections and len(ids) < 2 * 3 * 2 * 60 * 6 * 2


def _record(recorder: Recorder, fp: str, rng: random.Random, occurred_at: int, truth: Truth,
            region: str) -> None:
    duration = round(rng.lognormvariate(1.5, 0.7), 3)
    assert recorder.record(query_name=f"query_{fp}", sql=f"SELECT data FROM tv_{fp} WHERE id = $1",
                           execution_time_ms=duration, sql_generation_time_ms=0.1,
                           db_round_trip_time_ms=duration * 0.8, projection_time_ms=0.05,
                           rows_returned=1, cache_hit=False, occurred_at=occurred_at)
    truth[(f"query_{fp}", region)].append({"sample_weight": 1.0, "error": None, "execution_time_ms": duration,
                                "occurred_at": occurred_at})


def test_a_fast_clock_and_a_backfill_are_counted_in_their_own_windows(
    tmp_path: Path, pipeline_kafka: KafkaSettings, metrics_db: str, processes: Processes
) -> None:
    """Three recorder instances, one 2 minutes fast; then an hour backfilled into the live,
    caught-up pipeline. The recorders flush every 0.2 s here, so a 5 s grace covers them."""
    config = write_config(tmp_path / "c.toml", pipeline_kafka, metrics_db, grace_secs=5.0)
    settings = load_settings(config, environ={})
    processes.start("sink", cli(config, "sink"))
    processes.start("stream", cli(config, "stream"))
    rng = random.Random(3)
    truth: Truth = defaultdict(list)
    fast_truth: Truth = defaultdict(list)
    # Ahead by more than a window plus the grace: its windows are ones nobody else has yet.
    skew = 2 * MINUTE
    grace_us = 5 * MICROS
    recorders = [Recorder(settings, instance=f"api-{i}").start() for i in range(3)]
    try:
        began = now_micros()
        for _ in range(300):  # about 15 s of traffic from the three instances
            for i, recorder in enumerate(recorders):
                fp = rng.choice(PATTERNS)
                fast = i == 2
                _record(recorder, fp if not fast else "fa57c10c", rng,
                        now_micros() + (skew if fast else 0), fast_truth if fast else truth, "test")
            time.sleep(0.05)
        for recorder in recorders:
            assert recorder.flush(30)
    finally:
        for recorder in recorders:
            recorder.close()

    # Nobody else's events are late: the fast clock moved no watermark. They are counted once
    # their windows close (about grace after the minute), none of them as a correction.
    end = datetime.fromtimestamp((now_micros() + 2 * MINUTE) / MICROS, UTC)
    assert_stats_exact(wait_for_counts(config, metrics_db, truth, processes, timeout=240), truth)
    rollups = [CODEC.decode(v, QUERY_ROLLUP) for _, v, _, _ in
               consume_all(pipeline_kafka.bootstrap_servers, pipeline_kafka.rollups_topic)]
    normal = {f"query_{fp}" for fp in PATTERNS}
    assert all(r["correction_slot"] is None for r in rollups if r["query_name"] in normal)
    # Its windows close by the broker's clock, not by its own: none before its end plus grace.
    checked_at = now_micros()
    assert all(r["window_end"] + grace_us <= checked_at
               for r in rollups if r["query_name"] == "query_fa57c10c")

    # A backfill of the past hour into the caught-up pipeline: counted exactly, as corrections.
    backfill: Truth = defaultdict(list)
    producer = Producer({"bootstrap.servers": pipeline_kafka.bootstrap_servers,
                         "enable.idempotence": True})
    hour_ago = began - 65 * MINUTE
    for n in range(6000):
        fp, region = rng.choice(PATTERNS), rng.choice(REGIONS)
        event = make_event(fp, region, hour_ago + n * 600_000, round(rng.uniform(1, 90), 3), 10.0)
        producer.produce(pipeline_kafka.events_topic, CODEC.encode(QUERY_EVENT, event), fp.encode())
        backfill[(event["query_name"], region)].append(event)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert_stats_exact(wait_for_counts(config, metrics_db, backfill, processes, timeout=180,
                                       end=end), backfill)

    # The fast instance: every event in its own (future) window, once the broker's clock gets
    # there: its last window closes at that window's end plus the grace.
    last_fast = max(e["occurred_at"] for events in fast_truth.values() for e in events)
    wait = (last_fast - last_fast % MINUTE + MINUTE + 5 * MICROS - now_micros()) / MICROS
    time.sleep(max(0.0, wait))
    late_end = datetime.fromtimestamp((now_micros() + skew + 2 * MINUTE) / MICROS, UTC)
    got = wait_for_counts(config, metrics_db, fast_truth, processes, timeout=300, end=late_end)
    assert_stats_exact(got, fast_truth)
    rollups = [CODEC.decode(v, QUERY_ROLLUP) for _, v, _, _ in
               consume_all(pipeline_kafka.bootstrap_servers, pipeline_kafka.rollups_topic)]
    fast_starts = {r["window_start"] for r in rollups if r["query_name"] == "query_fa57c10c"}
    assert fast_starts == {e["occurred_at"] - e["occurred_at"] % MINUTE
                           for events in fast_truth.values() for e in events}
