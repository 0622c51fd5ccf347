"""The stream worker's fast QueryEvent decoder (streams/fraiseql_obs_streams/decoding.py) against the
generic codec."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraiseql_obs_streams import decoding
from fraiseql_obs_streams.decoding import QueryEventDecoder
from fraiseql_observability.codec import (
    QUERY_EVENT,
    QUERY_EVENT_BATCH,
    QUERY_ROLLUP,
    SCHEMA_DIR,
    Codec,
    default_codec,
)
from fraiseql_observability.errors import DecodeError

CODEC = default_codec()
EXAMPLES = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

long = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Lengths on both sides of the one-byte varint (< 64 bytes), non-ASCII text; longer lengths below.
text = st.text(max_size=80)
query_events = st.fixed_dictionaries(
    {
        "event_id": text,
        "occurred_at": long,
        "region": text,
        "instance": text,
        "query_name": text,
        "sql": text | st.text(min_size=60, max_size=300),
        "fingerprint": text,
        "execution_time_ms": st.floats(),
        "sql_generation_time_ms": st.floats(),
        "db_round_trip_time_ms": st.floats(),
        "projection_time_ms": st.floats(),
        "rows_returned": long,
        "cache_hit": st.booleans(),
        "error": st.none() | text,
        "sample_weight": st.floats(),
    }
)


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal, with NaN equal to NaN and -0.0 distinct from 0.0 (repr compares both exactly)."""
    return repr(a) == repr(b)


@EXAMPLES
@given(event=query_events)
def test_decodes_every_record_exactly_like_the_codec(event: dict[str, Any]) -> None:
    decoder = QueryEventDecoder(CODEC)
    data = CODEC.encode(QUERY_EVENT, event)
    assert decoder.fast
    first = decoder.decode(data)
    assert same(first, CODEC.decode(data, QUERY_EVENT))
    assert same(decoder.decode(data), first)  # the second time from the caches


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(CODEC.encode(QUERY_EVENT, draw(query_events)))
    rng = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 3))):
        kind = rng.random()
        if kind < 0.5 and len(data) > 10:
            data[rng.randrange(10, len(data))] = rng.randrange(256)
        elif kind < 0.75 and len(data) > 10:
            del data[rng.randrange(10, len(data)):]
        else:
            data += rng.randbytes(rng.randrange(1, 6))
    return bytes(data)


@EXAMPLES
@given(data=damaged())
def test_never_returns_what_the_codec_would_not(data: bytes) -> None:
    """Corrupt bodies raise DecodeError; whatever the fast path accepts, the codec reads the same."""
    decoder = QueryEventDecoder(CODEC)
    try:
        ours = decoder.decode(data)
    except DecodeError as exc:
        assert exc.reason == "undecodable"
        return
    assert same(ours, CODEC.decode(data, QUERY_EVENT))


SAMPLE: dict[str, Any] = {
    "event_id": "0b6f1d2c-9d8e-4c2b-8f51-3f1b2a6c9e10", "occurred_at": 1_700_000_000_123_456,
    "region": "us-east-1", "instance": "api-7", "query_name": "users",
    "sql": "SELECT data FROM tv_user WHERE data->>'region' = $1 LIMIT $2", "fingerprint": "9f86d081",
    "execution_time_ms": 12.5, "sql_generation_time_ms": 0.25, "db_round_trip_time_ms": 11.0,
    "projection_time_ms": 1.25, "rows_returned": 20, "cache_hit": True, "error": None,
    "sample_weight": 100.0,
}


@pytest.mark.parametrize("length", [63, 64, 8191, 8192, 1_048_577])
@pytest.mark.parametrize("field", ["event_id", "sql", "error"])
def test_long_strings_with_multi_byte_lengths(field: str, length: int) -> None:
    event = {**SAMPLE, field: "é" * (length // 2) + "x" * (length % 2)}
    data = CODEC.encode(QUERY_EVENT, event)
    assert QueryEventDecoder(CODEC).decode(data) == event
    with pytest.raises(DecodeError):
        QueryEventDecoder(CODEC).decode(data[:-9])


@pytest.mark.parametrize("occurred_at", [0, -1, 63, -64, 64, 2**48, 1_700_000_000_123_456, 2**55,
                                         2**56, -(2**63), 2**63 - 1])
def test_timestamps_on_every_varint_length(occurred_at: int) -> None:
    event = {**SAMPLE, "occurred_at": occurred_at, "rows_returned": occurred_at}
    assert QueryEventDecoder(CODEC).decode(CODEC.encode(QUERY_EVENT, event)) == event


def test_a_varint_longer_than_64_bits_is_undecodable() -> None:
    data = CODEC.encode(QUERY_EVENT, SAMPLE)
    at = 10 + 1 + len(SAMPLE["event_id"])  # occurred_at follows the event id
    overlong = data[:at] + b"\xff" * 10 + b"\x01" + data[at + 8:]
    with pytest.raises(DecodeError) as info:
        QueryEventDecoder(CODEC).decode(overlong)
    assert info.value.reason == "undecodable"


def test_a_boolean_byte_other_than_0_or_1_is_undecodable() -> None:
    """Stricter than fastavro (which reads any non-zero byte as true): not a canonical encoding."""
    data = bytearray(CODEC.encode(QUERY_EVENT, SAMPLE))
    cache_hit_at = len(data) - 8 - 1 - 1  # then the union branch (null) and the double weight
    assert data[cache_hit_at] == 1
    data[cache_hit_at] = 2
    with pytest.raises(DecodeError) as info:
        QueryEventDecoder(CODEC).decode(bytes(data))
    assert info.value.reason == "undecodable"


def test_trailing_bytes_are_reported_like_the_codec_does() -> None:
    data = CODEC.encode(QUERY_EVENT, SAMPLE) + b"xyz"
    with pytest.raises(DecodeError) as ours:
        QueryEventDecoder(CODEC).decode(data)
    with pytest.raises(DecodeError) as theirs:
        CODEC.decode(data, QUERY_EVENT)
    assert (ours.value.reason, ours.value.detail) == (theirs.value.reason, theirs.value.detail)


@pytest.mark.parametrize("data", [None, b"", b"\xc3\x01", b"junk" * 5])
def test_non_avro_input_gets_the_codecs_reasons(data: bytes | None) -> None:
    with pytest.raises(DecodeError) as ours:
        QueryEventDecoder(CODEC).decode(data)
    with pytest.raises(DecodeError) as theirs:
        CODEC.decode(data, QUERY_EVENT)
    assert ours.value.reason == theirs.value.reason


def _write(path: Path, schema: dict[str, Any]) -> None:
    path.write_text(json.dumps(schema), encoding="utf-8")


def test_records_of_an_older_writer_schema_are_resolved_by_the_codec(tmp_path: Path) -> None:
    current = json.loads((SCHEMA_DIR / "query_event.avsc").read_text(encoding="utf-8"))
    v0 = dict(current, fields=[f for f in current["fields"] if f["name"] != "sample_weight"])
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    _write(tmp_path / "old" / "query_event.avsc", v0)
    _write(tmp_path / "new" / "query_event.avsc", current)
    _write(tmp_path / "new" / "query_event.v0.avsc", v0)
    legacy = {k: v for k, v in SAMPLE.items() if k != "sample_weight"}
    data = Codec(tmp_path / "old").encode(QUERY_EVENT, legacy)
    decoder = QueryEventDecoder(Codec(tmp_path / "new"))
    assert decoder.fast
    assert decoder.decode(data) == {**legacy, "sample_weight": 1.0}


def test_a_changed_schema_falls_back_to_the_codec_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    current = json.loads((SCHEMA_DIR / "query_event.avsc").read_text(encoding="utf-8"))
    extra = {"name": "tenant", "type": "string", "default": ""}
    _write(tmp_path / "query_event.avsc", dict(current, fields=[*current["fields"], extra]))
    codec = Codec(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fraiseql_obs_streams.decoding"):
        decoder = QueryEventDecoder(codec)
    assert not decoder.fast
    assert "query_event.avsc changed" in caplog.text
    record = {**SAMPLE, "tenant": "acme"}
    assert decoder.decode(codec.encode(QUERY_EVENT, record)) == record


def test_the_string_caches_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoding, "_CACHE_MAX_ENTRIES", 50)
    decoder = QueryEventDecoder(CODEC)
    for i in range(500):
        event = {**SAMPLE, "instance": f"api-{i}", "sql": f"SELECT {i}"}
        assert decoder.decode(CODEC.encode(QUERY_EVENT, event)) == event
        assert len(decoder._hosts) <= 50 and len(decoder._patterns) <= 50


# --- QueryEventBatch ---------------------------------------------------------------------------

def _zigzag(value: int) -> bytes:
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _blocks(events: list[dict[str, Any]], sizes: list[int], sized: bool) -> bytes:
    """A QueryEventBatch written in blocks of ``sizes`` items (negative counts with byte sizes
    when ``sized``), the form another Avro writer may choose."""
    header = CODEC.encode(QUERY_EVENT_BATCH, {"events": []})[:10]
    bodies = [CODEC.encode(QUERY_EVENT, e)[10:] for e in events]
    out, at = bytearray(header), 0
    for size in sizes:
        block = b"".join(bodies[at:at + size])
        at += size
        out += _zigzag(-size) + _zigzag(len(block)) if sized else _zigzag(size)
        out += block
    assert at == len(bodies)
    return bytes(out + b"\x00")


@EXAMPLES
@given(events=st.lists(query_events, max_size=8))
def test_a_batch_of_random_records_decodes_exactly_like_the_codec(events: list[dict[str, Any]]) -> None:
    decoder = QueryEventDecoder(CODEC)
    data = CODEC.encode(QUERY_EVENT_BATCH, {"events": events})
    ours = decoder.decode_message(data)
    assert isinstance(ours, list)
    assert same({"events": ours}, CODEC.decode(data, QUERY_EVENT_BATCH))
    assert same({"events": decoder.decode_message(data)}, {"events": ours})  # from the caches


@EXAMPLES
@given(events=st.lists(query_events, min_size=1, max_size=8), cuts=st.lists(st.integers(1, 8)),
       sized=st.booleans())
def test_batches_in_several_blocks_decode_like_the_codec(
    events: list[dict[str, Any]], cuts: list[int], sized: bool
) -> None:
    sizes, left = [], len(events)
    for cut in cuts:
        if left == 0:
            break
        sizes.append(min(cut, left))
        left -= sizes[-1]
    if left:
        sizes.append(left)
    data = _blocks(events, sizes, sized)
    ours = QueryEventDecoder(CODEC).decode_message(data)
    assert same({"events": ours}, CODEC.decode(data, QUERY_EVENT_BATCH))


@st.composite
def damaged_batches(draw: st.DrawFn) -> bytes:
    events = draw(st.lists(query_events, min_size=1, max_size=4))
    data = bytearray(CODEC.encode(QUERY_EVENT_BATCH, {"events": events}))
    rng = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 3))):
        kind = rng.random()
        if kind < 0.5:
            data[rng.randrange(10, len(data))] = rng.randrange(256)
        elif kind < 0.75:
            del data[rng.randrange(10, len(data)):]
        else:
            data += rng.randbytes(rng.randrange(1, 6))
    return bytes(data)


@EXAMPLES
@given(data=damaged_batches())
def test_a_damaged_batch_never_decodes_to_what_the_codec_would_not(data: bytes) -> None:
    try:
        ours = QueryEventDecoder(CODEC).decode_message(data)
    except DecodeError as exc:
        assert exc.reason == "undecodable"
        return
    assert same({"events": ours}, CODEC.decode(data, QUERY_EVENT_BATCH))


def test_a_corrupt_item_makes_the_whole_batch_undecodable_and_says_where() -> None:
    events = [SAMPLE, {**SAMPLE, "event_id": "second"}, SAMPLE]
    data = bytearray(CODEC.encode(QUERY_EVENT_BATCH, {"events": events}))
    first, second = (len(CODEC.encode(QUERY_EVENT, e)) - 10 for e in events[:2])
    # Header, count, the first item, then the second item's cache_hit (before branch and weight).
    cache_hit_at = 10 + 1 + first + second - 8 - 1 - 1
    assert data[cache_hit_at] == 1
    data[cache_hit_at] = 7
    with pytest.raises(DecodeError) as info:
        QueryEventDecoder(CODEC).decode_message(bytes(data))
    assert info.value.reason == "undecodable"
    assert "at event 1" in info.value.detail


def test_a_block_size_that_does_not_match_its_items_is_undecodable() -> None:
    good = _blocks([SAMPLE, SAMPLE], [2], sized=True)
    size = 2 * (len(CODEC.encode(QUERY_EVENT, SAMPLE)) - 10)
    assert good[10:11 + len(_zigzag(size))] == _zigzag(-2) + _zigzag(size)
    data = good[:11] + _zigzag(size + 1) + good[11 + len(_zigzag(size)):]
    with pytest.raises(DecodeError) as info:
        QueryEventDecoder(CODEC).decode_message(bytes(data))
    assert info.value.reason == "undecodable"


def test_decode_message_takes_single_events_and_rejects_other_records() -> None:
    decoder = QueryEventDecoder(CODEC)
    assert decoder.decode_message(CODEC.encode(QUERY_EVENT, SAMPLE)) == SAMPLE
    assert decoder.decode_message(CODEC.encode(QUERY_EVENT_BATCH, {"events": []})) == []
    other = CODEC.encode(QUERY_ROLLUP, _ROLLUP)
    with pytest.raises(DecodeError) as info:
        decoder.decode_message(other)
    assert info.value.reason == "unexpected_schema"
    with pytest.raises(DecodeError) as single:
        decoder.decode(CODEC.encode(QUERY_EVENT_BATCH, {"events": [SAMPLE]}))
    assert single.value.reason == "unexpected_schema"


_ROLLUP: dict[str, Any] = {
    "rollup_id": "r", "fingerprint": "f", "query_name": "q", "sql": "s", "region": "x",
    "window_start": 0, "window_end": 60, "source_topic": "t", "source_partition": 0,
    "first_offset": 0, "last_offset": 0, "event_count": 1, "count": 1.0, "error_count": 0.0,
    "cache_hits": 0.0, "rows_sum": 0.0, "exec_sum_ms": 1.0, "exec_min_ms": 1.0, "exec_max_ms": 1.0,
    "sql_generation_sum_ms": 0.0, "db_round_trip_sum_ms": 0.0, "projection_sum_ms": 0.0,
    "sketch_alpha": 0.01, "sketch_keys": [], "sketch_weights": [], "correction_slot": None,
}


def test_a_changed_event_schema_decodes_batches_through_the_codec(tmp_path: Path) -> None:
    current = json.loads((SCHEMA_DIR / "query_event.avsc").read_text(encoding="utf-8"))
    extra = {"name": "tenant", "type": "string", "default": ""}
    _write(tmp_path / "query_event.avsc", dict(current, fields=[*current["fields"], extra]))
    batch = json.loads((SCHEMA_DIR / "query_event_batch.avsc").read_text(encoding="utf-8"))
    _write(tmp_path / "query_event_batch.avsc", batch)
    codec = Codec(tmp_path)
    decoder = QueryEventDecoder(codec)
    assert not decoder.fast
    records = [{**SAMPLE, "tenant": "acme"}, {**SAMPLE, "tenant": "b"}]
    assert decoder.decode_message(codec.encode(QUERY_EVENT_BATCH, {"events": records})) == records
    # The batch's fingerprint covers the event's definition: it changed with it.
    assert codec.fingerprint_of(QUERY_EVENT_BATCH) != CODEC.fingerprint_of(QUERY_EVENT_BATCH)
