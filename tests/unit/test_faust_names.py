"""Pure parts of the Faust engine: checkpoint topic names and the message adapter."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fraiseql_obs_streams.faust_app import FaustRecord, checkpoint_topic
from fraiseql_observability.config import load_settings

LEGAL = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")


def _topic(group_id: str) -> str:
    return checkpoint_topic(load_settings(None, environ={}, overrides={"streams.group_id": group_id}))


def test_a_legal_group_id_names_its_topic_as_is() -> None:
    assert _topic("fraiseql-stream") == "fraiseql-stream-checkpoints"


@given(st.text(min_size=1, max_size=300))
def test_any_group_id_gives_a_legal_topic_and_distinct_ids_distinct_topics(group_id: str) -> None:
    name = _topic(group_id)
    assert LEGAL.match(name), name
    # "a.b" is legal; "a*b" and "a?b" both become "a_b" and must still differ.
    other = group_id + "*"
    assert _topic(other) != name


class _Message:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


def test_faust_message_reads_like_a_confluent_message() -> None:
    message = _Message(topic="t", partition=3, offset=42, timestamp=1796301021.6145,
                       timestamp_type=1, key=b"k", value=b"v")
    record = FaustRecord(message)
    assert (record.topic(), record.partition(), record.offset(), record.key(), record.value()) == (
        "t", 3, 42, b"k", b"v")
    assert record.error() is None
    # aiokafka's LogAppendTime (1) is librdkafka's TIMESTAMP_LOG_APPEND_TIME (2); milliseconds.
    assert record.timestamp() == (2, 1796301021614)
    assert FaustRecord(_Message(timestamp=12.0, timestamp_type=0)).timestamp() == (1, 12000)
    assert FaustRecord(_Message(timestamp=None, timestamp_type=0)).timestamp() == (0, -1)
