"""``replay`` against the real broker: the interval's windows come out exactly as the live worker
published them (same ids, same contents), and replaying twice changes nothing."""

from __future__ import annotations

import random
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from fraiseql_obs_streams.replay import ReplayProgress, replay
from fraiseql_observability.codec import QUERY_EVENT, QUERY_ROLLUP, default_codec
from fraiseql_observability.config import KafkaSettings, Settings
from fraiseql_observability.kafka import ensure_topics
from tests.fix_kafka import consume_all
from tests.fix_procs import clean_env, cli, write_config
from tests.test_stream import Worker, make_event, stream_settings

pytestmark = [pytest.mark.kafka]

MICROS = 1_000_000
MINUTE = 60 * MICROS
CODEC = default_codec()


def produce_timed(kafka: KafkaSettings, events: list[tuple[int, dict[str, Any]]]) -> None:
    """Produce 40 minutes of events at once, as a backfill would (the topic stamps broker time)."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True})
    for partition, event in events:
        producer.produce(kafka.events_topic, CODEC.encode(QUERY_EVENT, event), event["fingerprint"].encode(),
                         partition=partition, timestamp=event["occurred_at"] // 1000)
        producer.poll(0)
    assert producer.flush(30) == 0


def rollups(kafka: KafkaSettings) -> list[dict[str, Any]]:
    return [CODEC.decode(v, QUERY_ROLLUP)
            for _, v, _, _ in consume_all(kafka.bootstrap_servers, kafka.rollups_topic, idle_secs=3)]


@pytest.fixture(scope="module")
def live(module_kafka_settings: KafkaSettings) -> tuple[Settings, list[dict[str, Any]], int]:
    """40 minutes of events, processed by a live worker; returns its rollups and the base time.
    Once for the module: both tests only read what it produced (their replays publish to topics
    of their own or upsert the same rollups)."""
    kafka_settings = module_kafka_settings
    settings = stream_settings(kafka_settings, grace_secs=5.0)
    ensure_topics(kafka_settings, [kafka_settings.events_topic])
    rng = random.Random(4)
    base = (time.time_ns() // 1000 // MINUTE - 45) * MINUTE
    events = []
    for i in range(8000):
        t = base + i * 300_000  # 40 minutes
        events.append((rng.randrange(6), make_event(rng.choice(["aa01", "bb02"]), rng.choice(["r1", "r2"]),
                                                    t, rng.uniform(1, 50), rng.choice([1.0, 10.0]))))
    produce_timed(kafka_settings, events)
    worker = Worker(settings)
    try:
        published = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            published = rollups(kafka_settings)
            if sum(r["event_count"] for r in published) == len(events):
                break
    finally:
        worker.close()
    assert sum(r["event_count"] for r in published) == len(events)
    return settings, published, base


def test_replay_reproduces_live_windows_and_is_idempotent(
    live: tuple[Settings, list[dict[str, Any]], int],
) -> None:
    settings, published, base = live
    start = datetime.fromtimestamp((base + 10 * MINUTE + 30 * MICROS) / MICROS, UTC)  # mid-window
    end = datetime.fromtimestamp((base + 25 * MINUTE) / MICROS, UTC)
    expected = {r["rollup_id"]: r for r in published
                if r["window_start"] >= base + 11 * MINUTE and r["window_end"] <= base + 25 * MINUTE}
    seen: list[ReplayProgress] = []
    # The replay publishes to a topic of its own here, so the test can tell its output apart.
    target = settings.kafka.model_copy(update={"rollups_topic": settings.kafka.rollups_topic + ".replay"})
    replay_settings = settings.model_copy(update={"kafka": target})

    published_total = 0
    for attempt in range(2):
        report = replay(replay_settings, start, end, progress=seen.append)
        published_total += report.rollups_published
        replayed = rollups(target)
        assert len(replayed) == published_total
        by_id: dict[str, dict[str, Any]] = {}
        for r in replayed:
            assert by_id.setdefault(r["rollup_id"], r) == r, "a replay changed a rollup"
        assert by_id == expected, f"replay {attempt + 1} differs from the live windows"
        assert seen and seen[-1].done == seen[-1].total
        # The 40 minutes were produced in one burst: every message's (broker) timestamp is after
        # the interval began, so any of them may hold a late event of it, and all are read.
        assert report.events_read == 8000


def test_replay_cli_prints_progress_and_summary(
    tmp_path: Path, live: tuple[Settings, list[dict[str, Any]], int]
) -> None:
    settings, _published, base = live
    config = write_config(tmp_path / "c.toml", settings.kafka, grace_secs=5.0)
    start = datetime.fromtimestamp((base + 5 * MINUTE) / MICROS, UTC).isoformat()
    end = datetime.fromtimestamp((base + 15 * MINUTE) / MICROS, UTC).isoformat()
    out = subprocess.run(cli(config, "replay", "--from", start, "--to", end), capture_output=True,
                         text=True, env=clean_env(), timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "replay: 100.0%" in out.stderr  # not a tty: plain progress lines
    assert "rollups published" in out.stdout
    bad = subprocess.run(cli(config, "replay", "--from", end, "--to", start), capture_output=True,
                         text=True, env=clean_env(), timeout=60, check=False)
    assert bad.returncode == 2 and "must be after" in bad.stderr
