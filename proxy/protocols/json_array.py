"""One top-level JSON array streamed element by element: ``[``, elements, ``,``, ``]``.

The decoder emits each element as soon as it is complete, scanning with regex jumps between
structural characters rather than byte by byte; string bodies are skipped to the next quote or
backslash. Profitbase's output is this format (read by .NET's
``JsonSerializer.DeserializeAsyncEnumerable``); it has no error event, so the pump aborts the body
when a run fails and the client sees invalid JSON, never a clean end.
"""

from __future__ import annotations

import re

import orjson

from ._lines import MAX_LINE_BYTES
from .events import End, Error, Event, Item, Token
from .ndjson import element_events

_STRUCT = re.compile(rb'[\[\]{}",]')
_IN_STRING = re.compile(rb'["\\]')
_WS = b" \t\r\n"

_BEFORE, _INSIDE, _DONE, _BROKEN = range(4)
MAX_ELEMENT_BYTES = MAX_LINE_BYTES  # the longest element a backend may send (held until it ends)


class JsonArrayDecoder:
    __slots__ = ("_buf", "_pos", "_start", "_depth", "_in_str", "_state")

    def __init__(self) -> None:
        self._buf = bytearray()  # what is read of the element (or the space) that spans reads
        self._pos = 0  # scan position in _buf
        self._start: int | None = None  # start of the element being read
        self._depth = 0  # nesting inside the current element
        self._in_str = False
        self._state = _BEFORE

    @property
    def pending(self) -> bool:
        return self._start is not None or (self._state == _BEFORE and bool(self._buf.strip()))

    def feed(self, data: bytes) -> list[Event]:
        if self._state >= _DONE:
            return []
        out: list[Event] = []
        if self._buf:  # an element that spans reads: extended in place (a copy per read would be quadratic)
            buf = self._buf
            buf += data
            if len(buf) > MAX_ELEMENT_BYTES:
                return self._broken(out, f"a backend JSON element is over {MAX_ELEMENT_BYTES} bytes")
        else:
            buf = data
        i, n = self._pos, len(buf)
        while i < n:
            if self._state == _BEFORE:
                while i < n and buf[i] in _WS:
                    i += 1
                if i == n:
                    break
                if buf[i] != 0x5B:  # "["
                    return self._broken(out, "the backend body is not a JSON array")
                self._state = _INSIDE
                i += 1
                continue
            if self._in_str:
                m = _IN_STRING.search(buf, i)
                if m is None:
                    i = n
                    break
                if m.group() == b"\\":
                    if m.end() >= n:  # the escaped character has not arrived yet
                        i = m.start()
                        break
                    i = m.end() + 1
                else:
                    self._in_str = False
                    i = m.end()
                continue
            if self._start is None:
                while i < n and buf[i] in _WS:
                    i += 1
                if i == n:
                    break
                c = buf[i]
                if c == 0x5D:  # "]": the array ends
                    self._state = _DONE
                    out.append(End(None))
                    break
                if c == 0x2C:  # "," between elements
                    i += 1
                    continue
                self._start = i
            m = _STRUCT.search(buf, i)
            if m is None:
                i = n
                break
            c, j = m.group(), m.start()
            i = m.end()
            if c == b'"':
                self._in_str = True
            elif c in (b"[", b"{"):
                self._depth += 1
            elif self._depth:
                if c in (b"]", b"}"):
                    self._depth -= 1
            elif c == b"}":
                return self._broken(out, "the backend sent malformed JSON")
            else:  # "," or "]" at element level: the element is complete
                if not self._element(buf[self._start:j], out):
                    return out
                self._start = None
                if c == b"]":
                    self._state = _DONE
                    out.append(End(None))
                    break
        cut = self._start if self._start is not None else i
        if buf is self._buf:
            del buf[:cut]
        elif cut < n:
            self._buf += buf[cut:]  # (it was empty)
        self._pos = i - cut
        if self._start is not None:
            self._start = 0
        return out

    def _element(self, raw: bytes, out: list[Event]) -> bool:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._broken(out, "the backend sent malformed JSON")
            return False
        element_events(obj, out)
        return True

    def _broken(self, out: list[Event], message: str) -> list[Event]:
        self._state = _BROKEN
        self._buf = bytearray()
        self._start = None
        out.append(Error(message))
        return out

    def close(self) -> list[Event]:
        if self._state in (_BEFORE, _INSIDE):
            self._state = _BROKEN
            return [Error("backend stream ended inside the JSON array")]
        return []


class JsonArrayEncoder:
    content_type = "application/json; charset=utf-8"

    __slots__ = ("_first",)

    def __init__(self) -> None:
        self._first = True

    def open(self) -> bytes:
        return b"["

    def encode_text(self, text: str) -> bytes:
        return self._element(orjson.dumps(text))

    def encode(self, event: Event) -> bytes:
        t = type(event)
        if t is Token:
            body = orjson.dumps(event.text)  # type: ignore[union-attr]
        elif t is Item:
            body = orjson.dumps(event.obj)  # type: ignore[union-attr]
        else:
            return b""
        return self._element(body)

    def _element(self, body: bytes) -> bytes:
        if self._first:
            self._first = False
            return body
        return b"," + body

    def close(self) -> bytes:
        return b"]"

    def error(self, message: str) -> bytes | None:
        return None
