"""``analyze`` against a real metrics database (rollups written by the real sink writer) and, for
the SQL and HypoPG checks, a real application database built by ``fraiseql_obs_producers.appdb``."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from fraiseql_obs_analyzer.analyze import AnalyzeOptions, run_analysis
from fraiseql_obs_analyzer.errors import AnalyzerUnavailable, ValidationUnavailable
from fraiseql_obs_analyzer.priority import priority_for_saving
from fraiseql_obs_analyzer.records import PRIORITIES
from fraiseql_obs_analyzer.report import render_json, render_sql, render_text
from fraiseql_obs_app.cli import main
from fraiseql_obs_producers.appdb import create_demo_app_db
from fraiseql_obs_producers.workload import default_workload
from fraiseql_observability.sketch import QuantileSketch
from fraiseql_observability.timeutil import from_micros, now_micros
from tests.fix_pg import _with_dbname
from tests.fix_procs import clean_env
from tests.test_analyzer_helpers import (
    MINUTE,
    PatternLoad,
    column,
    index,
    rollup_records,
    seed_metrics,
    table_stats_record,
)
from tests.test_sink import role_url

pytestmark = pytest.mark.postgres

MINUTES = 60
PLANTED = "ordersByCustomerEmail"
SPEC_KEYS = ["id", "type", "priority", "table", "json_column", "path", "columns", "new_column",
             "new_type", "reason", "patterns", "impact", "validation", "sql"]


def now_minute_us() -> int:
    return now_micros() // MINUTE * MINUTE


def core_loads(scale: float = 2000.0) -> list[PatternLoad]:
    """The workload model's core patterns with their popularity and latency model."""
    return [PatternLoad(p.query_name, p.sql, per_minute=max(1.0, scale * p.popularity),
                        median_ms=p.median_ms, sigma=p.sigma, rows=p.rows_median)
            for p in default_workload(tail=0).patterns]


def demo_table_stats(taken_at_us: int, *, rows: float = 400_000,
                     extra_indexes: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    def pkey(table: str) -> dict[str, Any]:
        return index(f"{table}_pkey",
                     f"CREATE UNIQUE INDEX {table}_pkey ON public.{table} USING btree (id)",
                     primary=True)

    return [
        table_stats_record("tv_order", rows, taken_at_us, indexes=[pkey("tv_order"),
                                                                   *extra_indexes], columns=[
            column("data->>'status'", n_distinct=6), column("data->>'created_at'", n_distinct=-1),
            column("data->>'customer_email'", n_distinct=rows / 8, width=22),
            column("data->'customer'->>'region'", n_distinct=5),
            column("data->>'region'", n_distinct=5),
            column("data->>'total'", n_distinct=-0.5, width=6, data_type="numeric")]),
        table_stats_record("tv_user", rows / 8, taken_at_us, indexes=[pkey("tv_user")], columns=[
            column("data->>'email'", n_distinct=-1, width=22),
            column("data->>'created_at'", n_distinct=-1)]),
        table_stats_record("tv_product", rows / 20, taken_at_us, indexes=[pkey("tv_product")],
                           columns=[column("data->>'category'", n_distinct=7),
                                    column("data->>'price'", n_distinct=-0.3, width=6)]),
        table_stats_record("tv_invoice", rows / 2, taken_at_us, indexes=[pkey("tv_invoice")],
                           columns=[column("data->>'status'", n_distinct=4),
                                    column("data->>'due_date'", n_distinct=800)]),
    ]


@pytest.fixture
def workload_db(metrics_db: str) -> tuple[str, int]:
    """An hour of the core workload plus fresh table statistics; returns (url, end in µs)."""
    end = now_minute_us()
    seed_metrics(metrics_db, core_loads(), start_us=end - MINUTES * MINUTE, minutes=MINUTES,
                 table_stats=demo_table_stats(end - 5 * MINUTE))
    return metrics_db, end


@contextlib.contextmanager
def app_database(admin_url: str, *, rows: int, hypopg: bool = False) -> Iterator[str]:
    """A demo application database of its own (dropped afterwards)."""
    name = f"fraiseql_app_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _with_dbname(admin_url, name)
    try:
        create_demo_app_db(url, rows=rows, seed=3)
        if hypopg:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS hypopg")
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def cli(*args: str, check: bool = False, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_cli(), *args], capture_output=True, text=True, env=clean_env(),
                          check=check, input=stdin, timeout=120)


def _cli() -> list[str]:
    import sys  # noqa: PLC0415

    return [sys.executable, "-m", "fraiseql_obs_app.cli"]


def test_planted_pattern_is_the_top_suggestion_with_exact_evidence(workload_db: tuple[str, int]
                                                                   ) -> None:
    url, end_us = workload_db
    analysis = run_analysis(url, AnalyzeOptions(window="1d"))
    suggestions = analysis.suggestions
    top = suggestions[0]
    assert (top.type, top.table, top.columns) == ("add_index", "tv_order",
                                                  ("data->>'customer_email'",))
    assert top.priority == "critical" and top.json_column == "data" and top.path == "customer_email"
    assert [p.query_name for p in top.patterns] == [PLANTED]
    # Ranked by time saved per day; priorities by its share of the workload's database time,
    # so they never increase down the ranking.
    saved = [s.time_saved_ms_per_day for s in suggestions if s.type != "drop_index"]
    assert saved == sorted(saved, reverse=True)
    order = [PRIORITIES.index(s.priority) for s in suggestions]
    assert order == sorted(order)
    assert analysis.workload_db_ms_per_day > 0
    for suggestion in suggestions:
        assert suggestion.priority == priority_for_saving(suggestion.time_saved_ms_per_day,
                                                          analysis.workload_db_ms_per_day)
        assert suggestion.validation["method"] == "model"
    # Evidence: weighted queries/day over the hour the data covers, p95 of the merged sketches.
    load = next(load for load in core_loads() if load.query_name == PLANTED)
    assert top.impact.queries_per_day == pytest.approx(load.per_minute * 2 * 60 * 24, rel=1e-6)
    sketch = QuantileSketch()
    for record in rollup_records(core_loads(), end_us - MINUTES * MINUTE, MINUTES):
        if record["query_name"] == PLANTED:
            for key, weight in zip(record["sketch_keys"], record["sketch_weights"], strict=True):
                sketch.buckets[key] = sketch.buckets.get(key, 0.0) + weight
    assert top.impact.current_p95_ms is not None
    assert top.impact.current_p95_ms == pytest.approx(sketch.quantile(0.95), rel=1e-9)
    assert top.impact.projected_p95_ms is not None
    assert top.impact.projected_p95_ms < top.impact.current_p95_ms / 5
    assert top.impact.storage_mb == pytest.approx(400_000 * 22 * 3.5 / 2**20)
    assert analysis.unique_queries == 17
    # The other planted problems are found too, each with the change that fits it.
    kinds = {(s.type, s.table, s.columns) for s in suggestions}
    assert ("add_index", "tv_order", ("data->>'status'", "data->>'created_at'")) in kinds
    assert ("add_index", "tv_product", ("(data->>'price')::numeric",)) in kinds
    assert ("add_index", "tv_user", ("data->>'email'",)) in kinds
    assert ("materialize_view", "tv_order", ("data->>'region'",)) in kinds
    assert ("add_index", "tv_order", ("data",)) in kinds  # GIN for @> containment
    # The view answers revenueByRegion outright: denormalizing its path is redundant.
    assert ("denormalize", "tv_order", ("data->>'region'",)) not in kinds
    # Never a suggestion for what the primary keys already serve.
    served = {p.query_name for s in suggestions for p in s.patterns}
    assert not served & {"user", "order", "product", "invoice", "ordersByIds"}
    text = render_text(analysis)
    assert "ordersByCustomerEmail" in text and "p95" in text and "rows/query" in text


def test_json_document_is_exactly_spec_and_works_with_jq(workload_db: tuple[str, int],
                                                         tmp_path: Path) -> None:
    url, _ = workload_db
    out = cli("analyze", "--database", url, "--window", "1d", "--format", "json", check=True)
    document = json.loads(out.stdout)
    assert list(document) == ["version", "analyzed_at", "database_type", "window", "metrics",
                              "suggestions", "coverage"]  # coverage: added to SPEC's keys
    assert document["coverage"]["short"] is True  # an hour of data in a 1-day window
    assert document["coverage"]["priority_cap"] is None  # but an hour is enough for critical
    assert document["database_type"] == "postgresql"
    assert list(document["window"]) == ["start", "end", "days"] and document["window"]["days"] == 1
    assert list(document["metrics"]) == ["total_executions", "unique_queries",
                                         "avg_execution_time_ms"]
    for suggestion in document["suggestions"]:
        assert list(suggestion) == SPEC_KEYS
        assert list(suggestion["impact"]) == ["queries_per_day", "estimated_speedup",
                                              "current_p95_ms", "projected_p95_ms", "storage_mb"]
        assert suggestion["validation"]["method"] in {"model", "hypopg", "statistics"}
        assert {"fingerprint", "query_name"} <= set(suggestion["patterns"][0])
    high = sum(1 for s in document["suggestions"] if s["priority"] in ("high", "critical"))
    assert high >= 5
    filter_ = '.suggestions | map(select(.priority == "high" or .priority == "critical")) | length'
    if shutil.which("jq"):
        jq = subprocess.run(["jq", filter_], input=out.stdout, capture_output=True, text=True,
                            check=True)
        assert int(jq.stdout) == high
    # --output, --type and --table.
    target = tmp_path / "report.json"
    cli("analyze", "--database", url, "--window", "1d", "--format", "json", "--type",
        "materialize_view", "--type", "denormalize", "--output", str(target), check=True)
    only = json.loads(target.read_text())["suggestions"]
    assert only and {s["type"] for s in only} <= {"materialize_view", "denormalize"}
    tables = json.loads(cli("analyze", "--database", url, "--window", "1d", "--format", "json",
                            "--table", "public.tv_user", check=True).stdout)["suggestions"]
    assert tables and {s["table"] for s in tables} == {"tv_user"}
    none = json.loads(cli("analyze", "--database", url, "--window", "1d", "--format", "json",
                          "--min-frequency", "1e12", check=True).stdout)["suggestions"]
    assert none == []


def run_main(*args: str) -> int:
    """The CLI in-process (argparse usage errors exit through SystemExit)."""
    try:
        return main(["--log-level", "ERROR", *args])
    except SystemExit as exc:
        return int(exc.code or 0)


def test_exit_codes(metrics_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    unreachable = cli("analyze", "--database", "postgresql://u:s3cret@127.0.0.1:1/x")
    assert unreachable.returncode == 1
    assert "s3cret" not in unreachable.stderr and "cannot connect" in unreachable.stderr
    for args in (["--window", "2x"], ["--window", "0h"], ["--min-speedup", "0.5"], ["--min-selectivity", "2"],
                 ["--format", "yaml"], ["--validate-with", "mysql://x"], ["--type", "index"],
                 ["--min-frequency", "-1"]):
        assert run_main("analyze", "--database", metrics_db, *args) == 2, args
    capsys.readouterr()
    assert run_main("analyze", "--database", metrics_db, "--validate-with", metrics_db) == 1
    assert "HypoPG" in capsys.readouterr().err
    assert run_main("analyze", "--database", metrics_db, "--format", "json") == 0
    assert json.loads(capsys.readouterr().out)["suggestions"] == []
    with pytest.raises(AnalyzerUnavailable):
        run_analysis("postgresql://127.0.0.1:1/x", AnalyzeOptions(connect_timeout_secs=2))
    with pytest.raises(ValidationUnavailable):
        run_analysis(metrics_db, AnalyzeOptions(validate_with="postgresql://127.0.0.1:1/x",
                                                connect_timeout_secs=2))


def test_a_workload_without_slow_patterns_has_no_high_priority(metrics_db: str,
                                                               pg_admin_url: str) -> None:
    end = now_minute_us()
    fast = [
        PatternLoad("user", "SELECT data FROM tv_user WHERE id = $1", 3000, 0.6),
        PatternLoad("orders", "SELECT data FROM tv_order WHERE id = ANY($1) ORDER BY id", 900,
                    1.5, rows=10),
        # JSONB filters on a small table: already about as fast as a primary-key lookup.
        PatternLoad("countries", "SELECT data FROM tv_country WHERE data->>'code' = $1", 800,
                    0.9),
        PatternLoad("plans", "SELECT data->>'tier', count(*) FROM tv_plan GROUP BY 1", 50, 1.2),
    ]
    seed_metrics(metrics_db, fast, start_us=end - 30 * MINUTE, minutes=30, table_stats=[
        table_stats_record("tv_user", 50_000, end - MINUTE),
        table_stats_record("tv_order", 400_000, end - MINUTE),
        table_stats_record("tv_country", 250, end - MINUTE,
                           columns=[column("data->>'code'", n_distinct=-1)]),
        table_stats_record("tv_plan", 4, end - MINUTE),
    ])
    with role_url(pg_admin_url, metrics_db, "fraiseql_analyst") as analyst:
        analysis = run_analysis(analyst, AnalyzeOptions(window="1d"))
    assert [s for s in analysis.suggestions if s.priority in ("high", "critical")] == []
    assert analysis.total_executions == pytest.approx((3000 + 900 + 800 + 50) * 2 * 30)
    # The same thresholds the operator would use show nothing at all here.
    assert analysis.suggestions == ()
    assert "No suggestions" in render_text(analysis)


def test_a_composite_index_makes_its_prefix_redundant(metrics_db: str) -> None:
    end = now_minute_us()
    loads = [
        PatternLoad("byStatus", "SELECT data FROM tv_order WHERE data->>'status' = $1 LIMIT $2",
                    300, 120.0, rows=20),
        PatternLoad("recentByStatus", "SELECT data FROM tv_order WHERE data->>'status' = $1 "
                    "ORDER BY data->>'created_at' DESC LIMIT $2", 200, 150.0, rows=20),
    ]
    # Six statuses: an index on status alone leaves recentByStatus sorting 67k rows; the
    # composite serves both patterns, so the single-key index is redundant.
    stats = table_stats_record("tv_order", 400_000, end - MINUTE, columns=[
        column("data->>'status'", n_distinct=6), column("data->>'created_at'", n_distinct=-1)])
    seed_metrics(metrics_db, loads, start_us=end - 20 * MINUTE, minutes=20, table_stats=[stats])
    analysis = run_analysis(metrics_db, AnalyzeOptions(window="1d"))
    [suggestion] = analysis.suggestions
    assert suggestion.columns == ("data->>'status'", "data->>'created_at'")
    assert {p.query_name for p in suggestion.patterns} == {"byStatus", "recentByStatus"}
    assert suggestion.impact.queries_per_day == pytest.approx((300 + 200) * 2 * 1440)


def test_existing_indexes_are_never_suggested(metrics_db: str) -> None:
    end = now_minute_us()
    existing = index("tv_order_email_idx", "CREATE INDEX tv_order_email_idx ON public.tv_order "
                     "USING btree (((data ->> 'customer_email'::text)))", scans=90_000)
    composite = index("tv_order_status_idx", "CREATE INDEX tv_order_status_idx ON public.tv_order"
                      " USING btree (((data ->> 'status'::text)), ((data ->> 'created_at'::text)))",
                      scans=50_000)
    loads = [load for load in core_loads() if load.query_name in (PLANTED, "ordersByStatus")]
    seed_metrics(metrics_db, loads, start_us=end - 20 * MINUTE, minutes=20,
                 table_stats=demo_table_stats(end - MINUTE,
                                              extra_indexes=[existing, composite])[:1])
    analysis = run_analysis(metrics_db, AnalyzeOptions(window="1d"))
    assert analysis.suggestions == ()


def test_unused_indexes_are_suggested_for_dropping(metrics_db: str) -> None:
    end = now_minute_us()
    loads = [load for load in core_loads() if load.query_name in ("order", "ordersByStatus")]
    seed_metrics(metrics_db, loads, start_us=end - 20 * MINUTE, minutes=20)

    def indexes(scans: dict[str, int], *, with_new: bool) -> list[dict[str, Any]]:
        defs = {
            "tv_order_pkey": "CREATE UNIQUE INDEX tv_order_pkey ON public.tv_order USING btree (id)",
            "old_idx": "CREATE INDEX old_idx ON public.tv_order USING btree (((data ->> "
                       "'coupon_code'::text)))",
            "busy_idx": "CREATE INDEX busy_idx ON public.tv_order USING btree (((data ->> "
                        "'channel'::text)))",
            "uniq_idx": "CREATE UNIQUE INDEX uniq_idx ON public.tv_order USING btree (((data ->> "
                        "'ref'::text)))",
            "status_idx": "CREATE INDEX status_idx ON public.tv_order USING btree (((data ->> "
                          "'status'::text)))",
        }
        if with_new:
            defs["new_idx"] = ("CREATE INDEX new_idx ON public.tv_order USING btree (((data ->> "
                               "'currency'::text)))")
        return [index(name, definition, scans=scans.get(name, 0), size_bytes=5 * 2**20,
                      primary=name.endswith("pkey"), unique=name.startswith("uniq"))
                for name, definition in defs.items()]

    week_ago = end - 6 * 24 * 60 * MINUTE
    seed_metrics(metrics_db, [], start_us=end, minutes=0, table_stats=[
        table_stats_record("tv_order", 400_000, week_ago, indexes=indexes(
            {"tv_order_pkey": 10, "old_idx": 7, "busy_idx": 10, "status_idx": 3},
            with_new=False)),
        table_stats_record("tv_order", 400_000, end - MINUTE, indexes=indexes(
            {"tv_order_pkey": 9000, "old_idx": 8, "busy_idx": 5000, "status_idx": 3},
            with_new=True)),
        # A table no pattern reads: its unused index still counts.
        table_stats_record("tv_audit", 1000, end - MINUTE, indexes=[index(
            "audit_idx", "CREATE INDEX audit_idx ON public.tv_audit USING btree (at)", scans=0)]),
    ])
    analysis = run_analysis(metrics_db, AnalyzeOptions(window="7d"))
    drops = {s.columns: s for s in analysis.suggestions if s.type == "drop_index"}
    # old_idx: 1 scan in 6 days; audit_idx: never scanned (one snapshot). Not: the primary key,
    # the unique index, the busy one, the one created meanwhile, the one a pattern can use.
    assert set(drops) == {("data->>'coupon_code'",), ("at",)}
    old = drops[("data->>'coupon_code'",)]
    assert old.priority == "low" and old.impact.storage_mb == pytest.approx(-5.0)
    assert old.validation == {"method": "statistics", "scans": 8, "size_bytes": 5 * 2**20}
    assert "DROP INDEX CONCURRENTLY IF EXISTS \"public\".\"old_idx\";" in old.sql
    assert "-- CREATE INDEX CONCURRENTLY IF NOT EXISTS old_idx ON public.tv_order" in old.sql
    assert analysis.suggestions[-1].type == "drop_index"  # after every suggestion that saves time


def seed_applied_index(metrics_db: str) -> int:
    """The planted pattern slow for 30 minutes, then its index appears and it is fast for 30.

    Returns when (µs) the index was created.
    """
    end = now_minute_us()
    applied_at = end - 30 * MINUTE
    slow = next(load for load in core_loads() if load.query_name == PLANTED)
    fast = PatternLoad(slow.query_name, slow.sql, slow.per_minute, median_ms=1.0, sigma=0.2,
                       rows=slow.rows)
    seed_metrics(metrics_db, [slow], start_us=end - 60 * MINUTE, minutes=30)
    seed_metrics(metrics_db, [fast], start_us=applied_at, minutes=30, seed=2)
    before_stats = demo_table_stats(end - 55 * MINUTE)[:1]
    # What the suggestion said to create, as pg_get_indexdef prints it after `CREATE INDEX`.
    created = index("tv_order_customer_email_idx", "CREATE INDEX tv_order_customer_email_idx ON "
                    "public.tv_order USING btree (((data ->> 'customer_email'::text)))", scans=400)
    after_stats = demo_table_stats(applied_at + MINUTE, extra_indexes=[created])[:1]
    seed_metrics(metrics_db, [], start_us=end, minutes=0, table_stats=before_stats + after_stats)
    return applied_at


def test_applied_index_is_tracked_with_p95_before_and_after(metrics_db: str) -> None:
    applied_at = seed_applied_index(metrics_db)
    suggested = run_analysis(metrics_db, AnalyzeOptions(window="1h", end=from_micros(applied_at)))
    suggestion_id = suggested.suggestions[0].id
    assert suggested.suggestions[0].columns == ("data->>'customer_email'",)

    analysis = run_analysis(metrics_db, AnalyzeOptions(window="1h"))
    [change] = analysis.applied
    assert (change.kind, change.name, change.table) == ("index", "tv_order_customer_email_idx",
                                                        "tv_order")
    assert change.suggestion_id == suggestion_id
    assert change.applied_between[1] == from_micros(applied_at + MINUTE)
    [pattern] = change.patterns
    assert pattern.query_name == PLANTED
    assert pattern.p95_before_ms is not None and pattern.p95_before_ms > 100
    assert pattern.p95_after_ms is not None and pattern.p95_after_ms < 2
    document = json.loads(render_json(analysis))
    assert document["applied_changes"][0]["patterns"][0]["speedup"] > 50
    assert "Applied since the window began" in render_text(analysis)
    # It is no longer suggested: the index exists now.
    assert all(s.columns != ("data->>'customer_email'",) for s in analysis.suggestions)


def test_generated_sql_runs_on_the_application_database(workload_db: tuple[str, int],
                                                        pg_admin_url: str) -> None:
    if shutil.which("psql") is None:
        pytest.fail("psql is needed to prove the SQL runs as operators run it")
    url, _ = workload_db
    analysis = run_analysis(url, AnalyzeOptions(window="1d", min_speedup=1.0))
    script = render_sql(analysis)
    assert script.count("CREATE INDEX CONCURRENTLY") >= 5
    with app_database(pg_admin_url, rows=4000) as app:
        result = subprocess.run(["psql", app, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                                input=script, capture_output=True, text=True, timeout=300,
                                check=False)
        assert result.returncode == 0, result.stderr
        with psycopg.connect(app) as conn:
            indexes = {r[0] for r in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'").fetchall()}
            assert any("customer_email" in d for d in indexes)
            views = conn.execute("SELECT count(*) FROM pg_matviews").fetchone()
            assert views is not None and views[0] >= 1
            denormalized = [s for s in analysis.suggestions if s.type == "denormalize"]
            for suggestion in denormalized:
                table = sql.Identifier(suggestion.table)
                name = sql.Identifier(suggestion.new_column or "")
                filled = conn.execute(sql.SQL(
                    "SELECT count(*), count({}) FROM {}").format(name, table)).fetchone()
                assert filled is not None and filled[0] == filled[1] > 0
            # Running the whole script again changes nothing and fails nowhere.
        again = subprocess.run(["psql", app, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                               input=script, capture_output=True, text=True, timeout=300,
                               check=False)
        assert again.returncode == 0, again.stderr


def test_hypopg_validation_reports_planner_costs(metrics_db: str, pg_admin_url: str) -> None:
    end = now_minute_us()
    wanted = {PLANTED, "ordersByStatus", "user", "order", "revenueByRegion"}
    loads = [load for load in core_loads() if load.query_name in wanted]
    seed_metrics(metrics_db, loads, start_us=end - 20 * MINUTE, minutes=20,
                 table_stats=demo_table_stats(end - MINUTE, rows=20_000))
    with app_database(pg_admin_url, rows=20_000, hypopg=True) as app:
        analysis = run_analysis(metrics_db, AnalyzeOptions(window="1d", validate_with=app))
        with psycopg.connect(app) as conn:
            row = conn.execute("SELECT count(*) FROM hypopg_list_indexes").fetchone()
            assert row is not None and row[0] == 0  # nothing left behind (another session)
            indexes = conn.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'"
                                   ).fetchone()
            assert indexes is not None and indexes[0] == 4  # the primary keys only
    top = analysis.suggestions[0]
    assert top.columns == ("data->>'customer_email'",)
    validation = top.validation
    assert validation["method"] == "hypopg"
    assert validation["corrected_cost_before"] >= validation["cost_before"]
    assert validation["corrected_cost_after"] < validation["cost_after"]
    assert validation["index_size_bytes"] > 0
    assert top.impact.storage_mb == pytest.approx(validation["index_size_bytes"] / 2**20)
    [pattern] = validation["patterns"].values()
    assert pattern["index_used"] is True and pattern["visited_rows"] == pytest.approx(8, rel=0.5)
    assert analysis.validated_with is not None
    mv = [s for s in analysis.suggestions if s.type == "materialize_view"]
    assert mv and mv[0].validation["method"] == "model"
    assert "hypopg_not_applicable" in mv[0].validation
    assert "HypoPG on" in render_text(analysis)


def test_queries_per_day_count_only_the_days_with_data(metrics_db: str) -> None:
    end = now_minute_us()
    load = PatternLoad("q", "SELECT data FROM tv_order WHERE data->>'status' = $1", 10, 50.0)
    seed_metrics(metrics_db, [load], start_us=end - 120 * MINUTE, minutes=120, every=10)
    analysis = run_analysis(metrics_db, AnalyzeOptions(window="7d", min_frequency=0,
                                                       min_speedup=1))
    # 12 windows of 10 minutes' worth each, spanning 110 minutes + the last window's minute.
    total = 10 * 2 * 120
    assert analysis.total_executions == pytest.approx(total)
    assert analysis.coverage_days == pytest.approx(111 / 1440)
    [suggestion] = analysis.suggestions
    assert suggestion.impact.queries_per_day == pytest.approx(total / (111 / 1440))
    assert math.isclose(analysis.window_days, 7)
    assert (analysis.window_end - analysis.window_start) == timedelta(days=7)
