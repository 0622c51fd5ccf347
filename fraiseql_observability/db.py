"""The one way this project opens a PostgreSQL session.

Every stage connects through :func:`connect`, so each session is named in ``pg_stat_activity``
(``application_name``), bounded (``connect_timeout``, ``statement_timeout``), read-only where it
only reads, and a failure to connect becomes the caller's own error with the password masked.
Errors read as one line (no SQL caret), and a metrics database that was never migrated is named
as such, with the command that fixes it (:func:`require_migrated`, :func:`describe_error`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import psycopg

from .errors import FraiseqlError
from .metricsdb import SCHEMA
from .secrets import mask_secrets, mask_url

__all__ = [
    "METRICS_FUNCTIONS", "METRICS_RELATIONS", "DatabaseUnreachable", "NotMigrated", "connect",
    "describe_error", "is_not_migrated", "not_migrated_message", "require_migrated",
]

# What the workers and readers use; the newest migration's objects are among them, so a database
# migrated by an older release is caught too.
METRICS_RELATIONS: Final = ("rollups", "rollups_hourly", "patterns", "table_stats")
METRICS_FUNCTIONS: Final = ("ensure_partitions", "fold_hourly", "rollups_horizon")
# undefined_table, invalid_schema_name, undefined_function
_MISSING_OBJECT_STATES: Final = frozenset({"42P01", "3F000", "42883"})


class DatabaseUnreachable(FraiseqlError):
    """No session could be opened (server down, wrong address, refused login)."""


class NotMigrated(FraiseqlError):
    """The metrics database lacks the schema objects this release uses."""


def not_migrated_message(url: str, missing: str = "") -> str:
    masked = mask_url(url)
    state = f"is not migrated ({missing} missing)" if missing else "is not migrated"
    return f"metrics database {masked} {state}: run `fraiseql-cli migrate --database {masked}`"


def is_not_migrated(exc: BaseException) -> bool:
    """True for "relation/schema/function fraiseql_metrics.… does not exist"."""
    return (isinstance(exc, psycopg.Error) and exc.sqlstate in _MISSING_OBJECT_STATES
            and SCHEMA in str(exc))


def describe_error(exc: BaseException, url: str | None = None) -> str:
    """A database error as one line, passwords masked (for messages and logs).

    The server's message with its DETAIL and HINT, without the echoed SQL and its caret. A missing
    ``fraiseql_metrics`` object adds what to run (with ``url``, masked, when the caller knows it).
    """
    diag = exc.diag if isinstance(exc, psycopg.Error) else None
    if diag is not None and diag.message_primary:
        parts = [diag.message_primary, diag.message_detail, diag.message_hint]
    else:
        parts = [line.strip() for line in str(exc).splitlines()]
    line = "; ".join(part for part in parts if part) or type(exc).__name__
    if is_not_migrated(exc):
        line += (": " + not_migrated_message(url) if url else
                 ": the metrics database is not migrated: run `fraiseql-cli migrate --database URL`")
    return mask_secrets(line)


def connect(
    url: str,
    *,
    application_name: str,
    read_only: bool = False,
    autocommit: bool = False,
    statement_timeout: float | None = None,
    connect_timeout: float | None = 10.0,
    settings: Mapping[str, str] | None = None,
    error: type[FraiseqlError] = FraiseqlError,
    what: str = "",
) -> psycopg.Connection[tuple[Any, ...]]:
    """Open a session on ``url``.

    ``statement_timeout`` is in seconds (None: the server's default); ``settings`` are further
    server parameters set for the session (``{"work_mem": "64MB"}``); ``connect_timeout`` None
    leaves it to the URL or libpq. A connection failure raises
    ``error("cannot connect to <what> <masked url>: <reason>")``.
    """
    options = dict(settings or {})
    if statement_timeout is not None:
        options["statement_timeout"] = str(round(statement_timeout * 1000))
    params: dict[str, Any] = {"application_name": application_name}
    if connect_timeout is not None:  # None: libpq's (or the URL's connect_timeout=)
        params["connect_timeout"] = max(1, round(connect_timeout))
    if options:
        params["options"] = " ".join(f"-c {name}={value}" for name, value in options.items())
    try:
        conn = psycopg.connect(url, autocommit=autocommit, **params)
    except psycopg.Error as exc:
        target = f"{what} " if what else ""
        raise error(f"cannot connect to {target}{mask_url(url)}: {describe_error(exc)}") from None
    if read_only:
        conn.read_only = True
    return conn


def require_migrated(
    url: str,
    *,
    application_name: str,
    connect_timeout: float | None = 10.0,
    relations: Sequence[str] = METRICS_RELATIONS,
    functions: Sequence[str] = METRICS_FUNCTIONS,
) -> None:
    """Raise :class:`NotMigrated` unless the metrics schema objects exist.

    Reads only the catalogs, so any login can ask, whatever it is granted; a session that cannot
    be opened raises :class:`DatabaseUnreachable`.
    """
    with connect(url, application_name=application_name, read_only=True, autocommit=True,
                 connect_timeout=connect_timeout, error=DatabaseUnreachable,
                 what="the metrics database") as conn:
        found_relations = {row[0] for row in conn.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s)",
            (SCHEMA, list(relations)))}
        found_functions = {row[0] for row in conn.execute(
            "SELECT p.proname FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n"
            " ON n.oid = p.pronamespace WHERE n.nspname = %s AND p.proname = ANY(%s)",
            (SCHEMA, list(functions)))}
    missing = [f"{SCHEMA}.{name}" for name in relations if name not in found_relations]
    missing += [f"{SCHEMA}.{name}()" for name in functions if name not in found_functions]
    if not missing:
        return
    if len(missing) == len(relations) + len(functions):
        raise NotMigrated(not_migrated_message(url))
    raise NotMigrated(not_migrated_message(url, ", ".join(missing)))
