"""The OTLP/HTTP trace receiver of ``fraiseql-cli otlp``: POST /v1/traces → query events.

HTTP per the OTLP specification (protocol/otlp.md, "OTLP/HTTP"): ``POST /v1/traces`` (and ``/``,
because some exporters -- FraiseQL 2.x's among them -- use a configured endpoint verbatim) with
``Content-Type: application/x-protobuf`` or ``application/json``, optionally
``Content-Encoding: gzip``. The response has the request's content type: an
``ExportTraceServiceResponse`` on success (``partial_success`` when spans were rejected), a
``google.rpc.Status`` carrying the reason on failure:

* 400 undecodable protobuf, bad JSON, bad gzip -- permanent, the client must not retry;
* 411 no Content-Length; 413 body (or its gunzipped form) over ``max_body_bytes``; 415 any other
  content type or encoding; 404 / 405 other paths and methods;
* 503 with ``Retry-After`` when the recorder's buffer cannot take the request's spans, or when
  ``max_concurrent`` requests are already being decoded. 503 is one of the four codes the
  specification calls retryable, so exporters back off and send the same batch again: under
  overload nothing is lost silently (an exporter that gives up counts its own drop).

Bounded memory: at most ``max_concurrent`` bodies of at most ``max_body_bytes`` are read and
decoded at once, at most ``max_connections`` connections are served (more are closed at once),
idle connections time out, and the recorder holds at most ``buffer_size`` events. The span →
event conversion is :mod:`.otlp`; sampling, fingerprints, encoding and Kafka are the
:class:`~.recorder.Recorder`'s, exactly as in an API process.

``GET /metrics`` serves the process's Prometheus metrics on the same port (the recorder's buffer
gauges and event counters, plus the ``fraiseql_otlp_*`` counters below); ``GET /healthz`` answers
200 while the recorder's sender runs.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest

from .otlp import SKIP_REASONS, OtlpDecodeError, SpanConverter, decode_json, decode_protobuf, encode_response
from .recorder import Recorder

__all__ = [
    "REJECT_REASONS",
    "OtlpReceiver",
    "OtlpServer",
    "Reply",
    "encode_status",
    "serve",
]

log = logging.getLogger(__name__)

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
_CONTENT_TYPES: Final = {PROTOBUF: "protobuf", "application/protobuf": "protobuf", JSON: "json"}
TRACE_PATHS: Final = frozenset({"/v1/traces", "/"})

# Why a request was refused (label values of fraiseql_otlp_rejected_requests_total).
REJECT_REASONS: Final = (
    "bad_protobuf", "bad_json", "bad_encoding", "unsupported_media_type", "too_large",
    "length_required", "overloaded", "busy", "not_found", "method_not_allowed", "internal",
)

_REQUESTS = Counter("fraiseql_otlp_requests", "OTLP/HTTP requests answered, by status code",
                    labelnames=["code"])
_REJECTED = Counter("fraiseql_otlp_rejected_requests", "OTLP/HTTP requests refused, by reason",
                    labelnames=["reason"])
_SPANS = Counter("fraiseql_otlp_spans_received", "Spans in decoded OTLP export requests")
_DB_SPANS = Counter("fraiseql_otlp_db_spans", "PostgreSQL client spans among them")
_PRODUCED = Counter("fraiseql_otlp_events_produced",
                    "Query events handed to the recorder and kept by its sampler (Kafka "
                    "acknowledgements: fraiseql_events_sent)")
_NOT_SAMPLED = Counter("fraiseql_otlp_events_not_sampled",
                       "PostgreSQL query spans the recorder's sampler did not keep")
_SKIPPED = Counter("fraiseql_otlp_spans_skipped",
                   "PostgreSQL spans that gave no query event, by reason", labelnames=["reason"])
_DROPPED = Counter("fraiseql_otlp_events_dropped",
                   "Query events of accepted requests the recorder dropped (buffer full: only "
                   "when one request holds more spans than the whole buffer)")
for _reason in REJECT_REASONS:
    _REJECTED.labels(reason=_reason)
for _reason in SKIP_REASONS:
    _SKIPPED.labels(reason=_reason)

# gRPC status codes in google.rpc.Status (the OTLP specification does not use them; they help).
_GRPC_CODES: Final = {400: 3, 404: 5, 405: 12, 411: 3, 413: 3, 415: 3, 500: 13, 503: 14}


def encode_status(code: int, message: str, *, as_json: bool) -> bytes:
    """A ``google.rpc.Status`` (fields 1 ``code``, 2 ``message``) -- two fields, encoded by hand
    rather than pulling in googleapis-common-protos for them."""
    if as_json:
        import json  # noqa: PLC0415 - only on the error path

        return json.dumps({"code": code, "message": message}).encode()
    text = message.encode()
    out = bytearray(b"\x08")
    _varint(code, out)
    out += b"\x12"
    _varint(len(text), out)
    return bytes(out + text)


def _varint(value: int, out: bytearray) -> None:
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  # close the connection after replying (the body was not read)


class OtlpReceiver:
    """The protocol logic, without sockets: body in, :class:`Reply` out. Thread-safe."""

    def __init__(self, recorder: Recorder, *, max_body_bytes: int = 4 << 20, max_concurrent: int = 4,
                 retry_after_secs: int = 1, converter: SpanConverter | None = None) -> None:
        if max_body_bytes < 1 or max_concurrent < 1 or retry_after_secs < 0:
            raise ValueError("max_body_bytes and max_concurrent must be >= 1, retry_after_secs >= 0")
        self.recorder = recorder
        self.max_body_bytes = max_body_bytes
        self.retry_after_secs = retry_after_secs
        self._converter = converter or SpanConverter()
        self._slots = threading.BoundedSemaphore(max_concurrent)
        # Check-room-then-record is one step, so two requests cannot both take the last room.
        self._record_lock = threading.Lock()

    # ------------------------------------------------------------------ admission

    def admit(self, content_type: str | None, content_encoding: str | None,
              content_length: str | None) -> Reply | None:
        """A refusal decided from the headers alone (before the body is read), or None."""
        media = (content_type or "").split(";", 1)[0].strip().lower()
        as_json = _CONTENT_TYPES.get(media) == "json"
        if media not in _CONTENT_TYPES:
            return self._refuse(415, "unsupported_media_type",
                                f"Content-Type {media or '(none)'!r} is not supported: use "
                                f"{PROTOBUF} or {JSON}", as_json=False)
        encoding = (content_encoding or "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            return self._refuse(415, "unsupported_media_type",
                                f"Content-Encoding {encoding!r} is not supported: use gzip or none",
                                as_json=as_json)
        if content_length is None:
            return self._refuse(411, "length_required", "Content-Length is required",
                                as_json=as_json, close=True)
        try:
            length = int(content_length)
        except ValueError:
            length = -1
        if length < 0:
            return self._refuse(400, "bad_encoding", f"bad Content-Length {content_length[:20]!r}",
                                as_json=as_json, close=True)
        if length > self.max_body_bytes:
            return self._refuse(413, "too_large", f"body of {length} bytes exceeds the "
                                f"{self.max_body_bytes}-byte limit: export smaller batches",
                                as_json=as_json, close=True)
        return None

    def acquire(self) -> bool:
        """A decoding slot (``max_concurrent`` bound); call :meth:`release` after :meth:`export`."""
        return self._slots.acquire(timeout=0.5)

    def release(self) -> None:
        self._slots.release()

    def busy(self, content_type: str | None) -> Reply:
        media = (content_type or "").split(";", 1)[0].strip().lower()
        return self._overloaded("busy", "too many concurrent export requests",
                                as_json=_CONTENT_TYPES.get(media) == "json", close=True)

    # ------------------------------------------------------------------ one request

    def export(self, body: bytes, content_type: str | None, content_encoding: str | None) -> Reply:
        """Decode, convert and record one admitted export request."""
        media = (content_type or "").split(";", 1)[0].strip().lower()
        as_json = _CONTENT_TYPES.get(media) == "json"
        if (content_encoding or "").strip().lower() == "gzip":
            try:
                body = self._gunzip(body)
            except _TooLarge:
                return self._refuse(413, "too_large", f"gunzipped body exceeds the "
                                    f"{self.max_body_bytes}-byte limit", as_json=as_json)
            except (zlib.error, EOFError) as exc:
                return self._refuse(400, "bad_encoding", f"bad gzip body: {exc}", as_json=as_json)
        try:
            request = decode_json(body) if as_json else decode_protobuf(body)
        except OtlpDecodeError as exc:
            return self._refuse(400, "bad_json" if as_json else "bad_protobuf", str(exc),
                                as_json=as_json)
        conversion = self._converter.convert(request)
        del request, body  # the decoded request is the big object: free it before recording
        queries = conversion.queries
        recorder = self.recorder
        dropped = 0
        kept = 0
        with self._record_lock:
            stats = recorder.stats()
            if not stats.running:
                return self._overloaded("overloaded", "the recorder is not running",
                                        as_json=as_json)
            if queries and stats.held and stats.held + len(queries) > stats.capacity:
                return self._overloaded(
                    "overloaded", f"query-event buffer full ({stats.held} of {stats.capacity} "
                    "held): retry later", as_json=as_json)
            record = recorder.record
            for q in queries:
                if record(query_name=q.query_name, sql=q.sql, execution_time_ms=q.duration_ms,
                          sql_generation_time_ms=0.0, db_round_trip_time_ms=q.duration_ms,
                          projection_time_ms=0.0, rows_returned=q.rows_returned, cache_hit=False,
                          error=q.error, occurred_at=q.occurred_at_us, instance=q.instance):
                    kept += 1
            if len(queries) > stats.capacity - stats.held:
                # Only a request larger than the whole buffer gets here (an empty buffer admits
                # it, or it could never be accepted): count what the recorder had to drop.
                after = recorder.stats()
                dropped = after.dropped["buffer_full"] - stats.dropped["buffer_full"]
        _SPANS.inc(conversion.spans)
        _DB_SPANS.inc(conversion.db_spans)
        _PRODUCED.inc(kept)
        _NOT_SAMPLED.inc(len(queries) - kept - dropped)
        for reason, count in conversion.skipped.items():
            _SKIPPED.labels(reason=reason).inc(count)
        if dropped:
            _DROPPED.inc(dropped)
        rejected = conversion.rejected + dropped
        message = ""
        if rejected:
            parts = [f"{n} {reason}" for reason, n in conversion.skipped.items()
                     if reason == "bad_timestamps"]
            if dropped:
                parts.append(f"{dropped} over the query-event buffer (export smaller batches)")
            message = "rejected spans: " + ", ".join(parts)
        _REQUESTS.labels(code="200").inc()
        return Reply(200, JSON if as_json else PROTOBUF,
                     encode_response(rejected, message, as_json=as_json))

    def _gunzip(self, body: bytes) -> bytes:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = inflater.decompress(body, self.max_body_bytes + 1)
        if len(out) > self.max_body_bytes or inflater.unconsumed_tail:
            raise _TooLarge
        if not inflater.eof:
            raise EOFError("truncated gzip stream")
        return out

    def _refuse(self, status: int, reason: str, message: str, *, as_json: bool,
                close: bool = False, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        _REJECTED.labels(reason=reason).inc()
        _REQUESTS.labels(code=str(status)).inc()
        return Reply(status, JSON if as_json else PROTOBUF,
                     encode_status(_GRPC_CODES.get(status, 2), message, as_json=as_json),
                     headers, close)

    def _overloaded(self, reason: str, message: str, *, as_json: bool, close: bool = False) -> Reply:
        return self._refuse(503, reason, message, as_json=as_json, close=close,
                            headers=(("Retry-After", str(self.retry_after_secs)),))

    def refuse(self, status: int, reason: str, message: str) -> Reply:
        """A refusal outside the export path (unknown path or method)."""
        return self._refuse(status, reason, message, as_json=False)


class _TooLarge(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: exporters reuse one connection
    server: OtlpServer
    timeout = 30.0  # an idle or stalled connection is closed after this (no slow-loris threads)

    def do_POST(self) -> None:
        receiver = self.server.receiver
        path = self.path.split("?", 1)[0]
        if path not in TRACE_PATHS:
            self._send(receiver.refuse(404, "not_found", f"no OTLP signal at {path[:100]!r}: "
                                       "traces go to /v1/traces"), close=True)
            return
        headers = self.headers
        refusal = receiver.admit(headers.get("Content-Type"), headers.get("Content-Encoding"),
                                 headers.get("Content-Length"))
        if refusal is not None:
            self._send(refusal, close=True)  # the body was not read: the connection cannot go on
            return
        if not receiver.acquire():
            self._send(receiver.busy(headers.get("Content-Type")))
            return
        try:
            body = self.rfile.read(int(headers["Content-Length"]))
            try:
                reply = receiver.export(body, headers.get("Content-Type"),
                                        headers.get("Content-Encoding"))
            except Exception:  # a bug must not take the receiver down: 500, logged, counted
                log.exception("OTLP export request failed")
                reply = receiver.refuse(500, "internal", "internal error (see the receiver's log)")
        finally:
            receiver.release()
        self._send(reply)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(Reply(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)))
        elif path == "/healthz":
            running = self.server.receiver.recorder.stats().running
            self._send(Reply(200 if running else 503, "text/plain",
                             b"ok\n" if running else b"recorder not running\n"))
        else:
            self._send(self.server.receiver.refuse(405, "method_not_allowed",
                                                   "GET serves /metrics and /healthz only"))

    def _send(self, reply: Reply, *, close: bool = False) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.close or close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class OtlpServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` (stdlib: no dependency) with a bound on open connections."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], receiver: OtlpReceiver, *,
                 max_connections: int = 256) -> None:
        self.receiver = receiver
        self.max_connections = max_connections
        self._open = 0
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            if self._open >= self.max_connections:
                full = True
            else:
                full = False
                self._open += 1
        if full:
            _REJECTED.labels(reason="busy").inc()
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that disconnects mid-request is normal; anything else is logged, not raised.
        log.debug("connection from %s failed", client_address, exc_info=True)


def serve(receiver: OtlpReceiver, host: str, port: int, stop: threading.Event, *,
          max_connections: int = 256, on_ready: Callable[[OtlpServer], None] | None = None) -> None:
    """Serve until ``stop`` is set, then stop accepting and close the recorder (flushing it)."""
    server = OtlpServer((host, port), receiver, max_connections=max_connections)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="fraiseql-otlp", daemon=True)
    thread.start()
    log.info("OTLP/HTTP receiver on http://%s:%d/v1/traces (metrics on /metrics)", host, server.port)
    if on_ready is not None:
        on_ready(server)
    try:
        while not stop.wait(1.0):
            if not thread.is_alive():
                break
    finally:
        server.shutdown()
        server.server_close()
        lost = receiver.recorder.close(timeout=10.0)
        log.info("OTLP receiver stopped (%d events undelivered)", lost)

