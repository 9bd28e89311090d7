"""Plain text: the body is UTF-8 text, every decodable piece is a :class:`Token`.

The workflow dialect's output (Vercel AI SDK text protocol) is this format too. It has no error
event: the pump aborts the body instead, so the client sees an incomplete response.
"""

from __future__ import annotations

from codecs import utf_8_decode

import orjson

from .events import Event, Item, Token, item_text


class TextDecoder:
    """UTF-8 as it arrives; a multi-byte sequence split across chunks waits for its end."""

    __slots__ = ("rest",)

    def __init__(self) -> None:
        self.rest = b""  # the start of a split multi-byte sequence

    def text(self, data: bytes) -> str:
        """The text of ``data`` after what was held back; a sequence split at its end is held
        back in turn. (The compiled text path calls this for every chunk it must decode.)"""
        if self.rest:
            data = self.rest + data
        text, used = utf_8_decode(data, "replace", False)
        self.rest = data[used:] if used != len(data) else b""
        return text

    def feed(self, data: bytes) -> list[Event]:
        text = self.text(data)
        return [Token(text)] if text else []

    def close(self) -> list[Event]:
        rest, self.rest = self.rest, b""
        text = utf_8_decode(rest, "replace", True)[0] if rest else ""
        return [Token(text)] if text else []

    @property
    def pending(self) -> bool:
        """True while a multi-byte sequence split across chunks is buffered."""
        return bool(self.rest)


class TextEncoder:
    content_type = "text/plain; charset=utf-8"

    def open(self) -> bytes:
        return b""

    def encode_text(self, text: str) -> bytes:
        return text.encode()

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
