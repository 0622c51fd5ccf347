"""Package attributes imported on first use, so importing a package stays cheap.

A stage package lists which submodule holds each public name; importing the package then loads
none of them (an API process importing the recorder pays for no load generator, ``stats`` for no
Kafka client), and ``pkg.Name`` imports its submodule when first read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` resolving ``name`` from ``package.where[name]``."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
