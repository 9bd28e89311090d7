"""Redis specifics: keys of one account share a cluster slot; an outage fails fast and recovers."""

from __future__ import annotations

import shutil
import time

import pytest
from redis.cluster import RedisCluster  # noqa: F401  (the slot function lives beside it)
from redis.crc import key_slot

from proxy.errors import StoreUnavailable
from proxy.store import open_store
from proxy.store.redis import RedisStore
from tests.conftest import free_port, start_redis


def test_account_keys_share_one_hash_slot():
    store = RedisStore("redis://127.0.0.1:6379/0", prefix="fg")
    slots = {key_slot(k.encode()) for k in store.account_keys("acme")}
    assert len(slots) == 1



@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
async def test_outage_raises_fast_and_recovers():
    port = free_port()
    proc = start_redis(port)
    s = open_store(f"redis://127.0.0.1:{port}/0")
    try:
        await s.start()
        await s.seed_account("a", 5)
        proc.terminate()
        proc.wait(10)
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await s.get_account("a")
        with pytest.raises(StoreUnavailable):
            await s.ping()
        assert time.monotonic() - began < 1.0
        proc = start_redis(port)
        await s.ping()
        await s.grant("a", 3)
        assert (await s.get_account("a")).balance == 3
    finally:
        await s.close()
        proc.kill()
        proc.wait()
