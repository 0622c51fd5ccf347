"""Ranking and priority of suggestions, and what the window's data is enough to say.

SPEC §5's ``impact`` (queries/day × estimated speedup) stays in every suggestion, but it does not
set the priority any more: it grows with how often a query runs even when each run saves a
fraction of a millisecond, so a busy workload had almost every suggestion ``critical`` and a
suggestion could outrank one with a higher priority. Here both come from one number, the **time
saved per day**, Σ over the suggestion's patterns of queries_per_day × (mean before − projected
mean after):

* the ranking sorts by it (ties: more queries/day first); index drops, which save no query time,
  come last, smallest first;
* the priority compares it with the workload's **database time per day** (Σ over all patterns of
  queries_per_day × mean database time) and with an absolute amount (:data:`TIERS`), so a
  suggestion that saves more is never of a lower priority than one that saves less;
* with less than :data:`MIN_DATA_FOR_HIGH` of data in the window nothing is ``high`` or
  ``critical`` (per-day figures extrapolated from minutes are guesses), and every format says so
  (:meth:`DataCoverage.statement`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

__all__ = [
    "MIN_DATA_FOR_HIGH",
    "SHORT_FRACTION",
    "TIERS",
    "DataCoverage",
    "Rankable",
    "assign_priorities",
    "format_duration",
    "priority_for_saving",
    "rank",
]

HOUR_MS: Final = 3_600_000.0
# (priority, least share of the workload's database time saved, least time saved per day in ms).
# Both must hold. critical: a quarter of all database time and an hour a day; the absolute part
# keeps a small, idle workload (where any change is a large share of little) out of the top tiers.
TIERS: Final[tuple[tuple[str, float, float], ...]] = (
    ("critical", 0.25, 1.0 * HOUR_MS),
    ("high", 0.05, HOUR_MS / 6),  # 10 min/day
    ("medium", 0.01, HOUR_MS / 60),  # 1 min/day
)
LOWEST: Final = "low"
# High and critical need about an hour of data: the newest minutes of any window are still closing
# (a minute's window closes ~90 s after it ends), so 55 minutes observed counts as the hour.
MIN_DATA_FOR_HIGH: Final = 55 * 60.0  # seconds
CAPPED_AT: Final = "medium"
# The data "covers" the window when it spans at least this share of it (the same closing lag).
SHORT_FRACTION: Final = 0.95


class Rankable(Protocol):
    @property
    def time_saved_ms_per_day(self) -> float: ...

    @property
    def queries_per_day(self) -> float: ...

    @property
    def storage_mb(self) -> float: ...


T = TypeVar("T", bound=Rankable)


def rank(kept: Iterable[T], drops: Iterable[T] = ()) -> list[T]:
    """Suggestions in report order: most time saved per day first, then the index drops."""
    ranked = sorted(kept, key=lambda c: (-_finite(c.time_saved_ms_per_day), -c.queries_per_day))
    return ranked + sorted(drops, key=lambda c: c.storage_mb)


def _finite(value: float) -> float:
    return value if math.isfinite(value) and value > 0 else 0.0


def format_duration(seconds: float) -> str:
    """75 s, 12 min, 3.5 h, 2.0 days: how much data a window holds, for people."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@dataclass(frozen=True, slots=True)
class DataCoverage:
    """How much of the window the data spans (first to last closed window seen)."""

    window_secs: float
    data_secs: float  # 0: no data at all

    @property
    def short(self) -> bool:
        """The window holds less data than it claims to cover."""
        return self.data_secs < SHORT_FRACTION * self.window_secs

    @property
    def enough_for_high(self) -> bool:
        return self.data_secs >= MIN_DATA_FOR_HIGH

    @property
    def priority_cap(self) -> str | None:
        return None if self.enough_for_high else CAPPED_AT

    def statement(self) -> str | None:
        """One sentence for every report format; None when the data covers the window."""
        if self.data_secs <= 0:
            return (f"no data: the window ({format_duration(self.window_secs)}) holds no closed "
                    "rollup window yet")
        if not self.short and self.enough_for_high:
            return None
        held = format_duration(self.data_secs)
        text = (f"short data: the window ({format_duration(self.window_secs)}) holds {held} of data; "
                f"queries/day and time saved per day are extrapolated from those {held}")
        if not self.enough_for_high:
            text += (f", so no suggestion is ranked above {CAPPED_AT} until the window holds "
                     f"{format_duration(MIN_DATA_FOR_HIGH)} of data (about an hour)")
        return text


def priority_for_saving(saved_ms_per_day: float, workload_db_ms_per_day: float,
                        cap: str | None = None) -> str:
    """The priority of a suggestion saving ``saved_ms_per_day`` of query time (see :data:`TIERS`).

    Monotone: for a fixed workload, more time saved never gives a lower priority.
    """
    saved = _finite(saved_ms_per_day)
    total = _finite(workload_db_ms_per_day)
    share = min(saved / total, 1.0) if total > 0 else 0.0
    names = [name for name, _, _ in TIERS] + [LOWEST]
    floor_index = names.index(cap) if cap is not None else 0
    for index, (_, least_share, least_ms) in enumerate(TIERS):
        if share >= least_share and saved >= least_ms:
            return names[max(index, floor_index)]
    return LOWEST


def assign_priorities(ranked: Sequence[Rankable], workload_db_ms_per_day: float,
                      coverage: DataCoverage) -> list[str]:
    """Priorities of suggestions in :func:`rank` order (non-increasing along it)."""
    cap = coverage.priority_cap
    return [priority_for_saving(c.time_saved_ms_per_day, workload_db_ms_per_day, cap)
            for c in ranked]
