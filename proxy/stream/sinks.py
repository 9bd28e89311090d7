"""Where the pump writes: the client's transport (a streaming run) or a buffer (a non-streaming
run). Both take bytes synchronously, so the pump can write from the upstream's ``data_received``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from aiohttp.abc import AbstractStreamWriter
from aiohttp.web import BaseRequest, StreamResponse

from ..http1.chunks import JOIN_BELOW, framed, one_chunk
from ..protocols.events import End, Event, Item, Token, item_text


class Outlet(Protocol):
    """What a :class:`ClientSink` writes through: flowgate's front connection
    (:class:`proxy.http1.flow.FlowControl`) or :class:`AiohttpStream` for a response aiohttp
    prepared. ``joins_eof`` True: the sink writes the chunked terminator with its last bytes and
    sets ``eof_sent``; False: ``write_eof()`` ends the response."""

    writing_paused: bool
    joins_eof: bool
    eof_sent: bool

    async def drain(self) -> None: ...

    async def write_eof(self) -> None: ...


class ClientSink:
    """Body bytes for the client's transport, framed as HTTP/1.1 chunks when the response is
    chunked. ``write`` is synchronous, so the pump can write from the upstream's ``data_received``;
    ``flush`` sends what the pieces of one socket read produced in one write (one syscall, however
    many chunks the read held). On flowgate's front the status line and headers wait in ``head`` and
    leave with the first flush; on aiohttp's they are sent when it is made.

    ``conn`` is the :class:`Outlet` the response is written through."""

    __slots__ = ("transport", "chunked", "conn", "out", "head", "ended")

    def __init__(self, transport, chunked: bool, conn: Outlet) -> None:
        self.transport = transport
        self.chunked = chunked
        self.conn = conn
        self.out: list[bytes] = []
        self.head: bytes | None = None  # the response head, when it has not left yet: the next flush sends it first
        self.ended = False  # the body's end was written (or handed to aiohttp)

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def flush(self) -> bool:
        """Write what is pending (after the head, when it has not left yet: one write);
        True when the client's transport is above its high-water mark."""
        out, transport, head = self.out, self.transport, self.head
        if not out and head is None:
            return self.conn.writing_paused
        self.head = None
        try:
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client went away")
            if head is None and self.chunked and len(out) == 1 and len(out[0]) < JOIN_BELOW:
                transport.write(one_chunk(out[0]))
            else:
                pieces = framed(out) if self.chunked else out
                transport.writelines(pieces if head is None else [head, *pieces])
        finally:
            out.clear()  # the transport has taken (or refused) the bytes; the list serves again
        return self.conn.writing_paused

    @property
    def joins_eof(self) -> bool:
        """Whether the body's end is this sink's to write (flowgate's front: a zero-length chunk
        with the last bytes), not aiohttp's."""
        return self.chunked and self.conn.joins_eof

    async def drain(self) -> None:
        await self.conn.drain()

    def end_now(self) -> bool:
        """On flowgate's front: what is pending and the chunked terminator (a zero-length chunk) in
        one write, now; True when it did. Elsewhere False: aiohttp ends its response itself (:meth:`end`)."""
        if not self.joins_eof:
            return False
        self.ended = True
        self.out.append(b"")
        self.flush()
        self.conn.eof_sent = True
        return True

    async def end(self) -> None:
        """Send what is pending and end the body (once)."""
        if self.ended or self.end_now():
            return
        self.ended = True
        self.flush()
        await self.conn.write_eof()


class AiohttpStream:
    """A response prepared by aiohttp, as a :class:`ClientSink` writes through it."""

    __slots__ = ("writer", "resp")
    joins_eof = False

    def __init__(self, writer: AbstractStreamWriter, resp: StreamResponse) -> None:
        self.writer, self.resp = writer, resp

    @property
    def writing_paused(self) -> bool:
        return self.writer.protocol.writing_paused  # type: ignore[attr-defined]

    async def drain(self) -> None:
        await self.writer.drain()

    async def write_eof(self) -> None:
        await self.resp.write_eof()


# What a handler returns for a stream that flowgate's front has already sent (the front ignores it;
# the stream keeps no response object of its own, nor a second copy of its headers).
SENT = StreamResponse()


async def open_client(request, status: int, headers: Mapping[str, str]) -> tuple[ClientSink, StreamResponse]:
    """Send a chunked response's status line and headers to the client; its body then goes through
    the sink. Returns the sink and what the handler returns once the stream is over.

    A request is served by one of two servers, and each says how a stream opens on it: aiohttp's
    (a ``web.BaseRequest``) through a prepared ``StreamResponse``; flowgate's front (a
    :class:`proxy.front.request.FrontRequest`) through the ``start_stream`` callable it carries."""
    if not isinstance(request, BaseRequest):
        return request.start_stream(status, headers), SENT
    resp = StreamResponse(status=status, headers=headers)
    writer = await resp.prepare(request)
    assert writer is not None
    writer.send_headers()  # type: ignore[attr-defined]
    return ClientSink(writer.transport, writer.chunked, AiohttpStream(writer, resp)), resp  # type: ignore[attr-defined]


class BufferSink:
    """Collects the body of a non-streaming run, and the generated text and the backend's end
    result as its events go by (what a dialect's non-streaming answer is made of)."""

    __slots__ = ("parts", "texts", "result")

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.texts: list[str] = []
        self.result: object = None

    def take(self, ev: Event) -> None:
        t = type(ev)
        if t is Token:
            self.texts.append(ev.text)  # type: ignore[union-attr]
        elif t is Item:
            text = item_text(ev.obj)  # type: ignore[union-attr]
            if text:
                self.texts.append(text)
        elif t is End:
            self.result = ev.result  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def flush(self) -> bool:
        return False

    async def drain(self) -> None:
        return None
