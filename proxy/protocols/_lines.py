"""Line splitting shared by the line-framed decoders (Langflow events, ndjson, SSE, AI SDK).

A line is bounded (:data:`MAX_LINE_BYTES`) and read in linear time: the pieces of a line that
spans many reads are kept as they came and joined once, when its newline arrives (joining them at
every read would copy the line once per read: a backend sending one endless line in small pieces
would cost the gateway quadratic CPU and unbounded memory)."""

from __future__ import annotations

from .events import Error

# The longest line a backend may send (its pieces are held until the newline). Langflow's `end`
# event carries the whole run result, the longest line any protocol here sends in practice.
MAX_LINE_BYTES = 16 << 20


class LineTooLong(ValueError):
    """A line is over MAX_LINE_BYTES: the stream is the backend's error."""

    def __init__(self) -> None:
        super().__init__(f"a backend event line is over {MAX_LINE_BYTES} bytes")


class LineBuffer:
    """Splits a byte stream into complete lines (``\\n``; a trailing ``\\r`` is dropped).

    ``buf`` is the incomplete last line's first piece and ``parts`` its later pieces (None: none),
    none of which holds a newline; ``buf`` is empty only when nothing is pending. The compiled
    text path reads them too: :meth:`hold` a piece without a newline, :meth:`joined` once one
    arrives."""

    __slots__ = ("buf", "parts", "size")

    def __init__(self) -> None:
        self.buf = b""
        self.parts: list[bytes] | None = None
        self.size = 0  # bytes pending

    def feed(self, data: bytes) -> list[bytes]:
        end = data.rfind(b"\n")
        if end < 0:
            self.hold(data)
            return []
        if self.buf:
            data = self.joined(data)
            end = data.rfind(b"\n")
        self.buf = data[end + 1:]
        self.size = len(self.buf)
        lines = data[:end].split(b"\n")
        return [line[:-1] if line.endswith(b"\r") else line for line in lines]

    def hold(self, data: bytes) -> None:
        """A piece without a newline; raises :class:`LineTooLong` (and keeps nothing) past the limit."""
        if not data:
            return
        self.size += len(data)
        if self.size > MAX_LINE_BYTES:
            self.buf, self.parts, self.size = b"", None, 0
            raise LineTooLong
        if not self.buf:
            self.buf = data
        elif self.parts is None:
            self.parts = [data]
        else:
            self.parts.append(data)

    def joined(self, data: bytes) -> bytes:
        """What is pending, then ``data`` (which holds a newline), in one copy; nothing is pending after."""
        parts, buf = self.parts, self.buf
        self.buf, self.parts, self.size = b"", None, 0
        if parts is None:
            return buf + data
        parts.insert(0, buf)
        parts.append(data)
        return b"".join(parts)

    def rest(self) -> bytes:
        rest = self.joined(b"") if self.buf else b""
        return rest[:-1] if rest.endswith(b"\r") else rest

    @property
    def pending(self) -> bool:
        return bool(self.buf)


class LineDecoder:
    """Base of a line-framed decoder: implement ``line(line, out)`` (append the line's events to
    ``out``); extend ``close`` for what the end of the stream means in your protocol. ``lines``
    is shared with the compiled text path where it reads the protocol (AI SDK parts)."""

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines = LineBuffer()

    def line(self, line: bytes, out: list) -> None:
        raise NotImplementedError

    def too_long(self, exc: LineTooLong, out: list) -> None:
        """A line over the limit (nothing of it is kept): the stream is the backend's error."""
        out.append(Error(str(exc)))

    def feed(self, data: bytes) -> list:
        out: list = []
        try:
            lines = self.lines.feed(data)
        except LineTooLong as exc:
            self.too_long(exc, out)
            return out
        for line in lines:
            self.line(line, out)
        return out

    def close(self) -> list:
        out: list = []
        rest = self.lines.rest()
        if rest:
            self.line(rest, out)
        return out

    @property
    def pending(self) -> bool:
        return self.lines.pending
