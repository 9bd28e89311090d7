"""One upstream connection and the response in flight on it; response bodies are *pushed*.

Why not aiohttp's ``ClientSession``: on the hot path its ``StreamReader`` and ``iter_any()`` cost a
task wake-up, a deque and several Python frames per chunk, and its client objects about 8 kB per
open stream (bench/: ``make bench``). Here a response body goes from the socket's
``data_received`` through httptools' C parser (llhttp, strict) straight to a consumer,
synchronously, one call per body piece.

How to use it (``forward.py`` and ``pump.py`` are the callers)::

    conn = await pool.request(endpoint, b"POST", headers, body)   # returns once the headers are in
    conn.status, conn.headers    # the headers the gateway reads (READ_HEADERS), lower-case name -> value
    conn.attach(consumer)        # consumer.body(bytes) per piece, then consumer.end() or .broken(msg);
                                 # consumer.flush() after each socket read's pieces
    conn.pause() / conn.resume() # stop / restart reading the socket (back-pressure)
    conn.release()               # a fully read keep-alive response: the connection goes back to the pool
    conn.close()                 # anything else: drop the connection now (the backend sees the close)

The parser reads a response's head and not one byte more; a chunked body's bytes (nearly every
streaming backend's) then wait for the consumer, and :class:`~proxy.upstream.chunked.ChunkedBody`
(compiled) reads them as the socket's protocol, calling the consumer exactly as the parser would,
and hands the connection back complete. Other bodies, and every body where the compiled module was
not built, go through the parser.

Exactly one response per request (RFC 9112 section 9.3; nginx and h11 do the same): interim 1xx
heads are read past (101 is refused: the gateway never asks for an upgrade), and any byte after the
final response's framing ends, or while the connection sits idle in the pool, drops the connection:
it never reaches a consumer and the connection is never reused. llhttp itself skips empty lines
between messages: so a body of known length is counted, and a chunked body's exact end is
:class:`~proxy.upstream.chunked.ChunkedBody`'s (without the compiled module such empty lines pass:
nothing in them reaches a client or a later request).

Limits (:class:`~proxy.upstream.limits.Limits`): the head's bytes are counted before they are
parsed and its header lines as they are, so an oversized head fails after at most one read past
the limit (:class:`UpstreamError`: 502); the head and the body are on a timer
(:mod:`proxy.upstream.timer`; :class:`UpstreamTimeout`: 504); ``body_limit`` (a non-streaming
run's) caps the body's bytes: beyond it the connection is dropped at once.

Bodies are never decompressed (the gateway asks for ``identity`` and meters what it reads). The
pool retries a request once on a new connection only when a pooled one was closed before one byte
of a response had arrived (the backend never saw it).
"""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Protocol

import httptools

from ..http1.flow import ReadFlow
from .consumer import BodyConsumer, Capped
from .errors import UpstreamError, UpstreamTimeout
from .limits import MALFORMED, TIMEOUT, Limits
from .timer import ResponseTimer

try:
    from .chunked import ChunkedBody
except ImportError:  # not built (no C compiler at install): llhttp reads chunked bodies too
    ChunkedBody = None

# The backend's response headers the gateway looks at (it never forwards them): an open stream
# keeps only these.
READ_HEADERS = frozenset({b"flow-job-id", b"content-length", b"transfer-encoding"})
# A backend's job id is recorded on the job record and in logs (never a key, never sent on): only
# a plain token is kept.
BACKEND_JOB_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class _Stop(Exception):
    """Raised in a parser callback: llhttp stops at once (a limit, or a byte after the response)."""


class Slots(Protocol):
    """What a connection asks of the pool it belongs to."""

    def _put(self, conn: Connection) -> None: ...

    def _discard(self, conn: Connection) -> None: ...


class Connection(ResponseTimer, ReadFlow, asyncio.Protocol):
    """One upstream connection and the response in flight on it (see the module docstring)."""

    __slots__ = ("pool", "key", "transport", "parser", "status", "headers", "consumer", "early", "complete",
                 "failed", "headers_in", "waiter", "received", "reused", "idle_since", "delimited", "keep_alive",
                 "tail", "raw", "limits", "head_bytes", "header_count", "timer", "deadline", "mark", "progress_at",
                 "reading_paused", "taken", "kind", "body_limit", "length_end")

    def __init__(self, pool: Slots, key: tuple[str, str, int]) -> None:
        self.pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.reused = False
        self.idle_since = 0.0
        self.limits = Limits()
        self.timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.consumer: BodyConsumer | None = None
        self.early: list[bytes] | None = None  # body pieces that arrived before attach()
        self.complete = False
        self.failed: str | None = None
        self.kind: str | None = None  # why it failed: TIMEOUT, TOO_LARGE, MALFORMED (None: a plain break)
        self.headers_in = False
        self.waiter: asyncio.Future[None] | None = None
        self.received = 0
        self.delimited = False  # the body has a length or is chunked (else it ends at EOF)
        self.keep_alive = False  # read when the message completes (the parser resets after it)
        self.tail = b""  # the end of the head read so far (its blank line may span two reads)
        self.raw: list[bytes] | None = None  # a chunked body's bytes, unparsed, until attach()
        self.head_bytes = 0
        self.header_count = 0
        self.length_end = -1  # for a body of known length: the byte count at its end
        self.deadline = 0.0  # when the head must be in
        self.mark = 0  # bytes read as of the timer's last look
        self.progress_at = 0.0  # when the timer last saw the count move (or the connection paused)
        self.reading_paused = False
        self.taken = None  # the ChunkedBody reading the socket while a chunked body is read
        self.body_limit: int | None = None  # most body bytes accepted (a non-streaming run's buffer)

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass

    def data_received(self, data: bytes) -> None:
        if self.parser is None or self.complete:  # idle in the pool, or after the response
            self.refuse_extra()
            return
        self.received += len(data)
        if self.raw is not None:  # a chunked body waiting for its consumer
            self.raw.append(data)
            return
        if not self.headers_in:
            data = self._head(data)
            if self.raw is not None:
                if data:
                    self.raw.append(data)
                return
        if data and self.failed is None:
            self._feed(data)
            if self.complete and self.received != self.length_end >= 0:
                self.refuse_extra()  # what llhttp skips after a message (empty lines) is extra here too
        if self.consumer is not None:
            self.consumer.flush()  # what this read produced leaves in one write

    def _head(self, data: bytes) -> bytes:
        """Feed the parser the response head (interim ones too) and not one byte more; returns the
        bytes after it. Its bytes are counted before they are parsed (``max_head_bytes``). A
        chunked body's bytes then wait, unparsed, for the consumer (``attach``)."""
        while not self.headers_in and data and self.failed is None:
            seen = self.tail + data
            end = seen.find(b"\r\n\r\n")
            cut = len(data) if end < 0 else end + 4 - len(self.tail)
            self.head_bytes += cut
            if self.head_bytes > self.limits.max_head_bytes:
                self._give_up(f"the backend's response head is over {self.limits.max_head_bytes} bytes")
                return b""
            if end < 0:
                self.tail = seen[-3:]
                self._feed(data)
                return b""
            self.tail = b""
            self._feed(data[:cut])
            data = data[cut:]
        if self.headers_in and not self.complete and self.failed is None and \
                self.headers.get("transfer-encoding", "").lower() == "chunked":
            self.raw = []
        return data

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, _Stop):
                raise (cause or exc) from None  # a consumer's own bug: let it surface
            if self.complete:
                self.refuse_extra()
            else:
                self._give_up(str(cause))
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._give_up("the backend sent a malformed response")

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.raw is not None:  # a body nobody took yet: the parser reads it now
            raw, self.raw = self.raw, None
            for data in raw:
                if self.failed is None and not self.complete:
                    self._feed(data)
        self.transport = None
        if self.parser is None:
            self.pool._discard(self)
            return
        if self.complete:
            return
        if self.headers_in and not self.delimited and self.failed is None:
            self._complete()  # a body without length or chunking ends at EOF
            return
        self._fail("the backend stream broke off" if self.headers_in else "the backend closed the connection")

    # --- httptools callbacks ---
    def on_message_begin(self) -> None:
        if self.complete:  # a second response on the connection: never read, never trusted
            raise _Stop("the backend sent bytes after its response")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1  # the head's lines, then a trailer section's: both bounded
        if self.header_count > self.limits.max_headers:
            raise _Stop(f"the backend's response has over {self.limits.max_headers} header lines")
        if self.headers_in:
            return  # a trailer field: nothing the gateway reads
        name = name.lower()
        if name in READ_HEADERS:
            if name == b"flow-job-id" and not BACKEND_JOB_ID.fullmatch(value):
                return  # not a plain token: dropped, never echoed
            self.headers[name.decode("latin-1")] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()  # type: ignore[union-attr]
        if status < 200:  # an interim response (100 Continue): the real one follows
            if status == 101:
                raise _Stop("the backend switched protocols unasked")
            self.headers = {}
            return
        self.status = status
        self.delimited = "content-length" in self.headers or "transfer-encoding" in self.headers or status in (
            204, 304)
        self.headers_in = True
        length = self.headers.get("content-length")
        if status in (204, 304):
            self.length_end = self.head_bytes
        elif length is not None and "transfer-encoding" not in self.headers:
            self.length_end = self.head_bytes + int(length)  # llhttp let only one, of digits, through
        self._watch_body()
        waiter, self.waiter = self.waiter, None  # an open stream keeps no spent future
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        consumer = self.consumer
        if consumer is not None:
            consumer.body(body)
        elif self.early is None:
            self.early = [body]
        else:
            self.early.append(body)

    def on_message_complete(self) -> None:
        if self.headers_in:
            self.keep_alive = self.parser.should_keep_alive()  # type: ignore[union-attr]
            self._complete()

    def _complete(self) -> None:
        self.complete = True
        self._disarm()
        self.taken = None
        if self.consumer is not None:
            self.consumer.end()

    def _fail(self, message: str) -> None:
        if self.failed is not None or self.complete:
            return
        self.failed = message
        self._disarm()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamTimeout(message) if self.kind == TIMEOUT else UpstreamError(message))
        elif self.consumer is not None:
            self.consumer.broken(message)

    def _give_up(self, message: str, kind: str = MALFORMED) -> None:
        """The response cannot go on (garbled, over a limit, timed out): fail it, close the socket."""
        self.keep_alive = False
        if self.failed is None and not self.complete:
            self.kind = kind
        self._fail(message)
        if self.transport is not None:
            self.transport.close()

    # --- ChunkedBody's calls, while it reads a chunked body as the socket's protocol ---
    def chunked_done(self, keep_alive: bool) -> None:
        """The body's last chunk was read (the connection is the socket's protocol again)."""
        self.keep_alive = keep_alive
        self._complete()

    def chunked_failed(self) -> None:
        self._give_up("the backend's chunked body is malformed or its trailer section too large")

    def refuse_extra(self) -> None:
        """Bytes outside a response in flight (idle in the pool, or after the response ended):
        nothing more on this connection may be trusted, so it is dropped now."""
        self.keep_alive = False
        if self.parser is None:
            self.pool._discard(self)
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()

    # --- the caller's side ---
    async def _exchange(self, head: bytes, body: bytes, limits: Limits) -> None:
        self.limits = limits
        self.parser = httptools.HttpResponseParser(self)
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        transport = self.transport
        if transport is None or transport.is_closing():
            raise UpstreamError("the backend closed the connection")
        if body and len(body) > 16384:
            transport.writelines((head, body))
        else:
            transport.write(head + body if body else head)
        self._watch_head(loop)
        await self.waiter

    def attach(self, consumer: BodyConsumer) -> None:
        """From now on the body goes to ``consumer``; what arrived before is handed over first. A
        chunked body is read by :class:`ChunkedBody` where it was built, else by the parser."""
        if self.body_limit is not None:
            consumer = Capped(consumer, self._give_up, self.body_limit)
        self.consumer = consumer
        if self.raw is not None:
            raw, self.raw = self.raw, None
            if ChunkedBody is not None and self.transport is not None:
                self.taken = ChunkedBody(self, consumer, raw)
                if not raw:
                    consumer.flush()
                return
            for data in raw:  # the parser, which has read exactly the head, reads the body as usual
                if self.failed is None and not self.complete:
                    self._feed(data)
                elif self.complete:
                    self.refuse_extra()
        early, self.early = self.early, None
        for piece in early or ():
            consumer.body(piece)
        if self.complete:
            consumer.end()
        elif self.failed is not None:
            consumer.broken(self.failed)
        consumer.flush()

    pause = ReadFlow.pause_reading  # (the consumers' names: back-pressure, a hook awaiting the store)
    resume = ReadFlow.resume_reading

    def release(self) -> None:
        """Done with a response: keep the connection if it may carry another request, else close it."""
        self.consumer = None
        self._disarm()
        if self.complete and self.keep_alive and self.transport is not None and not self.transport.is_closing():
            self.resume_reading()  # (a consumer paused it, then the body ended): the next request must be read
            self.parser = None
            self._reset()
            self.pool._put(self)
        else:
            self.close()

    def close(self) -> None:
        self.consumer = self.taken = None  # (each points back at the run: no cycle for the GC)
        self._disarm()
        if self.transport is not None:
            self.transport.abort()  # at once: no lingering, the backend sees the close now
            self.transport = None

