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

from .config import Settings, load_settings
from .kafka import admin_client, ensure_topics
from .secrets import mask_url

__all__ = ["main", "run_demo"]

DEMO_DB = "fraiseql_demo"


def _say(text: str) -> None:
    print(f"[demo {datetime.now().strftime('%H:%M:%S')}] {text}", flush=True)


def _fresh_database(admin_url: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEMO_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DB)))
    return urlunsplit(urlsplit(admin_url)._replace(path="/" + DEMO_DB))


def _write_config(path: Path, prefix: str, bootstrap: str, database_url: str) -> Path:
    path.write_text(
        f"""# written by the demo; every key is documented in SPEC §4 and fraiseql_observability/config.py
[observability]
enabled = true
sample_rate = 0.01
retention_days = 14
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
    from .config import ENV_OVERRIDES  # noqa: PLC0415

    return {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}


@contextmanager
def _workers(config: Path, logs: Path, streams: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in [f"stream-{i + 1}" for i in range(streams)] + ["sink"]:
            command = [sys.executable, "-m", "fraiseql_observability.cli", "--config", str(config),
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
        [sys.executable, "-m", "fraiseql_observability.cli", "--config", str(config), "stats",
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

    from sinks.migrate import migrate  # noqa: PLC0415

    applied = migrate(database_url)
    _say(f"migrated the metrics schema ({len(applied)} migrations)")
    ensure_topics(settings.kafka, [settings.kafka.events_topic])

    with _workers(config, logs, streams) as procs:
        _say(f"started {streams} stream workers and 1 sink (pids {', '.join(str(p.pid) for p in procs)})")
        from producers.loadgen import run_loadgen  # noqa: PLC0415

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


def _delete_topics(settings: Settings, prefix: str) -> None:
    admin = admin_client(settings.kafka)
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best-effort cleanup
                future.result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fraiseql_observability.demo", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="sampled events to generate")
    parser.add_argument("--minutes", type=int, default=60, help="event times span the last N minutes")
    parser.add_argument("--streams", type=int, default=2, help="stream worker processes")
    args = parser.parse_args(argv)
    admin_url = os.environ.get("FRAISEQL_METRICS_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    bootstrap = os.environ.get("FRAISEQL_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    workdir = Path(os.environ.get("FRAISEQL_STACK_DIR", ".stack")) / "demo"
    return run_demo(events=args.events, minutes=args.minutes, streams=args.streams, workdir=workdir,
                    admin_url=admin_url, bootstrap=bootstrap)


if __name__ == "__main__":
    sys.exit(main())
