"""Redis Cluster specifics: each account's keys in one slot, accounts spread over the masters, and a
slot moved to another master while the store is in use (MOVED and ASK redirections, followed by the
client) loses nothing."""

from __future__ import annotations

import asyncio
import subprocess
import time

from redis.crc import key_slot

from proxy.errors import StoreUnavailable
from proxy.store import Account, open_store
from proxy.store.redis_cluster import RedisClusterStore
from tests.backends import ThrowawayCluster, cluster_client, redis_cluster_url, require_redis_cluster

SLOT_0_ACCOUNT = "acct13493"  # fg:{a:acct13493} hashes to slot 0


def test_an_accounts_keys_share_a_slot_and_accounts_spread_over_the_masters():
    require_redis_cluster()
    store = RedisClusterStore(redis_cluster_url())
    assert len({key_slot(k.encode()) for k in store.account_keys("acme")}) == 1
    assert key_slot(store._acct(SLOT_0_ACCOUNT).encode()) == 0
    client = cluster_client()
    try:
        owners = {client.get_node_from_key(store._acct(f"acct{i}")).name for i in range(30)}
    finally:
        client.close()
    assert len(owners) == 3


def _node_ids(port: int) -> dict[int, tuple[str, bool]]:
    """port -> (node id, owns slot 0)."""
    out = subprocess.run(["redis-cli", "-p", str(port), "cluster", "nodes"], capture_output=True, text=True,
                         check=True).stdout
    nodes = {}
    for line in out.splitlines():
        fields = line.split()
        slots = fields[8:]
        nodes[int(fields[1].split(":")[1].split("@")[0])] = (fields[0], any(s.split("-")[0] == "0" for s in slots))
    return nodes


async def test_a_slot_moved_to_another_master_mid_use_loses_nothing(tmp_path):
    require_redis_cluster()
    cluster = ThrowawayCluster(tmp_path)
    cluster.start()
    store = open_store(cluster.url)
    try:
        await store.start()
        await store.seed_account(SLOT_0_ACCOUNT, 1000)
        assert await store.open_hold("j1", SLOT_0_ACCOUNT, 100, time.time() + 60, {"flow": "f"}) == 100
        nodes = _node_ids(cluster.ports[0])
        source = next(port for port, (_, owns) in nodes.items() if owns)
        target = next(port for port in nodes if port != source)
        granted = 0
        stop = asyncio.Event()

        async def keep_granting() -> None:  # redirected (ASK, then MOVED) while the slot moves
            nonlocal granted
            while not stop.is_set():
                await store.grant(SLOT_0_ACCOUNT, 1)
                granted += 1
                await asyncio.sleep(0.005)

        granting = asyncio.ensure_future(keep_granting())
        await asyncio.sleep(0.1)
        moved = await asyncio.to_thread(
            subprocess.run, ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{source}",
                             "--cluster-from", nodes[source][0], "--cluster-to", nodes[target][0],
                             "--cluster-slots", "1", "--cluster-yes"], capture_output=True, text=True, timeout=60)
        assert moved.returncode == 0, moved.stdout[-2000:] + moved.stderr
        await asyncio.sleep(0.1)
        stop.set()
        await granting
        assert _node_ids(cluster.ports[0])[target][1], "slot 0 did not move"
        settled = await store.settle("j1", SLOT_0_ACCOUNT, 40, {"outcome": "completed", "flow": "f",
                                                                 "output_tokens": 40})
        assert settled is not None and settled["credits"] == 40
        acct = await store.get_account(SLOT_0_ACCOUNT)
        assert granted > 0
        assert (acct.balance, acct.held, acct.spent) == (1000 + granted - 40, 0, 40)
        assert [e["job_id"] for e in await store.ledger(SLOT_0_ACCOUNT)] == ["j1"]
    finally:
        await store.close()
        cluster.stop()


async def test_a_master_killed_fails_over_to_its_replica_and_the_store_follows(tmp_path):
    """3 masters, each with a replica: SIGKILL the master of an account's slot; the replica is
    promoted, the client reads the new slot map, and the account is as it was (replicated)."""
    import os
    import signal

    import redis

    require_redis_cluster()
    cluster = ThrowawayCluster(tmp_path, replicas=1)
    cluster.start()
    store = open_store(cluster.url)
    try:
        await store.start()
        await store.seed_account(SLOT_0_ACCOUNT, 1000)
        assert await store.open_hold("j1", SLOT_0_ACCOUNT, 100, time.time() + 60, {"flow": "f"}) == 100
        master = next(port for port, (_, owns) in _node_ids(cluster.ports[0]).items() if owns)
        assert redis.Redis(port=master).execute_command("WAIT", 1, 2000) == 1  # the replica has it all
        victim = cluster.procs[cluster.ports.index(master)]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        began = time.monotonic()
        refused = 0
        while True:  # 503s while the cluster notices (node timeout 1 s) and promotes the replica
            try:
                acct = await store.get_account(SLOT_0_ACCOUNT)
                break
            except StoreUnavailable:
                refused += 1
                assert time.monotonic() - began < 20, "no failover"
                await asyncio.sleep(0.2)
        assert acct == Account(1000, 100, 0)
        settled = await store.settle("j1", SLOT_0_ACCOUNT, 30, {"outcome": "completed"})
        assert settled is not None and settled["credits"] == 30
        assert await store.get_account(SLOT_0_ACCOUNT) == Account(970, 0, 30)
        for _ in range(50):  # readyz: every master (the promoted replica now) answers
            try:
                await store.ping()
                break
            except StoreUnavailable:
                await asyncio.sleep(0.2)
        else:
            raise AssertionError("ping never recovered after the failover")
    finally:
        await store.close()
        cluster.stop()


async def test_a_dead_and_a_silent_seed_among_live_ones_are_passed_over():
    import socket

    require_redis_cluster()
    silent = socket.create_server(("127.0.0.1", 0), backlog=64)  # accepts, never answers
    refused = socket.create_server(("127.0.0.1", 0))
    dead = refused.getsockname()[1]
    refused.close()  # nothing listens there now
    live = redis_cluster_url().removeprefix("redis+cluster://")
    store = open_store(f"redis+cluster://127.0.0.1:{silent.getsockname()[1]},127.0.0.1:{dead},{live}")
    try:
        began = time.monotonic()
        await store.seed_account("acme", 5)
        assert (await store.get_account("acme")).balance == 5
        assert time.monotonic() - began < 3
    finally:
        await store.close()
        silent.close()


async def test_a_cluster_that_accepts_and_never_answers_is_a_bounded_503():
    """Thirty runs at once against seeds that never answer: each gets its 503 within a bound (not
    one after another, each waiting for the slot-map reads of those before it)."""
    import socket

    silent = [socket.create_server(("127.0.0.1", 0), backlog=64) for _ in range(3)]
    store = open_store("redis+cluster://" + ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in silent))
    try:
        began = time.monotonic()
        results = await asyncio.gather(*(store.get_account(f"a{i}") for i in range(30)), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert time.monotonic() - began < 6
    finally:
        await store.close()
        for s in silent:
            s.close()
