"""Avro single-object encoding of every record the pipeline exchanges (SPEC §3).

Wire format: ``C3 01``, the 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint of the writer
schema's Parsing Canonical Form, then the Avro binary body. Readers look the writer schema up by
fingerprint among ``schemas/*.avsc`` and resolve it against the current schema of the same record,
so old writers keep working after a backward-compatible change.

A schema file may name a record another current file defines (``QueryEventBatch``'s items are
``QueryEvent``): the codec expands the reference in place before fingerprinting and parsing, so the
fingerprint covers the whole definition (a changed ``QueryEvent`` changes the batch's fingerprint)
and each file stays one definition. An older ``*.vN.avsc`` writer of such a record inlines the
definition it was written with.

Timestamps (``timestamp-micros``) travel as plain integers of microseconds since the epoch: the
logical type is stripped before parsing because converting to ``datetime`` halves fastavro's speed
on the hot path (NOTES.md). Callers convert where they need a ``datetime``.
"""

from __future__ import annotations

import importlib.resources
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from .errors import DecodeError

__all__ = [
    "DEAD_LETTER",
    "MAGIC",
    "QUERY_EVENT",
    "QUERY_EVENT_BATCH",
    "QUERY_ROLLUP",
    "SCHEMA_DIR",
    "SUGGESTION",
    "TABLE_STATS",
    "Codec",
    "default_codec",
]

# The *.avsc files are the repository's schemas/ folder, installed as the data-only package
# fraiseql_obs_schemas (pyproject maps it): found by name, so this layer imports nothing of it.
SCHEMA_DIR: Final = Path(str(importlib.resources.files("fraiseql_obs_schemas")))

MAGIC: Final = b"\xc3\x01"
HEADER_LEN: Final = 10
NAMESPACE: Final = "fraiseql.observability"
QUERY_EVENT: Final = f"{NAMESPACE}.QueryEvent"
# Several QueryEvent in one message (the Recorder's default); either may arrive on the events topic.
QUERY_EVENT_BATCH: Final = f"{NAMESPACE}.QueryEventBatch"
QUERY_ROLLUP: Final = f"{NAMESPACE}.QueryRollup"
TABLE_STATS: Final = f"{NAMESPACE}.TableStats"
DEAD_LETTER: Final = f"{NAMESPACE}.DeadLetter"
SUGGESTION: Final = f"{NAMESPACE}.Suggestion"


def _strip_logical_types(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("logicalType") in {"timestamp-micros", "timestamp-millis"}:
            return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
        return {k: _strip_logical_types(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


_PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _expand(node: Any, namespace: str | None, library: Mapping[str, Any], defined: set[str]) -> Any:
    """``node`` with the first reference to each record of ``library`` replaced by its definition
    (what a self-contained schema, and so its Parsing Canonical Form, must hold)."""
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        full = _full_name(node, namespace)
        if full in defined or full not in library:
            return node  # a later reference, or unknown (fastavro reports that)
        return _expand(library[full], namespace, library, defined)
    if isinstance(node, list):
        return [_expand(v, namespace, library, defined) for v in node]
    if not isinstance(node, dict):
        return node
    kind = node.get("type")
    if kind in {"record", "error", "enum", "fixed"}:
        namespace = node.get("namespace", namespace)
        defined.add(_full_name(str(node["name"]), namespace))
        if kind in {"enum", "fixed"}:
            return node
        fields = [{**f, "type": _expand(f["type"], namespace, library, defined)}
                  for f in node["fields"]]
        return {**node, "fields": fields}
    if kind == "array":
        return {**node, "items": _expand(node["items"], namespace, library, defined)}
    if kind == "map":
        return {**node, "values": _expand(node["values"], namespace, library, defined)}
    if kind is not None and kind not in _PRIMITIVES:
        return {**node, "type": _expand(kind, namespace, library, defined)}
    return node


@dataclass(frozen=True, slots=True)
class _Schema:
    name: str
    fingerprint: bytes
    parsed: Any


class Codec:
    """Encode and decode single-object Avro records of the schemas in one folder."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        self._by_fingerprint: dict[bytes, _Schema] = {}
        self._current: dict[str, _Schema] = {}
        files = {path: json.loads(path.read_text(encoding="utf-8"))
                 for path in sorted(schema_dir.glob("*.avsc"))}
        # Current definitions by full name: what another file may reference by name.
        library = {_full_name(str(raw["name"]), raw.get("namespace")): raw
                   for path, raw in files.items()
                   if path.stem.count(".") == 0 and isinstance(raw, dict) and "name" in raw}
        for path, named in files.items():
            raw = _expand(named, None, library, set())
            canonical = to_parsing_canonical_form(raw)
            fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
            parsed: Any = fastavro.parse_schema(_strip_logical_types(raw))
            name = str(parsed["name"])
            schema = _Schema(name, fp, parsed)
            self._by_fingerprint[fp] = schema
            # "<name>.avsc" is the current version; "<name>.vN.avsc" files are older writers.
            if path.stem.count(".") == 0:
                if name in self._current:
                    raise ValueError(f"two current schemas for {name}: {path}")
                self._current[name] = schema

    def fingerprint_of(self, name: str) -> bytes:
        return self._current[name].fingerprint

    def has_schema(self, name: str) -> bool:
        """True when the folder holds a current schema of ``name``."""
        return name in self._current

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` with the current schema of ``name``.

        Raises ``ValueError``/``TypeError`` from fastavro when the record does not fit the schema:
        that is a bug in the caller, not bad input from outside.
        """
        schema = self._current[name]
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(schema.fingerprint)
        fastavro.schemaless_writer(out, schema.parsed, record)
        return out.getvalue()

    def decode(self, data: bytes | None, expected: str | None = None) -> dict[str, Any]:
        """Decode one record; any defect raises :class:`DecodeError` with a dead-letter reason."""
        return self.decode_named(data, expected)[1]

    def decode_named(
        self, data: bytes | None, expected: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        if data is None:
            raise DecodeError("undecodable", "empty message (null value)")
        if len(data) < HEADER_LEN or data[:2] != MAGIC:
            raise DecodeError("undecodable", "not Avro single-object encoding (bad magic or too short)")
        writer = self._by_fingerprint.get(bytes(data[2:HEADER_LEN]))
        if writer is None:
            unknown = bytes(data[2:HEADER_LEN]).hex()
            raise DecodeError("unknown_schema", f"unknown writer schema fingerprint {unknown}")
        if expected is not None and writer.name != expected:
            raise DecodeError("unexpected_schema", f"got {writer.name}, expected {expected}")
        reader = self._current.get(writer.name, writer)
        buf = io.BytesIO(data)
        buf.seek(HEADER_LEN)
        try:
            if reader is writer:
                record = fastavro.schemaless_reader(buf, writer.parsed, None)
            else:
                record = fastavro.schemaless_reader(buf, writer.parsed, reader.parsed)
        except Exception as exc:  # fastavro raises many types on corrupt input
            raise DecodeError("undecodable", f"corrupt {writer.name} body: {type(exc).__name__}") from None
        if buf.tell() != len(data):
            raise DecodeError("undecodable", f"{len(data) - buf.tell()} trailing bytes after {writer.name}")
        if not isinstance(record, dict):
            raise DecodeError("undecodable", "body is not a record")
        return writer.name, record


_DEFAULT: Codec | None = None


def default_codec() -> Codec:
    """The codec of the schemas shipped with the package (built once per process)."""
    global _DEFAULT  # noqa: PLW0603 - a process-wide cache of parsed schemas
    if _DEFAULT is None:
        _DEFAULT = Codec()
    return _DEFAULT
