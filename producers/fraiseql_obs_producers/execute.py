"""Real-execution load: run the workload's SQL against an application database, record real timings.

:func:`run_real_workload` plays an API process: ``concurrency`` threads share a
``psycopg_pool.ConnectionPool`` of as many connections, each picks a pattern by the workload's
popularity, binds the pattern's generated arguments as server-side parameters (the SQL keeps its
FraiseQL ``$n`` placeholders: ``psycopg.RawCursor``), fetches, projects, and records the query
through a :class:`~fraiseql_obs_producers.recorder.Recorder` -- which samples by ``settings.sample_rate``
(plus
its always-keep-slow and errors rules) and sends to Kafka, exactly as inside a FraiseQL API.

Which patterns: by default the 17 core patterns of :func:`~fraiseql_obs_producers.workload.default_workload`
(``tail=0``), with their Zipf popularity renormalized. The generated long tail is left out:
its arguments are placeholder words that match almost nothing, so each tail query would be a
full scan that says nothing about the schema, and at 6 % of traffic they would dominate the
database time. Pass ``workload=`` to run anything else (every tail pattern does execute).

Timings, all measured on one ``time.perf_counter`` clock, so the parts add up to the total:

* ``sql_generation_time_ms`` -- picking the pattern and building its typed arguments (the part
  of FraiseQL's SQL generation this process really does; microseconds, not modelled);
* ``db_round_trip_time_ms`` -- pool checkout, execute and fetch of every row (server-side
  binding; psycopg prepares a statement after 5 executions, as an API does);
* ``projection_time_ms`` -- building the GraphQL response: JSONB rows are fetched as text and
  passed through into ``{"data": {"<query>": [...]}}`` (FraiseQL's JSON passthrough); other
  result shapes are serialized with ``json``;
* ``execution_time_ms`` -- the sum: from picking the query to the finished response.

A failed query (``statement_timeout`` → ``QueryCanceled``, a lost connection, a pool timeout) is
recorded with its error class name and counted per class in the report.

The :class:`ExecutionReport` holds every execution's duration per query name, so its p50/p95/p99
are exact (nearest rank over all executions, not the sampled events), plus the recorder's counters.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool, PoolTimeout

from fraiseql_observability.config import Settings
from fraiseql_observability.secrets import mask_secrets, mask_url
from fraiseql_observability.timeutil import now_micros

from .errors import LoadgenError, ProducerError
from .recorder import Recorder, RecorderStats
from .workload import QueryPattern, Workload, default_workload

__all__ = [
    "ExecutionError",
    "ExecutionReport",
    "QueryExecution",
    "bind_arguments",
    "configure_connection",
    "nearest_rank",
    "run_real_workload",
]

log = logging.getLogger(__name__)

MAX_CONCURRENCY: Final = 256
_PROGRESS_SECS: Final = 10.0


class ExecutionError(ProducerError):
    """The application database cannot serve the real-execution load (runtime failure)."""


def nearest_rank(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ascending values: the ``ceil(q·n)``-th smallest.

    Equal to :func:`fraiseql_obs_producers.loadgen.weighted_quantile` with unit weights; NaN when empty.
    """
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = min(n, max(1, math.ceil(q * n)))
    return float(sorted_values[rank - 1])


@dataclass(frozen=True, slots=True)
class QueryExecution:
    """Every execution of one query name during a run (exact, not sampled)."""

    query_name: str
    fingerprint: str
    sql: str
    executed: int
    errors: Mapping[str, int]  # error class -> executions that failed with it
    rows_returned: int  # summed over successful executions
    durations_ms: tuple[float, ...]  # execution_time_ms of every execution, in completion order
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @classmethod
    def build(cls, pattern: QueryPattern, durations: Sequence[float], errors: Mapping[str, int],
              rows: int) -> QueryExecution:
        ordered = sorted(durations)
        return cls(
            query_name=pattern.query_name, fingerprint=pattern.fingerprint, sql=pattern.sql,
            executed=len(durations), errors=dict(errors), rows_returned=rows,
            durations_ms=tuple(durations),
            p50_ms=nearest_rank(ordered, 0.50), p95_ms=nearest_rank(ordered, 0.95),
            p99_ms=nearest_rank(ordered, 0.99),
            mean_ms=math.fsum(ordered) / len(ordered) if ordered else math.nan,
            max_ms=ordered[-1] if ordered else math.nan,
        )


@dataclass(frozen=True, slots=True)
class ExecutionReport:
    """What one :func:`run_real_workload` call executed and recorded."""

    queries: Mapping[str, QueryExecution]  # by query name
    elapsed_secs: float
    concurrency: int
    region: str
    recorder: RecorderStats

    @property
    def executed(self) -> int:
        return sum(q.executed for q in self.queries.values())

    @property
    def errors(self) -> int:
        return sum(q.error_count for q in self.queries.values())

    @property
    def queries_per_sec(self) -> float:
        return self.executed / self.elapsed_secs if self.elapsed_secs > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready: totals, throughput, recorder counters, per-query percentiles."""
        def ms(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 3)

        return {
            "mode": "execute",
            "region": self.region,
            "concurrency": self.concurrency,
            "executed": self.executed,
            "errors": self.errors,
            "elapsed_secs": round(self.elapsed_secs, 3),
            "queries_per_sec": round(self.queries_per_sec, 1),
            "recorder": {"sampled": self.recorder.sampled, "sent": self.recorder.sent,
                         "dropped": {k: v for k, v in self.recorder.dropped.items() if v}},
            "queries": [
                {"query_name": q.query_name, "fingerprint": q.fingerprint, "executed": q.executed,
                 "errors": dict(q.errors), "rows_returned": q.rows_returned,
                 "mean_ms": ms(q.mean_ms), "p50_ms": ms(q.p50_ms), "p95_ms": ms(q.p95_ms),
                 "p99_ms": ms(q.p99_ms), "max_ms": ms(q.max_ms)}
                for q in sorted(self.queries.values(), key=lambda q: -q.executed)
            ],
        }


@dataclass(slots=True)
class _Tally:
    """One worker thread's results (merged after the threads end: no lock on the hot path)."""

    durations: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    rows: Counter[str] = field(default_factory=Counter)
    done: int = 0


def bind_arguments(params: Sequence[object]) -> tuple[object, ...]:
    """A pattern's generated arguments as bound to the server.

    A float argument is a price or an amount: bind it as numeric, as an API would, so that
    `(data->>'price')::numeric > $1` compares numerics (and could use a numeric index).
    """
    return tuple(Decimal(repr(v)) if isinstance(v, float) else v for v in params)


def _project(query_name: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> str:
    """The GraphQL response body: JSONB text passed through, other shapes serialized."""
    if len(columns) == 1 and columns[0] == "data":
        return '{"data":{' + json.dumps(query_name) + ":[" + ",".join(r[0] for r in rows) + "]}}"
    items = [dict(zip(columns, row, strict=True)) for row in rows]
    return json.dumps({"data": {query_name: items}}, default=str)


def configure_connection(conn: psycopg.Connection[Any], statement_timeout_ms: int | None = None) -> None:
    """Make ``conn`` run workload SQL as the API does: ``$n`` placeholders bound server-side
    (``RawCursor``), JSONB fetched as text, an optional ``statement_timeout``."""
    if statement_timeout_ms is not None:
        conn.execute(sql.SQL("SET statement_timeout = {}").format(
            sql.Literal(int(statement_timeout_ms))))
    conn.cursor_factory = psycopg.RawCursor
    # JSONB arrives as text: the API passes it through instead of parsing it.
    conn.adapters.register_loader("jsonb", TextLoader)


def _configure(statement_timeout_ms: int | None) -> Callable[[psycopg.Connection[Any]], None]:
    def configure(conn: psycopg.Connection[Any]) -> None:
        configure_connection(conn, statement_timeout_ms)
    return configure


def _check_tables(pool: ConnectionPool[Any], views: Sequence[str]) -> None:
    with pool.connection() as conn, conn.transaction():
        # The run's statement_timeout (1 ms, say, to provoke QueryCanceled) is for the workload,
        # not for this check: on a busy host it would cancel the check itself.
        conn.execute("SET LOCAL statement_timeout = 0")
        missing = [view for view in views
                   if conn.execute("SELECT to_regclass($1)", (view,)).fetchone() == (None,)]
    if missing:
        raise ExecutionError(
            f"the application database has no {', '.join(missing)}: build the demo database "
            "first (fraiseql-cli loadgen --execute --create-app-db, or "
            "fraiseql_obs_producers.appdb.create_demo_app_db)")


def _default_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}/execute"


def run_real_workload(
    settings: Settings,
    app_db_url: str,
    *,
    count: int | None = None,
    duration: float | None = None,
    seed: int = 0,
    concurrency: int = 2,
    workload: Workload | None = None,
    statement_timeout_ms: int | None = 30_000,
    stop: threading.Event | None = None,
    instance: str | None = None,
    connect_timeout: float = 15.0,
    flush_timeout: float = 30.0,
    producer_overrides: dict[str, Any] | None = None,
) -> ExecutionReport:
    """Execute workload queries against ``app_db_url`` and record each one (see module doc).

    Runs ``count`` queries in total, or for ``duration`` seconds, whichever ends first, or until
    ``stop`` is set (at least one of the three is required). Patterns are drawn by popularity
    from ``workload`` (default: the core patterns); each thread has its own generator seeded from
    ``seed``, so with ``count`` the multiset of executed queries is reproducible. Recording is
    enabled even if ``settings.enabled`` is false (recording is the point of this run); events go
    to ``settings.kafka.events_topic`` in region ``settings.kafka.region``. Waits up to
    ``flush_timeout`` at the end for Kafka to acknowledge; what is still unacknowledged is
    counted in ``report.recorder.dropped["shutdown"]``.

    Raises :class:`~fraiseql_obs_producers.errors.LoadgenError` on invalid arguments and
    :class:`ExecutionError` when the database is unreachable or lacks the workload's tables.
    """
    if count is not None and count < 0:
        raise LoadgenError(f"--count {count}: must be >= 0")
    if duration is not None and not duration > 0:
        raise LoadgenError(f"--duration {duration}: must be > 0")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise LoadgenError(f"--concurrency {concurrency}: allowed 1..{MAX_CONCURRENCY}")
    if count is None and duration is None and stop is None:
        raise LoadgenError("a real-execution run needs --count, --duration or a stop signal")
    if statement_timeout_ms is not None and statement_timeout_ms < 0:
        raise LoadgenError(f"statement_timeout_ms {statement_timeout_ms}: must be >= 0")
    workload = workload or default_workload(tail=0)
    by_name = {p.query_name: p for p in workload.patterns}

    pool: ConnectionPool[Any] = ConnectionPool(
        app_db_url, min_size=concurrency, max_size=concurrency, open=False,
        name="fraiseql-execute", timeout=connect_timeout,
        kwargs={"autocommit": True, "application_name": "fraiseql-loadgen-execute"},
        configure=_configure(statement_timeout_ms))
    try:
        pool.open(wait=True, timeout=connect_timeout)
    except PoolTimeout:
        pool.close()
        raise ExecutionError(f"application database {mask_url(app_db_url)} did not accept "
                             f"{concurrency} connection(s) within {connect_timeout:g} s") from None
    recorder: Recorder | None = None
    try:
        _check_tables(pool, sorted({p.view for p in workload.patterns}))
        recording = settings if settings.enabled else settings.model_copy(update={"enabled": True})
        recorder = Recorder(recording, instance=instance or _default_instance(),
                            producer_overrides=producer_overrides).start()
        tallies, elapsed = _run_threads(pool, recorder, workload, count, duration, seed,
                                        concurrency, stop)
    finally:
        pool.close()
        if recorder is not None:
            recorder.close(flush_timeout)
    assert recorder is not None  # for mypy: set before _run_threads could return

    durations: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, Counter[str]] = defaultdict(Counter)
    rows: Counter[str] = Counter()
    for tally in tallies:
        for name, values in tally.durations.items():
            durations[name].extend(values)
        for name, classes in tally.errors.items():
            errors[name].update(classes)
        rows.update(tally.rows)
    queries = {name: QueryExecution.build(by_name[name], values, errors[name], rows[name])
               for name, values in durations.items()}
    return ExecutionReport(queries=queries, elapsed_secs=elapsed, concurrency=concurrency,
                           region=settings.kafka.region, recorder=recorder.stats())


def _run_threads(pool: ConnectionPool[Any], recorder: Recorder, workload: Workload,
                 count: int | None, duration: float | None, seed: int, concurrency: int,
                 stop: threading.Event | None) -> tuple[list[_Tally], float]:
    halt = threading.Event()  # set by the deadline, the caller's stop, or a crashed thread
    started = time.monotonic()
    deadline = None if duration is None else started + duration
    quotas: list[int | None] = [None] * concurrency
    if count is not None:
        quotas = [count // concurrency + (1 if i < count % concurrency else 0)
                  for i in range(concurrency)]
    tallies = [_Tally() for _ in range(concurrency)]
    failures: list[BaseException] = []

    def work(index: int) -> None:
        try:
            _worker(pool, recorder, workload, random.Random(f"fraiseql-execute-{seed}-{index}"),  # noqa: S311
                    quotas[index], deadline, halt, tallies[index])
        except BaseException as exc:  # a bug, not a query error: stop everything and re-raise
            failures.append(exc)
            halt.set()

    threads = [threading.Thread(target=work, args=(i,), name=f"fraiseql-execute-{i}", daemon=True)
               for i in range(concurrency)]
    for thread in threads:
        thread.start()
    next_progress = started + _PROGRESS_SECS
    while alive := [t for t in threads if t.is_alive()]:
        if stop is not None and stop.is_set():
            halt.set()
        alive[0].join(0.1)
        now = time.monotonic()
        if now >= next_progress:
            done = sum(t.done for t in tallies)
            log.info("executed %d queries (%.1f/s)", done, done / (now - started))
            next_progress = now + _PROGRESS_SECS
    elapsed = time.monotonic() - started
    if failures:
        raise failures[0]
    return tallies, elapsed


def _worker(pool: ConnectionPool[Any], recorder: Recorder, workload: Workload, rng: random.Random,
            quota: int | None, deadline: float | None, halt: threading.Event,
            tally: _Tally) -> None:
    clock = time.perf_counter
    record = recorder.record
    while not halt.is_set() and (quota is None or tally.done < quota):
        if deadline is not None and time.monotonic() >= deadline:
            break
        occurred_us = now_micros()
        t0 = clock()
        pattern = workload.pick(rng)
        params = bind_arguments(pattern.params(rng))
        t1 = clock()
        error: str | None = None
        columns: list[str] = []
        rows: list[tuple[Any, ...]] = []
        try:
            with pool.connection() as conn:
                cursor = conn.execute(pattern.sql, params)
                rows = cursor.fetchall()
                columns = [c.name for c in cursor.description or ()]
        except (psycopg.Error, PoolTimeout) as exc:
            error = type(exc).__name__
            log.debug("%s failed: %s", pattern.query_name, mask_secrets(str(exc)))
        t2 = clock()
        if error is None:
            _project(pattern.query_name, columns, rows)
        t3 = clock()
        total_ms = (t3 - t0) * 1000.0
        record(query_name=pattern.query_name, sql=pattern.sql, execution_time_ms=total_ms,
               sql_generation_time_ms=(t1 - t0) * 1000.0,
               db_round_trip_time_ms=(t2 - t1) * 1000.0,
               projection_time_ms=(t3 - t2) * 1000.0,
               rows_returned=len(rows), cache_hit=False, error=error, occurred_at=occurred_us)
        tally.durations[pattern.query_name].append(total_ms)
        if error is None:
            tally.rows[pattern.query_name] += len(rows)
        else:
            tally.errors[pattern.query_name][error] += 1
        tally.done += 1
