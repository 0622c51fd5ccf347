"""Event-time tumbling windows per source partition, in plain Python (no Faust).

Why not Faust's windowed tables: they close windows by wall clock, drop late writes silently and lose
windows when a worker owns several partitions (NOTES.md). This module decides everything from the
partition's content alone, so the same content in the same order yields the same rollups — the
property crash recovery relies on (see ``streams/DESIGN.md``).

Per partition:

* ``max_event_time`` is the largest event time seen; the watermark is ``max_event_time - grace``.
* An event belongs to the window ``[floor(t / size) * size, + size)`` of its (fingerprint, region).
* A window closes when the watermark reaches its end; it is then emitted once as a rollup.
* An event whose window already closed is *late*: it is counted and dead-lettered with reason
  ``late`` (a backfill is done with ``fraiseql-cli replay``, not by sneaking old events in).
* After a restart from a checkpoint, events before the checkpoint's position were already fully
  handled except for their contribution to windows still open; only those are rebuilt.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from fraiseql_observability.sketch import DEFAULT_ALPHA, QuantileSketch

__all__ = [
    "Checkpoint",
    "Outcome",
    "PartitionWindows",
    "Rollup",
    "WindowAggregate",
    "rollup_id",
]

MICROS: Final = 1_000_000
_ROLLUP_NAMESPACE: Final = uuid.UUID("5b0f3c4e-2d59-4a8e-9d3e-6f1f8f7e1c00")


def rollup_id(topic: str, partition: int, fingerprint: str, region: str, window_start: int) -> str:
    """Deterministic id of a window's rollup: a re-emitted window overwrites, never adds."""
    name = "\x1f".join((topic, str(partition), fingerprint, region, str(window_start)))
    return str(uuid.uuid5(_ROLLUP_NAMESPACE, name))


class Outcome(Enum):
    ADDED = "added"
    LATE = "late"  # its window had closed: dead-letter with reason "late"
    REPLAYED = "replayed"  # already handled before the checkpoint: ignore silently


@dataclass(slots=True)
class WindowAggregate:
    """Running aggregates of one (fingerprint, region, window)."""

    fingerprint: str
    region: str
    query_name: str
    sql: str
    window_start: int
    first_offset: int
    last_offset: int = -1
    event_count: int = 0
    count: float = 0.0
    error_count: float = 0.0
    cache_hits: float = 0.0
    rows_sum: float = 0.0
    exec_sum_ms: float = 0.0
    exec_min_ms: float = float("inf")
    exec_max_ms: float = float("-inf")
    sql_generation_sum_ms: float = 0.0
    db_round_trip_sum_ms: float = 0.0
    projection_sum_ms: float = 0.0
    sketch: QuantileSketch = field(default_factory=lambda: QuantileSketch(DEFAULT_ALPHA))

    def add(self, offset: int, event: dict[str, Any]) -> None:
        weight: float = event["sample_weight"]
        exec_ms: float = event["execution_time_ms"]
        self.last_offset = offset
        self.event_count += 1
        self.count += weight
        if event["error"] is not None:
            self.error_count += weight
        if event["cache_hit"]:
            self.cache_hits += weight
        self.rows_sum += weight * event["rows_returned"]
        self.exec_sum_ms += weight * exec_ms
        # Comparisons, not min()/max(): a builtin call per event costs more than the branch.
        if exec_ms < self.exec_min_ms:  # noqa: PLR1730
            self.exec_min_ms = exec_ms
        if exec_ms > self.exec_max_ms:  # noqa: PLR1730
            self.exec_max_ms = exec_ms
        self.sql_generation_sum_ms += weight * event["sql_generation_time_ms"]
        self.db_round_trip_sum_ms += weight * event["db_round_trip_time_ms"]
        self.projection_sum_ms += weight * event["projection_time_ms"]
        self.sketch.add(exec_ms, weight)


@dataclass(frozen=True, slots=True)
class Rollup:
    """A closed window, ready to encode as a ``QueryRollup`` record."""

    record: dict[str, Any]

    @property
    def rollup_id(self) -> str:
        return str(self.record["rollup_id"])

    @property
    def fingerprint(self) -> str:
        return str(self.record["fingerprint"])


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a restarted worker needs to rebuild a partition's state exactly.

    ``commit_offset`` is where consumption restarts (the first offset of the oldest open window);
    ``position`` is the next offset the worker would have read; ``max_event_time`` restores the
    watermark. Events in ``[commit_offset, position)`` are re-read only to rebuild open windows.
    """

    commit_offset: int
    position: int
    max_event_time: int | None

    def encode(self) -> str:
        met = "" if self.max_event_time is None else str(self.max_event_time)
        return f"v1;{self.commit_offset};{self.position};{met}"

    @classmethod
    def decode(cls, text: str) -> Checkpoint:
        version, commit, position, met = text.split(";")
        if version != "v1":
            raise ValueError(f"unknown checkpoint version {version!r}")
        return cls(int(commit), int(position), int(met) if met else None)


class PartitionWindows:
    """The open windows of one source partition and its watermark."""

    def __init__(
        self,
        topic: str,
        partition: int,
        *,
        window_us: int = 60 * MICROS,
        grace_us: int = 90 * MICROS,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        if window_us <= 0 or grace_us < 0:
            raise ValueError("window must be > 0 and grace >= 0")
        self.topic = topic
        self.partition = partition
        self.window_us = window_us
        self.grace_us = grace_us
        self.max_event_time: int | None = checkpoint.max_event_time if checkpoint else None
        # Offsets below this were fully handled before the checkpoint was taken.
        self.replay_until = checkpoint.position if checkpoint else 0
        self.position = checkpoint.commit_offset if checkpoint else 0
        # Open windows by start, then by (fingerprint, region). Closing looks at the few distinct
        # starts (window + grace spans about three) instead of every open window, once per batch.
        # Insertion order is offset order: a start's first window has its smallest first_offset.
        self._open: dict[int, dict[tuple[str, str], WindowAggregate]] = {}

    @property
    def watermark(self) -> int | None:
        return None if self.max_event_time is None else self.max_event_time - self.grace_us

    @property
    def open_windows(self) -> int:
        return sum(len(by_key) for by_key in self._open.values())

    def window_start(self, occurred_at: int) -> int:
        return occurred_at - occurred_at % self.window_us

    def add(self, offset: int, event: dict[str, Any]) -> Outcome:
        """Fold one valid event in; the caller dead-letters it when the outcome is LATE."""
        self.position = offset + 1
        occurred_at: int = event["occurred_at"]
        start = self.window_start(occurred_at)
        max_event_time = self.max_event_time
        if max_event_time is None or occurred_at > max_event_time:
            self.max_event_time = occurred_at
        elif start + self.window_us <= max_event_time - self.grace_us:  # closed: watermark passed
            return Outcome.REPLAYED if offset < self.replay_until else Outcome.LATE
        by_key = self._open.get(start)
        if by_key is None:
            by_key = self._open[start] = {}
        key = (event["fingerprint"], event["region"])
        window = by_key.get(key)
        if window is None:
            window = WindowAggregate(
                fingerprint=event["fingerprint"],
                region=event["region"],
                query_name=event["query_name"],
                sql=event["sql"],
                window_start=start,
                first_offset=offset,
            )
            by_key[key] = window
        window.add(offset, event)
        return Outcome.ADDED

    def is_replay(self, offset: int) -> bool:
        """True for offsets handled before the checkpoint: no side effects may repeat for them."""
        return offset < self.replay_until

    def advance_idle(self, event_time: int) -> bool:
        """Move time forward for a caught-up partition that received nothing for a while.

        Without it the last windows of a quiet partition would never close. The advanced time is
        part of the next checkpoint, so a restart sees the same watermark.
        """
        if self.max_event_time is None or event_time <= self.max_event_time:
            return False
        self.max_event_time = event_time
        return True

    def skip(self, offset: int) -> None:
        """Note an offset that contributes nothing (invalid event, already dead-lettered)."""
        self.position = offset + 1

    def close_ready(self) -> list[Rollup]:
        """Remove and return the windows the watermark has passed, in a deterministic order."""
        watermark = self.watermark
        if watermark is None:
            return []
        ready = sorted(start for start in self._open if start + self.window_us <= watermark)
        return self._emit(ready)

    def close_all(self) -> list[Rollup]:
        """Emit every open window regardless of the watermark (end of a bounded replay)."""
        return self._emit(sorted(self._open))

    def _emit(self, starts: list[int]) -> list[Rollup]:
        """Remove the windows of ``starts`` (ascending) as rollups ordered by (start, fingerprint,
        region): the same content always publishes in the same order."""
        rollups: list[Rollup] = []
        for start in starts:
            by_key = self._open.pop(start)
            rollups.extend(self._to_rollup(by_key[key]) for key in sorted(by_key))
        return rollups

    def checkpoint(self) -> Checkpoint:
        """The restart point once every rollup returned so far is durably published."""
        oldest = min((next(iter(by_key.values())).first_offset for by_key in self._open.values()),
                     default=self.position)
        return Checkpoint(
            commit_offset=min(oldest, self.position),
            position=max(self.position, self.replay_until),
            max_event_time=self.max_event_time,
        )

    def __iter__(self) -> Iterator[WindowAggregate]:
        return (window for by_key in self._open.values() for window in by_key.values())

    def _to_rollup(self, w: WindowAggregate) -> Rollup:
        keys, weights = w.sketch.to_arrays()
        return Rollup(
            {
                "rollup_id": rollup_id(self.topic, self.partition, w.fingerprint, w.region, w.window_start),
                "fingerprint": w.fingerprint,
                "query_name": w.query_name,
                "sql": w.sql,
                "region": w.region,
                "window_start": w.window_start,
                "window_end": w.window_start + self.window_us,
                "source_topic": self.topic,
                "source_partition": self.partition,
                "first_offset": w.first_offset,
                "last_offset": w.last_offset,
                "event_count": w.event_count,
                "count": w.count,
                "error_count": w.error_count,
                "cache_hits": w.cache_hits,
                "rows_sum": w.rows_sum,
                "exec_sum_ms": w.exec_sum_ms,
                "exec_min_ms": w.exec_min_ms,
                "exec_max_ms": w.exec_max_ms,
                "sql_generation_sum_ms": w.sql_generation_sum_ms,
                "db_round_trip_sum_ms": w.db_round_trip_sum_ms,
                "projection_sum_ms": w.projection_sum_ms,
                "sketch_alpha": w.sketch.alpha,
                "sketch_keys": keys,
                "sketch_weights": weights,
            }
        )
