"""The demo's closed loop through a real API: the FraiseQL app under uvicorn, and HTTP traffic.

:func:`demo_api` starts :mod:`fraiseql_obs_app.demo_api` (FraiseQL 0.5.x, recorded by
:mod:`fraiseql_obs_producers.fraiseql_app`) as a uvicorn process; :func:`run_api_traffic` sends
GraphQL requests to it from a few client threads -- a fixed, seeded mix of operations and filter
values, so both phases of the loop send the same requests -- and measures each request's latency
as the client sees it. :func:`recorded_latency` reads the same operations' database time back
from the pipeline (``stats`` of the metrics database): what the integration recorded.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from fraiseql_obs_analyzer.stats import pattern_stats
from fraiseql_obs_producers.workload import ORDER_STATUSES, demo_table_rows

__all__ = ["ApiTraffic", "OperationLatency", "demo_api", "minute_floor", "recorded_latency",
           "run_api_traffic"]

# (operationName, share of requests). ordersByCustomerEmail is the demo's planted slow filter.
MIX: Final = (("ordersByCustomerEmail", 0.4), ("ordersByStatus", 0.4), ("order", 0.2))
_DOCUMENTS: Final = {
    "ordersByCustomerEmail": "query ordersByCustomerEmail($email: String!) "
                             "{ ordersByCustomerEmail(email: $email, limit: 20) { id total } }",
    "ordersByStatus": "query ordersByStatus($status: String!, $limit: Int!) "
                      "{ orders(status: $status, limit: $limit) { id status total } }",
    "order": "query order($id: Int!) { order(id: $id) { id number status } }",
}


@dataclass(frozen=True, slots=True)
class OperationLatency:
    """Client-side latencies of one operation (nearest-rank percentiles, ms)."""

    query_name: str
    executed: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True, slots=True)
class ApiTraffic:
    executed: int
    errors: int
    queries: Mapping[str, OperationLatency]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def demo_api(config: Path, database_url: str, log: Path, env: Mapping[str, str]) -> Iterator[int]:
    """The recorded FraiseQL API on a free port (yielded); stopped (recorder flushed) on exit."""
    # Imported here: FraiseQL (the [fraiseql] extra) loads only when the closed loop runs.
    from fraiseql_obs_app.demo_api import DATABASE_ENV, SETTINGS_ENV  # noqa: PLC0415

    port = _free_port()
    child_env = {**env, DATABASE_ENV: database_url, SETTINGS_ENV: str(config)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "fraiseql_obs_app.demo_api:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env=child_env)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the FraiseQL API did not start; see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()  # uvicorn's shutdown runs the lifespan: the recorder flushes and closes
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _requests(count: int, seed: int, rows: int) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    users = demo_table_rows(rows)["tv_user"]
    names = [name for name, _ in MIX]
    weights = [share for _, share in MIX]
    out = []
    for _ in range(count):
        name = rng.choices(names, weights)[0]
        if name == "ordersByCustomerEmail":
            variables: dict[str, Any] = {"email": f"user{rng.randrange(1, users + 1)}@example.com"}
        elif name == "ordersByStatus":
            variables = {"status": rng.choice(ORDER_STATUSES), "limit": rng.choice((10, 20))}
        else:
            variables = {"id": rng.randrange(1, rows + 1)}
        out.append((name, {"query": _DOCUMENTS[name], "operationName": name,
                           "variables": variables}))
    return out


def _nearest_rank(ordered: list[float], q: float) -> float:
    return ordered[max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))]


def run_api_traffic(port: int, *, count: int, seed: int, rows: int,
                    concurrency: int = 2) -> ApiTraffic:
    """Send ``count`` seeded GraphQL requests over HTTP; latencies per operation."""
    work = _requests(count, seed, rows)
    lock = threading.Lock()
    latencies: dict[str, list[float]] = defaultdict(list)
    errors = [0]
    url = f"http://127.0.0.1:{port}/graphql"

    def client(items: list[tuple[str, dict[str, Any]]]) -> None:
        for name, body in items:
            request = urllib.request.Request(url, json.dumps(body).encode(),
                                             {"content-type": "application/json"})
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - http://127.0.0.1
                    failed = "errors" in json.loads(response.read())
            except OSError:
                failed = True
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies[name].append(elapsed)
                errors[0] += failed

    threads = [threading.Thread(target=client, args=(work[i::concurrency],))
               for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queries = {}
    for name, values in latencies.items():
        ordered = sorted(values)
        queries[name] = OperationLatency(name, len(ordered), _nearest_rank(ordered, 0.5),
                                         _nearest_rank(ordered, 0.95), _nearest_rank(ordered, 0.99))
    return ApiTraffic(executed=count, errors=errors[0], queries=queries)


def minute_floor(moment: datetime) -> datetime:
    """The start of the one-minute window holding ``moment`` (the stream worker's windows)."""
    return moment.replace(second=0, microsecond=0)


def recorded_latency(metrics_url: str, start: datetime, end: datetime) -> dict[str, OperationLatency]:
    """Per operation, the recorded statement times of the closed windows in ``[start, end)``
    (the busiest pattern of each operation name)."""
    out: dict[str, OperationLatency] = {}
    for row in pattern_stats(metrics_url, start, end).patterns:
        known = out.get(row.query_name)
        if row.p50_ms is None or row.p95_ms is None or row.p99_ms is None or (
                known is not None and known.executed >= row.count):
            continue
        out[row.query_name] = OperationLatency(row.query_name, round(row.count), row.p50_ms,
                                               row.p95_ms, row.p99_ms)
    return out
