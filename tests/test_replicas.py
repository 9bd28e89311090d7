"""Several gateway processes sharing one store (SQLite file, Redis, Redis Cluster, PostgreSQL): what
must hold across replicas (three gateways on the cluster, two on the others).

Each test starts real `flowgate serve` processes on free ports in front of a fake upstream served
by the test itself, and talks to them over real sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from proxy.store import open_store
from tests.conftest import SECRET, base_config, free_port, redis_url

ROOT = Path(__file__).resolve().parent.parent



class Replica:
    def __init__(self, cfg: dict, tmp: Path, name: str) -> None:
        self.port = free_port()
        # one process per replica: these tests count replicas (workers share the store as replicas
        # do: tests/front/test_supervisor.py)
        cfg = {**cfg, "server": {**cfg.get("server", {}), "port": self.port, "access_log": False, "workers": 1}}
        self.path = tmp / f"{name}.yaml"
        self.path.write_text(yaml.safe_dump(cfg))
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(self.path)],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode())
            try:
                async with session.get(self.url + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise TimeoutError("replica did not become ready")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
async def replicas(tmp_path, store_url):
    started: list[Replica] = []

    async def start(cfg: dict, n: int | None = None) -> list[Replica]:
        # three gateways on the 3-master Redis Cluster, two on the others
        n = n if n is not None else (3 if store_url.startswith("redis+cluster://") else 2)
        cfg = {**cfg, "store": store_url}
        reps = [Replica(cfg, tmp_path, f"r{i}") for i in range(n)]
        started.extend(reps)
        async with aiohttp.ClientSession() as s:
            await asyncio.gather(*(r.ready(s) for r in reps))
        return reps

    yield start
    for r in started:
        r.stop()


def _kind(store_url: str) -> str:
    return store_url.split(":", 1)[0]


async def serve_upstream(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    return runner, f"http://127.0.0.1:{port}"


async def hundred_tokens(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse()
    await resp.prepare(request)
    for _ in range(10):
        await resp.write(b"abcd" * 10)
    await resp.write_eof()
    return resp


async def test_one_token_spent_by_1000_concurrent_requests_across_the_replicas(replicas, store_url):
    runner, url = await serve_upstream(hundred_tokens)
    try:
        reps = await replicas(base_config(url))
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:
            async with s.get(reps[0].url + "/api/v1/token", headers={"x-api-key": SECRET}) as resp:
                token = (await resp.json())["token"]

            async def spend(i: int) -> int:
                base = reps[i % len(reps)].url
                async with s.post(f"{base}/api/v1/run/wf_text/stream?token={token}") as resp:
                    await resp.read()
                    return resp.status

            statuses = await asyncio.gather(*(spend(i) for i in range(1000)))
        counts = {code: statuses.count(code) for code in set(statuses)}
        print(f"\nFIGURES one token, 1000 concurrent spends over {len(reps)} gateways on {_kind(store_url)}: "
              f"{dict(sorted(counts.items()))}")
        assert counts == {200: 1, 401: 999}
    finally:
        await runner.cleanup()


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120))


async def _run(s: aiohttp.ClientSession, reps: tuple[Replica, ...], i: int) -> tuple[int, bytes]:
    """One non-streaming run of wf_text on replica ``i`` mod the number of replicas."""
    async with s.post(f"{reps[i % len(reps)].url}/api/v1/run/wf_text", headers={"x-api-key": SECRET}) as resp:
        return resp.status, await resp.read()


@pytest.mark.parametrize("mode", ["cut", "allow"])
async def test_200_concurrent_runs_never_overspend(replicas, store_url, mode):
    runner, url = await serve_upstream(hundred_tokens)
    quantum = 100
    try:
        cfg = base_config(url)
        cfg["accounts"]["acme"]["initial_credits"] = 5000
        cfg["limits"] = {"credit_quantum_tokens": quantum}
        cfg["flows"][0]["on_credits_exhausted"] = mode
        reps = tuple(await replicas(cfg))
        async with _session() as s:
            statuses = [status for status, _ in await asyncio.gather(*(_run(s, reps, i) for i in range(200)))]
            assert set(statuses) <= {200, 402}
            after, _ = await _run(s, reps[:1], 0)
        store = open_store(store_url)
        await store.start()
        try:
            deadline = time.monotonic() + 10
            while True:
                acct = await store.get_account("acme")
                if acct.held == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            ledger = await store.ledger("acme")
        finally:
            await store.close()
        spent = sum(e["credits"] for e in ledger)
        print(f"\nFIGURES 200 concurrent metered runs ({mode}) over {len(reps)} gateways on {_kind(store_url)}: "
              f"{statuses.count(200)} x 200, {statuses.count(402)} x 402; balance {acct.balance} = 5000 - ledger sum "
              f"{spent} ({len(ledger)} entries); held {acct.held}")
        assert acct.held == 0
        assert acct.balance == 5000 - spent
        assert len({e["job_id"] for e in ledger}) == len(ledger)
        assert len(ledger) >= statuses.count(200)
        if mode == "cut":
            assert acct.balance >= 0
        else:
            assert acct.balance >= -(200 * quantum)
        if acct.balance <= 0:
            assert after == 402
    finally:
        await runner.cleanup()


async def test_holds_sized_from_recent_runs_strand_no_credits(replicas, store_url):
    """5,000 credits, runs of 100 tokens: after 5 warm-up runs, 200 arrive at once over two replicas.
    Their first holds are what recent runs used (not a 1,000-token quantum each), so at least 40
    complete, at most 500 credits are left unspent, and the books balance with nothing held."""
    async def slow_hundred(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse()
        await resp.prepare(request)
        await asyncio.sleep(0.5)  # every run of the burst is admitted while the others still hold
        for _ in range(10):
            await resp.write(b"abcd" * 10)
        await resp.write_eof()
        return resp

    runner, url = await serve_upstream(slow_hundred)
    try:
        cfg = base_config(url)
        cfg["accounts"]["acme"]["initial_credits"] = 5000
        reps = tuple(await replicas(cfg))
        async with _session() as s:
            assert [(await _run(s, reps, i))[0] for i in range(5)] == [200] * 5
            results = await asyncio.gather(*(_run(s, reps, i) for i in range(200)))
        statuses = [status for status, _ in results]
        assert set(statuses) <= {200, 402}
        assert all(len(json.loads(body)["result"]) == 400 for status, body in results if status == 200)
        store = open_store(store_url)
        await store.start()
        try:
            acct = await store.get_account("acme")
            ledger = await store.ledger("acme")
        finally:
            await store.close()
        spent = sum(e["credits"] for e in ledger)
        assert statuses.count(200) >= 40, statuses.count(200)
        assert len(ledger) == 5 + statuses.count(200)
        assert all(e["credits"] == 100 and e["outcome"] == "completed" for e in ledger)
        assert acct.held == 0 and 0 <= acct.balance <= 500 and acct.balance == 5000 - spent
    finally:
        await runner.cleanup()


async def test_a_killed_replica_hold_is_settled_once_by_another(replicas, store_url):
    sent = asyncio.Event()

    async def slow_forever(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(10_000):
            await resp.write(b"abcd")
            if i == 49:
                sent.set()
            await asyncio.sleep(0.02)
        return resp

    runner, url = await serve_upstream(slow_forever)
    try:
        cfg = base_config(url)
        cfg["limits"] = {"credit_quantum_tokens": 10, "hold_grace_s": 1}
        cfg["flows"][0]["max_duration_s"] = 3
        r1, r2 = (await replicas(cfg))[:2]
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{r1.url}/api/v1/run/wf_text/stream?token="
                              + (await (await s.get(r1.url + "/api/v1/token",
                                                    headers={"x-api-key": SECRET})).json())["token"]) as resp:
                job_id = resp.headers["flow-job-id"]
                await sent.wait()
                await asyncio.sleep(0.3)  # let the quantum checkpoints land
                r1.stop(signal.SIGKILL)
        store = open_store(store_url)
        await store.start()
        try:
            deadline = time.monotonic() + 30  # cap 3 s + grace 1 s + sweep interval 5 s
            entries = []
            while time.monotonic() < deadline:
                entries = [e for e in await store.ledger("acme") if e["job_id"] == job_id]
                if entries:
                    break
                await asyncio.sleep(0.25)
            await asyncio.sleep(6)  # another sweep round must not settle it twice
            entries = [e for e in await store.ledger("acme") if e["job_id"] == job_id]
            acct = await store.get_account("acme")
        finally:
            await store.close()
        assert len(entries) == 1
        assert entries[0]["credits"] >= 40  # at least the checkpointed quanta of the 50+ tokens sent
        assert acct.held == 0
    finally:
        await runner.cleanup()


def test_redis_env_is_reachable_when_required():
    if os.environ.get("REQUIRE_REDIS") == "1":
        import redis

        assert redis.Redis.from_url(redis_url()).ping()
