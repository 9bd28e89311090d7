"""Forwarding: what the backend receives (never the client's key), and backend failures."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.conftest import SECRET, base_config, free_port, stream_chunks

PB = "/api/v1/tenants/t1/workspaces/w1/flows/wf_text/run-streaming"


async def ok(request, seen):
    return await stream_chunks(request, ["ok"])


async def test_backend_gets_its_headers_and_never_the_client_key(upstream, gateway):
    upstream.handle("/text", ok)
    client = await gateway(base_config(upstream.url))
    for headers, path in [({"x-api-key": SECRET}, PB), ({}, PB + f"?api_key={SECRET}&env=Production")]:
        resp = await client.post(path, data=b"body", headers={
            **headers, "Connection": "keep-alive, X-Private", "X-Private": "hop", "Cookie": "sid=1",
            "Content-Type": "application/json", "X-Trace": "t1"})
        assert resp.status == 200
        await resp.read()
        seen = upstream.last
        dump = repr(seen.headers) + repr(seen.query) + seen.path + seen.body.decode()
        assert SECRET not in dump
        lower = {k.lower(): v for k, v in seen.headers.items()}
        assert lower["x-backend-key"] == "backend-secret"
        assert "x-api-key" not in lower and "cookie" not in lower and "x-private" not in lower
        assert lower["content-type"] == "application/json" and lower["x-trace"] == "t1"
        assert lower["x-forwarded-for"] == "127.0.0.1"
        assert lower.get("accept-encoding") == "identity"
        assert seen.query == {} and seen.body == b"body"


async def test_bearer_key_is_not_forwarded(upstream, gateway):
    upstream.handle("/text", ok)
    client = await gateway(base_config(upstream.url))
    resp = await client.post("/api/v1/run/wf_text", headers={"Authorization": f"Bearer {SECRET}"})
    assert resp.status == 200
    assert "authorization" not in {k.lower() for k in upstream.last.headers}



async def test_refused_connection_is_502(gateway):
    client = await gateway(base_config(f"http://127.0.0.1:{free_port()}"))
    resp = await client.post(PB, headers={"x-api-key": SECRET})
    assert resp.status == 502
    assert (await resp.json(content_type=None))["code"] == "backend_unavailable"
    resp = await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})
    assert resp.status == 502 and (await resp.json())["code"] == "backend_unavailable"


async def test_no_headers_within_head_timeout_is_504(upstream, gateway):
    async def silent(request, seen):
        await asyncio.sleep(30)
        return web.Response(text="late")

    upstream.handle("/text", silent)
    cfg = base_config(upstream.url)
    cfg["backends"]["text"]["head_timeout_s"] = 0.3
    client = await gateway(cfg)
    resp = await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})
    assert resp.status == 504 and (await resp.json())["code"] == "backend_timeout"
    await asyncio.wait_for(upstream.last.closed_early.wait(), 5)


async def test_backend_503_is_502(upstream, gateway):
    async def down(request, seen):
        return web.Response(status=503)

    upstream.handle("/text", down)
    client = await gateway(base_config(upstream.url))
    resp = await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})
    assert resp.status == 502
