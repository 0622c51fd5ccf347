"""Benchmark of the psycopg instrumentation (real PostgreSQL and Kafka of ``scripts/stack``).

    .venv/bin/python bench/bench_instrument.py [--database URL] [--bootstrap HOST:PORT]
                                               [--batches 300] [--json]

Measures, in one process:

1. the recording path per statement -- what a recording cursor adds after psycopg's own
   ``execute()`` returned: reading the sent text, the quick session-control test, the
   operation-name contextvar and ``Recorder.record()`` (the normalizer runs on the recorder's
   background thread, for kept events only) -- on a real cursor that executed a FraiseQL
   0.5.x-shaped statement;
   sampled (kept and sent to Kafka by the background thread meanwhile) and not sampled.
   ``time.perf_counter_ns()`` around batches of 1000 calls, per-call median and p99 over batches;
2. the normalizer's miss path (a text it has not seen): FraiseQL 0.5.x and 2.x statements;
3. end to end: ``SELECT 1`` through a plain and a recording cursor on one connection, in
   interleaved rounds (medians; the difference is dominated by round-trip noise).

Target (issue #13): the recording path of a sampled statement <= 10 µs median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

import psycopg
from bench_recorder import per_call_ns, recorder_settings, summary  # bench/ is on sys.path
from confluent_kafka.admin import AdminClient

from fraiseql_obs_producers.instrument import (
    instrumentation_errors,
    operation_name,
    record_statement,
    recording_cursor,
)
from fraiseql_obs_producers.normalize import normalize_cache_clear, normalize_sql
from fraiseql_obs_producers.recorder import Recorder
from fraiseql_observability.config import KafkaSettings
from fraiseql_observability.kafka import wait_for_broker

# What FraiseQL 0.5.3 sends for `orders(status: "paid", limit: 3)` (tests/test_fraiseql_app.py).
FRAISEQL_05 = ("SELECT jsonb_build_object('id', data->>'id', 'status', data->>'status', "
               "'total', data->'total')::text AS result FROM \"tv_order\" "
               "WHERE (data ->> 'status') = 'paid' LIMIT 3")
FRAISEQL_2 = ("SELECT JSON_OBJECT('id' VALUE \"data\"->>'id', 'total' VALUE \"data\"->'total' "
              "RETURNING json) FROM (SELECT CASE WHEN pg_column_compression(data) IS NOT NULL OR "
              "pg_column_toast_chunk_id(data) IS NOT NULL THEN data || '{}'::jsonb ELSE data END "
              "AS data, \"_o\" FROM (SELECT data, row_number() OVER (ORDER BY "
              "(data->>'total')::numeric DESC, id ASC) AS \"_o\" FROM \"tv_order\" WHERE "
              "((data->>'total')::numeric >= ($1::text)::numeric AND data->>'status' IN ($2, $3)) "
              "ORDER BY (data->>'total')::numeric DESC, id ASC LIMIT $4 OFFSET $5) AS _fq_page "
              "OFFSET 0) AS _fq_doc ORDER BY \"_o\"")
SETUP = ("CREATE TEMP TABLE tv_order AS SELECT g AS id, jsonb_build_object('id', g, 'status', "
         "'paid', 'total', g) AS data FROM generate_series(1, 3) g")


def bench_recording_path(database: str, kafka: KafkaSettings, batches: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    cases = (("not_sampled", recorder_settings(kafka, 0.0, slow_query_ms=1e9)),
             ("sampled", recorder_settings(kafka, 1.0, buffer_size=2_000_000, batch_size=5000,
                                   flush_interval_secs=0.5)))
    with psycopg.connect(database) as conn:
        conn.execute(SETUP)
        for name, settings in cases:
            recorder = Recorder(settings).start()
            cursor = recording_cursor(recorder)(conn)
            cursor.execute(FRAISEQL_05)  # a real recording cursor holding a real sent statement
            assert normalize_sql(FRAISEQL_05) is not None  # warm the cache

            def tail(recorder: Recorder = recorder, cursor: Any = cursor) -> None:
                record_statement(recorder, cursor, FRAISEQL_05, time.perf_counter_ns(), None,
                                 None)

            with operation_name("orders"):
                per_call_ns(tail, 20)  # warm-up
                results[name] = summary(per_call_ns(tail, batches))
            assert recorder.flush(120), "not every event was acknowledged"
            stats = recorder.stats()
            recorder.close()
            results[name].update(kept=stats.sampled, sent=stats.sent,
                                 dropped=stats.dropped_total)
    # A failing recording path would be fast and wrong: it must not have failed once.
    results["instrumentation_errors"] = instrumentation_errors()
    return results


def bench_normalizer_miss(rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, text in (("fraiseql_05", FRAISEQL_05), ("fraiseql_2", FRAISEQL_2)):
        def miss(text: str = text) -> None:
            normalize_cache_clear()
            normalize_sql(text)
        out[name] = summary(per_call_ns(miss, rounds, 20))
    normalize_cache_clear()
    return out


def bench_end_to_end(database: str, kafka: KafkaSettings, rounds: int) -> dict[str, Any]:
    """SELECT 1 round trips, plain vs recording cursor (every statement sampled)."""
    recorder = Recorder(recorder_settings(kafka, 1.0, buffer_size=2_000_000, batch_size=5000)).start()
    plain_ns: list[float] = []
    recorded_ns: list[float] = []
    with psycopg.connect(database, autocommit=True) as plain, \
            psycopg.connect(database, autocommit=True,
                            cursor_factory=recording_cursor(recorder)) as recording:
        for _ in range(rounds):
            plain_ns += per_call_ns(lambda: plain.execute("SELECT 1"), 1, 200)
            recorded_ns += per_call_ns(lambda: recording.execute("SELECT 1"), 1, 200)
    recorder.flush(60)
    recorder.close()
    plain_med = statistics.median(plain_ns) / 1000
    recorded_med = statistics.median(recorded_ns) / 1000
    return {"plain_median_us": round(plain_med, 2), "recording_median_us": round(recorded_med, 2),
            "difference_us": round(recorded_med - plain_med, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default=os.environ.get(
        "FRAISEQL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--bootstrap", default=os.environ.get(
        "FRAISEQL_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--batches", type=int, default=300, help="batches of 1000 calls")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    prefix = f"bench{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap, region="bench",
                          events_topic=prefix + "fraiseql.query-events")
    wait_for_broker(kafka)
    results: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                               "load_average": os.getloadavg()}
    try:
        results["recording_path"] = bench_recording_path(args.database, kafka, args.batches)
        results["normalizer_miss"] = bench_normalizer_miss(max(5, args.batches // 10))
        results["end_to_end"] = bench_end_to_end(args.database, kafka, max(3, args.batches // 10))
    finally:
        admin = AdminClient({"bootstrap.servers": args.bootstrap})
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        if topics:
            for future in admin.delete_topics(topics, operation_timeout=30).values():
                future.exception()
    results["load_average_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    path, miss, e2e = results["recording_path"], results["normalizer_miss"], results["end_to_end"]
    print(f"machine: {results['cpus']} CPUs, Python {results['python']}, "
          f"load {results['load_average'][0]:.2f} -> {results['load_average_after'][0]:.2f}")
    print(f"recording path, sampled     : median {path['sampled']['median_us']:.3f} µs, "
          f"p99 {path['sampled']['p99_us']:.3f} µs   (target <= 10 µs median; "
          f"{path['sampled']['sent']:,} events sent)")
    print(f"recording path, not sampled : median {path['not_sampled']['median_us']:.3f} µs, "
          f"p99 {path['not_sampled']['p99_us']:.3f} µs")
    print(f"normalizer miss (new text)  : FraiseQL 0.5.x {miss['fraiseql_05']['median_us']:.1f} µs,"
          f" 2.x {miss['fraiseql_2']['median_us']:.1f} µs median")
    print(f"SELECT 1 end to end         : plain {e2e['plain_median_us']:.1f} µs, recording "
          f"{e2e['recording_median_us']:.1f} µs (difference {e2e['difference_us']:.1f} µs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
