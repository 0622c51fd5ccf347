"""fraiseql_obs_producers.sampling: keep/drop rule, weights, and unbiased estimates from 1 % samples."""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict

import pytest

from fraiseql_obs_producers.errors import ProducerError
from fraiseql_obs_producers.loadgen import weighted_quantile
from fraiseql_obs_producers.recorder import Recorder
from fraiseql_obs_producers.sampling import Sampler
from fraiseql_observability.config import MetricsSettings, Settings


def test_rule_and_weights() -> None:
    sampler = Sampler(0.25, slow_query_ms=100.0, always_keep_errors=True,
                      random=random.Random(1).random)
    assert sampler.weight(100.0) == 1.0  # slow: always, weight 1
    assert sampler.weight(150.0, None) == 1.0
    assert sampler.weight(1.0, "QueryCanceled") == 1.0  # error: always, weight 1
    fast = [sampler.weight(1.0) for _ in range(20000)]
    assert set(fast) == {0.0, 4.0}
    assert fast.count(4.0) / len(fast) == pytest.approx(0.25, abs=0.015)


def test_errors_sampled_uniformly_when_not_always_kept() -> None:
    sampler = Sampler(0.5, slow_query_ms=100.0, always_keep_errors=False,
                      random=random.Random(2).random)
    kept = [sampler.weight(1.0, "QueryCanceled") for _ in range(4000)]
    assert set(kept) == {0.0, 2.0}


def test_edge_rates() -> None:
    assert Sampler(1.0).weight(0.1) == 1.0
    assert Sampler(0.0).weight(0.1) == 0.0
    assert Sampler(0.0, slow_query_ms=1.0).weight(5.0) == 1.0
    tiny = Sampler(1e-12)  # weight would exceed the stream's 1e9 limit: treated as 0
    assert tiny.rate == 0.0 and tiny.weight(0.1) == 0.0
    assert Sampler(1e-9).uniform_weight == pytest.approx(1e9)
    with pytest.raises(ProducerError):
        Sampler(1.5)
    with pytest.raises(ProducerError):
        Sampler(0.1, slow_query_ms=math.nan)


def test_from_settings() -> None:
    settings = Settings(sample_rate=0.05,
                        metrics=MetricsSettings(slow_query_ms=250.0, always_keep_errors=False))
    sampler = Sampler.from_settings(settings)
    assert (sampler.rate, sampler.slow_query_ms, sampler.always_keep_errors) == (0.05, 250.0, False)


def test_recorder_decides_exactly_like_the_sampler() -> None:
    """The recorder inlines the rule for speed; the same random stream gives the same decisions."""
    settings = Settings(enabled=True, sample_rate=0.1,
                        metrics=MetricsSettings(slow_query_ms=50.0, buffer_size=1_000_000))
    recorder = Recorder(settings, random_source=random.Random(9).random)  # never started
    sampler = Sampler.from_settings(settings, random.Random(9).random)
    workload = random.Random(3)
    for _ in range(5000):
        latency = workload.lognormvariate(math.log(5), 1.5)
        error = "QueryCanceled" if workload.random() < 0.01 else None
        kept = recorder.record(query_name="q", sql="SELECT 1", execution_time_ms=latency,
                               sql_generation_time_ms=0.0, db_round_trip_time_ms=latency,
                               projection_time_ms=0.0, rows_returned=1, cache_hit=False,
                               error=error)
        assert kept == (sampler.weight(latency, error) > 0)
    stats = recorder.stats()
    assert stats.sampled + stats.not_sampled == 5000
    assert recorder.close() == stats.sampled  # never started: everything held is "shutdown"


def _population(n: int, seed: int) -> list[tuple[str, float, str | None]]:
    """A seeded query population: (pattern, latency ms, error) with a FraiseQL-like mix."""
    rng = random.Random(seed)
    patterns = [  # name, share, median ms, sigma, error rate
        ("by_id", 0.55, 1.0, 0.4, 0.001),
        ("list", 0.25, 4.0, 0.6, 0.002),
        ("jsonb_filter", 0.15, 180.0, 0.6, 0.005),
        ("aggregate", 0.05, 420.0, 0.5, 0.01),
    ]
    cumulative, running = [], 0.0
    for _, share, _, _, _ in patterns:
        running += share
        cumulative.append(running)
    out = []
    for _ in range(n):
        u = rng.random()
        name, _, median, sigma, error_rate = next(
            p for p, c in zip(patterns, cumulative, strict=True) if u <= c)
        latency = rng.lognormvariate(math.log(median), sigma)
        error = "QueryCanceled" if rng.random() < error_rate else None
        out.append((name, latency, error))
    return out


def test_weighted_estimates_match_the_population() -> None:
    """200k queries, 1 % sampling + always-keep slow (>= 400 ms) and errors.

    Tolerances (the run is seeded, so deterministic): counts within 3.5 standard errors of the
    Horvitz-Thompson estimator, sd = sqrt(N_fast (1 - r) / r) where N_fast counts the queries that
    only the uniform rule can keep (the always-kept ones are counted exactly) -- for the total that
    is ±7.6 %; weighted errors exact; p95 and p99 ±5 %, p50 ±10 %.
    """
    started = time.perf_counter()
    population = _population(200_000, seed=20240601)
    sampler = Sampler(0.01, slow_query_ms=400.0, always_keep_errors=True,
                      random=random.Random(77).random)
    kept: list[tuple[str, float, str | None, float]] = []
    for name, latency, error in population:
        weight = sampler.weight(latency, error)
        if weight:
            kept.append((name, latency, error, weight))
    assert 2_000 < len(kept) < 20_000  # ~1 % plus the slow tail

    true_counts: dict[str, int] = defaultdict(int)
    for name, _, _ in population:
        true_counts[name] += 1
    estimated: dict[str, float] = defaultdict(float)
    for name, _, _, weight in kept:
        estimated[name] += weight
    def standard_error(name: str | None) -> float:
        fast = sum(1 for n, latency, error in population
                   if (name is None or n == name) and latency < 400.0 and error is None)
        return math.sqrt(fast * (1 - 0.01) / 0.01)

    total_se = standard_error(None)
    assert total_se / len(population) < 0.025
    assert abs(sum(estimated.values()) - len(population)) < 3.5 * total_se
    for name, count in true_counts.items():
        assert abs(estimated[name] - count) < 3.5 * standard_error(name), (name, count)

    true_errors = sum(1 for _, _, e in population if e)
    assert sum(w for _, _, e, w in kept if e) == true_errors  # always kept, weight 1: exact

    latencies = [latency for _, latency, _ in population]
    ones = [1.0] * len(latencies)
    sample_latencies = [latency for _, latency, _, _ in kept]
    sample_weights = [weight for _, _, _, weight in kept]
    for q, tolerance in ((0.5, 0.10), (0.95, 0.05), (0.99, 0.05)):
        truth = weighted_quantile(latencies, ones, q)
        estimate = weighted_quantile(sample_latencies, sample_weights, q)
        assert estimate == pytest.approx(truth, rel=tolerance), (q, truth, estimate)

    # Per pattern p95 of the slow JSONB pattern, the one the analyzer cares about.
    slow = [(lat, w) for name, lat, _, w in kept if name == "jsonb_filter"]
    slow_truth = weighted_quantile([lat for n, lat, _ in population if n == "jsonb_filter"],
                                   [1.0] * true_counts["jsonb_filter"], 0.95)
    slow_estimate = weighted_quantile([s[0] for s in slow], [s[1] for s in slow], 0.95)
    assert slow_estimate == pytest.approx(slow_truth, rel=0.05)
    assert time.perf_counter() - started < 30


def test_not_sampled_decision_is_cheap() -> None:
    """A generous bound (bench/bench_recorder.py measures the real figure, ~0.1 µs)."""
    sampler = Sampler(0.01)
    weight = sampler.weight
    start = time.perf_counter_ns()
    for _ in range(100_000):
        weight(1.0)
    assert (time.perf_counter_ns() - start) / 100_000 < 5_000  # ns
