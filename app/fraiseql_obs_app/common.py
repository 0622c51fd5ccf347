"""What every command shares: settings from the command line, the stop signal, times, URLs.

The environment is read here and nowhere else (:func:`settings_from` →
:func:`fraiseql_observability.config.load_settings`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from datetime import UTC, datetime
from typing import Any

from fraiseql_observability.config import WINDOWS, Settings, load_settings
from fraiseql_observability.errors import ConfigError
from fraiseql_observability.timeutil import parse_duration

__all__ = ["log", "parse_time", "parse_window", "settings_from", "stop_event", "validate_url"]

log = logging.getLogger("fraiseql")


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Defaults < ``--config`` file < environment < the command's own flags (``overrides``)."""
    return load_settings(args.config, overrides=overrides)


def stop_event() -> threading.Event:
    """An event set by SIGTERM/SIGINT so workers finish their batch and close cleanly."""
    stop = threading.Event()

    def _handler(signum: int, _frame: Any) -> None:
        log.info("signal %d received: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def parse_time(text: str) -> datetime:
    """ISO-8601 (naive means UTC), or relative like ``-2h``/``-90m``/``-7d``/``-1w``, or ``now``."""
    text = text.strip()
    if text == "now":
        return datetime.now(UTC)
    if text.startswith("-") and text[1:2].isdigit() and not text[-1:].isdigit():
        try:
            return datetime.now(UTC) - parse_duration(text[1:])
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected ISO-8601 time, 'now', or -N[s|m|h|d|w]"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_window(text: str) -> str:
    """An argparse type for ``--window``: any ``N[smhdw]`` (3h, 90m, 2d), kept as written."""
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; the documented ones: {', '.join(WINDOWS)}") from None
    return text


def validate_url(url: str | None, flag: str) -> str | None:
    """``url`` if it is a PostgreSQL URL (or None); a usage error naming ``flag`` otherwise."""
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{flag}: expected a postgresql:// URL")
    return url
