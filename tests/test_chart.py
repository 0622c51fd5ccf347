"""The demo's before/after chart (fraiseql_obs_app.chart): its SVG structure, and that a real
headless Chromium draws it (screenshot pixels, dumped DOM)."""

from __future__ import annotations

import itertools
import os
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fraiseql_obs_app.chart import (
    AFTER,
    BEFORE,
    ESTIMATED,
    MEASURED,
    BeforeAfter,
    PatternResult,
    Percentiles,
    nice_ticks,
    render_html,
    render_svg,
    write_chart,
)

SVG = "{http://www.w3.org/2000/svg}"
BIG = PatternResult("ordersByCustomerEmail", Percentiles(179.0, 347.0, 460.0),
                    Percentiles(2.1, 347.0 / 94, 5.2), estimated_speedup=80.0)
SMALL = PatternResult("customer<Orders>&co", Percentiles(40.0, 90.0, 130.0),
                      Percentiles(20.0, 45.0, 60.0), estimated_speedup=2.5)
CHART = BeforeAfter("Before/after: add_index on tv_order (data->>'customer_email')",
                    "400 real queries per phase", (BIG, SMALL))


def _svg(chart: BeforeAfter = CHART) -> ET.Element:
    return ET.fromstring(render_svg(chart).encode("utf-8"))  # noqa: S314 - our own output


def _texts(element: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in element.iter(f"{SVG}text")]


def _bars(group: ET.Element, cls: str) -> list[ET.Element]:
    return [r for r in group.iter(f"{SVG}rect") if set(cls.split()) <= set(
        r.get("class", "").split())]


def _width(group: ET.Element, cls: str) -> float:
    [bar] = _bars(group, cls)
    return float(bar.get("width", "nan"))


def test_svg_has_labelled_axes_and_one_group_per_pattern() -> None:
    root = _svg()
    assert root.tag == f"{SVG}svg" and root.get("width") == "1200"
    groups = [g for g in root.iter(f"{SVG}g") if g.get("class") == "pattern"]
    assert [g.get("data-name") for g in groups] == [BIG.name, SMALL.name]
    for group in groups:
        texts = _texts(group)
        assert "latency (ms, linear)" in texts
        assert "p95 speedup (before / after, linear)" in texts
        assert {"p50", "p95", "p99"} <= set(texts) and {"measured", "estimated"} <= set(texts)
        assert len([ln for ln in group.iter(f"{SVG}line") if ln.get("class") == "axis"]) == 2
        assert any(t.startswith("×") for t in texts if t != "×0")  # tick labels on the × axis
        assert len(_bars(group, "bar before")) == 3 and len(_bars(group, "bar after")) == 3
    big = _texts(groups[0])
    assert "×94" in big and "×80" in big and "×94 faster at p95 (estimated ×80)" in big
    assert "347 ms before" in big and "3.7 ms after" in big
    assert "×2" in _texts(groups[1]) and "×2.5" in _texts(groups[1])
    # The name is text, never markup.
    assert "customer<Orders>&co" in _texts(groups[1]) and "<Orders>" not in render_svg(CHART)


def test_bars_are_linear_so_94x_looks_like_94x() -> None:
    groups = [g for g in _svg().iter(f"{SVG}g") if g.get("class") == "pattern"]
    big, small = groups
    ratio = _width(big, "bar before p95") / _width(big, "bar after p95")
    assert ratio == pytest.approx(94, rel=0.01)
    assert _width(small, "bar before p50") / _width(small, "bar after p50") == pytest.approx(2, rel=1e-3)
    # One speedup axis for all rows: 94x is 47 times the bar of 2x, the estimate beside it.
    assert (_width(big, "bar speedup measured") / _width(small, "bar speedup measured")
            == pytest.approx(47, rel=0.01))
    assert (_width(big, "bar speedup measured") / _width(big, "bar speedup estimated")
            == pytest.approx(94 / 80, rel=0.01))


def test_empty_and_odd_values_still_render() -> None:
    empty = _svg(BeforeAfter("t", "s", ()))
    assert "no pattern measured both before and after" in _texts(empty)
    odd = PatternResult("q", Percentiles(float("nan"), 0.0, 1.0), Percentiles(0.0, 0.0, 0.5),
                        estimated_speedup=float("inf"))
    texts = _texts(_svg(BeforeAfter("t", "s", (odd,))))
    assert "×?" in texts
    assert "<script" not in render_html(CHART) and "<svg" in render_html(CHART)


@given(st.floats(1e-6, 1e9))
def test_ticks_cover_the_range_in_a_few_round_steps(top: float) -> None:
    ticks = nice_ticks(top)
    assert ticks[0] == 0 and ticks[-1] >= top * (1 - 1e-9)
    assert 2 <= len(ticks) <= 12
    steps = {round(b - a, 12) for a, b in itertools.pairwise(ticks)}
    assert len({round(s / max(steps), 6) for s in steps}) == 1  # evenly spaced


# --- a real browser -----------------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail("chromium is missing but installable here: run scripts/bootstrap "
                    "(it runs apt-get install chromium)")
    pytest.skip("chromium is not installed and cannot be installed without root "
                "(sudo apt-get install chromium)")


def _browser(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", "--window-size=1200,800", *args],
        capture_output=True, text=True, timeout=120, check=False)


def _rgb_pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Rows of RGB(A) pixels of an 8-bit truecolour PNG (what Chromium writes)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + (left + previous[i]) // 2) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = previous[i], previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line if bpp == 3 else bytes(
            v for i, v in enumerate(line) if i % 4 != 3)))
        previous = line
    return width, height, rows


def _hex(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def test_headless_chromium_draws_the_chart(tmp_path: Path) -> None:
    chromium = _chromium()
    html_path, svg_path = write_chart(CHART, tmp_path / "before-after.html")
    assert svg_path.suffix == ".svg"
    assert ET.fromstring(svg_path.read_bytes()).tag == f"{SVG}svg"  # noqa: S314 - our own output
    shot = tmp_path / "chart.png"
    result = _browser(chromium, tmp_path / "profile-shot", f"--screenshot={shot}",
                      html_path.as_uri())
    assert shot.exists(), result.stderr[-2000:]
    width, height, rows = _rgb_pixels(shot.read_bytes())
    assert (width, height) == (1200, 800)
    colours: Counter[tuple[int, int, int]] = Counter()
    first_row: Counter[tuple[int, int, int]] = Counter()  # the first pattern's rows of pixels
    for y, line in enumerate(rows):
        for x in range(0, len(line), 3):
            pixel = (line[x], line[x + 1], line[x + 2])
            if pixel != (255, 255, 255):
                colours[pixel] += 1
                if 140 <= y < 260:
                    first_row[pixel] += 1
    drawn = sum(colours.values())
    assert drawn > 0.03 * width * height, f"only {drawn} non-white pixels"

    def near(counter: Counter[tuple[int, int, int]], colour: str) -> int:
        r, g, b = _hex(colour)
        return sum(n for (pr, pg, pb), n in counter.items()
                   if abs(pr - r) <= 3 and abs(pg - g) <= 3 and abs(pb - b) <= 3)

    for colour in (BEFORE, AFTER, MEASURED, ESTIMATED):
        assert near(colours, colour) > 500, colour
    # Drawn to scale: the 94x pattern's red (before) bars dwarf its green (after) ones.
    assert near(first_row, BEFORE) > 20 * near(first_row, AFTER)

    dom = _browser(chromium, tmp_path / "profile-dom", "--dump-dom", html_path.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    for text in ("latency (ms, linear)", "p95 speedup (before / after, linear)", "×94", "×80",
                 "×2.5", "p50", "p99", "347 ms before"):
        assert text in dom.stdout, text
