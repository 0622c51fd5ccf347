"""fraiseql_obs_producers.appdb: the demo application database, on the real PostgreSQL of scripts/stack."""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from fraiseql_obs_producers.appdb import PLANTED_INDEX_SQL, AppDbError, create_demo_app_db
from fraiseql_obs_producers.execute import bind_arguments, configure_connection
from fraiseql_obs_producers.workload import (
    PLANTED_QUERY,
    VIEWS,
    default_workload,
    demo_table_rows,
)

pytestmark = pytest.mark.postgres

ROWS = 20_000
PLANTED_SQL = default_workload(tail=0).by_name(PLANTED_QUERY).sql


def _db_url(admin_url: str, name: str) -> str:
    return urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


@pytest.fixture(scope="module")
def demo_db(pg_admin_url: str) -> Iterator[str]:
    """One demo database of 20k orders for the module (building it takes ~1-2 s)."""
    name = f"fraiseql_appdb_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _db_url(pg_admin_url, name)
    try:
        started = time.monotonic()
        create_demo_app_db(url, rows=ROWS, seed=3)
        print(f"demo database of {ROWS} orders built in {time.monotonic() - started:.2f} s")
        yield url
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def test_tables_sizes_and_indexes(demo_db: str) -> None:
    sizes = demo_table_rows(ROWS)
    assert sizes == {"tv_order": 20_000, "tv_user": 2_500, "tv_product": 1_000,
                     "tv_invoice": 10_000}
    with psycopg.connect(demo_db) as conn:
        for view in VIEWS:
            table = sql.Identifier(view)
            assert conn.execute(sql.SQL("SELECT count(*), min(id), max(id) FROM {}").format(
                table)).fetchone() == (sizes[view], 1, sizes[view])
            columns = conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                (view,)).fetchall()
            assert columns == [("id", "bigint", True), ("data", "jsonb", True)]
            # Only the primary key: no JSONB path is indexed until someone acts on a suggestion.
            indexes = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s",
                                   (view,)).fetchall()
            assert indexes == [(f"CREATE UNIQUE INDEX {view}_pkey ON public.{view} "
                                "USING btree (id)",)]
            # Analyzed, and stored in id (creation) order like an append-only table.
            reltuples, correlation = conn.execute(
                "SELECT c.reltuples, s.correlation FROM pg_class c JOIN pg_stats s "
                "ON s.tablename = c.relname AND s.attname = 'id' WHERE c.relname = %s",
                (view,)).fetchone() or (None, None)
            assert reltuples == sizes[view]
            assert correlation is not None and correlation > 0.99
        # Orders embed their customer, a real user: the planted path and the nested copy agree.
        bad = conn.execute(
            "SELECT count(*) FILTER (WHERE o.data->>'customer_email' "
            "    IS DISTINCT FROM o.data->'customer'->>'email'), "
            "  count(*) FILTER (WHERE u.id IS NULL) "
            "FROM tv_order o LEFT JOIN tv_user u ON u.data->>'email' = o.data->>'customer_email'"
        ).fetchone()
        assert bad == (0, 0)


def _run(conn: psycopg.Connection[Any], query: str, args: tuple[object, ...]) -> int:
    return len(conn.execute(query, bind_arguments(args)).fetchall())


def test_every_workload_pattern_executes(demo_db: str) -> None:
    workload = default_workload()
    rng = random.Random(11)
    rows: dict[str, list[int]] = {}
    with psycopg.connect(demo_db, autocommit=True) as conn:
        configure_connection(conn, statement_timeout_ms=10_000)
        for pattern in workload.patterns:  # 17 core + 120 tail patterns
            runs = 3 if not pattern.query_name[-1].isdigit() else 1
            rows[pattern.query_name] = [_run(conn, pattern.sql, pattern.params(rng))
                                        for _ in range(runs)]
        # Realistic row counts for the core shapes (ids and e-mails are drawn for the full-size
        # database, so lookups are checked with values that exist at this size).
        assert rows["revenueByRegion"] == [5, 5, 5]
        assert rows["orderCountByStatus"] == [6, 6, 6]
        assert rows["recentUsers"] == [50, 50, 50]
        assert rows["overdueInvoices"] == [50, 50, 50]
        assert rows["ordersContaining"] == [20, 20, 20]
        assert all(n in (20, 50, 100) for n in rows["ordersByStatus"])
        assert all(n > 0 for n in rows["productsByCategory"] + rows["ordersByCustomerRegion"]
                   + rows["productsAbovePrice"])
        assert _run(conn, "SELECT data FROM tv_user WHERE data->>'email' = $1",
                    ("user7@example.com",)) == 1
        assert _run(conn, "SELECT data FROM tv_order WHERE id = ANY($1) ORDER BY id",
                    ([1, 2, 3, ROWS + 1],)) == 3
        # Tail patterns on values the data holds (coupon codes and brands use the tail's words).
        assert _run(conn, "SELECT data FROM tv_order WHERE data->>'coupon_code' = $1 LIMIT $2",
                    ("gamma", 20)) == 20
        assert _run(conn, "SELECT data FROM tv_order WHERE data->>'coupon_code' IS NULL LIMIT $1",
                    (20,)) == 20


def _explain(conn: psycopg.Connection[Any], email: str) -> tuple[float, str]:
    """(execution ms, node type under the Limit) of the planted query, measured by EXPLAIN ANALYZE."""
    row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + PLANTED_SQL, (email, 20)).fetchone()
    assert row is not None
    plan = row[0][0]
    return float(plan["Execution Time"]), plan["Plan"]["Plans"][0]["Node Type"]


def test_planted_pattern_is_slow_without_an_index(demo_db: str) -> None:
    with psycopg.connect(demo_db, autocommit=True) as conn:
        per_customer = conn.execute(
            "SELECT avg(n), max(n) FROM (SELECT count(*) AS n FROM tv_order "
            "GROUP BY data->>'customer_email') s").fetchone() or (0, 0)
        assert 7.5 <= float(per_customer[0]) <= 8.5  # 20000 orders over 2500 customers
        assert per_customer[1] < 30
        configure_connection(conn)
        emails = [f"user{n}@example.com" for n in range(1, 2500, 250)]
        before = [_explain(conn, email) for email in emails]
        try:
            conn.execute(PLANTED_INDEX_SQL)
            conn.execute("ANALYZE tv_order")
            after = [_explain(conn, email) for email in emails]
        finally:
            conn.execute("DROP INDEX IF EXISTS tv_order_customer_email_idx")
    assert {node for _, node in before} == {"Seq Scan"}
    assert {node for _, node in after} <= {"Index Scan", "Bitmap Heap Scan"}
    slow = statistics.median(ms for ms, _ in before)
    fast = statistics.median(ms for ms, _ in after)
    print(f"planted pattern at {ROWS} orders: seq scan {slow:.2f} ms, index {fast:.3f} ms "
          f"({slow / fast:.0f}x)")
    assert slow >= 10 * fast


def test_deterministic_idempotent_and_errors(fresh_db_url: str) -> None:
    def digest() -> list[str]:
        with psycopg.connect(fresh_db_url) as conn:
            return [str((conn.execute(sql.SQL(
                "SELECT md5(string_agg(data::text, ',' ORDER BY id)) FROM {}").format(
                    sql.Identifier(view))).fetchone() or ("",))[0]) for view in VIEWS]

    create_demo_app_db(fresh_db_url, rows=800, seed=1)
    first = digest()
    create_demo_app_db(fresh_db_url, rows=800, seed=1)  # drops and rebuilds: same data
    assert digest() == first
    create_demo_app_db(fresh_db_url, rows=800, seed=2)
    assert all(a != b for a, b in zip(digest(), first, strict=True))

    with pytest.raises(AppDbError):
        create_demo_app_db(fresh_db_url, rows=0)
    with pytest.raises(AppDbError) as info:
        create_demo_app_db("postgresql://app:S3cretPW@127.0.0.1:1/app?connect_timeout=2", rows=10)
    assert "S3cretPW" not in str(info.value)
    assert "app:***@" in str(info.value)
