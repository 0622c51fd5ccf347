"""Checks a decoded query event must pass before it may count (SPEC §8: bad input is dead-lettered)."""

from __future__ import annotations

import math
import re
from typing import Any, Final

__all__ = ["DURATION_FIELDS", "MAX_DURATION_MS", "MAX_NAME_LEN", "MAX_WEIGHT", "invalid_reason"]

DURATION_FIELDS: Final = (
    "execution_time_ms",
    "sql_generation_time_ms",
    "db_round_trip_time_ms",
    "projection_time_ms",
)
# A day: a query event claiming longer than this is a broken clock, not a slow query.
MAX_DURATION_MS: Final = 86_400_000.0
MAX_WEIGHT: Final = 1e9
MAX_NAME_LEN: Final = 512
_is_fingerprint = re.compile(r"[0-9a-f]{1,64}").fullmatch


def invalid_reason(event: dict[str, Any]) -> str | None:
    """Why ``event`` cannot be counted, or None when it can.

    Types are already guaranteed by the Avro schema; this checks values. It runs once per event on
    the stream worker's hot path, so the common case is one chain of comparisons (a chained
    comparison is False for NaN, so ``0 <= x <= max`` also rejects NaN and infinities); the
    message is worked out only for an event that fails.
    """
    limit = MAX_DURATION_MS
    region, instance, query_name = event["region"], event["instance"], event["query_name"]
    if (
        0.0 <= event["execution_time_ms"] <= limit
        and 0.0 <= event["sql_generation_time_ms"] <= limit
        and 0.0 <= event["db_round_trip_time_ms"] <= limit
        and 0.0 <= event["projection_time_ms"] <= limit
        and 1.0 <= event["sample_weight"] <= MAX_WEIGHT
        and event["rows_returned"] >= 0
        and _is_fingerprint(event["fingerprint"])
        and 0 < len(region) <= MAX_NAME_LEN and "\x00" not in region
        and 0 < len(instance) <= MAX_NAME_LEN and "\x00" not in instance
        and 0 < len(query_name) <= MAX_NAME_LEN and "\x00" not in query_name
        and "\x00" not in event["sql"]
    ):
        return None
    return _explain(event)


def _explain(event: dict[str, Any]) -> str:
    for name in DURATION_FIELDS:
        value = event[name]
        if not math.isfinite(value) or value < 0 or value > MAX_DURATION_MS:
            return f"{name} is {value!r}: must be finite, >= 0 and <= {MAX_DURATION_MS:g}"
    weight = event["sample_weight"]
    if not math.isfinite(weight) or weight < 1.0 or weight > MAX_WEIGHT:
        return f"sample_weight is {weight!r}: must be finite and in 1..1e9 (1 / sampling probability)"
    if event["rows_returned"] < 0:
        return f"rows_returned is {event['rows_returned']}: must be >= 0"
    if not _is_fingerprint(event["fingerprint"]):
        return "fingerprint must be 1..64 lowercase hex digits"
    for name in ("region", "query_name", "instance"):
        text = event[name]
        if not text or len(text) > MAX_NAME_LEN or "\x00" in text:
            return f"{name} must be 1..{MAX_NAME_LEN} characters without NUL"
    if "\x00" in event["sql"]:
        return "sql contains NUL"
    # Unreachable while the two functions agree (a property test checks it); never crash on it.
    return "event failed validation"
