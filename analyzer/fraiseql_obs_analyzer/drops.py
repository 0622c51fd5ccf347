"""Unused indexes to drop (``drop_index`` candidates).

An index is a candidate when it is neither unique nor primary, existed for the whole window,
serves no pattern of the workload, and its scan counter barely moved: fewer than
:data:`DROP_SCANS_PER_30_DAYS` scans per 30 days, scaled to the window between the oldest and the
newest table statistics — or 0 since the last statistics reset when the window holds one snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .context import Candidate, PatternContext, TableContext, index_fit
from .shape import IndexDefinition, KeyExpr, Usage

__all__ = ["DROP_SCANS_PER_30_DAYS", "find_drop_candidates"]

DROP_SCANS_PER_30_DAYS: Final = 10.0


def find_drop_candidates(tables: Sequence[TableContext], patterns: Sequence[PatternContext],
                         new_indexes: set[tuple[str, str, str]]) -> list[Candidate]:
    """Indexes unused over the window that serve no pattern (see the module docstring).

    ``new_indexes``: (schema, table, index) that appeared during the window — never dropped.
    """
    out: list[Candidate] = []
    for table in tables:
        snapshot = table.snapshot
        if snapshot is None:
            continue
        baseline = snapshot.baseline
        for index in snapshot.indexes:
            if index.is_primary or index.is_unique or (index.parsed and index.parsed.unique):
                continue
            if (snapshot.schema_name, snapshot.table_name, index.name) in new_indexes:
                continue
            if index.parsed is not None and _serves_workload(table, index.parsed, patterns):
                continue
            base = None
            if baseline is not None and baseline.taken_at < snapshot.taken_at:
                base = next((i for i in baseline.indexes if i.name == index.name), None)
                if base is None:
                    continue  # created during the window
            if base is not None and baseline is not None:
                span_days = (snapshot.taken_at - baseline.taken_at).total_seconds() / 86400.0
                delta = index.scans - base.scans
                if delta < 0:  # statistics were reset meanwhile
                    delta = index.scans
                if span_days < 1.0 and index.scans > 0:
                    continue
                allowed = DROP_SCANS_PER_30_DAYS * span_days / 30.0
                if delta >= max(allowed, 1.0):
                    continue
                why = (f"{delta} scan(s) in {span_days:.1f} days of statistics "
                       f"(threshold {max(allowed, 1.0):.1f})")
            else:
                if index.scans > 0:
                    continue
                why = "0 scans since the statistics were last reset (one snapshot in the window)"
            candidate = Candidate("drop_index", table, drop=index,
                                  keys=tuple(k for k in (index.parsed.keys if index.parsed else ())
                                             if k is not None),
                                  method=index.parsed.method if index.parsed else "btree")
            candidate.storage_mb = -index.size_bytes / 2**20
            candidate.notes.append(why)
            candidate.validation = {"method": "statistics", "scans": index.scans,
                                    "size_bytes": index.size_bytes}
            out.append(candidate)
    return out


def _serves_workload(table: TableContext, index: IndexDefinition,
                     patterns: Sequence[PatternContext]) -> bool:
    keys: list[KeyExpr] = []
    for key in index.keys:
        if key is None:
            break
        keys.append(key)
    if not keys:
        return False
    for pattern in patterns:
        if table not in pattern.tables.values():
            continue
        uses = pattern.uses_on(table)
        if index.method == "gin":
            if any(u.usage == Usage.CONTAINMENT and u.key == keys[0] for u in uses):
                return True
        elif index_fit(keys, uses, pattern, table) is not None:
            return True
    return False
