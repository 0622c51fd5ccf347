"""End to end through real processes: recorder → Kafka → ``fraiseql-cli stream`` → Kafka →
``fraiseql-cli sink`` → PostgreSQL → ``fraiseql-cli stats --format json``."""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from fraiseql_obs_producers.recorder import Recorder
from fraiseql_observability.config import KafkaSettings, Settings, load_settings
from tests.fix_procs import ENGINES, Processes, clean_env, cli, stream_cli, write_config
from tests.oracles import exact_lower_quantile

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.e2e]

MICROS = 1_000_000
ALPHA = 0.01
ROUNDING = 5e-4  # stats prints milliseconds with 3 decimals


PATTERNS = {
    "orders_by_status": ("SELECT data FROM tv_order WHERE data->>'status' = $1 LIMIT $2", 120.0),
    "user_by_email": ("SELECT data FROM tv_user WHERE data->>'email' = $1", 2.0),
    "revenue_by_region": (
        "SELECT data->>'region', sum((data->>'total')::numeric) FROM tv_order GROUP BY 1", 40.0),
}


def record_workload(regions: list[Settings], seed: int, now_us: int) -> list[dict[str, Any]]:
    """Two API processes (one per region, different sample rates) record 25 minutes of queries
    concurrently through the real recorder; returns the kept events with their weights."""
    rng = random.Random(seed)
    kept: list[dict[str, Any]] = []
    recorders = [Recorder(settings, random_source=rng.random).start() for settings in regions]
    try:
        for i in range(12_000):
            settings, recorder = regions[i % 2], recorders[i % 2]
            name = rng.choice(list(PATTERNS))
            sql, median = PATTERNS[name]
            duration = round(rng.lognormvariate(0, 0.6) * median, 3)
            occurred_at = now_us - 60 * MICROS * 60 + i * 125_000  # 25 minutes, in order
            error = "QueryCanceled" if rng.random() < 0.03 else None
            if recorder.record(query_name=name, sql=sql, execution_time_ms=duration,
                               sql_generation_time_ms=0.2, db_round_trip_time_ms=duration * 0.9,
                               projection_time_ms=0.1, rows_returned=5, cache_hit=False,
                               error=error, occurred_at=occurred_at):
                # Errors are always kept (weight 1); the rest uniformly at sample_rate.
                weight = 1.0 if error else 1.0 / settings.sample_rate
                kept.append({"query_name": name, "duration": duration, "error": error,
                             "weight": weight, "region": settings.kafka.region})
        for recorder in recorders:
            assert recorder.flush(30), "recorder did not flush"
            assert recorder.stats().dropped_total == 0, recorder.stats()
    finally:
        for recorder in recorders:
            recorder.close()
    return kept


@pytest.mark.parametrize("engine", ENGINES)
def test_events_to_stats_exact(tmp_path: Path, kafka_settings: KafkaSettings, metrics_db: str,
                               processes: Processes, engine: str) -> None:
    now_us = time.time_ns() // 1000
    regions = [
        # The test records 25 minutes of event time in about a second, and each recorder thread may
        # send all its events before the other sends any: a grace period longer than the whole span
        # keeps the other region's events from being late (real recorders send within
        # flush_interval_secs, which the default 90 s grace covers).
        load_settings(write_config(tmp_path / f"{region}.toml", kafka_settings, metrics_db,
                                   sample_rate=rate, region=region, grace_secs=1800), environ={})
        for region, rate in (("us-east-1", 0.25), ("eu-west-1", 1.0))
    ]
    kept = record_workload(regions, 1, now_us)
    config = tmp_path / "us-east-1.toml"
    processes.start("stream", stream_cli(config, engine))
    processes.start("sink", cli(config, "sink"))

    expected: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for event in kept:
        expected[(event["query_name"], event["region"])].append(event)
    want_total = sum(e["weight"] for e in kept)

    report: dict[str, Any] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        out = subprocess.run(cli(config, "stats", "--database", metrics_db, "--window", "6h",
                                 "--format", "json"), capture_output=True, text=True, check=True,
                             env=clean_env())
        report = json.loads(out.stdout)
        counted = sum(p["count"] for p in report["patterns"])
        if counted >= want_total:
            break
        processes.assert_running()
        time.sleep(2)

    assert set(report) >= {"window", "patterns"}
    got = {(p["query_name"], p["region"]): p for p in report["patterns"]}
    assert set(got) == set(expected)
    for key, events in expected.items():
        row = got[key]
        assert set(row) >= {"fingerprint", "query_name", "region", "count", "errors", "mean_ms",
                            "p50_ms", "p95_ms", "p99_ms"}
        assert row["count"] == pytest.approx(sum(e["weight"] for e in events), abs=1e-6)
        assert row["errors"] == pytest.approx(sum(e["weight"] for e in events if e["error"]), abs=1e-6)
        total_ms = sum(e["weight"] * e["duration"] for e in events)
        assert row["mean_ms"] == pytest.approx(total_ms / row["count"], abs=ROUNDING)
        values = [(e["duration"], e["weight"]) for e in events]
        for q, field in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
            exact = exact_lower_quantile(values, q)
            assert abs(row[field] - exact) <= ALPHA * exact + ROUNDING, (key, field, row[field], exact)
