"""Value checks a decoded query event must pass before it counts
(streams/fraiseql_obs_streams/validation.py, SPEC §8)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraiseql_obs_streams.validation import DURATION_FIELDS, MAX_DURATION_MS, MAX_NAME_LEN, invalid_reason

FAST = settings(max_examples=100, deadline=None)


def valid_event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "0b6f1d2c-9d8e-4c2b-8f51-3f1b2a6c9e10",
        "occurred_at": 1_700_000_000_000_000,
        "region": "us-east-1",
        "instance": "api-1",
        "query_name": "users",
        "sql": "SELECT data FROM tv_user WHERE id = $1",
        "fingerprint": "9f86d081884c7d65",
        "execution_time_ms": 12.5,
        "sql_generation_time_ms": 0.5,
        "db_round_trip_time_ms": 11.0,
        "projection_time_ms": 1.0,
        "rows_returned": 1,
        "cache_hit": False,
        "error": None,
        "sample_weight": 1.0,
    }
    event.update(changes)
    return event


durations = st.floats(min_value=0.0, max_value=MAX_DURATION_MS, allow_nan=False)
names = st.text(min_size=1, max_size=MAX_NAME_LEN).filter(lambda s: "\x00" not in s)
valid_events = st.builds(
    valid_event,
    execution_time_ms=durations,
    sql_generation_time_ms=durations,
    db_round_trip_time_ms=durations,
    projection_time_ms=durations,
    sample_weight=st.floats(min_value=1.0, max_value=1e9),
    rows_returned=st.integers(min_value=0, max_value=2**63 - 1),
    fingerprint=st.text(alphabet="0123456789abcdef", min_size=1, max_size=64),
    region=names,
    instance=names,
    query_name=names,
    sql=st.text(max_size=200).filter(lambda s: "\x00" not in s),
    error=st.none() | st.text(max_size=20),
)


def test_a_valid_event_has_no_reason() -> None:
    assert invalid_reason(valid_event()) is None


@FAST
@given(event=valid_events)
def test_valid_events_pass(event: dict[str, Any]) -> None:
    assert invalid_reason(event) is None


@pytest.mark.parametrize("field", DURATION_FIELDS)
@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, -0.001, -1.0, MAX_DURATION_MS * 1.0001, 1e300]
)
def test_bad_durations_are_rejected_with_the_field_and_value(field: str, value: float) -> None:
    reason = invalid_reason(valid_event(**{field: value}))
    assert reason is not None
    assert field in reason
    assert repr(value) in reason


@pytest.mark.parametrize("field", DURATION_FIELDS)
def test_duration_boundaries_are_inclusive(field: str) -> None:
    assert invalid_reason(valid_event(**{field: 0.0})) is None
    assert invalid_reason(valid_event(**{field: MAX_DURATION_MS})) is None
    assert invalid_reason(valid_event(**{field: -0.0})) is None


@FAST
@given(
    field=st.sampled_from(DURATION_FIELDS),
    value=st.floats().filter(lambda v: not (0 <= v <= MAX_DURATION_MS)),
)
def test_every_out_of_range_duration_is_rejected(field: str, value: float) -> None:
    reason = invalid_reason(valid_event(**{field: value}))
    assert reason is not None and field in reason


@pytest.mark.parametrize("weight", [0.0, 0.5, 0.999999, -1.0, math.nan, math.inf, 1e9 * 1.01])
def test_bad_sample_weights_are_rejected(weight: float) -> None:
    reason = invalid_reason(valid_event(sample_weight=weight))
    assert reason is not None and "sample_weight" in reason


@pytest.mark.parametrize("weight", [1.0, 1.5, 10.0, 1e9])
def test_sample_weights_of_one_and_above_pass(weight: float) -> None:
    assert invalid_reason(valid_event(sample_weight=weight)) is None


def test_negative_rows_are_rejected() -> None:
    reason = invalid_reason(valid_event(rows_returned=-1))
    assert reason is not None and "rows_returned" in reason


@pytest.mark.parametrize(
    "fingerprint", ["", "ABCDEF", "xyz", "12 34", "a" * 65, "0x12", "é1", "12\x00"]
)
def test_bad_fingerprints_are_rejected(fingerprint: str) -> None:
    reason = invalid_reason(valid_event(fingerprint=fingerprint))
    assert reason is not None and "fingerprint" in reason


@pytest.mark.parametrize("fingerprint", ["0", "deadbeef", "f" * 64])
def test_hex_fingerprints_pass(fingerprint: str) -> None:
    assert invalid_reason(valid_event(fingerprint=fingerprint)) is None


@pytest.mark.parametrize("field", ["region", "query_name", "instance"])
@pytest.mark.parametrize("value", ["", "a\x00b", "\x00", "x" * (MAX_NAME_LEN + 1)])
def test_bad_names_are_rejected(field: str, value: str) -> None:
    reason = invalid_reason(valid_event(**{field: value}))
    assert reason is not None and field in reason


@pytest.mark.parametrize("field", ["region", "query_name", "instance"])
def test_names_up_to_the_limit_pass(field: str) -> None:
    assert invalid_reason(valid_event(**{field: "x" * MAX_NAME_LEN})) is None


def test_nul_in_sql_is_rejected() -> None:
    reason = invalid_reason(valid_event(sql="SELECT 1\x00; DROP TABLE x"))
    assert reason is not None and "sql" in reason


def test_hostile_but_nul_free_text_is_not_this_checks_business() -> None:
    """Quoting is the analyzer's job; validation only rejects what cannot be stored."""
    event = valid_event(query_name="users'; DROP TABLE x; --", sql="SELECT $1 /* ' \" */")
    assert invalid_reason(event) is None


@FAST
@given(event=valid_events, field=st.sampled_from(DURATION_FIELDS))
def test_a_single_nan_anywhere_is_enough(event: dict[str, Any], field: str) -> None:
    event[field] = math.nan
    reason = invalid_reason(event)
    assert reason is not None and field in reason and "nan" in reason


def test_reasons_are_single_lines() -> None:
    cases = [
        valid_event(execution_time_ms=math.nan),
        valid_event(sample_weight=0.0),
        valid_event(fingerprint="ZZ"),
        valid_event(region="a\x00"),
        valid_event(sql="\x00"),
        valid_event(rows_returned=-5),
    ]
    for event in cases:
        reason = invalid_reason(event)
        assert reason and "\n" not in reason and "\x00" not in reason


def reference_is_valid(event: dict[str, Any]) -> bool:
    """The rules written plainly, one at a time (the fast path folds them into one expression)."""
    for name in DURATION_FIELDS:
        value = event[name]
        if not math.isfinite(value) or value < 0 or value > MAX_DURATION_MS:
            return False
    weight = event["sample_weight"]
    if not math.isfinite(weight) or weight < 1.0 or weight > 1e9 or event["rows_returned"] < 0:
        return False
    fingerprint = event["fingerprint"]
    if not fingerprint or len(fingerprint) > 64 or any(c not in "0123456789abcdef" for c in fingerprint):
        return False
    for name in ("region", "query_name", "instance"):
        text = event[name]
        if not text or len(text) > MAX_NAME_LEN or "\x00" in text:
            return False
    return "\x00" not in event["sql"]


edge_floats = st.sampled_from([0.0, -0.0, 1.0, MAX_DURATION_MS, 1e9, math.nan, math.inf, -1.0]) | st.floats()
edge_text = st.sampled_from(["", "\x00", "a", "x" * MAX_NAME_LEN, "x" * (MAX_NAME_LEN + 1)]) | st.text()
any_events = st.builds(
    valid_event,
    execution_time_ms=edge_floats,
    sql_generation_time_ms=edge_floats,
    db_round_trip_time_ms=edge_floats,
    projection_time_ms=edge_floats,
    sample_weight=edge_floats,
    rows_returned=st.integers(min_value=-2, max_value=2),
    fingerprint=st.sampled_from(["", "0", "f" * 64, "f" * 65, "A1", "a\n"]) | st.text(max_size=70),
    region=edge_text,
    instance=edge_text,
    query_name=edge_text,
    sql=st.sampled_from(["", "SELECT 1", "a\x00b"]),
)


@settings(max_examples=500, deadline=None)
@given(event=any_events)
def test_the_fast_check_agrees_with_the_plain_rules_and_always_explains(event: dict[str, Any]) -> None:
    reason = invalid_reason(event)
    assert (reason is None) == reference_is_valid(event)
    assert reason != "event failed validation"  # the explanation found the failing rule
