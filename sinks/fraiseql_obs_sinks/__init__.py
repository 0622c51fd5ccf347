"""The sink stage: Kafka rollups and table statistics → the metrics PostgreSQL database.

* :class:`RollupWriter` writes batches idempotently in one transaction each, keeping the hourly
  roll-up level exact (see ``DESIGN.md``);
* :func:`run_sink` is the consumer loop (``fraiseql-cli sink``);
* :func:`drop_expired_partitions` is retention (``fraiseql-cli retention``).

Submodules are imported lazily so that ``fraiseql-cli migrate`` does not load the Kafka client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    InvalidRecord,
    RecordRejected,
    RetentionError,
    SinkError,
    WriteFailed,
)

if TYPE_CHECKING:
    from .records import RollupRow, TableStatsRow
    from .retention import drop_expired_partitions
    from .worker import run_sink
    from .writer import RollupWriter, WriteResult

__all__ = [
    "InvalidRecord",
    "RecordRejected",
    "RetentionError",
    "RollupRow",
    "RollupWriter",
    "SinkError",
    "TableStatsRow",
    "WriteFailed",
    "WriteResult",
    "drop_expired_partitions",
    "run_sink",
]

_LAZY = {
    "RollupRow": "records",
    "TableStatsRow": "records",
    "drop_expired_partitions": "retention",
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
