"""A store that goes down: token and run routes fail closed (503) fast, and recover on their own,
also when it comes back empty (no gateway restart needed).

Uses throwaway servers on ports of their own (never the shared ones): a redis-server, a 3-master
Redis Cluster, a PostgreSQL cluster made by initdb."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from proxy.context import GATEWAY
from proxy.store import Account
from tests.backends import ThrowawayCluster, ThrowawayPostgres
from tests.conftest import SECRET, base_config, free_port, start_redis, stream_chunks


class ThrowawayRedis:
    def __init__(self, directory) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> None:
        self.proc = start_redis(self.port)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


# each server, and whether it forgets its data when it goes down (then the account is re-created)
SERVERS = {"redis": (ThrowawayRedis, True), "redis-cluster": (ThrowawayCluster, True),
           "postgres": (ThrowawayPostgres, False)}


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
@pytest.mark.parametrize("kind", list(SERVERS))
async def test_store_down_answers_503_fast_and_recovers(upstream, gateway, capfd, tmp_path, kind):
    async def text(request, seen):
        return await stream_chunks(request, ["hi"])

    upstream.handle("/text", text)
    make, forgets = SERVERS[kind]
    server = make(tmp_path)
    server.start()
    try:
        client = await gateway(base_config(upstream.url, store=server.url))
        resp = await client.get("/api/v1/token", headers={"x-api-key": SECRET})
        assert resp.status == 200
        token = (await resp.json())["token"]

        server.stop()
        checks = [
            ("GET", "/api/v1/token", {"x-api-key": SECRET}),
            ("POST", f"/api/v1/run/wf_text/stream?token={token}", {}),
            ("POST", "/api/v1/run/wf_text", {"x-api-key": SECRET}),
            ("POST", "/api/v1/tenants/t1/workspaces/w1/flows/wf_text/run-streaming", {"x-api-key": SECRET}),
            ("POST", "/langflow/api/v1/run/wf_text?stream=true", {"x-api-key": SECRET}),
        ]
        for method, path, headers in checks:
            started = time.monotonic()
            resp = await client.request(method, path, headers=headers)
            elapsed = time.monotonic() - started
            assert resp.status == 503, (path, await resp.text())
            assert elapsed < 1.0, (path, elapsed)
        assert (await client.get("/readyz")).status == 503
        assert upstream.requests == []  # nothing admitted unchecked
        # the moment it went is logged once (not once per refused request)
        down = [line for line in capfd.readouterr().err.splitlines() if "store_unreachable" in line]
        assert len(down) == 1 and '"level":"warning"' in down[0]

        server.start()
        for _ in range(100):  # recovers without a gateway restart
            if (await client.get("/readyz")).status == 200:
                break
            await asyncio.sleep(0.1)
        # a server that keeps nothing on disk lost its accounts: the next admission re-creates the
        # account from initial_credits (as a gateway restart would), with one warning. PostgreSQL
        # recovered its data from its WAL: the account is as it was.
        assert "store_reachable" in capfd.readouterr().err  # and the moment it came back
        resp = await client.get("/api/v1/token", headers={"x-api-key": SECRET})
        assert resp.status == 200
        resp = await client.post(f"/api/v1/run/wf_text/stream?token={(await resp.json())['token']}")
        assert resp.status == 200 and await resp.text() == "hi"
        resp = await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})
        assert resp.status == 200
        seeded = [line for line in capfd.readouterr().err.splitlines() if "account_seeded" in line]
        if forgets:
            assert len(seeded) == 1 and '"account":"acme"' in seeded[0]
        else:
            assert seeded == []
        store = client.app[GATEWAY].store
        for _ in range(50):
            if len(await store.ledger("acme")) == 2:
                break
            await asyncio.sleep(0.05)
        acct = await store.get_account("acme")
        assert acct.held == 0 and acct.balance == 100000 - acct.spent and acct.spent == 2
    finally:
        server.stop()
        getattr(server, "remove", lambda: None)()


@pytest.mark.parametrize("loss", ["rows deleted", "tables dropped"])
async def test_an_emptied_sqlite_database_admits_runs_again_without_a_restart(upstream, gateway, tmp_path, loss):
    import sqlite3

    async def text(request, seen):
        return await stream_chunks(request, ["abcd" * 10])

    upstream.handle("/text", text)
    path = tmp_path / "fg.db"
    client = await gateway(base_config(upstream.url, store=f"sqlite:///{path}"))
    assert (await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})).status == 200
    other = sqlite3.connect(path, isolation_level=None)  # someone else empties the file under the gateway
    tables = [r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        other.execute(f"DELETE FROM {table}" if loss == "rows deleted" else f"DROP TABLE {table}")
    other.close()
    token = await client.get("/api/v1/token", headers={"x-api-key": SECRET})
    assert token.status == 200
    resp = await client.post(f"/api/v1/run/wf_text/stream?token={(await token.json())['token']}")
    assert resp.status == 200 and await resp.text() == "abcd" * 10
    store = client.app[GATEWAY].store
    for _ in range(50):
        if await store.ledger("acme"):
            break
        await asyncio.sleep(0.05)
    assert await store.get_account("acme") == Account(100000 - 10, 0, 10)
