"""Exceptions of the analyzer package (all derive from :class:`FraiseqlError`).

The CLI maps them to exit codes: :class:`AnalyzerUnavailable` (a database that cannot be reached or
read), :class:`StatsError` (``fraiseql-cli stats`` could not read the statistics) and every other
:class:`AnalyzerError` are runtime failures (exit 1); configuration and usage errors are
:class:`fraiseql_observability.errors.ConfigError` (exit 2).
"""

from __future__ import annotations

from fraiseql_observability.errors import FraiseqlError

__all__ = [
    "AnalyzerError",
    "AnalyzerUnavailable",
    "StatsError",
    "UnsupportedSql",
    "ValidationUnavailable",
]


class AnalyzerError(FraiseqlError):
    """Root of the analyzer's exceptions."""


class AnalyzerUnavailable(AnalyzerError):
    """The metrics database could not be reached or read."""


class StatsError(AnalyzerError):
    """The statistics (``fraiseql-cli stats``) could not be read (database unreachable, schema
    missing …)."""


class ValidationUnavailable(AnalyzerError):
    """The ``--validate-with`` database cannot be used (unreachable, no HypoPG …)."""


class UnsupportedSql(AnalyzerError):
    """A pattern's SQL (or an index definition) is not something the analyzer can reason about."""
