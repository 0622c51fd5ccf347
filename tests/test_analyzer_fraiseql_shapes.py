"""``analyze`` on the SQL real FraiseQL versions write (``tests/fraiseql_sql.py``), against a real
metrics database and, for ``--validate-with``, a real PostgreSQL 15 + HypoPG application database.

* The core workload with every list and lookup paged the FraiseQL 2.x way gets the suggestions
  the flat workload gets.
* PostgreSQL 15 cannot parse 2.x's ``JSON_OBJECT(… RETURNING json)`` (16+) nor call
  ``pg_column_toast_chunk_id`` (17+): the validation plans the query inside the wrappers that
  carries the filter, says so in ``validation``, and the run never fails.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

from fraiseql_obs_analyzer.analyze import AnalyzeOptions, run_analysis
from fraiseql_obs_analyzer.parse import parse_query_shape
from fraiseql_observability.metricsdb.migrate import migrate
from tests.fix_pg import _with_dbname
from tests.fraiseql_sql import fraiseql2_sql
from tests.test_analyzer_analyze import (
    PLANTED,
    app_database,
    core_loads,
    demo_table_stats,
    now_minute_us,
)
from tests.test_analyzer_helpers import MINUTE, PatternLoad, seed_metrics

pytestmark = pytest.mark.postgres

MINUTES = 30


@contextmanager
def another_metrics_db(admin_url: str) -> Iterator[str]:
    name = f"fraiseql_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _with_dbname(admin_url, name)
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def paged(loads: list[PatternLoad], *, postgres15: bool = False) -> list[PatternLoad]:
    """The loads with every non-aggregate statement as FraiseQL 2.x writes it."""
    return [load if parse_query_shape(load.sql).has_aggregates
            else dataclasses.replace(load, sql=fraiseql2_sql(load.sql, postgres15=postgres15))
            for load in loads]


def test_2x_shaped_workload_gets_the_flat_suggestions(metrics_db: str, pg_admin_url: str) -> None:
    end = now_minute_us()
    stats = demo_table_stats(end - 5 * MINUTE)
    found = {}
    with another_metrics_db(pg_admin_url) as flat_db:
        for name, url, loads in (("flat", flat_db, core_loads()),
                                 ("2.x", metrics_db, paged(core_loads()))):
            seed_metrics(url, loads, start_us=end - MINUTES * MINUTE, minutes=MINUTES,
                         table_stats=stats)
            analysis = run_analysis(url, AnalyzeOptions(window="1d"))
            found[name] = analysis.suggestions
    flat, paged_2x = found["flat"], found["2.x"]
    assert flat and paged_2x
    shown = {name: [(s.type, s.table, s.columns, s.priority) for s in suggestions]
             for name, suggestions in found.items()}
    # The same changes: 2.x's "ORDER BY … id ASC" tiebreaker can only add trailing keys, where the
    # filter leaves enough rows for the order to matter (never for a selective lookup).
    changes = {name: {(s.type, s.table, s.columns[:1]) for s in suggestions}
               for name, suggestions in found.items()}
    assert changes["2.x"] == changes["flat"], shown
    # The headline first, with the flat shape's keys exactly, at the same priority.
    assert (paged_2x[0].type, paged_2x[0].table, paged_2x[0].columns, paged_2x[0].priority) == \
        (flat[0].type, flat[0].table, flat[0].columns, flat[0].priority), shown
    assert [p.query_name for p in paged_2x[0].patterns] == [PLANTED]
    for suggestion in paged_2x:
        same = [s.columns for s in flat if (s.type, s.table) == (suggestion.type, suggestion.table)
                and s.columns[:1] == suggestion.columns[:1]]
        assert suggestion.columns in (*same, *((*c, "id") for c in same)), shown


@pytest.mark.parametrize("postgres15", [False, True], ids=["2.x", "2.x-for-pg15"])
def test_validation_plans_the_inner_query_when_postgres_cannot_parse_2x(
        metrics_db: str, pg_admin_url: str, postgres15: bool) -> None:
    end = now_minute_us()
    wanted = {PLANTED, "ordersByStatus", "user", "order", "revenueByRegion"}
    loads = paged([load for load in core_loads() if load.query_name in wanted],
                  postgres15=postgres15)
    seed_metrics(metrics_db, loads, start_us=end - 20 * MINUTE, minutes=20,
                 table_stats=demo_table_stats(end - MINUTE, rows=20_000))
    with app_database(pg_admin_url, rows=20_000, hypopg=True) as app:
        with psycopg.connect(app) as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
            assert row is not None and int(row[0]) < 160000, "this test needs PostgreSQL < 16"
        analysis = run_analysis(metrics_db, AnalyzeOptions(window="1d", validate_with=app))
    top = analysis.suggestions[0]
    assert top.columns == ("data->>'customer_email'",)
    assert [p.query_name for p in top.patterns] == [PLANTED]
    validation = top.validation
    assert validation["method"] == "hypopg"
    if postgres15:  # jsonb_build_object: the statement itself plans
        assert validation["planned"] == "statement" and "planned_because" not in validation
    else:
        assert validation["planned"] == "inner query"
        assert "syntax error" in validation["planned_because"]
    # ORDER BY id LIMIT $2 for ~8 matching rows: the generic plan would walk the primary key
    # hoping to stop early; the pipeline knows the LIMIT never cuts, so the LIMIT is left out.
    assert "planned without the LIMIT" in validation["planned_without_limit"]
    assert validation["corrected_cost_after"] < validation["cost_after"]
    assert validation["corrected_cost_before"] / validation["corrected_cost_after"] > 20
    [pattern] = validation["patterns"].values()
    assert pattern["index_used"] is True and pattern["planned"] == validation["planned"]
    assert pattern["visited_rows"] == pytest.approx(8, rel=0.5)
    assert all("hypopg_skipped" not in s.validation for s in analysis.suggestions)


def test_validation_falls_back_to_the_model_and_says_why(metrics_db: str,
                                                         pg_admin_url: str) -> None:
    """Neither the statement nor its inner query plans: the model prices it, ``validation`` says
    why, and the run goes on."""
    end = now_minute_us()
    load = next(load for load in core_loads() if load.query_name == PLANTED)
    # PostgreSQL refuses text > integer: the filter's query cannot be planned either.
    refused = dataclasses.replace(load, sql=fraiseql2_sql(
        "SELECT data FROM tv_order WHERE data->>'customer_email' = $1 AND $1 > 5 LIMIT $2"))
    others = [load for load in core_loads() if load.query_name in {"order", "user"}]
    seed_metrics(metrics_db, [refused, *others], start_us=end - 20 * MINUTE, minutes=20,
                 table_stats=demo_table_stats(end - MINUTE, rows=20_000))
    with app_database(pg_admin_url, rows=2_000, hypopg=True) as app:
        analysis = run_analysis(metrics_db, AnalyzeOptions(window="1d", validate_with=app))
    top = analysis.suggestions[0]
    assert top.columns == ("data->>'customer_email'",)
    assert top.validation["method"] == "model"
    reason = top.validation["hypopg_skipped"][PLANTED]
    assert "syntax error" in reason and "its inner query too" in reason
    assert "operator does not exist" in reason
