"""A real FraiseQL 0.5.x API, served by uvicorn and recorded by fraiseql_obs_producers.fraiseql_app.

GraphQL over HTTP with several operation names and filter values -> the recording pool's cursors
-> Kafka (checked: operation names, normalized SQL, plausible timings) -> ``fraiseql-cli stream``
-> ``fraiseql-cli sink`` -> ``fraiseql-cli stats`` (checked: every request counted exactly once).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fraiseql_obs_app.demo_api import DATABASE_ENV, SETTINGS_ENV
from fraiseql_obs_producers.appdb import create_demo_app_db
from fraiseql_obs_producers.fingerprint import fingerprint_sql
from fraiseql_observability.config import KafkaSettings
from tests.fix_pg import scratch_database
from tests.fix_procs import Processes, clean_env, cli, free_port, write_config
from tests.query_events import read_events

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.e2e]

ROWS = 4000
STATUS_QUERY = ("query byStatus($status: String!, $limit: Int!) "
                "{ orders(status: $status, limit: $limit) { id status total } }")
# Two operations in one document: operationName picks one.
TWO_OPERATIONS = ("query firstOne { order(id: 1) { id } } "
                  "query orderById($id: Int!) { order(id: $id) { id number } }")
STATUS_SQL = ("SELECT jsonb_build_object('id', data->>'id', 'status', data->>'status', 'total', "
              "data->'total', '__typename', $1)::text AS result FROM \"tv_order\" "
              "WHERE (data ->> 'status') = $2 LIMIT $3")
EMAIL_SQL = ("SELECT jsonb_build_object('id', data->>'id', 'customerEmail', "
             "data->>'customer_email', '__typename', $1)::text AS result FROM \"tv_order\" "
             "WHERE (data ->> 'customer_email') = $2 LIMIT $3")


@pytest.fixture(scope="module")
def app_db(pg_admin_url: str) -> Iterator[str]:
    with scratch_database(pg_admin_url, "fraiseql_api") as url:
        create_demo_app_db(url, rows=ROWS, seed=5)
        yield url


def _start_api(processes: Processes, config: Path, database: str) -> int:
    port = free_port()
    env = {**clean_env(), DATABASE_ENV: database, SETTINGS_ENV: str(config)}
    with (processes.logs / "api.log").open("ab") as out:
        processes.procs["api"] = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "fraiseql_obs_app.demo_api:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        processes.assert_running()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return port
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the API did not start:\n{processes.log('api')}")


def _graphql(port: int, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - http://127.0.0.1
        payload = json.loads(response.read())
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert "errors" not in payload, payload
    return payload["data"], elapsed_ms


def _traffic(port: int) -> tuple[Counter[str], dict[str, list[float]], set[str]]:
    """Requests of four operations; returns counts and client latencies per name, and values."""
    counts: Counter[str] = Counter()
    latency: dict[str, list[float]] = defaultdict(list)
    values: set[str] = set()

    def send(name: str, body: dict[str, Any]) -> dict[str, Any]:
        data, elapsed = _graphql(port, body)
        counts[name] += 1
        latency[name].append(elapsed)
        return data

    for i in range(12):
        status = ("paid", "shipped", "pending", "delivered")[i % 4]
        values.add(f"'{status}'")
        data = send("byStatus", {"query": STATUS_QUERY, "operationName": "byStatus",
                                 "variables": {"status": status, "limit": 3 + i % 3}})
        assert {o["status"] for o in data["orders"]} == {status}
    for i in range(8):
        email = f"user{11 + i}@example.com"
        values.add(email)
        # No operationName, an anonymous document with the value inline: named by its root field.
        data = send("ordersByCustomerEmail",
                    {"query": f'{{ ordersByCustomerEmail(email: "{email}") {{ id customerEmail }} }}'})
        assert all(o["customerEmail"] == email for o in data["ordersByCustomerEmail"])
    for i in range(6):
        data = send("orderById", {"query": TWO_OPERATIONS, "operationName": "orderById",
                                  "variables": {"id": 100 + i}})
        assert data["order"]["id"] == str(100 + i)
    for _ in range(4):
        send("firstOne", {"query": "query firstOne { order(id: 1) { id } }"})  # named by document
    return counts, latency, values


def test_fraiseql_api_recorded_to_stats(tmp_path: Path, app_db: str, metrics_db: str,
                                        kafka_settings: KafkaSettings,
                                        processes: Processes) -> None:
    config = write_config(tmp_path / "fraiseql.toml", kafka_settings, metrics_db)
    port = _start_api(processes, config, app_db)
    for name in ("stream", "sink"):
        processes.start(name, cli(config, name))
    counts, latency, values = _traffic(port)
    total = sum(counts.values())

    # Kafka: one event per request (FraiseQL's BEGIN / SET LOCAL / COMMIT are not recorded).
    events = read_events(kafka_settings.bootstrap_servers, kafka_settings.events_topic, total,
                         extra_secs=2.0)
    assert len(events) == total, [e["sql"] for e in events][:40]
    assert Counter(e["query_name"] for e in events) == counts
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_name[event["query_name"]].append(event)
        for value in values:
            assert value not in event["sql"], (value, event["sql"])
        assert event["fingerprint"] == fingerprint_sql(event["sql"])
        assert event["error"] is None and event["rows_returned"] >= 1
    assert {e["sql"] for e in by_name["byStatus"]} == {STATUS_SQL}
    assert {e["sql"] for e in by_name["ordersByCustomerEmail"]} == {EMAIL_SQL}
    for name in counts:  # whatever the values, one text (and fingerprint) per operation
        assert len({e["sql"] for e in by_name[name]}) == 1, {e["sql"] for e in by_name[name]}
    assert "WHERE id = $1" in by_name["orderById"][0]["sql"]
    # Timings: positive and within the client's view of each request (k-th smallest recorded
    # <= k-th smallest client latency, per operation: holds whatever order Kafka returns them in).
    for name, client in latency.items():
        recorded = sorted(e["execution_time_ms"] for e in by_name[name])
        assert all(ms > 0.0 for ms in recorded)
        for ms, client_ms in zip(recorded, sorted(client), strict=True):
            assert ms <= client_ms, (name, recorded, sorted(client))

    # The pipeline counts every request exactly once (windows close a minute after the traffic).
    report: dict[str, Any] = {}
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        out = subprocess.run(cli(config, "stats", "--database", metrics_db, "--window", "1h",
                                 "--format", "json"), capture_output=True, text=True, check=True,
                             env=clean_env())
        report = json.loads(out.stdout)
        if sum(p["count"] for p in report["patterns"]) >= total:
            break
        processes.assert_running()
        time.sleep(2)
    got: Counter[str] = Counter()
    for pattern in report["patterns"]:
        got[pattern["query_name"]] += pattern["count"]
        assert pattern["region"] == "test"
        assert pattern["errors"] == 0
    assert got == counts, report
    by_fingerprint = {p["fingerprint"]: p for p in report["patterns"]}
    assert by_fingerprint[fingerprint_sql(STATUS_SQL)]["count"] == counts["byStatus"]
    processes.assert_running()
