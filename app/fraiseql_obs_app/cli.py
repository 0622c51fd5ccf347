"""``fraiseql-cli``: the parser, the dispatch and the exit codes; nothing else.

Each command is a function ``cmd_<name>(args)`` in the module of its stage under
:mod:`fraiseql_obs_app.commands`, imported only when that command runs: a process serves the
Prometheus metrics of its own stage, and ``stats`` does not load the Kafka client.

Exit codes (SPEC §5), mapped in :func:`main` and nowhere else: 0 success, 2 usage or
configuration error (:class:`UsageError`, :class:`ConfigError`), 1 runtime failure (any other
:class:`FraiseqlError`, or anything unexpected).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from fraiseql_observability.errors import ConfigError, FraiseqlError, UsageError
from fraiseql_observability.secrets import mask_secrets

from .common import log, parse_time, parse_window

__all__ = ["EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK: Final = 0
EXIT_RUNTIME: Final = 1
EXIT_USAGE: Final = 2


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


Handler = Callable[[argparse.Namespace], None]

# Top-level modules of the `workers` extra (pyproject.toml).
_WORKER_EXTRA: Final = frozenset({"psycopg", "psycopg_pool", "croniter"})


def _version() -> str:
    try:
        return importlib.metadata.version("fraiseql-observability")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """argparse that reads ``-1h`` (a relative time) as a value: ``replay --from -1h``.

    argparse takes every ``-…`` that is not a plain negative number for an option, so
    ``--from -1h`` failed with "expected one argument" and only ``--from=-1h`` worked. No option of
    this CLI looks like ``-<digits><unit>``, so widening its negative-number rule is unambiguous
    (Python 3.13's argparse does the same for anything starting with ``-<digit>``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+[smhdw]$")


# Where a worker's settings come from (``stream --help``, ``sink --help``).
_SETTINGS_EPILOG: Final = (
    "Settings, each source overriding the one before: defaults; the TOML file (--config, default "
    "./fraiseql.toml), table [observability] and its sections; the environment "
    "(FRAISEQL_KAFKA_BOOTSTRAP_SERVERS, FRAISEQL_METRICS_DATABASE_URL, FRAISEQL_REGION, ... "
    "SPEC §4); this command's flags. Every key and its range: fraiseql_observability/config.py; "
    "a walk-through: README, \"Running it by hand\"."
)


def _handler(command: str) -> Handler:
    """``stage:function`` → the function, importing its stage's command module now."""
    module, _, function = command.partition(":")
    try:
        commands = importlib.import_module(f"{__package__}.commands.{module}")
    except ModuleNotFoundError as exc:
        if exc.name not in _WORKER_EXTRA:
            raise
        # An install for API processes only (the recorder) lacks the workers' dependencies.
        raise UsageError(f"this command needs {exc.name}: pip install "
                         "'fraiseql-observability[workers]'") from None
    handler: Handler = getattr(commands, function)
    return handler


def _add(sub: Any, name: str, command: str, help_text: str, description: str,
         epilog: str | None = None) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=description,
                                                     epilog=epilog)
    parser.set_defaults(command_ref=command)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fraiseql-cli",
        description="Query observability for GraphQL-on-PostgreSQL APIs (FraiseQL).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML configuration file (default: fraiseql.toml if present)")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level, any case (default INFO); logs go to stderr, passwords "
                             "masked. Goes before the command: fraiseql-cli --log-level debug stream")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)

    p = _add(sub, "migrate", "metricsdb:cmd_migrate", "create or upgrade the metrics schema and roles",
             "Create or upgrade the fraiseql_metrics schema, its partitions and the collector, "
             "analyst and maintainer roles. Idempotent: running it again applies nothing new.")
    p.add_argument("--database", metavar="URL", help="metrics database URL (default: configuration)")

    p = _add(sub, "stream", "streams:cmd_stream", "run one stream worker (librdkafka loop or Faust app)",
             "Consume fraiseql.query-events, aggregate event-time 1-minute windows per pattern and "
             "region, publish closed windows to fraiseql.query-rollups. Run more processes (same "
             "streams.group_id) to scale, up to one per partition; give each its own "
             "--metrics-port on one host. Logs its Kafka address, topics and group at start and a "
             "health line a minute; waits up to kafka.startup_timeout_secs for the broker. "
             "--engine faust runs the same processing as a Faust worker (also: faust -A "
             "fraiseql_obs_streams.faust_app worker).",
             epilog=_SETTINGS_EPILOG)
    p.add_argument("--engine", choices=("native", "faust"), default=None,
                   help="what moves the messages (default: streams.engine, native): native, a "
                        "librdkafka consumer loop, or faust, a Faust app's agent; both exactly once")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="port of /metrics (default: streams.metrics_port, 9101; 0: pick a free "
                        "port and log it); bound on metrics_bind (default 127.0.0.1)")

    p = _add(sub, "sink", "sinks:cmd_sink", "run one sink worker",
             "Write rollups and table statistics from Kafka to the metrics database in batched, "
             "idempotent transactions; offsets are committed only after the data is durable. "
             "Logs its Kafka address, topics, group and (masked) database at start and a health "
             "line a minute; waits up to kafka.startup_timeout_secs for the broker; refuses a "
             "metrics database that is not migrated.",
             epilog=_SETTINGS_EPILOG)
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="port of /metrics (default: sinks.metrics_port, 9102; 0: pick a free "
                        "port and log it); bound on metrics_bind (default 127.0.0.1)")

    p = _add(sub, "otlp", "otlp:cmd_otlp", "receive OpenTelemetry database spans (OTLP/HTTP)",
             "Serve POST /v1/traces (OTLP/HTTP, protobuf or JSON): PostgreSQL client spans become "
             "query events (normalized SQL, sampled like the recorder) on the events topic; "
             "GET /metrics on the same port. 400 for bad payloads, 503 + Retry-After when full.")
    p.add_argument("--listen", default="127.0.0.1:4318", metavar="HOST:PORT",
                   help="address to serve (default 127.0.0.1:4318, the OTLP/HTTP port)")
    p.add_argument("--buffer-size", type=int, default=100_000,
                   help="query events held before answering 503 (default 100000)")
    p.add_argument("--max-body-bytes", type=int, default=4 << 20,
                   help="largest request body, also once gunzipped (default 4 MiB; more: 413)")
    p.add_argument("--max-concurrent", type=int, default=4,
                   help="requests decoded at once (default 4; more: 503)")
    p.add_argument("--max-connections", type=int, default=256,
                   help="open connections served (default 256; more are closed)")

    p = _add(sub, "stats", "analyzer:cmd_stats", "per-pattern, per-region latency statistics",
             "Per pattern and region over closed windows: weighted count, errors, mean, p50, p95, "
             "p99 (percentiles from merged sketches).")
    p.add_argument("--database", metavar="URL", help="metrics database URL (default: configuration)")
    p.add_argument("--window", default="1h", type=parse_window, metavar="N[smhdw]",
                   help="period to report, e.g. 90m, 3h, 24h, 2d (default 1h)")
    p.add_argument("--end", type=parse_time, default=None, help="end of the period (default now)")
    p.add_argument("--format", default="text", choices=["text", "json"])
    p.add_argument("--all-regions", action="store_true",
                   help="one line per pattern over every region (region '*'): global counts and "
                        "percentiles from sketches merged across regions")

    p = _add(sub, "loadgen", "producers:cmd_loadgen", "generate a synthetic FraiseQL workload",
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
    p.add_argument("--format", default="text", choices=["text", "json"],
                   help="text: a short summary (default); json: every pattern's totals. "
                        "Progress goes to stderr every few seconds either way")

    p = _add(sub, "table-stats", "producers:cmd_table_stats", "publish application-table statistics",
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

    p = _add(sub, "replay", "streams:cmd_replay", "recompute rollups from the events topic (backfill)",
             "Recompute the rollups of every window lying entirely in [--from, --to) from the "
             "events topic and publish them to the rollups topic, where the sink upserts them by "
             "id: replaying twice, or over windows the live pipeline wrote, changes nothing. "
             "Shows progress with rate and ETA.")
    p.add_argument("--from", dest="start", type=parse_time, required=True, metavar="TIME",
                   help="ISO-8601 time, 'now' or -N[s|m|h|d|w] (--from -2h or --from=-2h)")
    p.add_argument("--to", type=parse_time, default=None, metavar="TIME", help="default: now")

    p = _add(sub, "retention", "metricsdb:cmd_retention", "drop metrics older than retention_days",
             "Drop whole daily partitions older than retention_days (never deletes row by row).")
    p.add_argument("--database", metavar="URL", help="metrics database URL (default: configuration)")

    p = _add(sub, "analyze", "analyzer:cmd_analyze", "suggest schema changes, with evidence",
             "Analyze the workload in the metrics database: per pattern queries/day, p95/p99 from "
             "merged sketches, rows returned, table statistics; suggest denormalized columns, "
             "indexes, materialized views and indexes to drop, ranked by query time saved per "
             "day. Speedups come from HypoPG on --validate-with (corrected with observed rows) "
             "or from the cost model. Exit 1 when a database cannot be reached.")
    p.add_argument("--database", metavar="URL", help="metrics database URL (default: configuration)")
    p.add_argument("--window", default=None, type=parse_window, metavar="N[smhdw]",
                   help="period to analyze, e.g. 12h, 2d, 7d (default: analysis.window, 7d)")
    p.add_argument("--end", type=parse_time, default=None, help="end of the period (default now)")
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

    p = _add(sub, "schedule", "analyzer:cmd_schedule", "run the analyzer on its cron schedule, forever",
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

    p = _add(sub, "diff-analysis", "analyzer:cmd_diff_analysis", "compare two analyses",
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
        _handler(args.command_ref)(args)
    except (UsageError, ConfigError) as exc:
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
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
