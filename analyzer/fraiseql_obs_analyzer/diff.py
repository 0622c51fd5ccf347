"""``fraiseql-cli diff-analysis A.json B.json``: what appeared, disappeared, changed between two runs.

Suggestions are matched by id (stable across runs: type, table and keys). "Changed" means the
priority changed or the estimated speedup moved by more than :data:`SPEEDUP_TOLERANCE`
(relative) — estimates wobble a little from week to week and that is not news.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fraiseql_observability.errors import ConfigError

__all__ = ["AnalysisDiff", "diff_documents", "load_document", "render_diff_json",
           "render_diff_text"]

SPEEDUP_TOLERANCE: Final = 0.10


@dataclass(frozen=True, slots=True)
class AnalysisDiff:
    before: str  # analyzed_at of A
    after: str
    appeared: list[dict[str, Any]]
    disappeared: list[dict[str, Any]]
    changed: list[dict[str, Any]]
    unchanged: int


def load_document(path: Path) -> dict[str, Any]:
    """An ``analyze --format json`` document; a usage error (exit 2) when it is not one."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not an analysis JSON document ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("suggestions"), list):
        raise ConfigError(f"{path}: not an analysis JSON document (no suggestions[])")
    return document


def _summary(s: Mapping[str, Any]) -> dict[str, Any]:
    impact = s.get("impact") or {}
    return {"id": s.get("id"), "type": s.get("type"), "table": s.get("table"),
            "columns": s.get("columns"), "priority": s.get("priority"),
            "estimated_speedup": impact.get("estimated_speedup"),
            "queries_per_day": impact.get("queries_per_day")}


def _key(s: Mapping[str, Any]) -> str:
    sid = s.get("id")
    if isinstance(sid, str) and sid:
        return sid
    return json.dumps([s.get("type"), s.get("table"), s.get("columns")], sort_keys=True)


def diff_documents(a: Mapping[str, Any], b: Mapping[str, Any]) -> AnalysisDiff:
    old = {_key(s): s for s in a.get("suggestions", []) if isinstance(s, Mapping)}
    new = {_key(s): s for s in b.get("suggestions", []) if isinstance(s, Mapping)}
    appeared = [_summary(new[k]) for k in new if k not in old]
    disappeared = [_summary(old[k]) for k in old if k not in new]
    changed: list[dict[str, Any]] = []
    unchanged = 0
    for key, current in new.items():
        if key not in old:
            continue
        before, after = _summary(old[key]), _summary(current)
        fields: dict[str, Any] = {}
        if before["priority"] != after["priority"]:
            fields["priority"] = {"from": before["priority"], "to": after["priority"]}
        s0, s1 = before["estimated_speedup"], after["estimated_speedup"]
        if isinstance(s0, int | float) and isinstance(s1, int | float):
            if abs(s1 - s0) > SPEEDUP_TOLERANCE * max(abs(s0), 1e-9):
                fields["estimated_speedup"] = {"from": s0, "to": s1}
        elif s0 != s1:
            fields["estimated_speedup"] = {"from": s0, "to": s1}
        if fields:
            changed.append({**after, "changes": fields})
        else:
            unchanged += 1
    return AnalysisDiff(str(a.get("analyzed_at", "")), str(b.get("analyzed_at", "")), appeared,
                        disappeared, changed, unchanged)


def render_diff_json(diff: AnalysisDiff) -> str:
    return json.dumps({"from": diff.before, "to": diff.after, "appeared": diff.appeared,
                       "disappeared": diff.disappeared, "changed": diff.changed,
                       "unchanged": diff.unchanged}, indent=2, ensure_ascii=False)


def _line(s: Mapping[str, Any]) -> str:
    columns = ", ".join(str(c) for c in s.get("columns") or [])
    speed = s.get("estimated_speedup")
    speed_text = f"{speed:g}x" if isinstance(speed, int | float) else "-"
    text = (f"[{s.get('priority')}] {s.get('type')} on {s.get('table')}"
            + (f" ({columns})" if columns else "") + f", {speed_text}   {s.get('id')}")
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def render_diff_text(diff: AnalysisDiff) -> str:
    lines = [f"Analysis {diff.before} -> {diff.after}: {len(diff.appeared)} appeared, "
             f"{len(diff.disappeared)} disappeared, {len(diff.changed)} changed, "
             f"{diff.unchanged} unchanged"]
    if diff.appeared:
        lines += ["", "Appeared:"] + [f"  + {_line(s)}" for s in diff.appeared]
    if diff.disappeared:
        lines += ["", "Disappeared (applied, or no longer worth it):"]
        lines += [f"  - {_line(s)}" for s in diff.disappeared]
    if diff.changed:
        lines += ["", "Changed:"]
        for change in diff.changed:
            fields = change["changes"]
            parts = []
            if "priority" in fields:
                parts.append(f"priority {fields['priority']['from']} -> {fields['priority']['to']}")
            if "estimated_speedup" in fields:
                parts.append(f"speedup {fields['estimated_speedup']['from']}x -> "
                             f"{fields['estimated_speedup']['to']}x")
            lines.append(f"  ~ {_line(change)}: {'; '.join(parts)}")
    return "\n".join(lines)
