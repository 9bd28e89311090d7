"""Flow control: one client connection's write side, as a request and its stream see it
(:class:`FlowControl`), and the read side of either end's connection (:class:`ReadFlow`).

The front protocol makes one :class:`FlowControl` per connection and hands it (never itself) to
what it serves: the :class:`~proxy.front.request.FrontRequest` reads the transport through it, and
a stream's :class:`~proxy.stream.sinks.ClientSink` writes through it (``writing_paused``, ``drain()``,
``joins_eof``, ``eof_sent``). The protocol tells it when asyncio pauses or resumes writing and when
the connection is lost; nothing here calls back into the protocol. (uvicorn's httptools server
gives its per-request cycle the transport and such a flow-control object in the same way.)
"""

from __future__ import annotations

import asyncio


class FlowControl:
    """``transport`` is None once the connection is lost; ``eof_sent`` is the current response's
    (the sink sets it when it wrote the chunked terminator; the protocol resets it per request)."""

    __slots__ = ("transport", "writing_paused", "waiter", "eof_sent")

    joins_eof = True  # a stream's sink writes the chunked terminator with its last bytes

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.writing_paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.eof_sent = False

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def lost(self) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("the client went away"))

    async def drain(self) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the client went away")
        if self.writing_paused:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None


class ReadFlow:
    """The read side of a connection: reading paused and resumed, each at most once, and
    remembered (a timer does not count a paused connection as stalled). A mixin: the host class
    (the front's :class:`~proxy.front.protocol.FrontProtocol`, the backend's
    :class:`~proxy.upstream.connection.Connection`) has the ``transport`` and ``reading_paused``
    slots."""

    __slots__ = ()
    transport: asyncio.Transport | None
    reading_paused: bool

    def pause_reading(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
