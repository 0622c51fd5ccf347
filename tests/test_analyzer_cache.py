"""The per-day sketch cache: same answers as merging the rollups, and never stale."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from fraiseql_obs_analyzer.analyze import AnalyzeOptions, run_analysis
from fraiseql_obs_analyzer.cache import refresh_sketch_cache, split_window
from fraiseql_obs_analyzer.errors import AnalyzerError
from fraiseql_obs_analyzer.evidence import Sketch, load_sketches
from fraiseql_obs_analyzer.report import analysis_document
from fraiseql_observability.timeutil import now_micros, to_micros
from tests.test_analyzer_analyze import core_loads, demo_table_stats
from tests.test_analyzer_helpers import MINUTE, PatternLoad, rollup_records, seed_metrics
from tests.test_sink import role_url

pytestmark = pytest.mark.postgres

DAYS = 3


def same_sketches(a: dict[str, Sketch], b: dict[str, Sketch]) -> bool:
    """Identical buckets; weights equal up to the order floating-point sums were taken in."""
    return a.keys() == b.keys() and all(
        a[k].alpha == b[k].alpha and a[k].keys == b[k].keys
        and a[k].weights == pytest.approx(b[k].weights, rel=1e-12) for k in a)


def comparable(document: dict[str, object]) -> str:
    return json.dumps({k: v for k, v in document.items() if k != "analyzed_at"}, sort_keys=True)


def test_cached_days_give_the_same_analysis_and_follow_changes(metrics_db: str,
                                                               pg_admin_url: str) -> None:
    now = datetime.now(UTC)
    end = to_micros(now) // MINUTE * MINUTE
    loads = [load for load in core_loads() if load.query_name in (
        "ordersByCustomerEmail", "ordersByStatus", "user", "revenueByRegion")]
    seed_metrics(metrics_db, loads, start_us=end - DAYS * 1440 * MINUTE, minutes=DAYS * 1440,
                 every=30, table_stats=demo_table_stats(end - MINUTE))
    options = AnalyzeOptions(window="7d", end=now)
    with role_url(pg_admin_url, metrics_db, "fraiseql_analyst") as analyst:
        cold = analysis_document(run_analysis(analyst, options))
    refreshed = refresh_sketch_cache(metrics_db, retention_days=30, now=now)
    today = now.date()
    assert set(refreshed.built) >= {today - timedelta(days=d) for d in (1, 2)}
    with role_url(pg_admin_url, metrics_db, "fraiseql_analyst") as analyst:
        with psycopg.connect(analyst) as conn:
            days, ranges = split_window(conn, now - timedelta(days=7), now)
            assert today - timedelta(days=1) in days
            # The cached days and the ranges still merged from rollups tile the window.
            assert ranges[-1][1] == now and ranges[0][0] == now - timedelta(days=7)
        warm = analysis_document(run_analysis(analyst, options))
    assert comparable(warm) == comparable(cold)
    assert refresh_sketch_cache(metrics_db, retention_days=30, now=now).built == ()

    # A late rollup for yesterday (the sink refreshes that hour's cell): the day is stale, the
    # analysis reads it from the rollups again, and the next refresh rebuilds only that day.
    yesterday_noon = to_micros(datetime.combine(today - timedelta(days=1), datetime.min.time(),
                                                UTC)) + 12 * 60 * MINUTE
    planted = next(x for x in loads if x.query_name == "ordersByCustomerEmail")
    late = PatternLoad(planted.query_name, planted.sql, per_minute=50_000, median_ms=900.0,
                       regions=("ap-south-1",))
    seed_metrics(metrics_db, [late], start_us=yesterday_noon + 7 * MINUTE, minutes=1)
    with psycopg.connect(metrics_db) as conn:
        days, _ = split_window(conn, now - timedelta(days=7), now)
        assert today - timedelta(days=1) not in days
        fingerprint = late.fingerprint
        fresh = load_sketches(conn, now - timedelta(days=7), now, [fingerprint])
        truth = load_sketches(conn, now - timedelta(days=7), now, [fingerprint], use_cache=False)
    assert same_sketches(fresh, truth)
    assert sum(fresh[fingerprint].weights) == pytest.approx(
        sum(r["count"] for r in rollup_records(loads, end - DAYS * 1440 * MINUTE, DAYS * 1440,
                                               every=30)
            if r["fingerprint"] == fingerprint) + 50_000)
    rebuilt = refresh_sketch_cache(metrics_db, retention_days=30, now=now)
    assert rebuilt.built == (today - timedelta(days=1),)
    with psycopg.connect(metrics_db) as conn:
        assert same_sketches(load_sketches(conn, now - timedelta(days=7), now, [fingerprint]),
                             truth)
    # Days past retention leave the cache.
    later = refresh_sketch_cache(metrics_db, retention_days=1, now=now)
    assert later.removed >= 1
    with psycopg.connect(metrics_db) as conn:
        kept = conn.execute("SELECT min(day) FROM fraiseql_metrics.analysis_cached_days"
                            ).fetchone()
        assert kept is not None and isinstance(kept[0], date)
        assert kept[0] >= today - timedelta(days=1)


def test_analysts_cannot_write_the_cache(metrics_db: str, pg_admin_url: str) -> None:
    seed_metrics(metrics_db, core_loads()[:1], start_us=(now_micros() - 2 * 1440 * MINUTE)
                 // MINUTE * MINUTE, minutes=10)
    with role_url(pg_admin_url, metrics_db, "fraiseql_analyst") as analyst, \
            pytest.raises(AnalyzerError, match="permission denied"):
        refresh_sketch_cache(analyst, retention_days=30)
