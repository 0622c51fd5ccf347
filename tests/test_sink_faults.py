"""Fault test of ``fraiseql-cli sink`` processes: PostgreSQL stopped for 30 s and the sink killed
with ``kill -9`` twice while rollups stream in; the metrics database must end up holding exactly
what was published, row for row, and the hourly level exactly the merge of those rows.

The PostgreSQL stopped here is a second server of its own (``scripts/stack`` with another state
folder and port), never the shared one of the local stack.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer

from fraiseql_observability.codec import QUERY_ROLLUP, default_codec
from fraiseql_observability.config import KafkaSettings
from fraiseql_observability.kafka import ensure_topics
from fraiseql_observability.metricsdb.migrate import migrate
from fraiseql_observability.timeutil import now_micros
from tests.fix_procs import Processes, cli, free_port, write_config
from tests.test_sink import (
    MINUTE,
    as_url,
    committed_and_end,
    make_rollup,
    role_url,
    rollup_table,
)
from tests.test_sink_hourly import expected_cells, hourly_table

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.fault, pytest.mark.e2e,
              pytest.mark.slow]

STACK = Path(__file__).resolve().parent.parent / "scripts" / "stack"
OUTAGE_SECS = 30.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class OwnPostgres:
    """A PostgreSQL server of this test alone, started and stopped by ``scripts/stack``."""

    def __init__(self, state_dir: Path, port: int) -> None:
        self.state_dir, self.port = state_dir, port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _stack(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRAISEQL_")}
        env |= {"FRAISEQL_STACK_DIR": str(self.state_dir), "FRAISEQL_PG_PORT": str(self.port)}
        done = subprocess.run([str(STACK), *args], env=env, capture_output=True, text=True,
                              timeout=180, check=False)
        assert done.returncode == 0, f"scripts/stack {' '.join(args)}:\n{done.stderr[-3000:]}"

    def up(self) -> None:
        self._stack("up", "pg")

    def down(self, *extra: str) -> None:
        self._stack("down", *extra, "pg")


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    state_dir = Path(tempfile.mkdtemp(prefix="fraiseql-own-pg-"))
    server = OwnPostgres(state_dir, free_port())
    try:
        server.up()
        yield server
    finally:
        server.down("--purge")
        for path in sorted(state_dir.rglob("*"), reverse=True):  # what --purge leaves: logs, lock
            path.rmdir() if path.is_dir() else path.unlink()
        state_dir.rmdir()


class RollupFeed(threading.Thread):
    """Publishes QueryRollup records steadily, as stream workers would: new windows as time goes
    by, late windows of an earlier hour, and re-publications of already sent rollups (a stream
    worker re-emitting after its own crash). Keeps what Kafka acknowledged."""

    def __init__(self, kafka: KafkaSettings, seconds: float, rate: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.kafka, self.seconds, self.rate = kafka, seconds, rate
        self.rng = random.Random(seed)
        self.acknowledged: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.finished = threading.Event()

    def _record(self, minute: int, base_us: int) -> dict[str, Any]:
        rng = self.rng
        n = rng.randint(1, 8)
        values = [rng.lognormvariate(1.5, 1.2) for _ in range(n)]
        return make_rollup(base_us + minute * MINUTE, values,
                           [rng.choice([1.0, 10.0, 100.0]) for _ in range(n)],
                           fingerprint=f"fp-{rng.randrange(12)}", region=rng.choice(["us", "eu"]),
                           source_partition=rng.randrange(6), errors=rng.randint(0, 1),
                           first_offset=rng.randrange(10**6))

    def run(self) -> None:
        codec = default_codec()
        producer = Producer({"bootstrap.servers": self.kafka.bootstrap_servers, "linger.ms": 10,
                             "enable.idempotence": True, "partitioner": "murmur2_random"})
        base_us = (now_micros() // MINUTE - 240) * MINUTE  # four hours ago
        sent: list[dict[str, Any]] = []
        total = int(self.seconds * self.rate)
        began = time.monotonic()
        for i in range(total):
            roll = self.rng.random()
            if roll < 0.1 and sent:
                record = self.rng.choice(sent)  # re-published, identical
            elif roll < 0.2:
                record = self._record(self.rng.randrange(60), base_us)  # late: the first hour
            else:
                record = self._record(60 + i * 150 // total, base_us)  # time goes by
            sent.append(record)

            def on_delivery(err: Any, _msg: Any, record: dict[str, Any] = record) -> None:
                if err is None:
                    self.acknowledged.append(record)
                else:
                    self.errors.append(str(err))

            producer.produce(self.kafka.rollups_topic, key=record["fingerprint"].encode(),
                             value=codec.encode(QUERY_ROLLUP, record), on_delivery=on_delivery)
            producer.poll(0)
            time.sleep(max(0.0, began + (i + 1) / self.rate - time.monotonic()))
        producer.flush(60)
        self.finished.set()


def expected_rows(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The rollups table as it must be: one row per rollup id, the last version published."""
    latest = {(r["rollup_id"], r["window_start"]): r for r in records}
    rows = []
    for r in latest.values():
        rows.append((
            uuid.UUID(r["rollup_id"]), EPOCH + timedelta(microseconds=r["window_start"]),
            r["fingerprint"], r["region"], EPOCH + timedelta(microseconds=r["window_end"]),
            r["source_topic"], r["source_partition"], r["first_offset"], r["last_offset"],
            r["event_count"], r["count"], r["error_count"], r["cache_hits"], r["rows_sum"],
            r["exec_sum_ms"], r["exec_min_ms"], r["exec_max_ms"], r["sql_generation_sum_ms"],
            r["db_round_trip_sum_ms"], r["projection_sum_ms"], r["sketch_alpha"],
            list(r["sketch_keys"]), list(r["sketch_weights"]),
        ))
    return sorted(rows, key=lambda row: (row[0], row[1]))


def count_rows(url: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM fraiseql_metrics.rollups").fetchone()
            return int(row[0]) if row else 0
    except psycopg.OperationalError:
        return -1


def wait_until(predicate: Any, timeout: float, what: str, processes: Processes) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        processes.assert_running()
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(0.5)


def test_postgres_outage_and_two_kill_9_lose_and_duplicate_nothing(
    own_postgres: OwnPostgres, kafka_settings: KafkaSettings, processes: Processes, tmp_path: Path
) -> None:
    kafka = kafka_settings
    admin = own_postgres.url
    migrate(admin)
    ensure_topics(kafka, [kafka.rollups_topic, kafka.table_stats_topic, kafka.dead_letters_topic])
    with role_url(admin, admin, "fraiseql_collector") as collector:
        config = write_config(tmp_path / "sink.toml", kafka, as_url(collector))
        feed = RollupFeed(kafka, seconds=60.0, rate=50.0, seed=17)
        processes.start("sink", cli(config, "sink"))
        feed.start()

        # 1. kill -9 while rows flow in, restart at once.
        wait_until(lambda: count_rows(admin) >= 200, 60, "the first rows", processes)
        processes.kill9("sink")
        processes.start("sink", cli(config, "sink"))
        written = count_rows(admin)
        wait_until(lambda: count_rows(admin) >= written + 200, 60, "rows after the restart",
                   processes)

        # 2. PostgreSQL stops for 30 s; the sink is killed and restarted in the middle of it.
        own_postgres.down()
        stopped = time.monotonic()
        published_before_outage = len(feed.acknowledged)
        time.sleep(OUTAGE_SECS / 2)
        processes.kill9("sink")
        processes.start("sink", cli(config, "sink"))
        time.sleep(max(0.0, stopped + OUTAGE_SECS - time.monotonic()))
        processes.assert_running()  # waiting for the database, not dead
        own_postgres.up()
        assert len(feed.acknowledged) > published_before_outage + 500  # published meanwhile

        assert feed.finished.wait(120), "the feed did not finish"
        assert not feed.errors, feed.errors[:3]
        expected = expected_rows(feed.acknowledged)
        wait_until(lambda: count_rows(admin) == len(expected), 120, "every rollup", processes)
        group = f"{kafka.events_topic}.sink"
        wait_until(lambda: len(set(committed_and_end(kafka, group, kafka.rollups_topic))) == 1, 60,
                   "offsets committed", processes)
        processes.stop_all()

    assert rollup_table(admin) == expected  # every rollup id, every value
    assert hourly_table(admin) == expected_cells(feed.acknowledged)
    assert count_rows(admin) == len(expected) < len(feed.acknowledged)  # re-publications absorbed
