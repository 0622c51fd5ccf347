"""The events topic's partition of a fingerprint: Kafka's default, murmur2.

Every producer must put one pattern's events in one partition, so its windows meet in one stream
worker. The Java client's default partitioner and librdkafka's ``murmur2_random`` (the recorder
configures it) compute ``(murmur2(key) & 0x7fffffff) % partitions``; the recorder's batch messages,
which hold many fingerprints, compute the same here and name the partition explicitly.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PARTITIONER", "murmur2", "partition_of"]

# The librdkafka ``partitioner`` that agrees with :func:`partition_of` for keyed messages.
PARTITIONER: Final = "murmur2_random"

_SEED: Final = 0x9747B28C
_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 (32 bit) as Kafka's ``Utils.murmur2``: the unsigned 32-bit value."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    tail = length & ~3
    for i in range(0, tail, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of a keyed message among ``partitions`` (Kafka's default partitioner)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
