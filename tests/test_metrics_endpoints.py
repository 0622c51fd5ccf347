"""Every metric the shipped alert rules and Grafana dashboards use is served by a real process.

Starts the pipeline as an operator runs it — an API process recording queries through the
``Recorder``, ``fraiseql-cli stream``, ``fraiseql-cli sink`` and ``fraiseql-cli schedule``, each
with its ``/metrics`` port — against the real Kafka and PostgreSQL, scrapes every ``/metrics``, and
checks that each ``fraiseql_*`` name in ``deploy/prometheus/rules`` and in the PromQL of
``deploy/grafana/dashboards`` has samples in some process's output.

The helpers here (pipeline start-up, scraping, the names the artefacts use) are shared with
``tests/test_deploy_prometheus.py``, which points a real Prometheus at the same processes.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fraiseql_observability.config import KafkaSettings
from tests.fix_kafka import produce
from tests.fix_procs import Processes, cli, free_port, write_config

REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "deploy" / "prometheus" / "rules"
DASHBOARDS_DIR = REPO / "deploy" / "grafana" / "dashboards"

# Prometheus job name -> the process that serves it (the names deploy/prometheus/prometheus.yml uses).
JOBS = ("fraiseql-api", "fraiseql-stream", "fraiseql-sink", "fraiseql-scheduler")

# SPEC §7: names tests outside the project rely on.
SPEC_NAMES = frozenset({
    "fraiseql_metrics_last_write",
    "fraiseql_metrics_buffer_size",
    "fraiseql_metrics_buffer_capacity",
    "fraiseql_analysis_suggestions_high_priority",
})
# Metrics PromQL may use that no FraiseQL process serves: Prometheus adds them per target.
PROMETHEUS_NAMES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_METRIC_NAME = re.compile(r"(?<![\w:\"'.-])(fraiseql_[a-z0-9_]+)\b")

# The API process: a stand-in for a FraiseQL server, recording queries through the real Recorder.
# Event time starts 15 minutes in the past and runs 10x faster than the clock, so that 1-minute
# windows close every ~6 s instead of every minute and rollups reach the sink within seconds
# (never ahead of the clock, which the stream worker would reject).
_API_PROCESS = textwrap.dedent("""
    import random, signal, sys, time
    from fraiseql_observability.config import load_settings
    from fraiseql_obs_producers.recorder import Recorder

    settings = load_settings(sys.argv[1], environ={})
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    rng = random.Random(11)
    patterns = [
        ("ordersByStatus", "SELECT data FROM tv_order WHERE data->>'status' = $1 LIMIT $2", 40.0),
        ("userByEmail", "SELECT data FROM tv_user WHERE data->>'email' = $1", 2.0),
        ("revenueByRegion",
         "SELECT data->>'region', sum((data->>'total')::numeric) FROM tv_order GROUP BY 1", 120.0),
    ]
    recorder = Recorder(settings, random_source=rng.random).start()
    start = time.time()
    while not stopping:
        now = time.time()
        occurred_us = int(min(now, start - 900 + (now - start) * 10) * 1e6)
        for _ in range(5):
            name, sql, median = rng.choice(patterns)
            ms = rng.lognormvariate(0, 0.5) * median
            recorder.record(query_name=name, sql=sql, execution_time_ms=ms,
                            sql_generation_time_ms=0.2, db_round_trip_time_ms=ms * 0.9,
                            projection_time_ms=0.1, rows_returned=10, cache_hit=False,
                            error="QueryCanceled" if rng.random() < 0.02 else None,
                            occurred_at=occurred_us)
        time.sleep(0.1)
    recorder.close()
""")


def _set_key(text: str, section: str, key: str, value: object) -> str:
    """Set ``key = value`` in the ``[section]`` table of a TOML text (replacing it if present):
    ``write_config`` already writes the worker sections, and TOML forbids defining a table twice."""
    header = f"[{section}]\n"
    if header not in text:
        return text + f"\n{header}{key} = {value}\n"
    head, body = text.split(header, 1)
    end = body.find("\n[")
    block, rest = (body, "") if end < 0 else (body[: end + 1], body[end + 1:])
    line = re.compile(rf"^{re.escape(key)}\s*=.*$", re.MULTILINE)
    block = line.sub(f"{key} = {value}", block) if line.search(block) else f"{key} = {value}\n{block}"
    return head + header + block + rest


@dataclass(frozen=True)
class Pipeline:
    """The running processes and where each serves /metrics (job name -> port)."""

    config: Path
    ports: dict[str, int]
    kafka: KafkaSettings
    database_url: str

    def target(self, job: str) -> str:
        return f"127.0.0.1:{self.ports[job]}"


def start_pipeline(tmp_path: Path, kafka: KafkaSettings, database_url: str,
                   processes: Processes) -> Pipeline:
    ports = {job: free_port() for job in JOBS}
    config = write_config(tmp_path / "pipeline.toml", kafka, database_url, sample_rate=0.5)
    text = config.read_text()
    text = _set_key(text, "observability.metrics", "metrics_port", ports["fraiseql-api"])
    text = _set_key(text, "observability.streams", "metrics_port", ports["fraiseql-stream"])
    text = _set_key(text, "observability.sinks", "metrics_port", ports["fraiseql-sink"])
    text = _set_key(text, "observability.analysis", "metrics_port", ports["fraiseql-scheduler"])
    config.write_text(text)
    api_script = tmp_path / "api_process.py"
    api_script.write_text(_API_PROCESS)
    processes.start("stream", cli(config, "stream"))
    processes.start("sink", cli(config, "sink"))
    # The analyzer's scheduler: serves fraiseql_analysis_suggestions_high_priority. Its cron
    # schedule (weekly) does not fire during the test; the gauge is served from the start.
    processes.start("scheduler", cli(config, "schedule"))
    processes.start("api", [sys.executable, str(api_script), str(config)])
    return Pipeline(config, ports, kafka, database_url)


def inject_dead_letters(pipeline: Pipeline) -> None:
    """Garbage on both input topics, so the dead-letter counters of stream and sink get samples."""
    kafka = pipeline.kafka
    wait_for_topics(kafka.bootstrap_servers, [kafka.events_topic, kafka.rollups_topic])
    produce(kafka.bootstrap_servers, kafka.events_topic, [(b"k", b"not an avro event")])
    produce(kafka.bootstrap_servers, kafka.rollups_topic, [(b"k", b"not an avro rollup")])


def wait_for_topics(bootstrap: str, topics: list[str], timeout: float = 60.0) -> None:
    """Wait until the workers created the topics (producing first would auto-create them with
    the broker's defaults instead of the workers' partition count)."""
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        existing = admin.list_topics(timeout=10).topics
        if all(t in existing for t in topics):
            return
        time.sleep(0.5)
    raise AssertionError(f"topics not created in {timeout:.0f}s: {topics}")


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples:
    """One scrape of ``/metrics``: sample name -> [(labels, value)] (``{}`` if it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
    except OSError:
        return {}
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def scrape_all(pipeline: Pipeline) -> dict[str, Samples]:
    return {job: scrape(port) for job, port in pipeline.ports.items()}


def metric_names(expr: str) -> set[str]:
    """The ``fraiseql_*`` metric names a PromQL expression reads (the project's own prefix)."""
    return set(_METRIC_NAME.findall(expr))


def rule_exprs() -> dict[str, str]:
    """Rule name -> PromQL of every alert and recording rule shipped in deploy/prometheus/rules."""
    out: dict[str, str] = {}
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out[rule.get("alert") or rule["record"]] = rule["expr"]
    return out


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def dashboard_queries(kind: str) -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, query) of every target whose datasource is of ``kind``
    (``prometheus`` -> PromQL ``expr``, ``grafana-postgresql-datasource`` -> ``rawSql``)."""
    out: list[tuple[str, str, str]] = []
    for name, board in dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                source = target.get("datasource") or panel.get("datasource") or {}
                if source.get("type") != kind:
                    continue
                query = target["expr"] if kind == "prometheus" else target["rawSql"]
                out.append((name, panel["title"], query))
    return out


def names_used() -> dict[str, set[str]]:
    """Metric name -> where it is used (rule names and dashboard panels)."""
    used: dict[str, set[str]] = {}
    for rule, expr in rule_exprs().items():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"rule {rule}")
    for board, title, expr in dashboard_queries("prometheus"):
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"{board}: {title}")
    return used


def wait_for_metrics(pipeline: Pipeline, processes: Processes, names: Iterable[str],
                     timeout: float = 120.0) -> dict[str, Samples]:
    """Scrape until every name has samples in some process, a write reached the metrics database
    and both dead-letter counters moved; returns the last scrape of each job."""
    wanted = set(names)
    deadline = time.monotonic() + timeout
    scraped: dict[str, Samples] = {}
    missing: set[str] = wanted
    while time.monotonic() < deadline:
        processes.assert_running()
        scraped = scrape_all(pipeline)
        merged = {name for samples in scraped.values() for name in samples}
        missing = wanted - merged
        last_write = scraped["fraiseql-sink"].get("fraiseql_metrics_last_write", [({}, 0.0)])
        if not missing and last_write[0][1] > 0:
            return scraped
        time.sleep(1.0)
    raise AssertionError(f"no samples after {timeout:.0f}s for {sorted(missing)}; "
                         f"answering: {[job for job, s in scraped.items() if s]}")


# --- tests -------------------------------------------------------------------------------------


def test_metric_name_extraction() -> None:
    """The name extractor finds metric names, not label values, topics or function names."""
    expr = ('sum by (reason) (rate(fraiseql_events_dropped_total{job="fraiseql-api"}[5m])) '
            '/ scalar(fraiseql_metrics_buffer_capacity) and up{job=~"fraiseql_x"} '
            'or label_replace(vector(0), "t", "fraiseql.query-events", "", "")')
    assert metric_names(expr) == {"fraiseql_events_dropped_total", "fraiseql_metrics_buffer_capacity"}


def test_artefacts_use_spec_names() -> None:
    """The reference alerts read the SPEC §7 names; the dashboards exist and use PromQL."""
    used = names_used()
    assert set(used) >= SPEC_NAMES, sorted(SPEC_NAMES - set(used))
    assert dashboard_queries("prometheus"), "no PromQL found in deploy/grafana/dashboards"


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.e2e
def test_every_metric_used_is_served(tmp_path: Path, kafka_settings: KafkaSettings, metrics_db: str,
                                     processes: Processes) -> None:
    used = names_used()
    pipeline = start_pipeline(tmp_path, kafka_settings, metrics_db, processes)
    inject_dead_letters(pipeline)
    scraped = wait_for_metrics(pipeline, processes, used)

    served: dict[str, str] = {}
    for job, samples in scraped.items():
        for name in samples:
            served.setdefault(name, job)
    for name, where in sorted(used.items()):
        assert name in served, f"{name} (used by {sorted(where)}) is served by no process"
    # SPEC §7, by the process that owns each name.
    assert {"fraiseql_metrics_buffer_size", "fraiseql_metrics_buffer_capacity",
            "fraiseql_events_sampled_total", "fraiseql_events_sent_total",
            "fraiseql_events_dropped_total"} <= set(scraped["fraiseql-api"])
    assert {"fraiseql_events_late_total", "fraiseql_events_dead_lettered_total",
            "fraiseql_stream_consumer_lag"} <= set(scraped["fraiseql-stream"])
    assert {"fraiseql_metrics_last_write", "fraiseql_sink_consumer_lag",
            "fraiseql_sink_dead_letters_total"} <= set(scraped["fraiseql-sink"])
    assert "fraiseql_analysis_suggestions_high_priority" in scraped["fraiseql-scheduler"]
    # The API process really recorded and sent; the dead letters were counted by reason.
    api = scraped["fraiseql-api"]
    assert api["fraiseql_metrics_buffer_capacity"][0][1] == 100000
    assert api["fraiseql_events_sent_total"][0][1] > 0
    assert {labels["reason"] for labels, _ in api["fraiseql_events_dropped_total"]} >= {"buffer_full"}
    assert sum(v for _, v in scraped["fraiseql-stream"]["fraiseql_events_dead_lettered_total"]) >= 1
    assert sum(v for _, v in scraped["fraiseql-sink"]["fraiseql_sink_dead_letters_total"]) >= 1
