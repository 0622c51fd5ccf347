"""Exceptions of the producers (API-side recorder and load generator)."""

from __future__ import annotations

from fraiseql_observability.errors import FraiseqlError

__all__ = ["LoadgenError", "ProducerError"]


class ProducerError(FraiseqlError):
    """Root of the producers' exceptions.

    The :class:`~fraiseql_obs_producers.recorder.Recorder` never raises into the API's query path; these are
    raised only by setup calls (a bad argument to the constructor, the load generator).
    """


class LoadgenError(ProducerError):
    """The load generator was given arguments that cannot describe a run (exit code 2)."""
