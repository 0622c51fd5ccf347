"""Builders of realistic metrics-database content for the analyzer tests (and their own tests).

Rollups are built like the stream stage builds them (a weighted sketch of sampled latencies per
pattern, region and minute) and written through the real sink writer, so the hourly level and the
pattern catalogue are maintained exactly as in production. Table statistics mirror
``schemas/table_stats.avsc`` and what ``pg_stats``/``pg_indexes`` report.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fraiseql_obs_producers.fingerprint import fingerprint_sql
from fraiseql_obs_sinks.writer import RollupWriter
from fraiseql_obs_streams.windowing import rollup_id
from fraiseql_observability.sketch import DEFAULT_ALPHA, QuantileSketch
from fraiseql_observability.timeutil import MICROS

MINUTE = 60 * MICROS  # a minute in microseconds (the rollups' unit)


@dataclass(frozen=True)
class PatternLoad:
    """One SQL shape's traffic: weighted queries per minute and region, lognormal latency."""

    query_name: str
    sql: str
    per_minute: float  # weighted (real) queries per minute and region
    median_ms: float
    sigma: float = 0.3
    rows: float = 10.0
    overhead_ms: float = 0.3  # per query outside the database (SQL generation, projection)
    regions: tuple[str, ...] = ("us-east-1", "eu-west-1")
    samples: int = 8  # sampled events per window (their weights add up to per_minute)

    @property
    def fingerprint(self) -> str:
        return fingerprint_sql(self.sql)


def rollup_records(patterns: Sequence[PatternLoad], start_us: int, minutes: int, *,
                   seed: int = 1, every: int = 1) -> list[dict[str, Any]]:
    """QueryRollup records (decoded form) for ``minutes`` windows from ``start_us``."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    for minute in range(0, minutes, every):
        window = start_us + minute * MINUTE
        for pattern in patterns:
            for partition, region in enumerate(pattern.regions):
                n = pattern.samples
                weight = pattern.per_minute * every / n
                values = [rng.lognormvariate(math.log(pattern.median_ms), pattern.sigma)
                          for _ in range(n)]
                sketch = QuantileSketch(DEFAULT_ALPHA)
                for value in values:
                    sketch.add(value, weight)
                keys, weights = sketch.to_arrays()
                total = weight * n
                exec_sum = math.fsum(values) * weight
                outside = min(pattern.overhead_ms, 0.2 * pattern.median_ms) * total
                records.append({
                    "rollup_id": rollup_id("fraiseql.query-events", partition,
                                           pattern.fingerprint, region, window),
                    "fingerprint": pattern.fingerprint,
                    "query_name": pattern.query_name,
                    "sql": pattern.sql,
                    "region": region,
                    "window_start": window,
                    "window_end": window + MINUTE,
                    "source_topic": "fraiseql.query-events",
                    "source_partition": partition,
                    "first_offset": minute * 100,
                    "last_offset": minute * 100 + n - 1,
                    "event_count": n,
                    "count": total,
                    "error_count": 0.0,
                    "cache_hits": 0.0,
                    "rows_sum": pattern.rows * total,
                    "exec_sum_ms": exec_sum,
                    "exec_min_ms": min(values),
                    "exec_max_ms": max(values),
                    "sql_generation_sum_ms": outside / 2,
                    "db_round_trip_sum_ms": exec_sum - outside,
                    "projection_sum_ms": outside / 2,
                    "sketch_alpha": DEFAULT_ALPHA,
                    "sketch_keys": keys,
                    "sketch_weights": weights,
                })
    return records


def column(expression: str, *, n_distinct: float, null_frac: float = 0.0, width: int = 10,
           data_type: str = "text") -> dict[str, Any]:
    return {"expression": expression, "data_type": data_type, "null_frac": null_frac,
            "n_distinct": n_distinct, "avg_width": width}


def index(name: str, definition: str, *, scans: int = 1000, size_bytes: int = 9_000_000,
          primary: bool = False, unique: bool = False) -> dict[str, Any]:
    return {"name": name, "definition": definition, "scans": scans, "size_bytes": size_bytes,
            "is_unique": unique or primary, "is_primary": primary}


def table_stats_record(table: str, rows: float, taken_at_us: int, *,
                       columns: Sequence[dict[str, Any]] = (),
                       indexes: Sequence[dict[str, Any]] | None = None, schema: str = "public",
                       snapshot_id: str | None = None, region: str = "us-east-1"
                       ) -> dict[str, Any]:
    if indexes is None:
        indexes = [index(f"{table}_pkey",
                         f"CREATE UNIQUE INDEX {table}_pkey ON {schema}.{table} USING btree (id)",
                         primary=True)]
    return {
        "snapshot_id": snapshot_id or str(uuid.uuid4()),
        "taken_at": taken_at_us,
        "source": "app",
        "region": region,
        "schema_name": schema,
        "table_name": table,
        "relkind": "r",
        "row_estimate": float(rows),
        "total_bytes": int(rows * 250),
        "seq_scans": 100,
        "columns": list(columns),
        "indexes": list(indexes),
    }


def seed_metrics(url: str, patterns: Sequence[PatternLoad], *, start_us: int, minutes: int,
                 table_stats: Sequence[dict[str, Any]] = (), seed: int = 1, every: int = 1
                 ) -> int:
    """Write the patterns' rollups and the table statistics through the real writer."""
    records = rollup_records(patterns, start_us, minutes, seed=seed, every=every)
    with RollupWriter(url, pool_size=1) as writer:
        for i in range(0, len(records), 5000):
            writer.write(records[i:i + 5000])
        if table_stats:
            writer.write(table_stats=table_stats)
    return len(records)


def test_rollup_records_carry_the_traffic() -> None:
    load = PatternLoad("q", "SELECT data FROM tv_order WHERE id = $1", per_minute=600,
                       median_ms=2.0, samples=5)
    records = rollup_records([load], 0, 3)
    assert len(records) == 3 * 2
    assert math.isclose(sum(r["count"] for r in records), 600 * 3 * 2)
    assert all(math.isclose(sum(r["sketch_weights"]), r["count"]) for r in records)
    assert {r["fingerprint"] for r in records} == {load.fingerprint}
    assert len({r["rollup_id"] for r in records}) == len(records)
