"""Streamed JSON arrays: nested strings with structural characters, truncation, garbage."""

from __future__ import annotations

from proxy.protocols import End, Error, Item, Usage, new_decoder


def feed_bytewise(body: bytes) -> list:
    d = new_decoder("json-array")
    out = []
    for i in range(len(body)):
        out += d.feed(body[i:i + 1])
    return out + d.close()


def test_tricky_elements():
    body = rb' [ {"a": "x]}\"y\\", "b": [1, {"c": ","}]} , "two", 3 , [], {}, null ] '
    assert feed_bytewise(body) == [Item({"a": 'x]}"y\\', "b": [1, {"c": ","}]}), Item("two"), Item(3), Item([]),
                                   Item({}), Item(None), End(None)]


def test_usage_and_empty_array():
    assert feed_bytewise(b'[{"usage": {"input_tokens": 1, "output_tokens": 2}}]')[1] == Usage(1, 2, None)
    assert feed_bytewise(b"[]") == [End(None)]


def test_truncated_and_garbage():
    assert feed_bytewise(b'[1, "ab')[-1] == Error("backend stream ended inside the JSON array")
    assert feed_bytewise(b'{"not": "an array"}')[0].__class__ is Error
    assert feed_bytewise(b"") == [Error("backend stream ended inside the JSON array")]
    d = new_decoder("json-array")
    d.feed(b'[1, {"a"')
    assert d.pending


def test_an_element_that_never_ends_is_read_in_linear_time_and_cut_at_its_limit():
    """A hostile backend's endless element, in 1 KiB pieces: kept without being re-copied per
    piece (half the limit: milliseconds, not tens of seconds), and past the limit an error."""
    import time

    from proxy.protocols.json_array import MAX_ELEMENT_BYTES

    d = new_decoder("json-array")
    assert d.feed(b'["a", "') == [Item("a")]
    piece, half = b"x" * 1024, MAX_ELEMENT_BYTES // 2
    started = time.monotonic()
    for _ in range(half // len(piece)):
        assert d.feed(piece) == []
    assert time.monotonic() - started < 0.5
    assert d.feed(b'", {"b": 1') == [Item("x" * half)]
    assert d.feed(b"}]") == [Item({"b": 1}), End(None)]
    d = new_decoder("json-array")
    evs = d.feed(b'["')
    for _ in range(MAX_ELEMENT_BYTES // len(piece) + 1):
        evs += d.feed(piece)
    assert evs == [Error(f"a backend JSON element is over {MAX_ELEMENT_BYTES} bytes")]
    assert not d.pending and d.close() == []
