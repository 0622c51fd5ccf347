"""``fraiseql_obs_analyzer.stats``: weighted counts and sketch-merged percentiles from the metrics
database."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from fraiseql_obs_analyzer.stats import (
    PatternStats,
    StatsReport,
    merge_sketches,
    pattern_stats,
    render_stats_json,
    render_stats_text,
)
from fraiseql_obs_sinks.writer import RollupWriter
from fraiseql_observability.sketch import DEFAULT_ALPHA, QuantileSketch
from fraiseql_observability.timeutil import from_micros
from tests.oracles import exact_lower_quantile
from tests.test_sink import MICROS, MINUTE, make_rollup, minute_us, role_url

ALPHA = DEFAULT_ALPHA


@pytest.mark.postgres
def test_pattern_stats_are_exact_and_percentiles_within_alpha(
    metrics_db: str, pg_admin_url: str
) -> None:
    rng = random.Random(20240611)
    start_us = minute_us(90)
    end_us = start_us + 60 * MINUTE
    truth: dict[tuple[str, str], list[tuple[float, float, bool]]] = defaultdict(list)
    records = []
    patterns = {"fp-orders": "orders", "fp-users": "users", "fp-rare": "rare"}
    for minute in range(60):
        window = start_us + minute * MINUTE
        for fingerprint, query_name in patterns.items():
            for region in ("us-east-1", "eu-west-1"):
                if fingerprint == "fp-rare" and minute % 7:
                    continue
                # Two source partitions carry the same (pattern, region, window): both count.
                for partition in (0, 1):
                    n = rng.randint(1, 12)
                    values = [rng.lognormvariate(2.0 if fingerprint == "fp-orders" else 0.5, 1.1)
                              for _ in range(n)]
                    weights = [rng.choice([1.0, 10.0, 100.0]) for _ in range(n)]
                    errors = rng.randint(0, min(2, n))
                    records.append(make_rollup(
                        window, values, weights, fingerprint=fingerprint, region=region,
                        query_name=query_name, source_partition=partition,
                        errors=errors))
                    truth[(fingerprint, region)] += [
                        (v, w, i < errors) for i, (v, w) in enumerate(zip(values, weights, strict=True))
                    ]
    # Windows that are not entirely inside the period must not count.
    outside = [
        make_rollup(start, [1e6], fingerprint="fp-users", region="us-east-1", source_partition=9,
                    window_us=length)
        for start, length in (
            (start_us - MINUTE, MINUTE),  # before the period
            (end_us, MINUTE),  # after it
            (end_us - MINUTE, 2 * MINUTE),  # straddles the end: not closed within the period
            (start_us - MINUTE // 2, MINUTE),  # straddles the start
        )
    ]
    with RollupWriter(metrics_db, pool_size=1) as writer:
        writer.write(records + outside)

    with role_url(pg_admin_url, metrics_db, "fraiseql_analyst") as analyst:
        report = pattern_stats(analyst, from_micros(start_us), from_micros(end_us))

    assert report.window_start == from_micros(start_us) and report.window_end == from_micros(end_us)
    assert len(report.patterns) == len(truth) == 6
    assert [p.count for p in report.patterns] == sorted((p.count for p in report.patterns),
                                                        reverse=True)
    for stats in report.patterns:
        events = truth[(stats.fingerprint, stats.region)]
        # Weights are integers, so float sums are exact.
        assert stats.count == sum(w for _, w, _ in events)
        assert stats.errors == sum(w for _, w, e in events if e)
        assert stats.query_name == patterns[stats.fingerprint]
        mean = math.fsum(v * w for v, w, _ in events) / math.fsum(w for _, w, _ in events)
        assert stats.mean_ms == pytest.approx(mean, rel=1e-9)
        pairs = [(v, w) for v, w, _ in events]
        for q, got in ((0.50, stats.p50_ms), (0.95, stats.p95_ms), (0.99, stats.p99_ms)):
            exact = exact_lower_quantile(pairs, q)
            assert got is not None
            assert abs(got - exact) <= ALPHA * exact * (1 + 1e-9), (stats.fingerprint, q, got, exact)

    document = json.loads(render_stats_json(report))
    assert list(document) == ["window", "patterns"]
    assert document["window"] == {"start": from_micros(start_us).isoformat().replace("+00:00", "Z"),
                                  "end": from_micros(end_us).isoformat().replace("+00:00", "Z")}
    assert list(document["patterns"][0]) == ["fingerprint", "query_name", "region", "count",
                                             "errors", "mean_ms", "p50_ms", "p95_ms", "p99_ms"]
    assert document["patterns"][0]["count"] == report.patterns[0].count


@pytest.mark.postgres
def test_empty_period(metrics_db: str) -> None:
    now = datetime.now(UTC)
    report = pattern_stats(metrics_db, now - timedelta(hours=1), now)
    assert report.patterns == []
    assert json.loads(render_stats_json(report))["patterns"] == []
    assert "no closed windows" in render_stats_text(report)


def test_merge_sketches_across_alphas() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(1.0, 1.0) for _ in range(5000)]
    fine, coarse = QuantileSketch(0.01), QuantileSketch(0.02)
    for i, value in enumerate(values):
        (fine if i % 2 else coarse).add(value)
    alpha, keys, weights = merge_sketches([(0.01, *fine.to_arrays()), (0.02, *coarse.to_arrays())])
    assert alpha == 0.02 and math.fsum(weights) == 5000
    merged = QuantileSketch.from_arrays(keys, weights, alpha)
    for q in (0.5, 0.95, 0.99):
        exact = exact_lower_quantile([(v, 1.0) for v in values], q)
        got = merged.quantile(q)
        assert got is not None and abs(got - exact) <= 0.031 * exact
    one = (0.01, [1, 2], [3.0, 4.0])
    assert merge_sketches([one]) == (0.01, [1, 2], [3.0, 4.0])


def _report(*patterns: PatternStats) -> StatsReport:
    return StatsReport(datetime(2025, 1, 6, 0, 0, tzinfo=UTC), datetime(2025, 1, 6, 1, 0, tzinfo=UTC),
                       list(patterns))


def test_text_table_is_aligned_and_escapes_hostile_names() -> None:
    report = _report(
        PatternStats("a1b2c3", "users", "us-east-1", 1_234_567.0, 12.5, 3.25, 2.0, 9.5, 20.0),
        PatternStats("ffff", "evil\x1b[2J\nname", "eu", 3.0, 0.0, None, None, None, None),
    )
    text = render_stats_text(report)
    lines = text.splitlines()
    assert lines[0].startswith("Query statistics 2025-01-06T00:00:00Z .. 2025-01-06T01:00:00Z")
    assert len(lines) == 4  # title, header, two rows: the newline in a name did not split a row
    assert "\x1b" not in text and "\\x1b[2J\\nname" in text
    header, first, second = lines[1:]
    # Right-aligned numeric columns end at the same position in every row.
    assert first.endswith("20.00") and header.endswith("P99_MS") and second.endswith("-")
    assert len(header) == len(first) == len(second)
    assert "1,234,567" in first and "12.50" in first


def test_json_rounds_noise_and_keeps_nulls() -> None:
    report = _report(PatternStats("f", "q", "r", 0.1 + 0.2, 0.0, 1 / 3, None, None, None))
    document = json.loads(render_stats_json(report))
    assert document["patterns"] == [{
        "fingerprint": "f", "query_name": "q", "region": "r", "count": 0.3, "errors": 0.0,
        "mean_ms": 0.333, "p50_ms": None, "p95_ms": None, "p99_ms": None}]
    assert document["window"] == {"start": "2025-01-06T00:00:00Z", "end": "2025-01-06T01:00:00Z"}


def test_naive_times_mean_utc_and_empty_periods_are_refused() -> None:
    with pytest.raises(ValueError, match="after start"):
        pattern_stats("postgresql://unused@127.0.0.1:1/x", datetime(2025, 1, 2), datetime(2025, 1, 1))


def test_micros_helper() -> None:
    assert from_micros(MICROS) == datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
