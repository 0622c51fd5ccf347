"""fraiseql_obs_producers.instrument: psycopg cursors recording into a real Recorder and Kafka.

Real PostgreSQL (a fresh database) and the real broker; the events are read back from the topic.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from fraiseql_obs_producers.fingerprint import fingerprint_sql
from fraiseql_obs_producers.instrument import (
    DEFAULT_OPERATION,
    async_recording_cursor,
    instrumentation_errors,
    operation_name,
    recording_cursor,
    set_operation_name,
)
from fraiseql_obs_producers.recorder import Recorder
from fraiseql_observability.config import KafkaSettings, MetricsSettings, Settings
from tests.query_events import read_events

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

VALUE = "s3cr3t-value"  # an argument value: must never reach Kafka


def _settings(kafka: KafkaSettings) -> Settings:
    return Settings(enabled=True, sample_rate=1.0, kafka=kafka,
                    metrics=MetricsSettings(buffer_size=10_000, batch_size=50,
                                            flush_interval_secs=0.2))


def _events(kafka: KafkaSettings, expected: int) -> list[dict[str, Any]]:
    events = read_events(kafka.bootstrap_servers, kafka.events_topic, expected)
    for event in events:
        assert event["fingerprint"] == fingerprint_sql(event["sql"])
    return events


def _setup_table(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE tv_item (id bigint PRIMARY KEY, data jsonb NOT NULL)")
        conn.execute("INSERT INTO tv_item SELECT g, jsonb_build_object('status', "
                     "CASE WHEN g % 2 = 0 THEN 'paid' ELSE 'shipped' END) "
                     "FROM generate_series(1, 20) g")


def test_sync_cursor_records_normalized_statements(fresh_db_url: str,
                                                   kafka_settings: KafkaSettings) -> None:
    _setup_table(fresh_db_url)
    errors_before = instrumentation_errors()
    with Recorder(_settings(kafka_settings)) as recorder:
        factory = recording_cursor(recorder)
        with psycopg.connect(fresh_db_url, cursor_factory=factory) as conn:
            assert isinstance(conn.cursor(), factory)
            with operation_name("itemsByStatus"):
                # Inlined values (FraiseQL 0.5.x style), inside a transaction with SET LOCAL.
                conn.execute("SET LOCAL statement_timeout = '30s'")
                for status in ("paid", "shipped"):
                    rows = conn.execute(sql.SQL("SELECT data FROM tv_item WHERE (data ->> 'status')"
                                                " = {} LIMIT 5").format(sql.Literal(status)))
                    assert len(rows.fetchall()) == 5
                conn.commit()
            with operation_name("itemById"):
                # Past psycopg's prepare threshold (5): prepared statements are recorded too.
                for item in range(1, 8):
                    conn.execute(sql.SQL("SELECT data, {} AS tag FROM tv_item WHERE id = %s")
                                 .format(sql.Literal(VALUE)), (item,)).fetchall()
                conn.execute("SELECT data FROM tv_item WHERE data->>'note' = %(v)s",
                             {"v": VALUE}).fetchall()
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO tv_item VALUES (%s, %s)",
                                [(100 + i, f'{{"note": "{VALUE}"}}') for i in range(3)])
                assert sum(1 for _ in cur.stream("SELECT id FROM tv_item WHERE id > 100")) == 2
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute(f"SELECT 1 / 0 WHERE '{VALUE}' <> ''")
            conn.rollback()
            conn.execute("SHOW work_mem")
            conn.execute("BEGIN")  # a warning only (already in a transaction); never recorded
            conn.rollback()
        assert recorder.flush(20)
        stats = recorder.stats()
    assert stats.dropped_total == 0
    events = _events(kafka_settings, 13)
    assert len(events) == 13, [e["sql"] for e in events]
    by_sql: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        assert VALUE not in event["sql"] and "'paid'" not in event["sql"]
        assert event["fingerprint"] == fingerprint_sql(event["sql"])
        by_sql.setdefault(event["sql"], []).append(event)
    status_sql = "SELECT data FROM tv_item WHERE (data ->> 'status') = $1 LIMIT $2"
    assert [e["query_name"] for e in by_sql[status_sql]] == ["itemsByStatus"] * 2
    assert {e["rows_returned"] for e in by_sql[status_sql]} == {5}
    by_id = by_sql["SELECT data, $2 AS tag FROM tv_item WHERE id = $1"]
    assert [e["query_name"] for e in by_id] == ["itemById"] * 7
    assert [e["rows_returned"] for e in by_id] == [1] * 7
    assert by_sql["SELECT data FROM tv_item WHERE data->>'note' = $1"][0]["rows_returned"] == 0
    insert = by_sql["INSERT INTO tv_item VALUES ($1, $2)"][0]
    assert insert["query_name"] == DEFAULT_OPERATION and insert["rows_returned"] == 3
    assert by_sql["SELECT id FROM tv_item WHERE id > $1"][0]["rows_returned"] == 2
    failed = by_sql["SELECT $1 / $2 WHERE $3 <> $4"][0]
    assert failed["error"] == "DivisionByZero" and failed["rows_returned"] == 0
    for event in events:
        assert 0 < event["execution_time_ms"] < 5000
        assert event["db_round_trip_time_ms"] == event["execution_time_ms"]
        assert event["error"] is None or event is failed
    assert instrumentation_errors() == errors_before


def test_async_pool_names_concurrent_operations(fresh_db_url: str,
                                                kafka_settings: KafkaSettings) -> None:
    _setup_table(fresh_db_url)

    async def main(recorder: Recorder) -> list[float]:
        pool = AsyncConnectionPool(fresh_db_url, min_size=2, max_size=4, open=False,
                                   kwargs={"cursor_factory": async_recording_cursor(recorder)})
        await pool.open()
        elapsed: list[float] = []

        async def request(name: str, status: str, sleep_ms: int) -> None:
            set_operation_name(name)  # one task per request: the name stays in this task
            async with pool.connection() as conn:
                started = time.perf_counter()
                cur = await conn.execute(
                    sql.SQL("SELECT pg_sleep({}), data FROM tv_item WHERE (data ->> 'status') = {}")
                    .format(sql.Literal(sleep_ms / 1000), sql.Literal(status)))
                elapsed.append((time.perf_counter() - started) * 1000)
                assert len(await cur.fetchall()) == 10
                async for _row in cur.stream("SELECT 1"):
                    pass

        try:
            await asyncio.gather(*(request(f"op{i % 3}", ("paid", "shipped")[i % 2], 20 * (i % 3))
                                   for i in range(12)))
        finally:
            await pool.close()
        return elapsed

    with Recorder(_settings(kafka_settings)) as recorder:
        client_ms = asyncio.run(main(recorder))
        assert recorder.flush(20)
    events = _events(kafka_settings, 24)
    assert len(events) == 24
    sleeps = [e for e in events if "pg_sleep" in e["sql"]]
    assert len(sleeps) == 12
    assert {e["sql"] for e in sleeps} == {
        "SELECT pg_sleep($1), data FROM tv_item WHERE (data ->> 'status') = $2"}
    assert sorted(e["query_name"] for e in sleeps) == sorted(f"op{i % 3}" for i in range(12))
    # op2 slept 40 ms, op0 none: the recorded times carry it, and stay within the client's view.
    for event in sleeps:
        assert event["execution_time_ms"] >= 20 * int(event["query_name"][-1]) * 0.95
    assert max(e["execution_time_ms"] for e in sleeps) <= max(client_ms) + 1.0
    assert sorted(e["query_name"] for e in events if e["sql"] == "SELECT $1") == \
        sorted(f"op{i % 3}" for i in range(12))


def test_a_broken_recorder_never_breaks_the_query(fresh_db_url: str,
                                                  kafka_settings: KafkaSettings) -> None:
    recorder = Recorder(_settings(kafka_settings)).start()
    recorder.close()  # closed: record() drops and counts, the application does not notice
    with psycopg.connect(fresh_db_url, cursor_factory=recording_cursor(recorder)) as conn:
        assert conn.execute("SELECT 42").fetchone() == (42,)
    assert recorder.stats().dropped["closed"] == 1


def test_bench_instrument_smoke(pg_admin_url: str, kafka_bootstrap: str) -> None:
    """The reported benchmark keeps working (a tiny run; the figures are not checked here)."""
    out = subprocess.run(
        [sys.executable, "bench/bench_instrument.py", "--database", pg_admin_url, "--bootstrap",
         kafka_bootstrap, "--batches", "3", "--json"],
        capture_output=True, text=True, check=True, timeout=120,
        cwd=Path(__file__).resolve().parent.parent)
    result = json.loads(out.stdout)
    path = result["recording_path"]
    assert path["sampled"]["sent"] == path["sampled"]["kept"] > 0
    assert path["not_sampled"]["kept"] == 0 and path["instrumentation_errors"] == {}
    assert path["sampled"]["median_us"] > 0 and result["normalizer_miss"]["fraiseql_05"]["median_us"] > 0
