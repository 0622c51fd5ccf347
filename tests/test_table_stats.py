"""fraiseql_obs_producers.table_snapshot and .table_stats: catalogue snapshots of the real PostgreSQL,
published to the real Kafka (and the JSONB-path syntax they use, fraiseql_observability.jsonpath)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from psycopg import sql

from fraiseql_obs_producers import table_stats
from fraiseql_obs_producers.appdb import PLANTED_INDEX_SQL, create_demo_app_db
from fraiseql_obs_producers.errors import TableStatsError
from fraiseql_obs_producers.table_snapshot import (
    estimate_n_distinct,
    snapshot_table_stats,
    workload_json_paths,
)
from fraiseql_obs_producers.table_stats import publish_table_stats
from fraiseql_obs_producers.workload import default_workload
from fraiseql_obs_sinks.records import TableStatsRow
from fraiseql_observability.codec import TABLE_STATS, default_codec
from fraiseql_observability.config import KafkaSettings, Settings
from fraiseql_observability.errors import FraiseqlError
from fraiseql_observability.jsonpath import InvalidJsonPath, JsonPath, parse_json_path, path_expression
from tests.fix_kafka import consume_all
from tests.fix_procs import Processes, clean_env, cli, free_port, write_config

ROWS = 8_000  # tv_order; 1,000 users, 400 products, 4,000 invoices

# --- pure logic ------------------------------------------------------------------------------------


def test_path_expressions_parse_and_print() -> None:
    assert path_expression("data", ("status",)) == "data->>'status'"
    assert path_expression("data", ("customer", "region")) == "data->'customer'->>'region'"
    assert path_expression("Da ta", ("o'x",)) == '"Da ta"->>\'o\'\'x\''
    expected = JsonPath("data", ("customer", "region"))
    for text in ("customer.region", "data->'customer'->>'region'",
                 "((data -> 'customer'::text) ->> 'region'::text)", "data #>> '{customer,region}'",
                 " data->'customer'->>'region' "):
        assert parse_json_path(text) == expected, text
    assert parse_json_path("(data ->> 'customer_email'::text)") == JsonPath("data",
                                                                             ("customer_email",))
    assert parse_json_path("status", default_column="doc") == JsonPath("doc", ("status",))
    for bad in ("", "a..b", "data->'a'", "data->>'a'; DROP TABLE t", "(data->>'price')::numeric",
                "lower(data->>'a')", "data->>0", "x.y->>'a'", "data->>'a' AS b", "data->>$1"):
        with pytest.raises(InvalidJsonPath):
            parse_json_path(bad)
    paths = workload_json_paths(default_workload(tail=0).patterns)
    assert "customer_email" in paths["tv_order"] and "customer.region" in paths["tv_order"]
    assert paths["tv_user"] == ["email", "created_at"]
    # Still importable from the job module, for callers not yet pointed at their homes.
    assert table_stats.parse_json_path is parse_json_path
    assert table_stats.workload_json_paths is workload_json_paths


@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_ \"$]{0,12}", fullmatch=True),
       st.lists(st.text(min_size=1, max_size=12).filter(lambda k: "\x00" not in k),
                min_size=1, max_size=4))
def test_any_path_round_trips_through_its_expression(column: str, keys: list[str]) -> None:
    path = JsonPath(column, tuple(keys))
    assert parse_json_path(path.expression) == path


@given(st.integers(1, 50_000), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1),
       st.floats(1, 1000), st.booleans())
def test_n_distinct_estimate_follows_analyze_rules(sampled: int, nonnull_share: float,
                                                   distinct_share: float, single_share: float,
                                                   scale: float, exact: bool) -> None:
    nonnull = round(sampled * nonnull_share)
    distinct = max(1, round(nonnull * distinct_share)) if nonnull else 0
    singletons = min(distinct, round(distinct * single_share))
    assume(nonnull - singletons >= 2 * (distinct - singletons))  # repeated values occur >= twice
    total = sampled if exact else sampled * scale
    result = estimate_n_distinct(sampled=sampled, nonnull=nonnull, distinct=distinct,
                                 singletons=singletons, total_rows=total, exact=exact)
    assert result is not None
    if nonnull == 0:
        assert result == 0.0
        return
    null_frac = 1 - nonnull / sampled
    if singletons == distinct and not exact:
        # Every sampled value unique: the column is taken as unique, a fraction of the rows.
        assert result == pytest.approx(-(1 - null_frac))
        return
    count = -result * total if result < 0 else result
    if result < 0:  # a count above 10 % of the rows is stored as minus a fraction
        assert -1.0 <= result < 0 and count > 0.1 * total - 1e-6
    else:
        assert count <= 0.1 * total + 1e-9
    if exact:
        assert count == pytest.approx(distinct)
    else:
        assert distinct - 1e-6 <= count <= total * (1 - null_frac) + 0.5
    assert estimate_n_distinct(sampled=0, nonnull=0, distinct=0, singletons=0, total_rows=10,
                               exact=True) is None


def test_n_distinct_known_values() -> None:
    # 1,000 of 100,000 rows sampled, 500 values each seen twice: every value repeats -> 500.
    assert estimate_n_distinct(sampled=1000, nonnull=1000, distinct=500, singletons=0,
                               total_rows=100_000, exact=False) == 500
    # Duj1: n=1000, d=600, f1=400, N=100000 -> 1000·600 / (600 + 4) = 993.4 -> 993.
    assert estimate_n_distinct(sampled=1000, nonnull=1000, distinct=600, singletons=400,
                               total_rows=100_000, exact=False) == 993
    # Above 10 % of the rows it becomes a negative fraction: 20,000 of 100,000 -> -0.2.
    assert estimate_n_distinct(sampled=100_000, nonnull=100_000, distinct=20_000, singletons=0,
                               total_rows=100_000, exact=True) == -0.2


# --- against the real PostgreSQL -----------------------------------------------------------------


def _url(admin_url: str, name: str) -> str:
    return urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


@pytest.fixture(scope="module")
def app_db(pg_admin_url: str) -> Iterator[str]:
    name = f"fraiseql_stats_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _url(pg_admin_url, name)
    try:
        create_demo_app_db(url, rows=ROWS, seed=9)
        yield url
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def _one(url: str, query: str, *params: Any) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params or None).fetchone()
        assert row is not None
        return row[0] if len(row) == 1 else row


def _columns(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["expression"]: c for c in record["columns"]}


@pytest.mark.postgres
def test_snapshot_matches_the_catalogue(app_db: str) -> None:
    seq_scans = {t: _one(app_db, "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = %s", t)
                 for t in ("tv_invoice", "tv_order", "tv_product", "tv_user")}
    before_us = time.time_ns() // 1000
    records = snapshot_table_stats(app_db, region="eu-west-1")
    assert [r["table_name"] for r in records] == ["tv_invoice", "tv_order", "tv_product", "tv_user"]
    assert len({r["snapshot_id"] for r in records}) == 1 and len({r["taken_at"] for r in records}) == 1
    codec = default_codec()
    for record in records:
        table = record["table_name"]
        assert record["source"] == urlsplit(app_db).path[1:] and record["region"] == "eu-west-1"
        assert record["schema_name"] == "public" and record["relkind"] == "r"
        assert before_us <= record["taken_at"] <= time.time_ns() // 1000
        assert record["row_estimate"] == _one(app_db, "SELECT reltuples FROM pg_class "
                                              "WHERE relname = %s", table)
        assert record["total_bytes"] == _one(app_db, "SELECT pg_total_relation_size(%s)", table)
        assert record["seq_scans"] == seq_scans[table]
        columns = _columns(record)
        for column in ("id", "data"):
            expected = _one(app_db, "SELECT null_frac::float8, n_distinct::float8, avg_width "
                            "FROM pg_stats WHERE tablename = %s AND attname = %s", table, column)
            got = columns[column]
            assert (got["null_frac"], got["n_distinct"], got["avg_width"]) == expected
        assert columns["id"]["data_type"] == "bigint" and columns["data"]["data_type"] == "jsonb"
        [index] = record["indexes"]
        assert index["name"] == f"{table}_pkey" and index["is_primary"] and index["is_unique"]
        assert index["size_bytes"] == _one(app_db, "SELECT pg_relation_size(%s)", index["name"])
        # Fits the schema and the sink's validation.
        assert codec.decode(codec.encode(TABLE_STATS, record), TABLE_STATS) == record
        TableStatsRow.from_record(record)

    # Discovered JSONB paths of tv_order; the table is below sample_rows, so values are exact.
    order = _columns(records[1])
    for path in ("data->>'status'", "data->>'customer_email'", "data->'customer'->>'region'",
                 "data->'shipping'->>'carrier'", "data->>'coupon_code'", "data->>'total'"):
        assert order[path]["data_type"] == "text", path
    assert order["data->>'status'"]["n_distinct"] == 6.0
    assert order["data->>'status'"]["null_frac"] == 0.0
    emails = _one(app_db, "SELECT count(DISTINCT data->>'customer_email') FROM tv_order")
    assert emails > 0.1 * ROWS  # about 1,000 customers: stored as a negative fraction
    assert order["data->>'customer_email'"]["n_distinct"] == -(emails / ROWS)
    coupon_nulls = _one(app_db, "SELECT avg(((data->>'coupon_code') IS NULL)::int)::float8 "
                        "FROM tv_order")
    assert order["data->>'coupon_code'"]["null_frac"] == pytest.approx(coupon_nulls)
    assert order["data->>'status'"]["avg_width"] == round(_one(
        app_db, "SELECT avg(octet_length(data->>'status') + 4)::float8 FROM tv_order"))


@pytest.mark.postgres
def test_sampled_estimates_on_a_table_larger_than_the_sample(app_db: str) -> None:
    records = snapshot_table_stats(app_db, region="r", tables=["tv_order"], sample_rows=1500,
                                   json_paths={"tv_order": ["status", "customer_email",
                                                            "coupon_code", "number"]})
    order = _columns(records[0])
    assert set(order) == {"id", "data", "data->>'status'", "data->>'customer_email'",
                          "data->>'coupon_code'", "data->>'number'"}
    assert order["data->>'status'"]["n_distinct"] == 6.0  # every sampled value repeats
    assert order["data->>'number'"]["n_distinct"] == -1.0  # every sampled value unique
    truth = _one(app_db, "SELECT count(DISTINCT data->>'customer_email') FROM tv_order") / ROWS
    estimate = order["data->>'customer_email'"]["n_distinct"]
    assert estimate < 0 and truth / 3 < -estimate < min(1.0, truth * 3)
    coupon_nulls = _one(app_db, "SELECT avg(((data->>'coupon_code') IS NULL)::int)::float8 "
                        "FROM tv_order")
    assert order["data->>'coupon_code'"]["null_frac"] == pytest.approx(coupon_nulls, abs=0.05)


@pytest.mark.postgres
def test_expression_index_statistics_and_scans(app_db: str) -> None:
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute(PLANTED_INDEX_SQL)
        conn.execute("ANALYZE tv_order")
    try:
        paths = {"tv_order": ["customer_email", "status"]}
        [record] = snapshot_table_stats(app_db, region="r", tables=["public.tv_order"],
                                        json_paths=paths)
        index = {i["name"]: i for i in record["indexes"]}["tv_order_customer_email_idx"]
        assert index["definition"] == ("CREATE INDEX tv_order_customer_email_idx ON public.tv_order "
                                       "USING btree (((data ->> 'customer_email'::text)))")
        assert not index["is_unique"] and not index["is_primary"]
        assert index["size_bytes"] == _one(app_db, "SELECT pg_relation_size(%s)", index["name"])
        # The path's statistics are the planner's, from the analyzed expression index.
        planner = _one(app_db, "SELECT null_frac::float8, n_distinct::float8, avg_width FROM pg_stats "
                       "WHERE tablename = 'tv_order_customer_email_idx'")
        got = _columns(record)["data->>'customer_email'"]
        assert (got["null_frac"], got["n_distinct"], got["avg_width"]) == planner
        scans = index["scans"]

        with psycopg.connect(app_db) as conn:
            for n in range(1, 6):
                conn.execute("SELECT data FROM tv_order WHERE data->>'customer_email' = %s LIMIT 20",
                             (f"user{n}@example.com",)).fetchall()
        # The backend's counters reach the shared statistics when it exits (or within ~1 s).
        deadline = time.monotonic() + 10
        while True:
            [later] = snapshot_table_stats(app_db, region="r", tables=["tv_order"], json_paths=paths)
            now = {i["name"]: i for i in later["indexes"]}["tv_order_customer_email_idx"]["scans"]
            if now >= scans + 5 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert now == scans + 5
    finally:
        with psycopg.connect(app_db, autocommit=True) as conn:
            conn.execute("DROP INDEX IF EXISTS tv_order_customer_email_idx")


@pytest.mark.postgres
def test_table_selection_and_hostile_names(app_db: str) -> None:
    weird = 'we"ird tbl'
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute(sql.SQL('CREATE TABLE {} (id int, "Da ta" jsonb)').format(sql.Identifier(weird)))
        conn.execute(sql.SQL("""INSERT INTO {} SELECT g, jsonb_build_object('o''x', g % 3)
                                FROM generate_series(1, 30) g""").format(sql.Identifier(weird)))
    try:
        records = snapshot_table_stats(
            app_db, region="r", tables=["public.tv_user", "tv_product", "missing_table", weird],
            json_paths={"tv_user": ["email", "address.city"], weird: ["\"Da ta\"->>'o''x'"]})
        assert [r["table_name"] for r in records] == ["tv_user", "tv_product", weird]
        user, product, odd = (_columns(r) for r in records)
        assert set(user) == {"id", "data", "data->>'email'", "data->'address'->>'city'"}
        assert user["data->>'email'"]["n_distinct"] == -1.0
        assert user["data->'address'->>'city'"]["n_distinct"] == 12.0
        assert set(product) == {"id", "data"}  # no paths asked for this table
        # Never analyzed: reltuples -1, no pg_stats, but the sample is the whole (tiny) table.
        assert records[2]["row_estimate"] == -1.0
        assert odd["Da ta"]["null_frac"] is None
        assert odd['"Da ta"->>\'o\'\'x\'']["n_distinct"] == 3.0
        default_codec().encode(TABLE_STATS, records[2])
    finally:
        with psycopg.connect(app_db, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(weird)))
    with pytest.raises(TableStatsError) as info:
        snapshot_table_stats("postgresql://app:S3cretPW@127.0.0.1:1/app?connect_timeout=2",
                             region="r")
    assert "S3cretPW" not in str(info.value)


# --- Kafka ---------------------------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.postgres
def test_published_records_reach_the_topic(app_db: str, kafka_settings: KafkaSettings) -> None:
    records = snapshot_table_stats(app_db, region="test")
    publish_table_stats(Settings(kafka=kafka_settings), records)
    messages = consume_all(kafka_settings.bootstrap_servers, kafka_settings.table_stats_topic,
                           expected=len(records), idle_secs=1.0, max_secs=30)
    codec = default_codec()
    got = {key.decode(): codec.decode(value, TABLE_STATS) for key, value, _, _ in messages
           if key is not None}
    assert len(messages) == len(records) == 4
    assert got == {f"public.{r['table_name']}": r for r in records}

    down = Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    started = time.monotonic()
    with pytest.raises(FraiseqlError):
        publish_table_stats(down, records, timeout=2.0)
    assert time.monotonic() - started < 15
    publish_table_stats(down, [])  # nothing to send: no broker needed


def _snapshots_ok(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    match = re.search(r'^fraiseql_table_stats_snapshots_total\{outcome="ok"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.kafka
@pytest.mark.postgres
def test_cli_table_stats_once_and_periodic(app_db: str, kafka_settings: KafkaSettings,
                                           tmp_path: Path, processes: Processes) -> None:
    config = write_config(tmp_path / "fraiseql.toml", kafka_settings)
    once = subprocess.run(cli(config, "table-stats", "--app-database", app_db, "--once",
                              "--table", "tv_order", "--json-path", "tv_order:status"),
                          env=clean_env(), capture_output=True, text=True, timeout=60,
                          check=False)
    assert once.returncode == 0, once.stderr
    summary = json.loads(once.stdout)
    assert summary["topic"] == kafka_settings.table_stats_topic
    assert [t["table"] for t in summary["tables"]] == ["public.tv_order"]
    assert summary["tables"][0]["columns"] == 3  # id, data, data->>'status'

    bad = subprocess.run(cli(config, "table-stats", "--app-database", app_db, "--once",
                             "--json-path", "tv_order:a..b"),
                         env=clean_env(), capture_output=True, text=True, timeout=60,
                          check=False)
    assert bad.returncode == 2 and "--json-path" in bad.stderr

    port = free_port()
    proc = processes.start("table-stats", cli(config, "table-stats", "--app-database", app_db,
                                              "--interval", "0.5", "--table", "tv_user",
                                              "--metrics-port", str(port)))
    deadline = time.monotonic() + 30
    while _snapshots_ok(port) < 2 and time.monotonic() < deadline:
        processes.assert_running()
        time.sleep(0.2)
    assert _snapshots_ok(port) >= 2, processes.log("table-stats")
    proc.terminate()
    assert proc.wait(15) == 0, processes.log("table-stats")
    messages = consume_all(kafka_settings.bootstrap_servers, kafka_settings.table_stats_topic,
                           idle_secs=1.0, max_secs=20)
    codec = default_codec()
    decoded = [codec.decode(value, TABLE_STATS) for _, value, _, _ in messages]
    periodic = [r for r in decoded if r["table_name"] == "tv_user"]
    assert len(periodic) >= 2 and len({r["snapshot_id"] for r in periodic}) == len(periodic)
