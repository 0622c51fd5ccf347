"""Through the real CLI on a freshly migrated metrics database: two minutes of data in a 7-day
window are said to be short in every format, and nothing is extrapolated into high/critical."""

from __future__ import annotations

import json

import pytest

from fraiseql_obs_analyzer.analyze import AnalyzeOptions, run_analysis
from fraiseql_obs_analyzer.priority import priority_for_saving
from tests.test_analyzer_analyze import cli, core_loads, demo_table_stats, now_minute_us
from tests.test_analyzer_helpers import MINUTE, seed_metrics

pytestmark = pytest.mark.postgres


def test_two_minutes_of_data_are_short_and_never_critical(metrics_db: str) -> None:
    empty = cli("analyze", "--database", metrics_db, "--window", "7d", check=True).stdout
    assert "floor" not in empty  # no patterns: nothing to learn a floor from
    assert "No data" in empty
    end = now_minute_us()
    seed_metrics(metrics_db, core_loads(), start_us=end - 2 * MINUTE, minutes=2,
                 table_stats=demo_table_stats(end - MINUTE))

    out = cli("analyze", "--database", metrics_db, "--window", "7d", "--format", "json")
    assert out.returncode == 0, out.stderr
    document = json.loads(out.stdout)
    coverage = document["coverage"]
    assert coverage["short"] is True and coverage["data_seconds"] == 120.0
    assert coverage["priority_cap"] == "medium"
    assert "2 min of data" in coverage["statement"] and "extrapolated" in coverage["statement"]
    priorities = [s["priority"] for s in document["suggestions"]]
    assert priorities and not {"critical", "high"} & set(priorities)
    # The same suggestions would be critical with enough data: the cap is what holds them back.
    analysis = run_analysis(metrics_db, AnalyzeOptions(window="7d"))
    top = analysis.suggestions[0]
    assert priority_for_saving(top.time_saved_ms_per_day,
                               analysis.workload_db_ms_per_day) == "critical"
    assert top.priority == "medium"

    text = cli("analyze", "--database", metrics_db, "--window", "7d", check=True).stdout
    assert "Short data: the window (7.0 days) holds 2 min of data" in text
    assert "[CRITICAL]" not in text and "[HIGH]" not in text
    sql_out = cli("analyze", "--database", metrics_db, "--window", "7d", "--format", "sql",
                  check=True).stdout
    assert any(line.startswith("-- Short data:") for line in sql_out.splitlines())
