"""A weighted, mergeable quantile sketch with a relative-error guarantee.

This is the DDSketch algorithm (Masson, Rim, Lee, VLDB 2019) with a sparse store: a value ``x`` falls
in bucket ``k = ceil(log_gamma(x))`` with ``gamma = (1 + alpha) / (1 - alpha)``, and a bucket is read
back as ``2 * gamma**k / (gamma + 1)``, which is within ``alpha`` (relative) of every value in it.

Why our own instead of the ``ddsketch`` package: its stores are dense arrays (about 5 KB serialized
per sketch), while a one-minute window of one pattern typically holds a few dozen distinct buckets.
A sparse ``{bucket: weight}`` map serializes to a few bytes per occupied bucket, merges exactly
(bucket weights add, so merging two windows' sketches equals sketching their events together —
bit for bit with integer weights, to the last floating-point bits of a bucket's weight otherwise),
and merges inside PostgreSQL (``unnest`` + ``GROUP BY`` key), which is how the metrics database
computes percentiles over any period without averaging percentiles.

Guarantee: for the weighted lower quantile (the smallest value whose cumulative weight reaches
``q × total``), :meth:`QuantileSketch.quantile` returns a value within ``alpha`` relative error,
for values in ``[MIN_VALUE, +inf)``. Values below ``MIN_VALUE`` (1 ns, in milliseconds) share the
zero bucket and are reported as 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = [
    "DEFAULT_ALPHA",
    "MIN_VALUE",
    "ZERO_KEY",
    "QuantileSketch",
    "bucket_value",
    "quantile_from_buckets",
]

DEFAULT_ALPHA: Final = 0.01
MIN_VALUE: Final = 1e-6
# The zero bucket's key sits below every real key (log_gamma(1e-6) is about -691 for alpha=1%).
ZERO_KEY: Final = -(2**31)


def bucket_value(key: int, alpha: float) -> float:
    """The value a bucket stands for: within ``alpha`` of everything in it."""
    if key == ZERO_KEY:
        return 0.0
    gamma = (1 + alpha) / (1 - alpha)
    return 2.0 * gamma**key / (gamma + 1.0)


def quantile_from_buckets(
    keys: Sequence[int], weights: Sequence[float], q: float, alpha: float
) -> float | None:
    """Weighted lower quantile from buckets sorted by key (the same rule the SQL side uses)."""
    total = math.fsum(weights)
    if total <= 0:
        return None
    target = q * total
    running = 0.0
    for key, weight in zip(keys, weights, strict=True):
        running += weight
        if running >= target:
            return bucket_value(key, alpha)
    return bucket_value(keys[-1], alpha)


class QuantileSketch:
    """Weighted log-bucket sketch; ``add`` is O(1), ``merge`` adds bucket weights."""

    __slots__ = ("_inv_log_gamma", "alpha", "buckets")

    def __init__(self, alpha: float = DEFAULT_ALPHA) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = alpha
        self._inv_log_gamma = 1.0 / math.log((1 + alpha) / (1 - alpha))
        self.buckets: dict[int, float] = {}

    def key(self, value: float) -> int:
        if value < MIN_VALUE:
            return ZERO_KEY
        return math.ceil(math.log(value) * self._inv_log_gamma)

    def add(self, value: float, weight: float = 1.0) -> None:
        """Add ``value`` with ``weight``; callers reject NaN/negative values before this."""
        key = ZERO_KEY if value < MIN_VALUE else math.ceil(math.log(value) * self._inv_log_gamma)
        buckets = self.buckets
        buckets[key] = buckets.get(key, 0.0) + weight

    def merge(self, other: QuantileSketch) -> None:
        if other.alpha != self.alpha:
            raise ValueError(f"cannot merge sketches of alpha {self.alpha} and {other.alpha}")
        buckets = self.buckets
        for key, weight in other.buckets.items():
            buckets[key] = buckets.get(key, 0.0) + weight

    @property
    def total(self) -> float:
        return math.fsum(self.buckets.values())

    def quantile(self, q: float) -> float | None:
        """The weighted lower ``q``-quantile, or None when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        keys, weights = self.to_arrays()
        return quantile_from_buckets(keys, weights, q, self.alpha) if keys else None

    def to_arrays(self) -> tuple[list[int], list[float]]:
        """Buckets as two parallel lists sorted by key (the Avro and SQL representation)."""
        keys = sorted(self.buckets)
        return keys, [self.buckets[k] for k in keys]

    @classmethod
    def from_arrays(
        cls, keys: Iterable[int], weights: Iterable[float], alpha: float = DEFAULT_ALPHA
    ) -> QuantileSketch:
        sketch = cls(alpha)
        for key, weight in zip(keys, weights, strict=True):
            sketch.buckets[key] = sketch.buckets.get(key, 0.0) + weight
        return sketch

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, QuantileSketch)
            and other.alpha == self.alpha
            and other.buckets == self.buckets
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"QuantileSketch(alpha={self.alpha}, buckets={len(self.buckets)}, total={self.total:g})"
