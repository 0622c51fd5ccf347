"""SQL normalization: every literal value becomes a ``$n`` placeholder before it leaves the process.

SPEC §3: the ``sql`` of a query event never carries argument values. Real clients do put values
in the text -- FraiseQL 0.5.x inlines filter values (``WHERE (data ->> 'status') = 'paid'``),
psycopg's client-side binding merges them, hand-written SQL has them -- so the instrumentation and
the OTLP receiver pass every statement through :func:`normalize_sql` first.

How: PostgreSQL's own normalizer decides what a constant is (``pglast.parser.normalize``, i.e.
libpg_query's ``pg_query_normalize``, the pg_stat_statements rule: typmods such as
``varchar(10)`` and ``ORDER BY 1`` ordinals are not values and stay). Its output is aligned token
by token with the original through PostgreSQL's lexer (``pglast.parser.scan``), so that:

* the keys of JSONB paths stay as written -- the right operand of ``->``, ``->>``, ``#>``,
  ``#>>``, ``?``, ``?|``, ``?&``, the path arguments of ``json[b]_extract_path[_text]()``, the keys
  of ``json[b]_build_object()`` and of ``JSON_OBJECT(k VALUE v)``. They name structure, not values;
  the analyzer needs them (which path to index or denormalize), and the fingerprint already mixes
  the path keys in (:mod:`.fingerprint`), so ``fingerprint_sql(normalize_sql(s)) ==
  fingerprint_sql(s)``;
* new placeholders are numbered in text order after the highest ``$n`` already present (FraiseQL
  2.x binds ``$1``, ``$2`` ... itself), with no gaps;
* comments are dropped (a sqlcommenter-style comment may carry request data) and every run of
  whitespace becomes one space, so texts that differ only in layout normalize equally.

Statements that must not be recorded give ``None``: transaction control (``BEGIN``, ``COMMIT``,
``ROLLBACK``, ``SAVEPOINT`` ...), ``SET`` / ``SET LOCAL`` / ``RESET``, ``SHOW``, ``DISCARD``, and
texts holding no statement at all. A multi-statement text is recorded (whole) unless every
statement in it is of those kinds.

Text PostgreSQL's grammar rejects (a newer syntax, a typo) never leaks a value either: if the
lexer accepts it, every value token (string, number, bit-string constants) is replaced by a
placeholder (booleans too, except after ``IS`` / ``NOT``), keeping only strings right after a
JSONB path operator; if even the lexer rejects it
(an unterminated quote, invalid UTF-8) the result is the fixed :data:`UNPARSABLE_SQL` marker.
Both fallbacks are counted once per distinct text in
``fraiseql_sql_normalize_fallbacks_total{kind="lexer"|"withheld"}`` (see :func:`fallback_counts`).

Results are cached per distinct text (``functools.lru_cache``, :data:`NORMALIZE_CACHE_SIZE`
entries) for texts up to :data:`CACHED_MAX_CHARS` characters: a warm call costs one dict lookup.
The normalizer never raises.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, Final

from pglast import parser as _pg
from prometheus_client import Counter

__all__ = [
    "CACHED_MAX_CHARS",
    "NORMALIZE_CACHE_SIZE",
    "SKIPPED_STATEMENTS",
    "UNPARSABLE_SQL",
    "PendingSQL",
    "fallback_counts",
    "is_session_control",
    "normalize_cache_clear",
    "normalize_sql",
]

NORMALIZE_CACHE_SIZE: Final = 16384
# Longer texts (a bulk INSERT ...) are normalized on every call: caching them would let a few
# huge statements hold megabytes in the cache.
CACHED_MAX_CHARS: Final = 16384
UNPARSABLE_SQL: Final = "/* unparsable statement: text withheld (fraiseql-observability) */"

# Raw parse-tree statement kinds that are never recorded (they carry no query shape).
SKIPPED_STATEMENTS: Final = frozenset({
    "TransactionStmt", "VariableSetStmt", "VariableShowStmt", "DiscardStmt",
})
# The same, as the first lexer token of a statement (the fallback for unparsable text).
_SKIPPED_FIRST_TOKENS: Final = frozenset({
    "BEGIN_P", "START", "COMMIT", "END_P", "ROLLBACK", "ABORT_P", "SAVEPOINT", "RELEASE",
    "SET", "RESET", "SHOW", "DISCARD",
})
_PATH_OPERATORS: Final = frozenset({"->", "->>", "#>", "#>>", "?", "?|", "?&"})
# Functions whose arguments from the second on are path keys.
_PATH_FUNCTIONS: Final = frozenset({
    "jsonb_extract_path", "jsonb_extract_path_text", "json_extract_path", "json_extract_path_text",
})
# Functions whose even-position arguments (0, 2, ...) are object keys.
_OBJECT_FUNCTIONS: Final = frozenset({"jsonb_build_object", "json_build_object"})
_COMMENT_TOKENS: Final = frozenset({"C_COMMENT", "SQL_COMMENT"})
_VALUE_TOKENS: Final = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_NUMBER_TOKENS: Final = frozenset({"ICONST", "FCONST"})
# Boolean constants are keywords to the lexer, but values to the normalizer (``WHERE paid = true``).
_BOOLEAN_TOKENS: Final = frozenset({"TRUE_P", "FALSE_P"})

_FALLBACKS = Counter(
    "fraiseql_sql_normalize_fallbacks",
    "Distinct SQL texts PostgreSQL's grammar rejected: normalized by the lexer (lexer) or "
    "replaced by a fixed marker (withheld)",
    labelnames=["kind"],
)
_FALLBACK_COUNTS: dict[str, int] = {"lexer": 0, "withheld": 0}


def fallback_counts() -> dict[str, int]:
    """How many distinct texts took each fallback in this process (``lexer``, ``withheld``)."""
    return dict(_FALLBACK_COUNTS)


def _count_fallback(kind: str) -> None:
    _FALLBACK_COUNTS[kind] += 1
    _FALLBACKS.labels(kind=kind).inc()


# ---------------------------------------------------------------------------- the parse tree


def _const_location(node: Any) -> int | None:
    """The location of an ``A_Const`` string or integer node (a possible key), else None."""
    if not isinstance(node, dict):
        return None
    const = node.get("A_Const")
    if not isinstance(const, dict) or not ("sval" in const or "ival" in const):
        return None
    location = const.get("location")
    return location if isinstance(location, int) and location >= 0 else None


def _names(items: Any) -> list[str]:
    if not isinstance(items, list):
        return []
    out = []
    for item in items:
        string = item.get("String") if isinstance(item, dict) else None
        value = string.get("sval") if isinstance(string, dict) else None
        if isinstance(value, str):
            out.append(value)
    return out


def _key_locations(node: Any, out: list[int]) -> None:
    """Byte offsets of the constants that name JSON structure (kept as written)."""
    if isinstance(node, list):
        for child in node:
            _key_locations(child, out)
        return
    if not isinstance(node, dict):
        return
    expr = node.get("A_Expr")
    if isinstance(expr, dict) and expr.get("kind") == "AEXPR_OP":
        names = _names(expr.get("name"))
        if len(names) == 1 and names[0] in _PATH_OPERATORS:
            location = _const_location(expr.get("rexpr"))
            if location is not None:
                out.append(location)
    call = node.get("FuncCall")
    if isinstance(call, dict):
        names = _names(call.get("funcname"))
        args = call.get("args")
        if names and isinstance(args, list):
            if names[-1] in _PATH_FUNCTIONS:
                keys = args[1:]
            elif names[-1] in _OBJECT_FUNCTIONS:
                keys = args[0::2]
            else:
                keys = []
            out.extend(loc for loc in map(_const_location, keys) if loc is not None)
    pair = node.get("JsonKeyValue")
    if isinstance(pair, dict):
        location = _const_location(pair.get("key"))
        if location is not None:
            out.append(location)
    for value in node.values():
        if isinstance(value, dict | list):
            _key_locations(value, out)


def _char_offsets(sql: str, byte_offsets: Iterable[int]) -> set[int]:
    """libpg_query's tree locations are UTF-8 byte offsets; the lexer's are character offsets."""
    if sql.isascii():
        return set(byte_offsets)
    encoded = sql.encode("utf-8")
    return {len(encoded[:offset].decode("utf-8", "ignore")) for offset in byte_offsets}


# ---------------------------------------------------------------------------- text assembly


def _join(sql: str, pieces: list[tuple[int, int, str]]) -> str:
    """Token texts in order; one space wherever the original had whitespace or a comment."""
    out: list[str] = []
    previous_end = None
    for start, end, text in pieces:
        if previous_end is not None and start > previous_end + 1:
            out.append(" ")
        out.append(text)
        previous_end = end
    return "".join(out)


def _max_param(tokens: list[Any], sql: str) -> int:
    highest = 0
    for token in tokens:
        if token.name == "PARAM":
            highest = max(highest, int(sql[token.start + 1 : token.end + 1]))
    return highest


class _Numbering:
    """Hands out ``$n`` placeholders after the highest one the text already uses."""

    __slots__ = ("next",)

    def __init__(self, highest: int) -> None:
        self.next = highest + 1

    def take(self) -> str:
        text = f"${self.next}"
        self.next += 1
        return text


def _aligned(sql: str, normalized: str, keys: set[int]) -> str | None:
    """Rebuild ``sql`` replacing the constants libpg_query replaced, except JSON keys.

    libpg_query only substitutes constants in place (comments and whitespace stay), so one scan
    of the original and an offset into ``normalized`` find them: where the original token is not
    at ``offset`` in ``normalized``, a ``$n`` is. None when that does not hold (then the caller
    takes the lexer fallback).
    """
    original = [t for t in _pg.scan(sql) if t.name not in _COMMENT_TOKENS]
    numbering = _Numbering(_max_param(original, sql))
    pieces: list[tuple[int, int, str]] = []
    delta = 0  # position in normalized = position in sql + delta
    count = len(original)
    i = 0
    while i < count:
        token = original[i]
        text = sql[token.start : token.end + 1]
        at = token.start + delta
        if normalized.startswith(text, at):  # a constant never starts like "$<digit>"
            pieces.append((token.start, token.end, text))
            i += 1
            continue
        digits = at + 1
        while digits < len(normalized) and normalized[digits].isdigit():
            digits += 1
        if normalized[at : at + 1] != "$" or digits == at + 1:
            return None
        end = token.end
        # A negative number is one constant whose location is that of its minus sign.
        if text == "-" and i + 1 < count and original[i + 1].name in _NUMBER_TOKENS:
            i += 1
            end = original[i].end
        elif token.name not in _VALUE_TOKENS and token.name not in _BOOLEAN_TOKENS:
            return None
        delta += (digits - at) - (end + 1 - token.start)
        if token.start in keys:
            pieces.append((token.start, end, sql[token.start : end + 1]))
        else:
            pieces.append((token.start, end, numbering.take()))
        i += 1
    if len(sql) + delta != len(normalized):
        return None
    return _join(sql, pieces)


def _lexer_only(sql: str) -> str | None:
    """Every value token replaced (path keys after a path operator kept); None for skipped kinds.

    Raises ``pglast.parser.ParseError`` when the lexer rejects ``sql``.
    """
    tokens = [t for t in _pg.scan(sql) if t.name not in _COMMENT_TOKENS]
    if not tokens:
        return None
    # Skip only when every statement of the text is a skipped kind.
    starts = [tokens[0]] + [tokens[k + 1] for k in range(len(tokens) - 1)
                            if tokens[k].name == "ASCII_59"]
    if all(t.name in _SKIPPED_FIRST_TOKENS for t in starts):
        return None
    numbering = _Numbering(_max_param(tokens, sql))
    pieces: list[tuple[int, int, str]] = []
    previous = ""
    for token in tokens:
        text = sql[token.start : token.end + 1]
        is_key = token.name in ("SCONST", "ICONST") and previous in _PATH_OPERATORS
        is_value = token.name in _VALUE_TOKENS or (
            token.name in _BOOLEAN_TOKENS and previous not in ("IS", "NOT"))
        if is_value and not is_key:
            text = numbering.take()
        pieces.append((token.start, token.end, text))
        previous = text if token.name == "Op" else token.name.removesuffix("_P")
    return _join(sql, pieces)


def _normalize(sql: str) -> str | None:
    try:
        tree = json.loads(_pg.parse_sql_json(sql))
    except Exception:
        return _fallback(sql)
    statements = [s.get("stmt", {}) for s in tree.get("stmts", [])]
    kinds = [next(iter(s), "") for s in statements]
    if not kinds or all(kind in SKIPPED_STATEMENTS for kind in kinds):
        return None
    try:
        locations: list[int] = []
        _key_locations(statements, locations)
        result = _aligned(sql, _pg.normalize(sql), _char_offsets(sql, locations))
    except Exception:
        result = None
    return result if result is not None else _fallback(sql)


def _fallback(sql: str) -> str | None:
    try:
        result = _lexer_only(sql)
    except Exception:
        _count_fallback("withheld")
        return UNPARSABLE_SQL
    if result is not None:
        _count_fallback("lexer")
    return result


_cached: Callable[[str], str | None] = lru_cache(maxsize=NORMALIZE_CACHE_SIZE)(_normalize)


def normalize_sql(sql: str) -> str | None:
    """``sql`` with every literal value replaced by a ``$n`` placeholder; None: do not record.

    JSONB path and object keys stay as written; comments are dropped and whitespace collapsed.
    None for transaction control, ``SET``/``RESET``/``SHOW``/``DISCARD`` and empty texts; the
    :data:`UNPARSABLE_SQL` marker for text even PostgreSQL's lexer rejects. Never raises.
    """
    if type(sql) is not str:  # PendingSQL: libpg_query's binding takes exact str only
        sql = str.__str__(sql)
    if len(sql) <= CACHED_MAX_CHARS:
        return _cached(sql)
    return _normalize(sql)


def normalize_cache_clear() -> None:
    """Empty the cache (tests and benchmarks measuring the uncached path)."""
    _cached.cache_clear()  # type: ignore[attr-defined]


class PendingSQL(str):
    """Raw statement text handed to :meth:`Recorder.record` to be normalized later.

    The recorder normalizes it on its background thread, only when the event is kept by sampling
    (and drops it when :func:`normalize_sql` says not to record it): the API's request path then
    never pays the normalizer, whose uncached cost is 0.2-1.4 ms per new text. The raw text never
    leaves the process: it is replaced before encoding.
    """

    __slots__ = ()


_CONTROL_WORDS: Final = frozenset({
    "BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE", "SET",
    "RESET", "SHOW", "DISCARD",
})


def is_session_control(sql: str) -> bool:
    """A quick test, without parsing, for one transaction-control or ``SET``-like statement (what
    FraiseQL runs around every query); :func:`normalize_sql` decides exactly for the rest."""
    head = sql.lstrip()[:12].split(None, 1)
    if not head or head[0].upper().rstrip(";") not in _CONTROL_WORDS:
        return False
    return ";" not in sql.rstrip().rstrip(";")  # several statements: let the parser decide
