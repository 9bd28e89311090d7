"""Every backend protocol through every output format, with the body split at every byte."""

from __future__ import annotations

import json

import pytest

from proxy.protocols import DECODERS, ENCODERS, End, Error, Item, Token, item_text, new_decoder, new_encoder

TEXT = "Grüße, 世界! tokens…"

BODIES = {
    "text": TEXT.encode(),
    "langflow": b"".join(json.dumps({"event": e, "data": d}).encode() + b"\n\n" for e, d in [
        ("add_message", {"id": "u", "text": "question", "sender": "User"}),
        ("token", {"chunk": TEXT[:7], "id": "m"}),
        ("token", {"chunk": TEXT[7:], "id": "m"}),
        ("add_message", {"id": "m", "text": TEXT, "sender": "Machine"}),
        ("end", {"result": {"outputs": []}}),
    ]),
    "ndjson": b"".join(json.dumps({"text": c}).encode() + b"\n" for c in (TEXT[:5], TEXT[5:])),
    "json-array": ("[" + ",".join(json.dumps(c) for c in (TEXT[:3], TEXT[3:])) + "]").encode(),
    "sse": b"".join(b"data: " + json.dumps({"choices": [{"delta": {"content": c}}]}).encode() + b"\n\n"
                    for c in (TEXT[:9], TEXT[9:])) + b"data: [DONE]\n\n",
    "ai-sdk": b'f:{"messageId":"m"}\n' + b"".join(b"0:" + json.dumps(c).encode() + b"\n" for c in (TEXT[:4], TEXT[4:]))
    + b'd:{"finishReason":"stop","usage":{"promptTokens":1,"completionTokens":6}}\n',
}


def decode(protocol: str, body: bytes, step: int) -> list:
    d = new_decoder(protocol)
    events = []
    for i in range(0, len(body), step):
        events += d.feed(body[i:i + step])
    return events + d.close()


def text_of(events) -> str:
    return "".join(e.text if isinstance(e, Token) else (item_text(e.obj) or "") for e in events
                   if isinstance(e, Token | Item))


@pytest.mark.parametrize("protocol", sorted(DECODERS))
def test_every_split_decodes_to_the_same_text(protocol):
    body = BODIES[protocol]
    for step in range(1, len(body) + 1):
        events = decode(protocol, body, step)
        assert text_of(events) == TEXT, (protocol, step)
        assert not any(isinstance(e, Error) for e in events), (protocol, step, events)


def parse_output(fmt: str, data: bytes) -> str:
    if fmt == "text":
        return data.decode()
    if fmt == "json-array":
        return "".join(item_text(el) or "" for el in json.loads(data))
    if fmt == "ui":
        parts = [json.loads(e[6:]) for e in data.split(b"\n\n") if e and e != b"data: [DONE]"]
        assert parts[-1]["type"] == "finish" and data.endswith(b"data: [DONE]\n\n")
        return "".join(p["delta"] for p in parts if p["type"] == "text-delta")
    frames = [json.loads(line) for line in data.split(b"\n") if line.strip()]
    assert frames[-1]["event"] == "end"
    return "".join(f["data"]["chunk"] for f in frames if f["event"] == "token")


@pytest.mark.parametrize("protocol", sorted(DECODERS))
@pytest.mark.parametrize("fmt", sorted(ENCODERS))
def test_matrix(protocol, fmt):
    for step in (1, 3, len(BODIES[protocol])):
        enc = new_encoder(fmt)
        out = enc.open()
        for ev in decode(protocol, BODIES[protocol], step):
            out += enc.encode(ev)
        out += enc.close()
        assert parse_output(fmt, out) == TEXT, (protocol, fmt, step)


def test_error_events_per_format():
    assert new_encoder("text").error("x") is None
    assert new_encoder("json-array").error("x") is None
    frame = json.loads(new_encoder("langflow").error("cut"))
    assert frame == {"event": "error", "data": {"error": "cut"}}
    assert new_encoder("ui").error("cut") == b'data: {"type":"error","errorText":"cut"}\n\ndata: [DONE]\n\n'


def test_langflow_end_is_written_once():
    enc = new_encoder("langflow")
    out = enc.encode(Token("a")) + enc.encode(End({"r": 1})) + enc.close()
    assert out.count(b'"event":"end"') == 1
