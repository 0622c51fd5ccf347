"""Typed, validated rows of the metrics database, built from decoded Avro records.

The codec guarantees the *shape* of a record; this module checks what PostgreSQL or the readers
would choke on later, so that one bad record is dead-lettered with a reason instead of failing
every retry of the batch that carries it:

* text PostgreSQL cannot store (NUL characters), absurd lengths;
* non-finite or negative counts and durations, inconsistent sketches;
* timestamps outside a sane range around now (each distinct day costs two partitions);
* JSON that is not JSON (NaN in column statistics).

Timestamps arrive as integer microseconds since the epoch (see ``fraiseql_observability.codec``)
and are converted exactly, without a float round trip, by the core's
:func:`~fraiseql_observability.timeutil.from_micros`.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from fraiseql_observability.timeutil import from_micros

from .errors import InvalidRecord

__all__ = [
    "DEFAULT_LIMITS",
    "RecordLimits",
    "RollupRow",
    "TableStatsRow",
]

_INT4_MIN: Final = -(2**31)
_INT4_MAX: Final = 2**31 - 1


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """What the sink accepts. Generous: the stream stage already rejects absurd events."""

    max_age: timedelta = timedelta(days=400)
    max_future: timedelta = timedelta(days=1)
    max_window: timedelta = timedelta(days=1)
    max_name_chars: int = 1024  # fingerprints, regions, query and table names
    max_sql_chars: int = 1_000_000


DEFAULT_LIMITS: Final = RecordLimits()


def _text(record: Mapping[str, Any], name: str, limit: int, *, allow_empty: bool = False) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise InvalidRecord(f"{name} is not a string")
    if not value and not allow_empty:
        raise InvalidRecord(f"{name} is empty")
    if len(value) > limit:
        raise InvalidRecord(f"{name} is longer than {limit} characters")
    if "\x00" in value:
        raise InvalidRecord(f"{name} contains a NUL character (PostgreSQL text cannot store it)")
    return value


def _int(record: Mapping[str, Any], name: str, *, low: int = 0, high: int = 2**63 - 1) -> int:
    value = record.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRecord(f"{name} is not an integer")
    if not low <= value <= high:
        raise InvalidRecord(f"{name} = {value} is outside {low}..{high}")
    return value


def _number(record: Mapping[str, Any], name: str, *, nonnegative: bool = True) -> float:
    value = record.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRecord(f"{name} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidRecord(f"{name} is not finite ({number})")
    if nonnegative and number < 0:
        raise InvalidRecord(f"{name} is negative ({number})")
    return number


def _uuid(record: Mapping[str, Any], name: str) -> uuid.UUID:
    value = record.get(name)
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidRecord(f"{name} is not a UUID") from None


def _timestamp(
    record: Mapping[str, Any], name: str, now: datetime, limits: RecordLimits
) -> datetime:
    micros = _int(record, name, low=-(2**63), high=2**63 - 1)
    try:
        moment = from_micros(micros)
    except OverflowError:
        raise InvalidRecord(f"{name} = {micros} µs is not a representable time") from None
    if moment < now - limits.max_age:
        raise InvalidRecord(
            f"{name} {moment.isoformat()} is more than {limits.max_age.days} days old"
        )
    if moment > now + limits.max_future:
        raise InvalidRecord(f"{name} {moment.isoformat()} is too far in the future")
    return moment


def _json_array(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, list):
        raise InvalidRecord(f"{name} is not an array")
    try:
        # allow_nan=False: NaN/Infinity are not JSON and jsonb refuses them.
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"{name} cannot be stored as JSON ({exc})") from None
    # json.dumps escapes NUL as \\u0000, which jsonb refuses as well.
    if "\\u0000" in text:
        raise InvalidRecord(f"{name} contains a NUL character")
    return text


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else now


@dataclass(frozen=True, slots=True)
class RollupRow:
    """One ``fraiseql_metrics.rollups`` row plus the pattern catalogue fields it carries."""

    rollup_id: uuid.UUID
    fingerprint: str
    query_name: str
    sql: str
    region: str
    window_start: datetime
    window_end: datetime
    source_topic: str
    source_partition: int
    first_offset: int
    last_offset: int
    event_count: int
    count: float
    error_count: float
    cache_hits: float
    rows_sum: float
    exec_sum_ms: float
    exec_min_ms: float
    exec_max_ms: float
    sql_generation_sum_ms: float
    db_round_trip_sum_ms: float
    projection_sum_ms: float
    sketch_alpha: float
    sketch_keys: tuple[int, ...]
    sketch_weights: tuple[float, ...]

    @property
    def key(self) -> tuple[uuid.UUID, datetime]:
        """The primary key: a re-delivered rollup has the same key and overwrites."""
        return self.rollup_id, self.window_start

    @property
    def day(self) -> date:
        return self.window_start.date()

    @classmethod
    def from_record(
        cls,
        record: Mapping[str, Any],
        *,
        now: datetime | None = None,
        limits: RecordLimits = DEFAULT_LIMITS,
    ) -> RollupRow:
        """Validate a decoded ``QueryRollup``; raises :class:`InvalidRecord` with the reason."""
        current = _now(now)
        names = limits.max_name_chars
        window_start = _timestamp(record, "window_start", current, limits)
        window_end = _timestamp(record, "window_end", current, limits)
        if window_end <= window_start:
            raise InvalidRecord("window_end is not after window_start")
        if window_end - window_start > limits.max_window:
            raise InvalidRecord(f"window longer than {limits.max_window}")
        first_offset = _int(record, "first_offset")
        last_offset = _int(record, "last_offset")
        if last_offset < first_offset:
            raise InvalidRecord("last_offset is before first_offset")
        exec_min_ms = _number(record, "exec_min_ms")
        exec_max_ms = _number(record, "exec_max_ms")
        if exec_max_ms < exec_min_ms:
            raise InvalidRecord("exec_max_ms is below exec_min_ms")
        alpha = _number(record, "sketch_alpha")
        if not 0 < alpha < 1:
            raise InvalidRecord(f"sketch_alpha = {alpha} is outside (0, 1)")
        raw_keys = record.get("sketch_keys")
        raw_weights = record.get("sketch_weights")
        if not isinstance(raw_keys, list) or not isinstance(raw_weights, list):
            raise InvalidRecord("sketch_keys and sketch_weights must be arrays")
        if len(raw_keys) != len(raw_weights):
            raise InvalidRecord("sketch_keys and sketch_weights differ in length")
        keys = tuple(raw_keys)
        if not all(isinstance(k, int) and _INT4_MIN <= k <= _INT4_MAX for k in keys):
            raise InvalidRecord("sketch_keys must be 32-bit integers")
        weights = tuple(float(w) for w in raw_weights if isinstance(w, int | float))
        if len(weights) != len(raw_weights) or not all(
            math.isfinite(w) and w >= 0 for w in weights
        ):
            raise InvalidRecord("sketch_weights must be finite and non-negative")
        return cls(
            rollup_id=_uuid(record, "rollup_id"),
            fingerprint=_text(record, "fingerprint", names),
            query_name=_text(record, "query_name", names, allow_empty=True),
            sql=_text(record, "sql", limits.max_sql_chars, allow_empty=True),
            region=_text(record, "region", names),
            window_start=window_start,
            window_end=window_end,
            source_topic=_text(record, "source_topic", names),
            source_partition=_int(record, "source_partition", high=_INT4_MAX),
            first_offset=first_offset,
            last_offset=last_offset,
            event_count=_int(record, "event_count"),
            count=_number(record, "count"),
            error_count=_number(record, "error_count"),
            cache_hits=_number(record, "cache_hits"),
            rows_sum=_number(record, "rows_sum"),
            exec_sum_ms=_number(record, "exec_sum_ms"),
            exec_min_ms=exec_min_ms,
            exec_max_ms=exec_max_ms,
            sql_generation_sum_ms=_number(record, "sql_generation_sum_ms"),
            db_round_trip_sum_ms=_number(record, "db_round_trip_sum_ms"),
            projection_sum_ms=_number(record, "projection_sum_ms"),
            sketch_alpha=alpha,
            sketch_keys=keys,
            sketch_weights=weights,
        )


@dataclass(frozen=True, slots=True)
class TableStatsRow:
    """One ``fraiseql_metrics.table_stats`` row; ``columns``/``indexes`` are JSON text."""

    snapshot_id: uuid.UUID
    taken_at: datetime
    source: str
    region: str
    schema_name: str
    table_name: str
    relkind: str
    row_estimate: float
    total_bytes: int
    seq_scans: int
    columns: str
    indexes: str

    @property
    def key(self) -> tuple[uuid.UUID, str, str, datetime]:
        return self.snapshot_id, self.schema_name, self.table_name, self.taken_at

    @property
    def day(self) -> date:
        return self.taken_at.date()

    @classmethod
    def from_record(
        cls,
        record: Mapping[str, Any],
        *,
        now: datetime | None = None,
        limits: RecordLimits = DEFAULT_LIMITS,
    ) -> TableStatsRow:
        """Validate a decoded ``TableStats``; raises :class:`InvalidRecord` with the reason."""
        current = _now(now)
        names = limits.max_name_chars
        return cls(
            snapshot_id=_uuid(record, "snapshot_id"),
            taken_at=_timestamp(record, "taken_at", current, limits),
            source=_text(record, "source", names),
            region=_text(record, "region", names),
            schema_name=_text(record, "schema_name", names),
            table_name=_text(record, "table_name", names),
            relkind=_text(record, "relkind", 8),
            # pg_class.reltuples is -1 for a never-analyzed table (PostgreSQL 14+): keep the sign.
            row_estimate=_number(record, "row_estimate", nonnegative=False),
            total_bytes=_int(record, "total_bytes"),
            seq_scans=_int(record, "seq_scans"),
            columns=_json_array(record, "columns"),
            indexes=_json_array(record, "indexes"),
        )
