"""OpenTelemetry ingest (``fraiseql-cli otlp``): span → event conversion (pure), OTLP/JSON and
protobuf decoding, and end to end: a psycopg app traced by the real OpenTelemetry SDK and
``opentelemetry-instrumentation-psycopg`` exports (protobuf + gzip, and JSON) to the receiver
process → Kafka → ``stream`` → ``sink`` → PostgreSQL → ``stats``, with exact counts per pattern;
bad payloads get 400/413/415 with a reason and the receiver stays up."""

from __future__ import annotations

import gzip
import http.client
import inspect
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from google.rpc import status_pb2  # type: ignore[import-untyped]  # googleapis-common-protos
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status
from psycopg import sql

from fraiseql_obs_producers.fingerprint import fingerprint_sql
from fraiseql_obs_producers.normalize import normalize_sql
from fraiseql_obs_producers.otlp import (
    OtlpDecodeError,
    SpanConverter,
    decode_json,
    decode_protobuf,
    encode_response,
    pyformat_to_dollar,
)
from fraiseql_obs_producers.otlp_server import encode_status
from fraiseql_observability.config import KafkaSettings
from tests.fix_procs import Processes, clean_env, cli, free_port, write_config
from tests.query_events import read_events

T0 = 1_796_000_000_000_000_000  # ns
TRACE = bytes(range(16))


# ------------------------------------------------------------------ building requests (unit)


def kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def span(span_id: int, name: str, parent: int | None = None, *, duration_ms: float = 2.0,
         start_ns: int = T0, kind: Span.SpanKind.ValueType = Span.SpanKind.SPAN_KIND_INTERNAL,
         **attrs: str | int) -> Span:
    return Span(trace_id=TRACE, span_id=span_id.to_bytes(8, "big"),
                parent_span_id=parent.to_bytes(8, "big") if parent else b"", name=name, kind=kind,
                start_time_unix_nano=start_ns, end_time_unix_nano=start_ns + int(duration_ms * 1e6),
                attributes=[kv(k.replace("__", "."), v) for k, v in attrs.items()])


def pg(span_id: int, statement: str, parent: int | None = None, **kw: Any) -> Span:
    return span(span_id, "SELECT", parent, kind=Span.SpanKind.SPAN_KIND_CLIENT,
                db__system="postgresql", db__statement=statement, **kw)


def request(*spans: Span, scope: str = "opentelemetry.instrumentation.psycopg",
            resource: dict[str, str] | None = None) -> ExportTraceServiceRequest:
    rs = ResourceSpans()
    for key, value in (resource or {"service.name": "api", "service.instance.id": "api-1"}).items():
        rs.resource.attributes.append(kv(key, value))
    scope_spans = rs.scope_spans.add()
    scope_spans.scope.name = scope
    scope_spans.spans.extend(spans)
    return ExportTraceServiceRequest(resource_spans=[rs])


# ------------------------------------------------------------------ conversion


def test_operation_name_from_ancestors_span_names_and_fallbacks() -> None:
    req = request(
        span(1, "POST /graphql", kind=Span.SpanKind.SPAN_KIND_SERVER),
        span(2, "graphql.execute", 1, graphql__operation__name="OrdersByStatus"),
        span(3, "resolve", 2),
        pg(4, "SELECT 1 FROM tv_order WHERE data->>'status' = 'paid'", 3),  # grandparent's name
        span(10, "execute_graphql_request", operation_name="FraiseqlOp"),  # FraiseQL 2.x's field
        pg(11, "SELECT 2", 10),
        span(20, "query OrderById"),  # a GraphQL span name (semantic conventions)
        pg(21, "SELECT 3", 20),
        span(30, "GET /orders", kind=Span.SpanKind.SPAN_KIND_SERVER),  # no GraphQL: the route
        pg(31, "SELECT 4", 30),
        pg(40, "SELECT 5"),  # no parent
        pg(50, "SELECT 6", 99),  # parent not in this export
        pg(60, "SELECT 7", 2, graphql__operation__name="OwnName"),  # its own attribute wins
    )
    result = SpanConverter().convert(req)
    assert (result.spans, result.db_spans) == (13, 7)
    assert [q.query_name for q in result.queries] == [
        "OrdersByStatus", "FraiseqlOp", "OrderById", "GET /orders", "anonymous", "anonymous",
        "OwnName"]
    first = result.queries[0]
    assert first.sql == "SELECT $1 FROM tv_order WHERE data->>'status' = $2"
    assert first.instance == "api-1"
    assert first.occurred_at_us == T0 // 1000
    assert first.duration_ms == pytest.approx(2.0)


def test_a_parent_cycle_ends() -> None:
    req = request(span(1, "a", 2), span(2, "b", 1), pg(3, "SELECT 1", 1))
    assert [q.query_name for q in SpanConverter().convert(req).queries] == ["anonymous"]


def test_fields_errors_rows_skips_and_stable_keys() -> None:
    error = pg(1, "SELECT data FROM tv_missing WHERE id = 5")
    error.status.code = Status.StatusCode.STATUS_CODE_ERROR
    exc = error.events.add()
    exc.name = "exception"
    exc.attributes.append(kv("exception.type", "psycopg.errors.UndefinedTable"))
    typed = pg(2, "SELECT 1", error__type="QueryCanceled")
    typed.status.code = Status.StatusCode.STATUS_CODE_ERROR
    bare = pg(3, "SELECT 1")
    bare.status.code = Status.StatusCode.STATUS_CODE_ERROR
    stable = span(4, "SELECT tv_order", kind=Span.SpanKind.SPAN_KIND_CLIENT,
                  db__system__name="postgresql", db__query__text="SELECT * FROM tv_order LIMIT 10",
                  db__response__returned_rows=7)
    backwards = pg(5, "SELECT 1")
    backwards.end_time_unix_nano = backwards.start_time_unix_nano - 1
    req = request(
        error, typed, bare, stable, backwards,
        pg(6, "BEGIN"), pg(7, "SET LOCAL statement_timeout = 1000"), pg(8, "COMMIT"),
        span(9, "SELECT", kind=Span.SpanKind.SPAN_KIND_CLIENT, db__system="mysql",
             db__statement="SELECT 1"),
        span(10, "SELECT", kind=Span.SpanKind.SPAN_KIND_CLIENT, db__system="postgresql"),
        resource={"service.name": "billing", "host.name": "h1"},
    )
    result = SpanConverter().convert(req)
    assert [(q.sql, q.error, q.rows_returned) for q in result.queries] == [
        ("SELECT data FROM tv_missing WHERE id = $1", "UndefinedTable", 0),
        ("SELECT $1", "QueryCanceled", 0),
        ("SELECT $1", "Error", 0),
        ("SELECT * FROM tv_order LIMIT $1", None, 7),
    ]
    assert {q.instance for q in result.queries} == {"h1"}
    assert result.skipped == {"bad_timestamps": 1, "not_recorded": 3, "no_statement": 1}
    assert result.rejected == 1
    assert result.db_spans == 9  # the mysql span is not one


def test_pyformat_placeholders_only_for_python_dbapi_scopes() -> None:
    statement = "SELECT data FROM tv_order WHERE id = %s AND data->>'k' = %(v)s AND x LIKE 'a%%'"
    psycopg_result = SpanConverter().convert(request(pg(1, statement)))
    assert psycopg_result.queries[0].sql == (
        "SELECT data FROM tv_order WHERE id = $1 AND data->>'k' = $2 AND x LIKE $3")
    # Another client's statement is taken as PostgreSQL SQL: '%' is an operator there.
    native = SpanConverter().convert(request(pg(1, "SELECT 7 % 3 FROM t WHERE id = $1"),
                                             scope="sqlx"))
    assert native.queries[0].sql == "SELECT $2 % $3 FROM t WHERE id = $1"


def test_pyformat_to_dollar_follows_psycopg() -> None:
    assert pyformat_to_dollar("SELECT %s, %b, %t") == "SELECT $1, $2, $3"
    assert pyformat_to_dollar("a = %(x)s OR b = %(y)s OR c = %(x)s") == "a = $1 OR b = $2 OR c = $1"
    assert pyformat_to_dollar("x LIKE 'a%%' AND y = %s") == "x LIKE 'a%' AND y = $1"
    assert pyformat_to_dollar("no placeholders") == "no placeholders"


@given(st.lists(st.sampled_from(["%s", "%(a)s", "%(b)s", "%%", " x ", "'q'"]), max_size=20))
def test_pyformat_numbers_every_placeholder(parts: list[str]) -> None:
    out = pyformat_to_dollar("".join(parts))
    positional = parts.count("%s")
    named = len({p for p in parts if p.startswith("%(")})
    assert "%s" not in out.replace("%%", "")
    for n in range(1, positional + named + 1):
        assert f"${n}" in out
    assert f"${positional + named + 1}" not in out


def test_same_shape_different_literals_same_sql_and_fingerprint() -> None:
    queries = SpanConverter().convert(request(
        pg(1, "SELECT data FROM tv_order WHERE (data ->> 'status') = 'paid' LIMIT 3"),
        pg(2, "SELECT data FROM tv_order WHERE (data ->> 'status') = 'shipped' LIMIT 30"))).queries
    assert queries[0].sql == queries[1].sql
    assert "paid" not in queries[0].sql
    assert fingerprint_sql(queries[0].sql) == fingerprint_sql(queries[1].sql)


# ------------------------------------------------------------------ decoding


def otlp_json(spans: list[dict[str, Any]]) -> bytes:
    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.instance.id",
                                     "value": {"stringValue": "json-app"}}]},
        "unknownField": {"ignored": True},
        "scopeSpans": [{"scope": {"name": "custom"}, "spans": spans}],
    }]}).encode()


def json_span(span_id: str, parent: str, name: str, attributes: dict[str, str],
              start_ns: int = T0, duration_ns: int = 3_000_000) -> dict[str, Any]:
    return {
        "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": span_id, "parentSpanId": parent,
        "name": name, "kind": 3,
        "startTimeUnixNano": str(start_ns), "endTimeUnixNano": str(start_ns + duration_ns),
        "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attributes.items()],
        "status": {"code": 2 if name == "failing" else 0},
    }


def test_decode_json_hex_ids_camel_case_and_unknown_fields() -> None:
    body = otlp_json([
        json_span("EEE19B7EC3C1B174", "", "graphql", {"graphql.operation.name": "JsonOp"}),
        json_span("eee19b7ec3c1b175", "EEE19B7EC3C1B174", "failing",
                  {"db.system": "postgresql", "db.query.text": "SELECT 1 WHERE 'a' = 'b'"}),
    ])
    req = decode_json(body)
    assert req.resource_spans[0].scope_spans[0].spans[1].parent_span_id == bytes.fromhex(
        "EEE19B7EC3C1B174")
    (query,) = SpanConverter().convert(req).queries
    assert (query.query_name, query.sql, query.error, query.instance) == (
        "JsonOp", "SELECT $1 WHERE $2 = $3", "Error", "json-app")
    assert query.duration_ms == pytest.approx(3.0)


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "bad JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"resourceSpans": 5}', "bad OTLP/JSON"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "zz"}]}]}]}', "not hex"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}', "bad OTLP/JSON"),
    (b"\xff\xfe", "bad JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": '
     + b'{"kvlistValue": {"values": [{"key": "k", "value": ' * 2000 + b"{}" + b"}]}}" * 2000
     + b"}]}}]}", "nested too deeply"),
])
def test_decode_json_errors(body: bytes, reason: str) -> None:
    with pytest.raises(OtlpDecodeError, match=reason):
        decode_json(body)


def test_decode_protobuf_round_trip_and_garbage() -> None:
    req = request(pg(1, "SELECT 1"))
    assert decode_protobuf(req.SerializeToString()) == req
    with pytest.raises(OtlpDecodeError, match="undecodable protobuf"):
        decode_protobuf(b"\xff\xff\xff\xff")


def test_responses_and_status_messages_decode_with_the_official_classes() -> None:
    status = status_pb2.Status.FromString(encode_status(3, "bad data: é" * 20, as_json=False))
    assert (status.code, status.message) == (3, "bad data: é" * 20)
    assert json.loads(encode_status(14, "full", as_json=True)) == {"code": 14, "message": "full"}
    assert ExportTraceServiceResponse.FromString(encode_response(0, "", as_json=False)) == \
        ExportTraceServiceResponse()
    partial = ExportTraceServiceResponse.FromString(encode_response(2, "why", as_json=False))
    assert (partial.partial_success.rejected_spans, partial.partial_success.error_message) == (
        2, "why")
    assert json.loads(encode_response(2, "why", as_json=True)) == {
        "partialSuccess": {"rejectedSpans": "2", "errorMessage": "why"}}


# ------------------------------------------------------------------ the real receiver process


def post(port: int, path: str, body: bytes, content_type: str,
         **headers: str) -> tuple[int, bytes, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body, {"Content-Type": content_type, **headers})
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.headers
    finally:
        conn.close()


def wait_healthy(port: int, processes: Processes) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        processes.assert_running()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail("the OTLP receiver did not come up:\n" + processes.log("otlp"))


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    # An exact series ("name{label=...}") or the sum over a metric's series ("name").
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + " ", name + "{") if "{" not in name else name + " "))


def start_receiver(config: Path, processes: Processes, *extra: str) -> int:
    port = free_port()
    processes.start("otlp", cli(config, "otlp", "--listen", f"127.0.0.1:{port}", *extra))
    wait_healthy(port, processes)
    return port


@pytest.fixture
def app_db(pg_admin_url: str) -> Iterator[str]:
    """An application database with a small tv_order table (dropped afterwards)."""
    name = f"fraiseql_otlp_app_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = pg_admin_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE tv_order (id int PRIMARY KEY, data jsonb NOT NULL)")
        conn.execute("INSERT INTO tv_order SELECT g, jsonb_build_object('status', "
                     "(ARRAY['paid','shipped','pending'])[1 + g % 3], 'total', g) "
                     "FROM generate_series(1, 200) g")
    yield url
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


PLAN = {"orders_by_status": 12, "order_by_id": 7, "broken": 3, "anonymous": 5}
# (query_name, SQL as the events must carry it, count per app run, errors per app run)
EXPECTED = [
    ("OrdersByStatus", "SELECT data FROM tv_order WHERE (data ->> 'status') = $1 LIMIT $2", 12, 0),
    ("OrderById", "SELECT data FROM tv_order WHERE id = $1", 7, 0),
    ("Broken", "SELECT data FROM tv_missing WHERE id = $1", 3, 3),
    ("anonymous", "SELECT count(*) FROM tv_order WHERE (data ->> 'total')::numeric > $1", 5, 0),
]


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.e2e
def test_real_sdk_exports_end_to_end_to_stats(tmp_path: Path, kafka_settings: KafkaSettings,
                                              metrics_db: str, app_db: str,
                                              processes: Processes) -> None:
    config = write_config(tmp_path / "otlp.toml", kafka_settings, metrics_db, sample_rate=1.0,
                          region="otlp-test", grace_secs=2.0)
    # Five-second windows: the spans are "now", so the last window closes seconds after the run.
    config.write_text(config.read_text().replace("[observability.streams]\n",
                                                 "[observability.streams]\nwindow_secs = 5\n"))
    port = start_receiver(config, processes)
    for name in ("stream", "sink"):
        processes.start(name, cli(config, name))

    for protocol in ("protobuf", "json"):
        endpoint = f"http://127.0.0.1:{port}/v1/traces"
        out = subprocess.run([sys.executable, "-m", "tests.otlp_app", endpoint, app_db, protocol,
                              json.dumps(PLAN)], capture_output=True, text=True, env=clean_env(),
                             timeout=120, check=True)
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        assert summary["failures"] == 0 and summary["exports"] >= PLAN["orders_by_status"], out

    runs = 2
    want = {name: (count * runs, errors * runs) for name, _, count, errors in EXPECTED}
    total = sum(count for count, _ in want.values())
    report: dict[str, Any] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        out = subprocess.run(cli(config, "stats", "--database", metrics_db, "--window", "1h",
                                 "--format", "json"), capture_output=True, text=True,
                             check=True, env=clean_env())
        report = json.loads(out.stdout)
        if sum(p["count"] for p in report["patterns"]) >= total:
            break
        processes.assert_running()
        time.sleep(1)
    got = {p["query_name"]: p for p in report["patterns"]}
    assert set(got) == set(want), report
    for name, sql_text, _, _ in EXPECTED:
        row = got[name]
        assert (row["count"], row["errors"]) == want[name], (name, row)
        assert row["region"] == "otlp-test"
        assert row["fingerprint"] == fingerprint_sql(sql_text)
        assert 0 < row["p50_ms"] < 5000

    # The events themselves: normalized SQL (no filter value reached Kafka), both instances.
    events = read_events(kafka_settings.bootstrap_servers, kafka_settings.events_topic, total)
    assert {(e["query_name"], e["sql"]) for e in events} == {(n, s) for n, s, _, _ in EXPECTED}
    assert {e["instance"] for e in events} == {"app-protobuf", "app-json"}
    assert not any(value in e["sql"] for e in events for value in ("paid", "shipped", "pending"))

    # The receiver's own counters: BEGIN / SET LOCAL / COMMIT arrived and were not recorded.
    assert metric(port, "fraiseql_otlp_events_produced_total") == total
    assert metric(port, "fraiseql_otlp_spans_skipped_total") == 3 * PLAN["orders_by_status"] * runs
    assert metric(port, "fraiseql_events_sent_total") == total
    processes.assert_running()


@pytest.mark.kafka
def test_json_request_and_bad_payloads(tmp_path: Path, kafka_settings: KafkaSettings,
                                       processes: Processes) -> None:
    config = write_config(tmp_path / "otlp.toml", kafka_settings, sample_rate=1.0, region="json")
    port = start_receiver(config, processes, "--max-body-bytes", "20000")
    url = "/v1/traces"
    now = time.time_ns()

    body = otlp_json([
        json_span("EEE19B7EC3C1B174", "", "graphql", {"graphql.operation.name": "JsonOp"}, now),
        json_span("EEE19B7EC3C1B175", "EEE19B7EC3C1B174", "SELECT",
                  {"db.system": "postgresql", "db.statement": "SELECT * FROM t WHERE k = 'v1'"}, now),
        json_span("EEE19B7EC3C1B176", "EEE19B7EC3C1B174", "SELECT",
                  {"db.system": "postgresql", "db.statement": "SELECT 1"}, now, -5),  # backwards
    ])
    status, payload, headers = post(port, url, body, "application/json; charset=utf-8")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(payload)["partialSuccess"]["rejectedSpans"] == "1"
    (event,) = read_events(kafka_settings.bootstrap_servers, kafka_settings.events_topic, 1)
    assert (event["query_name"], event["sql"], event["instance"]) == (
        "JsonOp", "SELECT * FROM t WHERE k = $1", "json-app")
    assert event["occurred_at"] == now // 1000
    assert event["execution_time_ms"] == pytest.approx(3.0)

    empty = ExportTraceServiceRequest().SerializeToString()
    assert post(port, url, empty, "application/x-protobuf")[:2] == (200, b"")
    assert post(port, "/", empty, "application/x-protobuf")[0] == 200  # verbatim endpoints
    bad = [
        (url, b"\xff\xff\xff\xff", "application/x-protobuf", {}, 400, "undecodable protobuf"),
        (url, b"{nope", "application/json", {}, 400, "bad JSON"),
        (url, b"<xml/>", "text/xml", {}, 415, "Content-Type 'text/xml'"),
        (url, b"x" * 30000, "application/x-protobuf", {}, 413, "20000-byte limit"),
        (url, gzip.compress(b"\x00" * 50000), "application/x-protobuf",
         {"Content-Encoding": "gzip"}, 413, "gunzipped"),
        (url, b"not gzip", "application/x-protobuf", {"Content-Encoding": "gzip"}, 400, "bad gzip"),
        (url, b"", "application/x-protobuf", {"Content-Encoding": "br"}, 415, "'br'"),
        ("/v1/metrics", empty, "application/x-protobuf", {}, 404, "/v1/traces"),
    ]
    for target, data, content_type, extra, want_status, reason in bad:
        status, payload, headers = post(port, target, data, content_type, **extra)
        assert status == want_status, (reason, status, payload)
        if content_type == "application/json":
            message = json.loads(payload)["message"]
        else:
            message = status_pb2.Status.FromString(payload).message
        assert reason in message, (reason, message)
        processes.assert_running()
    assert metric(port, "fraiseql_otlp_rejected_requests_total") >= len(bad)
    # Still serving after all that.
    assert post(port, url, request(pg(1, "SELECT 1", start_ns=now)).SerializeToString(),
                "application/x-protobuf")[0] == 200
    processes.assert_running()


def test_normalize_is_the_shared_one() -> None:
    # The receiver must use the project's normalizer, not a copy of its own.
    assert inspect.signature(SpanConverter).parameters["normalize"].default is normalize_sql


def test_full_buffer_answers_503_with_retry_after(tmp_path: Path, processes: Processes) -> None:
    """A broker that never answers keeps the recorder's buffer full: the receiver pushes back
    with the retryable 503 + Retry-After (the exporter resends the batch later), and a request
    larger than the whole buffer, admitted into an empty one, reports what did not fit."""
    unreachable = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    config = write_config(tmp_path / "otlp.toml", unreachable, sample_rate=1.0)
    port = start_receiver(config, processes, "--buffer-size", "5")
    now = time.time_ns()

    def batch(n: int) -> bytes:
        return request(*(pg(i + 1, f"SELECT {i}", start_ns=now) for i in range(n))).SerializeToString()

    status, payload, _ = post(port, "/v1/traces", batch(7), "application/x-protobuf")
    assert status == 200
    partial = ExportTraceServiceResponse.FromString(payload).partial_success
    assert partial.rejected_spans == 2 and "buffer" in partial.error_message
    status, payload, headers = post(port, "/v1/traces", batch(1), "application/x-protobuf")
    assert status == 503 and headers["Retry-After"] == "1"
    assert "buffer full" in status_pb2.Status.FromString(payload).message
    assert metric(port, 'fraiseql_otlp_rejected_requests_total{reason="overloaded"}') == 1
    assert metric(port, "fraiseql_otlp_events_dropped_total") == 2
    assert metric(port, "fraiseql_metrics_buffer_size") == 5
    processes.assert_running()
    processes.kill9("otlp")  # its five events could only wait out the delivery timeout


@pytest.mark.kafka
def test_the_bench_still_runs(kafka_bootstrap: str) -> None:
    """bench/bench_otlp.py gives the spans/s figure the README quotes: a smoke run, not a speed check."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "bench_otlp.py"), "--bootstrap",
                          kafka_bootstrap, "--batches", "4", "--json"], capture_output=True,
                         text=True, timeout=120, check=True, cwd=root)
    result = json.loads(out.stdout)
    assert result["statuses"] == {"200": 4}
    assert result["events_produced"] == result["events_acked"] == 4 * 50 * 6  # BEGIN/SET/COMMIT not
    assert result["spans_per_sec"] > 0
