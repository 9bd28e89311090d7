"""Plain text: the body is UTF-8 text, every decodable piece is a :class:`Token`.

The workflow dialect's output (Vercel AI SDK text protocol) is this format too. It has no error
event: the pump aborts the body instead, so the client sees an incomplete response.
"""

from __future__ import annotations

import codecs

import orjson

from . import Event, Item, Token, item_text


class TextDecoder:
    __slots__ = ("_decoder", "_decode")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._decode = self._decoder.decode

    def feed(self, data: bytes) -> list[Event]:
        text = self._decode(data)
        return [Token(text)] if text else []

    def close(self) -> list[Event]:
        text = self._decode(b"", True)
        return [Token(text)] if text else []

    @property
    def pending(self) -> bool:
        """True while a multi-byte sequence split across chunks is buffered."""
        return bool(self._decoder.getstate()[0])


class TextEncoder:
    content_type = "text/plain; charset=utf-8"

    def open(self) -> bytes:
        return b""

    def encode(self, event: Event) -> bytes:
        t = type(event)
        if t is Token:
            return event.text.encode()  # type: ignore[union-attr]
        if t is Item:
            text = item_text(event.obj)  # type: ignore[union-attr]
            return text.encode() if text is not None else orjson.dumps(event.obj) + b"\n"  # type: ignore[union-attr]
        return b""

    def close(self) -> bytes:
        return b""

    def error(self, message: str) -> bytes | None:
        return None
