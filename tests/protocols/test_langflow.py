"""Langflow events: dedup of add_message after tokens, usage, errors, truncation."""

from __future__ import annotations

import json

from proxy.protocols import End, Error, Token, Usage, new_decoder


def frames(*pairs) -> bytes:
    return b"".join(json.dumps({"event": e, "data": d}).encode() + b"\n\n" for e, d in pairs)


def test_add_message_after_tokens_emits_only_the_rest_and_usage():
    d = new_decoder("langflow")
    evs = d.feed(frames(
        ("token", {"chunk": "Hel", "id": "m"}),
        ("add_message", {"id": "m", "text": "Hello", "sender": "Machine",
                         "properties": {"usage": {"input_tokens": 4, "output_tokens": 2, "total_tokens": 6}}}),
        ("vertices_sorted", {"ids": []}),
        ("end", {"result": {"outputs": [{"outputs": [{"results": {"message": {"properties": {"usage": {
            "input_tokens": 4, "output_tokens": 2, "total_tokens": 6}}}}}]}]}}),
    ))
    assert evs == [Token("Hel"), Token("lo"), Usage(4, 2, 6), End(evs[-1].result)]
    assert d.close() == []


def test_usage_found_only_in_end_result_and_openai_names():
    d = new_decoder("langflow")
    evs = d.feed(frames(("add_message", {"id": "m", "text": "Hi", "sender": "Machine"}),
                        ("end", {"result": {"a": [{"b": {"usage": {"prompt_tokens": 9, "completion_tokens": 120}}}]}})))
    assert Usage(9, 120, None) in evs


def test_error_event_and_truncation():
    d = new_decoder("langflow")
    assert d.feed(frames(("error", {"error": "boom"}))) == [Error("boom")]
    assert d.close() == []
    d = new_decoder("langflow")
    d.feed(frames(("token", {"chunk": "a", "id": "m"})))
    assert d.close() == [Error("backend stream ended before its end event")]


def test_user_echo_and_junk_lines_are_ignored():
    d = new_decoder("langflow")
    assert d.feed(b'not json\n\n{"event": "add_message", "data": {"text": "q", "sender": "User"}}\n\n') == []
    assert d.pending is False
    d.feed(b'{"event": "tok')
    assert d.pending is True


def test_a_line_that_never_ends_is_read_in_linear_time_and_cut_at_its_limit():
    """A hostile backend's event line without a newline: its pieces are kept, not re-copied per
    piece (half the limit in 1 KiB pieces: milliseconds, not tens of seconds of copying), and
    past MAX_LINE_BYTES the stream is a backend error and nothing more is kept."""
    import time

    from proxy.protocols._lines import MAX_LINE_BYTES

    d = new_decoder("langflow")
    assert d.feed(frames(("token", {"chunk": "a", "id": "m"})) + b'{"event": "token", "data": {"chunk": "') \
        == [Token("a")]
    piece, half = b"x" * 1024, MAX_LINE_BYTES // 2
    started = time.monotonic()
    for _ in range(half // len(piece)):
        assert d.feed(piece) == []
    assert time.monotonic() - started < 0.5
    assert d.feed(b'", "id": "m"}}\n\n') == [Token("x" * half)]
    assert not d.pending
    evs: list = []
    for _ in range(MAX_LINE_BYTES // len(piece) + 1):
        evs += d.feed(piece)
    assert evs == [Error(f"a backend event line is over {MAX_LINE_BYTES} bytes")] and not d.pending
    assert d.close() == []  # the stream ended with that error: no second one
