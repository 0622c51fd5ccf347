"""Benchmark of the real-execution load: demo database build, throughput, the planted pattern.

    .venv/bin/python bench/bench_loadgen.py [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
        [--bootstrap 127.0.0.1:9092] [--rows 400000] [--duration 30] [--concurrency 2]
        [--planted-before 60] [--planted-after 1000] [--keep] [--json]

Measures, against the real PostgreSQL and Kafka of ``scripts/stack`` (synthetic ``loadgen``
events/s are in ``bench/bench_recorder.py``):

1. ``create_demo_app_db`` wall time for ``--rows`` orders (plus users, products, invoices), in a
   fresh database ``fraiseql_bench_appdb`` (dropped at the end unless ``--keep``);
2. ``run_real_workload`` over the core patterns for ``--duration`` seconds at ``--concurrency``,
   sample rate 1 %: executed queries/s and the measured p50/p95 of each pattern;
3. the planted pattern (``ordersByCustomerEmail``) alone, before and after
   ``CREATE INDEX ON tv_order ((data->>'customer_email'))``: its exact p95 from every execution,
   and the EXPLAIN ANALYZE execution time (median of 5) for comparison with NOTES.md;
4. the core mix again with the index, to show what the fix does to throughput.

Events go to a temporary topic, deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from confluent_kafka.admin import AdminClient
from psycopg import sql

from fraiseql_obs_producers.appdb import PLANTED_INDEX_SQL, create_demo_app_db
from fraiseql_obs_producers.execute import ExecutionReport, configure_connection, run_real_workload
from fraiseql_obs_producers.workload import PLANTED_QUERY, Workload, default_workload
from fraiseql_observability.config import KafkaSettings, MetricsSettings, Settings

DB_NAME = "fraiseql_bench_appdb"


def _explain_ms(url: str, sql_text: str) -> float:
    times = []
    with psycopg.connect(url, autocommit=True) as conn:
        configure_connection(conn)
        for n in range(5):
            row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql_text,
                               (f"user{1 + 997 * n}@example.com", 20)).fetchone()
            assert row is not None
            times.append(float(row[0][0]["Execution Time"]))
    return statistics.median(times)


def _patterns(report: ExecutionReport) -> dict[str, dict[str, Any]]:
    return {q.query_name: {"executed": q.executed, "p50_ms": round(q.p50_ms, 3),
                           "p95_ms": round(q.p95_ms, 3), "errors": q.error_count}
            for q in sorted(report.queries.values(), key=lambda q: -q.executed)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--planted-before", type=int, default=60)
    parser.add_argument("--planted-after", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep the demo database")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    url = urlunsplit(urlsplit(args.admin_url)._replace(path="/" + DB_NAME))
    topic = f"bench-{uuid.uuid4().hex[:8]}.fraiseql.query-events"
    settings = Settings(sample_rate=0.01, kafka=KafkaSettings(bootstrap_servers=args.bootstrap,
                                                              region="bench", events_topic=topic),
                        metrics=MetricsSettings(buffer_size=100_000, batch_size=1000,
                                                flush_interval_secs=1.0))
    planted = default_workload(tail=0).by_name(PLANTED_QUERY)
    results: dict[str, Any] = {"rows": args.rows, "concurrency": args.concurrency}
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
    try:
        started = time.monotonic()
        create_demo_app_db(url, rows=args.rows, seed=0)
        results["build_seconds"] = round(time.monotonic() - started, 2)
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) "
                               "FROM pg_class c WHERE relname LIKE 'tv\\_%' AND relkind = 'r'"
                               ).fetchone()
            results["database_size"] = row[0] if row else None

        mix = run_real_workload(settings, url, duration=args.duration,
                                concurrency=args.concurrency, seed=1)
        results["mix"] = {"queries_per_sec": round(mix.queries_per_sec, 1),
                          "executed": mix.executed, "errors": mix.errors,
                          "events_sent": mix.recorder.sent, "patterns": _patterns(mix)}

        alone = Workload((planted,))
        before = run_real_workload(settings, url, count=args.planted_before,
                                   concurrency=args.concurrency, seed=2, workload=alone)
        explain_before = _explain_ms(url, planted.sql)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(PLANTED_INDEX_SQL)
            conn.execute("ANALYZE tv_order")
        after = run_real_workload(settings, url, count=args.planted_after,
                                  concurrency=args.concurrency, seed=3, workload=alone)
        explain_after = _explain_ms(url, planted.sql)
        p95_before = before.queries[PLANTED_QUERY].p95_ms
        p95_after = after.queries[PLANTED_QUERY].p95_ms
        results["planted"] = {
            "query_name": PLANTED_QUERY, "index": PLANTED_INDEX_SQL,
            "p95_ms_before": round(p95_before, 3), "p95_ms_after": round(p95_after, 3),
            "p95_speedup": round(p95_before / p95_after, 1),
            "p50_ms_before": round(before.queries[PLANTED_QUERY].p50_ms, 3),
            "p50_ms_after": round(after.queries[PLANTED_QUERY].p50_ms, 3),
            "explain_ms_before": round(explain_before, 3),
            "explain_ms_after": round(explain_after, 3),
        }
        indexed = run_real_workload(settings, url, duration=args.duration,
                                    concurrency=args.concurrency, seed=1)
        results["mix_with_index"] = {"queries_per_sec": round(indexed.queries_per_sec, 1),
                                     "executed": indexed.executed,
                                     "patterns": _patterns(indexed)}
    finally:
        admin = AdminClient({"bootstrap.servers": args.bootstrap})
        for future in admin.delete_topics([topic], operation_timeout=30).values():
            try:
                future.result()
            except Exception as exc:  # the topic may not exist if the run failed early
                print(f"(could not delete {topic}: {exc})", file=sys.stderr)
        if not args.keep:
            with psycopg.connect(args.admin_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(DB_NAME)))

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    planted_result = results["planted"]
    print(f"demo database        : {args.rows:,} orders ({results['database_size']}) built in "
          f"{results['build_seconds']} s")
    print(f"real execution       : {results['mix']['queries_per_sec']} queries/s at concurrency "
          f"{args.concurrency} (core mix, no JSONB index); "
          f"{results['mix_with_index']['queries_per_sec']} queries/s with the planted index")
    print(f"planted {PLANTED_QUERY}: p95 {planted_result['p95_ms_before']} ms -> "
          f"{planted_result['p95_ms_after']} ms ({planted_result['p95_speedup']}x); EXPLAIN ANALYZE "
          f"{planted_result['explain_ms_before']} ms -> {planted_result['explain_ms_after']} ms")
    print("per pattern (no index): " + json.dumps(results["mix"]["patterns"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
