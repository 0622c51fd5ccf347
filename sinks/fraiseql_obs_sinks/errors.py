"""Exceptions of the sink package (all derive from :class:`FraiseqlError`).

The worker's behaviour depends on the class, so the split is deliberate:

* :class:`InvalidRecord` — a decoded record the sink refuses before touching the database (absurd
  timestamp, NaN, NUL byte …): dead-lettered with reason ``invalid``, never retried.
* :class:`RecordRejected` — PostgreSQL refused the data itself (a constraint or type error): the
  batch is split to find the culprit, which is dead-lettered with reason ``rejected``.
* :class:`WriteFailed` — anything else (server down, timeout, missing grant, lock timeout): the
  same batch is retried with back-off; nothing is committed to Kafka meanwhile.
"""

from __future__ import annotations

from fraiseql_observability.errors import FraiseqlError

__all__ = [
    "InvalidRecord",
    "RecordRejected",
    "SinkError",
    "WriteFailed",
]


class SinkError(FraiseqlError):
    """Root of the sink package's exceptions."""


class InvalidRecord(SinkError):
    """A record that must not reach the database; ``reason`` is the dead-letter reason word."""

    def __init__(self, detail: str, reason: str = "invalid") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RecordRejected(SinkError):
    """PostgreSQL refused the data of a batch (SQLSTATE class 22 or 23)."""

    def __init__(self, detail: str, sqlstate: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.sqlstate = sqlstate


class WriteFailed(SinkError):
    """A batch could not be written for a reason unrelated to its data; retry the same batch."""
