"""Storage of the metrics database at the reference load, measured in real PostgreSQL bytes.

    .venv/bin/python bench/bench_storage.py [--database URL] [--minutes 120] [--patterns 1000]
                                            [--rate 100] [--retention-days 14] [--json] [--keep]

The reference deployment (SPEC §1): 10,000 queries/s in two regions, 1 % sampling (100 kept
events/s, weight 100), ~1,000 active SQL patterns with Zipf popularity (rank r ∝ 1/r), events keyed
by fingerprint over 6 source partitions. This script

1. generates ``--minutes`` of event time of that load (latencies lognormal per pattern; slow
   queries and errors kept at weight 1, as the sampler does) and aggregates it with the stream
   stage's own windowing code (:class:`fraiseql_obs_streams.windowing.PartitionWindows`, one per partition):
   exactly the minute rollups the stream workers would publish;
2. writes them, a minute of closed windows per batch, through the real :class:`RollupWriter`
   as a ``fraiseql_collector`` member into a freshly migrated database (minute rows, pattern
   catalogue, and the hourly cells the writer maintains), then VACUUMs as autovacuum would;
3. measures ``pg_total_relation_size`` (heap + indexes + TOAST) of every partition, per level;
4. extrapolates bytes per pattern per day and the steady-state size for ``--retention-days`` of
   hourly cells with minute rows kept for 1, 2, 3, 7 or all of those days;
5. checks that percentiles read back from the database (minute level and hourly level) are within
   the sketch's relative error of the exact weighted percentiles of the generated events.

Nothing is written to Kafka: only the database's bytes are measured here (bench_sink.py measures
throughput through Kafka).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from fraiseql_obs_analyzer.stats import pattern_stats, pattern_stats_at_level
from fraiseql_obs_sinks.records import RollupRow
from fraiseql_obs_sinks.writer import RollupWriter
from fraiseql_obs_streams.windowing import MICROS, PartitionWindows
from fraiseql_observability.metricsdb.migrate import migrate
from fraiseql_observability.sketch import DEFAULT_ALPHA

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TOPIC = "fraiseql.query-events"
PARTITIONS = 6
REGIONS = ("us-east-1", "eu-west-1")
REGION_SHARE = (0.6, 0.4)
SAMPLE_WEIGHT = 100.0  # 1 % sampling
SLOW_MS = 1000.0  # slow queries are always kept, at weight 1
MINUTE_US = 60 * MICROS
RAW_EVENT_BYTES_SEED = 500e9 / (14 * 50e6)  # the seed design: 500 GB for 14 days of 50M/day


@dataclass(frozen=True, slots=True)
class Pattern:
    fingerprint: str
    query_name: str
    sql: str
    mu: float  # log of the median latency (ms)
    sigma: float
    error_rate: float
    rows: int


def reference_patterns(count: int, seed: int = 1) -> tuple[list[Pattern], list[float]]:
    """``count`` FraiseQL-shaped patterns and their cumulative Zipf popularity."""
    rng = random.Random(seed)
    views = ("tv_order", "tv_user", "tv_product", "tv_invoice", "tv_shipment", "tv_account")
    paths = ("status", "region", "customer'->>'tier", "created_at", "currency", "channel",
             "shipping'->>'carrier", "plan", "country", "category")
    patterns = []
    for rank in range(1, count + 1):
        view, path = rng.choice(views), rng.choice(paths)
        text = "".join((  # a FraiseQL-shaped statement (text only, never executed)
            "SELECT data FROM ", view, " WHERE data->>'", path, "' = $1 AND tenant_id = $2 ",
            f"ORDER BY data->>'created_at' DESC LIMIT $3 /* shape {rank} */"))
        patterns.append(Pattern(
            fingerprint=hashlib.sha256(text.encode()).hexdigest()[:16],
            query_name=f"{view.removeprefix('tv_')}sBy{path.split(chr(39))[0].title()}_{rank}",
            sql=text,
            mu=math.log(rng.lognormvariate(math.log(4.0), 1.2)),
            sigma=rng.uniform(0.3, 1.0),
            error_rate=rng.choice((0.0, 0.0, 0.001, 0.01)),
            rows=rng.choice((1, 1, 10, 20, 50)),
        ))
    weights = [1.0 / rank for rank in range(1, count + 1)]
    total = math.fsum(weights)
    cumulative, running = [], 0.0
    for weight in weights:
        running += weight / total
        cumulative.append(running)
    cumulative[-1] = 1.0
    return patterns, cumulative


def generate_events(patterns: list[Pattern], cumulative: list[float], start_us: int, minutes: int,
                    rate: float, seed: int = 2) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(source partition, event)`` in event-time order: ``rate`` kept events per second."""
    import bisect  # noqa: PLC0415

    rng = random.Random(seed)
    end_us = start_us + minutes * MINUTE_US
    t = float(start_us)
    mean_gap_us = MICROS / rate
    while True:
        t += rng.expovariate(1.0) * mean_gap_us
        if t >= end_us:
            return
        pattern = patterns[bisect.bisect_left(cumulative, rng.random())]
        region = REGIONS[0] if rng.random() < REGION_SHARE[0] else REGIONS[1]
        latency = max(0.05, rng.lognormvariate(pattern.mu, pattern.sigma))
        error = "QueryCanceled" if rng.random() < pattern.error_rate else None
        weight = 1.0 if (latency >= SLOW_MS or error) else SAMPLE_WEIGHT
        yield zlib.crc32(pattern.fingerprint.encode()) % PARTITIONS, {
            "occurred_at": int(t),
            "fingerprint": pattern.fingerprint,
            "region": region,
            "query_name": pattern.query_name,
            "sql": pattern.sql,
            "sample_weight": weight,
            "execution_time_ms": latency,
            "error": error,
            "cache_hit": rng.random() < 0.9,
            "rows_returned": 0 if error else pattern.rows,
            "sql_generation_time_ms": 0.02,
            "db_round_trip_time_ms": latency * 0.85,
            "projection_time_ms": latency * 0.1,
        }


def reference_rollups(minutes: int, patterns_count: int, rate: float, start_us: int,
                      truth: dict[tuple[str, str], list[tuple[float, float]]] | None = None,
                      ) -> list[list[dict[str, Any]]]:
    """The rollup records of ``minutes`` of reference load, grouped by the minute they close in
    (the batches a sink receives), via the stream stage's windowing. ``truth`` collects every
    (latency, weight) per (fingerprint, region) when given."""
    patterns, cumulative = reference_patterns(patterns_count)
    windows = [PartitionWindows(TOPIC, p) for p in range(PARTITIONS)]
    offsets = [0] * PARTITIONS
    batches: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for partition, event in generate_events(patterns, cumulative, start_us, minutes, rate):
        windows[partition].add(offsets[partition], event, event["occurred_at"])  # sent at once
        offsets[partition] += 1
        if truth is not None:
            truth[(event["fingerprint"], event["region"])].append(
                (event["execution_time_ms"], event["sample_weight"]))
    for w in windows:
        for rollup in w.close_all():
            batches[rollup.record["window_start"]].append(rollup.record)
    return [batches[k] for k in sorted(batches)]


def exact_quantile(pairs: list[tuple[float, float]], q: float) -> float:
    ordered = sorted(pairs)
    target = q * math.fsum(w for _, w in ordered)
    running = 0.0
    for value, weight in ordered:
        running += weight
        if running >= target:
            return value
    return ordered[-1][0]


def relation_sizes(url: str) -> dict[str, tuple[int, int]]:
    """Per parent table: (rows, bytes incl. indexes and TOAST) summed over its partitions."""
    query = """
        SELECT coalesce(parent.relname, c.relname) AS level,
               sum(c.reltuples)::bigint, sum(pg_total_relation_size(c.oid))::bigint
        FROM pg_class c
        LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
        LEFT JOIN pg_class parent ON parent.oid = i.inhparent
        WHERE c.relnamespace = 'fraiseql_metrics'::regnamespace AND c.relkind = 'r'
        GROUP BY 1
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # what autovacuum does in steady state; sets reltuples
        return {str(r[0]): (int(r[1]), int(r[2])) for r in conn.execute(query).fetchall()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    admin = args.database
    name = f"fraiseql_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(admin, dbname=name)
    user = f"bench_collector_{uuid.uuid4().hex[:8]}"
    try:
        migrate(url)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE fraiseql_collector").format(
                sql.Identifier(user)))
        collector = psycopg.conninfo.make_conninfo(url, user=user)

        # Whole hours, ending an hour ago: every window closed, inside precreated partitions.
        now_us = time.time_ns() // 1000
        end_us = now_us - now_us % (3600 * MICROS) - 3600 * MICROS
        start_us = end_us - args.minutes * MINUTE_US
        truth: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        began = time.perf_counter()
        batches = reference_rollups(args.minutes, args.patterns, args.rate, start_us, truth)
        generated_secs = time.perf_counter() - began
        rollups = [r for batch in batches for r in batch]
        rows = [[RollupRow.from_record(r) for r in batch] for batch in batches]
        began = time.perf_counter()
        vacuum_secs = 0.0
        with RollupWriter(collector, pool_size=1) as writer, \
                psycopg.connect(url, autocommit=True) as maintenance:
            for i, batch in enumerate(rows, 1):
                writer.write(batch)
                if args.vacuum_every and i % args.vacuum_every == 0:
                    # What autovacuum does every few minutes to the tables whose rows the sink
                    # rewrites: each new minute of rollups rewrites the current hour's cells and
                    # moves every active pattern's last_seen (dead versions to reclaim).
                    started = time.perf_counter()
                    maintenance.execute("VACUUM fraiseql_metrics.rollups_hourly,"
                                        " fraiseql_metrics.patterns")
                    vacuum_secs += time.perf_counter() - started
        write_secs = time.perf_counter() - began - vacuum_secs
        sizes = relation_sizes(url)

        # Percentiles back from the database vs the exact weighted percentiles of the events.
        start, end = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
                      for us in (start_us, end_us))
        timings = {}
        reports = {}
        for level in ("minute", "hourly"):
            began = time.perf_counter()
            reports[level] = (pattern_stats(url, start, end) if level == "minute"
                              else pattern_stats_at_level(url, start, end, "hourly"))
            timings[level] = time.perf_counter() - began
        worst = {"minute": 0.0, "hourly": 0.0}
        checked = 0
        for level, report in reports.items():
            for stats in report.patterns:
                pairs = truth[(stats.fingerprint, stats.region)]
                if len(pairs) < 50:
                    continue  # the tail: checked through the busier ones' identical arithmetic
                checked += level == "minute"
                for q, got in ((0.5, stats.p50_ms), (0.95, stats.p95_ms), (0.99, stats.p99_ms)):
                    exact = exact_quantile(pairs, q)
                    assert got is not None
                    worst[level] = max(worst[level], abs(got - exact) / exact)
        same = [(m.count, m.p50_ms, m.p95_ms, m.p99_ms) for m in reports["minute"].patterns] == [
            (h.count, h.p50_ms, h.p95_ms, h.p99_ms) for h in reports["hourly"].patterns]
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            if not args.keep:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))

    minute_rows, minute_bytes = sizes.get("rollups", (0, 0))
    hourly_rows, hourly_bytes = sizes.get("rollups_hourly", (0, 0))
    catalogue_bytes = sizes.get("patterns", (0, 0))[1]
    minute_per_day = minute_bytes * 1440 / args.minutes
    hours = len({r["window_start"] // (60 * MINUTE_US) for r in rollups})
    hourly_per_day = hourly_bytes * 24 / hours
    active = len({r["fingerprint"] for r in rollups})
    retention = args.retention_days
    policies = []
    for minute_days in sorted({1, 2, 3, 7, retention}):
        if minute_days > retention:
            continue
        total = minute_days * minute_per_day + retention * hourly_per_day + catalogue_bytes
        policies.append({"minute_days": minute_days, "hourly_days": retention, "bytes": total})
    events = sum(len(v) for v in truth.values())
    return {
        "load": {"minutes": args.minutes, "patterns": args.patterns, "active_patterns": active,
                 "kept_events": events, "events_per_sec": events / (args.minutes * 60),
                 "queries_per_sec": sum(w for v in truth.values() for _, w in v) / (args.minutes * 60),
                 "regions": len(REGIONS), "source_partitions": PARTITIONS},
        "rollups": {"minute_rows": len(rollups), "minute_rows_per_min": len(rollups) / args.minutes,
                    "mean_buckets": math.fsum(len(r["sketch_keys"]) for r in rollups) / len(rollups),
                    "hourly_rows": hourly_rows, "generate_secs": generated_secs,
                    "write_secs": write_secs, "rows_per_sec": len(rollups) / write_secs},
        "bytes": {"minute": minute_bytes, "hourly": hourly_bytes, "patterns": catalogue_bytes,
                  "minute_per_row": minute_bytes / max(1, minute_rows),
                  "hourly_per_row": hourly_bytes / max(1, hourly_rows),
                  "minute_per_day": minute_per_day, "hourly_per_day": hourly_per_day,
                  "minute_per_pattern_day": minute_per_day / active,
                  "hourly_per_pattern_day": hourly_per_day / active},
        "steady_state": policies,
        "raw_events_seed_bytes": RAW_EVENT_BYTES_SEED * 50e6 * retention,
        "percentiles": {"alpha": DEFAULT_ALPHA, "patterns_checked": checked,
                        "max_rel_error_minute": worst["minute"],
                        "max_rel_error_hourly": worst["hourly"],
                        "levels_identical": same,
                        "stats_secs_minute": timings["minute"],
                        "stats_secs_hourly": timings["hourly"]},
    }


def _mb(value: float) -> str:
    return f"{value / 1e6:,.1f} MB"


def print_table(result: dict[str, Any]) -> None:
    load, rollups, size = result["load"], result["rollups"], result["bytes"]
    pct = result["percentiles"]
    print(f"Reference load, {load['minutes']} min of event time: {load['queries_per_sec']:,.0f} "
          f"queries/s represented by {load['events_per_sec']:,.1f} kept events/s, "
          f"{load['active_patterns']} active patterns (of {load['patterns']}), "
          f"{load['regions']} regions, {load['source_partitions']} source partitions")
    print(f"minute rollups: {rollups['minute_rows']:,} ({rollups['minute_rows_per_min']:,.0f}/min, "
          f"{rollups['mean_buckets']:.1f} sketch buckets each); hourly cells: "
          f"{rollups['hourly_rows']:,}; written in {rollups['write_secs']:.1f}s "
          f"({rollups['rows_per_sec']:,.0f} rollups/s incl. hourly refresh)")
    print()
    print(f"{'level':<16}{'bytes/row':>12}{'per day':>14}{'per pattern/day':>18}")
    for level in ("minute", "hourly"):
        print(f"{level:<16}{size[level + '_per_row']:>12,.0f}{_mb(size[level + '_per_day']):>14}"
              f"{size[level + '_per_pattern_day'] / 1e3:>15,.1f} kB")
    print()
    print(f"{'steady state: minute rows kept':<34}{'hourly kept':>12}{'total':>12}")
    for policy in result["steady_state"]:
        print(f"{policy['minute_days']:>8} days{'':<21}{policy['hourly_days']:>7} days"
              f"{policy['bytes'] / 1e9:>10.2f} GB")
    print(f"(the seed design's raw events: {result['raw_events_seed_bytes'] / 1e9:,.0f} GB; "
          f"goal < 5 GB)")
    print()
    print(f"percentiles vs exact weighted percentiles of the events ({pct['patterns_checked']} "
          f"pattern×region series with >= 50 events): max relative error "
          f"minute level {pct['max_rel_error_minute']:.4%}, hourly level "
          f"{pct['max_rel_error_hourly']:.4%} (sketch bound {pct['alpha']:.0%}); levels identical: "
          f"{pct['levels_identical']}; stats query {pct['stats_secs_minute']:.2f}s (minute) vs "
          f"{pct['stats_secs_hourly']:.2f}s (hourly)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--database", default=DEFAULT_URL, help="superuser URL (a scratch database "
                        "is created and dropped)")
    parser.add_argument("--minutes", type=int, default=120)
    parser.add_argument("--patterns", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="kept events per second")
    parser.add_argument("--retention-days", type=int, default=14)
    parser.add_argument("--vacuum-every", type=int, default=5,
                        help="VACUUM the hourly cells every N minutes of rollups (as autovacuum "
                             "would); 0: only at the end")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
