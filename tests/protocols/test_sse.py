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


def test_data_lines_that_never_end_their_event_are_bounded():
    """A hostile backend's data lines without the blank line that dispatches them: held up to
    the bound one line has, then the backend's error (nothing more is kept)."""
    from proxy.protocols._lines import MAX_LINE_BYTES

    d = new_decoder("sse")
    line, evs = b"data: " + b"x" * 65530 + b"\n", []
    for _ in range(MAX_LINE_BYTES // 65530 + 1):
        evs += d.feed(line)
    assert evs == [Error(f"a backend event is over {MAX_LINE_BYTES} bytes")]
    assert d.feed(b"data: ok\n\n") == [Token("ok")]  # (the pump ends the run at the error)
