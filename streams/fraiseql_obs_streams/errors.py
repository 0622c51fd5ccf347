"""Exceptions of the stream package (all derive from :class:`FraiseqlError`).

One root, :class:`StreamsError`, so the CLI can catch whatever the stream stage reports on purpose
without also swallowing programming errors; the subclasses say which part gave up:

* :class:`StreamError` — the live worker cannot go on (a checkpoint unreadable, rollups not
  delivered, stopped while they were still in flight). Restarting resumes from the last checkpoint.
* :class:`ReplayError` — an interval cannot be replayed (no such topic, nothing retained, broker
  unreachable, interrupted). A replay is idempotent: run it again.
"""

from __future__ import annotations

from fraiseql_observability.errors import FraiseqlError

__all__ = ["ReplayError", "StreamError", "StreamsError"]


class StreamsError(FraiseqlError):
    """Root of the stream package's exceptions."""


class StreamError(StreamsError):
    """The stream worker cannot go on (e.g. stopped while rollups were undelivered)."""


class ReplayError(StreamsError):
    """The interval cannot be replayed (no such topic, nothing retained, broker unreachable)."""
