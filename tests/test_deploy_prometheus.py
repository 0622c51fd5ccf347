"""The shipped Prometheus rules and Grafana dashboards (deploy/prometheus, deploy/grafana).

* ``promtool check rules`` / ``check config`` / ``test rules`` (Debian's ``prometheus`` package,
  installed by scripts/bootstrap); each alert's tests are shown to be able to fail by mutating the
  alert into "never fires" and "always fires".
* Every SQL query of the dashboards runs, as the read-only ``fraiseql_analyst``, against a real
  migrated metrics database, and the latency table gives the numbers of ``fraiseql_obs_analyzer.stats``.
* Every PromQL expression of the dashboards is run against a real Prometheus that scraped the
  running pipeline (1 s scrape interval): each succeeds and returns data.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
import yaml

from fraiseql_obs_analyzer.stats import pattern_stats, pattern_stats_at_level
from fraiseql_obs_sinks.writer import RollupWriter
from fraiseql_observability.config import KafkaSettings
from tests.fix_procs import Processes, free_port
from tests.test_metrics_endpoints import (
    REPO,
    RULES_DIR,
    dashboard_queries,
    dashboards,
    inject_dead_letters,
    names_used,
    panels,
    rule_exprs,
    start_pipeline,
    wait_for_metrics,
)
from tests.test_sink import MINUTE, make_rollup, minute_us, role_url

PROM_DIR = REPO / "deploy" / "prometheus"
RULE_TESTS = PROM_DIR / "tests" / "alerts_test.yml"
GRAFANA_DIR = REPO / "deploy" / "grafana"
PG_TYPE = "grafana-postgresql-datasource"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: install Debian's prometheus package (scripts/bootstrap does)"
    return path


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("promtool"), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd, check=False)


# --- rules -----------------------------------------------------------------------------------------


def test_promtool_check_rules_and_config() -> None:
    rules = sorted(RULES_DIR.glob("*.yml"))
    assert rules
    result = promtool("check", "rules", *rules)
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool("check", "config", PROM_DIR / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _alert_cases() -> dict[str, dict[str, int]]:
    """Alert name -> how many of its test cases expect it firing / silent."""
    cases: dict[str, dict[str, int]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            kind = "firing" if case.get("exp_alerts") else "silent"
            counts = cases.setdefault(case["alertname"], {"firing": 0, "silent": 0})
            counts[kind] += 1
    return cases


def test_reference_alerts_exist_and_every_alert_is_tested_both_ways() -> None:
    alerts = {name for name in rule_exprs() if name.startswith("Fraiseql")}
    # The reference deployment's three, plus the pipeline's own.
    assert {"FraiseqlMetricsLag", "FraiseqlRecorderBufferNearlyFull",
            "FraiseqlHighPrioritySuggestions", "FraiseqlStreamConsumerLagGrowing",
            "FraiseqlSinkConsumerLagGrowing", "FraiseqlDeadLetterRate", "FraiseqlSinkRetrying",
            "FraiseqlNoEvents"} <= alerts
    cases = _alert_cases()
    for alert in sorted(alerts):
        assert cases.get(alert, {}).get("firing"), f"{alert}: no test where it fires"
        assert cases.get(alert, {}).get("silent"), f"{alert}: no test where it stays silent"


@pytest.mark.parametrize("mutation", ["never", "always"])
@pytest.mark.parametrize("alert", sorted(name for name in rule_exprs() if name.startswith("Fraiseql")))
def test_rule_tests_catch_a_broken_alert(tmp_path: Path, alert: str, mutation: str) -> None:
    """Replacing one alert's expression by one that never (or always) fires fails the tests."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    # Only the test groups that check this alert (promtool evaluates every group: ~1.5 s for all).
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["tests"] = [group for group in tests["tests"]
                      if any(case["alertname"] == alert for case in group.get("alert_rule_test", []))]
    (tmp_path / "tests" / RULE_TESTS.name).write_text(yaml.safe_dump(tests, sort_keys=False))
    for path in RULES_DIR.glob("*.yml"):
        document = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == alert:
                    rule["expr"] = "vector(1) > 2" if mutation == "never" else "vector(1)"
        (tmp_path / "rules" / path.name).write_text(yaml.safe_dump(document, sort_keys=False))
    result = promtool("test", "rules", tmp_path / "tests" / RULE_TESTS.name)
    assert result.returncode != 0, f"the tests of {alert} pass with an alert that {mutation} fires"
    assert alert in result.stdout + result.stderr


# --- dashboards: structure -------------------------------------------------------------------------


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_dashboards",
                                                  GRAFANA_DIR / "generate_dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dashboards_are_generated() -> None:
    """The committed JSON is what generate_dashboards.py writes (edit the generator, not the JSON)."""
    rendered = _generator().render()
    committed = {path.name: path.read_text() for path in (GRAFANA_DIR / "dashboards").glob("*.json")}
    assert rendered == committed


def test_dashboards_are_provisioning_ready() -> None:
    boards = dashboards()
    assert set(boards) == {"collection-health.json", "query-performance.json",
                           "storage-growth.json", "optimization-impact.json"}
    uids = [board["uid"] for board in boards.values()]
    assert len(set(uids)) == len(uids)
    provisioning = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yml").read_text())
    provisioned = {source["uid"]: source["type"] for source in provisioning["datasources"]}
    providers = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    assert providers["providers"][0]["options"]["path"]
    for name, board in boards.items():
        assert "id" not in board or board["id"] is None, name  # provisioning assigns ids
        variables = {v["name"]: v for v in board["templating"]["list"]}
        for variable in variables.values():
            if variable["type"] == "datasource":
                # The default of each datasource variable is a provisioned datasource of its type.
                default = variable["current"]["value"]
                assert provisioned.get(default) == variable["query"], (name, default)
        ids = [panel["id"] for panel in panels(board)]
        assert len(set(ids)) == len(ids), name
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                source = target["datasource"]
                # Datasources only by variable, never by a uid of one particular Grafana.
                assert source["uid"] in {"${prometheus}", "${metricsdb}"}, (name, panel["title"])
                text = target.get("expr") or target.get("rawSql") or ""
                used = set(re.findall(r"\$([A-Za-z_]+)", text)) - {"__rate_interval", "__interval",
                                                                "__range", "__timeFrom",
                                                                "__timeTo", "__timeFilter"}
                assert used <= set(variables), (name, panel["title"], used - set(variables))


# --- dashboards: SQL against a real metrics database -----------------------------------------------


def grafana_sql(query: str, start: datetime, end: datetime, variables: dict[str, str]) -> str:
    """The SQL Grafana's PostgreSQL datasource sends: macros expanded, variables interpolated."""
    def iso(moment: datetime) -> str:
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    text = query.replace("$__timeFrom()", f"'{iso(start)}'").replace("$__timeTo()", f"'{iso(end)}'")
    text = re.sub(r"\$__timeFilter\(([^)]+)\)",
                  lambda m: f"{m[1]} BETWEEN '{iso(start)}' AND '{iso(end)}'", text)
    for name in sorted(variables, key=len, reverse=True):
        text = text.replace(f"${name}", variables[name])
    leftover = re.findall(r"\$[A-Za-z_]\w*", text)
    assert not leftover, f"uninterpolated Grafana variables or macros: {leftover}"
    return text


def _multi(values: list[str]) -> str:
    """A multi-value variable as Grafana's SQL datasources format it: quoted literals, joined."""
    return ",".join("'" + v.replace("'", "''") + "'" for v in values)


def _variable_values(board: dict[str, Any], conn: psycopg.Connection[Any],
                     start: datetime, end: datetime) -> dict[str, list[str]]:
    """The options of each SQL query variable, from running its query."""
    out: dict[str, list[str]] = {}
    for variable in board["templating"]["list"]:
        if variable["type"] == "query" and variable["datasource"]["type"] == PG_TYPE:
            rows = conn.execute(grafana_sql(variable["query"], start, end, {}).encode()).fetchall()
            out[variable["name"]] = [str(row[0]) for row in rows]
    return out


def run_dashboard_sql(url: str, start: datetime, end: datetime, *,
                      overrides: dict[str, str] | None = None) -> dict[tuple[str, str], list[Any]]:
    """Run every SQL target of every dashboard (regions: all, as Grafana's "All") on ``url``;
    (dashboard, panel title) -> (column names, rows)."""
    results: dict[tuple[str, str], list[Any]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = on")
        for name, board in dashboards().items():
            options = _variable_values(board, conn, start, end)
            variables = {"region": _multi(options.get("region", [])), "bucket": "5m", "top": "10",
                         "search": "", "change_at": ""}
            variables.update(overrides or {})
            for panel in panels(board):
                for target in panel.get("targets", []):
                    if target["datasource"]["type"] != PG_TYPE:
                        continue
                    query = grafana_sql(target["rawSql"], start, end, variables)
                    try:
                        cursor = conn.execute(query.encode())
                    except psycopg.Error as exc:
                        raise AssertionError(f"{name}: {panel['title']}: {exc}\n{query}") from None
                    columns = [c.name for c in cursor.description or []]
                    if target["format"] == "time_series":
                        assert columns[:1] == ["time"], (name, panel["title"], columns)
                    results[(name, panel["title"])] = [columns, cursor.fetchall()]
    return results


def _write_rollups(url: str, start_us: int) -> None:
    """An hour of rollups: three patterns, two regions, two source partitions, integer weights,
    and one pattern whose sketches mix two accuracies (alpha 1 % and 2 %)."""
    import random  # noqa: PLC0415

    rng = random.Random(7)
    records = []
    for minute in range(60):
        window = start_us + minute * MINUTE
        for fingerprint, query_name, median in (("fp-orders", "ordersByStatus", 40.0),
                                                ("fp-users", "userByEmail", 2.0),
                                                ("fp-mixed", "revenue'; DROP TABLE x; --", 300.0)):
            for region in ("us-east-1", "eu-west-1"):
                for partition in (0, 1):
                    n = rng.randint(1, 10)
                    values = [rng.lognormvariate(0, 0.8) * median for _ in range(n)]
                    weights = [rng.choice([1.0, 4.0, 100.0]) for _ in range(n)]
                    alpha = 0.02 if fingerprint == "fp-mixed" and minute % 2 else 0.01
                    if fingerprint == "fp-users":
                        # One event of weight 1 a window: 60 in all, so q x total falls exactly on
                        # a bucket's cumulative weight for p50 and p95 (the ">=" of the rule).
                        if partition:
                            continue
                        values, weights = values[:1], [1.0]
                    records.append(make_rollup(window, values, weights, fingerprint=fingerprint,
                                               region=region, query_name=query_name,
                                               source_partition=partition, alpha=alpha,
                                               errors=rng.randint(0, 1)))
    with RollupWriter(url, pool_size=1) as writer:
        writer.write(records)


def _latency_rows(columns: list[str],
                  rows: list[tuple[Any, ...]]) -> dict[tuple[str, str], dict[str, Any]]:
    by_name = [dict(zip(columns, row, strict=True)) for row in rows]
    return {(row["fingerprint"], row["region"]): row for row in by_name}


def assert_latency_table_matches_stats(results: dict[tuple[str, str], list[Any]], url: str,
                                       start: datetime, end: datetime, *, hourly: bool = False) -> int:
    """The dashboard's latency table gives exactly the numbers of ``fraiseql-cli stats`` (read
    from the hourly level for long periods, as the dashboard does)."""
    columns, rows = results[("query-performance.json", "Latency by pattern and region")]
    table = _latency_rows(columns, rows)
    report = (pattern_stats_at_level(url, start, end, "hourly") if hourly
              else pattern_stats(url, start, end))
    assert report.patterns, "no closed windows in the period"
    assert set(table) == {(p.fingerprint, p.region) for p in report.patterns}
    for stats in report.patterns:
        row = table[(stats.fingerprint, stats.region)]
        assert row["query"] == stats.query_name
        assert row["queries"] == pytest.approx(stats.count, rel=1e-12)
        for field, expected in (("p50 ms", stats.p50_ms), ("p95 ms", stats.p95_ms),
                                ("p99 ms", stats.p99_ms), ("mean ms", stats.mean_ms)):
            assert row[field] == pytest.approx(expected, rel=1e-9), (stats.fingerprint, field)
    return len(report.patterns)


@pytest.mark.postgres
def test_dashboard_sql_runs_as_analyst_and_matches_stats(metrics_db: str, pg_admin_url: str) -> None:
    start_us = minute_us(90)
    _write_rollups(metrics_db, start_us)
    start = datetime.fromtimestamp(start_us / 1e6, UTC)
    end = start + timedelta(hours=1)
    with role_url(pg_admin_url, metrics_db, "fraiseql_analyst") as analyst:
        results = run_dashboard_sql(analyst, start, end)
        assert assert_latency_table_matches_stats(results, analyst, start, end) == 6
        # The mixed-accuracy pattern went through the re-keying path: still the stats numbers.
        columns, rows = results[("query-performance.json", "Latency by pattern and region")]
        assert any(r[columns.index("fingerprint")] == "fp-mixed" for r in rows)

        # Time series: one series per (pattern, region) among the busiest, 12 buckets of 5 min.
        columns, rows = results[("query-performance.json", "p95 by pattern (busiest $top)")]
        assert columns == ["time", "metric", "value"]
        assert len({r[1] for r in rows}) == 6 and len({r[0] for r in rows}) in (12, 13)
        columns, rows = results[("query-performance.json", "Queries per second by region")]
        assert {r[1] for r in rows} == {"us-east-1", "eu-west-1"}
        # Storage: the rollups' partition is there with a size.
        columns, rows = results[("storage-growth.json", "Metrics database by table")]
        sizes = {r[0]: r[columns.index("size")] for r in rows}
        assert sizes["rollups"] > 0
        # Before/after at the middle of the hour: every pattern and region on both sides.
        columns, rows = results[("optimization-impact.json", "Before / after the change")]
        assert len(rows) == 6 and all(r[columns.index("p95 speedup")] > 0 for r in rows)

        # Filters: one region, a search on the query name (quotes in it stay inside the literal),
        # a change time with nothing after it.
        filtered = run_dashboard_sql(analyst, start, end, overrides={
            "region": "'eu-west-1'", "search": "DROP TABLE x; --".replace("'", "''"),
            "change_at": (end + timedelta(hours=1)).isoformat()})
        columns, rows = filtered[("query-performance.json", "Latency by pattern and region")]
        assert [(r[0], r[1]) for r in rows] == [("revenue'; DROP TABLE x; --", "eu-west-1")]
        assert filtered[("optimization-impact.json", "Before / after the change")][1] == []

        # 8 hours: whole hours from rollups_hourly, the ragged edges from the minute rollups.
        long_start = end - timedelta(hours=8)
        results = run_dashboard_sql(analyst, long_start, end, overrides={"bucket": "1h"})
        assert assert_latency_table_matches_stats(results, analyst, long_start, end, hourly=True) == 6
        columns, rows = results[("query-performance.json", "p95 by pattern (busiest $top)")]
        hours = {start + timedelta(minutes=m) - timedelta(minutes=(start.minute + m) % 60)
                 for m in range(60)}
        assert {r[0] for r in rows} == {h.replace(second=0, microsecond=0) for h in hours}


# --- dashboards: PromQL against a real Prometheus scraping the pipeline ---------------------------


def promql(expr: str) -> str:
    """A dashboard expression as Grafana sends it (its range variables set for a 1 s scrape)."""
    return (expr.replace("$__rate_interval", "15s").replace("$__interval", "5s")
            .replace("$__range", "5m"))


def _api(port: int, path: str, **params: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        document: dict[str, Any] = json.loads(response.read())
    assert document["status"] == "success", document
    data: dict[str, Any] = document["data"]
    return data


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], int]]:
    """Starts a real Prometheus (Debian's package) scraping ``{job: host:port}`` every second with
    the shipped rules; returns its port. Stopped at the end of the test."""
    started: list[subprocess.Popen[bytes]] = []
    folder = tmp_path / "prometheus"
    folder.mkdir()

    def start(targets: dict[str, str]) -> int:
        port = free_port()
        config = folder / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in sorted(RULES_DIR.glob("*.yml"))],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in targets.items()],
        }))
        with (folder / "prometheus.log").open("wb") as log:
            proc = subprocess.Popen(
                [_tool("prometheus"), f"--config.file={config}",
                 f"--storage.tsdb.path={folder / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                 "--storage.tsdb.retention.time=1h"],
                stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (folder / "prometheus.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2):
                    return port
            except OSError:
                time.sleep(0.3)
        raise AssertionError("Prometheus did not become ready in 60 s")

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.e2e
def test_dashboards_against_real_prometheus(tmp_path: Path, kafka_settings: KafkaSettings,
                                            metrics_db: str, processes: Processes,
                                            prometheus: Callable[[dict[str, str]], int]) -> None:
    pipeline = start_pipeline(tmp_path, kafka_settings, metrics_db, processes)
    port = prometheus({job: pipeline.target(job) for job in pipeline.ports})
    inject_dead_letters(pipeline)
    wait_for_metrics(pipeline, processes, names_used())

    # The rules load and evaluate in a real Prometheus.
    groups = _api(port, "/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == set(rule_exprs())
    queries = dashboard_queries("prometheus")
    deadline = time.monotonic() + 60
    failing: dict[str, str] = {}
    while time.monotonic() < deadline:
        failing = {}
        targets = _api(port, "/api/v1/targets")["activeTargets"]
        down = [t["labels"]["job"] for t in targets if t["health"] != "up"]
        for board, title, expr in queries:
            result = _api(port, "/api/v1/query", query=promql(expr))["result"]
            if not result:
                failing[f"{board}: {title}"] = expr
        if not failing and not down:
            break
        processes.assert_running()
        time.sleep(2)
    assert not down, f"targets down: {down}"
    assert not failing, f"PromQL without data: {failing}"
    for group in _api(port, "/api/v1/rules")["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule

    # The pipeline is really flowing: events consumed and rows written, per Prometheus.
    def value(expr: str) -> float:
        return float(_api(port, "/api/v1/query", query=expr)["result"][0]["value"][1])

    assert value("sum(fraiseql_stream_events_total)") > 0
    assert value('sum(fraiseql_sink_rows_written_total{table="rollups"})') > 0
    assert value("time() - max(fraiseql_metrics_last_write)") < 120

    # The SQL panels on what this pipeline wrote: the latency table equals `stats` (workers
    # stopped first, so that both read the same rows).
    processes.stop_all()
    end = datetime.now(UTC)
    start = end - timedelta(hours=1)
    results = run_dashboard_sql(metrics_db, start, end)
    assert assert_latency_table_matches_stats(results, metrics_db, start, end) >= 3
