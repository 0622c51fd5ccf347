"""Durations (#15): one parser for --window, analysis.window and relative times (-1h)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraiseql_obs_app.common import parse_time, parse_window
from fraiseql_observability.config import WINDOWS
from fraiseql_observability.timeutil import MAX_DURATION, parse_duration

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@settings(max_examples=300, deadline=None)
@given(n=st.integers(min_value=1, max_value=10_000), unit=st.sampled_from(sorted(UNITS)))
def test_every_positive_duration_parses(n: int, unit: str) -> None:
    expected = timedelta(seconds=n * UNITS[unit])
    if expected > MAX_DURATION:
        with pytest.raises(ValueError, match="at most"):
            parse_duration(f"{n}{unit}")
    else:
        assert parse_duration(f"{n}{unit}") == expected


def test_spec_windows_keep_their_meaning() -> None:
    assert {w: int(parse_duration(w).total_seconds()) for w in WINDOWS} == WINDOWS


@pytest.mark.parametrize("text", ["", "h", "0h", "01h", "1.5h", "-1h", "1H", " 1h", "1h ", "1y",
                                  "1hm", "3 h", "1e3s", "١h"])
def test_malformed_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"90m, 3h"):
        parse_duration(text)


def test_parse_window_is_an_argparse_type() -> None:
    assert parse_window("90m") == "90m"
    with pytest.raises(argparse.ArgumentTypeError, match="the documented ones: 1h, 6h"):
        parse_window("2x")


@pytest.mark.parametrize(("text", "ago"), [("-1h", timedelta(hours=1)), ("-90m", timedelta(minutes=90)),
                                           ("-2d", timedelta(days=2)), ("-1w", timedelta(weeks=1)),
                                           ("-30s", timedelta(seconds=30))])
def test_relative_times(text: str, ago: timedelta) -> None:
    before = datetime.now(UTC)
    parsed = parse_time(text)
    assert before - ago - timedelta(seconds=5) <= parsed <= datetime.now(UTC) - ago


@pytest.mark.parametrize("text", ["-1.5h", "-0h", "-1y", "-h", "yesterday"])
def test_bad_relative_times(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_time(text)


def test_absolute_times() -> None:
    assert parse_time("2026-01-02T03:04:05") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_time("2026-01-02T03:04:05+01:00").utcoffset() == timedelta(hours=1)
