"""The metrics database's contract, owned in one place: its schema and roles (versioned
migrations applied by :func:`~fraiseql_observability.metricsdb.migrate.migrate`) and how readers
take rollups out of it (:mod:`~fraiseql_observability.metricsdb.rollups`).

The sink writes it, the analyzer reads it, the maintainer migrates it; none of those stages
imports another, they all import this.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SCHEMA"]

SCHEMA: Final = "fraiseql_metrics"
