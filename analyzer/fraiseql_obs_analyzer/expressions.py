"""One expression of a pglast parse tree, read as the analyzer's keys: never regexes.

:func:`key_expr` says which :class:`~fraiseql_obs_analyzer.shape.KeyExpr` (a column, a JSONB path
in any of its spellings, a cast of either) an expression denotes, resolving column qualifiers in
a :class:`Scope`; :func:`is_value` whether it is the non-column side of a predicate. Small helpers
over pglast nodes (:func:`node_names`, :func:`const_value`, :func:`cast_type`, :func:`walk`) and
the text-array literal reader :func:`parse_pg_array_literal` (``'{a,"b c"}'``) serve the statement
walker of :mod:`fraiseql_obs_analyzer.parse`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final

from pglast import ast, enums

from .shape import CAST_TYPES, JSON_PATH_FUNCS, KeyExpr, Relation

__all__ = [
    "Scope",
    "cast_type",
    "const_value",
    "is_value",
    "key_expr",
    "node_names",
    "parse_pg_array_literal",
    "walk",
]

_JSON_STEP_OPS: Final = {"->": False, "->>": True}  # op -> result is text
_JSON_PATH_OPS: Final = {"#>": False, "#>>": True}

def node_names(nodes: Sequence[Any] | None) -> list[str]:
    return [str(n.sval) for n in nodes or () if isinstance(n, ast.String)]


def const_value(node: Any) -> str | int | None:
    """The value of a string or integer constant (also under a cast, as pg_get_indexdef prints)."""
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.A_Const) and not node.isnull:
        value = node.val
        if isinstance(value, ast.String):
            return str(value.sval)
        if isinstance(value, ast.Integer):
            return int(value.ival or 0)
    return None


def cast_type(type_name: ast.TypeName) -> str | None:
    if type_name.arrayBounds or type_name.typmods or type_name.setof:
        return None
    names = node_names(type_name.names)
    if not names or (len(names) == 2 and names[0] != "pg_catalog") or len(names) > 2:
        return None
    return CAST_TYPES.get(names[-1])


def parse_pg_array_literal(text: str) -> tuple[str, ...] | None:
    """Elements of a one-dimensional text-array literal such as ``{a,"b c"}``; None if malformed."""
    text = text.strip()
    if len(text) < 2 or text[0] != "{" or text[-1] != "}":
        return None
    body = text[1:-1]
    if not body.strip():
        return ()
    out: list[str] = []
    i = 0
    while i <= len(body):
        while i < len(body) and body[i].isspace():
            i += 1
        if i < len(body) and body[i] == '"':
            i += 1
            chars: list[str] = []
            while i < len(body) and body[i] != '"':
                if body[i] == "\\" and i + 1 < len(body):
                    i += 1
                chars.append(body[i])
                i += 1
            if i >= len(body):
                return None
            i += 1
            while i < len(body) and body[i].isspace():
                i += 1
            out.append("".join(chars))
        else:
            start = i
            while i < len(body) and body[i] != ",":
                if body[i] in '{}"\\':
                    return None
                i += 1
            element = body[start:i].strip()
            if not element or element.upper() == "NULL":
                return None
            out.append(element)
        if i >= len(body):
            break
        if body[i] != ",":
            return None
        i += 1
        if i == len(body):
            return None
    return tuple(out)


class Scope:
    """The relations visible in one SELECT: alias or name -> Relation (None: a derived table)."""

    def __init__(self, parent: Scope | None = None) -> None:
        self.parent = parent
        self.by_name: dict[str, Relation | None] = {}
        self.relations: list[Relation] = []
        self.ctes: set[str] = set(parent.ctes) if parent else set()

    def add(self, key: str, relation: Relation | None) -> None:
        self.by_name[key] = relation
        if relation is not None and relation not in self.relations:
            self.relations.append(relation)

    def resolve(self, qualifier: str | None) -> tuple[bool, Relation | None]:
        """(found, relation) for a column qualified by ``qualifier`` (None: unqualified)."""
        if qualifier is None:
            if len(self.by_name) == 1:
                return True, next(iter(self.by_name.values()))
            return False, None
        if qualifier in self.by_name:
            return True, self.by_name[qualifier]
        if self.parent is not None:
            return self.parent.resolve(qualifier)
        return False, None


def key_expr(node: Any, scope: Scope) -> tuple[Relation | None, KeyExpr] | None:
    """The (relation, key) an expression denotes, or None when it is not a modelled key."""
    if isinstance(node, ast.TypeCast):
        inner = key_expr(node.arg, scope)
        if inner is None or inner[1].cast is not None:
            return None
        cast = cast_type(node.typeName) if node.typeName is not None else None
        if cast is None:
            return None
        return inner[0], inner[1].with_cast(cast)
    if isinstance(node, ast.ColumnRef):
        fields = node.fields or ()
        if not fields or not all(isinstance(f, ast.String) for f in fields):
            return None  # A_Star
        names = [f.sval for f in fields]
        qualifier = names[-2] if len(names) >= 2 else None
        found, relation = scope.resolve(qualifier)
        if not found and qualifier is None:
            relation = None
        return relation, KeyExpr(names[-1])
    if isinstance(node, ast.A_Expr) and node.kind == enums.A_Expr_Kind.AEXPR_OP:
        op = "".join(node_names(node.name))
        if op in _JSON_STEP_OPS:
            base = key_expr(node.lexpr, scope)
            key = const_value(node.rexpr)
            if base is None or key is None:
                return None
            relation, expr = base
            if expr.cast is not None or expr.as_text or expr.style != "arrow":
                return None
            return relation, KeyExpr(expr.column, (*expr.path, key), _JSON_STEP_OPS[op], "arrow")
        if op in _JSON_PATH_OPS:
            base = key_expr(node.lexpr, scope)
            if base is None or base[1].path or base[1].cast:
                return None
            path: tuple[str, ...] | None = None
            if isinstance(node.rexpr, ast.A_ArrayExpr):
                elements = [const_value(e) for e in node.rexpr.elements or ()]
                if elements and all(isinstance(e, str) for e in elements):
                    path = tuple(str(e) for e in elements)
            else:
                literal = const_value(node.rexpr)
                if isinstance(literal, str):
                    path = parse_pg_array_literal(literal)
            if not path:
                return None
            return base[0], KeyExpr(base[1].column, path, _JSON_PATH_OPS[op], "hash")
        return None
    if isinstance(node, ast.FuncCall):
        names = node_names(node.funcname)
        if names and names[-1] in JSON_PATH_FUNCS and len(names) <= 2 and node.args:
            base = key_expr(node.args[0], scope)
            keys = [const_value(a) for a in node.args[1:]]
            if base is None or base[1].path or base[1].cast or not keys:
                return None
            if not all(isinstance(k, str) for k in keys):
                return None
            return base[0], KeyExpr(base[1].column, tuple(str(k) for k in keys),
                                    JSON_PATH_FUNCS[names[-1]], "func", None, names[-1])
    return None


def is_value(node: Any) -> bool:
    """A parameter, constant, or expression of those: the non-column side of a predicate."""
    if isinstance(node, ast.ParamRef | ast.A_Const):
        return True
    if isinstance(node, ast.TypeCast):
        return is_value(node.arg)
    if isinstance(node, ast.A_ArrayExpr):
        return all(is_value(e) for e in node.elements or ())
    if isinstance(node, ast.A_Expr) and node.kind == enums.A_Expr_Kind.AEXPR_OP:
        return (node.lexpr is None or is_value(node.lexpr)) and is_value(node.rexpr)
    if isinstance(node, ast.FuncCall):
        return all(is_value(a) for a in node.args or ())
    if isinstance(node, ast.SQLValueFunction):
        return True
    return isinstance(node, tuple | list) and all(is_value(e) for e in node)


def walk(node: Any) -> Iterator[Any]:
    """Every pglast node below ``node`` (inclusive), depth first."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, tuple | list):
            stack.extend(reversed(current))
        elif isinstance(current, ast.Node):
            yield current
            for name in current:  # the node's attribute names
                value = getattr(current, name)
                if isinstance(value, ast.Node | tuple | list):
                    stack.append(value)
