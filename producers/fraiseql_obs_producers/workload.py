"""A FraiseQL-shaped synthetic workload: which queries run, how often, how fast (for ``loadgen``).

FraiseQL serves GraphQL from views ``tv_<entity>`` with an ``id`` column and a JSONB ``data``
column. The model has four such views and three families of query patterns:

* fast primary-key lookups (``WHERE id = $1``, ``id = ANY($1)``, keyset pages): 1-3 ms;
* *planted* slow JSONB patterns -- filters, sorts and aggregates on ``data->>'...'`` paths, nested
  paths, numeric casts, containment -- 60-420 ms medians: what the analyzer must find. The
  headline one is ``ordersByCustomerEmail``: an equality filter on a selective text path
  (~8 orders per customer among 400k) that a plain expression index speeds up ~260× (NOTES.md);
* a long tail of 120 rarer generated patterns (many paths × operators), 1-50 ms.

Popularity is Zipf-like over the core patterns (rank r gets weight ∝ 1/r) and within the tail,
which shares 6 % of traffic (``ordersByCustomerEmail`` is appended after the original 16 with the
popularity of rank 2, so the earlier patterns keep their positions and relative shares).
Latencies are lognormal with a per-pattern median and spread, scaled by a per-region factor.
Each pattern carries its SQL (``$n`` placeholders, FraiseQL style) *and* an argument generator
whose values exist in the demo application database of :mod:`fraiseql_obs_producers.appdb` (table sizes:
:func:`demo_table_rows`), so the real-execution mode (:mod:`fraiseql_obs_producers.execute`) runs the same
patterns; the synthetic mode only needs the SQL and the latency model.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from fraiseql_observability.jsonpath import path_expression

from .fingerprint import fingerprint_sql

__all__ = [
    "DATA_REGIONS",
    "DEFAULT_REGIONS",
    "DEMO_ROWS",
    "DEMO_TABLE_FRACTION",
    "ERROR_CLASSES",
    "ORDER_STATUSES",
    "PLANTED_PATH",
    "PLANTED_QUERY",
    "PRODUCT_CATEGORIES",
    "TAIL_CAPACITY",
    "TAIL_WORDS",
    "VIEWS",
    "QueryPattern",
    "Workload",
    "default_workload",
    "demo_table_rows",
]

DEFAULT_REGIONS: Final = ("us-east-1", "eu-west-1")
VIEWS: Final = ("tv_order", "tv_user", "tv_product", "tv_invoice")
ERROR_CLASSES: Final = ("QueryCanceled", "SerializationFailure", "DeadlockDetected",
                        "ConnectionTimeout")
# Share of all queries that goes to the generated long tail.
TAIL_SHARE: Final = 0.06

ParamGenerator = Callable[[random.Random], tuple[object, ...]]

_STATUSES: Final = ("pending", "paid", "shipped", "delivered", "cancelled", "refunded")
_REGIONS_IN_DATA: Final = ("north", "south", "east", "west", "central")
_CATEGORIES: Final = ("books", "games", "garden", "kitchen", "music", "outdoor", "toys")
_WORDS: Final = ("alpha", "beta", "gamma", "delta", "omega")
# Public names of the value sets, for the demo database (fraiseql_obs_producers.appdb) that must contain them.
ORDER_STATUSES: Final = _STATUSES
DATA_REGIONS: Final = _REGIONS_IN_DATA
PRODUCT_CATEGORIES: Final = _CATEGORIES
TAIL_WORDS: Final = _WORDS

# The demo application database: tv_order has DEMO_ROWS rows, the other views a fixed fraction
# (8 orders per user, 20 per product, 2 per invoice). Argument generators draw ids and e-mails
# from these sizes, so lookups find rows.
DEMO_ROWS: Final = 400_000
DEMO_TABLE_FRACTION: Final = {"tv_order": 1.0, "tv_user": 1 / 8, "tv_product": 1 / 20,
                              "tv_invoice": 1 / 2}
# The headline planted pattern: equality on a selective text path of the largest view.
PLANTED_QUERY: Final = "ordersByCustomerEmail"
PLANTED_PATH: Final = ("customer_email",)


def demo_table_rows(rows: int = DEMO_ROWS) -> dict[str, int]:
    """Rows per view of a demo database whose tv_order has ``rows`` rows (each view >= 1)."""
    return {view: max(1, int(rows * fraction)) for view, fraction in DEMO_TABLE_FRACTION.items()}


_DEMO_SIZES: Final = demo_table_rows()


@dataclass(frozen=True, slots=True)
class QueryPattern:
    """One SQL shape the API runs, with its traffic and latency model."""

    query_name: str  # GraphQL root field that generates it
    view: str
    sql: str  # with $n placeholders, never values
    kind: str  # by_id | list | filter | sort | aggregate | containment
    median_ms: float  # median execution time in the first region
    sigma: float  # lognormal shape: p95/median = exp(1.645 σ)
    popularity: float  # relative share of queries (normalized by Workload)
    rows_median: float  # typical rows returned
    error_rate: float
    params: ParamGenerator = field(repr=False, compare=False)
    # Paths read from `data`, e.g. ("customer", "region") for data->'customer'->>'region'.
    jsonb_paths: tuple[tuple[str, ...], ...] = ()
    planted: bool = False  # a slow JSONB pattern a good analysis should flag
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", fingerprint_sql(self.sql))

    @property
    def mu(self) -> float:
        """Location of the lognormal (log of the median in ms)."""
        return math.log(self.median_ms)


@dataclass(frozen=True, slots=True)
class Workload:
    """Patterns with normalized popularity, and a fast popularity-weighted pick."""

    patterns: tuple[QueryPattern, ...]
    cumulative: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.patterns:
            raise ValueError("a workload needs at least one pattern")
        fingerprints = [p.fingerprint for p in self.patterns]
        if len(set(fingerprints)) != len(fingerprints):
            raise ValueError("two patterns of the workload share a fingerprint")
        total = math.fsum(p.popularity for p in self.patterns)
        running = list(itertools.accumulate(p.popularity / total for p in self.patterns))
        running[-1] = 1.0
        object.__setattr__(self, "cumulative", tuple(running))

    def share(self, pattern: QueryPattern) -> float:
        """Fraction of all queries that run ``pattern``."""
        index = self.patterns.index(pattern)
        return self.cumulative[index] - (self.cumulative[index - 1] if index else 0.0)

    def pick(self, rng: random.Random) -> QueryPattern:
        return self.patterns[bisect.bisect_left(self.cumulative, rng.random())]

    def by_name(self, query_name: str) -> QueryPattern:
        for pattern in self.patterns:
            if pattern.query_name == query_name:
                return pattern
        raise KeyError(query_name)


def _path_sql(path: Sequence[str]) -> str:
    """``data->'a'->>'b'``: FraiseQL's text extraction of a (nested) JSONB path."""
    return path_expression("data", path)


def _by_id(view: str) -> ParamGenerator:
    upper = _DEMO_SIZES[view]
    return lambda rng: (rng.randrange(1, upper + 1),)


def _user_email(rng: random.Random) -> str:
    return f"user{rng.randrange(1, _DEMO_SIZES['tv_user'] + 1)}@example.com"


def _core_patterns() -> list[QueryPattern]:
    def pick(values: Sequence[str]) -> ParamGenerator:
        return lambda rng: (rng.choice(values), rng.choice((20, 50, 100)))

    # (pattern, Zipf rank): popularity ∝ 1 / rank. Planted patterns sit at ranks frequent enough
    # (thousands of queries per day at 10k q/s) for the analyzer's min_frequency.
    core = [
        QueryPattern("user", "tv_user", "SELECT data FROM tv_user WHERE id = $1",
                     "by_id", 0.9, 0.35, 1, 1, 0.0005, _by_id("tv_user")),
        QueryPattern("order", "tv_order", "SELECT data FROM tv_order WHERE id = $1",
                     "by_id", 1.1, 0.35, 1, 1, 0.0005, _by_id("tv_order")),
        QueryPattern("ordersByStatus", "tv_order",
                     "SELECT data FROM tv_order WHERE data->>'status' = $1 "
                     "ORDER BY data->>'created_at' DESC LIMIT $2",
                     "sort", 180.0, 0.45, 1, 40, 0.004, pick(_STATUSES),
                     (("status",), ("created_at",)), planted=True),
        QueryPattern("product", "tv_product", "SELECT data FROM tv_product WHERE id = $1",
                     "by_id", 0.8, 0.3, 1, 1, 0.0005, _by_id("tv_product")),
        QueryPattern("productsByCategory", "tv_product",
                     "SELECT data FROM tv_product WHERE data->>'category' = $1 LIMIT $2",
                     "filter", 4.0, 0.5, 1, 30, 0.002, pick(_CATEGORIES), (("category",),)),
        QueryPattern("ordersByCustomerRegion", "tv_order",
                     "SELECT data FROM tv_order WHERE data->'customer'->>'region' = $1 LIMIT $2",
                     "filter", 240.0, 0.5, 1, 45, 0.004, pick(_REGIONS_IN_DATA),
                     (("customer", "region"),), planted=True),
        QueryPattern("productsAbovePrice", "tv_product",
                     "SELECT data FROM tv_product WHERE (data->>'price')::numeric > $1 "
                     "ORDER BY (data->>'price')::numeric LIMIT $2",
                     "sort", 130.0, 0.5, 1, 35, 0.004,
                     lambda rng: (round(rng.uniform(5, 500), 2), rng.choice((20, 50))),
                     (("price",),), planted=True),
        QueryPattern("users", "tv_user", "SELECT data FROM tv_user ORDER BY id LIMIT $1 OFFSET $2",
                     "list", 2.5, 0.4, 1, 50, 0.001,
                     lambda rng: (50, 50 * rng.randrange(0, 200))),
        QueryPattern("userByEmail", "tv_user",
                     "SELECT data FROM tv_user WHERE data->>'email' = $1",
                     "filter", 100.0, 0.4, 1, 1, 0.005,
                     lambda rng: (_user_email(rng),),
                     (("email",),), planted=True),
        QueryPattern("invoice", "tv_invoice", "SELECT data FROM tv_invoice WHERE id = $1",
                     "by_id", 1.0, 0.35, 1, 1, 0.0005, _by_id("tv_invoice")),
        QueryPattern("ordersByIds", "tv_order",
                     "SELECT data FROM tv_order WHERE id = ANY($1) ORDER BY id",
                     "by_id", 2.0, 0.4, 1, 10, 0.001,
                     lambda rng: ([rng.randrange(1, _DEMO_SIZES["tv_order"] + 1)
                                   for _ in range(10)],)),
        QueryPattern("ordersContaining", "tv_order",
                     "SELECT data FROM tv_order WHERE data @> $1::jsonb LIMIT $2",
                     "containment", 60.0, 0.6, 1, 20, 0.005,
                     lambda rng: (f'{{"status": "{rng.choice(_STATUSES)}"}}', 20),
                     planted=True),
        QueryPattern("overdueInvoices", "tv_invoice",
                     "SELECT data FROM tv_invoice WHERE data->>'status' = $1 "
                     "AND (data->>'due_date')::date < $2 ORDER BY data->>'due_date' LIMIT $3",
                     "sort", 150.0, 0.45, 1, 25, 0.01,
                     lambda rng: ("open", "2025-01-01", 50),
                     (("status",), ("due_date",)), planted=True),
        QueryPattern("revenueByRegion", "tv_order",
                     "SELECT data->>'region' AS region, count(*) AS orders, "
                     "sum((data->>'total')::numeric) AS revenue FROM tv_order "
                     "GROUP BY data->>'region'",
                     "aggregate", 420.0, 0.35, 1, 5, 0.004, lambda rng: (),
                     (("region",), ("total",)), planted=True),
        QueryPattern("orderCountByStatus", "tv_order",
                     "SELECT data->>'status' AS status, count(*) AS n FROM tv_order "
                     "GROUP BY data->>'status'",
                     "aggregate", 300.0, 0.4, 1, 6, 0.004, lambda rng: (), (("status",),),
                     planted=True),
        QueryPattern("recentUsers", "tv_user",
                     "SELECT data FROM tv_user WHERE (data->>'created_at')::timestamptz >= $1 "
                     "ORDER BY (data->>'created_at')::timestamptz DESC LIMIT $2",
                     "sort", 110.0, 0.5, 1, 50, 0.005,
                     lambda rng: ("2025-01-01T00:00:00Z", 50), (("created_at",),), planted=True),
        # A customer's order history: ~8 of 400k rows match, so a seq scan reads everything for
        # nothing (~184 ms) where an expression index answers in ~0.7 ms (NOTES.md).
        QueryPattern(PLANTED_QUERY, "tv_order",
                     "SELECT data FROM tv_order WHERE data->>'customer_email' = $1 LIMIT $2",
                     "filter", 180.0, 0.4, 1, 8, 0.004,
                     lambda rng: (_user_email(rng), rng.choice((20, 50, 100))),
                     (PLANTED_PATH,), planted=True),
    ]
    share = 1.0 - TAIL_SHARE
    # Zipf rank by position, except the last pattern, appended later: it takes the popularity of
    # rank 2 (a customer's order history is among the most viewed pages) without moving the others.
    ranks = [*range(1, len(core)), 2]
    weights = [1.0 / rank for rank in ranks]
    total = sum(weights)
    return [_with_popularity(p, share * w / total) for p, w in zip(core, weights, strict=True)]


def _with_popularity(pattern: QueryPattern, popularity: float) -> QueryPattern:
    return QueryPattern(pattern.query_name, pattern.view, pattern.sql, pattern.kind,
                        pattern.median_ms, pattern.sigma, popularity, pattern.rows_median,
                        pattern.error_rate, pattern.params, pattern.jsonb_paths, pattern.planted)


_TAIL_PATHS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "tv_order": (("currency",), ("channel",), ("customer", "tier"), ("customer", "country"),
                 ("shipping", "method"), ("shipping", "carrier"), ("coupon_code",), ("priority",)),
    "tv_user": (("country",), ("plan",), ("address", "city"), ("locale",), ("referrer",),
                ("role",)),
    "tv_product": (("brand",), ("color",), ("supplier",), ("dimensions", "unit"),
                   ("stock", "warehouse"), ("tax_class",)),
    "tv_invoice": (("currency",), ("billing", "country"), ("payment_method",),
                   ("status_reason",), ("customer", "segment")),
}

def _word(rng: random.Random) -> str:
    return rng.choice(_WORDS)


# (kind, SQL template, rows_median, argument generator): {v} view, {p} path expression.
_TAIL_SHAPES: Final[tuple[tuple[str, str, int, ParamGenerator], ...]] = (
    ("filter", "SELECT data FROM {v} WHERE {p} = $1 LIMIT $2", 20,
     lambda rng: (_word(rng), 20)),
    ("sort", "SELECT data FROM {v} WHERE {p} <> $1 ORDER BY id LIMIT $2", 20,
     lambda rng: (_word(rng), 20)),
    ("filter", "SELECT data FROM {v} WHERE {p} ILIKE $1 LIMIT $2", 15,
     lambda rng: (f"%{_word(rng)[:3]}%", 20)),
    ("sort", "SELECT data FROM {v} WHERE {p} LIKE $1 ORDER BY {p} LIMIT $2", 25,
     lambda rng: (f"{_word(rng)[:2]}%", 20)),
    ("filter", "SELECT data FROM {v} WHERE {p} IS NULL LIMIT $1", 10, lambda rng: (20,)),
    ("aggregate", "SELECT count(*) AS n FROM {v} WHERE {p} = $1", 1, lambda rng: (_word(rng),)),
    ("aggregate", "SELECT {p} AS key, count(*) AS n FROM {v} GROUP BY {p}", 8, lambda rng: ()),
)
TAIL_CAPACITY: Final = sum(len(paths) for paths in _TAIL_PATHS.values()) * len(_TAIL_SHAPES)


def _tail_patterns(count: int, seed: int) -> list[QueryPattern]:
    rng = random.Random(f"fraiseql-workload-tail-{seed}")  # noqa: S311 - reproducible model
    candidates = [(view, path, shape) for view, paths in _TAIL_PATHS.items() for path in paths
                  for shape in _TAIL_SHAPES]
    rng.shuffle(candidates)
    chosen = candidates[:count]
    weights = [1.0 / (rank ** 1.1) for rank in range(1, len(chosen) + 1)]
    total = sum(weights)
    patterns = []
    for index, ((view, path, (kind, template, rows, params)), weight) in enumerate(
            zip(chosen, weights, strict=True)):
        sql = template.format(v=view, p=_path_sql(path))
        name = f"{view.removeprefix('tv_')}By{''.join(p.title().replace('_', '') for p in path)}"
        patterns.append(QueryPattern(
            f"{name}_{index}", view, sql, kind,
            median_ms=min(80.0, max(1.0, rng.lognormvariate(math.log(6.0), 1.0))),
            sigma=rng.uniform(0.4, 0.8),
            popularity=TAIL_SHARE * weight / total,
            rows_median=float(rows),
            error_rate=0.001,
            params=params,
            jsonb_paths=(path,),
        ))
    return patterns


def default_workload(*, tail: int = 120, seed: int = 0) -> Workload:
    """The standard model: 17 core patterns (10 planted slow JSONB ones) plus ``tail`` rare ones.

    ``tail`` is capped by :data:`TAIL_CAPACITY` (175 distinct generated shapes).
    """
    return Workload(tuple(_core_patterns() + _tail_patterns(tail, seed)))
