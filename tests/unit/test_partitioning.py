"""Kafka's default partitioner, murmur2 (producers/fraiseql_obs_producers/partitioning.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fraiseql_obs_producers.partitioning import murmur2, partition_of


# org.apache.kafka.common.utils.UtilsTest.testMurmur2: the Java client's signed results.
@pytest.mark.parametrize(("key", "signed"), [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
])
def test_murmur2_matches_the_java_clients_vectors(key: bytes, signed: int) -> None:
    assert murmur2(key) == signed & 0xFFFFFFFF


@given(key=st.binary(max_size=64), partitions=st.integers(1, 1000))
def test_partition_is_in_range_and_the_positive_hash_modulo(key: bytes, partitions: int) -> None:
    assert partition_of(key, partitions) == (murmur2(key) & 0x7FFFFFFF) % partitions
    assert 0 <= partition_of(key, partitions) < partitions
