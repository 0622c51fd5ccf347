"""Running the real ``fraiseql-cli`` processes from tests: a config file, start, kill, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraiseql_observability.config import KafkaSettings


def write_config(path: Path, kafka: KafkaSettings, database_url: str = "postgresql://unused", *,
                 sample_rate: float = 1.0, region: str = "test", grace_secs: float = 2.0,
                 extra: str = "") -> Path:
    """A TOML config naming the test's own topics and consumer groups."""
    path.write_text(f"""
[observability]
enabled = true
sample_rate = {sample_rate}
[observability.metrics]
buffer_size = 100000
batch_size = 500
flush_interval_secs = 0.2
slow_query_ms = 1000000
[observability.database]
url = "{database_url}"
[observability.kafka]
bootstrap_servers = "{kafka.bootstrap_servers}"
region = "{region}"
events_topic = "{kafka.events_topic}"
rollups_topic = "{kafka.rollups_topic}"
dead_letters_topic = "{kafka.dead_letters_topic}"
table_stats_topic = "{kafka.table_stats_topic}"
suggestions_topic = "{kafka.suggestions_topic}"
[observability.streams]
grace_secs = {grace_secs}
idle_secs = 2.0
batch_timeout_secs = 0.2
group_id = "{kafka.events_topic}.stream"
metrics_port = 0
[observability.sinks]
batch_timeout_secs = 0.2
group_id = "{kafka.events_topic}.sink"
metrics_port = 0
{extra}
""")
    return path


def clean_env() -> dict[str, str]:
    """The environment without FRAISEQL_* overrides: a test's config file is the whole truth
    (``scripts/test`` exports the stack's URLs, which would otherwise win over the file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAISEQL_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a process's /metrics)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "fraiseql_obs_app.cli", "--config", str(config), *args]


# The stream stage's engines (``fraiseql-cli stream --engine``): the tests of exactness under
# faults run over both.
ENGINES = ("native", "faust")


def stream_cli(config: Path, engine: str, *args: str) -> list[str]:
    return cli(config, "stream", "--engine", engine, *args)


class Processes:
    """Starts CLI processes with logs in a folder; stops whatever is left at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=clean_env())
        self.procs[name] = proc
        return proc

    def kill9(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def assert_running(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{self.log(name)}"

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs)
    yield procs
    procs.stop_all()
