"""flowgate's own HTTP/1.1 server protocol for the dialect routes (the public run and token API).

One instance per client connection. It reads request heads itself (:mod:`proxy.front.head`
validates them) and serves the requests that are plainly what the dialect routes take: HTTP/1.1, a
route template matched by method and path, no body or a ``Content-Length`` body. It calls the same
handler, under the same middlewares, that aiohttp would, and writes its answer straight to the
transport: a ``web.Response`` as one write, a stream as chunks through :class:`~proxy.stream.sinks.ClientSink`.
The request it hands the handler never sees the protocol: it gets the connection's
:class:`~proxy.http1.flow.FlowControl` and two callbacks (the body's ``want_body``, the request's
``start_stream``).

A request no route of the app takes (an unknown path: 404; a wrong method: 405) is answered here
too, through the app's middlewares, as aiohttp would answer it (:mod:`proxy.front.routing`). Every
other valid request (ops and jobs routes, chunked bodies, HTTP/1.0, %-escaped paths) is
*handed over* to aiohttp for that one request (:mod:`proxy.front.handover`); invalid
heads are answered here with fixed bodies (400, 431, 405 for CONNECT, 417) and never reach aiohttp.

A connection is always making progress or on a timer (:mod:`proxy.front.timers`):

- ``head``: the whole head within ``client_head_timeout_s`` of the connect (or of the first byte
  of a keep-alive request), else 408 (or a silent close if nothing came) and close;
- ``idle``: ``client_keepalive_timeout_s`` between requests;
- ``request``: the body is not read until the handler asks for it (after the credential, flow
  and admission checks; ``100 Continue`` is sent then); from then each read must come within
  ``client_body_timeout_s`` (else the handler's body read fails with 408); while the client
  reads nothing of the response (the transport paused writing) ``client_write_timeout_s``;
- ``linger``: an answer sent before the body was read (401, 413, 408, a bad head) is followed
  by a lingering close: the write side is shut, reads are discarded for ``client_lingering_s``;
- ``closing``: a closed transport that cannot flush is aborted after ``client_write_timeout_s``.

Any exception in a connection's path answers 400 (reading) or 500 (serving) if nothing was sent
yet, and closes the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .. import metrics as m
from ..http1.flow import FlowControl
from ..http1.replies import canned, date_header, header_lines, status_line
from ..stream.sinks import ClientSink
from .ending import CLOSING, HEAD, IDLE, LINGER, REQUEST, Endings
from .handover import HandedOver
from .head import HeadError, parse_head, rebuild
from .request import Body, FrontRequest

if TYPE_CHECKING:
    from .shared import Server

log = structlog.get_logger("flowgate.front")

MAX_HEAD = 8192  # pipelined bytes kept while a request is served before reading pauses
MAX_HEAD_BYTES = 32768  # a longer head is 431
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
ALLOW = b"Allow: GET, POST, OPTIONS\r\n"
NO_BODY = frozenset((204, 304))


class FrontProtocol(Endings, asyncio.Protocol):
    """One client connection (see the module docstring)."""

    __slots__ = ("server", "transport", "flow", "buf", "request", "task", "keep_alive", "remaining",
                 "streamed", "reading_paused", "deadline", "phase", "sent",
                 "body_wanted", "expect_continue", "body_failed", "unread")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.flow = FlowControl()  # the write side, as the request and its stream see it
        self.buf = b""
        self.request: FrontRequest | None = None  # the request being served
        self.task: asyncio.Task | None = None
        self.keep_alive = True
        self.remaining = 0  # body bytes of the current request still to come
        self.unread = False  # a response is done but the client has not read it: serve nothing more yet
        self.streamed = False
        self.reading_paused = False
        self.deadline = 0.0
        self.phase = HEAD
        self.sent = False  # something of the current response was written
        self.body_wanted = False
        self.expect_continue = False
        self.body_failed = False

    # --- asyncio ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.flow.transport = transport  # type: ignore[assignment]
        server = self.server
        full = len(server.connections) >= server.max_connections
        server.connections.add(self)
        server.ticker.ensure()
        if full:
            server.refused += 1
            m.child(m.CLIENT_ERRORS, "max_connections").inc()
            now = server.loop.time()
            if now >= server.refused_logged_at + 1.0:  # one line a second at most, with the count
                log.warning("connections_refused", reason="max_connections", count=server.refused)
                server.refused, server.refused_logged_at = 0, now
            self._write(canned(503))
            self._close()
            return
        self.deadline = server.loop.time() + server.head_timeout_s

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception as exc:  # (its message may quote request bytes: the class only, no traceback)
            log.error("front_read_failed", error=type(exc).__name__)
            self._fail(400)

    def _received(self, data: bytes) -> None:
        phase = self.phase
        if phase >= LINGER:
            return  # lingering or closing: discarded
        if self.request is not None:
            if self.remaining:
                n = self.remaining
                body, data = (data, b"") if len(data) <= n else (data[:n], data[n:])
                self.remaining -= len(body)
                self.request.content.feed(body)
                if not self.remaining:
                    self.request.content.finish()
                    self.deadline = self._write_deadline()
                elif self.body_wanted and not self.flow.writing_paused:
                    self.deadline = self.server.loop.time() + self.server.body_timeout_s
                if not data:
                    return
            self.buf += data  # pipelined: served once this response is done
            if len(self.buf) > MAX_HEAD:
                self.pause_reading()
            return
        if phase == IDLE:
            self.phase = HEAD
            self.deadline = self.server.loop.time() + self.server.head_timeout_s
        self.buf += data
        self._next()

    def eof_received(self) -> bool:
        return False  # the transport closes; a run in flight ends as the client's disconnect

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.deadline = 0.0
        self.phase = CLOSING
        self.transport = None
        self.flow.lost()
        if self.request is not None:
            if self.remaining:  # a body cut short is never taken for a whole one
                self.request.content.fail(ConnectionResetError("the client went away"))
            else:
                self.request.content.finish()
            self.request = None  # (its callbacks -> protocol stay; the two must not wait for the cyclic GC)
        if self.task is not None and not self.task.done():
            self.task.cancel()  # as aiohttp's handler_cancellation: the run sees the disconnect

    def pause_writing(self) -> None:
        self.flow.pause_writing()
        if self.phase == REQUEST:
            self.deadline = self.server.loop.time() + self.server.write_timeout_s

    def resume_writing(self) -> None:
        self.flow.resume_writing()  # a stream draining on it goes on
        if self.unread:  # the client read what it was sent: on to the next request
            self.unread = False
            self._done()
            return
        if self.phase == REQUEST:
            self.deadline = self._write_deadline()

    # --- the request's callbacks -------------------------------------------------------------------
    def start_stream(self, status: int, headers: Mapping[str, str]) -> ClientSink:
        """The status line and headers of a chunked response; its body goes through the sink. They
        leave in the sink's first write, with the body's first bytes when those are in hand in the
        same step (a prologue, or a backend body that came with its head): one write, not two."""
        assert self.transport is not None and not self.streamed
        head = [status_line(status), *header_lines(headers), b"Transfer-Encoding: chunked\r\n", date_header()]
        if not self.keep_alive or self.remaining:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        self.streamed = self.sent = True
        sink = ClientSink(self.transport, True, self.flow)
        sink.head = b"".join(head)  # leaves with the sink's first flush (the pump flushes it at once if nothing else)
        return sink

    def body_wanted_now(self) -> None:
        """The handler starts reading the body (the credential, flow and admission passed)."""
        self.body_wanted = True
        transport = self.transport
        if not self.remaining or transport is None or self.phase != REQUEST:
            return
        if self.expect_continue and not self.sent:
            transport.write(CONTINUE)
        self.expect_continue = False
        self.deadline = self._write_deadline()
        self.resume_reading()

    # --- requests ----------------------------------------------------------------------------------
    def _next(self) -> None:
        """Serve the request at the start of ``buf`` once its head is complete, or hand it over."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            end += 4
        else:
            end = buf.find(b"\n\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    self._reject(431, "head_too_large")
                return
            end += 2
        if end > MAX_HEAD_BYTES:
            self._reject(431, "head_too_large")
            return
        raw, rest = buf[:end], buf[end:]
        try:
            head = parse_head(raw)
        except HeadError as err:
            self._reject(err.status, err.reason)
            return
        path, _, query = head.url.partition("?")
        found = None
        if head.version == "1.1" and not head.chunked and "#" not in head.url:
            found = self.server.match(head.method, path)  # (a 404 or 405 too: proxy.front.routing)
        if found is None:
            rebuilt = rebuild(head)
            self._hand_over(rebuilt + rest, len(rebuilt) + (head.length or 0), head.chunked)
            return
        if head.expect is not None and head.expect.lower() != "100-continue":
            self._reject(417, "expect")
            return
        match_info, handler = found
        self.buf = b""
        self.phase = REQUEST
        self.deadline = 0.0
        self.keep_alive = head.keep_alive
        self.streamed = self.flow.eof_sent = self.sent = self.body_wanted = self.body_failed = False
        length = head.length
        body = Body(self.server.max_body_bytes, self.body_wanted_now)
        request = FrontRequest(head.method, path, query, CIMultiDictProxy(CIMultiDict(head.headers)), match_info,
                               length, body, self.server.app, self.flow, self.start_stream)
        self.request = request
        self.remaining = length or 0
        if not self.remaining:
            body.finish()
        else:
            self.expect_continue = head.expect is not None and not rest
        self.task = self.server.loop.create_task(self._serve(request, handler))
        if rest:
            self._received(rest)  # (a body that came with its head is the request's already)
        if self.remaining:
            self.pause_reading()  # nothing more is read until the handler wants the body

    def _reject(self, status: int, reason: str) -> None:
        """A head the front refuses: one short log line, a fixed answer, a lingering close."""
        log.info("client_error", status=status, reason=reason)
        m.child(m.CLIENT_ERRORS, reason).inc()
        self._write(canned(status, extra=ALLOW if status == 405 else b""))
        self._linger()

    async def _serve(self, request: FrontRequest, handler) -> None:
        try:
            try:
                resp = await handler(request)
            except web.HTTPException as exc:
                resp = exc
            except Exception:
                log.exception("handler_failed")
                resp = None
            if self.transport is None or self.phase >= LINGER:
                return
            if self.streamed:
                if not self.flow.eof_sent:  # the body was cut off: the client must see it incomplete
                    self._close()
                    return
            elif resp is None:
                self._fail(500)
                return
            else:
                try:
                    self._send(resp, request.method == "HEAD")
                except Exception as exc:
                    log.error("response_failed", error=type(exc).__name__)
                    self._fail(500)
                    return
            self._done()
        except asyncio.CancelledError:
            pass  # the client went away (or shutdown): the handler has settled the run
        except Exception as exc:
            log.error("front_serve_failed", error=type(exc).__name__)
            self._fail(500)

    def _send(self, resp: web.StreamResponse, head_only: bool = False) -> None:
        """A whole response in one write; ``head_only`` (an answer to ``HEAD``): its head alone,
        ``Content-Length`` the body's as the same ``GET`` would have it."""
        assert self.transport is not None
        body = resp.body if isinstance(resp, web.Response) else None
        if not isinstance(body, (bytes, bytearray, type(None))):
            log.error("handler_answer_unsupported", answer=type(resp).__name__)
            self._fail(500)
            return
        body = body or b""
        head = [status_line(resp.status, resp.reason), *header_lines(resp.headers), date_header()]
        if resp.status not in NO_BODY:
            head.append(b"Content-Length: %d\r\n" % len(body))
        else:
            body = b""
        if not self.keep_alive or self.remaining:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        if not head_only:
            head.append(body)
        self._write(b"".join(head))

    def _done(self) -> None:
        """The response is out: close, linger, or wait for (or serve) the next request."""
        transport = self.transport
        self.request = self.task = None
        if transport is None or self.phase >= LINGER:
            return
        if self.remaining:
            self._linger()  # a body not read to its end leaves the connection unusable
            return
        if not self.keep_alive or self.server.closing:
            self._close()
            return
        now = self.server.loop.time()
        if self.flow.writing_paused:
            # the client reads nothing of what it was sent (pipelining without reading): nothing
            # more is read or served until it does, and the write timer runs (aborting at expiry)
            self.unread = True
            self.phase = REQUEST
            self.deadline = now + self.server.write_timeout_s
            self.pause_reading()
            return
        self.resume_reading()
        if self.buf:
            self.phase = HEAD
            self.deadline = now + self.server.head_timeout_s
            try:
                self._next()
            except Exception as exc:
                log.error("front_read_failed", error=type(exc).__name__)
                self._fail(400)
        else:
            self.phase = IDLE
            self.deadline = now + self.server.keepalive_timeout_s

    def _hand_over(self, data: bytes, budget: int, chunked: bool = False) -> None:
        """Give the connection to aiohttp for one request (see :mod:`proxy.front.handover`)."""
        transport = self.transport
        self.server.connections.discard(self)
        self.transport, self.buf, self.deadline, self.phase = None, b"", 0.0, CLOSING
        self.flow.transport = None
        if transport is None or transport.is_closing():
            return
        if self.reading_paused:
            transport.resume_reading()
        HandedOver(self.server, transport, budget, chunked).data_received(data)
