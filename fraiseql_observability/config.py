"""Typed configuration: one TOML file plus environment overrides (SPEC §4).

Precedence is environment > file > defaults. The environment is read in exactly one place,
:func:`load_settings`, which only the CLI entry point calls; library code receives a
:class:`Settings` object. Invalid values raise :class:`ConfigError` with one line naming the key,
the value and the allowed range; database passwords never appear in that line.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .errors import ConfigError
from .secrets import mask_secrets, mask_url
from .timeutil import DURATION_FORMAT, parse_duration

__all__ = [
    "ENV_OVERRIDES",
    "WINDOWS",
    "WINDOW_ALLOWED",
    "AnalysisSettings",
    "DatabaseSettings",
    "KafkaSettings",
    "MetricsSettings",
    "Settings",
    "SinkSettings",
    "StreamSettings",
    "load_settings",
    "window_to_seconds",
]

DEFAULT_CONFIG_FILE = "fraiseql.toml"

# The SPEC's documented windows; any other N[smhdw] (3h, 90m, 2d) is valid too (SPEC §4).
WINDOWS: dict[str, int] = {
    "1h": 3600,
    "6h": 6 * 3600,
    "12h": 12 * 3600,
    "1d": 86400,
    "7d": 7 * 86400,
    "30d": 30 * 86400,
    "90d": 90 * 86400,
}
WINDOW_ALLOWED = f"{DURATION_FORMAT}; the documented ones: {', '.join(WINDOWS)}"


def window_to_seconds(window: str) -> int:
    """Seconds in an analysis window such as ``7d`` or ``90m`` (any ``N[smhdw]``)."""
    try:
        return int(parse_duration(window).total_seconds())
    except ValueError:
        raise ConfigError(f"window = {window!r}: allowed {WINDOW_ALLOWED}") from None


def _field(default: Any, *, ge: float | None = None, le: float | None = None,
           gt: float | None = None) -> Any:
    """A numeric field whose allowed range is also stated in words for error messages."""
    if ge is not None and le is not None:
        allowed = f"{ge:g}..{le:g}"
    else:
        low = f"> {gt:g}" if gt is not None else (f">= {ge:g}" if ge is not None else "")
        high = f"<= {le:g}" if le is not None else ""
        allowed = " and ".join(part for part in (low, high) if part)
    return Field(default, ge=ge, le=le, gt=gt, json_schema_extra={"allowed": allowed})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricsSettings(_Section):
    """The API-side recorder's buffer (SPEC §4 ``[observability.metrics]``)."""

    buffer_size: int = _field(100, ge=1, le=10_000_000)
    flush_interval_secs: float = _field(60.0, gt=0, le=86400)
    batch_size: int = _field(100, ge=1, le=1_000_000)
    # One QueryEventBatch message per target partition and flush (False: one message per event).
    batch_messages: bool = True
    # Largest batch message the recorder builds: below the broker's 1 MB message.max.bytes default.
    max_message_bytes: int = _field(900_000, ge=1024, le=100_000_000)
    slow_query_ms: float = _field(1000.0, ge=0)  # always keep queries slower than this
    always_keep_errors: bool = True
    metrics_port: int = _field(0, ge=0, le=65535)  # 0: the API process serves no /metrics itself


class DatabaseSettings(_Section):
    """The metrics database (never the application database)."""

    url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/postgres"),
        json_schema_extra={"allowed": "a postgresql:// URL"},
    )
    pool_size: int = _field(10, ge=1, le=100)
    timeout_secs: float = _field(30.0, gt=0, le=3600)

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if not raw.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        return value


class AnalysisSettings(_Section):
    min_frequency: float = _field(1000.0, ge=0)
    min_speedup: float = _field(5.0, ge=1)
    min_selectivity: float = _field(0.1, ge=0, le=1)
    window: str = Field("7d", json_schema_extra={"allowed": WINDOW_ALLOWED})
    schedule: str = Field("0 2 * * 1", json_schema_extra={"allowed": "a 5-field cron expression"})
    reports_dir: str = "reports"
    metrics_port: int = _field(9104, ge=0, le=65535)

    @field_validator("window")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)  # its ValueError names the expected format
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        # Imported here, not at the top: pydantic validates a schedule only when one is configured,
        # and an API process that loads settings for its recorder must not pay for croniter.
        from croniter import croniter  # noqa: PLC0415

        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError("not a 5-field cron expression")
        return value


# host:port, an optional listener scheme (SSL://), a bracketed IPv6 host ([::1]:9092).
_HOST_PORT = re.compile(r"(?:[A-Za-z_]+://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}")


class KafkaSettings(_Section):
    bootstrap_servers: str = Field("127.0.0.1:9092", min_length=1,
                                   json_schema_extra={"allowed": "host:port[,host:port...]"})
    region: str = Field("local", min_length=1, max_length=64,
                        json_schema_extra={"allowed": "1..64 characters"})
    # A name, or a regex starting with "^" to consume several (mirrored regional) event topics,
    # e.g. "^([a-z0-9-]+\\.)?fraiseql\\.query-events$".
    events_topic: str = "fraiseql.query-events"
    rollups_topic: str = "fraiseql.query-rollups"
    table_stats_topic: str = "fraiseql.table-stats"
    suggestions_topic: str = "fraiseql.suggestions"
    dead_letters_topic: str = "fraiseql.dead-letters"
    partitions: int = _field(6, ge=1, le=10_000)
    replication_factor: int = _field(1, ge=1, le=10)
    # How long a worker (stream, sink) waits at start-up for an unreachable broker, logging why
    # every few seconds, before it exits with code 1: a supervisor then shows the reason, instead
    # of a process that looks alive and does nothing. One-shot commands do not wait.
    startup_timeout_secs: float = _field(60.0, ge=0, le=3600)

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        # librdkafka only says "Broker transport failure" after its timeout for a malformed
        # address; checking the shape at start-up turns a typo into a one-line error at once.
        servers = [part.strip() for part in value.split(",")]
        for server in servers:
            if not _HOST_PORT.fullmatch(server) or not 1 <= int(server.rpartition(":")[2]) <= 65535:
                raise ValueError(f"{server!r} is not host:port (port 1..65535)")
        return ",".join(servers)


class StreamSettings(_Section):
    """Event-time windowing of the stream workers (``[observability.streams]``)."""

    window_secs: int = _field(60, ge=1, le=86400)
    # An API process may hold an event for flush_interval_secs (default 60) before sending it, so
    # the grace period must exceed that, or slow-to-flush instances' events arrive late.
    grace_secs: float = _field(90.0, ge=0, le=86400)
    # Events further ahead of their message's (broker) timestamp are rejected: 15 minutes lets a
    # host whose clock runs 10 minutes fast be counted in its own windows.
    max_future_secs: float = _field(900.0, ge=0)
    max_age_days: float = _field(365.0, gt=0)  # events older than this are rejected as absurd
    # A caught-up partition silent this long moves its event time to (clock - idle_secs).
    idle_secs: float = _field(15.0, gt=0, le=86400)
    # Late events of one arrival slot this long fold into one correction per window (streams/DESIGN.md).
    late_slot_secs: int = _field(60, ge=1, le=3600)
    batch_size: int = _field(5000, ge=1, le=1_000_000)
    batch_timeout_secs: float = _field(0.5, gt=0, le=60)
    group_id: str = "fraiseql-stream"
    metrics_port: int = _field(9101, ge=0, le=65535)  # 0: a free port, logged at start
    # What moves the messages: "native" (a librdkafka loop) or "faust" (a Faust app's agent); the
    # processing is the same code (streams/DESIGN.md).
    engine: Literal["native", "faust"] = "native"


class SinkSettings(_Section):
    batch_size: int = _field(2000, ge=1, le=1_000_000)
    batch_timeout_secs: float = _field(1.0, gt=0, le=60)
    group_id: str = "fraiseql-sink"
    metrics_port: int = _field(9102, ge=0, le=65535)  # 0: a free port, logged at start


class Settings(_Section):
    """The whole ``[observability]`` table."""

    enabled: bool = False
    sample_rate: float = _field(0.1, ge=0, le=1)
    # Address every process serves /metrics on: loopback by default; "0.0.0.0" in containers so
    # Prometheus and Kubernetes probes can reach it.
    metrics_bind: str = Field("127.0.0.1", min_length=1, json_schema_extra={"allowed": "an IP address"})
    retention_days: int = _field(30, ge=1, le=3650)
    # Minute-level rollups are kept this long (never longer than retention_days); hourly rollups,
    # whose percentiles are the same merged sketches, for retention_days (sinks/DESIGN.md).
    minute_retention_days: int = _field(3, ge=1, le=3650)
    metrics: MetricsSettings = MetricsSettings()
    database: DatabaseSettings = DatabaseSettings()
    analysis: AnalysisSettings = AnalysisSettings()
    kafka: KafkaSettings = KafkaSettings()
    streams: StreamSettings = StreamSettings()
    sinks: SinkSettings = SinkSettings()

    @property
    def database_url(self) -> str:
        return self.database.url.get_secret_value()


# Environment variable -> dotted key below [observability] (SPEC §4). The names are irregular on
# purpose (they are the FraiseQL framework's), so they are mapped explicitly.
ENV_OVERRIDES: dict[str, str] = {
    "FRAISEQL_OBSERVABILITY_ENABLED": "enabled",
    "FRAISEQL_OBSERVABILITY_SAMPLE_RATE": "sample_rate",
    "FRAISEQL_METRICS_RETENTION_DAYS": "retention_days",
    "FRAISEQL_METRICS_DATABASE_URL": "database.url",
    "FRAISEQL_METRICS_DB_POOL_SIZE": "database.pool_size",
    "FRAISEQL_METRICS_DB_TIMEOUT_SECS": "database.timeout_secs",
    "FRAISEQL_KAFKA_BOOTSTRAP_SERVERS": "kafka.bootstrap_servers",
    "FRAISEQL_REGION": "kafka.region",
}


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for name in parents:
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child
    node[leaf] = value


def _allowed(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """Walk the model along an error location to the field's stated allowed range."""
    current: Any = model
    extra: Any = None
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not isinstance(part, str) or fields is None or part not in fields:
            break
        info = fields[part]
        extra = info.json_schema_extra
        current = info.annotation
    if isinstance(extra, dict) and "allowed" in extra:
        return str(extra["allowed"])
    return "see SPEC §4"


_SECRET_KEY = re.compile(r"(?i)pass|secret|token|credential|url|dsn")


def _known_keys(model: Any, parents: tuple[int | str, ...]) -> list[str]:
    for part in parents:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return []
        model = fields[part].annotation
    return list(getattr(model, "model_fields", {}))


def _describe(error: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    loc = tuple(error["loc"])
    key = "observability." + ".".join(str(p) for p in loc)
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        # an unknown key may be a misspelt secret ("pasword = ..."): never echo such a value
        if isinstance(value, dict):
            shown = "(a table)"
        elif _SECRET_KEY.search(str(loc[-1])):
            shown = "***"
        else:
            shown = mask_secrets(repr(value))
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
        known = ", ".join(_known_keys(Settings, loc[:-1]))
        return f"{key} = {shown}: unknown key (allowed keys: {known})"
    if "url" in loc:
        # repr keeps the message on one line even when the value holds a newline
        shown = repr(mask_url(str(value.get_secret_value() if isinstance(value, SecretStr)
                                  else value)))
    else:
        shown = mask_secrets(repr(value))
    origin = sources.get(".".join(str(p) for p in loc))
    where = f" (from {origin})" if origin else ""
    return (f"{key} = {shown}{where}: allowed {_allowed(Settings, loc)}"
            f" ({mask_secrets(str(error['msg']))})")


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the TOML file, apply environment then explicit overrides, validate.

    ``path`` None means ``fraiseql.toml`` in the working directory if it exists. ``overrides`` are
    dotted keys from command-line flags (they win over everything).
    """
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        try:
            with open(path, "rb") as fh:
                document = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"--config {path}: file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
        section = document.get("observability", {})
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: [observability] must be a table")
        tree = section
    sources: dict[str, str] = {}
    for env_name, dotted in ENV_OVERRIDES.items():
        if env_name in environ:
            _set_dotted(tree, dotted, environ[env_name])
            sources[dotted] = env_name
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, dotted, value)
            sources[dotted] = "command line"
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more)" if more else ""
        raise ConfigError("invalid configuration: " + _describe(first, sources) + suffix) from None
