"""The scheduled analyzer against the real stack: stored runs, published suggestions, dated
reports, the Prometheus gauge, retention, least privilege — and ``diff-analysis`` on its reports."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from fraiseql_obs_analyzer.errors import AnalyzerError
from fraiseql_obs_analyzer.metrics import HIGH_PRIORITY
from fraiseql_obs_analyzer.schedule import next_run, run_once
from fraiseql_obs_analyzer.store import store_run
from fraiseql_observability.codec import SUGGESTION, default_codec
from fraiseql_observability.config import KafkaSettings, load_settings
from tests.fix_kafka import consume_all
from tests.fix_procs import Processes, clean_env, cli, free_port, write_config
from tests.test_analyzer_analyze import (
    core_loads,
    demo_table_stats,
    now_minute_us,
    seed_applied_index,
)
from tests.test_analyzer_helpers import MINUTE, seed_metrics
from tests.test_sink import role_url

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]


@pytest.fixture
def scheduler_url(pg_admin_url: str, metrics_db: str) -> Iterator[str]:
    """A login of the scheduler: fraiseql_scheduler, plus the maintainer for retention."""
    user = f"t_sched_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE fraiseql_scheduler, "
                             "fraiseql_maintainer").format(sql.Identifier(user)))
    yield with_user(metrics_db, user)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                     (user,))


def with_user(url: str, user: str) -> str:
    """The same database URL, connecting as ``user`` (the configuration takes URLs only)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def config_for(tmp_path: Path, kafka: KafkaSettings, url: str, *, port: int = 0) -> Path:
    return write_config(tmp_path / "scheduler.toml", kafka, url, extra=f"""
[observability.analysis]
window = "1d"
schedule = "0 2 * * 1"
reports_dir = "{tmp_path / 'reports'}"
metrics_port = {port}
""")


def test_schedule_once_stores_publishes_writes_reports_and_runs_retention(
        tmp_path: Path, kafka_settings: KafkaSettings, metrics_db: str, scheduler_url: str
) -> None:
    end = now_minute_us()
    # An hour: with less, priorities stop at medium (short data) and nothing would be "high".
    seed_metrics(metrics_db, core_loads(), start_us=end - 60 * MINUTE, minutes=60,
                 table_stats=demo_table_stats(end - MINUTE))
    expired = datetime.now(UTC) - timedelta(days=45)
    with psycopg.connect(metrics_db, autocommit=True) as conn:  # a superuser URL
        created = conn.execute("SELECT fraiseql_metrics.ensure_partitions(%s, %s)",
                               (expired, expired + timedelta(days=1))).fetchall()
    assert created
    config = config_for(tmp_path, kafka_settings, scheduler_url)

    result = subprocess.run(cli(config, "schedule", "--once"), capture_output=True, text=True,
                            env=clean_env(), timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    reports = sorted((tmp_path / "reports").iterdir())
    assert [p.suffix for p in reports] == [".json", ".sql", ".txt"]
    assert all(p.name.startswith("analysis-20") for p in reports)
    assert [str(p) for p in reports] == result.stdout.split()
    document = json.loads(reports[0].read_text())
    ids = [s["id"] for s in document["suggestions"]]
    high = sum(1 for s in document["suggestions"] if s["priority"] in ("critical", "high"))
    assert ids and high >= 5
    assert "CREATE INDEX CONCURRENTLY" in reports[1].read_text()

    with psycopg.connect(metrics_db) as conn:
        run = conn.execute("SELECT run_id, suggestion_count, high_priority_count, report, "
                           "validation FROM fraiseql_metrics.analysis_runs").fetchall()
        assert len(run) == 1
        run_id, count, high_count, report, validation = run[0]
        assert (count, high_count, validation) == (len(ids), high, "model")
        assert report == document
        stored = conn.execute("SELECT suggestion_id, rank, is_new FROM "
                              "fraiseql_metrics.suggestions ORDER BY rank").fetchall()
        assert [(r[0], r[1], r[2]) for r in stored] == [(i, n, True)
                                                        for n, i in enumerate(ids, start=1)]
        left = conn.execute("SELECT to_regclass(%s)", (
            f"fraiseql_metrics.rollups_p{expired:%Y%m%d}",)).fetchone()
        assert left == (None,)  # retention dropped the expired day

    messages = consume_all(kafka_settings.bootstrap_servers, kafka_settings.suggestions_topic,
                           expected=len(ids))
    assert sorted(key.decode() for key, *_ in messages if key) == sorted(ids)
    decoded = [default_codec().decode(value, SUGGESTION) for _, value, *_ in messages]
    by_id = {d["suggestion_id"]: d for d in decoded}
    top = document["suggestions"][0]
    assert by_id[top["id"]]["run_id"] == str(run_id)
    assert by_id[top["id"]]["sql"] == top["sql"]
    assert json.loads(by_id[top["id"]]["validation"]) == top["validation"]
    assert by_id[top["id"]]["priority"] == top["priority"]

    # The next run finds the same suggestions: stored again, none new, nothing published.
    settings = load_settings(config, environ={})
    again = run_once(settings)
    assert again.ok, again.errors
    assert again.published == 0 and again.run_id is not None and again.run_id != str(run_id)
    assert HIGH_PRIORITY._value.get() == high  # the gauge the reference alert fires on
    with psycopg.connect(metrics_db) as conn:
        flags = conn.execute("SELECT bool_or(is_new) FROM fraiseql_metrics.suggestions "
                             "WHERE run_id = %s", (again.run_id,)).fetchone()
        assert flags == (False,)

    # diff-analysis on the two dated reports.
    second = next(p for p in again.reports if p.suffix == ".json")
    diff = subprocess.run(cli(config, "diff-analysis", str(reports[0]), str(second), "--format",
                              "json"), capture_output=True, text=True, env=clean_env(),
                          check=True)
    changes = json.loads(diff.stdout)
    assert changes["appeared"] == [] and changes["disappeared"] == []
    assert changes["unchanged"] + len(changes["changed"]) == len(ids)


def test_least_privilege(metrics_db: str, pg_admin_url: str, scheduler_url: str,
                         tmp_path: Path, kafka_settings: KafkaSettings) -> None:
    end = now_minute_us()
    seed_metrics(metrics_db, core_loads()[:3], start_us=end - 10 * MINUTE, minutes=10)
    settings = load_settings(config_for(tmp_path, kafka_settings, scheduler_url), environ={})
    result = run_once(settings, retention=False)
    assert result.ok and result.run_id
    with role_url(pg_admin_url, metrics_db, "fraiseql_analyst") as analyst:
        # The analyst reads the runs but cannot write one.
        with psycopg.connect(analyst) as conn:
            assert conn.execute("SELECT count(*) FROM fraiseql_metrics.analysis_runs"
                                ).fetchone() == (1,)
        with pytest.raises(AnalyzerError, match="permission denied"):
            store_run(analyst, result.analysis)
    with role_url(pg_admin_url, metrics_db, "fraiseql_scheduler") as scheduler_only:
        with psycopg.connect(scheduler_only) as conn, \
                pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM fraiseql_metrics.analysis_runs")
        # Without the maintainer role the run is stored but retention is refused, and said so.
        expired = datetime.now(UTC) - timedelta(days=45)
        with psycopg.connect(metrics_db, autocommit=True) as conn:
            conn.execute("SELECT fraiseql_metrics.ensure_partitions(%s, %s)",
                         (expired, expired + timedelta(days=1)))
        user = psycopg.conninfo.conninfo_to_dict(scheduler_only)["user"]
        settings = load_settings(config_for(tmp_path, kafka_settings,
                                            with_user(metrics_db, str(user))), environ={})
        partial = run_once(settings)
        assert partial.run_id is not None
        assert any(e.startswith("retention") for e in partial.errors)


def test_applied_changes_are_recorded_with_their_impact(
        tmp_path: Path, kafka_settings: KafkaSettings, metrics_db: str, scheduler_url: str
) -> None:
    seed_applied_index(metrics_db)
    settings = load_settings(config_for(tmp_path, kafka_settings, scheduler_url), environ={})
    first = run_once(settings, retention=False)
    assert first.ok, first.errors
    second = run_once(settings, retention=False)
    assert second.ok, second.errors
    with psycopg.connect(metrics_db) as conn:
        rows = conn.execute(
            "SELECT object_name, kind, suggestion_id, first_detected_run, impact "
            "FROM fraiseql_metrics.applied_changes").fetchall()
    [(name, kind, suggestion_id, detected_by, impact)] = rows
    assert (name, kind) == ("tv_order_customer_email_idx", "index")
    assert suggestion_id and suggestion_id.startswith("sug-")
    assert str(detected_by) == first.run_id  # the first run that saw it, kept on later runs
    [pattern] = impact
    assert pattern["query_name"] == "ordersByCustomerEmail"
    assert pattern["p95_before_ms"] > 100 and pattern["p95_after_ms"] < 2


def test_long_running_scheduler_serves_metrics_and_stops_cleanly(
        tmp_path: Path, kafka_settings: KafkaSettings, scheduler_url: str,
        processes: Processes) -> None:
    port = free_port()
    config = config_for(tmp_path, kafka_settings, scheduler_url, port=port)
    proc = processes.start("scheduler", cli(config, "schedule"))
    body = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                body = resp.read().decode()
            if "fraiseql_analysis_next_run_timestamp_seconds" in body:
                break
        except OSError:
            pass
        processes.assert_running()
        time.sleep(0.3)
    assert "fraiseql_analysis_suggestions_high_priority 0.0" in body
    next_line = next(line for line in body.splitlines()
                     if line.startswith("fraiseql_analysis_next_run_timestamp_seconds"))
    due = datetime.fromtimestamp(float(next_line.split()[1]), UTC)
    assert due == next_run("0 2 * * 1", datetime.now(UTC))
    proc.terminate()
    assert proc.wait(15) == 0
    assert "next analysis at" in processes.log("scheduler")


def test_next_run_follows_the_cron_schedule_in_utc() -> None:
    sunday = datetime(2025, 1, 5, 23, 0, tzinfo=UTC)
    assert next_run("0 2 * * 1", sunday) == datetime(2025, 1, 6, 2, 0, tzinfo=UTC)
    assert next_run("0 2 * * 1", datetime(2025, 1, 6, 2, 0, tzinfo=UTC)) == datetime(
        2025, 1, 13, 2, 0, tzinfo=UTC)
    assert next_run("*/15 * * * *", datetime(2025, 1, 6, 2, 7, tzinfo=UTC)).minute == 15
