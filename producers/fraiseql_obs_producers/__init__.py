"""Producers: the API-side recorder (sample, buffer, batch, send) and the synthetic load generator.

* :class:`Recorder` -- one per API process; ``record()`` once per query, never blocks or raises.
* :func:`fingerprint_sql` -- the query-shape fingerprint (also the Kafka key).
* :class:`Sampler` -- the keep/drop rule and the ``sample_weight`` it implies.
* :func:`generate_events` / :func:`run_loadgen` -- already-sampled synthetic events of a
  FraiseQL-shaped :class:`Workload`, with the exact ground truth in a :class:`LoadgenReport`.

Not imported here, so an API process that only records pays for none of them (and exports no
table-stats metrics): :mod:`fraiseql_obs_producers.appdb` (the demo application database),
:mod:`fraiseql_obs_producers.execute` (real-execution load against it) and
:mod:`fraiseql_obs_producers.table_stats` (the
table-statistics snapshot job).
"""

from __future__ import annotations

from .encoding import EventIdFactory, QueryEventEncoder
from .errors import LoadgenError, ProducerError
from .fingerprint import fingerprint_sql
from .loadgen import EventModel, LoadgenReport, PatternTotals, generate_events, run_loadgen
from .recorder import DROP_REASONS, Recorder, RecorderStats
from .sampling import Sampler
from .workload import DEFAULT_REGIONS, QueryPattern, Workload, default_workload

__all__ = [
    "DEFAULT_REGIONS",
    "DROP_REASONS",
    "EventIdFactory",
    "EventModel",
    "LoadgenError",
    "LoadgenReport",
    "PatternTotals",
    "ProducerError",
    "QueryEventEncoder",
    "QueryPattern",
    "Recorder",
    "RecorderStats",
    "Sampler",
    "Workload",
    "default_workload",
    "fingerprint_sql",
    "generate_events",
    "run_loadgen",
]
