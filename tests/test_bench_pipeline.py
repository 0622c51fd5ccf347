"""The sustained-load pipeline benchmark (bench/bench_pipeline.py) still runs and still checks
exactness, for batched and single messages.

A smoke run of a few seconds at a low rate with short windows (about 40 s for both modes), through
the real ``fraiseql-cli stream`` and ``sink`` processes; not a speed check.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_pipeline.py"
RATE, DURATION = 500, 6  # >= grace + 2 s + one 2 s window: some windows close under load
TINY = ["--rate", str(RATE), "--duration", str(DURATION), "--window-secs", "2", "--grace-secs", "1",
        "--idle-secs", "1", "--sample-secs", "1"]


def _bench_module() -> ModuleType:
    """bench/ is not a package (scripts run by path): load the script as a module."""
    spec = importlib.util.spec_from_file_location("bench_pipeline", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_pipeline", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_figures_helpers() -> None:
    bench = _bench_module()
    percentile, weighted_percentile, bounded = bench.percentile, bench.weighted_percentile, bench.bounded
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.99) == 4.0
    assert math.isnan(percentile([], 0.5))
    assert weighted_percentile([(1.0, 1.0), (10.0, 3.0)], 0.5) == 10.0
    assert weighted_percentile([(1.0, 3.0), (10.0, 1.0)], 0.5) == 1.0
    assert bounded([5, 5, 5, 5, 5, 5], slack=0)[0]
    assert not bounded([1, 1, 10, 10, 100, 100], slack=0)[0]
    assert bounded([0, 0, 0, 0, 3, 3], slack=5)[0]  # small noise on a caught-up worker


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.e2e
def test_the_pipeline_bench_reports_every_figure_and_exactness_per_mode(kafka_bootstrap: str,
                                                                          pg_admin_url: str) -> None:
    env = {**os.environ, "FRAISEQL_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "FRAISEQL_METRICS_DATABASE_URL": pg_admin_url}
    out = subprocess.run([sys.executable, str(BENCH), *TINY, "--json"],
                         capture_output=True, text=True, timeout=240, check=False, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    modes = {m["mode"]: m for m in json.loads(out.stdout)["modes"]}
    assert set(modes) == {"batched", "single"}
    for mode, r in modes.items():
        assert r["exact"], (mode, r["event_count"], r["sent"])
        assert r["recorded"] == r["sent"] == r["event_count"] == RATE * DURATION, mode
        assert r["dropped"] == 0 and r["dead_letters"] == 0, mode
        assert r["rollup_rows"] > 0
        # Scraped every second, but the stream worker refreshes its lag gauge every 5 s and the
        # sink every 10 s (its gauge may have no partition yet in a run this short).
        for name in ("stream_messages", "watermark_delay_secs"):
            lag = r["lag"][name]
            assert lag["samples"] >= 1 and lag["max"] is not None, (mode, lag)
        assert set(r["lag"]["sink_messages"]) >= {"max", "last", "bounded", "series"}
        # The watermark trails the wall clock by at least the grace period.
        assert r["lag"]["watermark_delay_secs"]["max"] >= 1.0
        delay = r["delay_secs"]
        assert delay["steady_rows"] > 0
        # A row is written after its window closes; the queries happened before that.
        assert 0 < delay["window_to_row"]["p50"] <= delay["window_to_row"]["p99"] < 60, delay
        assert 0 < delay["query_to_row"]["p50"] <= delay["query_to_row"]["p99"], delay
        for stage in ("driver0", "stream", "sink", "postgres", "machine"):
            assert r["cpu"][stage]["secs"] >= 0 and r["cpu"][stage]["us_per_event"] >= 0, stage
        assert r["cpu"]["driver0"]["secs"] > 0 and r["cpu"]["stream"]["secs"] > 0
        events = r["topics"]["events"]
        assert events["payload_per_event"] > 50 and r["topics"]["rollups"]["messages"] > 0
        if events["wire_bytes"] is not None:  # the broker's log dir is readable on this host
            assert events["wire_bytes"] > 0
    assert modes["batched"]["topics"]["events"]["events_per_message"] > 1.5
    assert modes["single"]["topics"]["events"]["messages"] == RATE * DURATION

    # It cleans up after itself: topics and databases of the run are gone.
    prefixes = re.findall(r"topics (bench[0-9a-f]+\.)\*, database (\w+)", out.stderr)
    assert len(prefixes) == 2, out.stderr[-2000:]
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    deadline = time.monotonic() + 15  # deletion is acknowledged before every broker view shows it
    while any(t.startswith(p) for t in admin.list_topics(timeout=10).topics for p, _ in prefixes):
        assert time.monotonic() < deadline, "the bench left topics behind"
        time.sleep(0.5)
    with psycopg.connect(pg_admin_url) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                            ([db for _, db in prefixes],)).fetchall()
    assert not left, left
