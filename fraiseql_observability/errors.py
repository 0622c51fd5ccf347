"""The root of every exception this project raises on purpose.

Each subsystem derives its own exceptions from :class:`FraiseqlError`, so a caller can catch
"anything the pipeline reports" without also swallowing programming errors.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DecodeError", "FraiseqlError", "UsageError"]


class FraiseqlError(Exception):
    """Root of the project's exceptions."""


class ConfigError(FraiseqlError):
    """A configuration value is missing or outside its allowed range (exit code 2)."""


class UsageError(FraiseqlError):
    """A command used wrongly: flags that contradict each other, a malformed argument (exit code 2)."""


class DecodeError(FraiseqlError):
    """Bytes that are not a valid single-object-encoded record of a known schema.

    ``reason`` is a short machine-readable word used as the dead-letter reason.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
