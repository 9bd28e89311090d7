"""The key ring: config keys without the store, store keys from a copy kept current by the store's
key version (new keys at once, revoked ones within FRESH_S, expired ones by their clock), an unknown
secret asked again answered from memory, a store that is down failing closed for store keys only."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.config import parse_config
from proxy.errors import StoreUnavailable
from proxy.policies.keys import KeyRing, KeySpec, create_key, key_digest
from proxy.store.memory import MemoryStore
from tests.conftest import SECRET, base_config, sha


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.version_reads = 0
        self.list_reads = 0
        self.down = False

    async def keys_version(self) -> int:
        if self.down:
            raise StoreUnavailable("down")
        self.version_reads += 1
        return await super().keys_version()

    async def list_keys(self) -> list[dict]:
        self.list_reads += 1
        return await super().list_keys()


@pytest.fixture
def ring():
    config = parse_config(base_config("http://127.0.0.1:9"))
    store = CountingStore()
    return KeyRing(config, store, fresh_s=0.2), config, store


async def test_config_keys_never_read_the_store(ring):
    keys, _, store = ring
    assert (await keys.by_hash(sha(SECRET))).id == "key_acme"
    assert (await keys.by_id("key_acme")).owner == "acme"
    assert store.version_reads == 0


async def test_a_new_key_works_at_once_and_a_revoked_one_stops(ring):
    keys, config, store = ring
    assert await keys.by_hash(key_digest("fg_nobody")) is None  # the copy is now current
    other = KeyRing(config, store, fresh_s=0.2)  # another replica made it
    secret, record = await create_key(config, store, KeySpec(owner="acme"))
    assert (await keys.by_hash(key_digest(secret))).id == record["id"]  # no wait
    assert (await keys.by_id(record["id"])).id == record["id"]
    await other.store.delete_key(record["id"])
    await asyncio.sleep(0.25)
    assert await keys.by_hash(key_digest(secret)) is None


async def test_an_unknown_secret_asked_again_costs_no_store_read(ring):
    keys, _, store = ring
    for _ in range(3):
        assert await keys.by_hash(key_digest("fg_bogus")) is None
    reads = store.version_reads
    for _ in range(100):
        assert await keys.by_hash(key_digest("fg_bogus")) is None
    assert store.version_reads == reads


async def test_an_expired_key_is_refused_by_its_clock(ring):
    keys, config, store = ring
    secret, _ = await create_key(config, store, KeySpec(owner="acme", expires_in_s=1), now=time.time() - 2)
    assert await keys.by_hash(key_digest(secret)) is None


async def test_a_store_that_is_down_fails_closed_for_store_keys_only(ring):
    keys, config, store = ring
    secret, _ = await create_key(config, store, KeySpec(owner="acme"))
    assert await keys.by_hash(key_digest(secret)) is not None
    store.down = True
    await asyncio.sleep(0.25)
    with pytest.raises(StoreUnavailable):
        await keys.by_hash(key_digest(secret))
    assert (await keys.by_hash(sha(SECRET))).id == "key_acme"


async def test_concurrent_unknown_secrets_share_reads(ring):
    keys, _, store = ring
    await keys.sync()
    before = store.version_reads
    await asyncio.gather(*(keys.by_hash(key_digest(f"fg_x{i}")) for i in range(200)))
    assert store.version_reads - before <= 3


async def test_the_watcher_keeps_the_ring_in_force_current_after_a_reload(ring):
    """A reload puts a new KeyRing in force; the watcher kept re-validating the first one, so every
    request with a store key after a quiet half second waited for a store read on the hot path."""
    from proxy.policies.keys import watch

    keys, config, store = ring
    current = {"ring": keys}
    task = asyncio.create_task(watch(lambda: current["ring"]))
    try:
        await asyncio.sleep(0.05)
        reloaded = KeyRing(config, store, fresh_s=0.2)
        current["ring"] = reloaded
        await asyncio.sleep(0.35)
        assert time.monotonic() - reloaded._checked < 0.2  # kept current without a request
    finally:
        task.cancel()


async def test_the_watcher_survives_an_unexpected_store_error(ring):
    """Only StoreUnavailable was retried: anything else (a record the store cannot decode) ended the
    watcher for good, silently."""
    from proxy.policies.keys import watch

    keys, _, store = ring
    failures = iter([ValueError("corrupt record"), RuntimeError("bug")])
    real = store.keys_version

    async def flaky() -> int:
        err = next(failures, None)
        if err is not None:
            raise err
        return await real()

    store.keys_version = flaky
    task = asyncio.create_task(watch(lambda: keys))
    try:
        await asyncio.sleep(0.4)
        assert not task.done()
        assert time.monotonic() - keys._checked < 0.2
    finally:
        task.cancel()
