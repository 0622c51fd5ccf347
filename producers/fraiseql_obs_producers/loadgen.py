"""Synthetic load: already-sampled ``QueryEvent`` records of the :mod:`~fraiseql_obs_producers.workload`
model.

The generator draws *kept* events directly, each with the weight the sampler would have given it,
instead of simulating 100 queries to keep one at a 1 % rate:

For a pattern with lognormal latency and error rate ``e`` in a region, let ``q`` be the probability
that a query is always kept (slow: ``latency >= slow_query_ms``, or failed when
``always_keep_errors``), and ``r`` the uniform sample rate. A kept event then comes from that
(pattern, region) with probability ∝ ``share × (q + (1 - q) r)``; it is an always-kept one
(weight 1, latency drawn from the lognormal conditioned on the slow side, or an error) with
probability ``q / (q + (1 - q) r)``, else a uniformly kept fast one (weight ``1/r``, latency
conditioned below the threshold). That is exactly the distribution of what the
:class:`~fraiseql_obs_producers.sampling.Sampler` keeps from the modelled population, at ``1/r`` times less
work.

:func:`run_loadgen` writes the events to the events topic through a plain idempotent producer --
not through the :class:`~fraiseql_obs_producers.recorder.Recorder`, whose sampling would re-sample them --
with
the recorder's encoder and fingerprints. Its :class:`LoadgenReport` keeps, per (fingerprint,
region), the exact weighted count and every (duration, weight) delivered: the ground truth the
stream/sink/stats results are checked against.

Backfill mode (``backfill=timedelta``): event times spread evenly over ``[now - backfill, now)`` and
produced as fast as possible. The stream worker closes a window once its watermark (max event time
minus grace) passes the window's end, so the windows of the last ``grace`` seconds close only when
later events arrive (live traffic, or the next loadgen run).
"""

from __future__ import annotations

import bisect
import contextlib
import math
import random
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from statistics import NormalDist
from typing import Any, Final

from confluent_kafka import Producer

from fraiseql_observability.codec import QUERY_EVENT, default_codec
from fraiseql_observability.config import Settings
from fraiseql_observability.kafka import ensure_topics, producer_config
from fraiseql_observability.timeutil import MICROS, from_micros, now_micros

from .encoding import EventIdFactory, QueryEventEncoder
from .errors import LoadgenError
from .sampling import effective_rate
from .workload import DEFAULT_REGIONS, ERROR_CLASSES, QueryPattern, Workload, default_workload

__all__ = [
    "EventModel",
    "LoadgenReport",
    "PatternTotals",
    "generate_events",
    "run_loadgen",
    "weighted_quantile",
]

_NORMAL: Final = NormalDist()
_EPS: Final = 1e-12
# Region i runs 15 % slower than region i-1 (cross-region replicas, smaller instances) and gets
# traffic ∝ 1/(i + 1.5): the first region is the busiest.
_REGION_SLOWDOWN: Final = 0.15


def weighted_quantile(values: Sequence[float], weights: Sequence[float], q: float) -> float:
    """The smallest value whose cumulative weight reaches ``q`` of the total (lower quantile).

    The weighted analogue of the nearest-rank percentile: what a weighted sketch estimates.
    """
    if not values:
        return math.nan
    order = sorted(range(len(values)), key=values.__getitem__)
    target = q * math.fsum(weights)
    running = 0.0
    for index in order:
        running += weights[index]
        if running >= target:
            return float(values[index])
    return float(values[order[-1]])


@dataclass(slots=True)
class PatternTotals:
    """Ground truth of one (fingerprint, region): what the pipeline must report for it."""

    fingerprint: str
    region: str
    query_name: str
    sql: str
    events: int = 0
    weighted_count: float = 0.0
    weighted_errors: float = 0.0
    durations: array[float] = field(default_factory=lambda: array("d"))
    weights: array[float] = field(default_factory=lambda: array("d"))

    def quantile(self, q: float) -> float:
        return weighted_quantile(self.durations, self.weights, q)


@dataclass(slots=True)
class LoadgenReport:
    """What one :func:`run_loadgen` call delivered (failed deliveries are subtracted)."""

    topic: str
    produced: int = 0
    failed: int = 0
    first_us: int | None = None
    last_us: int | None = None
    elapsed_secs: float = 0.0
    patterns: dict[tuple[str, str], PatternTotals] = field(default_factory=dict)

    @property
    def delivered(self) -> int:
        return self.produced - self.failed

    @property
    def events_per_sec(self) -> float:
        return self.produced / self.elapsed_secs if self.elapsed_secs > 0 else 0.0

    @property
    def weighted_total(self) -> float:
        return math.fsum(t.weighted_count for t in self.patterns.values())

    def add(self, event: dict[str, Any], keep_samples: bool = True) -> None:
        key = (event["fingerprint"], event["region"])
        totals = self.patterns.get(key)
        if totals is None:
            totals = self.patterns[key] = PatternTotals(key[0], key[1], event["query_name"],
                                                        event["sql"])
        weight = event["sample_weight"]
        totals.events += 1
        totals.weighted_count += weight
        if event["error"] is not None:
            totals.weighted_errors += weight
        if keep_samples:
            totals.durations.append(event["execution_time_ms"])
            totals.weights.append(weight)
        occurred = event["occurred_at"]
        self.first_us = occurred if self.first_us is None else min(self.first_us, occurred)
        self.last_us = occurred if self.last_us is None else max(self.last_us, occurred)

    def remove(self, event: dict[str, Any]) -> None:
        """Take back an event whose delivery failed (rare: a linear search is fine)."""
        totals = self.patterns.get((event["fingerprint"], event["region"]))
        if totals is None:
            return
        weight = event["sample_weight"]
        totals.events -= 1
        totals.weighted_count -= weight
        if event["error"] is not None:
            totals.weighted_errors -= weight
        for index, (duration, w) in enumerate(zip(totals.durations, totals.weights, strict=True)):
            if duration == event["execution_time_ms"] and w == weight:
                del totals.durations[index]
                del totals.weights[index]
                break

    def summary_text(self, top: int = 5) -> str:
        """A few lines for a terminal (``loadgen``'s default output; ``--format json``: summary())."""
        span = ""
        if self.first_us is not None and self.last_us is not None:
            span = (f"; event times {from_micros(self.first_us):%Y-%m-%d %H:%M:%S} to "
                    f"{from_micros(self.last_us):%H:%M:%S} UTC")
        lines = [
            f"loadgen: {self.delivered:,} events delivered to {self.topic} ({self.failed:,} failed) "
            f"in {self.elapsed_secs:.1f}s, {self.events_per_sec:,.0f} events/s{span}",
            f"  {len(self.patterns)} pattern/region pairs standing for {self.weighted_total:,.0f} "
            "queries (sample weights)",
        ]
        ranked = sorted(self.patterns.values(), key=lambda t: -t.weighted_count)
        for totals in ranked[:top]:
            lines.append(f"  {totals.weighted_count:>14,.0f}  {totals.region:<12} "
                         f"{totals.query_name} ({totals.fingerprint[:12]})")
        if len(ranked) > top:
            lines.append(f"  ... {len(ranked) - top} more (--format json lists them all)")
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (no per-event samples), for the CLI."""
        return {
            "topic": self.topic,
            "produced": self.produced,
            "failed": self.failed,
            "delivered": self.delivered,
            "elapsed_secs": round(self.elapsed_secs, 3),
            "events_per_sec": round(self.events_per_sec, 1),
            "first_us": self.first_us,
            "last_us": self.last_us,
            "weighted_total": self.weighted_total,
            "patterns": [
                {"fingerprint": t.fingerprint, "region": t.region, "query_name": t.query_name,
                 "events": t.events, "weighted_count": t.weighted_count,
                 "weighted_errors": t.weighted_errors}
                for t in sorted(self.patterns.values(), key=lambda t: -t.weighted_count)
            ],
        }


@dataclass(frozen=True, slots=True)
class _Cell:
    """One (pattern, region) of the model with its precomputed sampling split."""

    pattern: QueryPattern
    region: str
    instances: tuple[str, ...]
    mu: float
    sigma: float
    error_keep: float  # error rate counted towards "always kept" (0 when errors are not kept)
    error_rate: float
    p_fast: float  # Φ(z) at the slow threshold: P(latency < slow_query_ms)
    p_always: float  # q / (q + (1 - q) r): P(an emitted event of this cell is always-kept)


class EventModel:
    """Draws kept ``QueryEvent`` dicts of a workload; see the module docstring for the math."""

    def __init__(
        self,
        workload: Workload,
        regions: Sequence[str],
        *,
        sample_rate: float = 1.0,
        slow_query_ms: float = 1000.0,
        always_keep_errors: bool = True,
        seed: int | None = None,
        instances_per_region: int = 3,
    ) -> None:
        if not regions:
            raise LoadgenError("at least one region is needed")
        if not 0.0 <= sample_rate <= 1.0:
            raise LoadgenError(f"sample_rate = {sample_rate!r}: allowed 0..1")
        self.rate, self.uniform_weight = effective_rate(sample_rate)
        self.slow_query_ms = slow_query_ms
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible model, not a secret
        self._new_id = EventIdFactory(self.rng.getrandbits(128).to_bytes(16, "big"))
        region_weights = [1.0 / (i + 1.5) for i in range(len(regions))]
        region_total = sum(region_weights)
        log_slow = math.log(slow_query_ms) if slow_query_ms > 0 else -math.inf
        cells: list[_Cell] = []
        masses: list[float] = []
        for pattern in workload.patterns:
            share = workload.share(pattern)
            for index, region in enumerate(regions):
                mu = pattern.mu + math.log(1.0 + _REGION_SLOWDOWN * index)
                p_fast = _NORMAL.cdf((log_slow - mu) / pattern.sigma) if log_slow > -math.inf \
                    else 0.0
                error_keep = pattern.error_rate if always_keep_errors else 0.0
                q = 1.0 - p_fast * (1.0 - error_keep)
                mass = share * region_weights[index] / region_total * (q + (1.0 - q) * self.rate)
                p_always = q / (q + (1.0 - q) * self.rate) if mass > 0 else 0.0
                instances = tuple(f"api-{region}-{i + 1}" for i in range(instances_per_region))
                cells.append(_Cell(pattern, region, instances, mu, pattern.sigma, error_keep,
                                   pattern.error_rate, p_fast, p_always))
                masses.append(mass)
        total = math.fsum(masses)
        if total <= 0:
            raise LoadgenError("sample_rate 0 and no query is ever slow or failed: nothing to emit")
        self._cells = cells
        self._cumulative: list[float] = []
        running = 0.0
        for mass in masses:
            running += mass / total
            self._cumulative.append(running)
        self._cumulative[-1] = 1.0

    def _latency(self, cell: _Cell, low: float, high: float) -> float:
        """Lognormal latency conditioned on its normal quantile lying in [low, high]."""
        u = low + (high - low) * self.rng.random()
        z = _NORMAL.inv_cdf(min(max(u, _EPS), 1.0 - _EPS))
        return math.exp(cell.mu + cell.sigma * z)

    def draw(self, occurred_at: int) -> dict[str, Any]:
        """One kept event that started at ``occurred_at`` (µs since the epoch)."""
        rng = self.rng
        cell = self._cells[bisect.bisect_left(self._cumulative, rng.random())]
        pattern = cell.pattern
        error: str | None = None
        if rng.random() < cell.p_always:
            weight = 1.0
            # Always kept: failed (P = e'/q) or, if not failed, slow.
            q = 1.0 - cell.p_fast * (1.0 - cell.error_keep)
            if rng.random() * q < cell.error_keep:
                error = self._error_class(pattern)
                latency = self._latency(cell, 0.0, 1.0)
            else:
                latency = self._latency(cell, cell.p_fast, 1.0)
        else:
            weight = self.uniform_weight
            latency = self._latency(cell, 0.0, cell.p_fast)
        if error is None and cell.error_keep == 0.0 and rng.random() < cell.error_rate:
            error = self._error_class(pattern)  # errors not always kept: sampled like the rest
        latency = max(latency, 0.05)
        cache_hit = rng.random() < 0.9
        generation = min(latency * 0.2, 0.02 if cache_hit else rng.uniform(0.3, 1.5))
        rows = 0 if error else self._rows(pattern)
        projection = min(latency * 0.1, 0.03 + rows * 0.004)
        round_trip = max(0.0, latency - generation - projection)
        return {
            "event_id": self._new_id(),
            "occurred_at": occurred_at,
            "region": cell.region,
            "instance": rng.choice(cell.instances),
            "query_name": pattern.query_name,
            "sql": pattern.sql,
            "fingerprint": pattern.fingerprint,
            "execution_time_ms": latency,
            "sql_generation_time_ms": generation,
            "db_round_trip_time_ms": round_trip,
            "projection_time_ms": projection,
            "rows_returned": rows,
            "cache_hit": cache_hit,
            "error": error,
            "sample_weight": weight,
        }

    def _rows(self, pattern: QueryPattern) -> int:
        if pattern.kind == "by_id" and pattern.rows_median <= 1:
            return 0 if self.rng.random() < 0.02 else 1
        return min(int(self.rng.expovariate(1.0 / pattern.rows_median)), 1000)

    def _error_class(self, pattern: QueryPattern) -> str:
        # Slow patterns fail mostly by statement timeout; fast ones by contention or network.
        if pattern.median_ms >= 50 and self.rng.random() < 0.7:
            return "QueryCanceled"
        return self.rng.choice(ERROR_CLASSES)


def generate_events(
    n: int,
    *,
    start_us: int,
    end_us: int,
    regions: Sequence[str] = DEFAULT_REGIONS,
    seed: int | None = 0,
    sample_rate: float = 1.0,
    slow_query_ms: float = 1000.0,
    always_keep_errors: bool = True,
    workload: Workload | None = None,
) -> Iterator[dict[str, Any]]:
    """``n`` kept events with ``occurred_at`` in ``[start_us, end_us)``, in non-decreasing order.

    Deterministic for a given ``seed`` (event ids included). Times are the order statistics of
    ``n`` uniform draws, generated in order in O(1) memory: each next one is
    ``1 - (1 - previous) · U^(1/remaining)``.
    """
    if n < 0:
        raise LoadgenError(f"n = {n}: must be >= 0")
    if end_us <= start_us:
        raise LoadgenError(f"empty time range [{start_us}, {end_us})")
    model = EventModel(workload or default_workload(), regions, sample_rate=sample_rate,
                       slow_query_ms=slow_query_ms, always_keep_errors=always_keep_errors,
                       seed=seed)
    return _timed_events(model, n, start_us, end_us)


def _timed_events(model: EventModel, n: int, start_us: int,
                  end_us: int) -> Iterator[dict[str, Any]]:
    rng = model.rng
    span = end_us - start_us
    position = 0.0
    previous = start_us
    for index in range(n):
        position = 1.0 - (1.0 - position) * (1.0 - rng.random()) ** (1.0 / (n - index))
        occurred = min(end_us - 1, max(previous, start_us + int(position * span)))
        previous = occurred
        yield model.draw(occurred)


def run_loadgen(
    settings: Settings,
    *,
    rate: float | None = None,
    duration: float | None = None,
    count: int | None = None,
    backfill: timedelta | None = None,
    regions: Sequence[str] | None = None,
    seed: int | None = None,
    workload: Workload | None = None,
    keep_samples: bool = True,
    stop: threading.Event | None = None,
    progress: Callable[[LoadgenReport], None] | None = None,
    producer_overrides: dict[str, Any] | None = None,
    flush_timeout: float = 60.0,
) -> LoadgenReport:
    """Produce synthetic kept events to ``settings.kafka.events_topic``; return the ground truth.

    Modes:

    * backfill (``backfill`` given): ``count`` events (or ``rate × backfill`` seconds' worth) with
      event times spread over the last ``backfill``, produced as fast as possible;
    * live: event time = now; paced at ``rate`` events/s when given, else as fast as possible;
      stops after ``count`` events or ``duration`` seconds, whichever comes first, or when
      ``stop`` is set (neither given: runs until ``stop``).

    Sampling follows ``settings.sample_rate`` and ``settings.metrics`` (slow threshold, errors).
    ``regions`` defaults to :data:`~fraiseql_obs_producers.workload.DEFAULT_REGIONS`. ``progress`` is called
    about once a second with the report so far. Raises ``KafkaUnavailable`` if the broker does not
    answer when the topic is created.
    """
    if rate is not None and not rate > 0:
        raise LoadgenError(f"--rate {rate}: must be > 0")
    if duration is not None and not duration > 0:
        raise LoadgenError(f"--duration {duration}: must be > 0")
    if count is not None and count < 0:
        raise LoadgenError(f"--count {count}: must be >= 0")
    model = EventModel(workload or default_workload(), tuple(regions or DEFAULT_REGIONS),
                       sample_rate=settings.sample_rate,
                       slow_query_ms=settings.metrics.slow_query_ms,
                       always_keep_errors=settings.metrics.always_keep_errors, seed=seed)
    if backfill is not None:
        if backfill.total_seconds() <= 0:
            raise LoadgenError(f"--backfill {backfill}: must be > 0")
        if count is None:
            if rate is None:
                raise LoadgenError("backfill needs --count or --rate (events/s of history)")
            count = int(rate * backfill.total_seconds())
        end_us = now_micros()
        start_us = end_us - int(backfill.total_seconds() * MICROS)
        events: Iterator[dict[str, Any]] = _timed_events(model, count, start_us, end_us)
    else:
        events = _live_events(model, count, duration, rate, stop)

    topic = settings.kafka.events_topic
    ensure_topics(settings.kafka, [topic])
    report = LoadgenReport(topic=topic)
    encoder = QueryEventEncoder()
    codec = default_codec()

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            report.failed += 1
            # The count above records the failure even if the bytes cannot be read back.
            with contextlib.suppress(Exception):
                report.remove(codec.decode(msg.value(), QUERY_EVENT))

    producer = Producer(producer_config(settings.kafka, **{
        "client.id": "fraiseql-loadgen",
        "message.timeout.ms": 60_000,
        "delivery.report.only.error": True,
        "on_delivery": on_delivery,
        **(producer_overrides or {}),
    }))
    started = time.monotonic()
    next_progress = started + 1.0
    # Look at the clock every 1024 events at full speed; every event when paced (a slow --rate
    # would otherwise report progress once every 1024 events).
    check_mask = 1023 if rate is None or backfill is not None else 0
    for index, event in enumerate(events):
        if stop is not None and stop.is_set():
            break
        value = encoder.encode_event(event)
        while True:
            try:
                producer.produce(topic, value, event["fingerprint"])
                break
            except BufferError:
                producer.poll(0.05)  # loadgen is not the API: back-pressure, never drop
        report.produced += 1
        report.add(event, keep_samples)
        if index & check_mask == 0:
            producer.poll(0)
            now = time.monotonic()
            if progress is not None and now >= next_progress:
                report.elapsed_secs = now - started
                progress(report)
                next_progress = now + 1.0
    remaining = producer.flush(flush_timeout)
    report.elapsed_secs = time.monotonic() - started
    if remaining:
        # Not acknowledged in time: count them failed; their totals cannot be attributed.
        report.failed += remaining
    return report


def _live_events(model: EventModel, count: int | None, duration: float | None,
                 rate: float | None, stop: threading.Event | None) -> Iterator[dict[str, Any]]:
    started = time.monotonic()
    deadline = None if duration is None else started + duration
    produced = 0
    while count is None or produced < count:
        if rate is not None:
            # Pace against the schedule, not per event, so sleeps never drift the average rate;
            # wait *before* drawing so the event time is the time it is produced.
            ahead = started + produced / rate - time.monotonic()
            if ahead > 0.001:
                if stop is None:
                    time.sleep(ahead)
                elif stop.wait(ahead):
                    return
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        if stop is not None and stop.is_set():
            return
        produced += 1
        yield model.draw(time.time_ns() // 1000)  # now_micros(), inlined: once per event
