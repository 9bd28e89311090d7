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
