"""Per-query keep/drop decision with an unbiased weight (SPEC §3 ``sample_weight``).

Rule, in order:

1. a query at least ``slow_query_ms`` long is always kept (probability 1, weight 1): the slow
   tail is what the analyzer acts on and is rare, so it is recorded exactly;
2. a failed query is always kept when ``always_keep_errors`` (probability 1, weight 1);
3. any other query is kept with probability ``sample_rate`` and then stands for
   ``1 / sample_rate`` queries.

Each kept event's weight is the inverse of the probability with which *that* event was kept, so the
weighted sum over kept events is an unbiased (Horvitz-Thompson) estimate of every population count,
and weighted percentiles estimate population percentiles -- with the tail above ``slow_query_ms``
exact. Rates below :data:`MIN_SAMPLE_RATE` are treated as 0 because their weight would exceed the
1e9 the stream worker accepts (``streams/validation.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from fraiseql_observability.config import Settings

from .errors import ProducerError

__all__ = ["MIN_SAMPLE_RATE", "Sampler", "effective_rate"]

MIN_SAMPLE_RATE: Final = 1e-9


def effective_rate(sample_rate: float) -> tuple[float, float]:
    """(uniform keep probability, weight of an event it keeps) for a ``sample_rate`` in 0..1.

    The one place of the rule, shared by the recorder's sampler and the load generator's ground
    truth: rates below :data:`MIN_SAMPLE_RATE` keep nothing (weight 0.0 marks "never kept").
    """
    rate = sample_rate if sample_rate >= MIN_SAMPLE_RATE else 0.0
    return rate, 1.0 / rate if rate else 0.0


@dataclass(frozen=True, slots=True)
class Sampler:
    """Decides, per query, whether to keep it and with which weight.

    ``random`` is the uniform [0, 1) source; pass ``random.Random(seed).random`` for reproducible
    decisions. The default is the module-level generator: a C call, thread-safe under the GIL.
    """

    sample_rate: float
    slow_query_ms: float = 1000.0
    always_keep_errors: bool = True
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)
    # Weight of an event kept by the uniform rule; 0.0 when that rule never keeps anything.
    uniform_weight: float = field(init=False)
    # Effective uniform probability (0.0 when sample_rate < MIN_SAMPLE_RATE).
    rate: float = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ProducerError(f"sample_rate = {self.sample_rate!r}: allowed 0..1")
        if not self.slow_query_ms >= 0.0:  # also rejects NaN
            raise ProducerError(f"slow_query_ms = {self.slow_query_ms!r}: allowed >= 0")
        rate, uniform_weight = effective_rate(self.sample_rate)
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "uniform_weight", uniform_weight)

    @classmethod
    def from_settings(cls, settings: Settings,
                      random: Callable[[], float] | None = None) -> Sampler:
        """The sampler of ``[observability]`` ``sample_rate`` and ``[observability.metrics]``."""
        metrics = settings.metrics
        if random is None:
            return cls(settings.sample_rate, metrics.slow_query_ms, metrics.always_keep_errors)
        return cls(settings.sample_rate, metrics.slow_query_ms, metrics.always_keep_errors, random)

    def weight(self, execution_time_ms: float, error: str | None = None) -> float:
        """The sample weight if this query is kept, 0.0 if it is dropped.

        Float rather than ``float | None`` so the hot path allocates nothing; ``if w:`` tests it.
        :class:`~fraiseql_obs_producers.recorder.Recorder` inlines exactly this logic (a call costs ~0.1 µs).
        """
        if execution_time_ms >= self.slow_query_ms or (
            error is not None and self.always_keep_errors
        ):
            return 1.0
        if self.random() < self.rate:
            return self.uniform_weight
        return 0.0
