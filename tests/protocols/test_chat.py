"""Chat requests (the AI SDK's ``{id, messages, ...}``) mapped onto a Langflow backend's body;
other backends and other bodies get what was sent."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.protocols.chat import MAPPERS, ChatRequestError, backend_body, message_text
from tests.conftest import SECRET, base_config, langflow_tokens, stream_chunks
from tests.dialects.test_workflow import failure, mint


def chat(*messages, chat_id="chat-1", **extra) -> bytes:
    return json.dumps({"id": chat_id, "messages": list(messages), "trigger": "submit-message",
                       "messageId": None, **extra}).encode()


def user(*texts: str) -> dict:
    return {"id": "u", "role": "user", "parts": [{"type": "text", "text": t} for t in texts]}


def assistant(text: str) -> dict:
    return {"id": "a", "role": "assistant", "parts": [{"type": "step-start"}, {"type": "text", "text": text}]}


def test_the_last_user_message_becomes_langflow_input():
    body = chat(user("first question"), assistant("an answer"), user("Tell me", "about owls"))
    assert json.loads(backend_body("langflow", body)) == {  # type: ignore[arg-type]
        "input_value": "Tell me\nabout owls", "session_id": "chat-1", "input_type": "chat", "output_type": "chat"}


def test_a_regenerate_request_takes_the_last_user_message():
    body = chat(user("q1"), assistant("a1"), user("q2"), trigger="regenerate-message")
    assert json.loads(backend_body("langflow", body))["input_value"] == "q2"  # type: ignore[arg-type]


def test_ai_sdk_4_messages_and_non_text_parts():
    assert message_text({"role": "user", "content": "v4 style"}) == "v4 style"
    parts = [{"type": "file", "url": "x"}, {"type": "text", "text": "hi"}]
    assert message_text({"role": "user", "parts": parts}) == "hi"
    body = chat({"role": "user", "content": "plain"}, chat_id=None)
    assert json.loads(backend_body("langflow", body)) == {  # type: ignore[arg-type]
        "input_value": "plain", "input_type": "chat", "output_type": "chat"}  # no chat id: Langflow makes a session


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[1, 2]", b'{"input_value": "hi"}', b'{"topic": "messages"}',
    b'{"input_value": "native", "messages": [{"role": "user", "content": "x"}]}',  # already Langflow's shape
])
def test_other_bodies_go_as_sent(body):
    assert backend_body("langflow", body) is None


@pytest.mark.parametrize("protocol", ["text", "ndjson", "json-array", "sse", "ai-sdk"])
def test_other_backend_protocols_get_the_chat_request_as_sent(protocol):
    assert protocol not in MAPPERS
    assert backend_body(protocol, chat(user("hi"))) is None


@pytest.mark.parametrize("body,why", [
    (b'{"messages": "hi"}', "list"),
    (b'{"messages": ["hi"]}', "list"),
    (b'{"messages": []}', "no user message"),
    (chat(assistant("only me")), "no user message"),
    (chat({"role": "user", "parts": [{"type": "text", "text": ""}]}), "no text"),
    (chat({"role": "user", "parts": "text"}), "no text"),
    (chat(user("hi"), chat_id=7), "chat id"),
])
def test_a_chat_without_input_is_refused(body, why):
    with pytest.raises(ChatRequestError):
        backend_body("langflow", body)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20))
def test_any_json_maps_or_is_refused_or_passes(value):
    """Whatever JSON a client sends under ``messages``: a JSON body, a ChatRequestError, or as sent."""
    try:
        out = backend_body("langflow", json.dumps({"messages": value}).encode())
    except ChatRequestError:
        return
    assert out is not None and isinstance(json.loads(out)["input_value"], str)


# --- through a live gateway ---------------------------------------------------------------------

@pytest.fixture
async def client(upstream, gateway):
    upstream.handle("/lf", langflow_tokens(2, 0))
    upstream.handle("/text", lambda request, seen: stream_chunks(request, ["ok"]))
    return await gateway(base_config(upstream.url))


async def test_the_langflow_backend_receives_the_users_text(client, upstream):
    token = await mint(client)
    body = chat(user("Tell me about owls"))
    # sent as text/plain (a CORS "simple" request): the backend still gets JSON it can parse
    resp = await client.post(f"/api/v1/run/wf_lf/stream?token={token}&protocol=ui", data=body,
                             headers={"Content-Type": "text/plain"})
    assert resp.status == 200
    await resp.read()
    seen = upstream.last
    assert json.loads(seen.body) == {"input_value": "Tell me about owls", "session_id": "chat-1",
                                     "input_type": "chat", "output_type": "chat"}
    assert seen.headers["Content-Type"] == "application/json"
    assert int(seen.headers["Content-Length"]) == len(seen.body)


async def test_the_key_route_maps_too_and_a_text_backend_gets_the_body_as_sent(client, upstream):
    resp = await client.post("/api/v1/run/wf_lf", data=chat(user("hi")), headers={"x-api-key": SECRET})
    assert (await resp.json())["result"] == "w0 w1 "
    assert json.loads(upstream.last.body)["input_value"] == "hi"
    body = chat(user("hi"))
    resp = await client.post("/api/v1/run/wf_text", data=body, headers={"x-api-key": SECRET})
    assert resp.status == 200 and upstream.last.body == body


async def test_a_malformed_chat_is_400_and_reaches_no_backend(client, upstream):
    token = await mint(client)
    resp = await client.post(f"/api/v1/run/wf_lf/stream?token={token}&protocol=ui", json={"messages": []})
    body = await failure(resp, 400, "bad_request")
    assert "user message" in body["error"]
    assert upstream.requests == []


async def test_only_the_workflow_dialect_maps_chats_the_others_forward_the_body_as_sent(client, upstream):
    """Profitbase passes its body to the backend as is, and the langflow dialect speaks Langflow's
    own API: neither rewrites, nor refuses, a body that happens to have ``messages``."""
    pb = f"/api/v1/tenants/t1/workspaces/w1/flows/wf_lf/run-streaming?api_key={SECRET}"
    lf = "/langflow/api/v1/run/wf_lf?stream=true"
    for url, body, headers in [(pb, b'{"messages": "a profitbase flow input"}', {}),
                               (pb, chat(user("hi")), {}),
                               (lf, b'{"messages": []}', {"x-api-key": SECRET})]:
        resp = await client.post(url, data=body, headers=headers)
        assert resp.status == 200, await resp.text()
        await resp.read()
        assert upstream.last.body == body


def test_a_lone_surrogate_the_browser_sent_is_still_a_chat():
    """JavaScript strings may hold a lone surrogate (half an emoji cut off) and ``JSON.stringify``
    writes it as ``\\ud83e``: still the user's chat (the half becomes U+FFFD), never forwarded
    unmapped (a Langflow flow would run without ``input_value``)."""
    body = b'{"id":"c\\udc00","messages":[{"role":"user","parts":[{"type":"text","text":"owls \\ud83e"}]}]}'
    out = backend_body("langflow", body)
    assert out is not None
    assert json.loads(out) == {"input_value": "owls \ufffd", "session_id": "c\ufffd",
                               "input_type": "chat", "output_type": "chat"}


def test_a_body_orjson_refuses_for_another_reason_is_not_parsed_again(monkeypatch):
    import proxy.protocols.chat as chat_module
    monkeypatch.setattr(chat_module.json, "loads", lambda body: pytest.fail("parsed a second time"))
    for body in [b'{"messages": [' + b'1,' * 1000 + b'x]}', b'{"messages":' + b'[' * 5000 + b']' * 5000 + b'}']:
        assert backend_body("langflow", body) is None
