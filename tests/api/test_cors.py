"""CORS on the browser-facing stream route: preflight and run from another origin."""

from __future__ import annotations

import pytest

from tests.conftest import SECRET, base_config, stream_chunks

APP = "https://app.example.com"
PREFLIGHT = {"Origin": APP, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}


async def make(upstream, gateway, origins):
    async def text(request, seen):
        return await stream_chunks(request, ["hi"])

    upstream.handle("/text", text)
    return await gateway(base_config(upstream.url, cors={"allow_origins": origins}))


async def token(client) -> str:
    resp = await client.get("/api/v1/token", headers={"x-api-key": SECRET})
    return (await resp.json())["token"]


@pytest.mark.parametrize("origins,expected", [([APP], APP), (["*"], "*")])
async def test_preflight_and_run_from_an_allowed_origin(upstream, gateway, origins, expected):
    client = await make(upstream, gateway, origins)
    resp = await client.options("/api/v1/run/wf_text/stream", headers=PREFLIGHT)
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == expected
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert resp.headers["Access-Control-Allow-Headers"] == "content-type"
    resp = await client.post(f"/api/v1/run/wf_text/stream?token={await token(client)}",
                             headers={"Origin": APP, "Content-Type": "application/json"}, data=b"{}")
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == expected
    assert "flow-job-id" in resp.headers["Access-Control-Expose-Headers"]
    resp = await client.post("/api/v1/run/wf_text/stream?token=pub_tok_bad", headers={"Origin": APP})
    assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == expected


async def test_other_origins_get_no_grant(upstream, gateway):
    client = await make(upstream, gateway, [APP])
    headers = {**PREFLIGHT, "Origin": "https://evil.example"}
    resp = await client.options("/api/v1/run/wf_text/stream", headers=headers)
    assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.post(f"/api/v1/run/wf_text/stream?token={await token(client)}",
                             headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_no_origins_configured_refuses_every_preflight(upstream, gateway):
    client = await make(upstream, gateway, [])
    resp = await client.options("/api/v1/run/wf_text/stream", headers=PREFLIGHT)
    assert resp.status == 403
