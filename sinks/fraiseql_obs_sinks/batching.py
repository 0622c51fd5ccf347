"""The sink's pending batch: messages accepted since the last commit, grouped by partition.

A batch holds, per source partition, the rows decoded so far, the dead letters of the messages
that could not be used, and the offset to commit once all of it is durable. Grouping by partition
is what makes rebalances cheap: a revoked partition's part is simply dropped (its next owner
re-reads it from the last committed offset) while the rest of the batch goes on. Kept apart from
the consumer loop (:mod:`fraiseql_obs_sinks.worker`), which decides *when* a batch is written and
committed; this module only keeps the books.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .deadletters import DeadLetter, Source
from .records import RollupRow, TableStatsRow

__all__ = ["Batch", "PartitionBatch", "TopicPartitionKey"]

TopicPartitionKey = tuple[str, int]


@dataclass(slots=True)
class PartitionBatch:
    """One source partition's share of a batch."""

    rollups: list[tuple[Source, RollupRow]] = field(default_factory=list)
    table_stats: list[tuple[Source, TableStatsRow]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    next_offset: int = -1
    messages: int = 0


class Batch:
    """Messages accepted since the last commit, grouped by partition."""

    def __init__(self) -> None:
        self.parts: dict[TopicPartitionKey, PartitionBatch] = {}
        self.first_at: float | None = None
        self.messages = 0

    def _part(self, source: Source, now: float) -> PartitionBatch:
        if self.first_at is None:
            self.first_at = now
        part = self.parts.setdefault((source.topic, source.partition), PartitionBatch())
        part.next_offset = max(part.next_offset, source.offset + 1)
        part.messages += 1
        self.messages += 1
        return part

    def add_rollup(self, source: Source, row: RollupRow, now: float) -> None:
        self._part(source, now).rollups.append((source, row))

    def add_table_stats(self, source: Source, row: TableStatsRow, now: float) -> None:
        self._part(source, now).table_stats.append((source, row))

    def add_dead_letter(self, letter: DeadLetter, now: float) -> None:
        self._part(letter.source, now).dead_letters.append(letter)

    def drop(self, keys: set[TopicPartitionKey]) -> int:
        """Forget revoked partitions; returns how many messages were dropped."""
        dropped = 0
        for key in keys & self.parts.keys():
            dropped += self.parts.pop(key).messages
        self.messages -= dropped
        return dropped

    def reject(self, source: Source, letter: DeadLetter) -> None:
        """Replace a row the database refused by its dead letter (so a retry skips it)."""
        part = self.parts[(source.topic, source.partition)]
        part.rollups = [(s, r) for s, r in part.rollups if s is not source]
        part.table_stats = [(s, r) for s, r in part.table_stats if s is not source]
        part.dead_letters.append(letter)

    def ready(self, now: float, size: int, timeout: float) -> bool:
        if self.messages >= size:
            return True
        return self.first_at is not None and now - self.first_at >= timeout

    def rollup_items(self) -> list[tuple[Source, RollupRow]]:
        return [item for part in self.parts.values() for item in part.rollups]

    def table_stats_items(self) -> list[tuple[Source, TableStatsRow]]:
        return [item for part in self.parts.values() for item in part.table_stats]

    def dead_letters(self) -> Iterator[DeadLetter]:
        for part in self.parts.values():
            yield from part.dead_letters

    def __bool__(self) -> bool:
        return bool(self.parts)
