"""Benchmark of the OTLP/HTTP receiver (``fraiseql-cli otlp``) on the real Kafka of ``scripts/stack``.

    .venv/bin/python bench/bench_otlp.py [--bootstrap 127.0.0.1:9092] [--batches 200]
                                         [--clients 2] [--sample-rate 1.0] [--json]

Starts the receiver as its own process (the real CLI, a fresh events topic), builds export
requests of 500 spans the way an instrumented FraiseQL 0.5.x API sends them -- 50 operations, each
a parent span with ``graphql.operation.name`` and 9 PostgreSQL client spans (BEGIN, SET LOCAL,
6 queries with inlined filter values drawn from a few hundred, COMMIT) -- serializes them once, then
posts them from ``--clients`` keep-alive connections as fast as the receiver answers. Reports
spans/s and query events/s accepted, the latency of one request, and checks that Kafka
acknowledged every event (the receiver's ``fraiseql_events_sent_total``).

The receiver and the clients share the machine: on 2 cores the clients take part of the CPU the
receiver would otherwise have, so the figure is a lower bound.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

ROOT = Path(__file__).resolve().parents[1]
SPANS_PER_BATCH = 500
OPS_PER_BATCH = 50
QUERIES = (
    "SELECT data FROM tv_order WHERE (data ->> 'status') = '{v}' LIMIT 20",
    "SELECT data FROM tv_order WHERE (data ->> 'customer_id') = '{v}' ORDER BY id DESC LIMIT 5",
    "SELECT data FROM tv_user WHERE (data ->> 'email') = 'u{v}@example.com'",
    "SELECT count(*) FROM tv_order WHERE (data ->> 'region') = '{v}'",
    "SELECT data FROM tv_product WHERE id = {v}",
    "SELECT data FROM tv_invoice WHERE (data ->> 'total')::numeric > {v} LIMIT 10",
)
OPERATIONS = ("OrdersByStatus", "CustomerOrders", "UserByEmail", "RegionCount", "Product", "Invoices")


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def build_batch(rng: random.Random, start_ns: int) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend([_kv("service.name", "bench-api"),
                                               _kv("service.instance.id", "bench-1")])
    scope = resource_spans.scope_spans.add()
    scope.scope.name = "opentelemetry.instrumentation.psycopg"
    spans = scope.spans
    t = start_ns
    for op in range(OPS_PER_BATCH):
        trace_id = rng.randbytes(16)
        parent_id = rng.randbytes(8)
        name = OPERATIONS[op % len(OPERATIONS)]
        statements = ["BEGIN", "SET LOCAL statement_timeout = 5000",
                      *(q.format(v=rng.randrange(300)) for q in QUERIES), "COMMIT"]
        for statement in statements:
            duration = int(rng.lognormvariate(0, 0.7) * 1_000_000)
            spans.append(Span(trace_id=trace_id, span_id=rng.randbytes(8), parent_span_id=parent_id,
                              name=statement.split()[0], kind=Span.SpanKind.SPAN_KIND_CLIENT,
                              start_time_unix_nano=t, end_time_unix_nano=t + duration,
                              attributes=[_kv("db.system", "postgresql"),
                                          _kv("db.statement", statement),
                                          _kv("db.name", "app"), _kv("net.peer.name", "db")]))
            t += duration
        spans.append(Span(trace_id=trace_id, span_id=parent_id, name="graphql.execute",
                          start_time_unix_nano=start_ns, end_time_unix_nano=t,
                          attributes=[_kv("graphql.operation.name", name)]))
    assert len(spans) == SPANS_PER_BATCH
    return request.SerializeToString()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _client(port: int, bodies: list[bytes], latencies: list[float], statuses: dict[int, int],
            lock: threading.Lock) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for body in bodies:
        while True:
            start = time.perf_counter()
            conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            resp = conn.getresponse()
            resp.read()
            elapsed = time.perf_counter() - start
            with lock:
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            if resp.status == 503:  # back off as an exporter does, then send the same batch
                time.sleep(float(resp.getheader("Retry-After") or 1))
                continue
            with lock:
                latencies.append(elapsed)
            break
    conn.close()


def run(bootstrap: str, batches: int, clients: int, sample_rate: float) -> dict[str, Any]:
    topic = f"bench-otlp-{uuid.uuid4().hex[:8]}.fraiseql.query-events"
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "otlp.toml"
        config.write_text(f"""
[observability]
sample_rate = {sample_rate}
[observability.metrics]
batch_size = 1000
flush_interval_secs = 0.2
slow_query_ms = 1000000
[observability.kafka]
bootstrap_servers = "{bootstrap}"
region = "bench"
events_topic = "{topic}"
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRAISEQL_")}
        proc = subprocess.Popen([sys.executable, "-m", "fraiseql_obs_app.cli", "--config",
                                 str(config), "--log-level", "WARNING", "otlp", "--listen",
                                 f"127.0.0.1:{port}"], env=env, cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("the receiver did not start") from None
                    time.sleep(0.2)
            rng = random.Random(7)
            now = time.time_ns()
            pool = [build_batch(rng, now + i * 1_000_000) for i in range(min(batches, 50))]
            bodies = [pool[i % len(pool)] for i in range(batches)]
            # Warm up (normalizer and fingerprint caches, topic metadata), not measured.
            _client(port, pool[:2], [], {}, threading.Lock())
            warm_deadline = time.monotonic() + 60
            while (_metric(port, "fraiseql_events_sent_total")
                   < _metric(port, "fraiseql_otlp_events_produced_total")
                   and time.monotonic() < warm_deadline):
                time.sleep(0.05)
            sent_before = _metric(port, "fraiseql_events_sent_total")
            produced_before = _metric(port, "fraiseql_otlp_events_produced_total")
            latencies: list[float] = []
            statuses: dict[int, int] = {}
            lock = threading.Lock()
            threads = [threading.Thread(target=_client, args=(port, bodies[c::clients], latencies,
                                                               statuses, lock))
                       for c in range(clients)]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            accepted_secs = time.perf_counter() - start
            produced = _metric(port, "fraiseql_otlp_events_produced_total") - produced_before
            while _metric(port, "fraiseql_events_sent_total") - sent_before < produced:
                if time.perf_counter() - start > 300:
                    break
                time.sleep(0.05)
            acked_secs = time.perf_counter() - start
            sent = _metric(port, "fraiseql_events_sent_total") - sent_before
            rss_kb = 0
            with open(f"/proc/{proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        rss_kb = int(line.split()[1])
        finally:
            proc.terminate()
            proc.wait(30)
            AdminClient({"bootstrap.servers": bootstrap}).delete_topics([topic])
    spans = batches * SPANS_PER_BATCH
    ordered = sorted(latencies)
    return {
        "batches": batches, "spans_per_batch": SPANS_PER_BATCH, "clients": clients,
        "sample_rate": sample_rate, "body_bytes": len(pool[0]),
        "spans_per_sec": round(spans / accepted_secs),
        "events_per_sec": round(produced / accepted_secs),
        "events_produced": int(produced), "events_acked": int(sent),
        "spans_per_sec_until_acked": round(spans / acked_secs),
        "request_ms_p50": round(statistics.median(ordered) * 1000, 2),
        "request_ms_p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "statuses": statuses, "receiver_peak_rss_mb": round(rss_kb / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bootstrap",
                        default=os.environ.get("FRAISEQL_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--sample-rate", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.bootstrap, args.batches, args.clients, args.sample_rate)
    if args.json:
        print(json.dumps(result))
        return
    print(f"OTLP receiver: {result['spans_per_sec']:,} spans/s accepted "
          f"({result['events_per_sec']:,} query events/s; {result['spans_per_batch']}-span "
          f"protobuf batches of {result['body_bytes']:,} bytes, {result['clients']} clients, "
          f"sample_rate {result['sample_rate']})")
    print(f"  until Kafka acknowledged all {result['events_acked']:,} events: "
          f"{result['spans_per_sec_until_acked']:,} spans/s")
    print(f"  request latency p50 {result['request_ms_p50']} ms, p99 {result['request_ms_p99']} ms; "
          f"statuses {result['statuses']}; receiver peak RSS {result['receiver_peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
