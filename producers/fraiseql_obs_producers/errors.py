"""Exceptions of the producers (API-side recorder, load generator, table-statistics job)."""

from __future__ import annotations

from fraiseql_observability.errors import FraiseqlError

__all__ = ["LoadgenError", "ProducerError", "TableStatsError"]


class ProducerError(FraiseqlError):
    """Root of the producers' exceptions.

    The :class:`~fraiseql_obs_producers.recorder.Recorder` never raises into the API's query path; these are
    raised only by setup calls (a bad argument to the constructor, the load generator).
    """


class LoadgenError(ProducerError):
    """The load generator was given arguments that cannot describe a run (exit code 2)."""


class TableStatsError(ProducerError):
    """A table-statistics snapshot could not be taken or published (runtime failure), or bad
    arguments to the job."""
