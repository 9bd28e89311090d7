"""Line splitting shared by the line-framed decoders (Langflow events, ndjson, SSE, AI SDK)."""

from __future__ import annotations


class LineBuffer:
    """Splits a byte stream into complete lines (``\\n``; a trailing ``\\r`` is dropped)."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""  # an incomplete last line (the compiled text path reads and sets it too)

    def feed(self, data: bytes) -> list[bytes]:
        if self.buf:
            data = self.buf + data
        end = data.rfind(b"\n")
        if end < 0:
            self.buf = data
            return []
        self.buf = data[end + 1:]
        lines = data[:end].split(b"\n")
        return [line[:-1] if line.endswith(b"\r") else line for line in lines]

    def rest(self) -> bytes:
        rest, self.buf = self.buf, b""
        return rest[:-1] if rest.endswith(b"\r") else rest

    @property
    def pending(self) -> bool:
        return bool(self.buf)


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
