"""Per-key rate limits: requests per minute (mints + runs) and concurrent runs, with 429 headers."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.conftest import SECRET, base_config, stream_chunks


async def test_requests_per_minute_counts_mints_and_runs(upstream, gateway):
    async def text(request, seen):
        return await stream_chunks(request, ["hi"])

    upstream.handle("/text", text)
    cfg = base_config(upstream.url)
    cfg["keys"][0]["rate_limit"] = {"requests_per_minute": 3}
    client = await gateway(cfg)
    resp = await client.get("/api/v1/token", headers={"x-api-key": SECRET})
    assert resp.status == 200
    assert resp.headers["x-ratelimit-limit"] == "3" and resp.headers["x-ratelimit-remaining"] == "2"
    resp = await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})
    assert resp.status == 200 and resp.headers["x-ratelimit-remaining"] == "1"
    resp = await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})
    assert resp.status == 200 and resp.headers["x-ratelimit-remaining"] == "0"
    resp = await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})
    assert resp.status == 429
    assert (await resp.json())["code"] == "rate_limited"
    assert resp.headers["x-ratelimit-limit"] == "3" and resp.headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    resp = await client.get("/api/v1/token", headers={"x-api-key": SECRET})
    assert resp.status == 429
    resp = await client.post("/api/v1/tenants/t1/workspaces/w1/flows/wf_text/run", headers={"x-api-key": SECRET})
    assert resp.status == 429
    assert resp.headers["Content-Type"].startswith("application/problem+json")


async def test_concurrent_runs_limit_and_release(upstream, gateway):
    release = asyncio.Event()

    async def slow(request, seen):
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"a")
        await release.wait()
        await resp.write_eof()
        return resp

    upstream.handle("/text", slow)
    cfg = base_config(upstream.url)
    cfg["keys"][0]["rate_limit"] = {"concurrent_runs": 1}
    client = await gateway(cfg)
    path = "/api/v1/tenants/t1/workspaces/w1/flows/wf_text/run-streaming"
    first = await client.post(path, headers={"x-api-key": SECRET})
    assert first.status == 200
    second = await client.post(path, headers={"x-api-key": SECRET})
    assert second.status == 429 and "Retry-After" in second.headers
    release.set()
    await first.read()
    third = await client.post(path, headers={"x-api-key": SECRET})
    assert third.status == 200
    await third.read()
