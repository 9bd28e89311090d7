"""The backend client's options: typed, defaulted, validated at load with the key named, and
handed to the pool."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError, parse_config
from proxy.upstream import Limits, UpstreamPool
from tests.conftest import base_config


def test_defaults():
    cfg = parse_config(base_config("http://127.0.0.1:1"))
    server, backend = cfg.server, cfg.backends["text"]
    assert (server.upstream_max_head_bytes, server.upstream_max_headers) == (65536, 100)
    assert server.max_buffered_response_bytes == 10 * 1024 * 1024
    assert (backend.head_timeout_s, backend.read_timeout_s) == (60.0, 60.0)


@pytest.mark.parametrize("section,key,value", [
    ("server", "upstream_max_head_bytes", 100), ("server", "upstream_max_headers", 0),
    ("server", "max_buffered_response_bytes", 0), ("server", "max_buffered_response_bytes", "big"),
    ("backend", "head_timeout_s", 0), ("backend", "read_timeout_s", -1), ("backend", "connect_timeout_s", 0),
])
def test_a_bad_value_is_refused_with_its_key(section, key, value):
    raw = base_config("http://127.0.0.1:1")
    (raw["server"] if section == "server" else raw["backends"]["text"])[key] = value
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert key in str(exc.value)


def test_the_pool_makes_each_backends_limits_once():
    raw = base_config("http://127.0.0.1:1")
    raw["backends"]["text"].update(head_timeout_s=3, read_timeout_s=4)
    cfg = parse_config(raw)
    pool = UpstreamPool(max_head_bytes=4096, max_headers=7)
    limits = pool.limits(cfg.backends["text"])
    assert limits == Limits(4096, 7, 3.0, 4.0) and pool.limits(cfg.backends["text"]) is limits
