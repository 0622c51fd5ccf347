"""The shape of a statement, as the analyzer models it: what it reads, which keys, how used.

A :class:`QueryShape` is what one FraiseQL-generated statement reads: its relations
(:class:`Relation`), every plain column and JSONB path expression it touches and how
(:class:`ColumnUse`: a :class:`KeyExpr` and its :class:`Usage` — equality filter, range filter,
sort, group, aggregate, projection, join, containment, pattern match), its :class:`Limit`, and
the functions it calls. An :class:`IndexDefinition` is an existing index in the same terms, so
candidates and existing indexes are compared as the same :class:`KeyExpr` values. The values are
built by :mod:`fraiseql_obs_analyzer.parse` (pglast); this module only holds and renders them.

A :class:`KeyExpr` is exact about the spelling that matters to the planner: an expression index is
only used by a query whose expression is the same after parse analysis, so ``data->'a'->>'b'``,
``data#>>'{a,b}'`` and ``jsonb_extract_path_text(data, 'a', 'b')`` are three different keys
(same path, different ``style``). Casts are kept (``(data->>'price')::numeric``) with their type
name canonicalized; only the types in :data:`CAST_TYPES` are accepted, so a key can always be
rendered back to SQL from constants and quoted names alone (:meth:`KeyExpr.composable`), and
shown to people in FraiseQL's own spelling (:meth:`KeyExpr.display`, the JSONB-path syntax of
:mod:`fraiseql_observability.jsonpath`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from psycopg import sql

from fraiseql_observability.jsonpath import path_expression, quote_literal

from .errors import UnsupportedSql

__all__ = [
    "AGGREGATES",
    "CAST_TYPES",
    "JSON_PATH_FUNCS",
    "NON_IMMUTABLE_CASTS",
    "ColumnUse",
    "IndexDefinition",
    "KeyExpr",
    "Limit",
    "QueryShape",
    "Relation",
    "Usage",
    "describe_keys",
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
    "date": "date", "time": "time", "timetz": "timetz",  # FraiseQL 2.x casts Time fields
    "timestamp": "timestamp", "timestamptz": "timestamptz",
    "uuid": "uuid",
    "jsonb": "jsonb",
}
# Casts of text whose result depends on session settings (DateStyle, TimeZone): PostgreSQL
# refuses them in an index expression ("functions in index expression must be marked IMMUTABLE").
NON_IMMUTABLE_CASTS: Final = frozenset({"date", "time", "timetz", "timestamp", "timestamptz"})
AGGREGATES: Final = frozenset({
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "array_agg",
    "string_agg", "jsonb_agg", "json_agg", "jsonb_object_agg", "stddev", "variance",
    "percentile_cont", "percentile_disc",
})
# The functions that extract a JSON path (name -> result is text).
JSON_PATH_FUNCS: Final = {
    "jsonb_extract_path": False, "jsonb_extract_path_text": True,
    "json_extract_path": False, "json_extract_path_text": True,
}


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
                if name not in JSON_PATH_FUNCS:
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
        keys = [e for e in self.path if isinstance(e, str)]
        if not self.path:
            text = column
        elif self.style == "hash":
            array = "{" + ",".join(_array_element(e) if not _plain_key(e) else str(e)
                                   for e in self.path) + "}"
            text = f"{column}{'#>>' if self.as_text else '#>'}{quote_literal(array)}"
        elif self.style == "func":
            args = ", ".join(quote_literal(str(e)) for e in self.path)
            text = f"{self.func or 'jsonb_extract_path'}({column}, {args})"
        elif self.as_text and len(keys) == len(self.path):
            # FraiseQL's text extraction, spelled by the core: the text table statistics carry.
            text = path_expression(self.column, keys)
        else:  # a JSON-valued path, or one with array positions
            steps = []
            for i, element in enumerate(self.path):
                op = "->>" if i == len(self.path) - 1 and self.as_text else "->"
                value = str(element) if isinstance(element, int) else quote_literal(element)
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


def describe_keys(keys: Sequence[KeyExpr]) -> str:
    """Keys for people to read, in FraiseQL's spelling: ``data->>'status', data->>'created_at'``."""
    return ", ".join(k.display() for k in keys)
