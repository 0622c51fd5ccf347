"""Publishing new suggestions to ``fraiseql.suggestions`` (Avro single-object encoding).

One record per suggestion (``schemas/suggestion.avsc``), key = suggestion id, so a compacted topic
keeps the latest state of each. The producer is idempotent; :func:`publish_suggestions` returns
only once Kafka acknowledged every record and raises on any delivery error.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from confluent_kafka import Producer

from fraiseql_observability.codec import SUGGESTION, default_codec
from fraiseql_observability.config import KafkaSettings
from fraiseql_observability.kafka import ensure_topics, producer_config
from fraiseql_observability.timeutil import to_micros

from .errors import AnalyzerError
from .records import Suggestion
from .report import suggestion_document

__all__ = ["publish_suggestions", "suggestion_record"]

def suggestion_record(suggestion: Suggestion, run_id: uuid.UUID,
                      analyzed_at: datetime) -> dict[str, Any]:
    """The Avro record of one suggestion (timestamps as integer microseconds)."""
    document = suggestion_document(suggestion)
    return {
        "suggestion_id": suggestion.id,
        "run_id": str(run_id),
        "analyzed_at": to_micros(analyzed_at),
        "type": suggestion.type,
        "priority": suggestion.priority,
        "schema_name": suggestion.schema,
        "table_name": suggestion.table,
        "json_column": suggestion.json_column,
        "path": suggestion.path,
        "columns": list(suggestion.columns),
        "new_column": suggestion.new_column,
        "new_type": suggestion.new_type,
        "reason": suggestion.reason,
        "patterns": [
            {"fingerprint": p["fingerprint"], "query_name": p["query_name"],
             "queries_per_day": float(p["queries_per_day"] or 0.0),
             "current_p95_ms": p["current_p95_ms"],
             "estimated_speedup": float(p["estimated_speedup"] or 1.0)}
            for p in document["patterns"]
        ],
        "queries_per_day": float(document["impact"]["queries_per_day"] or 0.0),
        "estimated_speedup": float(document["impact"]["estimated_speedup"] or 1.0),
        "current_p95_ms": document["impact"]["current_p95_ms"],
        "projected_p95_ms": document["impact"]["projected_p95_ms"],
        "storage_mb": float(document["impact"]["storage_mb"] or 0.0),
        "validation_method": str(suggestion.validation.get("method", "model")),
        "validation": json.dumps(document["validation"], sort_keys=True),
        "sql": suggestion.sql,
    }


def publish_suggestions(kafka: KafkaSettings, suggestions: Sequence[Suggestion],
                        run_id: uuid.UUID, analyzed_at: datetime, *,
                        timeout_secs: float = 30.0) -> int:
    """Produce ``suggestions`` to ``kafka.suggestions_topic``; returns how many were sent."""
    if not suggestions:
        return 0
    ensure_topics(kafka, [kafka.suggestions_topic], partitions=1)
    codec = default_codec()
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    producer = Producer(producer_config(kafka, **{"linger.ms": 5}))
    for suggestion in suggestions:
        value = codec.encode(SUGGESTION, suggestion_record(suggestion, run_id, analyzed_at))
        producer.produce(kafka.suggestions_topic, key=suggestion.id.encode(), value=value,
                         on_delivery=on_delivery)
        producer.poll(0)
    left = producer.flush(timeout_secs)
    if left or errors:
        raise AnalyzerError(f"publishing suggestions to {kafka.suggestions_topic} failed: "
                            f"{left} undelivered, errors: {'; '.join(errors[:3]) or 'none'}")
    return len(suggestions)
