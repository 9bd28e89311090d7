"""flowgate's own HTTP/1.1 server protocol for the dialect routes (the public run and token API).

One instance per client connection. It reads request heads itself (httptools validates them) and
serves the requests that are plainly what the dialect routes take: HTTP/1.1, a route template
matched by method and path, no body or a ``Content-Length`` body. It calls the same handler, under
the same middlewares, that aiohttp would, and writes its answer straight to the transport: a
``web.Response`` as one write, a stream as chunks through :class:`~proxy.sinks.ClientSink`.

Everything else (the ops and jobs routes, unknown paths, wrong methods, chunked request bodies,
HTTP/1.0, upgrades, malformed heads) is *handed over*: the connection's transport is given to an
aiohttp ``RequestHandler`` with the bytes received so far, and aiohttp serves it from then on.
Hand-over happens only between requests, so it never splits one.

Why it exists: per open stream aiohttp's server side keeps ~10 kB (its parser, message, payload
reader, handler task, response writer) and spends ~60 µs per request; this keeps about a third of
that and spends much less (README, "Benchmark"). Pipelined requests are served one after another;
bytes that arrive while one is served wait (reading pauses above ``MAX_HEAD``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

import httptools
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ..sinks import ClientSink
from .request import Body, FrontRequest

if TYPE_CHECKING:
    from . import FrontServer

log = structlog.get_logger("flowgate.front")

MAX_HEAD = 8192  # a longer head is aiohttp's to serve, or to refuse under its own limits (400/431)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
NO_BODY = frozenset((204, 304))
OWN_HEADERS = frozenset(("content-length", "transfer-encoding", "connection", "date"))

_date = [0, b""]


def date_header() -> bytes:
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, b"Date: %s\r\n" % formatdate(now, usegmt=True).encode()
    return _date[1]  # type: ignore[return-value]


class _Head:
    """httptools callbacks for one request head (made per request, dropped after)."""

    __slots__ = ("url", "headers", "complete")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self.complete = True


def _status_line(status: int, reason: str) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("latin-1"))


def _header_lines(headers: Mapping[str, str]) -> list[bytes]:
    lines = []
    for name, value in headers.items():
        if name.lower() in OWN_HEADERS:
            continue
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
    return lines


class FrontProtocol(asyncio.Protocol):
    """One client connection (see the module docstring). Also what a stream's sink drains on."""

    joins_eof = True  # a stream's sink writes the chunked terminator with its last bytes

    __slots__ = ("server", "transport", "buf", "request", "task", "keep_alive", "remaining", "writing_paused",
                 "waiter", "timer", "streamed", "eof_sent", "reading_paused")

    def __init__(self, server: FrontServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.request: FrontRequest | None = None  # the request being served
        self.task: asyncio.Task | None = None
        self.keep_alive = True
        self.remaining = 0  # body bytes of the current request still to come
        self.writing_paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.streamed = False
        self.eof_sent = False
        self.reading_paused = False

    # --- asyncio ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.request is not None:
            if self.remaining:
                n = self.remaining
                body, data = (data, b"") if len(data) <= n else (data[:n], data[n:])
                self.remaining -= len(body)
                self.request.content.feed(body)
                if not self.remaining:
                    self.request.content.finish()
                if not data:
                    return
            self.buf += data  # pipelined: served once this response is done
            if len(self.buf) > MAX_HEAD and not self.reading_paused and self.transport is not None:
                self.reading_paused = True
                self.transport.pause_reading()
            return
        self.buf += data
        self._next()

    def eof_received(self) -> bool:
        return False  # the transport closes; a run in flight ends as the client's disconnect

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._disarm()
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("the client went away"))
        if self.request is not None:
            self.request.content.finish()
            self.request = None  # (request -> protocol stays; the two must not wait for the cyclic GC)
        if self.task is not None and not self.task.done():
            self.task.cancel()  # as aiohttp's handler_cancellation: the run sees the disconnect

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # --- what a stream's ClientSink calls ----------------------------------------------------------
    async def drain(self) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the client went away")
        if self.writing_paused:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    def start_stream(self, status: int, headers: Mapping[str, str]) -> ClientSink:
        """Send the status line and headers of a chunked response; its body goes through the sink."""
        assert self.transport is not None and not self.streamed
        head = [_status_line(status, HTTPStatus(status).phrase), *_header_lines(headers),
                b"Transfer-Encoding: chunked\r\n", date_header()]
        if not self.keep_alive:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        self.transport.write(b"".join(head))
        self.streamed = True
        return ClientSink(self.transport, True, self)

    # --- requests ----------------------------------------------------------------------------------
    def _next(self) -> None:
        """Serve the request at the start of ``buf`` once its head is complete, or hand over."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD or b"\n\n" in buf:
                self._hand_over()
            return
        self._disarm()
        if end + 4 > MAX_HEAD:
            self._hand_over()
            return
        head, rest = buf[:end + 4], buf[end + 4:]
        parsed = _Head()
        parser = httptools.HttpRequestParser(parsed)
        try:
            parser.feed_data(head)
        except httptools.HttpParserError:
            self._hand_over()  # aiohttp answers it with its 400
            return
        if not parsed.complete or parser.should_upgrade() or parser.get_http_version() != "1.1":
            self._hand_over()
            return
        url = parsed.url.decode("latin-1")
        path, _, query = url.partition("?")
        method = parser.get_method().decode("ascii")
        found = self.server.match(method, path) if "#" not in url else None
        if found is None:
            self._hand_over()
            return
        match_info, handler = found
        headers = CIMultiDict(parsed.headers)
        if "Transfer-Encoding" in headers:
            self._hand_over()
            return
        expect = headers.get("Expect")
        if expect is not None and expect.lower() != "100-continue":
            self._hand_over()  # aiohttp answers 417
            return
        raw_length = headers.get("Content-Length")
        length = int(raw_length) if raw_length is not None else None
        self.buf = b""
        self.keep_alive = parser.should_keep_alive()
        self.streamed = self.eof_sent = False
        body = Body(self.server.max_body_bytes)
        request = FrontRequest(method, path, query, CIMultiDictProxy(headers), match_info, length, body,
                               self.server.app, self)
        self.request = request
        self.remaining = length or 0
        if not self.remaining:
            body.finish()
        elif expect is not None and not rest and self.transport is not None:
            self.transport.write(CONTINUE)
        self.task = asyncio.get_running_loop().create_task(self._serve(request, handler))
        if rest:
            self.data_received(rest)

    async def _serve(self, request: FrontRequest, handler) -> None:
        try:
            try:
                resp = await handler(request)
            except web.HTTPException as exc:
                resp = exc
            except Exception:
                log.exception("handler_failed")
                resp = web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
                if self.streamed:
                    resp = None
            transport = self.transport
            if transport is None:
                return
            if self.streamed:
                if not self.eof_sent:  # the body was cut off: the client must see it incomplete
                    transport.close()
                    return
            else:
                self._send(resp)
            self._done()
        except asyncio.CancelledError:
            pass  # the client went away (or shutdown): the handler has settled the run

    def _send(self, resp: web.StreamResponse | None) -> None:
        assert self.transport is not None
        body = resp.body if isinstance(resp, web.Response) else None
        if resp is None or not isinstance(body, (bytes, bytearray, type(None))):
            log.error("handler_answer_unsupported", answer=type(resp).__name__)
            resp, body = web.Response(status=500, text="500 Internal Server Error"), None
            body = resp.body
        body = body or b""
        head = [_status_line(resp.status, resp.reason), *_header_lines(resp.headers), date_header()]
        if resp.status not in NO_BODY:
            head.append(b"Content-Length: %d\r\n" % len(body))
        else:
            body = b""
        if not self.keep_alive or self.remaining:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        head.append(body)
        self.transport.write(b"".join(head))

    def _done(self) -> None:
        """The response is out: close, or wait for (or serve) the next request."""
        transport = self.transport
        self.request = self.task = None
        if transport is None:
            return
        if not self.keep_alive or self.remaining or self.server.closing:
            transport.close()  # (a body not read to its end leaves the connection unusable)
            return
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        if self.buf:
            self._next()
        else:
            self._arm()

    def _hand_over(self) -> None:
        """Give the connection to aiohttp with every byte received so far."""
        transport, data = self.transport, self.buf
        self._disarm()
        self.server.connections.discard(self)
        self.transport, self.buf = None, b""
        if transport is None or transport.is_closing():
            return
        handler = self.server.inner()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.reading_paused:
            transport.resume_reading()
        if data:
            handler.data_received(data)

    # --- idle connections --------------------------------------------------------------------------
    def _arm(self) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(self.server.keepalive_timeout_s, self._idle_timeout)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _idle_timeout(self) -> None:
        self.timer = None
        if self.request is None and self.transport is not None:
            self.transport.close()

    def close_if_idle(self) -> None:
        if self.request is None and self.transport is not None:
            self.transport.close()
