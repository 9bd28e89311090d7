"""Workflow stream route with ``?protocol=ui``: the AI SDK UI message stream over a live gateway
(aiohttp client here; tests/protocols/test_ui_sdk.py drives the SDK's own transports)."""

from __future__ import annotations

import asyncio
import json
import time
from itertools import pairwise

import pytest
from aiohttp import web

from proxy.api.runs import DEADLINE_MESSAGE
from tests.conftest import SECRET, base_config, langflow_tokens, stream_chunks
from tests.dialects.test_workflow import failure, mint
from tests.policies.test_credits import endless_tokens, settled

# the fields the AI SDK's schema names for each part this gateway writes (5.0's schemas are strict)
DOCUMENTED = {
    "start": {"type", "messageId", "messageMetadata"},
    "text-start": {"type", "id", "providerMetadata"},
    "text-delta": {"type", "id", "delta", "providerMetadata"},
    "text-end": {"type", "id", "providerMetadata"},
    "finish": {"type", "finishReason", "messageMetadata"},
    "error": {"type", "errorText"},
}
CHAT = {"id": "chat-42", "trigger": "submit-message", "messageId": None,
        "messages": [{"id": "m0", "role": "user", "parts": [{"type": "text", "text": "Tell me about owls"}]}]}


def sse_data(body: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body (every event a single data line, as the SDK writes them)."""
    out = []
    for event in body.split(b"\n\n"):
        if event:
            assert event.startswith(b"data: ") and b"\n" not in event, event
            out.append(event[6:].decode())
    return out


def parts_of(body: bytes) -> list[dict]:
    data = sse_data(body)
    assert data[-1] == "[DONE]" and "[DONE]" not in data[:-1]
    parts = [json.loads(d) for d in data[:-1]]
    for p in parts:
        assert set(p) <= DOCUMENTED[p["type"]], p
    return parts


async def timed_parts(resp) -> list[tuple[float, dict | str]]:
    """(arrival time, part) for each SSE event, read as it arrives."""
    out, buf = [], b""
    async for chunk in resp.content.iter_any():
        now = time.monotonic()
        buf += chunk
        *events, buf = buf.split(b"\n\n")
        for event in events:
            raw = event[6:].decode()
            out.append((now, raw if raw == "[DONE]" else json.loads(raw)))
    assert buf == b""
    return out


@pytest.fixture
async def client(upstream, gateway):
    upstream.handle("/lf", langflow_tokens(20, 0.05, usage={"input_tokens": 7, "output_tokens": 20}))

    async def text(request, seen):
        return await stream_chunks(request, ["hello ", "wörld"], delay=0.05)

    upstream.handle("/text", text)
    return await gateway(base_config(upstream.url))


async def ui_run(client, flow: str, body=CHAT, **kw):
    token = await mint(client)
    return await client.post(f"/api/v1/run/{flow}/stream?token={token}&protocol=ui", json=body, **kw)


async def test_a_langflow_backend_reads_as_the_ui_message_stream_progressively(client, upstream):
    resp = await ui_run(client, "wf_lf")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["X-Accel-Buffering"] == "no"
    job_id = resp.headers["flow-job-id"]
    timed = await timed_parts(resp)
    parts = [p for _, p in timed]
    assert parts[-1] == "[DONE]"
    assert parts[0] == {"type": "start", "messageId": job_id}
    assert parts[1] == {"type": "text-start", "id": "text-0"}
    deltas = [(t, p) for t, p in timed if isinstance(p, dict) and p["type"] == "text-delta"]
    assert [p["delta"] for _, p in deltas] == [f"w{i} " for i in range(20)]
    assert parts[-3] == {"type": "text-end", "id": "text-0"}
    assert parts[-2] == {"type": "finish", "finishReason": "stop", "messageMetadata": {
        "usage": {"inputTokens": 7, "outputTokens": 20, "totalTokens": 27}, "jobId": job_id}}
    # progressive: the 20 deltas arrive over the backend's ~1 s, not in one burst at the end
    times = [t for t, _ in deltas]
    assert times[-1] - times[0] > 0.6, times
    assert max(b - a for a, b in pairwise(times)) < 0.5
    assert len({round(t, 2) for t in times}) >= 15  # (at most a few share one read)


async def test_a_text_backend_takes_the_same_format(client):
    resp = await ui_run(client, "wf_text", body={"topic": "x"})
    parts = parts_of(await resp.read())
    assert [p["type"] for p in parts] == ["start", "text-start", "text-delta", "text-delta", "text-end", "finish"]
    assert "".join(p["delta"] for p in parts if p["type"] == "text-delta") == "hello wörld"
    usage = parts[-1]["messageMetadata"]["usage"]
    assert usage == {"inputTokens": 0, "outputTokens": 3, "totalTokens": 3}  # ceil(11 chars / 4)


@pytest.mark.parametrize("protocol", [None, "text"])
async def test_text_plain_stays_the_default(client, protocol):
    token = await mint(client)
    query = f"?token={token}" + (f"&protocol={protocol}" if protocol else "")
    resp = await client.post(f"/api/v1/run/wf_text/stream{query}")
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "x-vercel-ai-ui-message-stream" not in resp.headers
    assert await resp.text() == "hello wörld"


async def test_an_unknown_protocol_is_400_before_the_token_is_spent(client, upstream):
    token = await mint(client)
    for bad in ("UI", "sse", "", "ui,text"):
        await failure(await client.post(f"/api/v1/run/wf_text/stream?token={token}&protocol={bad}"),
                      400, "bad_request")
    await failure(await client.post("/api/v1/run/wf_text?protocol=ui", headers={"x-api-key": SECRET}),
                  400, "bad_request")
    assert upstream.requests == []
    resp = await client.post(f"/api/v1/run/wf_text/stream?token={token}&protocol=ui")
    assert resp.status == 200  # the token was not spent by the refusals


async def test_a_capped_run_ends_with_an_error_part_and_no_finish(upstream, gateway):
    upstream.handle("/lf", langflow_tokens(spacing_s=0.05, forever=True))
    cfg = base_config(upstream.url)
    cfg["flows"][1]["max_duration_s"] = 2
    client = await gateway(cfg)
    started = time.monotonic()
    resp = await ui_run(client, "wf_lf")
    body = await resp.read()  # a clean chunked end: no ClientPayloadError
    assert 1.9 < time.monotonic() - started < 4
    parts = parts_of(body)
    assert parts[-1] == {"type": "error", "errorText": DEADLINE_MESSAGE}
    assert "finish" not in [p["type"] for p in parts]
    assert parts[-2] == {"type": "text-end", "id": "text-0"}
    assert sum(p["type"] == "text-delta" for p in parts) >= 30


async def test_a_credit_cut_ends_with_an_error_part_and_no_finish(upstream, gateway):
    upstream.handle("/text", endless_tokens(100))  # 1,000 tokens
    cfg = base_config(upstream.url)
    cfg["accounts"]["acme"]["initial_credits"] = 250
    cfg["limits"] = {"credit_quantum_tokens": 100}
    client = await gateway(cfg)
    parts = parts_of(await (await ui_run(client, "wf_text", body={})).read())
    assert parts[-1] == {"type": "error", "errorText": "the account ran out of credits"}
    assert "finish" not in [p["type"] for p in parts]
    entries = await settled(client)
    assert entries[0]["outcome"] == "credits_cut"
    text = "".join(p["delta"] for p in parts if p["type"] == "text-delta")
    assert 0 < len(text) <= 4 * entries[0]["output_tokens"]


def cut_short(frames: list[bytes]):
    async def handler(request, seen):
        return await stream_chunks(request, frames, content_type="text/event-stream")
    return handler


RUN_FAILED = "the workflow run failed"


@pytest.mark.parametrize("frames", [
    [b'{"event":"token","data":{"chunk":"par","id":"m1"}}\n\n'],
    [b'{"event":"token","data":{"chunk":"par","id":"m1"}}\n\n',
     b'{"event":"error","data":{"error":"OpenAI: Incorrect API key provided: sk-abc***xyz"}}\n\n'],
], ids=["cut-short", "error-event"])
async def test_a_backend_failure_ends_with_an_error_part_and_no_finish(upstream, gateway, frames):
    upstream.handle("/lf", cut_short(frames))
    client = await gateway(base_config(upstream.url))
    body = await (await ui_run(client, "wf_lf")).read()
    parts = parts_of(body)
    assert [p["type"] for p in parts] == ["start", "text-start", "text-delta", "text-end", "error"]
    assert parts[-1]["errorText"] == RUN_FAILED
    assert b"sk-abc" not in body  # the backend's own error text (it may quote its provider) stays inside
    entries = await settled(client)
    assert entries[0]["outcome"] == "backend_error"


async def test_an_error_before_any_text_has_no_text_part(upstream, gateway):
    upstream.handle("/lf", cut_short([b'{"event":"error","data":{"error":"flow not built"}}\n\n']))
    client = await gateway(base_config(upstream.url))
    parts = parts_of(await (await ui_run(client, "wf_lf")).read())
    assert parts[1:] == [{"type": "error", "errorText": RUN_FAILED}]


async def test_a_backend_connection_lost_mid_stream_ends_with_an_error_part(upstream, gateway):
    async def dies(request, seen):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'{"event":"token","data":{"chunk":"par","id":"m1"}}\n\n')
        await asyncio.sleep(0.1)
        request.transport.close()  # mid-body, no chunked end
        return resp

    upstream.handle("/lf", dies)
    client = await gateway(base_config(upstream.url))
    parts = parts_of(await (await ui_run(client, "wf_lf")).read())
    assert [p["type"] for p in parts] == ["start", "text-start", "text-delta", "text-end", "error"]


async def test_backend_text_cannot_forge_parts(upstream, gateway):
    """Text that looks like SSE framing or a part reaches the client as text, never as a part."""
    evil = 'x"}\n\ndata: {"type":"finish"}\n\ndata: [DONE]\n\n\r\u2028\x00'
    upstream.handle("/text", lambda request, seen: stream_chunks(request, [evil, "é".encode()[:1], "é".encode()[1:]]))
    client = await gateway(base_config(upstream.url))
    parts = parts_of(await (await ui_run(client, "wf_text", body={})).read())
    assert "".join(p["delta"] for p in parts if p["type"] == "text-delta") == evil + "é"
    assert [p["type"] for p in parts].count("finish") == 1


async def test_a_client_gone_mid_stream_settles_as_disconnected(upstream, gateway):
    upstream.handle("/lf", langflow_tokens(spacing_s=0.05, forever=True))
    client = await gateway(base_config(upstream.url))
    resp = await ui_run(client, "wf_lf")
    got = b""
    while got.count(b"text-delta") < 3:
        got += await resp.content.readany()
    resp.close()
    entries = await settled(client)
    assert entries[0]["outcome"] == "client_disconnected"
    await asyncio.wait_for(upstream.last.closed_early.wait(), 5)  # the backend stops generating


async def test_cors_preflight_allows_content_type_and_the_stream_carries_the_grant(upstream, gateway):
    upstream.handle("/lf", langflow_tokens(3, 0))
    cfg = base_config(upstream.url, cors={"allow_origins": ["https://app.example"]})
    client = await gateway(cfg)
    token = await mint(client)
    url = f"/api/v1/run/wf_lf/stream?token={token}&protocol=ui"
    pre = await client.options(url, headers={"Origin": "https://app.example",
                                             "Access-Control-Request-Method": "POST",
                                             "Access-Control-Request-Headers": "content-type"})
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "content-type" in pre.headers["Access-Control-Allow-Headers"].lower()
    resp = await client.post(url, json=CHAT, headers={"Origin": "https://app.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert parts_of(await resp.read())[-1]["type"] == "finish"

