"""Event-time tumbling windows per source partition, with additive corrections for late events.

Why not Faust's windowed tables: they close windows by wall clock, drop late writes silently and lose
windows when a worker owns several partitions (NOTES.md). This module decides everything from the
partition's content alone, so the same content in the same order yields the same rollups — the
property crash recovery relies on (see ``streams/DESIGN.md``).

Two clocks, per partition:

* **event time** (``occurred_at``, the API host's clock) says which window an event belongs to:
  ``[floor(t / size) * size, + size)`` of its (fingerprint, region);
* **arrival time** (the Kafka message timestamp: the broker's append time on our topics) drives
  the partition's clock ``max_time`` = the largest arrival seen; the watermark is
  ``max_time - grace``. One API host with a skewed clock cannot move it: a host's own clock only
  decides where its events are counted, never when anyone else's window closes.

A window closes when the watermark reaches its end and is emitted once as a rollup. An event whose
window has already closed is never dropped: it joins a **correction** for (fingerprint, region,
window, arrival slot), where the arrival slot is ``floor(max_time / slot)``. A correction closes as
soon as ``max_time`` leaves its slot (no later event can compute that slot again), and is emitted
as one more rollup of the same window, with its own deterministic id. Readers sum a window's
rollups and merge their sketches, so counts and percentiles include it. A fully shuffled hour
therefore costs about one correction per (pattern, region, window) per slot, not one per event.

Offsets address messages; a ``QueryEventBatch`` message's events share its offset and arrival, are
added in their order in the message, and a message is always handled whole between checkpoints.

Exactly-once after a restart: the checkpoint holds the first offset of the oldest open aggregate,
``max_time`` just before it, the position and the final ``max_time``. Replaying from there with
the clock restored re-makes every decision exactly; aggregates that become closable before the
checkpoint's position were already published and are not emitted again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from fraiseql_observability.sketch import DEFAULT_ALPHA, QuantileSketch
from fraiseql_observability.timeutil import MICROS

__all__ = [
    "MICROS",
    "Checkpoint",
    "Outcome",
    "PartitionWindows",
    "Rollup",
    "WindowAggregate",
    "correction_id",
    "rollup_id",
]

_ROLLUP_NAMESPACE: Final = uuid.UUID("5b0f3c4e-2d59-4a8e-9d3e-6f1f8f7e1c00")


def rollup_id(topic: str, partition: int, fingerprint: str, region: str, window_start: int) -> str:
    """Deterministic id of a window's rollup: a re-emitted window overwrites, never adds."""
    name = "\x1f".join((topic, str(partition), fingerprint, region, str(window_start)))
    return str(uuid.uuid5(_ROLLUP_NAMESPACE, name))


def correction_id(topic: str, partition: int, fingerprint: str, region: str, window_start: int,
                  slot_start: int) -> str:
    """Deterministic id of the correction of a window for the late events of one arrival slot."""
    name = "\x1f".join((topic, str(partition), fingerprint, region, str(window_start), "late",
                        str(slot_start)))
    return str(uuid.uuid5(_ROLLUP_NAMESPACE, name))


class Outcome(Enum):
    ADDED = "added"  # into its window, still open
    CORRECTED = "corrected"  # its window had closed: into a correction of that window


@dataclass(slots=True)
class WindowAggregate:
    """Running aggregates of one (fingerprint, region, window), or of one correction of it."""

    fingerprint: str
    region: str
    query_name: str
    sql: str
    window_start: int
    first_offset: int
    # max_time just before the first event: where a replay from first_offset restarts the clock.
    max_before: int | None = None
    slot_start: int | None = None  # None: the window itself; else the correction's arrival slot
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
    published: bool = False  # closable before the checkpoint's position: emitted already

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
    """A closed window or correction, ready to encode as a ``QueryRollup`` record."""

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

    ``commit_offset`` is where consumption restarts (the first offset of the oldest open
    aggregate) and ``commit_max_time`` the partition clock just before it; ``position`` is the next
    offset the worker would have read and ``max_time`` the clock there (it includes an idle
    advance). Events in ``[commit_offset, position)`` are re-read only to rebuild open aggregates.
    """

    commit_offset: int
    position: int
    max_time: int | None
    commit_max_time: int | None = None

    def encode(self) -> str:
        return ";".join(("v2", str(self.commit_offset), str(self.position), _opt(self.max_time),
                         _opt(self.commit_max_time)))

    @classmethod
    def decode(cls, text: str) -> Checkpoint:
        version, *fields = text.split(";")
        if version == "v2" and len(fields) == 4:
            commit, position, met, commit_met = fields
            return cls(int(commit), int(position), _int_or_none(met), _int_or_none(commit_met))
        if version == "v1" and len(fields) == 3:
            # v1 kept no clock at commit_offset: the replay starts from the final one (as v1 did).
            commit, position, met = fields
            return cls(int(commit), int(position), _int_or_none(met), _int_or_none(met))
        raise ValueError(f"unknown checkpoint version {version!r}")


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


def _int_or_none(text: str) -> int | None:
    return int(text) if text else None


class PartitionWindows:
    """The open windows and corrections of one source partition, and its clock."""

    def __init__(
        self,
        topic: str,
        partition: int,
        *,
        window_us: int = 60 * MICROS,
        grace_us: int = 90 * MICROS,
        slot_us: int | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        slot_us = window_us if slot_us is None else slot_us
        if window_us <= 0 or grace_us < 0 or slot_us <= 0:
            raise ValueError("window and slot must be > 0 and grace >= 0")
        self.topic = topic
        self.partition = partition
        self.window_us = window_us
        self.grace_us = grace_us
        self.slot_us = slot_us
        self.max_time: int | None = checkpoint.commit_max_time if checkpoint else None
        # Offsets below this were fully handled before the checkpoint was taken.
        self.replay_until = checkpoint.position if checkpoint else 0
        self._final_max_time = checkpoint.max_time if checkpoint else None
        self.position = checkpoint.commit_offset if checkpoint else 0
        # Open windows by start, then by (fingerprint, region). Closing looks at the few distinct
        # starts (window + grace spans about three) instead of every open window, once per batch.
        # Insertion order is offset order: a start's first window has its smallest first_offset.
        self._open: dict[int, dict[tuple[str, str], WindowAggregate]] = {}
        # Open corrections by arrival slot, then by (fingerprint, region, window start).
        self._corrections: dict[int, dict[tuple[str, str, int], WindowAggregate]] = {}
        if checkpoint is not None and self.position >= self.replay_until:
            self._restore_final_clock()

    @property
    def watermark(self) -> int | None:
        return None if self.max_time is None else self.max_time - self.grace_us

    @property
    def open_windows(self) -> int:
        return (sum(len(by_key) for by_key in self._open.values())
                + sum(len(by_key) for by_key in self._corrections.values()))

    def window_start(self, occurred_at: int) -> int:
        return occurred_at - occurred_at % self.window_us

    def add(self, offset: int, event: dict[str, Any], arrival: int, settle: bool = True) -> Outcome:
        """Fold one valid event in; ``arrival`` is its message's timestamp (µs since the epoch).

        The events of one ``QueryEventBatch`` message share its offset and arrival: the caller adds
        them with ``settle=False`` and calls :meth:`settle` after the last one, so the checkpoint's
        clock is restored only once the whole message is re-read, as it was taken.
        """
        self.position = offset + 1
        before = max_time = self.max_time
        if max_time is None or arrival > max_time:
            self.max_time = max_time = arrival
        start = self.window_start(event["occurred_at"])
        key = (event["fingerprint"], event["region"])
        if start + self.window_us > max_time - self.grace_us:  # its window is open
            by_key = self._open.get(start)
            if by_key is None:
                by_key = self._open[start] = {}
            window = by_key.get(key)
            if window is None:
                window = by_key[key] = self._aggregate(event, start, offset, before, None)
            outcome = Outcome.ADDED
        else:
            slot = max_time - max_time % self.slot_us
            by_late = self._corrections.get(slot)
            if by_late is None:
                by_late = self._corrections[slot] = {}
            late_key = (key[0], key[1], start)
            window = by_late.get(late_key)
            if window is None:
                window = by_late[late_key] = self._aggregate(event, start, offset, before, slot)
            outcome = Outcome.CORRECTED
        window.add(offset, event)
        if settle and self.position == self.replay_until:
            self._restore_final_clock()
        return outcome

    def settle(self) -> None:
        """The message at ``position - 1`` is complete (see :meth:`add`)."""
        if self.position == self.replay_until:
            self._restore_final_clock()

    def lateness(self, occurred_at: int) -> int:
        """µs between the close of ``occurred_at``'s window and the watermark (0 when open)."""
        if self.max_time is None:
            return 0
        return max(0, self.max_time - self.grace_us - self.window_start(occurred_at) - self.window_us)

    @staticmethod
    def _aggregate(event: dict[str, Any], start: int, offset: int, before: int | None,
                   slot: int | None) -> WindowAggregate:
        return WindowAggregate(fingerprint=event["fingerprint"], region=event["region"],
                               query_name=event["query_name"], sql=event["sql"], window_start=start,
                               first_offset=offset, max_before=before, slot_start=slot)

    def _restore_final_clock(self) -> None:
        """At the checkpoint's position: take its clock (it may include an idle advance) and mark
        what is closable by then as published: it was, before the checkpoint was taken."""
        final = self._final_max_time
        if final is not None and (self.max_time is None or final > self.max_time):
            self.max_time = final
        for window in self._closable():
            window.published = True

    def is_replay(self, offset: int) -> bool:
        """True for offsets handled before the checkpoint: no side effects may repeat for them."""
        return offset < self.replay_until

    def advance_idle(self, arrival: int) -> bool:
        """Move the clock forward for a caught-up partition that received nothing for a while.

        Without it the last windows of a quiet partition would never close. Safe for exactness as
        long as ``arrival`` is not after the broker's append time of the next message (the caller
        passes its clock minus ``idle_secs``): that message then moves the clock at least as far,
        so a restart that does not know of this advance decides everything the same way.
        """
        if self.max_time is None or arrival <= self.max_time:
            return False
        self.max_time = arrival
        return True

    def skip(self, offset: int, arrival: int | None = None, settle: bool = True) -> None:
        """Note an offset (or an event of a batch: ``settle`` as in :meth:`add`) that contributes
        nothing (invalid, dead-lettered); its message's timestamp still moves the clock: the
        broker appended it then, whatever it holds."""
        self.position = offset + 1
        if arrival is not None and (self.max_time is None or arrival > self.max_time):
            self.max_time = arrival
        if settle and self.position == self.replay_until:
            self._restore_final_clock()

    def _ready_starts(self) -> tuple[list[int], list[int]]:
        if self.max_time is None:
            return [], []
        watermark = self.max_time - self.grace_us
        windows = sorted(start for start in self._open if start + self.window_us <= watermark)
        slots = sorted(slot for slot in self._corrections if slot + self.slot_us <= self.max_time)
        return windows, slots

    def _closable(self) -> Iterator[WindowAggregate]:
        windows, slots = self._ready_starts()
        for start in windows:
            yield from self._open[start].values()
        for slot in slots:
            yield from self._corrections[slot].values()

    def close_ready(self) -> list[Rollup]:
        """Remove and return the windows and corrections that are complete, in a fixed order."""
        windows, slots = self._ready_starts()
        return self._emit(windows, slots)

    def close_all(self) -> list[Rollup]:
        """Emit everything still open regardless of the clock (tests; never a live worker)."""
        return self._emit(sorted(self._open), sorted(self._corrections))

    def _emit(self, starts: list[int], slots: list[int]) -> list[Rollup]:
        """Windows ordered by (start, fingerprint, region), then corrections by (slot, fingerprint,
        region, window): the same content always publishes in the same order. While re-reading
        before the checkpoint's position, whatever is complete was published before it."""
        if self.position < self.replay_until:
            for start in starts:
                self._open.pop(start)
            for slot in slots:
                self._corrections.pop(slot)
            return []
        rollups: list[Rollup] = []
        for start in starts:
            by_key = self._open.pop(start)
            rollups.extend(self._to_rollup(by_key[key]) for key in sorted(by_key)
                           if not by_key[key].published)
        for slot in slots:
            by_late = self._corrections.pop(slot)
            rollups.extend(self._to_rollup(by_late[key]) for key in sorted(by_late)
                           if not by_late[key].published)
        return rollups

    def checkpoint(self) -> Checkpoint:
        """The restart point once every rollup returned so far is durably published."""
        oldest: WindowAggregate | None = None
        for group in self._groups():
            first = next(iter(group.values()), None)  # insertion order: the group's oldest
            if first is not None and (oldest is None or first.first_offset < oldest.first_offset):
                oldest = first
        position = max(self.position, self.replay_until)
        if oldest is None or oldest.first_offset >= self.position:
            return Checkpoint(self.position, position, self.max_time, self.max_time)
        return Checkpoint(oldest.first_offset, position, self.max_time, oldest.max_before)

    def _groups(self) -> list[dict[Any, WindowAggregate]]:
        return [*self._open.values(), *self._corrections.values()]

    def __iter__(self) -> Iterator[WindowAggregate]:
        for group in self._groups():
            yield from group.values()

    def _to_rollup(self, w: WindowAggregate) -> Rollup:
        keys, weights = w.sketch.to_arrays()
        if w.slot_start is None:
            rid = rollup_id(self.topic, self.partition, w.fingerprint, w.region, w.window_start)
        else:
            rid = correction_id(self.topic, self.partition, w.fingerprint, w.region, w.window_start,
                                w.slot_start)
        return Rollup(
            {
                "rollup_id": rid,
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
                "correction_slot": w.slot_start,
            }
        )
