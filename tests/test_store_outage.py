"""A store that goes down: token and run routes fail closed (503) fast, and recover on their own.

Uses a throwaway redis-server on its own port (never the shared one)."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from proxy.context import GATEWAY
from tests.conftest import SECRET, base_config, free_port, start_redis, stream_chunks


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
async def test_store_down_answers_503_fast_and_recovers(upstream, gateway):
    async def text(request, seen):
        return await stream_chunks(request, ["hi"])

    upstream.handle("/text", text)
    port = free_port()
    proc = start_redis(port)
    try:
        client = await gateway(base_config(upstream.url, store=f"redis://127.0.0.1:{port}/0"))
        resp = await client.get("/api/v1/token", headers={"x-api-key": SECRET})
        assert resp.status == 200
        token = (await resp.json())["token"]

        proc.terminate()
        proc.wait(10)
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

        proc = start_redis(port)
        for _ in range(50):  # recovers without a gateway restart
            if (await client.get("/readyz")).status == 200:
                break
            await asyncio.sleep(0.1)
        # this throwaway Redis keeps nothing on disk: its accounts are gone, so top one up again
        await client.app[GATEWAY].store.grant("acme", 1000)
        resp = await client.get("/api/v1/token", headers={"x-api-key": SECRET})
        assert resp.status == 200
        resp = await client.post(f"/api/v1/run/wf_text/stream?token={(await resp.json())['token']}")
        assert resp.status == 200 and await resp.text() == "hi"
    finally:
        proc.kill()
        proc.wait()
