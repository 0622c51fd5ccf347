"""The quantile sketch: relative-error guarantee, exact merges, serialization (sketch.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraiseql_observability.sketch import (
    DEFAULT_ALPHA,
    MIN_VALUE,
    ZERO_KEY,
    QuantileSketch,
    bucket_value,
    quantile_from_buckets,
)
from tests.oracles import exact_lower_quantile

FAST = settings(max_examples=150, deadline=None)

values = st.floats(min_value=MIN_VALUE, max_value=1e12, allow_nan=False, allow_infinity=False)
weights = st.integers(min_value=1, max_value=1000)
weighted_values = st.lists(st.tuples(values, weights), min_size=1, max_size=200)
alphas = st.sampled_from([0.001, 0.005, DEFAULT_ALPHA, 0.02, 0.05, 0.1])
quantiles = st.one_of(
    st.sampled_from([0.0, 0.5, 0.95, 0.99, 1.0]),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
)


def sketch_of(pairs: list[tuple[float, int]], alpha: float = DEFAULT_ALPHA) -> QuantileSketch:
    sketch = QuantileSketch(alpha)
    for value, weight in pairs:
        sketch.add(value, weight)
    return sketch


@FAST
@given(pairs=weighted_values, q=quantiles, alpha=alphas)
def test_weighted_quantile_within_alpha_of_exact(
    pairs: list[tuple[float, int]], q: float, alpha: float
) -> None:
    exact = exact_lower_quantile(pairs, q)
    estimate = sketch_of(pairs, alpha).quantile(q)
    assert estimate is not None
    assert abs(estimate - exact) <= (alpha + 1e-9) * exact, (estimate, exact)


@FAST
@given(pairs=weighted_values)
def test_spec_percentiles_within_default_alpha(pairs: list[tuple[float, int]]) -> None:
    sketch = sketch_of(pairs)
    for q in (0.5, 0.95, 0.99):
        exact = exact_lower_quantile(pairs, q)
        estimate = sketch.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) <= (DEFAULT_ALPHA + 1e-9) * exact


@FAST
@given(value=values, alpha=alphas)
def test_every_value_is_within_alpha_of_its_bucket(value: float, alpha: float) -> None:
    sketch = QuantileSketch(alpha)
    represented = bucket_value(sketch.key(value), alpha)
    assert abs(represented - value) <= (alpha + 1e-9) * value


@FAST
@given(a=weighted_values, b=weighted_values, alpha=alphas)
def test_merge_equals_sketching_the_concatenation_exactly(
    a: list[tuple[float, int]], b: list[tuple[float, int]], alpha: float
) -> None:
    merged = sketch_of(a, alpha)
    merged.merge(sketch_of(b, alpha))
    together = sketch_of(a + b, alpha)
    assert merged.buckets == together.buckets
    assert merged == together
    assert merged.total == sum(w for _, w in a + b)


@FAST
@given(a=weighted_values, b=weighted_values, c=weighted_values)
def test_merge_is_commutative_and_associative(
    a: list[tuple[float, int]], b: list[tuple[float, int]], c: list[tuple[float, int]]
) -> None:
    ab = sketch_of(a)
    ab.merge(sketch_of(b))
    ba = sketch_of(b)
    ba.merge(sketch_of(a))
    assert ab.buckets == ba.buckets

    left = sketch_of(a)
    left.merge(sketch_of(b))
    left.merge(sketch_of(c))  # (a + b) + c
    bc = sketch_of(b)
    bc.merge(sketch_of(c))
    right = sketch_of(a)
    right.merge(bc)  # a + (b + c)
    assert left.buckets == right.buckets


@FAST
@given(a=weighted_values)
def test_merge_does_not_change_the_argument(a: list[tuple[float, int]]) -> None:
    other = sketch_of(a)
    before = dict(other.buckets)
    target = sketch_of([(1.0, 1)])
    target.merge(other)
    assert other.buckets == before


@FAST
@given(value=values, weight=st.integers(min_value=1, max_value=50))
def test_a_weighted_add_equals_repeated_adds(value: float, weight: int) -> None:
    once = QuantileSketch()
    once.add(value, weight)
    repeated = QuantileSketch()
    for _ in range(weight):
        repeated.add(value)
    assert once.buckets == repeated.buckets


@FAST
@given(pairs=weighted_values, alpha=alphas)
def test_arrays_round_trip(pairs: list[tuple[float, int]], alpha: float) -> None:
    sketch = sketch_of(pairs, alpha)
    keys, ws = sketch.to_arrays()
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert len(keys) == len(ws)
    rebuilt = QuantileSketch.from_arrays(keys, ws, alpha)
    assert rebuilt == sketch
    assert rebuilt.to_arrays() == (keys, ws)


@FAST
@given(pairs=weighted_values, q=quantiles)
def test_quantile_from_buckets_is_the_sketch_quantile(
    pairs: list[tuple[float, int]], q: float
) -> None:
    """The function the SQL side mirrors gives the same answer as the sketch itself."""
    sketch = sketch_of(pairs)
    keys, ws = sketch.to_arrays()
    assert quantile_from_buckets(keys, ws, q, sketch.alpha) == sketch.quantile(q)


def test_from_arrays_adds_repeated_keys() -> None:
    sketch = QuantileSketch.from_arrays([3, 3, 5], [1.0, 2.0, 4.0])
    assert sketch.buckets == {3: 3.0, 5: 4.0}


def test_from_arrays_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError):
        QuantileSketch.from_arrays([1, 2], [1.0])


def test_zero_and_values_below_min_share_the_zero_bucket() -> None:
    sketch = QuantileSketch()
    sketch.add(0.0, 3)
    sketch.add(MIN_VALUE / 2, 1)
    assert sketch.buckets == {ZERO_KEY: 4.0}
    assert sketch.quantile(0.5) == 0.0
    assert sketch.quantile(1.0) == 0.0


def test_zero_bucket_sorts_first_and_fits_an_avro_int() -> None:
    sketch = QuantileSketch()
    for value in (5.0, 0.0, MIN_VALUE, 1e9):
        sketch.add(value)
    keys, _ = sketch.to_arrays()
    assert keys[0] == ZERO_KEY
    assert all(-(2**31) <= k < 2**31 for k in keys)
    assert sketch.quantile(0.0) == 0.0
    assert sketch.quantile(0.25) == 0.0
    smallest_real = sketch.quantile(0.5)
    assert smallest_real is not None
    assert abs(smallest_real - MIN_VALUE) <= DEFAULT_ALPHA * MIN_VALUE * (1 + 1e-9)


def test_tiny_values_at_min_value_keep_the_guarantee() -> None:
    for value in (MIN_VALUE, MIN_VALUE * 1.5, 1e-5, 0.001):
        sketch = QuantileSketch()
        sketch.add(value)
        estimate = sketch.quantile(0.5)
        assert estimate is not None and estimate > 0
        assert abs(estimate - value) <= (DEFAULT_ALPHA + 1e-9) * value


def test_mixed_zero_and_positive_weighted_median() -> None:
    sketch = QuantileSketch()
    sketch.add(0.0, 1)
    sketch.add(100.0, 3)
    # total 4: q=0.25 reaches the zero bucket, q=0.26 needs the 100 ms bucket
    assert sketch.quantile(0.25) == 0.0
    estimate = sketch.quantile(0.26)
    assert estimate is not None and math.isclose(estimate, 100.0, rel_tol=DEFAULT_ALPHA)


def test_merge_with_different_alpha_raises() -> None:
    a = QuantileSketch(0.01)
    b = QuantileSketch(0.02)
    b.add(1.0)
    with pytest.raises(ValueError, match="alpha"):
        a.merge(b)
    assert a.buckets == {}


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_alpha_outside_open_unit_interval_raises(alpha: float) -> None:
    with pytest.raises(ValueError):
        QuantileSketch(alpha)


@pytest.mark.parametrize("q", [-0.01, 1.01, math.nan])
def test_q_outside_unit_interval_raises(q: float) -> None:
    sketch = QuantileSketch()
    sketch.add(1.0)
    with pytest.raises(ValueError):
        sketch.quantile(q)


def test_empty_sketch_has_no_quantile() -> None:
    assert QuantileSketch().quantile(0.5) is None
    assert quantile_from_buckets([], [], 0.5, DEFAULT_ALPHA) is None
    assert QuantileSketch().total == 0


def test_equality_depends_on_alpha_and_buckets() -> None:
    a = QuantileSketch(0.01)
    b = QuantileSketch(0.02)
    assert a != b
    a.add(1.0)
    c = QuantileSketch(0.01)
    assert a != c
    c.add(1.0)
    assert a == c
