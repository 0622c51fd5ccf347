"""The one builder of ``DeadLetter`` records (schema ``schemas/dead_letter.avsc``).

Every stage that gives up on a message sends the original bytes and a reason to
``fraiseql.dead-letters`` through :func:`dead_letter_record`, so the stream worker and the sink
cap the detail alike and record the same provenance.
"""

from __future__ import annotations

from typing import Any, Final

from .timeutil import now_micros

__all__ = ["MAX_DETAIL_CHARS", "dead_letter_record"]

# The detail explains the reason to a person; the original bytes travel whole beside it.
MAX_DETAIL_CHARS: Final = 2000


def dead_letter_record(
    *,
    stage: str,
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    failed_at: int | None = None,
) -> dict[str, Any]:
    """The dead-letter record of one message; ``failed_at`` defaults to now (epoch µs)."""
    return {
        "reason": reason,
        "detail": detail[:MAX_DETAIL_CHARS],
        "stage": stage,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "original_key": key,
        "original_value": value,
        "failed_at": now_micros() if failed_at is None else failed_at,
    }
