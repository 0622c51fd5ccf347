"""``fraiseql_observability.metricsdb.migrate`` and the roles it creates, against the real PostgreSQL of
scripts/stack."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

from fraiseql_obs_sinks.writer import RollupWriter
from fraiseql_observability.metricsdb.migrate import (
    PRECREATE_FUTURE_DAYS,
    PRECREATE_PAST_DAYS,
    MigrationError,
    load_migrations,
    migrate,
)
from tests.test_sink import make_rollup, make_table_stats, minute_us, role_url, scalar

pytestmark = pytest.mark.postgres

ALL_MIGRATIONS = [m.name for m in load_migrations()]


def partition_names(url: str, parent: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = %s::regclass ORDER BY 1", (f"fraiseql_metrics.{parent}",)
        ).fetchall()
    return [r[0] for r in rows]


def test_migrate_is_idempotent_and_precreates_partitions(fresh_db_url: str) -> None:
    assert ALL_MIGRATIONS[:2] == ["0001_initial", "0002_hourly_rollups"]
    assert migrate(fresh_db_url) == ALL_MIGRATIONS
    assert migrate(fresh_db_url) == []
    assert migrate(fresh_db_url) == []
    assert scalar(fresh_db_url, "SELECT count(*) FROM fraiseql_metrics.schema_migrations") == len(
        ALL_MIGRATIONS)
    today = datetime.now(UTC).date()
    expected = [f"p{(today + timedelta(days=d)):%Y%m%d}"
                for d in range(-PRECREATE_PAST_DAYS, PRECREATE_FUTURE_DAYS + 1)]
    for parent in ("rollups", "rollups_hourly", "table_stats"):
        assert partition_names(fresh_db_url, parent) == [f"{parent}_{e}" for e in expected]
    owner = scalar(fresh_db_url, "SELECT nspowner::regrole::text FROM pg_namespace"
                                 " WHERE nspname = 'fraiseql_metrics'")
    assert owner == "fraiseql_maintainer"


def test_concurrent_migrations_apply_once(fresh_db_url: str) -> None:
    results: list[list[str]] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        try:
            results.append(migrate(fresh_db_url))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    assert sorted(results) == [[], ALL_MIGRATIONS]
    assert scalar(fresh_db_url, "SELECT count(*) FROM fraiseql_metrics.schema_migrations") == len(
        ALL_MIGRATIONS)


def test_concurrent_migrations_of_two_databases_share_the_roles(
    fresh_db_url: str, pg_admin_url: str
) -> None:
    # Roles are cluster-wide: two databases migrated at once must not trip over each other.
    other = f"fraiseql_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other)))
    other_url = psycopg.conninfo.make_conninfo(pg_admin_url, dbname=other)
    try:
        results: list[list[str]] = []
        barrier = threading.Barrier(2)

        def run(url: str) -> None:
            barrier.wait()
            results.append(migrate(url))

        threads = [threading.Thread(target=run, args=(u,)) for u in (fresh_db_url, other_url)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert results == [ALL_MIGRATIONS, ALL_MIGRATIONS]
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(other)))


def test_edited_or_unknown_migrations_are_refused(metrics_db: str) -> None:
    with psycopg.connect(metrics_db, autocommit=True) as conn:
        conn.execute("UPDATE fraiseql_metrics.schema_migrations SET checksum = 'edited'")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(metrics_db)
    with psycopg.connect(metrics_db, autocommit=True) as conn:
        conn.execute("DELETE FROM fraiseql_metrics.schema_migrations")
        conn.execute("INSERT INTO fraiseql_metrics.schema_migrations (version, name, checksum)"
                     " VALUES (9999, '9999_future', 'x')")
    with pytest.raises(MigrationError, match="newer release"):
        migrate(metrics_db)


def test_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(MigrationError, match=r"cannot connect to postgresql://u:\*\*\*@"):
        migrate("postgresql://u:hunter2@127.0.0.1:1/x", connect_timeout_secs=1)


def test_ensure_partitions_guards(metrics_db: str) -> None:
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=90)
    with psycopg.connect(metrics_db, autocommit=True) as conn:
        call = "SELECT fraiseql_metrics.ensure_partitions(%s, %s)"
        created = [r[0] for r in conn.execute(call, (day, day + timedelta(hours=30))).fetchall()]
        assert created == [
            f"fraiseql_metrics.{t}_p{d:%Y%m%d}"
            for d in (day, day + timedelta(days=1)) for t in ("rollups", "rollups_hourly", "table_stats")
        ]
        assert conn.execute(call, (day, day + timedelta(days=2))).fetchall() == []
        assert conn.execute(call, (day, day)).fetchall() == []  # empty range
        with pytest.raises(pg_errors.ProgramLimitExceeded):
            conn.execute(call, (day, day + timedelta(days=5000)))
        # A detached partition must be reported, not silently skipped.
        name = f"rollups_p{day:%Y%m%d}"
        conn.execute(sql.SQL("ALTER TABLE fraiseql_metrics.rollups DETACH PARTITION {}").format(
            sql.Identifier("fraiseql_metrics", name)))
        with pytest.raises(pg_errors.ObjectNotInPrerequisiteState, match="not a partition"):
            conn.execute(call, (day, day + timedelta(hours=1)))


# --- roles ---------------------------------------------------------------------------------------


@pytest.fixture
def collector_url(metrics_db: str, pg_admin_url: str) -> Iterator[str]:
    with role_url(pg_admin_url, metrics_db, "fraiseql_collector") as url:
        yield url


@pytest.fixture
def analyst_url(metrics_db: str, pg_admin_url: str) -> Iterator[str]:
    with role_url(pg_admin_url, metrics_db, "fraiseql_analyst") as url:
        yield url


def refused(url: str, statement: str) -> bool:
    """True when PostgreSQL refuses ``statement`` for lack of privilege (or ownership)."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute(statement.encode())
        except pg_errors.InsufficientPrivilege:
            return True
    return False


def _today_partition() -> str:
    return f"fraiseql_metrics.rollups_p{datetime.now(UTC):%Y%m%d}"


def test_collector_writes_but_reads_and_changes_nothing_else(
    metrics_db: str, collector_url: str
) -> None:
    # What it must be able to do: the sink's whole write path, conflicts included.
    # One timestamp for both writes: two calls of minute_us() can straddle a minute boundary.
    window = minute_us(5)
    with RollupWriter(collector_url, pool_size=1) as writer:
        for _ in range(2):
            writer.write([make_rollup(window)], [make_table_stats(window)])
    assert scalar(metrics_db, "SELECT count(*) FROM fraiseql_metrics.rollups") == 1

    for statement in [
        "SELECT * FROM fraiseql_metrics.rollups",
        "SELECT fingerprint, count FROM fraiseql_metrics.rollups",
        "SELECT sketch_keys FROM fraiseql_metrics.rollups",
        "SELECT * FROM fraiseql_metrics.table_stats",
        "SELECT columns FROM fraiseql_metrics.table_stats",
        "SELECT * FROM fraiseql_metrics.table_stats_latest",
        "SELECT * FROM fraiseql_metrics.schema_migrations",
        "SELECT * FROM fraiseql_metrics.rollups_hourly",
        "SELECT * FROM fraiseql_metrics.retention_horizons",
        f"SELECT * FROM {_today_partition()}",
        "DELETE FROM fraiseql_metrics.rollups",
        "DELETE FROM fraiseql_metrics.patterns",
        "DELETE FROM fraiseql_metrics.table_stats",
        "DELETE FROM fraiseql_metrics.rollups_hourly",
        "UPDATE fraiseql_metrics.rollups_hourly SET count = 0",
        "INSERT INTO fraiseql_metrics.retention_horizons VALUES ('rollups', now(), now())",
        "TRUNCATE fraiseql_metrics.rollups",
        "UPDATE fraiseql_metrics.rollups SET rollup_id = gen_random_uuid()",
        "CREATE TABLE fraiseql_metrics.evil (x int)",
        "DROP TABLE fraiseql_metrics.patterns",
        "ALTER TABLE fraiseql_metrics.rollups ADD COLUMN evil int",
        f"DROP TABLE {_today_partition()}",
        f"INSERT INTO {_today_partition()} (rollup_id) VALUES (gen_random_uuid())",
        "INSERT INTO fraiseql_metrics.schema_migrations VALUES (2, 'x', 'x')",
    ]:
        assert refused(collector_url, statement), statement


def test_analyst_reads_only(metrics_db: str, analyst_url: str) -> None:
    with RollupWriter(metrics_db, pool_size=1) as writer:
        writer.write([make_rollup(minute_us(5))], [make_table_stats(minute_us(5))])
    for table in ("rollups", "rollups_hourly", "patterns", "table_stats", "table_stats_latest",
                  "schema_migrations"):
        assert scalar(analyst_url, f"SELECT count(*) FROM fraiseql_metrics.{table}") >= 1
    assert scalar(analyst_url, "SELECT count(*) FROM fraiseql_metrics.retention_horizons") == 0
    now = datetime.now(UTC)
    for statement in [
        "INSERT INTO fraiseql_metrics.patterns VALUES ('x', 'q', 's', now(), now())",
        "UPDATE fraiseql_metrics.patterns SET query_name = 'x'",
        "DELETE FROM fraiseql_metrics.rollups",
        "TRUNCATE fraiseql_metrics.table_stats",
        "CREATE TABLE fraiseql_metrics.evil (x int)",
        f"SELECT fraiseql_metrics.ensure_partitions('{now - timedelta(days=99)}', '{now}')",
        "SELECT fraiseql_metrics.refresh_hourly('{}', '{}', '{}', '{}')",
        "DELETE FROM fraiseql_metrics.rollups_hourly",
        f"DROP TABLE {_today_partition()}",
    ]:
        assert refused(analyst_url, statement), statement


def test_migrate_as_a_non_superuser_with_createrole(pg_admin_url: str) -> None:
    # Managed PostgreSQL (RDS, Cloud SQL) has no superuser: CREATEROLE + database owner suffices.
    user = f"t_migrator_{uuid.uuid4().hex[:8]}"
    dbname = f"fraiseql_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(sql.Identifier(user)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(dbname), sql.Identifier(user)))
    url = psycopg.conninfo.make_conninfo(pg_admin_url, dbname=dbname, user=user)
    try:
        assert migrate(url) == ALL_MIGRATIONS
        assert migrate(url) == []
        with RollupWriter(url, pool_size=1) as writer:
            writer.write([make_rollup(minute_us(60 * 24 * 30))])  # a backfilled day
        assert scalar(url, "SELECT count(*) FROM fraiseql_metrics.rollups") == 1
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(dbname)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))


def test_upgrade_from_0001_fills_the_hourly_level(
    fresh_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database migrated by the release before the hourly level, holding minute rollups.
    first = load_migrations()[:1]
    monkeypatch.setattr("fraiseql_observability.metricsdb.migrate.load_migrations", lambda: first)
    assert migrate(fresh_db_url) == ["0001_initial"]
    from fraiseql_obs_sinks.records import RollupRow  # noqa: PLC0415
    from fraiseql_obs_sinks.writer import _UPSERT_ROLLUPS, _rollup_params  # noqa: PLC0415

    old = minute_us(60 * 24 * 20)  # 20 days ago: no partition of it yet, hourly or not
    records = [make_rollup(old + i * 60_000_000, [1.0 + i], fingerprint=f"fp-{i % 2}")
               for i in range(90)] + [make_rollup(minute_us(30), [5.0])]
    days = {datetime.fromtimestamp(r["window_start"] / 1e6, UTC).date() for r in records}
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        for day in days:
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            conn.execute("SELECT fraiseql_metrics.ensure_partitions(%s, %s)",
                         (start, start + timedelta(days=1)))
        conn.cursor().executemany(_UPSERT_ROLLUPS,
                                  [_rollup_params(RollupRow.from_record(r)) for r in records])
    monkeypatch.undo()
    assert migrate(fresh_db_url) == ALL_MIGRATIONS[1:]
    assert scalar(fresh_db_url, "SELECT sum(count) FROM fraiseql_metrics.rollups_hourly") == 91.0
    assert scalar(fresh_db_url, "SELECT sum(windows) FROM fraiseql_metrics.rollups_hourly") == 91
    # Same totals per pattern and hour as the minute rows (here 1-minute windows: all in cells).
    mismatches = scalar(fresh_db_url, """
        SELECT count(*) FROM (
            SELECT fingerprint, region, date_bin('1 hour', window_start, '2000-01-01+00') AS h,
                   sum(count) AS c, sum(exec_sum_ms) AS e
            FROM fraiseql_metrics.rollups GROUP BY 1, 2, 3) AS m
        FULL JOIN fraiseql_metrics.rollups_hourly AS h
          ON (h.fingerprint, h.region, h.hour_start) = (m.fingerprint, m.region, m.h)
        WHERE h.count IS DISTINCT FROM m.c OR h.exec_sum_ms IS DISTINCT FROM m.e""")
    assert mismatches == 0
