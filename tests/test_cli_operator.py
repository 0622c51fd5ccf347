"""What an operator meets on the command line (#15): durations, next-step hints, ports, start-up
and health lines, loadgen's output, --version and --log-level; each through ``fraiseql-cli``
(exit code and message) against the real Kafka and PostgreSQL."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from fraiseql_obs_app.cli import main
from fraiseql_obs_producers.recorder import Recorder
from fraiseql_obs_sinks import worker as sink_worker
from fraiseql_observability.config import (
    DatabaseSettings,
    KafkaSettings,
    Settings,
    SinkSettings,
)
from tests.fix_kafka import produce
from tests.fix_procs import Processes, clean_env, cli, write_config

UNREACHABLE = "127.0.0.1:1"  # nothing listens on tcpmux


def run(config: Path | None, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = cli(config, *args) if config else cli(Path("/dev/null"), *args)
    return subprocess.run(command, capture_output=True, text=True, env=clean_env(), check=False,
                          timeout=timeout)


def one_line(out: subprocess.CompletedProcess[str]) -> str:
    """The error of a command that failed: exactly one line on stderr, prefixed fraiseql-cli:."""
    errors = [line for line in out.stderr.splitlines() if line.startswith("fraiseql-cli")]
    assert len(errors) == 1, out.stderr
    assert "Traceback" not in out.stderr and "^" not in errors[0], out.stderr
    return errors[0]


def with_password(url: str, password: str) -> str:
    """The same URL with a password (trust authentication ignores it)."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@", 1)


def wait_for_line(processes: Processes, name: str, pattern: str, timeout: float = 60) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, processes.log(name))
        if found:
            return found
        proc = processes.procs.get(name)
        assert proc is None or proc.poll() is None, processes.log(name)
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in the log of {name}:\n{processes.log(name)}")


# --- 1. durations --------------------------------------------------------------------------------

@pytest.mark.postgres
def test_any_window_for_stats_and_analyze(metrics_db: str, tmp_path: Path) -> None:
    for window in ("90m", "24h", "2d"):
        out = run(None, "stats", "--database", metrics_db, "--window", window, "--format", "json")
        assert out.returncode == 0, out.stderr
        document = json.loads(out.stdout)
        start = document["window"]["start"]
        end = document["window"]["end"]
        assert start < end
    out = run(None, "analyze", "--database", metrics_db, "--window", "2d", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["window"]["days"] == pytest.approx(2.0)
    for command in ("stats", "analyze"):
        bad = run(None, command, "--database", metrics_db, "--window", "2 days")
        assert bad.returncode == 2
        assert "--window" in bad.stderr and "'2 days'" in bad.stderr and "90m" in bad.stderr


@pytest.mark.kafka
def test_replay_from_a_space_separated_negative_time(kafka_settings: KafkaSettings,
                                                     tmp_path: Path) -> None:
    config = write_config(tmp_path / "fraiseql.toml", kafka_settings)
    # The topic does not exist yet: the replay ran (no usage error) and says who creates it.
    missing = run(config, "--log-level", "warning", "replay", "--from", "-1h", "--to", "-30m")
    assert missing.returncode == 1, missing.stderr
    line = one_line(missing)
    assert f"topic {kafka_settings.events_topic} does not exist" in line
    assert "fraiseql-cli stream" in line and "loadgen" in line
    produce(kafka_settings.bootstrap_servers, kafka_settings.events_topic, [(None, b"x")])
    done = run(config, "replay", "--from", "-2h", "--to", "-1h")
    assert done.returncode == 0, done.stderr
    assert "replayed" in done.stdout
    assert run(config, "replay", "--from", "-1x").returncode == 2


# --- 2. next-step hints --------------------------------------------------------------------------

@pytest.mark.postgres
def test_unmigrated_database_names_the_migrate_command(fresh_db_url: str) -> None:
    url = with_password(fresh_db_url, "S3cretPW")
    masked = url.replace("S3cretPW", "***")
    for command in ("stats", "analyze"):
        out = run(None, command, "--database", url)
        assert out.returncode == 1
        line = one_line(out)
        assert f"metrics database {masked} is not migrated" in line
        assert f"run `fraiseql-cli migrate --database {masked}`" in line
        assert "S3cretPW" not in out.stderr + out.stdout
        assert "does not exist" not in line and "LINE" not in out.stderr


@pytest.mark.postgres
def test_sink_refuses_an_unmigrated_database(fresh_db_url: str, kafka_settings: KafkaSettings,
                                             tmp_path: Path) -> None:
    config = write_config(tmp_path / "fraiseql.toml", kafka_settings, fresh_db_url)
    out = run(config, "sink", "--metrics-port", "0", timeout=30)
    assert out.returncode == 1
    assert f"run `fraiseql-cli migrate --database {fresh_db_url}`" in one_line(out)


def test_unreachable_kafka_is_named_within_seconds(tmp_path: Path) -> None:
    """stream, sink and loadgen at once (each probes 5 s); the workers wait no longer than
    kafka.startup_timeout_secs."""
    config = write_config(tmp_path / "fraiseql.toml", KafkaSettings(bootstrap_servers=UNREACHABLE))
    config.write_text(config.read_text().replace(
        f'bootstrap_servers = "{UNREACHABLE}"',
        f'bootstrap_servers = "{UNREACHABLE}"\nstartup_timeout_secs = 0'))
    commands = {"stream": ["stream"], "sink": ["sink"], "loadgen": ["loadgen", "--count", "5"]}
    started = time.monotonic()
    procs = {name: subprocess.Popen(cli(config, *args), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=clean_env())
             for name, args in commands.items()}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=60)
        out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        assert out.returncode == 1, (name, stderr)
        line = one_line(out)
        assert f"Kafka at {UNREACHABLE} did not answer within 5s" in line, (name, line)
        assert "FRAISEQL_KAFKA_BOOTSTRAP_SERVERS" in line and "kafka.bootstrap_servers" in line
    assert time.monotonic() - started < 30, "a few seconds each, in parallel"


def test_bootstrap_servers_are_validated_at_start() -> None:
    env = {**clean_env(), "FRAISEQL_KAFKA_BOOTSTRAP_SERVERS": "kafka"}
    for command in (["stream"], ["sink"], ["loadgen", "--count", "1"]):
        out = subprocess.run(cli(Path("/dev/null"), *command), capture_output=True, text=True,
                             env=env, check=False, timeout=30)
        assert out.returncode == 2
        line = one_line(out)
        assert "kafka.bootstrap_servers = 'kafka' (from FRAISEQL_KAFKA_BOOTSTRAP_SERVERS)" in line
        assert "host:port" in line


def test_schemeless_password_is_masked() -> None:
    out = run(None, "stats", "--database", "alice:S3cret@db.example.com:5432/metrics")
    assert out.returncode == 2
    assert "alice:***@db.example.com" in one_line(out)
    assert "S3cret" not in out.stderr + out.stdout


# --- 3. several workers on one host; where settings come from -------------------------------------

@pytest.mark.kafka
@pytest.mark.postgres
def test_metrics_port_zero_in_use_and_startup_lines(kafka_settings: KafkaSettings, metrics_db: str,
                                                    tmp_path: Path, processes: Processes) -> None:
    url = with_password(metrics_db, "S3cretPW")
    config = write_config(tmp_path / "fraiseql.toml", kafka_settings, url)
    processes.start("stream", cli(config, "stream", "--metrics-port", "0"))
    port = int(wait_for_line(processes, "stream", r"serving /metrics on http://127\.0\.0\.1:(\d+)/")[1])
    assert port > 0
    # 4. the start-up line: address, topics, group
    started = wait_for_line(processes, "stream", r"stream worker: Kafka .*")[0]
    for part in (kafka_settings.bootstrap_servers, kafka_settings.events_topic,
                 kafka_settings.rollups_topic, kafka_settings.dead_letters_topic,
                 f"group {kafka_settings.events_topic}.stream"):
        assert part in started, started

    for command in ("stream", "sink"):
        taken = run(config, command, "--metrics-port", str(port), timeout=30)
        assert taken.returncode == 2, taken.stderr
        line = one_line(taken)
        assert f"/metrics port {port} is already in use" in line
        assert "--metrics-port" in line and f"[observability.{command}s] metrics_port" in line
        assert "OSError" not in taken.stderr

    processes.start("sink", cli(config, "sink", "--metrics-port", "0"))
    started = wait_for_line(processes, "sink", r"sink worker: Kafka .*")[0]
    for part in (kafka_settings.rollups_topic, kafka_settings.table_stats_topic,
                 f"group {kafka_settings.events_topic}.sink", url.replace("S3cretPW", "***")):
        assert part in started, started
    wait_for_line(processes, "sink", r"serving /metrics on http://127\.0\.0\.1:\d+/")
    assert "S3cretPW" not in processes.log("sink")
    processes.assert_running()


@pytest.mark.parametrize("command", ["stream", "sink"])
def test_worker_help_says_where_settings_come_from(command: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("--config", "fraiseql.toml", "FRAISEQL_KAFKA_BOOTSTRAP_SERVERS",
                   "FRAISEQL_METRICS_DATABASE_URL", "--metrics-port", "0: pick a free port",
                   "Running it by hand"):
        assert needle in text, needle
    if command == "stream":  # both engines and how Faust operators start one (issue #14)
        assert "--engine {native,faust}" in text and "faust -A fraiseql_obs_streams.faust_app worker" in text


# --- 4. health lines, loadgen, recorder, --version, --log-level -----------------------------------

@pytest.mark.kafka
@pytest.mark.postgres
def test_sink_health_line(kafka_settings: KafkaSettings, metrics_db: str,
                          monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sink_worker, "HEALTH_INTERVAL_SECS", 1.0)
    settings = Settings(
        kafka=kafka_settings,
        database=DatabaseSettings(url=SecretStr(metrics_db), pool_size=2, timeout_secs=5),
        sinks=SinkSettings(batch_timeout_secs=0.2, group_id=f"{kafka_settings.rollups_topic}.sink"),
    )
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="fraiseql_obs_sinks.worker")
    thread = threading.Thread(target=sink_worker.run_sink, args=(settings,), kwargs={"stop": stop})
    thread.start()
    try:
        produce(kafka_settings.bootstrap_servers, kafka_settings.rollups_topic,
                [(None, b"not a rollup")] * 3)
        deadline = time.monotonic() + 45
        dead = 0
        while time.monotonic() < deadline and dead < 3:
            time.sleep(0.2)
            lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("health:")]
            dead = sum(int(re.findall(r"dead-lettered (\d+)", line)[0]) for line in lines)
        assert dead == 3, [r.getMessage() for r in caplog.records]
    finally:
        stop.set()
        thread.join(30)
    for line in lines:  # one a second here (a minute in production), each since the last
        assert re.fullmatch(r"health: rollups written 0 \(expired 0\), table stats 0, batches \d+, "
                            r"retries 0, dead-lettered \d+ \(([\w-]+ \d+|none)\), "
                            r"lag (\d+|unknown)", line), line


@pytest.mark.kafka
def test_loadgen_progress_and_summary(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    config = write_config(tmp_path / "fraiseql.toml", kafka_settings)
    out = run(config, "loadgen", "--rate", "200", "--duration", "6", "--seed", "3")
    assert out.returncode == 0, out.stderr
    assert re.search(r"loadgen: [\d,]+ events produced in \ds \([\d,]+/s\), 0 failed", out.stderr)
    lines = out.stdout.strip().splitlines()
    assert 2 <= len(lines) <= 10, lines
    assert re.match(rf"loadgen: [\d,]+ events delivered to {re.escape(kafka_settings.events_topic)}"
                    r" \(0 failed\)", lines[0]), lines[0]
    as_json = run(config, "loadgen", "--count", "300", "--backfill-minutes", "5", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)
    assert summary["delivered"] == 300 and summary["patterns"]


def test_recorder_warns_once_when_disabled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fraiseql_obs_producers.recorder")
    recorder = Recorder(Settings(enabled=False)).start()
    for _ in range(3):
        assert not recorder.record(query_name="q", sql="SELECT 1", execution_time_ms=1.0,
                                   sql_generation_time_ms=0.1, db_round_trip_time_ms=0.8,
                                   projection_time_ms=0.1, rows_returned=1, cache_hit=False)
    recorder.close()
    warnings = [r.getMessage() for r in caplog.records if "recording is off" in r.getMessage()]
    assert len(warnings) == 1 and "enabled = true" in warnings[0], warnings


def test_version_and_case_insensitive_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    version = importlib.metadata.version("fraiseql-observability")
    assert capsys.readouterr().out.strip() == f"fraiseql-cli {version}"
    for level in ("debug", "Warning", "ERROR"):
        assert main(["--log-level", level, "stats", "--database", "not-a-url"]) == 2
        assert logging.getLogger().level == getattr(logging, level.upper())
    with pytest.raises(SystemExit) as exc:
        main(["--log-level", "verbose", "stats"])
    assert exc.value.code == 2


# --- 7. the documentation an operator reads ----------------------------------------------------

def test_readme_running_it_by_hand() -> None:
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Running it by hand", 1)[1].split("\n## ", 1)[0]
    order = [section.index(f"fraiseql-cli {c}") for c in ("migrate", "stream", "sink", "loadgen",
                                                          "stats")]
    assert order == sorted(order), "commands in the order they are run"
    for fact in ("--config", "FRAISEQL_KAFKA_BOOTSTRAP_SERVERS", "9101", "9102", "--metrics-port 0",
                 "metrics_bind", "90 s", "startup_timeout_secs", "--log-level", "--version"):
        assert fact in section, fact
    deploy = (root / "deploy" / "README.md").read_text(encoding="utf-8")
    assert "127.0.0.1` only" not in deploy and "metrics_bind" in deploy
