"""The sink stage: Kafka rollups and table statistics → the metrics PostgreSQL database.

* :class:`RollupWriter` writes batches idempotently in one transaction each, keeping the hourly
  roll-up level exact (see ``DESIGN.md``);
* :func:`run_sink` is the consumer loop (``fraiseql-cli sink``);

Submodules are imported lazily: importing the errors loads neither Kafka nor PostgreSQL clients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module  # noqa: PLC0415 - lazy by design

    return getattr(import_module(f"{__name__}.{module}"), name)
