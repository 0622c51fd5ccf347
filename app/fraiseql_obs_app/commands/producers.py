"""The producer side's commands: ``loadgen`` and ``table-stats``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Final

from fraiseql_obs_producers.appdb import create_demo_app_db
from fraiseql_obs_producers.errors import LoadgenError
from fraiseql_obs_producers.execute import run_real_workload
from fraiseql_obs_producers.loadgen import LoadgenReport, run_loadgen
from fraiseql_obs_producers.table_stats import publish_table_stats, run_table_stats, snapshot_table_stats
from fraiseql_observability.errors import UsageError
from fraiseql_observability.jsonpath import InvalidJsonPath, parse_json_path
from fraiseql_observability.metrics import serve_metrics

from ..common import log, settings_from, stop_event

PROGRESS_EVERY_SECS: Final = 5.0


def _progress(every: float = PROGRESS_EVERY_SECS) -> Callable[[LoadgenReport], None]:
    """A line on stderr every ``every`` seconds while events are produced."""
    next_at = time.monotonic() + every

    def show(report: LoadgenReport) -> None:
        nonlocal next_at
        now = time.monotonic()
        if now < next_at:
            return
        next_at = now + every
        print(f"loadgen: {report.produced:,} events produced in {report.elapsed_secs:.0f}s "
              f"({report.events_per_sec:,.0f}/s), {report.failed:,} failed", file=sys.stderr,
              flush=True)

    return show


def _execute_text(summary: dict[str, Any]) -> str:
    lines = [f"loadgen --execute: {summary['executed']:,} queries ({summary['errors']:,} errors) in "
             f"{summary['elapsed_secs']:.1f}s, {summary['queries_per_sec']:,.0f}/s, region "
             f"{summary['region']}; recorder sampled {summary['recorder']['sampled']:,}, sent "
             f"{summary['recorder']['sent']:,}, dropped {summary['recorder']['dropped'] or 'none'}"]
    for query in summary["queries"][:8]:
        p95 = query["p95_ms"]
        lines.append(f"  {query['executed']:>8,}  {query['query_name']:<28} p95 "
                     f"{'-' if p95 is None else f'{p95:.1f} ms'}")
    return "\n".join(lines)


def cmd_loadgen(args: argparse.Namespace) -> None:
    if args.execute:
        _loadgen_execute(args)
        return
    settings = settings_from(args)
    report = run_loadgen(
        settings,
        rate=args.rate,
        duration=args.duration,
        count=args.count,
        backfill=timedelta(minutes=args.backfill_minutes) if args.backfill_minutes else None,
        regions=args.regions.split(","),
        seed=args.seed,
        progress=_progress(),
        stop=stop_event(),
    )
    print(json.dumps(report.summary(), indent=2) if args.format == "json" else report.summary_text())


def _loadgen_execute(args: argparse.Namespace) -> None:
    """``loadgen --execute``: run the workload's SQL against an application database."""
    usage = None
    if not args.app_database:
        usage = "loadgen --execute needs --app-database URL"
    elif args.rate is not None or args.backfill_minutes is not None:
        usage = "--rate and --backfill-minutes shape synthetic events; --execute runs real queries"
    elif args.concurrency < 1 or args.app_rows < 1:
        usage = "--concurrency and --app-rows must be >= 1"
    if usage:
        raise UsageError(usage)
    settings = settings_from(args, **{"metrics.metrics_port": args.metrics_port})
    if args.create_app_db:
        log.info("building the demo application database (%d orders)", args.app_rows)
        create_demo_app_db(args.app_database, rows=args.app_rows, seed=args.seed)
    try:
        report = run_real_workload(settings, args.app_database, count=args.count,
                                   duration=args.duration, seed=args.seed,
                                   concurrency=args.concurrency, stop=stop_event())
    except LoadgenError as exc:
        raise UsageError(str(exc)) from None
    summary = report.summary()
    print(json.dumps(summary, indent=2) if args.format == "json" else _execute_text(summary))


def cmd_table_stats(args: argparse.Namespace) -> None:
    json_paths: dict[str, list[str]] | None = None
    if args.json_path:
        json_paths = {}
        for item in args.json_path:
            table, sep, path = item.partition(":")
            try:
                if not sep or not table:
                    raise InvalidJsonPath(f"{item!r}: expected TABLE:PATH")
                parse_json_path(path)
            except InvalidJsonPath as exc:
                raise UsageError(f"--json-path {exc}") from None
            json_paths.setdefault(table, []).append(path)
    if not args.interval > 0:
        raise UsageError(f"--interval {args.interval}: must be > 0")
    settings = settings_from(args)
    tables = args.table or None
    if args.once:
        records = snapshot_table_stats(args.app_database, region=settings.kafka.region,
                                       tables=tables, json_paths=json_paths)
        publish_table_stats(settings, records)
        print(json.dumps({
            "topic": settings.kafka.table_stats_topic,
            "snapshot_id": records[0]["snapshot_id"] if records else None,
            "tables": [{"table": f"{r['schema_name']}.{r['table_name']}",
                        "row_estimate": r["row_estimate"], "total_bytes": r["total_bytes"],
                        "columns": len(r["columns"]), "indexes": len(r["indexes"])}
                       for r in records],
        }, indent=2))
        return
    serve_metrics(args.metrics_port, settings.metrics_bind)
    run_table_stats(settings, args.app_database, interval_secs=args.interval, tables=tables,
                    json_paths=json_paths, stop=stop_event())
