"""ndjson: one value per line, usage and error lines, CRLF, non-JSON lines."""

from __future__ import annotations

from proxy.protocols import Error, Item, Usage, new_decoder


def test_lines():
    d = new_decoder("ndjson")
    evs = d.feed(b'{"text": "a"}\r\n\n"b"\nplain line\n{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}\n')
    assert evs == [Item({"text": "a"}), Item("b"), Item("plain line"),
                   Item({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}), Usage(3, 4, None)]
    assert d.feed(b'{"error": "bad"}') == [] and d.pending
    assert d.close() == [Error("bad")]


def test_a_line_over_the_limit_is_a_backend_error_and_is_not_kept():
    from proxy.protocols._lines import MAX_LINE_BYTES

    d = new_decoder("ndjson")
    piece, evs = b"1" * 65536, []
    for _ in range(MAX_LINE_BYTES // len(piece) + 1):
        evs += d.feed(piece)
    assert evs == [Error(f"a backend event line is over {MAX_LINE_BYTES} bytes")] and not d.pending
