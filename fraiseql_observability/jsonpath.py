"""The JSONB-path syntax, in one place: FraiseQL's text extraction ``data->'customer'->>'region'``.

:class:`JsonPath` is a column and its keys; :func:`path_expression` spells it the way FraiseQL
writes it (the canonical text the analyzer matches against query SQL and table statistics);
:meth:`JsonPath.sql` composes it safely for execution; :func:`parse_json_path` reads either the
dotted form ``customer.region`` or an expression, with PostgreSQL's own parser (pglast): the text
is parsed, never executed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from pglast import parser as _pg
from psycopg import sql

from .errors import FraiseqlError

__all__ = ["InvalidJsonPath", "JsonPath", "parse_json_path", "path_expression", "quote_literal"]

_PLAIN_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]*")


class InvalidJsonPath(FraiseqlError, ValueError):
    """Text that is not a JSONB text path (``data->>'key'`` or ``customer.region``)."""


@dataclass(frozen=True, slots=True)
class JsonPath:
    """A text extraction of a JSONB path: ``column->'k1'->…->>'kn'``."""

    column: str
    keys: tuple[str, ...]

    @property
    def expression(self) -> str:
        return path_expression(self.column, self.keys)

    def sql(self) -> sql.Composed:
        """The same expression as safely composed SQL (identifier and literals quoted)."""
        *parents, leaf = self.keys
        parts: list[sql.Composable] = [sql.Identifier(self.column)]
        parts += [sql.SQL("->{}").format(sql.Literal(key)) for key in parents]
        parts.append(sql.SQL("->>{}").format(sql.Literal(leaf)))
        return sql.Composed(parts)


def quote_literal(text: str) -> str:
    """A SQL string literal for people to read (``it's`` → ``'it''s'``)."""
    return "'" + text.replace("'", "''") + "'"


def path_expression(column: str, keys: Sequence[str]) -> str:
    """Canonical text of a path, as FraiseQL writes it: ``data->'customer'->>'region'``.

    The analyzer matches this text against the paths it finds in query SQL.
    """
    if not keys:
        raise InvalidJsonPath("a JSONB path needs at least one key")
    col = column if _PLAIN_IDENTIFIER.fullmatch(column) else '"' + column.replace('"', '""') + '"'
    *parents, leaf = keys
    return col + "".join(f"->{quote_literal(k)}" for k in parents) + f"->>{quote_literal(leaf)}"


def _const_string(node: Any) -> str | None:
    """The string of ``'k'`` or ``'k'::text`` in a parse tree, else None."""
    if not isinstance(node, dict):
        return None
    cast = node.get("TypeCast")
    if isinstance(cast, dict):
        names = [n.get("String", {}).get("sval") for n in cast.get("typeName", {}).get("names", [])]
        if names[-1:] != ["text"]:
            return None
        node = cast.get("arg")
        if not isinstance(node, dict):
            return None
    const = node.get("A_Const")
    if isinstance(const, dict) and isinstance(const.get("sval"), dict):
        value = const["sval"].get("sval", "")
        return value if isinstance(value, str) else None
    return None


def _path_from_tree(node: Any, final: bool) -> JsonPath | None:
    """``column (-> key)* ->> key`` (``final``) or ``column (-> key)*`` from a parse tree."""
    if not isinstance(node, dict):
        return None
    ref = node.get("ColumnRef")
    if isinstance(ref, dict) and not final:
        fields = ref.get("fields", [])
        if len(fields) == 1 and isinstance(fields[0], dict) and "String" in fields[0]:
            return JsonPath(str(fields[0]["String"]["sval"]), ())
        return None
    expr = node.get("A_Expr")
    if not isinstance(expr, dict) or expr.get("kind") != "AEXPR_OP":
        return None
    names = expr.get("name", [])
    op = names[0].get("String", {}).get("sval") if len(names) == 1 else None
    if op not in ({"->>", "#>>"} if final else {"->", "#>"}):
        return None
    key = _const_string(expr.get("rexpr"))
    base = _path_from_tree(expr.get("lexpr"), final=False)
    if key is None or base is None:
        return None
    if op in {"#>", "#>>"}:
        # '{a,b}': plain keys only (quoted or escaped array elements are not worth parsing here).
        if not (key.startswith("{") and key.endswith("}")) or any(c in key for c in '"\\ '):
            return None
        steps = tuple(key[1:-1].split(","))
        if not all(steps):
            return None
        return JsonPath(base.column, base.keys + steps)
    return JsonPath(base.column, (*base.keys, key))


def _parse_expression(text: str) -> JsonPath | None:
    try:
        tree = json.loads(_pg.parse_sql_json("SELECT " + text))
    except Exception:
        return None
    stmts = tree.get("stmts", [])
    if len(stmts) != 1:
        return None
    select = stmts[0].get("stmt", {}).get("SelectStmt", {})
    targets = select.get("targetList", [])
    if len(targets) != 1 or set(select) - {"targetList", "limitOption", "op"}:
        return None
    target = targets[0].get("ResTarget", {})
    if "name" in target:  # `expr AS alias`
        return None
    return _path_from_tree(target.get("val"), final=True)


def parse_json_path(text: str, *, default_column: str = "data") -> JsonPath:
    """A path from ``customer.region`` (keys of ``default_column``) or an expression such as
    ``data->'customer'->>'region'`` / ``((data -> 'customer'::text) ->> 'region'::text)``.

    Raises :class:`InvalidJsonPath` for anything else (the text is parsed, never executed).
    """
    stripped = text.strip()
    if "->" in stripped or "#>" in stripped:
        path = _parse_expression(stripped)
        if path is None or not path.keys:
            raise InvalidJsonPath(f"{text!r}: not a JSONB text path such as data->>'key'")
        return path
    keys = tuple(stripped.split("."))
    if not stripped or not all(keys):
        raise InvalidJsonPath(f"{text!r}: not a dotted JSONB path such as customer.region")
    return JsonPath(default_column, keys)
