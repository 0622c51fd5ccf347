"""fraiseql_obs_producers.execute: real queries against the demo database, recorded to the real Kafka."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fraiseql_obs_producers.appdb import create_demo_app_db
from fraiseql_obs_producers.errors import LoadgenError
from fraiseql_obs_producers.execute import ExecutionError, QueryExecution, nearest_rank, run_real_workload
from fraiseql_obs_producers.fingerprint import fingerprint_sql
from fraiseql_obs_producers.loadgen import weighted_quantile
from fraiseql_obs_producers.workload import Workload, default_workload
from fraiseql_observability.config import KafkaSettings, MetricsSettings, Settings
from tests.fix_pg import scratch_database
from tests.fix_procs import clean_env, cli, write_config
from tests.query_events import read_events

ROWS = 10_000


# --- pure logic ------------------------------------------------------------------------------------


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=300),
       st.floats(0.0, 1.0))
def test_nearest_rank_is_the_unit_weight_quantile(values: list[float], q: float) -> None:
    ordered = sorted(values)
    assert nearest_rank(ordered, q) == weighted_quantile(values, [1.0] * len(values), q)
    # At least a share q of the values is <= the quantile, and fewer than q are below it.
    result = nearest_rank(ordered, q)
    assert sum(v <= result for v in values) >= q * len(values) - 1e-9
    assert sum(v < result for v in values) < max(q * len(values), 1)


def test_query_execution_percentiles() -> None:
    pattern = default_workload(tail=0).by_name("order")
    durations = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, completion order kept
    stats = QueryExecution.build(pattern, durations, {"QueryCanceled": 2}, rows=98)
    assert (stats.p50_ms, stats.p95_ms, stats.p99_ms, stats.max_ms) == (50.0, 95.0, 99.0, 100.0)
    assert stats.mean_ms == 50.5 and stats.executed == 100 and stats.error_count == 2
    assert stats.durations_ms == tuple(durations)
    assert stats.fingerprint == fingerprint_sql(pattern.sql)
    assert math.isnan(nearest_rank([], 0.5))


# --- against the real stack --------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_db(pg_admin_url: str) -> Iterator[str]:
    with scratch_database(pg_admin_url, "fraiseql_exec") as url:
        create_demo_app_db(url, rows=ROWS, seed=5)
        yield url


def _settings(kafka: KafkaSettings, sample_rate: float, slow_query_ms: float = 1e6) -> Settings:
    return Settings(enabled=False,  # run_real_workload records anyway: that is its purpose
                    sample_rate=sample_rate, kafka=kafka,
                    metrics=MetricsSettings(buffer_size=100_000, batch_size=200,
                                            flush_interval_secs=0.2, slow_query_ms=slow_query_ms))


def _events(kafka: KafkaSettings, expected: int) -> list[dict[str, Any]]:
    """Every event on the topic (the recorder sends QueryEventBatch messages by default)."""
    return read_events(kafka.bootstrap_servers, kafka.events_topic, expected, extra_secs=2.0)


@pytest.mark.kafka
@pytest.mark.postgres
def test_every_execution_is_recorded_with_its_real_timing(app_db: str,
                                                         kafka_settings: KafkaSettings) -> None:
    before_us = time.time_ns() // 1000
    report = run_real_workload(_settings(kafka_settings, 1.0), app_db, count=300, seed=1,
                               concurrency=2)
    after_us = time.time_ns() // 1000
    assert report.executed == 300 and report.errors == 0 and report.concurrency == 2
    assert report.recorder.sampled == 300 and report.recorder.sent == 300
    assert report.queries_per_sec > 0
    workload = default_workload(tail=0)
    assert set(report.queries) <= {p.query_name for p in workload.patterns}
    assert len(report.queries) >= 10  # the Zipf mix reaches most core patterns in 300 draws

    events = _events(kafka_settings, expected=300)
    assert len(events) == 300
    by_name: dict[str, list[float]] = defaultdict(list)
    for event in events:
        pattern = workload.by_name(event["query_name"])
        assert event["sql"] == pattern.sql
        assert event["fingerprint"] == pattern.fingerprint
        assert event["sample_weight"] == 1.0 and event["error"] is None
        assert event["region"] == kafka_settings.region and not event["cache_hit"]
        assert before_us <= event["occurred_at"] <= after_us
        parts = (event["sql_generation_time_ms"], event["db_round_trip_time_ms"],
                 event["projection_time_ms"])
        assert all(p >= 0 for p in parts)
        assert sum(parts) == pytest.approx(event["execution_time_ms"], abs=1e-6)
        by_name[event["query_name"]].append(event["execution_time_ms"])
    # Exactly what was measured: the same durations per query, as in the report.
    assert {name: sorted(v) for name, v in by_name.items()} == {
        name: sorted(q.durations_ms) for name, q in report.queries.items()}
    for name, stats in report.queries.items():
        assert stats.p95_ms == nearest_rank(sorted(by_name[name]), 0.95)
    # Real timings: the planted seq scan is slower than a primary-key lookup (10k rows here).
    planted = statistics.median(report.queries["ordersByCustomerEmail"].durations_ms)
    by_id = statistics.median(report.queries["order"].durations_ms)
    assert planted > 3 * by_id


@pytest.mark.kafka
@pytest.mark.postgres
def test_sampling_weights_of_real_executions(app_db: str, kafka_settings: KafkaSettings) -> None:
    slow_ms = 2.0
    report = run_real_workload(_settings(kafka_settings, 0.25, slow_query_ms=slow_ms), app_db,
                               count=400, seed=2, concurrency=2)
    events = _events(kafka_settings, expected=report.recorder.sent)
    assert len(events) == report.recorder.sent == report.recorder.sampled
    kept: dict[str, Counter[float]] = defaultdict(Counter)
    for event in events:
        # Slow queries are always kept (weight 1), the others at 1 in 4 (weight 4).
        expected = 1.0 if event["execution_time_ms"] >= slow_ms else 4.0
        assert event["sample_weight"] == expected
        kept[event["query_name"]][event["execution_time_ms"]] += 1
    slow_total = 0
    for name, stats in report.queries.items():
        measured = Counter(stats.durations_ms)
        assert not kept[name] - measured  # every kept event is one of the measured executions
        slow = Counter({d: n for d, n in measured.items() if d >= slow_ms})
        assert not slow - kept[name]  # and every slow execution was kept
        slow_total += sum(slow.values())
    weighted = math.fsum(event["sample_weight"] for event in events)
    fast = report.executed - slow_total
    # Weighted count estimates the 400 executions: sd of 4 × Binomial(fast, 1/4) = sqrt(3 fast).
    assert abs(weighted - report.executed) <= 5 * math.sqrt(3 * max(fast, 1))


@pytest.mark.kafka
@pytest.mark.postgres
def test_errors_are_recorded_with_their_class(app_db: str, kafka_settings: KafkaSettings) -> None:
    aggregate = default_workload(tail=0).by_name("revenueByRegion")  # a full scan: > 1 ms
    report = run_real_workload(_settings(kafka_settings, 0.0), app_db, count=12, concurrency=2,
                               workload=Workload((aggregate,)), statement_timeout_ms=1)
    stats = report.queries["revenueByRegion"]
    assert stats.executed == 12 and dict(stats.errors) == {"QueryCanceled": 12}
    assert stats.rows_returned == 0
    events = _events(kafka_settings, expected=12)
    # sample_rate 0: only the always-keep-errors rule keeps them, each standing for itself.
    assert [(e["error"], e["sample_weight"], e["rows_returned"]) for e in events] == \
        [("QueryCanceled", 1.0, 0)] * 12


@pytest.mark.kafka
@pytest.mark.postgres
def test_duration_mode_and_bad_arguments(app_db: str, fresh_db_url: str,
                                         kafka_settings: KafkaSettings) -> None:
    settings = _settings(kafka_settings, 0.0)
    started = time.monotonic()
    report = run_real_workload(settings, app_db, duration=1.0, concurrency=3, seed=4)
    assert 1.0 <= report.elapsed_secs < 4.0 and time.monotonic() - started < 15
    assert report.executed > 10 and report.concurrency == 3

    for kwargs in ({"count": 5, "concurrency": 0}, {}, {"count": -1},
                   {"duration": 0.0}, {"count": 1, "statement_timeout_ms": -5}):
        with pytest.raises(LoadgenError):
            run_real_workload(settings, app_db, **kwargs)
    with pytest.raises(ExecutionError, match="no tv_invoice, tv_order, tv_product, tv_user"):
        run_real_workload(settings, fresh_db_url, count=1)
    with pytest.raises(ExecutionError) as info:
        run_real_workload(settings, "postgresql://app:S3cretPW@127.0.0.1:1/app", count=1,
                          connect_timeout=1.0)
    assert "S3cretPW" not in str(info.value) and "app:***@" in str(info.value)


@pytest.mark.kafka
@pytest.mark.postgres
def test_cli_loadgen_execute(app_db: str, kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    config = write_config(tmp_path / "fraiseql.toml", kafka_settings)
    done = subprocess.run(cli(config, "loadgen", "--execute", "--app-database", app_db,
                              "--count", "40", "--concurrency", "2", "--format", "json"),
                          env=clean_env(), capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["executed"] == 40 and summary["recorder"]["sent"] == 40
    assert summary["mode"] == "execute" and summary["region"] == "test"
    assert len(_events(kafka_settings, expected=40)) == 40

    usage = subprocess.run(cli(config, "loadgen", "--execute", "--count", "1"),
                           env=clean_env(), capture_output=True, text=True, timeout=60,
                          check=False)
    assert usage.returncode == 2 and "--app-database" in usage.stderr
