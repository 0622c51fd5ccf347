"""Event-time windows per partition, and exact crash recovery from checkpoints (windowing.py).

The crash-recovery property is the contract of streams/DESIGN.md: a worker that dies at any point
and restarts from its last checkpoint publishes exactly the rollups an uninterrupted worker
publishes (same ids, same contents), and never two different contents under one id.
"""

from __future__ import annotations

import math
from collections import defaultdict
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
    Rollup,
    rollup_id,
)
from fraiseql_observability.config import StreamSettings
from fraiseql_observability.sketch import QuantileSketch

TOPIC = "fraiseql.query-events"
PARTITION = 3
PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


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


# --- strategies --------------------------------------------------------------------------------

FINGERPRINTS = ("aa", "bb", "c0ffee")
REGIONS = ("us-east-1", "eu-west-1")
ERRORS = (None, None, "Timeout")


@st.composite
def event_streams(draw: st.DrawFn) -> tuple[int, int, list[dict[str, Any] | None]]:
    """(window_us, grace_us, events); ``None`` stands for an invalid message the worker skips.

    Event times drift forward with random jitter both ways, so the stream has out-of-order events,
    on-time stragglers within the grace period and late events behind the watermark.
    """
    window_s = draw(st.sampled_from([1, 5, 60]))
    grace_s = draw(st.sampled_from([0, 2, 10]))
    clock = draw(st.integers(min_value=0, max_value=10**9)) * MICROS
    # times move in half-second quanta, nudged by -1/0/+1 us, so window ends and watermarks
    # coincide often and the boundary rules (<= vs <) are exercised
    quantum = MICROS // 2
    step = max(window_s, 1)  # quanta
    behind = 3 * (window_s + grace_s)  # quanta
    n = draw(st.integers(min_value=0, max_value=60))
    # one tuple per message, drawn as few integers (generation speed matters: ~300 examples)
    raw = draw(
        st.lists(
            st.tuples(
                st.integers(0, 14),  # 0: an invalid message
                st.integers(0, step),  # clock advance
                st.integers(-behind, step),  # jitter of this event around the clock
                st.integers(0, 2**16),  # packed: fingerprint, region, error, cache hit, nudge
                st.integers(0, 40_000),  # execution time in 1/8 ms
                st.integers(1, 100),  # sample weight
                st.integers(0, 1000),  # rows
            ),
            min_size=n,
            max_size=n,
        )
    )
    events: list[dict[str, Any] | None] = []
    for kind, advance, jitter, packed, exec_eighths, weight, rows in raw:
        if kind == 0:
            events.append(None)
            continue
        clock += advance * quantum
        nudge = (0, 0, 0, -1, 1)[(packed // 36) % 5]
        events.append(
            make_event(
                clock + jitter * quantum + nudge,
                fingerprint=FINGERPRINTS[packed % 3],
                region=REGIONS[(packed // 3) % 2],
                exec_ms=exec_eighths / 8,
                weight=float(weight),
                error=ERRORS[(packed // 6) % 3],
                cache_hit=bool((packed // 18) % 2),
                rows=rows,
            )
        )
    return window_s * MICROS, grace_s * MICROS, events


# --- an uninterrupted worker -------------------------------------------------------------------

@dataclass
class RunResult:
    rollups: dict[str, dict[str, Any]]
    late_offsets: set[int]
    advances: dict[int, int]  # offset -> event time an idle advance moved to after it


def run_uninterrupted(
    window_us: int,
    grace_us: int,
    events: list[dict[str, Any] | None],
    idle: dict[int, int] | None = None,
) -> RunResult:
    """``idle`` maps offsets to how far (us) an idle advance moves event time after them."""
    windows = PartitionWindows(TOPIC, PARTITION, window_us=window_us, grace_us=grace_us)
    published: dict[str, dict[str, Any]] = {}
    late: set[int] = set()
    advances: dict[int, int] = {}
    for offset, event in enumerate(events):
        if event is None:
            windows.skip(offset)
        else:
            outcome = windows.add(offset, event)
            assert outcome is not Outcome.REPLAYED  # nothing is a replay without a checkpoint
            if outcome is Outcome.LATE:
                late.add(offset)
        if idle and offset in idle and windows.max_event_time is not None:
            advances[offset] = windows.max_event_time + idle[offset]
            assert windows.advance_idle(advances[offset])
        for rollup in windows.close_ready():
            assert rollup.rollup_id not in published, "a window was emitted twice"
            published[rollup.rollup_id] = rollup.record
    for rollup in windows.close_all():
        assert rollup.rollup_id not in published
        published[rollup.rollup_id] = rollup.record
    return RunResult(published, late, advances)


# --- an independent oracle of the windowing rules ----------------------------------------------

def oracle(
    window_us: int, grace_us: int, events: list[dict[str, Any] | None]
) -> tuple[dict[tuple[str, str, int], list[tuple[int, dict[str, Any]]]], set[int]]:
    """Per (fingerprint, region, window start): the (offset, event) pairs counted; late offsets.

    Rule from SPEC/DESIGN: an event is late iff its window end <= (max event time seen before it)
    - grace; late events never count and never move the watermark.
    """
    groups: dict[tuple[str, str, int], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    late: set[int] = set()
    max_seen: int | None = None
    for offset, event in enumerate(events):
        if event is None:
            continue
        t = event["occurred_at"]
        start = (t // window_us) * window_us
        if max_seen is not None and start + window_us <= max_seen - grace_us:
            late.add(offset)
            continue
        max_seen = t if max_seen is None else max(max_seen, t)
        groups[(event["fingerprint"], event["region"], start)].append((offset, event))
    return groups, late


@PROPERTY
@given(stream=event_streams())
def test_rollups_match_an_independent_oracle(
    stream: tuple[int, int, list[dict[str, Any] | None]],
) -> None:
    window_us, grace_us, events = stream
    result = run_uninterrupted(window_us, grace_us, events)
    groups, late = oracle(window_us, grace_us, events)
    assert result.late_offsets == late
    assert len(result.rollups) == len(groups)
    for (fingerprint, region, start), members in groups.items():
        record = result.rollups[rollup_id(TOPIC, PARTITION, fingerprint, region, start)]
        evs = [e for _, e in members]
        ws = [e["sample_weight"] for e in evs]
        assert record["fingerprint"] == fingerprint
        assert record["region"] == region
        assert record["window_start"] == start
        assert record["window_end"] == start + window_us
        assert record["source_topic"] == TOPIC
        assert record["source_partition"] == PARTITION
        assert record["first_offset"] == members[0][0]
        assert record["last_offset"] == members[-1][0]
        assert record["event_count"] == len(members)
        assert record["count"] == sum(ws)  # integer weights: exact
        assert record["error_count"] == sum(w for e, w in zip(evs, ws, strict=True) if e["error"])
        assert record["cache_hits"] == sum(
            w for e, w in zip(evs, ws, strict=True) if e["cache_hit"]
        )
        assert record["rows_sum"] == sum(
            w * e["rows_returned"] for e, w in zip(evs, ws, strict=True)
        )
        for field, source in (
            ("exec_sum_ms", "execution_time_ms"),
            ("sql_generation_sum_ms", "sql_generation_time_ms"),
            ("db_round_trip_sum_ms", "db_round_trip_time_ms"),
            ("projection_sum_ms", "projection_time_ms"),
        ):
            expected = math.fsum(w * e[source] for e, w in zip(evs, ws, strict=True))
            assert math.isclose(record[field], expected, rel_tol=1e-9, abs_tol=1e-9), field
        assert record["exec_min_ms"] == min(e["execution_time_ms"] for e in evs)
        assert record["exec_max_ms"] == max(e["execution_time_ms"] for e in evs)
        expected_sketch = QuantileSketch(record["sketch_alpha"])
        for e, w in zip(evs, ws, strict=True):
            expected_sketch.add(e["execution_time_ms"], w)
        assert (record["sketch_keys"], record["sketch_weights"]) == expected_sketch.to_arrays()
    # exactly-once within the run: every valid non-late event is counted in exactly one rollup
    valid = sum(1 for e in events if e is not None)
    assert sum(r["event_count"] for r in result.rollups.values()) == valid - len(late)


@PROPERTY
@given(stream=event_streams())
def test_windows_close_exactly_when_the_watermark_reaches_their_end(
    stream: tuple[int, int, list[dict[str, Any] | None]],
) -> None:
    window_us, grace_us, events = stream
    windows = PartitionWindows(TOPIC, PARTITION, window_us=window_us, grace_us=grace_us)
    max_seen: int | None = None
    for offset, event in enumerate(events):
        if event is None:
            windows.skip(offset)
            continue
        if windows.add(offset, event) is Outcome.ADDED:
            t = event["occurred_at"]
            max_seen = t if max_seen is None else max(max_seen, t)
        assert windows.max_event_time == max_seen
        watermark = None if max_seen is None else max_seen - grace_us
        assert windows.watermark == watermark
        for rollup in windows.close_ready():
            assert watermark is not None and rollup.record["window_end"] <= watermark
        # what stays open has not been reached by the watermark
        for window in windows:
            assert watermark is None or window.window_start + window_us > watermark


def test_close_boundary_is_inclusive_at_window_end_plus_grace() -> None:
    windows = PartitionWindows(TOPIC, 0, window_us=60 * MICROS, grace_us=10 * MICROS)
    assert windows.add(0, make_event(5 * MICROS)) is Outcome.ADDED  # window [0 s, 60 s)
    assert windows.add(1, make_event(70 * MICROS - 1)) is Outcome.ADDED  # watermark 60 s - 1 us
    assert windows.close_ready() == []
    # still open: an event for [0, 60) is on time while the watermark is below 60 s
    assert windows.add(2, make_event(59 * MICROS)) is Outcome.ADDED
    assert windows.add(3, make_event(70 * MICROS)) is Outcome.ADDED  # watermark exactly 60 s
    closed = windows.close_ready()
    assert [r.record["window_start"] for r in closed] == [0]
    assert closed[0].record["event_count"] == 2
    assert closed[0].record["first_offset"] == 0 and closed[0].record["last_offset"] == 2
    assert windows.add(4, make_event(59 * MICROS)) is Outcome.LATE
    assert windows.close_ready() == []
    assert windows.open_windows == 1  # [60 s, 120 s)


def test_late_is_decided_by_the_watermark_even_before_close_ready() -> None:
    """Lateness must not depend on when the caller happens to call close_ready()."""
    windows = PartitionWindows(TOPIC, 0, window_us=60 * MICROS, grace_us=0)
    windows.add(0, make_event(1 * MICROS))
    windows.add(1, make_event(120 * MICROS))
    assert windows.add(2, make_event(30 * MICROS)) is Outcome.LATE  # [0, 60) not closed yet
    [first, _] = windows.close_all()
    assert first.record["window_start"] == 0 and first.record["event_count"] == 1


def test_late_events_do_not_move_the_watermark_and_are_not_counted() -> None:
    windows = PartitionWindows(TOPIC, 0, window_us=MICROS, grace_us=0)
    windows.add(0, make_event(100 * MICROS))
    assert windows.add(1, make_event(5 * MICROS, weight=7.0)) is Outcome.LATE
    assert windows.max_event_time == 100 * MICROS
    rollups = windows.close_all()
    assert [r.record["count"] for r in rollups] == [1.0]


def test_defaults_match_the_stream_settings_defaults() -> None:
    windows = PartitionWindows(TOPIC, 0)
    defaults = StreamSettings()
    assert windows.window_us == defaults.window_secs * MICROS
    assert windows.grace_us == int(defaults.grace_secs * MICROS)


def test_windows_are_per_fingerprint_and_region() -> None:
    windows = PartitionWindows(TOPIC, 1, window_us=60 * MICROS)
    t = 1_700_000_000 * MICROS
    for offset, (fp, region) in enumerate(
        [("aa", "us"), ("aa", "eu"), ("bb", "us"), ("aa", "us"), ("bb", "us")]
    ):
        windows.add(offset, make_event(t + offset, fingerprint=fp, region=region))
    rollups = windows.close_all()
    got = {(r.record["fingerprint"], r.record["region"]): r.record["event_count"] for r in rollups}
    assert got == {("aa", "us"): 2, ("aa", "eu"): 1, ("bb", "us"): 2}
    ids = {r.rollup_id for r in rollups}
    assert len(ids) == 3
    start = t - t % (60 * MICROS)
    assert ids == {rollup_id(TOPIC, 1, fp, rg, start) for fp, rg in got}


def test_window_start_handles_event_times_before_the_epoch() -> None:
    windows = PartitionWindows(TOPIC, 0, window_us=60 * MICROS)
    assert windows.window_start(-1) == -60 * MICROS
    assert windows.window_start(0) == 0
    assert windows.window_start(60 * MICROS - 1) == 0


def test_rollup_id_is_deterministic_and_distinguishes_every_component() -> None:
    base = ("t", 0, "aa", "us", 0)
    assert rollup_id(*base) == rollup_id(*base)
    variants = [("u", 0, "aa", "us", 0), ("t", 1, "aa", "us", 0), ("t", 0, "ab", "us", 0),
                ("t", 0, "aa", "eu", 0), ("t", 0, "aa", "us", 60)]
    assert len({rollup_id(*v) for v in [base, *variants]}) == 6


@pytest.mark.parametrize(("window_us", "grace_us"), [(0, 0), (-1, 0), (60, -1)])
def test_invalid_window_or_grace_raises(window_us: int, grace_us: int) -> None:
    with pytest.raises(ValueError):
        PartitionWindows(TOPIC, 0, window_us=window_us, grace_us=grace_us)


@PROPERTY
@given(stream=event_streams(), close_every=st.integers(min_value=1, max_value=7))
def test_same_events_same_order_give_identical_rollups(
    stream: tuple[int, int, list[dict[str, Any] | None]], close_every: int
) -> None:
    """Determinism, also when close_ready() is called at different moments."""
    window_us, grace_us, events = stream
    reference = run_uninterrupted(window_us, grace_us, events)
    assert run_uninterrupted(window_us, grace_us, events).rollups == reference.rollups
    windows = PartitionWindows(TOPIC, PARTITION, window_us=window_us, grace_us=grace_us)
    published: dict[str, dict[str, Any]] = {}
    for offset, event in enumerate(events):
        if event is None:
            windows.skip(offset)
        else:
            windows.add(offset, event)
        if offset % close_every == 0:
            published.update((r.rollup_id, r.record) for r in windows.close_ready())
    published.update((r.rollup_id, r.record) for r in windows.close_all())
    assert published == reference.rollups


# --- checkpoints and crash recovery ------------------------------------------------------------

@given(
    commit=st.integers(min_value=0, max_value=2**62),
    extra=st.integers(min_value=0, max_value=2**40),
    met=st.one_of(st.none(), st.integers(min_value=-(2**62), max_value=2**62)),
)
def test_checkpoint_encode_decode_round_trip(commit: int, extra: int, met: int | None) -> None:
    cp = Checkpoint(commit_offset=commit, position=commit + extra, max_event_time=met)
    text = cp.encode()
    assert isinstance(text, str) and "\n" not in text
    assert Checkpoint.decode(text) == cp


def test_checkpoint_decode_rejects_unknown_versions_and_garbage() -> None:
    with pytest.raises(ValueError):
        Checkpoint.decode("v2;1;2;3")
    for garbage in ("", "v1;1;2", "v1;a;2;3", "v1;1;2;3;4"):
        with pytest.raises(ValueError):
            Checkpoint.decode(garbage)


def test_checkpoint_of_a_fresh_partition_and_of_open_windows() -> None:
    windows = PartitionWindows(TOPIC, 0, window_us=60 * MICROS, grace_us=10 * MICROS)
    assert windows.checkpoint() == Checkpoint(0, 0, None)
    windows.add(0, make_event(0))
    windows.add(1, make_event(61 * MICROS))  # a second window; the first stays open (grace)
    cp = windows.checkpoint()
    assert cp == Checkpoint(commit_offset=0, position=2, max_event_time=61 * MICROS)
    windows.add(2, make_event(80 * MICROS))  # closes [0, 60)
    assert len(windows.close_ready()) == 1
    assert windows.checkpoint() == Checkpoint(1, 3, 80 * MICROS)


ACTIONS = ("none", "none", "close", "checkpoint")


@dataclass
class Publication:
    """What reached Kafka: rollups by id (with a check for conflicting re-publications)."""

    rollups: dict[str, dict[str, Any]]
    late: list[int]

    def publish(self, rollups: list[Rollup]) -> None:
        for rollup in rollups:
            previous = self.rollups.get(rollup.rollup_id)
            assert previous is None or previous == rollup.record, (
                f"rollup {rollup.rollup_id} published with two different contents"
            )
            self.rollups[rollup.rollup_id] = rollup.record


def run_with_crashes(
    window_us: int,
    grace_us: int,
    events: list[dict[str, Any] | None],
    actions: list[str],
    crash_steps: set[int],
    advances: dict[int, int] | None = None,
) -> tuple[Publication, int]:
    """Drive a worker that publishes and checkpoints as ``actions`` (cycled) say.

    The worker crashes after the steps (messages handled, replays included) in ``crash_steps``.
    ``advances`` are idle advances of event time after given offsets (as the worker does for a
    quiet, caught-up partition); each is published and checkpointed before anything else happens.

    After each message the worker may publish what close_ready() returns; at a checkpoint it
    publishes, then records checkpoint() durably. A crash loses all in-memory state (but not what
    was already published); the restarted worker resumes from the last durable checkpoint.
    """
    out = Publication({}, [])
    durable: Checkpoint | None = None
    # the test's own account of how far the durable checkpoint had handled the partition
    durable_handled = 0
    handled_before_restart = 0
    crashes = 0
    windows = PartitionWindows(TOPIC, PARTITION, window_us=window_us, grace_us=grace_us)
    offset = 0
    step = 0
    while offset < len(events):
        event = events[offset]
        replay = windows.is_replay(offset)
        if event is None:
            windows.skip(offset)
        else:
            outcome = windows.add(offset, event)
            if replay:
                assert outcome is not Outcome.LATE, "a replayed offset was reported late again"
            else:
                assert outcome is not Outcome.REPLAYED, "a new offset was taken for a replay"
                if outcome is Outcome.LATE:
                    # dead letters of offsets before a durable checkpoint are never repeated
                    assert not (offset in out.late and offset < durable_handled), (
                        f"offset {offset} dead-lettered again after its checkpoint"
                    )
                    out.late.append(offset)
        offset += 1
        action = actions[step % len(actions)]
        if advances and offset - 1 in advances:
            moved = windows.advance_idle(advances[offset - 1])
            # only the first pass moves time; a replay has it from the checkpoint already
            assert moved == (offset - 1 >= handled_before_restart)
            action = "checkpoint"
        crash = step in crash_steps
        step += 1
        if action == "close":
            out.publish(windows.close_ready())
        elif action == "checkpoint":
            out.publish(windows.close_ready())
            durable = windows.checkpoint()
            # what a real worker stores is the encoded text
            durable = Checkpoint.decode(durable.encode())
            durable_handled = max(offset, handled_before_restart)
            assert durable.position == durable_handled
            assert durable.commit_offset <= offset
        if crash:
            crashes += 1
            windows = PartitionWindows(
                TOPIC, PARTITION, window_us=window_us, grace_us=grace_us, checkpoint=durable
            )
            offset = durable.commit_offset if durable is not None else 0
            handled_before_restart = durable_handled
    out.publish(windows.close_ready())
    out.publish(windows.close_all())
    return out, crashes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=event_streams(),
    actions=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=50),
    crash_steps=st.sets(st.integers(min_value=0, max_value=80), min_size=1, max_size=4),
    idle=st.dictionaries(st.integers(0, 59), st.integers(1, 120 * MICROS), max_size=3),
)
def test_crash_recovery_publishes_exactly_the_uninterrupted_rollups(
    stream: tuple[int, int, list[dict[str, Any] | None]],
    actions: list[str],
    crash_steps: set[int],
    idle: dict[int, int],
) -> None:
    window_us, grace_us, events = stream
    reference = run_uninterrupted(window_us, grace_us, events, idle)
    crashed, _ = run_with_crashes(
        window_us, grace_us, events, actions, crash_steps, reference.advances
    )
    # same ids, identical records (publish() already checked no id got two contents)
    assert crashed.rollups.keys() == reference.rollups.keys()
    for rid, record in reference.rollups.items():
        assert crashed.rollups[rid] == record, rid
    # every late event is dead-lettered at least once, and nothing else is
    assert set(crashed.late) == reference.late_offsets


def test_crash_between_publish_and_checkpoint_republishes_identical_rollups() -> None:
    """A hand-written scenario of the property above, with the worker's three steps spelt out."""
    events = [
        make_event(1 * MICROS, fingerprint="aa"),
        make_event(2 * MICROS, fingerprint="bb"),
        make_event(65 * MICROS, fingerprint="aa"),
        make_event(3 * MICROS, fingerprint="bb"),  # window [0, 60) still open: grace 10 s
        make_event(71 * MICROS, fingerprint="aa"),  # watermark 61 s: closes [0, 60)
        make_event(4 * MICROS, fingerprint="aa"),  # late
        make_event(200 * MICROS, fingerprint="aa"),
    ]
    reference = run_uninterrupted(60 * MICROS, 10 * MICROS, list(events))

    first = PartitionWindows(TOPIC, PARTITION, window_us=60 * MICROS, grace_us=10 * MICROS)
    for offset in range(4):
        first.add(offset, events[offset])
    assert first.close_ready() == []
    cp = first.checkpoint()
    assert cp == Checkpoint(commit_offset=0, position=4, max_event_time=65 * MICROS)
    first.add(4, events[4])
    published_before_crash = {r.rollup_id: r.record for r in first.close_ready()}
    assert len(published_before_crash) == 2  # aa and bb of [0, 60)
    # crash before the next checkpoint: restart from cp
    second = PartitionWindows(
        TOPIC, PARTITION, window_us=60 * MICROS, grace_us=10 * MICROS, checkpoint=cp
    )
    assert [second.is_replay(o) for o in range(6)] == [True] * 4 + [False] * 2
    outcomes = [second.add(o, events[o]) for o in range(cp.commit_offset, len(events))]
    assert outcomes == [Outcome.ADDED] * 5 + [Outcome.LATE, Outcome.ADDED]
    republished = {r.rollup_id: r.record for r in second.close_ready() + second.close_all()}
    for rid, record in published_before_crash.items():
        assert republished[rid] == record
    assert republished == reference.rollups


def test_replayed_offsets_of_closed_windows_are_silent() -> None:
    windows = PartitionWindows(TOPIC, 0, window_us=60 * MICROS, grace_us=0)
    windows.add(0, make_event(1 * MICROS, fingerprint="aa"))  # window A [0, 60)
    windows.add(1, make_event(61 * MICROS, fingerprint="bb"))  # opens B, closes A
    windows.add(2, make_event(5 * MICROS, fingerprint="cc"))  # late
    assert len(windows.close_ready()) == 1
    cp = windows.checkpoint()
    assert cp.commit_offset == 1
    restarted = PartitionWindows(TOPIC, 0, window_us=60 * MICROS, grace_us=0, checkpoint=cp)
    assert restarted.add(1, make_event(61 * MICROS, fingerprint="bb")) is Outcome.ADDED
    # the late event is re-read as a replay: no second dead letter
    assert restarted.add(2, make_event(5 * MICROS, fingerprint="cc")) is Outcome.REPLAYED
    assert restarted.add(3, make_event(3 * MICROS, fingerprint="cc")) is Outcome.LATE


def test_idle_advance_moves_the_watermark_forward_only() -> None:
    windows = PartitionWindows(TOPIC, 0, window_us=60 * MICROS, grace_us=10 * MICROS)
    assert windows.advance_idle(500 * MICROS) is False  # no event time yet: nothing to move
    assert windows.max_event_time is None
    windows.add(0, make_event(5 * MICROS))
    assert windows.advance_idle(5 * MICROS) is False
    assert windows.advance_idle(1 * MICROS) is False
    assert windows.max_event_time == 5 * MICROS
    assert windows.close_ready() == []
    assert windows.advance_idle(70 * MICROS) is True  # watermark 60 s: [0, 60) closes
    assert windows.watermark == 60 * MICROS
    [rollup] = windows.close_ready()
    assert rollup.record["window_start"] == 0 and rollup.record["event_count"] == 1
    assert windows.add(1, make_event(30 * MICROS)) is Outcome.LATE
    cp = windows.checkpoint()
    assert cp == Checkpoint(commit_offset=2, position=2, max_event_time=70 * MICROS)
    restarted = PartitionWindows(TOPIC, 0, window_us=60 * MICROS, grace_us=10 * MICROS,
                                 checkpoint=cp)
    assert restarted.watermark == 60 * MICROS
    assert restarted.add(2, make_event(59 * MICROS)) is Outcome.LATE
