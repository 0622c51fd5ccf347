"""What a pattern's SQL reads and how: parsed with pglast (PostgreSQL's own grammar), never regexes.

:func:`parse_query_shape` turns one FraiseQL-generated statement into a :class:`QueryShape`: the
relations it reads, every plain column and JSONB path expression it touches and *how* — equality
filter, range filter, sort, group, aggregate, projection, join, containment, pattern match —, its
LIMIT, and the functions it calls. :func:`parse_index_definition` does the same for an index
definition (``pg_get_indexdef`` text from the table statistics), so candidates and existing
indexes are compared as the same :class:`KeyExpr` values.

A :class:`KeyExpr` is exact about the spelling that matters to the planner: an expression index is
only used by a query whose expression is the same after parse analysis, so ``data->'a'->>'b'``,
``data#>>'{a,b}'`` and ``jsonb_extract_path_text(data, 'a', 'b')`` are three different keys
(same path, different ``style``). Casts are kept (``(data->>'price')::numeric``) with their type
name canonicalized; only the types in :data:`CAST_TYPES` are accepted, so a key can always be
rendered back to SQL from constants and quoted names alone.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pglast
from pglast import ast, enums
from psycopg import sql

from .errors import UnsupportedSql

__all__ = [
    "AGGREGATES",
    "CAST_TYPES",
    "NON_IMMUTABLE_CASTS",
    "ColumnUse",
    "IndexDefinition",
    "KeyExpr",
    "Limit",
    "QueryShape",
    "Relation",
    "Usage",
    "parse_index_definition",
    "parse_pg_array_literal",
    "parse_query_shape",
]

# Canonical name of every cast type a key may carry: pglast spells built-in types as
# ("pg_catalog", "int4") and user-written ones as ("int4",) or ("integer",).
CAST_TYPES: Final[dict[str, str]] = {
    "text": "text", "varchar": "text", "bpchar": "text",
    "int2": "smallint", "smallint": "smallint",
    "int4": "integer", "int": "integer", "integer": "integer",
    "int8": "bigint", "bigint": "bigint",
    "float4": "real", "real": "real",
    "float8": "double precision", "float": "double precision",
    "numeric": "numeric", "decimal": "numeric",
    "bool": "boolean", "boolean": "boolean",
    "date": "date",
    "timestamp": "timestamp", "timestamptz": "timestamptz",
    "uuid": "uuid",
    "jsonb": "jsonb",
}
# Casts of text whose result depends on session settings (DateStyle, TimeZone): PostgreSQL
# refuses them in an index expression ("functions in index expression must be marked IMMUTABLE").
NON_IMMUTABLE_CASTS: Final = frozenset({"date", "timestamp", "timestamptz"})
AGGREGATES: Final = frozenset({
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "array_agg",
    "string_agg", "jsonb_agg", "json_agg", "jsonb_object_agg", "stddev", "variance",
    "percentile_cont", "percentile_disc",
})
_JSON_STEP_OPS: Final = {"->": False, "->>": True}  # op -> result is text
_JSON_PATH_OPS: Final = {"#>": False, "#>>": True}
_JSON_PATH_FUNCS: Final = {
    "jsonb_extract_path": False, "jsonb_extract_path_text": True,
    "json_extract_path": False, "json_extract_path_text": True,
}
_EQUALITY_OPS: Final = frozenset({"="})
_RANGE_OPS: Final = frozenset({"<", ">", "<=", ">="})
_FLIP: Final = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "=": "="}
_CONTAINMENT_OPS: Final = frozenset({"@>", "<@", "?", "?|", "?&", "@?", "@@"})


class Usage(enum.StrEnum):
    """How a statement uses an expression (a column or a JSONB path)."""

    EQUALITY = "equality"  # = $1, IN (...), = ANY($1), IS NULL
    RANGE = "range"  # <, >, <=, >=, BETWEEN
    SORT = "sort"
    GROUP = "group"
    AGGREGATE = "aggregate"  # argument of an aggregate
    PROJECTION = "projection"
    JOIN = "join"
    CONTAINMENT = "containment"  # @>, ?, … (GIN territory)
    PATTERN = "pattern"  # LIKE / ILIKE
    OTHER = "other"  # <>, NOT, functions of the expression: no btree index helps


@dataclass(frozen=True, slots=True, order=True)
class Relation:
    """A table or view read by a statement; ``schema`` None when the SQL does not qualify it."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    def matches(self, schema: str, name: str) -> bool:
        return self.name == name and (self.schema is None or self.schema == schema)


@dataclass(frozen=True, slots=True, order=True)
class KeyExpr:
    """A plain column, or a JSONB path below a column, possibly cast: something an index can hold.

    ``path`` elements are object keys (str) or array positions (int). ``style`` is how the path is
    spelled: ``arrow`` (``->``/``->>``), ``hash`` (``#>``/``#>>``) or ``func``
    (``jsonb_extract_path[_text]``); ``as_text`` whether the last step yields text.
    """

    column: str
    path: tuple[str | int, ...] = ()
    as_text: bool = False
    style: str = "arrow"
    cast: str | None = None
    func: str | None = None  # e.g. "jsonb_extract_path_text" when style == "func"

    @property
    def is_json_path(self) -> bool:
        return bool(self.path)

    @property
    def indexable(self) -> bool:
        """Whether PostgreSQL accepts the expression in an index (immutable)."""
        return not (self.path and self.cast in NON_IMMUTABLE_CASTS)

    def with_cast(self, cast: str | None) -> KeyExpr:
        return KeyExpr(self.column, self.path, self.as_text, self.style, cast, self.func)

    def uncast(self) -> KeyExpr:
        return self.with_cast(None)

    @property
    def path_text(self) -> str:
        """The path as ``customer.region`` (array positions as ``[0]``)."""
        parts: list[str] = []
        for element in self.path:
            if isinstance(element, int):
                parts.append(f"[{element}]")
            else:
                parts.append(("." if parts else "") + element)
        return "".join(parts)

    def value_type(self) -> str:
        """The SQL type of the expression's value."""
        if self.cast:
            return self.cast
        if self.path:
            return "text" if self.as_text else "jsonb"
        return "unknown"

    def composable(self, qualifier: str | None = None) -> sql.Composable:
        """The expression as safely quoted SQL (names with Identifier, keys with Literal)."""
        column: sql.Composable = (sql.Identifier(qualifier, self.column) if qualifier
                                  else sql.Identifier(self.column))
        expr: sql.Composable = column
        if self.path:
            if self.style == "hash":
                op = "#>>" if self.as_text else "#>"
                array = "{" + ",".join(_array_element(e) for e in self.path) + "}"
                expr = sql.SQL("({} {} {})").format(column, sql.SQL(op), sql.Literal(array))
            elif self.style == "func":
                name = self.func or ("jsonb_extract_path_text" if self.as_text
                                     else "jsonb_extract_path")
                if name not in _JSON_PATH_FUNCS:
                    raise UnsupportedSql(f"unknown JSON path function {name!r}")
                args = sql.SQL(", ").join([column, *(sql.Literal(str(e)) for e in self.path)])
                expr = sql.SQL("{}({})").format(sql.SQL(name), args)
            else:
                parts: list[sql.Composable] = [column]
                for index, element in enumerate(self.path):
                    last = index == len(self.path) - 1
                    op = "->>" if last and self.as_text else "->"
                    parts.append(sql.SQL(" {} {}").format(sql.SQL(op), sql.Literal(element)))
                expr = sql.SQL("({})").format(sql.Composed(parts))
        if self.cast:
            if self.cast not in CAST_TYPES.values():
                raise UnsupportedSql(f"unsupported cast type {self.cast!r}")
            expr = sql.SQL("({}::{})").format(expr, sql.SQL(self.cast))
        return expr

    def render(self) -> str:
        return self.composable().as_string(None)

    def display(self) -> str:
        """FraiseQL's own spelling, e.g. ``data->'customer'->>'region'``, for people to read.

        Not for execution (see :meth:`composable`): identifiers are quoted only when needed.
        """
        column = _display_identifier(self.column)
        if not self.path:
            text = column
        elif self.style == "hash":
            array = "{" + ",".join(_array_element(e) if not _plain_key(e) else str(e)
                                   for e in self.path) + "}"
            text = f"{column}{'#>>' if self.as_text else '#>'}{_display_literal(array)}"
        elif self.style == "func":
            keys = ", ".join(_display_literal(str(e)) for e in self.path)
            text = f"{self.func or 'jsonb_extract_path'}({column}, {keys})"
        else:
            steps = []
            for i, element in enumerate(self.path):
                op = "->>" if i == len(self.path) - 1 and self.as_text else "->"
                value = str(element) if isinstance(element, int) else _display_literal(element)
                steps.append(f"{op}{value}")
            text = column + "".join(steps)
        return f"({text})::{self.cast}" if self.cast else text


def _plain_key(element: str | int) -> bool:
    text = str(element)
    return bool(text) and all(ch.isalnum() or ch == "_" for ch in text) and text.isascii()


def _display_identifier(name: str) -> str:
    if name and name.isascii() and (name[0].isalpha() or name[0] == "_") and name == name.lower() \
            and all(ch.isalnum() or ch == "_" for ch in name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _display_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _array_element(element: str | int) -> str:
    """One element of a PostgreSQL text-array literal, quoted so any key round-trips."""
    text = str(element)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class ColumnUse:
    """One use of ``key`` on ``relation`` (None: could not be resolved, e.g. an ambiguous join)."""

    relation: Relation | None
    key: KeyExpr
    usage: Usage
    operator: str = ""
    descending: bool = False  # for SORT
    in_or: bool = False  # under an OR: a single btree index cannot serve it alone


@dataclass(frozen=True, slots=True)
class Limit:
    kind: str  # "none" | "param" | "const"
    value: int | None = None


@dataclass(frozen=True, slots=True)
class QueryShape:
    """Everything the analyzer needs from one statement."""

    statement: str  # "select" or the statement's node name
    relations: tuple[Relation, ...]
    uses: tuple[ColumnUse, ...]
    limit: Limit
    param_count: int
    functions: frozenset[str]
    has_joins: bool
    has_aggregates: bool
    has_group_by: bool
    has_subqueries: bool
    read_only: bool  # a single plain SELECT: no INTO, no locking clause, no data-modifying CTE
    offset: bool = False
    # The top-level SELECT's output columns: (alias, key it projects or None, is an aggregate).
    targets: tuple[tuple[str | None, KeyExpr | None, bool], ...] = ()
    tree: Any = field(default=None, repr=False, compare=False)

    def uses_of(self, relation: Relation, *usages: Usage) -> list[ColumnUse]:
        return [u for u in self.uses
                if u.relation == relation and (not usages or u.usage in usages)]


@dataclass(frozen=True, slots=True)
class IndexDefinition:
    """An existing index, from its ``CREATE INDEX`` text."""

    name: str
    relation: Relation
    method: str
    keys: tuple[KeyExpr | None, ...]  # None: an expression the analyzer does not model
    unique: bool
    partial: bool
    opclasses: tuple[str, ...] = ()
    tree: Any = field(default=None, repr=False, compare=False)


# --- helpers over pglast nodes --------------------------------------------------------------


def _names(nodes: Sequence[Any] | None) -> list[str]:
    return [str(n.sval) for n in nodes or () if isinstance(n, ast.String)]


def _const(node: Any) -> str | int | None:
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


def _cast_name(type_name: ast.TypeName) -> str | None:
    if type_name.arrayBounds or type_name.typmods or type_name.setof:
        return None
    names = _names(type_name.names)
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


class _Scope:
    """The relations visible in one SELECT: alias or name -> Relation (None: a derived table)."""

    def __init__(self, parent: _Scope | None = None) -> None:
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


def _key_expr(node: Any, scope: _Scope) -> tuple[Relation | None, KeyExpr] | None:
    """The (relation, key) an expression denotes, or None when it is not a modelled key."""
    if isinstance(node, ast.TypeCast):
        inner = _key_expr(node.arg, scope)
        if inner is None or inner[1].cast is not None:
            return None
        cast = _cast_name(node.typeName) if node.typeName is not None else None
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
        op = "".join(_names(node.name))
        if op in _JSON_STEP_OPS:
            base = _key_expr(node.lexpr, scope)
            key = _const(node.rexpr)
            if base is None or key is None:
                return None
            relation, expr = base
            if expr.cast is not None or expr.as_text or expr.style != "arrow":
                return None
            return relation, KeyExpr(expr.column, (*expr.path, key), _JSON_STEP_OPS[op], "arrow")
        if op in _JSON_PATH_OPS:
            base = _key_expr(node.lexpr, scope)
            if base is None or base[1].path or base[1].cast:
                return None
            path: tuple[str, ...] | None = None
            if isinstance(node.rexpr, ast.A_ArrayExpr):
                elements = [_const(e) for e in node.rexpr.elements or ()]
                if elements and all(isinstance(e, str) for e in elements):
                    path = tuple(str(e) for e in elements)
            else:
                literal = _const(node.rexpr)
                if isinstance(literal, str):
                    path = parse_pg_array_literal(literal)
            if not path:
                return None
            return base[0], KeyExpr(base[1].column, path, _JSON_PATH_OPS[op], "hash")
        return None
    if isinstance(node, ast.FuncCall):
        names = _names(node.funcname)
        if names and names[-1] in _JSON_PATH_FUNCS and len(names) <= 2 and node.args:
            base = _key_expr(node.args[0], scope)
            keys = [_const(a) for a in node.args[1:]]
            if base is None or base[1].path or base[1].cast or not keys:
                return None
            if not all(isinstance(k, str) for k in keys):
                return None
            return base[0], KeyExpr(base[1].column, tuple(str(k) for k in keys),
                                    _JSON_PATH_FUNCS[names[-1]], "func", None, names[-1])
    return None


def _is_value(node: Any) -> bool:
    """A parameter, constant, or expression of those: the non-column side of a predicate."""
    if isinstance(node, ast.ParamRef | ast.A_Const):
        return True
    if isinstance(node, ast.TypeCast):
        return _is_value(node.arg)
    if isinstance(node, ast.A_ArrayExpr):
        return all(_is_value(e) for e in node.elements or ())
    if isinstance(node, ast.A_Expr) and node.kind == enums.A_Expr_Kind.AEXPR_OP:
        return (node.lexpr is None or _is_value(node.lexpr)) and _is_value(node.rexpr)
    if isinstance(node, ast.FuncCall):
        return all(_is_value(a) for a in node.args or ())
    if isinstance(node, ast.SQLValueFunction):
        return True
    return isinstance(node, tuple | list) and all(_is_value(e) for e in node)


def _walk(node: Any) -> Iterator[Any]:
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


class _Collector:
    def __init__(self) -> None:
        self.uses: list[ColumnUse] = []
        self.relations: list[Relation] = []
        self.functions: set[str] = set()
        self.has_joins = False
        self.has_aggregates = False
        self.has_group_by = False
        self.has_subqueries = False
        self.read_only = True

    def use(self, found: tuple[Relation | None, KeyExpr], usage: Usage, *, operator: str = "",
            descending: bool = False, in_or: bool = False) -> None:
        relation, key = found
        self.uses.append(ColumnUse(relation, key, usage, operator, descending, in_or))

    # -- statements ----------------------------------------------------------------------------

    def select(self, stmt: ast.SelectStmt, parent: _Scope | None) -> _Scope:
        if stmt.intoClause is not None or stmt.lockingClause:
            self.read_only = False
        scope = _Scope(parent)
        if stmt.withClause is not None:
            for cte in stmt.withClause.ctes or ():
                scope.ctes.add(cte.ctename)
                if isinstance(cte.ctequery, ast.SelectStmt):
                    self.select(cte.ctequery, scope)
                else:
                    self.read_only = False
        if stmt.op is not None and stmt.op != enums.SetOperation.SETOP_NONE:
            if stmt.larg is not None:
                self.select(stmt.larg, scope)
            if stmt.rarg is not None:
                self.select(stmt.rarg, scope)
            return scope
        if stmt.valuesLists:
            return scope
        for item in stmt.fromClause or ():
            self.from_item(item, scope)
        targets: list[Any] = []
        for target in stmt.targetList or ():
            if isinstance(target, ast.ResTarget):
                targets.append(target.val)
                self.target(target.val, scope)
        if stmt.whereClause is not None:
            self.predicate(stmt.whereClause, scope, in_or=False)
        for item in stmt.groupClause or ():
            self.has_group_by = True
            expr = self.positional(item, targets)
            found = _key_expr(expr, scope)
            if found is not None:
                self.use(found, Usage.GROUP)
        if stmt.havingClause is not None:
            self.expressions(stmt.havingClause, scope, Usage.OTHER)
        for sort in stmt.sortClause or ():
            if not isinstance(sort, ast.SortBy):
                continue
            expr = self.positional(sort.node, targets, stmt.targetList)
            found = _key_expr(expr, scope)
            if found is not None:
                self.use(found, Usage.SORT,
                         descending=sort.sortby_dir == enums.SortByDir.SORTBY_DESC)
            else:
                self.expressions(expr, scope, Usage.OTHER)
        self.scan_functions(stmt)
        return scope

    @staticmethod
    def positional(node: Any, targets: list[Any], target_list: Sequence[Any] | None = None) -> Any:
        """``GROUP BY 1`` / ``ORDER BY alias`` -> the target expression they stand for."""
        position = _const(node) if isinstance(node, ast.A_Const) else None
        if isinstance(position, int) and 1 <= position <= len(targets):
            return targets[position - 1]
        if isinstance(node, ast.ColumnRef) and target_list and len(node.fields or ()) == 1:
            first = node.fields[0] if node.fields else None
            name = first.sval if isinstance(first, ast.String) else None
            for target in target_list:
                if isinstance(target, ast.ResTarget) and target.name == name and name:
                    return target.val
        return node

    def scan_functions(self, stmt: ast.SelectStmt) -> None:
        for node in _walk([stmt.targetList, stmt.whereClause, stmt.havingClause,
                           stmt.sortClause, stmt.groupClause]):
            if isinstance(node, ast.FuncCall):
                names = _names(node.funcname)
                if names:
                    self.functions.add(".".join(names))
            elif isinstance(node, ast.SubLink):
                self.has_subqueries = True

    def from_item(self, item: Any, scope: _Scope) -> None:
        if isinstance(item, ast.RangeVar):
            alias = item.alias.aliasname if item.alias is not None else None
            if item.schemaname is None and item.relname in scope.ctes:
                scope.add(alias or item.relname, None)
                return
            relation = Relation(item.schemaname, str(item.relname))
            if relation not in self.relations:
                self.relations.append(relation)
            scope.add(alias or str(item.relname), relation)
        elif isinstance(item, ast.JoinExpr):
            self.has_joins = True
            self.from_item(item.larg, scope)
            self.from_item(item.rarg, scope)
            if item.quals is not None:
                self.predicate(item.quals, scope, in_or=False)
        elif isinstance(item, ast.RangeSubselect):
            self.has_subqueries = True
            if isinstance(item.subquery, ast.SelectStmt):
                self.select(item.subquery, scope)
            if item.alias is not None:
                scope.add(str(item.alias.aliasname), None)
        elif isinstance(item, ast.RangeFunction):
            if item.alias is not None:
                scope.add(str(item.alias.aliasname), None)
            for node in _walk(item.functions):
                if isinstance(node, ast.FuncCall):
                    self.functions.add(".".join(_names(node.funcname)))

    # -- expressions -----------------------------------------------------------------------------

    def target(self, node: Any, scope: _Scope) -> None:
        found = _key_expr(node, scope)
        if found is not None:
            self.use(found, Usage.PROJECTION)
            return
        if isinstance(node, ast.FuncCall):
            name = _names(node.funcname)[-1] if node.funcname else ""
            if name in AGGREGATES and node.over is None:
                self.has_aggregates = True
                for arg in node.args or ():
                    self.expressions(arg, scope, Usage.AGGREGATE)
                if node.agg_filter is not None:
                    self.predicate(node.agg_filter, scope, in_or=True)
                return
        self.expressions(node, scope, Usage.PROJECTION)

    def expressions(self, node: Any, scope: _Scope, usage: Usage) -> None:
        """Record every maximal key expression inside ``node`` with ``usage``."""
        found = _key_expr(node, scope)
        if found is not None:
            self.use(found, usage)
            return
        if isinstance(node, ast.SubLink):
            self.has_subqueries = True
            if isinstance(node.subselect, ast.SelectStmt):
                self.select(node.subselect, scope)
            if node.testexpr is not None:
                self.expressions(node.testexpr, scope, usage)
            return
        if isinstance(node, ast.FuncCall):
            name = _names(node.funcname)[-1] if node.funcname else ""
            if name in AGGREGATES and node.over is None:
                self.has_aggregates = True
                usage = Usage.AGGREGATE
            for arg in node.args or ():
                self.expressions(arg, scope, usage)
            return
        if isinstance(node, tuple | list):
            for child in node:
                self.expressions(child, scope, usage)
            return
        if isinstance(node, ast.Node):
            for name in node:
                value = getattr(node, name)
                if isinstance(value, ast.Node | tuple | list):
                    self.expressions(value, scope, usage)

    def predicate(self, node: Any, scope: _Scope, *, in_or: bool) -> None:
        if isinstance(node, ast.BoolExpr):
            if node.boolop == enums.BoolExprType.AND_EXPR:
                for arg in node.args or ():
                    self.predicate(arg, scope, in_or=in_or)
            elif node.boolop == enums.BoolExprType.OR_EXPR:
                for arg in node.args or ():
                    self.predicate(arg, scope, in_or=True)
            else:
                self.expressions(node.args, scope, Usage.OTHER)
            return
        if isinstance(node, ast.NullTest):
            found = _key_expr(node.arg, scope)
            if found is not None:
                usage = (Usage.EQUALITY if node.nulltesttype == enums.NullTestType.IS_NULL
                         else Usage.OTHER)
                self.use(found, usage, operator="IS NULL" if usage == Usage.EQUALITY
                         else "IS NOT NULL", in_or=in_or)
            else:
                self.expressions(node.arg, scope, Usage.OTHER)
            return
        if isinstance(node, ast.A_Expr):
            self.comparison(node, scope, in_or=in_or)
            return
        found = _key_expr(node, scope)
        if found is not None:  # WHERE (data->>'active')::boolean
            self.use(found, Usage.EQUALITY, operator="is true", in_or=in_or)
            return
        self.expressions(node, scope, Usage.OTHER)

    def comparison(self, node: ast.A_Expr, scope: _Scope, *, in_or: bool) -> None:
        kind = node.kind
        op = "".join(_names(node.name))
        left = _key_expr(node.lexpr, scope) if node.lexpr is not None else None
        right = _key_expr(node.rexpr, scope) if isinstance(node.rexpr, ast.Node) else None
        if kind in (enums.A_Expr_Kind.AEXPR_IN, enums.A_Expr_Kind.AEXPR_OP_ANY):
            if left is not None and op == "=" and _is_value(node.rexpr):
                self.use(left, Usage.EQUALITY, operator="IN" if kind == enums.A_Expr_Kind.AEXPR_IN
                         else "= ANY", in_or=in_or)
                return
        elif kind == enums.A_Expr_Kind.AEXPR_BETWEEN:
            if left is not None and _is_value(node.rexpr):
                self.use(left, Usage.RANGE, operator="BETWEEN", in_or=in_or)
                return
        elif kind in (enums.A_Expr_Kind.AEXPR_LIKE, enums.A_Expr_Kind.AEXPR_ILIKE):
            if left is not None and _is_value(node.rexpr):
                self.use(left, Usage.PATTERN, operator=op, in_or=in_or)
                return
        elif kind == enums.A_Expr_Kind.AEXPR_OP:
            if left is not None and right is not None and op in _EQUALITY_OPS:
                self.use(left, Usage.JOIN, operator=op, in_or=in_or)
                self.use(right, Usage.JOIN, operator=op, in_or=in_or)
                return
            if left is not None and _is_value(node.rexpr):
                self.simple(left, op, in_or)
                return
            if right is not None and node.lexpr is not None and _is_value(node.lexpr):
                self.simple(right, _FLIP.get(op, op), in_or)
                return
        self.expressions([node.lexpr, node.rexpr], scope, Usage.OTHER)

    def simple(self, found: tuple[Relation | None, KeyExpr], op: str, in_or: bool) -> None:
        if op in _EQUALITY_OPS:
            self.use(found, Usage.EQUALITY, operator=op, in_or=in_or)
        elif op in _RANGE_OPS:
            self.use(found, Usage.RANGE, operator=op, in_or=in_or)
        elif op in _CONTAINMENT_OPS:
            self.use(found, Usage.CONTAINMENT, operator=op, in_or=in_or)
        elif op in {"~~", "~~*", "!~~", "!~~*"}:
            self.use(found, Usage.PATTERN, operator=op, in_or=in_or)
        else:
            self.use(found, Usage.OTHER, operator=op, in_or=in_or)


def _parse_one(text: str) -> Any:
    try:
        statements = pglast.parse_sql(text)
    except pglast.parser.ParseError as exc:
        raise UnsupportedSql(f"does not parse: {exc}") from None
    if len(statements) != 1:
        raise UnsupportedSql(f"expected one statement, got {len(statements)}")
    return statements[0].stmt


def parse_query_shape(text: str) -> QueryShape:
    """Parse one statement of a pattern; raises :class:`UnsupportedSql` when it cannot."""
    stmt = _parse_one(text)
    collector = _Collector()
    if not isinstance(stmt, ast.SelectStmt):
        return QueryShape(type(stmt).__name__, (), (), Limit("none"), _param_count(stmt),
                          frozenset(), False, False, False, False, False, tree=stmt)
    scope = collector.select(stmt, None)
    targets: list[tuple[str | None, KeyExpr | None, bool]] = []
    for target in stmt.targetList or ():
        if not isinstance(target, ast.ResTarget):
            continue
        found = _key_expr(target.val, scope)
        aggregate = isinstance(target.val, ast.FuncCall) and bool(target.val.funcname) and \
            _names(target.val.funcname)[-1] in AGGREGATES
        targets.append((target.name, found[1] if found else None, aggregate))
    limit = Limit("none")
    if stmt.limitCount is not None:
        value = _const(stmt.limitCount)
        if isinstance(value, int):
            limit = Limit("const", value)
        elif isinstance(stmt.limitCount, ast.A_Const) and stmt.limitCount.isnull:
            limit = Limit("none")  # LIMIT NULL / LIMIT ALL
        else:
            limit = Limit("param")
    return QueryShape(
        statement="select",
        relations=tuple(collector.relations),
        uses=tuple(_dedupe(collector.uses)),
        limit=limit,
        param_count=_param_count(stmt),
        functions=frozenset(collector.functions),
        has_joins=collector.has_joins,
        has_aggregates=collector.has_aggregates,
        has_group_by=collector.has_group_by,
        has_subqueries=collector.has_subqueries,
        read_only=collector.read_only,
        offset=stmt.limitOffset is not None,
        targets=tuple(targets),
        tree=stmt,
    )


def _dedupe(uses: Iterable[ColumnUse]) -> list[ColumnUse]:
    return list(dict.fromkeys(uses))


def _param_count(stmt: Any) -> int:
    return max((int(n.number or 0) for n in _walk(stmt) if isinstance(n, ast.ParamRef)),
               default=0)


def parse_index_definition(definition: str) -> IndexDefinition:
    """An index from its ``CREATE INDEX`` text; raises :class:`UnsupportedSql` otherwise."""
    stmt = _parse_one(definition)
    if not isinstance(stmt, ast.IndexStmt) or stmt.relation is None:
        raise UnsupportedSql("not a CREATE INDEX statement")
    relation = Relation(stmt.relation.schemaname, str(stmt.relation.relname))
    scope = _Scope()
    scope.add(str(stmt.relation.relname), relation)
    keys: list[KeyExpr | None] = []
    opclasses: list[str] = []
    for element in stmt.indexParams or ():
        if not isinstance(element, ast.IndexElem):
            keys.append(None)
            continue
        opclasses.append(".".join(_names(element.opclass)))
        if element.name:
            keys.append(KeyExpr(element.name))
        else:
            found = _key_expr(element.expr, scope)
            keys.append(found[1] if found is not None else None)
    return IndexDefinition(
        name=stmt.idxname or "",
        relation=relation,
        method=(stmt.accessMethod or "btree").lower(),
        keys=tuple(keys),
        unique=bool(stmt.unique or stmt.primary),
        partial=stmt.whereClause is not None,
        opclasses=tuple(opclasses),
        tree=stmt,
    )
