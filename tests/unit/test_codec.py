"""Avro single-object encoding of every record (codec.py, schemas/*.avsc, SPEC §3)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from fastavro.schema import to_parsing_canonical_form
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fraiseql_observability.codec import (
    DEAD_LETTER,
    MAGIC,
    QUERY_EVENT,
    QUERY_EVENT_BATCH,
    QUERY_ROLLUP,
    SCHEMA_DIR,
    TABLE_STATS,
    Codec,
    default_codec,
)
from fraiseql_observability.errors import DecodeError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CODEC = default_codec()
SHIPPED = {
    QUERY_EVENT: "query_event.avsc",
    QUERY_ROLLUP: "query_rollup.avsc",
    TABLE_STATS: "table_stats.avsc",
    DEAD_LETTER: "dead_letter.avsc",
}


# --- an independent CRC-64-AVRO (Rabin) fingerprint, straight from the Avro specification -----

EMPTY64 = 0xC15D213AA4D7A795


def _fp_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY64 & -(fp & 1))
        table.append(fp)
    return table


FP_TABLE = _fp_table()


def rabin64(data: bytes) -> int:
    fp = EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


def to_signed(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


def schema_fingerprint_bytes(schema: Any) -> bytes:
    canonical = to_parsing_canonical_form(schema)
    return struct.pack("<Q", rabin64(canonical.encode("utf-8")))


@pytest.mark.parametrize(
    ("schema", "expected"),
    [  # apache/avro share/test/data/schema-tests.txt
        ("null", 7195948357588979594),
        ("int", 8247732601305521295),
        ("string", -8142146995180207161),
        ({"fields": [], "type": "record", "name": "foo"}, -4824392279771201922),
    ],
)
def test_rabin_implementation_matches_the_avro_spec_vectors(schema: Any, expected: int) -> None:
    canonical = to_parsing_canonical_form(schema)
    assert to_signed(rabin64(canonical.encode())) == expected


def test_single_object_header_of_int_matches_the_spec_example() -> None:
    header = MAGIC + schema_fingerprint_bytes("int")
    assert header.hex() == "c3018f5c393f1ad57572"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_wire_header_is_magic_plus_little_endian_rabin_of_the_canonical_form(name: str) -> None:
    raw = json.loads((SCHEMA_DIR / SHIPPED[name]).read_text(encoding="utf-8"))
    expected = schema_fingerprint_bytes(raw)
    assert CODEC.fingerprint_of(name) == expected
    data = CODEC.encode(name, SAMPLES[name])
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == expected
    assert len(data) > 10


def test_schemas_are_distinct_and_named_in_the_spec_namespace() -> None:
    fingerprints = {CODEC.fingerprint_of(name) for name in SHIPPED}
    assert len(fingerprints) == len(SHIPPED)
    for name, file in SHIPPED.items():
        raw = json.loads((SCHEMA_DIR / file).read_text(encoding="utf-8"))
        assert f"{raw['namespace']}.{raw['name']}" == name


def test_query_event_schema_matches_spec_section_3() -> None:
    raw = json.loads((SCHEMA_DIR / "query_event.avsc").read_text(encoding="utf-8"))
    fields = {f["name"]: f for f in raw["fields"]}
    assert list(fields) == [
        "event_id", "occurred_at", "region", "instance", "query_name", "sql", "fingerprint",
        "execution_time_ms", "sql_generation_time_ms", "db_round_trip_time_ms",
        "projection_time_ms", "rows_returned", "cache_hit", "error", "sample_weight",
    ]
    assert fields["occurred_at"]["type"] == {"type": "long", "logicalType": "timestamp-micros"}
    assert fields["error"]["type"] == ["null", "string"]
    assert fields["sample_weight"]["type"] == "double"
    assert fields["sample_weight"]["default"] == 1.0


def test_older_schema_versions_in_the_folder_stay_backward_compatible() -> None:
    """Every field the current schema added over a kept older version carries a default."""
    for old in SCHEMA_DIR.glob("*.v*.avsc"):
        current = SCHEMA_DIR / (old.name.split(".", 1)[0] + ".avsc")
        old_fields = {f["name"] for f in json.loads(old.read_text())["fields"]}
        for f in json.loads(current.read_text())["fields"]:
            assert f["name"] in old_fields or "default" in f, (old, f["name"])


# --- strategies of valid records --------------------------------------------------------------

text = st.text(max_size=20)
long = st.integers(min_value=-(2**63), max_value=2**63 - 1)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
double = st.floats(allow_nan=False)
maybe_double = st.none() | double

query_events = st.fixed_dictionaries(
    {
        "event_id": text,
        "occurred_at": long,
        "region": text,
        "instance": text,
        "query_name": text,
        "sql": text,
        "fingerprint": text,
        "execution_time_ms": double,
        "sql_generation_time_ms": double,
        "db_round_trip_time_ms": double,
        "projection_time_ms": double,
        "rows_returned": long,
        "cache_hit": st.booleans(),
        "error": st.none() | text,
        "sample_weight": double,
    }
)


@st.composite
def query_rollups(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(int32, max_size=10))
    record = draw(
        st.fixed_dictionaries(
            {
                "rollup_id": text,
                "fingerprint": text,
                "query_name": text,
                "sql": text,
                "region": text,
                "window_start": long,
                "window_end": long,
                "source_topic": text,
                "source_partition": int32,
                "first_offset": long,
                "last_offset": long,
                "event_count": long,
                "count": double,
                "error_count": double,
                "cache_hits": double,
                "rows_sum": double,
                "exec_sum_ms": double,
                "exec_min_ms": double,
                "exec_max_ms": double,
                "sql_generation_sum_ms": double,
                "db_round_trip_sum_ms": double,
                "projection_sum_ms": double,
                "sketch_alpha": double,
            }
        )
    )
    record["sketch_keys"] = keys
    record["sketch_weights"] = draw(st.lists(double, min_size=len(keys), max_size=len(keys)))
    record["correction_slot"] = draw(st.none() | st.integers(min_value=0, max_value=2**62))
    return record


column_stats = st.fixed_dictionaries(
    {
        "expression": text,
        "data_type": text,
        "null_frac": maybe_double,
        "n_distinct": maybe_double,
        "avg_width": st.none() | int32,
    }
)
index_stats = st.fixed_dictionaries(
    {
        "name": text,
        "definition": text,
        "scans": long,
        "size_bytes": long,
        "is_unique": st.booleans(),
        "is_primary": st.booleans(),
    }
)
table_stats = st.fixed_dictionaries(
    {
        "snapshot_id": text,
        "taken_at": long,
        "source": text,
        "region": text,
        "schema_name": text,
        "table_name": text,
        "relkind": st.sampled_from(["r", "v", "m", "p"]),
        "row_estimate": double,
        "total_bytes": long,
        "seq_scans": long,
        "columns": st.lists(column_stats, max_size=4),
        "indexes": st.lists(index_stats, max_size=4),
    }
)
dead_letters = st.fixed_dictionaries(
    {
        "reason": text,
        "detail": text,
        "stage": text,
        "source_topic": text,
        "source_partition": int32,
        "source_offset": long,
        "original_key": st.none() | st.binary(max_size=30),
        "original_value": st.none() | st.binary(max_size=60),
        "failed_at": long,
    }
)
STRATEGIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    QUERY_EVENT: query_events,
    QUERY_ROLLUP: query_rollups(),
    TABLE_STATS: table_stats,
    DEAD_LETTER: dead_letters,
}
any_record = st.sampled_from(sorted(STRATEGIES)).flatmap(
    lambda name: st.tuples(st.just(name), STRATEGIES[name])
)

SAMPLE_EVENT: dict[str, Any] = {
    "event_id": "0b6f1d2c-9d8e-4c2b-8f51-3f1b2a6c9e10",
    "occurred_at": 1_700_000_000_123_456,
    "region": "us-east-1",
    "instance": "api-7",
    "query_name": "users",
    "sql": "SELECT data FROM tv_user WHERE data->>'region' = $1 LIMIT $2",
    "fingerprint": "9f86d081884c7d65",
    "execution_time_ms": 12.5,
    "sql_generation_time_ms": 0.25,
    "db_round_trip_time_ms": 11.0,
    "projection_time_ms": 1.25,
    "rows_returned": 20,
    "cache_hit": False,
    "error": None,
    "sample_weight": 100.0,
}
SAMPLES: dict[str, dict[str, Any]] = {
    QUERY_EVENT: SAMPLE_EVENT,
    QUERY_ROLLUP: {
        "rollup_id": "r", "fingerprint": "9f86", "query_name": "users", "sql": "SELECT 1",
        "region": "us-east-1", "window_start": 0, "window_end": 60_000_000,
        "source_topic": "fraiseql.query-events", "source_partition": 0, "first_offset": 0,
        "last_offset": 3, "event_count": 4, "count": 400.0, "error_count": 0.0,
        "cache_hits": 100.0, "rows_sum": 80.0, "exec_sum_ms": 50.0, "exec_min_ms": 10.0,
        "exec_max_ms": 15.0, "sql_generation_sum_ms": 1.0, "db_round_trip_sum_ms": 44.0,
        "projection_sum_ms": 5.0, "sketch_alpha": 0.01, "sketch_keys": [115, 136],
        "sketch_weights": [300.0, 100.0], "correction_slot": None,
    },
    TABLE_STATS: {
        "snapshot_id": "s", "taken_at": 1, "source": "app", "region": "eu", "schema_name": "public",
        "table_name": "tv_user", "relkind": "v", "row_estimate": 4e5, "total_bytes": 1 << 30,
        "seq_scans": 7,
        "columns": [{"expression": "data->>'region'", "data_type": "text", "null_frac": 0.0,
                     "n_distinct": -0.5, "avg_width": 9}],
        "indexes": [{"name": "tv_user_pkey", "definition": "CREATE UNIQUE INDEX ...", "scans": 3,
                     "size_bytes": 8192, "is_unique": True, "is_primary": True}],
    },
    DEAD_LETTER: {
        "reason": "undecodable", "detail": "bad magic", "stage": "stream",
        "source_topic": "fraiseql.query-events", "source_partition": 2, "source_offset": 99,
        "original_key": b"k", "original_value": b"\x00\x01", "failed_at": 5,
    },
}


# --- round trips and wire format --------------------------------------------------------------

@FAST
@given(named=any_record)
def test_round_trip_every_record_type(named: tuple[str, dict[str, Any]]) -> None:
    name, record = named
    data = CODEC.encode(name, record)
    assert data[:10] == MAGIC + CODEC.fingerprint_of(name)
    assert CODEC.decode(data) == record
    assert CODEC.decode_named(data, expected=name) == (name, record)


def test_timestamps_decode_as_plain_microsecond_integers() -> None:
    decoded = CODEC.decode(CODEC.encode(QUERY_EVENT, SAMPLE_EVENT), QUERY_EVENT)
    assert decoded["occurred_at"] == SAMPLE_EVENT["occurred_at"]
    assert type(decoded["occurred_at"]) is int


def test_nan_durations_survive_the_wire_for_validation_to_reject() -> None:
    event = dict(SAMPLE_EVENT, execution_time_ms=float("nan"))
    decoded = CODEC.decode(CODEC.encode(QUERY_EVENT, event))
    assert decoded["execution_time_ms"] != decoded["execution_time_ms"]


def test_expected_schema_mismatch_is_a_decode_error() -> None:
    data = CODEC.encode(QUERY_EVENT, SAMPLE_EVENT)
    with pytest.raises(DecodeError) as info:
        CODEC.decode(data, expected=QUERY_ROLLUP)
    assert info.value.reason == "unexpected_schema"


def test_encoding_a_record_that_does_not_fit_the_schema_raises() -> None:
    incomplete = {k: v for k, v in SAMPLE_EVENT.items() if k != "fingerprint"}
    with pytest.raises((ValueError, TypeError)):
        CODEC.encode(QUERY_EVENT, incomplete)


# --- hostile input: always DecodeError, never another exception -------------------------------

@pytest.mark.parametrize("data", [None, b"", b"\xc3", b"\xc3\x01", b"\xc3\x01" + b"\x00" * 7])
def test_empty_or_short_input_is_undecodable(data: bytes | None) -> None:
    with pytest.raises(DecodeError) as info:
        CODEC.decode(data)
    assert info.value.reason == "undecodable"


def test_bad_magic_is_undecodable() -> None:
    data = bytearray(CODEC.encode(QUERY_EVENT, SAMPLE_EVENT))
    data[0] = 0xC4
    with pytest.raises(DecodeError) as info:
        CODEC.decode(bytes(data))
    assert info.value.reason == "undecodable"


@FAST
@given(fp=st.binary(min_size=8, max_size=8), body=st.binary(max_size=40))
def test_unknown_fingerprint_is_unknown_schema(fp: bytes, body: bytes) -> None:
    assume(fp not in {CODEC.fingerprint_of(name) for name in SHIPPED})
    with pytest.raises(DecodeError) as info:
        CODEC.decode(MAGIC + fp + body)
    assert info.value.reason == "unknown_schema"
    assert fp.hex() in str(info.value)


@FAST
@given(named=any_record)
def test_every_truncation_is_a_decode_error(named: tuple[str, dict[str, Any]]) -> None:
    name, record = named
    data = CODEC.encode(name, record)
    for cut in range(len(data)):
        with pytest.raises(DecodeError) as info:
            CODEC.decode(data[:cut])
        assert info.value.reason == "undecodable", cut


@FAST
@given(named=any_record, extra=st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_rejected(named: tuple[str, dict[str, Any]], extra: bytes) -> None:
    name, record = named
    with pytest.raises(DecodeError) as info:
        CODEC.decode(CODEC.encode(name, record) + extra)
    assert info.value.reason == "undecodable"
    assert "trailing" in info.value.detail


def _decodes_or_decode_error(data: bytes) -> None:
    try:
        name, record = CODEC.decode_named(data)
    except DecodeError as exc:
        assert exc.reason in {"undecodable", "unknown_schema"}
        return
    # whatever decodes is a record of a known schema: it fits that schema again
    assert name in SHIPPED
    assert CODEC.decode(CODEC.encode(name, record), expected=name).keys() == record.keys()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64))
def test_random_garbage_never_raises_anything_but_decode_error(data: bytes) -> None:
    _decodes_or_decode_error(data)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(SHIPPED)), body=st.binary(max_size=120))
def test_garbage_body_behind_a_valid_header_never_raises_anything_but_decode_error(
    name: str, body: bytes
) -> None:
    _decodes_or_decode_error(MAGIC + CODEC.fingerprint_of(name) + body)


@FAST
@given(named=any_record, data=st.data())
def test_flipped_bytes_in_a_valid_message_never_raise_anything_but_decode_error(
    named: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    name, record = named
    encoded = bytearray(CODEC.encode(name, record))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(10, len(encoded) - 1))
        encoded[index] = data.draw(st.integers(0, 255))
    _decodes_or_decode_error(bytes(encoded))


# --- schema evolution -------------------------------------------------------------------------

def _write(path: Path, schema: dict[str, Any]) -> None:
    path.write_text(json.dumps(schema), encoding="utf-8")


@pytest.fixture
def evolution_dirs(tmp_path: Path) -> tuple[Codec, Codec, dict[str, Any]]:
    """(old writer codec, current reader codec, v0 schema) of a QueryEvent without sample_weight."""
    current = json.loads((SCHEMA_DIR / "query_event.avsc").read_text(encoding="utf-8"))
    v0 = dict(current, fields=[f for f in current["fields"] if f["name"] != "sample_weight"])
    old_dir = tmp_path / "old"
    new_dir = tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    _write(old_dir / "query_event.avsc", v0)
    _write(new_dir / "query_event.avsc", current)
    _write(new_dir / "query_event.v0.avsc", v0)
    return Codec(old_dir), Codec(new_dir), v0


def test_old_writer_without_sample_weight_decodes_with_the_default(
    evolution_dirs: tuple[Codec, Codec, dict[str, Any]],
) -> None:
    old, new, v0 = evolution_dirs
    legacy = {k: v for k, v in SAMPLE_EVENT.items() if k != "sample_weight"}
    data = old.encode(QUERY_EVENT, legacy)
    assert data[2:10] == schema_fingerprint_bytes(v0)
    assert data[2:10] != new.fingerprint_of(QUERY_EVENT)
    name, decoded = new.decode_named(data, expected=QUERY_EVENT)
    assert name == QUERY_EVENT
    assert decoded == {**legacy, "sample_weight": 1.0}
    # the shipped folder does not know v0: such bytes are dead-lettered, not misread
    with pytest.raises(DecodeError) as info:
        CODEC.decode(data)
    assert info.value.reason == "unknown_schema"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=query_events)
def test_old_writer_round_trip_property(
    evolution_dirs: tuple[Codec, Codec, dict[str, Any]], event: dict[str, Any]
) -> None:
    old, new, _ = evolution_dirs
    legacy = {k: v for k, v in event.items() if k != "sample_weight"}
    assert new.decode(old.encode(QUERY_EVENT, legacy)) == {**legacy, "sample_weight": 1.0}
    # a current writer is still read as itself by the same codec
    assert new.decode(new.encode(QUERY_EVENT, event)) == event


def test_two_current_schemas_of_one_record_are_rejected(tmp_path: Path) -> None:
    current = json.loads((SCHEMA_DIR / "query_event.avsc").read_text(encoding="utf-8"))
    _write(tmp_path / "query_event.avsc", current)
    _write(tmp_path / "query_event_copy.avsc", dict(current, doc="another"))
    with pytest.raises(ValueError, match="two current schemas"):
        Codec(tmp_path)


# --- QueryEventBatch: a file that names the QueryEvent record of another file -----------------

def test_batch_fingerprint_is_that_of_the_schema_with_query_event_inlined() -> None:
    batch = json.loads((SCHEMA_DIR / "query_event_batch.avsc").read_text(encoding="utf-8"))
    event = json.loads((SCHEMA_DIR / "query_event.avsc").read_text(encoding="utf-8"))
    assert batch["namespace"] == event["namespace"]
    assert batch["fields"][0]["type"] == {"type": "array", "items": QUERY_EVENT}
    inlined = {**batch, "fields": [{**batch["fields"][0],
                                    "type": {"type": "array", "items": event}}]}
    assert CODEC.fingerprint_of(QUERY_EVENT_BATCH) == schema_fingerprint_bytes(inlined)
    assert CODEC.fingerprint_of(QUERY_EVENT_BATCH) not in {CODEC.fingerprint_of(n) for n in SHIPPED}


@FAST
@given(events=st.lists(query_events, max_size=5))
def test_a_batch_is_one_array_block_of_single_event_bodies(events: list[dict[str, Any]]) -> None:
    data = CODEC.encode(QUERY_EVENT_BATCH, {"events": events})
    assert data[:10] == MAGIC + CODEC.fingerprint_of(QUERY_EVENT_BATCH)
    bodies = b"".join(CODEC.encode(QUERY_EVENT, e)[10:] for e in events)
    count = bytes([len(events) * 2]) if events else b""  # zigzag count, < 64: one byte
    assert data[10:] == count + bodies + b"\x00"
    assert CODEC.decode(data, QUERY_EVENT_BATCH) == {"events": events}  # no NaN in the strategy


def test_a_reference_to_a_record_no_file_defines_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "b.avsc").write_text(json.dumps({
        "type": "record", "name": "B", "namespace": "x",
        "fields": [{"name": "e", "type": {"type": "array", "items": "x.Missing"}}]}))
    with pytest.raises(Exception, match="Missing"):
        Codec(tmp_path)
