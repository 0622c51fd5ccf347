"""The stream stage's commands: ``stream`` (one worker) and ``replay`` (backfill)."""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime

from fraiseql_obs_streams.replay import replay, terminal_progress
from fraiseql_obs_streams.worker import run_stream_worker
from fraiseql_observability.errors import UsageError
from fraiseql_observability.kafka import require_topics

from ..common import settings_from, stop_event


def cmd_stream(args: argparse.Namespace) -> None:
    settings = settings_from(args, **{"streams.metrics_port": args.metrics_port,
                                       "streams.engine": args.engine})
    if settings.streams.engine == "faust":
        from fraiseql_obs_streams.faust_app import run_faust_worker  # noqa: PLC0415 (loads Faust)

        run_faust_worker(settings, loglevel=logging.getLevelName(logging.getLogger().level).lower())
        return
    run_stream_worker(settings, stop=stop_event())


def cmd_replay(args: argparse.Namespace) -> None:
    settings = settings_from(args)
    end = args.to or datetime.now(UTC)
    if end <= args.start:
        raise UsageError(f"--to {end.isoformat()} must be after --from {args.start.isoformat()}")
    kafka = settings.kafka
    if not kafka.events_topic.startswith("^"):
        # Within seconds: an unreachable broker (address and setting) or a missing events topic
        # (and which process creates it), instead of the replay's own 30 s metadata wait.
        require_topics(kafka, [kafka.events_topic])
    report = replay(settings, args.start, end, progress=terminal_progress(), stop=stop_event())
    print(report.summary())
