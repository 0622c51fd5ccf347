"""SQL fingerprints: one stable hex value per query *shape* (SPEC §3 ``fingerprint``).

The base is PostgreSQL's own fingerprint (libpg_query through ``pglast.parser.fingerprint``): it is
computed from the parse tree, so whitespace, keyword case, comments, literal values, ``$n``
placeholder numbers and the length of ``IN (...)`` lists do not change it.

One refinement matters for this project: libpg_query drops *every* constant, including the keys of
JSONB path operators, so ``data->>'status' = $1`` and ``data->>'region' = $1`` would share one
fingerprint. For FraiseQL those keys are not argument values -- the generated SQL carries values
as ``$n`` placeholders and paths as literals -- they are the structure the analyzer needs (which
path to denormalize or index). So the keys of ``->``, ``->>``, ``#>``, ``#>>``, ``?``, ``?|``,
``?&`` and of ``json[b]_extract_path[_text]()`` are mixed into the fingerprint; every other
literal is still ignored (SQL never carries argument values here: it is PII-free by SPEC §3).

Results are cached per distinct SQL text (FraiseQL emits a small set of texts), so only the first
call for a text parses; later calls cost one dict lookup. SQL that does not parse gets a fallback
fingerprint from its tokens (or, if even the lexer fails, from its whitespace-normalized text):
fingerprinting never raises.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any, Final

from pglast import parser as _pg

__all__ = ["FINGERPRINT_CACHE_SIZE", "fingerprint_sql", "jsonb_path_keys"]

FINGERPRINT_CACHE_SIZE: Final = 65536
# Width of every fingerprint this module returns: libpg_query's is 64 bits; fallbacks match it.
_HEX_LEN: Final = 16

# Binary operators whose right operand names a JSON key, index or path (not a value).
_PATH_OPERATORS: Final = frozenset({"->", "->>", "#>", "#>>", "?", "?|", "?&"})
_PATH_FUNCTIONS: Final = frozenset({
    "jsonb_extract_path", "jsonb_extract_path_text", "json_extract_path", "json_extract_path_text",
})
# Lexer tokens that carry values; the fallback replaces them by a placeholder.
_VALUE_TOKENS: Final = frozenset({
    "SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST", "PARAM",
})


def _const_text(node: Any) -> str | None:
    """The text of an ``A_Const`` string or integer node, else None."""
    if not isinstance(node, dict):
        return None
    const = node.get("A_Const")
    if not isinstance(const, dict):
        return None
    for kind, field in (("sval", "sval"), ("ival", "ival")):
        inner = const.get(kind)
        if isinstance(inner, dict):
            # libpg_query omits zero-valued fields from JSON, so `data->0` has an empty ival.
            return str(inner.get(field, 0 if kind == "ival" else ""))
    return None


def _operator(expr: dict[str, Any]) -> str | None:
    names = expr.get("name")
    if isinstance(names, list) and len(names) == 1:
        string = names[0].get("String") if isinstance(names[0], dict) else None
        if isinstance(string, dict):
            value = string.get("sval")
            return value if isinstance(value, str) else None
    return None


def _collect(node: Any, out: list[str]) -> None:
    """Depth-first walk of the parse tree, appending ``op<US>key`` for every JSONB path step."""
    if isinstance(node, list):
        for child in node:
            _collect(child, out)
        return
    if not isinstance(node, dict):
        return
    expr = node.get("A_Expr")
    if isinstance(expr, dict) and expr.get("kind") == "AEXPR_OP":
        op = _operator(expr)
        if op in _PATH_OPERATORS:
            key = _const_text(expr.get("rexpr"))
            if key is not None:
                out.append(f"{op}\x1f{key}")
    call = node.get("FuncCall")
    if isinstance(call, dict):
        names = [n.get("String", {}).get("sval") for n in call.get("funcname", [])
                 if isinstance(n, dict)]
        if names and names[-1] in _PATH_FUNCTIONS:
            keys = [k for k in (_const_text(a) for a in call.get("args", [])[1:]) if k is not None]
            out.append(f"{names[-1]}\x1f" + "\x1f".join(keys))
    for value in node.values():
        if isinstance(value, dict | list):
            _collect(value, out)


def jsonb_path_keys(sql: str) -> list[str]:
    """The JSONB path steps of ``sql`` as ``"<op>\\x1f<key>"`` strings, in parse-tree order.

    Raises ``pglast.parser.ParseError`` when ``sql`` does not parse.
    """
    tree = json.loads(_pg.parse_sql_json(sql))
    keys: list[str] = []
    _collect(tree.get("stmts", []), keys)
    return keys


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HEX_LEN]


def _fallback(sql: str) -> str:
    """A fingerprint for SQL that PostgreSQL's grammar rejects: stable, never raising.

    Token-based when the lexer accepts the text (so values and whitespace still do not matter),
    else the whitespace-normalized text. A distinct prefix keeps it apart from parsed fingerprints.
    """
    try:
        parts = []
        for token in _pg.scan(sql):
            text = sql[token.start : token.end + 1]
            if token.name in _VALUE_TOKENS:
                parts.append("?")
            elif text.startswith('"'):
                parts.append(text)  # a quoted identifier is case-sensitive
            else:
                parts.append(text.lower())
        return _digest("scan\x1e" + " ".join(parts))
    except Exception:
        return _digest("text\x1e" + " ".join(sql.split()))


@lru_cache(maxsize=FINGERPRINT_CACHE_SIZE)
def fingerprint_sql(sql: str) -> str:
    """Lowercase hex fingerprint (16 digits) of the shape of ``sql``; never raises.

    Same shape -- up to whitespace, case, comments, literal values and placeholders -- gives the
    same value; a different table, column, operator, clause or JSONB path gives a different one.
    """
    try:
        base = _pg.fingerprint(sql)
        keys = jsonb_path_keys(sql)
    except Exception:
        return _fallback(sql)
    if not keys:
        return str(base)
    return _digest(f"{base}\x1e" + "\x1e".join(keys))
