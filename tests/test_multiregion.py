"""Multi-region ingestion (issue 7, item 1): two regional Kafka clusters mirrored into the central
one by MirrorMaker 2 (``scripts/stack up multiregion``), a stream worker consuming the mirrored
topics by regex, and per-region plus global statistics that are exact after mirroring.

Topic naming: MirrorMaker's topic list (scripts/kafka/mm2.properties.in) mirrors
``fraiseql.query-events`` and per-test copies ``t<hex>.fraiseql.query-events``; each test writes
the regional ``<kafka_settings prefix>fraiseql.query-events``, which reaches central as
``<alias>.t<hex>.fraiseql.query-events``. A test therefore owns its mirrored topics: reruns and
other tests never add events to its counts, and the stream worker's regex names exactly its own
topics.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import statistics
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from fraiseql_obs_analyzer.stats import ALL_REGIONS, pattern_stats, pattern_stats_all_regions
from fraiseql_obs_producers.recorder import Recorder
from fraiseql_obs_sinks.writer import RollupWriter
from fraiseql_observability.config import KafkaSettings, Settings, load_settings
from fraiseql_observability.metricsdb.rollups import StatsLevel
from fraiseql_observability.sketch import DEFAULT_ALPHA
from tests.fix_procs import ENGINES, Processes, clean_env, cli, stream_cli, write_config
from tests.oracles import exact_lower_quantile
from tests.query_events import events_of
from tests.test_sink import MICROS, MINUTE, make_rollup, minute_us, role_url

REPO = Path(__file__).resolve().parents[1]
STACK = str(REPO / "scripts" / "stack")
ALPHA = DEFAULT_ALPHA
ROUNDING = 5e-4  # stats prints milliseconds with 3 decimals

# query_name: (SQL, median ms in us-east, median ms in eu-west). The regions' latencies differ a
# lot, so the global percentiles are far from any mean of the regional ones: only merged sketches
# give them.
PATTERNS = {
    "orders_by_status": ("SELECT data FROM tv_order WHERE data->>'status' = $1 LIMIT $2", 20.0, 150.0),
    "user_by_email": ("SELECT data FROM tv_user WHERE data->>'email' = $1", 1.5, 9.0),
    "revenue_by_region": (
        "SELECT data->>'region', sum((data->>'total')::numeric) FROM tv_order GROUP BY 1", 60.0, 25.0),
}


# --- the topology ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topology:
    regions: dict[str, str]  # MirrorMaker alias -> regional bootstrap address
    start_secs: float | None  # how long `up multiregion` took; None if it already ran
    mirrored: list[str]  # mirrored topics the tests made on central: deleted at the end


def _stack(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STACK, *args], capture_output=True, text=True, timeout=timeout,
                          env=os.environ.copy(), check=False)


@pytest.fixture(scope="module")
def topology(kafka_bootstrap: str) -> Iterator[Topology]:
    """``scripts/stack up multiregion`` (idempotent); stops the regions and MirrorMaker at the end
    of the module if this fixture started them. The central cluster is never touched."""
    central = dict(line.split("=", 1) for line in _stack("env").stdout.split() if "=" in line)
    if central.get("FRAISEQL_KAFKA_BOOTSTRAP_SERVERS") != kafka_bootstrap:
        pytest.fail(f"the tests use Kafka at {kafka_bootstrap}, but scripts/stack mirrors into "
                    f"{central.get('FRAISEQL_KAFKA_BOOTSTRAP_SERVERS')}")
    was_running = _stack("status", "multiregion").returncode == 0
    started = time.monotonic()
    up = _stack("up", "multiregion")
    elapsed = time.monotonic() - started
    mirrored: list[str] = []
    try:
        if up.returncode != 0:
            pytest.fail(f"scripts/stack up multiregion failed ({up.returncode}):\n{up.stderr[-4000:]}")
        env = _stack("env", "multiregion").stdout
        match = re.search(r"FRAISEQL_MIRROR_REGIONS=(\S+)", env)
        assert match, env
        regions = dict(item.split("=", 1) for item in match.group(1).split(","))
        print(f"\nmultiregion topology: {'already running' if was_running else f'up in {elapsed:.1f} s'}"
              f" ({regions})")
        yield Topology(regions, None if was_running else elapsed, mirrored)
    finally:
        if not was_running:
            down = _stack("down", "multiregion", timeout=180)
            assert down.returncode == 0, down.stderr[-2000:]
        # Only now: MirrorMaker's producer refreshes the metadata of the topics it wrote to for
        # 5 minutes after the last write, and central auto-creates topics, so a mirrored topic
        # deleted while MirrorMaker runs comes back (empty). If MirrorMaker was already running,
        # that may still happen.
        if mirrored:
            _delete_topics(kafka_bootstrap, mirrored)


def _create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=30).values():
        future.result()


def _wait_for_topics(bootstrap: str, names: list[str], timeout: float) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(names) <= set(admin.list_topics(timeout=10).topics):
            return
        time.sleep(0.2)
    raise AssertionError(f"topics {names} did not appear on {bootstrap} within {timeout:.0f} s")


def _delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics(names, operation_timeout=30).values():
        with contextlib.suppress(Exception):  # best-effort cleanup
            future.result()


class MirrorWatcher(threading.Thread):
    """Reads the mirrored topics on central (committed records only, as the stream worker does)
    and notes, per message (a batch of events), how long after its regional produce time it
    became visible."""

    def __init__(self, bootstrap: str, topics: list[str], partitions: int) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"watch-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False, "isolation.level": "read_committed"})
        # Assigned, not subscribed: no group join, so it reads from the first record on.
        self.consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING)
                              for t in topics for p in range(partitions)])
        self.counts: dict[str, int] = defaultdict(int)
        self.latencies: list[tuple[float, float]] = []  # (regional produce time, ms to central)
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for msg in self.consumer.consume(1000, 0.1):
                    received_ms = time.time() * 1000
                    if msg.error() is None:
                        # Events, not messages: the recorder batches them (SPEC §3).
                        self.counts[msg.topic()] += len(events_of(msg.value()))
                        # MirrorMaker keeps the record's CreateTime: the regional produce time.
                        produced_ms = msg.timestamp()[1]
                        self.latencies.append((produced_ms, received_ms - produced_ms))
        finally:
            self.consumer.close()


# --- the workload ---------------------------------------------------------------------------------


def record_region(settings: Settings, medians: dict[str, float], count: int, seed: int,
                  start_us: int, span_us: int) -> list[dict[str, Any]]:
    """One API process of a region records ``count`` queries spread over ``span_us`` of event
    time (in order) through the real recorder; returns the kept events with their weights."""
    rng = random.Random(seed)
    kept: list[dict[str, Any]] = []
    with Recorder(settings, random_source=rng.random) as recorder:
        for i in range(count):
            name = rng.choice(list(PATTERNS))
            duration = round(rng.lognormvariate(0, 0.5) * medians[name], 3)
            error = "QueryCanceled" if rng.random() < 0.03 else None
            occurred_at = start_us + i * (span_us // count)
            if recorder.record(query_name=name, sql=PATTERNS[name][0], execution_time_ms=duration,
                               sql_generation_time_ms=0.2, db_round_trip_time_ms=duration * 0.9,
                               projection_time_ms=0.1, rows_returned=5, cache_hit=False,
                               error=error, occurred_at=occurred_at):
                # Errors are always kept (weight 1); the rest uniformly at sample_rate.
                weight = 1.0 if error else 1.0 / settings.sample_rate
                kept.append({"query_name": name, "duration": duration, "error": error,
                             "weight": weight, "region": settings.kafka.region})
        assert recorder.flush(30), "recorder did not flush"
        assert recorder.stats().dropped_total == 0, recorder.stats()
    return kept


def _check_row(row: dict[str, Any], events: list[dict[str, Any]], what: object) -> None:
    assert row["count"] == pytest.approx(sum(e["weight"] for e in events), abs=1e-6), what
    assert row["errors"] == pytest.approx(sum(e["weight"] for e in events if e["error"]), abs=1e-6), what
    values = [(e["duration"], e["weight"]) for e in events]
    for q, field in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
        exact = exact_lower_quantile(values, q)
        assert abs(row[field] - exact) <= ALPHA * exact + ROUNDING, (what, field, row[field], exact)


def _stats(config: Path, metrics_db: str, *extra: str) -> dict[str, Any]:
    out = subprocess.run(cli(config, "stats", "--database", metrics_db, "--window", "1h",
                             "--format", "json", *extra),
                         capture_output=True, text=True, check=True, env=clean_env())
    document: dict[str, Any] = json.loads(out.stdout)
    return document


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


@pytest.mark.kafka
@pytest.mark.postgres
@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_regions_mirrored_to_central_are_counted_exactly(
    tmp_path: Path, topology: Topology, kafka_settings: KafkaSettings, metrics_db: str,
    processes: Processes, engine: str,
) -> None:
    central = kafka_settings.bootstrap_servers
    regional_topic = kafka_settings.events_topic  # t<hex>.fraiseql.query-events
    mirrored = [f"{alias}.{regional_topic}" for alias in topology.regions]
    topology.mirrored.extend(mirrored)
    try:
        # 1. MirrorMaker finds the new regional topics (it refreshes its topic list every 5 s).
        created = time.monotonic()
        for bootstrap in topology.regions.values():
            _create_topic(bootstrap, regional_topic, 3)
        _wait_for_topics(central, mirrored, timeout=90)
        discovery_secs = time.monotonic() - created

        # 2. The central workers: the stream worker takes every mirrored copy of the test's
        # events topic by regex (librdkafka: a leading "^"; "[.]" since TOML strings would need
        # "\\."), the sink writes the rollups to the metrics database.
        prefix = regional_topic.split(".", 1)[0]
        regex = f"^[a-z0-9-]+[.]{prefix}[.]fraiseql[.]query-events$"
        central_config = write_config(
            tmp_path / "central.toml", kafka_settings.model_copy(update={"events_topic": regex}),
            metrics_db, region="central", grace_secs=300)
        watcher = MirrorWatcher(central, mirrored, 3)
        watcher.start()
        processes.start("stream", stream_cli(central_config, engine))
        processes.start("sink", cli(central_config, "sink"))
        # Both regions' mirrored partitions assigned (the regex matched them); also keeps the
        # workers' start-up CPU out of the mirroring latency measured next.
        deadline = time.monotonic() + 60
        assigned = re.compile(r"assigned \S+\[\d+\] from")
        while (len(assigned.findall(processes.log("stream"))) < 2 * 3
               or "assigned" not in processes.log("sink")):
            assert time.monotonic() < deadline, processes.log("stream")
            processes.assert_running()
            time.sleep(0.2)

        # 3. One API process per region records through the real recorder into its own cluster:
        # 20 minutes of event time ending 30 minutes ago, in two waves, the first right after
        # MirrorMaker found the new topics, the second once the first is mirrored (steady state).
        # Each region has its own topic, hence its own partitions, each in event-time order, so no
        # event is late; once the partitions are idle the workers' clocks close every window
        # (clock - idle_secs - grace).
        regions = []
        for index, ((alias, bootstrap), rate) in enumerate(zip(topology.regions.items(), (1.0, 0.5),
                                                               strict=False)):
            region_settings = load_settings(write_config(
                tmp_path / f"{alias}.toml",
                kafka_settings.model_copy(update={"bootstrap_servers": bootstrap}),
                metrics_db, sample_rate=rate, region=f"{alias}-1", grace_secs=300), environ={})
            medians = {name: spec[2] if index % 2 else spec[1] for name, spec in PATTERNS.items()}
            regions.append((f"{alias}.{regional_topic}", region_settings, medians))
        wave_us = 10 * 60 * MICROS
        kept: list[dict[str, Any]] = []
        want: dict[str, int] = defaultdict(int)
        wave_starts_ms: list[float] = []
        for wave in range(2):
            wave_starts_ms.append(time.time() * 1000)
            for index, (topic, region_settings, medians) in enumerate(regions):
                events = record_region(region_settings, medians, 1500, seed=10 * wave + index,
                                       start_us=minute_us(50) + wave * wave_us, span_us=wave_us)
                want[topic] += len(events)
                kept += events
            produced_at = time.monotonic()
            # 4. Mirroring is exact: every kept event reaches central once (exactly-once
            # MirrorMaker; the watcher, like the stream worker, reads committed records only).
            deadline = time.monotonic() + 60
            while dict(watcher.counts) != want and time.monotonic() < deadline:
                time.sleep(0.05)
            assert dict(watcher.counts) == want
            print(f"mirroring wave {wave + 1}: all visible on central "
                  f"{time.monotonic() - produced_at:.2f} s after the last regional ack")
        time.sleep(2)  # a duplicate would show up now
        watcher.stop.set()
        watcher.join(10)
        assert dict(watcher.counts) == want
        print(f"mirroring: new regional topics on central after {discovery_secs:.1f} s")
        for wave, name in enumerate(("after discovery", "steady state")):
            lat = [ms for produced, ms in watcher.latencies if (produced >= wave_starts_ms[1]) == wave]
            print(f"mirroring {name}: {len(lat)} messages, produce in region → visible on central "
                  f"p50 {statistics.median(lat):.0f} ms, p99 {_percentile(lat, 0.99):.0f} ms, "
                  f"max {max(lat):.0f} ms")

        # 5. Per-region and global statistics from the metrics database are exact.
        by_region: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        by_pattern: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in kept:
            by_region[(event["query_name"], event["region"])].append(event)
            by_pattern[event["query_name"]].append(event)
        want_total = sum(e["weight"] for e in kept)
        report: dict[str, Any] = {"patterns": []}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            report = _stats(central_config, metrics_db)
            if sum(p["count"] for p in report["patterns"]) >= want_total - 1e-6:
                break
            processes.assert_running()
            time.sleep(1)
        print(f"pipeline: regional ack → all rollups in the metrics DB "
              f"{time.monotonic() - produced_at:.1f} s")
        got = {(p["query_name"], p["region"]): p for p in report["patterns"]}
        assert set(got) == set(by_region)
        for key, events in by_region.items():
            _check_row(got[key], events, key)

        merged = _stats(central_config, metrics_db, "--all-regions")
        got_global = {p["query_name"]: p for p in merged["patterns"]}
        assert set(got_global) == set(PATTERNS)
        assert {p["region"] for p in merged["patterns"]} == {ALL_REGIONS}
        for name, events in by_pattern.items():
            _check_row(got_global[name], events, name)
    finally:
        processes.stop_all()
        for bootstrap in topology.regions.values():
            _delete_topics(bootstrap, [regional_topic])


# --- global statistics from rollups (no Kafka) ----------------------------------------------------


def _utc(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


@pytest.mark.postgres
@pytest.mark.parametrize("level", ["minute", "hourly"])
def test_all_regions_merges_sketches_across_regions_and_partitions(
    metrics_db: str, pg_admin_url: str, level: StatsLevel
) -> None:
    rng = random.Random(7)
    start_us = minute_us(180) // (60 * MINUTE) * (60 * MINUTE)  # whole hours: the hourly level
    end_us = start_us + 120 * MINUTE
    truth: dict[str, list[tuple[float, float, bool]]] = defaultdict(list)
    per_region: dict[tuple[str, str], float] = defaultdict(float)
    records = []
    for minute in range(0, 120, 3):
        window = start_us + minute * MINUTE
        for fingerprint, scale in (("fp-a", 1.0), ("fp-b", 30.0)):
            # Regions far apart, so any percentile of the regions' percentiles is wrong.
            for region, median in (("us-east-1", scale), ("eu-west-1", 20 * scale)):
                for partition in (0, 1):
                    n = rng.randint(1, 8)
                    values = [rng.lognormvariate(0, 0.4) * median for _ in range(n)]
                    weights = [rng.choice([1.0, 4.0]) for _ in range(n)]
                    errors = rng.randint(0, min(1, n))
                    records.append(make_rollup(
                        window, values, weights, fingerprint=fingerprint, region=region,
                        query_name=fingerprint, source_topic=f"{region[:7]}.fraiseql.query-events",
                        source_partition=partition, errors=errors))
                    truth[fingerprint] += [(v, w, i < errors)
                                           for i, (v, w) in enumerate(zip(values, weights, strict=True))]
                    per_region[(fingerprint, region)] += math.fsum(weights)
    with RollupWriter(metrics_db, pool_size=1) as writer:
        writer.write(records)

    with role_url(pg_admin_url, metrics_db, "fraiseql_analyst") as analyst:
        report = pattern_stats_all_regions(analyst, _utc(start_us), _utc(end_us), level)
        regional = pattern_stats(analyst, _utc(start_us), _utc(end_us))

    assert sorted(p.fingerprint for p in report.patterns) == ["fp-a", "fp-b"]
    assert {(p.fingerprint, p.region) for p in regional.patterns} == set(per_region)
    for stats in report.patterns:
        events = truth[stats.fingerprint]
        assert stats.region == ALL_REGIONS
        assert stats.query_name == stats.fingerprint
        assert stats.count == pytest.approx(math.fsum(w for _, w, _ in events), rel=1e-12)
        assert stats.errors == pytest.approx(math.fsum(w for _, w, e in events if e), rel=1e-12)
        assert stats.count == pytest.approx(
            sum(p.count for p in regional.patterns if p.fingerprint == stats.fingerprint), rel=1e-12)
        pairs = [(v, w) for v, w, _ in events]
        for q, got in ((0.50, stats.p50_ms), (0.95, stats.p95_ms), (0.99, stats.p99_ms)):
            exact = exact_lower_quantile(pairs, q)
            assert got is not None
            assert abs(got - exact) <= ALPHA * exact * (1 + 1e-9), (stats.fingerprint, q, got, exact)


def test_stack_rejects_a_bad_region_list() -> None:
    env = {**os.environ, "FRAISEQL_MIRROR_REGIONS": "us-east=127.0.0.1:19092,eu.west=127.0.0.1:29092"}
    out = subprocess.run([STACK, "status", "multiregion"], capture_output=True, text=True, env=env,
                         timeout=60, check=False)
    assert out.returncode == 1
    assert "FRAISEQL_MIRROR_REGIONS: 'eu.west=127.0.0.1:29092'" in out.stderr
