"""The Faust engine's own entry points on the real broker.

``faust -A fraiseql_obs_streams.faust_app worker`` (how operators who run Faust workers start it:
configuration from ``FRAISEQL_CONFIG``) counts batched events exactly and serves the native
engine's ``/metrics``; a group switched from the native engine to Faust mid-stream continues from
the native checkpoints, and stops cleanly on SIGTERM. The engine-parametrized exactness, kill -9,
rebalance, hostile-input and multi-region tests are in test_stream_faults, test_stream_batches,
test_e2e and test_multiregion.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fraiseql_obs_streams.faust_app import checkpoint_topic
from fraiseql_observability.config import KafkaSettings, load_settings
from fraiseql_observability.kafka import ensure_topics
from tests.fix_kafka import consume_all
from tests.fix_procs import Processes, clean_env, stream_cli, write_config
from tests.test_stream_batches import BatchFeeder
from tests.test_stream_faults import assert_exact, wait_assigned, wait_for_totals

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

FAUST = str(Path(sys.executable).parent / "faust")


def _metrics(processes: Processes, name: str) -> str:
    text = (processes.logs / f"{name}.log").read_text(errors="replace")
    found = re.search(r"serving /metrics on (http://\S+/metrics)", text)
    assert found, text[-2000:]
    with urllib.request.urlopen(found.group(1), timeout=10) as response:  # noqa: S310 (loopback)
        body: bytes = response.read()
    return body.decode()


def _sample(metrics: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    assert found, f"{name} not served"
    return float(found.group(1))


def _stop(processes: Processes, name: str, timeout: float = 60) -> str:
    proc = processes.procs.pop(name)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout) == 0
    return (processes.logs / f"{name}.log").read_text(errors="replace")


def test_faust_cli_worker_counts_batches_and_serves_metrics(
    tmp_path: Path, kafka_settings: KafkaSettings, processes: Processes
) -> None:
    config = write_config(tmp_path / "c.toml", kafka_settings)
    ensure_topics(kafka_settings, [kafka_settings.events_topic])
    env = clean_env() | {"FRAISEQL_CONFIG": str(config)}
    with (processes.logs / "faust.log").open("ab") as out:
        processes.procs["faust"] = subprocess.Popen(
            [FAUST, "-A", "fraiseql_obs_streams.faust_app", "worker", "-l", "info"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    feeder = BatchFeeder(kafka_settings, total=20_000, seconds=3, seed=31)
    feeder.start()
    feeder.join()
    assert not feeder.errors
    assert_exact(wait_for_totals(kafka_settings, feeder, processes), feeder)

    metrics = _metrics(processes, "faust")
    # The same names as the native engine's; counted here once per event (no replay happened).
    assert _sample(metrics, "fraiseql_stream_events_counted_total") == feeder.total
    assert _sample(metrics, "fraiseql_stream_checkpoints_total") > 0
    assert "fraiseql_stream_consumer_lag{" in metrics
    log = _stop(processes, "faust")
    assert "stream worker stopped" in log
    # The checkpoints are where a restarted Faust worker reads them.
    settings = load_settings(config, environ={})
    stored = consume_all(kafka_settings.bootstrap_servers, checkpoint_topic(settings), idle_secs=2)
    keys = {key for key, _value, _p, _o in stored}
    assert keys and all(key is not None and key.startswith(kafka_settings.events_topic.encode())
                        for key in keys)


def test_switching_a_group_from_native_to_faust_mid_stream_is_exact(
    tmp_path: Path, kafka_settings: KafkaSettings, processes: Processes
) -> None:
    config = write_config(tmp_path / "c.toml", kafka_settings)
    ensure_topics(kafka_settings, [kafka_settings.events_topic, kafka_settings.rollups_topic,
                                   kafka_settings.dead_letters_topic])
    feeder = BatchFeeder(kafka_settings, total=60_000, seconds=12, seed=32)
    processes.start("native", stream_cli(config, "native"))
    wait_assigned(processes, "native")
    feeder.start()
    time.sleep(5)  # mid-stream: open windows and a checkpoint in the group's offset metadata
    _stop(processes, "native")
    processes.start("faust", stream_cli(config, "faust"))
    feeder.join()
    assert not feeder.errors
    assert_exact(wait_for_totals(kafka_settings, feeder, processes), feeder)
    log = (processes.logs / "faust.log").read_text(errors="replace")
    # It took the native engine's checkpoints (v2;...), not the beginning of the partitions.
    assert re.search(r"assigned \S+\[\d+\] from v2;", log), log[-3000:]
    assert "from the beginning" not in log
