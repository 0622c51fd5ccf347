"""The analyzer's commands: ``stats``, ``analyze``, ``schedule`` and ``diff-analysis``."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fraiseql_obs_analyzer.analyze import AnalyzeOptions, run_analysis
from fraiseql_obs_analyzer.diff import (
    diff_documents,
    load_document,
    render_diff_json,
    render_diff_text,
)
from fraiseql_obs_analyzer.errors import AnalyzerError
from fraiseql_obs_analyzer.report import render_json, render_sql, render_text
from fraiseql_obs_analyzer.schedule import run_once, run_scheduler
from fraiseql_obs_analyzer.stats import (
    pattern_stats_all_regions,
    pattern_stats_at_level,
    render_stats_json,
    render_stats_text,
)
from fraiseql_observability.config import Settings, window_to_seconds
from fraiseql_observability.db import require_migrated
from fraiseql_observability.metrics import serve_metrics

from ..common import settings_from, stop_event, validate_url


def _require_migrated(settings: Settings, command: str) -> None:
    """One line naming `fraiseql-cli migrate` instead of "relation … does not exist" and a caret."""
    require_migrated(settings.database_url, application_name=f"fraiseql-{command}",
                     connect_timeout=settings.database.timeout_secs)


def cmd_stats(args: argparse.Namespace) -> None:
    settings = settings_from(args, **{"database.url": args.database})
    _require_migrated(settings, "stats")
    end = args.end or datetime.now(UTC)
    start = end - timedelta(seconds=window_to_seconds(args.window))
    # Whole hours come from the hourly level for long periods (same merged sketches, cheaper).
    if args.all_regions:  # one line per pattern: counts summed, sketches merged across regions
        report = pattern_stats_all_regions(settings.database_url, start, end)
    else:
        report = pattern_stats_at_level(settings.database_url, start, end)
    out = render_stats_json(report) if args.format == "json" else render_stats_text(report)
    print(out)


def cmd_analyze(args: argparse.Namespace) -> None:
    settings = settings_from(args, **{
        "database.url": args.database,
        "analysis.window": args.window,
        "analysis.min_frequency": args.min_frequency,
        "analysis.min_speedup": args.min_speedup,
        "analysis.min_selectivity": args.min_selectivity,
    })
    _require_migrated(settings, "analyze")
    analysis = run_analysis(settings.database_url, AnalyzeOptions(
        window=settings.analysis.window,
        end=args.end,
        min_frequency=settings.analysis.min_frequency,
        min_speedup=settings.analysis.min_speedup,
        min_selectivity=settings.analysis.min_selectivity,
        types=frozenset(args.type) if args.type else None,
        table=args.table,
        validate_with=validate_url(args.validate_with, "--validate-with"),
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


def cmd_schedule(args: argparse.Namespace) -> None:
    settings = settings_from(args, **{"database.url": args.database})
    validate_with = validate_url(args.validate_with, "--validate-with")
    if args.once:
        result = run_once(settings, validate_with=validate_with)
        for path in result.reports:
            print(path)
        if not result.ok:
            raise AnalyzerError("the analysis ran, but: " + "; ".join(result.errors))
        return
    serve_metrics(settings.analysis.metrics_port, settings.metrics_bind)
    run_scheduler(settings, stop=stop_event(), validate_with=validate_with)


def cmd_diff_analysis(args: argparse.Namespace) -> None:
    diff = diff_documents(load_document(args.a), load_document(args.b))
    print(render_diff_json(diff) if args.format == "json" else render_diff_text(diff))
