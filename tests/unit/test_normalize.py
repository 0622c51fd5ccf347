"""fraiseql_obs_producers.normalize: literal values never survive; JSONB keys and shape do."""

from __future__ import annotations

import re

import pglast
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fraiseql_obs_producers.fingerprint import fingerprint_sql
from fraiseql_obs_producers.normalize import (
    CACHED_MAX_CHARS,
    UNPARSABLE_SQL,
    PendingSQL,
    fallback_counts,
    is_session_control,
    normalize_cache_clear,
    normalize_sql,
)
from fraiseql_obs_producers.workload import default_workload

# What FraiseQL 0.5.3 sends (tests/test_fraiseql_app.py sees it on the wire).
FRAISEQL_05 = ("SELECT jsonb_build_object('id', data->>'id', 'status', data->>'status')::text "
               "AS result FROM \"tv_order\" WHERE (data ->> 'status') = {v} LIMIT {n}")
# FraiseQL 2.x (values bound server-side as $n, plus a literal '{}').
FRAISEQL_2 = ("SELECT JSON_OBJECT('id' VALUE \"data\"->>'id' RETURNING json) FROM (SELECT CASE WHEN "
              "pg_column_compression(data) IS NOT NULL THEN data || '{}'::jsonb ELSE data END AS "
              "data, \"_o\" FROM (SELECT data, row_number() OVER (ORDER BY (data->>'total')::numeric "
              "DESC, id ASC) AS \"_o\" FROM \"tv_order\" WHERE data->>'status' IN ($1, $2) ORDER BY "
              "id ASC LIMIT $3 OFFSET $4) AS _fq_page OFFSET 0) AS _fq_doc ORDER BY \"_o\"")


def test_fraiseql_05_filter_values_share_one_text_and_keep_the_path() -> None:
    paid = normalize_sql(FRAISEQL_05.format(v="'paid'", n=3))
    shipped = normalize_sql(FRAISEQL_05.format(v="'shipped'", n=10))
    assert paid == shipped == (
        "SELECT jsonb_build_object('id', data->>'id', 'status', data->>'status')::text AS result "
        "FROM \"tv_order\" WHERE (data ->> 'status') = $1 LIMIT $2")
    assert fingerprint_sql(paid) == fingerprint_sql(FRAISEQL_05.format(v="'paid'", n=3))


def test_fraiseql_2_numbers_new_placeholders_after_its_own() -> None:
    out = normalize_sql(FRAISEQL_2)
    assert out is not None
    assert "data || $5::jsonb" in out  # the only literal value; $1..$4 were already there
    assert "OFFSET 0" not in out and "OFFSET $6" in out
    assert "JSON_OBJECT('id' VALUE \"data\"->>'id'" in out
    assert "(data->>'total')::numeric" in out and "data->>'status' IN ($1, $2)" in out
    assert fingerprint_sql(out) == fingerprint_sql(FRAISEQL_2)


def test_every_kind_of_literal() -> None:
    sql = ("SELECT a, -5, - 7.5, 'x', E'\\n', U&'d\\0061t', B'101', X'1f', $$dollar$$, "
           "$tag$body$tag$, true, interval '1 day', date '2020-01-01', ARRAY[1, 2], "
           "'{1,2}'::int[] FROM t WHERE b = $1 AND c IN (1, 2.5) AND d LIKE 'pre%' "
           "AND e IS NULL ORDER BY 1 LIMIT 10 OFFSET 3")
    before = fallback_counts()
    normalize_cache_clear()
    out = normalize_sql(sql)
    assert out is not None
    assert fallback_counts() == before  # PostgreSQL's normalizer did it, not the lexer fallback
    for value in ("-5", "7.5", "'x'", "\\n", "0061", "101", "1f", "dollar", "body", "true",
                  "1 day", "2020", "pre%", "LIMIT 10", "{1,2}", "OFFSET 3"):
        assert value not in out, value
    # Not values: the NULL test, the ORDER BY ordinal and the existing $1.
    assert "IS NULL" in out and "ORDER BY 1 " in out and "b = $1" in out
    numbers = [int(n) for n in re.findall(r"\$(\d+)", out)]
    assert sorted(numbers) == list(range(1, max(numbers) + 1))  # no gaps, no duplicates


def test_json_keys_stay() -> None:
    sql = ("SELECT data #>> '{a,b}', jsonb_extract_path_text(data, 'x', 'y'), "
           "json_build_object('k', 'v') FROM t WHERE data ? 'has' AND data -> 0 = '1' "
           "AND data ?| array['p', 'q']")
    out = normalize_sql(sql)
    assert out == ("SELECT data #>> '{a,b}', jsonb_extract_path_text(data, 'x', 'y'), "
                   "json_build_object('k', $1) FROM t WHERE data ? 'has' AND data -> 0 = $2 "
                   "AND data ?| array[$3, $4]")


def test_typmods_are_not_values() -> None:
    assert normalize_sql("SELECT a::varchar(10), b::numeric(10, 2) FROM t WHERE c = 'x'") == \
        "SELECT a::varchar(10), b::numeric(10, 2) FROM t WHERE c = $1"


def test_comments_and_whitespace() -> None:
    out = normalize_sql("SELECT /* user='alice' */ a\n\n  FROM t -- trace 42\n WHERE b = 'v'")
    assert out == "SELECT a FROM t WHERE b = $1"
    assert normalize_sql("SELECT a/*c*/FROM t") == "SELECT a FROM t"


def test_non_ascii_text() -> None:
    assert normalize_sql("SELECT 'éé', data->>'ü' FROM t WHERE x = 'ö'") == \
        "SELECT $1, data->>'ü' FROM t WHERE x = $2"


def test_skipped_statements() -> None:
    for sql in ("BEGIN", "begin isolation level serializable", "START TRANSACTION", "COMMIT",
                "END", "ROLLBACK", "ABORT", "SAVEPOINT s1", "RELEASE SAVEPOINT s1",
                "ROLLBACK TO SAVEPOINT s1", "SET search_path = x", "SET LOCAL statement_timeout = "
                "'30s'", "SET TRANSACTION READ ONLY", "RESET ALL", "SHOW work_mem", "DISCARD ALL",
                "PREPARE TRANSACTION 'x'", "COMMIT; BEGIN", "", "   ", "-- only a comment",
                "set local statement_timeout = 5"):
        assert normalize_sql(sql) is None, sql
    # A text mixing a skipped statement with a query is recorded, its values replaced.
    assert normalize_sql("SET x = 1; SELECT 2") == "SET x = $1; SELECT $2"


def test_other_statements() -> None:
    assert normalize_sql("INSERT INTO t (a, b) VALUES (1, 'secret') RETURNING id") == \
        "INSERT INTO t (a, b) VALUES ($1, $2) RETURNING id"
    assert normalize_sql("UPDATE t SET a = 'x' WHERE id = 5") == "UPDATE t SET a = $1 WHERE id = $2"
    assert normalize_sql("DELETE FROM t WHERE id = 5") == "DELETE FROM t WHERE id = $1"


def test_unparsable_text_never_leaks() -> None:
    before = fallback_counts()
    normalize_cache_clear()
    out = normalize_sql("SELECT * FRM t WHERE a = 'secret' AND data->>'k' = 42")
    assert out == "SELECT * FRM t WHERE a = $1 AND data->>'k' = $2"
    assert normalize_sql("SELECT 'unterminated secret") == UNPARSABLE_SQL
    assert normalize_sql("SELECT 1 /* unterminated") == UNPARSABLE_SQL
    assert normalize_sql("BEGN; SET x = 'secret'") == "BEGN; SET x = $1"
    assert normalize_sql("SET x = 'a' 'b'") is None  # unparsable, but a SET
    after = fallback_counts()
    assert after["lexer"] == before["lexer"] + 2
    assert after["withheld"] == before["withheld"] + 2


def test_cache_and_long_texts() -> None:
    sql = "SELECT a FROM t WHERE b = 'v'"
    assert normalize_sql(sql) is normalize_sql(sql)  # the cached object
    long_sql = "SELECT a FROM t WHERE b IN (" + ", ".join(["'v'"] * (CACHED_MAX_CHARS // 4)) + ")"
    assert len(long_sql) > CACHED_MAX_CHARS
    out = normalize_sql(long_sql)
    assert out is not None and "'v'" not in out


def test_workload_shapes_are_stable() -> None:
    """The project's own FraiseQL-shaped SQL already uses $n: normalizing changes nothing."""
    for pattern in default_workload().patterns:
        out = normalize_sql(pattern.sql)
        assert out is not None
        assert fingerprint_sql(out) == fingerprint_sql(pattern.sql)
        assert normalize_sql(out) == out


_STRING = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)
_LITERAL = st.one_of(
    _STRING.map(lambda s: "'" + s.replace("'", "''") + "'"),
    st.integers(-10**12, 10**12).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr).filter(lambda s: "e" not in s),
    _STRING.map(lambda s: "$q$" + s.replace("$", "") + "$q$"),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_LITERAL, min_size=4, max_size=4), st.lists(_LITERAL, min_size=4, max_size=4),
       st.integers(0, 3))
@example(["'paid'", "1", "2", "3"], ["'shipped'", "-1", "2.5", "0"], 0)
def test_values_never_change_the_text_or_survive(first: list[str], second: list[str],
                                                  existing: int) -> None:
    params = [f"${k}" for k in range(1, existing + 1)]
    template = ("SELECT jsonb_build_object('id', data->>'id') FROM tv_order WHERE "
                "(data ->> 'status') = {} AND (data->>'total')::numeric > {} "
                "AND id IN ({}, {}" + "".join(f", {p}" for p in params) + ") LIMIT 5")
    a = normalize_sql(template.format(*first))
    b = normalize_sql(template.format(*second))
    assert a is not None and a == b
    assert fingerprint_sql(a) == fingerprint_sql(template.format(*first))
    assert "(data ->> 'status') = $" in a and "data->>'id'" in a and "'total'" in a
    # No value token is left apart from the JSON keys, and the result parses.
    pglast.parse_sql(a)
    tokens = [a[t.start : t.end + 1] for t in pglast.parser.scan(a)
              if t.name in {"SCONST", "ICONST", "FCONST"}]
    assert sorted(tokens) == ["'id'", "'id'", "'status'", "'total'"]
    numbers = sorted(int(n) for n in re.findall(r"\$(\d+)", a))
    assert numbers == list(range(1, existing + 6))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
@example("SELECT '")
@example("\udcff")
@example("SELECT 1 /*")
def test_never_raises(text: str) -> None:
    out = normalize_sql(text)
    assert out is None or isinstance(out, str)
    if out is not None and out != UNPARSABLE_SQL:
        # Whatever came back, PostgreSQL's lexer finds no value token outside JSON keys in it.
        tokens = list(pglast.parser.scan(out))
        for index, token in enumerate(tokens):
            if token.name in {"USCONST", "FCONST", "BCONST", "XCONST"}:
                raise AssertionError(out)
            if token.name in {"SCONST", "ICONST"}:
                before = out[tokens[index - 1].start : tokens[index - 1].end + 1] if index else ""
                assert before in {"->", "->>", "#>", "#>>", "?", "?|", "?&", "(", ","}, out


@pytest.mark.parametrize("text", ["BEGIN", "begin;", "  COMMIT", "SET LOCAL statement_timeout = '30s'",
                                  "ROLLBACK TO SAVEPOINT s1", "SHOW work_mem", "START TRANSACTION"])
def test_session_control_is_recognised_without_parsing(text: str) -> None:
    assert is_session_control(text)
    assert normalize_sql(text) is None  # the quick test never disagrees with the normalizer


@pytest.mark.parametrize("text", ["SELECT 1", "SET x = 1; SELECT data FROM t", "settle()", "",
                                  "WITH s AS (SELECT 1) SELECT * FROM s"])
def test_anything_else_is_left_to_the_normalizer(text: str) -> None:
    assert not is_session_control(text)


def test_pending_sql_normalizes_like_its_text() -> None:
    text = "SELECT data FROM tv_item WHERE (data ->> 'status') = 'paid' LIMIT 5"
    assert normalize_sql(PendingSQL(text)) == normalize_sql(text) == (
        "SELECT data FROM tv_item WHERE (data ->> 'status') = $1 LIMIT $2")
