"""Plain text: UTF-8 split anywhere, Items rendered as their text."""

from __future__ import annotations

from proxy.protocols import Item, Token, Usage, new_decoder, new_encoder


def test_multibyte_split_is_held_until_complete():
    d = new_decoder("text")
    data = "€".encode()
    assert d.feed(data[:1]) == [] and d.pending
    assert d.feed(data[1:2]) == [] and d.pending
    assert d.feed(data[2:]) == [Token("€")] and not d.pending
    d.feed(b"\xe2")
    assert d.close() == [Token("\ufffd")]


def test_encoder():
    e = new_encoder("text")
    assert e.encode(Token("a")) == b"a"
    assert e.encode(Item({"text": "b"})) == b"b"
    assert e.encode(Item({"x": 1})) == b'{"x":1}\n'
    assert e.encode(Usage(1, 2, 3)) == b""
