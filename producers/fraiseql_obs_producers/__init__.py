"""Producers: the API-side recorder (sample, buffer, batch, send) and the synthetic load generator.

* :class:`Recorder` -- one per API process; ``record()`` once per query, never blocks or raises.
* :func:`fingerprint_sql` -- the query-shape fingerprint (also the Kafka key).
* :func:`normalize_sql` -- literal values out of a statement (``$n``), before it leaves the process.
* :func:`recording_cursor` / :func:`async_recording_cursor` -- psycopg 3 ``cursor_factory``
  classes recording every statement (:mod:`~fraiseql_obs_producers.instrument`, imported on first
  use: it needs psycopg); :mod:`fraiseql_obs_producers.fraiseql_app` records a FraiseQL 0.5.x app.
* :class:`Sampler` -- the keep/drop rule and the ``sample_weight`` it implies.
* :func:`generate_events` / :func:`run_loadgen` -- already-sampled synthetic events of a
  FraiseQL-shaped :class:`Workload`, with the exact ground truth in a :class:`LoadgenReport`.

Only the recorder side is imported eagerly, so an API process that records pays for nothing
else: the load generator's names (:mod:`~fraiseql_obs_producers.loadgen`,
:mod:`~fraiseql_obs_producers.workload`) are imported on first use. Never imported from here at
all (and exporting no table-stats metrics until imported): :mod:`fraiseql_obs_producers.appdb`
(the demo application database), :mod:`fraiseql_obs_producers.execute` (real-execution load
against it), :mod:`fraiseql_obs_producers.table_snapshot` (reading table statistics) and
:mod:`fraiseql_obs_producers.table_stats` (the job publishing them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fraiseql_observability.lazy import lazy_attributes

from .encoding import EventIdFactory, QueryEventEncoder
from .errors import LoadgenError, ProducerError
from .fingerprint import fingerprint_sql
from .normalize import normalize_sql
from .recorder import DROP_REASONS, Recorder, RecorderStats
from .sampling import Sampler

if TYPE_CHECKING:
    from .instrument import (
        async_recording_cursor,
        current_operation,
        operation_name,
        recording_cursor,
        set_operation_name,
    )
    from .loadgen import EventModel, LoadgenReport, PatternTotals, generate_events, run_loadgen
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
    "async_recording_cursor",
    "current_operation",
    "default_workload",
    "fingerprint_sql",
    "generate_events",
    "normalize_sql",
    "operation_name",
    "recording_cursor",
    "run_loadgen",
    "set_operation_name",
]

_LAZY = {
    "EventModel": "loadgen",
    "LoadgenReport": "loadgen",
    "PatternTotals": "loadgen",
    "generate_events": "loadgen",
    "run_loadgen": "loadgen",
    "DEFAULT_REGIONS": "workload",
    "QueryPattern": "workload",
    "Workload": "workload",
    "default_workload": "workload",
    "async_recording_cursor": "instrument",
    "current_operation": "instrument",
    "operation_name": "instrument",
    "recording_cursor": "instrument",
    "set_operation_name": "instrument",
}

__getattr__ = lazy_attributes(__name__, _LAZY)
