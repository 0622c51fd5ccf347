"""The hourly roll-up level: exact, idempotent under re-delivery/reordering/late rollups, safe under
concurrent sinks, and read by ``fraiseql_obs_analyzer.stats`` for long periods with the minute level's
results.

The pure logic (which cell a window belongs to, how a period splits between the levels) is checked
with hypothesis; everything else against the real PostgreSQL.
"""

from __future__ import annotations

import math
import random
import threading
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraiseql_obs_analyzer.stats import pattern_stats, pattern_stats_at_level
from fraiseql_obs_sinks.records import RollupRow
from fraiseql_obs_sinks.statements import REFRESH_HOURLY, UPSERT_ROLLUPS, cell_arrays, rollup_params
from fraiseql_obs_sinks.writer import HOUR, RollupWriter, hour_start, hourly_cells
from fraiseql_observability.metricsdb.rollups import HOURLY_LEVEL_FROM, choose_level, closed_rollups_query
from fraiseql_observability.sketch import QuantileSketch
from tests.test_sink import MICROS, MINUTE, make_rollup, minute_us, role_url

HOUR_US = 3600 * MICROS
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

HOURLY_COLUMNS = (
    "fingerprint, region, hour_start, sketch_alpha, windows, event_count, count, error_count,"
    " cache_hits, rows_sum, exec_sum_ms, exec_min_ms, exec_max_ms, sql_generation_sum_ms,"
    " db_round_trip_sum_ms, projection_sum_ms, sketch_keys, sketch_weights"
)


def utc(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def hourly_table(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            f"SELECT {HOURLY_COLUMNS} FROM fraiseql_metrics.rollups_hourly"
            " ORDER BY fingerprint, region, hour_start, sketch_alpha").fetchall()


def expected_cells(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The hourly rows, computed in Python the way the function is specified: sums in rollup_id
    order (so bit-identical), sketches merged bucket-wise, windows crossing an hour left out."""
    latest = {(r["rollup_id"], r["window_start"]): r for r in records}  # re-delivery overwrites
    cells: dict[tuple[str, str, int, float], list[dict[str, Any]]] = defaultdict(list)
    for record in latest.values():
        hour = record["window_start"] - record["window_start"] % HOUR_US
        if record["window_end"] <= hour + HOUR_US:
            cells[(record["fingerprint"], record["region"], hour, record["sketch_alpha"])].append(record)
    rows = []
    for (fingerprint, region, hour, alpha), members in cells.items():
        members.sort(key=lambda r: uuid.UUID(r["rollup_id"]).bytes)

        def total(name: str, members: list[dict[str, Any]] = members) -> float:
            running = 0.0
            for member in members:
                running += member[name]
            return running

        buckets: dict[int, float] = {}
        for member in members:
            for key, weight in zip(member["sketch_keys"], member["sketch_weights"], strict=True):
                buckets[key] = buckets.get(key, 0.0) + weight
        keys = sorted(buckets)
        rows.append((
            fingerprint, region, utc(hour), alpha, len(members),
            sum(m["event_count"] for m in members), total("count"), total("error_count"),
            total("cache_hits"), total("rows_sum"), total("exec_sum_ms"),
            min(m["exec_min_ms"] for m in members), max(m["exec_max_ms"] for m in members),
            total("sql_generation_sum_ms"), total("db_round_trip_sum_ms"),
            total("projection_sum_ms"), keys, [buckets[k] for k in keys],
        ))
    return sorted(rows, key=lambda r: (r[0].encode(), r[1].encode(), r[2], r[3]))


def random_rollups(rng: random.Random, start_us: int, minutes: int, *, window_us: int = MINUTE,
                   fingerprints: int = 3, partitions: int = 3) -> list[dict[str, Any]]:
    records = []
    for window in range(start_us, start_us + minutes * MINUTE, window_us):
        for f in range(fingerprints):
            for region in ("us-east-1", "eu-west-1"):
                for partition in range(partitions):
                    if rng.random() < 0.3:
                        continue  # not every partition sees every pattern every minute
                    n = rng.randint(1, 6)
                    values = [rng.lognormvariate(1.0 + f, 1.0) for _ in range(n)]
                    weights = [rng.choice([1.0, 10.0, 100.0]) for _ in range(n)]
                    records.append(make_rollup(window, values, weights, fingerprint=f"fp-{f}",
                                               region=region, source_partition=partition,
                                               errors=rng.randint(0, 1), window_us=window_us))
    return records


# --- pure logic -----------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10**8), st.integers(min_value=1, max_value=3 * 3600))
def test_a_window_belongs_to_the_cell_of_its_hour_when_inside_it(start_s: int, length_s: int) -> None:
    record = make_rollup(start_s * MICROS + 1_600_000_000 * MICROS, [1.0], window_us=length_s * MICROS)
    row = RollupRow.from_record(record, now=utc(record["window_start"]))
    cells = hourly_cells([row])
    hour = hour_start(row.window_start)
    assert hour <= row.window_start < hour + HOUR and (hour - EPOCH) % HOUR == timedelta(0)
    if row.window_end <= hour + HOUR:
        assert cells == [(row.fingerprint, row.region, hour, row.sketch_alpha)]
    else:
        assert cells == []  # crosses an hour boundary: only the minute level has it


@settings(max_examples=300)
@given(
    st.integers(min_value=0, max_value=48 * 60),  # period start, minutes after a base hour
    st.integers(min_value=1, max_value=30 * 60),  # period length, minutes
    st.sampled_from([60, 120, 300, 420, 3600, 5400]),  # window size, seconds
    st.integers(min_value=0, max_value=59),  # period start's seconds
)
def test_hourly_level_reads_each_closed_window_exactly_once(
    start_min: int, length_min: int, window_s: int, second: int
) -> None:
    """Evaluate closed_rollups_query's parts in Python on every window near the period: each
    closed window is counted once (in a cell or as a minute row), nothing else is counted."""
    base = datetime(2025, 3, 30, 0, 0, tzinfo=UTC)
    start = base + timedelta(minutes=start_min, seconds=second)
    end = start + timedelta(minutes=length_min)
    query, params = closed_rollups_query(start, end, "hourly")
    size = timedelta(seconds=window_s)
    first = base - timedelta(hours=2)
    windows = [first + size * i for i in range(int((end - first) / size) + 3)]
    h0, h1 = params["h0"], params["h1"]
    assert h0 >= start and h1 <= end
    for ws in windows:
        we = ws + size
        closed = start <= ws < end and we <= end
        hour = hour_start(ws)
        in_cell = we <= hour + HOUR and h0 <= hour < h1
        minute_parts = [
            start <= ws < h0 and we <= end,
            h1 <= ws < end and we <= end,
            h0 <= ws < h1 and we <= end and we - hour > HOUR,
        ]
        assert int(in_cell) + sum(minute_parts) == int(closed), (ws, we, start, end, h0, h1)
    assert "rollups_hourly" in query.as_string()


def test_level_choice() -> None:
    now = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)
    assert choose_level(now - timedelta(hours=1), now) == "minute"
    assert choose_level(now - HOURLY_LEVEL_FROM, now) == "hourly"
    assert choose_level(now - timedelta(days=7), now) == "hourly"
    short, _ = closed_rollups_query(now - timedelta(hours=1), now)
    assert "rollups_hourly" not in short.as_string()
    with pytest.raises(ValueError, match="after start"):
        closed_rollups_query(now, now)


# --- against PostgreSQL ---------------------------------------------------------------------------


@pytest.mark.postgres
def test_hourly_cells_are_the_merged_minute_rows(metrics_db: str, pg_admin_url: str) -> None:
    rng = random.Random(5)
    start = minute_us(200) - minute_us(200) % HOUR_US  # three whole hours and a bit
    records = random_rollups(rng, start, 190)
    with role_url(pg_admin_url, metrics_db, "fraiseql_collector") as collector, \
            RollupWriter(collector, pool_size=1) as writer:
        result = writer.write(records)
    assert result.hourly_cells == len(expected_cells(records)) > 0
    assert hourly_table(metrics_db) == expected_cells(records)
    # The same merged sketch as sketching all the events of the cell together: same quantiles.
    row = hourly_table(metrics_db)[0]
    merged = QuantileSketch(row[3])
    for record in records:
        if (record["fingerprint"], record["region"]) == row[:2] and \
                utc(record["window_start"] - record["window_start"] % HOUR_US) == row[2]:
            merged.merge(QuantileSketch.from_arrays(record["sketch_keys"], record["sketch_weights"],
                                                    record["sketch_alpha"]))
    assert merged == QuantileSketch.from_arrays(row[16], row[17], row[3])


@pytest.mark.postgres
def test_redelivery_reordering_and_late_rollups_give_the_same_hourly_rows(metrics_db: str) -> None:
    rng = random.Random(11)
    start = minute_us(300) - minute_us(300) % HOUR_US
    records = random_rollups(rng, start, 180)
    expected = expected_cells(records)
    snapshots = []
    for seed in range(3):
        with psycopg.connect(metrics_db, autocommit=True) as conn:
            conn.execute("TRUNCATE fraiseql_metrics.rollups, fraiseql_metrics.rollups_hourly,"
                         " fraiseql_metrics.patterns")
        order = records[:]
        random.Random(seed).shuffle(order)
        # Late rollups: a tenth of the windows of the first hour arrive after everything else.
        late = [r for r in order if r["window_start"] < start + HOUR_US and rng.random() < 0.1]
        on_time = [r for r in order if r not in late]
        # Re-deliveries: a crash re-sends a stretch of already written rollups, with a stale
        # intermediate version of one of them (a replay overwrites it again with the final one).
        stale = {**on_time[0], "count": 1e9, "sketch_keys": [1], "sketch_weights": [1e9]}
        batches = [on_time[i:i + 97] for i in range(0, len(on_time), 97)]
        batches.insert(1, [stale])
        batches.insert(3, on_time[:150])
        batches.append(late)
        batches.append(late[: len(late) // 2])
        with RollupWriter(metrics_db, pool_size=1) as writer:
            for batch in batches:
                writer.write(batch)
        snapshots.append(hourly_table(metrics_db))
    assert snapshots[0] == snapshots[1] == snapshots[2] == expected


@pytest.mark.postgres
def test_concurrent_sinks_writing_the_same_cell_lose_nothing(metrics_db: str) -> None:
    """Two sinks own different source partitions of one pattern and refresh the same cell at the
    same moment. The second refresh must wait for the first transaction and then see its rows;
    reading the minute rows before the wait (a plain UPDATE … FROM) would lose them."""
    start = minute_us(120) - minute_us(120) % HOUR_US
    records = [make_rollup(start + i * MINUTE, [1.0 + i], source_partition=p)
               for p in (0, 1, 2) for i in range(3)]
    rows = [RollupRow.from_record(r) for r in records]
    with RollupWriter(metrics_db, pool_size=1) as writer:
        writer.write(records[:3])  # the cell exists, from partition 0

    def write_and_refresh(conn: psycopg.Connection[Any], batch: list[RollupRow]) -> None:
        conn.cursor().executemany(UPSERT_ROLLUPS, [rollup_params(r) for r in batch])
        conn.execute(REFRESH_HOURLY, cell_arrays(hourly_cells(batch)))

    with psycopg.connect(metrics_db) as first, psycopg.connect(metrics_db) as second:
        write_and_refresh(first, rows[3:6])  # partition 1, not committed yet
        done = threading.Event()
        failures: list[BaseException] = []

        def other_sink() -> None:
            try:
                write_and_refresh(second, rows[6:9])  # partition 2: blocks on the cell
                second.commit()
            except BaseException as exc:
                failures.append(exc)
            done.set()

        thread = threading.Thread(target=other_sink)
        thread.start()
        assert not done.wait(1.0), "the second refresh did not wait for the first"
        first.commit()
        thread.join(30)
        assert not failures, failures
    assert hourly_table(metrics_db) == expected_cells(records)
    assert hourly_table(metrics_db)[0][4] == 9  # windows


@pytest.mark.postgres
def test_refresh_hourly_refuses_bad_arguments_and_is_the_collectors_only_way_in(
    metrics_db: str, pg_admin_url: str
) -> None:
    call = ("SELECT fraiseql_metrics.refresh_hourly(%s::text[], %s::text[], %s::timestamptz[],"
            " %s::float8[])")
    hour = hour_start(datetime.now(UTC))  # a day whose partitions migrate created
    with role_url(pg_admin_url, metrics_db, "fraiseql_collector") as url, \
            psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="equal length"):
            conn.execute(call, (["a"], [], [hour], [0.01]))
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="whole UTC hours"):
            conn.execute(call, (["a"], ["r"], [hour + timedelta(minutes=1)], [0.01]))
        # A cell without minute rows leaves nothing behind.
        assert conn.execute(call, (["a"], ["r"], [hour], [0.01])).fetchone() == (0,)
        for statement in (
            "SELECT * FROM fraiseql_metrics.rollups_hourly",
            "INSERT INTO fraiseql_metrics.rollups_hourly (fingerprint) VALUES ('x')",
            "DELETE FROM fraiseql_metrics.rollups_hourly",
            "UPDATE fraiseql_metrics.retention_horizons SET dropped_before = now()",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement.encode())
    assert hourly_table(metrics_db) == []


@pytest.mark.postgres
def test_long_periods_read_from_the_hourly_level_give_the_minute_results(
    metrics_db: str, pg_admin_url: str
) -> None:
    rng = random.Random(8)
    base = minute_us(600) - minute_us(600) % HOUR_US
    records = random_rollups(rng, base, 8 * 60, fingerprints=4, partitions=2)
    # Windows of 7 minutes cross hour boundaries: in no cell, read from the minute level.
    seven = random_rollups(rng, base, 8 * 60, window_us=7 * MINUTE, fingerprints=1, partitions=1)
    for record in seven:
        record["fingerprint"] = "fp-seven"
        record["rollup_id"] = str(uuid.uuid4())
    records += seven
    with RollupWriter(metrics_db, pool_size=1) as writer:
        writer.write(records)
    periods = [(base, base + 8 * HOUR_US),
               (base + 17 * MINUTE + 5 * MICROS, base + 7 * HOUR_US + 31 * MINUTE),
               (base + 30 * MINUTE, base + 6 * HOUR_US + 30 * MINUTE),
               (base + HOUR_US, base + 2 * HOUR_US)]
    with role_url(pg_admin_url, metrics_db, "fraiseql_analyst") as analyst:
        for start, end in periods:
            minute = pattern_stats(analyst, utc(start), utc(end))
            hourly = pattern_stats_at_level(analyst, utc(start), utc(end), "hourly")
            auto = pattern_stats_at_level(analyst, utc(start), utc(end))
            assert "fp-seven" in {p.fingerprint for p in minute.patterns}, (start, end)
            assert len(hourly.patterns) == len(minute.patterns) == len(auto.patterns)
            for m, h in zip(minute.patterns, hourly.patterns, strict=True):
                assert (m.fingerprint, m.region, m.query_name) == (h.fingerprint, h.region, h.query_name)
                assert (m.count, m.errors) == (h.count, h.errors)  # integer weights: exact sums
                assert m.mean_ms is not None and h.mean_ms is not None
                assert math.isclose(m.mean_ms, h.mean_ms, rel_tol=1e-12)
                # Same merged buckets, hence the very same percentiles.
                assert (m.p50_ms, m.p95_ms, m.p99_ms) == (h.p50_ms, h.p95_ms, h.p99_ms)
