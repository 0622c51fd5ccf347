"""The cost of late events: rollup rows, bytes and windowing throughput by arrival order.

    .venv/bin/python bench/bench_late.py [--duration 3600] [--rate 100] [--patterns 30]
                                         [--regions 2] [--late-share 0.05] [--batch 5000]
                                         [--rounds 3] [--seed 1] [--json]

In process, no Kafka: one source partition's stream stage windowing
(:class:`fraiseql_obs_streams.windowing.PartitionWindows`, 60 s windows, 90 s grace, 60 s
correction slots) is fed ``--duration`` seconds (default one hour) of a realistic workload: the
loadgen's model (``fraiseql_obs_producers.loadgen``) restricted to its ``--patterns`` most popular
patterns × ``--regions`` regions, ``--rate`` kept events/s, 1 % sampling (weight 100; slow queries
and errors kept at weight 1). The same events are delivered in three arrival orders; the arrival
time is the broker's append time, so the partition's offsets follow it:

(a) in-order: arrival = occurred_at + 0..2 s (the recorder's flush jitter);
(b) late: as (a), but ``--late-share`` of the events arrive 2-30 minutes after they occurred
    (a slow-to-flush instance, a retry);
(c) shuffled: the whole span's events produced in one burst after it, in random order
    (arrival = end of span + i * 10 µs).

A worker-like loop calls ``close_ready()`` every ``--batch`` events and, at the end,
``advance_idle()`` past the last window's grace and the last correction slot so everything closes.
Reported per order: rollup rows (windows vs corrections) for the span, bytes (sum of the
Avro-encoded ``QueryRollup`` records, what the rollups topic carries), rows per 1,000 events, the
peak number of open aggregates (``open_windows`` just before a ``close_ready()``: it only grows
between two of them), and throughput in events/s (median of ``--rounds``, interleaved over the
orders) of ``.add`` alone and of ``.add`` plus ``close_ready()`` (encoding excluded). Exactness
is asserted and printed: the event_count of all emitted rollups sums to the number of events, the
weights to their total.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from fraiseql_obs_producers.loadgen import generate_events
from fraiseql_obs_producers.workload import DEFAULT_REGIONS, Workload, default_workload
from fraiseql_obs_streams.windowing import MICROS, PartitionWindows, Rollup
from fraiseql_observability.codec import QUERY_ROLLUP, default_codec

TOPIC = "fraiseql.query-events"
PARTITION = 0
WINDOW_US = 60 * MICROS
GRACE_US = 90 * MICROS
SLOT_US = 60 * MICROS
SAMPLE_RATE = 0.01
REGIONS = (*DEFAULT_REGIONS, "ap-southeast-1", "sa-east-1", "eu-central-1", "us-west-2")
START_US = 1_735_689_600 * MICROS  # 2025-01-01T00:00:00Z: the span starts on an hour
FLUSH_JITTER_US = 2 * MICROS
LATE_MIN_US, LATE_MAX_US = 2 * 60 * MICROS, 30 * 60 * MICROS
BURST_GAP_US = 10
ORDERS = ("in-order", "late", "shuffled")

Message = tuple[int, dict[str, Any]]  # (arrival µs, event), in offset order


def make_events(args: argparse.Namespace) -> list[dict[str, Any]]:
    workload = Workload(default_workload().patterns[:args.patterns])
    n = round(args.rate * args.duration)
    return list(generate_events(n, start_us=START_US, end_us=START_US + args.duration * MICROS,
                                regions=REGIONS[:args.regions], seed=args.seed,
                                sample_rate=SAMPLE_RATE, workload=workload))


def arrivals(order: str, events: list[dict[str, Any]], end_us: int, late_share: float,
             seed: int) -> list[Message]:
    """The partition's messages for one arrival order: sorted by append time = offset order.

    Each order gets its own event dicts, allocated in offset order as a worker's decoder would:
    reading shared dicts in shuffled order would add cache misses a worker never has (~20 %)."""
    rng = random.Random(f"{seed}-{order}")
    if order == "shuffled":
        shuffled = events[:]
        rng.shuffle(shuffled)
        return [(end_us + i * BURST_GAP_US, dict(e)) for i, e in enumerate(shuffled)]
    messages = []
    for e in events:
        if order == "late" and rng.random() < late_share:
            delay = rng.randint(LATE_MIN_US, LATE_MAX_US)
        else:
            delay = rng.randint(0, FLUSH_JITTER_US)
        messages.append((e["occurred_at"] + delay, e))
    messages.sort(key=lambda m: m[0])  # stable: ties keep generation order
    return [(arrival, dict(e)) for arrival, e in messages]


@dataclass(slots=True)
class Run:
    add_secs: float
    close_secs: float
    peak_open: int
    rollups: list[Rollup]


def process(messages: list[Message], batch: int) -> Run:
    """One worker-like pass: add, close_ready() every ``batch`` events, idle advance at the end."""
    windows = PartitionWindows(TOPIC, PARTITION, window_us=WINDOW_US, grace_us=GRACE_US,
                               slot_us=SLOT_US)
    add = windows.add
    rollups: list[Rollup] = []
    add_secs = close_secs = 0.0
    peak = 0
    for first in range(0, len(messages), batch):
        chunk = messages[first:first + batch]
        began = time.perf_counter()
        for offset, (arrival, event) in enumerate(chunk, first):
            add(offset, event, arrival)
        added = time.perf_counter()
        peak = max(peak, windows.open_windows)  # open aggregates only grow between two closes
        rollups.extend(windows.close_ready())
        close_secs += time.perf_counter() - added
        add_secs += added - began
    if messages:  # past the last window's grace and the last correction's slot
        windows.advance_idle(messages[-1][0] + WINDOW_US + GRACE_US + SLOT_US)
    began = time.perf_counter()
    rollups.extend(windows.close_ready())
    close_secs += time.perf_counter() - began
    assert windows.open_windows == 0, f"{windows.open_windows} aggregates left open"
    assert not windows.close_all()
    return Run(add_secs, close_secs, peak, rollups)


def summarize(order: str, messages: list[Message], runs: list[Run]) -> dict[str, Any]:
    first = runs[0]
    ids = [r.rollup_id for r in first.rollups]
    assert len(set(ids)) == len(ids), "two rollups share an id"
    for other in runs[1:]:  # deterministic: the same content yields the same rollups
        assert [r.rollup_id for r in other.rollups] == ids
    records = [r.record for r in first.rollups]
    codec = default_codec()
    sizes = [len(codec.encode(QUERY_ROLLUP, record)) for record in records]
    corrections = [s for s, record in zip(sizes, records, strict=True)
                   if record["correction_slot"] is not None]
    n = len(messages)
    counted = sum(record["event_count"] for record in records)
    weight = math.fsum(record["count"] for record in records)
    expected_weight = math.fsum(event["sample_weight"] for _, event in messages)
    assert counted == n, f"{order}: rollups count {counted} events, {n} were sent"
    assert math.isclose(weight, expected_weight, rel_tol=1e-9), (weight, expected_weight)
    add_rates = [n / r.add_secs for r in runs]
    total_rates = [n / (r.add_secs + r.close_secs) for r in runs]
    return {
        "events": n,
        "event_count": counted,
        "weighted_count": weight,
        "rows": len(records),
        "windows": len(records) - len(corrections),
        "corrections": len(corrections),
        "bytes": sum(sizes),
        "window_bytes": sum(sizes) - sum(corrections),
        "correction_bytes": sum(corrections),
        "rows_per_1000_events": 1000 * len(records) / n if n else 0.0,
        "peak_open": first.peak_open,
        "add_events_per_s": statistics.median(add_rates),
        "add_close_events_per_s": statistics.median(total_rates),
        "add_runs": add_rates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=3600, help="seconds of events (1 h)")
    parser.add_argument("--rate", type=float, default=100.0, help="kept events/s in the partition")
    parser.add_argument("--patterns", type=int, default=30, help="most popular loadgen patterns")
    parser.add_argument("--regions", type=int, default=2, choices=range(1, len(REGIONS) + 1))
    parser.add_argument("--late-share", type=float, default=0.05, help="late share of order (b)")
    parser.add_argument("--batch", type=int, default=5000, help="close_ready() every N events")
    parser.add_argument("--rounds", type=int, default=3, help="throughput: median of N rounds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.duration <= 0 or args.rate <= 0 or args.batch <= 0 or args.rounds <= 0:
        parser.error("--duration, --rate, --batch and --rounds must be > 0")
    if not 1 <= args.patterns <= len(default_workload().patterns):
        parser.error(f"--patterns: 1..{len(default_workload().patterns)}")

    began = time.perf_counter()
    events = make_events(args)
    keys = len({(e["fingerprint"], e["region"]) for e in events})
    print(f"generated {len(events):,} events ({keys} pattern×region keys) in "
          f"{time.perf_counter() - began:.1f}s", file=sys.stderr)
    end_us = START_US + args.duration * MICROS
    messages = {order: arrivals(order, events, end_us, args.late_share, args.seed) for order in ORDERS}
    runs: dict[str, list[Run]] = {order: [] for order in ORDERS}
    # Interleaved rounds: this machine's speed drifts by tens of percent over minutes (a shared
    # VM), so one order must not get all the fast seconds; the figures are the medians.
    for _ in range(args.rounds):
        for order in ORDERS:
            runs[order].append(process(messages[order], args.batch))
    results: dict[str, dict[str, Any]] = {}
    for order in ORDERS:
        results[order] = r = summarize(order, messages[order], runs[order])
        # Printed in both modes (stderr under --json, so stdout stays one JSON document).
        print(f"exact {order}: event_count over {r['rows']:,} rollups = {r['event_count']:,}"
              f" = {r['events']:,} events", file=sys.stderr if args.json else sys.stdout)

    if args.json:
        print(json.dumps({"params": {k: v for k, v in vars(args).items() if k != "json"},
                          "keys": keys, "orders": results}))
        return
    span = "1 h" if args.duration == 3600 else f"{args.duration:,} s"
    print(f"\n{span} of events: {len(events):,} events, {args.rate:g}/s, {args.patterns} patterns × "
          f"{args.regions} regions ({keys} keys), one partition; close_ready() every "
          f"{args.batch:,} events; throughput median of {args.rounds}")
    header = (f"{'order':<10} {'rows':>8} {'windows':>8} {'corr.':>8} {'bytes':>12} "
              f"{'rows/1k ev':>10} {'peak open':>9} {'add ev/s':>10} {'+close ev/s':>11}")
    print(header)
    print("-" * len(header))
    for order, r in results.items():
        print(f"{order:<10} {r['rows']:>8,} {r['windows']:>8,} {r['corrections']:>8,} "
              f"{r['bytes']:>12,} {r['rows_per_1000_events']:>10.1f} {r['peak_open']:>9,} "
              f"{r['add_events_per_s']:>10,.0f} {r['add_close_events_per_s']:>11,.0f}")
    for order, r in results.items():
        print(f"{order} .add runs: {', '.join(f'{rate:,.0f}' for rate in r['add_runs'])} events/s")
    base = results["in-order"]
    for order in ORDERS[1:]:
        r = results[order]
        print(f"{order} vs in-order: rows ×{r['rows'] / base['rows']:.2f}, bytes "
              f"×{r['bytes'] / base['bytes']:.2f}, add throughput "
              f"×{r['add_events_per_s'] / base['add_events_per_s']:.2f}")


if __name__ == "__main__":
    main()
