"""The upstream HTTP/1.1 client: one keep-alive connection pool per app, response bodies *pushed*.

Why not aiohttp's ``ClientSession``: on the hot path its ``StreamReader`` and ``iter_any()`` cost a
task wake-up, a deque and several Python frames per chunk, and its client objects about 8 kB per
open stream (bench/: ``make bench``). Here a response body goes from the socket's
``data_received`` through httptools' C parser straight to a consumer, synchronously, one call per
body piece.

How to use it (``forward.py`` and ``pump.py`` are the callers)::

    conn = await pool.request(endpoint, b"POST", headers, body)   # returns once the headers are in
    conn.status, conn.headers    # the headers the gateway reads (READ_HEADERS), lower-case name -> value
    conn.attach(consumer)        # consumer.body(bytes) per piece, then consumer.end() or .broken(msg);
                                 # consumer.flush() after each socket read's pieces
    conn.pause() / conn.resume() # stop / restart reading the socket (back-pressure)
    conn.release()               # a fully read keep-alive response: the connection goes back to the pool
    conn.close()                 # anything else: drop the connection now (the backend sees the close)

The parser reads a response's head and not one byte more; a chunked body's bytes then wait for
the consumer, and one with ``take_body(conn, raw)`` (the compiled text path, :mod:`proxy.textpath`)
parses them itself as the transport's protocol until the body ends, then hands the connection back
complete. Any other consumer gets them through the parser, as every other body.

Bodies are never decompressed (the gateway asks for ``identity`` and meters what it reads). A
request on a pooled connection that the backend closed while it sat idle is retried once on a new
connection, and only when not one byte of a response had arrived: the backend never saw it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httptools

# The backend's response headers the gateway looks at (it never forwards them): an open stream
# keeps only these.
READ_HEADERS = frozenset({b"flow-job-id", b"content-length", b"transfer-encoding"})


class UpstreamError(Exception):
    """The backend could not be reached, or closed or garbled the connection before its headers."""


class BodyConsumer(Protocol):
    def body(self, data: bytes) -> None: ...

    def end(self) -> None: ...

    def broken(self, message: str) -> None: ...

    def flush(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one backend URL points: the connection key, the Host header and the request target."""

    key: tuple[str, str, int]  # (scheme, host, port): connections are pooled per key
    host_header: str
    target: str  # path and query, as configured


def endpoint(url: str) -> Endpoint:
    parts = urlsplit(url)
    scheme, host = parts.scheme, parts.hostname or ""
    default = 443 if scheme == "https" else 80
    port = parts.port or default
    netloc_host = f"[{host}]" if ":" in host else host
    host_header = netloc_host if port == default else f"{netloc_host}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Endpoint((scheme, host, port), host_header, target)


def request_head(method: str, ep: Endpoint, headers: Mapping[str, str], body_len: int | None) -> bytes:
    """The request line and headers. Values come from aiohttp's parser (no CR/LF possible) or from
    the config (validated at load), so they are written as they are."""
    lines = [f"{method} {ep.target} HTTP/1.1", f"Host: {ep.host_header}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body_len is not None:
        lines.append(f"Content-Length: {body_len}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


class Connection(asyncio.Protocol):
    """One upstream connection and the response in flight on it (see the module docstring)."""

    __slots__ = ("pool", "key", "transport", "parser", "status", "headers", "consumer", "early", "complete",
                 "failed", "headers_in", "waiter", "received", "reused", "idle_since", "delimited", "keep_alive",
                 "tail", "raw")

    def __init__(self, pool: UpstreamPool, key: tuple[str, str, int]) -> None:
        self.pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.reused = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.consumer: BodyConsumer | None = None
        self.early: list[bytes] | None = None  # body pieces that arrived before attach()
        self.complete = False
        self.failed: str | None = None
        self.headers_in = False
        self.waiter: asyncio.Future[None] | None = None
        self.received = 0
        self.delimited = False  # the body has a length or is chunked (else it ends at EOF)
        self.keep_alive = False  # read when the message completes (the parser resets after it)
        self.tail = b""  # the end of the head read so far (its blank line may span two reads)
        self.raw: list[bytes] | None = None  # a chunked body's bytes, unparsed, until attach() (take_body)

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
        parser = self.parser
        if parser is None:  # bytes on an idle connection: nothing may be trusted on it any more
            self.pool._discard(self)
            self.transport.close()  # type: ignore[union-attr]
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
        if data:
            self._feed(data)
        if self.consumer is not None:
            self.consumer.flush()  # what this read produced leaves in one write

    def _head(self, data: bytes) -> bytes:
        """Feed the parser the response head (interim ones too) and not one byte more; returns the
        bytes after it. A chunked body's bytes then wait, unparsed, for a consumer that may parse
        them itself (``take_body``: the compiled text path). A head whose end is not a CRLF CRLF
        this finds (a lenient parser's bare LFs) goes to the parser whole, as before."""
        while not self.headers_in and data and self.failed is None:
            seen = self.tail + data
            end = seen.find(b"\r\n\r\n")
            if end < 0:
                self.tail = seen[-3:]
                self._feed(data)
                return b""
            cut = end + 4 - len(self.tail)
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
            raise (exc.__context__ or exc) from None  # a consumer's own bug: let it surface
        except httptools.HttpParserError:
            self._fail("the backend sent a malformed response")
            if self.transport is not None:
                self.transport.close()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.raw is not None:  # a body nobody took yet: the parser reads it now
            raw, self.raw = self.raw, None
            for data in raw:
                if self.failed is None:
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
        if self.complete:  # bytes after the response: nothing more on this connection may be trusted
            self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in READ_HEADERS:
            self.headers[name.decode("latin-1")] = value.decode("utf-8", "surrogateescape")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()  # type: ignore[union-attr]
        if status < 200:  # an interim response (100 Continue): the real one follows
            self.headers = {}
            return
        self.status = status
        self.delimited = "content-length" in self.headers or "transfer-encoding" in self.headers or status in (
            204, 304)
        self.headers_in = True
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
        if self.consumer is not None:
            self.consumer.end()

    def _fail(self, message: str) -> None:
        if self.failed is not None or self.complete:
            return
        self.failed = message
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamError(message))
        elif self.consumer is not None:
            self.consumer.broken(message)

    # --- the caller's side ---
    async def _exchange(self, head: bytes, body: bytes) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.waiter = asyncio.get_running_loop().create_future()
        transport = self.transport
        if transport is None or transport.is_closing():
            raise UpstreamError("the backend closed the connection")
        if body and len(body) > 16384:
            transport.writelines((head, body))
        else:
            transport.write(head + body if body else head)
        await self.waiter

    def attach(self, consumer: BodyConsumer) -> None:
        """From now on the body goes to ``consumer``; what arrived before is handed over first. A
        consumer with ``take_body`` parses a chunked body itself (proxy.textpath)."""
        self.consumer = consumer
        if self.raw is not None:
            raw, self.raw = self.raw, None
            take_body = getattr(consumer, "take_body", None)
            if take_body is not None and self.transport is not None:
                take_body(self, raw)
                consumer.flush()
                return
            for data in raw:  # the parser, which has read exactly the head, reads the body as usual
                if self.failed is None:
                    self._feed(data)
        early, self.early = self.early, None
        for piece in early or ():
            consumer.body(piece)
        if self.complete:
            consumer.end()
        elif self.failed is not None:
            consumer.broken(self.failed)
        consumer.flush()

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def release(self) -> None:
        """Done with a response: keep the connection if it may carry another request, else close it."""
        self.consumer = None
        if self.complete and self.keep_alive and self.transport is not None and not self.transport.is_closing():
            self.parser = None
            self._reset()
            self.pool._put(self)
        else:
            self.close()

    def close(self) -> None:
        self.consumer = None
        if self.transport is not None:
            self.transport.abort()  # at once: no lingering, the backend sees the close now
            self.transport = None


class UpstreamPool:
    """Keep-alive connections per backend origin. One per app (``cleanup_ctx``)."""

    def __init__(self, *, max_idle: int = 256, idle_timeout_s: float = 15.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.max_idle = max_idle
        self.idle_timeout_s = idle_timeout_s
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._ssl = ssl_context  # https backends; default: the system's CAs, hostname checked

    def endpoint(self, url: str) -> Endpoint:
        ep = self._endpoints.get(url)
        if ep is None:
            ep = self._endpoints[url] = endpoint(url)
        return ep

    async def request(self, ep: Endpoint, method: str, headers: Mapping[str, str], body: bytes) -> Connection:
        """Send one request; returns the connection once the response's status and headers are in.
        Raises :class:`UpstreamError` (or ``OSError`` from connecting). On cancellation the
        connection is dropped."""
        has_body = bool(body) or method not in ("GET", "HEAD", "OPTIONS", "DELETE")
        head = request_head(method, ep, headers, len(body) if has_body else None)
        for attempt in (0, 1):
            conn = self._take(ep.key) or await self._connect(ep.key)
            try:
                await conn._exchange(head, body)
                return conn
            except UpstreamError:
                conn.close()
                if attempt == 0 and conn.reused and conn.received == 0:
                    continue  # the mark of a keep-alive connection the backend closed while idle
                raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    async def _connect(self, key: tuple[str, str, int]) -> Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        _, conn = await loop.create_connection(lambda: Connection(self, key), host, port, ssl=tls,
                                               server_hostname=host if tls else None)
        return conn

    def _take(self, key: tuple[str, str, int]) -> Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed
            if conn.transport is not None and not conn.transport.is_closing() and \
                    now - conn.idle_since < self.idle_timeout_s:
                conn.reused = True
                return conn
            conn.close()
        return None

    def _put(self, conn: Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        now = time.monotonic()
        if idle and now - idle[0].idle_since >= self.idle_timeout_s:  # drop the expired, oldest first
            keep = [c for c in idle if now - c.idle_since < self.idle_timeout_s]
            for c in idle:
                if now - c.idle_since >= self.idle_timeout_s:
                    c.close()
            idle[:] = keep
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = now
        idle.append(conn)

    def _discard(self, conn: Connection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
