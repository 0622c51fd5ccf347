"""Exact recovery when one Kafka message holds many events (a ``QueryEventBatch``).

The events of a batch message share its offset and its broker timestamp; a checkpoint always
falls between messages, so a restart re-reads whole batches. Checked like test_windowing.py's
single-event properties: a worker killed anywhere publishes exactly what an uninterrupted one
publishes, and every valid event is counted once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraiseql_obs_streams.windowing import Checkpoint, PartitionWindows

from .test_windowing import Published, Stream, _publish, streams


@dataclass(frozen=True)
class BatchMessage:
    events: tuple[dict[str, Any] | None, ...]  # None: an event validation rejects
    arrival: int
    advance: int | None


def batched(stream: Stream, sizes: list[int]) -> list[BatchMessage]:
    """The stream's events cut into messages of ``sizes`` (cycled); a message's arrival is its
    first event's, and an idle advance may follow it (never past the next message's arrival)."""
    messages = stream.messages
    cuts: list[tuple[int, int]] = []  # (start, end) in the stream; start == end: an empty batch
    at = i = 0
    while at < len(messages):
        size = sizes[i % len(sizes)]
        cuts.append((at, min(at + size, len(messages))))
        at += size
        i += 1
    result = []
    for k, (start, end) in enumerate(cuts):
        arrival = messages[start].arrival  # an empty batch: the next message's
        nxt = messages[cuts[k + 1][0]].arrival if k + 1 < len(cuts) else None
        advance = messages[end - 1].advance if end > start else None
        if advance is not None and nxt is not None:
            advance = nxt if nxt > arrival else None
        result.append(BatchMessage(tuple(m.event for m in messages[start:end]), arrival, advance))
    return result


def feed(windows: PartitionWindows, offset: int, message: BatchMessage) -> None:
    """What StreamProcessor._process_batch does with one batch message."""
    if not message.events:
        windows.skip(offset, message.arrival)
        return
    for event in message.events:
        if event is None:
            windows.skip(offset, message.arrival, False)
        else:
            windows.add(offset, event, message.arrival, False)
    windows.settle()


def run(stream: Stream, messages: list[BatchMessage]) -> Published:
    windows = stream.windows()
    published: Published = {}
    for offset, message in enumerate(messages):
        feed(windows, offset, message)
        if message.advance is not None:
            windows.advance_idle(message.advance)
        _publish(published, windows.close_ready())
    _publish(published, windows.close_all())
    return published


def run_with_crashes(stream: Stream, messages: list[BatchMessage], rng: random.Random) -> Published:
    published: Published = {}
    committed: Checkpoint | None = None
    windows = stream.windows()
    offset = restarts = 0
    while offset < len(messages):
        message = messages[offset]
        feed(windows, offset, message)
        offset += 1
        if message.advance is not None:
            windows.advance_idle(message.advance)
        crash = rng.random() if restarts < 8 else 1.0
        if crash >= 0.1:
            _publish(published, windows.close_ready())
            if crash >= 0.2:
                committed = windows.checkpoint()
                if crash >= 0.3:
                    continue
        restarts += 1
        windows = stream.windows(committed)
        offset = committed.commit_offset if committed else 0
    _publish(published, windows.close_all())
    return published


BATCH_SIZES = st.lists(st.integers(0, 12), min_size=1, max_size=6).filter(any)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(), sizes=BATCH_SIZES, seed=st.integers(0, 2**32 - 1))
def test_crash_and_restart_between_batches_publishes_exactly_the_uninterrupted_result(
    stream: Stream, sizes: list[int], seed: int
) -> None:
    messages = batched(stream, sizes)
    uninterrupted = run(stream, messages)
    assert run_with_crashes(stream, messages, random.Random(seed)) == uninterrupted
    valid = sum(1 for m in messages for e in m.events if e is not None)
    assert sum(r["event_count"] for r in uninterrupted.values()) == valid
    for record in uninterrupted.values():  # offsets address messages
        assert 0 <= record["first_offset"] <= record["last_offset"] < len(messages)


def test_the_clock_of_a_checkpoint_applies_after_the_whole_last_batch() -> None:
    """The last re-read batch ends at the checkpoint's position, whose clock includes an idle
    advance: restoring it before the batch's last event would make that event late."""
    s = 1_000_000
    base = 1_000 * 60 * s
    stream = Stream(60 * s, 0, 60 * s, ())
    event: dict[str, Any] = {
        "event_id": "e", "occurred_at": base + 30 * s, "region": "r", "instance": "i",
        "query_name": "q", "sql": "s", "fingerprint": "f", "execution_time_ms": 1.0,
        "sql_generation_time_ms": 0.0, "db_round_trip_time_ms": 0.0, "projection_time_ms": 0.0,
        "rows_returned": 1, "cache_hit": False, "error": None, "sample_weight": 1.0}
    early = {**event, "occurred_at": base + 50 * s}
    later = {**event, "occurred_at": base + 100 * s}  # its window stays open: the restart point
    messages = [BatchMessage((early, later), base + 50 * s, None),
                BatchMessage((event, event, event), base + 55 * s, None)]
    live = stream.windows()
    for offset, message in enumerate(messages):
        feed(live, offset, message)
    live.advance_idle(base + 70 * s)  # closes the first minute's window, with four events
    assert [r.record["event_count"] for r in live.close_ready()] == [4]
    checkpoint = live.checkpoint()
    assert (checkpoint.commit_offset, checkpoint.position) == (0, 2)
    restarted = stream.windows(checkpoint)
    for offset, message in enumerate(messages):
        feed(restarted, offset, message)
    # All three events of the last batch re-joined the published window: none became a correction.
    assert restarted.close_ready() == []
    assert [w.event_count for w in restarted] == [1]
