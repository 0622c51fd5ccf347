"""Ranking and priority agree; critical means a dominant share of database time; short data is
said and never extrapolated into high/critical (fraiseql_obs_analyzer.priority and its rendering)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from fraiseql_obs_analyzer.priority import (
    HOUR_MS,
    MIN_DATA_FOR_HIGH,
    DataCoverage,
    assign_priorities,
    format_duration,
    priority_for_saving,
    rank,
)
from fraiseql_obs_analyzer.records import PRIORITIES, Analysis, Impact, Suggestion
from fraiseql_obs_analyzer.report import render_json, render_sql, render_text

URGENCY = {name: len(PRIORITIES) - i for i, name in enumerate(PRIORITIES)}  # critical highest
WEEK = 7 * 86400.0


@dataclass(frozen=True)
class Cand:
    time_saved_ms_per_day: float
    queries_per_day: float
    storage_mb: float = 1.0


candidates = st.builds(
    Cand,
    time_saved_ms_per_day=st.one_of(st.floats(0, 1e12), st.sampled_from([0.0, HOUR_MS, -1.0])),
    queries_per_day=st.floats(0, 1e9),
    storage_mb=st.floats(-100, 100),
)


@given(st.lists(candidates, max_size=30), st.lists(candidates, max_size=5),
       st.floats(0, 1e13), st.floats(0, WEEK))
def test_sorted_by_rank_priorities_never_increase(kept: list[Cand], drops: list[Cand],
                                                  workload: float, data_secs: float) -> None:
    drops = [replace(d, time_saved_ms_per_day=0.0) for d in drops]
    ranked = rank(kept, drops)
    priorities = assign_priorities(ranked, workload, DataCoverage(WEEK, data_secs))
    urgency = [URGENCY[p] for p in priorities]
    assert urgency == sorted(urgency, reverse=True)
    assert all(p == "low" for p in priorities[len(kept):])  # drops save no query time
    if data_secs < MIN_DATA_FOR_HIGH:
        assert not {"high", "critical"} & set(priorities)


@given(st.floats(0, 1e12), st.floats(0, 1e12), st.floats(1, 1e13))
def test_more_time_saved_is_never_a_lower_priority(a: float, b: float, workload: float) -> None:
    low, high = sorted((a, b))
    assert URGENCY[priority_for_saving(high, workload)] >= URGENCY[priority_for_saving(low, workload)]


@given(st.floats(0, 1e12), st.floats(1, 1e13))
def test_critical_only_for_a_quarter_of_database_time_and_an_hour_a_day(saved: float,
                                                                        workload: float) -> None:
    priority = priority_for_saving(saved, workload)
    if priority == "critical":
        assert saved >= 0.25 * workload and saved >= HOUR_MS
    if priority in ("critical", "high"):
        assert saved >= 0.05 * workload


def test_tiers_at_their_edges() -> None:
    day_db = 100 * HOUR_MS  # a workload spending 100 h of database time per day
    assert priority_for_saving(25 * HOUR_MS, day_db) == "critical"
    assert priority_for_saving(24.9 * HOUR_MS, day_db) == "high"
    assert priority_for_saving(5 * HOUR_MS, day_db) == "high"
    assert priority_for_saving(4.9 * HOUR_MS, day_db) == "medium"
    assert priority_for_saving(1 * HOUR_MS, day_db) == "medium"
    assert priority_for_saving(0.9 * HOUR_MS, day_db) == "low"
    # A small workload: 90 % of 10 minutes a day is not critical.
    assert priority_for_saving(9 * 60_000, 10 * 60_000) == "medium"
    assert priority_for_saving(float("nan"), day_db) == "low"
    assert priority_for_saving(HOUR_MS, 0.0) == "low"
    # The cap lowers, never raises.
    assert priority_for_saving(50 * HOUR_MS, day_db, cap="medium") == "medium"
    assert priority_for_saving(0.1 * HOUR_MS, day_db, cap="medium") == "low"


def test_coverage_statement() -> None:
    assert format_duration(75) == "75 s" and format_duration(7 * 86400) == "7.0 days"
    short = DataCoverage(WEEK, 75.0)
    assert short.short and short.priority_cap == "medium"
    text = short.statement()
    assert text is not None and "the window (7.0 days) holds 75 s of data" in text
    assert "above medium" in text
    some = DataCoverage(WEEK, 2 * 86400.0)
    assert some.short and some.priority_cap is None
    assert some.statement() is not None and "above medium" not in str(some.statement())
    # A full hour window: the newest minutes are still closing, that is not short.
    assert DataCoverage(3600.0, 3500.0).statement() is None
    assert DataCoverage(3600.0, 0.0).statement() is not None


def _analysis(data_secs: float, *, priority: str = "medium") -> Analysis:
    end = datetime(2024, 5, 1, tzinfo=UTC)
    suggestion = Suggestion(
        id="sug-1", type="add_index", priority=priority, schema="public", table="tv_order",
        json_column="data", path="status", columns=("data->>'status'",), new_column=None,
        new_type=None, reason="why", patterns=(),
        impact=Impact(1_330_000.0, 20.0, 40.0, 2.0, 3.0), validation={"method": "model"},
        sql="-- Suggestion sug-1\nCREATE INDEX CONCURRENTLY x ON tv_order ((data->>'status'));\n",
        time_saved_ms_per_day=2 * HOUR_MS)
    return Analysis(analyzed_at=end, window_start=end - timedelta(days=7), window_end=end,
                    window_days=7.0, total_executions=1000.0, unique_queries=3,
                    avg_execution_time_ms=5.0, suggestions=(suggestion,),
                    coverage_days=data_secs / 86400.0, workload_db_ms_per_day=10 * HOUR_MS)


def test_every_format_says_the_data_is_short() -> None:
    analysis = _analysis(75.0)
    document = json.loads(render_json(analysis))
    assert list(document)[:6] == ["version", "analyzed_at", "database_type", "window", "metrics",
                                  "suggestions"]  # SPEC keys first and unchanged
    coverage = document["coverage"]
    assert coverage["short"] is True and coverage["data_seconds"] == 75.0
    assert coverage["priority_cap"] == "medium" and "75 s" in coverage["statement"]
    assert "Short data: the window (7.0 days) holds 75 s" in render_text(analysis)
    assert "20 % of the workload's database time" in render_text(analysis)
    sql_lines = render_sql(analysis).splitlines()
    assert any(line.startswith("-- Short data:") and "75 s" in line for line in sql_lines)
    full = _analysis(WEEK)
    assert json.loads(render_json(full))["coverage"]["statement"] is None
    assert "hort data" not in render_text(full) and "hort data" not in render_sql(full)
