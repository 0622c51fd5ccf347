"""The before/after chart of the demo's closed loop: pure functions from typed records to SVG.

One row per affected pattern: on the left its p50/p95/p99 before (red) and after (green) on a
linear millisecond axis of its own, so the bars' lengths compare as the latencies do; on the right
the p95 speedup, measured next to the analyzer's estimate, on one linear ``×`` axis shared by all
rows, so a 94× gain is a bar 47 times longer than a 2× one, and the number is printed too.

:func:`render_svg` returns a standalone SVG document (what a chat post can carry);
:func:`render_html` a page embedding it; :func:`write_chart` writes both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Final

__all__ = [
    "BeforeAfter",
    "PatternResult",
    "Percentiles",
    "nice_ticks",
    "render_html",
    "render_svg",
    "write_chart",
]

WIDTH: Final = 1200
HEADER: Final = 112
ROW: Final = 190
FOOTER: Final = 24
NAME_X: Final = 24
LAT_X0: Final = 110  # latency panel: bars from here
LAT_X1: Final = 660
SPEED_X0: Final = 880  # speedup panel
SPEED_X1: Final = 1150
BEFORE: Final = "#c0392b"
AFTER: Final = "#27ae60"
MEASURED: Final = "#2c6fbb"
ESTIMATED: Final = "#95a5a6"
INK: Final = "#222"
GRID: Final = "#ddd"


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50_ms: float
    p95_ms: float
    p99_ms: float

    def items(self) -> tuple[tuple[str, float], ...]:
        return (("p50", self.p50_ms), ("p95", self.p95_ms), ("p99", self.p99_ms))


@dataclass(frozen=True, slots=True)
class PatternResult:
    """One affected pattern: measured latencies before and after, and the analyzer's estimate."""

    name: str
    before: Percentiles
    after: Percentiles
    estimated_speedup: float  # p95 before / after, as the analyzer predicted

    @property
    def measured_speedup(self) -> float:
        if _ok(self.before.p95_ms) and _ok(self.after.p95_ms) and self.after.p95_ms > 0:
            return self.before.p95_ms / self.after.p95_ms
        return math.nan


@dataclass(frozen=True, slots=True)
class BeforeAfter:
    title: str
    subtitle: str
    patterns: tuple[PatternResult, ...]


def _ok(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0, step, 2·step, … up to the first tick ≥ ``top``; steps 1, 2, 2.5 or 5 × 10^k."""
    if not _ok(top) or top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [0.0]
    while ticks[-1] < top * (1 - 1e-9):
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _num(value: float) -> str:
    if not _ok(value):
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.2g}" if value < 1 else f"{value:.1f}".rstrip("0").rstrip(".")


def _times(value: float) -> str:
    return "×" + _num(value) if _ok(value) else "×?"


def _tick_label(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:g}"


def _text(x: float, y: float, body: str, *, size: int = 12, anchor: str = "start",
          weight: str = "normal", fill: str = INK, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}"{klass}>{escape(body)}</text>')


def _bar(x: float, y: float, width: float, height: float, fill: str, cls: str,
         value: float) -> str:
    return (f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{width:.2f}" '
            f'height="{height:.1f}" fill="{fill}" data-value="{value:.6g}"/>')


def _axis(x0: float, x1: float, y: float, ticks: Sequence[float], label: str,
          fmt: str = "{}", grid_top: float | None = None) -> list[str]:
    """A horizontal axis with tick marks, tick labels and a title."""
    top = ticks[-1]
    out = [f'<line class="axis" x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" '
           f'stroke="{INK}" stroke-width="1"/>']
    for tick in ticks:
        x = x0 + (x1 - x0) * tick / top
        if grid_top is not None and tick > 0:
            out.append(f'<line class="grid" x1="{x:.1f}" y1="{grid_top:.1f}" x2="{x:.1f}" '
                       f'y2="{y:.1f}" stroke="{GRID}" stroke-width="1"/>')
        out.append(f'<line class="tick" x1="{x:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y + 5:.1f}" '
                   f'stroke="{INK}" stroke-width="1"/>')
        out.append(_text(x, y + 18, fmt.format(_tick_label(tick)), size=11, anchor="middle",
                         cls="tick-label"))
    out.append(_text((x0 + x1) / 2, y + 36, label, size=12, anchor="middle", cls="axis-label"))
    return out


def _row(index: int, pattern: PatternResult, speed_ticks: Sequence[float]) -> str:
    y0 = HEADER + index * ROW
    measured, estimated = pattern.measured_speedup, pattern.estimated_speedup
    parts = [f'<g class="pattern" data-name="{escape(pattern.name)}">',
             _text(NAME_X, y0 + 18, pattern.name, size=15, weight="bold", cls="pattern-name"),
             _text(SPEED_X0, y0 + 18, f"{_times(measured)} faster at p95 (estimated "
                   f"{_times(estimated)})", size=15, weight="bold", fill=MEASURED,
                   cls="speedup")]
    # Latency panel: each row its own linear ms axis, up to the slowest of its six values.
    values = [v for p in (pattern.before, pattern.after) for _, v in p.items() if _ok(v)]
    ticks = nice_ticks(max(values, default=0.0))
    scale = (LAT_X1 - LAT_X0) / ticks[-1]
    top = y0 + 32
    axis_y = top + 3 * 34 + 4
    sx = (SPEED_X1 - SPEED_X0) / speed_ticks[-1]
    # Axes and grid first: the bars are drawn over them.
    parts += _axis(LAT_X0, LAT_X1, axis_y, ticks, "latency (ms, linear)", grid_top=top - 4)
    parts += _axis(SPEED_X0, SPEED_X1, axis_y, speed_ticks, "p95 speedup (before / after, linear)",
                   fmt="×{}", grid_top=top - 4)
    for g, ((name, before), (_, after)) in enumerate(zip(pattern.before.items(),
                                                         pattern.after.items(), strict=True)):
        gy = top + g * 34
        parts.append(_text(LAT_X0 - 10, gy + 18, name, size=13, anchor="end", weight="bold",
                           cls="quantile"))
        for k, (label, value, color) in enumerate((("before", before, BEFORE),
                                                   ("after", after, AFTER))):
            by = gy + k * 15
            width = value * scale if _ok(value) else 0.0
            parts.append(_bar(LAT_X0, by, width, 13, color, f"bar {label} {name}", value))
            parts.append(_text(LAT_X0 + width + 5, by + 11, f"{_num(value)} ms {label}", size=11,
                               cls="value"))
    # Speedup panel: measured next to estimated, one linear × axis for all rows.
    for k, (label, value, color) in enumerate((("measured", measured, MEASURED),
                                               ("estimated", estimated, ESTIMATED))):
        by = top + 8 + k * 40
        width = value * sx if _ok(value) else 0.0
        parts.append(_text(SPEED_X0 - 10, by + 17, label, size=12, anchor="end", cls="series"))
        parts.append(_bar(SPEED_X0, by, width, 24, color, f"bar speedup {label}", value))
        inside = width > 70  # long bars carry their number, short ones have it after them
        parts.append(_text(SPEED_X0 + width - 6 if inside else SPEED_X0 + width + 5, by + 17,
                           _times(value), size=14, weight="bold", cls="times",
                           anchor="end" if inside else "start", fill="#fff" if inside else INK))
    parts.append("</g>")
    return "\n".join(parts)


def _legend(y: float) -> str:
    items = (("before", BEFORE), ("after", AFTER), ("measured speedup", MEASURED),
             ("estimated speedup", ESTIMATED))
    out = ['<g class="legend">']
    x = float(NAME_X)
    for label, color in items:
        out.append(f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="14" height="12" fill="{color}"/>')
        out.append(_text(x + 20, y, label, size=12))
        x += 30 + 7.5 * len(label)
    out.append("</g>")
    return "\n".join(out)


def render_svg(chart: BeforeAfter) -> str:
    """The chart as a standalone SVG document."""
    rows = chart.patterns
    height = HEADER + max(len(rows), 1) * ROW + FOOTER
    speeds = [v for p in rows for v in (p.measured_speedup, p.estimated_speedup) if _ok(v)]
    speed_ticks = nice_ticks(max(speeds, default=1.0))
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#fff"/>',
        _text(NAME_X, 36, chart.title, size=20, weight="bold", cls="title"),
        _text(NAME_X, 60, chart.subtitle, size=13, fill="#555", cls="subtitle"),
        _legend(90),
    ]
    if not rows:
        parts.append(_text(WIDTH / 2, HEADER + ROW / 2, "no pattern measured both before and after",
                           size=16, anchor="middle", cls="empty"))
    parts += [_row(i, p, speed_ticks) for i, p in enumerate(rows)]
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def render_html(chart: BeforeAfter) -> str:
    """A self-contained page with the SVG inline (no script, no external resource)."""
    svg = render_svg(chart).split("\n", 1)[1]  # inline SVG: no XML declaration
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(chart.title)}</title>"
            "<style>body{margin:0;background:#fff}</style></head>\n<body>\n"
            f"{svg}</body></html>\n")


def write_chart(chart: BeforeAfter, html_path: Path, svg_path: Path | None = None) -> list[Path]:
    """Write the HTML page and the standalone SVG (default: next to it); returns both paths."""
    svg_path = svg_path or html_path.with_suffix(".svg")
    html_path.write_text(render_html(chart), encoding="utf-8")
    svg_path.write_text(render_svg(chart), encoding="utf-8")
    return [html_path, svg_path]
