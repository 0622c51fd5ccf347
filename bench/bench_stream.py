"""Stream throughput on this machine, all against the same topic of N realistic events:

(a) the physical ceiling: a bare confluent-kafka consumer that only decodes the events, with the
    fastest decoder we have (``fraiseql_obs_streams.decoding``, the one the worker uses);
(a0) the same with the generic fastavro codec, for reference;
(b) our stream worker end to end (decode, validate, window, sketch, publish rollups, checkpoint);
(c) the same windowed job written with quixstreams (tumbling event-time windows, per-key reduce
    into per-region count/sum/min/max/sketch buckets, RocksDB state, final() to a topic);
(d) a Faust agent that only decodes (``noack_take`` batches): the upper bound for a Faust worker.

With ``--batched N`` (default 500; 0: off) the same events are also written to a second topic as
``QueryEventBatch`` messages of up to N events (per partition, partitioned like the Recorder), and
(a) and (b) run on it too, as ``bare_batched`` and ``ours_batched``, interleaved with the others.

Usage: .venv/bin/python bench/bench_stream.py [--events 200000] [--rounds 3] [--batched 500] [--json]
Needs the local stack (scripts/stack up). Each engine reads the topic from the beginning in its own
consumer group; the figure is events/s from its first to its N-th event.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

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


def _events(n: int) -> Any:
    now_us = time.time_ns() // 1000
    return generate_events(n, start_us=now_us - 3600 * 1_000_000, end_us=now_us, seed=1,
                           sample_rate=0.01)


def fill_topic(topic: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 50, "compression.type": "lz4",
                         "enable.idempotence": True, "partitioner": PARTITIONER,
                         "queue.buffering.max.messages": 500000})
    for event in _events(n):
        while True:
            try:
                producer.produce(topic, CODEC.encode(QUERY_EVENT, event), event["fingerprint"].encode())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0


def fill_topic_batched(topic: str, n: int, size: int) -> int:
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

    for event in _events(n):
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


def bench_ours(topic: str, n: int) -> float:
    from fraiseql_obs_streams import processor  # noqa: PLC0415
    from fraiseql_obs_streams.worker import run_stream_loop  # noqa: PLC0415

    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    CREATED.extend((prefix + "rollups", prefix + "dead"))
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=BOOTSTRAP, events_topic=topic,
                            rollups_topic=prefix + "rollups", dead_letters_topic=prefix + "dead"),
        streams=StreamSettings(group_id=prefix + "stream", metrics_port=0),
    )
    # Timed from the start of the first process() call to the end of the one that reaches n
    # events: one batch message holds hundreds of events, so sampling a counter from outside
    # would see 0 and then everything.
    original = processor.StreamProcessor.process
    clock = {"start": 0.0, "end": 0.0, "events": 0}
    finished = threading.Event()

    def timed(self: Any, messages: Any) -> Any:
        began = time.perf_counter()
        result = original(self, messages)
        if result.events:
            if not clock["start"]:
                clock["start"] = began
            clock["events"] += result.events
            if clock["events"] >= n and not finished.is_set():
                clock["end"] = time.perf_counter()
                finished.set()
        return result

    processor.StreamProcessor.process = timed  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=run_stream_loop, args=(settings, stop), daemon=True)
    try:
        thread.start()
        finished.wait(600)
    finally:
        stop.set()
        thread.join(60)
        processor.StreamProcessor.process = original  # type: ignore[method-assign]
    return n / (clock["end"] - clock["start"])


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="run every engine this many times, interleaved; report the medians")
    parser.add_argument("--batched", type=int, default=500, metavar="N",
                        help="also run (a) and (b) on batch messages of N events (0: skip)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--skip", default="",
                        help="comma-separated engines to skip: bare,bare_fastavro,ours,quix,faust,"
                             "bare_batched,ours_batched")
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
    fill_topic(topic, args.events)
    print(f"produced {args.events:,} events in {time.perf_counter() - t0:.1f}s to {topic}", file=sys.stderr)
    batched = topic + "-batched"
    if args.batched > 0:
        t0 = time.perf_counter()
        messages = fill_topic_batched(batched, args.events, args.batched)
        print(f"produced {args.events:,} events as {messages:,} batch messages (up to "
              f"{args.batched} events) in {time.perf_counter() - t0:.1f}s to {batched}", file=sys.stderr)
    runs: dict[str, list[float]] = {}
    skip = set(args.skip.split(","))
    if args.batched <= 0:
        skip |= {"bare_batched", "ours_batched"}
    candidates: list[tuple[str, Callable[[str, int], float], str]] = [
        ("bare", bench_bare, topic), ("bare_batched", bench_bare_batched, batched),
        ("bare_fastavro", bench_bare_fastavro, topic), ("ours", bench_ours, topic),
        ("ours_batched", bench_ours, batched), ("quix", bench_quix, topic),
        ("faust", bench_faust, topic)]
    engines = [(name, fn, source) for name, fn, source in candidates if name not in skip]
    # Interleaved rounds: this machine's speed drifts by tens of percent over minutes (a shared VM),
    # so one engine must not get all the fast minutes; the ratios use the medians.
    for round_no in range(1, args.rounds + 1):
        for name, fn, source in engines:
            rate = fn(source, args.events)
            runs.setdefault(name, []).append(rate)
            print(f"round {round_no} {name:>13}: {rate:>10,.0f} events/s", file=sys.stderr)
    results: dict[str, float] = {name: statistics.median(rates) for name, rates in runs.items()}
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
              "bare_batched_vs_bare": "(a) batched / (a) single"}
    print(f"median of {args.rounds} interleaved rounds, {args.events:,} events each")
    for key, value in results.items():
        if "_vs_" in key:
            print(f"{labels[key]:<50} {value:.2f}")
        else:
            spread = f"(runs {', '.join(f'{r:,.0f}' for r in runs[key])})"
            print(f"{labels[key]:<50} {value:>9,.0f} events/s  {spread}")


if __name__ == "__main__":
    main()
