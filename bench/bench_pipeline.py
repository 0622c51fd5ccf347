"""Sustained load through the whole pipeline: Recorder(s) → Kafka → stream → sink → PostgreSQL.

    .venv/bin/python bench/bench_pipeline.py [--rate 10000] [--duration 300] [--modes batched,single]
                                             [--producers 1] [--engine native] [--window-secs 10]
                                             [--grace-secs 5] [--idle-secs 5] [--sample-secs 5]
                                             [--seed 1] [--keep] [--json]

Real stack only (Kafka ``FRAISEQL_KAFKA_BOOTSTRAP_SERVERS``, default 127.0.0.1:9092; PostgreSQL
``FRAISEQL_METRICS_DATABASE_URL``, a superuser URL, default the local stack's). Per mode (``batched``:
``metrics.batch_messages = true``, one ``QueryEventBatch`` per flush and partition; ``single``: one
``QueryEvent`` message per event), a fresh pipeline: its own topics (``bench<hex>.`` prefix, 6
partitions), its own migrated metrics database, a config TOML, and the real ``fraiseql-cli stream``
and ``fraiseql-cli sink`` processes (``--engine X`` is passed to ``stream`` only when X is not
``native``). ``--producers`` driver processes (this script, hidden ``--driver`` mode) each run one
:class:`~fraiseql_obs_producers.recorder.Recorder` (``sample_rate = 1``: unsampled, every query
kept) and call ``record()`` at ``--rate / --producers`` queries/s in real time for ``--duration``
seconds (``occurred_at`` = now minus the query's duration, the recorder's default). The queries
cycle through 20,000 draws of the loadgen model (``fraiseql_obs_producers.loadgen.EventModel`` of the
default workload: ~140 patterns, realistic latencies, errors, rows). Windows are short
(``--window-secs`` 10, ``--grace-secs`` 5, ``--idle-secs`` 5) so that every window closes soon after
the load stops; the recorder flushes every 1,000 events or 1 s.

Reported per mode:

* ``lag``: every ``--sample-secs`` the stream worker's ``/metrics`` is scraped:
  ``fraiseql_stream_consumer_lag`` (messages: high watermark minus position, summed over partitions;
  the worker refreshes it every 5 s), ``fraiseql_stream_watermark_delay_seconds`` (max over
  partitions: wall clock minus event-time watermark, which includes the grace period), and the
  sink's ``fraiseql_sink_consumer_lag`` (rollup messages not yet committed). The series is shown
  per 30 s of load (max of the bucket), with the max and last value; "bounded" means the mean of the
  last third of the load is at most 1.5 × the middle third's mean plus a slack of 1 s of traffic
  (stream, messages), one window's rollups (sink: they arrive together) or 2 s (watermark delay).
* ``delay``: from the metrics database after the run. ``window→row`` = ``written_at`` of a rollup
  row (``now()`` of the sink's transaction) minus its ``window_end``, per row; ``query→row`` = the
  same ``written_at`` minus the time each event's query was recorded, per event (a row's events are
  spread over its window like the drivers' record() calls, known per 0.1 s); ``seen→`` = the same
  against the time a poller (every second) first saw the row, i.e. committed and visible. p50/p99
  over the windows the event-time watermark closed while the load ran; the last windows, which
  close only by the ``idle_secs`` rule once the load stops, are reported apart.
* ``cpu``: user+sys CPU seconds of each process (``/proc/<pid>/stat``) from the start to the end of
  the load (drivers: from their start until their recorder flushed), as % of one core and as µs per
  event. ``broker`` is the whole (shared) Kafka JVM, ``postgres`` the backends connected to this
  run's database, ``machine`` all cores of the host (/proc/stat, 100 % = every core busy).
* ``bytes``: the events and rollups topics' log segments on the broker's disk (record batches as
  produced, lz4-compressed: what crosses the wire to the broker and to each consumer), and the sum
  of key + value of every message (uncompressed payload), per event; messages per topic.
* ``exact``: the sum of ``event_count`` over every rollup row equals the events the recorders got
  acknowledged by Kafka (none dropped).

``--json`` prints one JSON document on stdout (progress goes to stderr either way). Topics and the
database are deleted at the end of each mode unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from fraiseql_obs_producers.loadgen import EventModel
from fraiseql_obs_producers.recorder import Recorder
from fraiseql_obs_producers.workload import default_workload
from fraiseql_observability.config import KafkaSettings, load_settings
from fraiseql_observability.kafka import ensure_topics
from fraiseql_observability.metricsdb import SCHEMA
from fraiseql_observability.metricsdb.migrate import migrate

__all__ = ["bounded", "main", "percentile", "weighted_percentile"]

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = os.environ.get("FRAISEQL_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
ADMIN_URL = os.environ.get("FRAISEQL_METRICS_DATABASE_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
PARTITIONS = 6
POOL = 20_000  # distinct draws of the model the drivers cycle through
TICK = 0.1  # resolution (s) of the drivers' record() histogram
BUCKET_SECS = 30  # the printed lag series: one row per 30 s of load
POLL_SECS = 1.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODES = ("batched", "single")


# --- pure helpers --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The lower ``q`` quantile (nearest rank) of ``values``; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def weighted_percentile(points: list[tuple[float, float]], q: float) -> float:
    """The ``q`` quantile of (value, weight) pairs: the smallest value whose cumulative weight
    reaches ``q`` of the total; nan when there is no weight."""
    total = math.fsum(w for _, w in points)
    if total <= 0:
        return math.nan
    running = 0.0
    ordered = sorted(points)
    for value, weight in ordered:
        running += weight
        if running >= q * total * (1 - 1e-12):
            return value
    return ordered[-1][0]


def bounded(series: list[float], slack: float) -> tuple[bool, float, float]:
    """Not growing: mean of the last third <= 1.5 × the middle third's + ``slack``.

    Returns (verdict, middle third's mean, last third's mean); fewer than 3 points: (True, ...)."""
    n = len(series)
    if n < 3:
        mean = statistics.fmean(series) if series else 0.0
        return True, mean, mean
    middle = statistics.fmean(series[n // 3:2 * n // 3])
    last = statistics.fmean(series[2 * n // 3:])
    return last <= 1.5 * middle + slack, middle, last


# --- process and host measurements ---------------------------------------------------------------


def proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def broker_pid() -> int | None:
    """The local Kafka broker's JVM, if it runs on this host."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if b"kafka.Kafka" in (entry / "cmdline").read_bytes():
                    return int(entry.name)
    return None


def broker_log_dir() -> Path | None:
    """The local broker's log.dirs (scripts/stack's server.properties), if readable."""
    props = ROOT / ".stack" / "kafka" / "server.properties"
    with contextlib.suppress(OSError):
        found = re.search(r"^log\.dirs?=(.+)$", props.read_text(), re.MULTILINE)
        if found:
            path = Path(found.group(1).split(",")[0].strip())
            return path if path.is_dir() else None
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[str, list[float]]:
    """Sample values by sample name (labels dropped) of a /metrics endpoint; {} if unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, list[float]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name].append(float(sample.value))
    return dict(out)


def _sum(metrics: dict[str, list[float]], name: str) -> float | None:
    values = metrics.get(name)
    return math.fsum(values) if values else None


def _max(metrics: dict[str, list[float]], name: str) -> float | None:
    values = metrics.get(name)
    return max(values) if values else None


# --- the driver process ---------------------------------------------------------------------------


def run_driver(config: Path, rate: float, duration: float, seed: int) -> None:
    """One API-like process: a Recorder fed ``rate`` queries/s for ``duration`` s in real time.

    Protocol with the parent: prints ``ready`` once set up, waits for a line on stdin, runs, then
    prints one JSON line with its counts and CPU."""
    settings = load_settings(config, environ={})
    model = EventModel(default_workload(), [settings.kafka.region], sample_rate=1.0, seed=seed)
    fields = ("query_name", "sql", "execution_time_ms", "sql_generation_time_ms",
              "db_round_trip_time_ms", "projection_time_ms", "rows_returned", "cache_hit", "error")
    pool = [{k: event[k] for k in fields} for event in (model.draw(0) for _ in range(POOL))]
    recorder = Recorder(settings).start()
    record = recorder.record
    print("ready", flush=True)
    sys.stdin.readline()
    total = round(rate * duration)
    hist: dict[int, int] = defaultdict(int)
    wall_start = time.time()
    cpu_start = time.process_time()  # the whole process: caller and recorder thread
    began = time.monotonic()
    behind_max = 0.0
    i = 0
    while i < total:
        elapsed = time.monotonic() - began
        due = total if elapsed >= duration else min(total, int(elapsed * rate))
        if due > i:
            behind_max = max(behind_max, (due - i) / rate)
            hist[int(time.time() / TICK)] += due - i
            for _ in range(due - i):
                record(**pool[i % POOL])
                i += 1
        else:
            time.sleep(0.002)
    paced = time.monotonic() - began
    flushed = recorder.flush(120)
    done = time.monotonic() - began
    stats = recorder.stats()
    recorder.close()
    print(json.dumps({
        "recorded": total, "sampled": stats.sampled, "sent": stats.sent,
        "dropped": stats.dropped_total, "dropped_by_reason": {k: v for k, v in stats.dropped.items() if v},
        "flushed": flushed, "pacing_secs": paced, "run_secs": done,
        "cpu_secs": time.process_time() - cpu_start, "max_behind_secs": behind_max,
        "wall_start": wall_start, "hist": {str(k): v for k, v in hist.items()},
    }), flush=True)


# --- one pipeline run -----------------------------------------------------------------------------


def _with_dbname(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


def write_config(path: Path, kafka: KafkaSettings, db_url: str, args: argparse.Namespace,
                 batch_messages: bool) -> None:
    path.write_text(f"""
[observability]
enabled = true
sample_rate = 1.0
[observability.metrics]
buffer_size = 200000
batch_size = 1000
flush_interval_secs = 1.0
batch_messages = {str(batch_messages).lower()}
[observability.database]
url = "{db_url}"
[observability.kafka]
bootstrap_servers = "{kafka.bootstrap_servers}"
region = "us-east-1"
events_topic = "{kafka.events_topic}"
rollups_topic = "{kafka.rollups_topic}"
dead_letters_topic = "{kafka.dead_letters_topic}"
table_stats_topic = "{kafka.table_stats_topic}"
suggestions_topic = "{kafka.suggestions_topic}"
partitions = {PARTITIONS}
[observability.streams]
window_secs = {args.window_secs}
grace_secs = {args.grace_secs}
idle_secs = {args.idle_secs}
late_slot_secs = {args.window_secs}
group_id = "{kafka.events_topic}.stream"
[observability.sinks]
group_id = "{kafka.events_topic}.sink"
""")


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "fraiseql-cli"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fraiseql_obs_app.cli"]


def clean_env() -> dict[str, str]:
    """No FRAISEQL_* overrides: the run's config file is the whole truth."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAISEQL_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Sample:
    t: float  # seconds since the load started
    stream_lag: float | None
    watermark_delay: float | None
    stream_events: float | None
    sink_lag: float | None
    sink_rows: float | None
    dead_letters: float


@dataclass
class Watch:
    """What the sampler thread collects while a mode runs."""

    stream_port: int
    sink_port: int
    db_url: str
    sample_secs: float
    go: float = 0.0  # wall time the load started
    samples: list[Sample] = field(default_factory=list)
    first_seen: dict[str, float] = field(default_factory=dict)
    pg_cpu_first: dict[int, float] = field(default_factory=dict)
    pg_cpu_last: dict[int, float] = field(default_factory=dict)
    counted: int = 0  # sum(event_count) at the last poll
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def pg_cpu(self) -> float:
        return math.fsum(self.pg_cpu_last[p] - self.pg_cpu_first.get(p, 0.0) for p in self.pg_cpu_last)

    def run(self) -> None:
        try:
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                self._loop(conn)
        except Exception as exc:  # reported, and the run's figures say what is missing
            self.errors.append(f"sampler: {exc!r}")

    def _loop(self, conn: psycopg.Connection[Any]) -> None:
        rollups = sql.Identifier(SCHEMA, "rollups")
        since = 0.0
        next_scrape = 0.0
        while not self.stop.is_set():
            now = time.time()
            rows = conn.execute(sql.SQL(
                "SELECT rollup_id::text, extract(epoch FROM now())::float8 FROM {} "
                "WHERE written_at >= to_timestamp(%s)").format(rollups), (since,)).fetchall()
            for rollup_id, _ in rows:
                self.first_seen.setdefault(rollup_id, now)
            # A transaction that began before this poll may commit after it: look back 60 s.
            since = max(since, now - 60.0)
            self.counted = int(conn.execute(sql.SQL("SELECT coalesce(sum(event_count), 0) FROM {}")
                                            .format(rollups)).fetchone()[0])  # type: ignore[index]
            for (pid,) in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = "
                                       "current_database() AND pid <> pg_backend_pid()").fetchall():
                cpu = proc_cpu(pid)
                if cpu is not None:
                    if self.go == 0.0:
                        self.pg_cpu_first[pid] = cpu  # before the load: its baseline
                    self.pg_cpu_last[pid] = cpu
            if now >= next_scrape and self.go:
                next_scrape = now + self.sample_secs
                stream, sink = scrape(self.stream_port), scrape(self.sink_port)
                self.samples.append(Sample(
                    now - self.go, _sum(stream, "fraiseql_stream_consumer_lag"),
                    _max(stream, "fraiseql_stream_watermark_delay_seconds"),
                    _sum(stream, "fraiseql_stream_events_total"),
                    _sum(sink, "fraiseql_sink_consumer_lag"),
                    _sum(sink, "fraiseql_sink_rows_written_total"),
                    (_sum(stream, "fraiseql_events_dead_lettered_total") or 0.0)
                    + (_sum(sink, "fraiseql_sink_dead_letters_total") or 0.0)))
            self.stop.wait(POLL_SECS)


def wait_ready(admin: AdminClient, ports: list[int], groups: list[str], procs: list[subprocess.Popen[bytes]],
               timeout: float = 90.0) -> None:
    """Both workers serve /metrics and their consumer groups own every partition."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a worker exited with {proc.returncode} during start-up")
        if all(scrape(port) for port in ports):
            stable = 0
            for future in admin.describe_consumer_groups(groups).values():
                with contextlib.suppress(Exception):
                    desc = future.result()
                    owned = sum(len(m.assignment.topic_partitions) for m in desc.members)
                    # The sink's group also owns the table-stats topic's partitions.
                    stable += str(desc.state).endswith("STABLE") and owned >= PARTITIONS
            if stable == len(groups):
                return
        time.sleep(0.5)
    log(f"warning: workers not assigned every partition within {timeout:.0f} s; starting anyway")


def topic_bytes(log_dir: Path | None, topic: str) -> int | None:
    if log_dir is None:
        return None
    total = 0
    for part in log_dir.glob(f"{topic}-*"):
        if part.name.rpartition("-")[0] == topic:
            total += sum(f.stat().st_size for f in part.glob("*.log"))
    return total


def topic_payload(topic: str, timeout: float = 600.0) -> tuple[int, int]:
    """(messages, sum of len(key) + len(value)) of a topic, read from the beginning to its end."""
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"bench-size-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    try:
        ends: dict[int, int] = {}
        for p in range(PARTITIONS):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        messages = size = 0
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.5):
                if msg.error() is not None:
                    continue
                messages += 1
                size += len(msg.value() or b"") + len(msg.key() or b"")
                if msg.offset() >= ends.get(msg.partition(), 0) - 1:
                    ends.pop(msg.partition(), None)
            # A transactional topic ends with a control record, never delivered: stop at the
            # position instead.
            for tp in consumer.position([TopicPartition(topic, p) for p in list(ends)]):
                if tp.offset >= ends.get(tp.partition, 1 << 62):
                    ends.pop(tp.partition, None)
        return messages, size
    finally:
        consumer.close()


def run_mode(mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:10]}."
    kafka = KafkaSettings(bootstrap_servers=BOOTSTRAP, region="us-east-1", partitions=PARTITIONS,
                          events_topic=prefix + "fraiseql.query-events",
                          rollups_topic=prefix + "fraiseql.query-rollups",
                          table_stats_topic=prefix + "fraiseql.table-stats",
                          suggestions_topic=prefix + "fraiseql.suggestions",
                          dead_letters_topic=prefix + "fraiseql.dead-letters")
    topics = [kafka.events_topic, kafka.rollups_topic, kafka.dead_letters_topic, kafka.table_stats_topic]
    dbname = f"bench_pipeline_{uuid.uuid4().hex[:12]}"
    db_url = _with_dbname(ADMIN_URL, dbname)
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    procs: dict[str, subprocess.Popen[bytes]] = {}
    drivers: list[subprocess.Popen[str]] = []
    logs: list[IO[bytes]] = []
    log(f"{mode}: topics {prefix}*, database {dbname}")
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        migrate(db_url)
        ensure_topics(kafka, topics)
        config = workdir / f"{mode}.toml"
        write_config(config, kafka, db_url, args, batch_messages=mode == "batched")
        ports = {"stream": free_port(), "sink": free_port()}
        for name in ("stream", "sink"):
            command = [*cli_command(), "--config", str(config), name, "--metrics-port", str(ports[name])]
            if name == "stream" and args.engine != "native":
                command += ["--engine", args.engine]
            out: IO[bytes] = (workdir / f"{mode}-{name}.log").open("ab")
            logs.append(out)
            procs[name] = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=clean_env())
        wait_ready(admin, list(ports.values()),
                   [f"{kafka.events_topic}.stream", f"{kafka.events_topic}.sink"], list(procs.values()))
        watch = Watch(ports["stream"], ports["sink"], db_url, args.sample_secs)
        sampler = threading.Thread(target=watch.run, daemon=True)
        sampler.start()
        for i in range(args.producers):
            err: IO[bytes] = (workdir / f"{mode}-driver{i}.log").open("ab")
            logs.append(err)
            drivers.append(subprocess.Popen(
                [sys.executable, __file__, "--driver", str(config), "--rate", str(args.rate / args.producers),
                 "--duration", str(args.duration), "--seed", str(args.seed + i)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=clean_env()))
        for driver in drivers:
            assert driver.stdout is not None
            if driver.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a driver failed to start (see {workdir})")
        bpid = broker_pid()
        pids = {name: proc.pid for name, proc in procs.items()}
        pids |= {f"driver{i}": d.pid for i, d in enumerate(drivers)}
        if bpid is not None:
            pids["broker"] = bpid
        cpu0 = {name: proc_cpu(pid) for name, pid in pids.items()}
        machine0 = machine_cpu()
        load_before = loadavg()
        go = time.time()
        watch.go = go
        for driver in drivers:
            assert driver.stdin is not None
            driver.stdin.write("go\n")
            driver.stdin.flush()
        log(f"{mode}: load started, {args.rate:g} queries/s for {args.duration:g} s "
            f"({args.producers} driver process{'es' if args.producers > 1 else ''}); load {load_before}")
        results: list[dict[str, Any]] = []
        for driver in drivers:
            stdout, _ = driver.communicate(timeout=args.duration * 3 + 300)
            if driver.returncode != 0:
                raise RuntimeError(f"a driver exited with {driver.returncode} (see {workdir})")
            results.append(json.loads(stdout.strip().splitlines()[-1]))
        load_secs = time.time() - go
        # Drivers are gone: their CPU is what they measured themselves.
        cpu1 = {name: proc_cpu(pid) for name, pid in pids.items() if not name.startswith("driver")}
        machine1 = machine_cpu()
        pg_cpu = watch.pg_cpu()
        load_after = loadavg()
        sent = sum(r["sent"] for r in results)
        log(f"{mode}: load done in {load_secs:.1f} s, {sent:,} events acknowledged; waiting for the "
            "last windows to close")
        deadline = time.monotonic() + args.window_secs + args.grace_secs + args.idle_secs + 180
        while watch.counted < sent and time.monotonic() < deadline:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} (see {workdir})")
            time.sleep(1.0)
        time.sleep(2 * POLL_SECS + args.sample_secs)  # one more scrape and poll: later duplicates show
        drain_secs = time.time() - go - load_secs
        watch.stop.set()
        sampler.join(30)
        rows = _rollup_rows(db_url)
        log_dir = broker_log_dir()
        wire = {t: topic_bytes(log_dir, t) for t in (kafka.events_topic, kafka.rollups_topic)}
        payload = {t: topic_payload(t) for t in (kafka.events_topic, kafka.rollups_topic)}
        return summarize(mode, args, kafka, results, watch, rows, wire, payload, {
            "load_secs": load_secs, "drain_secs": drain_secs, "cpu0": cpu0, "cpu1": cpu1,
            "machine": (machine1[0] - machine0[0], machine1[1] - machine0[1]), "pg_cpu": pg_cpu,
            "load_before": load_before, "load_after": load_after})
    finally:
        for driver in drivers:
            if driver.poll() is None:
                driver.kill()
                driver.wait(10)
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for out in logs:
            out.close()
        if not args.keep:
            _cleanup(admin, prefix, dbname)


def _cleanup(admin: AdminClient, prefix: str, dbname: str) -> None:
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best-effort cleanup
                future.result()
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def _rollup_rows(db_url: str) -> list[tuple[str, float, float, float, int]]:
    with psycopg.connect(db_url) as conn:
        return [(str(r[0]), float(r[1]), float(r[2]), float(r[3]), int(r[4])) for r in conn.execute(
            sql.SQL("SELECT rollup_id::text, extract(epoch FROM window_start)::float8, "
                    "extract(epoch FROM window_end)::float8, extract(epoch FROM written_at)::float8, "
                    "event_count FROM {}").format(sql.Identifier(SCHEMA, "rollups"))).fetchall()]


# --- figures --------------------------------------------------------------------------------------


def _series(samples: list[Sample], attr: str, load_secs: float) -> list[float]:
    return [v for s in samples if s.t <= load_secs and (v := getattr(s, attr)) is not None]


def _lag_figures(samples: list[Sample], attr: str, load_secs: float, slack: float) -> dict[str, Any]:
    during = [(s.t, v) for s in samples if s.t <= load_secs and (v := getattr(s, attr)) is not None]
    values = [v for _, v in during]
    buckets: dict[int, float] = {}
    for t, v in during:
        key = int(t // BUCKET_SECS) * BUCKET_SECS
        buckets[key] = max(buckets.get(key, v), v)
    verdict, middle, last_third = bounded(values, slack)
    after = [v for s in samples if s.t > load_secs and (v := getattr(s, attr)) is not None]
    return {"samples": len(values), "max": max(values) if values else None,
            "last": values[-1] if values else None, "mean": statistics.fmean(values) if values else None,
            "middle_third_mean": middle, "last_third_mean": last_third, "bounded": verdict,
            "slack": slack, "series": {str(k): v for k, v in sorted(buckets.items())},
            "after_load_last": after[-1] if after else None}


def summarize(mode: str, args: argparse.Namespace, kafka: KafkaSettings, drivers: list[dict[str, Any]],
              watch: Watch, rows: list[tuple[str, float, float, float, int]],
              wire: dict[str, int | None], payload: dict[str, tuple[int, int]],
              m: dict[str, Any]) -> dict[str, Any]:
    sent = sum(d["sent"] for d in drivers)
    recorded = sum(d["recorded"] for d in drivers)
    counted = sum(r[4] for r in rows)
    load_secs = m["load_secs"]
    events_msgs = payload[kafka.events_topic][0]
    msgs_per_s = events_msgs / load_secs if load_secs else 0.0
    # Delay figures.
    hist: dict[int, int] = defaultdict(int)
    for d in drivers:
        for k, v in d["hist"].items():
            hist[int(k)] += v
    # Steady state: windows the event-time watermark closed while the load ran. The last windows
    # close only by the idle rule (idle_secs after the load stops), reported apart.
    steady_end = watch.go + load_secs - args.grace_secs - 2.0
    steady = [r for r in rows if r[2] <= steady_end]
    tail = [written - end for _, _, end, written, _ in rows if end > steady_end]
    window_to_row = [written - end for _, _, end, written, _ in steady]
    seen = [watch.first_seen[rid] - end for rid, _, end, _, _ in steady if rid in watch.first_seen]
    seen_vs_written = [watch.first_seen[rid] - written for rid, _, _, written, _ in rows
                       if rid in watch.first_seen]
    per_event: list[tuple[float, float]] = []
    for _, start, end, written, count in steady:
        ticks = range(int(start / TICK), math.ceil(end / TICK))
        weights = [hist.get(t, 0) for t in ticks]
        total = sum(weights)
        if total == 0:  # no record() call in the window (clock edge): spread evenly
            weights, total = [1] * len(ticks), len(ticks)
        for t, w in zip(ticks, weights, strict=True):
            if w:
                per_event.append((written - (t + 0.5) * TICK, count * w / total))
    cpu: dict[str, dict[str, float]] = {}
    events = max(sent, 1)
    for i, d in enumerate(drivers):
        cpu[f"driver{i}"] = {"secs": d["cpu_secs"], "pct": 100 * d["cpu_secs"] / d["run_secs"],
                             "us_per_event": 1e6 * d["cpu_secs"] / max(d["sent"], 1)}
    for name, after in m["cpu1"].items():
        before = m["cpu0"].get(name)
        if before is not None and after is not None:
            cpu[name] = {"secs": after - before, "pct": 100 * (after - before) / load_secs,
                         "us_per_event": 1e6 * (after - before) / events}
    cpu["postgres"] = {"secs": m["pg_cpu"], "pct": 100 * m["pg_cpu"] / load_secs,
                       "us_per_event": 1e6 * m["pg_cpu"] / events}
    busy, total_cpu = m["machine"]
    cpu["machine"] = {"secs": busy, "pct": 100 * busy / total_cpu if total_cpu else math.nan,
                      "us_per_event": 1e6 * busy / events}
    topics: dict[str, dict[str, Any]] = {}
    for label, topic in (("events", kafka.events_topic), ("rollups", kafka.rollups_topic)):
        messages, size = payload[topic]
        disk = wire[topic]
        topics[label] = {"messages": messages, "payload_bytes": size, "wire_bytes": disk,
                         "payload_per_event": size / events,
                         "wire_per_event": disk / events if disk is not None else None,
                         "events_per_message": sent / messages if messages and label == "events" else None}
    return {
        "mode": mode, "engine": args.engine, "rate": args.rate, "duration": args.duration,
        "load_secs": load_secs, "drain_secs": m["drain_secs"],
        "uptime_load": {"before": m["load_before"], "after": m["load_after"]},
        "recorded": recorded, "sent": sent, "dropped": sum(d["dropped"] for d in drivers),
        "achieved_rate": recorded / max(d["pacing_secs"] for d in drivers),
        "max_behind_secs": max(d["max_behind_secs"] for d in drivers),
        "rollup_rows": len(rows), "event_count": counted, "exact": counted == sent and all(
            d["dropped"] == 0 for d in drivers),
        "dead_letters": watch.samples[-1].dead_letters if watch.samples else None,
        "lag": {
            "stream_messages": _lag_figures(watch.samples, "stream_lag", load_secs, msgs_per_s),
            "watermark_delay_secs": _lag_figures(watch.samples, "watermark_delay", load_secs, 2.0),
            # Rollups arrive in bursts, a window's worth at a time: the sink's slack is one window.
            "sink_messages": _lag_figures(watch.samples, "sink_lag", load_secs,
                                          payload[kafka.rollups_topic][0] * args.window_secs
                                          / load_secs if load_secs else 0),
        },
        "delay_secs": {
            "steady_rows": len(steady),
            "window_to_row": {"p50": percentile(window_to_row, 0.5), "p99": percentile(window_to_row, 0.99),
                              "max": max(window_to_row, default=math.nan)},
            "last_windows_to_row": {"rows": len(tail), "p50": percentile(tail, 0.5),
                                    "max": max(tail, default=math.nan)},
            "query_to_row": {"p50": weighted_percentile(per_event, 0.5),
                             "p99": weighted_percentile(per_event, 0.99)},
            "window_to_seen": {"p50": percentile(seen, 0.5), "p99": percentile(seen, 0.99)},
            "written_to_seen": {"p50": percentile(seen_vs_written, 0.5),
                                "p99": percentile(seen_vs_written, 0.99)},
        },
        "cpu": cpu, "topics": topics, "errors": watch.errors,
    }


def _f(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\npipeline under load: {args.rate:,.0f} queries/s unsampled for {args.duration:g} s, engine "
          f"{args.engine}, {args.producers} driver process(es), {PARTITIONS} partitions, windows "
          f"{args.window_secs} s + grace {args.grace_secs:g} s (idle {args.idle_secs:g} s)")
    for r in results:
        print(f"\n== {r['mode']} messages ==  uptime load before {r['uptime_load']['before']}, after "
              f"{r['uptime_load']['after']}")
        print(f"exact {r['mode']}: event_count over {r['rollup_rows']:,} rollups = {r['event_count']:,}"
              f" {'=' if r['event_count'] == r['sent'] else '!='} {r['sent']:,} events acknowledged "
              f"({r['recorded']:,} recorded, {r['dropped']:,} dropped, dead letters "
              f"{_f(r['dead_letters'])}): {'OK' if r['exact'] else 'NOT EXACT'}")
        print(f"load: {r['achieved_rate']:,.0f} queries/s achieved, at most {r['max_behind_secs']:.3f} s "
              f"behind schedule; load {r['load_secs']:.1f} s, last windows in the DB "
              f"{r['drain_secs']:.1f} s later")
        lag = r["lag"]
        keys = sorted({k for v in lag.values() for k in v["series"]}, key=int)
        print(f"{'t (s)':>6} {'stream lag (msgs)':>18} {'watermark delay (s)':>20} {'sink lag (msgs)':>16}")
        for k in keys:
            print(f"{k:>6} {_f(lag['stream_messages']['series'].get(k)):>18} "
                  f"{_f(lag['watermark_delay_secs']['series'].get(k), '.1f'):>20} "
                  f"{_f(lag['sink_messages']['series'].get(k)):>16}")
        for label, name, spec in (("stream lag (msgs)", "stream_messages", ",.0f"),
                                  ("watermark delay (s)", "watermark_delay_secs", ".1f"),
                                  ("sink lag (msgs)", "sink_messages", ",.0f")):
            x = lag[name]
            print(f"{label}: max {_f(x['max'], spec)}, last {_f(x['last'], spec)}, middle-third mean "
                  f"{_f(x['middle_third_mean'], spec)}, last-third mean {_f(x['last_third_mean'], spec)}: "
                  f"{'bounded' if x['bounded'] else 'GROWING'}")
        d = r["delay_secs"]
        print(f"delay ({d['steady_rows']:,} rows closed under load): window end → row p50 "
              f"{_f(d['window_to_row']['p50'], '.2f')} s, p99 {_f(d['window_to_row']['p99'], '.2f')} s "
              f"(max {_f(d['window_to_row']['max'], '.2f')}); query → row p50 "
              f"{_f(d['query_to_row']['p50'], '.2f')} s, p99 {_f(d['query_to_row']['p99'], '.2f')} s; "
              f"window end → seen by a 1 s poller p50 {_f(d['window_to_seen']['p50'], '.2f')} s, p99 "
              f"{_f(d['window_to_seen']['p99'], '.2f')} s")
        t = d["last_windows_to_row"]
        print(f"delay of the last windows (closed by idle_secs after the load, {t['rows']:,} rows): "
              f"window end → row p50 {_f(t['p50'], '.2f')} s, max {_f(t['max'], '.2f')} s")
        print(f"{'cpu':<10} {'seconds':>9} {'% core':>8} {'µs/event':>9}")
        for name, c in r["cpu"].items():
            note = " (whole host, % of all cores)" if name == "machine" else (
                " (shared JVM)" if name == "broker" else "")
            print(f"{name:<10} {c['secs']:>9.1f} {c['pct']:>8.1f} {c['us_per_event']:>9.1f}{note}")
        for label, t in r["topics"].items():
            epm = f", {t['events_per_message']:,.1f} events/message" if t["events_per_message"] else ""
            print(f"bytes {label}: {t['messages']:,} messages, wire (log segments) "
                  f"{_f(t['wire_per_event'], '.1f')} B/event, payload {t['payload_per_event']:.1f} "
                  f"B/event{epm}")
        for error in r["errors"]:
            print(f"error: {error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10_000.0, help="queries/s, all drivers together")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load per mode")
    parser.add_argument("--modes", default="batched,single", help="comma-separated: batched, single")
    parser.add_argument("--producers", type=int, default=1, help="driver processes sharing --rate")
    parser.add_argument("--engine", default="native", help="stream engine (--engine X if X != native)")
    parser.add_argument("--window-secs", type=int, default=10)
    parser.add_argument("--grace-secs", type=float, default=5.0)
    parser.add_argument("--idle-secs", type=float, default=5.0)
    parser.add_argument("--sample-secs", type=float, default=5.0, help="scrape /metrics this often")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the topics and databases")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--driver", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver is not None:
        run_driver(args.driver, args.rate, args.duration, args.seed)
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: a comma-separated subset of {', '.join(MODES)}")
    if args.rate <= 0 or args.duration <= 0 or args.producers < 1 or args.sample_secs <= 0:
        parser.error("--rate, --duration, --sample-secs must be > 0 and --producers >= 1")
    results = []
    # Kept when a mode fails: the workers' and drivers' logs say why.
    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        for mode in modes:
            results.append(run_mode(mode, args, workdir))
            log(f"{mode}: exact = {results[-1]['exact']}")
    except BaseException:
        log(f"failed; logs in {workdir}")
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps({"params": {k: v for k, v in vars(args).items() if k not in ("json", "driver")},
                          "modes": results}, default=str))
    else:
        print_report(results, args)
    if not all(r["exact"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
