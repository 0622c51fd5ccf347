"""Configuration: SPEC §4 defaults, file < environment < command line, one-line errors, no secrets."""

from __future__ import annotations

import re
import traceback
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from fraiseql_observability.config import (
    ENV_OVERRIDES,
    WINDOWS,
    Settings,
    load_settings,
    window_to_seconds,
)
from fraiseql_observability.errors import ConfigError

FAST = settings(max_examples=80, deadline=None)

# SPEC §4, copied by hand: the environment variables and the keys they override.
SPEC_ENV = {
    "FRAISEQL_OBSERVABILITY_ENABLED": "enabled",
    "FRAISEQL_OBSERVABILITY_SAMPLE_RATE": "sample_rate",
    "FRAISEQL_METRICS_RETENTION_DAYS": "retention_days",
    "FRAISEQL_METRICS_DATABASE_URL": "database.url",
    "FRAISEQL_METRICS_DB_POOL_SIZE": "database.pool_size",
    "FRAISEQL_METRICS_DB_TIMEOUT_SECS": "database.timeout_secs",
    "FRAISEQL_KAFKA_BOOTSTRAP_SERVERS": "kafka.bootstrap_servers",
    "FRAISEQL_REGION": "kafka.region",
}

# SPEC §4 defaults (database.url is "postgresql://..." there: checked by scheme only).
SPEC_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "sample_rate": 0.1,
    "retention_days": 30,
    "metrics.buffer_size": 100,
    "metrics.flush_interval_secs": 60,
    "metrics.batch_size": 100,
    "database.pool_size": 10,
    "database.timeout_secs": 30,
    "analysis.min_frequency": 1000,
    "analysis.min_speedup": 5.0,
    "analysis.min_selectivity": 0.1,
    "analysis.window": "7d",
    "analysis.schedule": "0 2 * * 1",
    "kafka.bootstrap_servers": "127.0.0.1:9092",
    "kafka.region": "local",
}

# Numeric ranges: (dotted key, low, low inclusive, high, high inclusive, integer?). The SPEC states
# sample_rate 0..1 and pool_size 1..100; the others are the project's documented limits.
RANGES: list[tuple[str, float | None, bool, float | None, bool, bool]] = [
    ("sample_rate", 0, True, 1, True, False),
    ("retention_days", 1, True, 3650, True, True),
    ("minute_retention_days", 1, True, 3650, True, True),
    ("metrics.buffer_size", 1, True, 10_000_000, True, True),
    ("metrics.flush_interval_secs", 0, False, 86400, True, False),
    ("metrics.batch_size", 1, True, 1_000_000, True, True),
    ("metrics.max_message_bytes", 1024, True, 100_000_000, True, True),
    ("metrics.slow_query_ms", 0, True, None, False, False),
    ("metrics.metrics_port", 0, True, 65535, True, True),
    ("database.pool_size", 1, True, 100, True, True),
    ("database.timeout_secs", 0, False, 3600, True, False),
    ("analysis.min_frequency", 0, True, None, False, False),
    ("analysis.min_speedup", 1, True, None, False, False),
    ("analysis.min_selectivity", 0, True, 1, True, False),
    ("analysis.metrics_port", 0, True, 65535, True, True),
    ("kafka.partitions", 1, True, 10_000, True, True),
    ("kafka.replication_factor", 1, True, 10, True, True),
    ("kafka.startup_timeout_secs", 0, True, 3600, True, False),
    ("streams.window_secs", 1, True, 86400, True, True),
    ("streams.grace_secs", 0, True, 86400, True, False),
    ("streams.max_future_secs", 0, True, None, False, False),
    ("streams.max_age_days", 0, False, None, False, False),
    ("streams.idle_secs", 0, False, 86400, True, False),
    ("streams.late_slot_secs", 1, True, 3600, True, True),
    ("streams.batch_size", 1, True, 1_000_000, True, True),
    ("streams.batch_timeout_secs", 0, False, 60, True, False),
    ("streams.metrics_port", 0, True, 65535, True, True),
    ("sinks.batch_size", 1, True, 1_000_000, True, True),
    ("sinks.batch_timeout_secs", 0, False, 60, True, False),
    ("sinks.metrics_port", 0, True, 65535, True, True),
]
RANGE_IDS = [r[0] for r in RANGES]


@pytest.fixture(autouse=True)
def _no_stray_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run where no fraiseql.toml is lying around, with no FRAISEQL_* variables."""
    monkeypatch.chdir(tmp_path)
    for name in SPEC_ENV:
        monkeypatch.delenv(name, raising=False)


def lookup(settings_: Settings, dotted: str) -> Any:
    node: Any = settings_
    for part in dotted.split("."):
        node = getattr(node, part)
    if dotted == "database.url":
        return settings_.database_url
    return node


def write_toml(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


def config_error(**kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**{"environ": {}, **kwargs})
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


def numbers_in(text: str) -> set[float]:
    return {float(m) for m in re.findall(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)}


# --- defaults and sources ---------------------------------------------------------------------

def test_defaults_equal_spec_section_4() -> None:
    loaded = load_settings(environ={})
    for dotted, expected in SPEC_DEFAULTS.items():
        assert lookup(loaded, dotted) == expected, dotted
    assert loaded.database_url.startswith("postgresql://")
    assert loaded == Settings()


def test_env_override_names_are_exactly_the_spec_list() -> None:
    assert ENV_OVERRIDES == SPEC_ENV


def test_toml_file_values_are_read(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "custom.toml",
        """
[observability]
enabled = true
sample_rate = 0.01
retention_days = 14
[observability.metrics]
buffer_size = 5000
[observability.database]
url = "postgresql://collector@metrics-db:5432/metrics"
pool_size = 20
[observability.analysis]
window = "30d"
schedule = "*/15 * * * *"
min_speedup = 2.5
[observability.kafka]
bootstrap_servers = "k1:9092,k2:9092"
region = "eu-west-1"
[unrelated]
whatever = 1
""",
    )
    loaded = load_settings(path, environ={})
    assert loaded.enabled is True
    assert loaded.sample_rate == 0.01
    assert loaded.retention_days == 14
    assert loaded.metrics.buffer_size == 5000
    assert loaded.metrics.batch_size == 100  # untouched keys keep their defaults
    assert loaded.database_url == "postgresql://collector@metrics-db:5432/metrics"
    assert loaded.database.pool_size == 20
    assert loaded.analysis.window == "30d"
    assert loaded.analysis.schedule == "*/15 * * * *"
    assert loaded.analysis.min_speedup == 2.5
    assert loaded.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert loaded.kafka.region == "eu-west-1"


def test_fraiseql_toml_in_the_working_directory_is_the_default(tmp_path: Path) -> None:
    write_toml(tmp_path / "fraiseql.toml", "[observability]\nretention_days = 7\n")
    assert load_settings(environ={}).retention_days == 7


def test_missing_or_broken_files_are_config_errors(tmp_path: Path) -> None:
    assert "not found" in config_error(path=tmp_path / "nope.toml")
    bad = write_toml(tmp_path / "bad.toml", "[observability\nenabled = ")
    assert "TOML" in config_error(path=bad)
    not_table = write_toml(tmp_path / "nt.toml", "observability = 3\n")
    assert "table" in config_error(path=not_table)


ENV_SAMPLES: dict[str, tuple[str, str, Any, Any]] = {
    # env name: (file value as TOML, env value, expected from file, expected from env)
    "FRAISEQL_OBSERVABILITY_ENABLED": ("false", "true", False, True),
    "FRAISEQL_OBSERVABILITY_SAMPLE_RATE": ("0.2", "0.3", 0.2, 0.3),
    "FRAISEQL_METRICS_RETENTION_DAYS": ("10", "20", 10, 20),
    "FRAISEQL_METRICS_DATABASE_URL": (
        '"postgresql://file@h/db"', "postgresql://env@h/db", "postgresql://file@h/db",
        "postgresql://env@h/db",
    ),
    "FRAISEQL_METRICS_DB_POOL_SIZE": ("5", "7", 5, 7),
    "FRAISEQL_METRICS_DB_TIMEOUT_SECS": ("11", "12.5", 11, 12.5),
    "FRAISEQL_KAFKA_BOOTSTRAP_SERVERS": ('"file:9092"', "env:9092", "file:9092", "env:9092"),
    "FRAISEQL_REGION": ('"file-region"', "env-region", "file-region", "env-region"),
}


@pytest.mark.parametrize("env_name", sorted(SPEC_ENV))
def test_environment_beats_file_and_command_line_beats_environment(
    env_name: str, tmp_path: Path
) -> None:
    dotted = SPEC_ENV[env_name]
    file_value, env_value, from_file, from_env = ENV_SAMPLES[env_name]
    *parents, leaf = dotted.split(".")
    header = "[" + ".".join(["observability", *parents]) + "]"
    path = write_toml(tmp_path / "c.toml", f"{header}\n{leaf} = {file_value}\n")
    assert lookup(load_settings(path, environ={}), dotted) == from_file
    assert lookup(load_settings(path, environ={env_name: env_value}), dotted) == from_env
    assert lookup(load_settings(None, environ={env_name: env_value}), dotted) == from_env
    # a command-line flag (dotted override) wins over both; None means "flag not given"
    with_flag = load_settings(path, environ={env_name: env_value}, overrides={dotted: from_file})
    assert lookup(with_flag, dotted) == from_file
    no_flag = load_settings(path, environ={env_name: env_value}, overrides={dotted: None})
    assert lookup(no_flag, dotted) == from_env


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("no", False)],
)
def test_enabled_from_environment_accepts_usual_booleans(text: str, expected: bool) -> None:
    loaded = load_settings(environ={"FRAISEQL_OBSERVABILITY_ENABLED": text})
    assert loaded.enabled is expected


def test_bad_environment_value_names_the_key_the_value_and_the_variable() -> None:
    message = config_error(environ={"FRAISEQL_METRICS_DB_POOL_SIZE": "lots"})
    assert "observability.database.pool_size" in message
    assert "lots" in message
    assert "FRAISEQL_METRICS_DB_POOL_SIZE" in message
    assert {1.0, 100.0} <= numbers_in(message.split("allowed", 1)[1])


def test_settings_are_frozen() -> None:
    loaded = load_settings(environ={})
    with pytest.raises(ValueError):
        loaded.sample_rate = 0.5  # type: ignore[misc]


# --- numeric ranges ---------------------------------------------------------------------------

def test_range_table_covers_every_constrained_numeric_field() -> None:
    """A new bounded field must be added to RANGES (and so get boundary tests)."""
    found: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")
            elif any(hasattr(m, attr) for m in info.metadata for attr in ("ge", "gt", "le", "lt")):
                found.add(prefix + name)

    walk(Settings, "")
    assert found == set(RANGE_IDS)


def _inside_and_outside(
    low: float | None, low_inc: bool, high: float | None, high_inc: bool, integer: bool
) -> tuple[list[float], list[float]]:
    step = 1 if integer else 1e-6
    inside: list[float] = []
    outside: list[float] = []
    if low is not None:
        inside.append(low if low_inc else low + step)
        outside.append(low - step if low_inc else low)
    if high is not None:
        inside.append(high if high_inc else high - step)
        outside.append(high + step if high_inc else high)
    return inside, outside


@pytest.mark.parametrize(("dotted", "low", "low_inc", "high", "high_inc", "integer"), RANGES,
                         ids=RANGE_IDS)
def test_every_range_boundary(
    dotted: str, low: float | None, low_inc: bool, high: float | None, high_inc: bool,
    integer: bool,
) -> None:
    inside, outside = _inside_and_outside(low, low_inc, high, high_inc, integer)
    for value in inside:
        loaded = load_settings(environ={}, overrides={dotted: value})
        assert lookup(loaded, dotted) == value
    for value in outside:
        message = config_error(overrides={dotted: value})
        assert f"observability.{dotted} = " in message
        assert repr(value) in message
        allowed = message.split("allowed", 1)[1]
        bounds = {float(b) for b in (low, high) if b is not None}
        assert bounds <= numbers_in(allowed), (message, bounds)


@FAST
@given(index=st.integers(0, len(RANGES) - 1), value=st.floats(-1e12, 1e12) | st.integers(
    -(10**12), 10**12))
def test_a_value_is_accepted_exactly_when_inside_its_range(index: int, value: float) -> None:
    dotted, low, low_inc, high, high_inc, integer = RANGES[index]
    if integer:
        value = round(value)
    ok_low = low is None or (value >= low if low_inc else value > low)
    ok_high = high is None or (value <= high if high_inc else value < high)
    if ok_low and ok_high:
        assert lookup(load_settings(environ={}, overrides={dotted: value}), dotted) == value
    else:
        message = config_error(overrides={dotted: value})
        assert f"observability.{dotted} = " in message and repr(value) in message


def test_file_values_out_of_range_name_the_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "c.toml", "[observability.database]\npool_size = 101\n")
    message = config_error(path=path)
    assert "observability.database.pool_size = 101" in message
    assert {1.0, 100.0} <= numbers_in(message.split("allowed", 1)[1])


def test_several_errors_report_the_first_and_count_the_rest() -> None:
    message = config_error(overrides={"sample_rate": 2, "retention_days": 0})
    assert "observability.sample_rate" in message
    assert "1 more" in message


# --- enumerations, cron, URL, unknown keys ----------------------------------------------------

@pytest.mark.parametrize("window", ["1h", "6h", "12h", "1d", "7d", "30d", "90d"])
def test_spec_windows_are_accepted(window: str) -> None:
    assert load_settings(environ={}, overrides={"analysis.window": window}).analysis.window == window


def test_window_seconds() -> None:
    assert {w: window_to_seconds(w) for w in WINDOWS} == {
        "1h": 3600, "6h": 21600, "12h": 43200, "1d": 86400, "7d": 604800, "30d": 2592000,
        "90d": 7776000,
    }
    # Any N[smhdw] (SPEC §4, #15), not only the documented ones.
    assert [window_to_seconds(w) for w in ("2d", "90m", "3h", "1w", "45s")] == [
        172800, 5400, 10800, 604800, 45]
    with pytest.raises(ConfigError, match="2x"):
        window_to_seconds("2x")


@pytest.mark.parametrize("window", ["2d", "1w", "168h", "90m", "3h"])
def test_any_duration_is_a_window(window: str) -> None:
    assert load_settings(environ={}, overrides={"analysis.window": window}).analysis.window == window


@pytest.mark.parametrize("window", ["7D", " 7d", "", "7", "0d", "-1h", "1.5h", "1y", "3651d"])
def test_other_windows_are_rejected(window: str) -> None:
    message = config_error(overrides={"analysis.window": window})
    assert "observability.analysis.window" in message
    assert repr(window) in message
    for name in WINDOWS:
        assert name in message.split("allowed", 1)[1]


@pytest.mark.parametrize("cron", ["0 2 * * 1", "*/15 * * * *", "0 0 1 1 *", "30 4 * * mon-fri"])
def test_valid_cron_schedules(cron: str) -> None:
    assert load_settings(environ={}, overrides={"analysis.schedule": cron}).analysis.schedule == cron


@pytest.mark.parametrize(
    "cron", ["0 2 * *", "0 2 * * 1 2030", "61 * * * *", "* 25 * * *", "weekly", "", "0 2 * * 8"]
)
def test_invalid_cron_schedules(cron: str) -> None:
    message = config_error(overrides={"analysis.schedule": cron})
    assert "observability.analysis.schedule" in message
    assert repr(cron) in message
    assert "cron" in message.split("allowed", 1)[1]


@pytest.mark.parametrize("url", ["postgresql://h/db", "postgres://u@h:5432/db",
                                 "postgresql://u:p@h/db?sslmode=require"])
def test_postgres_urls_are_accepted(url: str) -> None:
    loaded = load_settings(environ={"FRAISEQL_METRICS_DATABASE_URL": url})
    assert loaded.database_url == url


@pytest.mark.parametrize(
    "url", ["mysql://h/db", "http://h/db", "postgresql:/h/db", "", "sqlite:///x.db",
            " postgresql://h/db", "h:5432/db", "mysql://h/db\nsecond line"]
)
def test_other_database_urls_are_rejected(url: str) -> None:
    message = config_error(environ={"FRAISEQL_METRICS_DATABASE_URL": url})
    assert f"observability.database.url = {url!r}" in message
    assert "postgresql://" in message.split("allowed", 1)[1]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"colour": "blue"}, "observability.colour"),
        ({"analysis.bogus": 3}, "observability.analysis.bogus"),
        ({"kafka.topic": "x"}, "observability.kafka.topic"),
    ],
)
def test_unknown_keys_are_rejected_with_the_known_ones(overrides: dict[str, Any], key: str) -> None:
    message = config_error(overrides=overrides)
    assert f"{key} = {next(iter(overrides.values()))!r}" in message
    assert "unknown key" in message
    parent = Settings
    for part in key.split(".")[1:-1]:
        parent = Settings.model_fields[part].annotation  # type: ignore[assignment]
    allowed = message.split("unknown key", 1)[1]
    for name in parent.model_fields:
        assert name in allowed


def test_unknown_key_in_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "c.toml", '[observability.database]\nhost = "db"\n')
    message = config_error(path=path)
    assert "observability.database.host = 'db'" in message
    assert "url" in message.split("unknown key", 1)[1]


def test_an_unknown_key_that_looks_like_a_secret_is_not_echoed(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "c.toml", '[observability.database]\npassword = "hunter2"\n')
    message = config_error(path=path)
    assert "observability.database.password" in message
    assert "hunter2" not in message


# --- secrets ----------------------------------------------------------------------------------

START, END = "PWSTARTz9", "z9PWEND"
passwords = st.lists(
    st.sampled_from(list("@:/?#[]% &=;'\"\\\t\n")) | st.characters(
        codec="utf-8", exclude_categories=["Cs"]),
    max_size=12,
).map(lambda chars: f"{START}{''.join(chars)}{END}")


def assert_hidden(text: str) -> None:
    assert START not in text and END not in text, text


@FAST
@given(password=passwords, scheme=st.sampled_from(["mysql", "http", "postgresq", "postgresql"]))
def test_database_password_never_appears_in_errors(password: str, scheme: str) -> None:
    url = f"{scheme}://collector:{password}@metrics-db:5432/metrics"
    env = {"FRAISEQL_METRICS_DATABASE_URL": url}
    if scheme == "postgresql":
        env["FRAISEQL_METRICS_DB_POOL_SIZE"] = "0"  # fail on another key, with the URL loaded
    with pytest.raises(ConfigError) as info:
        load_settings(environ=env)
    assert_hidden(str(info.value))
    assert_hidden(repr(info.value))
    assert_hidden("".join(traceback.format_exception(info.value)))
    assert "\n" not in str(info.value)


@FAST
@given(password=passwords)
def test_database_password_never_appears_in_settings_repr(password: str) -> None:
    url = f"postgresql://collector:{password}@metrics-db:5432/metrics"
    loaded = load_settings(environ={"FRAISEQL_METRICS_DATABASE_URL": url})
    assert loaded.database_url == url  # the code that connects still gets it
    assert_hidden(repr(loaded))
    assert_hidden(str(loaded))
    assert_hidden(repr(loaded.database))
    assert_hidden(str(loaded.model_dump()))
    assert_hidden(loaded.model_dump_json())


def test_password_in_a_file_url_with_a_bad_scheme_is_masked(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "c.toml", '[observability.database]\nurl = "mysql://app:hunter2@db/m"\n'
    )
    message = config_error(path=path)
    assert "hunter2" not in message
    assert "mysql://app:***@db/m" in message


# --- kafka.bootstrap_servers: host:port at start-up (#15) --------------------------------------

@pytest.mark.parametrize("servers", ["127.0.0.1:9092", "kafka-1:9092,kafka-2:9092", "[::1]:9092",
                                     "SSL://broker.example.com:9093", "k1:1, k2:65535"])
def test_bootstrap_servers_host_port(servers: str) -> None:
    loaded = load_settings(environ={"FRAISEQL_KAFKA_BOOTSTRAP_SERVERS": servers}).kafka
    assert loaded.bootstrap_servers == servers.replace(", ", ",")


@pytest.mark.parametrize("servers", ["kafka", "kafka:", ":9092", "kafka:0", "kafka:65536",
                                     "kafka:90x2", "k1:9092,", "k1:9092;k2:9092", "a b:9092",
                                     "alice:S3cret@kafka:9092"])
def test_bootstrap_servers_not_host_port(servers: str) -> None:
    message = config_error(environ={"FRAISEQL_KAFKA_BOOTSTRAP_SERVERS": servers})
    assert "observability.kafka.bootstrap_servers" in message
    assert "FRAISEQL_KAFKA_BOOTSTRAP_SERVERS" in message and "host:port" in message
    assert "S3cret" not in message
