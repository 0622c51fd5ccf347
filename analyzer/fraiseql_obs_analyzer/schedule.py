"""The scheduled analyzer (``fraiseql-cli schedule``): one analysis per cron tick, forever.

Each run (:func:`run_once`):

0. brings the per-day sketch cache up to date (:mod:`fraiseql_obs_analyzer.cache`; also hourly between runs);
1. analyzes the configured window of the metrics database (``[observability.analysis]``);
2. writes ``analysis-<UTC time>.json`` and ``.sql`` (and ``.txt``) to ``analysis.reports_dir``,
   each atomically (a temporary file renamed into place: a reader never sees half a report);
3. sets ``fraiseql_analysis_suggestions_high_priority`` (served on ``analysis.metrics_port``);
4. records the run and its suggestions in the metrics database (``analysis_runs``,
   ``suggestions``, ``applied_changes``);
5. publishes the suggestions that were not in the previous run to ``kafka.suggestions_topic``;
6. runs retention (drops expired daily partitions).

A failing step is logged and counted (``fraiseql_analysis_runs_total{outcome="failed"}``) and the
scheduler waits for the next tick: a metrics database that is down on Monday 02:00 must not stop
next week's analysis. The schedule is evaluated in UTC.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from croniter import croniter

from fraiseql_observability.config import Settings

from .analyze import AnalyzeOptions, run_analysis
from .cache import refresh_sketch_cache
from .metrics import HIGH_PRIORITY, LAST_RUN, NEXT_RUN, RUN_SECONDS, RUNS, SUGGESTIONS
from .publish import publish_suggestions
from .records import PRIORITIES, Analysis
from .report import render_json, render_sql, render_text
from .store import store_run

__all__ = ["RunResult", "next_run", "run_once", "run_scheduler"]

log = logging.getLogger(__name__)

# Sleep in slices so a stop request or a clock change is noticed promptly.
MAX_SLEEP_SECS = 60.0
CACHE_REFRESH_SECS = 3600.0


@dataclass(frozen=True, slots=True)
class RunResult:
    analysis: Analysis
    reports: tuple[Path, ...]
    run_id: str | None
    published: int
    dropped_partitions: tuple[str, ...]
    errors: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


def next_run(schedule: str, after: datetime) -> datetime:
    """The first tick of the 5-field cron ``schedule`` strictly after ``after`` (UTC)."""
    nxt = croniter(schedule, after.astimezone(UTC)).get_next(datetime)
    return nxt if nxt.tzinfo else nxt.replace(tzinfo=UTC)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text if text.endswith("\n") else text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_reports(settings: Settings, analysis: Analysis) -> tuple[Path, ...]:
    folder = Path(settings.analysis.reports_dir)
    stamp = analysis.analyzed_at.strftime("%Y%m%dT%H%M%SZ")
    written = []
    for suffix, text in (("json", render_json(analysis)), ("sql", render_sql(analysis)),
                         ("txt", render_text(analysis))):
        path = folder / f"analysis-{stamp}.{suffix}"
        _write_atomic(path, text)
        written.append(path)
    return tuple(written)


def _set_gauges(analysis: Analysis) -> int:
    high = sum(1 for s in analysis.suggestions if s.priority in ("critical", "high"))
    HIGH_PRIORITY.set(high)
    for priority in PRIORITIES:
        SUGGESTIONS.labels(priority).set(sum(1 for s in analysis.suggestions
                                             if s.priority == priority))
    return high


def run_once(settings: Settings, *, validate_with: str | None = None,
             now: datetime | None = None, retention: bool = True) -> RunResult:
    """One scheduled analysis with all its side effects (see the module docstring)."""
    from fraiseql_observability.metricsdb.retention import drop_expired_partitions  # noqa: PLC0415

    started = time.monotonic()
    url = settings.database_url
    errors: list[str] = []
    try:
        refresh_sketch_cache(url, retention_days=settings.retention_days, now=now)
    except Exception as exc:  # the analysis still works, only slower
        errors.append(f"analysis cache: {exc}")
    analysis = run_analysis(url, AnalyzeOptions(
        window=settings.analysis.window,
        min_frequency=settings.analysis.min_frequency,
        min_speedup=settings.analysis.min_speedup,
        min_selectivity=settings.analysis.min_selectivity,
        validate_with=validate_with,
    ), now=now)
    reports: tuple[Path, ...] = ()
    try:
        reports = _write_reports(settings, analysis)
    except OSError as exc:
        errors.append(f"writing reports to {settings.analysis.reports_dir}: {exc}")
    high = _set_gauges(analysis)
    run_id: str | None = None
    published = 0
    try:
        stored = store_run(url, analysis)
        run_id = str(stored.run_id)
        fresh = [s for s in analysis.suggestions if s.id in stored.new_ids]
        published = publish_suggestions(settings.kafka, fresh, stored.run_id,
                                        analysis.analyzed_at)
    except Exception as exc:  # logged and counted; the next tick tries again
        errors.append(str(exc))
    dropped: tuple[str, ...] = ()
    if retention:
        try:
            minute_days = min(settings.minute_retention_days, settings.retention_days)
            dropped = tuple(drop_expired_partitions(url, settings.retention_days,
                                                    minute_retention_days=minute_days))
        except Exception as exc:
            errors.append(f"retention: {exc}")
    RUN_SECONDS.set(time.monotonic() - started)
    if errors:
        RUNS.labels("failed").inc()
        for error in errors:
            log.error("analysis run: %s", error)
    else:
        RUNS.labels("ok").inc()
        LAST_RUN.set(time.time())
    log.info("analysis %s: %d suggestion(s), %d high priority, %d published, %d partition(s) "
             "dropped, reports %s", run_id or "(not stored)", len(analysis.suggestions), high,
             published, len(dropped), ", ".join(str(p) for p in reports) or "-")
    return RunResult(analysis, reports, run_id, published, dropped, tuple(errors))


def run_scheduler(settings: Settings, *, stop: threading.Event, validate_with: str | None = None
                  ) -> None:
    """Run :func:`run_once` at every tick of ``settings.analysis.schedule`` until ``stop``."""
    schedule = settings.analysis.schedule
    cache_due = 0.0
    while not stop.is_set():
        due = next_run(schedule, datetime.now(UTC))
        NEXT_RUN.set(due.timestamp())
        log.info("next analysis at %s (schedule %r)", due.isoformat(), schedule)
        while not stop.is_set():
            remaining = (due - datetime.now(UTC)).total_seconds()
            if remaining <= 0:
                break
            if time.monotonic() >= cache_due:
                # Keep the per-day sketch cache current between analyses, so that an ad-hoc
                # `analyze` finds yesterday cached too (cheap when nothing changed).
                cache_due = time.monotonic() + CACHE_REFRESH_SECS
                try:
                    refresh_sketch_cache(settings.database_url,
                                         retention_days=settings.retention_days)
                except Exception as exc:
                    log.warning("analysis cache refresh failed: %s", exc)
            stop.wait(min(remaining, MAX_SLEEP_SECS))
        if stop.is_set():
            break
        try:
            run_once(settings, validate_with=validate_with)
        except Exception as exc:  # the analysis itself failed (database down …)
            RUNS.labels("failed").inc()
            log.error("analysis failed: %s", exc)
