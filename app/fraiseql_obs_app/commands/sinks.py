"""The sink stage's command: ``sink`` (one worker)."""

from __future__ import annotations

import argparse

from fraiseql_obs_sinks.worker import run_sink
from fraiseql_observability.metrics import serve_worker_metrics

from ..common import settings_from, stop_event


def cmd_sink(args: argparse.Namespace) -> None:
    settings = settings_from(args, **{"sinks.metrics_port": args.metrics_port})
    serve_worker_metrics(settings.sinks.metrics_port, settings.metrics_bind,
                         setting="--metrics-port or [observability.sinks] metrics_port")
    run_sink(settings, stop=stop_event())
