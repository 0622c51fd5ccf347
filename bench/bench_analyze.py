"""How long ``analyze`` takes over 14 days of rollups for 1,000 patterns in 2 regions (goal < 10 s).

    .venv/bin/python bench/bench_analyze.py [--database URL] [--patterns 1000] [--days 14]
                                            [--minute-days 1] [--repeat 3] [--keep] [--json]

Builds a scratch metrics database (``fraiseql_bench_analyze_<random>`` on the server of
``--database``, default the local stack; dropped at the end unless ``--keep``), migrates it, and
fills it, inside PostgreSQL (``INSERT … SELECT generate_series``, not row by row from Python), with
what the reference deployment's pipeline would have stored (SPEC §1: 10,000 queries/s, 1 %
sampling → 100 kept events/s of weight 100, two regions, 14 days):

* 1,000 FraiseQL-style SQL patterns over 20 ``tv_*`` views (equality / range / sort / LIMIT /
  containment / aggregates on JSONB paths, nested paths and casts, primary-key lookups), with Zipf
  popularity: pattern rank r gets 1/r of the traffic (normalized), half of it per region;
* minute rollups at a realistic density: a (pattern, region, minute) row exists when at least one
  kept event fell in it — the pattern's kept events per minute and region are
  λ = 6000 × share / 2, so the top patterns have a row every minute and the tail one every few
  hours; a row holds n ≈ λ events (at least 1) and min(n, ~100) occupied sketch buckets around
  the pattern's median latency (what a 1 %-accurate sketch of a lognormal needs);
* the hourly level (``rollups_hourly``, what the sink maintains for long windows) for every hour
  of the 14 days, at the same density per hour (60 λ events, up to ~150 buckets);
* table statistics of the 20 views (rows, JSONB path statistics, primary keys, a few indexes).

Minute rows are generated for the last ``--minute-days`` day(s) only (default 1: ~1.9M rows):
a 14-day (or 7-day) analysis reads whole hours from the hourly level and minute rows only for the
ragged edges of its window (partition pruning skips the other days), so minute rows for the
older days would not be read. ``--minute-days 14`` generates them all (~26M rows, slow) to check.

Then times :func:`fraiseql_obs_analyzer.analyze.run_analysis` in-process and ``fraiseql-cli analyze --format
json`` end to end, for ``--window 30d`` (all 14 days) and ``7d``: once *cold* (every sketch bucket
of the window merged from the rollups: ~38M buckets), then — after the scheduler's
:func:`fraiseql_obs_analyzer.cache.refresh_sketch_cache` built the per-day merged sketches (timed too) —
*warm*
(median of ``--repeat``), which is how analyses run in a deployment with the scheduler.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from fraiseql_obs_analyzer.analyze import AnalyzeOptions, run_analysis
from fraiseql_obs_analyzer.cache import refresh_sketch_cache
from fraiseql_obs_producers.fingerprint import fingerprint_sql
from fraiseql_observability.metricsdb.migrate import migrate

EVENTS_PER_MINUTE = 6000.0  # 10,000 q/s × 1 % sampling × 60 s
WEIGHT = 100.0  # 1 / sampling rate
REGIONS = ("us-east-1", "eu-west-1")
VIEWS = tuple(f"tv_{name}" for name in (
    "order", "user", "product", "invoice", "payment", "shipment", "review", "cart", "coupon",
    "address", "session", "ticket", "refund", "stock", "supplier", "category", "price",
    "subscription", "event", "audit"))
PATHS = (("status",), ("created_at",), ("customer", "region"), ("email",), ("price",),
         ("category",), ("owner", "id"), ("country",), ("channel",), ("priority",))
SHAPES = (
    "SELECT data FROM {v} WHERE {p} = $1 LIMIT $2",
    "SELECT data FROM {v} WHERE {p} = $1 ORDER BY id DESC LIMIT $2",
    "SELECT data FROM {v} WHERE ({p})::numeric > $1 ORDER BY ({p})::numeric LIMIT $2",
    "SELECT {p} AS key, count(*) AS n FROM {v} GROUP BY {p}",
    "SELECT data FROM {v} WHERE {p} IS NULL LIMIT $1",
)
ALPHA = 0.01
LOG_GAMMA = math.log((1 + ALPHA) / (1 - ALPHA))


def path_sql(path: tuple[str, ...]) -> str:
    *parents, leaf = path
    return "data" + "".join(f"->'{p}'" for p in parents) + f"->>'{leaf}'"


def make_patterns(count: int) -> list[dict[str, Any]]:
    """``count`` distinct FraiseQL-style patterns, most popular first (Zipf ranks)."""
    shapes: list[str] = []
    for view in VIEWS:
        shapes.append(f"SELECT data FROM {view} WHERE id = $1")  # noqa: S608 - a pattern's text
    for shape in SHAPES:
        for view in VIEWS:
            for path in PATHS:
                shapes.append(shape.format(v=view, p=path_sql(path)))
    shapes.append("SELECT data FROM tv_order WHERE data @> $1::jsonb LIMIT $2")
    if count > len(shapes):
        raise SystemExit(f"at most {len(shapes)} patterns")
    # Interleave so that the popular ranks hold a mix of fast lookups and slow JSONB patterns.
    ordered = [shapes[(i * 37) % len(shapes)] for i in range(len(shapes))]
    chosen = list(dict.fromkeys(ordered))[:count]
    harmonic = sum(1.0 / r for r in range(1, count + 1))
    out = []
    for rank, text in enumerate(chosen, start=1):
        share = 1.0 / rank / harmonic
        median = 1.0 if "id = $1" in text else (5.0 + (rank * 7919) % 300)
        out.append({"fingerprint": fingerprint_sql(text), "sql": text, "share": share,
                    "rate": EVENTS_PER_MINUTE * share / len(REGIONS), "median": median,
                    "query_name": f"q{rank}"})
    return out


def scratch_url(base: str) -> tuple[str, str]:
    name = f"fraiseql_bench_analyze_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, urlunsplit(urlsplit(base)._replace(path="/" + name))


def load(url: str, patterns: list[dict[str, Any]], *, end: datetime, days: int,
         minute_days: float) -> dict[str, float]:
    start = end - timedelta(days=days)
    minute_start = end - timedelta(days=minute_days)
    timings: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT fraiseql_metrics.ensure_partitions(%s, %s)",
                      (start - timedelta(days=1), end + timedelta(days=1)))
        conn.execute("CREATE TEMP TABLE bench_patterns (fingerprint text, region text, "
                     "rate float8, base_key int)")
        with conn.cursor().copy("COPY bench_patterns FROM STDIN") as copy:
            for p in patterns:
                for region in REGIONS:
                    copy.write_row((p["fingerprint"], region, p["rate"],
                                    math.ceil(math.log(p["median"]) / LOG_GAMMA)))
        conn.execute(
            "INSERT INTO fraiseql_metrics.patterns (fingerprint, query_name, sql, first_seen, "
            "last_seen) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) AS x(f, q, s), "
            "LATERAL (SELECT %s::timestamptz, %s::timestamptz) AS t",
            ([p["fingerprint"] for p in patterns], [p["query_name"] for p in patterns],
             [p["sql"] for p in patterns], start, end))
        began = time.monotonic()
        # One row per (pattern, region, minute) that received at least one kept event.
        conn.execute("""
            INSERT INTO fraiseql_metrics.rollups
                (rollup_id, fingerprint, region, window_start, window_end, source_topic,
                 source_partition, first_offset, last_offset, event_count, count, error_count,
                 cache_hits, rows_sum, exec_sum_ms, exec_min_ms, exec_max_ms,
                 sql_generation_sum_ms, db_round_trip_sum_ms, projection_sum_ms, sketch_alpha,
                 sketch_keys, sketch_weights)
            SELECT gen_random_uuid(), b.fingerprint, b.region, m, m + interval '1 minute',
                   'fraiseql.query-events', 0, 0, n - 1, n, n * %(w)s, 0, 0, n * %(w)s * 10,
                   n * %(w)s * exp(b.base_key * %(lg)s), 0.5 * exp(b.base_key * %(lg)s),
                   2 * exp(b.base_key * %(lg)s), 0, n * %(w)s * exp(b.base_key * %(lg)s) * 0.95,
                   0, %(alpha)s,
                   ARRAY(SELECT b.base_key - k / 2 + i FROM generate_series(1, k) AS i),
                   ARRAY(SELECT %(w)s * n / k * (0.5 + random()) FROM generate_series(1, k) AS i)
            FROM bench_patterns AS b
            CROSS JOIN generate_series(%(from)s::timestamptz, %(to)s::timestamptz
                                       - interval '1 minute', interval '1 minute') AS m
            CROSS JOIN LATERAL (SELECT greatest(1, round(b.rate * (0.5 + random())))::int AS n
                                WHERE random() < 1 - exp(-b.rate)) AS e
            CROSS JOIN LATERAL (SELECT least(e.n, round(100 * (1 - exp(-e.n / 100.0)))::int + 1)
                                AS k) AS s
        """, {"w": WEIGHT, "lg": LOG_GAMMA, "alpha": ALPHA, "from": minute_start, "to": end})
        timings["minute_rows_secs"] = time.monotonic() - began
        began = time.monotonic()
        conn.execute("""
            INSERT INTO fraiseql_metrics.rollups_hourly
                (fingerprint, region, hour_start, sketch_alpha, windows, event_count, count,
                 error_count, cache_hits, rows_sum, exec_sum_ms, exec_min_ms, exec_max_ms,
                 sql_generation_sum_ms, db_round_trip_sum_ms, projection_sum_ms, sketch_keys,
                 sketch_weights)
            SELECT b.fingerprint, b.region, h, %(alpha)s, least(60, n), n, n * %(w)s, 0, 0,
                   n * %(w)s * 10, n * %(w)s * exp(b.base_key * %(lg)s),
                   0.5 * exp(b.base_key * %(lg)s), 2 * exp(b.base_key * %(lg)s), 0,
                   n * %(w)s * exp(b.base_key * %(lg)s) * 0.95, 0,
                   ARRAY(SELECT b.base_key - k / 2 + i FROM generate_series(1, k) AS i),
                   ARRAY(SELECT %(w)s * n / k * (0.5 + random()) FROM generate_series(1, k) AS i)
            FROM bench_patterns AS b
            CROSS JOIN generate_series(%(from)s::timestamptz, %(to)s::timestamptz
                                       - interval '1 hour', interval '1 hour') AS h
            CROSS JOIN LATERAL (SELECT greatest(1, round(60 * b.rate * (0.5 + random())))::int
                                AS n WHERE random() < 1 - exp(-least(60 * b.rate, 700))) AS e
            CROSS JOIN LATERAL (SELECT least(e.n, round(150 * (1 - exp(-e.n / 150.0)))::int + 1)
                                AS k) AS s
        """, {"w": WEIGHT, "lg": LOG_GAMMA, "alpha": ALPHA,
              "from": start.replace(minute=0), "to": end.replace(minute=0)})
        timings["hourly_rows_secs"] = time.monotonic() - began
        snapshot = str(uuid.uuid4())
        for rank, view in enumerate(VIEWS):
            rows = 2_000_000 // (rank + 1)
            columns = [{"expression": path_sql(p), "data_type": "text", "null_frac": 0.05,
                        "n_distinct": float(10 ** (1 + i % 5)), "avg_width": 12}
                       for i, p in enumerate(PATHS)]
            indexes = [{"name": f"{view}_pkey", "definition":
                        f"CREATE UNIQUE INDEX {view}_pkey ON public.{view} USING btree (id)",
                        "scans": 10_000, "size_bytes": rows * 16, "is_unique": True,
                        "is_primary": True},
                       {"name": f"{view}_legacy_idx", "definition":
                        f"CREATE INDEX {view}_legacy_idx ON public.{view} USING btree "
                        "(((data ->> 'legacy'::text)))", "scans": 0, "size_bytes": rows * 20,
                        "is_unique": False, "is_primary": False}]
            conn.execute(
                "INSERT INTO fraiseql_metrics.table_stats (snapshot_id, taken_at, source, region,"
                " schema_name, table_name, relkind, row_estimate, total_bytes, seq_scans, columns,"
                " indexes) VALUES (%s, %s, 'app', 'us-east-1', 'public', %s, 'r', %s, %s, 0, %s,"
                " %s)", (snapshot, end - timedelta(minutes=5), view, rows, rows * 300,
                         Jsonb(columns), Jsonb(indexes)))
        began = time.monotonic()
        conn.execute("VACUUM ANALYZE")
        timings["vacuum_secs"] = time.monotonic() - began
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM fraiseql_metrics.rollups),"
            " (SELECT count(*) FROM fraiseql_metrics.rollups_hourly),"
            " (SELECT coalesce(sum(cardinality(sketch_keys)), 0) FROM fraiseql_metrics.rollups),"
            " (SELECT coalesce(sum(cardinality(sketch_keys)), 0)"
            "  FROM fraiseql_metrics.rollups_hourly),"
            " pg_database_size(current_database())").fetchone()
        assert counts is not None
        timings.update(minute_rows=counts[0], hourly_rows=counts[1], minute_buckets=counts[2],
                       hourly_buckets=counts[3], database_mb=round(counts[4] / 2**20, 1))
    return timings


def time_analysis(url: str, window: str, end: datetime, repeat: int) -> dict[str, Any]:
    runs = []
    analysis = None
    for _ in range(repeat):
        began = time.monotonic()
        analysis = run_analysis(url, AnalyzeOptions(window=window, end=end))
        runs.append(time.monotonic() - began)
    assert analysis is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAISEQL_")}
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "fraiseql_obs_app.cli", "analyze",
                          "--database", url, "--window", window, "--format", "json",
                          "--end", end.isoformat()], capture_output=True, text=True, env=env,
                         check=True)
    cli_secs = time.monotonic() - began
    document = json.loads(out.stdout)
    return {
        "window": window,
        "analyze_secs_median": round(statistics.median(runs), 3),
        "analyze_secs_runs": [round(r, 3) for r in runs],
        "cli_json_secs": round(cli_secs, 3),
        "patterns": analysis.unique_queries,
        "total_executions": round(analysis.total_executions),
        "suggestions": len(document["suggestions"]),
        "by_priority": {p: sum(1 for s in document["suggestions"] if s["priority"] == p)
                        for p in ("critical", "high", "medium", "low")},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default=os.environ.get(
        "FRAISEQL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a superuser URL of the server to create the scratch database on")
    parser.add_argument("--patterns", type=int, default=1000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--minute-days", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    patterns = make_patterns(args.patterns)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    name, url = scratch_url(args.database)
    try:
        migrate(url)
        began = time.monotonic()
        loaded = load(url, patterns, end=end, days=args.days, minute_days=args.minute_days)
        loaded["load_secs"] = round(time.monotonic() - began, 1)
        cold = [time_analysis(url, window, end, 1) for window in ("30d", "7d")]
        began = time.monotonic()
        cache = refresh_sketch_cache(url, retention_days=args.days, now=end)
        loaded["cache_build_secs"] = round(time.monotonic() - began, 1)
        loaded["cache_days"] = len(cache.built)
        began = time.monotonic()
        refresh_sketch_cache(url, retention_days=args.days, now=end)
        loaded["cache_noop_secs"] = round(time.monotonic() - began, 2)
        results = [time_analysis(url, window, end, args.repeat) for window in ("30d", "7d")]
    finally:
        if not args.keep:
            with psycopg.connect(args.database, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))
    report = {"patterns": args.patterns, "regions": len(REGIONS), "days": args.days,
              "minute_days": args.minute_days, "load": loaded, "cold": cold,
              "analyses": results, "database": name if args.keep else None}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.patterns} patterns x {len(REGIONS)} regions, {args.days} days "
          f"(minute rows for the last {args.minute_days:g}):")
    print(f"  minute rows {loaded['minute_rows']:,} ({loaded['minute_buckets']:,} buckets), "
          f"hourly rows {loaded['hourly_rows']:,} ({loaded['hourly_buckets']:,} buckets), "
          f"database {loaded['database_mb']} MB, loaded in {loaded['load_secs']} s")
    for result in cold:
        print(f"  cold (no per-day cache yet): analyze --window {result['window']}: "
              f"{result['analyze_secs_median']} s")
    print(f"  scheduler's per-day sketch cache: {loaded['cache_days']} days built in "
          f"{loaded['cache_build_secs']} s (once; then {loaded['cache_noop_secs']} s when current)")
    for result in results:
        print(f"  warm: analyze --window {result['window']}: {result['analyze_secs_median']} s "
              f"(runs {result['analyze_secs_runs']}); fraiseql-cli analyze --format json "
              f"{result['cli_json_secs']} s; {result['patterns']} patterns, "
              f"{result['suggestions']} suggestions {result['by_priority']}")
    goal = max(r["analyze_secs_median"] for r in results)
    print(f"  goal < 10 s: {'met' if goal < 10 else 'MISSED'} ({goal} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
