"""Where the pump writes: the client's transport (a streaming run) or a buffer (a non-streaming
run). Both take bytes synchronously, so the pump can write from the upstream's ``data_received``.
"""

from __future__ import annotations

from aiohttp.abc import AbstractStreamWriter

SMALL = 2048  # below this a chunk and its framing are joined into one bytes object for one write


class ClientSink:
    """Body bytes for the client's transport, framed as HTTP/1.1 chunks when the response is
    chunked. ``write`` is synchronous, so the pump can write from the upstream's ``data_received``;
    ``flush`` sends what the pieces of one socket read produced in one write (one syscall, however
    many chunks the read held). The status line and headers are sent when it is made (after
    ``prepare()``; they never change after that)."""

    __slots__ = ("writer", "transport", "protocol", "chunked", "out")

    def __init__(self, writer: AbstractStreamWriter) -> None:
        writer.send_headers()  # type: ignore[attr-defined]
        self.writer = writer
        self.transport = writer.transport  # type: ignore[attr-defined]
        self.protocol = writer.protocol  # type: ignore[attr-defined]
        self.chunked = writer.chunked  # type: ignore[attr-defined]
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def flush(self) -> None:
        out, transport = self.out, self.transport
        if not out:
            return
        try:
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client went away")
            if not self.chunked:
                transport.writelines(out)
            elif len(out) == 1 and len(out[0]) < SMALL:
                transport.write(b"%x\r\n%b\r\n" % (len(out[0]), out[0]))
            else:
                framed: list[bytes] = []
                for data in out:
                    framed += (b"%x\r\n" % len(data), data, b"\r\n")
                transport.writelines(framed)
        finally:
            out.clear()  # the transport has taken (or refused) the bytes; the list serves again

    @property
    def paused(self) -> bool:
        return self.protocol.writing_paused

    async def drain(self) -> None:
        await self.writer.drain()


class BufferSink:
    """Collects the body of a non-streaming run."""

    __slots__ = ("parts",)
    paused = False

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def flush(self) -> None:
        return None

    async def drain(self) -> None:
        return None
