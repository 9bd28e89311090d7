"""Langflow dialect: key in header or query, stream=true events, stream=false RunResponse, errors."""

from __future__ import annotations

import json

import pytest

from tests.conftest import OTHER_SECRET, SECRET, base_config, stream_chunks


def frame(event: str, data) -> bytes:
    return json.dumps({"event": event, "data": data}).encode() + b"\n\n"


LF_BODY = [
    frame("add_message", {"id": "u1", "text": "hi", "sender": "User", "sender_name": "User"}),
    frame("token", {"chunk": "Hel", "id": "m1", "timestamp": ""}),
    frame("token", {"chunk": "lo", "id": "m1", "timestamp": ""}),
    frame("add_message", {"id": "m1", "text": "Hello", "sender": "Machine", "sender_name": "AI",
                          "properties": {"usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}}}),
    frame("end", {"result": {"session_id": "s",
                             "outputs": [{"outputs": [{"results": {"message": {"text": "Hello"}}}]}]}}),
]


def events(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.split(b"\n") if line.strip()]


@pytest.fixture
async def client(upstream, gateway):
    async def lf(request, seen):
        return await stream_chunks(request, LF_BODY, content_type="text/event-stream")

    async def text(request, seen):
        return await stream_chunks(request, ["plain ", "text"])

    upstream.handle("/lf", lf)
    upstream.handle("/text", text)
    return await gateway(base_config(upstream.url))


async def test_stream_true_passes_langflow_events_through_untouched(client):
    resp = await client.post("/langflow/api/v1/run/wf_lf?stream=true", headers={"x-api-key": SECRET},
                             json={"input_value": "hi"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert await resp.read() == b"".join(LF_BODY)


async def test_flow_by_name_and_key_in_query(client):
    resp = await client.post(f"/langflow/api/v1/run/tutor?stream=true&x-api-key={SECRET}")
    assert resp.status == 200
    assert [e["event"] for e in events(await resp.read())][-1] == "end"


async def test_stream_false_returns_the_backend_run_response(client):
    resp = await client.post("/langflow/api/v1/run/wf_lf", headers={"x-api-key": SECRET})
    assert resp.status == 200
    body = await resp.json()
    assert body["session_id"] == "s"


async def test_text_backend_is_transcoded_to_langflow_events(client):
    resp = await client.post("/langflow/api/v1/run/texty?stream=true", headers={"x-api-key": SECRET})
    evs = events(await resp.read())
    assert "".join(e["data"]["chunk"] for e in evs if e["event"] == "token") == "plain text"
    assert evs[-1]["event"] == "end"


async def test_text_backend_non_streaming_gets_a_synthesized_run_response(client):
    resp = await client.post("/langflow/api/v1/run/texty", headers={"x-api-key": SECRET})
    assert resp.status == 200
    assert "plain text" in json.dumps(await resp.json())


async def test_errors_are_detail_bodies_with_langflow_codes(client):
    resp = await client.post("/langflow/api/v1/run/wf_lf?stream=true")
    assert resp.status == 403 and "detail" in await resp.json()
    resp = await client.post("/langflow/api/v1/run/wf_lf?stream=true", headers={"x-api-key": "bad"})
    assert resp.status == 403 and await resp.json() == {"detail": "Invalid or missing API key"}
    resp = await client.post("/langflow/api/v1/run/nope?stream=true", headers={"x-api-key": SECRET})
    assert resp.status == 404 and "detail" in await resp.json()
    # another owner's flow looks like a missing one, as in Langflow
    resp = await client.post("/langflow/api/v1/run/wf_lf?stream=true", headers={"x-api-key": OTHER_SECRET})
    assert resp.status == 404
    resp = await client.post("/langflow/api/v1/run/wf_lf?stream=maybe", headers={"x-api-key": SECRET})
    assert resp.status == 422
    assert (await resp.json())["detail"][0]["loc"] == ["query", "stream"]
