"""Benchmark of the API-side recorder and the load generator (real Kafka of ``scripts/stack``).

    .venv/bin/python bench/bench_recorder.py [--bootstrap 127.0.0.1:9092] [--events 300000]
                                             [--json]

Measures, in one process:

1. ``Recorder.record()`` per-call cost when the query is *not* sampled (the ~99 % case) and when
   it is sampled (buffered for sending, with the background thread running and sending to Kafka):
   ``time.perf_counter_ns()`` around batches of 1000 calls, per-call median and p99 over batches;
2. sustained events/s from one process to Kafka through the recorder (sample rate 1, until every
   event is acknowledged);
3. load-generator events/s: event generation alone, and ``run_loadgen`` end to end to Kafka.

Targets (the brief): not-sampled <= 1 µs median, sampled <= 10 µs median, >= 100k events/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from confluent_kafka.admin import AdminClient

from fraiseql_obs_producers.loadgen import generate_events, run_loadgen
from fraiseql_obs_producers.recorder import Recorder
from fraiseql_observability.config import KafkaSettings, MetricsSettings, Settings
from fraiseql_observability.kafka import wait_for_broker

SQL = ("SELECT data FROM tv_order WHERE data->>'status' = $1 "
       "ORDER BY data->>'created_at' DESC LIMIT $2")
BATCH = 1000


def per_call_ns(call: Callable[[], object], batches: int, size: int = BATCH) -> list[float]:
    """Per-call cost (ns) of each batch of ``size`` calls (bench_instrument uses it too)."""
    out = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(size):
            call()
        out.append((time.perf_counter_ns() - start) / size)
    return out


def summary(costs_ns: list[float]) -> dict[str, float]:
    ordered = sorted(costs_ns)
    return {"median_us": round(statistics.median(ordered) / 1000, 3),
            "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000, 3)}


def recorder_settings(kafka: KafkaSettings, sample_rate: float, **metrics: Any) -> Settings:
    return Settings(enabled=True, sample_rate=sample_rate, kafka=kafka,
                    metrics=MetricsSettings(**metrics))


def bench_record_calls(kafka: KafkaSettings, batches: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    # Not sampled: rate 0 and a slow threshold no query reaches -> the early-return path.
    not_sampled = Recorder(recorder_settings(kafka, 0.0, slow_query_ms=1e9)).start()
    record = not_sampled.record

    def fast_query() -> bool:
        return record(query_name="ordersByStatus", sql=SQL, execution_time_ms=3.2,
                      sql_generation_time_ms=0.05, db_round_trip_time_ms=3.0,
                      projection_time_ms=0.15, rows_returned=20, cache_hit=True)

    per_call_ns(fast_query, 50)  # warm-up
    results["not_sampled"] = summary(per_call_ns(fast_query, batches))
    not_sampled.close()

    # Sampled: every call kept, buffered, and sent by the background thread meanwhile.
    sampled = Recorder(recorder_settings(kafka, 1.0, buffer_size=1_000_000, batch_size=5000,
                                 flush_interval_secs=0.5)).start()
    record = sampled.record

    def kept_query() -> bool:
        return record(query_name="ordersByStatus", sql=SQL, execution_time_ms=3.2,
                      sql_generation_time_ms=0.05, db_round_trip_time_ms=3.0,
                      projection_time_ms=0.15, rows_returned=20, cache_hit=True)

    per_call_ns(kept_query, 20)
    results["sampled"] = summary(per_call_ns(kept_query, batches))
    sampled.flush(60)
    stats = sampled.stats()
    sampled.close()
    results["sampled"]["kept"] = stats.sampled
    results["sampled"]["dropped"] = stats.dropped_total
    return results


def bench_sustained(kafka: KafkaSettings, events: int) -> dict[str, Any]:
    """Events/s from one process through the recorder to Kafka, all acknowledged."""
    recorder = Recorder(recorder_settings(kafka, 1.0, buffer_size=200_000, batch_size=10_000,
                                  flush_interval_secs=0.2)).start()
    record = recorder.record
    waits = 0
    start = time.perf_counter()
    for i in range(events):
        # The benchmark (not the API) applies back-pressure, so every event is sent and the
        # figure is what the sender sustains, not how fast the buffer overflows.
        while not record(query_name="ordersByStatus", sql=SQL, execution_time_ms=3.2,
                         sql_generation_time_ms=0.05, db_round_trip_time_ms=3.0,
                         projection_time_ms=0.15, rows_returned=i & 1023, cache_hit=True):
            waits += 1
            time.sleep(0.0005)
    recorded = time.perf_counter() - start
    assert recorder.flush(120), "not every event was acknowledged"
    elapsed = time.perf_counter() - start
    stats = recorder.stats()
    recorder.close()
    return {"events": events, "sent": stats.sent, "seconds": round(elapsed, 3),
            "events_per_sec": round(stats.sent / elapsed),
            "record_phase_events_per_sec": round(events / recorded),
            "buffer_full_retries": waits,
            "dropped": stats.dropped_total - stats.dropped["buffer_full"]}


def bench_loadgen(kafka: KafkaSettings, events: int) -> dict[str, Any]:
    now_us = time.time_ns() // 1000
    start = time.perf_counter()
    generated = sum(1 for _ in generate_events(events, start_us=now_us - 3_600_000_000,
                                               end_us=now_us, sample_rate=0.01, seed=1))
    generate_rate = generated / (time.perf_counter() - start)
    settings = Settings(sample_rate=0.01, kafka=kafka)
    report = run_loadgen(settings, count=events, backfill=timedelta(hours=1), seed=2,
                         keep_samples=False)
    return {"generate_events_per_sec": round(generate_rate),
            "run_loadgen_events_per_sec": round(report.events_per_sec),
            "run_loadgen_seconds": round(report.elapsed_secs, 3),
            "delivered": report.delivered, "failed": report.failed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=os.environ.get(
        "FRAISEQL_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--events", type=int, default=300_000,
                        help="events for the sustained and loadgen runs")
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
        results["record"] = bench_record_calls(kafka, args.batches)
        results["sustained"] = bench_sustained(kafka, args.events)
        results["loadgen"] = bench_loadgen(kafka, args.events)
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
    record = results["record"]
    print(f"machine: {results['cpus']} CPUs, Python {results['python']}, "
          f"load {results['load_average'][0]:.2f} -> {results['load_average_after'][0]:.2f}")
    print(f"record() not sampled : median {record['not_sampled']['median_us']:.3f} µs, "
          f"p99 {record['not_sampled']['p99_us']:.3f} µs   (target <= 1 µs median)")
    print(f"record() sampled     : median {record['sampled']['median_us']:.3f} µs, "
          f"p99 {record['sampled']['p99_us']:.3f} µs   (target <= 10 µs median)")
    sustained = results["sustained"]
    print(f"recorder -> Kafka    : {sustained['events_per_sec']:,} events/s sustained "
          f"({sustained['sent']:,} acknowledged in {sustained['seconds']} s; "
          f"target >= 100,000)")
    loadgen = results["loadgen"]
    print(f"loadgen              : generate {loadgen['generate_events_per_sec']:,} events/s; "
          f"to Kafka {loadgen['run_loadgen_events_per_sec']:,} events/s "
          f"({loadgen['delivered']:,} delivered)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
