"""The sink's consumer-lag gauge: messages not yet durable in the metrics database.

Lag = high watermark − committed offset. The committed offset, not the consumer position, because
fetched-but-unwritten messages are exactly what an operator wants to see grow while the database
is down. Watermarks come from one batched ListOffsets request of a separate admin client: the
consumer's own ``get_watermark_offsets`` queues behind its fetch long-poll (about 0.5 s per
partition). Kept apart from the consumer loop (:mod:`fraiseql_obs_sinks.worker`), which only says
when to measure (``LAG_INTERVAL_SECS``) and which offsets it committed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from .batching import TopicPartitionKey
from .metrics import CONSUMER_LAG

__all__ = ["ConsumerLag"]

log = logging.getLogger(__name__)


class ConsumerLag:
    """Keeps :data:`~fraiseql_obs_sinks.metrics.CONSUMER_LAG` for the assigned partitions."""

    def __init__(self, consumer: Consumer, admin: AdminClient | None) -> None:
        self._consumer = consumer
        self._admin = admin  # None: no lag metric
        self._committed: dict[TopicPartitionKey, int] = {}

    def committed(self, offsets: Iterable[TopicPartition]) -> None:
        """Remember offsets the worker just committed."""
        for tp in offsets:
            self._committed[(tp.topic, tp.partition)] = tp.offset

    def forget(self, keys: Iterable[TopicPartitionKey]) -> None:
        """Revoked partitions: another consumer reports them now."""
        for topic, partition in keys:
            self._committed.pop((topic, partition), None)
            with contextlib.suppress(KeyError):  # no lag measured for it yet
                CONSUMER_LAG.remove(topic, str(partition))

    def update(self, assigned: Iterable[TopicPartitionKey]) -> None:
        """Measure the lag of ``assigned``; raises KafkaException when the broker is away."""
        keys = sorted(assigned)
        if not keys or self._admin is None:
            return
        unknown = [TopicPartition(t, p) for t, p in keys if (t, p) not in self._committed]
        if unknown:
            self.committed(self._consumer.committed(unknown, timeout=2.0))
        high = self._list_offsets(keys, OffsetSpec.latest())
        never_committed = [key for key in keys if self._committed.get(key, -1) < 0]
        low = self._list_offsets(never_committed, OffsetSpec.earliest()) if never_committed else {}
        for key in keys:
            committed = self._committed.get(key, -1)
            base = committed if committed >= 0 else low.get(key)
            if key in high and base is not None:
                CONSUMER_LAG.labels(key[0], str(key[1])).set(max(0, high[key] - base))

    def _list_offsets(
        self, keys: Sequence[TopicPartitionKey], spec: OffsetSpec
    ) -> dict[TopicPartitionKey, int]:
        assert self._admin is not None
        futures = self._admin.list_offsets(
            {TopicPartition(t, p): spec for t, p in keys}, request_timeout=2.0
        )
        offsets: dict[TopicPartitionKey, int] = {}
        for tp, future in futures.items():
            try:
                offsets[(tp.topic, tp.partition)] = int(future.result(timeout=3.0).offset)
            except (KafkaException, TimeoutError) as exc:  # e.g. a leader moving: next round
                log.debug("no watermark for %s[%d]: %s", tp.topic, tp.partition, exc)
        return offsets
