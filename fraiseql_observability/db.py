"""The one way this project opens a PostgreSQL session.

Every stage connects through :func:`connect`, so each session is named in ``pg_stat_activity``
(``application_name``), bounded (``connect_timeout``, ``statement_timeout``), read-only where it
only reads, and a failure to connect becomes the caller's own error with the password masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

from .errors import FraiseqlError
from .secrets import mask_secrets, mask_url

__all__ = ["connect", "describe_error"]


def describe_error(exc: BaseException) -> str:
    """A database error as one line, passwords masked (for messages and logs)."""
    return mask_secrets(str(exc)).strip()


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
