"""Workflow dialect: key placement, non-streaming result, token-spending stream route, error codes."""

from __future__ import annotations

import pytest

from tests.conftest import OTHER_SECRET, SECRET, base_config, stream_chunks


@pytest.fixture
async def client(upstream, gateway):
    async def text(request, seen):
        return await stream_chunks(request, ["hello ", "world"])

    upstream.handle("/text", text)
    return await gateway(base_config(upstream.url))


async def mint(client, secret=SECRET, **query) -> str:
    resp = await client.get("/api/v1/token", headers={"Authorization": f"Bearer {secret}"}, params=query)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["success"] is True
    return body["token"]


async def failure(resp, status: int, code: str) -> dict:
    assert resp.status == status, await resp.text()
    body = await resp.json(content_type=None)
    assert body["success"] is False and body["code"] == code and body["error"]
    return body


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {SECRET}"}, {"x-api-key": SECRET}])
async def test_non_streaming_run_answers_success_result(client, headers):
    resp = await client.post("/api/v1/run/wf_text", headers=headers, json={"topic": "x"})
    assert resp.status == 200
    assert await resp.json() == {"success": True, "result": "hello world"}
    assert resp.headers["flow-job-id"]


async def test_stream_route_spends_a_token_and_streams_plain_text(client, upstream):
    token = await mint(client)
    resp = await client.post(f"/api/v1/run/wf_text/stream?token={token}", json={"topic": "x"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert await resp.text() == "hello world"
    assert token not in str(upstream.last.query) and token not in str(upstream.last.headers)


async def test_run_with_both_key_places_is_400(client):
    resp = await client.post("/api/v1/run/wf_text", headers={"Authorization": f"Bearer {SECRET}", "x-api-key": SECRET})
    await failure(resp, 400, "bad_request")


async def test_error_table(client):
    await failure(await client.post("/api/v1/run/wf_text"), 401, "unauthorized")
    await failure(await client.post("/api/v1/run/wf_text", headers={"x-api-key": "nope"}), 401, "unauthorized")
    # a known key without scope answers 401 unauthorized here (as ManagePrompt does for an owner mismatch)
    await failure(await client.post("/api/v1/run/wf_text", headers={"x-api-key": OTHER_SECRET}), 401, "unauthorized")
    await failure(await client.post("/api/v1/run/wf_nope", headers={"x-api-key": SECRET}), 404, "workflow_not_found")
    await failure(await client.post("/api/v1/run/wf_hidden", headers={"x-api-key": SECRET}), 404,
                  "workflow_not_found")
    await failure(await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET}, data=b"x" * 5000), 413,
                  "payload_too_large")
    await failure(await client.post("/api/v1/run/wf_text?env=moon", headers={"x-api-key": SECRET}), 400,
                  "bad_request")


async def test_stream_without_or_with_malformed_token_is_401_invalid_token(client, upstream):
    await failure(await client.post("/api/v1/run/wf_text/stream"), 401, "unauthorized")
    await failure(await client.post("/api/v1/run/wf_text/stream?token=pub_tok_short"), 401, "invalid_token")
    await failure(await client.post("/api/v1/run/wf_text/stream?token=" + "pub_tok_" + "A" * 32), 401,
                  "invalid_token")
    assert upstream.requests == []


async def test_backend_failure_is_500_workflow_run_failed(client, upstream):
    async def boom(request, seen):
        from aiohttp import web
        return web.Response(status=500, text="stack trace with secrets")

    upstream.handle("/text", boom)
    resp = await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})
    body = await failure(resp, 500, "workflow_run_failed")
    assert "secrets" not in body["error"]
