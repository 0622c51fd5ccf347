"""fraiseql_obs_producers.fingerprint: same SQL shape -> same fingerprint; different shape -> different."""

from __future__ import annotations

import re
import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fraiseql_obs_producers.fingerprint import fingerprint_sql, jsonb_path_keys
from fraiseql_obs_producers.workload import default_workload
from fraiseql_obs_streams.validation import invalid_reason

HEX16 = re.compile(r"^[0-9a-f]{16}$")
SHAPES = [p.sql for p in default_workload().patterns]


def _valid_for_stream(fingerprint: str) -> bool:
    """The stream worker's own fingerprint rule (streams/fraiseql_obs_streams/validation.py)."""
    event = {
        "execution_time_ms": 1.0, "sql_generation_time_ms": 0.0, "db_round_trip_time_ms": 0.0,
        "projection_time_ms": 0.0, "sample_weight": 1.0, "rows_returned": 0,
        "fingerprint": fingerprint, "region": "r", "query_name": "q", "instance": "i", "sql": "",
    }
    return invalid_reason(event) is None


def test_known_values_are_stable() -> None:
    # Pinned: a changed value (e.g. a pglast upgrade) would split every pattern's history in the
    # metrics database into two fingerprints. Update deliberately, with a migration note.
    assert fingerprint_sql("SELECT data FROM tv_user WHERE id = $1") == "f60a21ea1607cd21"
    assert fingerprint_sql(
        "SELECT data FROM tv_order WHERE data->>'status' = $1 "
        "ORDER BY data->>'created_at' DESC LIMIT $2") == "a092fcaf74cf1338"


def test_format_and_stream_validity() -> None:
    for sql in [*SHAPES, "not sql at all ((", "", "SELECT 'unterminated", "\x00"]:
        fp = fingerprint_sql(sql)
        assert HEX16.match(fp), (sql, fp)
        assert _valid_for_stream(fp)


def test_literals_placeholders_whitespace_case_and_comments_are_ignored() -> None:
    base = fingerprint_sql(
        "SELECT data FROM tv_order WHERE data->>'status' = $1 ORDER BY data->>'created_at' "
        "DESC LIMIT $2")
    for variant in [
        "select data from tv_order where data->>'status' = 'shipped' order by "
        "data->>'created_at' desc limit 10",
        "SELECT data\n  FROM tv_order\n WHERE data ->> 'status' = $7 -- comment\n"
        " ORDER BY data->>'created_at' DESC\tLIMIT $9",
        "/* FraiseQL */ SELECT data FROM TV_ORDER WHERE data->>'status'=$1 ORDER BY "
        "data->>'created_at' DESC LIMIT 50",
    ]:
        assert fingerprint_sql(variant) == base, variant


def test_in_lists_of_any_length_share_a_fingerprint() -> None:
    assert fingerprint_sql("SELECT data FROM tv_order WHERE id IN ($1, $2, $3)") == \
        fingerprint_sql("SELECT data FROM tv_order WHERE id IN ($1)")


def test_jsonb_path_keys_are_part_of_the_shape() -> None:
    # libpg_query alone drops these keys; for FraiseQL they are structure, not values.
    status = fingerprint_sql("SELECT data FROM tv_order WHERE data->>'status' = $1")
    region = fingerprint_sql("SELECT data FROM tv_order WHERE data->>'region' = $1")
    nested = fingerprint_sql("SELECT data FROM tv_order WHERE data->'customer'->>'region' = $1")
    assert len({status, region, nested}) == 3
    assert jsonb_path_keys("SELECT 1 FROM t WHERE data->'a'->>'b' = $1 AND data ? 'c'") == [
        "->>\x1fb", "->\x1fa", "?\x1fc"]


def test_different_shapes_differ() -> None:
    pairs = [
        ("SELECT data FROM tv_order WHERE id = $1", "SELECT data FROM tv_user WHERE id = $1"),
        ("SELECT data FROM t WHERE (data->>'p')::numeric > $1",
         "SELECT data FROM t WHERE (data->>'p')::numeric < $1"),
        ("SELECT data FROM t ORDER BY id", "SELECT data FROM t ORDER BY id DESC"),
        ("SELECT data FROM t LIMIT $1", "SELECT data FROM t"),
        ("SELECT data FROM t WHERE data->>'a' = $1", "SELECT data FROM t WHERE data->'a' = $1"),
        ("SELECT count(*) FROM t GROUP BY data->>'a'",
         "SELECT count(*) FROM t GROUP BY data->>'b'"),
    ]
    for left, right in pairs:
        assert fingerprint_sql(left) != fingerprint_sql(right), (left, right)
    assert len({fingerprint_sql(sql) for sql in SHAPES}) == len(SHAPES)


def test_cached_after_first_call() -> None:
    sql = "SELECT data FROM tv_invoice WHERE data->>'cache_probe' = $1"
    fingerprint_sql(sql)
    before = fingerprint_sql.cache_info().hits
    start = time.perf_counter_ns()
    for _ in range(1000):
        fingerprint_sql(sql)
    per_call_us = (time.perf_counter_ns() - start) / 1000 / 1000
    assert fingerprint_sql.cache_info().hits == before + 1000
    assert per_call_us < 20  # a dict lookup, not a parse (~25 µs); generous for loaded CI


# ----------------------------------------------------------------------------- properties

_whitespace = st.text(alphabet=" \t\n\r", min_size=1, max_size=4)
_key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)
_value_literal = st.one_of(
    st.integers(min_value=0, max_value=10**12).map(str),
    st.floats(min_value=0, max_value=1e6, allow_nan=False).map(lambda f: f"{f!r}"),
    st.text(max_size=20).filter(lambda s: "\x00" not in s).map(
        lambda s: "'" + s.replace("'", "''") + "'"),
    st.integers(min_value=1, max_value=99).map(lambda n: f"${n}"),
)


def _respace(sql: str, spaces: list[str]) -> str:
    """Replace each single space outside quotes by generated whitespace."""
    out, quoted, index = [], False, 0
    for char in sql:
        if char == "'":
            quoted = not quoted
        if char == " " and not quoted:
            out.append(spaces[index % len(spaces)])
            index += 1
        else:
            out.append(char)
    return "".join(out)


def _recase(sql: str, flips: list[bool]) -> str:
    """Flip letter case outside quotes (keywords and unquoted identifiers are case-insensitive)."""
    out, quoted = [], False
    for index, char in enumerate(sql):
        if char == "'":
            quoted = not quoted
        flip = flips[index % len(flips)] if flips else False
        out.append(char.swapcase() if flip and not quoted and char.isalpha() else char)
    return "".join(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sql=st.sampled_from(SHAPES), spaces=st.lists(_whitespace, min_size=1, max_size=8),
       flips=st.lists(st.booleans(), min_size=1, max_size=16))
def test_whitespace_and_case_keep_the_fingerprint(sql: str, spaces: list[str],
                                                  flips: list[bool]) -> None:
    variant = _recase(_respace(sql, spaces), flips)
    assert fingerprint_sql(variant) == fingerprint_sql(sql)


@settings(max_examples=150, deadline=None)
@given(key=_key, value=_value_literal, limit=_value_literal)
def test_values_do_not_change_the_fingerprint(key: str, value: str, limit: str) -> None:
    template = "SELECT data FROM tv_order WHERE data->>'{key}' = {value} LIMIT {limit}"
    reference = fingerprint_sql(template.format(key=key, value="$1", limit="$2"))
    assert fingerprint_sql(template.format(key=key, value=value, limit=limit)) == reference


@settings(max_examples=150, deadline=None)
@given(left=_key, right=_key, nested=st.booleans())
def test_different_paths_differ(left: str, right: str, nested: bool) -> None:
    path = "data->'customer'->>'{}'" if nested else "data->>'{}'"
    a = fingerprint_sql(f"SELECT data FROM tv_order WHERE {path.format(left)} = $1")
    b = fingerprint_sql(f"SELECT data FROM tv_order WHERE {path.format(right)} = $1")
    assert (a == b) == (left == right)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
@example("SELECT")
@example("'")
@example("SELECT $1 FROM")
def test_never_raises_and_always_valid(text: str) -> None:
    fp = fingerprint_sql(text)
    assert HEX16.match(fp)
    assert fingerprint_sql(text) == fp
