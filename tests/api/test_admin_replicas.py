"""The admin API across two `flowgate serve` processes on one store (a SQLite file, Redis): a key
made on one works on the other at once, a revoked key is refused by the other within a second, an
expiring key stops at its expiry, credits granted on one are seen by the other."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.api.test_admin import ADMIN_SECRET, admin_config
from tests.conftest import SECRET
from tests.test_replicas import hundred_tokens, replicas, serve_upstream  # noqa: F401 - the fixture

ADMIN = {"Authorization": f"Bearer {ADMIN_SECRET}"}


async def _run(s: aiohttp.ClientSession, base: str, secret: str) -> int:
    async with s.post(f"{base}/api/v1/run/wf_text", headers={"x-api-key": secret}) as resp:
        await resp.read()
        return resp.status


async def test_keys_made_and_revoked_on_one_replica_hold_on_the_other(replicas, capsys):  # noqa: F811
    runner, url = await serve_upstream(hundred_tokens)
    try:
        r1, r2, *_ = await replicas(admin_config(url))  # (three on a cluster)
        async with aiohttp.ClientSession() as s:
            # warm both replicas' copies of the (empty) store keys, as a running gateway has them
            assert await _run(s, r2.url, SECRET) == 200
            async with s.post(f"{r1.url}/admin/v1/keys", headers=ADMIN, json={"owner": "acme"}) as resp:
                assert resp.status == 201
                made = await resp.json()
            # made on r1, runs a flow on r2 at once (no wait)
            assert await _run(s, r2.url, made["secret"]) == 200
            # no listing shows a secret
            for rep in (r1, r2):
                async with s.get(f"{rep.url}/admin/v1/keys", headers=ADMIN) as resp:
                    raw = await resp.read()
                    assert made["secret"].encode() not in raw and b"sha256" not in raw
            # revoked on r1: r2 answers 401 within a second
            async with s.delete(f"{r1.url}/admin/v1/keys/{made['id']}", headers=ADMIN) as resp:
                assert resp.status == 204
            revoked_at = time.monotonic()
            while (status := await _run(s, r2.url, made["secret"])) == 200:
                assert time.monotonic() - revoked_at < 1.0, "r2 still honours the revoked key after 1 s"
                await asyncio.sleep(0.01)
            refused_after = time.monotonic() - revoked_at
            assert status == 401
            assert await _run(s, r1.url, made["secret"]) == 401
            # an expiring key: works, then 401 after its expiry, on both
            async with s.post(f"{r1.url}/admin/v1/keys", headers=ADMIN,
                              json={"owner": "acme", "expires_in_s": 2}) as resp:
                short = await resp.json()
            assert await _run(s, r2.url, short["secret"]) == 200
            await asyncio.sleep(3)
            assert await _run(s, r1.url, short["secret"]) == 401
            assert await _run(s, r2.url, short["secret"]) == 401
            # credits granted through one replica's API are the other's figures
            async with s.get(f"{r2.url}/admin/v1/accounts/acme", headers=ADMIN) as resp:
                before = (await resp.json())["balance"]
            async with s.post(f"{r1.url}/admin/v1/accounts/acme/credits", headers=ADMIN, json={"amount": 1234}) as r:
                assert r.status == 200 and (await r.json())["balance"] == before + 1234
            async with s.get(f"{r2.url}/admin/v1/accounts/acme", headers=ADMIN) as resp:
                assert (await resp.json())["balance"] == before + 1234
            # an Execute key on the admin routes: 403; no key: 401
            async with s.get(f"{r2.url}/admin/v1/keys", headers={"x-api-key": SECRET}) as resp:
                assert resp.status == 403
            async with s.get(f"{r2.url}/admin/v1/keys") as resp:
                assert resp.status == 401
        with capsys.disabled():
            print(f"\n[must-show] revoked on replica 1 -> 401 on replica 2 after {refused_after * 1000:.0f} ms")
    finally:
        await runner.cleanup()


async def test_a_flood_of_unknown_keys_shares_store_reads(replicas):  # noqa: F811
    """Every unknown secret re-checks the store's key version (a key made elsewhere a moment ago
    must work at once), but concurrent checks share one read: 500 bad keys at once are all 401."""
    runner, url = await serve_upstream(hundred_tokens)
    try:
        (r1,) = await replicas(admin_config(url), n=1)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            statuses = await asyncio.gather(*(_run(s, r1.url, f"fg_bad_{i}") for i in range(500)))
            assert set(statuses) == {401}
            assert await _run(s, r1.url, SECRET) == 200
    finally:
        await runner.cleanup()


async def test_the_admin_api_on_its_own_port(tmp_path):
    """server.admin_port: /admin/v1 is served there only (the public listener answers 404), with its
    own /openapi.json; the keys it makes work on the public listener at once."""
    from tests.conftest import free_port
    from tests.test_replicas import Replica

    runner, url = await serve_upstream(hundred_tokens)
    admin_port = free_port()
    cfg = admin_config(url, store=f"sqlite:///{tmp_path / 'fg.db'}")
    cfg["server"] = {"admin_port": admin_port, "admin_host": "127.0.0.1"}
    rep = Replica(cfg, tmp_path, "admin")
    public, admin = rep.url, f"http://127.0.0.1:{admin_port}"
    try:
        async with aiohttp.ClientSession() as s:
            await rep.ready(s)
            async with s.get(public + "/admin/v1/keys", headers=ADMIN) as resp:
                assert resp.status == 404
            async with s.post(admin + "/admin/v1/keys", headers=ADMIN, json={"owner": "acme"}) as resp:
                assert resp.status == 201
                made = await resp.json()
            assert await _run(s, public, made["secret"]) == 200
            async with s.get(admin + "/openapi.json") as resp:
                assert "/admin/v1/keys" in (await resp.json())["paths"]
            async with s.get(public + "/openapi.json") as resp:
                paths = (await resp.json())["paths"]
                assert "/admin/v1/keys" not in paths and "/api/v1/token" in paths
    finally:
        rep.stop()
        await runner.cleanup()


async def test_a_key_revoked_through_one_worker_is_refused_by_every_worker_within_a_second(upstream, tmp_path):
    """One `flowgate serve` with two workers (each its own KeyRing): made through one, it runs on
    both at once; revoked through one, both answer 401 within a second; each connection is new, so
    the kernel spreads them over the workers (SO_REUSEPORT), and the access lines say both answered."""
    from tests.conftest import stream_chunks
    from tests.front.served import Served, served_config

    async def text(request, seen):
        return await stream_chunks(request, ["hello ", "world"])

    upstream.handle("/text", text)
    cfg = served_config(upstream.url, tmp_path)
    cfg["keys"] = admin_config(upstream.url)["keys"]
    server = await Served(tmp_path, cfg).start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            async with s.post(f"{server.url}/admin/v1/keys", headers=ADMIN, json={"owner": "acme"}) as resp:
                made = await resp.json()
            assert [await _run(s, server.url, made["secret"]) for _ in range(20)] == [200] * 20
            async with s.delete(f"{server.url}/admin/v1/keys/{made['id']}", headers=ADMIN) as resp:
                assert resp.status == 204
            revoked_at = time.monotonic()
            await asyncio.sleep(1.0)
            mark = len(server.events("access"))
            assert [await _run(s, server.url, made["secret"]) for _ in range(20)] == [401] * 20
            assert time.monotonic() - revoked_at < 3
        after = server.events("access")[mark:]
        assert len({line["worker"] for line in after if line.get("status") == 401}) == 2
    finally:
        await server.stop()
