"""The sink stage: Kafka rollups and table statistics → the metrics PostgreSQL database.

* :class:`RollupWriter` writes batches idempotently in one transaction each, keeping the hourly
  roll-up level exact (see ``DESIGN.md``);
* :func:`run_sink` is the consumer loop (``fraiseql-cli sink``);

Submodules are imported lazily: importing the errors loads neither Kafka nor PostgreSQL clients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fraiseql_observability.lazy import lazy_attributes

from .errors import (
    InvalidRecord,
    RecordRejected,
    SinkError,
    WriteFailed,
)

if TYPE_CHECKING:
    from .records import RollupRow, TableStatsRow
    from .worker import run_sink
    from .writer import RollupWriter, WriteResult

__all__ = [
    "InvalidRecord",
    "RecordRejected",
    "RollupRow",
    "RollupWriter",
    "SinkError",
    "TableStatsRow",
    "WriteFailed",
    "WriteResult",
    "run_sink",
]

_LAZY = {
    "RollupRow": "records",
    "TableStatsRow": "records",
    "run_sink": "worker",
    "RollupWriter": "writer",
    "WriteResult": "writer",
}

__getattr__ = lazy_attributes(__name__, _LAZY)
