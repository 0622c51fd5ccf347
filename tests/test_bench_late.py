"""The late-events benchmark (bench/bench_late.py) still runs and still checks exactness.

A smoke run on five minutes of events at a low rate (about a second), not a speed check.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_late.py"
TINY = ["--duration", "300", "--rate", "20", "--patterns", "5", "--rounds", "1", "--batch", "500"]


def run_bench(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *TINY, *extra], capture_output=True, text=True,
                          timeout=120, check=False, cwd=ROOT)


def test_the_late_bench_prints_its_table_and_the_exactness_of_every_order() -> None:
    out = run_bench()
    assert out.returncode == 0, out.stderr[-3000:]
    for order in ("in-order", "late", "shuffled"):
        found = re.search(rf"^exact {order}: event_count over [\d,]+ rollups = ([\d,]+) = ([\d,]+) events$",
                          out.stdout, re.MULTILINE)
        assert found, out.stdout
        assert found.group(1) == found.group(2) == "6,000"
        assert re.search(rf"^{order} +[\d,]+ ", out.stdout, re.MULTILINE), out.stdout


def test_the_late_bench_json_counts_corrections_only_for_late_arrivals() -> None:
    out = run_bench("--json")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "exact shuffled: event_count" in out.stderr
    orders = json.loads(out.stdout)["orders"]
    for r in orders.values():
        assert r["event_count"] == r["events"] == 6000
        assert r["rows"] == r["windows"] + r["corrections"]
        assert r["bytes"] == r["window_bytes"] + r["correction_bytes"] > 0
        assert r["add_events_per_s"] > 0
    assert orders["in-order"]["corrections"] == 0
    assert orders["late"]["corrections"] > 0
    # A burst after the span: all but the last windows' events are late, about one correction
    # per (key, window), so no more rows than in order.
    assert orders["shuffled"]["corrections"] > 0
    assert orders["shuffled"]["rows"] <= orders["in-order"]["rows"]
