"""The end-to-end demo (README command one), on the local stack.

migrate → two ``fraiseql-cli stream`` workers and one ``fraiseql-cli sink`` as real processes →
``loadgen`` backfills an hour of realistic workload → waits until every event is in the metrics
database → prints per-pattern statistics and checks them against the generator's ground truth.
Each run uses its own topics and a fresh ``fraiseql_demo`` database; the workers are stopped at the
end and the demo topics deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from fraiseql_obs_analyzer.analyze import AnalyzeOptions, run_analysis
from fraiseql_obs_app.chart import BeforeAfter, PatternResult, Percentiles, write_chart
from fraiseql_obs_app.demo_traffic import (
    demo_api,
    minute_floor,
    recorded_latency,
    run_api_traffic,
)
from fraiseql_obs_producers.appdb import create_demo_app_db
from fraiseql_obs_producers.loadgen import run_loadgen
from fraiseql_obs_producers.table_stats import publish_table_stats, snapshot_table_stats
from fraiseql_observability.config import ENV_OVERRIDES, Settings, load_settings
from fraiseql_observability.kafka import admin_client, ensure_topics
from fraiseql_observability.metricsdb.migrate import migrate
from fraiseql_observability.secrets import mask_url

__all__ = ["main", "run_demo"]

DEMO_DB = "fraiseql_demo"


def _say(text: str) -> None:
    print(f"[demo {datetime.now().strftime('%H:%M:%S')}] {text}", flush=True)


def _fresh_database(admin_url: str, name: str = DEMO_DB) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


def _write_config(path: Path, prefix: str, bootstrap: str, database_url: str, *,
                  sample_rate: float = 0.01) -> Path:
    path.write_text(
        f"""# written by the demo; every key is documented in SPEC §4 and fraiseql_observability/config.py
[observability]
enabled = true
sample_rate = {sample_rate}
retention_days = 14
[observability.metrics]
flush_interval_secs = 1.0
# Phase 2's API records ~200 requests/s with the index in place: room for a second of them.
buffer_size = 10000
[observability.analysis]
reports_dir = "{path.parent / 'reports'}"
[observability.database]
url = "{database_url}"
[observability.kafka]
bootstrap_servers = "{bootstrap}"
events_topic = "{prefix}fraiseql.query-events"
rollups_topic = "{prefix}fraiseql.query-rollups"
dead_letters_topic = "{prefix}fraiseql.dead-letters"
table_stats_topic = "{prefix}fraiseql.table-stats"
suggestions_topic = "{prefix}fraiseql.suggestions"
[observability.streams]
grace_secs = 2.0
idle_secs = 3.0
group_id = "{prefix}stream"
metrics_port = 0
[observability.sinks]
batch_timeout_secs = 0.5
group_id = "{prefix}sink"
metrics_port = 0
""",
        encoding="utf-8",
    )
    return path


def _child_env() -> dict[str, str]:
    """The demo's config file names every setting: drop FRAISEQL_* overrides (environment beats
    the file, SPEC §4), which would otherwise point the workers at the stack's default database."""

    return {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}


@contextmanager
def _workers(config: Path, logs: Path, streams: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in [f"stream-{i + 1}" for i in range(streams)] + ["sink"]:
            command = [sys.executable, "-m", "fraiseql_obs_app.cli", "--config", str(config),
                       name.split("-")[0]]
            with (logs / f"{name}.log").open("wb") as out:
                procs.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                              env=_child_env()))
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _stats(config: Path, database_url: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "fraiseql_obs_app.cli", "--config", str(config), "stats",
         "--database", database_url, "--window", "6h", "--format", "json"],
        capture_output=True, text=True, check=True, env=_child_env(),
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def run_demo(*, events: int, minutes: int, streams: int, workdir: Path, admin_url: str,
             bootstrap: str) -> int:
    started = time.monotonic()
    run = datetime.now(UTC).strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:4]
    prefix = f"demo-{run}."
    logs = workdir / run
    logs.mkdir(parents=True, exist_ok=True)

    database_url = _fresh_database(admin_url)
    config = _write_config(logs / "fraiseql.toml", prefix, bootstrap, database_url)
    settings: Settings = load_settings(config, environ={})
    _say(f"metrics database {mask_url(database_url)}; topics {prefix}*; logs in {logs}")


    applied = migrate(database_url)
    _say(f"migrated the metrics schema ({len(applied)} migrations)")
    ensure_topics(settings.kafka, [settings.kafka.events_topic])

    with _workers(config, logs, streams) as procs:
        _say(f"started {streams} stream workers and 1 sink (pids {', '.join(str(p.pid) for p in procs)})")

        report = run_loadgen(settings, count=events, backfill=timedelta(minutes=minutes),
                             regions=["us-east-1", "eu-west-1"], seed=42)
        _say(f"loadgen produced {report.delivered} sampled events standing for "
             f"{report.weighted_total:,.0f} queries over the last {minutes} minutes "
             f"({report.events_per_sec:,.0f} events/s)")

        stats: dict[str, Any] = {"patterns": []}
        deadline = time.monotonic() + 240
        counted = 0.0
        while time.monotonic() < deadline:
            for proc in procs:
                if proc.poll() is not None:
                    _say(f"a worker exited with {proc.returncode}; see {logs}")
                    return 1
            stats = _stats(config, database_url)
            counted = sum(p["count"] for p in stats["patterns"])
            if counted >= report.weighted_total - 1e-6:
                break
            _say(f"waiting for the last windows to close: {counted:,.0f} of "
                 f"{report.weighted_total:,.0f} queries in the metrics database")
            time.sleep(5)

    _print_stats(stats)
    ok = _verify(stats, report)
    _say(f"finished in {time.monotonic() - started:.0f}s; workers stopped; logs in {logs}")
    _delete_topics(settings, prefix)
    return 0 if ok else 1


def _print_stats(stats: dict[str, Any], top: int = 15) -> None:
    patterns = sorted(stats["patterns"], key=lambda p: -p["count"])
    print()
    print(f"{'query':<34} {'region':<10} {'queries':>10} {'errors':>8} {'mean ms':>9} "
          f"{'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}")
    for p in patterns[:top]:
        print(f"{p['query_name'][:34]:<34} {p['region']:<10} {p['count']:>10,.0f} {p['errors']:>8,.0f} "
              f"{p['mean_ms']:>9.2f} {p['p50_ms']:>9.2f} {p['p95_ms']:>9.2f} {p['p99_ms']:>9.2f}")
    if len(patterns) > top:
        print(f"... and {len(patterns) - top} more (pattern, region) pairs")
    print()


def _verify(stats: dict[str, Any], report: Any) -> bool:
    """Compare every pattern with the generator's exact ground truth."""
    alpha = 0.01
    rounding = 5e-4  # stats prints milliseconds with 3 decimals
    wrong_counts = outside_bound = 0
    worst = 0.0
    for p in stats["patterns"]:
        truth = report.patterns.get((p["fingerprint"], p["region"]))
        if truth is None or abs(truth.weighted_count - p["count"]) > 1e-6 * max(1.0, p["count"]):
            wrong_counts += 1
            continue
        for q, field in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
            exact = truth.quantile(q)
            error = abs(p[field] - exact)
            worst = max(worst, error / exact if exact > 0 else 0.0)
            if error > alpha * exact + rounding:
                outside_bound += 1
    missing = len(report.patterns) - len(stats["patterns"])
    if wrong_counts or missing or outside_bound:
        _say(f"MISMATCH: {wrong_counts} wrong counts, {missing} missing, "
             f"{outside_bound} percentiles outside the sketch bound")
        return False
    _say(f"verified against the generator's ground truth: all {len(stats['patterns'])} (pattern, region) "
         f"counts exact; p50/p95/p99 within the 1% sketch bound (worst {worst:.2%} incl. display "
         "rounding to 0.001 ms)")
    return True


# --- phase 2: the closed loop on a real application database ----------------------------------

APP_DB = "fraiseql_demo_app"
LOOP_DB = "fraiseql_demo_loop"


def _wait_counted(config: Path, database_url: str, want: float, procs: list[subprocess.Popen[bytes]],
                  what: str) -> bool:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            _say("a worker exited; see its log")
            return False
        counted = sum(p["count"] for p in _stats(config, database_url)["patterns"])
        if counted >= want - 1e-6:
            return True
        _say(f"{what}: {counted:,.0f} of {want:,.0f} queries in the metrics database "
             "(windows close a few seconds after their minute ends)")
        time.sleep(5)
    return False


def _apply_sql(app_url: str, sql_text: str, path: Path) -> None:
    """Run the suggestion's migration exactly as an operator would: psql, stop on the first error."""
    path.write_text(sql_text, encoding="utf-8")
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", app_url, "-f", str(path)],
                   check=True, env=_child_env(), stdout=subprocess.DEVNULL)


def run_closed_loop(*, queries: int, rows: int, workdir: Path, admin_url: str, bootstrap: str) -> int:
    """Real workload → suggestions → apply the top one → same workload → before/after."""

    started = time.monotonic()
    run = datetime.now(UTC).strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:4]
    prefix = f"demo-loop-{run}."
    logs = workdir / f"loop-{run}"
    logs.mkdir(parents=True, exist_ok=True)
    app_url = _fresh_database(admin_url, APP_DB)
    t0 = time.monotonic()
    create_demo_app_db(app_url, rows=rows)
    with psycopg.connect(app_url, autocommit=True) as conn:
        # --validate-with needs HypoPG in the database it plans against (an operator's staging copy).
        conn.execute("CREATE EXTENSION IF NOT EXISTS hypopg")
    _say(f"application database {mask_url(app_url)}: {rows:,} orders with a JSONB data column, "
         f"no JSONB indexes ({time.monotonic() - t0:.0f}s to build)")
    metrics_url = _fresh_database(admin_url, LOOP_DB)
    migrate(metrics_url)
    config = _write_config(logs / "fraiseql.toml", prefix, bootstrap, metrics_url, sample_rate=1.0)
    settings = load_settings(config, environ={})
    ensure_topics(settings.kafka, [settings.kafka.events_topic])

    with _workers(config, logs, 1) as procs, \
            demo_api(config, app_url, logs / "api.log", _child_env()) as port:
        _say(f"phase 1: {queries} GraphQL requests over HTTP to a real FraiseQL 0.5.x API "
             f"(uvicorn on port {port}; its pool's cursors record every statement)")
        phase1_at = datetime.now(UTC)
        before = run_api_traffic(port, count=queries, seed=1, rows=rows)
        _say(f"phase 1: {before.executed} requests, {before.errors} failed")
        publish_table_stats(settings, snapshot_table_stats(app_url, region=settings.kafka.region))
        if not _wait_counted(config, metrics_url, before.executed, procs, "phase 1"):
            return 1
        analysis = run_analysis(metrics_url, AnalyzeOptions(window="1h", validate_with=app_url,
                                                            min_frequency=1.0))
        if not analysis.suggestions:
            _say("the analyzer found nothing to suggest")
            return 1
        print()
        print(f"{'#':>2} {'type':<16} {'priority':<9} {'table':<12} {'path / columns':<34} "
              f"{'est. speedup':>12}  validation")
        for i, s in enumerate(analysis.suggestions[:8], 1):
            target = s.path or ", ".join(s.columns)
            print(f"{i:>2} {s.type:<16} {s.priority:<9} {s.table:<12} {target[:34]:<34} "
                  f"{s.impact.estimated_speedup:>11.1f}x  {s.validation.get('method', '?')}")
        print()
        top = analysis.suggestions[0]
        _say(f"applying the top suggestion ({top.type} on {top.table}) with psql: "
             f"{logs / 'top-suggestion.sql'}")
        t0 = time.monotonic()
        _apply_sql(app_url, top.sql, logs / "top-suggestion.sql")
        _say(f"applied in {time.monotonic() - t0:.1f}s")

        _say(f"phase 2: the same {queries} requests again")
        # Phase 1's windows are closed by now: phase 2's events fall in later minutes.
        phase2_at = datetime.now(UTC)
        after = run_api_traffic(port, count=queries, seed=1, rows=rows)
        _say(f"phase 2: {after.executed} requests, {after.errors} failed")
        publish_table_stats(settings, snapshot_table_stats(app_url, region=settings.kafka.region))
        if not _wait_counted(config, metrics_url, before.executed + after.executed, procs, "phase 2"):
            return 1

    # The database time the integration recorded (what the estimate is about), per phase, from
    # the pipeline's own statistics; the client's HTTP latency is printed next to it.
    db_before = recorded_latency(metrics_url, minute_floor(phase1_at), minute_floor(phase2_at))
    db_after = recorded_latency(metrics_url, minute_floor(phase2_at), datetime.now(UTC))
    rows_out: list[PatternResult] = []
    print()
    print(f"{'affected operation':<28} {'p95 before':>11} {'p95 after':>10} {'measured':>9} "
          f"{'estimated':>10}   {'HTTP p95 before':>15} {'after':>8}")
    worst_ratio = 1.0
    for ref in top.patterns:
        b, a = db_before.get(ref.query_name), db_after.get(ref.query_name)
        client_b, client_a = before.queries.get(ref.query_name), after.queries.get(ref.query_name)
        if b is None or a is None or a.p95_ms <= 0:
            continue
        measured = b.p95_ms / a.p95_ms
        ratio = max(measured, ref.estimated_speedup) / max(min(measured, ref.estimated_speedup), 1e-9)
        worst_ratio = max(worst_ratio, ratio)
        rows_out.append(PatternResult(ref.query_name, Percentiles(b.p50_ms, b.p95_ms, b.p99_ms),
                                      Percentiles(a.p50_ms, a.p95_ms, a.p99_ms),
                                      ref.estimated_speedup))
        http = (f"{client_b.p95_ms:>13.1f}ms {client_a.p95_ms:>6.1f}ms"
                if client_b is not None and client_a is not None else "")
        print(f"{ref.query_name[:28]:<28} {b.p95_ms:>9.1f}ms {a.p95_ms:>8.1f}ms {measured:>8.1f}x "
              f"{ref.estimated_speedup:>9.1f}x   {http}")
    print()
    if rows_out:
        chart = BeforeAfter(
            f"Before/after the top suggestion: {top.type} on {top.table}"
            + (f" ({', '.join(top.columns)})" if top.columns else ""),
            f"{queries} GraphQL requests per phase, database time as recorded by the FraiseQL "
            f"integration; measured p95 speedup next to the analyzer's "
            f"estimate ({top.validation.get('method', 'model')})", tuple(rows_out))
        paths = write_chart(chart, logs / "before-after.html")
        _say(f"chart: {' and '.join(str(p) for p in paths)}; estimated vs measured speedup within "
             f"{worst_ratio:.1f}x of each other")
    _say(f"closed loop finished in {time.monotonic() - started:.0f}s")
    _delete_topics(settings, prefix)
    return 0 if rows_out else 1



def _delete_topics(settings: Settings, prefix: str) -> None:
    admin = admin_client(settings.kafka)
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best-effort cleanup
                future.result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fraiseql_obs_app.demo", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="sampled events to generate")
    parser.add_argument("--minutes", type=int, default=60, help="event times span the last N minutes")
    parser.add_argument("--streams", type=int, default=2, help="stream worker processes")
    parser.add_argument("--loop-queries", type=int, default=400,
                        help="real queries per phase of the closed loop")
    parser.add_argument("--app-rows", type=int, default=400_000, help="orders in the demo application DB")
    parser.add_argument("--skip-scale", action="store_true", help="skip phase 1 (synthetic scale)")
    parser.add_argument("--skip-loop", action="store_true", help="skip phase 2 (closed loop)")
    args = parser.parse_args(argv)
    admin_url = os.environ.get("FRAISEQL_METRICS_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    bootstrap = os.environ.get("FRAISEQL_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    workdir = Path(os.environ.get("FRAISEQL_STACK_DIR", ".stack")) / "demo"
    status = 0
    if not args.skip_scale:
        _say("phase 1 of 2: an hour of synthetic traffic at scale through the whole pipeline")
        status = run_demo(events=args.events, minutes=args.minutes, streams=args.streams,
                          workdir=workdir, admin_url=admin_url, bootstrap=bootstrap)
    if status == 0 and not args.skip_loop:
        _say("phase 2 of 2: the closed loop on a real application database")
        status = run_closed_loop(queries=args.loop_queries, rows=args.app_rows, workdir=workdir,
                                 admin_url=admin_url, bootstrap=bootstrap)
    return status


if __name__ == "__main__":
    sys.exit(main())
