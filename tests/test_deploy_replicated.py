"""The replicated deployment example (deploy/replicated/) run locally: HAProxy from its haproxy.cfg in
front of three `flowgate serve` processes from its flowgate.yaml, on one real store (PostgreSQL or
Redis). A replica SIGKILLed mid-stream loses no charge (a survivor settles its run's hold from the
last checkpoint, once) and the other two keep serving through HAProxy.

The example's run cap and hold grace are shortened (3 s, 1 s; and a 10-token credit quantum, so the
run checkpoints often) in a copy of its flowgate.yaml, so the sweep comes within seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.store import open_store
from tests.backends import store_url as backend_url
from tests.conftest import free_port
from tests.test_replicas import serve_upstream

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "replicated"
SECRET = "fg_deploy_example_secret_1"
INITIAL = 100_000


def example_config(tmp_path: Path) -> Path:
    text = (EXAMPLE / "flowgate.yaml").read_text()
    for old, new in [("max_duration_s: 300", "max_duration_s: 3"), ("hold_grace_s: 30", "hold_grace_s: 1"),
                     ("limits:\n", "limits:\n  credit_quantum_tokens: 10\n")]:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "flowgate.yaml"
    path.write_text(text)
    return path


def langflow_frame(chunk: str) -> bytes:
    return json.dumps({"event": "token", "data": {"chunk": chunk}}).encode() + b"\n\n"


async def wait_until(check, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except (aiohttp.ClientError, OSError):
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(what)


def start_example(config: Path, env: dict, ports: list[int], logs: Path) -> dict[str, subprocess.Popen]:
    """The three replicas (ports[1:]) and HAProxy (ports[0]), as deploy/replicated/README.md starts them."""
    procs = {}
    for i, port in enumerate(ports[1:], start=1):
        procs[f"fg{i}"] = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config)], cwd=ROOT,
            env={**env, "FLOWGATE_PORT": str(port)}, stdout=subprocess.DEVNULL,
            stderr=(logs / f"fg{i}.log").open("wb"))
    haproxy_env = {**env, "FLOWGATE_LISTEN": f"127.0.0.1:{ports[0]}",
                   **{f"FLOWGATE_{i}": f"127.0.0.1:{ports[i]}" for i in (1, 2, 3)}}
    procs["haproxy"] = subprocess.Popen(["haproxy", "-db", "-f", str(EXAMPLE / "haproxy.cfg")], env=haproxy_env,
                                        stdout=subprocess.DEVNULL, stderr=(logs / "haproxy.log").open("wb"))
    return procs


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (Debian's package)")
@pytest.mark.parametrize("kind", ["postgres", "redis"])
async def test_the_replicated_example_loses_no_charge_when_a_replica_dies_mid_stream(tmp_path, kind):
    sent = asyncio.Event()
    slow = {"on": True}

    async def langflow(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if not slow["on"]:  # after the kill: short runs
            for _ in range(5):
                await resp.write(langflow_frame("abcd"))
            await resp.write(json.dumps({"event": "end", "data": {"result": {}}}).encode() + b"\n\n")
            await resp.write_eof()
            return resp
        for i in range(10_000):
            await resp.write(langflow_frame("abcd"))  # one token
            if i == 49:
                sent.set()
            await asyncio.sleep(0.02)
        return resp

    runner, upstream_url = await serve_upstream(langflow)
    config = example_config(tmp_path)
    ports = [free_port() for _ in range(4)]
    procs: dict[str, subprocess.Popen] = {}
    with backend_url(kind, tmp_path) as store_url:
        env = {**os.environ, "FLOWGATE_STORE": store_url, "LANGFLOW_URL": upstream_url,
               "FLOWGATE_KEY_SHA256": hashlib.sha256(SECRET.encode()).hexdigest()}
        try:
            procs.update(start_example(config, env, ports, tmp_path))
            front = f"http://127.0.0.1:{ports[0]}"
            key = {"x-api-key": SECRET}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
                async def all_three_serve() -> bool:
                    seen = set()
                    for _ in range(12):
                        async with s.get(f"{front}/readyz") as r:
                            if r.status != 200:
                                return False
                            seen.add(r.headers.get("x-flowgate-replica"))
                    return seen == {"fg1", "fg2", "fg3"}

                await wait_until(all_three_serve, 30, "HAProxy did not see three ready replicas")

                async def token() -> str:
                    async with s.get(f"{front}/api/v1/token", headers=key) as r:
                        assert r.status == 200, await r.text()
                        return (await r.json())["token"]

                received = 0
                async with s.post(f"{front}/api/v1/run/wf_tutor/stream?token={await token()}") as resp:
                    assert resp.status == 200
                    job_id, victim = resp.headers["flow-job-id"], resp.headers["x-flowgate-replica"]
                    await sent.wait()
                    await asyncio.sleep(0.3)  # the quantum checkpoints land
                    received = len(await resp.content.read(1 << 20))
                    procs[victim].send_signal(signal.SIGKILL)
                    procs[victim].wait()
                    with pytest.raises((aiohttp.ClientError, asyncio.IncompleteReadError)):
                        while await resp.content.read(1 << 16):
                            pass
                        raise aiohttp.ClientPayloadError("the stream ended cleanly")  # it must break
                assert received > 0
                slow["on"] = False

                # the two others keep serving: every new run through HAProxy completes (ten at once,
                # so that leastconn spreads them)
                async def one_run() -> str:
                    async with s.post(f"{front}/api/v1/run/wf_tutor/stream?token={await token()}") as r:
                        body = await r.read()
                        assert r.status == 200 and body.count(b"abcd") == 5, (r.status, body[:200])
                        return r.headers["x-flowgate-replica"]

                served = await asyncio.gather(*(one_run() for _ in range(10)))
                assert victim not in served, served

            store = open_store(store_url)
            await store.start()
            try:
                async def settled() -> bool:
                    return any(e["job_id"] == job_id for e in await store.ledger("acme"))

                await wait_until(settled, 30, "no survivor settled the dead replica's run")  # cap 3 s + 1 s + sweep 5 s
                await asyncio.sleep(6)  # another sweep round settles nothing twice
                ledger = await store.ledger("acme")
                acct = await store.get_account("acme")
            finally:
                await store.close()
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            await runner.cleanup()

    entries = [e for e in ledger if e["job_id"] == job_id]
    spent = sum(e["credits"] for e in ledger)
    print(f"\nFIGURES deploy/replicated on {kind}: {victim} killed mid-stream; its run settled once by a survivor "
          f"({entries[0]['credits']} credits, outcome {entries[0]['outcome']}); 10/10 later runs served by "
          f"{sorted(set(served))}; balance {acct.balance} = {INITIAL} - {spent}; held {acct.held}")
    assert len(entries) == 1
    assert entries[0]["credits"] >= 40  # at least the checkpointed quanta of the 50+ tokens streamed
    assert len({e["job_id"] for e in ledger}) == len(ledger) == 11
    assert acct.held == 0 and acct.spent == spent and acct.balance == INITIAL - spent
