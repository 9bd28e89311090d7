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
