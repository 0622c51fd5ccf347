"""psycopg 3 instrumentation: every statement an application runs becomes a query event.

A recording cursor class goes where psycopg takes a ``cursor_factory`` (a connection, or a pool's
``kwargs={"cursor_factory": ...}``); nothing in the application changes::

    recorder = Recorder(settings).start()
    conn = psycopg.connect(url, cursor_factory=recording_cursor(recorder))
    pool = AsyncConnectionPool(url, kwargs={"cursor_factory": async_recording_cursor(recorder)})

    with operation_name("ordersByStatus"):   # the event's query_name (a contextvar)
        conn.execute("SELECT ... WHERE (data ->> 'status') = 'paid'")

Per ``execute()`` / ``executemany()`` / ``stream()`` the cursor measures the wall time of the call
(``execution_time_ms`` = ``db_round_trip_time_ms``; generation and projection happen in the
application and are 0 here), the rows (``rowcount``, or rows streamed) and the error class
(``type(exc).__name__``: never the message, which can quote values), then hands the statement to
:meth:`Recorder.record` -- which samples, buffers and never blocks or raises.

What is recorded is the text psycopg actually sent (after ``%s`` -> ``$n`` conversion and
``sql.Composed`` rendering, so values merged client-side are in it) passed through
:func:`~fraiseql_obs_producers.normalize.normalize_sql`: every literal becomes a ``$n``
placeholder before the text leaves the process, and transaction control and ``SET`` / ``SHOW``
statements are skipped. No argument value reaches Kafka: parameters are never read. The text goes
to the recorder as a :class:`~fraiseql_obs_producers.normalize.PendingSQL`, normalized by the
recorder's background thread and only for the events sampling keeps, so a new filter value
(FraiseQL 0.5.x inlines them: one normalizer miss each, 0.2-1.4 ms) never costs the request;
the request path only runs a cheap test for ``BEGIN`` / ``COMMIT`` / ``SET``.

The operation name comes from :data:`current_operation` (``set_operation_name`` /
``operation_name``); asyncio tasks inherit it, so setting it once per request (e.g. in FraiseQL's
``context_getter``, :mod:`fraiseql_obs_producers.fraiseql_app`) names every statement of the request.
Server-side (named) cursors and ``COPY`` are not recorded.

Cost on the caller's path per statement: see
``bench/bench_instrument.py`` (README "Recording a real API").
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, Final, TypeAlias

import psycopg
from psycopg import sql as pg_sql

from .normalize import PendingSQL, is_session_control
from .recorder import Recorder

__all__ = [
    "DEFAULT_OPERATION",
    "AsyncRecordingCursor",
    "RecordingCursor",
    "async_recording_cursor",
    "current_operation",
    "instrumentation_errors",
    "operation_name",
    "record_statement",
    "recording_cursor",
    "reset_operation_name",
    "set_operation_name",
]

# query_name of statements run outside any named operation (a migration, a health check ...).
DEFAULT_OPERATION: Final = "anonymous"
current_operation: ContextVar[str] = ContextVar("fraiseql_obs_operation",
                                                default=DEFAULT_OPERATION)

Params: TypeAlias = Sequence[Any] | Mapping[str, Any]
_clock = time.perf_counter_ns
# The instrumentation's own failures (never raised into the application), by exception class.
_ERRORS: dict[str, int] = {}


def instrumentation_errors() -> dict[str, int]:
    """Failures inside the recording path of this process, by exception class (should be empty)."""
    return dict(_ERRORS)


def set_operation_name(name: str | None) -> Token[str]:
    """Name the statements of the current context (``None``: :data:`DEFAULT_OPERATION`)."""
    return current_operation.set(name or DEFAULT_OPERATION)


def reset_operation_name(token: Token[str]) -> None:
    current_operation.reset(token)


@contextmanager
def operation_name(name: str | None) -> Iterator[None]:
    """``with operation_name("ordersByStatus"): ...`` -- the statements inside carry that name."""
    token = set_operation_name(name)
    try:
        yield
    finally:
        current_operation.reset(token)


def _sent_text(cursor: Any, query: Any) -> str | None:
    """The statement psycopg sent: its converted query (``$n``, Composed rendered), else ``query``."""
    # psycopg's PostgresQuery of this statement, captured by _convert_query below (its own
    # cursor._query is None once a statement is prepared, after 5 executions).
    pgq = getattr(cursor, "_obs_sent", None) or getattr(cursor, "_query", None)
    sent = getattr(pgq, "query", None)
    if isinstance(sent, bytes):
        return sent.decode("utf-8", "replace")
    if isinstance(query, str):
        return query
    if isinstance(query, bytes):
        return query.decode("utf-8", "replace")
    if isinstance(query, pg_sql.Composable):
        return query.as_string(cursor.connection)
    return None


def record_statement(recorder: Recorder, cursor: Any, query: Any, started_ns: int,
                     rows: int | None, error: BaseException | None) -> None:
    """Record one finished statement (the cursors' shared tail); never raises.

    ``rows`` None means the cursor's ``rowcount``.
    """
    elapsed_ms = (_clock() - started_ns) / 1e6
    try:
        text = _sent_text(cursor, query)
        if text is None:
            return
        if is_session_control(text):
            return
        if rows is None:
            rows = cursor.rowcount if error is None else 0
        recorder.record(
            # Normalized by the recorder's thread, for kept events only (PendingSQL).
            query_name=current_operation.get(), sql=PendingSQL(text), execution_time_ms=elapsed_ms,
            sql_generation_time_ms=0.0, db_round_trip_time_ms=elapsed_ms, projection_time_ms=0.0,
            rows_returned=rows if rows > 0 else 0, cache_hit=False,
            error=None if error is None else type(error).__name__)
    except Exception as exc:  # observability must never break the application's query
        name = type(exc).__name__
        _ERRORS[name] = _ERRORS.get(name, 0) + 1


class RecordingCursor(psycopg.Cursor[Any]):
    """A psycopg ``Cursor`` recording each statement into ``recorder`` (see :func:`recording_cursor`)."""

    recorder: Recorder  # set on the subclass recording_cursor() makes
    _obs_sent: Any = None

    def _convert_query(self, query: Any, params: Params | None = None) -> Any:
        # Every execute path (execute, executemany, stream) converts its query here.
        self._obs_sent = pgq = super()._convert_query(query, params)
        return pgq

    def execute(self, query: Any, params: Params | None = None, *,
                prepare: bool | None = None, binary: bool | None = None) -> Any:
        self._obs_sent = None  # a statement failing before conversion must not show the last one
        started = _clock()
        try:
            result = super().execute(query, params, prepare=prepare, binary=binary)
        except BaseException as exc:
            record_statement(self.recorder, self, query, started, 0, exc)
            raise
        record_statement(self.recorder, self, query, started, None, None)
        return result

    def executemany(self, query: Any, params_seq: Iterable[Params], *,
                    returning: bool = False) -> None:
        self._obs_sent = None
        started = _clock()
        try:
            super().executemany(query, params_seq, returning=returning)
        except BaseException as exc:
            record_statement(self.recorder, self, query, started, 0, exc)
            raise
        record_statement(self.recorder, self, query, started, None, None)

    def stream(self, query: Any, params: Params | None = None, *,
               binary: bool | None = None, size: int = 1) -> Iterator[Any]:
        # Timed until the iteration ends: it includes the consumer's work between rows.
        self._obs_sent = None
        started = _clock()
        rows = 0
        error: BaseException | None = None
        try:
            for row in super().stream(query, params, binary=binary, size=size):
                rows += 1
                yield row
        except BaseException as exc:
            error = exc
            raise
        finally:
            record_statement(self.recorder, self, query, started, rows, error)


class AsyncRecordingCursor(psycopg.AsyncCursor[Any]):
    """The ``AsyncCursor`` counterpart of :class:`RecordingCursor` (:func:`async_recording_cursor`)."""

    recorder: Recorder
    _obs_sent: Any = None

    def _convert_query(self, query: Any, params: Params | None = None) -> Any:
        # Every execute path (execute, executemany, stream) converts its query here.
        self._obs_sent = pgq = super()._convert_query(query, params)
        return pgq

    async def execute(self, query: Any, params: Params | None = None, *,
                      prepare: bool | None = None, binary: bool | None = None) -> Any:
        self._obs_sent = None
        started = _clock()
        try:
            result = await super().execute(query, params, prepare=prepare, binary=binary)
        except BaseException as exc:
            record_statement(self.recorder, self, query, started, 0, exc)
            raise
        record_statement(self.recorder, self, query, started, None, None)
        return result

    async def executemany(self, query: Any, params_seq: Iterable[Params], *,
                          returning: bool = False) -> None:
        self._obs_sent = None
        started = _clock()
        try:
            await super().executemany(query, params_seq, returning=returning)
        except BaseException as exc:
            record_statement(self.recorder, self, query, started, 0, exc)
            raise
        record_statement(self.recorder, self, query, started, None, None)

    async def stream(self, query: Any, params: Params | None = None, *,
                     binary: bool | None = None, size: int = 1) -> AsyncIterator[Any]:
        self._obs_sent = None
        started = _clock()
        rows = 0
        error: BaseException | None = None
        try:
            async for row in super().stream(query, params, binary=binary, size=size):
                rows += 1
                yield row
        except BaseException as exc:
            error = exc
            raise
        finally:
            record_statement(self.recorder, self, query, started, rows, error)


# One subclass per call, so a cursor reaches its recorder with one class-attribute read. Call it
# once per recorder (at pool creation), not per connection.


def recording_cursor(recorder: Recorder) -> type[RecordingCursor]:
    """A ``cursor_factory`` for ``psycopg.connect`` / ``ConnectionPool(kwargs=...)``."""
    return type("RecordingCursor", (RecordingCursor,), {"recorder": recorder})


def async_recording_cursor(recorder: Recorder) -> type[AsyncRecordingCursor]:
    """A ``cursor_factory`` for ``AsyncConnection.connect`` / ``AsyncConnectionPool(kwargs=...)``."""
    return type("AsyncRecordingCursor", (AsyncRecordingCursor,), {"recorder": recorder})
