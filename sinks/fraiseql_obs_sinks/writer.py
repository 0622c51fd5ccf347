"""Batched, idempotent writes of rollups and table statistics to the metrics database.

One call of :meth:`RollupWriter.write` is one transaction: every row of the batch is durable, or
none is. That is what lets the worker commit Kafka offsets only after the database commit, and
what makes a crash at any moment harmless — re-delivered messages are written again and overwrite.

Idempotency: rows are upserted on their primary key. A rollup's id is deterministic (uuid5 of
source topic, partition, pattern, region and window), so a re-delivered rollup overwrites the row
with identical data and never adds to it. The pattern catalogue keeps the earliest ``first_seen``
and latest ``last_seen``, which does not depend on the order batches arrive in.

Least privilege: each upsert passes its values as parameters in the ``DO UPDATE SET`` clause
instead of reading ``EXCLUDED.col``; reading ``EXCLUDED`` needs SELECT on every such column,
whereas this way the collector role only needs SELECT on the conflict-key columns.

Speed: new rollups — nearly all of them — go in with one ``INSERT … SELECT FROM unnest(<one
array parameter per column>) ON CONFLICT DO NOTHING RETURNING <key>``; only the keys that already
existed (re-deliveries) are then overwritten row by row by the upsert above (``executemany``,
pipelined). Per-row statements cost ~3× more, in Python parameter adaptation and server-side
statement overhead alike (bench/bench_sink.py). A COPY into a temporary table would need the
TEMP privilege and an UPDATE reading EXCLUDED-like data the collector may not read.

Hourly level: in the same transaction, the (fingerprint, region, hour, alpha) cells the batch
touched are recomputed from the minute rows by ``fraiseql_metrics.refresh_hourly`` (see
``migrations/0002_hourly_rollups.sql``). Recomputing rather than adding the batch to the hourly
row is what keeps the level idempotent: a re-delivered, duplicated or late rollup changes the
minute rows, and the cell is again exactly the merge of those. Windows that cross an hour boundary
belong to no cell (readers take them from the minute level).

Very late rollups: a rollup of an hour before the retention horizon (its day's minute rows are gone,
``minute_retention_days``) is folded into its frozen hourly cell by
``fraiseql_metrics.fold_hourly`` (``migrations/0005_fold_hourly.sql``: exactly once, by the rollup
ids the cell remembers) instead of being written to a re-created minute partition that the next
retention run would drop. The routing reads the horizon inside the writing transaction (a shared
row lock, so retention cannot move it under the batch). A rollup of a day whose hourly partition is
gone too (older than ``retention_days``) has no storage left: it is counted in
``fraiseql_sink_rollups_expired_total`` and logged, never written.

Partitions: before the transaction, the days of the batch that are not known to exist are created
through ``fraiseql_metrics.ensure_partitions`` in a short transaction of their own. Creating a
partition is idempotent and harmless to commit separately, and doing it inside the data
transaction would hold the partition lock until the whole batch is written.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool

from fraiseql_observability.config import DatabaseSettings
from fraiseql_observability.secrets import mask_secrets
from fraiseql_observability.timeutil import EPOCH, HOUR

from .errors import RecordRejected, WriteFailed
from .metrics import EXPIRED_ROLLUPS, LAST_WRITE, ROWS_WRITTEN
from .records import DEFAULT_LIMITS, RecordLimits, RollupRow, TableStatsRow
from .statements import (
    ENSURE_PARTITIONS,
    FOLD_HOURLY,
    INSERT_NEW_ROLLUPS,
    REFRESH_HOURLY,
    ROLLUPS_HORIZON,
    UPSERT_PATTERNS,
    UPSERT_ROLLUPS,
    UPSERT_TABLE_STATS,
    HourlyCell,
    cell_arrays,
    fold_document,
    rollup_arrays,
    rollup_params,
    stats_params,
)

__all__ = [
    "HOUR",  # re-exported from fraiseql_observability.timeutil
    "HourlyCell",  # re-exported from .statements
    "RollupWriter",
    "WriteResult",
    "hour_start",
    "hourly_cells",
    "split_by_horizon",
]

log = logging.getLogger(__name__)

MAX_ACQUIRE_SECS: Final = 5.0
# How long the writer trusts its last reading of the retention horizon when choosing which days
# need minute partitions (the transaction reads it again before routing any row).
HORIZON_TTL_SECS: Final = 30.0

# The statement and parameters that write minute rollups the way the sink does; tests/test_migrate.py
# imports them from here under these names.
_UPSERT_ROLLUPS: Final = UPSERT_ROLLUPS
_rollup_params: Final = rollup_params


def hour_start(moment: datetime) -> datetime:
    """The UTC hour ``moment`` falls in (exact: no float arithmetic)."""
    return moment - (moment - EPOCH) % HOUR


def hourly_cells(rollups: Iterable[RollupRow]) -> list[HourlyCell]:
    """The hourly cells holding these rollups, sorted; windows crossing an hour are in none."""
    cells: set[HourlyCell] = set()
    for row in rollups:
        hour = hour_start(row.window_start)
        if row.window_end <= hour + HOUR:
            cells.add((row.fingerprint, row.region, hour, row.sketch_alpha))
    return sorted(cells)


def split_by_horizon(
    rollups: Sequence[RollupRow], horizon: datetime | None
) -> tuple[list[RollupRow], list[RollupRow]]:
    """``(minute, fold)``: rollups of hours before ``horizon`` that belong to a cell are folded
    into the hourly level; everything else is written as minute rows. Order is kept."""
    if horizon is None:
        return list(rollups), []
    minute: list[RollupRow] = []
    fold: list[RollupRow] = []
    for row in rollups:
        hour = hour_start(row.window_start)
        if hour < horizon and row.window_end <= hour + HOUR:
            fold.append(row)
        else:
            minute.append(row)
    return minute, fold


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one committed batch contained."""

    rollups: int = 0
    patterns: int = 0
    table_stats: int = 0
    partitions_created: tuple[str, ...] = ()
    hourly_cells: int = 0  # cells of rollups_hourly recomputed (and holding data)
    folded: int = 0  # very late rollups folded into frozen hourly cells (new ones only)
    expired: int = 0  # rollups with no storage left (older than retention_days), not written


@dataclass(slots=True)
class _Pattern:
    fingerprint: str
    query_name: str
    sql: str
    first_seen: datetime
    last_seen: datetime

    def add(self, row: RollupRow) -> None:
        self.first_seen = min(self.first_seen, row.window_start)
        self.last_seen, self.query_name, self.sql = max(
            (self.last_seen, self.query_name, self.sql), (row.window_end, row.query_name, row.sql)
        )


def _patterns(rollups: Iterable[RollupRow]) -> list[_Pattern]:
    """One catalogue row per fingerprint: earliest window start, latest window end."""
    found: dict[str, _Pattern] = {}
    for row in rollups:
        pattern = found.get(row.fingerprint)
        if pattern is None:
            found[row.fingerprint] = _Pattern(
                row.fingerprint, row.query_name, row.sql, row.window_start, row.window_end
            )
        else:
            pattern.add(row)
    return [found[k] for k in sorted(found)]


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _runs(days: Sequence[date]) -> list[tuple[date, date]]:
    """Sorted days grouped into contiguous runs ``(first, last)``."""
    runs: list[tuple[date, date]] = []
    for day in days:
        if runs and day - runs[-1][1] == timedelta(days=1):
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def _is_missing_partition(exc: psycopg.Error) -> bool:
    return isinstance(exc, pg_errors.CheckViolation) and "no partition" in (
        exc.diag.message_primary or ""
    )


def _session_kwargs(application_name: str, timeout_secs: float) -> dict[str, Any]:
    """The pool's connection parameters, set as :func:`fraiseql_observability.db.connect` sets
    them for a single session: named in ``pg_stat_activity``, connect and statement timeouts."""
    return {
        "autocommit": True,  # transactions are explicit: conn.transaction()
        "connect_timeout": max(1, round(timeout_secs)),
        "application_name": application_name,
        "options": f"-c statement_timeout={int(timeout_secs * 1000)}",
    }


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return mask_secrets(f"{type(exc).__name__}: {text}")


class RollupWriter:
    """Writes batches of rollups and table statistics; safe to share between threads.

    ``url`` names the metrics database and the role to write as (normally a member of
    ``fraiseql_collector``). ``pool_size`` bounds the connections; ``timeout_secs`` is the connect
    timeout and the statement timeout (a free connection is awaited at most 5 s of it).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        timeout_secs: float = 30.0,
        lock_timeout_secs: float = 5.0,
        limits: RecordLimits = DEFAULT_LIMITS,
        application_name: str = "fraiseql-sink",
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        self.timeout_secs = timeout_secs
        self.lock_timeout_secs = lock_timeout_secs
        self.limits = limits
        self._known_days: set[date] = set()
        self._horizon: tuple[float, datetime | None] | None = None  # (read at, value)
        self._pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=_session_kwargs(application_name, timeout_secs),
            # How long write() waits for a connection. psycopg_pool makes new connection attempts
            # only when a request arrives (then with a doubling delay, for up to
            # reconnect_timeout); a request that outlives those attempts just sleeps. Keeping both
            # short while the database is down hands the pacing to the caller's retry loop, so
            # the sink notices a recovered database within a second or two instead of after
            # the pool's own back-off.
            timeout=min(timeout_secs, MAX_ACQUIRE_SECS),
            reconnect_timeout=min(timeout_secs, MAX_ACQUIRE_SECS),
            # A connection that died while idle (server restart) is replaced before use instead of
            # failing the next batch.
            check=ConnectionPool.check_connection,
            name=application_name,
            open=False,
        )
        # Do not wait: a database that is down at start is the retry loop's business.
        self._pool.open(wait=False)

    @classmethod
    def from_settings(
        cls, database: DatabaseSettings, *, limits: RecordLimits = DEFAULT_LIMITS
    ) -> RollupWriter:
        return cls(
            database.url.get_secret_value(),
            pool_size=database.pool_size,
            timeout_secs=database.timeout_secs,
            limits=limits,
        )

    # --- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> RollupWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- partitions -----------------------------------------------------------------------------

    def forget_partitions(self) -> None:
        """Drop the cache of days known to have partitions (after retention, or an error)."""
        self._known_days.clear()

    def ensure_partitions(self, start: datetime, end: datetime) -> list[str]:
        """Create the missing daily partitions covering ``[start, end)``; return their names."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                # A long analyst query must not make the sink queue every writer behind its lock.
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)",
                    (f"{int(self.lock_timeout_secs * 1000)}ms",),
                )
                rows = conn.execute(ENSURE_PARTITIONS, (start, end)).fetchall()
        except psycopg.Error as exc:
            raise WriteFailed(f"cannot create partitions: {_describe(exc)}") from None
        created = [str(r[0]) for r in rows]
        if created:
            log.info("created partitions %s", ", ".join(created))
        return created

    def _ensure_days(self, days: set[date]) -> list[str]:
        missing = sorted(days - self._known_days)
        created: list[str] = []
        # One call per contiguous run: two far-apart backfilled days must not create every day
        # in between.
        for first, last in _runs(missing):
            end = _day_start(last) + timedelta(days=1)
            created += self.ensure_partitions(_day_start(first), end)
        self._known_days.update(missing)
        return created

    # --- writing --------------------------------------------------------------------------------

    def write(
        self,
        rollups: Iterable[RollupRow | Mapping[str, Any]] = (),
        table_stats: Iterable[TableStatsRow | Mapping[str, Any]] = (),
    ) -> WriteResult:
        """Upsert one batch in one transaction.

        Accepts validated rows or decoded record dicts (validated here; an invalid one raises
        :class:`~fraiseql_obs_sinks.errors.InvalidRecord` before anything is written). Raises
        :class:`~fraiseql_obs_sinks.errors.RecordRejected` when PostgreSQL refuses the data and
        :class:`~fraiseql_obs_sinks.errors.WriteFailed` for everything else (retry the same batch).
        """
        # Duplicates inside one batch keep the last occurrence, as sequential re-delivery would.
        rollup_rows: dict[tuple[uuid.UUID, datetime], RollupRow] = {}
        for item in rollups:
            row = (
                item
                if isinstance(item, RollupRow)
                else RollupRow.from_record(item, limits=self.limits)
            )
            rollup_rows[row.key] = row
        stats_rows: dict[tuple[uuid.UUID, str, str, datetime], TableStatsRow] = {}
        for stats_item in table_stats:
            stats = (
                stats_item
                if isinstance(stats_item, TableStatsRow)
                else TableStatsRow.from_record(stats_item, limits=self.limits)
            )
            stats_rows[stats.key] = stats
        if not rollup_rows and not stats_rows:
            return WriteResult()
        # A consistent order of row locks between concurrent sinks: no deadlocks.
        ordered_rollups = [rollup_rows[k] for k in sorted(rollup_rows)]
        ordered_stats = [stats_rows[k] for k in sorted(stats_rows)]
        patterns = _patterns(ordered_rollups)
        for attempt in (1, 2):
            try:
                minute, _ = split_by_horizon(ordered_rollups, self._cached_horizon())
                days = {r.day for r in minute} | {s.day for s in ordered_stats}
                created = self._ensure_days(days)
                cells, folded, expired = self._write(ordered_rollups, patterns, ordered_stats)
                break
            except psycopg.Error as exc:
                self.forget_partitions()
                if attempt == 1 and _is_missing_partition(exc):
                    # A partition of a cached day was dropped (retention): create it again.
                    continue
                if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
                    raise RecordRejected(_describe(exc), exc.sqlstate) from None
                raise WriteFailed(_describe(exc)) from None
            except WriteFailed:
                self.forget_partitions()
                raise
        if expired:
            EXPIRED_ROLLUPS.inc(len(expired))
            log.warning(
                "%d rollup(s) older than the metrics database keeps (retention_days: no hourly "
                "partition left for their day) were not written, e.g. %s of %s",
                len(expired), expired[0][0], expired[0][1].isoformat())
        LAST_WRITE.set(time.time())
        ROWS_WRITTEN.labels("rollups").inc(len(ordered_rollups))
        ROWS_WRITTEN.labels("patterns").inc(len(patterns))
        ROWS_WRITTEN.labels("table_stats").inc(len(ordered_stats))
        ROWS_WRITTEN.labels("rollups_hourly").inc(cells + folded)
        return WriteResult(len(ordered_rollups), len(patterns), len(ordered_stats), tuple(created),
                           cells, folded, len(expired))

    def _cached_horizon(self) -> datetime | None:
        """The retention horizon of the minute rows, re-read at most every HORIZON_TTL_SECS."""
        now = time.monotonic()
        if self._horizon is None or now - self._horizon[0] > HORIZON_TTL_SECS:
            with self._pool.connection() as conn:
                row = conn.execute(ROLLUPS_HORIZON).fetchone()
            value = row[0] if row is not None and isinstance(row[0], datetime) else None
            self._horizon = (now, value)
        return self._horizon[1]

    def _write(
        self,
        rollups: Sequence[RollupRow],
        patterns: Sequence[_Pattern],
        table_stats: Sequence[TableStatsRow],
    ) -> tuple[int, int, list[tuple[uuid.UUID, datetime]]]:
        """One transaction; returns the hourly cells recomputed, the rollups folded into frozen
        cells, and the keys of the rollups that had no storage left."""
        refreshed = 0
        folded = 0
        expired: list[tuple[uuid.UUID, datetime]] = []
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if rollups:
                # Read under a shared lock: retention cannot move it until this commits.
                row = cur.execute(ROLLUPS_HORIZON).fetchone()
                horizon = row[0] if row is not None and isinstance(row[0], datetime) else None
                self._horizon = (time.monotonic(), horizon)
                rollups, fold = split_by_horizon(rollups, horizon)
                if fold:
                    skipped = cur.execute(FOLD_HOURLY, (json.dumps(fold_document(fold)),)).fetchall()
                    expired = [(k[0], k[1]) for k in skipped if k[2] == "expired"]
                    folded = len(fold) - len(skipped)
            if rollups:
                inserted = {
                    (key[0], key[1])
                    for key in cur.execute(INSERT_NEW_ROLLUPS, rollup_arrays(rollups)).fetchall()
                }
                # Re-deliveries (rare but routine): overwrite, in the same key order.
                existing = [r for r in rollups if r.key not in inserted]
                if existing:
                    cur.executemany(UPSERT_ROLLUPS, [rollup_params(r) for r in existing])
                # In the same transaction: the hourly level never disagrees with the minute rows
                # readers can see, and a crash leaves neither written.
                cells = hourly_cells(rollups)
                if cells:
                    row = cur.execute(REFRESH_HOURLY, cell_arrays(cells)).fetchone()
                    refreshed = int(row[0]) if row is not None and row[0] is not None else 0
            if patterns:
                cur.execute(
                    UPSERT_PATTERNS,
                    (
                        [p.fingerprint for p in patterns],
                        [p.query_name for p in patterns],
                        [p.sql for p in patterns],
                        [p.first_seen for p in patterns],
                        [p.last_seen for p in patterns],
                    ),
                )
            if table_stats:
                cur.executemany(UPSERT_TABLE_STATS, [stats_params(s) for s in table_stats])
        return refreshed, folded, expired
