"""Issue 6's "done means", end to end on the demo application database, through real processes:

real queries (``fraiseql_obs_producers.execute``) → recorder → Kafka → ``fraiseql-cli stream`` → Kafka →
``fraiseql-cli sink`` → metrics PostgreSQL (and table statistics through ``fraiseql.table-stats``)
→ ``fraiseql-cli analyze --validate-with`` (HypoPG) → the top suggestion's SQL applied with psql →
the same load again → measured p95 before/after versus the estimate.

First phase, the negative case: the same pipeline with only fast queries yields no high or
critical suggestion.

The ``fraiseql2`` variant runs the planted slow filter as FraiseQL 2.x pages it (nested
``_fq_page``/``_fq_doc`` subqueries, ``row_number() OVER (ORDER BY id)``, ``ORDER BY id LIMIT``;
``tests/fraiseql_sql.py``, spelled for PostgreSQL 15) in the same workload, without the negative
phase: the same suggestion must come out, validated by HypoPG, and deliver the gain the estimate
says.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fraiseql_obs_producers.execute import ExecutionReport, run_real_workload
from fraiseql_obs_producers.table_stats import publish_table_stats, snapshot_table_stats, workload_json_paths
from fraiseql_obs_producers.workload import PLANTED_PATH, Workload, default_workload
from fraiseql_observability.config import KafkaSettings, Settings, load_settings
from tests.fix_procs import Processes, clean_env, cli, write_config
from tests.fraiseql_sql import fraiseql2_sql
from tests.test_analyzer_analyze import app_database

# serial: it compares measured speedups with the estimate; a second test process would skew them.
pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.serial]

ROWS = 100_000  # tv_order rows: a sequential scan ~50 ms here, plenty for a 5x gain
# Queries per run: the planted pattern draws ~13 % of them, so its measured p95 rests on ~190
# executions (fewer make the measured side of "estimate within 4x" mostly noise on a busy host).
COUNT = 1500
QUIET_COUNT = 400
FAST = ("user", "order", "product", "invoice", "ordersByIds")
HIGH = '.suggestions | map(select(.priority == "high" or .priority == "critical")) | length'


def pipeline_config(tmp_path: Path, kafka: KafkaSettings, metrics_db: str) -> Path:
    config = write_config(tmp_path / "pipeline.toml", kafka, metrics_db, sample_rate=0.5,
                          grace_secs=2.0)
    # Five-second windows: the last window of a run closes seconds after the run, not a minute.
    text = config.read_text().replace("[observability.streams]\n",
                                      "[observability.streams]\nwindow_secs = 5\n")
    config.write_text(text)
    return config


def wait_for_pipeline(metrics_db: str, events: int, processes: Processes) -> None:
    """Until every event sent is in a closed window in the metrics database, and the stats."""
    deadline = time.monotonic() + 120
    counted = stats = 0
    while time.monotonic() < deadline:
        with psycopg.connect(metrics_db) as conn:
            row = conn.execute("SELECT coalesce(sum(event_count), 0) FROM fraiseql_metrics.rollups"
                               ).fetchone()
            counted = int(row[0]) if row else 0
            row = conn.execute("SELECT count(*) FROM fraiseql_metrics.table_stats").fetchone()
            stats = int(row[0]) if row else 0
        if counted >= events and stats:
            return
        processes.assert_running()
        time.sleep(1)
    pytest.fail(f"pipeline did not deliver: {counted} of {events} events, {stats} table stats")


def analyze(config: Path, metrics_db: str, app: str) -> tuple[dict[str, Any], int]:
    """``analyze --format json`` through the real CLI, and what the operators' jq filter says."""
    out = subprocess.run(cli(config, "analyze", "--database", metrics_db, "--window", "1h",
                             "--format", "json", "--validate-with", app),
                         capture_output=True, text=True, env=clean_env(), timeout=300, check=True)
    document = json.loads(out.stdout)
    if shutil.which("jq"):
        jq = subprocess.run(["jq", HIGH], input=out.stdout, capture_output=True, text=True,
                            check=True)
        high = int(jq.stdout)
    else:
        high = sum(1 for s in document["suggestions"] if s["priority"] in ("high", "critical"))
    return document, high


def run(settings: Settings, app: str, workload: Workload | None, seed: int,
        count: int = COUNT) -> ExecutionReport:
    return run_real_workload(settings, app, count=count, seed=seed, concurrency=2,
                             workload=workload)


def fraiseql2_planted(workload: Workload) -> Workload:
    """The workload with its headline planted pattern's SQL as FraiseQL 2.x writes it.

    The whole workload, not a shorter one: the estimate's floor is the fast patterns' latency
    under the slow ones' load, so the run after the index must keep that load (with the planted
    pattern alone among fast ones, the machine is idle after the index and the measured gain
    outgrows any estimate).
    """
    return Workload(tuple(
        dataclasses.replace(p, sql=fraiseql2_sql(p.sql, postgres15=True))
        if p.planted and p.jsonb_paths == (PLANTED_PATH,) else p for p in workload.patterns))


@pytest.mark.parametrize("shape", ["flat", "fraiseql2"])
def test_planted_pattern_closed_loop(tmp_path: Path, kafka_settings: KafkaSettings,
                                     metrics_db: str, pg_admin_url: str,
                                     processes: Processes, shape: str) -> None:
    if shutil.which("psql") is None:
        pytest.fail("psql is needed to apply the suggestion as an operator would")
    config = pipeline_config(tmp_path, kafka_settings, metrics_db)
    settings = load_settings(config, environ={})
    core = default_workload(tail=0)
    if shape == "fraiseql2":
        core = fraiseql2_planted(core)
    fast = Workload(tuple(p for p in core.patterns if p.query_name in FAST))
    for name in ("stream", "sink"):
        processes.start(name, cli(config, name))
    with app_database(pg_admin_url, rows=ROWS, hypopg=True) as app:
        publish_table_stats(settings, snapshot_table_stats(
            app, region=settings.kafka.region, json_paths=workload_json_paths(core.patterns)))

        sent = 0
        if shape == "flat":
            # Negative: fast queries only (primary-key lookups) — nothing high or critical.
            quiet = run(settings, app, fast, seed=5, count=QUIET_COUNT)
            assert quiet.errors == 0
            sent += quiet.recorder.sent
            wait_for_pipeline(metrics_db, sent, processes)
            document, high = analyze(config, metrics_db, app)
            assert high == 0, [(s["type"], s["columns"], s["priority"])
                               for s in document["suggestions"]]

        # The full workload, planted slow pattern included.
        before = run(settings, app, core, seed=11)
        assert before.errors == 0
        sent += before.recorder.sent
        wait_for_pipeline(metrics_db, sent, processes)
        document, high = analyze(config, metrics_db, app)
        top = document["suggestions"][0]
        planted = next(p for p in core.patterns if p.planted and p.jsonb_paths == (PLANTED_PATH,))
        assert top["type"] == "add_index" and top["path"] == ".".join(PLANTED_PATH), [
            (s["type"], s["columns"], [p["query_name"] for p in s["patterns"]], s["validation"])
            for s in document["suggestions"]]
        assert [p["query_name"] for p in top["patterns"]] == [planted.query_name]
        # Minutes of data: said so, and nothing extrapolated above medium (README, "Ranking and
        # priority of suggestions"); the top suggestion still leads.
        assert document["coverage"]["short"] and document["coverage"]["priority_cap"] == "medium"
        assert top["priority"] == "medium" and high == 0
        assert top["validation"]["method"] == "hypopg"
        if shape == "fraiseql2":
            assert top["columns"] == ["data->>'customer_email'"]  # no "id": 8 rows sort for free
            assert top["validation"]["planned"] == "statement"
            # ORDER BY id LIMIT $2 for ~8 rows: planned without the LIMIT (see evaluate.py).
            assert "planned_without_limit" in top["validation"], top["validation"]

        applied = subprocess.run(["psql", app, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                                 input=top["sql"], capture_output=True, text=True, timeout=300,
                                 check=False)
        assert applied.returncode == 0, applied.stderr
        after = run(settings, app, core, seed=11)
        assert after.errors == 0

    lines = ["suggestion / pattern: estimated vs measured p95 speedup"]
    for pattern in top["patterns"]:
        name = pattern["query_name"]
        measured = before.queries[name].p95_ms / after.queries[name].p95_ms
        estimated = pattern["estimated_speedup"]
        lines.append(f"{top['id']} {top['type']} {top['columns']} / {name}: estimated "
                     f"{estimated:.1f}x (hypopg), measured p95 {before.queries[name].p95_ms:.2f} "
                     f"-> {after.queries[name].p95_ms:.2f} ms = {measured:.1f}x")
        assert measured >= 5, lines[-1]
        # Never promises more than 4x what it delivers: on this shared 2-core host the measured
        # p95 of the same phases swings by up to 2x between runs (and the HypoPG estimate with
        # the sampled statistics); a wrong model is off by 10x or more. Under-promising gets
        # twice that room, by design: the projection stops at the workload's floor, the median
        # p95 of its fastest patterns in the *before* phase, when they queue behind the slow
        # one on the same two cores; the after phase has no slow query left, so the planted
        # pattern can drop below that floor (seen: 100 -> 0.74 ms measured, 3.2 ms projected).
        assert 1 / 8 <= estimated / measured <= 4, lines[-1]
    print("\n".join(lines))
