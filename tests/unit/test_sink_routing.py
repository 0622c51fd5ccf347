"""``split_by_horizon``: which rollups the sink folds into frozen hourly cells (pure logic)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from fraiseql_obs_sinks.records import RollupRow
from fraiseql_obs_sinks.writer import HOUR, hour_start, split_by_horizon

BASE = datetime(2026, 11, 1, tzinfo=UTC)


def row(start_minute: int, length_minutes: int) -> RollupRow:
    start = BASE + timedelta(minutes=start_minute)
    return RollupRow(
        rollup_id=uuid.uuid4(), window_start=start,
        window_end=start + timedelta(minutes=length_minutes), fingerprint="fp", region="r",
        source_topic="t", source_partition=0, first_offset=0, last_offset=0, event_count=1,
        count=1.0, error_count=0.0, cache_hits=0.0, rows_sum=0.0, exec_sum_ms=1.0,
        exec_min_ms=1.0, exec_max_ms=1.0, sql_generation_sum_ms=0.0, db_round_trip_sum_ms=0.0,
        projection_sum_ms=0.0, sketch_alpha=0.01, sketch_keys=(1,), sketch_weights=(1.0,),
        query_name="q", sql="SELECT 1")


@given(st.lists(st.tuples(st.integers(0, 5 * 1440), st.sampled_from([1, 5, 7, 60])), max_size=40),
       st.none() | st.integers(0, 5 * 24).map(lambda h: BASE + timedelta(hours=h)))
def test_every_rollup_goes_to_exactly_one_level(spec: list[tuple[int, int]],
                                                horizon: datetime | None) -> None:
    rows = [row(start, length) for start, length in spec]
    minute, fold = split_by_horizon(rows, horizon)
    assert sorted(map(id, minute + fold)) == sorted(map(id, rows))
    assert [r for r in rows if r in minute] == minute  # order kept
    for r in fold:
        assert horizon is not None and hour_start(r.window_start) < horizon
        assert r.window_end <= hour_start(r.window_start) + HOUR  # it has a cell
    for r in minute:
        in_cell = r.window_end <= hour_start(r.window_start) + HOUR
        assert horizon is None or hour_start(r.window_start) >= horizon or not in_cell


def test_no_horizon_means_no_fold() -> None:
    rows = [row(0, 1), row(3000, 1)]
    assert split_by_horizon(rows, None) == (rows, [])
