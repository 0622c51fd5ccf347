"""Sink throughput: rollup rows per second into PostgreSQL, on this machine (real stack).

    .venv/bin/python bench/bench_sink.py [--database URL] [--bootstrap HOST:PORT]
                                         [--minutes 20] [--batch 2000] [--skip-kafka] [--json]

Rollups have the reference load's shape (bench_storage.reference_rollups: ~1,200 minute rollups
per minute of event time from ~1,000 Zipf-popular patterns, 2 regions, 6 source partitions).

1. **writer alone** — :meth:`RollupWriter.write` in batches of ``--batch`` rows (the sink's default
   batch size) as a ``fraiseql_collector`` member: new rows, then the same batches again
   (re-delivery: every row an overwrite). Each write is one transaction that upserts the rows,
   recomputes the hourly cells they touch, and upserts the pattern catalogue. The time per
   batch is split into the minute upsert and the hourly refresh from PostgreSQL's own statement
   timing (``pg_stat_statements``, preloaded by scripts/stack) when available.
2. **worker from Kafka** — every rollup encoded (Avro single-object) to a fresh 6-partition topic,
   then one sink worker (:func:`fraiseql_obs_sinks.worker.run_sink`, in this process, as ``fraiseql-cli
   sink`` runs it) consumes, validates and writes them; rows/s from its first row to every
   offset committed (group join excluded), and end to end from start.

The reference load needs ~20 rollups/s (1,200 per minute).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
import uuid
from typing import Any

import psycopg
from bench_storage import MINUTE_US, reference_rollups
from confluent_kafka import Producer
from psycopg import sql
from pydantic import SecretStr

from fraiseql_obs_sinks.records import RollupRow
from fraiseql_obs_sinks.worker import run_sink
from fraiseql_obs_sinks.writer import RollupWriter
from fraiseql_obs_streams.windowing import MICROS
from fraiseql_observability.codec import QUERY_ROLLUP, default_codec
from fraiseql_observability.config import DatabaseSettings, KafkaSettings, Settings, SinkSettings
from fraiseql_observability.kafka import ensure_topics
from fraiseql_observability.metricsdb.migrate import migrate

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _url(conninfo: str) -> str:
    parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    return (f"postgresql://{parts.get('user', 'postgres')}@{parts.get('host', '127.0.0.1')}:"
            f"{parts.get('port', 5432)}/{parts['dbname']}")


class ScratchDatabase:
    """A freshly migrated database and a collector login, dropped afterwards."""

    def __init__(self, admin: str) -> None:
        self.admin = admin
        self.name = f"fraiseql_bench_{uuid.uuid4().hex[:10]}"
        self.user = f"bench_collector_{uuid.uuid4().hex[:8]}"
        self.url = psycopg.conninfo.make_conninfo(admin, dbname=self.name)
        self.collector = psycopg.conninfo.make_conninfo(self.url, user=self.user)

    def __enter__(self) -> ScratchDatabase:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        migrate(self.url)
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE fraiseql_collector").format(
                sql.Identifier(self.user)))
        return self

    def __exit__(self, *_exc: object) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(self.name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.user)))

    def count(self) -> int:
        with psycopg.connect(self.url) as conn:
            row = conn.execute("SELECT count(*) FROM fraiseql_metrics.rollups").fetchone()
            return int(row[0]) if row else 0


def statement_times(url: str) -> dict[str, float]:
    """Total execution ms per kind of sink statement, from pg_stat_statements (if installed)."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            rows = conn.execute(
                "SELECT query, total_exec_time FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchall()
    except psycopg.Error:
        return {}
    kinds = {"rollups upsert": 'INSERT INTO "fraiseql_metrics"."rollups"',
             "hourly refresh": '"fraiseql_metrics"."refresh_hourly"',
             "patterns upsert": 'INSERT INTO "fraiseql_metrics"."patterns"'}
    return {kind: sum(float(ms) for query, ms in rows if marker in query)
            for kind, marker in kinds.items()}


def reset_statements(url: str) -> None:
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
    except psycopg.Error:
        pass


def bench_writer(admin: str, records: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    rows = [RollupRow.from_record(r) for r in records]
    batches = [rows[i:i + batch] for i in range(0, len(rows), batch)]
    result: dict[str, Any] = {"rows": len(rows), "batch": batch}
    with ScratchDatabase(admin) as db, RollupWriter(db.collector, pool_size=1) as writer:
        writer.write(batches[0][:1])  # connect, create partitions: not part of the measure
        for phase in ("new", "overwrite"):
            reset_statements(db.url)
            began = time.perf_counter()
            for chunk in batches:
                writer.write(chunk)
            secs = time.perf_counter() - began
            result[phase] = {"secs": secs, "rows_per_sec": len(rows) / secs,
                             "db_ms": statement_times(db.url)}
        assert db.count() == len(rows)
    return result


def bench_worker(admin: str, bootstrap: str, records: list[dict[str, Any]], batch: int,
                 ) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(bootstrap_servers=bootstrap, rollups_topic=prefix + "rollups",
                          table_stats_topic=prefix + "table-stats",
                          dead_letters_topic=prefix + "dead-letters")
    ensure_topics(kafka, [kafka.rollups_topic, kafka.table_stats_topic, kafka.dead_letters_topic])
    codec = default_codec()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "enable.idempotence": True, "partitioner": "murmur2_random"})
    for record in records:
        while True:
            try:
                producer.produce(kafka.rollups_topic, key=record["fingerprint"].encode(),
                                 value=codec.encode(QUERY_ROLLUP, record))
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    try:
        with ScratchDatabase(admin) as db:
            settings = Settings(
                kafka=kafka,
                database=DatabaseSettings(url=SecretStr(_url(db.collector)), pool_size=2),
                sinks=SinkSettings(batch_size=batch, group_id=prefix + "sink", metrics_port=0),
            )
            stop = threading.Event()
            failures: list[BaseException] = []

            def target() -> None:
                try:
                    run_sink(settings, stop=stop)
                except BaseException as exc:
                    failures.append(exc)

            began = time.perf_counter()
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            first = None
            total = len(records)
            while True:
                count = db.count()
                now = time.perf_counter()
                if first is None and count > 0:
                    first = (now, count)
                if count >= total:
                    break
                if failures or now - began > 600:
                    raise RuntimeError(f"sink stopped or too slow: {failures}")
                time.sleep(0.05)
            done = time.perf_counter()
            stop.set()
            thread.join(60)
            assert first is not None
            steady = (total - first[1]) / max(1e-9, done - first[0])
            return {"rows": total, "batch": batch, "secs_end_to_end": done - began,
                    "rows_per_sec_end_to_end": total / (done - began),
                    "rows_per_sec_after_first_batch": steady}
    finally:
        admin_client = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin_client.delete_topics(
                [kafka.rollups_topic, kafka.table_stats_topic, kafka.dead_letters_topic]).values():
            with contextlib.suppress(Exception):  # best-effort cleanup
                future.result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--database", default=DEFAULT_URL, help="superuser URL (scratch databases "
                        "are created and dropped)")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--minutes", type=int, default=20, help="minutes of reference load")
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--skip-kafka", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    now_us = time.time_ns() // 1000
    end_us = now_us - now_us % (3600 * MICROS) - 3600 * MICROS
    records = [r for batch in reference_rollups(args.minutes, 1000, 100.0,
                                                end_us - args.minutes * MINUTE_US)
               for r in batch]
    result = {"writer": bench_writer(args.database, records, args.batch)}
    if not args.skip_kafka:
        result["worker"] = bench_worker(args.database, args.bootstrap, records, args.batch)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    writer = result["writer"]
    print(f"{len(records):,} reference-shaped rollups ({args.minutes} min of event time), "
          f"batches of {args.batch}")
    for phase in ("new", "overwrite"):
        db_ms = writer[phase]["db_ms"]
        split = ", ".join(f"{k} {v / 1000:.2f}s" for k, v in db_ms.items()) if db_ms else ""
        print(f"  writer, {phase:<9} rows: {writer[phase]['rows_per_sec']:>8,.0f} rows/s "
              f"({writer[phase]['secs']:.1f}s{'; in PostgreSQL: ' + split if split else ''})")
    if "worker" in result:
        worker = result["worker"]
        print(f"  worker from Kafka:    {worker['rows_per_sec_after_first_batch']:>8,.0f} rows/s "
              f"after its first batch; {worker['rows_per_sec_end_to_end']:,.0f} rows/s end to "
              f"end incl. start and group join ({worker['secs_end_to_end']:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
