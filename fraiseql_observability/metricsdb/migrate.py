"""Create or upgrade the metrics schema (``fraiseql-cli migrate``, SPEC §5 and §6).

Versioned SQL files ``migrations/NNNN_name.sql`` (beside this file) are applied in order, each in its own
transaction together with its row in ``fraiseql_metrics.schema_migrations`` — a migration is either
fully applied and recorded, or not at all. A session-level advisory lock makes concurrent runs
(two deploys starting at once) safe: the second waits, then finds nothing left to apply.

A recorded migration whose file changed since is an error rather than silently ignored: the
database would no longer match what the code says it is. So is a database that recorded a
migration this code does not know (it was migrated by a newer release).

Every run also makes sure the daily partitions from two days ago to seven days ahead exist, so a
freshly migrated database accepts writes without the sink needing to create anything.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import psycopg

from ..db import connect
from ..errors import FraiseqlError
from ..secrets import mask_secrets
from . import SCHEMA

__all__ = [
    "MIGRATIONS_DIR",
    "PRECREATE_FUTURE_DAYS",
    "PRECREATE_PAST_DAYS",
    "SCHEMA",
    "Migration",
    "MigrationError",
    "load_migrations",
    "migrate",
    "utc_day_start",
]

log = logging.getLogger(__name__)


class MigrationError(FraiseqlError):
    """The metrics schema cannot be created or upgraded (lock timeout, edited migration …)."""


MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
PRECREATE_PAST_DAYS: Final = 2
PRECREATE_FUTURE_DAYS: Final = 7
# Session advisory lock key ("FRQLMIGR" as a big-endian int8): one migrator per database at a time.
MIGRATION_LOCK_KEY: Final = int.from_bytes(b"FRQLMIGR", "big")
_FILE_NAME: Final = re.compile(r"^(?P<version>\d{4})_(?P<slug>[a-z0-9_]+)\.sql$")

_BOOTSTRAP: Final = b"""
CREATE SCHEMA IF NOT EXISTS fraiseql_metrics;
CREATE TABLE IF NOT EXISTS fraiseql_metrics.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    applied_by text NOT NULL DEFAULT pg_catalog.session_user()
);
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned SQL file."""

    version: int
    name: str  # file name without ".sql", e.g. "0001_initial"
    sql: bytes
    checksum: str  # sha256 of the file's bytes


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files of ``directory`` in version order; malformed names are an error."""
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lowercase_name.sql")
        data = path.read_bytes()
        migrations.append(
            Migration(int(match["version"]), path.stem, data, hashlib.sha256(data).hexdigest())
        )
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version in {directory}")
    return migrations


def utc_day_start(moment: datetime) -> datetime:
    """Midnight UTC of ``moment``'s UTC day (naive datetimes are taken as UTC)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    day = aware.astimezone(UTC).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _acquire_lock(conn: psycopg.Connection[tuple[object, ...]], timeout_secs: float) -> None:
    # pg_try_advisory_lock in a loop rather than pg_advisory_lock: a stuck migrator elsewhere must
    # turn into a clear error here, not into a deploy that hangs forever.
    deadline = time.monotonic() + timeout_secs
    delay = 0.05
    while True:
        row = conn.execute(
            "SELECT pg_catalog.pg_try_advisory_lock(%s)", (MIGRATION_LOCK_KEY,)
        ).fetchone()
        if row is not None and row[0]:
            return
        if time.monotonic() >= deadline:
            raise MigrationError(
                f"another migration of this database has held the lock for more than "
                f"{timeout_secs:g}s (advisory lock {MIGRATION_LOCK_KEY}); try again later"
            )
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _check_history(
    applied: dict[int, tuple[str, str]], migrations: list[Migration]
) -> list[Migration]:
    """Compare the recorded history with the files; return the migrations still to apply."""
    known = {m.version: m for m in migrations}
    unknown = sorted(set(applied) - set(known))
    if unknown:
        names = ", ".join(applied[v][0] for v in unknown)
        raise MigrationError(
            f"the database records migrations this code does not know ({names}): "
            "it was migrated by a newer release"
        )
    for version, (name, checksum) in applied.items():
        if known[version].checksum != checksum:
            raise MigrationError(
                f"migration {name} was changed after it was applied (checksum mismatch); "
                "add a new migration instead of editing an applied one"
            )
    return [m for m in migrations if m.version not in applied]


def migrate(
    url: str,
    *,
    lock_timeout_secs: float = 120.0,
    connect_timeout_secs: float = 10.0,
    now: datetime | None = None,
) -> list[str]:
    """Apply the pending migrations to the database at ``url``; return their names (in order).

    Idempotent: a second run returns ``[]``. Needs a superuser, or a user with CREATEROLE and
    CREATE on the database (it becomes a member of ``fraiseql_maintainer``).
    """
    migrations = load_migrations()
    conn = connect(url, application_name="fraiseql-migrate", autocommit=True,
                   connect_timeout=connect_timeout_secs, error=MigrationError)
    applied_now: list[str] = []
    try:
        _acquire_lock(conn, lock_timeout_secs)
        try:
            # Only when missing: CREATE SCHEMA IF NOT EXISTS still demands CREATE on the
            # database, which a maintainer running an up-to-date migrate need not have.
            exists = conn.execute(
                "SELECT to_regclass('fraiseql_metrics.schema_migrations') IS NOT NULL"
            ).fetchone()
            if not (exists and exists[0]):
                with conn.transaction():
                    conn.execute(_BOOTSTRAP)
            rows = conn.execute(
                "SELECT version, name, checksum FROM fraiseql_metrics.schema_migrations"
            ).fetchall()
            applied = {int(v): (str(n), str(c)) for v, n, c in rows}
            for migration in _check_history(applied, migrations):
                log.info("applying migration %s", migration.name)
                try:
                    with conn.transaction():
                        conn.execute(migration.sql)
                        conn.execute(
                            "INSERT INTO fraiseql_metrics.schema_migrations"
                            " (version, name, checksum) VALUES (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"migration {migration.name} failed and was rolled back: "
                        f"{mask_secrets(str(exc)).strip()}"
                    ) from None
                applied_now.append(migration.name)
            today = utc_day_start(now or datetime.now(UTC))
            with conn.transaction():
                created = conn.execute(
                    "SELECT fraiseql_metrics.ensure_partitions(%s, %s)",
                    (
                        today - timedelta(days=PRECREATE_PAST_DAYS),
                        today + timedelta(days=PRECREATE_FUTURE_DAYS + 1),
                    ),
                ).fetchall()
            if created:
                log.info("created %d partition(s)", len(created))
        finally:
            if not conn.closed and not conn.broken:
                conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    except psycopg.Error as exc:
        raise MigrationError(f"migration failed: {mask_secrets(str(exc)).strip()}") from None
    finally:
        conn.close()
    return applied_now
