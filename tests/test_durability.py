"""Durability: a Redis that persists (``appendonly yes``) killed and restarted under load keeps every
settled charge, and the books balance afterwards.

Two real gateway processes share a throwaway redis-server with an append-only file (never the shared
Redis); clients keep runs going while it is SIGKILLed and, a second later, started again on the same
directory (it replays its AOF). The runs caught by the outage are refused (503) or settled later
from their checkpoints by a sweep; none is charged twice, none is lost.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import aiohttp
from aiohttp import web

from proxy.errors import StoreUnavailable
from proxy.store import open_store
from tests.conftest import SECRET, base_config, free_port
from tests.test_replicas import Replica, serve_upstream

INITIAL = 100_000


def start_aof_redis(port: int, directory) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                             "--maxmemory-policy", "noeviction"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_connect_timeout=0.2).ping():
                return proc
        except redis.exceptions.BusyLoadingError:
            pass  # replaying its AOF
        except redis.RedisError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server with AOF did not start")


async def slow_forty(request: web.Request) -> web.StreamResponse:
    """40 tokens over about a second, in ten chunks."""
    await request.read()
    resp = web.StreamResponse()
    await resp.prepare(request)
    for _ in range(10):
        await resp.write(b"abcd" * 4)
        await asyncio.sleep(0.1)
    await resp.write_eof()
    return resp


async def test_an_aof_redis_killed_mid_run_keeps_every_charge_and_the_books_balance(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_proc = start_aof_redis(port, tmp_path)
    runner, upstream_url = await serve_upstream(slow_forty)
    cfg = base_config(upstream_url, store=url)
    cfg["accounts"]["acme"]["initial_credits"] = INITIAL
    cfg["limits"] = {"credit_quantum_tokens": 10, "hold_grace_s": 1}
    cfg["flows"][0]["max_duration_s"] = 3
    reps = [Replica(cfg, tmp_path, f"d{i}") for i in range(2)]
    store = open_store(url)
    results: list[tuple[int, str | None, float]] = []  # (status, job id, when it ended)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            await asyncio.gather(*(r.ready(s) for r in reps))
            stop_at = time.monotonic() + 5.0

            async def worker(i: int) -> None:
                while time.monotonic() < stop_at:
                    try:
                        async with s.post(f"{reps[i % 2].url}/api/v1/run/wf_text",
                                          headers={"x-api-key": SECRET}) as resp:
                            await resp.read()
                            results.append((resp.status, resp.headers.get("flow-job-id"), time.monotonic()))
                            if resp.status == 503:
                                await asyncio.sleep(0.1)
                    except aiohttp.ClientError:
                        results.append((0, None, time.monotonic()))

            load = [asyncio.ensure_future(worker(i)) for i in range(16)]
            await asyncio.sleep(1.5)
            await store.start()
            before = {e["job_id"]: e["credits"] for e in await store.ledger("acme")}
            redis_proc.kill()  # mid-run: runs in flight lose their store
            redis_proc.wait()
            await asyncio.sleep(1.0)
            redis_proc = start_aof_redis(port, tmp_path)  # replays its append-only file
            restarted = time.monotonic()
            await asyncio.gather(*load)

        deadline = time.monotonic() + 30  # held runs expire (cap 3 s + grace 1 s) and are swept (every 5 s)
        while True:
            try:  # (this client's connections died with the first server: its first call may fail)
                acct = await store.get_account("acme")
            except StoreUnavailable:
                await asyncio.sleep(0.1)
                continue
            if acct.held == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        ledger = await store.ledger("acme")
    finally:
        for r in reps:
            r.stop()
        logs = b"".join(r.proc.stderr.read() for r in reps).decode(errors="replace")
        await store.close()
        await runner.cleanup()
        redis_proc.kill()
        redis_proc.wait()

    statuses = [status for status, _, _ in results]
    by_job = {}
    for e in ledger:
        by_job.setdefault(e["job_id"], []).append(e)
    spent = sum(e["credits"] for e in ledger)
    print(f"\nFIGURES AOF Redis killed mid-run: {len(before)} ledger entries before the kill, {len(ledger)} after; "
          f"runs {statuses.count(200)} x 200, {statuses.count(503)} x 503 (refused while it was down), "
          f"{statuses.count(500)} x 500 (cut: the store could not vouch for more credit), "
          f"{statuses.count(0)} reset, {logs.count('settle_deferred')} settlements deferred; "
          f"balance {acct.balance} = {INITIAL} - {spent}; held {acct.held}")
    assert before, "no run had settled before the kill"
    assert statuses.count(503) > 0, "the outage refused nothing: was the store killed?"
    assert set(statuses) <= {0, 200, 500, 503}
    assert any(status == 200 and at > restarted for status, _, at in results), "nothing ran after the restart"
    # every charge settled before the kill survived it, unchanged
    for job_id, credits in before.items():
        assert [e["credits"] for e in by_job.get(job_id, [])] == [credits], job_id
    # each job charged once; every completed run is in the ledger; the books balance; nothing held
    assert all(len(entries) == 1 for entries in by_job.values())
    assert all(job_id in by_job for status, job_id, _ in results if status == 200)
    # the runs the outage cut (their settlement deferred) were settled later, from their checkpoints
    deferred = [json.loads(line)["job_id"] for line in logs.splitlines() if '"settle_deferred"' in line]
    assert all(job_id in by_job for job_id in deferred), deferred
    assert acct.held == 0
    assert acct.spent == spent
    assert acct.balance == INITIAL - spent
