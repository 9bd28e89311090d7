"""Line splitting shared by the line-framed decoders (Langflow events, ndjson, SSE, AI SDK)."""

from __future__ import annotations


class LineBuffer:
    """Splits a byte stream into complete lines (``\\n``; a trailing ``\\r`` is dropped)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        if self._buf:
            data = self._buf + data
        end = data.rfind(b"\n")
        if end < 0:
            self._buf = data
            return []
        self._buf = data[end + 1:]
        lines = data[:end].split(b"\n")
        return [line[:-1] if line.endswith(b"\r") else line for line in lines]

    def rest(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest[:-1] if rest.endswith(b"\r") else rest

    @property
    def pending(self) -> bool:
        return bool(self._buf)


class LineDecoder:
    """Base of a line-framed decoder: implement ``_line(line, out)`` (append the line's events to
    ``out``); extend ``close`` for what the end of the stream means in your protocol."""

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines = LineBuffer()

    def _line(self, line: bytes, out: list) -> None:
        raise NotImplementedError

    def feed(self, data: bytes) -> list:
        out: list = []
        for line in self._lines.feed(data):
            self._line(line, out)
        return out

    def close(self) -> list:
        out: list = []
        rest = self._lines.rest()
        if rest:
            self._line(rest, out)
        return out

    @property
    def pending(self) -> bool:
        return self._lines.pending
