"""SSE: OpenAI chunks, multi-line data, comments, error events, [DONE]."""

from __future__ import annotations

import json

from proxy.protocols import End, Error, Item, Token, Usage, new_decoder


def test_openai_stream():
    d = new_decoder("sse")
    chunk = json.dumps({"choices": [{"delta": {"content": "hi"}}]}).encode()
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
    body = b": keep-alive\r\n\r\ndata: " + chunk + b"\r\n\r\ndata: " + usage.encode() + b"\n\ndata: [DONE]\n\n"
    assert d.feed(body) == [Token("hi"), Usage(1, 2, 3), End(None)]


def test_multiline_error_and_final_event_without_blank_line():
    d = new_decoder("sse")
    assert d.feed(b"data: a\ndata: b\n\nevent: error\ndata: boom\n\n") == [Token("a\nb"), Error("boom")]
    assert d.feed(b'data: {"k": 1}') == []
    assert d.close() == [Item({"k": 1})]
