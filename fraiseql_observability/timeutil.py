"""Time on the wire and in the database: integer microseconds since the Unix epoch, UTC.

One definition of the epoch and of the conversions, so the recorder, the stream worker, the sink
and the analyzer cannot disagree about a window's start by a time zone or a rounding; and one
parser of durations (``90m``, ``3h``, ``2d``), so ``stats --window``, ``analyze --window``,
``analysis.window`` and relative times (``replay --from -1h``) accept the same spellings.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = [
    "DURATION_FORMAT", "EPOCH", "HOUR", "MAX_DURATION", "MICROS", "MINUTE", "from_micros",
    "now_micros", "parse_duration", "to_micros",
]

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MICROS: Final = 1_000_000  # microseconds per second
MINUTE: Final = timedelta(minutes=1)
HOUR: Final = timedelta(hours=1)
_ONE_MICROSECOND: Final = timedelta(microseconds=1)

# A positive whole number and one lower-case unit, nothing else: "7D" or " 7d" are more likely a
# typo than a wish, and refusing them keeps one spelling per duration in reports and configs.
_DURATION: Final = re.compile(r"(?P<n>[1-9][0-9]{0,9})(?P<unit>[smhdw])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Ten years: longer than any retention (retention_days <= 3650), far below timedelta's limit.
MAX_DURATION: Final = timedelta(days=3650)
DURATION_FORMAT: Final = "a whole number > 0 and s, m, h, d or w (e.g. 90m, 3h, 24h, 2d, 1w)"


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


def parse_duration(text: str) -> timedelta:
    """``90m``, ``3h``, ``2d``, ``1w``… as a :class:`timedelta` (N a positive integer, at most 10
    years); ``ValueError`` with the expected format otherwise."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r}: expected {DURATION_FORMAT}")
    value = timedelta(seconds=int(match["n"]) * _UNIT_SECONDS[match["unit"]])
    if value > MAX_DURATION:
        raise ValueError(f"{text!r}: at most {MAX_DURATION.days}d")
    return value
