"""Server-Sent Events: ``event:``/``data:`` fields, events end at a blank line.

``data: [DONE]`` is the end; an ``error`` event is an Error; JSON data in OpenAI's chat or
completion chunk shape yields Tokens (and Usage when a chunk carries ``usage``); other JSON is an
Item, non-JSON data a Token.
"""

from __future__ import annotations

import orjson

from ._lines import MAX_LINE_BYTES, LineDecoder
from .events import End, Error, Event, Item, Token, usage_from


class SseDecoder(LineDecoder):
    """``lines``, ``_data`` and ``_event`` are read by the compiled text path
    (:mod:`proxy.stream.tokenlines`), which takes a whole event of text itself only when nothing
    is pending here, and gives this decoder every other line (:meth:`line`)."""

    __slots__ = ("_event", "_data", "_size")

    def __init__(self) -> None:
        super().__init__()
        self._event = ""
        self._data: list[str] = []
        self._size = 0  # the data lines' bytes: one event is bounded as one line is

    def close(self) -> list[Event]:
        out = super().close()
        self._dispatch(out)
        return out

    @property
    def pending(self) -> bool:
        return self.lines.pending or bool(self._data)

    def line(self, line: bytes, out: list[Event]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._size += len(value)
            if self._size > MAX_LINE_BYTES:  # data lines without the blank line that ends them
                self._data, self._size = [], 0
                out.append(Error(f"a backend event is over {MAX_LINE_BYTES} bytes"))
                return
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")

    def _dispatch(self, out: list[Event]) -> None:
        if not self._data:
            self._event = ""
            return
        data, event = "\n".join(self._data), self._event
        self._data, self._event, self._size = [], "", 0
        if data == "[DONE]":
            out.append(End(None))
            return
        if event == "error":
            out.append(Error(data or "backend error"))
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            out.append(Token(data))
            return
        if isinstance(obj, dict) and isinstance(obj.get("choices"), list):
            for choice in obj["choices"][:1]:
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                if isinstance(text, str) and text:
                    out.append(Token(text))
            usage = usage_from(obj.get("usage"))
            if usage is not None:
                out.append(usage)
            return
        out.append(Item(obj))
        if isinstance(obj, dict):
            usage = usage_from(obj.get("usage"))
            if usage is not None:
                out.append(usage)
