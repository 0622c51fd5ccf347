"""A small psycopg "API" traced with the real OpenTelemetry SDK, run as a subprocess by
tests/test_otlp.py: ``python -m tests.otlp_app ENDPOINT DB_URL PROTOCOL PLAN_JSON``.

``opentelemetry-instrumentation-psycopg`` makes one CLIENT span per statement; the app wraps each
"GraphQL operation" in a parent span, and exports with the real OTLP/HTTP exporter (protobuf with
gzip, or JSON) through a BatchSpanProcessor, flushed after each operation so that a parent and its
children travel in one export request. Prints ``{"exports": N, "failures": M}``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from typing import Any

import psycopg
from opentelemetry import trace
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

STATUSES = ("paid", "shipped", "pending", "cancelled")


class CountingExporter(SpanExporter):
    """The real exporter, counting the results it returns (a failure must fail the test)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exports = 0
        self.failures = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        self.exports += 1
        if result is not SpanExportResult.SUCCESS:
            self.failures += 1
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def exporter_for(endpoint: str, protocol: str) -> SpanExporter:
    if protocol == "json":
        from opentelemetry.exporter.otlp.json.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as JsonExporter,
        )

        return JsonExporter(endpoint=endpoint, timeout=30)
    from opentelemetry.exporter.otlp.proto.http import Compression  # noqa: PLC0415
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

    return OTLPSpanExporter(endpoint=endpoint, timeout=30, compression=Compression.Gzip)


def run(endpoint: str, db_url: str, protocol: str, plan: dict[str, Any]) -> dict[str, int]:
    exporter = CountingExporter(exporter_for(endpoint, protocol))
    provider = TracerProvider(resource=Resource.create({
        "service.name": "otlp-test-app", "service.instance.id": f"app-{protocol}"}))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    trace.set_tracer_provider(provider)
    PsycopgInstrumentor().instrument()
    tracer = trace.get_tracer("otlp-test-app")
    with psycopg.connect(db_url, autocommit=True) as conn, conn.cursor() as cur:
        for i in range(plan["orders_by_status"]):
            # FraiseQL 0.5.x's shape: BEGIN / SET LOCAL / a query with the filter value inlined
            # / COMMIT, under the operation's span carrying graphql.operation.name.
            status = STATUSES[i % len(STATUSES)]
            with tracer.start_as_current_span("graphql.execute",
                                              attributes={"graphql.operation.name": "OrdersByStatus"}):
                cur.execute("BEGIN")
                cur.execute("SET LOCAL statement_timeout = 5000")
                cur.execute(f"SELECT data FROM tv_order WHERE (data ->> 'status') = '{status}' LIMIT 3")
                cur.execute("COMMIT")
            provider.force_flush()
        for i in range(plan["order_by_id"]):
            # A bound parameter (psycopg's %s) under a span named like a GraphQL operation.
            with tracer.start_as_current_span("query OrderById"):
                cur.execute("SELECT data FROM tv_order WHERE id = %s", (i + 1,))
            provider.force_flush()
        for _ in range(plan["broken"]):
            with tracer.start_as_current_span("graphql.execute",
                                              attributes={"graphql.operation.name": "Broken"}), \
                    contextlib.suppress(psycopg.errors.UndefinedTable):
                cur.execute("SELECT data FROM tv_missing WHERE id = 1")
            provider.force_flush()
        for i in range(plan["anonymous"]):
            cur.execute(f"SELECT count(*) FROM tv_order WHERE (data ->> 'total')::numeric > {i}")
        provider.force_flush()
    provider.shutdown()
    return {"exports": exporter.exports, "failures": exporter.failures}


if __name__ == "__main__":
    endpoint_arg, db_arg, protocol_arg, plan_arg = sys.argv[1:5]
    print(json.dumps(run(endpoint_arg, db_arg, protocol_arg, json.loads(plan_arg))))
