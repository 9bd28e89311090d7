"""Connections the front gives to aiohttp's server (ops and jobs routes, chunked bodies, HTTP/1.0,
%-escaped paths), kept on the front's timers.

A hand-over is one request: the front hands aiohttp a head it has already parsed and validated,
rebuilt from its validated fields with ``Connection: close`` (:func:`~proxy.front.head.rebuild`), so
aiohttp never reads a head of its own and closes the connection after its answer. Meanwhile the
connection stays in the server's connection set as a :class:`HandedOver`, which aiohttp's
``RequestHandler`` sits behind: every read and every write re-arms an inactivity deadline
(``client_keepalive_timeout_s``; ``client_write_timeout_s`` while the client reads nothing), and
past it the connection is closed, then aborted. aiohttp's error answers are replaced by fixed ones
that never quote the request.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

try:
    from ..upstream.chunked import ChunkedParser
except ImportError:  # not built (no C compiler at install): a chunked request's bytes all go to aiohttp
    ChunkedParser = None

if TYPE_CHECKING:
    from .shared import Server


class QuietHandler(RequestHandler):
    """aiohttp's ``RequestHandler`` whose error answers never quote the request (nor log it)."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started")
        text = "400 Bad Request" if 400 <= status < 500 else "500 Internal Server Error"
        resp = web.Response(status=status, text=text, content_type="text/plain")
        resp.force_close()
        return resp


class QuietServer(web.Server):
    """aiohttp's ``web.Server`` making :class:`QuietHandler` s (also with ``server.front: aiohttp``)."""

    def __call__(self) -> RequestHandler:
        return QuietHandler(self, loop=self._loop, **self._kwargs)


class _Watched:
    """The transport as aiohttp sees it: writes re-arm the connection's deadline."""

    __slots__ = ("_transport", "_conn")

    def __init__(self, transport: asyncio.Transport, conn: HandedOver) -> None:
        self._transport = transport
        self._conn = conn

    def write(self, data: Any) -> None:
        self._conn.touch()
        self._transport.write(data)

    def writelines(self, data: Any) -> None:
        self._conn.touch()
        self._transport.writelines(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HandedOver(asyncio.Protocol):
    __slots__ = ("server", "transport", "handler", "deadline", "writing_paused", "closing_since", "budget",
                 "chunks")

    def __init__(self, server: Server, transport: asyncio.Transport, budget: int, chunked: bool = False) -> None:
        self.server = server
        self.transport = transport
        # aiohttp is given the one request and nothing after it: the ``budget`` bytes of its head
        # and a counted body, then a chunked body's bytes up to its last chunk (read by the
        # compiled chunked parser, llhttp's grammar, with no trailer limits of its own: aiohttp's
        # apply). What a client pipelines after it is dropped, as the connection closes after the
        # answer anyway; were it passed on, aiohttp's parser would refuse the bytes after a
        # ``Connection: close`` request, and the request with them. None: no limit (a chunked body
        # where the parser is not built, or malformed framing, which aiohttp's parser refuses too).
        self.budget: int | None = budget
        self.chunks = None
        if chunked:
            if ChunkedParser is None:
                self.budget = None
            else:
                self.chunks = ChunkedParser(bounded=False)
        self.handler = server.inner()
        self.deadline = 0.0
        self.writing_paused = False
        self.closing_since = 0.0
        server.connections.add(self)
        transport.set_protocol(self)
        self.handler.connection_made(_Watched(transport, self))  # type: ignore[arg-type]
        self.touch()

    def touch(self) -> None:
        # the backstop behind aiohttp's handler, whose own body timer answers a stalled body 408:
        # later than that answer could take (body timer + write timer), never sooner than keep-alive
        s = self.server
        self.deadline = s.loop.time() + (s.write_timeout_s if self.writing_paused
                                         else max(s.keepalive_timeout_s, s.body_timeout_s + s.write_timeout_s))

    def data_received(self, data: bytes) -> None:
        if self.budget is not None:
            data = self._within(data)
            if not data:
                return  # (and no re-arm: bytes past the request keep nothing alive)
        self.touch()
        self.handler.data_received(data)

    def _within(self, data: bytes) -> bytes:
        """What of ``data`` belongs to the request: the budget's bytes, then a chunked body's."""
        assert self.budget is not None
        take = min(len(data), self.budget)
        self.budget -= take
        chunks = self.chunks
        if chunks is not None and take < len(data):
            take += chunks.skip(data[take:])
            if chunks.failed:
                self.budget = None  # aiohttp reads the malformed framing and answers 400
                return data
            if chunks.done:
                self.chunks = None
        return data if take == len(data) else data[:take]

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.touch()
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.touch()
        self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.deadline = 0.0
        self.handler.connection_lost(exc)

    def expired(self, now: float) -> None:
        if self.closing_since:
            self.transport.abort()
            return
        self.closing_since = now
        self.deadline = now + self.server.write_timeout_s
        self.transport.close()

    def close_if_idle(self) -> None:
        pass  # aiohttp's pre_shutdown closes its own idle handlers
