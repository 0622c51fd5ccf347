"""Time on the wire and in the database: integer microseconds since the Unix epoch, UTC.

One definition of the epoch and of the conversions, so the recorder, the stream worker, the sink
and the analyzer cannot disagree about a window's start by a time zone or a rounding.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["EPOCH", "HOUR", "MICROS", "MINUTE", "from_micros", "now_micros", "to_micros"]

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MICROS: Final = 1_000_000  # microseconds per second
MINUTE: Final = timedelta(minutes=1)
HOUR: Final = timedelta(hours=1)
_ONE_MICROSECOND: Final = timedelta(microseconds=1)


def now_micros() -> int:
    """Wall-clock time now, in microseconds since the epoch."""
    return time.time_ns() // 1000


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (a naive one is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // _ONE_MICROSECOND


def from_micros(micros: int) -> datetime:
    """The UTC datetime of ``micros`` since the epoch (exact: no float on the way)."""
    return EPOCH + timedelta(microseconds=micros)
