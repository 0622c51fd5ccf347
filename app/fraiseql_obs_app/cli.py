"""``fraiseql-cli``: a thin command line over the library functions of each subsystem.

Exit codes (SPEC §5): 0 success, 2 usage or configuration error, 1 runtime failure. The environment
is read here and nowhere else (:func:`fraiseql_observability.config.load_settings`).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fraiseql_observability.config import WINDOWS, Settings, load_settings, window_to_seconds
from fraiseql_observability.errors import ConfigError, FraiseqlError
from fraiseql_observability.secrets import mask_secrets

__all__ = ["build_parser", "main"]

log = logging.getLogger("fraiseql")

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2


class _MaskingFormatter(logging.Formatter):
    """Every log line passes through :func:`mask_secrets`: passwords never reach logs."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _stop_event() -> threading.Event:
    """An event set by SIGTERM/SIGINT so workers finish their batch and close cleanly."""
    stop = threading.Event()

    def _handler(signum: int, _frame: Any) -> None:
        log.info("signal %d received: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def _parse_time(text: str) -> datetime:
    """ISO-8601 (naive means UTC), or relative like ``-2h``/``-30m``/``-7d``, or ``now``."""
    text = text.strip()
    if text == "now":
        return datetime.now(UTC)
    if text.startswith("-") and text[-1:] in {"s", "m", "h", "d"} and text[1:-1].isdigit():
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[text[-1]]
        return datetime.now(UTC) - timedelta(**{unit: int(text[1:-1])})
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected ISO-8601 time, 'now', or -N[s|m|h|d]"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return load_settings(args.config, overrides=overrides)


# --- commands ---------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    from fraiseql_observability.metricsdb.migrate import migrate  # noqa: PLC0415 - import cost only for this command

    settings = _settings(args, **{"database.url": args.database})
    applied = migrate(settings.database_url)
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return EXIT_OK


def cmd_stream(args: argparse.Namespace) -> int:
    from fraiseql_obs_streams.worker import run_stream_worker  # noqa: PLC0415

    settings = _settings(args)
    run_stream_worker(settings, stop=_stop_event())
    return EXIT_OK


def cmd_sink(args: argparse.Namespace) -> int:
    from fraiseql_obs_sinks.worker import run_sink  # noqa: PLC0415
    from fraiseql_observability.metrics import serve_metrics  # noqa: PLC0415

    settings = _settings(args)
    serve_metrics(settings.sinks.metrics_port, settings.metrics_bind)
    run_sink(settings, stop=_stop_event())
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    from fraiseql_obs_analyzer.stats import (  # noqa: PLC0415
        pattern_stats_all_regions,
        pattern_stats_at_level,
        render_stats_json,
        render_stats_text,
    )

    settings = _settings(args, **{"database.url": args.database})
    end = args.end or datetime.now(UTC)
    start = end - timedelta(seconds=window_to_seconds(args.window))
    # Whole hours come from the hourly level for long periods (same merged sketches, cheaper).
    if args.all_regions:  # one line per pattern: counts summed, sketches merged across regions
        report = pattern_stats_all_regions(settings.database_url, start, end)
    else:
        report = pattern_stats_at_level(settings.database_url, start, end)
    out = render_stats_json(report) if args.format == "json" else render_stats_text(report)
    print(out)
    return EXIT_OK


def cmd_loadgen(args: argparse.Namespace) -> int:
    if args.execute:
        return _loadgen_execute(args)
    from fraiseql_obs_producers.loadgen import run_loadgen  # noqa: PLC0415

    settings = _settings(args)
    report = run_loadgen(
        settings,
        rate=args.rate,
        duration=args.duration,
        count=args.count,
        backfill=timedelta(minutes=args.backfill_minutes) if args.backfill_minutes else None,
        regions=args.regions.split(","),
        seed=args.seed,
    )
    print(json.dumps(report.summary(), indent=2))
    return EXIT_OK


def _loadgen_execute(args: argparse.Namespace) -> int:
    """``loadgen --execute``: run the workload's SQL against an application database."""
    from fraiseql_obs_producers.appdb import create_demo_app_db  # noqa: PLC0415
    from fraiseql_obs_producers.errors import LoadgenError  # noqa: PLC0415
    from fraiseql_obs_producers.execute import run_real_workload  # noqa: PLC0415

    usage = None
    if not args.app_database:
        usage = "loadgen --execute needs --app-database URL"
    elif args.rate is not None or args.backfill_minutes is not None:
        usage = "--rate and --backfill-minutes shape synthetic events; --execute runs real queries"
    elif args.concurrency < 1 or args.app_rows < 1:
        usage = "--concurrency and --app-rows must be >= 1"
    if usage:
        print(f"fraiseql-cli: {usage}", file=sys.stderr)
        return EXIT_USAGE
    settings = _settings(args, **{"metrics.metrics_port": args.metrics_port})
    if args.create_app_db:
        log.info("building the demo application database (%d orders)", args.app_rows)
        create_demo_app_db(args.app_database, rows=args.app_rows, seed=args.seed)
    try:
        report = run_real_workload(settings, args.app_database, count=args.count,
                                   duration=args.duration, seed=args.seed,
                                   concurrency=args.concurrency, stop=_stop_event())
    except LoadgenError as exc:
        print(f"fraiseql-cli: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(report.summary(), indent=2))
    return EXIT_OK


def cmd_table_stats(args: argparse.Namespace) -> int:
    from fraiseql_obs_producers.table_stats import (  # noqa: PLC0415
        TableStatsError,
        parse_json_path,
        publish_table_stats,
        run_table_stats,
        snapshot_table_stats,
    )
    from fraiseql_observability.metrics import serve_metrics  # noqa: PLC0415

    json_paths: dict[str, list[str]] | None = None
    if args.json_path:
        json_paths = {}
        for item in args.json_path:
            table, sep, path = item.partition(":")
            try:
                if not sep or not table:
                    raise TableStatsError(f"{item!r}: expected TABLE:PATH")
                parse_json_path(path)
            except TableStatsError as exc:
                print(f"fraiseql-cli: --json-path {exc}", file=sys.stderr)
                return EXIT_USAGE
            json_paths.setdefault(table, []).append(path)
    if not args.interval > 0:
        print(f"fraiseql-cli: --interval {args.interval}: must be > 0", file=sys.stderr)
        return EXIT_USAGE
    settings = _settings(args)
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
        return EXIT_OK
    serve_metrics(args.metrics_port, settings.metrics_bind)
    run_table_stats(settings, args.app_database, interval_secs=args.interval, tables=tables,
                    json_paths=json_paths, stop=_stop_event())
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from fraiseql_obs_streams.replay import replay, terminal_progress  # noqa: PLC0415

    settings = _settings(args)
    end = args.to or datetime.now(UTC)
    if end <= args.start:
        raise ConfigError(f"--to {end.isoformat()} must be after --from {args.start.isoformat()}")
    report = replay(settings, args.start, end, progress=terminal_progress(), stop=_stop_event())
    print(report.summary())
    return EXIT_OK


def cmd_retention(args: argparse.Namespace) -> int:
    from fraiseql_observability.metricsdb.retention import drop_expired_partitions  # noqa: PLC0415

    settings = _settings(args, **{"database.url": args.database})
    dropped = drop_expired_partitions(
        settings.database_url, settings.retention_days,
        minute_retention_days=min(settings.minute_retention_days, settings.retention_days),
    )
    print(f"dropped {len(dropped)} partition(s)" + (f": {', '.join(dropped)}" if dropped else ""))
    return EXIT_OK


def _validate_url(url: str | None, flag: str) -> str | None:
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{flag}: expected a postgresql:// URL")
    return url


def cmd_analyze(args: argparse.Namespace) -> int:
    from fraiseql_obs_analyzer.analyze import AnalyzeOptions, run_analysis  # noqa: PLC0415
    from fraiseql_obs_analyzer.errors import AnalyzerError  # noqa: PLC0415
    from fraiseql_obs_analyzer.report import render_json, render_sql, render_text  # noqa: PLC0415

    settings = _settings(args, **{
        "database.url": args.database,
        "analysis.window": args.window,
        "analysis.min_frequency": args.min_frequency,
        "analysis.min_speedup": args.min_speedup,
        "analysis.min_selectivity": args.min_selectivity,
    })
    analysis = run_analysis(settings.database_url, AnalyzeOptions(
        window=settings.analysis.window,
        end=args.end,
        min_frequency=settings.analysis.min_frequency,
        min_speedup=settings.analysis.min_speedup,
        min_selectivity=settings.analysis.min_selectivity,
        types=frozenset(args.type) if args.type else None,
        table=args.table,
        validate_with=_validate_url(args.validate_with, "--validate-with"),
    ))
    render = {"json": render_json, "sql": render_sql, "text": render_text}[args.format]
    out = render(analysis)
    if args.output:
        try:
            Path(args.output).write_text(out if out.endswith("\n") else out + "\n",
                                         encoding="utf-8")
        except OSError as exc:
            raise AnalyzerError(f"--output {args.output}: {exc}") from None
    else:
        print(out)
    return EXIT_OK


def cmd_schedule(args: argparse.Namespace) -> int:
    from fraiseql_obs_analyzer.schedule import run_once, run_scheduler  # noqa: PLC0415
    from fraiseql_observability.metrics import serve_metrics  # noqa: PLC0415

    settings = _settings(args, **{"database.url": args.database})
    validate_with = _validate_url(args.validate_with, "--validate-with")
    if args.once:
        result = run_once(settings, validate_with=validate_with)
        for path in result.reports:
            print(path)
        return EXIT_OK if result.ok else EXIT_RUNTIME
    serve_metrics(settings.analysis.metrics_port, settings.metrics_bind)
    run_scheduler(settings, stop=_stop_event(), validate_with=validate_with)
    return EXIT_OK


def cmd_diff_analysis(args: argparse.Namespace) -> int:
    from fraiseql_obs_analyzer.diff import (  # noqa: PLC0415
        diff_documents,
        load_document,
        render_diff_json,
        render_diff_text,
    )

    diff = diff_documents(load_document(args.a), load_document(args.b))
    print(render_diff_json(diff) if args.format == "json" else render_diff_text(diff))
    return EXIT_OK


# --- parser -------------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace], int]


def _add(sub: Any, name: str, handler: Handler, help_text: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=description)
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraiseql-cli",
        description="Query observability for GraphQL-on-PostgreSQL APIs (FraiseQL).",
    )
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML configuration file (default: fraiseql.toml if present)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _add(sub, "migrate", cmd_migrate, "create or upgrade the metrics schema and roles",
             "Create or upgrade the fraiseql_metrics schema, its partitions and the collector, "
             "analyst and maintainer roles. Idempotent: running it again applies nothing new.")
    p.add_argument("--database", metavar="URL", help="metrics database URL (default: configuration)")

    _add(sub, "stream", cmd_stream, "run one stream worker (Faust)",
         "Consume fraiseql.query-events, aggregate event-time 1-minute windows per pattern and "
         "region, publish closed windows to fraiseql.query-rollups. Run more processes to scale.")

    _add(sub, "sink", cmd_sink, "run one sink worker",
         "Write rollups and table statistics from Kafka to the metrics database in batched, "
         "idempotent transactions; offsets are committed only after the data is durable.")

    p = _add(sub, "stats", cmd_stats, "per-pattern, per-region latency statistics",
             "Per pattern and region over closed windows: weighted count, errors, mean, p50, p95, "
             "p99 (percentiles from merged sketches).")
    p.add_argument("--database", metavar="URL", help="metrics database URL (default: configuration)")
    p.add_argument("--window", default="1h", choices=list(WINDOWS), help="period to report (default 1h)")
    p.add_argument("--end", type=_parse_time, default=None, help="end of the period (default now)")
    p.add_argument("--format", default="text", choices=["text", "json"])
    p.add_argument("--all-regions", action="store_true",
                   help="one line per pattern over every region (region '*'): global counts and "
                        "percentiles from sketches merged across regions")

    p = _add(sub, "loadgen", cmd_loadgen, "generate a synthetic FraiseQL workload",
             "Produce realistic query events (several views, JSONB filters/sorts/aggregates, a long "
             "tail of rare patterns, several regions, lognormal latencies, errors) to the events "
             "topic, at a rate for a duration, or spread over a past interval (backfill).")
    p.add_argument("--rate", type=float, default=None,
                   help="events per second (default: as fast as possible)")
    p.add_argument("--duration", type=float, default=None, help="seconds to run")
    p.add_argument("--count", type=int, default=None, help="number of events")
    p.add_argument("--backfill-minutes", type=float, default=None,
                   help="spread event times over the past N minutes instead of now")
    p.add_argument("--regions", default="us-east-1,eu-west-1", help="comma-separated regions")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--execute", action="store_true",
                   help="real-execution mode: run the core patterns' SQL against --app-database "
                        "with --concurrency connections and record real timings through the "
                        "recorder (sample_rate applies; region from the configuration)")
    p.add_argument("--app-database", metavar="URL", default=None,
                   help="application database for --execute (read access is enough)")
    p.add_argument("--concurrency", type=int, default=2,
                   help="--execute: threads and pooled connections (default 2)")
    p.add_argument("--create-app-db", action="store_true",
                   help="--execute: first (re)create the demo tables tv_order, tv_user, tv_product, "
                        "tv_invoice in --app-database (drops them if present)")
    p.add_argument("--app-rows", type=int, default=400_000,
                   help="--create-app-db: rows of tv_order (the other tables scale with it)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="--execute: serve the recorder's /metrics on this port "
                        "(default: metrics.metrics_port of the configuration)")

    p = _add(sub, "table-stats", cmd_table_stats, "publish application-table statistics",
             "Snapshot row counts, sizes, column and JSONB-path statistics (null fraction, "
             "distinct estimate) and index usage of the application database to the table-stats "
             "topic, every --interval seconds (serving /metrics) or --once. Run it where the API "
             "has read access: the metrics service never connects to the application database.")
    p.add_argument("--app-database", metavar="URL", required=True,
                   help="application database (read-only access is enough)")
    p.add_argument("--interval", type=float, default=300.0,
                   help="seconds between snapshots (default 300)")
    p.add_argument("--once", action="store_true", help="one snapshot, print a summary, exit")
    p.add_argument("--table", action="append", metavar="NAME",
                   help="table to snapshot (repeatable; default: every table outside system schemas)")
    p.add_argument("--json-path", action="append", metavar="TABLE:PATH",
                   help="JSONB path to report, e.g. tv_order:customer.region or "
                        "\"tv_order:data->>'status'\" (repeatable; default: discovered by sampling)")
    p.add_argument("--metrics-port", type=int, default=9105,
                   help="port of /metrics while running periodically (default 9105; 0: none)")

    p = _add(sub, "replay", cmd_replay, "recompute rollups from the events topic (backfill)",
             "Recompute the rollups of every window lying entirely in [--from, --to) from the "
             "events topic and publish them to the rollups topic, where the sink upserts them by "
             "id: replaying twice, or over windows the live pipeline wrote, changes nothing. "
             "Shows progress with rate and ETA.")
    p.add_argument("--from", dest="start", type=_parse_time, required=True, metavar="TIME",
                   help="ISO-8601 time, 'now' or -N[s|m|h|d]")
    p.add_argument("--to", type=_parse_time, default=None, metavar="TIME", help="default: now")

    p = _add(sub, "retention", cmd_retention, "drop metrics older than retention_days",
             "Drop whole daily partitions older than retention_days (never deletes row by row).")
    p.add_argument("--database", metavar="URL", help="metrics database URL (default: configuration)")

    p = _add(sub, "analyze", cmd_analyze, "suggest schema changes, with evidence",
             "Analyze the workload in the metrics database: per pattern queries/day, p95/p99 from "
             "merged sketches, rows returned, table statistics; suggest denormalized columns, "
             "indexes, materialized views and indexes to drop, ranked by query time saved per "
             "day. Speedups come from HypoPG on --validate-with (corrected with observed rows) "
             "or from the cost model. Exit 1 when a database cannot be reached.")
    p.add_argument("--database", metavar="URL", help="metrics database URL (default: configuration)")
    p.add_argument("--window", default=None, choices=list(WINDOWS),
                   help="period to analyze (default: analysis.window, 7d)")
    p.add_argument("--end", type=_parse_time, default=None, help="end of the period (default now)")
    p.add_argument("--format", default="text", choices=["text", "json", "sql"])
    p.add_argument("--min-frequency", type=float, default=None, metavar="N",
                   help="queries/day a suggestion must serve (default: analysis.min_frequency)")
    p.add_argument("--min-speedup", type=float, default=None, metavar="X",
                   help="estimated speedup a suggestion must reach (default: analysis.min_speedup)")
    p.add_argument("--min-selectivity", type=float, default=None, metavar="F",
                   help="fraction of a table an index must let a query skip (default: "
                        "analysis.min_selectivity)")
    p.add_argument("--type", action="append", metavar="T",
                   choices=["denormalize", "add_index", "drop_index", "materialize_view"],
                   help="only suggestions of this type (repeatable)")
    p.add_argument("--table", metavar="NAME", help="only suggestions on this table (name or "
                                                   "schema.name)")
    p.add_argument("--validate-with", metavar="URL",
                   help="a database with the application's schema and statistics and the HypoPG "
                        "extension (e.g. staging): estimate speedups with its planner")
    p.add_argument("--output", metavar="FILE", help="write the report to FILE instead of stdout")

    p = _add(sub, "schedule", cmd_schedule, "run the analyzer on its cron schedule, forever",
             "Run an analysis at every tick of analysis.schedule (cron, UTC): store it and its "
             "suggestions in the metrics database, publish new suggestions to the suggestions "
             "topic, write dated JSON/SQL/text reports to analysis.reports_dir, set "
             "fraiseql_analysis_suggestions_high_priority (served on analysis.metrics_port), "
             "run retention.")
    p.add_argument("--database", metavar="URL",
                   help="metrics database URL (default: configuration); a member of "
                        "fraiseql_scheduler (and fraiseql_maintainer for retention)")
    p.add_argument("--validate-with", metavar="URL", help="as for analyze")
    p.add_argument("--once", action="store_true", help="run one analysis now and exit")

    p = _add(sub, "diff-analysis", cmd_diff_analysis, "compare two analyses",
             "What appeared, disappeared and changed (priority, estimated speedup) between two "
             "`analyze --format json` documents.")
    p.add_argument("a", type=Path, metavar="A.json", help="the earlier analysis")
    p.add_argument("b", type=Path, metavar="B.json", help="the later analysis")
    p.add_argument("--format", default="text", choices=["text", "json"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"fraiseql-cli: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except FraiseqlError as exc:
        print(f"fraiseql-cli: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_RUNTIME
    except Exception as exc:
        log.debug("unhandled error", exc_info=True)
        print(f"fraiseql-cli: {type(exc).__name__}: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_RUNTIME
    return code


if __name__ == "__main__":
    sys.exit(main())
