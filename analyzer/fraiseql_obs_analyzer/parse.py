"""What a pattern's SQL reads and how: parsed with pglast (PostgreSQL's own grammar), never regexes.

:func:`parse_query_shape` walks one FraiseQL-generated statement into a
:class:`~fraiseql_obs_analyzer.shape.QueryShape`: the relations it reads (through joins,
subqueries and CTEs), every key it touches and how — filters under AND or OR, sorts and groups
(positional and by alias), aggregates, projections, joins —, its LIMIT, and the functions it
calls. :func:`parse_index_definition` reads an index definition (``pg_get_indexdef`` text from
the table statistics) into an :class:`~fraiseql_obs_analyzer.shape.IndexDefinition` of the same
keys. Which key one expression denotes is :mod:`fraiseql_obs_analyzer.expressions`' business.

Real FraiseQL versions are read as they write SQL. 0.5.x: flat statements, values inlined (then
``$n`` once normalized), ``jsonb_build_object(…)::text`` projections, ``(data ->> 'k')::numeric``
casts. 2.x: a page query (``_fq_page``: WHERE, ORDER BY with an ``id`` tiebreaker, LIMIT, and
``row_number() OVER (ORDER BY …)``) inside pass-through wrappers (``_fq_doc``, and the outermost
``JSON_OBJECT(… RETURNING json)`` projection restoring the page order): the page's LIMIT is the
statement's (:func:`parse_query_shape`), window ``PARTITION BY``/``ORDER BY`` keys are sorts,
``JSON_ARRAYAGG``/``JSON_OBJECTAGG`` aggregates, and :func:`filter_query` hands the page query
to the validation when a server cannot plan the whole statement.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import pglast
from pglast import ast, enums
from pglast.stream import RawStream

from .errors import UnsupportedSql
from .expressions import Scope, const_value, is_value, key_expr, node_names, walk
from .shape import AGGREGATES, ColumnUse, IndexDefinition, KeyExpr, Limit, QueryShape, Relation, Usage

__all__ = ["filter_query", "parse_index_definition", "parse_query_shape", "without_limit"]

_EQUALITY_OPS: Final = frozenset({"="})
_RANGE_OPS: Final = frozenset({"<", ">", "<=", ">="})
_FLIP: Final = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "=": "="}
_CONTAINMENT_OPS: Final = frozenset({"@>", "<@", "?", "?|", "?&", "@?", "@@"})


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

    def select(self, stmt: ast.SelectStmt, parent: Scope | None) -> Scope:
        if stmt.intoClause is not None or stmt.lockingClause:
            self.read_only = False
        scope = Scope(parent)
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
        for window in stmt.windowClause or ():  # WINDOW w AS (PARTITION BY … ORDER BY …)
            if isinstance(window, ast.WindowDef):
                self.window(window, scope)
        if stmt.whereClause is not None:
            self.predicate(stmt.whereClause, scope, in_or=False)
        for item in stmt.groupClause or ():
            self.has_group_by = True
            expr = self.positional(item, targets)
            found = key_expr(expr, scope)
            if found is not None:
                self.use(found, Usage.GROUP)
        if stmt.havingClause is not None:
            self.expressions(stmt.havingClause, scope, Usage.OTHER)
        for sort in stmt.sortClause or ():
            if not isinstance(sort, ast.SortBy):
                continue
            expr = self.positional(sort.node, targets, stmt.targetList)
            found = key_expr(expr, scope)
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
        position = const_value(node) if isinstance(node, ast.A_Const) else None
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
        for node in walk([stmt.targetList, stmt.whereClause, stmt.havingClause,
                           stmt.sortClause, stmt.groupClause]):
            if isinstance(node, ast.FuncCall):
                names = node_names(node.funcname)
                if names:
                    self.functions.add(".".join(names))
            elif isinstance(node, ast.SubLink):
                self.has_subqueries = True

    def from_item(self, item: Any, scope: Scope) -> None:
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
            for node in walk(item.functions):
                if isinstance(node, ast.FuncCall):
                    self.functions.add(".".join(node_names(node.funcname)))

    # -- expressions -----------------------------------------------------------------------------

    def window(self, window: ast.WindowDef, scope: Scope) -> None:
        """``OVER (PARTITION BY p ORDER BY o)``: the rows are sorted by (p, o) before the window
        runs, as by an ORDER BY — FraiseQL 2.x pages through ``row_number() OVER (ORDER BY …)``."""
        for key in window.partitionClause or ():
            found = key_expr(key, scope)
            if found is not None:
                self.use(found, Usage.SORT)
            else:
                self.expressions(key, scope, Usage.OTHER)
        for sort in window.orderClause or ():
            if not isinstance(sort, ast.SortBy):
                continue
            found = key_expr(sort.node, scope)
            if found is not None:
                self.use(found, Usage.SORT,
                         descending=sort.sortby_dir == enums.SortByDir.SORTBY_DESC)
            else:
                self.expressions(sort.node, scope, Usage.OTHER)

    def target(self, node: Any, scope: Scope) -> None:
        found = key_expr(node, scope)
        if found is not None:
            self.use(found, Usage.PROJECTION)
            return
        if isinstance(node, ast.FuncCall):
            name = node_names(node.funcname)[-1] if node.funcname else ""
            if name in AGGREGATES and node.over is None:
                self.has_aggregates = True
                for arg in node.args or ():
                    self.expressions(arg, scope, Usage.AGGREGATE)
                if node.agg_filter is not None:
                    self.predicate(node.agg_filter, scope, in_or=True)
                return
        self.expressions(node, scope, Usage.PROJECTION)

    def expressions(self, node: Any, scope: Scope, usage: Usage) -> None:
        """Record every maximal key expression inside ``node`` with ``usage``."""
        found = key_expr(node, scope)
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
            name = node_names(node.funcname)[-1] if node.funcname else ""
            if name in AGGREGATES and node.over is None:
                self.has_aggregates = True
                usage = Usage.AGGREGATE
            for arg in node.args or ():
                self.expressions(arg, scope, usage)
            if isinstance(node.over, ast.WindowDef):
                self.window(node.over, scope)
            return
        if isinstance(node, tuple | list):
            for child in node:
                self.expressions(child, scope, usage)
            return
        if isinstance(node, ast.JsonObjectAgg | ast.JsonArrayAgg):  # JSON_ARRAYAGG(…) and kin
            over = node.constructor.over if node.constructor is not None else None
            if over is None:
                self.has_aggregates = True
                usage = Usage.AGGREGATE
        if isinstance(node, ast.Node):
            for name in node:
                value = getattr(node, name)
                if isinstance(value, ast.Node | tuple | list):
                    self.expressions(value, scope, usage)

    def predicate(self, node: Any, scope: Scope, *, in_or: bool) -> None:
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
            found = key_expr(node.arg, scope)
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
        found = key_expr(node, scope)
        if found is not None:  # WHERE (data->>'active')::boolean
            self.use(found, Usage.EQUALITY, operator="is true", in_or=in_or)
            return
        self.expressions(node, scope, Usage.OTHER)

    def comparison(self, node: ast.A_Expr, scope: Scope, *, in_or: bool) -> None:
        kind = node.kind
        op = "".join(node_names(node.name))
        left = key_expr(node.lexpr, scope) if node.lexpr is not None else None
        right = key_expr(node.rexpr, scope) if isinstance(node.rexpr, ast.Node) else None
        if kind in (enums.A_Expr_Kind.AEXPR_IN, enums.A_Expr_Kind.AEXPR_OP_ANY):
            if left is not None and op == "=" and is_value(node.rexpr):
                self.use(left, Usage.EQUALITY, operator="IN" if kind == enums.A_Expr_Kind.AEXPR_IN
                         else "= ANY", in_or=in_or)
                return
        elif kind == enums.A_Expr_Kind.AEXPR_BETWEEN:
            if left is not None and is_value(node.rexpr):
                self.use(left, Usage.RANGE, operator="BETWEEN", in_or=in_or)
                return
        elif kind in (enums.A_Expr_Kind.AEXPR_LIKE, enums.A_Expr_Kind.AEXPR_ILIKE):
            if left is not None and is_value(node.rexpr):
                self.use(left, Usage.PATTERN, operator=op, in_or=in_or)
                return
        elif kind == enums.A_Expr_Kind.AEXPR_OP:
            if left is not None and right is not None and op in _EQUALITY_OPS:
                self.use(left, Usage.JOIN, operator=op, in_or=in_or)
                self.use(right, Usage.JOIN, operator=op, in_or=in_or)
                return
            if left is not None and is_value(node.rexpr):
                self.simple(left, op, in_or)
                return
            if right is not None and node.lexpr is not None and is_value(node.lexpr):
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
        found = key_expr(target.val, scope)
        aggregate = isinstance(target.val, ast.FuncCall) and bool(target.val.funcname) and \
            node_names(target.val.funcname)[-1] in AGGREGATES
        targets.append((target.name, found[1] if found else None, aggregate))
    # A LIMIT inside pass-through wrappers (FraiseQL 2.x's _fq_page) bounds the scan as if it
    # were outside: the wrappers only reshape and reorder the page's rows.
    page = _page(stmt)
    limit = _limit(page.limitCount)
    offset = page.limitOffset is not None and const_value(page.limitOffset) != 0
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
        offset=offset,
        targets=tuple(targets),
        tree=stmt,
    )


def _limit(node: Any) -> Limit:
    if node is None:
        return Limit("none")
    value = const_value(node)
    if isinstance(value, int):
        return Limit("const", value)
    if isinstance(node, ast.A_Const) and node.isnull:
        return Limit("none")  # LIMIT NULL / LIMIT ALL
    return Limit("param")


def _wrapped(stmt: ast.SelectStmt) -> ast.SelectStmt | None:
    """The subquery ``stmt`` only passes through, or None.

    A pass-through wrapper selects from exactly one subquery and neither filters, groups,
    aggregates, deduplicates nor limits: it reshapes the rows (a projection such as FraiseQL
    2.x's ``JSON_OBJECT(…)``, scalar subqueries for nested lists) and may reorder them, or skip
    some with an OFFSET (2.x's ``OFFSET 0`` optimisation fence, ``OFFSET $n`` once normalized).
    The rows it reads are those of the subquery, so the subquery carries the filter.
    """
    if (stmt.op not in (None, enums.SetOperation.SETOP_NONE) or stmt.whereClause is not None
            or stmt.groupClause or stmt.havingClause is not None or stmt.distinctClause
            or stmt.withClause is not None or stmt.valuesLists or stmt.intoClause is not None
            or stmt.lockingClause or stmt.limitCount is not None
            or len(stmt.fromClause or ()) != 1):
        return None
    item = (stmt.fromClause or ())[0]
    if not isinstance(item, ast.RangeSubselect) or item.lateral \
            or not isinstance(item.subquery, ast.SelectStmt):
        return None
    if _aggregates(stmt.targetList):
        return None
    return item.subquery


def _aggregates(node: Any) -> bool:
    """Whether ``node`` aggregates (collapses rows) — a scalar subquery's own aggregates aside."""
    if isinstance(node, ast.SubLink):
        return False  # evaluated per row of the page (a nested list), no row is collapsed
    if isinstance(node, ast.JsonObjectAgg | ast.JsonArrayAgg):
        if node.constructor is None or node.constructor.over is None:
            return True
    elif isinstance(node, ast.FuncCall) and node.over is None and node.funcname \
            and node_names(node.funcname)[-1] in AGGREGATES:
        return True
    if isinstance(node, tuple | list):
        return any(_aggregates(child) for child in node)
    if isinstance(node, ast.Node):
        return any(_aggregates(getattr(node, name)) for name in node
                   if isinstance(getattr(node, name), ast.Node | tuple | list))
    return False


def _page(stmt: ast.SelectStmt) -> ast.SelectStmt:
    """The SELECT whose LIMIT bounds the scan: ``stmt``, or the first one inside its wrappers
    that has a LIMIT (FraiseQL 2.x's ``_fq_page``), or the innermost."""
    page = stmt
    while page.limitCount is None and (inner := _wrapped(page)) is not None:
        page = inner
    return page


def without_limit(tree: ast.SelectStmt) -> ast.SelectStmt:
    """A copy of ``tree`` whose page (see :func:`parse_query_shape`'s limit) has no LIMIT/OFFSET.

    For planning a pattern as if it read every matching row, which it does when its filter
    matches fewer rows than its LIMIT lets through.
    """
    copy = _parse_one(str(RawStream()(tree)))
    assert isinstance(copy, ast.SelectStmt)
    page = _page(copy)
    page.limitCount = None
    page.limitOffset = None
    page.limitOption = enums.LimitOption.LIMIT_OPTION_DEFAULT
    return copy


def filter_query(tree: Any) -> ast.SelectStmt | None:
    """The query inside ``tree``'s pass-through wrappers that reads the tables (None: not a wrapper).

    FraiseQL 2.x filters, sorts and limits in its innermost ``_fq_page`` subquery and only
    reshapes outside it; planning that query alone gives the scan the whole statement would run
    (for a server too old to parse the outer ``JSON_OBJECT(…)``, for instance).
    """
    if not isinstance(tree, ast.SelectStmt):
        return None
    inner = _wrapped(tree)
    if inner is None:
        return None
    while (deeper := _wrapped(inner)) is not None:
        inner = deeper
    return inner


def _dedupe(uses: Iterable[ColumnUse]) -> list[ColumnUse]:
    return list(dict.fromkeys(uses))


def _param_count(stmt: Any) -> int:
    return max((int(n.number or 0) for n in walk(stmt) if isinstance(n, ast.ParamRef)),
               default=0)


def parse_index_definition(definition: str) -> IndexDefinition:
    """An index from its ``CREATE INDEX`` text; raises :class:`UnsupportedSql` otherwise."""
    stmt = _parse_one(definition)
    if not isinstance(stmt, ast.IndexStmt) or stmt.relation is None:
        raise UnsupportedSql("not a CREATE INDEX statement")
    relation = Relation(stmt.relation.schemaname, str(stmt.relation.relname))
    scope = Scope()
    scope.add(str(stmt.relation.relname), relation)
    keys: list[KeyExpr | None] = []
    opclasses: list[str] = []
    for element in stmt.indexParams or ():
        if not isinstance(element, ast.IndexElem):
            keys.append(None)
            continue
        opclasses.append(".".join(node_names(element.opclass)))
        if element.name:
            keys.append(KeyExpr(element.name))
        else:
            found = key_expr(element.expr, scope)
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
