"""The stream benchmark (bench/bench_stream.py) still runs: its figures are what issue reports quote.

A smoke run on a few thousand events, not a speed check (speed targets live in the bench itself).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.kafka


def test_the_stream_bench_measures_the_bare_consumers_and_our_worker(kafka_bootstrap: str) -> None:
    env = {**os.environ, "FRAISEQL_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_stream.py"), "--events", "3000", "--rounds", "1",
         "--skip", "quix,faust,faust_engine,faust_engine_batched,native_engine,native_engine_batched",
         "--json"],
        capture_output=True, text=True, timeout=300, check=False, env=env, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    medians = result["median"]
    for engine in ("bare", "bare_fastavro", "ours"):
        assert medians[engine] > 0, (engine, medians)
        assert len(result["runs"][engine]) == 1
    assert medians["ours_vs_bare"] == pytest.approx(medians["ours"] / medians["bare"])
    # It cleans up after itself: a benchmark run on a shared broker leaves no topics behind.
    found = re.search(r"to (bench-\S+)", out.stderr)
    assert found, out.stderr[-2000:]
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    deadline = time.monotonic() + 15  # deletion is acknowledged before every broker view shows it
    while found.group(1) in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"{found.group(1)} was left behind"
        time.sleep(0.5)


def test_the_stream_bench_runs_our_job_as_cli_workers_on_both_engines(kafka_bootstrap: str) -> None:
    """(f) and (b'), single messages: a Faust and a native worker process started through the CLI
    count the events, and their figures (timed and drain) reach the JSON with their ratios."""
    env = {**os.environ, "FRAISEQL_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_stream.py"), "--events", "2000", "--rounds", "1",
         "--batched", "0", "--skip", "bare_fastavro,quix,faust", "--json"],
        capture_output=True, text=True, timeout=300, check=False, env=env, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    medians = json.loads(out.stdout)["median"]
    for engine in ("faust_engine", "faust_engine_drain", "native_engine", "native_engine_drain",
                   "ours_drain"):
        assert medians[engine] > 0, (engine, medians)
    assert "faust_engine_batched" not in medians  # --batched 0
    assert medians["faust_engine_vs_bare"] == pytest.approx(medians["faust_engine"] / medians["bare"])
    assert medians["faust_engine_vs_native_engine"] == pytest.approx(
        medians["faust_engine"] / medians["native_engine"])
    # Each worker's own counter, scraped from its /metrics, reached every event.
    assert out.stderr.count("fraiseql_stream_events_counted_total reached 2,000") == 2, out.stderr[-2000:]
