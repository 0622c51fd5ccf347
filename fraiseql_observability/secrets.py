"""Keep passwords out of logs and error messages."""

from __future__ import annotations

import re

__all__ = ["mask_secrets", "mask_url"]

# The password runs to the last "@" of the whitespace-delimited word: passwords typed by hand hold
# unescaped "@", "/", "#", "?" (masking a little too much is safe, leaking the tail is not).
_URL_IN_TEXT = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>\S*)@")
# The same without a scheme ("alice:S3cret@db:5432/metrics", a URL typed without postgresql://,
# a Kafka SASL "user:password@host"): a user-like token, ":", anything but "//" (a scheme's), up to
# the last "@" of the word, then something host-like. Masking an odd "a:b@c" is the safe mistake.
_USERINFO_IN_TEXT = re.compile(
    r"(?<![\w.%+~-])(?P<user>[\w.%+~-]+):(?!//)(?P<pw>[^\s]*)@(?=[\w\[])"
)
_KV_PASSWORD = re.compile(r"(?i)(password\s*=\s*)('[^']*'|\S+)")


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``.

    >>> mask_url("postgresql://app:s3cret@db:5432/metrics")
    'postgresql://app:***@db:5432/metrics'
    """
    # Not urllib.parse: it ends the user info at the first "/", "?" or "#", and raises on "[",
    # so a hand-typed password holding those characters would leak. A host never holds "@": the
    # password runs from the first ":" after the user to the last "@".
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostinfo = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if sep and at and colon and not any(c in user for c in "/?#"):
        url = f"{scheme}://{user}:***@{hostinfo}"
    # then the libpq "?password=" query parameter (and any other URL in a malformed string)
    return mask_secrets(url)


def mask_secrets(text: str) -> str:
    """Mask passwords embedded in free text (URLs with or without a scheme, libpq ``password=``).

    >>> mask_secrets("cannot connect to alice:S3cret@db:5432/metrics")
    'cannot connect to alice:***@db:5432/metrics'
    """
    text = _URL_IN_TEXT.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _USERINFO_IN_TEXT.sub(lambda m: f"{m['user']}:***@", text)
    return _KV_PASSWORD.sub(lambda m: f"{m.group(1)}***", text)
