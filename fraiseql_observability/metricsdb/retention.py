"""Retention (``fraiseql-cli retention``): drop whole daily partitions, never DELETE rows.

A partition is expired when its *upper* bound is at or before ``now - retention_days``: it holds
nothing younger than the cut-off. Bounds are read from the catalog (``pg_get_expr`` of the
partition bound), not guessed from names, so hand-made partitions are handled correctly and a
DEFAULT or MAXVALUE partition is never touched.

Safe while the sink writes: ``DROP TABLE`` of a partition needs an ACCESS EXCLUSIVE lock on the
parent for an instant. Each drop runs in its own short transaction with a small
``lock_timeout`` — so it never queues writers behind it for long — and is retried with
back-off. ``DETACH … CONCURRENTLY`` would avoid the parent lock, but it cannot run inside a
transaction block and leaves a half-detached partition behind when interrupted; the lock is held
for milliseconds here, which does not justify that. Partitions that stay locked (a long analyst
query) are reported as an error after the others were dropped; the next run picks them up.

Two levels of rollups: the minute rows (``rollups``) may be kept for a shorter time
(``minute_retention_days``) than the hourly cells (``rollups_hourly``) and table statistics
(``retention_days``); long periods are then read from the hourly level. Dropping a minute
partition records, in the same transaction, ``retention_horizons('rollups')``: the hourly cells
before it can no longer be recomputed from minute rows (frozen); a very late rollup for such a
day is folded into its cell by the sink instead (migration 0005, ``sinks/DESIGN.md``).

Connect as a member of ``fraiseql_maintainer`` (the partitions' owner) or a superuser.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from ..db import connect
from ..errors import FraiseqlError
from ..secrets import mask_secrets, mask_url
from . import SCHEMA

__all__ = [
    "MINUTE_TABLE",
    "PARTITIONED_TABLES",
    "Partition",
    "RetentionError",
    "drop_expired_partitions",
    "list_partitions",
]

log = logging.getLogger(__name__)

PARTITIONED_TABLES: Final = ("rollups", "rollups_hourly", "table_stats")
MINUTE_TABLE: Final = "rollups"

_RECORD_HORIZON: Final = sql.SQL(
    "INSERT INTO {table} AS h (table_name, dropped_before) VALUES (%s, %s)"
    " ON CONFLICT (table_name) DO UPDATE SET"
    " dropped_before = GREATEST(h.dropped_before, EXCLUDED.dropped_before), updated_at = now()"
).format(table=sql.Identifier(SCHEMA, "retention_horizons"))

# Partitions of our partitioned tables with their bounds, parsed back to timestamptz in SQL (the
# bound text is printed in the session's TimeZone and read back in the same session).
_PARTITIONS: Final = """
SELECT n.nspname, c.relname, parent.relname,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), $$FROM \\('([^']+)'\\)$$))[1]::timestamptz,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), $$TO \\('([^']+)'\\)$$))[1]::timestamptz
FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_class parent ON parent.oid = i.inhparent
JOIN pg_catalog.pg_namespace pn ON pn.oid = parent.relnamespace
WHERE pn.nspname = %s AND parent.relname = ANY(%s)
ORDER BY 5 NULLS LAST, 2
"""


class RetentionError(FraiseqlError):
    """Some expired partitions could not be dropped; ``dropped`` lists those that were."""

    def __init__(self, message: str, dropped: list[str] | None = None) -> None:
        super().__init__(message)
        self.dropped: list[str] = dropped or []


@dataclass(frozen=True, slots=True)
class Partition:
    schema: str
    name: str
    parent: str
    lower: datetime | None  # None: MINVALUE, DEFAULT or not a plain range bound
    upper: datetime | None

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"


def list_partitions(conn: psycopg.Connection[tuple[object, ...]]) -> list[Partition]:
    """Every partition of the metrics tables, oldest upper bound first."""
    rows = conn.execute(_PARTITIONS, (SCHEMA, list(PARTITIONED_TABLES))).fetchall()
    partitions: list[Partition] = []
    for schema, name, parent, lower, upper in rows:
        partitions.append(
            Partition(
                str(schema),
                str(name),
                str(parent),
                lower if isinstance(lower, datetime) else None,
                upper if isinstance(upper, datetime) else None,
            )
        )
    return partitions


def _drop(
    conn: psycopg.Connection[tuple[object, ...]],
    partition: Partition,
    lock_timeout_secs: float,
    attempts: int,
) -> bool:
    """Drop one partition; False when its lock could not be had in ``attempts`` tries."""
    delay = 0.1
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)",
                    (f"{max(1, int(lock_timeout_secs * 1000))}ms",),
                )
                table = sql.Identifier(partition.schema, partition.name)
                if partition.parent == MINUTE_TABLE and partition.upper is not None:
                    # Same transaction as the drop: the horizon never claims more or less than
                    # what is really gone.
                    conn.execute(_RECORD_HORIZON, (partition.parent, partition.upper))
                conn.execute(sql.SQL("DROP TABLE {}").format(table))
            return True
        except pg_errors.LockNotAvailable:
            log.info("%s is busy (attempt %d of %d)", partition.qualified_name, attempt, attempts)
            if attempt < attempts:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
    return False


def drop_expired_partitions(
    url: str,
    retention_days: int,
    now: datetime | None = None,
    *,
    minute_retention_days: int | None = None,
    lock_timeout_secs: float = 1.0,
    attempts: int = 8,
) -> list[str]:
    """Drop the daily partitions entirely older than ``now - retention_days``.

    Minute rollups go after ``minute_retention_days`` instead when that is given (capped at
    ``retention_days``: minute rows without their hourly cells would serve no reader).
    Returns the qualified names dropped, oldest first. Raises :class:`RetentionError` (carrying
    the names that were dropped) when some expired partition stayed locked.
    """
    if retention_days < 1:
        raise ValueError("retention_days must be >= 1")
    if minute_retention_days is not None and minute_retention_days < 1:
        raise ValueError("minute_retention_days must be >= 1")
    moment = now if now is not None else datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    cutoff = moment - timedelta(days=retention_days)
    minute_days = min(retention_days, minute_retention_days or retention_days)
    cutoffs = {MINUTE_TABLE: moment - timedelta(days=minute_days)}
    dropped: list[str] = []
    busy: list[str] = []
    try:
        with connect(url, application_name="fraiseql-retention", autocommit=True,
                     error=RetentionError, what="the metrics database") as conn:
            conn.execute("SET TimeZone = 'UTC'")
            expired = [
                p for p in list_partitions(conn)
                if p.upper is not None and p.upper <= cutoffs.get(p.parent, cutoff)
            ]
            for partition in expired:
                if _drop(conn, partition, lock_timeout_secs, attempts):
                    log.info("dropped %s (up to %s)", partition.qualified_name, partition.upper)
                    dropped.append(partition.qualified_name)
                else:
                    busy.append(partition.qualified_name)
    except psycopg.Error as exc:
        raise RetentionError(
            f"retention on {mask_url(url)} failed after dropping {len(dropped)} partition(s): "
            f"{mask_secrets(str(exc)).strip()}",
            dropped,
        ) from None
    if busy:
        raise RetentionError(
            f"dropped {len(dropped)} partition(s); {len(busy)} stayed locked and were kept for "
            f"the next run: {', '.join(busy)}",
            dropped,
        )
    return dropped
