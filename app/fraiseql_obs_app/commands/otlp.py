"""``fraiseql-cli otlp``: the OTLP/HTTP receiver (OpenTelemetry database spans → query events)."""

from __future__ import annotations

import argparse

from fraiseql_observability.errors import UsageError

from ..common import log, settings_from, stop_event

__all__ = ["cmd_otlp", "parse_listen"]


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:4318`` for IPv6; ``:4318`` means 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:4318")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def cmd_otlp(args: argparse.Namespace) -> None:
    try:
        # The receiver's protobuf classes come from the `otlp` extra; the recorder does not.
        from fraiseql_obs_producers.otlp_server import OtlpReceiver, serve  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith(("opentelemetry", "google")):
            raise
        raise UsageError(f"the otlp command needs {exc.name}: pip install "
                         "'fraiseql-observability[otlp]'") from None
    from fraiseql_obs_producers.recorder import Recorder  # noqa: PLC0415

    host, port = parse_listen(args.listen)
    for flag, value in (("--max-body-bytes", args.max_body_bytes),
                        ("--max-concurrent", args.max_concurrent),
                        ("--max-connections", args.max_connections)):
        if value < 1:
            raise UsageError(f"{flag} {value}: must be >= 1")
    # Running the receiver is the decision to record: `enabled` (meant for API processes that
    # embed the recorder) is implied. Sampling (sample_rate, slow_query_ms, always_keep_errors),
    # batching, region and topic come from the configuration like any recorder's; the buffer is
    # the receiver's own flag, since it absorbs whole export batches.
    overrides = {"enabled": True, "metrics.buffer_size": args.buffer_size,
                 "metrics.metrics_port": 0}
    settings = settings_from(args, **overrides)
    recorder = Recorder(settings, instance=f"otlp:{host}:{port}").start()
    receiver = OtlpReceiver(recorder, max_body_bytes=args.max_body_bytes,
                            max_concurrent=args.max_concurrent)
    log.info("recording PostgreSQL spans to %s (region %s, sample_rate %g)",
             settings.kafka.events_topic, settings.kafka.region, settings.sample_rate)
    try:
        serve(receiver, host, port, stop_event(), max_connections=args.max_connections)
    except OSError as exc:
        recorder.close(timeout=1.0)
        raise UsageError(f"--listen {args.listen}: {exc.strerror or exc}") from None
