"""Checks a decoded query event must pass before it may count (SPEC §8: bad input is dead-lettered)."""

from __future__ import annotations

import math
from typing import Any, Final

__all__ = ["DURATION_FIELDS", "invalid_reason"]

DURATION_FIELDS: Final = (
    "execution_time_ms",
    "sql_generation_time_ms",
    "db_round_trip_time_ms",
    "projection_time_ms",
)
# A day: a query event claiming longer than this is a broken clock, not a slow query.
MAX_DURATION_MS: Final = 86_400_000.0
MAX_NAME_LEN: Final = 512


def invalid_reason(event: dict[str, Any]) -> str | None:
    """Why ``event`` cannot be counted, or None when it can.

    Types are already guaranteed by the Avro schema; this checks values.
    """
    for name in DURATION_FIELDS:
        value = event[name]
        if not math.isfinite(value) or value < 0 or value > MAX_DURATION_MS:
            return f"{name} is {value!r}: must be finite, >= 0 and <= {MAX_DURATION_MS:g}"
    weight = event["sample_weight"]
    if not math.isfinite(weight) or weight < 1.0 or weight > 1e9:
        return f"sample_weight is {weight!r}: must be finite and in 1..1e9 (1 / sampling probability)"
    if event["rows_returned"] < 0:
        return f"rows_returned is {event['rows_returned']}: must be >= 0"
    fingerprint = event["fingerprint"]
    if not fingerprint or len(fingerprint) > 64 or not all(c in "0123456789abcdef" for c in fingerprint):
        return "fingerprint must be 1..64 lowercase hex digits"
    for name in ("region", "query_name", "instance"):
        text = event[name]
        if not text or len(text) > MAX_NAME_LEN or "\x00" in text:
            return f"{name} must be 1..{MAX_NAME_LEN} characters without NUL"
    if "\x00" in event["sql"]:
        return "sql contains NUL"
    return None
