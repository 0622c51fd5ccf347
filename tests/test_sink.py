"""The sink against the real stack: RollupWriter on PostgreSQL, run_sink on Kafka + PostgreSQL.

Also holds the helpers the other sink/stats tests import (record builders, role users).
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import REGISTRY
from psycopg import sql
from pydantic import SecretStr

from fraiseql_obs_sinks.errors import InvalidRecord, WriteFailed
from fraiseql_obs_sinks.records import DEFAULT_LIMITS, RollupRow, TableStatsRow
from fraiseql_obs_sinks.worker import run_sink
from fraiseql_obs_sinks.writer import RollupWriter
from fraiseql_obs_streams.windowing import rollup_id
from fraiseql_observability.codec import DEAD_LETTER, QUERY_ROLLUP, TABLE_STATS, default_codec
from fraiseql_observability.config import DatabaseSettings, KafkaSettings, Settings, SinkSettings
from fraiseql_observability.kafka import ensure_topics
from fraiseql_observability.sketch import DEFAULT_ALPHA, QuantileSketch

MICROS = 1_000_000
MINUTE = 60 * MICROS

# --- helpers shared with test_stats / test_retention / test_migrate ---------------------------------


def minute_us(minutes_ago: int = 0, *, now: float | None = None) -> int:
    """Start of the UTC minute ``minutes_ago`` minutes before now, in epoch microseconds."""
    current = int(time.time() if now is None else now)
    return (current // 60 - minutes_ago) * MINUTE


def make_rollup(
    window_start_us: int,
    values: Sequence[float] = (1.0,),
    weights: Sequence[float] | None = None,
    *,
    fingerprint: str = "fp-users",
    region: str = "us-east-1",
    query_name: str = "users",
    sql_text: str = "SELECT data FROM v_user WHERE data->>'region' = $1",
    errors: int = 0,
    source_topic: str = "fraiseql.query-events",
    source_partition: int = 0,
    first_offset: int = 0,
    window_us: int = MINUTE,
    alpha: float = DEFAULT_ALPHA,
) -> dict[str, Any]:
    """A QueryRollup record as the stream stage builds it (the first ``errors`` values failed)."""
    weights = list(weights) if weights is not None else [1.0] * len(values)
    sketch = QuantileSketch(alpha)
    for value, weight in zip(values, weights, strict=True):
        sketch.add(value, weight)
    keys, bucket_weights = sketch.to_arrays()
    return {
        "rollup_id": rollup_id(source_topic, source_partition, fingerprint, region, window_start_us),
        "fingerprint": fingerprint,
        "query_name": query_name,
        "sql": sql_text,
        "region": region,
        "window_start": window_start_us,
        "window_end": window_start_us + window_us,
        "source_topic": source_topic,
        "source_partition": source_partition,
        "first_offset": first_offset,
        "last_offset": first_offset + len(values) - 1,
        "event_count": len(values),
        "count": math.fsum(weights),
        "error_count": math.fsum(weights[:errors]),
        "cache_hits": 0.0,
        "rows_sum": math.fsum(weights),
        "exec_sum_ms": math.fsum(v * w for v, w in zip(values, weights, strict=True)),
        "exec_min_ms": min(values),
        "exec_max_ms": max(values),
        "sql_generation_sum_ms": 0.1 * math.fsum(weights),
        "db_round_trip_sum_ms": 0.5 * math.fsum(weights),
        "projection_sum_ms": 0.2 * math.fsum(weights),
        "sketch_alpha": alpha,
        "sketch_keys": keys,
        "sketch_weights": bucket_weights,
    }


def make_table_stats(
    taken_at_us: int,
    *,
    snapshot_id: str | None = None,
    table_name: str = "tb_user",
    row_estimate: float = 400_000.0,
) -> dict[str, Any]:
    return {
        "snapshot_id": snapshot_id or str(uuid.uuid4()),
        "taken_at": taken_at_us,
        "source": "app",
        "region": "us-east-1",
        "schema_name": "public",
        "table_name": table_name,
        "relkind": "r",
        "row_estimate": row_estimate,
        "total_bytes": 123_456_789,
        "seq_scans": 42,
        "columns": [
            {"expression": "data->>'region'", "data_type": "text", "null_frac": 0.0,
             "n_distinct": 12.0, "avg_width": 9},
        ],
        "indexes": [
            {"name": "tb_user_pkey", "definition": "CREATE UNIQUE INDEX tb_user_pkey ON tb_user (id)",
             "scans": 1000, "size_bytes": 8192, "is_unique": True, "is_primary": True},
        ],
    }


@contextlib.contextmanager
def role_url(admin_url: str, db_url: str, role: str) -> Iterator[str]:
    """A LOGIN user that is a member of ``role``; yields a URL connecting as it to ``db_url``."""
    user = f"t_{role.removeprefix('fraiseql_')}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
            sql.Identifier(user), sql.Identifier(role)))
    try:
        yield psycopg.conninfo.make_conninfo(db_url, user=user)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                         (user,))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))


def scalar(url: str, query: str, params: Sequence[Any] = ()) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(query.encode(), params).fetchone()
        return None if row is None else row[0]


def rollup_table(url: str) -> list[tuple[Any, ...]]:
    """Every rollup row but written_at, in key order."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT rollup_id, window_start, fingerprint, region, window_end, source_topic,"
            " source_partition, first_offset, last_offset, event_count, count, error_count,"
            " cache_hits, rows_sum, exec_sum_ms, exec_min_ms, exec_max_ms, sql_generation_sum_ms,"
            " db_round_trip_sum_ms, projection_sum_ms, sketch_alpha, sketch_keys, sketch_weights"
            " FROM fraiseql_metrics.rollups ORDER BY rollup_id, window_start"
        ).fetchall()


def pattern_table(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT * FROM fraiseql_metrics.patterns ORDER BY fingerprint").fetchall()


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def lag(topic: str) -> float:
    """Sum of fraiseql_sink_consumer_lag over the topic's partitions."""
    return sum(metric("fraiseql_sink_consumer_lag", {"topic": topic, "partition": str(p)})
               for p in range(6))


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    value = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


# --- RollupWriter ---------------------------------------------------------------------------------


def _batch(n_windows: int = 5, start_minutes_ago: int = 30) -> list[dict[str, Any]]:
    records = []
    for i in range(n_windows):
        start = minute_us(start_minutes_ago - i)
        for fingerprint in ("fp-a", "fp-b"):
            for partition in (0, 1):
                records.append(make_rollup(start, [1.0 + i, 2.5, 40.0], [10.0, 10.0, 1.0],
                                           fingerprint=fingerprint, source_partition=partition,
                                           errors=1))
    return records


@pytest.mark.postgres
def test_writer_is_idempotent(metrics_db: str) -> None:
    batch = _batch()
    with RollupWriter(metrics_db, pool_size=2, timeout_secs=10) as writer:
        first = writer.write(batch)
        assert (first.rollups, first.patterns) == (len(batch), 2)
        snapshot = rollup_table(metrics_db), pattern_table(metrics_db)
        for _ in range(2):
            writer.write(batch)
            assert (rollup_table(metrics_db), pattern_table(metrics_db)) == snapshot
    assert len(snapshot[0]) == len(batch) == 20
    # Sums are over distinct rows: the same window from two source partitions counts twice.
    total = scalar(metrics_db, "SELECT sum(count) FROM fraiseql_metrics.rollups")
    assert total == pytest.approx(sum(r["count"] for r in batch))


@pytest.mark.postgres
def test_writer_dedupes_within_a_batch_and_overwrites_on_redelivery(metrics_db: str) -> None:
    record = make_rollup(minute_us(10), [5.0])
    changed = {**record, "count": 7.0, "event_count": 7}
    with RollupWriter(metrics_db, pool_size=1) as writer:
        assert writer.write([record, changed]).rollups == 1  # one key, the last occurrence wins
        assert scalar(metrics_db, "SELECT count FROM fraiseql_metrics.rollups") == 7.0
        writer.write([record])  # a replay with recomputed data overwrites, never adds
    assert scalar(metrics_db, "SELECT count(*) FROM fraiseql_metrics.rollups") == 1
    assert scalar(metrics_db, "SELECT count FROM fraiseql_metrics.rollups") == 1.0


@pytest.mark.postgres
def test_writer_result_does_not_depend_on_batch_order(metrics_db: str, pg_admin_url: str) -> None:
    early = [make_rollup(minute_us(50), [1.0], fingerprint="fp-x", query_name="usersV1",
                         sql_text="SELECT 1")]
    late = [make_rollup(minute_us(5), [2.0], fingerprint="fp-x", query_name="usersV2",
                        sql_text="SELECT 2")]
    middle = [make_rollup(minute_us(20), [3.0], fingerprint="fp-x", query_name="usersV1",
                          sql_text="SELECT 1", source_partition=3)]
    snapshots = []
    for order in ([early, middle, late], [late, early, middle], [middle, late, early]):
        with psycopg.connect(metrics_db, autocommit=True) as conn:
            conn.execute("TRUNCATE fraiseql_metrics.rollups, fraiseql_metrics.patterns")
        with RollupWriter(metrics_db, pool_size=1) as writer:
            for batch in order:
                writer.write(batch)
        snapshots.append((rollup_table(metrics_db), pattern_table(metrics_db)))
    assert snapshots[0] == snapshots[1] == snapshots[2]
    (_, query_name, sql_text, first_seen, last_seen), = snapshots[0][1]
    assert (query_name, sql_text) == ("usersV2", "SELECT 2")  # the newest window's
    assert first_seen == datetime.fromtimestamp(minute_us(50) / MICROS, UTC)
    assert last_seen == datetime.fromtimestamp((minute_us(5) + MINUTE) / MICROS, UTC)


@pytest.mark.postgres
def test_collector_backfill_creates_partitions(metrics_db: str, pg_admin_url: str) -> None:
    # 40 and 41 days ago: no partition exists (migrate creates today-2 .. today+7).
    old = [make_rollup(minute_us(40 * 1440 + i * 720)) for i in range(3)]
    stats = [make_table_stats(minute_us(41 * 1440))]
    with role_url(pg_admin_url, metrics_db, "fraiseql_collector") as url, \
            RollupWriter(url, pool_size=1) as writer:
        result = writer.write(old, stats)
        assert result.rollups == 3 and result.table_stats == 1
        days = sorted({datetime.fromtimestamp(r["window_start"] / MICROS, UTC).strftime("%Y%m%d")
                       for r in old})
        assert set(result.partitions_created) >= {f"fraiseql_metrics.rollups_p{d}" for d in days}
        assert writer.write(old, stats).partitions_created == ()  # cached, and they exist now
    owners = scalar(
        metrics_db,
        "SELECT array_agg(DISTINCT pg_get_userbyid(relowner)) FROM pg_class"
        " WHERE relnamespace = 'fraiseql_metrics'::regnamespace AND relkind IN ('r', 'p')",
    )
    assert owners == ["fraiseql_maintainer"]
    routed = scalar(metrics_db, f"SELECT count(*) FROM fraiseql_metrics.rollups_p{days[0]}")
    assert routed >= 1


@pytest.mark.postgres
def test_writer_recreates_a_partition_dropped_under_it(metrics_db: str) -> None:
    # Dropped by hand (no retention horizon recorded, so the day still takes minute rows; a day
    # retention dropped is folded into the hourly level instead, tests/test_retention.py).
    record = make_rollup(minute_us(20 * 1440))
    with RollupWriter(metrics_db, pool_size=1) as writer:
        writer.write([record])
        day = datetime.fromtimestamp(record["window_start"] / MICROS, UTC)
        with psycopg.connect(metrics_db, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE {}").format(
                sql.Identifier("fraiseql_metrics", f"rollups_p{day:%Y%m%d}")))
        writer.write([record])  # its day is cached as existing: the writer must notice
    assert scalar(metrics_db, "SELECT count(*) FROM fraiseql_metrics.rollups") == 1


@pytest.mark.postgres
def test_table_stats_upsert(metrics_db: str) -> None:
    snapshot = str(uuid.uuid4())
    taken = minute_us(3)
    records = [make_table_stats(taken, snapshot_id=snapshot, table_name=t) for t in ("a", "b")]
    with RollupWriter(metrics_db, pool_size=1) as writer:
        writer.write(table_stats=records)
        writer.write(table_stats=[{**records[0], "row_estimate": 5.0}])
    with psycopg.connect(metrics_db) as conn:
        rows = conn.execute(
            "SELECT table_name, row_estimate, columns->0->>'expression', indexes->0->>'name'"
            " FROM fraiseql_metrics.table_stats ORDER BY table_name").fetchall()
        latest = conn.execute("SELECT count(*) FROM fraiseql_metrics.table_stats_latest").fetchone()
    assert rows == [("a", 5.0, "data->>'region'", "tb_user_pkey"),
                    ("b", 400_000.0, "data->>'region'", "tb_user_pkey")]
    assert latest == (2,)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"count": float("nan")}, "count is not finite"),
        ({"exec_sum_ms": -1.0}, "exec_sum_ms is negative"),
        ({"fingerprint": "fp\x00"}, "NUL"),
        ({"rollup_id": "not-a-uuid"}, "not a UUID"),
        ({"window_start": 0, "window_end": MINUTE}, "days old"),
        ({"window_start": 2**62, "window_end": 2**62 + MINUTE}, "not a representable time"),
        ({"window_end": 0}, "window_end"),
        ({"sketch_weights": [1.0, 2.0, 3.0]}, "differ in length"),
        ({"sketch_alpha": 1.5}, "sketch_alpha"),
    ],
)
def test_invalid_rollups_are_refused_with_a_reason(change: dict[str, Any], reason: str) -> None:
    record = {**make_rollup(minute_us(2), [1.0, 2.0]), **change}
    with pytest.raises(InvalidRecord, match=reason) as info:
        RollupRow.from_record(record)
    assert info.value.reason == "invalid"


def test_invalid_table_stats_are_refused() -> None:
    record = make_table_stats(minute_us(1))
    record["columns"][0]["null_frac"] = float("nan")
    with pytest.raises(InvalidRecord, match="JSON"):
        TableStatsRow.from_record(record)
    with pytest.raises(InvalidRecord, match="NUL"):
        TableStatsRow.from_record({**make_table_stats(minute_us(1)), "table_name": "a\x00b"})


def test_unreachable_database_is_a_retryable_failure() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with RollupWriter(f"postgresql://nobody:secret@127.0.0.1:{port}/x", pool_size=1,
                      timeout_secs=1) as writer:
        started = time.monotonic()
        with pytest.raises(WriteFailed) as info:
            writer.write([make_rollup(minute_us(1))])
    assert time.monotonic() - started < 5
    assert "secret" not in str(info.value)


# --- the worker -------------------------------------------------------------------------------------


def as_url(conninfo: str) -> str:
    """``postgresql://`` URL of a libpq connection string (the configuration wants URLs)."""
    parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = parts.get("user", "postgres")
    return (f"postgresql://{user}@{parts.get('host', '127.0.0.1')}:{parts.get('port', 5432)}"
            f"/{parts['dbname']}")


def sink_settings(kafka: KafkaSettings, database_url: str, *, timeout_secs: float = 2.0,
                  **sinks: Any) -> Settings:
    return Settings(
        kafka=kafka,
        database=DatabaseSettings(url=SecretStr(as_url(database_url)), pool_size=2,
                                  timeout_secs=timeout_secs),
        sinks=SinkSettings(**{"batch_size": 500, "batch_timeout_secs": 0.2,
                              "group_id": f"{kafka.rollups_topic}.sink", "metrics_port": 0,
                              **sinks}),
    )


@contextlib.contextmanager
def running_sink(settings: Settings) -> Iterator[threading.Thread]:
    stop = threading.Event()
    failures: list[BaseException] = []

    def target() -> None:
        try:
            run_sink(settings, stop=stop)
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)

    thread = threading.Thread(target=target, name="sink", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "run_sink did not stop"
    assert not failures, failures


def produce(kafka: KafkaSettings, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 5})
    for key, value in messages:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def encode_rollups(records: Sequence[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    codec = default_codec()
    return [(r["fingerprint"].encode(), codec.encode(QUERY_ROLLUP, r)) for r in records]


def committed_and_end(kafka: KafkaSettings, group: str, topic: str) -> tuple[int, int]:
    """(sum of committed offsets, sum of high watermarks) over the topic's partitions."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group,
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        committed = sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10))
        end = sum(consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
        return committed, end
    finally:
        consumer.close()


def read_dead_letters(kafka: KafkaSettings, expected: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers,
                         "group.id": f"dl-reader-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([kafka.dead_letters_topic])
    letters: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(letters) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            letters.append(default_codec().decode(msg.value(), expected=DEAD_LETTER))
        # Anything beyond the expected ones would be a duplicate or a wrong dead letter.
        extra = consumer.poll(1.0)
        if extra is not None and not extra.error():
            letters.append(default_codec().decode(extra.value(), expected=DEAD_LETTER))
    finally:
        consumer.close()
    return letters


@pytest.mark.kafka
@pytest.mark.postgres
def test_sink_end_to_end_with_dead_letters(metrics_db: str, kafka_settings: KafkaSettings) -> None:
    settings = sink_settings(kafka_settings, metrics_db)
    kafka = kafka_settings
    ensure_topics(kafka, [kafka.rollups_topic, kafka.table_stats_topic, kafka.dead_letters_topic])
    records = [make_rollup(minute_us(60 - w), [1.0, 3.0], fingerprint=f"fp-{f}", source_partition=p)
               for w in range(10) for f in range(3) for p in range(2)]
    garbage = b"\x00not avro at all"
    nan = {**make_rollup(minute_us(2), [1.0]), "count": float("nan")}
    codec = default_codec()
    stats = [make_table_stats(minute_us(5), table_name=t) for t in ("tb_user", "tb_order")]
    # Duplicates (a stream worker re-publishing after a crash) and every kind of bad input.
    produce(kafka, kafka.rollups_topic, encode_rollups(records) + encode_rollups(records[:7]) + [
        (b"k-garbage", garbage),
        (b"k-nan", codec.encode(QUERY_ROLLUP, nan)),
        (b"k-wrong", codec.encode(TABLE_STATS, stats[0])),
    ])
    produce(kafka, kafka.table_stats_topic, [(b"public.t", codec.encode(TABLE_STATS, s)) for s in stats])
    dead_before = {r: metric("fraiseql_sink_dead_letters_total", {"reason": r})
                   for r in ("undecodable", "invalid", "unexpected_schema")}
    started = time.time()

    with running_sink(settings):
        wait_for(lambda: scalar(metrics_db, "SELECT count(*) FROM fraiseql_metrics.rollups") == 60
                 and scalar(metrics_db, "SELECT count(*) FROM fraiseql_metrics.table_stats") == 2,
                 what="rows in the metrics database")
        group = settings.sinks.group_id
        wait_for(lambda: len(set(committed_and_end(kafka, group, kafka.rollups_topic))) == 1,
                 what="offsets committed after the write")

    letters = read_dead_letters(kafka, expected=3)
    by_reason = {letter["reason"]: letter for letter in letters}
    assert sorted(by_reason) == ["invalid", "undecodable", "unexpected_schema"]
    assert len(letters) == 3
    assert by_reason["undecodable"]["original_value"] == garbage
    assert by_reason["undecodable"]["original_key"] == b"k-garbage"
    assert "count is not finite" in by_reason["invalid"]["detail"]
    assert all(letter["stage"] == "sink" and letter["source_topic"] == kafka.rollups_topic
               for letter in letters)
    for reason, before in dead_before.items():
        assert metric("fraiseql_sink_dead_letters_total", {"reason": reason}) == before + 1
    assert scalar(metrics_db, "SELECT sum(count) FROM fraiseql_metrics.rollups") == 120.0
    assert scalar(metrics_db, "SELECT count(*) FROM fraiseql_metrics.patterns") == 3
    assert metric("fraiseql_metrics_last_write") >= started
    assert committed_and_end(kafka, settings.sinks.group_id, kafka.table_stats_topic)[0] == 2


class TcpProxy:
    """A loopback TCP forwarder that can be switched off and on: a database outage on demand."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.mark.kafka
@pytest.mark.postgres
def test_sink_waits_for_the_database_and_never_commits_unwritten(
    metrics_db: str, kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fraiseql_obs_sinks.worker.LAG_INTERVAL_SECS", 0.3)
    info = psycopg.conninfo.conninfo_to_dict(metrics_db)
    proxy = TcpProxy((str(info.get("host", "127.0.0.1")), int(str(info.get("port", 5432)))))
    proxied = psycopg.conninfo.make_conninfo(metrics_db, host="127.0.0.1", port=str(proxy.port))
    settings = sink_settings(kafka_settings, proxied, timeout_secs=1.0)
    group, topic = settings.sinks.group_id, kafka_settings.rollups_topic
    ensure_topics(kafka_settings, [topic, kafka_settings.table_stats_topic,
                                   kafka_settings.dead_letters_topic])
    records = [make_rollup(minute_us(30 - i), [2.0], fingerprint=f"fp-{i % 4}") for i in range(12)]
    produce(kafka_settings, topic, encode_rollups(records))
    count_rows = "SELECT count(*) FROM fraiseql_metrics.rollups"

    # Phase 1: the database is down for the sink's whole life. Stopping drops the batch.
    retries = metric("fraiseql_sink_retries_total")
    with running_sink(settings):
        wait_for(lambda: metric("fraiseql_sink_retries_total") >= retries + 2, what="retries")
        # Nothing is durable yet: the lag gauge counts every produced message.
        wait_for(lambda: lag(topic) == 12, what="consumer lag of 12")
    assert committed_and_end(kafka_settings, group, topic) == (0, 12)
    assert scalar(metrics_db, count_rows) == 0

    # Phase 2: down at start, back while the sink retries: the same batch goes through.
    retries = metric("fraiseql_sink_retries_total")
    try:
        with running_sink(settings):
            wait_for(lambda: metric("fraiseql_sink_retries_total") >= retries + 1, what="a retry")
            assert committed_and_end(kafka_settings, group, topic) == (0, 12)
            proxy.up()
            wait_for(lambda: scalar(metrics_db, count_rows) == 12, timeout=40, what="the rows")
            wait_for(lambda: committed_and_end(kafka_settings, group, topic) == (12, 12),
                     what="the commit")
            wait_for(lambda: lag(topic) == 0, what="consumer lag back to 0")
    finally:
        proxy.down()
    assert scalar(metrics_db, "SELECT sum(count) FROM fraiseql_metrics.rollups") == 12.0


@pytest.mark.kafka
@pytest.mark.postgres
def test_two_sinks_share_the_partitions_without_loss(metrics_db: str, kafka_settings: KafkaSettings) -> None:
    settings = sink_settings(kafka_settings, metrics_db, batch_size=50)
    topic = kafka_settings.rollups_topic
    ensure_topics(kafka_settings, [topic, kafka_settings.table_stats_topic,
                                   kafka_settings.dead_letters_topic])
    first = [make_rollup(minute_us(200 - i), [1.0], fingerprint=f"fp-{i % 9}") for i in range(150)]
    second = [make_rollup(minute_us(40 - i // 9), [1.0], fingerprint=f"fq-{i % 9}", source_partition=1)
              for i in range(150)]
    count_rows = "SELECT count(*) FROM fraiseql_metrics.rollups"
    with running_sink(settings):
        produce(kafka_settings, topic, encode_rollups(first))
        wait_for(lambda: scalar(metrics_db, count_rows) > 0, what="first rows")
        with running_sink(settings):  # joins the group: a rebalance while messages flow
            produce(kafka_settings, topic, encode_rollups(second))
            wait_for(lambda: scalar(metrics_db, count_rows) == 300, what="all rows")
            wait_for(lambda: committed_and_end(kafka_settings, settings.sinks.group_id, topic)
                     == (300, 300), what="all offsets committed")
    assert scalar(metrics_db, "SELECT sum(count) FROM fraiseql_metrics.rollups") == 300.0


def test_record_times_convert_exactly() -> None:
    start = minute_us(0) + 123_456
    row = RollupRow.from_record(make_rollup(start, [1.0]))
    assert row.window_start == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=start)
    assert row.window_start.tzinfo is not None


# --- the retry/rebalance protocol with scripted clients (deterministic) ----------------------------


class _Msg:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self._t, self._p, self._o, self._v = topic, partition, offset, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return self._v


class _ScriptedConsumer:
    """Plays a script: each consume() call runs the next step (messages or a rebalance)."""

    def __init__(self, topic: str, script: list[Any]) -> None:
        self.topic, self.script = topic, script
        self.assigned = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        self.paused: set[int] = set()
        self.commits: list[list[tuple[int, int]]] = []
        self.callbacks: dict[str, Any] = {}

    def subscribe(self, _topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def consume(self, num_messages: int = 1, timeout: float = 0) -> list[Any]:
        if not self.script:
            time.sleep(min(timeout, 0.01))
            return []
        step = self.script.pop(0)
        if step == "assign":
            self.callbacks["on_assign"](self, self.assigned)
            return []
        if isinstance(step, tuple) and step[0] == "revoke":
            gone = [tp for tp in self.assigned if tp.partition == step[1]]
            self.assigned = [tp for tp in self.assigned if tp.partition != step[1]]
            self.callbacks["on_revoke"](self, gone)
            return []
        return list(step)

    def assignment(self) -> list[TopicPartition]:
        return list(self.assigned)

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in tps}

    def resume(self, tps: list[TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in tps}

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert asynchronous is False
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])


class _FlakyWriter:
    """Fails ``failures`` times with WriteFailed, then records what it is asked to write."""

    limits = DEFAULT_LIMITS

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[RollupRow] = []
        self.attempts = 0

    def write(self, rollups: Sequence[RollupRow] = (), table_stats: Sequence[Any] = ()) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise WriteFailed("database down")
        self.written += list(rollups)

    def ensure_partitions(self, *_: Any) -> list[str]:
        return []


def test_revoke_during_retry_drops_that_partition_and_commits_the_rest() -> None:
    topic = "rollups"
    settings = Settings(kafka=KafkaSettings(rollups_topic=topic),
                        sinks=SinkSettings(batch_size=4, batch_timeout_secs=0.05))
    encoded = [default_codec().encode(QUERY_ROLLUP, make_rollup(minute_us(10 - i), [1.0],
                                                                source_partition=i))
               for i in range(4)]
    messages = [_Msg(topic, i % 2, i // 2, encoded[i]) for i in range(4)]
    # assign, deliver 4 messages (2 per partition) → the write fails → while backing off, the
    # group takes partition 1 away → the retry writes partition 0's rows only.
    consumer = _ScriptedConsumer(topic, ["assign", messages, ("revoke", 1)])
    writer = _FlakyWriter(failures=1)
    stop = threading.Event()
    from fraiseql_obs_sinks.worker import SinkWorker  # noqa: PLC0415 - only this test drives the class

    worker = SinkWorker(settings, consumer, Producer({"bootstrap.servers": "127.0.0.1:1"}),
                        writer, stop=stop)  # type: ignore[arg-type]
    thread = threading.Thread(target=worker.run)
    thread.start()
    wait_for(lambda: bool(consumer.commits), timeout=10, what="a commit")
    stop.set()
    thread.join(10)
    assert writer.attempts == 2
    assert sorted(r.source_partition for r in writer.written) == [0, 2]  # partition 0's messages
    assert consumer.commits == [[(0, 2)]]  # nothing for the revoked partition
    assert consumer.paused == set()  # resumed after the successful retry


def test_stop_during_retry_never_commits_past_the_dropped_batch() -> None:
    topic = "rollups"
    settings = Settings(kafka=KafkaSettings(rollups_topic=topic),
                        sinks=SinkSettings(batch_size=2, batch_timeout_secs=0.05))
    encoded = [default_codec().encode(QUERY_ROLLUP, make_rollup(minute_us(10 - i), [1.0]))
               for i in range(3)]
    stop = threading.Event()
    # Offsets 0-1 form the batch; offset 2 arrives during the back-off; then the worker stops.
    consumer = _ScriptedConsumer(topic, ["assign", [_Msg(topic, 0, 0, encoded[0]),
                                                    _Msg(topic, 0, 1, encoded[1])],
                                         [_Msg(topic, 0, 2, encoded[2])]])
    writer = _FlakyWriter(failures=1000)
    from fraiseql_obs_sinks.worker import SinkWorker  # noqa: PLC0415

    worker = SinkWorker(settings, consumer, Producer({"bootstrap.servers": "127.0.0.1:1"}),
                        writer, stop=stop)  # type: ignore[arg-type]
    thread = threading.Thread(target=worker.run)
    thread.start()
    wait_for(lambda: writer.attempts >= 1 and not consumer.script, timeout=10, what="offset 2 read")
    writer.failures = 0  # the database is back, but too late: we are stopping
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert consumer.commits == []  # offset 2 was not written nor committed past offsets 0-1
    assert writer.written == []
