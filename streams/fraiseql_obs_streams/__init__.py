"""The stream stage: query events → one rollup per (fingerprint, region, window, partition).

* :func:`run_stream_worker` / :func:`run_stream_loop` are the consumer loop (``fraiseql-cli
  stream``), feeding a :class:`StreamProcessor`, which windows events by event time and commits a
  checkpoint only after Kafka acknowledged the rollups it published (see ``DESIGN.md``);
* :class:`PartitionWindows` is that windowing, in plain Python and deterministic per partition;
* :func:`replay` recomputes the rollups of an interval from the events topic (``fraiseql-cli
  replay``), idempotently;
* :class:`StreamsError` is the root of the stage's exceptions (:class:`StreamError`,
  :class:`ReplayError`).

Submodules are imported lazily: importing the errors loads no Kafka client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fraiseql_observability.lazy import lazy_attributes

from .errors import ReplayError, StreamError, StreamsError

if TYPE_CHECKING:
    from .processor import BatchResult, StreamProcessor
    from .replay import ReplayProgress, ReplayReport, replay
    from .windowing import Checkpoint, PartitionWindows, Rollup
    from .worker import run_stream_loop, run_stream_worker

__all__ = [
    "BatchResult",
    "Checkpoint",
    "PartitionWindows",
    "ReplayError",
    "ReplayProgress",
    "ReplayReport",
    "Rollup",
    "StreamError",
    "StreamProcessor",
    "StreamsError",
    "replay",
    "run_stream_loop",
    "run_stream_worker",
]

_LAZY = {
    "BatchResult": "processor",
    "StreamProcessor": "processor",
    "ReplayProgress": "replay",
    "ReplayReport": "replay",
    "replay": "replay",
    "Checkpoint": "windowing",
    "PartitionWindows": "windowing",
    "Rollup": "windowing",
    "run_stream_loop": "worker",
    "run_stream_worker": "worker",
}

__getattr__ = lazy_attributes(__name__, _LAZY)
