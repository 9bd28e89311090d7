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


async def test_a_checkpoint_batch_on_one_redis_is_one_connection_and_one_pipeline(tmp_path):
    """A batch of any size takes one connection of the pool (a pipeline), not one per hold: 300
    holds' scripts sent at once would take the whole pool from the runs' own store calls."""
    from proxy.store import Progress
    from tests.backends import store_url as backend_url

    far = time.time() + 3600
    with backend_url("redis", tmp_path) as url:
        store = open_store(url)
        await store.start()
        try:
            accounts = [f"acct{i}" for i in range(3)]
            for account in accounts:
                await store.seed_account(account, 10**6)
            jobs = [(f"job{i}", accounts[i % 3]) for i in range(300)]
            for job, account in jobs:
                await store.open_hold(job, account, 10, far, {})
            pool = store.inner._r.connection_pool
            taken = []
            real = pool.get_connection

            async def get_connection(*args, **kwargs):
                taken.append(1)
                return await real(*args, **kwargs)

            pool.get_connection = get_connection
            await store.checkpoint([Progress(job, account, 7, 2, 7, far) for job, account in jobs])
            assert 1 <= len(taken) <= 2  # the script's check, then the batch
            held = {}
            for account in accounts:
                held.update({h.job_id: (h.metered, h.output_tokens)
                             for h in await store.expired_holds([account], now=far + 10**6, limit=1000)})
            assert held == {job: (7, 7) for job, _ in jobs}
        finally:
            await store.close()


async def test_a_checkpoint_batch_that_fails_gives_its_connection_back():
    """Redis stalls while batches are on their way (each fails on its timeout, its script check
    included): every connection goes back to the pool, and the store answers once Redis does."""
    import asyncio
    import uuid

    from proxy.errors import StoreUnavailable
    from proxy.store import Progress
    from proxy.store.redis import POOL_SIZE, RedisStore

    flowing = asyncio.Event()  # cleared: Redis's replies stop on their way (a stalled Redis)
    flowing.set()

    async def pipe(reader, writer, replies: bool) -> None:
        try:
            while data := await reader.read(65536):
                if replies:
                    await flowing.wait()
                writer.write(data)
        except OSError:
            pass
        finally:
            writer.close()

    async def relay(client_reader, client_writer) -> None:
        redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", 6379)
        await asyncio.gather(pipe(client_reader, redis_writer, False), pipe(redis_reader, client_writer, True))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix="fgtest" + uuid.uuid4().hex[:8])
    pool = store._r.connection_pool
    far = time.time() + 3600
    try:
        await store.seed_account("acme", 1000)
        await store.open_hold("x", "acme", 10, far, {})
        flowing.clear()
        failed = await asyncio.gather(*(store.checkpoint([Progress("x", "acme", i, 1, i, far)])
                                        for i in range(POOL_SIZE + 4)), return_exceptions=True)
        assert all(isinstance(outcome, StoreUnavailable) for outcome in failed)
        flowing.set()
        assert len(pool._in_use_connections) == 0
        await store.ping()  # (the pool was used up for good before: every call after failed)
        await store.checkpoint([Progress("x", "acme", 99, 1, 99, far)])
        held = {h.job_id: h.metered for h in await store.expired_holds(["acme"], now=far + 10**6)}
        assert held == {"x": 99}
    finally:
        await store.close()
        server.close()


async def test_a_checkpoint_batch_returns_only_once_every_script_answered(tmp_path):
    """Redis Cluster (one script per hold, on their masters): one hold's script fails at once,
    another's is slow; the batch must not return (and let the next batch go) while the slow one is
    still on its way, or an older count lands after a newer. (On one Redis a batch is one pipeline,
    answered whole.)"""
    kind = "redis-cluster"
    import asyncio

    import redis.exceptions

    from proxy.policies.checkpoints import Checkpoints
    from proxy.store import Progress
    from tests.backends import store_url as backend_url

    far = time.time() + 3600
    with backend_url(kind, tmp_path) as url:
        store = open_store(url)
        await store.start()
        try:
            await store.seed_account("acme", 1000)
            await store.seed_account("beta", 1000)
            await store.open_hold("x", "acme", 10, far, {})
            await store.open_hold("y", "beta", 10, far, {})
            real = store.inner._checkpoint
            refused = asyncio.Event()

            def script(keys, args):
                async def run():
                    if args[0] == "y" and not refused.is_set():  # this hold's node refuses at once, the first time
                        refused.set()
                        raise redis.exceptions.ConnectionError("Connection refused")
                    if args[0] == "x" and args[1] == 1:  # this one takes its time (a re-sent script)
                        await asyncio.sleep(0.5)
                    return await real(keys=keys, args=args)
                return run()

            store.inner._checkpoint = script
            batcher = Checkpoints(store)
            batcher.add(Progress("x", "acme", 1, 1, 1, far))
            batcher.add(Progress("y", "beta", 1, 1, 1, far))
            await refused.wait()  # batch 1 went: y refused, x = 1 on its way
            batcher.add(Progress("x", "acme", 2, 1, 2, far))  # before the refused batch is tried again
            await batcher.flush()
            await asyncio.sleep(0.6)
            held = {h.job_id: h.metered for h in await store.expired_holds(["acme"], now=far + 10**6)}
            assert held["x"] == 2, "the hold went back to an older count"
        finally:
            await store.close()
