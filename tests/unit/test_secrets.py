"""Passwords never leave through masked URLs or masked free text (secrets.py, SPEC §4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraiseql_observability.secrets import mask_secrets, mask_url

FAST = settings(max_examples=200, deadline=None)

# Markers at both ends of every generated password: a leak of any end shows up as a marker.
START, END = "PWSTARTq7", "q7PWEND"

schemes = st.sampled_from(["postgresql", "postgres", "mysql", "redis", "kafka+ssl", "http"])
users = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-%", max_size=12)
hosts = st.sampled_from(["db", "db.example.com", "127.0.0.1", "[::1]", "[2001:db8::5]", ""])
ports = st.none() | st.integers(min_value=1, max_value=65535)
paths = st.sampled_from(["", "/", "/metrics", "/fraiseql_metrics", "/a/b"])
queries = st.sampled_from(["", "?sslmode=require", "?sslmode=require&connect_timeout=10",
                           "?application_name=fraiseql", "#frag"])
# Anything a careless operator types into a password: URL delimiters, spaces, quotes, percent.
URL_TROUBLE = list("@:/?#[]% &=;'\"\\\t\n")
password_middles = st.lists(
    st.sampled_from(URL_TROUBLE) | st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]),
    max_size=16,
).map("".join)
passwords = password_middles.map(lambda middle: f"{START}{middle}{END}")


def hostinfo(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


def assert_no_password(text: str) -> None:
    assert START not in text and END not in text, text


@FAST
@given(scheme=schemes, user=users, password=passwords, host=hosts, port=ports, path=paths,
       query=queries)
def test_mask_url_hides_any_password(
    scheme: str, user: str, password: str, host: str, port: int | None, path: str, query: str
) -> None:
    url = f"{scheme}://{user}:{password}@{hostinfo(host, port)}{path}{query}"
    masked = mask_url(url)
    assert_no_password(masked)


@FAST
@given(scheme=schemes, user=users, password=passwords, host=hosts, port=ports, path=paths,
       query=queries)
def test_mask_url_keeps_everything_but_the_password(
    scheme: str, user: str, password: str, host: str, port: int | None, path: str, query: str
) -> None:
    url = f"{scheme}://{user}:{password}@{hostinfo(host, port)}{path}{query}"
    assert mask_url(url) == f"{scheme}://{user}:***@{hostinfo(host, port)}{path}{query}"


@FAST
@given(scheme=schemes, user=users, host=hosts, port=ports, path=paths, query=queries,
       with_user=st.booleans())
def test_mask_url_leaves_urls_without_password_unchanged(
    scheme: str, user: str, host: str, port: int | None, path: str, query: str, with_user: bool
) -> None:
    userinfo = f"{user}@" if with_user else ""
    url = f"{scheme}://{userinfo}{hostinfo(host, port)}{path}{query}"
    assert mask_url(url) == url


@FAST
@given(scheme=schemes, user=users, password=passwords, host=hosts, port=ports, path=paths,
       query=queries)
def test_mask_url_is_idempotent(
    scheme: str, user: str, password: str, host: str, port: int | None, path: str, query: str
) -> None:
    masked = mask_url(f"{scheme}://{user}:{password}@{hostinfo(host, port)}{path}{query}")
    assert mask_url(masked) == masked


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app:s3cret@db:5432/metrics", "postgresql://app:***@db:5432/metrics"),
        ("postgresql://app:s3cret@db/metrics?sslmode=require",
         "postgresql://app:***@db/metrics?sslmode=require"),
        ("postgresql://:s3cret@db/metrics", "postgresql://:***@db/metrics"),
        ("postgresql://app:@db/metrics", "postgresql://app:***@db/metrics"),
        ("postgresql://app:p%40ss@db/metrics", "postgresql://app:***@db/metrics"),
        ("postgresql://app:p@ss@db/metrics", "postgresql://app:***@db/metrics"),
        ("postgresql://app:pa/ss@db/metrics", "postgresql://app:***@db/metrics"),
        ("postgresql://app:pa#ss@db/metrics", "postgresql://app:***@db/metrics"),
        ("postgresql://app:pa?ss@db/metrics", "postgresql://app:***@db/metrics"),
        ("postgresql://app:pa ss[@db/metrics", "postgresql://app:***@db/metrics"),
        ("postgresql://app:s3cret@[::1]:5432/m", "postgresql://app:***@[::1]:5432/m"),
        ("postgresql://app@db/metrics", "postgresql://app@db/metrics"),
        ("postgresql://db:5432/metrics", "postgresql://db:5432/metrics"),
        ("postgresql:///metrics?host=/run/postgresql", "postgresql:///metrics?host=/run/postgresql"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_mask_url_examples(url: str, expected: str) -> None:
    assert mask_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app@db/metrics?password=s3cret",
        "postgresql://app@db/metrics?sslmode=require&password=s3cret",
        "postgresql://app:other@db/metrics?password=s3cret",
    ],
)
def test_password_in_the_query_string_is_masked(url: str) -> None:
    masked = mask_url(url)
    assert "s3cret" not in masked and "other" not in masked
    assert masked.startswith("postgresql://app")


@FAST
@given(scheme=schemes, user=users, password=passwords.filter(lambda p: not any(
    c.isspace() for c in p)), host=hosts, port=ports, path=paths, query=queries,
       before=st.sampled_from(["", "connection to ", "error: could not connect (", "url="]),
       after=st.sampled_from(["", " failed", ") timeout", "\nnext line"]))
def test_mask_secrets_hides_url_passwords_in_free_text(
    scheme: str, user: str, password: str, host: str, port: int | None, path: str, query: str,
    before: str, after: str,
) -> None:
    """Free text is split by whitespace, so passwords without whitespace are always found."""
    text = f"{before}{scheme}://{user}:{password}@{hostinfo(host, port)}{path}{query}{after}"
    masked = mask_secrets(text)
    assert_no_password(masked)
    assert masked.startswith(before) and masked.endswith(after)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("host=db user=app password=s3cret dbname=m", "s3cret"),
        ("host=db password = s3cret", "s3cret"),
        ("host=db PASSWORD=s3cret", "s3cret"),
        ("host=db password='with spaces' dbname=m", "with spaces"),
        ("urls: postgres://a:one@h1/x and mysql://b:two@h2/y", "one"),
        ("urls: postgres://a:one@h1/x and mysql://b:two@h2/y", "two"),
    ],
)
def test_mask_secrets_examples(text: str, secret: str) -> None:
    masked = mask_secrets(text)
    assert secret not in masked
    assert "***" in masked


@FAST
@given(text=st.text(alphabet=st.characters(exclude_characters="@=:"), max_size=80))
def test_mask_secrets_leaves_text_without_credentials_alone(text: str) -> None:
    assert mask_secrets(text) == text


# --- credentials without a scheme (#15: `alice:S3cret@host` was printed as typed) -------------

@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice:S3cret@host", "alice:***@host"),
        ("alice:S3cret@db:5432/metrics", "alice:***@db:5432/metrics"),
        ("--database alice:S3cret@db/m: expected a postgresql:// URL",
         "--database alice:***@db/m: expected a postgresql:// URL"),
        ("'alice:S3cret@host'", "'alice:***@host'"),
        ("alice:p@ss@db/m", "alice:***@db/m"),
        ("alice:pa:ss@[::1]:5432/m", "alice:***@[::1]:5432/m"),
        ("u.s-e_r%40x:pw@h", "u.s-e_r%40x:***@h"),
        ("sasl bob:hunter2@kafka-1:9093 refused", "sasl bob:***@kafka-1:9093 refused"),
    ],
)
def test_mask_secrets_without_a_scheme(text: str, expected: str) -> None:
    assert mask_secrets(text) == expected
    assert mask_url(text) == expected
    assert mask_secrets(expected) == expected  # idempotent


@pytest.mark.parametrize("text", [
    "alice@host", "12:30 at host", "host:5432", "a:b", "postgresql://app@db:5432/m",
    "kafka+ssl://user@h:1/x", "[::1]:9092", "2026-12-03 09:16:24,265 INFO x: y",
    "email me at alice@example.com: soon",
])
def test_text_without_credentials_is_unchanged(text: str) -> None:
    assert mask_secrets(text) == text


@FAST
@given(user=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-%", min_size=1, max_size=12),
       password=passwords.filter(lambda p: not any(c.isspace() for c in p)),
       host=hosts.filter(bool), port=ports, path=paths,
       before=st.sampled_from(["", "url ", "cannot connect to ", "'", "("]),
       after=st.sampled_from(["", " failed", "'", ": expected a postgresql:// URL"]))
def test_mask_secrets_hides_schemeless_passwords(
    user: str, password: str, host: str, port: int | None, path: str, before: str, after: str
) -> None:
    text = f"{before}{user}:{password}@{hostinfo(host, port)}{path}{after}"
    masked = mask_secrets(text)
    assert_no_password(masked)
    assert masked == f"{before}{user}:***@{hostinfo(host, port)}{path}{after}"
