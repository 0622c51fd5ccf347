"""Event-time windows per partition, late corrections, and exact crash recovery (windowing.py).

The contract of streams/DESIGN.md, checked on random streams with disorder, skewed host clocks,
late events, idle advances and crashes at any point:

* every valid event is counted exactly once, in its own (fingerprint, region, window), either in
  the window's rollup or in one correction of it;
* a worker that dies at any point and restarts from its last checkpoint publishes exactly what an
  uninterrupted worker publishes (same ids, same contents), and never two contents under one id;
* a fully shuffled stream costs about one correction per (pattern, region, window) and arrival
  slot, not one per event.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraiseql_obs_streams.windowing import (
    MICROS,
    Checkpoint,
    Outcome,
    PartitionWindows,
    correction_id,
    rollup_id,
)
from fraiseql_observability.config import StreamSettings
from fraiseql_observability.sketch import QuantileSketch

TOPIC = "fraiseql.query-events"
PARTITION = 3
PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_event(
    occurred_at: int,
    *,
    fingerprint: str = "ab12",
    region: str = "us-east-1",
    exec_ms: float = 10.0,
    weight: float = 1.0,
    error: str | None = None,
    cache_hit: bool = False,
    rows: int = 1,
) -> dict[str, Any]:
    return {
        "event_id": f"ev-{occurred_at}",
        "occurred_at": occurred_at,
        "region": region,
        "instance": "api-1",
        "query_name": f"q_{fingerprint}",
        "sql": f"SELECT /* {fingerprint} */ data FROM tv_x WHERE id = $1",
        "fingerprint": fingerprint,
        "execution_time_ms": exec_ms,
        "sql_generation_time_ms": exec_ms / 10,
        "db_round_trip_time_ms": exec_ms / 2,
        "projection_time_ms": exec_ms / 5,
        "rows_returned": rows,
        "cache_hit": cache_hit,
        "error": error,
        "sample_weight": weight,
    }


@dataclass(frozen=True)
class Message:
    """One Kafka message: ``event`` None stands for an invalid one the worker skips."""

    event: dict[str, Any] | None
    arrival: int  # the broker's append time, µs
    advance: int | None  # after this message, an idle advance may move the clock here


@dataclass(frozen=True)
class Stream:
    window_us: int
    grace_us: int
    slot_us: int
    messages: tuple[Message, ...]

    def windows(self, checkpoint: Checkpoint | None = None) -> PartitionWindows:
        return PartitionWindows(TOPIC, PARTITION, window_us=self.window_us, grace_us=self.grace_us,
                                slot_us=self.slot_us, checkpoint=checkpoint)


# --- strategies --------------------------------------------------------------------------------

FINGERPRINTS = ("aa", "bb", "c0ffee")
REGIONS = ("us-east-1", "eu-west-1")
ERRORS = (None, None, "Timeout")


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    """Arrival times move forward (now and then a step back: a broker clock adjusted, a new
    leader); event times scatter around them: stragglers, hosts whose clocks run minutes ahead or
    behind, and events that arrive long after their window closed (a backfill)."""
    window_s = draw(st.sampled_from([1, 5, 60]))
    grace_s = draw(st.sampled_from([0, 2, 10]))
    slot_s = draw(st.sampled_from([1, window_s, 3 * window_s]))
    quantum = MICROS // 2  # half seconds, nudged by a microsecond: boundaries coincide often
    clock = draw(st.integers(min_value=10**6, max_value=10**9)) * MICROS
    span = 4 * (window_s + grace_s)
    n = draw(st.integers(min_value=0, max_value=70))
    raw = draw(st.lists(st.tuples(
        st.integers(0, 14),  # 0: an invalid message
        st.integers(-1, 2 * window_s + 1),  # arrival advance in quanta (-1: the clock steps back)
        st.integers(-3 * span, span),  # event time around the arrival, in quanta
        st.integers(0, 2**16),  # packed: fingerprint, region, error, cache hit, nudge, skewed host
        st.integers(0, 40_000),  # execution time in 1/8 ms
        st.integers(1, 100),  # sample weight
        st.booleans(),  # an idle advance may follow
    ), min_size=n, max_size=n))
    messages: list[Message] = []
    arrivals: list[int] = []
    for _kind, advance, *_ in raw:
        clock += advance * quantum
        arrivals.append(clock)
    for i, (kind, _advance, offset_q, packed, exec_eighths, weight, idle) in enumerate(raw):
        arrival = arrivals[i]
        # An idle advance never passes the next message's arrival (the broker's clock is not
        # behind the worker's by more than idle_secs): the assumption of DESIGN.md.
        nxt = arrivals[i + 1] if i + 1 < len(arrivals) else arrival + span * quantum
        adv = nxt if idle and nxt > arrival else None
        if kind == 0:
            messages.append(Message(None, arrival, adv))
            continue
        nudge = (0, 0, 0, -1, 1)[(packed // 36) % 5]
        skew = (0, 0, 0, 0, 7, -9)[(packed // 180) % 6] * 60 * MICROS  # minutes fast or slow
        messages.append(Message(make_event(
            arrival + offset_q * quantum + nudge + skew,
            fingerprint=FINGERPRINTS[packed % 3], region=REGIONS[(packed // 3) % 2],
            exec_ms=exec_eighths / 8, weight=float(weight), error=ERRORS[(packed // 6) % 3],
            cache_hit=bool((packed // 18) % 2), rows=packed % 1000,
        ), arrival, adv))
    return Stream(window_s * MICROS, grace_s * MICROS, slot_s * MICROS, tuple(messages))


# --- running a worker ----------------------------------------------------------------------------

Published = dict[str, dict[str, Any]]


def _publish(published: Published, rollups: Sequence[Any]) -> None:
    for rollup in rollups:
        previous = published.get(rollup.rollup_id)
        assert previous is None or previous == rollup.record, "two contents under one id"
        published[rollup.rollup_id] = rollup.record


def _feed(windows: PartitionWindows, offset: int, message: Message) -> Outcome | None:
    if message.event is None:
        windows.skip(offset, message.arrival)
        return None
    return windows.add(offset, message.event, message.arrival)


def run(
    stream: Stream, batch_ends: set[int], *, advance: bool = True
) -> tuple[Published, dict[int, Outcome]]:
    """An uninterrupted worker closing what is ready after each batch (its last offset in
    ``batch_ends``), optionally advancing an idle clock there."""
    windows = stream.windows()
    published: Published = {}
    outcomes: dict[int, Outcome] = {}
    for offset, message in enumerate(stream.messages):
        outcome = _feed(windows, offset, message)
        if outcome is not None:
            outcomes[offset] = outcome
        if offset in batch_ends:
            if advance and message.advance is not None:
                windows.advance_idle(message.advance)
            _publish(published, windows.close_ready())
    _publish(published, windows.close_all())
    return published, outcomes


def run_with_crashes(stream: Stream, rng: random.Random) -> Published:
    """A worker killed now and then: before publishing, after publishing but before the checkpoint,
    or after it; each incarnation restarts from the last committed checkpoint."""
    published: Published = {}
    committed: Checkpoint | None = None
    windows = stream.windows()
    offset = 0
    restarts = 0
    while offset < len(stream.messages):
        message = stream.messages[offset]
        _feed(windows, offset, message)
        offset += 1
        if rng.random() < 0.3 or offset == len(stream.messages):  # a batch ends
            if message.advance is not None and rng.random() < 0.5:
                windows.advance_idle(message.advance)
            crash = rng.random() if restarts < 8 else 1.0
            if crash < 0.1:  # killed before publishing
                pass
            else:
                _publish(published, windows.close_ready())
                if crash >= 0.2:  # (between 0.1 and 0.2: killed before the checkpoint)
                    committed = windows.checkpoint()
                    if crash >= 0.3:
                        continue
            restarts += 1
            windows = stream.windows(committed)
            offset = committed.commit_offset if committed else 0
    _publish(published, windows.close_all())
    return published


# --- an independent oracle -----------------------------------------------------------------------

def oracle(stream: Stream) -> dict[str, list[int]]:
    """Rollup id -> the offsets it must count, from the rules alone: the partition clock is the
    largest arrival so far; an event whose window ends after (clock - grace) joins the window,
    any other joins the correction of its window for the clock's arrival slot."""
    expected: dict[str, list[int]] = defaultdict(list)
    clock: int | None = None
    for offset, message in enumerate(stream.messages):
        clock = message.arrival if clock is None else max(clock, message.arrival)
        event = message.event
        if event is None:
            continue
        start = event["occurred_at"] - event["occurred_at"] % stream.window_us
        fp, region = event["fingerprint"], event["region"]
        if start + stream.window_us > clock - stream.grace_us:
            expected[rollup_id(TOPIC, PARTITION, fp, region, start)].append(offset)
        else:
            slot = clock - clock % stream.slot_us
            expected[correction_id(TOPIC, PARTITION, fp, region, start, slot)].append(offset)
    return dict(expected)


def _check_contents(stream: Stream, published: Published) -> None:
    expected = oracle(stream)
    assert {rid: r["event_count"] for rid, r in published.items()} == \
        {rid: len(offsets) for rid, offsets in expected.items()}
    for rid, offsets in expected.items():
        record = published[rid]
        events = [stream.messages[o].event for o in offsets]
        assert all(e is not None for e in events)
        real = [e for e in events if e is not None]
        assert (record["first_offset"], record["last_offset"]) == (offsets[0], offsets[-1])
        assert record["count"] == pytest.approx(sum(e["sample_weight"] for e in real))
        assert record["error_count"] == pytest.approx(
            sum(e["sample_weight"] for e in real if e["error"] is not None))
        assert record["exec_min_ms"] == min(e["execution_time_ms"] for e in real)
        assert record["exec_max_ms"] == max(e["execution_time_ms"] for e in real)
        window_starts = {e["occurred_at"] - e["occurred_at"] % stream.window_us for e in real}
        assert window_starts == {record["window_start"]}  # each event in its own window
        sketch = QuantileSketch(record["sketch_alpha"])
        for e in real:
            sketch.add(e["execution_time_ms"], e["sample_weight"])
        keys, weights = sketch.to_arrays()
        assert list(record["sketch_keys"]) == list(keys)
        assert list(record["sketch_weights"]) == pytest.approx(list(weights))


# --- properties ----------------------------------------------------------------------------------

@PROPERTY
@given(stream=streams(), batches=st.sets(st.integers(0, 70)), advance=st.booleans())
def test_every_valid_event_is_counted_once_in_its_own_window(
    stream: Stream, batches: set[int], advance: bool
) -> None:
    published, outcomes = run(stream, batches, advance=advance)
    _check_contents(stream, published)
    valid = sum(1 for m in stream.messages if m.event is not None)
    assert sum(r["event_count"] for r in published.values()) == valid
    corrected = {rid for rid, r in published.items() if r["correction_slot"] is not None}
    assert sum(published[rid]["event_count"] for rid in corrected) == \
        sum(1 for o in outcomes.values() if o is Outcome.CORRECTED)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(), seed=st.integers(0, 2**32 - 1))
def test_crash_and_restart_anywhere_publishes_exactly_the_uninterrupted_result(
    stream: Stream, seed: int
) -> None:
    uninterrupted, _ = run(stream, set(range(len(stream.messages))))
    assert run_with_crashes(stream, random.Random(seed)) == uninterrupted


@PROPERTY
@given(stream=streams(), ends_a=st.sets(st.integers(0, 70)), ends_b=st.sets(st.integers(0, 70)))
def test_batching_and_idle_advances_do_not_change_what_is_published(
    stream: Stream, ends_a: set[int], ends_b: set[int]
) -> None:
    assert run(stream, ends_a, advance=True)[0] == run(stream, ends_b, advance=False)[0]


# --- examples ------------------------------------------------------------------------------------

def test_a_late_event_becomes_a_correction_of_its_window() -> None:
    windows = PartitionWindows(TOPIC, PARTITION, window_us=60 * MICROS, grace_us=10 * MICROS)
    assert windows.add(0, make_event(5 * MICROS), arrival=6 * MICROS) is Outcome.ADDED
    assert windows.add(1, make_event(69 * MICROS), arrival=70 * MICROS) is Outcome.ADDED  # wm 60 s
    (closed,) = windows.close_ready()
    assert closed.record["window_start"] == 0 and closed.record["correction_slot"] is None
    late = make_event(59 * MICROS, weight=7.0)
    assert windows.add(2, late, arrival=71 * MICROS) is Outcome.CORRECTED
    assert windows.lateness(late["occurred_at"]) == 1 * MICROS
    assert windows.close_ready() == []  # its arrival slot [60 s, 120 s) is still current
    windows.add(3, make_event(125 * MICROS), arrival=125 * MICROS)
    rollups = {r.record["window_start"]: r.record for r in windows.close_ready()}
    correction = rollups[0]
    assert correction["rollup_id"] == correction_id(TOPIC, PARTITION, "ab12", "us-east-1", 0,
                                                    60 * MICROS)
    assert (correction["count"], correction["event_count"], correction["correction_slot"]) == \
        (7.0, 1, 60 * MICROS)


def test_a_host_with_a_fast_clock_neither_delays_nor_makes_others_late() -> None:
    """The watermark follows the broker's arrival time: a host 5 minutes ahead opens its own
    future window, and everybody else's events stay on time."""
    windows = PartitionWindows(TOPIC, PARTITION, window_us=60 * MICROS, grace_us=90 * MICROS)
    now = 10_000 * 60 * MICROS
    fast = make_event(now + 300 * MICROS, fingerprint="fa57")
    assert windows.add(0, fast, arrival=now) is Outcome.ADDED
    for i in range(1, 50):
        on_time = make_event(now + i * MICROS - 30 * MICROS)
        assert windows.add(i, on_time, arrival=now + i * MICROS) is Outcome.ADDED
    assert windows.close_ready() == []  # nothing closed early by the fast clock
    windows.add(50, make_event(now + 400 * MICROS), arrival=now + 400 * MICROS)
    starts = sorted(r.record["window_start"] for r in windows.close_ready())
    assert starts == [now - 60 * MICROS, now]  # the others' windows, closed by arrival time


def test_a_shuffled_hour_costs_a_correction_per_window_not_per_event() -> None:
    rng = random.Random(5)
    minute = 60 * MICROS
    base = 30_000 * minute
    events = [make_event(base + rng.randrange(60 * minute), fingerprint=rng.choice(FINGERPRINTS),
                         region=rng.choice(REGIONS)) for _ in range(20_000)]
    rng.shuffle(events)
    windows = PartitionWindows(TOPIC, PARTITION, window_us=minute, grace_us=90 * MICROS)
    arrival = base + 61 * minute  # produced in one burst after the hour
    published: Published = {}
    for offset, event in enumerate(events):
        windows.add(offset, event, arrival + offset * 10)  # 10 µs apart: one arrival slot
    windows.advance_idle(arrival + 2 * minute)
    _publish(published, windows.close_ready())
    assert sum(r["event_count"] for r in published.values()) == len(events)
    cells = {(r["fingerprint"], r["region"], r["window_start"]) for r in published.values()}
    assert len(published) <= len(cells) + 3 * 2  # one row per cell (+ a few windows still open)
    assert len(cells) == 3 * 2 * 60


def test_checkpoint_round_trips_and_reads_the_previous_version() -> None:
    cp = Checkpoint(commit_offset=10, position=25, max_time=1_700_000_000_000_000,
                    commit_max_time=1_699_999_999_000_000)
    assert Checkpoint.decode(cp.encode()) == cp
    assert Checkpoint.decode(Checkpoint(3, 3, None, None).encode()) == Checkpoint(3, 3, None, None)
    old = Checkpoint.decode("v1;10;25;1700000000000000")
    assert old == Checkpoint(10, 25, 1_700_000_000_000_000, 1_700_000_000_000_000)
    with pytest.raises(ValueError, match="unknown checkpoint version"):
        Checkpoint.decode("v9;1;2;3")


def test_rollup_ids_are_deterministic_and_distinct() -> None:
    a = rollup_id(TOPIC, 0, "aa", "r", 0)
    assert a == rollup_id(TOPIC, 0, "aa", "r", 0)
    others = {rollup_id(TOPIC, 1, "aa", "r", 0), rollup_id(TOPIC, 0, "bb", "r", 0),
              rollup_id(TOPIC, 0, "aa", "s", 0), rollup_id(TOPIC, 0, "aa", "r", 60),
              correction_id(TOPIC, 0, "aa", "r", 0, 0), correction_id(TOPIC, 0, "aa", "r", 0, 60)}
    assert a not in others and len(others) == 6


def test_stream_settings_late_slot_defaults_to_the_window() -> None:
    settings = StreamSettings()
    assert settings.late_slot_secs == settings.window_secs
    assert math.isclose(settings.max_future_secs, 900.0)


def test_a_window_closed_before_the_checkpoint_is_not_emitted_again_in_part() -> None:
    """Window A closes after window B opened: the checkpoint restarts at B's first offset, in the
    middle of A. The re-read rebuilds a part of A, which must be dropped, not published over A."""
    s = MICROS
    stream = Stream(60 * s, 30 * s, 60 * s, (
        Message(make_event(10 * s), 10 * s, None),  # A = [0, 60)
        Message(make_event(70 * s), 70 * s, None),  # B = [60, 120) opens; watermark 40 s
        Message(make_event(20 * s), 75 * s, None),  # A again, still open (watermark 45 s)
        Message(make_event(80 * s), 95 * s, None),  # watermark 65 s: A is complete
    ))
    windows = stream.windows()
    for offset, message in enumerate(stream.messages):
        _feed(windows, offset, message)
    (a,) = windows.close_ready()
    assert a.record["event_count"] == 2
    checkpoint = windows.checkpoint()
    assert (checkpoint.commit_offset, checkpoint.commit_max_time) == (1, 10 * s)

    restarted = stream.windows(checkpoint)
    for offset in range(checkpoint.commit_offset, len(stream.messages)):
        _feed(restarted, offset, stream.messages[offset])
    assert restarted.close_ready() == []  # the part of A rebuilt from offset 2 is not re-published
    (b,) = restarted.close_all()
    assert (b.record["window_start"], b.record["event_count"]) == (60 * s, 2)
