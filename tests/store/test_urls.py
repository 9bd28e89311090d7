"""Store URLs are checked at config load, before anything connects: a careless one is refused with
what is wrong with it."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError, parse_config
from proxy.store.urls import check_store_url, parse_pg_url, parse_seeds


def test_cluster_seeds_and_credentials():
    seeds, options = parse_seeds("redis+cluster://user:p%40ss@10.0.0.1:7000,[::1]:7001,node-c:7002")
    assert seeds == [("10.0.0.1", 7000), ("::1", 7001), ("node-c", 7002)]
    assert options == {"ssl": False, "username": "user", "password": "p@ss"}
    assert parse_seeds("rediss+cluster://h:6380")[1] == {"ssl": True}


@pytest.mark.parametrize("url, says", [
    ("redis+cluster://", "is not host:port"),
    ("redis+cluster://h1:7000,h2", "'h2' is not host:port"),
    ("redis+cluster://h1:99999", "is not host:port"),
    ("redis+cluster://h1:7000/3", "only database 0"),
    ("postgresql://u:p@/db", "needs a host"),
    ("postgresql://u:p@h/db?schema=Robert');DROP", "schema"),
    ("mysql://u:p@h/db", "must be sqlite"),
    ("sqlite://", "needs a path"),
])
def test_careless_urls_are_refused_with_the_reason(url, says):
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        check_store_url(url)
    with pytest.raises(ConfigError) as err:
        parse_config({"store": url})
    assert "store" in str(err.value)


def test_postgres_schema_is_taken_out_of_the_dsn():
    dsn, schema = parse_pg_url("postgres://u:p@db:5432/fg?schema=billing&sslmode=require")
    assert schema == "billing"
    assert dsn == "postgresql://u:p@db:5432/fg?sslmode=require"
    assert parse_pg_url("postgresql://u@db/fg")[1] == "flowgate"


@pytest.mark.parametrize("url", [
    "postgresql://app:hunter2/x@db:5432/fg",
    "postgresql://app:hunter2?x@db:5432/fg",
    "postgresql://app:hunter2#x@db:5432/fg",
    "redis+cluster://:hunter2/x@h1:7000,h2:7001",
    "redis+cluster://:hunter2?x@h1:7000",
    "redis+cluster://:hunter2#x@h1:7000",
    "redis://:hunter2#x@h:6379/0",
])
def test_a_password_with_an_unencoded_delimiter_is_refused_without_echoing_it(url):
    # the host part ends at the first / ? or #: the rest of the password would become a host, a
    # port, a database name or a driver parameter (and appear in an error message)
    with pytest.raises(ConfigError) as err:
        parse_config({"store": url})
    assert "percent-encoded" in str(err.value)
    assert "hunter" not in str(err.value)


@pytest.mark.parametrize("url", [
    "postgresql://app:hunter2%2Fx%3F%23%40@db:5432/fg?application_name=me@work",
    "redis+cluster://:hunter2%2Fx@h1:7000",
    "redis://h:6379/0",
    "sqlite:////var/lib/flowgate/a@b.db",
])
def test_encoded_passwords_and_an_at_sign_elsewhere_are_fine(url):
    check_store_url(url)


@pytest.mark.parametrize("schema", [
    "flowgate\n", "x; DROP TABLE accounts", 'x"', "x'", "Flowgate", "a" * 64, "pg_catalog", "pg_temp",
    "information_schema", "",
])
def test_hostile_schema_names_are_refused_at_load(schema):
    from urllib.parse import quote

    with pytest.raises(ValueError, match="schema"):
        check_store_url(f"postgresql://u:p@db/fg?schema={quote(schema)}")


def test_the_longest_schema_name_postgresql_keeps_is_fine():
    assert parse_pg_url(f"postgresql://u:p@db/fg?schema={'a' * 63}")[1] == "a" * 63


@pytest.mark.parametrize("prefix", ["{}", "app{x}", "x}"])
def test_a_cluster_prefix_with_a_hash_tag_is_refused(prefix):
    # "{}x" hashes every key whole: each script's keys in different slots (CROSSSLOT on every call)
    with pytest.raises(ValueError, match="prefix"):
        check_store_url(f"redis+cluster://h1:7000?prefix={prefix}")
