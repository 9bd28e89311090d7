"""How a front connection ends: its timers' expiry, a lingering close, a close that must flush.

A mixin of :class:`~proxy.front.protocol.FrontProtocol` (the states and timers are described in
that module's docstring); kept apart so that the protocol module holds the request path only.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from .. import metrics as m
from ..errors import RequestTimeout
from ..http1.flow import ReadFlow
from ..http1.replies import canned

if TYPE_CHECKING:
    from ..http1.flow import FlowControl
    from .request import FrontRequest
    from .shared import Server

log = structlog.get_logger("flowgate.front")

HEAD, IDLE, REQUEST, LINGER, CLOSING = range(5)


class Endings(ReadFlow):
    __slots__ = ()

    server: Server
    transport: asyncio.Transport | None
    phase: int
    deadline: float
    buf: bytes
    request: FrontRequest | None
    task: asyncio.Task | None
    remaining: int
    flow: FlowControl
    body_wanted: bool
    body_failed: bool
    sent: bool

    def _write_deadline(self) -> float:
        """The deadline while a request is served: the body timer while its body is read, the
        write timer while the client reads nothing, none while the handler works."""
        server = self.server
        if self.flow.writing_paused:
            return server.loop.time() + server.write_timeout_s
        if self.remaining and self.body_wanted:
            return server.loop.time() + server.body_timeout_s
        return 0.0

    def expired(self, now: float) -> None:
        phase = self.phase
        if self.transport is None:
            self.deadline = 0.0
        elif phase == HEAD:
            if self.buf:
                log.info("client_error", status=408, reason="head_timeout")
                m.child(m.CLIENT_ERRORS, "head_timeout").inc()
                self._write(canned(408))
            self._close()
        elif phase == REQUEST and not self.flow.writing_paused and not self.body_failed and self.request is not None:
            log.info("client_error", status=408, reason="body_timeout")
            m.child(m.CLIENT_ERRORS, "body_timeout").inc()
            self.body_failed = True  # the handler answers 408; if it cannot, the next expiry aborts
            self.deadline = now + self.server.write_timeout_s
            self.request.content.fail(RequestTimeout("the request body did not arrive in time"))
        elif phase in (IDLE, LINGER):
            self._close()
        else:  # the client reads nothing, or a closed transport cannot flush
            self.transport.abort()

    def _close(self) -> None:
        self.phase = CLOSING
        if self.transport is not None:
            self.deadline = self.server.loop.time() + self.server.write_timeout_s
            self.transport.close()

    def _linger(self) -> None:
        """Shut the write side, discard what the client still sends, close after the lingering time."""
        transport = self.transport
        if transport is None:
            return
        self.phase = LINGER
        self.buf = b""
        self.deadline = self.server.loop.time() + self.server.lingering_s
        self.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        else:
            self._close()

    def _fail(self, status: int) -> None:
        """Answer ``status`` if nothing of a response was sent yet, and close."""
        if self.transport is None or self.phase >= LINGER:
            return
        if not self.sent:
            self._write(canned(status))
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.sent = True
            self.transport.write(data)

    def close_if_idle(self) -> None:
        if self.request is None and self.transport is not None:
            self._close()

