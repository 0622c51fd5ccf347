"""The Avro schemas of every record the pipeline writes (``*.avsc`` beside this file).

A file ``<name>.avsc`` is the current writer schema of a record; older versions kept for readers
are named ``<name>.v<N>.avsc``. Schema changes must stay backward compatible: new fields carry
defaults.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SCHEMA_DIR"]

SCHEMA_DIR = Path(__file__).resolve().parent
