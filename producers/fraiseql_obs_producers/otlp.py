"""OpenTelemetry database spans → query records: the pure half of the OTLP receiver.

:mod:`.otlp_server` is the HTTP half (``fraiseql-cli otlp``); this module only decodes an OTLP
``ExportTraceServiceRequest`` (binary protobuf or OTLP/JSON) and turns its PostgreSQL client spans
into :class:`DbQuery` records, which the server hands to the :class:`~.recorder.Recorder` (the
recorder samples, fingerprints, encodes and produces them, exactly as for an API process).

A span is a PostgreSQL query when ``db.system`` (or the stable ``db.system.name``) is
``postgresql`` and it carries ``db.statement`` (or the stable ``db.query.text``). From it:

* ``sql``: the statement through :func:`.normalize.normalize_sql` (every literal becomes ``$n``;
  transaction control and ``SET`` give None and are not recorded; text even PostgreSQL's lexer
  rejects becomes the normalizer's fixed "withheld" marker, so it is counted without its text).
  Python DB-API instrumentations (psycopg, psycopg2, dbapi, aiopg, SQLAlchemy) report the
  driver's client-side placeholders (``%s``, ``%(name)s``); those become ``$n`` first, as psycopg
  itself does before sending the query.
* ``execution_time_ms`` and ``db_round_trip_time_ms``: end minus start; ``occurred_at``: start.
* ``error``: when the span status is ERROR, ``error.type`` or the ``exception`` event's
  ``exception.type`` (class name without its module), else ``"Error"``.
* ``rows_returned``: ``db.response.returned_rows`` when the instrumentation reports it, else 0.
* ``query_name``: the GraphQL operation -- ``graphql.operation.name`` (OTel semantic conventions)
  or ``operation_name`` (FraiseQL 2.x's span field) on the span or its nearest ancestor within the
  same export, or an ancestor named like a GraphQL operation span (``query GetOrders``); failing
  that the nearest SERVER ancestor's name (``GET /orders``); failing that ``anonymous``.
* ``instance``: the resource's ``service.instance.id``, else ``host.name``, else ``service.name``.

Parents are looked up within one export request only: an SDK's batch processor may export a child
before its parent ends, in which case the child falls back as above (the receiver keeps no state
between requests, which keeps it bounded and horizontally scalable).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from .normalize import normalize_sql

__all__ = [
    "PYFORMAT_SCOPES",
    "SKIP_REASONS",
    "Conversion",
    "DbQuery",
    "OtlpDecodeError",
    "SpanConverter",
    "decode_json",
    "decode_protobuf",
    "encode_response",
    "pyformat_to_dollar",
]

# Why a PostgreSQL span gave no query record (label values of fraiseql_otlp_spans_skipped_total).
SKIP_REASONS: Final = (
    "no_statement",    # no db.statement / db.query.text (the instrumentation does not capture it)
    "not_recorded",    # transaction control or SET: never recorded (like the recorder's callers)
    "bad_timestamps",  # no start time, end before start, or longer than a day (a broken clock)
)
# Of those, the ones reported back to the client as rejected (OTLP partial success): bad data.
REJECTED_REASONS: Final = frozenset({"bad_timestamps"})

# Instrumentation scopes whose statements carry Python DB-API "pyformat" placeholders.
PYFORMAT_SCOPES: Final = frozenset({
    "opentelemetry.instrumentation.psycopg",
    "opentelemetry.instrumentation.psycopg2",
    "opentelemetry.instrumentation.dbapi",
    "opentelemetry.instrumentation.aiopg",
    "opentelemetry.instrumentation.sqlalchemy",
})

_SYSTEM_KEYS: Final = ("db.system.name", "db.system")
_STATEMENT_KEYS: Final = ("db.query.text", "db.statement")
_OPERATION_KEYS: Final = ("graphql.operation.name", "operation_name")
_WANTED: Final = frozenset({*_SYSTEM_KEYS, *_STATEMENT_KEYS, *_OPERATION_KEYS,
                            "db.response.returned_rows", "error.type"})
_OPERATION_SET: Final = frozenset(_OPERATION_KEYS)
_EXCEPTION_SET: Final = frozenset({"exception.type"})
_GRAPHQL_SPAN_NAME: Final = re.compile(
    r"(?:query|mutation|subscription)\s+([_A-Za-z][_0-9A-Za-z]*)\Z")
_PYFORMAT: Final = re.compile(r"%(?:\(([^)]*)\))?([sbt%])")
_KIND_SERVER: Final = Span.SpanKind.SPAN_KIND_SERVER
_STATUS_ERROR: Final = Status.StatusCode.STATUS_CODE_ERROR
_MAX_DURATION_NS: Final = 86_400 * 10**9
_MAX_ANCESTORS: Final = 64  # a parent chain longer than this is a cycle or garbage
_MAX_NAME: Final = 512


class OtlpDecodeError(ValueError):
    """The request body is not an ``ExportTraceServiceRequest``; the message says why."""


class DbQuery(NamedTuple):
    """One PostgreSQL query from one span, ready for :meth:`Recorder.record`."""

    query_name: str
    sql: str  # normalized: literals are $n
    occurred_at_us: int
    duration_ms: float
    rows_returned: int
    error: str | None
    instance: str | None


@dataclass(slots=True)
class Conversion:
    """What one export request held."""

    spans: int = 0
    db_spans: int = 0
    queries: list[DbQuery] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        """Spans to report as rejected (bad data), per OTLP partial success."""
        return sum(n for reason, n in self.skipped.items() if reason in REJECTED_REASONS)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def decode_protobuf(body: bytes) -> ExportTraceServiceRequest:
    """A binary protobuf ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise OtlpDecodeError(f"undecodable protobuf ExportTraceServiceRequest: {exc}") from None
    return request


def decode_json(body: bytes) -> ExportTraceServiceRequest:
    """An OTLP/JSON ``ExportTraceServiceRequest``.

    OTLP/JSON is the proto3 JSON mapping except that trace and span ids are hex, not base64; they
    are rewritten to base64 before the standard parser runs. Unknown fields are ignored, as the
    OTLP specification requires of receivers.
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise OtlpDecodeError(f"bad JSON: {exc}") from None
    except RecursionError:
        raise OtlpDecodeError("bad JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise OtlpDecodeError("bad JSON: an ExportTraceServiceRequest is a JSON object")
    try:
        _hex_ids_to_base64(document)
        request = ExportTraceServiceRequest()
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError) as exc:
        raise OtlpDecodeError(f"bad OTLP/JSON ExportTraceServiceRequest: {exc}") from None
    except RecursionError:
        raise OtlpDecodeError("bad OTLP/JSON: values nested too deeply") from None
    return request


_ID_KEYS: Final = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(document: dict[str, Any]) -> None:
    for resource_spans in _objects(document, "resourceSpans", "resource_spans"):
        for scope_spans in _objects(resource_spans, "scopeSpans", "scope_spans"):
            for span in _objects(scope_spans, "spans"):
                _convert_ids(span)
                for link in _objects(span, "links"):
                    _convert_ids(link)


def _objects(parent: dict[str, Any], *keys: str) -> Iterable[dict[str, Any]]:
    for key in keys:
        items = parent.get(key)
        if isinstance(items, list):
            yield from (item for item in items if isinstance(item, dict))


def _convert_ids(node: dict[str, Any]) -> None:
    for key in _ID_KEYS:
        value = node.get(key)
        if isinstance(value, str) and value:
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raise OtlpDecodeError(f"bad OTLP/JSON: {key} {value[:40]!r} is not hex") from None
            node[key] = base64.b64encode(raw).decode("ascii")


def encode_response(rejected: int, message: str, *, as_json: bool) -> bytes:
    """An ``ExportTraceServiceResponse``; ``partial_success`` set only when something was rejected."""
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if as_json:
        return json_format.MessageToJson(response, indent=None).encode()
    return response.SerializeToString()


def pyformat_to_dollar(statement: str) -> str:
    """psycopg's client-side placeholders as PostgreSQL's: ``%s``/``%b``/``%t`` → ``$1, $2 …``,
    ``%(name)s`` → one ``$n`` per distinct name, ``%%`` → ``%`` (the rule psycopg applies)."""
    if "%" not in statement:
        return statement
    names: dict[str, int] = {}
    position = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal position
        name, fmt = match.group(1), match.group(2)
        if fmt == "%" and name is None:
            return "%"
        if name is None:
            position += 1
            return f"${position}"
        if name not in names:
            position += 1
            names[name] = position
        return f"${names[name]}"

    return _PYFORMAT.sub(replace, statement)


def _attributes(kvs: Iterable[KeyValue], wanted: frozenset[str]) -> dict[str, AnyValue]:
    # A plain loop over the repeated field: the hot path (every span of every request).
    out: dict[str, AnyValue] = {}
    for kv in kvs:
        key = kv.key
        if key in wanted:
            out[key] = kv.value
    return out


def _first_str(attrs: dict[str, AnyValue], keys: tuple[str, ...]) -> str | None:
    """The first non-empty string value among ``keys`` (non-string values read as empty)."""
    for key in keys:
        value = attrs.get(key)
        if value is not None and value.string_value:
            return value.string_value
    return None


def _instance(attrs: dict[str, AnyValue]) -> str | None:
    found = _first_str(attrs, ("service.instance.id", "host.name", "service.name"))
    return found[:_MAX_NAME] if found else None


_RESOURCE_KEYS: Final = frozenset({"service.instance.id", "host.name", "service.name"})


class SpanConverter:
    """Turns export requests into :class:`DbQuery` records; see the module docstring.

    ``normalize`` is the SQL normalizer (default :func:`.normalize.normalize_sql`, which caches
    per distinct text and never raises). Stateless otherwise: safe to share between threads.
    """

    def __init__(self, normalize: Callable[[str], str | None] = normalize_sql) -> None:
        self._normalize = normalize

    def convert(self, request: ExportTraceServiceRequest) -> Conversion:
        result = Conversion()
        pending: list[tuple[Span, dict[str, AnyValue], str | None, bool]] = []
        for resource_spans in request.resource_spans:
            instance = _instance(_attributes(resource_spans.resource.attributes, _RESOURCE_KEYS))
            for scope_spans in resource_spans.scope_spans:
                pyformat = scope_spans.scope.name in PYFORMAT_SCOPES
                for span in scope_spans.spans:
                    result.spans += 1
                    attrs = _attributes(span.attributes, _WANTED)
                    if _first_str(attrs, _SYSTEM_KEYS) != "postgresql":
                        continue
                    result.db_spans += 1
                    pending.append((span, attrs, instance, pyformat))
        if not pending:
            return result
        names = _OperationNames(request)
        for span, attrs, instance, pyformat in pending:
            query = self._query(span, attrs, instance, pyformat, names, result)
            if query is not None:
                result.queries.append(query)
        return result

    def _query(self, span: Span, attrs: dict[str, AnyValue], instance: str | None, pyformat: bool,
               names: _OperationNames, result: Conversion) -> DbQuery | None:
        statement = _first_str(attrs, _STATEMENT_KEYS)
        if statement is None:
            result.skip("no_statement")
            return None
        start, end = span.start_time_unix_nano, span.end_time_unix_nano
        if start == 0 or end < start or end - start > _MAX_DURATION_NS:
            result.skip("bad_timestamps")
            return None
        sql = self._normalize(pyformat_to_dollar(statement) if pyformat else statement)
        if sql is None:
            result.skip("not_recorded")
            return None
        rows_value = attrs.get("db.response.returned_rows")
        rows = rows_value.int_value if rows_value is not None else 0
        return DbQuery(
            query_name=names.of(span, attrs),
            sql=sql,
            occurred_at_us=start // 1000,
            duration_ms=(end - start) / 1e6,
            rows_returned=max(rows, 0),
            error=_error(span, attrs) if span.status.code == _STATUS_ERROR else None,
            instance=instance,
        )


def _error(span: Span, attrs: dict[str, AnyValue]) -> str:
    name = _first_str(attrs, ("error.type",))
    if name is None:
        for event in span.events:
            if event.name == "exception":
                name = _first_str(_attributes(event.attributes, _EXCEPTION_SET),
                                  ("exception.type",))
                if name:
                    break
    if not name:
        return "Error"
    return name.rsplit(".", 1)[-1][:_MAX_NAME] or "Error"


class _OperationNames:
    """The GraphQL operation of a span, from its ancestors in one request (memoized per span)."""

    def __init__(self, request: ExportTraceServiceRequest) -> None:
        self._request = request
        self._index: dict[tuple[bytes, bytes], Span] | None = None
        self._memo: dict[tuple[bytes, bytes], str | None] = {}

    def _spans(self) -> dict[tuple[bytes, bytes], Span]:
        if self._index is None:
            self._index = {(span.trace_id, span.span_id): span
                           for resource_spans in self._request.resource_spans
                           for scope_spans in resource_spans.scope_spans
                           for span in scope_spans.spans}
        return self._index

    def of(self, span: Span, attrs: dict[str, AnyValue]) -> str:
        own = _first_str(attrs, _OPERATION_KEYS)
        if own is not None:
            return own[:_MAX_NAME]
        if not span.parent_span_id:
            return "anonymous"
        key = (span.trace_id, span.parent_span_id)
        if key not in self._memo:
            self._memo[key] = self._walk(key)
        return self._memo[key] or "anonymous"

    def _walk(self, key: tuple[bytes, bytes]) -> str | None:
        spans = self._spans()
        server_name: str | None = None
        for _ in range(_MAX_ANCESTORS):
            parent = spans.get(key)
            if parent is None:
                break
            name = _first_str(_attributes(parent.attributes, _OPERATION_SET),
                              _OPERATION_KEYS)
            if name is None:
                match = _GRAPHQL_SPAN_NAME.match(parent.name)
                name = match.group(1) if match else None
            if name is not None:
                return name[:_MAX_NAME]
            if server_name is None and parent.kind == _KIND_SERVER and parent.name:
                server_name = parent.name[:_MAX_NAME]
            if not parent.parent_span_id:
                break
            key = (parent.trace_id, parent.parent_span_id)
        return server_name
