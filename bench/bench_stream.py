"""Stream throughput on this machine, all against the same topic of N realistic events:

(a) the physical ceiling: a bare confluent-kafka consumer that only decodes the events, with the
    fastest decoder we have (``fraiseql_obs_streams.decoding``, the one the worker uses);
(a0) the same with the generic fastavro codec, for reference;
(b) our stream worker end to end (decode, validate, window, sketch, publish rollups, checkpoint);
(c) the same windowed job written with quixstreams (tumbling event-time windows, per-key reduce
    into per-region count/sum/min/max/sketch buckets, RocksDB state, final() to a topic);
(d) a Faust agent that only decodes (``noack_take`` batches): the upper bound for a Faust worker;
(f) ``faust_engine``: our whole job on the Faust engine (``fraiseql-cli stream --engine faust``,
    ``fraiseql_obs_streams.faust_app``), the same job as (b) over the same topic;
(b') ``native_engine``: (b) run and timed exactly as (f), as a CLI worker process of its own, so
    that (f) / (b') compares the engines alone ((b) shares the bench's process, its heap and the
    threads of the engines before it).

How (b) and (f) are timed. (b) runs in this process and is timed from the start of the first
``StreamProcessor.process`` call that counts events to the end of the one that reaches N (one batch
message holds hundreds of events, so a counter sampled from outside would see 0 and then
everything). (f) must run as a worker process (a Faust worker owns its event loop and signal
handlers), so the child is the real CLI entry point, ``fraiseql_obs_app.cli.main(["--config", ...,
"stream", "--engine", "faust"])``, with the same wrapper (:class:`Clock`, imported by the child)
around ``process``: both engines are timed the same way. Fetching, Faust's per-message machinery,
publishing and the checkpoint round-trips *between* the first and the last counting call are
inside that figure; start-up, the group join, the fetch before the first call and the publish and
checkpoint after the last are not. Caveat: with ``--batched 500`` and 200,000 events the topic holds
~400 messages, fewer than ``streams.batch_size`` (5000), so either engine may fold everything in one
``process`` call, and the figure is then the processor's speed alone (stderr says how many calls).

So the bench also gives a second figure for (b) and (f), ``*_drain``: N / (time from the first
partition assignment, ``StreamProcessor.restore``, to the return of the engine's checkpoint store
after the N-th event: the native ``flush_and_checkpoint``, the Faust ``CheckpointStore.save``). It
includes the fetch, every publish and checkpoint round-trip and the engine's batch timeout
(``consume``/``take_events`` wait up to ``streams.batch_timeout_secs``, 0.5 s, for a batch to fill: a
fixed cost that weighs on a short run), and excludes process start-up and the group join.

As a cross-check that the wrapper measures what the worker itself reports, the bench scrapes the
child worker's ((f) and (b')) own ``fraiseql_stream_events_counted_total`` from its /metrics (``metrics_port =
0``; the port is read from its "serving /metrics on" log line) every 0.2 s and prints, on stderr,
the counter's rate between the first samples at >= 5 % and >= 95 % of N, when samples fall in
between (a ``process`` call may count a large share of N, so the counter can jump past both marks
at once: then "n/a"). stderr also shows, for (b), (f) and (b'), the share of the timed span spent
inside ``process`` and how the drain time splits.

With ``--batched N`` (default 500; 0: off) the same events are also written to a second topic as
``QueryEventBatch`` messages of up to N events (per partition, partitioned like the Recorder), and
(a), (b), (f) and (b') run on it too, as ``bare_batched``, ``ours_batched``, ``faust_engine_batched``
and ``native_engine_batched``, interleaved with the others.

Usage: .venv/bin/python bench/bench_stream.py [--events 200000] [--rounds 3] [--batched 500]
       [--span-secs 20] [--json]
       [--skip faust_engine,faust_engine_batched,native_engine,...]
Needs the local stack (scripts/stack up). Each engine reads the topic from the beginning in its own
consumer group; the figure is events/s from its first to its N-th event.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from fraiseql_obs_producers.encoding import QueryEventEncoder
from fraiseql_obs_producers.loadgen import generate_events
from fraiseql_obs_producers.partitioning import PARTITIONER, partition_of
from fraiseql_obs_streams.decoding import QueryEventDecoder
from fraiseql_observability.codec import QUERY_EVENT, default_codec
from fraiseql_observability.config import KafkaSettings, Settings, StreamSettings
from fraiseql_observability.kafka import ensure_topics
from fraiseql_observability.sketch import QuantileSketch

BOOTSTRAP = os.environ.get("FRAISEQL_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
CODEC = default_codec()
# Topics this run created, deleted at the end (quixstreams' own changelog topics excepted).
CREATED: list[str] = []


# How far back the events' occurred_at reaches from the moment the topic is filled (--span-secs).
SPAN_SECS = 20.0


def _events(n: int, span_secs: float = SPAN_SECS) -> Any:
    now_us = time.time_ns() // 1000
    return generate_events(n, start_us=now_us - int(span_secs * 1_000_000), end_us=now_us, seed=1,
                           sample_rate=0.01)


def fill_topic(topic: str, n: int, span_secs: float = SPAN_SECS) -> None:
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 50, "compression.type": "lz4",
                         "enable.idempotence": True, "partitioner": PARTITIONER,
                         "queue.buffering.max.messages": 500000})
    for event in _events(n, span_secs):
        while True:
            try:
                producer.produce(topic, CODEC.encode(QUERY_EVENT, event), event["fingerprint"].encode())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0


def fill_topic_batched(topic: str, n: int, size: int, span_secs: float = SPAN_SECS) -> int:
    """The same events as :func:`fill_topic`, as batch messages of up to ``size`` events, each in
    the partition of its fingerprint (as the Recorder sends them). Returns the message count."""
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 50, "compression.type": "lz4",
                         "enable.idempotence": True, "queue.buffering.max.messages": 500000})
    partitions = len(producer.list_topics(topic, timeout=30).topics[topic].partitions)
    encoder = QueryEventEncoder()
    pending: dict[int, list[bytes]] = {}
    messages = 0

    def send(partition: int, values: list[bytes]) -> None:
        while True:
            try:
                producer.produce(topic, encoder.batch(values), b"bench", partition=partition)
                return
            except BufferError:
                producer.poll(0.05)

    for event in _events(n, span_secs):
        partition = partition_of(event["fingerprint"].encode(), partitions)
        group = pending.setdefault(partition, [])
        group.append(encoder.encode_event(event))
        if len(group) == size:
            send(partition, group)
            messages += 1
            pending[partition] = []
    for partition, group in pending.items():
        if group:
            send(partition, group)
            messages += 1
    assert producer.flush(120) == 0
    return messages


def bench_bare(topic: str, n: int) -> float:
    return _bare(topic, n, QueryEventDecoder(CODEC).decode)


def bench_bare_batched(topic: str, n: int) -> float:
    """(a) on batch messages: ``decode_message``, counting events."""
    return _bare(topic, n, QueryEventDecoder(CODEC).decode_message, events=True)


def bench_bare_fastavro(topic: str, n: int) -> float:
    return _bare(topic, n, lambda value: CODEC.decode(value, QUERY_EVENT))


def _bare(topic: str, n: int, decode: Callable[[bytes | None], Any], *, events: bool = False) -> float:
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"bench-bare-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "fetch.max.bytes": 64 * 1024 * 1024, "max.partition.fetch.bytes": 8 * 1024 * 1024})
    consumer.subscribe([topic])
    seen = 0
    start = 0.0
    while seen < n:
        for msg in consumer.consume(5000, 1.0):
            if msg.error() is None:
                if not seen:
                    start = time.perf_counter()
                decoded = decode(msg.value())
                seen += len(decoded) if events and isinstance(decoded, list) else 1
    elapsed = time.perf_counter() - start
    consumer.close()
    return n / elapsed


class Clock:
    """Times one run of our job inside the worker's process (module docstring: "How (b) and (f)
    are timed"), by wrapping the processor: ``process`` (the counting calls), ``restore`` (the
    first assignment) and ``checkpoint`` (the engine's store of checkpoints: the native engine's
    ``flush_and_checkpoint``, the Faust engine's ``CheckpointStore.save``)."""

    def __init__(self, n: int, checkpoint_owner: Any, checkpoint_name: str,
                 on_done: Callable[[Clock], None]) -> None:
        self.n = n
        self.owner, self.name = checkpoint_owner, checkpoint_name
        self.on_done = on_done
        self.assigned = self.start = self.end = self.stored = self.inside = 0.0
        self.events = self.calls = 0
        self._undo: list[Callable[[], None]] = []

    @property
    def rate(self) -> float:
        """First counting ``process`` call to the end of the one that reaches N."""
        return self.n / (self.end - self.start)

    @property
    def drain_rate(self) -> float:
        """First assignment to the stored checkpoint that covers the N-th event."""
        return self.n / (self.stored - self.assigned)

    def summary(self, name: str) -> str:
        return (f"  {name}: {self.calls} process() calls, {self.inside / (self.end - self.start):.0%} "
                f"of the timed span inside them; assignment to stored checkpoint "
                f"{self.stored - self.assigned:.2f}s = {self.drain_rate:,.0f} events/s (to the first "
                f"call {self.start - self.assigned:.2f}s, first to last call "
                f"{self.end - self.start:.2f}s, to the stored checkpoint {self.stored - self.end:.2f}s)")

    def install(self) -> None:
        from fraiseql_obs_streams.processor import StreamProcessor  # noqa: PLC0415

        process, restore = StreamProcessor.process, StreamProcessor.restore
        checkpoint = getattr(self.owner, self.name)

        def timed_process(this: Any, messages: Any) -> Any:
            began = time.perf_counter()
            result = process(this, messages)
            if result.events and self.events < self.n:
                self.start = self.start or began
                self.events += result.events
                self.end = time.perf_counter()
                self.inside += self.end - began
                self.calls += 1
            return result

        def timed_restore(this: Any, *args: Any) -> Any:
            self.assigned = self.assigned or time.perf_counter()
            return restore(this, *args)

        def timed_checkpoint(*args: Any, **kwargs: Any) -> Any:
            result = checkpoint(*args, **kwargs)
            if self.events >= self.n and not self.stored:
                self.stored = time.perf_counter()
                self.on_done(self)
            return result

        patched = cast(Any, StreamProcessor)
        patched.process, patched.restore = timed_process, timed_restore
        setattr(self.owner, self.name, timed_checkpoint)

        def undo() -> None:
            patched.process, patched.restore = process, restore
            setattr(self.owner, self.name, checkpoint)

        self._undo.append(undo)

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()


# Each run's drain figure (module docstring), by engine: reported next to the main figures.
DRAIN: dict[str, list[float]] = {}


def bench_ours(topic: str, n: int) -> float:
    from fraiseql_obs_streams.processor import StreamProcessor  # noqa: PLC0415
    from fraiseql_obs_streams.worker import run_stream_loop  # noqa: PLC0415

    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    CREATED.extend((prefix + "rollups", prefix + "dead"))
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=BOOTSTRAP, events_topic=topic,
                            rollups_topic=prefix + "rollups", dead_letters_topic=prefix + "dead"),
        streams=StreamSettings(group_id=prefix + "stream", metrics_port=0),
    )
    finished = threading.Event()
    clock = Clock(n, StreamProcessor, "flush_and_checkpoint", lambda _clock: finished.set())
    clock.install()
    stop = threading.Event()
    thread = threading.Thread(target=run_stream_loop, args=(settings, stop), daemon=True)
    try:
        thread.start()
        if not finished.wait(600):
            raise RuntimeError("our stream worker did not count every event within 600 s")
    finally:
        stop.set()
        thread.join(60)
        clock.uninstall()
    print(clock.summary("ours"), file=sys.stderr)
    DRAIN.setdefault("ours" if "batched" not in topic else "ours_batched", []).append(clock.drain_rate)
    return clock.rate


def bench_quix(topic: str, n: int) -> float:
    from quixstreams import Application  # noqa: PLC0415
    from quixstreams.models.serializers import Deserializer  # noqa: PLC0415

    class AvroEvents(Deserializer):
        def __init__(self) -> None:
            """Typed stand-in for quixstreams' unannotated ``Deserializer.__init__``, which does nothing."""

        def __call__(self, value: bytes, ctx: Any) -> Any:
            return CODEC.decode(value, QUERY_EVENT)

    sketch = QuantileSketch()
    counted = {"n": 0, "start": 0.0, "end": 0.0}

    def processed(_topic: str, _partition: int, _offset: int) -> None:
        counted["n"] += 1
        if counted["n"] == 1:
            counted["start"] = time.perf_counter()
        if counted["n"] == n:
            counted["end"] = time.perf_counter()
            app.stop()

    def initializer(event: dict[str, Any]) -> dict[str, Any]:
        return reducer({}, event)

    def reducer(agg: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
        w, x = event["sample_weight"], event["execution_time_ms"]
        cell = agg.get(event["region"])
        if cell is None:
            cell = agg[event["region"]] = {"count": 0.0, "errors": 0.0, "sum": 0.0, "min": x, "max": x,
                                           "buckets": {}}
        cell["count"] += w
        cell["errors"] += w if event["error"] else 0.0
        cell["sum"] += w * x
        cell["min"] = min(cell["min"], x)
        cell["max"] = max(cell["max"], x)
        key = str(sketch.key(x))
        cell["buckets"][key] = cell["buckets"].get(key, 0.0) + w
        return agg

    state_dir = tempfile.mkdtemp(prefix="quix-bench-")
    app = Application(broker_address=BOOTSTRAP, consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
                      auto_offset_reset="earliest", state_dir=state_dir, loglevel="WARNING",
                      on_message_processed=processed, commit_interval=1.0)
    source = app.topic(topic, value_deserializer=AvroEvents(),
                       timestamp_extractor=lambda value, _h, _ts, _tt: value["occurred_at"] // 1000)
    sink = app.topic(f"bench-quix-out-{uuid.uuid4().hex[:8]}", value_serializer="json")
    CREATED.append(sink.name)
    sdf = app.dataframe(source)
    sdf = sdf.tumbling_window(60_000, grace_ms=90_000).reduce(reducer, initializer).final()
    sdf.to_topic(sink)
    app.run()
    return n / (counted["end"] - counted["start"])


FAUST_CHILD = r'''
import sys, time, faust, logging
topic_name, n, group = sys.argv[1], int(sys.argv[2]), sys.argv[3]
from fraiseql_observability.codec import default_codec, QUERY_EVENT
decode = default_codec().decode
app = faust.App(group, broker="kafka://{bootstrap}", value_serializer="raw", web_enabled=False,
                stream_wait_empty=False, topic_disable_leader=True, broker_max_poll_records=5000,
                stream_buffer_maxsize=16384, consumer_auto_offset_reset="earliest")
topic = app.topic(topic_name, value_serializer="raw")
state = {{"n": 0, "start": 0.0}}

@app.agent(topic)
async def consume(stream):
    async for batch in stream.noack_take(2000, within=0.5):
        if not state["n"]:
            state["start"] = time.perf_counter()
        for event in batch:
            decode(event.message.value, QUERY_EVENT)
        state["n"] += len(batch)
        if state["n"] >= n:
            sys.__stdout__.write(f"RATE {{n / (time.perf_counter() - state['start'])}}\n")
            sys.__stdout__.flush()
            import os
            os._exit(0)

app.finalize()
faust.Worker(app, loglevel="WARNING", redirect_stdouts=False).execute_from_commandline()
'''


def bench_faust(topic: str, n: int) -> float:
    code = FAUST_CHILD.format(bootstrap=BOOTSTRAP)
    out = subprocess.run([sys.executable, "-c", code, topic, str(n), f"bench-faust-{uuid.uuid4().hex[:8]}"],
                         capture_output=True, text=True, timeout=600, check=False,
                         cwd=tempfile.mkdtemp(prefix="faust-bench-"))
    for line in out.stdout.splitlines():
        if line.startswith("RATE"):
            return float(line.split()[1])
    raise RuntimeError(f"faust bench failed: {out.stderr[-2000:]}")


ENGINE_CHILD = r'''
import os, sys, threading
bench_dir, config, n, engine = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, bench_dir)
from bench_stream import Clock
if engine == "faust":
    from fraiseql_obs_streams.faust_app import CheckpointStore as owner
    checkpoint = "save"
else:
    from fraiseql_obs_streams.processor import StreamProcessor as owner
    checkpoint = "flush_and_checkpoint"

def done(clock):
    sys.__stdout__.write(f"RATE {clock.rate} DRAIN {clock.drain_rate}\n{clock.summary(engine + '_engine')}\n")
    sys.__stdout__.flush()
    # A last scrape of /metrics sees the total, then the bench is done with this worker.
    threading.Timer(2 * 0.2 + 0.1, os._exit, (0,)).start()

Clock(n, owner, checkpoint, done).install()
from fraiseql_obs_app.cli import main
sys.exit(main(["--config", config, "stream", "--engine", engine]))
'''

_SCRAPE_EVERY_SECS = 0.2
_COUNTED = "fraiseql_stream_events_counted_total"


def _counter_rate(samples: list[tuple[float, float]], n: int) -> float | None:
    """The counter's rate between its first samples at >= 5 % and >= 95 % of ``n``: None unless
    at least two samples lie in that span (then the start-up and the tail are both left out)."""
    low = next(((t, v) for t, v in samples if v >= 0.05 * n), None)
    high = next(((t, v) for t, v in samples if v >= 0.95 * n), None)
    if low is None or high is None or high[0] <= low[0]:
        return None
    inside = [v for _t, v in samples if low[1] <= v <= high[1]]
    if len(set(inside)) < 2 or high[1] == low[1]:
        return None
    return (high[1] - low[1]) / (high[0] - low[0])


def _scrape(url: str) -> float | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
            body: bytes = response.read()
    except OSError:
        return None
    found = re.search(rf"^{_COUNTED} (\S+)$", body.decode(), re.MULTILINE)
    return float(found.group(1)) if found else None


def bench_faust_engine(topic: str, n: int) -> float:
    """(f): ``fraiseql-cli stream --engine faust`` in a child process, timed as (b) is."""
    return _bench_cli_engine(topic, n, "faust")


def bench_native_engine(topic: str, n: int) -> float:
    """(b'): (b) as (f) runs, ``fraiseql-cli stream --engine native`` in a child process: (b)
    shares this process with the bench and the engines before it, (f) starts fresh."""
    return _bench_cli_engine(topic, n, "native")


def _bench_cli_engine(topic: str, n: int, engine: str) -> float:
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=BOOTSTRAP, events_topic=topic,
                            rollups_topic=prefix + "rollups", dead_letters_topic=prefix + "dead"),
        streams=StreamSettings(group_id=prefix + "stream", metrics_port=0, engine=engine),
    )
    CREATED.extend((prefix + "rollups", prefix + "dead"))
    if engine == "faust":
        from fraiseql_obs_streams.faust_app import checkpoint_topic  # noqa: PLC0415 (loads Faust)

        CREATED.append(checkpoint_topic(settings))
    work = Path(tempfile.mkdtemp(prefix=f"{engine}-engine-bench-"))  # Faust's data dir lands here
    config = work / "fraiseql.toml"
    # Only what differs from the defaults, as bench_ours builds its Settings.
    config.write_text(f"""[observability.kafka]
bootstrap_servers = "{BOOTSTRAP}"
events_topic = "{topic}"
rollups_topic = "{settings.kafka.rollups_topic}"
dead_letters_topic = "{settings.kafka.dead_letters_topic}"
[observability.streams]
group_id = "{settings.streams.group_id}"
metrics_port = 0
engine = "{engine}"
""")
    log_path = work / "worker.log"
    # The file is the whole configuration: FRAISEQL_* variables would win over it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAISEQL_")}
    env["PYTHONUNBUFFERED"] = "1"
    with log_path.open("wb") as log_file:
        child = subprocess.Popen([sys.executable, "-c", ENGINE_CHILD, str(Path(__file__).parent),
                                  str(config), str(n), engine],
                                 stdout=subprocess.PIPE, stderr=log_file, env=env, cwd=work)
    try:  # the work folder (config, log, Faust's data dir) goes once the run is over
        assert child.stdout is not None
        url: str | None = None
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + 600
        try:
            while child.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{engine} engine bench timed out: "
                                       f"{log_path.read_text(errors='replace')[-2000:]}")
                if url is None:
                    found = re.search(r"serving /metrics on (http://\S+/metrics)",
                                      log_path.read_text(errors="replace"))
                    url = found.group(1) if found else None
                else:
                    value = _scrape(url)
                    if value is not None:
                        samples.append((time.perf_counter(), value))
                time.sleep(_SCRAPE_EVERY_SECS)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
        out = child.stdout.read().decode()
        child.stdout.close()
        found = re.search(r"RATE (\S+) DRAIN (\S+)\n(.*)", out)
        if found is None:
            raise RuntimeError(f"{engine} engine bench failed (exit {child.returncode}): "
                               f"{log_path.read_text(errors='replace')[-3000:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    name = f"{engine}_engine" + ("_batched" if "batched" in topic else "")
    DRAIN.setdefault(name, []).append(float(found.group(2)))
    metric = _counter_rate(samples, n)
    last = samples[-1][1] if samples else 0.0
    print(f"{found.group(3)}; /metrics {_COUNTED} reached {last:,.0f}, its 5-95 % rate "
          f"{f'{metric:,.0f} events/s' if metric else 'n/a'}", file=sys.stderr)
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="run every engine this many times, interleaved; report the medians")
    parser.add_argument("--batched", type=int, default=500, metavar="N",
                        help="also run (a), (b), (f), (b') on batch messages of N events (0: skip)")
    parser.add_argument("--span-secs", type=float, default=SPAN_SECS, metavar="S",
                        help="the events occurred over the S seconds before the topic is filled "
                             "(default 20: 200,000 events are 20 s of a 10,000 queries/s API, all "
                             "on time; 3600: a backfilled hour, almost every event a late "
                             "correction, the workload of the figures before 2026-12-03)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--skip", default="",
                        help="comma-separated engines to skip: bare,bare_fastavro,ours,quix,faust,"
                             "faust_engine,native_engine,bare_batched,ours_batched,"
                             "faust_engine_batched,native_engine_batched")
    args = parser.parse_args()
    topic = f"bench-{uuid.uuid4().hex[:8]}.fraiseql.query-events"
    topics = [topic, topic + "-batched"] if args.batched > 0 else [topic]
    ensure_topics(KafkaSettings(bootstrap_servers=BOOTSTRAP), topics)
    CREATED.extend(topics)
    try:
        run(args, topic)
    finally:
        admin = AdminClient({"bootstrap.servers": BOOTSTRAP})  # kept alive until the futures resolve
        futures = admin.delete_topics(CREATED, operation_timeout=30)
        for name, future in futures.items():
            try:
                future.result()
            except Exception as exc:  # a leftover topic is not worth failing the figures for
                print(f"could not delete {name}: {exc}", file=sys.stderr)


def run(args: argparse.Namespace, topic: str) -> None:
    t0 = time.perf_counter()
    fill_topic(topic, args.events, args.span_secs)
    print(f"produced {args.events:,} events in {time.perf_counter() - t0:.1f}s to {topic}", file=sys.stderr)
    batched = topic + "-batched"
    if args.batched > 0:
        t0 = time.perf_counter()
        messages = fill_topic_batched(batched, args.events, args.batched, args.span_secs)
        print(f"produced {args.events:,} events as {messages:,} batch messages (up to "
              f"{args.batched} events) in {time.perf_counter() - t0:.1f}s to {batched}", file=sys.stderr)
    runs: dict[str, list[float]] = {}
    skip = set(args.skip.split(","))
    if args.batched <= 0:
        skip |= {"bare_batched", "ours_batched", "faust_engine_batched", "native_engine_batched"}
    candidates: list[tuple[str, Callable[[str, int], float], str]] = [
        ("bare", bench_bare, topic), ("bare_batched", bench_bare_batched, batched),
        ("bare_fastavro", bench_bare_fastavro, topic), ("ours", bench_ours, topic),
        ("ours_batched", bench_ours, batched), ("quix", bench_quix, topic),
        ("faust", bench_faust, topic), ("faust_engine", bench_faust_engine, topic),
        ("faust_engine_batched", bench_faust_engine, batched),
        ("native_engine", bench_native_engine, topic),
        ("native_engine_batched", bench_native_engine, batched)]
    engines = [(name, fn, source) for name, fn, source in candidates if name not in skip]
    # Interleaved rounds: this machine's speed drifts by tens of percent over minutes (a shared VM),
    # so one engine must not get all the fast minutes; the ratios use the medians.
    for round_no in range(1, args.rounds + 1):
        for name, fn, source in engines:
            rate = fn(source, args.events)
            runs.setdefault(name, []).append(rate)
            print(f"round {round_no} {name:>21}: {rate:>10,.0f} events/s", file=sys.stderr)
    results: dict[str, float] = {name: statistics.median(rates) for name, rates in runs.items()}

    def ratio(top: str, bottom: str) -> None:
        if top in results and bottom in results:
            results[f"{top}_vs_{bottom}"] = results[top] / results[bottom]

    if "bare" in results and "ours" in results:
        results["ours_vs_bare"] = results["ours"] / results["bare"]
    if "bare_fastavro" in results and "ours" in results:
        results["ours_vs_bare_fastavro"] = results["ours"] / results["bare_fastavro"]
    if "quix" in results and "ours" in results:
        results["ours_vs_quix"] = results["ours"] / results["quix"]
    if "bare_batched" in results and "ours_batched" in results:
        results["ours_batched_vs_bare_batched"] = results["ours_batched"] / results["bare_batched"]
    if "ours_batched" in results and "ours" in results:
        results["ours_batched_vs_ours"] = results["ours_batched"] / results["ours"]
    if "bare_batched" in results and "bare" in results:
        results["bare_batched_vs_bare"] = results["bare_batched"] / results["bare"]
    # The second view of (b) and (f) (module docstring): assignment to the stored checkpoint.
    for name, rates in DRAIN.items():
        runs[f"{name}_drain"] = rates
        results[f"{name}_drain"] = statistics.median(rates)
    ratio("faust_engine_drain", "ours_drain")
    ratio("faust_engine_batched_drain", "ours_batched_drain")
    ratio("faust_engine", "bare")
    ratio("faust_engine", "quix")
    ratio("faust_engine", "ours")
    ratio("faust_engine_batched", "bare_batched")
    ratio("faust_engine_batched", "quix")
    ratio("faust_engine_batched", "ours_batched")
    ratio("faust_engine_batched", "faust_engine")
    ratio("faust_engine", "native_engine")
    ratio("faust_engine_batched", "native_engine_batched")
    ratio("native_engine_batched", "bare_batched")
    ratio("native_engine_batched", "quix")
    ratio("faust_engine_drain", "native_engine_drain")
    ratio("faust_engine_batched_drain", "native_engine_batched_drain")
    ratio("ours_batched", "quix")
    if args.json:
        print(json.dumps({"median": results, "runs": runs}))
        return
    labels = {"bare": "(a) bare confluent-kafka consumer, decode only",
              "bare_fastavro": "(a0) the same, decoding with fastavro",
              "ours": "(b) fraiseql stream worker, end to end",
              "quix": "(c) quixstreams, same windowed job",
              "faust": "(d) Faust agent, decode only",
              "ours_vs_bare": "(b) / (a)", "ours_vs_bare_fastavro": "(b) / (a0)",
              "ours_vs_quix": "(b) / (c)",
              "bare_batched": "(a) on batch messages", "ours_batched": "(b) on batch messages",
              "ours_batched_vs_bare_batched": "(b) / (a), both on batch messages",
              "ours_batched_vs_ours": "(b) batched / (b) single",
              "bare_batched_vs_bare": "(a) batched / (a) single",
              "faust_engine": "(f) our job on the Faust engine, end to end",
              "faust_engine_batched": "(f) on batch messages",
              "faust_engine_vs_bare": "(f) / (a)", "faust_engine_vs_quix": "(f) / (c)",
              "faust_engine_vs_ours": "(f) / (b)",
              "faust_engine_batched_vs_bare_batched": "(f) / (a), both on batch messages",
              "faust_engine_batched_vs_quix": "(f) batched / (c)",
              "faust_engine_batched_vs_ours_batched": "(f) / (b), both on batch messages",
              "faust_engine_batched_vs_faust_engine": "(f) batched / (f) single",
              "ours_batched_vs_quix": "(b) batched / (c)",
              "ours_drain": "(b) assignment to stored checkpoint",
              "ours_batched_drain": "(b) the same, on batch messages",
              "faust_engine_drain": "(f) assignment to stored checkpoint",
              "faust_engine_batched_drain": "(f) the same, on batch messages",
              "faust_engine_drain_vs_ours_drain": "(f) / (b), assignment to checkpoint",
              "faust_engine_batched_drain_vs_ours_batched_drain":
                  "(f) / (b), the same, on batch messages",
              "native_engine": "(b') (b) as a CLI worker process, like (f)",
              "native_engine_batched": "(b') on batch messages",
              "native_engine_drain": "(b') assignment to stored checkpoint",
              "native_engine_batched_drain": "(b') the same, on batch messages",
              "faust_engine_vs_native_engine": "(f) / (b')",
              "faust_engine_batched_vs_native_engine_batched": "(f) / (b'), both on batch messages",
              "native_engine_batched_vs_bare_batched": "(b') / (a), both on batch messages",
              "native_engine_batched_vs_quix": "(b') batched / (c)",
              "faust_engine_drain_vs_native_engine_drain": "(f) / (b'), assignment to checkpoint",
              "faust_engine_batched_drain_vs_native_engine_batched_drain":
                  "(f) / (b'), the same, on batch messages"}
    print(f"median of {args.rounds} interleaved rounds, {args.events:,} events each")
    for key, value in results.items():
        if "_vs_" in key:
            print(f"{labels[key]:<50} {value:.2f}")
        else:
            spread = f"(runs {', '.join(f'{r:,.0f}' for r in runs[key])})"
            print(f"{labels[key]:<50} {value:>9,.0f} events/s  {spread}")


if __name__ == "__main__":
    main()
