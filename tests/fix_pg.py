"""PostgreSQL fixtures: the real server of ``scripts/stack`` (or a testcontainers one).

``FRAISEQL_TEST_DATABASE_URL`` names a superuser connection (default: the local stack). When a
Docker engine answers and ``FRAISEQL_TEST_CONTAINERS=1``, a ``testcontainers`` PostgreSQL is used
instead; without Docker (this project's CI) the local stack is used. Each test that asks for
``metrics_db`` gets a fresh, migrated database of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _docker_engine_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]  # noqa: PLC0415 - optional, only for the container path

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A superuser URL of a real PostgreSQL 15 server."""
    if os.environ.get("FRAISEQL_TEST_CONTAINERS") == "1" and _docker_engine_available():
        from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

        with PostgresContainer("postgres:15", driver=None) as container:
            yield container.get_connection_url()
        return
    url = os.environ.get("FRAISEQL_TEST_DATABASE_URL", DEFAULT_URL)
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.fail(f"no PostgreSQL at {url} ({exc}); start it with: scripts/stack up")
    yield url


def _with_dbname(url: str, dbname: str) -> str:
    """The same server URL with another database name (a URL, as the configuration requires)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


@contextmanager
def scratch_database(admin_url: str, prefix: str = "fraiseql_test") -> Iterator[str]:
    """A new empty database on the server of ``admin_url``, dropped afterwards (even if in use)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_dbname(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


@pytest.fixture
def fresh_db_url(pg_admin_url: str) -> Iterator[str]:
    """A new empty database, dropped after the test."""
    with scratch_database(pg_admin_url) as url:
        yield url


@pytest.fixture
def metrics_db(fresh_db_url: str) -> str:
    """A fresh database with the metrics schema migrated (superuser URL)."""
    from fraiseql_observability.metricsdb.migrate import migrate  # noqa: PLC0415 - the sink package owns the schema

    migrate(fresh_db_url)
    return fresh_db_url
