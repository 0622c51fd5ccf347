"""``fraiseql_observability.metricsdb.retention``: whole expired partitions are dropped, nothing else,
even under load."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from fraiseql_obs_sinks.writer import RollupWriter
from fraiseql_observability.metricsdb.retention import RetentionError, drop_expired_partitions
from tests.test_sink import MICROS, make_rollup, make_table_stats, scalar

pytestmark = pytest.mark.postgres

DAY_US = 86_400 * MICROS


def midnight(days_ago: int) -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days_ago)


def us(moment: datetime) -> int:
    return int(moment.timestamp()) * MICROS


def partitions(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent"
            " WHERE p.relnamespace = 'fraiseql_metrics'::regnamespace AND c.relkind = 'r'").fetchall()
    return {r[0] for r in rows}


def fill_days(url: str, days_ago: range) -> None:
    """One rollup and one table-stats row at noon of each day (creates the partitions)."""
    rollups = [make_rollup(us(midnight(d)) + DAY_US // 2, [1.0], fingerprint=f"fp-{d}")
               for d in days_ago]
    stats = [make_table_stats(us(midnight(d)) + DAY_US // 2) for d in days_ago]
    with RollupWriter(url, pool_size=1) as writer:
        writer.write(rollups, stats)


def test_drops_exactly_the_expired_partitions(metrics_db: str) -> None:
    fill_days(metrics_db, range(12))  # today and the 11 days before
    before = partitions(metrics_db)
    now = midnight(0) + timedelta(hours=6)
    # Cut-off = 5 days before now, 06:00: the day 6 days ago ends at midnight(5), before the
    # cut-off; the day 5 days ago ends after it and must stay (it is not *entirely* expired).
    dropped = drop_expired_partitions(metrics_db, retention_days=5, now=now)
    expired_days = [midnight(d) for d in range(6, 12)]
    expected = [f"fraiseql_metrics.{table}_p{day:%Y%m%d}"
                for day in sorted(expired_days) for table in ("rollups", "rollups_hourly", "table_stats")]
    assert sorted(dropped) == sorted(expected)
    assert dropped[0].endswith(f"{midnight(11):%Y%m%d}")  # oldest first
    assert partitions(metrics_db) == before - {name.split(".")[1] for name in expected}
    # Rows of the kept days are untouched: retention never deletes row by row.
    assert scalar(metrics_db, "SELECT count(*) FROM fraiseql_metrics.rollups") == 6
    assert scalar(metrics_db, "SELECT count(*) FROM fraiseql_metrics.table_stats") == 6
    assert drop_expired_partitions(metrics_db, retention_days=5, now=now) == []


def test_boundary_day_is_kept_until_entirely_expired(metrics_db: str) -> None:
    fill_days(metrics_db, range(3, 4))
    day = midnight(3)
    # At exactly day + 1 + retention the partition's upper bound equals the cut-off: expired.
    assert drop_expired_partitions(metrics_db, 1, now=day + timedelta(days=2) - timedelta(seconds=1)) == []
    dropped = drop_expired_partitions(metrics_db, 1, now=day + timedelta(days=2))
    assert f"fraiseql_metrics.rollups_p{day:%Y%m%d}" in dropped


def test_runs_while_the_sink_writes(metrics_db: str) -> None:
    fill_days(metrics_db, range(20, 30))
    stop = threading.Event()
    written: list[int] = []
    failures: list[BaseException] = []

    def write_continuously() -> None:
        try:
            with RollupWriter(metrics_db, pool_size=1) as writer:
                i = 0
                while not stop.is_set():
                    start = (int(time.time()) // 60 - 30 + i % 30) * 60 * MICROS
                    writer.write([make_rollup(start, [2.0], fingerprint=f"live-{i}")])
                    written.append(i)
                    i += 1
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=write_continuously)
    thread.start()
    try:
        time.sleep(0.3)
        dropped = drop_expired_partitions(metrics_db, retention_days=10)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(30)
    assert not failures, failures
    assert len(dropped) == 30  # ten days, three tables
    assert scalar(metrics_db, "SELECT count(*) FROM fraiseql_metrics.rollups") == len(written)


def test_a_locked_partition_is_reported_and_the_rest_dropped(metrics_db: str) -> None:
    fill_days(metrics_db, range(40, 42))
    locked = f"rollups_p{midnight(41):%Y%m%d}"
    with psycopg.connect(metrics_db) as blocker:
        # A long analyst query on the oldest day holds a lock that DROP must wait for.
        blocker.execute(f"SELECT count(*) FROM fraiseql_metrics.{locked}".encode())
        started = time.monotonic()
        with pytest.raises(RetentionError, match=locked) as info:
            drop_expired_partitions(metrics_db, retention_days=30, lock_timeout_secs=0.1,
                                    attempts=2)
        assert time.monotonic() - started < 5
        assert sorted(info.value.dropped) == sorted(
            f"fraiseql_metrics.{t}_p{d:%Y%m%d}" for t in ("rollups", "rollups_hourly", "table_stats")
            for d in (midnight(40), midnight(41)) if f"{t}_p{d:%Y%m%d}" != locked)
        # Writes to the current day are not blocked meanwhile.
        with RollupWriter(metrics_db, pool_size=1, timeout_secs=5) as writer:
            writer.write([make_rollup((int(time.time()) // 60 - 1) * 60 * MICROS, [1.0])])
    # Once the reader is gone the next run finishes the job.
    assert drop_expired_partitions(metrics_db, retention_days=30) == [f"fraiseql_metrics.{locked}"]


def test_retention_days_must_be_positive(metrics_db: str) -> None:
    with pytest.raises(ValueError, match="retention_days"):
        drop_expired_partitions(metrics_db, 0)


def hourly_partitions(url: str) -> set[str]:
    return {p for p in partitions(url) if p.startswith("rollups_hourly_p")}


def test_minute_rollups_go_first_and_hourly_cells_are_frozen_after(metrics_db: str) -> None:
    fill_days(metrics_db, range(8))
    now = midnight(0) + timedelta(hours=6)
    hourly_before = scalar(metrics_db, "SELECT sum(count) FROM fraiseql_metrics.rollups_hourly")
    dropped = drop_expired_partitions(metrics_db, retention_days=6, now=now, minute_retention_days=2)
    # Minute rows: days 3..7 ago go (entirely older than 2 days); hourly cells and table stats
    # only days 7..7 (older than 6 days).
    assert sorted(dropped) == sorted(
        [f"fraiseql_metrics.rollups_p{midnight(d):%Y%m%d}" for d in range(3, 8)]
        + [f"fraiseql_metrics.{t}_p{midnight(7):%Y%m%d}" for t in ("rollups_hourly", "table_stats")])
    assert {f"rollups_hourly_p{midnight(d):%Y%m%d}" for d in range(7)} <= hourly_partitions(metrics_db)
    assert scalar(metrics_db, "SELECT count(*) FROM fraiseql_metrics.rollups") == 3
    assert scalar(metrics_db, "SELECT count(*) FROM fraiseql_metrics.rollups_hourly") == 7
    assert scalar(metrics_db, "SELECT sum(count) FROM fraiseql_metrics.rollups_hourly") == \
        hourly_before - 1.0
    horizon = scalar(metrics_db, "SELECT dropped_before FROM fraiseql_metrics.retention_horizons"
                                 " WHERE table_name = 'rollups'")
    assert horizon == midnight(2)

    # A very late rollup of a day whose minute rows are gone is folded into its frozen hourly cell
    # (exactly once: a re-delivery changes nothing), and its minute partition is not re-created.
    cell = ("SELECT count, windows, event_count, exec_max_ms, sketch_keys, sketch_weights"
            " FROM fraiseql_metrics.rollups_hourly WHERE fingerprint = 'fp-4'")
    with psycopg.connect(metrics_db) as conn:
        [before] = conn.execute(cell.encode()).fetchall()
    assert before[:2] == (1.0, 1)
    late = make_rollup(us(midnight(4)) + DAY_US // 2, [9.0, 30.0], [2.0, 1.5], fingerprint="fp-4",
                       source_partition=5)
    with RollupWriter(metrics_db, pool_size=1) as writer:
        result = writer.write([late])
        assert (result.folded, result.hourly_cells, result.partitions_created) == (1, 0, ())
        assert writer.write([late]).folded == 0  # re-delivered: already in the cell
    with psycopg.connect(metrics_db) as conn:
        [after] = conn.execute(cell.encode()).fetchall()
    assert after[:4] == (1.0 + 3.5, 2, before[2] + 2, 30.0)
    # The merged sketch is the bucket-wise sum of both sketches.
    merged: dict[int, float] = dict(zip(before[4], before[5], strict=True))
    for key, weight in zip(late["sketch_keys"], late["sketch_weights"], strict=True):
        merged[key] = merged.get(key, 0.0) + weight
    assert dict(zip(after[4], after[5], strict=True)) == merged
    assert f"rollups_p{midnight(4):%Y%m%d}" not in partitions(metrics_db)
    # Younger than the horizon: an ordinary minute rollup, and its cell is recomputed.
    recent = make_rollup(us(midnight(1)) + DAY_US // 2, [2.0], fingerprint="fp-1",
                         source_partition=5)
    with RollupWriter(metrics_db, pool_size=1) as writer:
        assert writer.write([recent]).hourly_cells == 1
    assert scalar(metrics_db, "SELECT count FROM fraiseql_metrics.rollups_hourly"
                              " WHERE fingerprint = 'fp-1'") == 2.0
    # Older than retention_days: no storage is left for it; counted, not written, nothing created.
    ancient = make_rollup(us(midnight(7)) + DAY_US // 2, [1.0], fingerprint="fp-7",
                          source_partition=5)
    with RollupWriter(metrics_db, pool_size=1) as writer:
        result = writer.write([ancient])
        assert (result.expired, result.folded, result.partitions_created) == (1, 0, ())
    assert scalar(metrics_db, "SELECT count(*) FROM fraiseql_metrics.rollups_hourly"
                              " WHERE fingerprint = 'fp-7'") == 0
    assert drop_expired_partitions(metrics_db, retention_days=6, now=now,
                                   minute_retention_days=2) == []
    # A minute retention longer than retention_days is capped by it.
    assert drop_expired_partitions(metrics_db, retention_days=6, now=now,
                                   minute_retention_days=30) == []
    with pytest.raises(ValueError, match="minute_retention_days"):
        drop_expired_partitions(metrics_db, 6, minute_retention_days=0)
